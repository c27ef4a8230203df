//! TEMPORARY stand-in (BTreeMap) until the hierarchical wheel lands; same API.
use std::collections::BTreeMap;
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey(u64);
pub struct TimerWheel<T> {
    now: u64,
    seq: u64,
    map: BTreeMap<(u64, u64), T>,
    keys: std::collections::HashMap<u64, u64>,
}
impl<T> TimerWheel<T> {
    pub fn new(now: u64) -> Self {
        TimerWheel {
            now,
            seq: 0,
            map: BTreeMap::new(),
            keys: Default::default(),
        }
    }
    pub fn now(&self) -> u64 {
        self.now
    }
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        self.seq += 1;
        self.map.insert((deadline, self.seq), value);
        self.keys.insert(self.seq, deadline);
        TimerKey(self.seq)
    }
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let d = self.keys.remove(&key.0)?;
        self.map.remove(&(d, key.0))
    }
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.keys.get(&key.0).copied()
    }
    pub fn next_deadline(&self) -> Option<u64> {
        self.map.keys().next().map(|k| k.0)
    }
    pub fn advance(&mut self, now: u64, fired: &mut Vec<(TimerKey, u64, T)>) {
        if now > self.now {
            self.now = now;
        }
        while let Some(e) = self.map.first_entry() {
            if e.key().0 > self.now {
                break;
            }
            let ((d, s), v) = e.remove_entry();
            self.keys.remove(&s);
            fired.push((TimerKey(s), d, v));
        }
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

//! Hierarchical timing wheel: the one structure behind every timeout in keel.
//!
//! A server keeps a timer per connection (idle timeout) plus short-lived ones (connect timeout,
//! linger after close, user timers), and nearly all of them are cancelled or re-armed long
//! before they fire. Insert and cancel are the hot path; expiry is the rare one. That is why
//! this is the notes' 时间轮 (timing wheel) rather than a sorted structure: a sorted list pays
//! O(n) per insert, a binary heap O(log n) per insert and cannot cancel in O(1) without an
//! index into it, while a wheel hashes the deadline straight to a slot, and each slot is an
//! intrusive doubly linked list over a slab, so cancel just unlinks. Keys carry a generation,
//! so cancelling a timer that already fired (and whose slab entry was reused) is a harmless
//! `None` instead of cancelling a stranger.
//!
//! # Levels and cascading
//!
//! Deadlines are `u64` ticks split into 6-bit digits. Level `l` has 64 slots of `64^l` ticks.
//! An entry sits at the level of the most significant digit in which its deadline differs from
//! `now`, in the slot named by that digit: level 0 holds the rest of the current 64-tick block
//! one tick per slot, level 1 the rest of the current 4096-tick block, and so on. Eleven levels
//! cover all 64 bits, so there is no overflow list and nothing beyond the top level to
//! re-cascade: a deadline of `u64::MAX` is filed like any other and fires at its exact tick.
//! The five levels a millisecond clock never reaches in practice cost nothing, because empty
//! levels are skipped through a bitmap.
//!
//! When time reaches the start of an occupied slot at level `l`, its entries are refiled
//! (cascaded) into the levels below by their remaining digits. Because filing is relative to
//! `now`, an entry only ever moves down, so it is moved at most once per level in its life;
//! those moves are the whole cost of time passing. `advance` visits only occupied slots, found
//! through a `u64` occupancy bitmap per level plus a bitmap of non-empty levels, so a jump of
//! 10^9 ticks costs the same as a jump of one tick plus the entries it moves; a slot that is
//! due in its entirety is fired directly instead of being refiled level by level, so a long
//! jump touches each expired entry once. The expired batch is then sorted by
//! (deadline, insertion sequence), which is what puts ties in insertion order whichever
//! cascades the entries took.
//!
//! # `next_deadline` is a lower bound, not exact
//!
//! Insert and cancel are strictly O(1): a slot is a bare list with no cached earliest deadline,
//! so there is nothing to repair when an entry leaves it. The price is that `next_deadline`
//! cannot see inside a slot. It answers from the occupancy bitmaps alone: the start tick of the
//! first occupied slot of the lowest occupied level (every slot of level `l` ends before any
//! occupied slot of level `l + 1` begins, so that is the minimum over all levels' next occupied
//! slots), or `now` when the due list is non-empty. That is never later than the earliest
//! pending timer, so timers are never late; it is exact whenever the earliest timer is due or
//! sits in level 0, where a slot is one tick wide, which is where every short timer and every
//! long one at the end of its life is. When it under-estimates, the loop wakes at the start of
//! a coarse slot, and the `advance` it makes there cascades that slot one level down or more,
//! so the earliest timer fires after at most eleven (one per level) such wake-ups and each spurious one is
//! cheap (and does cascading work that would otherwise be done later anyway).
//!
//! We chose this over an exact answer because cancel is the hot path: nearly every idle timer
//! is cancelled or re-armed and almost none fire, and an exact answer needs per-slot earliest
//! deadlines that cancelling the earliest entry invalidates, which means a rescan or a
//! per-slot heap and O(log k) cancels. A few extra wake-ups per long timer are cheaper than
//! taxing every cancel.
//!
//! # How keel uses it
//!
//! One wheel per event loop, owned by the loop thread (no locking). Idle timeouts are armed
//! once per connection and are *not* re-armed on every read: a read only stamps the
//! connection's last-activity tick, and when the timer fires the loop compares that stamp with
//! `now` and either closes the connection or re-arms for the remaining time. That keeps the
//! read path free of timer work at the price of at most one extra expiry per idle period.
//! Linger (how long a closing connection may keep flushing), connect timeouts of outbound
//! connections, and user timers are plain insert/cancel. Each loop iteration calls
//! `advance(now, &mut fired)` with the tick it just read from the clock, handles `fired`, and
//! sleeps in the poller for `next_deadline() - now` at most.

use std::fmt;
use std::num::NonZeroU32;

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// ceil(64 / 6): enough levels that every `u64` deadline has a slot.
const LEVELS: usize = (u64::BITS as usize).div_ceil(SLOT_BITS as usize);
const WHEEL_SLOTS: usize = LEVELS * SLOTS;
/// The list of entries whose deadline was already due when inserted; drained by every `advance`.
const DUE: usize = WHEEL_SLOTS;
const LISTS: usize = WHEEL_SLOTS + 1;
const NIL: u32 = u32::MAX;

/// Handle returned by [`TimerWheel::insert`]; Copy, small.
///
/// The generation makes a key dead once its timer fired or was cancelled, even after the slab
/// entry is reused. Generations are 32 bits, so a key only aliases a new timer if it is kept
/// across 2^32 reuses of the same entry. They are never 0, so that an `Option<TimerKey>` is 8
/// bytes, not 12: a connection holds three, and its size decides how many fit in a GiB.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: NonZeroU32,
}

struct Entry<T> {
    /// `None` while the entry is on the free list.
    value: Option<T>,
    deadline: u64,
    /// Insertion sequence: orders ties.
    seq: u64,
    prev: u32,
    /// Next in the slot list, or next free entry while vacant.
    next: u32,
    generation: NonZeroU32,
    list: u16,
}

/// A slot: an intrusive list and nothing else, so unlinking never has a summary to repair.
#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY_LIST: List = List {
    head: NIL,
    tail: NIL,
};

/// Hierarchical timing wheel over `u64` ticks; see the module docs for why and how.
pub struct TimerWheel<T> {
    entries: Vec<Entry<T>>,
    free: u32,
    len: usize,
    now: u64,
    next_seq: u64,
    lists: Box<[List]>,
    /// Bit `s` of `occupied[l]` is set iff slot `s` of level `l` is non-empty.
    occupied: [u64; LEVELS],
    /// Bit `l` is set iff `occupied[l] != 0`, so the lowest occupied level is one instruction.
    levels: u16,
    /// Reused buffer for the expired batch of one `advance`: (deadline, seq, index).
    batch: Vec<(u64, u64, u32)>,
}

impl<T> TimerWheel<T> {
    /// Wheel starts at tick `now`.
    pub fn new(now: u64) -> Self {
        Self::with_capacity(now, 0)
    }

    /// Like [`new`](Self::new), with room for `capacity` timers before the slab reallocates.
    pub fn with_capacity(now: u64, capacity: usize) -> Self {
        TimerWheel {
            entries: Vec::with_capacity(capacity),
            free: NIL,
            len: 0,
            now,
            next_seq: 0,
            lists: vec![EMPTY_LIST; LISTS].into_boxed_slice(),
            occupied: [0; LEVELS],
            levels: 0,
            batch: Vec::new(),
        }
    }

    /// The tick the wheel has advanced to.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms a timer. A `deadline <= now()` is not an error: it fires on the next `advance`,
    /// whatever that call's `now`, so callers need not special-case zero timeouts.
    ///
    /// # Panics
    /// If more than `u32::MAX - 1` timers are pending at once.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let index = self.alloc(deadline, seq, value);
        let list = self.list_for(deadline);
        self.link(index, list);
        self.len += 1;
        TimerKey {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Disarms a timer and hands back its value; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let index = self.live_index(key)?;
        self.unlink(index);
        let value = self.release(index);
        self.len -= 1;
        Some(value)
    }

    /// The deadline the timer was armed with; `None` once it fired or was cancelled.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.live_index(key)
            .map(|i| self.entries[i as usize].deadline)
    }

    /// When to call [`advance`](Self::advance) next: a lower bound on the earliest pending
    /// deadline, computed in O(1) from the occupancy bitmaps; `None` only when no timer is
    /// pending.
    ///
    /// The contract, for an event loop that sleeps until the answer `d`:
    /// - Never late: `now() <= d`, and `d` is no later than the earliest pending deadline, or
    ///   than `now()` if that deadline is already due (a timer armed with a deadline
    ///   `<= now()` fires on the next `advance` whatever its `now`, so `d == now()` then and
    ///   the loop should not block).
    /// - Exact when the earliest timer is due (`d == now()`) or sits in level 0, i.e. falls in
    ///   the same 64-tick block as `now()`: `d` is then its deadline.
    /// - Otherwise `d` is the start tick of the slot holding the earliest timer (the first
    ///   occupied slot of the lowest occupied level, which is the earliest of every level's
    ///   next occupied slot), up to `64^level - 1` ticks early.
    /// - Progress: `advance(d)` cascades that slot at least one level down (firing what is
    ///   due), so calling `advance(next_deadline())` repeatedly fires the earliest timer after
    ///   at most eleven calls, one per level, and fires nothing that is not due.
    ///
    /// An under-estimate only costs the loop a spurious, cheap wake-up; an over-estimate would
    /// make timers late, so it never over-estimates. It is a bound and not the exact answer so
    /// that cancel stays O(1) (see the module docs).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.lists[DUE].head != NIL {
            return Some(self.now);
        }
        if self.levels == 0 {
            return None;
        }
        // Slots of a lower level all end before any occupied slot of a higher level begins, so
        // the lowest occupied level's first slot is the minimum over levels. Every occupied
        // slot starts after `now` (advance cascades the ones it reaches), so the clamp is only
        // a guard.
        let level = self.levels.trailing_zeros() as usize;
        let slot = self.occupied[level].trailing_zeros() as usize;
        Some(slot_start(self.now, level, slot).max(self.now))
    }

    /// Moves time to `now` (ignored if now < self.now()) and pushes every expired
    /// (key, deadline, value) onto `fired`, in (deadline, insertion) order.
    pub fn advance(&mut self, now: u64, fired: &mut Vec<(TimerKey, u64, T)>) {
        let target = now.max(self.now);
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();

        // Already-due entries fire whatever `now` is.
        let mut index = self.take_list(DUE);
        while index != NIL {
            let e = &self.entries[index as usize];
            batch.push((e.deadline, e.seq, index));
            index = e.next;
        }

        // Visit occupied slots in time order up to `target`; nothing else is touched, which is
        // what makes long jumps cheap.
        while self.levels != 0 {
            let level = self.levels.trailing_zeros() as usize;
            let slot = self.occupied[level].trailing_zeros() as usize;
            let start = slot_start(self.now, level, slot);
            if start > target {
                break;
            }
            // Time may stand at `start`: nothing earlier is pending (lower levels and lower
            // slots of this level are empty, higher levels are later), and refiling relative to
            // `start` is what moves these entries down.
            self.now = start;
            // A slot that is due in its entirety (always so at level 0, and for most slots of
            // a long jump) fires without being refiled level by level; the sort below restores
            // the order. Cannot overflow: the last slot of the top level ends at u64::MAX.
            let due_to = if start + ((1u64 << (level as u32 * SLOT_BITS)) - 1) <= target {
                target
            } else {
                start
            };
            let mut index = self.take_list(level * SLOTS + slot);
            while index != NIL {
                let e = &self.entries[index as usize];
                let (deadline, seq, next) = (e.deadline, e.seq, e.next);
                if deadline <= due_to {
                    batch.push((deadline, seq, index));
                } else {
                    let list = self.list_for(deadline);
                    self.link(index, list);
                }
                index = next;
            }
        }
        // No occupied slot starts at or before `target`, so every entry keeps its level when
        // time moves the rest of the way (its digits above its level still match `target`).
        self.now = target;

        if !batch.windows(2).all(|w| w[0] <= w[1]) {
            batch.sort_unstable();
        }
        fired.reserve(batch.len());
        self.len -= batch.len();
        for &(deadline, _, index) in &batch {
            let generation = self.entries[index as usize].generation;
            let value = self.release(index);
            fired.push((TimerKey { index, generation }, deadline, value));
        }
        batch.clear();
        self.batch = batch;
    }

    fn live_index(&self, key: TimerKey) -> Option<u32> {
        let e = self.entries.get(key.index as usize)?;
        (e.generation == key.generation && e.value.is_some()).then_some(key.index)
    }

    fn alloc(&mut self, deadline: u64, seq: u64, value: T) -> u32 {
        if self.free != NIL {
            let index = self.free;
            let e = &mut self.entries[index as usize];
            self.free = e.next;
            e.value = Some(value);
            e.deadline = deadline;
            e.seq = seq;
            index
        } else {
            let index = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("TimerWheel: too many pending timers");
            self.entries.push(Entry {
                value: Some(value),
                deadline,
                seq,
                prev: NIL,
                next: NIL,
                generation: NonZeroU32::MIN,
                list: 0,
            });
            index
        }
    }

    /// Frees an unlinked entry: bumps its generation (killing outstanding keys) and pushes it
    /// on the free list.
    fn release(&mut self, index: u32) -> T {
        let e = &mut self.entries[index as usize];
        let value = e.value.take().expect("released a vacant timer entry");
        // 1, 2, ... u32::MAX, then 1 again: never 0.
        e.generation = e.generation.checked_add(1).unwrap_or(NonZeroU32::MIN);
        e.next = self.free;
        self.free = index;
        value
    }

    /// Which list a deadline belongs in, relative to the current `now`.
    fn list_for(&self, deadline: u64) -> usize {
        if deadline <= self.now {
            return DUE;
        }
        let highest_diff = u64::BITS - 1 - (deadline ^ self.now).leading_zeros();
        let level = (highest_diff / SLOT_BITS) as usize;
        let slot = ((deadline >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize;
        level * SLOTS + slot
    }

    fn link(&mut self, index: u32, list: usize) {
        let l = &mut self.lists[list];
        let tail = l.tail;
        l.tail = index;
        if tail == NIL {
            l.head = index;
        } else {
            self.entries[tail as usize].next = index;
        }
        let e = &mut self.entries[index as usize];
        e.prev = tail;
        e.next = NIL;
        e.list = list as u16;
        if list < WHEEL_SLOTS {
            let level = list / SLOTS;
            self.occupied[level] |= 1 << (list % SLOTS);
            self.levels |= 1 << level;
        }
    }

    /// Removes one entry from its list: O(1), nothing to repair but the occupancy bits.
    fn unlink(&mut self, index: u32) {
        let e = &self.entries[index as usize];
        let (prev, next, list) = (e.prev, e.next, e.list as usize);
        if prev == NIL {
            self.lists[list].head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.lists[list].tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        if self.lists[list].head == NIL {
            self.mark_empty(list);
        }
    }

    /// Detaches a whole list and returns its head; the entries keep their `next` links so the
    /// caller can walk them while refiling.
    fn take_list(&mut self, list: usize) -> u32 {
        let head = self.lists[list].head;
        self.lists[list] = EMPTY_LIST;
        self.mark_empty(list);
        head
    }

    fn mark_empty(&mut self, list: usize) {
        if list < WHEEL_SLOTS {
            let level = list / SLOTS;
            self.occupied[level] &= !(1 << (list % SLOTS));
            if self.occupied[level] == 0 {
                self.levels &= !(1 << level);
            }
        }
    }
}

/// First tick of slot `slot` of level `level` in the block that contains `now`.
fn slot_start(now: u64, level: usize, slot: usize) -> u64 {
    let shift = level as u32 * SLOT_BITS;
    let block_bits = shift + SLOT_BITS;
    let base = if block_bits >= u64::BITS {
        0
    } else {
        now & !((1u64 << block_bits) - 1)
    };
    base | ((slot as u64) << shift)
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("now", &self.now)
            .field("len", &self.len)
            .field("next_deadline", &self.next_deadline())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use std::collections::BTreeMap;

    fn advance<T>(w: &mut TimerWheel<T>, now: u64) -> Vec<(TimerKey, u64, T)> {
        let mut fired = Vec::new();
        w.advance(now, &mut fired);
        fired
    }

    /// What an event loop does: advance to `next_deadline()` until something fires. Returns
    /// what fired and how many advances that took; panics if nothing fired within one advance
    /// per level.
    fn chase<T>(w: &mut TimerWheel<T>) -> (Vec<(TimerKey, u64, T)>, usize) {
        for n in 1..=LEVELS {
            let d = w.next_deadline().expect("chasing an empty wheel");
            assert!(d >= w.now());
            let fired = advance(w, d);
            if !fired.is_empty() {
                return (fired, n);
            }
        }
        panic!("nothing fired after {LEVELS} advances to next_deadline()");
    }

    /// Walks every structure the wheel keeps and checks they agree with each other.
    fn check_invariants<T>(w: &TimerWheel<T>) {
        let mut total = 0;
        for list in 0..LISTS {
            let l = w.lists[list];
            let (mut index, mut prev, mut n) = (l.head, NIL, 0);
            while index != NIL {
                let e = &w.entries[index as usize];
                assert!(e.value.is_some());
                assert_eq!(e.list as usize, list);
                assert_eq!(e.prev, prev);
                assert_eq!(
                    w.list_for(e.deadline),
                    list,
                    "entry filed in the wrong list"
                );
                prev = index;
                index = e.next;
                n += 1;
            }
            assert_eq!(l.tail, prev);
            total += n;
            if list < WHEEL_SLOTS {
                let (level, slot) = (list / SLOTS, list % SLOTS);
                assert_eq!(w.occupied[level] >> slot & 1 == 1, n > 0);
                if n > 0 {
                    assert!(
                        slot_start(w.now, level, slot) > w.now,
                        "occupied slot starts at or before now"
                    );
                }
            }
        }
        for level in 0..LEVELS {
            assert_eq!(w.levels >> level & 1 == 1, w.occupied[level] != 0);
        }
        assert_eq!(total, w.len);
        // The bound, the long way: the earliest start of any level's next occupied slot.
        let by_levels = (0..LEVELS)
            .filter(|&l| w.occupied[l] != 0)
            .map(|l| slot_start(w.now, l, w.occupied[l].trailing_zeros() as usize))
            .min();
        let want = if w.lists[DUE].head != NIL {
            Some(w.now)
        } else {
            by_levels
        };
        assert_eq!(w.next_deadline(), want);
    }

    fn values<T: Copy>(fired: &[(TimerKey, u64, T)]) -> Vec<T> {
        fired.iter().map(|f| f.2).collect()
    }

    #[test]
    fn fires_at_exact_tick() {
        for deadline in [1, 63, 64, 65, 4095, 4096, 100_000, 262_144 + 7] {
            let mut w = TimerWheel::new(0);
            let k = w.insert(deadline, "t");
            let bound = w.next_deadline().unwrap();
            assert!(bound <= deadline);
            if deadline < 64 {
                assert_eq!(bound, deadline, "level 0 is exact");
            }
            assert!(
                advance(&mut w, deadline - 1).is_empty(),
                "early at {deadline}"
            );
            assert_eq!(w.deadline(k), Some(deadline));
            let fired = advance(&mut w, deadline);
            assert_eq!(fired, vec![(k, deadline, "t")]);
            assert!(w.is_empty());
            assert_eq!(w.next_deadline(), None);
        }
    }

    #[test]
    fn advancing_to_next_deadline_reaches_the_timer() {
        for deadline in [
            64,
            65,
            4097,
            100_000,
            262_151,
            123_456_789_012,
            (1 << 50) + 12345,
            u64::MAX,
        ] {
            let mut w = TimerWheel::new(3);
            let k = w.insert(deadline, ());
            let (fired, n) = chase(&mut w);
            assert_eq!(fired, vec![(k, deadline, ())]);
            assert_eq!(w.now(), deadline);
            assert!(n <= LEVELS);
            assert_eq!(w.next_deadline(), None);
        }
    }

    #[test]
    fn cancel_before_fire() {
        let mut w = TimerWheel::new(10);
        let a = w.insert(500, 1);
        let b = w.insert(700, 2);
        assert_eq!(w.cancel(a), Some(1));
        assert_eq!(w.len(), 1);
        assert_eq!(w.deadline(a), None);
        // 700 sits in the level-1 slot 640..703: the bound is that slot's start.
        assert_eq!(w.next_deadline(), Some(640));
        assert_eq!(values(&advance(&mut w, 10_000)), vec![2]);
        assert_eq!(w.cancel(b), None);
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let mut w = TimerWheel::new(0);
        let k = w.insert(5, ());
        assert_eq!(advance(&mut w, 5).len(), 1);
        assert_eq!(w.cancel(k), None);
        assert_eq!(w.cancel(k), None);
        assert_eq!(w.deadline(k), None);
    }

    #[test]
    fn stale_key_does_not_cancel_reused_entry() {
        let mut w = TimerWheel::new(0);
        let old = w.insert(5, "old");
        assert_eq!(w.cancel(old), Some("old"));
        let new = w.insert(9, "new");
        assert_ne!(old, new, "same entry, different generation");
        assert_eq!(w.cancel(old), None);
        assert_eq!(w.deadline(new), Some(9));
        assert_eq!(values(&advance(&mut w, 9)), vec!["new"]);
    }

    #[test]
    fn long_jump_fires_everything_in_order() {
        let mut w = TimerWheel::new(7);
        let deadlines = [
            1_000_000_000u64,
            3,
            64,
            5_000,
            999_999_999,
            1 << 35,
            123_456_789,
        ];
        for (i, &d) in deadlines.iter().enumerate() {
            w.insert(d, i);
        }
        let fired = advance(&mut w, 1_000_000_007);
        let mut want: Vec<(u64, usize)> = deadlines
            .iter()
            .enumerate()
            .map(|(i, &d)| (d, i))
            .filter(|&(d, _)| d <= 1_000_000_007)
            .collect();
        want.sort();
        let got: Vec<_> = fired.iter().map(|&(_, d, v)| (d, v)).collect();
        assert_eq!(got, want);
        assert_eq!(w.len(), 1);
        // 2^35 is the first tick of its level-5 slot, so the bound happens to be exact.
        assert_eq!(w.next_deadline(), Some(1 << 35));
        assert_eq!(w.now(), 1_000_000_007);
    }

    #[test]
    fn deadline_in_the_past_fires_on_next_advance() {
        let mut w = TimerWheel::new(1_000);
        let k = w.insert(10, "past");
        w.insert(1_000, "now");
        // Due already: the loop must not block.
        assert_eq!(w.next_deadline(), Some(1_000));
        // Even an advance that does not move time fires it.
        let fired = advance(&mut w, 1_000);
        assert_eq!(values(&fired), vec!["past", "now"]);
        assert_eq!(fired[0], (k, 10, "past"));
        assert_eq!(w.now(), 1_000);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn advancing_backwards_is_ignored() {
        let mut w = TimerWheel::new(100);
        w.insert(150, 1);
        assert!(advance(&mut w, 50).is_empty());
        assert_eq!(w.now(), 100);
        assert_eq!(values(&advance(&mut w, 150)), vec![1]);
    }

    #[test]
    fn same_tick_keeps_insertion_order() {
        let mut w = TimerWheel::new(0);
        // Mix of filing levels: some inserted far ahead, some after time moved closer, so the
        // same deadline arrives through different cascades.
        for i in 0..1000 {
            w.insert(70_000, i);
        }
        advance(&mut w, 65_000);
        for i in 1000..2000 {
            w.insert(70_000, i);
        }
        advance(&mut w, 69_990);
        for i in 2000..3000 {
            w.insert(70_000, i);
        }
        let fired = advance(&mut w, 80_000);
        assert_eq!(values(&fired), (0..3000).collect::<Vec<_>>());
    }

    #[test]
    fn deadlines_far_beyond_a_six_level_wheel() {
        // 64^6 = 2^36 ticks is where a six-level wheel would overflow.
        let far = [
            1u64 << 36,
            (1 << 36) + 1,
            (1 << 50) + 12345,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        let mut w = TimerWheel::new(3);
        for &d in far.iter().rev() {
            w.insert(d, d);
        }
        for &d in &far {
            assert!(w.next_deadline().unwrap() <= d);
            assert!(advance(&mut w, d - 1).is_empty(), "{d} fired early");
            let (fired, _) = chase(&mut w);
            assert_eq!(fired.iter().map(|f| f.1).collect::<Vec<_>>(), vec![d]);
            assert_eq!(w.now(), d);
        }
        assert!(w.is_empty());
        assert_eq!(w.now(), u64::MAX);
    }

    #[test]
    fn next_deadline_is_the_slot_start_inside_coarse_slots() {
        let mut w = TimerWheel::new(0);
        // All in one level-2 slot (ticks 8192..12287).
        let keys: Vec<_> = (0..500u64).map(|i| w.insert(12_000 - i * 7, i)).collect();
        let mut live: Vec<_> = keys
            .iter()
            .zip(0..500u64)
            .map(|(&k, i)| (12_000 - i * 7, k))
            .collect();
        live.sort_by_key(|&(d, _)| d);
        // Cancelling from the front (what closing the oldest connections does) leaves the
        // bound at the slot start, and costs O(1) each.
        while let Some(&(_, k)) = live.first() {
            assert_eq!(w.next_deadline(), Some(8_192));
            w.cancel(k).unwrap();
            live.remove(0);
        }
        assert_eq!(w.next_deadline(), None);
        // The loop's spurious wake-up at the slot start cascades the slot; the next answer is
        // exact.
        let k = w.insert(10_000, 0);
        assert_eq!(w.next_deadline(), Some(8_192));
        assert!(advance(&mut w, 8_192).is_empty());
        assert_eq!(w.next_deadline(), Some(9_984));
        assert!(advance(&mut w, 9_984).is_empty());
        assert_eq!(w.next_deadline(), Some(10_000));
        assert_eq!(advance(&mut w, 10_000), vec![(k, 10_000, 0)]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64),
        InsertPast(u64),
        Cancel(prop::sample::Index),
        CancelDead(prop::sample::Index),
        Advance(u64),
        AdvanceBack(u64),
        /// Advance to `next_deadline()` until the earliest timer fires, as a loop would.
        Chase,
    }

    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![0..100u64, 0..5_000u64, 0..(1u64 << 40)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => offset().prop_map(Op::Insert),
            1 => (0..200u64).prop_map(Op::InsertPast),
            3 => any::<prop::sample::Index>().prop_map(Op::Cancel),
            1 => any::<prop::sample::Index>().prop_map(Op::CancelDead),
            4 => prop_oneof![Just(0u64), 0..100u64, 0..5_000u64, 0..(1u64 << 40)]
                .prop_map(Op::Advance),
            1 => (0..100u64).prop_map(Op::AdvanceBack),
            1 => Just(Op::Chase),
        ]
    }

    fn start() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            0..1_000_000u64,
            // Just below digit boundaries, where cascades and carries happen.
            (1u64..20).prop_map(|k| (1u64 << (6 * (k % 11))).wrapping_sub(3)),
            Just(u64::MAX - (1 << 41)),
        ]
    }

    /// A wheel driven in lockstep with a reference model.
    struct Model {
        w: TimerWheel<u64>,
        /// (deadline, seq) -> key: the order timers must fire in.
        pending: BTreeMap<(u64, u64), TimerKey>,
        live: Vec<(TimerKey, u64, u64)>,
        dead: Vec<TimerKey>,
        seq: u64,
    }

    impl Model {
        fn new(start: u64) -> Self {
            Model {
                w: TimerWheel::new(start),
                pending: BTreeMap::new(),
                live: Vec::new(),
                dead: Vec::new(),
                seq: 0,
            }
        }

        fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
            let w = &mut self.w;
            match op {
                Op::Insert(off) | Op::InsertPast(off) => {
                    let deadline = match op {
                        Op::Insert(_) => w.now().saturating_add(off),
                        _ => w.now().saturating_sub(off),
                    };
                    let key = w.insert(deadline, self.seq);
                    prop_assert_eq!(w.deadline(key), Some(deadline));
                    self.pending.insert((deadline, self.seq), key);
                    self.live.push((key, deadline, self.seq));
                    self.seq += 1;
                }
                Op::Cancel(ix) => {
                    if !self.live.is_empty() {
                        let (key, deadline, s) = self.live.swap_remove(ix.index(self.live.len()));
                        prop_assert_eq!(w.cancel(key), Some(s));
                        self.pending.remove(&(deadline, s));
                        self.dead.push(key);
                    }
                }
                Op::CancelDead(ix) => {
                    if !self.dead.is_empty() {
                        let key = self.dead[ix.index(self.dead.len())];
                        prop_assert_eq!(w.cancel(key), None);
                        prop_assert_eq!(w.deadline(key), None);
                    }
                }
                Op::Advance(step) => {
                    let to = w.now().saturating_add(step);
                    self.advance(to)?;
                }
                Op::AdvanceBack(step) => {
                    let to = w.now().saturating_sub(step);
                    self.advance(to)?;
                }
                Op::Chase => self.chase()?,
            }
            self.check()
        }

        /// Advances the wheel and checks it fired exactly the model's due timers, in order.
        fn advance(&mut self, to: u64) -> Result<Vec<(TimerKey, u64, u64)>, TestCaseError> {
            let effective = to.max(self.w.now());
            let fired = advance(&mut self.w, to);
            prop_assert_eq!(self.w.now(), effective);
            let due: Vec<_> = self
                .pending
                .range(..=(effective, u64::MAX))
                .map(|(&(d, s), &k)| (k, d, s))
                .collect();
            prop_assert_eq!(&fired, &due);
            for &(key, deadline, s) in &due {
                self.pending.remove(&(deadline, s));
                self.dead.push(key);
            }
            self.live.retain(|&(_, d, _)| d > effective);
            // Nothing still pending is overdue.
            prop_assert!(self.pending.keys().all(|&(d, _)| d > effective));
            Ok(fired)
        }

        /// From the current state, advancing to `next_deadline()` fires the earliest timer
        /// within one advance per level, and each advance fires only what is due.
        fn chase(&mut self) -> Result<(), TestCaseError> {
            let Some(&(_, first)) = self.pending.keys().next() else {
                return Ok(());
            };
            for _ in 0..LEVELS {
                let d = self.w.next_deadline().expect("pending timers but no bound");
                let fired = self.advance(d)?;
                self.check()?;
                if fired.iter().any(|f| f.2 == first) {
                    return Ok(());
                }
            }
            Err(TestCaseError::fail(format!(
                "earliest timer (seq {first}) not fired after {LEVELS} advances"
            )))
        }

        fn check(&self) -> Result<(), TestCaseError> {
            let w = &self.w;
            check_invariants(w);
            prop_assert_eq!(w.len(), self.pending.len());
            prop_assert_eq!(w.is_empty(), self.pending.is_empty());
            let now = w.now();
            match (w.next_deadline(), self.pending.keys().next()) {
                (None, None) => {}
                (Some(d), Some(&(min, _))) => {
                    prop_assert!(d >= now, "bound {} before now {}", d, now);
                    // A due timer (armed in the past) fires at `now`; anything else at its
                    // deadline. The bound must not be later than that.
                    let fires_at = min.max(now);
                    prop_assert!(d <= fires_at, "bound {} after earliest {}", d, fires_at);
                    if min <= now || min >> SLOT_BITS == now >> SLOT_BITS {
                        prop_assert_eq!(d, fires_at, "inexact for a due or level-0 timer");
                    }
                }
                (d, min) => {
                    return Err(TestCaseError::fail(format!(
                        "next_deadline {d:?} but model earliest {min:?}"
                    )))
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn matches_reference_model(
            start in start(),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut m = Model::new(start);
            for op in ops {
                m.apply(op)?;
            }
        }

        #[test]
        fn next_deadline_always_makes_progress(
            start in start(),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut m = Model::new(start);
            for op in ops {
                m.apply(op)?;
            }
            // From whatever state the ops left, a loop that only ever sleeps until
            // `next_deadline()` fires every timer, each within one advance per level.
            while !m.pending.is_empty() {
                m.chase()?;
            }
            prop_assert_eq!(m.w.next_deadline(), None);
        }
    }
}

//! Per-thread counters, summed into the `stats` line.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::reactor::LoopStats;

/// One thread's counters. Only that thread writes them (a load and a store, no locked
/// instruction); the control thread reads them for the `stats` line.
#[derive(Default)]
#[repr(align(64))]
pub(super) struct Counters {
    pub(super) wakeups: AtomicU64,
    pub(super) events: AtomicU64,
    pub(super) accepted: AtomicU64,
    pub(super) opened: AtomicU64,
    pub(super) closed: AtomicU64,
    pub(super) refused_emfile: AtomicU64,
    pub(super) refused_limit: AtomicU64,
    pub(super) idle_timeouts: AtomicU64,
    pub(super) linger_timeouts: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    /// Handler-reported events (`Ctx::note`), summed like a loop's.
    pub(super) noted: std::sync::Mutex<Option<LoopStats>>,
}

pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Counters {
    pub(super) fn add_to(&self, s: &mut LoopStats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.wakeups += get(&self.wakeups);
        s.events += get(&self.events);
        s.accepted += get(&self.accepted);
        // Opened here, closed maybe on another thread: summed over threads it is exact.
        s.open = s
            .open
            .wrapping_add(get(&self.opened).wrapping_sub(get(&self.closed)));
        s.closed += get(&self.closed);
        s.refused_emfile += get(&self.refused_emfile);
        s.refused_limit += get(&self.refused_limit);
        s.idle_timeouts += get(&self.idle_timeouts);
        s.linger_timeouts += get(&self.linger_timeouts);
        s.bytes_in += get(&self.bytes_in);
        s.bytes_out += get(&self.bytes_out);
        if let Some(n) = self
            .noted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            s.add(n);
        }
    }

    pub(super) fn note(&self, note: crate::reactor::Note) {
        let mut n = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        n.get_or_insert_with(|| LoopStats::new(crate::reactor::Engine::EpollLt))
            .note(note);
    }
}

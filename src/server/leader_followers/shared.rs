//! The state every thread shares: the poller and its waker, the listener, the connection
//! table, the leader lock, the timers and the counters.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use slab::Slab;

use super::conn::LfConn;
use super::counters::Counters;
use super::settings::Settings;
use super::timers::{TimerEvent, Timers};
use crate::net::listener::HandlerFactory;
use crate::net::ConnId;
use crate::reactor::poller::wait_timespec;
use crate::reactor::{LoopHandle, LoopStats, TimerKey, Token};

/// Tokens with generation 0 name the shared sources; connections always have generation >= 1.
pub(super) const LISTENER: u64 = 0;
pub(super) const WAKER: u64 = 1;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) struct Slot {
    generation: u32,
    conn: Arc<Mutex<LfConn>>,
}

pub(super) struct Table {
    pub(super) slab: Slab<Slot>,
    pub(super) next_generation: u32,
}

/// Everything the threads share.
pub(super) struct Shared {
    pub(super) epfd: OwnedFd,
    /// eventfd, registered level-triggered (not ONESHOT): rung to make the leader look again
    /// (drain started, the last connection left while draining, a timer earlier than the
    /// leader's wait deadline).
    pub(super) waker: OwnedFd,
    /// Closed (taken) when draining starts. Held while accepting and re-arming, so its fd
    /// number cannot be reused under an `epoll_ctl`.
    pub(super) listener: Mutex<Option<OwnedFd>>,
    /// The fd kept back for the EMFILE dance (DESIGN rule 6).
    pub(super) reserve: Mutex<Option<OwnedFd>>,
    /// The listener was left disarmed: re-arm it when a connection closes or after a while.
    pub(super) listener_starved: AtomicBool,
    pub(super) table: Mutex<Table>,
    pub(super) leader: Mutex<()>,
    pub(super) timers: Mutex<Timers>,
    /// The deadline the leader waits until (ms ticks), written under the timers lock: a timer
    /// inserted earlier than this rings the waker.
    pub(super) waiting_until: AtomicU64,
    pub(super) counters: Vec<Counters>,
    pub(super) draining: AtomicBool,
    /// When the drain ends (`now()` ms), set with `draining` at the signal: a thread busy in
    /// a handler when the stop came must not start a whole drain of its own when it sees it.
    pub(super) drain_due: AtomicU64,
    pub(super) drain_started: AtomicBool,
    pub(super) live_threads: AtomicUsize,
    /// Connections holding a permit of `--max-conns`.
    pub(super) permits: AtomicUsize,
    /// Refused connections still closing (`net::listener::refusal`).
    pub(super) refusing: Arc<AtomicUsize>,
    pub(super) factory: HandlerFactory,
    pub(super) cfg: Settings,
    pub(super) start: Instant,
    /// The control loop, stopped by the last thread to leave.
    pub(super) control: Option<LoopHandle>,
}

impl Shared {
    pub(super) fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(super) fn wake(&self) {
        let _ = rustix::io::write(&self.waker, &1u64.to_ne_bytes());
    }

    /// Cancels `old` and inserts `new`, under one lock; rings the waker if the new deadline is
    /// earlier than what the leader waits for.
    pub(super) fn replace_timer(
        &self,
        old: Option<TimerKey>,
        new: Option<(u64, TimerEvent)>,
    ) -> Option<TimerKey> {
        let mut t = lock(&self.timers);
        if let Some(key) = old {
            t.wheel.cancel(key);
        }
        let (deadline, ev) = new?;
        let key = t.wheel.insert(deadline, ev);
        let wake = deadline < self.waiting_until.load(Ordering::Relaxed);
        drop(t);
        if wake {
            self.wake();
        }
        Some(key)
    }

    pub(super) fn add_timer(&self, deadline: u64, ev: TimerEvent) -> TimerKey {
        self.replace_timer(None, Some((deadline, ev)))
            .expect("inserted")
    }

    pub(super) fn cancel_timers(&self, keys: impl Iterator<Item = TimerKey>) {
        let mut t = lock(&self.timers);
        for key in keys {
            t.wheel.cancel(key);
        }
    }

    pub(super) fn lookup(&self, token: u64) -> Option<Arc<Mutex<LfConn>>> {
        let generation = (token >> 32) as u32;
        let index = (token & 0xffff_ffff) as usize;
        let table = lock(&self.table);
        match table.slab.get(index) {
            Some(slot) if slot.generation == generation => Some(slot.conn.clone()),
            _ => None,
        }
    }

    pub(super) fn insert(&self, conn: Arc<Mutex<LfConn>>) -> ConnId {
        let mut table = lock(&self.table);
        let generation = table.next_generation;
        table.next_generation = generation.wrapping_add(1).max(1);
        let index = table.slab.insert(Slot { generation, conn });
        ConnId(Token(((generation as u64) << 32) | index as u64))
    }

    /// Removes `id` from the table; returns how many connections are left.
    pub(super) fn remove(&self, id: ConnId) -> usize {
        let generation = (id.0 .0 >> 32) as u32;
        let index = (id.0 .0 & 0xffff_ffff) as usize;
        let mut table = lock(&self.table);
        if table
            .slab
            .get(index)
            .is_some_and(|s| s.generation == generation)
        {
            table.slab.remove(index);
        }
        table.slab.len()
    }

    pub(super) fn snapshot(&self) -> Vec<Arc<Mutex<LfConn>>> {
        let table = lock(&self.table);
        table.slab.iter().map(|(_, s)| s.conn.clone()).collect()
    }

    pub(super) fn is_empty(&self) -> bool {
        lock(&self.table).slab.is_empty()
    }

    /// Waits for one event; `None` on timeout or EINTR.
    ///
    /// The buffer has room for exactly one event: every registration is ONESHOT, so an event
    /// fetched and not handled would leave its fd disarmed for good.
    pub(super) fn wait_one(
        &self,
        timeout_ms: Option<u64>,
    ) -> io::Result<Option<(u64, EventFlags)>> {
        let ts = timeout_ms.map(|ms| wait_timespec(Duration::from_millis(ms)));
        let mut one = [MaybeUninit::<epoll::Event>::uninit(); 1];
        match epoll::wait(&self.epfd, &mut one, ts.as_ref()) {
            Ok((got, _)) => Ok(got.first().map(|ev| (ev.data.u64(), ev.flags))),
            Err(rustix::io::Errno::INTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Re-arms the (ONESHOT) listener, if it is still open.
    pub(super) fn arm_listener(&self, listener: &Option<OwnedFd>) {
        if let Some(fd) = listener {
            let _ = epoll::modify(
                &self.epfd,
                fd,
                EventData::new_u64(LISTENER),
                EventFlags::IN | EventFlags::ONESHOT,
            );
        }
    }

    /// Counters of every thread, plus `own` (the control loop's: UDP, its wake-ups).
    /// Each thread's counters, for per-thread series.
    pub(super) fn per_thread(&self, engine: crate::reactor::Engine) -> Vec<LoopStats> {
        self.counters
            .iter()
            .map(|c| {
                let mut s = LoopStats::new(engine);
                c.add_to(&mut s);
                s
            })
            .collect()
    }

    pub(super) fn total(&self, own: &LoopStats) -> LoopStats {
        let mut s = own.clone();
        for c in &self.counters {
            c.add_to(&mut s);
        }
        s
    }
}

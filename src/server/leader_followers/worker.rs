//! One thread of the set and its turn: lead (wait for one event), promote a follower, process
//! the event.

use std::io;
use std::sync::atomic::Ordering;

use rustix::event::epoll::EventFlags;

use super::conn::LfConn;
use super::counters::{bump, Counters};
use super::ops::Ops;
use super::shared::{lock, Shared, LISTENER, WAKER};
use super::timers::TimerEvent;
use crate::net::{Buffer, Ctx, Handler};
use crate::reactor::TimerKey;

/// What one read can take from a socket: each thread's scratch buffer.
pub(super) const SCRATCH: usize = 64 * 1024;

/// What one readiness report says.
#[derive(Copy, Clone)]
pub(super) struct Ev {
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) error: bool,
    pub(super) hup: bool,
}

impl Ev {
    fn from_flags(f: EventFlags) -> Ev {
        let error = f.intersects(EventFlags::ERR | EventFlags::HUP);
        Ev {
            readable: error || f.intersects(EventFlags::IN | EventFlags::PRI | EventFlags::RDHUP),
            writable: f.contains(EventFlags::OUT),
            error,
            hup: f.intersects(EventFlags::RDHUP | EventFlags::HUP),
        }
    }
}

/// One thread of the set.
pub(super) struct Worker<'a> {
    pub(super) sh: &'a Shared,
    pub(super) stats: &'a Counters,
    /// Reads of a connection holding no partial input land here; only what its handler leaves
    /// unconsumed is copied into a buffer of its own.
    pub(super) scratch: Option<Buffer>,
    pub(super) fired: Vec<(TimerKey, u64, TimerEvent)>,
    /// The clock as of the event being handled (one read per event).
    pub(super) now: u64,
}

impl<'a> Worker<'a> {
    pub(super) fn new(sh: &'a Shared, index: usize) -> Worker<'a> {
        Worker {
            sh,
            stats: &sh.counters[index],
            scratch: Some(Buffer::with_capacity(SCRATCH)),
            fired: Vec::new(),
            now: 0,
        }
    }

    /// Takes turns as leader until the server has drained.
    pub(super) fn run(&mut self) -> io::Result<()> {
        let sh = self.sh;
        loop {
            let leader = lock(&sh.leader);
            if sh.draining.load(Ordering::SeqCst) {
                if !sh.drain_started.swap(true, Ordering::SeqCst) {
                    drop(leader);
                    self.begin_drain();
                    continue;
                }
                if sh.is_empty() {
                    return Ok(()); // the next follower becomes leader and sees the same
                }
            }
            self.now = sh.now();
            let timeout = {
                let mut t = lock(&sh.timers);
                t.wheel.advance(self.now, &mut self.fired);
                let next = t.wheel.next_deadline();
                sh.waiting_until
                    .store(next.unwrap_or(u64::MAX), Ordering::Relaxed);
                next.map(|d| d.saturating_sub(self.now))
            };
            if !self.fired.is_empty() {
                sh.waiting_until.store(0, Ordering::Relaxed);
                drop(leader); // promote a follower, then act as a processor
                self.run_timers();
                continue;
            }
            let got = sh.wait_one(timeout);
            sh.waiting_until.store(0, Ordering::Relaxed);
            bump(&self.stats.wakeups, 1);
            let Some((token, flags)) = got? else { continue };
            if token == WAKER {
                // Drained while still leader, so the next leader is not woken for it too.
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&sh.waker, &mut buf);
                continue;
            }
            drop(leader); // promote a follower: it waits while this thread processes
            bump(&self.stats.events, 1);
            self.now = sh.now();
            if token == LISTENER {
                self.accept_batch();
            } else if let Some(conn) = sh.lookup(token) {
                let mut c = lock(&conn);
                if c.core.fd.is_some() {
                    let ev = Ev::from_flags(flags);
                    self.conn_event(&mut c, ev);
                    self.settle(&mut c, Some(ev));
                }
            }
        }
    }

    /// Calls the handler with a context on its own connection, then delivers a high-water
    /// crossing it caused (never re-entering the handler).
    pub(super) fn call(&self, c: &mut LfConn, f: impl FnOnce(&mut dyn Handler, &mut Ctx<'_>)) {
        let LfConn { handler, core } = c;
        let Some(h) = handler.as_mut() else { return };
        let id = core.id;
        let mut ops = Ops {
            core,
            sh: self.sh,
            stats: self.stats,
            now: self.now,
        };
        f(&mut **h, &mut Ctx::new(&mut ops, id));
        while ops.core.high_water_pending {
            ops.core.high_water_pending = false;
            let queued = ops.core.output_len();
            if queued > 0 && ops.core.live() {
                h.on_high_water(&mut Ctx::new(&mut ops, id), queued);
            }
        }
        while std::mem::take(&mut ops.core.redeliver) {
            let Some(mut input) = ops.core.input.take() else {
                break;
            };
            if ops.core.live() && !ops.core.read_paused {
                h.on_data(&mut Ctx::new(&mut ops, id), &mut input);
            }
            if !input.is_empty() && ops.core.live() {
                ops.core.input = Some(input);
            }
        }
    }
}

//! The graceful stop: closing every connection, then the deadline that resets the rest.

use super::conn::LfConn;
use super::shared::lock;
use super::timers::TimerEvent;
use super::worker::Worker;
use crate::net::CloseReason;

impl Worker<'_> {
    /// The first thread to see the draining flag: stop listening, and set the deadline after
    /// which the rest are reset. Each connection answers what its client has sent and closes
    /// gracefully once idle, as under every model: now, or after its handler, paused behind
    /// its own output, has answered the pipelined requests it holds.
    pub(super) fn begin_drain(&mut self) {
        let sh = self.sh;
        drop(lock(&sh.listener).take()); // new connections are refused by the kernel
        self.now = sh.now();
        // Counted from the signal (`thread_set::stop`), however late this thread saw it.
        let due = match sh.drain_due.load(std::sync::atomic::Ordering::SeqCst) {
            0 => self.now.saturating_add(sh.cfg.drain_ms),
            due => due,
        };
        sh.add_timer(due, TimerEvent::DrainDeadline);
        for conn in sh.snapshot() {
            let mut c = lock(&conn);
            if c.core.refused && c.core.fd.is_some() {
                // Its FIN is out; the stop does not wait for the client's.
                c.core.close_with(CloseReason::Normal);
                self.destroy(&mut c);
                continue;
            }
            if c.core.live() {
                c.core.draining = true;
                self.recheck_drain(&mut c);
                self.settle(&mut c, None);
            }
        }
        if sh.is_empty() {
            sh.wake();
        }
    }

    /// A draining connection after something other than its readable event (the drain's
    /// start, its output drained, a timer, its accept): read what its client sent, and close
    /// it if that finds it idle. A handler that resumed reading there would otherwise wait for
    /// an event that may never come, and be reset at the drain deadline.
    pub(super) fn recheck_drain(&mut self, c: &mut LfConn) {
        if c.core.draining && self.read(c, false) {
            self.close_if_drained(c);
        }
    }

    /// A draining connection whose read found nothing more (EAGAIN or the FIN), with nothing
    /// queued, its handler not paused with requests in hand and no part of a request held
    /// (the rest is read and answered, as the event loop does), is idle: it closes gracefully
    /// (its linger reads nothing more for the handler).
    pub(super) fn close_if_drained(&mut self, c: &mut LfConn) {
        let partial = c.core.input.as_ref().is_some_and(|b| !b.is_empty());
        let core = &mut c.core;
        if core.draining
            && core.live()
            && !core.lingering
            && !core.read_paused
            && !partial
            && core.output_len() == 0
        {
            core.close(self.sh, self.now);
        }
    }

    pub(super) fn drain_deadline(&mut self) {
        for conn in self.sh.snapshot() {
            let mut c = lock(&conn);
            if c.core.fd.is_some() {
                c.core.close_with(CloseReason::DrainTimeout);
                self.destroy(&mut c);
            }
        }
        self.sh.wake();
    }
}

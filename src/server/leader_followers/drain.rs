//! The graceful stop: closing every connection, then the deadline that resets the rest.

use super::shared::lock;
use super::timers::TimerEvent;
use super::worker::Worker;
use crate::net::CloseReason;

impl Worker<'_> {
    /// The first thread to see the draining flag: stop listening, answer what each connection
    /// has sent, close it gracefully, and set the deadline after which the rest are reset.
    pub(super) fn begin_drain(&mut self) {
        let sh = self.sh;
        drop(lock(&sh.listener).take()); // new connections are refused by the kernel
        self.now = sh.now();
        sh.add_timer(
            self.now.saturating_add(sh.cfg.drain_ms),
            TimerEvent::DrainDeadline,
        );
        for conn in sh.snapshot() {
            let mut c = lock(&conn);
            if c.core.live() {
                // What the client has sent is answered first, as under every model; only
                // then does the close begin (its linger reads nothing more for the handler).
                self.read(&mut c, false);
                if c.core.live() {
                    c.core.close(sh, self.now);
                }
                self.settle(&mut c, None);
            }
        }
        if sh.is_empty() {
            sh.wake();
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

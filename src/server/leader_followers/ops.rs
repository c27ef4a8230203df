//! The `ConnOps` a handler's `Ctx` runs on under this model.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::SockRef;

use super::conn::Core;
use super::counters::Counters;
use super::shared::Shared;
use crate::net::handler::ConnOps;
use crate::net::{CloseReason, ConnId, FileRange};
use crate::reactor::LoopHandle;

/// The handler's context under this model: acts on the locked connection directly.
pub(super) struct Ops<'a> {
    pub(super) core: &'a mut Core,
    pub(super) sh: &'a Shared,
    pub(super) stats: &'a Counters,
    pub(super) now: u64,
}

impl Ops<'_> {
    /// Only the connection whose handler runs can be acted on (see the module docs).
    fn mine(&self, id: ConnId) -> bool {
        id == self.core.id
    }
}

impl ConnOps for Ops<'_> {
    fn write(&mut self, id: ConnId, data: &[u8]) -> bool {
        self.mine(id) && self.core.write(self.sh, self.stats, self.now, data)
    }
    fn send_file(&mut self, id: ConnId, head: &[u8], range: FileRange) -> bool {
        self.mine(id) && self.core.send_file(self.sh, head, range)
    }
    fn note(&mut self, note: crate::reactor::Note) {
        self.stats.note(note);
    }
    fn output_len(&self, id: ConnId) -> usize {
        if self.mine(id) {
            self.core.output_len()
        } else {
            0
        }
    }
    fn shutdown_write(&mut self, id: ConnId) {
        if self.mine(id) {
            self.core.shutdown_write(self.sh, self.now);
        }
    }
    fn close(&mut self, id: ConnId) {
        if self.mine(id) {
            self.core.close(self.sh, self.now);
        }
    }
    fn abort(&mut self, id: ConnId) {
        if self.mine(id) {
            self.core.close_with(CloseReason::Aborted);
        }
    }
    fn pause_read(&mut self, id: ConnId) {
        // A closing connection reads on to the peer's FIN.
        if self.mine(id) && !self.core.lingering {
            self.core.read_paused = true;
        }
    }
    fn resume_read(&mut self, id: ConnId) {
        if self.mine(id) {
            self.core.read_paused = false;
            // What the handler left unconsumed is offered again (see EventLoop::resume_read).
            self.core.redeliver = self.core.input.as_ref().is_some_and(|b| !b.is_empty());
        }
    }
    fn set_idle_timeout(&mut self, id: ConnId, timeout: Option<Duration>) {
        if self.mine(id) {
            self.core.set_idle_timeout(self.sh, self.now, timeout);
        }
    }
    fn set_timer(&mut self, id: ConnId, after: Duration, tag: u64) {
        if self.mine(id) {
            self.core.set_timer(self.sh, self.now, after, tag);
        }
    }
    fn cancel_timer(&mut self, id: ConnId, tag: u64) {
        if self.mine(id) {
            self.core.cancel_timer(self.sh, tag);
        }
    }
    fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        if !self.mine(id) {
            return None;
        }
        let fd = self.core.fd.as_ref()?;
        SockRef::from(fd).peer_addr().ok()?.as_socket()
    }
    fn handle(&self) -> Option<LoopHandle> {
        None
    }
}

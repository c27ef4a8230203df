//! Reads by completion: the `uring` engine's multishot receives (the notes' Proactor).
//!
//! On the readiness engines the loop is told "this socket can be read" and reads it
//! (`conn_readable`). On `uring`, a connection that is simply reading is given a multishot
//! receive instead: the kernel reads for the loop, and the loop is told "these bytes arrived",
//! which it hands to the handler exactly as a read would (`on_data` with the input buffer,
//! unconsumed bytes kept in a pooled buffer of the connection's own).
//!
//! A connection is in one of two read modes, never both, so that no byte can overtake
//! another:
//! - **completion**: a receive is armed (`Conn::recv`), the poller watches the fd for
//!   writability only, and no `read` is ever made on it: `conn_readable` returns at once;
//! - **readiness**: no receive; the fd is watched for both, and `conn_readable` or
//!   `splice_readable` read as on `epoll-et`.
//!
//! A connection leaves completion mode when reading must stop or go another way: paused
//! (backpressure), spliced (bytes go socket → pipe, never through user space), draining (the
//! graceful stop needs a read that finds the socket empty). It asks the kernel to end the
//! receive, and switches only once the receive's last completion has come in ([`Got::Ended`]),
//! so bytes the kernel had already taken are handled first, in order.

use std::io;
use std::os::fd::AsFd;

use crate::net::buffer::Buffer;
use crate::net::connection::{CloseReason, Conn, ConnId, ConnState};
use crate::reactor::event::Interest;
use crate::reactor::event_loop::{slot_in, slot_in_mut, EventLoop, Source, SCRATCH};
use crate::reactor::poller::{Got, Poller, Received};

impl Conn {
    /// Reading plainly: what a receive can do for it.
    fn reads_plainly(&self) -> bool {
        matches!(self.state, ConnState::Open | ConnState::Linger)
            && !self.read_paused
            && !self.read_eof
            && !self.draining
            && self.splice().is_none()
    }

    /// Reading, but not plainly: a spliced or draining connection, which reads on readiness.
    fn reads_on_readiness(&self) -> bool {
        matches!(self.state, ConnState::Open | ConnState::Linger)
            && !self.read_eof
            && (self.draining || self.splice().is_some())
    }
}

impl EventLoop {
    /// Whether connections of this loop read by completion.
    pub(crate) fn completes_reads(&self) -> bool {
        matches!(&self.poller, Poller::Uring(p) if p.completes_reads())
    }

    /// Puts connection `id` in the read mode its state calls for (see the module's doc): arms
    /// a receive, asks for one to end, or, once it has ended, watches the fd for reading.
    pub(crate) fn sync_recv(&mut self, id: ConnId) {
        if !self.completes_reads() {
            return;
        }
        let EventLoop { poller, slots, .. } = self;
        let Poller::Uring(uring) = poller else { return };
        let Some(Source::Conn(conn)) = slot_in(slots, id.0).map(|s| &s.source) else {
            return;
        };
        if conn.state == ConnState::Connecting || conn.state == ConnState::Closing {
            return;
        }
        let plain = conn.reads_plainly();
        let readiness = conn.reads_on_readiness();
        match conn.recv {
            Some(key) if !plain => uring.cancel_recv(key, id.0, true),
            None if plain => {
                let armed = uring.arm_recv(conn.fd.as_fd(), id.0);
                let watch = (conn.interest != Interest::WRITABLE).then_some(Interest::WRITABLE);
                self.set_recv_mode(id, armed, watch);
            }
            None if readiness && conn.interest != Interest::BOTH => {
                self.set_read_interest(id, Interest::BOTH);
                // Bytes (or the FIN) may be waiting that no new edge will announce.
                self.ready.push(id.0);
            }
            _ => {}
        }
    }

    fn set_recv_mode(
        &mut self,
        id: ConnId,
        armed: io::Result<crate::reactor::poller::RecvKey>,
        watch: Option<Interest>,
    ) {
        match armed {
            Ok(key) => {
                if let Some(conn) = self.conn_mut(id) {
                    conn.recv = Some(key);
                }
                if let Some(interest) = watch {
                    self.set_read_interest(id, interest);
                }
            }
            Err(e) => self.close_with(id, CloseReason::Error(e.kind())),
        }
    }

    fn set_read_interest(&mut self, id: ConnId, interest: Interest) {
        if self.reregister(id.0, interest).is_err() {
            self.close_with(id, CloseReason::Error(io::ErrorKind::Other));
        } else if let Some(conn) = self.conn_mut(id) {
            conn.interest = interest;
        }
    }

    /// Handles the receive completions of the last wait.
    pub(crate) fn run_received(&mut self) {
        let mut received = std::mem::take(&mut self.received);
        if let Poller::Uring(p) = &mut self.poller {
            p.take_received(&mut received);
        }
        for r in received.drain(..) {
            self.conn_received(r);
            self.run_deferred();
        }
        self.received = received; // keep the allocation
    }

    fn conn_received(&mut self, r: Received) {
        let id = ConnId(r.token);
        match r.got {
            Got::Data { buffer, len } => self.recv_data(id, buffer, len),
            Got::Eof => {
                // Paused, the FIN waits behind the bytes held for the resume: the receive
                // armed then finds it again (a socket past its FIN reads 0 every time).
                if self.conn(id).is_some_and(|c| !c.read_eof && !c.read_paused) {
                    self.peer_eof(id);
                }
            }
            Got::Error(errno) => {
                let kind = io::Error::from_raw_os_error(errno).kind();
                self.close_with(id, CloseReason::Error(kind));
            }
            Got::Ended => {
                let Some(conn) = self.conn_mut(id).filter(|c| c.recv == Some(r.recv)) else {
                    return;
                };
                conn.recv = None;
                self.sync_recv(id);
            }
        }
    }

    /// Bytes a receive brought: handed to the handler as a read's would be. They are copied
    /// out of the receive buffer (into the loop's scratch buffer, or behind the input the
    /// connection already holds) and the buffer goes straight back to the kernel.
    fn recv_data(&mut self, id: ConnId, buffer: u16, len: u32) {
        let EventLoop {
            poller,
            slots,
            scratch,
            pool,
            ..
        } = self;
        let Poller::Uring(uring) = poller else { return };
        let conn = match slot_in_mut(slots, id.0).map(|s| &mut s.source) {
            Some(Source::Conn(c)) => Some(c),
            _ => None,
        };
        let Some(conn) = conn.filter(|c| c.state != ConnState::Closing) else {
            uring.recycle(buffer); // the connection is gone: the bytes with it
            return;
        };
        let data = uring.received(buffer, len);
        let lingering = conn.state == ConnState::Linger;
        let spliced = conn.splice().map(|s| s.to);
        if lingering {
            // Closing: the peer's bytes are drained only to reach its FIN.
            uring.recycle(buffer);
            self.stats.bytes_in += len as u64;
            return;
        }
        if let Some(to) = spliced {
            // Taken by the kernel just before the splice began: they go first, copied.
            let bytes = data.to_vec();
            uring.recycle(buffer);
            self.stats.bytes_in += len as u64;
            if !self.write(to, &bytes) {
                self.close(id);
            }
            return;
        }
        let paused = conn.read_paused;
        let (input, direct) = match conn.input.take() {
            Some(mut own) => {
                own.append(data);
                (*own, false)
            }
            None if paused => {
                // Taken before the pause reached the kernel: kept for the resume to offer.
                let mut own = pool.get();
                own.append(data);
                (own, false)
            }
            None => {
                let mut s = scratch
                    .take()
                    .unwrap_or_else(|| Buffer::with_capacity(SCRATCH));
                s.append(data);
                (s, true)
            }
        };
        uring.recycle(buffer);
        self.stats.bytes_in += len as u64;
        if paused {
            if let Some(conn) = self.conn_mut(id) {
                conn.input = Some(Box::new(input));
            }
            return;
        }
        self.deliver_input(id, input, direct);
    }
}

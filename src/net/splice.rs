//! Zero-copy relaying: bytes move from one connection's socket to another's through a pipe,
//! with `splice(2)`, and never enter user space.
//!
//! A relay that reads into a buffer and writes it out copies every byte twice (kernel to user,
//! user to kernel). `splice` moves page references instead: socket → pipe takes the pages the
//! bytes arrived in, pipe → socket hands them to the other connection. The notes' zero-copy
//! rule, for a proxy.
//!
//! [`EventLoop::splice`] switches one direction of a pair to this path. From then on the
//! source's readable events move bytes into a pipe the source owns, and those bytes are queued
//! on the destination's output queue as a pipe segment (`output::Piped`), behind whatever was
//! queued before, so order holds; they count in its `output_len`, so a `shutdown_write` waits
//! for them and the high-water mark sees them. A pipe holds at most [`PIPE_SIZE`] bytes: when
//! it is full the source stops reading (its socket's receive window then pushes back on its
//! peer) until the destination has taken some out. The handler of the source no longer gets
//! `on_data`; it still gets `on_peer_shutdown`, `on_close` and the rest.
//!
//! `splice` from a socket answers `EAGAIN` both when the socket is empty and when the pipe has
//! no free slot (a slot per page fragment, however few bytes it holds); a one-byte peek at the
//! socket tells the two apart. Only a pipe holding bytes can be full: a source waits for room
//! only then, so the destination, which has those bytes queued, is sure to wake it (bytes that
//! arrive between the splice and the peek are read by a second try, not waited for). `splice`
//! also stops at a TCP urgent mark, where a plain read goes on: bytes that are there and that
//! an empty pipe will not take send the connection back to copying (`unsplice`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rustix::pipe::{PipeFlags, SpliceFlags};

use crate::net::connection::{CloseReason, ConnId, ConnState};
use crate::reactor::event::Trigger;
use crate::reactor::event_loop::{slot_in_mut, EventLoop, Source};

/// The pipe size asked for: a 1 MiB response crosses in four moves each way. Linux lets an
/// unprivileged process have up to 1 MiB (`/proc/sys/fs/pipe-max-size`); if refused, the
/// default (64 KiB) is used.
pub const PIPE_SIZE: usize = 256 * 1024;

/// A pipe carrying one direction of a spliced pair. The source connection owns it; the
/// destination's output queue holds it too while bytes wait in it, so a source that closes
/// first does not lose what it already moved.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity, as the kernel granted it.
    size: usize,
    /// Bytes in it now (moved in, not yet out). Only the owning loop touches it.
    held: AtomicUsize,
    /// The connection filling it.
    pub(crate) source: ConnId,
    /// The source stopped reading because this pipe was full.
    blocked: AtomicBool,
}

impl Pipe {
    fn new(source: ConnId) -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let size = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
        Ok(Pipe {
            read,
            write,
            size,
            held: AtomicUsize::new(0),
            source,
            blocked: AtomicBool::new(false),
        })
    }

    fn room(&self) -> usize {
        self.size.saturating_sub(self.held.load(Ordering::Relaxed))
    }

    /// Moves up to `len` of the pipe's bytes to `to` (a socket). `None` when the socket has no
    /// room. Whether the source may now read again comes back with the count.
    pub(crate) fn drain_into(&self, to: impl AsFd, len: usize) -> io::Result<Option<usize>> {
        loop {
            match rustix::pipe::splice(
                &self.read,
                None,
                to.as_fd(),
                None,
                len,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            ) {
                Ok(n) => {
                    self.held.fetch_sub(n, Ordering::Relaxed);
                    return Ok(Some(n));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes back the "blocked" mark if it was set: the caller then wakes the source.
    pub(crate) fn take_blocked(&self) -> bool {
        self.blocked.swap(false, Ordering::Relaxed)
    }
}

/// Whether the socket holds bytes a read would return now. A one-byte peek, not FIONREAD:
/// at a TCP urgent mark FIONREAD counts 0 while a read (which skips the mark) returns bytes.
pub(crate) fn has_unread(fd: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    rustix::net::recv(
        fd,
        &mut byte[..],
        rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
    )
    .is_ok_and(|(n, _)| n > 0)
}

/// A source connection's splice state: where its bytes go, and through which pipe.
pub(crate) struct SpliceTo {
    pub(crate) to: ConnId,
    pub(crate) pipe: Arc<Pipe>,
}

impl EventLoop {
    /// From now on, bytes arriving on `from` go to `to` through a pipe, without entering user
    /// space (see the module doc). Bytes `from`'s handler left unconsumed go first, copied.
    /// Both connections must be on this loop; `from` then no longer calls `on_data`.
    /// Errors: either connection is gone or closing, or no pipe could be made (out of fds).
    pub fn splice(&mut self, from: ConnId, to: ConnId) -> io::Result<()> {
        let gone = || io::Error::new(io::ErrorKind::NotConnected, "connection gone");
        if !self.is_open(to) || !self.is_open(from) {
            return Err(gone());
        }
        let pipe = Arc::new(Pipe::new(from)?);
        let held = self.conn_mut(from).ok_or_else(gone)?.input.take();
        if let Some(buf) = held {
            let ok = self.write(to, buf.as_slice());
            self.pool.put(*buf);
            if !ok {
                return Err(gone());
            }
        }
        let conn = self.conn_mut(from).ok_or_else(gone)?;
        conn.relay.get_or_insert_with(Box::default).splice = Some(SpliceTo { to, pipe });
        // Bytes may be waiting that no new edge will announce. A receive reading for the
        // connection is ended first, and what it took goes ahead (`net::completion`).
        self.ready.push(from.0);
        self.sync_recv(from);
        Ok(())
    }

    /// Readable, on a spliced source: socket → pipe, then the pipe's new bytes queued on the
    /// destination. Mirrors `conn_readable`'s budget and edge rules.
    pub(crate) fn splice_readable(&mut self, id: ConnId) {
        let edge = self.poller.trigger() == Trigger::Edge;
        let budget = self.cfg.read_budget;
        let mut total = 0usize;
        let mut retried = false;
        loop {
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            if conn.read_paused
                || conn.read_eof
                || conn.pipe_full()
                || conn.state != ConnState::Open
            {
                return;
            }
            if conn.urgent_seen {
                // splice stops at the urgent mark; the copying read knows how to pass it.
                self.unsplice(id);
                return;
            }
            let Some(sp) = conn.splice() else {
                return;
            };
            let (to, pipe) = (sp.to, sp.pipe.clone());
            let room = pipe.room();
            let res = if room == 0 {
                Err(rustix::io::Errno::AGAIN)
            } else {
                rustix::pipe::splice(
                    &conn.fd,
                    None,
                    &pipe.write,
                    None,
                    room,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )
            };
            match res {
                Ok(0) => {
                    let conn = self.conn(id).expect("still here");
                    if has_unread(&conn.fd) {
                        // Not the FIN: bytes splice will not take (past an urgent mark).
                        self.unsplice(id);
                    } else {
                        self.peer_eof(id);
                    }
                    return;
                }
                Ok(n) => {
                    pipe.held.fetch_add(n, Ordering::Relaxed);
                    self.stats.bytes_in += n as u64;
                    total += n;
                    let now = self.now_tick();
                    if let Some(c) = self.conn_mut(id) {
                        c.last_active = now;
                    }
                    if !self.queue_piped(to, &pipe, n) {
                        // Nowhere for the bytes to go: the other side is gone or shut.
                        self.close_with(id, CloseReason::Error(io::ErrorKind::BrokenPipe));
                        return;
                    }
                    // Edge-triggered: read on to EAGAIN. A short splice does not mean an empty
                    // socket, as a short read would: the pipe may have run out of slots (one
                    // per page fragment) before bytes, and no new edge would come for the rest.
                    if !edge {
                        return;
                    }
                    if total >= budget {
                        self.ready.push(id.0);
                        return;
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    let conn = self.conn(id).expect("still here");
                    let unread = has_unread(&conn.fd);
                    let held = pipe.held.load(Ordering::Relaxed);
                    if unread && held == 0 {
                        if !retried {
                            // An empty pipe has room: the bytes may have arrived after the
                            // splice looked.
                            retried = true;
                            continue;
                        }
                        // Bytes that splice will not take (an urgent mark stops it): this
                        // direction goes back to copying.
                        self.unsplice(id);
                        return;
                    }
                    if held > 0 && (room == 0 || unread) {
                        // The pipe is full, not the socket empty: wait until the destination
                        // takes some out, which it will, since it has `held` bytes queued.
                        pipe.blocked.store(true, Ordering::Relaxed);
                        if let Some(c) = self.conn_mut(id) {
                            if let Some(r) = c.relay.as_mut() {
                                r.pipe_full = true;
                            }
                        }
                        self.update_interest(id);
                    } else {
                        self.close_if_drained(id);
                    }
                    return;
                }
                Err(e) => {
                    self.close_with(id, CloseReason::Error(io::Error::from(e).kind()));
                    return;
                }
            }
        }
    }

    /// Queues `n` bytes now in `pipe` on `to`'s output and sends what the socket takes. False
    /// if `to` is gone or its write side is shut.
    fn queue_piped(&mut self, to: ConnId, pipe: &Arc<Pipe>, n: usize) -> bool {
        let Some(conn) = self.conn(to) else {
            return false;
        };
        if !conn.takes_output() {
            return false;
        }
        let was_empty = conn.output.is_empty();
        let connecting = conn.state == ConnState::Connecting;
        self.enqueue(to, |q, _| q.push_piped(pipe, n as u64));
        if was_empty && !connecting {
            self.conn_writable(to);
        }
        true
    }

    /// Back to copying: what the pipe holds stays queued on the destination, and what is read
    /// from now on is queued behind it, so the order holds. Reads resume at once.
    fn unsplice(&mut self, id: ConnId) {
        if let Some(relay) = self.conn_mut(id).and_then(|c| c.relay.as_mut()) {
            relay.splice = None;
            relay.pipe_full = false;
        }
        self.update_interest(id);
        self.conn_readable(id);
    }

    /// The destination took bytes out of a pipe whose source had stopped for want of room:
    /// the source reads again.
    pub(crate) fn pipe_has_room(&mut self, source: ConnId) {
        let Some(Source::Conn(conn)) =
            slot_in_mut(&mut self.slots, source.0).map(|s| &mut s.source)
        else {
            return;
        };
        let Some(relay) = conn.relay.as_mut().filter(|r| r.pipe_full) else {
            return;
        };
        relay.pipe_full = false;
        self.update_interest(source);
        self.ready.push(source.0);
    }
}

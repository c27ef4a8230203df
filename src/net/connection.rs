//! A TCP connection and its state machine, as the notes' rules require.
//!
//! ```text
//!             connect ok                    peer FIN (read()==0)
//! Connecting ───────────► Open ─────────────────────────────► (read_eof) ──┐
//!                           │  close(): flush, shutdown(WR)                │ shutdown_write():
//!                           ▼                                              │ flush, shutdown(WR)
//!                        Linger ── peer FIN ──► closed (normal)            ▼
//!                           └──── linger timeout ──► closed with RST    closed (normal)
//! ```
//!
//! - `read() == 0` is the peer's half-close, not an order to close (rule 2). The handler is told
//!   (`on_peer_shutdown`) and by default finishes writing, then shuts down its own side.
//! - A write goes straight to the socket when nothing is queued; only the rest is buffered, and
//!   write interest is on only while something is queued (rule 1).
//! - Graceful close: shutdown(WR), wait for the peer's FIN up to the linger timeout, then
//!   close, with `SO_LINGER{on,0}` if the peer never answered, so neither CLOSE_WAIT nor
//!   FIN_WAIT_2 piles up (rule 4).
//! - The fd is closed in exactly one place, [`EventLoop::destroy_conn`] (rule 3), always from
//!   the deferred queue, never from inside a handler callback.
//! - An idle connection holds no buffer: input and output buffers come from the loop's pool
//!   when there are bytes to hold and go back as soon as they are empty.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::net::{SendFlags, Shutdown};
use socket2::SockRef;

use crate::net::buffer::Buffer;
use crate::net::buffer_pool::BufferPool;
use crate::net::handler::{Ctx, Handler};
use crate::net::output::{FileRange, OutputQueue};
use crate::net::send_timeout;
use crate::net::splice::SpliceTo;
use crate::reactor::event::{Event, Interest, Token, Trigger};
use crate::reactor::event_loop::{
    slot_in, slot_in_mut, Deferred, EventLoop, Slot, Source, TimerEvent, SCRATCH,
};
use crate::reactor::poller::{Poller, RecvKey};
use crate::reactor::timer_wheel::TimerKey;

/// Names a connection on its loop. It stays unique for the loop's life even when the slab slot
/// is reused (a generation counter is packed in), so a stale id is simply ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub Token);

/// The most `EventLoop::write_batched` holds back for one connection before it sends
/// without waiting for the end of the turn: a batch is for saving syscalls, not a buffer.
pub const BATCH_LIMIT: usize = 64 * 1024;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Outgoing, non-blocking connect in progress.
    Connecting,
    /// Established. Each direction may already be half-closed (see the flags).
    Open,
    /// We sent our FIN as part of a close and wait for the peer's; input is discarded.
    Linger,
    /// Queued for destruction: no more I/O.
    Closing,
}

/// Why a connection ended; given to [`Handler::on_close`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished (FIN both ways).
    Normal,
    /// Our FIN went out, the peer's never came within the linger timeout: closed with RST.
    LingerTimeout,
    IdleTimeout,
    /// The handler aborted (RST).
    Aborted,
    /// A read or write failed (e.g. the peer reset).
    Error(io::ErrorKind),
    /// An outgoing connect failed: refused, timed out, unreachable.
    ConnectFailed(ConnectError),
    /// The server stopped and the connection did not finish within the drain timeout.
    DrainTimeout,
}

/// Why an outgoing connect failed, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    Refused,
    TimedOut,
    Unreachable,
    Other(io::ErrorKind, i32),
}

impl ConnectError {
    pub fn from_io(e: &io::Error) -> ConnectError {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => ConnectError::Refused,
            Some(libc::ETIMEDOUT) => ConnectError::TimedOut,
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => ConnectError::Unreachable,
            code => ConnectError::Other(e.kind(), code.unwrap_or(0)),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused => f.write_str("connection refused"),
            ConnectError::TimedOut => f.write_str("connect timed out"),
            ConnectError::Unreachable => f.write_str("network or host unreachable"),
            ConnectError::Other(kind, code) => write!(f, "connect failed: {kind} (errno {code})"),
        }
    }
}

impl CloseReason {
    /// Every end but a normal one closes with RST (SO_LINGER {on, 0}): a plain close() with the
    /// peer silent would leave an orphan in FIN_WAIT or CLOSE_WAIT for minutes. (An idle timeout
    /// that closes normally goes through the handler's graceful close and ends as `Normal` or
    /// `LingerTimeout`; `IdleTimeout` itself means the close got stuck for a whole period.)
    fn abortive(&self) -> bool {
        !matches!(self, CloseReason::Normal)
    }
}

pub(crate) struct Conn {
    pub(crate) fd: OwnedFd,
    pub(crate) state: ConnState,
    pub(crate) handler: Option<Box<dyn Handler>>,
    /// Bytes the handler left unconsumed (boxed: an idle connection holds only a null).
    pub(crate) input: Option<Box<Buffer>>,
    pub(crate) output: OutputQueue,
    /// What the poller currently has registered for this fd.
    pub(crate) interest: Interest,
    /// The fd is out of the poller altogether (see `park`): nothing is registered for it
    /// until the handler resumes reading.
    pub(crate) parked: bool,
    /// The `uring` engine's receive reading for this connection, until its last completion
    /// (see `net::completion`): while it is there, the loop makes no read of its own.
    pub(crate) recv: Option<RecvKey>,
    pub(crate) read_paused: bool,
    /// The peer's FIN arrived.
    pub(crate) read_eof: bool,
    /// The poller has reported the peer's FIN (EPOLLRDHUP), though it may not be read yet: an
    /// edge-triggered reader must then read on to the 0, since no new edge will announce it
    /// (it may have been reported while reading was paused).
    pub(crate) hup_seen: bool,
    /// The poller has reported TCP urgent data: reads stop short at its mark, so an
    /// edge-triggered reader reads on to `EAGAIN` until this is cleared there.
    pub(crate) urgent_seen: bool,
    /// The server is stopping: close once idle (see `drain_conn`).
    pub(crate) draining: bool,
    /// Our FIN went out.
    pub(crate) write_shut: bool,
    /// Send our FIN once the output queue drains.
    pub(crate) shutdown_after_flush: bool,
    /// After that FIN, wait for the peer's (linger) and close: a full close, not a half-close.
    pub(crate) close_after_shutdown: bool,
    pub(crate) above_high_water: bool,
    pub(crate) last_active: u64,
    pub(crate) idle_ms: Option<u32>,
    pub(crate) idle_timer: Option<TimerKey>,
    pub(crate) linger_timer: Option<TimerKey>,
    pub(crate) connect_timer: Option<TimerKey>,
    /// Handler timers by tag (rarely more than one or two; no allocation when none).
    pub(crate) user_timers: UserTimers,
    /// Holds a permit of the server's connection limit (incoming connections only).
    pub(crate) holds_permit: bool,
    /// A connection refused over a limit, closing (`net::listener::refusal`): not counted in
    /// `open`, `closed` or `linger_timeouts`, and no reason for a stopping loop to wait.
    pub(crate) refused: bool,
    pub(crate) closing_reason: Option<CloseReason>,
    /// The other connection of a relayed pair (`EventLoop::pair`), and the pipe bytes take to
    /// it when spliced (`EventLoop::splice`). Boxed: most connections are not relayed.
    pub(crate) relay: Option<Box<Relay>>,
}

impl Conn {
    fn new(fd: OwnedFd, state: ConnState, handler: Box<dyn Handler>, now: u64) -> Conn {
        Conn {
            fd,
            state,
            handler: Some(handler),
            input: None,
            output: OutputQueue::default(),
            interest: Interest::NONE,
            read_paused: false,
            parked: false,
            recv: None,
            read_eof: false,
            hup_seen: false,
            urgent_seen: false,
            draining: false,
            write_shut: false,
            shutdown_after_flush: false,
            close_after_shutdown: false,
            above_high_water: false,
            last_active: now,
            idle_ms: None,
            idle_timer: None,
            linger_timer: None,
            connect_timer: None,
            user_timers: UserTimers::default(),
            holds_permit: false,
            refused: false,
            closing_reason: None,
            relay: None,
        }
    }

    fn output_len(&self) -> usize {
        self.output.len() as usize
    }

    /// This end has started closing: our FIN is out, or asked for once the output drains.
    fn is_ending(&self) -> bool {
        self.write_shut || self.shutdown_after_flush || self.close_after_shutdown
    }

    /// Whether more output may be queued: not once our FIN is out or asked for, nor while
    /// the connection is closing.
    pub(crate) fn takes_output(&self) -> bool {
        !(self.write_shut || self.shutdown_after_flush || self.state == ConnState::Closing)
    }

    pub(crate) fn splice(&self) -> Option<&SpliceTo> {
        self.relay.as_ref()?.splice.as_ref()
    }

    pub(crate) fn pipe_full(&self) -> bool {
        self.relay.as_ref().is_some_and(|r| r.pipe_full)
    }
}

/// A relayed connection's ties to the other one of its pair.
#[derive(Default)]
pub(crate) struct Relay {
    /// Its activity counts as this connection's for the idle timeout.
    pub(crate) partner: Option<ConnId>,
    pub(crate) splice: Option<SpliceTo>,
    /// Spliced, and the pipe is full: reading waits until the destination takes some out.
    pub(crate) pipe_full: bool,
}

/// A connection's handler timers by tag: rarely more than one or two, and none at all on an
/// idle connection, which then pays one null pointer for them.
/// (Boxed on purpose: a `Vec` is 24 bytes inline, the box 8.)
#[derive(Default)]
#[allow(clippy::box_collection)]
pub(crate) struct UserTimers(Option<Box<Vec<(u64, TimerKey)>>>);

impl UserTimers {
    fn insert(&mut self, tag: u64, key: TimerKey) {
        self.0.get_or_insert_default().push((tag, key));
    }

    /// Removes `tag` if it is armed with exactly `key`.
    fn remove_if(&mut self, tag: u64, key: TimerKey) -> bool {
        let Some(v) = self.0.as_mut() else {
            return false;
        };
        let Some(i) = v.iter().position(|&e| e == (tag, key)) else {
            return false;
        };
        v.swap_remove(i);
        if v.is_empty() {
            self.0 = None;
        }
        true
    }

    fn remove(&mut self, tag: u64) -> Option<TimerKey> {
        let v = self.0.as_mut()?;
        let i = v.iter().position(|&(t, _)| t == tag)?;
        let (_, key) = v.swap_remove(i);
        if v.is_empty() {
            self.0 = None;
        }
        Some(key)
    }

    fn keys(&self) -> impl Iterator<Item = TimerKey> + '_ {
        self.0.iter().flat_map(|v| v.iter().map(|&(_, key)| key))
    }
}

fn would_block(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR
}

impl EventLoop {
    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        match self.slot_mut(id.0) {
            Some(Slot {
                source: Source::Conn(c),
                ..
            }) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn conn(&self, id: ConnId) -> Option<&Conn> {
        match self.slot(id.0) {
            Some(Slot {
                source: Source::Conn(c),
                ..
            }) => Some(c),
            _ => None,
        }
    }

    /// Puts a connected (or connecting) socket under this loop's care. Incoming connections
    /// arrive here from the listener; a multi-loop acceptor hands sockets to other loops by
    /// posting a task that calls this.
    pub fn adopt(&mut self, fd: OwnedFd, handler: Box<dyn Handler>) -> io::Result<ConnId> {
        let id = self.insert_conn(fd, ConnState::Open, handler)?;
        self.call_handler(id, |h, cx| h.on_connect(cx));
        Ok(id)
    }

    pub(crate) fn insert_conn(
        &mut self,
        fd: OwnedFd,
        state: ConnState,
        handler: Box<dyn Handler>,
    ) -> io::Result<ConnId> {
        let now = self.fresh_tick();
        let mut conn = Conn::new(fd, state, handler, now);
        let edge = self.poller.trigger() == Trigger::Edge;
        let completes = self.completes_reads();
        conn.interest = match (edge, state) {
            // A receive will read for it (`net::completion`): watch for writability only.
            (true, ConnState::Open) if completes => Interest::WRITABLE,
            (true, _) => Interest::BOTH,
            (false, ConnState::Connecting) => Interest::WRITABLE,
            (false, _) => Interest::READABLE,
        };
        let interest = conn.interest;
        let token = self.insert_source(Source::Conn(conn));
        let id = ConnId(token);
        if let Err(e) = self.register(token, interest) {
            self.remove_source(token);
            return Err(e);
        }
        self.stats.open += 1;
        self.sync_recv(id);
        // A connect is bounded by its own timeout; idleness counts from the handshake.
        if let Some(idle) = self
            .cfg
            .idle_timeout
            .filter(|_| state != ConnState::Connecting)
        {
            self.set_idle_timeout(id, Some(idle));
        }
        Ok(id)
    }

    /// Takes the handler out of its connection, calls it with a [`Ctx`], and puts it back.
    /// The handler can therefore reach any connection of this loop, its own included, through
    /// the context without aliasing itself.
    pub(crate) fn call_handler(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut dyn Handler, &mut Ctx<'_>),
    ) {
        let Some(mut handler) = self.conn_mut(id).and_then(|c| c.handler.take()) else {
            return;
        };
        // Deferred work (a close of this very connection, say) must wait until the handler is
        // back in place, or its `on_close` would be skipped.
        self.deferred_depth += 1;
        f(&mut *handler, &mut Ctx::new(self, id));
        self.deferred_depth -= 1;
        if let Some(conn) = self.conn_mut(id) {
            conn.handler = Some(handler);
        }
        self.run_deferred();
    }

    pub(crate) fn conn_event(&mut self, id: ConnId, ev: Event) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if ev.hup {
            conn.hup_seen = true;
        }
        if ev.urgent {
            conn.urgent_seen = true;
        }
        if conn.state == ConnState::Connecting {
            if !(ev.writable || ev.error) {
                return;
            }
            self.connect_finished(id);
            // A peer that speaks first (a greeting) may have sent bytes that arrived with the
            // handshake: an edge poller will not report them again.
            if !(ev.readable || ev.hup) {
                return;
            }
        }
        // An edge-triggered registration reports "writable" with nearly every event (the
        // socket has room), so look before the call: only queued output has anything to do.
        if ev.writable && self.conn(id).is_some_and(|c| !c.output.is_empty()) {
            self.conn_writable(id);
        }
        if ev.readable || ev.error {
            let Some(conn) = self.conn(id) else { return };
            if ev.error && (conn.read_eof || conn.read_paused || conn.pipe_full()) {
                // No read will run to surface the error, so look at it here: a reset after
                // the peer's FIN must still end the connection (and not be reported forever).
                self.socket_error_without_read(id);
            } else {
                self.conn_readable(id);
            }
        }
    }

    /// The poller reported an error or hang-up on a connection that is not reading.
    fn socket_error_without_read(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else { return };
        match SockRef::from(&conn.fd).take_error() {
            Ok(Some(e)) | Err(e) => self.close_with(id, CloseReason::Error(e.kind())),
            Ok(None) => {
                // A hang-up without error: both directions are finished.
                if conn.read_eof {
                    self.close_with(id, CloseReason::Normal);
                } else if (conn.read_paused || conn.pipe_full())
                    && self.poller.trigger() == Trigger::Level
                {
                    self.park(id);
                }
            }
        }
    }

    /// Takes a paused connection's fd out of the poller until reading resumes. A hang-up
    /// (both FINs in, unread input still queued) is reported by `epoll` and `poll` whatever
    /// interest is registered, and a level-triggered poller reports it on every wait: left
    /// registered, the fd would wake the loop for nothing until the handler resumed, a busy
    /// loop for as long as the backpressure lasts. Parked, it costs nothing; its idle and
    /// user timers still run, and `update_interest` registers it again on resume, when the
    /// input and the FIN behind it are read as usual.
    fn park(&mut self, id: ConnId) {
        let EventLoop { poller, slots, .. } = self;
        let Some(Source::Conn(conn)) = slot_in(slots, id.0).map(|s| &s.source) else {
            return;
        };
        if conn.parked || poller.deregister(conn.fd.as_fd()).is_err() {
            return;
        }
        let conn = self.conn_mut(id).expect("looked up above");
        conn.parked = true;
        conn.interest = Interest::NONE;
    }

    /// Reads what the socket has: one read per wake-up for level-triggered engines (the
    /// poller reports again if more is left), until EAGAIN or the read budget for edge.
    ///
    /// Two read paths. A connection holding no partial input reads straight into the loop's
    /// shared 64 KiB scratch buffer, and only bytes the handler leaves unconsumed are copied
    /// into a pooled buffer of its own: the common case (a whole request or message per read)
    /// costs one syscall and no copy, and the connection keeps no memory between messages. A
    /// connection already holding partial input `readv`s into its buffer's free space plus the
    /// scratch area as spill, so one syscall still takes whatever the socket has.
    pub(crate) fn conn_readable(&mut self, id: ConnId) {
        if self.conn(id).is_some_and(|c| c.recv.is_some()) {
            return; // a receive reads for it (`net::completion`)
        }
        // Spliced while open; a closing connection reads (and drops) its way to the FIN.
        if self
            .conn(id)
            .is_some_and(|c| c.splice().is_some() && c.state == ConnState::Open)
        {
            self.splice_readable(id);
            return;
        }
        let edge = self.poller.trigger() == Trigger::Edge;
        let budget = self.cfg.read_budget;
        let mut total = 0usize;
        loop {
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            if conn.read_paused || conn.read_eof || conn.state == ConnState::Closing {
                return;
            }
            let pending = conn.input.take().map(|b| *b);
            // The scratch buffer is only ever missing if a read re-entered another read.
            let mut scratch = self
                .scratch
                .take()
                .unwrap_or_else(|| Buffer::with_capacity(SCRATCH));
            let direct = pending.is_none();
            let EventLoop {
                slots,
                scratch: slot_scratch,
                ..
            } = self;
            let Some(Source::Conn(conn)) = slot_in(slots, id.0).map(|s| &s.source) else {
                return;
            };
            let (input, asked, res) = match pending {
                None => {
                    let asked = scratch.writable();
                    let res = scratch.recv_from(&conn.fd);
                    (scratch, asked, res)
                }
                Some(mut buf) => {
                    let asked = buf.writable() + scratch.writable();
                    let res = buf.read_from(&conn.fd, scratch.writable_mut());
                    *slot_scratch = Some(scratch);
                    (buf, asked, res)
                }
            };
            match res {
                Ok(0) => {
                    self.stash_input(id, input, direct);
                    self.peer_eof(id);
                    return;
                }
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    total += n;
                    self.deliver_input(id, input, direct);
                    // A short read emptied the socket: an edge poller will report new data
                    // (but not a FIN it already reported: then read on to the 0).
                    let (hup, draining) = self.conn(id).map_or((false, false), |c| {
                        (c.hup_seen || c.urgent_seen, c.draining)
                    });
                    // Draining: read on to EAGAIN, which is how an idle connection is recognised.
                    if !draining && (!edge || (n < asked && !hup)) {
                        return;
                    }
                    if total >= budget {
                        self.ready.push(id.0);
                        return;
                    }
                }
                Err(e) => {
                    self.stash_input(id, input, direct);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            if let Some(c) = self.conn_mut(id) {
                                c.urgent_seen = false;
                            }
                            self.close_if_drained(id);
                            return;
                        }
                        io::ErrorKind::Interrupted => {}
                        kind => {
                            self.close_with(id, CloseReason::Error(kind));
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Hands bytes just read (or received, `net::completion`) to the handler: counts the
    /// activity, calls `on_data`, and stashes what it left. `direct`: `input` is the loop's
    /// scratch buffer.
    pub(crate) fn deliver_input(&mut self, id: ConnId, mut input: Buffer, direct: bool) {
        let now = self.now_tick();
        let lingering = match self.conn_mut(id) {
            Some(conn) => {
                let lingering = conn.state == ConnState::Linger;
                if !lingering {
                    // Closing, only output moving counts as activity: see
                    // `linger_timer_fired`.
                    conn.last_active = now;
                }
                lingering
            }
            None => true,
        };
        // Deferred work (a flush, a redelivery after `resume_read`, a close) waits until what
        // the handler left of the input is stashed back in place.
        self.deferred_depth += 1;
        if lingering {
            // Closing: the peer's bytes are drained only to reach its FIN.
            input.clear();
        } else {
            self.call_handler(id, |h, cx| h.on_data(cx, &mut input));
        }
        self.stash_input(id, input, direct);
        self.deferred_depth -= 1;
        self.run_deferred();
    }

    /// After a read: the scratch buffer goes back to the loop (what the handler left in it is
    /// copied into a pooled buffer first); a connection's own buffer stays with it while it
    /// holds bytes and goes back to the pool once empty.
    fn stash_input(&mut self, id: ConnId, mut input: Buffer, direct: bool) {
        let keep =
            !input.is_empty() && self.conn(id).is_some_and(|c| c.state != ConnState::Closing);
        if direct {
            if keep {
                let mut own = self.pool.get();
                own.append(input.as_slice());
                if let Some(conn) = self.conn_mut(id) {
                    conn.input = Some(Box::new(own));
                }
            }
            input.clear();
            // The handler may have swapped or shrunk what it was lent (`mem::take`,
            // `shrink_to`): the next read must still have a whole scratch to read into, or a
            // read of 0 bytes would pass for the peer's FIN.
            if input.writable() < SCRATCH {
                input = Buffer::with_capacity(SCRATCH);
            }
            self.scratch = Some(input);
        } else if keep {
            if let Some(conn) = self.conn_mut(id) {
                conn.input = Some(Box::new(input));
            }
        } else {
            self.pool.put(input);
        }
    }

    /// `read() == 0`: the peer's FIN. The handler hears of it unless it asked to close, even
    /// when our own FIN went out first: a relay passes it on to the other socket of its pair.
    /// If our FIN is out, both directions are done and the connection closes normally.
    pub(crate) fn peer_eof(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.read_eof = true;
        let both_done = conn.write_shut;
        let asked_to_close = conn.close_after_shutdown;
        self.update_interest(id);
        if !asked_to_close {
            self.call_handler(id, |h, cx| h.on_peer_shutdown(cx));
        }
        if both_done {
            self.close_with(id, CloseReason::Normal);
        }
    }

    pub(crate) fn conn_writable(&mut self, id: ConnId) {
        let EventLoop {
            slots, stats, pool, ..
        } = self;
        let Some(Source::Conn(conn)) = slot_in_mut(slots, id.0).map(|s| &mut s.source) else {
            return;
        };
        if conn.state == ConnState::Closing || conn.output.is_empty() {
            return;
        }
        let res = conn
            .output
            .flush(conn.fd.as_fd(), self.cfg.write_budget, |b| pool.put(b));
        if let Ok(f) = res {
            stats.bytes_out += f.written;
            if let Some(source) = f.unblocked {
                self.pipe_has_room(source);
            }
            if f.budget_spent {
                // Not left to the poller, even level-triggered: a TCP socket is reported
                // writable only once a third of its buffer is free, and one stopped at the
                // budget may have room yet be below that, for as long as its peer takes.
                self.write_ready.push(id.0);
            }
        }
        let now = self.now_tick();
        match res {
            Ok(f) if !f.done => {
                if f.written > 0 {
                    if let Some(c) = self.conn_mut(id) {
                        c.last_active = now;
                    }
                }
            }
            Ok(_) => {
                let conn = self.conn_mut(id).expect("still here");
                conn.last_active = now;
                conn.above_high_water = false;
                let shutdown = conn.shutdown_after_flush;
                self.update_interest(id);
                if shutdown {
                    self.shutdown_now(id);
                } else {
                    self.call_handler(id, |h, cx| h.on_drained(cx));
                    if self.conn(id).is_some_and(|c| c.draining) {
                        // Its answer is out: see whether another request is waiting.
                        self.ready.push(id.0);
                    }
                }
            }
            Err(e) => self.close_with(id, CloseReason::Error(e.kind())),
        }
    }

    /// Registers exactly what the connection needs now: read unless paused or at EOF, write only
    /// while output is queued (or a connect is pending). Edge-triggered registrations never
    /// change: they were made for both directions once.
    pub(crate) fn update_interest(&mut self, id: ConnId) {
        if self.poller.trigger() == Trigger::Edge {
            return;
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let want_read = !conn.read_paused
            && !conn.read_eof
            && !conn.pipe_full()
            && conn.state != ConnState::Connecting;
        let want_write = conn.output_len() > 0 || conn.state == ConnState::Connecting;
        let want = Interest::with(want_read, want_write);
        if want == conn.interest || conn.state == ConnState::Closing {
            return;
        }
        conn.interest = want;
        let parked = conn.parked;
        let res = if parked {
            self.register(id.0, want)
        } else {
            self.reregister(id.0, want)
        };
        if parked && res.is_ok() {
            // Registered again: from now on a close must deregister it.
            if let Some(conn) = self.conn_mut(id) {
                conn.parked = false;
            }
        }
        if res.is_err() {
            self.close_with(id, CloseReason::Error(io::ErrorKind::Other));
        }
    }

    // ---- operations handlers call (through Ctx, or directly on the loop for other ids) ----

    /// Queues `data` on connection `id`: straight to the socket if nothing is queued, the
    /// rest buffered. Returns false if the connection is gone or its write side is shut.
    pub fn write(&mut self, id: ConnId, data: &[u8]) -> bool {
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        if !conn.takes_output() {
            return false;
        }
        if data.is_empty() {
            return true;
        }
        let mut written = 0;
        if conn.output_len() == 0 && conn.state != ConnState::Connecting {
            loop {
                match rustix::net::send(&conn.fd, data, SendFlags::NOSIGNAL) {
                    Ok(n) => {
                        written = n;
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) if would_block(e) => break,
                    Err(e) => {
                        self.close_with(id, CloseReason::Error(io::Error::from(e).kind()));
                        return false;
                    }
                }
            }
            self.stats.bytes_out += written as u64;
            if written > 0 {
                let now = self.now_tick();
                if let Some(conn) = self.conn_mut(id) {
                    conn.last_active = now;
                }
            }
        }
        if written == data.len() {
            return true;
        }
        self.enqueue(id, |q, pool| q.push_bytes(&data[written..], || pool.get()));
        true
    }

    /// Queues `data` on connection `id` without sending it yet: what is queued this way during
    /// one turn of the loop (the events of one wait, the tasks posted to it, its timers) leaves
    /// at the end of the turn, one `writev` per connection, or at once past [`BATCH_LIMIT`]
    /// bytes. For fan-out: a chat loop handling ten messages in a turn writes each member
    /// once, not ten times. Order with `write` is kept (a `write` behind batched bytes queues
    /// behind them). False if the connection is gone or its write side is shut.
    pub fn write_batched(&mut self, id: ConnId, data: &[u8]) -> bool {
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        if !conn.takes_output() {
            return false;
        }
        if data.is_empty() {
            return true;
        }
        let first = conn.output.is_empty() && conn.state != ConnState::Connecting;
        // Interest is left alone: the flush at the end of the turn usually empties the queue,
        // and a level-triggered poller would pay an `epoll_ctl` to turn writing on and another
        // to turn it off.
        self.enqueue_with(id, false, |q, pool| q.push_bytes(data, || pool.get()));
        if first {
            self.batched.push(id);
        }
        // A long turn (thousands of posted messages) must not queue without bound before its
        // end: past a batch's worth, send at once (when the calling handler returns).
        if self
            .conn(id)
            .is_some_and(|c| c.output_len() >= BATCH_LIMIT && c.state != ConnState::Connecting)
        {
            self.deferred.push(Deferred::Flush(id));
            self.run_deferred();
        }
        true
    }

    /// Sends what `write_batched` queued this turn (`EventLoop::run`, at the end of a turn).
    pub(crate) fn flush_batched(&mut self) {
        if self.batched.is_empty() {
            return;
        }
        let batched = std::mem::take(&mut self.batched);
        for &id in &batched {
            let unsent = self.conn(id).is_some_and(|c| !c.output.is_empty());
            if unsent {
                self.conn_writable(id);
                // Still unsent (the socket is full): wait for it to be writable.
                self.update_interest(id);
            }
            self.run_deferred();
        }
        if self.batched.is_empty() {
            self.batched = batched; // keep the allocation
            self.batched.clear();
        }
    }

    /// Sends `head` and then `range` of a file, the file with sendfile (no copy through user
    /// space), after whatever is queued; `head` leaves with MSG_MORE so it shares a packet
    /// with the file's first bytes. False if the connection is gone or its write side is shut.
    pub fn send_file(&mut self, id: ConnId, head: &[u8], range: FileRange) -> bool {
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        if !conn.takes_output() {
            return false;
        }
        let was_empty = conn.output.is_empty();
        let connecting = conn.state == ConnState::Connecting;
        self.enqueue(id, |q, pool| {
            q.push_bytes(head, || pool.get());
            q.push_file(range);
        });
        if was_empty && !connecting {
            // Nothing was ahead of it: send without waiting for a writable report (an
            // edge-triggered poller would not send one for a socket that never filled). Done
            // once the calling handler is back in place, so that `on_drained` reaches it.
            self.deferred.push(Deferred::Flush(id));
            self.run_deferred();
        }
        true
    }

    /// Adds output behind what is queued, and keeps interest and the high-water mark right.
    pub(crate) fn enqueue(
        &mut self,
        id: ConnId,
        push: impl FnOnce(&mut OutputQueue, &mut BufferPool),
    ) {
        self.enqueue_with(id, true, push)
    }

    /// `enqueue`, turning write interest on for a queue that was empty only if `interest`.
    fn enqueue_with(
        &mut self,
        id: ConnId,
        interest: bool,
        push: impl FnOnce(&mut OutputQueue, &mut BufferPool),
    ) {
        let high_water = self.cfg.high_water;
        let EventLoop { slots, pool, .. } = self;
        let Some(Source::Conn(conn)) = slot_in_mut(slots, id.0).map(|s| &mut s.source) else {
            return;
        };
        let was_empty = conn.output.is_empty();
        push(&mut conn.output, pool);
        let crossed = conn.output_len() >= high_water && !conn.above_high_water;
        if crossed {
            conn.above_high_water = true;
            self.deferred.push(Deferred::HighWater(id));
        }
        if was_empty && interest {
            self.update_interest(id);
        }
    }

    /// Calls `on_data` again with the input `id` holds (bytes its handler left unconsumed),
    /// if any. For models that run the handler elsewhere and come back later to what arrived
    /// meanwhile (half-sync/half-reactor).
    pub fn redeliver_input(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.state != ConnState::Open
            || conn.read_paused
            || conn.input.as_ref().is_none_or(|b| b.is_empty())
        {
            return;
        }
        let mut input = *conn.input.take().expect("checked above");
        self.deferred_depth += 1;
        self.call_handler(id, |h, cx| h.on_data(cx, &mut input));
        self.stash_input(id, input, false);
        self.deferred_depth -= 1;
        self.run_deferred();
    }

    /// Graceful stop, connection by connection: requests already received are still served
    /// and answered; the connection closes (gracefully) once it is idle: nothing unread in the
    /// socket, nothing queued to send. The server's drain deadline bounds the wait.
    pub(crate) fn drain_conn(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !conn
            .handler
            .as_ref()
            .is_none_or(|h| h.close_when_idle_at_stop())
        {
            // A relay: it ends when its streams do, or at the drain deadline.
            return;
        }
        if conn.state != ConnState::Open {
            // Connecting or already closing: a close bounded by its linger timer.
            self.close(id);
            return;
        }
        conn.draining = true;
        // A read attempt decides: EAGAIN with nothing to send means idle. A connection a
        // receive reads for makes it once the receive has ended (`net::completion`).
        self.ready.push(id.0);
        self.sync_recv(id);
    }

    /// A draining connection is idle, and closes, once nothing is queued and it holds no
    /// part of a message: bytes its handler left unconsumed are a request still arriving (a
    /// head cut by a packet boundary), whose rest is read and answered like any request
    /// already received. The handler's own timeouts (a head's) and the drain deadline bound
    /// the wait for it.
    pub(crate) fn close_if_drained(&mut self, id: ConnId) {
        if let Some(conn) = self.conn(id) {
            let partial = conn.input.as_ref().is_some_and(|b| !b.is_empty())
                || conn
                    .handler
                    .as_ref()
                    .is_some_and(|h| h.holds_partial_message());
            if conn.draining && conn.output_len() == 0 && !conn.read_paused && !partial {
                self.close(id);
            }
        }
    }

    /// Bytes queued on `id` and not yet accepted by the kernel.
    pub fn output_len(&self, id: ConnId) -> usize {
        match (self.conn(id), self.unsent_at_close) {
            (Some(c), _) => c.output_len(),
            (None, Some((closing, unsent))) if closing == id => unsent,
            (None, _) => 0,
        }
    }

    pub fn is_open(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.state != ConnState::Closing)
    }

    /// Half-close: send our FIN once queued output is flushed, keep reading. The connection
    /// closes when the peer's FIN has arrived too.
    pub fn shutdown_write(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.write_shut || conn.state == ConnState::Closing {
            return;
        }
        if conn.output_len() > 0 || conn.state == ConnState::Connecting {
            conn.shutdown_after_flush = true;
        } else {
            self.shutdown_now(id);
        }
    }

    /// Graceful close (rule 4): flush, FIN, discard further input, wait for the peer's FIN up
    /// to the linger timeout, then close (with RST if the peer never answered).
    pub fn close(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.state == ConnState::Closing {
            return;
        }
        conn.close_after_shutdown = true;
        if !conn.write_shut {
            self.shutdown_write(id);
        }
        // The linger timer bounds the whole close, flushing included: a peer that stopped
        // reading cannot hold the connection and its queued output forever. While output is
        // still queued it counts from the last bytes the peer took (`linger_timer_fired`),
        // and the peer's progress is marked now to tell a slow reader from a stalled one.
        let mark = self
            .conn(id)
            .filter(|c| c.output_len() > 0)
            .and_then(|c| send_timeout::mark(c.fd.as_fd()));
        self.start_linger(id, mark);
    }

    /// Closes at once with RST, dropping queued output.
    pub fn abort(&mut self, id: ConnId) {
        self.close_with(id, CloseReason::Aborted);
    }

    /// Stops reading from `id` (backpressure); the kernel's receive window then stops the peer.
    pub fn pause_read(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            if !conn.read_paused {
                conn.read_paused = true;
                self.update_interest(id);
                self.sync_recv(id);
            }
        }
    }

    pub fn resume_read(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if !conn.read_paused {
            return;
        }
        conn.read_paused = false;
        // Input the handler left unconsumed (it paused mid-stream, say for backpressure) is
        // offered again: no new bytes may ever come to announce it.
        let redeliver = conn.input.as_ref().is_some_and(|b| !b.is_empty());
        let draining = conn.draining;
        if redeliver {
            self.deferred.push(Deferred::Redeliver(id));
        }
        self.update_interest(id);
        self.sync_recv(id);
        // An edge poller will not report data that arrived while paused; and a draining
        // connection needs a read attempt to be found idle (`drain_conn`), which no event may
        // ever prompt.
        if draining || self.poller.trigger() == Trigger::Edge {
            self.ready.push(id.0);
        }
    }

    pub fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        let conn = self.conn(id)?;
        SockRef::from(&conn.fd).peer_addr().ok()?.as_socket()
    }

    /// Sets or clears the idle timeout of one connection. The timer is not re-armed on every
    /// read: when it fires, the loop compares with the last activity and re-arms for the rest.
    /// It is kept in milliseconds in a u32 (4 bytes per connection, not 8), so a longer
    /// timeout than 49.7 days acts as 49.7 days.
    pub fn set_idle_timeout(&mut self, id: ConnId, timeout: Option<Duration>) {
        let now = self.fresh_tick();
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let old = conn.idle_timer.take();
        conn.idle_ms = timeout.map(|t| EventLoop::ms(t).min(u64::from(u32::MAX)) as u32);
        let deadline = conn
            .idle_ms
            .map(|ms| now.max(conn.last_active) + u64::from(ms));
        if let Some(key) = old {
            self.timers.cancel(key);
        }
        if let Some(deadline) = deadline {
            let key = self.timers.insert(deadline, TimerEvent::Idle(id));
            if let Some(conn) = self.conn_mut(id) {
                conn.idle_timer = Some(key);
            }
        }
    }

    /// A one-shot timer delivered to the connection's handler as `on_timer(tag)`; setting
    /// the same tag again re-arms it. The connection keeps the keys so its timers die with it.
    pub fn set_conn_timer(&mut self, id: ConnId, after: Duration, tag: u64) {
        self.cancel_conn_timer(id, tag);
        let deadline = self.deadline_after(after);
        if self.conn(id).is_none() {
            return;
        }
        let key = self.timers.insert(deadline, TimerEvent::User(id, tag));
        if let Some(conn) = self.conn_mut(id) {
            conn.user_timers.insert(tag, key);
        }
    }

    pub fn cancel_conn_timer(&mut self, id: ConnId, tag: u64) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if let Some(key) = conn.user_timers.remove(tag) {
            self.timers.cancel(key);
        }
    }

    // ---- internals ----

    pub(crate) fn shutdown_now(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.shutdown_after_flush = false;
        if conn.write_shut {
            return;
        }
        conn.write_shut = true;
        let res = rustix::net::shutdown(&conn.fd, Shutdown::Write);
        let read_eof = conn.read_eof;
        let full_close = conn.close_after_shutdown;
        if res.is_err() {
            // ENOTCONN: the peer already reset. Nothing left to say to it.
            self.close_with(id, CloseReason::Error(io::ErrorKind::NotConnected));
        } else if read_eof {
            self.close_with(id, CloseReason::Normal);
        } else if full_close {
            // The wait for the peer's FIN gets a whole linger timeout from our FIN, however
            // long the flush before it took; after a flush the kernel may still hold much of
            // it, so the peer's progress is marked now.
            let flushed = self.conn_mut(id).and_then(|c| c.linger_timer.take());
            let mark = flushed.and_then(|key| {
                self.timers.cancel(key);
                send_timeout::mark(self.conn(id)?.fd.as_fd())
            });
            self.start_linger(id, mark);
        }
    }

    /// Enters the closing phase: input from now on is only drained to reach the peer's FIN,
    /// and one timer bounds the rest of the close (flush, FIN, waiting for the peer's FIN).
    /// `mark`: how far the peer had acknowledged (`net::send_timeout`), where bytes are on
    /// their way.
    fn start_linger(&mut self, id: ConnId, mark: Option<u32>) {
        let deadline = self.deadline_after(self.cfg.linger_timeout);
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.state == ConnState::Open {
            conn.state = ConnState::Linger;
            // Unconsumed input will never be handled now.
            if let Some(b) = conn.input.take().map(|b| *b) {
                self.pool.put(b);
            }
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.linger_timer.is_some() {
            return;
        }
        let paused = conn.read_paused;
        let key = self.timers.insert(deadline, TimerEvent::Linger(id, mark));
        if let Some(conn) = self.conn_mut(id) {
            conn.linger_timer = Some(key);
        }
        if paused {
            self.resume_read(id);
        }
    }

    /// Before our FIN, while queued output still waits for the peer to read it, the linger
    /// timeout is a send timeout: it counts from the last bytes the peer took, so a slow
    /// reader gets the whole of a long response and only a stalled one is cut off (as
    /// nginx's `send_timeout`). After our FIN it bounds the wait for the peer's, and the peer
    /// still taking what the kernel holds of ours buys it more (`net::send_timeout`).
    pub(crate) fn linger_timer_fired(&mut self, id: ConnId, key: TimerKey, mark: Option<u32>) {
        let now = self.now_tick();
        let linger = EventLoop::ms(self.cfg.linger_timeout);
        let Some(conn) = self.conn_mut(id).filter(|c| c.linger_timer == Some(key)) else {
            return;
        };
        conn.linger_timer = None;
        let flushing = |c: &Conn| !c.write_shut && c.output_len() > 0;
        if flushing(conn) && now >= conn.last_active + linger {
            self.nudge(id);
            match self.conn(id) {
                // Flushed whole and our FIN sent: a new linger timer counts from it. Closing
                // (the write failed): nothing more to decide.
                Some(conn) if conn.linger_timer.is_none() && conn.state != ConnState::Closing => {}
                _ => return,
            }
        }
        let conn = self.conn(id).expect("looked up above");
        let due = conn.last_active.saturating_add(linger);
        let next = if flushing(conn) && now < due {
            // Bytes left since the mark (counted by `last_active`): what the peer acknowledged
            // for them must not count again as progress in the next period.
            Some((due, send_timeout::mark(conn.fd.as_fd())))
        } else {
            match send_timeout::verdict(conn.fd.as_fd(), mark) {
                send_timeout::Verdict::Wait(mark) => Some((now + linger, Some(mark))),
                send_timeout::Verdict::Stalled => None,
            }
        };
        if let Some((at, mark)) = next {
            let key = self.timers.insert(at, TimerEvent::Linger(id, mark));
            if let Some(conn) = self.conn_mut(id) {
                conn.linger_timer = Some(key);
            }
            return;
        }
        if !self.conn(id).is_some_and(|c| c.refused) {
            self.stats.linger_timeouts += 1;
        }
        self.close_with(id, CloseReason::LingerTimeout);
    }

    /// Tries to send what `id` has queued before a timer judges it stalled. A slow reader
    /// takes bytes without the poller saying so: a TCP socket is reported writable only once
    /// a third of its send buffer is free (Linux: room for half of what is queued), and with
    /// the buffer autotuned to megabytes a client reading 16 KiB a second frees that much
    /// only after minutes. Room it made since is taken now, and counts as activity
    /// (`conn_writable`); a peer that took nothing leaves no room, and the write finds none.
    fn nudge(&mut self, id: ConnId) {
        self.conn_writable(id);
    }

    pub(crate) fn idle_timer_fired(&mut self, id: ConnId, key: TimerKey) {
        let now = self.now_tick();
        let Some(conn) = self.conn_mut(id).filter(|c| c.idle_timer == Some(key)) else {
            return; // gone, or its idle timer was reset after this one came due
        };
        conn.idle_timer = None;
        let Some(ms) = conn.idle_ms else { return };
        let partner = conn.relay.as_ref().and_then(|r| r.partner);
        let partner_active = partner
            .and_then(|p| self.conn(p))
            .map_or(0, |p| p.last_active);
        let conn = self.conn(id).expect("looked up above");
        let mut deadline = conn.last_active.max(partner_active) + u64::from(ms);
        if now >= deadline {
            // Either side of a pair may hold the bytes a slow reader is taking: the side
            // whose timer came due may be the one paused for its partner.
            let mut nudged = false;
            for side in std::iter::once(id).chain(partner) {
                let stuck = self.conn(side).is_some_and(|c| {
                    c.output_len() > 0 && !c.write_shut && c.state != ConnState::Connecting
                });
                if stuck {
                    self.nudge(side);
                    nudged = true;
                }
            }
            if nudged {
                let Some(conn) = self.conn(id).filter(|c| c.state != ConnState::Closing) else {
                    return; // gone, or the write failed and it is closing
                };
                let partner_active = partner
                    .and_then(|p| self.conn(p))
                    .map_or(0, |p| p.last_active);
                deadline = conn.last_active.max(partner_active) + u64::from(ms);
            }
        }
        let conn = self.conn(id).expect("looked up above");
        if now < deadline {
            let key = self.timers.insert(deadline, TimerEvent::Idle(id));
            if let Some(conn) = self.conn_mut(id) {
                conn.idle_timer = Some(key);
            }
            return;
        }
        if conn.linger_timer.is_some() {
            return; // a close is under way; its linger timer decides the end
        }
        if conn.is_ending() {
            // Still stuck a whole idle period after this end started closing (the peer reads
            // nothing, or never sends its FIN after ours): give up. Counted once, below.
            self.close_with(id, CloseReason::IdleTimeout);
            return;
        }
        // Re-arm so a peer that never reads our queued output is cut off a period later.
        let key = self
            .timers
            .insert(now + u64::from(ms), TimerEvent::Idle(id));
        if let Some(conn) = self.conn_mut(id) {
            conn.idle_timer = Some(key);
        }
        self.call_handler(id, |h, cx| h.on_idle_timeout(cx));
        // Counted when it ends the connection: a handler may let the time pass (a proxy's
        // client while its backend is being reached, which the connect timeout bounds).
        if self
            .conn(id)
            .is_none_or(|c| c.state == ConnState::Closing || c.is_ending())
        {
            self.stats.idle_timeouts += 1;
        }
    }

    /// Ties `a` and `b` into a relayed pair for the idle timeout: each counts as active while
    /// the other moves bytes. A relay's side that waits, paused, for a slow reader on the other
    /// side is not idle; the pair is idle when neither side moved a byte for the timeout.
    pub fn pair(&mut self, a: ConnId, b: ConnId) {
        for (me, other) in [(a, b), (b, a)] {
            if let Some(conn) = self.conn_mut(me) {
                conn.relay.get_or_insert_with(Box::default).partner = Some(other);
            }
        }
    }

    /// Calls `id`'s `on_timer(tag)` once the current callback has returned, as a timer due at
    /// once would, without going through the wheel. It is how one handler tells another of the
    /// same loop that something happened: a proxy's upstream side tells the client side that
    /// its connect succeeded or failed. Nothing happens if `id` has closed, or its handler has
    /// asked to close, by then.
    pub fn poke(&mut self, id: ConnId, tag: u64) {
        if self.conn(id).is_some() {
            self.deferred.push(Deferred::Poke(id, tag));
            self.run_deferred();
        }
    }

    pub(crate) fn poked(&mut self, id: ConnId, tag: u64) {
        // Like the peer's FIN, a poke is news only to a handler that has not asked to close.
        if self
            .conn(id)
            .is_some_and(|c| c.state != ConnState::Closing && !c.close_after_shutdown)
        {
            self.call_handler(id, |h, cx| h.on_timer(cx, tag));
        }
    }

    /// Whether `id` is an outgoing connection still waiting for its connect to finish.
    pub fn is_connecting(&self, id: ConnId) -> bool {
        self.conn(id)
            .is_some_and(|c| c.state == ConnState::Connecting)
    }

    pub(crate) fn user_timer_fired(&mut self, id: ConnId, tag: u64, key: TimerKey) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        // Cancelled or set again after it came due: the handler no longer expects this one.
        if !conn.user_timers.remove_if(tag, key) {
            return;
        }
        self.call_handler(id, |h, cx| h.on_timer(cx, tag));
    }

    /// Calls `id`'s `on_high_water` with its queue, as soon as no handler is running (at
    /// once from a task; after the handler that called this, from one): for a queue that
    /// grew past a limit of the handler's own, which the loop's one-time high-water call
    /// does not report again.
    pub(crate) fn remind_high_water(&mut self, id: ConnId) {
        self.deferred.push(Deferred::HighWater(id));
        self.run_deferred();
    }

    pub(crate) fn notify_high_water(&mut self, id: ConnId) {
        let queued = self.output_len(id);
        if queued > 0 {
            self.call_handler(id, |h, cx| h.on_high_water(cx, queued));
        }
    }

    /// Queues the connection for destruction with `reason`. The first reason wins.
    pub(crate) fn close_with(&mut self, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing_reason.is_some() {
            return;
        }
        conn.closing_reason = Some(reason);
        conn.state = ConnState::Closing;
        self.deferred.push(Deferred::Close(id));
    }

    /// The one place a connection's fd is closed.
    pub(crate) fn destroy_conn(&mut self, id: ConnId) {
        let Some(Source::Conn(mut conn)) = self.remove_source(id.0) else {
            return;
        };
        if let (Some(key), Poller::Uring(uring)) = (conn.recv, &mut self.poller) {
            // Queued here, handed to the kernel with the poll's removal just below.
            uring.cancel_recv(key, id.0, false);
        }
        if !conn.parked {
            self.poller.deregister_before_close(conn.fd.as_fd());
        }
        for key in [conn.idle_timer, conn.linger_timer, conn.connect_timer]
            .into_iter()
            .flatten()
            .chain(conn.user_timers.keys())
        {
            self.timers.cancel(key);
        }
        if let Some(buf) = conn.input.take().map(|b| *b) {
            self.pool.put(buf);
        }
        let unsent = conn.output.len() as usize;
        let pool = &mut self.pool;
        conn.output.clear(|b| pool.put(b));
        let reason = conn.closing_reason.take().unwrap_or(CloseReason::Normal);
        if reason.abortive() {
            let _ = SockRef::from(&conn.fd).set_linger(Some(Duration::ZERO));
        }
        if !conn.refused {
            self.stats.open -= 1;
            self.stats.closed += 1;
        }
        if conn.holds_permit {
            self.release_permit();
        }
        let handler = conn.handler.take();
        drop(conn); // close(2)
        self.unstarve_listeners();
        if let Some(mut h) = handler {
            self.unsent_at_close = Some((id, unsent));
            h.on_close(&mut Ctx::new(self, id), reason);
            self.unsent_at_close = None;
        }
    }
}

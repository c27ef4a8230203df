//! The event loop: wait → dispatch → expire timers → run posted tasks, on one thread.
//!
//! One `EventLoop` owns a poller, every source registered in it (listeners, connections, UDP
//! sockets, its waker and signalfd), a timing wheel, a buffer pool and the 64 KiB scratch buffer all
//! its connections read through. Nothing in it is shared with another thread except the task
//! queue behind [`LoopHandle`]; that is muduo's "one loop per thread" and the reason no lock
//! sits on the I/O path.
//!
//! The connection state machine lives in `net::connection`, the accept policy in
//! `net::listener`, outgoing connects in `net::connector`: they are `impl EventLoop` blocks
//! because each needs the loop's poller, pool and timers, and each file holds one concept.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::event::{Event, Interest, Token, Trigger};
use super::handle::{LoopHandle, Shared, Task};
use super::poller::{Engine, Poller};
use super::signals::{Signal, Signals};
use super::stats::LoopStats;
use super::timer_wheel::{TimerKey, TimerWheel};
use super::waker::Waker;
use crate::net::buffer::Buffer;
use crate::net::buffer_pool::BufferPool;
use crate::net::connection::{CloseReason, Conn, ConnId};
use crate::net::listener::{ConnectionLimit, Listener};
use crate::net::udp::UdpEndpoint;

/// Size of the loop's shared read buffer: what one read can take from a socket.
pub const SCRATCH: usize = 64 * 1024;

/// TCP keepalive probe settings (the kernel's half-open detection; see DESIGN rule 7).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// Per-loop settings. Every timeout in it is enforced by the loop's timing wheel.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub engine: Engine,
    /// Close a connection that moved no byte for this long.
    pub idle_timeout: Option<Duration>,
    /// After our FIN, how long to wait for the peer's before closing with RST. Before it,
    /// while a closing connection's output is still queued, the longest the peer may go
    /// without taking a byte of it (a send timeout, as nginx's `send_timeout`).
    pub linger_timeout: Duration,
    /// Refuse (accept, then close) incoming connections beyond this limit, which may be
    /// shared by several loops (one server's limit).
    pub connection_limit: Option<Arc<ConnectionLimit>>,
    /// Accept at most this many connections per readiness report, so a connect storm cannot
    /// starve established connections.
    pub max_accepts_per_wakeup: usize,
    /// Edge-triggered: read at most this many bytes from one connection per wake-up before
    /// moving on (the connection is revisited before the next wait).
    pub read_budget: usize,
    /// Send at most about this many bytes to one connection per wake-up before moving on (the
    /// connection is revisited before the next wait): a reader as fast as the loop must not
    /// hold it for the length of a whole large file.
    pub write_budget: u64,
    /// Queued output above which the handler's `on_high_water` is called.
    pub high_water: usize,
    pub tcp_nodelay: bool,
    pub keepalive: Option<Keepalive>,
    /// Initial size of a pooled connection buffer, and how many the pool keeps.
    pub buffer_size: usize,
    pub pooled_buffers: usize,
    /// What a refused client is told before the close (over `--max-conns`, out of fds): the
    /// service's own words (an HTTP 503, a chat ERROR frame), so the client sees why instead of
    /// a bare close. None for byte-stream services with no room for a message (echo, proxy).
    pub refusal_note: Option<Arc<[u8]>>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            engine: Engine::default(),
            idle_timeout: None,
            linger_timeout: Duration::from_secs(5),
            connection_limit: None,
            max_accepts_per_wakeup: 64,
            read_budget: 256 * 1024,
            write_budget: 1024 * 1024,
            high_water: 1024 * 1024,
            tcp_nodelay: true,
            keepalive: None,
            buffer_size: 4096,
            pooled_buffers: 1024,
            refusal_note: None,
        }
    }
}

/// What a timer means when it fires. Connection timers name the connection by [`ConnId`], so
/// a timer outliving its connection is recognised by the generation check and ignored.
pub(crate) enum TimerEvent {
    Idle(ConnId),
    /// A connection's linger timer, with the peer's progress when it was set
    /// (`net::send_timeout`).
    Linger(ConnId, Option<u32>),
    Connect(ConnId),
    User(ConnId, u64),
    Task(Box<dyn FnOnce(&mut EventLoop)>),
    DrainDeadline,
}

/// Everything a token can name.
pub(crate) enum Source {
    Conn(Conn),
    Listener(Listener),
    Udp(UdpEndpoint),
    Waker,
    Signals(Option<Signals>),
}

impl Source {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Source::Conn(c) => Some(c.fd.as_fd()),
            Source::Listener(l) => Some(l.fd.as_fd()),
            Source::Udp(u) => Some(u.sock.as_fd()),
            Source::Waker | Source::Signals(_) => None,
        }
    }
}

/// Looks a token up in a slab borrowed on its own, so callers can borrow other loop fields
/// (the scratch buffer, the stats) at the same time.
pub(crate) fn slot_in(slots: &Slab<Slot>, token: Token) -> Option<&Slot> {
    match slots.get((token.0 & 0xffff_ffff) as usize) {
        Some(slot) if slot.generation == (token.0 >> 32) as u32 => Some(slot),
        _ => None,
    }
}

pub(crate) fn slot_in_mut(slots: &mut Slab<Slot>, token: Token) -> Option<&mut Slot> {
    match slots.get_mut((token.0 & 0xffff_ffff) as usize) {
        Some(slot) if slot.generation == (token.0 >> 32) as u32 => Some(slot),
        _ => None,
    }
}

pub(crate) struct Slot {
    pub(crate) generation: u32,
    pub(crate) source: Source,
}

/// Work queued while a handler runs and done right after it returns: closing a connection,
/// or telling a handler its output crossed the high-water mark. Deferring keeps a handler from
/// being re-entered and keeps the fd-closing code in one place.
pub(crate) enum Deferred {
    Close(ConnId),
    HighWater(ConnId),
    /// Offer a connection's unconsumed input to its handler again (reading was resumed).
    Redeliver(ConnId),
    /// Send what a connection has queued (a file just queued behind nothing).
    Flush(ConnId),
    /// Call a connection's `on_timer(tag)` on behalf of another handler (`EventLoop::poke`).
    Poke(ConnId, u64),
}

type SignalCallback = Box<dyn FnMut(&mut EventLoop, Signal)>;

/// How often a turning loop publishes its counters for other threads (`/metrics`).
const PUBLISH_EVERY_MS: u64 = 100;

pub struct EventLoop {
    pub(crate) cfg: LoopConfig,
    pub(crate) poller: Poller,
    pub(crate) slots: Slab<Slot>,
    next_generation: u32,
    pub(crate) timers: TimerWheel<TimerEvent>,
    fired: Vec<(TimerKey, u64, TimerEvent)>,
    /// Inside `expire_timers`: task keys cancelled after they left the wheel, not to be run.
    expiring: bool,
    cancelled_while_expiring: Vec<TimerKey>,
    /// The connection whose `on_close` is running and the bytes it still had queued, which
    /// were never sent: what [`Ctx::output_len`](crate::net::Ctx::output_len) says there.
    pub(crate) unsent_at_close: Option<(ConnId, usize)>,
    /// When the counters were last published for other threads.
    published_at: u64,
    pub(crate) pool: BufferPool,
    /// The shared read buffer every connection of the loop reads through (see
    /// `EventLoop::conn_read`). `None` only while a read is using it.
    pub(crate) scratch: Option<Buffer>,
    pub(crate) stats: LoopStats,
    pub(crate) deferred: Vec<Deferred>,
    deferred_spare: Vec<Deferred>,
    pub(crate) deferred_depth: u32,
    /// Sources an edge-triggered poller will not report again although they may still have
    /// work (read budget spent, accept bound reached, or read resumed after a pause).
    pub(crate) ready: Vec<Token>,
    ready_spare: Vec<Token>,
    /// Connections whose flush stopped at the write budget with the socket still taking
    /// bytes: flushed again before the next wait. No poller would report them: an edge-
    /// triggered one reports a socket once it filled, and a level-triggered one only once a
    /// third of its buffer is free, which one stopped at the budget may never reach.
    pub(crate) write_ready: Vec<Token>,
    write_ready_spare: Vec<Token>,
    /// Connections with output queued by `write_batched` this turn, flushed at its end.
    pub(crate) batched: Vec<ConnId>,
    /// Receive completions of the last wait (`uring` engine; see `net::completion`).
    pub(crate) received: Vec<super::poller::Received>,
    /// An fd held in reserve for the EMFILE dance (DESIGN rule 6).
    pub(crate) reserve_fd: Option<OwnedFd>,
    /// Listeners that stopped accepting for want of an fd; revisited when a connection closes.
    pub(crate) accept_starved: Vec<Token>,
    /// A retry of the starved listeners is scheduled (one at a time).
    pub(crate) starved_retry: bool,
    /// Whether a failed registration of an accepted connection was reported already.
    pub(crate) warned_register: bool,
    /// Refused connections closing gracefully on this loop (`EventLoop::refuse`).
    pub(crate) refusing: Arc<std::sync::atomic::AtomicUsize>,
    shared: Arc<Shared>,
    tasks: Vec<Task>,
    on_signal: Option<SignalCallback>,
    start: Instant,
    /// The clock as of the current iteration: read once per wake-up, right after the wait.
    now: Instant,
    now_tick: u64,
    quit: bool,
    draining: bool,
    /// A drained loop stays up while held (see [`hold_drain`](Self::hold_drain)).
    drain_held: bool,
    exit_when_empty: bool,
    /// The process the poller was made in (see `renew_poller_after_fork`).
    owner_pid: u32,
}

impl EventLoop {
    pub fn new(mut cfg: LoopConfig) -> io::Result<EventLoop> {
        // A bound of 0 would mean a loop that never accepts, reads or writes, and spins.
        cfg.max_accepts_per_wakeup = cfg.max_accepts_per_wakeup.max(1);
        cfg.read_budget = cfg.read_budget.max(1);
        cfg.write_budget = cfg.write_budget.max(1);
        let (poller, engine) = Poller::new_or_fallback(cfg.engine)?;
        cfg.engine = engine;
        let shared = Arc::new(Shared::new(Waker::new()?));
        let pool = BufferPool::new(cfg.buffer_size, cfg.pooled_buffers);
        let mut el = EventLoop {
            poller,
            slots: Slab::with_capacity(1024),
            next_generation: 1,
            timers: TimerWheel::new(0),
            fired: Vec::new(),
            expiring: false,
            cancelled_while_expiring: Vec::new(),
            unsent_at_close: None,
            published_at: 0,
            pool,
            scratch: Some(Buffer::with_capacity(SCRATCH)),
            stats: LoopStats::new(cfg.engine),
            deferred: Vec::new(),
            deferred_spare: Vec::new(),
            deferred_depth: 0,
            ready: Vec::new(),
            ready_spare: Vec::new(),
            write_ready: Vec::new(),
            write_ready_spare: Vec::new(),
            batched: Vec::new(),
            received: Vec::new(),
            reserve_fd: None,
            accept_starved: Vec::new(),
            starved_retry: false,
            warned_register: false,
            refusing: Arc::default(),
            shared,
            tasks: Vec::new(),
            on_signal: None,
            start: Instant::now(),
            now: Instant::now(),
            now_tick: 0,
            quit: false,
            draining: false,
            drain_held: false,
            exit_when_empty: false,
            owner_pid: std::process::id(),
            cfg,
        };
        el.reserve_fd = crate::net::listener::open_reserve_fd();
        let token = el.insert_source(Source::Waker);
        let shared = el.shared.clone();
        el.poller
            .register(shared.waker.as_fd(), token, Interest::READABLE)?;
        Ok(el)
    }

    pub fn config(&self) -> &LoopConfig {
        &self.cfg
    }

    pub fn engine(&self) -> Engine {
        self.cfg.engine
    }

    pub fn trigger(&self) -> Trigger {
        self.poller.trigger()
    }

    /// A `Send` handle for posting work to this loop from other threads.
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.shared.clone(),
        }
    }

    /// Counts a handler-reported event (see [`crate::net::Ctx::note`]).
    pub fn note(&mut self, note: super::stats::Note) {
        self.stats.note(note);
    }

    pub fn stats(&self) -> &LoopStats {
        &self.stats
    }

    /// Milliseconds since the loop started, as of the current iteration (one clock read per
    /// iteration, not per event).
    pub fn now_tick(&self) -> u64 {
        self.now_tick
    }

    /// The time as of the current iteration (read once per wake-up): what handlers use for
    /// anything that needs no finer clock than that, instead of a clock read of their own.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The wheel tick now, from a clock read now rather than this iteration's reading: a long
    /// batch (handlers that block, under the models made for them) leaves that reading far
    /// behind, and a timer armed at its end from it would be due at once, a connection
    /// adopted there counted idle since before it came. Used where a deadline or a start is
    /// set (a timer, a connection, a drain), per connection or request at most, never per
    /// event, so the read costs nothing the hot path feels.
    pub(crate) fn fresh_tick(&mut self) -> u64 {
        self.update_clock();
        self.now_tick
    }

    /// The wheel tick `after` from now ([`EventLoop::fresh_tick`]).
    pub(crate) fn deadline_after(&mut self, after: Duration) -> u64 {
        self.fresh_tick().saturating_add(Self::ms(after))
    }

    pub(crate) fn ms(d: Duration) -> u64 {
        // Round up so a timer never fires early.
        let ms = d.as_millis();
        let up = if Duration::from_millis(ms as u64) < d {
            ms + 1
        } else {
            ms
        };
        up.min(u64::MAX as u128) as u64
    }

    fn update_clock(&mut self) {
        self.now = Instant::now();
        self.now_tick = self.now.saturating_duration_since(self.start).as_millis() as u64;
    }

    pub(crate) fn insert_source(&mut self, source: Source) -> Token {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let index = self.slots.insert(Slot { generation, source });
        Token(((generation as u64) << 32) | index as u64)
    }

    /// The slot a token names, if it still holds the same source (generation matches).
    pub(crate) fn slot_mut(&mut self, token: Token) -> Option<&mut Slot> {
        slot_in_mut(&mut self.slots, token)
    }

    pub(crate) fn slot(&self, token: Token) -> Option<&Slot> {
        slot_in(&self.slots, token)
    }

    /// Registers the fd of the source `token` names. `poller` and `slots` are disjoint fields,
    /// so the fd can be borrowed from the slab while the poller is borrowed mutably.
    pub(crate) fn register(&mut self, token: Token, interest: Interest) -> io::Result<()> {
        let EventLoop { poller, slots, .. } = self;
        let slot = slot_in(slots, token).ok_or(io::ErrorKind::NotFound)?;
        poller.register(
            slot.source.fd().ok_or(io::ErrorKind::NotFound)?,
            token,
            interest,
        )
    }

    pub(crate) fn reregister(&mut self, token: Token, interest: Interest) -> io::Result<()> {
        let EventLoop { poller, slots, .. } = self;
        let slot = slot_in(slots, token).ok_or(io::ErrorKind::NotFound)?;
        poller.reregister(
            slot.source.fd().ok_or(io::ErrorKind::NotFound)?,
            token,
            interest,
        )
    }

    pub(crate) fn remove_source(&mut self, token: Token) -> Option<Source> {
        self.slot(token)?;
        let index = (token.0 & 0xffff_ffff) as usize;
        Some(self.slots.remove(index).source)
    }

    /// Runs `f` on the loop thread after `after`.
    pub fn run_after(
        &mut self,
        after: Duration,
        f: impl FnOnce(&mut EventLoop) + 'static,
    ) -> TimerKey {
        let deadline = self.deadline_after(after);
        self.timers.insert(deadline, TimerEvent::Task(Box::new(f)))
    }

    /// Cancels a timer set with [`run_after`](Self::run_after). Also effective on a timer
    /// that is due in the very batch now being run (it has left the wheel but not yet run).
    pub fn cancel_timer(&mut self, key: TimerKey) {
        if self.timers.cancel(key).is_none() && self.expiring {
            self.cancelled_while_expiring.push(key);
        }
    }

    /// Delivers the given signals to `callback` as loop events. Must be called before any
    /// other thread is spawned (see `reactor::signals`).
    pub fn add_signals(
        &mut self,
        signals: &[Signal],
        callback: impl FnMut(&mut EventLoop, Signal) + 'static,
    ) -> io::Result<()> {
        let sigs = Signals::new(signals)?;
        let token = self.insert_source(Source::Signals(None));
        if let Err(e) = self
            .poller
            .register(sigs.as_fd(), token, Interest::READABLE)
        {
            self.remove_source(token);
            return Err(e);
        }
        if let Some(slot) = self.slot_mut(token) {
            slot.source = Source::Signals(Some(sigs));
        }
        self.on_signal = Some(Box::new(callback));
        Ok(())
    }

    /// After a fork (daemonizing), a signalfd made by the parent no longer wakes this
    /// process's loop: replace it with one of our own.
    fn renew_inherited_signals(&mut self) -> io::Result<()> {
        let tokens: Vec<Token> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(&s.source, Source::Signals(Some(sig)) if sig.inherited()))
            .map(|(i, s)| Token(((s.generation as u64) << 32) | i as u64))
            .collect();
        for token in tokens {
            let EventLoop { slots, poller, .. } = self;
            let Some(Source::Signals(Some(old))) = slot_in(slots, token).map(|s| &s.source) else {
                continue;
            };
            let new = old.renew()?;
            let _ = poller.deregister(old.as_fd());
            poller.register(new.as_fd(), token, Interest::READABLE)?;
            if let Some(slot) = self.slot_mut(token) {
                slot.source = Source::Signals(Some(new));
            }
        }
        Ok(())
    }

    /// After a fork (daemonizing), an io_uring made by the parent is not this process's to
    /// use: it was set up for the parent's thread alone (`SINGLE_ISSUER`), and the kernel
    /// refuses the child's submissions. The loop gets a ring of its own and registers every
    /// source in it again (a daemon forks before any connection exists, but connections are
    /// carried over too). epoll, select and poll keep working across a fork.
    fn renew_poller_after_fork(&mut self) -> io::Result<()> {
        if self.owner_pid == std::process::id() || !matches!(self.poller, Poller::Uring(_)) {
            return Ok(());
        }
        self.owner_pid = std::process::id();
        let (poller, engine) = Poller::new_or_fallback(Engine::Uring)?;
        drop(std::mem::replace(&mut self.poller, poller));
        self.cfg.engine = engine;
        self.stats.engine = engine;
        let mut conns = Vec::new();
        let EventLoop {
            poller,
            slots,
            shared,
            ..
        } = self;
        for (index, slot) in slots.iter_mut() {
            let token = Token(((slot.generation as u64) << 32) | index as u64);
            match &mut slot.source {
                Source::Conn(c) => {
                    c.recv = None; // the parent's ring's
                    if !c.parked {
                        // Watched for both until `sync_recv` gives it a receive again.
                        c.interest = Interest::BOTH;
                        poller.register(c.fd.as_fd(), token, c.interest)?;
                        conns.push(ConnId(token));
                    }
                }
                Source::Listener(l) => poller.register(l.fd.as_fd(), token, Interest::READABLE)?,
                Source::Udp(u) => poller.register(u.sock.as_fd(), token, Interest::READABLE)?,
                Source::Waker => {
                    poller.register(shared.waker.as_fd(), token, Interest::READABLE)?
                }
                Source::Signals(Some(sig)) => {
                    poller.register(sig.as_fd(), token, Interest::READABLE)?
                }
                Source::Signals(None) => {}
            }
        }
        for id in conns {
            self.sync_recv(id);
            self.ready.push(id.0);
        }
        Ok(())
    }

    /// Makes `run` return at the end of the current iteration.
    pub fn stop(&mut self) {
        self.quit = true;
    }

    /// Graceful stop: listeners close at once (new connections are refused), every connection
    /// is closed gracefully, and `run` returns when the last one is gone or after `drain`.
    pub fn shutdown_gracefully(&mut self, drain: Duration) {
        self.shutdown_gracefully_until(instant_after(drain));
    }

    /// [`shutdown_gracefully`](Self::shutdown_gracefully) with the drain ending at `deadline`,
    /// however late this loop gets to it: a stop posted to many loops is due when the signal
    /// came, not when a loop busy in a long callback gets round to the task.
    pub fn shutdown_gracefully_until(&mut self, deadline: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        let mut listeners = Vec::new();
        let mut conns = Vec::new();
        for (index, slot) in self.slots.iter() {
            let token = Token(((slot.generation as u64) << 32) | index as u64);
            match slot.source {
                Source::Listener(_) | Source::Udp(_) => listeners.push(token),
                Source::Conn(_) => conns.push(ConnId(token)),
                _ => {}
            }
        }
        for token in listeners {
            self.close_listener(token);
        }
        for id in conns {
            self.drain_conn(id);
        }
        // The deadline's own tick, not the time left added to this iteration's tick: inside
        // a long batch (a handler that blocked) that tick is old, and the sum came early.
        let due = Self::ms(deadline.saturating_duration_since(self.start)).max(self.fresh_tick());
        self.timers.insert(due, TimerEvent::DrainDeadline);
        self.run_deferred();
    }

    /// Makes `run` return as soon as no connection is left (a loop that serves one
    /// connection, under thread- or process-per-connection).
    pub fn exit_when_empty(&mut self, on: bool) {
        self.exit_when_empty = on;
    }

    /// Keeps a draining loop running once its own connections are gone, until
    /// [`release_drain`](Self::release_drain): a control loop is the thread that reads the
    /// signals, and must still be there to hear a second SIGINT while its worker loops drain.
    pub fn hold_drain(&mut self) {
        self.drain_held = true;
    }

    pub fn release_drain(&mut self) {
        self.drain_held = false;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Runs the loop until [`stop`](Self::stop), or until a graceful shutdown has drained.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(1024);
        self.quit = false;
        self.renew_poller_after_fork()?;
        self.renew_inherited_signals()?;
        self.update_clock(); // set-up may have taken a while since the loop was built
        self.publish_stats(); // a loop busy from its first event is still seen as it began
        self.run_iterations(&mut events)
    }

    fn run_iterations(&mut self, events: &mut Vec<Event>) -> io::Result<()> {
        while !self.quit {
            self.run_deferred(); // work queued by calls made before `run` or between iterations
            self.flush_batched();
            // Checked before the wait too: a loop whose work ended before it ever waited (a
            // thread-per-conn loop whose one connection was reset while `on_connect` wrote
            // to it, inside `adopt`) may have nothing left that would ever wake it. Not while
            // a timer or a posted task (a connection handed over, say) can still bring work.
            if self.finished() && self.timers.next_deadline().is_none() && !self.shared.has_tasks()
            {
                break;
            }
            let timeout = self.poll_timeout();
            self.poller.wait(events, timeout)?;
            self.stats.wakeups += 1;
            self.stats.events += events.len() as u64;
            self.update_clock();
            for ev in events.iter() {
                self.dispatch(*ev);
                self.run_deferred();
            }
            self.run_received();
            self.run_ready_list();
            self.expire_timers();
            self.flush_batched();
            if self.now_tick >= self.published_at.saturating_add(PUBLISH_EVERY_MS) {
                self.publish_stats();
            }
            if self.finished() {
                self.quit = true;
            }
        }
        Ok(())
    }

    /// A draining loop, or one that ends with its connections, has none left.
    fn finished(&self) -> bool {
        ((self.draining && !self.drain_held) || self.exit_when_empty) && self.stats.open == 0
    }

    /// Copies the counters where other threads read them without asking the loop
    /// ([`LoopHandle::published_stats`]).
    fn publish_stats(&mut self) {
        self.published_at = self.now_tick;
        *self
            .shared
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(self.stats.clone());
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        // Batched output queued by the flush just made (a handler's `on_drained` producing
        // the next chunk) goes out at the end of the next turn, which must not wait: an
        // edge-triggered poller has no event coming for a socket that never filled.
        if !self.ready.is_empty()
            || !self.write_ready.is_empty()
            || self.quit
            || !self.batched.is_empty()
        {
            return Some(Duration::ZERO);
        }
        // Measured from this iteration's clock reading, as nginx does with its cached time:
        // a clock read per wake-up is a visible cost at 100k wake-ups a second, and the only
        // effect is that a timer may fire late by the time this iteration's work took.
        self.timers
            .next_deadline()
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(self.now_tick)))
    }

    fn dispatch(&mut self, ev: Event) {
        let Some(slot) = self.slot_mut(ev.token) else {
            return; // stale: the source was closed earlier in this batch
        };
        match &mut slot.source {
            Source::Conn(_) => self.conn_event(ConnId(ev.token), ev),
            Source::Listener(_) => self.accept_ready(ev.token),
            Source::Udp(_) => self.udp_ready(ev.token),
            Source::Waker => self.run_tasks(),
            Source::Signals(_) => self.read_signals(ev.token),
        }
    }

    fn run_ready_list(&mut self) {
        if !self.write_ready.is_empty() {
            let mut ready = std::mem::replace(
                &mut self.write_ready,
                std::mem::take(&mut self.write_ready_spare),
            );
            for &token in &ready {
                if self.slot(token).is_some() {
                    self.conn_writable(ConnId(token));
                    self.run_deferred();
                }
            }
            ready.clear();
            self.write_ready_spare = ready;
        }
        if self.ready.is_empty() {
            return;
        }
        let mut ready = std::mem::replace(&mut self.ready, std::mem::take(&mut self.ready_spare));
        for &token in &ready {
            let Some(slot) = self.slot(token) else {
                continue;
            };
            match slot.source {
                Source::Conn(_) => self.conn_readable(ConnId(token)),
                Source::Listener(_) => self.accept_ready(token),
                Source::Udp(_) => self.udp_ready(token),
                _ => {}
            }
            self.run_deferred();
        }
        ready.clear();
        self.ready_spare = ready; // keep the allocation
    }

    fn run_tasks(&mut self) {
        let mut tasks = std::mem::take(&mut self.tasks);
        self.shared.take_tasks(&mut tasks);
        for task in tasks.drain(..) {
            task(self);
            self.run_deferred();
        }
        if self.tasks.is_empty() {
            self.tasks = tasks; // keep the allocation
        }
    }

    fn read_signals(&mut self, token: Token) {
        loop {
            let sig = match self.slot_mut(token).map(|s| &mut s.source) {
                Some(Source::Signals(Some(s))) => s.next_signal(),
                _ => None,
            };
            let Some(sig) = sig else { break };
            if let Some(mut cb) = self.on_signal.take() {
                cb(self, sig);
                self.run_deferred();
                if self.on_signal.is_none() {
                    self.on_signal = Some(cb);
                }
            }
        }
    }

    fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.advance(self.now_tick, &mut fired);
        // Everything due leaves the wheel before the first callback runs, so a callback may
        // cancel or re-arm a timer that is already in `fired`. Each kind is therefore run only
        // if its key is still the one its owner holds (a connection's stored key, or a task
        // key not cancelled since).
        self.expiring = true;
        for (key, _, ev) in fired.drain(..) {
            match ev {
                TimerEvent::Idle(id) => self.idle_timer_fired(id, key),
                TimerEvent::Linger(id, mark) => self.linger_timer_fired(id, key, mark),
                TimerEvent::Connect(id) => self.connect_timer_fired(id, key),
                TimerEvent::User(id, tag) => self.user_timer_fired(id, tag, key),
                TimerEvent::Task(f) => {
                    if !self.cancelled_while_expiring.contains(&key) {
                        f(self)
                    }
                }
                TimerEvent::DrainDeadline => self.drain_deadline(),
            }
            self.run_deferred();
        }
        self.expiring = false;
        self.cancelled_while_expiring.clear();
        self.fired = fired;
    }

    fn drain_deadline(&mut self) {
        let ids: Vec<ConnId> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.source, Source::Conn(_)))
            .map(|(i, s)| ConnId(Token(((s.generation as u64) << 32) | i as u64)))
            .collect();
        for id in ids {
            self.close_with(id, CloseReason::DrainTimeout);
        }
        self.quit = true;
    }

    /// Performs the work handlers queued (closes, high-water notifications). Nested calls
    /// return at once: the outermost call drains the queue.
    pub(crate) fn run_deferred(&mut self) {
        if self.deferred_depth > 0 || self.deferred.is_empty() {
            return;
        }
        self.deferred_depth += 1;
        while !self.deferred.is_empty() {
            let mut batch =
                std::mem::replace(&mut self.deferred, std::mem::take(&mut self.deferred_spare));
            for d in batch.drain(..) {
                match d {
                    Deferred::Close(id) => self.destroy_conn(id),
                    Deferred::HighWater(id) => self.notify_high_water(id),
                    Deferred::Redeliver(id) => self.redeliver_input(id),
                    Deferred::Flush(id) => self.conn_writable(id),
                    Deferred::Poke(id, tag) => self.poked(id, tag),
                }
            }
            self.deferred_spare = batch; // keep the allocation
        }
        self.deferred_depth -= 1;
    }
}

impl EventLoop {
    /// Every fd this loop holds: its poller (epoll), waker, signalfd, EMFILE reserve, and each
    /// listener, UDP socket and connection. A process that forks children while it runs a loop
    /// (prefork, process-per-conn) has each child close these: a child that inherited the
    /// master's admin listener would keep its port bound after the master died, and one that
    /// held the master's admin connections would keep them open.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = Vec::new();
        fds.extend(self.poller.as_fd());
        fds.push(self.shared.waker.as_fd());
        if let Some(r) = &self.reserve_fd {
            fds.push(r.as_fd());
        }
        for (_, slot) in self.slots.iter() {
            match &slot.source {
                Source::Signals(Some(s)) => fds.push(s.as_fd()),
                other => fds.extend(other.fd()),
            }
        }
        fds
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.shared.close();
    }
}

#[cfg(test)]
mod footprint {
    /// What an idle connection costs is what decides how many fit in a GiB: its slot, its
    /// handler and its idle timer. Guard the sizes so a new field is a decision, not a drift.
    #[test]
    fn an_idle_connection_stays_small() {
        let slot = std::mem::size_of::<super::Slot>();
        let http = std::mem::size_of::<crate::http::HttpConn>();
        assert!(slot <= 128, "a connection slot grew to {slot} bytes");
        assert!(http <= 40, "the HTTP handler grew to {http} bytes");
        assert!(std::mem::size_of::<crate::net::output::OutputQueue>() <= 8);
    }
}

/// `drain` from now, or about a century from now where that is past what `Instant` holds
/// (`Duration::MAX`: a drain without end).
pub(crate) fn instant_after(drain: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(drain)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    /// A drain without end (`Duration::MAX`, from a library caller) is a far deadline, not an
    /// overflow panic.
    #[test]
    fn an_endless_drain_does_not_overflow() {
        let mut el = EventLoop::new(LoopConfig::default()).unwrap();
        el.shutdown_gracefully(Duration::MAX);
        assert!(instant_after(Duration::MAX) > Instant::now() + Duration::from_secs(86_400));
    }
}

//! Leader/followers (the notes' 领导者/追随者): a set of threads shares one poller and takes
//! turns at it.
//!
//! At any moment one thread, the *leader*, holds the leader lock and waits in `epoll_wait` for
//! one event; the others (*followers*) wait for the lock. When the event arrives the leader lets
//! go of the lock, which promotes a follower to leader (it goes on waiting), and then processes
//! the event itself: reads, runs the handler, writes, re-arms. When done it queues up for the
//! lock again as a follower.
//!
//! What this buys, compared with half-sync/half-reactor: there is no queue between an I/O
//! thread and a worker thread, and no hand-off. The thread that waited for an event is the one
//! that handles it, so a request costs no context switch and no data moves between threads; a
//! slow (even blocking) handler only takes its own thread out of the set, while the others go
//! on serving.
//!
//! What it costs: every thread waits on the same epoll instance and the same leader lock (one
//! futex hand-over per event, and the lock is a point of contention with many threads); and,
//! so that two threads never handle the same connection at once, every fd is registered with
//! `EPOLLONESHOT`: once reported it is disarmed until its handler re-arms it with
//! `EPOLL_CTL_MOD`, one extra syscall per event that the one-loop-per-thread models do not pay.
//! Re-arming re-checks readiness, so the trigger mode does not matter here (`--engine epoll-lt`
//! and `epoll-et` behave alike; select and poll cannot share an interest list and are refused).
//!
//! # Ownership and locks
//!
//! A connection ([`LfConn`]) lives in a shared table (a slab under a mutex, tokens carry a
//! generation so a stale event is dropped) behind its own mutex. EPOLLONESHOT makes that mutex
//! uncontended on the I/O path: only the thread that got the connection's event touches it.
//! Timers (idle, linger, user timers, the drain deadline) sit in one timing wheel under a
//! mutex; the leader expires them before waiting and handles the fired ones as a processor, so
//! a timer callback takes the connection's mutex like an event does. Lock order: leader, then a
//! connection, then the table or the timers; the table and timer locks are only held for a
//! moment and never around a handler.
//!
//! The fd of a connection is closed in one place ([`Worker::destroy`]), under its mutex, after
//! the handler callback that asked for it has returned (DESIGN rules 3 and 4). A handler acts
//! on its own connection only: `Ctx::event_loop`, `Ctx::handle` and `Ctx::connect` are not
//! available under this model, and operations on another connection's id do nothing (taking a
//! second connection's lock from inside a handler could deadlock).
//!
//! # Stopping
//!
//! Signals are blocked before any thread starts and arrive on the main thread's control loop
//! (which also serves a service's UDP side). SIGINT/SIGTERM set the shared *draining* flag and
//! ring an eventfd registered (without ONESHOT) in the shared epoll: the leader wakes, the first
//! thread to see the flag closes the listener and closes every connection gracefully, and each
//! thread leaves when no connection is left or when the drain deadline has aborted the rest. The
//! last one out stops the control loop, which prints the final `stats` line.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::net::{SendFlags, Shutdown, SocketFlags};
use slab::Slab;
use socket2::{SockRef, TcpKeepalive};

use super::{bind_and_announce, ServerOptions, Service};
use crate::net::handler::ConnOps;
use crate::net::listener::{open_reserve_fd, HandlerFactory};
use crate::net::{Buffer, CloseReason, ConnId, Ctx, Handler};
use crate::reactor::{
    Engine, EventLoop, Interest, Keepalive, LoopHandle, LoopStats, Signal, TimerKey, TimerWheel,
    Token,
};

/// Tokens with generation 0 name the shared sources; connections always have generation >= 1.
const LISTENER: u64 = 0;
const WAKER: u64 = 1;
/// What one read can take from a socket: each thread's scratch buffer.
const SCRATCH: usize = 64 * 1024;
/// How long a listener that could not accept (no fd even for the EMFILE dance) stays parked
/// if no connection closes first.
const STARVED_RETRY: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds, rounded up so a timer never fires early.
fn ms(d: Duration) -> u64 {
    let whole = d.as_millis();
    let up = if Duration::from_millis(whole as u64) < d {
        whole + 1
    } else {
        whole
    };
    up.min(u64::MAX as u128) as u64
}

/// What the threads need from the server's options.
#[derive(Clone)]
struct Settings {
    idle_timeout: Option<Duration>,
    linger_ms: u64,
    drain_ms: u64,
    max_conns: Option<usize>,
    max_accepts: usize,
    read_budget: usize,
    high_water: usize,
    nodelay: bool,
    keepalive: Option<Keepalive>,
}

impl Settings {
    fn from_opts(opts: &ServerOptions) -> Settings {
        let cfg = opts.loop_config();
        Settings {
            idle_timeout: cfg.idle_timeout,
            linger_ms: ms(cfg.linger_timeout),
            drain_ms: ms(opts.drain_timeout),
            max_conns: opts.max_connections,
            max_accepts: cfg.max_accepts_per_wakeup.max(1),
            read_budget: cfg.read_budget.max(1),
            high_water: cfg.high_water,
            nodelay: cfg.tcp_nodelay,
            keepalive: cfg.keepalive,
        }
    }
}

/// One thread's counters. Only that thread writes them (a load and a store, no locked
/// instruction); the control thread reads them for the `stats` line.
#[derive(Default)]
#[repr(align(64))]
struct Counters {
    wakeups: AtomicU64,
    events: AtomicU64,
    accepted: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
    refused_emfile: AtomicU64,
    refused_limit: AtomicU64,
    idle_timeouts: AtomicU64,
    linger_timeouts: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Counters {
    fn add_to(&self, s: &mut LoopStats) {
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
    }
}

enum TimerEvent {
    Idle(ConnId),
    Linger(ConnId),
    User(ConnId, u64),
    DrainDeadline,
    RetryAccept,
}

struct Timers {
    wheel: TimerWheel<TimerEvent>,
}

struct Slot {
    generation: u32,
    conn: Arc<Mutex<LfConn>>,
}

struct Table {
    slab: Slab<Slot>,
    next_generation: u32,
}

/// Everything the threads share.
struct Shared {
    epfd: OwnedFd,
    /// eventfd, registered level-triggered (not ONESHOT): rung to make the leader look again
    /// (drain started, the last connection left while draining, a timer earlier than the
    /// leader's wait deadline).
    waker: OwnedFd,
    /// Closed (taken) when draining starts. Held while accepting and re-arming, so its fd
    /// number cannot be reused under an `epoll_ctl`.
    listener: Mutex<Option<OwnedFd>>,
    /// The fd kept back for the EMFILE dance (DESIGN rule 6).
    reserve: Mutex<Option<OwnedFd>>,
    /// The listener was left disarmed: re-arm it when a connection closes or after a while.
    listener_starved: AtomicBool,
    table: Mutex<Table>,
    leader: Mutex<()>,
    timers: Mutex<Timers>,
    /// The deadline the leader waits until (ms ticks), written under the timers lock: a timer
    /// inserted earlier than this rings the waker.
    waiting_until: AtomicU64,
    counters: Vec<Counters>,
    draining: AtomicBool,
    drain_started: AtomicBool,
    live_threads: AtomicUsize,
    /// Connections holding a permit of `--max-conns`.
    permits: AtomicUsize,
    factory: HandlerFactory,
    cfg: Settings,
    start: Instant,
    /// The control loop, stopped by the last thread to leave.
    control: Option<LoopHandle>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn wake(&self) {
        let _ = rustix::io::write(&self.waker, &1u64.to_ne_bytes());
    }

    /// Cancels `old` and inserts `new`, under one lock; rings the waker if the new deadline is
    /// earlier than what the leader waits for.
    fn replace_timer(
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

    fn add_timer(&self, deadline: u64, ev: TimerEvent) -> TimerKey {
        self.replace_timer(None, Some((deadline, ev)))
            .expect("inserted")
    }

    fn cancel_timers(&self, keys: impl Iterator<Item = TimerKey>) {
        let mut t = lock(&self.timers);
        for key in keys {
            t.wheel.cancel(key);
        }
    }

    fn lookup(&self, token: u64) -> Option<Arc<Mutex<LfConn>>> {
        let generation = (token >> 32) as u32;
        let index = (token & 0xffff_ffff) as usize;
        let table = lock(&self.table);
        match table.slab.get(index) {
            Some(slot) if slot.generation == generation => Some(slot.conn.clone()),
            _ => None,
        }
    }

    fn insert(&self, conn: Arc<Mutex<LfConn>>) -> ConnId {
        let mut table = lock(&self.table);
        let generation = table.next_generation;
        table.next_generation = generation.wrapping_add(1).max(1);
        let index = table.slab.insert(Slot { generation, conn });
        ConnId(Token(((generation as u64) << 32) | index as u64))
    }

    /// Removes `id` from the table; returns how many connections are left.
    fn remove(&self, id: ConnId) -> usize {
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

    fn snapshot(&self) -> Vec<Arc<Mutex<LfConn>>> {
        let table = lock(&self.table);
        table.slab.iter().map(|(_, s)| s.conn.clone()).collect()
    }

    fn is_empty(&self) -> bool {
        lock(&self.table).slab.is_empty()
    }

    /// Waits for one event; `None` on timeout or EINTR.
    fn wait_one(
        &self,
        buf: &mut Vec<epoll::Event>,
        timeout_ms: Option<u64>,
    ) -> io::Result<Option<(u64, EventFlags)>> {
        buf.clear();
        let ts = timeout_ms.map(|ms| rustix::event::Timespec {
            tv_sec: (ms / 1000) as i64,
            tv_nsec: ((ms % 1000) * 1_000_000) as _,
        });
        match epoll::wait(&self.epfd, rustix::buffer::spare_capacity(buf), ts.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        Ok(buf.first().map(|ev| (ev.data.u64(), ev.flags)))
    }

    /// Re-arms the (ONESHOT) listener, if it is still open.
    fn arm_listener(&self, listener: &Option<OwnedFd>) {
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
    fn total(&self, own: &LoopStats) -> LoopStats {
        let mut s = own.clone();
        for c in &self.counters {
            c.add_to(&mut s);
        }
        s
    }
}

/// One connection: its handler and its state. Locked by whichever thread handles it.
struct LfConn {
    handler: Option<Box<dyn Handler>>,
    core: Core,
}

/// A connection's state, apart from its handler (so the handler can be called with a context
/// that borrows the rest).
struct Core {
    id: ConnId,
    /// `None` once closed.
    fd: Option<OwnedFd>,
    /// Bytes the handler left unconsumed (none held between messages otherwise).
    input: Option<Buffer>,
    output: Option<Buffer>,
    /// Registered in the epoll set yet (ADD vs MOD).
    added: bool,
    /// What the last re-arm asked for; `None` while disarmed.
    armed: Option<Interest>,
    read_paused: bool,
    /// The peer's FIN was read.
    read_eof: bool,
    /// Our FIN went out.
    write_shut: bool,
    /// Send our FIN once the output drains.
    shutdown_after_flush: bool,
    /// After our FIN, wait for the peer's and close (a full close, not a half-close).
    close_after_shutdown: bool,
    /// Closing: input is discarded until the peer's FIN.
    lingering: bool,
    above_high_water: bool,
    /// A write crossed the high-water mark: `on_high_water` is due once the callback returns.
    high_water_pending: bool,
    last_active: u64,
    idle_ms: Option<u64>,
    idle_timer: Option<TimerKey>,
    linger_timer: Option<TimerKey>,
    user_timers: Vec<(u64, TimerKey)>,
    holds_permit: bool,
    /// Set when the connection must close; it is destroyed once the current callback returns.
    closing: Option<CloseReason>,
}

impl Core {
    fn new(fd: OwnedFd, now: u64) -> Core {
        Core {
            id: ConnId(Token(0)),
            fd: Some(fd),
            input: None,
            output: None,
            added: false,
            armed: None,
            read_paused: false,
            read_eof: false,
            write_shut: false,
            shutdown_after_flush: false,
            close_after_shutdown: false,
            lingering: false,
            above_high_water: false,
            high_water_pending: false,
            last_active: now,
            idle_ms: None,
            idle_timer: None,
            linger_timer: None,
            user_timers: Vec::new(),
            holds_permit: false,
            closing: None,
        }
    }

    fn live(&self) -> bool {
        self.fd.is_some() && self.closing.is_none()
    }

    fn output_len(&self) -> usize {
        self.output.as_ref().map_or(0, |b| b.len())
    }

    /// Read unless paused or at EOF, write while output is queued.
    fn want(&self) -> Interest {
        Interest::with(!self.read_paused && !self.read_eof, self.output_len() > 0)
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.fd.is_some() && self.closing.is_none() {
            self.closing = Some(reason);
        }
    }

    fn write(&mut self, sh: &Shared, stats: &Counters, now: u64, data: &[u8]) -> bool {
        if !self.live() || self.write_shut || self.shutdown_after_flush {
            return false;
        }
        if data.is_empty() {
            return true;
        }
        let mut written = 0;
        if self.output_len() == 0 {
            let fd = self.fd.as_ref().expect("live");
            loop {
                match rustix::net::send(fd, data, SendFlags::NOSIGNAL) {
                    Ok(n) => {
                        written = n;
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => {
                        self.close_with(CloseReason::Error(io::Error::from(e).kind()));
                        return false;
                    }
                }
            }
            if written > 0 {
                bump(&stats.bytes_out, written as u64);
                self.last_active = now;
            }
        }
        if written == data.len() {
            return true;
        }
        let out = self.output.get_or_insert_with(Buffer::new);
        out.append(&data[written..]);
        if out.len() >= sh.cfg.high_water && !self.above_high_water {
            self.above_high_water = true;
            self.high_water_pending = true;
        }
        true
    }

    fn shutdown_write(&mut self, sh: &Shared, now: u64) {
        if !self.live() || self.write_shut {
            return;
        }
        if self.output_len() > 0 {
            self.shutdown_after_flush = true;
        } else {
            self.shutdown_now(sh, now);
        }
    }

    fn shutdown_now(&mut self, sh: &Shared, now: u64) {
        self.shutdown_after_flush = false;
        if self.write_shut {
            return;
        }
        let Some(fd) = self.fd.as_ref() else { return };
        self.write_shut = true;
        if rustix::net::shutdown(fd, Shutdown::Write).is_err() {
            // ENOTCONN: the peer already reset.
            self.close_with(CloseReason::Error(io::ErrorKind::NotConnected));
        } else if self.read_eof {
            self.close_with(CloseReason::Normal);
        } else if self.close_after_shutdown {
            self.start_linger(sh, now);
        }
    }

    /// Graceful close: flush, FIN, wait for the peer's FIN up to the linger timeout (which
    /// bounds the flush too).
    fn close(&mut self, sh: &Shared, now: u64) {
        if !self.live() {
            return;
        }
        self.close_after_shutdown = true;
        if !self.write_shut {
            self.shutdown_write(sh, now);
        }
        self.start_linger(sh, now);
    }

    fn start_linger(&mut self, sh: &Shared, now: u64) {
        if !self.live() {
            return;
        }
        if !self.lingering {
            self.lingering = true;
            self.input = None; // will never be handled now
        }
        // Reading on is how the peer's FIN is seen.
        self.read_paused = false;
        if self.linger_timer.is_none() {
            let deadline = now.saturating_add(sh.cfg.linger_ms);
            self.linger_timer = Some(sh.add_timer(deadline, TimerEvent::Linger(self.id)));
        }
    }

    fn set_idle_timeout(&mut self, sh: &Shared, now: u64, timeout: Option<Duration>) {
        if self.fd.is_none() {
            return;
        }
        self.idle_ms = timeout.map(ms);
        let new = self.idle_ms.map(|ms| {
            (
                now.max(self.last_active).saturating_add(ms),
                TimerEvent::Idle(self.id),
            )
        });
        self.idle_timer = sh.replace_timer(self.idle_timer.take(), new);
    }

    fn set_timer(&mut self, sh: &Shared, now: u64, after: Duration, tag: u64) {
        if self.fd.is_none() {
            return;
        }
        let old = self
            .user_timers
            .iter()
            .position(|&(t, _)| t == tag)
            .map(|i| self.user_timers.swap_remove(i).1);
        let deadline = now.saturating_add(ms(after));
        if let Some(key) = sh.replace_timer(old, Some((deadline, TimerEvent::User(self.id, tag)))) {
            self.user_timers.push((tag, key));
        }
    }

    fn cancel_timer(&mut self, sh: &Shared, tag: u64) {
        if let Some(i) = self.user_timers.iter().position(|&(t, _)| t == tag) {
            let (_, key) = self.user_timers.swap_remove(i);
            sh.cancel_timers(std::iter::once(key));
        }
    }
}

/// The handler's context under this model: acts on the locked connection directly.
struct Ops<'a> {
    core: &'a mut Core,
    sh: &'a Shared,
    stats: &'a Counters,
    now: u64,
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

/// What one readiness report says.
#[derive(Copy, Clone)]
struct Ev {
    readable: bool,
    writable: bool,
    error: bool,
    hup: bool,
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

enum Refusal {
    Refused,
    QueueEmpty,
    NoReserve,
}

/// One thread of the set.
struct Worker<'a> {
    sh: &'a Shared,
    stats: &'a Counters,
    /// Reads of a connection holding no partial input land here; only what its handler leaves
    /// unconsumed is copied into a buffer of its own.
    scratch: Option<Buffer>,
    fired: Vec<(TimerKey, u64, TimerEvent)>,
    events: Vec<epoll::Event>,
    /// The clock as of the event being handled (one read per event).
    now: u64,
}

impl<'a> Worker<'a> {
    fn new(sh: &'a Shared, index: usize) -> Worker<'a> {
        Worker {
            sh,
            stats: &sh.counters[index],
            scratch: Some(Buffer::with_capacity(SCRATCH)),
            fired: Vec::new(),
            events: Vec::with_capacity(1),
            now: 0,
        }
    }

    /// Takes turns as leader until the server has drained.
    fn run(&mut self) -> io::Result<()> {
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
            let got = sh.wait_one(&mut self.events, timeout);
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
    fn call(&self, c: &mut LfConn, f: impl FnOnce(&mut dyn Handler, &mut Ctx<'_>)) {
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
    }

    fn conn_event(&mut self, c: &mut LfConn, ev: Ev) {
        if ev.writable {
            self.flush(c);
        }
        if !c.core.live() || !(ev.readable || ev.error) {
            return;
        }
        if ev.error && (c.core.read_eof || c.core.read_paused) {
            // No read will surface the error: look at it here.
            let fd = c.core.fd.as_ref().expect("live");
            match SockRef::from(fd).take_error() {
                Ok(Some(e)) | Err(e) => c.core.close_with(CloseReason::Error(e.kind())),
                Ok(None) if c.core.read_eof => c.core.close_with(CloseReason::Normal),
                Ok(None) => {}
            }
        } else {
            self.read(c, ev.hup);
        }
    }

    /// Reads until the socket is drained (a short read) or the read budget is spent; what is
    /// left is reported again after the re-arm.
    fn read(&mut self, c: &mut LfConn, hup: bool) {
        let mut total = 0usize;
        loop {
            let core = &mut c.core;
            if core.read_paused || core.read_eof || !core.live() {
                return;
            }
            let fd = core.fd.as_ref().expect("live");
            let pending = core.input.take();
            let direct = pending.is_none();
            let mut scratch = self
                .scratch
                .take()
                .unwrap_or_else(|| Buffer::with_capacity(SCRATCH));
            let (mut input, asked, res) = match pending {
                None => {
                    let asked = scratch.writable();
                    let res = rustix::io::read(fd, scratch.writable_mut()).map_err(io::Error::from);
                    if let Ok(n) = res {
                        scratch.commit(n);
                    }
                    (scratch, asked, res)
                }
                Some(mut buf) => {
                    let asked = buf.writable() + scratch.writable();
                    let res = buf.read_from(fd, scratch.writable_mut());
                    self.scratch = Some(scratch);
                    (buf, asked, res)
                }
            };
            match res {
                Ok(0) => {
                    self.stash(c, input, direct);
                    self.peer_eof(c);
                    return;
                }
                Ok(n) => {
                    bump(&self.stats.bytes_in, n as u64);
                    total += n;
                    c.core.last_active = self.now;
                    if c.core.lingering {
                        input.clear(); // closing: read only to reach the peer's FIN
                    } else {
                        self.call(c, |h, cx| h.on_data(cx, &mut input));
                    }
                    self.stash(c, input, direct);
                    // A short read drained the socket, unless a FIN is known to wait behind.
                    if (n < asked && !hup) || total >= self.sh.cfg.read_budget {
                        return;
                    }
                }
                Err(e) => {
                    self.stash(c, input, direct);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return,
                        io::ErrorKind::Interrupted => {}
                        kind => {
                            c.core.close_with(CloseReason::Error(kind));
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The scratch buffer goes back to the thread (what the handler left in it is copied into
    /// a buffer of the connection's own); a connection's buffer is dropped once empty.
    fn stash(&mut self, c: &mut LfConn, mut input: Buffer, direct: bool) {
        let keep = !input.is_empty() && c.core.live() && !c.core.lingering;
        if direct {
            if keep {
                let mut own = Buffer::with_capacity(input.len().max(Buffer::INITIAL_CAPACITY));
                own.append(input.as_slice());
                c.core.input = Some(own);
            }
            input.clear();
            self.scratch = Some(input);
        } else if keep {
            c.core.input = Some(input);
        }
    }

    /// `read() == 0`: the peer's FIN (rule 2). The handler decides (default: finish writing,
    /// then our FIN); if ours already went out, both directions are done.
    fn peer_eof(&mut self, c: &mut LfConn) {
        c.core.read_eof = true;
        if c.core.write_shut {
            c.core.close_with(CloseReason::Normal);
        } else {
            self.call(c, |h, cx| h.on_peer_shutdown(cx));
        }
    }

    /// Writable: send what is queued; once empty, the pending FIN or `on_drained`.
    fn flush(&mut self, c: &mut LfConn) {
        let core = &mut c.core;
        if !core.live() {
            return;
        }
        let (Some(out), Some(fd)) = (core.output.as_mut(), core.fd.as_ref()) else {
            return;
        };
        let mut sent = 0u64;
        let res = loop {
            match rustix::net::send(fd, out.as_slice(), SendFlags::NOSIGNAL) {
                Ok(n) => {
                    out.consume(n);
                    sent += n as u64;
                    if out.is_empty() {
                        break Ok(true);
                    }
                    if n == 0 {
                        break Ok(false);
                    }
                    // A short write: the socket buffer is full, unless only partly; try again
                    // until EAGAIN (the next try usually says so at once).
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => break Ok(false),
                Err(e) => break Err(io::Error::from(e)),
            }
        };
        if sent > 0 {
            bump(&self.stats.bytes_out, sent);
            core.last_active = self.now;
        }
        match res {
            Ok(false) => {}
            Ok(true) => {
                core.output = None;
                core.above_high_water = false;
                if core.shutdown_after_flush {
                    core.shutdown_now(self.sh, self.now);
                } else {
                    self.call(c, |h, cx| h.on_drained(cx));
                }
            }
            Err(e) => core.close_with(CloseReason::Error(e.kind())),
        }
    }

    /// After a connection was handled: destroy it if it is closing, otherwise re-arm it with
    /// the interest it now needs. After its own event (`ev`), a connection is disarmed
    /// (ONESHOT) and always re-armed; after a timer, only if its interest changed (if an event
    /// of it is in flight, that event's thread re-arms it).
    fn settle(&mut self, c: &mut LfConn, ev: Option<Ev>) {
        let core = &mut c.core;
        let Some(fd) = core.fd.as_ref() else { return };
        if core.closing.is_some() {
            self.destroy(c);
            return;
        }
        let want = core.want();
        if let Some(ev) = ev {
            core.armed = None;
            if want == Interest::NONE && ev.error {
                // A hang-up or error is reported at once by every re-arm: with nothing to read
                // or write (paused, or the peer's FIN in and the handler keeping the
                // connection), stay disarmed until the interest changes, instead of spinning.
                return;
            }
        } else if core.armed == Some(want) {
            return;
        }
        let mut flags = EventFlags::ONESHOT;
        if want.is_readable() {
            flags |= EventFlags::IN | EventFlags::RDHUP;
        }
        if want.is_writable() {
            flags |= EventFlags::OUT;
        }
        let data = EventData::new_u64(core.id.0 .0);
        let res = if core.added {
            epoll::modify(&self.sh.epfd, fd, data, flags)
        } else {
            epoll::add(&self.sh.epfd, fd, data, flags)
        };
        match res {
            Ok(()) => {
                core.added = true;
                core.armed = Some(want);
            }
            Err(e) => {
                core.close_with(CloseReason::Error(io::Error::from(e).kind()));
                self.destroy(c);
            }
        }
    }

    /// The one place a connection's fd is closed (rule 3): under its lock, after the callback
    /// that asked for it returned. RST unless both sides finished (rule 4).
    fn destroy(&mut self, c: &mut LfConn) {
        let sh = self.sh;
        let core = &mut c.core;
        let Some(fd) = core.fd.take() else { return };
        let reason = core.closing.take().unwrap_or(CloseReason::Normal);
        sh.cancel_timers(
            [core.idle_timer.take(), core.linger_timer.take()]
                .into_iter()
                .flatten()
                .chain(core.user_timers.drain(..).map(|(_, key)| key)),
        );
        if reason != CloseReason::Normal {
            let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
        }
        drop(fd); // close(2); also leaves the epoll set
        core.input = None;
        core.output = None;
        let left = sh.remove(core.id);
        if core.holds_permit {
            sh.permits.fetch_sub(1, Ordering::AcqRel);
        }
        bump(&self.stats.closed, 1);
        if let Some(mut h) = c.handler.take() {
            let id = c.core.id;
            let mut ops = Ops {
                core: &mut c.core,
                sh,
                stats: self.stats,
                now: self.now,
            };
            h.on_close(&mut Ctx::new(&mut ops, id), reason);
        }
        if sh.listener_starved.swap(false, Ordering::AcqRel) {
            sh.arm_listener(&lock(&sh.listener));
        }
        if left == 0 && sh.draining.load(Ordering::SeqCst) {
            sh.wake(); // the leader may be waiting with nothing left to wait for
        }
    }

    // ---- accepting ----

    /// Accepts a bounded batch, re-arms the listener (so another thread can take the next
    /// batch), then sets up the new connections.
    fn accept_batch(&mut self) {
        let sh = self.sh;
        let mut fds = Vec::new();
        {
            let listener = lock(&sh.listener);
            let Some(lfd) = listener.as_ref() else { return };
            let mut starved = false;
            for _ in 0..sh.cfg.max_accepts {
                match rustix::net::accept_with(lfd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                    Ok(fd) => fds.push(fd),
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::MFILE) | Err(rustix::io::Errno::NFILE) => {
                        match self.refuse_with_reserve(lfd) {
                            Refusal::Refused => bump(&self.stats.refused_emfile, 1),
                            Refusal::QueueEmpty => break,
                            Refusal::NoReserve => {
                                starved = true;
                                break;
                            }
                        }
                    }
                    Err(rustix::io::Errno::CONNABORTED)
                    | Err(rustix::io::Errno::INTR)
                    | Err(rustix::io::Errno::PROTO) => {}
                    Err(_) => {
                        // ENOBUFS/ENOMEM: back off.
                        starved = true;
                        break;
                    }
                }
            }
            if starved {
                // Left disarmed (re-arming would report it again at once, a spin): a closing
                // connection or the retry timer re-arms it.
                sh.listener_starved.store(true, Ordering::Release);
                sh.add_timer(
                    self.now.saturating_add(ms(STARVED_RETRY)),
                    TimerEvent::RetryAccept,
                );
            } else {
                sh.arm_listener(&listener);
            }
        }
        for fd in fds {
            self.serve_new(fd);
        }
    }

    /// The EMFILE dance: free the reserve, accept and close one pending connection (a clean
    /// close for the client), reopen the reserve.
    fn refuse_with_reserve(&self, lfd: &OwnedFd) -> Refusal {
        let mut reserve = lock(&self.sh.reserve);
        let Some(fd) = reserve.take().or_else(open_reserve_fd) else {
            return Refusal::NoReserve;
        };
        drop(fd);
        let refusal = match rustix::net::accept_with(lfd, SocketFlags::CLOEXEC) {
            Ok(conn) => {
                drop(conn);
                Refusal::Refused
            }
            Err(rustix::io::Errno::AGAIN) => Refusal::QueueEmpty,
            Err(_) => Refusal::NoReserve,
        };
        *reserve = open_reserve_fd();
        refusal
    }

    fn serve_new(&mut self, fd: OwnedFd) {
        let sh = self.sh;
        let sock = SockRef::from(&fd);
        if sh.cfg.nodelay {
            let _ = sock.set_tcp_nodelay(true);
        }
        if let Some(ka) = sh.cfg.keepalive {
            let params = TcpKeepalive::new()
                .with_time(ka.idle)
                .with_interval(ka.interval)
                .with_retries(ka.count);
            let _ = sock.set_tcp_keepalive(&params);
        }
        bump(&self.stats.accepted, 1);
        let limited = match sh.cfg.max_conns {
            Some(max) => {
                let acquired = sh
                    .permits
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .is_ok();
                if !acquired {
                    bump(&self.stats.refused_limit, 1);
                    return; // `fd` drops: the client reads EOF
                }
                true
            }
            None => false,
        };
        let conn = Arc::new(Mutex::new(LfConn {
            handler: Some((sh.factory)()),
            core: Core::new(fd, self.now),
        }));
        // Locked before it is reachable, so nothing (a timer) runs before `on_connect`.
        let mut c = lock(&conn);
        c.core.id = sh.insert(conn.clone());
        c.core.holds_permit = limited;
        bump(&self.stats.opened, 1);
        if let Some(idle) = sh.cfg.idle_timeout {
            c.core.set_idle_timeout(sh, self.now, Some(idle));
        }
        self.call(&mut c, |h, cx| h.on_connect(cx));
        if sh.draining.load(Ordering::SeqCst) {
            // Accepted just as the drain started, after its sweep: close it like the rest.
            c.core.close(sh, self.now);
        }
        self.settle(&mut c, None);
    }

    // ---- timers and draining ----

    fn run_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        for (key, _, ev) in fired.drain(..) {
            self.now = self.sh.now();
            let (id, what) = match ev {
                TimerEvent::Idle(id) => (id, ev),
                TimerEvent::Linger(id) => (id, ev),
                TimerEvent::User(id, _) => (id, ev),
                TimerEvent::DrainDeadline => {
                    self.drain_deadline();
                    continue;
                }
                TimerEvent::RetryAccept => {
                    if self.sh.listener_starved.swap(false, Ordering::AcqRel) {
                        self.sh.arm_listener(&lock(&self.sh.listener));
                    }
                    continue;
                }
            };
            let Some(conn) = self.sh.lookup(id.0 .0) else {
                continue;
            };
            let mut c = lock(&conn);
            if !c.core.live() {
                continue;
            }
            match what {
                TimerEvent::Idle(_) if c.core.idle_timer == Some(key) => self.idle_fired(&mut c),
                TimerEvent::Linger(_) if c.core.linger_timer == Some(key) => {
                    c.core.linger_timer = None;
                    bump(&self.stats.linger_timeouts, 1);
                    c.core.close_with(CloseReason::LingerTimeout);
                }
                TimerEvent::User(_, tag) => {
                    let Some(i) = c
                        .core
                        .user_timers
                        .iter()
                        .position(|&(t, k)| t == tag && k == key)
                    else {
                        continue;
                    };
                    c.core.user_timers.swap_remove(i);
                    self.call(&mut c, |h, cx| h.on_timer(cx, tag));
                }
                _ => continue, // re-armed or cancelled since it fired
            }
            self.settle(&mut c, None);
        }
        self.fired = fired;
    }

    /// The idle timer is not re-armed on every read: compare with the last activity, re-arm
    /// for the rest, or tell the handler (default: graceful close).
    fn idle_fired(&mut self, c: &mut LfConn) {
        let (sh, now) = (self.sh, self.now);
        let core = &mut c.core;
        core.idle_timer = None;
        let Some(ms) = core.idle_ms else { return };
        let deadline = core.last_active.saturating_add(ms);
        if now < deadline {
            core.idle_timer = sh.replace_timer(None, Some((deadline, TimerEvent::Idle(core.id))));
            return;
        }
        if core.linger_timer.is_some() {
            return; // a close is under way; its linger timer decides the end
        }
        if core.write_shut || core.shutdown_after_flush || core.close_after_shutdown {
            // Stuck a whole idle period after this end started closing: give up.
            core.close_with(CloseReason::IdleTimeout);
            return;
        }
        bump(&self.stats.idle_timeouts, 1);
        // Re-armed, so a peer that never reads what the handler queues is cut off later.
        core.idle_timer = sh.replace_timer(
            None,
            Some((now.saturating_add(ms), TimerEvent::Idle(core.id))),
        );
        self.call(c, |h, cx| h.on_idle_timeout(cx));
    }

    /// The first thread to see the draining flag: stop listening, close every connection
    /// gracefully, and set the deadline after which the rest are reset.
    fn begin_drain(&mut self) {
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
                c.core.close(sh, self.now);
                self.settle(&mut c, None);
            }
        }
        if sh.is_empty() {
            sh.wake();
        }
    }

    fn drain_deadline(&mut self) {
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

/// Counts the live threads down; the last one out stops the control loop (on panic too).
struct Leaving<'a>(&'a Shared);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        if self.0.live_threads.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(control) = &self.0.control {
                control.post(|el| el.stop());
            }
        }
    }
}

/// Builds the shared state around `listener` (registered ONESHOT) and starts `threads` threads.
fn start(
    opts: &ServerOptions,
    factory: HandlerFactory,
    control: Option<LoopHandle>,
) -> io::Result<Arc<Shared>> {
    let epfd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let waker = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?;
    epoll::add(&epfd, &waker, EventData::new_u64(WAKER), EventFlags::IN)?;
    Ok(Arc::new(Shared {
        epfd,
        waker,
        listener: Mutex::new(None),
        reserve: Mutex::new(open_reserve_fd()),
        listener_starved: AtomicBool::new(false),
        table: Mutex::new(Table {
            slab: Slab::with_capacity(1024),
            next_generation: 1,
        }),
        leader: Mutex::new(()),
        timers: Mutex::new(Timers {
            wheel: TimerWheel::new(0),
        }),
        waiting_until: AtomicU64::new(0),
        counters: (0..opts.threads).map(|_| Counters::default()).collect(),
        draining: AtomicBool::new(false),
        drain_started: AtomicBool::new(false),
        live_threads: AtomicUsize::new(0),
        permits: AtomicUsize::new(0),
        factory,
        cfg: Settings::from_opts(opts),
        start: Instant::now(),
        control,
    }))
}

/// Puts the listener in the shared poller and starts the thread set.
fn spawn_threads(
    sh: &Arc<Shared>,
    listener: std::net::TcpListener,
) -> io::Result<Vec<JoinHandle<()>>> {
    listener.set_nonblocking(true)?;
    let fd = OwnedFd::from(listener);
    epoll::add(
        &sh.epfd,
        &fd,
        EventData::new_u64(LISTENER),
        EventFlags::IN | EventFlags::ONESHOT,
    )?;
    *lock(&sh.listener) = Some(fd);
    let n = sh.counters.len();
    sh.live_threads.store(n, Ordering::SeqCst);
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let shared = sh.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("keel-lf-{i}"))
            .spawn(move || {
                let _leaving = Leaving(&shared);
                if let Err(e) = Worker::new(&shared, i).run() {
                    eprintln!("keel: leader/followers thread failed: {e}");
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Never started: count them out, stop the rest.
                sh.live_threads.fetch_sub(n - i, Ordering::AcqRel);
                stop(sh);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
    }
    Ok(threads)
}

/// Starts the graceful stop (what SIGINT/SIGTERM do).
fn stop(sh: &Shared) {
    sh.draining.store(true, Ordering::SeqCst);
    sh.wake();
}

pub fn run(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    if !matches!(opts.engine, Engine::EpollLt | Engine::EpollEt) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the leader-followers model shares one epoll instance between its threads \
                 (EPOLLONESHOT): --engine {} cannot do that; use epoll-lt or epoll-et",
                opts.engine
            ),
        ));
    }
    let mut control = EventLoop::new(opts.loop_config())?;
    let sh = start(opts, service.factory.clone(), Some(control.handle()))?;

    // Signals are blocked here, before any thread exists (threads inherit the mask).
    let udp_token = std::rc::Rc::new(std::cell::Cell::new(None));
    {
        let sh = sh.clone();
        let udp_token = udp_token.clone();
        control.add_signals(
            &[
                Signal::SIGINT,
                Signal::SIGTERM,
                Signal::SIGUSR2,
                Signal::SIGHUP,
            ],
            move |el, sig| match sig {
                Signal::SIGUSR2 => eprintln!("{}", sh.total(el.stats())),
                Signal::SIGHUP => eprintln!("keel: SIGHUP ignored (no configuration to reload)"),
                _ => {
                    if let Some(token) = udp_token.take() {
                        el.close_listener(token);
                    }
                    stop(&sh);
                }
            },
        )?;
    }

    let (listener, udp) = bind_and_announce(opts, service)?;
    if let (Some(sock), Some(udp)) = (udp, &service.udp) {
        udp_token.set(Some(control.add_udp(sock, udp())?));
    }
    let threads = spawn_threads(&sh, listener)?;

    let res = control.run();
    if res.is_err() {
        stop(&sh);
    }
    for t in threads {
        let _ = t.join();
    }
    eprintln!("{}", sh.total(control.stats()));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ListenOptions;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    struct Echo;
    impl Handler for Echo {
        fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
            cx.write(input.as_slice());
            input.clear();
        }
    }

    fn opts(threads: usize) -> ServerOptions {
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            engine: Engine::EpollLt,
            model: super::super::Model::LeaderFollowers,
            threads,
            accept: Default::default(),
            idle_timeout: None,
            linger_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(2),
            max_connections: None,
            keepalive: None,
            listen_opts: ListenOptions::default(),
        }
    }

    fn server(o: &ServerOptions) -> (Arc<Shared>, Vec<JoinHandle<()>>, SocketAddr) {
        let sh = start(o, Arc::new(|| Box::new(Echo) as Box<dyn Handler>), None).unwrap();
        let listener = crate::net::bind_tcp(o.listen, &o.listen_opts).unwrap();
        let addr = listener.local_addr().unwrap();
        let threads = spawn_threads(&sh, listener).unwrap();
        (sh, threads, addr)
    }

    fn finish(sh: &Arc<Shared>, threads: Vec<JoinHandle<()>>) -> LoopStats {
        stop(sh);
        for t in threads {
            t.join().unwrap();
        }
        sh.total(&LoopStats::new(Engine::EpollLt))
    }

    #[test]
    fn echoes_and_half_closes_under_several_threads() {
        let (sh, threads, addr) = server(&opts(3));
        let clients: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    let data: Vec<u8> = (0..200_000u32).map(|x| (x * 7 + i) as u8).collect();
                    let mut r = s.try_clone().unwrap();
                    let reader = std::thread::spawn(move || {
                        let mut got = Vec::new();
                        r.read_to_end(&mut got).unwrap(); // ends at the server's FIN
                        got
                    });
                    s.write_all(&data).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    assert_eq!(reader.join().unwrap(), data);
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let stats = finish(&sh, threads);
        assert_eq!(stats.accepted, 8);
        assert_eq!(stats.closed, 8);
        assert_eq!(stats.open, 0);
        assert_eq!(stats.bytes_in, 8 * 200_000);
        assert_eq!(stats.bytes_out, 8 * 200_000);
    }

    #[test]
    fn idle_timeout_closes_and_drain_ends_open_connections() {
        let mut o = opts(2);
        o.idle_timeout = Some(Duration::from_millis(200));
        let (sh, threads, addr) = server(&o);
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(idle.read(&mut buf).unwrap(), 0); // the server's FIN
        assert!(t0.elapsed() >= Duration::from_millis(150));
        drop(idle);

        let mut open = TcpStream::connect(addr).unwrap();
        open.write_all(b"ping").unwrap();
        open.read_exact(&mut buf[..4]).unwrap();
        stop(&sh);
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(open.read(&mut buf).unwrap(), 0); // drained: FIN
        drop(open);
        let stats = finish(&sh, threads);
        assert_eq!(stats.idle_timeouts, 1);
        assert_eq!(stats.open, 0);
    }
}

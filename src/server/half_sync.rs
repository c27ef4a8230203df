//! Half-sync/half-reactor (the notes' 半同步/半反应堆): one reactor thread does all socket I/O,
//! a pool of worker threads runs the handlers, and a bounded request queue sits between them.
//!
//! ```text
//!            reactor thread (the main thread's loop)                 worker threads (--threads)
//!  socket ──► read ──► shim ──► try_send(job) ──► [ bounded queue ] ──► handler callback
//!  socket ◄── write ◄── apply recorded ops ◄── LoopHandle::post(reply) ◄──┘ (ops recorded)
//! ```
//!
//! - **The reactor** owns the listener, every connection, the signals and the timers. Each
//!   connection's loop-side handler is a shim that keeps the real handler (from the service's
//!   factory) while it is idle and ships each event to the pool as a job: the handler itself,
//!   the event (the input bytes for `on_data`), and a snapshot of what the context answers
//!   (`output_len`, `peer_addr`).
//! - **A worker** runs the callback with a [`Ctx`] whose operations are recorded, not
//!   performed: a worker never touches a socket (DESIGN rule 5). It posts the recorded
//!   operations, the handler and the input it left unconsumed back to the reactor's task
//!   queue, where the loop applies them with its own methods and the shim takes the handler
//!   back.
//! - **Ordering**: at most one job per connection is in flight, so a handler's callbacks stay
//!   in order and it is only ever on one thread. What arrives meanwhile waits in the shim
//!   (input is appended to the connection's pending bytes; other events queue) and goes in
//!   the next job; input the handler left unconsumed is put back in front of it.
//! - **Backpressure**: the queue is bounded (16 jobs per worker, at least 64). When it is full,
//!   a connection with work waits its turn in a FIFO list served as jobs complete (every
//!   completion frees a slot and comes back to the reactor), and the connection stops being
//!   read; it also stops being read once 64 KiB are waiting for its busy handler (the job's
//!   own input and what a paused handler left count too: [`Side::waiting`]). The kernel's
//!   receive window then pushes back on the clients: memory stays bounded by the number of
//!   connections, whatever the clients send.
//! - **Shutdown** (SIGINT/SIGTERM): the listener closes; what clients have sent is still
//!   handed to jobs, and once no job is under way the reactor drains as every model does
//!   (`shutdown_gracefully`: each connection closes once it is idle), all within
//!   `--drain-timeout`. Jobs keep being handed out while it drains: a handler paused behind
//!   its own output still answers the pipelined requests it holds once the output drains, and
//!   while a connection's handler has work the shim keeps its reads paused, so the reactor
//!   never takes it for idle. Each handler still gets its `on_close` (on a worker; a
//!   handler whose reply finds the reactor gone gets it where the reply is dropped).
//!
//! What it costs, as the notes say: each request crosses two queues (reactor → workers →
//! reactor) with two context switches, the bytes are copied once more, and every worker takes
//! one shared lock to pull from the request queue, which all of them contend for; a handler
//! cannot act on other connections directly (`Ctx::event_loop` is `None`, `Ctx::connect` is
//! `Unsupported`), only through [`Ctx::handle`]. What it buys: a handler may block (a disk
//! read, a database call, `--work-ms`) without stalling the I/O of any other connection, up to
//! `--threads` of them at a time. The UDP side of a service runs on the reactor itself.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{bind_and_announce, ServerOptions, Service};
use crate::net::handler::ConnOps;
use crate::net::{Buffer, CloseReason, ConnId, Ctx, FileRange, Handler, HandlerFactory};
use crate::reactor::{EventLoop, LoopHandle, Note, Signal};

/// Queue slots per worker thread.
const QUEUE_PER_WORKER: usize = 16;
/// The smallest request queue.
const MIN_QUEUE: usize = 64;
/// ... and at most this many, whatever the worker count.
const MAX_QUEUE: usize = 1 << 16;
/// Input waiting for a busy handler beyond which the connection stops being read (see
/// [`Side::waiting`]).
const MAX_BACKLOG: usize = 64 * 1024;

pub fn run(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    let mut reactor = EventLoop::new(opts.loop_config(service))?;
    let capacity = opts
        .threads
        .saturating_mul(QUEUE_PER_WORKER)
        .clamp(MIN_QUEUE, MAX_QUEUE);
    let (hub, rx) = Hub::new(reactor.handle(), capacity);
    // Signals are blocked before the workers exist, so they inherit the mask.
    install_signals(&mut reactor, hub.clone(), opts.drain_timeout)?;

    // The reactor is the only loop: the page reads its counters where it is served.
    let engine = opts.engine;
    super::admin::attach(
        &mut reactor,
        opts.model,
        Arc::new(move |own: Option<&crate::reactor::LoopStats>| {
            let own = own
                .cloned()
                .unwrap_or_else(|| crate::reactor::LoopStats::new(engine));
            (own.clone(), vec![own])
        }),
    )?;
    // Bound and announced (and daemonized) before the workers exist: fork needs one thread.
    let (listener, udp) = bind_and_announce(opts, service)?;
    let (workers, spawned) = spawn_workers(opts.threads, rx, &hub);
    let mut result = spawned;

    if result.is_ok() {
        result = serve(&mut reactor, listener, udp, service, &hub);
    }
    let stats = reactor.stats().clone();
    // Closes the task queue: a reply that comes back now is dropped, and its handler gets its
    // `on_close` where it is dropped.
    drop(reactor);
    // The drain is over: jobs still queued only get their handler's `on_close`, not their
    // callback (the drain timeout bounds the whole stop, not just the reactor's part).
    hub.abandon.store(true, Ordering::SeqCst);
    stop_workers(&hub, workers);
    close_leftovers(&hub);
    result?;
    super::report_stats(&stats);
    Ok(())
}

fn serve(
    reactor: &mut EventLoop,
    listener: std::net::TcpListener,
    udp: Option<std::net::UdpSocket>,
    service: &Service,
    hub: &Arc<Hub>,
) -> io::Result<()> {
    reactor.add_listener(listener, shim_factory(service.factory.clone(), hub))?;
    if let (Some(sock), Some(udp)) = (udp, &service.udp) {
        reactor.add_udp(sock, udp())?;
    }
    super::started();
    reactor.run()
}

/// Starts `n` workers on the queue's receiving end; an error if not all could be started.
fn spawn_workers(
    n: usize,
    rx: Receiver<Job>,
    hub: &Arc<Hub>,
) -> (Vec<JoinHandle<()>>, io::Result<()>) {
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let (rx, hub) = (rx.clone(), hub.clone());
        let name = format!("keel-worker-{i}");
        match std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || worker(&rx, &hub))
        {
            Ok(t) => workers.push(t),
            Err(e) => return (workers, Err(super::thread_not_started(&name, e))),
        }
    }
    (workers, Ok(()))
}

/// The loop-side factory: every connection gets a shim holding a handler from `inner`.
fn shim_factory(inner: HandlerFactory, hub: &Arc<Hub>) -> HandlerFactory {
    let hub = hub.clone();
    Arc::new(move || {
        Box::new(Shim {
            side: Arc::new(Mutex::new(Side::new(inner()))),
            hub: hub.clone(),
        }) as Box<dyn Handler>
    })
}

/// Each worker gets one `Stop` after every job queued before it, then is joined.
fn stop_workers(hub: &Hub, workers: Vec<JoinHandle<()>>) {
    for _ in &workers {
        if hub.tx.send(Job::Stop).is_err() {
            break; // every worker is gone already
        }
    }
    for t in workers {
        let _ = t.join();
    }
}

/// Handlers whose `on_close` was still waiting for a queue slot when the reactor stopped get
/// it here, on the main thread, once the workers are gone.
fn close_leftovers(hub: &Hub) {
    let blocked = std::mem::take(&mut hub.state().blocked);
    for (id, side) in blocked {
        let (handler, closed) = {
            let mut s = lock(&side);
            let reason = s.events.iter().find_map(|c| match c {
                Call::Close(r, unsent) => Some((r.clone(), *unsent + s.unapplied)),
                _ => None,
            });
            (s.handler.take(), reason)
        };
        if let Some(h) = handler {
            let (reason, unsent) = closed.unwrap_or((CloseReason::DrainTimeout, 0));
            close_handler(h, id, reason, unsent, &hub.handle);
        }
    }
}

/// Runs `on_close` off the reactor, for a connection that is gone.
fn close_handler(
    mut h: Box<dyn Handler>,
    id: ConnId,
    reason: CloseReason,
    unsent: usize,
    handle: &LoopHandle,
) {
    let mut rec = Recorder {
        ops: Vec::new(),
        output_len: unsent,
        writable: false,
        peer: None,
        handle: handle.clone(),
    };
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        h.on_close(&mut Ctx::new(&mut rec, id), reason)
    }));
}

fn install_signals(el: &mut EventLoop, hub: Arc<Hub>, drain: Duration) -> io::Result<()> {
    el.add_signals(&super::control::SERVER_SIGNALS, move |el, sig| match sig {
        Signal::SIGUSR2 => super::report_stats(el.stats()),
        Signal::SIGHUP => {
            super::reload::reload();
        }
        Signal::SIGUSR1 => crate::ops::log::reopen_all(),
        _ => {
            if !super::first_stop_signal(sig) {
                return;
            }
            tracing::info!("{sig:?}: stopping; draining connections for up to {drain:?}");
            super::arm_stop_watchdog(drain);
            begin_drain(el, &hub, drain)
        }
    })
}

/// Refuse new connections; once no job is under way, drain the reactor in the time left.
fn begin_drain(el: &mut EventLoop, hub: &Hub, drain: Duration) {
    {
        let mut st = hub.state();
        if st.drain_deadline.is_some() {
            return;
        }
        st.drain_deadline = Some(Instant::now() + drain);
    }
    crate::ops::notify::stopping();
    // New connections are refused at once; jobs under way still get their replies out.
    el.close_tcp_listeners();
    // Jobs that outlive the drain timeout are not waited for.
    el.run_after(drain, |el| el.shutdown_gracefully(Duration::ZERO));
    maybe_shut_down(el, hub);
}

fn maybe_shut_down(el: &mut EventLoop, hub: &Hub) {
    let left = {
        let mut st = hub.state();
        match st.drain_deadline {
            Some(deadline) if st.in_flight == 0 && !st.shut_down => {
                st.shut_down = true;
                deadline.saturating_duration_since(Instant::now())
            }
            _ => return,
        }
    };
    el.shutdown_gracefully(left);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- what the reactor and the workers share ----

/// The request queue and the reactor-side bookkeeping of the pool. `state` is only locked on
/// the reactor thread (it sits here so that replies coming back from workers can reach it).
struct Hub {
    tx: SyncSender<Job>,
    capacity: usize,
    /// Jobs sent and not yet taken by a worker (an upper bound: workers only lower it).
    queued: AtomicUsize,
    /// Set once the reactor has stopped: queued jobs are closed, not run.
    abandon: AtomicBool,
    handle: LoopHandle,
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    /// Connections with a job ready and no room for it in the queue, in arrival order.
    blocked: VecDeque<(ConnId, Arc<Mutex<Side>>)>,
    /// Jobs queued or running.
    in_flight: usize,
    drain_deadline: Option<Instant>,
    shut_down: bool,
}

impl Hub {
    /// The hub of the reactor behind `handle`, and the receiving end of its request queue.
    fn new(handle: LoopHandle, capacity: usize) -> (Arc<Hub>, Receiver<Job>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let hub = Hub {
            tx,
            capacity,
            queued: AtomicUsize::new(0),
            abandon: AtomicBool::new(false),
            handle,
            state: Mutex::new(HubState::default()),
        };
        (Arc::new(hub), rx)
    }
    fn state(&self) -> MutexGuard<'_, HubState> {
        lock(&self.state)
    }
    fn has_room(&self) -> bool {
        self.queued.load(Ordering::SeqCst) < self.capacity
    }
}

/// One handler callback to run.
enum Call {
    Connect,
    Data(Buffer),
    PeerShutdown,
    Drained,
    HighWater(usize),
    IdleTimeout,
    Timer(u64),
    /// Why, and the bytes the connection still had queued (never sent).
    Close(CloseReason, usize),
}

enum Job {
    Run(Work),
    Stop,
}

/// A job: a handler, the callback to run on it, and what its context answers.
struct Work {
    id: ConnId,
    handler: Box<dyn Handler>,
    call: Call,
    output_len: usize,
    writable: bool,
    peer: Option<SocketAddr>,
    side: Arc<Mutex<Side>>,
    hub: Arc<Hub>,
}

/// One connection as the reactor sees it, next to the loop's own state.
struct Side {
    /// The real handler, while no job holds it.
    handler: Option<Box<dyn Handler>>,
    /// A job holds the handler.
    busy: bool,
    /// In the hub's `blocked` list, waiting for room in the queue.
    blocked: bool,
    /// The handler is gone: its `on_close` ran, or it panicked.
    dead: bool,
    /// The loop closed the connection; only `on_close` is left to run.
    closed: bool,
    /// The handler asked to close or abort: input is no longer delivered.
    closing: bool,
    write_shut: bool,
    /// Bytes received and not consumed by the handler; the first `seen` it has already been
    /// given (it left them unconsumed, waiting for more).
    input: Option<Buffer>,
    seen: usize,
    /// The input handed to the job under way, if it is an `on_data` (0 otherwise).
    in_job: usize,
    /// Callbacks other than `on_data`, in the order the loop made them.
    events: VecDeque<Call>,
    /// Reading paused by the handler (`pause_read`), by the shim (backlog), and what the loop
    /// was last told.
    handler_paused: bool,
    backlog_paused: bool,
    read_paused: bool,
    peer: Option<SocketAddr>,
    /// Bytes a handler wrote (its context said yes) that the loop could not queue: the
    /// connection had closed meanwhile. `on_close` counts them as never sent.
    unapplied: usize,
}

impl Side {
    fn new(handler: Box<dyn Handler>) -> Side {
        Side {
            handler: Some(handler),
            busy: false,
            blocked: false,
            dead: false,
            closed: false,
            closing: false,
            write_shut: false,
            input: None,
            seen: 0,
            in_job: 0,
            events: VecDeque::new(),
            unapplied: 0,
            handler_paused: false,
            backlog_paused: false,
            read_paused: false,
            peer: None,
        }
    }

    fn unseen(&self) -> usize {
        self.input
            .as_ref()
            .map_or(0, |b| b.len())
            .saturating_sub(self.seen)
    }

    /// Input waiting for the handler, what the backlog rule ([`MAX_BACKLOG`]) counts: bytes
    /// no job has had yet, those of the job under way (they may come back unconsumed), and
    /// those a handler left when it paused (it does not want them now; it gets them again
    /// when it resumes). Left out: what a handler that did not pause left unconsumed, since
    /// it is waiting for more (a frame longer than what came), and must get it.
    fn waiting(&self) -> usize {
        let left_paused = if self.handler_paused { self.seen } else { 0 };
        self.unseen() + self.in_job + left_paused
    }

    /// The next callback to run. Events other than the peer's FIN and the close go first
    /// (they do not depend on the input: a high-water mark must not wait behind a stream of
    /// data); then new input, unless the handler paused reading; then the FIN, which must
    /// follow every byte before it; the close comes last.
    fn next_call(&mut self) -> Option<Call> {
        if let Some(i) = self
            .events
            .iter()
            .position(|c| !matches!(c, Call::PeerShutdown | Call::Close(..)))
        {
            return self.events.remove(i);
        }
        let unseen = self.unseen() > 0;
        if unseen && !self.handler_paused {
            return self.input.take().map(Call::Data);
        }
        match self.events.front() {
            // The FIN follows every byte before it: it waits for input not yet given, and
            // for input a paused handler left (it is given again on resume, as the loop does).
            Some(Call::PeerShutdown) if unseen || self.handler_paused => None,
            Some(_) => self.events.pop_front(),
            None => None,
        }
    }

    /// Undoes `next_call` when the job could not be queued.
    fn put_back(&mut self, call: Call) {
        match call {
            Call::Data(buf) => self.input = Some(buf),
            other => self.events.push_front(other),
        }
    }
}

// ---- the reactor side ----

/// The loop's handler of a connection: it holds the real handler and ships its callbacks.
struct Shim {
    side: Arc<Mutex<Side>>,
    hub: Arc<Hub>,
}

fn reactor<'a>(cx: &'a mut Ctx<'_>) -> &'a mut EventLoop {
    cx.event_loop()
        .expect("a half-sync shim runs on the reactor thread")
}

impl Shim {
    fn push(&mut self, cx: &mut Ctx<'_>, call: Call) {
        let id = cx.id();
        {
            let mut s = lock(&self.side);
            if s.dead || s.closed {
                return;
            }
            s.events.push_back(call);
        }
        pump(reactor(cx), &self.hub, id, &self.side);
        sync_read(reactor(cx), id, &self.side);
    }
}

impl Handler for Shim {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        lock(&self.side).peer = cx.peer_addr();
        self.push(cx, Call::Connect);
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        let id = cx.id();
        {
            let mut s = lock(&self.side);
            if s.dead || s.closed || s.closing {
                input.clear();
                return;
            }
            s.input
                .get_or_insert_with(|| Buffer::with_capacity(input.len()))
                .append(input.as_slice());
            input.clear();
        }
        let el = reactor(cx);
        pump(el, &self.hub, id, &self.side);
        {
            // Input the handler cannot take now: stop reading when the queue is full or the
            // busy handler has enough waiting (the kernel's window then stops the peer).
            let mut s = lock(&self.side);
            if (s.blocked && s.unseen() > 0) || s.waiting() >= MAX_BACKLOG {
                s.backlog_paused = true;
            }
        }
        sync_read(el, id, &self.side);
    }

    fn on_drained(&mut self, cx: &mut Ctx<'_>) {
        self.push(cx, Call::Drained);
    }

    /// Bytes the handler was given and left, waiting for more: the loop never sees them (the
    /// shim takes every byte), so it asks.
    fn holds_partial_message(&self) -> bool {
        let s = lock(&self.side);
        s.seen > 0 && !s.handler_paused && !s.closing && !s.closed
    }

    fn on_high_water(&mut self, cx: &mut Ctx<'_>, queued: usize) {
        self.push(cx, Call::HighWater(queued));
    }

    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        self.push(cx, Call::PeerShutdown);
    }

    fn on_idle_timeout(&mut self, cx: &mut Ctx<'_>) {
        self.push(cx, Call::IdleTimeout);
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, tag: u64) {
        self.push(cx, Call::Timer(tag));
    }

    /// The connection is gone: what was waiting for the handler is dropped (as the loop
    /// delivers nothing after a close), except its `on_connect`; `on_close` runs after the
    /// job under way, if any.
    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        let id = cx.id();
        {
            let mut s = lock(&self.side);
            if s.dead {
                return;
            }
            s.closed = true;
            s.input = None;
            s.seen = 0;
            s.events.retain(|c| matches!(c, Call::Connect));
            s.events.push_back(Call::Close(reason, cx.output_len()));
        }
        pump(reactor(cx), &self.hub, id, &self.side);
    }
}

/// Starts the connection's next job if its handler is idle and has something to do; with
/// the queue full, puts the connection in line.
fn pump(el: &mut EventLoop, hub: &Arc<Hub>, id: ConnId, side: &Arc<Mutex<Side>>) {
    // A stop still answers what clients have sent: jobs keep starting while the reactor
    // drains (see `sync_read`), until the drain timeout closes what is left.
    let mut s = lock(side);
    if s.busy || s.blocked || s.dead || s.handler.is_none() {
        return;
    }
    let Some(call) = s.next_call() else {
        s.backlog_paused = s.waiting() >= MAX_BACKLOG;
        return;
    };
    if !hub.has_room() {
        s.put_back(call);
        s.blocked = true;
        drop(s);
        hub.state().blocked.push_back((id, side.clone()));
        return;
    }
    let output_len = match call {
        Call::Close(_, unsent) => unsent + s.unapplied,
        _ => el.output_len(id),
    };
    let work = Work {
        id,
        handler: s.handler.take().expect("checked above"),
        call,
        output_len,
        writable: el.is_open(id) && !s.write_shut && !s.closing,
        peer: s.peer,
        side: side.clone(),
        hub: hub.clone(),
    };
    let data = match &work.call {
        Call::Data(b) => Some(b.len()),
        _ => None,
    };
    hub.queued.fetch_add(1, Ordering::SeqCst);
    match hub.tx.try_send(Job::Run(work)) {
        Ok(()) => {
            s.busy = true;
            if let Some(len) = data {
                s.seen = 0; // all of it went; what arrives now is new
                s.in_job = len;
            }
            // The job's input still counts: it may all come back, to a handler that paused.
            s.backlog_paused = s.waiting() >= MAX_BACKLOG;
            hub.state().in_flight += 1;
        }
        Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
            // Not expected (`queued` bounds the queue), but never lose the handler.
            hub.queued.fetch_sub(1, Ordering::SeqCst);
            if let Job::Run(w) = job {
                s.handler = Some(w.handler);
                s.put_back(w.call);
            }
            s.blocked = true;
            drop(s);
            hub.state().blocked.push_back((id, side.clone()));
        }
    }
}

/// Tells the loop to read or not, from the handler's wish and the shim's backlog.
///
/// While the reactor drains it closes a connection it finds idle (nothing queued, nothing to
/// read); one whose handler still has work here (a job under way or waiting for a slot,
/// input not yet handled, a callback due) is kept from looking idle by pausing its reads.
fn sync_read(el: &mut EventLoop, id: ConnId, side: &Mutex<Side>) {
    let draining = el.is_draining();
    let change = {
        let mut s = lock(side);
        let has_work = s.busy
            || s.blocked
            || s.unseen() > 0
            || s.events.iter().any(|c| !matches!(c, Call::Close(..)));
        let want = !s.closing
            && !s.closed
            && (s.handler_paused || s.backlog_paused || (draining && has_work));
        if want == s.read_paused {
            None
        } else {
            s.read_paused = want;
            Some(want)
        }
    };
    match change {
        Some(true) => el.pause_read(id),
        Some(false) => el.resume_read(id),
        None => {}
    }
}

/// Gives queue slots freed by completed jobs to the connections waiting for one, in order.
fn serve_blocked(el: &mut EventLoop, hub: &Arc<Hub>) {
    while hub.has_room() {
        let Some((id, side)) = hub.state().blocked.pop_front() else {
            return;
        };
        lock(&side).blocked = false;
        pump(el, hub, id, &side);
        sync_read(el, id, &side);
    }
}

// ---- the worker side ----

fn worker(rx: &Mutex<Receiver<Job>>, hub: &Hub) {
    loop {
        // The one lock every worker contends for.
        let job = lock(rx).recv();
        match job {
            Ok(Job::Run(work)) => {
                hub.queued.fetch_sub(1, Ordering::SeqCst);
                if hub.abandon.load(Ordering::SeqCst) {
                    let handle = work.hub.handle.clone();
                    let unsent = work.output_len;
                    close_handler(
                        work.handler,
                        work.id,
                        CloseReason::DrainTimeout,
                        unsent,
                        &handle,
                    );
                } else {
                    work.run();
                }
            }
            Ok(Job::Stop) | Err(_) => return,
        }
    }
}

/// What a handler did, to be done by the reactor.
enum Op {
    Write(Vec<u8>),
    SendFile(Vec<u8>, FileRange),
    Note(Note),
    ShutdownWrite,
    Close,
    Abort,
    PauseRead,
    ResumeRead,
    IdleTimeout(Option<Duration>),
    SetTimer(Duration, u64),
    CancelTimer(u64),
}

/// The context operations of a handler running on a worker: recorded, answered from the
/// snapshot taken when the job was made (plus what this callback wrote).
struct Recorder {
    ops: Vec<Op>,
    output_len: usize,
    writable: bool,
    peer: Option<SocketAddr>,
    handle: LoopHandle,
}

impl ConnOps for Recorder {
    fn write(&mut self, _id: ConnId, data: &[u8]) -> bool {
        if !self.writable {
            return false;
        }
        if data.is_empty() {
            return true;
        }
        // Consecutive writes become one: one send on the reactor.
        match self.ops.last_mut() {
            Some(Op::Write(buf)) => buf.extend_from_slice(data),
            _ => self.ops.push(Op::Write(data.to_vec())),
        }
        self.output_len += data.len();
        true
    }
    fn send_file(&mut self, _id: ConnId, head: &[u8], range: FileRange) -> bool {
        if !self.writable {
            return false;
        }
        self.output_len += head.len() + range.len as usize;
        self.ops.push(Op::SendFile(head.to_vec(), range));
        true
    }
    fn output_len(&self, _id: ConnId) -> usize {
        self.output_len
    }
    fn shutdown_write(&mut self, _id: ConnId) {
        self.writable = false;
        self.ops.push(Op::ShutdownWrite);
    }
    fn close(&mut self, _id: ConnId) {
        self.writable = false;
        self.ops.push(Op::Close);
    }
    fn abort(&mut self, _id: ConnId) {
        self.writable = false;
        self.output_len = 0;
        self.ops.push(Op::Abort);
    }
    fn pause_read(&mut self, _id: ConnId) {
        self.ops.push(Op::PauseRead);
    }
    fn resume_read(&mut self, _id: ConnId) {
        self.ops.push(Op::ResumeRead);
    }
    fn set_idle_timeout(&mut self, _id: ConnId, timeout: Option<Duration>) {
        self.ops.push(Op::IdleTimeout(timeout));
    }
    fn set_timer(&mut self, _id: ConnId, after: Duration, tag: u64) {
        self.ops.push(Op::SetTimer(after, tag));
    }
    fn cancel_timer(&mut self, _id: ConnId, tag: u64) {
        self.ops.push(Op::CancelTimer(tag));
    }
    fn peer_addr(&self, _id: ConnId) -> Option<SocketAddr> {
        self.peer
    }
    fn handle(&self) -> Option<LoopHandle> {
        Some(self.handle.clone())
    }
    fn note(&mut self, note: Note) {
        self.ops.push(Op::Note(note));
    }
}

impl Work {
    fn run(self) {
        let Work {
            id,
            mut handler,
            call,
            output_len,
            writable,
            peer,
            side,
            hub,
        } = self;
        let mut rec = Recorder {
            ops: Vec::new(),
            output_len,
            writable,
            peer,
            handle: hub.handle.clone(),
        };
        let close = matches!(call, Call::Close(..));
        let mut input = None;
        let ran = panic::catch_unwind(AssertUnwindSafe(|| {
            let cx = &mut Ctx::new(&mut rec, id);
            match call {
                Call::Connect => handler.on_connect(cx),
                Call::Data(mut buf) => {
                    handler.on_data(cx, &mut buf);
                    input = Some(buf);
                }
                Call::PeerShutdown => handler.on_peer_shutdown(cx),
                Call::Drained => handler.on_drained(cx),
                Call::HighWater(queued) => handler.on_high_water(cx, queued),
                Call::IdleTimeout => handler.on_idle_timeout(cx),
                Call::Timer(tag) => handler.on_timer(cx, tag),
                Call::Close(reason, _) => handler.on_close(cx, reason),
            }
        }));
        let handler = match ran {
            Ok(()) if !close => Some(handler),
            Ok(()) => None, // its life is over
            Err(_) => {
                tracing::error!(
                    "a handler panicked on a half-sync worker; its connection is reset"
                );
                rec.ops = vec![Op::Abort];
                input = None;
                None
            }
        };
        let reply = Reply {
            id,
            handler,
            input,
            ops: rec.ops,
            close,
            side,
            hub: hub.clone(),
        };
        // A refused post drops the reply here, which closes its handler (see `Drop`).
        hub.handle.post(move |el| reply.complete(el));
    }
}

/// A job's result on its way back to the reactor.
struct Reply {
    id: ConnId,
    handler: Option<Box<dyn Handler>>,
    /// The `on_data` input, with what the handler left unconsumed.
    input: Option<Buffer>,
    ops: Vec<Op>,
    close: bool,
    side: Arc<Mutex<Side>>,
    hub: Arc<Hub>,
}

impl Reply {
    /// On the reactor: the handler goes home, its operations are done, and the connection's
    /// next job (and those of connections waiting for a queue slot) can start.
    fn complete(mut self, el: &mut EventLoop) {
        let (id, side, hub) = (self.id, self.side.clone(), self.hub.clone());
        hub.state().in_flight -= 1;
        {
            let mut s = lock(&side);
            s.busy = false;
            s.in_job = 0;
            match self.handler.take() {
                Some(h) => s.handler = Some(h),
                None => s.dead = true,
            }
            if let Some(left) = self.input.take().filter(|b| !b.is_empty()) {
                // Unconsumed bytes go back in front of what arrived meanwhile.
                s.seen = left.len();
                s.input = Some(match s.input.take() {
                    Some(newer) => {
                        let mut left = left;
                        left.append(newer.as_slice());
                        left
                    }
                    None => left,
                });
            }
        }
        if !self.close {
            apply(el, id, &side, std::mem::take(&mut self.ops));
        }
        serve_blocked(el, &hub);
        pump(el, &hub, id, &side);
        sync_read(el, id, &side);
        maybe_shut_down(el, &hub);
    }
}

impl Drop for Reply {
    /// The reply never reached the reactor (it was gone): the handler is closed here.
    fn drop(&mut self) {
        let Some(handler) = self.handler.take() else {
            return;
        };
        let s = lock(&self.side);
        let (reason, unsent) = s
            .events
            .iter()
            .find_map(|c| match c {
                Call::Close(r, unsent) => Some((r.clone(), *unsent + s.unapplied)),
                _ => None,
            })
            .unwrap_or((CloseReason::DrainTimeout, 0));
        drop(s);
        close_handler(handler, self.id, reason, unsent, &self.hub.handle);
    }
}

/// Does what a handler asked for, with the loop's own methods.
fn apply(el: &mut EventLoop, id: ConnId, side: &Mutex<Side>, ops: Vec<Op>) {
    let wrote = ops
        .iter()
        .any(|op| matches!(op, Op::Write(_) | Op::SendFile(..)));
    let mut paused = None;
    let mut closing = false;
    let mut write_shut = false;
    let mut unapplied = 0;
    for op in ops {
        match op {
            Op::Write(data) => {
                if !el.write(id, &data) {
                    unapplied += data.len();
                }
            }
            Op::SendFile(head, range) => {
                let len = head.len() + range.len as usize;
                if !el.send_file(id, &head, range) {
                    unapplied += len;
                }
            }
            Op::Note(note) => el.note(note),
            Op::ShutdownWrite => {
                write_shut = true;
                el.shutdown_write(id);
            }
            Op::Close => {
                closing = true;
                el.close(id);
            }
            Op::Abort => {
                closing = true;
                el.abort(id);
            }
            Op::PauseRead => paused = Some(true),
            Op::ResumeRead => paused = Some(false),
            Op::IdleTimeout(t) => el.set_idle_timeout(id, t),
            Op::SetTimer(after, tag) => el.set_conn_timer(id, after, tag),
            Op::CancelTimer(tag) => el.cancel_conn_timer(id, tag),
        }
    }
    let mut s = lock(side);
    s.unapplied += unapplied;
    if let Some(p) = paused {
        if s.handler_paused && !p {
            // Resumed: what the handler left unconsumed when it paused is offered again, as
            // the loop's `resume_read` does, since no new bytes may ever come to announce it
            // (pipelined requests behind a large response, say).
            s.seen = 0;
        }
        s.handler_paused = p;
        let drain_due = s.events.iter().any(|c| matches!(c, Call::Drained));
        if p && wrote && !drain_due && !closing && el.is_open(id) && el.output_len(id) == 0 {
            // A handler that wrote and paused until its output drains (HTTP behind a pipelined
            // backlog) judged from the recorder's count, which grows with every write; the
            // socket may have taken all of it at once, and then the loop, which never queued
            // a byte, has no drain to report. The drain is reported here instead, or reading
            // would stay paused for good. A handler that paused without writing waits for
            // something else, and gets no drain, as under the loop.
            s.events.push_back(Call::Drained);
        }
    }
    s.write_shut |= write_shut || closing;
    if closing {
        // The loop discards input from now on; so does the shim.
        s.closing = true;
        s.input = None;
        s.seen = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{LoopConfig, Token};

    struct Nop;
    impl Handler for Nop {
        fn on_data(&mut self, _cx: &mut Ctx<'_>, _input: &mut Buffer) {}
    }

    fn bytes(data: &[u8]) -> Buffer {
        let mut b = Buffer::new();
        b.append(data);
        b
    }

    fn kind(c: &Option<Call>) -> &'static str {
        match c {
            None => "none",
            Some(Call::Connect) => "connect",
            Some(Call::Data(_)) => "data",
            Some(Call::PeerShutdown) => "fin",
            Some(Call::Drained) => "drained",
            Some(Call::HighWater(_)) => "high-water",
            Some(Call::IdleTimeout) => "idle",
            Some(Call::Timer(_)) => "timer",
            Some(Call::Close(..)) => "close",
        }
    }

    /// Upper-cases whole lines after a little blocking work; keeps partial lines for later.
    struct Lines {
        closes: Arc<AtomicUsize>,
    }
    impl Handler for Lines {
        fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
            while let Some(end) = input.find_byte(b'\n') {
                let line = input.take_bytes(end + 1);
                std::thread::sleep(Duration::from_millis(1));
                cx.write(&line.to_ascii_uppercase());
            }
        }
        fn on_close(&mut self, _cx: &mut Ctx<'_>, _reason: CloseReason) {
            self.closes.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn handlers_on_workers_serve_split_lines_in_order_through_a_tiny_queue() {
        use std::io::{Read, Write};
        const CLIENTS: usize = 8;
        let mut el = EventLoop::new(LoopConfig::default()).unwrap();
        // A queue of 2 for 8 busy connections: most jobs wait in the blocked list.
        let (hub, rx) = Hub::new(el.handle(), 2);
        let (workers, spawned) = spawn_workers(2, rx, &hub);
        spawned.unwrap();
        let closes = Arc::new(AtomicUsize::new(0));
        let c = closes.clone();
        let factory: HandlerFactory =
            Arc::new(move || Box::new(Lines { closes: c.clone() }) as Box<dyn Handler>);
        let listener =
            crate::net::bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let addr = listener.local_addr().unwrap();
        el.add_listener(listener, shim_factory(factory, &hub))
            .unwrap();
        el.run_after(Duration::from_secs(20), |el| el.stop()); // never hang
        let handle = el.handle();
        let clients = std::thread::spawn(move || {
            let ok = (0..CLIENTS)
                .map(|i| {
                    std::thread::spawn(move || {
                        let text: String =
                            (0..200).map(|n| format!("client {i} line {n}\n")).collect();
                        let mut s = std::net::TcpStream::connect(addr).unwrap();
                        let mut r = s.try_clone().unwrap();
                        let reader = std::thread::spawn(move || {
                            let mut got = String::new();
                            r.read_to_string(&mut got).unwrap();
                            got
                        });
                        // Chunks that split lines anywhere.
                        for chunk in text.as_bytes().chunks(7 + i) {
                            s.write_all(chunk).unwrap();
                        }
                        s.shutdown(std::net::Shutdown::Write).unwrap();
                        reader.join().unwrap() == text.to_ascii_uppercase()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .all(|t| t.join().unwrap());
            std::thread::sleep(Duration::from_millis(100));
            handle.stop();
            ok
        });
        el.run().unwrap();
        let stats = el.stats().clone();
        drop(el);
        stop_workers(&hub, workers);
        close_leftovers(&hub);
        assert!(
            clients.join().unwrap(),
            "every client got its lines back, in order"
        );
        assert_eq!(stats.closed, CLIENTS as u64);
        assert_eq!(
            closes.load(Ordering::SeqCst),
            CLIENTS,
            "one on_close per handler"
        );
    }

    #[test]
    fn events_pass_data_but_the_fin_follows_it() {
        let mut s = Side::new(Box::new(Nop));
        s.events.push_back(Call::Connect);
        s.input = Some(bytes(b"hello"));
        s.events.push_back(Call::PeerShutdown);
        s.events.push_back(Call::HighWater(1));
        assert_eq!(kind(&s.next_call()), "connect");
        assert_eq!(kind(&s.next_call()), "high-water");
        assert_eq!(kind(&s.next_call()), "data");
        assert_eq!(kind(&s.next_call()), "fin");
        assert_eq!(kind(&s.next_call()), "none");
    }

    #[test]
    fn leftover_input_is_not_given_again_alone() {
        let mut s = Side::new(Box::new(Nop));
        s.input = Some(bytes(b"partial"));
        s.seen = 7;
        s.events.push_back(Call::PeerShutdown);
        // Nothing new: the FIN may go, the handler keeps waiting for the rest of its frame.
        assert_eq!(kind(&s.next_call()), "fin");
        assert_eq!(kind(&s.next_call()), "none");
    }

    #[test]
    fn a_paused_handler_gets_no_data_and_its_fin_waits_but_other_events_pass() {
        let mut s = Side::new(Box::new(Nop));
        s.handler_paused = true;
        s.input = Some(bytes(b"more"));
        s.events.push_back(Call::PeerShutdown);
        s.events.push_back(Call::Drained);
        assert_eq!(kind(&s.next_call()), "drained");
        assert_eq!(kind(&s.next_call()), "none");
        s.handler_paused = false;
        assert_eq!(kind(&s.next_call()), "data");
        assert_eq!(kind(&s.next_call()), "fin");
    }

    /// A handler that paused with input it had seen (requests behind a large response) gets
    /// that input again when it resumes, and the peer's FIN only after it.
    #[test]
    fn input_a_paused_handler_left_is_given_again_on_resume() {
        let mut s = Side::new(Box::new(Nop));
        s.handler_paused = true;
        s.input = Some(bytes(b"GET / HTTP/1.1"));
        s.seen = 14;
        s.events.push_back(Call::PeerShutdown);
        assert_eq!(kind(&s.next_call()), "none", "the FIN waits while paused");
        let s = Mutex::new(s);
        let el = &mut EventLoop::new(LoopConfig::default()).unwrap();
        apply(el, ConnId(Token(0)), &s, vec![Op::ResumeRead]);
        let mut s = s.into_inner().unwrap();
        assert_eq!(s.unseen(), 14);
        assert_eq!(kind(&s.next_call()), "data");
        assert_eq!(kind(&s.next_call()), "fin");
    }

    /// The backlog counts input a handler will get again (a job's, one left by a paused
    /// handler), not input a handler left because it waits for more: a frame longer than
    /// [`MAX_BACKLOG`] must still be read to the end.
    #[test]
    fn the_backlog_counts_what_a_handler_will_get_again() {
        let mut s = Side::new(Box::new(Nop));
        let big = vec![b'x'; MAX_BACKLOG + 10];
        s.input = Some(bytes(&big));
        s.seen = MAX_BACKLOG + 10; // left unconsumed: the frame is longer still
        assert_eq!(s.waiting(), 0, "a handler waiting for more is read on");
        s.handler_paused = true;
        assert_eq!(
            s.waiting(),
            MAX_BACKLOG + 10,
            "a paused handler's leftover waits"
        );
        s.handler_paused = false;
        s.seen = 0;
        let call = s.next_call();
        assert_eq!(kind(&call), "data");
        s.in_job = MAX_BACKLOG + 10;
        assert!(
            s.waiting() >= MAX_BACKLOG,
            "a job's input may all come back"
        );
    }

    /// The drain reported for a handler that wrote and paused while the loop queued nothing
    /// (the socket took it all): once, and not for a handler that paused without writing.
    #[test]
    fn a_drain_is_reported_only_for_a_pause_after_writes_the_socket_took() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let el = &mut EventLoop::new(LoopConfig::default()).unwrap();
        let id = el.adopt(server.into(), Box::new(Nop)).unwrap();
        let drains = |s: &Mutex<Side>| {
            lock(s)
                .events
                .iter()
                .filter(|c| matches!(c, Call::Drained))
                .count()
        };
        let s = Mutex::new(Side::new(Box::new(Nop)));
        apply(el, id, &s, vec![Op::PauseRead]);
        assert_eq!(drains(&s), 0, "paused without writing: no drain");
        apply(el, id, &s, vec![Op::ResumeRead]);
        apply(el, id, &s, vec![Op::Write(b"x".to_vec()), Op::PauseRead]);
        assert_eq!(el.output_len(id), 0, "the socket took the byte");
        assert_eq!(
            drains(&s),
            1,
            "wrote and paused with nothing queued: a drain"
        );
        apply(el, id, &s, vec![Op::ResumeRead]);
        apply(el, id, &s, vec![Op::Write(b"y".to_vec()), Op::PauseRead]);
        assert_eq!(drains(&s), 1, "one drain already due: not a second");
    }

    #[test]
    fn put_back_restores_the_order() {
        let mut s = Side::new(Box::new(Nop));
        s.events.push_back(Call::Drained);
        s.events.push_back(Call::Timer(1));
        let c = s.next_call().unwrap();
        s.put_back(c);
        assert_eq!(kind(&s.next_call()), "drained");
        s.input = Some(bytes(b"abc"));
        let c = s.next_call();
        assert_eq!(kind(&c), "timer");
        let c = s.next_call().unwrap();
        s.put_back(c);
        assert_eq!(s.unseen(), 3);
    }

    #[test]
    fn the_recorder_coalesces_writes_and_refuses_them_after_shutdown() {
        let el = EventLoop::new(LoopConfig::default()).unwrap();
        let mut rec = Recorder {
            ops: Vec::new(),
            output_len: 10,
            writable: true,
            peer: None,
            handle: el.handle(),
        };
        let id = ConnId(Token(7));
        let mut cx = Ctx::new(&mut rec, id);
        assert!(cx.write(b"ab"));
        assert!(cx.write(b"cd"));
        assert_eq!(cx.output_len(), 14);
        cx.pause_read();
        assert!(cx.write(b"e"));
        cx.shutdown_write();
        assert!(!cx.write(b"f"));
        assert!(cx.event_loop().is_none());
        assert!(cx.handle().is_some());
        let err = cx
            .connect(
                "127.0.0.1:1".parse().unwrap(),
                Duration::from_secs(1),
                Box::new(Nop),
            )
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        let shape: Vec<String> = rec
            .ops
            .iter()
            .map(|op| match op {
                Op::Write(d) => String::from_utf8_lossy(d).into_owned(),
                Op::PauseRead => "pause".into(),
                Op::ShutdownWrite => "shutdown".into(),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(shape, ["abcd", "pause", "e", "shutdown"]);
    }
}

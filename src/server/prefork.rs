//! Prefork (the notes' 进程池, nginx's master/worker model): a master process binds, then
//! forks `--threads` worker processes, each running one event loop (a multi-reactor loop in a
//! process of its own) on the listening socket it inherited.
//!
//! - **One shared listener.** Every worker accepts from the same socket, bound once by the
//!   master before forking (nginx's classic shape); the kernel wakes the workers waiting on it
//!   and one of them wins each connection (the others read EAGAIN). No SO_REUSEPORT: a worker
//!   that dies loses no queued connection, and its replacement inherits the same socket from
//!   the master, which keeps a copy (never watched) for that purpose. UDP, when the service
//!   has it, is the same: one socket, read by every worker.
//! - **The master only steers**, from a control loop where signals are events: SIGCHLD reaps
//!   (`waitpid(-1, WNOHANG)` until none: no zombie) and restarts a worker that died, at once
//!   the first time and with a doubling back-off (250 ms up to 5 s) while workers keep dying
//!   within a second of starting; SIGTERM/SIGINT close the master's copy of the sockets and
//!   pass SIGTERM on to every worker, which drains its connections; stragglers get SIGKILL after
//!   the drain timeout plus a second; SIGHUP is passed on (workers ignore it for now);
//!   SIGUSR2 prints one `stats` line summed over the workers.
//! - **Workers fork before the master starts any thread**, from a single-threaded process
//!   (`sys::process::fork_child` checks), never return into the master's code, and end with
//!   `_exit`. They ask for SIGTERM when the master dies, so they drain and go if it is killed.
//! - **Counters** live in each worker; each publishes them every 100 ms, on SIGUSR2 and at exit
//!   into its slot of a [`Board`] (an anonymous shared mapping made before forking). The master
//!   sums the slots, plus what dead workers had published.
//! - **`--max-conns` is divided**: a worker's limit is `max / workers` (at least 1), since a
//!   `ConnectionLimit` counts within one process. The server never holds more than `--max-conns`
//!   (unless it is below the worker count), but a worker at its share refuses even when another
//!   has room.

use std::cell::RefCell;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{bind_and_announce, ServerOptions, Service};
use crate::net::listener::ConnectionLimit;
use crate::reactor::{Engine, EventLoop, LoopConfig, LoopStats, Signal, TimerKey};
use crate::sys::process::{self, Child, Pid, SharedCounters};

/// How often a worker copies its counters to the board.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How long past the drain timeout the master waits before SIGKILL.
pub(super) const KILL_MARGIN: Duration = Duration::from_secs(1);
/// A worker that dies sooner than this after starting counts as a quick death (back-off).
const QUICK_DEATH: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a SIGUSR2 report waits for the workers to publish.
const REPORT_WAIT: Duration = Duration::from_secs(1);

/// The counters of LoopStats, in board order.
const COUNTERS: usize = 13;
/// A slot: a publish sequence number, then the counters.
const WIDTH: usize = COUNTERS + 1;

fn to_words(s: &LoopStats) -> [u64; COUNTERS] {
    [
        s.wakeups,
        s.events,
        s.accepted,
        s.open,
        s.closed,
        s.refused_emfile,
        s.refused_limit,
        s.idle_timeouts,
        s.linger_timeouts,
        s.connect_failures,
        s.bytes_in,
        s.bytes_out,
        s.datagrams,
    ]
}

fn from_words(engine: Engine, w: &[u64; COUNTERS]) -> LoopStats {
    let mut s = LoopStats::new(engine);
    [
        s.wakeups,
        s.events,
        s.accepted,
        s.open,
        s.closed,
        s.refused_emfile,
        s.refused_limit,
        s.idle_timeouts,
        s.linger_timeouts,
        s.connect_failures,
        s.bytes_in,
        s.bytes_out,
        s.datagrams,
    ] = *w;
    s
}

/// Counters that child processes publish for their parent: one slot per child, in memory
/// shared across `fork`. Only the child owning a slot writes it (the parent clears a slot
/// once its child is reaped, before it is given to another).
pub(super) struct Board {
    words: SharedCounters,
    engine: Engine,
}

impl Board {
    pub(super) fn new(slots: usize, engine: Engine) -> io::Result<Board> {
        Ok(Board {
            words: SharedCounters::new(slots * WIDTH)?,
            engine,
        })
    }

    /// Copies `stats` into `slot` and bumps its sequence number.
    pub(super) fn publish(&self, slot: usize, stats: &LoopStats) {
        for (i, v) in to_words(stats).into_iter().enumerate() {
            self.words
                .get(slot * WIDTH + 1 + i)
                .store(v, Ordering::Relaxed);
        }
        self.words.get(slot * WIDTH).fetch_add(1, Ordering::Release);
    }

    /// How many times `slot` was published (changes when its owner publishes).
    pub(super) fn seq(&self, slot: usize) -> u64 {
        self.words.get(slot * WIDTH).load(Ordering::Acquire)
    }

    pub(super) fn read(&self, slot: usize) -> LoopStats {
        let _ = self.seq(slot);
        let mut w = [0u64; COUNTERS];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.words.get(slot * WIDTH + 1 + i).load(Ordering::Relaxed);
        }
        from_words(self.engine, &w)
    }

    /// Takes the last counters of a child that has ended (its connections are gone, so what
    /// it still counted as open is counted closed) and empties the slot for the next one.
    pub(super) fn retire(&self, slot: usize) -> LoopStats {
        let mut s = self.read(slot);
        s.closed += s.open;
        s.open = 0;
        for i in 0..WIDTH {
            self.words.get(slot * WIDTH + i).store(0, Ordering::Relaxed);
        }
        s
    }

    /// The sum over every slot.
    pub(super) fn sum(&self) -> LoopStats {
        let mut total = LoopStats::new(self.engine);
        for slot in 0..self.words.len() / WIDTH {
            total.add(&self.read(slot));
        }
        total
    }
}

/// In a child: publishes now and every [`PUBLISH_EVERY`] while the loop runs.
pub(super) fn publish_periodically(el: &mut EventLoop, board: Rc<Board>, slot: usize) {
    board.publish(slot, el.stats());
    el.run_after(PUBLISH_EVERY, move |el| {
        publish_periodically(el, board, slot)
    });
}

/// In the parent, after SIGUSR2 was passed to the children: calls `done` once each slot in
/// `asked` (slot, sequence number before the signal) has published again, or after
/// [`REPORT_WAIT`] if some child does not answer.
pub(super) fn when_published(
    el: &mut EventLoop,
    board: Rc<Board>,
    asked: Vec<(usize, u64)>,
    done: Box<dyn FnOnce(&mut EventLoop)>,
) {
    let give_up = el.now_tick() + REPORT_WAIT.as_millis() as u64;
    poll_published(el, board, asked, give_up, done);
}

fn poll_published(
    el: &mut EventLoop,
    board: Rc<Board>,
    asked: Vec<(usize, u64)>,
    give_up: u64,
    done: Box<dyn FnOnce(&mut EventLoop)>,
) {
    if el.now_tick() >= give_up || asked.iter().all(|&(slot, seq)| board.seq(slot) != seq) {
        done(el);
        return;
    }
    el.run_after(Duration::from_millis(2), move |el| {
        poll_published(el, board, asked, give_up, done)
    });
}

/// The signal mask a child inherits blocks what its parent reads through a signalfd; a child
/// that may start processes of its own needs SIGCHLD back.
pub(super) fn unblock_sigchld() {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = set.thread_unblock();
}

struct Worker {
    pid: Option<Pid>,
    started: Instant,
    /// Deaths in a row, each within [`QUICK_DEATH`] of starting.
    quick_deaths: u32,
    restart: Option<TimerKey>,
}

struct Master {
    cfg: LoopConfig,
    service: Service,
    drain: Duration,
    /// The master's copies of the sockets, kept to hand to replacement workers.
    listener: Option<OwnedFd>,
    udp: Option<OwnedFd>,
    workers: Vec<Worker>,
    board: Rc<Board>,
    /// What dead workers had published.
    finished: LoopStats,
    stopping: bool,
}

type Shared = Rc<RefCell<Master>>;

impl Master {
    fn live(&self) -> impl Iterator<Item = (usize, Pid)> + '_ {
        self.workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.pid.map(|p| (i, p)))
    }

    fn total(&self, own: &LoopStats) -> LoopStats {
        let mut total = own.clone();
        total.add(&self.finished);
        total.add(&self.board.sum());
        total
    }

    /// Forks worker `slot`.
    fn spawn(&mut self, slot: usize) -> io::Result<()> {
        let Some(listener) = self.listener.as_ref().map(|l| l.as_raw_fd()) else {
            return Ok(()); // stopping
        };
        let udp = self.udp.as_ref().map(|u| u.as_raw_fd());
        let (cfg, service, board, drain) = (
            self.cfg.clone(),
            self.service.clone(),
            self.board.clone(),
            self.drain,
        );
        let pid = process::fork_child(move |cx| {
            worker_main(cx, slot, listener, udp, cfg, service, board, drain)
        })?;
        let w = &mut self.workers[slot];
        w.pid = Some(pid);
        w.started = Instant::now();
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn worker_main(
    cx: &mut Child,
    slot: usize,
    listener: RawFd,
    udp: Option<RawFd>,
    cfg: LoopConfig,
    service: Service,
    board: Rc<Board>,
    drain: Duration,
) -> i32 {
    if !cx.die_with_parent(Signal::SIGTERM) {
        return 0; // the master is gone already
    }
    unblock_sigchld();
    let listener = TcpListener::from(cx.take_inherited(listener));
    let udp = udp.map(|fd| UdpSocket::from(cx.take_inherited(fd)));
    match serve_worker(slot, listener, udp, cfg, &service, board, drain) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("keel: worker {}: {e}", std::process::id());
            1
        }
    }
}

fn serve_worker(
    slot: usize,
    listener: TcpListener,
    udp: Option<UdpSocket>,
    cfg: LoopConfig,
    service: &Service,
    board: Rc<Board>,
    drain: Duration,
) -> io::Result<()> {
    let mut el = EventLoop::new(cfg)?;
    let b = board.clone();
    el.add_signals(
        &[
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR2,
        ],
        move |el, sig| match sig {
            Signal::SIGUSR2 => b.publish(slot, el.stats()),
            Signal::SIGHUP => {} // configuration reload is not built yet; the master logs it
            _ => el.shutdown_gracefully(drain),
        },
    )?;
    el.add_listener(listener, service.factory.clone())?;
    if let (Some(sock), Some(udp)) = (udp, &service.udp) {
        el.add_udp(sock, udp())?;
    }
    publish_periodically(&mut el, board.clone(), slot);
    let result = el.run();
    board.publish(slot, el.stats());
    result
}

pub fn run(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    let workers = opts.threads;
    let mut control = EventLoop::new(opts.loop_config())?;
    // Signals are blocked here, before any fork: workers inherit the mask, so a SIGTERM that
    // reaches one before its own signalfd exists waits for it instead of killing it.
    let shared: Rc<RefCell<Option<Shared>>> = Rc::new(RefCell::new(None));
    let s = shared.clone();
    control.add_signals(
        &[
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGUSR2,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ],
        move |el, sig| {
            let Some(m) = s.borrow().clone() else { return };
            on_signal(el, &m, sig)
        },
    )?;
    let (listener, udp) = bind_and_announce(opts, service)?;

    let mut cfg = opts.loop_config();
    cfg.connection_limit = opts
        .max_connections
        .map(|max| ConnectionLimit::new((max / workers).max(1)));
    let board = Rc::new(Board::new(workers, opts.engine)?);
    let m: Shared = Rc::new(RefCell::new(Master {
        cfg,
        service: service.clone(),
        drain: opts.drain_timeout,
        listener: Some(listener.into()),
        udp: udp.map(OwnedFd::from),
        workers: (0..workers)
            .map(|_| Worker {
                pid: None,
                started: Instant::now(),
                quick_deaths: 0,
                restart: None,
            })
            .collect(),
        board,
        finished: LoopStats::new(opts.engine),
        stopping: false,
    }));
    *shared.borrow_mut() = Some(m.clone());

    for slot in 0..workers {
        if let Err(e) = m.borrow_mut().spawn(slot) {
            // Take down the ones already started before giving up.
            let mm = m.borrow();
            for (_, pid) in mm.live() {
                process::send_signal(pid, Signal::SIGKILL);
                process::reap_blocking(pid);
            }
            return Err(io::Error::new(
                e.kind(),
                format!("cannot start worker: {e}"),
            ));
        }
    }

    control.run()?;

    // Normally every worker has been reaped by now; make sure (the loop may have given up).
    let mut mm = m.borrow_mut();
    let live: Vec<(usize, Pid)> = mm.live().collect();
    for (slot, pid) in live {
        process::send_signal(pid, Signal::SIGKILL);
        process::reap_blocking(pid);
        let s = mm.board.retire(slot);
        mm.finished.add(&s);
        mm.workers[slot].pid = None;
    }
    eprintln!("{}", mm.total(control.stats()));
    Ok(())
}

fn on_signal(el: &mut EventLoop, m: &Shared, sig: Signal) {
    match sig {
        Signal::SIGCHLD => reap_workers(el, m),
        Signal::SIGUSR2 => {
            let mm = m.borrow();
            // Sequence numbers first, then the signals: any publish seen after this (the
            // answer, or a periodic one) was made after the master got SIGUSR2.
            let asked: Vec<(usize, u64)> = mm
                .live()
                .map(|(slot, pid)| (slot, pid, mm.board.seq(slot)))
                .filter(|&(_, pid, _)| process::send_signal(pid, Signal::SIGUSR2))
                .map(|(slot, _, seq)| (slot, seq))
                .collect();
            let board = mm.board.clone();
            drop(mm);
            let m = m.clone();
            when_published(
                el,
                board,
                asked,
                Box::new(move |el| eprintln!("{}", m.borrow().total(el.stats()))),
            );
        }
        Signal::SIGHUP => {
            let mm = m.borrow();
            for (_, pid) in mm.live() {
                process::send_signal(pid, Signal::SIGHUP);
            }
            eprintln!("keel: SIGHUP passed to the workers (no configuration to reload)");
        }
        _ => begin_stop(el, m),
    }
}

fn reap_workers(el: &mut EventLoop, m: &Shared) {
    while let Some((pid, how)) = process::reap_one() {
        let mut mm = m.borrow_mut();
        let Some(slot) = mm.workers.iter().position(|w| w.pid == Some(pid)) else {
            continue; // not a worker (a process some handler started)
        };
        let s = mm.board.retire(slot);
        mm.finished.add(&s);
        let stopping = mm.stopping;
        let w = &mut mm.workers[slot];
        w.pid = None;
        if stopping {
            continue;
        }
        w.quick_deaths = if w.started.elapsed() < QUICK_DEATH {
            w.quick_deaths + 1
        } else {
            1
        };
        let delay = backoff(w.quick_deaths);
        if delay.is_zero() {
            eprintln!("keel: worker {pid} exited ({how}); restarting");
            drop(mm);
            restart(el, m, slot);
        } else {
            eprintln!(
                "keel: worker {pid} exited ({how}); restarting in {} ms",
                delay.as_millis()
            );
            drop(mm);
            schedule_restart(el, m, slot, delay);
        }
    }
    let mm = m.borrow();
    if mm.stopping && mm.live().next().is_none() {
        el.stop();
    }
}

/// Delay before restarting a worker after `quick_deaths` quick deaths in a row: none for the
/// first, then 250 ms doubling up to 5 s.
fn backoff(quick_deaths: u32) -> Duration {
    if quick_deaths <= 1 {
        return Duration::ZERO;
    }
    let shift = (quick_deaths - 2).min(16);
    (FIRST_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

fn schedule_restart(el: &mut EventLoop, m: &Shared, slot: usize, delay: Duration) {
    let m2 = m.clone();
    let key = el.run_after(delay, move |el| {
        m2.borrow_mut().workers[slot].restart = None;
        restart(el, &m2, slot);
    });
    m.borrow_mut().workers[slot].restart = Some(key);
}

fn restart(el: &mut EventLoop, m: &Shared, slot: usize) {
    let mut mm = m.borrow_mut();
    if mm.stopping || mm.workers[slot].pid.is_some() {
        return;
    }
    if let Err(e) = mm.spawn(slot) {
        let w = &mut mm.workers[slot];
        w.quick_deaths += 1;
        let delay = backoff(w.quick_deaths).max(FIRST_BACKOFF);
        eprintln!(
            "keel: cannot restart worker: {e}; trying again in {} ms",
            delay.as_millis()
        );
        drop(mm);
        schedule_restart(el, m, slot, delay);
    }
}

fn begin_stop(el: &mut EventLoop, m: &Shared) {
    let mut mm = m.borrow_mut();
    if mm.stopping {
        return;
    }
    mm.stopping = true;
    // Close the master's copies: once the workers close theirs, the port refuses connections.
    mm.listener = None;
    mm.udp = None;
    let timers: Vec<TimerKey> = mm
        .workers
        .iter_mut()
        .filter_map(|w| w.restart.take())
        .collect();
    for key in timers {
        el.cancel_timer(key);
    }
    let live: Vec<(usize, Pid)> = mm.live().collect();
    for &(_, pid) in &live {
        process::send_signal(pid, Signal::SIGTERM);
    }
    if live.is_empty() {
        el.stop();
        return;
    }
    let m2 = m.clone();
    el.run_after(mm.drain + KILL_MARGIN, move |el| {
        let stragglers: Vec<Pid> = m2.borrow().live().map(|(_, p)| p).collect();
        for pid in stragglers {
            eprintln!("keel: worker {pid} still running after the drain timeout; killing it");
            process::send_signal(pid, Signal::SIGKILL);
        }
        // SIGCHLD ends the loop once they are reaped; this is the backstop.
        el.run_after(KILL_MARGIN, |el| el.stop());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(1));
        assert_eq!(backoff(7), Duration::from_secs(5));
        assert_eq!(backoff(100), Duration::from_secs(5));
    }

    #[test]
    fn board_round_trips_and_retires() {
        let board = Board::new(2, Engine::default()).unwrap();
        let mut s = LoopStats::new(Engine::default());
        s.accepted = 3;
        s.open = 2;
        s.closed = 1;
        s.bytes_in = 100;
        s.datagrams = 7;
        assert_eq!(board.seq(1), 0);
        board.publish(1, &s);
        assert_eq!(board.seq(1), 1);
        let r = board.read(1);
        assert_eq!(to_words(&r), to_words(&s));
        assert_eq!(board.sum().bytes_in, 100);
        let gone = board.retire(1);
        assert_eq!((gone.open, gone.closed), (0, 3));
        assert_eq!(to_words(&board.read(1)), [0; COUNTERS]);
    }
}

//! The master side of the forking models ([`prefork`](super::prefork) and
//! [`process_per_conn`](super::process_per_conn)), and the part of a child's life they share.
//!
//! - **Control loop**: [`run`] builds the master's loop, with SIGINT, SIGTERM, SIGUSR2, SIGHUP
//!   and SIGCHLD as events (blocked before any fork, so children inherit the mask and a SIGTERM
//!   that reaches one before its own signalfd exists waits for it instead of killing it), binds,
//!   lets the model set up its [`Master`], runs, and at the end kills and reaps whatever child
//!   is left and prints the `stats` line.
//! - **Child table**: [`Children`], one slot per child, each with its slot of a [`Board`].
//! - **Signals**: SIGCHLD reaps (the model's [`Master::reap`], through
//!   [`Children::reap_next`]) and ends the loop once stopping and no child is left; SIGUSR2 is
//!   passed to the children and the `stats` line waits (up to a second) for their answers;
//!   SIGHUP is the model's; SIGTERM/SIGINT stop: the model closes its sockets, the children get
//!   SIGTERM, and those still running after the drain timeout plus a second get SIGKILL.
//! - **Children**: [`child_main`] and [`serve_child`] run a child's loop, which drains on
//!   SIGTERM/SIGINT and publishes its counters into its slot.

use std::cell::RefCell;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{bind_and_announce, ServerOptions, Service};
use crate::reactor::{Engine, EventLoop, LoopConfig, LoopStats, Signal};
use crate::sys::process::{self, Child, Exit, Pid, SharedCounters};

/// How often a busy child copies its counters to the board.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// The longest a child with nothing new to publish waits to look again: an idle worker
/// wakes once a second for it, not ten times (200 prefork workers made 4,000 wake-ups a
/// second doing nothing). Counters that change while it waits are on the board within this.
const PUBLISH_IDLE_MAX: Duration = Duration::from_secs(1);
/// How long past the drain timeout the master waits before SIGKILL.
const KILL_MARGIN: Duration = Duration::from_secs(1);
/// How long a SIGUSR2 report waits for the children to publish.
const REPORT_WAIT: Duration = Duration::from_secs(1);

/// The counters of LoopStats, in board order.
const COUNTERS: usize = crate::reactor::stats::COUNTERS;
use crate::reactor::stats::COUNTER_NAMES;
use crate::sys::process::monotonic_ns;

/// A slot: a publish sequence number, then the counters.
const WIDTH: usize = COUNTERS + 1;

fn to_words(s: &LoopStats) -> [u64; COUNTERS] {
    s.counters()
}

fn from_words(engine: Engine, w: &[u64; COUNTERS]) -> LoopStats {
    LoopStats::from_counters(engine, *w)
}

/// Counters that child processes publish for their parent: one slot per child, in memory
/// shared across `fork`. Only the child owning a slot writes it (the parent clears a slot
/// once its child is reaped, before it is given to another).
pub(super) struct Board {
    words: SharedCounters,
    engine: Engine,
}

impl Board {
    fn new(slots: usize, engine: Engine) -> io::Result<Board> {
        Ok(Board {
            // The slots, then one word: when a stop's drain ends (see `set_drain_due`).
            words: SharedCounters::new(slots * WIDTH + 1)?,
            engine,
        })
    }

    fn drain_word(&self) -> &AtomicU64 {
        self.words.get(self.words.len() - 1)
    }

    /// Written by the master as a stop begins, before it signals the children: the drain
    /// ends `drain` from now (CLOCK_MONOTONIC, one clock for every process), not from
    /// whenever a child busy in a handler gets to read its SIGTERM. The master kills what is
    /// left a little after that same instant.
    fn set_drain_due(&self, drain: Duration) {
        let drain_ns = u64::try_from(drain.as_nanos()).unwrap_or(u64::MAX);
        let due = monotonic_ns().saturating_add(drain_ns);
        self.drain_word().store(due, Ordering::Release);
    }

    /// What is left of the drain the master set, or `fallback` if it set none.
    fn drain_left(&self, fallback: Duration) -> Duration {
        match self.drain_word().load(Ordering::Acquire) {
            0 => fallback,
            due => Duration::from_nanos(due.saturating_sub(monotonic_ns())),
        }
    }

    /// Copies `stats` into `slot` and bumps its sequence number.
    fn publish(&self, slot: usize, stats: &LoopStats) {
        for (i, v) in to_words(stats).into_iter().enumerate() {
            self.words
                .get(slot * WIDTH + 1 + i)
                .store(v, Ordering::Relaxed);
        }
        self.words.get(slot * WIDTH).fetch_add(1, Ordering::Release);
    }

    /// How many times `slot` was published (changes when its owner publishes).
    fn seq(&self, slot: usize) -> u64 {
        self.words.get(slot * WIDTH).load(Ordering::Acquire)
    }

    fn read(&self, slot: usize) -> LoopStats {
        let _ = self.seq(slot);
        let mut w = [0u64; COUNTERS];
        for (i, v) in w.iter_mut().enumerate() {
            *v = self.words.get(slot * WIDTH + 1 + i).load(Ordering::Relaxed);
        }
        from_words(self.engine, &w)
    }

    /// Takes the last counters of a child that has ended (its connections are gone, so what
    /// it still counted as open is counted closed) and empties the slot for the next one.
    fn retire(&self, slot: usize) -> LoopStats {
        let mut s = self.read(slot);
        s.closed += s.open;
        s.open = 0;
        for i in 0..WIDTH {
            self.words.get(slot * WIDTH + i).store(0, Ordering::Relaxed);
        }
        s
    }

    /// Each slot a child has published into (one per live or past child process).
    fn published(&self) -> Vec<LoopStats> {
        (0..self.words.len() / WIDTH)
            .filter(|&slot| self.seq(slot) > 0)
            .map(|slot| self.read(slot))
            .collect()
    }

    /// The sum over every slot.
    fn sum(&self) -> LoopStats {
        let mut total = LoopStats::new(self.engine);
        for slot in 0..self.words.len() / WIDTH {
            total.add(&self.read(slot));
        }
        total
    }
}

/// The master's table of children: one slot per child that may run at once, each with its
/// slot of the board.
pub(super) struct Children {
    pids: Vec<Option<Pid>>,
    pub(super) board: Arc<Board>,
    /// What reaped children had published (shared with the admin pages).
    finished: Arc<Mutex<LoopStats>>,
    /// How long a child has to drain its connections when told to stop.
    pub(super) drain: Duration,
    pub(super) stopping: bool,
    /// What a child is called in messages ("worker").
    what: &'static str,
}

impl Children {
    pub(super) fn new(
        slots: usize,
        opts: &ServerOptions,
        what: &'static str,
    ) -> io::Result<Children> {
        Ok(Children {
            pids: vec![None; slots],
            board: Arc::new(Board::new(slots, opts.engine)?),
            finished: Arc::new(Mutex::new(LoopStats::new(opts.engine))),
            drain: opts.drain_timeout,
            stopping: false,
            what,
        })
    }

    pub(super) fn live(&self) -> impl Iterator<Item = (usize, Pid)> + '_ {
        self.pids
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|p| (i, p)))
    }

    pub(super) fn pid(&self, slot: usize) -> Option<Pid> {
        self.pids[slot]
    }

    pub(super) fn free_slot(&self) -> Option<usize> {
        self.pids.iter().position(Option::is_none)
    }

    /// Records `pid` as the child in `slot`.
    pub(super) fn started(&mut self, slot: usize, pid: Pid) {
        self.pids[slot] = Some(pid);
    }

    /// Reaps one ended child of this table (`waitpid(-1, WNOHANG)`, passing over processes
    /// some handler started), retiring its slot; None once none is left to reap.
    pub(super) fn reap_next(&mut self) -> Option<(usize, Pid, Exit)> {
        while let Some((pid, how)) = process::reap_one() {
            if let Some(slot) = self.pids.iter().position(|c| *c == Some(pid)) {
                self.retire(slot);
                return Some((slot, pid, how));
            }
        }
        None
    }

    fn retire(&mut self, slot: usize) {
        let s = self.board.retire(slot);
        lock(&self.finished).add(&s);
        self.pids[slot] = None;
    }

    /// Sends `sig` to every live child; returns how many there are.
    pub(super) fn signal_all(&self, sig: Signal) -> usize {
        let live: Vec<Pid> = self.live().map(|(_, p)| p).collect();
        for &pid in &live {
            process::send_signal(pid, sig);
        }
        live.len()
    }

    /// SIGKILLs and reaps every live child.
    pub(super) fn kill_all(&mut self) {
        let live: Vec<(usize, Pid)> = self.live().collect();
        for (slot, pid) in live {
            process::send_signal(pid, Signal::SIGKILL);
            process::reap_blocking(pid);
            self.retire(slot);
        }
    }

    /// `own` plus what the children published, live and reaped.
    pub(super) fn total(&self, own: &LoopStats) -> LoopStats {
        let mut total = own.clone();
        total.add(&lock(&self.finished));
        total.add(&self.board.sum());
        total
    }
}

pub(super) type Shared<M> = Rc<RefCell<M>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Children {
    /// The figures for the admin pages, readable from any thread: the children's board
    /// (each publishes every 100 ms) and what ended children left.
    pub(super) fn stats_source(&self) -> super::admin::StatsSource {
        let (board, finished) = (self.board.clone(), self.finished.clone());
        Arc::new(move |own: Option<&LoopStats>| {
            let mut total = own.cloned().unwrap_or_else(|| LoopStats::new(board.engine));
            total.add(&lock(&finished));
            total.add(&board.sum());
            (total, board.published())
        })
    }
}

/// What a forking model adds to the shared control loop.
pub(super) trait Master: Sized + 'static {
    fn children(&self) -> &Children;
    fn children_mut(&mut self) -> &mut Children;
    /// On SIGCHLD: reaps the children that ended, through [`Children::reap_next`].
    fn reap(el: &mut EventLoop, m: &Shared<Self>);
    /// On SIGHUP.
    fn hang_up(&self);
    /// Passes a signal on to the children (SIGUSR1: they reopen their own log files).
    fn pass_on(&self, sig: Signal) {
        self.children().signal_all(sig);
    }
    /// On the first SIGTERM/SIGINT, before the children are told: stop taking work.
    fn close(&mut self, el: &mut EventLoop);
    /// The `stats` line: the control loop's own counters and the children's.
    fn total(&self, own: &LoopStats) -> LoopStats {
        self.children().total(own)
    }
}

/// Runs a forking model's master: `start` gets the control loop and the bound sockets, and
/// returns the master once its first children (if any) are started.
pub(super) fn run<M: Master>(
    opts: &ServerOptions,
    service: &Service,
    start: impl FnOnce(&mut EventLoop, TcpListener, Option<UdpSocket>) -> io::Result<Shared<M>>,
) -> io::Result<()> {
    let mut control = EventLoop::new(opts.loop_config(service))?;
    // Signals are blocked here, before any fork: children inherit the mask, so a SIGTERM that
    // reaches one before its own signalfd exists waits for it instead of killing it.
    let shared: Rc<RefCell<Option<Shared<M>>>> = Rc::new(RefCell::new(None));
    let s = shared.clone();
    control.add_signals(
        &[
            super::control::SERVER_SIGNALS.as_slice(),
            &[Signal::SIGCHLD],
        ]
        .concat(),
        move |el, sig| {
            let Some(m) = s.borrow().clone() else { return };
            on_signal(el, &m, sig)
        },
    )?;
    let (listener, udp) = bind_and_announce(opts, service)?;
    let m = start(&mut control, listener, udp)?;
    *shared.borrow_mut() = Some(m.clone());
    let source = m.borrow().children().stats_source();
    super::admin::attach(&mut control, opts.model, source)?;

    super::started();
    control.run()?;

    // Normally every child has been reaped by now; make sure (the loop may have given up).
    let mut mm = m.borrow_mut();
    mm.children_mut().kill_all();
    super::report_stats(&mm.total(control.stats()));
    Ok(())
}

fn on_signal<M: Master>(el: &mut EventLoop, m: &Shared<M>, sig: Signal) {
    match sig {
        Signal::SIGCHLD => {
            M::reap(el, m);
            let mm = m.borrow();
            if mm.children().stopping && mm.children().live().next().is_none() {
                el.stop();
            }
        }
        Signal::SIGUSR2 => report(el, m),
        // A stopping master neither reloads nor passes it on (see `server::stopping`).
        Signal::SIGHUP if m.borrow().children().stopping => {
            tracing::info!("SIGHUP while stopping: ignored");
        }
        Signal::SIGHUP => m.borrow().hang_up(),
        Signal::SIGUSR1 => {
            crate::ops::log::reopen_all();
            m.borrow().pass_on(Signal::SIGUSR1);
        }
        _ => begin_stop(el, m, sig),
    }
}

/// SIGUSR2: passes it to the children and prints the `stats` line once they have answered.
fn report<M: Master>(el: &mut EventLoop, m: &Shared<M>) {
    let mm = m.borrow();
    let children = mm.children();
    // Sequence numbers first, then the signals: any publish seen after this (the answer, or
    // a periodic one) was made after the master got SIGUSR2.
    let asked: Vec<(usize, u64)> = children
        .live()
        .map(|(slot, pid)| (slot, pid, children.board.seq(slot)))
        .filter(|&(_, pid, _)| process::send_signal(pid, Signal::SIGUSR2))
        .map(|(slot, _, seq)| (slot, seq))
        .collect();
    let board = children.board.clone();
    drop(mm);
    let m = m.clone();
    when_published(
        el,
        board,
        asked,
        Box::new(move |el| super::report_stats(&m.borrow().total(el.stats()))),
    );
}

/// Calls `done` once each slot in `asked` (slot, sequence number before the signal) has
/// published again, or after [`REPORT_WAIT`] if some child does not answer.
fn when_published(
    el: &mut EventLoop,
    board: Arc<Board>,
    asked: Vec<(usize, u64)>,
    done: Box<dyn FnOnce(&mut EventLoop)>,
) {
    let give_up = el.now_tick() + REPORT_WAIT.as_millis() as u64;
    poll_published(el, board, asked, give_up, done);
}

fn poll_published(
    el: &mut EventLoop,
    board: Arc<Board>,
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

/// SIGTERM/SIGINT: the model closes its sockets, the children get SIGTERM and drain; those
/// still running after the drain timeout plus [`KILL_MARGIN`] get SIGKILL.
/// A second one while they drain is the operator insisting (Ctrl-C twice): the loop ends at
/// once and [`run`] kills the children still there.
fn begin_stop<M: Master>(el: &mut EventLoop, m: &Shared<M>, sig: Signal) {
    let mut mm = m.borrow_mut();
    if mm.children().stopping {
        tracing::warn!("{sig:?} again while stopping: ending every child now");
        el.stop();
        return;
    }
    mm.children_mut().stopping = true;
    super::mark_stopping();
    let (what, drain) = (mm.children().what, mm.children().drain);
    tracing::info!("{sig:?}: stopping; every {what} drains its connections for up to {drain:?}");
    crate::ops::notify::stopping();
    mm.close(el);
    mm.children().board.set_drain_due(drain);
    if mm.children().signal_all(Signal::SIGTERM) == 0 {
        el.stop();
        return;
    }
    let m2 = m.clone();
    el.run_after(mm.children().drain.saturating_add(KILL_MARGIN), move |el| {
        let stragglers: Vec<Pid> = m2.borrow().children().live().map(|(_, p)| p).collect();
        for pid in stragglers {
            tracing::warn!("{what} {pid} still running after the drain timeout; killing it");
            process::send_signal(pid, Signal::SIGKILL);
        }
        // SIGCHLD ends the loop once they are reaped; this is the backstop.
        el.run_after(KILL_MARGIN, |el| el.stop());
    });
}

/// [`process::fork_child`] with the log writers' threads out of the way: they are ended
/// before the fork, so the process has the single thread a safe fork needs, and started again
/// after it: here in the parent, and in the child by [`child_main`] (`log::after_fork`).
///
/// The child may take over `lend` (the master's own copy of a listener) and the fds of the
/// master's loop.
pub(super) fn fork(
    parent: &EventLoop,
    lend: &[BorrowedFd<'_>],
    child: impl FnOnce(&mut Child) -> i32 + 'static,
) -> io::Result<Pid> {
    // The master's loop is none of the child's business: its epoll, waker and signalfd, the
    // admin listener and connections. The child closes them before anything else.
    let mut inherited = parent.fds();
    let fds: Vec<RawFd> = inherited.iter().map(|fd| fd.as_raw_fd()).collect();
    inherited.extend_from_slice(lend);
    let parked = crate::ops::log::park_for_fork();
    let forked = process::fork_child(&inherited, move |cx| {
        cx.close_all_inherited(&fds);
        super::forget_waiting_command();
        child(cx)
    });
    crate::ops::log::unpark(parked);
    forked
}

/// In a child, right after the fork: asks for SIGTERM when the master dies (and exits at once
/// if it already has), takes SIGCHLD back (the mask it inherited blocks what the master reads
/// through a signalfd, and a child may start processes of its own), then runs `serve` and
/// turns its result into an exit status, naming the child as `what` on error.
pub(super) fn child_main(
    cx: &mut Child,
    what: &str,
    serve: impl FnOnce(&mut Child) -> io::Result<()>,
) -> i32 {
    if !cx.die_with_parent(Signal::SIGTERM) {
        return 0; // the master is gone already
    }
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = set.thread_unblock();
    crate::ops::log::after_fork();
    let result = serve(cx);
    crate::ops::log::flush_all(); // `_exit` follows: no destructor would write the rest
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{what} {}: {e}", std::process::id());
            1
        }
    }
}

/// In a child: runs a loop (given its work by `setup`) that drains on SIGTERM/SIGINT, reloads
/// quietly on SIGHUP (the master reloads too and logs the outcome once), and publishes its
/// counters into `slot` now, every [`PUBLISH_EVERY`], on SIGUSR2 and at exit.
pub(super) fn serve_child(
    cfg: LoopConfig,
    board: Arc<Board>,
    slot: usize,
    drain: Duration,
    setup: impl FnOnce(&mut EventLoop) -> io::Result<()>,
) -> io::Result<()> {
    let mut el = EventLoop::new(cfg)?;
    let b = board.clone();
    el.add_signals(&super::control::SERVER_SIGNALS, move |el, sig| match sig {
        Signal::SIGUSR2 => b.publish(slot, el.stats()),
        Signal::SIGHUP => {
            // The master reloads too and says how it went.
            super::reload::reload_in_worker();
        }
        Signal::SIGUSR1 => crate::ops::log::reopen_all(),
        _ => {
            super::mark_stopping();
            el.shutdown_gracefully(b.drain_left(drain));
        }
    })?;
    setup(&mut el)?;
    publish_periodically(&mut el, board.clone(), slot);
    let result = el.run();
    board.publish(slot, el.stats());
    result
}

/// In a child: publishes now and every [`PUBLISH_EVERY`] while the loop runs, backing off to
/// [`PUBLISH_IDLE_MAX`] while its counters stay as they were.
fn publish_periodically(el: &mut EventLoop, board: Arc<Board>, slot: usize) {
    board.publish(slot, el.stats());
    let last = to_words(el.stats());
    el.run_after(PUBLISH_EVERY, move |el| {
        publish_when_changed(el, board, slot, last, PUBLISH_EVERY)
    });
}

fn publish_when_changed(
    el: &mut EventLoop,
    board: Arc<Board>,
    slot: usize,
    last: [u64; COUNTERS],
    waited: Duration,
) {
    let now = to_words(el.stats());
    // Every wake-up of the loop counts in `wakeups`, this timer's own included: what changes
    // besides it is what the loop did.
    let wakeups = COUNTER_NAMES.iter().position(|n| *n == "wakeups");
    let changed = now
        .iter()
        .zip(&last)
        .enumerate()
        .any(|(i, (a, b))| Some(i) != wakeups && a != b);
    let next = if changed {
        board.publish(slot, el.stats());
        PUBLISH_EVERY
    } else {
        (waited * 2).min(PUBLISH_IDLE_MAX)
    };
    let last = if changed { now } else { last };
    el.run_after(next, move |el| {
        publish_when_changed(el, board, slot, last, next)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! What the threaded models share: the main thread's control loop, where signals arrive as
//! ordinary events, and the [`Fleet`] of worker loops it steers.
//!
//! Signals are blocked in the main thread before any worker thread exists (threads inherit the
//! mask), so SIGTERM reaches only the control loop's signalfd. The control loop then tells every
//! worker loop, through its task queue, to drain: no thread ever touches another's connections.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::reactor::{EventLoop, LoopConfig, LoopHandle, LoopStats, Signal};

/// The worker loops of one server, each on its own thread.
pub struct Fleet {
    state: Mutex<FleetState>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Duplicates of listening sockets that worker loops own: at SIGTERM the control loop shuts
    /// them itself, so the port stops accepting at once even while a worker is busy in a long
    /// batch and has not yet run its own drain task.
    listeners: Mutex<Vec<OwnedFd>>,
}

/// How long a snapshot waits for the loops' own answers before it takes what they last
/// published instead.
const ANSWER_WAIT: Duration = Duration::from_millis(50);

#[derive(Default)]
struct FleetState {
    next_id: u64,
    /// Live loops, by a unique id.
    loops: Vec<LiveLoop>,
    /// Counters of loops that have ended (so totals survive per-connection threads).
    finished: Option<LoopStats>,
    /// While a [`Fleet::total`] is collecting: loops that ended meanwhile, so a loop that ends
    /// between being asked and answering is neither lost nor counted twice.
    watchers: usize,
    recent: Vec<(u64, LoopStats)>,
}

#[derive(Clone)]
struct LiveLoop {
    id: u64,
    handle: LoopHandle,
    /// A snapshot's question is still in the loop's queue, unanswered (the loop is stuck in
    /// a handler): the next snapshot neither waits for it nor asks again, so that scrapes
    /// one after another do not each hold the control loop [`ANSWER_WAIT`] for it.
    asked: Arc<AtomicBool>,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        Arc::new(Fleet {
            state: Mutex::new(FleetState::default()),
            threads: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a thread running a new loop. `setup` adds the loop's sources (on the new thread,
    /// since a loop never leaves its thread); its error, if any, is returned here. The loop
    /// runs until stopped or drained, and its counters are kept when it ends.
    pub fn spawn_loop(
        self: &Arc<Self>,
        name: String,
        cfg: LoopConfig,
        exit_when_empty: bool,
        setup: impl FnOnce(&mut EventLoop) -> io::Result<()> + Send + 'static,
    ) -> io::Result<LoopHandle> {
        let (tx, rx) = mpsc::channel();
        let fleet = self.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut el =
                    match EventLoop::new(cfg).and_then(|mut el| setup(&mut el).map(|()| el)) {
                        Ok(el) => el,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                el.exit_when_empty(exit_when_empty);
                let slot = fleet.register(el.handle());
                let _ = tx.send(Ok(el.handle()));
                if let Err(e) = el.run() {
                    tracing::error!("loop failed: {e}");
                }
                fleet.retire(slot, el.stats());
            });
        let thread = thread.map_err(|e| super::thread_not_started(&name, e))?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("loop thread died during set-up"))??;
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
        Ok(handle)
    }

    fn register(&self, handle: LoopHandle) -> u64 {
        let mut st = self.state();
        st.next_id += 1;
        let id = st.next_id;
        st.loops.push(LiveLoop {
            id,
            handle,
            asked: Arc::new(AtomicBool::new(false)),
        });
        id
    }

    fn retire(&self, id: u64, stats: &LoopStats) {
        let mut st = self.state();
        st.loops.retain(|l| l.id != id);
        match st.finished.as_mut() {
            Some(total) => total.add(stats),
            None => st.finished = Some(stats.clone()),
        }
        if st.watchers > 0 {
            st.recent.push((id, stats.clone()));
        }
    }

    /// How many loops are running (or just ending).
    pub fn live(&self) -> usize {
        self.state().loops.len()
    }

    /// Live loop handles.
    pub fn handles(&self) -> Vec<LoopHandle> {
        self.state()
            .loops
            .iter()
            .map(|l| l.handle.clone())
            .collect()
    }

    /// Keeps a duplicate of a listener a worker loop owns, to shut it at SIGTERM.
    pub fn watch_listener(&self, listener: &TcpListener) -> io::Result<()> {
        let dup = listener.as_fd().try_clone_to_owned()?;
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dup);
        Ok(())
    }

    /// After a reload moved the server: watch `new` instead, closing our copies of the old
    /// listening sockets (a copy kept open would keep the old port accepting into a queue no
    /// loop reads).
    /// The port the watched listeners are bound to, if any.
    pub fn listening_port(&self) -> Option<u16> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let addr = rustix::net::getsockname(listeners.first()?).ok()?;
        std::net::SocketAddr::try_from(addr).ok().map(|a| a.port())
    }

    pub fn replace_listeners(&self, new: Vec<OwnedFd>) {
        *self.listeners.lock().unwrap_or_else(|e| e.into_inner()) = new;
    }

    /// Stops every watched listener from accepting: `shutdown` on a listening socket takes it
    /// out of the LISTEN state for every descriptor that refers to it (new connections are
    /// refused), and its owner closes its own fd when it drains.
    pub fn stop_listening(&self) {
        for fd in std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Both);
        }
    }

    /// Runs `task` on every live loop.
    pub fn broadcast(&self, task: impl Fn(&mut EventLoop) + Clone + Send + 'static) {
        for h in self.handles() {
            let t = task.clone();
            h.post(move |el| t(el));
        }
    }

    /// `own` plus the counters of every loop, live (asked through their queues) or ended.
    pub fn total(&self, own: &LoopStats) -> LoopStats {
        self.snapshot(own).0
    }

    /// The total, and each live loop's counters as it answered (for per-loop series).
    pub fn snapshot(&self, own: &LoopStats) -> (LoopStats, Vec<LoopStats>) {
        let (live, base) = {
            let mut st = self.state();
            st.watchers += 1;
            (st.loops.clone(), st.finished.clone())
        };
        let (tx, rx) = mpsc::channel();
        let mut awaited = 0;
        for l in &live {
            if l.asked.swap(true, Ordering::AcqRel) {
                continue; // the last question is still waiting in that loop's queue
            }
            awaited += 1;
            let (tx, id, asked) = (tx.clone(), l.id, l.asked.clone());
            l.handle.post(move |el| {
                asked.store(false, Ordering::Release);
                let _ = tx.send((id, el.stats().clone()));
            });
        }
        drop(tx); // a task dropped unrun (its loop ended) then shows as a disconnect
                  // The caller is a loop (the control loop, serving /metrics or a signal): it waits a
                  // moment for fresh answers, never long. A loop held up in a handler (a blocking one
                  // under thread-per-connection, say) is counted as it last published.
        let mut answers: HashMap<u64, LoopStats> = HashMap::with_capacity(live.len());
        let deadline = Instant::now() + ANSWER_WAIT;
        while answers.len() < awaited {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((id, stats)) => {
                    answers.insert(id, stats);
                }
                Err(_) => break,
            }
        }
        let mut st = self.state();
        // Each loop silent: its final counters if it ended meanwhile, else what it last
        // published.
        for l in &live {
            if answers.contains_key(&l.id) {
                continue;
            }
            let ended = st
                .recent
                .iter()
                .find(|(i, _)| *i == l.id)
                .map(|(_, s)| s.clone());
            if let Some(s) = ended.or_else(|| l.handle.published_stats()) {
                answers.insert(l.id, s);
            }
        }
        let mut total = own.clone();
        if let Some(b) = &base {
            total.add(b);
        }
        for s in answers.values() {
            total.add(s);
        }
        st.watchers -= 1;
        if st.watchers == 0 {
            st.recent.clear();
        }
        let mut per_loop: Vec<(u64, LoopStats)> = answers.into_iter().collect();
        per_loop.sort_by_key(|(id, _)| *id);
        (total, per_loop.into_iter().map(|(_, s)| s).collect())
    }

    /// Waits for every loop thread to end.
    pub fn join(&self) {
        loop {
            let batch: Vec<JoinHandle<()>> =
                std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
            if batch.is_empty() {
                return;
            }
            for t in batch {
                let _ = t.join();
            }
        }
    }
}

/// The signals every model's control loop takes as events: stop (INT, TERM, and QUIT, which
/// is nginx's graceful stop and would otherwise dump core), report (USR2), reload (HUP),
/// reopen log files (USR1, for logrotate). Models with child processes add SIGCHLD.
pub const SERVER_SIGNALS: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGQUIT,
    Signal::SIGUSR2,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];

/// Blocks the server signals (and SIGCHLD) in the calling thread, so that every thread it
/// starts afterwards inherits the mask: a signal must reach the control loop's signalfd, not
/// a helper thread (a log writer) whose default action for SIGUSR1 or SIGHUP is to kill the
/// process. Call first thing in `main`, before anything starts a thread.
pub fn block_server_signals() -> io::Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    for sig in SERVER_SIGNALS.iter().chain([&Signal::SIGCHLD]) {
        set.add(*sig);
    }
    set.thread_block().map_err(io::Error::from)
}

/// Makes `el` (the main thread's loop) the server's control loop: SIGINT/SIGTERM drain every
/// loop of `fleet` and this one, SIGUSR2 prints the summed `stats` line, SIGHUP reloads the
/// configuration, SIGUSR1 reopens log files. Call before spawning threads.
pub fn install_signals(el: &mut EventLoop, fleet: Arc<Fleet>, drain: Duration) -> io::Result<()> {
    el.add_signals(&SERVER_SIGNALS, move |el, sig| match sig {
        Signal::SIGUSR2 => super::report_stats(&fleet.total(el.stats())),
        Signal::SIGHUP => {
            super::reload::reload();
        }
        Signal::SIGUSR1 => crate::ops::log::reopen_all(),
        _ => {
            if !super::first_stop_signal(sig) {
                return;
            }
            tracing::info!("{sig:?}: stopping; draining connections for up to {drain:?}");
            crate::ops::notify::stopping();
            super::arm_stop_watchdog(drain);
            fleet.stop_listening();
            // One deadline for every loop, counted from the signal.
            let until = crate::reactor::event_loop::instant_after(drain);
            fleet.broadcast(move |el| el.shutdown_gracefully_until(until));
            el.shutdown_gracefully_until(until);
            // Up until the worker loops are done, so that a second SIGINT is still heard
            // (signals are read here only); the stop watchdog bounds the wait.
            el.hold_drain();
            release_when_fleet_done(el, fleet.clone());
        }
    })
}

/// How often a stopping control loop looks whether its worker loops have all ended.
const FLEET_POLL: Duration = Duration::from_millis(20);

fn release_when_fleet_done(el: &mut EventLoop, fleet: Arc<Fleet>) {
    el.run_after(FLEET_POLL, move |el| {
        if fleet.live() == 0 {
            el.release_drain();
        } else {
            release_when_fleet_done(el, fleet);
        }
    });
}

/// Serves `--admin` (if given) on the control loop with the fleet's figures: the control
/// loop's own counters (it accepts under some strategies) plus every worker loop's.
pub fn serve_admin(
    el: &mut EventLoop,
    fleet: &Arc<Fleet>,
    opts: &super::ServerOptions,
) -> io::Result<()> {
    let (fleet, engine) = (fleet.clone(), opts.engine);
    super::admin::attach(
        el,
        opts.model,
        Arc::new(move |own: Option<&LoopStats>| {
            let own = own.cloned().unwrap_or_else(|| LoopStats::new(engine));
            fleet.snapshot(&own)
        }),
    )
}

/// After the control loop returned: waits for the worker loops, prints the final totals.
pub fn finish(el: &EventLoop, fleet: &Fleet) {
    fleet.join();
    super::report_stats(&fleet.total(el.stats()));
}

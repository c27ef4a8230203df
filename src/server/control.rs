//! What the threaded models share: the main thread's control loop, where signals arrive as
//! ordinary events, and the [`Fleet`] of worker loops it steers.
//!
//! Signals are blocked in the main thread before any worker thread exists (threads inherit the
//! mask), so SIGTERM reaches only the control loop's signalfd. The control loop then tells every
//! worker loop, through its task queue, to drain: no thread ever touches another's connections.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::reactor::{EventLoop, LoopConfig, LoopHandle, LoopStats, Signal};

/// The worker loops of one server, each on its own thread.
pub struct Fleet {
    /// Live loops by slot; a slot is emptied when its loop ends.
    loops: Mutex<Vec<Option<LoopHandle>>>,
    /// Counters of loops that have ended (so totals survive per-connection threads).
    finished: Mutex<Option<LoopStats>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        Arc::new(Fleet {
            loops: Mutex::new(Vec::new()),
            finished: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
        })
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
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut el = match EventLoop::new(cfg).and_then(|mut el| setup(&mut el).map(|()| el)) {
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
                eprintln!("keel: loop failed: {e}");
            }
            fleet.retire(slot, el.stats());
        })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("loop thread died during set-up"))??;
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
        Ok(handle)
    }

    fn register(&self, handle: LoopHandle) -> usize {
        let mut loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = loops.iter().position(Option::is_none) {
            loops[i] = Some(handle);
            i
        } else {
            loops.push(Some(handle));
            loops.len() - 1
        }
    }

    fn retire(&self, slot: usize, stats: &LoopStats) {
        self.loops.lock().unwrap_or_else(|e| e.into_inner())[slot] = None;
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        match finished.as_mut() {
            Some(total) => total.add(stats),
            None => *finished = Some(stats.clone()),
        }
    }

    /// How many loops are running (or just ending).
    pub fn live(&self) -> usize {
        let loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        loops.iter().filter(|l| l.is_some()).count()
    }

    /// Live loop handles, in slot order.
    pub fn handles(&self) -> Vec<LoopHandle> {
        let loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        loops.iter().flatten().cloned().collect()
    }

    /// Runs `task` on every live loop.
    pub fn broadcast(&self, task: impl Fn(&mut EventLoop) + Clone + Send + 'static) {
        for h in self.handles() {
            let t = task.clone();
            h.post(move |el| t(el));
        }
    }

    /// `own` plus the counters of every loop, live (asked through their queues, waiting at
    /// most a second for the answers) or ended.
    pub fn total(&self, own: &LoopStats) -> LoopStats {
        let (tx, rx) = mpsc::channel();
        let mut asked = 0;
        for h in self.handles() {
            let tx = tx.clone();
            if h.post(move |el| {
                let _ = tx.send(el.stats().clone());
            }) {
                asked += 1;
            }
        }
        let mut total = own.clone();
        if let Some(f) = self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            total.add(f);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        for _ in 0..asked {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => total.add(&s),
                Err(_) => break,
            }
        }
        total
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

/// Makes `el` (the main thread's loop) the server's control loop: SIGINT/SIGTERM drain every
/// loop of `fleet` and this one, SIGUSR2 prints the summed `stats` line, SIGHUP is logged
/// (configuration reload belongs to the server-conventions work). Call before spawning threads.
pub fn install_signals(el: &mut EventLoop, fleet: Arc<Fleet>, drain: Duration) -> io::Result<()> {
    el.add_signals(
        &[
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGUSR2,
            Signal::SIGHUP,
        ],
        move |el, sig| match sig {
            Signal::SIGUSR2 => eprintln!("{}", fleet.total(el.stats())),
            Signal::SIGHUP => eprintln!("keel: SIGHUP ignored (no configuration to reload)"),
            _ => {
                fleet.broadcast(move |el| el.shutdown_gracefully(drain));
                el.shutdown_gracefully(drain);
            }
        },
    )
}

/// After the control loop returned: waits for the worker loops, prints the final totals.
pub fn finish(el: &EventLoop, fleet: &Fleet) {
    fleet.join();
    eprintln!("{}", fleet.total(el.stats()));
}

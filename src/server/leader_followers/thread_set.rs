//! Building the shared state, starting the thread set and stopping it.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rustix::event::epoll::{self, EventData, EventFlags};
use slab::Slab;

use super::counters::Counters;
use super::settings::Settings;
use super::shared::{lock, Shared, Table, LISTENER, WAKER};
use super::timers::Timers;
use super::worker::Worker;
use crate::net::listener::open_reserve_fd;
use crate::reactor::{LoopHandle, TimerWheel};
use crate::server::{ServerOptions, Service};

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
pub(super) fn start(
    opts: &ServerOptions,
    service: &Service,
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
        drain_due: AtomicU64::new(0),
        drain_started: AtomicBool::new(false),
        live_threads: AtomicUsize::new(0),
        permits: AtomicUsize::new(0),
        refusing: Arc::default(),
        factory: service.factory.clone(),
        cfg: Settings::from_opts(opts, service),
        start: Instant::now(),
        control,
    }))
}

/// Puts the listener in the shared poller and starts the thread set.
pub(super) fn spawn_threads(
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
        let name = format!("keel-lf-{i}");
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _leaving = Leaving(&shared);
                if let Err(e) = Worker::new(&shared, i).run() {
                    tracing::error!("leader/followers thread failed: {e}");
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
                return Err(crate::server::thread_not_started(&name, e));
            }
        }
    }
    Ok(threads)
}

/// Starts the graceful stop (what SIGINT/SIGTERM do).
pub(super) fn stop(sh: &Shared) {
    // Set once: a second call (the control loop failing after a stop) must not move it.
    let due = sh.now().saturating_add(sh.cfg.drain_ms).max(1);
    let _ = sh
        .drain_due
        .compare_exchange(0, due, Ordering::SeqCst, Ordering::SeqCst);
    sh.draining.store(true, Ordering::SeqCst);
    // New connections are refused from now on, even before a thread notices the flag (one
    // may be busy in a long batch): a listening socket shut down leaves the LISTEN state.
    if let Some(fd) = lock(&sh.listener).as_ref() {
        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
    }
    sh.wake();
}

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
//! - **`--max-conns` is one limit for all workers**: the permits are counted in a mapping
//!   shared by the workers and the master (`ConnectionLimit::shared`), so the server holds at
//!   most `--max-conns` and a worker refuses only when the server is full. What a worker that
//!   died held is given back by the master when it reaps it (`ConnectionLimit::reclaim`).

use std::cell::RefCell;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::forking::{self, Board, Children, Shared};
use super::{ServerOptions, Service};
use crate::net::listener::ConnectionLimit;
use crate::reactor::{EventLoop, LoopConfig, Signal, TimerKey};
use crate::sys::process::{Child, SharedCounters};

/// A worker that dies sooner than this after starting counts as a quick death (back-off).
const QUICK_DEATH: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the master knows of a worker slot besides its pid (in [`Children`]).
struct Worker {
    started: Instant,
    /// Deaths in a row, each within [`QUICK_DEATH`] of starting.
    quick_deaths: u32,
    restart: Option<TimerKey>,
}

struct Master {
    cfg: LoopConfig,
    /// `--max-conns` and the words its permits are counted in, shared with the workers.
    limit: Option<(usize, Arc<SharedCounters>)>,
    service: Service,
    /// The master's copies of the sockets, kept to hand to replacement workers.
    listener: Option<OwnedFd>,
    udp: Option<OwnedFd>,
    workers: Vec<Worker>,
    children: Children,
}

impl Master {
    /// Forks worker `slot`.
    fn spawn(&mut self, el: &EventLoop, slot: usize) -> io::Result<()> {
        let Some(listener_fd) = self.listener.as_ref().map(|l| l.as_fd()) else {
            return Ok(()); // stopping
        };
        let udp_fd = self.udp.as_ref().map(|u| u.as_fd());
        let lend: Vec<BorrowedFd> = std::iter::once(listener_fd).chain(udp_fd).collect();
        let (listener, udp) = (listener_fd.as_raw_fd(), udp_fd.map(|u| u.as_raw_fd()));
        let mut cfg = self.cfg.clone();
        if let Some((max, words)) = &self.limit {
            // What a previous worker in this slot held was given back when it was reaped.
            cfg.connection_limit = Some(ConnectionLimit::shared(*max, words.clone(), slot));
        }
        let (cfg, service, board, drain) = (
            cfg,
            self.service.clone(),
            self.children.board.clone(),
            self.children.drain,
        );
        let pid = forking::fork(el, &lend, move |cx| {
            forking::child_main(cx, "worker", |cx| {
                serve_worker(cx, slot, listener, udp, cfg, &service, board, drain)
            })
        })?;
        self.children.started(slot, pid);
        self.workers[slot].started = Instant::now();
        Ok(())
    }
}

impl forking::Master for Master {
    fn children(&self) -> &Children {
        &self.children
    }

    fn children_mut(&mut self) -> &mut Children {
        &mut self.children
    }

    fn reap(el: &mut EventLoop, m: &Shared<Master>) {
        reap_workers(el, m)
    }

    fn hang_up(&self) {
        // The master reloads for the workers it forks later, and says how it went; each
        // worker reloads itself, only once the master found the file good (a broken one would
        // be reported again by every worker).
        if super::reload::reload() {
            self.children.signal_all(Signal::SIGHUP);
        }
    }

    fn close(&mut self, el: &mut EventLoop) {
        // Stop the port accepting now, for every worker (a listening socket shut down leaves
        // the LISTEN state for all descriptors that share it; a worker busy in a long batch
        // would otherwise keep accepting until it reads its SIGTERM), then close our copies.
        if let Some(l) = &self.listener {
            let _ = rustix::net::shutdown(l, rustix::net::Shutdown::Both);
        }
        self.listener = None;
        self.udp = None;
        for key in self.workers.iter_mut().filter_map(|w| w.restart.take()) {
            el.cancel_timer(key);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn serve_worker(
    cx: &mut Child,
    slot: usize,
    listener: RawFd,
    udp: Option<RawFd>,
    cfg: LoopConfig,
    service: &Service,
    board: Arc<Board>,
    drain: Duration,
) -> io::Result<()> {
    let listener = TcpListener::from(cx.take_inherited(listener));
    let udp = udp.map(|fd| UdpSocket::from(cx.take_inherited(fd)));
    forking::serve_child(cfg, board, slot, drain, |el| {
        el.add_listener(listener, service.factory.clone())?;
        if let (Some(sock), Some(udp)) = (udp, &service.udp) {
            el.add_udp(sock, udp())?;
        }
        Ok(())
    })
}

pub fn run(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    let workers = opts.threads;
    // The workers draw on one user's pipe allowance: each holds file pages within its share.
    crate::net::page_pipe::share_allowance(workers);
    forking::run(opts, service, |control, listener, udp| {
        let cfg = opts.loop_config(service);
        let limit = match opts.max_connections {
            Some(max) => Some((max, ConnectionLimit::shared_words(workers)?)),
            None => None,
        };
        let m: Shared<Master> = Rc::new(RefCell::new(Master {
            cfg,
            limit,
            service: service.clone(),
            listener: Some(listener.into()),
            udp: udp.map(OwnedFd::from),
            workers: (0..workers)
                .map(|_| Worker {
                    started: Instant::now(),
                    quick_deaths: 0,
                    restart: None,
                })
                .collect(),
            children: Children::new(workers, opts, "worker")?,
        }));
        for slot in 0..workers {
            let spawned = m.borrow_mut().spawn(control, slot);
            if let Err(e) = spawned {
                // Take down the ones already started before giving up.
                m.borrow_mut().children.kill_all();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start worker: {e}"),
                ));
            }
        }
        Ok(m)
    })
}

fn reap_workers(el: &mut EventLoop, m: &Shared<Master>) {
    loop {
        let Some((slot, pid, how)) = m.borrow_mut().children.reap_next() else {
            break;
        };
        let mut mm = m.borrow_mut();
        if let Some((_, words)) = &mm.limit {
            ConnectionLimit::reclaim(words, slot);
        }
        if mm.children.stopping {
            continue;
        }
        let w = &mut mm.workers[slot];
        w.quick_deaths = if w.started.elapsed() < QUICK_DEATH {
            w.quick_deaths + 1
        } else {
            1
        };
        let delay = backoff(w.quick_deaths);
        if delay.is_zero() {
            tracing::warn!("worker {pid} exited ({how}); restarting");
            drop(mm);
            restart(el, m, slot);
        } else {
            tracing::warn!(
                "worker {pid} exited ({how}); restarting in {} ms",
                delay.as_millis()
            );
            drop(mm);
            schedule_restart(el, m, slot, delay);
        }
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

fn schedule_restart(el: &mut EventLoop, m: &Shared<Master>, slot: usize, delay: Duration) {
    let m2 = m.clone();
    let key = el.run_after(delay, move |el| {
        m2.borrow_mut().workers[slot].restart = None;
        restart(el, &m2, slot);
    });
    m.borrow_mut().workers[slot].restart = Some(key);
}

fn restart(el: &mut EventLoop, m: &Shared<Master>, slot: usize) {
    let mut mm = m.borrow_mut();
    if mm.children.stopping || mm.children.pid(slot).is_some() {
        return;
    }
    if let Err(e) = mm.spawn(el, slot) {
        let w = &mut mm.workers[slot];
        w.quick_deaths += 1;
        let delay = backoff(w.quick_deaths).max(FIRST_BACKOFF);
        tracing::error!(
            "cannot restart worker: {e}; trying again in {} ms",
            delay.as_millis()
        );
        drop(mm);
        schedule_restart(el, m, slot, delay);
    }
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
}

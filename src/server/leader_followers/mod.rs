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
//! A connection ([`LfConn`](conn::LfConn)) lives in a shared table (a slab under a mutex,
//! tokens carry a generation so a stale event is dropped) behind its own mutex. EPOLLONESHOT
//! makes that mutex uncontended on the I/O path: only the thread that got the connection's
//! event touches it.
//! Timers (idle, linger, user timers, the drain deadline) sit in one timing wheel under a
//! mutex; the leader expires them before waiting and handles the fired ones as a processor, so
//! a timer callback takes the connection's mutex like an event does. Lock order: leader, then a
//! connection, then the table or the timers; the table and timer locks are only held for a
//! moment and never around a handler.
//!
//! The fd of a connection is closed in one place ([`Worker::destroy`](worker::Worker::destroy)),
//! under its mutex, after the handler callback that asked for it has returned (DESIGN rules 3
//! and 4). A handler acts on its own connection only: `Ctx::event_loop`, `Ctx::handle` and
//! `Ctx::connect` are not available under this model, and operations on another connection's
//! id do nothing (taking a second connection's lock from inside a handler could deadlock).
//!
//! # Stopping
//!
//! Signals are blocked before any thread starts and arrive on the main thread's control loop
//! (which also serves a service's UDP side). SIGINT/SIGTERM set the shared *draining* flag and
//! ring an eventfd registered (without ONESHOT) in the shared epoll: the leader wakes, the first
//! thread to see the flag closes the listener and marks every connection draining (it answers
//! what its client has sent, then closes gracefully once idle, as under every model), and each
//! thread leaves when no connection is left or when the drain deadline has aborted the rest. The
//! last one out stops the control loop, which prints the final `stats` line.

mod accept;
mod conn;
mod conn_io;
mod counters;
mod drain;
mod ops;
mod settings;
mod shared;
mod thread_set;
mod timers;
mod worker;

use std::io;

use super::{bind_and_announce, ServerOptions, Service};
use crate::reactor::{Engine, EventLoop, Signal};
use thread_set::{spawn_threads, start, stop};

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
    let mut control = EventLoop::new(opts.loop_config(service))?;
    let sh = start(opts, service, Some(control.handle()))?;
    let drain = opts.drain_timeout;

    // Signals are blocked here, before any thread exists (threads inherit the mask).
    let udp_token = std::rc::Rc::new(std::cell::Cell::new(None));
    {
        let sh = sh.clone();
        let udp_token = udp_token.clone();
        control.add_signals(&super::control::SERVER_SIGNALS, move |el, sig| match sig {
            Signal::SIGUSR2 => super::report_stats(&sh.total(el.stats())),
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
                if let Some(token) = udp_token.take() {
                    el.close_listener(token);
                }
                stop(&sh);
            }
        })?;
    }

    {
        let (sh, engine) = (sh.clone(), opts.engine);
        super::admin::attach(
            &mut control,
            opts.model,
            std::sync::Arc::new(move |own: Option<&crate::reactor::LoopStats>| {
                let own = own
                    .cloned()
                    .unwrap_or_else(|| crate::reactor::LoopStats::new(engine));
                (sh.total(&own), sh.per_thread(engine))
            }),
        )?;
    }
    let (listener, udp) = bind_and_announce(opts, service)?;
    if let (Some(sock), Some(udp)) = (udp, &service.udp) {
        udp_token.set(Some(control.add_udp(sock, udp())?));
    }
    let threads = spawn_threads(&sh, listener)?;

    super::started();
    let res = control.run();
    if res.is_err() {
        stop(&sh);
    }
    for t in threads {
        let _ = t.join();
    }
    super::report_stats(&sh.total(control.stats()));
    res
}

#[cfg(test)]
mod tests;

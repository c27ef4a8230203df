//! Thread per connection (the notes' 多线程模型), a baseline to measure the others against.
//!
//! The main thread's loop accepts; each connection gets a thread of its own, which runs a
//! one-connection event loop with the same handler code and ends with the connection. It is
//! the simplest model to reason about and the most expensive per connection: a thread (stack,
//! scheduler entity, a context switch per event) and a loop's fds for every client. `--threads`
//! caps how many run at once; past the cap a new connection waits a moment for a thread to end
//! (`admission`), then is refused (a clean close for the client) and counted as
//! `refused_limit`, rather than spawning without bound. A connection whose thread cannot start
//! is refused the same way, and counted as `refused_spawn`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use super::admission::Admission;
use super::control::{self, Fleet};
use super::{bind_and_announce, ServerOptions, Service};
use crate::net::listener::{close_refused, say_out_of_fds};
use crate::net::log_throttle::{left_out_note, LogThrottle};
use crate::reactor::EventLoop;

/// A connection thread that cannot start for another reason than fds (the kernel's thread
/// limit, memory) is said at most once in this many seconds.
static SPAWN_FAILURES: LogThrottle = LogThrottle::new(10);

pub fn run(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    let cfg = opts.loop_config(service);
    let mut control = EventLoop::new(cfg.clone())?;
    let fleet = Fleet::new();
    control::install_signals(&mut control, fleet.clone(), opts.drain_timeout)?;
    control::serve_admin(&mut control, &fleet, opts)?;
    let (listener, udp) = bind_and_announce(opts, service)?;

    // `--threads` caps the connection threads; `--max-conns`, if lower, caps them too.
    let cap = opts
        .max_connections
        .map_or(opts.threads, |m| opts.threads.min(m.max(1)));
    let factory = service.factory.clone();
    let threads = fleet.clone();
    let spawned = std::cell::Cell::new(0u64);
    // A client that finds every thread taken waits a moment for one to end (`admission`).
    let admission = Admission::new(std::rc::Rc::new(
        move |el: &mut EventLoop, fd, _held: &[_]| {
            if threads.live() >= cap {
                return Err(fd);
            }
            spawned.set(spawned.get() + 1);
            let spawned = spawned.get();
            let factory = factory.clone();
            let mut conn_cfg = cfg.clone();
            // A loop with one connection does not need a connection limit of its own.
            conn_cfg.connection_limit = None;
            // The thread takes the socket once its loop is up; if the thread or its loop cannot
            // start, the socket is still here to be refused: as one over the limit is (a
            // lingering close), or, out of fds, closed at once as at accept.
            let handed = Arc::new(Mutex::new(Some(fd)));
            let theirs = handed.clone();
            let started =
                threads.spawn_loop(format!("keel-conn-{spawned}"), conn_cfg, true, move |el| {
                    let fd = lock(&theirs).take().ok_or(io::ErrorKind::NotFound)?;
                    el.adopt(fd, factory()).map(drop)
                });
            if let Err(e) = started {
                let fd = lock(&handed).take();
                // Out of fds (the thread's loop needs its own) is counted and said as at
                // accept, and the socket closed at once, as there: a lingering close would
                // hold an fd the process has none of.
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    if let Some(fd) = fd {
                        close_refused(fd, el.cfg.refusal_note.as_deref());
                    }
                    el.stats.refused_emfile += 1;
                    say_out_of_fds("a connection thread's event loop", e);
                } else {
                    if let Some(fd) = fd {
                        el.refuse(fd);
                    }
                    el.stats.refused_spawn += 1;
                    if let Some(left_out) = SPAWN_FAILURES.turn() {
                        tracing::warn!(
                            "cannot start a connection's thread or its loop, refusing the \
                             connection: {e}{}",
                            left_out_note(left_out)
                        );
                    }
                }
            }
            Ok(())
        },
    ));
    control.add_acceptor(listener, Box::new(move |el, fd| admission.offer(el, fd)))?;
    if let (Some(sock), Some(udp)) = (udp, &service.udp) {
        control.add_udp(sock, udp())?;
    }

    super::started();
    control.run()?;
    control::finish(&control, &fleet);
    Ok(())
}

/// The socket handed to a connection thread. Nothing panics while holding it, but a poisoned
/// lock still holds the socket, so it is taken either way.
fn lock(handed: &Mutex<Option<OwnedFd>>) -> MutexGuard<'_, Option<OwnedFd>> {
    handed.lock().unwrap_or_else(|e| e.into_inner())
}

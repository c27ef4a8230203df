//! Multi-reactor (muduo's one loop per thread, the notes' 高效的半同步/半异步): N event loops,
//! each on its own thread and owning its connections for life, so no lock is taken on the I/O
//! path and a connection never moves between threads.
//!
//! Two ways to spread connections over the loops:
//! - `reuseport` (default): every loop has its own listening socket bound to the same address
//!   with SO_REUSEPORT, and the kernel hashes each new connection to one of them. No hand-off,
//!   no shared accept queue; the price is that a busy loop keeps receiving its share.
//! - `acceptor`: one listener on the main thread's loop accepts, and hands each socket to the
//!   next loop round-robin through that loop's task queue (`adopt`).

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;

use super::control::{self, Fleet};
use super::{announce, bind_and_announce, AcceptStrategy, ServerOptions, Service};
use crate::net::listener::bind_error;
use crate::net::{bind_tcp_group, bind_udp, ListenOptions};
use crate::reactor::{EventLoop, LoopHandle};

pub fn run(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    let cfg = opts.loop_config(service);
    let mut control = EventLoop::new(cfg.clone())?;
    let fleet = Fleet::new();
    control::install_signals(&mut control, fleet.clone(), opts.drain_timeout)?;
    control::serve_admin(&mut control, &fleet, opts)?;

    match opts.accept {
        AcceptStrategy::ReusePort => {
            let lopts = opts.listen_opts.clone();
            let listeners = bind_tcp_group(opts.listen, &lopts, opts.threads)?;
            let local = listeners[0].local_addr()?;
            if let Some(udp) = &service.udp {
                // SO_REUSEPORT, as the TCP group has: a reload may move to another address
                // on this port while this socket is still open (`register_relisten`).
                let sock =
                    bind_udp(local, true).map_err(|e| bind_error(format!("udp {local}"), e))?;
                control.add_udp(sock, udp())?;
            }
            // Bound: announce (and daemonize) while still single-threaded.
            announce(opts, local, service.udp.is_some())?;
            register_relisten(&fleet, &lopts, opts.threads, service, control.handle());
            for (i, listener) in listeners.into_iter().enumerate() {
                fleet.watch_listener(&listener)?;
                let factory = service.factory.clone();
                fleet.spawn_loop(format!("keel-loop-{i}"), cfg.clone(), false, move |el| {
                    el.add_listener(listener, factory).map(drop)
                })?;
            }
        }
        AcceptStrategy::Acceptor => {
            let (listener, udp) = bind_and_announce(opts, service)?;
            let mut loops = Vec::with_capacity(opts.threads);
            for i in 0..opts.threads {
                loops.push(fleet.spawn_loop(
                    format!("keel-loop-{i}"),
                    cfg.clone(),
                    false,
                    |_| Ok(()),
                )?);
            }
            let factory = service.factory.clone();
            let mut next = 0usize;
            control.add_acceptor(
                listener,
                Box::new(move |_el, fd| {
                    let target = &loops[next % loops.len()];
                    next = next.wrapping_add(1);
                    let factory = Arc::clone(&factory);
                    target.post(move |el| {
                        // A refusal closes the socket (a clean close for the client) and is
                        // counted and said there.
                        let _ = el.adopt_incoming(fd, &*factory);
                    });
                }),
            )?;
            if let (Some(sock), Some(udp)) = (udp, &service.udp) {
                control.add_udp(sock, udp())?;
            }
        }
    }

    super::started();
    control.run()?;
    control::finish(&control, &fleet);
    Ok(())
}

/// SIGHUP with a new `listen`: bind a listener per loop at the new address, and the UDP
/// socket beside them if the service has one (all or nothing), hand each loop its own (UDP to
/// the control loop, which serves it), and close the old ones. Connections already accepted
/// carry on.
fn register_relisten(
    fleet: &Arc<Fleet>,
    lopts: &ListenOptions,
    threads: usize,
    service: &Service,
    control: LoopHandle,
) {
    let (fleet, lopts, factory) = (fleet.clone(), lopts.clone(), service.factory.clone());
    let udp = service.udp.clone();
    super::reload::set_relisten(Box::new(move |addr| {
        // Moving to another address on the port this server holds (127.0.0.1:P to
        // 0.0.0.0:P, say): the new group binds beside our own listeners, which the probe for
        // another server would take for one.
        let ours = fleet.listening_port() == Some(addr.port());
        let lopts = ListenOptions {
            reuse_port: lopts.reuse_port || ours,
            ..lopts.clone()
        };
        let listeners = bind_tcp_group(addr, &lopts, threads).map_err(|e| e.to_string())?;
        let local = listeners[0].local_addr().map_err(|e| e.to_string())?;
        let udp_sock = match &udp {
            Some(_) => Some(bind_udp(local, true).map_err(|e| format!("udp {local}: {e}"))?),
            None => None,
        };
        let handles = fleet.handles();
        if handles.len() != listeners.len() {
            return Err(format!(
                "{} loops for {} listeners",
                handles.len(),
                listeners.len()
            ));
        }
        let mut watched = Vec::with_capacity(listeners.len());
        for l in &listeners {
            watched.push(l.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?);
        }
        fleet.replace_listeners(watched);
        for (h, listener) in handles.into_iter().zip(listeners) {
            let factory = factory.clone();
            h.post(move |el| {
                el.close_tcp_listeners();
                if let Err(e) = el.add_listener(listener, factory) {
                    tracing::error!("reload: a loop cannot take its new listener: {e}");
                }
            });
        }
        let moved_udp = udp_sock.is_some();
        if let (Some(sock), Some(udp)) = (udp_sock, udp.clone()) {
            control.post(move |el| {
                el.close_udp_sockets();
                if let Err(e) = el.add_udp(sock, udp()) {
                    tracing::error!("reload: cannot serve udp on the new address: {e}");
                }
            });
        }
        // The same lines as at start, for whoever reads stdout to learn the address (a port
        // 0 is only known now); a reader gone is no error here either.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening tcp {local}")
            .and_then(|()| match moved_udp {
                true => writeln!(out, "listening udp {local}"),
                false => Ok(()),
            })
            .and_then(|()| out.flush());
        Ok(local)
    }));
}

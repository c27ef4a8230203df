//! Process per connection (the notes' 多进程模型: `accept`, `fork`, the child serves), a
//! baseline to measure the other models against.
//!
//! The master's control loop accepts (through an accept hook, so the usual accept policy
//! applies) and forks a child per connection; the master closes its copy of the socket right
//! after the fork. The child closes the listening socket it inherited (and the UDP socket),
//! builds a loop of its own with the same handler code, serves the one connection with
//! `exit_when_empty` and ends with `_exit`. It is the most expensive model per connection: a
//! fork (page tables, copy-on-write faults), an event loop and a process exit for every client.
//!
//! - **`--threads` is the cap**: at most that many children at once; beyond it a new connection
//!   is closed at once (a clean close for the client) and counted as `refused_limit`.
//!   `--max-conns`, if lower, caps too (each connection has a process of its own, so the cap is
//!   the smaller of the two).
//! - **Reaping**: SIGCHLD is a loop event (signalfd); on each, `waitpid(-1, WNOHANG)` until
//!   none is left, so no child stays a zombie.
//! - **Stopping**: SIGTERM/SIGINT close the listener (and UDP socket), pass SIGTERM to every
//!   child (each drains its connection gracefully), and the master exits once all are reaped,
//!   killing any still running after the drain timeout plus a second.
//! - **Counters**: the master counts `accepted`, `refused_limit` and `refused_spawn` (a fork
//!   that failed; the connection is refused as one over the cap is) (and UDP `datagrams`, which
//!   it serves itself on its control loop). Each child publishes its loop counters (`open`,
//!   `closed`, `connects` for a proxy's backend, bytes, wakeups, timeouts) into its slot of a
//!   shared-memory board every 100 ms while they change, on SIGUSR2 and at exit, and the
//!   master adds them in: SIGUSR2 is passed to the children and the `stats` line waits (up to
//!   a second) for their answers. What a child that ended still had open counts as closed.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use super::admission::Admission;
use super::forking::{self, Children, Shared};
use super::{ServerOptions, Service};
use crate::reactor::{EventLoop, LoopStats, Token};
use crate::sys::process::Exit;

struct Master {
    /// The child serving each slot of the board, if any.
    children: Children,
    listener: Option<Token>,
    udp: Option<Token>,
    warned_fork: bool,
    /// The clients waiting for a slot (`admission`), refused when the server stops.
    admission: Option<Rc<Admission>>,
}

impl forking::Master for Master {
    fn children(&self) -> &Children {
        &self.children
    }

    fn children_mut(&mut self) -> &mut Children {
        &mut self.children
    }

    fn reap(_: &mut EventLoop, m: &Shared<Master>) {
        reap(&mut m.borrow_mut());
    }

    fn hang_up(&self) {
        // Children serve one connection each with what they were forked with; new ones get
        // the reloaded configuration.
        super::reload::reload();
    }

    fn close(&mut self, el: &mut EventLoop) {
        for token in [self.listener.take(), self.udp.take()]
            .into_iter()
            .flatten()
        {
            el.close_listener(token);
        }
        if let Some(admission) = self.admission.take() {
            admission.refuse_all(el);
        }
    }

    /// The children's own counts of what they opened and closed (a proxy's child has two
    /// connections, its client's and its backend's), not one per child: a child that ended
    /// had its open connections counted closed (`Board::retire`).
    fn total(&self, own: &LoopStats) -> LoopStats {
        self.children.total(own)
    }
}

pub fn run(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    let cap = match opts.max_connections {
        Some(max) => opts.threads.min(max.max(1)),
        None => opts.threads,
    };
    // As many children as that may hold file pages at once, on one user's pipe allowance.
    crate::net::page_pipe::share_allowance(cap);
    forking::run(opts, service, |control, listener, udp| {
        let listen_fd = listener.as_raw_fd();
        let udp_fd = udp.as_ref().map(|u| u.as_raw_fd());

        let m: Shared<Master> = Rc::new(RefCell::new(Master {
            children: Children::new(cap, opts, "connection process")?,
            listener: None,
            udp: None,
            warned_fork: false,
            admission: None,
        }));

        let mut cfg = opts.loop_config(service);
        // A loop with one connection needs no connection limit of its own.
        cfg.connection_limit = None;
        let factory = service.factory.clone();
        let drain = opts.drain_timeout;
        let hook_m = m.clone();
        // A client that finds every process taken waits a moment for one to end
        // (`admission`).
        let admission = Admission::new(Rc::new(move |el: &mut EventLoop, fd, held: &[_]| {
            let mut mm = hook_m.borrow_mut();
            let mut free = mm.children.free_slot();
            if free.is_none() {
                // Children may have ended with their SIGCHLD still queued behind this
                // accept in the same batch of events (or not yet read at all): reap
                // before saying no.
                reap(&mut mm);
                free = mm.children.free_slot();
            }
            let Some(slot) = free else {
                return Err(fd);
            };
            let (cfg, factory, board) = (cfg.clone(), factory.clone(), mm.children.board.clone());
            // The child takes the socket from its copy of this cell; the master's copy is
            // closed once the fork is done, or refused if there is no child to serve it.
            let handed = Rc::new(Cell::new(Some(fd)));
            let theirs = handed.clone();
            let held_fds: Vec<_> = held.iter().map(|f| f.as_raw_fd()).collect();
            let forked = forking::fork(el, held, move |cx| {
                // The listening sockets stay open in the master; the child must not keep
                // them alive. Nor the clients still waiting for a slot (`admission`).
                cx.close_inherited(listen_fd);
                if let Some(udp) = udp_fd {
                    cx.close_inherited(udp);
                }
                for fd in held_fds {
                    cx.close_inherited(fd);
                }
                forking::child_main(cx, "connection process", |_| {
                    forking::serve_child(cfg, board, slot, drain, |el| {
                        el.exit_when_empty(true);
                        let fd = theirs.take().ok_or(io::ErrorKind::NotFound)?;
                        el.adopt(fd, factory())?;
                        Ok(())
                    })
                })
            });
            let fd = handed.take();
            match forked {
                Ok(pid) => mm.children.started(slot, pid),
                Err(e) => {
                    // Refused as one over the limit is: FIN, its bytes read and dropped.
                    if let Some(fd) = fd {
                        el.refuse(fd);
                    }
                    el.stats.refused_spawn += 1;
                    if !mm.warned_fork {
                        mm.warned_fork = true;
                        tracing::warn!("cannot fork for a connection (refusing it): {e}");
                    }
                }
            }
            Ok(())
        }));
        m.borrow_mut().admission = Some(admission.clone());
        let token =
            control.add_acceptor(listener, Box::new(move |el, fd| admission.offer(el, fd)))?;
        m.borrow_mut().listener = Some(token);
        if let (Some(sock), Some(udp)) = (udp, &service.udp) {
            let token = control.add_udp(sock, udp())?;
            m.borrow_mut().udp = Some(token);
        }
        Ok(m)
    })
}

/// Reaps every child that has ended (`waitpid(-1, WNOHANG)` until none).
fn reap(mm: &mut Master) {
    while let Some((_, pid, how)) = mm.children.reap_next() {
        if how != Exit::Code(0) && !mm.children.stopping {
            tracing::warn!("connection process {pid} exited ({how})");
        }
    }
}

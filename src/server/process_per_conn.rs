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
//! - **Counters**: the master counts `accepted` and `refused_limit` (and UDP `datagrams`, which
//!   it serves itself on its control loop); `open` is the number of live children and `closed`
//!   the number reaped. Each child publishes its loop counters (bytes, wakeups, timeouts) into
//!   its slot of a shared-memory board every 100 ms, on SIGUSR2 and at exit, and the master
//!   adds them in: SIGUSR2 is passed to the children and the `stats` line waits (up to a
//!   second) for their answers.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use super::prefork::{publish_periodically, unblock_sigchld, when_published, Board, KILL_MARGIN};
use super::{bind_and_announce, ServerOptions, Service};
use crate::net::HandlerFactory;
use crate::reactor::{EventLoop, LoopConfig, LoopStats, Signal, Token};
use crate::sys::process::{self, Child, Exit, Pid};

struct Master {
    /// The child serving each slot of the board, if any.
    children: Vec<Option<Pid>>,
    board: Rc<Board>,
    /// What reaped children had published.
    finished: LoopStats,
    reaped: u64,
    listener: Option<Token>,
    udp: Option<Token>,
    drain: Duration,
    stopping: bool,
    warned_fork: bool,
}

type Shared = Rc<RefCell<Master>>;

impl Master {
    fn live(&self) -> impl Iterator<Item = (usize, Pid)> + '_ {
        self.children
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|p| (i, p)))
    }

    fn total(&self, own: &LoopStats) -> LoopStats {
        let mut total = own.clone();
        total.add(&self.finished);
        total.add(&self.board.sum());
        total.open = self.live().count() as u64;
        total.closed = self.reaped;
        total
    }
}

pub fn run(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    let cap = match opts.max_connections {
        Some(max) => opts.threads.min(max.max(1)),
        None => opts.threads,
    };
    let mut control = EventLoop::new(opts.loop_config())?;
    let shared: Rc<RefCell<Option<Shared>>> = Rc::new(RefCell::new(None));
    let s = shared.clone();
    // Blocked before any fork, so children inherit the mask (see prefork).
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
    let listen_fd = listener.as_raw_fd();
    let udp_fd = udp.as_ref().map(|u| u.as_raw_fd());

    let m: Shared = Rc::new(RefCell::new(Master {
        children: vec![None; cap],
        board: Rc::new(Board::new(cap, opts.engine)?),
        finished: LoopStats::new(opts.engine),
        reaped: 0,
        listener: None,
        udp: None,
        drain: opts.drain_timeout,
        stopping: false,
        warned_fork: false,
    }));
    *shared.borrow_mut() = Some(m.clone());

    let mut cfg = opts.loop_config();
    // A loop with one connection needs no connection limit of its own.
    cfg.connection_limit = None;
    let factory = service.factory.clone();
    let drain = opts.drain_timeout;
    let hook_m = m.clone();
    let token = control.add_acceptor(
        listener,
        Box::new(move |el, fd| {
            let mut mm = hook_m.borrow_mut();
            let mut free = mm.children.iter().position(Option::is_none);
            if free.is_none() {
                // Children may have ended with their SIGCHLD still queued behind this accept
                // in the same batch of events: reap before refusing.
                reap(&mut mm);
                free = mm.children.iter().position(Option::is_none);
            }
            let Some(slot) = free else {
                el.stats.refused_limit += 1;
                drop(fd); // the client reads EOF
                return;
            };
            let (cfg, factory, board) = (cfg.clone(), factory.clone(), mm.board.clone());
            // The closure owns `fd`: in the master it is dropped (closed) when fork returns.
            let forked = process::fork_child(move |cx| {
                conn_main(cx, fd, listen_fd, udp_fd, cfg, factory, board, slot, drain)
            });
            match forked {
                Ok(pid) => mm.children[slot] = Some(pid),
                Err(e) => {
                    el.stats.refused_limit += 1;
                    if !mm.warned_fork {
                        mm.warned_fork = true;
                        eprintln!("keel: cannot fork for a connection (refusing it): {e}");
                    }
                }
            }
        }),
    )?;
    m.borrow_mut().listener = Some(token);
    if let (Some(sock), Some(udp)) = (udp, &service.udp) {
        let token = control.add_udp(sock, udp())?;
        m.borrow_mut().udp = Some(token);
    }

    control.run()?;

    let mut mm = m.borrow_mut();
    let live: Vec<(usize, Pid)> = mm.live().collect();
    for (slot, pid) in live {
        process::send_signal(pid, Signal::SIGKILL);
        process::reap_blocking(pid);
        retire(&mut mm, slot);
    }
    eprintln!("{}", mm.total(control.stats()));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn conn_main(
    cx: &mut Child,
    fd: OwnedFd,
    listener: RawFd,
    udp: Option<RawFd>,
    cfg: LoopConfig,
    factory: HandlerFactory,
    board: Rc<Board>,
    slot: usize,
    drain: Duration,
) -> i32 {
    // The listening sockets stay open in the master; the child must not keep them alive.
    cx.close_inherited(listener);
    if let Some(udp) = udp {
        cx.close_inherited(udp);
    }
    if !cx.die_with_parent(Signal::SIGTERM) {
        return 0; // the master is gone: so is the server
    }
    unblock_sigchld();
    match serve_conn(fd, cfg, &factory, board, slot, drain) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("keel: connection process {}: {e}", std::process::id());
            1
        }
    }
}

fn serve_conn(
    fd: OwnedFd,
    cfg: LoopConfig,
    factory: &HandlerFactory,
    board: Rc<Board>,
    slot: usize,
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
            Signal::SIGHUP => {}
            _ => el.shutdown_gracefully(drain),
        },
    )?;
    el.exit_when_empty(true);
    el.adopt(fd, factory())?;
    publish_periodically(&mut el, board.clone(), slot);
    let result = el.run();
    board.publish(slot, el.stats());
    result
}

fn retire(mm: &mut Master, slot: usize) {
    let s = mm.board.retire(slot);
    mm.finished.add(&s);
    mm.children[slot] = None;
    mm.reaped += 1;
}

/// Reaps every child that has ended (`waitpid(-1, WNOHANG)` until none).
fn reap(mm: &mut Master) {
    while let Some((pid, how)) = process::reap_one() {
        let Some(slot) = mm.children.iter().position(|c| *c == Some(pid)) else {
            continue;
        };
        retire(mm, slot);
        if how != Exit::Code(0) && !mm.stopping {
            eprintln!("keel: connection process {pid} exited ({how})");
        }
    }
}

fn on_signal(el: &mut EventLoop, m: &Shared, sig: Signal) {
    match sig {
        Signal::SIGCHLD => {
            let mut mm = m.borrow_mut();
            reap(&mut mm);
            if mm.stopping && mm.live().next().is_none() {
                el.stop();
            }
        }
        Signal::SIGUSR2 => {
            let mm = m.borrow();
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
        Signal::SIGHUP => eprintln!("keel: SIGHUP ignored (no configuration to reload)"),
        _ => {
            let mut mm = m.borrow_mut();
            if mm.stopping {
                return;
            }
            mm.stopping = true;
            for token in [mm.listener.take(), mm.udp.take()].into_iter().flatten() {
                el.close_listener(token);
            }
            let live: Vec<Pid> = mm.live().map(|(_, p)| p).collect();
            for &pid in &live {
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
                    eprintln!(
                        "keel: connection process {pid} still running after the drain \
                         timeout; killing it"
                    );
                    process::send_signal(pid, Signal::SIGKILL);
                }
                el.run_after(KILL_MARGIN, |el| el.stop());
            });
        }
    }
}

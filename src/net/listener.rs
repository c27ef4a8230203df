//! Listening sockets and the accept policy.
//!
//! - `accept4(NONBLOCK|CLOEXEC)`: every socket is non-blocking from birth and never leaks into
//!   a child process.
//! - A bounded number of accepts per readiness report, so a connect storm cannot starve the
//!   connections already being served.
//! - EMFILE/ENFILE (DESIGN rule 6): the pending connection cannot be accepted, so a
//!   level-triggered poller would report the listener again at once, forever: the loop would
//!   spin at 100% CPU. The loop keeps one fd in reserve; it closes it, accepts the connection,
//!   closes that (the client sees a clean close rather than a hang), and reopens the reserve.
//!   A configured connection limit is enforced the same way. Every refusal is counted.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustix::net::SocketFlags;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use crate::net::handler::Handler;
use crate::net::log_throttle::{left_out_note, LogThrottle};
use crate::reactor::event::{Interest, Token, Trigger};
use crate::reactor::event_loop::{EventLoop, Source};
use crate::sys::process::SharedCounters;

/// Makes a handler for each accepted connection. Shared (`Arc`, `Sync`) so one listener's
/// factory can serve every loop of a multi-loop server.
pub type HandlerFactory = Arc<dyn Fn() -> Box<dyn Handler> + Send + Sync>;

/// How to open a listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    /// Let several sockets (one per loop or per process) bind the same address; the kernel
    /// spreads incoming connections over them.
    pub reuse_port: bool,
    pub backlog: i32,
    /// SO_SNDBUF / SO_RCVBUF for accepted connections (set on the listener, which Linux
    /// copies to every socket it accepts); `None` leaves the kernel's autotuning alone.
    pub send_buffer: Option<usize>,
    pub recv_buffer: Option<usize>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            reuse_port: false,
            backlog: 4096,
            send_buffer: None,
            recv_buffer: None,
        }
    }
}

/// Binds the UDP socket beside a server's TCP listener. With `reuse_port` (SO_REUSEPORT,
/// which only a process of the same user can share), a reload can bind the socket for a new
/// address on the same port (127.0.0.1:P to 0.0.0.0:P) while this one is still open; without
/// it the two addresses overlap and the second bind fails.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), None)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Binds a non-blocking TCP listener. SO_REUSEADDR is always on, so a restarted server can
/// bind while old connections sit in TIME_WAIT.
pub fn bind_tcp(addr: SocketAddr, opts: &ListenOptions) -> io::Result<TcpListener> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    sock.set_reuse_address(true)?;
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if let Some(n) = opts.send_buffer {
        sock.set_send_buffer_size(n)?;
    }
    if let Some(n) = opts.recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
    sock.listen(opts.backlog)?;
    Ok(sock.into())
}

/// An error from making and binding the socket for `what` (`udp 127.0.0.1:7007`), said with
/// it; but out of fds (making the socket) is left as it is, so that a start that fails for it
/// is explained as fd exhaustion, with the limit, like any other (`server::serve`).
pub fn bind_error(what: impl std::fmt::Display, e: io::Error) -> io::Error {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        return e;
    }
    io::Error::new(e.kind(), format!("cannot bind {what}: {e}"))
}

/// Binds `n` listeners to `addr` as one SO_REUSEPORT group, so that each loop has its own
/// accept queue (the first fixes the port when `addr`'s is 0). SO_REUSEPORT would also let
/// this group join another process's listeners on the port (same user) and silently take a
/// share of their connections; unless `opts.reuse_port` asks for exactly that, the address
/// must be free: a plain bind is tried first and fails if anything listens there. (Best
/// effort: a server that binds the port between that probe and the group's own binds is
/// still joined; the probe cannot stay bound, since the group's `listen` would then fail.)
pub fn bind_tcp_group(
    addr: SocketAddr,
    opts: &ListenOptions,
    n: usize,
) -> io::Result<Vec<TcpListener>> {
    if !opts.reuse_port && addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
        probe.set_reuse_address(true)?;
        if addr.is_ipv6() {
            probe.set_only_v6(true)?;
        }
        probe.bind(&addr.into()).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::AddrInUse {
                " (another server listens there; --reuseport=true shares the port with it)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("cannot bind {addr}: {e}{hint}"))
        })?;
    }
    let group = ListenOptions {
        reuse_port: true,
        ..opts.clone()
    };
    let first = bind_tcp(addr, &group)?;
    let local = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(bind_tcp(local, &group)?);
    }
    Ok(listeners)
}

/// A server's connection limit, shared by all its loops: each takes a permit per accepted
/// connection and gives it back when the connection closes.
pub struct ConnectionLimit {
    max: usize,
    open: Permits,
}

/// Where the permits are counted.
enum Permits {
    /// In this process (the loops of one process share it).
    Local(AtomicUsize),
    /// Across worker processes (prefork), in a mapping shared by them and their master:
    /// word 0 counts the server's open connections, word 1 + `slot` those of the worker in
    /// `slot`, so that the master can give back what a worker that died held
    /// ([`ConnectionLimit::reclaim`]).
    Shared {
        words: Arc<SharedCounters>,
        slot: usize,
    },
}

impl std::fmt::Debug for ConnectionLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimit")
            .field("max", &self.max)
            .field("open", &self.open())
            .finish()
    }
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            max,
            open: Permits::Local(AtomicUsize::new(0)),
        })
    }

    /// The words a limit shared by `workers` processes counts in; make them before forking.
    pub fn shared_words(workers: usize) -> io::Result<Arc<SharedCounters>> {
        SharedCounters::new(1 + workers).map(Arc::new)
    }

    /// The worker in `slot`'s view of a limit of `max` connections shared through `words`.
    pub fn shared(max: usize, words: Arc<SharedCounters>, slot: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            max,
            open: Permits::Shared { words, slot },
        })
    }

    /// In the master, once the worker in `slot` is dead (and before its slot is reused):
    /// gives back the permits it held, which it can no longer release.
    pub fn reclaim(words: &SharedCounters, slot: usize) {
        let held = words.get(1 + slot).swap(0, Ordering::AcqRel);
        words.get(0).fetch_sub(held, Ordering::AcqRel);
    }

    /// Connections holding a permit now.
    pub fn open(&self) -> usize {
        match &self.open {
            Permits::Local(n) => n.load(Ordering::Acquire),
            Permits::Shared { words, .. } => words.get(0).load(Ordering::Acquire) as usize,
        }
    }

    fn try_acquire(&self) -> bool {
        match &self.open {
            Permits::Local(n) => n
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max).then_some(n + 1)
                })
                .is_ok(),
            Permits::Shared { words, slot } => {
                let max = self.max as u64;
                let taken = words
                    .get(0)
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .is_ok();
                if taken {
                    // A worker killed between these two steps leaves one permit taken for
                    // good: the safe side (the other order could make the total wrap).
                    words.get(1 + slot).fetch_add(1, Ordering::AcqRel);
                }
                taken
            }
        }
    }

    fn release(&self) {
        match &self.open {
            Permits::Local(n) => {
                n.fetch_sub(1, Ordering::AcqRel);
            }
            Permits::Shared { words, slot } => {
                // The worker's count first, as in `try_acquire`: killed between the two, it
                // leaks one permit rather than making the total wrap.
                words.get(1 + slot).fetch_sub(1, Ordering::AcqRel);
                words.get(0).fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// How long a starved listener waits before trying again if no connection closes first.
const STARVED_RETRY: Duration = Duration::from_millis(100);

/// Out of fds is said at most this often (seconds).
const OUT_OF_FDS_EVERY: i64 = 10;

static OUT_OF_FDS: LogThrottle = LogThrottle::new(OUT_OF_FDS_EVERY);

/// A listener that cannot be watched again after a starved spell is said at most once in this
/// many seconds (it is retried every [`STARVED_RETRY`]).
static REWATCH_FAILURES: LogThrottle = LogThrottle::new(10);

/// Says that connections are being refused for want of fds. It is the operator's to fix,
/// so it goes to the log, but a flood refuses thousands a second: once every
/// [`OUT_OF_FDS_EVERY`] seconds per process, with the count left out. `what` is the call
/// that failed.
pub fn say_out_of_fds(what: &str, e: io::Error) {
    if let Some(left_out) = OUT_OF_FDS.turn() {
        tracing::warn!(
            "out of file descriptors, refusing connections ({what}: {e}){}; \
             raise --rlimit-nofile or lower --max-conns",
            left_out_note(left_out)
        );
    }
}

enum Refusal {
    Refused,
    /// An admin connection (a listener outside the limit) took the reserve's place: it is
    /// served, so the figures can be read at the moment they matter most.
    Admitted(OwnedFd),
    QueueEmpty,
    NoReserve,
}

/// Takes each accepted socket instead of serving it here: an acceptor loop handing sockets to
/// other loops, a thread or a process per connection. Runs on the listener's loop.
pub type AcceptHook = Box<dyn FnMut(&mut EventLoop, OwnedFd)>;

/// What a listener does with a new connection.
enum OnAccept {
    /// Serve it on this loop with a handler from the factory: within the server's connection
    /// limit when `limited`, outside it otherwise (the admin listener, which must answer when
    /// the server is full, since that is when its figures are wanted).
    Serve {
        factory: HandlerFactory,
        limited: bool,
    },
    /// Give it away (`None` only while the hook runs).
    Hand(Option<AcceptHook>),
}

pub(crate) struct Listener {
    pub(crate) fd: OwnedFd,
    on_accept: OnAccept,
}

impl Listener {
    /// The admin listener's (`add_listener_outside_limit`): its clients speak its own
    /// protocol, never the service's, and are served even at the fd limit.
    fn is_admin(&self) -> bool {
        matches!(self.on_accept, OnAccept::Serve { limited: false, .. })
    }
}

/// Closes a connection the server refuses (over a limit, out of fds) so the client sees a
/// clean close: what it already sent is read and dropped first, since closing a socket with
/// unread bytes sends RST instead of FIN (and a client that wrote before reading would get
/// ECONNRESET rather than EOF). Bounded: at most 64 KiB, never waiting. `note` (the
/// service's refusal, [`LoopConfig::refusal_note`](crate::reactor::LoopConfig)) is sent
/// first if the socket takes it at once; a refusal never waits for a client.
pub fn close_refused(fd: OwnedFd, note: Option<&[u8]>) {
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        match rustix::net::recv(&fd, &mut scratch, rustix::net::RecvFlags::DONTWAIT) {
            Ok((n, _)) if n == scratch.len() => continue,
            _ => break,
        }
    }
    if let Some(note) = note {
        // A fresh socket's buffer takes a short note whole; a partial or failed send is
        // left as it is (the client then sees a cut note or none, and the close).
        let _ = rustix::net::send(
            &fd,
            note,
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        );
    }
    drop(fd);
}

/// The most connections a listener about to close accepts from its queue: its backlog.
const MAX_QUEUED: usize = 65_536;

/// At most this many refused connections linger on one loop at once ([`EventLoop::refuse`]);
/// past it a refusal is [`close_refused`] at once, so a flood cannot take the fds that the
/// refusals exist to protect.
const MAX_REFUSING: usize = 256;

/// The handler of a refused connection: it says the service's refusal note, if any, and
/// closes at once, gracefully; it counts itself out of `refusing` when it is gone.
struct Refused {
    refusing: Arc<AtomicUsize>,
    note: Option<Arc<[u8]>>,
}

impl Handler for Refused {
    fn on_connect(&mut self, cx: &mut crate::net::handler::Ctx<'_>) {
        if let Some(note) = &self.note {
            cx.write(note);
        }
        cx.close();
    }

    /// Bytes that come before the close has begun: dropped (after it, the loop drops them).
    fn on_data(&mut self, _: &mut crate::net::handler::Ctx<'_>, input: &mut crate::net::Buffer) {
        input.clear();
    }
}

impl Drop for Refused {
    fn drop(&mut self) {
        self.refusing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The handler that refuses a connection over a limit with a close the client sees as clean,
/// whenever its bytes arrive: `note` is queued, the connection is closed as a served one is
/// (what is queued, then FIN), then what comes in is read and dropped until the client's FIN
/// (or the linger timeout), and only then is the socket closed. [`close_refused`] drains only
/// what has already arrived, so a request that lands a moment after it finds the socket
/// closed and draws a reset. None when `refusing` (those still closing) is at its bound: the
/// caller then uses `close_refused`. Not for a refusal for want of fds: that one has none to
/// linger with.
pub(crate) fn refusal(
    refusing: &Arc<AtomicUsize>,
    note: Option<&Arc<[u8]>>,
) -> Option<Box<dyn Handler>> {
    refusing
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < MAX_REFUSING).then_some(n + 1)
        })
        .ok()?;
    Some(Box::new(Refused {
        refusing: refusing.clone(),
        note: note.cloned(),
    }))
}

impl EventLoop {
    /// Refuses an accepted connection (over a limit) on this loop: see [`refusal`]. It is
    /// counted as refused (by the caller), not as open, and a loop that stops does not wait
    /// for it: closed at the loop's end, its client may see a reset instead of the FIN it
    /// already has.
    pub fn refuse(&mut self, fd: OwnedFd) {
        let Some(handler) = refusal(&self.refusing, self.cfg.refusal_note.as_ref()) else {
            close_refused(fd, self.cfg.refusal_note.as_deref());
            return;
        };
        // `adopt` counts it open and calls `on_connect`, which starts its close; the
        // deferred close has not run yet, so the connection is still there to mark. A socket
        // that cannot be watched (select at FD_SETSIZE) is closed by the failed adopt.
        if let Ok(id) = self.adopt(fd, handler) {
            if let Some(conn) = self.conn_mut(id) {
                conn.refused = true;
                self.stats.open -= 1;
            }
        }
    }
}

/// The fd held back for EMFILE. /dev/null is cheap and always there.
pub(crate) fn open_reserve_fd() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

impl EventLoop {
    /// Serves `listener` on this loop: each accepted connection gets a handler from `factory`.
    pub fn add_listener(
        &mut self,
        listener: TcpListener,
        factory: HandlerFactory,
    ) -> io::Result<Token> {
        let limited = true;
        self.insert_listener(listener, OnAccept::Serve { factory, limited })
    }

    /// [`EventLoop::add_listener`] for connections that neither count against the server's
    /// connection limit (`--max-conns`) nor are refused by it: the admin listener's
    /// (/metrics, /status), whose scrapes must get through when the site is saturated. Meant
    /// for a listener on a trusted address.
    pub fn add_listener_outside_limit(
        &mut self,
        listener: TcpListener,
        factory: HandlerFactory,
    ) -> io::Result<Token> {
        let limited = false;
        self.insert_listener(listener, OnAccept::Serve { factory, limited })
    }

    /// Listens on this loop but hands every accepted socket to `hook` (socket options already
    /// set) instead of serving it here. The EMFILE policy and accept bounds apply as usual.
    pub fn add_acceptor(&mut self, listener: TcpListener, hook: AcceptHook) -> io::Result<Token> {
        self.insert_listener(listener, OnAccept::Hand(Some(hook)))
    }

    fn insert_listener(&mut self, listener: TcpListener, on_accept: OnAccept) -> io::Result<Token> {
        listener.set_nonblocking(true)?;
        let fd = OwnedFd::from(listener);
        let token = self.insert_source(Source::Listener(Listener { fd, on_accept }));
        if let Err(e) = self.register(token, Interest::READABLE) {
            self.remove_source(token);
            return Err(e);
        }
        Ok(token)
    }

    /// Stops listening: the socket is closed, so new connections are refused by the kernel.
    /// Also closes UDP endpoints; any other token is left alone.
    pub fn close_listener(&mut self, token: Token) {
        if !matches!(
            self.slot(token).map(|s| &s.source),
            Some(Source::Listener(_) | Source::Udp(_))
        ) {
            return;
        }
        match self.remove_source(token) {
            Some(Source::Listener(l)) => self.poller.deregister_before_close(l.fd.as_fd()),
            Some(Source::Udp(u)) => self.poller.deregister_before_close(u.sock.as_fd()),
            _ => unreachable!("checked above"),
        }
    }

    /// Closes every TCP listener of this loop (UDP sockets stay): used when a reload moves
    /// the server to a new address. Connections already accepted are not affected, and those
    /// still in a listener's queue are accepted first: closing a listener resets them.
    pub fn close_tcp_listeners(&mut self) {
        let listeners: Vec<Token> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.source, Source::Listener(_)))
            .map(|(i, s)| Token(((s.generation as u64) << 32) | i as u64))
            .collect();
        for &token in &listeners {
            self.accept_queued(token);
        }
        for token in listeners {
            self.close_listener(token);
        }
    }

    /// Accepts every connection waiting in `token`'s queue (at most [`MAX_QUEUED`]), each
    /// served as any accepted connection is. A refusal for want of fds ends it: the rest
    /// stay queued.
    fn accept_queued(&mut self, token: Token) {
        for _ in 0..MAX_QUEUED {
            let Some(Source::Listener(l)) = self.slot(token).map(|s| &s.source) else {
                return;
            };
            let accepted = {
                let _shared = fd_table_shared();
                rustix::net::accept_with(&l.fd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
            };
            match accepted {
                Ok(fd) => self.accepted(token, fd),
                Err(rustix::io::Errno::CONNABORTED | rustix::io::Errno::INTR) => {}
                Err(_) => return, // EAGAIN: the queue is empty; anything else: leave it
            }
        }
    }

    /// Closes every UDP socket of the loop (a reload that moves the address).
    pub fn close_udp_sockets(&mut self) {
        self.close_listeners_where(|s| matches!(s, Source::Udp(_)));
    }

    fn close_listeners_where(&mut self, which: impl Fn(&Source) -> bool) {
        let tokens: Vec<Token> = self
            .slots
            .iter()
            .filter(|(_, s)| which(&s.source))
            .map(|(i, s)| Token(((s.generation as u64) << 32) | i as u64))
            .collect();
        for t in tokens {
            self.close_listener(t);
        }
    }

    pub(crate) fn accept_ready(&mut self, token: Token) {
        let max = self.cfg.max_accepts_per_wakeup;
        for _ in 0..max {
            let Some(Source::Listener(l)) = self.slot(token).map(|s| &s.source) else {
                return;
            };
            let accepted = {
                let _shared = fd_table_shared();
                let res =
                    rustix::net::accept_with(&l.fd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC);
                if res.is_ok() && self.reserve_fd.is_none() {
                    // Lost earlier (an fd opened elsewhere took the number a dance freed):
                    // fds are to be had again, so hold one back now, or the next EMFILE would
                    // leave clients hanging in the queue. Under the lock, like the accept.
                    self.reserve_fd = open_reserve_fd();
                }
                res
            };
            match accepted {
                Ok(fd) => self.accepted(token, fd),
                Err(rustix::io::Errno::AGAIN) => return,
                // Linux reserves the new fd before looking at the queue, so EMFILE does not
                // even say a connection is waiting: the reserve dance finds out.
                Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => {
                    match self.refuse_with_reserve(token) {
                        Refusal::Refused => {
                            self.stats.refused_emfile += 1;
                            say_out_of_fds("accept", e.into());
                        }
                        Refusal::Admitted(fd) => {
                            // Served, so not counted as refused; the shortage is still said.
                            say_out_of_fds(
                                "accept (an admin connection took the reserve fd)",
                                e.into(),
                            );
                            self.accepted(token, fd);
                            // No reserve until an fd frees (the next accept takes one back):
                            // out of fds, stop here rather than dance without one.
                            return;
                        }
                        Refusal::QueueEmpty => return,
                        Refusal::NoReserve => {
                            // Worse than a refusal: clients wait in the queue until fds free.
                            say_out_of_fds(
                                "accept, with no fd in reserve to refuse with",
                                e.into(),
                            );
                            self.starve_listener(token);
                            return;
                        }
                    }
                }
                // The client gave up between SYN and accept, or a signal: try the next one.
                Err(rustix::io::Errno::CONNABORTED)
                | Err(rustix::io::Errno::INTR)
                | Err(rustix::io::Errno::PROTO) => {}
                Err(_) => {
                    // ENOBUFS/ENOMEM: the kernel is short of memory. Back off.
                    self.starve_listener(token);
                    return;
                }
            }
        }
        // Bound reached with connections possibly still pending: an edge poller would not
        // report them again, so come back before the next wait.
        if self.poller.trigger() == Trigger::Edge {
            self.ready.push(token);
        }
    }

    fn accepted(&mut self, token: Token, fd: OwnedFd) {
        let (factory, limited) = match self.slot_mut(token).map(|s| &mut s.source) {
            Some(Source::Listener(Listener {
                on_accept: OnAccept::Serve { factory, limited },
                ..
            })) => (factory.clone(), *limited),
            Some(Source::Listener(Listener {
                on_accept: OnAccept::Hand(hook),
                ..
            })) => {
                let Some(mut hook) = hook.take() else { return };
                self.set_socket_options(&fd);
                self.stats.accepted += 1;
                hook(self, fd);
                if let Some(Source::Listener(Listener {
                    on_accept: OnAccept::Hand(slot),
                    ..
                })) = self.slot_mut(token).map(|s| &mut s.source)
                {
                    *slot = Some(hook);
                }
                return;
            }
            _ => return,
        };
        self.set_socket_options(&fd);
        self.stats.accepted += 1;
        // A refusal is counted (and said) there.
        let _ = self.adopt_within(fd, &*factory, limited);
    }

    /// Serves an accepted socket on this loop within the server's connection limit (shared by
    /// all its loops): beyond it, the socket is closed at once, a clean close for the client,
    /// and counted. So is a socket the engine cannot watch (select at FD_SETSIZE), and that is
    /// also said once, loudly. Used by this loop's listeners and by an acceptor loop's
    /// hand-off.
    pub fn adopt_incoming(
        &mut self,
        fd: OwnedFd,
        factory: &(dyn Fn() -> Box<dyn Handler> + Send + Sync),
    ) -> io::Result<()> {
        self.adopt_within(fd, factory, true)
    }

    /// [`EventLoop::adopt_incoming`], within the connection limit or (`limited` false)
    /// outside it.
    fn adopt_within(
        &mut self,
        fd: OwnedFd,
        factory: &(dyn Fn() -> Box<dyn Handler> + Send + Sync),
        limited: bool,
    ) -> io::Result<()> {
        let limit = self.cfg.connection_limit.as_ref().filter(|_| limited);
        let limited = match limit {
            Some(limit) if !limit.try_acquire() => {
                self.stats.refused_limit += 1;
                self.refuse(fd); // the client reads EOF
                return Ok(());
            }
            Some(_) => true,
            None => false,
        };
        match self.adopt(fd, factory()) {
            Ok(id) => {
                if let Some(conn) = self.conn_mut(id) {
                    conn.holds_permit = limited;
                } else if limited {
                    self.release_permit();
                }
                Ok(())
            }
            Err(e) => {
                if limited {
                    self.release_permit();
                }
                // The fd was closed: the client sees a clean close.
                self.stats.refused_limit += 1;
                if !self.warned_register {
                    self.warned_register = true;
                    tracing::warn!(
                        "refusing connections the {} engine cannot watch: {e}",
                        self.cfg.engine
                    );
                }
                Err(e)
            }
        }
    }

    pub(crate) fn release_permit(&self) {
        if let Some(limit) = &self.cfg.connection_limit {
            limit.release();
        }
    }

    /// Parks a listener that cannot accept now (no fd to spare even for the reserve dance, or
    /// no kernel memory). A level-triggered poller would report it on every wait, so its
    /// interest is dropped; it is revisited when a connection of this loop closes, or after
    /// [`STARVED_RETRY`] in case none does (the fds may be held by other threads).
    fn starve_listener(&mut self, token: Token) {
        if self.accept_starved.contains(&token) {
            return;
        }
        self.accept_starved.push(token);
        if self.poller.trigger() == Trigger::Level {
            let _ = self.reregister(token, Interest::NONE);
        }
        self.retry_starved();
    }

    /// Schedules [`unstarve_listeners`](Self::unstarve_listeners) in [`STARVED_RETRY`],
    /// unless it already is: it also runs at every close, which must not start a chain of
    /// timers each time.
    fn retry_starved(&mut self) {
        if !self.starved_retry {
            self.starved_retry = true;
            self.run_after(STARVED_RETRY, |el| {
                el.starved_retry = false;
                el.unstarve_listeners();
            });
        }
    }

    pub(crate) fn unstarve_listeners(&mut self) {
        if self.accept_starved.is_empty() {
            return;
        }
        let level = self.poller.trigger() == Trigger::Level;
        let mut still = Vec::new();
        for token in std::mem::take(&mut self.accept_starved) {
            if self.slot(token).is_none() {
                continue;
            }
            if !level {
                self.ready.push(token);
            } else if let Err(e) = self.reregister(token, Interest::READABLE) {
                // Watched no more, it would never be reported again: tried once more later.
                if let Some(left_out) = REWATCH_FAILURES.turn() {
                    tracing::warn!(
                        "cannot watch a listener again, retrying: {e}{}",
                        left_out_note(left_out)
                    );
                }
                still.push(token);
            }
        }
        if !still.is_empty() {
            self.accept_starved.extend(still);
            self.retry_starved();
        }
    }

    fn set_socket_options(&self, fd: &OwnedFd) {
        let sock = SockRef::from(fd);
        if self.cfg.tcp_nodelay {
            let _ = sock.set_tcp_nodelay(true);
        }
        if let Some(ka) = self.cfg.keepalive {
            let params = TcpKeepalive::new()
                .with_time(ka.idle)
                .with_interval(ka.interval)
                .with_retries(ka.count);
            let _ = sock.set_tcp_keepalive(&params);
        }
    }

    /// The EMFILE dance: free the reserve, accept and close one pending connection, reopen.
    /// No other loop of the process accepts meanwhile (see [`FD_TABLE`]). The admin
    /// listener's connection is served in the reserve's place instead: out of fds is when its
    /// figures matter most, and it costs the process no more than the reserve did.
    fn refuse_with_reserve(&mut self, token: Token) -> Refusal {
        let _exclusive = fd_table_exclusive();
        let reserve = self.reserve_fd.take().or_else(open_reserve_fd);
        let Some(reserve) = reserve else {
            return Refusal::NoReserve;
        };
        drop(reserve);
        let (accepted, admin) = match self.slot(token).map(|s| &s.source) {
            Some(Source::Listener(l)) => (
                rustix::net::accept_with(&l.fd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC),
                l.is_admin(),
            ),
            _ => (Err(rustix::io::Errno::BADF), false),
        };
        let refusal = match accepted {
            Ok(fd) if admin => return Refusal::Admitted(fd),
            // Closed at once: the client sees a clean close instead of a hang.
            Ok(fd) => {
                // Never an admin client (served above): the service's words are for its own.
                close_refused(fd, self.cfg.refusal_note.as_deref());
                Refusal::Refused
            }
            Err(rustix::io::Errno::AGAIN) => Refusal::QueueEmpty,
            Err(_) => Refusal::NoReserve,
        };
        self.reserve_fd = open_reserve_fd();
        refusal
    }
}

/// The fd table is the process's, not a loop's: while one loop has freed its reserve to
/// accept and refuse a client (the EMFILE dance), a sibling loop's accept would take the freed
/// number, hold a connection in the reserve's place, and leave the dancer with no reserve,
/// its clients beyond the limit hanging in its queue (with reuseport, each loop has its own).
/// So every accept of the process holds this shared, and the dance holds it alone. An accept
/// takes it uncontended but for a dance, which happens only at the fd limit. Other fd
/// allocations (an HTTP handler opening a file, say) are not covered: they are rare at the
/// limit, and a reserve they take is taken back at the loop's next accept.
static FD_TABLE: RwLock<()> = RwLock::new(());

/// Held around an accept (see [`FD_TABLE`]); leader/followers' own accept takes it too.
pub(crate) fn fd_table_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FD_TABLE.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held around the EMFILE dance (see [`FD_TABLE`]).
pub(crate) fn fd_table_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    FD_TABLE.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// A refused client that wrote before it read gets EOF, not ECONNRESET.
    #[test]
    fn a_refused_client_that_spoke_first_sees_eof() {
        for drain in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            client.write_all(&[b'x'; 10_000]).unwrap();
            let (server, _) = listener.accept().unwrap();
            // The bytes are in the server's receive queue before it refuses.
            std::thread::sleep(Duration::from_millis(50));
            if drain {
                close_refused(OwnedFd::from(server), None);
            } else {
                drop(server);
            }
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let got = client.read(&mut [0u8; 16]);
            if drain {
                assert_eq!(got.unwrap(), 0, "EOF");
            } else {
                // What a plain close does, which is why close_refused exists.
                let e = got.expect_err("a plain close with unread bytes resets");
                assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
            }
        }
    }
}

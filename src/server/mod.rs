//! Running a server under one of the notes' concurrency models, chosen at run time.
//!
//! | model | module | shape |
//! |---|---|---|
//! | `multi-reactor` (default) | [`multi_reactor`] | N event loops, each owning its connections for life |
//! | `prefork` | [`prefork`] | a master process forks N workers that each run a loop |
//! | `half-sync` | [`half_sync`] | one reactor thread does I/O, a worker pool runs handlers |
//! | `leader-followers` | [`leader_followers`] | threads take turns waiting on one shared poller |
//! | `thread-per-conn` | [`thread_per_conn`] | a thread (running a one-connection loop) per connection |
//! | `process-per-conn` | [`process_per_conn`] | a forked process per connection |
//!
//! Every model runs the same [`Service`] (the same handler code), prints the same `listening`
//! lines, answers SIGUSR2 with the same `stats` line (summed over its loops) and stops the same
//! way on SIGINT/SIGTERM: listeners close at once, connections drain gracefully, exit 0.

pub mod admin;
mod admission;
pub mod control;
mod forking;
pub mod half_sync;
pub mod leader_followers;
pub mod multi_reactor;
pub mod prefork;
pub mod process_per_conn;
pub mod reload;
pub mod thread_per_conn;

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::net::listener::{bind_error, ConnectionLimit};
use crate::net::{bind_tcp, DatagramHandler, HandlerFactory, ListenOptions};
use crate::reactor::{Engine, Keepalive, LoopConfig};

/// The concurrency model a server runs under.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Model {
    #[default]
    MultiReactor,
    Prefork,
    HalfSync,
    LeaderFollowers,
    ThreadPerConn,
    ProcessPerConn,
}

impl Model {
    pub const ALL: [Model; 6] = [
        Model::MultiReactor,
        Model::Prefork,
        Model::HalfSync,
        Model::LeaderFollowers,
        Model::ThreadPerConn,
        Model::ProcessPerConn,
    ];

    /// Whether handlers run on a loop's own thread, with the whole loop at hand
    /// ([`crate::net::Ctx::event_loop`]): what a handler that opens connections needs.
    pub fn runs_handlers_on_loops(self) -> bool {
        !matches!(self, Model::HalfSync | Model::LeaderFollowers)
    }

    pub fn name(self) -> &'static str {
        match self {
            Model::MultiReactor => "multi-reactor",
            Model::Prefork => "prefork",
            Model::HalfSync => "half-sync",
            Model::LeaderFollowers => "leader-followers",
            Model::ThreadPerConn => "thread-per-conn",
            Model::ProcessPerConn => "process-per-conn",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown model {s:?}: expected one of multi-reactor, prefork, half-sync, \
                 leader-followers, thread-per-conn, process-per-conn"
                )
            })
    }
}

/// How a multi-loop server spreads accepted connections over its loops.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum AcceptStrategy {
    /// One listening socket per loop with SO_REUSEPORT: the kernel spreads connections.
    #[default]
    ReusePort,
    /// One listener on an acceptor loop that hands sockets round-robin to the others.
    Acceptor,
}

impl FromStr for AcceptStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reuseport" => Ok(AcceptStrategy::ReusePort),
            "acceptor" => Ok(AcceptStrategy::Acceptor),
            _ => Err(format!(
                "unknown accept strategy {s:?}: expected reuseport or acceptor"
            )),
        }
    }
}

impl fmt::Display for AcceptStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcceptStrategy::ReusePort => "reuseport",
            AcceptStrategy::Acceptor => "acceptor",
        })
    }
}

/// What every server subcommand accepts.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub engine: Engine,
    pub model: Model,
    /// Loops, worker threads or worker processes, by model; for the per-connection models, the
    /// most connections served at once.
    pub threads: usize,
    pub accept: AcceptStrategy,
    pub idle_timeout: Option<Duration>,
    pub linger_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: Option<usize>,
    pub keepalive: Option<Keepalive>,
    pub listen_opts: ListenOptions,
    /// Lock this file and write our pid to it; refuse to start if another process holds it.
    pub pid_file: Option<PathBuf>,
    /// Raise RLIMIT_NOFILE to this many fds at start.
    pub rlimit_nofile: Option<u64>,
    /// Detach from the terminal once listening (double fork, setsid).
    pub daemon: bool,
    /// Run as this user (and group) once the listeners are bound.
    pub user: Option<String>,
    pub group: Option<String>,
    /// The admin listener (/metrics, /status).
    pub admin: Option<SocketAddr>,
    /// The log's filter and target, defaults filled in: set up once at start, compared only so
    /// that a reload that changes them says it cannot apply them.
    pub log: Option<(String, crate::ops::log::LogTarget)>,
}

impl ServerOptions {
    /// The loops' settings for serving `service` with these options.
    pub fn loop_config(&self, service: &Service) -> LoopConfig {
        LoopConfig {
            engine: self.engine,
            idle_timeout: self.idle_timeout,
            linger_timeout: self.linger_timeout,
            connection_limit: self.max_connections.map(ConnectionLimit::new),
            keepalive: self.keepalive,
            refusal_note: service.refusal_note.clone(),
            ..LoopConfig::default()
        }
    }
}

/// Makes the UDP side of a service, once per loop or process that serves it.
pub type DatagramFactory = Arc<dyn Fn() -> Box<dyn DatagramHandler> + Send + Sync>;

/// A server's logic: the same under every model.
#[derive(Clone)]
pub struct Service {
    /// "echo", "http"...: how /metrics names the server.
    pub name: &'static str,
    pub factory: HandlerFactory,
    /// UDP on the same port as TCP, if the service has a datagram side.
    pub udp: Option<DatagramFactory>,
    /// Rebuilds the factory from the configuration at SIGHUP (see [`reload`]).
    pub reload: Option<reload::Reloader>,
    /// What a client the server refuses is told before the close
    /// ([`LoopConfig::refusal_note`]).
    pub refusal_note: Option<Arc<[u8]>>,
}

/// The number of CPUs, the default for `--threads`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves `service` under the model `opts.model` until SIGINT or SIGTERM.
pub fn serve(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    if opts.threads == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--threads must be at least 1",
        ));
    }
    if let Some(want) = opts.rlimit_nofile {
        let (now, refused) = crate::ops::rlimit::raise_nofile(want);
        if let Some(why) = refused {
            eprintln!("keel: {why}; the fd limit in force is {now}");
        }
    }
    // Before binding and before the `listening` lines: a script waiting for them must not
    // take a server that is about to exit for want of its user for a started one.
    if opts.user.is_some() || opts.group.is_some() {
        crate::ops::privileges::look_up(opts.user.as_deref(), opts.group.as_deref())?;
    }
    // Before binding: a second instance is refused with the running one's pid, not with a
    // less telling "address in use". Held (and removed at the end) for the server's life.
    if let Some(path) = &opts.pid_file {
        *pid_file() = Some(crate::ops::pidfile::PidFile::acquire(path)?);
    }
    let result = serve_holding_pid_file(opts, service).map_err(explain_fd_exhaustion);
    pid_file().take(); // removes the file (only in the process that wrote it)
    result
}

/// A thread that could not be created (the kernel's thread or process limit, RLIMIT_NPROC,
/// or memory): said with the thread it was to be, since "Resource temporarily unavailable"
/// alone names nothing. (Creating a thread takes no fd: this never hides an EMFILE.)
pub(crate) fn thread_not_started(name: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot start thread {name}: {e}"))
}

/// `serve` returns an error only when the server cannot start (at run time EMFILE is the
/// listener's to absorb, see `net::listener`). EMFILE then means the fd limit is too low for
/// what a start opens (per loop: an epoll, a waker, a listener, the EMFILE reserve): said
/// with the limit and the way to raise it, not as a bare "Too many open files".
fn explain_fd_exhaustion(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ENFILE) {
        return io::Error::new(
            e.kind(),
            format!(
                "out of file descriptors while starting: the system's file table is full \
                 (fs.file-max), not this process's limit: {e}"
            ),
        );
    }
    if e.raw_os_error() != Some(libc::EMFILE) {
        return e;
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    io::Error::new(
        e.kind(),
        format!(
            "out of file descriptors while starting (the limit in force is {limit}; raise it \
             with --rlimit-nofile): {e}"
        ),
    )
}

/// Everything `serve` does once the pid file is held: whatever way this returns, the caller
/// then lets the file go.
fn serve_holding_pid_file(opts: &ServerOptions, service: &Service) -> io::Result<()> {
    admin::bind(opts, service.name)?;
    let service = &reload::install(service, opts);
    tracing::info!(
        "{} server starting: {} model, {} thread{}, {} engine, on {}",
        service.name,
        opts.model,
        opts.threads,
        if opts.threads == 1 { "" } else { "s" },
        opts.engine,
        opts.listen
    );
    match opts.model {
        Model::MultiReactor => multi_reactor::run(opts, service),
        Model::Prefork => prefork::run(opts, service),
        Model::HalfSync => half_sync::run(opts, service),
        Model::LeaderFollowers => leader_followers::run(opts, service),
        Model::ThreadPerConn => thread_per_conn::run(opts, service),
        Model::ProcessPerConn => process_per_conn::run(opts, service),
    }
}

/// Ends the process at once, exit 0 as a drained stop: the kernel closes what is still open,
/// but the pid file is removed and the log flushed first.
fn exit_now() -> ! {
    // Not waiting on the pid file's lock: a thread stuck in a handler may be holding it.
    if let Ok(mut held) = PID_FILE.try_lock() {
        held.take();
    }
    crate::ops::log::flush_all();
    std::process::exit(0)
}

/// Set once this process begins to stop (SIGTERM, SIGINT), whatever its model.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process as stopping; true the first time.
pub(crate) fn mark_stopping() -> bool {
    !STOPPING.swap(true, std::sync::atomic::Ordering::SeqCst)
}

/// The process is stopping: a SIGHUP now must not reload, since a reload could open
/// listeners again and take new clients into a server on its way out.
pub(crate) fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::SeqCst)
}

/// True for the SIGINT or SIGTERM that starts a stop. Another one while that stop drains is
/// the operator insisting (Ctrl-C twice): it is said, and the process ends at once rather
/// than make them wait out `--drain-timeout` or reach for SIGKILL. For the models that serve
/// in this process; the forking masters do the same with their children (`forking`).
pub(crate) fn first_stop_signal(sig: nix::sys::signal::Signal) -> bool {
    if mark_stopping() {
        return true;
    }
    tracing::warn!("{sig:?} again while stopping: exiting now, without waiting for the drain");
    exit_now()
}

/// How long past the drain deadline a stop may still take before [`arm_stop_watchdog`] ends
/// the process.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The last resort of a stop (SIGTERM, SIGINT), for the models that serve in this process.
/// `--drain-timeout` bounds the whole stop, but a loop acts on its drain deadline only
/// between callbacks, and a handler blocked for longer (a stuck disk, `--work-ms`) would hold
/// the process past it, until a supervisor's SIGKILL. This thread waits out the deadline and
/// a grace second, then ends the process itself, exit 0 as a drained stop: the kernel closes
/// what is still open, the log is flushed and the pid file removed first. A stop that ends
/// in time never hears from it. Armed once.
pub(crate) fn arm_stop_watchdog(drain: Duration) {
    static ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if ARMED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("keel-stop".into())
        .spawn(move || {
            std::thread::sleep(drain + STOP_GRACE);
            tracing::error!(
                "still stopping {STOP_GRACE:?} after the drain deadline: a handler is blocked; \
                 exiting now (no final stats line)"
            );
            exit_now();
        });
    if let Err(e) = spawned {
        tracing::warn!("no stop watchdog ({e}): a blocked handler can hold the stop");
    }
}

/// The server's pid file, held for its whole life. Process-wide because it is taken before
/// the model runs and rewritten after daemonizing, deep inside the model's start-up.
fn pid_file() -> std::sync::MutexGuard<'static, Option<crate::ops::pidfile::PidFile>> {
    PID_FILE.lock().unwrap_or_else(|e| e.into_inner())
}

static PID_FILE: std::sync::Mutex<Option<crate::ops::pidfile::PidFile>> =
    std::sync::Mutex::new(None);

/// Binds the TCP listener (and, for a service with a UDP side, the UDP socket on the same
/// port) and prints the `listening` lines scripts wait for (docs/cli-contract.md).
pub(crate) fn bind_and_announce(
    opts: &ServerOptions,
    service: &Service,
) -> io::Result<(TcpListener, Option<UdpSocket>)> {
    let listener = bind_tcp(opts.listen, &opts.listen_opts)?;
    let local = listener.local_addr()?;
    let udp = match service.udp {
        Some(_) => Some(UdpSocket::bind(local).map_err(|e| bind_error(format!("udp {local}"), e))?),
        None => None,
    };
    announce(opts, local, udp.is_some())?;
    Ok((listener, udp))
}

/// Called by every model once its sockets are bound and before it starts any thread or worker
/// process: prints the `listening` lines (so bind errors and these lines reach the terminal),
/// then drops privileges, detaches if asked and records the final pid. The model says
/// [`started`] when it serves.
pub(crate) fn announce(opts: &ServerOptions, local: SocketAddr, udp: bool) -> io::Result<()> {
    {
        let mut out = io::stdout().lock();
        let said = writeln!(out, "listening tcp {local}")
            .and_then(|()| match udp {
                true => writeln!(out, "listening udp {local}"),
                false => Ok(()),
            })
            .and_then(|()| out.flush());
        match said {
            // Whoever started us stopped reading (it had the line it waited for, or it went
            // away): the server still serves. Only an error of another kind is one.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                tracing::debug!("the listening lines found no reader: {e}");
            }
            other => other?,
        }
    }
    if opts.user.is_some() || opts.group.is_some() {
        crate::ops::privileges::drop_to(opts.user.as_deref(), opts.group.as_deref())?;
    }
    if opts.daemon {
        // The log writers' threads would keep the fork from being safe (and are not carried
        // into the daemon): end them, fork, and start them again in the daemon.
        let parked = crate::ops::log::park_for_fork();
        let daemonized = crate::sys::process::daemonize();
        crate::ops::log::unpark(parked);
        let detached = daemonized?;
        DAEMONIZED.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(pf) = pid_file().as_mut() {
            pf.rewrite()?;
        }
        // `keel --daemon` returns when the model has started what serves ([`started`]).
        *waiting_command() = Some(detached);
    }
    Ok(())
}

/// Called by every model once what serves is started (its loops, threads or first worker
/// processes), just before it runs its control loop: only now may `keel --daemon` return 0,
/// and only now is systemd told READY. A model that fails before this point ends the process
/// without the word, so the command the user ran exits 1 (docs/cli-contract.md).
pub(crate) fn started() {
    if let Some(detached) = waiting_command().take() {
        detached.ready();
    }
    crate::ops::notify::ready();
}

/// A daemon that will not start, for `why`, before [`started`]: the command the user ran says
/// it (the daemon's stderr is /dev/null). Nothing happens after `started` or without
/// `--daemon`.
pub fn failed_to_start(why: &str) {
    if let Some(detached) = waiting_command().take() {
        detached.fail(why);
    }
}

/// In a process forked before [`started`]: closes its copy of the handshake pipe, so that only
/// the server itself can hold up (or end) the wait of the command the user ran.
pub(crate) fn forget_waiting_command() {
    drop(waiting_command().take());
}

/// Writes a `stats` line (SIGUSR2's, the final one) where it can be read: on stderr, where
/// scripts parse it, and under `--daemon`, whose stderr is /dev/null, in the log too.
pub(crate) fn report_stats(stats: &crate::reactor::LoopStats) {
    let line = stats.to_string();
    crate::ops::stderr::say(&line);
    if daemonized() {
        tracing::info!("{line}");
    }
}

/// Whether this process detached (`--daemon`): its stderr is `/dev/null` since, so a fatal
/// error must go to the log to be seen.
pub fn daemonized() -> bool {
    DAEMONIZED.load(std::sync::atomic::Ordering::Relaxed)
}

static DAEMONIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn waiting_command() -> std::sync::MutexGuard<'static, Option<crate::sys::process::Detached>> {
    WAITING_COMMAND.lock().unwrap_or_else(|e| e.into_inner())
}

/// The daemon's end of the start-up handshake, from [`announce`] until [`started`].
static WAITING_COMMAND: std::sync::Mutex<Option<crate::sys::process::Detached>> =
    std::sync::Mutex::new(None);

//! The `keel` command: every server and tool of the project behind one binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use keel::bench::chat::ChatLoadOptions;
use keel::bench::pingpong::{self, PingpongOptions};
use keel::net::{Handler, HandlerFactory};
use keel::ops::config::{
    self, ChatFileSettings, HttpFileSettings, ProxyFileSettings, Section, ServerSettings,
};
use keel::reactor::Engine;
use keel::server::{self, AcceptStrategy, Model, ServerOptions, Service};
use keel::services::chat::{self, client::ClientOptions, room::Room};
use keel::services::proxy::{self, Backends, SharedRound};
use keel::services::{discard::Discard, echo::Echo, echo::UdpEcho};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "A Linux high-performance network server framework"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// TCP echo, and UDP echo on the same port.
    Echo(ServerArgs),
    /// Reads and drops everything; counts bytes.
    Discard(ServerArgs),
    /// HTTP/1.1 static-file server (with no --root: a built-in welcome page on 127.0.0.1:8080).
    Http(HttpArgs),
    /// TCP proxy and load balancer: each client is relayed to a backend, round-robin, with
    /// failover and half-close passed through.
    Proxy(ProxyArgs),
    /// Chat room over length-prefixed frames, with heartbeats: every member hears every
    /// message, whichever loop it is on.
    Chat(ChatArgs),
    /// Terminal client for `keel chat`: lines from stdin are said to the room (`/nick NAME`
    /// renames), what the room says is printed; end of input leaves.
    ChatClient(ChatClientArgs),
    /// Checks a configuration file, like `nginx -t`: prints every error (FILE:LINE: key ...),
    /// exits 1 if there is any, 0 if the file is valid.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Load generators.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Every option is optional here: an option not given on the command line comes from the
/// `--config` file's section for this server, else from the built-in default
/// (`keel::ops::config::ServerSettings::to_options`).
#[derive(Args)]
struct ServerArgs {
    /// TOML configuration file; its section for this server ([echo], [discard], [http], [proxy], [chat]) sets
    /// the defaults, options given on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (IP:PORT; port 0 picks a free one) [default: 127.0.0.1:7007;
    /// http: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Readiness engine: select, poll, epoll-lt, epoll-et, uring [default: epoll-et].
    #[arg(long)]
    engine: Option<Engine>,
    /// Concurrency model: multi-reactor, prefork, half-sync, leader-followers,
    /// thread-per-conn, process-per-conn [default: multi-reactor].
    #[arg(long)]
    model: Option<Model>,
    /// Loops / worker threads / worker processes (default: number of CPUs); for the
    /// per-connection models, the most connections served at once. 1 to 10000.
    #[arg(long, value_parser = config::parse_threads)]
    threads: Option<usize>,
    /// How multi-reactor spreads connections: reuseport (a listener per loop) or acceptor
    /// (one listener, round-robin hand-off) [default: reuseport].
    #[arg(long)]
    accept: Option<AcceptStrategy>,
    /// Close connections idle for this many seconds.
    #[arg(long, value_parser = config::parse_positive_secs)]
    idle_timeout: Option<Duration>,
    /// A closing connection: the longest the peer may go without taking a byte of what is
    /// still on its way to it (before our FIN and after), and after our FIN, with all of it
    /// taken, how long to wait for the peer's FIN before closing with RST [default: 5].
    #[arg(long, value_parser = config::parse_secs)]
    linger_timeout: Option<Duration>,
    /// On SIGTERM, give connections this long to finish [default: 10].
    #[arg(long, value_parser = config::parse_secs)]
    drain_timeout: Option<Duration>,
    /// Refuse connections beyond this many (clean close, counted).
    #[arg(long, value_parser = config::parse_count)]
    max_conns: Option<usize>,
    /// Listen backlog [default: 4096].
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    backlog: Option<i32>,
    /// Set SO_REUSEPORT on the listener (`=false` undoes the file's `reuseport = true`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = config::parse_bool)]
    reuseport: Option<bool>,
    /// SO_SNDBUF of accepted connections, in bytes (default: the kernel's autotuning).
    #[arg(long, value_name = "BYTES", value_parser = config::parse_buffer_bytes)]
    sndbuf: Option<usize>,
    /// SO_RCVBUF of accepted connections, in bytes (default: the kernel's autotuning).
    #[arg(long, value_name = "BYTES", value_parser = config::parse_buffer_bytes)]
    rcvbuf: Option<usize>,
    /// Echo only: sleep this many milliseconds in the handler per read, simulating blocking
    /// work (to compare how the concurrency models cope with it).
    #[arg(long)]
    work_ms: Option<u64>,
    /// TCP keepalive: seconds of silence before the first probe (enables keepalive).
    #[arg(long, value_parser = config::parse_keepalive_secs)]
    keepalive_idle: Option<Duration>,
    /// TCP keepalive: seconds between probes [default: 10]. Needs a keepalive idle time
    /// (here or in the file).
    #[arg(long, value_parser = config::parse_keepalive_secs)]
    keepalive_interval: Option<Duration>,
    /// TCP keepalive: unanswered probes before the kernel drops the connection [default: 6].
    /// Needs a keepalive idle time (here or in the file).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=127))]
    keepalive_count: Option<u32>,
    /// Lock this pid file (a second instance is refused, naming the running pid; a stale file
    /// is taken over) and remove it at exit.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Raise RLIMIT_NOFILE to this many fds at start (if refused, the limit in force is said).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    rlimit_nofile: Option<u64>,
    /// Detach from the terminal once listening: double fork, setsid, chdir /, umask 027,
    /// standard streams on /dev/null (bind errors still reach the terminal). `=false` undoes
    /// the file's `daemon = true`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = config::parse_bool)]
    daemon: Option<bool>,
    /// Run as this user once the listeners are bound (so a port below 1024 works when started
    /// as root); refuses to run on if the switch fails.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Run with this group (default: the user's primary group).
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Serve /metrics (Prometheus) and /status (HTML) on this address (off by default).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Where log lines go: stderr, file (with --log-file), syslog [default: stderr].
    #[arg(long, value_name = "TARGET")]
    log_target: Option<String>,
    /// Log to this file (asynchronous writer; SIGUSR1 reopens it for logrotate).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Levels, per module if wanted: "info", "warn,keel::http=debug" [default: info].
    #[arg(long, value_name = "FILTER", value_parser = config::parse_log_filter)]
    log_filter: Option<String>,
}

/// `keel http`: the server options plus the HTTP ones.
#[derive(Args)]
struct HttpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Document root (without it: the built-in welcome page).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// List directories that have no index.html.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = config::parse_bool)]
    autoindex: Option<bool>,
    /// Follow symbolic links, even out of the root (default: any symlink is refused, 403).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = config::parse_bool)]
    follow_symlinks: Option<bool>,
    /// Serve names beginning with '.' (default: 403).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = config::parse_bool)]
    serve_hidden: Option<bool>,
    /// Serve name.gz for name to clients that accept gzip [default: true].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = config::parse_bool, conflicts_with = "no_gzip_static")]
    gzip_static: Option<bool>,
    /// Same as --gzip-static=false.
    #[arg(long)]
    no_gzip_static: bool,
    /// Close idle keep-alive connections after this many seconds [default: 75].
    #[arg(long, value_parser = config::parse_positive_secs)]
    keepalive_timeout: Option<Duration>,
    /// Requests per connection before it is closed [default: 100000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keepalive_requests: Option<u64>,
    /// Seconds a whole request head may take to arrive (slowloris guard) [default: 10].
    #[arg(long, value_parser = config::parse_positive_secs)]
    header_timeout: Option<Duration>,
    /// Longest silence while a request body arrives, in seconds [default: 30].
    #[arg(long, value_parser = config::parse_positive_secs)]
    body_timeout: Option<Duration>,
    /// Largest request body accepted, in bytes (over it: 413) [default: 1048576].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=1 << 53))]
    max_body: Option<u64>,
    /// Files up to this many bytes are cached in memory [default: 16384].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=1 << 53))]
    small_file_max: Option<u64>,
    /// Files sent from disk up to this many bytes (at most 16777216) have their pages held in
    /// a pipe once asked for twice, and leave with tee(2) instead of sendfile; 0 turns it off
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=keel::net::page_pipe::TEE_FILE_MAX_LIMIT))]
    tee_file_max: Option<u64>,
    /// Bytes of file contents cached in memory, per thread; also the most file pages held in
    /// pipes by the whole process [default: 67108864].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=1 << 53))]
    cache_bytes: Option<u64>,
    /// Files cached, per thread [default: 4096]; those sent from disk keep an fd, at most
    /// RLIMIT_NOFILE / 4 across the threads.
    #[arg(long, value_name = "N", value_parser = config::parse_count)]
    cache_entries: Option<usize>,
    /// A cached file is checked against the disk again after this many seconds [default: 1].
    #[arg(long, value_parser = config::parse_secs)]
    cache_valid: Option<Duration>,
    /// Access log (combined format): a file, "stderr" or "off" [default: stderr].
    #[arg(long, value_name = "FILE")]
    access_log: Option<String>,
    /// Same as --access-log off.
    #[arg(long)]
    no_access_log: bool,
}

impl HttpArgs {
    fn http_settings(&self) -> HttpFileSettings {
        HttpFileSettings {
            root: self.root.clone(),
            autoindex: self.autoindex,
            follow_symlinks: self.follow_symlinks,
            serve_hidden: self.serve_hidden,
            gzip_static: self.gzip_static.or(self.no_gzip_static.then_some(false)),
            keepalive_timeout: self.keepalive_timeout,
            keepalive_requests: self.keepalive_requests,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_body: self.max_body,
            small_file_max: self.small_file_max,
            tee_file_max: self.tee_file_max,
            cache_bytes: self.cache_bytes,
            cache_entries: self.cache_entries,
            cache_valid: self.cache_valid,
            access_log: if self.no_access_log {
                Some("off".to_string())
            } else {
                self.access_log.clone()
            },
        }
    }
}

/// `keel proxy`: the server options plus the backends.
#[derive(Args)]
struct ProxyArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// A backend (IP:PORT); repeat for more. Clients go to them in turn; one that refuses or
    /// does not answer in time is skipped for the next. Replaces the file's `backends`.
    #[arg(long = "backend", value_name = "ADDR")]
    backends: Vec<SocketAddr>,
    /// Seconds a backend may take to accept a connection before the next is tried [default: 3].
    #[arg(long, value_parser = config::parse_positive_secs)]
    connect_timeout: Option<Duration>,
    /// Seconds a backend that failed is passed over by the clients after it; 0: never
    /// [default: 10].
    #[arg(long, value_parser = config::parse_secs)]
    fail_timeout: Option<Duration>,
    /// Relay with splice(2) through a pipe per direction, no copy through user space
    /// [default: true]; `--splice=false` copies through a buffer.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", value_parser = config::parse_bool)]
    splice: Option<bool>,
}

impl ProxyArgs {
    fn proxy_settings(&self) -> ProxyFileSettings {
        ProxyFileSettings {
            backends: (!self.backends.is_empty()).then(|| self.backends.clone()),
            connect_timeout: self.connect_timeout,
            fail_timeout: self.fail_timeout,
            splice: self.splice,
        }
    }
}

/// The proxy's handler factory from resolved settings, or why it cannot run. `round` is made
/// once, before any fork, and handed to every factory, so that a reload keeps the server's
/// processes on one round.
fn proxy_factory(s: &ServerSettings, round: &Arc<SharedRound>) -> Result<HandlerFactory, String> {
    let model = s.model.unwrap_or_default();
    if !model.runs_handlers_on_loops() {
        return Err(config::proxy_model_message(model));
    }
    let backends = s.proxy.backends.clone().unwrap_or_default();
    let fail_timeout = s.proxy.fail_timeout.unwrap_or(config::DEFAULT_FAIL_TIMEOUT);
    let backends = Backends::new(backends, fail_timeout, round.clone())?;
    let timeout = s
        .proxy
        .connect_timeout
        .unwrap_or(config::DEFAULT_CONNECT_TIMEOUT);
    let splice = s.proxy.splice.unwrap_or(true);
    Ok(proxy::factory(Arc::new(backends), timeout, splice))
}

/// The chat options both ends take.
#[derive(Args)]
struct ChatOptionArgs {
    /// Seconds of silence from the peer before it is pinged [default: 15].
    #[arg(long, value_parser = config::parse_positive_secs)]
    heartbeat: Option<Duration>,
    /// Seconds of silence from the peer before it is dropped; longer than --heartbeat
    /// [default: 3 heartbeats].
    #[arg(long, value_parser = config::parse_positive_secs)]
    heartbeat_timeout: Option<Duration>,
    /// The largest frame taken from the peer, in bytes [default: 65536].
    #[arg(long, value_parser = config::parse_max_frame)]
    max_frame: Option<usize>,
}

impl ChatOptionArgs {
    fn settings(&self) -> ChatFileSettings {
        ChatFileSettings {
            heartbeat: self.heartbeat,
            heartbeat_timeout: self.heartbeat_timeout,
            max_frame: self.max_frame,
        }
    }
}

/// `keel chat`: the server options plus the chat's own.
#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    chat: ChatOptionArgs,
}

/// `keel chat-client`.
#[derive(Args)]
struct ChatClientArgs {
    /// The chat server (IP:PORT).
    #[arg(long, value_name = "ADDR")]
    connect: SocketAddr,
    /// The name to take once connected (else the server's guest-N).
    #[arg(long)]
    nick: Option<String>,
    #[command(flatten)]
    chat: ChatOptionArgs,
}

/// The chat's handler factory from resolved settings, or why it cannot run. `room` is made
/// once and handed to every factory, so a reload keeps its members together.
fn chat_factory(s: &ServerSettings, room: &Arc<Room>) -> Result<HandlerFactory, String> {
    let model = s.model.unwrap_or_default();
    if !config::chat_runs_under(model) {
        return Err(config::chat_model_message(model));
    }
    let settings = s.chat.resolve();
    settings.check()?;
    Ok(chat::server::factory(Arc::new(chat::server::Chat {
        room: room.clone(),
        settings,
    })))
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Ping-pong load: each connection sends a message and waits for its echo, repeatedly.
    Pingpong {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 100, value_parser = config::parse_count)]
        conns: usize,
        #[arg(long, default_value_t = 64, value_parser = config::parse_message_size)]
        size: usize,
        /// Seconds.
        #[arg(long, value_parser = config::parse_secs, default_value = "10")]
        duration: Duration,
        /// Extra connections held open and idle during the run.
        #[arg(long, default_value_t = 0)]
        idle: usize,
        /// Load threads (each a loop with its share of the connections).
        #[arg(long, default_value_t = 1, value_parser = config::parse_threads)]
        threads: usize,
    },
    /// Chat load against `keel chat` (or a server speaking its protocol): `--members` join,
    /// the first `--speakers` of them each say a message and wait to hear it back before the
    /// next; counts messages said and delivered per second.
    Chat {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 100, value_parser = config::parse_count)]
        members: usize,
        #[arg(long, default_value_t = 10, value_parser = config::parse_count)]
        speakers: usize,
        /// Bytes of text per message.
        #[arg(long, default_value_t = 64, value_parser = config::parse_count)]
        size: usize,
        /// Seconds measured, from the moment every member has joined.
        #[arg(long, value_parser = config::parse_secs, default_value = "10")]
        duration: Duration,
        /// Load threads (each a loop with its share of the members).
        #[arg(long, default_value_t = 1, value_parser = config::parse_threads)]
        threads: usize,
    },
}

impl ServerArgs {
    /// What the command line sets (`None`: not given).
    fn settings(&self) -> ServerSettings {
        ServerSettings {
            listen: self.listen,
            engine: self.engine,
            model: self.model,
            threads: self.threads,
            accept: self.accept,
            idle_timeout: self.idle_timeout,
            linger_timeout: self.linger_timeout,
            drain_timeout: self.drain_timeout,
            max_conns: self.max_conns,
            backlog: self.backlog,
            reuseport: self.reuseport,
            sndbuf: self.sndbuf,
            rcvbuf: self.rcvbuf,
            work_ms: self.work_ms,
            keepalive_idle: self.keepalive_idle,
            keepalive_interval: self.keepalive_interval,
            keepalive_count: self.keepalive_count,
            pid_file: self.pid_file.clone(),
            rlimit_nofile: self.rlimit_nofile,
            daemon: self.daemon,
            user: self.user.clone(),
            group: self.group.clone(),
            admin: self.admin,
            log_target: self.log_target.clone(),
            log_file: self.log_file.clone(),
            log_filter: self.log_filter.clone(),
            http: HttpFileSettings::default(),
            proxy: ProxyFileSettings::default(),
            chat: ChatFileSettings::default(),
        }
    }

    /// `cli` (the command line's settings, a server's own options added) over the config
    /// file's `section`, over the built-in defaults. On a bad file: one message line per error.
    fn resolve_with(
        &self,
        section: Section,
        cli: ServerSettings,
    ) -> Result<(ServerSettings, ServerOptions), Vec<String>> {
        let loaded = match &self.config {
            Some(path) => Some(load_section(path, section)?),
            None => None,
        };
        merge(section, &cli, loaded.as_ref()).map_err(|e| vec![e])
    }
}

/// The configuration file at `path`, checked, which must have a section for `section`: a
/// server given a file runs on what its section says, and a file without one (empty, cut
/// short by a deploy, another server's) would otherwise start it, or move it at a reload,
/// on the built-in defaults without a word.
fn load_section(path: &Path, section: Section) -> Result<config::Config, Vec<String>> {
    let loaded = config::load(&from_start(path))
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    if loaded.section(section).is_none() {
        return Err(vec![format!(
            "{}: no [{section}] section: a server given a file runs on its own section (add \
             one, or leave out --config to run on the built-in defaults)",
            path.display()
        )]);
    }
    Ok(loaded)
}

/// `cli` (the command line's settings) over the config file's `section`, if there is a file,
/// over the built-in defaults: the settings and the options, or why they cannot go together.
/// A conflict the file has with a default, left standing by the command line, is said with
/// the file's line.
fn merge(
    section: Section,
    cli: &ServerSettings,
    file: Option<&config::Config>,
) -> Result<(ServerSettings, ServerOptions), String> {
    if cli.work_ms.is_some() && section != Section::Echo {
        // As the file's `work_ms` outside [echo] is refused (`config`).
        return Err(format!(
            "--work-ms: only echo takes it; {section} has no handler work to delay"
        ));
    }
    let from_file = file.map(|c| c.settings(section)).unwrap_or_default();
    let mut settings = cli.clone().or(&from_file);
    settings.anchor_paths(start_dir());
    config::section_defaults(section, &mut settings);
    let opts = settings.to_options().map_err(|e| {
        file.iter()
            .flat_map(|c| &c.default_conflicts)
            .find(|c| c.section == section && c.explains(cli, &e))
            .map_or(e, ToString::to_string)
    })?;
    Ok((settings, opts))
}

/// Resolves a server's options, or prints why not and exits 2 (bad arguments).
fn resolve_or_exit(args: &ServerArgs, section: Section) -> (ServerSettings, ServerOptions) {
    resolve_cli_or_exit(args, section, args.settings())
}

/// `resolve_or_exit` with the command line's settings given (a server's own options added).
fn resolve_cli_or_exit(
    args: &ServerArgs,
    section: Section,
    cli: ServerSettings,
) -> (ServerSettings, ServerOptions) {
    args.resolve_with(section, cli).unwrap_or_else(|errors| {
        for e in errors {
            eprintln!("keel: {e}");
        }
        std::process::exit(2)
    })
}

/// Serves a TCP server whose handler factory `build` makes from its settings, and makes
/// again at a reload. Settings the factory refuses (no backend, a model the server cannot run
/// under) are bad arguments: exit 2, before anything starts.
fn serve_built(
    args: &ServerArgs,
    section: Section,
    name: &'static str,
    cli: ServerSettings,
    refusal_note: Option<Arc<[u8]>>,
    build: impl Fn(&ServerSettings) -> Result<HandlerFactory, String> + Send + Sync + 'static,
) -> std::io::Result<()> {
    let (settings, opts) = resolve_cli_or_exit(args, section, cli.clone());
    let factory = build(&settings).unwrap_or_else(|e| {
        eprintln!("keel: {e}");
        std::process::exit(2)
    });
    let _log_guard = init_logging(&settings);
    server::serve(
        &opts,
        &Service {
            name,
            factory,
            udp: None,
            reload: reloader(args.config.clone(), section, cli, false, build),
            refusal_note,
        },
    )
}

/// Starts logging as configured; the guard keeps the file writer until exit.
fn init_logging(settings: &ServerSettings) -> Option<keel::ops::log::LogGuard> {
    let log = settings.log_settings().unwrap_or_else(|e| {
        eprintln!("keel: {e}");
        std::process::exit(2)
    });
    match keel::ops::log::init(&log) {
        Ok(guard) => {
            if settings.daemon == Some(true)
                && matches!(log.target, keel::ops::log::LogTarget::Stderr)
            {
                // Said before detaching, on the terminal that is about to be let go.
                eprintln!(
                    "keel: warning: --daemon with the log on stderr, which a daemon has on \
                     /dev/null: its warnings, errors and reload failures go nowhere (give \
                     --log-file FILE or --log-target syslog)"
                );
            }
            if let Some((target, file)) = settings.ignored_log_file() {
                tracing::warn!(
                    "log file {} is not used: the log target is {target}",
                    file.display()
                );
            }
            Some(guard)
        }
        Err(e) => {
            // The arguments were fine; the log file or syslog could not be opened here.
            eprintln!("keel: {e}");
            std::process::exit(1)
        }
    }
}

/// What SIGHUP does for a server: resolve the configuration again (the same command line
/// over the file as it is now) and build a factory from it; the server compares the new
/// options with the running ones (`server::reload`). Without `--config` there is nothing to
/// re-read, unless `opens_paths`: the HTTP server builds the command line again, which opens
/// the document root and the access log afresh (how a root swapped by a deploy is taken up).
fn reloader(
    config: Option<PathBuf>,
    section: Section,
    cli: ServerSettings,
    opens_paths: bool,
    build: impl Fn(&ServerSettings) -> Result<HandlerFactory, String> + Send + Sync + 'static,
) -> Option<server::reload::Reloader> {
    if config.is_none() && !opens_paths {
        return None;
    }
    Some(Arc::new(move || {
        let file = match &config {
            None => None,
            Some(config) => Some(load_section(config, section).map_err(|e| e.join("; "))?),
        };
        let (settings, opts) = merge(section, &cli, file.as_ref())?;
        Ok((build(&settings)?, opts))
    }))
}

/// The directory keel was started in. Relative paths (the config file, pid file, logs, the
/// document root) are taken from it, also after a daemon's `chdir /` and at a reload
/// ([`config::ServerSettings::anchor_paths`]).
fn start_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")))
}

/// `path` as the operator named it, taken from [`start_dir`]: unchanged while the working
/// directory is still that one (so messages name the file as it was typed), anchored to it
/// once a daemon has moved to `/`.
fn from_start(path: &Path) -> PathBuf {
    match std::env::current_dir() {
        Ok(cwd) if cwd == start_dir() => path.to_path_buf(),
        _ => start_dir().join(path),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything can change the working directory.
    start_dir();
    // Servers take their signals from a signalfd: block them before any thread starts (the
    // log writer is the first), so every thread inherits the mask. Tools keep the defaults
    // (Ctrl-C stops `keel bench pingpong`).
    if matches!(
        cli.command,
        Command::Echo(_)
            | Command::Discard(_)
            | Command::Http(_)
            | Command::Proxy(_)
            | Command::Chat(_)
    ) {
        if let Err(e) = server::control::block_server_signals() {
            eprintln!("keel: cannot block signals: {e}");
            return ExitCode::FAILURE;
        }
    }
    let _log_guard;
    let result = match cli.command {
        Command::Echo(args) => {
            let (settings, opts) = resolve_or_exit(&args, Section::Echo);
            _log_guard = init_logging(&settings);
            let build = |s: &ServerSettings| -> Result<HandlerFactory, String> {
                let work = s.work_ms.map(Duration::from_millis);
                Ok(Arc::new(move || {
                    Box::new(Echo::with_work(work)) as Box<dyn Handler>
                }))
            };
            let factory = build(&settings).expect("echo always builds");
            server::serve(
                &opts,
                &Service {
                    name: "echo",
                    factory,
                    udp: Some(Arc::new(|| Box::new(UdpEcho))),
                    reload: reloader(
                        args.config.clone(),
                        Section::Echo,
                        args.settings(),
                        false,
                        build,
                    ),
                    // A byte stream: anything said would read as echoed bytes.
                    refusal_note: None,
                },
            )
        }
        Command::Discard(args) => {
            let (settings, opts) = resolve_or_exit(&args, Section::Discard);
            _log_guard = init_logging(&settings);
            let build = |_: &ServerSettings| -> Result<HandlerFactory, String> {
                Ok(Arc::new(|| Box::new(Discard) as Box<dyn Handler>))
            };
            let factory = build(&settings).expect("discard always builds");
            server::serve(
                &opts,
                &Service {
                    name: "discard",
                    factory,
                    udp: None,
                    reload: reloader(
                        args.config.clone(),
                        Section::Discard,
                        args.settings(),
                        false,
                        build,
                    ),
                    refusal_note: None,
                },
            )
        }
        Command::Http(args) => {
            let mut cli = args.server.settings();
            cli.http = args.http_settings();
            let (settings, opts) = resolve_cli_or_exit(&args.server, Section::Http, cli.clone());
            _log_guard = init_logging(&settings);
            if settings.idle_timeout.is_some() {
                // Accepted, since a config file may share it with other servers, but not
                // silently ignored.
                tracing::warn!(
                    "idle_timeout does not apply to `keel http`: idle keep-alive connections close after keepalive_timeout (--keepalive-timeout)"
                );
            }
            let build = |s: &ServerSettings| -> Result<HandlerFactory, String> {
                let mut http = s.http.clone();
                // A daemon's stderr is /dev/null: the default access log (stderr) is off there.
                if s.daemon == Some(true)
                    && matches!(http.access_log.as_deref(), None | Some("stderr"))
                {
                    http.access_log = Some("off".to_string());
                }
                let mut settings = http.to_settings();
                settings.loops = s.threads.unwrap_or_else(server::default_threads);
                let site = keel::http::Site::open(settings).map_err(|e| e.to_string())?;
                Ok(keel::http::factory(site))
            };
            match build(&settings) {
                Ok(factory) => server::serve(
                    &opts,
                    &Service {
                        name: "http",
                        factory,
                        udp: None,
                        reload: reloader(
                            args.server.config.clone(),
                            Section::Http,
                            cli,
                            true,
                            build,
                        ),
                        refusal_note: Some(keel::http::response::refusal_note().into()),
                    },
                ),
                Err(e) => Err(std::io::Error::other(e)),
            }
        }
        Command::Proxy(args) => {
            let mut cli = args.server.settings();
            cli.proxy = args.proxy_settings();
            let round = match SharedRound::new() {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    eprintln!("keel: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Relayed bytes are the backend's: the proxy has no words of its own to add.
            serve_built(&args.server, Section::Proxy, "proxy", cli, None, move |s| {
                proxy_factory(s, &round)
            })
        }
        Command::Chat(args) => {
            let mut cli = args.server.settings();
            cli.chat = args.chat.settings();
            // Made once: a reload's new factory takes the same room.
            let room = Arc::new(Room::new());
            let full = chat::refusal_note();
            serve_built(
                &args.server,
                Section::Chat,
                "chat",
                cli,
                Some(full),
                move |s| chat_factory(s, &room),
            )
        }
        Command::ChatClient(args) => {
            let settings = args.chat.settings().resolve();
            let bad_nick = args.nick.as_deref().and_then(chat::client::nick_error);
            if let Some(e) = settings.check().err().or(bad_nick) {
                eprintln!("keel: {e}");
                return ExitCode::from(2);
            }
            chat::client::run(&ClientOptions {
                addr: args.connect,
                nick: args.nick,
                settings,
            })
        }
        Command::CheckConfig { file } => {
            let (report, ok) = config::check(&file);
            return if ok {
                println!("{report}");
                ExitCode::SUCCESS
            } else {
                eprintln!("{report}");
                ExitCode::FAILURE
            };
        }
        Command::Bench(BenchCommand::Chat {
            addr,
            members,
            speakers,
            size,
            duration,
            threads,
        }) => keel::bench::chat::run(&ChatLoadOptions {
            addr,
            members,
            speakers,
            size,
            duration,
            threads,
        })
        .and_then(|report| {
            println!("{report}");
            if report.said == 0 {
                return Err(std::io::Error::other(format!(
                    "chat load measured nothing: no speaker heard itself back from {addr}{}",
                    report
                        .first_error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" ({e})"))
                )));
            }
            if let Some(first) = &report.first_error {
                eprintln!("chat load: {} error(s); the first: {first}", report.errors);
            }
            Ok(())
        }),
        Command::Bench(BenchCommand::Pingpong {
            addr,
            conns,
            size,
            duration,
            idle,
            threads,
        }) => pingpong::run(&PingpongOptions {
            addr,
            conns,
            size,
            duration,
            idle,
            threads,
        })
        .and_then(|report| {
            println!("{report}");
            let closed_early = report.secs + 0.1 < duration.as_secs_f64();
            if closed_early {
                eprintln!(
                    "pingpong: every connection had closed after {:.2} s of the {:.2} asked",
                    report.secs,
                    duration.as_secs_f64()
                );
            }
            let Some(first) = &report.first_error else {
                if report.measured_nothing() {
                    let why = if closed_early {
                        format!("{addr} closed every connection before an echo came back")
                    } else {
                        format!(
                            "no echo came back from {addr} in {:.2} s, though the connections \
                             stayed open (is it an echo server?)",
                            report.secs
                        )
                    };
                    return Err(std::io::Error::other(format!(
                        "pingpong measured nothing: {why}"
                    )));
                }
                return Ok(());
            };
            let failed = format!(
                "{} connection(s) to {addr} failed; the first: {first}",
                report.errors
            );
            if report.measured_nothing() {
                return Err(std::io::Error::other(format!(
                    "pingpong measured nothing: {failed}"
                )));
            }
            eprintln!("pingpong: {failed}");
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if server::daemonized() {
                // stderr is /dev/null now: the log, and the command that started the daemon
                // if it still waits, are where this can be read.
                tracing::error!("{e}");
                server::failed_to_start(&e.to_string());
            }
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}

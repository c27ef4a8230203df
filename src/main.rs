//! The `keel` command: every server and tool of the project behind one binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use keel::bench::pingpong::{self, PingpongOptions};
use keel::net::{Handler, ListenOptions};
use keel::reactor::{Engine, Keepalive};
use keel::server::{self, AcceptStrategy, Model, ServerOptions, Service};
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
    /// Load generators.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
struct ServerArgs {
    /// Address to listen on (IP:PORT; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7007")]
    listen: SocketAddr,
    /// Readiness engine: select, poll, epoll-lt, epoll-et.
    #[arg(long, default_value_t = Engine::default())]
    engine: Engine,
    /// Concurrency model: multi-reactor, prefork, half-sync, leader-followers,
    /// thread-per-conn, process-per-conn.
    #[arg(long, default_value_t = Model::default())]
    model: Model,
    /// Loops / worker threads / worker processes (default: number of CPUs); for the
    /// per-connection models, the most connections served at once.
    #[arg(long)]
    threads: Option<usize>,
    /// How multi-reactor spreads connections: reuseport (a listener per loop) or acceptor
    /// (one listener, round-robin hand-off).
    #[arg(long, default_value_t = AcceptStrategy::default())]
    accept: AcceptStrategy,
    /// Close connections idle for this many seconds.
    #[arg(long, value_parser = parse_secs)]
    idle_timeout: Option<Duration>,
    /// After our FIN, wait this long for the peer's before closing with RST.
    #[arg(long, value_parser = parse_secs, default_value = "5")]
    linger_timeout: Duration,
    /// On SIGTERM, give connections this long to finish.
    #[arg(long, value_parser = parse_secs, default_value = "10")]
    drain_timeout: Duration,
    /// Refuse connections beyond this many (clean close, counted).
    #[arg(long)]
    max_conns: Option<usize>,
    /// Listen backlog.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// Set SO_REUSEPORT on the listener.
    #[arg(long)]
    reuseport: bool,
    /// Echo only: sleep this many milliseconds in the handler per read, simulating blocking
    /// work (to compare how the concurrency models cope with it).
    #[arg(long)]
    work_ms: Option<u64>,
    /// TCP keepalive: seconds of silence before the first probe (enables keepalive).
    #[arg(long, value_parser = parse_secs)]
    keepalive_idle: Option<Duration>,
    /// TCP keepalive: seconds between probes.
    #[arg(long, value_parser = parse_secs, default_value = "10", requires = "keepalive_idle")]
    keepalive_interval: Duration,
    /// TCP keepalive: unanswered probes before the kernel drops the connection.
    #[arg(long, default_value_t = 6, requires = "keepalive_idle")]
    keepalive_count: u32,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Ping-pong load: each connection sends a message and waits for its echo, repeatedly.
    Pingpong {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Seconds.
        #[arg(long, value_parser = parse_secs, default_value = "10")]
        duration: Duration,
        /// Extra connections held open and idle during the run.
        #[arg(long, default_value_t = 0)]
        idle: usize,
    },
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return Err(format!("{s:?} is out of range (0 to 1e9 seconds)"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl ServerArgs {
    fn options(&self) -> ServerOptions {
        ServerOptions {
            listen: self.listen,
            engine: self.engine,
            model: self.model,
            threads: self.threads.unwrap_or_else(server::default_threads),
            accept: self.accept,
            idle_timeout: self.idle_timeout,
            linger_timeout: self.linger_timeout,
            drain_timeout: self.drain_timeout,
            max_connections: self.max_conns,
            keepalive: self.keepalive_idle.map(|idle| Keepalive {
                idle,
                interval: self.keepalive_interval,
                count: self.keepalive_count,
            }),
            listen_opts: ListenOptions {
                reuse_port: self.reuseport,
                backlog: self.backlog,
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(args) => server::serve(
            &args.options(),
            &Service {
                factory: {
                    let work = args.work_ms.map(Duration::from_millis);
                    Arc::new(move || Box::new(Echo::with_work(work)) as Box<dyn Handler>)
                },
                udp: Some(Arc::new(|| Box::new(UdpEcho))),
            },
        ),
        Command::Discard(args) => server::serve(
            &args.options(),
            &Service {
                factory: Arc::new(|| Box::new(Discard) as Box<dyn Handler>),
                udp: None,
            },
        ),
        Command::Bench(BenchCommand::Pingpong {
            addr,
            conns,
            size,
            duration,
            idle,
        }) => pingpong::run(&PingpongOptions {
            addr,
            conns,
            size,
            duration,
            idle,
        })
        .map(|report| println!("{report}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Running a server: bind, serve on an event loop, stop cleanly on SIGINT/SIGTERM.
//!
//! For now one loop on the calling thread (the notes' single-reactor server); the concurrency
//! models (multi-reactor, prefork, half-sync, leader/followers...) build on the same pieces.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::net::{bind_tcp, DatagramHandler, HandlerFactory, ListenOptions};
use crate::reactor::{Engine, EventLoop, Keepalive, LoopConfig, Signal};

/// What every server subcommand accepts.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub engine: Engine,
    pub idle_timeout: Option<Duration>,
    pub linger_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: Option<usize>,
    pub keepalive: Option<Keepalive>,
    pub listen_opts: ListenOptions,
}

impl ServerOptions {
    pub fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            engine: self.engine,
            idle_timeout: self.idle_timeout,
            linger_timeout: self.linger_timeout,
            max_connections: self.max_connections,
            keepalive: self.keepalive,
            ..LoopConfig::default()
        }
    }
}

/// Serves TCP with `factory` (and UDP with `udp` on the same port, if given) until SIGINT or
/// SIGTERM, then drains gracefully. Prints `listening ...` lines on stdout once bound, and the
/// loop's counters on stderr at SIGUSR2 and at exit (docs/cli-contract.md).
pub fn serve(
    opts: &ServerOptions,
    factory: HandlerFactory,
    udp: Option<Box<dyn DatagramHandler>>,
) -> io::Result<()> {
    let mut el = EventLoop::new(opts.loop_config())?;
    let drain = opts.drain_timeout;
    el.add_signals(
        &[Signal::SIGINT, Signal::SIGTERM, Signal::SIGUSR2],
        move |el, sig| match sig {
            Signal::SIGUSR2 => eprintln!("{}", el.stats()),
            _ => el.shutdown_gracefully(drain),
        },
    )?;

    let listener = bind_tcp(opts.listen, &opts.listen_opts)?;
    let local = listener.local_addr()?;
    el.add_listener(listener, factory)?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening tcp {local}")?;
    if let Some(handler) = udp {
        let sock = UdpSocket::bind(local)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind udp {local}: {e}")))?;
        el.add_udp(sock, handler)?;
        writeln!(out, "listening udp {local}")?;
    }
    out.flush()?;
    drop(out);

    el.run()?;
    eprintln!("{}", el.stats());
    Ok(())
}

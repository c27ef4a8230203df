//! Ping-pong: each connection sends a message, waits for all of it to come back, repeats.
//! Measures round trips per second; with `idle` connections held open beside the busy ones it
//! shows what idle fds cost each engine.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::{Buffer, CloseReason, Ctx, Handler};
use crate::reactor::{Engine, EventLoop, LoopConfig};

#[derive(Clone, Debug)]
pub struct PingpongOptions {
    pub addr: SocketAddr,
    pub conns: usize,
    pub size: usize,
    pub duration: Duration,
    pub idle: usize,
    /// Load threads, each with its own loop and its share of the connections: one thread
    /// cannot load a server that has many cores.
    pub threads: usize,
}

#[derive(Clone, Debug)]
pub struct PingpongReport {
    pub conns: usize,
    pub size: usize,
    pub secs: f64,
    pub messages: u64,
    pub errors: u64,
    pub idle_opened: usize,
    /// What went wrong with the first connection that failed, in words.
    pub first_error: Option<String>,
}

impl PingpongReport {
    /// Nothing was measured: no echo came back at all (every connection failed, or the
    /// server closed them first). The load generator then fails too, rather than report a
    /// rate of zero as a result.
    pub fn measured_nothing(&self) -> bool {
        self.messages == 0
    }
}

impl std::fmt::Display for PingpongReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mps = self.messages as f64 / self.secs;
        write!(
            f,
            "pingpong conns={} size={} secs={:.2} messages={} msgs_per_sec={:.0} mb_per_sec={:.2} errors={} idle={}",
            self.conns,
            self.size,
            self.secs,
            self.messages,
            mps,
            mps * self.size as f64 / 1e6,
            self.errors,
            self.idle_opened
        )
    }
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    failures: super::Failures,
}

struct PingClient {
    message: Arc<[u8]>,
    received: usize,
    counters: Arc<Counters>,
    /// Busy connections still open on this loop: when none is left (a refused port, a server
    /// that went away) there is nothing more to measure, and the loop stops at once rather
    /// than sit out `--duration`.
    live: Arc<AtomicUsize>,
}

impl Handler for PingClient {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        cx.write(&self.message);
    }

    /// Counts each message once the whole of it is back, byte for byte: an echo that differs
    /// is an error (the connection is dropped), not a message.
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        let mut rest = input.as_slice();
        while !rest.is_empty() {
            let want = &self.message[self.received..];
            let n = want.len().min(rest.len());
            if rest[..n] != want[..n] {
                self.counters
                    .failures
                    .failed(|| "the echo differs from what was sent".to_string());
                input.clear();
                cx.abort();
                return;
            }
            self.received += n;
            rest = &rest[n..];
            if self.received == self.message.len() {
                self.received = 0;
                self.counters.messages.fetch_add(1, Ordering::Relaxed);
                cx.write(&self.message);
            }
        }
        input.clear();
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        if self.live.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Some(el) = cx.event_loop() {
                el.stop();
            }
        }
        match reason {
            CloseReason::Normal | CloseReason::Aborted => {}
            CloseReason::ConnectFailed(e) => self.counters.failures.failed(|| e.to_string()),
            CloseReason::Error(kind) => self.counters.failures.failed(|| kind.to_string()),
            other => self
                .counters
                .failures
                .failed(|| format!("closed: {other:?}")),
        }
    }
}

/// Raises the soft fd limit to the hard one: holding thousands of idle connections needs it.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

pub fn run(opts: &PingpongOptions) -> io::Result<PingpongReport> {
    raise_fd_limit();
    let counters = Arc::new(Counters::default());
    // As many as fds allow: a large count is not a reason to reserve memory for all of it.
    let mut idle = Vec::with_capacity(opts.idle.min(1 << 16));
    for _ in 0..opts.idle {
        match TcpStream::connect_timeout(&opts.addr, Duration::from_secs(5)) {
            Ok(s) => idle.push(s),
            Err(e) => {
                eprintln!(
                    "pingpong: stopped opening idle connections at {}: {e}",
                    idle.len()
                );
                counters.failures.failed(|| format!("idle connection: {e}"));
                break;
            }
        }
    }
    let message: Arc<[u8]> = (0..opts.size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let threads = opts.threads.clamp(1, opts.conns.max(1));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            // Connections split as evenly as they go: the first `conns % threads` get one more.
            let share = opts.conns / threads + usize::from(t < opts.conns % threads);
            let (message, counters, addr, duration) =
                (message.clone(), counters.clone(), opts.addr, opts.duration);
            std::thread::spawn(move || -> io::Result<()> {
                let mut el = EventLoop::new(LoopConfig {
                    engine: Engine::EpollEt,
                    ..LoopConfig::default()
                })?;
                let live = Arc::new(AtomicUsize::new(share));
                for _ in 0..share {
                    let client = PingClient {
                        message: message.clone(),
                        received: 0,
                        counters: counters.clone(),
                        live: live.clone(),
                    };
                    el.connect(addr, Duration::from_secs(5), Box::new(client))?;
                }
                if live.load(Ordering::Relaxed) == 0 {
                    return Ok(()); // every connect failed at once (unreachable, no port left)
                }
                el.run_after(duration, |el| el.stop());
                el.run()
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| io::Error::other("a load thread panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let first_error = counters.failures.first();
    Ok(PingpongReport {
        conns: opts.conns,
        size: opts.size,
        secs,
        messages: counters.messages.load(Ordering::Relaxed),
        errors: counters.failures.count(),
        idle_opened: idle.len(),
        first_error,
    })
}

//! The HTTP handler's own cost per request, without the kernel.
//!
//! On loopback most of a server's CPU is the TCP stack, and a 2-core machine's run-to-run drift
//! (±20%) hides a change that saves a few percent of user time. This drives `HttpConn` directly
//! with a batch of pipelined requests (what one `read` hands it under `wrk` with 16-deep
//! pipelining) and a context that drops the output, and prints nanoseconds per request: the
//! user-space part of `bench/http`'s pipelined load, measured to a percent in a few seconds.
//!
//! ```text
//! cargo run --release --example http_hot_path -- [DEPTH] [SECONDS]
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keel::http::{HttpConn, HttpSettings, Site};
use keel::net::connection::ConnId;
use keel::net::handler::ConnOps;
use keel::net::{Buffer, Ctx, FileRange, Handler};
use keel::reactor::{LoopHandle, Note, Token};

/// A connection that accepts every write and remembers only how many bytes it got.
#[derive(Default)]
struct Sink {
    bytes: u64,
    responses: u64,
}

impl ConnOps for Sink {
    fn write(&mut self, _id: ConnId, data: &[u8]) -> bool {
        self.bytes += data.len() as u64;
        true
    }
    fn send_file(&mut self, _id: ConnId, head: &[u8], range: FileRange) -> bool {
        self.bytes += head.len() as u64 + range.len;
        true
    }
    fn output_len(&self, _id: ConnId) -> usize {
        0
    }
    fn shutdown_write(&mut self, _id: ConnId) {}
    fn close(&mut self, _id: ConnId) {}
    fn abort(&mut self, _id: ConnId) {}
    fn pause_read(&mut self, _id: ConnId) {}
    fn resume_read(&mut self, _id: ConnId) {}
    fn set_idle_timeout(&mut self, _id: ConnId, _timeout: Option<Duration>) {}
    fn set_timer(&mut self, _id: ConnId, _after: Duration, _tag: u64) {}
    fn cancel_timer(&mut self, _id: ConnId, _tag: u64) {}
    fn peer_addr(&self, _id: ConnId) -> Option<SocketAddr> {
        None
    }
    fn handle(&self) -> Option<LoopHandle> {
        None
    }
    fn note(&mut self, note: Note) {
        if let Note::Response(_) = note {
            self.responses += 1;
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let depth: usize = args
        .next()
        .map_or(16, |a| a.parse().expect("DEPTH is a number"));
    let secs: f64 = args
        .next()
        .map_or(3.0, |a| a.parse().expect("SECONDS is a number"));

    let root = std::env::temp_dir().join(format!("keel-hot-path-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("temporary root");
    std::fs::write(root.join("hello.txt"), b"Hello, world!").expect("hello.txt");
    let site = Site::open(HttpSettings {
        root: Some(root.clone()),
        keepalive_requests: u64::MAX, // one connection for the whole run
        ..HttpSettings::default()
    })
    .expect("site");

    // wrk's request, as bench/wrk/pipeline.lua sends it.
    let one = b"GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
    let batch: Vec<u8> = one.repeat(depth);

    let mut sink = Sink::default();
    let id = ConnId(Token(1));
    let mut conn = HttpConn::new(site);
    let mut input = Buffer::new();
    let mut run = |rounds: u64, sink: &mut Sink| {
        for _ in 0..rounds {
            input.append(&batch);
            let mut cx = Ctx::new(sink, id);
            conn.on_data(&mut cx, &mut input);
            assert!(input.is_empty(), "every request answered");
        }
    };
    run(10_000, &mut sink); // warm the cache and the branch predictors

    let mut best = f64::MAX;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut total = 0u64;
    while Instant::now() < end {
        let rounds = 20_000;
        let t = Instant::now();
        run(rounds, &mut sink);
        let ns = t.elapsed().as_nanos() as f64 / (rounds * depth as u64) as f64;
        best = best.min(ns);
        total += rounds * depth as u64;
    }
    assert_eq!(
        sink.responses,
        total + 10_000 * depth as u64,
        "every request got a response"
    );
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "depth {depth}: {best:.1} ns/request (best of {:.1} s), {} bytes/response",
        secs,
        sink.bytes / sink.responses
    );
}

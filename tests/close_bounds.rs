//! Every way a connection can end is bounded in time, through the library API on loopback: a
//! connection that keeps writing is not idle, and a graceful close whose output the peer never
//! reads ends within the linger timeout (the timer covers the flush too, counted from the last
//! byte the peer took: a slow reader that keeps reading is not cut off).

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel::net::{Buffer, CloseReason, Ctx, Handler};
use keel::reactor::{Engine, LoopConfig};

use util::lib_server::{config, serve_with_client, stop_loop};

/// Sends a line every 50 ms and never reads anything.
struct Ticker {
    tx: mpsc::Sender<CloseReason>,
}

impl Handler for Ticker {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        cx.set_timer(Duration::from_millis(50), 0);
    }
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _tag: u64) {
        cx.write(b"tick\n");
        cx.set_timer(Duration::from_millis(50), 0);
    }
    fn on_idle_timeout(&mut self, cx: &mut Ctx<'_>) {
        let _ = self.tx.send(CloseReason::IdleTimeout);
        cx.close();
    }
}

#[test]
fn a_connection_that_keeps_writing_is_not_idle() {
    let mut failures = Vec::new();
    for engine in Engine::ALL {
        let (tx, rx) = mpsc::channel();
        let (_el, got) = serve_with_client(
            LoopConfig {
                idle_timeout: Some(Duration::from_millis(300)),
                ..config(engine)
            },
            move || Box::new(Ticker { tx: tx.clone() }),
            Duration::from_millis(1200),
            |addr| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let start = Instant::now();
                let mut total = 0;
                let mut buf = [0u8; 256];
                while start.elapsed() < Duration::from_secs(1) {
                    match s.read(&mut buf) {
                        Ok(0) => return Err(format!("EOF after {:?}", start.elapsed())),
                        Ok(n) => total += n,
                        Err(e) => return Err(format!("{e} after {:?}", start.elapsed())),
                    }
                }
                Ok(total)
            },
        );
        let idle = rx.try_recv().ok();
        if got.is_err() || idle.is_some() {
            failures.push(format!("{engine}: client {got:?}, idle callback {idle:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Queues more than the socket buffers can take, then closes.
struct BigThenClose {
    tx: mpsc::Sender<CloseReason>,
}

impl Handler for BigThenClose {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        cx.write(&vec![b'x'; 32 << 20]);
        cx.close();
    }
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        let _ = self.tx.send(reason);
        stop_loop(cx);
    }
}

#[test]
fn close_with_output_to_a_peer_that_never_reads_ends() {
    let mut failures = Vec::new();
    for engine in Engine::ALL {
        let (tx, rx) = mpsc::channel();
        // The client is joined before the check below; nothing the check reads changes after the
        // loop has stopped.
        let (el, ()) = serve_with_client(
            LoopConfig {
                linger_timeout: Duration::from_millis(200),
                ..config(engine)
            },
            move || Box::new(BigThenClose { tx: tx.clone() }),
            Duration::from_millis(1500),
            |addr| {
                let s = TcpStream::connect(addr).unwrap();
                std::thread::sleep(Duration::from_millis(1800)); // connected, reading nothing
                drop(s);
            },
        );
        let reason = rx.try_recv();
        if reason.is_err() {
            failures.push(format!(
                "{engine}: still open after 1.5 s, {} bytes sent, the rest still queued (linger timeout 200 ms)",
                el.stats().bytes_out
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

//! Every way a connection can end is bounded in time, through the library API on loopback: a
//! connection that keeps writing is not idle, and a graceful close whose output the peer never
//! reads ends within the linger timeout (the timer covers the flush too).

use std::io::Read;
use std::net::TcpStream;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use keel::net::{bind_tcp, Buffer, CloseReason, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig};

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
        let mut el = EventLoop::new(LoopConfig {
            engine,
            idle_timeout: Some(Duration::from_millis(300)),
            ..LoopConfig::default()
        })
        .unwrap();
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        el.add_listener(
            listener,
            Arc::new(move || Box::new(Ticker { tx: tx.clone() }) as Box<dyn Handler>),
        )
        .unwrap();
        el.run_after(Duration::from_millis(1200), |el| el.stop());
        let client = std::thread::spawn(move || {
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
        });
        el.run().unwrap();
        let got = client.join().unwrap();
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
        cx.event_loop()
            .expect("handlers run on the loop thread")
            .stop();
    }
}

#[test]
fn close_with_output_to_a_peer_that_never_reads_ends() {
    let mut failures = Vec::new();
    for engine in Engine::ALL {
        let mut el = EventLoop::new(LoopConfig {
            engine,
            linger_timeout: Duration::from_millis(200),
            ..LoopConfig::default()
        })
        .unwrap();
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        el.add_listener(
            listener,
            Arc::new(move || Box::new(BigThenClose { tx: tx.clone() }) as Box<dyn Handler>),
        )
        .unwrap();
        el.run_after(Duration::from_millis(1500), |el| el.stop());
        let client = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(1800)); // connected, reading nothing
            drop(s);
        });
        el.run().unwrap();
        let reason = rx.try_recv();
        if reason.is_err() {
            failures.push(format!(
                "{engine}: still open after 1.5 s, {} bytes sent, the rest still queued (linger timeout 200 ms)",
                el.stats().bytes_out
            ));
        }
        client.join().unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

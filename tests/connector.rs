//! The outgoing connector and cross-thread posting, through the library API on loopback.

mod util;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;

use std::time::{Duration, Instant};

use keel::net::{Buffer, CloseReason, ConnectError, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig};

use util::lib_server::{accept_one, config, stop_loop};

/// Reports how its connection went: `Ok(reply)` or the close reason of a failed connect.
struct Probe {
    tx: mpsc::Sender<Result<Vec<u8>, CloseReason>>,
    got: Vec<u8>,
}

impl Handler for Probe {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        cx.write(b"ping");
        cx.shutdown_write();
    }
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        self.got.extend_from_slice(input.as_slice());
        input.clear();
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        let msg = match reason {
            CloseReason::Normal => Ok(std::mem::take(&mut self.got)),
            other => Err(other),
        };
        let _ = self.tx.send(msg);
        stop_loop(cx);
    }
}

fn run_probe(engine: Engine, addr: SocketAddr, timeout: Duration) -> Result<Vec<u8>, CloseReason> {
    let mut el = EventLoop::new(config(engine)).unwrap();
    let (tx, rx) = mpsc::channel();
    el.connect(
        addr,
        timeout,
        Box::new(Probe {
            tx,
            got: Vec::new(),
        }),
    )
    .unwrap();
    el.run_after(Duration::from_secs(10), |el| el.stop());
    el.run().unwrap();
    rx.try_recv()
        .expect("the probe reported before the 10 s guard")
}

#[test]
fn connects_and_exchanges_bytes_on_every_engine() {
    for engine in Engine::ALL {
        let (addr, server) = accept_one(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap(); // until the probe's FIN
            s.write_all(b"pong:").unwrap();
            s.write_all(&buf).unwrap();
        });
        eprintln!("engine {engine}");
        let reply = run_probe(engine, addr, Duration::from_secs(2));
        assert_eq!(reply, Ok(b"pong:ping".to_vec()), "engine {engine}");
        server.join().unwrap();
    }
}

#[test]
fn refused_is_reported_as_refused() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed: nothing listens there now
    for engine in Engine::ALL {
        let r = run_probe(engine, addr, Duration::from_secs(2));
        assert_eq!(
            r,
            Err(CloseReason::ConnectFailed(ConnectError::Refused)),
            "engine {engine}"
        );
    }
}

#[test]
fn a_connect_that_never_completes_times_out() {
    // A listener that never accepts, with its accept queue filled: the kernel drops further
    // SYNs, so the handshake never finishes and only our timer can end the attempt.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let start = Instant::now();
    let r = run_probe(Engine::EpollEt, addr, Duration::from_millis(300));
    let took = start.elapsed();
    assert_eq!(r, Err(CloseReason::ConnectFailed(ConnectError::TimedOut)));
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "timed out after {took:?}"
    );
}

#[test]
fn tasks_posted_from_other_threads_run_on_the_loop() {
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    let handle = el.handle();
    let loop_thread = std::thread::current().id();
    let (tx, rx) = mpsc::channel();
    let poster = std::thread::spawn(move || {
        for i in 0..1000u32 {
            let tx = tx.clone();
            assert!(handle.post(move |_el| tx.send((i, std::thread::current().id())).unwrap()));
        }
        handle.stop();
    });
    el.run_after(Duration::from_secs(10), |el| el.stop());
    el.run().unwrap();
    poster.join().unwrap();
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(got.len(), 1000, "every posted task ran before stop");
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (n, t))| *n == i as u32 && *t == loop_thread));
}

//! A connection the peer has half-closed (its FIN read) while ours stays open, and read pauses,
//! through the library API on loopback: such a connection must not make a level-triggered loop
//! spin (EPOLLRDHUP is asked for only with read interest), and a reset arriving after the FIN
//! must still end it, on every engine that can see it.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel::net::{Buffer, CloseReason, Ctx, Handler};
use keel::reactor::Engine;

use util::lib_server::{config, serve_with_client, stop_loop};

/// Keeps the connection half-open for 400 ms after the peer's FIN, then answers and closes.
struct LateAnswer;

impl Handler for LateAnswer {
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        cx.set_timer(Duration::from_millis(400), 1);
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _tag: u64) {
        cx.write(b"bye");
        cx.shutdown_write();
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: CloseReason) {
        stop_loop(cx);
    }
}

#[test]
fn half_open_connection_does_not_make_the_loop_spin() {
    let mut failures = Vec::new();
    for engine in Engine::ALL {
        let (el, got) = serve_with_client(
            config(engine),
            || Box::new(LateAnswer),
            Duration::from_secs(5),
            |addr| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
                s.write_all(b"hi").unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).map(|_| got)
            },
        );
        assert_eq!(got.unwrap(), b"bye", "engine {engine}");
        // A handful of real events happen (accept, data, FIN, timer, close). Anything in the
        // hundreds over 400 ms of quiet is a spin.
        let wakeups = el.stats().wakeups;
        eprintln!("engine {engine}: {wakeups} wake-ups");
        if wakeups > 100 {
            failures.push(format!("{engine}: {wakeups} wake-ups while half-open"));
        }
    }
    assert!(failures.is_empty(), "loop spun: {failures:?}");
}

/// Pauses reading on the first bytes, resumes 400 ms later, echoes.
struct PauseThenEcho {
    paused: bool,
}

impl Handler for PauseThenEcho {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        cx.write(input.as_slice());
        input.clear();
        if !self.paused {
            self.paused = true;
            cx.pause_read();
            cx.set_timer(Duration::from_millis(400), 1);
        }
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _tag: u64) {
        cx.resume_read();
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: CloseReason) {
        stop_loop(cx);
    }
}

#[test]
fn fin_while_paused_does_not_make_the_loop_spin() {
    let mut failures = Vec::new();
    for engine in Engine::ALL {
        let (el, rest) = serve_with_client(
            config(engine),
            || Box::new(PauseThenEcho { paused: false }),
            Duration::from_secs(5),
            |addr| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
                s.write_all(b"one").unwrap();
                let mut got = [0u8; 3];
                s.read_exact(&mut got).unwrap();
                // The server is paused now; our FIN arrives while it is not reading.
                s.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).map(|_| rest)
            },
        );
        rest.unwrap();
        let wakeups = el.stats().wakeups;
        eprintln!("engine {engine}: {wakeups} wake-ups");
        if wakeups > 100 {
            failures.push(format!(
                "{engine}: {wakeups} wake-ups while paused after FIN"
            ));
        }
    }
    assert!(failures.is_empty(), "loop spun: {failures:?}");
}

/// Stays half-open after the peer's FIN (answers only after 3 s) and reports its close.
struct WaitsLong {
    tx: mpsc::Sender<(CloseReason, Instant)>,
}

impl Handler for WaitsLong {
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        cx.set_timer(Duration::from_secs(3), 1);
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _tag: u64) {
        cx.write(b"late");
        cx.shutdown_write();
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        let _ = self.tx.send((reason, Instant::now()));
        stop_loop(cx);
    }
}

/// select cannot see an error on an fd that is in no set, so it is left out: this is about
/// the engines that do report the reset.
#[test]
fn reset_after_peer_fin_closes_the_connection() {
    let mut failures = Vec::new();
    for engine in [Engine::Poll, Engine::EpollLt, Engine::EpollEt] {
        let (tx, rx) = mpsc::channel();
        let (el, reset_at) = serve_with_client(
            config(engine),
            move || Box::new(WaitsLong { tx: tx.clone() }),
            Duration::from_millis(1500),
            |addr| {
                let s = TcpStream::connect(addr).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                // Now reset: SO_LINGER {on, 0} and close.
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(s);
                Instant::now()
            },
        );
        let wakeups = el.stats().wakeups;
        match rx.try_recv() {
            Ok((CloseReason::Error(_), at))
                if at.duration_since(reset_at) < Duration::from_millis(500) => {}
            other => failures.push(format!(
                "{engine}: reset not noticed within 0.5 s (got {other:?}, {wakeups} wake-ups)"
            )),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

//! Backpressure through `pause_read`/`resume_read` on every engine, through the library API:
//! bytes and the peer's FIN that arrive while reading is paused are not lost on resume. (An
//! edge-triggered poller reports them once, while paused; the loop must remember.)

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel::net::{Buffer, CloseReason, Ctx, Handler};
use keel::reactor::Engine;

use util::lib_server::{config, serve_with_client, stop_loop};

/// Echoes; pauses reading after the first bytes and resumes 200 ms later.
struct PausingEcho {
    paused_once: bool,
}

impl Handler for PausingEcho {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        cx.write(input.as_slice());
        input.clear();
        if !self.paused_once {
            self.paused_once = true;
            cx.pause_read();
            cx.set_timer(Duration::from_millis(200), 1);
        }
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _tag: u64) {
        cx.resume_read();
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        assert_eq!(reason, CloseReason::Normal);
        stop_loop(cx);
    }
}

#[test]
fn data_and_fin_that_arrive_while_paused_are_read_on_resume() {
    for engine in Engine::ALL {
        let (_el, rest) = serve_with_client(
            config(engine),
            || Box::new(PausingEcho { paused_once: false }),
            Duration::from_secs(10),
            |addr| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"first").unwrap();
                let mut got = [0u8; 5];
                s.read_exact(&mut got).unwrap();
                // The server is paused now: send more, then our FIN, both while it is not reading.
                s.write_all(b"second").unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).map(|_| rest)
            },
        );
        assert_eq!(
            rest.expect("server closed after echoing what came while paused")
                .as_slice(),
            b"second",
            "engine {engine}"
        );
    }
}

/// Pauses reading and shuts its write side on the first bytes, then resumes after 300 ms,
/// recording the loop's wake-ups over the pause.
struct PauseAndShut {
    wakeups_at_pause: u64,
}

impl Handler for PauseAndShut {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
        if self.wakeups_at_pause == 0 {
            self.wakeups_at_pause = cx.event_loop().unwrap().stats().wakeups.max(1);
            cx.pause_read();
            cx.shutdown_write();
            cx.set_timer(Duration::from_millis(300), 1);
        }
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _tag: u64) {
        let during = cx.event_loop().unwrap().stats().wakeups - self.wakeups_at_pause;
        WAKEUPS_WHILE_PAUSED.store(during, Ordering::SeqCst);
        cx.resume_read();
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: CloseReason) {
        stop_loop(cx);
    }
}

static WAKEUPS_WHILE_PAUSED: AtomicU64 = AtomicU64::new(u64::MAX);

/// Both FINs are in while reading is paused: the socket reports a hang-up (`EPOLLHUP`,
/// `POLLHUP`) whatever interest is registered, so a level-triggered loop that kept the fd
/// registered would wake on every wait until reading resumes. It must sleep instead, and still
/// read the peer's bytes and FIN on resume.
#[test]
fn a_hang_up_while_paused_does_not_spin_the_loop() {
    for engine in Engine::ALL {
        WAKEUPS_WHILE_PAUSED.store(u64::MAX, Ordering::SeqCst);
        let (_el, got) = serve_with_client(
            config(engine),
            || {
                Box::new(PauseAndShut {
                    wakeups_at_pause: 0,
                })
            },
            Duration::from_secs(10),
            |addr| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"first").unwrap();
                // The server's FIN: it has paused and shut its write side.
                let mut end = Vec::new();
                s.read_to_end(&mut end).unwrap();
                s.write_all(b"second").unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                // The server closes once it resumes and reads our FIN.
                let t0 = std::time::Instant::now();
                let mut rest = [0u8; 16];
                let n = s.read(&mut rest);
                (end.len(), n.map_err(|e| e.kind()), t0.elapsed())
            },
        );
        let (end_len, after_fin, waited) = got;
        assert_eq!(end_len, 0, "engine {engine}: the server wrote nothing");
        // On resume the loop reads "second" and our FIN, and closes: a clean 0 here.
        assert_eq!(after_fin, Ok(0), "engine {engine}");
        assert!(
            waited < Duration::from_secs(3),
            "engine {engine}: closed after {waited:?}"
        );
        let wakeups = WAKEUPS_WHILE_PAUSED.load(Ordering::SeqCst);
        eprintln!("engine {engine}: {wakeups} wake-ups while paused");
        assert!(
            wakeups < 50,
            "engine {engine}: {wakeups} wake-ups in a 300 ms pause with both FINs in"
        );
    }
}

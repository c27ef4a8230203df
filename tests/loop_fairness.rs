//! What one connection or one handler may not do to the rest of its loop: hold it for a whole
//! large file (the write budget), leave it a scratch buffer too small to read into, or make a
//! timer armed late in a long turn come due at once. Real sockets on loopback.

mod util;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keel::net::{Buffer, CloseReason, Ctx, FileRange, Handler};
use keel::reactor::{Engine, EventLoop};

use util::lib_server::{config, serve_with_client, stop_loop};

/// Engines that run here (io_uring is tried where the kernel has it: it falls back otherwise).
const ENGINES: [Engine; 5] = [
    Engine::Select,
    Engine::Poll,
    Engine::EpollLt,
    Engine::EpollEt,
    Engine::Uring,
];

/// Echoes, then leaves the input it was lent (the loop's scratch buffer) with no room at all.
/// The third connection's close ends the run.
struct Shrinker(Arc<AtomicUsize>);

impl Handler for Shrinker {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        cx.write(input.as_slice());
        input.clear();
        input.shrink_to(0);
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: CloseReason) {
        if self.0.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
            stop_loop(cx);
        }
    }
}

/// A handler that shrinks the scratch buffer does not make the next read on the loop (another
/// connection's) come back empty, as a FIN: it did, on every engine that reads into it.
#[test]
fn a_handler_that_shrinks_its_input_leaves_the_loop_able_to_read() {
    for engine in ENGINES {
        let closed = Arc::new(AtomicUsize::new(0));
        let (_, got) = serve_with_client(
            config(engine),
            move || Box::new(Shrinker(closed.clone())),
            Duration::from_secs(10),
            |addr| {
                (0..3)
                    .map(|i| {
                        let mut s = TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        s.write_all(b"hello").unwrap();
                        let mut buf = [0u8; 5];
                        s.read_exact(&mut buf)
                            .map(|_| buf)
                            .map_err(|e| format!("client {i}: {e}"))
                    })
                    .collect::<Vec<_>>()
            },
        );
        for r in got {
            assert_eq!(r.as_ref().map(|b| &b[..]), Ok(&b"hello"[..]), "{engine:?}");
        }
    }
}

/// A timer armed at the end of a long turn (a callback that blocked 300 ms) waits the time
/// it asked for: it was measured from the turn's clock reading and came due at once.
#[test]
fn a_timer_armed_late_in_a_long_turn_does_not_fire_early() {
    let mut el = EventLoop::new(config(Engine::EpollLt)).unwrap();
    let waited: Rc<RefCell<Option<Duration>>> = Rc::default();
    let w = waited.clone();
    el.run_after(Duration::ZERO, move |el| {
        thread::sleep(Duration::from_millis(300));
        let set = Instant::now();
        el.run_after(Duration::from_millis(200), move |el| {
            *w.borrow_mut() = Some(set.elapsed());
            el.stop();
        });
        // Something that wakes the loop again at once.
        el.handle().post(|_| {});
    });
    el.run_after(Duration::from_secs(5), |el| el.stop());
    el.run().unwrap();
    let waited = waited.borrow().expect("the timer fired");
    assert!(
        waited >= Duration::from_millis(200),
        "asked for 200 ms, fired after {waited:?}"
    );
}

/// The first connection gets a large file; the others are echoed, and the close of one ends
/// the run.
struct DownloadOrEcho {
    file: Option<(Arc<std::fs::File>, u64)>,
}

impl Handler for DownloadOrEcho {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        if let Some((file, len)) = &self.file {
            cx.send_file(b"", FileRange::new(file.clone(), 0, *len));
        }
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        cx.write(input.as_slice());
        input.clear();
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: CloseReason) {
        if self.file.is_none() {
            stop_loop(cx);
        }
    }
}

/// A 4 GiB download to a reader as fast as the loop does not keep the loop from another
/// connection: a flush stops at the write budget (1 MiB) and the loop moves on. One flush
/// used to send until the socket filled, which a fast reader never lets happen, and pings
/// waited for seconds (0.2 to 2.5 s with 2 GiB).
#[test]
fn a_fast_download_does_not_hold_the_loop() {
    let path = std::env::temp_dir().join(format!("keel-fairness-{}", std::process::id()));
    let len: u64 = 4 << 30;
    std::fs::File::create(&path).unwrap().set_len(len).unwrap(); // sparse: no disk
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    for engine in [Engine::EpollLt, Engine::EpollEt, Engine::Uring] {
        let first = Arc::new(AtomicBool::new(true));
        let file = file.clone();
        let (_, (worst, pings, downloaded)) = serve_with_client(
            config(engine),
            move || {
                let big = first.swap(false, Ordering::SeqCst);
                Box::new(DownloadOrEcho {
                    file: big.then(|| (file.clone(), len)),
                })
            },
            Duration::from_secs(60),
            move |addr| {
                let mut d = TcpStream::connect(addr).unwrap();
                let d2 = d.try_clone().unwrap();
                let reader = thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut total = 0u64;
                    while total < len {
                        match d.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    total
                });
                thread::sleep(Duration::from_millis(50));
                let mut p = TcpStream::connect(addr).unwrap();
                p.set_nodelay(true).unwrap();
                p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut worst = Duration::ZERO;
                let mut pings = 0;
                while !reader.is_finished() && pings < 500 {
                    let t = Instant::now();
                    p.write_all(b"x").unwrap();
                    p.read_exact(&mut [0u8; 1]).unwrap();
                    worst = worst.max(t.elapsed());
                    pings += 1;
                    thread::sleep(Duration::from_millis(2));
                }
                // Ends the download where it is, then the run (the echo side's close).
                let _ = d2.shutdown(std::net::Shutdown::Both);
                let downloaded = reader.join().unwrap();
                drop(p);
                (worst, pings, downloaded)
            },
        );
        assert!(
            pings >= 20 && worst < Duration::from_millis(300),
            "{engine:?}: {pings} pings during the download ({downloaded} bytes), the slowest \
             answered after {worst:?}"
        );
    }
}

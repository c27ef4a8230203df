//! What the handler API promises later servers, shown with the smallest handlers that need it:
//!
//! - a **TCP relay** (the heart of a proxy): the client's handler opens the upstream connection
//!   with [`Ctx::connect`] and pairs the two on one loop by id; each side forwards bytes, its
//!   peer's FIN (`shutdown_write`, so a half-close passes through), its close, and
//!   backpressure (the sink's `on_high_water` pauses the source, `on_drained` resumes it);
//! - a **broadcast** (the heart of a chat server): a handler writes to connections of its own
//!   loop through [`Ctx::event_loop`] and to those of other loops through their handles' task
//!   queues, so a socket is only ever written by its owner's thread.
//!
//! Real sockets on loopback, every engine.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keel::net::{bind_tcp, Buffer, CloseReason, ConnId, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig, LoopHandle};

use util::lib_server::config;
use util::random_bytes;

// ---------------------------------------------------------------------------------------------
// The relay

/// Where a relay side forwards to, and what the test watches.
struct Side {
    /// The other connection of the pair (None until the client side has connected upstream).
    peer: Option<ConnId>,
    /// Largest queue seen on this side's peer right after forwarding into it.
    max_queued: Arc<AtomicUsize>,
}

impl Side {
    fn forward(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        let Some(peer) = self.peer else { return };
        let el = cx.event_loop().expect("a relay runs on its loop's thread");
        if !el.write(peer, input.as_slice()) {
            // The other side is gone or shut for writing: nothing can carry these bytes.
            cx.abort();
            return;
        }
        input.clear();
        let queued = el.output_len(peer);
        self.max_queued.fetch_max(queued, Ordering::Relaxed);
    }

    /// The peer's queue went over the high-water mark: stop reading into it.
    fn pause_peer(&mut self, cx: &mut Ctx<'_>) {
        if let (Some(peer), Some(el)) = (self.peer, cx.event_loop()) {
            el.pause_read(peer);
        }
    }

    fn resume_peer(&mut self, cx: &mut Ctx<'_>) {
        if let (Some(peer), Some(el)) = (self.peer, cx.event_loop()) {
            el.resume_read(peer);
        }
    }

    /// A FIN from our side's socket becomes a FIN on the other socket; the other direction
    /// stays open until its own FIN comes.
    fn pass_fin(&mut self, cx: &mut Ctx<'_>) {
        if let (Some(peer), Some(el)) = (self.peer, cx.event_loop()) {
            el.shutdown_write(peer);
        }
    }

    /// A normal close means both FINs went through: the other side closes by itself once its
    /// own FIN exchange ends. Anything else (a reset, a timeout, a failed connect) is passed on.
    fn pass_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        let (Some(peer), Some(el)) = (self.peer, cx.event_loop()) else {
            return;
        };
        match reason {
            CloseReason::Normal => {}
            CloseReason::ConnectFailed(_) => el.close(peer),
            _ => el.abort(peer),
        }
    }
}

/// The accepted (client) side: opens the upstream connection when the client arrives.
struct Downstream {
    side: Side,
    backend: SocketAddr,
}

/// The outgoing (upstream) side, created by the downstream side with its id.
struct Upstream {
    side: Side,
}

impl Handler for Downstream {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        let up = Upstream {
            side: Side {
                peer: Some(cx.id()),
                max_queued: self.side.max_queued.clone(),
            },
        };
        match cx.connect(self.backend, Duration::from_secs(2), Box::new(up)) {
            Ok(id) => self.side.peer = Some(id),
            Err(_) => cx.close(),
        }
    }
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        self.side.forward(cx, input);
    }
    fn on_high_water(&mut self, cx: &mut Ctx<'_>, _queued: usize) {
        self.side.pause_peer(cx);
    }
    fn on_drained(&mut self, cx: &mut Ctx<'_>) {
        self.side.resume_peer(cx);
    }
    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        self.side.pass_fin(cx);
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        self.side.pass_close(cx, reason);
    }
}

impl Handler for Upstream {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        self.side.forward(cx, input);
    }
    fn on_high_water(&mut self, cx: &mut Ctx<'_>, _queued: usize) {
        self.side.pause_peer(cx);
    }
    fn on_drained(&mut self, cx: &mut Ctx<'_>) {
        self.side.resume_peer(cx);
    }
    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        self.side.pass_fin(cx);
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        self.side.pass_close(cx, reason);
    }
}

/// A relay to `backend` on its own loop thread. Returns its address, the largest queue a side
/// held, a handle to stop it, and the thread (which returns the connections still open).
struct Relay {
    addr: SocketAddr,
    max_queued: Arc<AtomicUsize>,
    handle: LoopHandle,
    thread: thread::JoinHandle<usize>,
}

impl Relay {
    fn start(cfg: LoopConfig, backend: SocketAddr) -> Relay {
        let max_queued = Arc::new(AtomicUsize::new(0));
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let mq = max_queued.clone();
        let thread = thread::spawn(move || {
            let mut el = EventLoop::new(cfg).unwrap();
            el.add_listener(
                listener,
                Arc::new(move || {
                    Box::new(Downstream {
                        side: Side {
                            peer: None,
                            max_queued: mq.clone(),
                        },
                        backend,
                    }) as Box<dyn Handler>
                }),
            )
            .unwrap();
            el.run_after(Duration::from_secs(60), |el| el.stop()); // never hang a test
            tx.send(el.handle()).unwrap();
            el.run().unwrap();
            el.stats().open as usize
        });
        Relay {
            addr,
            max_queued,
            handle: rx.recv().unwrap(),
            thread,
        }
    }

    /// Stops the loop once every pair has closed (or 4 s pass, less than the 5 s linger
    /// timeout, so a side that missed its peer's FIN is caught); returns the connections left.
    /// The count is read on the loop's thread: the published counters lag behind a loop that
    /// went to sleep.
    fn finish(self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let (tx, rx) = mpsc::channel();
            self.handle.post(move |el| {
                let _ = tx.send(el.stats().open);
            });
            let open = rx.recv_timeout(Duration::from_secs(1)).unwrap_or(u64::MAX);
            if open == 0 || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.handle.stop();
        self.thread.join().unwrap()
    }
}

/// A blocking backend that accepts one connection and hands it to `serve`.
fn backend<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        serve(s)
    });
    (addr, t)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

#[test]
fn a_relay_pair_is_byte_exact_and_passes_the_clients_half_close_through() {
    for engine in Engine::ALL {
        // The backend echoes until the client's FIN reaches it, then sends its own FIN.
        let (baddr, b) = backend(|mut s| {
            let mut r = s.try_clone().unwrap();
            let n = std::io::copy(&mut r, &mut s).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            n
        });
        let relay = Relay::start(config(engine), baddr);
        let data = random_bytes(7, 8 << 20);
        let mut c = connect(relay.addr);
        let mut w = c.try_clone().unwrap();
        let sent = data.clone();
        let writer = thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(Shutdown::Write).unwrap(); // half-close: we still read
        });
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap(); // ends only at the backend's FIN, relayed
        writer.join().unwrap();
        assert_eq!(
            b.join().unwrap(),
            data.len() as u64,
            "{engine}: the backend's count"
        );
        assert!(
            got == data,
            "{engine}: {} bytes back, not byte-exact",
            got.len()
        );
        assert_eq!(relay.finish(), 0, "{engine}: both sides of the pair closed");
    }
}

#[test]
fn a_backend_that_half_closes_first_still_receives_the_clients_upload() {
    for engine in Engine::ALL {
        let reply = random_bytes(8, 1 << 20);
        let upload = random_bytes(9, 1 << 20);
        let r2 = reply.clone();
        // The backend speaks first, sends its FIN, and only then reads the client's upload.
        let (baddr, b) = backend(move |mut s| {
            s.write_all(&r2).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let relay = Relay::start(config(engine), baddr);
        let mut c = connect(relay.addr);
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap(); // the backend's FIN, passed on
        assert!(got == reply, "{engine}: the reply");
        c.write_all(&upload).unwrap(); // our direction is still open
        c.shutdown(Shutdown::Write).unwrap();
        assert!(
            b.join().unwrap() == upload,
            "{engine}: the upload after the backend's FIN"
        );
        let mut rest = [0u8; 1];
        assert_eq!(
            c.read(&mut rest).unwrap(),
            0,
            "{engine}: clean close at the end"
        );
        assert_eq!(relay.finish(), 0, "{engine}: both sides of the pair closed");
    }
}

#[test]
fn an_unreachable_backend_closes_the_client_cleanly_and_promptly() {
    let (_held, dead) = util::dead_addr(); // refused: bound, not listening
    for engine in Engine::ALL {
        let relay = Relay::start(config(engine), dead);
        let mut c = connect(relay.addr);
        let _ = c.write_all(b"anyone there?");
        let t = Instant::now();
        let mut buf = [0u8; 16];
        let n = c.read(&mut buf);
        assert!(
            matches!(n, Ok(0)),
            "{engine}: expected a clean EOF, got {n:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{engine}: took {:?}",
            t.elapsed()
        );
        drop(c); // our FIN ends the relay's graceful close
        assert_eq!(relay.finish(), 0, "{engine}: nothing left open");
    }
}

#[test]
fn a_slow_client_pauses_the_backend_instead_of_growing_the_relays_queue() {
    const HIGH_WATER: usize = 256 * 1024;
    const TOTAL: usize = 32 << 20;
    for engine in Engine::ALL {
        let data = random_bytes(10, TOTAL);
        let d2 = data.clone();
        let (baddr, b) = backend(move |mut s| {
            s.write_all(&d2).unwrap(); // as fast as the relay lets it
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
        });
        let cfg = LoopConfig {
            high_water: HIGH_WATER,
            ..config(engine)
        };
        let relay = Relay::start(cfg, baddr);
        let mut c = connect(relay.addr);
        // Read slowly at first: the relay must stop reading from the backend, not queue 32 MiB.
        let mut got = Vec::with_capacity(TOTAL);
        let mut buf = vec![0u8; 16 * 1024];
        for _ in 0..20 {
            thread::sleep(Duration::from_millis(10));
            let n = c.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        c.read_to_end(&mut got).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        b.join().unwrap();
        assert!(got == data, "{engine}: {} bytes, not byte-exact", got.len());
        let max = relay.max_queued.load(Ordering::Relaxed);
        // Over the mark by at most what one wake-up reads (the read budget, plus a buffer).
        let bound = HIGH_WATER + LoopConfig::default().read_budget + 128 * 1024;
        assert!(
            max <= bound,
            "{engine}: the relay queued {max} bytes (bound {bound})"
        );
        assert_eq!(relay.finish(), 0, "{engine}: both sides of the pair closed");
    }
}

// ---------------------------------------------------------------------------------------------
// Broadcast across loops

/// A member of the room: which loop owns the connection, how to reach that loop, its id.
#[derive(Clone)]
struct Member {
    home: usize,
    handle: LoopHandle,
    id: ConnId,
}

type Room = Arc<Mutex<Vec<Member>>>;

/// Says "joined" once registered, then sends every line it receives to every member.
struct Chatter {
    home: usize,
    room: Room,
}

impl Handler for Chatter {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        let handle = cx.handle().expect("a loop thread has a handle");
        self.room.lock().unwrap().push(Member {
            home: self.home,
            handle,
            id: cx.id(),
        });
        cx.write(b"joined\n");
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        while let Some(end) = input.find_byte(b'\n') {
            let line = input.take_bytes(end + 1);
            let members = self.room.lock().unwrap().clone();
            for m in members {
                if m.home == self.home {
                    // Our own loop: write directly (this may be our own connection).
                    let el = cx.event_loop().expect("on the loop thread");
                    el.write(m.id, &line);
                } else {
                    // Another loop's socket: only its own thread may write it.
                    let line = line.clone();
                    m.handle.post(move |el| {
                        el.write(m.id, &line);
                    });
                }
            }
        }
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: CloseReason) {
        let id = cx.id();
        let home = self.home;
        self.room
            .lock()
            .unwrap()
            .retain(|m| !(m.home == home && m.id == id));
    }
}

#[test]
fn a_line_reaches_every_member_on_every_loop_and_only_the_owner_writes() {
    for engine in Engine::ALL {
        let room: Room = Arc::new(Mutex::new(Vec::new()));
        let mut addrs = Vec::new();
        let mut loops = Vec::new();
        for home in 0..2 {
            let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
            addrs.push(listener.local_addr().unwrap());
            let room = room.clone();
            let (tx, rx) = mpsc::channel();
            let t = thread::spawn(move || {
                let mut el = EventLoop::new(config(engine)).unwrap();
                el.add_listener(
                    listener,
                    Arc::new(move || {
                        Box::new(Chatter {
                            home,
                            room: room.clone(),
                        }) as Box<dyn Handler>
                    }),
                )
                .unwrap();
                el.run_after(Duration::from_secs(30), |el| el.stop());
                tx.send(el.handle()).unwrap();
                el.run().unwrap();
            });
            loops.push((rx.recv().unwrap(), t));
        }
        // Ten members on each loop; "joined" means registered.
        let mut clients: Vec<BufReader<TcpStream>> = (0..20)
            .map(|i| {
                let mut r = BufReader::new(connect(addrs[i % 2]));
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                assert_eq!(line, "joined\n", "{engine}");
                r
            })
            .collect();
        for (speaker, text) in [(0usize, "hello from loop 0\n"), (5, "and from loop 1\n")] {
            clients[speaker]
                .get_mut()
                .write_all(text.as_bytes())
                .unwrap();
            for (i, c) in clients.iter_mut().enumerate() {
                let mut line = String::new();
                c.read_line(&mut line).unwrap();
                assert_eq!(line, text, "{engine}: member {i}");
            }
        }
        drop(clients);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !room.lock().unwrap().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            room.lock().unwrap().is_empty(),
            "{engine}: every member left"
        );
        for (h, t) in loops {
            h.stop();
            t.join().unwrap();
        }
    }
}

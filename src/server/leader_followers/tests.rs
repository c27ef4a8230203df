use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::shared::Shared;
use super::thread_set::{spawn_threads, start, stop};
use crate::net::{Buffer, Ctx, Handler, ListenOptions};
use crate::reactor::{Engine, LoopStats};
use crate::server::{Model, ServerOptions, Service};

/// A service of `make`'s handlers, with nothing else.
fn service(make: fn() -> Box<dyn Handler>) -> Service {
    Service {
        name: "test",
        factory: Arc::new(make),
        udp: None,
        reload: None,
        refusal_note: None,
    }
}

struct Echo;
impl Handler for Echo {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        cx.write(input.as_slice());
        input.clear();
    }
}

fn opts(threads: usize) -> ServerOptions {
    ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        engine: Engine::EpollLt,
        model: Model::LeaderFollowers,
        threads,
        accept: Default::default(),
        idle_timeout: None,
        linger_timeout: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(2),
        max_connections: None,
        keepalive: None,
        listen_opts: ListenOptions::default(),
        pid_file: None,
        rlimit_nofile: None,
        log: Default::default(),
        daemon: false,
        user: None,
        group: None,
        admin: None,
    }
}

fn server(o: &ServerOptions) -> (Arc<Shared>, Vec<JoinHandle<()>>, SocketAddr) {
    let sh = start(o, &service(|| Box::new(Echo)), None).unwrap();
    let listener = crate::net::bind_tcp(o.listen, &o.listen_opts).unwrap();
    let addr = listener.local_addr().unwrap();
    let threads = spawn_threads(&sh, listener).unwrap();
    (sh, threads, addr)
}

fn finish(sh: &Arc<Shared>, threads: Vec<JoinHandle<()>>) -> LoopStats {
    stop(sh);
    for t in threads {
        t.join().unwrap();
    }
    sh.total(&LoopStats::new(Engine::EpollLt))
}

#[test]
fn echoes_and_half_closes_under_several_threads() {
    let (sh, threads, addr) = server(&opts(3));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let data: Vec<u8> = (0..200_000u32).map(|x| (x * 7 + i) as u8).collect();
                let mut r = s.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).unwrap(); // ends at the server's FIN
                    got
                });
                s.write_all(&data).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                assert_eq!(reader.join().unwrap(), data);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let stats = finish(&sh, threads);
    assert_eq!(stats.accepted, 8);
    assert_eq!(stats.closed, 8);
    assert_eq!(stats.open, 0);
    assert_eq!(stats.bytes_in, 8 * 200_000);
    assert_eq!(stats.bytes_out, 8 * 200_000);
}

#[test]
fn idle_timeout_closes_and_drain_ends_open_connections() {
    let mut o = opts(2);
    o.idle_timeout = Some(Duration::from_millis(200));
    let (sh, threads, addr) = server(&o);
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).unwrap(), 0); // the server's FIN
    assert!(t0.elapsed() >= Duration::from_millis(150));
    drop(idle);

    let mut open = TcpStream::connect(addr).unwrap();
    open.write_all(b"ping").unwrap();
    open.read_exact(&mut buf[..4]).unwrap();
    stop(&sh);
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(open.read(&mut buf).unwrap(), 0); // drained: FIN
    drop(open);
    let stats = finish(&sh, threads);
    assert_eq!(stats.idle_timeouts, 1);
    assert_eq!(stats.open, 0);
}

/// Answers on a timer, resuming reading there (not in `on_drained`).
struct Later;
impl Handler for Later {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
        cx.pause_read();
        cx.set_timer(Duration::from_millis(300), 1);
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _tag: u64) {
        cx.write(b"late");
        cx.resume_read();
    }
}

/// A stop while a handler holds a request for a timer: the answer goes out and the connection
/// closes right after it. It used to wait for an event that never came and be reset at the
/// drain deadline (2 s here).
#[test]
fn a_drain_closes_a_connection_resumed_by_a_timer_once_answered() {
    let o = opts(2);
    let sh = start(&o, &service(|| Box::new(Later)), None).unwrap();
    let listener = crate::net::bind_tcp(o.listen, &o.listen_opts).unwrap();
    let addr = listener.local_addr().unwrap();
    let threads = spawn_threads(&sh, listener).unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    stop(&sh);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"late");
    let r = c.read(&mut [0u8; 1]);
    let after = t0.elapsed();
    drop(c);
    finish(&sh, threads);
    assert!(
        matches!(r, Ok(0)) && after < Duration::from_secs(1),
        "{r:?} after {after:?}"
    );
}

/// A connection accepted just as the drain starts, its request already in the socket, is
/// answered before it closes, as the connections the drain found are. It was closed unread.
#[test]
fn a_connection_accepted_as_the_drain_starts_is_answered() {
    let o = opts(1);
    let sh = start(&o, &service(|| Box::new(Echo)), None).unwrap();
    let listener = crate::net::bind_tcp(o.listen, &o.listen_opts).unwrap();
    let mut c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    c.write_all(b"ping").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (server_side, _) = listener.accept().unwrap();
    server_side.set_nonblocking(true).unwrap();
    sh.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut w = super::worker::Worker::new(&sh, 0);
    w.serve_new(std::os::fd::OwnedFd::from(server_side));
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
}

//! `keel proxy`: a real binary in front of real backends on loopback.
//!
//! The backends are plain blocking threads, each connection served by `serve`; what they saw
//! comes back through a channel, so a test can check both ends of the relay.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use util::{dead_addr, random_bytes, read_until_end, rss_kib, End, Opts};

/// Engines, for the tests that hold under each.
const ENGINES: [&str; 5] = ["select", "poll", "epoll-lt", "epoll-et", "uring"];
/// The relay's two paths: through pipes (the default) and copying through a buffer.
const SPLICE: [&str; 2] = ["--splice=true", "--splice=false"];
/// The models the proxy runs under (its handlers need their loop).
const LOOP_MODELS: [&str; 4] = [
    "multi-reactor",
    "prefork",
    "thread-per-conn",
    "process-per-conn",
];

/// A backend on its own thread: accepts until dropped, serving each connection on a thread
/// of its own with `serve`.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
        Backend::start_on("127.0.0.1:0".parse().unwrap(), serve)
    }

    fn start_on(addr: SocketAddr, serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let serve = Arc::new(serve);
        thread::spawn(move || {
            // Bounded: the test drops the Backend, or 60 s pass.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                        let serve = serve.clone();
                        thread::spawn(move || serve(s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend { addr, stop }
    }

    /// Echoes until the client's FIN, then sends its own.
    fn echo() -> Backend {
        Backend::start(|mut s| {
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// Answers every line with its name and the line.
    fn named(name: &'static str) -> Backend {
        Backend::start(move |s| {
            let mut w = s.try_clone().unwrap();
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                if writeln!(w, "{name} {line}").is_err() {
                    break;
                }
            }
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A listener whose accept queue is full, for as long as the returned parts live: the kernel
/// drops further SYNs, so a connect to it hangs until the connector's own timeout.
fn stuck_backend() -> ((socket2::Socket, Vec<TcpStream>), SocketAddr) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let fillers = (0..8)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    ((sock, fillers), addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `data`, half-closes, reads to EOF on another thread at once; returns what came back.
fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = connect(addr);
    let mut w = c.try_clone().unwrap();
    let sent = data.to_vec();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

#[test]
fn relays_byte_exact_and_passes_the_clients_half_close_on_every_engine() {
    let backend = Backend::echo();
    let data = random_bytes(21, 4 << 20);
    for engine in ENGINES {
        for splice in SPLICE {
            let what = format!("{engine} {splice}");
            let srv = Opts::proxy(engine, &[backend.addr])
                .arg("--threads", "2")
                .flag(splice)
                .spawn();
            // The backend echoes until our FIN reaches it: getting everything back, then EOF,
            // means the FIN went through and the backend's came back.
            let got = round_trip(srv.tcp, &data);
            assert!(
                got == data,
                "{what}: {} bytes back, not byte-exact",
                got.len()
            );
            // Several pairs at once.
            let clients: Vec<_> = (0..20)
                .map(|i| {
                    let d = random_bytes(100 + i, 64 * 1024 + i as usize);
                    let addr = srv.tcp;
                    thread::spawn(move || round_trip(addr, &d) == d)
                })
                .collect();
            for c in clients {
                assert!(
                    c.join().unwrap(),
                    "{what}: a concurrent pair was not byte-exact"
                );
            }
            let (_, settled) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 0);
            assert!(settled, "{what}: pairs left open: {:?}", srv.stats());
        }
    }
}

#[test]
fn relays_under_every_model_whose_handlers_run_on_loops() {
    let backend = Backend::echo();
    let data = random_bytes(22, 1 << 20);
    for model in LOOP_MODELS {
        let srv = Opts::proxy("epoll-et", &[backend.addr])
            .arg("--model", model)
            .arg("--threads", "2")
            .spawn();
        let got = round_trip(srv.tcp, &data);
        assert!(got == data, "{model}: not byte-exact ({} bytes)", got.len());
    }
}

#[test]
fn a_backend_that_half_closes_first_still_gets_the_upload() {
    let upload = random_bytes(23, 1 << 20);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    // Speaks first, sends its FIN, and only then reads what the client uploads.
    let backend = Backend::start(move |mut s| {
        s.write_all(b"hello, then FIN\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = tx.lock().unwrap().send(got);
    });
    for splice in SPLICE {
        half_closed_first(backend.addr, splice, &upload, &rx);
    }
}

fn half_closed_first(
    backend: SocketAddr,
    splice: &str,
    upload: &[u8],
    rx: &mpsc::Receiver<Vec<u8>>,
) {
    let srv = Opts::proxy("epoll-et", &[backend]).flag(splice).spawn();
    let mut c = connect(srv.tcp);
    let mut greeting = Vec::new();
    c.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"hello, then FIN\n");
    c.write_all(upload).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        got == upload,
        "{splice}: the backend got {} bytes",
        got.len()
    );
    let mut end = [0u8; 1];
    assert_eq!(c.read(&mut end).unwrap(), 0, "a clean close at the end");
}

/// Sends 30 clients one after another through `srv`; how many each named backend answered.
fn serve_thirty(srv: &util::Server) -> std::collections::HashMap<String, i32> {
    let mut served = std::collections::HashMap::new();
    for i in 0..30 {
        let mut c = connect(srv.tcp);
        // Sent at once, before any backend has answered: it must survive the failover.
        writeln!(c, "client {i}").unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        let (name, rest) = line.split_once(' ').expect("a named answer");
        assert_eq!(rest, format!("client {i}\n"));
        *served.entry(name.to_string()).or_insert(0) += 1;
    }
    served
}

/// Thirty clients in turn through backends [dead, a, b] with `--fail-timeout SECS`: what a
/// and b served, the connect failures counted, and the log line the failure is said with.
fn one_dead_of_three(fail_timeout: &str, a_b_failures: (i32, i32, u64), said: &str) {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let (_held, dead) = dead_addr();
    let srv = Opts::proxy("epoll-et", &[dead, a.addr, b.addr])
        .arg("--threads", "1")
        .arg("--fail-timeout", fail_timeout)
        .spawn();
    let served = serve_thirty(&srv);
    let (want_a, want_b, failures) = a_b_failures;
    assert_eq!(served.get("a"), Some(&want_a), "{served:?}");
    assert_eq!(served.get("b"), Some(&want_b), "{served:?}");
    let st = srv.stats();
    assert_eq!(st.get("connect_failures"), failures);
    // Every connection a count: 30 clients and their backend connects, failed ones included;
    // with nothing refused, what is not closed is open (closed counts both kinds).
    assert_eq!(st.get("accepted"), 30, "{}", st.line);
    assert_eq!(st.get("connects"), 30 + failures, "{}", st.line);
    assert_eq!(
        st.get("accepted") + st.get("connects") - st.get("closed"),
        st.get("open"),
        "{}",
        st.line
    );
    assert!(
        srv.stderr_has(said, Duration::from_secs(3)),
        "the failure is logged: {}",
        srv.stderr_dump()
    );
}

/// A dead backend is tried once, then passed over for the fail timeout: its turns are
/// shared by the live ones.
#[test]
fn clients_go_round_robin_and_a_dead_backend_is_passed_over() {
    one_dead_of_three(
        "10",
        (15, 15, 1),
        "connection refused; passed over for 10s; the next backend is tried",
    );
}

/// With `--fail-timeout 0` a dead backend is tried on each of its turns, and failover gives
/// them to the next in line.
#[test]
fn without_a_fail_timeout_a_dead_backend_is_tried_on_each_turn() {
    one_dead_of_three("0", (20, 10, 10), "the next backend is tried");
}

/// A backend that hangs costs one client the connect timeout, not every client whose turn
/// it is; once the fail timeout has passed it is tried again, and taken back if it answers.
#[test]
fn a_hanging_backend_costs_one_connect_timeout_per_fail_timeout() {
    let (stuck_parts, stuck) = stuck_backend();
    let live = Backend::named("live");
    let srv = Opts::proxy("epoll-et", &[stuck, live.addr])
        .arg("--connect-timeout", "0.5")
        .arg("--fail-timeout", "2")
        .arg("--threads", "1")
        .spawn();
    let ask = |i: usize| {
        let t = Instant::now();
        let mut c = connect(srv.tcp);
        writeln!(c, "c{i}").unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        (line, t.elapsed())
    };
    let slow: Vec<_> = (0..6)
        .map(ask)
        .filter(|(line, took)| {
            assert!(line.starts_with("live "), "{line:?}");
            *took >= Duration::from_millis(400)
        })
        .collect();
    assert_eq!(slow.len(), 1, "one client waits for the connect timeout");
    assert_eq!(srv.stats().get("connect_failures"), 1);
    // Past the fail timeout, and answering again: it gets its turns back.
    drop(stuck_parts);
    let back = Backend::start_on(stuck, |mut s| {
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let _ = write!(s, "back {line}");
    });
    thread::sleep(Duration::from_millis(2100));
    let names: Vec<String> = (0..4).map(|i| ask(i).0).collect();
    assert_eq!(
        names.iter().filter(|l| l.starts_with("back ")).count(),
        2,
        "{names:?}"
    );
    drop(back);
}

#[test]
fn a_backend_that_never_accepts_is_left_after_the_connect_timeout() {
    let (_stuck, stuck) = stuck_backend();
    let live = Backend::named("live");
    let srv = Opts::proxy("epoll-et", &[stuck, live.addr])
        .arg("--connect-timeout", "0.3")
        .arg("--threads", "1")
        .spawn();
    let t = Instant::now();
    let mut c = connect(srv.tcp);
    writeln!(c, "hi").unwrap();
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line).unwrap();
    assert_eq!(line, "live hi\n");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
}

#[test]
fn when_no_backend_answers_the_client_gets_a_clean_close() {
    let ((_h1, d1), (_h2, d2)) = (dead_addr(), dead_addr());
    let srv = Opts::proxy("epoll-et", &[d1, d2]).spawn();
    let mut c = connect(srv.tcp);
    let _ = c.write_all(b"anyone?\n");
    let mut got = Vec::new();
    let end = read_until_end(&mut c, &mut got, 1024, Duration::from_secs(5));
    assert_eq!(end, End::Eof, "got {got:?}");
    assert!(got.is_empty());
    assert!(
        srv.stderr_has("no backend answered", Duration::from_secs(3)),
        "{}",
        srv.stderr_dump()
    );
    // The proxy itself is fine.
    drop(c);
    let (_, settled) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 0);
    assert!(settled, "{:?}", srv.stats());
}

#[test]
fn a_reset_from_the_backend_reaches_the_client_as_a_reset() {
    let backend = Backend::start(|mut s| {
        let mut buf = [0u8; 5];
        let _ = s.read_exact(&mut buf);
        let _ = s.write_all(b"partial");
        thread::sleep(Duration::from_millis(100));
        util::set_linger_zero(&s);
        // Dropping `s` now sends RST.
    });
    let srv = Opts::proxy("epoll-et", &[backend.addr]).spawn();
    let mut c = connect(srv.tcp);
    c.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    let end = read_until_end(&mut c, &mut got, 1 << 20, Duration::from_secs(5));
    assert_eq!(got, b"partial");
    assert_eq!(end, End::Reset, "a cut stream must not look complete");
}

/// The other way: a client's reset ends the backend's connection (with a reset or a FIN),
/// on every engine, also when it lands beside bytes the backend has just sent. On `uring`
/// a poll removal that met a wake-up still being handled used to fail and leave the socket
/// open (its fd closed, the file held by the poll): the backend heard nothing, ever.
#[test]
fn a_reset_from_the_client_ends_the_backends_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    for engine in ENGINES {
        let srv = Opts::proxy(engine, &[backend])
            .arg("--threads", "1")
            .spawn();
        for round in 0..30u64 {
            let mut c = connect(srv.tcp);
            let (mut b, _) = listener.accept().unwrap();
            b.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            c.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            b.read_exact(&mut buf).unwrap();
            b.write_all(b"world").unwrap();
            c.read_exact(&mut buf).unwrap();
            b.write_all(b"more").unwrap(); // in flight as the reset comes
            thread::sleep(Duration::from_millis(round % 4));
            util::set_linger_zero(&c);
            drop(c);
            let got = b.read(&mut buf);
            assert!(
                matches!(&got, Ok(0))
                    || matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "[{engine}] round {round}: the backend heard nothing of the client's reset \
                 ({got:?})"
            );
        }
    }
}

#[test]
fn a_slow_client_does_not_make_the_proxy_hold_the_stream_or_spin() {
    const TOTAL: usize = 64 << 20;
    let backend = Backend::start(|mut s| {
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..TOTAL >> 20 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    });
    for engine in ["poll", "epoll-lt", "epoll-et"] {
        for splice in SPLICE {
            let what = format!("{engine} {splice}");
            let srv = Opts::proxy(engine, &[backend.addr])
                .arg("--threads", "1")
                .flag(splice)
                .spawn();
            let before = rss_kib(srv.pid);
            let mut c = connect(srv.tcp);
            // The client takes nothing for a second while the backend writes as fast as it
            // may: the proxy must stop reading (no growth) and wait (no spinning).
            thread::sleep(Duration::from_millis(300));
            let cpu0 = srv.cpu_time();
            thread::sleep(Duration::from_secs(1));
            let cpu = srv.cpu_time() - cpu0;
            let stalled = rss_kib(srv.pid);
            let mut got = Vec::new();
            let end = read_until_end(&mut c, &mut got, TOTAL + 1, Duration::from_secs(30));
            assert_eq!(end, End::Eof, "{what}");
            assert_eq!(got.len(), TOTAL, "{what}");
            assert!(got.iter().all(|&b| b == 7), "{what}");
            assert!(
                stalled < before + 16 * 1024,
                "{what}: the proxy grew from {before} KiB to {stalled} KiB while its client \
                 read nothing"
            );
            assert!(
                cpu < Duration::from_millis(300),
                "{what}: the proxy used {cpu:?} of CPU in a second of waiting"
            );
        }
    }
}

#[test]
fn the_proxy_returns_to_its_fd_baseline() {
    let backend = Backend::echo();
    let (_held, dead) = dead_addr();
    let srv = Opts::proxy("epoll-et", &[backend.addr, dead])
        .arg("--threads", "1")
        .spawn();
    let baseline = srv.baseline_fds();
    for i in 0..300u64 {
        let d = random_bytes(i, 100);
        assert_eq!(round_trip(srv.tcp, &d), d);
    }
    let settled = srv.fd_count_settles_to(baseline, Duration::from_secs(5));
    assert_eq!(settled, baseline, "{:?}", srv.fd_listing());
}

#[test]
fn bad_proxy_arguments_exit_2_with_the_reason() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(util::keel_bin())
            .arg("proxy")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("needs at least one backend"), "{err}");
    for model in ["half-sync", "leader-followers"] {
        let (code, err) = run(&["--backend", "127.0.0.1:9", "--model", model]);
        assert_eq!(code, Some(2), "{model}");
        assert!(err.contains(&format!("cannot run under {model}")), "{err}");
    }
    let (code, err) = run(&["--backend", "localhost:80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--backend"), "{err}");
}

/// `keel check-config FILE`: its exit code and what it said on stderr.
fn check_config(file: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(util::keel_bin())
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_reports_bad_proxy_keys_on_their_lines() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-proxy");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keel.toml");
    std::fs::write(
        &file,
        "[proxy]\nbackends = []\nconnect_timeout = 0\nmodel = \"half-sync\"\nfail_timeout = -1\n\
         [echo]\nbackends = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let (code, err) = check_config(&file);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(":2: key `proxy.backends`: expected at least one backend"),
        "{err}"
    );
    assert!(err.contains(":3: key `proxy.connect_timeout`"), "{err}");
    assert!(
        err.contains(":4: key `proxy.model`: the proxy cannot run under half-sync"),
        "{err}"
    );
    assert!(
        err.contains(":5: key `proxy.fail_timeout`: expected a number of seconds from 0 to 1e9"),
        "{err}"
    );
    assert!(
        err.contains(":7: key `echo.backends`: unknown key"),
        "{err}"
    );

    std::fs::write(
        &file,
        "[proxy]\nbackends = [\"127.0.0.1:7008\", \"[::1]:7009\"]\nconnect_timeout = 1.5\n\
         fail_timeout = 0\n",
    )
    .unwrap();
    let (code, err) = check_config(&file);
    assert_eq!(code, Some(0), "{err}");

    // A backend that is the proxy itself (a relay loop until the fds run out), or on port 0.
    for (text, said) in [
        (
            "[proxy]\nlisten = \"0.0.0.0:7100\"\nbackends = [\"127.0.0.1:7100\"]\n",
            ":3: key `proxy.backends`: backend 127.0.0.1:7100 is the proxy's own listen",
        ),
        (
            "[proxy]\nbackends = [\"127.0.0.1:1\", \"127.0.0.1:0\"]\n",
            ":2: key `proxy.backends`: backend 127.0.0.1:0: port 0 cannot be connected to",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let (code, err) = check_config(&file);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(said), "{err}");
    }
}

#[test]
fn a_graceful_stop_lets_a_relayed_stream_finish() {
    // The backend streams 2 MiB in 40 pieces over about 2 s: the client side of the pair is
    // idle (nothing queued, nothing unread) between pieces, which must not end it.
    let backend = Backend::start(|mut s| {
        let piece = vec![3u8; 50 * 1024];
        for _ in 0..40 {
            if s.write_all(&piece).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = s.shutdown(Shutdown::Write);
    });
    let srv = Opts::proxy("epoll-et", &[backend.addr])
        .arg("--threads", "1")
        .arg("--drain-timeout", "20")
        .spawn();
    let mut c = connect(srv.tcp);
    let mut first = [0u8; 1];
    c.read_exact(&mut first).unwrap();
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    let mut got = first.to_vec();
    let end = read_until_end(&mut c, &mut got, 4 << 20, Duration::from_secs(15));
    assert_eq!(end, End::Eof);
    assert_eq!(
        got.len(),
        40 * 50 * 1024,
        "the whole stream, then a clean end"
    );
    assert!(got.iter().all(|&b| b == 3));
    drop(c);
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits");
    assert_eq!(status.code(), Some(0), "{}", srv.stderr_dump());
}

#[test]
fn out_of_fds_closes_clients_cleanly_and_the_proxy_recovers() {
    let backend = Backend::named("b");
    let spawn = |nofile| {
        Opts::proxy("epoll-et", &[backend.addr])
            .arg("--threads", "1")
            .nofile(nofile)
            .spawn()
    };
    // Each pair takes two fds, so which call meets the limit first depends on the parity of the
    // fd numbers left under the limit after start-up (an fd inherited from the environment
    // shifts it). An odd number
    // left makes the last client's accept succeed and its backend socket fail: the path tested.
    let mut srv = spawn(40);
    srv.baseline_fds();
    if (40 - srv.fds_below(40)) % 2 == 0 {
        drop(srv);
        srv = spawn(41);
        srv.baseline_fds();
    }
    // Far more pairs than 40 fds allow, all held open at once.
    let mut held = Vec::new();
    let (mut served, mut closed) = (0, 0);
    for i in 0..60 {
        let Ok(mut c) = TcpStream::connect(srv.tcp) else {
            continue;
        };
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = writeln!(c, "{i}");
        let mut line = String::new();
        match BufReader::new(&c).read_line(&mut line) {
            Ok(0) | Err(_) => closed += 1,
            Ok(_) => {
                assert_eq!(line, format!("b {i}\n"));
                served += 1;
            }
        }
        held.push(c);
    }
    assert!(served > 0 && closed > 0, "served {served}, closed {closed}");
    assert!(
        srv.stderr_has(
            "out of file descriptors: a client was closed without a backend",
            Duration::from_secs(3)
        ),
        "{}",
        srv.stderr_dump()
    );
    drop(held);
    let (_, settled) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 0);
    assert!(settled, "{:?}", srv.stats());
    let mut c = connect(srv.tcp);
    writeln!(c, "again").unwrap();
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line).unwrap();
    assert_eq!(line, "b again\n", "served again once fds are free");
}

#[test]
fn a_slow_steady_reader_is_not_idle_and_a_silent_pair_is_closed() {
    const TOTAL: usize = 3 << 20;
    let backend = Backend::start(|mut s| {
        let mut line = String::new();
        let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
        let _ = s.write_all(&vec![5u8; TOTAL]);
        let _ = s.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    for splice in SPLICE {
        // A small send buffer toward the client, so the proxy's writes (its activity) follow
        // the client's reading, not a kernel buffer that takes seconds to drain.
        let srv = Opts::proxy("epoll-et", &[backend.addr])
            .arg("--threads", "1")
            .arg("--idle-timeout", "1")
            .arg("--sndbuf", "65536")
            .flag(splice)
            .spawn();
        // A small receive window and a steady 800 KB/s: the upstream side waits, paused,
        // longer than the idle timeout at a time, while the client side keeps moving.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&srv.tcp.into()).unwrap();
        let mut c: TcpStream = sock.into();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(c, "go").unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            assert!(buf[..n].iter().all(|&b| b == 5));
            got += n;
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(got, TOTAL, "{splice}: the whole stream before the end");
        drop(c);

        // A pair where nobody says anything is closed after the timeout, cleanly.
        let named = Backend::named("n");
        let srv = Opts::proxy("epoll-et", &[named.addr])
            .arg("--idle-timeout", "0.5")
            .flag(splice)
            .spawn();
        let mut c = connect(srv.tcp);
        writeln!(c, "hi").unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "n hi\n");
        let t = Instant::now();
        let mut rest = Vec::new();
        let end = read_until_end(&mut c, &mut rest, 1024, Duration::from_secs(5));
        assert_eq!(end, End::Eof, "{splice}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{splice}: {:?}",
            t.elapsed()
        );
    }
}

/// An upload into a backend that reads slowly but steadily: the client's side waits, paused,
/// while the backend's side drains into the reader, and the kernel's buffers are large
/// enough that the backend's socket is not reported writable within an idle period. The
/// side whose timer comes due first looks at its partner's queue too, so the pair is not
/// idle. (It was reset at the first idle timeout, after half a megabyte.)
#[test]
fn a_slow_steady_backend_reader_keeps_an_upload_alive() {
    // 16 KiB every 20 ms (800 KB/s), until the client's end (30 s at most): slow enough that
    // the kernel's buffers toward it hold more than an idle period's worth.
    let backend = Backend::start(|mut s| {
        let mut buf = [0u8; 16 * 1024];
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    for splice in SPLICE {
        let srv = Opts::proxy("epoll-et", &[backend.addr])
            .arg("--threads", "1")
            .arg("--idle-timeout", "1")
            .flag(splice)
            .spawn();
        let mut c = connect(srv.tcp);
        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(2500) {
            c.write_all(&chunk).unwrap_or_else(|e| {
                panic!(
                    "{splice}: the upload was cut off after {:?}: {e}\n{}",
                    t.elapsed(),
                    srv.stderr_dump()
                )
            });
        }
        let st = srv.stats();
        assert_eq!(st.get("idle_timeouts"), 0, "{splice}: {st:?}");
        assert_eq!(st.get("open"), 2, "{splice}: {st:?}");
    }
}

/// Under prefork each worker rebuilds its backends at a SIGHUP; the workers still take
/// turns from the one round the server's processes share. (After a reload each had a round
/// of its own, and clients met the same backend several times in a row.)
#[test]
fn prefork_workers_take_turns_from_one_round_after_a_reload() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let conf = std::env::temp_dir().join(format!("keel-proxy-round-{}.toml", std::process::id()));
    std::fs::write(
        &conf,
        format!("[proxy]\nbackends = [\"{}\", \"{}\"]\n", a.addr, b.addr),
    )
    .unwrap();
    let srv = Opts::proxy("epoll-et", &[])
        .arg("--config", conf.to_str().unwrap())
        .arg("--model", "prefork")
        .arg("--threads", "4")
        .spawn();
    let order = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let mut c = connect(srv.tcp);
                writeln!(c, "{i}").unwrap();
                let mut line = String::new();
                BufReader::new(&c).read_line(&mut line).unwrap();
                line.split(' ').next().unwrap().to_string()
            })
            .collect()
    };
    let alternates = |o: &[String]| o.windows(2).all(|w| w[0] != w[1]);
    let before = order(8);
    assert!(alternates(&before), "before the reload: {before:?}");
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        srv.stderr_has("configuration reloaded", Duration::from_secs(5)),
        "{}",
        srv.stderr_dump()
    );
    // Each worker reloads once its master has: give them the time.
    thread::sleep(Duration::from_millis(500));
    let after = order(16);
    let _ = std::fs::remove_file(&conf);
    assert!(alternates(&after), "after the reload: {after:?}");
}

#[test]
fn every_model_spreads_clients_over_the_backends() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    for model in ["process-per-conn", "prefork", "thread-per-conn"] {
        // Under the per-connection models `--threads` caps the connections served at once: a
        // next client may come before the last one's slot is free, so leave room.
        let threads = if model == "prefork" { "2" } else { "16" };
        let srv = Opts::proxy("epoll-et", &[a.addr, b.addr])
            .arg("--model", model)
            .arg("--threads", threads)
            .spawn();
        let mut seen = std::collections::HashMap::new();
        for i in 0..12 {
            let mut c = connect(srv.tcp);
            writeln!(c, "{i}").unwrap();
            let mut line = String::new();
            BufReader::new(&c).read_line(&mut line).unwrap();
            *seen
                .entry(line.split(' ').next().unwrap().to_string())
                .or_insert(0) += 1;
        }
        for name in ["a", "b"] {
            assert!(
                seen.get(name).copied().unwrap_or(0) >= 3,
                "{model}: {seen:?}"
            );
        }
        // Each pair is two connections, whichever process served it.
        let (st, done) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 0);
        assert!(done, "{model}: {}", st.line);
        assert_eq!(
            (st.get("accepted"), st.get("connects"), st.get("closed")),
            (12, 12, 24),
            "{model}: {}",
            st.line
        );
    }
}

#[test]
fn failover_outlasts_an_idle_timeout_shorter_than_the_connect_timeout() {
    let (_stuck, stuck) = stuck_backend();
    let live = Backend::named("live");
    let srv = Opts::proxy("epoll-et", &[stuck, live.addr])
        .arg("--threads", "1")
        .arg("--connect-timeout", "0.6")
        .arg("--idle-timeout", "0.2")
        .spawn();
    let mut c = connect(srv.tcp);
    writeln!(c, "patience").unwrap();
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line).unwrap();
    assert_eq!(line, "live patience\n");
    // The idle timer came due while the backend was being reached, and ended nothing.
    let st = srv.stats();
    assert_eq!(st.get("idle_timeouts"), 0, "{}", st.line);
}

#[test]
fn urgent_data_on_a_spliced_stream_neither_stalls_nor_spins_nor_cuts_it() {
    for engine in ENGINES {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let backend = Backend::start(move |mut s| {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = tx.lock().unwrap().send(got);
        });
        let srv = Opts::proxy(engine, &[backend.addr]).spawn();
        let c = connect(srv.tcp);
        // A big write first, so the direction is spliced; then an urgent byte mid-stream,
        // where splice stops and a plain read goes on.
        (&c).write_all(&vec![b'x'; 200_000]).unwrap();
        thread::sleep(Duration::from_millis(300));
        (&c).write_all(b"abc").unwrap();
        thread::sleep(Duration::from_millis(100));
        let sock = socket2::SockRef::from(&c);
        sock.send_out_of_band(b"!").unwrap();
        thread::sleep(Duration::from_millis(100));
        (&c).write_all(b"def").unwrap();
        let cpu0 = srv.cpu_time();
        thread::sleep(Duration::from_secs(1));
        let cpu = srv.cpu_time() - cpu0;
        c.shutdown(Shutdown::Write).unwrap();
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.len(), 200_006, "{engine}");
        assert!(
            got.ends_with(b"xabcdef"),
            "{engine}: {:?}",
            &got[got.len() - 8..]
        );
        assert!(
            cpu < Duration::from_millis(300),
            "{engine}: {cpu:?} of CPU while waiting"
        );
    }
}

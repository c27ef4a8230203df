//! Acceptance tests for the concurrency models behind `--model` (src/server/mod.rs).
//!
//! The same checks run under every model and thread count (1, 2, 4; multi-reactor with both
//! accept strategies), one `#[test]` per model × threads × check, so one model's failure never
//! hides another's result. A model that is not built yet fails its tests (the server exits
//! before printing `listening tcp`): these are its acceptance tests, not optional ones.
//!
//! - `echo`: 1 B, 64 KiB and 1 MiB (written in random-sized chunks while another thread reads),
//!   then 20 clients at once (for the per-connection models, as many as `--threads` allows;
//!   `per_conn_20_concurrent_*` runs the full 20 with a cap above it).
//! - `half_close`: 1 MiB then shutdown(WR): every byte comes back, then EOF.
//! - `graceful`: clients that close first leave no server socket in CLOSE_WAIT; SIGTERM with
//!   clients connected: each client reads EOF, the server exits 0.
//!
//! Model-specific: prefork replaces a worker killed with SIGKILL; half-sync keeps doing I/O for
//! other connections while a handler blocks (with a control showing that one reactor running
//! the same blocking handler inline does not); process-per-conn leaves no zombie and no fd
//! behind after 500 connections; the per-connection models refuse connections past the cap
//! cleanly, count them, and serve again once a slot frees.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use util::{
    children_until, connect, connect_served, echo_concurrently, probe, random_bytes, read_expect,
    read_until_end, show_procs, wait_served, End, Opts, Probe, Server, TCP_CLOSE_WAIT,
};

/// One point of the matrix: a model, its thread count and (multi-reactor) accept strategy.
struct Cfg {
    model: &'static str,
    accept: Option<&'static str>,
    threads: usize,
}

impl Cfg {
    /// `spec` is a model name, or `multi-reactor:reuseport` / `multi-reactor:acceptor`.
    fn new(spec: &'static str, threads: usize) -> Cfg {
        let (model, accept) = match spec.split_once(':') {
            Some((m, a)) => (m, Some(a)),
            None => (spec, None),
        };
        Cfg {
            model,
            accept,
            threads,
        }
    }

    /// `thread-per-conn` and `process-per-conn`: `--threads` caps the connections served at
    /// once, and a connection's slot is freed asynchronously after it closes.
    fn per_conn(&self) -> bool {
        matches!(self.model, "thread-per-conn" | "process-per-conn")
    }

    fn label(&self) -> String {
        match self.accept {
            Some(a) => format!("{}/{} --threads {}", self.model, a, self.threads),
            None => format!("{} --threads {}", self.model, self.threads),
        }
    }

    fn opts(&self) -> Opts {
        let mut o = Opts::echo("epoll-et")
            .arg("--model", self.model)
            .arg("--threads", &self.threads.to_string());
        if let Some(a) = self.accept {
            o = o.arg("--accept", a);
        }
        o
    }

    /// How many of `want` clients may be connected at once.
    fn concurrency(&self, want: usize) -> usize {
        if self.per_conn() {
            want.min(self.threads)
        } else {
            want
        }
    }

    /// A connection that is being served (see `util::connect_served`). Only the
    /// per-connection models may refuse one (a slot not freed yet); anywhere else a refusal
    /// is a bug.
    fn connect(&self, srv: &Server, what: &str) -> TcpStream {
        match connect_served(srv.tcp, Duration::from_secs(5)) {
            Ok((s, refused)) => {
                assert!(
                    refused == 0 || self.per_conn(),
                    "[{}] {what}: {refused} connection(s) refused before one was served\n{}",
                    self.label(),
                    srv.stderr_dump()
                );
                s
            }
            Err(e) => panic!("[{}] {what}: {e}\n{}", self.label(), srv.stderr_dump()),
        }
    }
}

/// Ends a client's connection the orderly way: shutdown(WR), then the server's EOF (with no
/// stray bytes) within 5 s. The server has then finished with it.
fn close_cleanly(s: &mut TcpStream) -> Result<(), String> {
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut extra = Vec::new();
    match read_until_end(s, &mut extra, 1024, Duration::from_secs(5)) {
        End::Eof if extra.is_empty() => Ok(()),
        end => Err(format!(
            "after shutdown(WR): expected EOF, got {end:?} with {} stray bytes",
            extra.len()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

/// Byte-exact echo: single connections of 1 B, 64 KiB and 1 MiB, then concurrent clients.
fn echo(c: &Cfg) {
    let srv = c.opts().spawn();
    let label = c.label();
    for (i, &(size, chunked)) in [(1usize, false), (64 * 1024, false), (1024 * 1024, true)]
        .iter()
        .enumerate()
    {
        let data = random_bytes(0x30DE_0000 + i as u64, size);
        let mut s = c.connect(&srv, &format!("connection for {size} bytes"));
        let seed = chunked.then_some(i as u64 + 11);
        if let Err(e) = echo_concurrently(&mut s, &data, seed, false, Duration::from_secs(30)) {
            panic!("[{label}] echo of {size} bytes: {e}\n{}", srv.stderr_dump());
        }
        if let Err(e) = close_cleanly(&mut s) {
            panic!(
                "[{label}] after echoing {size} bytes: {e}\n{}",
                srv.stderr_dump()
            );
        }
    }

    let n = c.concurrency(20);
    const PER_CLIENT: usize = 16 * 1024;
    let failures = concurrent_clients(&srv, n, PER_CLIENT);
    assert!(
        failures.is_empty(),
        "[{label}] {} of {n} concurrent clients failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        srv.stderr_dump()
    );
    // Counters of a connection whose thread or process is just ending may reach the summed
    // line a moment after the client saw its EOF: poll (bounded).
    let total = (1 + 64 * 1024 + 1024 * 1024 + n * PER_CLIENT) as u64;
    let (st, ok) = srv.stats_until(Duration::from_secs(3), |s| {
        s.get("bytes_in") >= total && s.get("bytes_out") >= total
    });
    assert!(
        ok,
        "[{label}] bytes_in/bytes_out below the {total} bytes echoed, 3 s after the last \
         client closed (the stats line must sum over every loop, thread or process): {}",
        st.line
    );
}

/// `n` clients connect (retrying a refusal only where the model has a cap), wait until all are
/// connected, then each echoes `size` bytes in random-sized chunks and closes. Returns one line
/// per failed client.
fn concurrent_clients(srv: &Server, n: usize, size: usize) -> Vec<String> {
    let addr = srv.tcp;
    let connected = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let connected = connected.clone();
            thread::spawn(move || -> Result<(), String> {
                let (mut s, _refused) = connect_served(addr, Duration::from_secs(5))?;
                connected.fetch_add(1, Ordering::SeqCst);
                // Bounded wait until every client is connected, so they really overlap.
                let deadline = Instant::now() + Duration::from_secs(10);
                while connected.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(2));
                }
                let data = random_bytes(0xC0_0000 + i as u64, size);
                echo_concurrently(
                    &mut s,
                    &data,
                    Some(i as u64),
                    false,
                    Duration::from_secs(30),
                )?;
                close_cleanly(&mut s)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("client {i}: {e}")),
            Err(_) => failures.push(format!("client {i}: thread panicked")),
        }
    }
    failures
}

/// 1 MiB then shutdown(WR): every byte back, then EOF. Then a request whose FIN follows at once.
fn half_close(c: &Cfg) {
    let srv = c.opts().spawn();
    let label = c.label();
    let data = random_bytes(0x4A1F_0001, 1024 * 1024);
    let mut s = c.connect(&srv, "1 MiB connection");
    if let Err(e) = echo_concurrently(&mut s, &data, Some(5), true, Duration::from_secs(30)) {
        panic!(
            "[{label}] 1 MiB then shutdown(WR): {e}\n{}",
            srv.stderr_dump()
        );
    }
    let mut extra = Vec::new();
    let end = read_until_end(&mut s, &mut extra, 1024, Duration::from_secs(10));
    assert!(
        end == End::Eof && extra.is_empty(),
        "[{label}] 1 MiB then shutdown(WR): expected EOF after the echo, got {end:?} with {} \
         extra bytes\n{}",
        extra.len(),
        srv.stderr_dump()
    );
    drop(s);

    let msg = random_bytes(0x4A1F_0002, 3000);
    let mut s = c.connect(&srv, "request + FIN connection");
    s.write_all(&msg).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut got = Vec::new();
    let end = read_until_end(&mut s, &mut got, msg.len() + 1, Duration::from_secs(10));
    assert!(
        end == End::Eof && got == msg,
        "[{label}] 3000 bytes then FIN at once: got {} bytes (equal: {}), ended {end:?}\n{}",
        got.len(),
        got == msg,
        srv.stderr_dump()
    );
}

/// Clients that close first leave no server socket in CLOSE_WAIT; then SIGTERM with clients
/// connected: every client reads EOF, the server exits 0 and writes its final stats line.
fn graceful(c: &Cfg) {
    let srv = c
        .opts()
        .arg("--linger-timeout", "2")
        .arg("--drain-timeout", "5")
        .spawn();
    let label = c.label();

    // Clients end first: half shutdown(WR) and read to EOF, half just close after the echo.
    for i in 0..6usize {
        let msg = random_bytes(0x6ACE_0000 + i as u64, 100 + i * 37);
        let mut s = c.connect(&srv, &format!("closing client {i}"));
        s.write_all(&msg).expect("write");
        if let Err(e) = read_expect(&mut s, &msg, Duration::from_secs(5)) {
            panic!("[{label}] closing client {i}: {e}\n{}", srv.stderr_dump());
        }
        if i % 2 == 0 {
            if let Err(e) = close_cleanly(&mut s) {
                panic!("[{label}] closing client {i}: {e}\n{}", srv.stderr_dump());
            }
        }
        drop(s);
    }
    let bad = srv.wait_no_tcp_states(&[TCP_CLOSE_WAIT], Duration::from_secs(3));
    assert!(
        bad.is_empty(),
        "[{label}] server sockets still in CLOSE_WAIT 3 s after the clients closed: {}\n{}",
        bad.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        srv.stderr_dump()
    );

    // Clients still connected (and served) when SIGTERM comes.
    let k = c.concurrency(4);
    let mut held: Vec<TcpStream> = (0..k)
        .map(|i| c.connect(&srv, &format!("held client {i}")))
        .collect();
    let t = Instant::now();
    srv.signal(Signal::SIGTERM);
    for (i, s) in held.iter_mut().enumerate() {
        let mut got = Vec::new();
        let end = read_until_end(s, &mut got, 1024, Duration::from_secs(5));
        assert!(
            end == End::Eof && got.is_empty(),
            "[{label}] held client {i}: expected EOF after SIGTERM, got {end:?} with {} bytes \
             ({:?} after the signal)\n{}",
            got.len(),
            t.elapsed(),
            srv.stderr_dump()
        );
    }
    drop(held); // our FINs let the server finish its graceful closes at once
    let status = srv.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(status, Some(st) if st.code() == Some(0)),
        "[{label}] after SIGTERM with {k} clients connected: exit status {status:?} (want 0 \
         within 10 s)\n{}",
        srv.stderr_dump()
    );
    assert!(
        srv.final_stats().is_some(),
        "[{label}] no final `stats` line on stderr at exit\n{}",
        srv.stderr_dump()
    );
}

/// One module per model × accept × threads, with one `#[test]` per check.
macro_rules! matrix {
    ($name:ident, $spec:expr, $threads:expr) => {
        mod $name {
            fn cfg() -> super::Cfg {
                super::Cfg::new($spec, $threads)
            }
            #[test]
            fn echo() {
                super::echo(&cfg())
            }
            #[test]
            fn half_close() {
                super::half_close(&cfg())
            }
            #[test]
            fn graceful() {
                super::graceful(&cfg())
            }
        }
    };
}

matrix!(multi_reactor_reuseport_t1, "multi-reactor:reuseport", 1);
matrix!(multi_reactor_reuseport_t2, "multi-reactor:reuseport", 2);
matrix!(multi_reactor_reuseport_t4, "multi-reactor:reuseport", 4);
matrix!(multi_reactor_acceptor_t1, "multi-reactor:acceptor", 1);
matrix!(multi_reactor_acceptor_t2, "multi-reactor:acceptor", 2);
matrix!(multi_reactor_acceptor_t4, "multi-reactor:acceptor", 4);
matrix!(prefork_t1, "prefork", 1);
matrix!(prefork_t2, "prefork", 2);
matrix!(prefork_t4, "prefork", 4);
matrix!(half_sync_t1, "half-sync", 1);
matrix!(half_sync_t2, "half-sync", 2);
matrix!(half_sync_t4, "half-sync", 4);
matrix!(leader_followers_t1, "leader-followers", 1);
matrix!(leader_followers_t2, "leader-followers", 2);
matrix!(leader_followers_t4, "leader-followers", 4);
matrix!(thread_per_conn_t1, "thread-per-conn", 1);
matrix!(thread_per_conn_t2, "thread-per-conn", 2);
matrix!(thread_per_conn_t4, "thread-per-conn", 4);
matrix!(process_per_conn_t1, "process-per-conn", 1);
matrix!(process_per_conn_t2, "process-per-conn", 2);
matrix!(process_per_conn_t4, "process-per-conn", 4);

// ---------------------------------------------------------------------------------------------
// Per-connection models: the full 20 concurrent clients, and the cap
// ---------------------------------------------------------------------------------------------

/// With a cap above 20, the per-connection models serve 20 clients at once.
fn per_conn_20_concurrent(model: &'static str) {
    let c = Cfg::new(model, 24);
    let srv = c.opts().spawn();
    let failures = concurrent_clients(&srv, 20, 64 * 1024);
    assert!(
        failures.is_empty(),
        "[{}] {} of 20 concurrent clients failed:\n{}\n{}",
        c.label(),
        failures.len(),
        failures.join("\n"),
        srv.stderr_dump()
    );
}

#[test]
fn per_conn_20_concurrent_thread() {
    per_conn_20_concurrent("thread-per-conn")
}

#[test]
fn per_conn_20_concurrent_process() {
    per_conn_20_concurrent("process-per-conn")
}

/// `--threads 4` is the cap: 4 connections are served, a 5th is closed at once (EOF or reset,
/// not a hang) and counted as `refused_limit`; the 4 keep working; once one of them closes, a
/// new connection is served.
fn cap_refuses_past_limit(model: &'static str) {
    let c = Cfg::new(model, 4);
    let label = c.label();
    let srv = c.opts().spawn();
    let mut held: Vec<TcpStream> = (0..4)
        .map(|i| c.connect(&srv, &format!("client {i} of 4")))
        .collect();

    let mut fifth = connect(srv.tcp);
    let p = probe(&mut fifth, b"fifth", Duration::from_secs(5));
    assert!(
        matches!(p, Probe::Closed(End::Eof | End::Reset)),
        "[{label}] a 5th connection past the cap of 4: expected a clean close (EOF or reset), \
         got {p:?}\n{}",
        srv.stderr_dump()
    );
    let (st, ok) = srv.stats_until(Duration::from_secs(2), |s| s.get("refused_limit") >= 1);
    assert!(
        ok,
        "[{label}] the refused 5th connection is not counted as refused_limit: {}",
        st.line
    );

    for (i, s) in held.iter_mut().enumerate() {
        let msg = format!("held {i} still served");
        let p = probe(s, msg.as_bytes(), Duration::from_secs(5));
        assert_eq!(
            p,
            Probe::Served,
            "[{label}] held client {i} after the refusal\n{}",
            srv.stderr_dump()
        );
    }

    let mut first = held.remove(0);
    if let Err(e) = close_cleanly(&mut first) {
        panic!("[{label}] closing one of the 4: {e}\n{}", srv.stderr_dump());
    }
    drop(first);
    let p = wait_served(srv.tcp, b"a slot is free again", Duration::from_secs(5));
    assert_eq!(
        p,
        Probe::Served,
        "[{label}] once one of the 4 closed, a new connection is not served within 5 s\n{}",
        srv.stderr_dump()
    );
}

#[test]
fn thread_per_conn_cap_refuses_fifth() {
    cap_refuses_past_limit("thread-per-conn")
}

#[test]
fn process_per_conn_cap_refuses_fifth() {
    cap_refuses_past_limit("process-per-conn")
}

// ---------------------------------------------------------------------------------------------
// Every model: a stop answers what was sent before it
// ---------------------------------------------------------------------------------------------

/// Two clients send while the handler is busy (300 ms per call, one worker where the model
/// queues work; A sends a second byte while its first is being handled), then SIGTERM: every
/// byte comes back before the close, under every model. (Half-sync and leader/followers used to drop what waited behind the busy handler.)
#[test]
fn a_stop_answers_what_clients_had_sent() {
    for model in util::MODELS {
        let threads = if matches!(model, "thread-per-conn" | "process-per-conn") {
            "4"
        } else {
            "1"
        };
        let srv = Opts::echo("epoll-et")
            .arg("--model", model)
            .arg("--threads", threads)
            .arg("--work-ms", "300")
            .spawn();
        let mut a = connect(srv.tcp);
        let mut b = connect(srv.tcp);
        thread::sleep(Duration::from_millis(200));
        a.write_all(b"a").unwrap();
        thread::sleep(Duration::from_millis(50));
        b.write_all(b"b").unwrap();
        // More for A while its handler is still busy with the first byte.
        a.write_all(b"c").unwrap();
        thread::sleep(Duration::from_millis(50));
        srv.signal(Signal::SIGTERM);
        for (name, s, want) in [("A", &mut a, &b"ac"[..]), ("B", &mut b, &b"b"[..])] {
            let mut got = Vec::new();
            let end = read_until_end(s, &mut got, 1 << 16, Duration::from_secs(10));
            assert_eq!(
                (got.as_slice(), &end),
                (want, &End::Eof),
                "[{model}] client {name}\n{}",
                srv.stderr_dump()
            );
            // Our FIN too, so the server's close need not wait out its linger timeout.
            let _ = s.shutdown(Shutdown::Write);
        }
        let status = srv.wait_exit(Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| s.success()),
            "[{model}] exit after SIGTERM: {status:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// process-per-conn: no zombies, no fd leak
// ---------------------------------------------------------------------------------------------

/// A connection the master serves itself (the admin page) is inherited by every child forked
/// while it is open. When the master then closes it, the open file lives on in the child, and
/// so would the master's epoll registration of it unless the master deletes it: in
/// level-triggered mode the master would then wake for it without end (one core at 100%).
#[test]
fn process_per_conn_master_stays_idle_after_closing_a_connection_a_child_inherited() {
    let srv = Opts::echo("epoll-lt")
        .arg("--model", "process-per-conn")
        .arg("--threads", "4")
        .arg("--admin", "127.0.0.1:0")
        .spawn();
    let admin = srv.admin_addr().expect("a `listening admin` line");
    let mut a = connect(admin);
    a.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = [0u8; 4096];
    assert!(a.read(&mut got).unwrap() > 0, "no /metrics answer");
    // A child is forked for this one while the admin connection is open.
    let mut c = connect(srv.tcp);
    c.write_all(b"ping").unwrap();
    read_expect(&mut c, b"ping", Duration::from_secs(10)).unwrap();
    // The master closes the admin connection once the client is done with it.
    a.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let end = read_until_end(&mut a, &mut rest, 1 << 20, Duration::from_secs(10));
    assert!(
        matches!(end, End::Eof),
        "the admin connection did not end: {end:?}"
    );
    thread::sleep(Duration::from_millis(300));
    let before = srv.cpu_time();
    thread::sleep(Duration::from_secs(1));
    let used = srv.cpu_time() - before;
    assert!(
        used < Duration::from_millis(200),
        "the master used {used:?} of CPU in 1 s with nothing to do (a stale epoll entry?)\n{}",
        srv.stderr_dump()
    );
    drop(c);
}

/// With a log file, the master parks the log's writer thread before each fork; the thread just
/// joined could still be counted in /proc/self/stat, and the fork was refused for want of a
/// single thread (a client in every few thousand closed unanswered, counted `refused_limit`).
/// Sequential clients never come near the cap of 16, so none may be refused.
#[test]
fn process_per_conn_with_a_log_file_serves_every_sequential_client() {
    let log = std::env::temp_dir().join(format!("keel-ppc-log-{}.log", std::process::id()));
    let srv = Opts::echo("epoll-lt")
        .arg("--model", "process-per-conn")
        .arg("--threads", "16")
        .arg("--log-file", log.to_str().unwrap())
        .spawn();
    let mut unanswered = 0;
    for _ in 0..3000 {
        let mut c = connect(srv.tcp);
        c.write_all(b"x").unwrap();
        if read_expect(&mut c, b"x", Duration::from_secs(10)).is_err() {
            unanswered += 1;
        }
    }
    srv.signal(Signal::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(10));
    let _ = std::fs::remove_file(&log);
    assert!(
        matches!(status, Some(st) if st.code() == Some(0)),
        "exit {status:?}"
    );
    let stats = srv.final_stats().expect("a final stats line");
    assert_eq!(
        (unanswered, stats.get("refused_limit")),
        (0, 0),
        "sequential clients unanswered / refused\n{}",
        srv.stderr_dump()
    );
}

/// 500 sequential connections (each echoes, then closes): afterwards no child of the server is
/// a zombie and the server's own fd count is back at its baseline.
#[test]
fn process_per_conn_500_sequential_no_zombies() {
    let c = Cfg::new("process-per-conn", 8);
    let label = c.label();
    let srv = c.opts().spawn();
    let baseline = srv.baseline_fds();
    let mut refused = 0u32;
    let t = Instant::now();
    for i in 0..500u64 {
        let (mut s, r) = connect_served(srv.tcp, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("[{label}] connection {i}: {e}\n{}", srv.stderr_dump()));
        refused += r;
        let msg = random_bytes(i, 1 + (i as usize * 7) % 200);
        s.write_all(&msg).expect("write");
        if let Err(e) = read_expect(&mut s, &msg, Duration::from_secs(5)) {
            panic!("[{label}] connection {i}: {e}\n{}", srv.stderr_dump());
        }
        if i % 2 == 0 {
            if let Err(e) = close_cleanly(&mut s) {
                panic!("[{label}] connection {i}: {e}\n{}", srv.stderr_dump());
            }
        }
        drop(s);
    }
    let elapsed = t.elapsed();

    let (kids, ok) = children_until(srv.pid, Duration::from_secs(5), |k| {
        k.iter().all(|p| p.state != 'Z')
    });
    assert!(
        ok,
        "[{label}] zombie children 5 s after 500 connections ({elapsed:?}, {refused} refused \
         and retried): {}",
        show_procs(&kids)
    );
    let n = srv.fd_count_settles_to(baseline, Duration::from_secs(5));
    assert_eq!(
        n,
        baseline,
        "[{label}] server fd count {n} != baseline {baseline} after 500 connections: {:?}",
        srv.fd_listing()
    );
    let st = srv.stats();
    assert!(
        st.get("accepted") >= 500,
        "[{label}] accepted < 500 after 500 connections: {}",
        st.line
    );
}

// ---------------------------------------------------------------------------------------------
// prefork: a killed worker is replaced
// ---------------------------------------------------------------------------------------------

fn live(kids: &[util::ProcInfo]) -> Vec<i32> {
    kids.iter()
        .filter(|p| p.state != 'Z')
        .map(|p| p.pid)
        .collect()
}

/// kill -9 one worker: the master starts a new one within a few seconds (a new child PID, as
/// many live workers as before, the dead one reaped) and service continues.
#[test]
fn prefork_replaces_killed_worker() {
    let c = Cfg::new("prefork", 2);
    let label = c.label();
    let srv = c.opts().spawn();
    let (kids, ok) = children_until(srv.pid, Duration::from_secs(5), |k| live(k).len() >= 2);
    assert!(
        ok,
        "[{label}] expected 2 worker processes (children of {}), saw: [{}]",
        srv.pid,
        show_procs(&kids)
    );
    let before = live(&kids);
    util::assert_serves(&srv, "start-up");

    let victim = before[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill -9 a worker");
    let (now, ok) = children_until(srv.pid, Duration::from_secs(5), |k| {
        let l = live(k);
        l.len() >= before.len()
            && l.iter().any(|p| !before.contains(p))
            && !k.iter().any(|p| p.pid == victim)
    });
    assert!(
        ok,
        "[{label}] 5 s after kill -9 of worker {victim}: children [{}] (before: {before:?}); \
         want {} live workers, one of them new, and {victim} reaped\n{}",
        show_procs(&now),
        before.len(),
        srv.stderr_dump()
    );
    // Several fresh connections, so that whichever worker takes them, each is served.
    for i in 0..10 {
        util::assert_serves(&srv, &format!("a worker was killed and replaced ({i})"));
    }
    srv.signal(Signal::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(status, Some(st) if st.code() == Some(0)),
        "[{label}] SIGTERM after a worker was replaced: exit status {status:?}\n{}",
        srv.stderr_dump()
    );
}

// ---------------------------------------------------------------------------------------------
// half-sync: a blocking handler does not block the reactor
// ---------------------------------------------------------------------------------------------

const WORK_MS: u64 = 50;
/// How much slower the quiet connection's median round trip may get beside the busy one.
const SLACK_MS: u64 = 15;
const SAMPLES: usize = 15;

/// Round trips of 8 bytes on `b`, `n` of them, 10 ms apart; sorted.
fn round_trips(
    srv: &Server,
    b: &mut TcpStream,
    n: usize,
    label: &str,
    what: &str,
) -> Vec<Duration> {
    let mut rtts = Vec::new();
    for i in 0..n {
        let msg = format!("b{i:06}");
        let t = Instant::now();
        b.write_all(msg.as_bytes()).expect("write");
        if let Err(e) = read_expect(b, msg.as_bytes(), Duration::from_secs(5)) {
            panic!(
                "[{label}] quiet connection, {what}, round trip {i}: {e}\n{}",
                srv.stderr_dump()
            );
        }
        rtts.push(t.elapsed());
        thread::sleep(Duration::from_millis(10));
    }
    rtts.sort();
    rtts
}

/// What the quiet connection saw.
struct Neighbour {
    /// Round trips while alone, sorted.
    alone: Vec<Duration>,
    /// Round trips while the busy connection kept a handler busy, sorted.
    busy: Vec<Duration>,
    /// Bytes the busy connection got back meanwhile.
    busy_echoed: u64,
}

impl Neighbour {
    fn median_alone(&self) -> Duration {
        self.alone[self.alone.len() / 2]
    }
    fn median_busy(&self) -> Duration {
        self.busy[self.busy.len() / 2]
    }
    fn show(&self) -> String {
        let f = |v: &[Duration]| v.iter().map(ms).collect::<Vec<_>>().join(" ");
        format!(
            "alone (ms): {}; beside the busy one (ms): {}",
            f(&self.alone),
            f(&self.busy)
        )
    }
}

/// With `--work-ms 50` every read costs its handler 50 ms. Connection B first measures its round
/// trips alone; then connection A keeps a handler busy without pause (a byte every 5 ms, its
/// echo read by another thread) while B measures again.
fn quiet_beside_busy(srv: &Server, label: &str) -> Neighbour {
    let mut b = connect(srv.tcp);
    let alone = round_trips(srv, &mut b, SAMPLES, label, "alone");

    let mut a = connect(srv.tcp);
    let mut a_reader = a.try_clone().expect("dup");
    a_reader
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let reader = {
        let (stop, echoed) = (stop.clone(), echoed.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match a_reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        echoed.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if util::is_timeout(&e) => {}
                    Err(_) => break,
                }
            }
        })
    };
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if a.write_all(b"a").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Let A's handler get going (its first read sleeps 50 ms and more bytes queue behind it).
    thread::sleep(Duration::from_millis(200));
    // Stop A's threads however the measurement ends (a panic included).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let guard = StopOnDrop(stop);
    let busy = round_trips(srv, &mut b, SAMPLES, label, "beside the busy one");
    drop(guard);
    let _ = writer.join();
    let _ = reader.join();
    Neighbour {
        alone,
        busy,
        busy_echoed: echoed.load(Ordering::SeqCst),
    }
}

/// Runs [`quiet_beside_busy`] on a server for `c` with `--work-ms WORK_MS` and prints the
/// result. Returns the label (with the work time) and the result.
fn busy_neighbour(c: Cfg) -> (String, Neighbour) {
    let label = format!("{} --work-ms {WORK_MS}", c.label());
    let srv = c.opts().arg("--work-ms", &WORK_MS.to_string()).spawn();
    let r = quiet_beside_busy(&srv, &label);
    eprintln!("[{label}] {}", r.show());
    (label, r)
}

fn ms(d: &Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// half-sync, `--work-ms 50 --threads 2`: while connection A keeps one worker busy, connection
/// B's handler runs on the other worker, and the reactor keeps reading B's requests and writing
/// its answers. So B's round trip stays what it is alone (its own 50 ms of work plus little):
/// the median may grow by less than 15 ms. Had the reactor thread been blocked by A's sleeping
/// handler, B's request would wait for the rest of A's sleep (uniform over 0..50 ms) and often a
/// whole extra one: the median grows by 25 ms or more (see the control test below, which runs
/// the same load on one reactor running handlers inline).
#[test]
fn half_sync_busy_handler_does_not_block_others() {
    let (label, r) = busy_neighbour(Cfg::new("half-sync", 2));
    assert!(
        r.busy_echoed > 0,
        "[{label}] the busy connection got nothing back: it was not being served"
    );
    assert!(
        r.alone[0] >= Duration::from_millis(WORK_MS - 5),
        "[{label}] a round trip shorter than the handler's {WORK_MS} ms of work (--work-ms not \
         applied?): {}",
        r.show()
    );
    assert!(
        r.median_busy() < r.median_alone() + Duration::from_millis(SLACK_MS),
        "[{label}] beside a busy connection the quiet one's median round trip grows from {} to \
         {} ms (limit +{SLACK_MS} ms): the reactor (or the quiet connection's worker) waits for \
         the busy handler. {}",
        ms(&r.median_alone()),
        ms(&r.median_busy()),
        r.show()
    );
}

/// Control for the test above: one reactor running the same blocking handler inline
/// (multi-reactor, one loop) makes the quiet connection wait for the busy one's handler, so its
/// median round trip grows by at least 15 ms. This shows the half-sync bound tells the two
/// apart.
#[test]
fn control_single_reactor_is_blocked_by_busy_handler() {
    let (label, r) = busy_neighbour(Cfg::new("multi-reactor", 1));
    assert!(
        r.busy_echoed > 0,
        "[{label}] the busy connection got nothing back"
    );
    assert!(
        r.median_busy() >= r.median_alone() + Duration::from_millis(SLACK_MS),
        "[{label}] the quiet connection's median round trip grows only from {} to {} ms beside \
         the busy one, though one loop runs both handlers inline: the half-sync bound would \
         not detect a blocked reactor. {}",
        ms(&r.median_alone()),
        ms(&r.median_busy()),
        r.show()
    );
}

/// Idle prefork workers stay asleep: a worker copies its counters to the master's board
/// every 100 ms only while they change, backing off to once a second when nothing happens.
/// (Each woke about 20 times a second doing nothing: 4,000 wake-ups a second for 200.)
#[test]
fn idle_prefork_workers_hardly_wake() {
    let srv = Opts::echo("epoll-et")
        .arg("--model", "prefork")
        .arg("--threads", "4")
        .spawn();
    util::assert_serves(&srv, "start");
    // Past the back-off's first steps, then three idle seconds.
    thread::sleep(Duration::from_secs(2));
    let before = srv.stats().get("wakeups");
    thread::sleep(Duration::from_secs(3));
    let woke = srv.stats().get("wakeups") - before;
    // Four workers and the master, three seconds: about 5 a second each was 60 in all; 20 a
    // second each would be 240. (The SIGUSR2 that asks for the figures wakes each once.)
    assert!(woke < 100, "{woke} wake-ups in 3 idle seconds");
}

/// Leader/followers with every thread busy in a handler past another connection's idle
/// deadline: that connection's request, which came well inside the timeout, is still in its
/// socket when the next leader runs the due timers. It is served, not closed as idle (its
/// bytes were read and dropped by the close, and the client saw a clean end, no answer).
#[test]
fn leader_followers_serves_a_request_that_waited_while_every_thread_was_busy() {
    for model in ["leader-followers", "multi-reactor"] {
        let srv = Opts::echo("epoll-et")
            .arg("--model", model)
            .arg("--threads", "1")
            .arg("--idle-timeout", "1")
            .arg("--work-ms", "600")
            .spawn();
        let mut a = connect(srv.tcp);
        let mut b = connect(srv.tcp);
        thread::sleep(Duration::from_millis(500));
        a.write_all(b"a").unwrap();
        thread::sleep(Duration::from_millis(50));
        b.write_all(b"b").unwrap();
        for (name, s, want) in [("a", &mut a, b'a'), ("b", &mut b, b'b')] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = [0u8; 1];
            let n = s.read(&mut got).unwrap_or(0);
            assert_eq!(
                (n, got[0]),
                (1, want),
                "[{model}] {name}: no echo (a close instead)\n{}",
                srv.stderr_dump()
            );
        }
    }
}

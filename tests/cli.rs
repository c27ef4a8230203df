//! Command-line contract: bad arguments exit 2 with a message, a bind error exits 1 naming the
//! address.

mod util;

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Kills the child (by its PID) on drop unless it has been reaped.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs keel with `args`, expecting it to exit by itself within 10 s.
fn run(args: &[&str]) -> Output {
    let child = Command::new(util::keel_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel");
    let mut g = Guard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = g.0.as_mut().unwrap();
        if c.try_wait().expect("try_wait").is_some() {
            return g.0.take().unwrap().wait_with_output().expect("output");
        }
        assert!(
            Instant::now() < deadline,
            "keel {args:?} did not exit within 10 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &[
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--engine",
            "no-such-engine",
        ][..],
        &["echo", "--listen", "127.0.0.1:0", "--idle-timeout", "soon"][..],
        &["echo", "--listen", "not-an-address"][..],
        &["echo", "--listen", "127.0.0.1:0", "--threads", "0"][..],
        // A count that sizes tables at start: it used to abort the process (capacity overflow).
        &["echo", "--listen", "127.0.0.1:0", "--threads", "10001"][..],
        &[
            "http",
            "--model",
            "half-sync",
            "--threads",
            "9223372036854775807",
        ][..],
        &[
            "bench",
            "pingpong",
            "--addr",
            "127.0.0.1:9",
            "--size",
            "999999999999",
        ][..],
        // Refused as the file's log_filter is, not only when logging starts (it exited 1).
        &[
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--log-filter",
            "keel=notalevel",
        ][..],
        &["echo", "--listen", "127.0.0.1:0", "--keepalive-idle", "0"][..],
        // Values the file refuses are refused here too, not truncated or ignored.
        &["echo", "--listen", "127.0.0.1:0", "--sndbuf", "4294967296"][..],
        &["echo", "--listen", "127.0.0.1:0", "--rcvbuf", "0"][..],
        &["echo", "--keepalive-idle", "5", "--keepalive-count", "1000"][..],
        &["echo", "--keepalive-idle", "5", "--keepalive-count", "0"][..],
        // Linux takes whole seconds: a fraction would be cut off without a word.
        &["echo", "--keepalive-idle", "1.5"][..],
        &["echo", "--listen", "127.0.0.1:0", "--backlog=-1"][..],
        &["echo", "--listen", "127.0.0.1:0", "--max-conns", "0"][..],
        // At 0 every connection would be closed before it could say anything.
        &["echo", "--listen", "127.0.0.1:0", "--idle-timeout", "0"][..],
        &["http", "--listen", "127.0.0.1:0", "--header-timeout", "0"][..],
        &[
            "http",
            "--listen",
            "127.0.0.1:0",
            "--keepalive-requests",
            "0",
        ][..],
        &["http", "--listen", "127.0.0.1:0", "--cache-entries", "0"][..],
        // Only echo has handler work to delay (the file's `work_ms` elsewhere is refused too).
        &["discard", "--listen", "127.0.0.1:0", "--work-ms", "5"][..],
        &["chat", "--listen", "127.0.0.1:0", "--work-ms", "5"][..],
        &["http", "--listen", "127.0.0.1:0", "--work-ms", "5"][..],
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
            "--work-ms",
            "5",
        ][..],
        // A proxy that would relay to itself, or to a port nothing can listen on.
        &[
            "proxy",
            "--listen",
            "127.0.0.1:7101",
            "--backend",
            "127.0.0.1:7101",
        ][..],
        &["proxy", "--backend", "127.0.0.1:0"][..],
        // A model the engine cannot run (one epoll instance shared by threads).
        &["echo", "--model", "leader-followers", "--engine", "poll"][..],
        // The admin listener on the site's own port.
        &[
            "echo",
            "--listen",
            "127.0.0.1:7999",
            "--admin",
            "127.0.0.1:7999",
        ][..],
        &[
            "http",
            "--listen",
            "0.0.0.0:7998",
            "--admin",
            "127.0.0.1:7998",
        ][..],
        // A setting the model would ignore.
        &["echo", "--model", "prefork", "--accept", "acceptor"][..],
        &["http", "--model", "half-sync", "--accept", "acceptor"][..],
        // Refused by the file too ("from 1 to 1073741824").
        &["echo", "--rlimit-nofile", "0"][..],
        &["bench", "pingpong", "--addr", "127.0.0.1:9", "--conns", "0"][..],
        &["bench", "pingpong", "--addr", "127.0.0.1:9", "--size", "0"][..],
        &["no-such-subcommand"][..],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "keel {args:?}: exit {:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.stderr.is_empty(),
            "keel {args:?}: exit 2 without a message on stderr"
        );
    }
}

/// `keel bench pingpong` with 3 connections to `addr` for up to 30 s: a run that ends early
/// has ended by itself.
fn pingpong_three(addr: &str) -> Output {
    run(&[
        "bench",
        "pingpong",
        "--addr",
        addr,
        "--conns",
        "3",
        "--duration",
        "30",
    ])
}

/// A load generator that reached no server measured nothing: it fails (exit 1) and says why,
/// rather than report a rate of zero as a result.
#[test]
fn pingpong_against_a_closed_port_fails_saying_why() {
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let started = Instant::now();
    let out = pingpong_three(&addr);
    // With no connection left there is nothing to wait for.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "pingpong sat out its duration with every connection refused"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "pingpong to closed {addr}: exit {:?}, stderr {stderr:?}",
        out.status
    );
    assert!(
        stderr.contains("refused") && stderr.contains(&addr),
        "the error names neither the address nor the refusal: {stderr:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("errors=3"),
        "stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A server that accepts and closes every connection without an echo: no connection failed,
/// but nothing was measured either, and the load generator says so (exit 1).
#[test]
fn pingpong_against_a_server_that_only_closes_fails_saying_why() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    let closer = thread::spawn(move || {
        for c in listener.incoming().take(3) {
            // Take the message (so the close is a FIN, not a reset), answer nothing.
            let mut c = c.unwrap();
            let mut msg = [0u8; 64];
            let _ = std::io::Read::read_exact(&mut c, &mut msg);
        }
    });
    let out = pingpong_three(&addr);
    closer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr {stderr:?}");
    assert!(
        stderr.contains("measured nothing") && stderr.contains("closed every connection"),
        "{stderr:?}"
    );
}

/// A server that answers each message with as many bytes, but not the same ones: nothing it
/// sends back counts as an echo, and every connection is an error.
#[test]
fn pingpong_counts_only_echoes_that_match_what_was_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    let liar = thread::spawn(move || {
        for c in listener.incoming().take(3) {
            let mut c = c.unwrap();
            let mut msg = [0u8; 64];
            if std::io::Read::read_exact(&mut c, &mut msg).is_ok() {
                msg.reverse();
                let _ = std::io::Write::write_all(&mut c, &msg);
                let mut rest = Vec::new();
                let _ = std::io::Read::read_to_end(&mut c, &mut rest);
            }
        }
    });
    let out = pingpong_three(&addr);
    liar.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr {stderr:?}");
    assert!(
        stdout.contains("messages=0 ") && stdout.contains("errors=3"),
        "{stdout}"
    );
    assert!(stderr.contains("the echo differs"), "{stderr:?}");
}

/// A server that takes the messages and never answers (discard) keeps the connections open:
/// the load generator measured nothing and says that no echo came, not that it was closed.
#[test]
fn pingpong_against_a_server_that_never_answers_says_so() {
    let srv = util::Opts::discard("epoll-lt").spawn();
    let addr = srv.tcp.to_string();
    let out = run(&[
        "bench",
        "pingpong",
        "--addr",
        &addr,
        "--conns",
        "3",
        "--duration",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr {stderr:?}");
    assert!(
        stderr.contains("no echo came back") && !stderr.contains("closed every connection"),
        "{stderr:?}"
    );
}

/// An fd limit too low for the start itself (epoll, waker, listeners, the EMFILE reserve) is
/// said as such, with the limit, not as a bare "Too many open files", whichever socket or
/// loop it stops at (at 8 with one loop, the UDP socket: it was "cannot bind udp ...: Too
/// many open files").
#[test]
fn an_fd_limit_too_low_to_start_is_explained() {
    for (threads, limit) in [("2", "12"), ("1", "7"), ("1", "8"), ("1", "9")] {
        let out = run(&[
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            threads,
            "--rlimit-nofile",
            limit,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "--threads {threads} --rlimit-nofile {limit}: exit {:?}, stderr {stderr:?}",
            out.status
        );
        assert!(
            stderr.contains("out of file descriptors while starting")
                && stderr.contains(&format!("is {limit};"))
                && stderr.contains("--rlimit-nofile")
                && stderr.contains("Too many open files"),
            "--threads {threads} --rlimit-nofile {limit}: stderr {stderr:?}"
        );
    }
}

#[test]
fn bind_error_exits_1_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(&["echo", "--listen", &addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "keel echo --listen {addr} (address in use): exit {:?}, stderr {stderr:?}",
        out.status
    );
    assert!(
        stderr.contains(&addr),
        "bind error message does not name {addr}: {stderr:?}"
    );
}

/// A port another keel already serves is refused too, though both would bind it with
/// SO_REUSEPORT (each loop has its own listener): without `--reuseport=true` the second server
/// must not silently take a share of the first one's connections. Discard has no UDP socket,
/// whose bind would have refused it anyway.
#[test]
fn a_port_another_server_listens_on_is_refused_unless_shared() {
    let first = util::Opts::discard("epoll-lt")
        .arg("--threads", "2")
        .spawn();
    let addr = first.tcp.to_string();
    for threads in ["1", "2"] {
        let out = run(&["discard", "--listen", &addr, "--threads", threads]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "--threads {threads}: {stderr:?}"
        );
        assert!(
            stderr.contains(&addr) && stderr.contains("--reuseport=true"),
            "{stderr:?}"
        );
    }
    // Asked for, the port is shared: the second server starts and keeps running.
    let child = Command::new(util::keel_bin())
        .args(["discard", "--listen", &addr, "--reuseport=true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel");
    let mut second = Guard(Some(child));
    thread::sleep(Duration::from_secs(1));
    let c = second.0.as_mut().unwrap();
    assert_eq!(c.try_wait().expect("try_wait"), None, "--reuseport=true");
    assert!(first.is_running());
}

/// The `listening` lines are for whoever started the server; if it stopped reading (closed
/// the pipe), the server still serves rather than dying of EPIPE.
#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end); // every write to stdout now fails with EPIPE
    let child = Command::new(util::keel_bin())
        .args(["echo", "--listen", &addr.to_string(), "--threads", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel");
    let mut g = Guard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            g.0.as_mut().unwrap().try_wait().unwrap().is_none(),
            "keel exited with its stdout closed"
        );
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"hi").unwrap();
            let mut got = [0u8; 2];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hi");
            break;
        }
        assert!(Instant::now() < deadline, "keel never served on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `--idle-timeout` means nothing to `keel http` (its idle keep-alive connections close after
/// `--keepalive-timeout`): the server says so rather than take it silently.
#[test]
fn an_idle_timeout_given_to_http_is_said_not_to_apply() {
    let warning = "idle_timeout does not apply to `keel http`";
    let srv = util::Opts::http("epoll-et")
        .arg("--idle-timeout", "2")
        .spawn();
    assert!(
        srv.stderr_has(warning, Duration::from_secs(5)),
        "{}",
        srv.stderr_dump()
    );
    let plain = util::Opts::http("epoll-et").spawn();
    assert!(!plain.stderr_has(warning, Duration::from_millis(300)));
}

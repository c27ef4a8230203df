//! `--max-conns` is the server's limit under the per-connection models too (docs/cli-contract.md):
//! with `--threads 8 --max-conns 1` a second client gets a clean close, counted in
//! `refused_limit`.

mod util;

use std::time::Duration;

use util::{connect, probe, Opts, Probe, Server};

/// Under `model` with `--threads 8 --max-conns 1`: a first client is served, then `check` gets
/// the server and what a second client saw, while both clients are still connected.
fn second_client(model: &str, check: impl FnOnce(&Server, Probe)) {
    let srv = Opts::echo("epoll-et")
        .arg("--model", model)
        .arg("--threads", "8")
        .arg("--max-conns", "1")
        .spawn();
    let mut a = connect(srv.tcp);
    assert_eq!(probe(&mut a, b"a", Duration::from_secs(3)), Probe::Served);
    let mut b = connect(srv.tcp);
    let p = probe(&mut b, b"b", Duration::from_secs(3));
    check(&srv, p);
}

#[test]
fn thread_per_conn_honours_max_conns() {
    second_client("thread-per-conn", |srv, p| {
        assert!(
            matches!(p, Probe::Closed(_)),
            "second connection with --max-conns 1 and one client held: {p:?} (want a clean close)\n{}",
            srv.stderr_dump()
        );
        let s = srv.stats();
        assert!(
            s.get("refused_limit") >= 1,
            "refused_limit not counted: {s:?}"
        );
    });
}

/// Control: the same check under process-per-conn, which does apply the limit (passes).
#[test]
fn process_per_conn_honours_max_conns_control() {
    second_client("process-per-conn", |srv, p| {
        assert!(
            matches!(p, Probe::Closed(_)),
            "{p:?}\n{}",
            srv.stderr_dump()
        );
    });
}

/// Under prefork the workers share one limit (it used to be divided: `--max-conns 1` with two
/// workers served two clients, `--max-conns 4` refused clients while fewer than 4 were open).
/// Exactly `max` clients are served at once, whichever workers take them; a closed one frees
/// its permit; and a worker killed while holding permits gives them back when it is reaped.
#[test]
fn prefork_workers_share_one_limit() {
    for max in [1usize, 3, 4] {
        let srv = Opts::echo("epoll-et")
            .arg("--model", "prefork")
            .arg("--threads", "2")
            .arg("--max-conns", &max.to_string())
            .spawn();
        let mut held = Vec::new();
        for i in 0..max {
            let mut c = connect(srv.tcp);
            let p = probe(&mut c, b"x", Duration::from_secs(3));
            assert_eq!(p, Probe::Served, "max {max}: client {i} of {max}");
            held.push(c);
        }
        let mut extra = connect(srv.tcp);
        let p = probe(&mut extra, b"y", Duration::from_secs(3));
        assert!(
            matches!(p, Probe::Closed(_)),
            "max {max}: client {max} got {p:?}"
        );
        // One leaves: its permit is free for the next (after the server saw it close).
        drop(held.pop());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = connect(srv.tcp);
            if probe(&mut c, b"z", Duration::from_secs(3)) == Probe::Served {
                held.push(c);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "max {max}: the freed permit never came back"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Both workers killed with every permit held: the master gives the permits back as it
        // reaps them, so the restarted workers serve `max` clients again.
        // Both workers (the master may still be starting the second one on a loaded machine).
        let (kids, both) = util::children_until(srv.pid, Duration::from_secs(5), |k| k.len() == 2);
        let workers: Vec<i32> = kids.iter().map(|k| k.pid).collect();
        assert!(both, "max {max}: workers {workers:?}");
        for w in workers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(w),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut again = Vec::new();
        while again.len() < max {
            let mut c = connect(srv.tcp);
            if probe(&mut c, b"w", Duration::from_secs(3)) == Probe::Served {
                again.push(c);
                continue;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "max {max}: after the workers were killed only {} clients are served",
                again.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The TCP state of `s` from TCP_INFO (`tcpi_state`, the first byte): 8 is CLOSE_WAIT (the
/// peer's FIN came, nothing else), 7 CLOSE (a reset came).
fn tcp_state(s: &std::net::TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: a valid socket fd and a buffer of `len` bytes, which the kernel fills.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info[0]
}

/// A refused client that writes at once, before or after the refusal reaches it, gets a
/// clean close (a FIN, never a reset) under every model that refuses on its loop, whatever
/// it wrote. The refusal used to drain only what had already arrived and close: a request a
/// moment late, or one over 64 KiB, drew a reset.
#[test]
fn a_refused_client_that_writes_gets_a_clean_close() {
    use std::io::{Read, Write};
    for (model, threads) in [
        ("thread-per-conn", "1"),
        ("process-per-conn", "1"),
        ("multi-reactor", "2"),
        ("leader-followers", "2"),
    ] {
        let srv = Opts::echo("epoll-et")
            .arg("--model", model)
            .arg("--threads", threads)
            .arg("--max-conns", "1")
            .spawn();
        let mut held = connect(srv.tcp);
        assert_eq!(
            probe(&mut held, b"x", Duration::from_secs(3)),
            Probe::Served
        );
        // 12 rounds: each refusal under the per-connection models waits its 250 ms of grace.
        for round in 0..12 {
            let mut s = connect(srv.tcp);
            let request = if round % 4 == 3 {
                vec![b'r'; 70_000]
            } else {
                b"GET / HTTP/1.0\r\n\r\n".to_vec()
            };
            let _ = s.write_all(&request);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 64];
            let got = s.read(&mut buf);
            assert!(
                matches!(got, Ok(0)),
                "[{model}] round {round}: {got:?} (want EOF)"
            );
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                tcp_state(&s),
                8,
                "[{model}] round {round}: a reset came after the FIN"
            );
        }
        let s = srv.stats();
        assert!(s.get("refused_limit") >= 12, "{s:?}");
    }
}

/// Clients one after another, each gone before the next comes, are all served at the cap of
/// one: a slot whose connection has closed but whose thread or process has not yet ended is
/// waited for (a moment), not taken for a busy one. With the server closing first (HTTP's
/// `Connection: close`) and with the client closing first (echo). Up to a third of such
/// clients used to be refused.
#[test]
fn clients_one_after_another_are_all_served_at_the_cap() {
    use std::io::{Read, Write};
    let root = std::env::temp_dir().join(format!("keel-seq-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), "a").unwrap();
    for model in ["thread-per-conn", "process-per-conn"] {
        let echo = Opts::echo("epoll-et")
            .arg("--model", model)
            .arg("--threads", "1")
            .spawn();
        for i in 0..100 {
            let mut s = connect(echo.tcp);
            s.write_all(b"hi").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"hi", "[{model} echo] client {i} was refused");
        }
        let http = Opts::http("epoll-et")
            .arg("--model", model)
            .arg("--threads", "1")
            .arg("--root", root.to_str().unwrap())
            .spawn();
        for i in 0..100 {
            let mut s = connect(http.tcp);
            s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert!(
                got.starts_with(b"HTTP/1.1 200"),
                "[{model} http] client {i} was refused: {got:?}"
            );
        }
        for srv in [&echo, &http] {
            let s = srv.stats();
            assert_eq!(s.get("refused_limit"), 0, "[{model}] {s:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A client waiting for a slot when another one is forked a process is not kept open by that
/// process (the forked one holds its own client's socket only), and, refused after the
/// grace, it reads its EOF while the other is still being served.
#[test]
fn a_waiting_client_is_not_held_by_the_process_forked_beside_it() {
    use std::io::Read;
    let srv = Opts::echo("epoll-et")
        .arg("--model", "process-per-conn")
        .arg("--threads", "1")
        .spawn();
    let mut a = connect(srv.tcp);
    assert_eq!(probe(&mut a, b"a", Duration::from_secs(3)), Probe::Served);
    // Two wait for the one slot.
    let mut b = connect(srv.tcp);
    std::thread::sleep(Duration::from_millis(20));
    let mut c = connect(srv.tcp);
    std::thread::sleep(Duration::from_millis(20));
    drop(a); // b gets the slot, forked while c still waits
    assert_eq!(probe(&mut b, b"b", Duration::from_secs(3)), Probe::Served);
    let live: Vec<_> = util::children_of(srv.pid)
        .into_iter()
        .filter(|p| p.state != 'Z')
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    let sockets = std::fs::read_dir(format!("/proc/{}/fd", live[0].pid))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count();
    assert_eq!(sockets, 1, "b's process holds c's socket too");
    // c: refused once its grace is over, with b still connected.
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 8];
    let got = c.read(&mut buf);
    assert!(
        matches!(got, Ok(0)),
        "the waiting client: {got:?} (want EOF)"
    );
    drop(b);
}

/// A client waiting for a slot when the server is told to stop is refused then (counted, a
/// clean close), not served by a process forked during the stop nor reset when the master
/// ends. A fork during the stop used to panic in the child (the listener it was to close was
/// gone already).
#[test]
fn a_client_waiting_at_the_stop_is_refused_cleanly() {
    use std::io::{Read, Write};
    for threads in ["1", "2"] {
        let srv = Opts::echo("epoll-et")
            .arg("--model", "process-per-conn")
            .arg("--threads", threads)
            .arg("--drain-timeout", "3")
            .spawn();
        let mut served: Vec<_> = (0..threads.parse::<usize>().unwrap())
            .map(|_| {
                let mut a = connect(srv.tcp);
                assert_eq!(probe(&mut a, b"a", Duration::from_secs(3)), Probe::Served);
                a
            })
            .collect();
        let mut b = connect(srv.tcp);
        b.write_all(b"data").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        srv.signal(nix::sys::signal::Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(20));
        drop(served.remove(0)); // a slot frees while b waits
        b.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 8];
        let got = b.read(&mut buf);
        assert!(
            matches!(got, Ok(0)),
            "[{threads}] the waiting client: {got:?}"
        );
        drop(served);
        let status = srv.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "[{threads}] {status:?}"
        );
        let err = srv.stderr_dump();
        assert!(!err.contains("panicked"), "[{threads}] {err}");
        assert!(
            err.lines()
                .any(|l| l.starts_with("stats ") && l.contains(" refused_limit=1 ")),
            "[{threads}] {err}"
        );
    }
}

/// Refused connections still closing are not counted open, and a stop does not wait for
/// their clients' FIN.
#[test]
fn refused_connections_are_not_open_and_do_not_hold_the_stop() {
    use std::time::Instant;
    for model in ["multi-reactor", "leader-followers", "thread-per-conn"] {
        let srv = Opts::echo("epoll-et")
            .arg("--model", model)
            .arg("--threads", "2")
            .arg("--max-conns", "1")
            .arg("--linger-timeout", "5")
            .spawn();
        let mut held = connect(srv.tcp);
        assert_eq!(
            probe(&mut held, b"x", Duration::from_secs(3)),
            Probe::Served
        );
        // Refused, and never closed by their clients.
        let refused: Vec<_> = (0..5)
            .map(|_| {
                let mut s = connect(srv.tcp);
                assert!(matches!(
                    probe(&mut s, b"y", Duration::from_secs(3)),
                    Probe::Closed(_)
                ));
                s
            })
            .collect();
        let s = srv.stats();
        assert_eq!(s.get("open"), 1, "[{model}] {s:?}");
        assert!(s.get("refused_limit") >= 5, "[{model}] {s:?}");
        drop(held);
        let t = Instant::now();
        srv.signal(nix::sys::signal::Signal::SIGTERM);
        let status = srv.wait_exit(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "[{model}] {status:?}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "[{model}] the stop waited {:?} for refused clients",
            t.elapsed()
        );
        drop(refused);
    }
}

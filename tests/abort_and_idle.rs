//! Clients that reset, vanish or stall do not hurt the server; idle connections expire.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::{
    assert_serves, connect, per_engine, random_bytes, read_until_end, set_linger_zero, End, Opts,
};

/// Pushes data at the server without blocking and reads at most `read_cap` bytes of the echo.
/// Stops once `write_cap` bytes are written, or once writes have been refused (EAGAIN) for
/// `stall` in a row (the server applies backpressure). Returns (written, read).
fn push_without_reading(
    s: &mut TcpStream,
    write_cap: usize,
    read_cap: usize,
    stall: Duration,
) -> (usize, usize) {
    s.set_nonblocking(true).expect("nonblocking");
    let chunk = random_bytes(77, 256 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut written, mut read) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut blocked_since: Option<Instant> = None;
    while written < write_cap && Instant::now() < deadline {
        let mut progressed = false;
        match s.write(&chunk[..chunk.len().min(write_cap - written)]) {
            Ok(n) => {
                written += n;
                progressed = true;
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= stall {
                    break;
                }
            }
            Err(e) => panic!("write after {written} bytes: {e}"),
        }
        if read < read_cap {
            let n = buf.len().min(read_cap - read);
            match s.read(&mut buf[..n]) {
                Ok(0) => panic!("unexpected EOF after {read} bytes echoed"),
                Ok(n) => {
                    read += n;
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("read after {read} bytes: {e}"),
            }
        }
        if !progressed {
            thread::sleep(Duration::from_millis(1));
        }
    }
    s.set_nonblocking(false).expect("blocking");
    (written, read)
}

/// A client resets (SO_LINGER {on,0} + close) while the server is still echoing a big transfer.
/// The server survives, keeps serving, and drops the connection without waiting for a timeout.
fn reset_mid_transfer(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    for round in 0..3 {
        let mut s = connect(srv.tcp);
        let (written, read) = push_without_reading(
            &mut s,
            8 * 1024 * 1024,
            256 * 1024,
            Duration::from_millis(300),
        );
        assert!(
            written >= 512 * 1024 && read >= 1,
            "[{engine}] round {round}: transfer did not get going: wrote {written}, read {read}\n{}",
            srv.stderr_dump()
        );
        set_linger_zero(&s);
        drop(s); // RST with the server's output still pending
    }
    thread::sleep(Duration::from_millis(200));
    assert!(
        srv.is_running(),
        "[{engine}] server died after client resets\n{}",
        srv.stderr_dump()
    );
    assert_serves(&srv, "3 clients reset mid-transfer");
    let (st, ok) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 0);
    assert!(
        ok,
        "[{engine}] reset connections are still open after 5 s (no idle timeout set): {}",
        st.line
    );
}
per_engine!(reset_mid_transfer);

/// Spawns `sleep 60` holding `s` as its fd 3, so that killing that process is what closes the
/// socket, exactly as when a real client process is killed. Returns the child (ours to kill).
fn hand_socket_to_sleeper(s: TcpStream) -> std::process::Child {
    let fd = s.as_raw_fd();
    let mut cmd = Command::new("sleep");
    cmd.arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec; it only calls dup2 and fcntl (async-signal
    // safe syscalls on an fd number copied in by value) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn sleep");
    drop(s); // our copy; the sleeper's fd 3 keeps the socket alive
    child
}

/// Clients that vanish: (a) connect, send part of a message, close without reading; (b) connect
/// and close at once; (c) stop reading while the server has lots to send, then get killed. The
/// server keeps serving and its open count returns to 0 (after the idle timeout at the latest).
fn vanishing_clients(engine: &str) {
    let srv = Opts::echo(engine)
        .arg("--idle-timeout", "1")
        .arg("--linger-timeout", "0.5")
        .spawn();
    // (a) send part, then just drop.
    for i in 0..10u64 {
        let mut s = connect(srv.tcp);
        s.write_all(&random_bytes(i, 100 * 1024)).expect("write");
        drop(s);
    }
    // (b) connect and vanish.
    for _ in 0..10 {
        drop(connect(srv.tcp));
    }
    // (c) stalled readers, then killed.
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        let mut s = connect(srv.tcp);
        let (written, _) =
            push_without_reading(&mut s, 32 * 1024 * 1024, 0, Duration::from_millis(300));
        assert!(
            written >= 256 * 1024,
            "[{engine}] stalled reader could only write {written} bytes"
        );
        sleepers.push(hand_socket_to_sleeper(s));
    }
    thread::sleep(Duration::from_millis(300));
    assert_serves(&srv, "stalled readers (server output blocked)");
    for mut c in sleepers {
        let _ = c.kill(); // SIGKILL to the sleeper we started
        let _ = c.wait();
    }
    assert!(
        srv.is_running(),
        "[{engine}] server died\n{}",
        srv.stderr_dump()
    );
    assert_serves(&srv, "vanished and killed clients");
    // idle 1 s + linger 0.5 s + slack
    let (st, ok) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 0);
    assert!(
        ok,
        "[{engine}] open != 0 five seconds after clients vanished (idle timeout 1 s): {}",
        st.line
    );
}
per_engine!(vanishing_clients);

/// With `--idle-timeout 0.5`, connections that send nothing are closed by the server (EOF or
/// reset) within about 0.5–3 s.
fn idle_connection_closed(engine: &str) {
    let srv = Opts::echo(engine).arg("--idle-timeout", "0.5").spawn();
    let clients: Vec<(TcpStream, Instant)> =
        (0..3).map(|_| (connect(srv.tcp), Instant::now())).collect();
    let handles: Vec<_> = clients
        .into_iter()
        .map(|(mut s, t0)| {
            thread::spawn(move || {
                let mut got = Vec::new();
                let end = read_until_end(&mut s, &mut got, 1, Duration::from_secs(6));
                (end, got.len(), t0.elapsed())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (end, n, elapsed) = h.join().expect("reader thread");
        assert!(
            matches!(end, End::Eof | End::Reset) && n == 0,
            "[{engine}] idle client {i}: expected the server to close it, got {end:?} \
             ({n} bytes) after {elapsed:?}\n{}",
            srv.stderr_dump()
        );
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed <= Duration::from_secs(3),
            "[{engine}] idle client {i} closed after {elapsed:?}, outside 0.4–3 s"
        );
    }
    let st = srv.stats();
    assert!(
        st.get("idle_timeouts") >= 3,
        "[{engine}] idle_timeouts < 3 after 3 idle closes: {}",
        st.line
    );
}
per_engine!(idle_connection_closed);

/// A connection that sends every 200 ms is not closed during 2 s with `--idle-timeout 0.5`; when
/// it stops, it is closed.
fn active_connection_kept(engine: &str) {
    let srv = Opts::echo(engine).arg("--idle-timeout", "0.5").spawn();
    let mut s = connect(srv.tcp);
    let start = Instant::now();
    for i in 0..10 {
        let msg = format!("tick {i}");
        if let Err(e) = s.write_all(msg.as_bytes()) {
            panic!(
                "[{engine}] active connection: write {i} failed after {:?}: {e}",
                start.elapsed()
            );
        }
        if let Err(e) = util::read_expect(&mut s, msg.as_bytes(), Duration::from_secs(2)) {
            panic!(
                "[{engine}] active connection (a message every 200 ms) lost after {:?}: {e}",
                start.elapsed()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    let t0 = Instant::now();
    let mut got = Vec::new();
    let end = read_until_end(&mut s, &mut got, 1, Duration::from_secs(6));
    let elapsed = t0.elapsed();
    assert!(
        matches!(end, End::Eof | End::Reset) && elapsed <= Duration::from_secs(3),
        "[{engine}] once quiet, the connection should be closed in 0.5–3 s: {end:?} after {elapsed:?}"
    );
}
per_engine!(active_connection_kept);

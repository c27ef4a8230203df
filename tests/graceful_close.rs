//! Graceful close (DESIGN rule 4): no server socket stays in CLOSE_WAIT after the peer's FIN, and
//! a server-initiated close does not leave FIN_WAIT2 sockets (or fds) behind past the linger
//! timeout when the client never closes its half.

mod util;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use util::{
    connect, per_engine, random_bytes, read_expect, read_until_end, tcp_state_name, End, Opts,
    Server, TcpEntry, TCP_CLOSE_WAIT, TCP_FIN_WAIT1, TCP_FIN_WAIT2,
};

/// Polls the server-side entries of /proc/net/tcp{,6} until none is in one of `bad` states, for up
/// to `timeout`. Returns the offending entries seen last (empty = good).
fn wait_no_states(srv: &Server, bad: &[u8], timeout: Duration) -> Vec<TcpEntry> {
    let deadline = Instant::now() + timeout;
    loop {
        let offending: Vec<TcpEntry> = srv
            .server_side_sockets()
            .into_iter()
            .filter(|e| bad.contains(&e.state))
            .collect();
        if offending.is_empty() || Instant::now() >= deadline {
            return offending;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn show(entries: &[TcpEntry]) -> String {
    entries
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// N clients end their connections first: half of them shutdown(Write) and read to EOF before
/// closing, the other half close outright after reading the echo. Afterwards no server socket is
/// in CLOSE_WAIT, its fd count is back to the baseline and `open` is 0.
fn no_close_wait_after_peer_fin(engine: &str) {
    let srv = Opts::echo(engine).arg("--linger-timeout", "1").spawn();
    let baseline = srv.baseline_fds();
    const N: usize = 20;
    for i in 0..N {
        let msg = random_bytes(i as u64, 500 + i * 31);
        let mut s = connect(srv.tcp);
        s.write_all(&msg).expect("write");
        if i % 2 == 0 {
            s.shutdown(Shutdown::Write).expect("shutdown");
            let mut got = Vec::new();
            let end = read_until_end(&mut s, &mut got, msg.len() + 1, Duration::from_secs(10));
            assert!(
                end == End::Eof && got == msg,
                "[{engine}] client {i}: echo then EOF expected, got {} bytes, {end:?}",
                got.len()
            );
        } else if let Err(e) = read_expect(&mut s, &msg, Duration::from_secs(10)) {
            panic!("[{engine}] client {i}: {e}");
        }
        drop(s);
    }
    let bad = wait_no_states(&srv, &[TCP_CLOSE_WAIT], Duration::from_secs(3));
    assert!(
        bad.is_empty(),
        "[{engine}] server sockets stuck in {} 3 s after the clients' FIN: {}",
        tcp_state_name(TCP_CLOSE_WAIT),
        show(&bad)
    );
    let n = srv.fd_count_settles_to(baseline, Duration::from_secs(3));
    assert_eq!(
        n,
        baseline,
        "[{engine}] server fd count {n} != baseline {baseline} after {N} graceful closes: {:?}",
        srv.fd_listing()
    );
    let (st, ok) = srv.stats_until(Duration::from_secs(2), |s| s.get("open") == 0);
    assert!(ok, "[{engine}] open != 0: {}", st.line);
}
per_engine!(no_close_wait_after_peer_fin);

/// The server closes first (idle timeout) and the client never closes its half nor reads. With
/// `--linger-timeout 0.5` the server must give up waiting for the client's FIN and really close:
/// after ~2 s its fd count is back at the baseline and no server socket sits in FIN_WAIT1/2
/// (an orphan left by a plain close() would linger there for tcp_fin_timeout).
fn server_close_does_not_linger(engine: &str) {
    let srv = Opts::echo(engine)
        .arg("--idle-timeout", "0.5")
        .arg("--linger-timeout", "0.5")
        .spawn();
    let baseline = srv.baseline_fds();
    const N: usize = 10;
    let mut clients: Vec<TcpStream> = Vec::new();
    for i in 0..N {
        let msg = format!("client {i}");
        let mut s = connect(srv.tcp);
        s.write_all(msg.as_bytes()).expect("write");
        if let Err(e) = read_expect(&mut s, msg.as_bytes(), Duration::from_secs(5)) {
            panic!("[{engine}] client {i}: {e}");
        }
        clients.push(s); // held open, not read, not closed
    }
    let idle_since = Instant::now();
    // While the clients are held open: connections are there (> baseline) at first...
    let during = srv.fd_count();
    assert!(
        during >= baseline + N,
        "[{engine}] expected >= {} fds with {N} clients connected, saw {during}",
        baseline + N
    );
    // ...and are gone by idle (0.5) + linger (0.5) + slack.
    thread::sleep(Duration::from_millis(2000));
    let n = srv.fd_count_settles_to(baseline, Duration::from_secs(2));
    assert_eq!(
        n,
        baseline,
        "[{engine}] {:?} after the clients went idle (idle 0.5 s, linger 0.5 s) the server \
         still has {n} fds (baseline {baseline}): {:?}",
        idle_since.elapsed(),
        srv.fd_listing()
    );
    let bad = wait_no_states(
        &srv,
        &[TCP_FIN_WAIT1, TCP_FIN_WAIT2],
        Duration::from_secs(1),
    );
    assert!(
        bad.is_empty(),
        "[{engine}] server-side sockets lingering after the linger timeout (expected a close \
         with SO_LINGER {{on,0}}, i.e. an RST; an orphan from a plain close() stays for \
         tcp_fin_timeout): {}",
        show(&bad)
    );
    // The clients saw the server's FIN (clean close) — possibly followed by its RST.
    for (i, mut s) in clients.into_iter().enumerate() {
        let mut got = Vec::new();
        let end = read_until_end(&mut s, &mut got, 1, Duration::from_secs(2));
        assert!(
            matches!(end, End::Eof | End::Reset) && got.is_empty(),
            "[{engine}] client {i}: expected EOF from the idle close, got {end:?} ({} bytes)",
            got.len()
        );
    }
    let st = srv.stats();
    assert!(
        st.get("idle_timeouts") >= N as u64 && st.get("open") == 0,
        "[{engine}] expected idle_timeouts >= {N} and open = 0: {}",
        st.line
    );
}
per_engine!(server_close_does_not_linger);

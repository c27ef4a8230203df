//! Echo is byte-exact from 1 byte to 8 MiB, and under 200 concurrent clients, on every engine.

mod util;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::{connect, echo_concurrently, per_engine, random_bytes, Opts};

const SIZES: [usize; 5] = [1, 1000, 64 * 1024, 1024 * 1024, 8 * 1024 * 1024];

/// One connection per size; the client writes in one thread and reads in another.
fn sizes(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    for (i, &size) in SIZES.iter().enumerate() {
        let data = random_bytes(0xEC40 + i as u64, size);
        let mut s = connect(srv.tcp);
        let t = Instant::now();
        if let Err(e) = echo_concurrently(&mut s, &data, None, false, Duration::from_secs(60)) {
            panic!(
                "[{engine}] echo of {size} bytes: {e} (after {:?})\n{}",
                t.elapsed(),
                srv.stderr_dump()
            );
        }
    }
    // The same sizes written in random-sized chunks (exercises partial reads on the server).
    for (i, &size) in SIZES.iter().take(4).enumerate() {
        let data = random_bytes(0xC4C4 + i as u64, size);
        let mut s = connect(srv.tcp);
        if let Err(e) = echo_concurrently(
            &mut s,
            &data,
            Some(i as u64 + 7),
            false,
            Duration::from_secs(60),
        ) {
            panic!(
                "[{engine}] chunked echo of {size} bytes: {e}\n{}",
                srv.stderr_dump()
            );
        }
    }
    let st = srv.stats();
    assert_eq!(
        st.engine(),
        Some(srv.engine.as_str()),
        "stats line names another engine: {}",
        st.line
    );
    let total: u64 = SIZES.iter().sum::<usize>() as u64 + SIZES[..4].iter().sum::<usize>() as u64;
    assert!(
        st.get("bytes_in") >= total && st.get("bytes_out") >= total,
        "[{engine}] bytes_in/bytes_out below the {total} bytes echoed: {}",
        st.line
    );
}
per_engine!(sizes);

const CLIENTS: usize = 200;
const PER_CLIENT: usize = 64 * 1024;

/// 200 clients connect, wait until all are connected, then each sends 64 KiB in random-sized
/// chunks and checks the echo byte-exact.
fn concurrent_200(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    let addr = srv.tcp;
    let connected = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let connected = connected.clone();
            thread::spawn(move || -> Result<(), String> {
                let mut s = util::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
                connected.fetch_add(1, Ordering::SeqCst);
                // Wait (bounded) until every client is connected, so they really overlap.
                let deadline = Instant::now() + Duration::from_secs(10);
                while connected.load(Ordering::SeqCst) < CLIENTS && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
                let data = random_bytes(1000 + i as u64, PER_CLIENT);
                echo_concurrently(
                    &mut s,
                    &data,
                    Some(i as u64),
                    false,
                    Duration::from_secs(60),
                )
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
    assert!(
        failures.is_empty(),
        "[{engine}] {} of {CLIENTS} clients failed:\n{}\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        srv.stderr_dump()
    );
    let st = srv.stats();
    assert!(
        st.get("accepted") >= CLIENTS as u64,
        "[{engine}] accepted < {CLIENTS}: {}",
        st.line
    );
    // Every client has closed: the server's open count returns to 0.
    let (st, ok) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 0);
    assert!(
        ok,
        "[{engine}] open != 0 five seconds after all clients closed: {}",
        st.line
    );
}
per_engine!(concurrent_200);

/// TCP urgent data: a read stops short at the urgent mark with more bytes queued behind it.
/// An edge-triggered reader that took the short read for "drained" waited for an edge that
/// never came, and the bytes after the mark sat in the socket until the client sent more.
/// (Without SO_OOBINLINE the urgent byte itself leaves the stream: it is not echoed.)
fn bytes_after_urgent_data(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    let s = connect(srv.tcp);
    let sock = socket2::SockRef::from(&s);
    (&s).write_all(b"abc").unwrap();
    sock.send_out_of_band(b"!").unwrap();
    let tail = b"def".repeat(1000);
    (&s).write_all(&tail).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.len() < 3 + tail.len() {
        match (&s).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("[{engine}] after {} of 3003 bytes: {e}", got.len()),
        }
    }
    assert_eq!(got.len(), 3 + tail.len(), "[{engine}]");
    assert!(
        got.starts_with(b"abc") && got.ends_with(&tail),
        "[{engine}]"
    );
}
per_engine!(bytes_after_urgent_data);

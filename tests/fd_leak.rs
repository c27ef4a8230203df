//! No fd leak: 10,000 short connections (ending in every way a connection can end) leave the
//! server's fd count where it started (DESIGN rule 3: one owner closes an fd, once).

mod util;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use util::{per_engine, read_expect, read_until_end, set_linger_zero, try_connect, End, Opts};

const TOTAL: usize = 10_000;
const THREADS: usize = 4;

/// One short connection; `i % 4` picks how it ends. Returns an error description.
fn short_connection(addr: SocketAddr, i: usize) -> Result<(), String> {
    let mut s = try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    let msg = format!("short {i:05}");
    s.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_expect(&mut s, msg.as_bytes(), Duration::from_secs(10))?;
    match i % 4 {
        // Plain close after the echo (client FIN first).
        0 => {}
        // Half-close, read the server's FIN, then close.
        1 => {
            s.shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            let mut rest = Vec::new();
            let end = read_until_end(&mut s, &mut rest, 16, Duration::from_secs(10));
            if end != End::Eof || !rest.is_empty() {
                return Err(format!(
                    "after shutdown(Write): {end:?}, {} bytes",
                    rest.len()
                ));
            }
        }
        // Abort with RST.
        2 => set_linger_zero(&s),
        // Send more and close at once: the echo of it meets a closed socket (RST to the server).
        _ => {
            s.write_all(b"unread").map_err(|e| format!("write: {e}"))?;
        }
    }
    Ok(())
}

fn no_fd_leak(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    let baseline = srv.baseline_fds();
    let addr = srv.tcp;
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || -> Result<(), String> {
                let deadline = Instant::now() + Duration::from_secs(90);
                for i in (t..TOTAL).step_by(THREADS) {
                    if Instant::now() >= deadline {
                        return Err(format!("thread {t}: out of time at connection {i}"));
                    }
                    short_connection(addr, i).map_err(|e| format!("connection {i}: {e}"))?;
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .collect();
    assert!(
        errors.is_empty(),
        "[{engine}] short connections failed: {errors:?}\n{}",
        srv.stderr_dump()
    );
    let elapsed = started.elapsed();
    let n = srv.fd_count_settles_to(baseline, Duration::from_secs(5));
    assert_eq!(
        n,
        baseline,
        "[{engine}] fd count {n} != baseline {baseline} 5 s after {TOTAL} short connections \
         (took {elapsed:?}); open fds: {:?}",
        srv.fd_listing()
    );
    let (st, ok) = srv.stats_until(Duration::from_secs(2), |s| s.get("open") == 0);
    assert!(ok, "[{engine}] open != 0: {}", st.line);
    assert!(
        st.get("accepted") >= TOTAL as u64 && st.get("closed") >= TOTAL as u64,
        "[{engine}] accepted/closed below {TOTAL}: {}",
        st.line
    );
}
per_engine!(no_fd_leak);

//! `read() == 0` is the peer's FIN, not "close now" (DESIGN rule 2): a client that shuts down its
//! write side still gets every byte echoed, then EOF.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use util::{connect, echo_concurrently, per_engine, random_bytes, read_until_end, End, Opts};

/// Reads until EOF (10 s bound) and asserts that nothing more came and the stream ended in EOF.
fn expect_eof(engine: &str, s: &mut std::net::TcpStream, what: &str) {
    let mut extra = Vec::new();
    let end = read_until_end(s, &mut extra, 1024, Duration::from_secs(10));
    assert!(
        end == End::Eof && extra.is_empty(),
        "[{engine}] {what}: expected EOF after the echo, got {end:?} with {} extra bytes",
        extra.len()
    );
}

/// Write 1 MiB, shutdown(Write), read: every byte comes back, then EOF.
fn one_mib_then_fin(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    let data = random_bytes(0x4A1F, 1024 * 1024);
    let mut s = connect(srv.tcp);
    if let Err(e) = echo_concurrently(&mut s, &data, Some(3), true, Duration::from_secs(30)) {
        panic!(
            "[{engine}] 1 MiB then shutdown(Write): {e}\n{}",
            srv.stderr_dump()
        );
    }
    expect_eof(engine, &mut s, "1 MiB then shutdown(Write)");
}
per_engine!(one_mib_then_fin);

/// The whole request is sent and the FIN follows before the server has even read it (everything
/// arrives in one wake-up): the data must still be echoed before the server's FIN.
fn small_then_fin_at_once(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    for i in 0..20u64 {
        let msg = random_bytes(i, 1 + (i as usize * 97) % 3000);
        let mut s = connect(srv.tcp);
        s.write_all(&msg).expect("write");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut got = Vec::new();
        let end = read_until_end(&mut s, &mut got, msg.len() + 1, Duration::from_secs(10));
        assert!(
            end == End::Eof && got == msg,
            "[{engine}] round {i}: sent {} bytes then FIN; got {} bytes (equal: {}), ended {end:?}",
            msg.len(),
            got.len(),
            got == msg
        );
    }
}
per_engine!(small_then_fin_at_once);

/// A client that connects and shuts down its write side at once gets EOF promptly.
fn fin_without_data(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    let mut s = connect(srv.tcp);
    let t = Instant::now();
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        matches!(r, Ok(0)),
        "[{engine}] FIN with no data: expected EOF, got {r:?} after {:?}",
        t.elapsed()
    );
}
per_engine!(fin_without_data);

/// The server keeps reading after it has sent data: the half-closed direction is the client's,
/// and the server's own output must not be cut short when the client's FIN arrives while the
/// server still has a lot queued (the client reads slowly at first).
fn fin_while_output_pending(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    let data = random_bytes(0xF1F0, 4 * 1024 * 1024);
    let mut s = connect(srv.tcp);
    let mut w = s.try_clone().expect("dup");
    let wd = data.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&wd)?;
        w.shutdown(Shutdown::Write)
    });
    // Let buffers fill on both sides before reading anything.
    std::thread::sleep(Duration::from_millis(300));
    let r = util::read_expect(&mut s, &data, Duration::from_secs(30));
    let w = writer.join().expect("writer thread");
    assert!(
        r.is_ok() && w.is_ok(),
        "[{engine}] 4 MiB with slow reader then FIN: read {r:?}, write {w:?}\n{}",
        srv.stderr_dump()
    );
    expect_eof(engine, &mut s, "4 MiB with a slow reader then FIN");
}
per_engine!(fin_while_output_pending);

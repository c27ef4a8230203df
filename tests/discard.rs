//! `keel discard` reads and drops everything; a client's FIN still gets a clean close.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use util::{connect, is_timeout, per_engine, random_bytes, read_until_end, End, Opts};

const TEN_MIB: usize = 10 * 1024 * 1024;

fn discards(engine: &str) {
    let srv = Opts::discard(engine).spawn();
    assert!(
        srv.stdout_lines()
            .iter()
            .all(|l| !l.starts_with("listening udp")),
        "[{engine}] discard should not announce a UDP echo: {:?}",
        srv.stdout_lines()
    );
    let mut s = connect(srv.tcp);
    let data = random_bytes(0xD15C, TEN_MIB);
    // Nothing comes back, so writing everything from one thread cannot deadlock; the write
    // timeout bounds it if the server stops reading.
    if let Err(e) = s.write_all(&data) {
        panic!(
            "[{engine}] writing 10 MiB to discard: {e}\n{}",
            srv.stderr_dump()
        );
    }
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1024];
    match s.read(&mut buf) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("[{engine}] discard sent something back: {other:?}"),
    }
    let (st, ok) = srv.stats_until(Duration::from_secs(5), |s| {
        s.get("bytes_in") >= TEN_MIB as u64
    });
    assert!(
        ok,
        "[{engine}] bytes_in < 10 MiB after sending 10 MiB: {}",
        st.line
    );
    assert_eq!(
        st.get("bytes_out"),
        0,
        "[{engine}] discard wrote bytes: {}",
        st.line
    );
    // Half-close: the server finishes (nothing to send) and closes its side too.
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut got = Vec::new();
    let end = read_until_end(&mut s, &mut got, 1, Duration::from_secs(5));
    assert!(
        end == End::Eof && got.is_empty(),
        "[{engine}] after the client's FIN, discard should close cleanly: {end:?}, {} bytes",
        got.len()
    );
}
per_engine!(discards);

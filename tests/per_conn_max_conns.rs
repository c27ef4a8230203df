//! `--max-conns` is the server's limit under the per-connection models too (docs/cli-contract.md):
//! with `--threads 8 --max-conns 1` a second client gets a clean close, counted in
//! `refused_limit`.

mod util;

use std::time::Duration;

use util::{connect, probe, Opts, Probe};

#[test]
fn thread_per_conn_honours_max_conns() {
    let srv = Opts::echo("epoll-et")
        .arg("--model", "thread-per-conn")
        .arg("--threads", "8")
        .arg("--max-conns", "1")
        .spawn();
    let mut a = connect(srv.tcp);
    assert_eq!(probe(&mut a, b"a", Duration::from_secs(3)), Probe::Served);
    let mut b = connect(srv.tcp);
    let p = probe(&mut b, b"b", Duration::from_secs(3));
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
}

/// Control: the same check under process-per-conn, which does apply the limit (passes).
#[test]
fn process_per_conn_honours_max_conns_control() {
    let srv = Opts::echo("epoll-et")
        .arg("--model", "process-per-conn")
        .arg("--threads", "8")
        .arg("--max-conns", "1")
        .spawn();
    let mut a = connect(srv.tcp);
    assert_eq!(probe(&mut a, b"a", Duration::from_secs(3)), Probe::Served);
    let mut b = connect(srv.tcp);
    let p = probe(&mut b, b"b", Duration::from_secs(3));
    assert!(
        matches!(p, Probe::Closed(_)),
        "{p:?}\n{}",
        srv.stderr_dump()
    );
}

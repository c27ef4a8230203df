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

//! A client the server refuses (over `--max-conns`, or out of fds) reads the service's reason
//! before the close, where the protocol has room for one: HTTP a 503 with Retry-After (chat's
//! ERROR frame is in tests/chat.rs). A byte stream (echo) still gets a bare, clean close.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use util::{connect, probe, read_until_end, temp_dir, try_connect, End, Opts, Probe, MODELS};

/// What a refused HTTP client reads: the whole 503, then the end of the stream.
fn expect_503_then_end(s: &mut TcpStream, what: &str) {
    let mut got = Vec::new();
    let end = read_until_end(s, &mut got, 64 * 1024, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(
        matches!(end, End::Eof | End::Reset),
        "{what}: the refusal did not end the stream ({end:?}): {text:?}"
    );
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{what}: {end:?} after {text:?}"
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    assert!(head.contains("\r\nRetry-After: 1"), "{what}: {head}");
    assert!(head.contains("\r\nConnection: close"), "{what}: {head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse()
        .unwrap();
    assert_eq!(body.len(), len, "{what}: the body Content-Length says");
}

/// Sends `request` and reads one response to it (whose body is "fine").
fn exchange(s: &mut TcpStream, request: &[u8]) -> String {
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !got.ends_with(b"fine") && std::time::Instant::now() < deadline {
        let want = got.len() + 1;
        read_until_end(s, &mut got, want, Duration::from_secs(1));
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Under every model, with the one slot taken: the next client's request is answered with a
/// 503 and a close, and the held client is still served.
#[test]
fn http_over_max_conns_answers_503_under_every_model() {
    let dir = temp_dir("refusal-503");
    std::fs::write(dir.join("ok.txt"), "fine").unwrap();
    for model in MODELS {
        let srv = Opts::http("epoll-et")
            .arg("--root", dir.to_str().unwrap())
            .arg("--access-log", "off")
            .arg("--model", model)
            .arg("--threads", "2")
            .arg("--max-conns", "1")
            .spawn();
        let get = b"GET /ok.txt HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut held = connect(srv.tcp);
        let first = exchange(&mut held, get);
        let mut refused = connect(srv.tcp);
        // A client that spoke first (the usual HTTP client) and one that only waits.
        refused.write_all(get).unwrap();
        expect_503_then_end(&mut refused, &format!("{model}, request sent"));
        let mut quiet = connect(srv.tcp);
        expect_503_then_end(&mut quiet, &format!("{model}, nothing sent"));
        // The held one is untouched.
        let again = exchange(&mut held, get);
        assert!(
            first.starts_with("HTTP/1.1 200") && again.starts_with("HTTP/1.1 200"),
            "{model}: the held client: {first:?} then {again:?}"
        );
        let s = srv.stats();
        assert!(s.get("refused_limit") >= 2, "{model}: {s:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const NOFILE: u64 = 64;
const FLOOD: usize = 120;

/// [`FLOOD`] clients at once, each holding its connection and reading what the server says
/// within `wait` (its end too): per client its stream (None if it could not connect), how
/// its read ended, and the bytes.
fn flood_and_listen(addr: SocketAddr, wait: Duration) -> Vec<(Option<TcpStream>, End, Vec<u8>)> {
    let clients: Vec<_> = (0..FLOOD)
        .map(|_| {
            thread::spawn(move || {
                let Ok(mut s) = try_connect(addr) else {
                    return (None, End::Timeout, Vec::new());
                };
                let mut got = Vec::new();
                let end = read_until_end(&mut s, &mut got, 64 * 1024, wait);
                (Some(s), end, got)
            })
        })
        .collect();
    clients.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Out of fds (RLIMIT_NOFILE 64, 120 clients that each wait for the server to speak): those
/// the server cannot hold are told 503 and closed, the rest wait, none sees anything else.
#[test]
fn http_out_of_fds_answers_503() {
    let srv = Opts::http("epoll-lt")
        .nofile(NOFILE)
        .arg("--threads", "1")
        .arg("--access-log", "off")
        .spawn();
    let results = flood_and_listen(srv.tcp, Duration::from_secs(3));
    let (mut told, mut waited) = (0, 0);
    for (s, end, got) in &results {
        match end {
            End::Timeout if got.is_empty() && s.is_some() => waited += 1,
            End::Eof | End::Reset if got.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n") => {
                told += 1
            }
            _ => panic!(
                "a client saw {end:?} after {:?}\n{}",
                String::from_utf8_lossy(got),
                srv.stderr_dump()
            ),
        }
    }
    assert!(
        told >= FLOOD - NOFILE as usize && waited >= 1,
        "told 503: {told}, waiting: {waited}"
    );
    assert!(srv.stats().get("refused_emfile") >= told as u64);
}

/// Control: echo has no words to add to a byte stream, so its refusal stays a bare close.
#[test]
fn echo_over_max_conns_is_a_bare_clean_close() {
    let srv = Opts::echo("epoll-et").arg("--max-conns", "1").spawn();
    let mut held = connect(srv.tcp);
    assert_eq!(
        probe(&mut held, b"a", Duration::from_secs(3)),
        Probe::Served
    );
    let mut refused = connect(srv.tcp);
    assert_eq!(
        probe(&mut refused, b"b", Duration::from_secs(3)),
        Probe::Closed(End::Eof)
    );
}

/// Out of fds, a chat client is told in an ERROR frame, and the admin listener's client (an
/// HTTP scraper) never gets the service's words: it is served, in the reserve fd's place (it
/// was refused like any client, and before that, told in chat's frame).
#[test]
fn chat_out_of_fds_tells_members_and_still_serves_the_admin_listener() {
    let srv = Opts::chat("epoll-lt")
        .nofile(NOFILE)
        .arg("--threads", "1")
        .arg("--admin", "127.0.0.1:0")
        .spawn();
    let admin = srv.admin_addr().expect("a `listening admin` line");
    // Members get a welcome NOTICE (kind 4), refused ones an ERROR (kind 0x7f) and the end.
    let results = flood_and_listen(srv.tcp, Duration::from_secs(2));
    let told = results
        .iter()
        .filter(|(_, end, got)| {
            matches!(end, End::Eof | End::Reset)
                && got.get(4) == Some(&0x7f)
                && String::from_utf8_lossy(got).contains("the server is full")
        })
        .count();
    assert!(
        told >= FLOOD - NOFILE as usize,
        "told why: {told} of {FLOOD}\n{}",
        srv.stderr_dump()
    );
    // The fds are still held by the members: the admin's accept meets EMFILE too.
    let mut scraper = connect(admin);
    scraper
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let end = read_until_end(&mut scraper, &mut got, 1 << 20, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(
        matches!(end, End::Eof) && text.starts_with("HTTP/1.1 200 OK\r\n"),
        "the admin client at the fd limit: {end:?} after {text:?}"
    );
    let refused = text
        .lines()
        .find_map(|l| l.strip_prefix("keel_connections_refused_total{reason=\"emfile\"} "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        refused.is_some_and(|n| n >= (FLOOD - NOFILE as usize) as f64),
        "the emfile refusals in /metrics: {refused:?}\n{text}"
    );
    drop(results);
}

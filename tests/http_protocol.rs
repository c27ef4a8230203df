//! HTTP/1.1 protocol tests for `keel http`, all over real loopback sockets.
//!
//! Every request is written as raw bytes on a plain `TcpStream`, so the tests see exactly what
//! the server sends back; a small response reader (status line, fields, a Content-Length body)
//! splits pipelined responses apart. Every wait is bounded by a socket timeout or a deadline.
//!
//! - Limits: an over-long head (431), target (414), too many fields (431), a body over
//!   `--max-body` framed by Content-Length or chunked (413). Each refusal says
//!   `Connection: close` and the server closes.
//! - Smuggling shapes (RFC 9112 6.3 and friends): each is answered 400 and the connection closes
//!   without the request that was pipelined behind it being answered.
//! - Persistence: HTTP/1.1 keep-alive by default, `Connection: close`, HTTP/1.0 with and without
//!   keep-alive, `--keepalive-requests`.
//! - Pipelining: 20 mixed requests in one write come back complete and in order, under every
//!   `--model` and every engine.
//! - `Expect: 100-continue`, the fields every response carries (Date in IMF-fixdate, Server,
//!   Content-Length), the head/body/keep-alive timeouts, a slowloris crowd beside a normal
//!   client, slow readers (small receive buffer; 50 pipelined 64 KiB responses), and a 1 GiB
//!   sparse file.

mod util;

use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use util::{random_bytes, Opts, Server, IO_TIMEOUT, MODELS};

const ENGINE: &str = "epoll-et";

const HELLO: &[u8] = b"hello, world\n";

// ---------------------------------------------------------------------------------------------
// Document roots
// ---------------------------------------------------------------------------------------------

static ROOT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A document root under the system temp dir, unique to this process and test; removed on drop.
struct Root {
    dir: PathBuf,
}

impl Root {
    /// A root with `hello.txt`, `f0.txt`..`f4.txt` (distinct small files), `mid.bin` (40 KiB,
    /// over the in-memory cache's file size, so served with sendfile) and `docs/index.html`.
    fn new(tag: &str) -> Root {
        let n = ROOT_SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "keel-http-protocol-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("docs")).expect("create document root");
        let root = Root { dir };
        root.write("hello.txt", HELLO);
        for i in 0..5 {
            root.write(&format!("f{i}.txt"), &small_file(i));
        }
        root.write("mid.bin", &random_bytes(40, 40 * 1024));
        root.write("docs/index.html", b"<p>docs</p>\n");
        root
    }

    fn write(&self, name: &str, data: &[u8]) {
        fs::write(self.dir.join(name), data).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }

    fn path(&self) -> &str {
        self.dir.to_str().expect("temp dir is UTF-8")
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The contents of `f{i}.txt`: small, different in content and length for each i.
fn small_file(i: usize) -> Vec<u8> {
    format!("file number {i}: {}\n", "x".repeat(10 * i + 3)).into_bytes()
}

/// `keel http --root ROOT --no-access-log ARGS...` on the default engine.
fn serve(root: &Root, args: &[&str]) -> Server {
    serve_on(ENGINE, root, args)
}

fn serve_on(engine: &str, root: &Root, args: &[&str]) -> Server {
    let mut o = Opts::http(engine).arg("--root", root.path());
    o.args.push("--no-access-log".to_string());
    o.args.extend(args.iter().map(|a| a.to_string()));
    o.spawn()
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP client
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Resp {
    status: u16,
    head: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    /// The first value of field `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn says_close(&self) -> bool {
        self.has_token("Connection", "close")
    }

    fn content_length(&self) -> Option<u64> {
        self.header("Content-Length").and_then(|v| v.parse().ok())
    }

    fn show(&self) -> String {
        format!(
            "{}\n[body: {} bytes{}]",
            self.head,
            self.body.len(),
            if self.body.len() <= 200 {
                format!(": {:?}", String::from_utf8_lossy(&self.body))
            } else {
                String::new()
            }
        )
    }
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(600)]).into_owned();
    if b.len() > 600 {
        format!("{s:?}... ({} bytes)", b.len())
    } else {
        format!("{s:?}")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A connection that reads responses off the wire, keeping what it read past one.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    /// Bytes asked for per read.
    chunk: usize,
    /// Sleep after each read (a slow reader).
    pause: Duration,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(util::connect(addr))
    }

    fn from_stream(s: TcpStream) -> Client {
        Client {
            s,
            buf: Vec::new(),
            chunk: 64 * 1024,
            pause: Duration::ZERO,
        }
    }

    fn send(&mut self, data: &[u8]) {
        if let Err(e) = self.s.write_all(data) {
            panic!("writing {} request bytes: {e}", data.len());
        }
    }

    /// One read into `buf` before `deadline`: Ok(0) at EOF, Err on timeout, reset or error.
    fn fill(&mut self, deadline: Instant) -> Result<usize, String> {
        let mut tmp = vec![0u8; self.chunk];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".to_string());
            }
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            match self.s.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    if n > 0 && !self.pause.is_zero() {
                        thread::sleep(self.pause);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if util::is_timeout(&e) => return Err("timed out".to_string()),
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
    }

    /// Reads one response head (status line and fields) before `deadline`.
    fn head_before(&mut self, deadline: Instant) -> Result<Resp, String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..i + 4).collect();
                return parse_resp_head(&raw[..i]);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(format!("no end of head in 64 KiB: {}", lossy(&self.buf)));
            }
            match self.fill(deadline) {
                Ok(0) => {
                    return Err(format!(
                        "EOF before a complete response head (had {})",
                        lossy(&self.buf)
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "{e} waiting for a response head (had {})",
                        lossy(&self.buf)
                    ))
                }
            }
        }
    }

    /// Reads exactly `n` body bytes before `deadline`.
    fn body_before(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            match self.fill(deadline) {
                Ok(0) => return Err(format!("EOF after {} of {n} body bytes", self.buf.len())),
                Ok(_) => {}
                Err(e) => return Err(format!("{e} after {} of {n} body bytes", self.buf.len())),
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One whole response within `timeout`. A body is read by Content-Length (required on
    /// every response that can have a body); `head_only` for the answer to HEAD.
    fn response_within(&mut self, head_only: bool, timeout: Duration) -> Result<Resp, String> {
        let deadline = Instant::now() + timeout;
        let mut r = self.head_before(deadline)?;
        let bodiless =
            head_only || (100..200).contains(&r.status) || r.status == 204 || r.status == 304;
        if !bodiless {
            let lens = r.all("Content-Length");
            if lens.len() != 1 {
                return Err(format!(
                    "want exactly one Content-Length, got {lens:?} in\n{}",
                    r.head
                ));
            }
            let n: usize = lens[0]
                .parse()
                .map_err(|_| format!("bad Content-Length in\n{}", r.head))?;
            r.body = self
                .body_before(n, deadline)
                .map_err(|e| format!("{e} of the response\n{}", r.head))?;
        }
        Ok(r)
    }

    fn response(&mut self, head_only: bool) -> Result<Resp, String> {
        self.response_within(head_only, IO_TIMEOUT)
    }

    /// Panics with `what` unless a whole response comes.
    fn must(&mut self, head_only: bool, what: &str) -> Resp {
        self.response(head_only)
            .unwrap_or_else(|e| panic!("{what}: no complete response: {e}"))
    }

    /// Waits up to `timeout` for the server to close (EOF or reset) with nothing more sent.
    fn closed_within(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.buf.is_empty() {
                return Err(format!(
                    "unexpected bytes instead of a close: {}",
                    lossy(&self.buf)
                ));
            }
            match self.fill(deadline) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.contains("timed out") => {
                    return Err(format!("still open after {timeout:?}"))
                }
                // A reset is a close too (the server may close with our bytes unread).
                Err(_) => return Ok(()),
            }
        }
    }

    /// Sends a GET for `path` and checks that the answer is 200 with `body`: the connection
    /// is still open and in step.
    fn still_serves(&mut self, path: &str, body: &[u8], what: &str) {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = self.must(false, what);
        assert_eq!(r.status, 200, "{what}: {}", r.show());
        assert_eq!(r.body, body, "{what}: wrong body for {path}");
    }
}

fn parse_resp_head(raw: &[u8]) -> Result<Resp, String> {
    let text = std::str::from_utf8(raw).map_err(|_| format!("head not UTF-8: {}", lossy(raw)))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" || code.len() != 3 {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad field line {line:?} in\n{text}"));
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(format!("bad field name in {line:?}"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Resp {
        status,
        head: text.to_string(),
        headers,
        body: Vec::new(),
    })
}

/// Sends `req` (with a valid request pipelined behind it) and checks that the only answer is
/// `status` with `Connection: close`, after which the server closes.
fn expect_refusal(srv: &Server, req: &[u8], status: u16, what: &str) {
    let mut c = Client::connect(srv.tcp);
    let mut bytes = req.to_vec();
    bytes.extend_from_slice(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&bytes);
    let r = c
        .response(false)
        .unwrap_or_else(|e| panic!("{what}: no response: {e}\n{}", srv.stderr_dump()));
    if r.status != status {
        // Say what followed too: a second answer to the same request is part of the bug.
        let next = match c.response_within(false, Duration::from_secs(2)) {
            Ok(n) => format!("then a second response to the same request:\n{}", n.show()),
            Err(e) => format!("then: {e}"),
        };
        panic!(
            "{what}: want {status} as the only answer to\n{}\ngot\n{}\n{next}",
            lossy(req),
            r.show()
        );
    }
    assert!(
        r.says_close(),
        "{what}: the {status} lacks Connection: close:\n{}",
        r.head
    );
    if let Err(e) = c.closed_within(Duration::from_secs(3)) {
        panic!("{what}: after the {status}, the connection is not closed: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[test]
fn head_over_8k_is_431() {
    let root = Root::new("h431");
    let srv = serve(&root, &[]);
    let req = format!(
        "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    expect_refusal(&srv, req.as_bytes(), 431, "head over 8 KiB");
    // Just under the limit is fine.
    let mut c = Client::connect(srv.tcp);
    let req = format!(
        "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(7000)
    );
    c.send(req.as_bytes());
    let r = c.must(false, "7 KiB head");
    assert_eq!(r.status, 200, "7 KiB head: {}", r.show());
}

#[test]
fn uri_over_8k_is_414() {
    let root = Root::new("u414");
    let srv = serve(&root, &[]);
    let req = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    expect_refusal(&srv, req.as_bytes(), 414, "URI over 8 KiB");
}

/// A target under the limit in a head over it is a head too large (431), not a URI too long:
/// the target is not what the client should shorten.
#[test]
fn a_target_under_8k_in_a_head_over_8k_is_431() {
    let root = Root::new("u431");
    let srv = serve(&root, &[]);
    let req = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(8180));
    expect_refusal(
        &srv,
        req.as_bytes(),
        431,
        "8,180-byte target, 8,206-byte head",
    );
}

/// A refusal that closes the connection is, for a HEAD request, a head alone (RFC 9112 6.3: a
/// response to HEAD never has a body): its Content-Length says what a GET's body would be,
/// and no byte follows the head before the close. (It had the error page after it.)
#[test]
fn refusals_of_head_requests_have_no_body() {
    let root = Root::new("headref");
    let srv = serve(&root, &["--max-body", "100", "--body-timeout", "1"]);
    for (req, status) in [
        (&b"HEAD /hello.txt HTTP/1.1\r\n\r\n"[..], 400),
        (b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: foo\r\n\r\n", 417),
        (b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n", 413),
        (b"\r\nHEAD /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        // Refused once the body turns out bad, after the head was read.
        (b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        // The body never comes: 408 when the body timeout ends.
        (b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab", 408),
    ] {
        let what = lossy(req);
        let mut c = Client::connect(srv.tcp);
        c.send(req);
        let r = c
            .response(true)
            .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
        assert_eq!(r.status, status, "{what}: {}", r.show());
        assert!(r.says_close(), "{what}: {}", r.head);
        if let Err(e) = c.closed_within(Duration::from_secs(3)) {
            panic!("{what}: after the {status} head: {e}");
        }
    }
}

/// Heads sent a byte per write (TCP_NODELAY) read as they do in one piece: a head still
/// arriving is parsed again only once a new line ends, and the limits, which are lengths, and
/// a malformed line are still caught, with no further byte needed. A served head is followed
/// by a second request in the same stream, which must be answered too.
#[test]
fn heads_that_arrive_a_byte_at_a_time() {
    let root = Root::new("trickle");
    let srv = serve(&root, &[]);
    let pad = format!("X-Pad: {}\r\n", "a".repeat(60)).repeat(30);
    let long_field = format!("X-Pad: {}", "a".repeat(9000));
    let long_uri = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
    let cases: [(String, u16); 7] = [
        (
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\n{pad}\r\n"),
            200,
        ),
        ("GET /hello.txt HTTP/1.1\nHost: t\n\n".to_string(), 200),
        (
            format!("\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n{pad}\r\n"),
            200,
        ),
        (
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\n{long_field}"),
            431,
        ),
        (long_uri, 414),
        (
            "GET /hello.txt HTTP/1.1\r\nHost : t\r\n\r\n".to_string(),
            400,
        ),
        // Lines ended by a bare CR bring no line feed at all.
        ("GET /hello.txt HTTP/1.1\rHost: t\r\r".to_string(), 400),
    ];
    for (req, status) in cases {
        let what = format!("{status} for {:?}...", &req[..req.len().min(40)]);
        let mut c = Client::connect(srv.tcp);
        c.s.set_nodelay(true).unwrap();
        for byte in req.as_bytes().chunks(1) {
            // A refused head is answered and closed before all of it is sent.
            if c.s.write_all(byte).is_err() {
                break;
            }
        }
        // A refusal must come without more bytes: nothing else ends a line of the head.
        if status == 200 {
            c.send(b"GET /f0.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        let r = c.must(false, &what);
        assert_eq!(r.status, status, "{what}: {}", r.show());
        if status == 200 {
            assert_eq!(r.body, HELLO, "{what}");
            let next = c.must(false, &what);
            assert_eq!(
                next.status,
                200,
                "{what}: the request after it: {}",
                next.show()
            );
            assert_eq!(next.body, small_file(0), "{what}");
        } else {
            assert!(r.says_close(), "{what}: {}", r.show());
        }
    }
}

#[test]
fn too_many_headers_is_431() {
    let root = Root::new("n431");
    let srv = serve(&root, &[]);
    let fields = |n: usize| -> String {
        let mut s = String::from("GET /hello.txt HTTP/1.1\r\nHost: t\r\n");
        for i in 1..n {
            s.push_str(&format!("X-H{i}: v\r\n"));
        }
        s.push_str("\r\n");
        s
    };
    // 100 fields (Host and 99 more) are accepted; 101 are not.
    let mut c = Client::connect(srv.tcp);
    c.send(fields(100).as_bytes());
    let r = c.must(false, "100 header fields");
    assert_eq!(r.status, 200, "100 header fields: {}", r.show());
    expect_refusal(&srv, fields(101).as_bytes(), 431, "101 header fields");
}

#[test]
fn content_length_over_max_body_is_413() {
    let root = Root::new("cl413");
    let srv = serve(&root, &["--max-body", "1000"]);
    // At the limit: answered, and the connection stays in step.
    let mut c = Client::connect(srv.tcp);
    let mut req = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'b'; 1000]);
    c.send(&req);
    let r = c.must(false, "a 1000-byte body with --max-body 1000");
    assert_eq!(r.status, 200, "{}", r.show());
    c.still_serves("/f1.txt", &small_file(1), "after a 1000-byte body");

    // Over it, with the body sent.
    let mut req = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'b'; 1001]);
    expect_refusal(&srv, &req, 413, "Content-Length 1001 over --max-body 1000");

    // Over it, with only the head sent: the refusal does not wait for the body.
    let mut c = Client::connect(srv.tcp);
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n");
    let r = c
        .response_within(false, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("Content-Length 5000000, head only: {e}"));
    assert_eq!(r.status, 413, "{}", r.show());
    assert!(r.says_close(), "413 without Connection: close:\n{}", r.head);
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after the 413 (head only): {e}"));
}

/// A chunked body of `chunks` (sizes), then the final chunk.
fn chunked_body(chunks: &[usize]) -> Vec<u8> {
    let mut v = Vec::new();
    for &n in chunks {
        v.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        v.extend(std::iter::repeat_n(b'c', n));
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

#[test]
fn chunked_body_over_max_body_is_413() {
    let root = Root::new("ch413");
    let srv = serve(&root, &["--max-body", "1000"]);
    let head = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    // At the limit, in two chunks: answered, and the connection stays in step.
    let mut c = Client::connect(srv.tcp);
    let mut req = head.to_vec();
    req.extend_from_slice(&chunked_body(&[600, 400]));
    c.send(&req);
    let r = c.must(false, "a 1000-byte chunked body with --max-body 1000");
    assert_eq!(r.status, 200, "{}", r.show());
    c.still_serves("/f2.txt", &small_file(2), "after a 1000-byte chunked body");

    // One chunk over the limit.
    let mut req = head.to_vec();
    req.extend_from_slice(&chunked_body(&[1001]));
    expect_refusal(&srv, &req, 413, "one 1001-byte chunk over --max-body 1000");

    // Chunks that add up to over the limit.
    let mut req = head.to_vec();
    req.extend_from_slice(&chunked_body(&[600, 401]));
    expect_refusal(&srv, &req, 413, "chunks of 600 + 401 over --max-body 1000");
}

// ---------------------------------------------------------------------------------------------
// Smuggling shapes
// ---------------------------------------------------------------------------------------------

fn smuggle(tag: &str, req: &[u8], what: &str) {
    let root = Root::new(tag);
    let srv = serve(&root, &[]);
    expect_refusal(&srv, req, 400, what);
}

#[test]
fn smuggle_content_length_and_transfer_encoding() {
    smuggle(
        "clte",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Content-Length + Transfer-Encoding",
    );
    smuggle(
        "tecl",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding + Content-Length",
    );
}

#[test]
fn smuggle_two_different_content_lengths() {
    smuggle(
        "clcl",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        "two Content-Length fields (5, 6)",
    );
    smuggle(
        "cllist",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nabcdef",
        "Content-Length: 5, 6",
    );
}

#[test]
fn smuggle_transfer_encoding_gzip() {
    smuggle(
        "tegzip",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        "Transfer-Encoding: gzip",
    );
}

#[test]
fn smuggle_transfer_encoding_chunked_then_gzip() {
    smuggle(
        "techgz",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked, gzip",
    );
}

#[test]
fn smuggle_obs_fold() {
    smuggle(
        "fold",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
        "obs-fold field line",
    );
    smuggle(
        "foldte",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n\r\n",
        "obs-fold hiding Transfer-Encoding",
    );
}

#[test]
fn smuggle_space_before_colon() {
    smuggle(
        "hostsp",
        b"GET /hello.txt HTTP/1.1\r\nHost : t\r\n\r\n",
        "whitespace before the colon (Host : t)",
    );
    smuggle(
        "tesp",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "whitespace before the colon (Transfer-Encoding : chunked)",
    );
}

#[test]
fn smuggle_invalid_chunk_size() {
    smuggle(
        "zz",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "chunk size \"zz\"",
    );
}

#[test]
fn missing_host_in_http11() {
    smuggle(
        "nohost",
        b"GET /hello.txt HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
        "HTTP/1.1 without Host",
    );
}

#[test]
fn two_host_fields() {
    smuggle(
        "twohost",
        b"GET /hello.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "two Host fields",
    );
}

#[test]
fn a_host_that_is_not_a_host() {
    smuggle(
        "badhost",
        b"GET /hello.txt HTTP/1.1\r\nHost: a b\r\n\r\n",
        "Host: a b",
    );
    smuggle(
        "userinfohost",
        b"GET /hello.txt HTTP/1.1\r\nHost: user@example.com\r\n\r\n",
        "Host: user@example.com",
    );
}

/// Chunked framing, but under a coding keel cannot decode: 501 (RFC 9112 6.1), and closed.
#[test]
fn an_unknown_transfer_coding_before_chunked_is_501() {
    let root = Root::new("te501");
    let srv = serve(&root, &[]);
    expect_refusal(
        &srv,
        b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
        "Transfer-Encoding: gzip, chunked",
    );
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

/// HTTP/1.1: two requests, one after the other, on one connection; neither answer closes.
fn keepalive_11(srv: &Server, what: &str) {
    let mut c = Client::connect(srv.tcp);
    for (i, path) in ["/hello.txt", "/f3.txt", "/mid.bin"].iter().enumerate() {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c
            .response(false)
            .unwrap_or_else(|e| panic!("{what}: request {i} ({path}) on one connection: {e}"));
        assert_eq!(r.status, 200, "{what}: {path}: {}", r.show());
        assert!(
            !r.says_close(),
            "{what}: {path} answered with close:\n{}",
            r.head
        );
    }
}

#[test]
fn http11_keeps_alive_by_default() {
    let root = Root::new("ka11");
    let srv = serve(&root, &[]);
    keepalive_11(&srv, "HTTP/1.1 default");
}

#[test]
fn connection_close_is_honoured() {
    let root = Root::new("close");
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.must(false, "Connection: close");
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(r.body, HELLO);
    assert!(r.says_close(), "no Connection: close in\n{}", r.head);
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after Connection: close: {e}"));
}

/// RFC 9110 9.1: a method keel does not know is 501 (methods are case-sensitive), a
/// standard one a static file does not allow is 405 with Allow; either way the connection
/// stays usable.
#[test]
fn unknown_methods_are_501_and_known_ones_405() {
    let root = Root::new("methods");
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    for (method, status) in [("FOO", 501), ("get", 501), ("PATCH", 405), ("OPTIONS", 405)] {
        c.send(format!("{method} /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.must(false, method);
        assert_eq!(r.status, status, "{method}: {}", r.show());
        let allow = if status == 405 {
            Some("GET, HEAD")
        } else {
            None
        };
        assert_eq!(r.header("Allow"), allow, "{method}: {}", r.head);
        assert!(!r.says_close(), "{method} closes:\n{}", r.head);
    }
    c.still_serves("/hello.txt", HELLO, "after the refused methods");
}

/// RFC 9110 4.2.1 and 4.2.4: an absolute-form target with an empty host, or with userinfo,
/// is refused; with a host it names the file its path names.
#[test]
fn absolute_form_targets_need_a_host_and_no_userinfo() {
    let root = Root::new("absform");
    let srv = serve(&root, &[]);
    for target in [
        "http:///hello.txt",
        "http://user@t/hello.txt",
        "http://:80/hello.txt",
    ] {
        let mut c = Client::connect(srv.tcp);
        c.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.must(false, target);
        assert_eq!(r.status, 400, "{target}: {}", r.show());
    }
    let mut c = Client::connect(srv.tcp);
    c.send(b"GET http://t:1/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.must(false, "absolute-form");
    assert_eq!((r.status, &r.body[..]), (200, HELLO), "{}", r.show());
}

/// RFC 9110 2.5 and 6.2: HTTP/1.2 is read as 1.1 (kept alive, answered as 1.1); another
/// major version is 505.
#[test]
fn a_later_minor_version_is_served_as_http11() {
    let root = Root::new("v12");
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    for version in ["HTTP/1.2", "HTTP/1.9"] {
        // A tab in a field: not the common shape, so the full way reads this one.
        c.send(format!("GET /hello.txt {version}\r\nHost: t\r\nX-Tab:\ta\r\n\r\n").as_bytes());
        let r = c.must(false, version);
        assert_eq!(r.status, 200, "{version}: {}", r.show());
        assert_eq!(r.body, HELLO);
        assert!(
            !r.says_close(),
            "{version} answered with close:\n{}",
            r.head
        );
    }
    c.send(b"GET /hello.txt HTTP/2.0\r\nHost: t\r\n\r\n");
    let r = c.must(false, "HTTP/2.0");
    assert_eq!(r.status, 505, "{}", r.show());
}

#[test]
fn http10_closes_by_default() {
    let root = Root::new("c10");
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n");
    let r = c.must(false, "HTTP/1.0");
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(r.body, HELLO);
    assert!(
        !r.has_token("Connection", "keep-alive"),
        "HTTP/1.0 without keep-alive answered keep-alive:\n{}",
        r.head
    );
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after an HTTP/1.0 request: {e}"));
}

#[test]
fn http10_keep_alive_stays_open() {
    let root = Root::new("ka10");
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    for (i, path) in ["/hello.txt", "/f0.txt", "/mid.bin"].iter().enumerate() {
        c.send(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes());
        let r = c
            .response(false)
            .unwrap_or_else(|e| panic!("HTTP/1.0 keep-alive request {i} ({path}): {e}"));
        assert_eq!(r.status, 200, "{}", r.show());
        assert!(
            r.has_token("Connection", "keep-alive"),
            "HTTP/1.0 keep-alive not confirmed:\n{}",
            r.head
        );
    }
    // Dropping keep-alive on the last one closes it.
    c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n");
    let r = c.must(false, "final HTTP/1.0 request");
    assert_eq!(r.body, HELLO);
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after the last HTTP/1.0 request: {e}"));
}

#[test]
fn keepalive_requests_limit() {
    let root = Root::new("kareq");
    let srv = serve(&root, &["--keepalive-requests", "3"]);
    let mut c = Client::connect(srv.tcp);
    for i in 1..=3 {
        c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.must(false, &format!("request {i} of 3"));
        assert_eq!(r.status, 200, "{}", r.show());
        assert_eq!(r.body, HELLO);
        assert_eq!(
            r.says_close(),
            i == 3,
            "request {i} with --keepalive-requests 3:\n{}",
            r.head
        );
    }
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after the 3rd request with --keepalive-requests 3: {e}"));
}

/// A small file asked for again and again on one connection is answered from its pre-encoded
/// response; every request that needs a different answer must still get it: a conditional
/// one, a range, HEAD, gzip, HTTP/1.0 and a Connection: close. Each comes right after a plain
/// GET of the same file, which is when the pre-encoded answer is at hand.
#[test]
fn repeated_file_requests_still_get_their_own_answers() {
    let root = Root::new("repeat");
    root.write(
        "hello.txt.gz",
        b"not really gzip, but served as the encoding",
    );
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    let get_plain = |c: &mut Client, what: &str| {
        c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.must(false, what);
        assert_eq!(r.status, 200, "{}", r.show());
        assert_eq!(r.body, HELLO);
        r
    };
    let first = get_plain(&mut c, "first GET");
    let etag = first.header("ETag").expect("ETag").to_string();
    // The first answer came the general way (the file was looked up); the next from memory,
    // byte for byte the same but for the Date line.
    let undated = |r: &Resp| {
        r.head
            .lines()
            .filter(|l| !l.starts_with("Date:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let again = get_plain(&mut c, "second GET");
    assert_eq!(undated(&again), undated(&first));

    get_plain(&mut c, "before If-None-Match");
    c.send(
        format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes(),
    );
    let r = c.must(false, "If-None-Match");
    assert_eq!(r.status, 304, "{}", r.show());

    get_plain(&mut c, "before Range");
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-4\r\n\r\n");
    let r = c.must(false, "Range");
    assert_eq!(
        (r.status, &r.body[..]),
        (206, &b"hello"[..]),
        "{}",
        r.show()
    );

    get_plain(&mut c, "before HEAD");
    c.send(b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.must(true, "HEAD");
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(r.body.is_empty());

    get_plain(&mut c, "before gzip");
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
    let r = c.must(false, "Accept-Encoding: gzip");
    assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{}", r.show());
    assert_eq!(r.body, b"not really gzip, but served as the encoding");

    get_plain(&mut c, "before HTTP/1.0");
    c.send(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.must(false, "HTTP/1.0 keep-alive");
    assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.show());
    assert_eq!(
        r.header("Connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("keep-alive"),
        "{}",
        r.show()
    );

    get_plain(&mut c, "before Connection: close");
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.must(false, "Connection: close");
    assert!(r.says_close(), "{}", r.show());
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after Connection: close: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Pipelining
// ---------------------------------------------------------------------------------------------

struct Expect {
    what: String,
    status: u16,
    head_only: bool,
    /// The exact body, when it is known (not for error pages).
    body: Option<Vec<u8>>,
    content_length: Option<u64>,
    allow: bool,
}

/// Twenty requests of mixed methods and framings, and what each must get.
fn mixed_batch() -> (Vec<u8>, Vec<Expect>) {
    let mid = random_bytes(40, 40 * 1024);
    let mut req = Vec::new();
    let mut want = Vec::new();
    let ok = |what: String, body: Vec<u8>| Expect {
        what,
        status: 200,
        head_only: false,
        content_length: Some(body.len() as u64),
        body: Some(body),
        allow: false,
    };
    for i in 0..20 {
        match i % 7 {
            0 => {
                let f = i % 5;
                req.extend_from_slice(
                    format!("GET /f{f}.txt HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
                );
                want.push(ok(format!("#{i} GET /f{f}.txt"), small_file(f)));
            }
            1 => {
                req.extend_from_slice(b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
                want.push(Expect {
                    what: format!("#{i} HEAD /hello.txt"),
                    status: 200,
                    head_only: true,
                    body: Some(Vec::new()),
                    content_length: Some(HELLO.len() as u64),
                    allow: false,
                });
            }
            2 => {
                req.extend_from_slice(b"GET /missing.txt HTTP/1.1\r\nHost: t\r\n\r\n");
                want.push(Expect {
                    what: format!("#{i} GET /missing.txt"),
                    status: 404,
                    head_only: false,
                    body: None,
                    content_length: None,
                    allow: false,
                });
            }
            3 => {
                req.extend_from_slice(
                    b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\nGET /x HTTP/1.1\r\n",
                );
                want.push(Expect {
                    what: format!("#{i} POST /hello.txt with a 17-byte body"),
                    status: 405,
                    head_only: false,
                    body: None,
                    content_length: None,
                    allow: true,
                });
            }
            4 => {
                let f = (i + 1) % 5;
                req.extend_from_slice(
                    format!(
                        "GET /f{f}.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
                         5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n"
                    )
                    .as_bytes(),
                );
                want.push(ok(
                    format!("#{i} GET /f{f}.txt with a chunked body"),
                    small_file(f),
                ));
            }
            5 => {
                req.extend_from_slice(b"GET /mid.bin HTTP/1.1\r\nHost: t\r\n\r\n");
                want.push(ok(format!("#{i} GET /mid.bin"), mid.clone()));
            }
            _ => {
                req.extend_from_slice(b"HEAD /mid.bin HTTP/1.1\r\nHost: t\r\n\r\n");
                want.push(Expect {
                    what: format!("#{i} HEAD /mid.bin"),
                    status: 200,
                    head_only: true,
                    body: Some(Vec::new()),
                    content_length: Some(mid.len() as u64),
                    allow: false,
                });
            }
        }
    }
    (req, want)
}

/// Sends the mixed batch in one write and checks every answer, in order; then the connection
/// is still in step for one more request.
fn pipeline_mixed(srv: &Server, what: &str) {
    let (req, want) = mixed_batch();
    let mut c = Client::connect(srv.tcp);
    c.send(&req);
    for w in &want {
        let r = c.response(w.head_only).unwrap_or_else(|e| {
            panic!(
                "{what}: {}: no complete response: {e}\n{}",
                w.what,
                srv.stderr_dump()
            )
        });
        assert_eq!(r.status, w.status, "{what}: {}:\n{}", w.what, r.show());
        assert!(!r.says_close(), "{what}: {} closes:\n{}", w.what, r.head);
        if let Some(n) = w.content_length {
            assert_eq!(
                r.content_length(),
                Some(n),
                "{what}: {}: wrong Content-Length:\n{}",
                w.what,
                r.head
            );
        }
        if let Some(b) = &w.body {
            assert!(
                r.body == *b,
                "{what}: {}: wrong body:\n{}",
                w.what,
                r.show()
            );
        }
        if w.allow {
            assert_eq!(
                r.header("Allow"),
                Some("GET, HEAD"),
                "{what}: {}:\n{}",
                w.what,
                r.head
            );
        }
    }
    c.still_serves("/hello.txt", HELLO, &format!("{what}: after the batch"));
    c.send(b"GET /f4.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.must(false, "closing request");
    assert_eq!(r.body, small_file(4), "{what}: closing request");
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{what}: after Connection: close: {e}"));
}

#[test]
fn pipelined_mixed_requests_in_one_write() {
    let root = Root::new("pipe");
    let srv = serve(&root, &[]);
    pipeline_mixed(&srv, "pipelined");
}

/// Runs of one file and then another in one pipelined write: the answer from memory holds the
/// file it found for the rest of the batch, and must let go of it when the target changes.
#[test]
fn pipelined_runs_of_two_files_each_get_their_own() {
    let root = Root::new("runs");
    let srv = serve(&root, &[]);
    let order = [1, 1, 1, 2, 2, 1, 2, 2, 2, 1];
    let mut c = Client::connect(srv.tcp);
    // Twice: the first batch fills the cache, the second is answered from memory.
    for round in 0..2 {
        let req: Vec<u8> = order
            .iter()
            .flat_map(|f| format!("GET /f{f}.txt HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes())
            .collect();
        c.send(&req);
        for (i, f) in order.iter().enumerate() {
            let r = c.must(false, &format!("round {round}, request {i}"));
            assert_eq!(r.status, 200, "{}", r.show());
            assert!(
                r.body == small_file(*f),
                "round {round}, request {i} (/f{f}.txt) got another file's body:\n{}",
                r.show()
            );
        }
    }
}

fn core(engine: &str, model: &str) {
    let root = Root::new(&format!("core-{model}"));
    // For the per-connection models --threads is the cap on connections at once; a finished
    // connection's thread or process may not be reaped yet when the next ones arrive, so the
    // cap leaves room (refusal past the cap is tested in tests/models.rs).
    let threads = if model.ends_with("-per-conn") {
        "8"
    } else {
        "2"
    };
    let srv = serve_on(engine, &root, &["--model", model, "--threads", threads]);
    let what = format!("--engine {engine} --model {model} --threads {threads}");
    keepalive_11(&srv, &what);
    pipeline_mixed(&srv, &what);
    // A few connections at once.
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| pipeline_mixed(&srv, &what));
        }
    });
}

mod models {
    #[test]
    fn multi_reactor() {
        super::core(super::ENGINE, "multi-reactor")
    }
    #[test]
    fn prefork() {
        super::core(super::ENGINE, "prefork")
    }
    #[test]
    fn half_sync() {
        super::core(super::ENGINE, "half-sync")
    }
    #[test]
    fn leader_followers() {
        super::core(super::ENGINE, "leader-followers")
    }
    #[test]
    fn thread_per_conn() {
        super::core(super::ENGINE, "thread-per-conn")
    }
    #[test]
    fn process_per_conn() {
        super::core(super::ENGINE, "process-per-conn")
    }
}

fn core_engine(engine: &str) {
    core(engine, "multi-reactor")
}

util::per_engine!(core_engine);

// ---------------------------------------------------------------------------------------------
// Expect: 100-continue
// ---------------------------------------------------------------------------------------------

/// Every model with the access log on: prefork and process-per-connection fork while the
/// log's writer thread exists, and must still serve, and log every request.
#[test]
fn every_model_serves_and_logs_with_the_access_log_on() {
    for model in util::MODELS {
        let root = Root::new("alog-model");
        let log = std::env::temp_dir().join(format!(
            "keel-http-protocol-{}-{model}.log",
            std::process::id()
        ));
        let _ = fs::remove_file(&log);
        let srv = Opts::http(ENGINE)
            .arg("--root", root.path())
            .arg("--model", model)
            // Per-connection models serve at most this many at once, and free a slot only
            // after the connection's process or thread is reaped: room for all three.
            .arg("--threads", "4")
            .arg("--access-log", log.to_str().unwrap())
            .spawn();
        for i in 0..3 {
            let mut c = Client::connect(srv.tcp);
            c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let r = c.must(false, &format!("{model}: request {i}"));
            assert_eq!(r.status, 200, "{model}: {}", r.show());
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let text = loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() >= 3 || Instant::now() >= deadline {
                break text;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let _ = fs::remove_file(&log);
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("\"GET /hello.txt HTTP/1.1\" 200 "))
                .count(),
            3,
            "{model}: access log:\n{text}\n{}",
            srv.stderr_dump()
        );
    }
}

#[test]
fn expect_100_continue() {
    let root = Root::new("expect");
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    c.send(
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
    );
    let r = c
        .response_within(false, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("no 100 Continue before the body is sent: {e}"));
    assert_eq!(r.status, 100, "want 100 Continue first, got\n{}", r.show());
    assert!(
        r.head.starts_with("HTTP/1.1 100 Continue"),
        "interim response line: {:?}",
        r.head
    );
    c.send(b"0123456789");
    let r = c.must(false, "final response after 100 Continue");
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(r.body, HELLO);
    // The body was skipped exactly: the next request is answered.
    c.still_serves("/f0.txt", &small_file(0), "after a 100-continue exchange");
}

/// RFC 9110 10.1.1: an upload keel refuses whatever its body is refused at once, without the
/// 100 that would have the client send the body for nothing; then the connection closes
/// (whether the body follows is the client's choice), and a body sent anyway is dropped
/// without resetting the connection before the refusal is read.
#[test]
fn a_refused_upload_that_expects_100_continue_is_refused_at_once() {
    let root = Root::new("expect-refused");
    let srv = serve(&root, &[]);
    for (method, status) in [("PUT", 405), ("POST", 405), ("FOO", 501)] {
        let mut c = Client::connect(srv.tcp);
        c.send(
            format!(
                "{method} /up.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\
                 Expect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        );
        let r = c
            .response_within(false, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{method}: no answer before the body: {e}"));
        assert_eq!(r.status, status, "{method}: {}", r.show());
        assert!(
            r.says_close(),
            "{method}: no Connection: close:\n{}",
            r.head
        );
        if status == 405 {
            assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{method}: {}", r.head);
        }
        c.closed_within(Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{method}: after the refusal: {e}"));
    }
    // A client that sends its body without waiting still gets the whole refusal.
    let mut c = Client::connect(srv.tcp);
    let mut req =
        b"PUT /up.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
            .to_vec();
    req.extend(std::iter::repeat_n(b'x', 100_000));
    c.send(&req);
    let r = c.must(false, "a refused upload sent whole");
    assert_eq!(r.status, 405, "{}", r.show());
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after the refusal of a whole upload: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Fields on every response
// ---------------------------------------------------------------------------------------------

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// IMF-fixdate (RFC 9110 5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`, and close to now.
fn check_imf_fixdate(v: &str) -> Result<(), String> {
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = b.len() == 29
        && v.is_ascii()
        && DAYS.contains(&&v[0..3])
        && &v[3..5] == ", "
        && digits(5..7)
        && b[7] == b' '
        && MONTHS.contains(&&v[8..11])
        && b[11] == b' '
        && digits(12..16)
        && b[16] == b' '
        && digits(17..19)
        && b[19] == b':'
        && digits(20..22)
        && b[22] == b':'
        && digits(23..25)
        && &v[25..] == " GMT";
    if !shape {
        return Err(format!("Date {v:?} is not an IMF-fixdate"));
    }
    let t = httpdate::parse_http_date(v).map_err(|e| format!("Date {v:?}: {e}"))?;
    let now = SystemTime::now();
    let skew = match now.duration_since(t) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > Duration::from_secs(5) {
        return Err(format!("Date {v:?} is {skew:?} away from now"));
    }
    Ok(())
}

#[test]
fn every_response_has_date_server_and_content_length() {
    let root = Root::new("fields");
    let srv = serve(&root, &[]);
    let mid = random_bytes(40, 40 * 1024);
    let mut c = Client::connect(srv.tcp);
    // (request, head_only, status, exact body if known)
    let cases: Vec<(&str, bool, u16, Option<&[u8]>)> = vec![
        (
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            200,
            Some(HELLO),
        ),
        (
            "GET /mid.bin HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            200,
            Some(&mid),
        ),
        ("HEAD /mid.bin HTTP/1.1\r\nHost: t\r\n\r\n", true, 200, None),
        (
            "GET /mid.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=100-199\r\n\r\n",
            false,
            206,
            Some(&mid[100..200]),
        ),
        (
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-4\r\n\r\n",
            false,
            206,
            Some(&HELLO[..5]),
        ),
        (
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=500-600\r\n\r\n",
            false,
            416,
            None,
        ),
        (
            "GET /nothing-here HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            404,
            None,
        ),
        (
            "HEAD /nothing-here HTTP/1.1\r\nHost: t\r\n\r\n",
            true,
            404,
            None,
        ),
        (
            "DELETE /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            405,
            None,
        ),
        ("GET /docs HTTP/1.1\r\nHost: t\r\n\r\n", false, 301, None),
        (
            "GET /docs/ HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            200,
            Some(b"<p>docs</p>\n"),
        ),
        (
            "GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            false,
            200,
            Some(HELLO),
        ),
        // Last: a refusal, which closes.
        ("GET /hello.txt HTTP/1.1\r\n\r\n", false, 400, None),
    ];
    for (req, head_only, status, body) in cases {
        c.send(req.as_bytes());
        let what = req.split("\r\n").next().unwrap().to_string();
        let r = c
            .response(head_only)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, status, "{what}:\n{}", r.show());
        let dates = r.all("Date");
        assert_eq!(dates.len(), 1, "{what}: want one Date:\n{}", r.head);
        if let Err(e) = check_imf_fixdate(dates[0]) {
            panic!("{what}: {e}");
        }
        let server = r.all("Server");
        assert!(
            server.len() == 1 && !server[0].is_empty(),
            "{what}: want one non-empty Server:\n{}",
            r.head
        );
        // The reader already required exactly one Content-Length and read that many bytes;
        // for HEAD the length is checked against the GET's.
        assert!(
            r.content_length().is_some(),
            "{what}: no Content-Length:\n{}",
            r.head
        );
        if head_only && status == 200 {
            assert_eq!(
                r.content_length(),
                Some(mid.len() as u64),
                "{what}:\n{}",
                r.head
            );
        }
        if let Some(b) = body {
            assert!(r.body == b, "{what}: wrong body:\n{}", r.show());
        }
    }
    // Nothing beyond the announced lengths: the last answer closes and no byte is left over.
    c.closed_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after the final 400: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

/// Waits (up to `limit`) for the only answer on `c` to be 408 with Connection: close, then for
/// the close; returns how long after `since` the 408 came.
fn expect_408(c: &mut Client, since: Instant, limit: Duration, what: &str) -> Duration {
    let r = c
        .response_within(false, limit)
        .unwrap_or_else(|e| panic!("{what}: no 408 within {limit:?}: {e}"));
    let took = since.elapsed();
    if r.status != 408 {
        let next = match c.response_within(false, limit) {
            Ok(n) => format!(
                "then, {:?} after the request, a second response to it:\n{}",
                since.elapsed(),
                n.show()
            ),
            Err(e) => format!("then: {e}"),
        };
        panic!(
            "{what}: want 408 as the only answer, got\n{}\n{next}",
            r.show()
        );
    }
    assert_eq!(
        r.status,
        408,
        "{what}: want 408 as the only answer, got\n{}",
        r.show()
    );
    assert!(
        r.says_close(),
        "{what}: 408 without Connection: close:\n{}",
        r.head
    );
    c.closed_within(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{what}: after the 408: {e}"));
    took
}

#[test]
fn header_timeout_408() {
    let root = Root::new("htmo");
    let srv = serve(&root, &["--header-timeout", "1"]);
    let mut c = Client::connect(srv.tcp);
    let t0 = Instant::now();
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-Half: ");
    let took = expect_408(
        &mut c,
        t0,
        Duration::from_secs(3),
        "half a head, --header-timeout 1",
    );
    assert!(
        took >= Duration::from_millis(700),
        "408 after only {took:?} with --header-timeout 1"
    );
}

/// A connection that never sends a byte is closed at the header timeout, counted from the
/// accept, without a 408 (there is no request to answer; a browser's pre-opened socket could
/// take one for the answer to the request it sends next).
#[test]
fn a_silent_connection_is_closed_quietly_at_the_header_timeout() {
    let root = Root::new("silent");
    let srv = serve(&root, &["--header-timeout", "1"]);
    let mut c = Client::connect(srv.tcp);
    let t0 = Instant::now();
    c.closed_within(Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("silent connection, --header-timeout 1: {e}"));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "closed after only {took:?} with --header-timeout 1"
    );
    // Another connection is served as usual.
    let mut c = Client::connect(srv.tcp);
    c.still_serves("/hello.txt", HELLO, "after a silent connection was closed");
}

#[test]
fn body_timeout_408() {
    let root = Root::new("btmo");
    let srv = serve(&root, &["--body-timeout", "1"]);
    let mut c = Client::connect(srv.tcp);
    let t0 = Instant::now();
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789");
    let took = expect_408(
        &mut c,
        t0,
        Duration::from_secs(3),
        "Content-Length 100 with 10 bytes sent, --body-timeout 1",
    );
    assert!(
        took >= Duration::from_millis(700),
        "408 after only {took:?} with --body-timeout 1"
    );
}

#[test]
fn keepalive_timeout_closes_idle_connection() {
    let root = Root::new("katmo");
    let srv = serve(&root, &["--keepalive-timeout", "1"]);
    let mut c = Client::connect(srv.tcp);
    c.still_serves("/hello.txt", HELLO, "before going idle");
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(3);
    // Closing an idle connection needs no answer; a 408 before the close is tolerated.
    let mut extra = Vec::new();
    let closed = loop {
        match c.fill(deadline) {
            Ok(0) => break true,
            Ok(_) => extra.append(&mut c.buf),
            Err(e) if e.contains("timed out") => break false,
            Err(_) => break true,
        }
    };
    let took = t0.elapsed();
    assert!(
        closed,
        "idle keep-alive connection still open after 3 s (--keepalive-timeout 1)"
    );
    assert!(
        took >= Duration::from_millis(700),
        "idle connection closed after only {took:?} with --keepalive-timeout 1"
    );
    assert!(
        extra.is_empty() || extra.starts_with(b"HTTP/1.1 408 "),
        "idle close sent {}",
        lossy(&extra)
    );
}

// ---------------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------------

#[test]
fn slowloris_does_not_starve_a_normal_client() {
    util::raise_own_nofile();
    let root = Root::new("slowloris");
    let srv = serve(&root, &["--header-timeout", "2", "--threads", "1"]);
    const N: usize = 500;

    let t_open = Instant::now();
    let mut slow = Vec::with_capacity(N);
    for i in 0..N {
        let s =
            util::try_connect(srv.tcp).unwrap_or_else(|e| panic!("slowloris connection {i}: {e}"));
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        (&s).write_all(b"GET / HTTP/1.1\r\n")
            .unwrap_or_else(|e| panic!("slowloris connection {i}: first line: {e}"));
        slow.push(s);
    }
    let opened = t_open.elapsed();
    let slow = Arc::new(slow);
    let stop = Arc::new(AtomicBool::new(false));

    // One header byte per connection every 500 ms, never finishing the head.
    let writer = {
        let slow = Arc::clone(&slow);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut alive = vec![true; slow.len()];
            let deadline = Instant::now() + Duration::from_secs(8);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for (s, a) in slow.iter().zip(alive.iter_mut()) {
                    if *a && (&*s).write_all(b"a").is_err() {
                        *a = false;
                    }
                }
                // Sleep 500 ms in small steps so that stop is seen promptly.
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };

    // Meanwhile, a normal client: 20 requests, each on a new connection, each answered in 1 s.
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        let mut c = Client::connect(srv.tcp);
        c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c
            .response_within(false, Duration::from_secs(1))
            .unwrap_or_else(|e| {
                panic!(
                    "normal request {i} among {N} slowloris connections: not answered within 1 s: {e}"
                )
            });
        let took = t.elapsed();
        assert_eq!(r.status, 200, "normal request {i}: {}", r.show());
        assert_eq!(r.body, HELLO);
        assert!(
            took <= Duration::from_secs(1),
            "normal request {i} took {took:?}"
        );
        slowest = slowest.max(took);
        thread::sleep(Duration::from_millis(100));
    }

    // About 3 s after they began (header timeout 2 s), every slowloris connection has been
    // answered 408 or closed. Allow for the time it took to open them all.
    let check_at = t_open + opened + Duration::from_secs(3);
    if let Some(d) = check_at.checked_duration_since(Instant::now()) {
        thread::sleep(d);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("slowloris writer panicked");
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut open = Vec::new();
    let mut odd = Vec::new();
    for (i, s) in slow.iter().enumerate() {
        let mut got = Vec::new();
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(5));
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 4096];
        let end = loop {
            match (&*s).read(&mut buf) {
                Ok(0) => break "eof",
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if util::is_timeout(&e) => break "open",
                Err(_) => break "reset",
            }
        };
        if !got.is_empty() && !got.starts_with(b"HTTP/1.1 408 ") {
            odd.push((i, lossy(&got)));
        }
        // An answered 408 whose close has not reached us yet is acceptable only if the
        // answer itself is there.
        if end == "open" && got.is_empty() {
            open.push(i);
        }
    }
    assert!(
        odd.is_empty(),
        "slowloris connections answered with something other than 408: {:?}",
        &odd[..odd.len().min(5)]
    );
    assert!(
        open.is_empty(),
        "{} of {N} slowloris connections neither answered 408 nor closed ~3 s after they \
         started (--header-timeout 2; opening them took {opened:?}); first: {:?}",
        open.len(),
        &open[..open.len().min(10)]
    );
    eprintln!("slowloris: opened {N} in {opened:?}; slowest normal request {slowest:?}");
}

// ---------------------------------------------------------------------------------------------
// Slow readers and partial writes
// ---------------------------------------------------------------------------------------------

/// FNV-1a, 64 bits: enough to compare downloads in a failure message.
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A connection whose receive buffer is set before connecting (so the window it offers is
/// small from the start): the server's writes then go partial.
fn connect_with_rcvbuf(addr: SocketAddr, bytes: usize) -> TcpStream {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    sock.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    sock.into()
}

#[test]
fn small_receive_buffer_slow_download() {
    let root = Root::new("rcvbuf");
    let big = random_bytes(4, 4 << 20);
    root.write("big.bin", &big);
    let srv = serve(&root, &[]);

    let s = connect_with_rcvbuf(srv.tcp, 4096);
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut c = Client::from_stream(s);
    c.chunk = 4096;
    c.pause = Duration::from_micros(500);
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    let t = Instant::now();
    let r = c
        .response_within(false, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("4 MiB through a 4 KiB receive buffer: {e}"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.content_length(), Some(big.len() as u64), "{}", r.head);
    assert_eq!(
        fnv1a(&r.body),
        fnv1a(&big),
        "4 MiB download differs (got {} bytes)",
        r.body.len()
    );
    assert!(r.body == big);
    // Still in step afterwards.
    c.pause = Duration::ZERO;
    c.still_serves("/hello.txt", HELLO, "after the slow 4 MiB download");
    eprintln!("4 MiB through SO_RCVBUF 4096 in {:?}", t.elapsed());
}

/// `model` with a linger timeout of 0.3 s and a 16 KiB send buffer: a large response to a
/// client reading slowly, or not at all, outlasts the timeout many times over.
fn serve_lingering_briefly(root: &Root, model: &str) -> Server {
    let args = [
        "--model",
        model,
        "--threads",
        "2",
        "--linger-timeout",
        "0.3",
    ];
    serve(root, &[&args[..], &["--sndbuf", "16384"]].concat())
}

/// A client reading slower than the linger timeout still gets the whole of the last response
/// on a connection (Connection: close, HTTP/1.0, the last of `--keepalive-requests`): before
/// our FIN the linger timeout counts from the last bytes the peer took, not from the close.
/// It used to reset every such download that took longer than the timeout (5 s by default).
#[test]
fn a_slow_reader_gets_all_of_the_last_response() {
    let root = Root::new("slowclose");
    let big = random_bytes(6, 2 << 20);
    root.write("big.bin", &big);
    for model in ["multi-reactor", "leader-followers", "thread-per-conn"] {
        let srv = serve_lingering_briefly(&root, model);
        for (what, req) in [
            (
                "Connection: close",
                &b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
            ),
            ("HTTP/1.0", b"GET /big.bin HTTP/1.0\r\n\r\n"),
        ] {
            let mut c = Client::from_stream(connect_with_rcvbuf(srv.tcp, 4096));
            c.chunk = 4096;
            c.pause = Duration::from_millis(2);
            c.send(req);
            let t = Instant::now();
            let r = c
                .response_within(false, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{model}, {what}: after {:?}: {e}", t.elapsed()));
            let took = t.elapsed();
            assert_eq!(r.status, 200, "{model}, {what}: {}", r.head);
            assert!(
                r.body == big,
                "{model}, {what}: {} of {} bytes in {took:?}",
                r.body.len(),
                big.len()
            );
            assert!(
                took > Duration::from_millis(600),
                "{model}, {what}: read in {took:?}: not slow enough to outlast the 0.3 s timeout"
            );
            c.closed_within(Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{model}, {what}: after the response: {e}"));
        }
    }
}

/// Requests pipelined behind a response too large for the socket buffers are all answered,
/// under every model, whether the client keeps its side open or half-closes it after the
/// batch. Under half-sync they were left unanswered: the handler pauses reading while its
/// output drains, and on resume the input it had already seen was never offered again.
#[test]
fn requests_behind_a_large_response_are_answered_under_every_model() {
    let root = Root::new("behindbig");
    let big = random_bytes(8, 300 * 1024);
    root.write("big.bin", &big);
    let one = b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    every_pipelined_request_is_answered(&root, &["--sndbuf", "16384"], &one.repeat(3), 6, |i| {
        if i % 2 == 0 {
            &big[..]
        } else {
            HELLO
        }
    });
}

/// Under every model (two threads, plus `args`), `batch` sent at once gets its `n` answers,
/// 200 with the body `want(i)`, whether the client keeps its side open (then the connection
/// still serves) or half-closes it after the batch (then the server closes too).
fn every_pipelined_request_is_answered<'a>(
    root: &Root,
    args: &[&str],
    batch: &[u8],
    n: usize,
    want: impl Fn(usize) -> &'a [u8],
) {
    for model in MODELS {
        let srv = serve(
            root,
            &[&["--model", model, "--threads", "2"], args].concat(),
        );
        for half_close in [false, true] {
            let what = format!("{model}, half-close {half_close}");
            let mut c = Client::connect(srv.tcp);
            c.send(batch);
            if half_close {
                c.s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            for i in 0..n {
                let r = c
                    .response_within(false, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("{what}: response {i} of {n}: {e}"));
                assert_eq!(r.status, 200, "{what}: response {i}: {}", r.head);
                assert!(
                    r.body == want(i),
                    "{what}: response {i}: wrong body\n{}",
                    r.head
                );
            }
            if half_close {
                c.closed_within(Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("{what}: after the batch: {e}"));
            } else {
                c.still_serves("/hello.txt", HELLO, &what);
            }
        }
    }
}

/// Pipelined answers from memory past the backlog limit (64 KiB), which the socket takes as
/// fast as they are written: every request is answered under every model. Under half-sync
/// the handler paused at the limit, counting what its writes had recorded, while the socket
/// had taken it all; the loop, which never queued a byte, reported no drain, and the
/// connection hung for good after 17 of 40 answers.
#[test]
fn a_pipelined_backlog_the_socket_takes_at_once_is_answered_under_every_model() {
    let root = Root::new("backlogatonce");
    let file = random_bytes(9, 16_000); // under the 16 KiB in-memory limit
    root.write("16k.bin", &file);
    let batch = b"GET /16k.bin HTTP/1.1\r\nHost: t\r\n\r\n".repeat(40);
    every_pipelined_request_is_answered(&root, &[], &batch, 40, |_| &file[..]);
}

/// SIGTERM answers what clients have sent, under every model: pipelined requests a handler
/// holds while paused behind its own output (the client reads slowly) are answered before
/// the connection closes. half-sync handed no job out once its reactor drained (and reset the
/// connection at the drain timeout); leader-followers closed after one read (and dropped the
/// held requests).
#[test]
fn a_stop_answers_the_pipelined_requests_a_paused_handler_holds() {
    let root = Root::new("drainpipelined");
    let file = random_bytes(11, 100_000);
    root.write("m.bin", &file);
    let n = 100;
    let batch = b"GET /m.bin HTTP/1.1\r\nHost: t\r\n\r\n".repeat(n);
    for model in MODELS {
        let srv = serve(&root, &["--model", model, "--threads", "2"]);
        let mut c = Client::connect(srv.tcp);
        c.send(&batch);
        std::thread::sleep(Duration::from_millis(200)); // the socket buffers fill: paused
        srv.signal(nix::sys::signal::Signal::SIGTERM);
        for i in 0..n {
            let r = c
                .response_within(false, Duration::from_secs(5))
                .unwrap_or_else(|e| {
                    panic!("{model}: response {i} of {n}: {e}\n{}", srv.stderr_dump())
                });
            assert_eq!(r.status, 200, "{model}: response {i}: {}", r.head);
            assert!(r.body == file, "{model}: response {i}: wrong body");
        }
        c.closed_within(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{model}: after the last answer: {e}"));
        drop(c); // the server lingers for our FIN
        let status = srv.wait_exit(Duration::from_secs(5));
        assert!(
            matches!(status, Some(st) if st.code() == Some(0)),
            "{model}: {status:?}\n{}",
            srv.stderr_dump()
        );
    }
}

/// A second SIGINT while a stop drains (Ctrl-C twice) ends the server at once, under every
/// model, instead of leaving the operator to wait out `--drain-timeout` behind a client that
/// stopped reading. The first one only starts the drain.
#[test]
fn a_second_sigint_ends_a_draining_server_at_once() {
    let root = Root::new("secondsigint");
    root.write("big.bin", &random_bytes(10, 2 << 20));
    for model in MODELS {
        let srv = serve(
            &root,
            &[
                "--model",
                model,
                "--threads",
                "2",
                "--sndbuf",
                "16384",
                "--drain-timeout",
                "30",
                "--linger-timeout",
                "30",
            ],
        );
        let mut s = connect_with_rcvbuf(srv.tcp, 4096);
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300)); // the response stalls: nothing is read
        srv.signal(nix::sys::signal::Signal::SIGINT);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            srv.is_running(),
            "{model}: gone after one SIGINT with a response under way\n{}",
            srv.stderr_dump()
        );
        let t = Instant::now();
        srv.signal(nix::sys::signal::Signal::SIGINT);
        let status = srv.wait_exit(Duration::from_secs(5));
        assert!(
            matches!(status, Some(st) if st.code() == Some(0)),
            "{model}: after a second SIGINT: {status:?} in {:?}\n{}",
            t.elapsed(),
            srv.stderr_dump()
        );
        assert!(
            srv.stderr_dump().contains("again while stopping"),
            "{model}: the second SIGINT is not said\n{}",
            srv.stderr_dump()
        );
        drop(s);
    }
}

/// The other side of the same rule: a client that stops reading the last response is cut off
/// once the linger timeout passes with no byte taken, under the event loop and under
/// leader-followers' own connection code.
#[test]
fn a_stalled_reader_of_the_last_response_is_cut_off() {
    let root = Root::new("stalledclose");
    let big = random_bytes(7, 2 << 20);
    root.write("big.bin", &big);
    for model in ["multi-reactor", "leader-followers"] {
        let srv = serve_lingering_briefly(&root, model);
        let mut s = connect_with_rcvbuf(srv.tcp, 4096);
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500)); // reads nothing for 5 linger periods
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = 0usize;
        let mut buf = [0u8; 65536];
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break "EOF".to_string(),
                Ok(n) => got += n,
                Err(e) => break e.to_string(),
            }
        };
        assert!(
            got < big.len(),
            "{model}: a reader stalled for 1.5 s (linger 0.3 s) still got {got} bytes, then {end}"
        );
    }
}

#[test]
fn fifty_pipelined_64k_responses_read_slowly() {
    let root = Root::new("pipe64k");
    let file = random_bytes(64, 64 * 1024);
    root.write("64k.bin", &file);
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    let mut req = Vec::new();
    for _ in 0..50 {
        req.extend_from_slice(b"GET /64k.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    c.send(&req);
    c.chunk = 8192;
    c.pause = Duration::from_millis(1);
    let want = fnv1a(&file);
    for i in 0..50 {
        let r = c
            .response_within(false, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("pipelined 64 KiB response {i} of 50: {e}"));
        assert_eq!(r.status, 200, "response {i}: {}", r.head);
        assert_eq!(r.body.len(), file.len(), "response {i}");
        assert_eq!(fnv1a(&r.body), want, "response {i}: body differs");
    }
    c.pause = Duration::ZERO;
    c.still_serves("/hello.txt", HELLO, "after 50 pipelined 64 KiB responses");
}

/// More pipelined answers than the output backlog (64 KiB) in one batch, to a client that
/// reads all the while: the socket takes them as they are made, so nothing waits in the
/// connection's queue and reading must carry on without waiting for a drain that never comes.
#[test]
fn pipelined_answers_past_the_backlog_are_all_sent() {
    let root = Root::new("backlog");
    let file = random_bytes(4, 4000);
    root.write("4k.txt", &file);
    let srv = serve(&root, &[]);
    for (path, body, n) in [("/4k.txt", &file[..], 100), ("/hello.txt", HELLO, 1100)] {
        let mut c = Client::connect(srv.tcp);
        let one = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        c.send(one.repeat(n).as_bytes());
        for i in 0..n {
            let r = c
                .response_within(false, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{path}: response {i} of {n} pipelined: {e}"));
            assert_eq!(r.status, 200, "{path}: response {i}: {}", r.head);
            assert_eq!(r.body, body, "{path}: response {i}");
        }
        c.still_serves("/hello.txt", HELLO, "after the pipelined batch");
    }
}

/// A body over 64 KiB leaves with TCP_CORK set, and the cork must come off when it is done:
/// otherwise the kernel holds the body's last short segment, and the small response after it,
/// for its 200 ms cork timeout. Twenty request-response turns of a 300 KiB file then a 13-byte
/// one take a few milliseconds; with a stuck cork each turn would take at least 200 ms.
#[test]
fn corked_bodies_are_not_held_back() {
    let root = Root::new("cork");
    let file = random_bytes(66, 300 * 1024 + 17);
    root.write("300k.bin", &file);
    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    let want = fnv1a(&file);
    let t = Instant::now();
    for i in 0..20 {
        c.send(b"GET /300k.bin HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c
            .response_within(false, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("turn {i}: {e}"));
        assert_eq!(r.status, 200, "turn {i}: {}", r.head);
        assert_eq!(fnv1a(&r.body), want, "turn {i}: body differs");
        c.still_serves("/hello.txt", HELLO, "right after a corked body");
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "20 turns took {took:?}: something waits for the kernel's cork timeout"
    );
}

/// The server's side with a tiny send buffer (`--sndbuf 4096`): every response of any size is
/// written in pieces, the rest queued and sent as the socket drains. Mixed pipelined requests
/// (in-memory small files, sendfile'd 64 KiB files, HEADs, a 404) all come back whole and in
/// order.
#[test]
fn tiny_server_send_buffer_partial_writes() {
    let root = Root::new("sndbuf");
    let big = random_bytes(65, 64 * 1024);
    root.write("64k.bin", &big);
    let srv = serve(&root, &["--sndbuf", "4096", "--threads", "1"]);
    let mut c = Client::connect(srv.tcp);
    let mut req = Vec::new();
    let mut expect: Vec<(u16, Option<Vec<u8>>)> = Vec::new();
    for i in 0..30 {
        match i % 4 {
            0 => {
                req.extend_from_slice(b"GET /64k.bin HTTP/1.1\r\nHost: t\r\n\r\n");
                expect.push((200, Some(big.clone())));
            }
            1 => {
                req.extend_from_slice(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
                expect.push((200, Some(HELLO.to_vec())));
            }
            2 => {
                req.extend_from_slice(b"HEAD /64k.bin HTTP/1.1\r\nHost: t\r\n\r\n");
                expect.push((200, None));
            }
            _ => {
                req.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
                expect.push((404, Some(Vec::new())));
            }
        }
    }
    c.send(&req);
    for (i, (status, body)) in expect.iter().enumerate() {
        let head_only = body.is_none();
        let r = c
            .response_within(head_only, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(r.status, *status, "response {i}: {}", r.head);
        match body {
            Some(b) if !b.is_empty() => assert!(r.body == *b, "response {i}: body differs"),
            Some(_) => {}
            None => assert_eq!(r.content_length(), Some(big.len() as u64), "response {i}"),
        }
    }
    c.still_serves("/hello.txt", HELLO, "after the partial writes");
}

// ---------------------------------------------------------------------------------------------
// A 1 GiB sparse file
// ---------------------------------------------------------------------------------------------

#[test]
fn one_gib_sparse_file() {
    const SIZE: u64 = 1 << 30;
    let root = Root::new("sparse");
    let path = root.dir.join("sparse.bin");
    let markers: [(u64, &[u8]); 5] = [
        (0, b"KEEL-START"),
        (4095, b"page-edge"),
        ((1 << 20) + 3, b"one-mib"),
        ((1 << 29) + 17, b"half-gib"),
        (SIZE - 8, b"KEEL-END"),
    ];
    {
        let mut f = fs::File::create(&path).expect("create sparse file");
        for (off, m) in markers {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(m).unwrap();
        }
        f.set_len(SIZE).expect("set_len");
    }
    /// Removes the sparse file even if the test fails (the root goes too, but be explicit).
    struct Unlink(PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _unlink = Unlink(path.clone());

    let srv = serve(&root, &[]);
    let mut c = Client::connect(srv.tcp);
    c.send(b"GET /sparse.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    let r = c
        .head_before(deadline)
        .unwrap_or_else(|e| panic!("1 GiB file: {e}"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.content_length(), Some(SIZE), "{}", r.head);

    // Expected byte at `pos`: a marker byte or zero.
    let expected = |pos: u64| -> u8 {
        for (off, m) in markers {
            if pos >= off && pos < off + m.len() as u64 {
                return m[(pos - off) as usize];
            }
        }
        0
    };
    let touches_marker = |start: u64, end: u64| {
        markers
            .iter()
            .any(|(off, m)| start < off + m.len() as u64 && *off < end)
    };
    let mut pos: u64 = 0;
    let check = |chunk: &[u8], pos: &mut u64| {
        let start = *pos;
        let end = start + chunk.len() as u64;
        if touches_marker(start, end) {
            for (i, &b) in chunk.iter().enumerate() {
                let p = start + i as u64;
                assert_eq!(b, expected(p), "1 GiB file: byte {p} differs");
            }
        } else if let Some(i) = chunk.iter().position(|&b| b != 0) {
            panic!(
                "1 GiB file: byte {} is {:#04x}, want 0",
                start + i as u64,
                chunk[i]
            );
        }
        *pos = end;
    };
    let leftover = std::mem::take(&mut c.buf);
    let take = leftover.len().min(SIZE as usize);
    check(&leftover[..take], &mut pos);
    assert!(leftover.len() as u64 <= SIZE, "bytes beyond the 1 GiB body");
    c.s.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while pos < SIZE {
        if Instant::now() > deadline {
            panic!("1 GiB file: only {pos} bytes after 120 s");
        }
        let want = ((SIZE - pos) as usize).min(buf.len());
        match c.s.read(&mut buf[..want]) {
            Ok(0) => panic!("1 GiB file: EOF after {pos} bytes"),
            Ok(n) => check(&buf[..n], &mut pos),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("1 GiB file: read error after {pos} bytes: {e}"),
        }
    }
    assert_eq!(pos, SIZE);
    let took = t.elapsed();
    c.still_serves("/hello.txt", HELLO, "after the 1 GiB download");
    eprintln!("1 GiB sparse file in {took:?}");
}

/// A client that pipelines requests as fast as it can and never reads: every model stops
/// reading it once a bounded amount of input waits. What the server read and has not answered
/// (bytes in, less the answered requests' bytes) stays within a few hundred KiB. Half-sync
/// used to take all of it: the input a paused handler left went back to a job whole, and the
/// shim counted only bytes no job had seen, so the backlog grew by 64 KiB a cycle (4 MB per
/// connection within seconds, 100 such clients 400 MB).
#[test]
fn a_pipelining_client_that_never_reads_is_stopped_under_every_model() {
    let root = Root::new("neverreads");
    const REQ: &[u8] = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    let batch = REQ.repeat(1000);
    for model in [
        "multi-reactor",
        "half-sync",
        "leader-followers",
        "thread-per-conn",
    ] {
        let srv = serve(&root, &["--model", model, "--threads", "2"]);
        let mut s = TcpStream::connect(srv.tcp).unwrap();
        s.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            match s.write(&batch) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("[{model}] write: {e}"),
            }
        }
        let st = srv.stats();
        let answered = st.get("http_2xx") * REQ.len() as u64;
        let unanswered = st.get("bytes_in").saturating_sub(answered);
        // On `--engine uring` the kernel moves bytes into the loop's receive ring before the
        // loop can pause the connection: up to the ring's 1 MiB more (`net::completion`).
        let ring = if srv.engine == "uring" { 1 << 20 } else { 0 };
        assert!(
            unanswered < 512 * 1024 + ring,
            "[{model}] {unanswered} bytes read and not answered: {}",
            st.line
        );
        drop(s);
    }
}

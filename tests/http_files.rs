//! `keel http --root DIR`: the static-file server, driven over raw TCP.
//!
//! Covers path safety (traversal encodings, symlinks, hidden files), index pages and
//! directory listings, Content-Type, validators and conditional requests, byte ranges
//! (also many at once), gzip_static, cache revalidation, methods, the access log and the
//! built-in welcome page.
//!
//! Every request is sent with `Connection: close` and read until EOF, so the parser below can
//! check the framing exactly: the bytes after the head are the whole body, and their count must
//! equal Content-Length (or be zero for HEAD and 304).

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use util::{browser, connect, per_engine, random_bytes, read_until_end, End, Opts, Server};

/// The engine for the tests that are not about engines.
const ENGINE: &str = "epoll-lt";

/// What the file outside the root holds; no response may ever carry it.
const MARKER: &str = "TOP-SECRET-MARKER-5b1e0c";

// ---------------------------------------------------------------------------------------------
// Temporary trees
// ---------------------------------------------------------------------------------------------

/// `temp_dir()/keel-http-files-TAG-PID-N`, removed on drop. `root()` is its `root` subdirectory.
struct Tree {
    base: PathBuf,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir().join(format!(
            "keel-http-files-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("root")).unwrap();
        Tree { base }
    }

    fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    fn root_str(&self) -> String {
        self.root()
            .to_str()
            .expect("temp path is UTF-8")
            .to_string()
    }

    /// Writes `rel` (beneath the root), creating its parent directories.
    fn put(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn flag(mut o: Opts, f: &str) -> Opts {
    o.args.push(f.to_string());
    o
}

fn serve(tree: &Tree, flags: &[&str]) -> Server {
    let mut o = Opts::http(ENGINE).arg("--root", &tree.root_str());
    for f in flags {
        o = flag(o, f);
    }
    o.spawn()
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    /// Everything after the head up to EOF.
    body: Vec<u8>,
    /// The whole response as received.
    raw: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Head (and at most 300 bytes of body) for failure messages.
    fn show(&self) -> String {
        let end = find(&self.raw, b"\r\n\r\n").map_or(self.raw.len(), |i| i + 4);
        let shown = (end + 300).min(self.raw.len());
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.raw[..shown]),
            if shown < self.raw.len() {
                format!("... ({} bytes in all)", self.raw.len())
            } else {
                String::new()
            }
        )
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Parses one complete response that ends at EOF and checks its framing: no body for HEAD,
/// 1xx, 204 and 304; otherwise exactly Content-Length bytes.
fn parse_response(raw: Vec<u8>, head_request: bool) -> Result<Resp, String> {
    let end = find(&raw, b"\r\n\r\n").ok_or("no end of head")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header line {l:?}"))?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let body = raw[end + 4..].to_vec();
    let resp = Resp {
        status,
        headers,
        body,
        raw,
    };
    let bodiless = head_request || status / 100 == 1 || status == 204 || status == 304;
    if bodiless {
        if !resp.body.is_empty() {
            return Err(format!(
                "{} bytes after a bodiless response",
                resp.body.len()
            ));
        }
    } else {
        let cl: usize = resp
            .header("Content-Length")
            .ok_or("no Content-Length")?
            .parse()
            .map_err(|_| "bad Content-Length")?;
        if cl != resp.body.len() {
            return Err(format!(
                "Content-Length {cl} but {} body bytes before EOF",
                resp.body.len()
            ));
        }
    }
    Ok(resp)
}

/// Sends `req` on a new connection and reads the response until the server closes.
fn exchange(addr: SocketAddr, req: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(req)
        .unwrap_or_else(|e| panic!("write {:?}: {e}", String::from_utf8_lossy(req)));
    let mut raw = Vec::new();
    let end = read_until_end(&mut s, &mut raw, 64 << 20, Duration::from_secs(15));
    let shown = String::from_utf8_lossy(&raw[..raw.len().min(400)]).into_owned();
    assert!(
        end == End::Eof || (end == End::Reset && !raw.is_empty()),
        "request {:?}: the response did not end with a close ({end:?}); got {shown:?}",
        String::from_utf8_lossy(req)
    );
    parse_response(raw, req.starts_with(b"HEAD ")).unwrap_or_else(|e| {
        panic!(
            "request {:?}: {e}; got {shown:?}",
            String::from_utf8_lossy(req)
        )
    })
}

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("Connection: close\r\n\r\n");
    r.into_bytes()
}

fn get_h(srv: &Server, target: &str, headers: &[(&str, &str)]) -> Resp {
    exchange(srv.tcp, &request("GET", target, headers))
}

fn get(srv: &Server, target: &str) -> Resp {
    get_h(srv, target, &[])
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).expect("valid escape in href"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// FNV-1a, 64 bit.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Path safety
// ---------------------------------------------------------------------------------------------

/// Every way of spelling "the parent of the root" we know of; none may reach secret.txt.
const TRAVERSALS: &[&str] = &[
    "/../secret.txt",
    "/../../../../../../secret.txt",
    "/..%2fsecret.txt",
    "/..%2Fsecret.txt",
    "/%2e%2e/secret.txt",
    "/%2e%2e%2fsecret.txt",
    "/%2E%2E%2Fsecret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/.%2e%2fsecret.txt",
    "/%2E%2E/secret.txt",
    "/..\\secret.txt",
    "/..%5csecret.txt",
    "/..%5Csecret.txt",
    "/%2e%2e%5csecret.txt",
    "/%252e%252e%252fsecret.txt",
    "/%252e%252e/secret.txt",
    "/..%252fsecret.txt",
    "/%c0%ae%c0%ae/secret.txt",
    "/%c0%ae%c0%ae%c0%afsecret.txt",
    "/..%c0%afsecret.txt",
    "/%e0%80%ae%e0%80%ae/secret.txt",
    "/..%ef%bc%8fsecret.txt",
    "/..%u2216secret.txt",
    "/./../secret.txt",
    "//../secret.txt",
    "/a/../../secret.txt",
    "/sub/../../secret.txt",
    "/sub/%2e%2e/%2e%2e/secret.txt",
    "/sub/..%2f..%2fsecret.txt",
    "/a/b/../../../secret.txt",
    "/%2f..%2fsecret.txt",
    "/../secret.txt%00",
    "/%00/../secret.txt",
    "/secret.txt%00.html",
    "/..;/secret.txt",
    "/%2e%2e;/secret.txt",
    "/....//secret.txt",
    "/secret.txt",
    "http://h/../secret.txt",
    "http://h/%2e%2e/secret.txt",
    "HTTP://h/..%2fsecret.txt",
    "http://h/sub/../../secret.txt",
    "/%2e./%2E%2e/..%2F%2e%2e%5csecret.txt",
    "/sub/./.././%2e%2e/./secret.txt",
    "/..%2f..%2f..%2f..%2fetc/passwd",
];

fn traversal_tree() -> Tree {
    let t = Tree::new("path");
    std::fs::write(t.base.join("secret.txt"), MARKER).unwrap();
    t.put("index.html", b"<h1>root index</h1>");
    t.put("sub/inner.txt", b"inner");
    t
}

#[test]
fn traversal_encodings_never_leave_the_root() {
    assert!(TRAVERSALS.len() >= 30);
    let t = traversal_tree();
    let srv = serve(&t, &[]);
    let root = t.root_str();
    let base = t.base.to_str().unwrap().to_string();
    let mut failures = Vec::new();
    for target in TRAVERSALS {
        let r = get(&srv, target);
        let leaked_marker = contains(&r.raw, MARKER.as_bytes());
        let leaked_path = contains(&r.raw, root.as_bytes()) || contains(&r.raw, base.as_bytes());
        if ![400, 403, 404].contains(&r.status) || leaked_marker || leaked_path {
            failures.push(format!(
                "{target:?} -> {} (marker leaked: {leaked_marker}, path leaked: {leaked_path})",
                r.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "traversals not refused:\n{}",
        failures.join("\n")
    );
    // The tree is served at all (so the refusals above are not a dead server).
    let r = get(&srv, "/sub/inner.txt");
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "inner"),
        "{}",
        r.show()
    );
}

#[test]
fn raw_nul_and_encoded_nul_are_bad_requests() {
    let t = traversal_tree();
    let srv = serve(&t, &[]);
    for target in ["/index.html%00", "/sub/inner.txt%00.html", "/%00"] {
        let r = get(&srv, target);
        assert_eq!(r.status, 400, "{target:?}: {}", r.show());
    }
    let r = exchange(
        srv.tcp,
        b"GET /index.html\0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400, "raw NUL in target: {}", r.show());
}

#[test]
fn symlink_out_of_root_is_forbidden_unless_followed() {
    let t = traversal_tree();
    std::os::unix::fs::symlink("../secret.txt", t.root().join("link.txt")).unwrap();
    std::os::unix::fs::symlink("sub", t.root().join("sublink")).unwrap();
    {
        let srv = serve(&t, &[]);
        for target in ["/link.txt", "/sublink/inner.txt"] {
            let r = get(&srv, target);
            assert_eq!(
                r.status,
                403,
                "{target} without --follow-symlinks: {}",
                r.show()
            );
            assert!(!contains(&r.raw, MARKER.as_bytes()), "{}", r.show());
        }
    }
    let srv = serve(&t, &["--follow-symlinks"]);
    let r = get(&srv, "/link.txt");
    assert_eq!(
        r.status,
        200,
        "/link.txt with --follow-symlinks: {}",
        r.show()
    );
    assert_eq!(r.body_str(), MARKER);
    let r = get(&srv, "/sublink/inner.txt");
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "inner"),
        "{}",
        r.show()
    );
    // Following links does not let the path itself climb.
    let r = get(&srv, "/../secret.txt");
    assert!([400, 403, 404].contains(&r.status), "{}", r.show());
    assert!(!contains(&r.raw, MARKER.as_bytes()));
}

#[test]
fn hidden_files_are_forbidden_unless_served() {
    let t = traversal_tree();
    t.put(".env", b"DB_PASSWORD=hunter2");
    t.put(".git/config", b"[core]\n\tbare = false\n");
    t.put("sub/.htpasswd", b"user:hash");
    let targets = [
        ("/.env", "DB_PASSWORD=hunter2"),
        ("/.git/config", "[core]\n\tbare = false\n"),
        ("/%2egit/config", "[core]\n\tbare = false\n"),
        ("/sub/.htpasswd", "user:hash"),
    ];
    {
        let srv = serve(&t, &[]);
        for (target, content) in targets {
            let r = get(&srv, target);
            assert_eq!(
                r.status,
                403,
                "{target} without --serve-hidden: {}",
                r.show()
            );
            assert!(!contains(&r.raw, content.as_bytes()), "{}", r.show());
        }
    }
    let srv = serve(&t, &["--serve-hidden"]);
    for (target, content) in targets {
        let r = get(&srv, target);
        assert_eq!(r.status, 200, "{target} with --serve-hidden: {}", r.show());
        assert_eq!(r.body_str(), content);
    }
}

// ---------------------------------------------------------------------------------------------
// Index pages and listings
// ---------------------------------------------------------------------------------------------

/// `<b>x</b>&"q'.txt` with the '/' (which no file name can hold) made a second tag.
const NASTY_NAME: &str = "<b>x<i>&\"q'.txt";

fn index_tree() -> Tree {
    let t = Tree::new("index");
    t.put("index.html", b"<h1>root index</h1>");
    t.put("dir/index.html", b"<h1>dir index</h1>");
    t.put("plain/a.txt", b"aaa");
    t.put(&format!("plain/{NASTY_NAME}"), b"nasty contents");
    t
}

#[test]
fn index_html_and_directory_redirect() {
    let t = index_tree();
    let srv = serve(&t, &[]);
    let r = get(&srv, "/");
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(r.body_str(), "<h1>root index</h1>");
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let r = get(&srv, "/dir/");
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(r.body_str(), "<h1>dir index</h1>");
    let r = get(&srv, "/dir");
    assert_eq!(r.status, 301, "{}", r.show());
    assert_eq!(r.header("Location"), Some("/dir/"), "{}", r.show());
    // Without --autoindex a directory without index.html is not listed.
    let r = get(&srv, "/plain/");
    assert_eq!(r.status, 403, "{}", r.show());
    assert!(!contains(&r.raw, b"a.txt"), "{}", r.show());
}

/// A listing is built per request and has no validator, so only "*" can satisfy a
/// precondition (RFC 9110 13.1.1, 13.1.2, 13.2.1): If-Match with a tag is 412, If-None-Match
/// "*" is 304, If-Match "*" lists. They used to be ignored (200 every time).
#[test]
fn a_listing_evaluates_preconditions() {
    let t = index_tree();
    let srv = serve(&t, &["--autoindex"]);
    let r = get_h(&srv, "/plain/", &[("If-Match", "\"nope\"")]);
    assert_eq!(r.status, 412, "{}", r.show());
    let r = get_h(&srv, "/plain/", &[("If-None-Match", "*")]);
    assert_eq!(r.status, 304, "{}", r.show());
    assert!(r.body.is_empty(), "{}", r.show());
    let r = get_h(&srv, "/plain/", &[("If-Match", "*")]);
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(contains(&r.raw, b"a.txt"), "{}", r.show());
    let r = get_h(&srv, "/plain/", &[("If-None-Match", "\"nope\"")]);
    assert_eq!(r.status, 200, "{}", r.show());
    let r = exchange(
        srv.tcp,
        &request("HEAD", "/plain/", &[("If-None-Match", "*")]),
    );
    assert_eq!(r.status, 304, "HEAD: {}", r.show());
    assert!(r.body.is_empty(), "{}", r.show());
    // The welcome page (no root) is built per request too.
    let welcome = Opts::http(ENGINE).spawn();
    let r = get_h(&welcome, "/", &[("If-Match", "\"x\"")]);
    assert_eq!(r.status, 412, "welcome: {}", r.show());
    let r = get_h(&welcome, "/", &[("If-None-Match", "*")]);
    assert_eq!(r.status, 304, "welcome: {}", r.show());
    let r = get_h(&welcome, "/", &[("If-Match", "*")]);
    assert_eq!(r.status, 200, "welcome: {}", r.show());
}

/// A boolean the config file turns on, the command line turns off (`--autoindex=false`), and
/// the other way round; a value other than true or false is refused before anything starts.
#[test]
fn boolean_flags_override_the_file_both_ways() {
    let t = Tree::new("bool-flags");
    t.put("plain/a.txt", b"a");
    let on = t.base.join("on.toml");
    std::fs::write(&on, "[http]\nautoindex = true\n").unwrap();
    let off = t.base.join("off.toml");
    std::fs::write(&off, "[http]\nautoindex = false\n").unwrap();
    let listed = |config: &PathBuf, flags: &[&str]| {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(flags);
        let srv = serve(&t, &all);
        let r = get(&srv, "/plain/");
        (r.status, contains(&r.raw, b"a.txt"))
    };
    assert_eq!(listed(&on, &[]), (200, true));
    assert_eq!(listed(&on, &["--autoindex=false"]), (403, false));
    assert_eq!(listed(&off, &["--autoindex"]), (200, true));
    assert_eq!(listed(&off, &["--autoindex=true"]), (200, true));

    let out = std::process::Command::new(util::keel_bin())
        .args(["http", "--autoindex=maybe"])
        .output()
        .expect("run keel");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"maybe\" is not true or false"), "{err}");
}

/// The redirect to a directory's slash form carries the path encoded again: decoded, a name
/// like "q?x" would come back as a path and a query, and "my dir" as a broken header.
#[test]
fn directory_redirect_location_is_percent_encoded() {
    let t = Tree::new("location");
    t.put("q?x/index.html", b"the directory");
    t.put("q", b"WRONG: the file q");
    t.put("my dir/index.html", b"another directory");
    let srv = serve(&t, &[]);
    let r = get(&srv, "/q%3Fx");
    assert_eq!(r.status, 301, "{}", r.show());
    assert_eq!(r.header("Location"), Some("/q%3Fx/"), "{}", r.show());
    let r = get(&srv, "/q%3Fx/");
    assert_eq!(r.body_str(), "the directory", "{}", r.show());
    let r = get(&srv, "/my%20dir");
    assert_eq!(r.status, 301, "{}", r.show());
    assert_eq!(r.header("Location"), Some("/my%20dir/"), "{}", r.show());
    // The query goes along, as sent.
    let r = get(&srv, "/my%20dir?page=2&q=a%20b");
    assert_eq!(r.status, 301, "{}", r.show());
    let want = Some("/my%20dir/?page=2&q=a%20b");
    assert_eq!(r.header("Location"), want, "{}", r.show());
    // Bytes a URI's query cannot hold are encoded; a fragment does not go along.
    let r = get(
        &srv,
        "/my%20dir?q=\"x\"{|}^`<>\\&r=:@/?!$'()*+,;=&p=100%&e=%2F%zz#frag",
    );
    assert_eq!(r.status, 301, "{}", r.show());
    let want =
        Some("/my%20dir/?q=%22x%22%7B%7C%7D%5E%60%3C%3E%5C&r=:@/?!$'()*+,;=&p=100%25&e=%2F%25zz");
    assert_eq!(r.header("Location"), want, "{}", r.show());
}

/// Opening a FIFO for reading waits for a writer; the server must neither wait (its loop would
/// hang, and every connection on it) nor serve it.
#[test]
fn a_fifo_in_the_root_is_refused_without_blocking() {
    let t = Tree::new("fifo");
    t.put("a.txt", b"aaa");
    nix::unistd::mkfifo(&t.root().join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let srv = serve(&t, &["--threads", "1"]);
    let r = get(&srv, "/pipe");
    assert_eq!(r.status, 403, "{}", r.show());
    let r = get(&srv, "/a.txt");
    assert_eq!(r.status, 200, "{}", r.show());
}

/// Opens `kept` connections while fds are free, then floods the server past its fd limit (it
/// holds what it can and closes the rest): (the kept ones, the flood), both still open.
fn flood_past_the_fd_limit(srv: &Server, kept: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let kept: Vec<_> = (0..kept).map(|_| connect(srv.tcp)).collect();
    thread::sleep(Duration::from_millis(200));
    let flood: Vec<_> = (0..100)
        .filter_map(|_| util::try_connect(srv.tcp).ok())
        .collect();
    thread::sleep(Duration::from_millis(500));
    (kept, flood)
}

/// GET `target` on an open connection (Connection: close), read to the end.
fn ask_on(srv: &Server, s: &mut TcpStream, target: &str) -> Resp {
    s.write_all(&request("GET", target, &[])).unwrap();
    let mut raw = Vec::new();
    read_until_end(s, &mut raw, 1 << 20, Duration::from_secs(10));
    parse_response(raw, false).unwrap_or_else(|e| panic!("{e}\n{}", srv.stderr_dump()))
}

/// Out of file descriptors, a file not open yet is answered 503, not 403 or 404 (it may well
/// be there, and a cache would keep a 404), and so is a directory; the server's log says why.
/// Once descriptors free up the same requests get the file and the listing.
#[test]
fn out_of_fds_a_file_is_503_and_then_served() {
    let t = Tree::new("emfile");
    t.put("b.txt", b"bbb");
    t.put("d/c.txt", b"ccc");
    let srv = flag(
        Opts::http(ENGINE)
            .arg("--root", &t.root_str())
            .arg("--threads", "1")
            .nofile(64),
        "--autoindex",
    )
    .spawn();
    // Two connections accepted first, while descriptors are free.
    let (mut kept, flood) = flood_past_the_fd_limit(&srv, 2);
    let r = ask_on(&srv, &mut kept[0], "/b.txt");
    assert_eq!(r.status, 503, "{}\n{}", r.show(), srv.stderr_dump());
    // The log line travels through the server's log thread and our stderr reader.
    let says_why = |log: &str| log.contains("cannot open /b.txt") && log.contains("Too many");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !says_why(&srv.stderr_dump()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let log = srv.stderr_dump();
    assert!(says_why(&log), "the log does not say why:\n{log}");
    // A directory (its index.html looked for, then a listing) likewise.
    let r = ask_on(&srv, &mut kept[1], "/d/");
    assert_eq!(r.status, 503, "/d/: {}", r.show());
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&srv, "/b.txt");
        if r.status == 200 {
            assert_eq!(r.body_str(), "bbb");
            let r = get(&srv, "/d/");
            assert_eq!(r.status, 200, "/d/: {}", r.show());
            assert!(r.body_str().contains("c.txt"), "{}", r.show());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after the flood closed: {}",
            r.status,
            r.show()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A site with more files than the fd limit: the file cache must not take the fds the
/// connections need. Small files kept in memory hold no fd; files sent from disk hold at most
/// a quarter of RLIMIT_NOFILE. Every file is served, twice round, each on a new connection,
/// and the server's fd table stays well inside its limit. (Before, the cache kept an fd per
/// file: past ~50 files here every request was 503 and new connections were refused.)
#[test]
fn more_files_than_fds_are_all_served() {
    let t = Tree::new("manyfiles");
    let small: Vec<String> = (0..200).map(|i| format!("s{i}.txt")).collect();
    let large: Vec<String> = (0..40).map(|i| format!("l{i}.bin")).collect();
    for (i, name) in small.iter().enumerate() {
        t.put(name, format!("small file {i}").as_bytes());
    }
    let big = |i: usize| vec![b'a' + (i % 26) as u8; 20 * 1024];
    for (i, name) in large.iter().enumerate() {
        t.put(name, &big(i));
    }
    let srv = Opts::http(ENGINE)
        .arg("--root", &t.root_str())
        .arg("--threads", "1")
        .nofile(64)
        .spawn();
    let mut most_fds = 0;
    for round in 0..2 {
        for (i, name) in small.iter().enumerate() {
            let r = get(&srv, &format!("/{name}"));
            assert_eq!(r.status, 200, "round {round} /{name}: {}", r.show());
            assert_eq!(r.body_str(), format!("small file {i}"));
        }
        for (i, name) in large.iter().enumerate() {
            let r = get(&srv, &format!("/{name}"));
            assert_eq!(r.status, 200, "round {round} /{name}: {}", r.show());
            assert!(r.body == big(i), "round {round} /{name}: wrong body");
            most_fds = most_fds.max(srv.fd_count());
        }
    }
    // 64 / 4 = 16 for the cache; the rest are the listener, the loop's and the log's own.
    assert!(
        most_fds <= 40,
        "the server held {most_fds} fds of its 64: {:#?}",
        srv.fd_listing()
    );
}

/// Out of fds with files open in its cache, the server gives those back to open the file a
/// request asks for: 200, where a cache that kept its fds would leave every new file 503
/// until the connections went away.
#[test]
fn out_of_fds_the_file_cache_gives_its_own_back() {
    let t = Tree::new("shedfds");
    let big = |i: usize| vec![b'a' + (i % 26) as u8; 20 * 1024];
    for i in 0..20 {
        t.put(&format!("l{i}.bin"), &big(i));
    }
    let srv = Opts::http(ENGINE)
        .arg("--root", &t.root_str())
        .arg("--threads", "1")
        .nofile(64)
        .spawn();
    // Files sent from disk: the cache keeps up to 16 of them (64 / 4) open.
    for i in 0..16 {
        assert_eq!(get(&srv, &format!("/l{i}.bin")).status, 200);
    }
    let (mut kept, flood) = flood_past_the_fd_limit(&srv, 1);
    let r = ask_on(&srv, &mut kept[0], "/l18.bin");
    assert_eq!(r.status, 200, "{}\n{}", r.show(), srv.stderr_dump());
    assert!(r.body == big(18), "wrong body");
    drop(flood);
}

/// A path segment longer than a file name can be names nothing: 404, not 403.
#[test]
fn an_over_long_name_is_not_found() {
    let t = Tree::new("longname");
    let srv = serve(&t, &[]);
    let r = get(&srv, &format!("/{}", "a".repeat(300)));
    assert_eq!(r.status, 404, "{}", r.show());
}

#[test]
fn autoindex_escapes_names_and_links_work() {
    let t = index_tree();
    let srv = serve(&t, &["--autoindex"]);
    let r = get(&srv, "/plain/");
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(
        r.header("Content-Type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{}",
        r.show()
    );
    let page = r.body_str();
    assert!(page.contains("a.txt"), "{page}");
    assert!(
        !page.contains("<b>") && !page.contains("<i>") && !page.contains("\"q'"),
        "raw name in the listing:\n{page}"
    );
    let escaped = ["&#39;", "&#x27;", "&apos;"].iter().any(|apos| {
        ["&quot;", "&#34;", "&#x22;"]
            .iter()
            .any(|quot| page.contains(&format!("&lt;b&gt;x&lt;i&gt;&amp;{quot}q{apos}.txt")))
    });
    assert!(escaped, "the nasty name is not HTML-escaped:\n{page}");
    // Its link: an href that decodes to the name, with nothing raw that HTML or URLs care about.
    let hrefs: Vec<&str> = page
        .split("href=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').expect("closing quote")])
        .collect();
    let want = format!("/plain/{NASTY_NAME}");
    let link = hrefs
        .iter()
        .find(|h| {
            let d = percent_decode(h);
            d == want.as_bytes() || d == NASTY_NAME.as_bytes()
        })
        .unwrap_or_else(|| panic!("no href for {NASTY_NAME:?} among {hrefs:?}"));
    assert!(
        !link.contains(['<', '>', '"', '\'', '&', ' ']),
        "href not percent-encoded: {link:?}"
    );
    let target = if link.starts_with('/') {
        link.to_string()
    } else {
        format!("/plain/{link}")
    };
    let r = get(&srv, &target);
    assert_eq!(r.status, 200, "GET {target}: {}", r.show());
    assert_eq!(r.body_str(), "nasty contents");
    // index.html still wins over the listing.
    let r = get(&srv, "/dir/");
    assert_eq!(r.body_str(), "<h1>dir index</h1>", "{}", r.show());
}

/// A listing in a real browser: headless Chromium fetches it, and in the document it builds
/// every name is text (the nasty name made no `<b>` or `<i>` element), every entry is a link
/// whose text is the file's name, and following the nasty name's link gets that file.
#[test]
fn autoindex_listing_works_in_headless_chromium() {
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let t = index_tree();
    let srv = serve(&t, &["--autoindex"]);
    let url = format!("http://{}/plain/", srv.tcp);
    let dom = browser::dump_dom(chromium, &url);
    assert!(
        !dom.contains("<b>") && !dom.contains("<i>"),
        "a name became markup:\n{dom}"
    );
    let links = browser::links(&dom);
    let names: Vec<&str> = links.iter().map(|(_, text)| text.as_str()).collect();
    for name in ["a.txt", NASTY_NAME] {
        assert!(names.contains(&name), "no link reads {name:?}: {links:?}");
    }
    let (href, _) = links.iter().find(|(_, text)| text == NASTY_NAME).unwrap();
    let target = match href {
        h if h.starts_with("http://") => h.clone(),
        h if h.starts_with('/') => format!("http://{}{h}", srv.tcp),
        h => format!("{url}{h}"),
    };
    let file = browser::dump_dom(chromium, &target);
    assert!(
        file.contains("nasty contents"),
        "following {href:?} ({target}) did not reach the file:\n{file}"
    );
}

// ---------------------------------------------------------------------------------------------
// Content-Type
// ---------------------------------------------------------------------------------------------

#[test]
fn content_types_by_extension() {
    let t = Tree::new("mime");
    let cases = [
        ("page.html", "text/html; charset=utf-8"),
        ("style.css", "text/css"),
        ("app.js", "javascript"),
        ("data.json", "application/json"),
        ("pic.png", "image/png"),
        ("blob.unknownext", "application/octet-stream"),
        ("noextension", "application/octet-stream"),
    ];
    for (name, _) in cases {
        t.put(name, b"x");
    }
    let srv = serve(&t, &[]);
    for (name, want) in cases {
        let r = get(&srv, &format!("/{name}"));
        assert_eq!(r.status, 200, "{name}: {}", r.show());
        let ct = r.header("Content-Type").unwrap_or("");
        let ok = match name {
            "app.js" => {
                ct.starts_with("text/javascript") || ct.starts_with("application/javascript")
            }
            "page.html" | "pic.png" | "blob.unknownext" | "noextension" => ct == want,
            _ => ct.starts_with(want),
        };
        assert!(ok, "{name}: Content-Type {ct:?}, want {want:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Validators and conditional requests
// ---------------------------------------------------------------------------------------------

#[test]
fn validators_and_conditional_requests() {
    let t = Tree::new("cond");
    t.put("v.txt", b"validator test body\n");
    let srv = serve(&t, &[]);
    let r = get(&srv, "/v.txt");
    assert_eq!(r.status, 200, "{}", r.show());
    let lm = r
        .header("Last-Modified")
        .expect("Last-Modified")
        .to_string();
    let etag = r.header("ETag").expect("ETag").to_string();
    assert!(
        etag.len() >= 3 && etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"),
        "not a strong quoted ETag: {etag:?}"
    );
    assert!(
        lm.ends_with(" GMT") && lm.len() == 29,
        "odd Last-Modified {lm:?}"
    );

    let not_modified = |headers: &[(&str, &str)], what: &str| {
        let r = get_h(&srv, "/v.txt", headers);
        assert_eq!(r.status, 304, "{what}: {}", r.show());
        assert!(r.body.is_empty(), "{what}: 304 with a body");
        assert_eq!(
            r.header("ETag"),
            Some(etag.as_str()),
            "{what}: {}",
            r.show()
        );
    };
    not_modified(&[("If-None-Match", &etag)], "If-None-Match: the ETag");
    not_modified(&[("If-None-Match", "*")], "If-None-Match: *");
    let list = format!("\"nope\", {etag}, \"other\"");
    not_modified(&[("If-None-Match", &list)], "If-None-Match: a list with it");
    let weak = format!("W/{etag}");
    not_modified(
        &[("If-None-Match", &weak)],
        "If-None-Match: W/ (weak comparison)",
    );
    not_modified(
        &[("If-Modified-Since", &lm)],
        "If-Modified-Since = Last-Modified",
    );

    let full = |headers: &[(&str, &str)], what: &str| {
        let r = get_h(&srv, "/v.txt", headers);
        assert_eq!(r.status, 200, "{what}: {}", r.show());
        assert_eq!(r.body_str(), "validator test body\n", "{what}");
    };
    full(
        &[("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")],
        "If-Modified-Since older",
    );
    full(
        &[("If-None-Match", "\"nope\""), ("If-Modified-Since", &lm)],
        "If-None-Match mismatching, If-Modified-Since matching (INM wins)",
    );
    full(
        &[("If-Modified-Since", "garbage")],
        "unparseable IMS is ignored",
    );
    full(
        &[
            ("If-Modified-Since", &lm),
            ("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"),
        ],
        "IMS on two lines is ignored (RFC 9110 13.1.3), not the first taken",
    );
    full(
        &[
            ("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"),
            ("If-Unmodified-Since", &lm),
        ],
        "IUS on two lines is ignored (13.1.4), not a 412",
    );
    full(
        &[("Range", "bytes=0-1"), ("Range", "bytes=5-6")],
        "Range on two lines is ignored",
    );
    full(
        &[
            ("Range", "bytes=0-1"),
            ("If-Range", &etag),
            ("If-Range", &etag),
        ],
        "If-Range on two lines never holds: the whole file",
    );
}

/// RFC 9110 13.2.2: If-Match and If-Unmodified-Since are evaluated before anything else, and
/// a false one is 412 (a download resumed with If-Match and Range must not splice bytes of a
/// new version onto the old). If-Match compares strongly.
#[test]
fn if_match_and_if_unmodified_since() {
    let t = Tree::new("ifmatch");
    t.put("v.txt", b"0123456789");
    let srv = serve(&t, &[]);
    let r = get(&srv, "/v.txt");
    let etag = r.header("ETag").expect("ETag").to_string();
    let lm = r.header("Last-Modified").expect("LM").to_string();
    let status = |headers: &[(&str, &str)]| {
        let r = get_h(&srv, "/v.txt", headers);
        (r.status, r)
    };
    let other = "\"nope\"";
    let weak = format!("W/{etag}");
    let list = format!("{other}, {etag}");
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("If-Match", &etag)], 200, "If-Match: the ETag"),
        (vec![("If-Match", "*")], 200, "If-Match: *"),
        (vec![("If-Match", &list)], 200, "If-Match: a list with it"),
        (
            vec![("If-Match", other), ("If-Match", &etag)],
            200,
            "on two lines",
        ),
        (vec![("If-Match", other)], 412, "If-Match: another tag"),
        (
            vec![("If-Match", &weak)],
            412,
            "If-Match: weak never matches",
        ),
        (vec![("If-Match", "nonsense")], 412, "If-Match: malformed"),
        (
            vec![("If-Match", other), ("Range", "bytes=0-1")],
            412,
            "before Range",
        ),
        (
            vec![("If-Match", &etag), ("Range", "bytes=0-1")],
            206,
            "then Range",
        ),
        (
            vec![("If-Match", other), ("If-None-Match", &etag)],
            412,
            "before INM",
        ),
        (
            vec![("If-Unmodified-Since", &lm)],
            200,
            "IUS = Last-Modified",
        ),
        (
            vec![("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")],
            412,
            "IUS older",
        ),
        (
            vec![("If-Unmodified-Since", "garbage")],
            200,
            "IUS unparseable: ignored",
        ),
        (
            vec![
                ("If-Match", &etag),
                ("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"),
            ],
            200,
            "If-Match present: IUS ignored",
        ),
    ];
    for (headers, want, what) in cases {
        let (got, r) = status(&headers);
        assert_eq!(got, want, "{what}: {}", r.show());
        if got == 412 {
            assert!(r.body_str().contains("412"), "{what}: {}", r.show());
        }
    }
}

/// The root is opened once and held, so a deploy that swaps it (a `current` symlink pointed at
/// a new release, or a rename) is taken up at SIGHUP, also without `--config`: a reload builds
/// the same command line again and opens the root afresh. Without a file, SIGHUP used to do
/// nothing, and the old release was served until a restart.
#[test]
fn sighup_without_a_config_takes_up_a_swapped_root() {
    let t = Tree::new("swap");
    for (release, body) in [("r1", "one"), ("r2", "two")] {
        let dir = t.base.join(release);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("v.txt"), body).unwrap();
    }
    let current = t.base.join("current");
    std::os::unix::fs::symlink(t.base.join("r1"), &current).unwrap();
    let srv = Opts::http(ENGINE)
        .arg("--root", current.to_str().unwrap())
        .arg("--threads", "2")
        .spawn();
    assert_eq!(get(&srv, "/v.txt").body_str(), "one");
    // Swap the link atomically, as deploy tools do.
    let next = t.base.join("current.next");
    std::os::unix::fs::symlink(t.base.join("r2"), &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = get(&srv, "/v.txt").body_str().to_string();
        if body == "two" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {body:?} after SIGHUP\n{}",
            srv.stderr_dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        srv.stderr_dump().contains("configuration reloaded"),
        "{}",
        srv.stderr_dump()
    );
}

/// A small file (kept in memory) rewritten in place with the same size and its old mtime
/// set back (`touch -d`, `rsync --times`) is seen at the next revalidation, with a new ETag:
/// the change time tells it. It used to be served stale for good, whatever `--cache-valid`,
/// and its ETag still validated the old bytes.
#[test]
fn a_rewrite_that_keeps_size_and_mtime_is_seen() {
    let t = Tree::new("samestamp");
    let path = t.put("s.txt", &[b'A'; 1000]);
    let stamp = std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    let set_stamp = || {
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(stamp)
            .unwrap()
    };
    set_stamp();
    let srv = serve(&t, &["--threads", "1", "--cache-valid", "0"]);
    let r = get(&srv, "/s.txt");
    assert!(r.body == [b'A'; 1000]);
    let old_tag = r.header("ETag").expect("ETag").to_string();
    std::fs::write(&path, [b'B'; 1000]).unwrap();
    set_stamp();
    let r = get(&srv, "/s.txt");
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(r.body == [b'B'; 1000], "stale: {}", r.show());
    // The old ETag no longer validates: a cache revalidating gets the new bytes, not a 304,
    // and a resumed download gets the whole file, not new bytes after old ones.
    let r = get_h(&srv, "/s.txt", &[("If-None-Match", &old_tag)]);
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(r.body == [b'B'; 1000]);
    let r = get_h(
        &srv,
        "/s.txt",
        &[("Range", "bytes=500-"), ("If-Range", &old_tag)],
    );
    assert_eq!(r.status, 200, "{}", r.show());
}

/// A download in flight outlives the changes that leave the bytes it promised alone: a chmod,
/// a hard link, and a new version renamed over the path (the usual deploy). The check that
/// stops a response from a file written in place used to reset the connection on all of
/// them. A write in place still ends it, even one that puts the mtime back, and so does
/// growth (an append cannot be told from a longer version copied over the file).
#[test]
fn a_download_outlives_a_chmod_a_link_and_a_rename_over_it() {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::new("deploy");
    let body: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let path = t.put("big.bin", &body);
    let srv = serve(&t, &["--threads", "1"]);
    let start = |path: &str| {
        let mut s = connect(srv.tcp);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut first = vec![0u8; 1 << 20];
        s.read_exact(&mut first).unwrap();
        (s, first)
    };
    let (mut s, mut got) = start("/big.bin");
    // The server is now blocked on a full socket, partway through the file.
    thread::sleep(Duration::from_millis(300));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::hard_link(&path, t.root().join("big-link.bin")).unwrap();
    let next = t.put("big.bin.new", b"the next version");
    std::fs::rename(&next, &path).unwrap();
    s.read_to_end(&mut got)
        .expect("the rest of the response, then the close");
    let at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..at]);
    assert_eq!(got.len() - at, body.len(), "the whole body");
    assert!(
        got[at..] == body[..],
        "the bytes of the version the response began with"
    );

    // A longer version copied over it in place (truncate, then write), which stat cannot
    // tell from an append: what is left would be another version.
    let link = t.root().join("big-link.bin");
    let (mut s, mut got) = start("/big-link.bin");
    thread::sleep(Duration::from_millis(300));
    std::fs::write(&link, vec![b'N'; body.len() + (1 << 20)]).unwrap();
    let _ = s.read_to_end(&mut got); // a reset, or an early close
    assert!(
        got.len() < body.len(),
        "a response that mixes two versions: {} bytes",
        got.len()
    );

    // Written in place with its mtime set back: only the ctime tells.
    let (mut s, mut got) = start("/big-link.bin");
    thread::sleep(Duration::from_millis(300));
    let f = std::fs::File::options().write(true).open(&link).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", 30 << 20).unwrap();
    f.set_modified(mtime).unwrap();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.len() < body.len() + (1 << 20),
        "a response that mixes two versions: {} bytes",
        got.len()
    );
}

/// A file stamped a moment ahead (a clock running ahead on another host) gets its
/// Last-Modified once that moment has passed. The cached entry used to be kept as it was at
/// the first look (the file itself had not changed), so it never got one.
#[test]
fn a_future_modification_time_is_sent_once_it_has_passed() {
    let t = Tree::new("soon");
    let path = t.put("f.txt", b"from a clock ahead");
    // Last-Modified is in whole seconds: stamped at the start of the second 3 s ahead, the
    // file gets one between 2 and 3 s from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let soon = std::time::UNIX_EPOCH + Duration::from_secs(now + 3);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(soon)
        .unwrap();
    let srv = serve(&t, &["--threads", "1", "--cache-valid", "1"]);
    let r = get(&srv, "/f.txt");
    assert!(!r.has("Last-Modified"), "{}", r.show());
    while std::time::SystemTime::now() < soon + Duration::from_millis(1_200) {
        std::thread::sleep(Duration::from_millis(100)); // past the stamp and the cache's check
    }
    let r = get(&srv, "/f.txt");
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(r.has("Last-Modified"), "{}", r.show());
}

/// RFC 9110 8.8.2.1: a file modified "in the future" (a clock set wrong, an archive from
/// elsewhere) must not be sent with a Last-Modified later than Date. It is sent with none
/// (clamping it to "now" would give each loop a different date for one file), its ETag still
/// validates, and date conditions are ignored for it (RFC 9110 13.1.3, 13.1.4).
#[test]
fn a_future_modification_time_is_not_sent() {
    let t = Tree::new("future");
    let path = t.put("f.txt", b"from the future");
    let year_2100 = std::time::UNIX_EPOCH + Duration::from_secs(4_102_444_800);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(year_2100)
        .unwrap();
    let srv = serve(&t, &[]);
    let r = get(&srv, "/f.txt");
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(!r.has("Last-Modified"), "{}", r.show());
    let etag = r.header("ETag").expect("ETag").to_string();
    let r = get_h(&srv, "/f.txt", &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304, "{}", r.show());
    assert!(!r.has("Last-Modified"), "{}", r.show());
    let date = "Mon, 01 Jan 2001 00:00:00 GMT";
    let r = get_h(&srv, "/f.txt", &[("If-Unmodified-Since", date)]);
    assert_eq!(r.status, 200, "IUS ignored: {}", r.show());
    let r = get_h(
        &srv,
        "/f.txt",
        &[("If-Modified-Since", "Fri, 01 Jan 2100 00:00:01 GMT")],
    );
    assert_eq!(r.status, 200, "IMS ignored: {}", r.show());
    let r = get_h(
        &srv,
        "/f.txt",
        &[("Range", "bytes=0-3"), ("If-Range", date)],
    );
    assert_eq!(r.status, 200, "If-Range's date never matches: {}", r.show());
    let r = get_h(
        &srv,
        "/f.txt",
        &[("Range", "bytes=0-3"), ("If-Range", &etag)],
    );
    assert_eq!(r.status, 206, "{}", r.show());
    assert!(!r.has("Last-Modified"), "{}", r.show());
}

// ---------------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------------

fn check_ranges(srv: &Server, target: &str, data: &[u8], etag: &str) {
    let len = data.len();
    let ranged = |range: &str, start: usize, end: usize| {
        let r = get_h(srv, target, &[("Range", range)]);
        assert_eq!(r.status, 206, "{target} Range {range}: {}", r.show());
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {start}-{end}/{len}").as_str()),
            "{target} Range {range}"
        );
        assert!(
            r.body == data[start..=end],
            "{target} Range {range}: wrong bytes"
        );
    };
    ranged("bytes=0-9", 0, 9);
    ranged("bytes=-5", len - 5, len - 1);
    ranged("bytes=10-", 10, len - 1);
    ranged(&format!("bytes=5-{}", len + 100), 5, len - 1);

    let r = get_h(
        srv,
        target,
        &[("Range", &format!("bytes={len}-{}", len + 10))],
    );
    assert_eq!(r.status, 416, "{target} range past the end: {}", r.show());
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes */{len}").as_str())
    );

    let r = get_h(srv, target, &[("Range", "bytes=0-9"), ("If-Range", etag)]);
    assert_eq!(r.status, 206, "{target} If-Range current: {}", r.show());
    assert!(r.body == data[..10]);
    // A date is no strong validator, even the file's own Last-Modified (a file rewritten
    // within that second keeps it): the whole file.
    let lm = get_h(srv, target, &[])
        .header("Last-Modified")
        .map(String::from);
    if let Some(lm) = lm {
        let r = get_h(srv, target, &[("Range", "bytes=0-9"), ("If-Range", &lm)]);
        assert_eq!(r.status, 200, "{target} If-Range {lm}: {}", r.show());
        assert!(r.body == data, "{target} If-Range date: not the whole file");
    }
    let r = get_h(
        srv,
        target,
        &[("Range", "bytes=0-9"), ("If-Range", "\"0-0-0-stale\"")],
    );
    assert_eq!(r.status, 200, "{target} If-Range stale: {}", r.show());
    assert!(
        r.body == data,
        "{target} If-Range stale: not the whole file"
    );

    let r = get_h(srv, target, &[("Range", "bytes=0-1,5-6")]);
    assert_eq!(r.status, 200, "{target} multiple ranges: {}", r.show());
    assert!(
        r.body == data,
        "{target} multiple ranges: not the whole file"
    );
}

#[test]
fn single_ranges_if_range_and_unsatisfiable() {
    let t = Tree::new("range");
    let small = random_bytes(1, 1000);
    let large = random_bytes(2, 100 * 1024);
    t.put("small.bin", &small);
    t.put("large.bin", &large);
    let srv = serve(&t, &[]);
    for (target, data) in [("/small.bin", &small), ("/large.bin", &large)] {
        let r = get(&srv, target);
        assert_eq!(r.status, 200, "{}", r.show());
        assert!(r.body == **data);
        assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
        let etag = r.header("ETag").expect("ETag").to_string();
        check_ranges(&srv, target, data, &etag);
    }
}

/// Range is defined for GET only: a HEAD's Range is ignored (RFC 9110 14.2, a MUST), so HEAD
/// answers what a whole GET would, for a file from memory and one from disk, satisfiable
/// range or not. (It used to answer 206, or 416.)
#[test]
fn a_head_ignores_range() {
    let t = Tree::new("headrange");
    t.put("small.bin", &random_bytes(3, 1000));
    t.put("large.bin", &random_bytes(4, 100 * 1024));
    let srv = serve(&t, &[]);
    for (target, len) in [("/small.bin", "1000"), ("/large.bin", "102400")] {
        for range in ["bytes=0-9", "bytes=200000-"] {
            let r = exchange(srv.tcp, &request("HEAD", target, &[("Range", range)]));
            assert_eq!(r.status, 200, "HEAD {target} {range}: {}", r.show());
            assert_eq!(r.header("Content-Length"), Some(len), "{}", r.show());
            assert!(!r.has("Content-Range"), "{}", r.show());
        }
        let r = get_h(&srv, target, &[("Range", "bytes=0-9")]);
        assert_eq!(r.status, 206, "GET {target}: {}", r.show());
    }
}

/// A file dated before 1970 has no Last-Modified: an HTTP-date cannot carry it, and clamped
/// to the epoch it would compare equal with any older time, so a rewrite still dated before
/// 1970 would get a 304 for an If-Modified-Since of the epoch. (It used to.) Its date
/// conditions are ignored; its ETag still validates.
#[test]
fn a_modification_time_before_1970_is_not_sent() {
    let t = Tree::new("before1970");
    let path = t.put("old.txt", b"v1");
    let set_date = |secs_before_epoch: u64| {
        let when = std::time::UNIX_EPOCH - Duration::from_secs(secs_before_epoch);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(when).unwrap();
    };
    set_date(315_532_800); // 1960
    let srv = serve(&t, &["--cache-valid", "0"]);
    let r = get(&srv, "/old.txt");
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(!r.has("Last-Modified"), "{}", r.show());
    let epoch = "Thu, 01 Jan 1970 00:00:00 GMT";
    let r = get_h(&srv, "/old.txt", &[("If-Modified-Since", epoch)]);
    assert_eq!(r.status, 200, "IMS ignored: {}", r.show());
    std::fs::write(&path, b"v2").unwrap();
    set_date(157_766_400); // 1965
    let r = get_h(&srv, "/old.txt", &[("If-Modified-Since", epoch)]);
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(r.body, b"v2", "{}", r.show());
    let etag = r.header("ETag").expect("ETag").to_string();
    let r = get_h(&srv, "/old.txt", &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304, "{}", r.show());
}

/// An empty file: a suffix range is the one satisfiable form (RFC 9110 14.1.1) and selects
/// the whole, empty, file: 200. Any other range is 416.
#[test]
fn ranges_of_an_empty_file() {
    let t = Tree::new("emptyrange");
    t.put("empty.txt", b"");
    let srv = serve(&t, &[]);
    let r = get_h(&srv, "/empty.txt", &[("Range", "bytes=-5")]);
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(r.header("Content-Length"), Some("0"), "{}", r.show());
    assert!(!r.has("Content-Range"), "{}", r.show());
    let r = get_h(&srv, "/empty.txt", &[("Range", "bytes=0-")]);
    assert_eq!(r.status, 416, "{}", r.show());
    assert_eq!(r.header("Content-Range"), Some("bytes */0"), "{}", r.show());
}

/// Fetches `target` as 16 ranges from 16 threads at once and reassembles it.
fn fetch_in_16_ranges(srv: &Server, target: &str, len: usize) -> Vec<u8> {
    const N: usize = 16;
    let barrier = Arc::new(Barrier::new(N));
    let addr = srv.tcp;
    let parts: Vec<(usize, Vec<u8>)> = thread::scope(|sc| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let barrier = barrier.clone();
                sc.spawn(move || {
                    let start = len * i / N;
                    let end = len * (i + 1) / N - 1;
                    let range = if i == N - 1 {
                        format!("bytes={start}-")
                    } else {
                        format!("bytes={start}-{end}")
                    };
                    let req = request("GET", target, &[("Range", &range)]);
                    barrier.wait();
                    let r = exchange(addr, &req);
                    assert_eq!(r.status, 206, "{target} {range}: {}", r.show());
                    assert_eq!(
                        r.header("Content-Range"),
                        Some(format!("bytes {start}-{end}/{len}").as_str()),
                        "{target} {range}"
                    );
                    (start, r.body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = Vec::with_capacity(len);
    for (start, body) in parts {
        assert_eq!(start, out.len(), "ranges out of order");
        out.extend_from_slice(&body);
    }
    out
}

fn concurrent_ranges(engine: &str) {
    let t = Tree::new("ranges16");
    let small = random_bytes(3, 12_345);
    let big = random_bytes(4, 3 * 1024 * 1024);
    t.put("small.bin", &small);
    t.put("big.bin", &big);
    let srv = Opts::http(engine).arg("--root", &t.root_str()).spawn();
    for (target, data) in [("/small.bin", &small), ("/big.bin", &big)] {
        let got = fetch_in_16_ranges(&srv, target, data.len());
        assert_eq!(got.len(), data.len(), "[{engine}] {target}: length");
        assert_eq!(fnv(&got), fnv(data), "[{engine}] {target}: hash differs");
        assert!(got == **data, "[{engine}] {target}: bytes differ");
    }
}
per_engine!(concurrent_ranges);

// ---------------------------------------------------------------------------------------------
// Held pages (tee)
// ---------------------------------------------------------------------------------------------

/// How many of the server's fds are pipes.
fn pipe_fds(srv: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", srv.pid))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Reads one response with a Content-Length from a keep-alive connection: status and body.
fn read_sized_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("a response head");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head[9..12].parse().expect("a status");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("the whole body");
    (status, body)
}

/// `clients` downloads at once, each of one of `files` (target, bytes): two requests
/// pipelined on one keep-alive connection with a small receive buffer, both bodies checked.
fn download_together(srv: &Server, files: &[(&str, &[u8])], clients: usize) {
    let addr = srv.tcp;
    thread::scope(|sc| {
        for i in 0..clients {
            let (target, data) = files[i % files.len()];
            sc.spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                socket2::SockRef::from(&s)
                    .set_recv_buffer_size(16 * 1024)
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
                s.write_all(req.repeat(2).as_bytes()).unwrap();
                for round in 0..2 {
                    let (status, body) = read_sized_response(&mut s);
                    assert_eq!(status, 200, "{target} response {round}");
                    assert!(body == data, "{target} response {round}: wrong bytes");
                }
            });
        }
    });
}

/// Files sent from disk up to `--tee-file-max` (1 MiB by default), once asked for twice, have
/// their pages held in a pipe and leave with tee and splice; larger ones, and every file with `--tee-file-max 0`,
/// with sendfile. Both ways every byte arrives, with sockets that take a file a part at a
/// time (what the socket refuses is dropped from the scratch pipe and sent by
/// sendfile later), and a file copied over (truncated, then written: the held pages are the
/// old version's) is served in its new version.
fn held_pages(engine: &str) {
    let (_r, w) = rustix::pipe::pipe().unwrap();
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(&w, 1 << 20) {
        eprintln!("skipped: this user may not have a 1 MiB pipe here ({e})");
        return;
    }
    let t = Tree::new("tee");
    let mid = random_bytes(21, 300_000);
    let top = random_bytes(22, 1 << 20);
    let big = random_bytes(23, (1 << 20) + 1);
    let mid_path = t.put("mid.bin", &mid);
    t.put("top.bin", &top);
    t.put("big.bin", &big);
    let files: [(&str, &[u8]); 3] = [("/mid.bin", &mid), ("/top.bin", &top), ("/big.bin", &big)];
    for (flags, held) in [(&[][..], true), (&["--tee-file-max", "0"][..], false)] {
        let srv = Opts::http(engine)
            .arg("--root", &t.root_str())
            .arg("--threads", "1")
            .arg("--cache-valid", "60")
            // A send buffer that takes a file a part at a time.
            .arg("--sndbuf", "16384");
        let srv = flags.iter().fold(srv, |o, f| flag(o, f)).spawn();
        let before = pipe_fds(&srv);
        download_together(&srv, &files, 9);
        // A range from the start leaves from the held pages too; one further on, by sendfile.
        for (range, start, end) in [("bytes=0-99999", 0, 99_999), ("bytes=1000-", 1000, 299_999)] {
            let r = get_h(&srv, "/mid.bin", &[("Range", range)]);
            assert_eq!(r.status, 206, "[{engine}] {range}: {}", r.show());
            assert!(
                r.body == mid[start..=end],
                "[{engine}] {range}: wrong bytes"
            );
        }
        let after = pipe_fds(&srv);
        if held {
            // mid.bin's and top.bin's pages, and one scratch pipe (two ends): one loop sends
            // one response at a time.
            assert_eq!(
                after,
                before + 4,
                "[{engine}] pipes: {:?}",
                srv.fd_listing()
            );
        } else {
            assert_eq!(after, before, "[{engine}] pipes: {:?}", srv.fd_listing());
        }
        // Copied over in place, as `cp` does: the fstat on each use sees it, and the new
        // version's pages are held instead.
        let new = random_bytes(24, 250_000);
        std::fs::write(&mid_path, &new).unwrap();
        wait_new_version(&srv, "/mid.bin", &mid, &new);
        download_together(&srv, &[("/mid.bin", &new)], 4);
        std::fs::write(&mid_path, &mid).unwrap();
        wait_new_version(&srv, "/mid.bin", &new, &mid);
        // Asked for again: held again.
        assert!(get(&srv, "/mid.bin").body == mid);
        assert_eq!(
            pipe_fds(&srv),
            after,
            "[{engine}] the old pages' pipe is closed"
        );
    }
}
per_engine!(held_pages);

/// A client that reads a large response slowly but steadily gets all of it, however far past
/// `--linger-timeout` (when the server closes after it) and `--keepalive-timeout` (when it
/// does not) that takes: both bound a peer that stops taking bytes, not one that takes them
/// slowly. On loopback the kernel's send buffer is autotuned to megabytes and holds most of
/// the file, so the server has nothing it can write for seconds at a time while the client
/// reads on; after the server's FIN it has nothing left to write at all.
fn a_slow_reader_gets_the_whole_file(model: &str, close: bool) {
    let t = Tree::new(&format!("slow-{model}-{close}"));
    let data = random_bytes(60, 3 << 20);
    t.put("big.bin", &data);
    let srv = Opts::http(ENGINE)
        .arg("--root", &t.root_str())
        .arg("--model", model)
        .arg("--threads", "1")
        .arg("--linger-timeout", "1")
        .arg("--keepalive-timeout", "1")
        .spawn();
    let mut s = TcpStream::connect(srv.tcp).unwrap();
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let connection = if close { "Connection: close\r\n" } else { "" };
    let req = format!("GET /big.bin HTTP/1.1\r\nHost: test\r\n{connection}\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    // 16 KiB every 100 ms for 4 s: four linger and keep-alive periods, 640 KiB of 3 MiB.
    let slow_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < slow_until {
        if !read_some(&mut s, &mut buf, &mut got, model) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the head arrived")
        + 4;
    let want = head_end + data.len();
    while got.len() < want && read_some(&mut s, &mut buf, &mut got, model) {}
    assert!(got.starts_with(b"HTTP/1.1 200"), "[{model}] a 200");
    assert_eq!(got.len(), want, "[{model}] the whole body, no more");
    assert!(got[head_end..] == data[..], "[{model}] the file's bytes");
}

/// One read into `got`: false at EOF. A reset or timeout fails the test, saying how far it got.
fn read_some(s: &mut TcpStream, buf: &mut [u8], got: &mut Vec<u8>, model: &str) -> bool {
    use std::io::Read;
    match s.read(buf) {
        Ok(0) => false,
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            true
        }
        Err(e) => panic!("[{model}] cut off after {} bytes: {e}", got.len()),
    }
}

/// The other side of the slow reader: a client that never reads is still cut off, within
/// about two linger periods (the room it made before it stopped buys one more).
#[test]
fn a_reader_that_stopped_is_still_cut_off() {
    use std::io::Read;
    let t = Tree::new("stopped");
    t.put("big.bin", &random_bytes(61, 8 << 20));
    for model in ["multi-reactor", "leader-followers"] {
        let srv = Opts::http(ENGINE)
            .arg("--root", &t.root_str())
            .arg("--model", model)
            .arg("--threads", "1")
            .arg("--linger-timeout", "1")
            .spawn();
        let mut s = TcpStream::connect(srv.tcp).unwrap();
        socket2::SockRef::from(&s)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let start = Instant::now();
        thread::sleep(Duration::from_millis(2600));
        // Cut off by now: what the socket holds ends in a reset or EOF, well short of 8 MiB.
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(
            ended && got < 8 << 20,
            "[{model}] still served after {:?} ({got} bytes)",
            start.elapsed()
        );
    }
}

#[test]
fn a_slow_reader_gets_the_whole_file_before_a_close() {
    for model in ["multi-reactor", "leader-followers"] {
        a_slow_reader_gets_the_whole_file(model, true);
    }
}

#[test]
fn a_slow_reader_gets_the_whole_file_on_a_kept_connection() {
    for model in ["multi-reactor", "leader-followers"] {
        a_slow_reader_gets_the_whole_file(model, false);
    }
}

/// The pipes process `pid` has open: how many of its fds refer to each.
fn pipes_of(pid: i32) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(l) = std::fs::read_link(e.path()) {
            let l = l.to_string_lossy().into_owned();
            if l.starts_with("pipe:") {
                *seen.entry(l).or_default() += 1;
            }
        }
    }
    seen
}

/// Under the forking models the processes that serve at once (`--threads` of them) draw on
/// one user's pipe allowance, so each holds pages within its share of the quarter the server
/// may take (three quarters of that share for held pages), not a quarter each: four workers
/// each holding a quarter would leave every other program of the user two-slot pipes.
fn forked_processes_split_the_pipe_allowance(model: &str) {
    let (_r, w) = rustix::pipe::pipe().unwrap();
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(&w, 1 << 20) {
        eprintln!("skipped: this user may not have a 1 MiB pipe here ({e})");
        return;
    }
    let soft: u64 = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let processes = 4u64;
    let share = soft * rustix::param::page_size() as u64 / 4 / processes / 4 * 3;
    let can_hold = (share >> 20) as usize;
    let files = can_hold + 3;
    if soft == 0 || files > 40 {
        eprintln!("skipped: pipe-user-pages-soft {soft}: {files} files of 1 MiB to fill it");
        return;
    }
    let t = Tree::new("tee-share");
    let data: Vec<Vec<u8>> = (0..files)
        .map(|i| random_bytes(40 + i as u64, 1 << 20))
        .collect();
    for (i, d) in data.iter().enumerate() {
        t.put(&format!("f{i}.bin"), d);
    }
    let srv = Opts::http("epoll-et")
        .arg("--root", &t.root_str())
        .arg("--model", model)
        .arg("--threads", &processes.to_string())
        .arg("--cache-valid", "60")
        .spawn();
    let mut s = TcpStream::connect(srv.tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, d) in data.iter().enumerate() {
        for round in 0..2 {
            let req = format!("GET /f{i}.bin HTTP/1.1\r\nHost: test\r\n\r\n");
            s.write_all(req.as_bytes()).unwrap();
            let (status, body) = read_sized_response(&mut s);
            assert_eq!(status, 200, "[{model}] f{i} response {round}");
            assert!(body == *d, "[{model}] f{i} response {round}: wrong bytes");
        }
    }
    // The connection is still open: its process (the worker that took it, or its own child)
    // holds what it held.
    // Held pipes are the ones a child keeps one end of (a scratch pipe keeps both) and did
    // not inherit from the master.
    let master = pipes_of(srv.pid);
    let held = util::children_of(srv.pid)
        .iter()
        .map(|c| {
            pipes_of(c.pid)
                .iter()
                .filter(|&(p, &n)| n == 1 && !master.contains_key(p))
                .count()
        })
        .max()
        .unwrap_or(0);
    // Each holds 1 MiB, and the pipe a response leaves through counts against the same
    // share: one fewer may fit.
    assert!(
        held <= can_hold && held + 1 >= can_hold,
        "[{model}] {held} files held; the share has room for {can_hold} ({share} bytes of {files} MiB asked for twice)"
    );
}

#[test]
fn prefork_workers_split_the_pipe_allowance() {
    forked_processes_split_the_pipe_allowance("prefork");
}

#[test]
fn connection_processes_split_the_pipe_allowance() {
    forked_processes_split_the_pipe_allowance("process-per-conn");
}

// ---------------------------------------------------------------------------------------------
// gzip_static
// ---------------------------------------------------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid gzip member holding `data` in one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65536);
    let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let n = data.len() as u16;
    v.push(1); // BFINAL, stored
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(&(!n).to_le_bytes());
    v.extend_from_slice(data);
    v.extend_from_slice(&crc32(data).to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v
}

#[test]
fn gzip_static_sibling() {
    let t = Tree::new("gzip");
    let plain = b"hello, plain text\n".repeat(20);
    let gz = gzip_stored(&plain);
    t.put("hello.txt", &plain);
    t.put("hello.txt.gz", &gz);
    {
        let srv = serve(&t, &[]);
        let r = get_h(&srv, "/hello.txt", &[("Accept-Encoding", "gzip, deflate")]);
        assert_eq!(r.status, 200, "{}", r.show());
        assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{}", r.show());
        assert!(r.body == gz, "gzip: body is not the .gz file");
        assert!(
            r.header("Content-Type")
                .unwrap_or("")
                .starts_with("text/plain"),
            "{}",
            r.show()
        );
        assert_eq!(r.header("Vary"), Some("Accept-Encoding"), "{}", r.show());

        let r = get(&srv, "/hello.txt");
        assert_eq!(r.status, 200, "{}", r.show());
        assert!(!r.has("Content-Encoding"), "{}", r.show());
        assert!(
            r.body == plain,
            "no Accept-Encoding: body is not the plain file"
        );
        assert_eq!(r.header("Vary"), Some("Accept-Encoding"), "{}", r.show());

        // q=0 refuses gzip.
        let r = get_h(&srv, "/hello.txt", &[("Accept-Encoding", "br, gzip;q=0")]);
        assert!(!r.has("Content-Encoding"), "gzip;q=0: {}", r.show());
        assert!(r.body == plain);

        // A conditional request on the gzip variant validates against its own ETag.
        let r = get_h(&srv, "/hello.txt", &[("Accept-Encoding", "gzip")]);
        let gz_etag = r.header("ETag").expect("ETag").to_string();
        let r = get_h(
            &srv,
            "/hello.txt",
            &[("Accept-Encoding", "gzip"), ("If-None-Match", &gz_etag)],
        );
        assert_eq!(r.status, 304, "{}", r.show());
    }
    let srv = serve(&t, &["--no-gzip-static"]);
    let r = get_h(&srv, "/hello.txt", &[("Accept-Encoding", "gzip")]);
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(!r.has("Content-Encoding"), "--no-gzip-static: {}", r.show());
    assert!(
        r.body == plain,
        "--no-gzip-static: body is not the plain file"
    );
}

/// If-None-Match sent on several lines is one list (RFC 9110 5.3): a match on any line is a 304.
#[test]
fn if_none_match_on_several_lines() {
    let t = Tree::new("inm-lines");
    t.put("x", b"0123456789");
    let srv = serve(&t, &[]);
    let etag = get(&srv, "/x").header("ETag").expect("ETag").to_string();
    let r = get_h(
        &srv,
        "/x",
        &[("If-None-Match", "\"zz\""), ("If-None-Match", &etag)],
    );
    assert_eq!(r.status, 304, "{}", r.show());
    let r = get_h(
        &srv,
        "/x",
        &[("If-None-Match", "\"zz\""), ("If-None-Match", "\"yy\"")],
    );
    assert_eq!(r.status, 200, "{}", r.show());
}

/// A 416 for a resource with a gzip variant depends on Accept-Encoding (its size is the
/// variant's), so it says Vary like the 200, 206 and 304 do.
#[test]
fn unsatisfiable_range_of_a_negotiated_file_varies() {
    let t = Tree::new("gzip416");
    t.put("app.js", &b"let x = 1;\n".repeat(10));
    t.put("app.js.gz", &gzip_stored(&b"let x = 1;\n".repeat(10)));
    let srv = serve(&t, &[]);
    let r = get_h(
        &srv,
        "/app.js",
        &[("Accept-Encoding", "gzip"), ("Range", "bytes=100000-")],
    );
    assert_eq!(r.status, 416, "{}", r.show());
    assert_eq!(r.header("Vary"), Some("Accept-Encoding"), "{}", r.show());
}

// ---------------------------------------------------------------------------------------------
// Cache revalidation
// ---------------------------------------------------------------------------------------------

/// Polls `target` every 50 ms for up to 2.5 s until it serves `new`; every answer on the way
/// must be exactly `old` or `new` (the framing is checked by the parser). Returns how long it
/// took.
fn wait_new_version(srv: &Server, target: &str, old: &[u8], new: &[u8]) -> Duration {
    let t0 = Instant::now();
    loop {
        let r = get(srv, target);
        assert_eq!(r.status, 200, "{target}: {}", r.show());
        if r.body == new {
            return t0.elapsed();
        }
        assert!(
            r.body == old,
            "{target}: a body that is neither version ({} bytes; old {}, new {})",
            r.body.len(),
            old.len(),
            new.len()
        );
        assert!(
            t0.elapsed() < Duration::from_millis(2500),
            "{target}: still the old version after 2.5 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_gone(srv: &Server, target: &str) {
    let t0 = Instant::now();
    loop {
        let r = get(srv, target);
        if r.status == 404 {
            return;
        }
        assert_eq!(r.status, 200, "{target}: {}", r.show());
        assert!(
            t0.elapsed() < Duration::from_millis(2500),
            "{target}: deleted, still served after 2.5 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cache_revalidates_changed_and_deleted_files() {
    let t = Tree::new("cache");
    let small_v1 = b"small, version one\n".to_vec();
    let small_v2 = b"small, version two is longer\n".to_vec();
    let large_v1 = random_bytes(10, 100 * 1024);
    let large_v2 = random_bytes(11, 120 * 1024 + 7);
    let small = t.put("small.txt", &small_v1);
    let large = t.put("large.bin", &large_v1);
    let srv = serve(&t, &["--cache-valid", "1"]);

    // Fetch both twice (so whichever thread answers has them cached).
    for _ in 0..2 {
        assert!(get(&srv, "/small.txt").body == small_v1);
        assert!(get(&srv, "/large.bin").body == large_v1);
    }

    // Small file: rewritten in place (its copy in memory must be replaced).
    std::fs::write(&small, &small_v2).unwrap();
    wait_new_version(&srv, "/small.txt", &small_v1, &small_v2);

    // Large file (sendfile): replaced atomically, as deploy tools do; a file rewritten in place
    // while a server holds it open cannot be served consistently by anyone.
    let tmp = t.root().join(".large.bin.tmp");
    std::fs::write(&tmp, &large_v2).unwrap();
    std::fs::rename(&tmp, &large).unwrap();
    wait_new_version(&srv, "/large.bin", &large_v1, &large_v2);

    std::fs::remove_file(&small).unwrap();
    std::fs::remove_file(&large).unwrap();
    wait_gone(&srv, "/small.txt");
    wait_gone(&srv, "/large.bin");
}

// ---------------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------------

#[test]
fn head_and_post_on_files() {
    let t = Tree::new("methods");
    let small = b"small file for HEAD\n".to_vec();
    let large = random_bytes(20, 64 * 1024);
    t.put("s.txt", &small);
    t.put("l.bin", &large);
    let srv = serve(&t, &[]);
    for (target, data) in [("/s.txt", &small), ("/l.bin", &large)] {
        let r = exchange(srv.tcp, &request("HEAD", target, &[]));
        assert_eq!(r.status, 200, "HEAD {target}: {}", r.show());
        assert_eq!(
            r.header("Content-Length"),
            Some(data.len().to_string().as_str()),
            "HEAD {target}"
        );
        assert!(r.body.is_empty(), "HEAD {target} has a body");
        assert!(r.has("ETag") && r.has("Last-Modified"), "{}", r.show());

        let r = exchange(
            srv.tcp,
            &request("POST", target, &[("Content-Length", "0")]),
        );
        assert_eq!(r.status, 405, "POST {target}: {}", r.show());
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{}", r.show());

        let mut req = request("POST", target, &[("Content-Length", "5")]);
        req.extend_from_slice(b"hello");
        let r = exchange(srv.tcp, &req);
        assert_eq!(r.status, 405, "POST {target} with a body: {}", r.show());
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{}", r.show());
    }
}

// ---------------------------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------------------------

/// `^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /x HTTP/1\.1" 200 BYTES
/// "-" "UA"$`, by hand.
fn is_combined_line(line: &str, bytes: usize, ua: &str) -> bool {
    let Some(rest) = line.strip_prefix("127.0.0.1 - - [") else {
        return false;
    };
    let pattern = "99/AAA/9999:99:99:99 +0000]";
    if rest.len() < pattern.len() {
        return false;
    }
    let ok_time = pattern.bytes().zip(rest.bytes()).all(|(p, c)| match p {
        b'9' => c.is_ascii_digit(),
        b'A' => c.is_ascii_alphanumeric() || c == b'_',
        _ => p == c,
    });
    ok_time && rest[pattern.len()..] == format!(" \"GET /x HTTP/1.1\" 200 {bytes} \"-\" \"{ua}\"")
}

/// The access log once it has `lines` lines (it is written by another thread), or as it is
/// after 3 s.
fn log_text(log: &std::path::Path, lines: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().count() >= lines || Instant::now() >= deadline {
            return text;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn access_log_combined_format() {
    let t = Tree::new("alog");
    t.put("x", b"0123456789");
    let log = t.base.join("access.log");
    let srv = serve(&t, &["--access-log", log.to_str().unwrap()]);
    for ua in ["evil \"quoted\" agent", "t/1", "t/1"] {
        let r = get_h(&srv, "/x", &[("User-Agent", ua)]);
        assert_eq!(r.status, 200, "{}", r.show());
    }
    let text = log_text(&log, 3);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "access log after 3 requests:\n{text}");
    assert!(text.ends_with('\n'), "last line unterminated:\n{text}");
    let quoted = lines
        .iter()
        .filter(|l| is_combined_line(l, 10, "evil \\x22quoted\\x22 agent"))
        .count();
    let plain = lines
        .iter()
        .filter(|l| is_combined_line(l, 10, "t/1"))
        .count();
    assert_eq!((quoted, plain), (1, 2), "access log lines:\n{text}");
}

/// Keep-alive requests for a file answered from memory are logged too: four pipelined
/// requests for one small file (the later ones find it as the file last served), four lines.
#[test]
fn access_log_has_every_keep_alive_request() {
    let t = Tree::new("alog-ka");
    t.put("x", b"0123456789");
    let log = t.base.join("access.log");
    let srv = serve(&t, &["--access-log", log.to_str().unwrap()]);
    let mut s = connect(srv.tcp);
    let ask = "GET /x HTTP/1.1\r\nHost: t\r\nUser-Agent: t/1\r\n";
    let keep = format!("{ask}\r\n");
    let last = format!("{ask}Connection: close\r\n\r\n");
    s.write_all([keep.repeat(3), last].concat().as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let end = read_until_end(&mut s, &mut got, 1 << 20, Duration::from_secs(5));
    assert!(matches!(end, End::Eof), "{end:?}");
    let text = log_text(&log, 4);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "access log after 4 requests:\n{text}");
    assert!(
        lines.iter().all(|l| is_combined_line(l, 10, "t/1")),
        "access log lines:\n{text}"
    );
}

/// A combined-format line's bytes field (0 if it has none).
fn logged_bytes(line: &str) -> usize {
    line.split(' ')
        .nth(9)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The bytes field is what left, as nginx's `$body_bytes_sent`: a download the client cut
/// short is logged with the part that went, not the length the head promised, and the lines
/// keep the order of the responses. Under every model, since each ends a connection its own
/// way.
#[test]
fn access_log_counts_the_bytes_that_left() {
    use std::io::Read;
    const BIG: usize = 32 << 20;
    let t = Tree::new("alog-sent");
    t.put("big", &vec![b'b'; BIG]);
    t.put("x", b"0123456789");
    for model in [
        "multi-reactor",
        "leader-followers",
        "half-sync",
        "thread-per-conn",
        "prefork",
        "process-per-conn",
    ] {
        let log = t.base.join(format!("access-{model}.log"));
        let srv = serve(
            &t,
            &["--model", model, "--access-log", log.to_str().unwrap()],
        );
        // Whole: a small file, the big one, a small one, pipelined.
        let mut s = connect(srv.tcp);
        let ask = |path: &str, last: bool| {
            let close = if last { "Connection: close\r\n" } else { "" };
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{close}\r\n")
        };
        let asks = [ask("/x", false), ask("/big", false), ask("/x", true)].concat();
        s.write_all(asks.as_bytes()).unwrap();
        let mut got = Vec::new();
        let end = read_until_end(&mut s, &mut got, 2 * BIG, Duration::from_secs(20));
        assert!(matches!(end, End::Eof), "{model}: {end:?}");
        let text = log_text(&log, 3);
        let sizes: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(9).unwrap_or("?"))
            .collect();
        assert_eq!(sizes, ["10", &BIG.to_string(), "10"], "{model}:\n{text}");
        // Cut short: 1 MiB read, then a reset.
        let mut s = connect(srv.tcp);
        s.write_all(ask("/big", false).as_bytes()).unwrap();
        let mut first = vec![0u8; 1 << 20];
        s.read_exact(&mut first).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        let text = log_text(&log, 4);
        let last = text.lines().nth(3).unwrap_or_default();
        let sent = logged_bytes(last);
        assert!(
            (1 << 20..BIG).contains(&sent),
            "{model}: a download reset after 1 MiB is logged with {sent} bytes:\n{text}"
        );
        // Reset at once: logged (if the request was read at all) with what left, which under
        // half-sync includes what a worker wrote after the connection was gone: none of it.
        for _ in 0..10 {
            let s = connect(srv.tcp);
            s.set_nodelay(true).unwrap();
            (&s).write_all(ask("/big", false).as_bytes()).unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        // (Under thread- and process-per-connection the reset ones may still hold every
        // slot for a moment: a connection past the cap is closed unanswered.)
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = connect(srv.tcp);
            s.write_all(ask("/x?end", true).as_bytes()).unwrap();
            let mut raw = Vec::new();
            read_until_end(&mut s, &mut raw, 1 << 20, Duration::from_secs(5));
            if raw.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{model}: the marker request went unanswered"
            );
            thread::sleep(Duration::from_millis(50));
        }
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("/x?end") || Instant::now() > deadline {
                break text;
            }
            thread::sleep(Duration::from_millis(50));
        };
        for line in text.lines().skip(4).filter(|l| l.contains("GET /big ")) {
            let sent = logged_bytes(line);
            assert!(
                sent < BIG,
                "{model}: reset at once, logged as sent whole: {line}"
            );
        }
    }
}

/// Requests refused before they were understood are logged too, with the request line as
/// received (escaped), as nginx does: they are what an operator looks for.
#[test]
fn refused_requests_are_logged() {
    let t = Tree::new("alog-refused");
    t.put("x", b"0123456789");
    let log = t.base.join("access.log");
    let srv = serve(&t, &["--access-log", log.to_str().unwrap()]);
    let r = exchange(srv.tcp, b"GET /x HTTP/1.1\r\nUser-Agent: t\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.show());
    // The bytes field is the error page's length, as sent (nginx logs it too).
    let sent = r.body.len();
    assert!(sent > 0, "{}", r.show());
    let r = exchange(srv.tcp, b"GET /\"q\" HTTP/1.1\r\nHost: a b\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.show());
    let text = log_text(&log, 2);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "access log after 2 refusals:\n{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!("\"GET /x HTTP/1.1\" 400 {sent} \"-\" \"-\""))),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(
            "\"GET /\\x22q\\x22 HTTP/1.1\" 400 {sent} \"-\" \"-\""
        ))),
        "{text}"
    );
}

/// An error page is logged with the body bytes it sent (the combined format's bytes field),
/// a HEAD with none.
#[test]
fn error_pages_are_logged_with_their_length() {
    let t = Tree::new("alog-404");
    t.put("x", b"0123456789");
    let log = t.base.join("access.log");
    let srv = serve(&t, &["--access-log", log.to_str().unwrap()]);
    let r = exchange(
        srv.tcp,
        b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404, "{}", r.show());
    let sent = r.body.len();
    assert!(sent > 0, "{}", r.show());
    let r = exchange(
        srv.tcp,
        b"HEAD /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404, "{}", r.show());
    let text = log_text(&log, 2);
    for want in [
        format!("\"GET /nope HTTP/1.1\" 404 {sent} \"-\" \"-\""),
        "\"HEAD /nope HTTP/1.1\" 404 0 \"-\" \"-\"".to_string(),
    ] {
        assert!(text.lines().any(|l| l.ends_with(&want)), "{want}:\n{text}");
    }
}

/// A request refused while its body arrives (a bad chunk, a body that stops coming) is
/// logged with its request line, kept from its head, not as "-".
#[test]
fn body_refusals_are_logged_with_their_request() {
    let t = Tree::new("alog-body");
    t.put("x", b"0123456789");
    let log = t.base.join("access.log");
    let srv = serve(
        &t,
        &["--access-log", log.to_str().unwrap(), "--body-timeout", "1"],
    );
    let r = exchange(
        srv.tcp,
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    );
    assert_eq!(r.status, 400, "{}", r.show());
    let sent_400 = r.body.len();
    let r = exchange(
        srv.tcp,
        b"PUT /y HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n012",
    );
    assert_eq!(r.status, 408, "{}", r.show());
    let sent_408 = r.body.len();
    let text = log_text(&log, 2);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "access log after 2 refusals:\n{text}");
    for want in [
        format!("\"POST /x HTTP/1.1\" 400 {sent_400} \"-\" \"-\""),
        format!("\"PUT /y HTTP/1.1\" 408 {sent_408} \"-\" \"-\""),
    ] {
        assert!(lines.iter().any(|l| l.ends_with(&want)), "{want}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Welcome page
// ---------------------------------------------------------------------------------------------

/// The welcome page as a person first sees it: headless Chromium renders it (a screenshot with
/// something on it) and parses it into the document written (its title and heading).
#[test]
fn welcome_page_renders_in_headless_chromium() {
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let srv = Opts::http(ENGINE).spawn();
    let url = format!("http://{}/", srv.tcp);
    let dom = browser::dump_dom(chromium, &url);
    assert!(
        dom.contains("<title>Welcome to keel</title>") && dom.contains("<h1>Welcome to keel</h1>"),
        "{dom}"
    );
    let t = Tree::new("welcome-shot");
    let png = browser::screenshot(chromium, &url, &t.base.join("welcome.png"));
    assert!(png.len() > 5_000, "a blank page? {} bytes", png.len());
}

#[test]
fn welcome_page_without_root() {
    let srv = Opts::http(ENGINE).spawn();
    let r = get(&srv, "/");
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(
        r.header("Content-Type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{}",
        r.show()
    );
    assert!(!r.body.is_empty());
    for target in ["/nope", "/nope.html", "/dir/"] {
        let r = get(&srv, target);
        assert_eq!(r.status, 404, "{target}: {}", r.show());
    }
}

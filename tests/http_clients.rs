//! `keel http` against real HTTP clients: curl (HTTP/1.0 and 1.1, a range), Python's
//! http.client (ten requests on one connection, HEAD and Range among them) and ApacheBench
//! (2000 keep-alive requests from 20 clients). A test whose tool is not installed is skipped
//! with a printed reason. Every tool runs under a deadline and is killed past it.

mod util;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{random_bytes, Opts, Server};

const HELLO: &[u8] = b"hello, world\n";

static ROOT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A document root with `hello.txt` and `file.bin` (1 MiB, served with sendfile); removed on
/// drop.
struct Root {
    dir: PathBuf,
    file: Vec<u8>,
}

impl Root {
    fn new(tag: &str) -> Root {
        let n = ROOT_SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "keel-http-clients-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create document root");
        fs::write(dir.join("hello.txt"), HELLO).expect("write hello.txt");
        let file = random_bytes(7, 1 << 20);
        fs::write(dir.join("file.bin"), &file).expect("write file.bin");
        Root { dir, file }
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

fn serve(root: &Root) -> Server {
    let mut o = Opts::http("epoll-et").arg("--root", root.path());
    o.args.push("--no-access-log".to_string());
    o.spawn()
}

/// Whether `tool` is an executable file on PATH (what `which` answers).
fn which(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Returns the tool's path, or prints why the test is skipped.
fn need(tool: &str, test: &str) -> Option<PathBuf> {
    let p = which(tool);
    if p.is_none() {
        eprintln!("SKIPPED {test}: `{tool}` is not installed (not on PATH)");
    }
    p
}

struct Ran {
    ok: bool,
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `cmd` with stdout and stderr captured; kills it past `timeout` (and panics).
fn run(mut cmd: Command, timeout: Duration) -> Ran {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    // The readers end at EOF, i.e. when the child exits or is killed.
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr =
                    String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
                panic!("{shown} still running after {timeout:?}; killed. stderr:\n{stderr}");
            }
            Err(e) => panic!("waiting for {shown}: {e}"),
        }
    };
    Ran {
        ok: status.success(),
        code: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
    }
}

fn curl_download(curl: &Path, srv: &Server, root: &Root, version: &str) {
    let out = root
        .dir
        .join(format!("out-{}", version.trim_start_matches('-')));
    let mut cmd = Command::new(curl);
    cmd.args(["-sS", "--max-time", "30", version, "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}"])
        .arg(format!("http://{}/file.bin", srv.tcp));
    let r = run(cmd, Duration::from_secs(40));
    assert!(r.ok, "curl {version} failed ({:?}): {}", r.code, r.stderr);
    let w = String::from_utf8_lossy(&r.stdout).into_owned();
    // (A server answers in its own version, HTTP/1.1, whichever 1.x the client spoke.)
    assert_eq!(w, "200", "curl {version}: status");
    let got = fs::read(&out).expect("curl's output file");
    assert_eq!(got.len(), root.file.len(), "curl {version}: length");
    assert!(
        got == root.file,
        "curl {version}: the 1 MiB download differs"
    );
    let _ = fs::remove_file(&out);
}

#[test]
fn curl_http10_download() {
    let Some(curl) = need("curl", "curl_http10_download") else {
        return;
    };
    let root = Root::new("curl10");
    let srv = serve(&root);
    curl_download(&curl, &srv, &root, "--http1.0");
}

#[test]
fn curl_http11_download_and_range() {
    let Some(curl) = need("curl", "curl_http11_download_and_range") else {
        return;
    };
    let root = Root::new("curl11");
    let srv = serve(&root);
    curl_download(&curl, &srv, &root, "--http1.1");

    // curl -r 0-9: a 206 with the first ten bytes.
    let mut cmd = Command::new(&curl);
    cmd.args(["-sS", "--max-time", "30", "--http1.1", "-r", "0-9"])
        .args(["-D", "-"])
        .arg(format!("http://{}/file.bin", srv.tcp));
    let r = run(cmd, Duration::from_secs(40));
    assert!(r.ok, "curl -r 0-9 failed ({:?}): {}", r.code, r.stderr);
    let text = r.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("curl -D - printed a head");
    let head = String::from_utf8_lossy(&text[..split]).into_owned();
    let body = &text[split + 4..];
    assert!(head.starts_with("HTTP/1.1 206"), "curl -r 0-9:\n{head}");
    assert!(
        head.lines()
            .any(|l| l
                .eq_ignore_ascii_case(&format!("content-range: bytes 0-9/{}", root.file.len()))),
        "curl -r 0-9: no Content-Range bytes 0-9/{}:\n{head}",
        root.file.len()
    );
    assert_eq!(body, &root.file[..10], "curl -r 0-9: body");

    // Two URLs in one curl run reuse the connection.
    let mut cmd = Command::new(&curl);
    cmd.args([
        "-sS",
        "--max-time",
        "30",
        "--http1.1",
        "-w",
        "%{num_connects}\\n",
    ])
    .arg(format!("http://{}/hello.txt", srv.tcp))
    .arg(format!("http://{}/hello.txt", srv.tcp));
    let r = run(cmd, Duration::from_secs(40));
    assert!(
        r.ok,
        "curl with two URLs failed ({:?}): {}",
        r.code, r.stderr
    );
    let text = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        text, "hello, world\n1\nhello, world\n0\n",
        "curl with two URLs: the second should reuse the connection (num_connects 0)"
    );
}

const PY_SCRIPT: &str = r#"
import http.client, sys
port = int(sys.argv[1])
size = int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
socks = set()
def req(method, path, headers=None):
    c.request(method, path, headers=headers or {})
    socks.add(id(c.sock))
    r = c.getresponse()
    body = r.read()
    return r, body
for i in range(3):
    r, b = req("GET", "/hello.txt")
    assert r.status == 200, (i, r.status)
    assert b == b"hello, world\n", b
r, b = req("HEAD", "/hello.txt")
assert r.status == 200 and b == b"", (r.status, b)
assert r.getheader("Content-Length") == "13", r.getheaders()
r, b = req("GET", "/hello.txt", {"Range": "bytes=7-11"})
assert r.status == 206, r.status
assert b == b"world", b
assert r.getheader("Content-Range") == "bytes 7-11/13", r.getheaders()
r, b = req("GET", "/file.bin")
assert r.status == 200 and len(b) == size, (r.status, len(b))
r, b = req("GET", "/file.bin", {"Range": "bytes=-100"})
assert r.status == 206 and len(b) == 100, (r.status, len(b))
r, b = req("GET", "/missing")
assert r.status == 404, r.status
r, b = req("POST", "/hello.txt")
assert r.status == 405, r.status
assert r.getheader("Allow") == "GET, HEAD", r.getheaders()
r, b = req("GET", "/hello.txt")
assert r.status == 200 and b == b"hello, world\n"
assert len(socks) == 1, "the connection was not reused: %d sockets" % len(socks)
print("ok 10")
"#;

#[test]
fn python_http_client_ten_requests_one_connection() {
    let Some(py) = need("python3", "python_http_client_ten_requests_one_connection") else {
        return;
    };
    let root = Root::new("python");
    let srv = serve(&root);
    let mut cmd = Command::new(py);
    cmd.args(["-c", PY_SCRIPT])
        .arg(srv.tcp.port().to_string())
        .arg(root.file.len().to_string());
    let r = run(cmd, Duration::from_secs(60));
    assert!(
        r.ok,
        "python http.client script failed ({:?}):\n{}\n{}",
        r.code,
        String::from_utf8_lossy(&r.stdout),
        r.stderr
    );
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "ok 10");
}

#[test]
fn apache_bench_keepalive() {
    let Some(ab) = need("ab", "apache_bench_keepalive") else {
        return;
    };
    let root = Root::new("ab");
    let srv = serve(&root);
    let mut cmd = Command::new(ab);
    cmd.args(["-n", "2000", "-c", "20", "-k", "-s", "10"])
        .arg(format!("http://{}/hello.txt", srv.tcp));
    let r = run(cmd, Duration::from_secs(120));
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(r.ok, "ab failed ({:?}):\n{out}\n{}", r.code, r.stderr);
    let field = |name: &str| -> Option<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(
        field("Complete requests:").as_deref(),
        Some("2000"),
        "ab:\n{out}"
    );
    assert_eq!(
        field("Failed requests:").as_deref(),
        Some("0"),
        "ab:\n{out}"
    );
    if let Some(n) = field("Non-2xx responses:") {
        assert_eq!(n, "0", "ab:\n{out}");
    }
    // -k: ab counts the responses that kept the connection open.
    assert_eq!(
        field("Keep-Alive requests:").as_deref(),
        Some("2000"),
        "ab -k: every request should be kept alive:\n{out}"
    );
}

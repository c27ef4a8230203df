//! Server conventions on a live `keel http`: SIGHUP reload (a good one takes effect for new
//! connections while an old one keeps going; a broken one changes nothing), SIGUSR1 reopening
//! the access log after a rotation, and the admin listener's /metrics (parsed as Prometheus
//! text, its counters checked against the traffic sent) and /status.

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use util::{browser, temp_dir, Opts, MODELS};

/// One response: status, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Reads one response with a Content-Length body from `s`.
fn read_response(s: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).expect("response head"),
            1,
            "EOF in head: {buf:?}"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    Response {
        status,
        headers,
        body,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn get_on(s: &mut TcpStream, path: &str) -> Response {
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_response(s)
}

fn get(addr: SocketAddr, path: &str) -> Response {
    get_on(&mut connect(addr), path)
}

fn write_config(path: &Path, text: &str) {
    // Write then rename: the server never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn poll_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reload_takes_effect_for_new_connections_and_a_broken_one_changes_nothing() {
    let dir = temp_dir("reload");
    for (site, text) in [("a", "site A"), ("b", "site B")] {
        std::fs::create_dir_all(dir.join(site)).unwrap();
        std::fs::write(dir.join(site).join("page.txt"), text).unwrap();
    }
    let conf = dir.join("keel.toml");
    let root_a = dir.join("a");
    write_config(
        &conf,
        &format!(
            "[http]\nroot = {:?}\naccess_log = \"off\"\n",
            root_a.display().to_string()
        ),
    );
    let srv = Opts::http("epoll-et")
        .arg("--config", conf.to_str().unwrap())
        .arg("--threads", "2")
        .spawn();
    assert_eq!(get(srv.tcp, "/page.txt").body, b"site A");
    // A keep-alive connection made before the reload.
    let mut old = connect(srv.tcp);
    assert_eq!(get_on(&mut old, "/page.txt").body, b"site A");

    let root_b = dir.join("b");
    write_config(
        &conf,
        &format!(
            "[http]\nroot = {:?}\naccess_log = \"off\"\nautoindex = true\n",
            root_b.display().to_string()
        ),
    );
    srv.signal(Signal::SIGHUP);
    poll_until("the new root", Duration::from_secs(5), || {
        get(srv.tcp, "/page.txt").body == b"site B"
    });
    // The new option (autoindex) shows for new connections.
    let listing = get(srv.tcp, "/");
    assert_eq!(
        listing.status,
        200,
        "{}",
        String::from_utf8_lossy(&listing.body)
    );
    assert!(String::from_utf8_lossy(&listing.body).contains("page.txt"));
    // The old connection keeps going, with what it was accepted with.
    assert_eq!(get_on(&mut old, "/page.txt").body, b"site A");

    // A broken file: logged, and the server keeps serving the last good configuration.
    write_config(&conf, "[http]\nroot = 17\nkeepalive_timeout = \"soon\"\n");
    srv.signal(Signal::SIGHUP);
    poll_until(
        "the reload failure to be reported",
        Duration::from_secs(5),
        || srv.stderr_dump().contains("reload failed"),
    );
    let dump = srv.stderr_dump();
    assert!(
        dump.contains("keel.toml:2"),
        "the error names file and line: {dump}"
    );
    assert_eq!(get(srv.tcp, "/page.txt").body, b"site B");
    assert!(srv.is_running());

    // A file cut to nothing (a deploy's write caught half-way), or with another server's
    // section only: refused as well. It used to reload onto the built-in defaults, moving
    // the server to 127.0.0.1:8080 with the welcome page.
    for (n, text) in [(2, ""), (3, "[echo]\nthreads = 1\n")] {
        write_config(&conf, text);
        srv.signal(Signal::SIGHUP);
        poll_until("the refusal", Duration::from_secs(5), || {
            srv.stderr_dump().matches("no [http] section").count() >= n - 1
        });
        assert_eq!(get(srv.tcp, "/page.txt").body, b"site B", "after {text:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server given a file without its section refuses to start, saying so (exit 2): it used
/// to start on the built-in defaults.
#[test]
fn a_file_without_the_servers_section_is_refused_at_start() {
    let dir = temp_dir("no-section");
    let conf = dir.join("keel.toml");
    for text in ["", "[echo]\nthreads = 1\n"] {
        write_config(&conf, text);
        let out = std::process::Command::new(util::keel_bin())
            .args(["http", "--config", conf.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(
            err.contains("keel.toml: no [http] section"),
            "{text:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under prefork each worker reloads itself on the SIGHUP its master passes on, once the
/// master found the file good; a broken file is reported once, by the master, not again by
/// every worker.
#[test]
fn prefork_workers_take_up_a_reload_and_a_broken_file_is_reported_once() {
    let dir = temp_dir("reload-prefork");
    for (site, text) in [("a", "site A"), ("b", "site B")] {
        std::fs::create_dir_all(dir.join(site)).unwrap();
        std::fs::write(dir.join(site).join("page.txt"), text).unwrap();
    }
    let conf = dir.join("keel.toml");
    let config = |site: &str| {
        let root = dir.join(site).display().to_string();
        format!("[http]\nroot = {root:?}\naccess_log = \"off\"\n")
    };
    write_config(&conf, &config("a"));
    let srv = Opts::http("epoll-et")
        .arg("--config", conf.to_str().unwrap())
        .arg("--model", "prefork")
        .arg("--threads", "2")
        .spawn();
    assert_eq!(get(srv.tcp, "/page.txt").body, b"site A");
    write_config(&conf, &config("b"));
    srv.signal(Signal::SIGHUP);
    // Twenty in a row: every one served by whichever worker accepts it.
    poll_until(
        "the new root in the workers",
        Duration::from_secs(5),
        || (0..20).all(|_| get(srv.tcp, "/page.txt").body == b"site B"),
    );
    write_config(&conf, "[http]\nroot = 17\n");
    srv.signal(Signal::SIGHUP);
    poll_until("the failure reported", Duration::from_secs(5), || {
        srv.stderr_dump().contains("reload failed")
    });
    std::thread::sleep(Duration::from_millis(300)); // room for workers to say it too
    let dump = srv.stderr_dump();
    assert_eq!(dump.matches("reload failed").count(), 1, "{dump}");
    assert!((0..20).all(|_| get(srv.tcp, "/page.txt").body == b"site B"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload swaps the handlers' settings; a setting applied to loops, listeners or the
/// process at start (here the idle timeout) cannot change under it, and the log says so
/// instead of letting "reloaded" suggest it did.
#[test]
fn sighup_names_the_settings_that_need_a_restart() {
    let dir = temp_dir("reload-fixed");
    let conf = dir.join("keel.toml");
    write_config(&conf, "[echo]\nidle_timeout = 100\n");
    let srv = Opts::echo("epoll-et")
        .arg("--config", conf.to_str().unwrap())
        .arg("--threads", "1")
        .spawn();
    write_config(&conf, "[echo]\nidle_timeout = 1\n");
    srv.signal(Signal::SIGHUP);
    poll_until("the reload to be logged", Duration::from_secs(5), || {
        srv.stderr_dump().contains("reloaded")
    });
    let dump = srv.stderr_dump();
    assert!(
        dump.contains("a new `idle_timeout` takes effect at the next restart"),
        "{dump}"
    );
    assert!(!dump.contains("a new `threads`"), "{dump}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The control loop serves the admin pages (and, under some models, accepts connections and
/// UDP): a scrape must not sit waiting for a loop that is busy in a handler. Its figures then
/// come from what that loop last published, so the busy connection is still counted.
#[test]
fn a_scrape_does_not_wait_for_a_busy_handler() {
    let srv = Opts::echo("epoll-et")
        .arg("--model", "thread-per-conn")
        .arg("--threads", "4")
        .arg("--work-ms", "3000")
        .arg("--admin", "127.0.0.1:0")
        .spawn();
    let admin = srv.admin_addr().expect("a `listening admin` line");
    let mut busy = connect(srv.tcp);
    busy.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(300)); // its handler is asleep now
    let start = Instant::now();
    let r = get(admin, "/metrics");
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_millis(500),
        "the scrape took {took:?} while a handler was busy"
    );
    let text = String::from_utf8_lossy(&r.body).into_owned();
    // Open: the busy connection, and this scrape's own.
    assert!(
        text.lines().any(|l| l == "keel_connections_open 2"),
        "the busy connection is not counted:\n{text}"
    );
}

/// Admin connections are outside `--max-conns`, so the figures answer with the site full;
/// they used to be unbounded too, and idle ones (each held 10 s) could take every fd the site
/// had. At most 64 are open at once (the next gets a 503), and one that sends nothing is
/// answered 408 and closed after 3 s, its slot free from then on. Under every model, since
/// prefork's master serves them itself.
#[test]
fn idle_admin_connections_are_bounded_and_do_not_starve_the_site() {
    let dir = temp_dir("admin-cap");
    std::fs::write(dir.join("page.txt"), "the page").unwrap();
    for model in MODELS {
        let srv = Opts::http("epoll-et")
            .arg("--root", dir.to_str().unwrap())
            .arg("--model", model)
            .arg("--threads", "2")
            .arg("--admin", "127.0.0.1:0")
            .spawn();
        let admin = srv.admin_addr().expect("a `listening admin` line");
        let opened = Instant::now();
        let mut idle: Vec<TcpStream> = (0..64).map(|_| connect(admin)).collect();
        // The 65th is refused at once, with a reason; counting may lag the connects a little.
        poll_until("a 503 for the 65th", Duration::from_secs(3), || {
            get(admin, "/metrics").status == 503
        });
        assert_eq!(get(srv.tcp, "/page.txt").body, b"the page", "{model}");
        // The idle ones are cut off after the 3 s head timeout (with a 408), freeing room.
        for s in &mut idle {
            s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            assert!(
                got.starts_with(b"HTTP/1.1 408"),
                "{model}: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        let took = opened.elapsed();
        assert!(
            (Duration::from_millis(2_900)..Duration::from_secs(6)).contains(&took),
            "{model}: idle admin connections closed after {took:?}"
        );
        // Room is made when the 408 leaves, not when the client closes its end: these
        // clients still hold theirs (the slots were held through the 5 s linger).
        poll_until(
            "a scrape once they are answered",
            Duration::from_secs(1),
            || get(admin, "/metrics").status == 200,
        );
        drop(idle);
        drop(srv);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scrapes one after another while a loop is stuck in a handler: the control loop waits for
/// that loop's answer (up to 50 ms) once; while that question is unanswered, later scrapes
/// take what the loop last published without waiting. Each scrape used to wait the whole
/// 50 ms: 100 concurrent scrapes queued for 5 s on the control loop.
#[test]
fn scrapes_in_a_row_wait_for_a_stuck_loop_once() {
    let srv = Opts::echo("epoll-et")
        .arg("--threads", "1")
        .arg("--work-ms", "3000")
        .arg("--admin", "127.0.0.1:0")
        .spawn();
    let admin = srv.admin_addr().expect("a `listening admin` line");
    let mut busy = connect(srv.tcp);
    busy.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(300)); // its handler is asleep now
    let start = Instant::now();
    for _ in 0..30 {
        let r = get(admin, "/metrics");
        assert_eq!(r.status, 200);
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "30 scrapes took {took:?} while a loop was stuck (50 ms each would be 1.5 s)"
    );
}

#[test]
fn sigusr1_reopens_the_access_log_after_rotation() {
    let dir = temp_dir("reopen");
    std::fs::write(dir.join("x.txt"), "x").unwrap();
    let log = dir.join("access.log");
    let srv = Opts::http("epoll-et")
        .arg("--root", dir.to_str().unwrap())
        .arg("--access-log", log.to_str().unwrap())
        .arg("--threads", "1")
        .spawn();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    get(srv.tcp, "/x.txt?before");
    poll_until("the first line", Duration::from_secs(3), || {
        read(&log).contains("before")
    });
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    srv.signal(Signal::SIGUSR1);
    // Lines after the signal go to a fresh file at the configured path.
    poll_until("a line in the reopened log", Duration::from_secs(5), || {
        get(srv.tcp, "/x.txt?after");
        read(&log).contains("after")
    });
    assert!(read(&rotated).contains("before"));
    assert!(!read(&log).contains("before"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under `--user`, the log files keel created as root are given to that user before it drops
/// root, so a rotation's reopen works. They stayed root's: "Permission denied", and lines
/// went on into the rotated file. Needs root (skipped otherwise).
#[test]
fn logs_created_as_root_belong_to_the_user_and_reopen_after_rotation() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: --user needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let dir = temp_dir("user-logs");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(dir.join("x.txt"), "x").unwrap();
    let (access, errors) = (dir.join("access.log"), dir.join("error.log"));
    let srv = Opts::http("epoll-et")
        .arg("--root", dir.to_str().unwrap())
        .arg("--access-log", access.to_str().unwrap())
        .arg("--log-file", errors.to_str().unwrap())
        .arg("--user", "nobody")
        .arg("--threads", "1")
        .spawn();
    for f in [&access, &errors] {
        let m = std::fs::metadata(f).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (nobody.uid.as_raw(), nobody.gid.as_raw()),
            "{}",
            f.display()
        );
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    get(srv.tcp, "/x.txt?before");
    poll_until("the first line", Duration::from_secs(3), || {
        read(&access).contains("before")
    });
    std::fs::rename(&access, dir.join("access.log.1")).unwrap();
    srv.signal(Signal::SIGUSR1);
    poll_until("a line in the reopened log", Duration::from_secs(5), || {
        get(srv.tcp, "/x.txt?after");
        read(&access).contains("after")
    });
    assert!(
        !read(&errors).contains("Permission denied"),
        "{}",
        read(&errors)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reopen that fails (the log's directory was moved away) is said in the log still being
/// written, not only on stderr, which a daemon has put on /dev/null.
#[test]
fn a_failed_reopen_is_said_in_the_old_log() {
    let dir = temp_dir("reopen-fails");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let log = dir.join("logs/keel.log");
    let srv = Opts::echo("epoll-et")
        .arg("--log-target", "file")
        .arg("--log-file", log.to_str().unwrap())
        .spawn();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    poll_until("the start line", Duration::from_secs(3), || {
        read(&log).contains("echo server starting")
    });
    std::fs::rename(dir.join("logs"), dir.join("moved")).unwrap();
    srv.signal(Signal::SIGUSR1);
    let old = dir.join("moved/keel.log");
    poll_until(
        "the failed reopen in the old log",
        Duration::from_secs(5),
        || read(&old).contains("still writing to the old file"),
    );
    // And on stderr, for when the old file is gone too (its directory removed).
    poll_until(
        "the failed reopen on stderr",
        Duration::from_secs(5),
        || srv.stderr_dump().contains("still writing to the old file"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection process forked by the process-per-conn master holds one socket, its own
/// connection: not the master's admin listener (which it used to inherit, keeping the admin
/// port bound after the master died), nor anything else of the master's loop.
#[test]
fn a_forked_child_holds_none_of_the_masters_sockets() {
    let srv = Opts::echo("epoll-et")
        .arg("--model", "process-per-conn")
        .arg("--threads", "4")
        .arg("--admin", "127.0.0.1:0")
        .spawn();
    let admin = srv.admin_addr().expect("a `listening admin` line");
    assert_eq!(get(admin, "/metrics").status, 200);
    let mut c = connect(srv.tcp);
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", srv.pid)).unwrap();
    let child: i32 = children
        .split_whitespace()
        .next()
        .expect("a child")
        .parse()
        .unwrap();
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{child}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("socket:"))
        .collect();
    assert_eq!(sockets.len(), 1, "the child's sockets: {sockets:?}");
}

/// A small Prometheus text-format reader: `name{labels} value` samples, keyed by the series
/// as written; every sample's family must have been declared with `# TYPE` before it.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample: series value");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "labels: {line}"
                );
            }
        }
        assert!(types.contains_key(name), "no TYPE for {name}");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "duplicate: {line}"
        );
    }
    samples
}

#[test]
fn metrics_parse_and_count_the_traffic_and_status_renders() {
    let dir = temp_dir("metrics");
    std::fs::write(dir.join("ok.txt"), "fine").unwrap();
    let srv = Opts::http("epoll-et")
        .arg("--root", dir.to_str().unwrap())
        .arg("--admin", "127.0.0.1:0")
        .arg("--access-log", "off")
        .arg("--threads", "2")
        .spawn();
    let admin = srv.admin_addr().expect("a `listening admin` line");
    let mut body_bytes = 0;
    for _ in 0..7 {
        let r = get(srv.tcp, "/ok.txt");
        assert_eq!(r.status, 200);
        body_bytes += r.body.len();
    }
    for _ in 0..3 {
        assert_eq!(get(srv.tcp, "/missing").status, 404);
    }
    let metrics = get(admin, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(metrics.body).unwrap();
    let m = parse_prometheus(&text);
    let at = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(at("keel_http_responses_total{class=\"2xx\"}"), 7.0);
    assert_eq!(at("keel_http_responses_total{class=\"4xx\"}"), 3.0);
    assert_eq!(at("keel_http_responses_total{class=\"5xx\"}"), 0.0);
    // The scrape's own connection is one the server accepted too.
    assert_eq!(at("keel_connections_accepted_total"), 11.0);
    assert!(at("keel_bytes_sent_total") >= body_bytes as f64);
    assert!(at("keel_bytes_received_total") > 0.0);
    let wakeups: Vec<_> = m
        .keys()
        .filter(|k| k.starts_with("keel_loop_wakeups_total{"))
        .collect();
    assert_eq!(wakeups.len(), 2, "one series per loop: {wakeups:?}");

    let status = get(admin, "/status");
    assert_eq!(status.status, 200);
    let html = String::from_utf8(status.body).unwrap();
    assert!(html.contains("http-equiv=\"refresh\""), "{html}");
    assert!(html.contains("multi-reactor"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every concurrency model serves the admin pages, with counters that add up over its
/// threads or processes (prefork and process-per-conn children publish theirs every 100 ms:
/// poll until they show).
#[test]
fn metrics_under_every_model() {
    let dir = temp_dir("metrics-models");
    std::fs::write(dir.join("ok.txt"), "fine").unwrap();
    for model in MODELS {
        let srv = Opts::http("epoll-et")
            .arg("--root", dir.to_str().unwrap())
            .arg("--admin", "127.0.0.1:0")
            .arg("--access-log", "off")
            .arg("--model", model)
            .arg("--threads", "2")
            .spawn();
        let admin = srv.admin_addr().expect("a `listening admin` line");
        // One keep-alive connection: under thread- and process-per-conn a new connection
        // right after one closed may find its slot not yet freed and be refused (see
        // tests/models.rs), and a refusal is an accepted connection too.
        let mut site = connect(srv.tcp);
        for _ in 0..3 {
            assert_eq!(get_on(&mut site, "/ok.txt").status, 200, "{model}");
        }
        assert_eq!(get_on(&mut site, "/nope").status, 404, "{model}");
        drop(site);
        let mut scrapes = 0.0;
        let deadline = Instant::now() + Duration::from_secs(5);
        let last = loop {
            let r = get(admin, "/metrics");
            scrapes += 1.0;
            let text = String::from_utf8(r.body).unwrap();
            let m = parse_prometheus(&text);
            // Admin connections are accepted connections too: one per scrape so far.
            let seen = (
                m.get("keel_http_responses_total{class=\"2xx\"}").copied(),
                m.get("keel_http_responses_total{class=\"4xx\"}").copied(),
                m.get("keel_connections_accepted_total").copied(),
            );
            if seen == (Some(3.0), Some(1.0), Some(1.0 + scrapes)) {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "{model}: counters (2xx, 4xx, accepted) {seen:?} after {scrapes} scrapes"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            last.contains(&format!("model=\"{model}\"")),
            "{model}: {last}"
        );
        assert_eq!(get(admin, "/status").status, 200, "{model}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The admin listener is outside `--max-conns`: with the site full, /metrics and /status
/// still answer, and their connections are not counted as the site's refusals.
#[test]
fn the_admin_listener_answers_when_the_site_is_full() {
    let dir = temp_dir("admin-full");
    std::fs::write(dir.join("ok.txt"), "fine").unwrap();
    for model in MODELS {
        let srv = Opts::http("epoll-lt")
            .arg("--root", dir.to_str().unwrap())
            .arg("--admin", "127.0.0.1:0")
            .arg("--access-log", "off")
            .arg("--model", model)
            .arg("--threads", "2")
            .arg("--max-conns", "1")
            .spawn();
        let admin = srv.admin_addr().expect("a `listening admin` line");
        // The site's one connection, served and held open.
        let mut held = connect(srv.tcp);
        assert_eq!(get_on(&mut held, "/ok.txt").status, 200, "{model}");
        for path in ["/metrics", "/status", "/metrics"] {
            assert_eq!(
                get(admin, path).status,
                200,
                "{model}: {path} with the site full"
            );
        }
        let text = String::from_utf8(get(admin, "/metrics").body).unwrap();
        let m = parse_prometheus(&text);
        assert_eq!(
            m.get("keel_connections_refused_total{reason=\"limit\"}")
                .copied(),
            Some(0.0),
            "{model}: admin connections counted as refusals:\n{text}"
        );
        drop(held);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// /status in a real browser: headless Chromium renders it and takes a screenshot (skipped,
/// with the reason, where Chromium is not installed).
#[test]
fn status_page_renders_in_headless_chromium() {
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let srv = Opts::http("epoll-et")
        .arg("--admin", "127.0.0.1:0")
        .arg("--access-log", "off")
        .spawn();
    let admin = srv.admin_addr().unwrap();
    let dir = temp_dir("chromium");
    let url = format!("http://{admin}/status");
    let png = browser::screenshot(chromium, &url, &dir.join("status.png"));
    assert!(png.len() > 5_000, "a blank page? {} bytes", png.len());
    // The page also parses as a document with the figures in it.
    let dom = browser::dump_dom(chromium, &url);
    assert!(dom.contains("keel") && dom.contains("<table"), "{dom}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server's own log lines go through tracing to `--log-file` (asynchronously), filtered by
/// `--log-filter`; SIGUSR1 reopens that file too.
#[test]
fn server_log_lines_go_to_the_log_file() {
    let dir = temp_dir("logfile");
    let log = dir.join("keel.log");
    let conf = dir.join("keel.toml");
    write_config(&conf, "[http]\naccess_log = \"off\"\n");
    let srv = Opts::http("epoll-et")
        .arg("--config", conf.to_str().unwrap())
        .arg("--log-file", log.to_str().unwrap())
        .arg("--log-filter", "info")
        .spawn();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    poll_until("the start line", Duration::from_secs(3), || {
        read(&log).contains("http server starting")
    });
    srv.signal(Signal::SIGHUP);
    poll_until("the reload line", Duration::from_secs(5), || {
        read(&log).contains("configuration reloaded")
    });
    let text = read(&log);
    let line = text
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(line.contains("INFO"), "level in the line: {line}");
    assert!(line.starts_with("20"), "a timestamp first: {line}");
    // Rotation: SIGUSR1 and the next line lands in a new file.
    std::fs::rename(&log, dir.join("keel.log.1")).unwrap();
    srv.signal(Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(300));
    srv.signal(Signal::SIGHUP);
    poll_until(
        "a line in the reopened file",
        Duration::from_secs(5),
        || read(&log).contains("configuration reloaded"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A free port on 127.0.0.1 (bound, then released).
/// Two distinct ports that were free a moment ago. Both are held while the second is chosen:
/// picked one after the other, the kernel can hand out the same port twice (about once in
/// 7,000 tries here), and a "move" from a port to itself never refuses on the old address.
fn two_free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    assert_ne!(pa, pb);
    (pa, pb)
}

/// `keel SERVER --config FILE` as a plain child (its listen address comes from the file, which
/// a reload may change), killed if a test fails before it stops the server itself.
struct FromConfig {
    child: std::process::Child,
    pid: nix::unistd::Pid,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl FromConfig {
    /// Starts it and checks its first line: listening on `port`.
    fn start(server: &str, conf: &Path, port: u16) -> FromConfig {
        let mut child = std::process::Command::new(util::keel_bin())
            .args([server, "--config", conf.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
        let server = FromConfig { child, pid, stdout };
        assert_eq!(first.trim(), format!("listening tcp 127.0.0.1:{port}"));
        server
    }

    /// SIGTERM; the exit status must be success. Returns what it wrote to stdout after the
    /// first line (read to the end, so a missing line cannot hang the test).
    fn stop_with_output(mut self) -> String {
        use std::io::Read;
        nix::sys::signal::kill(self.pid, Signal::SIGTERM).unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self); // reaped: its pid must not be signalled again
        assert!(status.success(), "{status:?}");
        rest
    }

    /// SIGTERM, then the exit status must be success.
    fn stop(mut self) {
        nix::sys::signal::kill(self.pid, Signal::SIGTERM).unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self); // reaped: its pid must not be signalled again
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for FromConfig {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// SIGHUP with a new `listen` moves the server: the new address serves, the old one refuses,
/// and a keep-alive connection accepted on the old one carries on.
#[test]
fn sighup_reload_moves_the_listener() {
    let dir = temp_dir("relisten");
    std::fs::write(dir.join("p.txt"), "here").unwrap();
    let conf = dir.join("keel.toml");
    let (old_port, new_port) = two_free_ports();
    let config = |port: u16| {
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nroot = {:?}\naccess_log = \"off\"\nthreads = 2\n",
            dir.display().to_string()
        )
    };
    write_config(&conf, &config(old_port));
    let server = FromConfig::start("http", &conf, old_port);
    let pid = server.pid;
    let old: SocketAddr = format!("127.0.0.1:{old_port}").parse().unwrap();
    let new: SocketAddr = format!("127.0.0.1:{new_port}").parse().unwrap();
    let mut kept = connect(old);
    assert_eq!(get_on(&mut kept, "/p.txt").body, b"here");

    write_config(&conf, &config(new_port));
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    poll_until("the new address to serve", Duration::from_secs(5), || {
        TcpStream::connect(new).is_ok_and(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            get_on(&mut s, "/p.txt").body == b"here"
        })
    });
    poll_until("the old address to refuse", Duration::from_secs(5), || {
        TcpStream::connect(old).is_err()
    });
    assert_eq!(get_on(&mut kept, "/p.txt").body, b"here");

    // stdout says where, as at start (a port 0 is known only from this line).
    let rest = server.stop_with_output();
    assert!(
        rest.lines().any(|l| l == format!("listening tcp {new}")),
        "stdout after the reload: {rest:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SIGHUP while the server drains after SIGTERM is ignored: a new `listen` in the file
/// must not open a listener and take new clients into a server on its way out. (It did:
/// "now listening on NEW", and the new port echoed.)
#[test]
fn a_sighup_while_stopping_opens_no_listener() {
    let dir = temp_dir("relisten-stopping");
    let conf = dir.join("keel.toml");
    let (old_port, new_port) = two_free_ports();
    let config = |port: u16| {
        format!(
            "[echo]\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\ndrain_timeout = 3\n\
             linger_timeout = 10\n"
        )
    };
    write_config(&conf, &config(old_port));
    let server = FromConfig::start("echo", &conf, old_port);
    let old: SocketAddr = format!("127.0.0.1:{old_port}").parse().unwrap();
    let new: SocketAddr = format!("127.0.0.1:{new_port}").parse().unwrap();
    // Held open and never closed: both loops keep draining until the drain timeout.
    let held: Vec<TcpStream> = (0..8).map(|_| connect(old)).collect();
    nix::sys::signal::kill(server.pid, Signal::SIGTERM).unwrap();
    poll_until("the old address to refuse", Duration::from_secs(2), || {
        TcpStream::connect(old).is_err()
    });
    std::thread::sleep(Duration::from_millis(300));
    write_config(&conf, &config(new_port));
    nix::sys::signal::kill(server.pid, Signal::SIGHUP).unwrap();
    let until = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < until {
        assert!(
            TcpStream::connect(new).is_err(),
            "a stopping server listens on the address a SIGHUP gave it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut server = server;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut server.stdout, &mut rest).unwrap();
    let status = server.child.wait().unwrap();
    std::mem::forget(server); // reaped: its pid must not be signalled again
    assert!(status.success(), "{status:?}");
    assert!(
        !rest.contains(&format!("127.0.0.1:{new_port}")),
        "stdout while stopping: {rest:?}"
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload to another address on the port the server holds (127.0.0.1:P to 0.0.0.0:P): the
/// new listeners bind beside the server's own, which must not be taken for another server's.
#[test]
fn sighup_reload_to_all_addresses_on_the_same_port() {
    let dir = temp_dir("relisten-same-port");
    let conf = dir.join("keel.toml");
    let (port, _) = two_free_ports();
    let config = |ip: &str| format!("[discard]\nlisten = \"{ip}:{port}\"\nthreads = 2\n");
    write_config(&conf, &config("127.0.0.1"));
    let server = FromConfig::start("discard", &conf, port);
    // A listening socket on 0.0.0.0:P in /proc/net/tcp (state 0A).
    let wildcard = format!("00000000:{port:04X}");
    let listens_on_all = || {
        std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == wildcard && f[3] == "0A"
            })
        })
    };
    assert!(!listens_on_all());
    write_config(&conf, &config("0.0.0.0"));
    nix::sys::signal::kill(server.pid, Signal::SIGHUP).unwrap();
    poll_until(
        "listeners on 0.0.0.0",
        Duration::from_secs(5),
        listens_on_all,
    );
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    poll_until("the port to take bytes", Duration::from_secs(5), || {
        TcpStream::connect(local).is_ok_and(|mut s| s.write_all(&[7u8; 4096]).is_ok())
    });
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Discard reloads too: a new `listen` moves it, and what it reads is still dropped.
#[test]
fn sighup_reload_moves_discard() {
    let dir = temp_dir("relisten-discard");
    let conf = dir.join("keel.toml");
    let (old_port, new_port) = two_free_ports();
    let config = |port: u16| format!("[discard]\nlisten = \"127.0.0.1:{port}\"\nthreads = 1\n");
    write_config(&conf, &config(old_port));
    let server = FromConfig::start("discard", &conf, old_port);
    let pid = server.pid;
    let old: SocketAddr = format!("127.0.0.1:{old_port}").parse().unwrap();
    let new: SocketAddr = format!("127.0.0.1:{new_port}").parse().unwrap();
    write_config(&conf, &config(new_port));
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    poll_until(
        "the new address to take bytes",
        Duration::from_secs(5),
        || TcpStream::connect(new).is_ok_and(|mut s| s.write_all(&[7u8; 4096]).is_ok()),
    );
    poll_until("the old address to refuse", Duration::from_secs(5), || {
        TcpStream::connect(old).is_err()
    });
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Echo's UDP side moves with its TCP side when a reload changes `listen`.
#[test]
fn sighup_reload_moves_echo_udp_too() {
    let dir = temp_dir("relisten-udp");
    let conf = dir.join("keel.toml");
    let (old_port, new_port) = two_free_ports();
    let config = |port: u16| format!("[echo]\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\n");
    write_config(&conf, &config(old_port));
    let server = FromConfig::start("echo", &conf, old_port);
    let pid = server.pid;
    let echoes = |port: u16| {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        u.send_to(b"ping", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 16];
        matches!(u.recv_from(&mut buf), Ok((4, _)))
    };
    // The control loop may not be turning yet right after the listening line.
    poll_until("UDP on the first port", Duration::from_secs(5), || {
        echoes(old_port)
    });
    write_config(&conf, &config(new_port));
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    poll_until("UDP on the new port", Duration::from_secs(5), || {
        echoes(new_port)
    });
    assert!(!echoes(old_port), "UDP still answers on the old port");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client waiting in the old listener's queue when a reload moves the listener is served,
/// not reset. Here the loop is busy in a handler (`work_ms`) while a client connects and the
/// reload comes. (The loop takes the waiting connection before the reload's task here; the
/// narrower window, a connection queued after, is what `close_tcp_listeners` accepting the
/// queue first covers, and no test here can time it.)
#[test]
fn a_listen_move_keeps_the_connections_queued_on_the_old_address() {
    let dir = temp_dir("relisten-queued");
    let conf = dir.join("keel.toml");
    let (old_port, new_port) = two_free_ports();
    let config =
        |port: u16| format!("[echo]\nlisten = \"127.0.0.1:{port}\"\nthreads = 1\nwork_ms = 400\n");
    write_config(&conf, &config(old_port));
    let server = FromConfig::start("echo", &conf, old_port);
    let old: SocketAddr = format!("127.0.0.1:{old_port}").parse().unwrap();
    let mut busy = connect(old);
    busy.write_all(b"a").unwrap(); // the loop sleeps 400 ms in the handler
    std::thread::sleep(Duration::from_millis(50));
    let mut queued = connect(old); // completed by the kernel, not yet accepted
    queued.write_all(b"q").unwrap();
    write_config(&conf, &config(new_port));
    nix::sys::signal::kill(server.pid, Signal::SIGHUP).unwrap();
    queued
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = [0u8; 1];
    let read = std::io::Read::read(&mut queued, &mut got);
    assert!(
        matches!(read, Ok(1)) && got == *b"q",
        "the queued client: {read:?}"
    );
    drop((busy, queued));
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A move within echo's own port (127.0.0.1:P to 0.0.0.0:P) takes its UDP socket along: the
/// new one binds while the old is still open, which overlaps it. It used to fail with
/// "address already in use" and leave the server on the old address.
#[test]
fn sighup_reload_moves_echo_within_its_port() {
    let dir = temp_dir("relisten-same-port");
    let conf = dir.join("keel.toml");
    let (port, _) = two_free_ports();
    let config = |host: &str| format!("[echo]\nlisten = \"{host}:{port}\"\nthreads = 2\n");
    write_config(&conf, &config("127.0.0.1"));
    let server = FromConfig::start("echo", &conf, port);
    write_config(&conf, &config("0.0.0.0"));
    nix::sys::signal::kill(server.pid, Signal::SIGHUP).unwrap();
    // 127.0.0.2 is served only by the wildcard address, over TCP and UDP.
    let udp_echoes = || {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        u.send_to(b"ping", ("127.0.0.2", port)).unwrap();
        let mut buf = [0u8; 16];
        matches!(u.recv_from(&mut buf), Ok((4, _)))
    };
    poll_until(
        "the wildcard address to serve",
        Duration::from_secs(5),
        || TcpStream::connect(("127.0.0.2", port)).is_ok() && udp_echoes(),
    );
    let rest = server.stop_with_output();
    for proto in ["tcp", "udp"] {
        assert!(
            rest.lines()
                .any(|l| l == format!("listening {proto} 0.0.0.0:{port}")),
            "stdout after the reload: {rest:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// stderr a reader stopped reading (a full pipe): the log lines that find no room are dropped
/// and counted, so a loop that logs is not frozen and a stop still ends within its drain.
/// It used to block in write(2) on fd 2: the control thread on its "stopping" line, before
/// the watchdog that bounds a stop was armed, for good (one instance sat 20 minutes).
#[test]
fn a_stderr_nobody_reads_neither_freezes_the_server_nor_holds_its_stop() {
    let dir = temp_dir("stuck-stderr");
    std::fs::write(dir.join("x.txt"), "x").unwrap();
    let mut child = std::process::Command::new(util::keel_bin())
        .args(["http", "--listen", "127.0.0.1:0", "--threads", "1"])
        .args(["--drain-timeout", "1", "--access-log", "/dev/stderr"])
        .arg("--root")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped()) // held, never read
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let addr = util::first_listening_addr(&mut child);
    // 5,000 access log lines: far more than a pipe holds.
    let mut s = connect(addr);
    let req = b"GET /x.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    s.write_all(&req.repeat(5000)).unwrap();
    // Counted over everything read so far: a status line may straddle two reads.
    let (mut all, mut counted, mut got) = (Vec::new(), 0, 0);
    let mut buf = vec![0u8; 1 << 16];
    while got < 5000 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} responses");
        all.extend_from_slice(&buf[..n]);
        got += all[counted..]
            .windows(12)
            .filter(|w| w == b"HTTP/1.1 200")
            .count();
        counted = all.len().saturating_sub(11);
    }
    drop(s);
    // Logging still works around it: a SIGUSR1 (logged) and a new request on the loop.
    nix::sys::signal::kill(pid, Signal::SIGUSR1).unwrap();
    let r = get(addr, "/x.txt");
    assert_eq!(r.status, 200);
    let start = Instant::now();
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(6) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 6 s after SIGTERM with a full stderr");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Shared helpers for keel's loopback integration tests.
//!
//! Everything here drives the real `keel` binary through what `docs/cli-contract.md` promises:
//! the `listening tcp ADDR` / `listening udp ADDR` lines on stdout, the `stats ...` line on stderr
//! after SIGUSR2 (and at exit), exit codes, and plain TCP/UDP on 127.0.0.1.
//!
//! Every wait is bounded: sockets get read/write timeouts, and every polling loop has a deadline,
//! so a broken server fails a test instead of hanging it. A started server is killed by PID when
//! its [`Server`] is dropped, so a failing (panicking) test never leaves one running.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code, unused_macros, unused_imports)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod browser;
pub mod lib_server;

/// The readiness engines the contract names: the four the notes teach, and io_uring's polls.
pub const ENGINES: [&str; 5] = ["select", "poll", "epoll-lt", "epoll-et", "uring"];

/// Default timeout for socket reads and writes in tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the `listening tcp` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for a `stats` line after SIGUSR2.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Generates one `#[test]` per engine calling `$f(engine)`: `$f::select`, `$f::poll`,
/// `$f::epoll_lt`, `$f::epoll_et`, `$f::uring`.
macro_rules! per_engine {
    ($f:ident) => {
        mod $f {
            #[test]
            fn select() {
                super::$f("select")
            }
            #[test]
            fn poll() {
                super::$f("poll")
            }
            #[test]
            fn epoll_lt() {
                super::$f("epoll-lt")
            }
            #[test]
            fn epoll_et() {
                super::$f("epoll-et")
            }
            #[test]
            fn uring() {
                super::$f("uring")
            }
        }
    };
}
pub(crate) use per_engine;

// ---------------------------------------------------------------------------------------------
// Process-wide setup
// ---------------------------------------------------------------------------------------------

/// Raises this test process's soft RLIMIT_NOFILE to its hard limit (once): several tests in one
/// binary hold hundreds of client sockets at the same time.
pub fn raise_own_nofile() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        if let Ok((_soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Deterministic pseudo-random data
// ---------------------------------------------------------------------------------------------

/// xorshift64* — small, deterministic, good enough to make every byte position distinct-ish.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never let the state be zero; mix the seed so that nearby seeds differ at once.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes determined by `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

/// How to start a server.
#[derive(Clone, Debug)]
pub struct Opts {
    /// `echo`, `discard`, `http`, `proxy` or `chat`.
    pub sub: &'static str,
    pub engine: String,
    /// Extra arguments, e.g. `["--idle-timeout", "0.5"]`.
    pub args: Vec<String>,
    /// If set, the child's RLIMIT_NOFILE (soft and hard) is set to this before exec.
    pub nofile: Option<u64>,
}

/// Whether a server here may run on io_uring (asked once, of a `keel echo --engine uring`
/// that is started and stopped). Not by making a ring in this process: the teardown of a ring
/// may interrupt the thread that made it, and a test's blocking read there fails with EINTR.
fn uring_works_here() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let mut child = match Command::new(keel_bin())
            .args([
                "echo",
                "--listen",
                "127.0.0.1:0",
                "--engine",
                "uring",
                "--threads",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(_) => return false,
        };
        let stdout = child.stdout.take().expect("piped");
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first);
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let out = child.wait_with_output();
        let err = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
        !err.unwrap_or_default().contains("io_uring unavailable")
    })
}

/// The engine a server the test asked to run on `engine` runs: `KEEL_TEST_ENGINE` if set and
/// `engine` is the default (`epoll-et`), so that `KEEL_TEST_ENGINE=uring ./scripts/test` runs
/// the suite's servers on another engine. Tests written for one engine in particular name
/// another and are left alone, and so are leader-followers servers, which run on epoll only.
fn engine_for_test(engine: &str, args: &[String]) -> String {
    match std::env::var("KEEL_TEST_ENGINE") {
        Ok(e)
            if engine == "epoll-et"
                && !e.is_empty()
                && !args.iter().any(|a| a == "leader-followers") =>
        {
            e
        }
        _ => engine.to_string(),
    }
}

impl Opts {
    pub fn echo(engine: &str) -> Opts {
        Opts {
            sub: "echo",
            engine: engine.to_string(),
            args: Vec::new(),
            nofile: None,
        }
    }

    /// `keel http` (add `--root DIR` with [`Opts::arg`]; without it, the welcome page).
    pub fn http(engine: &str) -> Opts {
        Opts {
            sub: "http",
            ..Opts::echo(engine)
        }
    }

    pub fn discard(engine: &str) -> Opts {
        Opts {
            sub: "discard",
            ..Opts::echo(engine)
        }
    }

    /// `keel proxy` in front of `backends`, in that order.
    pub fn proxy(engine: &str, backends: &[SocketAddr]) -> Opts {
        let mut o = Opts {
            sub: "proxy",
            ..Opts::echo(engine)
        };
        for b in backends {
            o = o.arg("--backend", &b.to_string());
        }
        o
    }

    /// `keel chat`.
    pub fn chat(engine: &str) -> Opts {
        Opts {
            sub: "chat",
            ..Opts::echo(engine)
        }
    }

    pub fn arg(mut self, name: &str, value: &str) -> Opts {
        self.args.push(name.to_string());
        self.args.push(value.to_string());
        self
    }

    /// One argument on its own (`--splice=false`).
    pub fn flag(mut self, arg: &str) -> Opts {
        self.args.push(arg.to_string());
        self
    }

    pub fn nofile(mut self, n: u64) -> Opts {
        self.nofile = Some(n);
        self
    }

    pub fn spawn(self) -> Server {
        Server::spawn(self)
    }
}

/// A running `keel` child process. Killed (SIGKILL, by PID) and reaped on drop.
pub struct Server {
    child: Mutex<Option<Child>>,
    pub pid: i32,
    pub engine: String,
    /// `echo`, `discard` or `http`.
    pub sub: &'static str,
    /// The TCP address from the `listening tcp` line.
    pub tcp: SocketAddr,
    stdout_rx: Mutex<Receiver<String>>,
    stdout_seen: Mutex<Vec<String>>,
    stderr_rx: Mutex<Receiver<String>>,
    /// Every stderr line seen so far (for failure messages).
    stderr_seen: Mutex<Vec<String>>,
}

/// Starts a line-reading thread that forwards each line of `r` to the returned channel.
fn line_pump<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        // Bounded by the pipe: the loop ends at EOF, i.e. when the child exits.
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Every concurrency model's `--model` name, for tests that must hold under each of them.
pub const MODELS: [&str; 6] = [
    "multi-reactor",
    "prefork",
    "half-sync",
    "leader-followers",
    "thread-per-conn",
    "process-per-conn",
];

/// A fresh directory for one test: `keel-NAME-PID` in the system's temporary directory.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn keel_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keel")
}

impl Server {
    /// Starts `keel SUB --listen 127.0.0.1:0 --engine ENGINE ARGS...` and waits (bounded) for its
    /// `listening tcp ADDR` line. Panics, with the child's stderr, if it does not come.
    pub fn spawn(mut opts: Opts) -> Server {
        raise_own_nofile();
        opts.engine = engine_for_test(&opts.engine, &opts.args);
        let mut cmd = Command::new(keel_bin());
        cmd.arg(opts.sub)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--engine")
            .arg(&opts.engine)
            .args(&opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let nofile = opts.nofile;
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
        // calls are allowed. It calls only setrlimit and prctl (both plain syscalls, signal-safe)
        // and builds an io::Error from errno (no allocation); it touches no locks and no heap.
        unsafe {
            cmd.pre_exec(move || {
                // Kill the server if the thread that started it dies (e.g. the test binary is
                // killed): a belt to the braces of Server's Drop.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", keel_bin()));
        let pid = child.id() as i32;
        let stdout_rx = line_pump(child.stdout.take().expect("stdout piped"));
        let stderr_rx = line_pump(child.stderr.take().expect("stderr piped"));
        let mut server = Server {
            child: Mutex::new(Some(child)),
            pid,
            engine: opts.engine.clone(),
            sub: opts.sub,
            tcp: "0.0.0.0:0".parse().unwrap(),
            stdout_rx: Mutex::new(stdout_rx),
            stdout_seen: Mutex::new(Vec::new()),
            stderr_rx: Mutex::new(stderr_rx),
            stderr_seen: Mutex::new(Vec::new()),
        };
        let tcp = match server.wait_stdout_addr("listening tcp ", START_TIMEOUT) {
            Some(a) => a,
            None => {
                let exited = server.try_wait();
                panic!(
                    "keel {} --engine {} {:?}: no `listening tcp ADDR` line within {:?} \
                     (exit status: {:?})\nstdout: {:?}\n{}",
                    opts.sub,
                    opts.engine,
                    opts.args,
                    START_TIMEOUT,
                    exited,
                    server.stdout_seen.lock().unwrap(),
                    server.stderr_dump()
                );
            }
        };
        server.tcp = tcp;
        // A kernel that refuses io_uring (too old, `kernel.io_uring_disabled`, seccomp) gets
        // the documented fallback: the server says so and runs on epoll-et, and the tests go on
        // against the engine that runs.
        if server.engine == "uring"
            && !uring_works_here()
            && server.stderr_has("io_uring unavailable", Duration::from_secs(2))
        {
            eprintln!("note: io_uring refused here; this server runs on epoll-et");
            server.engine = "epoll-et".to_string();
        }
        server
    }

    /// Waits up to `timeout` for a stdout line starting with `prefix` and parses the address
    /// that follows it.
    fn wait_stdout_addr(&self, prefix: &str, timeout: Duration) -> Option<SocketAddr> {
        let find = |seen: &[String]| {
            seen.iter()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.trim().parse::<SocketAddr>().ok())
        };
        if let Some(a) = find(&self.stdout_seen.lock().unwrap()) {
            return Some(a);
        }
        let deadline = Instant::now() + timeout;
        let rx = self.stdout_rx.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let mut seen = self.stdout_seen.lock().unwrap();
                    seen.push(line);
                    if let Some(a) = find(&seen) {
                        return Some(a);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                // stdout closed: the child exited or closed it; nothing more will come.
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The UDP address from the `listening udp ADDR` line (echo only), waiting up to 5 s.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.wait_stdout_addr("listening udp ", Duration::from_secs(5))
    }

    /// The admin address from the `listening admin ADDR` line (`--admin`), waiting up to 5 s.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.wait_stdout_addr("listening admin ", Duration::from_secs(5))
    }

    /// All stdout lines seen so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_seen.lock().unwrap().clone()
    }

    /// The child's stderr so far, for failure messages (drains what is pending first).
    pub fn stderr_dump(&self) -> String {
        self.drain_stderr();
        let seen = self.stderr_seen.lock().unwrap();
        let mut s = String::from("--- keel stderr (last 40 lines) ---\n");
        for l in seen.iter().rev().take(40).rev() {
            let _ = writeln!(s, "{l}");
        }
        s
    }

    /// Waits (bounded by `timeout`) until a stderr line contains `needle`: log lines go
    /// through an asynchronous writer and may come a moment after the event.
    pub fn stderr_has(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain_stderr();
            if self
                .stderr_seen
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn drain_stderr(&self) {
        let rx = self.stderr_rx.lock().unwrap();
        let mut seen = self.stderr_seen.lock().unwrap();
        // Bounded: try_recv only returns what is already queued.
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
    }

    /// Sends `sig` to the server (by its PID).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig:?}): {e}", self.pid));
    }

    /// Waits up to `timeout` for a stderr line starting with `stats `, recording other lines.
    fn wait_stats_line(&self, timeout: Duration) -> Option<Stats> {
        let deadline = Instant::now() + timeout;
        let rx = self.stderr_rx.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.lock().unwrap().push(line.clone());
                    if let Some(s) = Stats::parse(&line) {
                        return Some(s);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends SIGUSR2 and returns the `stats` line it produces. Panics if none comes within 5 s.
    pub fn stats(&self) -> Stats {
        self.drain_stderr();
        self.signal(Signal::SIGUSR2);
        match self.wait_stats_line(STATS_TIMEOUT) {
            Some(s) => s,
            None => panic!(
                "no `stats` line on stderr within {STATS_TIMEOUT:?} of SIGUSR2 (server alive: {})\n{}",
                self.is_running(),
                self.stderr_dump()
            ),
        }
    }

    /// Polls `stats()` every 100 ms until `pred` holds or `timeout` passes; returns the last stats
    /// and whether `pred` held.
    pub fn stats_until(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> (Stats, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if pred(&s) {
                return (s, true);
            }
            if Instant::now() >= deadline {
                return (s, false);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn try_wait(&self) -> Option<ExitStatus> {
        let mut g = self.child.lock().unwrap();
        match g.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        }
    }

    pub fn is_running(&self) -> bool {
        let mut g = self.child.lock().unwrap();
        match g.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for the child to exit. Returns its status, or None on timeout.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// After the child exited: the last `stats` line it wrote to stderr (waits up to 2 s for the
    /// pipe to drain).
    pub fn final_stats(&self) -> Option<Stats> {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        let rx = self.stderr_rx.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(s) = Stats::parse(&line) {
                        last = Some(s);
                    }
                    self.stderr_seen.lock().unwrap().push(line);
                }
                Err(_) => break,
            }
        }
        if last.is_none() {
            // It may have been consumed already into stderr_seen by an earlier call.
            last = self
                .stderr_seen
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find_map(|l| Stats::parse(l));
        }
        last
    }

    /// Number of open fds of the server (entries in /proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        fd_count(self.pid)
    }

    /// The fd count once the server is fully up, to compare later counts with: for `echo`, after
    /// its `listening udp` line too (the UDP socket may be opened after the TCP line is printed),
    /// then once the count is stable over 3 reads 50 ms apart (2 s bound).
    pub fn baseline_fds(&self) -> usize {
        if self.sub == "echo" {
            let _ = self.udp_addr();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.fd_count();
        let mut same = 0;
        while same < 3 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            let n = self.fd_count();
            if n == last {
                same += 1;
            } else {
                same = 0;
                last = n;
            }
        }
        last
    }

    /// How many of the server's open fds have numbers under `limit`: RLIMIT_NOFILE bounds the
    /// numbers of new fds, so an inherited fd above it takes none of the room under it.
    pub fn fds_below(&self, limit: u64) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                    .filter(|&fd| fd < limit)
                    .count() as u64
            })
            .unwrap_or(0)
    }

    /// `fd -> link target` for every open fd of the server (for failure messages).
    pub fn fd_listing(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) {
            for e in rd.flatten() {
                let target = std::fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("<{e}>"));
                v.push(format!("{} -> {}", e.file_name().to_string_lossy(), target));
            }
        }
        v.sort();
        v
    }

    /// Polls the fd count every 50 ms until it equals `want` or `timeout` passes; returns the last
    /// count seen.
    pub fn fd_count_settles_to(&self, want: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.fd_count();
            if n == want || Instant::now() >= deadline {
                return n;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// User + system CPU time consumed by the server so far (all threads).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid)
    }

    /// TCP sockets in /proc/net/tcp{,6} on the server's side of its port (local port = the
    /// listening port), LISTEN excluded.
    pub fn server_side_sockets(&self) -> Vec<TcpEntry> {
        let port = self.tcp.port();
        tcp_table()
            .into_iter()
            .filter(|e| e.local_port == port && e.state != TCP_LISTEN)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(mut g) = self.child.lock() {
            if let Some(mut c) = g.take() {
                if let Ok(None) = c.try_wait() {
                    let _ = c.kill(); // SIGKILL to this child's PID only
                }
                let _ = c.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stats line
// ---------------------------------------------------------------------------------------------

/// A parsed `stats key=value ...` line.
#[derive(Clone, Debug)]
pub struct Stats {
    pub line: String,
    pub fields: BTreeMap<String, String>,
}

impl Stats {
    pub fn parse(line: &str) -> Option<Stats> {
        let rest = line.trim().strip_prefix("stats ")?;
        let mut fields = BTreeMap::new();
        for kv in rest.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                fields.insert(k.to_string(), v.to_string());
            }
        }
        Some(Stats {
            line: line.to_string(),
            fields,
        })
    }

    /// A numeric counter. Panics (with the line) if it is missing or not a number.
    pub fn get(&self, key: &str) -> u64 {
        match self.fields.get(key).map(|v| v.parse::<u64>()) {
            Some(Ok(n)) => n,
            _ => panic!("stats line lacks numeric `{key}=`: {:?}", self.line),
        }
    }

    pub fn engine(&self) -> Option<&str> {
        self.fields.get("engine").map(|s| s.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------------------------

/// A process's resident set, in KiB (0 if it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name (field 2) may contain spaces; fields after the last ')' are plain.
    let after = &stat[stat.rfind(')').expect("stat has ')'") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f[11].parse().expect("utime");
    let stime: u64 = f[12].parse().expect("stime");
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Duration::from_micros((utime + stime) * 1_000_000 / hz)
}

pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_FIN_WAIT1: u8 = 0x04;
pub const TCP_FIN_WAIT2: u8 = 0x05;
pub const TCP_TIME_WAIT: u8 = 0x06;
pub const TCP_CLOSE_WAIT: u8 = 0x08;
pub const TCP_LAST_ACK: u8 = 0x09;
pub const TCP_LISTEN: u8 = 0x0A;

pub fn tcp_state_name(st: u8) -> &'static str {
    match st {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "?",
    }
}

/// One row of /proc/net/tcp or /proc/net/tcp6.
#[derive(Clone, Debug)]
pub struct TcpEntry {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
    /// Socket inode; 0 for an orphan (no process holds it any more).
    pub inode: u64,
}

impl std::fmt::Display for TcpEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            ":{} -> :{} {}{}",
            self.local_port,
            self.remote_port,
            tcp_state_name(self.state),
            if self.inode == 0 { " (orphan)" } else { "" }
        )
    }
}

fn parse_port(addr: &str) -> Option<u16> {
    let (_, port) = addr.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

/// Every TCP socket in this network namespace (IPv4 and IPv6 tables).
pub fn tcp_table() -> Vec<TcpEntry> {
    let mut v = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(lp), Some(rp), Ok(st)) = (
                parse_port(f[1]),
                parse_port(f[2]),
                u8::from_str_radix(f[3], 16),
            ) else {
                continue;
            };
            v.push(TcpEntry {
                local_port: lp,
                remote_port: rp,
                state: st,
                inode: f[9].parse().unwrap_or(0),
            });
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Client sockets
// ---------------------------------------------------------------------------------------------

/// Connects with a 5 s connect timeout and sets 10 s read/write timeouts.
pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The address of a child's first stdout line, `listening tcp ADDR` (its stdout piped and
/// not yet taken).
pub fn first_listening_addr(child: &mut std::process::Child) -> SocketAddr {
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut first)
        .unwrap();
    first
        .trim()
        .strip_prefix("listening tcp ")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .parse()
        .unwrap()
}

/// An address nothing listens on, for as long as the returned socket lives: it is bound (so no
/// other test can take the port) and not listening (so a connect to it is refused).
pub fn dead_addr() -> (socket2::Socket, SocketAddr) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    (sock, addr)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Makes the next close of `s` send RST (SO_LINGER {on, 0}).
pub fn set_linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

/// How a read-until-something ended.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum End {
    /// read returned 0.
    Eof,
    /// ECONNRESET / EPIPE / ECONNABORTED.
    Reset,
    /// The read timed out (EAGAIN from SO_RCVTIMEO) or the overall deadline passed.
    Timeout,
    /// The byte limit the caller gave was reached (the stream may have more).
    Limit,
    /// Another error.
    Error(ErrorKind),
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn classify_err(e: &io::Error) -> End {
    if is_reset(e) {
        End::Reset
    } else if is_timeout(e) {
        End::Timeout
    } else {
        End::Error(e.kind())
    }
}

/// Reads into `out` until EOF, an error, `max` bytes in `out`, or `timeout` passes. Returns how
/// it ended. Changes the socket's read timeout.
pub fn read_until_end(s: &mut TcpStream, out: &mut Vec<u8>, max: usize, timeout: Duration) -> End {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if out.len() >= max {
            return End::Limit;
        }
        if left.is_zero() {
            return End::Timeout;
        }
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let want = (max - out.len()).min(buf.len());
        match s.read(&mut buf[..want]) {
            Ok(0) => return End::Eof,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return classify_err(&e),
        }
    }
}

/// Reads exactly `expected.len()` bytes within `timeout` and compares them with `expected`.
/// On mismatch or short read, returns a description.
pub fn read_expect(s: &mut TcpStream, expected: &[u8], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    while got < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "timed out after {timeout:?} with {got} of {} bytes echoed",
                expected.len()
            ));
        }
        let _ = s.set_read_timeout(Some(left.min(IO_TIMEOUT).max(Duration::from_millis(1))));
        let want = (expected.len() - got).min(buf.len());
        match s.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(format!(
                    "EOF after {got} of {} bytes echoed",
                    expected.len()
                ))
            }
            Ok(n) => {
                if buf[..n] != expected[got..got + n] {
                    let i = (0..n).find(|&i| buf[i] != expected[got + i]).unwrap();
                    return Err(format!(
                        "byte {} of {} differs: got {:#04x}, want {:#04x}",
                        got + i,
                        expected.len(),
                        buf[i],
                        expected[got + i]
                    ));
                }
                got += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "read error after {got} of {} bytes echoed: {e}",
                    expected.len()
                ))
            }
        }
    }
    Ok(())
}

/// Writes `data` in chunks whose sizes come from `rng` in `1..=max_chunk` (or one write_all when
/// `rng` is None).
pub fn write_chunked(
    s: &mut TcpStream,
    data: &[u8],
    rng: Option<&mut Rng>,
    max_chunk: usize,
) -> io::Result<()> {
    match rng {
        None => s.write_all(data),
        Some(rng) => {
            let mut off = 0;
            while off < data.len() {
                let n = rng.range(1, max_chunk).min(data.len() - off);
                s.write_all(&data[off..off + n])?;
                off += n;
            }
            Ok(())
        }
    }
}

/// Sends `data` from one thread while reading the echo in this one, so the client never stops
/// reading while it writes (no backpressure deadlock). The writer thread gets a dup of the socket;
/// if `shutdown_after` is set it calls shutdown(Write) after the last byte. Returns an error
/// description on short/mismatched echo or a write error.
pub fn echo_concurrently(
    s: &mut TcpStream,
    data: &[u8],
    chunk_seed: Option<u64>,
    shutdown_after: bool,
    timeout: Duration,
) -> Result<(), String> {
    let mut w = s.try_clone().map_err(|e| format!("dup: {e}"))?;
    thread::scope(|sc| {
        let writer = sc.spawn(move || -> io::Result<()> {
            let mut rng = chunk_seed.map(Rng::new);
            write_chunked(&mut w, data, rng.as_mut(), 16 * 1024)?;
            if shutdown_after {
                w.shutdown(Shutdown::Write)?;
            }
            Ok(())
        });
        let r = read_expect(s, data, timeout);
        let w = writer.join().expect("writer thread panicked");
        match (r, w) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(r), Ok(())) => Err(r),
            (Ok(()), Err(w)) => Err(format!("write error: {w}")),
            (Err(r), Err(w)) => Err(format!("{r}; write error: {w}")),
        }
    })
}

/// What a probe (send a few bytes, wait for the echo) saw.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Probe {
    /// connect() itself failed or timed out (5 s).
    ConnectFailed,
    /// The bytes came back.
    Served,
    /// A clean close: EOF, or a reset (on write or read).
    Closed(End),
    /// Nothing within the timeout — the connection hangs.
    Hang,
    /// Something else (short echo, wrong bytes, odd error).
    Odd,
}

/// Sends `msg` and waits up to `timeout` for it to come back.
pub fn probe(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> Probe {
    if let Err(e) = s.write_all(msg) {
        return if is_reset(&e) {
            Probe::Closed(End::Reset)
        } else {
            Probe::Odd
        };
    }
    let mut got = Vec::new();
    match read_until_end(s, &mut got, msg.len(), timeout) {
        End::Limit => {
            if got == msg {
                Probe::Served
            } else {
                Probe::Odd
            }
        }
        End::Eof if got.is_empty() => Probe::Closed(End::Eof),
        End::Reset if got.is_empty() => Probe::Closed(End::Reset),
        End::Timeout => Probe::Hang,
        _ => Probe::Odd,
    }
}

/// Connects, sends `msg`, expects the echo; retries (new connection each time) for up to
/// `timeout`. Returns the last probe result.
pub fn wait_served(addr: SocketAddr, msg: &[u8], timeout: Duration) -> Probe {
    let deadline = Instant::now() + timeout;
    loop {
        let p = match try_connect(addr) {
            Ok(mut s) => probe(&mut s, msg, Duration::from_secs(3)),
            Err(_) => Probe::ConnectFailed,
        };
        if p == Probe::Served || Instant::now() >= deadline {
            return p;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that a fresh client gets byte-exact echo service from `srv`.
pub fn assert_serves(srv: &Server, what: &str) {
    let msg = format!("still alive after {what}");
    let p = wait_served(srv.tcp, msg.as_bytes(), Duration::from_secs(5));
    assert_eq!(
        p,
        Probe::Served,
        "[{}] a new client is not echoed after {what} (server running: {})\n{}",
        srv.engine,
        srv.is_running(),
        srv.stderr_dump()
    );
}

// ---------------------------------------------------------------------------------------------
// Processes (for the multi-process concurrency models)
// ---------------------------------------------------------------------------------------------

/// The fields of /proc/PID/stat the process-model tests look at.
#[derive(Clone, Debug)]
pub struct ProcInfo {
    pub pid: i32,
    /// Field 4.
    pub ppid: i32,
    /// Field 3: R, S, D, Z, T, ...
    pub state: char,
    /// Field 2, without the parentheses.
    pub comm: String,
}

/// Parses /proc/PID/stat; None if the process is gone (or the line is odd).
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 2..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        state,
        comm,
    })
}

/// Every process whose parent is `ppid` (a scan of /proc/*/stat), sorted by PID. Zombies
/// (state `Z`) included.
pub fn children_of(ppid: i32) -> Vec<ProcInfo> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<ProcInfo> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_info)
        .filter(|p| p.ppid == ppid)
        .collect();
    v.sort_by_key(|p| p.pid);
    v
}

/// Polls `children_of(ppid)` every 20 ms until `pred` holds or `timeout` passes; returns the
/// last list and whether `pred` held.
pub fn children_until(
    ppid: i32,
    timeout: Duration,
    pred: impl Fn(&[ProcInfo]) -> bool,
) -> (Vec<ProcInfo>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let kids = children_of(ppid);
        if pred(&kids) {
            return (kids, true);
        }
        if Instant::now() >= deadline {
            return (kids, false);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `pid state comm` for each process, for failure messages.
pub fn show_procs(procs: &[ProcInfo]) -> String {
    procs
        .iter()
        .map(|p| format!("{} {} ({})", p.pid, p.state, p.comm))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// More waits on a server
// ---------------------------------------------------------------------------------------------

impl Server {
    /// Polls the server-side entries of /proc/net/tcp{,6} (local port = the listening port)
    /// until none is in one of `bad` states, for up to `timeout`. Returns the offending entries
    /// seen last (empty = good).
    pub fn wait_no_tcp_states(&self, bad: &[u8], timeout: Duration) -> Vec<TcpEntry> {
        let deadline = Instant::now() + timeout;
        loop {
            let offending: Vec<TcpEntry> = self
                .server_side_sockets()
                .into_iter()
                .filter(|e| bad.contains(&e.state))
                .collect();
            if offending.is_empty() || Instant::now() >= deadline {
                return offending;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Connects to `addr` and makes sure the connection is being served: sends one byte and waits
/// (3 s) for its echo, so the caller's own bytes start on a live connection. A server that
/// refuses the connection cleanly (EOF or reset: a per-connection model at its cap, while a
/// finished connection's slot is still being freed) is retried with a new connection every
/// 50 ms until `timeout`. Returns the stream and how many attempts were refused before it.
/// An error describes the last attempt.
pub fn connect_served(addr: SocketAddr, timeout: Duration) -> Result<(TcpStream, u32), String> {
    let deadline = Instant::now() + timeout;
    let mut refused = 0u32;
    loop {
        let last = match try_connect(addr) {
            Ok(mut s) => match probe(&mut s, b"+", Duration::from_secs(3)) {
                Probe::Served => return Ok((s, refused)),
                p => {
                    if matches!(p, Probe::Closed(_)) {
                        refused += 1;
                    }
                    format!("{p:?}")
                }
            },
            Err(e) => format!("connect: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "no served connection within {timeout:?} ({refused} refused; last: {last})"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

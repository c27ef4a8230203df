//! Server conventions (notes 001, chapter 7): `--daemon` detaches after binding under every
//! model, the pid file follows the daemon and refuses a second start before it detaches,
//! `--user` drops root after binding, and systemd hears READY=1 and STOPPING=1.

mod util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::{keel_bin, temp_dir, wait_served, Opts, Probe, MODELS};

/// Dropping privileges needs root: says so and false otherwise (the test is then skipped).
fn running_as_root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipped: dropping privileges needs the test to run as root");
    }
    root
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive for our purposes (the daemon's parent is init, which reaps it).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A daemon this test started (through keel's double fork): killed on drop if still there.
struct Daemon {
    pid: i32,
    addr: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if alive(self.pid) {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// Starts `keel echo --daemon` with `extra` args: the command returns 0 once detached, after
/// printing its listening line; the daemon's pid comes from the pid file.
fn start_daemon(pid_file: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["echo", "--listen", "127.0.0.1:0", "--daemon", "--pid-file"];
    args.push(pid_file.to_str().unwrap());
    args.extend_from_slice(extra);
    let err_path = pid_file.with_extension("stderr");
    let mut child = Command::new(keel_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let launcher = child.id();
    // Every line up to EOF: the pipe closes once the launcher has exited and the daemon has
    // put /dev/null on its stdout.
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
    let addr: SocketAddr = lines
        .iter()
        .find_map(|l| l.strip_prefix("listening tcp "))
        .unwrap_or_else(|| panic!("no listening line before detaching: {lines:?}"))
        .parse()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the command that starts a daemon did not return");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        status.success(),
        "{args:?}: the starting command exits 0 once detached: {status:?}; stderr: {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    // No waiting: once the command has returned 0, the pid file names the running daemon.
    let text = std::fs::read_to_string(pid_file).unwrap_or_default();
    let pid: i32 = text.trim().parse().unwrap_or_else(|_| {
        panic!("right after the start command returned, the pid file holds {text:?}")
    });
    assert_ne!(
        pid as u32, launcher,
        "the pid file still names the command that started the daemon"
    );
    assert!(alive(pid), "the pid file names {pid}, which is not running");
    Daemon { pid, addr }
}

/// SIGTERM, then waits (at most 15 s) for the daemon to be gone.
fn stop_daemon(pid: i32, model: &str) {
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "[{model}] daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stat_fields(pid: i32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().map(str::to_string).collect()
}

#[test]
fn daemon_detaches_under_every_model() {
    for model in MODELS {
        let dir = temp_dir(&format!("daemon-{model}"));
        let pid_file = dir.join("keel.pid");
        // A log file means a log-writer thread before the forks (the daemon's, and prefork's
        // and process-per-connection's children): the forks must still happen, and the
        // daemon must still log.
        let log = dir.join("keel.log");
        let log_arg = log.to_str().unwrap();
        let d = start_daemon(
            &pid_file,
            &[
                "--model",
                model,
                "--threads",
                "2",
                "--log-target",
                "file",
                "--log-file",
                log_arg,
            ],
        );
        // fields after the command name: state(0) ppid(1) pgrp(2) session(3) tty_nr(4)
        let f = stat_fields(d.pid);
        assert_eq!(f[4], "0", "[{model}] no controlling terminal");
        assert_ne!(
            f[3],
            d.pid.to_string(),
            "[{model}] not a session leader (second fork)"
        );
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/cwd", d.pid)).unwrap(),
            PathBuf::from("/"),
            "[{model}] chdir /"
        );
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid)).unwrap();
        assert!(
            status.contains("Umask:\t0027"),
            "[{model}] umask 027: {status}"
        );
        assert_eq!(
            wait_served(d.addr, b"daemon", Duration::from_secs(5)),
            Probe::Served,
            "[{model}] the daemon serves"
        );
        // Something the daemon logs after it detached (echo without a file has nothing to reload).
        kill(Pid::from_raw(d.pid), Signal::SIGHUP).unwrap();
        let start = Instant::now();
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("SIGHUP") || start.elapsed() > Duration::from_secs(5) {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            text.contains("server starting") && text.contains("SIGHUP"),
            "[{model}] the daemon does not log to its file:\n{text}"
        );
        // Its stderr is /dev/null: the `stats` lines (SIGUSR2's, the final one) go to the
        // log too.
        let stats_lines = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("stats engine=")
                .count()
        };
        kill(Pid::from_raw(d.pid), Signal::SIGUSR2).unwrap();
        let start = Instant::now();
        while stats_lines() < 1 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            stats_lines(),
            1,
            "[{model}] SIGUSR2's stats line is not in the log"
        );
        stop_daemon(d.pid, model);
        assert_eq!(
            stats_lines(),
            2,
            "[{model}] the final stats line is not in the log"
        );
        assert!(
            !pid_file.exists(),
            "[{model}] the daemon removed its pid file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A loop's io_uring is made before the daemon's forks, for the launcher's thread alone
/// (`SINGLE_ISSUER`): the daemon must make its own, or its first wait fails and it exits
/// without a word.
#[test]
fn a_daemon_on_the_uring_engine_serves() {
    for model in ["multi-reactor", "half-sync", "prefork"] {
        let dir = temp_dir(&format!("daemon-uring-{model}"));
        let pid_file = dir.join("keel.pid");
        let d = start_daemon(
            &pid_file,
            &["--engine", "uring", "--model", model, "--threads", "2"],
        );
        assert_eq!(
            wait_served(d.addr, b"on uring", Duration::from_secs(5)),
            Probe::Served,
            "[{model}] the daemon serves"
        );
        assert!(alive(d.pid), "[{model}] the daemon is still up");
        stop_daemon(d.pid, model);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A daemon that fails after it detached but before it serves (here: too few fds for its
/// loops) makes the command the user ran exit 1 with the reason on its stderr (handed back
/// through the start-up handshake), and says it in its log too: its own stderr is /dev/null by
/// then. It used to exit 0 as soon as it had forked, then 1 with "its log says why", which
/// without a log file said nothing.
#[test]
fn a_daemon_that_fails_to_start_is_reported() {
    let dir = temp_dir("daemon-fails");
    let (pid_file, log) = (dir.join("keel.pid"), dir.join("keel.log"));
    let out = Command::new(keel_bin())
        .args(["echo", "--listen", "127.0.0.1:0", "--threads", "8"])
        .args(["--rlimit-nofile", "24", "--daemon", "--pid-file"])
        .arg(&pid_file)
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("the daemon could not start: out of file descriptors"),
        "{err}"
    );
    // The daemon logs its error and ends right after the command returns.
    let mut text = String::new();
    let start = Instant::now();
    while !text.contains("out of file descriptors") && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
    assert!(text.contains("out of file descriptors"), "the log: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a log file the reason still reaches the command, and the start warns that the
/// daemon's log goes nowhere.
#[test]
fn a_daemon_without_a_log_file_is_warned_about_and_its_failure_still_told() {
    let out = Command::new(keel_bin())
        .args(["echo", "--listen", "127.0.0.1:0", "--threads", "8"])
        .args(["--rlimit-nofile", "24", "--daemon"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("warning: --daemon with the log on stderr"),
        "{err}"
    );
    assert!(
        err.contains("the daemon could not start: out of file descriptors"),
        "{err}"
    );
}

#[test]
fn a_second_daemon_is_refused_before_it_detaches() {
    let dir = temp_dir("daemon-second");
    let pid_file = dir.join("keel.pid");
    let d = start_daemon(&pid_file, &[]);
    let out = Command::new(keel_bin())
        .args(["echo", "--listen", "127.0.0.1:0", "--daemon", "--pid-file"])
        .arg(&pid_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the second start fails in the foreground"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("already running (pid {})", d.pid)),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "refused before binding: {:?}",
        out.stdout
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn user_drops_root_after_binding() {
    if !running_as_root() {
        return;
    }
    let srv = Opts::echo("epoll-et").arg("--user", "nobody").spawn();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
        .to_string();
    // The listening line comes first, the drop right after it.
    let start = Instant::now();
    let uid_line = loop {
        let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid)).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        let dropped = line.split_whitespace().skip(1).all(|u| u == nobody);
        if dropped || start.elapsed() > Duration::from_secs(3) {
            break line;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == nobody),
        "real, effective, saved and fs uid are nobody's: {uid_line}"
    );
    util::assert_serves(&srv, "after dropping to nobody");
}

/// A document root the `--user` cannot read: each request is a 403, as before, and the log now
/// says why (it said nothing, and every request failed with no trace of the cause).
#[test]
fn a_root_the_user_cannot_read_is_said_in_the_log() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    if !running_as_root() {
        return;
    }
    let dir = temp_dir("unreadable-root");
    std::fs::write(dir.join("index.html"), "x").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let srv = Opts::http("epoll-et")
        .arg("--root", dir.to_str().unwrap())
        .arg("--user", "nobody")
        .arg("--access-log", "off")
        .spawn();
    let mut s = std::net::TcpStream::connect(srv.tcp).unwrap();
    s.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    assert!(
        srv.stderr_has(
            "cannot open /index.html: Permission denied",
            Duration::from_secs(3)
        ),
        "{}",
        srv.stderr_dump()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Started as the user it is told to become (a unit file's `--user nobody` run by nobody), it
/// runs: there is nothing to switch. It used to fail on initgroups' EPERM, after the
/// listening lines. Told to become someone else without root, it says why and exits 1.
#[test]
fn user_as_that_user_without_root_runs_and_another_is_refused() {
    if !running_as_root() {
        return; // the test needs root to start keel as nobody
    }
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let as_nobody = |user: &str| {
        let mut c = Command::new(keel_bin());
        c.args(["echo", "--listen", "127.0.0.1:0", "--user", user])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw());
        // (std drops the supplementary groups of a root parent when it sets the uid.)
        c.spawn()
    };
    let mut child = match as_nobody("nobody") {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: nobody cannot run {:?}: {e}", keel_bin());
            return;
        }
        Err(e) => panic!("spawn as nobody: {e}"),
    };
    let addr = util::first_listening_addr(&mut child);
    std::thread::sleep(Duration::from_millis(200)); // past the drop (a no-op here)
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "keel --user nobody as nobody exited"
    );
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"as nobody").unwrap();
    let mut got = [0u8; 9];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"as nobody");
    drop(s);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());

    let out = as_nobody("root").unwrap().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot switch to user \"root\"") && err.contains("not as root"),
        "{err}"
    );
}

#[test]
fn an_unknown_user_is_refused() {
    let out = Command::new(keel_bin())
        .args([
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--user",
            "no-such-user-keel",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such user \"no-such-user-keel\""), "{err}");
    // Found out before binding: no `listening` line for a script to take for a start.
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(!out.contains("listening"), "stdout: {out:?}");
}

#[test]
fn systemd_hears_ready_and_stopping() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new(keel_bin())
        .args(["echo", "--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.contains("READY=1") && msg.contains(&format!("MAINPID={}", child.id())),
        "{msg}"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Relative paths name files in the directory the daemon was started from, also after it
/// `chdir`s to `/`: the pid file it removes at exit, the config file a SIGHUP rereads, the log
/// file a SIGUSR1 reopens. They used to resolve under `/` once detached.
#[test]
fn a_daemon_keeps_its_relative_paths() {
    let dir = temp_dir("daemon-relative");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::write(dir.join("keel.toml"), "[echo]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let status = Command::new(keel_bin())
        .current_dir(&dir)
        .args([
            "echo",
            "--daemon",
            "--config",
            "keel.toml",
            "--pid-file",
            "run/k.pid",
        ])
        .args(["--log-target", "file", "--log-file", "k.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let pid: i32 = std::fs::read_to_string(dir.join("run/k.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let log_has = |file: &str, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            if log.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{file} never said {text:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    log_has("k.log", "echo server starting");
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    log_has("k.log", "configuration reloaded");
    std::fs::rename(dir.join("k.log"), dir.join("k.log.1")).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    log_has("k.log", "SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !dir.join("run/k.pid").exists(),
        "the pid file was left behind at a clean exit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// After `--user` drops root, the pid file's directory may no longer be writable: the file
/// cannot be removed at exit, and is emptied instead, so no dead pid is left in it.
#[test]
fn a_pid_file_that_cannot_be_removed_is_emptied() {
    if !running_as_root() {
        return;
    }
    let dir = temp_dir("pid-user");
    let pid_file = dir.join("k.pid");
    let mut child = Command::new(keel_bin())
        .args([
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--user",
            "nobody",
            "--pid-file",
        ])
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The listening line comes once the pid file is written.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening"), "{line:?}");
    let pid = child.id() as i32;
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), pid.to_string());
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let left = std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert!(
        left.trim().is_empty(),
        "the pid file still names the stopped server: {left:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--user`, a reload runs as that user, who cannot open the access log root created at
/// start (0640, root's): the reload keeps the running writer (asking it to reopen, which fails
/// and is logged) instead of failing whole. So SIGHUP without `--config` still takes up a
/// swapped document root.
#[test]
fn a_reload_after_user_keeps_the_access_log_it_cannot_open() {
    if !running_as_root() {
        return;
    }
    let dir = temp_dir("reload-user");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/v.txt"), "v").unwrap();
    let log = dir.join("access.log");
    let srv = Opts::http("epoll-et")
        .arg("--root", dir.join("www").to_str().unwrap())
        .arg("--access-log", log.to_str().unwrap())
        .arg("--user", "nobody")
        .spawn();
    let get = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(srv.tcp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /v.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(get().starts_with("HTTP/1.1 200"));
    srv.signal(Signal::SIGHUP);
    let start = Instant::now();
    let said = loop {
        let err = srv.stderr_dump();
        if err.contains("configuration reloaded") || err.contains("reload failed") {
            break err;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nothing said:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(said.contains("configuration reloaded"), "{said}");
    assert!(get().starts_with("HTTP/1.1 200"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under the per-connection models a connection whose thread or process cannot start (here
/// the user's process limit, `RLIMIT_NPROC`, reached as `nobody`) is refused the way one over
/// the limit is: FIN, its bytes read and dropped, so a client that wrote first sees EOF. (Its
/// socket was dropped with the failed thread or fork: those clients saw resets.)
#[test]
fn a_connection_whose_thread_or_process_cannot_start_is_refused_cleanly() {
    use std::io::{Read, Write};
    if !running_as_root() {
        return;
    }
    for model in ["thread-per-conn", "process-per-conn"] {
        let mut child = echo_as_nobody_with_nproc(8, &["--model", model, "--threads", "50"])
            .spawn()
            .expect("spawn keel echo");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening tcp ")
            .unwrap_or_else(|| panic!("[{model}] {line:?}"))
            .parse()
            .unwrap();
        let mut clients: Vec<_> = (0..20)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"hi\n").unwrap();
                s
            })
            .collect();
        let (mut echoed, mut eof, mut other) = (0, 0, Vec::new());
        for s in &mut clients {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 16];
            match s.read(&mut buf) {
                Ok(0) => eof += 1,
                Ok(_) => echoed += 1,
                Err(e) => other.push(e.kind()),
            }
        }
        drop(clients);
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGUSR2);
        std::thread::sleep(Duration::from_millis(500));
        let _ = kill(pid, Signal::SIGTERM);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            other.is_empty() && eof >= 1,
            "[{model}] {echoed} echoed, {eof} clean closes, others: {other:?}\n{stderr}"
        );
        // Counted as what they were: no thread or process, not over the limit.
        let counter = |key: &str| -> Option<u64> {
            let line = stderr.lines().find(|l| l.starts_with("stats "))?;
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        assert_eq!(
            (counter("refused_spawn"), counter("refused_limit")),
            (Some(eof), Some(0)),
            "[{model}] {eof} refused\n{stderr}"
        );
    }
}

/// `keel echo --listen 127.0.0.1:0 --user nobody ARGS`, whose user may have at most `nproc`
/// processes and threads (RLIMIT_NPROC, which counts every one of the user's).
fn echo_as_nobody_with_nproc(nproc: u64, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(keel_bin());
    cmd.args(["echo", "--listen", "127.0.0.1:0", "--user", "nobody"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec and only calls setrlimit, an
    // async-signal-safe syscall, with a value on the stack.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nproc,
                rlim_max: nproc,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A model whose threads cannot all be created at start (the user's process limit) exits 1
/// naming the thread, not with a bare "Resource temporarily unavailable".
#[test]
fn a_thread_that_cannot_start_at_start_is_named() {
    if !running_as_root() {
        return;
    }
    for model in ["multi-reactor", "half-sync", "leader-followers"] {
        let out = echo_as_nobody_with_nproc(2, &["--model", model, "--threads", "4"])
            .output()
            .expect("run keel echo");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "[{model}] {stderr}");
        // Which thread is refused depends on how many processes `nobody` has (RLIMIT_NPROC
        // counts them all, another test's included): a loop (`keel-loop-1`), a worker or a
        // follower. It is named, whichever it is.
        assert!(
            stderr.contains("keel: cannot start thread keel-"),
            "[{model}] {stderr}"
        );
    }
}

//! Server conventions: the locked pid file (one instance per file, stale files taken over,
//! removed at a clean exit) and raising RLIMIT_NOFILE at start.

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use util::{assert_serves, keel_bin, temp_dir, Opts};

/// Runs a keel that is expected to refuse to start: its exit status and stderr (10 s bound).
fn run_refused(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(keel_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second instance did not exit within 10 s (it should refuse at once)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_instance_is_refused_naming_the_running_pid() {
    let dir = temp_dir("pid-second");
    let pid_file = dir.join("keel.pid");
    let p = pid_file.to_str().unwrap();
    let first = Opts::echo("epoll-et").arg("--pid-file", p).spawn();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        first.pid.to_string(),
        "the pid file holds the server's pid"
    );
    let (code, err) = run_refused(&["echo", "--listen", "127.0.0.1:0", "--pid-file", p]);
    assert_eq!(code, Some(1), "the second instance exits non-zero: {err}");
    assert!(
        err.contains(&format!("already running (pid {})", first.pid)),
        "the refusal names the running pid: {err}"
    );
    assert_serves(&first, "the first instance after the refused second");
    first.signal(Signal::SIGTERM);
    let status = first
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!pid_file.exists(), "a clean exit removes the pid file");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A start that fails after taking the pid file (here: the admin address is taken) lets it go:
/// no file naming a dead process is left for the next start or for a supervisor to trust.
#[test]
fn a_failed_start_leaves_no_pid_file() {
    let dir = temp_dir("pid-failed-start");
    let pid_file = dir.join("keel.pid");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let (code, err) = run_refused(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &admin,
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        !pid_file.exists(),
        "a pid file was left behind; stderr: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stale_pid_file_is_taken_over() {
    let dir = temp_dir("pid-stale");
    let pid_file = dir.join("keel.pid");
    let p = pid_file.to_str().unwrap();
    let first = Opts::echo("epoll-et").arg("--pid-file", p).spawn();
    let dead = first.pid;
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        dead.to_string(),
        "kill -9 leaves the file behind"
    );
    let second = Opts::echo("epoll-et").arg("--pid-file", p).spawn();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        second.pid.to_string(),
        "the new server took the stale file over"
    );
    assert_serves(&second, "after taking over a stale pid file");
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_prefork_master_holds_the_pid_file_too() {
    let dir = temp_dir("pid-prefork");
    let pid_file = dir.join("keel.pid");
    let p = pid_file.to_str().unwrap();
    let master = Opts::echo("epoll-et")
        .arg("--model", "prefork")
        .arg("--threads", "2")
        .arg("--pid-file", p)
        .spawn();
    let (code, err) = run_refused(&["echo", "--listen", "127.0.0.1:0", "--pid-file", p]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("pid {}", master.pid)), "{err}");
    master.signal(Signal::SIGTERM);
    assert!(master
        .wait_exit(Duration::from_secs(10))
        .expect("exits")
        .success());
    assert!(!pid_file.exists(), "the master removes it at a clean exit");
    let _ = std::fs::remove_dir_all(&dir);
}

fn soft_nofile(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn rlimit_nofile_is_set_at_start() {
    // Within the hard limit (this test process raised its own to the hard limit, and the
    // server inherits that): the server's soft limit becomes exactly what was asked.
    let srv = Opts::echo("epoll-et")
        .arg("--rlimit-nofile", "4321")
        .spawn();
    assert_eq!(soft_nofile(srv.pid), 4321);
}

#[test]
fn an_rlimit_beyond_the_hard_limit_is_raised_or_the_limit_in_force_is_said() {
    // Hard limit 256: raising past it needs CAP_SYS_RESOURCE. With it, the limit is raised;
    // without it, the server says so and names the limit it runs with.
    let srv = Opts::echo("epoll-et")
        .nofile(256)
        .arg("--rlimit-nofile", "4321")
        .spawn();
    match soft_nofile(srv.pid) {
        4321 => {}
        256 => {
            // The line is written before the listening line; give the reader thread a moment.
            let start = Instant::now();
            let mut err = srv.stderr_dump();
            while !err.contains("the fd limit in force") && start.elapsed() < Duration::from_secs(3)
            {
                std::thread::sleep(Duration::from_millis(20));
                err = srv.stderr_dump();
            }
            assert!(
                err.contains("cannot raise RLIMIT_NOFILE to 4321")
                    && err.contains("the fd limit in force is 256"),
                "a refused raise is reported with the limit in force: {err}"
            );
        }
        other => panic!("unexpected soft fd limit {other}"),
    }
    assert_serves(&srv, "with the fd limit it got");
}

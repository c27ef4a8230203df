//! The configuration file (`--config FILE`) and `keel check-config FILE`.
//!
//! First [`keel::ops::config::load`] on files under the test temp dir: each kind of bad file
//! with its exact message and line; then the binary: `check-config` exit codes and output, a
//! server taking its settings from the file, and flags overriding the file.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use keel::ops::config::{self, Config, ConfigError, ServerSettings};
use keel::reactor::{Engine, Keepalive};
use keel::server::{AcceptStrategy, Model};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::{connect, read_until_end, End, Opts};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Writes `text` to `<test tmp dir>/keel-config/<name>.toml` and returns the path.
fn write_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-config");
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config file");
    path
}

/// Loads `text` (as file `<name>.toml`), expecting errors; returns them, and checks that each
/// error's `line` field agrees with its message.
fn load_errors(name: &str, text: &str) -> (String, Vec<ConfigError>) {
    let path = write_file(name, text);
    let file = path.display().to_string();
    match config::load(&path) {
        Ok(c) => panic!("{name}: expected errors, loaded {c:?}"),
        Err(errors) => (file, errors),
    }
}

/// Asserts that `text` gives exactly the errors `expected`, each written `LINE: rest` (the file
/// name is prepended here), in this order.
fn assert_errors(name: &str, text: &str, expected: &[&str]) {
    let (file, errors) = load_errors(name, text);
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let want: Vec<String> = expected.iter().map(|e| format!("{file}:{e}")).collect();
    assert_eq!(got, want, "{name}: errors differ\nfile:\n{text}");
    for (e, want) in errors.iter().zip(expected) {
        let line: usize = want.split(':').next().unwrap().parse().unwrap();
        assert_eq!(e.line, Some(line), "{name}: line field of {e}");
        assert_eq!(e.file, file);
    }
}

fn load_ok(name: &str, text: &str) -> Config {
    let path = write_file(name, text);
    match config::load(&path) {
        Ok(c) => c,
        Err(errors) => panic!(
            "{name}: expected a valid file, got:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// load(): valid files
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_file_is_valid_and_means_defaults() {
    assert_eq!(load_ok("empty", ""), Config::default());
    assert_eq!(
        load_ok("comments-only", "# nothing here\n\n"),
        Config::default()
    );
    // An empty section: the server is configured, every option at its default.
    let c = load_ok("empty-section", "[discard]\n");
    assert_eq!(c.discard, Some(ServerSettings::default()));
    assert_eq!(c.echo, None);
}

#[test]
fn every_key_is_read() {
    let c = load_ok(
        "full",
        r#"
[echo]
listen = "127.0.0.1:7070"
engine = "epoll-lt"
model = "multi-reactor"
threads = 3
accept = "acceptor"
idle_timeout = 30.5
linger_timeout = 2
drain_timeout = 0.25
max_conns = 10000
backlog = 128
reuseport = true
work_ms = 7

[echo.keepalive]
idle = 60
interval = 5
count = 4

[discard]
listen = "[::1]:9009"
engine = "select"
"#,
    );
    assert_eq!(
        c.echo,
        Some(ServerSettings {
            listen: Some("127.0.0.1:7070".parse().unwrap()),
            engine: Some(Engine::EpollLt),
            model: Some(Model::MultiReactor),
            threads: Some(3),
            accept: Some(AcceptStrategy::Acceptor),
            idle_timeout: Some(Duration::from_millis(30_500)),
            linger_timeout: Some(Duration::from_secs(2)),
            drain_timeout: Some(Duration::from_millis(250)),
            max_conns: Some(10_000),
            backlog: Some(128),
            reuseport: Some(true),
            work_ms: Some(7),
            keepalive_idle: Some(Duration::from_secs(60)),
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_count: Some(4),
            pid_file: None,
            rlimit_nofile: None,
            daemon: None,
            user: None,
            group: None,
            ..ServerSettings::default()
        })
    );
    assert_eq!(
        c.discard,
        Some(ServerSettings {
            listen: Some("[::1]:9009".parse().unwrap()),
            engine: Some(Engine::Select),
            ..ServerSettings::default()
        })
    );
}

#[test]
fn dotted_keys_and_inline_tables_are_the_same_sections() {
    let c = load_ok(
        "dotted",
        "echo.engine = \"poll\"\necho.keepalive = { idle = 9 }\ndiscard = { threads = 2 }\n",
    );
    let echo = c.echo.unwrap();
    assert_eq!(echo.engine, Some(Engine::Poll));
    assert_eq!(echo.keepalive_idle, Some(Duration::from_secs(9)));
    assert_eq!(c.discard.unwrap().threads, Some(2));
}

// ---------------------------------------------------------------------------------------------
// load(): each kind of bad file, with its exact message and line
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_file_names_the_file_and_the_os_error() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-such-dir/keel.toml");
    let errors = config::load(&path).unwrap_err();
    let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        msgs,
        [format!(
            "{}: cannot read: No such file or directory (os error 2)",
            path.display()
        )]
    );
    assert_eq!(errors[0].line, None);
}

/// Loading `path` fails with the one error `PATH: cannot read: WHAT, not a regular file`.
fn assert_not_a_regular_file(path: &Path, what: &str) {
    let msgs: Vec<String> = config::load(path)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        msgs,
        [format!(
            "{}: cannot read: {what}, not a regular file",
            path.display()
        )]
    );
}

#[test]
fn unreadable_file_a_directory() {
    assert_not_a_regular_file(Path::new(env!("CARGO_TARGET_TMPDIR")), "a directory");
}

/// Only a regular file is read: a FIFO is refused at once (reading it would wait for a writer,
/// holding `check-config` or a reload), and `/dev/zero` too (it would fill memory).
#[test]
fn a_fifo_or_a_device_is_refused_at_once() {
    let fifo = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("keel-config-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    for (path, what) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a device"),
    ] {
        let started = std::time::Instant::now();
        assert_not_a_regular_file(path, what);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
    let _ = std::fs::remove_file(&fifo);
}

/// `check-config` reads a pipe, as in `keel check-config <(generate-config)`: waiting for its
/// writer is what was asked for there (a server's reload would not wait).
#[test]
fn check_config_reads_a_pipe() {
    let mut child = std::process::Command::new(util::keel_bin())
        .args(["check-config", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keel");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"[http]\nthreads = 2\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("ok (http)"), "{stdout}");
}

#[test]
fn bytes_that_are_not_utf8_are_placed_on_their_line() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-config");
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join("latin1.toml");
    std::fs::write(&path, b"[http]\nthreads = 2\n# caf\xe9\n").expect("write");
    let errors = config::load(&path).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, Some(3), "{}", errors[0]);
    assert!(errors[0].to_string().contains("UTF-8"), "{}", errors[0]);
}

#[test]
fn syntax_error_has_its_line() {
    assert_errors(
        "syntax-string",
        "[echo]\nengine = \"poll\"\nlisten = \"127.0.0.1:7007\n",
        &["3: TOML syntax error: invalid basic string, expected `\"`"],
    );
    assert_errors(
        "syntax-no-value",
        "[echo]\n\nthreads\n",
        &["3: TOML syntax error: key with no value, expected `=`"],
    );
}

#[test]
fn duplicate_key_is_a_syntax_error_naming_the_key() {
    assert_errors(
        "dup-key",
        "[echo]\nlisten = \"127.0.0.1:1\"\nthreads = 2\nlisten = \"127.0.0.1:2\"\n",
        &["4: TOML syntax error: duplicate key `listen`"],
    );
    assert_errors(
        "dup-section",
        "[echo]\nthreads = 2\n\n[echo]\nthreads = 3\n",
        // The parser goes on after an error: keys of the repeated table repeat too.
        &[
            "4: TOML syntax error: duplicate key `echo`",
            "5: TOML syntax error: duplicate key `threads`",
        ],
    );
}

#[test]
fn unknown_section() {
    assert_errors(
        "unknown-section",
        "[echo]\nthreads = 1\n\n[htttp]\nlisten = \"127.0.0.1:80\"\n",
        &["4: key `htttp`: unknown section; expected one of echo, discard, http, proxy, chat"],
    );
}

#[test]
fn key_outside_any_section() {
    assert_errors(
        "top-level-key",
        "# global\nlisten = \"127.0.0.1:80\"\n",
        &["2: key `listen`: keys belong in a server's section; expected one of [echo], [discard], [http], [proxy], [chat]"],
    );
}

#[test]
fn section_that_is_not_a_table() {
    assert_errors(
        "section-scalar",
        "echo = \"yes\"\n",
        &["1: key `echo`: expected a table ([echo]), got string \"yes\""],
    );
    assert_errors(
        "section-array",
        "[[discard]]\n",
        &["1: key `discard`: expected a table ([discard]), got an array"],
    );
}

#[test]
fn unknown_key_lists_the_valid_ones() {
    assert_errors(
        "unknown-key",
        "[echo]\nlisten = \"127.0.0.1:0\"\nidle_timout = 3\n",
        &[
            "3: key `echo.idle_timout`: unknown key; expected one of listen, engine, model, \
           threads, accept, idle_timeout, linger_timeout, drain_timeout, max_conns, backlog, \
           reuseport, sndbuf, rcvbuf, work_ms, keepalive, pid_file, rlimit_nofile, daemon, user, group, admin, log_target, log_file, log_filter",
        ],
    );
    // discard's list leaves work_ms out.
    assert_errors(
        "unknown-key-discard",
        "[discard]\nport = 9\n",
        &[
            "2: key `discard.port`: unknown key; expected one of listen, engine, model, threads, \
           accept, idle_timeout, linger_timeout, drain_timeout, max_conns, backlog, reuseport, \
           sndbuf, rcvbuf, keepalive, pid_file, rlimit_nofile, daemon, user, group, admin, log_target, log_file, log_filter",
        ],
    );
    assert_errors(
        "unknown-keepalive-key",
        "[echo.keepalive]\nidle = 5\nprobes = 3\n",
        &["3: key `echo.keepalive.probes`: unknown key; expected one of idle, interval, count"],
    );
}

#[test]
fn wrong_type() {
    assert_errors(
        "wrong-types",
        r#"[echo]
threads = "4"
idle_timeout = "30s"
reuseport = 1
listen = 7007
engine = ["poll"]
max_conns = 2.5
linger_timeout = true
backlog = 1979-05-27
"#,
        &[
            "2: key `echo.threads`: expected an integer from 1 to 10000, got string \"4\"",
            "3: key `echo.idle_timeout`: expected a number of seconds from 0.001 to 1e9, got string \
             \"30s\"",
            "4: key `echo.reuseport`: expected true or false, got integer 1",
            "5: key `echo.listen`: expected a string IP:PORT (e.g. \"127.0.0.1:7007\", \
             \"[::1]:7007\"), got integer 7007",
            "6: key `echo.engine`: expected a string, one of select, poll, epoll-lt, epoll-et, \
             uring, got an array",
            "7: key `echo.max_conns`: expected an integer of at least 1, got float 2.5",
            "8: key `echo.linger_timeout`: expected a number of seconds from 0 to 1e9, got \
             boolean true",
            "9: key `echo.backlog`: expected an integer from 0 to 2147483647, got datetime \
             1979-05-27",
        ],
    );
}

#[test]
fn unknown_engine() {
    assert_errors(
        "bad-engine",
        "[echo]\nengine = \"epol\"\n",
        &["2: key `echo.engine`: expected one of select, poll, epoll-lt, epoll-et, uring, got \"epol\""],
    );
}

#[test]
fn unknown_model() {
    assert_errors(
        "bad-model",
        "[discard]\nthreads = 2\nmodel = \"fork\"\n",
        &[
            "3: key `discard.model`: expected one of multi-reactor, prefork, half-sync, \
           leader-followers, thread-per-conn, process-per-conn, got \"fork\"",
        ],
    );
}

#[test]
fn unknown_accept_strategy() {
    assert_errors(
        "bad-accept",
        "[echo]\naccept = \"round-robin\"\n",
        &["2: key `echo.accept`: expected one of reuseport, acceptor, got \"round-robin\""],
    );
}

#[test]
fn bad_listen_address() {
    assert_errors(
        "bad-listen",
        "[echo]\nlisten = \"localhost:7007\"\n[discard]\nlisten = \"127.0.0.1\"\n",
        &[
            "2: key `echo.listen`: expected IP:PORT (e.g. \"127.0.0.1:7007\", \"[::1]:7007\"), \
             got \"localhost:7007\"",
            "4: key `discard.listen`: expected IP:PORT (e.g. \"127.0.0.1:7007\", \
             \"[::1]:7007\"), got \"127.0.0.1\"",
        ],
    );
}

#[test]
fn port_out_of_range() {
    assert_errors(
        "bad-port",
        "[echo]\nlisten = \"127.0.0.1:70000\"\n[discard]\nlisten = \"[::1]:65536\"\n",
        &[
            "2: key `echo.listen`: port 70000 out of range: expected a port from 0 to 65535, \
             got \"127.0.0.1:70000\"",
            "4: key `discard.listen`: port 65536 out of range: expected a port from 0 to 65535, \
             got \"[::1]:65536\"",
        ],
    );
}

#[test]
fn negative_or_non_finite_timeout() {
    assert_errors(
        "bad-timeouts",
        "[echo]\nidle_timeout = -1\nlinger_timeout = inf\ndrain_timeout = nan\n\
         [discard]\nidle_timeout = 1e10\n",
        &[
            "2: key `echo.idle_timeout`: expected a number of seconds from 0.001 to 1e9, got -1",
            "3: key `echo.linger_timeout`: expected a number of seconds from 0 to 1e9, got inf",
            "4: key `echo.drain_timeout`: expected a number of seconds from 0 to 1e9, got nan",
            "6: key `discard.idle_timeout`: expected a number of seconds from 0.001 to 1e9, got 1e10",
        ],
    );
}

#[test]
fn zero_threads_or_max_conns() {
    assert_errors(
        "zero-counts",
        "[echo]\nthreads = 0\nmax_conns = 0\n[discard]\nthreads = -2\n",
        &[
            "2: key `echo.threads`: expected an integer from 1 to 10000, got 0",
            "3: key `echo.max_conns`: expected an integer of at least 1, got 0",
            "5: key `discard.threads`: expected an integer from 1 to 10000, got -2",
        ],
    );
}

#[test]
fn bad_backlog_and_work_ms() {
    assert_errors(
        "bad-backlog",
        "[echo]\nbacklog = 4294967296\nwork_ms = -5\n",
        &[
            "2: key `echo.backlog`: expected an integer from 0 to 2147483647, got 4294967296",
            "3: key `echo.work_ms`: expected a whole number of milliseconds, got -5",
        ],
    );
}

/// A timeout a connection must be given some time by cannot be 0.
#[test]
fn zero_idle_and_request_timeouts() {
    assert_errors(
        "zero-timeouts",
        "[echo]\nidle_timeout = 0\n\n[http]\nheader_timeout = 0\nlinger_timeout = 0\n",
        &[
            "2: key `echo.idle_timeout`: expected a number of seconds from 0.001 to 1e9, got 0",
            "5: key `http.header_timeout`: expected a number of seconds from 0.001 to 1e9, got 0",
        ],
    );
}

#[test]
fn keepalive_without_idle() {
    assert_errors(
        "keepalive-no-idle",
        "[echo]\nthreads = 1\n\n[echo.keepalive]\ninterval = 5\ncount = 3\n",
        &[
            "4: key `echo.keepalive`: missing key `idle` (seconds of silence before the first \
           probe; it switches keepalive on)",
        ],
    );
    assert_errors(
        "keepalive-inline-no-idle",
        "[discard]\nkeepalive = { count = 3 }\n",
        &[
            "2: key `discard.keepalive`: missing key `idle` (seconds of silence before the first \
           probe; it switches keepalive on)",
        ],
    );
}

#[test]
fn keepalive_bad_values() {
    assert_errors(
        "keepalive-values",
        "[echo.keepalive]\nidle = 0\ninterval = 40000\ncount = 0\n\
         [discard.keepalive]\nidle = 10\ncount = 128\n[discard]\nkeepalive = 1\n",
        &[
            // `[discard]` after `[discard.keepalive]` is legal TOML; its `keepalive = 1` then
            // redefines the table: a syntax error, reported alone.
            "9: TOML syntax error: duplicate key `keepalive`",
        ],
    );
    assert_errors(
        "keepalive-values-2",
        "[echo.keepalive]\nidle = 0\ninterval = 40000\ncount = 0\n\
         [discard.keepalive]\nidle = 10\ncount = 128\ninterval = 1.5\n",
        &[
            "2: key `echo.keepalive.idle`: expected a whole number of seconds from 1 to 32767, \
             got 0",
            "3: key `echo.keepalive.interval`: expected a whole number of seconds from 1 to \
             32767, got 40000",
            "4: key `echo.keepalive.count`: expected an integer from 1 to 127, got 0",
            "7: key `discard.keepalive.count`: expected an integer from 1 to 127, got 128",
            "8: key `discard.keepalive.interval`: expected a whole number of seconds from 1 to \
             32767, got 1.5",
        ],
    );
    assert_errors(
        "keepalive-scalar",
        "[echo]\nkeepalive = true\n",
        &["2: key `echo.keepalive`: expected a table ([echo.keepalive]), got boolean true"],
    );
}

#[test]
fn work_ms_only_for_echo() {
    assert_errors(
        "discard-work-ms",
        "[echo]\nwork_ms = 5\n\n[discard]\nwork_ms = 5\n",
        &[
            "5: key `discard.work_ms`: only [echo] takes work_ms; discard has no handler work to \
           delay",
        ],
    );
}

#[test]
fn every_error_is_reported_in_file_order() {
    // Errors in several sections and keys: all of them, sorted by line (not by key name).
    assert_errors(
        "many",
        r#"[echo]
threads = 0
engine = "fast"
zzz = 1
aaa = 2

[discard]
work_ms = 1
listen = "0.0.0.0:99999"

[https]
"#,
        &[
            "2: key `echo.threads`: expected an integer from 1 to 10000, got 0",
            "3: key `echo.engine`: expected one of select, poll, epoll-lt, epoll-et, uring, got \"fast\"",
            "4: key `echo.zzz`: unknown key; expected one of listen, engine, model, threads, \
             accept, idle_timeout, linger_timeout, drain_timeout, max_conns, backlog, reuseport, \
             sndbuf, rcvbuf, work_ms, keepalive, pid_file, rlimit_nofile, daemon, user, group, admin, log_target, log_file, log_filter",
            "5: key `echo.aaa`: unknown key; expected one of listen, engine, model, threads, \
             accept, idle_timeout, linger_timeout, drain_timeout, max_conns, backlog, reuseport, \
             sndbuf, rcvbuf, work_ms, keepalive, pid_file, rlimit_nofile, daemon, user, group, admin, log_target, log_file, log_filter",
            "8: key `discard.work_ms`: only [echo] takes work_ms; discard has no handler work to \
             delay",
            "9: key `discard.listen`: port 99999 out of range: expected a port from 0 to 65535, \
             got \"0.0.0.0:99999\"",
            "11: key `https`: unknown section; expected one of echo, discard, http, proxy, chat",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Merging and defaults
// ---------------------------------------------------------------------------------------------

#[test]
fn command_line_overrides_file_and_defaults_fill_the_rest() {
    let file = ServerSettings {
        engine: Some(Engine::Poll),
        idle_timeout: Some(Duration::from_millis(300)),
        keepalive_idle: Some(Duration::from_secs(60)),
        ..ServerSettings::default()
    };
    let cli = ServerSettings {
        engine: Some(Engine::Select),
        keepalive_count: Some(3),
        ..ServerSettings::default()
    };
    let opts = cli.or(&file).to_options().unwrap();
    assert_eq!(opts.engine, Engine::Select);
    assert_eq!(opts.idle_timeout, Some(Duration::from_millis(300)));
    assert_eq!(
        opts.keepalive,
        Some(Keepalive {
            idle: Duration::from_secs(60),
            interval: config::DEFAULT_KEEPALIVE_INTERVAL,
            count: 3,
        })
    );
    // Defaults.
    assert_eq!(opts.listen, config::DEFAULT_LISTEN);
    assert_eq!(opts.listen.to_string(), "127.0.0.1:7007");
    assert_eq!(opts.model, Model::MultiReactor);
    assert_eq!(opts.accept, AcceptStrategy::ReusePort);
    assert_eq!(opts.linger_timeout, Duration::from_secs(5));
    assert_eq!(opts.drain_timeout, Duration::from_secs(10));
    assert_eq!(opts.max_connections, None);
    assert_eq!(opts.listen_opts.backlog, 4096);
    assert!(!opts.listen_opts.reuse_port);
    assert!(opts.threads >= 1);

    // A keepalive interval or count with no idle time anywhere.
    let err = ServerSettings {
        keepalive_interval: Some(Duration::from_secs(3)),
        ..ServerSettings::default()
    }
    .to_options()
    .unwrap_err();
    assert_eq!(
        err,
        "a keepalive interval or count needs a keepalive idle time (--keepalive-idle, or `idle` \
         in the file's keepalive table)"
    );
}

#[test]
fn check_reports() {
    let good = write_file("check-good", "[echo]\nthreads = 1\n[discard]\n");
    assert_eq!(
        config::check(&good),
        (format!("{}: ok (echo, discard)", good.display()), true)
    );
    let empty = write_file("check-empty", "");
    assert_eq!(
        config::check(&empty),
        (
            format!(
                "{e}: no server section ([echo], [discard], [http], [proxy] or [chat]): a \
                 server given this file would refuse to start\n{e}: 1 error",
                e = empty.display()
            ),
            false
        )
    );
    let bad = write_file("check-bad", "[echo]\nthreads = 0\nengine = \"x\"\n");
    let f = bad.display();
    assert_eq!(
        config::check(&bad),
        (
            format!(
                "{f}:2: key `echo.threads`: expected an integer from 1 to 10000, got 0\n\
                 {f}:3: key `echo.engine`: expected one of select, poll, epoll-lt, epoll-et, uring, got \
                 \"x\"\n\
                 {f}: 2 errors"
            ),
            false
        )
    );
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

/// Runs keel with `args`, expecting it to exit by itself within 10 s.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(util::keel_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keel {args:?} did not exit within 10 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_valid_file_exits_0() {
    let path = write_file(
        "cli-good",
        "[echo]\nlisten = \"127.0.0.1:7007\"\nengine = \"poll\"\n[echo.keepalive]\nidle = 30\n",
    );
    let out = run(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (echo)\n", path.display())
    );
}

/// A key that conflicts only with a default the file leaves to the command line (`admin` on
/// the default port) does not make the file invalid, but check-config says it, with its
/// line, and a start that leaves it standing is refused with that line too; a command line
/// that settles it starts, and one that makes the conflict itself is blamed, not the file.
#[test]
fn a_conflict_with_a_default_is_a_warning_with_its_line() {
    let path = write_file(
        "default-conflict",
        "[echo]\nthreads = 1\nadmin = \"127.0.0.1:7007\"\n\n[discard]\nthreads = 1\n",
    );
    let f = path.display();
    let said = format!(
        "{f}:3: key `echo.admin`: admin 127.0.0.1:7007 and listen 127.0.0.1:7007 would share a \
         port: the admin listener needs one of its own (with the default listen: the command \
         line must set it)"
    );
    let out = run(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("warning: {said}\n{f}: ok (echo, discard), 1 warning\n")
    );
    let conf = path.to_str().unwrap();
    let out = run(&["echo", "--config", conf]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), format!("keel: {said}\n"));
    // The command line makes the same conflict itself: its own message, no file line.
    let out = run(&[
        "echo",
        "--config",
        conf,
        "--listen",
        "127.0.0.1:7007",
        "--admin",
        "127.0.0.1:7007",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "keel: admin 127.0.0.1:7007 and listen 127.0.0.1:7007 would share a port: the admin \
         listener needs one of its own\n"
    );
    // The other section has no conflict of its own: it starts.
    let mut discard = Command::new(util::keel_bin())
        .args(["discard", "--config", conf, "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel discard");
    let mut line = String::new();
    BufReader::new(discard.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening tcp 127.0.0.1:"), "{line:?}");
    kill(Pid::from_raw(discard.id() as i32), Signal::SIGTERM).unwrap();
    assert!(discard.wait().unwrap().success());
    // What the loaded file carries: the conflict, and the key it leaves to the command line.
    let c = load_ok("default-conflict", &std::fs::read_to_string(&path).unwrap());
    assert_eq!(c.default_conflicts.len(), 1);
    assert_eq!(c.default_conflicts[0].left, ["listen"]);
}

#[test]
fn check_config_bad_file_exits_1_with_every_error() {
    let path = write_file(
        "cli-bad",
        "[echo]\nengine = \"epol\"\nthreads = 0\n\n[discard]\nwork_ms = 3\nthreads = 10001\n",
    );
    let f = path.display();
    let out = run(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{f}:2: key `echo.engine`: expected one of select, poll, epoll-lt, epoll-et, uring, got \
             \"epol\"\n\
             {f}:3: key `echo.threads`: expected an integer from 1 to 10000, got 0\n\
             {f}:6: key `discard.work_ms`: only [echo] takes work_ms; discard has no handler \
             work to delay\n\
             {f}:7: key `discard.threads`: expected an integer from 1 to 10000, got 10001\n\
             {f}: 4 errors\n"
        )
    );
}

/// A file can be valid and still be refused at start, because the host is not ready for it:
/// check-config looks, as `nginx -t` does, at the paths the server will open and the user it
/// will switch to. It said "ok" to each of these, and the server then exited 1.
#[test]
fn check_config_reports_what_the_host_lacks() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-config-host");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep"), "a file, not a directory").unwrap();
    let d = dir.display();
    let path = write_file(
        "host-bad",
        &format!(
            "[http]\nroot = \"{d}/no-root\"\naccess_log = \"{d}\"\nuser = \"no_such_user_kz\"\n\
             group = \"no_such_group_kz\"\npid_file = \"{d}/no-dir/keel.pid\"\n\
             log_target = \"file\"\nlog_file = \"{d}/keep/e.log\"\n"
        ),
    );
    let f = path.display();
    let out = run(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{f}:2: key `http.root`: {d}/no-root: No such file or directory (os error 2)\n\
             {f}:3: key `http.access_log`: {d}: is a directory\n\
             {f}:4: key `http.user`: no such user \"no_such_user_kz\"\n\
             {f}:5: key `http.group`: no such group \"no_such_group_kz\"\n\
             {f}:6: key `http.pid_file`: {d}/no-dir: No such file or directory (os error 2)\n\
             {f}:8: key `http.log_file`: {d}/keep: not a directory\n\
             {f}: 6 errors\n"
        )
    );
    // The same file with what it names in place is fine (a log file may be created at start).
    std::fs::create_dir_all(dir.join("no-root")).unwrap();
    std::fs::create_dir_all(dir.join("no-dir")).unwrap();
    let good = write_file(
        "host-good",
        &format!(
            "[http]\nroot = \"{d}/no-root\"\naccess_log = \"{d}/no-dir/access.log\"\n\
             pid_file = \"{d}/no-dir/keel.pid\"\nlog_target = \"file\"\nlog_file = \"{d}/e.log\"\n"
        ),
    );
    let out = run(&["check-config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A log file with no target named is the file target, checked as such.
    let untargeted = write_file(
        "host-log-file",
        &format!("[echo]\nlog_file = \"{d}/no-such-dir/e.log\"\n"),
    );
    let out = run(&["check-config", untargeted.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains(":2: key `echo.log_file`"),
        "{}",
        text(&out.stderr)
    );
}

/// A pid file or log file in a place that cannot be written (a read-only filesystem here) is
/// the host's error too: check-config said "ok", then the server exited 1. Needs a read-only
/// mount (root): skipped, saying so, where `mount` is refused.
#[test]
fn check_config_reports_a_place_that_cannot_be_written() {
    let ro = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-config-ro");
    std::fs::create_dir_all(&ro).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
        .arg(&ro)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a read-only tmpfs here");
        return;
    }
    let d = ro.display();
    let path = write_file(
        "host-ro",
        &format!("[echo]\npid_file = \"{d}/keel.pid\"\nlog_file = \"{d}/e.log\"\n"),
    );
    let out = run(&["check-config", path.to_str().unwrap()]);
    let _ = std::process::Command::new("umount").arg(&ro).status();
    let f = path.display();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{f}:2: key `echo.pid_file`: {d}: cannot be written: Read-only file system (os error \
             30)\n{f}:3: key `echo.log_file`: {d}: cannot be written: Read-only file system (os \
             error 30)\n{f}: 2 errors\n"
        )
    );
}

/// A log file that cannot be opened at start is the host's doing, not a bad argument: exit 1
/// (exit 2 is for arguments), with the reason.
#[test]
fn a_log_file_that_cannot_be_opened_exits_1() {
    let out = run(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--log-target",
        "file",
        "--log-file",
        "/nonexistent-dir-kz/e.log",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/nonexistent-dir-kz/e.log"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_missing_file_exits_1() {
    let out = run(&["check-config", "/nonexistent/keel.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "/nonexistent/keel.toml: cannot read: No such file or directory (os error 2)\n\
         /nonexistent/keel.toml: 1 error\n"
    );
}

#[test]
fn server_with_a_bad_file_exits_2_with_the_errors() {
    let path = write_file("serve-bad", "[echo]\nmodel = \"forking\"\n");
    let out = run(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "keel: {}:2: key `echo.model`: expected one of multi-reactor, prefork, half-sync, \
             leader-followers, thread-per-conn, process-per-conn, got \"forking\"\n",
            path.display()
        )
    );
    let out = run(&["discard", "--config", "/nonexistent/keel.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "keel: /nonexistent/keel.toml: cannot read: No such file or directory (os error 2)\n"
    );
}

#[test]
fn keepalive_count_flag_needs_an_idle_time_somewhere() {
    let out = run(&["echo", "--listen", "127.0.0.1:0", "--keepalive-count", "3"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("needs a keepalive idle time"),
        "stderr: {}",
        text(&out.stderr)
    );
    // With the idle time in the file, the same flag is fine: the server starts.
    let path = write_file("keepalive-idle-in-file", "[echo.keepalive]\nidle = 30\n");
    let srv = Opts::echo("epoll-et")
        .arg("--config", path.to_str().unwrap())
        .arg("--keepalive-count", "3")
        .spawn();
    util::assert_serves(&srv, "keepalive idle from the file, count from the flag");
}

/// A `keel` child started with our own arguments (util's `Server` always passes `--engine`);
/// killed on drop.
struct Plain {
    child: Child,
    tcp: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Plain {
    fn spawn(args: &[&str]) -> Plain {
        let mut child = Command::new(util::keel_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel");
        let pump = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = pump(Box::new(child.stdout.take().unwrap()));
        let stderr = pump(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let tcp = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening tcp ") {
                        break addr.parse().expect("listening address");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let errors: Vec<String> = stderr.try_iter().collect();
                    panic!("keel {args:?}: no `listening tcp` line; stderr: {errors:?}");
                }
            }
        };
        Plain { child, tcp, stderr }
    }

    /// SIGUSR2, then the `stats` line (5 s bound).
    fn stats_line(&self) -> String {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGUSR2).expect("SIGUSR2");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.starts_with("stats ") => return line,
                Ok(_) => {}
                Err(_) => panic!("no stats line within 5 s of SIGUSR2"),
            }
        }
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects, says nothing, and returns how long the server took to close the connection.
fn idle_close_after(addr: SocketAddr, wait: Duration) -> (End, Duration) {
    let mut s = connect(addr);
    let t0 = Instant::now();
    let mut got = Vec::new();
    let end = read_until_end(&mut s, &mut got, 1, wait);
    (end, t0.elapsed())
}

#[test]
fn server_takes_its_settings_from_the_file() {
    // listen, engine and idle_timeout come from the file: no flag but --config.
    let path = write_file(
        "serve-from-file",
        "[echo]\nlisten = \"127.0.0.1:0\"\nengine = \"poll\"\nidle_timeout = 0.3\nthreads = 1\n\
         [discard]\nengine = \"select\"\n",
    );
    let srv = Plain::spawn(&["echo", "--config", path.to_str().unwrap()]);
    assert!(srv.tcp.port() != 0 && srv.tcp.ip().is_loopback());
    // It echoes.
    let mut s = connect(srv.tcp);
    s.write_all(b"hello").unwrap();
    util::read_expect(&mut s, b"hello", Duration::from_secs(5)).unwrap();
    drop(s);
    // An idle client is closed after the file's 0.3 s.
    let (end, took) = idle_close_after(srv.tcp, Duration::from_secs(5));
    assert!(
        matches!(end, End::Eof | End::Reset),
        "idle client not closed: {end:?}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "idle close after {took:?}, expected about 0.3 s"
    );
    let stats = srv.stats_line();
    assert!(
        stats.contains(" engine=poll ") || stats.contains("engine=poll "),
        "{stats}"
    );
}

#[test]
fn flags_override_the_file() {
    let path = write_file(
        "serve-override",
        "[echo]\nengine = \"poll\"\nidle_timeout = 0.3\nthreads = 1\n",
    );
    // util's spawn passes `--listen 127.0.0.1:0 --engine select`: the flag beats the file's
    // poll, while the file's idle timeout still applies.
    let srv = Opts::echo("select")
        .arg("--config", path.to_str().unwrap())
        .spawn();
    assert_eq!(srv.stats().engine(), Some("select"));
    let (end, took) = idle_close_after(srv.tcp, Duration::from_secs(5));
    assert!(
        matches!(end, End::Eof | End::Reset) && took < Duration::from_secs(3),
        "idle client: {end:?} after {took:?}, expected a close after about 0.3 s"
    );

    // --idle-timeout on the command line beats the file's 0.3 s.
    let srv = Opts::echo("epoll-et")
        .arg("--config", path.to_str().unwrap())
        .arg("--idle-timeout", "60")
        .spawn();
    assert_eq!(srv.stats().engine(), Some(srv.engine.as_str()));
    let (end, _) = idle_close_after(srv.tcp, Duration::from_millis(1500));
    assert!(
        matches!(end, End::Timeout),
        "idle client closed before the command line's 60 s: {end:?}"
    );
}

#[test]
fn bad_pid_file_and_rlimit() {
    assert_errors(
        "bad-conventions",
        "[echo]\npid_file = \"\"\nrlimit_nofile = 0\n[discard]\npid_file = 7\nrlimit_nofile = \"many\"\n",
        &[
            "2: key `echo.pid_file`: expected a file path, got an empty string",
            "3: key `echo.rlimit_nofile`: expected an fd count from 1 to 1073741824, got 0",
            "5: key `discard.pid_file`: expected a file path, got integer 7",
            "6: key `discard.rlimit_nofile`: expected an fd count from 1 to 1073741824, got string \"many\"",
        ],
    );
}

#[test]
fn pid_file_and_rlimit_are_read() {
    let c = load_ok(
        "conventions",
        "[echo]\npid_file = \"/run/keel.pid\"\nrlimit_nofile = 65536\n",
    );
    let echo = c.echo.expect("an [echo] section");
    assert_eq!(echo.pid_file, Some(PathBuf::from("/run/keel.pid")));
    assert_eq!(echo.rlimit_nofile, Some(65536));
}

#[test]
fn daemon_user_group_are_checked() {
    assert_errors(
        "bad-daemon",
        "[echo]\ndaemon = \"yes\"\nuser = \"\"\ngroup = 0\n",
        &[
            "2: key `echo.daemon`: expected true or false, got string \"yes\"",
            "3: key `echo.user`: expected a user or group name, got an empty string",
            "4: key `echo.group`: expected a user or group name, got integer 0",
        ],
    );
    let c = load_ok(
        "daemon",
        "[echo]\ndaemon = true\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
    );
    let echo = c.echo.expect("an [echo] section");
    assert_eq!(echo.daemon, Some(true));
    assert_eq!(echo.user.as_deref(), Some("nobody"));
    assert_eq!(echo.group.as_deref(), Some("nogroup"));
}

#[test]
fn http_section_keys_are_checked() {
    assert_errors(
        "http-keys",
        r#"[http]
root = 17
max_body = -1
access_log = ""
keepalive_requests = 0
log_target = "journal"
log_filter = "info,keel=loudest"
autoindex = "yes"
work_ms = 3
tee_file_max = 16777217
"#,
        &[
            "2: key `http.root`: expected a file path, got integer 17",
            "3: key `http.max_body`: expected a number of bytes from 0 to 2^53, got -1",
            "4: key `http.access_log`: expected a file path, got an empty string",
            "5: key `http.keepalive_requests`: expected an integer of at least 1, got 0",
            "6: key `http.log_target`: expected one of stderr, file, syslog, got \"journal\"",
            "7: key `http.log_filter`: invalid log filter \"info,keel=loudest\": error parsing level \
             filter: expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\", or \
             a number 0-5",
            "8: key `http.autoindex`: expected true or false, got string \"yes\"",
            "9: key `http.work_ms`: only [echo] takes work_ms; http has no handler work to delay",
            "10: key `http.tee_file_max`: expected a size in bytes from 0 to 16777216, got \
             16777217",
        ],
    );
}

/// A misspelt level is refused with its line: tracing reads a bare word that is not a level as
/// a module name, and `warning` logged nothing at all, errors included. A level in any case,
/// and keel's own modules, are fine.
#[test]
fn a_misspelt_log_level_is_refused_with_its_line() {
    assert_errors(
        "log-level",
        "[echo]\nthreads = 1\nlog_filter = \"warning\"\n",
        &[
            "3: key `echo.log_filter`: invalid log filter \"warning\": \"warning\" is neither a \
           level (trace, debug, info, warn, error, off) nor one of keel's modules (keel, \
           keel::http...): as a module it would select no line at all",
        ],
    );
    for good in [
        "WARN",
        "keel",
        "keel::http",
        "info,keel::net=debug",
        "error,keel[conn]=off",
    ] {
        assert!(
            config::parse_log_filter(good).is_ok(),
            "{good}: {:?}",
            config::parse_log_filter(good)
        );
    }
    for bad in ["verbose", "info,notice", "tokio"] {
        assert!(config::parse_log_filter(bad).is_err(), "{bad}");
    }
}

/// Keys valid one by one that cannot go together are the file's errors too, with the line of
/// the key blamed: `check-config` said "ok" for these and the server then refused to start
/// (exit 2) with a message naming command-line flags.
#[test]
fn keys_that_cannot_go_together_are_errors_with_their_line() {
    assert_errors(
        "conflicts",
        r#"[echo]
listen = "127.0.0.1:9000"
admin = "0.0.0.0:9000"

[discard]
model = "leader-followers"
engine = "poll"

[http]
model = "prefork"
accept = "acceptor"
"#,
        &[
            "3: key `echo.admin`: admin 0.0.0.0:9000 and listen 127.0.0.1:9000 would share a \
             port: the admin listener needs one of its own",
            "7: key `discard.engine`: the leader-followers model shares one epoll instance \
             between its threads (EPOLLONESHOT): engine poll cannot do that; use epoll-lt or \
             epoll-et",
            "11: key `http.accept`: accept = acceptor is how the multi-reactor model hands \
             connections to its loops; the prefork model accepts its own way: drop it or use \
             model multi-reactor",
        ],
    );
    assert_errors(
        "log-conflicts",
        "[echo]\nlog_target = \"file\"\n",
        &[
            "2: key `echo.log_target`: log target `file` needs a log file (log_file, --log-file \
           PATH)",
        ],
    );
    // A conflict with a key the section leaves to the command line (or the default) is not
    // the file's: `--listen` may move the site off the admin port, `--engine` may give
    // leader-followers an epoll. And a log file beside another target loads (it is not
    // used, and the server says so).
    load_ok(
        "admin-without-listen",
        "[echo]\nadmin = \"127.0.0.1:7007\"\n",
    );
    load_ok(
        "http-admin-without-listen",
        "[http]\nadmin = \"127.0.0.1:8080\"\n",
    );
    load_ok(
        "lf-without-engine",
        "[echo]\nmodel = \"leader-followers\"\n",
    );
    load_ok(
        "stderr-and-file",
        "[http]\nlog_file = \"/tmp/k.log\"\nlog_target = \"stderr\"\n",
    );
    // A conflict left to the command line does not hide one the section sets in full.
    assert_errors(
        "masked-conflict",
        "[echo]\nadmin = \"127.0.0.1:7007\"\nmodel = \"half-sync\"\naccept = \"acceptor\"\n",
        &[
            "4: key `echo.accept`: accept = acceptor is how the multi-reactor model hands \
           connections to its loops; the half-sync model accepts its own way: drop it or use \
           model multi-reactor",
        ],
    );
    // A key already wrong on its own is said once, not again as a conflict of its default.
    assert_errors(
        "conflict-after-error",
        "[echo]\nmodel = \"leader-followers\"\nengine = \"kqueue\"\n",
        &["3: key `echo.engine`: expected one of select, poll, epoll-lt, epoll-et, uring, got \"kqueue\""],
    );
}

/// The log target and file go together across the command line and the file: a target that
/// writes no file sets the file's `log_file` aside, a file the file's other target.
#[test]
fn the_command_line_log_target_and_file_override_the_file_as_a_pair() {
    use keel::ops::log::LogTarget;
    let file = |target: Option<&str>, path: Option<&str>| ServerSettings {
        log_target: target.map(str::to_string),
        log_file: path.map(std::path::PathBuf::from),
        ..ServerSettings::default()
    };
    let target = |cli: ServerSettings, f: ServerSettings| cli.or(&f).log_settings().unwrap().target;
    let from_file = || file(None, Some("/var/log/keel.log"));
    assert_eq!(
        target(file(Some("stderr"), None), from_file()),
        LogTarget::Stderr
    );
    assert_eq!(
        target(file(Some("file"), None), from_file()),
        LogTarget::File("/var/log/keel.log".into())
    );
    assert_eq!(
        target(file(None, Some("/tmp/x.log")), file(Some("syslog"), None)),
        LogTarget::File("/tmp/x.log".into())
    );
    assert_eq!(
        target(
            file(None, Some("/tmp/x.log")),
            file(Some("file"), Some("/var/log/k.log"))
        ),
        LogTarget::File("/tmp/x.log".into())
    );
    assert_eq!(
        target(file(None, None), from_file()),
        LogTarget::File("/var/log/keel.log".into())
    );
}

#[test]
fn a_full_http_section_loads() {
    let c = keel::ops::config::parse(
        "t.toml",
        r#"[http]
listen = "127.0.0.1:8080"
root = "/srv/www"
autoindex = true
gzip_static = false
keepalive_timeout = 5
header_timeout = 2.5
max_body = 4096
cache_valid = 0.5
access_log = "off"
admin = "127.0.0.1:9090"
log_target = "file"
log_file = "/var/log/keel.log"
log_filter = "warn,keel::http=debug"
"#,
    )
    .unwrap();
    let http = c.http.expect("an [http] section");
    assert_eq!(http.admin, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(
        http.http.root.as_deref(),
        Some(std::path::Path::new("/srv/www"))
    );
    let s = http.http.to_settings();
    assert!(s.autoindex && !s.gzip_static);
    assert_eq!(s.keepalive_timeout, Duration::from_secs(5));
    assert_eq!(s.header_timeout, Duration::from_millis(2500));
    assert_eq!(s.limits.max_body, 4096);
    assert_eq!(s.access_log, None);
    let log = http.log_settings().unwrap();
    assert_eq!(log.filter, "warn,keel::http=debug");
    assert_eq!(
        log.target,
        keel::ops::log::LogTarget::File("/var/log/keel.log".into())
    );
}

/// The admin listener may not share the site's port; IPv6 listeners are V6ONLY, so an IPv4
/// and an IPv6 address on one port do not clash, and neither do two addresses of one family
/// that differ (and are both specified).
#[test]
fn the_admin_port_clashes_only_within_one_address_family() {
    let with = |listen: &str, admin: &str| {
        ServerSettings {
            listen: Some(listen.parse().unwrap()),
            admin: Some(admin.parse().unwrap()),
            ..ServerSettings::default()
        }
        .to_options()
    };
    for (listen, admin) in [
        ("127.0.0.1:18081", "127.0.0.1:18081"),
        ("0.0.0.0:18081", "127.0.0.1:18081"),
        ("127.0.0.1:18081", "0.0.0.0:18081"),
        ("[::]:18081", "[::1]:18081"),
    ] {
        let e = with(listen, admin).expect_err(&format!("{listen} with admin {admin}"));
        assert!(e.contains("would share a port"), "{e}");
    }
    for (listen, admin) in [
        ("[::]:18081", "127.0.0.1:18081"),
        ("0.0.0.0:18081", "[::1]:18081"),
        ("127.0.0.1:18081", "127.0.0.2:18081"),
        ("127.0.0.1:18081", "127.0.0.1:18082"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        assert!(
            with(listen, admin).is_ok(),
            "{listen} with admin {admin}: {:?}",
            with(listen, admin).err()
        );
    }
}

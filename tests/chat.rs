//! `keel chat` and `keel chat-client`: framing, broadcast over every loop, names, heartbeats,
//! slow members, protocol errors, models and the config file. Real sockets on loopback.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use keel::codec::frame::{self, Decoded};
use keel::services::chat::{ERROR, MSG, NICK, NOTICE, PING, PONG, SAY};

use util::{connect, keel_bin, Opts, ENGINES};

/// A member as the tests drive it: frames in and out by hand.
struct Member {
    s: TcpStream,
    pending: Vec<u8>,
    name: String,
}

/// What came from the server.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Frame(u8, Vec<u8>),
    Eof,
    Reset,
    Timeout,
}

impl Member {
    /// Connects and waits for the welcome notice, which says the member is in the room.
    fn join(addr: SocketAddr) -> Member {
        let mut m = Member {
            s: connect(addr),
            pending: Vec::new(),
            name: String::new(),
        };
        match m.recv(Duration::from_secs(5)) {
            Got::Frame(NOTICE, body) => {
                let text = String::from_utf8(body).unwrap();
                m.name = text.strip_prefix("welcome ").expect(&text).to_string();
            }
            other => panic!("expected the welcome notice, got {other:?}"),
        }
        m
    }

    fn send(&mut self, kind: u8, body: &[u8]) {
        self.s.write_all(&frame::frame(kind, &[body])).unwrap();
    }

    fn say(&mut self, text: &str) {
        self.send(SAY, text.as_bytes());
    }

    /// The next frame (any size the server may send), or how the stream ended.
    fn recv(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            if let Decoded::Frame { kind, body, size } =
                frame::decode(&self.pending, frame::MAX_LIMIT).expect("a well-formed frame")
            {
                let got = Got::Frame(kind, body.to_vec());
                self.pending.drain(..size);
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 64 * 1024];
            match self.s.read(&mut buf) {
                Ok(0) => return Got::Eof,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if util::is_reset(&e) => return Got::Reset,
                Err(e) if util::is_timeout(&e) => return Got::Timeout,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next MSG, as `name: text`, skipping PINGs.
    fn next_msg(&mut self) -> String {
        loop {
            match self.recv(Duration::from_secs(10)) {
                Got::Frame(MSG, body) => {
                    let n = body[0] as usize;
                    return format!(
                        "{}: {}",
                        String::from_utf8_lossy(&body[1..1 + n]),
                        String::from_utf8_lossy(&body[1 + n..])
                    );
                }
                Got::Frame(PING, _) => {}
                other => panic!("{}: expected a MSG, got {other:?}", self.name),
            }
        }
    }

    /// The ERROR frame's text, then the end of the stream.
    fn expect_error_then_end(&mut self) -> String {
        let why = loop {
            match self.recv(Duration::from_secs(10)) {
                Got::Frame(ERROR, body) => break String::from_utf8(body).unwrap(),
                Got::Frame(PING, _) => {}
                other => panic!("expected an ERROR frame, got {other:?}"),
            }
        };
        assert_eq!(
            self.recv(Duration::from_secs(10)),
            Got::Eof,
            "after {why:?}"
        );
        why
    }
}

fn chat(engine: &str) -> Opts {
    Opts::chat(engine).arg("--threads", "2")
}

#[test]
fn every_member_on_every_loop_hears_every_message_in_each_speakers_order() {
    for engine in ENGINES {
        let srv = chat(engine).spawn();
        // Connections spread over both loops (SO_REUSEPORT hashes them), so a message
        // crosses loops through their task queues.
        let mut members: Vec<Member> = (0..12).map(|_| Member::join(srv.tcp)).collect();
        const EACH: usize = 20;
        for (i, speaker) in [0usize, 5, 9].into_iter().enumerate() {
            for n in 0..EACH {
                let text = format!("{i}-{n}");
                if n % 7 == 3 {
                    // Framing: a frame cut into one-byte writes.
                    let f = frame::frame(SAY, &[text.as_bytes()]);
                    for b in f {
                        members[speaker].s.write_all(&[b]).unwrap();
                    }
                } else {
                    members[speaker].say(&text);
                }
            }
        }
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        for m in &mut members {
            let mut next = [0usize; 3];
            for _ in 0..3 * EACH {
                let line = m.next_msg();
                let (who, text) = line.split_once(": ").unwrap();
                let (i, n) = text.split_once('-').unwrap();
                let (i, n): (usize, usize) = (i.parse().unwrap(), n.parse().unwrap());
                assert_eq!(who, names[[0, 5, 9][i]], "{engine}: {line}");
                assert_eq!(n, next[i], "{engine}: {} heard {line} out of order", m.name);
                next[i] += 1;
            }
        }
        let (s, ok) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 12);
        assert!(ok, "{engine}: {s:?}");
    }
}

/// A client the server refuses (over `--max-conns`) is told why in an ERROR frame, then
/// closed; it was a bare close. The member inside hears nothing of it.
#[test]
fn a_member_refused_at_the_limit_is_told_why() {
    let srv = chat("epoll-et").arg("--max-conns", "1").spawn();
    let mut inside = Member::join(srv.tcp);
    let mut refused = Member {
        s: connect(srv.tcp),
        pending: Vec::new(),
        name: String::new(),
    };
    let why = refused.expect_error_then_end();
    assert!(why.contains("full"), "{why:?}");
    inside.say("still here");
    assert_eq!(inside.next_msg(), format!("{}: still here", inside.name));
    assert!(srv.stats().get("refused_limit") >= 1, "{:?}", srv.stats());
}

#[test]
fn two_frames_in_one_write_are_two_messages() {
    let srv = chat("epoll-et").spawn();
    let mut a = Member::join(srv.tcp);
    let mut both = frame::frame(SAY, &[b"one"]);
    frame::encode(SAY, &[b"two"], &mut both);
    a.s.write_all(&both).unwrap();
    assert_eq!(a.next_msg(), format!("{}: one", a.name));
    assert_eq!(a.next_msg(), format!("{}: two", a.name));
}

#[test]
fn a_name_can_be_changed_and_a_bad_one_is_refused_with_a_notice() {
    let srv = chat("epoll-lt").spawn();
    let mut a = Member::join(srv.tcp);
    let mut b = Member::join(srv.tcp);
    assert!(a.name.starts_with("guest-"), "{}", a.name);
    a.send(NICK, "alice".as_bytes());
    assert_eq!(
        a.recv(Duration::from_secs(5)),
        Got::Frame(NOTICE, b"you are now alice".to_vec())
    );
    for bad in [&b""[..], &[b'x'; 33][..], b"tab\there", &[0xff, 0xfe][..]] {
        a.send(NICK, bad);
        match a.recv(Duration::from_secs(5)) {
            Got::Frame(NOTICE, text) => {
                assert!(text.starts_with(b"name refused"), "{bad:?}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    a.say("hi");
    assert_eq!(b.next_msg(), "alice: hi");
    assert_eq!(a.next_msg(), "alice: hi");
}

#[test]
fn frames_that_break_the_protocol_get_an_error_frame_and_a_close_and_the_room_goes_on() {
    for engine in ENGINES {
        let srv = chat(engine).arg("--max-frame", "1000").spawn();
        let mut watcher = Member::join(srv.tcp);

        // Over the limit: refused on the header alone, the body never sent.
        let mut m = Member::join(srv.tcp);
        m.s.write_all(&1001u32.to_be_bytes()).unwrap();
        assert_eq!(
            m.expect_error_then_end(),
            "a frame of 1001 bytes, over the limit of 1000",
            "{engine}"
        );

        let mut m = Member::join(srv.tcp);
        m.s.write_all(&[0, 0, 0, 0]).unwrap();
        assert!(m.expect_error_then_end().contains("length 0"), "{engine}");

        let mut m = Member::join(srv.tcp);
        m.send(0x55, b"?");
        assert_eq!(
            m.expect_error_then_end(),
            "unexpected frame kind 0x55 from a client",
            "{engine}"
        );
        // A server-only kind from a client is as wrong.
        let mut m = Member::join(srv.tcp);
        m.send(MSG, b"\x01xforged");
        assert!(m.expect_error_then_end().contains("0x03"), "{engine}");

        // A frame exactly at the limit is fine.
        let text = "y".repeat(999);
        watcher.say(&text);
        assert_eq!(watcher.next_msg(), format!("{}: {text}", watcher.name));
        assert!(srv.is_running());
    }
}

#[test]
fn a_silent_member_is_pinged_then_dropped_and_one_that_answers_stays() {
    for engine in ["poll", "epoll-et"] {
        let srv = chat(engine)
            .arg("--heartbeat", "0.3")
            .arg("--heartbeat-timeout", "1")
            .spawn();
        let mut silent = Member::join(srv.tcp);
        let mut lively = Member::join(srv.tcp);
        let t0 = Instant::now();
        let answering = thread::spawn(move || {
            // Answers every PING for 2 s: the server must not drop it.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut pings = 0;
            while Instant::now() < deadline {
                match lively.recv(deadline.saturating_duration_since(Instant::now())) {
                    Got::Frame(PING, body) => {
                        pings += 1;
                        lively.send(PONG, &body);
                    }
                    Got::Timeout => break,
                    other => panic!("the answering member got {other:?}"),
                }
            }
            (lively, pings)
        });
        // The silent one is asked first...
        assert_eq!(
            silent.recv(Duration::from_secs(2)),
            Got::Frame(PING, Vec::new()),
            "{engine}"
        );
        let pinged = t0.elapsed();
        // ...and dropped at the timeout, with the reason.
        let why = silent.expect_error_then_end();
        let dropped = t0.elapsed();
        assert!(why.starts_with("heartbeat timeout"), "{engine}: {why}");
        assert!(
            pinged >= Duration::from_millis(250) && pinged < Duration::from_millis(900),
            "{engine}: pinged after {pinged:?}"
        );
        assert!(
            dropped >= Duration::from_millis(950) && dropped < Duration::from_millis(1900),
            "{engine}: dropped after {dropped:?}"
        );
        let (mut lively, pings) = answering.join().unwrap();
        assert!(pings >= 3, "{engine}: {pings} pings in 2 s of silence");
        lively.say("still here");
        assert_eq!(lively.next_msg(), format!("{}: still here", lively.name));
    }
}

/// Bytes of a frame still arriving are a sign of life: a member sending one large message
/// over a slow link, longer than the heartbeat timeout, is not dropped as silent.
#[test]
fn a_member_trickling_a_large_message_is_not_silent() {
    let srv = chat("epoll-et")
        .arg("--heartbeat", "0.3")
        .arg("--heartbeat-timeout", "1")
        .spawn();
    let mut m = Member::join(srv.tcp);
    let text = "t".repeat(1500);
    let bytes = frame::frame(SAY, &[text.as_bytes()]);
    // 1.5 KB in 100-byte pieces every 100 ms: 1.5 s, past the 1 s timeout.
    for piece in bytes.chunks(100) {
        m.s.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(m.next_msg(), format!("{}: {text}", m.name));
}

#[test]
fn a_member_that_does_not_read_is_dropped_and_the_others_hear_everything() {
    // A small send buffer, so that the kernel holds little of what waits for the slow member
    // and the rest queues in the server, where the high-water mark sees it.
    let srv = Opts::chat("epoll-et")
        .arg("--threads", "1")
        .arg("--sndbuf", "16384")
        .spawn();
    let mut speaker = Member::join(srv.tcp);
    let slow = Member::join(srv.tcp);
    socket2::SockRef::from(&slow.s)
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut listener = Member::join(srv.tcp);
    const N: usize = 400;
    let body = "z".repeat(8000);
    let expect = format!("{}: {body}", speaker.name);
    // The speaker keeps at most 64 messages (512 KB) ahead of the listener, so that a listener
    // thread the scheduler holds back (a loaded machine) is never the one that is too slow.
    const AHEAD: usize = 64;
    let (heard, heard_rx) = std::sync::mpsc::channel::<usize>();
    let reader = thread::spawn(move || {
        for i in 0..N {
            assert_eq!(listener.next_msg(), expect, "message {i}");
            let _ = heard.send(i);
        }
    });
    // 400 × 8 KB: 3.2 MB for the slow member, far past the 1 MiB high-water mark.
    let own = format!("{}: {body}", speaker.name);
    let sayer = thread::spawn(move || {
        for i in 0..N {
            if i >= AHEAD {
                heard_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the listener hears");
            }
            speaker.say(&body);
            // The speaker hears itself too: it reads as it goes, as a client would.
            assert_eq!(speaker.next_msg(), own);
        }
        speaker
    });
    reader.join().unwrap();
    let mut speaker = sayer.join().unwrap();
    assert!(
        srv.stderr_has("which read too slowly", Duration::from_secs(5)),
        "{}",
        srv.stderr_dump()
    );
    // The slow one was cut off with a reset: what it reads ends in one, not a clean end.
    let mut slow = slow;
    slow.s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Vec::new();
    let end = slow.s.read_to_end(&mut sink);
    assert!(
        end.as_ref().is_err_and(util::is_reset),
        "the slow member's stream ended with {end:?}"
    );
    // The speaker is alone now (the listener hung up when done) and still served.
    speaker.say("after");
    assert_eq!(speaker.next_msg().rsplit(": ").next(), Some("after"));
    let (s, ok) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 1);
    assert!(ok, "{s:?}");
}

#[test]
fn a_member_that_leaves_gets_a_clean_close_and_nothing_stays_open() {
    for engine in ENGINES {
        let srv = chat(engine).spawn();
        let baseline = srv.baseline_fds();
        let mut members: Vec<Member> = (0..20).map(|_| Member::join(srv.tcp)).collect();
        members[0].say("bye all");
        for m in &mut members {
            assert_eq!(m.next_msg().rsplit(": ").next(), Some("bye all"));
            m.s.shutdown(Shutdown::Write).unwrap();
            assert_eq!(m.recv(Duration::from_secs(5)), Got::Eof, "{engine}");
        }
        drop(members);
        assert_eq!(
            srv.fd_count_settles_to(baseline, Duration::from_secs(5)),
            baseline,
            "{engine}: {:?}",
            srv.fd_listing()
        );
        let mut late = Member::join(srv.tcp);
        late.say("anyone?");
        assert_eq!(late.next_msg(), format!("{}: anyone?", late.name));
    }
}

#[test]
fn sigterm_closes_every_member_and_exits_0() {
    let srv = chat("epoll-et").spawn();
    let mut members: Vec<Member> = (0..10).map(|_| Member::join(srv.tcp)).collect();
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    for mut m in members.drain(..) {
        assert_eq!(m.recv(Duration::from_secs(5)), Got::Eof);
        // A client closes on the server's FIN, which ends the server's graceful close.
    }
    let status = srv.wait_exit(Duration::from_secs(5)).expect("it exits");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", srv.stderr_dump());
}

#[test]
fn thread_per_conn_carries_the_room_and_models_that_would_split_it_are_refused() {
    let srv = Opts::chat("epoll-lt")
        .arg("--model", "thread-per-conn")
        .arg("--threads", "8")
        .spawn();
    let mut members: Vec<Member> = (0..4).map(|_| Member::join(srv.tcp)).collect();
    members[2].say("one thread each");
    let name = members[2].name.clone();
    for m in &mut members {
        assert_eq!(m.next_msg(), format!("{name}: one thread each"));
    }
    for model in [
        "prefork",
        "process-per-conn",
        "half-sync",
        "leader-followers",
    ] {
        let out = Command::new(keel_bin())
            .args(["chat", "--listen", "127.0.0.1:0", "--model", model])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{model}: {err}");
        assert!(
            err.contains(&format!("the chat server cannot run under {model}")),
            "{model}: {err}"
        );
    }
}

#[test]
fn bad_chat_arguments_exit_2_with_the_reason() {
    for (args, needle) in [
        (
            &["--heartbeat", "5", "--heartbeat-timeout", "5"][..],
            "must be longer than the heartbeat interval",
        ),
        (&["--max-frame", "10"][..], "out of range (33 to 16777183)"),
        (&["--heartbeat", "0"][..], "--heartbeat"),
    ] {
        for sub in ["chat", "chat-client"] {
            let mut cmd = Command::new(keel_bin());
            cmd.arg(sub);
            if sub == "chat" {
                cmd.args(["--listen", "127.0.0.1:0"]);
            } else {
                cmd.args(["--connect", "127.0.0.1:9"]);
            }
            let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{sub} {args:?}: {err}");
            assert!(err.contains(needle), "{sub} {args:?}: {err}");
        }
    }
}

/// A heartbeat timeout below the default heartbeat (15 s), the heartbeat left unset: check-config
/// warns, with the line, and the server refuses it naming that line (exit 2). check-config said
/// "ok" and the server refused it without a line; a command-line heartbeat under it is fine.
#[test]
fn a_heartbeat_timeout_below_the_default_heartbeat_is_named_with_its_line() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-chat-hb");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chat.toml");
    std::fs::write(
        &path,
        "[chat]\nlisten = \"127.0.0.1:0\"\nheartbeat_timeout = 10\n",
    )
    .unwrap();
    let needle = format!(
        "{}:3: key `chat.heartbeat_timeout`: the heartbeat timeout (10 s) must be longer than \
         the heartbeat interval (15 s)",
        path.display()
    );
    let check = Command::new(keel_bin())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr);
    assert!(said.contains(&format!("warning: {needle}")), "{said}");
    let start = Command::new(keel_bin())
        .args(["chat", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&start.stderr);
    assert_eq!(start.status.code(), Some(2), "{err}");
    assert!(err.contains(&needle), "{err}");
    let srv = Opts::chat("epoll-et")
        .arg("--config", path.to_str().unwrap())
        .arg("--heartbeat", "5")
        .spawn();
    drop(Member::join(srv.tcp));
}

#[test]
fn check_config_reports_chat_errors_with_their_lines() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-chat");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chat.toml");
    std::fs::write(
        &path,
        "[chat]\nmodel = \"prefork\"\nheartbeat = 10\nheartbeat_timeout = 10\nmax_frame = 5\nsplice = true\n",
    )
    .unwrap();
    let out = Command::new(keel_bin())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let file = path.display();
    for needle in [
        format!("{file}:2: key `chat.model`: the chat server cannot run under prefork"),
        format!("{file}:4: key `chat.heartbeat_timeout`: must be longer than heartbeat"),
        format!("{file}:5: key `chat.max_frame`: expected a number of bytes from 33 to"),
        format!("{file}:6: key `chat.splice`: unknown key; expected one of"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    std::fs::write(
        &path,
        "[chat]\nheartbeat = 2\nheartbeat_timeout = 7.5\nmax_frame = 4096\n",
    )
    .unwrap();
    let out = Command::new(keel_bin())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the server takes them: a frame over 4096 is refused.
    let srv = Opts::chat("epoll-et")
        .arg("--config", path.to_str().unwrap())
        .spawn();
    let mut m = Member::join(srv.tcp);
    m.s.write_all(&4097u32.to_be_bytes()).unwrap();
    assert!(m.expect_error_then_end().contains("over the limit of 4096"));
}

// ---------------------------------------------------------------------------------------------
// keel chat-client

/// With frames of a megabyte allowed, a member that does not read is dropped as soon as a
/// delivery leaves more than its limit (two of the largest messages) waiting, not at the next
/// look of a timer: a fast speaker piled up three times the limit before that.
#[test]
fn a_member_that_does_not_read_is_dropped_at_its_limit_even_with_large_frames() {
    let max_frame = 1 << 20;
    let srv = Opts::chat("epoll-et")
        .arg("--threads", "1")
        .arg("--max-frame", &max_frame.to_string())
        .spawn();
    let mut speaker = Member::join(srv.tcp);
    let slow = Member::join(srv.tcp);
    socket2::SockRef::from(&slow.s)
        .set_recv_buffer_size(4096)
        .unwrap();
    // The speaker says everything at once, and hears itself on a thread of its own through
    // a large receive buffer, so that it is never the slow one.
    let _ = socket2::SockRef::from(&speaker.s).set_recv_buffer_size(8 << 20);
    let mut hearing = Member {
        s: speaker.s.try_clone().unwrap(),
        pending: Vec::new(),
        name: speaker.name.clone(),
    };
    const N: usize = 12;
    let ear = thread::spawn(move || {
        for _ in 0..N {
            hearing.next_msg();
        }
    });
    let body = "m".repeat(max_frame - 100);
    for _ in 0..N {
        speaker.say(&body);
    }
    ear.join().unwrap();
    assert!(
        srv.stderr_has("which read too slowly", Duration::from_secs(5)),
        "{}",
        srv.stderr_dump()
    );
    let log = srv.stderr_dump();
    let waited: usize = log
        .split("which read too slowly: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in:\n{log}"));
    // The limit, plus the one message whose delivery passed it.
    let limit = 2 * (frame::HEADER + 2 + 32 + max_frame);
    assert!(
        waited <= limit + max_frame + 64,
        "{waited} bytes waited for the slow member (limit {limit})"
    );
    drop(slow);
}

fn client(addr: SocketAddr, extra: &[&str]) -> Command {
    let mut cmd = Command::new(keel_bin());
    cmd.args(["chat-client", "--connect", &addr.to_string()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn the_client_says_its_lines_prints_the_room_and_exits_0_at_end_of_input() {
    let srv = chat("epoll-et").spawn();
    let mut watcher = Member::join(srv.tcp);
    let mut c = client(srv.tcp, &["--nick", "carol"]).spawn().unwrap();
    let mut stdin = c.stdin.take().unwrap();
    // The NICK goes first, then the lines.
    stdin.write_all(b"hello room\n/nick caz\nbye\n").unwrap();
    assert_eq!(watcher.next_msg(), "carol: hello room");
    assert_eq!(watcher.next_msg(), "caz: bye");
    watcher.say("see you");
    thread::sleep(Duration::from_millis(300));
    drop(stdin); // end of input: the client leaves
    let out = c.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("* welcome guest-"), "{stdout}");
    for want in [
        "* you are now carol",
        "carol: hello room",
        "* you are now caz",
        "caz: bye",
        &format!("{}: see you", watcher.name),
    ] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{stdout}");
    }
    let (s, ok) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 1);
    assert!(ok, "{s:?}");
}

/// A `/nick` line with a name the server would refuse is refused by the client, as an
/// oversize SAY line is, and the session goes on. A name over the frame limit used to end it.
#[test]
fn the_client_refuses_a_bad_nick_line_and_carries_on() {
    let srv = chat("epoll-et").spawn();
    let mut watcher = Member::join(srv.tcp);
    let mut c = client(srv.tcp, &["--nick", "dora"]).spawn().unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let long = "n".repeat(70_000);
    stdin
        .write_all(
            format!(
                "/nick {long}
/nick a\tb
still here
"
            )
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(watcher.next_msg(), "dora: still here");
    drop(stdin);
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The long one is over the frame limit before it is a bad name.
    assert!(
        err.matches("/nick: a name is 1 to").count() == 1
            && err.contains("a line of 70006 bytes is over the frame limit"),
        "each bad line is said: {err}"
    );
}

/// What others say cannot pose as the server or drive the terminal: control characters are
/// printed escaped. Input that is not UTF-8 is still sent (as U+FFFD), not taken for the end
/// of input. And frames bigger than the client's own `--max-frame` that the server relays
/// (its limit is larger) are taken.
#[test]
fn the_client_escapes_what_it_prints_sends_bad_utf8_and_takes_the_servers_frame_sizes() {
    let srv = chat("epoll-et").arg("--max-frame", "200000").spawn();
    let mut watcher = Member::join(srv.tcp);
    let mut c = client(srv.tcp, &["--nick", "eve"]).spawn().unwrap();
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(b"one\n\xff\xfe bad\nthree\n").unwrap();
    assert_eq!(watcher.next_msg(), "eve: one");
    assert_eq!(watcher.next_msg(), "eve: \u{fffd}\u{fffd} bad");
    assert_eq!(watcher.next_msg(), "eve: three");
    watcher.say("hi\n* welcome admin\x1b[31m");
    let big = "b".repeat(100_000);
    watcher.say(&big);
    watcher.say("last");
    for _ in 0..3 {
        watcher.next_msg();
    }
    thread::sleep(Duration::from_millis(300));
    drop(stdin);
    let out = c.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = stdout.lines().collect();
    let w = &watcher.name;
    for want in [
        format!("{w}: hi\\u{{a}}* welcome admin\\u{{1b}}[31m"),
        format!("{w}: {big}"),
        format!("{w}: last"),
    ] {
        assert!(
            lines.contains(&want.as_str()),
            "missing {:.80}... in:\n{:.2000}",
            want,
            stdout
        );
    }
    assert!(!stdout.contains('\x1b') && !lines.contains(&"* welcome admin"));
}

#[test]
fn the_client_exits_1_with_the_reason_when_the_server_is_unreachable_or_silent() {
    let (_held, dead) = util::dead_addr(); // refused: bound, not listening
    let out = client(dead, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot connect to {dead}")), "{err}");

    // A server that accepts and then says nothing, not even to a PING.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = mute.local_addr().unwrap();
    let hold = thread::spawn(move || mute.accept().map(|(s, _)| s));
    let t0 = Instant::now();
    let mut c = client(addr, &["--heartbeat", "0.2", "--heartbeat-timeout", "0.6"])
        .spawn()
        .unwrap();
    let _stdin = c.stdin.take(); // kept open: the client must end by itself
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let out = c.wait_with_output().unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("heartbeat timeout"), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // And the mute server did get the client's PING.
    let mut s = hold.join().unwrap().unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.starts_with(&frame::frame(PING, &[])), "{got:?}");

    // A server that closes with an ERROR frame: its reason is the client's.
    let srv = chat("epoll-et").arg("--max-frame", "40").spawn();
    let mut c = client(srv.tcp, &[]).spawn().unwrap();
    let mut stdin = c.stdin.take().unwrap();
    // The client's limit is its own (64 KiB by default): the server's 40 refuses the line.
    stdin
        .write_all(format!("{}\n", "w".repeat(40)).as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("server: a frame of 41 bytes, over the limit of 40"),
        "{err}"
    );
    drop(stdin);
}

#[test]
fn a_reload_keeps_the_room_and_new_members_get_the_new_settings() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-chat");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("reload.toml");
    std::fs::write(&path, "[chat]\nthreads = 2\nmax_frame = 4096\n").unwrap();
    let srv = Opts::chat("epoll-et")
        .arg("--config", path.to_str().unwrap())
        .spawn();
    let mut before = Member::join(srv.tcp);
    std::fs::write(&path, "[chat]\nthreads = 2\nmax_frame = 100\n").unwrap();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        srv.stderr_has("configuration reloaded", Duration::from_secs(5)),
        "{}",
        srv.stderr_dump()
    );
    let mut after = Member::join(srv.tcp);
    // One room across the reload, both ways.
    before.say("from before");
    assert_eq!(after.next_msg(), format!("{}: from before", before.name));
    after.say("from after");
    assert_eq!(before.next_msg(), format!("{}: from before", before.name));
    assert_eq!(before.next_msg(), format!("{}: from after", after.name));
    // The member from before keeps its settings; the new one has the new limit.
    let long = "l".repeat(500);
    before.say(&long);
    assert_eq!(after.next_msg(), format!("{}: from after", after.name));
    assert_eq!(after.next_msg(), format!("{}: {long}", before.name));
    after.say(&long);
    assert!(after
        .expect_error_then_end()
        .contains("over the limit of 100"));
}

#[test]
fn bench_chat_counts_every_delivery_and_fails_when_nothing_answers() {
    let srv = chat("epoll-et").spawn();
    let out = Command::new(keel_bin())
        .args(["bench", "chat", "--addr", &srv.tcp.to_string()])
        .args(["--members", "20", "--speakers", "4", "--duration", "0.5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| -> u64 {
        let kv = stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {stdout}"));
        kv.parse().unwrap()
    };
    let (said, delivered) = (field("said_total"), field("delivered_total"));
    assert!(said > 100, "{stdout}");
    // Once the speakers fell silent, every message said reached all 20 members.
    assert_eq!(field("undelivered"), 0, "{stdout}");
    assert!(delivered >= said * 20, "{stdout}");
    assert_eq!(field("errors"), 0, "{stdout}");

    let (_held, dead) = util::dead_addr(); // refused: bound, not listening
    let out = Command::new(keel_bin())
        .args([
            "bench",
            "chat",
            "--addr",
            &dead.to_string(),
            "--duration",
            "0.5",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn a_speaker_is_slowed_to_the_pace_of_the_slowest_loop_and_memory_stays_bounded() {
    // Two loops, connections dealt out in turn: the speaker alone on loop 0, 100 readers on
    // loop 1, which has a hundred writes to make for each of the speaker's reads.
    let srv = Opts::chat("epoll-et")
        .arg("--threads", "2")
        .arg("--accept", "acceptor")
        .spawn();
    let mut on_loop0 = Vec::new();
    let mut readers = Vec::new();
    for i in 0..201 {
        let m = Member::join(srv.tcp);
        if i % 2 == 0 {
            on_loop0.push(m);
        } else {
            readers.push(m);
        }
    }
    let speaker = on_loop0.remove(0);
    drop(on_loop0); // loop 0 keeps the speaker only
    let rss_before = util::rss_kib(srv.pid);
    let deadline = Instant::now() + Duration::from_secs(3);
    // Every member reads all the time (one thread each: a member that does not read is
    // dropped, which is another test).
    let mut drains = Vec::new();
    for m in readers.iter().chain(std::iter::once(&speaker)) {
        let mut s = m.s.try_clone().unwrap();
        drains.push(thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            while Instant::now() < deadline + Duration::from_secs(1) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            total
        }));
    }
    // The speaker floods: 2,000 short messages per write, as fast as the server takes them.
    // Without the pause, loop 1's task queue grew by some 30 MiB in these 3 s; with it, 5.
    let mut chunk = Vec::new();
    for _ in 0..2000 {
        frame::encode(SAY, &[b"twenty bytes of text"], &mut chunk);
    }
    let mut w = speaker.s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut peak = rss_before;
    while Instant::now() < deadline {
        let _ = w.write(&chunk); // a timeout only means the server paused the speaker
        peak = peak.max(util::rss_kib(srv.pid));
    }
    let read: Vec<u64> = drains.into_iter().map(|d| d.join().unwrap()).collect();
    assert!(
        read.iter().all(|&n| n > 64 << 10),
        "every member heard a good part of it: {:?}",
        &read[..5]
    );
    // Without the pause the growth is some 50 MB a second. With it, what is left is what is
    // in flight, which grows with the pace: on `--engine uring` the room moved 1.7 times the
    // bytes in these 3 s (4.5 GB against 2.7, on 2026-11-24) and peaked some 10 MiB higher.
    let bound_mib = if srv.engine == "uring" { 32 } else { 16 };
    assert!(
        peak < rss_before + bound_mib * 1024,
        "server RSS grew from {rss_before} KiB to {peak} KiB"
    );
    assert!(srv.is_running());
}

#[test]
fn thread_per_conn_frees_the_thread_of_a_member_that_reset_before_its_welcome() {
    let srv = Opts::chat("epoll-lt")
        .arg("--model", "thread-per-conn")
        .arg("--threads", "3")
        .spawn();
    // A reset that lands before `on_connect` writes the welcome ends the connection inside
    // `adopt`, before its loop ever waits. Each such loop must end with it, or it holds one
    // of the 3 thread slots for good.
    for _ in 0..20 {
        let s = connect(srv.tcp);
        util::set_linger_zero(&s);
        drop(s);
    }
    thread::sleep(Duration::from_millis(300));
    let mut members: Vec<Member> = (0..3).map(|_| Member::join(srv.tcp)).collect();
    members[0].say("room for three");
    for m in &mut members {
        assert_eq!(m.next_msg().rsplit(": ").next(), Some("room for three"));
    }
}

#[test]
fn the_largest_frame_limit_carries_the_largest_message_with_the_longest_name() {
    // Past it a MSG could not carry a name beside the text: refused at start.
    let out = Command::new(keel_bin())
        .args(["chat", "--listen", "127.0.0.1:0", "--max-frame", "16777184"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("33 to 16777183"), "{err}");
    let srv = Opts::chat("epoll-et")
        .arg("--max-frame", "16777183")
        .spawn();
    let mut m = Member::join(srv.tcp);
    let name = "n".repeat(32);
    m.send(NICK, name.as_bytes());
    assert!(matches!(
        m.recv(Duration::from_secs(5)),
        Got::Frame(NOTICE, _)
    ));
    let text = vec![b'x'; 16777182];
    m.send(SAY, &text);
    match m.recv(Duration::from_secs(20)) {
        Got::Frame(MSG, body) => {
            assert_eq!(body.len(), 1 + 32 + text.len());
            assert_eq!(&body[33..], &text[..]);
        }
        other => panic!("{:?}", std::mem::discriminant(&other)),
    }
    assert!(srv.is_running());
}

#[test]
fn the_client_exits_1_when_the_server_ends_the_session_first_and_2_for_a_bad_nick() {
    let srv = chat("epoll-et").spawn();
    let mut c = client(srv.tcp, &[]).spawn().unwrap();
    let _stdin = c.stdin.take(); // open: the client is not leaving
    let mut watcher = Member::join(srv.tcp);
    let (s, ok) = srv.stats_until(Duration::from_secs(5), |s| s.get("open") == 2);
    assert!(ok, "{s:?}");
    srv.signal(nix::sys::signal::Signal::SIGTERM); // the server closes every member
    assert_eq!(watcher.recv(Duration::from_secs(5)), Got::Eof);
    drop(watcher);
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("closed the session"), "{err}");

    let out = Command::new(keel_bin())
        .args(["chat-client", "--connect", "127.0.0.1:9", "--nick", "a\tb"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--nick"), "{err}");
}

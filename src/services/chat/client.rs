//! `keel chat-client`: a terminal client for the chat server, built on keel's own event loop.
//!
//! The connection lives on a loop on the main thread, with the same kind of handler as any
//! server connection. Standard input is read by a second thread (a terminal read blocks),
//! which hands each line to the loop through the loop's task queue and waker, so the socket
//! has one writer, the loop, as on the server. The loop also runs the heartbeat, and prints
//! what the room says: `name: text` for a message, `* text` for a notice from the server.
//!
//! Lines typed: `/nick NAME` changes the name; anything else is said to the room. End of
//! input (Ctrl-D) leaves the room: the client sends its FIN, the server finishes and closes,
//! and the client exits 0. A server that closes first (with an error or without), goes silent
//! past the heartbeat timeout, or cannot be reached makes the client exit 1 with the reason.

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::heartbeat::{self, Beat, Heartbeat};
use super::{ChatSettings, ERROR, MAX_NAME, MSG, NICK, NOTICE, PING, PONG, SAY};
use crate::codec::frame;
use crate::net::{Buffer, CloseReason, Ctx, Handler};
use crate::reactor::{EventLoop, LoopConfig};

/// How long the server may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ClientOptions {
    pub addr: SocketAddr,
    pub nick: Option<String>,
    pub settings: ChatSettings,
}

/// Why `name` cannot be a `--nick`, if it cannot.
pub fn nick_error(name: &str) -> Option<String> {
    (!super::valid_name(name.as_bytes())).then(|| format!("--nick: {}", name_rule()))
}

fn name_rule() -> String {
    format!("a name is 1 to {MAX_NAME} bytes of UTF-8 without control characters")
}

/// How the session ended: `None` while it lasts, then `Ok` for a clean end or the reason.
type Outcome = Arc<Mutex<Option<Result<(), String>>>>;

/// Runs a session until it ends; the error says why it ended badly.
pub fn run(opts: &ClientOptions) -> io::Result<()> {
    opts.settings.check().map_err(io::Error::other)?;
    if let Some(why) = opts.nick.as_deref().and_then(nick_error) {
        return Err(io::Error::other(why));
    }
    let mut el = EventLoop::new(LoopConfig::default())?;
    let outcome: Outcome = Arc::new(Mutex::new(None));
    let leaving = Arc::new(AtomicBool::new(false));
    let side = Session {
        leaving: leaving.clone(),
        addr: opts.addr,
        nick: opts.nick.clone(),
        settings: opts.settings,
        heartbeat: None,
        outcome: outcome.clone(),
    };
    let id = el.connect(opts.addr, CONNECT_TIMEOUT, Box::new(side))?;
    let handle = el.handle();
    let max_line = opts.settings.max_frame - 1;
    // Not joined: it blocks in a read of stdin until a line or the end comes, and the
    // process exits without it once the session is over.
    std::thread::Builder::new()
        .name("keel-chat-stdin".into())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let frame = match line.strip_prefix("/nick ") {
                    // Checked here as a SAY line is: a name the server refuses would cost an
                    // error round trip, and one over the frame limit the whole session.
                    Some(name) if !super::valid_name(name.trim().as_bytes()) => {
                        eprintln!("keel: /nick: {}; not sent", name_rule());
                        continue;
                    }
                    Some(name) => frame::frame(NICK, &[name.trim().as_bytes()]),
                    None if line.len() > max_line => {
                        eprintln!(
                            "keel: a line of {} bytes is over the frame limit ({max_line}); \
                             not sent",
                            line.len()
                        );
                        continue;
                    }
                    None => frame::frame(SAY, &[line.as_bytes()]),
                };
                if !handle.post(move |el| {
                    el.write(id, &frame);
                }) {
                    return; // the session is over
                }
            }
            leaving.store(true, Ordering::Relaxed);
            handle.post(move |el| el.shutdown_write(id));
        })?;
    el.run()?;
    let end = outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
    match end {
        Some(Ok(())) => Ok(()),
        Some(Err(why)) => Err(io::Error::other(why)),
        None => Err(io::Error::other("the session ended without a reason")),
    }
}

/// The client's end of the connection.
struct Session {
    /// Set by the stdin thread at the end of input, before it asks for our FIN: from then
    /// on the server's closing is the expected end, not a lost session.
    leaving: Arc<AtomicBool>,
    addr: SocketAddr,
    nick: Option<String>,
    settings: ChatSettings,
    heartbeat: Option<Heartbeat>,
    outcome: Outcome,
}

impl Session {
    /// Records how the session ended; the first reason stands.
    fn end(&self, result: Result<(), String>) {
        let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if o.is_none() {
            *o = Some(result);
        }
    }

    fn print(line: std::fmt::Arguments<'_>) {
        let mut out = io::stdout().lock();
        // A reader gone (a closed pipe) is no reason to drop the session.
        let _ = out.write_fmt(line).and_then(|()| out.flush());
    }

    fn on_frame(&mut self, cx: &mut Ctx<'_>, kind: u8, body: &[u8]) {
        match kind {
            MSG => {
                let (name, text) = match body.split_first() {
                    Some((&n, rest)) if rest.len() >= n as usize => rest.split_at(n as usize),
                    _ => return self.fail(cx, "a MSG frame with a bad name length".into()),
                };
                Self::print(format_args!(
                    "{}: {}\n",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(text)
                ));
            }
            NOTICE => Self::print(format_args!("* {}\n", String::from_utf8_lossy(body))),
            ERROR => {
                self.end(Err(format!("server: {}", String::from_utf8_lossy(body))));
            }
            PING => {
                cx.write(&frame::frame(PONG, &[body]));
            }
            PONG => {}
            other => self.fail(
                cx,
                format!("unexpected frame kind 0x{other:02x} from the server"),
            ),
        }
    }

    fn fail(&mut self, cx: &mut Ctx<'_>, why: String) {
        self.end(Err(why));
        cx.abort();
    }
}

impl Handler for Session {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        let s = self.settings;
        let hb = Heartbeat::new(s.heartbeat, s.heartbeat_timeout, cx.now());
        cx.set_timer(hb.first_timer(), heartbeat::TIMER);
        self.heartbeat = Some(hb);
        if let Some(n) = &self.nick {
            cx.write(&frame::frame(NICK, &[n.as_bytes()]));
        }
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        // A MSG carries a name besides a body of up to the limit.
        let limit = self.settings.max_frame + 1 + MAX_NAME;
        let read = frame::drain(input, limit, |kind, body| {
            if let Some(hb) = self.heartbeat.as_mut() {
                hb.heard(cx.now());
            }
            self.on_frame(cx, kind, body);
            true
        });
        if let Err(e) = read {
            self.fail(cx, format!("from the server: {e}"));
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, tag: u64) {
        let Some(hb) = self.heartbeat.as_mut().filter(|_| tag == heartbeat::TIMER) else {
            return;
        };
        match hb.fired(cx.now()) {
            Beat::Ping(next) => {
                cx.write(&frame::frame(PING, &[]));
                cx.set_timer(next, heartbeat::TIMER);
            }
            Beat::Wait(next) => cx.set_timer(next, heartbeat::TIMER),
            Beat::Dead(silent) => self.fail(
                cx,
                format!(
                    "the server sent nothing for {:.1} s (heartbeat timeout)",
                    silent.as_secs_f64()
                ),
            ),
        }
    }

    /// The server's FIN. Expected after ours; before it, the server ended the session.
    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        if !self.leaving.load(Ordering::Relaxed) {
            self.end(Err(format!(
                "the server at {} closed the session",
                self.addr
            )));
        }
        cx.shutdown_write();
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        let leaving = self.leaving.load(Ordering::Relaxed);
        self.end(match reason {
            CloseReason::Normal if leaving => Ok(()),
            CloseReason::Normal => Err(format!("the server at {} closed the session", self.addr)),
            CloseReason::ConnectFailed(e) => Err(format!("cannot connect to {}: {e}", self.addr)),
            CloseReason::Error(kind) => Err(format!("connection to {}: {kind}", self.addr)),
            other => Err(format!("connection to {} ended: {other:?}", self.addr)),
        });
        if let Some(el) = cx.event_loop() {
            el.stop();
        }
    }
}

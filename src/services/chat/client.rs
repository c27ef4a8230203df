//! `keel chat-client`: a terminal client for the chat server, built on keel's own event loop.
//!
//! The connection lives on a loop on the main thread, with the same kind of handler as any
//! server connection. Standard input is read by a second thread (a terminal read blocks),
//! which hands each line to the loop through the loop's task queue and waker, so the socket
//! has one writer, the loop, as on the server. The loop also runs the heartbeat, and prints
//! what the room says: `name: text` for a message, `* text` for a notice from the server.
//!
//! Lines typed: `/nick NAME` changes the name; anything else is said to the room (bytes that
//! are not UTF-8 as U+FFFD; a line longer than `--max-frame` is not sent, and is never held
//! whole in memory). End of input (Ctrl-D) leaves the room: the client sends its FIN, the
//! server finishes and closes, and the client exits 0. A server that closes first (with an
//! error or without), goes silent past the heartbeat timeout, or cannot be reached makes the
//! client exit 1 with the reason.
//!
//! What others say is printed with control characters escaped (`\u{1b}`), so no member can
//! write a line that looks like the server's, or send a terminal escape sequence, to everyone.
//! `--max-frame` bounds what this client sends; it takes frames up to the codec's limit from
//! the server, whose own `--max-frame` decides what it relays.

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
            let mut stdin = io::stdin().lock();
            loop {
                let line = match read_line(&mut stdin, max_line) {
                    Ok(Line::Text(line)) => line,
                    Ok(Line::TooLong(len)) => {
                        eprintln!(
                            "keel: a line of {len} bytes is over the frame limit ({max_line}); \
                             not sent"
                        );
                        continue;
                    }
                    Ok(Line::End) => break,
                    Err(e) => {
                        eprintln!("keel: reading standard input: {e}; leaving");
                        break;
                    }
                };
                let frame = match line.strip_prefix("/nick ") {
                    // Checked here as a SAY line is: a name the server refuses would cost an
                    // error round trip, and one over the frame limit the whole session.
                    Some(name) if !super::valid_name(name.trim().as_bytes()) => {
                        eprintln!("keel: /nick: {}; not sent", name_rule());
                        continue;
                    }
                    Some(name) => frame::frame(NICK, &[name.trim().as_bytes()]),
                    // U+FFFD for bad bytes can make a line at the limit a little longer.
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

/// One line of input, read by [`read_line`].
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Without its line end (`\n` or `\r\n`); bytes that are not UTF-8 as U+FFFD.
    Text(String),
    /// Over the limit: this many bytes, read and dropped as they came.
    TooLong(usize),
    /// End of input (a last line without a line end is a line).
    End,
}

/// Reads the next line of `input`, holding at most `max` bytes of it (and a buffer's worth):
/// a longer one is dropped as it is read, so a stream without line ends cannot fill memory.
fn read_line(input: &mut impl BufRead, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let (used, ended) = {
            let buf = match input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                break;
            }
            any = true;
            let (part, ended) = match buf.iter().position(|&b| b == b'\n') {
                Some(at) => (&buf[..at], true),
                None => (buf, false),
            };
            len += part.len();
            // One byte over, so that a `\r` before the line end can still be taken off.
            if len <= max + 1 {
                line.extend_from_slice(part);
            }
            (part.len() + usize::from(ended), ended)
        };
        input.consume(used);
        if ended {
            break;
        }
    }
    if !any {
        return Ok(Line::End);
    }
    if line.last() == Some(&b'\r') && len <= max + 1 {
        line.pop();
        len -= 1;
    }
    if len > max {
        return Ok(Line::TooLong(len));
    }
    Ok(Line::Text(String::from_utf8_lossy(&line).into_owned()))
}

/// `bytes` as text fit to print on a terminal: not UTF-8 as U+FFFD, and control characters
/// (a line end, an escape sequence's ESC) and the characters that reorder text (bidi
/// overrides and isolates) escaped, so what a member says stays on its own line and reads as
/// it was written.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let reorders = matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c);
        if (c.is_control() && c != '\t') || reorders {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
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
                Self::print(format_args!("{}: {}\n", shown(name), shown(text)));
            }
            NOTICE => Self::print(format_args!("* {}\n", shown(body))),
            ERROR => {
                self.end(Err(format!("server: {}", shown(body))));
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
        // The server's own limit (which this client cannot know) decides what it relays; a
        // MSG of the largest it allows still fits the codec's.
        // Any bytes are a sign of life, a piece of a large frame too.
        if let Some(hb) = self.heartbeat.as_mut() {
            hb.heard(cx.now());
        }
        let read = frame::drain(input, frame::MAX_LIMIT, |kind, body| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        // A buffer smaller than the lines, so that they arrive in pieces.
        let mut r = io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            match read_line(&mut r, max).unwrap() {
                Line::End => return out,
                l => out.push(l),
            }
        }
    }

    fn text(s: &str) -> Line {
        Line::Text(s.into())
    }

    #[test]
    fn lines_end_at_lf_or_crlf_and_bad_bytes_become_replacement_characters() {
        assert_eq!(
            lines(b"one\r\ntwo\n\xff\xfe bad\nlast", 100),
            [
                text("one"),
                text("two"),
                text("\u{fffd}\u{fffd} bad"),
                text("last")
            ]
        );
        assert_eq!(lines(b"\n\n", 100), [text(""), text("")]);
        assert!(lines(b"", 100).is_empty());
    }

    #[test]
    fn a_line_over_the_limit_is_dropped_and_the_next_one_still_read() {
        assert_eq!(
            lines(b"12345\n123456\r\n1234567\nok", 6),
            [text("12345"), text("123456"), Line::TooLong(7), text("ok")]
        );
        let long = vec![b'x'; 100_000];
        assert_eq!(lines(&long, 10), [Line::TooLong(100_000)]);
    }

    #[test]
    fn control_and_reordering_characters_are_shown_escaped() {
        assert_eq!(shown(b"plain text\twith a tab"), "plain text\twith a tab");
        assert_eq!(
            shown(b"hi\n* welcome admin\x1b[31m"),
            "hi\\u{a}* welcome admin\\u{1b}[31m"
        );
        assert_eq!(shown("a\u{202e}b\u{85}".as_bytes()), "a\\u{202e}b\\u{85}");
        assert_eq!(shown(b"caf\xc3\xa9 \xff"), "caf\u{e9} \u{fffd}");
    }
}

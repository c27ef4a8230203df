//! The access log, in the combined format nginx and Apache write (so existing log tools read
//! it): `addr - - [time] "request line" status bytes "referer" "user-agent"`.
//!
//! Lines go to an [`AsyncWriter`]: the loop formats a line and
//! queues it, a writer thread does the disk I/O; a full queue drops lines (counted) rather
//! than stalling every connection of the loop behind a slow disk.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;

use super::date::unix_now;
use super::response::push_u64;
use crate::ops::log::AsyncWriter;

/// What the log needs to know about one exchange.
pub struct Exchange<'a> {
    pub peer: Option<SocketAddr>,
    pub method: &'a str,
    pub target: &'a [u8],
    pub version: &'a str,
    pub status: u16,
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

thread_local! {
    /// The "[10/Oct/2000:13:55:36 +0000]" field and its second: formatted once a second.
    static TIME: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// Formats one line (without the newline); returns where its bytes field is in `out`.
pub fn format_line(x: &Exchange<'_>, out: &mut Vec<u8>) -> Range<usize> {
    push_start(out, x.peer);
    escape(out, x.method.as_bytes());
    out.push(b' ');
    escape(out, x.target);
    out.push(b' ');
    out.extend_from_slice(x.version.as_bytes());
    push_end(out, x.status, x.body_bytes, x.referer, x.user_agent)
}

/// A formatted line whose bytes field can still be set to what was really sent.
pub struct Line {
    text: Vec<u8>,
    bytes_at: Range<usize>,
}

impl Line {
    /// `text` with its bytes field at `bytes_at` (an empty range: a line left as it is).
    pub fn new(text: Vec<u8>, bytes_at: Range<usize>) -> Line {
        Line { text, bytes_at }
    }

    /// The line, its bytes field set to `bytes` if given.
    pub fn with_bytes(mut self, bytes: Option<u64>) -> Vec<u8> {
        if let Some(n) = bytes.filter(|_| !self.bytes_at.is_empty()) {
            let mut digits = Vec::with_capacity(20);
            push_u64(&mut digits, n);
            self.text.splice(self.bytes_at, digits);
        }
        self.text
    }
}

/// Access-log lines held back while a body sent from a file leaves, so that the bytes field
/// says what the kernel took, as nginx's `$body_bytes_sent` does, not what the head
/// promised: a download cut short shows in the log. Lines after such a one wait behind it, so
/// the log keeps the order of the responses, and get what left of their own bodies too.
///
/// Positions count the bytes handed to the connection since the first line was held
/// (starting from what it had queued then); what was sent is that count less what the
/// connection still holds ([`Ctx::output_len`](crate::net::Ctx::output_len), which in
/// `on_close` is what was never sent).
pub struct Held {
    handed: u64,
    lines: VecDeque<(Line, Body)>,
}

/// Where a response's body ends among the handed bytes, and its length.
#[derive(Clone, Copy)]
struct Body {
    end: u64,
    len: u64,
}

impl Held {
    /// Starts holding on a connection that has `queued` bytes queued.
    pub fn new(queued: usize) -> Held {
        Held {
            handed: queued as u64,
            lines: VecDeque::new(),
        }
    }

    /// `n` more bytes were handed to the connection.
    pub fn handed(&mut self, n: u64) {
        self.handed += n;
    }

    /// Holds `line`, whose body of `len` bytes ends `ahead` bytes past those handed so far
    /// (bytes still to be handed; `u64::MAX`: never to be).
    pub fn hold(&mut self, line: Line, ahead: u64, len: u64) {
        let end = self.handed.saturating_add(ahead);
        self.lines.push_back((line, Body { end, len }));
    }

    /// Writes the lines whose bodies have left, given that the connection still holds
    /// `unsent` bytes; all of them when the connection has `ended`. True when none is left.
    pub fn release(&mut self, unsent: usize, ended: bool, log: &AsyncWriter) -> bool {
        let sent = self.handed.saturating_sub(unsent as u64);
        while let Some((_, body)) = self.lines.front() {
            if sent < body.end && !ended {
                break;
            }
            let bytes = body.len.saturating_sub(body.end.saturating_sub(sent));
            let (line, _) = self.lines.pop_front().expect("looked at above");
            log.write_line(&line.with_bytes(Some(bytes)));
        }
        self.lines.is_empty()
    }
}

/// The line for a request refused before it was understood (a bad head, a bad body, a
/// timeout): `request` is its first line as received, or "-". nginx logs these too, and they
/// are what an operator looks for when clients report errors.
pub fn format_refusal(
    peer: Option<SocketAddr>,
    request: &[u8],
    status: u16,
    body_bytes: u64,
    out: &mut Vec<u8>,
) -> Range<usize> {
    push_start(out, peer);
    escape(out, request);
    push_end(out, status, body_bytes, None, None)
}

/// The request line at the start of `input`, without its line ending, at most 1 KiB of it
/// (the log is for people; a refused 8 KiB target needs no more to be recognised).
pub fn first_line(input: &[u8]) -> &[u8] {
    let input = &input[..input.len().min(1024)];
    let line = match input.iter().position(|&b| b == b'\n') {
        Some(i) => &input[..i],
        None => input,
    };
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `addr - - [time] "`
fn push_start(out: &mut Vec<u8>, peer: Option<SocketAddr>) {
    match peer {
        Some(p) => out.extend_from_slice(p.ip().to_string().as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - - ");
    TIME.with(|t| {
        let mut t = t.borrow_mut();
        let now = unix_now();
        if t.0 != now {
            *t = (now, clf_time(now));
        }
        out.extend_from_slice(t.1.as_bytes());
    });
    out.extend_from_slice(b" \"");
}

/// `" status bytes "referer" "user-agent"`; returns where the bytes field is.
fn push_end(
    out: &mut Vec<u8>,
    status: u16,
    body_bytes: u64,
    referer: Option<&[u8]>,
    user_agent: Option<&[u8]>,
) -> Range<usize> {
    out.extend_from_slice(b"\" ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    let start = out.len();
    push_u64(out, body_bytes);
    let bytes_at = start..out.len();
    for field in [referer, user_agent] {
        out.extend_from_slice(b" \"");
        match field {
            Some(v) => escape(out, v),
            None => out.push(b'-'),
        }
        out.push(b'"');
    }
    bytes_at
}

/// Client-supplied bytes are escaped as nginx does (`\xHH` for quotes, backslashes and
/// anything not printable ASCII), so a request cannot forge log lines or fields.
fn escape(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.push(b);
        }
    }
}

/// "[23/Nov/2026:03:40:00 +0000]" (the log is in UTC).
fn clf_time(unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "[{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000]",
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar, by the
/// usual era arithmetic (400-year eras of 146,097 days, years starting in March).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(clf_time(0), "[01/Jan/1970:00:00:00 +0000]");
        assert_eq!(clf_time(951_782_400), "[29/Feb/2000:00:00:00 +0000]");
        assert_eq!(clf_time(1_795_405_200), "[23/Nov/2026:03:40:00 +0000]");
    }

    #[test]
    fn a_combined_line_with_hostile_fields() {
        let mut out = Vec::new();
        format_line(
            &Exchange {
                peer: Some("127.0.0.1:5000".parse().unwrap()),
                method: "GET",
                target: b"/a\"b\n",
                version: "HTTP/1.1",
                status: 404,
                body_bytes: 12,
                referer: None,
                user_agent: Some(b"curl/8 \"x\""),
            },
            &mut out,
        );
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with("\"GET /a\\x22b\\x0A HTTP/1.1\" 404 12 \"-\" \"curl/8 \\x22x\\x22\""),
            "{line}"
        );
    }

    #[test]
    fn a_refusal_logs_the_first_line_as_received() {
        assert_eq!(
            first_line(b"GET /x HTTP/1.1\r\nHost: a\r\n"),
            b"GET /x HTTP/1.1"
        );
        assert_eq!(first_line(b"GET /partial"), b"GET /partial");
        assert_eq!(first_line(&[b'a'; 5000]).len(), 1024);
        let mut out = Vec::new();
        format_refusal(None, first_line(b"GET /\"x\" HTTP/9\r\n"), 505, 0, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("- - - ["), "{line}");
        assert!(
            line.ends_with("\"GET /\\x22x\\x22 HTTP/9\" 505 0 \"-\" \"-\""),
            "{line}"
        );
    }
}

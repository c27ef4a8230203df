//! Encoding response heads straight into an output buffer.
//!
//! A response head is a handful of short lines; building it with `format!` would allocate and
//! parse format strings per request. These helpers append bytes to one reused `Vec<u8>` that
//! later leaves in a single write (or as the head of a sendfile), so a pipelined batch of
//! responses costs one syscall.

use super::date::{push_date_line, push_status_200_and_date};
use super::parse::status_text;

/// What the `Connection` header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: say nothing.
    KeepAlive11,
    /// An HTTP/1.0 client asked for keep-alive: confirm it (1.0 closes otherwise).
    KeepAlive10,
    /// This response ends the connection.
    Close,
}

impl Persistence {
    pub fn keeps_alive(self) -> bool {
        self != Persistence::Close
    }
}

pub const SERVER: &[u8] = b"Server: keel\r\n";

/// "HTTP/1.1 404 Not Found\r\nServer: keel\r\nDate: ...\r\n".
pub fn push_status(out: &mut Vec<u8>, status: u16) {
    if status == 200 {
        // The common case, as one copy (with the Date line).
        push_status_200_and_date(out);
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(status_text(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(SERVER);
    push_date_line(out);
}

pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn push_content_length(out: &mut Vec<u8>, len: u64) {
    out.extend_from_slice(b"Content-Length: ");
    push_u64(out, len);
    out.extend_from_slice(b"\r\n");
}

/// The Connection header (if any) and the blank line that ends the head.
pub fn push_end(out: &mut Vec<u8>, persistence: Persistence) {
    match persistence {
        Persistence::KeepAlive11 => {}
        Persistence::KeepAlive10 => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persistence::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits without going through `fmt`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A complete small response whose body is a short HTML page naming the status; the body
/// never repeats anything from the request (no path, no header values).
/// Returns the body bytes written (none for HEAD), which is what the access log records.
pub fn push_error(
    out: &mut Vec<u8>,
    status: u16,
    persistence: Persistence,
    head_only: bool,
) -> u64 {
    push_status(out, status);
    let text = status_text(status);
    let body_len = error_body_len(text);
    out.extend_from_slice(b"Content-Type: text/html; charset=utf-8\r\n");
    push_content_length(out, body_len as u64);
    if status == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    push_end(out, persistence);
    if !head_only {
        push_error_body(out, status, text);
        return body_len as u64;
    }
    0
}

/// What a client the server refuses (over `--max-conns`, out of fds) reads before the close
/// ([`crate::reactor::LoopConfig::refusal_note`]): a 503 with `Retry-After`, so a browser or
/// a script sees why instead of an empty reply. It is sent before any request is read (a
/// server may answer at any time; this answer also closes), and made once, so it carries no
/// Date: an origin server may leave Date out of a 5xx response (RFC 9110 6.6.1).
pub fn refusal_note() -> Vec<u8> {
    let status = 503;
    let text = status_text(status);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 503 ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(SERVER);
    out.extend_from_slice(b"Content-Type: text/html; charset=utf-8\r\n");
    push_content_length(&mut out, error_body_len(text) as u64);
    out.extend_from_slice(b"Retry-After: 1\r\n");
    push_end(&mut out, Persistence::Close);
    push_error_body(&mut out, status, text);
    out
}

fn error_body_len(text: &str) -> usize {
    ERROR_PREFIX.len() + 2 * (4 + text.len()) + ERROR_MIDDLE.len() + ERROR_SUFFIX.len()
}

/// The short HTML page of [`push_error`], [`error_body_len`] bytes.
fn push_error_body(out: &mut Vec<u8>, status: u16, text: &str) {
    let start = out.len();
    out.extend_from_slice(ERROR_PREFIX);
    push_status_words(out, status, text);
    out.extend_from_slice(ERROR_MIDDLE);
    push_status_words(out, status, text);
    out.extend_from_slice(ERROR_SUFFIX);
    debug_assert_eq!(out.len() - start, error_body_len(text));
}

const ERROR_PREFIX: &[u8] = b"<!doctype html>\n<html><head><title>";
const ERROR_MIDDLE: &[u8] = b"</title></head>\n<body><h1>";
const ERROR_SUFFIX: &[u8] = b"</h1><hr><p>keel</p></body></html>\n";

fn push_status_words(out: &mut Vec<u8>, status: u16, text: &str) {
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(String::from_utf8(v).unwrap(), n.to_string());
        }
    }

    #[test]
    fn an_error_response_has_a_correct_length() {
        let mut v = Vec::new();
        push_error(&mut v, 404, Persistence::Close, false);
        let s = String::from_utf8(v).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\nServer: keel\r\nDate: "));
        assert!(head.contains("\r\nConnection: close"));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        let mut v = Vec::new();
        push_error(&mut v, 405, Persistence::KeepAlive11, true);
        let s = String::from_utf8(v).unwrap();
        assert!(s.contains("Allow: GET, HEAD\r\n") && s.ends_with("\r\n\r\n"));
    }
}

//! The common way through a request head: the shape nearly every client writes, read here in
//! one pass with a few word-at-a-time scans, with no dispatch and no UTF-8 validation.
//!
//! Everything else goes to httparse ([`super::read_full`]): a request line of another shape,
//! leading empty lines, a bare LF, a tab or obs-text in a field, a head still arriving, more
//! fields than [`COMMON_SLOTS`], any error. So every refusal, limit and partial head is
//! decided in one place, and what this accepts is a subset of what httparse accepts, read the
//! same way: the same method, target, version, field names, field values (as the same slices
//! of the buffer) and length. A property test in the parent module holds the two ways to that.
//!
//! Why it exists: on `bench/instructions`' pipelined load httparse spent about 575
//! instructions on a one-field request, much of it on SIMD dispatch meant for long lines and
//! on UTF-8 checks of the target and the field names. Reading the request line here took keel
//! from 1,605 to 1,113 instructions per response; reading the fields here too, to 1,100 (and a
//! small file's response from 1,837 to 1,779). The largest single cost left in the parse is
//! the Host check: about 120 of 600 instructions for `Host: 127.0.0.1:8080`, counted with
//! callgrind on the parser alone.

use super::{is_tchar, Field, Limits, Method, Read, RequestLine, Version};

/// Field slots for the common way: curl and load generators send two or three fields,
/// browsers 10 to 20. They are initialised per request (safe code cannot lend uninitialised
/// slots), which costs a few stores each, so they are few; a head with more fields takes the
/// full way, whose slots cost nothing.
pub(super) const COMMON_SLOTS: usize = 16;

/// The head at the start of `window` if it has the common shape; `None` leaves it to the full
/// way.
pub(super) fn read_common<'b, 'h>(
    window: &'b [u8],
    limits: &Limits,
    slots: &'h mut [Field<'b>; COMMON_SLOTS],
) -> Option<Read<'b, 'h, Field<'b>>> {
    let (line, line_len) = common_request_line(window)?;
    if line.target.len() > limits.max_uri {
        return None;
    }
    let slots = &mut slots[..limits.max_headers.min(COMMON_SLOTS)];
    let (count, fields_len) = common_fields(&window[line_len..], slots)?;
    Some((line, &slots[..count], line_len + fields_len))
}

/// `method SP target SP HTTP/1.x CRLF` at the very start of `w`, with a token method and a
/// target of visible ASCII (0x21-0x7E): the shape RFC 9112 3 defines, minus what httparse also
/// tolerates (leading empty lines, a bare LF, obs-text in the target). `None` for anything
/// else, including a line not complete yet. The line comes with its length, CRLF included.
pub(super) fn common_request_line(w: &[u8]) -> Option<(RequestLine<'_>, usize)> {
    let (method, after) = match w {
        [b'G', b'E', b'T', b' ', ..] => (Method::Get, 4),
        _ => {
            let n = w.iter().position(|&b| !is_tchar(b))?;
            if n == 0 || w[n] != b' ' {
                return None;
            }
            (Method::from_bytes(&w[..n]), n + 1)
        }
    };
    let method_str = match method.name() {
        Some(name) => name,
        // A token is ASCII: this never fails.
        None => std::str::from_utf8(&w[..after - 1]).ok()?,
    };
    let rest = &w[after..];
    let n = ascii_prefix::<0x21>(rest);
    if n == 0 || rest.get(n) != Some(&b' ') {
        return None;
    }
    const HTTP_1_1: u64 = u64::from_le_bytes(*b"HTTP/1.1");
    const HTTP_1_0: u64 = u64::from_le_bytes(*b"HTTP/1.0");
    let word = u64::from_le_bytes(rest.get(n + 1..n + 9)?.try_into().ok()?);
    if rest.get(n + 9..n + 11)? != b"\r\n" {
        return None;
    }
    let version = match word {
        HTTP_1_1 => Version::Http11,
        HTTP_1_0 => Version::Http10,
        _ => return None,
    };
    let line = RequestLine {
        method,
        method_str,
        target: &rest[..n],
        version,
    };
    Some((line, after + n + 11))
}

/// The header fields at the start of `w` and the empty line that ends them, each field in the
/// shape `token ":" *SP value CRLF` with a value of printable ASCII (0x20-0x7E): into `slots`,
/// with how many and the bytes read. `None` for a field of any other shape (a tab, obs-text,
/// a bare LF, a space before the colon, obs-fold), for more fields than `slots`, and for
/// fields still arriving.
///
/// A value is read as httparse reads it: spaces after the colon are skipped (an empty value is
/// the empty slice where its CR is) and trailing spaces are trimmed.
pub(super) fn common_fields<'b>(w: &'b [u8], slots: &mut [Field<'b>]) -> Option<(usize, usize)> {
    let mut at = 0;
    let mut count = 0;
    loop {
        let rest = &w[at..];
        if rest.get(..2)? == b"\r\n" {
            return Some((count, at + 2));
        }
        let name_len = rest.iter().position(|&b| !is_tchar(b))?;
        if name_len == 0 || rest[name_len] != b':' {
            return None;
        }
        let mut start = name_len + 1;
        while rest.get(start) == Some(&b' ') {
            start += 1;
        }
        let end = start + ascii_prefix::<0x20>(rest.get(start..)?);
        if rest.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        let mut value = &rest[start..end];
        while let [before @ .., b' '] = value {
            value = before;
        }
        *slots.get_mut(count)? = (&rest[..name_len], value);
        count += 1;
        at += end + 2;
    }
}

/// How many bytes at the start of `s` lie in `MIN..=0x7E`, eight at a time: visible ASCII for
/// a target (`MIN` 0x21), printable ASCII for a field value (0x20). A line is read once here
/// and never again byte by byte.
pub(super) fn ascii_prefix<const MIN: u8>(s: &[u8]) -> usize {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while let Some(chunk) = s.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // A byte's high bit ends up set when it is below MIN (x + 0x80 - MIN stays under
        // 0x80), above 0x7E (x + 1 reaches 0x80) or at or above 0x80 itself. Bytes are kept
        // below 0x80 before the arithmetic, so no lane carries into its neighbour.
        let low7 = x & !HIGH;
        let below = low7.wrapping_add(LOW * (0x80 - MIN as u64)) ^ HIGH;
        let above = low7.wrapping_add(LOW);
        let bad = (below | above | x) & HIGH;
        if bad != 0 {
            return at + (bad.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + s[at..]
        .iter()
        .position(|&b| !(MIN..=0x7e).contains(&b))
        .unwrap_or(s.len() - at)
}

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
//! from 1,605 to 1,113 instructions per response; reading the fields here too, to 1,100; field
//! slots as offsets (not slices) and word-at-a-time colon and port scans, to 1,015 (a small
//! file's response: 1,837, 1,779, 1,694).

use super::{is_tchar, Field, Limits, Method, RequestLine, Version, TCHAR};

/// Field slots for the common way: curl and load generators send two or three fields,
/// browsers 10 to 20. A head with more fields takes the full way.
pub(super) const COMMON_SLOTS: usize = 16;

/// Where one field line's name and value lie, as offsets into the bytes after the request
/// line: `[name start, name end, value start, value end]`. Offsets, not slices, because the
/// slots are initialised for every request (safe code cannot lend uninitialised ones): 16
/// pairs of slices were 64 stores per request, 16 spans are 128 zeroed bytes.
pub(super) type Span = [u16; 4];

/// The spans [`read_common`] fills, zeroed.
pub(super) type Slots = [Span; COMMON_SLOTS];

/// The fields a [`read_common`] found, as (name, value) slices of the head.
pub(super) struct Fields<'b, 'h> {
    bytes: &'b [u8],
    spans: std::slice::Iter<'h, Span>,
}

impl<'b> Iterator for Fields<'b, '_> {
    type Item = Field<'b>;

    fn next(&mut self) -> Option<Field<'b>> {
        let &[name_start, name_end, value_start, value_end] = self.spans.next()?;
        let at = |a: u16, b: u16| &self.bytes[usize::from(a)..usize::from(b)];
        Some((at(name_start, name_end), at(value_start, value_end)))
    }
}

/// The head at the start of `window` if it has the common shape: its request line, its
/// fields and its length. `None` leaves it to the full way.
pub(super) fn read_common<'b, 'h>(
    window: &'b [u8],
    limits: &Limits,
    slots: &'h mut Slots,
) -> Option<(RequestLine<'b>, Fields<'b, 'h>, usize)> {
    let (line, line_len) = common_request_line(window)?;
    if line.target.len() > limits.max_uri {
        return None;
    }
    let slots = &mut slots[..limits.max_headers.min(COMMON_SLOTS)];
    // Offsets must fit a span: a head longer than that is never complete here.
    let rest = &window[line_len..];
    let bytes = &rest[..rest.len().min(usize::from(u16::MAX))];
    let (count, fields_len) = common_fields(bytes, slots)?;
    let fields = Fields {
        bytes,
        spans: slots[..count].iter(),
    };
    Some((line, fields, line_len + fields_len))
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

/// The header fields at the start of `w` (at most `u16::MAX` bytes) and the empty line that
/// ends them, each field in the shape `token ":" *SP value CRLF` with a value of printable
/// ASCII (0x20-0x7E): their spans into `slots`, with how many and the bytes read. `None` for
/// a field of any other shape (a tab, obs-text, a bare LF, a space before the colon,
/// obs-fold), for more fields than `slots`, and for fields still arriving.
///
/// A value is read as httparse reads it: spaces after the colon are skipped (an empty value is
/// the empty span where its CR is) and trailing spaces are trimmed.
pub(super) fn common_fields(w: &[u8], slots: &mut [Span]) -> Option<(usize, usize)> {
    debug_assert!(w.len() <= usize::from(u16::MAX));
    let mut at = 0;
    let mut count = 0;
    loop {
        let rest = &w[at..];
        if rest.get(..2)? == b"\r\n" {
            return Some((count, at + 2));
        }
        // The name ends at the first colon and must be a token: any other byte before the
        // colon (a space, a CR of a line with no colon) is not the common shape.
        let name_len = find_colon(rest)?;
        if name_len == 0 || !all_in(&TCHAR, &rest[..name_len]) {
            return None;
        }
        let mut start = name_len + 1;
        while rest.get(start) == Some(&b' ') {
            start += 1;
        }
        let mut end = start + ascii_prefix::<0x20>(rest.get(start..)?);
        if rest.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        let line_len = end + 2;
        while end > start && rest[end - 1] == b' ' {
            end -= 1;
        }
        // Every offset is below `w.len()`, which fits a u16.
        let span = |n: usize| (at + n) as u16;
        *slots.get_mut(count)? = [span(0), span(name_len), span(start), span(end)];
        count += 1;
        at += line_len;
    }
}

/// Whether every byte of `s` is in `table`: four table reads per step and one test at the
/// end, about three instructions a byte and no branch per byte. (A word-at-a-time class test
/// for host names was tried and cost more than this for names of 8 to 16 bytes.)
pub(super) fn all_in(table: &[bool; 256], s: &[u8]) -> bool {
    let is = |b: u8| table[usize::from(b)];
    let mut ok = true;
    let mut quads = s.chunks_exact(4);
    for q in &mut quads {
        ok &= is(q[0]) & is(q[1]) & is(q[2]) & is(q[3]);
    }
    for &b in quads.remainder() {
        ok &= is(b);
    }
    ok
}

/// How many ASCII digits `s` ends with, eight bytes at a time from the end: a Host's port.
pub(super) fn trailing_digits(s: &[u8]) -> usize {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut end = s.len();
    while end >= 8 {
        let x = u64::from_le_bytes(s[end - 8..end].try_into().expect("8 bytes"));
        // As in `ascii_prefix`: a lane's high bit ends up set when its byte is below '0',
        // above '9', or not ASCII. The last byte is the highest lane.
        let low7 = x & !HIGH;
        let below = low7.wrapping_add(LOW * (0x80 - b'0' as u64)) ^ HIGH;
        let above = low7.wrapping_add(LOW * (0x7f - b'9' as u64));
        let other = (below | above | x) & HIGH;
        if other != 0 {
            return s.len() - end + (other.leading_zeros() / 8) as usize;
        }
        end -= 8;
    }
    s.len() - end
        + s[..end]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count()
}

/// Where the first ':' in `s` is, eight bytes at a time.
pub(super) fn find_colon(s: &[u8]) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const COLONS: u64 = LOW * b':' as u64;
    let mut at = 0;
    while let Some(chunk) = s.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes")) ^ COLONS;
        // The classic zero-byte test: the lowest lane flagged is the first zero (a colon);
        // a borrow can only flag lanes above a true zero, which the lowest one comes before.
        let zero = x.wrapping_sub(LOW) & !x & HIGH;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    s[at..].iter().position(|&b| b == b':').map(|n| at + n)
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

//! The request head: bytes in, a borrowed [`Head`] out (RFC 9110 and RFC 9112).
//!
//! httparse does the byte-level work (request line, field syntax, line endings), except for
//! heads in the shape nearly every client writes, which [`common`] reads in one pass; this module
//! adds what a server facing the open internet must decide on top of it: the size limits, the
//! fields that frame the body (with the request-smuggling refusals of RFC 9112 6.3), and the few
//! fields the static-file server acts on. Nothing here allocates: every slice in a [`Head`]
//! borrows from the caller's buffer, so a pipelined burst of requests costs one pass
//! and one walk over the fields each.

use std::mem::MaybeUninit;

use httparse::{Header, Request, Status};

mod common;

use common::{read_common, Slots};

/// How many header slots live on the stack. `Limits::max_headers` is honoured up to this; the
/// slots are never initialised, so their number costs stack space only, not time.
const HEADER_SLOTS: usize = 256;

/// Bounds on what a client may send before it is refused, so one connection cannot make the
/// server buffer or scan without end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the whole head, request line and final empty line included (431 beyond).
    pub max_head: usize,
    /// Bytes of the request-target (414 beyond).
    pub max_uri: usize,
    /// Header fields (431 beyond); at most 256 are honoured whatever is set here.
    pub max_headers: usize,
    /// Bytes of request payload (413 beyond).
    pub max_body: u64,
}

impl Default for Limits {
    /// The same order of sizes as nginx's defaults, which clients and proxies are used to.
    fn default() -> Limits {
        Limits {
            max_head: 8192,
            max_uri: 8192,
            max_headers: 100,
            max_body: 1 << 20,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Version {
    Http10,
    Http11,
}

/// The methods RFC 9110 and RFC 5789 name; anything else is `Other` and keeps its spelling in
/// [`Head::method_str`] (methods are case-sensitive, so `get` is `Other`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Trace,
    Connect,
    Other,
}

impl Method {
    /// The method's name as sent, `None` for `Other` (whose spelling only the request has).
    fn name(self) -> Option<&'static str> {
        Some(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Trace => "TRACE",
            Method::Connect => "CONNECT",
            Method::Other => return None,
        })
    }

    fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }
}

/// How the body that follows the head is framed (RFC 9112 6.3); the caller hands this to
/// [`crate::http::body::BodyDecoder`] to find where the next request starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head. Fields the server does not act on are not kept; the ones it does
/// are the raw field values, left for the modules that interpret them. Where a field is
/// repeated: list fields (If-None-Match, If-Match) keep every line; the single-value ones
/// (If-Modified-Since, If-Unmodified-Since, Range, If-Range) become empty, so invalid and
/// ignored (see `single`); User-Agent and Referer keep the first.
#[derive(Clone, Debug)]
pub struct Head<'b> {
    pub method: Method,
    pub method_str: &'b str,
    /// The request-target as sent: visible ASCII and, from clients that do not encode it,
    /// bytes of 0x80 and above (httparse lets those through; [`crate::http::path`] refuses
    /// any that are not UTF-8). Kept as bytes: nothing that reads it needs a `str`, and
    /// checking it is UTF-8 would cost more than the rest of the request line.
    pub target: &'b [u8],
    pub version: Version,
    pub keep_alive: bool,
    pub host: Option<&'b [u8]>,
    pub body: BodyKind,
    /// Only ever true for HTTP/1.1: RFC 9110 10.1.1 has a server ignore it from a 1.0 client.
    pub expect_continue: bool,
    /// If-None-Match as sent, for [`Head::if_none_match`].
    if_none_match: ListLines<'b>,
    pub if_modified_since: Option<&'b [u8]>,
    /// If-Match as sent, for [`Head::if_match`].
    if_match: ListLines<'b>,
    pub if_unmodified_since: Option<&'b [u8]>,
    /// One of the four precondition fields is present (one test on the hot path, not four).
    conditional: bool,
    pub range: Option<&'b [u8]>,
    pub if_range: Option<&'b [u8]>,
    pub accept_gzip: bool,
    pub user_agent: Option<&'b [u8]>,
    pub referer: Option<&'b [u8]>,
}

impl<'b> Head<'b> {
    /// A precondition is present (RFC 9110 13.1): the answer may be 304 or 412.
    pub fn is_conditional(&self) -> bool {
        self.conditional
    }

    /// The value of every If-None-Match field line, in order: a list field sent on several
    /// lines is one list (RFC 9110 5.3). Empty when the field is absent.
    pub fn if_none_match(&self) -> FieldValues<'b> {
        self.if_none_match.values(b"if-none-match")
    }

    /// The value of every If-Match field line, in order, as [`Head::if_none_match`].
    pub fn if_match(&self) -> FieldValues<'b> {
        self.if_match.values(b"if-match")
    }
}

/// A list field's lines as read: the first line's value or, when the field came on several
/// lines, the bytes from the first line's value to the last's; and how many lines there were
/// (at most 255 counted; more reads as 255).
#[derive(Clone, Copy, Debug, Default)]
struct ListLines<'b> {
    value: Option<&'b [u8]>,
    lines: u8,
}

impl<'b> ListLines<'b> {
    /// One more line of the field, with value `v`, in the head `window`.
    fn add(&mut self, window: &'b [u8], v: &'b [u8]) {
        self.value = Some(match self.value {
            None => v,
            Some(first) => span(window, first, v),
        });
        self.lines = self.lines.saturating_add(1);
    }

    /// The value of each line, for the field called `name` (lowercase).
    fn values(&self, name: &'static [u8]) -> FieldValues<'b> {
        FieldValues {
            rest: self.value,
            first: true,
            several: self.lines > 1,
            name,
        }
    }
}

/// The values of a field's lines. One line is kept as its value; several as the span of the
/// head from the first value to the last, which this walks again line by line, keeping the
/// lines of the field's own name (the head was read as a whole before, so every line's syntax is checked). So a
/// [`Head`] stays a fixed set of borrowed slices, however many lines a client sends, and a
/// request with one line (nearly all) pays nothing for the rest.
#[derive(Clone)]
pub struct FieldValues<'b> {
    rest: Option<&'b [u8]>,
    first: bool,
    several: bool,
    name: &'static [u8],
}

impl<'b> Iterator for FieldValues<'b> {
    type Item = &'b [u8];

    fn next(&mut self) -> Option<&'b [u8]> {
        loop {
            let rest = self.rest?;
            let (line, after) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) if self.several => (&rest[..i], Some(&rest[i + 1..])),
                _ => (rest, None),
            };
            self.rest = after;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if std::mem::take(&mut self.first) {
                return Some(trim_ows(line));
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            if line[..colon].eq_ignore_ascii_case(self.name) {
                return Some(trim_ows(&line[colon + 1..]));
            }
        }
    }
}

/// The bytes of `buf` from the start of `first` to the end of `last`, both slices of it (the
/// values of two header lines). Falls back to `last` if they are not.
fn span<'b>(buf: &'b [u8], first: &[u8], last: &'b [u8]) -> &'b [u8] {
    let base = buf.as_ptr() as usize;
    let start = (first.as_ptr() as usize).checked_sub(base);
    let end = (last.as_ptr() as usize + last.len()).checked_sub(base);
    match (start, end) {
        (Some(start), Some(end)) if start <= end => buf.get(start..end).unwrap_or(last),
        _ => last,
    }
}

// A head is a few hundred bytes of borrowed slices, returned once per request and matched at
// once: boxing it to shrink `Partial` would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum HeadResult<'b> {
    /// More bytes are needed; nothing seen so far breaks a rule or a limit.
    Partial,
    /// `len` counts the head's bytes, skipped leading empty lines and the final empty line
    /// included, so the body (or the next pipelined request) starts at `buf[len..]`.
    Complete { head: Head<'b>, len: usize },
}

/// Why a request is refused: the status to answer with, and a short detail for the log line
/// and the error page. After any of these the connection's framing is unknown, so the caller
/// answers and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub reason: &'static str,
}

impl HttpError {
    pub const fn new(status: u16, reason: &'static str) -> HttpError {
        HttpError { status, reason }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            status_text(self.status),
            self.reason
        )
    }
}

impl std::error::Error for HttpError {}

/// The canonical reason phrase (RFC 9110 15) for the statuses keel sends; "Unknown" otherwise,
/// since the phrase is advisory and clients act on the code alone.
pub fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

const fn bad(reason: &'static str) -> HttpError {
    HttpError::new(400, reason)
}

const URI_TOO_LONG: HttpError = HttpError::new(414, "request-target too long");
const HEAD_TOO_LARGE: HttpError = HttpError::new(431, "request head too large");
const TOO_MANY_HEADERS: HttpError = HttpError::new(431, "too many header fields");

/// Parses the request head at the start of `buf`.
///
/// Only the first `limits.max_head` bytes are ever scanned, so a client streaming an endless
/// head costs a bounded amount of work per call; callers re-parse from the start as more bytes
/// arrive, which keeps this function stateless.
pub fn parse_head<'b>(buf: &'b [u8], limits: &Limits) -> Result<HeadResult<'b>, HttpError> {
    let mut slot = None;
    Ok(match parse_head_into(buf, limits, &mut slot)? {
        Some((head, len)) => HeadResult::Complete {
            head: head.clone(),
            len,
        },
        None => HeadResult::Partial,
    })
}

/// [`parse_head`] for the hot path: the head is built in `slot`, which the caller owns, and
/// lent back with its length (`None`: more bytes are needed). A head is a few hundred bytes,
/// and returning it inside a `Result` cost a copy of it per request.
pub fn parse_head_into<'b, 's>(
    buf: &'b [u8],
    limits: &Limits,
    slot: &'s mut Option<Head<'b>>,
) -> Result<Option<(&'s Head<'b>, usize)>, HttpError> {
    let window = &buf[..buf.len().min(limits.max_head)];
    let mut common_slots: Slots = Default::default();
    if let Some((line, fields, len)) = read_common(window, limits, &mut common_slots) {
        let head = interpret(window, line, fields, slot)?;
        return Ok(Some((head, len)));
    }
    let mut full_slots = [const { MaybeUninit::<Header<'b>>::uninit() }; HEADER_SLOTS];
    let mut later_slots;
    let read = match read_full(buf, window, limits, &mut full_slots) {
        Err(LATER_MINOR) => {
            later_slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
            read_later_minor(buf, window, limits, &mut later_slots)?
        }
        read => read?,
    };
    let Some((line, fields, len)) = read else {
        return Ok(None);
    };
    let fields = fields.iter().map(|h| (h.name.as_bytes(), h.value));
    Ok(Some((interpret(window, line, fields, slot)?, len)))
}

/// A header field line as read: its name and its value, both slices of the head.
type Field<'b> = (&'b [u8], &'b [u8]);

/// A head as read, before its fields are interpreted: the request line, the header fields,
/// and the bytes of the whole head.
type Read<'b, 'h, F> = (RequestLine<'b>, &'h [F], usize);

struct RequestLine<'b> {
    method: Method,
    method_str: &'b str,
    target: &'b [u8],
    version: Version,
}

/// The full way, through httparse's whole-request parser: every head [`read_common`] leaves.
/// `Ok(None)` while the head is still arriving.
fn read_full<'b, 'h>(
    buf: &'b [u8],
    window: &'b [u8],
    limits: &Limits,
    slots: &'h mut [MaybeUninit<Header<'b>>; HEADER_SLOTS],
) -> Result<Option<Read<'b, 'h, Header<'b>>>, HttpError> {
    let slots = &mut slots[..limits.max_headers.min(HEADER_SLOTS)];
    let mut req = Request::new(&mut []);
    let res = req.parse_with_uninit_headers(window, slots);

    // The target is known as soon as its closing space is seen, whatever follows, so an
    // over-long one is refused before the rest of the head is waited for.
    if let Some(path) = req.path {
        if path.len() > limits.max_uri {
            return Err(URI_TOO_LONG);
        }
    }

    match res {
        Ok(Status::Complete(len)) => {
            let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version)
            else {
                return Err(bad("malformed request line"));
            };
            let line = RequestLine {
                method: Method::from_bytes(method.as_bytes()),
                method_str: method,
                target: target.as_bytes(),
                version: if minor == 0 {
                    Version::Http10
                } else {
                    Version::Http11
                },
            };
            Ok(Some((line, req.headers, len)))
        }
        Ok(Status::Partial) => {
            if req.path.is_none() {
                if let Some(method) = req.method {
                    // The target is still arriving: refuse it once it is already too long.
                    let start = leading_empty_lines(window) + method.len() + 1;
                    if window.len().saturating_sub(start) > limits.max_uri {
                        return Err(URI_TOO_LONG);
                    }
                }
            }
            if buf.len() > limits.max_head {
                Err(over_head_limit(window))
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::Version) => Err(version_error(window, req.method, req.path)),
        Err(e) => Err(refusal(e)),
    }
}

/// What a head httparse refuses is answered with (a wrong version aside: [`version_error`]).
fn refusal(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => TOO_MANY_HEADERS,
        httparse::Error::HeaderName => bad("invalid header field name"),
        httparse::Error::HeaderValue => bad("invalid header field value"),
        httparse::Error::NewLine => bad("invalid line ending"),
        httparse::Error::Token => bad("malformed request line"),
        _ => bad("malformed request head"),
    }
}

/// [`version_error`]'s word for `HTTP/1.2` to `HTTP/1.9`: not an answer but a way to go,
/// [`read_later_minor`]. Should it ever reach a client, it is the 505 it would have been.
const LATER_MINOR: HttpError = HttpError::new(505, "later HTTP/1 minor version");

/// A head whose request line names a later minor version of HTTP/1 (`HTTP/1.2` to
/// `HTTP/1.9`), read as HTTP/1.1: RFC 9110 2.5 has a recipient process such a message as if
/// it were in the highest minor version it implements, and the response is 1.1's (6.2), as
/// nginx does. httparse refuses these versions outright, so the request line is read here,
/// in the shapes httparse reads (leading empty lines skipped, a bare LF as a line end, a
/// target of any byte above a space but DEL), and the fields by httparse.
fn read_later_minor<'b, 'h>(
    buf: &'b [u8],
    window: &'b [u8],
    limits: &Limits,
    slots: &'h mut [Header<'b>; HEADER_SLOTS],
) -> Result<Option<Read<'b, 'h, Header<'b>>>, HttpError> {
    let start = leading_empty_lines(window);
    let line = &window[start..];
    let Some(lf) = line.iter().position(|&b| b == b'\n') else {
        return if buf.len() > limits.max_head {
            Err(over_head_limit(window))
        } else {
            Ok(None)
        };
    };
    let text = line[..lf].strip_suffix(b"\r").unwrap_or(&line[..lf]);
    let malformed = || bad("malformed request line");
    let method_len = text
        .iter()
        .position(|&b| !is_tchar(b))
        .ok_or_else(malformed)?;
    let rest = text[method_len..]
        .strip_prefix(b" ")
        .ok_or_else(malformed)?;
    let target_len = rest
        .iter()
        .position(|&b| b <= b' ' || b == 0x7f)
        .ok_or_else(malformed)?;
    let version = rest[target_len..]
        .strip_prefix(b" ")
        .ok_or_else(malformed)?;
    if method_len == 0 || target_len == 0 || later_minor(version).is_none() {
        return Err(malformed());
    }
    if target_len > limits.max_uri {
        return Err(URI_TOO_LONG);
    }
    let method = &text[..method_len];
    let line_end = start + lf + 1;
    let slots = &mut slots[..limits.max_headers.min(HEADER_SLOTS)];
    let (fields_len, fields) = match httparse::parse_headers(&window[line_end..], slots) {
        Ok(Status::Complete(read)) => read,
        Ok(Status::Partial) if buf.len() > limits.max_head => return Err(HEAD_TOO_LARGE),
        Ok(Status::Partial) => return Ok(None),
        Err(e) => return Err(refusal(e)),
    };
    let line = RequestLine {
        method: Method::from_bytes(method),
        // A token is ASCII: this never fails.
        method_str: std::str::from_utf8(method).map_err(|_| malformed())?,
        target: &rest[..target_len],
        version: Version::Http11,
    };
    Ok(Some((line, fields, line_end + fields_len)))
}

/// The minor digit of `HTTP/1.2` to `HTTP/1.9`, exactly those bytes.
fn later_minor(version: &[u8]) -> Option<u8> {
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d @ b'2'..=b'9'] => Some(*d),
        _ => None,
    }
}

fn leading_empty_lines(window: &[u8]) -> usize {
    window
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(window.len())
}

/// Picks between 414 and 431 for a head that did not fit: if even the request target did not
/// fit, it is what the client should shorten. A target that ends within the head was already
/// checked against `max_uri` and passed: then the head as a whole is too large, whatever part
/// of it the target is. Nothing but empty lines is a head too large, not a target.
fn over_head_limit(window: &[u8]) -> HttpError {
    let line = &window[leading_empty_lines(window)..];
    let (line, complete) = match line.iter().position(|&b| b == b'\n') {
        Some(end) => (&line[..end], true),
        None => (line, false),
    };
    // "method SP target SP": the target ended if a second space follows the first.
    let target_ended = line.iter().filter(|&&b| b == b' ').nth(1).is_some();
    if line.is_empty() || complete || target_ended {
        HEAD_TOO_LARGE
    } else {
        URI_TOO_LONG
    }
}

/// httparse knows only `HTTP/1.0` and `HTTP/1.1`; a well-formed other version deserves 505
/// (RFC 9110 15.6.6) rather than 400, so the client knows to retry with 1.1.
fn version_error(window: &[u8], method: Option<&str>, path: Option<&str>) -> HttpError {
    let (Some(method), Some(path)) = (method, path) else {
        return bad("malformed request line");
    };
    // The version starts right after "method SP target SP"; anything else there (a second
    // space, say) is a malformed line, not a version.
    let start = leading_empty_lines(window) + method.len() + 1 + path.len() + 1;
    let rest = window.get(start..).unwrap_or_default();
    let token = match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) => &rest[..i],
        None => rest,
    };
    if later_minor(token).is_some() {
        LATER_MINOR
    } else if looks_like_version(token) {
        HttpError::new(505, "HTTP version not supported")
    } else {
        bad("malformed HTTP version")
    }
}

/// `HTTP/` DIGIT+ [ "." DIGIT* ]: the shape of a version, possibly cut short because the line
/// is still arriving (httparse already refuses `HTTP/2` before the rest is there).
fn looks_like_version(token: &[u8]) -> bool {
    let Some(rest) = token.strip_prefix(b"HTTP/") else {
        return false;
    };
    let major = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if major == 0 {
        return false;
    }
    match rest[major..].split_first() {
        None => true,
        Some((b'.', minor)) => minor.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// The fields this module looks at, found by length first so that most names are dismissed
/// with one comparison.
#[derive(Clone, Copy)]
enum Known {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    IfNoneMatch,
    IfModifiedSince,
    IfMatch,
    IfUnmodifiedSince,
    Range,
    IfRange,
    AcceptEncoding,
    UserAgent,
    Referer,
}

fn classify(name: &[u8]) -> Option<Known> {
    let is = |lower: &[u8]| is_named(name, lower);
    match name.len() {
        4 if is(b"host") => Some(Known::Host),
        5 if is(b"range") => Some(Known::Range),
        6 if is(b"expect") => Some(Known::Expect),
        7 if is(b"referer") => Some(Known::Referer),
        8 if is(b"if-range") => Some(Known::IfRange),
        8 if is(b"if-match") => Some(Known::IfMatch),
        10 if is(b"connection") => Some(Known::Connection),
        10 if is(b"user-agent") => Some(Known::UserAgent),
        13 if is(b"if-none-match") => Some(Known::IfNoneMatch),
        14 if is(b"content-length") => Some(Known::ContentLength),
        15 if is(b"accept-encoding") => Some(Known::AcceptEncoding),
        17 if is(b"transfer-encoding") => Some(Known::TransferEncoding),
        17 if is(b"if-modified-since") => Some(Known::IfModifiedSince),
        19 if is(b"if-unmodified-since") => Some(Known::IfUnmodifiedSince),
        _ => None,
    }
}

/// `name` is `lower` (lowercase letters and '-') in any case, compared a word at a time.
/// Field names are tokens (both ways of reading a head check them), and the only token bytes that setting
/// bit 0x20 turns into a lowercase letter are that letter in either case ('-' has the bit
/// already and no other token byte becomes it), so one OR stands for a case-folding table.
fn is_named(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    let half =
        |s: &[u8], at: usize| u64::from(u32::from_le_bytes(s[at..at + 4].try_into().expect("4")));
    if n >= 8 {
        // Whole words, then the last eight bytes (overlapping what was compared).
        let mut at = 0;
        while at + 8 < n {
            if word(name, at) | FOLD != word(lower, at) {
                return false;
            }
            at += 8;
        }
        word(name, n - 8) | FOLD == word(lower, n - 8)
    } else if n >= 4 {
        (half(name, 0) | half(name, n - 4) << 32) | FOLD
            == half(lower, 0) | half(lower, n - 4) << 32
    } else {
        name.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b)
    }
}

/// Splits a field value into its list members (RFC 9110 5.6.1), trimmed of optional
/// whitespace; empty members are left for the caller to judge.
fn list_members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Walks the header fields once and decides framing, persistence and the refusals.
fn interpret<'b, 's>(
    window: &'b [u8],
    line: RequestLine<'b>,
    fields: impl Iterator<Item = Field<'b>>,
    slot: &'s mut Option<Head<'b>>,
) -> Result<&'s Head<'b>, HttpError> {
    let version = line.version;
    let head = slot.insert(Head {
        method: line.method,
        method_str: line.method_str,
        target: line.target,
        version,
        keep_alive: false,
        host: None,
        body: BodyKind::None,
        expect_continue: false,
        if_none_match: ListLines::default(),
        if_modified_since: None,
        if_match: ListLines::default(),
        if_unmodified_since: None,
        conditional: false,
        range: None,
        if_range: None,
        accept_gzip: false,
        user_agent: None,
        referer: None,
    });
    let mut content_length: Option<u64> = None;
    let mut te = TransferCodings::default();
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut gzip = AcceptGzip::default();

    for (name, v) in fields {
        let Some(known) = classify(name) else {
            continue;
        };
        head.conditional |= matches!(
            known,
            Known::IfNoneMatch | Known::IfModifiedSince | Known::IfMatch | Known::IfUnmodifiedSince
        );
        match known {
            Known::Host => {
                // RFC 9112 3.2: more than one Host is as bad as none, and so is one that is
                // not a host.
                if head.host.replace(v).is_some() {
                    return Err(bad("more than one Host"));
                }
                if !valid_host(v) {
                    return Err(bad("invalid Host"));
                }
            }
            Known::ContentLength => {
                for member in list_members(v) {
                    let n = parse_decimal(member)?;
                    // RFC 9110 8.6: repeats of one value are one length; differing ones make
                    // the framing ambiguous, which is how requests are smuggled.
                    if content_length.is_some_and(|m| m != n) {
                        return Err(bad("conflicting Content-Length values"));
                    }
                    content_length = Some(n);
                }
            }
            Known::TransferEncoding => te.add(v)?,
            Known::Connection => {
                for token in list_members(v) {
                    if token.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    }
                }
            }
            Known::Expect => {
                for e in list_members(v) {
                    if e.eq_ignore_ascii_case(b"100-continue") {
                        head.expect_continue = version == Version::Http11;
                    } else if !e.is_empty() {
                        return Err(HttpError::new(417, "unsupported expectation"));
                    }
                }
            }
            Known::AcceptEncoding => gzip.add(v),
            Known::IfNoneMatch => head.if_none_match.add(window, v),
            Known::IfModifiedSince => single(&mut head.if_modified_since, v),
            Known::IfMatch => head.if_match.add(window, v),
            Known::IfUnmodifiedSince => single(&mut head.if_unmodified_since, v),
            Known::Range => single(&mut head.range, v),
            Known::IfRange => single(&mut head.if_range, v),
            Known::UserAgent => first(&mut head.user_agent, v),
            Known::Referer => first(&mut head.referer, v),
        }
    }

    if te.seen {
        // RFC 9112 6.1: a 1.0 recipient cannot rely on chunked framing, and 6.3 item 3:
        // Content-Length beside Transfer-Encoding is a smuggling attempt until proven otherwise.
        if version == Version::Http10 {
            return Err(bad("Transfer-Encoding in HTTP/1.0"));
        }
        if content_length.is_some() {
            return Err(bad("Content-Length with Transfer-Encoding"));
        }
        if !te.last_is_chunked {
            return Err(bad("Transfer-Encoding not ending in chunked"));
        }
        if te.unsupported {
            // Framed by chunked, but coded with something keel cannot decode (RFC 9112 6.1).
            return Err(HttpError::new(501, "unsupported transfer coding"));
        }
        head.body = BodyKind::Chunked;
    } else if let Some(n) = content_length {
        head.body = BodyKind::Length(n);
    }

    if version == Version::Http11 && head.host.is_none() {
        return Err(bad("missing Host"));
    }
    head.keep_alive = match version {
        Version::Http11 => !conn_close,
        Version::Http10 => conn_keep_alive && !conn_close,
    };
    head.accept_gzip = gzip.accepted();
    Ok(head)
}

/// Unreserved and sub-delims: the bytes a reg-name (or an IP literal, with ':') is made of.
const NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'_' | b'~' // unreserved
                    | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' // sub-delims
            );
        b += 1;
    }
    t
};

/// `uri-host [ ":" port ]` (RFC 9110 7.2, RFC 3986 3.2.2): a bracketed IP literal, or a
/// reg-name / IPv4 address of unreserved, sub-delims and percent-encoded characters; then
/// digits after a colon. Empty is allowed (a target without an authority). This refuses what a
/// Host can never hold (spaces, '/', '@', '?', '#', control bytes), which is what a server
/// behind a cache or a log reader needs; it does not judge whether the name exists.
#[inline]
fn valid_host(v: &[u8]) -> bool {
    host_memo::holds(v) || check_host(v)
}

/// [`valid_host`] for a value other than the one checked last, kept out of line so that
/// the common case costs no call.
#[inline(never)]
fn check_host(v: &[u8]) -> bool {
    let valid = simple_host(v) || any_host(v);
    if valid {
        host_memo::keep(v);
    }
    valid
}

/// The last Host this thread found valid. A server is asked for the few names it serves,
/// over and over: on `bench/instructions`' pipelined load checking `127.0.0.1:PORT` byte
/// by byte was 105 of 906 instructions per response; comparing it with the one checked last
/// instead took keel to 836. Validity depends on the bytes alone, so a value equal to a valid
/// one is valid; nothing else is remembered, and a refused value never is.
mod host_memo {
    use std::cell::RefCell;

    /// Longest value remembered: `[v6 literal]:port` and most names fit.
    const MAX: usize = 48;

    thread_local! {
        static LAST: RefCell<([u8; MAX], usize)> = const { RefCell::new(([0; MAX], 0)) };
    }

    /// `v` is the value kept last (only values of 8 bytes and more are kept: shorter ones
    /// cost less to check than to compare).
    pub(super) fn holds(v: &[u8]) -> bool {
        let n = v.len();
        if !(8..=MAX).contains(&n) {
            return false;
        }
        LAST.with_borrow(|(kept, len)| *len == n && same_words(&kept[..n], v))
    }

    pub(super) fn keep(v: &[u8]) {
        let n = v.len();
        if !(8..=MAX).contains(&n) {
            return;
        }
        LAST.with_borrow_mut(|(kept, len)| {
            kept[..n].copy_from_slice(v);
            *len = n;
        });
    }

    /// `a == b` for two slices of one length between 8 and `MAX`, eight bytes at a time;
    /// the last word overlaps the one before it rather than falling back to bytes.
    fn same_words(a: &[u8], b: &[u8]) -> bool {
        let n = a.len();
        let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
        let mut differ = word(a, n - 8) ^ word(b, n - 8);
        let mut at = 0;
        while at + 8 < n {
            differ |= word(a, at) ^ word(b, at);
            at += 8;
        }
        differ == 0
    }
}

/// The Host nearly every client sends, `name[:port]` with a name of unreserved and
/// sub-delim bytes only, checked without a branch per byte of the name: a subset of what
/// [`any_host`] accepts (a property test holds it to that), which takes everything else.
///
/// It reads from the end: the port's digits, then at most one colon, then a name in which
/// no colon is left. Digits are name bytes too, so a host with no port reads the same.
fn simple_host(v: &[u8]) -> bool {
    let digits = common::trailing_digits(v);
    let rest = &v[..v.len() - digits];
    let name = rest.strip_suffix(b":").unwrap_or(rest);
    common::all_in(&NAME, name)
}

fn any_host(v: &[u8]) -> bool {
    let name_byte = |b: u8| NAME[usize::from(b)];
    let port = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty() || !literal.iter().all(|&b| name_byte(b) || b == b':') {
            return false;
        }
        &rest[end + 1..]
    } else {
        // One pass over the name: it ends at the first byte that is not part of one.
        let mut i = 0;
        loop {
            i += v[i..]
                .iter()
                .position(|&b| !name_byte(b))
                .unwrap_or(v.len() - i);
            if v.get(i) == Some(&b'%')
                && v.get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
            {
                i += 3;
            } else {
                break;
            }
        }
        &v[i..]
    };
    match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

fn first<'b>(slot: &mut Option<&'b [u8]>, v: &'b [u8]) {
    if slot.is_none() {
        *slot = Some(v);
    }
}

/// A field that takes one value (a date, a range), given on more than one line, is ignored
/// (RFC 9110 13.1.3, 13.1.4: "more than one member"): its value becomes empty, which every
/// reader takes as invalid (no date, no range, an If-Range that never holds). Taking the first
/// line would disagree with an intermediary that takes the last.
fn single<'b>(slot: &mut Option<&'b [u8]>, v: &'b [u8]) {
    *slot = Some(if slot.is_none() { v } else { b"" });
}

/// 1*DIGIT and nothing else: no sign, no inner space, no overflow (RFC 9110 8.6).
fn parse_decimal(s: &[u8]) -> Result<u64, HttpError> {
    if s.is_empty() {
        return Err(bad("empty Content-Length"));
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return Err(bad("Content-Length not a decimal number"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(bad("Content-Length too large"))?;
    }
    Ok(n)
}

/// The transfer codings across every Transfer-Encoding line, in order. keel decodes only
/// chunked, so only a list that is exactly `chunked` frames a body it can find the end of.
#[derive(Default)]
struct TransferCodings {
    seen: bool,
    chunked_seen: bool,
    last_is_chunked: bool,
    /// A well-formed coding other than chunked (gzip, say): keel cannot undo it.
    unsupported: bool,
}

impl TransferCodings {
    fn add(&mut self, value: &[u8]) -> Result<(), HttpError> {
        self.seen = true;
        for coding in list_members(value) {
            if coding.is_empty() {
                continue;
            }
            if !coding.eq_ignore_ascii_case(b"chunked") {
                // Whether this is refused as a framing error (400) or as a coding keel does
                // not implement (501) depends on what comes last, so it is judged at the end.
                if !coding.iter().all(|&b| is_tchar(b)) {
                    return Err(bad("malformed transfer coding"));
                }
                self.unsupported = true;
                self.last_is_chunked = false;
                continue;
            }
            // RFC 9112 7: chunked must not be applied more than once.
            if self.chunked_seen {
                return Err(bad("chunked applied twice"));
            }
            self.chunked_seen = true;
            self.last_is_chunked = true;
        }
        Ok(())
    }
}

/// A `token` character (RFC 9110 5.6.2): the bytes of a method, a field name, a coding.
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// One load per byte where the field names of a head are scanned.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric()
            || matches!(
                b as u8,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// Accept-Encoding as far as gzip is concerned (RFC 9110 12.5.3): an explicit `gzip` or
/// `x-gzip` member decides, otherwise `*` does, otherwise gzip is not wanted.
#[derive(Default)]
struct AcceptGzip {
    explicit: Option<bool>,
    star: Option<bool>,
}

impl AcceptGzip {
    fn add(&mut self, value: &[u8]) {
        for member in list_members(value) {
            let mut parts = member.split(|&b| b == b';');
            let coding = trim_ows(parts.next().unwrap_or_default());
            let slot =
                if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                    &mut self.explicit
                } else if coding == b"*" {
                    &mut self.star
                } else {
                    continue;
                };
            let mut wanted = true;
            for param in parts {
                let Some(eq) = param.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if let [b'q' | b'Q'] = trim_ows(&param[..eq]) {
                    wanted = is_positive_qvalue(trim_ows(&param[eq + 1..]));
                }
            }
            // A zero anywhere wins: "gzip, gzip;q=0" is not a request for gzip.
            *slot = Some(slot.unwrap_or(true) && wanted);
        }
    }

    fn accepted(&self) -> bool {
        self.explicit.or(self.star).unwrap_or(false)
    }
}

/// qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), above zero. A weight that
/// is not a qvalue (`q=-1`, `q=0.0000`, `q=`) makes its member not acceptable: the identity
/// coding is always there to fall back on, and reading a garbled weight as 1 could send gzip
/// to a client that tried to refuse it.
fn is_positive_qvalue(q: &[u8]) -> bool {
    match q {
        [b'1'] => true,
        [b'1', b'.', frac @ ..] => frac.len() <= 3 && frac.iter().all(|&b| b == b'0'),
        [b'0', b'.', frac @ ..] => {
            frac.len() <= 3
                && frac.iter().all(u8::is_ascii_digit)
                && frac.iter().any(|&b| b != b'0')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn complete(buf: &[u8]) -> (Head<'_>, usize) {
        match parse_head(buf, &limits()) {
            Ok(HeadResult::Complete { head, len }) => (head, len),
            Ok(HeadResult::Partial) => panic!("partial: {:?}", String::from_utf8_lossy(buf)),
            Err(e) => panic!("error {e}: {:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn head_of(buf: &[u8]) -> Head<'_> {
        complete(buf).0
    }

    fn status(buf: &[u8]) -> u16 {
        status_with(buf, &limits())
    }

    fn status_with(buf: &[u8], limits: &Limits) -> u16 {
        match parse_head(buf, limits) {
            Err(e) => e.status,
            Ok(HeadResult::Partial) => panic!("partial: {:?}", String::from_utf8_lossy(buf)),
            Ok(HeadResult::Complete { .. }) => {
                panic!("accepted: {:?}", String::from_utf8_lossy(buf))
            }
        }
    }

    fn is_partial(buf: &[u8], limits: &Limits) -> bool {
        matches!(parse_head(buf, limits), Ok(HeadResult::Partial))
    }

    /// A request with the given extra header lines, each already ending in CRLF.
    fn req(extra: &str) -> Vec<u8> {
        format!("GET /a HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n").into_bytes()
    }

    const FULL: &[u8] = b"POST /upload?x=1 HTTP/1.1\r\n\
        Host: example.com:8080\r\n\
        User-Agent: curl/8.0\r\n\
        Referer: http://example.com/\r\n\
        Accept-Encoding: br, gzip;q=0.5\r\n\
        If-None-Match: \"abc\"\r\n\
        If-Modified-Since: Sat, 29 Oct 1994 19:43:31 GMT\r\n\
        Range: bytes=0-99\r\n\
        If-Range: \"abc\"\r\n\
        Expect: 100-continue\r\n\
        Content-Length: 5\r\n\
        \r\n";

    #[test]
    fn full_request_fields() {
        let (h, len) = complete(FULL);
        assert_eq!(len, FULL.len());
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.method_str, "POST");
        assert_eq!(h.target, b"/upload?x=1");
        assert_eq!(h.version, Version::Http11);
        assert!(h.keep_alive);
        assert_eq!(h.host, Some(&b"example.com:8080"[..]));
        assert_eq!(h.body, BodyKind::Length(5));
        assert!(h.expect_continue);
        assert_eq!(h.if_none_match().collect::<Vec<_>>(), [&b"\"abc\""[..]]);
        assert_eq!(
            h.if_modified_since,
            Some(&b"Sat, 29 Oct 1994 19:43:31 GMT"[..])
        );
        assert_eq!(h.range, Some(&b"bytes=0-99"[..]));
        assert_eq!(h.if_range, Some(&b"\"abc\""[..]));
        assert!(h.accept_gzip);
        assert_eq!(h.user_agent, Some(&b"curl/8.0"[..]));
        assert_eq!(h.referer, Some(&b"http://example.com/"[..]));
    }

    #[test]
    fn minimal_get_has_defaults() {
        let h = head_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.body, BodyKind::None);
        assert!(!h.expect_continue && !h.accept_gzip);
        assert!(h.range.is_none() && h.user_agent.is_none());
        assert_eq!(h.if_none_match().count(), 0);
    }

    #[test]
    fn methods() {
        for (m, want) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Patch),
            ("TRACE", Method::Trace),
            ("CONNECT", Method::Connect),
            ("PROPFIND", Method::Other),
            ("get", Method::Other),
        ] {
            let buf = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            let h = head_of(buf.as_bytes());
            assert_eq!(h.method, want, "{m}");
            assert_eq!(h.method_str, m);
        }
    }

    #[test]
    fn header_names_case_insensitive() {
        let buf = b"GET / HTTP/1.1\r\nhOsT: a\r\ncontent-LENGTH: 7\r\nCONNECTION: CLOSE\r\n\
            ACCEPT-ENCODING: GZIP\r\nrange: bytes=1-\r\nIF-NONE-MATCH: *\r\nexpect: 100-Continue\r\n\r\n";
        let h = head_of(buf);
        assert_eq!(h.host, Some(&b"a"[..]));
        assert_eq!(h.body, BodyKind::Length(7));
        assert!(!h.keep_alive);
        assert!(h.accept_gzip);
        assert!(h.expect_continue);
        assert_eq!(h.range, Some(&b"bytes=1-"[..]));
        assert_eq!(h.if_none_match().collect::<Vec<_>>(), [&b"*"[..]]);
        let h = head_of(b"POST / HTTP/1.1\r\nHOST: a\r\nTRANSFER-ENCODING: Chunked\r\n\r\n");
        assert_eq!(h.body, BodyKind::Chunked);
    }

    #[test]
    fn every_prefix_is_partial_and_whole_is_complete() {
        for buf in [
            FULL,
            b"\r\n\r\nGET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            for i in 0..buf.len() {
                assert!(
                    is_partial(&buf[..i], &limits()),
                    "prefix {i} of {:?}",
                    String::from_utf8_lossy(buf)
                );
            }
            assert_eq!(complete(buf).1, buf.len());
        }
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let buf = b"\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let (h, len) = complete(buf);
        assert_eq!(len, buf.len());
        assert_eq!(h.target, b"/x");
    }

    /// More empty lines than a head may hold: the head is too large (431); there is no
    /// target to call too long (414).
    #[test]
    fn a_head_of_nothing_but_empty_lines_is_too_large() {
        assert_eq!(status(&b"\r\n".repeat(5000)), 431);
        assert_eq!(status(&b"\n".repeat(9000)), 431);
    }

    #[test]
    fn pipelined_heads_back_to_back() {
        let one = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
        let two = b"HEAD /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".as_slice();
        let three = b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
        let all = [one, two, three].concat();
        let mut at = 0;
        let mut seen = Vec::new();
        while at < all.len() {
            let (h, len) = complete(&all[at..]);
            seen.push((h.target.to_vec(), h.method, h.keep_alive));
            at += len;
        }
        assert_eq!(at, all.len());
        assert_eq!(
            seen,
            vec![
                (b"/1".to_vec(), Method::Get, true),
                (b"/2".to_vec(), Method::Head, false),
                (b"/3".to_vec(), Method::Get, true),
            ]
        );
        // The first head is complete even when the second is cut short.
        let cut = &all[..one.len() + 10];
        assert_eq!(complete(cut).1, one.len());
        assert!(is_partial(&cut[one.len()..], &limits()));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(head_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!head_of(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head_of(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(
            !head_of(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, close\r\n\r\n").keep_alive
        );
        assert!(
            !head_of(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nConnection: close\r\n\r\n")
                .keep_alive
        );
        // "closed" is another token, not "close".
        assert!(head_of(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n").keep_alive);
        let h = head_of(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.version, Version::Http10);
        assert!(!h.keep_alive);
        assert!(head_of(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(head_of(b"GET / HTTP/1.0\r\nConnection: Keep-Alive, Upgrade\r\n\r\n").keep_alive);
        assert!(head_of(b"GET / HTTP/1.0\r\nConnection: Upgrade,Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head_of(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        assert!(!head_of(b"GET / HTTP/1.0\r\nConnection: keep-alived\r\n\r\n").keep_alive);
    }

    #[test]
    fn accept_encoding() {
        let gz = |v: &str| head_of(&req(&format!("Accept-Encoding: {v}\r\n"))).accept_gzip;
        assert!(gz("gzip"));
        assert!(gz("GZip"));
        assert!(gz("x-gzip"));
        assert!(gz("deflate, gzip, br"));
        assert!(gz("gzip;q=0.001"));
        assert!(gz("gzip; q=1"));
        assert!(gz("*"));
        assert!(gz("br;q=1, *;q=0.1"));
        assert!(!gz("gzip;q=0"));
        // A weight that is not a qvalue does not count as 1.
        for bad in ["0.0000", "00", "-1", "\"0\"", "", "1.5", "2", "0.5x"] {
            assert!(!gz(&format!("gzip;q={bad}")), "q={bad}");
        }
        assert!(!gz("gzip ; q = 0"));
        assert!(gz("gzip ; q = 0.5"));
        assert!(gz("gzip;q=1.000"));
        assert!(gz("gzip;q=0.5;level=9"));
        assert!(!gz("gzip; q=0.000"));
        assert!(!gz("gzip;Q=0.0, br"));
        assert!(!gz("*;q=0"));
        assert!(!gz("br, deflate"));
        assert!(!gz("identity"));
        assert!(!gz("gzipx"));
        assert!(!gz(""));
        // An explicit gzip entry overrides "*", both ways.
        assert!(!gz("gzip;q=0, *"));
        assert!(gz("gzip, *;q=0"));
        assert!(!head_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").accept_gzip);
        // Several lines are one list.
        let buf = req("Accept-Encoding: br\r\nAccept-Encoding: gzip\r\n");
        assert!(head_of(&buf).accept_gzip);
    }

    #[test]
    fn content_length() {
        assert_eq!(
            head_of(&req("Content-Length: 0\r\n")).body,
            BodyKind::Length(0)
        );
        assert_eq!(
            head_of(&req("Content-Length: 18446744073709551615\r\n")).body,
            BodyKind::Length(u64::MAX)
        );
        assert_eq!(
            head_of(&req("Content-Length: 5, 5\r\n")).body,
            BodyKind::Length(5)
        );
        assert_eq!(
            head_of(&req("Content-Length: 5\r\ncontent-length: 5\r\n")).body,
            BodyKind::Length(5)
        );
        assert_eq!(
            head_of(&req("Content-Length: 007\r\n")).body,
            BodyKind::Length(7)
        );
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 6\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: -5\r\n",
            "Content-Length: 5 5\r\n",
            "Content-Length: 0x10\r\n",
            "Content-Length: 5.0\r\n",
            "Content-Length: \r\n",
            "Content-Length: 5,\r\n",
            "Content-Length: 18446744073709551616\r\n",
            "Content-Length: 99999999999999999999999\r\n",
        ] {
            assert_eq!(status(&req(bad)), 400, "{bad:?}");
        }
    }

    #[test]
    fn transfer_encoding() {
        let post = |extra: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes();
        assert_eq!(
            head_of(&post("Transfer-Encoding: chunked\r\n")).body,
            BodyKind::Chunked
        );
        assert_eq!(
            head_of(&post("Transfer-Encoding: CHUNKED\r\n")).body,
            BodyKind::Chunked
        );
        for bad in [
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: gzip, chunked, chunked\r\n",
            "Transfer-Encoding: \"gzip\", chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "Transfer-Encoding: chunked;a=b\r\n",
            "Transfer-Encoding: xchunked\r\n",
            "Transfer-Encoding: \r\n",
        ] {
            assert_eq!(status(&post(bad)), 400, "{bad:?}");
        }
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        // Framed by chunked but coded with something keel cannot undo: 501 (RFC 9112 6.1).
        for unknown in [
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert_eq!(status(&post(unknown)), 501, "{unknown:?}");
        }
        // ... but never beside Content-Length or in HTTP/1.0: those stay 400.
        assert_eq!(
            status(&post(
                "Transfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n"
            )),
            400
        );
        let e = parse_head(
            &post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.reason, "Content-Length with Transfer-Encoding");
    }

    #[test]
    fn host_rules() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"), 400);
        assert_eq!(head_of(b"GET / HTTP/1.0\r\n\r\n").host, None);
        assert_eq!(
            head_of(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").host,
            Some(&b""[..])
        );
    }

    #[test]
    fn malformed_heads_are_400() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tfolded\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n: empty name\r\n\r\n",
            b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /\r\n\r\n",
            b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET / http/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\r\n",
        ] {
            assert_eq!(status(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn versions() {
        for v in ["HTTP/2.0", "HTTP/3", "HTTP/0.9", "HTTP/10.1", "HTTP/1.23"] {
            let buf = format!("GET / {v}\r\nHost: a\r\n\r\n");
            assert_eq!(status(buf.as_bytes()), 505, "{v}");
        }
        // Known as soon as the major version is seen.
        assert_eq!(status(b"GET / HTTP/2"), 505);
        for v in [
            "HTTP/x.1",
            "HTTPS/1.1",
            "HTTP/1.1x",
            "HTTP/",
            "FOO",
            "HTTP/1.2x",
        ] {
            let buf = format!("GET / {v}\r\nHost: a\r\n\r\n");
            assert_eq!(status(buf.as_bytes()), 400, "{v}");
        }
    }

    /// RFC 9110 2.5: HTTP/1.2 to 1.9 are read as 1.1, whatever the shape of their fields.
    #[test]
    fn later_minor_versions_are_read_as_http_1_1() {
        fn complete(buf: &[u8]) -> (Head<'_>, usize) {
            match parse_head(buf, &limits()) {
                Ok(HeadResult::Complete { head, len }) => (head, len),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
            }
        }
        for v in ["HTTP/1.2", "HTTP/1.9"] {
            let one = format!("GET /a?b {v}\r\nHost: h\r\nX:\tt\r\nConnection: close\r\n\r\n");
            let (head, len) = complete(one.as_bytes());
            assert_eq!(len, one.len());
            assert_eq!((head.method, head.method_str), (Method::Get, "GET"));
            assert_eq!(head.target, b"/a?b");
            assert_eq!(head.version, Version::Http11);
            assert_eq!(head.host, Some(&b"h"[..]));
            assert!(!head.keep_alive, "Connection: close still counts");
            // Pipelined: the length is this head's, not the buffer's.
            let two = [one.as_bytes(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"].concat();
            assert_eq!(complete(&two).1, one.len());
        }
        // Leading empty lines and bare LFs, as httparse reads them for 1.1.
        let (head, len) = complete(b"\r\nHEAD /x HTTP/1.5\nHost: h\n\n");
        assert_eq!(
            (head.method, head.target, len),
            (Method::Head, &b"/x"[..], 28)
        );
        // Still arriving: wait, at every cut.
        let full = b"GET / HTTP/1.2\r\nHost: h\r\n\r\n";
        for cut in 1..full.len() {
            assert!(
                matches!(parse_head(&full[..cut], &limits()), Ok(HeadResult::Partial)),
                "{:?}",
                String::from_utf8_lossy(&full[..cut])
            );
        }
        // The rules of 1.1 hold: Host, the limits, the field syntax.
        assert_eq!(status(b"GET / HTTP/1.2\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.2\r\nHost: h\r\nBad Name: x\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.2\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        let small = Limits {
            max_head: 64,
            max_uri: 8,
            max_headers: 2,
            max_body: 0,
        };
        assert_eq!(
            status_with(b"GET /123456789 HTTP/1.2\r\nHost: h\r\n\r\n", &small),
            414
        );
        assert_eq!(
            status_with(b"GET / HTTP/1.2\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n", &small),
            431
        );
        let long = [
            &b"GET / HTTP/1.2\r\nHost: h\r\nA: "[..],
            &[b'x'; 80],
            b"\r\n",
        ]
        .concat();
        assert_eq!(status_with(&long, &small), 431);
        // Two spaces, no target, a space in the target: a malformed line, as for 1.1.
        for line in [
            "GET  / HTTP/1.2",
            "GET HTTP/1.2",
            "GET /a b HTTP/1.2",
            " GET / HTTP/1.2",
        ] {
            let buf = format!("{line}\r\nHost: h\r\n\r\n");
            assert_eq!(status(buf.as_bytes()), 400, "{line}");
        }
    }

    #[test]
    fn expect() {
        assert!(head_of(&req("Expect: 100-continue\r\n")).expect_continue);
        assert!(head_of(&req("Expect: 100-CONTINUE\r\n")).expect_continue);
        assert!(!head_of(b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert_eq!(status(&req("Expect: 200-ok\r\n")), 417);
        assert_eq!(status(&req("Expect: 100-continue, foo\r\n")), 417);
        assert_eq!(status(&req("Expect: 100-continuex\r\n")), 417);
    }

    #[test]
    fn uri_limit() {
        let l = Limits {
            max_uri: 10,
            ..Limits::default()
        };
        assert!(matches!(
            parse_head(b"GET /123456789 HTTP/1.1\r\nHost: a\r\n\r\n", &l),
            Ok(HeadResult::Complete { .. })
        ));
        assert_eq!(
            status_with(b"GET /1234567890 HTTP/1.1\r\nHost: a\r\n\r\n", &l),
            414
        );
        // Decided before the head is complete, and even before the target is.
        assert_eq!(status_with(b"GET /1234567890 HTTP/1.1\r\n", &l), 414);
        assert_eq!(status_with(b"GET /1234567890abc", &l), 414);
        assert!(is_partial(b"GET /123456789", &l));
        // A target within the limit whose line (or head) runs past the head's: 431, since
        // the target was not what is too long.
        let just_under = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(8180));
        assert_eq!(status(just_under.as_bytes()), 431);
        let cut = format!("GET /{} HTTP/1.", "a".repeat(8180));
        assert_eq!(status(cut.as_bytes()), 431);
        // A long target in the default limits: 414, not 431.
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(status(long.as_bytes()), 414);
        assert_eq!(status(&long.as_bytes()[..8500]), 414);
    }

    #[test]
    fn head_limit() {
        let l = Limits {
            max_head: 64,
            max_uri: 1000,
            ..Limits::default()
        };
        // 25 bytes of request line and Host, 3 + 32 + 2 of X, 2 of the final CRLF.
        let ok = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "x".repeat(32));
        let ok = ok.as_bytes();
        assert_eq!(ok.len(), 64);
        assert!(matches!(
            parse_head(ok, &l),
            Ok(HeadResult::Complete { len: 64, .. })
        ));
        let too_big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "x".repeat(33));
        let too_big = too_big.as_bytes();
        assert_eq!(status_with(too_big, &l), 431);
        // Still partial: exactly max_head bytes is fine, one more is not.
        assert!(is_partial(&too_big[..64], &l));
        assert_eq!(status_with(&too_big[..65], &l), 431);
        // The request line itself did not fit: 414.
        let line = format!("GET /{} HTTP/1.1\r\n", "b".repeat(70));
        assert_eq!(status_with(line.as_bytes(), &l), 414);
        // A complete head followed by more bytes is fine as long as the head fits.
        let mut pipelined = ok.to_vec();
        pipelined.extend_from_slice(ok);
        assert!(matches!(
            parse_head(&pipelined, &l),
            Ok(HeadResult::Complete { len: 64, .. })
        ));
        // Defaults: 8 KiB of fields is too much.
        let big = req(&format!("X-Big: {}\r\n", "v".repeat(8200)));
        assert_eq!(status(&big), 431);
    }

    #[test]
    fn header_count_limit() {
        let l = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let three = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(matches!(
            parse_head(three, &l),
            Ok(HeadResult::Complete { .. })
        ));
        let four = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(status_with(four, &l), 431);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&req(&many)), 431);
        let hundred: String = (0..99).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(head_of(&req(&hundred)).keep_alive);
    }

    #[test]
    fn repeated_single_value_fields_are_void_and_the_first_user_agent_wins() {
        let buf = req(
            "Range: bytes=0-1\r\nRange: bytes=5-6\r\nUser-Agent: a\r\nUser-Agent: b\r\n\
                       If-Modified-Since: x\r\nIf-Modified-Since: x\r\nIf-Range: \"e\"\r\n",
        );
        let h = head_of(&buf);
        assert_eq!(h.range, Some(&b""[..]));
        assert_eq!(h.if_modified_since, Some(&b""[..]));
        assert_eq!(h.if_range, Some(&b"\"e\""[..]), "given once");
        assert_eq!(h.user_agent, Some(&b"a"[..]));
    }

    #[test]
    fn host_values() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:7301",
            "[::1]",
            "[::1]:80",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%2Db",
            "example.com:",
            "",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n");
            assert!(
                matches!(
                    parse_head(buf.as_bytes(), &limits()),
                    Ok(HeadResult::Complete { .. })
                ),
                "{ok:?}"
            );
        }
        for bad in [
            "a b",
            "a/b@c",
            "user@example.com",
            "example.com/path",
            "example.com?q",
            "example.com#f",
            "example.com:80x",
            "example.com:80:81",
            "[::1",
            "[]",
            "[::1]x",
            "a%2",
            "a%zz",
            "\"quoted\"",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(
                parse_head(buf.as_bytes(), &limits()).map(|_| ()),
                Err(HttpError::new(400, "invalid Host")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn if_none_match_lines_make_one_list_however_many() {
        let values = |extra: &str| {
            let buf = req(extra);
            let h = head_of(&buf);
            h.if_none_match().map(|v| v.to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(
            values("If-None-Match: \"a\"\r\nX-Other: \"no\"\r\nif-none-match:\t\"b\", \"c\" \r\n"),
            [b"\"a\"".to_vec(), b"\"b\", \"c\"".to_vec()]
        );
        assert_eq!(values("If-None-Match: \r\n"), [b"".to_vec()]);
        let many: String = (0..40)
            .map(|i| format!("If-None-Match: \"{i}\"\r\nX-{i}: y\r\n"))
            .collect();
        let got = values(&many);
        assert_eq!(got.len(), 40);
        assert_eq!(got[39], b"\"39\"");
        assert_eq!(values(""), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn status_texts() {
        for s in [
            100, 200, 206, 301, 304, 400, 403, 404, 405, 408, 412, 413, 414, 416, 417, 431, 500,
            501, 503, 505,
        ] {
            assert_ne!(status_text(s), "Unknown", "{s}");
        }
        assert_eq!(status_text(404), "Not Found");
        assert_eq!(status_text(431), "Request Header Fields Too Large");
        assert_eq!(status_text(299), "Unknown");
        assert_eq!(HttpError::new(400, "x").to_string(), "400 Bad Request: x");
    }

    fn check_no_panic(buf: &[u8], limits: &Limits) {
        if let Ok(HeadResult::Complete { len, .. }) = parse_head(buf, limits) {
            assert!(len <= buf.len());
            assert!(len <= limits.max_head);
        }
    }

    /// The common way's reading of `buf`, when it takes it, next to the full way's.
    fn check_ways_agree(buf: &[u8], limits: &Limits) -> bool {
        let window = &buf[..buf.len().min(limits.max_head)];
        let mut common_slots: Slots = Default::default();
        let Some((line, fields, len)) = read_common(window, limits, &mut common_slots) else {
            return false;
        };
        let mut full_slots = [const { MaybeUninit::<Header<'_>>::uninit() }; HEADER_SLOTS];
        let full = read_full(buf, window, limits, &mut full_slots);
        let Ok(Some((full_line, full_fields, full_len))) = full else {
            panic!(
                "the common way took what the full way does not: {:?}",
                String::from_utf8_lossy(buf)
            );
        };
        assert_eq!(len, full_len);
        assert_eq!(line.method, full_line.method);
        assert_eq!(line.method_str, full_line.method_str);
        assert_eq!(line.target, full_line.target);
        assert_eq!(line.version, full_line.version);
        // Values as the same slices of the buffer, not only the same bytes: a field sent on
        // several lines is read back through the span between its values.
        let base = buf.as_ptr() as usize;
        let seen = |name: &[u8], value: &[u8]| {
            let at = value.as_ptr() as usize - base;
            (
                String::from_utf8_lossy(name).into_owned(),
                value.to_vec(),
                at,
            )
        };
        let common: Vec<_> = fields.map(|(n, v)| seen(n, v)).collect();
        let full: Vec<_> = full_fields
            .iter()
            .map(|h| seen(h.name.as_bytes(), h.value))
            .collect();
        assert_eq!(common, full);
        true
    }

    #[test]
    fn ascii_prefix_stops_at_the_first_other_byte_in_every_lane() {
        fn check<const MIN: u8>() {
            for len in [3, 8, 16, 21] {
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut s = vec![b'a'; len];
                        s[at] = byte;
                        let inside = (MIN..=0x7e).contains(&byte);
                        let expected = if inside { len } else { at };
                        assert_eq!(
                            common::ascii_prefix::<MIN>(&s),
                            expected,
                            "min {MIN:#x} len {len} at {at} byte {byte:#x}"
                        );
                    }
                }
            }
            assert_eq!(common::ascii_prefix::<MIN>(b""), 0);
        }
        check::<0x21>();
        check::<0x20>();
    }

    #[test]
    fn word_scans_agree_with_byte_scans_in_every_lane() {
        for len in [0, 1, 3, 7, 8, 9, 15, 16, 21] {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut digits = vec![b'7'; len];
                    digits[at] = byte;
                    let expected = digits
                        .iter()
                        .rev()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    assert_eq!(common::trailing_digits(&digits), expected, "{digits:?}");

                    let mut name = vec![b'a'; len];
                    name[at] = byte;
                    let expected = name.iter().position(|&b| b == b':');
                    assert_eq!(common::find_colon(&name), expected, "{name:?}");
                    let expected = name.iter().all(|&b| is_tchar(b));
                    assert_eq!(common::all_in(&TCHAR, &name), expected, "{name:?}");
                }
            }
            assert_eq!(common::trailing_digits(&vec![b'0'; len]), len);
            assert_eq!(common::find_colon(&vec![b':'; len]), (len > 0).then_some(0));
        }
    }

    #[test]
    fn common_requests_take_the_common_way() {
        for buf in [
            &b"GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"[..],
            b"HEAD /a%20b?x=1 HTTP/1.0\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\nGET",
            b"M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:x\r\nX-Empty:\r\nX-Spaces:   \r\nX-Trail: a b  \r\n\r\n",
            FULL,
        ] {
            assert!(
                check_ways_agree(buf, &limits()),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        // Left to the full way: leading empty lines, bare LF, obs-text in the target, a
        // request line or head still arriving, more fields than the common slots.
        let many = req(&"X-A: 1\r\n".repeat(common::COMMON_SLOTS));
        for buf in [
            &b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.",
            &many,
            // Fields of a shape httparse also takes: a tab, obs-text, a bare LF.
            b"GET / HTTP/1.1\r\nHost:\tx\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\tb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: \xc3\xa9\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\n",
            // And shapes it refuses: a space before the colon, obs-fold, a control byte.
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\x01\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n",
        ] {
            assert!(
                !check_ways_agree(buf, &limits()),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        assert_eq!(head_of(&many).target, b"/a");
    }

    /// Field spans are 16-bit offsets: with a head limit past 64 KiB, a long pipelined
    /// backlog still takes the common way, and a head too long for a span the full one.
    #[test]
    fn spans_hold_past_sixty_four_kib() {
        let big = Limits {
            max_head: 1 << 20,
            ..limits()
        };
        let one = b"GET /a HTTP/1.1\r\nHost: x\r\nX-B: y\r\n\r\n";
        let backlog = one.repeat(3000);
        assert!(backlog.len() > 100_000);
        assert!(check_ways_agree(&backlog, &big));

        let long = format!("X-Long: {}\r\n", "v".repeat(70_000));
        let buf = [
            &b"GET /a HTTP/1.1\r\nHost: x\r\n"[..],
            long.as_bytes(),
            b"\r\n",
        ]
        .concat();
        assert!(!check_ways_agree(&buf, &big));
        match parse_head(&buf, &big) {
            Ok(HeadResult::Complete { head, len }) => {
                assert_eq!(len, buf.len());
                assert_eq!(head.host, Some(&b"x"[..]));
            }
            _ => panic!("a 70 KB head within a 1 MiB limit is read"),
        }
    }

    proptest! {
        /// The quick Host check never accepts what the full one refuses.
        #[test]
        fn a_simple_host_is_a_valid_host(
            host in proptest::collection::vec(
                prop_oneof![
                    8 => prop::sample::select(b"abcXYZ019.-:".to_vec()),
                    1 => prop::sample::select(b"[]%@/ _~!$&'()*+,;=?#".to_vec()),
                    1 => any::<u8>(),
                ],
                0..24,
            )
        ) {
            if simple_host(&host) {
                prop_assert!(any_host(&host), "{:?}", String::from_utf8_lossy(&host));
            }
        }

        /// The memo of the last valid Host never answers for another value: a valid one,
        /// then the same with one byte changed (valid or not), then the first again, judged
        /// as the checks judge them without the memo. Lengths cross the memo's bounds and
        /// every word boundary.
        #[test]
        fn the_host_memo_answers_only_for_its_own_value(
            host in proptest::collection::vec(
                prop::sample::select(b"abcXYZ019.-:".to_vec()),
                0..60,
            ),
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![
                2 => prop::sample::select(b"abcXYZ019.-:".to_vec()),
                1 => any::<u8>(),
            ],
        ) {
            let mut other = host.clone();
            if !other.is_empty() {
                let i = at.index(other.len());
                other[i] = byte;
            }
            for v in [&host, &other, &host, &other] {
                prop_assert_eq!(
                    valid_host(v),
                    simple_host(v) || any_host(v),
                    "{:?}",
                    String::from_utf8_lossy(v)
                );
            }
        }
    }

    #[test]
    fn the_host_memo_keeps_only_valid_values() {
        assert!(valid_host(b"example.com:8080"));
        // Same length, one byte from the memo: refused by the checks, not waved through.
        assert!(!valid_host(b"example.com/8080"));
        assert!(!valid_host(b"example com:8080"));
        assert!(valid_host(b"example.com:8080"));
        // A refused value is never remembered.
        assert!(!valid_host(b"exa@ple.com:8080"));
        assert!(!valid_host(b"exa@ple.com:8080"));
    }

    const NAMES: [&str; 12] = [
        "host",
        "range",
        "expect",
        "referer",
        "if-range",
        "connection",
        "user-agent",
        "if-none-match",
        "content-length",
        "accept-encoding",
        "transfer-encoding",
        "if-modified-since",
    ];

    proptest! {
        /// For any token, the word-wise comparison agrees with a case-insensitive one.
        #[test]
        fn is_named_is_a_case_insensitive_comparison_for_tokens(
            which in 0..NAMES.len(),
            flips in proptest::collection::vec(any::<bool>(), 17),
            at in 0..17usize,
            byte in any::<u8>(),
            cut in 0..18usize,
        ) {
            let target = NAMES[which].as_bytes();
            // The name in mixed case, then perhaps one byte changed and perhaps cut short.
            let mut name: Vec<u8> = target
                .iter()
                .zip(&flips)
                .map(|(&b, &up)| if up { b.to_ascii_uppercase() } else { b })
                .collect();
            if at < name.len() && is_tchar(byte) {
                name[at] = byte;
            }
            name.truncate(cut.max(1));
            for lower in NAMES {
                prop_assert_eq!(
                    is_named(&name, lower.as_bytes()),
                    name.eq_ignore_ascii_case(lower.as_bytes()),
                    "{:?} vs {}", String::from_utf8_lossy(&name), lower
                );
            }
        }
    }

    /// A field line of mostly the common shape, with now and then a byte that is not: a name
    /// of token bytes, spaces around the value, a value of printable ASCII.
    fn field() -> impl Strategy<Value = Vec<u8>> {
        let odd = || {
            prop_oneof![
                Just(b'\t'),
                Just(b'\r'),
                Just(b'\n'),
                Just(0u8),
                Just(0x7f),
                0x80u8..
            ]
        };
        let name = proptest::collection::vec(
            prop_oneof![
                40 => prop::sample::select(b"aZ09-_!~.".to_vec()),
                1 => Just(b' '), 1 => Just(b':'), 1 => odd(),
            ],
            0..8,
        );
        let spaces =
            proptest::collection::vec(prop_oneof![8 => Just(b' '), 1 => Just(b'\t')], 0..4);
        let value = proptest::collection::vec(prop_oneof![40 => 0x20u8..0x7f, 1 => odd()], 0..20);
        let eol = prop_oneof![8 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..])];
        (name, spaces.clone(), value, spaces, eol).prop_map(|(name, lead, value, trail, eol)| {
            [&name[..], b":", &lead, &value, &trail, eol].concat()
        })
    }

    proptest! {
        // About one case in six is a request the common way takes; the rest check that it
        // leaves what it should.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever the common way accepts, the full way (httparse's own request parser)
        /// accepts too, and reads the same way: method, target, version, fields and length.
        #[test]
        fn the_common_way_reads_as_httparse_does(
            method in prop_oneof![
                4 => Just("GET"), 1 => Just("HEAD"), 1 => Just("POST"), 1 => Just("get"),
                1 => Just("M-SEARCH"), 1 => Just(""), 1 => Just("G T"), 1 => Just("GE\tT"),
                1 => Just("\u{e9}"),
            ],
            target in proptest::collection::vec(
                prop_oneof![
                    300 => 0x21u8..0x7f, 1 => Just(b' '), 1 => Just(b'\t'), 1 => Just(0x7f),
                    1 => 0x80u8..=0xff, 1 => Just(0),
                ],
                0..24,
            ),
            version in prop_oneof![
                6 => Just("HTTP/1.1"), 3 => Just("HTTP/1.0"), 1 => Just("HTTP/2.0"),
                1 => Just("HTTP/1.1 "), 1 => Just("http/1.1"), 1 => Just("HTTP/1.2"),
                1 => Just(""),
            ],
            eol in prop_oneof![6 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r"), 1 => Just("")],
            fields in proptest::collection::vec(
                prop_oneof![
                    40 => Just(b"Host: example.com\r\n".to_vec()),
                    20 => Just(b"Content-Length: 5\r\n".to_vec()),
                    20 => Just(b"X: \r\n".to_vec()), 4 => Just(b"LF: x\n".to_vec()),
                    1 => Just(b"Bad Name: x\r\n".to_vec()),
                    1 => Just(b"Fold: a\r\n b\r\n".to_vec()),
                    1 => Just(b"Colon : x\r\n".to_vec()), 1 => Just(b"NoColon\r\n".to_vec()),
                    40 => field(),
                ],
                0..12,
            ),
            end in prop_oneof![4 => Just("\r\n"), 1 => Just("\n"), 1 => Just("")],
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = format!("{method} ").into_bytes();
            buf.extend_from_slice(&target);
            buf.extend_from_slice(format!(" {version}{eol}").as_bytes());
            for f in &fields {
                buf.extend_from_slice(f);
            }
            buf.extend_from_slice(end.as_bytes());
            check_ways_agree(&buf, &limits());
            check_ways_agree(&buf[..cut.index(buf.len() + 1)], &limits());
            let small = Limits { max_head: 64, max_uri: 8, max_headers: 3, max_body: 0 };
            check_ways_agree(&buf, &small);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The same, for the header fields alone, behind a request line of the common shape.
        #[test]
        fn common_fields_read_as_httparse_does(
            fields in proptest::collection::vec(field(), 0..6),
            end in prop_oneof![8 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..])],
        ) {
            let buf = [&b"GET / HTTP/1.1\r\n"[..], &fields.concat(), end].concat();
            check_ways_agree(&buf, &limits());
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_no_panic(&buf, &limits());
            check_no_panic(&buf, &Limits { max_head: 40, max_uri: 8, max_headers: 2, max_body: 0 });
        }

        #[test]
        fn head_like_bytes_never_panic(
            buf in proptest::collection::vec(
                prop_oneof![
                    Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), Just(b'\t'), Just(b','),
                    Just(b'G'), Just(b'H'), Just(b'T'), Just(b'P'), Just(b'/'), Just(b'1'),
                    Just(b'.'), Just(b'0'), any::<u8>(),
                ],
                0..300,
            )
        ) {
            check_no_panic(&buf, &limits());
        }

        #[test]
        fn truncated_and_mutated_requests_never_panic(
            cut in 0..FULL.len() + 1,
            at in 0..FULL.len(),
            byte in any::<u8>(),
        ) {
            check_no_panic(&FULL[..cut], &limits());
            let mut mutated = FULL.to_vec();
            mutated[at] = byte;
            check_no_panic(&mutated, &limits());
            check_no_panic(&mutated[..cut], &limits());
            let small = Limits { max_head: cut, max_uri: cut / 2, max_headers: 4, max_body: 0 };
            check_no_panic(&mutated, &small);
        }
    }
}

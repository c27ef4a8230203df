//! One HTTP/1.1 connection: the handler that turns requests into responses.
//!
//! The connection is a small state machine:
//!
//! ```text
//!         head complete, no body: answer at once
//!       ┌────────────────────────────────────┐
//!       ▼                                    │
//!     Head ──head complete, with a body──▶ Body (read and dropped; the answer waits)
//!       │  ▲                                 │
//!       │  └──────── body complete: answer ──┘
//!       │ a bad head or body, Connection: close, a timeout
//!       ▼
//!     Closed (the final response is flushed, then a graceful close)
//! ```
//!
//! Every complete request found in the input is answered in one pass: responses are appended
//! to one buffer that leaves in a single write, so sixteen pipelined requests cost one read
//! and one write. A response whose body is a large file ends the batch with `send_file`: the
//! batch so far is its head and the file follows with sendfile, so order is kept. When more
//! than [`BACKLOG`] bytes wait for the client, parsing stops and reading pauses until the
//! queue drains (a client that pipelines without reading cannot make us buffer without end).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use super::access_log::{self, Exchange};
use super::autoindex;
use super::body::BodyDecoder;
use super::conditional::{self, Condition};
use super::date;
use super::files::{self, Entry, Found};
use super::parse::{parse_head_into, Head, Limits, Method, Version};
use super::path::{self, is_hidden, normalize_target, plain_path, push_percent_encoded, PathError};
use super::range::{parse_range, RangeOutcome};
use super::response::{
    push_content_length, push_end, push_error, push_header, push_status, push_u64, Persistence,
};
use super::site::Site;
use crate::net::{Buffer, CloseReason, Ctx, FileRange, Handler};
use crate::reactor::Note;

/// Output waiting for the client above which no further pipelined request is answered.
///
/// It is what a client that pipelines and never reads can make a connection hold, beyond the
/// kernel's send buffer: with a 4 KiB send buffer, 500 such clients held 213 KiB each at
/// 256 KiB and 97 KiB each at 64 KiB (what they had sent and was read counts too). A reader
/// that keeps up never comes near it (the socket takes each batch as it is written), so a
/// lower bound costs a well-behaved client nothing. It can be overshot by one response held
/// in memory: a small file (16 KiB at most by default) or a directory listing.
pub const BACKLOG: usize = 64 * 1024;

/// Whether a head that read as incomplete at `seen` bytes can read otherwise now that `bytes`
/// holds more. Parsing is stateless (each call reads the head from its first byte), so a head
/// sent a byte at a time was read once per byte, quadratic work: 13 ms of user time for a
/// 7.4 KiB head, 4 ms with this check (the kernel's work per segment, the same either way, is
/// the rest of what such a client costs). Every way a head ends (CRLF CRLF, or bare LFs) ends
/// in a line feed, so without a new one in the new bytes it cannot have completed; and every
/// limit the parse enforces on a head still arriving is a length: the head over `max_head`, or
/// a target over `max_uri`, which a head no longer than that cannot hold. A carriage return
/// is looked for too: lines ended by a bare CR never bring a line feed, and are refused (400)
/// as soon as one arrives, not at the header timeout. Any other byte that makes the head
/// malformed is found when its line ends, within the same `max_head` bound.
fn worth_reparsing(bytes: &[u8], seen: usize, limits: &Limits) -> bool {
    bytes.len() > limits.max_head.min(limits.max_uri)
        || bytes
            .get(seen..)
            .is_none_or(|new| new.iter().any(|&b| b == b'\n' || b == b'\r'))
}

const TAG_HEAD: u64 = 1;
const TAG_BODY: u64 = 2;

/// Where the request being read is. (Closed is a flag of [`HttpConn`]'s: with two unit
/// variants this would take 16 bytes, not 8, on every idle connection.)
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Reading (and dropping) a request's body; its answer leaves once the body is complete,
    /// so a body that turns out bad gets only the error, never two answers.
    Body(Box<BodyWait>),
}

/// A request whose body is being read: what reads it and the answer that waits for it.
struct BodyWait {
    decoder: BodyDecoder,
    answer: Answer,
    /// The request line as received, when there is an access log: a body that turns out bad
    /// (or stops arriving) refuses the request after its head has left the input, and the
    /// log line of that refusal still names the request.
    request: Vec<u8>,
    /// A HEAD request (with a body): a refusal of its body is a head alone too.
    head_only: bool,
}

/// A decided response: its bytes are in the batch (or held here while the body arrives).
struct Answer {
    status: u16,
    persistence: Persistence,
    /// Head (and small body) bytes, when held back.
    bytes: Vec<u8>,
    /// A body that leaves with sendfile, after `bytes`.
    file: Option<FileRange>,
    /// The body's length (the file range's, or the tail of the bytes).
    body_bytes: u64,
    /// The access log line, written when the answer leaves (a file's body: once it has left).
    log: Option<access_log::Line>,
}

pub struct HttpConn {
    site: Arc<Site>,
    state: State,
    served: u64,
    head_timer: bool,
    /// Parsing stopped because too much output is queued.
    stalled: bool,
    /// Some bytes have arrived on this connection.
    heard: bool,
    /// A final response is queued; the connection closes once it is out.
    closed: bool,
    /// How many bytes of the input were read last time as a head still arriving (0: none).
    /// The next piece is read only if it could change that verdict ([`worth_reparsing`]).
    /// A u32: a head is at most `max_head`, and the connection's size is what decides how
    /// many idle ones fit in a GiB.
    partial_head: u32,
    /// Access-log lines waiting for a file's body to leave; `None` (no memory) otherwise.
    held: Option<Box<access_log::Held>>,
}

thread_local! {
    /// The batch of responses being built; one per thread, reused.
    static OUT: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(64 * 1024));
}

impl HttpConn {
    pub fn new(site: Arc<Site>) -> HttpConn {
        HttpConn {
            site,
            state: State::Head,
            served: 0,
            head_timer: false,
            stalled: false,
            heard: false,
            closed: false,
            partial_head: 0,
            held: None,
        }
    }

    fn process(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer, out: &mut Vec<u8>, now: Instant) {
        // Output already queued on the connection; it only grows when a file is queued.
        let mut queued = cx.output_len();
        // The file the last request of this batch was answered from memory with.
        let mut held = None;
        loop {
            if self.closed {
                input.clear();
                return;
            }
            match &mut self.state {
                State::Body(wait) => match wait.decoder.feed(input.as_slice()) {
                    Ok(p) => {
                        input.consume(p.consumed);
                        if !p.done {
                            cx.set_timer(self.site.settings.body_timeout, TAG_BODY);
                            return;
                        }
                        cx.cancel_timer(TAG_BODY);
                        let State::Body(wait) = std::mem::replace(&mut self.state, State::Head)
                        else {
                            unreachable!("matched above")
                        };
                        let answer = wait.answer;
                        out.extend_from_slice(&answer.bytes);
                        if !self.emit(cx, out, answer) {
                            input.clear();
                            return;
                        }
                    }
                    Err(e) => {
                        self.fail(cx, out, e.status, input, false);
                        return;
                    }
                },
                State::Head => {
                    if input.is_empty() {
                        return;
                    }
                    if out.len() + queued > BACKLOG {
                        // Hand the batch so far to the connection: what the socket takes is
                        // no longer waiting. Only output the connection still holds counts
                        // against the client, and only then does reading pause, because only
                        // then will a drained queue (`on_drained`) resume it.
                        self.flush(cx, out);
                        queued = cx.output_len();
                        if queued > BACKLOG {
                            self.stalled = true;
                            cx.pause_read();
                            return;
                        }
                    }
                    let limits = &self.site.settings.limits;
                    let seen = self.partial_head as usize;
                    if seen > 0 && !worth_reparsing(input.as_slice(), seen, limits) {
                        return;
                    }
                    let mut slot = None;
                    let parsed = parse_head_into(input.as_slice(), limits, &mut slot);
                    self.partial_head = match parsed {
                        Ok(None) => u32::try_from(input.len()).unwrap_or(0),
                        _ => 0,
                    };
                    let (head, len) = match parsed {
                        Ok(None) => {
                            if !self.head_timer {
                                self.head_timer = true;
                                cx.set_timer(self.site.settings.header_timeout, TAG_HEAD);
                            }
                            return;
                        }
                        Err(e) => {
                            self.fail(cx, out, e.status, input, true);
                            return;
                        }
                        Ok(Some(read)) => read,
                    };
                    if self.head_timer {
                        self.head_timer = false;
                        cx.cancel_timer(TAG_HEAD);
                    }
                    let decoder = match BodyDecoder::new(head.body, limits.max_body) {
                        Ok(d) => d,
                        Err(e) => {
                            self.fail(cx, out, e.status, input, true);
                            return;
                        }
                    };
                    if decoder.is_done() {
                        if self.answer_from_memory(cx, head, out, now, &mut held) {
                            input.consume(len);
                            continue;
                        }
                        let answer = self.respond(cx, head, out, now, false);
                        input.consume(len);
                        let queues_file = answer.file.is_some();
                        if !self.emit(cx, out, answer) {
                            input.clear();
                            return;
                        }
                        if queues_file {
                            queued = cx.output_len();
                        }
                    } else if head.expect_continue
                        && !matches!(head.method, Method::Get | Method::Head)
                    {
                        // An upload, refused (405 or 501) whatever its body: the refusal
                        // goes now, instead of the 100 that would have the client send the
                        // body for nothing (RFC 9110 10.1.1). Whether the body follows is
                        // then the client's choice, and the next bytes cannot tell a body
                        // from a request, so the connection closes after the answer (the
                        // lingering close drops whatever body comes).
                        let answer = self.respond(cx, head, out, now, true);
                        input.consume(len);
                        self.emit(cx, out, answer);
                        input.clear();
                        return;
                    } else {
                        if head.expect_continue {
                            // The client waits for this before it sends the body.
                            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            cx.note(Note::Response(100));
                        }
                        let start = out.len();
                        let mut answer = self.respond(cx, head, out, now, false);
                        answer.bytes = out.split_off(start);
                        let request = match self.site.access_log {
                            Some(_) => access_log::first_line(input.as_slice()).to_vec(),
                            None => Vec::new(),
                        };
                        let head_only = head.method == Method::Head;
                        input.consume(len);
                        self.state = State::Body(Box::new(BodyWait {
                            decoder,
                            answer,
                            request,
                            head_only,
                        }));
                    }
                }
            }
        }
    }

    /// The request nearly every keep-alive client sends, answered without building an
    /// [`Answer`]: an HTTP/1.1 GET that stays keep-alive, unconditional, for the whole of the
    /// file the cache found last, when that file is kept in memory and the client takes it
    /// unencoded. Its response was encoded when the file was cached and leaves in one copy,
    /// Date line included: on `bench/instructions`' pipelined load this took keel from 1,015
    /// to 877 instructions per response. With an access log the general way is taken (it
    /// formats the line). False: nothing was written, and [`HttpConn::respond`] decides,
    /// the same way for this request.
    fn answer_from_memory(
        &mut self,
        cx: &mut Ctx<'_>,
        head: &Head<'_>,
        out: &mut Vec<u8>,
        now: Instant,
        held: &mut Option<files::Held>,
    ) -> bool {
        if head.method != Method::Get
            || head.version != Version::Http11
            || !head.keep_alive
            || head.is_conditional()
            || head.range.is_some()
            || self.site.access_log.is_some()
            || self.served + 1 >= self.site.settings.keepalive_requests
        {
            return false;
        }
        if !held.as_ref().is_some_and(|h| h.names(head.target)) {
            *held = files::Held::find(&self.site, head.target, now);
        }
        let Some(entry) = held.as_ref().map(files::Held::entry) else {
            return false;
        };
        if head.accept_gzip && entry.gzip.is_some() {
            return false;
        }
        let Some(whole) = date::batch_stamp().and_then(|stamp| entry.whole_200(stamp)) else {
            return false;
        };
        out.extend_from_slice(&whole);
        self.served += 1;
        cx.note(Note::Response(200));
        true
    }

    /// An answer leaves: counted, logged, its file queued behind the batch. False when it
    /// ends the connection (which is then closing).
    fn emit(&mut self, cx: &mut Ctx<'_>, out: &mut Vec<u8>, answer: Answer) -> bool {
        cx.note(Note::Response(answer.status));
        // Where the body ends: at the end of the batch, or of the file range handed now.
        let mut ahead = out.len() as u64;
        if let Some(range) = answer.file {
            if answer.log.is_some() && self.held.is_none() {
                self.held = Some(Box::new(access_log::Held::new(cx.output_len())));
            }
            // The batch so far becomes the head of a sendfile.
            let handed = out.len() as u64 + range.len;
            if cx.send_file(out, range) {
                self.handed(handed);
                ahead = 0;
            } else {
                ahead = u64::MAX;
            }
            out.clear();
        }
        if let Some(line) = answer.log {
            self.log(line, ahead, answer.body_bytes);
        }
        if answer.persistence.keeps_alive() {
            return true;
        }
        self.closed = true;
        self.flush(cx, out);
        cx.close();
        false
    }

    /// Hands the batch so far to the connection.
    fn flush(&mut self, cx: &mut Ctx<'_>, out: &mut Vec<u8>) {
        if !out.is_empty() {
            if cx.write(out) {
                self.handed(out.len() as u64);
            }
            out.clear();
        }
    }

    /// Counts bytes handed to the connection while access-log lines are held.
    fn handed(&mut self, n: u64) {
        if let Some(held) = &mut self.held {
            held.handed(n);
        }
    }

    /// Logs `line` now, or, while a file's body is leaving, holds it until its own body has
    /// left: `len` bytes ending `ahead` bytes past those handed so far (see
    /// [`access_log::Held`]).
    fn log(&mut self, line: access_log::Line, ahead: u64, len: u64) {
        let Some(log) = &self.site.access_log else {
            return;
        };
        match &mut self.held {
            Some(held) => held.hold(line, ahead, len),
            None => {
                log.write_line(&line.with_bytes(None));
            }
        }
    }

    /// Writes the held lines whose bodies have left (all of them once the connection has
    /// `ended`).
    fn release_log(&mut self, cx: &Ctx<'_>, ended: bool) {
        if let (Some(held), Some(log)) = (&mut self.held, &self.site.access_log) {
            if held.release(cx.output_len(), ended, log) {
                self.held = None;
            }
        }
    }

    /// Answers `status` and closes: the request cannot be framed (or must not be served), so
    /// nothing after it on this connection can be trusted. `at_head` says the refused request's
    /// first line is at the start of `input` (a refused head), for the access log; otherwise
    /// the log names the request whose body was being read (a bad body, a body timeout), or
    /// shows "-" (a head that timed out, which may not have a whole first line).
    fn fail(
        &mut self,
        cx: &mut Ctx<'_>,
        out: &mut Vec<u8>,
        status: u16,
        input: &mut Buffer,
        at_head: bool,
    ) {
        // A response to HEAD never has a body (RFC 9112 6.3), a refusal included.
        let head_only = match &self.state {
            _ if at_head => is_head_request(input.as_slice()),
            State::Body(wait) => wait.head_only,
            _ => false,
        };
        let body_bytes = push_error(out, status, Persistence::Close, head_only);
        cx.note(Note::Response(status));
        if self.site.access_log.is_some() {
            let request = match &self.state {
                _ if at_head => access_log::first_line(input.as_slice()),
                State::Body(wait) => &wait.request,
                _ => b"-",
            };
            let mut line = Vec::with_capacity(128);
            let bytes_at =
                access_log::format_refusal(cx.peer_addr(), request, status, body_bytes, &mut line);
            let ahead = out.len() as u64;
            self.log(access_log::Line::new(line, bytes_at), ahead, body_bytes);
        }
        // A request whose body failed: its waiting answer (and file) goes now.
        self.state = State::Head;
        self.closed = true;
        input.clear();
        self.flush(cx, out);
        cx.close();
    }

    /// Decides the response to `head` and appends its bytes to `out` (a file body is returned
    /// in the answer, to be sent after them). `last`: the connection closes after it, whatever
    /// the request asked.
    fn respond(
        &mut self,
        cx: &mut Ctx<'_>,
        head: &Head<'_>,
        out: &mut Vec<u8>,
        now: Instant,
        last: bool,
    ) -> Answer {
        self.served += 1;
        let persistence =
            if last || !head.keep_alive || self.served >= self.site.settings.keepalive_requests {
                Persistence::Close
            } else if head.version == Version::Http10 {
                Persistence::KeepAlive10
            } else {
                Persistence::KeepAlive11
            };
        let (status, body_bytes, file) = self.answer(head, out, persistence, now);
        let log = self.site.access_log.as_ref().map(|_| {
            let mut line = Vec::with_capacity(200);
            let bytes_at = access_log::format_line(
                &Exchange {
                    peer: cx.peer_addr(),
                    method: head.method_str,
                    target: head.target,
                    version: match head.version {
                        Version::Http10 => "HTTP/1.0",
                        Version::Http11 => "HTTP/1.1",
                    },
                    status,
                    body_bytes,
                    referer: head.referer,
                    user_agent: head.user_agent,
                },
                &mut line,
            );
            access_log::Line::new(line, bytes_at)
        });
        Answer {
            status,
            persistence,
            bytes: Vec::new(),
            file,
            body_bytes,
            log,
        }
    }

    /// The response itself: (status, body bytes, a body to send from the file).
    fn answer(
        &mut self,
        head: &Head<'_>,
        out: &mut Vec<u8>,
        p: Persistence,
        now: Instant,
    ) -> (u16, u64, Option<FileRange>) {
        let head_only = head.method == Method::Head;
        let error =
            |out: &mut Vec<u8>, status: u16| (status, push_error(out, status, p, head_only), None);
        // RFC 9110 9.1 and 15.6.2: a method keel does not know at all is 501; a standard
        // one that a static file does not allow is 405, with Allow. Methods are
        // case-sensitive: `get` is not GET.
        if head.method == Method::Other {
            return error(out, 501);
        }
        if !matches!(head.method, Method::Get | Method::Head) {
            return error(out, 405);
        }
        // The file the cache found last, when this target names it byte for byte: most
        // requests (and every one of a pipelined burst for one file) end here.
        if let Some(entry) = files::recent(&self.site, head.target, now) {
            return self.serve_file(head, &entry, out, p);
        }
        let settings = &self.site.settings;
        let normalized;
        let path: &[u8] = match plain_path(head.target) {
            Some(p) => p,
            None => {
                normalized = match normalize_target(head.target) {
                    Ok(path) => path,
                    Err(e) => return error(out, e.status()),
                };
                if !settings.serve_hidden && is_hidden(&normalized) {
                    return error(out, 403);
                }
                normalized.as_bytes()
            }
        };
        // A page built here has no validator: only "*" can satisfy a precondition.
        let generated = |out: &mut Vec<u8>, page: &dyn Fn(&mut Vec<u8>) -> (u16, u64)| {
            let status = head
                .is_conditional()
                .then(|| conditional::generated_page_status(head.if_match(), head.if_none_match()))
                .flatten();
            match status {
                Some(304) => {
                    push_status(out, 304);
                    push_end(out, p);
                    (304, 0, None)
                }
                Some(status) => error(out, status),
                None => with_no_file(page(out)),
            }
        };
        if self.site.root.is_none() {
            return if path == b"/" || path == b"/index.html" {
                generated(out, &|out| welcome(out, p, head_only))
            } else {
                error(out, 404)
            };
        }
        if path.ends_with(b"/") {
            let index = [path, b"index.html"].concat();
            return match files::lookup(&self.site, &index, now) {
                Ok(Found::File(entry)) => self.serve_file(head, &entry, out, p),
                Ok(Found::Dir(_)) => error(out, 403),
                Err(PathError::NotFound) => match files::lookup(&self.site, path, now) {
                    Ok(Found::Dir(dir)) if settings.autoindex => generated(out, &|out| {
                        listing(
                            &dir,
                            &String::from_utf8_lossy(path),
                            (settings.serve_hidden, settings.follow_symlinks),
                            out,
                            p,
                            head_only,
                        )
                    }),
                    Ok(Found::Dir(_)) => error(out, 403),
                    Ok(Found::File(_)) => error(out, 404),
                    Err(e) => {
                        e.log_if_ours(path);
                        error(out, e.status())
                    }
                },
                Err(e) => {
                    e.log_if_ours(&index);
                    error(out, e.status())
                }
            };
        }
        match files::lookup(&self.site, path, now) {
            Ok(Found::File(entry)) => self.serve_file(head, &entry, out, p),
            Ok(Found::Dir(_)) => {
                // "/docs" names a directory: its pages' relative links need "/docs/".
                // The path was decoded to find the file: encode it again, or a name like
                // "a?b" or "my dir" would come back as a query or a broken header.
                push_status(out, 301);
                let mut location = String::with_capacity(path.len() + 8);
                push_percent_encoded(&mut location, path, true);
                location.push('/');
                // The query goes along as sent (still encoded), as nginx keeps it, without a
                // fragment (which a client must not send). A byte a URI's query cannot hold
                // (RFC 3986 3.4: a space, '"', '<', '{', bytes past ASCII) is encoded, or the
                // Location would not be a URI.
                if let Some(q) = head.target.iter().position(|&b| b == b'?') {
                    let query = &head.target[q..];
                    let end = query.iter().position(|&b| b == b'#').unwrap_or(query.len());
                    let query = &query[..end];
                    for (i, &b) in query.iter().enumerate() {
                        let escape = b == b'%'
                            && query
                                .get(i + 1..i + 3)
                                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                        if (is_query_char(b) && b != b'%') || escape {
                            location.push(char::from(b));
                        } else {
                            push_percent_encoded(&mut location, &[b], false);
                        }
                    }
                }
                push_header(out, b"Location", location.as_bytes());
                push_content_length(out, 0);
                push_end(out, p);
                (301, 0, None)
            }
            Err(e) => {
                e.log_if_ours(path);
                error(out, e.status())
            }
        }
    }

    fn serve_file(
        &mut self,
        head: &Head<'_>,
        entry: &Entry,
        out: &mut Vec<u8>,
        p: Persistence,
    ) -> (u16, u64, Option<FileRange>) {
        let head_only = head.method == Method::Head;
        // gzip_static: the precompressed sibling, when the client takes gzip.
        let (e, gzip) = match (&entry.gzip, head.accept_gzip) {
            (Some(g), true) => (&**g, true),
            _ => (entry, false),
        };
        let vary = entry.gzip.is_some();
        // A file with no modification date to offer (dated in the future or before 1970) has the date
        // conditions ignored (RFC 9110 13.1.3, 13.1.4).
        let mtime = e.mtime.unwrap_or(i64::MIN);
        if head.is_conditional()
            && !conditional::precondition_holds(
                head.if_match(),
                e.mtime.and(head.if_unmodified_since),
                &e.etag,
                mtime,
            )
        {
            return (412, push_error(out, 412, p, head_only), None);
        }
        if head.is_conditional()
            && conditional::evaluate(
                head.if_none_match(),
                e.mtime.and(head.if_modified_since),
                &e.etag,
                mtime,
            ) == Condition::NotModified
        {
            push_status(out, 304);
            push_header(out, b"ETag", e.etag.as_bytes());
            if let Some(lm) = &e.last_modified {
                push_header(out, b"Last-Modified", lm.as_bytes());
            }
            if vary {
                out.extend_from_slice(b"Vary: Accept-Encoding\r\n");
            }
            push_end(out, p);
            return (304, 0, None);
        }
        let mut range = None;
        // GET is the only method range handling is defined for: a HEAD's Range is ignored
        // (RFC 9110 14.2, a MUST), so it sees the headers a whole GET would.
        if let Some(r) = head.range.filter(|_| head.method == Method::Get) {
            let applies = head
                .if_range
                .is_none_or(|ir| conditional::if_range_allows(ir, &e.etag));
            if applies {
                match parse_range(r, e.size) {
                    RangeOutcome::Full => {}
                    RangeOutcome::Partial { start, end } => range = Some((start, end)),
                    RangeOutcome::Unsatisfiable => {
                        push_status(out, 416);
                        let mut v = b"bytes */".to_vec();
                        push_u64(&mut v, e.size);
                        push_header(out, b"Content-Range", &v);
                        if vary {
                            // The size above is the encoding's the client chose.
                            out.extend_from_slice(b"Vary: Accept-Encoding\r\n");
                        }
                        push_content_length(out, 0);
                        push_end(out, p);
                        return (416, 0, None);
                    }
                }
            }
        }
        let (status, offset, len) = match range {
            Some((start, end)) => (206, start, end - start + 1),
            None => (200, 0, e.size),
        };
        if status == 200 && !gzip {
            // The common case: the head was encoded when the file was cached, and for a small
            // file kept in memory, a keep-alive 1.1 GET is one copy of the whole response,
            // Date line included.
            if let (Persistence::KeepAlive11, false, Some(stamp)) =
                (p, head_only, date::batch_stamp())
            {
                if let Some(whole) = e.whole_200(stamp) {
                    out.extend_from_slice(&whole);
                    return (status, len, None);
                }
            }
            push_status(out, 200);
            out.extend_from_slice(&e.head_200());
        } else {
            push_status(out, status);
            push_header(out, b"Content-Type", entry.content_type.as_bytes());
            push_content_length(out, len);
            if let Some(lm) = &e.last_modified {
                push_header(out, b"Last-Modified", lm.as_bytes());
            }
            push_header(out, b"ETag", e.etag.as_bytes());
            out.extend_from_slice(b"Accept-Ranges: bytes\r\n");
            if gzip {
                out.extend_from_slice(b"Content-Encoding: gzip\r\n");
            }
            if vary {
                out.extend_from_slice(b"Vary: Accept-Encoding\r\n");
            }
            if status == 206 {
                let mut v = b"bytes ".to_vec();
                push_u64(&mut v, offset);
                v.push(b'-');
                push_u64(&mut v, offset + len - 1);
                v.push(b'/');
                push_u64(&mut v, e.size);
                push_header(out, b"Content-Range", &v);
            }
        }
        push_end(out, p);
        if head_only || len == 0 {
            return (status, 0, None);
        }
        if let Some(file) = e.disk() {
            let range = FileRange::checked(file.clone(), offset, len, e.version()).with_pages(
                if offset == 0 {
                    e.pages(&self.site)
                } else {
                    None
                },
            );
            return (status, len, Some(range));
        }
        if let Some(body) = e.body() {
            out.extend_from_slice(&body[offset as usize..(offset + len) as usize]);
        }
        (status, len, None)
    }
}

/// What a URI's query may hold as it is (RFC 3986 3.4): unreserved and sub-delims characters,
/// ':', '@', '/', '?', and '%' where it starts an escape (the caller checks the two digits).
fn is_query_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

fn with_no_file((status, bytes): (u16, u64)) -> (u16, u64, Option<FileRange>) {
    (status, bytes, None)
}

impl Handler for HttpConn {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        cx.set_idle_timeout(Some(self.site.settings.keepalive_timeout));
        // The first head is due within the header timeout counted from the accept, as nginx's
        // client_header_timeout: a connection that never speaks is not kept for the far longer
        // keep-alive timeout (the cheapest slowloris of all).
        self.head_timer = true;
        cx.set_timer(self.site.settings.header_timeout, TAG_HEAD);
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        self.heard = true;
        // One clock reading for the whole batch (Date lines, cache freshness): the loop's own,
        // taken when it woke up.
        let now = cx.now();
        date::set_batch_time(Some(now));
        OUT.with(|cell| {
            // Re-entrance cannot happen (a loop never calls a handler from inside another),
            // but a missing buffer must not panic: use a fresh one then.
            let mut out = cell
                .try_borrow_mut()
                .map(|mut o| std::mem::take(&mut *o))
                .unwrap_or_default();
            self.release_log(cx, false);
            self.process(cx, input, &mut out, now);
            self.flush(cx, &mut out);
            self.release_log(cx, false);
            if let Ok(mut o) = cell.try_borrow_mut() {
                if out.capacity() <= 1 << 20 {
                    *o = out;
                }
            }
        });
        date::set_batch_time(None);
    }

    fn on_drained(&mut self, cx: &mut Ctx<'_>) {
        self.release_log(cx, false);
        if self.stalled {
            self.stalled = false;
            cx.resume_read(); // offers the unanswered requests again
        }
    }

    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        // The client sent everything it will: answer what was complete (already done as it
        // arrived), then close. A half-sent request can never be completed.
        cx.close();
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, tag: u64) {
        if self.closed {
            return;
        }
        let status = match (tag, &self.state) {
            (TAG_HEAD, State::Head) if !self.heard => {
                // Not a byte since the accept: there is no request to answer, so close
                // quietly, as nginx does. (A 408 could reach a browser's pre-opened socket
                // and be taken for the answer to the request it sends next.)
                cx.note(Note::HeaderTimeout);
                self.head_timer = false;
                self.closed = true;
                cx.close();
                return;
            }
            (TAG_HEAD, State::Head) => {
                cx.note(Note::HeaderTimeout);
                408
            }
            (TAG_BODY, State::Body(..)) => {
                cx.note(Note::BodyTimeout);
                408
            }
            _ => return,
        };
        self.head_timer = false;
        let mut out = Vec::new();
        let mut nothing = Buffer::new();
        self.fail(cx, &mut out, status, &mut nothing, false);
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: CloseReason) {
        self.release_log(cx, true);
    }
}

/// The built-in page `keel http` serves without a root.
const WELCOME: &str = include_str!("welcome.html");

fn welcome(out: &mut Vec<u8>, p: Persistence, head_only: bool) -> (u16, u64) {
    html_page(out, WELCOME.as_bytes(), p, head_only)
}

/// A 200 with an HTML body built here (the welcome page, a directory listing).
fn html_page(out: &mut Vec<u8>, page: &[u8], p: Persistence, head_only: bool) -> (u16, u64) {
    push_status(out, 200);
    out.extend_from_slice(b"Content-Type: text/html; charset=utf-8\r\n");
    push_content_length(out, page.len() as u64);
    push_end(out, p);
    if head_only {
        return (200, 0);
    }
    out.extend_from_slice(page);
    (200, page.len() as u64)
}

fn listing(
    dir: &std::os::fd::OwnedFd,
    path: &str,
    (show_hidden, show_symlinks): (bool, bool),
    out: &mut Vec<u8>,
    p: Persistence,
    head_only: bool,
) -> (u16, u64) {
    use std::os::fd::AsFd;
    let entries = match autoindex::read_entries(dir.as_fd(), show_hidden, show_symlinks) {
        Ok(e) => e,
        Err(e) => {
            // As for a file: out of fds or memory is 503, a failing disk 500.
            let e = path::io_error(&e);
            e.log_if_ours(path.as_bytes());
            return (e.status(), push_error(out, e.status(), p, head_only));
        }
    };
    html_page(
        out,
        autoindex::render(path, &entries.entries, entries.complete).as_bytes(),
        p,
        head_only,
    )
}

/// Whether a refused head is a HEAD request's: its request line starts `HEAD ` (after the
/// empty lines RFC 9112 2.2 lets a server skip), whatever else is wrong with it.
fn is_head_request(input: &[u8]) -> bool {
    let start = input
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(input.len());
    input[start..].starts_with(b"HEAD ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_again_only_when_it_could_have_ended_or_hit_a_limit() {
        let limits = Limits::default();
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: aaaa";
        let seen = head.len() - 3;
        // New bytes without a line feed: the head cannot have ended.
        assert!(!worth_reparsing(head, seen, &limits));
        // A line feed or carriage return among the new bytes (any of them).
        for tail in [&b"\r\n"[..], b"\n", b"a\nb", b"\r", b"a\rb"] {
            let more = [&head[..], tail].concat();
            assert!(worth_reparsing(&more, head.len(), &limits), "{tail:?}");
        }
        // A line feed only among the bytes already read does not count.
        assert!(!worth_reparsing(b"GET / HTTP/1.1\r\nHo", 17, &limits));
        // Past a length limit the parse must answer (431 or 414), line feed or not.
        let long = vec![b'a'; limits.max_head.min(limits.max_uri) + 1];
        assert!(worth_reparsing(&long, long.len() - 1, &limits));
        let tight = Limits {
            max_uri: 16,
            ..Limits::default()
        };
        assert!(worth_reparsing(b"GET /aaaaaaaaaaaaaaaaaaaa", 20, &tight));
        // Input that shrank (it never does while a head is pending) is simply read again.
        assert!(worth_reparsing(b"GET", 10, &limits));
    }
}

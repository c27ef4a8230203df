//! The admin listener (`--admin ADDR`): `/metrics` for Prometheus (text exposition format
//! 0.0.4) and `/status`, the same figures as an HTML page for people.
//!
//! It is kept apart from the servers' own listeners so that scraping works whatever the
//! server speaks (echo, a proxy), and so that it can be bound to loopback or a management
//! network only. One request per connection, `Connection: close`: scrapers open a connection
//! per scrape anyway, and it keeps the handler small enough to trust with any input.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::net::{Buffer, CloseReason, Ctx, Handler};
use crate::reactor::{Engine, LoopStats};

/// Everything the pages show, gathered by the server when a page is asked for.
#[derive(Clone, Debug, Default)]
pub struct MetricsView {
    /// The server program: "http", "echo"...
    pub server: String,
    /// The concurrency model: "multi-reactor"...
    pub model: String,
    pub pid: u32,
    pub uptime_secs: f64,
    /// Sum over every loop (threads or processes); `None` renders zeros.
    pub total: Option<LoopStats>,
    /// Per loop, for the labelled wakeup and event series (`loop="0"`..).
    pub loops: Vec<LoopStats>,
    /// The loops come and go with the connections (thread- and process-per-connection): the
    /// page lists the live ones, but /metrics has no per-loop series, whose `loop` label would
    /// name another loop from one scrape to the next (a counter that jumps down and up).
    pub loops_per_connection: bool,
    /// HTTP responses by status class 1xx..5xx (zeros for servers that are not HTTP).
    pub requests_by_class: [u64; 5],
    /// Timeouts by kind beyond the loops' own idle and linger ones, e.g.
    /// `("request_head", n)`.
    pub timeouts: Vec<(&'static str, u64)>,
    pub log_dropped: u64,
}

impl MetricsView {
    fn total_or_zero(&self) -> LoopStats {
        self.total
            .clone()
            .unwrap_or_else(|| LoopStats::new(Engine::default()))
    }

    /// Timeouts by kind, idle and linger (from the loops) first. A kind given again in
    /// `timeouts` is added to the same series: each source counts its own events, and a
    /// family must not hold two samples with the same labels.
    fn timeouts_by_kind(&self, total: &LoopStats) -> Vec<(&'static str, u64)> {
        let mut kinds = vec![
            ("idle", total.idle_timeouts),
            ("linger", total.linger_timeouts),
        ];
        for &(kind, n) in &self.timeouts {
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, v)) => *v += n,
                None => kinds.push((kind, n)),
            }
        }
        kinds
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Label values may hold anything; the format reserves backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The format spells infinities and NaN its own way (Go's, not Rust's).
fn prom_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Writes families one at a time so that HELP and TYPE always precede their samples.
struct Prom {
    out: String,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], &value.to_string());
    }
}

/// The Prometheus text exposition format 0.0.4.
pub fn render_prometheus(v: &MetricsView) -> String {
    let t = v.total_or_zero();
    let mut p = Prom {
        out: String::with_capacity(4096),
    };

    p.family(
        "keel_info",
        "gauge",
        "Server program, concurrency model and keel version.",
    );
    p.sample(
        "keel_info",
        &[
            ("server", &v.server),
            ("model", &v.model),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        "1",
    );
    p.family(
        "keel_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    p.sample("keel_uptime_seconds", &[], &prom_f64(v.uptime_secs));

    p.single(
        "keel_connections_open",
        "gauge",
        "Connections open now (incoming and outgoing).",
        t.open,
    );
    p.single(
        "keel_connections_accepted_total",
        "counter",
        "Connections accepted.",
        t.accepted,
    );
    p.single(
        "keel_connections_closed_total",
        "counter",
        "Connections closed, accepted and outgoing (keel_connects_total).",
        t.closed,
    );
    p.single(
        "keel_connects_total",
        "counter",
        "Outgoing connections started (the proxy's, to its backends).",
        t.connects,
    );
    p.family(
        "keel_connections_refused_total",
        "counter",
        "Connections refused: out of fds (emfile), at the connection limit (limit), or because \
         the thread or process to serve them could not start (spawn).",
    );
    for (reason, n) in [
        ("emfile", t.refused_emfile),
        ("limit", t.refused_limit),
        ("spawn", t.refused_spawn),
    ] {
        p.sample(
            "keel_connections_refused_total",
            &[("reason", reason)],
            &n.to_string(),
        );
    }
    p.single(
        "keel_bytes_received_total",
        "counter",
        "Bytes read from sockets.",
        t.bytes_in,
    );
    p.single(
        "keel_bytes_sent_total",
        "counter",
        "Bytes written to sockets.",
        t.bytes_out,
    );
    p.family(
        "keel_http_responses_total",
        "counter",
        "HTTP responses by status class.",
    );
    for (class, n) in CLASSES.iter().zip(v.requests_by_class) {
        p.sample(
            "keel_http_responses_total",
            &[("class", class)],
            &n.to_string(),
        );
    }
    p.family(
        "keel_timeouts_total",
        "counter",
        "Connections timed out, by kind of timeout.",
    );
    for (kind, n) in v.timeouts_by_kind(&t) {
        p.sample("keel_timeouts_total", &[("kind", kind)], &n.to_string());
    }
    p.single(
        "keel_emfile_events_total",
        "counter",
        "Accepts that failed with EMFILE or ENFILE (the process or system ran out of fds).",
        t.refused_emfile,
    );
    if !v.loops_per_connection {
        p.family(
            "keel_loop_wakeups_total",
            "counter",
            "Returns from the poller's wait, per event loop.",
        );
        for (i, l) in v.loops.iter().enumerate() {
            let i = i.to_string();
            p.sample(
                "keel_loop_wakeups_total",
                &[("loop", &i)],
                &l.wakeups.to_string(),
            );
        }
        p.family(
            "keel_loop_events_total",
            "counter",
            "Readiness events handled, per event loop.",
        );
        for (i, l) in v.loops.iter().enumerate() {
            let i = i.to_string();
            p.sample(
                "keel_loop_events_total",
                &[("loop", &i)],
                &l.events.to_string(),
            );
        }
    }
    p.single(
        "keel_connect_failures_total",
        "counter",
        "Outgoing connections that failed to connect.",
        t.connect_failures,
    );
    p.single(
        "keel_datagrams_total",
        "counter",
        "UDP datagrams handled.",
        t.datagrams,
    );
    p.single(
        "keel_log_dropped_lines_total",
        "counter",
        "Log lines dropped because a log writer's queue was full.",
        v.log_dropped,
    );
    p.out
}

/// Everything a page shows comes from the process's own data, but server names and kinds
/// are still strings: escape them rather than trust them.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    crate::http::autoindex::push_html(&mut out, s);
    out
}

/// "3d 4h 5m 6s": what a person reads at a glance; the exact seconds are on /metrics.
fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// Binary units with the exact count beside it, so nothing is lost by rounding.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {} ({n} B)", UNITS[unit])
}

fn table(out: &mut String, title: &str, rows: &[(String, String)]) {
    let _ = write!(out, "<h2>{}</h2>\n<table>\n", html_escape(title));
    for (k, v) in rows {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            html_escape(k),
            html_escape(v)
        );
    }
    out.push_str("</table>\n");
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.1em;margin-top:1.5em}\
p.sub{color:#666;margin-top:0}\
table{border-collapse:collapse;min-width:22em;background:#fff}\
th,td{border:1px solid #ddd;padding:.3em .7em;text-align:left}\
td{text-align:right;font-variant-numeric:tabular-nums}\
thead th{background:#eee}";

/// The status page: the same figures as `/metrics`, in tables, reloading itself every
/// `refresh_secs` (0: never). Self-contained (inline CSS, no script, nothing fetched), so
/// it works on an isolated management network.
pub fn render_status_html(v: &MetricsView, refresh_secs: u32) -> String {
    let t = v.total_or_zero();
    let mut out = String::with_capacity(8192);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    if refresh_secs > 0 {
        let _ = writeln!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{refresh_secs}\">"
        );
    }
    let _ = write!(
        out,
        "<title>keel {} status</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        html_escape(&v.server)
    );
    let _ = writeln!(
        out,
        "<h1>keel {} — {}</h1>\n<p class=\"sub\">pid {} · up {} · keel {}</p>",
        html_escape(&v.server),
        html_escape(&v.model),
        v.pid,
        html_escape(&human_duration(v.uptime_secs)),
        env!("CARGO_PKG_VERSION"),
    );

    let n = |x: u64| x.to_string();
    table(
        &mut out,
        "Connections",
        &[
            ("open".into(), n(t.open)),
            ("accepted".into(), n(t.accepted)),
            ("outgoing started".into(), n(t.connects)),
            ("closed".into(), n(t.closed)),
            ("refused (out of fds)".into(), n(t.refused_emfile)),
            ("refused (limit)".into(), n(t.refused_limit)),
            ("refused (could not start)".into(), n(t.refused_spawn)),
            ("connect failures".into(), n(t.connect_failures)),
        ],
    );
    table(
        &mut out,
        "Traffic",
        &[
            ("received".into(), human_bytes(t.bytes_in)),
            ("sent".into(), human_bytes(t.bytes_out)),
            ("datagrams".into(), n(t.datagrams)),
        ],
    );
    let classes: Vec<(String, String)> = CLASSES
        .iter()
        .zip(v.requests_by_class)
        .map(|(c, x)| (c.to_string(), n(x)))
        .collect();
    table(&mut out, "HTTP responses", &classes);
    let timeouts: Vec<(String, String)> = v
        .timeouts_by_kind(&t)
        .into_iter()
        .map(|(k, x)| (k.to_string(), n(x)))
        .collect();
    table(&mut out, "Timeouts", &timeouts);

    out.push_str(
        "<h2>Event loops</h2>\n<table>\n<thead><tr><th>loop</th><th>engine</th>\
<th>wakeups</th><th>events</th><th>accepted</th><th>open</th><th>closed</th>\
<th>received</th><th>sent</th></tr></thead>\n",
    );
    for (i, l) in v.loops.iter().enumerate() {
        let _ = writeln!(
            out,
            "<tr><th>{i}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td></tr>",
            html_escape(&l.engine.to_string()),
            l.wakeups,
            l.events,
            l.accepted,
            l.open,
            l.closed,
            l.bytes_in,
            l.bytes_out
        );
    }
    out.push_str("</table>\n");
    table(
        &mut out,
        "Logging",
        &[("dropped lines".into(), n(v.log_dropped))],
    );
    out.push_str("</body>\n</html>\n");
    out
}

/// A request head larger than this is refused: nothing the admin pages take needs more, and
/// it bounds what one connection can make us buffer.
const MAX_HEAD: usize = 8192;

/// A client that connects and sends nothing, or trickles a head, is cut off after this. A
/// scraper or a browser sends its request as soon as it has connected.
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);

/// Admin connections open at once, at most (the next one gets a 503 and is closed). They are
/// outside `--max-conns`, so that the figures answer with the site full; this bound keeps
/// the reverse from happening: idle admin connections cannot take the fds the site needs.
pub const MAX_OPEN: usize = 64;
const HEAD_TIMER: u64 = 1;

const DEFAULT_REFRESH_SECS: u32 = 5;

/// Gathers the figures when a page is asked for. It is given the counters of the loop that
/// serves the admin connection, when the handler runs on a loop thread (a model whose only
/// loop is the one serving the page, half-sync's reactor, has no other way to read them).
pub type MetricsSource = Arc<dyn Fn(Option<&LoopStats>) -> MetricsView + Send + Sync>;

/// One admin connection: one request, one response, close.
pub struct AdminHandler {
    source: MetricsSource,
    refresh_secs: u32,
    answered: bool,
    /// The count of open admin connections this one is part of, while it is.
    open: Option<Arc<AtomicUsize>>,
}

impl AdminHandler {
    /// `source` gathers the figures when a page is asked for (it runs on the admin loop's
    /// thread, once per request).
    pub fn new(source: MetricsSource) -> AdminHandler {
        AdminHandler {
            source,
            refresh_secs: DEFAULT_REFRESH_SECS,
            answered: false,
            open: None,
        }
    }

    /// Counts this connection in `open`, shared by every admin connection of the listener,
    /// until it is answered, and refuses it when [`MAX_OPEN`] are already open.
    pub fn counted_in(mut self, open: Arc<AtomicUsize>) -> AdminHandler {
        self.open = Some(open);
        self
    }

    /// How often `/status` reloads itself (0: never); 5 s by default.
    pub fn with_refresh_secs(mut self, secs: u32) -> AdminHandler {
        self.refresh_secs = secs;
        self
    }

    fn respond(&mut self, cx: &mut Ctx<'_>, r: Response) {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            r.status,
            r.content_type,
            r.body.len()
        );
        for (k, v) in &r.extra {
            let _ = write!(head, "{k}: {v}\r\n");
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        if !r.head_only {
            msg.extend_from_slice(&r.body);
        }
        cx.write(&msg);
        cx.cancel_timer(HEAD_TIMER);
        cx.close();
        self.answered = true;
        // Answered, it holds no slot while it closes: a client that keeps its end open after
        // the answer would otherwise hold one through the whole linger.
        if let Some(open) = self.open.take() {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn route(&self, method: &str, path: &str, own: Option<&LoopStats>) -> Response {
        let head_only = method == "HEAD";
        let path = path.split(['?', '#']).next().unwrap_or("");
        let known = matches!(path, "/" | "/metrics" | "/status");
        if known && !matches!(method, "GET" | "HEAD") {
            let mut r = Response::text("405 Method Not Allowed", "method not allowed\n");
            r.extra.push(("Allow", "GET, HEAD".into()));
            return r;
        }
        let mut r = match path {
            "/metrics" => Response {
                status: "200 OK",
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: render_prometheus(&(self.source)(own)).into_bytes(),
                extra: Vec::new(),
                head_only: false,
            },
            "/status" => Response {
                status: "200 OK",
                content_type: "text/html; charset=utf-8",
                body: render_status_html(&(self.source)(own), self.refresh_secs).into_bytes(),
                extra: Vec::new(),
                head_only: false,
            },
            "/" => {
                let mut r = Response::text("302 Found", "see /status\n");
                r.extra.push(("Location", "/status".into()));
                r
            }
            _ => Response::text("404 Not Found", "not found: try /metrics or /status\n"),
        };
        r.head_only = head_only;
        r
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
    head_only: bool,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            extra: Vec::new(),
            head_only: false,
        }
    }
}

enum Parsed {
    Partial,
    Request { method: String, path: String },
    Bad,
    TooLarge,
}

fn parse_head(data: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => Parsed::TooLarge,
        Ok(httparse::Status::Complete(_)) => match (req.method, req.path) {
            (Some(m), Some(p)) => Parsed::Request {
                method: m.to_string(),
                path: p.to_string(),
            },
            _ => Parsed::Bad,
        },
        Ok(httparse::Status::Partial) if data.len() > MAX_HEAD => Parsed::TooLarge,
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::TooLarge,
        Err(_) => Parsed::Bad,
    }
}

impl Handler for AdminHandler {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        if let Some(open) = &self.open {
            if open.fetch_add(1, Ordering::AcqRel) >= MAX_OPEN {
                open.fetch_sub(1, Ordering::AcqRel);
                self.open = None;
                let body = "too many admin connections\n";
                self.respond(cx, Response::text("503 Service Unavailable", body));
                return;
            }
        }
        cx.set_timer(HEAD_TIMEOUT, HEAD_TIMER);
    }

    fn on_close(&mut self, _cx: &mut Ctx<'_>, _reason: CloseReason) {
        if let Some(open) = self.open.take() {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        if self.answered {
            // A pipelined second request gets nothing: we said Connection: close.
            input.clear();
            return;
        }
        let parsed = parse_head(input.as_slice());
        match parsed {
            Parsed::Partial => {}
            Parsed::Request { method, path } => {
                input.clear();
                let own = cx.event_loop().map(|el| el.stats().clone());
                let r = self.route(&method, &path, own.as_ref());
                self.respond(cx, r);
            }
            Parsed::Bad => {
                input.clear();
                self.respond(cx, Response::text("400 Bad Request", "bad request\n"));
            }
            Parsed::TooLarge => {
                input.clear();
                self.respond(
                    cx,
                    Response::text(
                        "431 Request Header Fields Too Large",
                        "request head too large\n",
                    ),
                );
            }
        }
    }

    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        if self.answered {
            cx.shutdown_write();
        } else {
            // The head will never be completed.
            self.respond(
                cx,
                Response::text("400 Bad Request", "incomplete request\n"),
            );
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, tag: u64) {
        if tag == HEAD_TIMER && !self.answered {
            self.respond(
                cx,
                Response::text("408 Request Timeout", "request timeout\n"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    use crate::reactor::{EventLoop, LoopConfig};

    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn valid_name(s: &str, colons: bool) -> bool {
        let mut chars = s.chars();
        let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
        match chars.next() {
            Some(c) if ok_first(c) => {}
            _ => return false,
        }
        chars.all(|c| ok_first(c) || c.is_ascii_digit())
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => s.parse::<f64>().map_err(|e| format!("value {s:?}: {e}")),
        }
    }

    type Labels = Vec<(String, String)>;

    /// `{a="x",b="y\"z"}` -> pairs, and what follows the closing brace.
    fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
        let mut labels = Vec::new();
        let mut rest = s.strip_prefix('{').ok_or("no {")?;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                return Ok((labels, r));
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let name = &rest[..eq];
            if !valid_name(name, false) {
                return Err(format!("label name {name:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, '\n')) => return Err("raw newline in label value".into()),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.iter().any(|(n, _): &(String, String)| n == name) {
                return Err(format!("label {name} twice"));
            }
            labels.push((name.to_string(), value));
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("expected , or }".into());
            }
        }
    }

    /// A strict reader of the text format: every sample's family has a TYPE given before it,
    /// HELP and TYPE once per family, a family's samples together, no sample twice.
    fn parse_prometheus(text: &str) -> Result<(HashMap<String, String>, Vec<Sample>), String> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut samples: Vec<Sample> = Vec::new();
        let mut finished: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut seen: HashSet<(String, Labels)> = HashSet::new();
        if !text.ends_with('\n') {
            return Err("no final newline".into());
        }
        for (no, line) in text.lines().enumerate() {
            let err = |m: String| format!("line {}: {m}: {line:?}", no + 1);
            if line.is_empty() {
                continue;
            }
            let mut switch_to = |fam: &str, current: &mut Option<String>| -> Result<(), String> {
                if current.as_deref() != Some(fam) {
                    if let Some(c) = current.take() {
                        finished.insert(c);
                    }
                    if finished.contains(fam) {
                        return Err(format!("family {fam} split or repeated"));
                    }
                    *current = Some(fam.to_string());
                }
                Ok(())
            };
            if let Some(c) = line.strip_prefix('#') {
                let mut parts = c.trim_start().splitn(3, ' ');
                match parts.next() {
                    Some("HELP") => {
                        let name = parts
                            .next()
                            .ok_or_else(|| err("HELP without name".into()))?;
                        switch_to(name, &mut current).map_err(err)?;
                        if !helps.insert(name.into()) {
                            return Err(err("HELP twice".into()));
                        }
                    }
                    Some("TYPE") => {
                        let name = parts
                            .next()
                            .ok_or_else(|| err("TYPE without name".into()))?;
                        let kind = parts
                            .next()
                            .ok_or_else(|| err("TYPE without type".into()))?;
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(err(format!("type {kind}")));
                        }
                        switch_to(name, &mut current).map_err(err)?;
                        if types.insert(name.into(), kind.into()).is_some() {
                            return Err(err("TYPE twice".into()));
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            if !valid_name(name, true) {
                return Err(err(format!("metric name {name:?}")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(err)?
            } else {
                (Vec::new(), &line[name_end..])
            };
            let mut fields = rest
                .strip_prefix(' ')
                .ok_or_else(|| err("no space before value".into()))?
                .split(' ');
            let value = parse_value(fields.next().unwrap_or("")).map_err(err)?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>()
                    .map_err(|e| err(format!("timestamp: {e}")))?;
            }
            if fields.next().is_some() {
                return Err(err("trailing fields".into()));
            }
            if !types.contains_key(name) {
                return Err(err(format!("sample of {name} before its TYPE")));
            }
            switch_to(name, &mut current).map_err(err)?;
            let mut key_labels = labels.clone();
            key_labels.sort();
            if !seen.insert((name.to_string(), key_labels)) {
                return Err(err("sample twice".into()));
            }
            samples.push(Sample {
                name: name.into(),
                labels,
                value,
            });
        }
        Ok((types, samples))
    }

    fn stats(seed: u64) -> LoopStats {
        let c: [u64; crate::reactor::stats::COUNTERS] =
            std::array::from_fn(|i| seed * 100 + i as u64 + 1);
        LoopStats::from_counters(Engine::EpollEt, c)
    }

    fn known_view() -> MetricsView {
        let loops = vec![stats(1), stats(2), stats(3)];
        let mut total = stats(0);
        total.bytes_in = 5_000_000_000;
        for l in &loops {
            total.add(l);
        }
        MetricsView {
            server: "ht\"tp\\x\nq <b>".into(),
            model: "multi-reactor".into(),
            pid: 4242,
            uptime_secs: 3723.5,
            total: Some(total),
            loops,
            requests_by_class: [11, 22000, 33, 44, 55],
            timeouts: vec![("request_head", 7), ("request_body", 8), ("idle", 1000)],
            log_dropped: 99,
            loops_per_connection: false,
        }
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in {samples:#?}");
        found[0].value
    }

    #[test]
    fn prometheus_output_parses_and_holds_the_numbers() {
        let v = known_view();
        let t = v.total.clone().unwrap();
        let text = render_prometheus(&v);
        let (types, samples) = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        for (name, kind) in &types {
            assert!(name.starts_with("keel_"), "{name}");
            assert_eq!(
                name.ends_with("_total"),
                kind == "counter",
                "{name} is a {kind}"
            );
        }
        let f = |x: u64| x as f64;
        assert_eq!(
            value(
                &samples,
                "keel_info",
                &[
                    ("server", "ht\"tp\\x\nq <b>"),
                    ("model", "multi-reactor"),
                    ("version", env!("CARGO_PKG_VERSION"))
                ]
            ),
            1.0
        );
        assert_eq!(value(&samples, "keel_uptime_seconds", &[]), 3723.5);
        assert_eq!(value(&samples, "keel_connections_open", &[]), f(t.open));
        assert_eq!(
            value(&samples, "keel_connections_accepted_total", &[]),
            f(t.accepted)
        );
        assert_eq!(
            value(&samples, "keel_connections_closed_total", &[]),
            f(t.closed)
        );
        assert_eq!(value(&samples, "keel_connects_total", &[]), f(t.connects));
        assert_eq!(
            value(
                &samples,
                "keel_connections_refused_total",
                &[("reason", "emfile")]
            ),
            f(t.refused_emfile)
        );
        assert_eq!(
            value(
                &samples,
                "keel_connections_refused_total",
                &[("reason", "limit")]
            ),
            f(t.refused_limit)
        );
        assert_eq!(
            value(
                &samples,
                "keel_connections_refused_total",
                &[("reason", "spawn")]
            ),
            f(t.refused_spawn)
        );
        assert_eq!(
            value(&samples, "keel_bytes_received_total", &[]),
            f(t.bytes_in)
        );
        assert_eq!(
            value(&samples, "keel_bytes_sent_total", &[]),
            f(t.bytes_out)
        );
        for (class, n) in CLASSES.iter().zip([11, 22000, 33, 44, 55]) {
            assert_eq!(
                value(&samples, "keel_http_responses_total", &[("class", class)]),
                n as f64
            );
        }
        assert_eq!(
            value(&samples, "keel_timeouts_total", &[("kind", "idle")]),
            f(t.idle_timeouts + 1000)
        );
        assert_eq!(
            value(&samples, "keel_timeouts_total", &[("kind", "linger")]),
            f(t.linger_timeouts)
        );
        assert_eq!(
            value(&samples, "keel_timeouts_total", &[("kind", "request_head")]),
            7.0
        );
        assert_eq!(
            value(&samples, "keel_timeouts_total", &[("kind", "request_body")]),
            8.0
        );
        assert_eq!(
            value(&samples, "keel_emfile_events_total", &[]),
            f(t.refused_emfile)
        );
        for (i, l) in v.loops.iter().enumerate() {
            let i = i.to_string();
            assert_eq!(
                value(&samples, "keel_loop_wakeups_total", &[("loop", &i)]),
                f(l.wakeups)
            );
            assert_eq!(
                value(&samples, "keel_loop_events_total", &[("loop", &i)]),
                f(l.events)
            );
        }
        assert_eq!(
            value(&samples, "keel_connect_failures_total", &[]),
            f(t.connect_failures)
        );
        assert_eq!(value(&samples, "keel_datagrams_total", &[]), f(t.datagrams));
        assert_eq!(value(&samples, "keel_log_dropped_lines_total", &[]), 99.0);
        // Exactly these series: 1 info + 1 uptime + 4 conns (open, accepted, closed,
        // connects) + 3 refused + 2 bytes + 5 classes + 4 timeouts + 1 emfile + 3 wakeups + 3
        // events + 3 (connect failures, datagrams, log).
        assert_eq!(samples.len(), 30, "{text}");
    }

    #[test]
    fn empty_view_renders_zeros() {
        let text = render_prometheus(&MetricsView::default());
        let (_, samples) = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for s in &samples {
            let expect = if s.name == "keel_info" { 1.0 } else { 0.0 };
            assert_eq!(s.value, expect, "{s:?}");
        }
        assert!(samples.iter().all(|s| !s.name.starts_with("keel_loop_")));
        assert_eq!(
            value(&samples, "keel_timeouts_total", &[("kind", "idle")]),
            0.0
        );
        assert_eq!(
            value(&samples, "keel_timeouts_total", &[("kind", "linger")]),
            0.0
        );
    }

    #[test]
    fn the_test_parser_rejects_what_it_should() {
        let bad = [
            "keel_x 1\n",                                               // no TYPE
            "# TYPE keel_x counter\nkeel_x{a=\"1} 1\n",                 // unterminated
            "# TYPE keel_x counter\nkeel_x{a=1} 1\n",                   // unquoted
            "# TYPE keel_x counter\nkeel_x one\n",                      // not a number
            "# TYPE keel_x counter\n# TYPE keel_x counter\n",           // TYPE twice
            "# TYPE keel_x counter\nkeel_x 1\nkeel_x 2\n",              // same sample twice
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"y\"} 1\n", // split family
        ];
        for b in bad {
            assert!(parse_prometheus(b).is_err(), "accepted {b:?}");
        }
        assert!(parse_prometheus("# TYPE a gauge\na{x=\"q\\\"\\\\\\n\"} +Inf 123\n").is_ok());
    }

    #[test]
    fn loops_that_come_and_go_with_connections_have_no_series_of_their_own() {
        let mut v = known_view();
        assert!(render_prometheus(&v).contains("keel_loop_wakeups_total{loop=\"2\"}"));
        v.loops_per_connection = true;
        let text = render_prometheus(&v);
        parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(!text.contains("keel_loop_"), "{text}");
        // The totals stay, and the page still lists the live loops.
        assert!(text.contains("keel_connections_accepted_total"));
        assert!(render_status_html(&v, 7).contains("<h2>Event loops</h2>"));
    }

    #[test]
    fn status_page_shows_the_figures_escaped() {
        let v = known_view();
        let html = render_status_html(&v, 7);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"7\">"));
        assert!(html.contains("ht&quot;tp\\x\nq &lt;b&gt;"), "{html}");
        assert!(!html.contains("<b>"));
        assert!(
            !html.contains("<script") && !html.contains("http://") && !html.contains("https://")
        );
        assert!(html.contains("pid 4242") && html.contains("up 1h 2m 3s"));
        assert!(html.contains("multi-reactor"));
        let t = v.total.clone().unwrap();
        for n in [
            t.open,
            t.accepted,
            t.closed,
            t.refused_emfile,
            t.refused_limit,
            t.refused_spawn,
            22000,
            99,
        ] {
            assert!(html.contains(&format!("<td>{n}</td>")), "{n} missing");
        }
        assert!(html.contains(&format!("({} B)", t.bytes_in)));
        assert!(html.contains("<th>request_head</th><td>7</td>"));
        assert!(html.contains(&format!("<th>idle</th><td>{}</td>", t.idle_timeouts + 1000)));
        assert_eq!(
            html.matches("<th>2</th><td>epoll-et</td>").count(),
            1,
            "{html}"
        );
        assert!(!render_status_html(&v, 0).contains("refresh"));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_duration(5.9), "5s");
        assert_eq!(human_duration(90_061.0), "1d 1h 1m 1s");
        assert_eq!(human_duration(f64::NAN), "?");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB (1536 B)");
        assert_eq!(human_bytes(u64::MAX), format!("16.0 EiB ({} B)", u64::MAX));
    }

    #[test]
    fn parser_of_the_head_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000 {
            let data: Vec<u8> = (0..len % 300)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let alphabet = b"GET /metrics HTTP/1.1\r\n: \x00\xff";
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse_head(&data);
        }
        assert!(matches!(
            parse_head(&[b'a'; MAX_HEAD + 1]),
            Parsed::TooLarge
        ));
    }

    /// Responses from a real loop: each client connection sends `chunks` (pausing between
    /// them) and reads to EOF.
    fn serve(requests: Vec<Vec<&'static [u8]>>) -> (Vec<String>, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let source: MetricsSource = Arc::new(move |_: Option<&LoopStats>| {
            c.fetch_add(1, Ordering::Relaxed);
            known_view()
        });
        let mut el = EventLoop::new(LoopConfig::default()).unwrap();
        let listener =
            crate::net::bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        el.add_listener(
            listener,
            Arc::new(move || Box::new(AdminHandler::new(Arc::clone(&source))) as Box<dyn Handler>),
        )
        .unwrap();
        el.run_after(Duration::from_secs(20), |el| el.stop());
        let handle = el.handle();
        let client = thread::spawn(move || {
            let mut out = Vec::new();
            for chunks in requests {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                for (i, c) in chunks.iter().enumerate() {
                    if i > 0 {
                        thread::sleep(Duration::from_millis(30));
                    }
                    s.write_all(c).unwrap();
                }
                let mut reply = Vec::new();
                let _ = s.read_to_end(&mut reply);
                let _ = s.shutdown(Shutdown::Both);
                out.push(String::from_utf8_lossy(&reply).into_owned());
            }
            handle.stop();
            out
        });
        el.run().unwrap();
        (client.join().unwrap(), calls.load(Ordering::Relaxed))
    }

    /// Status line, headers (lower-cased names) and body; checks Content-Length.
    fn split(reply: &str, head_only: bool) -> (String, HashMap<String, String>, String) {
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{reply:?}"));
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_string();
        let headers: HashMap<String, String> = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        assert_eq!(headers["connection"], "close");
        let len: usize = headers["content-length"].parse().unwrap();
        if head_only {
            assert_eq!(body.len(), 0);
        } else {
            assert_eq!(body.len(), len, "{reply:?}");
        }
        (status, headers, body.to_string())
    }

    #[test]
    fn admin_handler_on_a_real_loop() {
        let (replies, calls) = serve(vec![
            vec![b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"],
            vec![b"GET /status HTTP/1.0\r\n\r\n"],
            vec![b"GET /nothing-here HTTP/1.1\r\n\r\n"],
            vec![b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"],
            vec![
                b"GET /met",
                b"rics?x=1 HTTP/1.1\r\nHo",
                b"st: x\r",
                b"\n\r\n",
            ],
            vec![b"this is not http\r\n\r\n"],
            vec![b"\x00\x01\x02\xff\r\n\r\n"],
            vec![b"GET / HTTP/1.1\r\n\r\n"],
            vec![b"HEAD /metrics HTTP/1.1\r\n\r\n"],
            vec![b"GET /metrics HTTP/1.1\r\n", &[b'a'; 9000]],
        ]);

        let (status, h, body) = split(&replies[0], false);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(
            h["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let (_, samples) = parse_prometheus(&body).unwrap();
        assert_eq!(value(&samples, "keel_log_dropped_lines_total", &[]), 99.0);

        let (status, h, body) = split(&replies[1], false);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert!(body.contains("<meta http-equiv=\"refresh\" content=\"5\">"));

        let (status, _, _) = split(&replies[2], false);
        assert_eq!(status, "HTTP/1.1 404 Not Found");

        let (status, h, _) = split(&replies[3], false);
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(h["allow"], "GET, HEAD");

        let (status, _, body) = split(&replies[4], false);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(parse_prometheus(&body).is_ok());

        assert_eq!(split(&replies[5], false).0, "HTTP/1.1 400 Bad Request");
        assert_eq!(split(&replies[6], false).0, "HTTP/1.1 400 Bad Request");

        let (status, h, _) = split(&replies[7], false);
        assert_eq!(status, "HTTP/1.1 302 Found");
        assert_eq!(h["location"], "/status");

        let (status, h, _) = split(&replies[8], true);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(h["content-length"].parse::<usize>().unwrap() > 100);

        assert_eq!(
            split(&replies[9], false).0,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // Only the pages that show figures gathered them.
        assert_eq!(calls, 4);
    }
}

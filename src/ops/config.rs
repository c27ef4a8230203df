//! The configuration file: one TOML file that describes every server keel runs.
//!
//! ```toml
//! [echo]                    # one section per server: echo, discard, http, proxy, chat
//! listen = "127.0.0.1:7007"
//! engine = "epoll-et"       # select | poll | epoll-lt | epoll-et
//! model = "multi-reactor"   # multi-reactor | prefork | half-sync | leader-followers |
//!                           # thread-per-conn | process-per-conn
//! threads = 2
//! accept = "reuseport"      # reuseport | acceptor
//! idle_timeout = 30.0       # seconds; integers and fractions both work
//! linger_timeout = 5
//! drain_timeout = 10
//! max_conns = 10000
//! backlog = 4096
//! reuseport = false
//! work_ms = 0               # echo only
//!
//! [echo.keepalive]          # TCP keepalive; `idle` is required, it switches keepalive on
//! idle = 60
//! interval = 10
//! count = 6
//!
//! [proxy]                   # the server keys above, and:
//! backends = ["127.0.0.1:8080", "127.0.0.1:8081"]   # round-robin, with failover
//! connect_timeout = 3       # seconds before the next backend is tried
//! fail_timeout = 10         # seconds a backend that failed is passed over (0: never)
//! splice = true             # relay through pipes, no copy (false: copy through a buffer)
//!
//! [chat]                    # the server keys above, and:
//! heartbeat = 15            # seconds of silence before a member is pinged
//! heartbeat_timeout = 45    # seconds of silence before it is dropped (> heartbeat)
//! max_frame = 65536         # the largest frame taken from a member, in bytes
//! ```
//!
//! Every key is optional: a key the file leaves out falls back to the command line's value or
//! the built-in default, and an empty file is valid. A key given on the command line overrides
//! the file ([`ServerSettings::or`]). Nothing is silently ignored: an unknown section or key is
//! an error, and so is a value of the wrong type or out of range.
//!
//! [`load`] reads and checks a file and reports *every* error it finds, each as
//! `FILE:LINE: key `section.key`: expected ..., got ...` ([`ConfigError`]); [`check`] is what
//! `keel check-config FILE` prints.
//!
//! The file is parsed into toml's spanned document tree (every key and value keeps its byte
//! range in the file) and then checked by hand, key by key, so each message says which line,
//! which key, what was expected and what was found, instead of a serde message.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::net::ListenOptions;
use crate::reactor::{Engine, Keepalive};
use crate::server::{self, AcceptStrategy, Model, ServerOptions};

/// `--listen` when neither the command line nor the file sets it.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 7007));
/// `keel http`'s `--listen` default.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080));
/// `--linger-timeout` default.
pub const DEFAULT_LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// `--drain-timeout` default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `keel proxy --connect-timeout` default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the proxy passes over a backend that failed, unless configured: nginx's
/// `fail_timeout` default.
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// `keel proxy`'s idle timeout when none is set: a pair that moved no byte either way for
/// this long is closed (nginx's `proxy_timeout` default).
pub const DEFAULT_PROXY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// `--backlog` default.
pub const DEFAULT_BACKLOG: i32 = 4096;
/// `--keepalive-interval` default (used when keepalive is on).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// `--keepalive-count` default (used when keepalive is on).
pub const DEFAULT_KEEPALIVE_COUNT: u32 = 6;

/// The largest number of seconds a timeout may be (as on the command line).
pub const MAX_SECS: f64 = 1e9;
/// Linux's limit for TCP_KEEPCNT.
const MAX_KEEPALIVE_COUNT: i128 = 127;

/// A range of seconds: lowest, highest, whether only whole seconds, and how messages write it.
type SecsRange = (f64, f64, bool, &'static str);
/// Timeouts where 0 means "at once" (linger, drain, cache revalidation).
const TIMEOUT: SecsRange = (0.0, MAX_SECS, false, "from 0 to 1e9");
/// Timeouts a connection must be given some time by (idle, keep-alive, head, body): at 0
/// every connection would be closed before it could say anything.
const POSITIVE_TIMEOUT: SecsRange = (0.001, MAX_SECS, false, "from 0.001 to 1e9");
/// TCP_KEEPIDLE and TCP_KEEPINTVL: Linux takes whole seconds from 1 to 32767 (a fraction
/// would be cut off without a word).
const KEEPALIVE_SECS: SecsRange = (1.0, 32767.0, true, "from 1 to 32767");

/// Whether `v` seconds lie in `range`.
fn secs_in((min, max, whole, _): SecsRange, v: f64) -> bool {
    v.is_finite() && (min..=max).contains(&v) && (!whole || v.fract() == 0.0)
}

/// What `range` takes, as messages say it: "a number of seconds from 0 to 1e9".
fn secs_wanted((_, _, whole, shown): SecsRange) -> String {
    let whole = if whole { "whole " } else { "" };
    format!("a {whole}number of seconds {shown}")
}

/// The servers a file can configure: one section (`[echo]`, `[discard]`) each.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Section {
    Echo,
    Discard,
    Http,
    Proxy,
    Chat,
}

impl Section {
    pub const ALL: [Section; 5] = [
        Section::Echo,
        Section::Discard,
        Section::Http,
        Section::Proxy,
        Section::Chat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Echo => "echo",
            Section::Discard => "discard",
            Section::Http => "http",
            Section::Proxy => "proxy",
            Section::Chat => "chat",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Keys a server section accepts, in the order the messages list them.
const SERVER_KEYS: [&str; 24] = [
    "listen",
    "engine",
    "model",
    "threads",
    "accept",
    "idle_timeout",
    "linger_timeout",
    "drain_timeout",
    "max_conns",
    "backlog",
    "reuseport",
    "sndbuf",
    "rcvbuf",
    "work_ms",
    "keepalive",
    "pid_file",
    "rlimit_nofile",
    "daemon",
    "user",
    "group",
    "admin",
    "log_target",
    "log_file",
    "log_filter",
];
/// Keys only `[http]` takes.
const HTTP_KEYS: [&str; 16] = [
    "root",
    "autoindex",
    "follow_symlinks",
    "serve_hidden",
    "gzip_static",
    "keepalive_timeout",
    "keepalive_requests",
    "header_timeout",
    "body_timeout",
    "max_body",
    "small_file_max",
    "tee_file_max",
    "cache_bytes",
    "cache_entries",
    "cache_valid",
    "access_log",
];
/// `tee_file_max`'s bounds (`net::page_pipe::TEE_FILE_MAX_LIMIT`).
const TEE_FILE_MAX: i128 = crate::net::page_pipe::TEE_FILE_MAX_LIMIT as i128;
const TEE_BYTES: &str = "a size in bytes from 0 to 16777216";

/// Keys only `[proxy]` takes.
const PROXY_KEYS: [&str; 4] = ["backends", "connect_timeout", "fail_timeout", "splice"];
/// Keys only `[chat]` takes.
const CHAT_KEYS: [&str; 3] = ["heartbeat", "heartbeat_timeout", "max_frame"];
const LOG_TARGETS: [&str; 3] = ["stderr", "file", "syslog"];
const KEEPALIVE_KEYS: [&str; 3] = ["idle", "interval", "count"];
const ACCEPT_NAMES: [&str; 2] = ["reuseport", "acceptor"];

/// Settings each valid alone that cannot go together ([`ServerSettings::conflict`]).
#[derive(Debug)]
pub struct Conflict {
    /// The key to blame, as in the file.
    pub blamed: &'static str,
    /// Every key the conflict involves: a file section that leaves one of them to the
    /// command line (or the default) is not in conflict on its own.
    pub keys: &'static [&'static str],
    pub message: String,
}

/// One server's settings, from a file section or from the command line. `None`: not set here
/// (the next source, or the built-in default, decides).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerSettings {
    pub listen: Option<SocketAddr>,
    pub engine: Option<Engine>,
    pub model: Option<Model>,
    pub threads: Option<usize>,
    pub accept: Option<AcceptStrategy>,
    pub idle_timeout: Option<Duration>,
    pub linger_timeout: Option<Duration>,
    pub drain_timeout: Option<Duration>,
    pub max_conns: Option<usize>,
    pub backlog: Option<i32>,
    pub reuseport: Option<bool>,
    /// SO_SNDBUF / SO_RCVBUF of accepted connections, in bytes.
    pub sndbuf: Option<usize>,
    pub rcvbuf: Option<usize>,
    /// Echo only.
    pub work_ms: Option<u64>,
    /// `keepalive.idle` / `--keepalive-idle`: set, keepalive is on.
    pub keepalive_idle: Option<Duration>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_count: Option<u32>,
    pub pid_file: Option<PathBuf>,
    pub rlimit_nofile: Option<u64>,
    pub daemon: Option<bool>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// `--admin ADDR`: the /metrics and /status listener.
    pub admin: Option<SocketAddr>,
    /// stderr | file | syslog.
    pub log_target: Option<String>,
    pub log_file: Option<PathBuf>,
    /// tracing's filter syntax: `info`, `warn,keel::net=debug`.
    pub log_filter: Option<String>,
    /// `[http]` only.
    pub http: HttpFileSettings,
    /// `[proxy]` only.
    pub proxy: ProxyFileSettings,
    /// `[chat]` only.
    pub chat: ChatFileSettings,
}

impl ServerSettings {
    /// Makes every relative path (pid file, log file, document root, access log) relative to
    /// `dir`, the directory the server was started in. A daemon `chdir`s to `/` once it is
    /// listening, and later uses of these paths (removing the pid file at exit, reopening
    /// the log, a reload) must still name the files the operator meant, not files under `/`.
    pub fn anchor_paths(&mut self, dir: &Path) {
        let anchor = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                *path = dir.join(&*path);
            }
        };
        anchor(&mut self.pid_file);
        anchor(&mut self.log_file);
        anchor(&mut self.http.root);
        if let Some(log) =
            self.http.access_log.as_mut().filter(|l| {
                !matches!(l.as_str(), "" | "stderr" | "off") && Path::new(l).is_relative()
            })
        {
            *log = dir.join(&*log).to_string_lossy().into_owned();
        }
    }
}

/// The proxy's own options, each optional like the rest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyFileSettings {
    /// Where clients are sent, round-robin; never empty once checked.
    pub backends: Option<Vec<SocketAddr>>,
    /// How long a backend may take to accept before the next one is tried.
    pub connect_timeout: Option<Duration>,
    /// How long a backend that failed is passed over (zero: never).
    pub fail_timeout: Option<Duration>,
    /// Relay through pipes with splice(2) (default true) or copy through a buffer.
    pub splice: Option<bool>,
}

impl ProxyFileSettings {
    /// `self`'s options, and `f`'s where `self` has none.
    pub fn or(self, f: &ProxyFileSettings) -> ProxyFileSettings {
        ProxyFileSettings {
            backends: self.backends.or_else(|| f.backends.clone()),
            connect_timeout: self.connect_timeout.or(f.connect_timeout),
            fail_timeout: self.fail_timeout.or(f.fail_timeout),
            splice: self.splice.or(f.splice),
        }
    }
}

/// The chat server's own options, each optional like the rest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatFileSettings {
    pub heartbeat: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    pub max_frame: Option<usize>,
}

impl ChatFileSettings {
    /// `self`'s options, and `f`'s where `self` has none.
    pub fn or(self, f: &ChatFileSettings) -> ChatFileSettings {
        ChatFileSettings {
            heartbeat: self.heartbeat.or(f.heartbeat),
            heartbeat_timeout: self.heartbeat_timeout.or(f.heartbeat_timeout),
            max_frame: self.max_frame.or(f.max_frame),
        }
    }

    /// The settings in force: each one set, or its default. The heartbeat timeout defaults
    /// to three heartbeats.
    pub fn resolve(&self) -> crate::services::chat::ChatSettings {
        let d = crate::services::chat::ChatSettings::default();
        let heartbeat = self.heartbeat.unwrap_or(d.heartbeat);
        crate::services::chat::ChatSettings {
            heartbeat,
            heartbeat_timeout: self.heartbeat_timeout.unwrap_or(heartbeat * 3),
            max_frame: self.max_frame.unwrap_or(d.max_frame),
        }
    }
}

/// Whether the chat server can run under `model`: every member must be reachable from every
/// other, so all in one process, each on a loop of its own thread.
pub fn chat_runs_under(model: Model) -> bool {
    matches!(model, Model::MultiReactor | Model::ThreadPerConn)
}

/// Why the chat server cannot run under `model`.
pub fn chat_model_message(model: Model) -> String {
    format!(
        "the chat server cannot run under {model}: a message goes to every member through \
         the loops of one process, which {model} does not give (its members would be split \
         over processes, or its handlers run off their loops); use multi-reactor or \
         thread-per-conn"
    )
}

/// Why the proxy cannot run under `model`: it opens its backend connections from the loop
/// a client's handler runs on, which these models do not give their handlers.
pub fn proxy_model_message(model: Model) -> String {
    format!(
        "the proxy cannot run under {model}: it opens backend connections from the client's \
         loop, which {model} does not give handlers; use multi-reactor, prefork, \
         thread-per-conn or process-per-conn"
    )
}

/// The HTTP server's own options, each optional like the rest: the command line's are laid
/// over the file's with [`HttpFileSettings::or`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpFileSettings {
    pub root: Option<PathBuf>,
    pub autoindex: Option<bool>,
    pub follow_symlinks: Option<bool>,
    pub serve_hidden: Option<bool>,
    pub gzip_static: Option<bool>,
    pub keepalive_timeout: Option<Duration>,
    pub keepalive_requests: Option<u64>,
    pub header_timeout: Option<Duration>,
    pub body_timeout: Option<Duration>,
    pub max_body: Option<u64>,
    pub small_file_max: Option<u64>,
    pub tee_file_max: Option<u64>,
    pub cache_bytes: Option<u64>,
    pub cache_entries: Option<usize>,
    pub cache_valid: Option<Duration>,
    /// A path, "stderr", or "off".
    pub access_log: Option<String>,
}

impl HttpFileSettings {
    /// `self`'s options, and `f`'s where `self` has none.
    pub fn or(self, f: &HttpFileSettings) -> HttpFileSettings {
        HttpFileSettings {
            root: self.root.or_else(|| f.root.clone()),
            autoindex: self.autoindex.or(f.autoindex),
            follow_symlinks: self.follow_symlinks.or(f.follow_symlinks),
            serve_hidden: self.serve_hidden.or(f.serve_hidden),
            gzip_static: self.gzip_static.or(f.gzip_static),
            keepalive_timeout: self.keepalive_timeout.or(f.keepalive_timeout),
            keepalive_requests: self.keepalive_requests.or(f.keepalive_requests),
            header_timeout: self.header_timeout.or(f.header_timeout),
            body_timeout: self.body_timeout.or(f.body_timeout),
            max_body: self.max_body.or(f.max_body),
            small_file_max: self.small_file_max.or(f.small_file_max),
            tee_file_max: self.tee_file_max.or(f.tee_file_max),
            cache_bytes: self.cache_bytes.or(f.cache_bytes),
            cache_entries: self.cache_entries.or(f.cache_entries),
            cache_valid: self.cache_valid.or(f.cache_valid),
            access_log: self.access_log.or_else(|| f.access_log.clone()),
        }
    }

    /// What is set here over the built-in defaults.
    pub fn to_settings(&self) -> crate::http::HttpSettings {
        let mut s = crate::http::HttpSettings::default();
        if let Some(v) = &self.root {
            s.root = Some(v.clone());
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { s.$f = v; } )* };
        }
        set!(
            autoindex,
            follow_symlinks,
            serve_hidden,
            gzip_static,
            keepalive_timeout,
            keepalive_requests,
            header_timeout,
            body_timeout,
            small_file_max,
            tee_file_max,
            cache_bytes,
            cache_entries,
            cache_valid
        );
        if let Some(v) = self.max_body {
            s.limits.max_body = v;
        }
        s.access_log = match self.access_log.as_deref() {
            None | Some("stderr") => Some(PathBuf::from("/dev/stderr")),
            Some("off") => None,
            Some(path) => Some(PathBuf::from(path)),
        };
        s
    }
}

impl ServerSettings {
    /// Field by field: this value where set, else `fallback`'s. Call it as
    /// `command_line.or(&file_section)` so that flags override the file.
    pub fn or(self, fallback: &ServerSettings) -> ServerSettings {
        // The log target and file go together: a target here that writes no file sets the
        // fallback's file aside (`--log-target stderr` over a file's `log_file`), and a file
        // here the fallback's other target (`--log-file` over `log_target = "syslog"`).
        let log = match (self.log_target.clone(), self.log_file.clone()) {
            (None, None) => (fallback.log_target.clone(), fallback.log_file.clone()),
            (Some(target), None) => {
                let file = fallback.log_file.clone().filter(|_| target == "file");
                (Some(target), file)
            }
            (None, Some(file)) => {
                let target = fallback.log_target.clone().filter(|t| t == "file");
                (target, Some(file))
            }
            both => both,
        };
        ServerSettings {
            listen: self.listen.or(fallback.listen),
            engine: self.engine.or(fallback.engine),
            model: self.model.or(fallback.model),
            threads: self.threads.or(fallback.threads),
            accept: self.accept.or(fallback.accept),
            idle_timeout: self.idle_timeout.or(fallback.idle_timeout),
            linger_timeout: self.linger_timeout.or(fallback.linger_timeout),
            drain_timeout: self.drain_timeout.or(fallback.drain_timeout),
            max_conns: self.max_conns.or(fallback.max_conns),
            backlog: self.backlog.or(fallback.backlog),
            reuseport: self.reuseport.or(fallback.reuseport),
            sndbuf: self.sndbuf.or(fallback.sndbuf),
            rcvbuf: self.rcvbuf.or(fallback.rcvbuf),
            work_ms: self.work_ms.or(fallback.work_ms),
            keepalive_idle: self.keepalive_idle.or(fallback.keepalive_idle),
            keepalive_interval: self.keepalive_interval.or(fallback.keepalive_interval),
            keepalive_count: self.keepalive_count.or(fallback.keepalive_count),
            pid_file: self.pid_file.or_else(|| fallback.pid_file.clone()),
            rlimit_nofile: self.rlimit_nofile.or(fallback.rlimit_nofile),
            daemon: self.daemon.or(fallback.daemon),
            user: self.user.or_else(|| fallback.user.clone()),
            group: self.group.or_else(|| fallback.group.clone()),
            admin: self.admin.or(fallback.admin),
            log_target: log.0,
            log_file: log.1,
            log_filter: self.log_filter.or_else(|| fallback.log_filter.clone()),
            http: self.http.or(&fallback.http),
            proxy: self.proxy.or(&fallback.proxy),
            chat: self.chat.or(&fallback.chat),
        }
    }

    /// Whether these settings set `key`, one of the keys a [`Conflict`] names.
    pub fn sets(&self, key: &str) -> bool {
        match key {
            "listen" => self.listen.is_some(),
            "engine" => self.engine.is_some(),
            "model" => self.model.is_some(),
            "accept" => self.accept.is_some(),
            "admin" => self.admin.is_some(),
            "log_target" => self.log_target.is_some(),
            _ => false,
        }
    }

    /// Settings each valid alone that cannot go together: the key to blame (as in the file)
    /// and why. `keel check-config` and a reload report them with the file and line; the
    /// command line refuses them (exit 2) before the server starts.
    pub fn conflict(&self) -> Option<Conflict> {
        self.conflict_among(|_| true)
    }

    /// The first conflict whose keys all satisfy `set` (the file checker: keys its section
    /// sets), so that one left to the command line does not hide another that is not.
    pub fn conflict_among(&self, set: impl Fn(&[&str]) -> bool) -> Option<Conflict> {
        self.conflicts().into_iter().find(|c| set(c.keys))
    }

    /// Every conflict, in the order they are checked.
    fn conflicts(&self) -> Vec<Conflict> {
        let mut found = Vec::new();
        let (engine, model) = (
            self.engine.unwrap_or_default(),
            self.model.unwrap_or_default(),
        );
        if model == Model::LeaderFollowers && !matches!(engine, Engine::EpollLt | Engine::EpollEt) {
            found.push(Conflict {
                blamed: "engine",
                keys: &["model", "engine"],
                message: format!(
                    "the leader-followers model shares one epoll instance between its threads \
                     (EPOLLONESHOT): engine {engine} cannot do that; use epoll-lt or epoll-et"
                ),
            });
        }
        let listen = self.listen.unwrap_or(DEFAULT_LISTEN);
        // IPv6 listeners are V6ONLY (`net::bind_tcp`): only the same family can clash.
        if let Some(admin) = self.admin.filter(|a| {
            a.port() != 0 && a.port() == listen.port() && a.is_ipv4() == listen.is_ipv4()
        }) {
            if admin.ip() == listen.ip()
                || admin.ip().is_unspecified()
                || listen.ip().is_unspecified()
            {
                found.push(Conflict {
                    blamed: "admin",
                    keys: &["admin", "listen"],
                    message: format!(
                        "admin {admin} and listen {listen} would share a port: the admin \
                         listener needs one of its own"
                    ),
                });
            }
        }
        for b in self.proxy.backends.iter().flatten() {
            let loops_back = listen.port() != 0
                && b.port() == listen.port()
                && b.is_ipv4() == listen.is_ipv4()
                && (b.ip() == listen.ip()
                    || (listen.ip().is_unspecified()
                        && (b.ip().is_loopback() || b.ip().is_unspecified())));
            let message = if b.port() == 0 {
                format!("backend {b}: port 0 cannot be connected to")
            } else if loops_back {
                format!(
                    "backend {b} is the proxy's own listen {listen}: every client would be \
                     relayed back to the proxy, again and again, until it ran out of fds"
                )
            } else {
                continue;
            };
            found.push(Conflict {
                blamed: "backends",
                keys: if b.port() == 0 {
                    &["backends"]
                } else {
                    &["backends", "listen"]
                },
                message,
            });
            break;
        }
        if self.accept == Some(AcceptStrategy::Acceptor) && model != Model::MultiReactor {
            // Only multi-reactor hands connections from one acceptor to its loops; the other
            // models accept their own way, so the setting would be silently ignored.
            found.push(Conflict {
                blamed: "accept",
                keys: &["accept", "model"],
                message: format!(
                    "accept = acceptor is how the multi-reactor model hands connections to its \
                     loops; the {model} model accepts its own way: drop it or use model \
                     multi-reactor"
                ),
            });
        }
        if let Err(message) = self.log_settings() {
            found.push(Conflict {
                blamed: "log_target",
                keys: &["log_target"],
                message,
            });
        }
        // The timeout defaults to three heartbeats, so only one set below the other's value
        // (its own or the default) can clash: a chat member would be dropped before it was
        // ever pinged.
        let chat = self.chat.resolve();
        if chat.heartbeat_timeout <= chat.heartbeat {
            found.push(Conflict {
                blamed: "heartbeat_timeout",
                keys: &["heartbeat", "heartbeat_timeout"],
                message: format!(
                    "the heartbeat timeout ({} s) must be longer than the heartbeat interval \
                     ({} s)",
                    chat.heartbeat_timeout.as_secs_f64(),
                    chat.heartbeat.as_secs_f64()
                ),
            });
        }
        found
    }

    /// A log file set beside a target that writes none (`stderr`, `syslog`): it is not
    /// used, which the server says at start rather than refuse (files that set both
    /// loaded before, and `--log-target stderr` is how one looks at a server in the
    /// foreground without editing its file).
    pub fn ignored_log_file(&self) -> Option<(&str, &Path)> {
        match (self.log_target.as_deref(), &self.log_file) {
            (Some(target @ ("stderr" | "syslog")), Some(path)) => Some((target, path)),
            _ => None,
        }
    }

    /// Logging as configured: `log_file` implies the file target.
    pub fn log_settings(&self) -> Result<crate::ops::log::LogSettings, String> {
        use crate::ops::log::{LogSettings, LogTarget};
        let mut s = LogSettings::default();
        if let Some(f) = &self.log_filter {
            s.filter = f.clone();
        }
        s.target = match (self.log_target.as_deref(), &self.log_file) {
            (None | Some("file"), Some(path)) => LogTarget::File(path.clone()),
            (Some("file"), None) => {
                return Err(
                    "log target `file` needs a log file (log_file, --log-file PATH)".to_string(),
                )
            }
            // A log file beside another target is not used: `ignored_log_file` says so.
            (Some("syslog"), _) => LogTarget::Syslog,
            (None | Some("stderr"), _) => LogTarget::Stderr,
            (Some(other), _) => {
                return Err(format!(
                    "log target {other:?}: expected one of {}",
                    LOG_TARGETS.join(", ")
                ))
            }
        };
        Ok(s)
    }

    /// The options a server runs with: what is set here, the built-in defaults for the rest.
    /// Fails only for a keepalive interval or count without a keepalive idle time.
    pub fn to_options(&self) -> Result<ServerOptions, String> {
        let keepalive = match self.keepalive_idle {
            Some(idle) => Some(Keepalive {
                idle,
                interval: self
                    .keepalive_interval
                    .unwrap_or(DEFAULT_KEEPALIVE_INTERVAL),
                count: self.keepalive_count.unwrap_or(DEFAULT_KEEPALIVE_COUNT),
            }),
            None if self.keepalive_interval.is_some() || self.keepalive_count.is_some() => {
                return Err("a keepalive interval or count needs a keepalive idle time \
                     (--keepalive-idle, or `idle` in the file's keepalive table)"
                    .to_string())
            }
            None => None,
        };
        if let Some(c) = self.conflict() {
            // Refused here, with the other bad arguments (exit 2), not once the server starts.
            return Err(c.message);
        }
        let (engine, model) = (
            self.engine.unwrap_or_default(),
            self.model.unwrap_or_default(),
        );
        let listen = self.listen.unwrap_or(DEFAULT_LISTEN);
        Ok(ServerOptions {
            listen,
            engine,
            model,
            threads: self.threads.unwrap_or_else(server::default_threads),
            accept: self.accept.unwrap_or_default(),
            idle_timeout: self.idle_timeout,
            linger_timeout: self.linger_timeout.unwrap_or(DEFAULT_LINGER_TIMEOUT),
            drain_timeout: self.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            max_connections: self.max_conns,
            keepalive,
            listen_opts: ListenOptions {
                reuse_port: self.reuseport.unwrap_or(false),
                backlog: self.backlog.unwrap_or(DEFAULT_BACKLOG),
                send_buffer: self.sndbuf,
                recv_buffer: self.rcvbuf,
            },
            pid_file: self.pid_file.clone(),
            rlimit_nofile: self.rlimit_nofile,
            daemon: self.daemon.unwrap_or(false),
            user: self.user.clone(),
            group: self.group.clone(),
            admin: self.admin,
            log: self.log_settings().ok().map(|l| (l.filter, l.target)),
        })
    }
}

/// A checked configuration file: the sections it has.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub echo: Option<ServerSettings>,
    pub discard: Option<ServerSettings>,
    pub http: Option<ServerSettings>,
    pub proxy: Option<ServerSettings>,
    pub chat: Option<ServerSettings>,
    /// Conflicts a section has only with a built-in default, in file order.
    pub default_conflicts: Vec<DefaultConflict>,
}

/// A key of a section that cannot go with the built-in default of another key the section
/// leaves unset (`admin` on the default listen port): not an error of the file, since the
/// command line may set that key, but the server refuses to start without it. `keel
/// check-config` says it as a warning, and the refusal at start names the file's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultConflict {
    pub section: Section,
    /// The key blamed, with its line and the conflict's message.
    pub at: ConfigError,
    /// Every key the conflict involves.
    pub keys: &'static [&'static str],
    /// Those the section leaves to the command line or the default.
    pub left: Vec<&'static str>,
}

impl DefaultConflict {
    /// Whether this is why `merged` (the command line `cli` over the file) cannot run: the
    /// same conflict, with none of its keys from the command line.
    pub fn explains(&self, cli: &ServerSettings, message: &str) -> bool {
        self.at.message == message && !self.keys.iter().any(|k| cli.sets(k))
    }
}

impl fmt::Display for DefaultConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (with the default {}: the command line must set {})",
            self.at,
            self.left.join(" and "),
            if self.left.len() == 1 { "it" } else { "one" }
        )
    }
}

/// Defaults one server has and the others do not: HTTP's port, the proxy's idle timeout (a
/// relay with none would hold both sockets of a pair whose ends went silent forever).
pub fn section_defaults(section: Section, settings: &mut ServerSettings) {
    match section {
        Section::Http if settings.listen.is_none() => {
            settings.listen = Some(DEFAULT_HTTP_LISTEN);
        }
        Section::Proxy if settings.idle_timeout.is_none() => {
            settings.idle_timeout = Some(DEFAULT_PROXY_IDLE_TIMEOUT);
        }
        _ => {}
    }
}

impl Config {
    /// The section for `section`, if the file has one.
    pub fn section(&self, section: Section) -> Option<&ServerSettings> {
        match section {
            Section::Echo => self.echo.as_ref(),
            Section::Discard => self.discard.as_ref(),
            Section::Http => self.http.as_ref(),
            Section::Proxy => self.proxy.as_ref(),
            Section::Chat => self.chat.as_ref(),
        }
    }

    /// The section for `section`, or no settings at all (every default) if the file has none.
    pub fn settings(&self, section: Section) -> ServerSettings {
        self.section(section).cloned().unwrap_or_default()
    }

    fn section_mut(&mut self, section: Section) -> &mut Option<ServerSettings> {
        match section {
            Section::Echo => &mut self.echo,
            Section::Discard => &mut self.discard,
            Section::Http => &mut self.http,
            Section::Proxy => &mut self.proxy,
            Section::Chat => &mut self.chat,
        }
    }
}

/// One problem in a configuration file. Displays as `FILE:LINE: key `KEY`: MESSAGE`, without
/// the line when the file could not be read and without the key for a TOML syntax error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as it was named.
    pub file: String,
    /// 1-based.
    pub line: Option<usize>,
    /// The dotted path of the key, e.g. `echo.keepalive.count`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads and checks the file at `path`; every error found, in file order, if any.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    load_from(path, false)
}

/// [`load`], and with `pipes` a pipe is read as well (`check-config <(...)`: there, waiting
/// for its writer is what the user asked for).
fn load_from(path: &Path, pipes: bool) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    match read_text(path, pipes) {
        Ok(text) => parse(&file, &text),
        Err((line, message)) => Err(vec![ConfigError {
            file,
            line,
            key: None,
            message,
        }]),
    }
}

/// The largest configuration file read. Real ones are a few KiB; the cap is there so that a
/// path naming something endless (`/dev/zero`) is an error, not all of memory.
const MAX_FILE: u64 = 16 << 20;

/// The file's text, or (the line, if it is about one) why it cannot be had. A server reads
/// only a regular file, opened without blocking, so a FIFO is refused at once instead of
/// hanging a reload (which runs on the control loop) until a writer comes; with `pipes`, a
/// pipe is read too.
fn read_text(path: &Path, pipes: bool) -> Result<String, (Option<usize>, String)> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let cannot = |e: std::io::Error| (None, format!("cannot read: {e}"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(if pipes { 0 } else { libc::O_NONBLOCK })
        .open(path)
        .map_err(cannot)?;
    let kind = f.metadata().map_err(cannot)?.file_type();
    if !(kind.is_file() || (pipes && kind.is_fifo())) {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err((None, format!("cannot read: {what}, not a regular file")));
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err((
            None,
            format!("cannot read: larger than {} MiB", MAX_FILE >> 20),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        (
            Some(line),
            "not valid UTF-8 (TOML files are UTF-8)".to_string(),
        )
    })
}

/// Checks `text`, the contents of the file named `file` (used only in messages).
pub fn parse(file: &str, text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker {
        file,
        text,
        errors: Vec::new(),
        default_conflicts: Vec::new(),
    };
    let config = match DeTable::parse_recoverable(text) {
        (root, syntax) if syntax.is_empty() => c.document(root.get_ref()),
        (_, syntax) => {
            // A document that does not parse is not checked further: what the parser
            // recovered would only add errors that follow from the syntax error.
            for e in syntax {
                let span = e.span().unwrap_or(0..0);
                let mut message = format!("TOML syntax error: {}", e.message());
                if e.message() == "duplicate key" {
                    if let Some(key) = text.get(span.clone()) {
                        message = format!("TOML syntax error: duplicate key `{key}`");
                    }
                }
                c.error(span, None, message);
            }
            Config::default()
        }
    };
    if c.errors.is_empty() {
        // Sections are read in file order, and each has at most one.
        let mut config = config;
        config.default_conflicts = c.default_conflicts;
        Ok(config)
    } else {
        c.errors.sort_by_key(|(offset, _)| *offset);
        Err(c.errors.into_iter().map(|(_, e)| e).collect())
    }
}

/// `keel check-config FILE`: the report to print and whether the file is valid, and the host
/// ready for it ([`host_check`](super::host_check)). Valid: `FILE: ok (echo, discard)`,
/// after a `warning: ...` line per conflict with a default ([`DefaultConflict`]), the count of
/// them then ending the line. Invalid: one line per error, then `FILE: N error(s)`.
pub fn check(path: &Path) -> (String, bool) {
    let file = path.display();
    let checked = read_text(path, true)
        .map_err(|(line, message)| {
            vec![ConfigError {
                file: file.to_string(),
                line,
                key: None,
                message,
            }]
        })
        .and_then(|text| {
            let config = parse(&file.to_string(), &text)?;
            match super::host_check::host_errors(&file.to_string(), &text, &config) {
                host if host.is_empty() => Ok(config),
                host => Err(host),
            }
        });
    match checked {
        Ok(config) => {
            let sections: Vec<&str> = Section::ALL
                .into_iter()
                .filter(|s| config.section(*s).is_some())
                .map(Section::name)
                .collect();
            if sections.is_empty() {
                // Every server given this file refuses it (it runs on its own section).
                return (
                    format!(
                        "{file}: no server section ([echo], [discard], [http], [proxy] or \
                         [chat]): a server given this file would refuse to start\n{file}: 1 error"
                    ),
                    false,
                );
            }
            let what = sections.join(", ");
            let mut report = String::new();
            for w in &config.default_conflicts {
                report.push_str(&format!("warning: {w}\n"));
            }
            let n = config.default_conflicts.len();
            let warnings = match n {
                0 => String::new(),
                1 => ", 1 warning".to_string(),
                n => format!(", {n} warnings"),
            };
            report.push_str(&format!("{file}: ok ({what}){warnings}"));
            (report, true)
        }
        Err(errors) => {
            let mut report = String::new();
            for e in &errors {
                report.push_str(&e.to_string());
                report.push('\n');
            }
            let n = errors.len();
            let plural = if n == 1 { "" } else { "s" };
            report.push_str(&format!("{file}: {n} error{plural}"));
            (report, false)
        }
    }
}

/// A boolean option's value on the command line (`--autoindex=false`): the spelling the file
/// uses, so a flag can undo what the file turned on.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// Parses seconds as the command line does: a non-negative number up to [`MAX_SECS`], fractions
/// allowed.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    parse_secs_in(s, TIMEOUT)
}

/// `--idle-timeout`, `--keepalive-timeout`, `--header-timeout`, `--body-timeout`: above 0,
/// as in the file.
pub fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    parse_secs_in(s, POSITIVE_TIMEOUT)
}

/// `--keepalive-idle` / `--keepalive-interval`: whole seconds from 1 to 32767, what Linux
/// takes for TCP_KEEPIDLE and TCP_KEEPINTVL (and what the file accepts).
pub fn parse_keepalive_secs(s: &str) -> Result<Duration, String> {
    parse_secs_in(s, KEEPALIVE_SECS)
}

fn parse_secs_in(s: &str, range: SecsRange) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs_in(range, v) {
        return Err(format!(
            "{s:?} is out of range: expected {}",
            secs_wanted(range)
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The most `threads` a server takes: loops, workers or, under the per-connection models,
/// connections served at once. Each thread takes four memory mappings (its stack and its
/// signal stack, each with a guard page), and Linux allows 65,530 per process by default
/// (`vm.max_map_count`); a thread that cannot map its signal stack aborts the whole process,
/// in the standard library, before keel could say why.
pub const MAX_THREADS: usize = 10_000;

/// `--threads`: a whole number from 1 to [`MAX_THREADS`] (as in the file).
pub fn parse_threads(s: &str) -> Result<usize, String> {
    match parse_count(s)? {
        n if n > MAX_THREADS => Err(format!("{n} is out of range (1 to {MAX_THREADS})")),
        n => Ok(n),
    }
}

/// `--log-filter`: a tracing filter ("info", "warn,keel::http=debug"), refused as the file's
/// `log_filter` is (exit 2), not only when logging starts.
pub fn parse_log_filter(s: &str) -> Result<String, String> {
    check_log_filter(s)
        .map(|()| s.to_string())
        .map_err(|e| format!("invalid log filter {s:?}: {e}"))
}

/// The levels a filter directive may be on its own.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Whether `s` is a filter tracing takes and that means what it seems to. tracing reads a
/// bare word that is not a level as a target, so a misspelt level (`warning`, `verbose`)
/// selects a module no line comes from, and every line, errors included, is dropped: such a
/// word is refused unless it names keel's own modules (`keel`, `keel::http`).
fn check_log_filter(s: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| e.to_string())?;
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[']);
        let level = LOG_LEVELS.contains(&directive.to_ascii_lowercase().as_str());
        let ours = directive == "keel" || directive.starts_with("keel::");
        if bare && !level && !ours {
            return Err(format!(
                "{directive:?} is neither a level ({}) nor one of keel's modules (keel, \
                 keel::http...): as a module it would select no line at all",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The largest `keel bench pingpong --size`: a message is one buffer, allocated at start.
pub const MAX_MESSAGE: usize = 64 << 20;

/// `keel bench pingpong --size`: bytes, from 1 to [`MAX_MESSAGE`].
pub fn parse_message_size(s: &str) -> Result<usize, String> {
    match parse_count(s)? {
        n if n > MAX_MESSAGE => Err(format!("{n} is out of range (1 to {MAX_MESSAGE})")),
        n => Ok(n),
    }
}

/// `--max-frame`: bytes, enough for a frame that names a member, and small enough that the MSG
/// carrying a SAY of that size fits the codec's limit.
pub fn parse_max_frame(s: &str) -> Result<usize, String> {
    let (lo, hi) = (
        1 + crate::services::chat::MAX_NAME,
        crate::services::chat::MAX_MAX_FRAME,
    );
    match parse_count(s)? {
        n if !(lo..=hi).contains(&n) => Err(format!("{n} is out of range ({lo} to {hi})")),
        n => Ok(n),
    }
}

/// `--max-conns`, `--cache-entries`: a whole number, at least one (as in the file).
pub fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// `--sndbuf` / `--rcvbuf`: bytes from 1 to 2^30, as in the file (the kernel takes an int,
/// so a larger number would silently wrap to its minimum).
pub fn parse_buffer_bytes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1 << 30).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{s:?} is out of range (1 to 1073741824 bytes)")),
        Err(_) => Err(format!("{s:?} is not a whole number of bytes")),
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

/// Walks the parsed document, collecting errors (with their byte offset, to sort them).
struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<(usize, ConfigError)>,
    default_conflicts: Vec<DefaultConflict>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, key: Option<String>, message: String) {
        let offset = span.start.min(self.text.len());
        let error = self.located(span, key, message);
        self.errors.push((offset, error));
    }

    /// A message about the text at `span`, with the file and the line.
    fn located(&self, span: Range<usize>, key: Option<String>, message: String) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let line = self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        ConfigError {
            file: self.file.to_string(),
            line: Some(line),
            key,
            message,
        }
    }

    /// An error about the value of `key`.
    fn bad(&mut self, key: &str, value: &Value<'_>, message: String) {
        self.error(value.span(), Some(key.to_string()), message);
    }

    fn document(&mut self, root: &DeTable<'_>) -> Config {
        let mut config = Config::default();
        for (name, value) in root {
            let section = Section::ALL
                .into_iter()
                .find(|s| s.name() == name.get_ref());
            match (section, value.get_ref()) {
                (Some(section), DeValue::Table(table)) => {
                    let settings = self.server(section, name.span(), table);
                    *config.section_mut(section) = Some(settings);
                }
                (Some(section), _) => self.bad(
                    section.name(),
                    value,
                    format!(
                        "expected a table ([{section}]), got {}",
                        describe(value.get_ref())
                    ),
                ),
                (None, DeValue::Table(_)) => self.error(
                    name.span(),
                    Some(name.get_ref().to_string()),
                    "unknown section; expected one of echo, discard, http, proxy, chat".to_string(),
                ),
                (None, _) => self.error(
                    name.span(),
                    Some(name.get_ref().to_string()),
                    "keys belong in a server's section; expected one of [echo], [discard], [http], [proxy], [chat]"
                        .to_string(),
                ),
            }
        }
        config
    }

    fn server(
        &mut self,
        section: Section,
        header: Range<usize>,
        table: &DeTable<'_>,
    ) -> ServerSettings {
        let errors_before = self.errors.len();
        let mut s = ServerSettings::default();
        for (name, value) in table {
            let key = format!("{section}.{}", name.get_ref());
            match name.get_ref().as_ref() {
                "listen" => s.listen = self.listen(&key, value),
                "engine" => {
                    s.engine = self.choice(&key, value, &Engine::ALL.map(Engine::name));
                }
                "model" => s.model = self.choice(&key, value, &Model::ALL.map(Model::name)),
                "accept" => s.accept = self.choice(&key, value, &ACCEPT_NAMES),
                "threads" => {
                    let what = "an integer from 1 to 10000";
                    s.threads = self
                        .int(&key, value, 1, MAX_THREADS as i128, what)
                        .map(|v| v as usize);
                }
                "max_conns" => s.max_conns = self.count(&key, value),
                "idle_timeout" => s.idle_timeout = self.secs(&key, value, POSITIVE_TIMEOUT),
                "linger_timeout" => s.linger_timeout = self.secs(&key, value, TIMEOUT),
                "drain_timeout" => s.drain_timeout = self.secs(&key, value, TIMEOUT),
                "backlog" => {
                    s.backlog = self
                        .int(
                            &key,
                            value,
                            0,
                            i32::MAX.into(),
                            "an integer from 0 to 2147483647",
                        )
                        .map(|v| v as i32);
                }
                "reuseport" => s.reuseport = self.boolean(&key, value),
                "sndbuf" | "rcvbuf" => {
                    let v = self
                        .int(
                            &key,
                            value,
                            1,
                            1 << 30,
                            "a number of bytes from 1 to 1073741824",
                        )
                        .map(|v| v as usize);
                    if name.get_ref().as_ref() == "sndbuf" {
                        s.sndbuf = v;
                    } else {
                        s.rcvbuf = v;
                    }
                }
                "pid_file" => {
                    s.pid_file = match self.string(&key, value, "a file path") {
                        Some("") => {
                            let msg = "expected a file path, got an empty string".to_string();
                            self.bad(&key, value, msg);
                            None
                        }
                        other => other.map(PathBuf::from),
                    };
                }
                "daemon" => s.daemon = self.boolean(&key, value),
                "user" | "group" => {
                    let v = match self.string(&key, value, "a user or group name") {
                        Some("") => {
                            let msg = "expected a user or group name, got an empty string";
                            self.bad(&key, value, msg.to_string());
                            None
                        }
                        other => other.map(str::to_string),
                    };
                    if name.get_ref().as_ref() == "user" {
                        s.user = v;
                    } else {
                        s.group = v;
                    }
                }
                "rlimit_nofile" => {
                    s.rlimit_nofile = self
                        .int(&key, value, 1, 1 << 30, "an fd count from 1 to 1073741824")
                        .map(|v| v as u64);
                }
                "work_ms" if section == Section::Echo => {
                    s.work_ms = self
                        .int(
                            &key,
                            value,
                            0,
                            u64::MAX.into(),
                            "a whole number of milliseconds",
                        )
                        .map(|v| v as u64);
                }
                "work_ms" => self.error(
                    name.span(),
                    Some(key),
                    format!("only [echo] takes work_ms; {section} has no handler work to delay"),
                ),
                "admin" => s.admin = self.listen(&key, value),
                "log_target" => {
                    s.log_target = self.choice::<String>(&key, value, &LOG_TARGETS);
                }
                "log_file" => s.log_file = self.path(&key, value),
                "log_filter" => {
                    s.log_filter = self
                        .string(&key, value, "a log filter")
                        .map(|f| f.to_string());
                    if let Some(f) = &s.log_filter {
                        if let Err(e) = check_log_filter(f) {
                            self.bad(&key, value, format!("invalid log filter {f:?}: {e}"));
                        }
                    }
                }
                k if section == Section::Http && HTTP_KEYS.contains(&k) => {
                    self.http_key(&key, k, value, &mut s.http);
                }
                "backends" if section == Section::Proxy => {
                    s.proxy.backends = self.backends(&key, value);
                }
                "connect_timeout" if section == Section::Proxy => {
                    s.proxy.connect_timeout = self.secs(&key, value, POSITIVE_TIMEOUT);
                }
                "fail_timeout" if section == Section::Proxy => {
                    s.proxy.fail_timeout = self.secs(&key, value, TIMEOUT);
                }
                "splice" if section == Section::Proxy => s.proxy.splice = self.boolean(&key, value),
                "heartbeat" if section == Section::Chat => {
                    s.chat.heartbeat = self.secs(&key, value, POSITIVE_TIMEOUT);
                }
                "heartbeat_timeout" if section == Section::Chat => {
                    s.chat.heartbeat_timeout = self.secs(&key, value, POSITIVE_TIMEOUT);
                }
                "max_frame" if section == Section::Chat => {
                    let (lo, hi) = (
                        1 + crate::services::chat::MAX_NAME as i128,
                        crate::services::chat::MAX_MAX_FRAME as i128,
                    );
                    let what = format!("a number of bytes from {lo} to {hi}");
                    s.chat.max_frame = self.int(&key, value, lo, hi, &what).map(|v| v as usize);
                }
                "keepalive" => match value.get_ref() {
                    DeValue::Table(ka) => self.keepalive(&key, name.span(), ka, &mut s),
                    other => self.bad(
                        &key,
                        value,
                        format!("expected a table ([{key}]), got {}", describe(other)),
                    ),
                },
                _ => {
                    let mut expected: Vec<&str> = SERVER_KEYS
                        .into_iter()
                        .filter(|k| section == Section::Echo || *k != "work_ms")
                        .collect();
                    match section {
                        Section::Http => expected.extend(HTTP_KEYS),
                        Section::Proxy => expected.extend(PROXY_KEYS),
                        Section::Chat => expected.extend(CHAT_KEYS),
                        _ => {}
                    }
                    self.error(
                        name.span(),
                        Some(key),
                        format!("unknown key; expected one of {}", expected.join(", ")),
                    );
                }
            }
        }
        // Keys each valid alone that cannot go together, blamed on the line of the key named
        // (once the keys are valid one by one: a bad value would be taken for the default).
        // Only a conflict among keys the section sets itself: the file gives the defaults of
        // a command line that may set the others.
        if section == Section::Proxy {
            if let Some(model) = s.model.filter(|m| !m.runs_handlers_on_loops()) {
                let at = table
                    .iter()
                    .find(|(n, _)| n.get_ref() == "model")
                    .map_or(header.clone(), |(n, _)| n.span());
                self.error(
                    at,
                    Some("proxy.model".to_string()),
                    proxy_model_message(model),
                );
            }
        }
        if section == Section::Chat {
            if let Some(model) = s.model.filter(|m| !chat_runs_under(*m)) {
                let at = table
                    .iter()
                    .find(|(n, _)| n.get_ref() == "model")
                    .map_or(header.clone(), |(n, _)| n.span());
                self.error(
                    at,
                    Some("chat.model".to_string()),
                    chat_model_message(model),
                );
            }
            // Both set here: an error of the file, whatever else it has. One left to its
            // default clashes with that default (`conflicts`): a warning here, and the
            // refusal at start names this line.
            if let (Some(hb), Some(timeout)) = (s.chat.heartbeat, s.chat.heartbeat_timeout) {
                if timeout <= hb {
                    let at = table
                        .iter()
                        .find(|(n, _)| n.get_ref() == "heartbeat_timeout")
                        .map_or(header.clone(), |(n, _)| n.span());
                    self.error(
                        at,
                        Some("chat.heartbeat_timeout".to_string()),
                        format!(
                            "must be longer than heartbeat ({} s), got {} s",
                            hb.as_secs_f64(),
                            timeout.as_secs_f64()
                        ),
                    );
                }
            }
        }
        if self.errors.len() == errors_before {
            let set = |key: &str| table.iter().any(|(n, _)| n.get_ref() == key);
            let blame = |c: &Conflict| {
                let at = table
                    .iter()
                    .find(|(n, _)| n.get_ref() == c.blamed)
                    .map_or(header.clone(), |(n, _)| n.span());
                (at, Some(format!("{section}.{}", c.blamed)))
            };
            if let Some(c) = s.conflict_among(|keys| keys.iter().all(|k| set(k))) {
                let (at, key) = blame(&c);
                self.error(at, key, c.message);
            } else {
                // None among the section's own keys: one with a default is said, not refused.
                let mut merged = s.clone();
                section_defaults(section, &mut merged);
                if let Some(c) = merged.conflict() {
                    let (at, key) = blame(&c);
                    let left = c.keys.iter().copied().filter(|k| !set(k)).collect();
                    let at = self.located(at, key, c.message);
                    self.default_conflicts.push(DefaultConflict {
                        section,
                        at,
                        keys: c.keys,
                        left,
                    });
                }
            }
        }
        s
    }

    fn http_key(&mut self, key: &str, name: &str, value: &Value<'_>, h: &mut HttpFileSettings) {
        const BYTES: &str = "a number of bytes from 0 to 2^53";
        let bytes = |c: &mut Self| c.int(key, value, 0, 1 << 53, BYTES).map(|v| v as u64);
        match name {
            "root" => h.root = self.path(key, value),
            "autoindex" => h.autoindex = self.boolean(key, value),
            "follow_symlinks" => h.follow_symlinks = self.boolean(key, value),
            "serve_hidden" => h.serve_hidden = self.boolean(key, value),
            "gzip_static" => h.gzip_static = self.boolean(key, value),
            "keepalive_timeout" => {
                h.keepalive_timeout = self.secs(key, value, POSITIVE_TIMEOUT);
            }
            "header_timeout" => h.header_timeout = self.secs(key, value, POSITIVE_TIMEOUT),
            "body_timeout" => h.body_timeout = self.secs(key, value, POSITIVE_TIMEOUT),
            "cache_valid" => h.cache_valid = self.secs(key, value, TIMEOUT),
            "keepalive_requests" => {
                h.keepalive_requests = self.count(key, value).map(|v| v as u64);
            }
            "cache_entries" => h.cache_entries = self.count(key, value),
            "max_body" => h.max_body = bytes(self),
            "small_file_max" => h.small_file_max = bytes(self),
            "tee_file_max" => {
                h.tee_file_max = self
                    .int(key, value, 0, TEE_FILE_MAX, TEE_BYTES)
                    .map(|v| v as u64);
            }
            "cache_bytes" => h.cache_bytes = bytes(self),
            "access_log" => {
                h.access_log = self
                    .path(key, value)
                    .map(|p| p.to_string_lossy().into_owned());
            }
            _ => unreachable!("only HTTP_KEYS reach here"),
        }
    }

    /// A non-empty array of backend addresses, each IP:PORT.
    fn backends(&mut self, key: &str, value: &Value<'_>) -> Option<Vec<SocketAddr>> {
        let DeValue::Array(items) = value.get_ref() else {
            let got = describe(value.get_ref());
            let msg = format!("expected an array of \"IP:PORT\" strings, got {got}");
            self.bad(key, value, msg);
            return None;
        };
        if items.is_empty() {
            let msg = "expected at least one backend, got an empty array".to_string();
            self.bad(key, value, msg);
            return None;
        }
        let addrs: Vec<Option<SocketAddr>> = items.iter().map(|v| self.listen(key, v)).collect();
        addrs.into_iter().collect()
    }

    /// A non-empty string naming a file.
    fn path(&mut self, key: &str, value: &Value<'_>) -> Option<PathBuf> {
        match self.string(key, value, "a file path") {
            Some("") => {
                let msg = "expected a file path, got an empty string".to_string();
                self.bad(key, value, msg);
                None
            }
            other => other.map(PathBuf::from),
        }
    }

    fn keepalive(
        &mut self,
        path: &str,
        header: Range<usize>,
        table: &DeTable<'_>,
        s: &mut ServerSettings,
    ) {
        let mut has_idle = false;
        for (name, value) in table {
            let key = format!("{path}.{}", name.get_ref());
            match name.get_ref().as_ref() {
                "idle" => {
                    has_idle = true;
                    s.keepalive_idle = self.secs(&key, value, KEEPALIVE_SECS);
                }
                "interval" => {
                    s.keepalive_interval = self.secs(&key, value, KEEPALIVE_SECS);
                }
                "count" => {
                    s.keepalive_count = self
                        .int(
                            &key,
                            value,
                            1,
                            MAX_KEEPALIVE_COUNT,
                            "an integer from 1 to 127",
                        )
                        .map(|v| v as u32);
                }
                _ => self.error(
                    name.span(),
                    Some(key),
                    format!("unknown key; expected one of {}", KEEPALIVE_KEYS.join(", ")),
                ),
            }
        }
        if !has_idle {
            self.error(
                header,
                Some(path.to_string()),
                "missing key `idle` (seconds of silence before the first probe; it switches \
                 keepalive on)"
                    .to_string(),
            );
        }
    }

    fn string<'v>(&mut self, key: &str, value: &'v Value<'_>, what: &str) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.bad(
                    key,
                    value,
                    format!("expected {what}, got {}", describe(other)),
                );
                None
            }
        }
    }

    /// One of `names`, parsed with the type's `FromStr`.
    fn choice<T: FromStr>(&mut self, key: &str, value: &Value<'_>, names: &[&str]) -> Option<T> {
        let expected = format!("one of {}", names.join(", "));
        let s = self.string(key, value, &format!("a string, {expected}"))?;
        match (names.contains(&s), s.parse()) {
            (true, Ok(v)) => Some(v),
            _ => {
                self.bad(key, value, format!("expected {expected}, got {s:?}"));
                None
            }
        }
    }

    fn listen(&mut self, key: &str, value: &Value<'_>) -> Option<SocketAddr> {
        const WHAT: &str = "IP:PORT (e.g. \"127.0.0.1:7007\", \"[::1]:7007\")";
        let s = self.string(key, value, &format!("a string {WHAT}"))?;
        if let Ok(addr) = s.parse() {
            return Some(addr);
        }
        // Tell a port out of range apart from an address that is not IP:PORT at all.
        let port_out_of_range = s.rsplit_once(':').and_then(|(ip, port)| {
            let ip = ip
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(ip);
            let port: u64 = port.parse().ok()?;
            (ip.parse::<IpAddr>().is_ok() && port > 65535).then_some(port)
        });
        let message = match port_out_of_range {
            Some(port) => {
                format!("port {port} out of range: expected a port from 0 to 65535, got {s:?}")
            }
            None => format!("expected {WHAT}, got {s:?}"),
        };
        self.bad(key, value, message);
        None
    }

    fn boolean(&mut self, key: &str, value: &Value<'_>) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.bad(
                    key,
                    value,
                    format!("expected true or false, got {}", describe(other)),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`; `what` describes the range for the message.
    fn int(
        &mut self,
        key: &str,
        value: &Value<'_>,
        min: i128,
        max: i128,
        what: &str,
    ) -> Option<i128> {
        let message = match value.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(v) if (min..=max).contains(&v) => return Some(v),
                _ => format!("expected {what}, got {i}"),
            },
            other => format!("expected {what}, got {}", describe(other)),
        };
        self.bad(key, value, message);
        None
    }

    /// A positive count that fits in usize (threads, max_conns).
    fn count(&mut self, key: &str, value: &Value<'_>) -> Option<usize> {
        let max = usize::MAX as i128;
        self.int(key, value, 1, max, "an integer of at least 1")
            .map(|v| v as usize)
    }

    /// Seconds in `range`, an integer or a float.
    fn secs(&mut self, key: &str, value: &Value<'_>, range: SecsRange) -> Option<Duration> {
        let what = secs_wanted(range);
        let (v, shown) = match value.get_ref() {
            DeValue::Integer(i) => (
                i128::from_str_radix(i.as_str(), i.radix()).map_or(f64::NAN, |v| v as f64),
                i.to_string(),
            ),
            DeValue::Float(f) => (f.as_str().parse().unwrap_or(f64::NAN), f.to_string()),
            other => {
                self.bad(
                    key,
                    value,
                    format!("expected {what}, got {}", describe(other)),
                );
                return None;
            }
        };
        if secs_in(range, v) {
            Some(Duration::from_secs_f64(v))
        } else {
            self.bad(key, value, format!("expected {what}, got {shown}"));
            None
        }
    }
}

/// A value as a message shows what was found: its type, and the value if it is short.
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

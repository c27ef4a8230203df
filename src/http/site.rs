//! What an HTTP server serves and how: its settings and its opened document root.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::parse::Limits;
use crate::ops::log::AsyncWriter;

/// The HTTP options (command line or the `[http]` section of the config file).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Document root; `None` serves the built-in welcome page.
    pub root: Option<PathBuf>,
    /// List directories without an index.html.
    pub autoindex: bool,
    /// Follow symbolic links, even out of the root (off: a symlink anywhere on the path is 403).
    pub follow_symlinks: bool,
    /// Serve names beginning with '.' (off: 403).
    pub serve_hidden: bool,
    /// Serve `name.gz` for `name` with Content-Encoding: gzip when the client accepts it.
    pub gzip_static: bool,
    /// How long an idle keep-alive connection (or a stalled download) is kept.
    pub keepalive_timeout: Duration,
    /// Requests served on one connection before it is closed (Connection: close on the last).
    pub keepalive_requests: u64,
    /// The whole request head must arrive within this (slowloris): else 408 and close.
    pub header_timeout: Duration,
    /// The longest silence while a request body arrives: else 408 and close.
    pub body_timeout: Duration,
    pub limits: Limits,
    /// Files up to this size are kept in memory with their response head pre-encoded.
    pub small_file_max: u64,
    /// Files sent from disk up to this size have their pages held in a pipe and leave with
    /// `tee` and `splice` instead of `sendfile` (`net::page_pipe`); 0: never.
    pub tee_file_max: u64,
    /// Bytes of file contents the in-memory cache may hold (per thread). Also the most file
    /// pages held in pipes in the whole process, within its share of a quarter of the user's
    /// pipe allowance (`net::page_pipe::budget`).
    pub cache_bytes: u64,
    /// Files (with their metadata) the cache may hold (per thread).
    pub cache_entries: usize,
    /// How many loops (threads) serve this site in one process, each with its own file
    /// cache: together they keep at most a quarter of `RLIMIT_NOFILE` open.
    pub loops: usize,
    /// A cached file is checked against the filesystem again after this long.
    pub cache_valid: Duration,
    /// Access log in the combined format; `None`: off.
    pub access_log: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            root: None,
            autoindex: false,
            follow_symlinks: false,
            serve_hidden: false,
            gzip_static: true,
            keepalive_timeout: Duration::from_secs(75),
            keepalive_requests: 100_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            small_file_max: 16 * 1024,
            tee_file_max: 1 << 20,
            cache_bytes: 64 << 20,
            cache_entries: 4096,
            loops: 1,
            cache_valid: Duration::from_secs(1),
            access_log: None,
        }
    }
}

/// A site ready to serve: settings plus the opened root and log. Shared by every loop.
pub struct Site {
    pub settings: HttpSettings,
    /// The document root, opened once: every file is opened relative to it (openat2 with
    /// RESOLVE_BENEATH), so a path can never name a file outside it, and the server keeps
    /// working after chdir("/") (daemon mode) or a privilege drop.
    pub root: Option<OwnedFd>,
    pub access_log: Option<Arc<AsyncWriter>>,
    /// Distinguishes sites in the per-thread file caches (a reload makes a new one).
    pub id: u64,
}

static NEXT_SITE: AtomicU64 = AtomicU64::new(1);

/// Access logs open in this process, by path. A reload that keeps the path keeps the writer
/// (its thread and queue) and only asks it to reopen the file, as SIGUSR1 does: opening anew
/// would fail after `--user` dropped privileges (root created the file at start), failing the
/// whole reload, and would start one more writer thread per SIGHUP. A reopen that fails is
/// logged and the writer keeps the file it has.
static ACCESS_LOGS: Mutex<Vec<(PathBuf, Weak<AsyncWriter>)>> = Mutex::new(Vec::new());

fn open_access_log(path: &Path) -> io::Result<Arc<AsyncWriter>> {
    let mut logs = ACCESS_LOGS.lock().unwrap_or_else(|e| e.into_inner());
    logs.retain(|(_, w)| w.strong_count() > 0);
    let open = logs
        .iter()
        .find(|(p, _)| p == path)
        .and_then(|(_, w)| w.upgrade());
    if let Some(writer) = open {
        writer.reopen();
        return Ok(writer);
    }
    let writer = AsyncWriter::open(path, 65536)?;
    logs.push((path.to_path_buf(), Arc::downgrade(&writer)));
    Ok(writer)
}

impl Site {
    /// Opens the root directory and the access log; errors name the path.
    pub fn open(settings: HttpSettings) -> io::Result<Arc<Site>> {
        let root = match &settings.root {
            None => None,
            Some(path) => {
                let dir = File::open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("document root {}: {e}", path.display()))
                })?;
                if !dir.metadata()?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("document root {}: not a directory", path.display()),
                    ));
                }
                Some(OwnedFd::from(dir))
            }
        };
        let access_log = match &settings.access_log {
            None => None,
            // The error names the path already ("log file PATH: ...").
            Some(path) => Some(
                open_access_log(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("access log: {e}")))?,
            ),
        };
        Ok(Arc::new(Site {
            settings,
            root,
            access_log,
            id: NEXT_SITE.fetch_add(1, Ordering::Relaxed),
        }))
    }
}

//! Logging the way operators of nginx expect: plain lines with a UTC timestamp, to stderr, a
//! file that logrotate can rotate (`mv` then SIGUSR1), or the local syslog daemon.
//!
//! Event loop threads must never wait for a disk, so file logging goes through an
//! [`AsyncWriter`]: a bounded queue drained by its own thread, which writes many lines with one
//! `write(2)`. When the disk falls behind, lines are dropped and counted ([`dropped_lines`],
//! exported on `/metrics`) instead of stalling the servers.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    File(PathBuf),
    Syslog,
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub target: LogTarget,
    /// `tracing` `EnvFilter` syntax, e.g. `info,keel::net=debug`.
    pub filter: String,
    /// How many lines a file writer may hold before it starts dropping; sized so that a burst
    /// survives a slow disk for a moment, small enough that memory stays bounded.
    pub queue_lines: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            target: LogTarget::Stderr,
            filter: "info".to_string(),
            queue_lines: 8192,
        }
    }
}

/// The syslog socket every Linux system provides (systemd-journald or rsyslog listen on it).
const DEV_LOG: &str = "/dev/log";

/// How long a flush or a stop waits for the writer thread: long enough for a healthy disk,
/// short enough that a hung NFS mount does not hang the process's exit.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Installs the global tracing subscriber: an `EnvFilter` and a fmt layer without ANSI colours
/// (logs end up in files and journals, not only terminals), each event as
/// `TIMESTAMP LEVEL target: message` with an RFC 3339 UTC timestamp.
///
/// Stderr is written from the thread that logs (it is a terminal or journald's socket, and a
/// daemon's stderr is /dev/null), but never waits on it for long: a reader that stopped
/// reading costs a line 50 ms once, then lines are dropped and counted until it reads again
/// (`ops::stderr`). A file goes through an [`AsyncWriter`]. Syslog sends one RFC 3164 datagram
/// per event to `/dev/log` (facility daemon, severity from the level, no timestamp: the
/// daemon adds its own).
///
/// Errors: an invalid filter, a file that cannot be opened, a missing `/dev/log`, or a second
/// call (the global subscriber can be set once per process).
pub fn init(settings: &LogSettings) -> io::Result<LogGuard> {
    let filter = parse_filter(&settings.filter)?;
    match &settings.target {
        LogTarget::Stderr => {
            install(filter, crate::ops::stderr::BoundedStderr, true)?;
            Ok(LogGuard { writer: None })
        }
        LogTarget::File(path) => {
            let writer = AsyncWriter::open(path, settings.queue_lines)?;
            install(filter, writer.clone(), true)?;
            Ok(LogGuard {
                writer: Some(writer),
            })
        }
        LogTarget::Syslog => {
            let sink = SyslogSink::connect(Path::new(DEV_LOG))?;
            install(filter, sink, false)?;
            Ok(LogGuard { writer: None })
        }
    }
}

fn parse_filter(filter: &str) -> io::Result<EnvFilter> {
    EnvFilter::try_new(filter).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("log filter `{filter}`: {e}"),
        )
    })
}

fn install<W>(filter: EnvFilter, writer: W, timestamps: bool) -> io::Result<()>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(true)
        .with_writer(writer);
    let registry = tracing_subscriber::registry().with(filter);
    let res = if timestamps {
        tracing::subscriber::set_global_default(registry.with(layer))
    } else {
        tracing::subscriber::set_global_default(registry.with(layer.without_time()))
    };
    res.map_err(|_| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "logging is already initialised in this process (log::init called twice)",
        )
    })
}

/// Keeps the file writer alive for the program's run; dropping it writes out what is queued
/// (waiting up to about a second) and stops the writer thread, so the last lines before exit
/// are not lost. Lines logged after that are dropped.
#[must_use = "dropping the guard stops file logging"]
pub struct LogGuard {
    writer: Option<Arc<AsyncWriter>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.shared.stop();
        }
    }
}

/// Lines dropped by every writer of the process, alive or gone (a counter must not go down
/// when a writer is closed).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Every writer opened in this process, for [`reopen_all`] and [`after_fork`]. Weak, so that
/// a closed writer is not kept alive by being registered.
static REGISTRY: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

fn registered() -> Vec<Arc<Shared>> {
    let mut reg = lock(&REGISTRY);
    reg.retain(|w| w.strong_count() > 0);
    reg.iter().filter_map(Weak::upgrade).collect()
}

/// Lock that survives a panic elsewhere: a log queue half-written by a panicking thread is
/// still a valid queue, and logging must keep working while a panic is being reported.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What SIGUSR1 does: every [`AsyncWriter`] of the process (error log, access logs) reopens
/// its path, so after logrotate's `mv keel.log keel.log.1; kill -USR1 pid` new lines go to a
/// fresh `keel.log`. Only raises flags and wakes the writer threads: safe from any thread,
/// never waits for a disk.
pub fn reopen_all() {
    for w in registered() {
        w.request_reopen();
    }
}

/// Gives every log file the process writes (error log, access logs) to `uid`/`gid`, as the
/// server is about to give up root for them (nginx does the same): files it created as root
/// would otherwise stay root's, so the server could not reopen them after a rotation, and
/// logrotate's `create` (which copies the old file's owner) would make the new ones root's
/// too. Regular files only (not a terminal or /dev/null behind stderr); a failure is said
/// and the server goes on, writing to the file it holds.
pub fn give_files_to(uid: u32, gid: u32) {
    for w in registered() {
        let file = Arc::clone(&lock(&w.state).file);
        let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
        if !regular {
            continue;
        }
        let owner = Some(rustix::process::Uid::from_raw(uid));
        let group = Some(rustix::process::Gid::from_raw(gid));
        if let Err(e) = rustix::fs::fchown(&*file, owner, group) {
            tracing::warn!(
                "cannot give log file {} to the user the server runs as ({e}): it may not be \
                 able to reopen it after a rotation",
                w.path.display()
            );
        }
    }
}

/// Writes out what every writer of the process has queued (each waits about a second at
/// most): for a process about to `_exit`, which runs no destructors.
pub fn flush_all() {
    for w in registered() {
        w.flush(Instant::now() + FLUSH_WAIT);
    }
}

/// Lines dropped because a queue was full or a write failed, summed over every writer of the
/// process (and syslog datagrams the daemon could not take), for `/metrics`.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writer threads ended for a fork by [`park_for_fork`]; give it to [`unpark`] in the parent.
#[must_use = "the writers stay without a thread until unparked"]
pub struct Parked(Vec<Arc<Shared>>);

/// Before a `fork`: writes out every writer's queue and ends its thread (waiting about a
/// second at most), so that the process can be single-threaded when it forks, as a child that
/// runs ordinary code needs (no lock held by a thread the child does not have). The writers
/// stay usable: a line queued meanwhile waits for the next thread. In the parent, [`unpark`]
/// starts the threads again; a child calls [`after_fork`], as it must anyway.
pub fn park_for_fork() -> Parked {
    Parked(registered().into_iter().filter(|w| w.park()).collect())
}

/// After a fork, in the parent: a new thread for each writer [`park_for_fork`] ended.
pub fn unpark(parked: Parked) {
    for w in parked.0 {
        w.unpark();
    }
}

/// To call in a forked child (prefork workers) before it logs: threads do not survive
/// `fork`, so each writer gets a new thread in this process. Lines the parent had queued are
/// the parent's to write, so the child forgets them instead of writing them a second time.
/// Writers already running in this process are left alone, so a stray call does no harm.
pub fn after_fork() {
    for w in registered() {
        w.restart_in_child();
    }
}

/// A bounded, non-blocking line writer for a log file.
///
/// Callers (event loop threads) only copy the line into a queue under a short lock; a
/// dedicated thread swaps the whole queue out and writes it with one `write(2)`, so a burst of
/// lines costs one system call, and a slow disk delays no one. A full queue drops the line and
/// counts it.
pub struct AsyncWriter {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    capacity: usize,
    state: Mutex<State>,
    /// Wakes the writer thread: lines arrived in an empty queue, reopen, stop, unpause.
    wake: Condvar,
    /// Wakes flushers: a batch was written, or the thread exited.
    progress: Condvar,
    dropped: AtomicU64,
    /// This process's writer thread, joined by `park` so that it is gone before a fork.
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

struct State {
    /// Queued lines, each ending in '\n', back to back: ready for one write.
    buf: Vec<u8>,
    lines: usize,
    /// Lines accepted since open; with `done`, what a flush waits for.
    queued: u64,
    /// Lines the writer thread is finished with (written, or lost to a write error).
    done: u64,
    file: Arc<File>,
    reopen: bool,
    stop: bool,
    exited: bool,
    /// Test hook: the thread takes no lines while set, to fill the queue deterministically.
    paused: bool,
    /// Set by `park` (before a fork): the thread ends, leaving the queue to the next one.
    parked: bool,
    /// The process whose writer thread drains this queue (after a fork, a child's is not
    /// running until `after_fork`).
    owner: u32,
    /// Which writer thread is the current one: a thread that finds it changed leaves
    /// without touching the queue (only possible when `after_fork` runs without a fork).
    generation: u64,
}

fn open_log_file(path: &Path) -> io::Result<File> {
    if path == Path::new("/dev/stderr") {
        // fd 2 itself, not a second open of it: a second open has an offset of its own, and
        // where stderr is a file opened without O_APPEND (`keel http > log`) the two would
        // write over each other's lines.
        use std::os::fd::AsFd;
        return io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
            .map_err(|e| io::Error::new(e.kind(), format!("log to stderr: {e}")));
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))
}

impl AsyncWriter {
    /// Opens `path` for appending (created with mode 0640: logs can hold client addresses and
    /// URLs) and starts its writer thread. At most `capacity_lines` lines wait in the queue.
    pub fn open(path: &Path, capacity_lines: usize) -> io::Result<Arc<AsyncWriter>> {
        let file = open_log_file(path)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            capacity: capacity_lines.max(1),
            state: Mutex::new(State {
                buf: Vec::new(),
                lines: 0,
                queued: 0,
                done: 0,
                file: Arc::new(file),
                reopen: false,
                stop: false,
                exited: false,
                paused: false,
                parked: false,
                owner: std::process::id(),
                generation: 0,
            }),
            wake: Condvar::new(),
            progress: Condvar::new(),
            dropped: AtomicU64::new(0),
            thread: Mutex::new(None),
        });
        spawn_writer(&shared, 0)?;
        lock(&REGISTRY).push(Arc::downgrade(&shared));
        Ok(Arc::new(AsyncWriter { shared }))
    }

    /// Queues one line ('\n' appended if missing). Never blocks on the disk; false when the
    /// line was dropped (queue full, or the writer stopped).
    pub fn write_line(&self, line: &[u8]) -> bool {
        self.shared.write_line(line)
    }

    /// Reopens the path (after the file was renamed away) before the next batch is written.
    pub fn reopen(&self) {
        self.shared.request_reopen();
    }

    /// Lines this writer dropped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line queued before the call is written, at most about a second (a
    /// stuck disk must not hang a shutdown).
    pub fn flush(&self) {
        self.shared.flush(Instant::now() + FLUSH_WAIT);
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    #[cfg(test)]
    fn set_paused(&self, on: bool) {
        lock(&self.shared.state).paused = on;
        self.shared.wake.notify_all();
    }
}

impl Drop for AsyncWriter {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl std::fmt::Debug for AsyncWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncWriter")
            .field("path", &self.shared.path)
            .field("capacity", &self.shared.capacity)
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// The fmt layer hands each formatted event to its writer with one `write_all`, and this
/// accepts every `write` whole: one event, one queued line.
impl Write for &AsyncWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lets the subscriber write into the queue directly (`Arc<AsyncWriter>` is then a
/// `MakeWriter` too, through tracing-subscriber's impl for `Arc`).
impl<'a> MakeWriter<'a> for AsyncWriter {
    type Writer = &'a AsyncWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Counts lines dropped outside a writer (stderr that stayed full: `ops::stderr`).
pub(crate) fn count_dropped_lines(n: u64) {
    DROPPED.fetch_add(n, Ordering::Relaxed);
}

fn count_dropped(own: &AtomicU64, n: u64) {
    own.fetch_add(n, Ordering::Relaxed);
    DROPPED.fetch_add(n, Ordering::Relaxed);
}

impl Shared {
    fn write_line(&self, line: &[u8]) -> bool {
        let mut st = lock(&self.state);
        if st.stop || st.lines >= self.capacity {
            drop(st);
            count_dropped(&self.dropped, 1);
            return false;
        }
        st.buf.extend_from_slice(line);
        if line.last() != Some(&b'\n') {
            st.buf.push(b'\n');
        }
        st.lines += 1;
        st.queued += 1;
        // The thread sleeps only on an empty queue: the first line is the only one to wake it.
        let first = st.lines == 1;
        drop(st);
        if first {
            self.wake.notify_one();
        }
        true
    }

    fn request_reopen(&self) {
        lock(&self.state).reopen = true;
        self.wake.notify_one();
    }

    fn flush(&self, deadline: Instant) {
        let st = lock(&self.state);
        let target = st.queued;
        drop(self.wait_until(st, deadline, |st| st.done >= target || st.exited));
    }

    /// Waits on `progress` until `done(state)`, the deadline, or the writer thread belonging
    /// to another process (after fork nobody would ever signal this one).
    fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
        done: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        while !done(&st) && st.owner == std::process::id() {
            let now = Instant::now();
            if now >= deadline {
                return st;
            }
            st = self
                .progress
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st
    }

    /// Writes out what is queued, then ends the thread; both bounded by one deadline.
    fn stop(&self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        self.flush(deadline);
        let mut st = lock(&self.state);
        st.stop = true;
        self.wake.notify_all();
        drop(self.wait_until(st, deadline, |st| st.exited));
    }

    /// Ends this process's writer thread for a fork, once the queue is written. False if
    /// there was no thread to end (stopped, or another process's), or it did not end in time
    /// (it is then left running, and the fork will refuse for want of a single thread).
    fn park(&self) -> bool {
        let deadline = Instant::now() + FLUSH_WAIT;
        self.flush(deadline);
        let mut st = lock(&self.state);
        if st.stop || st.exited || st.parked || st.owner != std::process::id() {
            return false;
        }
        st.parked = true;
        self.wake.notify_all();
        let mut st = self.wait_until(st, deadline, |st| st.exited);
        if !st.exited {
            st.parked = false;
            return false;
        }
        drop(st);
        // It has left its loop; joining makes sure it is gone from the process too.
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        true
    }

    /// A new writer thread after `park`, in the process that parked it.
    fn unpark(self: &Arc<Self>) {
        let generation = {
            let mut st = lock(&self.state);
            if !st.parked {
                return;
            }
            st.parked = false;
            st.exited = false;
            // `daemonize` forks and carries on in the grandchild: the queue is its now.
            st.owner = std::process::id();
            st.generation += 1;
            st.generation
        };
        if let Err(e) = spawn_writer(self, generation) {
            let _ = writeln!(
                io::stderr(),
                "keel: log writer for {}: {e}",
                self.path.display()
            );
        }
    }

    fn restart_in_child(self: &Arc<Self>) {
        let pid = std::process::id();
        let generation = {
            let mut st = lock(&self.state);
            if st.owner == pid || st.stop {
                return;
            }
            st.owner = pid;
            st.buf.clear();
            st.lines = 0;
            st.done = st.queued;
            st.exited = false;
            st.parked = false;
            st.generation += 1;
            st.generation
        };
        self.wake.notify_all();
        if let Err(e) = spawn_writer(self, generation) {
            // Logging is down in this child: nothing to log it to but stderr.
            let _ = writeln!(
                io::stderr(),
                "keel: log writer for {}: {e}",
                self.path.display()
            );
        }
    }
}

fn spawn_writer(shared: &Arc<Shared>, generation: u64) -> io::Result<()> {
    let s = Arc::clone(shared);
    let handle = thread::Builder::new()
        .name("keel-log".into())
        .spawn(move || writer_thread(&s, generation))?;
    // A handle left from before a fork names a thread of the parent: never join or detach it.
    if let Some(old) = lock(&shared.thread).replace(handle) {
        std::mem::forget(old);
    }
    Ok(())
}

fn writer_thread(s: &Shared, generation: u64) {
    let mut batch = Vec::new();
    loop {
        let (file, n, reopen) = {
            let mut st = lock(&s.state);
            loop {
                if st.generation != generation {
                    return;
                }
                if st.parked {
                    // Parked for a fork (the queue was written just before): end here.
                    st.exited = true;
                    s.progress.notify_all();
                    return;
                }
                let has_lines = st.lines > 0 && (!st.paused || st.stop);
                if has_lines || st.reopen || st.stop {
                    break;
                }
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stop && st.lines == 0 {
                st.exited = true;
                s.progress.notify_all();
                return;
            }
            let n = if st.paused && !st.stop { 0 } else { st.lines };
            if n > 0 {
                std::mem::swap(&mut st.buf, &mut batch);
                st.lines = 0;
            }
            let reopen = std::mem::take(&mut st.reopen);
            (Arc::clone(&st.file), n, reopen)
        };
        // Reopen first: lines that arrive after `mv` + SIGUSR1 belong in the new file.
        let file = if reopen {
            match open_log_file(&s.path) {
                Ok(f) => {
                    let f = Arc::new(f);
                    lock(&s.state).file = Arc::clone(&f);
                    f
                }
                Err(e) => {
                    // Through the server log, which may be this very writer: the line is only
                    // queued (never waited for), and lands in the old file it keeps writing.
                    // Under --daemon stderr is /dev/null, so stderr alone would say nothing;
                    // and the old file may be gone (its directory removed), so the line goes
                    // to stderr too, where a supervisor collects it.
                    tracing::warn!("reopening {e}; still writing to the old file");
                    // Not eprintln!: it panics on a closed stderr, which would end this thread.
                    let _ = writeln!(
                        io::stderr(),
                        "keel: reopening {e}; still writing to the old file"
                    );
                    file
                }
            }
        } else {
            file
        };
        if !batch.is_empty() {
            if (&*file).write_all(&batch).is_err() {
                count_dropped(&s.dropped, n as u64);
            }
            batch.clear();
            // One burst should not pin a large buffer for the rest of the run.
            if batch.capacity() > 1 << 20 {
                batch = Vec::new();
            }
        }
        let mut st = lock(&s.state);
        st.done += n as u64;
        drop(st);
        s.progress.notify_all();
    }
}

/// Facility "daemon" (RFC 3164 section 4.1.1).
const FACILITY_DAEMON: u8 = 3;

/// RFC 3164 severities from tracing levels (debug and trace both map to debug).
fn syslog_severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// One syslog datagram: `<PRI>keel[pid]: msg`. The local daemon stamps time and host itself,
/// as it does for glibc's `syslog(3)`; a trailing newline would show up as an empty line.
fn syslog_datagram(level: &Level, pid: u32, msg: &[u8]) -> Vec<u8> {
    let pri = FACILITY_DAEMON * 8 + syslog_severity(level);
    let mut msg = msg;
    while let Some((b'\n' | b'\r', rest)) = msg.split_last() {
        msg = rest;
    }
    let mut d = format!("<{pri}>keel[{pid}]: ").into_bytes();
    d.extend_from_slice(msg);
    d
}

/// The connection to the syslog daemon's datagram socket.
struct SyslogSink {
    path: PathBuf,
    sock: Mutex<UnixDatagram>,
}

impl SyslogSink {
    fn connect(path: &Path) -> io::Result<SyslogSink> {
        let sock = Self::socket(path)?;
        Ok(SyslogSink {
            path: path.to_path_buf(),
            sock: Mutex::new(sock),
        })
    }

    /// Non-blocking, so that a syslog daemon that stops reading makes us drop lines, not
    /// stall event loops.
    fn socket(path: &Path) -> io::Result<UnixDatagram> {
        let err =
            |e: io::Error| io::Error::new(e.kind(), format!("syslog {}: {e}", path.display()));
        let sock = UnixDatagram::unbound().map_err(err)?;
        sock.connect(path).map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        Ok(sock)
    }

    fn send(&self, datagram: &[u8]) {
        let mut sock = lock(&self.sock);
        match sock.send(datagram) {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The daemon restarted (ECONNREFUSED, ENOTCONN): its socket is a new one.
            Err(_) => {
                if let Ok(s) = Self::socket(&self.path) {
                    *sock = s;
                    if sock.send(datagram).is_ok() {
                        return;
                    }
                }
            }
        }
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// One event's writer: knows the event's level, which becomes the datagram's severity.
struct SyslogEvent<'a> {
    sink: &'a SyslogSink,
    level: Level,
}

impl Write for SyslogEvent<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let d = syslog_datagram(&self.level, std::process::id(), buf);
        self.sink.send(&d);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SyslogSink {
    type Writer = SyslogEvent<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogEvent {
            sink: self,
            level: Level::INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogEvent {
            sink: self,
            level: *meta.level(),
        }
    }
}

/// A name no other test (or test process) uses, for files under the temp directory.
#[cfg(test)]
fn unique_temp_path(tag: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "keel-log-{tag}-{}-{n}-{nanos:x}",
        std::process::id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(Vec<PathBuf>);

    impl Drop for TempFile {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn lines_arrive_in_order_and_whole() {
        let path = unique_temp_path("order");
        let _clean = TempFile(vec![path.clone()]);
        let w = AsyncWriter::open(&path, 100_000).unwrap();
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let w = Arc::clone(&w);
                thread::spawn(move || {
                    for i in 0..2000 {
                        assert!(w.write_line(
                            format!("t{t} line {i:05} {}", "x".repeat(i % 50)).as_bytes()
                        ));
                    }
                })
            })
            .collect();
        for t in writers {
            t.join().unwrap();
        }
        assert!(w.write_line(b"already terminated\n"));
        w.flush();
        let text = read(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8001);
        assert_eq!(*lines.last().unwrap(), "already terminated");
        for t in 0..4 {
            let prefix = format!("t{t} ");
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&prefix))
                .collect();
            assert_eq!(mine.len(), 2000);
            for (i, l) in mine.iter().enumerate() {
                assert_eq!(*l, format!("t{t} line {i:05} {}", "x".repeat(i % 50)));
            }
        }
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let path = unique_temp_path("full");
        let _clean = TempFile(vec![path.clone()]);
        let w = AsyncWriter::open(&path, 4).unwrap();
        w.set_paused(true);
        let before = dropped_lines();
        let start = Instant::now();
        let accepted: Vec<bool> = (0..10)
            .map(|i| w.write_line(format!("l{i}").as_bytes()))
            .collect();
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "write_line blocked"
        );
        assert_eq!(
            accepted,
            [true, true, true, true, false, false, false, false, false, false]
        );
        assert_eq!(w.dropped(), 6);
        assert!(dropped_lines() >= before + 6);
        w.set_paused(false);
        w.flush();
        assert_eq!(read(&path), "l0\nl1\nl2\nl3\n");
        // Room again once the thread has drained the queue.
        assert!(w.write_line(b"after"));
        w.flush();
        assert_eq!(read(&path), "l0\nl1\nl2\nl3\nafter\n");
    }

    #[test]
    fn reopen_after_rename_starts_a_fresh_file() {
        let path = unique_temp_path("rotate");
        let rotated = path.with_extension("1");
        let _clean = TempFile(vec![path.clone(), rotated.clone()]);
        let w = AsyncWriter::open(&path, 64).unwrap();
        w.write_line(b"old 1");
        w.write_line(b"old 2");
        w.flush();
        std::fs::rename(&path, &rotated).unwrap();
        reopen_all();
        w.write_line(b"new 1");
        w.flush();
        assert_eq!(read(&rotated), "old 1\nold 2\n");
        assert_eq!(read(&path), "new 1\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o} wider than 0640");
    }

    /// What a fork needs: after `park_for_fork` the writer's thread is gone (joined), lines
    /// written meanwhile wait, and `unpark` brings a thread back that writes them.
    #[test]
    fn parked_for_a_fork_the_thread_is_gone_and_comes_back() {
        let path = unique_temp_path("park");
        let _clean = TempFile(vec![path.clone()]);
        let w = AsyncWriter::open(&path, 64).unwrap();
        w.write_line(b"before");
        let alive = |w: &AsyncWriter| {
            lock(&w.shared.thread)
                .as_ref()
                .is_some_and(|t| !t.is_finished())
        };
        assert!(alive(&w));
        let parked = park_for_fork();
        assert!(
            parked.0.iter().any(|p| Arc::ptr_eq(p, &w.shared)),
            "the writer was not parked"
        );
        assert!(!alive(&w), "the writer thread is still there");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\n");
        assert!(w.write_line(b"while parked"));
        unpark(parked);
        assert!(alive(&w));
        w.write_line(b"after");
        w.flush();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "before\nwhile parked\nafter\n"
        );
    }

    #[test]
    fn dropping_the_writer_writes_what_is_queued() {
        let path = unique_temp_path("drop");
        let _clean = TempFile(vec![path.clone()]);
        let w = AsyncWriter::open(&path, 64).unwrap();
        for i in 0..10 {
            w.write_line(format!("{i}").as_bytes());
        }
        drop(w);
        assert_eq!(read(&path).lines().count(), 10);
    }

    #[test]
    fn open_error_names_the_path() {
        let path = unique_temp_path("nodir").join("sub").join("keel.log");
        let e = AsyncWriter::open(&path, 8).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let settings = LogSettings {
            target: LogTarget::File(path.clone()),
            ..LogSettings::default()
        };
        let e = init(&settings).err().unwrap();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn invalid_filter_is_an_error_naming_it() {
        let settings = LogSettings {
            filter: "info,keel=loudest".into(),
            ..LogSettings::default()
        };
        let e = init(&settings).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .starts_with("log filter `info,keel=loudest`: "),
            "{e}"
        );
    }

    #[test]
    fn syslog_datagram_format() {
        assert_eq!(
            syslog_datagram(&Level::ERROR, 42, b"disk on fire\n"),
            b"<27>keel[42]: disk on fire"
        );
        assert_eq!(syslog_datagram(&Level::WARN, 7, b"w"), b"<28>keel[7]: w");
        assert_eq!(
            syslog_datagram(&Level::INFO, 7, b"i\r\n"),
            b"<30>keel[7]: i"
        );
        assert_eq!(syslog_datagram(&Level::DEBUG, 7, b"d"), b"<31>keel[7]: d");
        assert_eq!(syslog_datagram(&Level::TRACE, 7, b"t"), b"<31>keel[7]: t");
    }

    #[test]
    fn syslog_sink_sends_one_datagram_per_event() {
        let path = unique_temp_path("syslog");
        let _clean = TempFile(vec![path.clone()]);
        let daemon = UnixDatagram::bind(&path).unwrap();
        daemon
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sink = SyslogSink::connect(&path).unwrap();
        let mut ev = SyslogEvent {
            sink: &sink,
            level: Level::WARN,
        };
        ev.write_all(b"WARN keel::net: slow client\n").unwrap();
        let mut buf = [0u8; 512];
        let n = daemon.recv(&mut buf).unwrap();
        let expect = format!(
            "<28>keel[{}]: WARN keel::net: slow client",
            std::process::id()
        );
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), expect);

        let missing = unique_temp_path("no-dev-log");
        let e = SyslogSink::connect(&missing).err().unwrap();
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }

    /// The one test that installs the global subscriber (it can be set once per process).
    #[test]
    fn init_to_a_file_writes_formatted_lines() {
        let path = unique_temp_path("init");
        let _clean = TempFile(vec![path.clone()]);
        let settings = LogSettings {
            target: LogTarget::File(path.clone()),
            filter: "info,keel::ops::log::quiet=warn".into(),
            queue_lines: 1024,
        };
        let guard = match init(&settings) {
            Ok(g) => g,
            // Someone else in this test process got there first: then the refusal is the test.
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
                return;
            }
        };
        let again = init(&LogSettings::default()).err().unwrap();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);

        tracing::info!(target: "keel::ops::log::test", "hello {} from the test", 42);
        tracing::info!(target: "keel::ops::log::quiet", "filtered out");
        tracing::warn!(target: "keel::ops::log::quiet", peer = "10.0.0.1", "kept");
        tracing::debug!(target: "keel::ops::log::test", "below the level");
        drop(guard);

        let text = read(&path);
        assert!(
            !text.contains('\x1b'),
            "ANSI escapes in a log file: {text:?}"
        );
        let hello = text
            .lines()
            .find(|l| l.contains("hello 42 from the test"))
            .unwrap_or_else(|| panic!("missing line in {text:?}"));
        // 2025-01-02T03:04:05.678901Z  INFO keel::ops::log::test: hello 42 from the test
        let (ts, rest) = hello.split_once(' ').unwrap();
        let b = ts.as_bytes();
        assert!(
            ts.ends_with('Z') && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':',
            "{ts}"
        );
        assert_eq!(
            rest.trim_start(),
            "INFO keel::ops::log::test: hello 42 from the test"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("WARN keel::ops::log::quiet: kept peer=\"10.0.0.1\"")),
            "{text:?}"
        );
        assert!(
            !text.contains("filtered out") && !text.contains("below the level"),
            "{text:?}"
        );
    }

    /// What a prefork child sees: the writer's thread is gone (here: belongs to another
    /// "process") with lines queued. `after_fork` gives it a thread again and forgets those
    /// lines, which are the parent's to write. A real fork needs `unsafe` (nix's `fork`), so
    /// the fork is simulated by changing the owner pid; the old thread stands in for the
    /// parent's and must leave without writing.
    #[test]
    fn after_fork_restarts_the_writer_without_the_parents_lines() {
        let path = unique_temp_path("fork");
        let _clean = TempFile(vec![path.clone()]);
        let w = AsyncWriter::open(&path, 64).unwrap();
        w.set_paused(true);
        assert!(w.write_line(b"parent queued"));
        {
            let mut st = lock(&w.shared.state);
            st.owner = st.owner.wrapping_add(1);
        }
        after_fork();
        // Whenever the old thread wakes now, it finds itself replaced and leaves.
        w.set_paused(false);
        assert!(w.write_line(b"child line"));
        w.flush();
        assert_eq!(read(&path), "child line\n");
        // A second call in the same process changes nothing.
        after_fork();
        assert!(w.write_line(b"child again"));
        w.flush();
        assert_eq!(read(&path), "child line\nchild again\n");
        assert_eq!(w.dropped(), 0);
    }
}

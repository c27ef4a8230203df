//! Process control the safe crates leave out or leave `unsafe`: forking a child that never
//! returns into its parent's code, reaping children, and counters in memory shared with them.
//!
//! What makes `fork` hard to use soundly, and how this module answers it:
//!
//! - In a process with several threads, the child gets a copy of memory in which another
//!   thread may have held a lock (the allocator's, stdout's): the child may only call
//!   async-signal-safe functions. [`fork_child`] refuses to fork unless the process has exactly
//!   one thread, so the child may run ordinary Rust code.
//! - The child holds a copy of every object of the parent, and with them the parent's fds. If
//!   the child returned into the parent's code path it would run the parent's logic twice (and
//!   drop the parent's objects: close its fds, flush its buffers). [`fork_child`] runs the
//!   child's closure and then ends the process with `_exit`, which runs no destructor: the
//!   parent's copies are never used again, so the child may take ownership of (or close) fds
//!   that a parent object owns, through [`Child`]. Only the fds the parent lent to
//!   [`fork_child`] (borrowed from their owners at the fork) can be claimed: not one the child's
//!   closure owns, nor one the child opened after the fork, whose owners are alive in the child.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

pub use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
pub use nix::unistd::Pid;

/// Set for good once this process has forked a child with [`fork_child`] (and so inherited
/// by every child): from then on an open file may be held by several processes.
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Incremented in every child [`fork_child`] makes: state that must not cross a fork (a
/// pool of pipes in use) records it, and finds it changed in a child.
static FORK_GENERATION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// This process's place in its line of forks (see [`FORK_GENERATION`]): different in a child
/// from what it was in the parent when it forked.
pub fn fork_generation() -> u32 {
    FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether this process's fds may be shared with another process (it forked children, or is
/// one). An epoll registration lives as long as the open file, not the fd: once a file is
/// shared, closing our fd no longer removes it from our epoll set, and it must be deleted
/// explicitly (see `Poller::deregister_before_close`).
pub fn fds_may_be_shared() -> bool {
    FORKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The number of threads of this process (from `/proc/self/stat`).
pub fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unexpected /proc/self/stat"))?;
    // Fields after the name start at 3 (state); num_threads is field 20.
    rest.split_whitespace()
        .nth(20 - 3)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other("unexpected /proc/self/stat"))
}

/// The thread count, once it has settled at one (or after a short wait, the count then).
///
/// A thread just joined may still be counted: `pthread_join` returns when the kernel clears
/// the thread's tid, early in its exit, and the task leaves the thread group's count a little
/// later. Read at once after the log writer is parked for a fork, the count said 2 often
/// enough to refuse a connection in every few thousand under process-per-conn. A thread that
/// is really alive still keeps the count above one, and the caller refuses to fork.
fn settled_thread_count() -> io::Result<usize> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    loop {
        let n = thread_count()?;
        if n == 1 || std::time::Instant::now() >= deadline {
            return Ok(n);
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// What a child may do with what it inherited from its parent. Only [`fork_child`] makes one,
/// in the child, whose parent-side objects are never used or dropped (the child ends with
/// `_exit`): that is what makes taking or closing their fds sound.
pub struct Child {
    parent: Pid,
    /// The fds the parent lent to [`fork_child`]: the only ones that may be claimed.
    inherited: Vec<RawFd>,
    claimed: Vec<RawFd>,
    /// The claimed fds that were closed (not handed out).
    closed: Vec<RawFd>,
}

impl Child {
    fn claim(&mut self, fd: RawFd) {
        assert!(
            fd > 2 && self.inherited.contains(&fd) && !self.claimed.contains(&fd),
            "fd {fd} was not lent to fork_child, was claimed twice, or is a standard stream"
        );
        self.claimed.push(fd);
    }

    /// Takes ownership of `fd`, an fd the child inherited from the parent (a listener, say).
    ///
    /// # Panics
    ///
    /// If `fd` was not lent to [`fork_child`], was taken or closed already through this
    /// `Child`, or is 0, 1 or 2.
    pub fn take_inherited(&mut self, fd: RawFd) -> OwnedFd {
        self.claim(fd);
        // SAFETY: `claim` checked that `fd` is one the parent lent to `fork_child` as a
        // `BorrowedFd`, so it was open at the fork (which copies the fd table) and its owner is
        // an object of the parent, not of the child's closure (which could not own it while it
        // was borrowed) nor one the child opened since. That object lives on only in the
        // parent's copied memory, which the child never uses nor drops (it ends with `_exit`),
        // and `claim` hands each fd out once.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// Closes `fd`, inherited from the parent, which the child does not need. Closing one
    /// this `Child` closed already does nothing (the parent's loop fds are closed wholesale,
    /// [`Child::close_all_inherited`], and a caller may name one of them again).
    ///
    /// # Panics
    ///
    /// If `fd` was not lent to [`fork_child`], was taken (not closed) through this `Child`, or
    /// is 0, 1 or 2.
    pub fn close_inherited(&mut self, fd: RawFd) {
        if self.closed.contains(&fd) {
            return;
        }
        drop(self.take_inherited(fd));
        self.closed.push(fd);
    }

    /// Closes each of `fds` (the parent's event loop, [`crate::reactor::EventLoop::fds`])
    /// that this `Child` has not taken; standard streams are left alone.
    pub fn close_all_inherited(&mut self, fds: &[RawFd]) {
        for &fd in fds {
            if fd > 2 && !self.claimed.contains(&fd) {
                self.close_inherited(fd);
            }
        }
    }

    /// Asks the kernel to send `sig` to this child when its parent dies, so that workers do
    /// not outlive a master killed with SIGKILL. Returns false (and the caller should exit) if
    /// the parent died already, before the request was made.
    pub fn die_with_parent(&mut self, sig: Signal) -> bool {
        if nix::sys::prctl::set_pdeathsig(sig).is_err() {
            return true; // not fatal: the child just will not follow its parent
        }
        nix::unistd::getppid() == self.parent
    }
}

/// Forks a child that runs `child` and then exits with the code it returns (101 if it
/// panicked), flushing stdout first; in the parent, returns the child's pid. The child never
/// returns from this call, so it never runs the parent's code path nor its destructors.
///
/// `inherited` are the parent's fds the child may take over or close through [`Child`]; their
/// owners stay with the parent (the closure is `'static`, so it cannot reach them either).
///
/// Refused (with an error) if the process has more than one thread: see the module doc.
/// The closure is dropped in the parent, so what it owns (an accepted socket meant for the
/// child) is closed there right after the fork.
pub fn fork_child(
    inherited: &[BorrowedFd<'_>],
    child: impl FnOnce(&mut Child) -> i32 + 'static,
) -> io::Result<Pid> {
    let threads = settled_thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork: the process has {threads} threads (fork is only safe with one)"
        )));
    }
    let parent = nix::unistd::getpid();
    FORKED.store(true, std::sync::atomic::Ordering::Relaxed); // before: the child inherits it
                                                              // Anything still buffered would otherwise be written twice: by the parent and the child.
    let _ = io::stdout().flush();
    // SAFETY: the process has a single thread (checked just above, and no thread can start
    // between the check and the fork since we are that thread), so the child inherits no lock
    // held by another thread. A lock this thread holds now would stay held in the child: the
    // callers fork from their event loop holding none (stdout is flushed, not locked, above).
    // The child branch below never returns.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child: pid } => Ok(pid),
        nix::unistd::ForkResult::Child => {
            FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut cx = Child {
                parent,
                inherited: inherited.iter().map(|fd| fd.as_raw_fd()).collect(),
                claimed: Vec::new(),
                closed: Vec::new(),
            };
            let code = std::panic::catch_unwind(AssertUnwindSafe(|| child(&mut cx))).unwrap_or(101);
            exit_now(code)
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads, and the same in every process
/// (so a deadline kept in [`SharedCounters`] means the same in a forked child).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Ends the process at once with `code`, after flushing stdout and stderr, without running
/// destructors or atexit handlers (what a forked child must do).
pub fn exit_now(code: i32) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: `_exit` is always safe to call; it ends the process without touching memory.
    unsafe { libc::_exit(code) }
}

/// How a child ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "status {c}"),
            Exit::Signal(s) => write!(f, "signal {}", *s as i32),
        }
    }
}

/// Reaps one child that has ended, without blocking: `None` when no child is left to reap
/// now (none ended, or no child at all). Call it until `None` on every SIGCHLD: signals of
/// one kind coalesce, so one SIGCHLD may stand for several children.
pub fn reap_one() -> Option<(Pid, Exit)> {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => return Some((pid, Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => return Some((pid, Exit::Signal(sig))),
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => continue, // stopped/continued: not an end
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None, // ECHILD: no children
        }
    }
}

/// Waits (blocking) for the child `pid` to end and reaps it; `None` if it is not our child.
pub fn reap_blocking(pid: Pid) -> Option<Exit> {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Some(Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(Exit::Signal(sig)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// Sends `sig` to `pid`; false if it is gone.
pub fn send_signal(pid: Pid, sig: Signal) -> bool {
    nix::sys::signal::kill(pid, sig).is_ok()
}

/// Counters in an anonymous `MAP_SHARED` mapping: made before `fork`, the same memory in the
/// parent and in every child, so children publish counters the parent reads without a
/// syscall. Words are atomics; a reader may see one word newer than another (a snapshot of
/// counters, not a transaction).
pub struct SharedCounters {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only ever accessed through `&AtomicU64`, which is Sync; the pointer
// stays valid until `drop` unmaps it, which needs the value to be owned.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: shared access is atomic.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// `len` zeroed counters (at least one).
    pub fn new(len: usize) -> io::Result<SharedCounters> {
        let len = len.max(1);
        let bytes = len
            .checked_mul(std::mem::size_of::<AtomicU64>())
            .ok_or_else(|| io::Error::other("shared counters: size overflow"))?;
        // SAFETY: a fresh anonymous mapping (no address hint, no fd): it aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // The mapping is page-aligned (so aligned for u64) and zero-filled, and an AtomicU64
        // has the layout of a u64: every word is a valid AtomicU64 holding 0.
        let ptr = NonNull::new(ptr.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedCounters { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counter `i`.
    ///
    /// # Panics
    ///
    /// If `i >= len()`.
    pub fn get(&self, i: usize) -> &AtomicU64 {
        assert!(
            i < self.len,
            "shared counter {i} out of range ({})",
            self.len
        );
        // SAFETY: `i < len`, so the word lies inside the live mapping (see `new`), and it is
        // only accessed atomically; the borrow of `self` keeps the mapping alive.
        unsafe { &*self.ptr.as_ptr().add(i) }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no reference into it outlives
        // `self` (they borrow it).
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len * std::mem::size_of::<AtomicU64>(),
            );
        }
    }
}

/// Becomes a daemon (notes 001, chapter 7): fork and let the parent exit (the shell's command
/// returns), `setsid` to leave the terminal's session, fork again so the daemon is not a
/// session leader and can never reacquire a terminal, then `chdir /`, `umask 027`, and
/// stdin/stdout/stderr on /dev/null. Only this function's caller continues, in the grandchild;
/// both parents leave with `_exit` (their destructors belong to the process that goes on): the
/// middle one at once, the first when the daemon is ready or gone (see [`Detached`]).
pub fn daemonize() -> io::Result<Detached> {
    let threads = settled_thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot daemonize: the process has {threads} threads (fork is only safe with one)"
        )));
    }
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    let (wait_end, tell_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: single-threaded (checked above; we are the only thread, none can start between
    // the check and the fork). The parent branch only waits on a pipe and calls `_exit`.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(tell_end);
            let code = match wait_for_ready(&wait_end) {
                Ok(()) => 0,
                Err(Some(why)) => {
                    let _ = writeln!(io::stderr(), "keel: the daemon could not start: {why}");
                    1
                }
                Err(None) => {
                    let _ = writeln!(
                        io::stderr(),
                        "keel: the daemon stopped before it was ready (its log says why)"
                    );
                    1
                }
            };
            exit_now(code)
        }
        nix::unistd::ForkResult::Child => drop(wait_end),
    }
    nix::unistd::setsid().map_err(io::Error::from)?;
    // SAFETY: still single-threaded (the child of a single-threaded process has one thread).
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { .. } => exit_now(0),
        nix::unistd::ForkResult::Child => {}
    }
    std::env::set_current_dir("/")?;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o027));
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(Detached {
        tell: Some(tell_end),
    })
}

/// The daemon's side of the start-up handshake. The command the user ran waits until the
/// daemon says [`ready`](Detached::ready) (it then exits 0) or drops this without saying it,
/// by failing or dying (exit 1): so when `keel --daemon` has returned 0, the daemon is up and
/// its pid file already names it.
pub struct Detached {
    tell: Option<OwnedFd>,
}

/// The most of a failure's reason the handshake carries: one pipe write (a pipe takes up to
/// `PIPE_BUF`, 4 KiB, whole), so the command never reads half of it.
const MAX_REASON: usize = 4000;

impl Detached {
    pub fn ready(mut self) {
        if let Some(fd) = self.tell.take() {
            let _ = rustix::io::write(&fd, b"1");
        }
    }

    /// The daemon will not start, for `why`: the command the user ran prints it and exits 1.
    /// Its stderr is /dev/null by now, and a daemon started without a log file has nowhere
    /// else to say it.
    pub fn fail(mut self, why: &str) {
        if let Some(fd) = self.tell.take() {
            let mut end = why.len().min(MAX_REASON);
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            let msg = [b"0", &why.as_bytes()[..end]].concat();
            let _ = rustix::io::write(&fd, &msg);
        }
    }
}

/// In the command the user ran: `Ok` once the daemon said it is ready; the reason it gave if
/// it failed, or `None` if it ended without a word (it died).
fn wait_for_ready(pipe: &OwnedFd) -> Result<(), Option<String>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got[0] == b'1' {
                    return Ok(());
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    // EOF: every copy of the other end is closed, after a reason or without a word.
    match got.split_first() {
        Some((b'0', why)) => Err(Some(String::from_utf8_lossy(why).into_owned())),
        _ => Err(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn thread_count_reads_proc() {
        assert!(thread_count().unwrap() >= 1);
    }

    #[test]
    fn shared_counters_start_at_zero_and_hold_values() {
        let c = SharedCounters::new(8).unwrap();
        assert_eq!(c.len(), 8);
        assert!((0..8).all(|i| c.get(i).load(Ordering::Relaxed) == 0));
        c.get(7).store(42, Ordering::Relaxed);
        assert_eq!(c.get(7).load(Ordering::Relaxed), 42);
    }

    #[test]
    #[should_panic]
    fn shared_counters_bounds_checked() {
        let c = SharedCounters::new(2).unwrap();
        c.get(2);
    }

    #[test]
    fn a_child_claims_only_the_fds_its_parent_lent() {
        let lent = std::fs::File::open("/dev/null").unwrap();
        let not_lent = std::fs::File::open("/dev/null").unwrap();
        let mut cx = Child {
            parent: nix::unistd::getpid(),
            inherited: vec![lent.as_raw_fd()],
            claimed: Vec::new(),
            closed: Vec::new(),
        };
        // An fd with a live owner of the child's own (the closure's, or opened after the
        // fork) is refused, and stays open for that owner.
        let refused = std::panic::catch_unwind(AssertUnwindSafe(|| {
            cx.close_inherited(not_lent.as_raw_fd())
        }));
        assert!(refused.is_err());
        assert!(not_lent.metadata().is_ok(), "still open");
        // A lent one is handed out once.
        let taken = cx.take_inherited(lent.as_raw_fd());
        std::mem::forget(lent); // the parent's copy, never dropped in a real child
        let again =
            std::panic::catch_unwind(AssertUnwindSafe(|| cx.take_inherited(taken.as_raw_fd())));
        assert!(again.is_err());
    }

    #[test]
    fn fork_refused_with_threads() {
        // The test harness runs tests on threads of their own: the process is multi-threaded.
        let _other =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        let err = fork_child(&[], |_| 0).unwrap_err();
        assert!(err.to_string().contains("threads"), "{err}");
    }

    #[test]
    fn exit_display() {
        assert_eq!(Exit::Signal(Signal::SIGKILL).to_string(), "signal 9");
        assert_eq!(Exit::Code(3).to_string(), "status 3");
    }
}

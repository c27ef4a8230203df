//! A file's pages held in a pipe, and sent with `tee(2)` instead of `sendfile(2)`.
//!
//! `sendfile` is zero copy, but not free: each call walks the page cache for the range (an
//! xarray lookup and a reference per page, a readahead check, an atime touch) and feeds the
//! pages to the socket through an in-kernel pipe, 64 KiB a round. For a file served again and
//! again, that walk finds the same pages every time. A pipe filled once from the file with
//! `splice` holds references to those pages; `tee` duplicates the references into a second
//! pipe without consuming the first, and `splice` hands them to the socket. Per response
//! that is a copy of the pipe's slot array instead of a page-cache walk: on loopback with
//! 100 clients fetching a 1 MiB file, the server's CPU per response fell by about a tenth
//! (README, "Held pages"). No byte is copied either way.
//!
//! `tee` always starts at the head of its source, so a response takes a prefix of the file:
//! the scratch pipe gets the whole prefix at once, the socket takes what it has room for,
//! and the rest is thrown away (spliced to `/dev/null`, which only drops the references);
//! the caller sends what is left of the range with `sendfile`. Scratch pipes are pooled in
//! the process and are empty between calls.
//!
//! The held pages are the page cache's own. A file rewritten in place is rewritten in them,
//! as `sendfile` would read it; the file cache notices the change (an fstat on each use) and
//! holds the new version. A file truncated and written again (`cp` over it) leaves the held
//! pages out of the file but still holding the old bytes: a response built before the change
//! starts with the version its headers describe, and the check before its next part (see
//! `FileRange::version`) ends it rather than go on with the new one (a test pins this). Were
//! the kernel to refuse such pages (a splice that moves nothing, or `ENODATA`/`EIO`), they
//! are marked spent and the range goes on with `sendfile`.
//!
//! Pipes are a limited resource for an unprivileged user (`/proc/sys/fs/pipe-max-size`, and
//! `pipe-user-pages-soft` across all of the user's pipes, in every process), and held pages
//! cannot be reclaimed: the process holds no more than its budget ([`budget`]), and where the
//! kernel will not make a pipe big enough, nothing is held and `sendfile` is used.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};

/// The most `tee_file_max` may be: a bigger pipe would be teed whole and mostly dropped on a
/// slow socket's first send, and pin that much memory.
pub const TEE_FILE_MAX_LIMIT: u64 = 16 << 20;

/// The pages of a file's first `len` bytes, held in a pipe's read end (the write end is
/// closed once it is filled: nothing is added later).
#[derive(Debug)]
pub struct PagePipe {
    read: OwnedFd,
    len: u64,
    /// The pipe's capacity, counted in [`HELD`] until it is dropped.
    capacity: u64,
    /// The kernel refused to send these pages: use `sendfile` from now on.
    spent: AtomicBool,
}

/// What [`PagePipe::hold`] did.
#[derive(Debug)]
pub enum Hold {
    Held(PagePipe),
    /// Not now: the process holds its budget's worth already, or the kernel refused a pipe
    /// for a reason that passes (the user's pipe allowance, out of fds or memory). Tried
    /// again on a later response.
    NoRoom,
    /// Not for this file: larger than the kernel makes a pipe (`pipe-max-size`), or it could
    /// not be spliced whole (shorter than its size, a file system without splice).
    Refused,
}

/// Bytes of pipe capacity the process holds: every live [`PagePipe`]'s and every scratch
/// pipe's (a response's pages pass through one); and how many [`PagePipe`]s there are. A
/// held pipe's pages cannot be reclaimed while it holds them, and an unprivileged user's pipes
/// share one allowance (`/proc/sys/fs/pipe-user-pages-soft`, counted in slots, which are
/// rounded up to a power of two per pipe): past it, every new pipe of that user, in any
/// process, gets two slots. So the count is of capacity, not file bytes, and the process
/// never takes more than its part of a quarter of that allowance ([`part`]).
static HELD: AtomicU64 = AtomicU64::new(0);
static HELD_PIPES: AtomicU64 = AtomicU64::new(0);

/// How many processes of this server may hold pages at the same time: one, or prefork's
/// workers, or process-per-connection's cap on children. They all draw on one user's
/// allowance, so each takes its share of the quarter. Set by the master before it forks;
/// the children inherit it.
static HOLDERS: AtomicU64 = AtomicU64::new(1);

/// Tells the process that `processes` processes (it and its siblings, forked after this
/// call) may hold pages at once, each counting only its own.
pub fn share_allowance(processes: usize) {
    HOLDERS.store(processes.max(1) as u64, Ordering::Relaxed);
}

/// The most pipe capacity this process may hold ([`HELD`]): a quarter of the user's pipe
/// allowance, divided between the processes that hold pages ([`share_allowance`]).
fn part() -> u64 {
    static QUARTER: OnceLock<u64> = OnceLock::new();
    let quarter = *QUARTER.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(16 << 20, |pages| match pages {
                0 => u64::MAX, // no limit
                n => n.saturating_mul(page_size()) / 4,
            })
    });
    share(quarter, HOLDERS.load(Ordering::Relaxed))
}

fn share(quarter: u64, holders: u64) -> u64 {
    quarter / holders.max(1)
}

/// The process's budget for held pages, given the one configured (`cache_bytes`): at most
/// three quarters of its [`part`]. The last quarter is room for the scratch pipes the pages
/// pass through on their way to a socket: held pages with no room left to send them from
/// would be no use.
pub fn budget(configured: u64) -> u64 {
    configured.min(held_share(part()))
}

fn held_share(part: u64) -> u64 {
    part / 4 * 3
}

/// Bytes of pipe capacity held now, in the whole process (held pages and scratch pipes).
pub fn held_bytes() -> u64 {
    HELD.load(Ordering::Relaxed)
}

/// After the kernel refuses a pipe for a reason that passes, no pipe is tried for this long:
/// every response in between goes by `sendfile` without first asking for a pipe in vain.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// When the pause after the last such refusal ends, in [`epoch_ms`] (0: none).
static PAUSED_UNTIL: AtomicU64 = AtomicU64::new(0);

fn epoch_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn paused() -> bool {
    let until = PAUSED_UNTIL.load(Ordering::Relaxed);
    until != 0 && epoch_ms() < until
}

fn pause() {
    PAUSED_UNTIL.store(
        epoch_ms() + REFUSED_PAUSE.as_millis() as u64,
        Ordering::Relaxed,
    );
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The capacity the kernel gives a pipe asked to hold `len` bytes of a file from offset 0: a
/// slot per page, rounded up to a power of two.
fn capacity_for(len: u64) -> u64 {
    len.div_ceil(page_size()).next_power_of_two() * page_size()
}

/// Takes `capacity` bytes and one pipe out of the process's budget, if both fit.
fn reserve(capacity: u64, budget: u64) -> bool {
    reserve_in(&HELD, &HELD_PIPES, capacity, budget, max_pipes())
}

/// Takes `bytes` of scratch pipe capacity out of the process's [`part`], if they fit.
fn reserve_scratch(bytes: u64) -> bool {
    reserve_bytes_in(&HELD, bytes, part())
}

fn reserve_bytes_in(held: &AtomicU64, bytes: u64, limit: u64) -> bool {
    held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
        h.checked_add(bytes).filter(|&h| h <= limit)
    })
    .is_ok()
}

fn reserve_in(
    held: &AtomicU64,
    pipes: &AtomicU64,
    capacity: u64,
    budget: u64,
    max_pipes: u64,
) -> bool {
    if pipes.fetch_add(1, Ordering::Relaxed) >= max_pipes {
        pipes.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    let took = held
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
            h.checked_add(capacity).filter(|&h| h <= budget)
        })
        .is_ok();
    if !took {
        pipes.fetch_sub(1, Ordering::Relaxed);
    }
    took
}

fn release(capacity: u64) {
    HELD.fetch_sub(capacity, Ordering::Relaxed);
    HELD_PIPES.fetch_sub(1, Ordering::Relaxed);
}

/// At most one fd in sixteen of `RLIMIT_NOFILE` (and at least 8) holds pages: the file
/// cache's own cap counts the files, not these.
fn max_pipes() -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (limit / 16).max(8)
}

impl PagePipe {
    /// Holds the first `len` bytes of `file` (a regular file, `len` its size), if the
    /// process's held pages stay within `budget` bytes (see [`budget`]).
    pub fn hold(file: &File, len: u64, budget: u64) -> Hold {
        if len == 0 || len > TEE_FILE_MAX_LIMIT {
            return Hold::Refused;
        }
        let capacity = capacity_for(len);
        if paused() || !reserve(capacity, budget) {
            return Hold::NoRoom;
        }
        match fill(file, len) {
            Ok(read) => Hold::Held(PagePipe {
                read,
                len,
                capacity,
                spent: AtomicBool::new(false),
            }),
            Err(refusal) => {
                release(capacity);
                match refusal {
                    Refusal::Now => {
                        pause();
                        Hold::NoRoom
                    }
                    Refusal::File => Hold::Refused,
                }
            }
        }
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sends the first `len` bytes (at most [`PagePipe::len`]) to `sock`, as far as the
    /// socket takes them now. `Ok(None)`: nothing was sent and the caller should use
    /// `sendfile` (no scratch pipe here, or these pages are spent); an `Err` is the socket's.
    pub(crate) fn send_prefix(&self, sock: BorrowedFd<'_>, len: u64) -> io::Result<Option<Teed>> {
        if self.spent.load(Ordering::Relaxed) || len == 0 || len > self.len {
            return Ok(None);
        }
        let Some(mut scratch) = Scratch::take(len as usize) else {
            return Ok(None);
        };
        let res = scratch.send(&self.read, sock, len as usize);
        if scratch.discard_rest() {
            Scratch::give_back(scratch);
        } // else it is closed: a scratch pipe that could not be emptied is not used again.
        let (teed, gone) = res?;
        if gone {
            // The pages are no longer the file's: whatever left before is still a prefix of
            // the response, and the rest goes by sendfile, now and from now on.
            self.spent.store(true, Ordering::Relaxed);
        }
        Ok((teed.sent > 0 || teed.full).then_some(teed))
    }
}

impl Drop for PagePipe {
    fn drop(&mut self) {
        release(self.capacity);
    }
}

/// Why [`fill`] made no pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// For now: the user's pipe allowance is spent (`EPERM` for a size the kernel allows),
    /// or the process is out of fds or memory.
    Now,
    /// For this file: larger than `pipe-max-size`, or it cannot be spliced whole.
    File,
}

/// Why the kernel refused to make (`make`) or size a pipe to `want` bytes: `EPERM` on a size
/// within `max_size` (`/proc/sys/fs/pipe-max-size`) is the user's allowance, which passes; past
/// it, it is the size, which does not.
fn refusal(e: Errno, want: usize, max_size: usize) -> Refusal {
    match e {
        Errno::PERM if want > max_size => Refusal::File,
        Errno::PERM | Errno::NOMEM | Errno::MFILE | Errno::NFILE | Errno::AGAIN => Refusal::Now,
        _ => Refusal::File,
    }
}

/// `/proc/sys/fs/pipe-max-size`: the largest pipe an unprivileged process may ask for.
fn pipe_max_size() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    })
}

/// A pipe holding the first `len` bytes of `file`, its write end closed; or why the kernel
/// would not make a pipe that large, or the file could not be spliced whole.
fn fill(file: &File, len: u64) -> Result<OwnedFd, Refusal> {
    let want = usize::try_from(len).map_err(|_| Refusal::File)?;
    let why = |e| refusal(e, want, pipe_max_size());
    let (read, write) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(why)?;
    if rustix::pipe::fcntl_setpipe_size(&write, want).map_err(why)? < want {
        return Err(Refusal::File);
    }
    let mut filled = 0u64;
    while filled < len {
        let mut at = filled;
        match rustix::pipe::splice(
            file.as_fd(),
            Some(&mut at),
            &write,
            None,
            (len - filled) as usize,
            SpliceFlags::NONBLOCK,
        ) {
            Ok(0) => return Err(Refusal::File), // shorter than its size said
            Ok(n) => filled += n as u64,
            Err(Errno::INTR) => continue,
            // EINVAL: a file system that cannot splice; EAGAIN: no room after all (a lease or
            // lock on the file, which passes).
            Err(e) => return Err(why(e)),
        }
    }
    Ok(read)
}

/// What [`PagePipe::send_prefix`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Teed {
    pub sent: u64,
    /// The socket had no room for the rest.
    pub full: bool,
}

/// A scratch pipe: a response's pages are teed into it and spliced out of it, and it is
/// empty again before anyone else may use it.
struct Scratch {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
    /// Bytes teed in and not yet spliced out or discarded.
    held: usize,
}

/// Idle scratch pipes, shared by the process's threads: a sender takes one for the length of
/// one call. So there are as many as there are sends at the same moment (a few, one per
/// thread at most), not one per thread: under thread-per-connection that would be two fds
/// per connection. The fork generation they were made in (`sys::process::fork_generation`):
/// a forked child must not use its parent's (the two processes would tee into one pipe).
static POOL: Mutex<(u32, Vec<Scratch>)> = Mutex::new((0, Vec::new()));

/// Idle scratch pipes kept; more are closed when given back.
const POOL_MAX: usize = 16;

/// `/dev/null`, opened once (a failed open is tried again next time), to drop what a socket
/// refused.
static NULL: OnceLock<OwnedFd> = OnceLock::new();

fn null() -> Option<BorrowedFd<'static>> {
    if let Some(fd) = NULL.get() {
        return Some(fd.as_fd());
    }
    let fd = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    Some(NULL.get_or_init(|| fd).as_fd())
}

impl Scratch {
    /// An empty scratch pipe that takes `len` bytes at once: an idle one, grown if needed, or a
    /// new one. `None` when the kernel refuses (out of fds, or a pipe that large).
    fn take(len: usize) -> Option<Scratch> {
        null()?;
        let generation = crate::sys::process::fork_generation();
        // try_lock: a sender that finds the pool busy makes a pipe of its own rather than
        // wait (and a child forked while another thread held the lock cannot deadlock).
        let idle = POOL.try_lock().ok().and_then(|mut pool| {
            if pool.0 != generation {
                *pool = (generation, Vec::new());
            }
            pool.1.pop()
        });
        let mut scratch = match idle {
            Some(s) => s,
            None => Scratch::new()?,
        };
        if scratch.size < len && !scratch.grow(len) {
            Scratch::give_back(scratch);
            return None;
        }
        Some(scratch)
    }

    /// Makes the pipe take `len` bytes at once, if the process's [`part`] has room for the
    /// growth and the kernel agrees.
    fn grow(&mut self, len: usize) -> bool {
        let want = capacity_for(len as u64);
        let more = want.saturating_sub(self.size as u64);
        if !reserve_scratch(more) {
            return false;
        }
        match rustix::pipe::fcntl_setpipe_size(&self.write, len) {
            Ok(size) => {
                // Counted as the kernel rounded it (the same rounding as `capacity_for`).
                HELD.fetch_add(size as u64, Ordering::Relaxed);
                HELD.fetch_sub(self.size as u64 + more, Ordering::Relaxed);
                self.size = size;
                size >= len
            }
            Err(_) => {
                HELD.fetch_sub(more, Ordering::Relaxed);
                false
            }
        }
    }

    /// Returns an empty scratch pipe to the pool.
    fn give_back(scratch: Scratch) {
        // Idle scratch pipes count against the room for held pages: past that share, they
        // are closed rather than kept, so they cannot crowd held pages out for good.
        if held_bytes() > held_share(part()) {
            return;
        }
        if let Ok(mut pool) = POOL.try_lock() {
            if pool.0 == crate::sys::process::fork_generation() && pool.1.len() < POOL_MAX {
                pool.1.push(scratch);
            }
        }
    }

    /// A new pipe of the kernel's default size, if the process's [`part`] has room for it.
    fn new() -> Option<Scratch> {
        let (read, write) =
            rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
        let size = rustix::pipe::fcntl_getpipe_size(&write).ok()?;
        // `then`, not `then_some`: a Scratch built and dropped unreserved would uncount it.
        reserve_scratch(size as u64).then(|| Scratch {
            read,
            write,
            size,
            held: 0,
        })
    }

    /// Tees `len` bytes of `pages` in and splices them out to `sock` until the socket is full.
    /// The flag: the kernel refused the pages (`ENODATA` or `EIO`: no longer the file's).
    /// An error is the socket's.
    fn send(
        &mut self,
        pages: &OwnedFd,
        sock: BorrowedFd<'_>,
        len: usize,
    ) -> io::Result<(Teed, bool)> {
        let mut teed = Teed {
            sent: 0,
            full: false,
        };
        let n = loop {
            match rustix::pipe::tee(pages, &self.write, len, SpliceFlags::NONBLOCK) {
                Ok(n) => break n,
                Err(Errno::INTR) => continue,
                // Nothing teed: the caller sends with sendfile.
                Err(_) => return Ok((teed, false)),
            }
        };
        self.held = n;
        while self.held > 0 {
            match self.splice_held(sock) {
                // Bytes in the pipe, none moved: the kernel would not confirm a page (a
                // splice to a socket reports that as 0 from 6.5 on).
                Ok(0) => return Ok((teed, true)),
                Ok(k) => {
                    teed.sent += k as u64;
                    self.held -= k;
                }
                Err(Errno::AGAIN) => {
                    teed.full = true;
                    break;
                }
                Err(Errno::NODATA | Errno::IO) => return Ok((teed, true)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok((teed, false))
    }

    /// Drops what the socket did not take; false if some is still in the pipe.
    fn discard_rest(&mut self) -> bool {
        let Some(null) = null() else {
            return self.held == 0;
        };
        while self.held > 0 {
            match self.splice_held(null) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.held -= n,
            }
        }
        true
    }

    /// One non-blocking splice of what the pipe holds to `to`, tried again if a signal
    /// interrupted it.
    fn splice_held(&self, to: BorrowedFd<'_>) -> Result<usize, Errno> {
        loop {
            match rustix::pipe::splice(&self.read, None, to, None, self.held, SpliceFlags::NONBLOCK)
            {
                Err(Errno::INTR) => continue,
                done => return done,
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        HELD.fetch_sub(self.size as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_counted_as_the_kernel_rounds_it() {
        let page = page_size();
        assert_eq!(capacity_for(1), page);
        assert_eq!(capacity_for(page), page);
        assert_eq!(capacity_for(page + 1), 2 * page);
        assert_eq!(capacity_for(5 * page), 8 * page);
        assert_eq!(capacity_for(1 << 20), 1 << 20);
    }

    #[test]
    fn the_budget_bounds_bytes_and_pipes() {
        let (held, pipes) = (AtomicU64::new(0), AtomicU64::new(0));
        assert!(reserve_in(&held, &pipes, 600, 1000, 3));
        assert!(!reserve_in(&held, &pipes, 600, 1000, 3), "past the bytes");
        assert_eq!(
            (held.load(Ordering::Relaxed), pipes.load(Ordering::Relaxed)),
            (600, 1)
        );
        assert!(reserve_in(&held, &pipes, 400, 1000, 3));
        assert!(reserve_in(&held, &pipes, 0, 1000, 3));
        assert!(!reserve_in(&held, &pipes, 0, 1000, 3), "past the pipes");
        assert_eq!(
            (held.load(Ordering::Relaxed), pipes.load(Ordering::Relaxed)),
            (1000, 3)
        );
    }

    #[test]
    fn forked_servers_split_the_quarter_and_leave_room_to_send() {
        let quarter = 16 << 20;
        assert_eq!(share(quarter, 1), quarter);
        assert_eq!(share(quarter, 4), 4 << 20, "four workers, a share each");
        assert_eq!(share(quarter, 0), quarter);
        assert_eq!(
            held_share(4 << 20),
            3 << 20,
            "a quarter is left for scratch pipes"
        );
        assert_eq!(
            share(u64::MAX, 3),
            u64::MAX / 3,
            "no limit stays (nearly) none"
        );
    }

    #[test]
    fn scratch_pipes_fit_in_the_part_with_the_held_pages() {
        let held = AtomicU64::new(0);
        assert!(reserve_in(&held, &AtomicU64::new(0), 3 << 20, 3 << 20, 8));
        assert!(
            reserve_bytes_in(&held, 1 << 20, 4 << 20),
            "room left past the held pages"
        );
        assert!(!reserve_bytes_in(&held, 1, 4 << 20), "the part is full");
        assert_eq!(held.load(Ordering::Relaxed), 4 << 20);
        // Scratch pipes count against held pages too: none more is held while they exist.
        assert!(!reserve_in(&held, &AtomicU64::new(0), 0, 3 << 20, 8));
    }

    #[test]
    fn a_refusal_that_passes_is_told_from_one_for_the_file() {
        let max = 1 << 20;
        assert_eq!(
            refusal(Errno::PERM, max, max),
            Refusal::Now,
            "the user's allowance"
        );
        assert_eq!(
            refusal(Errno::PERM, max + 1, max),
            Refusal::File,
            "past pipe-max-size"
        );
        for e in [Errno::MFILE, Errno::NFILE, Errno::NOMEM, Errno::AGAIN] {
            assert_eq!(refusal(e, 4096, max), Refusal::Now, "{e}");
        }
        assert_eq!(
            refusal(Errno::INVAL, 4096, max),
            Refusal::File,
            "no splice here"
        );
    }

    #[test]
    fn a_held_pipe_gives_its_capacity_back_when_dropped() {
        let path = std::env::temp_dir().join(format!("keel-page-pipe-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // Other tests hold pages at the same time: the budget is what is held now, plus room
        // for this pipe only.
        let cap = capacity_for(100_000);
        match PagePipe::hold(&file, 100_000, held_bytes() + cap) {
            Hold::Held(p) => {
                assert_eq!(p.len(), 100_000);
                assert_eq!(p.capacity, cap);
            }
            Hold::NoRoom => {} // another test took the room in between
            Hold::Refused => eprintln!("skipped: the kernel refused a {cap}-byte pipe"),
        }
        assert!(matches!(PagePipe::hold(&file, 0, u64::MAX), Hold::Refused));
        assert!(
            matches!(PagePipe::hold(&file, 100_001, u64::MAX), Hold::Refused),
            "shorter than said"
        );
        assert!(matches!(PagePipe::hold(&file, 100_000, 0), Hold::NoRoom));
    }
}

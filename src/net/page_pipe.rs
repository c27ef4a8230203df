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
//! the caller sends what is left of the range with `sendfile`. One scratch pipe serves a
//! whole thread and is empty between calls.
//!
//! The held pages are the page cache's own. A file rewritten in place is rewritten in them,
//! as `sendfile` would read it; the file cache notices the change (an fstat on each use) and
//! holds the new version. A file truncated and written again (`cp` over it) leaves the held
//! pages out of the file but still holding the old bytes: a response built before the change
//! starts with the version its headers describe, and the check before its next part (see
//! `FileRange::version`) ends it rather than go on with the new one (a test pins this). Were
//! the kernel to refuse such pages (`ENODATA`, `EIO` from the splice), they are marked spent
//! and the range goes on with `sendfile`.
//!
//! Pipes are a limited resource for an unprivileged user (`/proc/sys/fs/pipe-max-size`, and
//! `pipe-user-pages-soft` across all of the user's pipes): where the kernel will not make a
//! pipe big enough, nothing is held and `sendfile` is used.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};

/// The pages of a file's first `len` bytes, held in a pipe's read end (the write end is
/// closed once it is filled: nothing is added later).
#[derive(Debug)]
pub struct PagePipe {
    read: OwnedFd,
    len: u64,
    /// The kernel refused to send these pages (the file was truncated under them): use
    /// `sendfile` from now on.
    spent: AtomicBool,
}

impl PagePipe {
    /// Holds the first `len` bytes of `file` (a regular file, `len` its size). `Ok(None)`
    /// when the kernel will not make a pipe that large for this process, or the file turns
    /// out shorter.
    pub fn hold(file: &File, len: u64) -> io::Result<Option<PagePipe>> {
        let want = usize::try_from(len).map_err(|_| io::Error::other("file too large"))?;
        if want == 0 {
            return Ok(None);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        match rustix::pipe::fcntl_setpipe_size(&write, want) {
            Ok(size) if size >= want => {}
            // EPERM: over pipe-max-size or the user's pipe pages; ENOMEM.
            Ok(_) | Err(_) => return Ok(None),
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
                Ok(0) => return Ok(None), // shorter than its size said
                Ok(n) => filled += n as u64,
                Err(Errno::INTR) => continue,
                // EINVAL: a file system that cannot splice; EAGAIN: no room after all.
                Err(_) => return Ok(None),
            }
        }
        Ok(Some(PagePipe {
            read,
            len,
            spent: AtomicBool::new(false),
        }))
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
        SCRATCH.with(|cell| {
            let mut slot = cell.borrow_mut();
            let Some(scratch) = Scratch::fit(&mut slot, len as usize) else {
                return Ok(None);
            };
            let res = scratch.send(&self.read, sock, len as usize);
            if !scratch.discard_rest() {
                // A scratch pipe that could not be emptied is not used again.
                *slot = None;
            }
            let (teed, gone) = res?;
            if gone {
                // The pages are no longer the file's: whatever left before is still a prefix
                // of the response, and the rest goes by sendfile, now and from now on.
                self.spent.store(true, Ordering::Relaxed);
            }
            Ok((teed.sent > 0 || teed.full).then_some(teed))
        })
    }
}

/// What [`PagePipe::send_prefix`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Teed {
    pub sent: u64,
    /// The socket had no room for the rest.
    pub full: bool,
}

/// A thread's scratch pipe, and `/dev/null` to empty it into.
struct Scratch {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
    null: OwnedFd,
    /// Bytes teed in and not yet spliced out or discarded.
    held: usize,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

impl Scratch {
    /// The thread's scratch pipe, made (or grown) to take `len` bytes at once. `None` when
    /// the kernel refuses.
    fn fit(slot: &mut Option<Scratch>, len: usize) -> Option<&mut Scratch> {
        if slot.is_none() {
            *slot = Scratch::new().ok();
        }
        let scratch = slot.as_mut()?;
        if scratch.size < len {
            match rustix::pipe::fcntl_setpipe_size(&scratch.write, len) {
                Ok(size) => scratch.size = size,
                Err(_) => return None,
            }
            if scratch.size < len {
                return None;
            }
        }
        Some(scratch)
    }

    fn new() -> io::Result<Scratch> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let size = rustix::pipe::fcntl_getpipe_size(&write)?;
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok(Scratch {
            read,
            write,
            size,
            null,
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
            match rustix::pipe::splice(
                &self.read,
                None,
                sock,
                None,
                self.held,
                SpliceFlags::NONBLOCK,
            ) {
                Ok(0) => break,
                Ok(k) => {
                    teed.sent += k as u64;
                    self.held -= k;
                }
                Err(Errno::INTR) => continue,
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
        while self.held > 0 {
            match rustix::pipe::splice(
                &self.read,
                None,
                &self.null,
                None,
                self.held,
                SpliceFlags::NONBLOCK,
            ) {
                Ok(0) => return false,
                Ok(n) => self.held -= n,
                Err(Errno::INTR) => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

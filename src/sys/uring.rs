//! The io_uring ring a loop on the `uring` engine owns: submissions queued in user space and
//! handed to the kernel in the one `io_uring_enter` that also waits for completions.
//!
//! Three kinds of request go through here: multishot polls (and their removal), multishot
//! receives, and cancellations. A poll points at no user memory, so the one thing a queued
//! submission names is an fd number; that is why it may sit in the queue past a `close` of
//! that number: the loop queues a registration's removal before it closes the fd, and the ring
//! takes submissions in order, so a number reused in between is watched (by a request nobody
//! owns) only until the removal right behind it. A receive goes the same way for the fd.
//!
//! Receives write into user memory: the buffers of a provided-buffer ring ([`BufRing`]), from
//! which the kernel takes one only when bytes arrive. An idle connection therefore holds no
//! buffer, as on the readiness engines. That memory must outlive every receive that may still
//! write to it; the ring counts the receives in flight, and on drop cancels them all and waits
//! for their last completions before the buffers are unmapped (or leaks the buffers, if the
//! kernel does not answer within a second, rather than free memory it may still write).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// One completion, copied out of the completion queue.
#[derive(Copy, Clone, Debug)]
pub struct Completion {
    pub user_data: u64,
    /// What the request returned: a poll mask, a byte count, or `-errno`.
    pub result: i32,
    /// A multishot request is still armed and will complete again.
    pub more: bool,
    /// The request was a receive ([`Ring::recv_multi`]).
    pub recv: bool,
    /// The receive buffer the bytes are in (see [`Ring::received`]); hand it back with
    /// [`Ring::recycle`].
    pub buffer: Option<u16>,
}

/// Size of one receive buffer: what one receive completion can carry.
pub const RECV_BUF: usize = 16 * 1024;
/// Receive buffers handed to the kernel at first, and the most there will ever be: the ring
/// doubles them each time the kernel runs out (a burst of completions in one turn).
const FIRST_BUFS: u16 = 16;
const MAX_BUFS: u16 = 64;
/// The buffer group every receive picks from.
const BGID: u16 = 0;
/// Marks a receive's user data (the callers' ids stay below it).
const RECV_BIT: u64 = 1 << 63;

/// The provided-buffer ring: `MAX_BUFS` ring entries and `MAX_BUFS` buffers, of which the
/// first `count` have been given to the kernel. Both are private anonymous mappings; the
/// buffers' is `MAP_NORESERVE`, so a buffer costs memory only once the kernel has written to
/// it, and a loop that never sees more than a few receives per turn keeps a few buffers.
struct BufRing {
    entries: NonNull<types::BufRingEntry>,
    bufs: NonNull<u8>,
    tail: u16,
    count: u16,
    /// Entries were added since the tail was last published.
    dirty: bool,
}

fn map(bytes: usize, flags: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choice; the result is
    // checked for failure. mmap's alignment (a page) is what the kernel needs for the ring.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

const ENTRIES_BYTES: usize = MAX_BUFS as usize * std::mem::size_of::<types::BufRingEntry>();
const BUFS_BYTES: usize = MAX_BUFS as usize * RECV_BUF;

impl BufRing {
    fn new(ring: &IoUring) -> io::Result<BufRing> {
        let entries = map(ENTRIES_BYTES, 0)?;
        let bufs = match map(BUFS_BYTES, libc::MAP_NORESERVE) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: `entries` was mapped just above with this size and is not used again.
                unsafe { libc::munmap(entries.as_ptr().cast(), ENTRIES_BYTES) };
                return Err(e);
            }
        };
        let mut r = BufRing {
            entries: entries.cast(),
            bufs,
            tail: 0,
            count: 0,
            dirty: false,
        };
        // SAFETY: the entries' mapping lives until `r` is dropped, which happens only after
        // the buffer group is unregistered or the ring is gone (see `Ring::drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                MAX_BUFS,
                BGID,
                0,
            )
        }?;
        r.grow();
        Ok(r)
    }

    /// Gives the kernel more buffers (twice as many), up to `MAX_BUFS`.
    fn grow(&mut self) -> bool {
        let new = if self.count == 0 {
            FIRST_BUFS
        } else {
            (self.count * 2).min(MAX_BUFS)
        };
        if new == self.count {
            return false;
        }
        for bid in self.count..new {
            self.put(bid);
        }
        self.count = new;
        true
    }

    fn put(&mut self, bid: u16) {
        debug_assert!(bid < MAX_BUFS);
        let i = (self.tail & (MAX_BUFS - 1)) as usize;
        // SAFETY: i < MAX_BUFS, inside the entries' mapping. The kernel reads only entries
        // between its head and the published tail. Each buffer is in the ring at most once,
        // and `bid` is not in it (it is being given back, or given for the first time), so at
        // most MAX_BUFS - 1 entries are live and the slot at the tail is none of them.
        let e = unsafe { &mut *self.entries.as_ptr().add(i) };
        e.set_addr(self.buf_ptr(bid) as u64);
        e.set_len(RECV_BUF as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.dirty = true;
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < MAX_BUFS, so the offset stays inside the buffers' mapping.
        unsafe { self.bufs.as_ptr().add(bid as usize * RECV_BUF) }
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        // SAFETY: the ring's tail field overlays the first entry's last two bytes, inside the
        // live mapping, and is only ever written here; the release store makes the entries
        // written before it visible to the kernel before the new tail is.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

pub struct Ring {
    ring: IoUring,
    bufs: Option<BufRing>,
    /// Receives submitted whose last completion has not been read.
    recvs_in_flight: usize,
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring's fd is open for as long as `self.ring` lives, and the borrow is
        // tied to `self`.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }
}

impl Ring {
    /// A ring of `entries` submissions and eight times as many completions (one connection's
    /// multishot poll may complete several times per turn). Refused (the caller falls back to
    /// epoll) where the kernel lacks io_uring, forbids it (seccomp, `io_uring_disabled`), or is
    /// older than 5.11, which brought the timed wait (`IORING_FEAT_EXT_ARG`) the loop needs.
    pub fn new(entries: u32) -> io::Result<Ring> {
        // SUBMIT_ALL (5.18): one bad submission must not hold back the ones queued behind it
        // (a removal behind a registration whose fd was already closed, say).
        // DEFER_TASKRUN (6.1, with SINGLE_ISSUER: a loop never leaves the thread that made
        // it): the work the kernel does for completions (a receive's copy) is done only inside
        // the loop's own enter, in one batch, and never on the way out of its other syscalls
        // (each `send` would otherwise run it, through the signal-delivery path). Older
        // kernels get COOP_TASKRUN (5.19: no interrupt, but still run on any syscall's exit),
        // then neither.
        let cq = entries * 8;
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_submit_all()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cq)
                    .setup_submit_all()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .build(entries)
            })
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring has no timed wait (IORING_FEAT_EXT_ARG, Linux 5.11)",
            ));
        }
        Ok(Ring {
            ring,
            bufs: None,
            recvs_in_flight: 0,
        })
    }

    /// Sets up the receive buffers, so that [`recv_multi`](Self::recv_multi) may be used.
    /// Refused by kernels before 5.19 (provided-buffer rings); the caller then reads on
    /// readiness instead.
    pub fn enable_recv(&mut self) -> io::Result<()> {
        if self.bufs.is_none() {
            self.bufs = Some(BufRing::new(&self.ring)?);
        }
        Ok(())
    }

    /// Queues a multishot receive on `fd` into the ring's buffers (6.0: `IORING_RECV_MULTISHOT`;
    /// an older kernel fails it, and its completion says so). `user_data` must be below 2^63.
    pub fn recv_multi(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        debug_assert!(self.bufs.is_some() && user_data & RECV_BIT == 0);
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(user_data | RECV_BIT);
        self.push(e)?;
        self.recvs_in_flight += 1;
        Ok(())
    }

    /// Queues the cancellation of the receive submitted as `target`; the cancellation's own
    /// completion carries `user_data`.
    pub fn cancel_recv(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        self.push(
            opcode::AsyncCancel::new(target | RECV_BIT)
                .build()
                .user_data(user_data),
        )
    }

    /// The bytes a receive completion put in `buffer`.
    pub fn received(&self, buffer: u16, len: usize) -> &[u8] {
        let Some(b) = &self.bufs else { return &[] };
        let len = len.min(RECV_BUF);
        // SAFETY: `buffer` came from a completion, so it is one of the buffers given to the
        // kernel, which wrote `len` bytes into it and will not touch it again until it is
        // recycled; the slice borrows `self`, so it cannot outlive the mapping or a recycle.
        unsafe { std::slice::from_raw_parts(b.buf_ptr(buffer), len) }
    }

    /// Gives a buffer back to the kernel (published with the next submission).
    pub fn recycle(&mut self, buffer: u16) {
        if let Some(b) = &mut self.bufs {
            if buffer < b.count {
                b.put(buffer);
            }
        }
    }

    /// The kernel ran out of receive buffers: give it more, if there can be more. False once
    /// it has the most there may be.
    pub fn grow_buffers(&mut self) -> bool {
        self.bufs.as_mut().is_some_and(|b| b.grow())
    }

    /// Queues a multishot poll of `fd` for the events in `mask` (poll(2) bits).
    pub fn poll_add(&mut self, fd: RawFd, mask: u32, user_data: u64) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(fd), mask)
            .multi(true)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// Queues the removal of the poll request submitted as `target`; its own completion
    /// carries `user_data`.
    ///
    /// A cancellation (`ASYNC_CANCEL`), not `POLL_REMOVE`: a `POLL_REMOVE` that meets a
    /// wake-up the kernel is still handling (its work deferred to the loop's next wait, as
    /// DEFER_TASKRUN does) fails with `EALREADY` and leaves a multishot poll armed, holding
    /// its file after the close for as long as the ring lives. A cancellation marks the poll
    /// cancelled whoever handles it; it ends with `ECANCELED`.
    pub fn cancel_poll(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        self.push(
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data),
        )
    }

    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: a poll request and a poll removal point at no user memory (see the
            // module's comment); the fd number they may name is checked by the kernel when it
            // takes the submission.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            // Full: hand the queue to the kernel now and try again, without waiting for a
            // completion: none may come (polls on sockets where nothing happens), and the
            // loop would stop here until one did.
            self.submit(Some(Duration::ZERO))?;
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    /// Hands every queued submission to the kernel and, unless `timeout` is zero, waits up to
    /// `timeout` (`None`: without end) for a completion. A wait ended by its timeout or a
    /// signal is not an error: the caller looks at the completion queue either way.
    pub fn submit(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if let Some(b) = &mut self.bufs {
            b.publish();
        }
        let res = match timeout {
            Some(t) => {
                // A zero timeout still asks for completions (GETEVENTS): deferred completion
                // work is only ever run by an enter that does.
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match res {
            Ok(_) => Ok(()),
            // ETIME: the timeout; EINTR: a signal; EBUSY/EAGAIN: completions waiting in the
            // kernel's overflow list, flushed once the caller has emptied the queue.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every completion the kernel has posted into `out` (cleared first).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.extend(self.ring.completion().map(|c| {
            let recv = c.user_data() & RECV_BIT != 0 && c.user_data() != u64::MAX;
            Completion {
                user_data: if recv {
                    c.user_data() & !RECV_BIT
                } else {
                    c.user_data()
                },
                result: c.result(),
                more: cqueue::more(c.flags()),
                recv,
                buffer: cqueue::buffer_select(c.flags()),
            }
        }));
        let ended = out.iter().filter(|c| c.recv && !c.more).count();
        self.recvs_in_flight = self.recvs_in_flight.saturating_sub(ended);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let Some(bufs) = self.bufs.take() else { return };
        // Every receive still armed may write into the buffers until its last completion:
        // cancel them all and wait for those completions before unmapping.
        let deadline = Instant::now() + Duration::from_secs(1);
        let any = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(u64::MAX);
        let mut done = Vec::new();
        let mut cancelled = false;
        while self.recvs_in_flight > 0 && Instant::now() < deadline {
            if !cancelled {
                cancelled = self.push(any.clone()).is_ok();
            }
            if self.submit(Some(Duration::from_millis(10))).is_err() {
                break;
            }
            self.completions(&mut done);
            for c in &done {
                if let Some(b) = c.buffer {
                    self.recycle(b);
                }
            }
        }
        if self.recvs_in_flight > 0 {
            // The kernel did not let go in time: leak the buffers rather than risk it writing
            // into memory given back to the allocator.
            return;
        }
        // SAFETY: no receive is in flight any more, so the kernel holds no reference into
        // either mapping; both were mapped with these sizes in `BufRing::new`.
        unsafe {
            libc::munmap(bufs.bufs.as_ptr().cast(), BUFS_BYTES);
            libc::munmap(bufs.entries.as_ptr().cast(), ENTRIES_BYTES);
        }
    }
}

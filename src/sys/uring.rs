//! The io_uring ring a loop on the `uring` engine owns: submissions queued in user space and
//! handed to the kernel in the one `io_uring_enter` that also waits for completions.
//!
//! Three kinds of request go through here: multishot polls (and their removal), multishot
//! receives, and cancellations. A queued poll or receive names its fd by number, and the
//! kernel looks the number up only when it takes the request: were it still queued when the
//! fd is closed, the next `accept` could give the number to another socket, and a receive
//! would take that socket's bytes. So before the loop closes an fd it queues the removals and
//! has the kernel take the whole queue ([`Ring::flush`]).
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
    /// The buffers a completion has handed out and that have not been given back (bit `bid`):
    /// only these may be read or given back, so a buffer is never in the ring twice (which
    /// would let the kernel fill it for two receives) nor read while the kernel may write it.
    held: u64,
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
            held: 0,
        };
        // SAFETY: the kernel pins the entries' pages at registration; the mapping is unmapped
        // only in `Ring::drop`, once no receive is in flight to read an entry, or below if the
        // registration fails.
        let registered = unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                MAX_BUFS,
                BGID,
                0,
            )
        };
        if let Err(e) = registered {
            // SAFETY: both were mapped just above with these sizes, and the kernel refused
            // the entries, so nothing refers to either.
            unsafe {
                libc::munmap(bufs.as_ptr().cast(), BUFS_BYTES);
                libc::munmap(entries.as_ptr().cast(), ENTRIES_BYTES);
            }
            return Err(e);
        }
        r.grow();
        Ok(r)
    }

    /// A completion handed `bid` out; false if that cannot be (not a buffer of ours, or one
    /// already out): it is then neither read nor given back.
    fn take(&mut self, bid: u16) -> bool {
        let bit = 1u64 << (bid % MAX_BUFS);
        if bid >= self.count || self.held & bit != 0 {
            return false;
        }
        self.held |= bit;
        true
    }

    fn is_held(&self, bid: u16) -> bool {
        bid < self.count && self.held & (1u64 << bid) != 0
    }

    /// Gives back a buffer a completion handed out (anything else is ignored).
    fn give_back(&mut self, bid: u16) {
        if self.is_held(bid) {
            self.held &= !(1u64 << bid);
            self.put(bid);
        }
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

    /// Puts `bid` in the ring: only from `grow` (a buffer given for the first time) and
    /// `give_back` (one the kernel handed out).
    fn put(&mut self, bid: u16) {
        debug_assert!(bid < MAX_BUFS);
        let i = (self.tail & (MAX_BUFS - 1)) as usize;
        // SAFETY: i < MAX_BUFS, inside the entries' mapping. The kernel reads only entries
        // between its head and the published tail. Each buffer is in the ring at most once
        // (`held` sees to it), and `bid` is not in it (it is being given back, or given for
        // the first time), so at most MAX_BUFS - 1 entries are live and the slot at the tail
        // is none of them.
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
    /// Completions read out of the queue by [`flush`](Self::flush), for the next
    /// [`completions`](Self::completions).
    stash: Vec<Completion>,
}

/// How many times [`Ring::flush`] tries to hand the queue over before it gives up.
const FLUSH_TRIES: u32 = 50;

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
    /// older than 5.17. The loop needs the timed wait (`IORING_FEAT_EXT_ARG`, 5.11) and
    /// multishot polls (5.13), and, above all, a cancellation that always ends a poll: before
    /// the poll rework of 5.17 one that met a wake-up still being handled failed with
    /// `EALREADY` and left the poll armed, holding its socket open after the close (the peer
    /// never saw our FIN). 5.17 is known by the feature that came with it
    /// (`IORING_FEAT_CQE_SKIP`); a 5.15 stable kernel with the rework backported is refused
    /// too, and runs on epoll.
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
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cq)
                    .setup_submit_all()
                    .build(entries)
            })
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))?;
        let params = ring.params();
        if !params.is_feature_ext_arg() || !params.is_feature_skip_cqe_on_success() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring is older than Linux 5.17 (its poll cancellation can \
                 fail)",
            ));
        }
        Ok(Ring {
            ring,
            bufs: None,
            recvs_in_flight: 0,
            stash: Vec::new(),
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

    /// The bytes a receive completion put in `buffer` (none, for a buffer no completion
    /// handed out or one already given back).
    pub fn received(&self, buffer: u16, len: usize) -> &[u8] {
        let Some(b) = self.bufs.as_ref().filter(|b| b.is_held(buffer)) else {
            return &[];
        };
        let len = len.min(RECV_BUF);
        // SAFETY: `buffer` is one a completion handed out and that has not been given back
        // (`is_held`, so it is below `count` and inside the mapping): the kernel wrote `len`
        // bytes into it and will not touch it again until it is recycled; the slice borrows
        // `self`, so it cannot outlive the mapping or a recycle.
        unsafe { std::slice::from_raw_parts(b.buf_ptr(buffer), len) }
    }

    /// Gives a buffer a completion handed out back to the kernel (published with the next
    /// submission). Any other number, or a buffer given back already, is ignored.
    pub fn recycle(&mut self, buffer: u16) {
        if let Some(b) = &mut self.bufs {
            b.give_back(buffer);
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
            // kernel's overflow list, flushed once the caller has emptied the queue (or, for
            // EAGAIN, the kernel short of memory for a request): the queue is handed over at
            // a later enter.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            // EBADR: the kernel dropped completions it had no memory to keep. Whatever they
            // said is lost (a connection waiting on one ends at its timeout); the loop and
            // its other connections go on.
            Err(e) if e.raw_os_error() == Some(libc::EBADR) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::error!(
                        "io_uring dropped completions (the kernel was out of memory): some \
                         connections may stall until their timeouts"
                    )
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Hands every queued submission to the kernel now, and makes sure it took them, which
    /// [`submit`](Self::submit) does not (a busy or memory-short kernel takes none and says so
    /// with an error that is no failure). Needed before an fd is closed: a request still in
    /// the queue names the fd by number, which the next `accept` may give to another socket.
    /// Completions read out of the way (a full completion queue holds submissions back on
    /// older kernels) wait for the next [`completions`](Self::completions). False when the
    /// kernel still has not taken them after [`FLUSH_TRIES`] tries, a millisecond apart past
    /// the first few.
    pub fn flush(&mut self) -> io::Result<bool> {
        for attempt in 0..FLUSH_TRIES {
            self.submit(Some(Duration::ZERO))?;
            if self.ring.submission().is_empty() {
                return Ok(true);
            }
            let mut more = Vec::new();
            self.read_completions(&mut more);
            self.stash.extend(more);
            if attempt >= 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(false)
    }

    /// Whether [`flush`](Self::flush) read completions out of the way that
    /// [`completions`](Self::completions) has not handed out yet: the next wait must not
    /// sleep, as what they report has already happened.
    pub fn has_stashed(&self) -> bool {
        !self.stash.is_empty()
    }

    /// Moves every completion the kernel has posted into `out` (cleared first), after any
    /// that [`flush`](Self::flush) read earlier. A buffer a completion carries is the caller's
    /// until it is recycled.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.append(&mut self.stash);
        self.read_completions(out);
    }

    fn read_completions(&mut self, out: &mut Vec<Completion>) {
        let from = out.len();
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
        let new = &mut out[from..];
        let ended = new.iter().filter(|c| c.recv && !c.more).count();
        self.recvs_in_flight = self.recvs_in_flight.saturating_sub(ended);
        if let Some(bufs) = &mut self.bufs {
            for c in new.iter_mut() {
                // A buffer the kernel cannot have handed out is not passed on.
                if c.buffer.is_some_and(|b| !bufs.take(b)) {
                    c.buffer = None;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// A ring with receive buffers, where the kernel allows both.
    fn ring() -> Option<Ring> {
        let mut ring = Ring::new(64).ok()?;
        ring.enable_recv().ok()?;
        Some(ring)
    }

    /// Waits (at most 5 s) for the receive's completion that carries a buffer.
    fn next_buffer(ring: &mut Ring) -> (u16, usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut done = Vec::new();
        while Instant::now() < deadline {
            ring.submit(Some(Duration::from_millis(50))).unwrap();
            ring.completions(&mut done);
            if let Some(c) = done.iter().find(|c| c.buffer.is_some()) {
                return (c.buffer.unwrap(), c.result as usize);
            }
        }
        panic!("no receive completion within 5 s");
    }

    /// Only a buffer a completion handed out can be read or given back, and only once: a
    /// number out of range, one the kernel still has, or one given back twice is ignored, so
    /// no buffer is ever in the kernel's ring twice (where two receives could fill it at
    /// once) and none is read while the kernel may write it.
    #[test]
    fn only_a_buffer_handed_out_is_read_or_given_back_and_only_once() {
        let Some(mut ring) = ring() else {
            eprintln!("skipped: io_uring receives unavailable here");
            return;
        };
        assert!(ring.received(MAX_BUFS + 7, 10).is_empty());
        assert!(
            ring.received(3, 10).is_empty(),
            "a buffer the kernel holds was read"
        );
        let given = |r: &Ring| r.bufs.as_ref().unwrap().tail;
        let before = given(&ring);
        ring.recycle(3);
        ring.recycle(MAX_BUFS + 7);
        assert_eq!(given(&ring), before, "a buffer not handed out went back in");

        let (a, mut b) = UnixStream::pair().unwrap();
        ring.recv_multi(a.as_raw_fd(), 1).unwrap();
        b.write_all(b"hello").unwrap();
        let (buffer, len) = next_buffer(&mut ring);
        assert_eq!(ring.received(buffer, len), b"hello");
        ring.recycle(buffer);
        ring.recycle(buffer);
        assert_eq!(given(&ring), before.wrapping_add(1), "given back twice");
        assert!(
            ring.received(buffer, len).is_empty(),
            "read after it went back"
        );
    }
}

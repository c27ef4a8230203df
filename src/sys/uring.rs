//! The io_uring ring a loop on the `uring` engine owns: submissions queued in user space and
//! handed to the kernel in the one `io_uring_enter` that also waits for completions.
//!
//! Only requests that point at no user memory go through here (multishot `POLL_ADD` and its
//! `POLL_REMOVE`), so nothing the kernel holds can dangle: the one thing a queued submission
//! names is an fd number. That is also why it may sit in the queue past a `close` of that
//! number: the loop queues a registration's removal before it closes the fd, and the ring
//! takes submissions in order, so a number reused in between is watched (by a request nobody
//! owns) only until the removal right behind it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// One completion, copied out of the completion queue.
#[derive(Copy, Clone, Debug)]
pub struct Completion {
    pub user_data: u64,
    /// What the request returned: a poll mask, or `-errno`.
    pub result: i32,
    /// A multishot request is still armed and will complete again.
    pub more: bool,
}

pub struct Ring {
    ring: IoUring,
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
        let ring = IoUring::builder()
            .setup_cqsize(entries * 8)
            .setup_submit_all()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 8).build(entries))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring has no timed wait (IORING_FEAT_EXT_ARG, Linux 5.11)",
            ));
        }
        Ok(Ring { ring })
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
    pub fn poll_remove(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        self.push(opcode::PollRemove::new(target).build().user_data(user_data))
    }

    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: a poll request and a poll removal point at no user memory (see the
            // module's comment); the fd number they may name is checked by the kernel when it
            // takes the submission.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            // Full: hand the queue to the kernel now and try again.
            self.submit(None)?;
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    /// Hands every queued submission to the kernel and, unless `timeout` is zero, waits up to
    /// `timeout` (`None`: without end) for a completion. A wait ended by its timeout or a
    /// signal is not an error: the caller looks at the completion queue either way.
    pub fn submit(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let res = match timeout {
            Some(t) if t.is_zero() => self.ring.submit(),
            Some(t) => {
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
        out.extend(self.ring.completion().map(|c| Completion {
            user_data: c.user_data(),
            result: c.result(),
            more: cqueue::more(c.flags()),
        }));
    }
}

//! io_uring as a readiness engine: one multishot `POLL_ADD` per registered fd, and every
//! registration, change and removal queued in user space and handed to the kernel in the same
//! `io_uring_enter` that waits for the next events.
//!
//! Where epoll costs an `epoll_ctl` per registration and another per removal, this engine
//! costs none: an accepted connection's registration rides on the loop's next wait. A
//! multishot poll completes on every wake-up of the socket with the events ready at that
//! moment, which is edge-triggered epoll's contract, so the loop drives it exactly as it does
//! `epoll-et` (read to `EAGAIN` or remember the fd is ready).
//!
//! Two things differ from epoll, both handled here:
//! - A poll request holds a reference to the file, so closing the fd does not end it (epoll
//!   forgets a closed file by itself). Every removal is therefore explicit: queued before the
//!   loop closes the fd, and carried out, releasing the socket, at the next enter.
//! - The kernel may end a multishot poll (a full completion queue, say): a completion without
//!   `IORING_CQE_F_MORE` that was not asked for is re-armed at once.
//!
//! Each arming of a poll gets its own request id (the registration's slot here plus an arming
//! sequence number), so a completion of a request that was replaced or removed is recognised
//! and dropped, however its removal and its last completions interleave.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use slab::Slab;

use crate::reactor::event::{Event, Interest, Token};
use crate::sys::uring::{Completion, Ring};

/// Submission queue size. A full queue is submitted early, so this bounds nothing but how
/// many registrations one enter carries.
const ENTRIES: u32 = 1024;

/// The user data of removals, whose completions say nothing the loop needs.
const REMOVAL: u64 = u64::MAX;

struct Reg {
    token: Token,
    fd: RawFd,
    mask: u32,
    /// Arming sequence number of the live request (see the module's comment).
    seq: u32,
}

pub struct UringPoller {
    ring: Ring,
    regs: Slab<Reg>,
    /// Registration slot of each registered fd, by fd number.
    by_fd: Vec<Option<usize>>,
    next_seq: u32,
    done: Vec<Completion>,
}

impl AsFd for UringPoller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

fn mask(interest: Interest) -> u32 {
    // RDHUP and PRI always, as edge-triggered epoll asks: the loop needs to know a FIN is in
    // behind a short read, and a read that stops at the urgent mark has more behind it.
    let mut m = (libc::POLLRDHUP | libc::POLLPRI) as u32;
    if interest.is_readable() {
        m |= libc::POLLIN as u32;
    }
    if interest.is_writable() {
        m |= libc::POLLOUT as u32;
    }
    m
}

fn request_id(slot: usize, seq: u32) -> u64 {
    ((seq as u64) << 32) | slot as u64
}

impl UringPoller {
    pub fn new() -> io::Result<Self> {
        Ok(UringPoller {
            ring: Ring::new(ENTRIES)?,
            regs: Slab::new(),
            by_fd: Vec::new(),
            next_seq: 0,
            done: Vec::new(),
        })
    }

    /// Arms (or re-arms) the poll of registration `slot` under a fresh request id.
    fn arm(&mut self, slot: usize) -> io::Result<()> {
        self.next_seq = self.next_seq.wrapping_add(1);
        let reg = &mut self.regs[slot];
        reg.seq = self.next_seq;
        let (fd, mask, id) = (reg.fd, reg.mask, request_id(slot, reg.seq));
        self.ring.poll_add(fd, mask, id)
    }

    pub fn register(
        &mut self,
        fd: BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let index = raw as usize;
        if let Some(stale) = self.by_fd.get(index).copied().flatten() {
            // Still registered under this number: the fd was closed without a removal and the
            // number reused (epoll forgets a closed fd by itself, and callers may rely on
            // that). The old request watches the old file, if any is left: end it.
            let reg = self.regs.remove(stale);
            self.ring.poll_remove(request_id(stale, reg.seq), REMOVAL)?;
        }
        let slot = self.regs.insert(Reg {
            token,
            fd: raw,
            mask: mask(interest),
            seq: 0,
        });
        if let Err(e) = self.arm(slot) {
            self.regs.remove(slot);
            return Err(e);
        }
        if self.by_fd.len() <= index {
            self.by_fd.resize(index + 1, None);
        }
        self.by_fd[index] = Some(slot);
        Ok(())
    }

    fn slot_of(&self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.by_fd
            .get(fd.as_raw_fd() as usize)
            .copied()
            .flatten()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    pub fn reregister(
        &mut self,
        fd: BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        let slot = self.slot_of(fd)?;
        let reg = &mut self.regs[slot];
        let new_mask = mask(interest);
        if reg.token == token && reg.mask == new_mask {
            return Ok(());
        }
        let old = request_id(slot, reg.seq);
        reg.token = token;
        reg.mask = new_mask;
        self.ring.poll_remove(old, REMOVAL)?;
        self.arm(slot)
    }

    pub fn deregister(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let slot = self.slot_of(fd)?;
        let reg = self.regs.remove(slot);
        self.by_fd[fd.as_raw_fd() as usize] = None;
        self.ring.poll_remove(request_id(slot, reg.seq), REMOVAL)
    }

    pub fn len(&self) -> usize {
        self.regs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    pub fn wait(
        &mut self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        events.clear();
        self.ring.submit(timeout)?;
        let mut done = std::mem::take(&mut self.done);
        self.ring.completions(&mut done);
        for c in &done {
            if c.user_data == REMOVAL {
                continue;
            }
            let slot = (c.user_data & 0xffff_ffff) as usize;
            let seq = (c.user_data >> 32) as u32;
            let Some(reg) = self.regs.get(slot).filter(|r| r.seq == seq) else {
                continue; // a request since replaced or removed
            };
            let token = reg.token;
            if c.result < 0 {
                // The poll itself failed (the fd was closed under it, say): report an error so
                // the owner looks at its socket, and do not re-arm.
                if c.result != -libc::ECANCELED {
                    events.push(Event {
                        token,
                        readable: true,
                        writable: false,
                        error: true,
                        hup: false,
                        urgent: false,
                    });
                }
                continue;
            }
            if !c.more {
                // The kernel ended the multishot poll (it was not asked to): arm it again.
                self.arm(slot)?;
            }
            let m = c.result as u32;
            let has = |bits: i16| m & bits as u32 != 0;
            let err = has(libc::POLLERR | libc::POLLHUP);
            events.push(Event {
                token,
                readable: err || has(libc::POLLIN | libc::POLLPRI | libc::POLLRDHUP),
                writable: has(libc::POLLOUT),
                error: err,
                hup: has(libc::POLLRDHUP | libc::POLLHUP),
                urgent: has(libc::POLLPRI),
            });
        }
        self.done = done;
        Ok(events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn poller() -> Option<UringPoller> {
        match UringPoller::new() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("skipped: io_uring unavailable here ({e})");
                None
            }
        }
    }

    #[test]
    fn reports_each_new_arrival_once_and_forgets_a_removed_fd() {
        let Some(mut p) = poller() else { return };
        let (mut a, mut b) = UnixStream::pair().unwrap();
        p.register(a.as_fd(), Token(7), Interest::READABLE).unwrap();
        let mut events = Vec::new();
        // Nothing to read yet: the registration is submitted, no event comes.
        p.wait(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(events.is_empty(), "{events:?}");

        b.write_all(b"x").unwrap();
        p.wait(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(events.len(), 1);
        assert!(events[0].readable && events[0].token == Token(7));

        // Edge-triggered: the byte is still unread, but no new wake-up, no new event.
        p.wait(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(events.is_empty(), "{events:?}");
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf).unwrap(), 1);

        // The peer's hang-up is reported with `hup`.
        drop(b);
        p.wait(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert!(events.iter().any(|e| e.hup && e.readable), "{events:?}");

        p.deregister(a.as_fd()).unwrap();
        assert!(p.is_empty());
        p.wait(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(
            events.is_empty(),
            "a removed registration still reported {events:?}"
        );
    }

    #[test]
    fn a_changed_interest_reports_under_the_new_token_only() {
        let Some(mut p) = poller() else { return };
        let (a, _b) = UnixStream::pair().unwrap();
        p.register(a.as_fd(), Token(1), Interest::READABLE).unwrap();
        p.reregister(a.as_fd(), Token(2), Interest::BOTH).unwrap();
        let mut events = Vec::new();
        p.wait(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].writable && events[0].token == Token(2));

        // Registered again under its number (as after a close the poller was not told of and
        // a reuse of the number): only the new registration reports.
        p.register(a.as_fd(), Token(3), Interest::WRITABLE).unwrap();
        assert_eq!(p.len(), 1);
        p.wait(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert!(events.iter().all(|e| e.token == Token(3)), "{events:?}");
    }
}

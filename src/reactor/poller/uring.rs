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
//!   loop closes the fd, and carried out, releasing the socket, at the next enter. It is a
//!   cancellation, which cannot fail on a live poll, not a `POLL_REMOVE`, which can
//!   ([`Ring::cancel_poll`]).
//! - The kernel may end a multishot poll (a full completion queue, say): a completion without
//!   `IORING_CQE_F_MORE` that was not asked for is re-armed at once.
//!
//! A request that cannot be queued (the submission queue stays full even once handed over,
//! the kernel short of memory) is not forgotten: a re-arming or a cancellation is kept and
//! queued again before the next wait ([`Retry`]). Forgetting a cancellation would leave a poll
//! or a receive holding a closed socket open.
//!
//! Each arming of a poll gets its own request id (the registration's slot here plus an arming
//! sequence number), so a completion of a request that was replaced or removed is recognised
//! and dropped, however its removal and its last completions interleave.
//!
//! ## The proactor half: multishot receives
//!
//! A connection may also be given a multishot receive ([`arm_recv`](UringPoller::arm_recv)):
//! the kernel then reads for the loop, into a buffer it takes from a provided-buffer ring only
//! when bytes arrive, and the wait hands back completions ("these bytes arrived on this
//! connection", [`Received`]) instead of readiness. No `read` is made by the loop at all; the
//! notes' Proactor, where "the kernel moves the data, the application is told it is done". The
//! loop keeps such a connection's poll for writability only, and gives the receive up (a
//! cancellation) whenever reading must stop or go another way (paused, spliced, draining).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use slab::Slab;

use crate::reactor::event::{Event, Interest, Token};
use crate::sys::uring::{Completion, Ring};

/// What a receive completion says, for the loop to act on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Got {
    /// Bytes, in receive buffer `buffer`: read them with [`UringPoller::received`], then give
    /// the buffer back with [`UringPoller::recycle`].
    Data { buffer: u16, len: u32 },
    /// The peer's FIN.
    Eof,
    /// The receive failed with this errno (a reset, say).
    Error(i32),
    /// The receive is over (after `Eof`, an `Error`, a cancellation or the kernel running out
    /// of buffers): the connection reads no more until it is given a new one.
    Ended,
}

/// A receive completion, for the connection `token` names; `recv` is what
/// [`UringPoller::arm_recv`] returned for it.
#[derive(Copy, Clone, Debug)]
pub struct Received {
    pub token: Token,
    pub recv: RecvKey,
    pub got: Got,
}

/// Names one armed receive: its slot, plus one (so that a connection's `Option<RecvKey>` costs
/// four bytes, not eight).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RecvKey(std::num::NonZeroU32);

impl RecvKey {
    fn new(slot: usize) -> RecvKey {
        let n = u32::try_from(slot + 1).expect("fewer than 2^32 receives");
        RecvKey(std::num::NonZeroU32::new(n).expect("slot + 1 is not zero"))
    }

    fn slot(self) -> usize {
        self.0.get() as usize - 1
    }
}

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

/// A receive in flight, until its last completion.
struct Recv {
    token: Token,
    /// Its cancellation has been asked for (queued, or waiting in `retry`).
    cancelled: bool,
}

/// A request that could not be queued when it was made, queued again before the next wait.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Retry {
    /// The poll of registration `slot`, armed as `seq` (dropped if the slot is removed).
    Arm { slot: usize, seq: u32 },
    /// The removal of the poll request `id`.
    CancelPoll(u64),
    /// The cancellation of the receive in `slot` (dropped with its last completion).
    CancelRecv(usize),
}

pub struct UringPoller {
    ring: Ring,
    regs: Slab<Reg>,
    /// Registration slot of each registered fd, by fd number.
    by_fd: Vec<Option<usize>>,
    next_seq: u32,
    /// Receives in flight (their user data is their slot here).
    recvs: Slab<Recv>,
    /// The kernel takes multishot receives with provided buffers (probed at start).
    recv_ok: bool,
    received: Vec<Received>,
    done: Vec<Completion>,
    retry: Vec<Retry>,
}

impl AsFd for UringPoller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

fn mask(interest: Interest) -> u32 {
    let mut m = 0;
    if interest.is_readable() {
        // RDHUP and PRI with reading, as edge-triggered epoll asks: the loop needs to know a
        // FIN is in behind a short read, and a read that stops at the urgent mark has more
        // behind it. Without reading (a connection a receive reads for) none of the three.
        m |= (libc::POLLIN | libc::POLLRDHUP | libc::POLLPRI) as u32;
    }
    if interest.is_writable() {
        m |= libc::POLLOUT as u32;
    }
    m
}

fn request_id(slot: usize, seq: u32) -> u64 {
    ((seq as u64) << 32) | slot as u64
}

/// Whether the running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

impl UringPoller {
    pub fn new() -> io::Result<Self> {
        let mut ring = Ring::new(ENTRIES)?;
        // Multishot receives came in 6.0, provided-buffer rings in 5.19: on 5.19 the ring
        // would be taken and every receive then fail, so the release is checked first.
        let recv_ok = kernel_at_least(6, 0) && ring.enable_recv().is_ok();
        Ok(UringPoller {
            ring,
            regs: Slab::new(),
            by_fd: Vec::new(),
            next_seq: 0,
            recvs: Slab::new(),
            recv_ok,
            received: Vec::new(),
            done: Vec::new(),
            retry: Vec::new(),
        })
    }

    /// Whether connections can be given receives ([`arm_recv`](Self::arm_recv)); if not, they
    /// read on readiness as on `epoll-et`.
    pub fn completes_reads(&self) -> bool {
        self.recv_ok
    }

    /// Arms a multishot receive on `fd`, reported under `token` until it has [`Got::Ended`].
    pub fn arm_recv(&mut self, fd: BorrowedFd<'_>, token: Token) -> io::Result<RecvKey> {
        let slot = self.recvs.insert(Recv {
            token,
            cancelled: false,
        });
        if let Err(e) = self.ring.recv_multi(fd.as_raw_fd(), slot as u64) {
            self.recvs.remove(slot);
            return Err(e);
        }
        Ok(RecvKey::new(slot))
    }

    /// Asks the kernel to end the receive `key` of the connection `token` (a receive of
    /// another connection, in a slot reused since, is left alone). Bytes it already took still
    /// arrive, then [`Got::Ended`]; asking twice is asking once. `now`: hand the request to the
    /// kernel at once rather than with the next wait, so that a receive told to stop (a
    /// paused connection) does not go on taking bytes until then; each syscall the loop makes
    /// in between may run the kernel's receive work.
    pub fn cancel_recv(&mut self, key: RecvKey, token: Token, now: bool) {
        let Some(r) = self.recvs.get_mut(key.slot()) else {
            return;
        };
        if r.cancelled || r.token != token {
            return;
        }
        r.cancelled = true;
        if self.ring.cancel_recv(key.slot() as u64, REMOVAL).is_err() {
            self.retry.push(Retry::CancelRecv(key.slot()));
        } else if now {
            let _ = self.ring.submit(Some(Duration::ZERO));
        }
    }

    /// The bytes of a [`Got::Data`].
    pub fn received(&self, buffer: u16, len: u32) -> &[u8] {
        self.ring.received(buffer, len as usize)
    }

    pub fn recycle(&mut self, buffer: u16) {
        self.ring.recycle(buffer);
    }

    /// Receive completions from the last wait, to be handled by the loop (which recycles
    /// every buffer in them).
    pub fn take_received(&mut self, into: &mut Vec<Received>) {
        into.clear();
        std::mem::swap(into, &mut self.received);
    }

    fn on_recv_completion(&mut self, c: &Completion) {
        let slot = c.user_data as usize;
        let Some(r) = self.recvs.get(slot) else {
            // Not ours any more: cannot happen (a receive's slot is freed only after its last
            // completion), but a buffer must never be lost.
            if let Some(b) = c.buffer {
                self.ring.recycle(b);
            }
            return;
        };
        let (token, recv) = (r.token, RecvKey::new(slot));
        let got = match (c.result, c.buffer) {
            (n, Some(buffer)) if n > 0 => Got::Data {
                buffer,
                len: n as u32,
            },
            (0, _) => Got::Eof,
            (n, _) if n == -libc::ECANCELED => Got::Ended,
            (n, _) if n == -libc::ENOBUFS => {
                // Every buffer was taken in one turn: give the kernel more; the loop arms a
                // new receive, which takes what the socket still holds.
                self.ring.grow_buffers();
                Got::Ended
            }
            (n, _) if n < 0 => Got::Error(-n),
            _ => Got::Ended, // bytes without a buffer: not something the kernel does
        };
        if got != Got::Ended {
            self.received.push(Received { token, recv, got });
        }
        if !c.more {
            self.recvs.remove(slot);
            self.retry.retain(|r| *r != Retry::CancelRecv(slot));
            self.received.push(Received {
                token,
                recv,
                got: Got::Ended,
            });
        }
    }

    /// Arms (or re-arms) the poll of registration `slot` under a fresh request id. The
    /// sequence number keeps to 31 bits: the ring marks receives with the id's top bit.
    fn arm(&mut self, slot: usize) -> io::Result<()> {
        self.next_seq = self.next_seq.wrapping_add(1) & 0x7fff_ffff;
        self.regs[slot].seq = self.next_seq;
        self.push_arm(slot)
    }

    fn push_arm(&mut self, slot: usize) -> io::Result<()> {
        let reg = &self.regs[slot];
        let (fd, mask, id) = (reg.fd, reg.mask, request_id(slot, reg.seq));
        self.ring.poll_add(fd, mask, id)
    }

    /// Arms registration `slot`'s poll, or keeps it to arm before the next wait.
    fn arm_or_retry(&mut self, slot: usize) {
        if self.arm(slot).is_err() {
            let seq = self.regs[slot].seq;
            self.retry.push(Retry::Arm { slot, seq });
        }
    }

    /// Removes the poll request `id`, or keeps the removal to queue before the next wait.
    fn cancel_or_retry(&mut self, id: u64) {
        if self.ring.cancel_poll(id, REMOVAL).is_err() {
            self.retry.push(Retry::CancelPoll(id));
        }
    }

    /// Forgets registration `slot` and queues its poll's removal.
    fn remove_reg(&mut self, slot: usize) {
        let reg = self.regs.remove(slot);
        self.retry
            .retain(|r| !matches!(r, Retry::Arm { slot: s, .. } if *s == slot));
        self.cancel_or_retry(request_id(slot, reg.seq));
    }

    /// Queues again what could not be queued before; what still cannot waits for the next.
    fn queue_retries(&mut self) {
        for r in std::mem::take(&mut self.retry) {
            let queued = match r {
                Retry::Arm { slot, seq } => match self.regs.get(slot) {
                    Some(reg) if reg.seq == seq => self.push_arm(slot).is_ok(),
                    _ => true, // replaced or removed since
                },
                Retry::CancelPoll(id) => self.ring.cancel_poll(id, REMOVAL).is_ok(),
                Retry::CancelRecv(slot) => self.ring.cancel_recv(slot as u64, REMOVAL).is_ok(),
            };
            if !queued {
                self.retry.push(r);
            }
        }
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
            self.by_fd[index] = None;
            self.remove_reg(stale);
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
        self.retry
            .retain(|r| !matches!(r, Retry::Arm { slot: s, .. } if *s == slot));
        self.cancel_or_retry(old);
        self.arm_or_retry(slot);
        Ok(())
    }

    pub fn deregister(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let slot = self.slot_of(fd)?;
        self.by_fd[fd.as_raw_fd() as usize] = None;
        self.remove_reg(slot);
        Ok(())
    }

    /// Called right before `fd` is closed: removes its poll, and has the kernel take every
    /// queued request now ([`Ring::flush`]). A queued request names its fd by number, and the
    /// kernel resolves the number only when it takes the request: after the close, the
    /// number may already be another connection's (the next `accept`), whose bytes a queued
    /// receive would then take. Taken now, the requests hold the right file, and the removal
    /// and cancellation behind them end them in the same call.
    pub fn deregister_before_close(&mut self, fd: BorrowedFd<'_>) {
        let _ = self.deregister(fd);
        self.queue_retries();
        match self.ring.flush() {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                "io_uring would not take its queued requests before fd {} was closed: a \
                 socket that reuses the number may lose its first bytes",
                fd.as_raw_fd()
            ),
            Err(e) => tracing::error!("io_uring submission before a close failed: {e}"),
        }
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
        self.queue_retries();
        let timeout = if self.ring.has_stashed() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        self.ring.submit(timeout)?;
        let mut done = std::mem::take(&mut self.done);
        self.ring.completions(&mut done);
        self.received.clear();
        for c in &done {
            if c.recv {
                self.on_recv_completion(c);
                continue;
            }
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
                self.arm_or_retry(slot);
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

    /// More registrations in one turn than the submission queue holds: the full queue is
    /// handed to the kernel without waiting for a completion, which none of these polls would
    /// bring (nothing is ready on them). It used to wait there for good.
    #[test]
    fn a_full_submission_queue_is_handed_over_without_waiting() {
        if poller().is_none() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let pairs: Vec<_> = (0..ENTRIES as usize + 100)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        std::thread::spawn(move || {
            let mut p = UringPoller::new().unwrap();
            for (i, (a, _)) in pairs.iter().enumerate() {
                p.register(a.as_fd(), Token(i as u64), Interest::READABLE)
                    .unwrap();
            }
            let _ = tx.send(());
            pairs
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "registering past a full queue waited for a completion"
        );
    }

    /// A removal that meets a wake-up the kernel has not yet handed to the loop (its work is
    /// deferred to the next wait) still ends the poll, so closing the fd releases the socket:
    /// the peer learns it. `POLL_REMOVE` answered such a removal `EALREADY` and left the
    /// multishot poll armed, holding the file for the loop's life (a proxy's backend never
    /// heard its client was gone).
    #[test]
    fn a_removal_beside_a_pending_wakeup_still_releases_the_socket() {
        let Some(mut p) = poller() else { return };
        let mut events = Vec::new();
        for round in 0..20 {
            let (a, mut b) = UnixStream::pair().unwrap();
            p.register(a.as_fd(), Token(round), Interest::READABLE)
                .unwrap();
            p.wait(&mut events, Some(Duration::from_millis(5))).unwrap();
            b.write_all(b"x").unwrap(); // a wake-up, its handling deferred
            p.deregister_before_close(a.as_fd());
            drop(a);
            p.wait(&mut events, Some(Duration::from_millis(5))).unwrap();
            b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            // Closed with the byte unread: a reset. Still open: the read times out.
            let mut buf = [0u8; 8];
            let got = b.read(&mut buf);
            assert!(
                matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "round {round}: the closed end is still open ({got:?})"
            );
        }
        assert!(p.is_empty());
    }

    /// Waits until `f` has seen what it wants among the receive completions, recycling every
    /// buffer, for at most 5 s.
    fn collect(p: &mut UringPoller, mut f: impl FnMut(&Received, &[u8]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (mut events, mut got) = (Vec::new(), Vec::new());
        while std::time::Instant::now() < deadline {
            p.wait(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            p.take_received(&mut got);
            let mut done = false;
            for r in &got {
                let bytes = match r.got {
                    Got::Data { buffer, len } => p.received(buffer, len).to_vec(),
                    _ => Vec::new(),
                };
                if let Got::Data { buffer, .. } = r.got {
                    p.recycle(buffer);
                }
                done |= f(r, &bytes);
            }
            if done {
                return;
            }
        }
        panic!("not seen within 5 s");
    }

    #[test]
    fn a_receive_brings_the_bytes_then_the_fin_and_a_cancelled_one_ends() {
        let Some(mut p) = poller() else { return };
        if !p.completes_reads() {
            eprintln!("skipped: no multishot receives with provided buffers here");
            return;
        }
        let (a, mut b) = UnixStream::pair().unwrap();
        let key = p.arm_recv(a.as_fd(), Token(9)).unwrap();
        // More than one receive buffer's worth, in two writes: every byte, in order.
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        b.write_all(&data[..100]).unwrap();
        b.write_all(&data[100..]).unwrap();
        let mut seen = Vec::new();
        collect(&mut p, |r, bytes| {
            assert_eq!((r.token, r.recv), (Token(9), key));
            seen.extend_from_slice(bytes);
            seen.len() >= data.len()
        });
        assert!(seen == data, "{} bytes, not the ones sent", seen.len());

        drop(b);
        let mut order = Vec::new();
        collect(&mut p, |r, _| {
            order.push(r.got);
            r.got == Got::Ended
        });
        assert_eq!(order, [Got::Eof, Got::Ended]);

        // A cancelled receive ends, and the token check keeps a stale key from cancelling
        // another connection's receive.
        let (c, _d) = UnixStream::pair().unwrap();
        let key = p.arm_recv(c.as_fd(), Token(10)).unwrap();
        p.cancel_recv(key, Token(11), true);
        let (mut events, mut got) = (Vec::new(), Vec::new());
        p.wait(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        p.take_received(&mut got);
        assert!(got.is_empty(), "cancelled under another token: {got:?}");
        p.cancel_recv(key, Token(10), true);
        collect(&mut p, |r, _| {
            assert_eq!(r.token, Token(10));
            r.got == Got::Ended
        });
    }

    /// The arming sequence number wraps within 31 bits: the top bit of a request id marks a
    /// receive, and a poll armed with it set was taken for one and its events lost.
    #[test]
    fn polls_armed_past_two_to_the_thirty_one_still_report() {
        let Some(mut p) = poller() else { return };
        p.next_seq = 0x7fff_fffe;
        let mut events = Vec::new();
        for token in 1..=3 {
            let (a, _b) = UnixStream::pair().unwrap();
            p.register(a.as_fd(), Token(token), Interest::WRITABLE)
                .unwrap();
            p.wait(&mut events, Some(Duration::from_secs(5))).unwrap();
            assert!(
                events.iter().any(|e| e.token == Token(token) && e.writable),
                "arming {token}: {events:?}"
            );
            p.deregister(a.as_fd()).unwrap();
        }
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

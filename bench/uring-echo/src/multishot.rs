//! The `--multishot` variant: one multishot `recv` per connection that stays armed, filling
//! buffers the kernel picks from a provided-buffer ring, and a `send` of each buffer that
//! comes back.
//!
//! The single-shot server pays, per message, a `recv` submission that usually finds the socket
//! empty, arms a poll and is completed later by task work. Here the recv is armed once per
//! connection, so a message costs one completion for the bytes, one submission for the send
//! and one completion for it; the buffer then goes back to the ring.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::{accept, set_nodelay, ACCEPT, SIGNAL};

/// Buffers in the ring (a power of two, at most 32768) and the size of each.
const BUFS: u16 = 1024;
const BUF_SIZE: usize = 64 * 1024;
const BGID: u16 = 0;

/// The provided-buffer ring: `BUFS` entries the kernel consumes from its head, and the buffers
/// they point at. Both are leaked (see `run`): the kernel may use them until the ring is gone.
struct BufRing {
    entries: *mut types::BufRingEntry,
    bufs: *mut u8,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> std::io::Result<BufRing> {
        let bytes = BUFS as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping, checked for failure; the kernel needs the ring
        // page-aligned, which mmap guarantees.
        let entries = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if entries == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let bufs = Box::leak(vec![0u8; BUFS as usize * BUF_SIZE].into_boxed_slice()).as_mut_ptr();
        // SAFETY: `entries` is a live mapping of BUFS entries that is never unmapped.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, BUFS, BGID, 0)?
        };
        let mut r = BufRing {
            entries: entries.cast(),
            bufs,
            tail: 0,
        };
        for bid in 0..BUFS {
            r.put(bid);
        }
        r.publish();
        Ok(r)
    }

    fn buf(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < BUFS, so the offset stays inside the leaked allocation.
        unsafe { self.bufs.add(bid as usize * BUF_SIZE) }
    }

    /// Queues buffer `bid` for the kernel; it sees it after `publish`.
    fn put(&mut self, bid: u16) {
        let i = (self.tail & (BUFS - 1)) as usize;
        // SAFETY: i < BUFS; the kernel reads only entries between its head and the published
        // tail, and this one is past the published tail.
        let e = unsafe { &mut *self.entries.add(i) };
        e.set_addr(self.buf(bid) as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of the live mapping; the release
        // store makes the entries written before it visible to the kernel first.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

struct Conn {
    fd: OwnedFd,
    /// Buffers received and not yet sent: (buffer id, length, bytes sent).
    queue: VecDeque<(u16, usize, usize)>,
    sending: bool,
    /// The multishot recv is still armed (no completion without MORE yet).
    armed: bool,
    /// EOF or an error was seen: no new recv is armed, queued data is dropped.
    ended: bool,
}

const RECV: u64 = 0;
const SEND: u64 = 1;

fn recv(slot: usize, c: &Conn) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(c.fd.as_raw_fd()), BGID)
        .build()
        .user_data(((slot as u64) << 1) | RECV)
}

fn send(slot: usize, c: &Conn, ring: &BufRing) -> squeue::Entry {
    let (bid, len, sent) = c.queue[0];
    // SAFETY: sent < len <= BUF_SIZE, inside buffer `bid`.
    let ptr = unsafe { ring.buf(bid).add(sent) };
    opcode::Send::new(types::Fd(c.fd.as_raw_fd()), ptr, (len - sent) as u32)
        .build()
        .user_data(((slot as u64) << 1) | SEND)
}

pub fn run(
    mut ring: IoUring,
    listener: &TcpListener,
    mut next: Vec<squeue::Entry>,
) -> std::io::Result<()> {
    let mut bufs = BufRing::new(&ring)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut done = Vec::new();
    loop {
        {
            let mut sq = ring.submission();
            for e in next.drain(..) {
                // SAFETY: every buffer a send points to is a ring buffer that is put back only
                // after its send completed; the ring and its buffers are leaked; the listener
                // outlives the ring. At most two entries per connection plus two are pending.
                unsafe { sq.push(&e).expect("submission queue has room") };
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let mut returned = false;
        for &(data, res, flags) in &done {
            match data {
                SIGNAL => {
                    std::mem::forget(ring);
                    std::mem::forget(conns);
                    return Ok(());
                }
                ACCEPT => {
                    if !cqueue::more(flags) {
                        next.push(accept(listener));
                    }
                    if res < 0 {
                        continue;
                    }
                    // SAFETY: a successful accept completion hands us a new fd we alone own.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    if conns.len() - free.len() >= 1000 {
                        continue;
                    }
                    set_nodelay(fd.as_raw_fd());
                    let c = Conn {
                        fd,
                        queue: VecDeque::new(),
                        sending: false,
                        armed: true,
                        ended: false,
                    };
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    next.push(recv(slot, &c));
                    conns[slot] = Some(c);
                }
                _ => {
                    let slot = (data >> 1) as usize;
                    let Some(c) = conns[slot].as_mut() else {
                        continue;
                    };
                    if data & 1 == RECV {
                        if !cqueue::more(flags) {
                            c.armed = false;
                        }
                        if res > 0 {
                            let bid = cqueue::buffer_select(flags).expect("recv picked a buffer");
                            if c.ended {
                                bufs.put(bid);
                                returned = true;
                            } else {
                                c.queue.push_back((bid, res as usize, 0));
                                if !c.sending {
                                    c.sending = true;
                                    next.push(send(slot, c, &bufs));
                                }
                            }
                            if !c.armed && !c.ended {
                                c.armed = true;
                                next.push(recv(slot, c));
                            }
                        } else if res == -libc::ENOBUFS && !c.ended {
                            c.armed = true;
                            next.push(recv(slot, c));
                        } else {
                            c.ended = true;
                        }
                    } else {
                        c.sending = false;
                        if res <= 0 {
                            c.ended = true;
                        } else {
                            let front = &mut c.queue[0];
                            front.2 += res as usize;
                            if front.2 == front.1 {
                                bufs.put(front.0);
                                returned = true;
                                c.queue.pop_front();
                            }
                            if !c.queue.is_empty() && !c.ended {
                                c.sending = true;
                                next.push(send(slot, c, &bufs));
                            }
                        }
                    }
                    if c.ended && !c.sending {
                        for (bid, _, _) in c.queue.drain(..) {
                            bufs.put(bid);
                            returned = true;
                        }
                        if c.armed {
                            // Shut the socket down so the armed recv completes for good.
                            // SAFETY: a plain syscall on an fd we own.
                            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
                        } else {
                            conns[slot] = None;
                            free.push(slot);
                        }
                    }
                }
            }
        }
        if returned {
            bufs.publish();
        }
    }
}

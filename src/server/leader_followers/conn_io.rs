//! A connection's I/O once its event arrived: reading, flushing, re-arming (ONESHOT) and
//! destroying.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::event::epoll::{self, EventData, EventFlags};
use socket2::SockRef;

use super::conn::LfConn;
use super::counters::bump;
use super::ops::Ops;
use super::shared::lock;
use super::worker::{Ev, Worker, SCRATCH};
use crate::net::{Buffer, CloseReason, Ctx};
use crate::reactor::Interest;

impl Worker<'_> {
    pub(super) fn conn_event(&mut self, c: &mut LfConn, ev: Ev) {
        if ev.writable {
            self.flush(c);
        }
        if !c.core.live() || !(ev.readable || ev.error) {
            return;
        }
        if ev.error && (c.core.read_eof || c.core.read_paused) {
            // No read will surface the error: look at it here.
            let fd = c.core.fd.as_ref().expect("live");
            match SockRef::from(fd).take_error() {
                Ok(Some(e)) | Err(e) => c.core.close_with(CloseReason::Error(e.kind())),
                Ok(None) if c.core.read_eof => c.core.close_with(CloseReason::Normal),
                Ok(None) => {}
            }
        } else if self.read(c, ev.hup) {
            self.close_if_drained(c);
        }
    }

    /// Reads until the socket is drained (a short read) or the read budget is spent; what is
    /// left is reported again after the re-arm. True when it read on to EAGAIN or the
    /// peer's FIN, which is how a draining connection is found idle.
    pub(super) fn read(&mut self, c: &mut LfConn, hup: bool) -> bool {
        let mut total = 0usize;
        loop {
            let core = &mut c.core;
            if core.read_paused || !core.live() {
                return false;
            }
            if core.read_eof {
                return true;
            }
            let fd = core.fd.as_ref().expect("live");
            let pending = core.input.take();
            let direct = pending.is_none();
            let mut scratch = self
                .scratch
                .take()
                .unwrap_or_else(|| Buffer::with_capacity(SCRATCH));
            let (mut input, asked, res) = match pending {
                None => {
                    let asked = scratch.writable();
                    let res = scratch.recv_from(fd);
                    (scratch, asked, res)
                }
                Some(mut buf) => {
                    let asked = buf.writable() + scratch.writable();
                    let res = buf.read_from(fd, scratch.writable_mut());
                    self.scratch = Some(scratch);
                    (buf, asked, res)
                }
            };
            match res {
                Ok(0) => {
                    self.stash(c, input, direct);
                    self.peer_eof(c);
                    return true;
                }
                Ok(n) => {
                    bump(&self.stats.bytes_in, n as u64);
                    total += n;
                    if c.core.lingering {
                        // Closing: read only to reach the peer's FIN. Only output moving
                        // counts as activity now (the linger timer, `timers.rs`).
                        input.clear();
                    } else {
                        c.core.last_active = self.now;
                        self.call(c, |h, cx| h.on_data(cx, &mut input));
                    }
                    self.stash(c, input, direct);
                    // A short read drained the socket, unless a FIN is known to wait behind.
                    // Draining: read on to EAGAIN, which is how an idle connection is found.
                    let short = n < asked && !hup && !c.core.draining;
                    if short || total >= self.sh.cfg.read_budget {
                        return false;
                    }
                }
                Err(e) => {
                    self.stash(c, input, direct);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return true,
                        io::ErrorKind::Interrupted => {}
                        kind => {
                            c.core.close_with(CloseReason::Error(kind));
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// The scratch buffer goes back to the thread (what the handler left in it is copied into
    /// a buffer of the connection's own); a connection's buffer is dropped once empty.
    fn stash(&mut self, c: &mut LfConn, mut input: Buffer, direct: bool) {
        let keep = !input.is_empty() && c.core.live() && !c.core.lingering;
        if direct {
            if keep {
                let mut own = Buffer::with_capacity(input.len().max(Buffer::INITIAL_CAPACITY));
                own.append(input.as_slice());
                c.core.input = Some(own);
            }
            input.clear();
            self.scratch = Some(input);
        } else if keep {
            c.core.input = Some(input);
        }
    }

    /// `read() == 0`: the peer's FIN (rule 2). The handler decides (default: finish writing,
    /// then our FIN), and hears of it even when ours went out first, unless it asked to close;
    /// if ours already went out, both directions are done.
    fn peer_eof(&mut self, c: &mut LfConn) {
        c.core.read_eof = true;
        let both_done = c.core.write_shut;
        if !c.core.close_after_shutdown {
            self.call(c, |h, cx| h.on_peer_shutdown(cx));
        }
        if both_done {
            c.core.close_with(CloseReason::Normal);
        }
    }

    /// Writable: send what is queued; once empty, the pending FIN or `on_drained`.
    pub(super) fn flush(&mut self, c: &mut LfConn) {
        let core = &mut c.core;
        if !core.live() {
            return;
        }
        let Some(fd) = core.fd.as_ref() else {
            return;
        };
        if core.output.is_empty() {
            return;
        }
        // No write budget here: a flush stopped at one would wait for the re-armed poll,
        // which reports a TCP socket writable only once a third of its buffer is free, so a
        // socket with room to spare could wait for its peer to read. A long flush holds
        // this thread only; the followers serve the other connections meanwhile.
        let res = core.output.flush(fd.as_fd(), u64::MAX, drop);
        let sent = res.as_ref().map_or(0, |f| f.written);
        let res = res.map(|f| f.done);
        if sent > 0 {
            bump(&self.stats.bytes_out, sent);
            core.last_active = self.now;
        }
        match res {
            Ok(false) => {}
            Ok(true) => {
                core.above_high_water = false;
                if core.shutdown_after_flush {
                    core.shutdown_now(self.sh, self.now);
                } else {
                    self.call(c, |h, cx| h.on_drained(cx));
                    // Draining, its answer is out: see whether another request is waiting.
                    self.recheck_drain(c);
                }
            }
            Err(e) => core.close_with(CloseReason::Error(e.kind())),
        }
    }

    /// After a connection was handled: destroy it if it is closing, otherwise re-arm it with
    /// the interest it now needs. After its own event (`ev`), a connection is disarmed
    /// (ONESHOT) and always re-armed; after a timer, only if its interest changed (if an event
    /// of it is in flight, that event's thread re-arms it).
    pub(super) fn settle(&mut self, c: &mut LfConn, ev: Option<Ev>) {
        let core = &mut c.core;
        let Some(fd) = core.fd.as_ref() else { return };
        if core.closing.is_some() {
            self.destroy(c);
            return;
        }
        let want = core.want();
        if let Some(ev) = ev {
            core.armed = None;
            if want == Interest::NONE && ev.error {
                // A hang-up or error is reported at once by every re-arm: with nothing to read
                // or write (paused, or the peer's FIN in and the handler keeping the
                // connection), stay disarmed until the interest changes, instead of spinning.
                return;
            }
        } else if core.armed == Some(want) {
            return;
        }
        let mut flags = EventFlags::ONESHOT;
        if want.is_readable() {
            flags |= EventFlags::IN | EventFlags::RDHUP;
        }
        if want.is_writable() {
            flags |= EventFlags::OUT;
        }
        let data = EventData::new_u64(core.id.0 .0);
        let res = if core.added {
            epoll::modify(&self.sh.epfd, fd, data, flags)
        } else {
            epoll::add(&self.sh.epfd, fd, data, flags)
        };
        match res {
            Ok(()) => {
                core.added = true;
                core.armed = Some(want);
            }
            Err(e) => {
                core.close_with(CloseReason::Error(io::Error::from(e).kind()));
                self.destroy(c);
            }
        }
    }

    /// The one place a connection's fd is closed (rule 3): under its lock, after the callback
    /// that asked for it returned. RST unless both sides finished (rule 4).
    pub(super) fn destroy(&mut self, c: &mut LfConn) {
        let sh = self.sh;
        let core = &mut c.core;
        let Some(fd) = core.fd.take() else { return };
        let reason = core.closing.take().unwrap_or(CloseReason::Normal);
        sh.cancel_timers(
            [core.idle_timer.take(), core.linger_timer.take()]
                .into_iter()
                .flatten()
                .chain(core.user_timers.drain(..).map(|(_, key)| key)),
        );
        if reason != CloseReason::Normal {
            let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
        }
        drop(fd); // close(2); also leaves the epoll set (leader/followers never forks or dups)
        core.input = None;
        let left = sh.remove(core.id);
        if core.holds_permit {
            sh.permits.fetch_sub(1, Ordering::AcqRel);
        }
        if !core.refused {
            bump(&self.stats.closed, 1);
        }
        if let Some(mut h) = c.handler.take() {
            let id = c.core.id;
            let mut ops = Ops {
                core: &mut c.core,
                sh,
                stats: self.stats,
                now: self.now,
            };
            // The output is still there: what it holds is what was never sent.
            h.on_close(&mut Ctx::new(&mut ops, id), reason);
        }
        c.core.output.clear(drop);
        if sh.listener_starved.swap(false, Ordering::AcqRel) {
            sh.arm_listener(&lock(&sh.listener));
        }
        if left == 0 && sh.draining.load(Ordering::SeqCst) {
            sh.wake(); // the leader may be waiting with nothing left to wait for
        }
    }
}

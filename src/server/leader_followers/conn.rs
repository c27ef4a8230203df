//! A connection ([`LfConn`]) and the operations on its state ([`Core`]): writing, half-
//! and full close, linger, idle and user timers.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::net::{SendFlags, Shutdown};

use super::counters::{bump, Counters};
use super::settings::ms;
use super::shared::Shared;
use super::timers::TimerEvent;
use crate::net::output::OutputQueue;
use crate::net::send_timeout;
use crate::net::{Buffer, CloseReason, ConnId, FileRange, Handler};
use crate::reactor::{Interest, TimerKey, Token};

/// One connection: its handler and its state. Locked by whichever thread handles it.
pub(super) struct LfConn {
    pub(super) handler: Option<Box<dyn Handler>>,
    pub(super) core: Core,
}

/// A connection's state, apart from its handler (so the handler can be called with a context
/// that borrows the rest).
pub(super) struct Core {
    pub(super) id: ConnId,
    /// `None` once closed.
    pub(super) fd: Option<OwnedFd>,
    /// Bytes the handler left unconsumed (none held between messages otherwise).
    pub(super) input: Option<Buffer>,
    pub(super) output: OutputQueue,
    /// Registered in the epoll set yet (ADD vs MOD).
    pub(super) added: bool,
    /// What the last re-arm asked for; `None` while disarmed.
    pub(super) armed: Option<Interest>,
    pub(super) read_paused: bool,
    /// Reading was resumed with unconsumed input: offer it to the handler again.
    pub(super) redeliver: bool,
    /// The peer's FIN was read.
    pub(super) read_eof: bool,
    /// Our FIN went out.
    pub(super) write_shut: bool,
    /// Send our FIN once the output drains.
    pub(super) shutdown_after_flush: bool,
    /// After our FIN, wait for the peer's and close (a full close, not a half-close).
    pub(super) close_after_shutdown: bool,
    /// Closing: input is discarded until the peer's FIN.
    pub(super) lingering: bool,
    pub(super) above_high_water: bool,
    /// A write crossed the high-water mark: `on_high_water` is due once the callback returns.
    pub(super) high_water_pending: bool,
    pub(super) last_active: u64,
    pub(super) idle_ms: Option<u64>,
    pub(super) idle_timer: Option<TimerKey>,
    pub(super) linger_timer: Option<TimerKey>,
    pub(super) user_timers: Vec<(u64, TimerKey)>,
    pub(super) holds_permit: bool,
    /// Refused over `--max-conns` and closing (`net::listener::refusal`): not counted open,
    /// closed or timed out, and closed at once when the server stops.
    pub(super) refused: bool,
    /// Set when the connection must close; it is destroyed once the current callback returns.
    pub(super) closing: Option<CloseReason>,
    /// The server is stopping: close once idle (see `Worker::close_if_drained`).
    pub(super) draining: bool,
}

impl Core {
    pub(super) fn new(fd: OwnedFd, now: u64) -> Core {
        Core {
            id: ConnId(Token(0)),
            fd: Some(fd),
            input: None,
            output: OutputQueue::default(),
            added: false,
            armed: None,
            read_paused: false,
            redeliver: false,
            read_eof: false,
            write_shut: false,
            shutdown_after_flush: false,
            close_after_shutdown: false,
            lingering: false,
            above_high_water: false,
            high_water_pending: false,
            last_active: now,
            idle_ms: None,
            idle_timer: None,
            linger_timer: None,
            user_timers: Vec::new(),
            holds_permit: false,
            refused: false,
            closing: None,
            draining: false,
        }
    }

    pub(super) fn live(&self) -> bool {
        self.fd.is_some() && self.closing.is_none()
    }

    pub(super) fn output_len(&self) -> usize {
        self.output.len() as usize
    }

    /// Read unless paused or at EOF, write while output is queued.
    pub(super) fn want(&self) -> Interest {
        Interest::with(!self.read_paused && !self.read_eof, self.output_len() > 0)
    }

    pub(super) fn close_with(&mut self, reason: CloseReason) {
        if self.fd.is_some() && self.closing.is_none() {
            self.closing = Some(reason);
        }
    }

    pub(super) fn write(&mut self, sh: &Shared, stats: &Counters, now: u64, data: &[u8]) -> bool {
        if !self.live() || self.write_shut || self.shutdown_after_flush {
            return false;
        }
        if data.is_empty() {
            return true;
        }
        let mut written = 0;
        if self.output_len() == 0 {
            let fd = self.fd.as_ref().expect("live");
            loop {
                match rustix::net::send(fd, data, SendFlags::NOSIGNAL) {
                    Ok(n) => {
                        written = n;
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => {
                        self.close_with(CloseReason::Error(io::Error::from(e).kind()));
                        return false;
                    }
                }
            }
            if written > 0 {
                bump(&stats.bytes_out, written as u64);
                self.last_active = now;
            }
        }
        if written == data.len() {
            return true;
        }
        self.output.push_bytes(&data[written..], Buffer::new);
        self.note_high_water(sh);
        true
    }

    /// Queues `head` then a file range behind what is queued (sent with sendfile when the
    /// socket is writable; the caller's flush starts it).
    pub(super) fn send_file(&mut self, sh: &Shared, head: &[u8], range: FileRange) -> bool {
        if !self.live() || self.write_shut || self.shutdown_after_flush {
            return false;
        }
        self.output.push_bytes(head, Buffer::new);
        self.output.push_file(range);
        self.note_high_water(sh);
        true
    }

    fn note_high_water(&mut self, sh: &Shared) {
        if self.output_len() >= sh.cfg.high_water && !self.above_high_water {
            self.above_high_water = true;
            self.high_water_pending = true;
        }
    }

    pub(super) fn shutdown_write(&mut self, sh: &Shared, now: u64) {
        if !self.live() || self.write_shut {
            return;
        }
        if self.output_len() > 0 {
            self.shutdown_after_flush = true;
        } else {
            self.shutdown_now(sh, now);
        }
    }

    pub(super) fn shutdown_now(&mut self, sh: &Shared, now: u64) {
        self.shutdown_after_flush = false;
        if self.write_shut {
            return;
        }
        let Some(fd) = self.fd.as_ref() else { return };
        self.write_shut = true;
        if rustix::net::shutdown(fd, Shutdown::Write).is_err() {
            // ENOTCONN: the peer already reset.
            self.close_with(CloseReason::Error(io::ErrorKind::NotConnected));
        } else if self.read_eof {
            self.close_with(CloseReason::Normal);
        } else if self.close_after_shutdown {
            // The wait for the peer's FIN gets a whole linger timeout from our FIN; after a
            // flush the kernel may still hold much of it, so the peer's progress is marked.
            let flushed = self.linger_timer.take();
            let mark = flushed.and_then(|_| send_timeout::mark(self.fd.as_ref()?.as_fd()));
            sh.replace_timer(flushed, None);
            self.start_linger(sh, now, mark);
        }
    }

    /// Graceful close: flush, FIN, wait for the peer's FIN up to the linger timeout (which
    /// bounds the flush too, counted from the last bytes the peer took: `timers.rs`).
    pub(super) fn close(&mut self, sh: &Shared, now: u64) {
        if !self.live() {
            return;
        }
        self.close_after_shutdown = true;
        if !self.write_shut {
            self.shutdown_write(sh, now);
        }
        // Output still queued: the peer's progress is marked, to tell a slow reader from a
        // stalled one (`net::send_timeout`).
        let mark = match &self.fd {
            Some(fd) if self.output_len() > 0 => send_timeout::mark(fd.as_fd()),
            _ => None,
        };
        self.start_linger(sh, now, mark);
    }

    fn start_linger(&mut self, sh: &Shared, now: u64, mark: Option<u32>) {
        if !self.live() {
            return;
        }
        if !self.lingering {
            self.lingering = true;
            self.input = None; // will never be handled now
        }
        // Reading on is how the peer's FIN is seen.
        self.read_paused = false;
        if self.linger_timer.is_none() {
            let deadline = now.saturating_add(sh.cfg.linger_ms);
            self.linger_timer = Some(sh.add_timer(deadline, TimerEvent::Linger(self.id, mark)));
        }
    }

    pub(super) fn set_idle_timeout(&mut self, sh: &Shared, now: u64, timeout: Option<Duration>) {
        if self.fd.is_none() {
            return;
        }
        self.idle_ms = timeout.map(ms);
        let new = self.idle_ms.map(|ms| {
            (
                now.max(self.last_active).saturating_add(ms),
                TimerEvent::Idle(self.id),
            )
        });
        self.idle_timer = sh.replace_timer(self.idle_timer.take(), new);
    }

    pub(super) fn set_timer(&mut self, sh: &Shared, now: u64, after: Duration, tag: u64) {
        if self.fd.is_none() {
            return;
        }
        let old = self
            .user_timers
            .iter()
            .position(|&(t, _)| t == tag)
            .map(|i| self.user_timers.swap_remove(i).1);
        let deadline = now.saturating_add(ms(after));
        if let Some(key) = sh.replace_timer(old, Some((deadline, TimerEvent::User(self.id, tag)))) {
            self.user_timers.push((tag, key));
        }
    }

    pub(super) fn cancel_timer(&mut self, sh: &Shared, tag: u64) {
        if let Some(i) = self.user_timers.iter().position(|&(t, _)| t == tag) {
            let (_, key) = self.user_timers.swap_remove(i);
            sh.cancel_timers(std::iter::once(key));
        }
    }
}

//! What a timer means, and how the fired ones are handled.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use super::conn::LfConn;
use super::counters::bump;
use super::shared::lock;
use super::worker::Worker;
use crate::net::send_timeout::{self, Verdict};
use crate::net::splice::has_unread;
use crate::net::{CloseReason, ConnId};
use crate::reactor::TimerWheel;

pub(super) enum TimerEvent {
    Idle(ConnId),
    /// With the peer's progress when it was set (`net::send_timeout`).
    Linger(ConnId, Option<u32>),
    User(ConnId, u64),
    DrainDeadline,
    RetryAccept,
}

pub(super) struct Timers {
    pub(super) wheel: TimerWheel<TimerEvent>,
}

impl Worker<'_> {
    pub(super) fn run_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        for (key, _, ev) in fired.drain(..) {
            self.now = self.sh.now();
            let (id, what) = match ev {
                TimerEvent::Idle(id) => (id, ev),
                TimerEvent::Linger(id, _) => (id, ev),
                TimerEvent::User(id, _) => (id, ev),
                TimerEvent::DrainDeadline => {
                    self.drain_deadline();
                    continue;
                }
                TimerEvent::RetryAccept => {
                    if self.sh.listener_starved.swap(false, Ordering::AcqRel) {
                        self.sh.arm_listener(&lock(&self.sh.listener));
                    }
                    continue;
                }
            };
            let Some(conn) = self.sh.lookup(id.0 .0) else {
                continue;
            };
            let mut c = lock(&conn);
            if !c.core.live() {
                continue;
            }
            match what {
                TimerEvent::Idle(_) if c.core.idle_timer == Some(key) => self.idle_fired(&mut c),
                TimerEvent::Linger(_, mark) if c.core.linger_timer == Some(key) => {
                    c.core.linger_timer = None;
                    let flushing = !c.core.write_shut && c.core.output_len() > 0;
                    let due = c.core.last_active.saturating_add(self.sh.cfg.linger_ms);
                    if flushing && self.now >= due {
                        // A slow reader's room, which the poller may not have reported (as
                        // the event loop's `nudge`).
                        self.flush(&mut c);
                        if !c.core.live() || c.core.linger_timer.is_some() {
                            // Gone, or flushed whole with our FIN sent: a new linger from it.
                            self.recheck_drain(&mut c);
                            self.settle(&mut c, None);
                            continue;
                        }
                    }
                    let core = &mut c.core;
                    // Still flushing before our FIN: a send timeout, counted from the last
                    // bytes the peer took; then, the peer still taking what the kernel holds
                    // (as the event loop's `linger_timer_fired`).
                    let due = core.last_active.saturating_add(self.sh.cfg.linger_ms);
                    let next = if !core.write_shut && core.output_len() > 0 && self.now < due {
                        // A fresh mark: what the peer acknowledged for bytes that already
                        // counted (`last_active`) must not count again.
                        let fresh = core
                            .fd
                            .as_ref()
                            .and_then(|fd| send_timeout::mark(fd.as_fd()));
                        Some((due, fresh))
                    } else {
                        let verdict = core.fd.as_ref().map_or(Verdict::Stalled, |fd| {
                            send_timeout::verdict(fd.as_fd(), mark)
                        });
                        match verdict {
                            Verdict::Wait(m) => {
                                Some((self.now.saturating_add(self.sh.cfg.linger_ms), Some(m)))
                            }
                            Verdict::Stalled => None,
                        }
                    };
                    if let Some((at, mark)) = next {
                        core.linger_timer =
                            Some(self.sh.add_timer(at, TimerEvent::Linger(core.id, mark)));
                    } else {
                        if !core.refused {
                            bump(&self.stats.linger_timeouts, 1);
                        }
                        core.close_with(CloseReason::LingerTimeout);
                    }
                }
                TimerEvent::User(_, tag) => {
                    let Some(i) = c
                        .core
                        .user_timers
                        .iter()
                        .position(|&(t, k)| t == tag && k == key)
                    else {
                        continue;
                    };
                    c.core.user_timers.swap_remove(i);
                    self.call(&mut c, |h, cx| h.on_timer(cx, tag));
                }
                _ => continue, // re-armed or cancelled since it fired
            }
            self.recheck_drain(&mut c);
            self.settle(&mut c, None);
        }
        self.fired = fired;
    }

    /// The idle timer is not re-armed on every read: compare with the last activity, re-arm
    /// for the rest, or tell the handler (default: graceful close).
    fn idle_fired(&mut self, c: &mut LfConn) {
        let (sh, now) = (self.sh, self.now);
        let core = &mut c.core;
        core.idle_timer = None;
        let Some(ms) = core.idle_ms else { return };
        if now >= core.last_active.saturating_add(ms) && core.output_len() > 0 && !core.write_shut {
            // Room a slow reader made, unreported: taken now, it counts as activity.
            self.flush(c);
            if !c.core.live() {
                return;
            }
        }
        let core = &mut c.core;
        let deadline = core.last_active.saturating_add(ms);
        if now < deadline {
            core.idle_timer = sh.replace_timer(None, Some((deadline, TimerEvent::Idle(core.id))));
            return;
        }
        if core.linger_timer.is_some() {
            return; // a close is under way; its linger timer decides the end
        }
        if core.write_shut || core.shutdown_after_flush || core.close_after_shutdown {
            // Stuck a whole idle period after this end started closing: give up.
            core.close_with(CloseReason::IdleTimeout);
            return;
        }
        // A leader runs the timers due before it takes the next event, so bytes that came
        // while every thread was busy in a handler may still wait in the socket, unread and
        // uncounted: the peer spoke, it is not idle. (Not while reading is paused: a peer that
        // sends and never reads what it is sent must still time out.)
        if !core.read_paused && core.fd.as_ref().is_some_and(has_unread) {
            core.idle_timer = sh.replace_timer(
                None,
                Some((now.saturating_add(ms), TimerEvent::Idle(core.id))),
            );
            return;
        }
        bump(&self.stats.idle_timeouts, 1);
        // Re-armed, so a peer that never reads what the handler queues is cut off later.
        core.idle_timer = sh.replace_timer(
            None,
            Some((now.saturating_add(ms), TimerEvent::Idle(core.id))),
        );
        self.call(c, |h, cx| h.on_idle_timeout(cx));
    }
}

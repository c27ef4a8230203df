//! The application heartbeat, the same on both ends of a chat connection: a peer heard from
//! nothing for an interval is pinged, one heard from nothing for the timeout is dead.
//!
//! Why at all, with TCP keepalive there: keepalive's probes are answered by the peer's
//! kernel, so a peer whose program hangs (or is too loaded to answer) looks alive for ever;
//! and a probe waits behind unacknowledged data, so a peer that vanished mid-transfer is
//! noticed only after the retransmissions give up, minutes later. A ping is answered by the
//! peer's program, and any frame from the peer counts as hearing from it.
//!
//! One timer per connection, not re-armed for every frame: when it fires it compares the
//! last time the peer was heard from with now and sets itself for what is left.

use std::time::{Duration, Instant};

/// The timer tag a chat handler gives its heartbeat.
pub const TIMER: u64 = 1;

/// What the heartbeat asks of its connection when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Send a PING, then set the timer again after this long.
    Ping(Duration),
    /// Set the timer again after this long (the peer spoke since).
    Wait(Duration),
    /// Silent for this long, past the timeout: drop the peer.
    Dead(Duration),
}

#[derive(Debug)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    last_heard: Instant,
    /// A PING went out since the peer was last heard from: one per silence is enough.
    pinged: bool,
}

impl Heartbeat {
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Heartbeat {
        Heartbeat {
            interval,
            timeout,
            last_heard: now,
            pinged: false,
        }
    }

    /// The first timer: one interval from now.
    pub fn first_timer(&self) -> Duration {
        self.interval
    }

    /// Any frame came from the peer.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.pinged = false;
    }

    /// The timer fired at `now`.
    pub fn fired(&mut self, now: Instant) -> Beat {
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= self.timeout {
            return Beat::Dead(silent);
        }
        let to_timeout = self.timeout - silent;
        if silent >= self.interval {
            let first = !self.pinged;
            self.pinged = true;
            // Wake again at the timeout (or at the next interval, to ping once more if the
            // first one was lost on its way: a ping is cheap, a false alarm is not).
            let next = to_timeout.min(self.interval);
            return if first {
                Beat::Ping(next)
            } else {
                Beat::Wait(next)
            };
        }
        Beat::Wait((self.interval - silent).min(to_timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_silent_peer_is_pinged_once_per_silence_then_dropped_at_the_timeout() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(2 * S, 5 * S, t0);
        assert_eq!(hb.first_timer(), 2 * S);
        assert_eq!(hb.fired(t0 + 2 * S), Beat::Ping(2 * S));
        assert_eq!(hb.fired(t0 + 4 * S), Beat::Wait(S));
        assert_eq!(hb.fired(t0 + 5 * S), Beat::Dead(5 * S));
    }

    #[test]
    fn hearing_from_the_peer_puts_the_next_ping_an_interval_after_it() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(2 * S, 5 * S, t0);
        hb.heard(t0 + S);
        assert_eq!(hb.fired(t0 + 2 * S), Beat::Wait(S));
        assert_eq!(hb.fired(t0 + 3 * S), Beat::Ping(2 * S));
        hb.heard(t0 + 4 * S); // the PONG
        assert_eq!(hb.fired(t0 + 5 * S), Beat::Wait(S));
        assert_eq!(
            hb.fired(t0 + 6 * S),
            Beat::Ping(2 * S),
            "a new silence, a new ping"
        );
    }
}

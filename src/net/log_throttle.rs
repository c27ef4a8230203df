//! A log line that may come at most once per period, process-wide, with a count of the ones
//! left out.
//!
//! Some troubles come in floods: out of fds, every accept and every open fails the same way,
//! thousands of times a second. The operator needs to hear of it, once, and how often; a line
//! each would bury the log and slow the very loop that is short of resources. The state is
//! atomic and process-wide because under thread- and process-per-connection each connection
//! has a thread of its own.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One kind of line, said at most once per `period` seconds.
pub struct LogThrottle {
    period: i64,
    /// The second of the last line said (unix time); `i64::MIN` before any.
    last: AtomicI64,
    left_out: AtomicU64,
}

impl LogThrottle {
    pub const fn new(period_secs: i64) -> Self {
        LogThrottle {
            period: period_secs,
            last: AtomicI64::new(i64::MIN),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when the line may be said now; otherwise
    /// counts one more left out.
    pub fn turn(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.turn_at(now)
    }

    fn turn_at(&self, now: i64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        // A clock set back (now < last) must not silence the line until it catches up.
        let recent = last != i64::MIN && (0..self.period).contains(&now.saturating_sub(last));
        if recent
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.left_out.swap(0, Ordering::Relaxed))
    }
}

/// `" (N more like it since the last line)"`, or nothing when none were left out.
pub fn left_out_note(left_out: u64) -> String {
    if left_out == 0 {
        String::new()
    } else {
        format!(" ({left_out} more like it since the last line)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_a_period_with_the_count_left_out() {
        let t = LogThrottle::new(1);
        assert_eq!(t.turn_at(100), Some(0));
        assert_eq!(t.turn_at(100), None);
        assert_eq!(t.turn_at(100), None);
        assert_eq!(t.turn_at(101), Some(2));
        assert_eq!(t.turn_at(103), Some(0));

        let t = LogThrottle::new(10);
        assert_eq!(t.turn_at(100), Some(0));
        assert_eq!(t.turn_at(109), None);
        assert_eq!(t.turn_at(110), Some(1));
        // The clock set back: said at once rather than silenced for the gap.
        assert_eq!(t.turn_at(50), Some(0));
        assert_eq!(t.turn_at(55), None);
    }

    #[test]
    fn racing_threads_say_it_once_per_period() {
        let t = std::sync::Arc::new(LogThrottle::new(3600));
        let said: u64 = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..1000).filter(|_| t.turn_at(7).is_some()).count())
            })
            .map(|h| h.join().unwrap() as u64)
            .sum();
        assert_eq!(said, 1);
        assert_eq!(t.left_out.load(Ordering::Relaxed), 7999);
    }
}

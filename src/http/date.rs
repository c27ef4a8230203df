//! The Date header, formatted once a second per thread, read once per batch of requests.
//!
//! Every response carries Date (RFC 9110 6.6.1), and formatting a calendar date costs far
//! more than the rest of a small response's head. The value only changes once a second, so
//! each thread (each loop) keeps the formatted line and the instant until which it is right.
//! Even reading the clock shows in a profile at a million pipelined requests a second, so the
//! handler reads it once per batch ([`set_batch_time`]) and every response of the batch uses
//! that reading.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" is 37 bytes.
const LINE_LEN: usize = 37;

/// The first two lines of every 200 response, kept in front of the Date line so that the three
/// leave in one copy.
const STATUS_200: &[u8] = b"HTTP/1.1 200 OK\r\nServer: keel\r\n";

struct Cached {
    /// The line is right until this instant (the next second boundary).
    until: Option<Instant>,
    /// [`STATUS_200`], then the Date line.
    lines: [u8; STATUS_200.len() + LINE_LEN],
}

thread_local! {
    static CACHE: RefCell<Cached> = const {
        RefCell::new(Cached { until: None, lines: [0; STATUS_200.len() + LINE_LEN] })
    };
    static BATCH_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Seconds since the epoch now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The clock reading the responses of the current batch use; `None` ends the batch.
pub fn set_batch_time(now: Option<Instant>) {
    BATCH_NOW.with(|b| b.set(now));
}

/// Appends the `Date: ...\r\n` line for the current second.
pub fn push_date_line(out: &mut Vec<u8>) {
    push_lines(out, STATUS_200.len());
}

/// Appends the status line of a 200, the Server line and the Date line.
pub fn push_status_200_and_date(out: &mut Vec<u8>) {
    push_lines(out, 0);
}

/// Appends the cached lines from byte `from` on, first bringing the Date up to this second.
fn push_lines(out: &mut Vec<u8>, from: usize) {
    let now = BATCH_NOW.with(Cell::get).unwrap_or_else(Instant::now);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.until.is_none_or(|until| now >= until) {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let mut line = Vec::with_capacity(LINE_LEN);
            line.extend_from_slice(b"Date: ");
            super::conditional::write_http_date(&mut line, wall.as_secs() as i64);
            line.extend_from_slice(b"\r\n");
            if line.len() != LINE_LEN {
                // Cannot happen for dates between 1970 and 9999; never cache a wrong length.
                if from == 0 {
                    out.extend_from_slice(STATUS_200);
                }
                out.extend_from_slice(&line);
                return;
            }
            c.lines[..STATUS_200.len()].copy_from_slice(STATUS_200);
            c.lines[STATUS_200.len()..].copy_from_slice(&line);
            let to_next_second =
                Duration::from_secs(1) - Duration::from_nanos(wall.subsec_nanos().into());
            c.until = Some(Instant::now() + to_next_second);
        }
        out.extend_from_slice(&c.lines[from..]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_an_imf_fixdate_for_now() {
        let mut out = Vec::new();
        push_date_line(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("Date: ") && s.ends_with(" GMT\r\n"), "{s:?}");
        let t = super::super::conditional::parse_http_date(&s.as_bytes()[6..s.len() - 2]).unwrap();
        assert!((t - unix_now()).abs() <= 1);
        let mut again = Vec::new();
        push_date_line(&mut again);
        assert_eq!(again.len(), LINE_LEN);
    }

    #[test]
    fn the_200_status_lines_name_the_same_server_as_every_other_response() {
        let expected = [&b"HTTP/1.1 200 OK\r\n"[..], super::super::response::SERVER].concat();
        assert_eq!(STATUS_200, &expected[..]);
    }

    #[test]
    fn the_200_lines_end_with_the_same_date_line() {
        let mut date = Vec::new();
        push_date_line(&mut date);
        let mut all = Vec::new();
        push_status_200_and_date(&mut all);
        assert_eq!(&all[..STATUS_200.len()], STATUS_200);
        // The same second, unless the clock ticked between the two calls.
        let tail = &all[STATUS_200.len()..];
        assert_eq!(tail.len(), LINE_LEN);
        assert!(tail == &date[..] || tail.starts_with(b"Date: "), "{all:?}");
    }

    #[test]
    fn the_line_changes_with_the_second() {
        let mut first = Vec::new();
        push_date_line(&mut first);
        std::thread::sleep(Duration::from_millis(1100));
        let mut second = Vec::new();
        push_date_line(&mut second);
        assert_ne!(first, second);
    }
}

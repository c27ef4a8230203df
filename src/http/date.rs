//! The Date header, formatted once a second per thread.
//!
//! Every response carries Date (RFC 9110 6.6.1), and formatting a calendar date costs far
//! more than the rest of a small response's head. The value only changes once a second, so
//! each thread (each loop) keeps the formatted bytes and the second they belong to; a request
//! costs a clock read (vDSO, no syscall) and a compare.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" is 37 bytes.
const LINE_LEN: usize = 37;

struct Cached {
    second: i64,
    line: [u8; LINE_LEN],
}

thread_local! {
    static CACHE: RefCell<Cached> = const { RefCell::new(Cached { second: i64::MIN, line: [0; LINE_LEN] }) };
}

/// Seconds since the epoch now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Appends the `Date: ...\r\n` line for the current second.
pub fn push_date_line(out: &mut Vec<u8>) {
    let now = unix_now();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.second != now {
            let mut line = Vec::with_capacity(LINE_LEN);
            line.extend_from_slice(b"Date: ");
            super::conditional::write_http_date(&mut line, now);
            line.extend_from_slice(b"\r\n");
            if line.len() == LINE_LEN {
                c.line.copy_from_slice(&line);
                c.second = now;
            } else {
                // Cannot happen for dates between 1970 and 9999; never cache a wrong length.
                out.extend_from_slice(&line);
                return;
            }
        }
        out.extend_from_slice(&c.line);
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
}

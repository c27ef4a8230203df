//! The Date header, formatted once a second per thread, read once per batch of requests.
//!
//! Every response carries Date (RFC 9110 6.6.1), and formatting a calendar date costs far
//! more than the rest of a small response's head. The value only changes once a second, so
//! each thread (each loop) keeps the formatted line and the instant until which it is right.
//! Even reading the clock shows in a profile at a million pipelined requests a second, so the
//! handler reads it once per batch ([`set_batch_time`]) and every response of the batch uses
//! that reading.
//!
//! Each formatted line gets a [`Stamp`], so that a response kept whole with its Date line (a
//! small file's, see [`crate::http::files::Entry::whole_200`]) knows when its copy is out of
//! date and leaves in one copy the rest of the time.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" is 37 bytes.
const LINE_LEN: usize = 37;

/// The first two lines of every 200 response, kept in front of the Date line so that the three
/// leave in one copy.
const STATUS_200: &[u8] = b"HTTP/1.1 200 OK\r\nServer: keel\r\n";

/// Bytes of the status, Server and Date lines of a 200 response.
pub const STATUS_200_AND_DATE_LEN: usize = STATUS_200.len() + LINE_LEN;

/// Names one formatted Date line of this thread: it changes when the line does. Never 0, so
/// 0 can stand for "no line yet".
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp(pub u32);

struct Cached {
    /// The line is right until this instant (the next second boundary).
    until: Option<Instant>,
    /// Which line `lines` holds.
    stamp: u32,
    /// The second the line shows.
    secs: i64,
    /// [`STATUS_200`], then the Date line.
    lines: [u8; STATUS_200_AND_DATE_LEN],
}

thread_local! {
    static CACHE: RefCell<Cached> = const {
        RefCell::new(Cached { until: None, stamp: 0, secs: 0, lines: [0; STATUS_200_AND_DATE_LEN] })
    };
    static BATCH_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The stamp of the line every response of the current batch carries; 0 outside a batch
    /// (or when the date cannot be cached).
    static BATCH_STAMP: Cell<u32> = const { Cell::new(0) };
}

/// Seconds since the epoch now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Sets the clock reading that the responses built until the next call use (`None`: read the
/// clock each time), and brings this thread's Date line up to it.
pub fn set_batch_time(now: Option<Instant>) {
    BATCH_NOW.with(|b| b.set(now));
    let stamp = match now {
        Some(now) => CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if refresh(&mut c, now) {
                c.stamp
            } else {
                0
            }
        }),
        None => 0,
    };
    BATCH_STAMP.with(|b| b.set(stamp));
}

/// The stamp of the Date line the current batch's responses carry: `None` outside a batch.
pub fn batch_stamp() -> Option<Stamp> {
    match BATCH_STAMP.with(Cell::get) {
        0 => None,
        n => Some(Stamp(n)),
    }
}

/// Writes the status, Server and Date lines of a 200 response into `dst`, as of the current
/// batch; returns the stamp they carry (`None` outside a batch: `dst` is left alone).
pub fn write_status_200_and_date(dst: &mut [u8; STATUS_200_AND_DATE_LEN]) -> Option<Stamp> {
    let stamp = batch_stamp()?;
    CACHE.with(|c| dst.copy_from_slice(&c.borrow().lines));
    Some(stamp)
}

/// The second the Date line of the current batch shows (the clock's outside a batch): what a
/// Last-Modified sent with it must not pass (RFC 9110 8.8.2.1). The wall clock may already be
/// a second ahead of a line formatted earlier in the batch.
pub fn date_secs() -> i64 {
    let now = BATCH_NOW.with(Cell::get).unwrap_or_else(Instant::now);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if refresh(&mut c, now) {
            c.secs
        } else {
            unix_now()
        }
    })
}

/// Appends the Date line.
pub fn push_date_line(out: &mut Vec<u8>) {
    push_lines(out, STATUS_200.len());
}

/// Appends "HTTP/1.1 200 OK", the Server line and the Date line: one copy for the common case.
pub fn push_status_200_and_date(out: &mut Vec<u8>) {
    push_lines(out, 0);
}

fn push_lines(out: &mut Vec<u8>, from: usize) {
    let now = BATCH_NOW.with(Cell::get).unwrap_or_else(Instant::now);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if refresh(&mut c, now) {
            out.extend_from_slice(&c.lines[from..]);
            return;
        }
        // A date whose line is not 37 bytes (a year past 9999): right, but not cached.
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if from == 0 {
            out.extend_from_slice(STATUS_200);
        }
        out.extend_from_slice(b"Date: ");
        super::conditional::write_http_date(out, wall.as_secs() as i64);
        out.extend_from_slice(b"\r\n");
    });
}

/// Brings the cached lines up to `now`; false when the date cannot be cached.
fn refresh(c: &mut Cached, now: Instant) -> bool {
    if c.until.is_some_and(|until| now < until) {
        return true;
    }
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = Vec::with_capacity(LINE_LEN);
    line.extend_from_slice(b"Date: ");
    super::conditional::write_http_date(&mut line, wall.as_secs() as i64);
    line.extend_from_slice(b"\r\n");
    if line.len() != LINE_LEN {
        c.until = None;
        return false;
    }
    c.lines[..STATUS_200.len()].copy_from_slice(STATUS_200);
    c.lines[STATUS_200.len()..].copy_from_slice(&line);
    c.stamp = c.stamp.checked_add(1).unwrap_or(1);
    c.secs = wall.as_secs() as i64;
    // Until the next second boundary: the line is right for the rest of this second.
    let to_next_second = Duration::from_secs(1) - Duration::from_nanos(wall.subsec_nanos().into());
    c.until = Some(Instant::now() + to_next_second);
    true
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

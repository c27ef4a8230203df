//! Validators and conditional requests (RFC 9110 8.8 and 13) for static files.
//!
//! The ETag is derived from the file's identity (mtime, size, inode, ctime) rather than its
//! content, so it costs one fstat and no read; a replaced or rewritten file changes at least one
//! of those (the ctime even when a rewrite keeps the size and sets the mtime back).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// Strong ETag from file identity: `"<mtime secs>-<mtime nsec>-<size>-<inode>"` in hex, then
/// `-<ctime - mtime in ns>` when the status-change time differs from the mtime.
///
/// Strong because two different contents of one inode cannot share all of these: the mtime
/// and size can be kept across a rewrite (`touch -d`, `rsync --times`), but the status-change
/// time cannot be set back. If-Range needs a strong validator to be usable at all. A file
/// written and left alone has both times equal and gets the short form: fewer bytes in every
/// response. (A chmod changes the ctime too: it costs a client one full download.)
pub fn etag(size: u64, mtime_secs: i64, mtime_nsec: u32, ino: u64, ctime: (i64, u32)) -> String {
    let mut tag = format!("\"{mtime_secs:x}-{mtime_nsec:x}-{size:x}-{ino:x}");
    let nanos = |(secs, nsec): (i64, u32)| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
    let changed_after = nanos(ctime) - nanos((mtime_secs, mtime_nsec));
    if changed_after != 0 {
        let _ = write!(tag, "-{changed_after:x}");
    }
    tag.push('"');
    tag
}

/// The largest time IMF-fixdate's four-digit year can carry: 9999-12-31 23:59:59 UTC.
const MAX_HTTP_DATE: i64 = 253_402_300_799;

/// IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") for unix seconds (negative or pre-1970 -> clamp
/// to epoch; past year 9999 -> clamp to its last second).
pub fn http_date(unix_secs: i64) -> String {
    let mut out = Vec::with_capacity(29);
    write_http_date(&mut out, unix_secs);
    // Only ASCII is ever written.
    String::from_utf8(out).unwrap_or_default()
}

const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Appends the IMF-fixdate to `out` without allocating beyond `out`'s own growth (the Date
/// header is rebuilt every second on every worker, so it stays off the allocator).
pub fn write_http_date(out: &mut Vec<u8>, unix_secs: i64) {
    let secs = unix_secs.clamp(0, MAX_HTTP_DATE);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 4) % 7) as usize;

    out.extend_from_slice(DAYS[weekday]);
    out.extend_from_slice(b", ");
    push_2(out, day);
    out.push(b' ');
    out.extend_from_slice(MONTHS[(month - 1) as usize]);
    out.push(b' ');
    push_2(out, year / 100);
    push_2(out, year % 100);
    out.push(b' ');
    push_2(out, (rem / 3600) as u32);
    out.push(b':');
    push_2(out, (rem / 60 % 60) as u32);
    out.push(b':');
    push_2(out, (rem % 60) as u32);
    out.extend_from_slice(b" GMT");
}

fn push_2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// Proleptic Gregorian (year, month 1-12, day 1-31) for days since 1970-01-01, `days` >= 0.
///
/// Counts in 400-year eras starting on March 1st, so the leap day is the last day of its year
/// and every month length but February's is fixed.
fn civil_from_days(days: i64) -> (u32, u32, u32) {
    // Days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    (year, month, day)
}

/// Parses any of the three HTTP date formats (IMF-fixdate, RFC 850, asctime) into unix seconds.
pub fn parse_http_date(v: &[u8]) -> Option<i64> {
    parse_http_date_at(v, || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    })
}

/// [`parse_http_date`] as seen at `now()` (unix seconds), asked only for an RFC 850 date.
///
/// An RFC 850 date ("Sunday, 06-Nov-94 08:49:37 GMT") has a two-digit year, which RFC 9110
/// 5.6.7 reads as the latest year with those digits not more than 50 years after `now`. The
/// `httpdate` parser fixes the century at 1970..=2069 instead, and then checks the weekday
/// against that year, so from 2020 on it misreads or refuses some of them (in 2026 "-76" is
/// 2076, a Wednesday on January 1st). Such a date is rewritten as the IMF-fixdate it means.
fn parse_http_date_at(v: &[u8], now: impl FnOnce() -> i64) -> Option<i64> {
    let s = std::str::from_utf8(trim(v)).ok()?;
    let imf;
    let s = match rfc850_parts(s) {
        Some((weekday, day_month, yy, rest)) => {
            let (this_year, ..) = civil_from_days(now().div_euclid(86_400));
            let latest = i64::from(this_year) + 50;
            let year = latest - (latest - yy).rem_euclid(100);
            imf = format!(
                "{}, {} {year} {rest}",
                &weekday[..3],
                day_month.replace('-', " ")
            );
            imf.as_str()
        }
        None => s,
    };
    let t = httpdate::parse_http_date(s).ok()?;
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(d.as_secs()).ok()
}

/// An RFC 850 date split as (weekday, "DD-Mon", two-digit year, "HH:MM:SS GMT"), or None for
/// any other shape.
fn rfc850_parts(s: &str) -> Option<(&str, &str, i64, &str)> {
    let (weekday, rest) = s.split_once(", ")?;
    let b = rest.as_bytes();
    if weekday.len() < 6 || !weekday.is_ascii() || b.len() < 10 || b[2] != b'-' || b[6] != b'-' {
        return None;
    }
    let yy = rest.get(7..9)?;
    if !yy.bytes().all(|c| c.is_ascii_digit()) || b[9] != b' ' {
        return None;
    }
    Some((weekday, &rest[..6], yy.parse().ok()?, &rest[10..]))
}

/// What a GET or HEAD should answer after its preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Proceed,
    NotModified,
}

/// RFC 9110 13.2.2 for GET/HEAD: If-None-Match present (`if_none_match` holds its field
/// lines, which together make one list) -> weak comparison against the list or "*": match ->
/// NotModified; otherwise If-Modified-Since (only when If-None-Match is absent; unparseable ->
/// ignored): mtime_secs <= date -> NotModified.
///
/// A malformed If-None-Match matches nothing, so it costs a full response rather than a wrong
/// 304.
pub fn evaluate<'a>(
    if_none_match: impl IntoIterator<Item = &'a [u8]>,
    if_modified_since: Option<&[u8]>,
    etag: &str,
    mtime_secs: i64,
) -> Condition {
    let mut lines = if_none_match.into_iter().peekable();
    if lines.peek().is_some() {
        return if match_hits(lines, etag, Comparison::Weak) {
            Condition::NotModified
        } else {
            Condition::Proceed
        };
    }
    if let Some(date) = if_modified_since.and_then(parse_http_date) {
        if mtime_secs <= date {
            return Condition::NotModified;
        }
    }
    Condition::Proceed
}

/// RFC 9110 13.2.2 steps 1 and 2, which come before any 304: If-Match present (its field
/// lines, one list) -> true when the list is "*" or holds a tag that compares strongly with
/// ours; absent, If-Unmodified-Since (unparseable -> ignored) -> true unless the file changed
/// after that date. False is 412 Precondition Failed.
///
/// A malformed If-Match matches nothing: the client made its request conditional on a state
/// it cannot have seen, and a 412 tells it so where a 200 would act on the wrong version.
pub fn precondition_holds<'a>(
    if_match: impl IntoIterator<Item = &'a [u8]>,
    if_unmodified_since: Option<&[u8]>,
    etag: &str,
    mtime_secs: i64,
) -> bool {
    let mut lines = if_match.into_iter().peekable();
    if lines.peek().is_some() {
        return match_hits(lines, etag, Comparison::Strong);
    }
    match if_unmodified_since.and_then(parse_http_date) {
        Some(date) => mtime_secs <= date,
        None => true,
    }
}

/// RFC 9110 13.2.2 for a page built per request (a directory listing, the welcome page), which
/// has no validator, so that only "*" can match: If-Match other than "*" -> 412 (no current
/// representation has the tag asked for); If-None-Match "*" -> 304 (one exists). The date
/// conditions have no date to compare and are ignored. `None`: answer with the page.
pub fn generated_page_status<'a>(
    if_match: impl IntoIterator<Item = &'a [u8]>,
    if_none_match: impl IntoIterator<Item = &'a [u8]>,
) -> Option<u16> {
    let mut if_match = if_match.into_iter().peekable();
    if if_match.peek().is_some() && !is_star(if_match) {
        return Some(412);
    }
    is_star(if_none_match.into_iter().peekable()).then_some(304)
}

/// The list is "*" alone (on one line).
fn is_star<'a>(mut lines: std::iter::Peekable<impl Iterator<Item = &'a [u8]>>) -> bool {
    lines.next().is_some_and(|first| trim(first) == b"*") && lines.peek().is_none()
}

/// If-Range: an entity-tag compares strongly (a weak W/ tag never matches). Anything else
/// -> false: the range is ignored and the whole file is sent, which is always a correct answer.
///
/// That includes an HTTP date, even one equal to Last-Modified. A date is a strong validator
/// only if the server knows the file did not change twice within that second (RFC 9110
/// 8.8.2.2), and a file's mtime cannot tell: rewritten in place within the second a client
/// fetched it, it keeps the same Last-Modified, and a range of the new bytes would be spliced
/// onto the old ones. Every response carries a strong ETag, which is what clients resume with.
pub fn if_range_allows(if_range: &[u8], etag: &str) -> bool {
    let v = trim(if_range);
    if !(v.starts_with(b"\"") || v.starts_with(b"W/")) {
        return false;
    }
    let mut tags = TagList { rest: v };
    let (Some(Ok(tag)), None) = (tags.next(), tags.next()) else {
        return false;
    };
    let ours = split_weak(etag.as_bytes());
    !tag.weak && !ours.weak && tag.opaque == ours.opaque
}

/// How two entity-tags are compared (RFC 9110 8.8.3.2): weakly (the opaque parts are equal)
/// for If-None-Match, strongly (neither is weak as well) for If-Match.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Weak,
    Strong,
}

/// Our ETag against an If-None-Match or If-Match list, given as its field lines. "*" stands
/// alone or not at all: beside anything else it makes the list malformed, which matches
/// nothing.
fn match_hits<'a>(
    mut lines: std::iter::Peekable<impl Iterator<Item = &'a [u8]>>,
    etag: &str,
    how: Comparison,
) -> bool {
    let Some(first) = lines.next() else {
        return false;
    };
    if trim(first) == b"*" && lines.peek().is_none() {
        return true;
    }
    let ours = split_weak(etag.as_bytes());
    let mut hit = false;
    for line in std::iter::once(first).chain(lines) {
        for tag in (TagList { rest: trim(line) }) {
            match tag {
                Ok(tag) => {
                    let strong = !tag.weak && !ours.weak;
                    hit |= tag.opaque == ours.opaque && (how == Comparison::Weak || strong);
                }
                Err(()) => return false,
            }
        }
    }
    hit
}

struct Tag<'a> {
    weak: bool,
    /// Including the double quotes.
    opaque: &'a [u8],
}

fn split_weak(tag: &[u8]) -> Tag<'_> {
    match tag.strip_prefix(b"W/") {
        Some(opaque) => Tag { weak: true, opaque },
        None => Tag {
            weak: false,
            opaque: tag,
        },
    }
}

/// `#entity-tag`: a comma list whose elements may themselves contain commas inside the quotes,
/// so it cannot be split on ','. Yields Err(()) once at the first malformed element, then stops.
struct TagList<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TagList<'a> {
    type Item = Result<Tag<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        // Skip OWS and empty list elements.
        let start = self
            .rest
            .iter()
            .position(|&b| !is_ows(b) && b != b',')
            .unwrap_or(self.rest.len());
        let s = &self.rest[start..];
        if s.is_empty() {
            return None;
        }
        let fail = |this: &mut Self| {
            this.rest = &[];
            Some(Err(()))
        };
        let (weak, body) = match s.strip_prefix(b"W/") {
            Some(b) => (true, b),
            None => (false, s),
        };
        if body.first() != Some(&b'"') {
            return fail(self);
        }
        // etagc = %x21 / %x23-7E / obs-text: anything visible but '"', no spaces or controls.
        let Some(close) = body[1..].iter().position(|&b| b == b'"') else {
            return fail(self);
        };
        let opaque = &body[..close + 2];
        if opaque[1..opaque.len() - 1]
            .iter()
            .any(|&b| b < 0x21 || b == 0x7f)
        {
            return fail(self);
        }
        let after = &body[close + 2..];
        // After a tag only OWS and then ',' or the end may follow.
        let next = after
            .iter()
            .position(|&b| !is_ows(b))
            .unwrap_or(after.len());
        if next < after.len() && after[next] != b',' {
            return fail(self);
        }
        self.rest = &after[next..];
        Some(Ok(Tag { weak, opaque }))
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|&b| !is_ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAG: &str = "\"5f-0-3e8-1a\"";

    #[test]
    fn etag_shape() {
        let c = (2, 3); // written and left alone: the ctime is the mtime
        assert_eq!(etag(1000, 95, 0, 26, (95, 0)), TAG);
        assert_eq!(etag(1, 2, 3, 4, c), "\"2-3-1-4\"");
        assert_eq!(etag(1, 2, 3, 4, (3, 3)), "\"2-3-1-4-3b9aca00\"");
        let t = etag(
            u64::MAX,
            1_700_000_000,
            999_999_999,
            12345,
            (-1, 999_999_999),
        );
        assert!(t.starts_with('"') && t.ends_with('"'));
        assert!(!t.starts_with("W/"));
        assert_ne!(etag(1, 2, 3, 4, c), etag(1, 2, 4, 4, c));
        assert_ne!(etag(1, 2, 3, 4, c), etag(2, 2, 3, 4, c));
        assert_ne!(etag(1, 2, 3, 4, c), etag(1, 2, 3, 5, c));
        assert_ne!(etag(1, 2, 3, 4, c), etag(1, 2, 3, 4, (2, 4)));
        assert_ne!(etag(1, 2, 3, 4, (2, 5)), etag(1, 2, 3, 4, (2, 4)));
        assert_ne!(etag(1, 2, 3, 4, (1, 0)), etag(1, 2, 3, 4, (2, 4)));
        assert_eq!(etag(1, 2, 3, 4, c), etag(1, 2, 3, 4, c));
        // Usable as a header value and in If-None-Match lists.
        assert!(t[1..t.len() - 1]
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'"'));
    }

    #[test]
    fn dates_format() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(-1), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(i64::MIN), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(http_date(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
        assert_eq!(http_date(MAX_HTTP_DATE), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(http_date(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
        let mut out = b"Date: ".to_vec();
        write_http_date(&mut out, 1_700_000_000);
        assert_eq!(out, b"Date: Tue, 14 Nov 2023 22:13:20 GMT");
    }

    proptest! {
        #[test]
        fn format_agrees_with_httpdate(secs in 0i64..=MAX_HTTP_DATE) {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64);
            prop_assert_eq!(http_date(secs), httpdate::fmt_http_date(t));
            prop_assert_eq!(parse_http_date(http_date(secs).as_bytes()), Some(secs));
        }
    }

    #[test]
    fn dates_parse() {
        let want = Some(784_111_777);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse_http_date(b"  Sun, 06 Nov 1994 08:49:37 GMT "), want);
        assert_eq!(parse_http_date(b""), None);
        assert_eq!(parse_http_date(b"yesterday"), None);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37"), None);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(parse_http_date(b"\xff\xfe"), None);
    }

    #[test]
    fn a_two_digit_year_is_read_within_50_years_of_now() {
        let y2026 = 1_794_960_000; // 2026-11-18
        let y2031 = 1_924_992_000; // 2031-01-01
        let day =
            |s: &[u8], now: i64| parse_http_date_at(s, || now).map(|t| civil_from_days(t / 86_400));
        // 2076 is 50 years after 2026: the latest year ending in 76 not more than 50 ahead.
        assert_eq!(
            day(b"Wednesday, 01-Jan-76 00:00:00 GMT", y2026),
            Some((2076, 1, 1))
        );
        assert_eq!(
            day(b"Saturday, 01-Jan-77 00:00:00 GMT", y2026),
            Some((1977, 1, 1))
        );
        assert_eq!(
            day(b"Sunday, 06-Nov-94 08:49:37 GMT", y2026),
            Some((1994, 11, 6))
        );
        assert_eq!(
            day(b"Monday, 29-Feb-72 00:00:00 GMT", y2026),
            Some((2072, 2, 29))
        );
        assert_eq!(
            day(b"Monday, 01-Jan-80 00:00:00 GMT", y2031),
            Some((2080, 1, 1))
        );
        // A weekday that does not fit the date is refused, as in the other formats.
        assert_eq!(day(b"Thursday, 01-Jan-76 00:00:00 GMT", y2026), None);
        assert_eq!(
            day(b"Tuesday, 01-Jan-69 00:00:00 GMT", y2026),
            Some((2069, 1, 1))
        );
        // The four-digit formats are taken as written.
        assert_eq!(
            day(b"Wed, 06 Nov 2075 08:49:37 GMT", y2026),
            Some((2075, 11, 6))
        );
        assert_eq!(
            day(b"Thu, 06 Nov 1975 08:49:37 GMT", y2026),
            Some((1975, 11, 6))
        );
    }

    fn inm(h: &str) -> Condition {
        evaluate([h.as_bytes()], None, TAG, 1000)
    }

    #[test]
    fn if_none_match_lists() {
        use Condition::*;
        assert_eq!(inm(TAG), NotModified);
        assert_eq!(inm("*"), NotModified);
        assert_eq!(inm("  *  "), NotModified);
        assert_eq!(inm("\"other\""), Proceed);
        assert_eq!(inm("\"a\", \"5f-0-3e8-1a\""), NotModified);
        assert_eq!(inm("\"a\",\"5f-0-3e8-1a\",\"b\""), NotModified);
        assert_eq!(inm(" ,, \"a\" ,\t\"5f-0-3e8-1a\" , "), NotModified);
        assert_eq!(inm("\"a\", \"b\""), Proceed);
        // Weak comparison: W/ on either side still matches.
        assert_eq!(inm("W/\"5f-0-3e8-1a\""), NotModified);
        assert_eq!(inm("\"x\", W/\"5f-0-3e8-1a\""), NotModified);
        assert_eq!(
            evaluate([&b"\"v1\""[..]], None, "W/\"v1\"", 0),
            Condition::NotModified
        );
        // Commas inside a tag belong to the tag.
        assert_eq!(
            evaluate([&b"\"a,b\", \"c\""[..]], None, "\"a,b\"", 0),
            NotModified
        );
        assert_eq!(evaluate([&b"\"a,b\""[..]], None, "\"a\"", 0), Proceed);
        // The quotes are part of the tag.
        assert_eq!(inm("5f-0-3e8-1a"), Proceed);
        assert_eq!(inm("w/\"5f-0-3e8-1a\""), Proceed);
        assert_eq!(inm("\"5f-0-3e8-1a"), Proceed);
        assert_eq!(inm("\"5f-0-3e8-1a\"x"), Proceed);
        assert_eq!(inm("\"a b\", \"5f-0-3e8-1a\""), Proceed);
        assert_eq!(inm("**"), Proceed);
        assert_eq!(inm("*, \"5f-0-3e8-1a\""), Proceed);
        assert_eq!(inm(""), Proceed);
    }

    #[test]
    fn if_none_match_field_lines_make_one_list() {
        use Condition::*;
        let lines = |l: &[&str]| evaluate(l.iter().map(|s| s.as_bytes()), None, TAG, 1000);
        assert_eq!(lines(&["\"zz\"", TAG]), NotModified);
        assert_eq!(
            lines(&["\"a\", \"b\"", "\"c\", \"5f-0-3e8-1a\""]),
            NotModified
        );
        assert_eq!(lines(&["\"a\"", "\"b\""]), Proceed);
        // A malformed line spoils the whole list, and "*" must stand alone.
        assert_eq!(lines(&[TAG, "bogus"]), Proceed);
        assert_eq!(lines(&["*", TAG]), Proceed);
        assert_eq!(lines(&["\"a\"", "*"]), Proceed);
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let later = b"Sun, 06 Nov 2094 08:49:37 GMT";
        assert_eq!(
            evaluate([&b"\"other\""[..]], Some(later), TAG, 1000),
            Condition::Proceed
        );
        assert_eq!(
            evaluate([TAG.as_bytes()], Some(b"garbage"), TAG, 1000),
            Condition::NotModified
        );
    }

    #[test]
    fn if_modified_since() {
        use Condition::*;
        let d = http_date(1_000_000);
        let ims = |mtime| evaluate([], Some(d.as_bytes()), TAG, mtime);
        assert_eq!(ims(1_000_000), NotModified);
        assert_eq!(ims(999_999), NotModified);
        assert_eq!(ims(1_000_001), Proceed);
        assert_eq!(evaluate([], Some(b"not a date"), TAG, 0), Proceed);
        assert_eq!(evaluate([], Some(b""), TAG, 0), Proceed);
        assert_eq!(evaluate([], None, TAG, 0), Proceed);
        assert_eq!(
            evaluate(
                [],
                Some(b"Sunday, 06-Nov-94 08:49:37 GMT"),
                TAG,
                784_111_777
            ),
            NotModified
        );
    }

    #[test]
    fn a_generated_page_matches_only_star() {
        let lines = |l: &'static [&'static str]| l.iter().map(|s| s.as_bytes());
        assert_eq!(generated_page_status(lines(&[]), lines(&[])), None);
        assert_eq!(generated_page_status(lines(&["*"]), lines(&[])), None);
        assert_eq!(
            generated_page_status(lines(&["\"x\""]), lines(&[])),
            Some(412)
        );
        assert_eq!(
            generated_page_status(lines(&["*", "*"]), lines(&[])),
            Some(412)
        );
        assert_eq!(
            generated_page_status(lines(&[]), lines(&[" * "])),
            Some(304)
        );
        assert_eq!(generated_page_status(lines(&[]), lines(&["\"x\""])), None);
        assert_eq!(
            generated_page_status(lines(&["\"x\""]), lines(&["*"])),
            Some(412)
        );
    }

    #[test]
    fn if_range() {
        assert!(if_range_allows(TAG.as_bytes(), TAG));
        assert!(if_range_allows(b"  \"5f-0-3e8-1a\" ", TAG));
        assert!(!if_range_allows(b"W/\"5f-0-3e8-1a\"", TAG));
        assert!(!if_range_allows(b"\"5f-0-3e8-1a\"", "W/\"5f-0-3e8-1a\""));
        assert!(!if_range_allows(b"\"other\"", TAG));
        assert!(!if_range_allows(b"\"5f-0-3e8-1a\", \"5f-0-3e8-1a\"", TAG));
        assert!(!if_range_allows(b"\"5f-0-3e8-1a", TAG));
        assert!(!if_range_allows(b"*", TAG));
        assert!(!if_range_allows(b"", TAG));
        // A date, even the file's own Last-Modified, is not a strong validator.
        assert!(!if_range_allows(http_date(784_111_777).as_bytes(), TAG));
        assert!(!if_range_allows(b"Sun Nov  6 08:49:37 1994", TAG));
        assert!(!if_range_allows(b"garbage", TAG));
    }
}

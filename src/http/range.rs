//! The Range request header (RFC 9110 14.2), reduced to the one decision the server needs.
//!
//! keel answers a single byte range with 206 and otherwise sends the whole file: a multi-range
//! request that could be satisfied gets a 200, which RFC 9110 allows, and spares us
//! multipart/byteranges (and the amplification abuse of many overlapping ranges).

/// What to send for a GET with a Range header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// 200 with the whole representation: no usable Range (invalid, other unit, several ranges).
    Full,
    /// 206 with bytes `start..=end`, always within the file.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// One `range-spec` before it is measured against the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-` (last = None).
    Int { first: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// "bytes=a-b", "bytes=a-", "bytes=-n"; optional whitespace around tokens. An invalid header
/// (other unit, syntax error, a > b, numbers too big for u64) is ignored -> Full, as RFC 9110 14.2
/// requires. Several ranges -> Full if any is satisfiable, Unsatisfiable if none is. `end` is
/// clipped to len-1; start >= len or "-0" -> Unsatisfiable. An empty file has no bytes to
/// range over: a suffix range "-n" (n > 0), the one form RFC 9110 14.1.1 calls satisfiable
/// there, gets the whole (empty) file -> Full; any other range -> Unsatisfiable.
pub fn parse_range(header: &[u8], len: u64) -> RangeOutcome {
    let Some(specs) = parse_specs(header) else {
        return RangeOutcome::Full;
    };
    if len == 0 {
        return if specs.iter().any(|s| matches!(s, Spec::Suffix(n) if *n > 0)) {
            RangeOutcome::Full
        } else {
            RangeOutcome::Unsatisfiable
        };
    }
    let mut satisfiable = specs.iter().filter_map(|s| resolve(*s, len));
    match (satisfiable.next(), specs.len()) {
        (None, _) => RangeOutcome::Unsatisfiable,
        (Some((start, end)), 1) => RangeOutcome::Partial { start, end },
        (Some(_), _) => RangeOutcome::Full,
    }
}

/// The inclusive byte span a spec selects in a file of `len` bytes, if any.
fn resolve(spec: Spec, len: u64) -> Option<(u64, u64)> {
    if len == 0 {
        return None;
    }
    match spec {
        Spec::Int { first, last } => {
            if first >= len {
                return None;
            }
            let end = last.map_or(len - 1, |l| l.min(len - 1));
            Some((first, end))
        }
        Spec::Suffix(0) => None,
        Spec::Suffix(n) => Some((len - n.min(len), len - 1)),
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// None when the header is not a valid bytes range set: the caller then ignores it.
fn parse_specs(header: &[u8]) -> Option<Vec<Spec>> {
    let eq = header.iter().position(|&b| b == b'=')?;
    if !trim(&header[..eq]).eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let mut specs = Vec::new();
    // The list rule (RFC 9110 5.6.1) makes empty elements legal: "bytes=0-1,,".
    for elem in header[eq + 1..].split(|&b| b == b',') {
        let elem = trim(elem);
        if elem.is_empty() {
            continue;
        }
        specs.push(parse_spec(elem)?);
    }
    if specs.is_empty() {
        None
    } else {
        Some(specs)
    }
}

fn parse_spec(elem: &[u8]) -> Option<Spec> {
    let dash = elem.iter().position(|&b| b == b'-')?;
    let first = trim(&elem[..dash]);
    let last = trim(&elem[dash + 1..]);
    if first.is_empty() {
        return Some(Spec::Suffix(parse_u64(last)?));
    }
    let first = parse_u64(first)?;
    let last = if last.is_empty() {
        None
    } else {
        let last = parse_u64(last)?;
        if last < first {
            return None;
        }
        Some(last)
    };
    Some(Spec::Int { first, last })
}

/// 1*DIGIT, nothing else (no sign, no inner spaces), saturating: a position past u64 is past the end of any file, which is what it
/// means (a last-pos that large is "to the end", a first-pos that large unsatisfiable), rather
/// than a syntax error that would drop the whole Range.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        Some(acc.saturating_mul(10).saturating_add(u64::from(b - b'0')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeOutcome::*;

    fn p(h: &str, len: u64) -> RangeOutcome {
        parse_range(h.as_bytes(), len)
    }

    #[test]
    fn simple_forms() {
        assert_eq!(p("bytes=0-499", 1000), Partial { start: 0, end: 499 });
        assert_eq!(
            p("bytes=500-999", 1000),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            p("bytes=500-", 1000),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            p("bytes=-500", 1000),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(p("bytes=0-0", 1000), Partial { start: 0, end: 0 });
        assert_eq!(
            p("bytes=999-999", 1000),
            Partial {
                start: 999,
                end: 999
            }
        );
        assert_eq!(p("bytes=0-", 1), Partial { start: 0, end: 0 });
    }

    #[test]
    fn clipping() {
        assert_eq!(p("bytes=0-5000", 1000), Partial { start: 0, end: 999 });
        let huge = "99999999999999999999999";
        assert_eq!(
            p(&format!("bytes=0-{huge}"), 1000),
            Partial { start: 0, end: 999 }
        );
        assert_eq!(p(&format!("bytes={huge}-"), 1000), Unsatisfiable);
        assert_eq!(p("bytes=18446744073709551616-", 1000), Unsatisfiable);
        assert_eq!(
            p(&format!("bytes=-{huge}"), 1000),
            Partial { start: 0, end: 999 }
        );
        assert_eq!(p("bytes=-5000", 1000), Partial { start: 0, end: 999 });
        assert_eq!(
            p("bytes=10-18446744073709551615", 100),
            Partial { start: 10, end: 99 }
        );
        assert_eq!(
            p("bytes=-18446744073709551615", 100),
            Partial { start: 0, end: 99 }
        );
    }

    #[test]
    fn whitespace_and_case() {
        assert_eq!(p("  bytes = 1 - 2 ", 10), Partial { start: 1, end: 2 });
        assert_eq!(p("bytes=\t3-", 10), Partial { start: 3, end: 9 });
        assert_eq!(p("BYTES=1-2", 10), Partial { start: 1, end: 2 });
        assert_eq!(p("bytes=1-2,", 10), Partial { start: 1, end: 2 });
        assert_eq!(p("bytes=, 1-2 ,,", 10), Partial { start: 1, end: 2 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(p("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(p("bytes=1000-2000", 1000), Unsatisfiable);
        assert_eq!(p("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(p("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Unsatisfiable);
        assert_eq!(p("bytes=-0", 0), Unsatisfiable);
        assert_eq!(p("bytes=5-, -0", 5), Unsatisfiable);
    }

    /// RFC 9110 14.1.1: of an empty file only a suffix range with a length is satisfiable,
    /// and what it selects is the whole, empty, file.
    #[test]
    fn a_suffix_of_an_empty_file_is_the_whole_file() {
        assert_eq!(p("bytes=-5", 0), Full);
        assert_eq!(p("bytes=0-0, -1", 0), Full);
    }

    #[test]
    fn invalid_is_ignored() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-a",
            "bytes=5-1",
            "bytes=+1-2",
            "bytes=1 0-20",
            "bytes=1-2-3",
            "bytes=0x10-",
            "bytes=--1",
            "items=0-1",
            "bytes0-1",
            "bytes=0-1,zz",
            "bytes=0-1;x",
        ] {
            assert_eq!(p(h, 1000), Full, "{h:?}");
        }
        assert_eq!(parse_range(b"bytes=\xff-1", 10), Full);
    }

    #[test]
    fn several_ranges() {
        assert_eq!(p("bytes=0-1,5-6", 10), Full);
        assert_eq!(p("bytes=0-1, -2", 10), Full);
        assert_eq!(p("bytes=50-60,5-6", 10), Full);
        assert_eq!(p("bytes=50-60,70-", 10), Unsatisfiable);
        assert_eq!(p("bytes=0-1,0-1", 0), Unsatisfiable);
    }

    proptest! {
        #[test]
        fn partial_is_always_within_the_file(a in any::<u64>(), b in any::<u64>(), len in any::<u64>()) {
            for h in [format!("bytes={a}-{b}"), format!("bytes={a}-"), format!("bytes=-{b}")] {
                match p(&h, len) {
                    Partial { start, end } => {
                        prop_assert!(start <= end && end < len, "{h} len={len} -> {start}-{end}");
                    }
                    Unsatisfiable => {}
                    Full => prop_assert!(
                        (h.contains(&format!("{a}-{b}")) && a > b)
                            || (len == 0 && h.starts_with("bytes=-") && b > 0),
                        "{h} len={len}"
                    ),
                }
            }
        }

        #[test]
        fn small_numbers_agree_with_a_model(a in 0u64..50, b in 0u64..50, len in 0u64..50) {
            let got = p(&format!("bytes={a}-{b}"), len);
            let want = if a > b {
                Full
            } else if a >= len {
                Unsatisfiable
            } else {
                Partial { start: a, end: b.min(len - 1) }
            };
            prop_assert_eq!(got, want);
            let got = p(&format!("bytes=-{b}"), len);
            let want = if b == 0 {
                Unsatisfiable
            } else if len == 0 {
                Full
            } else {
                Partial { start: len - b.min(len), end: len - 1 }
            };
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_never_escape_the_file(h in proptest::collection::vec(any::<u8>(), 0..40), len in any::<u64>()) {
            if let Partial { start, end } = parse_range(&h, len) {
                prop_assert!(start <= end && end < len);
            }
        }
    }
}

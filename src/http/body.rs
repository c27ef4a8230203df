//! Request body framing (RFC 9112 6 and 7.1).
//!
//! The static-file server has no use for a request body, but it must still know exactly where
//! one ends: the next pipelined request starts right after it, and a server that guesses
//! differently from a proxy in front of it is how requests get smuggled. So the decoder is
//! strict where the RFC leaves room (every line ends in CRLF, chunk sizes are bare hex, trailer
//! lines are real field lines) and bounded everywhere, and it works on whatever slice of input
//! has arrived, one byte or a megabyte, without buffering any of it.

use crate::http::parse::{is_tchar, BodyKind, HttpError};
use crate::http::path::hex_value;

/// Longest chunk-size line (digits and extensions), so extensions cannot be used to make the
/// server scan without end.
const MAX_SIZE_LINE: usize = 4096;
/// Most bytes of trailer fields after the last chunk, for the same reason.
const MAX_TRAILERS: usize = 8192;
/// 16 hex digits fill a u64; a 17th could only overflow it (or be padding no client needs).
const MAX_SIZE_DIGITS: u8 = 16;

const fn bad(reason: &'static str) -> HttpError {
    HttpError::new(400, reason)
}

const TOO_LARGE: HttpError = HttpError::new(413, "request body too large");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Content-Length framing: this many bytes are still to come.
    Length {
        remaining: u64,
    },
    /// At the start of a chunk-size line, or among its hex digits.
    Size,
    /// Whitespace after the digits, which only a following `;` makes legal (BWS).
    SizeWs,
    /// In the chunk extensions, which are skipped.
    Ext,
    /// The size line's CR was seen; its LF must follow.
    SizeLf,
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the empty line that ends the body.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// The final empty line's CR was seen.
    FinalLf,
    Done,
    /// Once refused, always refused: the framing is lost and the connection must close.
    Failed(HttpError),
}

/// Finds the end of one request body; see the module comment for why it exists at all.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    state: State,
    max_body: u64,
    /// Payload bytes announced so far, checked against `max_body`.
    total: u64,
    size: u64,
    digits: u8,
    line: usize,
    trailers: usize,
}

/// What one [`BodyDecoder::feed`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyProgress {
    /// Bytes of the input that belong to the body (framing included); the rest is the next
    /// request's.
    pub consumed: usize,
    /// Payload bytes among `consumed`.
    pub data: usize,
    /// The body has ended.
    pub done: bool,
}

impl BodyDecoder {
    /// Refuses a declared length over `max_body` up front, so the client hears 413 before it
    /// sends the body (it may be waiting on 100-continue).
    pub fn new(kind: BodyKind, max_body: u64) -> Result<BodyDecoder, HttpError> {
        let state = match kind {
            BodyKind::None | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) if n > max_body => return Err(TOO_LARGE),
            BodyKind::Length(n) => State::Length { remaining: n },
            BodyKind::Chunked => State::Size,
        };
        Ok(BodyDecoder {
            state,
            max_body,
            total: 0,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        })
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes as much of `input` as belongs to the body; `data` = payload bytes among
    /// `consumed`. Stops at the body's end, so `input[consumed..]` is the next request.
    pub fn feed(&mut self, input: &[u8]) -> Result<BodyProgress, HttpError> {
        let mut consumed = 0;
        let mut data = 0;
        while consumed < input.len() {
            match self.state {
                State::Done => break,
                State::Failed(e) => return Err(e),
                State::Length { remaining } | State::Data { remaining } => {
                    let n = remaining.min((input.len() - consumed) as u64);
                    let left = remaining - n;
                    // n is at most input.len(), so it fits a usize.
                    consumed += n as usize;
                    data += n as usize;
                    self.state = match self.state {
                        State::Length { .. } if left == 0 => State::Done,
                        State::Length { .. } => State::Length { remaining: left },
                        _ if left == 0 => State::DataCr,
                        _ => State::Data { remaining: left },
                    };
                }
                _ => {
                    let b = input[consumed];
                    consumed += 1;
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                }
            }
        }
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        Ok(BodyProgress {
            consumed,
            data,
            done: self.is_done(),
        })
    }

    /// One byte of chunk framing (everything but the data itself).
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        match self.state {
            State::Size => {
                self.count_line(b)?;
                if let Some(v) = hex_value(b) {
                    self.digits += 1;
                    if self.digits > MAX_SIZE_DIGITS {
                        return Err(bad("chunk size too long"));
                    }
                    self.size = (self.size << 4) | u64::from(v);
                } else if self.digits == 0 {
                    return Err(bad("missing chunk size"));
                } else {
                    self.state = match b {
                        b';' => State::Ext,
                        b' ' | b'\t' => State::SizeWs,
                        b'\r' => State::SizeLf,
                        _ => return Err(bad("invalid chunk size")),
                    };
                }
            }
            State::SizeWs => {
                self.count_line(b)?;
                self.state = match b {
                    b' ' | b'\t' => State::SizeWs,
                    b';' => State::Ext,
                    _ => return Err(bad("invalid chunk size")),
                };
            }
            State::Ext => {
                self.count_line(b)?;
                if b == b'\r' {
                    self.state = State::SizeLf;
                } else if !is_field_byte(b) {
                    return Err(bad("invalid chunk extension"));
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(bad("chunk size line not ending in CRLF"));
                }
                let size = self.size;
                self.size = 0;
                self.digits = 0;
                self.line = 0;
                if size == 0 {
                    self.state = State::TrailerStart;
                } else {
                    if size > self.max_body - self.total {
                        return Err(TOO_LARGE);
                    }
                    self.total += size;
                    self.state = State::Data { remaining: size };
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(bad("chunk data not followed by CRLF"));
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(bad("chunk data not followed by CRLF"));
                }
                self.state = State::Size;
            }
            State::TrailerStart => {
                if b == b'\r' {
                    self.state = State::FinalLf;
                } else if is_tchar(b) {
                    self.count_trailer()?;
                    self.state = State::TrailerName;
                } else {
                    // Covers obs-fold (a line starting with whitespace) and a bare LF.
                    return Err(bad("invalid trailer field"));
                }
            }
            State::TrailerName => {
                self.count_trailer()?;
                if b == b':' {
                    self.state = State::TrailerValue;
                } else if !is_tchar(b) {
                    return Err(bad("invalid trailer field name"));
                }
            }
            State::TrailerValue => {
                self.count_trailer()?;
                if b == b'\r' {
                    self.state = State::TrailerLf;
                } else if !is_field_byte(b) {
                    return Err(bad("invalid trailer field value"));
                }
            }
            State::TrailerLf => {
                self.count_trailer()?;
                if b != b'\n' {
                    return Err(bad("trailer line not ending in CRLF"));
                }
                self.state = State::TrailerStart;
            }
            State::FinalLf => {
                if b != b'\n' {
                    return Err(bad("chunked body not ending in CRLF"));
                }
                self.state = State::Done;
            }
            // feed handles these without coming here.
            State::Length { .. } | State::Data { .. } | State::Done | State::Failed(_) => {}
        }
        Ok(())
    }

    /// Counts a size-line byte; the CR that ends the line is not part of it.
    fn count_line(&mut self, b: u8) -> Result<(), HttpError> {
        self.line += usize::from(b != b'\r');
        if self.line > MAX_SIZE_LINE {
            return Err(bad("chunk size line too long"));
        }
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), HttpError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(HttpError::new(431, "trailer fields too large"));
        }
        Ok(())
    }
}

/// What may appear inside a field value or a chunk extension: visible characters, obs-text,
/// space and tab; no other control bytes, so no bare CR or LF can end a line early.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u64 = 1 << 20;

    fn chunked() -> BodyDecoder {
        BodyDecoder::new(BodyKind::Chunked, MAX).unwrap()
    }

    /// Feeds the whole input at once, expecting the body to end exactly at `input.len()`.
    fn decode_all(input: &[u8]) -> Result<usize, HttpError> {
        let mut d = chunked();
        let p = d.feed(input)?;
        assert!(p.done, "not done: {:?}", String::from_utf8_lossy(input));
        assert_eq!(p.consumed, input.len());
        Ok(p.data)
    }

    /// Feeds the input and returns the error it must end in.
    fn refusal(input: &[u8]) -> HttpError {
        let mut d = chunked();
        match d.feed(input) {
            Err(e) => e,
            Ok(p) => panic!("accepted {:?}: {p:?}", String::from_utf8_lossy(input)),
        }
    }

    const ENCODED: &[u8] = b"5;name=value;flag\r\nhello\r\n\
        1A ; q=\"quoted; string\"\r\nabcdefghijklmnopqrstuvwxyz\r\n\
        000\r\n\
        Trailer-One: x\r\n\
        Checksum:   abc def\t\r\n\
        \r\n";
    const ENCODED_DATA: usize = 5 + 26;

    #[test]
    fn none_and_zero_length_are_done_at_once() {
        for kind in [BodyKind::None, BodyKind::Length(0)] {
            let mut d = BodyDecoder::new(kind, MAX).unwrap();
            assert!(d.is_done());
            let p = d.feed(b"GET / HTTP/1.1\r\n").unwrap();
            assert_eq!(
                p,
                BodyProgress {
                    consumed: 0,
                    data: 0,
                    done: true
                }
            );
        }
    }

    #[test]
    fn length_over_limit_is_413_at_once() {
        let e = BodyDecoder::new(BodyKind::Length(MAX + 1), MAX).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(BodyDecoder::new(BodyKind::Length(MAX), MAX).is_ok());
        assert!(BodyDecoder::new(BodyKind::Length(u64::MAX), u64::MAX).is_ok());
    }

    #[test]
    fn length_in_pieces_then_next_request() {
        let mut d = BodyDecoder::new(BodyKind::Length(10), MAX).unwrap();
        let p = d.feed(b"0123").unwrap();
        assert_eq!((p.consumed, p.data, p.done), (4, 4, false));
        assert!(!d.is_done());
        assert_eq!(d.feed(b"").unwrap().consumed, 0);
        let p = d.feed(b"456789GET / HTTP/1.1\r\n").unwrap();
        assert_eq!((p.consumed, p.data, p.done), (6, 6, true));
        assert!(d.is_done());
        assert_eq!(d.feed(b"more").unwrap().consumed, 0);
    }

    #[test]
    fn simple_chunked() {
        assert_eq!(decode_all(b"5\r\nhello\r\n0\r\n\r\n"), Ok(5));
        assert_eq!(decode_all(b"0\r\n\r\n"), Ok(0));
        assert_eq!(
            decode_all(b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"),
            Ok(13)
        );
        assert_eq!(decode_all(b"a\r\n0123456789\r\n0\r\n\r\n"), Ok(10));
        assert_eq!(decode_all(ENCODED), Ok(ENCODED_DATA));
    }

    #[test]
    fn chunked_stops_at_next_request() {
        let next = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
        for body in [&b"5\r\nhello\r\n0\r\n\r\n"[..], ENCODED] {
            let mut input = body.to_vec();
            input.extend_from_slice(next);
            let mut d = chunked();
            let p = d.feed(&input).unwrap();
            assert!(p.done);
            assert_eq!(p.consumed, body.len());
            assert_eq!(&input[p.consumed..], next);
        }
        let mut d = BodyDecoder::new(BodyKind::Length(5), MAX).unwrap();
        let p = d.feed(b"helloGET / HTTP/1.1\r\n").unwrap();
        assert_eq!((p.consumed, p.data, p.done), (5, 5, true));
    }

    #[test]
    fn every_split_point() {
        let mut input = ENCODED.to_vec();
        input.extend_from_slice(b"NEXT");
        for at in 0..=input.len() {
            let mut d = chunked();
            let a = d.feed(&input[..at]).unwrap();
            let b = d.feed(&input[at..]).unwrap();
            assert!(b.done, "split at {at}");
            assert_eq!(a.consumed + b.consumed, ENCODED.len(), "split at {at}");
            assert_eq!(a.data + b.data, ENCODED_DATA, "split at {at}");
            assert_eq!(a.done, at >= ENCODED.len(), "split at {at}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut d = chunked();
        let (mut consumed, mut data) = (0, 0);
        for (i, b) in ENCODED.iter().enumerate() {
            assert!(!d.is_done(), "done early at {i}");
            let p = d.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(p.consumed, 1);
            consumed += p.consumed;
            data += p.data;
        }
        assert!(d.is_done());
        assert_eq!(consumed, ENCODED.len());
        assert_eq!(data, ENCODED_DATA);
        assert_eq!(d.feed(b"x").unwrap().consumed, 0);
    }

    #[test]
    fn chunk_size_syntax() {
        assert_eq!(decode_all(b"0000000000000005\r\nhello\r\n0\r\n\r\n"), Ok(5));
        assert_eq!(decode_all(b"5 ;x\r\nhello\r\n0\r\n\r\n"), Ok(5));
        assert_eq!(decode_all(b"5\t; x = y\r\nhello\r\n0\r\n\r\n"), Ok(5));
        assert_eq!(decode_all(b"5;\r\nhello\r\n0;last\r\n\r\n"), Ok(5));
        for bad in [
            &b"00000000000000005\r\nhello\r\n0\r\n\r\n"[..],
            b"10000000000000000\r\n",
            b"\r\n",
            b";ext\r\n",
            b" 5\r\nhello\r\n",
            b"5x\r\nhello\r\n",
            b"5 \r\nhello\r\n",
            b"5 x\r\nhello\r\n",
            b"-5\r\nhello\r\n",
            b"+5\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
            b"g\r\n",
            b"5;a\x00b\r\nhello\r\n",
            b"5;a\nb\r\nhello\r\n",
        ] {
            let e = refusal(bad);
            assert_eq!(e.status, 400, "{:?}: {e:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn huge_chunk_size_is_413() {
        assert_eq!(refusal(b"ffffffffffffffff\r\n").status, 413);
        assert_eq!(refusal(b"100001\r\n").status, 413);
        let mut d = chunked();
        assert!(d.feed(b"100000\r\n").is_ok());
    }

    #[test]
    fn total_over_max_body_is_413() {
        let mut d = BodyDecoder::new(BodyKind::Chunked, 8).unwrap();
        assert!(d.feed(b"5\r\nhello\r\n3\r\nabc\r\n").is_ok());
        assert_eq!(d.feed(b"1\r\n").unwrap_err().status, 413);
        let mut d = BodyDecoder::new(BodyKind::Chunked, 8).unwrap();
        let p = d.feed(b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n").unwrap();
        assert!(p.done);
        assert_eq!(p.data, 8);
    }

    #[test]
    fn size_line_bound() {
        let mut ok = b"5;".to_vec();
        ok.resize(MAX_SIZE_LINE, b'e');
        ok.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode_all(&ok), Ok(5));
        let mut long = b"5;".to_vec();
        long.resize(MAX_SIZE_LINE + 1, b'e');
        assert_eq!(refusal(&long).status, 400);
        // The bound is per line, not per body.
        let mut many = Vec::new();
        for _ in 0..4 {
            many.extend_from_slice(b"1;");
            many.resize(many.len() + 3000, b'e');
            many.extend_from_slice(b"\r\nx\r\n");
        }
        many.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode_all(&many), Ok(4));
    }

    #[test]
    fn lines_must_end_in_crlf() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5\r\nhello0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\n\rX",
            b"5\r\nhello\r\n0\r\nA: b\n\r\n",
            b"5\r\nhello\r\n0\r\nA: b\rX\r\n\r\n",
        ] {
            let e = refusal(bad);
            assert_eq!(e.status, 400, "{:?}: {e:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn trailers() {
        assert_eq!(decode_all(b"0\r\nA: b\r\nC:d\r\nE:\r\n\r\n"), Ok(0));
        for bad in [
            &b"0\r\nA: b\r\n folded\r\n\r\n"[..],
            b"0\r\n\tA: b\r\n\r\n",
            b"0\r\nA : b\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\n: b\r\n\r\n",
            b"0\r\nA(: b\r\n\r\n",
            b"0\r\nA: b\x00\r\n\r\n",
            b"0\r\nA: b\x7f\r\n\r\n",
        ] {
            let e = refusal(bad);
            assert_eq!(e.status, 400, "{:?}: {e:?}", String::from_utf8_lossy(bad));
        }
        let mut big = b"0\r\n".to_vec();
        while big.len() < MAX_TRAILERS + 100 {
            big.extend_from_slice(b"X-Trailer: 0123456789012345678901234567890123456789\r\n");
        }
        big.extend_from_slice(b"\r\n");
        assert_eq!(refusal(&big).status, 431);
        let mut fits = b"0\r\n".to_vec();
        fits.extend_from_slice(b"X: ");
        fits.resize(3 + MAX_TRAILERS - 2, b'v');
        fits.extend_from_slice(b"\r\n\r\n");
        assert_eq!(decode_all(&fits), Ok(0));
    }

    #[test]
    fn failure_is_sticky() {
        let mut d = chunked();
        assert_eq!(d.feed(b"zz").unwrap_err().status, 400);
        assert_eq!(d.feed(b"5\r\nhello\r\n0\r\n\r\n").unwrap_err().status, 400);
        assert!(!d.is_done());
    }

    #[test]
    fn long_length_body_in_large_pieces() {
        let len = 3 * 65536 + 7;
        let mut d = BodyDecoder::new(BodyKind::Length(len as u64), MAX).unwrap();
        let buf = vec![0u8; 65536];
        let mut total = 0;
        while !d.is_done() {
            let p = d.feed(&buf).unwrap();
            assert_eq!(p.consumed, p.data);
            total += p.consumed;
        }
        assert_eq!(total, len);
    }

    #[test]
    fn large_chunk_data_is_taken_in_bulk() {
        let mut input = b"10000\r\n".to_vec();
        input.resize(input.len() + 0x10000, b'z');
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(decode_all(&input), Ok(0x10000));
    }

    /// Encodes `chunks` with an extension on each size line and the given trailers.
    fn encode(chunks: &[Vec<u8>], trailers: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:X};n=v\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for (k, v) in trailers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = chunked();
            if let Ok(p) = d.feed(&input) {
                prop_assert!(p.consumed <= input.len());
                prop_assert!(p.data <= p.consumed);
            }
            let mut d = BodyDecoder::new(BodyKind::Chunked, 3).unwrap();
            let _ = d.feed(&input);
        }

        #[test]
        fn any_split_of_a_valid_body(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            trailers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,12}"), 0..3),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let body = encode(&chunks, &trailers);
            let want: usize = chunks.iter().map(Vec::len).sum();
            let mut input = body.clone();
            input.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            points.push(input.len());
            points.sort_unstable();
            let mut d = chunked();
            let (mut at, mut consumed, mut data) = (0, 0, 0);
            for p in points {
                prop_assert_eq!(consumed, at);
                let r = d.feed(&input[at..p]).unwrap();
                consumed += r.consumed;
                data += r.data;
                at = p;
                if r.done {
                    break;
                }
            }
            prop_assert!(d.is_done());
            prop_assert_eq!(consumed, body.len());
            prop_assert_eq!(data, want);
        }
    }
}

//! Length-prefixed frames (the notes' 封包/拆包: a fixed-size header whose field gives the
//! length of the body that follows):
//!
//! ```text
//! +--------------------+--------+-------------------+
//! | length: u32, big-  | kind:  | body: length - 1  |
//! | endian (network    | u8     | bytes             |
//! | byte order)        |        |                   |
//! +--------------------+--------+-------------------+
//! ```
//!
//! `length` counts the kind byte and the body, so it is at least 1 and at most the receiver's
//! limit. The limit is checked on the header alone, before any of the body is buffered: a
//! peer cannot make the receiver hold more than one limit's worth of bytes for it.

use std::fmt;

use crate::net::Buffer;

/// Bytes of the length field.
pub const HEADER: usize = 4;

/// The most a frame's `length` may be whatever the configured limit (16 MiB): a bound on
/// what one message can make a receiver buffer.
pub const MAX_LIMIT: usize = 16 << 20;

/// What [`decode`] found at the front of the bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, which took `size` bytes of the input (header included).
    Frame {
        kind: u8,
        body: &'a [u8],
        size: usize,
    },
    /// Not a whole frame yet: read more.
    Partial,
}

/// A header that breaks the format; the stream cannot be trusted past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// `length` 0: a frame has at least its kind byte.
    Empty,
    /// `length` over the receiver's limit.
    TooLarge { length: u32, limit: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => f.write_str("a frame of length 0 (a frame has a kind byte)"),
            FrameError::TooLarge { length, limit } => {
                write!(f, "a frame of {length} bytes, over the limit of {limit}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Looks for one frame at the start of `input`; `limit` is the largest `length` accepted.
pub fn decode(input: &[u8], limit: usize) -> Result<Decoded<'_>, FrameError> {
    let Some(header) = input.first_chunk::<HEADER>() else {
        return Ok(Decoded::Partial);
    };
    let length = u32::from_be_bytes(*header);
    if length == 0 {
        return Err(FrameError::Empty);
    }
    if length as usize > limit.min(MAX_LIMIT) {
        return Err(FrameError::TooLarge { length, limit });
    }
    let size = HEADER + length as usize;
    match input.get(HEADER..size) {
        Some(frame) => Ok(Decoded::Frame {
            kind: frame[0],
            body: &frame[1..],
            size,
        }),
        None => Ok(Decoded::Partial),
    }
}

/// Hands each whole frame at the front of `input` to `on_frame` and consumes it, until only
/// a partial frame is left (kept for the next read) or `on_frame` returns false (the rest is
/// left as it is). A header that breaks the format is returned as the error, with `input`
/// cleared: nothing after it can be trusted. The read loop of every framed handler.
pub fn drain(
    input: &mut Buffer,
    limit: usize,
    mut on_frame: impl FnMut(u8, &[u8]) -> bool,
) -> Result<(), FrameError> {
    loop {
        match decode(input.as_slice(), limit) {
            Ok(Decoded::Frame { kind, body, size }) => {
                let go_on = on_frame(kind, body);
                input.consume(size);
                if !go_on {
                    return Ok(());
                }
            }
            Ok(Decoded::Partial) => return Ok(()),
            Err(e) => {
                input.clear();
                return Err(e);
            }
        }
    }
}

/// Appends one frame of `kind` whose body is `parts`, one after the other, to `out`.
///
/// # Panics
/// If the body is longer than [`MAX_LIMIT`] - 1: a frame no receiver would take is a bug
/// in the caller, which must bound what it sends.
pub fn encode(kind: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    assert!(body < MAX_LIMIT, "a frame body of {body} bytes");
    out.reserve(HEADER + 1 + body);
    out.extend_from_slice(&(body as u32 + 1).to_be_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// One frame of `kind` with body `parts`, as a new vector.
pub fn frame(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(kind, parts, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_header_alone_or_a_short_body_is_partial_and_a_bad_header_is_an_error() {
        let f = frame(7, &[b"hello"]);
        assert_eq!(f[..4], [0, 0, 0, 6]);
        for cut in 0..f.len() {
            assert_eq!(decode(&f[..cut], 64), Ok(Decoded::Partial), "cut at {cut}");
        }
        assert_eq!(
            decode(&f, 64),
            Ok(Decoded::Frame {
                kind: 7,
                body: b"hello",
                size: 10
            })
        );
        assert_eq!(decode(&[0, 0, 0, 0, 9], 64), Err(FrameError::Empty));
        // Refused on the header: the body need not (and must not) be waited for.
        assert_eq!(
            decode(&[0, 0, 0, 65], 64),
            Err(FrameError::TooLarge {
                length: 65,
                limit: 64
            })
        );
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], usize::MAX),
            Err(FrameError::TooLarge {
                length: u32::MAX,
                limit: usize::MAX
            })
        );
    }

    proptest! {
        /// Frames written back to back and read in arbitrary pieces come out whole, the same
        /// and in order: what a receiver sees whatever the segmentation of the stream.
        #[test]
        fn frames_survive_any_segmentation(
            msgs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut stream = Vec::new();
            for (kind, body) in &msgs {
                encode(*kind, &[body], &mut stream);
            }
            let mut got = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut at = 0;
            let mut c = cuts.iter().cycle();
            while at < stream.len() {
                let n = (*c.next().unwrap()).min(stream.len() - at);
                pending.extend_from_slice(&stream[at..at + n]);
                at += n;
                while let Decoded::Frame { kind, body, size } = decode(&pending, 400).unwrap() {
                    got.push((kind, body.to_vec()));
                    pending.drain(..size);
                }
            }
            prop_assert!(pending.is_empty());
            prop_assert_eq!(got, msgs);
        }
    }
}

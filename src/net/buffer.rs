//! Connection I/O buffer in the style of muduo's `Buffer`.
//!
//! # Layout
//!
//! A [`Buffer`] is one `Vec<u8>` that is always fully initialised, split by two
//! indices into three regions:
//!
//! ```text
//! +-------------------+------------------+------------------+
//! | prependable bytes |  readable bytes  |  writable bytes  |
//! |                   |     (content)    |   (free tail)    |
//! +-------------------+------------------+------------------+
//! 0        <=     read_index   <=   write_index    <=    vec.len()
//! ```
//!
//! Incoming bytes are written at `write_index` and parsed from `read_index`.
//! Consuming bytes only moves `read_index`; when the buffer becomes empty both
//! indices snap back to [`Buffer::PREPEND`], so a request/response connection
//! keeps reusing the front of its allocation without ever moving data. When
//! the tail runs out of room and enough space has been freed at the front, the
//! readable bytes are moved to the front (compaction) instead of growing the
//! allocation.
//!
//! # Why a prepend area
//!
//! A codec often learns the length of a message only after it has encoded the
//! payload. With a few bytes (8 by default) reserved in front of the readable
//! region it can encode the payload first and then [`prepend`](Buffer::prepend)
//! a length header (for example [`prepend_u32_be`](Buffer::prepend_u32_be))
//! without copying the payload and without a second write syscall.
//!
//! # Why `readv` into a spill area
//!
//! A server does not know how many bytes are waiting in a socket. Sizing every
//! connection's buffer for the largest possible read wastes memory on every
//! connection, and most of them are idle most of the time: memory per idle
//! connection is what decides how many connections fit in a GiB. Reading in a
//! loop of small `read` calls instead costs a syscall per chunk.
//!
//! [`Buffer::read_from`] does both with one syscall: `readv` scatters into
//! two areas, first the buffer's own free tail space and then a large scratch
//! area ("spill") that the event loop owns once (for example a 64 KiB array)
//! and lends to whichever connection is being read. Whatever landed in the
//! spill is then appended, so the buffer grows only when a connection really
//! has that much data pending. The connection's own buffer stays small, and
//! one syscall still drains up to `writable + spill.len()` bytes.
//!
//! Together with [`BufferPool`](super::buffer_pool::BufferPool), which lets an
//! idle connection hold no buffer at all, this keeps per-connection memory
//! proportional to the bytes actually in flight.

use std::fmt;
use std::io;
use std::io::IoSliceMut;

use rustix::fd::AsFd;

/// A growable byte buffer with a read index, a write index and a small
/// reserved prepend area. See the [module documentation](self).
///
/// Invariant: `0 <= read_index <= write_index <= vec.len()`.
pub struct Buffer {
    buf: Vec<u8>,
    read_index: usize,
    write_index: usize,
}

impl Buffer {
    /// Bytes reserved in front of the readable region of a fresh or emptied
    /// buffer, available to [`prepend`](Buffer::prepend).
    pub const PREPEND: usize = 8;

    /// Writable bytes of a buffer made by [`Buffer::new`].
    pub const INITIAL_CAPACITY: usize = 2048;

    /// Tail space made available by [`read_from`](Buffer::read_from) when the
    /// buffer is full and the caller lends no spill area.
    const MIN_READ: usize = 4096;

    /// A buffer with [`INITIAL_CAPACITY`](Buffer::INITIAL_CAPACITY) writable
    /// bytes after the prepend area.
    pub fn new() -> Self {
        Self::with_capacity(Self::INITIAL_CAPACITY)
    }

    /// A buffer with `cap` writable bytes after the prepend area; it allocates
    /// `PREPEND + cap` bytes.
    ///
    /// # Panics
    /// If `PREPEND + cap` overflows `usize`.
    pub fn with_capacity(cap: usize) -> Self {
        let total = Self::PREPEND
            .checked_add(cap)
            .expect("Buffer capacity overflow");
        Buffer {
            buf: vec![0; total],
            read_index: Self::PREPEND,
            write_index: Self::PREPEND,
        }
    }

    /// Number of readable bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.write_index - self.read_index
    }

    /// Whether there are no readable bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.read_index == self.write_index
    }

    /// The readable bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.read_index..self.write_index]
    }

    /// The readable bytes, mutably.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.read_index..self.write_index]
    }

    /// Total bytes allocated by this buffer (prepend area, content and free
    /// space), for memory accounting.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Number of free bytes at the tail, see [`writable_mut`](Buffer::writable_mut).
    #[inline]
    pub fn writable(&self) -> usize {
        self.buf.len() - self.write_index
    }

    /// Drops the first `n` readable bytes. When the buffer becomes empty the
    /// indices are reset so that the whole allocation is usable again.
    ///
    /// # Panics
    /// If `n > self.len()`.
    pub fn consume(&mut self, n: usize) {
        assert!(
            n <= self.len(),
            "Buffer::consume({n}) with only {} readable bytes",
            self.len()
        );
        self.read_index += n;
        if self.read_index == self.write_index {
            self.clear();
        }
    }

    /// Drops all readable bytes and resets the indices. Keeps the allocation.
    #[inline]
    pub fn clear(&mut self) {
        self.read_index = Self::PREPEND;
        self.write_index = Self::PREPEND;
    }

    /// Removes the first `n` readable bytes and returns them in a new `Vec`.
    ///
    /// # Panics
    /// If `n > self.len()`.
    pub fn take_bytes(&mut self, n: usize) -> Vec<u8> {
        assert!(
            n <= self.len(),
            "Buffer::take_bytes({n}) with only {} readable bytes",
            self.len()
        );
        let out = self.as_slice()[..n].to_vec();
        self.consume(n);
        out
    }

    /// Appends `data` after the readable bytes, compacting or growing the
    /// buffer as needed (see [`reserve`](Buffer::reserve)).
    pub fn append(&mut self, data: &[u8]) {
        self.reserve(data.len());
        let start = self.write_index;
        self.buf[start..start + data.len()].copy_from_slice(data);
        self.write_index += data.len();
    }

    /// Number of bytes that can be prepended without moving data: the space in
    /// front of the readable bytes.
    #[inline]
    pub fn prependable(&self) -> usize {
        self.read_index
    }

    /// Puts `data` in front of the readable bytes, in the space before them.
    ///
    /// # Panics
    /// If `data.len() > self.prependable()`.
    pub fn prepend(&mut self, data: &[u8]) {
        assert!(
            data.len() <= self.prependable(),
            "Buffer::prepend of {} bytes with only {} prependable",
            data.len(),
            self.prependable()
        );
        self.read_index -= data.len();
        let start = self.read_index;
        self.buf[start..start + data.len()].copy_from_slice(data);
    }

    /// The free space after the readable bytes. Write into it, then call
    /// [`commit`](Buffer::commit) with the number of bytes written. Call
    /// [`reserve`](Buffer::reserve) first to ensure a minimum size.
    #[inline]
    pub fn writable_mut(&mut self) -> &mut [u8] {
        let start = self.write_index;
        &mut self.buf[start..]
    }

    /// Marks `n` bytes written into [`writable_mut`](Buffer::writable_mut) as
    /// readable.
    ///
    /// # Panics
    /// If `n > self.writable()`.
    pub fn commit(&mut self, n: usize) {
        assert!(
            n <= self.writable(),
            "Buffer::commit({n}) with only {} writable bytes",
            self.writable()
        );
        self.write_index += n;
    }

    /// Ensures at least `additional` writable bytes.
    ///
    /// If the free tail is too small but the space freed at the front (beyond
    /// the prepend area) makes up for it, the readable bytes are moved back to
    /// [`PREPEND`](Buffer::PREPEND) and nothing is allocated. Otherwise the
    /// buffer is reallocated to at least double its size, copying only the
    /// readable bytes.
    ///
    /// # Panics
    /// If the required size overflows `usize`.
    pub fn reserve(&mut self, additional: usize) {
        if self.writable() >= additional {
            return;
        }
        let len = self.len();
        let needed = Self::PREPEND
            .checked_add(len)
            .and_then(|n| n.checked_add(additional))
            .expect("Buffer capacity overflow");
        if needed <= self.buf.len() {
            // Compact: the front has room. Only reached when read_index is
            // beyond PREPEND, so this moves data towards the front.
            self.buf
                .copy_within(self.read_index..self.write_index, Self::PREPEND);
        } else {
            let new_len = needed.max(self.buf.len().saturating_mul(2));
            let mut grown = vec![0; new_len];
            grown[Self::PREPEND..Self::PREPEND + len].copy_from_slice(self.as_slice());
            self.buf = grown;
        }
        self.read_index = Self::PREPEND;
        self.write_index = Self::PREPEND + len;
    }

    /// Offset of the first occurrence of `needle` within the readable bytes.
    /// An empty needle is found at offset 0.
    ///
    /// The search looks for the needle's first byte and compares the rest
    /// there; its worst case is `O(len * needle.len())`, which is fine for
    /// the short delimiters protocols use (`b"\r\n\r\n"` and the like).
    #[inline]
    pub fn find(&self, needle: &[u8]) -> Option<usize> {
        search(self.as_slice(), needle)
    }

    /// Like [`find`](Buffer::find) but starts looking at offset `start` of the
    /// readable bytes (the result is still relative to the start of the
    /// readable bytes). A parser that waits for a delimiter can pass how far
    /// it has already searched (minus `needle.len() - 1`) instead of
    /// rescanning the whole buffer after every read. Returns `None` if
    /// `start > self.len()`.
    pub fn find_from(&self, start: usize, needle: &[u8]) -> Option<usize> {
        let hay = self.as_slice().get(start..)?;
        search(hay, needle).map(|i| i + start)
    }

    /// Offset of the first `b"\r\n"` within the readable bytes.
    #[inline]
    pub fn find_crlf(&self) -> Option<usize> {
        self.find(b"\r\n")
    }

    /// Offset of the first byte equal to `b` within the readable bytes.
    #[inline]
    pub fn find_byte(&self, b: u8) -> Option<usize> {
        self.as_slice().iter().position(|&x| x == b)
    }

    /// The first readable byte, if any.
    #[inline]
    pub fn peek_u8(&self) -> Option<u8> {
        self.as_slice().first().copied()
    }

    /// The first two readable bytes as a big-endian (network order) `u16`.
    #[inline]
    pub fn peek_u16_be(&self) -> Option<u16> {
        self.as_slice()
            .first_chunk()
            .map(|b| u16::from_be_bytes(*b))
    }

    /// The first four readable bytes as a big-endian (network order) `u32`.
    #[inline]
    pub fn peek_u32_be(&self) -> Option<u32> {
        self.as_slice()
            .first_chunk()
            .map(|b| u32::from_be_bytes(*b))
    }

    /// The first eight readable bytes as a big-endian (network order) `u64`.
    #[inline]
    pub fn peek_u64_be(&self) -> Option<u64> {
        self.as_slice()
            .first_chunk()
            .map(|b| u64::from_be_bytes(*b))
    }

    /// [`peek_u8`](Buffer::peek_u8) and consume it.
    pub fn read_u8(&mut self) -> Option<u8> {
        let v = self.peek_u8()?;
        self.consume(1);
        Some(v)
    }

    /// [`peek_u16_be`](Buffer::peek_u16_be) and consume it.
    pub fn read_u16_be(&mut self) -> Option<u16> {
        let v = self.peek_u16_be()?;
        self.consume(2);
        Some(v)
    }

    /// [`peek_u32_be`](Buffer::peek_u32_be) and consume it.
    pub fn read_u32_be(&mut self) -> Option<u32> {
        let v = self.peek_u32_be()?;
        self.consume(4);
        Some(v)
    }

    /// [`peek_u64_be`](Buffer::peek_u64_be) and consume it.
    pub fn read_u64_be(&mut self) -> Option<u64> {
        let v = self.peek_u64_be()?;
        self.consume(8);
        Some(v)
    }

    /// Appends one byte.
    #[inline]
    pub fn append_u8(&mut self, v: u8) {
        self.append(&[v]);
    }

    /// Appends `v` in big-endian (network) order.
    #[inline]
    pub fn append_u16_be(&mut self, v: u16) {
        self.append(&v.to_be_bytes());
    }

    /// Appends `v` in big-endian (network) order.
    #[inline]
    pub fn append_u32_be(&mut self, v: u32) {
        self.append(&v.to_be_bytes());
    }

    /// Appends `v` in big-endian (network) order.
    #[inline]
    pub fn append_u64_be(&mut self, v: u64) {
        self.append(&v.to_be_bytes());
    }

    /// Prepends `v` in big-endian (network) order.
    ///
    /// # Panics
    /// If `self.prependable() < 2`.
    #[inline]
    pub fn prepend_u16_be(&mut self, v: u16) {
        self.prepend(&v.to_be_bytes());
    }

    /// Prepends `v` in big-endian (network) order, e.g. a length header.
    ///
    /// # Panics
    /// If `self.prependable() < 4`.
    #[inline]
    pub fn prepend_u32_be(&mut self, v: u32) {
        self.prepend(&v.to_be_bytes());
    }

    /// Prepends `v` in big-endian (network) order.
    ///
    /// # Panics
    /// If `self.prependable() < 8`.
    #[inline]
    pub fn prepend_u64_be(&mut self, v: u64) {
        self.prepend(&v.to_be_bytes());
    }

    /// Reads from the socket `fd` straight into the free tail space with one `recv`: the hot
    /// path's read, into the loop's scratch buffer. `recv`, not `read`: `read(2)` on a socket
    /// goes through the VFS first (`vfs_read`, `sock_read_iter`), 3.7% of `keel echo`'s CPU in
    /// a perf profile of the 64-byte pingpong; `recv` enters the socket layer directly.
    ///
    /// Returns the number of bytes read, `Ok(0)` on end of stream only: a buffer with no free
    /// tail space reserves some first, as [`Buffer::read_from`] does.
    ///
    /// # Errors
    /// The `recv` error as it is (the buffer is unchanged).
    pub fn recv_from<Fd: AsFd>(&mut self, fd: Fd) -> io::Result<usize> {
        if self.writable() == 0 {
            self.reserve(Self::MIN_READ);
        }
        let (n, _) = rustix::net::recv(fd, self.writable_mut(), rustix::net::RecvFlags::empty())
            .map_err(io::Error::from)?;
        self.commit(n);
        Ok(n)
    }

    /// Reads from `fd` with one `readv` syscall into `[free tail space, spill]`.
    ///
    /// `spill` is a scratch area lent by the caller (the event loop owns one,
    /// e.g. 64 KiB, and lends it to every connection); bytes that land in it
    /// are appended, growing the buffer. Its contents on return are
    /// unspecified. If the buffer has no free tail space and `spill` is empty,
    /// some tail space is reserved first so that `Ok(0)` always means EOF.
    ///
    /// Returns the number of bytes read, `Ok(0)` on end of file.
    ///
    /// # Errors
    /// The `readv` error as it is (the buffer is unchanged); the caller
    /// handles `WouldBlock` and `Interrupted`.
    pub fn read_from<Fd: AsFd>(&mut self, fd: Fd, spill: &mut [u8]) -> io::Result<usize> {
        if self.writable() == 0 && spill.is_empty() {
            self.reserve(Self::MIN_READ);
        }
        let writable = self.writable();
        let n = {
            let tail = &mut self.buf[self.write_index..];
            let mut iov = [IoSliceMut::new(tail), IoSliceMut::new(&mut *spill)];
            rustix::io::readv(fd, &mut iov).map_err(io::Error::from)?
        };
        if n <= writable {
            self.write_index += n;
        } else {
            self.write_index += writable;
            self.append(&spill[..n - writable]);
        }
        Ok(n)
    }

    /// Writes the readable bytes to `fd` with one `write` syscall and consumes
    /// what was written. Returns the number of bytes written; `Ok(0)` without
    /// a syscall if the buffer is empty.
    ///
    /// # Errors
    /// The `write` error as it is (nothing is consumed), e.g. `WouldBlock`.
    ///
    /// This is plain `write(2)`: on a socket whose peer has gone away it
    /// raises `SIGPIPE` unless the process ignores that signal.
    pub fn write_to<Fd: AsFd>(&mut self, fd: Fd) -> io::Result<usize> {
        if self.is_empty() {
            return Ok(0);
        }
        let n = rustix::io::write(fd, self.as_slice()).map_err(io::Error::from)?;
        self.consume(n);
        Ok(n)
    }

    /// Gives memory back. If [`capacity`](Buffer::capacity) exceeds `max`
    /// and the readable bytes are small (the buffer is empty, or
    /// `PREPEND + len()` is at most `max / 2`), the buffer is reallocated to
    /// `max(max, PREPEND + len())` total bytes, keeping the readable bytes.
    /// Otherwise nothing happens.
    pub fn shrink_to(&mut self, max: usize) {
        let len = self.len();
        let small = len == 0 || Self::PREPEND + len <= max / 2;
        if self.capacity() <= max || !small {
            return;
        }
        let new_len = max.max(Self::PREPEND + len);
        let mut smaller = vec![0; new_len];
        smaller[Self::PREPEND..Self::PREPEND + len].copy_from_slice(self.as_slice());
        self.buf = smaller;
        self.read_index = Self::PREPEND;
        self.write_index = Self::PREPEND + len;
    }
}

impl Default for Buffer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("prependable", &self.prependable())
            .field("writable", &self.writable())
            .finish()
    }
}

/// First occurrence of `needle` in `hay`: scan for the first byte, compare the
/// rest there.
fn search(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let [first, rest @ ..] = needle else {
        return Some(0);
    };
    if rest.is_empty() {
        return hay.iter().position(|b| b == first);
    }
    if needle.len() > hay.len() {
        return None;
    }
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        let at = i + hay[i..=last_start].iter().position(|b| b == first)?;
        if &hay[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::thread;

    fn filled(data: &[u8]) -> Buffer {
        let mut b = Buffer::new();
        b.append(data);
        b
    }

    #[test]
    fn new_and_default() {
        let b = Buffer::new();
        assert_eq!(b.len(), 0);
        assert!(b.is_empty());
        assert_eq!(b.as_slice(), b"");
        assert_eq!(b.prependable(), Buffer::PREPEND);
        assert_eq!(b.writable(), Buffer::INITIAL_CAPACITY);
        assert_eq!(b.capacity(), Buffer::PREPEND + Buffer::INITIAL_CAPACITY);
        let d = Buffer::default();
        assert_eq!(d.capacity(), b.capacity());
    }

    #[test]
    fn with_capacity_sizes() {
        let b = Buffer::with_capacity(100);
        assert_eq!(b.writable(), 100);
        assert_eq!(b.capacity(), 108);
        let z = Buffer::with_capacity(0);
        assert_eq!(z.writable(), 0);
        assert_eq!(z.capacity(), Buffer::PREPEND);
    }

    #[test]
    fn append_and_as_slices() {
        let mut b = Buffer::with_capacity(4);
        b.append(b"hello");
        b.append(b"");
        b.append(b" world");
        assert_eq!(b.len(), 11);
        assert!(!b.is_empty());
        assert_eq!(b.as_slice(), b"hello world");
        b.as_mut_slice()[0] = b'H';
        assert_eq!(b.as_slice(), b"Hello world");
    }

    #[test]
    fn consume_partial_and_reset_when_empty() {
        let mut b = filled(b"abcdef");
        b.consume(2);
        assert_eq!(b.as_slice(), b"cdef");
        assert_eq!(b.prependable(), Buffer::PREPEND + 2);
        b.consume(0);
        assert_eq!(b.as_slice(), b"cdef");
        b.consume(4);
        assert!(b.is_empty());
        assert_eq!(b.prependable(), Buffer::PREPEND);
        assert_eq!(b.writable(), Buffer::INITIAL_CAPACITY);
    }

    #[test]
    #[should_panic(expected = "Buffer::consume")]
    fn consume_too_much_panics() {
        let mut b = filled(b"abc");
        b.consume(4);
    }

    #[test]
    fn clear_keeps_allocation() {
        let mut b = filled(&[7; 5000]);
        let cap = b.capacity();
        b.consume(10);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.capacity(), cap);
        assert_eq!(b.prependable(), Buffer::PREPEND);
        assert_eq!(b.writable(), cap - Buffer::PREPEND);
    }

    #[test]
    fn take_bytes_works() {
        let mut b = filled(b"GET / HTTP/1.1");
        assert_eq!(b.take_bytes(3), b"GET");
        assert_eq!(b.as_slice(), b" / HTTP/1.1");
        assert_eq!(b.take_bytes(0), b"");
        let rest = b.len();
        assert_eq!(b.take_bytes(rest), b" / HTTP/1.1");
        assert!(b.is_empty());
        assert_eq!(b.prependable(), Buffer::PREPEND);
    }

    #[test]
    #[should_panic(expected = "Buffer::take_bytes")]
    fn take_bytes_too_much_panics() {
        let mut b = filled(b"ab");
        b.take_bytes(3);
    }

    #[test]
    fn prepend_on_fresh_buffer() {
        let mut b = filled(b"payload");
        b.prepend_u32_be(7);
        assert_eq!(b.as_slice(), b"\0\0\0\x07payload");
        assert_eq!(b.prependable(), Buffer::PREPEND - 4);
        b.prepend(b"ab");
        b.prepend(b"cd");
        assert_eq!(b.prependable(), 0);
        assert_eq!(b.as_slice(), b"cdab\0\0\0\x07payload");
    }

    #[test]
    fn prepend_after_consume_uses_freed_front() {
        let mut b = filled(b"0123456789");
        b.consume(4);
        assert_eq!(b.prependable(), Buffer::PREPEND + 4);
        b.prepend(b"ABCDEFGHIJKL");
        assert_eq!(b.prependable(), 0);
        assert_eq!(b.as_slice(), b"ABCDEFGHIJKL456789");
    }

    #[test]
    #[should_panic(expected = "Buffer::prepend")]
    fn prepend_too_much_panics() {
        let mut b = filled(b"x");
        b.prepend(&[0; Buffer::PREPEND + 1]);
    }

    #[test]
    fn prepend_then_append_then_grow_keeps_order() {
        let mut b = Buffer::with_capacity(8);
        b.append(b"body");
        b.prepend_u16_be(0x0102);
        b.append(&[b'x'; 100]); // forces growth; header must survive
        assert_eq!(&b.as_slice()[..6], b"\x01\x02body");
        assert_eq!(b.len(), 106);
        assert_eq!(b.prependable(), Buffer::PREPEND);
    }

    #[test]
    fn writable_mut_and_commit() {
        let mut b = Buffer::with_capacity(16);
        let w = b.writable_mut();
        assert_eq!(w.len(), 16);
        w[..3].copy_from_slice(b"abc");
        b.commit(3);
        assert_eq!(b.as_slice(), b"abc");
        assert_eq!(b.writable(), 13);
        b.commit(0);
        assert_eq!(b.len(), 3);
    }

    #[test]
    #[should_panic(expected = "Buffer::commit")]
    fn commit_too_much_panics() {
        let mut b = Buffer::with_capacity(4);
        b.commit(5);
    }

    #[test]
    fn reserve_grows_when_needed() {
        let mut b = Buffer::with_capacity(16);
        b.append(b"abc");
        b.reserve(10);
        assert_eq!(b.capacity(), Buffer::PREPEND + 16); // already enough
        b.reserve(1000);
        assert!(b.writable() >= 1000);
        assert_eq!(b.as_slice(), b"abc");
        assert_eq!(b.prependable(), Buffer::PREPEND);
    }

    #[test]
    fn growth_at_least_doubles() {
        let mut b = Buffer::with_capacity(100);
        b.append(&[1; 100]);
        let before = b.capacity();
        b.append(b"x");
        assert!(b.capacity() >= 2 * before);
        assert_eq!(b.len(), 101);
    }

    #[test]
    fn compaction_instead_of_growth_when_front_has_room() {
        let mut b = Buffer::with_capacity(16);
        b.append(b"0123456789AB"); // 12 of 16 used
        b.consume(10); // "AB" left at offset PREPEND+10, 4 writable
        assert_eq!(b.writable(), 4);
        let cap = b.capacity();
        b.append(b"cdefghij"); // needs 8: 4 tail + 10 front >= 8 -> compact
        assert_eq!(b.capacity(), cap, "must compact, not grow");
        assert_eq!(b.as_slice(), b"ABcdefghij");
        assert_eq!(b.prependable(), Buffer::PREPEND);
        assert_eq!(b.writable(), 16 - 10);
    }

    #[test]
    fn compaction_exact_fit() {
        let mut b = Buffer::with_capacity(8);
        b.append(b"abcdefgh");
        b.consume(6);
        let cap = b.capacity();
        b.reserve(6);
        assert_eq!(b.capacity(), cap);
        assert_eq!(b.writable(), 6);
        assert_eq!(b.as_slice(), b"gh");
        b.reserve(7);
        assert!(b.capacity() > cap);
        assert_eq!(b.as_slice(), b"gh");
    }

    #[test]
    fn find_whole_region() {
        let mut b = filled(b"xxxxGET / HTTP/1.1\r\nHost: a\r\n\r\nbody\r\n\r\n");
        b.consume(4);
        let data = b.as_slice().to_vec();
        let hdr_end = b.find(b"\r\n\r\n").unwrap();
        assert_eq!(&data[hdr_end..hdr_end + 4], b"\r\n\r\n");
        assert_eq!(hdr_end, b"GET / HTTP/1.1\r\nHost: a".len());
        assert_eq!(b.find_crlf(), Some(14));
        assert_eq!(b.find(b"GET"), Some(0));
        // needle at the very end of the readable region
        assert_eq!(b.find(b"body\r\n\r\n"), Some(data.len() - 8));
        assert_eq!(b.find(b"\r\n\r\n\r"), None);
        assert_eq!(b.find(b"xxxx"), None, "consumed bytes are not searched");
        assert_eq!(b.find(b""), Some(0));
        assert_eq!(b.find(&data), Some(0));
        let mut longer = data.clone();
        longer.push(b'!');
        assert_eq!(b.find(&longer), None);
    }

    #[test]
    fn find_does_not_see_beyond_write_index() {
        let mut b = filled(b"abc\r\n\r\n");
        b.clear();
        b.append(b"ab");
        // old bytes are still in the vec but not readable
        assert_eq!(b.find(b"\r\n"), None);
        assert_eq!(b.find_byte(b'c'), None);
    }

    #[test]
    fn find_with_repeated_prefix() {
        let b = filled(b"aaaaaaab");
        assert_eq!(b.find(b"aab"), Some(5));
        assert_eq!(b.find(b"aaab"), Some(4));
        assert_eq!(b.find(b"ab"), Some(6));
        assert_eq!(b.find(b"ba"), None);
        let e = Buffer::new();
        assert_eq!(e.find(b"a"), None);
        assert_eq!(e.find(b""), Some(0));
        assert_eq!(e.find_crlf(), None);
    }

    #[test]
    fn find_from_offsets() {
        let b = filled(b"a\r\nb\r\nc");
        assert_eq!(b.find_from(0, b"\r\n"), Some(1));
        assert_eq!(b.find_from(1, b"\r\n"), Some(1));
        assert_eq!(b.find_from(2, b"\r\n"), Some(4));
        assert_eq!(b.find_from(5, b"\r\n"), None);
        assert_eq!(b.find_from(7, b""), Some(7));
        assert_eq!(b.find_from(8, b""), None);
    }

    #[test]
    fn find_byte_works() {
        let mut b = filled(b"key=value\n");
        assert_eq!(b.find_byte(b'='), Some(3));
        assert_eq!(b.find_byte(b'\n'), Some(9));
        assert_eq!(b.find_byte(b'!'), None);
        b.consume(4);
        assert_eq!(b.find_byte(b'='), None);
        assert_eq!(b.find_byte(b'v'), Some(0));
    }

    #[test]
    fn peek_big_endian() {
        let b = filled(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]);
        assert_eq!(b.peek_u8(), Some(0x01));
        assert_eq!(b.peek_u16_be(), Some(0x0102));
        assert_eq!(b.peek_u32_be(), Some(0x0102_0304));
        assert_eq!(b.peek_u64_be(), Some(0x0102_0304_0506_0708));
        assert_eq!(b.len(), 8, "peek does not consume");
    }

    #[test]
    fn peek_not_enough_bytes() {
        let e = Buffer::new();
        assert_eq!(e.peek_u8(), None);
        let b = filled(&[1, 2, 3]);
        assert_eq!(b.peek_u16_be(), Some(0x0102));
        assert_eq!(b.peek_u32_be(), None);
        assert_eq!(b.peek_u64_be(), None);
        let b = filled(&[1; 7]);
        assert_eq!(b.peek_u64_be(), None);
    }

    #[test]
    fn read_big_endian_consumes() {
        let mut b = Buffer::new();
        b.append_u8(0xAB);
        b.append_u16_be(0xBEEF);
        b.append_u32_be(0xDEAD_BEEF);
        b.append_u64_be(0x0123_4567_89AB_CDEF);
        assert_eq!(b.len(), 15);
        assert_eq!(
            b.as_slice(),
            &[
                0xAB, 0xBE, 0xEF, 0xDE, 0xAD, 0xBE, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD,
                0xEF
            ]
        );
        assert_eq!(b.read_u8(), Some(0xAB));
        assert_eq!(b.read_u16_be(), Some(0xBEEF));
        assert_eq!(b.read_u32_be(), Some(0xDEAD_BEEF));
        assert_eq!(b.read_u64_be(), Some(0x0123_4567_89AB_CDEF));
        assert!(b.is_empty());
        assert_eq!(b.read_u8(), None);
        assert_eq!(b.read_u16_be(), None);
        assert_eq!(b.read_u32_be(), None);
        assert_eq!(b.read_u64_be(), None);
    }

    #[test]
    fn read_without_enough_bytes_does_not_consume() {
        let mut b = filled(&[0, 0, 1]);
        assert_eq!(b.read_u32_be(), None);
        assert_eq!(b.len(), 3);
        assert_eq!(b.read_u16_be(), Some(0));
        assert_eq!(b.read_u64_be(), None);
        assert_eq!(b.read_u8(), Some(1));
    }

    #[test]
    fn prepend_big_endian_length_header() {
        let mut b = filled(b"hello");
        let n = b.len() as u32;
        b.prepend_u32_be(n);
        assert_eq!(b.read_u32_be(), Some(5));
        assert_eq!(b.as_slice(), b"hello");

        let mut b = filled(b"x");
        b.prepend_u64_be(0x1122_3344_5566_7788);
        assert_eq!(b.prependable(), 0);
        assert_eq!(b.peek_u64_be(), Some(0x1122_3344_5566_7788));

        let mut b = filled(b"x");
        b.prepend_u16_be(0xA1B2);
        assert_eq!(b.as_slice(), b"\xA1\xB2x");
    }

    #[test]
    fn shrink_to_gives_memory_back() {
        let mut b = Buffer::new();
        b.append(&vec![9; 100_000]);
        assert!(b.capacity() > 100_000);
        b.consume(99_990);
        b.shrink_to(4096);
        assert_eq!(b.capacity(), 4096);
        assert_eq!(b.as_slice(), &[9; 10]);
        assert_eq!(b.prependable(), Buffer::PREPEND);
        // already small enough: no-op
        b.shrink_to(8192);
        assert_eq!(b.capacity(), 4096);
    }

    #[test]
    fn shrink_to_keeps_big_content() {
        let mut b = Buffer::new();
        b.append(&vec![3; 50_000]);
        let cap = b.capacity();
        b.shrink_to(4096);
        assert_eq!(b.capacity(), cap, "len is not small: nothing happens");
        assert_eq!(b.len(), 50_000);
        // content more than half of max: still no shrink
        b.consume(50_000 - 3000);
        b.shrink_to(4096);
        assert_eq!(b.capacity(), cap);
        b.consume(1000); // 2000 left, 8 + 2000 <= 2048
        b.shrink_to(4096);
        assert_eq!(b.capacity(), 4096);
        assert_eq!(b.as_slice(), &vec![3; 2000][..]);
    }

    #[test]
    fn shrink_to_empty_and_tiny_max() {
        let mut b = filled(&[1; 10_000]);
        b.clear();
        b.shrink_to(0);
        assert_eq!(b.capacity(), Buffer::PREPEND);
        b.append(b"ok");
        assert_eq!(b.as_slice(), b"ok");
        b.prepend_u32_be(2);
        assert_eq!(b.read_u32_be(), Some(2));
    }

    #[test]
    fn debug_shows_sizes_not_contents() {
        let b = filled(b"secret-password");
        let s = format!("{b:?}");
        assert!(s.contains("len: 15"), "{s}");
        assert!(s.contains("capacity"), "{s}");
        assert!(!s.contains("secret"), "{s}");
    }

    // ---- syscalls on a real socketpair ----

    #[test]
    fn read_from_small_read_fits_in_buffer() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"ping\r\n").unwrap();
        let mut buf = Buffer::new();
        let cap = buf.capacity();
        let mut spill = [0xEEu8; 1024];
        let n = buf.read_from(&b, &mut spill).unwrap();
        assert_eq!(n, 6);
        assert_eq!(buf.as_slice(), b"ping\r\n");
        assert_eq!(buf.capacity(), cap, "no growth for a small read");
        assert_eq!(buf.find_crlf(), Some(4));
    }

    #[test]
    fn read_from_appends_after_existing_data() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut buf = filled(b"head:");
        a.write_all(b"tail").unwrap();
        let mut spill = [0u8; 64];
        assert_eq!(buf.read_from(&b, &mut spill).unwrap(), 4);
        assert_eq!(buf.as_slice(), b"head:tail");
    }

    #[test]
    fn read_from_overflow_goes_through_spill() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        a.write_all(&data).unwrap();
        let mut buf = Buffer::with_capacity(100);
        let mut spill = vec![0u8; 64 * 1024];
        let n = buf.read_from(&b, &mut spill).unwrap();
        assert_eq!(n, 3000, "one syscall reads tail + spill");
        assert_eq!(buf.as_slice(), &data[..]);
        assert!(buf.capacity() >= Buffer::PREPEND + 3000);
    }

    #[test]
    fn read_from_full_buffer_without_spill_still_reads() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"more").unwrap();
        let mut buf = Buffer::with_capacity(4);
        buf.append(b"full");
        assert_eq!(buf.writable(), 0);
        let n = buf.read_from(&b, &mut []).unwrap();
        assert_eq!(n, 4);
        assert_eq!(buf.as_slice(), b"fullmore");
    }

    #[test]
    fn read_from_200k_with_64k_spill_is_byte_exact() {
        const TOTAL: usize = 200 * 1024;
        let (a, b) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..TOTAL)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let expected = data.clone();
        let writer = thread::spawn(move || {
            let mut a = a;
            a.write_all(&data).unwrap();
            // `a` dropped here: EOF for the reader
        });
        let mut buf = Buffer::new();
        let mut spill = vec![0u8; 64 * 1024];
        let mut calls = 0;
        let mut total = 0;
        loop {
            let room = buf.writable() + spill.len();
            let n = buf.read_from(&b, &mut spill).unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= room);
            calls += 1;
            total += n;
        }
        writer.join().unwrap();
        assert_eq!(total, TOTAL);
        assert!(calls >= 2, "200 KiB cannot arrive in one 64 KiB-spill read");
        assert_eq!(buf.len(), TOTAL);
        assert!(buf.as_slice() == &expected[..], "contents differ");
    }

    #[test]
    fn read_from_interleaved_with_consume() {
        const TOTAL: usize = 300 * 1024;
        let (a, b) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 253) as u8).collect();
        let expected = data.clone();
        let writer = thread::spawn(move || {
            let mut a = a;
            a.write_all(&data).unwrap();
        });
        let mut buf = Buffer::with_capacity(512);
        let mut spill = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(TOTAL);
        while buf.read_from(&b, &mut spill).unwrap() != 0 {
            // a parser taking "messages" of 1000 bytes
            while buf.len() >= 1000 {
                out.extend_from_slice(&buf.take_bytes(1000));
            }
        }
        out.extend_from_slice(buf.as_slice());
        writer.join().unwrap();
        assert!(out == expected, "contents differ");
    }

    #[test]
    fn read_from_eof_returns_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut buf = Buffer::new();
        let mut spill = [0u8; 128];
        assert_eq!(buf.read_from(&b, &mut spill).unwrap(), 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn read_from_data_then_eof() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"last words").unwrap();
        drop(a);
        let mut buf = Buffer::new();
        let mut spill = [0u8; 128];
        assert_eq!(buf.read_from(&b, &mut spill).unwrap(), 10);
        assert_eq!(buf.read_from(&b, &mut spill).unwrap(), 0);
        assert_eq!(buf.as_slice(), b"last words");
    }

    #[test]
    fn read_from_would_block_on_empty_nonblocking_socket() {
        let (_a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = filled(b"keep");
        let mut spill = [0u8; 128];
        let err = buf.read_from(&b, &mut spill).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        assert_eq!(buf.as_slice(), b"keep", "error leaves the buffer as it was");
    }

    #[test]
    fn write_to_sends_and_consumes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut buf = filled(b"hello over there");
        let n = buf.write_to(&a).unwrap();
        assert_eq!(n, 16);
        assert!(buf.is_empty());
        assert_eq!(buf.prependable(), Buffer::PREPEND);
        let mut got = [0u8; 16];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello over there");
    }

    #[test]
    fn write_to_empty_is_noop() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut buf = Buffer::new();
        assert_eq!(buf.write_to(&a).unwrap(), 0);
    }

    #[test]
    fn write_to_partial_then_would_block() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        const TOTAL: usize = 8 * 1024 * 1024; // far beyond the socket buffer
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 241) as u8).collect();
        let mut buf = Buffer::new();
        buf.append(&data);
        let n = buf.write_to(&a).unwrap();
        assert!(n > 0 && n < TOTAL, "expected a partial write, got {n}");
        assert_eq!(buf.len(), TOTAL - n);
        assert_eq!(buf.as_slice(), &data[n..]);
        let err = buf.write_to(&a).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        assert_eq!(buf.len(), TOTAL - n);
        // the peer got exactly the first n bytes
        b.set_nonblocking(true).unwrap();
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).unwrap();
        assert!(got == data[..n]);
    }

    // ---- model-based check against a plain Vec ----

    mod model {
        use super::super::{search, Buffer};
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Append(Vec<u8>),
            Consume(usize),
            Take(usize),
            Prepend(Vec<u8>),
            Reserve(usize),
            Commit(Vec<u8>),
            Shrink(usize),
            Clear,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => proptest::collection::vec(0u8..4, 0..300).prop_map(Op::Append),
                3 => any::<usize>().prop_map(Op::Consume),
                1 => any::<usize>().prop_map(Op::Take),
                2 => proptest::collection::vec(0u8..4, 0..12).prop_map(Op::Prepend),
                1 => (0usize..2000).prop_map(Op::Reserve),
                2 => proptest::collection::vec(0u8..4, 0..300).prop_map(Op::Commit),
                1 => (0usize..3000).prop_map(Op::Shrink),
                1 => Just(Op::Clear),
            ]
        }

        proptest! {
            #[test]
            fn buffer_matches_vec_model(
                cap in 0usize..64,
                ops in proptest::collection::vec(op(), 1..60),
                needle in proptest::collection::vec(0u8..4, 0..4),
            ) {
                let mut b = Buffer::with_capacity(cap);
                let mut m: Vec<u8> = Vec::new();
                for op in ops {
                    match op {
                        Op::Append(d) => { b.append(&d); m.extend_from_slice(&d); }
                        Op::Consume(n) => {
                            let n = if m.is_empty() { 0 } else { n % (m.len() + 1) };
                            b.consume(n);
                            m.drain(..n);
                        }
                        Op::Take(n) => {
                            let n = if m.is_empty() { 0 } else { n % (m.len() + 1) };
                            let got = b.take_bytes(n);
                            let want: Vec<u8> = m.drain(..n).collect();
                            prop_assert_eq!(got, want);
                        }
                        Op::Prepend(d) => {
                            if d.len() <= b.prependable() {
                                b.prepend(&d);
                                m.splice(0..0, d.iter().copied());
                            }
                        }
                        Op::Reserve(n) => {
                            b.reserve(n);
                            prop_assert!(b.writable() >= n);
                        }
                        Op::Commit(d) => {
                            b.reserve(d.len());
                            b.writable_mut()[..d.len()].copy_from_slice(&d);
                            b.commit(d.len());
                            m.extend_from_slice(&d);
                        }
                        Op::Shrink(max) => {
                            b.shrink_to(max);
                        }
                        Op::Clear => { b.clear(); m.clear(); }
                    }
                    prop_assert_eq!(b.as_slice(), &m[..]);
                    prop_assert_eq!(b.len(), m.len());
                    prop_assert_eq!(b.is_empty(), m.is_empty());
                    prop_assert!(b.prependable() + b.len() + b.writable() <= b.capacity());
                    if m.is_empty() {
                        prop_assert_eq!(b.prependable(), Buffer::PREPEND);
                    }
                    let naive = if needle.is_empty() {
                        Some(0)
                    } else {
                        m.windows(needle.len()).position(|w| w == &needle[..])
                    };
                    prop_assert_eq!(b.find(&needle), naive);
                    prop_assert_eq!(search(&m, &needle), naive);
                    prop_assert_eq!(b.find_byte(2), m.iter().position(|&x| x == 2));
                }
            }
        }
    }
}

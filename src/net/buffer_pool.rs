//! Per-event-loop free list of [`Buffer`]s.
//!
//! An idle connection holds no buffer at all. A connection takes a buffer
//! from its loop's pool when it has bytes to hold (a read brought in a partial
//! request, a write could not send everything) and gives it back as soon as
//! the buffer is empty again. Memory then follows the bytes in flight, not the
//! number of open connections, which is what lets keel hold many idle
//! connections per GiB; and the buffers cycle through the pool instead of
//! through the allocator.
//!
//! The pool belongs to one event loop and is used from that loop's thread
//! only: it is a plain `Vec` behind `&mut self`, with no locks and no atomics.
//! Buffers that grew beyond four times a fresh one while holding a big message
//! are shrunk back on the way in (one that grew less is kept as it is, so that
//! a connection that regularly needs a little more does not pay a reallocation
//! each time), and the pool keeps at most `max_pooled` buffers: an idle pool
//! holds at most about `4 * max_pooled * (buffer_size + Buffer::PREPEND)`
//! bytes, and about a quarter of that after ordinary traffic.

use std::fmt;

use super::buffer::Buffer;

/// Counters of a [`BufferPool`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers newly allocated by [`BufferPool::get`] because the pool was empty.
    pub allocated: u64,
    /// Calls to [`BufferPool::get`] served from the pool.
    pub reused: u64,
    /// Buffers handed to [`BufferPool::put`] and freed instead of pooled
    /// (pool full, or smaller than the pool's buffer size).
    pub dropped: u64,
}

/// A single-threaded free list of [`Buffer`]s. See the [module documentation](self).
pub struct BufferPool {
    free: Vec<Buffer>,
    buffer_size: usize,
    max_pooled: usize,
    pooled_bytes: usize,
    stats: PoolStats,
}

impl BufferPool {
    /// A pool handing out buffers with `buffer_size` writable bytes (after the
    /// prepend area) and keeping at most `max_pooled` free buffers, e.g.
    /// `BufferPool::new(4096, 1024)`. Nothing is allocated up front.
    pub fn new(buffer_size: usize, max_pooled: usize) -> Self {
        BufferPool {
            free: Vec::new(),
            buffer_size,
            max_pooled,
            pooled_bytes: 0,
            stats: PoolStats::default(),
        }
    }

    /// An empty buffer with at least `buffer_size` writable bytes: a pooled
    /// one if there is one, otherwise a new `Buffer::with_capacity(buffer_size)`.
    pub fn get(&mut self) -> Buffer {
        match self.free.pop() {
            Some(buf) => {
                self.pooled_bytes -= buf.capacity();
                self.stats.reused += 1;
                buf
            }
            None => {
                self.stats.allocated += 1;
                Buffer::with_capacity(self.buffer_size)
            }
        }
    }

    /// Gives a buffer back. Its contents are discarded (it is cleared).
    ///
    /// A buffer whose capacity grew beyond four times a fresh buffer's is
    /// shrunk back to a fresh buffer's size before it is pooled. The buffer is
    /// dropped (freed) instead if the pool already holds `max_pooled` buffers,
    /// or if it is smaller than a fresh buffer (so [`get`](Self::get) always
    /// returns at least `buffer_size` writable bytes).
    pub fn put(&mut self, mut buf: Buffer) {
        let fresh = self.fresh_capacity();
        if self.free.len() >= self.max_pooled || buf.capacity() < fresh {
            self.stats.dropped += 1;
            return;
        }
        buf.clear();
        if buf.capacity() > fresh.saturating_mul(4) {
            buf.shrink_to(fresh);
        }
        self.pooled_bytes += buf.capacity();
        self.free.push(buf);
    }

    /// Number of free buffers held by the pool.
    #[inline]
    pub fn pooled(&self) -> usize {
        self.free.len()
    }

    /// Total capacity in bytes of the free buffers held by the pool.
    #[inline]
    pub fn pooled_bytes(&self) -> usize {
        self.pooled_bytes
    }

    /// Writable bytes of a freshly allocated buffer.
    #[inline]
    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    /// Most free buffers the pool keeps.
    #[inline]
    pub fn max_pooled(&self) -> usize {
        self.max_pooled
    }

    /// Allocation, reuse and drop counters since the pool was made.
    #[inline]
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Capacity of a buffer made by `Buffer::with_capacity(buffer_size)`.
    fn fresh_capacity(&self) -> usize {
        Buffer::PREPEND.saturating_add(self.buffer_size)
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("buffer_size", &self.buffer_size)
            .field("max_pooled", &self.max_pooled)
            .field("pooled", &self.free.len())
            .field("pooled_bytes", &self.pooled_bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_allocates_when_empty() {
        let mut pool = BufferPool::new(4096, 16);
        assert_eq!(pool.pooled(), 0);
        let b = pool.get();
        assert!(b.is_empty());
        assert_eq!(b.writable(), 4096);
        assert_eq!(b.capacity(), Buffer::PREPEND + 4096);
        assert_eq!(
            pool.stats(),
            PoolStats {
                allocated: 1,
                reused: 0,
                dropped: 0
            }
        );
        assert_eq!(pool.buffer_size(), 4096);
        assert_eq!(pool.max_pooled(), 16);
    }

    #[test]
    fn put_then_get_reuses_cleared_buffer() {
        let mut pool = BufferPool::new(1024, 4);
        let mut b = pool.get();
        b.append(b"leftover");
        b.consume(3);
        pool.put(b);
        assert_eq!(pool.pooled(), 1);
        assert_eq!(pool.pooled_bytes(), Buffer::PREPEND + 1024);
        let b = pool.get();
        assert_eq!(pool.pooled(), 0);
        assert_eq!(pool.pooled_bytes(), 0);
        assert!(b.is_empty(), "pooled buffers come back cleared");
        assert_eq!(b.prependable(), Buffer::PREPEND);
        assert_eq!(b.writable(), 1024);
        let s = pool.stats();
        assert_eq!((s.allocated, s.reused, s.dropped), (1, 1, 0));
    }

    #[test]
    fn many_cycles_allocate_once() {
        let mut pool = BufferPool::new(512, 8);
        for i in 0..1000u32 {
            let mut b = pool.get();
            b.append_u32_be(i);
            assert_eq!(b.read_u32_be(), Some(i));
            pool.put(b);
        }
        let s = pool.stats();
        assert_eq!(s.allocated, 1);
        assert_eq!(s.reused, 999);
        assert_eq!(pool.pooled(), 1);
    }

    #[test]
    fn oversize_buffer_is_shrunk() {
        let mut pool = BufferPool::new(4096, 4);
        let mut b = pool.get();
        b.append(&vec![1u8; 100_000]);
        assert!(b.capacity() > 4 * 4096);
        pool.put(b);
        assert_eq!(pool.pooled(), 1);
        assert_eq!(pool.pooled_bytes(), Buffer::PREPEND + 4096);
        let b = pool.get();
        assert_eq!(b.capacity(), Buffer::PREPEND + 4096);
        assert!(b.is_empty());
        assert_eq!(pool.stats().dropped, 0);
    }

    #[test]
    fn moderately_grown_buffer_is_kept_as_is() {
        let mut pool = BufferPool::new(4096, 4);
        let mut b = pool.get();
        b.append(&[0u8; 6000]); // doubles to ~8 KiB, under the 4x limit
        let cap = b.capacity();
        assert!(cap > Buffer::PREPEND + 4096 && cap <= 4 * (Buffer::PREPEND + 4096));
        pool.put(b);
        assert_eq!(pool.get().capacity(), cap);
    }

    #[test]
    fn max_pooled_is_respected() {
        let mut pool = BufferPool::new(256, 3);
        let bufs: Vec<Buffer> = (0..5).map(|_| pool.get()).collect();
        assert_eq!(pool.stats().allocated, 5);
        for b in bufs {
            pool.put(b);
        }
        assert_eq!(pool.pooled(), 3);
        assert_eq!(pool.pooled_bytes(), 3 * (Buffer::PREPEND + 256));
        let s = pool.stats();
        assert_eq!(s.dropped, 2);
        for _ in 0..3 {
            pool.get();
        }
        assert_eq!(pool.pooled(), 0);
        pool.get();
        let s = pool.stats();
        assert_eq!((s.allocated, s.reused, s.dropped), (6, 3, 2));
    }

    #[test]
    fn zero_max_pooled_drops_everything() {
        let mut pool = BufferPool::new(64, 0);
        let b = pool.get();
        pool.put(b);
        assert_eq!(pool.pooled(), 0);
        assert_eq!(pool.stats().dropped, 1);
    }

    #[test]
    fn undersized_foreign_buffer_is_dropped() {
        let mut pool = BufferPool::new(4096, 4);
        pool.put(Buffer::with_capacity(100));
        assert_eq!(pool.pooled(), 0);
        assert_eq!(pool.stats().dropped, 1);
        // a foreign buffer of at least the pool's size is accepted
        pool.put(Buffer::with_capacity(5000));
        assert_eq!(pool.pooled(), 1);
        assert!(pool.get().writable() >= 4096);
    }

    #[test]
    fn debug_is_summary() {
        let mut pool = BufferPool::new(128, 2);
        let b = pool.get();
        pool.put(b);
        let s = format!("{pool:?}");
        assert!(s.contains("pooled: 1"), "{s}");
        assert!(s.contains("allocated: 1"), "{s}");
    }
}

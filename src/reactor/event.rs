//! The vocabulary every engine speaks: a [`Token`] names a registration, an [`Interest`] says
//! which readiness the owner wants, an [`Event`] says which readiness the kernel reported.

/// Names one registration in a poller. The event loop packs a slab index and a generation
/// counter into it, so an event that arrives for an fd closed and reused in the same batch
/// can be recognised as stale and dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// Which readiness a registration waits for. A connection is registered for reading all the
/// time and for writing only while it has output queued (rule 1 of DESIGN.md: an LT poller
/// with write interest on an idle socket would wake up on every wait).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Interest(u8);

impl Interest {
    /// Wait for nothing: keeps the registration (and, for epoll, still reports errors/hangups).
    pub const NONE: Interest = Interest(0);
    pub const READABLE: Interest = Interest(1);
    pub const WRITABLE: Interest = Interest(2);
    pub const BOTH: Interest = Interest(3);

    pub const fn is_readable(self) -> bool {
        self.0 & 1 != 0
    }
    pub const fn is_writable(self) -> bool {
        self.0 & 2 != 0
    }
    pub const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }
    pub const fn remove(self, other: Interest) -> Interest {
        Interest(self.0 & !other.0)
    }
    pub const fn with(readable: bool, writable: bool) -> Interest {
        Interest(readable as u8 | ((writable as u8) << 1))
    }
}

/// How readiness is reported. Level: an fd is reported on every wait while it stays ready.
/// Edge: an fd is reported once per transition to ready, so its owner must read/write until
/// `EAGAIN` (or remember it is still ready) before waiting again.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    Level,
    Edge,
}

/// One readiness report from a poller.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub token: Token,
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up or the socket is in error. The owner finds out which by reading
    /// (which returns 0 or the error), so this only makes sure it tries.
    pub error: bool,
    /// The peer shut down its sending side (or hung up) as of this report. An edge-triggered
    /// reader needs it: a short read then does not mean "drained", the FIN is still to be read
    /// and no new edge will announce it.
    pub hup: bool,
    /// TCP urgent data is pending (edge-triggered epoll only; the other engines never ask).
    /// A read stops short at the urgent mark with more bytes behind it, which no new edge
    /// will announce: an edge-triggered reader must read on to `EAGAIN`.
    pub urgent: bool,
}

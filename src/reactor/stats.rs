//! Counters one event loop keeps about itself. Plain integers: only the loop thread writes
//! them, so they cost an add each, no atomics.

use std::fmt;

use super::poller::Engine;

#[derive(Clone, Debug)]
pub struct LoopStats {
    pub engine: Engine,
    /// Returns from the poller's wait; with `events` this shows whether a loop spins.
    pub wakeups: u64,
    pub events: u64,
    pub accepted: u64,
    /// Connections currently open on this loop (incoming and outgoing).
    pub open: u64,
    pub closed: u64,
    /// Accepts refused because the process ran out of fds (EMFILE/ENFILE).
    pub refused_emfile: u64,
    /// Accepts refused because the loop's connection limit was reached.
    pub refused_limit: u64,
    pub idle_timeouts: u64,
    pub linger_timeouts: u64,
    pub connect_failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub datagrams: u64,
}

impl LoopStats {
    pub fn new(engine: Engine) -> LoopStats {
        LoopStats {
            engine,
            wakeups: 0,
            events: 0,
            accepted: 0,
            open: 0,
            closed: 0,
            refused_emfile: 0,
            refused_limit: 0,
            idle_timeouts: 0,
            linger_timeouts: 0,
            connect_failures: 0,
            bytes_in: 0,
            bytes_out: 0,
            datagrams: 0,
        }
    }
}

/// How many counters a [`LoopStats`] has (everything but the engine).
pub const COUNTERS: usize = 13;

impl LoopStats {
    /// The counters in a fixed order, for summing and for sharing across processes.
    pub fn counters(&self) -> [u64; COUNTERS] {
        [
            self.wakeups,
            self.events,
            self.accepted,
            self.open,
            self.closed,
            self.refused_emfile,
            self.refused_limit,
            self.idle_timeouts,
            self.linger_timeouts,
            self.connect_failures,
            self.bytes_in,
            self.bytes_out,
            self.datagrams,
        ]
    }

    /// The inverse of [`counters`](Self::counters).
    pub fn from_counters(engine: Engine, c: [u64; COUNTERS]) -> LoopStats {
        let [wakeups, events, accepted, open, closed, refused_emfile, refused_limit, idle_timeouts, linger_timeouts, connect_failures, bytes_in, bytes_out, datagrams] =
            c;
        LoopStats {
            engine,
            wakeups,
            events,
            accepted,
            open,
            closed,
            refused_emfile,
            refused_limit,
            idle_timeouts,
            linger_timeouts,
            connect_failures,
            bytes_in,
            bytes_out,
            datagrams,
        }
    }

    /// Adds another loop's counters (a server's total over its loops, threads or processes).
    pub fn add(&mut self, o: &LoopStats) {
        let mut c = self.counters();
        for (a, b) in c.iter_mut().zip(o.counters()) {
            *a += b;
        }
        *self = LoopStats::from_counters(self.engine, c);
    }
}

/// The one-line `key=value` form scripts and tests parse (docs/cli-contract.md).
impl fmt::Display for LoopStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stats engine={} wakeups={} events={} accepted={} open={} closed={} refused_emfile={} \
             refused_limit={} idle_timeouts={} linger_timeouts={} connect_failures={} bytes_in={} \
             bytes_out={} datagrams={}",
            self.engine,
            self.wakeups,
            self.events,
            self.accepted,
            self.open,
            self.closed,
            self.refused_emfile,
            self.refused_limit,
            self.idle_timeouts,
            self.linger_timeouts,
            self.connect_failures,
            self.bytes_in,
            self.bytes_out,
            self.datagrams
        )
    }
}

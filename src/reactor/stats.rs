//! Counters one event loop keeps about itself. Plain integers: only the loop thread writes
//! them, so they cost an add each, no atomics.

use std::fmt;

use super::poller::Engine;

/// Something a handler tells its loop to count (see [`crate::net::Ctx::note`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// A response with this status was sent.
    Response(u16),
    /// A request head took too long (slowloris).
    HeaderTimeout,
    /// A request body stalled.
    BodyTimeout,
}

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
    /// Connections refused because the thread or process that was to serve them could not
    /// start (thread- and process-per-connection: RLIMIT_NPROC, memory).
    pub refused_spawn: u64,
    pub idle_timeouts: u64,
    pub linger_timeouts: u64,
    /// Outgoing connections started (the proxy's to its backends): with `accepted`, what
    /// `open` and `closed` count (refused connections aside: they count in neither).
    pub connects: u64,
    pub connect_failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub datagrams: u64,
    /// HTTP responses by status class (1xx..5xx), for servers that speak HTTP.
    pub http_1xx: u64,
    pub http_2xx: u64,
    pub http_3xx: u64,
    pub http_4xx: u64,
    pub http_5xx: u64,
    /// Request heads that did not arrive in time (slowloris), and stalled request bodies.
    pub header_timeouts: u64,
    pub body_timeouts: u64,
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
            refused_spawn: 0,
            idle_timeouts: 0,
            linger_timeouts: 0,
            connects: 0,
            connect_failures: 0,
            bytes_in: 0,
            bytes_out: 0,
            datagrams: 0,
            http_1xx: 0,
            http_2xx: 0,
            http_3xx: 0,
            http_4xx: 0,
            http_5xx: 0,
            header_timeouts: 0,
            body_timeouts: 0,
        }
    }
}

/// How many counters a [`LoopStats`] has (everything but the engine).
pub const COUNTERS: usize = 22;

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
            self.refused_spawn,
            self.idle_timeouts,
            self.linger_timeouts,
            self.connects,
            self.connect_failures,
            self.bytes_in,
            self.bytes_out,
            self.datagrams,
            self.http_1xx,
            self.http_2xx,
            self.http_3xx,
            self.http_4xx,
            self.http_5xx,
            self.header_timeouts,
            self.body_timeouts,
        ]
    }

    /// The inverse of [`counters`](Self::counters).
    pub fn from_counters(engine: Engine, c: [u64; COUNTERS]) -> LoopStats {
        let [wakeups, events, accepted, open, closed, refused_emfile, refused_limit, refused_spawn, idle_timeouts, linger_timeouts, connects, connect_failures, bytes_in, bytes_out, datagrams, http_1xx, http_2xx, http_3xx, http_4xx, http_5xx, header_timeouts, body_timeouts] =
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
            refused_spawn,
            idle_timeouts,
            linger_timeouts,
            connects,
            connect_failures,
            bytes_in,
            bytes_out,
            datagrams,
            http_1xx,
            http_2xx,
            http_3xx,
            http_4xx,
            http_5xx,
            header_timeouts,
            body_timeouts,
        }
    }

    /// Counts one handler-reported event (an HTTP response, a protocol timeout).
    pub fn note(&mut self, note: Note) {
        match note {
            Note::Response(status) => match status / 100 {
                1 => self.http_1xx += 1,
                2 => self.http_2xx += 1,
                3 => self.http_3xx += 1,
                4 => self.http_4xx += 1,
                _ => self.http_5xx += 1,
            },
            Note::HeaderTimeout => self.header_timeouts += 1,
            Note::BodyTimeout => self.body_timeouts += 1,
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

/// The counters' names, in the order of [`LoopStats::counters`]: the keys of the `stats` line.
pub const COUNTER_NAMES: [&str; COUNTERS] = [
    "wakeups",
    "events",
    "accepted",
    "open",
    "closed",
    "refused_emfile",
    "refused_limit",
    "refused_spawn",
    "idle_timeouts",
    "linger_timeouts",
    "connects",
    "connect_failures",
    "bytes_in",
    "bytes_out",
    "datagrams",
    "http_1xx",
    "http_2xx",
    "http_3xx",
    "http_4xx",
    "http_5xx",
    "header_timeouts",
    "body_timeouts",
];

/// The one-line `key=value` form scripts and tests parse (docs/cli-contract.md).
impl fmt::Display for LoopStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stats engine={}", self.engine)?;
        for (name, value) in COUNTER_NAMES.iter().zip(self.counters()) {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

//! What the threads need from the server's options, and the millisecond ticks they count in.

use std::sync::Arc;
use std::time::Duration;

use crate::reactor::Keepalive;
use crate::server::{ServerOptions, Service};

/// Milliseconds, rounded up so a timer never fires early.
pub(super) fn ms(d: Duration) -> u64 {
    let whole = d.as_millis();
    let up = if Duration::from_millis(whole as u64) < d {
        whole + 1
    } else {
        whole
    };
    up.min(u64::MAX as u128) as u64
}

/// What the threads need from the server's options.
#[derive(Clone)]
pub(super) struct Settings {
    pub(super) idle_timeout: Option<Duration>,
    pub(super) linger_ms: u64,
    pub(super) drain_ms: u64,
    pub(super) max_conns: Option<usize>,
    pub(super) max_accepts: usize,
    pub(super) read_budget: usize,
    pub(super) high_water: usize,
    pub(super) nodelay: bool,
    pub(super) keepalive: Option<Keepalive>,
    pub(super) refusal_note: Option<Arc<[u8]>>,
}

impl Settings {
    pub(super) fn from_opts(opts: &ServerOptions, service: &Service) -> Settings {
        let cfg = opts.loop_config(service);
        Settings {
            idle_timeout: cfg.idle_timeout,
            linger_ms: ms(cfg.linger_timeout),
            drain_ms: ms(opts.drain_timeout),
            max_conns: opts.max_connections,
            max_accepts: cfg.max_accepts_per_wakeup.max(1),
            read_budget: cfg.read_budget.max(1),
            high_water: cfg.high_water,
            nodelay: cfg.tcp_nodelay,
            keepalive: cfg.keepalive,
            refusal_note: cfg.refusal_note,
        }
    }
}

//! Load generators behind `keel bench`: built on keel's own loop, one thread, so the load
//! takes one core and the server the other (../shared/bench/README.md).

pub mod chat;
pub mod pingpong;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What went wrong during a load: how often, and the first time in words.
#[derive(Default)]
pub(crate) struct Failures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Failures {
    pub(crate) fn failed(&self, what: impl FnOnce() -> String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(what());
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

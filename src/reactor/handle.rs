//! The `Send` side of an event loop: how other threads reach it.
//!
//! A loop is single-threaded on purpose (one owner per connection, DESIGN rule 5); the only
//! things shared with other threads are this task queue and the waker that rings the loop when
//! the queue goes from empty to non-empty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::event_loop::EventLoop;
use super::waker::Waker;

/// Work sent to a loop from anywhere; it runs on the loop's thread with the whole loop at hand.
pub type Task = Box<dyn FnOnce(&mut EventLoop) + Send>;

pub(crate) struct Shared {
    /// The queue; `None` once the loop is gone, so posts fail instead of piling up.
    tasks: Mutex<Option<Vec<Task>>>,
    /// True from the first post after a drain until the loop drains again, so a burst of posts
    /// rings the eventfd once instead of once per task.
    notified: AtomicBool,
    pub(crate) waker: Waker,
    /// The loop's counters as it last published them (a few times a second): what a reader
    /// on another thread gets without waiting for the loop, which may be busy in a handler.
    pub(crate) published: Mutex<Option<super::LoopStats>>,
}

impl Shared {
    pub(crate) fn new(waker: Waker) -> Shared {
        Shared {
            tasks: Mutex::new(Some(Vec::new())),
            notified: AtomicBool::new(false),
            waker,
            published: Mutex::new(None),
        }
    }

    /// Called by the loop when the waker fired: drains the eventfd, re-arms notification, then
    /// takes the batch. In that order: a post that saw the flag set pushed its task before the
    /// flag was cleared, so it lands in this batch; a post that finds the flag clear rings the
    /// eventfd after the drain, so the loop wakes again. (Draining after clearing the flag
    /// could swallow that ring and strand the task.)
    pub(crate) fn take_tasks(&self, into: &mut Vec<Task>) {
        self.waker.drain();
        self.notified.store(false, Ordering::SeqCst);
        let mut q = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = q.as_mut() {
            std::mem::swap(q, into);
        }
    }

    /// Whether a task is waiting to be run.
    pub(crate) fn has_tasks(&self) -> bool {
        let q = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        q.as_ref().is_some_and(|q| !q.is_empty())
    }

    /// Called when the loop is dropped: later posts return false, queued tasks are dropped.
    pub(crate) fn close(&self) {
        let old = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Dropped outside the lock: a dropped task may run code (a handler's `on_close`)
        // that posts, which takes this lock.
        drop(old);
    }
}

/// A cloneable, `Send` handle to one event loop.
#[derive(Clone)]
pub struct LoopHandle {
    pub(crate) shared: Arc<Shared>,
}

impl LoopHandle {
    /// The loop's counters as of its last publication, which a turning loop makes at most
    /// every 100 ms, after an iteration: a loop asleep in its wait publishes nothing, so these
    /// may predate its last events by any time (and so may a loop a handler holds up). For a
    /// live figure, [`post`](Self::post) a task that reads `stats()`, as `/metrics` does and
    /// falls back to these only for a loop that does not answer. `None` before the first.
    pub fn published_stats(&self) -> Option<super::LoopStats> {
        self.shared
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `task` on the loop's thread at its next iteration. Returns false if the loop is
    /// gone (the task is dropped) or its waker could not be rung.
    pub fn post(&self, task: impl FnOnce(&mut EventLoop) + Send + 'static) -> bool {
        {
            let mut q = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
            match q.as_mut() {
                Some(q) => q.push(Box::new(task)),
                None => return false,
            }
        }
        if !self.shared.notified.swap(true, Ordering::SeqCst) {
            return self.shared.waker.wake().is_ok();
        }
        true
    }

    /// Asks the loop to return from `run` at its next iteration.
    pub fn stop(&self) -> bool {
        self.post(|el| el.stop())
    }
}

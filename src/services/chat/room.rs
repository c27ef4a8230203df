//! Who is in the room, and how a message reaches every member without a second writer on
//! any socket (rule 5).
//!
//! A member belongs to the loop that accepted it, for life. Each loop keeps the list of its
//! own members in its thread (a loop is one thread, and a task posted to it runs there), so
//! delivering a message on a loop takes no lock. The room itself only knows which loops have
//! members, with the handle that reaches each: a speaker writes to the members of its own
//! loop at once, and posts the message to every other loop, whose task writes it to that
//! loop's members. The frame is encoded once and shared (`Arc`) by every loop.
//!
//! **Backpressure across loops.** A loop may deliver more slowly than a speaker on another
//! loop talks (it has many more members to write to, say). What is posted to it and not yet
//! delivered is counted, in bytes, per loop; past [`BACKLOG_LIMIT`] the broadcast says the room
//! is congested and the speaker stops reading until every backlog is under half of it
//! (`Member`'s `on_timer`). So the task queues hold at most about one limit per loop, and a
//! speaker is slowed to the pace of the slowest loop, as TCP slows a sender to its reader's.
//!
//! Order: each loop's tasks run in the order they were posted, so the messages of one
//! speaker reach every member in the order they were said. Two speakers on different loops
//! may be heard in different orders by members of different loops, as in any chat.
//!
//! The room outlives a configuration reload (the handler factory is rebuilt, the room is
//! handed to the new one), so members who came before and after a reload still hear each other.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};

use crate::net::ConnId;
use crate::reactor::{EventLoop, LoopHandle};

/// Rooms are told apart in a thread's member lists by this number.
static NEXT_ROOM: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's loop's members, per room: `(room, members)`.
    static MEMBERS: RefCell<Vec<(u64, Vec<ConnId>)>> = const { RefCell::new(Vec::new()) };
}

/// Bytes posted to one loop and not yet delivered, past which speakers pause.
pub const BACKLOG_LIMIT: usize = 1 << 20;

/// A loop with members, and how to reach it.
#[derive(Clone)]
struct Home {
    thread: ThreadId,
    handle: LoopHandle,
    /// Bytes of frames posted to this loop and not yet delivered.
    backlog: Arc<AtomicUsize>,
}

/// Takes a delivery's bytes off its loop's backlog when the task is done with, whether it
/// ran or was dropped with a loop that stopped.
struct Pending {
    backlog: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.backlog.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

pub struct Room {
    id: u64,
    /// The loops with at least one member. Replaced whole (copy on write) when a loop gets
    /// its first member or loses its last, which is rare; a speaker takes the lock only to
    /// clone the `Arc`.
    homes: Mutex<Arc<Vec<Home>>>,
    next_guest: AtomicU64,
    /// The most that may wait for one member (0: no limit), set by the server: a delivery
    /// that leaves more queued tells the member's handler at once (`on_high_water`), which
    /// drops it, rather than let a fast room pile up more before the handler looks again.
    slow_limit: AtomicUsize,
}

impl Default for Room {
    fn default() -> Self {
        Room::new()
    }
}

impl Room {
    pub fn new() -> Room {
        Room {
            id: NEXT_ROOM.fetch_add(1, Ordering::Relaxed),
            homes: Mutex::new(Arc::new(Vec::new())),
            next_guest: AtomicU64::new(1),
            slow_limit: AtomicUsize::new(0),
        }
    }

    /// Sets the most that may wait for one member (see the field).
    pub fn set_slow_limit(&self, bytes: usize) {
        self.slow_limit.store(bytes, Ordering::Relaxed);
    }

    /// The next guest name's number.
    pub fn next_guest(&self) -> u64 {
        self.next_guest.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds `id`, a connection of the calling thread's loop, which `handle` reaches.
    pub fn join(&self, id: ConnId, handle: LoopHandle) {
        let first = self.with_members(|m| {
            m.push(id);
            m.len() == 1
        });
        if first {
            let me = thread::current().id();
            self.update_homes(|homes| {
                homes.retain(|h| h.thread != me);
                homes.push(Home {
                    thread: me,
                    handle,
                    backlog: Arc::new(AtomicUsize::new(0)),
                });
            });
        }
    }

    /// Removes `id` (a connection of the calling thread's loop); nothing if it is not a member.
    pub fn leave(&self, id: ConnId) {
        let now_empty = self.with_members(|m| {
            let Some(at) = m.iter().position(|&x| x == id) else {
                return false;
            };
            m.swap_remove(at);
            m.is_empty()
        });
        if now_empty {
            let me = thread::current().id();
            self.update_homes(|homes| homes.retain(|h| h.thread != me));
        }
    }

    /// Members on the calling thread's loop.
    pub fn local_members(&self) -> usize {
        self.with_members(|m| m.len())
    }

    /// Sends `frame` to every member: those of `el` (the calling thread's loop) at once, the
    /// others through their loops' task queues. True if a loop's backlog is now over
    /// [`BACKLOG_LIMIT`]: the speaker should pause until [`Room::congested`] says otherwise.
    pub fn broadcast(self: &Arc<Self>, el: &mut EventLoop, frame: Vec<u8>) -> bool {
        let frame: Arc<[u8]> = frame.into();
        let homes = self.homes();
        let me = thread::current().id();
        let mut congested = false;
        for home in homes.iter().filter(|h| h.thread != me) {
            let bytes = frame.len();
            let before = home.backlog.fetch_add(bytes, Ordering::Relaxed);
            congested |= before + bytes > BACKLOG_LIMIT;
            let pending = Pending {
                backlog: Arc::clone(&home.backlog),
                bytes,
            };
            let (room, frame) = (Arc::clone(self), Arc::clone(&frame));
            // A loop that has stopped drops the task (and `pending` with it): its members
            // are gone with it.
            home.handle.post(move |el| {
                room.deliver(el, &frame);
                drop(pending);
            });
        }
        self.deliver(el, &frame);
        congested
    }

    /// Whether a paused speaker should stay paused: some loop still has more than half of
    /// [`BACKLOG_LIMIT`] to deliver. Half, so that a speaker resumes into room to talk, not
    /// to pause again at its next message.
    pub fn congested(&self) -> bool {
        self.homes()
            .iter()
            .any(|h| h.backlog.load(Ordering::Relaxed) > BACKLOG_LIMIT / 2)
    }

    fn homes(&self) -> Arc<Vec<Home>> {
        Arc::clone(&self.homes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues `frame` for each member of the calling thread's loop, to leave at the end of
    /// the loop's turn (`EventLoop::write_batched`): the messages a turn brings (several
    /// speakers' reads, a batch of posted tasks) reach each member in one write. The list is
    /// copied first: a write can drop a member (a slow one, see the server's
    /// `on_high_water`), which changes the list.
    fn deliver(&self, el: &mut EventLoop, frame: &[u8]) {
        let members = self.with_members(|m| m.clone());
        let limit = self.slow_limit.load(Ordering::Relaxed);
        for id in members {
            el.write_batched(id, frame);
            if limit > 0 && el.output_len(id) > limit {
                el.remind_high_water(id);
            }
        }
    }

    fn with_members<T>(&self, f: impl FnOnce(&mut Vec<ConnId>) -> T) -> T {
        MEMBERS.with(|rooms| {
            let mut rooms = rooms.borrow_mut();
            let at = match rooms.iter().position(|(r, _)| *r == self.id) {
                Some(at) => at,
                None => {
                    rooms.push((self.id, Vec::new()));
                    rooms.len() - 1
                }
            };
            let out = f(&mut rooms[at].1);
            if rooms[at].1.is_empty() {
                rooms.swap_remove(at);
            }
            out
        })
    }

    fn update_homes(&self, f: impl FnOnce(&mut Vec<Home>)) {
        let mut homes = self.homes.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Home> = (**homes).clone();
        f(&mut next);
        *homes = Arc::new(next);
    }
}

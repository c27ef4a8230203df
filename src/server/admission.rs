//! Admission for the per-connection models (thread-per-conn, process-per-conn): a client that
//! arrives while every slot is taken waits a moment for one to free before it is refused.
//!
//! A slot frees when its thread or process has ended, which is a few milliseconds after its
//! connection did: the thread leaves its loop, the process publishes its counters, exits and
//! is reaped. A client that closes one connection and opens the next at once (an HTTP client
//! after `Connection: close`, a script) would find the slot still taken and be refused while
//! nothing is being served. So the accepted socket is held here, oldest first, and offered a
//! slot every [`POLL`] until [`GRACE`] has passed; only then is it refused, as before. Past
//! [`MAX_WAITING`] held at once, a newcomer is refused at once: a sustained overload is still
//! met with refusals, only a moment later.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::reactor::EventLoop;

/// How long a client may wait for a slot before it is refused.
const GRACE: Duration = Duration::from_millis(250);
/// How often the clients that wait are offered a slot.
const POLL: Duration = Duration::from_millis(5);
/// The most clients held at once.
const MAX_WAITING: usize = 64;

/// Serves an accepted socket if a slot is free (`Ok`), else gives it back (`Err`). A refusal
/// for another reason (a failed fork) is the admitter's to count and make. The third argument
/// is the sockets still held here: a process forked now inherits them and must close them, or
/// its copy would keep those clients' connections open after they are served or refused.
pub(super) type Admit =
    Rc<dyn Fn(&mut EventLoop, OwnedFd, &[BorrowedFd<'_>]) -> Result<(), OwnedFd>>;

/// The clients waiting for a slot, on the control loop.
pub(super) struct Admission {
    admit: Admit,
    waiting: RefCell<VecDeque<(OwnedFd, Instant)>>,
    polling: Cell<bool>,
    /// Set by [`Admission::refuse_all`]: no one is admitted any more.
    stopping: Cell<bool>,
}

impl Admission {
    pub(super) fn new(admit: Admit) -> Rc<Admission> {
        Rc::new(Admission {
            admit,
            waiting: RefCell::new(VecDeque::new()),
            polling: Cell::new(false),
            stopping: Cell::new(false),
        })
    }

    /// A client the listener accepted: served now if a slot is free and no one waits before
    /// it, else held (or refused when too many are).
    pub(super) fn offer(self: &Rc<Self>, el: &mut EventLoop, fd: OwnedFd) {
        if self.is_stopping(el) {
            refuse(el, fd);
            return;
        }
        let fd = if self.waiting.borrow().is_empty() {
            match (self.admit)(el, fd, &[]) {
                Ok(()) => return,
                Err(fd) => fd,
            }
        } else {
            fd
        };
        if self.waiting.borrow().len() >= MAX_WAITING {
            refuse(el, fd);
            return;
        }
        self.waiting.borrow_mut().push_back((fd, Instant::now()));
        if !self.polling.replace(true) {
            self.poll_later(el);
        }
    }

    /// The server is stopping: refuses every client that waits, counted. Closed at once
    /// (what each sent is drained first, `close_refused`): a stopping master's loop ends as
    /// soon as its children are gone, and would take a lingering refusal down with it.
    /// Those that come after are refused as they come.
    pub(super) fn refuse_all(&self, el: &mut EventLoop) {
        self.stopping.set(true);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (fd, _) in waiting {
            el.stats.refused_limit += 1;
            crate::net::close_refused(fd, el.cfg.refusal_note.as_deref());
        }
    }

    fn poll_later(self: &Rc<Self>, el: &mut EventLoop) {
        let me = self.clone();
        el.run_after(POLL, move |el| me.poll(el));
    }

    /// Offers slots to the clients that wait, oldest first, and refuses those that waited
    /// past [`GRACE`] (or any, once the server is stopping).
    fn poll(self: &Rc<Self>, el: &mut EventLoop) {
        let now = Instant::now();
        loop {
            let Some((fd, since)) = self.waiting.borrow_mut().pop_front() else {
                break;
            };
            let fd = if self.is_stopping(el) {
                fd
            } else {
                let admitted = {
                    let waiting = self.waiting.borrow();
                    let held: Vec<BorrowedFd<'_>> =
                        waiting.iter().map(|(f, _)| f.as_fd()).collect();
                    (self.admit)(el, fd, &held)
                };
                match admitted {
                    Ok(()) => continue,
                    Err(fd) if now.duration_since(since) < GRACE => {
                        // No slot yet; the ones behind it waited less.
                        self.waiting.borrow_mut().push_front((fd, since));
                        break;
                    }
                    Err(fd) => fd,
                }
            };
            refuse(el, fd);
        }
        if self.waiting.borrow().is_empty() {
            self.polling.set(false);
        } else {
            self.poll_later(el);
        }
    }

    /// Whether clients are to be refused whatever the slots: the server is stopping (a
    /// thread model's control loop drains; a forking master calls `refuse_all`).
    fn is_stopping(&self, el: &EventLoop) -> bool {
        self.stopping.get() || el.is_draining()
    }
}

fn refuse(el: &mut EventLoop, fd: OwnedFd) {
    el.stats.refused_limit += 1;
    el.refuse(fd); // the client reads EOF
}

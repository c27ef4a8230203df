//! Readiness engines behind one switch.
//!
//! An enum rather than a trait object: the engine is chosen once at start-up and the loop calls
//! it on every iteration, so static dispatch keeps the hot path free of indirect calls while the
//! choice stays a run-time flag (`--engine`).

mod epoll;
mod poll;
mod select;
mod uring;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::str::FromStr;
use std::time::Duration;

pub use self::epoll::{wait_timespec, EpollPoller};
pub use self::poll::PollPoller;
pub use self::select::SelectPoller;
pub use self::uring::{Got, Received, RecvKey, UringPoller};
use crate::reactor::event::{Event, Interest, Token, Trigger};

/// Why an engine refused to watch an fd it cannot represent (`select` at `FD_SETSIZE`): a
/// limit of this process's engine, not a fault of the socket or its peer.
#[derive(Debug)]
pub struct Unwatchable(pub String);

impl fmt::Display for Unwatchable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unwatchable {}

impl Unwatchable {
    pub fn error(why: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, Unwatchable(why))
    }

    /// Whether `e` is such a refusal (see the type).
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Unwatchable>())
    }
}

/// The readiness engine a loop runs on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Engine {
    Select,
    Poll,
    /// epoll, level-triggered.
    EpollLt,
    /// epoll, edge-triggered. The default: `bench/engines` measured it at least as fast as LT
    /// and it saves the `epoll_ctl` that LT needs each time write interest goes on or off.
    #[default]
    EpollEt,
    /// io_uring multishot polls, registrations batched into the wait (edge-triggered). Falls
    /// back to `epoll-et`, with a log line, where the kernel has no usable io_uring.
    Uring,
}

impl Engine {
    pub const ALL: [Engine; 5] = [
        Engine::Select,
        Engine::Poll,
        Engine::EpollLt,
        Engine::EpollEt,
        Engine::Uring,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Engine::Select => "select",
            Engine::Poll => "poll",
            Engine::EpollLt => "epoll-lt",
            Engine::EpollEt => "epoll-et",
            Engine::Uring => "uring",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Engine::ALL.iter().map(|e| e.name()).collect();
                format!("unknown engine {s:?}: expected one of {}", names.join(", "))
            })
    }
}

pub enum Poller {
    /// Boxed: its two 128-byte fd_sets would otherwise make every `Poller` that large.
    Select(Box<SelectPoller>),
    Poll(PollPoller),
    Epoll(EpollPoller),
    /// Boxed: the ring's mappings and queues make it several times the size of the others.
    Uring(Box<UringPoller>),
}

impl Poller {
    pub fn new(engine: Engine) -> io::Result<Poller> {
        Ok(match engine {
            Engine::Select => Poller::Select(Box::new(SelectPoller::new()?)),
            Engine::Poll => Poller::Poll(PollPoller::new()?),
            Engine::EpollLt => Poller::Epoll(EpollPoller::new(Trigger::Level)?),
            Engine::EpollEt => Poller::Epoll(EpollPoller::new(Trigger::Edge)?),
            Engine::Uring => Poller::Uring(Box::new(UringPoller::new()?)),
        })
    }

    /// The poller for `engine`, or for `epoll-et` where `engine` is `uring` and the kernel
    /// refuses io_uring (absent, disabled by sysctl or seccomp, too old): said once per
    /// process, so a thread-per-connection server does not say it per connection. The engine
    /// actually running is returned beside it.
    pub fn new_or_fallback(engine: Engine) -> io::Result<(Poller, Engine)> {
        match Poller::new(engine) {
            Err(e) if engine == Engine::Uring => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!("io_uring unavailable ({e}): running on epoll-et instead")
                });
                Ok((Poller::new(Engine::EpollEt)?, Engine::EpollEt))
            }
            other => other.map(|p| (p, engine)),
        }
    }

    /// The poller's own fd, where it has one (epoll's instance, io_uring's ring).
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Poller::Epoll(p) => Some(p.as_fd()),
            Poller::Uring(p) => Some(p.as_fd()),
            _ => None,
        }
    }

    pub fn trigger(&self) -> Trigger {
        match self {
            Poller::Epoll(p) => p.trigger(),
            Poller::Uring(_) => Trigger::Edge,
            _ => Trigger::Level,
        }
    }

    pub fn register(
        &mut self,
        fd: BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Poller::Select(p) => p.register(fd.as_raw_fd(), token, interest),
            Poller::Poll(p) => p.register(fd.as_raw_fd(), token, interest),
            Poller::Epoll(p) => p.register(fd, token, interest),
            Poller::Uring(p) => p.register(fd, token, interest),
        }
    }

    pub fn reregister(
        &mut self,
        fd: BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Poller::Select(p) => p.reregister(fd.as_raw_fd(), token, interest),
            Poller::Poll(p) => p.reregister(fd.as_raw_fd(), token, interest),
            Poller::Epoll(p) => p.reregister(fd, token, interest),
            Poller::Uring(p) => p.reregister(fd, token, interest),
        }
    }

    pub fn deregister(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        match self {
            Poller::Select(p) => p.deregister(fd.as_raw_fd()),
            Poller::Poll(p) => p.deregister(fd.as_raw_fd()),
            Poller::Epoll(p) => p.deregister(fd),
            Poller::Uring(p) => p.deregister(fd),
        }
    }

    /// Called right before the fd is closed: select and poll must forget it explicitly. epoll
    /// drops it by itself when the open file behind the fd is released, which the close does
    /// if no other process holds the file; that saves a syscall per connection. Once this
    /// process has forked (prefork workers, process-per-connection children) another process
    /// may hold it, and a registration left behind would be reported for ever under a token
    /// nobody owns (in level-triggered mode, a loop spinning on it), so it is deleted first.
    /// An io_uring poll holds the file itself, so its removal is never skipped, and it is
    /// handed to the kernel before the close (one `io_uring_enter`: see
    /// `UringPoller::deregister_before_close`).
    pub fn deregister_before_close(&mut self, fd: BorrowedFd<'_>) {
        match self {
            Poller::Epoll(p) if !crate::sys::process::fds_may_be_shared() => p.forget(),
            Poller::Uring(p) => p.deregister_before_close(fd),
            _ => {
                let _ = self.deregister(fd);
            }
        }
    }

    pub fn wait(
        &mut self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        match self {
            Poller::Select(p) => p.wait(events, timeout),
            Poller::Poll(p) => p.wait(events, timeout),
            Poller::Epoll(p) => p.wait(events, timeout),
            Poller::Uring(p) => p.wait(events, timeout),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Poller::Select(p) => p.len(),
            Poller::Poll(p) => p.len(),
            Poller::Epoll(p) => p.len(),
            Poller::Uring(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

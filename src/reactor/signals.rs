//! Signals as ordinary loop events (the notes' 统一事件源), through signalfd.
//!
//! A handler running asynchronously at an arbitrary instruction can do almost nothing safely;
//! with the signals blocked and read from a signalfd, SIGTERM is just another readable fd, seen
//! between two events, and the stop logic is plain code with the whole loop state at hand.
//!
//! Blocking must happen before any thread is spawned: threads inherit the mask, and a signal
//! left unblocked in some thread would be delivered there with its default action.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::SigSet;
pub use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub struct Signals {
    fd: SignalFd,
    set: Vec<Signal>,
    /// The process that created the signalfd. A signalfd in an epoll set is woken through the
    /// creating process's signal state: after a fork (a daemon's double fork) the new process
    /// must make its own, or its signals would never wake the loop.
    owner: u32,
}

impl Signals {
    /// Blocks `signals` in the calling thread (and so in threads it spawns later) and opens a
    /// non-blocking signalfd that receives them.
    pub fn new(signals: &[Signal]) -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for &s in signals {
            set.add(s);
        }
        set.thread_block().map_err(io::Error::from)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(Signals {
            fd,
            set: signals.to_vec(),
            owner: std::process::id(),
        })
    }

    /// True when this signalfd was made by another process (we are a forked copy).
    pub fn inherited(&self) -> bool {
        self.owner != std::process::id()
    }

    /// A new signalfd for the same signals, made by this process.
    pub fn renew(&self) -> io::Result<Signals> {
        Signals::new(&self.set)
    }

    /// The next pending signal, or None when none is pending.
    pub fn next_signal(&mut self) -> Option<Signal> {
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(sig) => return Some(sig),
                    Err(_) => continue,
                },
                Ok(None) => return None,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

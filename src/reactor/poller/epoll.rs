//! epoll, in both trigger modes.
//!
//! The interest list lives in the kernel, so a wait costs O(ready) rather than O(registered):
//! that is the whole reason epoll stays flat when thousands of idle connections are held (the
//! notes' comparison with select/poll, measured by `bench/engines`).
//!
//! Level-triggered (`EPOLLIN`/`EPOLLOUT` as asked): the loop toggles write interest on only while
//! output is pending. Edge-triggered (`EPOLLET`): the loop registers read and write interest
//! once and never changes it, which saves an `epoll_ctl` per blocked write; the price is that
//! every reader must drain to `EAGAIN` or remember that the fd is still ready.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;

use crate::reactor::event::{Event, Interest, Token, Trigger};

pub struct EpollPoller {
    epfd: OwnedFd,
    trigger: Trigger,
    buf: Vec<epoll::Event>,
    registered: usize,
}

/// The longest single wait, about 24.8 days: `i32::MAX` milliseconds, what `epoll_pwait`
/// takes. A longer timeout would make rustix switch to `epoll_pwait2` (Linux 5.11, and refused
/// with EPERM by older seccomp profiles) or overflow `tv_sec`; the loop only wakes up early
/// and waits again, as the select and poll engines do with their own limits.
pub const MAX_WAIT: Duration = Duration::from_millis(i32::MAX as u64);

/// `timeout` as the timespec `epoll::wait` takes, clamped to [`MAX_WAIT`].
pub fn wait_timespec(timeout: Duration) -> rustix::event::Timespec {
    let d = timeout.min(MAX_WAIT);
    rustix::event::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// Events fetched per wait. Larger batches amortise the syscall; 1024 is plenty for one loop.
const BATCH: usize = 1024;

impl AsFd for EpollPoller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epfd.as_fd()
    }
}

impl EpollPoller {
    pub fn new(trigger: Trigger) -> io::Result<Self> {
        let epfd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(EpollPoller {
            epfd,
            trigger,
            buf: Vec::with_capacity(BATCH),
            registered: 0,
        })
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    fn flags(&self, interest: Interest) -> epoll::EventFlags {
        let mut f = epoll::EventFlags::empty();
        if interest.is_readable() {
            // RDHUP stays true once the FIN is in: asked for without read interest, a
            // level-triggered registration would report it on every wait.
            f |= epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
            if self.trigger == Trigger::Edge {
                // Urgent data: reported once per edge, so it cannot keep a level-triggered
                // wait busy the way POLLPRI would (see the poll engine's notes).
                f |= epoll::EventFlags::PRI;
            }
        } else if self.trigger == Trigger::Edge {
            f |= epoll::EventFlags::RDHUP;
        }
        if interest.is_writable() {
            f |= epoll::EventFlags::OUT;
        }
        if self.trigger == Trigger::Edge {
            f |= epoll::EventFlags::ET;
        }
        f
    }

    pub fn register(
        &mut self,
        fd: BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        epoll::add(
            &self.epfd,
            fd,
            epoll::EventData::new_u64(token.0),
            self.flags(interest),
        )?;
        self.registered += 1;
        Ok(())
    }

    pub fn reregister(
        &mut self,
        fd: BorrowedFd<'_>,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        epoll::modify(
            &self.epfd,
            fd,
            epoll::EventData::new_u64(token.0),
            self.flags(interest),
        )?;
        Ok(())
    }

    pub fn deregister(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        epoll::delete(&self.epfd, fd)?;
        self.registered = self.registered.saturating_sub(1);
        Ok(())
    }

    /// Closing an fd whose open file no other process holds removes it from every epoll set,
    /// so the loop skips `EPOLL_CTL_DEL` before such a close: one syscall less per connection.
    pub fn forget(&mut self) {
        self.registered = self.registered.saturating_sub(1);
    }

    pub fn len(&self) -> usize {
        self.registered
    }

    pub fn is_empty(&self) -> bool {
        self.registered == 0
    }

    pub fn wait(
        &mut self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        events.clear();
        self.buf.clear();
        let ts = timeout.map(wait_timespec);
        match epoll::wait(
            self.epfd.as_fd(),
            rustix::buffer::spare_capacity(&mut self.buf),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        for ev in &self.buf {
            let flags = ev.flags;
            let err = flags.intersects(epoll::EventFlags::ERR | epoll::EventFlags::HUP);
            events.push(Event {
                token: Token(ev.data.u64()),
                readable: err
                    || flags.intersects(
                        epoll::EventFlags::IN | epoll::EventFlags::PRI | epoll::EventFlags::RDHUP,
                    ),
                writable: flags.contains(epoll::EventFlags::OUT),
                error: err,
                hup: flags.intersects(epoll::EventFlags::RDHUP | epoll::EventFlags::HUP),
                urgent: flags.contains(epoll::EventFlags::PRI),
            });
        }
        Ok(events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_wait_longer_than_epoll_takes_is_clamped_not_refused() {
        assert_eq!(wait_timespec(Duration::MAX).tv_sec, i32::MAX as i64 / 1000);
        let short = wait_timespec(Duration::from_millis(1_500));
        assert_eq!((short.tv_sec, short.tv_nsec), (1, 500_000_000));

        // The kernel takes the clamped wait: a ready fd is reported, where an unclamped
        // `Duration::MAX` made a negative `tv_sec` and failed the wait with EINVAL.
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"x").unwrap();
        for trigger in [Trigger::Level, Trigger::Edge] {
            let mut p = EpollPoller::new(trigger).unwrap();
            p.register(a.as_fd(), Token(1), Interest::READABLE).unwrap();
            let mut events = Vec::new();
            assert_eq!(p.wait(&mut events, Some(Duration::MAX)).unwrap(), 1);
            assert_eq!(events[0].token, Token(1));
        }
    }
}

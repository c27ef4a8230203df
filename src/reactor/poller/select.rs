//! The `select(2)` engine: the oldest readiness interface, kept as the baseline the others are
//! measured against.
//!
//! # What a wait costs, and why
//!
//! select is stateless: the kernel forgets the interest set as soon as the call returns, and
//! the same bitmaps carry the question in and the answer out. So every single wait pays for
//! the whole interest set again, even when one fd is ready:
//!
//! 1. The master sets are copied into scratch sets, because select overwrites its arguments
//!    with the result.
//! 2. The kernel copies `maxfd + 1` bits of each set in, asks every one of those fds for its
//!    readiness, and copies the sets back out.
//! 3. We walk `0..=maxfd` again, testing bits, to find the few that are set.
//!
//! All three are O(maxfd): not O(ready), not even O(registered) — a single fd numbered 1000
//! makes every wait pay for 1001 slots. Contrast epoll, where the interest list lives in the
//! kernel (changed once per `epoll_ctl`) and `epoll_wait` hands back only the ready fds.
//!
//! An `fd_set` is also a fixed 1024-bit bitmap (`FD_SETSIZE`), so fds ≥ 1024 cannot be
//! described at all; `FD_SET` on one would write past the end of the set. Such fds are
//! refused at register time with `InvalidInput` rather than failing later inside a wait.
//!
//! # Semantics
//!
//! Level-triggered only. `Event::error` is never set: select has no error bit. A hung-up
//! peer or a socket error shows up as readable (and writable, if asked), and reading returns
//! 0 or the error. `exceptfds` is not used; on sockets it only means TCP urgent data.
//! [`Interest::NONE`] takes the fd out of both sets, so nothing at all is reported for it.
//!
//! A registered fd must be deregistered before it is closed: otherwise every wait fails with
//! `EBADF` (select cannot say which fd), or silently watches whatever file reuses the number.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::reactor::event::{Event, Interest, Token};
use crate::sys::select_poll::{self, FdSet, FD_SETSIZE};

/// Readiness through `select(2)`; see the module docs for its cost model and the 1024 cap.
#[derive(Debug)]
pub struct SelectPoller {
    /// The interest sets; they only change on (re/de)registration.
    read_master: FdSet,
    write_master: FdSet,
    /// Scratch sets handed to select, refilled from the masters before every wait.
    read_ready: FdSet,
    write_ready: FdSet,
    /// `slots[fd]` is the registration of `fd`, if any. Indexed by fd because select's
    /// answer is itself indexed by fd.
    slots: Vec<Option<(Token, Interest)>>,
    /// Highest registered fd, or -1: select's `nfds` is this plus one.
    max_fd: RawFd,
    len: usize,
}

// No `is_empty`: the engines are only used through `Poller`, which has one.
#[allow(clippy::len_without_is_empty)]
impl SelectPoller {
    pub fn new() -> io::Result<SelectPoller> {
        Ok(SelectPoller {
            read_master: FdSet::new(),
            write_master: FdSet::new(),
            read_ready: FdSet::new(),
            write_ready: FdSet::new(),
            slots: Vec::new(),
            max_fd: -1,
            len: 0,
        })
    }

    /// Fails with `InvalidInput` for an fd select cannot represent (negative or ≥ 1024),
    /// `AlreadyExists` if `fd` is registered already.
    pub fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("select engine cannot watch fd {fd}: not a valid fd"),
            ));
        }
        if !select_poll::fits_fd_set(fd) {
            return Err(super::Unwatchable::error(format!(
                "select engine cannot watch fd {fd}: select(2) is limited to fds below \
                 FD_SETSIZE ({FD_SETSIZE}); use --engine poll or epoll-lt/epoll-et"
            )));
        }
        let idx = fd as usize;
        if self.slots.len() <= idx {
            self.slots.resize(idx + 1, None);
        }
        if self.slots[idx].is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("select engine: fd {fd} is already registered"),
            ));
        }
        self.slots[idx] = Some((token, interest));
        self.apply_interest(fd, interest);
        self.max_fd = self.max_fd.max(fd);
        self.len += 1;
        Ok(())
    }

    /// Fails with `NotFound` if `fd` is not registered.
    pub fn reregister(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        let slot = self.slot_mut(fd)?;
        *slot = Some((token, interest));
        self.apply_interest(fd, interest);
        Ok(())
    }

    /// Fails with `NotFound` if `fd` is not registered.
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        let slot = self.slot_mut(fd)?;
        *slot = None;
        self.read_master.remove(fd);
        self.write_master.remove(fd);
        self.len -= 1;
        if fd == self.max_fd {
            // nfds must shrink with the highest fd, or every later wait keeps paying for it.
            self.max_fd = self.slots[..fd as usize]
                .iter()
                .rposition(Option::is_some)
                .map_or(-1, |i| i as RawFd);
        }
        Ok(())
    }

    /// Clears `events`, waits up to `timeout` (`None` = forever, `Some(ZERO)` = don't block),
    /// appends one event per ready fd and returns how many. `EINTR` returns `Ok(0)`.
    pub fn wait(
        &mut self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        events.clear();
        // select overwrites its sets with the answer, so the question is rebuilt every time.
        self.read_ready = self.read_master;
        self.write_ready = self.write_master;
        let nfds = (self.max_fd + 1) as usize;
        match select_poll::select(
            nfds,
            Some(&mut self.read_ready),
            Some(&mut self.write_ready),
            timeout,
        ) {
            Ok(0) => return Ok(0),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        // The answer is a bitmap, so finding the ready fds means testing every bit up to
        // nfds, however few are set.
        for fd in 0..nfds as RawFd {
            let readable = self.read_ready.contains(fd);
            let writable = self.write_ready.contains(fd);
            if !(readable || writable) {
                continue;
            }
            // A bit can only be set for an fd we put in a master set, i.e. a registered one.
            if let Some((token, _)) = self.slots[fd as usize] {
                events.push(Event {
                    token,
                    readable,
                    writable,
                    error: false,
                    hup: false,
                    urgent: false,
                });
            }
        }
        Ok(events.len())
    }

    /// How many fds are registered.
    pub fn len(&self) -> usize {
        self.len
    }

    fn apply_interest(&mut self, fd: RawFd, interest: Interest) {
        if interest.is_readable() {
            self.read_master.insert(fd);
        } else {
            self.read_master.remove(fd);
        }
        if interest.is_writable() {
            self.write_master.insert(fd);
        } else {
            self.write_master.remove(fd);
        }
    }

    /// The slot of a registered `fd`, or `NotFound`.
    fn slot_mut(&mut self, fd: RawFd) -> io::Result<&mut Option<(Token, Interest)>> {
        usize::try_from(fd)
            .ok()
            .and_then(|idx| self.slots.get_mut(idx))
            .filter(|slot| slot.is_some())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("select engine: fd {fd} is not registered"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    const LONG: Option<Duration> = Some(Duration::from_secs(2));

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn ev(token: u64, readable: bool, writable: bool) -> Event {
        Event {
            token: Token(token),
            readable,
            writable,
            error: false,
            hup: false,
            urgent: false,
        }
    }

    #[test]
    fn readable_after_write() {
        let (a, mut b) = pair();
        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(a.as_raw_fd(), Token(7), Interest::READABLE)
            .unwrap();
        assert_eq!(p.wait(&mut events, Some(Duration::ZERO)).unwrap(), 0);
        assert!(events.is_empty());

        b.write_all(b"hello").unwrap();
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);
        assert_eq!(events, [ev(7, true, false)]);

        // Level-triggered: still reported while the data sits there.
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);
        assert_eq!(events, [ev(7, true, false)]);
    }

    #[test]
    fn writable_immediately() {
        let (a, _b) = pair();
        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(a.as_raw_fd(), Token(3), Interest::WRITABLE)
            .unwrap();
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);
        assert_eq!(events, [ev(3, false, true)]);
    }

    #[test]
    fn timeout_returns_no_events() {
        let (a, _b) = pair();
        let mut p = SelectPoller::new().unwrap();
        let mut events = vec![ev(99, true, true)]; // must be cleared
        p.register(a.as_raw_fd(), Token(1), Interest::READABLE)
            .unwrap();
        let start = Instant::now();
        assert_eq!(
            p.wait(&mut events, Some(Duration::from_millis(10)))
                .unwrap(),
            0
        );
        let took = start.elapsed();
        assert!(events.is_empty());
        assert!(
            took >= Duration::from_millis(10),
            "returned early: {took:?}"
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    #[test]
    fn timeout_with_nothing_registered_sleeps() {
        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        let start = Instant::now();
        assert_eq!(
            p.wait(&mut events, Some(Duration::from_millis(10)))
                .unwrap(),
            0
        );
        assert!(start.elapsed() >= Duration::from_millis(10));
    }

    #[test]
    fn reregister_changes_what_is_reported() {
        let (a, mut b) = pair();
        let fd = a.as_raw_fd();
        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        b.write_all(b"x").unwrap(); // a is now readable and (as always) writable

        p.register(fd, Token(1), Interest::READABLE).unwrap();
        p.wait(&mut events, LONG).unwrap();
        assert_eq!(events, [ev(1, true, false)]);

        p.reregister(fd, Token(2), Interest::WRITABLE).unwrap();
        p.wait(&mut events, LONG).unwrap();
        assert_eq!(events, [ev(2, false, true)]);

        p.reregister(fd, Token(3), Interest::BOTH).unwrap();
        p.wait(&mut events, LONG).unwrap();
        assert_eq!(events, [ev(3, true, true)]);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn deregister_stops_reports() {
        let (a, mut b) = pair();
        let fd = a.as_raw_fd();
        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(fd, Token(1), Interest::BOTH).unwrap();
        b.write_all(b"x").unwrap();
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);

        p.deregister(fd).unwrap();
        assert_eq!(p.len(), 0);
        assert_eq!(p.wait(&mut events, Some(Duration::ZERO)).unwrap(), 0);
        assert!(events.is_empty());

        assert_eq!(
            p.deregister(fd).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let err = p.reregister(fd, Token(1), Interest::READABLE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        // And it can come back.
        p.register(fd, Token(4), Interest::READABLE).unwrap();
        p.wait(&mut events, LONG).unwrap();
        assert_eq!(events, [ev(4, true, false)]);
    }

    #[test]
    fn unknown_fds_are_not_found() {
        let mut p = SelectPoller::new().unwrap();
        for fd in [-1, 5, 1023, 1024, 5000] {
            assert_eq!(
                p.deregister(fd).unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
            let err = p.reregister(fd, Token(0), Interest::READABLE).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
    }

    #[test]
    fn interest_none_reports_nothing() {
        let (a, mut b) = pair();
        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(a.as_raw_fd(), Token(1), Interest::NONE).unwrap();
        b.write_all(b"x").unwrap();
        assert_eq!(
            p.wait(&mut events, Some(Duration::from_millis(10)))
                .unwrap(),
            0
        );
        assert!(events.is_empty());
        assert_eq!(p.len(), 1);
        // Still registered: NONE is a state, not a removal.
        assert_eq!(
            p.register(a.as_raw_fd(), Token(1), Interest::READABLE)
                .unwrap_err()
                .kind(),
            io::ErrorKind::AlreadyExists
        );
        p.reregister(a.as_raw_fd(), Token(1), Interest::READABLE)
            .unwrap();
        p.wait(&mut events, LONG).unwrap();
        assert_eq!(events, [ev(1, true, false)]);
    }

    #[test]
    fn peer_close_is_readable() {
        let (mut a, b) = pair();
        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(a.as_raw_fd(), Token(5), Interest::READABLE)
            .unwrap();
        drop(b);
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);
        assert_eq!(events, [ev(5, true, false)]);
        // ...and reading is how the owner learns it was a hangup.
        assert_eq!(a.read(&mut [0u8; 8]).unwrap(), 0);
    }

    #[test]
    fn many_fds_report_exactly_the_ready_ones() {
        let pairs: Vec<_> = (0..200).map(|_| pair()).collect();
        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        for (i, (a, _)) in pairs.iter().enumerate() {
            p.register(a.as_raw_fd(), Token(1000 + i as u64), Interest::READABLE)
                .unwrap();
        }
        assert_eq!(p.len(), 200);
        let mut expected = BTreeSet::new();
        for (i, (_, b)) in pairs.iter().enumerate() {
            if i % 7 == 3 || i == 199 {
                (&*b).write_all(b"x").unwrap();
                expected.insert(Token(1000 + i as u64));
            }
        }
        let n = p.wait(&mut events, LONG).unwrap();
        assert_eq!(n, expected.len());
        assert!(events.iter().all(|e| e.readable && !e.writable && !e.error));
        let got: BTreeSet<_> = events.iter().map(|e| e.token).collect();
        assert_eq!(got, expected);

        // Deregistering the highest fd must not lose the others.
        let (last, _) = &pairs[199];
        p.deregister(last.as_raw_fd()).unwrap();
        expected.remove(&Token(1199));
        p.wait(&mut events, LONG).unwrap();
        let got: BTreeSet<_> = events.iter().map(|e| e.token).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn same_fd_twice_is_already_exists() {
        let (a, _b) = pair();
        let mut p = SelectPoller::new().unwrap();
        p.register(a.as_raw_fd(), Token(1), Interest::READABLE)
            .unwrap();
        let err = p
            .register(a.as_raw_fd(), Token(2), Interest::WRITABLE)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn negative_fd_is_invalid_input() {
        let mut p = SelectPoller::new().unwrap();
        let err = p.register(-1, Token(1), Interest::READABLE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(p.len(), 0);
    }

    /// Raises the soft `RLIMIT_NOFILE` so that fd `fd` can exist; false if the hard limit
    /// does not allow it.
    fn allow_fd(fd: RawFd) -> bool {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let needed = fd as u64 + 1;
        let mut lim = getrlimit(Resource::Nofile);
        if lim.current.is_none_or(|cur| cur >= needed) {
            return true;
        }
        if lim.maximum.is_some_and(|max| max < needed) {
            return false;
        }
        lim.current = Some(
            lim.maximum
                .map_or(needed.max(4096), |max| max.min(needed.max(4096))),
        );
        setrlimit(Resource::Nofile, lim).is_ok()
    }

    #[test]
    fn refuses_fd_at_or_above_fd_setsize() {
        if !allow_fd(1500) {
            println!("skipped: RLIMIT_NOFILE hard limit is below 1501, cannot create fd 1500");
            return;
        }
        let (a, mut b) = pair();
        let high = rustix::io::fcntl_dupfd_cloexec(&a, 1500).unwrap();
        let high_fd = high.as_raw_fd();
        assert!(high_fd >= 1500);

        let mut p = SelectPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(a.as_raw_fd(), Token(1), Interest::READABLE)
            .unwrap();

        let err = p
            .register(high_fd, Token(2), Interest::READABLE)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // Told apart from a socket's own errors (a proxy does not blame its backend for it).
        assert!(super::super::Unwatchable::is(&err));
        assert!(!super::super::Unwatchable::is(
            &io::Error::from_raw_os_error(libc::EINVAL)
        ));
        let msg = err.to_string();
        assert!(msg.contains(&format!("fd {high_fd}")), "{msg}");
        assert!(msg.contains("FD_SETSIZE (1024)"), "{msg}");
        assert!(msg.contains("--engine poll"), "{msg}");
        // Refused cleanly: nothing half-registered, and fd 1024 (the first one past the end)
        // is refused too.
        assert_eq!(
            p.register(1024, Token(3), Interest::WRITABLE)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(p.len(), 1);
        assert_eq!(
            p.deregister(high_fd).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );

        // The low registration still works, and nothing else appears.
        b.write_all(b"x").unwrap();
        p.wait(&mut events, LONG).unwrap();
        assert_eq!(events, [ev(1, true, false)]);
    }
}

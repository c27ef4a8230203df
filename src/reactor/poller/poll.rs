//! The `poll(2)` engine: select without the 1024 cap, but with the same per-wait shape.
//!
//! # What a wait costs, and why
//!
//! poll replaces select's fixed bitmaps with an array of `pollfd { fd, events, revents }`,
//! one entry per registered fd. That removes the `FD_SETSIZE` limit and the dependence on
//! the highest fd number (the cost is O(registered), not O(maxfd)), and since question
//! (`events`) and answer (`revents`) live in separate fields, the array survives the call and
//! is kept here between waits rather than rebuilt.
//!
//! But the kernel still keeps nothing between calls. Every wait copies the whole array into
//! the kernel, which asks every fd for its readiness, and copies the whole array back; then
//! we scan every entry for a non-zero `revents`. So a wait is O(n) in registered fds even
//! when one is ready — with 10,000 mostly idle connections each wait moves and scans 10,000
//! entries to find a handful. epoll removes exactly this: its interest list stays in the
//! kernel and `epoll_wait` returns only the ready fds.
//!
//! # Semantics
//!
//! Level-triggered only. Readable interest asks for `POLLIN` only: asking for `POLLPRI`
//! would make TCP urgent data (which ordinary reads never consume) report readable forever.
//! `POLLERR`, `POLLHUP` and `POLLNVAL` are always reported by the kernel, whatever was asked,
//! including under [`Interest::NONE`]; they set `Event::error`, and `POLLHUP` also sets
//! `readable` so the owner reads and sees the 0. `POLLNVAL` means a registered fd was closed
//! without being deregistered — a bug in the owner, reported rather than hidden.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::reactor::event::{Event, Interest, Token};
use crate::sys::select_poll::{self, pollfd, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI};

/// `index` value for an fd that is not registered.
const UNREGISTERED: u32 = u32::MAX;

/// Readiness through `poll(2)`; see the module docs for its cost model.
#[derive(Debug)]
pub struct PollPoller {
    /// Handed to the kernel as is on every wait, so it is dense: no holes to skip.
    fds: Vec<pollfd>,
    /// `tokens[i]` belongs to `fds[i]`; kept apart so `fds` stays the exact kernel layout.
    tokens: Vec<Token>,
    /// `index[fd]` is the position of `fd` in `fds`, or `UNREGISTERED`. It makes
    /// (re/de)registration O(1); without it each would be a linear search.
    index: Vec<u32>,
}

// No `is_empty`: the engines are only used through `Poller`, which has one.
#[allow(clippy::len_without_is_empty)]
impl PollPoller {
    pub fn new() -> io::Result<PollPoller> {
        Ok(PollPoller {
            fds: Vec::new(),
            tokens: Vec::new(),
            index: Vec::new(),
        })
    }

    /// Fails with `InvalidInput` for a negative fd, `AlreadyExists` if `fd` is registered
    /// already.
    pub fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        // A negative fd in a pollfd is silently ignored by the kernel: refuse it here rather
        // than register something that can never fire.
        let Ok(idx) = usize::try_from(fd) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("poll engine cannot watch fd {fd}: not a valid fd"),
            ));
        };
        if self.index.len() <= idx {
            self.index.resize(idx + 1, UNREGISTERED);
        }
        if self.index[idx] != UNREGISTERED {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("poll engine: fd {fd} is already registered"),
            ));
        }
        self.index[idx] = self.fds.len() as u32;
        self.fds.push(pollfd {
            fd,
            events: poll_events(interest),
            revents: 0,
        });
        self.tokens.push(token);
        Ok(())
    }

    /// Fails with `NotFound` if `fd` is not registered.
    pub fn reregister(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        let pos = self.position(fd)?;
        self.fds[pos].events = poll_events(interest);
        self.tokens[pos] = token;
        Ok(())
    }

    /// Fails with `NotFound` if `fd` is not registered.
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        let pos = self.position(fd)?;
        // swap_remove keeps the array dense in O(1); the entry moved into `pos` (if any)
        // must have its index fixed.
        self.fds.swap_remove(pos);
        self.tokens.swap_remove(pos);
        self.index[fd as usize] = UNREGISTERED;
        if let Some(moved) = self.fds.get(pos) {
            self.index[moved.fd as usize] = pos as u32;
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
        match select_poll::poll(&mut self.fds, timeout) {
            Ok(0) => return Ok(0),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        // The kernel marks ready entries in place, wherever they are: finding them means
        // looking at every entry.
        for (pfd, &token) in self.fds.iter().zip(&self.tokens) {
            let r = pfd.revents;
            if r == 0 {
                continue;
            }
            events.push(Event {
                token,
                readable: r & (POLLIN | POLLPRI | POLLHUP) != 0,
                writable: r & POLLOUT != 0,
                error: r & (POLLERR | POLLHUP | POLLNVAL) != 0,
                hup: r & POLLHUP != 0,
                urgent: false,
            });
        }
        Ok(events.len())
    }

    /// How many fds are registered.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Where a registered `fd` sits in `fds`, or `NotFound`.
    fn position(&self, fd: RawFd) -> io::Result<usize> {
        usize::try_from(fd)
            .ok()
            .and_then(|idx| self.index.get(idx).copied())
            .filter(|&pos| pos != UNREGISTERED)
            .map(|pos| pos as usize)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("poll engine: fd {fd} is not registered"),
                )
            })
    }
}

/// The `events` to ask for. Not `POLLPRI`: see the module docs.
fn poll_events(interest: Interest) -> i16 {
    let mut events = 0;
    if interest.is_readable() {
        events |= POLLIN;
    }
    if interest.is_writable() {
        events |= POLLOUT;
    }
    events
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

    /// Checks the internal invariants: `index` and `fds` agree both ways.
    fn check_index(p: &PollPoller) {
        assert_eq!(p.fds.len(), p.tokens.len());
        for (pos, pfd) in p.fds.iter().enumerate() {
            assert_eq!(p.index[pfd.fd as usize], pos as u32);
        }
        let live = p.index.iter().filter(|&&i| i != UNREGISTERED).count();
        assert_eq!(live, p.fds.len());
    }

    #[test]
    fn readable_after_write() {
        let (a, mut b) = pair();
        let mut p = PollPoller::new().unwrap();
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
        let mut p = PollPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(a.as_raw_fd(), Token(3), Interest::WRITABLE)
            .unwrap();
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);
        assert_eq!(events, [ev(3, false, true)]);
    }

    #[test]
    fn timeout_returns_no_events() {
        let (a, _b) = pair();
        let mut p = PollPoller::new().unwrap();
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
        let mut p = PollPoller::new().unwrap();
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
        let mut p = PollPoller::new().unwrap();
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
        let mut p = PollPoller::new().unwrap();
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
        let mut p = PollPoller::new().unwrap();
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
        let mut p = PollPoller::new().unwrap();
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
    fn peer_close_is_readable_and_error() {
        let (mut a, b) = pair();
        let mut p = PollPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(a.as_raw_fd(), Token(5), Interest::READABLE)
            .unwrap();
        drop(b);
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].token, Token(5));
        assert!(events[0].readable, "{events:?}");
        assert!(events[0].error, "POLLHUP expected: {events:?}");
        assert_eq!(a.read(&mut [0u8; 8]).unwrap(), 0);
    }

    #[test]
    fn hangup_is_reported_even_under_interest_none() {
        let (a, b) = pair();
        let mut p = PollPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(a.as_raw_fd(), Token(6), Interest::NONE).unwrap();
        drop(b);
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);
        assert_eq!(events[0].token, Token(6));
        assert!(events[0].error);
    }

    #[test]
    fn many_fds_report_exactly_the_ready_ones() {
        let pairs: Vec<_> = (0..200).map(|_| pair()).collect();
        let mut p = PollPoller::new().unwrap();
        let mut events = Vec::new();
        for (i, (a, _)) in pairs.iter().enumerate() {
            p.register(a.as_raw_fd(), Token(1000 + i as u64), Interest::READABLE)
                .unwrap();
        }
        assert_eq!(p.len(), 200);
        let mut expected = BTreeSet::new();
        for (i, (_, b)) in pairs.iter().enumerate() {
            if i % 7 == 3 || i == 0 || i == 199 {
                (&*b).write_all(b"x").unwrap();
                expected.insert(Token(1000 + i as u64));
            }
        }
        let n = p.wait(&mut events, LONG).unwrap();
        assert_eq!(n, expected.len());
        assert!(events.iter().all(|e| e.readable && !e.writable && !e.error));
        let got: BTreeSet<_> = events.iter().map(|e| e.token).collect();
        assert_eq!(got, expected);

        // Deregister a scattering of fds (first, middle, last, ready and idle): swap_remove
        // moves entries around, and every survivor must keep its own token.
        for i in [0, 3, 100, 199, 198, 50] {
            p.deregister(pairs[i].0.as_raw_fd()).unwrap();
            expected.remove(&Token(1000 + i as u64));
            check_index(&p);
        }
        assert_eq!(p.len(), 194);
        p.wait(&mut events, LONG).unwrap();
        let got: BTreeSet<_> = events.iter().map(|e| e.token).collect();
        assert_eq!(got, expected);
        // Reregistering a moved entry touches that entry only.
        p.reregister(pairs[11].0.as_raw_fd(), Token(1), Interest::WRITABLE)
            .unwrap();
        p.wait(&mut events, LONG).unwrap();
        assert!(events.contains(&ev(1, false, true)));
        assert_eq!(events.len(), expected.len() + 1);
    }

    #[test]
    fn same_fd_twice_is_already_exists() {
        let (a, _b) = pair();
        let mut p = PollPoller::new().unwrap();
        p.register(a.as_raw_fd(), Token(1), Interest::READABLE)
            .unwrap();
        let err = p
            .register(a.as_raw_fd(), Token(2), Interest::WRITABLE)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(p.len(), 1);
        check_index(&p);
    }

    #[test]
    fn negative_fd_is_invalid_input() {
        let mut p = PollPoller::new().unwrap();
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
    fn watches_fds_beyond_fd_setsize() {
        if !allow_fd(1500) {
            println!("skipped: RLIMIT_NOFILE hard limit is below 1501, cannot create fd 1500");
            return;
        }
        let (a, mut b) = pair();
        let high = rustix::io::fcntl_dupfd_cloexec(&a, 1500).unwrap();
        assert!(high.as_raw_fd() >= 1500);
        let mut p = PollPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(high.as_raw_fd(), Token(15), Interest::READABLE)
            .unwrap();
        b.write_all(b"x").unwrap();
        p.wait(&mut events, LONG).unwrap();
        assert_eq!(events, [ev(15, true, false)]);
    }

    #[test]
    fn closed_without_deregister_is_an_error_event() {
        // A high fd number, so no other test's new fd reuses it in the window after close.
        if !allow_fd(3000) {
            println!("skipped: RLIMIT_NOFILE hard limit is below 3001");
            return;
        }
        let (a, _b) = pair();
        let high = rustix::io::fcntl_dupfd_cloexec(&a, 3000).unwrap();
        let fd = high.as_raw_fd();
        let mut p = PollPoller::new().unwrap();
        let mut events = Vec::new();
        p.register(fd, Token(9), Interest::READABLE).unwrap();
        drop(high);
        assert_eq!(p.wait(&mut events, LONG).unwrap(), 1);
        assert_eq!(events[0].token, Token(9));
        assert!(events[0].error, "POLLNVAL expected: {events:?}");
        p.deregister(fd).unwrap();
    }
}

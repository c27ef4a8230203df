//! Raw `select(2)` and `poll(2)`, made safe to call from the engines in `reactor::poller`.
//!
//! The wrappers are thin on purpose: each call here is one system call, so the engines show
//! the real cost of these interfaces. What they add is only what soundness needs:
//!
//! - [`FdSet`] refuses fds outside `0..FD_SETSIZE`. An `fd_set` is a fixed 1024-bit bitmap;
//!   setting bit 1500 would write past the end of it, so that has to be impossible from safe
//!   code, not merely unlikely.
//! - [`select`] refuses an `nfds` above `FD_SETSIZE`, because the kernel would read and write
//!   `nfds` bits of each set, past the end of our buffers.
//! - Timeouts are rounded *up* to the call's resolution, so a short non-zero timeout never
//!   turns into a non-blocking call and a busy loop.
//!
//! `EINTR` is returned as [`io::ErrorKind::Interrupted`]; what to do about it is the caller's
//! policy, not this layer's.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

pub use libc::{pollfd, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI};

/// How many fds an `fd_set` can describe: it is a bitmap of this many bits, so select(2) can
/// only ever watch fds `0..FD_SETSIZE`.
pub const FD_SETSIZE: usize = libc::FD_SETSIZE;

/// Whether `fd` has a bit in an `fd_set`.
pub fn fits_fd_set(fd: RawFd) -> bool {
    fd >= 0 && (fd as usize) < FD_SETSIZE
}

/// An `fd_set` that cannot be indexed out of bounds.
///
/// `Copy` is deliberate: select(2) overwrites its sets with the result, so callers keep a
/// master copy and copy it into a scratch set before every call.
#[derive(Clone, Copy)]
pub struct FdSet(libc::fd_set);

impl FdSet {
    /// An empty set.
    pub fn new() -> FdSet {
        // SAFETY: `fd_set` is a plain array of integers, for which all-zero bytes is a valid
        // value (and the empty set).
        let mut raw: libc::fd_set = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is a valid, initialised, exclusively borrowed `fd_set`. FD_ZERO is
        // redundant after zeroing but is the documented way to initialise one.
        unsafe { libc::FD_ZERO(&raw mut raw) };
        FdSet(raw)
    }

    /// Adds `fd`.
    ///
    /// # Panics
    ///
    /// If `fd` is negative or `>= FD_SETSIZE`. Callers are expected to have refused such an
    /// fd already with a helpful error; this is the memory-safety backstop.
    pub fn insert(&mut self, fd: RawFd) {
        assert!(
            fits_fd_set(fd),
            "fd {fd} does not fit in an fd_set (valid fds are 0..{FD_SETSIZE})"
        );
        // SAFETY: `fd` is in 0..FD_SETSIZE (checked above), so the bit lies inside the
        // bitmap, and `self.0` is a valid, exclusively borrowed `fd_set`.
        unsafe { libc::FD_SET(fd, &raw mut self.0) };
    }

    /// Removes `fd`; an fd that cannot be in the set is simply not there.
    pub fn remove(&mut self, fd: RawFd) {
        if fits_fd_set(fd) {
            // SAFETY: `fd` is in 0..FD_SETSIZE (checked above), so the bit lies inside the
            // bitmap, and `self.0` is a valid, exclusively borrowed `fd_set`.
            unsafe { libc::FD_CLR(fd, &raw mut self.0) };
        }
    }

    /// Whether `fd` is in the set; false for fds that cannot be in one.
    pub fn contains(&self, fd: RawFd) -> bool {
        // SAFETY: `fd` is in 0..FD_SETSIZE (checked first, `&&` short-circuits), so the bit
        // lies inside the bitmap, and `self.0` is a valid `fd_set` that is only read.
        fits_fd_set(fd) && unsafe { libc::FD_ISSET(fd, &raw const self.0) }
    }
}

impl Default for FdSet {
    fn default() -> FdSet {
        FdSet::new()
    }
}

impl fmt::Debug for FdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = (0..FD_SETSIZE as RawFd).filter(|&fd| self.contains(fd));
        f.debug_set().entries(members).finish()
    }
}

/// `select(nfds, readfds, writefds, NULL, timeout)`: waits until an fd below `nfds` in
/// `readfds` is readable or one in `writefds` is writable, and leaves in each set only the
/// fds that are. Returns the number of bits left set across both sets (an fd in both counts
/// twice). `None` as timeout waits forever.
///
/// `exceptfds` is not offered: on sockets it only reports TCP urgent data, which nothing in
/// keel uses.
///
/// Fails with `InvalidInput` if `nfds > FD_SETSIZE`.
pub fn select(
    nfds: usize,
    readfds: Option<&mut FdSet>,
    writefds: Option<&mut FdSet>,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    if nfds > FD_SETSIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("select: nfds {nfds} exceeds FD_SETSIZE ({FD_SETSIZE})"),
        ));
    }
    let read_ptr = readfds.map_or(std::ptr::null_mut(), |s| &raw mut s.0);
    let write_ptr = writefds.map_or(std::ptr::null_mut(), |s| &raw mut s.0);
    // Linux writes the time left back into the timeval; it is a temporary, so that is unseen.
    let mut tv = timeout.map(duration_to_timeval);
    let tv_ptr = tv.as_mut().map_or(std::ptr::null_mut(), std::ptr::from_mut);
    // SAFETY: `nfds <= FD_SETSIZE` (checked above), so the kernel touches only bits inside
    // each `fd_set`. Every pointer is null or derived from a live exclusive borrow (the sets
    // and the local `tv`) that outlives the call; the kernel writes only within them.
    let n = unsafe {
        libc::select(
            nfds as libc::c_int,
            read_ptr,
            write_ptr,
            std::ptr::null_mut(),
            tv_ptr,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `poll(fds, fds.len(), timeout)`: waits until one of `fds` has one of its requested
/// `events` (or `POLLERR`/`POLLHUP`/`POLLNVAL`, which are always reported), and fills in
/// every entry's `revents`. Returns how many entries have a non-zero `revents`. A negative
/// `fd` is ignored by the kernel. `None` as timeout waits forever.
pub fn poll(fds: &mut [pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    // SAFETY: the pointer and length describe exactly the live, exclusively borrowed slice;
    // the kernel reads and writes only those `fds.len()` entries.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            duration_to_poll_ms(timeout),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// select's timeout, in microseconds, rounded up: a 300ns timeout must still block a little,
/// not become a zero timeout (poll-and-return) and so a busy loop.
fn duration_to_timeval(d: Duration) -> libc::timeval {
    let micros = d.as_nanos().div_ceil(1_000);
    let secs = micros / 1_000_000;
    libc::timeval {
        tv_sec: secs.min(libc::time_t::MAX as u128) as libc::time_t,
        tv_usec: (micros % 1_000_000) as libc::suseconds_t,
    }
}

/// poll's timeout argument: -1 for "forever", else milliseconds rounded up (for the same
/// reason as [`duration_to_timeval`]) and clamped to `c_int::MAX` (about 24.8 days; a wait
/// that long returning early is indistinguishable from a spurious wake-up).
fn duration_to_poll_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) => d
            .as_nanos()
            .div_ceil(1_000_000)
            .min(libc::c_int::MAX as u128) as libc::c_int,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fd_set_insert_contains_remove() {
        let mut set = FdSet::new();
        assert!(!set.contains(0));
        set.insert(0);
        set.insert(63);
        set.insert(64);
        set.insert(1023);
        assert!(set.contains(0) && set.contains(63) && set.contains(64) && set.contains(1023));
        assert!(!set.contains(1) && !set.contains(65));
        assert_eq!(format!("{set:?}"), "{0, 63, 64, 1023}");
        set.remove(63);
        assert!(!set.contains(63));
    }

    #[test]
    fn fd_set_out_of_range_is_never_a_member() {
        let mut set = FdSet::new();
        assert!(!set.contains(1024));
        assert!(!set.contains(1500));
        assert!(!set.contains(-1));
        set.remove(1500); // no-op, not a write past the end
        set.remove(-1);
        assert!(!fits_fd_set(1024) && !fits_fd_set(-1) && fits_fd_set(1023));
    }

    #[test]
    #[should_panic(expected = "does not fit in an fd_set")]
    fn fd_set_insert_high_fd_panics() {
        FdSet::new().insert(1500);
    }

    #[test]
    #[should_panic(expected = "does not fit in an fd_set")]
    fn fd_set_insert_negative_fd_panics() {
        FdSet::new().insert(-1);
    }

    #[test]
    fn select_refuses_nfds_beyond_fd_setsize() {
        let mut r = FdSet::new();
        let err = select(FD_SETSIZE + 1, Some(&mut r), None, Some(Duration::ZERO)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn select_and_poll_see_a_readable_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        b.write_all(b"x").unwrap();

        let mut r = FdSet::new();
        r.insert(fd);
        let n = select(
            fd as usize + 1,
            Some(&mut r),
            None,
            Some(Duration::from_secs(1)),
        )
        .unwrap();
        assert_eq!(n, 1);
        assert!(r.contains(fd));

        let mut fds = [pollfd {
            fd,
            events: POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut fds, Some(Duration::from_secs(1))).unwrap(), 1);
        assert_ne!(fds[0].revents & POLLIN, 0);

        // The largest timeouts are clamped, not rejected by the kernel as invalid.
        let mut r = FdSet::new();
        r.insert(fd);
        assert_eq!(
            select(fd as usize + 1, Some(&mut r), None, Some(Duration::MAX)).unwrap(),
            1
        );
        fds[0].revents = 0;
        assert_eq!(poll(&mut fds, Some(Duration::MAX)).unwrap(), 1);
    }

    #[test]
    fn timeouts_round_up() {
        assert_eq!(duration_to_poll_ms(None), -1);
        assert_eq!(duration_to_poll_ms(Some(Duration::ZERO)), 0);
        assert_eq!(duration_to_poll_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(duration_to_poll_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(duration_to_poll_ms(Some(Duration::from_millis(10))), 10);
        assert_eq!(duration_to_poll_ms(Some(Duration::MAX)), libc::c_int::MAX);

        let tv = duration_to_timeval(Duration::ZERO);
        assert_eq!((tv.tv_sec, tv.tv_usec), (0, 0));
        let tv = duration_to_timeval(Duration::from_nanos(1));
        assert_eq!((tv.tv_sec, tv.tv_usec), (0, 1));
        let tv = duration_to_timeval(Duration::new(3, 999_999_001));
        assert_eq!((tv.tv_sec, tv.tv_usec), (4, 0));
        let tv = duration_to_timeval(Duration::MAX);
        assert!(tv.tv_sec > 0 && tv.tv_usec >= 0 && tv.tv_usec < 1_000_000);
    }
}

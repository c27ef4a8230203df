//! Writing to stderr without hanging on a reader that stopped reading.
//!
//! stderr is whatever the process was given: a terminal, journald's socket, a pipe to a
//! supervisor or a test. When its reader stops (a stuck `| logger`, a supervisor wedged on
//! something else), the pipe fills and a plain `write(2)` blocks: a loop thread logging a
//! warning would freeze with every connection it serves, and a stop would hang on its
//! "stopping" line before the watchdog that bounds it is even armed. So every write here
//! first waits a bounded time for room (`poll` for POLLOUT) and, finding none, drops the
//! line and counts it (`keel_log_dropped_lines_total`). Once a line was dropped, the next
//! ones do not wait at all until a write goes through again, so a stuck reader costs the
//! threads nothing more than a `poll` per line.
//!
//! fd 2 stays a blocking descriptor: it is shared with the parent (a terminal's file
//! description), and O_NONBLOCK on it would change the shell's too. So the threads of the
//! process write one at a time, at most a page (PIPE_BUF) per write, which a pipe that
//! reported room takes at once; a socket (journald's) is written with MSG_DONTWAIT. Left:
//! the processes of prefork and process-per-connection share the pipe, and two of them told
//! there was room for one page may still race, the second then blocking until the reader
//! reads again.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tracing_subscriber::fmt::MakeWriter;

/// How long a log line waits for room before it is dropped.
const LINE_WAIT: Duration = Duration::from_millis(50);

/// How long a line the operator or a script waits for (a stats line, at exit or on SIGUSR2)
/// waits for room.
const REPORT_WAIT: Duration = Duration::from_secs(1);

/// A line was dropped and no write has gone through since: do not wait for the next.
static STALLED: AtomicBool = AtomicBool::new(false);

/// Writes `line` and a newline to stderr, waiting up to a second for room: for the lines a
/// script reads (the `stats` line at exit and on SIGUSR2).
pub fn say(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    write_bounded(text.as_bytes(), REPORT_WAIT);
}

/// Writes all of `bytes` to fd 2 unless it stays full for `wait` (or for no time at all once
/// stalled); what is left then is dropped and counted as one line.
fn write_bounded(bytes: &[u8], wait: Duration) {
    let stderr = io::stderr();
    write_bounded_to(stderr.as_fd(), bytes, wait, &STALLED);
}

fn write_bounded_to(fd: BorrowedFd<'_>, mut bytes: &[u8], wait: Duration, stalled: &AtomicBool) {
    // One writer at a time in this process, a page at most per write: with POLLOUT a pipe has
    // a free page, and a write of at most a page then fits at once; two threads each told
    // there was room could otherwise both write, and the second block in write(2).
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A socket (journald's) is written with MSG_DONTWAIT: never blocks, whoever else writes.
    let socket = rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket
    });
    let deadline = Instant::now() + wait;
    while !bytes.is_empty() {
        let left = if stalled.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let timeout = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as i64,
        };
        let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => {
                stalled.store(true, Ordering::Relaxed);
                crate::ops::log::count_dropped_lines(1);
                return;
            }
            Ok(_) if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                return; // no reader at all: nothing to wait for, nothing worth counting
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let chunk = &bytes[..bytes.len().min(PAGE)];
        let written = if socket {
            rustix::net::send(
                fd,
                chunk,
                rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
            )
        } else {
            rustix::io::write(fd, chunk)
        };
        match written {
            Ok(n) => {
                stalled.store(false, Ordering::Relaxed);
                bytes = &bytes[n..];
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => return,
        }
    }
}

/// The most written at once (PIPE_BUF): what a pipe reported writable takes without blocking.
const PAGE: usize = 4096;

/// The tracing writer for `--log-target stderr`: each event is written with
/// [`write_bounded`], waiting at most [`LINE_WAIT`].
#[derive(Clone, Copy, Default)]
pub struct BoundedStderr;

impl Write for BoundedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_bounded(buf, LINE_WAIT);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        write_bounded(buf, LINE_WAIT);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BoundedStderr {
    type Writer = BoundedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        BoundedStderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe nobody reads: a line waits its bounded time once, then lines cost nothing; a
    /// line that goes through after the reader catches up clears the stall.
    #[test]
    fn a_full_pipe_costs_a_line_its_wait_once_then_nothing() {
        // A pipe of our own stands for fd 2 (and a flag of its own for the process's).
        let (r, w) = rustix::pipe::pipe().unwrap();
        let chunk = vec![b'x'; 4096];
        // Fill the pipe.
        rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::NONBLOCK).unwrap();
        while rustix::io::write(&w, &chunk).is_ok() {}
        rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::empty()).unwrap();
        let stalled = AtomicBool::new(false);
        let before = crate::ops::log::dropped_lines();
        let t = Instant::now();
        write_bounded_to(w.as_fd(), b"first\n", Duration::from_millis(100), &stalled);
        let first = t.elapsed();
        let t = Instant::now();
        for _ in 0..100 {
            write_bounded_to(w.as_fd(), b"more\n", Duration::from_millis(100), &stalled);
        }
        let more = t.elapsed();
        assert!(first >= Duration::from_millis(100), "waited {first:?}");
        assert!(more < Duration::from_millis(100), "100 lines took {more:?}");
        assert!(crate::ops::log::dropped_lines() >= before + 101);
        // The reader catches up: the next line goes through and the stall is over.
        let mut buf = vec![0u8; 1 << 20];
        let _ = rustix::io::read(&r, &mut buf);
        write_bounded_to(w.as_fd(), b"again\n", Duration::from_millis(100), &stalled);
        assert!(!stalled.load(Ordering::Relaxed));
    }
}

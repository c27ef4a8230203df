//! When a closing connection whose bytes are still on their way counts as stalled.
//!
//! The linger timer bounds a graceful close: the flush of what is queued, then the wait for
//! the peer's FIN after ours. It is meant to cut off a peer that stopped taking bytes, not one
//! that takes them slowly, and the loop alone cannot tell the two apart. Before our FIN, a
//! TCP socket is reported writable only once a third of its send buffer is free, and with the
//! buffer autotuned to megabytes a client reading 40 KB a second frees that much only every
//! few seconds; after our FIN there is nothing left to write at all, while the kernel may
//! still be delivering megabytes. So before the timer ends a connection it asks the kernel
//! how far the peer has acknowledged (`sys::tcp::send_state`) and compares that with what it
//! saw at the timer's start (a mark the timer carries): any progress buys a whole period more.
//! A peer that acknowledged nothing in a whole period, or that has everything of ours and
//! still sends no FIN, is cut off as before.

use std::os::fd::BorrowedFd;

use crate::sys::tcp::send_state;

/// What the linger timer does when it comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Wait a whole period more, comparing then with this mark: the peer took bytes since the
    /// last one, or there was none to compare with and bytes of ours are still outstanding.
    Wait(u32),
    /// End the connection.
    Stalled,
}

/// The peer's progress as a mark to compare with later: the low 32 bits of the bytes it has
/// acknowledged (a whole 4 GiB taken in one period would read as none: harmless). `None`
/// where the socket is not TCP.
pub(crate) fn mark(fd: BorrowedFd<'_>) -> Option<u32> {
    send_state(fd).ok().map(|s| s.bytes_acked as u32)
}

/// The verdict on `fd`, given the mark taken a period ago (`None`: none was taken).
pub(crate) fn verdict(fd: BorrowedFd<'_>, mark: Option<u32>) -> Verdict {
    let Ok(state) = send_state(fd) else {
        return Verdict::Stalled;
    };
    decide(state.bytes_acked as u32, state.outstanding, mark)
}

fn decide(acked: u32, outstanding: bool, mark: Option<u32>) -> Verdict {
    match mark {
        _ if !outstanding => Verdict::Stalled, // it has all we sent: only its FIN is missing
        Some(m) if m == acked => Verdict::Stalled,
        _ => Verdict::Wait(acked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_peer_that_took_nothing_or_has_everything_is_stalled() {
        assert_eq!(
            decide(100, true, Some(40)),
            Verdict::Wait(100),
            "took 60 bytes"
        );
        assert_eq!(decide(100, true, Some(100)), Verdict::Stalled, "took none");
        assert_eq!(
            decide(100, true, None),
            Verdict::Wait(100),
            "no mark yet: measure"
        );
        assert_eq!(
            decide(100, false, Some(40)),
            Verdict::Stalled,
            "has it all, no FIN"
        );
        assert_eq!(decide(100, false, None), Verdict::Stalled);
        assert_eq!(
            decide(3, true, Some(u32::MAX)),
            Verdict::Wait(3),
            "the count wraps"
        );
    }
}

//! TCP state the safe crates do not read: how far the peer has acknowledged what a socket sent
//! it (`getsockopt(TCP_INFO)`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// What the kernel still holds of a socket's output, and how much of it the peer has taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendState {
    /// Bytes the peer has acknowledged over the connection's life (`tcpi_bytes_acked`): it
    /// only grows, and grows only when the peer takes bytes (on a full window, only when
    /// its application reads).
    pub bytes_acked: u64,
    /// Bytes are queued in the kernel that the peer has not acknowledged yet (sent or not).
    pub outstanding: bool,
}

/// The kernel's send state of TCP socket `fd`. An error for a socket that is not TCP.
pub fn send_state(fd: BorrowedFd<'_>) -> io::Result<SendState> {
    // SAFETY: `tcp_info` is plain old data (integers only): all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is a live descriptor for the duration of the borrow; the kernel writes at
    // most `len` bytes into `info`, which is exactly that large, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SendState {
        bytes_acked: info.tcpi_bytes_acked,
        outstanding: info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn acknowledged_bytes_grow_as_the_peer_takes_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let before = send_state(server.as_fd()).unwrap();
        server.write_all(&[7u8; 10_000]).unwrap();
        let mut got = [0u8; 10_000];
        client.read_exact(&mut got).unwrap();
        // The ACK may trail the read by a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let after = loop {
            let s = send_state(server.as_fd()).unwrap();
            if !s.outstanding || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(after.bytes_acked - before.bytes_acked, 10_000);
        assert!(!after.outstanding);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(send_state(a.as_fd()).is_err(), "not TCP");
    }
}

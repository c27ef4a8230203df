//! Outgoing connections: a non-blocking connect, finished by the poller, bounded by a timer.
//!
//! `connect()` on a non-blocking socket returns EINPROGRESS; the socket becomes writable when
//! the handshake ends, successfully or not, and SO_ERROR says which. A timer in the loop's wheel
//! bounds the wait (the kernel's own SYN retries take minutes).

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};

use crate::net::connection::{CloseReason, ConnId, ConnState, ConnectError};
use crate::net::handler::Handler;
use crate::reactor::event_loop::{EventLoop, TimerEvent};
use crate::reactor::timer_wheel::TimerKey;

impl EventLoop {
    /// Starts connecting to `addr`; `handler.on_connect` runs once established, or
    /// `handler.on_close(ConnectFailed(..))` if it fails or takes longer than `timeout`.
    /// Errors returned here are immediate ones (no fd, unsupported address family).
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> io::Result<ConnId> {
        let sock = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        if self.cfg.tcp_nodelay {
            let _ = sock.set_tcp_nodelay(true);
        }
        let immediate = match sock.connect(&addr.into()) {
            Ok(()) => None,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => None,
            Err(e) => Some(e),
        };
        let fd = OwnedFd::from(sock);
        let id = self.insert_conn(fd, ConnState::Connecting, handler)?;
        self.stats.connects += 1;
        if let Some(e) = immediate {
            // Refused/unreachable right away (common on loopback): report it the same way.
            self.stats.connect_failures += 1;
            self.close_with(id, CloseReason::ConnectFailed(ConnectError::from_io(&e)));
            self.run_deferred();
            return Ok(id);
        }
        let deadline = self.deadline_after(timeout);
        let key = self.timers.insert(deadline, TimerEvent::Connect(id));
        if let Some(conn) = self.conn_mut(id) {
            conn.connect_timer = Some(key);
        }
        Ok(id)
    }

    pub(crate) fn connect_finished(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let result = SockRef::from(&conn.fd).take_error();
        let timer = conn.connect_timer.take();
        if let Some(key) = timer {
            self.timers.cancel(key);
        }
        let error = match result {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some(e),
        };
        if let Some(e) = error {
            self.stats.connect_failures += 1;
            self.close_with(id, CloseReason::ConnectFailed(ConnectError::from_io(&e)));
            return;
        }
        let conn = self.conn_mut(id).expect("checked above");
        // Open, or straight to the closing phase if a close was asked for meanwhile.
        conn.state = if conn.close_after_shutdown {
            ConnState::Linger
        } else {
            ConnState::Open
        };
        let pending = !conn.output.is_empty();
        let shutdown_requested = conn.shutdown_after_flush;
        self.update_interest(id);
        self.sync_recv(id);
        // Idleness counts from the handshake (the connect had its own timeout).
        if let Some(idle) = self.cfg.idle_timeout {
            self.set_idle_timeout(id, Some(idle));
        }
        if pending {
            // Bytes queued while connecting (a proxy forwarding early client data); a
            // shutdown requested meanwhile follows once they are flushed.
            self.conn_writable(id);
        } else if shutdown_requested {
            // Closed (or half-closed) before the handshake finished, with nothing to say:
            // send the FIN now; the handler never asked to be told about the connect.
            self.shutdown_now(id);
            return;
        }
        self.call_handler(id, |h, cx| h.on_connect(cx));
    }

    pub(crate) fn connect_timer_fired(&mut self, id: ConnId, key: TimerKey) {
        let Some(conn) = self.conn_mut(id).filter(|c| c.connect_timer == Some(key)) else {
            return;
        };
        conn.connect_timer = None;
        if conn.state == ConnState::Connecting {
            self.stats.connect_failures += 1;
            self.close_with(id, CloseReason::ConnectFailed(ConnectError::TimedOut));
        }
    }
}

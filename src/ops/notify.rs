//! systemd's readiness protocol (`Type=notify`): when NOTIFY_SOCKET is set, one datagram says
//! `READY=1` once the server listens and `STOPPING=1` when it starts to drain. No library: the
//! protocol is a single datagram on a unix socket.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        // An abstract socket name.
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let (Ok(addr), Ok(sock)) = (addr, UnixDatagram::unbound()) else {
        return;
    };
    let _ = sock.send_to_addr(state.as_bytes(), &addr);
}

/// The server is listening (after binding, privilege drop and daemonizing).
pub fn ready() {
    send(&format!("READY=1\nMAINPID={}\n", std::process::id()));
}

/// The server got SIGTERM/SIGINT and is draining.
pub fn stopping() {
    send("STOPPING=1\n");
}

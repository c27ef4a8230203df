//! Accepting: a bounded batch per listener event, the EMFILE dance, setting up a connection.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::SocketFlags;
use socket2::{SockRef, TcpKeepalive};

use super::conn::{Core, LfConn};
use super::counters::bump;
use super::settings::ms;
use super::shared::lock;
use super::timers::TimerEvent;
use super::worker::Worker;
use crate::net::listener::{
    close_refused, fd_table_exclusive, fd_table_shared, open_reserve_fd, refusal, say_out_of_fds,
};

/// How long a listener that could not accept (no fd even for the EMFILE dance) stays parked
/// if no connection closes first.
const STARVED_RETRY: Duration = Duration::from_millis(100);

enum Refusal {
    Refused,
    QueueEmpty,
    NoReserve,
}

impl Worker<'_> {
    /// Accepts a bounded batch, re-arms the listener (so another thread can take the next
    /// batch), then sets up the new connections.
    pub(super) fn accept_batch(&mut self) {
        let sh = self.sh;
        let mut fds = Vec::new();
        {
            let listener = lock(&sh.listener);
            let Some(lfd) = listener.as_ref() else { return };
            let mut starved = false;
            for _ in 0..sh.cfg.max_accepts {
                // Shared with every accept of the process (an admin listener's loop, say), as
                // the dance below is exclusive: see `net::listener::FD_TABLE`.
                let accepted = {
                    let _shared = fd_table_shared();
                    rustix::net::accept_with(lfd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
                };
                match accepted {
                    Ok(fd) => fds.push(fd),
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => {
                        match self.refuse_with_reserve(lfd) {
                            Refusal::Refused => {
                                bump(&self.stats.refused_emfile, 1);
                                say_out_of_fds("accept", e.into());
                            }
                            Refusal::QueueEmpty => break,
                            Refusal::NoReserve => {
                                say_out_of_fds(
                                    "accept, with no fd in reserve to refuse with",
                                    e.into(),
                                );
                                starved = true;
                                break;
                            }
                        }
                    }
                    Err(rustix::io::Errno::CONNABORTED)
                    | Err(rustix::io::Errno::INTR)
                    | Err(rustix::io::Errno::PROTO) => {}
                    Err(_) => {
                        // ENOBUFS/ENOMEM: back off.
                        starved = true;
                        break;
                    }
                }
            }
            if !fds.is_empty() {
                // fds are to be had: a reserve lost in an earlier dance (another thread took
                // the freed fd first) is taken back now, before the next EMFILE needs it.
                let mut reserve = lock(&sh.reserve);
                if reserve.is_none() {
                    *reserve = open_reserve_fd();
                }
            }
            if starved {
                // Left disarmed (re-arming would report it again at once, a spin): a closing
                // connection or the retry timer re-arms it.
                sh.listener_starved.store(true, Ordering::Release);
                sh.add_timer(
                    self.now.saturating_add(ms(STARVED_RETRY)),
                    TimerEvent::RetryAccept,
                );
            } else {
                sh.arm_listener(&listener);
            }
        }
        for fd in fds {
            self.serve_new(fd);
        }
    }

    /// The EMFILE dance: free the reserve, accept and close one pending connection (a clean
    /// close for the client), reopen the reserve.
    fn refuse_with_reserve(&self, lfd: &OwnedFd) -> Refusal {
        let _exclusive = fd_table_exclusive();
        let mut reserve = lock(&self.sh.reserve);
        let Some(fd) = reserve.take().or_else(open_reserve_fd) else {
            return Refusal::NoReserve;
        };
        drop(fd);
        let refusal = match rustix::net::accept_with(lfd, SocketFlags::CLOEXEC) {
            Ok(conn) => {
                close_refused(conn, self.sh.cfg.refusal_note.as_deref());
                Refusal::Refused
            }
            Err(rustix::io::Errno::AGAIN) => Refusal::QueueEmpty,
            Err(_) => Refusal::NoReserve,
        };
        *reserve = open_reserve_fd();
        refusal
    }

    pub(super) fn serve_new(&mut self, fd: OwnedFd) {
        let sh = self.sh;
        let sock = SockRef::from(&fd);
        if sh.cfg.nodelay {
            let _ = sock.set_tcp_nodelay(true);
        }
        if let Some(ka) = sh.cfg.keepalive {
            let params = TcpKeepalive::new()
                .with_time(ka.idle)
                .with_interval(ka.interval)
                .with_retries(ka.count);
            let _ = sock.set_tcp_keepalive(&params);
        }
        bump(&self.stats.accepted, 1);
        let acquired = sh.cfg.max_conns.map(|max| {
            sh.permits
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
        });
        let refused = acquired == Some(false);
        let (handler, limited) = match acquired {
            Some(false) => {
                bump(&self.stats.refused_limit, 1);
                // Closed as a served connection is, so the client reads EOF (`refusal`).
                let note = sh.cfg.refusal_note.as_ref();
                let Some(refused) = refusal(&sh.refusing, note) else {
                    close_refused(fd, note.map(|n| &n[..]));
                    return;
                };
                (refused, false)
            }
            Some(true) => ((sh.factory)(), true),
            None => ((sh.factory)(), false),
        };
        let conn = Arc::new(Mutex::new(LfConn {
            handler: Some(handler),
            core: Core::new(fd, self.now),
        }));
        // Locked before it is reachable, so nothing (a timer) runs before `on_connect`.
        let mut c = lock(&conn);
        c.core.id = sh.insert(conn.clone());
        c.core.holds_permit = limited;
        c.core.refused = refused;
        if !refused {
            bump(&self.stats.opened, 1);
        }
        if let Some(idle) = sh.cfg.idle_timeout {
            c.core.set_idle_timeout(sh, self.now, Some(idle));
        }
        self.call(&mut c, |h, cx| h.on_connect(cx));
        if sh.draining.load(Ordering::SeqCst) {
            // Accepted just as the drain started: it drains like the rest, answering what its
            // client has sent already.
            c.core.draining = true;
            self.recheck_drain(&mut c);
        }
        self.settle(&mut c, None);
    }
}

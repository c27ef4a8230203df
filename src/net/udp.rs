//! Datagram endpoints on the same loop as TCP (the book's multi-service server: one process
//! answers TCP and UDP on the same port).

use std::io;
use std::net::{SocketAddr, UdpSocket};

use crate::reactor::event::{Interest, Token, Trigger};
use crate::reactor::event_loop::{slot_in_mut, EventLoop, Source};

/// Receives the datagrams of one UDP socket. `sock` is lent for replies.
pub trait DatagramHandler: Send + 'static {
    fn on_datagram(&mut self, sock: &UdpSocket, data: &[u8], from: SocketAddr);
}

pub(crate) struct UdpEndpoint {
    pub(crate) sock: UdpSocket,
    handler: Option<Box<dyn DatagramHandler>>,
}

/// Datagrams taken per readiness report before giving others a turn.
const MAX_DATAGRAMS_PER_WAKEUP: usize = 64;

impl EventLoop {
    pub fn add_udp(
        &mut self,
        sock: UdpSocket,
        handler: Box<dyn DatagramHandler>,
    ) -> io::Result<Token> {
        sock.set_nonblocking(true)?;
        let token = self.insert_source(Source::Udp(UdpEndpoint {
            sock,
            handler: Some(handler),
        }));
        if let Err(e) = self.register(token, Interest::READABLE) {
            self.remove_source(token);
            return Err(e);
        }
        Ok(token)
    }

    pub(crate) fn udp_ready(&mut self, token: Token) {
        let Some(mut scratch) = self.scratch.take() else {
            return;
        };
        let EventLoop {
            slots,
            stats,
            scratch: slot_scratch,
            ..
        } = self;
        let Some(Source::Udp(ep)) = slot_in_mut(slots, token).map(|s| &mut s.source) else {
            *slot_scratch = Some(scratch);
            return;
        };
        let Some(mut handler) = ep.handler.take() else {
            *slot_scratch = Some(scratch);
            return;
        };
        let spill = scratch.writable_mut();
        let mut drained = false;
        for _ in 0..MAX_DATAGRAMS_PER_WAKEUP {
            match ep.sock.recv_from(spill) {
                Ok((n, from)) => {
                    stats.datagrams += 1;
                    stats.bytes_in += n as u64;
                    handler.on_datagram(&ep.sock, &spill[..n], from);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // WouldBlock, or an ICMP error from an earlier send: done for now.
                    drained = true;
                    break;
                }
            }
        }
        ep.handler = Some(handler);
        *slot_scratch = Some(scratch);
        if !drained && self.poller.trigger() == Trigger::Edge {
            self.ready.push(token);
        }
    }
}

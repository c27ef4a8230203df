//! Datagram endpoints on the same loop as TCP (the book's multi-service server: one process
//! answers TCP and UDP on the same port).

use std::io;
use std::net::{SocketAddr, UdpSocket};

use crate::reactor::event::{Interest, Token, Trigger};
use crate::reactor::event_loop::{slot_in_mut, EventLoop, Source};

/// Receives the datagrams of one UDP socket; replies go through `out`.
pub trait DatagramHandler: Send + 'static {
    fn on_datagram(&mut self, out: &mut DatagramOut<'_>, data: &[u8], from: SocketAddr);
}

/// The reply side of a UDP endpoint, lent to its handler: sends, and counts what it sent.
pub struct DatagramOut<'a> {
    sock: &'a UdpSocket,
    bytes_out: &'a mut u64,
}

impl DatagramOut<'_> {
    /// Sends one datagram. A full socket buffer drops it (`WouldBlock`), as UDP may.
    pub fn send_to(&mut self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        let n = self.sock.send_to(data, to)?;
        *self.bytes_out += n as u64;
        Ok(n)
    }
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
                    let mut out = DatagramOut {
                        sock: &ep.sock,
                        bytes_out: &mut stats.bytes_out,
                    };
                    handler.on_datagram(&mut out, &spill[..n], from);
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

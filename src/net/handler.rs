//! The logic unit's interface: what application code implements, and what it can do.
//!
//! A [`Handler`] is one connection's state machine. The loop calls it on that connection's
//! events, always on the loop's own thread, and never re-enters it: whatever the handler asks
//! for that would call a handler back (closing, a high-water crossing) is queued and done after
//! the callback returns. Through [`Ctx`] a handler acts on its own connection and, via
//! [`Ctx::event_loop`], on any other connection of the same loop (a proxy pairs a client with
//! the upstream it opened with [`Ctx::connect`]); [`Ctx::handle`] reaches other loops through
//! their task queues.
//!
//! Handlers are `Send` so that models other than one-loop-per-thread can move them: an
//! acceptor loop hands a new connection to another loop, and half-sync/half-reactor runs them
//! on a worker thread.
//!
//! ```
//! use keel::net::{Buffer, CloseReason, Ctx, Handler};
//! use keel::reactor::{EventLoop, LoopConfig};
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! /// Upper-cases what it receives, line by line, and says goodbye on "quit".
//! struct Shout;
//!
//! impl Handler for Shout {
//!     fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
//!         while let Some(end) = input.find_byte(b'\n') {
//!             let line = input.take_bytes(end + 1);
//!             if line.starts_with(b"quit") {
//!                 cx.write(b"bye\n");
//!                 cx.close(); // flush, FIN, wait for the peer's FIN
//!                 return;
//!             }
//!             cx.write(&line.to_ascii_uppercase());
//!         }
//!     }
//!     fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
//!         assert_eq!(reason, CloseReason::Normal);
//!         cx.event_loop().stop(); // one client is all this example serves
//!     }
//! }
//!
//! let mut el = EventLoop::new(LoopConfig::default())?;
//! let listener = keel::net::bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default())?;
//! let addr = listener.local_addr()?;
//! el.add_listener(listener, Arc::new(|| Box::new(Shout) as Box<dyn Handler>))?;
//! el.run_after(Duration::from_secs(10), |el| el.stop()); // never hang a doc test
//!
//! let client = std::thread::spawn(move || {
//!     let mut s = std::net::TcpStream::connect(addr).unwrap();
//!     s.write_all(b"hello\nquit\n").unwrap();
//!     let mut reply = String::new();
//!     s.read_to_string(&mut reply).unwrap(); // ends at the server's FIN
//!     reply
//! });
//! el.run()?;
//! assert_eq!(client.join().unwrap(), "HELLO\nbye\n");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use crate::net::buffer::Buffer;
use crate::net::connection::{CloseReason, ConnId};
use crate::reactor::event_loop::EventLoop;
use crate::reactor::handle::LoopHandle;
use crate::reactor::timer_wheel::TimerKey;

/// One connection's behaviour. Every method has a sensible default except `on_data`.
pub trait Handler: Send + 'static {
    /// The connection is established (accepted, or an outgoing connect succeeded).
    fn on_connect(&mut self, _cx: &mut Ctx<'_>) {}

    /// Bytes arrived. Consume what you handled from `input`; what is left stays buffered
    /// and is given again, with more, on the next call (a codec's "need more bytes").
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer);

    /// Everything queued has been handed to the kernel (after output had to be buffered).
    fn on_drained(&mut self, _cx: &mut Ctx<'_>) {}

    /// Queued output crossed the loop's high-water mark: the peer reads slower than we produce.
    /// The usual answer is to stop reading the source of the data until `on_drained`.
    fn on_high_water(&mut self, _cx: &mut Ctx<'_>, _queued: usize) {}

    /// The peer sent FIN (`read() == 0`): it will send nothing more but may still be reading.
    /// Default: finish writing what is queued, then send our FIN; the connection then closes.
    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        cx.shutdown_write();
    }

    /// No byte moved for the idle timeout. Default: graceful close.
    fn on_idle_timeout(&mut self, cx: &mut Ctx<'_>) {
        cx.close();
    }

    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, _cx: &mut Ctx<'_>, _tag: u64) {}

    /// The connection is gone (its fd is already closed). `cx` still reaches the loop, e.g. to
    /// close the other half of a proxied pair.
    fn on_close(&mut self, _cx: &mut Ctx<'_>, _reason: CloseReason) {}
}

/// What a handler can do while it runs: act on its own connection, or reach the loop.
pub struct Ctx<'a> {
    el: &'a mut EventLoop,
    id: ConnId,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(el: &'a mut EventLoop, id: ConnId) -> Ctx<'a> {
        Ctx { el, id }
    }

    /// This connection's id: give it to other handlers so they can write to it.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Sends `data`: straight to the socket if nothing is queued, the rest buffered.
    /// False if the connection's write side is closed.
    pub fn write(&mut self, data: &[u8]) -> bool {
        self.el.write(self.id, data)
    }

    /// Bytes queued and not yet taken by the kernel.
    pub fn output_len(&self) -> usize {
        self.el.output_len(self.id)
    }

    /// Half-close: FIN after the queued output, keep reading.
    pub fn shutdown_write(&mut self) {
        self.el.shutdown_write(self.id)
    }

    /// Graceful close: flush, FIN, wait for the peer's FIN up to the linger timeout.
    pub fn close(&mut self) {
        self.el.close(self.id)
    }

    /// Close now with RST; queued output is dropped.
    pub fn abort(&mut self) {
        self.el.abort(self.id)
    }

    pub fn pause_read(&mut self) {
        self.el.pause_read(self.id)
    }

    pub fn resume_read(&mut self) {
        self.el.resume_read(self.id)
    }

    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.el.set_idle_timeout(self.id, timeout)
    }

    /// Calls `on_timer(tag)` after `after`. Cancel with [`Ctx::cancel_timer`].
    pub fn set_timer(&mut self, after: Duration, tag: u64) -> TimerKey {
        self.el.set_conn_timer(self.id, after, tag)
    }

    pub fn cancel_timer(&mut self, key: TimerKey) {
        self.el.cancel_timer(key)
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.el.peer_addr(self.id)
    }

    /// Opens an outgoing connection on this loop, driven by `handler`; a failure to connect
    /// (refused, timed out, unreachable) arrives as its `on_close(ConnectFailed(..))`.
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> std::io::Result<ConnId> {
        self.el.connect(addr, timeout, handler)
    }

    /// The whole loop: other connections (`write`, `close`, `pause_read`... by id), timers.
    pub fn event_loop(&mut self) -> &mut EventLoop {
        self.el
    }

    /// A `Send` handle to this loop, for other threads or loops to post work back.
    pub fn handle(&self) -> LoopHandle {
        self.el.handle()
    }
}

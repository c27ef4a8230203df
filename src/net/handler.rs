//! The logic unit's interface: what application code implements, and what it can do.
//!
//! A [`Handler`] is one connection's state machine. The loop calls it on that connection's
//! events, always on the loop's own thread, and never re-enters it: whatever the handler asks
//! for that would call a handler back (closing, a high-water crossing) is queued and done after
//! the callback returns. Through [`Ctx`] a handler acts on its own connection and, via
//! [`Ctx::event_loop`], on any other connection of the same loop (a proxy pairs a client with
//! the upstream it opened with [`Ctx::connect`]); [`Ctx::handle`] reaches other loops through
//! their task queues. The context acts through [`ConnOps`], which other concurrency models
//! implement too.
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
//!         cx.event_loop().unwrap().stop(); // one client is all this example serves
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
use std::time::{Duration, Instant};

use crate::net::buffer::Buffer;
use crate::net::connection::{CloseReason, ConnId};
use crate::net::output::FileRange;
use crate::reactor::event_loop::EventLoop;
use crate::reactor::handle::LoopHandle;
use crate::reactor::stats::Note;

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
    /// Also called when our FIN went out first (after `shutdown_write`), so that a relay can
    /// pass the FIN on; the connection then closes normally right after. Not called once the
    /// handler has asked to `close`.
    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        cx.shutdown_write();
    }

    /// No byte moved for the idle timeout. Default: graceful close.
    fn on_idle_timeout(&mut self, cx: &mut Ctx<'_>) {
        cx.close();
    }

    /// A timer set with [`Ctx::set_timer`] fired, or another handler of the loop called
    /// [`EventLoop::poke`] with this connection and `tag`.
    fn on_timer(&mut self, _cx: &mut Ctx<'_>, _tag: u64) {}

    /// The server is stopping gracefully: should this connection be closed as soon as it is
    /// idle, with nothing unread and nothing queued? Yes by default: in a protocol of requests
    /// and answers, idle is between requests. A relay says no: a pause in a stream is not its
    /// end, so the connection is left to finish by itself within the drain timeout.
    fn close_when_idle_at_stop(&self) -> bool {
        true
    }

    /// Whether the handler holds part of a message it waits to complete, in a place of its
    /// own: a draining connection is not idle then (its request is still arriving). A handler
    /// that leaves such bytes in its `input`, as handlers do, need not say it: the loop sees
    /// them. For a model's shim that keeps them elsewhere (half-sync's).
    fn holds_partial_message(&self) -> bool {
        false
    }

    /// The connection is gone (its fd is already closed). `cx` still reaches the loop, e.g. to
    /// close the other half of a proxied pair.
    fn on_close(&mut self, _cx: &mut Ctx<'_>, _reason: CloseReason) {}
}

/// What a handler's context does, wherever the handler runs.
///
/// The event loop implements it directly on its connections. A concurrency model that runs
/// handlers elsewhere (a half-sync/half-reactor worker thread, a leader/followers thread that
/// holds a connection through EPOLLONESHOT) implements it with its own means, so the same
/// handler code runs under every model. Operations a model cannot offer report so: `connect`
/// and `event_loop` exist only on a loop thread.
pub trait ConnOps {
    fn write(&mut self, id: ConnId, data: &[u8]) -> bool;
    /// Queues `head`, then `range` of a file sent without copying (sendfile).
    fn send_file(&mut self, id: ConnId, head: &[u8], range: FileRange) -> bool;
    fn output_len(&self, id: ConnId) -> usize;
    fn shutdown_write(&mut self, id: ConnId);
    fn close(&mut self, id: ConnId);
    fn abort(&mut self, id: ConnId);
    fn pause_read(&mut self, id: ConnId);
    fn resume_read(&mut self, id: ConnId);
    fn set_idle_timeout(&mut self, id: ConnId, timeout: Option<Duration>);
    /// Arms timer `tag` of connection `id`, replacing a pending one with the same tag.
    fn set_timer(&mut self, id: ConnId, after: Duration, tag: u64);
    fn cancel_timer(&mut self, id: ConnId, tag: u64);
    fn peer_addr(&self, id: ConnId) -> Option<SocketAddr>;
    /// The loop itself, when the handler runs on its thread.
    fn event_loop(&mut self) -> Option<&mut EventLoop> {
        None
    }
    /// A handle to the loop that owns connection `id`.
    fn handle(&self) -> Option<LoopHandle>;
    /// Counts a protocol event in the loop's statistics.
    fn note(&mut self, note: Note);
    /// The current time, as coarse as the model can make it cheaply: the loop's reading from
    /// the start of this iteration, or a fresh clock read where there is no loop.
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What a handler can do while it runs: act on its own connection, or reach the loop.
pub struct Ctx<'a> {
    ops: &'a mut dyn ConnOps,
    id: ConnId,
}

impl<'a> Ctx<'a> {
    /// A context for connection `id`, acting through `ops` (the loop, or another model's
    /// implementation).
    pub fn new(ops: &'a mut dyn ConnOps, id: ConnId) -> Ctx<'a> {
        Ctx { ops, id }
    }

    /// This connection's id: give it to other handlers so they can write to it.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Sends `data`: straight to the socket if nothing is queued, the rest buffered.
    /// False if the connection's write side is closed.
    pub fn write(&mut self, data: &[u8]) -> bool {
        self.ops.write(self.id, data)
    }

    /// Sends `head` (say, a response head) and then `range` of a file, after anything queued.
    /// The file's bytes go from the page cache to the socket with sendfile, never through
    /// user space; the head shares the first packet. False if the write side is closed.
    pub fn send_file(&mut self, head: &[u8], range: FileRange) -> bool {
        self.ops.send_file(self.id, head, range)
    }

    /// Bytes queued (in memory or as file ranges) and not yet taken by the kernel. In
    /// `on_close`: what was still queued when the connection ended, never to be sent.
    pub fn output_len(&self) -> usize {
        self.ops.output_len(self.id)
    }

    /// Half-close: FIN after the queued output, keep reading.
    pub fn shutdown_write(&mut self) {
        self.ops.shutdown_write(self.id)
    }

    /// Graceful close: flush, FIN, wait for the peer's FIN up to the linger timeout.
    pub fn close(&mut self) {
        self.ops.close(self.id)
    }

    /// Close now with RST; queued output is dropped.
    pub fn abort(&mut self) {
        self.ops.abort(self.id)
    }

    pub fn pause_read(&mut self) {
        self.ops.pause_read(self.id)
    }

    /// Reading starts again; input left unconsumed when reading was paused is offered to
    /// `on_data` again right after the current callback, even if no new byte arrives.
    pub fn resume_read(&mut self) {
        self.ops.resume_read(self.id)
    }

    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.ops.set_idle_timeout(self.id, timeout)
    }

    /// Calls `on_timer(tag)` after `after`. Setting a tag again re-arms it; timers die with
    /// the connection.
    pub fn set_timer(&mut self, after: Duration, tag: u64) {
        self.ops.set_timer(self.id, after, tag)
    }

    pub fn cancel_timer(&mut self, tag: u64) {
        self.ops.cancel_timer(self.id, tag)
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.ops.peer_addr(self.id)
    }

    /// Opens an outgoing connection on this loop, driven by `handler`; a failure to connect
    /// (refused, timed out, unreachable) arrives as its `on_close(ConnectFailed(..))`.
    /// `Unsupported` when the handler does not run on a loop thread (half-sync workers).
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> std::io::Result<ConnId> {
        match self.ops.event_loop() {
            Some(el) => el.connect(addr, timeout, handler),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "outgoing connections need a loop thread (not available under this concurrency model)",
            )),
        }
    }

    /// The whole loop (other connections by id, timers), when the handler runs on the loop's
    /// thread: under the reactor models it always does; under half-sync it runs on a worker.
    pub fn event_loop(&mut self) -> Option<&mut EventLoop> {
        self.ops.event_loop()
    }

    /// Counts a protocol event (an HTTP response by status class, a request timeout) in the
    /// statistics of the loop that owns this connection: it shows in `/metrics` and the
    /// `stats` line, summed over threads and processes like the loop's own counters.
    pub fn note(&mut self, note: Note) {
        self.ops.note(note)
    }

    /// The time now, as read by the loop when it woke up for this event (a fresh reading under
    /// models without a loop on this thread). Good for anything with a granularity of a
    /// millisecond or more (dates, cache ages) and cheaper than reading the clock per call.
    pub fn now(&self) -> Instant {
        self.ops.now()
    }

    /// A `Send` handle to the loop that owns this connection, for posting work back to it.
    pub fn handle(&self) -> Option<LoopHandle> {
        self.ops.handle()
    }
}

impl ConnOps for EventLoop {
    fn write(&mut self, id: ConnId, data: &[u8]) -> bool {
        EventLoop::write(self, id, data)
    }
    fn send_file(&mut self, id: ConnId, head: &[u8], range: FileRange) -> bool {
        EventLoop::send_file(self, id, head, range)
    }
    fn output_len(&self, id: ConnId) -> usize {
        EventLoop::output_len(self, id)
    }
    fn shutdown_write(&mut self, id: ConnId) {
        EventLoop::shutdown_write(self, id)
    }
    fn close(&mut self, id: ConnId) {
        EventLoop::close(self, id)
    }
    fn abort(&mut self, id: ConnId) {
        EventLoop::abort(self, id)
    }
    fn pause_read(&mut self, id: ConnId) {
        EventLoop::pause_read(self, id)
    }
    fn resume_read(&mut self, id: ConnId) {
        EventLoop::resume_read(self, id)
    }
    fn set_idle_timeout(&mut self, id: ConnId, timeout: Option<Duration>) {
        EventLoop::set_idle_timeout(self, id, timeout)
    }
    fn set_timer(&mut self, id: ConnId, after: Duration, tag: u64) {
        EventLoop::set_conn_timer(self, id, after, tag)
    }
    fn cancel_timer(&mut self, id: ConnId, tag: u64) {
        EventLoop::cancel_conn_timer(self, id, tag)
    }
    fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        EventLoop::peer_addr(self, id)
    }
    fn event_loop(&mut self) -> Option<&mut EventLoop> {
        Some(self)
    }
    fn handle(&self) -> Option<LoopHandle> {
        Some(EventLoop::handle(self))
    }
    fn note(&mut self, note: Note) {
        EventLoop::note(self, note)
    }
    fn now(&self) -> Instant {
        EventLoop::now(self)
    }
}

//! TCP proxy and load balancer: each client connection is paired with a connection to one of
//! the backends, chosen round-robin, and bytes flow both ways until both sides are done.
//!
//! The two connections of a pair live on the same loop, each with its own handler ([`Client`]
//! for the accepted one, [`Upstream`] for the one keel opened), and reach each other by
//! [`ConnId`] through the loop: no lock, no shared buffer. What the notes ask of a relay, and
//! where it is done:
//!
//! - **Half-close passes through** (rule 2): a FIN from one side becomes `shutdown_write` on
//!   the other, which keeps reading; the pair closes once both FINs have passed.
//! - **Backpressure**: when a side's output queue passes the high-water mark, reading from
//!   the other side pauses, and resumes once the queue has drained. A slow reader costs the
//!   relay one high-water mark of memory, not the whole stream.
//! - **Failover**: a backend that refuses, or does not answer within the connect timeout, is
//!   skipped, and the next one is tried, each at most once per client. Bytes the client sends
//!   before a backend answers stay in the client's input buffer (reading paused), so they go
//!   to whichever backend answers. When none does, the client gets a clean close and nothing
//!   else.
//! - **Errors are not hidden**: a reset or a timeout on one side resets the other, so neither
//!   peer takes a cut stream for a complete one.
//! - **A graceful stop lets streams finish**: a pair is not closed at its first pause, as an
//!   idle HTTP connection is, but left to end by itself within the drain timeout.
//!
//! Bytes are copied (one read into a pooled buffer, one write, per chunk) until a direction
//! brings a read of [`SPLICE_FROM`] bytes or more; from then on that direction is spliced
//! (`EventLoop::splice`): socket → pipe → socket, the bytes never entering user space, as
//! HAProxy does with `option splice-auto`. A pipe costs more syscalls per message than a copy
//! (`bench/proxy`: 15.1 against 13.0 µs per 13-byte response when spliced from the start) and
//! saves far more on a stream (185 against 388 µs per 1 MiB). `splice = false` never splices.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::net::log_throttle::{left_out_note, LogThrottle};
use crate::net::{Buffer, CloseReason, ConnId, Ctx, Handler, HandlerFactory};
use crate::sys::process::SharedCounters;

/// `Upstream` pokes its client with these tags (`EventLoop::poke`).
const CONNECTED: u64 = 1;
const FAILED: u64 = 2;
/// The client poked itself: pass on the FIN that came before the backend answered, after the
/// bytes that came before it.
const PASS_FIN: u64 = 3;

/// A read this large moves its direction to the spliced path for good: it is a stream, not
/// a request or a small answer.
pub const SPLICE_FROM: usize = 32 * 1024;

/// "A backend did not answer", at most once a second.
static BACKEND_FAILED: LogThrottle = LogThrottle::new(1);
/// "No backend answered", at most once a second.
static ALL_FAILED: LogThrottle = LogThrottle::new(1);
/// "Out of fds for a backend connection", at most once a second.
static OUT_OF_FDS: LogThrottle = LogThrottle::new(1);

/// The backends of one proxy, and where the next client starts its round.
pub struct Backends {
    addrs: Vec<SocketAddr>,
    /// One counter for the whole server, in shared memory made before any fork: prefork
    /// workers and per-connection children take turns from the same round, where a copy of
    /// a plain counter in each would start every child at the first backend.
    next: SharedCounters,
}

impl Backends {
    /// An error if `addrs` is empty (a proxy needs somewhere to send its clients) or the
    /// shared counter cannot be mapped.
    pub fn new(addrs: Vec<SocketAddr>) -> Result<Backends, String> {
        if addrs.is_empty() {
            return Err(
                "the proxy needs at least one backend: --backend IP:PORT, or \
                        backends = [...] in [proxy]"
                    .to_string(),
            );
        }
        let next = SharedCounters::new(1).map_err(|e| format!("shared memory: {e}"))?;
        Ok(Backends { addrs, next })
    }

    /// Where the next client starts: one atomic add per client.
    fn start(&self) -> usize {
        let n = self.next.get(0).fetch_add(1, Ordering::Relaxed);
        (n % self.addrs.len() as u64) as usize
    }
}

/// Makes the handler of each accepted client.
/// With `splice`, a direction that carries a stream moves its bytes socket → pipe → socket,
/// without entering user space (see `net::splice` and [`SPLICE_FROM`]).
pub fn factory(backends: Arc<Backends>, connect_timeout: Duration, splice: bool) -> HandlerFactory {
    Arc::new(move || {
        Box::new(Client {
            first: backends.start(),
            backends: backends.clone(),
            connect_timeout,
            splice,
            tried: 0,
            upstream: None,
            connected: false,
            fin_pending: false,
        }) as Box<dyn Handler>
    })
}

/// The accepted side of a pair.
pub struct Client {
    backends: Arc<Backends>,
    connect_timeout: Duration,
    splice: bool,
    /// The backend tried first, and how many have been tried since.
    first: usize,
    tried: usize,
    upstream: Option<ConnId>,
    /// The upstream connection is established: bytes may flow.
    connected: bool,
    /// The client's FIN came before a backend answered.
    fin_pending: bool,
}

impl Client {
    /// Connects to the next backend not yet tried; when every one has failed, closes the
    /// client (cleanly: it never got a byte it could mistake for an answer).
    fn dial(&mut self, cx: &mut Ctx<'_>) {
        let n = self.backends.addrs.len();
        while self.tried < n {
            let addr = self.backends.addrs[(self.first + self.tried) % n];
            self.tried += 1;
            let up = Upstream {
                client: cx.id(),
                backend: addr,
                splice: self.splice,
            };
            match cx.connect(addr, self.connect_timeout, Box::new(up)) {
                Ok(id) => {
                    self.upstream = Some(id);
                    return;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Not the backend's fault, and the next one would fare no better.
                    if let Some(left_out) = OUT_OF_FDS.turn() {
                        tracing::warn!(
                            "out of file descriptors: a client was closed without a backend \
                             connection{}",
                            left_out_note(left_out)
                        );
                    }
                    self.upstream = None;
                    cx.close();
                    return;
                }
                // Failed before it began (an address family the host lacks, say).
                Err(e) => backend_failed(addr, &e.to_string()),
            }
        }
        self.upstream = None;
        if let Some(left_out) = ALL_FAILED.turn() {
            tracing::warn!(
                "no backend answered a client; it was closed{}",
                left_out_note(left_out)
            );
        }
        cx.close();
    }

    fn upstream(&self) -> Option<ConnId> {
        self.upstream.filter(|_| self.connected)
    }
}

fn backend_failed(addr: SocketAddr, why: &str) {
    if let Some(left_out) = BACKEND_FAILED.turn() {
        tracing::warn!(
            "backend {addr}: {why}; the next backend is tried{}",
            left_out_note(left_out)
        );
    }
}

/// Writes what `input` holds to `to`; if `to` cannot take it (gone, or shut for writing),
/// there is no one to carry these bytes: the sending side is reset.
/// With `splice`, a read of [`SPLICE_FROM`] bytes or more moves this direction to pipes for
/// the rest of the connection; a pipe that cannot be made (out of fds) leaves it copying,
/// which works the same, only dearer.
fn forward(cx: &mut Ctx<'_>, to: ConnId, input: &mut Buffer, splice: bool) {
    let me = cx.id();
    let big = input.len() >= SPLICE_FROM;
    let el = cx
        .event_loop()
        .expect("the proxy runs on its loop's thread");
    if !el.write(to, input.as_slice()) {
        cx.abort();
        return;
    }
    input.clear();
    if splice && big {
        if let Err(e) = el.splice(me, to) {
            tracing::debug!("splice {me:?} -> {to:?} not set up: {e}");
        }
    }
}

fn pause(cx: &mut Ctx<'_>, other: Option<ConnId>) {
    if let (Some(id), Some(el)) = (other, cx.event_loop()) {
        el.pause_read(id);
    }
}

fn resume(cx: &mut Ctx<'_>, other: Option<ConnId>) {
    if let (Some(id), Some(el)) = (other, cx.event_loop()) {
        el.resume_read(id);
    }
}

fn shutdown_write(cx: &mut Ctx<'_>, other: Option<ConnId>) {
    if let (Some(id), Some(el)) = (other, cx.event_loop()) {
        el.shutdown_write(id);
    }
}

/// Neither side of the pair moved a byte for the idle timeout (the loop counts the two
/// together, `EventLoop::pair`). With nothing queued on either side nothing is cut: both close
/// gracefully. With bytes queued a reader has stalled mid-stream: both are reset, so neither
/// end takes what it got for the whole.
fn idle_pair(cx: &mut Ctx<'_>, other: Option<ConnId>) {
    let me = cx.id();
    let Some(el) = cx.event_loop() else { return };
    let stalled = el.output_len(me) > 0 || other.is_some_and(|o| el.output_len(o) > 0);
    for id in std::iter::once(me).chain(other) {
        if stalled {
            el.abort(id);
        } else {
            el.close(id);
        }
    }
}

/// A side closed: a normal close means both FINs passed, and the other side ends by itself;
/// any other end is passed on as a reset.
fn pass_close(cx: &mut Ctx<'_>, other: Option<ConnId>, reason: &CloseReason) {
    if let (Some(id), Some(el)) = (other, cx.event_loop()) {
        if *reason != CloseReason::Normal || el.is_connecting(id) {
            el.abort(id);
        }
    }
}

impl Handler for Client {
    /// A pause in a relayed stream is not its end: at a graceful stop the pair is left to
    /// finish, within the drain timeout.
    fn close_when_idle_at_stop(&self) -> bool {
        false
    }

    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        self.dial(cx);
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        match self.upstream() {
            Some(up) => forward(cx, up, input, self.splice),
            // Kept for whichever backend answers; reading waits for it.
            None => cx.pause_read(),
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, tag: u64) {
        match tag {
            CONNECTED => {
                self.connected = true;
                let me = cx.id();
                if let (Some(up), Some(el)) = (self.upstream, cx.event_loop()) {
                    el.pair(me, up);
                }
                // What arrived meanwhile is offered to `on_data` again, then the FIN if it
                // came too: the poke runs after the redelivery.
                cx.resume_read();
                if self.fin_pending {
                    let id = cx.id();
                    if let Some(el) = cx.event_loop() {
                        el.poke(id, PASS_FIN);
                    }
                }
            }
            FAILED if !self.connected => self.dial(cx),
            PASS_FIN => shutdown_write(cx, self.upstream()),
            _ => {}
        }
    }

    fn on_high_water(&mut self, cx: &mut Ctx<'_>, _queued: usize) {
        pause(cx, self.upstream());
    }

    fn on_drained(&mut self, cx: &mut Ctx<'_>) {
        resume(cx, self.upstream());
    }

    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        if self.connected {
            shutdown_write(cx, self.upstream());
        } else {
            self.fin_pending = true;
        }
    }

    fn on_idle_timeout(&mut self, cx: &mut Ctx<'_>) {
        // While a backend is being reached, its connect timeout bounds the wait.
        if self.connected {
            idle_pair(cx, self.upstream);
        }
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        pass_close(cx, self.upstream, &reason);
    }
}

/// The side keel opened to a backend, on behalf of `client`.
pub struct Upstream {
    client: ConnId,
    backend: SocketAddr,
    splice: bool,
}

impl Handler for Upstream {
    /// A pause in a relayed stream is not its end: at a graceful stop the pair is left to
    /// finish, within the drain timeout.
    fn close_when_idle_at_stop(&self) -> bool {
        false
    }

    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        if let Some(el) = cx.event_loop() {
            el.poke(self.client, CONNECTED);
        }
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        forward(cx, self.client, input, self.splice);
    }

    fn on_high_water(&mut self, cx: &mut Ctx<'_>, _queued: usize) {
        pause(cx, Some(self.client));
    }

    fn on_drained(&mut self, cx: &mut Ctx<'_>) {
        resume(cx, Some(self.client));
    }

    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        shutdown_write(cx, Some(self.client));
    }

    fn on_idle_timeout(&mut self, cx: &mut Ctx<'_>) {
        idle_pair(cx, Some(self.client));
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        match reason {
            CloseReason::ConnectFailed(e) => {
                backend_failed(self.backend, &e.to_string());
                if let Some(el) = cx.event_loop() {
                    el.poke(self.client, FAILED);
                }
            }
            other => pass_close(cx, Some(self.client), &other),
        }
    }
}

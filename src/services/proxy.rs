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
//! - **Passive health** (nginx's `max_fails=1 fail_timeout`): a backend that failed is passed
//!   over for the fail timeout, so one that hangs costs one client a connect timeout, not
//!   every client whose turn it is, and its turns are shared among the others, not all given
//!   to its neighbour. When every backend is passed over, they are tried all the same: a
//!   moment's outage does not turn clients away for the whole timeout.
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

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::net::log_throttle::{left_out_note, LogThrottle};
use crate::net::{Buffer, CloseReason, ConnId, Ctx, Handler, HandlerFactory};
use crate::reactor::poller::Unwatchable;
use crate::sys::process::{monotonic_ns, SharedCounters};

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

/// The most backends whose failure marks the shared round holds. A longer list (a reload
/// may bring one) gets marks of the process's own: shared by its threads, not with sibling
/// processes.
const SHARED_MARKS: usize = 1024;

/// Where all of a proxy's processes take their turns and see which backends failed: one
/// mapping of shared memory, made once before any fork and handed to every [`Backends`] made
/// from it, the first and each reload's, in whichever process. Prefork workers and
/// per-connection children so take turns from the same round (a copy of a plain counter in
/// each would start every one at the first backend), a failure one of them saw spares the
/// others' clients, and both stay shared after a reload a worker carries out itself.
///
/// Word 0 is the round's ticket counter; word 1 a fingerprint of the backend list the marks
/// are for; then per backend (by position), the CLOCK_MONOTONIC nanosecond until which it is
/// passed over (0: it is not).
pub struct SharedRound {
    words: SharedCounters,
}

impl SharedRound {
    pub fn new() -> Result<SharedRound, String> {
        let words =
            SharedCounters::new(2 + SHARED_MARKS).map_err(|e| format!("shared memory: {e}"))?;
        Ok(SharedRound { words })
    }

    /// Takes the marks for `addrs`: if they were for another list, they are cleared (they
    /// name backends by position). The processes of a reload each do this; the first to see
    /// the new list clears.
    fn adopt(&self, addrs: &[SocketAddr]) {
        let mut h = std::hash::DefaultHasher::new();
        addrs.hash(&mut h);
        let fingerprint = h.finish() | 1; // never 0, which no list has yet
        if self.words.get(1).swap(fingerprint, Ordering::Relaxed) != fingerprint {
            for i in 0..addrs.len().min(SHARED_MARKS) {
                self.words.get(2 + i).store(0, Ordering::Relaxed);
            }
        }
    }
}

/// The backends of one proxy, where the next client starts its round, and which backends
/// are passed over for a recent failure.
pub struct Backends {
    addrs: Vec<SocketAddr>,
    round: Arc<SharedRound>,
    /// The marks of a list longer than [`SHARED_MARKS`]; `None`: they are in `round`.
    own_marks: Option<SharedCounters>,
    fail_timeout: u64,
}

impl Backends {
    /// An error if `addrs` is empty (a proxy needs somewhere to send its clients) or its
    /// marks cannot be mapped. A backend that fails is passed over for `fail_timeout` (zero:
    /// never). The turns and the marks are `round`'s.
    pub fn new(
        addrs: Vec<SocketAddr>,
        fail_timeout: Duration,
        round: Arc<SharedRound>,
    ) -> Result<Backends, String> {
        if addrs.is_empty() {
            return Err(
                "the proxy needs at least one backend: --backend IP:PORT, or \
                        backends = [...] in [proxy]"
                    .to_string(),
            );
        }
        let own_marks = if addrs.len() > SHARED_MARKS {
            Some(SharedCounters::new(addrs.len()).map_err(|e| format!("shared memory: {e}"))?)
        } else {
            round.adopt(&addrs);
            None
        };
        Ok(Backends {
            addrs,
            round,
            own_marks,
            fail_timeout: u64::try_from(fail_timeout.as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// The next client's turn: one atomic add per client.
    fn ticket(&self) -> u64 {
        self.round.words.get(0).fetch_add(1, Ordering::Relaxed)
    }

    /// Backend `i`'s mark: until when it is passed over.
    fn down_until(&self, i: usize) -> &AtomicU64 {
        match &self.own_marks {
            Some(own) => own.get(i),
            None => self.round.words.get(2 + i),
        }
    }

    /// Whether backend `i` is passed over now. `now` is read once per choice, and only if
    /// some backend is marked at all: a healthy round costs loads, no clock.
    fn is_down(&self, i: usize, now: &mut Option<u64>) -> bool {
        let until = self.down_until(i).load(Ordering::Relaxed);
        until != 0 && *now.get_or_insert_with(monotonic_ns) < until
    }

    /// Backend `i` failed: pass it over for the fail timeout. Whether it was not already.
    fn failed(&self, i: usize) -> bool {
        if self.fail_timeout == 0 {
            return false;
        }
        let now = monotonic_ns();
        let until = now.saturating_add(self.fail_timeout);
        self.down_until(i).swap(until, Ordering::Relaxed) <= now
    }

    /// Backend `i` answered: it is no longer passed over (a store only if it was marked,
    /// so that the healthy path writes no shared line).
    fn answered(&self, i: usize) {
        let slot = self.down_until(i);
        if slot.load(Ordering::Relaxed) != 0 {
            slot.store(0, Ordering::Relaxed);
        }
    }

    /// The backend a client tries next, given those it has `tried`: for its first try, the
    /// backend its `ticket` falls on among those not passed over (so their turns are shared
    /// evenly, however many are out); after that, the next one in order not passed over;
    /// and when all that are left are, the next one left. None when all have been tried.
    fn choose(&self, ticket: u64, after: Option<usize>, tried: &Tried) -> Option<usize> {
        let n = self.addrs.len();
        let mut now = None;
        let start = match after {
            Some(i) => i + 1,
            None => {
                let live = (0..n).filter(|&i| !self.is_down(i, &mut now)).count();
                if live > 0 {
                    let k = (ticket % live as u64) as usize;
                    // Read again: another loop or process may mark one between the two
                    // reads, and then there is no k-th; the plain order below still answers.
                    let kth = (0..n).filter(|&i| !self.is_down(i, &mut now)).nth(k);
                    if let Some(i) = kth.filter(|&i| self.claim(i, &mut now)) {
                        return Some(i);
                    }
                }
                (ticket % n as u64) as usize
            }
        };
        let order = (0..n).map(|k| (start + k) % n).filter(|&i| !tried.has(i));
        let mut left = order.clone();
        order
            .clone()
            .find(|&i| !self.is_down(i, &mut now) && self.claim(i, &mut now))
            .or_else(|| left.next())
    }

    /// Whether this client may dial backend `i`, not passed over: yes if it is not marked;
    /// if its mark has run out, only the one client that renews the mark (so that the others
    /// keep passing it over) goes to see whether it is back, as nginx lets one request
    /// through per `fail_timeout`. Its answer clears the mark; another failure renews it.
    fn claim(&self, i: usize, now: &mut Option<u64>) -> bool {
        let slot = self.down_until(i);
        let until = slot.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let t = *now.get_or_insert_with(monotonic_ns);
        until <= t
            && slot
                .compare_exchange(
                    until,
                    t.saturating_add(self.fail_timeout),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// The backends a client has tried: a bit each, in a word for the first 64 (no allocation
/// for the usual few) and in a vector past that.
#[derive(Default)]
struct Tried {
    low: u64,
    more: Vec<u64>,
}

impl Tried {
    fn has(&self, i: usize) -> bool {
        let (word, bit) = (i / 64, i % 64);
        let w = match word {
            0 => self.low,
            w => self.more.get(w - 1).copied().unwrap_or(0),
        };
        w >> bit & 1 == 1
    }

    fn mark(&mut self, i: usize) {
        let (word, bit) = (i / 64, i % 64);
        if word == 0 {
            self.low |= 1 << bit;
            return;
        }
        if self.more.len() < word {
            self.more.resize(word, 0);
        }
        self.more[word - 1] |= 1 << bit;
    }
}

/// Makes the handler of each accepted client.
/// With `splice`, a direction that carries a stream moves its bytes socket → pipe → socket,
/// without entering user space (see `net::splice` and [`SPLICE_FROM`]).
pub fn factory(backends: Arc<Backends>, connect_timeout: Duration, splice: bool) -> HandlerFactory {
    Arc::new(move || {
        Box::new(Client {
            ticket: backends.ticket(),
            backends: backends.clone(),
            connect_timeout,
            splice,
            tried: Tried::default(),
            current: None,
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
    /// This client's turn in the round.
    ticket: u64,
    /// The backends tried, and the one dialled last.
    tried: Tried,
    current: Option<usize>,
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
        while let Some(i) = self.backends.choose(self.ticket, self.current, &self.tried) {
            let addr = self.backends.addrs[i];
            self.tried.mark(i);
            self.current = Some(i);
            let up = Upstream {
                client: cx.id(),
                backends: self.backends.clone(),
                backend: i,
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
                Err(e) if Unwatchable::is(&e) => {
                    // The engine's limit (select's FD_SETSIZE), not the backend's: the same.
                    if let Some(left_out) = OUT_OF_FDS.turn() {
                        tracing::warn!(
                            "a client was closed without a backend connection: {e}{}",
                            left_out_note(left_out)
                        );
                    }
                    self.upstream = None;
                    cx.close();
                    return;
                }
                // Failed before it began (an address family the host lacks, say).
                Err(e) => backend_failed(&self.backends, i, &e.to_string()),
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

/// Backend `i` did not answer (`why`): say so, and pass it over for the fail timeout. Its
/// first failure in a while is always said; the rest at most once a second.
fn backend_failed(backends: &Backends, i: usize, why: &str) {
    let addr = backends.addrs[i];
    if backends.failed(i) {
        tracing::warn!(
            "backend {addr}: {why}; passed over for {:?}; the next backend is tried",
            Duration::from_nanos(backends.fail_timeout)
        );
    } else if let Some(left_out) = BACKEND_FAILED.turn() {
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
                if let Some(i) = self.current {
                    self.backends.answered(i);
                }
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
    backends: Arc<Backends>,
    /// Which of them this connection went to.
    backend: usize,
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
                backend_failed(&self.backends, self.backend, &e.to_string());
                if let Some(el) = cx.event_loop() {
                    el.poke(self.client, FAILED);
                }
            }
            other => pass_close(cx, Some(self.client), &other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize, fail_timeout: Duration) -> Backends {
        let addrs = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
            .collect();
        Backends::new(addrs, fail_timeout, Arc::new(SharedRound::new().unwrap())).unwrap()
    }

    /// The backends a client with `ticket` tries, in order, if every one fails.
    fn attempts(b: &Backends, ticket: u64) -> Vec<usize> {
        let (mut tried, mut after, mut order) = (Tried::default(), None, Vec::new());
        while let Some(i) = b.choose(ticket, after, &tried) {
            tried.mark(i);
            after = Some(i);
            order.push(i);
        }
        order
    }

    #[test]
    fn a_healthy_round_goes_in_turn_and_fails_over_in_order() {
        let b = backends(3, Duration::from_secs(10));
        assert_eq!(attempts(&b, 0), [0, 1, 2]);
        assert_eq!(attempts(&b, 1), [1, 2, 0]);
        assert_eq!(attempts(&b, 5), [2, 0, 1]);
    }

    #[test]
    fn a_failed_backend_is_tried_last_and_its_turns_are_shared() {
        let b = backends(3, Duration::from_secs(10));
        assert!(b.failed(0), "the first failure marks it");
        assert!(!b.failed(0), "a second one finds it marked");
        // Its turns go to 1 and 2 alike, and it is still tried when they fail.
        let firsts: Vec<usize> = (0..6).map(|t| attempts(&b, t)[0]).collect();
        assert_eq!(firsts, [1, 2, 1, 2, 1, 2]);
        assert_eq!(attempts(&b, 0), [1, 2, 0]);
        assert_eq!(attempts(&b, 1), [2, 1, 0]);
        // All out: tried all the same, in the plain order.
        b.failed(1);
        b.failed(2);
        assert_eq!(attempts(&b, 1), [1, 2, 0]);
        // An answer clears the mark.
        b.answered(1);
        assert_eq!(attempts(&b, 0), [1, 2, 0]);
    }

    #[test]
    fn a_mark_expires_for_one_client_at_a_time_and_a_zero_timeout_never_marks() {
        let b = backends(2, Duration::from_millis(30));
        b.failed(0);
        assert_eq!(attempts(&b, 0), [1, 0]);
        std::thread::sleep(Duration::from_millis(40));
        // The first client after the mark ran out goes to see; the next still passes it over
        // until that one's answer comes.
        assert_eq!(attempts(&b, 0), [0, 1]);
        assert_eq!(attempts(&b, 0), [1, 0]);
        b.answered(0);
        assert_eq!(attempts(&b, 0), [0, 1]);
        let never = backends(2, Duration::ZERO);
        assert!(!never.failed(0));
        assert_eq!(attempts(&never, 0), [0, 1]);
    }

    /// Backends made again from the same round (a reload) keep its turns, and its marks
    /// while the list is the same; a different list starts with none (they were by position).
    #[test]
    fn a_reload_keeps_the_round_and_a_new_list_clears_its_marks() {
        let round = Arc::new(SharedRound::new().unwrap());
        let list = |ports: &[u16]| -> Vec<SocketAddr> {
            ports
                .iter()
                .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect()
        };
        let ten = Duration::from_secs(10);
        let first = Backends::new(list(&[1, 2]), ten, round.clone()).unwrap();
        assert_eq!((first.ticket(), first.ticket()), (0, 1));
        assert!(first.failed(1));
        let same = Backends::new(list(&[1, 2]), ten, round.clone()).unwrap();
        assert!(same.is_down(1, &mut None));
        assert_eq!(same.ticket(), 2);
        let other = Backends::new(list(&[3, 2]), ten, round.clone()).unwrap();
        assert!(!other.is_down(1, &mut None) && !first.is_down(1, &mut None));
        assert_eq!(other.ticket(), 3);
    }

    #[test]
    fn tried_holds_more_than_64() {
        let mut t = Tried::default();
        for i in [0, 63, 64, 130] {
            assert!(!t.has(i));
            t.mark(i);
            assert!(t.has(i));
        }
        assert!(!t.has(1) && !t.has(65) && !t.has(129));
        let b = backends(70, Duration::from_secs(10));
        let order = attempts(&b, 68);
        assert_eq!(order.len(), 70);
        assert_eq!(&order[..3], [68, 69, 0]);
    }
}

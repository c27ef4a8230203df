//! tokio-chat: the yardstick for `bench/chat`.
//!
//! An idiomatic tokio chat server that speaks exactly keel's chat protocol (see keel's
//! `src/services/chat/mod.rs`), so one load generator can drive both:
//!
//! - a frame is a u32 big-endian `length` (the kind byte and the body), a kind byte, a body;
//!   an incoming `length` of 0 or over 65536 is answered with an ERROR frame and a close;
//! - client to server: SAY 0x01 (empty ones are ignored), NICK 0x02, PING 0x10 (answered with
//!   a PONG 0x11 carrying the same body), PONG 0x11 (ignored); any other kind is an ERROR;
//! - server to client: NOTICE 0x04 (the first is `welcome guest-N`), MSG 0x03
//!   (`[u8 name length][name][text]`, to every member, the speaker included), ERROR 0x7f.
//!
//! Shape: each connection has a reader task and a writer task, joined by a bounded mpsc
//! channel of encoded frames (`Arc<[u8]>`). The room maps member ids to their channels; a
//! member joins in the accept loop (as keel's join on accept), its welcome already queued. A
//! speaker encodes a MSG once and `try_send`s it to every member. One speaker's messages
//! reach every member in order (one sender, FIFO channels). A member whose channel is full
//! ([`QUEUE_FRAMES`] frames waiting) is a slow consumer and is dropped, as keel drops a
//! member whose queue passes its high-water mark. The writer batches: it takes everything
//! ready in its channel and writes it with one `write_all`. TCP_NODELAY is set on every
//! accepted socket, as keel does.
//!
//! No heartbeats: keel pings a member silent for 15 s (its default), which never happens in
//! a benchmark run of a few seconds, so this server only answers the client's PINGs.
//!
//! Usage: `tokio-chat --listen ADDR [--threads N]` (ADDR is `IP:PORT`, port 0 picks a free
//! port; N defaults to 1: a `current_thread` runtime, the shape of one keel event loop; N > 1
//! is a `multi_thread` runtime with N workers). Once bound it prints `listening tcp ADDR`
//! (the real bound address) to stdout and flushes. SIGINT / SIGTERM: stop and exit 0.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::{AbortHandle, JoinHandle};

const SAY: u8 = 0x01;
const NICK: u8 = 0x02;
const MSG: u8 = 0x03;
const NOTICE: u8 = 0x04;
const PING: u8 = 0x10;
const PONG: u8 = 0x11;
const ERROR: u8 = 0x7f;

/// Bytes of the length field.
const HEADER: usize = 4;
/// The largest incoming frame `length` (kind byte and body): keel's default.
const MAX_FRAME: usize = 64 * 1024;
/// The longest name, in bytes.
const MAX_NAME: usize = 32;
/// Frames that may wait for one member before it counts as a slow consumer and is dropped.
/// Keel drops a member with more than 1 MiB waiting; at the benchmark's 64-byte messages
/// (frames of about 80 bytes) that is some 13,000 frames. (A reader takes a whole read's worth
/// of frames before the writer runs, so a speaker that sends a burst without reading fills
/// its own queue by that many at once: a small cap would drop it where keel keeps it.) The
/// channel allocates its slots as they are used, so the cap costs nothing until it is.
const QUEUE_FRAMES: usize = 16 * 1024;
/// The most frames a writer takes for one write.
const WRITE_BATCH: usize = 1024;
/// The most connections accepted and joined in one go.
const ACCEPT_BATCH: usize = 1024;
/// Spare room asked of the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// A writer's batch buffer is given back when a batch made it larger than this.
const KEEP_OUT: usize = 1 << 20;
/// How long a refused connection's input is read and thrown away after the ERROR frame and
/// our FIN, so that closing with unread input (a reset) does not destroy the ERROR frame
/// before the client has read it.
const LINGER: Duration = Duration::from_secs(1);

/// Listen backlog: keel's default.
const BACKLOG: u32 = 4096;

const USAGE: &str = "usage: tokio-chat --listen IP:PORT [--threads N]";

/// Guest numbers, which are also member ids: the first connection is `guest-1`.
static NEXT_GUEST: AtomicU64 = AtomicU64::new(1);
/// Whether a slow member was ever dropped (said once on stderr).
static SLOW_SAID: AtomicBool = AtomicBool::new(false);

type Frame = Arc<[u8]>;

struct Args {
    listen: SocketAddr,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut listen: Option<String> = None;
    let mut threads: Option<String> = None;
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = Some(args.next().ok_or("--listen needs a value")?);
        } else if let Some(v) = arg.strip_prefix("--listen=") {
            listen = Some(v.to_string());
        } else if arg == "--threads" {
            threads = Some(args.next().ok_or("--threads needs a value")?);
        } else if let Some(v) = arg.strip_prefix("--threads=") {
            threads = Some(v.to_string());
        } else if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        } else {
            return Err(format!("unexpected argument {arg:?}"));
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    let listen = listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("bad --listen address {listen:?}: {e}"))?;
    let threads = match threads {
        None => 1,
        Some(t) => match t.parse::<usize>() {
            Ok(n @ 1..=1024) => n,
            _ => return Err(format!("bad --threads {t:?}: want 1 to 1024")),
        },
    };
    Ok(Args { listen, threads })
}

/// Appends one frame of `kind` whose body is `parts`, one after the other, to `out`.
fn encode(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    // Bodies are bounded by what we take in (MAX_FRAME) plus a name: far below u32::MAX.
    out.extend_from_slice(&(body as u32 + 1).to_be_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn frame(kind: u8, parts: &[&[u8]]) -> Frame {
    let mut out = Vec::new();
    encode(&mut out, kind, parts);
    out.into()
}

/// What the front of the read buffer holds.
enum Decoded {
    /// A whole frame: its kind, where its body ends, and where the frame ends (both counted
    /// from the front).
    Frame { kind: u8, end: usize },
    /// Not a whole frame yet: at least `need` bytes must be buffered.
    Partial { need: usize },
}

/// Looks for one frame at the start of `input`; the header alone decides a refusal, before
/// any of the body is buffered.
fn decode(input: &[u8]) -> Result<Decoded, String> {
    let Some(header) = input.first_chunk::<HEADER>() else {
        return Ok(Decoded::Partial { need: HEADER });
    };
    let length = u32::from_be_bytes(*header) as usize;
    if length == 0 {
        return Err("a frame of length 0 (a frame has a kind byte)".to_string());
    }
    if length > MAX_FRAME {
        return Err(format!(
            "a frame of {length} bytes, over the limit of {MAX_FRAME}"
        ));
    }
    let end = HEADER + length;
    match input.get(HEADER) {
        Some(&kind) if input.len() >= end => Ok(Decoded::Frame { kind, end }),
        _ => Ok(Decoded::Partial { need: end }),
    }
}

/// Whether `name` may be a member's name: 1 to 32 bytes of UTF-8 without control characters.
fn valid_name(name: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && std::str::from_utf8(name).is_ok_and(|s| !s.chars().any(char::is_control))
}

/// A member as the room sees it: its channel, and how to stop its writer when it is slow.
struct Member {
    tx: mpsc::Sender<Frame>,
    writer: AbortHandle,
}

/// Everyone connected. Speakers share the read lock (`try_send` never waits); joins, leaves
/// and drops take the write lock.
#[derive(Default)]
struct Room {
    members: RwLock<HashMap<u64, Member>>,
}

impl Room {
    /// Removes `id`; its writer still sends what is queued (a graceful leave).
    fn leave(&self, id: u64) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        members.remove(&id);
    }

    /// Queues `frame` for every member; a member whose queue is full is dropped.
    fn broadcast(&self, frame: &Frame) {
        let mut slow: Vec<u64> = Vec::new();
        {
            let members = self.members.read().unwrap_or_else(|e| e.into_inner());
            for (&id, m) in members.iter() {
                match m.tx.try_send(Arc::clone(frame)) {
                    // Closed: its writer has ended; its reader is leaving.
                    Ok(()) | Err(TrySendError::Closed(_)) => {}
                    Err(TrySendError::Full(_)) => slow.push(id),
                }
            }
        }
        for id in slow {
            self.drop_slow(id);
        }
    }

    /// Drops a member that reads too slowly: out of the room, and its writer stopped (which
    /// its reader sees, and ends too) without sending what was queued.
    fn drop_slow(&self, id: u64) {
        let gone = {
            let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
            members.remove(&id)
        };
        if let Some(m) = gone {
            m.writer.abort();
            if !SLOW_SAID.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "tokio-chat: dropped guest-{id}, which read too slowly ({QUEUE_FRAMES} \
                     frames were waiting for it); further drops are not reported"
                );
            }
        }
    }
}

/// The writer task: everything queued for one member, in order, batched.
async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Frame>) {
    let mut frames: Vec<Frame> = Vec::with_capacity(WRITE_BATCH);
    let mut out: Vec<u8> = Vec::new();
    // Ends when every sender is gone (the member left and the room forgot it) and the queue
    // is empty, or at a write error.
    while rx.recv_many(&mut frames, WRITE_BATCH).await > 0 {
        let res = if let [one] = frames.as_slice() {
            wr.write_all(one).await
        } else {
            out.clear();
            for f in &frames {
                out.extend_from_slice(f);
            }
            wr.write_all(&out).await
        };
        frames.clear();
        if out.capacity() > KEEP_OUT {
            out = Vec::new();
        }
        if res.is_err() {
            return;
        }
    }
    // Our FIN, after everything queued.
    let _ = wr.shutdown().await;
}

/// How one frame went.
enum Step {
    Go,
    /// Refuse the client: an ERROR frame with this reason, then a close.
    Refuse(String),
    /// Its own queue is full: it does not read.
    Slow,
}

/// The reader's side of one member.
struct Reader {
    id: u64,
    name: String,
    room: Arc<Room>,
    tx: mpsc::Sender<Frame>,
    /// Reused to encode MSG frames before they are copied into one shared allocation.
    scratch: Vec<u8>,
}

impl Reader {
    /// Queues a reply for this member alone.
    fn reply(&self, frame: Frame) -> Step {
        match self.tx.try_send(frame) {
            Ok(()) | Err(TrySendError::Closed(_)) => Step::Go,
            Err(TrySendError::Full(_)) => Step::Slow,
        }
    }

    fn on_frame(&mut self, kind: u8, body: &[u8]) -> Step {
        match kind {
            SAY if body.is_empty() => Step::Go,
            SAY => {
                let name = self.name.as_bytes();
                self.scratch.clear();
                encode(&mut self.scratch, MSG, &[&[name.len() as u8], name, body]);
                let msg: Frame = Arc::from(self.scratch.as_slice());
                self.room.broadcast(&msg);
                Step::Go
            }
            NICK if valid_name(body) => {
                self.name = String::from_utf8_lossy(body).into_owned();
                self.reply(frame(NOTICE, &[b"you are now ", self.name.as_bytes()]))
            }
            NICK => self.reply(frame(
                NOTICE,
                &[format!(
                    "name refused: a name is 1 to {MAX_NAME} bytes of UTF-8 without control \
                     characters"
                )
                .as_bytes()],
            )),
            PING => self.reply(frame(PONG, &[body])),
            PONG => Step::Go,
            other => Step::Refuse(format!("unexpected frame kind 0x{other:02x} from a client")),
        }
    }
}

/// How a member's reading ended.
enum End {
    /// The client's FIN: it has left. What is queued for it still goes out, then our FIN.
    PeerFin,
    Refuse(String),
    Slow,
    /// A read error, or the writer ended (a write error, or dropped as slow by a speaker).
    Broken,
}

/// New connections, welcomed and put in the room in one step: their writers are started
/// and they join under the room's write lock, which every broadcast needs (as keel's loop
/// accepts all it can before it reads). So no message is said between a welcome leaving and
/// its member joining: a client that has read its welcome hears every message said after
/// that, and hears the welcome first. Then each member's reader runs in a task of its own.
fn admit(room: &Arc<Room>, streams: Vec<TcpStream>) {
    let mut joining = Vec::with_capacity(streams.len());
    for stream in streams {
        let _ = stream.set_nodelay(true);
        let id = NEXT_GUEST.fetch_add(1, Ordering::Relaxed);
        let name = format!("guest-{id}");
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Frame>(QUEUE_FRAMES);
        // Queued while no one else can reach the queue, so it comes before any MSG.
        let _ = tx.try_send(frame(NOTICE, &[b"welcome ", name.as_bytes()]));
        let me = Reader {
            id,
            name,
            room: Arc::clone(room),
            tx,
            scratch: Vec::new(),
        };
        joining.push((me, rd, wr, rx));
    }
    let mut readers = Vec::with_capacity(joining.len());
    {
        let mut members = room.members.write().unwrap_or_else(|e| e.into_inner());
        for (me, rd, wr, rx) in joining {
            let writer = tokio::spawn(write_loop(wr, rx));
            let member = Member {
                tx: me.tx.clone(),
                writer: writer.abort_handle(),
            };
            members.insert(me.id, member);
            readers.push((me, rd, writer));
        }
    }
    for (me, rd, writer) in readers {
        tokio::spawn(read_loop(me, rd, writer));
    }
}

/// Moves the connections that are ready now, without waiting, into `batch` (up to
/// [`ACCEPT_BATCH`]).
fn accept_ready(listener: &TcpListener, batch: &mut Vec<TcpStream>) {
    let mut cx = Context::from_waker(Waker::noop());
    while batch.len() < ACCEPT_BATCH {
        match listener.poll_accept(&mut cx) {
            Poll::Ready(Ok((stream, _peer))) => batch.push(stream),
            // Nothing more for now; an error is left for the next `accept` to report.
            Poll::Ready(Err(_)) | Poll::Pending => break,
        }
    }
}

/// One member's reader: frames until the end, then leave.
async fn read_loop(mut me: Reader, mut rd: OwnedReadHalf, mut writer: JoinHandle<()>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let end = 'read: loop {
        // Every whole frame buffered.
        let mut at = 0;
        let need = loop {
            match decode(&buf[at..]) {
                Ok(Decoded::Frame { kind, end }) => {
                    let step = me.on_frame(kind, &buf[at + HEADER + 1..at + end]);
                    at += end;
                    match step {
                        Step::Go => {}
                        Step::Refuse(why) => break 'read End::Refuse(why),
                        Step::Slow => break 'read End::Slow,
                    }
                }
                Ok(Decoded::Partial { need }) => break need,
                Err(why) => break 'read End::Refuse(why),
            }
        };
        buf.drain(..at);
        buf.reserve(need.saturating_sub(buf.len()).max(READ_CHUNK));
        tokio::select! {
            biased;
            res = rd.read_buf(&mut buf) => match res {
                Ok(0) => break End::PeerFin,
                Ok(_) => {}
                Err(_) => break End::Broken,
            },
            _ = &mut writer => break End::Broken,
        }
    };

    me.room.leave(me.id);
    match end {
        End::PeerFin => {
            drop(me);
            let _ = writer.await;
        }
        End::Refuse(why) => {
            let _ = me.tx.try_send(frame(ERROR, &[why.as_bytes()]));
            drop(me);
            // The writer flushes the ERROR frame and sends our FIN; then what the client
            // still sends is read and thrown away for a while (see LINGER).
            let _ = tokio::time::timeout(LINGER, async {
                let _ = writer.await;
                discard(&mut rd).await;
            })
            .await;
        }
        End::Slow | End::Broken => writer.abort(),
    }
}

/// Reads and throws away until EOF or an error; the caller bounds it in time.
async fn discard(rd: &mut OwnedReadHalf) {
    let mut sink = vec![0u8; READ_CHUNK];
    while let Ok(n) = rd.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Binds `addr` with keel's listen backlog. (`TcpListener::bind` asks for 128, which a
/// thousand members joining at once overflow: their handshakes would then be retried over
/// seconds and the run would measure SYN-ACK timers, not the server.)
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn serve(addr: SocketAddr) -> ExitCode {
    let listener = match listen(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tokio-chat: cannot bind {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tokio-chat: local_addr: {e}");
            return ExitCode::from(1);
        }
    };

    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("tokio-chat: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };

    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening tcp {local}");
        let _ = out.flush();
    }

    let room = Arc::new(Room::default());
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _peer)) => {
                    let mut batch = vec![stream];
                    accept_ready(&listener, &mut batch);
                    admit(&room, batch);
                }
                Err(e) => {
                    // EMFILE/ENFILE and friends: the listener stays readable, so back off
                    // briefly instead of spinning.
                    eprintln!("tokio-chat: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tokio-chat: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio-chat: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(serve(args.listen));
    // Members still connected are not waited for.
    runtime.shutdown_background();
    code
}

//! uring-echo: a proactor echo server on io_uring, a question put to `bench/echo`.
//!
//! Would a completion engine beat keel's readiness loop on ping-pong echo? io_uring's promise is
//! fewer kernel crossings: every `recv` and `send` that became possible during one turn is
//! submitted together, and one `io_uring_enter` both submits them and waits for the next
//! completions, with no `epoll_wait` at all. This is the simplest server that takes that
//! promise at its word, on one thread like `keel echo --threads 1`:
//!
//! - a multishot accept; each connection owns a 64 KiB buffer and always has exactly one
//!   operation in flight: a `recv` into its buffer, or a `send` of what that recv brought
//!   (resubmitted for the rest after a short send);
//! - each turn drains the completion queue, queues the follow-up operations, and submits them
//!   in the same `submit_and_wait(1)` that waits for the next completion;
//! - `--defer` sets up the ring with SINGLE_ISSUER | DEFER_TASKRUN (kernel 6.1+), so that
//!   completion work runs only inside that call, batched, never by interrupting the thread.
//!
//! - `--multishot` (see `multishot.rs`): one multishot `recv` per connection, armed once, on
//!   a ring of provided buffers, so that a message costs one submission instead of two.
//!
//! Usage: `uring-echo --listen IP:PORT [--defer] [--multishot]`. Prints `listening tcp ADDR`
//! once bound.
//! SIGINT / SIGTERM (read from a signalfd through the ring itself): exit 0.

use std::io::Write;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use io_uring::{opcode, squeue, types, IoUring};

mod multishot;

const BUF_SIZE: usize = 64 * 1024;
const RING_ENTRIES: u32 = 4096;
/// user_data of the accept and signal operations; connection operations carry
/// `slot << 1 | is_send`, which never reaches these.
const ACCEPT: u64 = u64::MAX;
const SIGNAL: u64 = u64::MAX - 1;

struct Conn {
    fd: OwnedFd,
    buf: Box<[u8]>,
    /// Bytes of `buf` the last recv brought, and how many of them are sent.
    len: usize,
    sent: usize,
}

fn parse_args() -> Result<(SocketAddr, bool, bool), String> {
    let mut listen = None;
    let mut defer = false;
    let mut multi = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = Some(args.next().ok_or("--listen needs a value")?),
            "--defer" => defer = true,
            "--multishot" => multi = true,
            "-h" | "--help" => {
                println!("usage: uring-echo --listen IP:PORT [--defer] [--multishot]");
                std::process::exit(0);
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    let addr = listen
        .parse()
        .map_err(|e| format!("bad --listen address {listen:?}: {e}"))?;
    Ok((addr, defer, multi))
}

/// Blocks SIGINT and SIGTERM and returns a signalfd that reads them.
fn signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain libc calls on a local, zero-initialised sigset; the returned fd is
    // checked and then owned by exactly one OwnedFd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket we own; the option value is a live local c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A multishot accept whose sockets come close-on-exec.
fn accept(listener: &TcpListener) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(ACCEPT)
}

fn recv(slot: usize, c: &mut Conn) -> squeue::Entry {
    opcode::Recv::new(
        types::Fd(c.fd.as_raw_fd()),
        c.buf.as_mut_ptr(),
        c.buf.len() as u32,
    )
    .build()
    .user_data((slot as u64) << 1)
}

fn send(slot: usize, c: &Conn) -> squeue::Entry {
    let rest = &c.buf[c.sent..c.len];
    opcode::Send::new(
        types::Fd(c.fd.as_raw_fd()),
        rest.as_ptr(),
        rest.len() as u32,
    )
    .build()
    .user_data(((slot as u64) << 1) | 1)
}

fn run(addr: SocketAddr, defer: bool, multi: bool) -> std::io::Result<()> {
    let signals = signal_fd()?;
    let listener = TcpListener::bind(addr)?;
    println!("listening tcp {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let mut builder = IoUring::builder();
    if defer {
        builder.setup_single_issuer().setup_defer_taskrun();
    } else {
        builder.setup_coop_taskrun();
    }
    let mut ring: IoUring = builder.build(RING_ENTRIES)?;
    // Never freed: whenever we return, connections still have a recv in flight, and the kernel
    // may write into their buffers until the ring is torn down (closing an fd does not cancel
    // an operation on it). The process exits right after, so leaking them is the simple safe
    // way out; the same goes for the signal read's buffer.
    let mut conns: ManuallyDrop<Vec<Option<Conn>>> = ManuallyDrop::new(Vec::new());
    let mut free: Vec<usize> = Vec::new();
    let sigbuf: &'static mut [u8] =
        Box::leak(vec![0u8; std::mem::size_of::<libc::signalfd_siginfo>()].into_boxed_slice());
    let mut next: Vec<squeue::Entry> = vec![
        accept(&listener),
        opcode::Read::new(
            types::Fd(signals.as_raw_fd()),
            sigbuf.as_mut_ptr(),
            sigbuf.len() as u32,
        )
        .build()
        .user_data(SIGNAL),
    ];
    if multi {
        return multishot::run(ring, &listener, next);
    }
    let mut done = Vec::new();
    loop {
        {
            let mut sq = ring.submission();
            for e in next.drain(..) {
                // SAFETY: every buffer an entry points to outlives its operation: connection
                // buffers are boxed, a slot is freed only once its single in-flight operation
                // has completed, and none is freed on return (`conns` is never dropped);
                // `sigbuf` is leaked; `listener` outlives the ring, which is dropped first. The queue has room:
                // at most one entry per connection plus two are ever pending, fewer than
                // RING_ENTRIES (the accept loop refuses connections beyond that).
                unsafe { sq.push(&e).expect("submission queue has room") };
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &done {
            match data {
                SIGNAL => return Ok(()),
                ACCEPT => {
                    if !io_uring::cqueue::more(flags) {
                        // The kernel ended the multishot accept (e.g. on an error): rearm it.
                        // (Under fd exhaustion this bench peer retries at once; it is not a
                        // server to run out of fds with.)
                        next.push(accept(&listener));
                    }
                    if res < 0 {
                        continue; // EMFILE and the like: this bench peer just skips it
                    }
                    // SAFETY: a successful accept completion hands us a new fd we alone own.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    if conns.len() - free.len() >= RING_ENTRIES as usize - 8 {
                        continue; // dropping `fd` closes it
                    }
                    set_nodelay(fd.as_raw_fd());
                    let mut c = Conn {
                        fd,
                        buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
                        len: 0,
                        sent: 0,
                    };
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    next.push(recv(slot, &mut c));
                    conns[slot] = Some(c);
                }
                _ => {
                    let slot = (data >> 1) as usize;
                    let was_send = data & 1 == 1;
                    let Some(c) = conns[slot].as_mut() else {
                        continue;
                    };
                    if res <= 0 {
                        // EOF or an error: the connection's only operation has completed,
                        // so its buffer can go (and the fd is closed with it).
                        conns[slot] = None;
                        free.push(slot);
                        continue;
                    }
                    if was_send {
                        c.sent += res as usize;
                    } else {
                        c.len = res as usize;
                        c.sent = 0;
                    }
                    if c.sent < c.len {
                        next.push(send(slot, c));
                    } else {
                        next.push(recv(slot, c));
                    }
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let (addr, defer, multi) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("uring-echo: {e}");
            return ExitCode::from(2);
        }
    };
    match run(addr, defer, multi) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uring-echo: {e}");
            ExitCode::from(1)
        }
    }
}

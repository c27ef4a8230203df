//! tokio-echo: the yardstick for `bench/echo`.
//!
//! A plain, idiomatic tokio TCP echo server on a `current_thread` runtime (one thread, the same
//! shape as one keel event loop). One task per connection with a reusable 64 KiB buffer that
//! reads and `write_all`s back. TCP_NODELAY is set on every accepted socket, as keel does.
//!
//! Usage: `tokio-echo --listen ADDR` (ADDR is `IP:PORT`, port 0 picks a free port).
//! Once bound it prints `listening tcp ADDR` (the real bound address) to stdout and flushes.
//! SIGINT / SIGTERM: stop and exit 0.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// Per-connection buffer, allocated once per connection and reused for every read.
const BUF_SIZE: usize = 64 * 1024;

const USAGE: &str = "usage: tokio-echo --listen IP:PORT";

fn parse_args() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen: Option<String> = None;
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = Some(args.next().ok_or("--listen needs a value")?);
        } else if let Some(v) = arg.strip_prefix("--listen=") {
            listen = Some(v.to_string());
        } else if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        } else {
            return Err(format!("unexpected argument {arg:?}"));
        }
    }
    let listen = listen.ok_or("--listen is required")?;
    listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("bad --listen address {listen:?}: {e}"))
}

async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let addr = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tokio-echo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tokio-echo: cannot bind {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tokio-echo: local_addr: {e}");
            return ExitCode::from(1);
        }
    };

    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("tokio-echo: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };

    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening tcp {local}");
        let _ = out.flush();
    }

    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(echo(stream));
                }
                Err(e) => {
                    // EMFILE/ENFILE and friends: the listener stays readable, so back off
                    // briefly instead of spinning.
                    eprintln!("tokio-echo: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    ExitCode::SUCCESS
}

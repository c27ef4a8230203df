//! `EventLoop::write_batched`: output held to the end of the loop's turn, then sent in one
//! write per connection. What it must keep: order with plain writes, every byte (also when the
//! socket fills and level-triggered engines must turn write interest on), the FIN after the
//! bytes when the handler closes, and a bound on what it holds back. Library API, every engine.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use keel::net::{Buffer, Ctx, Handler, BATCH_LIMIT};
use keel::reactor::Engine;

use util::lib_server::{config, serve_with_client, stop_loop};

/// For each line received: the line's number of batched 1 KiB blocks of its first byte, then a
/// plain write of "end\n"; "close" closes after batching 3 MiB.
struct Batcher;

impl Handler for Batcher {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        while let Some(nl) = input.find_byte(b'\n') {
            let line = input.take_bytes(nl + 1);
            let id = cx.id();
            let el = cx.event_loop().expect("on the loop");
            if line == b"close\n" {
                for _ in 0..3 * 1024 {
                    el.write_batched(id, &[b'c'; 1024]);
                }
                cx.close();
                return;
            }
            let n: usize = std::str::from_utf8(&line[1..nl]).unwrap().parse().unwrap();
            for _ in 0..n {
                el.write_batched(id, &[line[0]; 1024]);
            }
            if n * 1024 < BATCH_LIMIT {
                // Held back until the end of the turn (a plain write would have sent it).
                assert_eq!(el.output_len(id), n * 1024);
            }
            // Queued behind the batched bytes, whatever is still held.
            cx.write(b"end\n");
        }
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: keel::net::CloseReason) {
        stop_loop(cx);
    }
}

#[test]
fn batched_output_keeps_order_and_every_byte_then_the_fin() {
    for engine in Engine::ALL {
        let (_el, got) = serve_with_client(
            config(engine),
            || Box::new(Batcher),
            Duration::from_secs(30),
            |addr| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                // Small: one turn's worth, sent at the end of it, before "end".
                s.write_all(b"a3\n").unwrap();
                let mut small = vec![0u8; 3 * 1024 + 4];
                s.read_exact(&mut small).unwrap();
                // Large: 8 MiB, past the batch limit many times and past the socket's room.
                s.write_all(b"b8192\n").unwrap();
                let mut large = vec![0u8; 8192 * 1024 + 4];
                s.read_exact(&mut large).unwrap();
                s.write_all(b"close\n").unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                (small, large, rest)
            },
        );
        let (small, large, rest) = got;
        assert!(small[..3 * 1024].iter().all(|&b| b == b'a'), "{engine}");
        assert_eq!(&small[3 * 1024..], b"end\n", "{engine}");
        assert!(large[..8192 * 1024].iter().all(|&b| b == b'b'), "{engine}");
        assert_eq!(&large[8192 * 1024..], b"end\n", "{engine}");
        assert_eq!(rest.len(), 3 << 20, "{engine}: all of it, then EOF");
        assert!(rest.iter().all(|&b| b == b'c'), "{engine}");
    }
}

/// Streams `CHUNKS` × 1 KiB, each queued with `write_batched`: the first in `on_connect`, the
/// next from each `on_drained` (a producer that makes the next chunk when the last has left),
/// then closes.
struct Streamer {
    sent: usize,
}

const CHUNKS: usize = 50;

impl Streamer {
    fn next(&mut self, cx: &mut Ctx<'_>) {
        if self.sent == CHUNKS {
            cx.close();
            return;
        }
        self.sent += 1;
        let id = cx.id();
        cx.event_loop()
            .expect("on the loop")
            .write_batched(id, &[b'x'; 1024]);
    }
}

impl Handler for Streamer {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        self.next(cx);
    }
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
    fn on_drained(&mut self, cx: &mut Ctx<'_>) {
        self.next(cx);
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: keel::net::CloseReason) {
        stop_loop(cx);
    }
}

#[test]
fn a_batch_queued_from_on_drained_leaves_without_waiting_for_an_event() {
    // Found by review: the flush before the wait called `on_drained`, whose batch then waited
    // for an event that an edge-triggered poller never sends for a socket that never filled.
    for engine in Engine::ALL {
        let (_el, (len, eof)) = serve_with_client(
            config(engine),
            || Box::new(Streamer { sent: 0 }),
            Duration::from_secs(10),
            |addr| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut buf = Vec::new();
                let end = s.read_to_end(&mut buf);
                (buf.len(), end.is_ok())
            },
        );
        assert_eq!(len, CHUNKS * 1024, "{engine}");
        assert!(eof, "{engine}: the close came after the last chunk");
    }
}

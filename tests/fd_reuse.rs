//! A connection closed in its `on_connect` frees its fd number, and the next `accept` of the
//! same wake-up gets that number for another connection. Nothing the loop still had queued for
//! the first connection may reach the second: on io_uring a registration or a receive waits in
//! the submission queue naming its fd by number, and the kernel resolves the number only when
//! it takes the request (a receive queued for the closed connection once read the next one's
//! bytes, which were then dropped as the closed connection's).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel::net::{bind_tcp, Buffer, Ctx, Handler};
use keel::reactor::{Engine, EventLoop};

use util::lib_server::config;

struct Echo {
    abort_at_once: bool,
}

impl Handler for Echo {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        if self.abort_at_once {
            cx.abort();
        }
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        cx.write(input.as_slice());
        input.clear();
    }
}

/// Whether the second connection gets its echo, the first being aborted on connect when
/// `abort_first`.
fn second_connection_echoes(engine: Engine, abort_first: bool) -> bool {
    let mut el = EventLoop::new(config(engine)).unwrap();
    let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    el.add_listener(
        listener,
        Arc::new(move || -> Box<dyn Handler> {
            Box::new(Echo {
                abort_at_once: abort_first && n.fetch_add(1, Ordering::SeqCst) == 0,
            })
        }),
    )
    .unwrap();
    // Both connect (and the second sends) before the loop runs: one wake-up accepts both.
    let _first = TcpStream::connect(addr).unwrap();
    let mut second = TcpStream::connect(addr).unwrap();
    second.write_all(b"hello").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let h = el.handle();
    el.run_after(Duration::from_secs(5), |el| el.stop());
    let reader = std::thread::spawn(move || {
        second
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut buf = [0u8; 5];
        let ok = second.read_exact(&mut buf).is_ok() && &buf == b"hello";
        h.stop();
        ok
    });
    el.run().unwrap();
    reader.join().unwrap()
}

#[test]
fn a_connection_closed_on_connect_leaves_nothing_for_the_next_one_with_its_fd_number() {
    for engine in Engine::ALL {
        assert!(
            second_connection_echoes(engine, false),
            "{engine}: the control case (no abort) failed"
        );
        assert!(
            second_connection_echoes(engine, true),
            "{engine}: the second connection got no echo"
        );
    }
}

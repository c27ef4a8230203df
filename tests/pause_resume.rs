//! Backpressure through `pause_read`/`resume_read` on every engine, through the library API:
//! bytes and the peer's FIN that arrive while reading is paused are not lost on resume. (An
//! edge-triggered poller reports them once, while paused; the loop must remember.)

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use keel::net::{Buffer, CloseReason, Ctx, Handler};
use keel::reactor::Engine;

use util::lib_server::{config, serve_with_client, stop_loop};

/// Echoes; pauses reading after the first bytes and resumes 200 ms later.
struct PausingEcho {
    paused_once: bool,
}

impl Handler for PausingEcho {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        cx.write(input.as_slice());
        input.clear();
        if !self.paused_once {
            self.paused_once = true;
            cx.pause_read();
            cx.set_timer(Duration::from_millis(200), 1);
        }
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, _tag: u64) {
        cx.resume_read();
    }
    fn on_close(&mut self, cx: &mut Ctx<'_>, reason: CloseReason) {
        assert_eq!(reason, CloseReason::Normal);
        stop_loop(cx);
    }
}

#[test]
fn data_and_fin_that_arrive_while_paused_are_read_on_resume() {
    for engine in Engine::ALL {
        let (_el, rest) = serve_with_client(
            config(engine),
            || Box::new(PausingEcho { paused_once: false }),
            Duration::from_secs(10),
            |addr| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"first").unwrap();
                let mut got = [0u8; 5];
                s.read_exact(&mut got).unwrap();
                // The server is paused now: send more, then our FIN, both while it is not reading.
                s.write_all(b"second").unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).map(|_| rest)
            },
        );
        assert_eq!(
            rest.expect("server closed after echoing what came while paused")
                .as_slice(),
            b"second",
            "engine {engine}"
        );
    }
}

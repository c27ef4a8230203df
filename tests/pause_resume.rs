//! Backpressure through `pause_read`/`resume_read` on every engine, through the library API:
//! bytes and the peer's FIN that arrive while reading is paused are not lost on resume. (An
//! edge-triggered poller reports them once, while paused; the loop must remember.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use keel::net::{bind_tcp, Buffer, CloseReason, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig};

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
        cx.event_loop()
            .expect("handlers run on the loop thread")
            .stop();
    }
}

#[test]
fn data_and_fin_that_arrive_while_paused_are_read_on_resume() {
    for engine in Engine::ALL {
        let mut el = EventLoop::new(LoopConfig {
            engine,
            ..LoopConfig::default()
        })
        .unwrap();
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
        let addr = listener.local_addr().unwrap();
        el.add_listener(
            listener,
            Arc::new(|| Box::new(PausingEcho { paused_once: false }) as Box<dyn Handler>),
        )
        .unwrap();
        el.run_after(Duration::from_secs(10), |el| el.stop());
        let client = std::thread::spawn(move || {
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
        });
        el.run().unwrap();
        let rest = client.join().unwrap();
        assert_eq!(
            rest.expect("server closed after echoing what came while paused")
                .as_slice(),
            b"second",
            "engine {engine}"
        );
    }
}

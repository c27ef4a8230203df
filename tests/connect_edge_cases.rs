//! Outgoing connections at the edges, through the library API on loopback: a greeting that
//! arrives together with the handshake is read (edge-triggered reports it only once), and a close
//! requested before the handshake finished still sends the FIN and ends the connection.

mod util;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use keel::net::{Buffer, CloseReason, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig};

use util::lib_server::{accept_one, config, stop_loop};

struct Greeted {
    tx: mpsc::Sender<Vec<u8>>,
}

impl Handler for Greeted {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        let _ = self.tx.send(input.as_slice().to_vec());
        input.clear();
        stop_loop(cx);
    }
}

#[test]
fn greeting_that_arrives_with_the_connect_is_read() {
    let mut failures = Vec::new();
    for engine in Engine::ALL {
        let (addr, server) = accept_one(|mut s| {
            s.write_all(b"220 hello\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        });
        let mut el = EventLoop::new(config(engine)).unwrap();
        let (tx, rx) = mpsc::channel();
        el.connect(addr, Duration::from_secs(2), Box::new(Greeted { tx }))
            .unwrap();
        // Handshake and greeting both land before the loop's first wait.
        std::thread::sleep(Duration::from_millis(200));
        el.run_after(Duration::from_secs(1), |el| el.stop());
        el.run().unwrap();
        match rx.try_recv() {
            Ok(b) if b == b"220 hello\r\n" => {}
            other => failures.push(format!("{engine}: greeting not delivered ({other:?})")),
        }
        server.join().unwrap();
    }
    assert!(failures.is_empty(), "{failures:?}");
}

struct Quiet {
    tx: mpsc::Sender<CloseReason>,
}

impl Handler for Quiet {
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
    fn on_close(&mut self, _cx: &mut Ctx<'_>, reason: CloseReason) {
        let _ = self.tx.send(reason);
    }
}

#[test]
fn close_while_connecting_sends_fin_and_ends() {
    let mut failures = Vec::new();
    for engine in Engine::ALL {
        let (addr, server) = accept_one(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut buf = Vec::new();
            let r = s.read_to_end(&mut buf);
            drop(s); // our FIN, so a lingering client can finish
            r.map(|_| buf)
        });
        let mut el = EventLoop::new(LoopConfig {
            linger_timeout: Duration::from_millis(300),
            ..config(engine)
        })
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let id = el
            .connect(addr, Duration::from_secs(2), Box::new(Quiet { tx }))
            .unwrap();
        el.close(id); // changed our mind before the handshake finished
        el.run_after(Duration::from_millis(1500), |el| el.stop());
        el.run().unwrap();
        // Joined while `el` (and so the socket) is still alive: a FIN from dropping the loop
        // does not count.
        let server_saw = server.join().unwrap();
        let closed = rx.try_recv();
        if server_saw.is_err() || closed.is_err() {
            failures.push(format!(
                "{engine}: server read {:?}, on_close {:?}",
                server_saw.map_err(|e| e.kind()),
                closed
            ));
        }
        drop(el);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

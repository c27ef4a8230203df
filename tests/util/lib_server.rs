//! Helpers for the tests that drive keel through its library API (an [`EventLoop`] in the test
//! process) instead of the `keel` binary.
//!
//! Every run is bounded the same way the binary-driven helpers are: the loop gets a guard timer
//! that stops it, and clients and peers use their own timeouts.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use keel::net::{bind_tcp, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig};

/// The default loop configuration on `engine`; change other fields with
/// `LoopConfig { field, ..config(engine) }`.
pub fn config(engine: Engine) -> LoopConfig {
    LoopConfig {
        engine,
        ..LoopConfig::default()
    }
}

/// Stops the loop the handler runs on (for a handler whose close ends the test's run).
pub fn stop_loop(cx: &mut Ctx<'_>) {
    cx.event_loop()
        .expect("handlers run on the loop thread")
        .stop();
}

/// Serves one loopback listener on a new loop built from `cfg`, each connection getting a
/// handler from `factory`, while `client` runs on its own thread against the listener's address.
/// The loop runs until a handler stops it or `guard` passes (then the guard stops it); the
/// client thread is joined after that. Returns the loop (for its stats) and what the client
/// returned.
pub fn serve_with_client<T: Send + 'static>(
    cfg: LoopConfig,
    factory: impl Fn() -> Box<dyn Handler> + Send + Sync + 'static,
    guard: Duration,
    client: impl FnOnce(SocketAddr) -> T + Send + 'static,
) -> (EventLoop, T) {
    let mut el = EventLoop::new(cfg).unwrap();
    let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
    let addr = listener.local_addr().unwrap();
    el.add_listener(listener, Arc::new(factory)).unwrap();
    el.run_after(guard, |el| el.stop());
    let client = thread::spawn(move || client(addr));
    el.run().unwrap();
    let got = client.join().unwrap();
    (el, got)
}

/// A plain blocking peer on loopback for the loop's outgoing connections: binds a listener,
/// then on its own thread accepts one connection and hands it to `serve`. Returns the address to
/// connect to and the thread, whose result is what `serve` returned.
pub fn accept_one<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        serve(s)
    });
    (addr, peer)
}

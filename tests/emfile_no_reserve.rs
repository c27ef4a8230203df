//! DESIGN rule 6, "never busy-loop", in the worst case: at EMFILE with no reserve fd to free
//! (another thread took the slot), a level-triggered loop parks the listener instead of being
//! woken by it on every wait, and accepts again once fds are back.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use keel::net::{bind_tcp, Buffer, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig};

struct Nop;
impl Handler for Nop {
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
}

fn open_null() -> Option<OwnedFd> {
    rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

/// Wake-ups of a loop that sits at EMFILE without a reserve fd for 300 ms while one client
/// waits in its listener's backlog.
fn wakeups_at_emfile_without_reserve(engine: Engine, fds_the_loop_needs: usize) -> u64 {
    let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), &Default::default()).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    // The client socket exists before the fds run out; connecting takes no new fd.
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();

    let mut hog = Vec::new();
    while let Some(fd) = open_null() {
        hog.push(fd);
    }
    // Room for the loop's own fds (poller, eventfd) and nothing else: no reserve.
    for _ in 0..fds_the_loop_needs {
        hog.pop();
    }
    let mut el = EventLoop::new(LoopConfig {
        engine,
        ..LoopConfig::default()
    })
    .unwrap();
    assert!(
        open_null().is_none(),
        "the loop should have used every free fd"
    );
    el.add_listener(listener, Arc::new(|| Box::new(Nop) as Box<dyn Handler>))
        .unwrap();
    client.connect(&addr.into()).unwrap(); // completes in the backlog; accept will hit EMFILE

    el.run_after(Duration::from_millis(300), |el| el.stop());
    el.run().unwrap();
    let wakeups = el.stats().wakeups;
    drop(el);
    drop(hog);
    drop(client);
    wakeups
}

#[test]
fn emfile_without_reserve_does_not_spin() {
    let mut failures = Vec::new();
    for (engine, needs) in [
        (Engine::Poll, 1),
        (Engine::EpollLt, 2),
        (Engine::EpollEt, 2),
    ] {
        let w = wakeups_at_emfile_without_reserve(engine, needs);
        eprintln!("engine {engine}: {w} wake-ups in 300 ms");
        if w > 50 {
            failures.push(format!("{engine}: {w} wake-ups in 300 ms at EMFILE"));
        }
    }
    assert!(failures.is_empty(), "loop spun: {failures:?}");
}

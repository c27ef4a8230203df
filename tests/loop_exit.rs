//! When a loop that ends with its connections (`exit_when_empty`, as thread-per-conn's
//! are) may end: not before work that is already on its way has come. Library API.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use keel::net::{Buffer, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig};

struct Echo;

impl Handler for Echo {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        cx.write(input.as_slice());
        input.clear();
    }
}

#[test]
fn a_connection_handed_over_through_the_task_queue_is_served_before_the_loop_ends() {
    for engine in Engine::ALL {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let fd: OwnedFd = accepted.into();
        let mut el = EventLoop::new(LoopConfig {
            engine,
            ..LoopConfig::default()
        })
        .unwrap();
        el.exit_when_empty(true);
        // Posted before `run`, as an acceptor hands a socket to another loop; no timer is
        // pending, so nothing but the task can bring the loop work.
        let adopted = Arc::new(AtomicBool::new(false));
        let flag = adopted.clone();
        el.handle().post(move |el| {
            flag.store(true, Ordering::SeqCst);
            el.adopt(fd, Box::new(Echo)).unwrap();
        });
        let handle = el.handle();
        let watchdog = thread::spawn(move || {
            thread::sleep(Duration::from_secs(10));
            handle.stop(); // never hang the test
        });
        let talker = thread::spawn(move || {
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            client.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            let echoed = client.read_exact(&mut got).map(|()| got);
            drop(client); // the loop's one connection ends, and the loop with it
            echoed
        });
        let t = Instant::now();
        el.run().unwrap();
        assert!(
            adopted.load(Ordering::SeqCst),
            "{engine}: the posted adopt never ran"
        );
        assert_eq!(&talker.join().unwrap().unwrap(), b"ping", "{engine}");
        assert!(
            t.elapsed() < Duration::from_secs(9),
            "{engine}: {:?}",
            t.elapsed()
        );
        drop(watchdog); // detached; it only stops a loop that is gone
    }
}

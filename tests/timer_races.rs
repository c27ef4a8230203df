//! Timers that come due in the same loop iteration. The wheel hands over everything due before
//! the first callback runs, so a callback can cancel or re-arm a timer that is already on its
//! way out; the loop must then honour the cancel and the new deadline, not the old entry.
//! To put two timers in one batch, the test blocks the loop past both deadlines.

mod util;

use std::cell::RefCell;
use std::io::Read;
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keel::net::{Buffer, Ctx, Handler};
use keel::reactor::{Engine, EventLoop, LoopConfig, TimerKey};

use util::lib_server::{config, serve_with_client};

#[test]
fn a_task_cancelled_by_another_due_with_it_does_not_run() {
    let mut el = EventLoop::new(LoopConfig::default()).unwrap();
    let ran: Rc<RefCell<Vec<&str>>> = Rc::default();
    let keys: Rc<RefCell<Vec<TimerKey>>> = Rc::default();
    // Whichever runs first cancels the other.
    for (name, after, other) in [("a", 10, 1), ("b", 20, 0)] {
        let (ran, keys2) = (ran.clone(), keys.clone());
        let key = el.run_after(Duration::from_millis(after), move |el| {
            ran.borrow_mut().push(name);
            let other = keys2.borrow()[other];
            el.cancel_timer(other);
        });
        keys.borrow_mut().push(key);
    }
    el.run_after(Duration::from_millis(300), |el| el.stop());
    thread::sleep(Duration::from_millis(60)); // both are due before the loop first looks
    el.run().unwrap();
    assert_eq!(ran.borrow().len(), 1, "ran: {:?}", ran.borrow());
}

/// Arms tags 1 and 2 (10 and 20 ms) and blocks the loop for 60 ms, so both come due together.
/// `re_arm`: the first to fire sets the other again 150 ms later; otherwise it cancels it.
struct TwoTimers {
    re_arm: bool,
    start: Instant,
    fired: Arc<Mutex<Vec<(u64, Duration)>>>,
}

impl Handler for TwoTimers {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        cx.set_timer(Duration::from_millis(10), 1);
        cx.set_timer(Duration::from_millis(20), 2);
        thread::sleep(Duration::from_millis(60));
    }
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
    fn on_timer(&mut self, cx: &mut Ctx<'_>, tag: u64) {
        let mut fired = self.fired.lock().unwrap();
        let first = fired.is_empty();
        fired.push((tag, self.start.elapsed()));
        if first {
            let other = 3 - tag;
            if self.re_arm {
                cx.set_timer(Duration::from_millis(150), other);
            } else {
                cx.cancel_timer(other);
            }
        }
    }
}

fn run_two_timers(engine: Engine, re_arm: bool) -> Vec<(u64, Duration)> {
    let fired: Arc<Mutex<Vec<(u64, Duration)>>> = Arc::default();
    let f = fired.clone();
    let start = Instant::now();
    serve_with_client(
        config(engine),
        move || {
            Box::new(TwoTimers {
                re_arm,
                start,
                fired: f.clone(),
            })
        },
        Duration::from_millis(600),
        |addr| {
            // Hold the connection open while the timers play out, then go.
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = s.read(&mut [0u8; 1]);
        },
    );
    let fired = fired.lock().unwrap().clone();
    fired
}

#[test]
fn a_user_timer_cancelled_by_one_due_with_it_is_not_delivered() {
    for engine in Engine::ALL {
        let fired = run_two_timers(engine, false);
        assert_eq!(fired.len(), 1, "{engine:?}: delivered {fired:?}");
    }
}

#[test]
fn a_user_timer_re_armed_by_one_due_with_it_fires_once_at_its_new_deadline() {
    for engine in Engine::ALL {
        let fired = run_two_timers(engine, true);
        assert_eq!(fired.len(), 2, "{engine:?}: delivered {fired:?}");
        let (first, second) = (fired[0], fired[1]);
        assert_ne!(first.0, second.0, "{engine:?}: {fired:?}");
        // Re-armed at about 60 ms for 150 ms more: not the stale entry, which was due at once.
        assert!(
            second.1 >= first.1 + Duration::from_millis(140),
            "{engine:?}: the re-armed timer fired early: {fired:?}"
        );
    }
}

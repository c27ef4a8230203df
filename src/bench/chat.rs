//! `keel bench chat`: a room of `members`, of which `speakers` talk; each speaker says a
//! message, waits until the room hands it back to it, and says the next (one message in
//! flight per speaker). Every member counts what it hears. Measures messages said per second
//! and messages delivered per second (said × members, when no member falls behind): the
//! fan-out a chat server sustains. Speaks `keel chat`'s protocol (`services::chat`).
//!
//! Speakers start once every member has joined (its welcome notice arrived), so that every
//! message said has every member to reach, and the measured window starts then. When it ends the speakers fall silent and
//! the run waits (up to 5 s) for every message said to reach every member: a message lost
//! on the way shows as `undelivered`, not as a rate a little lower.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::frame;
use crate::net::{Buffer, CloseReason, Ctx, Handler};
use crate::reactor::{Engine, EventLoop, LoopConfig};
use crate::services::chat::{MSG, NOTICE, PING, PONG, SAY};

/// How long members may take to join before the run is given up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct ChatLoadOptions {
    pub addr: SocketAddr,
    pub members: usize,
    pub speakers: usize,
    /// Bytes of text per message.
    pub size: usize,
    pub duration: Duration,
    /// Load threads, each a loop with its share of the members.
    pub threads: usize,
}

#[derive(Clone, Debug)]
pub struct ChatLoadReport {
    pub members: usize,
    pub speakers: usize,
    pub size: usize,
    /// The measured window (from the last join to the end).
    pub secs: f64,
    pub said: u64,
    pub delivered: u64,
    /// Said and delivered over the whole run (from the start of speaking, a millisecond or so
    /// before the window, to the end of the settling after it): what a script that reads the
    /// server's CPU time around the whole run divides it by.
    pub said_total: u64,
    pub delivered_total: u64,
    /// Deliveries still missing once the speakers were silent and the room had 5 s to
    /// settle: messages sent × members − deliveries.
    pub undelivered: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl std::fmt::Display for ChatLoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chat members={} speakers={} size={} secs={:.2} said={} delivered={} \
             said_per_sec={:.0} delivered_per_sec={:.0} said_total={} delivered_total={} \
             undelivered={} errors={}",
            self.members,
            self.speakers,
            self.size,
            self.secs,
            self.said,
            self.delivered,
            self.said as f64 / self.secs,
            self.delivered as f64 / self.secs,
            self.said_total,
            self.delivered_total,
            self.undelivered,
            self.errors
        )
    }
}

#[derive(Default)]
struct Counters {
    joined: AtomicUsize,
    /// SAY frames written.
    sent: AtomicU64,
    /// Set when every member has joined: speakers may start.
    go: AtomicBool,
    /// Set when the measured window ends: speakers say nothing more.
    silent: AtomicBool,
    said: AtomicU64,
    delivered: AtomicU64,
    failures: super::Failures,
}

struct LoadMember {
    /// Set by the welcome notice.
    name: Option<Vec<u8>>,
    /// The SAY frame this member repeats, if it speaks.
    say: Option<Arc<[u8]>>,
    counters: Arc<Counters>,
}

impl LoadMember {
    fn on_frame(&mut self, cx: &mut Ctx<'_>, kind: u8, body: &[u8]) {
        match kind {
            MSG => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                let (Some(say), Some(name)) = (&self.say, &self.name) else {
                    return;
                };
                let n = body.first().map_or(0, |&n| n as usize);
                if body.get(1..1 + n) == Some(&name[..]) {
                    self.counters.said.fetch_add(1, Ordering::Relaxed);
                    self.speak(cx, &say.clone());
                }
            }
            NOTICE if self.name.is_none() => {
                let Some(name) = body.strip_prefix(b"welcome ") else {
                    return self.fail(cx, "the first notice was not a welcome".into());
                };
                self.name = Some(name.to_vec());
                self.counters.joined.fetch_add(1, Ordering::Relaxed);
                if self.say.is_some() {
                    cx.set_timer(Duration::ZERO, START);
                }
            }
            NOTICE | PONG => {}
            PING => {
                cx.write(&frame::frame(PONG, &[body]));
            }
            other => self.fail(cx, format!("unexpected frame kind 0x{other:02x}")),
        }
    }

    fn speak(&mut self, cx: &mut Ctx<'_>, say: &[u8]) {
        if !self.counters.silent.load(Ordering::Relaxed) {
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            cx.write(say);
        }
    }

    fn fail(&mut self, cx: &mut Ctx<'_>, why: String) {
        self.counters.failures.failed(|| why);
        cx.abort();
    }
}

/// The timer a speaker waits on until every member has joined.
const START: u64 = 1;

impl Handler for LoadMember {
    fn on_timer(&mut self, cx: &mut Ctx<'_>, tag: u64) {
        if tag != START {
            return;
        }
        match self.say.clone() {
            Some(say) if self.counters.go.load(Ordering::Relaxed) => self.speak(cx, &say),
            Some(_) => cx.set_timer(Duration::from_millis(1), START),
            None => {}
        }
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        let read = frame::drain(input, frame::MAX_LIMIT, |kind, body| {
            self.on_frame(cx, kind, body);
            true
        });
        if let Err(e) = read {
            self.fail(cx, e.to_string());
        }
    }

    fn on_close(&mut self, _cx: &mut Ctx<'_>, reason: CloseReason) {
        match reason {
            CloseReason::Aborted => {}
            CloseReason::ConnectFailed(e) => self.counters.failures.failed(|| e.to_string()),
            other => self
                .counters
                .failures
                .failed(|| format!("the server closed a member: {other:?}")),
        }
    }
}

pub fn run(opts: &ChatLoadOptions) -> io::Result<ChatLoadReport> {
    super::pingpong::raise_fd_limit();
    if opts.speakers > opts.members {
        return Err(io::Error::other("--speakers is more than --members"));
    }
    let counters = Arc::new(Counters::default());
    let text: Vec<u8> = (0..opts.size).map(|i| b'a' + (i % 26) as u8).collect();
    let say: Arc<[u8]> = frame::frame(SAY, &[&text]).into();
    let threads = opts.threads.clamp(1, opts.members.max(1));
    let mut handles = Vec::new();
    let mut workers = Vec::new();
    let mut first = 0;
    for t in 0..threads {
        let share = opts.members / threads + usize::from(t < opts.members % threads);
        let range = first..first + share;
        first += share;
        let (counters, say, addr, speakers) =
            (counters.clone(), say.clone(), opts.addr, opts.speakers);
        let (tx, rx) = std::sync::mpsc::channel();
        workers.push(std::thread::spawn(move || -> io::Result<()> {
            let mut el = EventLoop::new(LoopConfig {
                engine: Engine::EpollEt,
                ..LoopConfig::default()
            })?;
            for i in range {
                let member = LoadMember {
                    name: None,
                    say: (i < speakers).then(|| say.clone()),
                    counters: counters.clone(),
                };
                el.connect(addr, Duration::from_secs(5), Box::new(member))?;
            }
            // A bound on the whole run, whatever happens to the main thread.
            el.run_after(JOIN_TIMEOUT + Duration::from_secs(600), |el| el.stop());
            let _ = tx.send(el.handle());
            el.run()
        }));
        if let Ok(h) = rx.recv() {
            handles.push(h);
        }
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while counters.joined.load(Ordering::Relaxed) < opts.members
        && counters.failures.count() == 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let joined = counters.joined.load(Ordering::Relaxed);
    let result = if joined < opts.members {
        let why = counters
            .failures
            .first()
            .unwrap_or_else(|| format!("only {joined} of {} members joined", opts.members));
        Err(io::Error::other(format!("chat load: {why}")))
    } else {
        counters.go.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        let (said0, delivered0) = (
            counters.said.load(Ordering::Relaxed),
            counters.delivered.load(Ordering::Relaxed),
        );
        std::thread::sleep(opts.duration);
        let said = counters.said.load(Ordering::Relaxed) - said0;
        let delivered = counters.delivered.load(Ordering::Relaxed) - delivered0;
        let secs = t0.elapsed().as_secs_f64();
        // Silence, then let the room settle: every message sent should reach every member.
        counters.silent.store(true, Ordering::Relaxed);
        // A speaker that looked at the flag just before it was set may still send one more:
        // give it the moment it needs, so that the count below waits for that one too.
        std::thread::sleep(Duration::from_millis(20));
        let settle = Instant::now() + Duration::from_secs(5);
        let want = || counters.sent.load(Ordering::Relaxed) * opts.members as u64;
        while counters.delivered.load(Ordering::Relaxed) < want()
            && counters.failures.count() == 0
            && Instant::now() < settle
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok((secs, said, delivered))
    };
    for h in &handles {
        h.stop();
    }
    for w in workers {
        w.join()
            .map_err(|_| io::Error::other("a load thread panicked"))??;
    }
    let (secs, said, delivered) = result?;
    let said_total = counters.said.load(Ordering::Relaxed);
    let delivered_total = counters.delivered.load(Ordering::Relaxed);
    let undelivered = (counters.sent.load(Ordering::Relaxed) * opts.members as u64)
        .saturating_sub(delivered_total);
    let first_error = counters.failures.first();
    Ok(ChatLoadReport {
        members: opts.members,
        speakers: opts.speakers,
        size: opts.size,
        secs,
        said,
        delivered,
        said_total,
        delivered_total,
        undelivered,
        errors: counters.failures.count(),
        first_error,
    })
}

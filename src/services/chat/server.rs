//! The chat server's handler: one [`Member`] per connection.

use std::sync::Arc;

use super::heartbeat::{self, Beat, Heartbeat};
use super::room::Room;
use super::{valid_name, ChatSettings, ERROR, MSG, NICK, NOTICE, PING, PONG, SAY};
use crate::codec::frame;
use crate::net::log_throttle::{left_out_note, LogThrottle};
use crate::net::{Buffer, CloseReason, Ctx, Handler, HandlerFactory};

/// The timer tag of a speaker paused for a congested room, and how often it looks again.
const CONGESTION_TIMER: u64 = 2;
const CONGESTION_CHECK: std::time::Duration = std::time::Duration::from_millis(1);

/// The timer tag of a member whose queue passed the high-water mark but not the slow limit,
/// and how often its queue is looked at.
const SLOW_TIMER: u64 = 3;
const SLOW_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// "A slow member was dropped", at most once a second.
static SLOW: LogThrottle = LogThrottle::new(1);

/// Everything the members of one server share.
pub struct Chat {
    pub room: Arc<Room>,
    pub settings: ChatSettings,
}

/// The handler factory: a [`Member`] per connection, all in `room`. Rebuilt at a reload with
/// the same room and the new settings.
pub fn factory(chat: Arc<Chat>) -> HandlerFactory {
    chat.room.set_slow_limit(slow_limit(&chat.settings));
    Arc::new(move || Box::new(Member::new(chat.clone())))
}

/// The most that may wait for a member: the loop's high-water mark (1 MiB), or two of the
/// largest messages when frames are that large.
fn slow_limit(settings: &ChatSettings) -> usize {
    let largest_msg = frame::HEADER + 2 + super::MAX_NAME + settings.max_frame;
    (1 << 20).max(2 * largest_msg)
}

/// One connection of the chat server.
pub struct Member {
    chat: Arc<Chat>,
    name: String,
    heartbeat: Option<Heartbeat>,
    /// In the room (from `on_connect` until it leaves, closes or is refused).
    joined: bool,
    /// Being closed by us: what else it sent is not read.
    done: bool,
    /// Reading paused while another loop catches up with what this member said.
    paused: bool,
}

impl Member {
    pub fn new(chat: Arc<Chat>) -> Member {
        Member {
            chat,
            name: String::new(),
            heartbeat: None,
            joined: false,
            done: false,
            paused: false,
        }
    }

    fn leave(&mut self, cx: &mut Ctx<'_>) {
        if std::mem::take(&mut self.joined) {
            self.chat.room.leave(cx.id());
        }
    }

    /// Says why in an ERROR frame, leaves, and closes gracefully (the frame is flushed
    /// before our FIN).
    fn refuse(&mut self, cx: &mut Ctx<'_>, why: &str) {
        self.leave(cx);
        self.done = true;
        cx.write(&frame::frame(ERROR, &[why.as_bytes()]));
        cx.close();
    }

    fn notice(cx: &mut Ctx<'_>, text: &str) {
        cx.write(&frame::frame(NOTICE, &[text.as_bytes()]));
    }

    fn on_frame(&mut self, cx: &mut Ctx<'_>, kind: u8, body: &[u8]) {
        match kind {
            SAY if body.is_empty() => {}
            SAY => {
                let name = self.name.as_bytes();
                let msg = frame::frame(MSG, &[&[name.len() as u8], name, body]);
                let room = Arc::clone(&self.chat.room);
                let congested = match cx.event_loop() {
                    Some(el) => room.broadcast(el, msg),
                    None => return self.refuse(cx, "the server runs no loop for this connection"),
                };
                if congested && !self.paused {
                    // Another loop is behind: hear no more from this speaker until it has
                    // caught up (see `room`), not even the frames already read: they wait in
                    // the input and are handled on the resume. (On `--engine uring` what is
                    // already read can be the whole receive ring, 1 MiB.)
                    self.paused = true;
                    cx.pause_read();
                    cx.set_timer(CONGESTION_CHECK, CONGESTION_TIMER);
                }
            }
            NICK if valid_name(body) => {
                self.name = String::from_utf8_lossy(body).into_owned();
                Self::notice(cx, &format!("you are now {}", self.name));
            }
            NICK => Self::notice(
                cx,
                &format!(
                    "name refused: a name is 1 to {} bytes of UTF-8 without control characters",
                    super::MAX_NAME
                ),
            ),
            PING => {
                cx.write(&frame::frame(PONG, &[body]));
            }
            PONG => {}
            other => {
                self.refuse(
                    cx,
                    &format!("unexpected frame kind 0x{other:02x} from a client"),
                );
            }
        }
    }
}

impl Handler for Member {
    fn on_connect(&mut self, cx: &mut Ctx<'_>) {
        self.name = format!("guest-{}", self.chat.room.next_guest());
        let Some(handle) = cx.handle() else {
            self.refuse(cx, "the server runs no loop for this connection");
            return;
        };
        self.chat.room.join(cx.id(), handle);
        self.joined = true;
        let s = self.chat.settings;
        let hb = Heartbeat::new(s.heartbeat, s.heartbeat_timeout, cx.now());
        cx.set_timer(hb.first_timer(), heartbeat::TIMER);
        self.heartbeat = Some(hb);
        Self::notice(cx, &format!("welcome {}", self.name));
    }

    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        // Any bytes are a sign of life, a piece of a large frame too: a member sending one
        // big message over a slow link is not silent.
        if let Some(hb) = self.heartbeat.as_mut() {
            hb.heard(cx.now());
        }
        let limit = self.chat.settings.max_frame;
        let read = frame::drain(input, limit, |kind, body| {
            self.on_frame(cx, kind, body);
            !self.done && !self.paused
        });
        if let Err(e) = read {
            self.refuse(cx, &e.to_string());
        }
        if self.done {
            input.clear();
        }
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_>, tag: u64) {
        if tag == SLOW_TIMER && !self.done {
            match cx.output_len() {
                0 => {}
                q if q > self.slow_limit() => self.drop_slow(cx, q),
                _ => cx.set_timer(SLOW_CHECK, SLOW_TIMER),
            }
            return;
        }
        if tag == CONGESTION_TIMER && self.paused {
            if self.chat.room.congested() {
                cx.set_timer(CONGESTION_CHECK, CONGESTION_TIMER);
            } else {
                self.paused = false;
                cx.resume_read();
            }
            return;
        }
        if tag != heartbeat::TIMER || self.done {
            return;
        }
        let Some(hb) = self.heartbeat.as_mut() else {
            return;
        };
        if self.paused {
            // Not reading it: its silence says nothing.
            hb.heard(cx.now());
        }
        match hb.fired(cx.now()) {
            Beat::Ping(next) => {
                cx.write(&frame::frame(PING, &[]));
                cx.set_timer(next, heartbeat::TIMER);
            }
            Beat::Wait(next) => cx.set_timer(next, heartbeat::TIMER),
            Beat::Dead(silent) => {
                self.refuse(
                    cx,
                    &format!(
                        "heartbeat timeout: nothing from you for {:.1} s",
                        silent.as_secs_f64()
                    ),
                );
            }
        }
    }

    /// A member that does not read would make the room buffer for it without bound: past
    /// the slow limit it is dropped, with a reset (a graceful close would wait for it to
    /// read all of it first). The loop calls this when the queue first passes its high-water
    /// mark (1 MiB), and the room after any delivery that leaves the queue over the limit.
    /// With frames of megabytes allowed, the mark can be one message, so below the limit the
    /// queue is looked at again every [`SLOW_CHECK`] until it drains.
    fn on_high_water(&mut self, cx: &mut Ctx<'_>, queued: usize) {
        if queued <= self.slow_limit() {
            cx.set_timer(SLOW_CHECK, SLOW_TIMER);
            return;
        }
        self.drop_slow(cx, queued);
    }

    /// The client's FIN: it has left. What is queued for it still goes out before ours.
    fn on_peer_shutdown(&mut self, cx: &mut Ctx<'_>) {
        self.leave(cx);
        cx.shutdown_write();
    }

    fn on_close(&mut self, cx: &mut Ctx<'_>, _reason: CloseReason) {
        self.leave(cx);
    }
}

impl Member {
    fn slow_limit(&self) -> usize {
        slow_limit(&self.chat.settings)
    }

    fn drop_slow(&mut self, cx: &mut Ctx<'_>, queued: usize) {
        if let Some(left_out) = SLOW.turn() {
            let peer = cx
                .peer_addr()
                .map_or_else(|| "address unknown".to_string(), |a| a.to_string());
            tracing::warn!(
                "chat: dropped {} ({peer}), which read too slowly: {queued} bytes were waiting \
                 for it{}",
                self.name,
                left_out_note(left_out)
            );
        }
        self.leave(cx);
        self.done = true;
        cx.abort();
    }
}

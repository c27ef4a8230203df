//! A chat room over length-prefixed frames, with application heartbeats: every line a member
//! says reaches every member, on every loop.
//!
//! What it shows of the notes:
//! - **Framing** (rule 8): messages are [`crate::codec::frame`]s, a big-endian length then a
//!   kind byte and a body; a frame over the limit is refused on its header, with an
//!   [`ERROR`] frame saying why, and the connection closed.
//! - **Application heartbeats** (rule 7, and why TCP keepalive is not enough: it proves the
//!   peer's kernel answers, not that its program does): each side pings a peer it has heard
//!   nothing from for an interval and drops it after a longer silence ([`heartbeat`]).
//! - **Broadcast with one writer per socket** (rule 5): a member's socket is written only
//!   by the loop that owns it; a message for members of other loops travels to them through
//!   those loops' task queues ([`room`]).
//! - **Slow members do not cost memory without bound**: one whose queue passes the loop's
//!   high-water mark is dropped, with a reset, instead of the room buffering for it forever.
//!
//! # The protocol
//!
//! | kind | name | from | body |
//! |---:|:---|:---|:---|
//! | 0x01 | [`SAY`] | client | the text to send to the room |
//! | 0x02 | [`NICK`] | client | a new name: 1 to 32 bytes of UTF-8, no control characters |
//! | 0x03 | [`MSG`] | server | a u8 name length, the speaker's name, the text |
//! | 0x04 | [`NOTICE`] | server | UTF-8 text from the server (the first: `welcome NAME`) |
//! | 0x10 | [`PING`] | either | anything; answered with a [`PONG`] |
//! | 0x11 | [`PONG`] | either | ignored |
//! | 0x7f | [`ERROR`] | server | UTF-8 reason; the server closes the connection after it |
//!
//! A client that sends its FIN leaves the room; the server then closes gracefully. Every
//! member, the speaker included, gets each [`MSG`], in the order the server took them from
//! any one speaker.

pub mod client;
pub mod heartbeat;
pub mod room;
pub mod server;

use std::time::Duration;

/// Client to server: say the body to the room.
pub const SAY: u8 = 0x01;
/// Client to server: take the body as name.
pub const NICK: u8 = 0x02;
/// Server to client: a member said something.
pub const MSG: u8 = 0x03;
/// Server to client: a line from the server itself.
pub const NOTICE: u8 = 0x04;
/// Either way: are you there? Answered with [`PONG`].
pub const PING: u8 = 0x10;
/// Either way: the answer to [`PING`].
pub const PONG: u8 = 0x11;
/// Server to client: why the connection is being closed.
pub const ERROR: u8 = 0x7f;

/// What a client the server refuses (over `--max-conns`, out of fds) reads before the close
/// ([`crate::reactor::LoopConfig::refusal_note`]): an [`ERROR`] frame, as for any other
/// refusal, so the client can say why it was turned away.
pub fn refusal_note() -> std::sync::Arc<[u8]> {
    crate::codec::frame::frame(ERROR, &[b"the server is full; try again later"]).into()
}

/// The longest name, in bytes.
pub const MAX_NAME: usize = 32;

/// The largest frame limit a chat server may be given: a MSG carries the text of a SAY of
/// that size plus a name and its length, and must still fit the codec's limit.
pub const MAX_MAX_FRAME: usize = crate::codec::frame::MAX_LIMIT - 1 - MAX_NAME;

/// Default heartbeat interval: a peer silent this long is pinged.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default frame limit (kind byte and body).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// What a chat server or client is configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatSettings {
    /// A peer heard from nothing for this long is sent a [`PING`].
    pub heartbeat: Duration,
    /// A peer heard from nothing for this long is dropped: by default 3 heartbeats, so a
    /// ping and its answer may each be late once without a false alarm.
    pub heartbeat_timeout: Duration,
    /// The largest frame `length` taken from a peer.
    pub max_frame: usize,
}

impl Default for ChatSettings {
    fn default() -> Self {
        ChatSettings {
            heartbeat: DEFAULT_HEARTBEAT,
            heartbeat_timeout: DEFAULT_HEARTBEAT * 3,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl ChatSettings {
    /// An error if the timeout is not longer than the interval (the peer would be dropped
    /// before it was ever asked) or the frame limit cannot hold a name or is over the codec's.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat_timeout <= self.heartbeat {
            return Err(format!(
                "the heartbeat timeout ({:?}) must be longer than the heartbeat interval ({:?})",
                self.heartbeat_timeout, self.heartbeat
            ));
        }
        if self.max_frame < 1 + MAX_NAME || self.max_frame > MAX_MAX_FRAME {
            return Err(format!(
                "the frame limit must be from {} to {MAX_MAX_FRAME} bytes, got {}",
                1 + MAX_NAME,
                self.max_frame
            ));
        }
        Ok(())
    }
}

/// Whether `name` may be a member's name.
pub fn valid_name(name: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && std::str::from_utf8(name).is_ok_and(|s| !s.chars().any(char::is_control))
}

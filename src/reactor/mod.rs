//! The I/O unit's core: readiness engines, the event loop, its timing wheel, waker and signals.

pub mod event;
pub mod event_loop;
pub mod handle;
pub mod poller;
pub mod signals;
pub mod stats;
pub mod timer_wheel;
pub mod waker;

pub use event::{Event, Interest, Token, Trigger};
pub use event_loop::{EventLoop, Keepalive, LoopConfig};
pub use handle::LoopHandle;
pub use poller::Engine;
pub use signals::Signal;
pub use stats::{LoopStats, Note};
pub use timer_wheel::{TimerKey, TimerWheel};

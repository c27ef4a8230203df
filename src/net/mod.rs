//! Connections and what carries their bytes: buffers, listeners, connector, UDP, the handler API.

pub mod buffer;
pub mod buffer_pool;
mod completion;
pub mod connection;
pub mod connector;
pub mod handler;
pub mod listener;
pub mod log_throttle;
pub mod output;
pub mod page_pipe;
pub(crate) mod send_timeout;
pub mod splice;
pub mod udp;

pub use buffer::Buffer;
pub use buffer_pool::BufferPool;
pub use connection::{CloseReason, ConnId, ConnectError, BATCH_LIMIT};
pub use handler::{Ctx, Handler};
pub use listener::{
    bind_tcp, bind_tcp_group, bind_udp, close_refused, AcceptHook, HandlerFactory, ListenOptions,
};
pub use output::{FileRange, FileVersion};
pub use page_pipe::PagePipe;
pub use udp::{DatagramHandler, DatagramOut};

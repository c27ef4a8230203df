//! keel: a Linux high-performance network server framework, and the servers built on it.
//!
//! The crate follows the three units of a server (see README's architecture section):
//! - the **I/O unit** — [`reactor`] (readiness engines select/poll/epoll LT/ET behind one
//!   switch, the event loop, its timing wheel, waker and signals) and [`net`] (buffers,
//!   listeners with the EMFILE policy, the connection state machine, the connector);
//! - the **logic unit** — [`net::Handler`] implementations such as [`services`];
//! - the server programs and their conventions — [`server`], and what operating them needs —
//!   [`ops`] (the configuration file).

#![deny(unsafe_op_in_unsafe_fn)]
// The docs are written for people reading the code, and name the private items where the
// work is done: build them with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod bench;
pub mod codec;
pub mod http;
pub mod net;
pub mod ops;
pub mod reactor;
pub mod server;
pub mod services;
pub mod sys;
#[cfg(test)]
mod test_util;

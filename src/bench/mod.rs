//! Load generators behind `keel bench`: built on keel's own loop, one thread, so the load
//! takes one core and the server the other (../shared/bench/README.md).

pub mod chat;
pub mod pingpong;

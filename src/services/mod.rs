//! Small servers on the framework: they prove the I/O unit and serve as examples.

pub mod chat;
pub mod discard;
pub mod echo;
pub mod proxy;

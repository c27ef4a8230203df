//! The `leader_followers` concurrency model (not built yet).

use std::io;

use super::{ServerOptions, Service};

pub fn run(_opts: &ServerOptions, _service: &Service) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the leader_followers model is not built yet",
    ))
}

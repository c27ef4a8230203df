//! The `half_sync` concurrency model (not built yet).

use std::io;

use super::{ServerOptions, Service};

pub fn run(_opts: &ServerOptions, _service: &Service) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the half_sync model is not built yet",
    ))
}

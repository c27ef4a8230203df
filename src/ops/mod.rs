//! Operating keel: what sits around the servers themselves.
//!
//! - [`config`]: the TOML configuration file (`--config FILE`) and `keel check-config FILE`.

pub mod config;

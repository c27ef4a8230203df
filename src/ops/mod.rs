//! Operating keel: what sits around the servers themselves.
//!
//! - [`config`]: the TOML configuration file (`--config FILE`) and `keel check-config FILE`.
//! - [`pidfile`]: the locked pid file (`--pid-file`): one instance per file, stale files taken over.
//! - [`rlimit`]: raising RLIMIT_NOFILE at start (`--rlimit-nofile`).

pub mod config;
pub mod pidfile;
pub mod rlimit;

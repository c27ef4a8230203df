//! Operating keel: what sits around the servers themselves.
//!
//! - [`config`]: the TOML configuration file (`--config FILE`) and `keel check-config FILE`.
//! - [`pidfile`]: the locked pid file (`--pid-file`): one instance per file, stale files taken over.
//! - [`rlimit`]: raising RLIMIT_NOFILE at start (`--rlimit-nofile`).
//! - [`privileges`]: dropping root after binding (`--user`, `--group`).
//! - [`notify`]: systemd's READY=1 / STOPPING=1.
//! - `--daemon` itself is `sys::process::daemonize`, run by `server::announce` once bound.

pub mod config;
pub mod notify;
pub mod pidfile;
pub mod privileges;
pub mod rlimit;

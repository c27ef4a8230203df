//! Operating keel: what sits around the servers themselves.
//!
//! - [`config`]: the TOML configuration file (`--config FILE`) and `keel check-config FILE`;
//!   [`host_check`]: what `check-config` checks of the host (paths, user), as `nginx -t` does.
//! - [`pidfile`]: the locked pid file (`--pid-file`): one instance per file, stale files taken over.
//! - [`rlimit`]: raising RLIMIT_NOFILE at start (`--rlimit-nofile`).
//! - [`privileges`]: dropping root after binding (`--user`, `--group`).
//! - [`notify`]: systemd's READY=1 / STOPPING=1.
//! - [`log`]: logging (tracing) to stderr, a file or syslog, and the asynchronous line writer.
//! - [`stderr`]: writing to stderr without hanging on a reader that stopped reading.
//! - [`admin`]: the admin listener's `/metrics` and `/status`.
//! - `--daemon` itself is `sys::process::daemonize`, run by `server::announce` once bound.

pub mod admin;
pub mod config;
pub mod host_check;
pub mod log;
pub mod notify;
pub mod pidfile;
pub mod privileges;
pub mod rlimit;
pub mod stderr;

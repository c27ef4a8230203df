//! What `keel check-config` checks of the host, beyond the file itself, as `nginx -t` does:
//! that the paths a server will open are there (the document root, the directories of the
//! pid file and the log files, syslog's socket) and that its user and group exist. A file
//! that passes the syntax checks could otherwise say "ok" and still be refused at start.
//!
//! The listen addresses are not tried: binding them now would say nothing of binding them at
//! start, since the server running while its next configuration is checked holds them.
//! Nothing is created or written: a log file that is not there yet is fine if its directory is.
//! The checks run as the user who runs `check-config`, and relative paths are taken from its
//! working directory, as the server takes them from the one it starts in; a value the command
//! line will override is checked all the same.

use std::io;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::config::{Config, ConfigError, Section, ServerSettings};

/// The host problems of a valid configuration, in file order.
pub fn host_errors(file: &str, text: &str, config: &Config) -> Vec<ConfigError> {
    let (root, _) = DeTable::parse_recoverable(text);
    let mut errors = Vec::new();
    for section in Section::ALL {
        let Some(s) = config.section(section) else {
            continue;
        };
        let table = root.get_ref().iter().find_map(|(name, value)| {
            match (name.get_ref() == section.name(), value.get_ref()) {
                (true, DeValue::Table(t)) => Some(t),
                _ => None,
            }
        });
        let line_of = |key: &str| {
            let (name, _) = table?.iter().find(|(n, _)| n.get_ref() == key)?;
            Some(
                text[..name.span().start.min(text.len())]
                    .matches('\n')
                    .count()
                    + 1,
            )
        };
        for (key, message) in section_problems(s) {
            errors.push(ConfigError {
                file: file.to_string(),
                line: line_of(key),
                key: Some(format!("{}.{key}", section.name())),
                message,
            });
        }
    }
    errors.sort_by_key(|e| e.line);
    errors
}

/// (key, what is wrong) for one section's settings.
fn section_problems(s: &ServerSettings) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    if let Some(root) = &s.http.root {
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => found.push(("root", format!("{}: not a directory", root.display()))),
            Err(e) => found.push(("root", format!("{}: {e}", root.display()))),
        }
    }
    if let Some(user) = s.user.as_deref() {
        if let Err(e) = super::privileges::look_up(Some(user), None) {
            found.push(("user", e.to_string()));
        }
    }
    if let Some(group) = s.group.as_deref() {
        if let Err(e) = super::privileges::look_up(None, Some(group)) {
            found.push(("group", e.to_string()));
        }
    }
    if let Some(p) = &s.pid_file {
        found.extend(writable_place(p).map(|m| ("pid_file", m)));
    }
    match s.log_target.as_deref() {
        // A log file with no target named is the file target.
        None | Some("file") => {
            if let Some(p) = &s.log_file {
                found.extend(writable_place(p).map(|m| ("log_file", m)));
            }
        }
        Some("syslog") => {
            let listening = std::os::unix::net::UnixDatagram::unbound()
                .and_then(|sock| sock.connect("/dev/log"));
            if let Err(e) = listening {
                found.push(("log_target", format!("syslog: /dev/log: {e}")));
            }
        }
        _ => {}
    }
    if let Some(log) = s.http.access_log.as_deref() {
        if !matches!(log, "stderr" | "off") {
            found.extend(writable_place(Path::new(log)).map(|m| ("access_log", m)));
        }
    }
    found
}

/// Why a file cannot be opened for writing at `path`, as far as looking can tell: it is a
/// directory, or its directory is missing (or is not one), or the file (if it is there) or
/// else its directory cannot be written by whoever runs the check (a read-only filesystem
/// says so even to root), as `nginx -t` finds out by opening them.
fn writable_place(path: &Path) -> Option<String> {
    use rustix::fs::{access, Access};
    if path.is_dir() {
        return Some(format!("{}: is a directory", path.display()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Some(format!("{}: not a directory", dir.display())),
        Err(e) => return Some(format!("{}: {e}", dir.display())),
    }
    let (what, there) = if path.exists() {
        (path, access(path, Access::WRITE_OK))
    } else {
        (dir, access(dir, Access::WRITE_OK))
    };
    there.err().map(|e| {
        format!(
            "{}: cannot be written: {}",
            what.display(),
            io::Error::from(e)
        )
    })
}

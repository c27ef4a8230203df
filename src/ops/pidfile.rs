//! The pid file: which process serves, and a lock so only one does.
//!
//! The file is locked with `flock(LOCK_EX|LOCK_NB)` for the server's whole life. A second
//! instance fails to take the lock and is refused with the pid written in the file, before it
//! binds anything; a file left behind by a server that died (kill -9, a crash) is not locked
//! (the kernel drops a dead process's locks), so the next start takes it over. The lock lives
//! on the open file description, which forked workers share: the master's lock stays held as
//! long as any of them runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// A held pid file. Dropping it (when the server ends normally) removes the file.
#[derive(Debug)]
pub struct PidFile {
    file: File,
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Takes `path` for this process: creates or opens it, locks it, writes our pid.
    pub fn acquire(path: &Path) -> io::Result<PidFile> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // Never through a symbolic link: a link planted where the pid file goes would
            // have the server overwrite (and at exit remove) whatever it points to.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                let why = if e.raw_os_error() == Some(libc::ELOOP) {
                    "is a symbolic link; refusing to follow it".to_string()
                } else {
                    e.to_string()
                };
                io::Error::new(e.kind(), format!("pid file {}: {why}", path.display()))
            })?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pid file {}: not a regular file", path.display()),
            ));
        }
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut held = String::new();
                let _ = file.read_to_string(&mut held);
                let who = match held.trim() {
                    "" => "another process".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is locked: keel is already running ({who})",
                        path.display()
                    ),
                ));
            }
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("pid file {}: cannot lock: {e}", path.display()),
            ));
        }
        // Ours now (a stale file from a dead server is simply overwritten).
        let pid = std::process::id();
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{pid}")?;
        file.sync_data()?;
        Ok(PidFile {
            file,
            path: path.to_path_buf(),
            pid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the current pid again: after daemonizing, the server is another process than
    /// the one that took the lock (it inherited the locked descriptor).
    pub fn rewrite(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.pid = std::process::id();
        // Write over the old pid, then cut what is left of it: a reader never finds the file
        // empty, as it could between a truncate and a write.
        let line = format!("{}\n", self.pid);
        self.file.write_all_at(line.as_bytes(), 0)?;
        self.file.set_len(line.len() as u64)?;
        self.file.sync_data()
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only the process that wrote it removes it (a forked child never runs this, it leaves
        // through `_exit`, but be sure).
        if std::process::id() == self.pid {
            if let Err(e) = std::fs::remove_file(&self.path) {
                // Typically: privileges were dropped and the directory is root's. Say so,
                // or the next start would find a stale file with no hint why it is there.
                // The file is emptied through the descriptor still open on it (opened before
                // the drop, so still writable): no later reader takes a dead pid for ours.
                if e.kind() != io::ErrorKind::NotFound {
                    let emptied = match self.file.set_len(0) {
                        Ok(()) => "emptied it instead",
                        Err(_) => "it still holds our pid",
                    };
                    tracing::warn!(
                        "cannot remove pid file {}: {e}; {emptied}",
                        self.path.display()
                    );
                }
            }
        }
        let _ = &self.file; // the lock goes with the descriptor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symbolic_link_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("keel-pid-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, "important data").unwrap();
        let link = dir.join("link.pid");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = PidFile::acquire(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "important data");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_holder_is_refused_with_the_pid_and_the_file_goes_on_drop() {
        let dir = std::env::temp_dir().join(format!("keel-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keel.pid");
        let first = PidFile::acquire(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        // flock locks belong to the open file description: a second open in this same process
        // conflicts like another process would.
        let err = PidFile::acquire(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(
            !path.exists(),
            "the pid file is removed when the server ends"
        );
        let again = PidFile::acquire(&path).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

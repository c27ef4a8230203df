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
        // A server that stops removes its file: one that did so between our open and our lock
        // leaves us holding a lock on a file no longer at `path`, where the next start would
        // create another. Locked, check the name still leads to our file, and start over if not.
        for _ in 0..8 {
            if let Some(held) = Self::try_acquire(path)? {
                return Ok(held);
            }
        }
        Err(io::Error::other(format!(
            "pid file {}: keeps being replaced while we lock it",
            path.display()
        )))
    }

    fn try_acquire(path: &Path) -> io::Result<Option<PidFile>> {
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
                    // The lock lives as long as any process holding the descriptor: workers of
                    // a master that was killed still hold it while they drain.
                    pid if pid
                        .parse::<u32>()
                        .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists()) =>
                    {
                        format!(
                            "pid {pid} has exited, but processes it started still hold the lock"
                        )
                    }
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
        if !is_at(&file, path) {
            return Ok(None);
        }
        // Ours now (a stale file from a dead server is simply overwritten).
        let pid = std::process::id();
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{pid}")?;
        file.sync_data()?;
        Ok(Some(PidFile {
            file,
            path: path.to_path_buf(),
            pid,
        }))
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
        // through `_exit`, but be sure), and only if the name still leads to it: if our file
        // was removed under us and another server has since taken the name, the file there
        // is that server's.
        if std::process::id() == self.pid && is_at(&self.file, &self.path) {
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

/// Whether `path` names `file` itself (same device and inode), not a file put in its place.
fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(ours), Ok(there)) => ours.dev() == there.dev() && ours.ino() == there.ino(),
        _ => false,
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
    fn a_lock_held_past_its_writer_says_so() {
        let dir = std::env::temp_dir().join(format!("keel-pid-orphan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keel.pid");
        let held = PidFile::acquire(&path).unwrap();
        // As a killed master leaves it: its workers hold the lock, the pid is gone.
        std::fs::write(&path, "999999999\n").unwrap();
        let err = PidFile::acquire(&path).unwrap_err().to_string();
        assert!(
            err.contains("pid 999999999 has exited, but processes it started still hold"),
            "{err}"
        );
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_server_whose_file_was_replaced_leaves_the_new_one() {
        let dir = std::env::temp_dir().join(format!("keel-pid-swap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keel.pid");
        let first = PidFile::acquire(&path).unwrap();
        // Removed under the first server (by hand, a tmp cleaner): a second takes the name.
        std::fs::remove_file(&path).unwrap();
        let second = PidFile::acquire(&path).unwrap();
        drop(first);
        assert!(path.exists(), "the second server's pid file is left alone");
        assert!(
            PidFile::acquire(&path).is_err(),
            "and still refuses a third"
        );
        drop(second);
        assert!(!path.exists(), "the second removes its own");
        std::fs::remove_dir_all(&dir).unwrap();
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

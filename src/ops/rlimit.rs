//! Raising RLIMIT_NOFILE at start (every connection is an fd; the default soft limit of 1024
//! caps a server long before memory does).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Sets the fd limit to `want` (soft, and hard too if `want` is above it: that needs
/// CAP_SYS_RESOURCE). Returns the soft limit now in force and, if it is not `want`, why.
pub fn raise_nofile(want: u64) -> (u64, Option<String>) {
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let new = Rlimit {
        current: Some(want),
        maximum: Some(hard.max(want)),
    };
    let err = setrlimit(Resource::Nofile, new).err().map(|e| {
        // Not allowed to raise the hard limit: go as far as it allows.
        let capped = want.min(hard);
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(capped),
                maximum: cur.maximum,
            },
        );
        format!("cannot raise RLIMIT_NOFILE to {want}: {e}")
    });
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    (now, err)
}

//! Running as an unprivileged user after binding (notes 001, chapter 7): a server started as
//! root binds ports below 1024, then gives root up before it touches a single request.

use std::io;

use nix::unistd::{initgroups, setgid, setgroups, setuid, Group, User};

/// Switches to `user` (and its primary group, or `group` if given). Supplementary groups are
/// set first (the user's own, or none but `group`), then the gid, then the uid: in the other order, a process no longer root could
/// not change its groups. Any failure is an error: a server told to drop root must not go on as
/// root.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> io::Result<()> {
    let (pw, gid) = look_up(user, group)?;
    if !nix::unistd::geteuid().is_root() {
        // Nothing to switch if it already runs as them; anything else needs root. (A process
        // holding CAP_SETUID keeps it across setuid, so the check that root cannot be regained
        // would fail anyway: capability-based set-ups are not supported.)
        return already_there(pw.as_ref(), gid, user, group);
    }
    let uid = pw.as_ref().map_or_else(nix::unistd::getuid, |u| u.uid);
    let group_id = gid.unwrap_or_else(nix::unistd::getgid);
    crate::ops::log::give_files_to(uid.as_raw(), group_id.as_raw());
    switch(pw, gid)
}

/// Sets the groups, the gid, then the uid, and checks root cannot be regained.
fn switch(pw: Option<User>, gid: Option<nix::unistd::Gid>) -> io::Result<()> {
    let refuse = |what: &str, e: nix::Error| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("cannot drop privileges ({what}: {e}); refusing to run with the privileges it was started with"),
        )
    };
    if let Some(gid) = gid {
        // With a user, the groups the system gives that user (as login, nginx and Apache do:
        // a file readable through a supplementary group stays readable); with only a group,
        // that group alone.
        match &pw {
            Some(u) => {
                let name = std::ffi::CString::new(u.name.as_bytes()).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "user name holds a NUL byte")
                })?;
                initgroups(&name, gid).map_err(|e| refuse("initgroups", e))?;
            }
            None => setgroups(&[gid]).map_err(|e| refuse("setgroups", e))?,
        }
        setgid(gid).map_err(|e| refuse("setgid", e))?;
    }
    if let Some(u) = pw {
        setuid(u.uid).map_err(|e| refuse("setuid", e))?;
        // Make sure root cannot be regained.
        if u.uid.as_raw() != 0 && setuid(nix::unistd::Uid::from_raw(0)).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "privileges were not dropped: root could be regained; refusing to run",
            ));
        }
    }
    Ok(())
}

/// The user's entry and the gid to switch to (`group`'s, else the user's primary group);
/// an unknown name is an error. Called before binding too, so that a typo fails the start
/// before the `listening` lines.
pub fn look_up(
    user: Option<&str>,
    group: Option<&str>,
) -> io::Result<(Option<User>, Option<nix::unistd::Gid>)> {
    let pw =
        match user {
            Some(name) => Some(User::from_name(name).map_err(io::Error::from)?.ok_or_else(
                || io::Error::new(io::ErrorKind::NotFound, format!("no such user {name:?}")),
            )?),
            None => None,
        };
    let gid = match group {
        Some(name) => Some(
            Group::from_name(name)
                .map_err(io::Error::from)?
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("no such group {name:?}"))
                })?
                .gid,
        ),
        None => pw.as_ref().map(|u| u.gid),
    };
    Ok((pw, gid))
}

/// Not root: nothing can be switched, so the process must already be what it was told to
/// become (a unit file's `--user www` run by `www` itself is fine, as nginx takes it);
/// anything else is refused, saying why, rather than failing on EPERM halfway.
fn already_there(
    pw: Option<&User>,
    gid: Option<nix::unistd::Gid>,
    user: Option<&str>,
    group: Option<&str>,
) -> io::Result<()> {
    use nix::unistd::{getegid, geteuid, getgid, getuid};
    let same_user = pw.is_none_or(|u| u.uid == getuid() && u.uid == geteuid());
    let same_group = gid.is_none_or(|g| g == getgid() && g == getegid());
    if same_user && same_group {
        return Ok(());
    }
    let wanted = match (user, group) {
        (Some(u), Some(g)) => format!("user {u:?} and group {g:?}"),
        (Some(u), None) => format!("user {u:?}"),
        (None, Some(g)) => format!("group {g:?}"),
        (None, None) => unreachable!("nothing to switch to is the same user and group"),
    };
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "cannot switch to {wanted}: keel runs as uid {} gid {}, not as root; start it as \
             root, or as that user without --user/--group",
            getuid(),
            getgid()
        ),
    ))
}

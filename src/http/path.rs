//! Request target -> a path beneath the document root, and opening it there.
//!
//! Two independent fences keep a request inside the root. [`normalize_target`] decodes the
//! target exactly once and resolves `.`/`..` itself, refusing anything that would climb above
//! the root, so the path handed on never contains a `..` segment. [`open_beneath`] then asks the
//! kernel (openat2 with `RESOLVE_BENEATH`) to enforce the same rule on the real filesystem,
//! where symlinks and concurrent renames could otherwise undo what the string check decided.

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::net::log_throttle::{left_out_note, LogThrottle};

/// Why a target could not be mapped to a file; each maps to one response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The target itself is malformed or hostile; the text is for logs, not for the client.
    BadRequest(&'static str),
    Forbidden,
    /// The filesystem refused the server's own user (EACCES, EPERM): a 403 too, and the
    /// operator's to know, since it is usually theirs to fix (a root `--user` cannot read).
    Denied(Errno),
    NotFound,
    /// The server could not look for now: out of file descriptors or memory. 503: the file
    /// may well be there, and a 403 or 404 would tell clients and caches it is not.
    Unavailable(Errno),
    /// The filesystem failed (EIO, say) or answered what nothing here expects: 500.
    Failed(Errno),
}

impl PathError {
    pub fn status(&self) -> u16 {
        match self {
            PathError::BadRequest(_) => 400,
            PathError::Forbidden | PathError::Denied(_) => 403,
            PathError::NotFound => 404,
            PathError::Unavailable(_) => 503,
            PathError::Failed(_) => 500,
        }
    }

    /// Says in the server's log why `path` could not be opened when that is the server's
    /// trouble (a 5xx, or a 403 the filesystem gave the server's user), for the operator: the
    /// client is told only the status. A client's own bad or missing path is the access log's
    /// business.
    ///
    /// At most one line a second per process, with the count of those left out: out of fds,
    /// every request fails the same way, and a line each would flood the log.
    pub fn log_if_ours(&self, path: &[u8]) {
        if let PathError::Unavailable(e) | PathError::Failed(e) | PathError::Denied(e) = self {
            let Some(left_out) = OPEN_FAILURES.turn() else {
                return;
            };
            let more = left_out_note(left_out);
            tracing::warn!(
                "cannot open {}: {} (answered {}){more}",
                String::from_utf8_lossy(path),
                std::io::Error::from(*e),
                self.status()
            );
        }
    }
}

/// Failed opens are said at most once a second.
static OPEN_FAILURES: LogThrottle = LogThrottle::new(1);

/// The target itself when it is already a clean path: only unreserved characters and '/',
/// no empty, "." or ".." segment, no segment starting with '.', no query. Most requests are
/// like that and skip decoding, normalizing and allocating; anything else takes the full way.
pub fn plain_path(target: &[u8]) -> Option<&[u8]> {
    let bytes = target;
    /// Unreserved characters and '/': the only bytes a plain path has.
    const PLAIN: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric() || matches!(c, b'/' | b'-' | b'_' | b'.' | b'~');
            b += 1;
        }
        t
    };
    if bytes.first() != Some(&b'/') {
        return None;
    }
    // Without an early exit the loop has no data-dependent branch (paths are short; a long
    // one is read once either way).
    let mut plain = true;
    let mut prev = b'/';
    for &b in &bytes[1..] {
        // After a '/', neither another '/' (an empty segment) nor a '.' (".", ".." or a
        // hidden name) may follow.
        plain &= PLAIN[b as usize] & !(prev == b'/' && (b == b'/' || b == b'.'));
        prev = b;
    }
    plain.then_some(target)
}

/// Origin-form ("/a/b?q") and absolute-form ("http://host/a/b") targets; anything else (e.g. "*",
/// "a/b") -> BadRequest.
///
/// Strips query and fragment; percent-decodes EXACTLY ONCE (so "%252e%252e" stays the literal
/// name "%2e%2e", never ".."); invalid %-escapes -> BadRequest; decoded NUL -> BadRequest; decoded
/// backslash -> BadRequest; result not valid UTF-8 (this catches overlong UTF-8 such as
/// %c0%ae%c0%ae) -> BadRequest; then removes "." segments and resolves ".." segments (after
/// decoding, so %2e%2e and %2f count), collapsing repeated '/'; a ".." that would climb above the
/// root -> BadRequest.
///
/// Other control characters (raw or decoded) are refused too: no file worth serving has a newline
/// or an escape in its name, and letting them through would put them into logs and headers.
///
/// Returns the normalized absolute path, starting with '/', keeping a trailing '/' if the target
/// had one (a final "." or ".." segment names a directory, so it also yields a trailing '/').
pub fn normalize_target(target: &[u8]) -> Result<String, PathError> {
    let raw = split_path(target)?;
    let decoded = percent_decode(raw)?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| PathError::BadRequest("path is not valid UTF-8"))?;

    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/') {
        // Every segment but the last is followed by a '/'; the last one decides whether the
        // result names a directory.
        match seg {
            "" | "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::BadRequest("path climbs above the root"));
                }
                trailing_slash = true;
            }
            _ => {
                segments.push(seg);
                trailing_slash = false;
            }
        }
    }

    let mut out = String::with_capacity(decoded.len() + 1);
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Picks the path out of an origin-form or absolute-form target, without query or fragment.
fn split_path(target: &[u8]) -> Result<&[u8], PathError> {
    let rest = if target.first() == Some(&b'/') {
        target
    } else if let Some(after_scheme) = strip_scheme(target) {
        // The authority runs to the first '/', '?' or '#'; an absent path means "/".
        let end = after_scheme
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'));
        let authority = &after_scheme[..end.unwrap_or(after_scheme.len())];
        // RFC 9110 4.2.1: an http(s) URI with an empty host is invalid (a recipient MUST
        // reject it); 4.2.4: userinfo in one is to be treated as an error.
        if authority.is_empty() || authority.starts_with(b":") {
            return Err(PathError::BadRequest("absolute-form target without a host"));
        }
        if authority.contains(&b'@') {
            return Err(PathError::BadRequest("userinfo in an absolute-form target"));
        }
        match end {
            Some(i) if after_scheme[i] == b'/' => &after_scheme[i..],
            _ => return Ok(b"/"),
        }
    } else {
        return Err(PathError::BadRequest(
            "target is neither origin-form nor absolute-form",
        ));
    };
    let end = rest
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    Ok(&rest[..end])
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

/// The value of one hex digit (percent-encoding, chunk sizes).
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One pass only: the output is never decoded again, so a double-encoded "%252e" ends up as the
/// three characters "%2e" and can never turn into a '.'.
fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = if raw[i] == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_value);
            let lo = raw.get(i + 2).copied().and_then(hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    i += 3;
                    hi << 4 | lo
                }
                _ => return Err(PathError::BadRequest("invalid percent-escape")),
            }
        } else {
            i += 1;
            raw[i - 1]
        };
        match b {
            0 => return Err(PathError::BadRequest("NUL in path")),
            b'\\' => return Err(PathError::BadRequest("backslash in path")),
            0x01..=0x1f | 0x7f => return Err(PathError::BadRequest("control character in path")),
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and '/' when `keep_slash`):
/// the inverse of the decoding above, for paths that go back to a client (a redirect's
/// Location, a listing's links). It also covers every character that is special in HTML.
pub fn push_percent_encoded(out: &mut String, s: &[u8], keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// Any segment beginning with '.' (".git", ".env", ".htpasswd").
pub fn is_hidden(path: &str) -> bool {
    path.split('/').any(|seg| seg.starts_with('.'))
}

/// Opens `rel` (a normalize_target result, leading '/' stripped; "" means the root itself)
/// beneath the directory `root` with openat2: O_RDONLY|O_CLOEXEC|O_NOCTTY,
/// RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS always, plus RESOLVE_NO_SYMLINKS unless follow_symlinks.
///
/// Without `follow_symlinks` no symlink is followed at all and RESOLVE_BENEATH fences the walk:
/// nothing outside the root can be named. `--follow-symlinks` is the operator saying links are
/// trusted (nginx's `disable_symlinks off`): links are followed wherever they point, while the
/// path itself still may not climb (`..` is refused here too, on top of [`normalize_target`]).
/// The string check in [`normalize_target`] cannot see symlinks; this is where they are fenced.
///
/// Maps errors as [`map_errno`] says: missing -> NotFound, fenced or not permitted -> Forbidden,
/// out of fds or memory -> Unavailable, the rest -> Failed.
/// When the kernel lacks openat2 (ENOSYS) falls back to a component-by-component walk that never
/// lets the kernel follow a symlink or a "..", and so keeps the same guarantee.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &str,
    follow_symlinks: bool,
) -> Result<OwnedFd, PathError> {
    let rel = rel.trim_start_matches('/');
    let path = if rel.is_empty() { "." } else { rel };
    let resolve = if follow_symlinks {
        if climbs(path) {
            return Err(PathError::Forbidden);
        }
        ResolveFlags::NO_MAGICLINKS
    } else {
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS
    };
    // EAGAIN: the kernel saw a concurrent rename or mount and could not prove the walk stayed
    // beneath the root; it asks for a retry. A few tries, then give up.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, path, file_flags(), Mode::empty(), resolve) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOSYS) => return open_beneath_fallback(root, rel, follow_symlinks),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            Err(e) => return Err(map_errno(e)),
        }
    }
}

/// A ".." component: the request path itself would leave the directory it starts in.
fn climbs(path: &str) -> bool {
    path.split('/').any(|c| c == "..")
}

/// NONBLOCK because the file type is only checked after the open: opening a FIFO (or some
/// devices) for reading would otherwise wait for a writer, holding the whole loop. It changes
/// nothing for the regular files and directories that are served.
fn file_flags() -> OFlags {
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK
}

/// What a failed open or read of something beneath the root means for the client, from its
/// `io::Error` (a directory listing's reads come as those).
pub fn io_error(e: &std::io::Error) -> PathError {
    match e.raw_os_error() {
        Some(n) => map_errno(Errno::from_raw_os_error(n)),
        None => PathError::Failed(Errno::IO),
    }
}

/// What an open's errno means for the client (nginx draws the same lines).
fn map_errno(e: Errno) -> PathError {
    match e {
        // A component longer than the filesystem allows names no file that exists.
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => PathError::NotFound,
        // Not ours to read, or behind a fence: a symlink (ELOOP under NO_SYMLINKS, or a loop),
        // a magic link, a way out of the root (EXDEV under RESOLVE_BENEATH).
        Errno::ACCESS | Errno::PERM => PathError::Denied(e),
        Errno::LOOP | Errno::XDEV => PathError::Forbidden,
        // Not a file to serve: a socket, a device with nothing behind it.
        Errno::NXIO | Errno::NODEV | Errno::OPNOTSUPP => PathError::Forbidden,
        Errno::MFILE | Errno::NFILE | Errno::NOMEM | Errno::NOBUFS => PathError::Unavailable(e),
        // A walk that kept meeting renames, a lease being broken, a signal: worth a retry.
        Errno::AGAIN | Errno::INTR => PathError::Unavailable(e),
        _ => PathError::Failed(e),
    }
}

/// Symlink expansions allowed in one walk, as the kernel's own limit (MAXSYMLINKS).
const MAX_SYMLINKS: u32 = 40;

/// The walk for kernels without openat2. Every component is opened with O_NOFOLLOW relative to
/// a directory fd we hold, so the kernel never crosses a symlink or a ".." on its own. A ".."
/// (only reachable through a followed symlink's text) pops our own stack of directory fds, and
/// popping past the root is refused, which is what RESOLVE_BENEATH would have done.
fn open_beneath_fallback(
    root: BorrowedFd<'_>,
    rel: &str,
    follow_symlinks: bool,
) -> Result<OwnedFd, PathError> {
    use rustix::fs::{openat, readlinkat, FileType};

    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return openat(root, ".", file_flags(), Mode::empty()).map_err(map_errno);
    }
    if follow_symlinks {
        // Links are trusted (see open_beneath); only the path itself must not climb.
        if climbs(rel) {
            return Err(PathError::Forbidden);
        }
        return openat(root, rel, file_flags(), Mode::empty()).map_err(map_errno);
    }
    // Components still to walk, the next one last.
    // A trailing '/' leaves a final "" component, which requires the one before it to be a
    // directory, as the kernel would.
    let mut pending: Vec<String> = rel.split('/').rev().map(str::to_owned).collect();
    // Directories entered so far, beneath the root; empty means "at the root".
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut links = 0;

    while let Some(comp) = pending.pop() {
        let cur = stack.last().map_or(root, |fd| fd.as_fd());
        let is_last = pending.is_empty();
        match comp.as_str() {
            "" | "." => {
                if is_last {
                    // A trailing '/' or "." names the directory we stand in.
                    return openat(cur, ".", file_flags() | OFlags::DIRECTORY, Mode::empty())
                        .map_err(map_errno);
                }
                continue;
            }
            ".." => {
                if stack.pop().is_none() {
                    return Err(PathError::Forbidden);
                }
                if is_last {
                    let cur = stack.last().map_or(root, |fd| fd.as_fd());
                    return openat(cur, ".", file_flags() | OFlags::DIRECTORY, Mode::empty())
                        .map_err(map_errno);
                }
                continue;
            }
            _ => {}
        }
        // O_PATH|O_NOFOLLOW opens a symlink itself instead of its target, so what we inspect is
        // what we then act on.
        let fd = openat(
            cur,
            comp.as_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(map_errno)?;
        let st = rustix::fs::fstat(&fd).map_err(map_errno)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                if !follow_symlinks {
                    return Err(PathError::Forbidden);
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(PathError::Forbidden);
                }
                let target = readlinkat(&fd, "", Vec::new()).map_err(map_errno)?;
                let target = target.to_str().map_err(|_| PathError::Forbidden)?;
                if target.starts_with('/') {
                    return Err(PathError::Forbidden);
                }
                // The link's text takes the component's place, relative to the directory that
                // holds the link (the top of the stack), so its ".." pops our stack.
                pending.extend(target.split('/').rev().map(str::to_owned));
            }
            // The O_PATH fd is bound to the directory we just inspected; walking on from it
            // needs only search permission, as a kernel path walk would.
            FileType::Directory if !is_last => stack.push(fd),
            _ if !is_last => return Err(PathError::NotFound),
            _ => {
                // Reopen for reading; O_NOFOLLOW makes a swap to a symlink since the O_PATH open
                // fail (ELOOP -> Forbidden) instead of being followed.
                return openat(
                    cur,
                    comp.as_str(),
                    file_flags() | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(map_errno);
            }
        }
    }
    // Only reached when the last component was a symlink whose text ended in components that
    // were all consumed above; the loop returns for every real final component.
    let cur = stack.last().map_or(root, |fd| fd.as_fd());
    openat(cur, ".", file_flags() | OFlags::DIRECTORY, Mode::empty()).map_err(map_errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal by the filesystem is the operator's to know (logged); a fence of our own
    /// (a symlink, a way out of the root) is the client's doing (not logged).
    #[test]
    fn the_filesystem_refusing_the_server_is_told_apart_from_our_fences() {
        for e in [Errno::ACCESS, Errno::PERM] {
            assert_eq!(map_errno(e), PathError::Denied(e));
        }
        for e in [Errno::LOOP, Errno::XDEV] {
            assert_eq!(map_errno(e), PathError::Forbidden);
        }
    }

    #[test]
    fn open_errors_map_to_statuses() {
        let cases = [
            (Errno::NOENT, 404),
            (Errno::NOTDIR, 404),
            (Errno::NAMETOOLONG, 404),
            (Errno::ACCESS, 403),
            (Errno::PERM, 403),
            (Errno::LOOP, 403),
            (Errno::XDEV, 403),
            (Errno::NXIO, 403),
            (Errno::MFILE, 503),
            (Errno::NFILE, 503),
            (Errno::NOMEM, 503),
            (Errno::AGAIN, 503),
            (Errno::IO, 500),
            (Errno::INVAL, 500),
        ];
        for (errno, status) in cases {
            assert_eq!(map_errno(errno).status(), status, "{errno:?}");
            let io = std::io::Error::from_raw_os_error(errno.raw_os_error());
            assert_eq!(io_error(&io).status(), status, "{errno:?} as io::Error");
        }
        let other = std::io::Error::other("not from the kernel");
        assert_eq!(io_error(&other).status(), 500);
    }
    use std::io::Read;

    fn bad(t: &str) -> bool {
        matches!(
            normalize_target(t.as_bytes()),
            Err(PathError::BadRequest(_))
        )
    }

    /// Either refused, or a path that stays inside the root (no ".." segment left, absolute).
    fn refused_or_inside(t: &str) {
        match normalize_target(t.as_bytes()) {
            Err(PathError::BadRequest(_)) => {}
            Err(e) => panic!("{t:?}: unexpected {e:?}"),
            Ok(p) => {
                assert!(p.starts_with('/'), "{t:?} -> {p:?}");
                assert!(
                    !p.split('/').any(|s| s == ".." || s == "."),
                    "{t:?} -> {p:?} keeps a dot segment"
                );
                assert!(!p.contains('\\') && !p.contains('\0'), "{t:?} -> {p:?}");
                assert!(!p.contains("//"), "{t:?} -> {p:?}");
            }
        }
    }

    const TRAVERSALS: &[&str] = &[
        "/../",
        "/..",
        "/../etc/passwd",
        "/..%2f",
        "/..%2fetc%2fpasswd",
        "/%2e%2e/",
        "/%2e%2e",
        "/%2e%2e%2f",
        "/%2e%2e%2fetc/passwd",
        "/.%2e/",
        "/%2e./",
        "/%2E%2E",
        "/%2E%2E/etc/passwd",
        "/..\\",
        "/..\\etc\\passwd",
        "/..%5c",
        "/..%5C..%5Cetc",
        "/%252e%252e",
        "/%252e%252e/%252e%252e/etc/passwd",
        "/%c0%ae%c0%ae/",
        "/%c0%ae%c0%ae%c0%af",
        "/%e0%80%ae%e0%80%ae/",
        "/%c1%9c",
        "/./../",
        "//..//",
        "//../..//etc",
        "/a/../../",
        "/a/b/../../../etc/passwd",
        "/%00",
        "/index.html%00.txt",
        "/a%00/../..",
        "/%2f..%2f..",
        "/%2f%2e%2e%2f%2e%2e%2fetc",
        "http://host/../",
        "http://host/a/../../etc/passwd",
        "HTTPS://host/%2e%2e/x",
        "/a/./.././../b",
        "/....//....//",
        "/...",
        "/a/%2e%2e/%2e%2e/%2e%2e",
        "/%",
        "/%2",
        "/%zz",
        "/%%32%65",
        "/a%0d%0aSet-Cookie:x",
        "/a\u{7f}",
        "*",
        "a/b",
        "../etc",
        "",
        "http:/a",
        "ftp://host/a",
    ];

    #[test]
    fn traversal_encodings_are_refused_or_contained() {
        assert!(TRAVERSALS.len() >= 30);
        for t in TRAVERSALS {
            refused_or_inside(t);
        }
    }

    #[test]
    fn traversals_that_would_climb_are_refused() {
        for t in [
            "/../",
            "/..",
            "/..%2f",
            "/%2e%2e/",
            "/%2e%2e%2f",
            "/.%2e/",
            "/%2e./",
            "/%2E%2E",
            "/..\\",
            "/..%5c",
            "/%c0%ae%c0%ae/",
            "/%e0%80%ae%e0%80%ae/",
            "/./../",
            "//..//",
            "/a/../../",
            "/%00",
            "/%2f..%2f..",
            "http://host/../",
            "http://host/a/../../etc/passwd",
            "HTTPS://host/%2e%2e/x",
            "/a/%2e%2e/%2e%2e/%2e%2e",
            "/%",
            "/%2",
            "/%zz",
            "/a%0d%0aSet-Cookie:x",
            "*",
            "a/b",
            "",
        ] {
            assert!(bad(t), "{t:?} should be a bad request");
        }
    }

    #[test]
    fn double_encoding_is_decoded_once() {
        assert_eq!(normalize_target(b"/%252e%252e").unwrap(), "/%2e%2e");
        assert_eq!(
            normalize_target(b"/%252e%252e/%252e%252e/etc/passwd").unwrap(),
            "/%2e%2e/%2e%2e/etc/passwd"
        );
        // "%%32%65": '%' followed by "%3" is not an escape, so it is refused, not double decoded.
        assert!(bad("/%%32%65"));
    }

    #[test]
    fn dots_that_are_names_stay_names() {
        assert_eq!(normalize_target(b"/...").unwrap(), "/...");
        assert_eq!(normalize_target(b"/....//....//").unwrap(), "/..../..../");
        assert_eq!(normalize_target(b"/a..b/.c").unwrap(), "/a..b/.c");
    }

    #[test]
    fn normal_targets() {
        let ok = |t: &str| normalize_target(t.as_bytes()).unwrap();
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("//"), "/");
        assert_eq!(ok("/a//b/./c"), "/a/b/c");
        assert_eq!(ok("/dir/"), "/dir/");
        assert_eq!(ok("/dir"), "/dir");
        assert_eq!(ok("/a%20b"), "/a b");
        assert_eq!(ok("/a/b?q=1&x=/../.."), "/a/b");
        assert_eq!(ok("/a/b/?q"), "/a/b/");
        assert_eq!(ok("/a#frag/../.."), "/a");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/a/../b"), "/b");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a%2fb"), "/a/b");
        assert_eq!(ok("/caf%C3%A9"), "/café");
        assert_eq!(ok("/caf\u{e9}"), "/café");
        assert_eq!(ok("/%41"), "/A");
        assert_eq!(ok("/?"), "/");
    }

    #[test]
    fn absolute_form() {
        for target in [
            "http:///etc/passwd",
            "http://:80/a",
            "https://",
            "http://?x",
            "http://u@h/a",
            "http://u:p@h/",
        ] {
            assert!(
                matches!(
                    normalize_target(target.as_bytes()),
                    Err(PathError::BadRequest(_))
                ),
                "{target}"
            );
        }
        let ok = |t: &str| normalize_target(t.as_bytes()).unwrap();
        assert_eq!(ok("http://example.com/a/b"), "/a/b");
        assert_eq!(ok("http://example.com:8080/a/./b/"), "/a/b/");
        assert_eq!(ok("HTTP://example.com"), "/");
        assert_eq!(ok("http://example.com?x=/a"), "/");
        assert_eq!(ok("https://example.com/x%20y?q"), "/x y");
    }

    #[test]
    fn status_codes() {
        assert_eq!(PathError::BadRequest("x").status(), 400);
        assert_eq!(PathError::Forbidden.status(), 403);
        assert_eq!(PathError::NotFound.status(), 404);
    }

    #[test]
    fn hidden_segments() {
        assert!(is_hidden("/.git/config"));
        assert!(is_hidden("/a/.env"));
        assert!(is_hidden(".htpasswd"));
        assert!(is_hidden("/a/.b/c/"));
        assert!(!is_hidden("/"));
        assert!(!is_hidden("/a/b.txt"));
        assert!(!is_hidden("/a.b/c"));
        assert!(!is_hidden(""));
    }

    use crate::test_util::TempDir;

    /// outer/secret.txt (outside the root) and outer/root/{file.txt, sub/inner.txt,
    /// out -> ../secret.txt, abs -> /outer/secret.txt, in -> sub/inner.txt, subl -> sub,
    /// loop -> loop}.
    fn tree() -> (TempDir, std::fs::File) {
        use std::os::unix::fs::symlink;
        let t = TempDir::new("open");
        let root = t.0.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(t.0.join("secret.txt"), b"secret").unwrap();
        std::fs::write(root.join("file.txt"), b"hello").unwrap();
        std::fs::write(root.join("sub/inner.txt"), b"inner").unwrap();
        symlink("../secret.txt", root.join("out")).unwrap();
        symlink(t.0.join("secret.txt"), root.join("abs")).unwrap();
        symlink("sub/inner.txt", root.join("in")).unwrap();
        symlink("sub", root.join("subl")).unwrap();
        symlink("../sub/inner.txt", root.join("sub/up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let dir = std::fs::File::open(&root).unwrap();
        (t, dir)
    }

    fn read(fd: OwnedFd) -> String {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    type Opener = fn(BorrowedFd<'_>, &str, bool) -> Result<OwnedFd, PathError>;

    fn check_opener(open: Opener) {
        let (_t, dir) = tree();
        let root = dir.as_fd();
        assert_eq!(read(open(root, "file.txt", false).unwrap()), "hello");
        assert_eq!(read(open(root, "sub/inner.txt", false).unwrap()), "inner");
        assert_eq!(read(open(root, "/file.txt", false).unwrap()), "hello");
        // The root itself and a subdirectory open as directories.
        for rel in ["", "sub", "sub/"] {
            let fd = open(root, rel, false).unwrap();
            let st = rustix::fs::fstat(&fd).unwrap();
            assert_eq!(
                rustix::fs::FileType::from_raw_mode(st.st_mode),
                rustix::fs::FileType::Directory,
                "{rel:?}"
            );
        }
        assert_eq!(
            open(root, "missing", false).unwrap_err(),
            PathError::NotFound
        );
        assert_eq!(
            open(root, "sub/missing", true).unwrap_err(),
            PathError::NotFound
        );
        assert_eq!(
            open(root, "missing/x", false).unwrap_err(),
            PathError::NotFound
        );
        assert_eq!(
            open(root, "file.txt/x", false).unwrap_err(),
            PathError::NotFound
        );
        assert_eq!(
            open(root, "file.txt/", false).unwrap_err(),
            PathError::NotFound
        );

        // Symlinks out of the root: refused unless the operator trusts links.
        for rel in ["out", "abs"] {
            assert_eq!(
                open(root, rel, false).unwrap_err(),
                PathError::Forbidden,
                "{rel}"
            );
            assert!(open(root, rel, true).is_ok(), "{rel}");
        }
        // Symlinks inside the root: refused unless following.
        for rel in ["in", "subl/inner.txt", "sub/up"] {
            assert_eq!(
                open(root, rel, false).unwrap_err(),
                PathError::Forbidden,
                "{rel}"
            );
            assert_eq!(read(open(root, rel, true).unwrap()), "inner", "{rel}");
        }
        assert!(open(root, "subl/", true).is_ok());
        assert_eq!(open(root, "loop", false).unwrap_err(), PathError::Forbidden);
        assert_eq!(open(root, "loop", true).unwrap_err(), PathError::Forbidden);
        // A ".." that reached here anyway is still fenced by the kernel / the walk.
        assert_eq!(
            open(root, "../secret.txt", false).unwrap_err(),
            PathError::Forbidden
        );
        assert_eq!(
            open(root, "sub/../../secret.txt", true).unwrap_err(),
            PathError::Forbidden
        );
    }

    #[test]
    fn open_beneath_with_openat2() {
        check_opener(open_beneath);
    }

    #[test]
    fn open_beneath_fallback_walk() {
        check_opener(open_beneath_fallback);
    }

    #[test]
    fn outside_symlink_without_follow_is_forbidden_and_normalized_targets_open() {
        let (_t, dir) = tree();
        let root = dir.as_fd();
        for target in [
            "/file.txt",
            "/sub/../file.txt",
            "/./file.txt",
            "http://h/file.txt",
        ] {
            let p = normalize_target(target.as_bytes()).unwrap();
            assert_eq!(read(open_beneath(root, &p[1..], false).unwrap()), "hello");
        }
        let p = normalize_target(b"/out").unwrap();
        assert_eq!(
            open_beneath(root, &p[1..], false).unwrap_err(),
            PathError::Forbidden
        );
    }
}

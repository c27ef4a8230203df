//! The file cache: open files with their metadata and validators, and the contents of small
//! files with their response head already encoded.
//!
//! Opening and stat-ing a file costs syscalls that a busy static server would pay on every
//! request; nginx's `open_file_cache` keeps the fd and metadata instead. keel does the same,
//! and goes further for small files (the common case for a web page's assets): their bytes
//! and their whole 200 response head (minus Date and Connection) live in memory, so answering
//! one is a couple of memcpys into the batch that leaves in one write.
//!
//! The cache is per thread (per loop): no locks, no sharing. It is bounded in entries, in
//! bytes of contents and in open fds; entries are evicted oldest-first. Every entry is checked
//! against the filesystem again once it is older than `cache_valid`, so a changed file is
//! never served stale for longer than that.
//!
//! A file sent from disk up to `tee_file_max` (1 MiB) that is asked for from its start a
//! second time also gets its pages held in a pipe, and its responses from offset 0 start with
//! `tee` rather than `sendfile` (`net::page_pipe`, whose process-wide budget bounds them). A
//! file asked for once, or only by HEAD, a 304 or a range further on, costs no more than before.
//!
//! Fds are the scarce part. A file kept in memory holds none (its revalidation opens the path
//! anyway); only a file sent from disk keeps its fd, for sendfile. Those are capped at a
//! quarter of `RLIMIT_NOFILE` shared among the loops ([`fd_cap`]), so the cache cannot starve
//! the connections of fds; if opening a file still fails for want of fds, the cache gives
//! back half of its own and tries once more ([`lookup`]). An entry no request has used for
//! [`INACTIVE`] is closed when later lookups pass it, so a deleted file's disk space is not
//! held for ever by a busy server.

use std::borrow::Cow;
use std::cell::{Cell, OnceCell, Ref, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::FileType;
use rustix::io::Errno;

use super::conditional;
use super::date;
use super::mime;
use super::path::{self, open_beneath, PathError};
use super::response::{push_content_length, push_header};
use super::site::Site;
use crate::net::page_pipe::{self, Hold, PagePipe};
use crate::net::FileVersion;

/// One file as the cache knows it.
pub struct Entry {
    /// The open file, for a file sent from disk; `None` when its contents are in memory (the
    /// 200 response below holds them), so that such an entry costs no fd.
    disk: Option<Arc<File>>,
    /// The pages of a file sent from disk, held in a pipe once it is asked for from its start
    /// again (`None` inside: the kernel refused). See [`Entry::pages`].
    pages: OnceCell<Option<Arc<PagePipe>>>,
    /// Responses from offset 0 asked of this entry while it held no pages.
    starts: Cell<u32>,
    pub size: u64,
    /// The modification time, `None` when it lies in the future (a clock set wrong, an
    /// archive from elsewhere): RFC 9110 8.8.2.1 forbids a Last-Modified later than Date, and
    /// clamping it to "now" would give each loop, and each reload, a different date for the
    /// same file. Such a file gets no Last-Modified, and date conditions are ignored for it.
    pub mtime: Option<i64>,
    identity: Identity,
    /// What a response sent from disk checks the open file against as it leaves.
    version: FileVersion,
    pub etag: String,
    pub last_modified: Option<String>,
    pub content_type: Cow<'static, str>,
    /// The 200 response, laid out so that the common answer (a keep-alive HTTP/1.1 GET of a
    /// small file) is one copy: the status, Server and Date lines, the Content-Type,
    /// Content-Length, Last-Modified, ETag and Accept-Ranges lines (and Vary when a gzip
    /// sibling exists), the blank line, then the contents for files up to the small-file
    /// limit. The Date line is written when the entry is next served after the second
    /// changes ([`Entry::whole_200`]); only that path reads it.
    encoded_200: RefCell<Box<[u8]>>,
    /// Which Date line `encoded_200` carries (0: none yet).
    dated: Cell<u32>,
    /// Where the header lines end (the blank line follows), from the start of the Content-Type
    /// line.
    head_len: usize,
    /// `name.gz`, when gzip_static is on and it exists.
    pub gzip: Option<Rc<Entry>>,
    /// Served without asking the filesystem again until then (checked + `cache_valid`).
    fresh_until: Instant,
}

/// Where the header lines start in [`Entry`]'s encoded 200 response.
const HEAD_AT: usize = date::STATUS_200_AND_DATE_LEN;

impl Entry {
    /// The header lines of the 200 response after the Date line (no blank line).
    pub fn head_200(&self) -> Ref<'_, [u8]> {
        Ref::map(self.encoded_200.borrow(), |e| {
            &e[HEAD_AT..HEAD_AT + self.head_len]
        })
    }

    /// Whether the contents are kept in memory (after the encoded head).
    fn in_memory(&self) -> bool {
        self.disk.is_none()
    }

    /// The open file, for a file sent from disk (`None`: its contents are in [`Entry::body`]).
    pub fn disk(&self) -> Option<&Arc<File>> {
        self.disk.as_ref()
    }

    /// The file's pages held in a pipe, for a response from its start (`net::page_pipe`), for
    /// a file sent from disk up to `tee_file_max`. They are held at the second such response:
    /// a file asked for once costs nothing more than its open, and one asked for again is
    /// likely in the page cache, so holding it reads no disk. Past the process's budget the
    /// file goes by `sendfile`, and is tried again next time.
    pub fn pages(&self, site: &Site) -> Option<Arc<PagePipe>> {
        if let Some(held) = self.pages.get() {
            return held.clone();
        }
        let file = self.disk.as_ref()?;
        if self.size == 0 || self.size > site.settings.tee_file_max {
            return None;
        }
        let starts = self.starts.get().saturating_add(1);
        self.starts.set(starts);
        if starts < 2 {
            return None;
        }
        match PagePipe::hold(
            file,
            self.size,
            page_pipe::budget(site.settings.cache_bytes),
        ) {
            Hold::Held(pages) => {
                let pages = Arc::new(pages);
                let _ = self.pages.set(Some(pages.clone()));
                Some(pages)
            }
            Hold::NoRoom => None,
            Hold::Refused => {
                let _ = self.pages.set(None);
                None
            }
        }
    }

    /// The contents, for a small file kept in memory.
    pub fn body(&self) -> Option<Ref<'_, [u8]>> {
        self.in_memory().then(|| {
            Ref::map(self.encoded_200.borrow(), |e| {
                &e[HEAD_AT + self.head_len + 2..]
            })
        })
    }

    /// The whole 200 response of a small file kept in memory, status line to contents, with
    /// the Date line of `stamp` (the current batch's: [`date::batch_stamp`]). What a
    /// keep-alive HTTP/1.1 GET gets: one copy, the Date line rewritten here once a second.
    pub fn whole_200(&self, stamp: date::Stamp) -> Option<Ref<'_, [u8]>> {
        if !self.in_memory() {
            return None;
        }
        if self.dated.get() != stamp.0 {
            let mut e = self.encoded_200.borrow_mut();
            let lines: &mut [u8; HEAD_AT] = (&mut e[..HEAD_AT]).try_into().expect("HEAD_AT bytes");
            if date::write_status_200_and_date(lines) != Some(stamp) {
                return None; // not inside that batch: the caller takes the general way
            }
            self.dated.set(stamp.0);
        }
        Some(Ref::map(self.encoded_200.borrow(), |e| &**e))
    }

    /// A file sent from disk (not from memory) is checked with one fstat on its open fd before
    /// each use: a file rewritten in place (same inode, new size or mtime) would otherwise be
    /// sent with the old length, a mix of two versions or a short body. A file replaced by a
    /// rename is caught by the periodic revalidation, which opens the path again.
    /// The file as this entry was built from (for `FileRange::checked`).
    pub fn version(&self) -> FileVersion {
        self.version
    }

    fn unchanged_in_place(&self) -> bool {
        let Some(file) = &self.disk else {
            return true; // the bytes in memory are one consistent version
        };
        match rustix::fs::fstat(&**file) {
            Ok(st) => Identity::of(&st) == self.identity,
            Err(_) => false,
        }
    }
}

/// What tells one version of a file from another: where it is (device, inode), its size, and
/// its modification and status-change times. The change time matters: a rewrite in place that
/// keeps the size and sets the mtime back (`touch -d`, `rsync --times`) changes the ctime,
/// which no call can set back; without it a file cached in memory would be served stale for
/// good.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(st: &rustix::fs::Stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

/// What a path names.
pub enum Found {
    File(Rc<Entry>),
    /// A directory (open, for a listing).
    Dir(OwnedFd),
}

/// A word-at-a-time multiplicative hash (the FxHash step, with a final mix for hashbrown's
/// use of the top bits): a path costs one multiply per 8 bytes, where FNV-1a pays one per byte
/// and showed in profiles at a million requests a second. Neither resists flooding, and none
/// is needed: only files that exist are ever inserted, so a client cannot fill the table with
/// chosen keys.
#[derive(Default, Clone, Copy)]
struct BuildPathHash;

struct PathHash(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl PathHash {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl std::hash::BuildHasher for BuildPathHash {
    type Hasher = PathHash;
    fn build_hasher(&self) -> PathHash {
        PathHash(0)
    }
}

impl std::hash::Hasher for PathHash {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let half = |at: usize| {
            u64::from(u32::from_le_bytes(
                bytes[at..at + 4].try_into().expect("4 bytes"),
            ))
        };
        // The tail is read with loads that may overlap bytes already hashed, never assembled
        // byte by byte in a stack buffer: that would cost a store-forwarding stall per key.
        if n >= 8 {
            let mut at = 0;
            while at + 8 <= n {
                self.add(word(at));
                at += 8;
            }
            if at < n {
                self.add(word(n - 8));
            }
        } else if n >= 4 {
            self.add(half(0) | (half(n - 4) << 32));
        } else if n > 0 {
            let b = |i: usize| u64::from(bytes[i]);
            self.add(b(0) | (b(n / 2) << 8) | (b(n - 1) << 16));
        }
        // The length ends the key (the overlapping reads alone would let keys collide).
        self.add(n as u64);
    }
    /// A slice key's length prefix (`Hash for [u8]` writes one): one step, not eight bytes.
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    #[inline]
    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Spread the multiply's high-bit entropy down: hashbrown indexes with the low bits.
        let h = self.0;
        (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 32)
    }
}

/// An entry that no request has revalidated for this long after it went stale is closed by
/// [`Cache::sweep`] (nginx's `open_file_cache ... inactive=60s`).
const INACTIVE: Duration = Duration::from_secs(60);

/// Entries [`Cache::sweep`] looks at per visit to the filesystem: a full cache is passed over
/// in a thousand such visits, at a cost that is nothing next to the open each one pays.
const SWEEP_STEP: usize = 4;

struct Cache {
    site: u64,
    map: HashMap<Rc<[u8]>, Rc<Entry>, BuildPathHash>,
    /// Insertion order, for oldest-first eviction.
    order: VecDeque<Rc<[u8]>>,
    bytes: u64,
    /// Open fds the entries hold (files sent from disk, and their gzip siblings).
    fds: usize,
    /// Where in `order` [`Cache::sweep`] looks next.
    sweep_at: usize,
    /// The last entry found, checked before the map: a page's requests, and a pipelined batch,
    /// often ask for one file several times in a row. Cleared whenever the map changes.
    last: Option<Recent>,
}

/// [`Cache::last`]: an entry, its path, and whether that path is a plain one
/// ([`path::plain_path`]), which a request-target equal to it byte for byte names as is.
struct Recent {
    path: Rc<[u8]>,
    entry: Rc<Entry>,
    plain: bool,
}

impl Recent {
    fn new(path: Rc<[u8]>, entry: Rc<Entry>) -> Recent {
        let plain = path::plain_path(&path).is_some();
        Recent { path, entry, plain }
    }
}

impl Cache {
    fn new(site: u64) -> Cache {
        Cache {
            site,
            map: HashMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            fds: 0,
            sweep_at: 0,
            last: None,
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::new(0));
}

/// The entry [`lookup`] found last, when `target` (a request-target, not yet decoded) is its
/// path byte for byte and that path is plain: such a target needs no decoding or normalizing,
/// and names that file. `None` sends the caller the general way (check the target, then
/// [`lookup`]). Freshness is checked as [`lookup`] checks it.
pub fn recent(site: &Site, target: &[u8], now: Instant) -> Option<Rc<Entry>> {
    recent_where(site, target, now, false)
}

/// [`recent`], for an entry whose contents are in memory only: what the pre-encoded answer
/// needs. Asked first, it must not cost the fstat that a file sent from disk is checked with,
/// or every large-file request would pay two (this, then [`recent`] on the general way).
pub fn recent_in_memory(site: &Site, target: &[u8], now: Instant) -> Option<Rc<Entry>> {
    recent_where(site, target, now, true)
}

fn recent_where(site: &Site, target: &[u8], now: Instant, memory_only: bool) -> Option<Rc<Entry>> {
    recent_with_path(site, target, now, memory_only).map(|r| r.entry)
}

/// [`recent_where`] with the path it found, for [`Held`].
fn recent_with_path(site: &Site, target: &[u8], now: Instant, memory_only: bool) -> Option<Recent> {
    CACHE.with(|c| {
        let c = c.borrow();
        let r = c.last.as_ref()?;
        (c.site == site.id
            && r.plain
            && (r.entry.in_memory() || !memory_only)
            && *r.path == *target
            && now < r.entry.fresh_until
            && r.entry.unchanged_in_place())
        .then(|| Recent {
            path: r.path.clone(),
            entry: r.entry.clone(),
            plain: true,
        })
    })
}

/// What [`recent_in_memory`] found, held by its caller for the rest of one batch of
/// requests, all answered as of one `now`: within it, the same target names the same fresh
/// entry (its bytes are in memory, so no fstat can tell otherwise), and asking the thread's
/// cache again would only repeat what it said. On `bench/instructions`' pipelined load this
/// took keel from 836 to 776 instructions per response.
pub struct Held(Recent);

impl Held {
    /// [`recent_in_memory`], held.
    pub fn find(site: &Site, target: &[u8], now: Instant) -> Option<Held> {
        recent_with_path(site, target, now, true).map(Held)
    }

    /// `target` is the one it was found for, byte for byte.
    pub fn names(&self, target: &[u8]) -> bool {
        *self.0.path == *target
    }

    pub fn entry(&self) -> &Entry {
        &self.0.entry
    }
}

/// Looks `path` (normalized, beginning with '/') up beneath the site's root. The path is
/// bytes, as the request-target is: a cached file is found without ever checking it is UTF-8,
/// which only opening a file (a cache miss) needs.
pub fn lookup(site: &Site, path: &[u8], now: Instant) -> Result<Found, PathError> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.site != site.id {
            // A new site (first use, or a reload): nothing cached belongs to it.
            *c = Cache::new(site.id);
        }
        // The entry on record for `path`, when it is stale or changed: `load` keeps its
        // contents if the file turns out to be the same one.
        let mut previous = None;
        if let Some(Recent {
            path: p, entry: e, ..
        }) = &c.last
        {
            if **p == *path {
                if now < e.fresh_until && e.unchanged_in_place() {
                    return Ok(Found::File(e.clone()));
                }
                // The memo is the map's own entry (it is cleared on every change to the
                // map): checking the map as well would fstat the same file twice.
                previous = Some(e.clone());
            }
        }
        if previous.is_none() {
            if let Some((p, e)) = c.map.get_key_value(path) {
                if now < e.fresh_until && e.unchanged_in_place() {
                    let entry = e.clone();
                    c.last = Some(Recent::new(p.clone(), entry.clone()));
                    return Ok(Found::File(entry));
                }
                previous = Some(e.clone());
            }
        }
        c.sweep(now);
        let fresh = match std::str::from_utf8(path) {
            Ok(text) => match load(site, text, now, previous.clone()) {
                // Out of fds: the cache's own are the ones this loop can give back.
                Err(PathError::Unavailable(Errno::MFILE | Errno::NFILE)) if c.shed_fds() => {
                    load(site, text, now, previous)
                }
                other => other,
            },
            // Decoded paths are UTF-8 (`path::normalize_target` refuses the rest); nothing
            // else can name a file here.
            Err(_) => Err(PathError::NotFound),
        };
        match fresh {
            Ok(Found::File(entry)) => {
                c.insert(site, path, entry.clone());
                Ok(Found::File(entry))
            }
            other => {
                c.remove(path);
                other
            }
        }
    })
}

impl Cache {
    fn insert(&mut self, site: &Site, path: &[u8], entry: Rc<Entry>) {
        self.last = None;
        let (size, fds) = (entry_bytes(&entry), entry_fds(&entry));
        let key: Rc<[u8]> = Rc::from(path);
        match self.map.insert(key.clone(), entry) {
            Some(old) => self.forget(&old),
            None => self.order.push_back(key),
        }
        self.bytes += size;
        self.fds += fds;
        let s = &site.settings;
        while self.map.len() > s.cache_entries || self.bytes > s.cache_bytes {
            if !self.evict(0) {
                break;
            }
        }
        // The cap is never below 8: below that it is not worth a getrlimit per insert (each
        // revalidation is one).
        let cap = if self.fds > FD_CAP_FLOOR {
            fd_cap(site)
        } else {
            FD_CAP_FLOOR
        };
        while self.fds > cap {
            // Only entries that hold an fd give one back: the oldest of those goes.
            let Some(i) = self.order.iter().position(|p| self.holds_fds(p)) else {
                break;
            };
            self.evict(i);
        }
    }

    fn remove(&mut self, path: &[u8]) {
        self.last = None;
        if let Some(old) = self.map.remove(path) {
            self.forget(&old);
            self.order.retain(|p| **p != *path);
        }
    }

    /// Drops the entry at `order[i]`; false if there is none.
    fn evict(&mut self, i: usize) -> bool {
        let Some(key) = self.order.remove(i) else {
            return false;
        };
        self.last = None;
        if let Some(old) = self.map.remove(&key) {
            self.forget(&old);
        }
        true
    }

    /// Takes a removed entry's contents and fds off the totals.
    fn forget(&mut self, old: &Entry) {
        self.bytes -= entry_bytes(old);
        self.fds -= entry_fds(old);
    }

    fn holds_fds(&self, path: &[u8]) -> bool {
        self.map.get(path).is_some_and(|e| entry_fds(e) > 0)
    }

    /// Closes the older half of the entries that hold fds (at least one), when opening a file
    /// failed for want of fds. False if there were none to close. (An fd a queued sendfile
    /// still uses is closed when that send ends.)
    fn shed_fds(&mut self) -> bool {
        let holders = self.order.iter().filter(|p| self.holds_fds(p)).count();
        let mut shed = holders.div_ceil(2);
        let mut i = 0;
        while shed > 0 && i < self.order.len() {
            if self.holds_fds(&self.order[i]) {
                self.evict(i);
                shed -= 1;
            } else {
                i += 1;
            }
        }
        holders > 0
    }

    /// Looks at the next few entries, round the cache, and closes those that have gone
    /// unused for [`INACTIVE`]: without it, a file deleted from the root would keep its fd,
    /// and its disk space, until the cache filled up.
    fn sweep(&mut self, now: Instant) {
        for _ in 0..SWEEP_STEP.min(self.order.len()) {
            if self.sweep_at >= self.order.len() {
                self.sweep_at = 0;
            }
            let inactive = self.map.get(&self.order[self.sweep_at]).is_none_or(|e| {
                now.checked_duration_since(e.fresh_until)
                    .is_some_and(|idle| idle > INACTIVE)
            });
            if inactive {
                self.evict(self.sweep_at);
            } else {
                self.sweep_at += 1;
            }
        }
    }
}

fn entry_bytes(e: &Entry) -> u64 {
    let own = e.body().map_or(0, |b| b.len() as u64);
    own + e.gzip.as_ref().map_or(0, |g| entry_bytes(g))
}

fn entry_fds(e: &Entry) -> usize {
    usize::from(e.disk.is_some()) + e.gzip.as_ref().map_or(0, |g| entry_fds(g))
}

/// How many fds one loop's cache may hold open: a quarter of the process's `RLIMIT_NOFILE`
/// (read now: the server may have raised it after the site was opened), shared by the loops
/// that each keep a cache ([`crate::http::HttpSettings::loops`]), and at least 8. The rest
/// is for connections and everything else.
fn fd_cap(site: &Site) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let share = limit / 4 / site.settings.loops.max(1) as u64;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .max(FD_CAP_FLOOR)
}

/// The fewest open files a loop's cache may keep, whatever the fd limit.
const FD_CAP_FLOOR: usize = 8;

/// Opens and stats `path`; keeps `previous` (and its cached contents) when the file is the
/// same one, unchanged.
fn load(
    site: &Site,
    path: &str,
    now: Instant,
    previous: Option<Rc<Entry>>,
) -> Result<Found, PathError> {
    let Some(root) = site.root.as_ref() else {
        return Err(PathError::NotFound);
    };
    let rel = path.trim_start_matches('/');
    let fd = open_beneath(root.as_fd(), rel, site.settings.follow_symlinks)?;
    let st = rustix::fs::fstat(&fd).map_err(PathError::Failed)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => return Ok(Found::Dir(fd)),
        FileType::RegularFile => {}
        _ => return Err(PathError::Forbidden),
    }
    let identity = Identity::of(&st);
    let gzip = if site.settings.gzip_static && !path.ends_with(".gz") {
        let gz_path = format!("{path}.gz");
        match load(
            site,
            &gz_path,
            now,
            previous.as_ref().and_then(|p| p.gzip.clone()),
        ) {
            Ok(Found::File(g)) => Some(g),
            // Could not look (out of fds, say): the answer would be cached without its
            // sibling until revalidation, so the request fails instead, as the file's would.
            Err(e @ (PathError::Unavailable(_) | PathError::Failed(_))) => return Err(e),
            _ => None,
        }
    } else {
        None
    };
    if let Some(prev) = previous {
        // A file stamped in the future got no Last-Modified; once that time has come, it is
        // built again with one (the file itself is unchanged, so its identity is too).
        let dated_now = prev.mtime.is_none() && (0..=date::date_secs()).contains(&st.st_mtime);
        if prev.identity == identity && same_gzip(&prev.gzip, &gzip) && !dated_now {
            let mut kept = Rc::try_unwrap(prev).unwrap_or_else(|shared| clone_entry(&shared));
            kept.fresh_until = fresh_until(site, now);
            kept.gzip = gzip;
            return Ok(Found::File(Rc::new(kept)));
        }
    }
    let size = st.st_size as u64;
    let file = File::from(fd);
    let etag = conditional::etag(
        size,
        st.st_mtime,
        st.st_mtime_nsec as u32,
        st.st_ino,
        (st.st_ctime, st.st_ctime_nsec as u32),
    );
    // Never later than the Date it is sent with (the batch's, which may lag the clock), and
    // never before 1970, which an HTTP-date cannot carry: clamped to the epoch it would
    // compare equal with every older time, and a rewrite dated 1965 would get a 304.
    let mtime = (0..=date::date_secs())
        .contains(&st.st_mtime)
        .then_some(st.st_mtime);
    let last_modified = mtime.map(conditional::http_date);
    let content_type = mime::content_type(path);
    let small = size <= site.settings.small_file_max;
    let mut encoded = Vec::with_capacity(256);
    // Room for the status, Server and Date lines, written when first served whole.
    encoded.resize(HEAD_AT, 0);
    push_header(&mut encoded, b"Content-Type", content_type.as_bytes());
    push_content_length(&mut encoded, size);
    if let Some(lm) = &last_modified {
        push_header(&mut encoded, b"Last-Modified", lm.as_bytes());
    }
    push_header(&mut encoded, b"ETag", etag.as_bytes());
    encoded.extend_from_slice(b"Accept-Ranges: bytes\r\n");
    if gzip.is_some() {
        encoded.extend_from_slice(b"Vary: Accept-Encoding\r\n");
    }
    let head_len = encoded.len() - HEAD_AT;
    // Exactly what is needed, so that making it a boxed slice does not copy the body again.
    encoded.reserve_exact(2 + if small { size as usize } else { 0 });
    encoded.extend_from_slice(b"\r\n");
    let in_memory = small && {
        let at = encoded.len();
        encoded.resize(at + size as usize, 0);
        // Shrank while we read: serve it with sendfile this time; the next check reloads.
        let read = file.read_exact_at(&mut encoded[at..], 0).is_ok();
        if !read {
            encoded.truncate(at);
        }
        read
    };
    // A file kept in memory gives its fd back now: revalidation opens the path again anyway.
    let disk = (!in_memory).then(|| Arc::new(file));
    Ok(Found::File(Rc::new(Entry {
        disk,
        pages: OnceCell::new(),
        starts: Cell::new(0),
        size,
        mtime,
        identity,
        version: FileVersion::of(&st),
        etag,
        last_modified,
        content_type,
        encoded_200: RefCell::new(encoded.into_boxed_slice()),
        dated: Cell::new(0),
        head_len,
        gzip,
        fresh_until: fresh_until(site, now),
    })))
}

/// When an entry checked at `now` must be checked again.
fn fresh_until(site: &Site, now: Instant) -> Instant {
    now.checked_add(site.settings.cache_valid)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

fn same_gzip(a: &Option<Rc<Entry>>, b: &Option<Rc<Entry>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x.identity == y.identity,
        _ => false,
    }
}

fn clone_entry(e: &Entry) -> Entry {
    Entry {
        disk: e.disk.clone(),
        pages: e.pages.clone(),
        starts: e.starts.clone(),
        size: e.size,
        mtime: e.mtime,
        identity: e.identity,
        version: e.version,
        etag: e.etag.clone(),
        last_modified: e.last_modified.clone(),
        content_type: e.content_type.clone(),
        encoded_200: e.encoded_200.clone(),
        dated: e.dated.clone(),
        head_len: e.head_len,
        gzip: e.gzip.clone(),
        fresh_until: e.fresh_until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpSettings;
    use std::hash::{BuildHasher, Hasher};

    fn hash(path: &str) -> u64 {
        let mut h = BuildPathHash.build_hasher();
        h.write(path.as_bytes());
        h.finish()
    }

    #[test]
    fn paths_of_every_length_and_shared_tails_hash_apart() {
        let mut seen = std::collections::HashSet::new();
        for len in 0..40 {
            // The same bytes at every length, and variants that differ in one byte only,
            // where the overlapping tail reads could otherwise make keys collide.
            let base: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            assert!(seen.insert(hash(&base)), "{base:?}");
            if len > 0 {
                let mut other = base.clone().into_bytes();
                other[len / 2] = b'/';
                assert!(seen.insert(hash(std::str::from_utf8(&other).unwrap())));
            }
        }
    }

    /// A site whose root is a fresh directory (named after `tag`) holding `files`.
    fn site_with(tag: &str, files: &[(&str, &[u8])]) -> (std::path::PathBuf, Arc<Site>) {
        let root = std::env::temp_dir().join(format!("keel-files-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        for (name, body) in files {
            std::fs::write(root.join(name), body).unwrap();
        }
        let site = Site::open(HttpSettings {
            root: Some(root.clone()),
            ..HttpSettings::default()
        })
        .unwrap();
        (root, site)
    }

    #[test]
    fn lookups_alternating_between_files_get_each_its_own_entry() {
        let (root, site) = site_with("test", &[("a.txt", b"aaa"), ("b.txt", b"bbbbb")]);
        let now = Instant::now();
        date::set_batch_time(Some(now));
        let stamp = date::batch_stamp().expect("inside a batch");
        for _ in 0..3 {
            for (path, body) in [
                ("/a.txt", &b"aaa"[..]),
                ("/b.txt", b"bbbbb"),
                ("/b.txt", b"bbbbb"),
            ] {
                let Ok(Found::File(e)) = lookup(&site, path.as_bytes(), now) else {
                    panic!("{path} not found");
                };
                assert_eq!(e.body().as_deref(), Some(body), "{path}");
                assert_eq!(e.size, body.len() as u64);
                let whole = e.whole_200(stamp).unwrap();
                let mut expected = Vec::new();
                date::push_status_200_and_date(&mut expected);
                expected.extend_from_slice(&e.head_200());
                expected.extend_from_slice(b"\r\n");
                expected.extend_from_slice(body);
                assert_eq!(&*whole, &expected[..], "{path}");
            }
        }
        assert!(matches!(
            lookup(&site, b"/missing.txt", now),
            Err(PathError::NotFound)
        ));
        date::set_batch_time(None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// (open fds the cache holds, whether it holds `path`)
    fn held(path: &[u8]) -> (usize, bool) {
        CACHE.with(|c| {
            let c = c.borrow();
            (c.fds, c.map.contains_key(path))
        })
    }

    #[test]
    fn files_in_memory_hold_no_fd_and_files_on_disk_are_capped() {
        let big = vec![b'x'; 64 * 1024];
        let names: Vec<String> = (0..20).map(|i| format!("big{i}.bin")).collect();
        let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &big[..])).collect();
        files.push(("small.txt", b"tiny"));
        let (root, mut site) = site_with("fdcap", &files);
        // So many loops that the share of RLIMIT_NOFILE rounds to nothing: the floor, 8.
        Arc::get_mut(&mut site).unwrap().settings.loops = usize::MAX;
        let now = Instant::now();
        assert!(matches!(
            lookup(&site, b"/small.txt", now),
            Ok(Found::File(_))
        ));
        assert_eq!(
            held(b"/small.txt"),
            (0, true),
            "a file in memory holds no fd"
        );
        for name in &names {
            let path = format!("/{name}");
            assert!(matches!(
                lookup(&site, path.as_bytes(), now),
                Ok(Found::File(_))
            ));
        }
        assert_eq!(held(b"/small.txt").0, 8, "capped at 8 open files");
        // The newest are kept, the oldest closed.
        assert!(held(b"/big19.bin").1 && !held(b"/big0.bin").1);
        // Out of fds, the older half goes.
        assert!(CACHE.with(|c| c.borrow_mut().shed_fds()));
        assert_eq!(held(b"/big19.bin"), (4, true));
        assert!(!held(b"/big15.bin").1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn pages_are_held_at_the_second_start_and_only_up_to_tee_file_max() {
        let mid = vec![b'm'; 100_000];
        let big = vec![b'b'; 100_001];
        let files: [(&str, &[u8]); 2] = [("mid.bin", &mid), ("big.bin", &big)];
        let (root, mut site) = site_with("held", &files);
        Arc::get_mut(&mut site).unwrap().settings.tee_file_max = 100_000;
        let now = Instant::now();
        let entry = |path: &[u8], at: Instant| match lookup(&site, path, at) {
            Ok(Found::File(e)) => e,
            _ => panic!("{} not found", String::from_utf8_lossy(path)),
        };
        let e = entry(b"/mid.bin", now);
        assert!(e.pages(&site).is_none(), "asked for once: nothing held");
        let Some(pages) = e.pages(&site) else {
            eprintln!("skipped: no pipe for 100 KB here");
            return;
        };
        assert_eq!(pages.len(), 100_000);
        assert!(Arc::ptr_eq(&e.pages(&site).unwrap(), &pages));
        // Revalidated past cache_valid and found unchanged: the same pages.
        let later = entry(b"/mid.bin", now + Duration::from_secs(5));
        assert!(!Rc::ptr_eq(&later, &e), "a revalidated entry");
        assert!(Arc::ptr_eq(&later.pages(&site).unwrap(), &pages));
        // Past tee_file_max: never held.
        let b = entry(b"/big.bin", now);
        assert!(b.pages(&site).is_none() && b.pages(&site).is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn entries_unused_for_a_minute_are_closed() {
        let big = vec![b'x'; 64 * 1024];
        let files: [(&str, &[u8]); 3] = [("a.bin", &big), ("b.bin", &big), ("c.txt", b"c")];
        let (root, site) = site_with("sweep", &files);
        let now = Instant::now();
        for path in [&b"/a.bin"[..], b"/b.bin"] {
            assert!(matches!(lookup(&site, path, now), Ok(Found::File(_))));
        }
        assert_eq!(held(b"/a.bin"), (2, true));
        // b.bin is asked for again a minute later (and revalidated); a.bin is deleted and
        // never asked for again.
        let minute = now + INACTIVE;
        assert!(matches!(
            lookup(&site, b"/b.bin", minute),
            Ok(Found::File(_))
        ));
        std::fs::remove_file(root.join("a.bin")).unwrap();
        // Any later visit to the filesystem passes them: a.bin's fd is closed, b.bin's kept.
        let later = minute + Duration::from_secs(5);
        assert!(matches!(
            lookup(&site, b"/c.txt", later),
            Ok(Found::File(_))
        ));
        assert_eq!(held(b"/a.bin"), (1, false));
        assert!(held(b"/b.bin").1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn recent_in_memory_skips_files_sent_from_disk() {
        let big = vec![b'x'; 64 * 1024];
        let (root, site) = site_with("memory", &[("small.txt", b"tiny"), ("big.bin", &big)]);
        let now = Instant::now();
        for path in [&b"/small.txt"[..], b"/big.bin"] {
            // Twice: the first lookup loads, the second sets the memo.
            for _ in 0..2 {
                assert!(matches!(lookup(&site, path, now), Ok(Found::File(_))));
            }
            let any = recent(&site, path, now).expect("the memo names it");
            let in_memory = recent_in_memory(&site, path, now);
            assert_eq!(in_memory.is_some(), any.in_memory(), "{path:?}");
            assert_eq!(any.in_memory(), path == b"/small.txt", "{path:?}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn recent_names_the_last_file_only_for_its_plain_path_verbatim() {
        let (root, site) = site_with("recent", &[("a.txt", b"aaa"), ("a b.txt", b"spaced")]);
        let now = Instant::now();
        // Nothing looked up yet; then the file that was.
        assert!(recent(&site, b"/a.txt", now).is_none());
        let Ok(Found::File(a)) = lookup(&site, b"/a.txt", now) else {
            panic!("a.txt not found");
        };
        // The first lookup loads and inserts (which clears the memo); the next one finds it
        // in the map and remembers it.
        assert!(recent(&site, b"/a.txt", now).is_none());
        assert!(matches!(lookup(&site, b"/a.txt", now), Ok(Found::File(_))));
        let found = recent(&site, b"/a.txt", now).expect("the memo names a.txt");
        assert!(Rc::ptr_eq(&found, &a));
        // Only verbatim: another spelling of the path, or another path, goes the general way.
        for other in [
            &b"/a.txt?x"[..],
            b"/./a.txt",
            b"//a.txt",
            b"/a.tx",
            b"/a%2etxt",
        ] {
            assert!(recent(&site, other, now).is_none(), "{other:?}");
        }
        // Not after the entry's freshness ends.
        let later = now + site.settings.cache_valid + std::time::Duration::from_secs(1);
        assert!(recent(&site, b"/a.txt", later).is_none());
        // A path that is not plain is never matched against a target: "/a b.txt" was decoded
        // from "/a%20b.txt", and a target spelled "/a b.txt" is not even valid.
        for _ in 0..2 {
            assert!(matches!(
                lookup(&site, b"/a b.txt", now),
                Ok(Found::File(_))
            ));
        }
        assert!(recent(&site, b"/a b.txt", now).is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_response_kept_whole_gets_the_date_line_of_each_second() {
        let (root, site) = site_with("date", &[("a.txt", b"aaa")]);
        let whole_now = || {
            let now = Instant::now();
            date::set_batch_time(Some(now));
            let Ok(Found::File(e)) = lookup(&site, b"/a.txt", now) else {
                panic!("a.txt not found");
            };
            let whole = e.whole_200(date::batch_stamp().unwrap()).unwrap().to_vec();
            let mut lines = Vec::new();
            date::push_status_200_and_date(&mut lines);
            date::set_batch_time(None);
            (whole, lines)
        };
        let (first, lines) = whole_now();
        assert!(
            first.starts_with(&lines),
            "{:?}",
            String::from_utf8_lossy(&first)
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (second, later_lines) = whole_now();
        assert_ne!(lines, later_lines, "the second changed");
        assert!(
            second.starts_with(&later_lines),
            "{:?}",
            String::from_utf8_lossy(&second)
        );
        assert_eq!(first[lines.len()..], second[later_lines.len()..]);
        // Outside a batch there is no stamp: the whole response is not offered.
        assert_eq!(date::batch_stamp(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

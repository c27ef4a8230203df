//! The file cache: open files with their metadata and validators, and the contents of small
//! files with their response head already encoded.
//!
//! Opening and stat-ing a file costs syscalls that a busy static server would pay on every
//! request; nginx's `open_file_cache` keeps the fd and metadata instead. keel does the same,
//! and goes further for small files (the common case for a web page's assets): their bytes
//! and their whole 200 response head (minus Date and Connection) live in memory, so answering
//! one is a couple of memcpys into the batch that leaves in one write.
//!
//! The cache is per thread (per loop): no locks, no sharing. It is bounded in entries (open
//! fds) and in bytes of contents; entries are evicted oldest-first. Every entry is checked
//! against the filesystem again once it is older than `cache_valid`, so a changed file is
//! never served stale for longer than that.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::FileType;

use super::conditional;
use super::mime;
use super::path::{open_beneath, PathError};
use super::response::{push_content_length, push_header};
use super::site::Site;

/// One file as the cache knows it.
pub struct Entry {
    pub file: Arc<File>,
    pub size: u64,
    pub mtime: i64,
    identity: (u64, u64, i64, i64, u64),
    pub etag: String,
    pub last_modified: String,
    pub content_type: Cow<'static, str>,
    /// The contents, for files up to the small-file limit.
    pub body: Option<Box<[u8]>>,
    /// Content-Type, Content-Length, Last-Modified, ETag and Accept-Ranges lines of the 200
    /// response (and Vary when a gzip sibling exists).
    pub head_200: Box<[u8]>,
    /// `name.gz`, when gzip_static is on and it exists.
    pub gzip: Option<Rc<Entry>>,
    /// Served without asking the filesystem again until then (checked + `cache_valid`).
    fresh_until: Instant,
}

impl Entry {
    /// A file sent from disk (not from memory) is checked with one fstat on its open fd before
    /// each use: a file rewritten in place (same inode, new size or mtime) would otherwise be
    /// sent with the old length, a mix of two versions or a short body. A file replaced by a
    /// rename is caught by the periodic revalidation, which opens the path again.
    fn unchanged_in_place(&self) -> bool {
        if self.body.is_some() {
            return true; // the bytes in memory are one consistent version
        }
        match rustix::fs::fstat(&*self.file) {
            Ok(st) => {
                (st.st_mtime, st.st_mtime_nsec as i64, st.st_size as u64)
                    == (self.identity.2, self.identity.3, self.identity.4)
            }
            Err(_) => false,
        }
    }
}

/// What a path names.
pub enum Found {
    File(Rc<Entry>),
    /// A directory (open, for a listing).
    Dir(OwnedFd),
}

/// FNV-1a: paths are short, and SipHash's flood resistance buys nothing here (only files
/// that exist are ever inserted, so a client cannot fill the table with chosen keys).
#[derive(Default, Clone, Copy)]
struct BuildFnv;

struct Fnv(u64);

impl std::hash::BuildHasher for BuildFnv {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

struct Cache {
    site: u64,
    map: HashMap<String, Rc<Entry>, BuildFnv>,
    /// Insertion order, for oldest-first eviction.
    order: VecDeque<String>,
    bytes: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache {
        site: 0,
        map: HashMap::default(),
        order: VecDeque::new(),
        bytes: 0,
    });
}

/// Looks `path` (normalized, beginning with '/') up beneath the site's root.
pub fn lookup(site: &Site, path: &str, now: Instant) -> Result<Found, PathError> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.site != site.id {
            // A new site (first use, or a reload): nothing cached belongs to it.
            *c = Cache {
                site: site.id,
                map: HashMap::default(),
                order: VecDeque::new(),
                bytes: 0,
            };
        }
        if let Some(e) = c.map.get(path) {
            if now < e.fresh_until && e.unchanged_in_place() {
                return Ok(Found::File(e.clone()));
            }
        }
        let fresh = load(site, path, now, c.map.get(path).cloned());
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
    fn insert(&mut self, site: &Site, path: &str, entry: Rc<Entry>) {
        let size = entry_bytes(&entry);
        match self.map.insert(path.to_string(), entry) {
            Some(old) => self.bytes -= entry_bytes(&old),
            None => self.order.push_back(path.to_string()),
        }
        self.bytes += size;
        let s = &site.settings;
        while self.map.len() > s.cache_entries || self.bytes > s.cache_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.map.remove(&oldest) {
                self.bytes -= entry_bytes(&old);
            }
        }
    }

    fn remove(&mut self, path: &str) {
        if let Some(old) = self.map.remove(path) {
            self.bytes -= entry_bytes(&old);
            self.order.retain(|p| p != path);
        }
    }
}

fn entry_bytes(e: &Entry) -> u64 {
    let own = e.body.as_ref().map_or(0, |b| b.len() as u64);
    own + e.gzip.as_ref().map_or(0, |g| entry_bytes(g))
}

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
    let st = rustix::fs::fstat(&fd).map_err(|_| PathError::Forbidden)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => return Ok(Found::Dir(fd)),
        FileType::RegularFile => {}
        _ => return Err(PathError::Forbidden),
    }
    let identity = (
        st.st_dev,
        st.st_ino,
        st.st_mtime,
        st.st_mtime_nsec as i64,
        st.st_size as u64,
    );
    let gzip = if site.settings.gzip_static && !path.ends_with(".gz") {
        let gz_path = format!("{path}.gz");
        match load(
            site,
            &gz_path,
            now,
            previous.as_ref().and_then(|p| p.gzip.clone()),
        ) {
            Ok(Found::File(g)) => Some(g),
            _ => None,
        }
    } else {
        None
    };
    if let Some(prev) = previous {
        if prev.identity == identity && same_gzip(&prev.gzip, &gzip) {
            let mut kept = Rc::try_unwrap(prev).unwrap_or_else(|shared| clone_entry(&shared));
            kept.fresh_until = fresh_until(site, now);
            kept.gzip = gzip;
            return Ok(Found::File(Rc::new(kept)));
        }
    }
    let size = st.st_size as u64;
    let file = File::from(fd);
    let body = if size <= site.settings.small_file_max {
        let mut buf = vec![0u8; size as usize];
        match file.read_exact_at(&mut buf, 0) {
            Ok(()) => Some(buf.into_boxed_slice()),
            // Shrank while we read: serve it with sendfile this time; the next check reloads.
            Err(_) => None,
        }
    } else {
        None
    };
    let etag = conditional::etag(size, st.st_mtime, st.st_mtime_nsec as u32, st.st_ino);
    let last_modified = conditional::http_date(st.st_mtime);
    let content_type = mime::content_type(path);
    let mut head = Vec::with_capacity(200);
    push_header(&mut head, b"Content-Type", content_type.as_bytes());
    push_content_length(&mut head, size);
    push_header(&mut head, b"Last-Modified", last_modified.as_bytes());
    push_header(&mut head, b"ETag", etag.as_bytes());
    head.extend_from_slice(b"Accept-Ranges: bytes\r\n");
    if gzip.is_some() {
        head.extend_from_slice(b"Vary: Accept-Encoding\r\n");
    }
    Ok(Found::File(Rc::new(Entry {
        file: Arc::new(file),
        size,
        mtime: st.st_mtime,
        identity,
        etag,
        last_modified,
        content_type,
        body,
        head_200: head.into_boxed_slice(),
        gzip,
        fresh_until: fresh_until(site, now),
    })))
}

/// When an entry checked at `now` must be checked again.
fn fresh_until(site: &Site, now: Instant) -> Instant {
    now.checked_add(site.settings.cache_valid)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(365 * 86_400))
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
        file: e.file.clone(),
        size: e.size,
        mtime: e.mtime,
        identity: e.identity,
        etag: e.etag.clone(),
        last_modified: e.last_modified.clone(),
        content_type: e.content_type.clone(),
        body: e.body.clone(),
        head_200: e.head_200.clone(),
        gzip: e.gzip.clone(),
        fresh_until: e.fresh_until,
    }
}

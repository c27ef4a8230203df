//! A connection's output queue: bytes, and file ranges that leave with sendfile.
//!
//! Most output is bytes (a response head, an echoed message). A static-file server also sends
//! file contents, and copying them through user space would cost a read and a copy per byte:
//! the notes' zero-copy rule says hand the kernel the file and let it move the pages itself
//! (`sendfile(2)`). The queue keeps both kinds in order, so pipelined responses (head, file,
//! head, file...) leave exactly as they were queued.
//!
//! Bytes queued in front of a file go out with `MSG_MORE`: the kernel holds a short head back
//! until the file's first pages join it, so head and body share a packet (what nginx gets with
//! `tcp_nopush`/TCP_CORK, without the two extra setsockopt calls). A file longer than one
//! sendfile pipe load is sent corked as well; see [`CORK_ABOVE`].

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustix::net::SendFlags;

use crate::net::buffer::Buffer;
use crate::net::connection::ConnId;
use crate::net::log_throttle::{left_out_note, LogThrottle};
use crate::net::page_pipe::PagePipe;
use crate::net::splice::Pipe;

/// A range of an open file to send. The file is shared: an open-file cache can hand the same
/// descriptor to every connection that downloads it.
#[derive(Clone, Debug)]
pub struct FileRange {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
    /// The file as it was when the response was built. A long range is sent over many calls;
    /// before each but the first the file is checked against it, and one rewritten in place
    /// meanwhile ends the connection (the client sees a short body) rather than send the rest
    /// of the new version under the old response. It bounds the mix, it cannot prevent it:
    /// what sendfile queued refers to the page cache, so the bytes still in the socket buffers
    /// are read as the file is then (in a test, 1.6 MB of a 100 MB download, where 61.6 MB of
    /// the new version used to follow, the response ending as if whole). `None`: not checked.
    pub version: Option<FileVersion>,
    /// A send of the range was tried: every later call checks `version` first. (The first
    /// is not: the response was built from a check made just before.) Tried, not sent: a
    /// first call that met a full socket may be followed by the next one much later, and held
    /// pages (below) would go out then unchecked, a file truncated in place meanwhile sending
    /// the zeroed tail of its pages where `sendfile` would stop at the new end.
    tried: bool,
    /// The file's first pages, held in a pipe: a range from offset 0 starts with `tee` from
    /// them rather than `sendfile` (see `net::page_pipe`).
    pages: Option<Arc<PagePipe>>,
}

/// What tells whether a file was written to while a response from it leaves: its size, its
/// modification time, and its status-change time, which every write moves and nothing can set
/// back. The ctime also moves on a chmod, chown, link or unlink (a new version renamed over
/// it, the usual deploy), none of which changes a byte the open fd reads: a ctime that moved
/// along with the mode, owner or link count is taken for one of those. A file that grew ends
/// the response too: an append leaves the promised bytes alone, but a longer version copied
/// over the file (`cp`: truncate, then write) cannot be told from one, and would go out as a
/// mix of two versions under the first one's ETag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileVersion {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// Link count, mode, owner and group.
    pub meta: (u64, u32, u32, u32),
}

impl FileVersion {
    // st_nlink is u64 on x86_64 and u32 on aarch64.
    #[allow(clippy::unnecessary_cast)]
    pub fn of(st: &rustix::fs::Stat) -> FileVersion {
        FileVersion {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
            meta: (st.st_nlink as u64, st.st_mode, st.st_uid, st.st_gid),
        }
    }

    /// Whether the bytes `self` promised may differ now: a new size or mtime, or a ctime that
    /// moved with nothing else to explain it (a write whose mtime was set back). A `touch`
    /// moves the mtime and cannot be told from a write.
    pub fn written_since(&self, now: &FileVersion) -> bool {
        self.size != now.size
            || self.mtime != now.mtime
            || (self.ctime != now.ctime && self.meta == now.meta)
    }
}

impl FileRange {
    /// A range sent as the file is, unchecked.
    pub fn new(file: Arc<File>, offset: u64, len: u64) -> FileRange {
        FileRange {
            file,
            offset,
            len,
            version: None,
            tried: false,
            pages: None,
        }
    }

    /// A range of a file that must still be `version` whenever more of it leaves.
    pub fn checked(file: Arc<File>, offset: u64, len: u64, version: FileVersion) -> FileRange {
        FileRange {
            version: Some(version),
            ..FileRange::new(file, offset, len)
        }
    }

    /// The same range, started from `pages` (the file's, as `version` describes it) when it
    /// begins at offset 0 and they hold all of it.
    pub fn with_pages(self, pages: Option<Arc<PagePipe>>) -> FileRange {
        let pages = pages.filter(|p| self.offset == 0 && self.len <= p.len());
        FileRange { pages, ..self }
    }
}

enum Segment {
    Bytes(Buffer),
    File(FileRange),
    /// `len` bytes waiting in a spliced source's pipe (see `net::splice`).
    Piped(Arc<Pipe>, u64),
}

/// The result of one flush attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    /// Bytes the kernel took.
    pub written: u64,
    /// Nothing is left queued.
    pub done: bool,
    /// A spliced source that had stopped for a full pipe, now that this flush emptied some
    /// of it: it may read again.
    pub unblocked: Option<ConnId>,
    /// It stopped at the budget with the socket still taking bytes: no readiness event will
    /// say to go on (an edge-triggered poller reports a socket only once it filled), so the
    /// caller must come back of its own accord.
    pub budget_spent: bool,
}

/// Largest single sendfile request: big enough that a fast reader costs few calls, small
/// enough that one connection cannot keep the loop in the kernel for long.
const SENDFILE_CHUNK: u64 = 1 << 20;

/// "A file was written to while being sent", at most once a second.
static CHANGED_WHILE_SENT: LogThrottle = LogThrottle::new(1);

/// A file range longer than this is sent with TCP_CORK set. Uncorked, a TCP_NODELAY socket
/// sends whatever fits at the moment as a packet of its own: the part of a segment that reaches
/// the edge of the peer's window, the end of one of sendfile's 64 KiB in-kernel pipe loads. The
/// reader pays per packet. Corked, the kernel sends only full segments, and taking the cork off
/// at the end of the range pushes the one short tail. Measured on loopback with one keep-alive
/// reader (`ss -ti` data_segs_out over 200 responses): a 1 MiB file left in 21–25 segments
/// uncorked and in 17.9 corked (17 is the least possible; nginx, which corks with
/// `tcp_nopush`, 17.8); 512 KiB in 12.5–12.9 against 9; 256 KiB in 5.9–6.0 against 5. Under
/// wrk with 100 connections the reader's CPU per 1 MiB response fell by 4–10%. A range of one
/// pipe load or less is spared the two setsockopt calls: `MSG_MORE` on the head already joins
/// it to its body.
const CORK_ABOVE: u64 = 64 * 1024;

/// Output waiting for the socket, in order. An empty queue is one null pointer: most
/// connections write straight through and never queue anything, and an idle connection's
/// size is what decides how many fit in a GiB.
#[derive(Default)]
pub(crate) struct OutputQueue {
    inner: Option<Box<Queued>>,
}

#[derive(Default)]
struct Queued {
    segments: VecDeque<Segment>,
    len: u64,
    /// TCP_CORK is set while a long file range leaves (see [`CORK_ABOVE`]).
    corked: bool,
}

impl OutputQueue {
    /// Bytes (memory and file) still to send.
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, |q| q.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes, into the last byte segment when there is one (so many small writes make
    /// one send later), else into a fresh buffer from `get`.
    pub fn push_bytes(&mut self, data: &[u8], get: impl FnOnce() -> Buffer) {
        if !data.is_empty() {
            self.inner.get_or_insert_default().push_bytes(data, get);
        }
    }

    pub fn push_file(&mut self, range: FileRange) {
        if range.len > 0 {
            self.inner.get_or_insert_default().push_file(range);
        }
    }

    /// `len` more bytes are in `pipe`, to follow what is queued: they join the last segment
    /// when it is the same pipe's.
    pub fn push_piped(&mut self, pipe: &Arc<Pipe>, len: u64) {
        if len == 0 {
            return;
        }
        let q = self.inner.get_or_insert_default();
        q.len += len;
        match q.segments.back_mut() {
            Some(Segment::Piped(p, n)) if Arc::ptr_eq(p, pipe) => *n += len,
            _ => q.segments.push_back(Segment::Piped(pipe.clone(), len)),
        }
    }

    /// Sends what the socket takes, in order. Stops at the first short write (the socket's
    /// buffer is full: the poller will say when it has room), when the queue is empty, or
    /// once `budget` bytes are out (`budget_spent`): a reader as fast as the loop would
    /// otherwise keep it in one flush for a whole large file while every other connection
    /// waits. Emptied buffers go to `put`. An emptied queue frees its storage.
    pub fn flush(
        &mut self,
        fd: BorrowedFd<'_>,
        budget: u64,
        put: impl FnMut(Buffer),
    ) -> io::Result<Flushed> {
        let Some(q) = self.inner.as_mut() else {
            return Ok(Flushed {
                written: 0,
                done: true,
                unblocked: None,
                budget_spent: false,
            });
        };
        let res = q.flush(fd, budget, put);
        if q.segments.is_empty() {
            self.inner = None;
        }
        res
    }

    /// Empties the queue (the connection is closing), handing its buffers to `put`.
    pub fn clear(&mut self, put: impl FnMut(Buffer)) {
        if let Some(mut q) = self.inner.take() {
            q.clear(put);
        }
    }
}

impl Queued {
    /// Appends bytes, into the last byte segment when there is one (so many small writes make
    /// one send later), else into a fresh buffer from `get`.
    fn push_bytes(&mut self, data: &[u8], get: impl FnOnce() -> Buffer) {
        match self.segments.back_mut() {
            Some(Segment::Bytes(b)) => b.append(data),
            _ => {
                let mut b = get();
                b.append(data);
                self.segments.push_back(Segment::Bytes(b));
            }
        }
        self.len += data.len() as u64;
    }

    fn push_file(&mut self, range: FileRange) {
        self.len += range.len;
        self.segments.push_back(Segment::File(range));
    }

    /// Sends what the socket takes, in order. Stops at the first short write (the socket's
    /// buffer is full: the poller will say when it has room) or when the queue is empty;
    /// emptied buffers go to `put`.
    pub fn flush(
        &mut self,
        fd: BorrowedFd<'_>,
        budget: u64,
        mut put: impl FnMut(Buffer),
    ) -> io::Result<Flushed> {
        let mut written = 0u64;
        let mut unblocked = None;
        let mut budget_spent = false;
        loop {
            if written >= budget && !self.segments.is_empty() {
                budget_spent = true;
                break;
            }
            let more = matches!(self.segments.get(1), Some(Segment::File(_)));
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            match front {
                Segment::Bytes(buf) => {
                    let flags = if more {
                        SendFlags::NOSIGNAL | SendFlags::MORE
                    } else {
                        SendFlags::NOSIGNAL
                    };
                    let asked = buf.len();
                    let n = match send_retrying(fd, buf.as_slice(), flags)? {
                        Some(n) => n,
                        None => break,
                    };
                    buf.consume(n);
                    written += n as u64;
                    self.len -= n as u64;
                    if n < asked {
                        break;
                    }
                    if let Some(Segment::Bytes(b)) = self.segments.pop_front() {
                        put(b);
                    }
                }
                Segment::Piped(pipe, len) => {
                    let asked = usize::try_from(*len).unwrap_or(usize::MAX);
                    let Some(n) = pipe.drain_into(fd, asked)? else {
                        break;
                    };
                    if n == 0 {
                        // The bytes the count promised are not in the pipe: a bug, not a
                        // peer's doing; end the connection rather than spin.
                        return Err(io::Error::other("spliced bytes missing from their pipe"));
                    }
                    if pipe.take_blocked() {
                        unblocked = Some(pipe.source);
                    }
                    *len -= n as u64;
                    written += n as u64;
                    self.len -= n as u64;
                    if *len == 0 {
                        self.segments.pop_front();
                    }
                    // A short splice is not a full socket (it may stop at a pipe buffer): ask
                    // again, and EAGAIN tells (an edge-triggered poller would not report a
                    // socket that never filled).
                }
                Segment::File(range) => {
                    if !self.corked && range.len > CORK_ABOVE {
                        // Best effort: uncorked, the body still leaves, in a few more packets.
                        self.corked = rustix::net::sockopt::set_tcp_cork(fd, true).is_ok();
                    }
                    if let Some(version) = range.version.filter(|_| range.tried) {
                        let now = rustix::fs::fstat(range.file.as_fd())
                            .map(|st| FileVersion::of(&st))
                            .map_err(io::Error::from)?;
                        if version.written_since(&now) {
                            if let Some(left_out) = CHANGED_WHILE_SENT.turn() {
                                tracing::warn!(
                                    "a file was written to while a response from it was being sent; that response was cut off, and its client must ask again{}",
                                    left_out_note(left_out)
                                );
                            }
                            return Err(io::Error::other("file changed while being sent"));
                        }
                        // A change of mode, owner or links: what follows is compared with it.
                        range.version = Some(now);
                    }
                    range.tried = true;
                    let (n, full) = match range.pages.as_ref() {
                        Some(pages) => match pages.send_prefix(fd, range.len)? {
                            Some(teed) => (teed.sent, teed.full),
                            None => send_file(fd, range)?,
                        },
                        None => send_file(fd, range)?,
                    };
                    if n > 0 {
                        // The pages are for the range's start only.
                        range.pages = None;
                    }
                    if n == 0 {
                        if full {
                            break;
                        }
                        // The file is shorter than promised (truncated while being sent): the
                        // peer was told a length we can no longer deliver.
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file shrank while being sent",
                        ));
                    }
                    range.offset += n;
                    range.len -= n;
                    written += n;
                    self.len -= n;
                    // A short sendfile may mean a full socket or a file that ended early: ask
                    // again, and EAGAIN or 0 tells which (an edge-triggered poller would not
                    // report a socket that never filled). A short tee that met a full socket
                    // said so.
                    if range.len == 0 {
                        self.segments.pop_front();
                        if self.corked {
                            // Taking the cork off pushes the last short segment now.
                            self.corked = false;
                            let _ = rustix::net::sockopt::set_tcp_cork(fd, false);
                        }
                    } else if full {
                        break;
                    }
                }
            }
        }
        Ok(Flushed {
            written,
            done: self.segments.is_empty(),
            unblocked,
            budget_spent,
        })
    }

    fn clear(&mut self, mut put: impl FnMut(Buffer)) {
        for seg in self.segments.drain(..) {
            if let Segment::Bytes(b) = seg {
                put(b);
            }
        }
        self.len = 0;
    }
}

/// One sendfile of the range's next bytes (at most [`SENDFILE_CHUNK`]): the count, and
/// whether the socket had no room (the count is then 0).
fn send_file(fd: BorrowedFd<'_>, range: &FileRange) -> io::Result<(u64, bool)> {
    let asked = range.len.min(SENDFILE_CHUNK);
    let mut offset = range.offset;
    loop {
        match rustix::fs::sendfile(fd, range.file.as_fd(), Some(&mut offset), asked as usize) {
            Ok(n) => return Ok((n as u64, false)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok((0, true)),
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// One send; `None` when the socket has no room.
fn send_retrying(fd: BorrowedFd<'_>, data: &[u8], flags: SendFlags) -> io::Result<Option<usize>> {
    loop {
        match rustix::net::send(fd, data, flags) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    fn temp_file(data: &[u8]) -> Arc<File> {
        let path =
            std::env::temp_dir().join(format!("keel-output-{}-{}", std::process::id(), data.len()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(data).unwrap();
        f.rewind().unwrap();
        Arc::new(f)
    }

    #[test]
    fn bytes_and_files_leave_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let file = temp_file(b"0123456789");
        let mut q = OutputQueue::default();
        q.push_bytes(b"head1|", Buffer::new);
        q.push_file(FileRange::new(file.clone(), 2, 5));
        q.push_bytes(b"|head2|", Buffer::new);
        q.push_bytes(b"more|", Buffer::new);
        q.push_file(FileRange::new(file, 0, 10));
        assert_eq!(q.len(), 6 + 5 + 7 + 5 + 10);
        let f = q.flush(a.as_fd(), u64::MAX, drop).unwrap();
        assert!(f.done);
        assert_eq!(f.written, 33);
        assert!(q.is_empty());
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(got, "head1|23456|head2|more|0123456789");
    }

    /// A flush stops once its budget is out, with the socket still taking bytes, and says so;
    /// the next flush goes on where it stopped.
    #[test]
    fn a_flush_stops_at_its_budget() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let file = temp_file(b"0123456789");
        let mut q = OutputQueue::default();
        q.push_bytes(b"head1|", Buffer::new);
        q.push_file(FileRange::new(file, 2, 5));
        q.push_bytes(b"|tail", Buffer::new);
        let f = q.flush(a.as_fd(), 10, drop).unwrap();
        // The budget is looked at between sends: the file's part still goes whole.
        assert_eq!((f.written, f.done, f.budget_spent), (11, false, true));
        let f = q.flush(a.as_fd(), 10, drop).unwrap();
        assert_eq!((f.written, f.done, f.budget_spent), (5, true, false));
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(got, "head1|23456|tail");
    }

    /// A queue holding the byte `H`, then all of `data` as a file range.
    fn head_and_file(data: &[u8]) -> OutputQueue {
        let mut q = OutputQueue::default();
        q.push_bytes(b"H", Buffer::new);
        q.push_file(FileRange::new(temp_file(data), 0, data.len() as u64));
        q
    }

    /// Reads what the socket holds now.
    fn drain(b: &mut UnixStream) {
        b.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while b.read(&mut buf).is_ok_and(|n| n > 0) {}
    }

    #[test]
    fn a_file_written_to_while_it_leaves_ends_the_range() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let big = vec![b'A'; 4 << 20];
        let file = temp_file(&big);
        let version = FileVersion::of(&rustix::fs::fstat(file.as_fd()).unwrap());
        let mut q = OutputQueue::default();
        q.push_file(FileRange::checked(
            file.clone(),
            0,
            big.len() as u64,
            version,
        ));
        assert!(
            !q.flush(a.as_fd(), u64::MAX, drop).unwrap().done,
            "4 MiB at once"
        );
        drain(&mut b);
        // Unchanged: more leaves.
        assert!(q.flush(a.as_fd(), u64::MAX, drop).unwrap().written > 0);
        drain(&mut b);
        // Written to in place (same size; past a timestamp tick): the next call refuses.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::os::unix::fs::FileExt::write_all_at(&*file, b"B", 3 << 20).unwrap();
        let err = q.flush(a.as_fd(), u64::MAX, drop).unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
    }

    #[test]
    fn a_full_socket_keeps_the_rest_queued() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let mut q = head_and_file(&big);
        let first = q.flush(a.as_fd(), u64::MAX, drop).unwrap();
        assert!(
            !first.done,
            "a unix socket buffer cannot take 4 MiB at once"
        );
        assert_eq!(q.len(), big.len() as u64 + 1 - first.written);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).unwrap();
            all
        });
        while !q.is_empty() {
            q.flush(a.as_fd(), u64::MAX, drop).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(a);
        let all = reader.join().unwrap();
        assert_eq!(all[0], b'H');
        assert_eq!(&all[1..], &big[..]);
    }

    #[test]
    fn a_long_file_leaves_corked_and_the_cork_comes_off_after_it() {
        let get_tcp_cork = |s: &std::net::TcpStream| socket2::SockRef::from(s).tcp_cork();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut b = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (a, _) = listener.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        a.set_nodelay(true).unwrap();
        let big: Vec<u8> = (0..8 << 20).map(|i| (i % 253) as u8).collect();
        let mut q = head_and_file(&big);
        let first = q.flush(a.as_fd(), u64::MAX, drop).unwrap();
        assert!(!first.done, "loopback buffers cannot take 8 MiB unread");
        assert!(
            get_tcp_cork(&a).unwrap(),
            "corked while the file is under way"
        );
        let reader = std::thread::spawn(move || {
            let mut all = vec![0u8; 1 + (8 << 20)];
            b.read_exact(&mut all).unwrap();
            (all, b)
        });
        while !q.is_empty() {
            q.flush(a.as_fd(), u64::MAX, drop).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!get_tcp_cork(&a).unwrap(), "uncorked once the file is sent");
        // The last short segment was pushed by the uncork: the reader gets every byte now,
        // not after the kernel's 200 ms cork timeout.
        let (all, _b) = reader.join().unwrap();
        assert_eq!(all[0], b'H');
        assert!(all[1..] == big[..]);

        // A short range is sent without the cork.
        let small = temp_file(&[7u8; 1000]);
        q.push_file(FileRange::new(small, 0, 1000));
        assert!(q.flush(a.as_fd(), u64::MAX, drop).unwrap().done);
        assert!(!get_tcp_cork(&a).unwrap());
    }

    /// `file`'s first `len` bytes held in a pipe; `None` (a test then skips, saying why) where
    /// the kernel refuses this process a pipe that large.
    fn held(file: &File, len: u64) -> Option<Arc<PagePipe>> {
        match PagePipe::hold(file, len, u64::MAX) {
            crate::net::page_pipe::Hold::Held(p) => Some(Arc::new(p)),
            other => {
                eprintln!("skipped: no {len}-byte pipe here ({other:?})");
                None
            }
        }
    }

    /// A connected loopback pair: the server end non-blocking with a small send buffer, the
    /// client end with a small receive buffer, so that a few hundred KiB do not fit at once.
    fn tight_tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        socket2::SockRef::from(&b)
            .set_recv_buffer_size(32 * 1024)
            .unwrap();
        let (a, _) = listener.accept().unwrap();
        socket2::SockRef::from(&a)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Flushes `q` into `a` until it is empty while a thread reads `want` bytes from `b`.
    fn flush_all_through(
        q: &mut OutputQueue,
        a: &std::net::TcpStream,
        mut b: std::net::TcpStream,
        want: usize,
    ) -> Vec<u8> {
        let reader = std::thread::spawn(move || {
            let mut all = vec![0u8; want];
            b.read_exact(&mut all).unwrap();
            all
        });
        while !q.is_empty() {
            q.flush(a.as_fd(), u64::MAX, drop).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        reader.join().unwrap()
    }

    #[test]
    fn a_range_from_held_pages_leaves_whole_when_the_socket_takes_a_part_at_a_time() {
        let data: Vec<Vec<u8>> = (0..3u8)
            .map(|k| (0..300_000).map(|i| (i % 241) as u8 ^ k).collect())
            .collect();
        let mut first_flushes = Vec::new();
        for d in &data {
            // One file after another on fresh sockets: each first flush leaves the scratch
            // pipe holding the part the socket refused, which must be gone before the next
            // file is teed in behind it (the pool hands the same pipe back).
            let file = temp_file(d);
            let Some(pages) = held(&file, d.len() as u64) else {
                return;
            };
            let (a, b) = tight_tcp_pair();
            let mut q = OutputQueue::default();
            q.push_file(FileRange::new(file, 0, d.len() as u64).with_pages(Some(pages)));
            let first = q.flush(a.as_fd(), u64::MAX, drop).unwrap();
            first_flushes.push(first.written);
            let got = flush_all_through(&mut q, &a, b, d.len());
            assert!(got == *d, "the body as the file holds it");
        }
        assert!(
            first_flushes.iter().all(|&n| n > 0 && n < 300_000),
            "each first flush sent a part, not all: {first_flushes:?}"
        );
    }

    #[test]
    fn held_pages_are_for_ranges_from_the_start_only() {
        let data: Vec<u8> = (0..200_000).map(|i| (i % 239) as u8).collect();
        let file = temp_file(&data);
        let Some(pages) = held(&file, data.len() as u64) else {
            return;
        };
        let pages = Some(pages);
        assert!(FileRange::new(file.clone(), 10, 100)
            .with_pages(pages.clone())
            .pages
            .is_none());
        let tail = FileRange::new(file.clone(), 0, 1000).with_pages(pages.clone());
        assert!(tail.pages.is_some(), "a prefix of what is held");
        let (a, b) = tight_tcp_pair();
        let mut q = OutputQueue::default();
        q.push_file(FileRange::new(file.clone(), 10, 100).with_pages(pages.clone()));
        q.push_file(tail);
        let got = flush_all_through(&mut q, &a, b, 1100);
        assert!(got[..100] == data[10..110] && got[100..] == data[..1000]);
    }

    #[test]
    fn pages_held_before_a_copy_over_the_file_never_mix_two_versions() {
        let old: Vec<u8> = vec![b'o'; 150_000];
        let new: Vec<u8> = vec![b'n'; 150_000];
        let file = temp_file(&old);
        let version = FileVersion::of(&rustix::fs::fstat(file.as_fd()).unwrap());
        let Some(pages) = held(&file, old.len() as u64) else {
            return;
        };
        let pages = Some(pages);
        // As `cp` does, after the response was built: truncate, then write. The held pages
        // are the old version's; what sendfile would read is the new one's.
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.set_len(0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&*file, &new, 0).unwrap();
        let (a, mut b) = tight_tcp_pair();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = b.read_to_end(&mut all);
            all
        });
        let mut q = OutputQueue::default();
        q.push_file(FileRange::checked(file, 0, old.len() as u64, version).with_pages(pages));
        let mut cut = None;
        while !q.is_empty() {
            if let Err(e) = q.flush(a.as_fd(), u64::MAX, drop) {
                cut = Some(e);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(a);
        let got = reader.join().unwrap();
        // The first part leaves from the held pages, the old version the response was built
        // for; the check before the next part finds the file changed and ends the response.
        assert!(
            got.iter().all(|&c| c == b'o'),
            "only the old version's bytes"
        );
        match cut {
            None => assert_eq!(got.len(), old.len()),
            Some(e) => {
                assert!(e.to_string().contains("changed"), "{e}");
                assert!(got.len() < old.len());
            }
        }
    }

    #[test]
    fn held_pages_that_met_a_full_socket_are_checked_before_they_leave() {
        let data: Vec<u8> = (0..299_999).map(|i| (i % 233) as u8).collect();
        let file = temp_file(&data);
        let version = FileVersion::of(&rustix::fs::fstat(file.as_fd()).unwrap());
        let Some(pages) = held(&file, data.len() as u64) else {
            return;
        };
        let (mut a, mut b) = tight_tcp_pair();
        // The socket is full before the response's body is tried: its first call sends nothing.
        while a.write(&[0u8; 4096]).is_ok() {}
        let mut q = OutputQueue::default();
        q.push_file(
            FileRange::checked(file.clone(), 0, data.len() as u64, version).with_pages(Some(pages)),
        );
        let first = q.flush(a.as_fd(), u64::MAX, drop).unwrap();
        assert_eq!(first.written, 0, "a full socket takes nothing");
        // Truncated in place while it waits: the held pages are no longer what the file says.
        file.set_len(100_000).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while b.read(&mut buf).is_ok_and(|n| n > 0) {}
        let err = q.flush(a.as_fd(), u64::MAX, drop).unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_hang() {
        let (a, _b) = UnixStream::pair().unwrap();
        let file = temp_file(b"short");
        let mut q = OutputQueue::default();
        q.push_file(FileRange::new(file, 0, 100));
        let err = q.flush(a.as_fd(), u64::MAX, drop).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}

//! Directory listings (`--autoindex`).
//!
//! File names are attacker-controlled wherever uploads or shared directories exist, so every
//! name is escaped for the context it lands in: HTML-escaped as text, percent-encoded as a URL.
//! Entries are read and statted relative to the already-opened directory fd, never by path, so
//! a rename racing the listing cannot redirect it outside the directory that was opened.

use crate::http::conditional::http_date;
use crate::http::path::push_percent_encoded;
use rustix::fs::{AtFlags, Dir, FileType};
use std::fmt::Write as _;
use std::os::fd::BorrowedFd;

/// One listed name with what the page shows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub mtime_secs: i64,
}

/// Entries of an open directory fd, sorted: directories first, then by name; hidden entries
/// (leading '.') skipped unless `show_hidden`, symlinks skipped unless `show_symlinks` (the
/// server follows them: `--follow-symlinks`).
///
/// Only names a request can reach are listed, so that no link on the page leads to a refusal:
/// not names that are not UTF-8 (normalize_target refuses non-UTF-8), names with a control
/// character (refused as well), FIFOs, sockets and devices (403), nor, where symlinks are
/// followed, a link whose target is missing, a loop, or one of those (403 or 404). A followed
/// link is described by its target, as a request for it is answered: a directory's name ends
/// in `/` and a file's size is the file's (the server serves what it points at, wherever that
/// is, so the page shows nothing a GET would not). An entry that vanishes between readdir and
/// stat is skipped.
///
/// At most [`MAX_ENTRIES`] are listed (the first the directory gives, then sorted), and the walk
/// stops after eight times as many names: a listing is built whole on the loop, and a huge
/// directory would otherwise cost every client of the loop a pause and each connection that
/// does not read its answer tens of MB.
pub fn read_entries(
    dir: BorrowedFd<'_>,
    show_hidden: bool,
    show_symlinks: bool,
) -> std::io::Result<Listing> {
    let mut entries = Vec::new();
    let mut names = Dir::read_from(dir)?;
    let mut complete = false;
    for visited in 0.. {
        let Some(item) = names.next() else {
            complete = true;
            break;
        };
        if entries.len() == MAX_ENTRIES || visited == 8 * MAX_ENTRIES {
            break;
        }
        let item = item?;
        let raw = item.file_name();
        let Ok(name) = raw.to_str() else { continue };
        if name == "."
            || name == ".."
            || (!show_hidden && name.starts_with('.'))
            // A request cannot name these: control bytes, and a backslash (refused in every
            // path, `http::path`), so their links would only lead to a 400.
            || name.bytes().any(|b| b.is_ascii_control() || b == b'\\')
        {
            continue;
        }
        let follow = if show_symlinks {
            AtFlags::empty()
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        let st = match rustix::fs::statat(dir, raw, follow) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            // A followed link that leads nowhere a request can go (a loop, a place this
            // process may not look): the request would be refused too. Any other entry that
            // cannot be stat'ed fails the listing, as it did.
            Err(_) if show_symlinks && is_symlink(dir, raw) => continue,
            Err(e) => return Err(e.into()),
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        // Only what a request can reach: a FIFO, socket or device gets 403, and so does a
        // symlink not followed.
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            continue;
        }
        let is_dir = kind == FileType::Directory;
        entries.push(Entry {
            name: name.to_owned(),
            is_dir,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_secs: st.st_mtime,
        });
    }
    entries.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
    Ok(Listing { entries, complete })
}

/// Whether `name` in `dir` is a symlink itself (not what it points to).
fn is_symlink(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// A directory's entries as [`read_entries`] found them.
pub struct Listing {
    pub entries: Vec<Entry>,
    /// Every name was looked at: false when the walk stopped at its limits.
    pub complete: bool,
}

/// The most entries a listing shows (about 1.7 MB of page).
pub const MAX_ENTRIES: usize = 10_000;

/// A small valid HTML5 page: title "Index of <url_path>", a parent link unless url_path is "/",
/// a table of name/size/mtime. Names are HTML-escaped (& < > " ') in text and percent-encoded in
/// href; dirs get a trailing '/'.
///
/// Links are absolute (built from `url_path`), so they resolve the same whether or not the
/// requested URL ended in '/'; percent-encoding ':' as well keeps a name like "javascript:x"
/// from ever being read as a scheme.
pub fn render(url_path: &str, entries: &[Entry], complete: bool) -> String {
    let mut base = String::with_capacity(url_path.len() + 1);
    push_percent_encoded(&mut base, url_path.as_bytes(), true);
    if !base.ends_with('/') {
        base.push('/');
    }

    let mut out = String::with_capacity(512 + entries.len() * 160);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>Index of ");
    push_html(&mut out, url_path);
    out.push_str("</title>\n<style>body{font-family:sans-serif;margin:2em}");
    out.push_str("td,th{padding:0.2em 1em;text-align:left}td.s{text-align:right}</style>\n");
    out.push_str("</head>\n<body>\n<h1>Index of ");
    push_html(&mut out, url_path);
    out.push_str("</h1>\n<table>\n<thead><tr><th>Name</th><th>Size</th>");
    out.push_str("<th>Last modified</th></tr></thead>\n<tbody>\n");

    if url_path != "/" && !url_path.is_empty() {
        let trimmed = base.trim_end_matches('/');
        let parent = &trimmed[..trimmed.rfind('/').map_or(0, |i| i + 1)];
        let parent = if parent.is_empty() { "/" } else { parent };
        out.push_str("<tr><td><a href=\"");
        // Already percent-encoded; only needs attribute escaping, which it cannot need.
        out.push_str(parent);
        out.push_str("\">../</a></td><td class=\"s\">-</td><td></td></tr>\n");
    }

    for e in entries {
        out.push_str("<tr><td><a href=\"");
        out.push_str(&base);
        push_percent_encoded(&mut out, e.name.as_bytes(), false);
        if e.is_dir {
            out.push('/');
        }
        out.push_str("\">");
        push_html(&mut out, &e.name);
        if e.is_dir {
            out.push('/');
        }
        out.push_str("</a></td><td class=\"s\">");
        if e.is_dir {
            out.push('-');
        } else {
            let _ = write!(out, "{}", e.size);
        }
        out.push_str("</td><td>");
        out.push_str(&http_date(e.mtime_secs));
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    if !complete {
        let _ = writeln!(
            out,
            "<p>Listings stop at {MAX_ENTRIES} entries: this directory may hold more.</p>"
        );
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// Appends `s` HTML-escaped (`& < > " '`), for text and attribute values alike.
pub(crate) fn push_html(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    use crate::test_util::TempDir;

    /// Names as a filesystem allows them ('/' cannot occur; "</script>" is covered in
    /// `render` tests with a made-up entry).
    const NASTY: &[&str] = &[
        "<script>alert(1)",
        "a\"b",
        "'x'",
        "a&b",
        "%41",
        "with space",
        "ünïcødé ☃.txt",
        "javascript:alert(1)",
        "q?x#y",
    ];

    fn nasty_dir() -> (TempDir, std::fs::File) {
        let t = TempDir::new("nasty");
        for name in NASTY {
            std::fs::write(t.0.join(name), b"12345").unwrap();
        }
        std::fs::create_dir(t.0.join("zdir")).unwrap();
        std::fs::create_dir(t.0.join("adir")).unwrap();
        std::fs::write(t.0.join(".hidden"), b"").unwrap();
        std::os::unix::fs::symlink("a&b", t.0.join("link")).unwrap();
        // Neither can be served (403), so neither is listed.
        let fifo = t.0.join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, 0o600.into(), 0).unwrap();
        std::os::unix::net::UnixListener::bind(t.0.join("sock")).unwrap();
        let f = std::fs::File::open(&t.0).unwrap();
        (t, f)
    }

    #[test]
    fn a_huge_directory_is_listed_up_to_the_cap_and_says_so() {
        let t = TempDir::new("huge");
        for i in 0..MAX_ENTRIES + 5 {
            std::fs::File::create(t.0.join(format!("f{i}"))).unwrap();
        }
        let dir = std::fs::File::open(&t.0).unwrap();
        let entries = read_entries(dir.as_fd(), false, true).unwrap();
        assert!(!entries.complete);
        let entries = entries.entries;
        assert_eq!(entries.len(), MAX_ENTRIES);
        assert!(render("/big/", &entries, false).contains("Listings stop at 10000 entries"));
        assert!(!render("/big/", &entries[..10], true).contains("Listings stop"));
    }

    #[test]
    fn reads_sorted_entries() {
        let (_t, dir) = nasty_dir();
        let entries = read_entries(dir.as_fd(), false, true).unwrap().entries;
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(&names[..2], &["adir", "zdir"]);
        assert!(entries[..2].iter().all(|e| e.is_dir));
        assert!(entries[2..].iter().all(|e| !e.is_dir));
        let mut rest = names[2..].to_vec();
        rest.sort();
        assert_eq!(rest, &names[2..]);
        assert_eq!(names.len(), 2 + NASTY.len() + 1);
        assert!(!names.contains(&".hidden"));
        assert!(!names.contains(&"fifo") && !names.contains(&"sock"));
        assert!(!names.contains(&".") && !names.contains(&".."));
        let file = entries.iter().find(|e| e.name == "a&b").unwrap();
        assert_eq!(file.size, 5);
        assert!(file.mtime_secs > 1_600_000_000);
        // The followed symlink is described by the file it points to.
        assert_eq!(entries.iter().find(|e| e.name == "link").unwrap().size, 5);

        let all = read_entries(dir.as_fd(), true, true).unwrap().entries;
        assert!(all.iter().any(|e| e.name == ".hidden"));
        assert_eq!(all.len(), entries.len() + 1);
        // Reading twice from the same fd works: the listing does not consume its position.
        assert_eq!(
            read_entries(dir.as_fd(), false, true).unwrap().entries,
            entries
        );
        // Without --follow-symlinks a symlink would be refused (403): it is not listed.
        let no_links = read_entries(dir.as_fd(), false, false).unwrap().entries;
        assert!(!no_links.iter().any(|e| e.name == "link"));
        assert_eq!(no_links.len(), entries.len() - 1);
    }

    /// Followed links are listed as what a request for them gets: a directory as a directory
    /// (its name then ends in `/`), a file with its size; links that lead nowhere a request
    /// can go (missing, a loop, a FIFO) are not listed.
    #[test]
    fn followed_links_are_listed_as_their_targets() {
        let t = TempDir::new("links");
        std::fs::write(t.0.join("file"), vec![b'x'; 51_200]).unwrap();
        std::fs::create_dir(t.0.join("sub")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.0.join("fifo"),
            FileType::Fifo,
            0o600.into(),
            0,
        )
        .unwrap();
        for (link, to) in [
            ("to-file", "file"),
            ("to-sub", "sub"),
            ("to-nothing", "/nonexistent-keel"),
            ("to-fifo", "fifo"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
        ] {
            std::os::unix::fs::symlink(to, t.0.join(link)).unwrap();
        }
        let dir = std::fs::File::open(&t.0).unwrap();
        let entries = read_entries(dir.as_fd(), false, true).unwrap().entries;
        let listed: Vec<(&str, bool, u64)> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.is_dir, if e.is_dir { 0 } else { e.size }))
            .collect();
        assert_eq!(
            listed,
            [
                ("sub", true, 0),
                ("to-sub", true, 0),
                ("file", false, 51_200),
                ("to-file", false, 51_200)
            ]
        );
        assert!(render("/l/", &entries, true).contains(r#"<a href="/l/to-sub/">to-sub/</a>"#));
        let unfollowed = read_entries(dir.as_fd(), false, false).unwrap().entries;
        let names: Vec<&str> = unfollowed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["sub", "file"]);
    }

    #[test]
    fn names_no_request_can_reach_are_not_listed() {
        let t = TempDir::new("unreachable");
        for name in ["nl\nname", "tab\tname", "del\u{7f}", "back\\slash", "plain"] {
            std::fs::write(t.0.join(name), b"x").unwrap();
        }
        let dir = std::fs::File::open(&t.0).unwrap();
        let names: Vec<String> = read_entries(dir.as_fd(), false, false)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["plain"]);
    }

    #[test]
    fn nasty_names_are_escaped() {
        let (_t, dir) = nasty_dir();
        let mut entries = read_entries(dir.as_fd(), false, true).unwrap().entries;
        entries.push(Entry {
            name: "<script>alert(1)</script>".into(),
            is_dir: false,
            size: 1,
            mtime_secs: 0,
        });
        let page = render("/up<load>s/", &entries, true);
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<load>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("<title>Index of /up&lt;load&gt;s/</title>"));
        let base = "/up%3Cload%3Es/";
        for (href, text) in [
            ("%3Cscript%3Ealert%281%29", "&lt;script&gt;alert(1)"),
            (
                "%3Cscript%3Ealert%281%29%3C%2Fscript%3E",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            ("a%22b", "a&quot;b"),
            ("%27x%27", "&#39;x&#39;"),
            ("a%26b", "a&amp;b"),
            ("%2541", "%41"),
            ("with%20space", "with space"),
            (
                "%C3%BCn%C3%AFc%C3%B8d%C3%A9%20%E2%98%83.txt",
                "ünïcødé ☃.txt",
            ),
            ("javascript%3Aalert%281%29", "javascript:alert(1)"),
            ("q%3Fx%23y", "q?x#y"),
            ("adir/", "adir/"),
        ] {
            let a = format!("<a href=\"{base}{href}\">{text}</a>");
            assert!(page.contains(&a), "missing {a}\n{page}");
        }
        // Every href value is plain: no quotes, angle brackets or spaces inside it.
        for part in page.split("href=\"").skip(1) {
            let href = &part[..part.find('"').unwrap()];
            assert!(
                href.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"<>'&\\".contains(&b)),
                "{href}"
            );
        }
    }

    #[test]
    fn page_shape() {
        let entries = vec![
            Entry {
                name: "sub".into(),
                is_dir: true,
                size: 4096,
                mtime_secs: 0,
            },
            Entry {
                name: "f.txt".into(),
                is_dir: false,
                size: 1234,
                mtime_secs: 784_111_777,
            },
        ];
        let page = render("/a/b/", &entries, true);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta charset=\"utf-8\">"));
        assert!(page.contains("<title>Index of /a/b/</title>"));
        assert!(page.contains("<a href=\"/a/\">../</a>"));
        assert!(page.contains("<a href=\"/a/b/sub/\">sub/</a></td><td class=\"s\">-</td>"));
        assert!(page.contains("<a href=\"/a/b/f.txt\">f.txt</a></td><td class=\"s\">1234</td>"));
        assert!(page.contains("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(page.trim_end().ends_with("</html>"));
        assert_eq!(page.matches("<tr>").count(), 1 + 1 + 2);

        let root = render("/", &entries, true);
        assert!(!root.contains("../"));
        assert!(root.contains("<a href=\"/sub/\">"));
        // A directory URL without its trailing slash still links correctly.
        let noslash = render("/a/b", &entries, true);
        assert!(noslash.contains("<a href=\"/a/b/f.txt\">"));
        assert!(noslash.contains("<a href=\"/a/\">../</a>"));
        assert!(render("/a/", &[], true).contains("<a href=\"/\">../</a>"));
        assert!(render("/a", &[], true).contains("<a href=\"/\">../</a>"));
    }
}

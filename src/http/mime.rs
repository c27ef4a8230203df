//! Content-Type by file extension.
//!
//! Text types carry an explicit `charset=utf-8`: without it browsers guess (historically
//! windows-1252 for text/plain), which garbles non-ASCII files and once allowed UTF-7 script
//! injection. The common types are answered from a static table so a hot path never allocates.

use std::borrow::Cow;

/// Types served most often, already in their final form.
const COMMON: &[(&str, &str)] = &[
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("json", "application/json; charset=utf-8"),
    ("txt", "text/plain; charset=utf-8"),
    ("xml", "text/xml; charset=utf-8"),
    ("svg", "image/svg+xml; charset=utf-8"),
    ("md", "text/markdown; charset=utf-8"),
    ("csv", "text/csv; charset=utf-8"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("ico", "image/x-icon"),
    ("woff2", "font/woff2"),
    ("wasm", "application/wasm"),
    ("pdf", "application/pdf"),
];

const OCTET_STREAM: &str = "application/octet-stream";

/// Content-Type for a path by its extension (mime_guess), with "; charset=utf-8" added for text/*,
/// application/javascript, application/json, application/xml, image/svg+xml (and other +json /
/// +xml types); unknown -> "application/octet-stream".
///
/// Only a text type outside the static table costs an allocation.
pub fn content_type(path: &str) -> Cow<'static, str> {
    let Some(ext) = extension(path) else {
        return Cow::Borrowed(OCTET_STREAM);
    };
    if let Some((_, ct)) = COMMON.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)) {
        return Cow::Borrowed(ct);
    }
    match mime_guess::from_ext(ext).first_raw() {
        Some(ct) if wants_charset(ct) => Cow::Owned(format!("{ct}; charset=utf-8")),
        Some(ct) => Cow::Borrowed(ct),
        None => Cow::Borrowed(OCTET_STREAM),
    }
}

/// The extension of the last path segment; a leading dot (".bashrc") starts a name, not an
/// extension.
fn extension(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let dot = name.rfind('.')?;
    if dot == 0 || dot + 1 == name.len() {
        return None;
    }
    Some(&name[dot + 1..])
}

fn wants_charset(ct: &str) -> bool {
    ct.starts_with("text/")
        || matches!(
            ct,
            "application/javascript" | "application/json" | "application/xml" | "image/svg+xml"
        )
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn borrowed(path: &str) -> &'static str {
        match content_type(path) {
            Cow::Borrowed(s) => s,
            Cow::Owned(s) => panic!("{path}: allocated {s:?}"),
        }
    }

    #[test]
    fn common_types_do_not_allocate() {
        assert_eq!(borrowed("/index.html"), "text/html; charset=utf-8");
        assert_eq!(borrowed("/a/b.HTM"), "text/html; charset=utf-8");
        assert_eq!(borrowed("/s.css"), "text/css; charset=utf-8");
        assert_eq!(borrowed("/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(borrowed("/m.mjs"), "text/javascript; charset=utf-8");
        assert_eq!(borrowed("/d.json"), "application/json; charset=utf-8");
        assert_eq!(borrowed("/r.txt"), "text/plain; charset=utf-8");
        assert_eq!(borrowed("/f.xml"), "text/xml; charset=utf-8");
        assert_eq!(borrowed("/i.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(borrowed("/README.md"), "text/markdown; charset=utf-8");
        assert_eq!(borrowed("/t.csv"), "text/csv; charset=utf-8");
        assert_eq!(borrowed("/p.PNG"), "image/png");
        assert_eq!(borrowed("/p.jpeg"), "image/jpeg");
        // Binary types from mime_guess are static too.
        assert_eq!(borrowed("/a.mp4"), "video/mp4");
        assert_eq!(borrowed("/a.zip"), "application/zip");
    }

    #[test]
    fn table_agrees_with_mime_guess() {
        for (ext, ct) in COMMON {
            let guessed = mime_guess::from_ext(ext).first_raw().unwrap();
            let base = ct.split(';').next().unwrap();
            // mime_guess still says application/javascript for .mjs; RFC 9239 says text/.
            if *ext != "mjs" {
                assert_eq!(base, guessed, "{ext}");
            }
            assert_eq!(ct.contains("charset"), wants_charset(base), "{ext}");
        }
    }

    #[test]
    fn other_text_types_get_a_charset() {
        assert_eq!(content_type("/a.yaml"), "text/x-yaml; charset=utf-8");
        assert_eq!(
            content_type("/site.webmanifest"),
            "application/manifest+json; charset=utf-8"
        );
        assert_eq!(content_type("/x.rs"), "text/x-rust; charset=utf-8");
    }

    #[test]
    fn unknown_and_odd_names() {
        for p in [
            "/",
            "/README",
            "/.bashrc",
            "/a/.hidden",
            "/file.",
            "/dir.d/file",
            "/x.unknownext",
            "",
        ] {
            assert_eq!(borrowed(p), OCTET_STREAM, "{p:?}");
        }
        assert_eq!(borrowed("/.config.json"), "application/json; charset=utf-8");
        assert_eq!(borrowed("/a.tar.gz"), "application/gzip");
    }
}

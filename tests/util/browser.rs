//! Headless Chromium, for the pages keel serves to people (the welcome page, directory
//! listings, /status): a real browser fetches them over HTTP/1.1, parses them and renders
//! them, which no string check on the bytes can stand in for.
//!
//! Where no Chromium is installed, [`chromium`] prints why and returns `None`, and the test
//! skips. Every run of the browser is bounded: it is killed by PID after [`BROWSER_TIMEOUT`].

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long one headless run may take (a cold start on a loaded 2-core machine takes a few
/// seconds).
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// The installed Chromium's command name, or `None` after printing that the test skips.
pub fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new("which")
                .arg(b)
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium)");
    }
    found
}

/// Runs `browser --headless ... ARGS`, killing it if it outlives [`BROWSER_TIMEOUT`]. It runs in
/// a process group of its own, so that its helpers (zygote, renderer), which hold its output
/// open, go with it.
fn run(browser: &str, args: &[&str]) -> Output {
    let child = Command::new(browser)
        .process_group(0)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {browser}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BROWSER_TIMEOUT) {
        Ok(out) => out.expect("waiting for the browser"),
        Err(_) => {
            // Ours, by its process group (the browser's PID).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{browser} {args:?} still running after {BROWSER_TIMEOUT:?}");
        }
    }
}

/// The document Chromium built from `url`, serialized (`--dump-dom`): text nodes come back
/// with `&`, `<` and `>` escaped, so markup in it is markup the browser parsed as such.
pub fn dump_dom(browser: &str, url: &str) -> String {
    let out = run(browser, &["--dump-dom", url]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("<html"),
        "no document from {url}; {browser} said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// A screenshot of `url` as Chromium renders it in a 1000x800 window, written to `path`: its
/// PNG bytes.
pub fn screenshot(browser: &str, url: &str, path: &Path) -> Vec<u8> {
    let out = run(
        browser,
        &[
            "--window-size=1000,800",
            &format!("--screenshot={}", path.display()),
            url,
        ],
    );
    let png = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "no screenshot of {url} ({e}); {browser} said: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {url}");
    png
}

/// The `<a href="...">text</a>` elements of a serialized DOM, as (href, text) with the
/// serializer's escapes undone; any markup inside a link's text is kept as it is.
pub fn links(dom: &str) -> Vec<(String, String)> {
    dom.split("<a ")
        .skip(1)
        .filter_map(|a| {
            let href_at = a.find("href=\"")? + "href=\"".len();
            let href = &a[href_at..href_at + a[href_at..].find('"')?];
            let text_at = a.find('>')? + 1;
            let text = &a[text_at..text_at + a[text_at..].find("</a>")?];
            Some((unescape(href), unescape(text)))
        })
        .collect()
}

/// Undoes the escapes a DOM serializer writes: `&amp;` `&lt;` `&gt;` `&quot;` `&nbsp;`.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

//! Static mounts (`--static URL_PREFIX=DIR`) through real sockets: what ServeDir gives
//! (validators, ranges, precompressed files), the attacks (traversal plain and encoded,
//! dotfiles, a symlink out of the directory), that a static request never waits for a worker,
//! and a Django project's collectstatic folder with DEBUG off.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::{get_with, raw_one, venv, Server, TempDir};

const APP: &str = "pep3333:application";
const CSS: &str = "body{color:red}\n";

/// root/ with files, variants, dotfiles and symlinks; outside/ with a secret next to it.
fn tree(dir: &Path) -> String {
    let root = dir.join("root");
    let w = |p: &str, body: &str| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    };
    w("app.css", CSS);
    w("app.css.gz", "GZ-BYTES");
    w("app.css.br", "BR-BYTES");
    w("sub/x.js", "let x = 1;\n");
    // Above the size read whole when opened: streamed from disk.
    w("big.txt", &"0123456789abcdef".repeat(20 * 1024));
    w(".env", "SECRET-ENV");
    w(".git/config", "SECRET-GIT");
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    std::fs::write(dir.join("outside/secret.txt"), "SECRET-OUTSIDE").unwrap();
    std::os::unix::fs::symlink(dir.join("outside/secret.txt"), root.join("out.txt")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), root.join("outdir")).unwrap();
    std::os::unix::fs::symlink(root.join("app.css"), root.join("in.css")).unwrap();
    format!("/static={}", root.display())
}

#[test]
fn static_files_have_validators_ranges_and_precompressed_variants() {
    let dir = TempDir::new("static");
    let mount = tree(dir.path());
    let s = Server::start(APP, &["--workers", "1", "--static", &mount, "--access-log"]);

    let r = get_with(s.addr, "/static/app.css", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), CSS);
    let line = s.access_line("/static/app.css");
    assert_eq!(line["source"], "static");
    assert_eq!(line["bytes"], 16);
    assert!(line.get("error").is_none(), "{line}");
    assert_eq!(r.header("content-type"), Some("text/css"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("vary"), Some("accept-encoding"));
    assert!(r.header("server").is_none());
    let etag = r.header("etag").unwrap().to_string();
    let modified = r.header("last-modified").unwrap().to_string();

    let r = get_with(s.addr, "/static/app.css", &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    let r = get_with(
        s.addr,
        "/static/app.css",
        &[("If-Modified-Since", &modified)],
    );
    assert_eq!(r.status, 304);
    let r = get_with(s.addr, "/static/app.css", &[("If-None-Match", "\"other\"")]);
    assert_eq!(r.status, 200);

    let r = get_with(s.addr, "/static/app.css", &[("Range", "bytes=0-3")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "body");
    assert_eq!(r.header("content-range"), Some("bytes 0-3/16"));
    let r = get_with(
        s.addr,
        "/static/app.css",
        &[("Range", "bytes=0-3"), ("If-Range", &etag)],
    );
    assert_eq!(r.status, 206);
    // A resumed download of a file that changed since gets the whole file.
    let r = get_with(
        s.addr,
        "/static/app.css",
        &[("Range", "bytes=0-3"), ("If-Range", "\"stale\"")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), CSS);

    let r = raw_one(
        s.addr,
        b"HEAD /static/app.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("16"));
    assert!(r.body.is_empty());

    for (accept, body, encoding) in [
        ("br", "BR-BYTES", Some("br")),
        ("gzip, deflate", "GZ-BYTES", Some("gzip")),
        ("gzip;q=0.5, br;q=0.9", "BR-BYTES", Some("br")),
        ("identity", CSS, None),
    ] {
        let r = get_with(s.addr, "/static/app.css", &[("Accept-Encoding", accept)]);
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.text(), body, "{accept}");
        assert_eq!(r.header("content-encoding"), encoding, "{accept}");
        assert_eq!(r.header("content-type"), Some("text/css"), "{accept}");
    }

    assert_eq!(get_with(s.addr, "/static/sub/x.js", &[]).status, 200);
    let big = get_with(s.addr, "/static/big.txt", &[]);
    assert_eq!(big.status, 200);
    assert_eq!(big.body, "0123456789abcdef".repeat(20 * 1024).into_bytes());
    let tail = get_with(s.addr, "/static/big.txt", &[("Range", "bytes=-5")]);
    assert_eq!((tail.status, tail.text().as_str()), (206, "bcdef"));
    assert_eq!(get_with(s.addr, "/static/in.css", &[]).text(), CSS);
    let r = raw_one(
        s.addr,
        b"POST /static/app.css HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    // Every request above was the front's: none reached the app or its queue.
    assert_eq!(s.metric("wsgiscale_requests_total{class=\"2xx\"}"), 0.0);
    assert_eq!(
        s.metric("wsgiscale_static_requests_total{class=\"2xx\"}"),
        14.0
    );
    assert_eq!(
        s.metric("wsgiscale_static_requests_total{class=\"3xx\"}"),
        2.0
    );
    assert_eq!(
        s.metric("wsgiscale_static_requests_total{class=\"4xx\"}"),
        1.0
    );
}

/// The attacks: `..` plain and percent-encoded, dotfiles, and symlinks that lead out of the
/// directory, sent as raw bytes (clients would normalize them). None reaches a secret.
#[test]
fn traversal_dotfiles_and_symlink_escapes_are_not_found() {
    let dir = TempDir::new("static-attack");
    let mount = tree(dir.path());
    let s = Server::start(APP, &["--workers", "1", "--static", &mount]);
    for path in [
        "/static/../outside/secret.txt",
        "/static/sub/../../outside/secret.txt",
        "/static/%2e%2e/outside/secret.txt",
        "/static/%2E%2E%2Foutside%2Fsecret.txt",
        "/static/..%2foutside%2fsecret.txt",
        "/static/sub/..%2f..%2foutside/secret.txt",
        "/static/%2e%2e%5coutside%5csecret.txt",
        "/static/.env",
        "/static/%2eenv",
        "/static/.git/config",
        "/static/sub/../.env",
        "/static/out.txt",
        "/static/outdir/secret.txt",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/app.css%00.txt",
        "/static/sub/",
        "/static/sub",
        "/static",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let r = raw_one(s.addr, req.as_bytes());
        assert!(
            r.status == 404 || r.status == 400,
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("SECRET"), "{path}: {}", r.text());
        assert!(!r.text().contains("root:"), "{path}: {}", r.text());
    }
    // The prefix matches on a segment boundary: /staticfiles is the app's.
    assert_eq!(
        get_with(s.addr, "/staticfiles/app.css", &[]).text(),
        "no such route"
    );
}

/// A static request is answered while the only worker is busy, and never shows in the queue
/// or the busy workers of the load report.
#[test]
fn static_requests_never_wait_for_a_worker() {
    let dir = TempDir::new("static-busy");
    let mount = tree(dir.path());
    let s = Server::start(APP, &["--workers", "1", "--static", &mount]);
    let addr = s.addr;
    let slow = std::thread::spawn(move || support::get(addr, "/sleep?1500").unwrap().status);
    s.wait_in_flight(1);
    for _ in 0..20 {
        assert_eq!(get_with(s.addr, "/static/app.css", &[]).status, 200);
    }
    let load = s.load();
    assert_eq!(load["queue"]["depth"], 0, "{load}");
    assert_eq!(load["in_flight"], 1, "{load}");
    assert_eq!(slow.join().unwrap(), 200);
}

#[test]
fn a_missing_static_directory_is_a_startup_error() {
    let (status, log) = support::start_failing(APP, &["--static", "/s=/nonexistent/static/dir"]);
    assert!(!status.success());
    assert!(log.contains("/nonexistent/static/dir"), "{log}");
    let (status, log) = support::start_failing(APP, &["--static", "static=/tmp"]);
    assert!(!status.success());
    assert!(log.contains("must start with /"), "{log}");
}

/// A Django project in production shape: DEBUG off, ManifestStaticFilesStorage's hashed names
/// from `collectstatic`, served by the front from STATIC_ROOT at STATIC_URL.
#[test]
fn a_django_collectstatic_folder_is_served_with_debug_off() {
    let v = venv();
    let dir = TempDir::new("collectstatic");
    let out = std::process::Command::new(v.join("bin/python"))
        .args([
            "-m",
            "django",
            "collectstatic",
            "--noinput",
            "--settings",
            "djstatic.settings",
        ])
        .env("PYTHONPATH", support::apps())
        .env("DJSTATIC_ROOT", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "collectstatic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mount = format!("/static/={}", dir.path().display());
    let s = Server::start_env(
        "djstatic.wsgi:application",
        &[
            "--workers",
            "1",
            "--venv",
            v.to_str().unwrap(),
            "--static",
            &mount,
        ],
        &[("DJSTATIC_ROOT", dir.path().to_str().unwrap())],
    );
    let page = s.get("/");
    assert_eq!(page.status, 200, "{}", page.text());
    let css_url = page.json()["css"].as_str().unwrap().to_string();
    let logo_url = page.json()["logo"].as_str().unwrap().to_string();
    assert!(
        css_url.starts_with("/static/site.") && css_url.ends_with(".css") && css_url.len() > 20,
        "a hashed name: {css_url}"
    );
    let css = get_with(s.addr, &css_url, &[]);
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css"));
    // ManifestStaticFilesStorage rewrote the CSS's url() to the hashed logo.
    let logo_name = logo_url.rsplit('/').next().unwrap();
    assert!(css.text().contains(logo_name), "{}", css.text());
    let logo = get_with(s.addr, &logo_url, &[]);
    assert_eq!(logo.status, 200);
    assert_eq!(logo.header("content-type"), Some("image/svg+xml"));
    assert_eq!(get_with(s.addr, "/static/missing.css", &[]).status, 404);
    assert!(s.wait_log("listening", Duration::from_secs(1)));
}

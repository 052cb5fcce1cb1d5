//! Flask and Django apps from the test virtualenv (`make test` creates it).
#![allow(clippy::unwrap_used)]

mod support;

use support::{post, venv, Server};

#[test]
fn flask_app_serves_json_and_forms() {
    let v = venv();
    let s = Server::start(
        "flask_app:app",
        &["--workers", "2", "--venv", v.to_str().unwrap()],
    );
    let r = s.get("/json");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["message"], "hello");
    let r = post(
        s.addr,
        "/echo",
        "application/x-www-form-urlencoded",
        b"a=1&b=two",
    )
    .unwrap();
    assert_eq!(r.json()["form"], serde_json::json!({"a": "1", "b": "two"}));
    assert_eq!(s.get("/missing").status, 404);
}

#[test]
fn django_project_serves() {
    let v = venv();
    let s = Server::start(
        "djangoproj.wsgi:application",
        &["--workers", "2", "--venv", v.to_str().unwrap()],
    );
    let r = s.get("/hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["framework"], "django");
    let r = post(s.addr, "/hello", "application/octet-stream", &[7u8; 10_000]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(r.json()["body_len"], 10_000);
}

#[test]
fn missing_venv_is_a_clear_startup_error() {
    let (status, log) = support::start_failing("flask_app:app", &["--venv", "/nonexistent/venv"]);
    assert!(!status.success());
    assert!(log.contains("/nonexistent/venv"), "{log}");
}

/// A plain virtualenv, made by `python3 -m venv` (the Python the binary embeds).
fn make_venv(dir: &std::path::Path, system_site_packages: bool) -> std::path::PathBuf {
    let v = dir.join(if system_site_packages {
        "with-system"
    } else {
        "plain"
    });
    let mut cmd = std::process::Command::new(support::python3());
    cmd.args(["-m", "venv", "--without-pip"]);
    if system_site_packages {
        cmd.arg("--system-site-packages");
    }
    let out = cmd.arg(&v).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

#[test]
fn venv_isolates_as_python_m_venv_does() {
    let tmp = tempdir();
    let plain = make_venv(&tmp, false);
    let s = Server::start(
        "envinfo:application",
        &["--workers", "1", "--venv", plain.to_str().unwrap()],
    );
    let info = s.get("/").json();
    let canon = |p: &serde_json::Value| std::fs::canonicalize(p.as_str().unwrap()).unwrap();
    assert_eq!(
        canon(&info["prefix"]),
        canon(&serde_json::json!(plain)),
        "{info}"
    );
    assert_eq!(
        std::path::PathBuf::from(info["executable"].as_str().unwrap()),
        plain.join("bin/python"),
        "{info}"
    );
    assert_eq!(info["base_site_visible"], false, "{info}");
    assert_ne!(info["prefix"], info["base_prefix"], "{info}");
    drop(s);

    // The test virtualenv has Flask; an empty one must not see it, and one made with
    // --system-site-packages sees the base interpreter's site-packages.
    let with_system = make_venv(&tmp, true);
    let s = Server::start(
        "envinfo:application",
        &["--workers", "1", "--venv", with_system.to_str().unwrap()],
    );
    let info = s.get("/").json();
    assert_eq!(info["base_site_visible"], true, "{info}");
    drop(s);
    let s = Server::start(
        "envinfo:application",
        &["--workers", "1", "--venv", venv().to_str().unwrap()],
    );
    assert!(s.get("/").json()["flask"].is_string());
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn venv_of_another_python_version_is_refused_with_the_versions() {
    let tmp = tempdir();
    let v = tmp.join("other");
    std::fs::create_dir_all(v.join("bin")).unwrap();
    std::fs::write(
        v.join("pyvenv.cfg"),
        "home = /opt/python2.7/bin\ninclude-system-site-packages = false\nversion = 2.7.18\n",
    )
    .unwrap();
    let (status, log) =
        support::start_failing("envinfo:application", &["--venv", v.to_str().unwrap()]);
    assert!(!status.success());
    assert!(log.contains("made with Python 2.7"), "{log}");
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "wsgiscale-venv-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

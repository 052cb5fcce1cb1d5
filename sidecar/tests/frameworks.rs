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

//! `wsgiscale migrate --wsgiapp` output against the CRD: the manifest made from a gunicorn or
//! uWSGI configuration passes the CRD's CEL rules and `validate`, and the pods it renders run
//! the server with the settings the migration made.

use kube_cel::Validator;
use serde_json::{json, Value};
use wsgiscale_core::config::resolve;
use wsgiscale_core::migrate::{from_gunicorn, from_uwsgi, read_uwsgi, to_wsgiapp, GunicornConfig};
use wsgiscale_operator::crd::{crd, WsgiApp};
use wsgiscale_operator::validate::validate_app;

fn schema() -> Value {
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// Checks `manifest` as the API server and the operator would, and returns what the server
/// in its pods resolves.
fn admit(manifest: &Value) -> wsgiscale_core::config::ServerConfig {
    if let Err(errs) = Validator::new().validate(&schema(), manifest, None) {
        panic!("refused by the CRD's rules: {errs}\n{manifest:#}");
    }
    let mut app: WsgiApp = serde_json::from_value(manifest.clone()).expect("a WsgiApp");
    app.metadata.namespace = Some("default".into());
    app.metadata.uid = Some("0b5e7f0c-1111-4222-8333-444455556666".into());
    let valid = validate_app(&app).unwrap_or_else(|e| panic!("validate: {e}\n{manifest:#}"));
    resolve(&valid.server_settings(), None).expect("the server accepts it")
}

#[test]
fn a_gunicorn_migration_is_a_valid_wsgiapp_that_runs_the_same_settings() {
    let g = GunicornConfig {
        config_file: Some("/srv/app/gunicorn.conf.py".into()),
        app: Some("shop.wsgi:application".into()),
        settings: serde_json::from_value(json!({
            "bind": "0.0.0.0:8443",
            "workers": 4,
            "threads": 2,
            "timeout": 45,
            "graceful_timeout": 20,
            "keepalive": 65,
            "max_requests": 500,
            "max_requests_jitter": 50,
            "loglevel": "debug",
            "accesslog": "-",
            "certfile": "/tls/tls.crt",
            "keyfile": "/tls/tls.key",
            "ca_certs": "/tls/ca.crt",
            "cert_reqs": 1,
            "http_protocols": "h2,h1",
            "raw_env": ["A=1"],
            "user": 1000,
            "chdir": "/srv/app",
            "pythonpath": "/srv/lib,/srv/vendor",
        }))
        .expect("object"),
        hooks: serde_json::from_value(json!({
            "post_fork": "/srv/app/gunicorn.conf.py:post_fork",
            "when_ready": "shop.hooks:ready",
        }))
        .expect("object"),
        unknown: vec![],
    };
    let m = from_gunicorn(&g);
    let manifest = to_wsgiapp(&m, "shop", "registry.example.com/shop:1");
    let cfg = admit(&manifest);
    let ours = resolve(&m.settings, None).expect("the migrated settings resolve");
    assert_eq!(cfg.live.workers, ours.live.workers);
    assert_eq!(cfg.python.threads, ours.python.threads);
    assert_eq!(cfg.python.hooks, ours.python.hooks);
    assert_eq!(cfg.python.chdir, ours.python.chdir);
    assert_eq!(cfg.python.pythonpath, ours.python.pythonpath);
    assert_eq!(cfg.live.lifecycle, ours.live.lifecycle);
    assert_eq!(cfg.http.graceful_timeout, ours.http.graceful_timeout);
    assert_eq!(cfg.http.keepalive_timeout, ours.http.keepalive_timeout);
    assert_eq!(cfg.http.access_log, ours.http.access_log);
    assert_eq!(cfg.log.level, ours.log.level);
    // TLS: the operator mounts the Secret and points the server at it, on the same port.
    let tls = cfg.protocols.tls.expect("tls");
    assert_eq!(tls.binds, ours.protocols.tls.expect("tls").binds);
    assert_eq!(
        tls.client_verify,
        wsgiscale_core::config::protocols::ClientVerify::Optional
    );
    assert!(cfg.protocols.http2);
    assert_eq!(manifest["spec"]["env"][0]["name"], "A");
    assert_eq!(manifest["spec"]["pod"]["runAsUser"], 1000);
}

#[test]
fn a_uwsgi_migration_is_a_valid_wsgiapp() {
    let ini = "[uwsgi]\nmodule = shop.wsgi\nhttp = :8080\nprocesses = 8\ncheaper = 2\ncheaper-algo = spare2\nharakiri = 30\nreload-on-rss = 300\nlimit-post = 1048576\nlazy-apps = true\n";
    let u = read_uwsgi(&["--ini".into(), "u.ini".into()], |_| Ok(ini.into())).expect("reads");
    let m = from_uwsgi(&u);
    let cfg = admit(&to_wsgiapp(&m, "shop", "registry.example.com/shop:1"));
    assert_eq!((cfg.live.workers.min, cfg.live.workers.max), (2, 8));
    assert_eq!(
        cfg.live.lifecycle.timeout,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(cfg.live.lifecycle.max_rss, Some(300 << 20));
    assert_eq!(cfg.http.max_body, 1 << 20);
    assert!(!cfg.python.preload);
    assert_eq!(cfg.binds[0].to_string(), "0.0.0.0:8080");
}

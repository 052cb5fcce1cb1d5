//! The sample manifests (tests/manifests/, examples/wsgiapp.yaml,
//! examples/django-ingress/wsgiapp.yaml) against the CRD's CEL rules, evaluated locally with
//! the rule strings of the generated schema, and against `validate`.
//!
//! Every `valid-*.yaml` must pass every rule and validate; every `invalid-*.yaml` names, on its
//! first line (`# expect: ...`), the message of the rule that must refuse it, and `validate`
//! must refuse it too (the second line of defence for specs that got past admission).

use std::path::{Path, PathBuf};

use kube_cel::Validator;
use serde_json::Value;
use wsgiscale_operator::crd::{crd, WsgiApp};
use wsgiscale_operator::validate::validate_app;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate sits in the repository")
        .to_path_buf()
}

fn schema() -> Value {
    let crd = crd();
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// The WsgiApp documents of a YAML file (other kinds, e.g. a Namespace, are skipped).
fn wsgiapps(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("readable manifest");
    serde_saphyr::from_multiple::<Value>(&text)
        .expect("yaml")
        .into_iter()
        .filter(|v| v["kind"] == "WsgiApp")
        .collect()
}

/// Rust-side validation of a manifest, as the operator would see it from the API server.
fn validate_as_served(obj: &Value) -> Result<(), String> {
    let mut app: WsgiApp =
        serde_json::from_value(obj.clone()).map_err(|e| format!("does not deserialize: {e}"))?;
    app.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    app.metadata.uid = Some("0b5e7f0c-1111-4222-8333-444455556666".into());
    app.metadata.generation = Some(1);
    validate_app(&app).map(|_| ()).map_err(|e| e.to_string())
}

fn samples(prefix: &str) -> Vec<PathBuf> {
    let dir = repo_root().join("tests/manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/manifests exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn valid_samples_pass_every_rule_and_validate() {
    let schema = schema();
    let validator = Validator::new();
    let mut files = samples("valid-");
    assert!(files.len() >= 4, "valid samples: {files:?}");
    files.push(repo_root().join("examples/wsgiapp.yaml"));
    files.push(repo_root().join("examples/django-ingress/wsgiapp.yaml"));
    for file in files {
        let docs = wsgiapps(&file);
        assert_eq!(docs.len(), 1, "{} holds one WsgiApp", file.display());
        for obj in docs {
            if let Err(errs) = validator.validate(&schema, &obj, None) {
                panic!("{} fails CEL rules: {errs}", file.display());
            }
            if let Err(e) = validate_as_served(&obj) {
                panic!("{} fails validate: {e}", file.display());
            }
        }
    }
}

#[test]
fn each_invalid_sample_is_refused_by_the_rule_it_names() {
    let schema = schema();
    let validator = Validator::new();
    let files = samples("invalid-");
    assert!(files.len() >= 15, "invalid samples: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} must start with `# expect: <message>`", file.display()))
            .trim()
            .to_string();
        for obj in wsgiapps(&file) {
            let errs = match validator.validate(&schema, &obj, None) {
                Ok(()) => panic!("{} passes every CEL rule", file.display()),
                Err(errs) => errs.into_vec(),
            };
            // Refused for the expected reason, and only by rules (not an evaluation error).
            assert!(
                errs.iter().any(|e| e.message.contains(&expect)),
                "{}: no error says {expect:?}: {:?}",
                file.display(),
                errs.iter()
                    .map(|e| (&e.message, &e.kind))
                    .collect::<Vec<_>>()
            );
            for e in &errs {
                assert_eq!(
                    e.kind,
                    kube_cel::ErrorKind::ValidationFailure,
                    "{}: {e:?}",
                    file.display()
                );
            }
            assert!(
                validate_as_served(&obj).is_err(),
                "{} passes validate",
                file.display()
            );
        }
    }
}

#[test]
fn every_rule_in_the_schema_compiles() {
    // A valid object exercises every rule on the paths it sets; this walks the schema for
    // the rules on paths the samples leave out and checks each one compiles.
    fn rules(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(rs)) = m.get("x-kubernetes-validations") {
                    out.extend(
                        rs.iter()
                            .filter_map(|r| r["rule"].as_str().map(String::from)),
                    );
                }
                m.values().for_each(|c| rules(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| rules(c, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    rules(&schema(), &mut all);
    assert!(all.len() >= 19, "rules: {all:?}");
    for rule in all {
        assert!(
            kube_cel::cel::Program::compile(&rule).is_ok(),
            "rule does not compile: {rule}"
        );
    }
}

#[test]
fn the_size_rule_admits_only_what_the_server_parses() {
    // The CRD's size rule, taken from the generated schema, must never admit a size the
    // server's parser refuses (and should admit the usual ones).
    let schema = schema();
    let max_rss = &schema["properties"]["spec"]["properties"]["lifecycle"]["properties"]["maxRss"];
    let field_schema = serde_json::json!({
        "type": "object",
        "properties": {"v": {"type": "string", "x-kubernetes-validations": max_rss["x-kubernetes-validations"].clone()}},
    });
    let validator = Validator::new();
    let samples = [
        "0", "1048576", "512Mi", "1.5Gi", "300M", "10K", "10k", "64MiB", "2GB", "7B", "1Gi", "",
        "Mi", "-1", "1.", ".5", "1e3", "12X", "200Mb", "5 Mi", "1Ti", "0x10",
    ];
    let mut admitted = 0;
    for text in samples {
        let cel_ok = validator
            .validate(&field_schema, &serde_json::json!({ "v": text }), None)
            .is_ok();
        let server_ok = wsgiscale_core::units::parse_size(text).is_ok();
        if cel_ok {
            admitted += 1;
            assert!(
                server_ok,
                "the CRD admits {text:?} but the server refuses it"
            );
        }
    }
    assert!(admitted >= 10, "the rule admits too little: {admitted}");
}

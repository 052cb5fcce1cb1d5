//! The scrape against real local HTTP servers (127.0.0.x), and one autoscaler tick (list the
//! pods, scrape them, decide, publish) against a scripted API server.

use std::task::Poll;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wsgiscale_core::load::{QueueStats, WorkerCounts, LOAD_REPORT_VERSION};

use super::*;
use crate::crd::{AutoscalingSpec, WsgiAppStatus};
use crate::fixtures::{json_response, mk_app, next_request};

fn report(in_flight: u32, queue: u32, saturated: bool) -> LoadReport {
    let mut r = LoadReport {
        version: LOAD_REPORT_VERSION,
        time_unix_ms: 1,
        workers: WorkerCounts {
            min: 1,
            max: 4,
            total: 4,
            busy: in_flight.min(4),
            idle: 4 - in_flight.min(4),
            threads: 1,
            ..WorkerCounts::default()
        },
        queue: QueueStats {
            depth: queue,
            oldest_wait_ms: 0,
            max: 1024,
        },
        in_flight,
        rates: Default::default(),
        saturated,
        draining: false,
    };
    r.rates.s1.concurrency = f64::from(in_flight + queue);
    r
}

/// A minimal HTTP/1.1 server on `addr` that answers every request with `status` and `body`
/// (after `delay`), counting the requests it saw.
async fn serve(
    addr: &str,
    status: u16,
    body: String,
    delay: Duration,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind(addr).await.expect("bind loopback");
    let local = listener.local_addr().expect("addr");
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(got.starts_with(b"GET /load HTTP/1.1\r\n"), "{got:?}");
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    (local, hits)
}

fn json_of(r: &LoadReport) -> String {
    serde_json::to_string(r).expect("a report serializes")
}

#[tokio::test]
async fn scrape_reads_a_real_servers_report() {
    let want = report(3, 2, false);
    let (addr, hits) = serve("127.0.0.1:0", 200, json_of(&want), Duration::ZERO).await;
    let got = scrape_load(addr, Duration::from_secs(2))
        .await
        .expect("read");
    assert_eq!(got, want);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn scrape_errors_are_classified() {
    let t = Duration::from_millis(300);
    let (addr, _) = serve("127.0.0.1:0", 503, "{}".into(), Duration::ZERO).await;
    assert_eq!(
        scrape_load(addr, t).await.expect_err("503").as_str(),
        "status"
    );
    let (addr, _) = serve("127.0.0.1:0", 200, "not json".into(), Duration::ZERO).await;
    assert_eq!(
        scrape_load(addr, t).await.expect_err("garbage").as_str(),
        "report"
    );
    let (addr, _) = serve("127.0.0.1:0", 200, "{}".into(), Duration::from_secs(5)).await;
    assert_eq!(
        scrape_load(addr, t).await.expect_err("slow").as_str(),
        "timeout"
    );
    // A port nobody listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    assert_eq!(
        scrape_load(closed, t).await.expect_err("closed").as_str(),
        "connect"
    );
}

#[tokio::test]
async fn scrape_all_keeps_the_order_and_bounds_the_time() {
    let (a, _) = serve(
        "127.0.0.1:0",
        200,
        json_of(&report(1, 0, false)),
        Duration::ZERO,
    )
    .await;
    let (slow, _) = serve(
        "127.0.0.1:0",
        200,
        json_of(&report(2, 0, false)),
        Duration::from_secs(5),
    )
    .await;
    let (b, _) = serve(
        "127.0.0.1:0",
        200,
        json_of(&report(3, 0, false)),
        Duration::ZERO,
    )
    .await;
    let out = scrape_all(&[a, slow, b], 2, Duration::from_millis(400)).await;
    assert_eq!(out[0].as_ref().expect("a").in_flight, 1);
    assert_eq!(out[1].as_ref().expect_err("slow").as_str(), "timeout");
    assert_eq!(out[2].as_ref().expect("b").in_flight, 3);
}

fn mk_pod(name: &str, ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            deletion_timestamp: deleting.then(|| Time(Timestamp::now())),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            pod_ip: ip.map(Into::into),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(Time(
                    "2026-01-01T00:00:00Z".parse().expect("timestamp"),
                )),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

#[test]
fn only_ready_pods_with_an_ip_that_are_not_leaving_count() {
    let pods = vec![
        mk_pod("a", Some("10.0.0.1"), true, false),
        mk_pod("b", Some("10.0.0.2"), false, false),
        mk_pod("c", None, true, false),
        mk_pod("d", Some("10.0.0.4"), true, true),
        mk_pod("e", Some("not-an-ip"), true, false),
    ];
    let now: Timestamp = "2026-01-01T00:01:30Z".parse().expect("timestamp");
    let ready = compute_ready_pods(&pods, now);
    assert_eq!(
        ready,
        vec![ReadyPod {
            ip: "10.0.0.1".parse().expect("ip"),
            age: Duration::from_secs(90)
        }]
    );
}

#[test]
fn status_is_written_on_change_or_every_refresh() {
    let t0 = Instant::now();
    let s = |n: i32, panic: bool| AutoscalerStatus {
        recommended_replicas: Some(n),
        panic_mode: Some(panic),
        ..AutoscalerStatus::default()
    };
    let r = Duration::from_secs(10);
    assert!(should_write_status(None, &s(2, false), None, t0, r));
    assert!(!should_write_status(
        Some(&s(2, false)),
        &s(2, false),
        Some(t0),
        t0 + Duration::from_secs(2),
        r
    ));
    assert!(should_write_status(
        Some(&s(2, false)),
        &s(3, false),
        Some(t0),
        t0 + Duration::from_secs(2),
        r
    ));
    assert!(should_write_status(
        Some(&s(2, false)),
        &s(2, true),
        Some(t0),
        t0 + Duration::from_secs(2),
        r
    ));
    assert!(should_write_status(
        Some(&s(2, false)),
        &s(2, false),
        Some(t0),
        t0 + r,
        r
    ));
}

async fn body_of(req: Request<Body>) -> Value {
    serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json")
}

/// One tick: two ready pods (127.0.0.1 and 127.0.0.2, the same admin port) report a burst
/// (saturated, 40 queued each). The autoscaler lists the pods, scrapes both, goes into panic,
/// recommends replicas.max, publishes a ScaledUp event and writes its status blocks with its
/// own field manager; the Deployment is never touched. A second tick with nothing new only
/// lists the pods.
#[tokio::test]
async fn a_tick_lists_scrapes_decides_and_publishes() {
    let burst = json_of(&report(4, 40, true));
    let (one, hits_one) = serve("127.0.0.1:0", 200, burst.clone(), Duration::ZERO).await;
    let (two, hits_two) = serve(
        &format!("127.0.0.2:{}", one.port()),
        200,
        burst,
        Duration::ZERO,
    )
    .await;
    assert_eq!(one.port(), two.port());

    let app = mk_app("shop")
        .with_workers(1, Some(4))
        .with_replicas(1, Some(10))
        .map(|a| {
            a.spec.admin_port = Some(i32::from(one.port()));
            a.spec.autoscaling = Some(AutoscalingSpec {
                enabled: Some(true),
                ..AutoscalingSpec::default()
            });
        })
        .with_status(WsgiAppStatus {
            desired_replicas: Some(2),
            ..WsgiAppStatus::default()
        });
    let v = validate_app(&app).expect("valid");
    let policy = Policy::from_app(&v);

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Arc::new(Metrics::default());
    let autoscaler = Autoscaler::new(client, Some("test".into()), metrics.clone());
    let now = Instant::now();

    let script = async {
        let (req, send) = next_request(&mut handle).await;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/api/v1/namespaces/default/pods");
        assert!(
            req.uri()
                .query()
                .unwrap_or_default()
                .contains("labelSelector=wsgiscale.dev%2Fapp%3Dshop"),
            "{}",
            req.uri()
        );
        let pods = json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [
                serde_json::to_value(mk_pod("shop-a", Some("127.0.0.1"), true, false)).expect("json"),
                serde_json::to_value(mk_pod("shop-b", Some("127.0.0.2"), true, false)).expect("json"),
                serde_json::to_value(mk_pod("shop-c", Some("127.0.0.3"), false, false)).expect("json"),
            ],
        });
        send.send_response(json_response(StatusCode::OK, &pods));

        let (req, send) = next_request(&mut handle).await;
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/default/events"
        );
        let event = body_of(req).await;
        assert_eq!(event["reason"], "ScaledUp");
        assert_eq!(event["reportingController"], FIELD_MANAGER);
        let note = event["note"].as_str().unwrap_or_default().to_string();
        assert!(
            note.starts_with("2 -> 10 pods: panic: demand 88.0"),
            "{note}"
        );
        send.send_response(json_response(StatusCode::OK, &event));

        let (req, send) = next_request(&mut handle).await;
        assert_eq!(req.method(), Method::PATCH);
        assert_eq!(
            req.uri().path(),
            "/apis/wsgiscale.dev/v1alpha1/namespaces/default/wsgiapps/shop/status"
        );
        let query = req.uri().query().unwrap_or_default().to_string();
        assert!(
            query.contains("fieldManager=wsgiscale-autoscaler"),
            "{query}"
        );
        assert!(query.contains("force=true"), "{query}");
        let body = body_of(req).await;
        assert!(body.get("spec").is_none());
        let status = &body["status"];
        assert_eq!(status["autoscaler"]["recommendedReplicas"], 10);
        assert_eq!(status["autoscaler"]["panicMode"], true);
        assert!(status["autoscaler"]["lastScaleReason"]
            .as_str()
            .unwrap_or_default()
            .contains("capacity 2.8/pod"));
        assert_eq!(status["load"]["podsScraped"], 2);
        assert_eq!(status["load"]["podsReady"], 2);
        assert_eq!(status["load"]["busyWorkers"], 8);
        assert_eq!(status["load"]["queueDepth"], 80);
        assert!(
            status.get("conditions").is_none(),
            "only the autoscaler's blocks"
        );
        let mut stored = serde_json::to_value(&app).expect("json");
        stored["status"]["autoscaler"] = status["autoscaler"].clone();
        send.send_response(json_response(StatusCode::OK, &stored));
    };
    let (decision, ()) = tokio::join!(
        autoscaler.tick_app(&app, &policy, v.admin_port, now),
        script
    );
    let decision = decision.expect("tick");
    assert_eq!(
        (decision.desired, decision.action, decision.panic),
        (10, Action::ScaleUp, true)
    );
    assert_eq!(hits_one.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(hits_two.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The next tick: the reconciler has applied 10; the same load keeps it (panic), nothing
    // changed, the summary is fresh: only the pod list.
    let app = app.with_status(WsgiAppStatus {
        desired_replicas: Some(10),
        ..WsgiAppStatus::default()
    });
    let script = async {
        let (req, send) = next_request(&mut handle).await;
        assert_eq!(req.uri().path(), "/api/v1/namespaces/default/pods");
        let pods = json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [serde_json::to_value(mk_pod("shop-a", Some("127.0.0.1"), true, false)).expect("json")],
        });
        send.send_response(json_response(StatusCode::OK, &pods));
    };
    let (decision, ()) = tokio::join!(
        autoscaler.tick_app(&app, &policy, v.admin_port, now + Duration::from_secs(2)),
        script
    );
    let decision = decision.expect("tick");
    assert_eq!((decision.desired, decision.action), (10, Action::Hold));
    assert!(
        matches!(handle.poll_request(), Poll::Pending),
        "no other request"
    );
    let text = metrics.encode();
    assert!(
        text.contains("wsgiscale_operator_autoscale_decisions_total{result=\"scale_up\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wsgiscale_operator_load_scrapes_total{result=\"ok\"} 3"),
        "{text}"
    );
}

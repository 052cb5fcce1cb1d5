//! The scrape against real local HTTP servers (127.0.0.x), the pure step and its write rule
//! over a steady load, and one autoscaler tick (pods from the cache, scrape them, decide,
//! publish) against a scripted API server.

use std::task::Poll;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use serde_json::Value;
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
    assert_eq!(out[0].0.as_ref().expect("a").in_flight, 1);
    assert_eq!(out[1].0.as_ref().expect_err("slow").as_str(), "timeout");
    assert_eq!(out[2].0.as_ref().expect("b").in_flight, 3);
    assert!(
        out[1].1 >= Duration::from_millis(400),
        "the timeout is what it took"
    );
}

fn mk_pod(name: &str, ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some([("wsgiscale.dev/app".to_string(), "shop".to_string())].into()),
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

fn summary(time: &str, ready: i32, util: i32, queue: i32, scraped: i32) -> LoadSummary {
    LoadSummary {
        time: Some(Time(time.parse().expect("timestamp"))),
        pods_scraped: Some(scraped),
        pods_ready: Some(ready),
        busy_workers: Some(3),
        total_workers: Some(8),
        queue_depth: Some(queue),
        utilization_percent: Some(util),
    }
}

#[test]
fn the_load_summary_changes_only_beyond_its_threshold() {
    let base = summary("2026-01-01T00:00:00Z", 2, 50, 0, 2);
    let cases = [
        (summary("2026-01-01T00:00:00Z", 2, 50, 0, 2), false),
        // Busy and total workers move with every request: no change by themselves.
        (
            LoadSummary {
                busy_workers: Some(5),
                total_workers: Some(9),
                ..base.clone()
            },
            false,
        ),
        (summary("2026-01-01T00:00:00Z", 2, 59, 0, 2), false),
        (summary("2026-01-01T00:00:00Z", 2, 41, 0, 2), false),
        (summary("2026-01-01T00:00:00Z", 2, 60, 0, 2), true),
        (summary("2026-01-01T00:00:00Z", 2, 40, 0, 2), true),
        (summary("2026-01-01T00:00:00Z", 3, 50, 0, 2), true),
        (summary("2026-01-01T00:00:00Z", 2, 50, 4, 2), true),
        (summary("2026-01-01T00:00:00Z", 2, 50, 0, 0), true),
    ];
    for (new, want) in cases {
        assert_eq!(load_changed(&base, &new), want, "{new:?}");
    }
}

#[test]
fn status_is_written_on_change_or_at_the_heartbeat() {
    let s = |n: i32, panic: bool| AutoscalerStatus {
        recommended_replicas: Some(n),
        panic_mode: Some(panic),
        ..AutoscalerStatus::default()
    };
    let written = summary("2026-01-01T00:00:00Z", 2, 50, 0, 2);
    let at = |t: &str| t.parse::<Timestamp>().expect("timestamp");
    let now = at("2026-01-01T00:00:30Z");
    let new = summary("2026-01-01T00:00:30Z", 2, 52, 0, 2);
    let hb = STATUS_HEARTBEAT;
    assert_eq!(
        compute_write(None, &s(2, false), &new, now, hb),
        Some(WriteCause::Change),
        "nothing written yet"
    );
    assert_eq!(
        compute_write(Some((&s(2, false), &written)), &s(2, false), &new, now, hb),
        None,
        "30 s after the last write, nothing changed"
    );
    for changed in [s(3, false), s(2, true)] {
        assert_eq!(
            compute_write(Some((&s(2, false), &written)), &changed, &new, now, hb),
            Some(WriteCause::Change)
        );
    }
    let busier = summary("2026-01-01T00:00:30Z", 2, 75, 0, 2);
    assert_eq!(
        compute_write(
            Some((&s(2, false), &written)),
            &s(2, false),
            &busier,
            now,
            hb
        ),
        Some(WriteCause::Change)
    );
    assert_eq!(
        compute_write(
            Some((&s(2, false), &written)),
            &s(2, false),
            &new,
            at("2026-01-01T00:01:00Z"),
            hb
        ),
        Some(WriteCause::Heartbeat),
        "60 s after the last write"
    );
    // A summary without a time (written by an older operator) is refreshed.
    let timeless = LoadSummary {
        time: None,
        ..written.clone()
    };
    assert_eq!(
        compute_write(Some((&s(2, false), &timeless)), &s(2, false), &new, now, hb),
        Some(WriteCause::Heartbeat)
    );
}

/// The writes of a steady load over 10 minutes: one heartbeat a minute (the target is fewer
/// than 200 a minute for 100 apps).
#[test]
fn a_steady_load_writes_once_a_minute() {
    let app = mk_app("shop")
        .with_workers(1, Some(4))
        .with_replicas(1, Some(10))
        .map(|a| {
            a.spec.autoscaling = Some(AutoscalingSpec {
                enabled: Some(true),
                tick_seconds: Some(2),
                ..AutoscalingSpec::default()
            })
        })
        .with_status(WsgiAppStatus {
            desired_replicas: Some(2),
            ..WsgiAppStatus::default()
        });
    let policy = Policy::from_app(&validate_app(&app).expect("valid"));
    let pods: Vec<Pod> = ["10.0.0.1", "10.0.0.2"]
        .iter()
        .enumerate()
        .map(|(i, ip)| mk_pod(&format!("shop-{i}"), Some(ip), true, false))
        .collect();
    let t0 = Instant::now();
    let wall0: Timestamp = "2026-01-01T00:10:00Z".parse().expect("timestamp");
    let mut state = AppState::new(&app, 2, t0);
    let mut writes = Vec::new();
    for tick in 0..300u64 {
        let at = Duration::from_secs(2 * tick);
        let wall = wall0 + std::time::Duration::from_secs(2 * tick);
        let (ready, pick, _) = plan_scrape(&pods, wall, &policy, 9191, tick);
        let results: Vec<Result<LoadReport, ScrapeError>> =
            pick.iter().map(|_| Ok(report(1, 0, false))).collect();
        let step = compute_step(
            &mut state,
            &policy,
            &ready,
            &pick,
            &results,
            Some(2),
            (at, t0 + at, wall),
            STATUS_HEARTBEAT,
            HeldDemand::default(),
        );
        assert_eq!(step.scrapes, ["ok", "ok"]);
        if let Some(cause) = step.write {
            writes.push((tick, cause));
            state.mark_written(step.status.clone(), step.load.clone());
        }
    }
    let changes = writes
        .iter()
        .filter(|(_, c)| *c == WriteCause::Change)
        .count();
    let heartbeats = writes.len() - changes;
    // The first write, maybe a change while the stable window fills, then heartbeats only.
    assert!(changes <= 3, "{writes:?}");
    assert!((9..=10).contains(&heartbeats), "{writes:?}");
}

async fn body_of(req: Request<Body>) -> Value {
    serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json")
}

/// One tick: two ready pods (127.0.0.1 and 127.0.0.2, the same admin port) report a burst
/// (saturated, 40 queued each). The autoscaler takes the pods from the shared pod cache (no
/// LIST), scrapes both, goes into panic, recommends replicas.max, queues a ScaledUp event and
/// writes its status blocks with its own field manager; the Deployment is never touched. A
/// second tick with nothing new sends the API server nothing.
#[tokio::test]
async fn a_tick_reads_the_cache_scrapes_decides_and_publishes() {
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

    let pods = PodCache::default();
    pods.apply(None, &kube::runtime::watcher::Event::Init);
    for p in [
        mk_pod("shop-a", Some("127.0.0.1"), true, false),
        mk_pod("shop-b", Some("127.0.0.2"), true, false),
        mk_pod("shop-c", Some("127.0.0.3"), false, false),
    ] {
        pods.apply(None, &kube::runtime::watcher::Event::InitApply(p));
    }
    pods.apply(None, &kube::runtime::watcher::Event::InitDone);

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Arc::new(Metrics::default());
    let (events, mut queued) = EventSink::new(metrics.clone());
    let autoscaler = Autoscaler::new(client, events, metrics.clone(), pods);
    let now = Instant::now();

    let script = async {
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
    let (step, ()) = tokio::join!(
        autoscaler.tick_app(&app, &policy, v.admin_port_number(), &v, now),
        script
    );
    let step = step.expect("tick");
    let decision = &step.decision;
    assert_eq!(
        (decision.desired, decision.action, decision.panic),
        (10, Action::ScaleUp, true)
    );
    assert_eq!(step.write, Some(WriteCause::Change));
    assert_eq!(hits_one.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(hits_two.load(std::sync::atomic::Ordering::SeqCst), 1);
    let event = queued.try_recv().expect("a queued event");
    assert_eq!(
        (event.reporting, event.reason.as_str(), event.warning),
        (Reporting::Autoscaler, "ScaledUp", false)
    );
    assert!(
        event.note.starts_with("2 -> 10 pods: panic: demand 88.0"),
        "{}",
        event.note
    );

    // The next tick: the reconciler has applied 10; the same load keeps it (panic), nothing
    // changed, the summary is fresh: no request at all.
    let app = app.with_status(WsgiAppStatus {
        desired_replicas: Some(10),
        ..WsgiAppStatus::default()
    });
    let step = autoscaler
        .tick_app(
            &app,
            &policy,
            v.admin_port_number(),
            &v,
            now + Duration::from_secs(2),
        )
        .await
        .expect("tick");
    assert_eq!(
        (step.decision.desired, step.decision.action),
        (10, Action::Hold)
    );
    assert_eq!(step.write, None);
    assert!(matches!(handle.poll_request(), Poll::Pending), "no request");
    assert!(queued.try_recv().is_err(), "no event");
    let text = metrics.encode();
    assert!(
        text.contains("wsgiscale_operator_autoscale_decisions_total{namespace=\"default\",wsgiapp=\"shop\",direction=\"scale_up\",mode=\"panic\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wsgiscale_operator_load_scrapes_total{namespace=\"default\",wsgiapp=\"shop\",result=\"ok\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("wsgiscale_operator_autoscale_status_writes_total{result=\"change\"} 1"),
        "{text}"
    );
}

//! The stand-in kubelet: no kubelet runs, so the benchmark gives each pod of an autoscaled app
//! a loopback address 127.0.0.N (N from 2; 127.0.0.0/8 is all on `lo`), serves a valid
//! `LoadReport` at `http://127.0.0.N:ADMIN_PORT/load`, and marks the pod Running and Ready with
//! that podIP, as operator/tests/e2e_autoscale.rs does with real servers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use wsgiscale_core::load::{
    LoadReport, QueueStats, Rates, Window, WorkerCounts, LOAD_REPORT_VERSION,
};

/// What the stand-ins saw.
#[derive(Default)]
pub struct Seen {
    /// Seconds since the benchmark's start at which each `/load` request arrived.
    pub scrapes: Vec<f64>,
    /// Microseconds from accepting a connection to the response written.
    pub serve_us: Vec<f64>,
    /// Pods served now.
    pub pods: usize,
    /// Pods marked Ready.
    pub marked_ready: usize,
}

/// A steady, moderate load: 1 of 2 workers busy, nothing queued (the autoscaler holds).
fn report() -> LoadReport {
    let w = Window {
        requests_per_second: 5.0,
        utilization: 0.5,
        concurrency: 1.0,
        arrivals_per_second: 5.0,
        service_seconds: 0.2,
    };
    LoadReport {
        version: LOAD_REPORT_VERSION,
        time_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        workers: WorkerCounts {
            min: 2,
            max: 4,
            total: 2,
            busy: 1,
            idle: 1,
            starting: 0,
            retiring: 0,
            threads: 1,
        },
        queue: QueueStats {
            depth: 0,
            oldest_wait_ms: 0,
            max: 1024,
        },
        in_flight: 1,
        rates: Rates {
            s1: w,
            s10: w,
            s60: w,
        },
        saturated: false,
        draining: false,
    }
}

async fn serve_load(
    listener: tokio::net::TcpListener,
    start: Instant,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) {
    loop {
        let (mut sock, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let accepted = Instant::now();
            let mut buf = Vec::with_capacity(512);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let ok = buf.starts_with(b"GET /load ");
            let body = if ok {
                serde_json::to_string(&report()).unwrap_or_default()
            } else {
                String::new()
            };
            let head = if ok { "200 OK" } else { "404 Not Found" };
            let resp = format!(
                "HTTP/1.1 {head}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
            if ok {
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                s.scrapes.push(start.elapsed().as_secs_f64());
                s.serve_us.push(accepted.elapsed().as_secs_f64() * 1e6);
            }
        });
    }
}

/// Plays the kubelet for the pods of `apps` (names; unique across namespaces) until `stop`:
/// every 2 s, one list of their pods; a new pod gets the next address, a `/load` server on
/// `admin_port` and a Running/Ready status; a pod gone has its server stopped.
pub async fn run(
    client: Client,
    apps: Vec<String>,
    admin_port: u16,
    start: Instant,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = format!("wsgiscale.dev/app in ({})", apps.join(","));
    let mut running: HashMap<String, (Ipv4Addr, CancellationToken)> = HashMap::new();
    let mut next: u32 = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    while !stop.is_cancelled() {
        let listed = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("stand-in: list pods: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let key = |p: &Pod| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
        let alive: Vec<&Pod> = listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let alive_keys: Vec<String> = alive.iter().map(|p| key(p)).collect();
        running.retain(|k, (_, token)| {
            let keep = alive_keys.contains(k);
            if !keep {
                token.cancel();
            }
            keep
        });
        let mut to_mark = Vec::new();
        for pod in alive {
            let k = key(pod);
            if !running.contains_key(&k) {
                let ip = Ipv4Addr::from(next);
                next += 1;
                match tokio::net::TcpListener::bind(SocketAddr::from((ip, admin_port))).await {
                    Ok(listener) => {
                        let token = stop.child_token();
                        tokio::spawn(serve_load(listener, start, seen.clone(), token.clone()));
                        running.insert(k.clone(), (ip, token));
                    }
                    Err(e) => {
                        eprintln!("stand-in: bind {ip}:{admin_port}: {e}");
                        continue;
                    }
                }
            }
            let Some((ip, _)) = running.get(&k) else {
                continue;
            };
            let ip = ip.to_string();
            let ready = pod.status.as_ref().is_some_and(|st| {
                st.pod_ip.as_deref() == Some(ip.as_str())
                    && st
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if !ready {
                to_mark.push((pod.namespace().unwrap_or_default(), pod.name_any(), ip));
            }
        }
        let marked = futures::stream::iter(to_mark)
            .map(|(ns, name, ip)| {
                let client = client.clone();
                async move {
                    let api: Api<Pod> = Api::namespaced(client, &ns);
                    match wsgiscale_envtest::mark_pod_ready(&api, &name, &ip.to_string()).await {
                        Ok(_) => 1,
                        Err(e) => {
                            eprintln!("stand-in: patch status of {ns}/{name}: {e}");
                            0
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .fold(0usize, |a, n| async move { a + n })
            .await;
        {
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            s.pods = running.len();
            s.marked_ready += marked;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    for (_, (_, token)) in running {
        token.cancel();
    }
}

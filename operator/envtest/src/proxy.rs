//! A stand-in kube-proxy: each Service of the namespaces it serves gets a loopback address of
//! its own (nothing routes ClusterIPs here), listening on the Service's ports; each new
//! connection goes to one ready endpoint of the Service's EndpointSlices, chosen at random, as
//! kube-proxy's iptables mode does, and the proxy follows the slices as pods come and go. A
//! Service with no ready endpoint refuses the connection (it is reset at once, as iptables'
//! REJECT makes the client fail).
//!
//! It also counts what a service mesh's proxy would: the connections (with one request per
//! connection: the requests) in flight at each endpoint, now and integrated over time, which
//! the stand-in metrics-server turns into a per-pod "requests in flight" metric.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wsgiscale_core::rng::SplitMix64;

/// Requests in flight at one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InFlight {
    /// Open now.
    pub now: u64,
    /// Connection-seconds so far (the integral of `now` over time).
    pub seconds: f64,
    /// Connections ever opened.
    pub total: u64,
    last: Option<Instant>,
}

impl InFlight {
    fn advance(&mut self, at: Instant) {
        if let Some(last) = self.last {
            self.seconds += self.now as f64 * at.saturating_duration_since(last).as_secs_f64();
        }
        self.last = Some(at);
    }

    /// The counters as of `at` (the integral brought up to date).
    pub fn at(mut self, at: Instant) -> InFlight {
        self.advance(at);
        self
    }
}

/// The ready endpoints of one Service port (by the port's name), from its EndpointSlices.
pub fn ready_endpoints(slices: &[&EndpointSlice], port_name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            // The API's rule: a missing `ready` means ready.
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            if let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) {
                out.push(SocketAddr::from((ip, port)));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Listener {
    cancel: CancellationToken,
}

struct Svc {
    addr: Ipv4Addr,
    /// Service port -> (port name, listener).
    listeners: BTreeMap<u16, (String, Listener)>,
    /// Port name -> ready endpoints.
    endpoints: Arc<RwLock<HashMap<String, Vec<SocketAddr>>>>,
}

struct Inner {
    namespaces: RwLock<HashSet<String>>,
    services: Mutex<HashMap<(String, String), Svc>>,
    inflight: Arc<Mutex<HashMap<Ipv4Addr, InFlight>>>,
    rng: Arc<Mutex<SplitMix64>>,
    /// 127.B.x.y: B for this proxy.
    block: u8,
    next: Mutex<u16>,
}

/// A running stand-in kube-proxy.
pub struct StandInProxy {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl StandInProxy {
    /// Starts following the Services and EndpointSlices of `namespaces` (more with
    /// [`StandInProxy::serve`]).
    pub fn start(client: Client, namespaces: &[String]) -> StandInProxy {
        let seed = std::process::id() as u64 ^ 0x5eed;
        let inner = Arc::new(Inner {
            namespaces: RwLock::new(namespaces.iter().cloned().collect()),
            services: Mutex::new(HashMap::new()),
            inflight: Arc::new(Mutex::new(HashMap::new())),
            rng: Arc::new(Mutex::new(SplitMix64(seed))),
            block: 100 + (std::process::id() % 100) as u8,
            next: Mutex::new(1),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(client, inner.clone(), cancel.clone()));
        StandInProxy {
            inner,
            cancel,
            task,
        }
    }

    /// Follows the Services of `namespace` too.
    pub fn serve(&self, namespace: &str) {
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(namespace.to_string());
    }

    /// The loopback address of Service `namespace/name`, once it has one.
    pub fn address(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| s.addr)
    }

    /// Waits (up to `timeout`) until Service `namespace/name` listens on `port`; its address.
    pub async fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        timeout: Duration,
    ) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            {
                let services = self
                    .inner
                    .services
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(s) = services.get(&(namespace.to_string(), name.to_string())) {
                    if s.listeners.contains_key(&port) {
                        return Some(SocketAddr::from((s.addr, port)));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The ready endpoints of Service `namespace/name` now (all ports).
    pub fn endpoints(&self, namespace: &str, name: &str) -> Vec<SocketAddr> {
        let services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| {
                let e = s.endpoints.read().unwrap_or_else(|e| e.into_inner());
                let mut v: Vec<SocketAddr> = e.values().flatten().copied().collect();
                v.sort();
                v.dedup();
                v
            })
            .unwrap_or_default()
    }

    /// Requests in flight at every endpoint address the proxy has sent to.
    pub fn inflight(&self) -> HashMap<Ipv4Addr, InFlight> {
        let now = Instant::now();
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(ip, f)| (*ip, f.at(now)))
            .collect()
    }

    /// Stops every listener.
    pub fn stop(&self) {
        self.cancel.cancel();
        self.task.abort();
        let mut services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, s) in services.drain() {
            for (_, (_, l)) in s.listeners {
                l.cancel.cancel();
            }
        }
    }
}

impl Drop for StandInProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
        let services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for s in services.values() {
            for (_, l) in s.listeners.values() {
                l.cancel.cancel();
            }
        }
    }
}

async fn run(client: Client, inner: Arc<Inner>, cancel: CancellationToken) {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (eps_store, eps_writer) = reflector::store::<EndpointSlice>();
    let svcs = reflector::reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    let eps = reflector::reflector(
        eps_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    let mut svcs = std::pin::pin!(svcs);
    let mut eps = std::pin::pin!(eps);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = svcs.next() => {}
            _ = eps.next() => {}
            _ = tick.tick() => {}
        }
        while let Some(Some(_)) = futures::FutureExt::now_or_never(svcs.next()) {}
        while let Some(Some(_)) = futures::FutureExt::now_or_never(eps.next()) {}
        sync(&inner, &svc_store, &eps_store).await;
    }
}

async fn sync(inner: &Arc<Inner>, svc_store: &Store<Service>, eps_store: &Store<EndpointSlice>) {
    let namespaces = inner
        .namespaces
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let slices = eps_store.state();
    let mut wanted: HashSet<(String, String)> = HashSet::new();
    for svc in svc_store.state() {
        let ns = svc.namespace().unwrap_or_default();
        if !namespaces.contains(&ns) {
            continue;
        }
        let name = svc.name_any();
        let key = (ns.clone(), name.clone());
        wanted.insert(key.clone());
        let mine: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.namespace().as_deref() == Some(ns.as_str())
                    && s.labels().get("kubernetes.io/service-name") == Some(&name)
            })
            .map(|s| s.as_ref())
            .collect();
        let ports: Vec<(u16, String)> = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.name.unwrap_or_default())))
            .collect();
        let endpoints: HashMap<String, Vec<SocketAddr>> = ports
            .iter()
            .map(|(_, n)| (n.clone(), ready_endpoints(&mine, n)))
            .collect();
        let mut to_listen = Vec::new();
        {
            let mut services = inner.services.lock().unwrap_or_else(|e| e.into_inner());
            let s = services.entry(key.clone()).or_insert_with(|| {
                let mut next = inner.next.lock().unwrap_or_else(|e| e.into_inner());
                let n = *next;
                *next = next.wrapping_add(1).max(1);
                Svc {
                    addr: Ipv4Addr::new(127, inner.block, (n >> 8) as u8, (n & 0xff) as u8),
                    listeners: BTreeMap::new(),
                    endpoints: Arc::new(RwLock::new(HashMap::new())),
                }
            });
            *s.endpoints.write().unwrap_or_else(|e| e.into_inner()) = endpoints;
            // Ports gone from the Service stop listening.
            let keep: HashSet<u16> = ports.iter().map(|(p, _)| *p).collect();
            s.listeners.retain(|p, (_, l)| {
                let k = keep.contains(p);
                if !k {
                    l.cancel.cancel();
                }
                k
            });
            for (port, pname) in &ports {
                if !s.listeners.contains_key(port) {
                    to_listen.push((s.addr, *port, pname.clone(), s.endpoints.clone()));
                }
            }
        }
        for (addr, port, pname, endpoints) in to_listen {
            match TcpListener::bind(SocketAddr::from((addr, port))).await {
                Ok(l) => {
                    let cancel = CancellationToken::new();
                    tokio::spawn(accept_loop(
                        l,
                        pname.clone(),
                        endpoints,
                        inner.inflight.clone(),
                        inner.rng.clone(),
                        cancel.clone(),
                    ));
                    let mut services = inner.services.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(s) = services.get_mut(&key) {
                        s.listeners.insert(port, (pname, Listener { cancel }));
                    }
                }
                Err(e) => {
                    tracing::warn!(%addr, port, error = %e, "stand-in kube-proxy cannot listen");
                }
            }
        }
    }
    // Services that are gone stop listening.
    let mut services = inner.services.lock().unwrap_or_else(|e| e.into_inner());
    services.retain(|k, s| {
        let keep = wanted.contains(k);
        if !keep {
            for (_, (_, l)) in std::mem::take(&mut s.listeners) {
                l.cancel.cancel();
            }
        }
        keep
    });
}

/// Makes the close of `conn` a reset (SO_LINGER 0), as a refused connection looks to a client.
fn reset(conn: &TcpStream) {
    let _ = socket2::SockRef::from(conn).set_linger(Some(Duration::ZERO));
}

async fn accept_loop(
    listener: TcpListener,
    port_name: String,
    endpoints: Arc<RwLock<HashMap<String, Vec<SocketAddr>>>>,
    inflight: Arc<Mutex<HashMap<Ipv4Addr, InFlight>>>,
    rng: Arc<Mutex<SplitMix64>>,
    cancel: CancellationToken,
) {
    loop {
        let (conn, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let target = {
            let e = endpoints.read().unwrap_or_else(|e| e.into_inner());
            let ready = e.get(&port_name).cloned().unwrap_or_default();
            if ready.is_empty() {
                None
            } else {
                let mut r = rng.lock().unwrap_or_else(|e| e.into_inner());
                Some(ready[r.up_to(ready.len() as u64 - 1) as usize])
            }
        };
        let Some(target) = target else {
            // No endpoint: refuse, as iptables' REJECT does.
            reset(&conn);
            drop(conn);
            continue;
        };
        let inflight = inflight.clone();
        // The connection ends with the listener: a Service deleted (or a run torn down) frees
        // its connections' descriptors even where a pod died without a FIN.
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let ip = match target.ip() {
                std::net::IpAddr::V4(ip) => ip,
                std::net::IpAddr::V6(_) => return,
            };
            let mut client = conn;
            let mut backend = match TcpStream::connect(target).await {
                Ok(b) => b,
                Err(_) => {
                    reset(&client);
                    return;
                }
            };
            let _ = backend.set_nodelay(true);
            let _ = client.set_nodelay(true);
            {
                let mut f = inflight.lock().unwrap_or_else(|e| e.into_inner());
                let e = f.entry(ip).or_default();
                e.advance(Instant::now());
                e.now += 1;
                e.total += 1;
            }
            // Both ways, until the client is gone. When the client closes first (a client
            // that gave up), the backend connection is closed too, not half-closed: the
            // backend sees the same FIN it would through iptables' DNAT, and a response it
            // writes later is refused as the client's kernel would refuse it, while the proxy
            // holds no descriptors for connections whose client left.
            let (mut cr, mut cw) = client.split();
            let (mut br, mut bw) = backend.split();
            let up = tokio::io::copy(&mut cr, &mut bw);
            let down = async {
                let _ = tokio::io::copy(&mut br, &mut cw).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut cw).await;
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = up => {}
                _ = down => {}
            }
            let mut f = inflight.lock().unwrap_or_else(|e| e.into_inner());
            let e = f.entry(ip).or_default();
            e.advance(Instant::now());
            e.now = e.now.saturating_sub(1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("a slice")
    }

    #[test]
    fn only_ready_endpoints_of_the_named_port() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000}, {"name": "admin", "port": 9191}],
            "endpoints": [
                {"addresses": ["198.18.1.2"], "conditions": {"ready": true}},
                {"addresses": ["198.18.1.3"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["198.18.1.4"]},
            ],
        }));
        let http = ready_endpoints(&[&s], "http");
        assert_eq!(
            http,
            vec![
                "198.18.1.2:8000".parse::<SocketAddr>().expect("addr"),
                "198.18.1.4:8000".parse().expect("addr")
            ]
        );
        assert_eq!(ready_endpoints(&[&s], "admin").len(), 2);
        assert!(ready_endpoints(&[&s], "other").is_empty());
    }

    #[test]
    fn in_flight_integrates_over_time() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        f.advance(t0);
        f.now = 2;
        let later = f.at(t0 + Duration::from_millis(500));
        assert!((later.seconds - 1.0).abs() < 1e-9);
    }
}

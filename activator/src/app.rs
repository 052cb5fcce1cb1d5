//! One app's state in the activator: its route, its hold queue, its pods (from its
//! EndpointSlices, refined by the activator's own `/readyz` probes and each pod's `/load`), the
//! requests waiting for an assignment, and the dispatch that joins them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;
use wsgiscale_core::activator::Route;
use wsgiscale_core::load::LoadReport;

use crate::queue::{Id, Queue, Reject, Slot};

/// How many requests per worker slot of a pod may wait in the pod's own queue beyond what it
/// runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// This many, whatever the pod (0: never more than it runs).
    Fixed(u32),
    /// As many as cover the hop through the activator, pod by pod ([`covering_backlog`]).
    Auto,
}

/// The most a fixed backlog may be.
pub const FIXED_MAX: u32 = 16;

/// The most [`Backlog::Auto`] gives a slot: with requests this much faster than the hop the
/// activator is the limit, not the pod's idle time.
pub const AUTO_MAX: u32 = 8;

impl FromStr for Backlog {
    type Err = String;

    fn from_str(s: &str) -> Result<Backlog, String> {
        if s == "auto" {
            return Ok(Backlog::Auto);
        }
        match s.parse::<u32>() {
            Ok(n) if n <= FIXED_MAX => Ok(Backlog::Fixed(n)),
            _ => Err(format!(
                "`{s}` is neither `auto` nor a whole number from 0 to {FIXED_MAX}"
            )),
        }
    }
}

impl fmt::Display for Backlog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backlog::Fixed(n) => write!(f, "{n}"),
            Backlog::Auto => f.write_str("auto"),
        }
    }
}

/// Requests per slot that keep a pod's workers busy across the hop, by Little's law: a slot
/// that finishes waits one round trip through the activator (`hop_ms`) for its next request,
/// time in which it serves `hop_ms / service_ms` requests; that many waiting in the pod's own
/// queue cover the hop, and they wait there no longer than the hop itself. At least 1 (a
/// request slower than the hop still finds its successor in the pod), at most [`AUTO_MAX`];
/// 1 until both figures are known.
pub fn covering_backlog(hop_ms: Option<f64>, service_ms: Option<f64>) -> u32 {
    match (hop_ms, service_ms) {
        (Some(hop), Some(service)) if hop.is_finite() && service.is_finite() && service > 0.0 => {
            let n = (hop.max(0.0) / service).ceil();
            if n >= f64::from(AUTO_MAX) {
                AUTO_MAX
            } else {
                (n as u32).max(1)
            }
        }
        _ => 1,
    }
}

/// A slot's mean service time (ms) by the pod's own `/load` over its last 10 s: the busy
/// thread time per completed request. None when it completed too few to tell.
pub fn service_ms(load: &LoadReport) -> Option<f64> {
    let w = load.rates.s10;
    if w.requests_per_second < 1.0 || !w.utilization.is_finite() || w.utilization <= 0.0 {
        return None;
    }
    let running = load.workers.busy.saturating_add(load.workers.idle).max(1);
    let slots = f64::from(running) * f64::from(load.workers.threads.max(1));
    Some(1000.0 * w.utilization.min(1.0) * slots / w.requests_per_second)
}

/// Weight of a new round trip in [`Pod::hop_ms`].
const HOP_WEIGHT: f64 = 0.25;

/// A pod of the app, as the activator knows it.
#[derive(Debug, Clone, Default)]
pub struct Pod {
    /// Its HTTP port (from the EndpointSlice).
    pub http_port: u16,
    /// Ready in the EndpointSlices.
    pub ready: bool,
    /// The activator's own `/readyz` probe said ready before the slices did.
    pub probed_ready: bool,
    /// Terminating in the slices, or draining by its `/load`.
    pub terminating: bool,
    /// Gone from the slices; kept until its requests end.
    pub gone: bool,
    /// Its last `/load`.
    pub load: Option<LoadReport>,
    /// Requests the activator forwarded to it that have not ended.
    pub in_flight: u32,
    /// A connection to it was refused: no new request until then (ms).
    pub unreachable_until: u64,
    /// A `/readyz` probe is on its way.
    pub probing: bool,
    /// The round trip to it (ms): a moving average of its `/load` requests' times.
    pub hop_ms: Option<f64>,
    /// Which pod this is, of those that had its address: a new number each time the address
    /// comes back to the slices after it had left them ([`PodTarget`]).
    pub instance: u64,
}

impl Pod {
    /// Whether it may get requests at `now`.
    pub fn usable(&self, now: u64) -> bool {
        (self.ready || self.probed_ready)
            && !self.terminating
            && !self.gone
            && now >= self.unreachable_until
            && !self.load.as_ref().is_some_and(|l| l.draining)
    }

    /// Whether it is one to probe at its `/readyz`: in the slices, neither ready there nor
    /// probed ready, and not terminating.
    fn awaits_readiness(&self) -> bool {
        !self.ready && !self.probed_ready && !self.terminating && !self.gone
    }

    /// Requests it can run at once: MAX workers x threads from its `/load` (the pod's own
    /// worker scaling reaches MAX within milliseconds of a queue), else the route's figure.
    pub fn capacity(&self, slots_per_pod: u32) -> u32 {
        match &self.load {
            Some(l) if l.workers.max > 0 => l.workers.max * l.workers.threads.max(1),
            _ => slots_per_pod.max(1),
        }
    }

    /// Records a round trip to it of `ms`.
    pub fn observe_hop(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.hop_ms = Some(match self.hop_ms {
                Some(h) => h + HOP_WEIGHT * (ms - h),
                None => ms,
            });
        }
    }

    /// Requests per slot that may wait in its own queue under `rule`.
    pub fn backlog(&self, rule: Backlog) -> u32 {
        match rule {
            Backlog::Fixed(n) => n,
            Backlog::Auto => covering_backlog(self.hop_ms, self.load.as_ref().and_then(service_ms)),
        }
    }

    /// Requests the activator may have at it at once: its capacity, and the backlog more per
    /// slot that wait in the pod's own queue, so that a worker that finishes finds its next
    /// request there instead of idling for the round trip through the activator (the
    /// response back to it, the next request out).
    pub fn limit(&self, slots_per_pod: u32, rule: Backlog) -> u32 {
        self.capacity(slots_per_pod)
            .saturating_mul(self.backlog(rule).saturating_add(1))
    }

    /// Free slots at `now`: its limit less what the activator has in flight there.
    pub fn free(&self, slots_per_pod: u32, rule: Backlog, now: u64) -> u32 {
        if self.usable(now) {
            self.limit(slots_per_pod, rule)
                .saturating_sub(self.in_flight)
        } else {
            0
        }
    }
}

/// Where a request goes: a pod's address, and which pod had it when the request was handed
/// over (an address passes to a new pod once its pod goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodTarget {
    /// The pod's HTTP address.
    pub addr: SocketAddr,
    /// The activator's number for this pod ([`Pod::instance`]).
    pub instance: u64,
}

/// The host name a request to `target` is sent to: the pod's address and its instance
/// number, which [`parse_pod_host`] reads back. The HTTP client pools connections by host and
/// port, so a pod's connections are never handed to a later pod at the same address: a
/// connection to a pod that vanished without closing it (its node lost, its network torn
/// down first) would otherwise carry the new pod's first request into a reset, a 502 for a
/// request no app ever saw.
pub fn pod_host(target: &PodTarget) -> String {
    let hex = match target.addr.ip() {
        IpAddr::V4(ip) => format!("{:08x}", u32::from(ip)),
        IpAddr::V6(ip) => format!("{:032x}", u128::from(ip)),
    };
    format!("pod-{hex}-{}", target.instance)
}

/// The address in a host name of [`pod_host`] (None: not one).
pub fn parse_pod_host(host: &str) -> Option<IpAddr> {
    let mut parts = host.strip_prefix("pod-")?.split('-');
    let (hex, instance) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || instance.parse::<u64>().is_err() {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|n| IpAddr::from(n.to_be_bytes())),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|n| IpAddr::from(n.to_be_bytes())),
        _ => None,
    }
}

/// The next [`Pod::instance`], over every app: a pod of a new app at an address an old app's
/// pod had is a new instance too.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// What a waiting request is told.
#[derive(Debug)]
pub enum Assignment {
    /// Forward to this pod.
    Pod(PodTarget),
    /// Its deadline passed.
    Expired,
    /// The route went away, or the activator stops.
    Gone,
}

struct Waiter {
    tx: oneshot::Sender<Assignment>,
}

/// One app.
pub struct App {
    /// Its route.
    pub route: Route,
    /// Held requests.
    pub queue: Queue,
    /// Pods by address.
    pub pods: BTreeMap<IpAddr, Pod>,
    waiters: HashMap<Id, Waiter>,
    /// Requests forwarded and not ended.
    pub in_flight: u32,
    /// When it last saw a request (ms).
    pub last_request: u64,
    /// Requests per slot of a pod that may wait in the pod's own queue (see [`Pod::limit`]).
    pub backlog: Backlog,
}

/// A request handed to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched {
    /// The request.
    pub id: Id,
    /// The pod.
    pub pod: IpAddr,
    /// When it arrived (ms).
    pub arrived: u64,
}

impl App {
    /// A new app with no pods yet; `backlog` as in [`Pod::limit`].
    pub fn new(route: Route, backlog: Backlog) -> App {
        App {
            queue: Queue::new(route.hold),
            route,
            pods: BTreeMap::new(),
            waiters: HashMap::new(),
            in_flight: 0,
            last_request: 0,
            backlog,
        }
    }

    /// Holds request `id` (body of `bytes`) until a pod is free; the receiver of its
    /// assignment.
    pub fn hold(
        &mut self,
        id: Id,
        bytes: u64,
        now: u64,
    ) -> Result<oneshot::Receiver<Assignment>, Reject> {
        self.queue.admit(id, bytes, now)?;
        self.last_request = now;
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, Waiter { tx });
        Ok(rx)
    }

    /// Holds again, at the head, a request that could not be delivered.
    pub fn hold_again(
        &mut self,
        id: Id,
        bytes: u64,
        arrived: u64,
    ) -> oneshot::Receiver<Assignment> {
        self.queue.readmit_front(id, bytes, arrived);
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, Waiter { tx });
        rx
    }

    /// Forgets a waiting request whose client went away.
    pub fn abandon(&mut self, id: Id) {
        self.queue.remove(id);
        self.waiters.remove(&id);
    }

    /// Hands held requests to pods (the pure decision of [`Queue::assign`] over the pods'
    /// free slots) and tells their waiters; what was dispatched.
    pub fn dispatch(&mut self, now: u64) -> Vec<Dispatched> {
        let ips: Vec<IpAddr> = self.pods.keys().copied().collect();
        let slots_per_pod = self.route.slots_per_pod;
        let mut slots: Vec<Slot> = ips
            .iter()
            .map(|ip| Slot {
                free: self.pods[ip].free(slots_per_pod, self.backlog, now),
            })
            .collect();
        let mut out = Vec::new();
        for (id, idx, arrived) in self.queue.assign(&mut slots) {
            let ip = ips[idx];
            let pod = self
                .pods
                .get_mut(&ip)
                .expect("an index of the pods just listed");
            let Some(w) = self.waiters.remove(&id) else {
                continue;
            };
            let target = PodTarget {
                addr: SocketAddr::new(ip, pod.http_port),
                instance: pod.instance,
            };
            if w.tx.send(Assignment::Pod(target)).is_ok() {
                pod.in_flight += 1;
                self.in_flight += 1;
                out.push(Dispatched {
                    id,
                    pod: ip,
                    arrived,
                });
            }
        }
        out
    }

    /// Tells the waiters whose deadline passed; their ids.
    pub fn expire(&mut self, now: u64) -> Vec<Id> {
        let ids = self.queue.expire(now);
        for id in &ids {
            if let Some(w) = self.waiters.remove(id) {
                let _ = w.tx.send(Assignment::Expired);
            }
        }
        ids
    }

    /// A forwarded request to `pod` ended.
    pub fn finished(&mut self, pod: IpAddr) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(p) = self.pods.get_mut(&pod) {
            p.in_flight = p.in_flight.saturating_sub(1);
            if p.gone && p.in_flight == 0 {
                self.pods.remove(&pod);
            }
        }
    }

    /// A connection to `pod` was refused: no request goes there for `pause_ms`.
    pub fn unreachable(&mut self, pod: IpAddr, now: u64, pause_ms: u64) {
        if let Some(p) = self.pods.get_mut(&pod) {
            p.unreachable_until = now + pause_ms;
            p.probed_ready = false;
        }
    }

    /// Replaces the pods with those of the EndpointSlices: (address, HTTP port, ready,
    /// terminating). What the activator learnt of a pod that stays is kept.
    pub fn set_endpoints(&mut self, endpoints: &[(IpAddr, u16, bool, bool)]) {
        for p in self.pods.values_mut() {
            p.gone = true;
        }
        for &(ip, port, ready, terminating) in endpoints {
            let p = self.pods.entry(ip).or_insert_with(|| Pod {
                instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
                ..Pod::default()
            });
            p.gone = false;
            p.http_port = port;
            p.ready = ready;
            p.terminating = terminating;
            if ready {
                p.probed_ready = false;
            }
        }
        self.pods.retain(|_, p| !p.gone || p.in_flight > 0);
    }

    /// The pods whose `/readyz` to probe now, each marked as probed: while requests wait,
    /// those in the slices that are neither ready there nor probed ready, not terminating and
    /// not already probed by a probe on its way.
    pub fn start_probes(&mut self) -> Vec<IpAddr> {
        if self.queue.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (ip, p) in &mut self.pods {
            if p.awaits_readiness() && !p.probing {
                p.probing = true;
                out.push(*ip);
            }
        }
        out
    }

    /// Whether the probe of `pod` goes on after a `/readyz` that was not 200: while requests
    /// wait and the pod is still one [`App::start_probes`] would pick. When not, its probe
    /// ends (a later [`App::start_probes`] may start another).
    pub fn keep_probing(&mut self, pod: IpAddr) -> bool {
        let waiting = !self.queue.is_empty();
        match self.pods.get_mut(&pod) {
            Some(p) => {
                let go_on = waiting && p.awaits_readiness();
                p.probing = go_on;
                go_on
            }
            None => false,
        }
    }

    /// The probe of `pod` got 200 from its `/readyz`: it takes requests before the slices
    /// say it is ready.
    pub fn probed_ready(&mut self, pod: IpAddr) {
        if let Some(p) = self.pods.get_mut(&pod) {
            p.probing = false;
            p.probed_ready = true;
            p.unreachable_until = 0;
        }
    }

    /// Every waiter is told its route is gone.
    pub fn close(&mut self) {
        for (_, w) in self.waiters.drain() {
            let _ = w.tx.send(Assignment::Gone);
        }
        while !self.queue.expire(u64::MAX).is_empty() {}
    }
}

#[cfg(test)]
mod tests {
    use wsgiscale_core::activator::HoldLimits;

    use super::*;

    fn route(slots: u32) -> Route {
        Route {
            namespace: "ns".into(),
            app: "web".into(),
            port: 20000,
            pods_service: "web-pods".into(),
            http_port_name: "http".into(),
            admin_port: 9191,
            slots_per_pod: slots,
            hold: HoldLimits {
                max_requests: 10,
                max_bytes: 1000,
                max_wait_ms: 100,
            },
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, n])
    }

    /// A `/load` of a pod with `workers` of 1 thread, `rps` completed a second over 10 s at
    /// `utilization`.
    fn load_of(workers: u32, rps: f64, utilization: f64) -> LoadReport {
        let w = serde_json::json!({"requests_per_second": rps, "utilization": utilization, "concurrency": 0.0});
        serde_json::from_value(serde_json::json!({
            "version": 1, "time_unix_ms": 0,
            "workers": {"min": 1, "max": workers, "total": workers, "busy": 0, "idle": workers, "starting": 0, "retiring": 0, "threads": 1},
            "queue": {"depth": 0, "oldest_wait_ms": 0, "max": 100},
            "in_flight": 0,
            "rates": {"1s": w, "10s": w, "60s": w},
            "saturated": false, "draining": false,
        }))
        .expect("a load report")
    }

    #[test]
    fn the_backlog_parses_from_auto_or_a_number() {
        assert_eq!("auto".parse::<Backlog>(), Ok(Backlog::Auto));
        assert_eq!("0".parse::<Backlog>(), Ok(Backlog::Fixed(0)));
        assert_eq!("16".parse::<Backlog>(), Ok(Backlog::Fixed(16)));
        for bad in ["17", "-1", "", "Auto", "1.5"] {
            let e = bad.parse::<Backlog>().expect_err(bad);
            assert!(e.contains("auto") && e.contains("16"), "{e}");
        }
        assert_eq!(Backlog::Auto.to_string(), "auto");
        assert_eq!(Backlog::Fixed(3).to_string(), "3");
    }

    #[test]
    fn the_service_time_is_busy_thread_time_per_request() {
        // 2 slots, 80% busy, 20,000 a second: 0.08 ms each.
        let s = service_ms(&load_of(2, 20_000.0, 0.8)).expect("known");
        assert!((s - 0.08).abs() < 1e-9, "{s}");
        // 4 slots half busy at 40 a second: 50 ms each.
        let s = service_ms(&load_of(4, 40.0, 0.5)).expect("known");
        assert!((s - 50.0).abs() < 1e-9, "{s}");
        assert_eq!(service_ms(&load_of(4, 0.5, 0.5)), None, "too few to tell");
        assert_eq!(service_ms(&load_of(4, 10.0, 0.0)), None);
        let mut odd = load_of(4, 10.0, 0.5);
        odd.rates.s10.utilization = f64::NAN;
        assert_eq!(service_ms(&odd), None);
    }

    #[test]
    fn auto_covers_the_hop_for_fast_requests_and_keeps_one_for_slow_ones() {
        // Unknown: one per slot.
        assert_eq!(covering_backlog(None, Some(0.1)), 1);
        assert_eq!(covering_backlog(Some(0.3), None), 1);
        // A 0.3 ms hop, 0.08 ms requests: 4 cover it.
        assert_eq!(covering_backlog(Some(0.3), Some(0.08)), 4);
        // Requests far slower than the hop: 1.
        assert_eq!(covering_backlog(Some(0.3), Some(50.0)), 1);
        // Far faster: capped.
        assert_eq!(covering_backlog(Some(2.0), Some(0.001)), AUTO_MAX);
        assert_eq!(covering_backlog(Some(f64::INFINITY), Some(0.1)), 1);

        let mut pod = Pod {
            ready: true,
            ..Pod::default()
        };
        assert_eq!(pod.backlog(Backlog::Auto), 1, "nothing measured yet");
        pod.observe_hop(0.4);
        pod.observe_hop(0.2);
        assert!((pod.hop_ms.expect("hop") - 0.35).abs() < 1e-9);
        pod.load = Some(load_of(2, 20_000.0, 0.8));
        assert_eq!(pod.backlog(Backlog::Auto), 5, "ceil(0.35 / 0.08)");
        assert_eq!(pod.limit(2, Backlog::Auto), 12);
        assert_eq!(
            pod.backlog(Backlog::Fixed(2)),
            2,
            "a fixed rule ignores the figures"
        );
        pod.load = Some(load_of(2, 40.0, 1.0));
        assert_eq!(pod.limit(2, Backlog::Auto), 4, "50 ms requests: one each");
    }

    proptest::proptest! {
        #[test]
        fn auto_stays_within_bounds_and_follows_the_ratio(
            hop in 0.0f64..100.0,
            service in 0.0001f64..1000.0,
            more in 0.0f64..10.0,
        ) {
            let b = covering_backlog(Some(hop), Some(service));
            proptest::prop_assert!((1..=AUTO_MAX).contains(&b));
            // A longer hop never lowers it, a slower request never raises it.
            proptest::prop_assert!(covering_backlog(Some(hop + more), Some(service)) >= b);
            proptest::prop_assert!(covering_backlog(Some(hop), Some(service + more)) <= b);
            // Below the cap, the backlog's service time covers the hop.
            if b < AUTO_MAX {
                proptest::prop_assert!(f64::from(b) * service >= hop - 1e-9);
            }
        }
    }

    #[test]
    fn a_backlog_lets_a_pod_queue_one_more_per_slot_and_new_pods_still_come_first() {
        let mut app = App::new(route(2), Backlog::Fixed(1));
        app.set_endpoints(&[(ip(2), 8000, true, false)]);
        let mut rx = Vec::new();
        for id in 0..6 {
            rx.push(app.hold(id, 0, 0).expect("held"));
        }
        // Two slots, one more each in the pod's own queue: four out, two held.
        assert_eq!(app.dispatch(0).len(), 4);
        assert_eq!(app.queue.len(), 2);
        // A second pod comes: it has all four of its places free, so the held go there.
        app.set_endpoints(&[(ip(2), 8000, true, false), (ip(3), 8000, true, false)]);
        let out = app.dispatch(0);
        assert_eq!(
            out.iter().map(|d| d.pod).collect::<Vec<_>>(),
            [ip(3), ip(3)]
        );
        assert_eq!(app.pods[&ip(2)].free(2, Backlog::Fixed(1), 0), 0);
        assert_eq!(app.pods[&ip(3)].free(2, Backlog::Fixed(1), 0), 2);
        // Without a backlog, a pod gets only what it runs.
        assert_eq!(app.pods[&ip(3)].limit(2, Backlog::Fixed(0)), 2);
    }

    #[test]
    fn a_pod_is_probed_once_at_a_time_while_requests_wait_and_until_it_is_ready() {
        let mut app = App::new(route(2), Backlog::Fixed(0));
        app.set_endpoints(&[
            (ip(2), 8000, false, false),
            (ip(3), 8000, true, false),
            (ip(4), 8000, false, true),
        ]);
        assert!(app.start_probes().is_empty(), "nothing waits: no probe");
        let _r = app.hold(1, 10, 0).expect("held");
        // Only the pod that is neither ready nor terminating, and only once.
        assert_eq!(app.start_probes(), vec![ip(2)]);
        assert!(app.start_probes().is_empty(), "its probe is on its way");
        assert!(app.keep_probing(ip(2)), "still not ready, a request waits");
        assert!(app.start_probes().is_empty());
        // The slices say ready: the probe ends, and no new one starts.
        app.set_endpoints(&[(ip(2), 8000, true, false), (ip(3), 8000, true, false)]);
        assert!(!app.keep_probing(ip(2)));
        assert!(!app.keep_probing(ip(4)), "gone from the slices");
        assert!(app.start_probes().is_empty());
        // A new unready pod; its probe finds it ready: usable at once.
        app.set_endpoints(&[(ip(5), 8000, false, false)]);
        assert_eq!(app.start_probes(), vec![ip(5)]);
        app.unreachable(ip(5), 0, 100);
        app.probed_ready(ip(5));
        assert!(app.pods[&ip(5)].usable(0) && !app.pods[&ip(5)].probing);
        assert!(!app.keep_probing(ip(5)) && app.start_probes().is_empty());
        // Nothing waits any more: a probe on its way stops after its answer.
        app.set_endpoints(&[(ip(6), 8000, false, false)]);
        assert_eq!(app.start_probes(), vec![ip(6)]);
        app.close();
        assert!(!app.keep_probing(ip(6)));
        assert!(
            !app.pods[&ip(6)].probing,
            "a later start_probes may start another"
        );
    }

    #[tokio::test]
    async fn requests_wait_for_a_ready_pod_and_go_to_the_freest() {
        let mut app = App::new(route(2), Backlog::Fixed(0));
        let mut r1 = app.hold(1, 10, 0).expect("held");
        let _r2 = app.hold(2, 10, 0).expect("held");
        assert!(app.dispatch(1).is_empty(), "no pod yet");
        app.set_endpoints(&[(ip(2), 8000, false, false), (ip(3), 8000, true, false)]);
        let d = app.dispatch(2);
        assert_eq!(
            d.iter().map(|x| x.pod).collect::<Vec<_>>(),
            vec![ip(3), ip(3)]
        );
        assert!(
            matches!(r1.try_recv(), Ok(Assignment::Pod(a)) if a.addr == SocketAddr::new(ip(3), 8000))
        );
        // A third waits: the only ready pod is full until one ends.
        let mut r3 = app.hold(3, 0, 3).expect("held");
        assert!(app.dispatch(3).is_empty());
        // The activator's own probe finds the other pod ready first.
        app.pods.get_mut(&ip(2)).expect("pod").probed_ready = true;
        assert_eq!(app.dispatch(4)[0].pod, ip(2));
        assert!(matches!(r3.try_recv(), Ok(Assignment::Pod(_))));
        app.finished(ip(3));
        assert_eq!(app.pods[&ip(3)].in_flight, 1);
    }

    #[tokio::test]
    async fn deadlines_and_refusals() {
        let mut app = App::new(route(1), Backlog::Fixed(0));
        let mut r = app.hold(7, 0, 0).expect("held");
        assert_eq!(app.expire(100), vec![7]);
        assert!(matches!(r.try_recv(), Ok(Assignment::Expired)));
        app.set_endpoints(&[(ip(2), 8000, true, false)]);
        app.unreachable(ip(2), 10, 1000);
        let _r = app.hold(8, 0, 10).expect("held");
        assert!(
            app.dispatch(20).is_empty(),
            "a pod that refused waits out its pause"
        );
        assert_eq!(app.dispatch(1010).len(), 1);
    }

    #[test]
    fn a_pod_that_comes_back_to_an_address_is_a_new_instance_with_a_host_of_its_own() {
        let mut app = App::new(route(4), Backlog::Fixed(0));
        app.set_endpoints(&[(ip(2), 8000, true, false)]);
        let first = app.pods[&ip(2)].instance;
        app.set_endpoints(&[(ip(2), 8000, true, false)]);
        assert_eq!(
            app.pods[&ip(2)].instance,
            first,
            "the same pod while it stays"
        );
        app.set_endpoints(&[]);
        app.set_endpoints(&[(ip(2), 8000, true, false)]);
        let second = app.pods[&ip(2)].instance;
        assert_ne!(second, first, "a new pod at the address");
        // Another app's pod at that address is another instance too.
        let mut other = App::new(route(4), Backlog::Fixed(0));
        other.set_endpoints(&[(ip(2), 8000, true, false)]);
        assert!(![first, second].contains(&other.pods[&ip(2)].instance));

        let target = |instance| PodTarget {
            addr: SocketAddr::new(ip(2), 8000),
            instance,
        };
        assert_ne!(pod_host(&target(first)), pod_host(&target(second)));
        for addr in [ip(2), "fd00::7:1".parse().expect("v6")] {
            let t = PodTarget {
                addr: SocketAddr::new(addr, 8000),
                instance: 42,
            };
            let host = pod_host(&t);
            assert_eq!(parse_pod_host(&host), Some(addr), "{host}");
            let uri: http::Uri = format!("http://{host}:8000/x").parse().expect("a URI");
            assert_eq!(uri.host(), Some(host.as_str()));
        }
        for not in [
            "example.com",
            "pod-zz-1",
            "pod-0a000001",
            "pod-0a000001-x",
            "pod-0a000001-1-2",
            "pod-0a0001-1",
        ] {
            assert_eq!(parse_pod_host(not), None, "{not}");
        }
    }

    #[test]
    fn pods_that_go_keep_their_requests_until_they_end() {
        let mut app = App::new(route(4), Backlog::Fixed(0));
        app.set_endpoints(&[(ip(2), 8000, true, false)]);
        app.pods.get_mut(&ip(2)).expect("pod").in_flight = 1;
        app.set_endpoints(&[]);
        assert!(app.pods[&ip(2)].gone);
        assert_eq!(app.pods[&ip(2)].free(4, Backlog::Fixed(0), 0), 0);
        app.finished(ip(2));
        assert!(app.pods.is_empty());
        // A draining server takes nothing new.
        app.set_endpoints(&[(ip(3), 8000, true, false)]);
        let mut load: LoadReport = serde_json::from_value(serde_json::json!({
            "version": 1, "time_unix_ms": 0,
            "workers": {"min": 1, "max": 3, "total": 1, "busy": 0, "idle": 1, "starting": 0, "retiring": 0, "threads": 2},
            "queue": {"depth": 0, "oldest_wait_ms": 0, "max": 100},
            "in_flight": 0,
            "rates": {"1s": {"requests_per_second": 0.0, "utilization": 0.0, "concurrency": 0.0},
                      "10s": {"requests_per_second": 0.0, "utilization": 0.0, "concurrency": 0.0},
                      "60s": {"requests_per_second": 0.0, "utilization": 0.0, "concurrency": 0.0}},
            "saturated": false, "draining": false,
        }))
        .expect("a load report");
        app.pods.get_mut(&ip(3)).expect("pod").load = Some(load.clone());
        assert_eq!(
            app.pods[&ip(3)].free(4, Backlog::Fixed(0), 0),
            6,
            "MAX workers x threads from /load"
        );
        load.draining = true;
        app.pods.get_mut(&ip(3)).expect("pod").load = Some(load);
        assert_eq!(app.pods[&ip(3)].free(4, Backlog::Fixed(0), 0), 0);
    }
}

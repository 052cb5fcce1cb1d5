//! Pod autoscaling, the pure decision: a window of load samples, the policy and the
//! autoscaler's state in, the desired replica count, the reason in words and numbers and the
//! new state out. No clock, no client, no randomness: the caller scrapes ([`crate::scrape`]),
//! builds a [`TickSample`] with [`compute_tick`], pushes it into [`Samples`], and calls
//! [`decide`]. The simulator ([`crate::simulate`]) calls the very same functions.
//!
//! The policy, in short (docs/autoscaling.md has the reasoning and a worked example):
//!
//! * **Demand** is the requests in the servers, running plus queued (concurrency), summed over
//!   the ready pods (extrapolated from a sample above `max_pods_scraped`). A saturated
//!   pod's queue, and the activator's, count by their [`QueueTrend`]: while one grows, what
//!   arrives (arrivals x service time) and the threads that would clear the backlog within
//!   the panic window, since a growing queue counted as requests in flight asked for
//!   replicas.max whenever one pod saturated; while it stays (a closed loop of clients), in
//!   full up to what the pods run.
//! * **Capacity** of a pod is `workers.max x threads x target utilization`: the worker level
//!   inside each pod (uWSGI "cheaper") grows and shrinks its workers between workers.min and
//!   workers.max by itself, so the pod level sizes for what a pod carries at its max workers,
//!   and a pod with few busy workers below its max is not "full".
//! * **Desired pods** = ceil(demand / capacity), from the stable window (60 s), or from the
//!   panic window (6 s) in panic mode. Panic starts when the panic window needs at least
//!   `panic_threshold x ready pods`; it never scales down, and ends a panic window after the
//!   last tick above the threshold once the stable window asks for as many pods as the panic
//!   window (it has taken the burst in), at the latest a full stable window after it.
//! * **Scaling up** follows the stable window, or where its trend ends when that is above
//!   the mean by twice the tolerance (capped by the panic window: a ramp, which the mean lags by
//!   half a window), or the panic window while a burst is on;
//!   changes of at most `tolerance` x the current pods are ignored (one pod always counts);
//!   pods that did not answer count as idle (the HPA's rule).
//! * **Scaling down** needs the demand of both windows and of the stable window's trend
//!   (least squares, at its end), with silent pods counted as fully loaded, to fit the
//!   remaining pods below the target utilization (less the tolerance) at
//!   their max workers, no pod saturated (at workers.max and queueing), the load not rising
//!   (the panic window not above the stable one by more than the tolerance), no panic, and the
//!   lower count recommended for the whole scale-down delay.
//! * Rate limits per decision, then [min, max].

pub mod sample;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

pub use sample::{
    compute_pod_demand, compute_tick, compute_weight, held_arrivals, pick_sample, PodLoad,
    PodSample, QueueTrend, Samples, SplitMix64, TickSample, WindowAverage,
};

use crate::validate::ValidatedApp;

/// How long a new pod weighs less in the extrapolation of a sample, unless the policy says
/// otherwise: about the time a Python server takes to import its app and grow its workers.
pub const DEFAULT_STARTUP_PERIOD: Duration = Duration::from_secs(30);

/// The autoscaling policy with every default resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Fewest pods.
    pub min_replicas: u32,
    /// Most pods.
    pub max_replicas: u32,
    /// Requests one pod runs at once at its max workers: workers.max x threads.
    pub pod_capacity: f64,
    /// Busy share of the threads at workers.max aimed for, 0 to 1 (0.7).
    pub target_utilization: f64,
    /// Window of normal decisions (60 s).
    pub stable_window: Duration,
    /// Window of burst detection (6 s).
    pub panic_window: Duration,
    /// Panic when the panic window needs this many times the ready pods (2.0).
    pub panic_threshold: f64,
    /// Most growth per decision, as a multiple of the ready pods (1000).
    pub max_scale_up_rate: f64,
    /// Most shrink per decision, as a divisor of the ready pods (2).
    pub max_scale_down_rate: f64,
    /// A lower count must be recommended for this long before it is applied (0).
    pub scale_down_delay: Duration,
    /// Relative changes of demand within this share of the current capacity are ignored (0.1).
    pub tolerance: f64,
    /// Time between decisions (2 s).
    pub tick: Duration,
    /// Most pods scraped per tick (16).
    pub max_pods_scraped: u32,
    /// Pods younger than this weigh less when a sample is extrapolated.
    pub startup_period: Duration,
}

impl Policy {
    /// The policy of a validated WsgiApp.
    pub fn from_app(app: &ValidatedApp) -> Self {
        let a = &app.autoscaling;
        let r = &app.replicas;
        let min = u32::try_from(r.min).unwrap_or(0);
        // Validation makes replicas.max required when autoscaling is on; 10000 is the CRD's
        // bound otherwise.
        let max = r
            .max
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(10_000)
            .max(min);
        Policy {
            min_replicas: min,
            max_replicas: max,
            pod_capacity: f64::from(app.workers.max.max(1)) * f64::from(app.workers.threads.max(1)),
            target_utilization: f64::from(a.target_utilization_percent) / 100.0,
            stable_window: a.stable_window,
            panic_window: a.panic_window,
            panic_threshold: f64::from(a.panic_threshold_percent) / 100.0,
            max_scale_up_rate: f64::from(a.max_scale_up_rate),
            max_scale_down_rate: f64::from(a.max_scale_down_rate),
            scale_down_delay: a.scale_down_delay,
            tolerance: f64::from(a.tolerance_percent) / 100.0,
            tick: a.tick,
            max_pods_scraped: a.max_pods_scraped,
            startup_period: DEFAULT_STARTUP_PERIOD,
        }
    }

    /// Requests one pod should carry: `pod_capacity x target_utilization`.
    pub fn target_per_pod(&self) -> f64 {
        (self.pod_capacity * self.target_utilization).max(f64::MIN_POSITIVE)
    }

    /// `n` within [min, max].
    pub fn clamp(&self, n: u32) -> u32 {
        n.clamp(self.min_replicas, self.max_replicas.max(self.min_replicas))
    }
}

/// What the autoscaler remembers between decisions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// The replica count in force (the Deployment's).
    pub current: u32,
    /// When panic mode started, while in it.
    pub panic_since: Option<Duration>,
    /// The last tick whose panic window was above the threshold, while in panic mode.
    pub panic_last_over: Option<Duration>,
    /// When the count last changed.
    pub last_scale_time: Option<Duration>,
    /// Why it last changed.
    pub last_scale_reason: Option<String>,
    /// Recent recommendations, for the scale-down delay (oldest first).
    pub recommendations: VecDeque<(Duration, u32)>,
    /// Whether the last pod may go now (set by the driver before each decision: scale to
    /// zero is on, the activator is in the path and the app has been idle for its idle
    /// period, [`crate::activation::may_scale_to_zero`]). Without it a decision for 0 pods
    /// keeps 1.
    pub zero_allowed: bool,
}

impl State {
    /// A fresh state with `current` replicas.
    pub fn new(current: u32) -> Self {
        State {
            current,
            ..State::default()
        }
    }

    /// True in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic_since.is_some()
    }
}

/// Which way a decision went; bounded, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// No change.
    Hold,
    /// More pods.
    ScaleUp,
    /// Fewer pods.
    ScaleDown,
}

impl Action {
    /// A fixed label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Hold => "hold",
            Action::ScaleUp => "scale_up",
            Action::ScaleDown => "scale_down",
        }
    }
}

/// The numbers behind a decision, for the status and the log.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Figures {
    /// Demand over the stable window, silent pods idle.
    pub stable_demand: f64,
    /// Demand over the panic window, silent pods idle.
    pub panic_demand: f64,
    /// The largest of both windows' demand and the stable window's trend, silent pods fully
    /// loaded (what scale-down checks).
    pub down_demand: f64,
    /// Requests one pod should carry.
    pub target_per_pod: f64,
    /// Pods the stable window needs.
    pub stable_pods: u32,
    /// Pods the panic window needs.
    pub panic_pods: u32,
    /// Running requests over live threads over the stable window, 0 to 1.
    pub utilization: f64,
}

/// The outcome of one [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Pods wanted, within [min, max].
    pub desired: u32,
    /// Which way.
    pub action: Action,
    /// Why, in words and numbers, e.g. `demand 37.0 in flight over 60 s, capacity 2.8/pod ->
    /// 14 pods`.
    pub reason: String,
    /// In panic mode after this decision.
    pub panic: bool,
    /// The numbers behind it.
    pub figures: Figures,
    /// The state to keep for the next decision (`current` is `desired`).
    pub state: State,
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

fn pods_for(demand: f64, per_pod: f64) -> u32 {
    let n = (demand / per_pod - 1e-9).ceil();
    if n.is_finite() && n > 0.0 {
        n.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// One decision at `now` (the time of the newest tick) from the ticks in `samples`.
///
/// Pure: the same inputs give the same outputs. See the module docs for the policy.
pub fn decide(policy: &Policy, samples: &Samples, state: &State, now: Duration) -> Decision {
    let mut st = state.clone();
    let current = st.current;
    let per_pod = policy.target_per_pod();
    let Some(latest) = samples.latest() else {
        return hold_or_bounds(
            policy,
            st,
            "no load samples yet".into(),
            Figures::default(),
            now,
        );
    };
    let ready = latest.ready_pods;
    let stable = samples.average(now, policy.stable_window);
    let mut panic = samples.average(now, policy.panic_window);
    let waiting = latest.held > 0 || latest.saturated_pods > 0;
    if waiting {
        // Requests are waiting for capacity (held by the activator, or queued in a pod at
        // workers.max): the newest tick's demand is a measured arrival rate, not noise to
        // average away, and the short window takes it at once rather than over its ticks.
        panic.demand_up = panic.demand_up.max(latest.demand_up);
    }
    // Scale-down looks at the highest of: the stable window, the panic window, and where the
    // stable window's trend is now (on a ramp the mean lags by half a window).
    let down_demand = stable
        .demand_down
        .max(panic.demand_down)
        .max(stable.trend_down);
    let fig = Figures {
        stable_demand: stable.demand_up,
        panic_demand: panic.demand_up,
        down_demand,
        target_per_pod: per_pod,
        stable_pods: pods_for(stable.demand_up, per_pod),
        panic_pods: pods_for(panic.demand_up, per_pod),
        utilization: stable.utilization,
    };
    if ready == 0 && latest.held > 0 {
        // Scale from zero (or while the first pods start): the held requests are the demand,
        // at once, without waiting for a window.
        let raw = current
            .max(pods_for(f64::from(latest.held), per_pod))
            .max(1);
        let why = format!(
            "{} requests held by the activator and no ready pod -> {raw} pods",
            latest.held
        );
        let panicking = st.in_panic();
        return finish(policy, st, raw, why, panicking, fig, now);
    }
    if ready == 0 || latest.answered == 0 {
        let why = if ready == 0 {
            "no ready pod to measure"
        } else {
            "no pod answered"
        };
        return hold_or_bounds(policy, st, why.into(), fig, now);
    }

    // Panic mode (Knative): enter when the short window needs threshold x the ready pods,
    // stay while it does. Leave once a whole panic window has passed below it and the stable
    // window asks for at least what the panic window does (its mean has taken the burst in,
    // so normal decisions, with their scale-down delay, keep what the load still needs), or
    // at the latest after a full stable window below it (Knative's rule, which alone held
    // every burst's count for a minute after it ended).
    // Compared unrounded: with one pod, ceil() would call any second above target a burst.
    let over = panic.demand_up / per_pod >= policy.panic_threshold * f64::from(ready);
    let calm_for = st.panic_last_over.map(|last| now.saturating_sub(last));
    if over {
        st.panic_since.get_or_insert(now);
        st.panic_last_over = Some(now);
    } else if calm_for.is_some_and(|calm| {
        calm >= policy.stable_window
            || (calm >= policy.panic_window && fig.stable_pods >= fig.panic_pods)
    }) {
        st.panic_since = None;
        st.panic_last_over = None;
    }
    let panicking = st.in_panic();

    // After a (re)start the stable window holds few ticks and its average is noise: normal
    // decisions wait for half a window of history; a burst still panics.
    let history = policy.tick.mul_f64(f64::from(stable.ticks));
    if !over && !panicking && history < policy.stable_window / 2 {
        let why = format!(
            "warming up: {} of load history, normal decisions after {}",
            secs(history),
            secs(policy.stable_window / 2)
        );
        return finish(policy, st, current, why, false, fig, now);
    }

    // The short window raises the count only while the burst is on; during the rest of panic
    // mode the stable window does, and nothing lowers it.
    // On a ramp the stable mean lags by half a window: scale up to where its trend ends
    // now, as scale-down already looks there, capped by what the panic window measured (a
    // line through noise must not run ahead of the load).
    // The trend counts only when it ends above the mean by twice the tolerance (a load
    // rising by half over the window): through a flat load with noise the line's end wanders
    // around the mean by several per cent, and followed with no margin (or one tolerance) it
    // added back the pod a low stretch of noise had just removed (flaps the property test
    // found: 9 in 20,000 cases with no margin, 2 with one tolerance, none in 200,000 with
    // two). A steeper ramp is followed where its trend ends; a gentler one by the mean.
    let ramp_demand = stable.trend_up.min(panic.demand_up);
    let rising = stable.trend_up > stable.demand_up * (1.0 + 2.0 * policy.tolerance);
    let ramp_pods = if rising {
        pods_for(ramp_demand, per_pod)
    } else {
        0
    };
    let up_wanted = if over {
        fig.stable_pods.max(fig.panic_pods)
    } else {
        fig.stable_pods.max(ramp_pods)
    };
    // Hysteresis: pods go only while the remaining ones stay below the target by the
    // tolerance too, so a load near a boundary does not add a pod and take it back.
    let down_pods = pods_for(down_demand * (1.0 + policy.tolerance), per_pod);
    let mut why = String::new();
    let mut raw = current;
    let stable_text = |pods: u32| {
        format!(
            "demand {:.1} in flight over {}, capacity {:.1}/pod -> {} pods",
            stable.demand_up,
            secs(policy.stable_window),
            per_pod,
            pods
        )
    };
    // The tolerance is on the pod count (the CRD's tolerancePercent): a change of at most
    // that share of the current pods is ignored (always allowed: a change of one pod).
    let beyond = |n: u32| {
        f64::from(n.abs_diff(current)) > (policy.tolerance * f64::from(current)).max(0.999)
    };
    if up_wanted > current && (over || beyond(up_wanted)) {
        raw = up_wanted;
        if over {
            let _ = write!(
                why,
                "panic: demand {:.1} in flight over {} needs {} pods >= {:.1} x {} ready; capacity {:.1}/pod -> {} pods",
                panic.demand_up.max(stable.demand_up),
                secs(policy.panic_window),
                fig.panic_pods,
                policy.panic_threshold,
                ready,
                per_pod,
                raw
            );
            // What the demand is made of, when requests wait for capacity.
            if latest.held > 0 {
                let _ = write!(
                    why,
                    "; {} held at the activator, joining at {:.0}/s",
                    latest.held, latest.held_arrivals
                );
            }
            if latest.saturated_pods > 0 {
                let _ = write!(why, "; {} pods saturated", latest.saturated_pods);
            }
            if latest.service > 0.0 && waiting {
                let _ = write!(
                    why,
                    "; {:.0} ms of a thread per request",
                    latest.service * 1000.0
                );
            }
        } else if raw > fig.stable_pods {
            why = format!(
                "demand rising: {:.1} in flight where the {} trend ends (the last {} say {:.1}; the mean {:.1}), capacity {:.1}/pod -> {} pods",
                ramp_demand,
                secs(policy.stable_window),
                secs(policy.panic_window),
                panic.demand_up,
                stable.demand_up,
                per_pod,
                raw
            );
        } else {
            why = stable_text(raw);
        }
    } else if down_pods < current {
        let base = format!(
            "demand {:.1} in flight over {} (silent pods counted full), capacity {:.1}/pod with {:.0}% headroom -> {} pods",
            down_demand,
            secs(policy.stable_window),
            per_pod,
            policy.tolerance * 100.0,
            down_pods
        );
        if panicking {
            let _ = write!(why, "{base}; held at {current}: panic mode");
        } else if latest.saturated_pods > 0 {
            let _ = write!(
                why,
                "{base}; held at {current}: {} pods saturated (at workers.max and queueing)",
                latest.saturated_pods
            );
        } else if panic.demand_up > stable.demand_up * (1.0 + policy.tolerance) {
            let _ = write!(
                why,
                "{base}; held at {current}: load rising ({:.1} over {} against {:.1})",
                panic.demand_up,
                secs(policy.panic_window),
                stable.demand_up
            );
        } else if !beyond(down_pods) {
            let _ = write!(
                why,
                "{base}; held at {current}: within {:.0}% tolerance",
                policy.tolerance * 100.0
            );
        } else {
            raw = down_pods;
            why = base;
        }
    } else {
        why = stable_text(fig.stable_pods.max(down_pods.min(current)));
        if fig.stable_pods > current && !over {
            let _ = write!(
                why,
                "; held at {current}: within {:.0}% tolerance",
                policy.tolerance * 100.0
            );
        }
    }

    // The scale-down delay: the highest recommendation of the delay window wins (taken
    // before the rate limits, so a long way down is one wait, then the rate limit's steps). Never less
    // than half the stable window (HPA's scale-down stabilization): a mean that dips for a
    // moment under noise must not take a pod that its next rise adds back (the property
    // test found a -1, +1 flap at +-20% noise without it).
    // What is recorded is the count the demand asks for going down (`down_pods`), not the
    // decision: holds for other reasons (rising load, saturation) do not extend the wait.
    let delay = policy.scale_down_delay.max(policy.stable_window / 2);
    // The oldest recommendation kept is the newest one at or before the window's start, so
    // that the history shows it spans the delay (ticks need not fall on its start).
    st.recommendations.push_back((now, down_pods));
    while st
        .recommendations
        .get(1)
        .is_some_and(|(t, _)| t.saturating_add(delay) <= now)
    {
        st.recommendations.pop_front();
    }
    // A lower count must have been recommended for the whole delay: with a shorter history
    // (the autoscaler just started, or a new leader took over) the count in force is kept.
    let seen_for = st
        .recommendations
        .front()
        .map_or(Duration::ZERO, |(t, _)| now.saturating_sub(*t));
    let delayed = if seen_for < delay {
        current
    } else {
        st.recommendations
            .iter()
            .filter(|(t, _)| t.saturating_add(delay) >= now)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(raw)
    };
    if delayed > raw && raw < current {
        let _ = write!(
            why,
            "; held at {} by the {} scale-down delay",
            delayed.min(current),
            secs(delay)
        );
        if seen_for < delay {
            let _ = write!(why, " (recommendations seen for {})", secs(seen_for));
        }
        raw = delayed.min(current);
    }
    // Rate limits, relative to the ready pods (Knative).
    let base = f64::from(ready.max(1));
    let max_up = (base * policy.max_scale_up_rate)
        .ceil()
        .min(f64::from(u32::MAX)) as u32;
    let min_down = (f64::from(ready) / policy.max_scale_down_rate).floor() as u32;
    if raw > current && raw > max_up {
        raw = max_up.max(current);
        let _ = write!(
            why,
            "; limited to {raw} by maxScaleUpRate {}",
            policy.max_scale_up_rate
        );
    }
    if raw < current && raw < min_down {
        raw = min_down;
        let _ = write!(
            why,
            "; limited to {raw} by maxScaleDownRate {}",
            policy.max_scale_down_rate
        );
    }

    if panicking && raw < current {
        raw = current;
    }
    finish(policy, st, raw, why, panicking, fig, now)
}

fn hold_or_bounds(
    policy: &Policy,
    st: State,
    why: String,
    fig: Figures,
    now: Duration,
) -> Decision {
    // Without a measurement only the bounds move the count, and panic mode stays as it was.
    let panicking = st.in_panic();
    let current = st.current;
    finish(policy, st, current, why, panicking, fig, now)
}

fn finish(
    policy: &Policy,
    mut st: State,
    raw: u32,
    mut why: String,
    panic: bool,
    figures: Figures,
    now: Duration,
) -> Decision {
    let current = st.current;
    let mut desired = policy.clamp(raw);
    if desired != raw {
        let bound = if desired > raw {
            format!("replicas.min {}", policy.min_replicas)
        } else {
            format!("replicas.max {}", policy.max_replicas)
        };
        let _ = write!(why, "; {desired} by {bound}");
    }
    // The last pod goes only once the activator holds the path and the app has been idle
    // for its idle period (the driver says so in `zero_allowed`).
    if desired == 0 && current > 0 && st.zero_allowed {
        let _ = write!(
            why,
            "; idle for the scale-to-zero period with the activator in the path: to zero"
        );
    }
    if desired == 0 && current > 0 && !st.zero_allowed {
        desired = 1.min(policy.max_replicas);
        let _ = write!(
            why,
            "; {desired}: not yet idle behind the activator for the scale-to-zero period"
        );
    }
    let action = match desired.cmp(&current) {
        std::cmp::Ordering::Greater => Action::ScaleUp,
        std::cmp::Ordering::Less => Action::ScaleDown,
        std::cmp::Ordering::Equal => Action::Hold,
    };
    if action != Action::Hold {
        st.last_scale_time = Some(now);
        st.last_scale_reason = Some(why.clone());
    }
    st.current = desired;
    Decision {
        desired,
        action,
        reason: why,
        panic,
        figures,
        state: st,
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Fixtures for the autoscaler tests.

    use super::*;

    /// The defaults of the CRD with 4 single-threaded workers per pod and 1..50 pods.
    pub fn policy() -> Policy {
        Policy {
            min_replicas: 1,
            max_replicas: 50,
            pod_capacity: 4.0,
            target_utilization: 0.7,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_down_delay: Duration::ZERO,
            tolerance: 0.1,
            tick: Duration::from_secs(2),
            max_pods_scraped: 16,
            startup_period: DEFAULT_STARTUP_PERIOD,
        }
    }

    /// A tick at `at` seconds: `ready` pods all answering, `demand` requests in them.
    pub fn tick(at: u64, ready: u32, demand: f64) -> TickSample {
        TickSample {
            at: Duration::from_secs(at),
            ready_pods: ready,
            scraped: ready,
            answered: ready,
            demand_up: demand,
            demand_down: demand,
            in_flight: demand.min(f64::from(ready) * 4.0) as u32,
            threads: ready * 4,
            busy_workers: 0,
            total_workers: ready * 4,
            queue_depth: 0,
            saturated_pods: 0,
            held: 0,
            held_arrivals: 0.0,
            service: 0.0,
            completions: 0.0,
        }
    }
}

#[cfg(test)]
mod tests;

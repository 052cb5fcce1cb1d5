//! What a load run on the stand-in cluster comes to (pure): latency percentiles, failures,
//! cost in pod-seconds and worker-seconds, the time from a load step to the first new pod
//! ready, and scale events, from the load generator's records, the node's pod records and a
//! once-a-second sample of the deployment.

use wsgiscale_core::trace::Trace;

use crate::load::{Outcome, Record};
use crate::node::PodRecord;

/// One second of a run, as the harness sampled it.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds from the run's start.
    pub t: f64,
    /// The replicas asked for (the workload's `spec.replicas`).
    pub desired: i32,
    /// Pods Ready.
    pub ready: usize,
    /// Pods that exist on the node (starting, ready or stopping).
    pub pods: usize,
    /// Worker processes in all pods.
    pub workers: usize,
    /// CPU used by all pods in the last second, cores.
    pub cpu: f64,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// 2xx and 3xx responses.
    pub ok: usize,
    /// 503 responses.
    pub rejected_503: usize,
    /// Other failures: other 4xx/5xx, refused or broken connections, timeouts.
    pub errors: usize,
    /// Of those, timeouts.
    pub timeouts: usize,
    /// Of those, connections refused or reset before a response began.
    pub refused: usize,
    /// Of those, responses cut short.
    pub broken: usize,
    /// Of those, requests not sent because the generator's limit of outstanding requests
    /// was reached ([`crate::load::MAX_OUTSTANDING`]).
    pub shed: usize,
    /// Of those, responses with a status of 400 or more other than 503, by status.
    pub error_statuses: std::collections::BTreeMap<u16, usize>,
    /// Latency of successful requests, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Pods alive (from being taken by the node to gone), integrated over the run, seconds.
    pub pod_seconds: f64,
    /// Worker processes alive, integrated over the run, seconds.
    pub worker_seconds: f64,
    /// From the trace's largest upward step to the first pod started after it being Ready,
    /// seconds (None: no step, or no new pod).
    pub step_to_ready_s: Option<f64>,
    /// Changes of the desired replica count.
    pub scale_events: usize,
    /// The most pods Ready at once.
    pub max_ready: usize,
}

/// The `q` quantile (0..=1) of `sorted` (nearest rank); 0 for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The start of the trace's largest upward step: the row whose rate rises the most over the
/// previous row's (by at least 10% of the peak).
pub fn largest_step(trace: &Trace) -> Option<f64> {
    let peak = trace.peak_rate();
    let t0 = trace.steps.first().map_or(0.0, |s| s.t);
    trace
        .steps
        .windows(2)
        .filter(|w| w[1].rate - w[0].rate > 0.1 * peak)
        .max_by(|a, b| (a[1].rate - a[0].rate).total_cmp(&(b[1].rate - b[0].rate)))
        .map(|w| w[1].t - t0)
}

/// Sums a run. `start` is the run's start in Unix seconds (pod records are in Unix seconds),
/// `duration` its length.
pub fn summarize(
    records: &[Record],
    pods: &[PodRecord],
    samples: &[Sample],
    trace: &Trace,
    start: f64,
    duration: f64,
) -> Summary {
    let mut ok: Vec<f64> = records
        .iter()
        .filter(|r| r.outcome.ok())
        .map(|r| r.latency * 1000.0)
        .collect();
    ok.sort_by(f64::total_cmp);
    let count = |o: Outcome| records.iter().filter(|r| r.outcome == o).count();
    let rejected_503 = count(Outcome::Status(503));
    let timeouts = count(Outcome::Timeout);
    let refused = count(Outcome::Refused);
    let broken = count(Outcome::Broken);
    let shed = count(Outcome::Shed);
    let mut error_statuses = std::collections::BTreeMap::new();
    for r in records {
        if let Outcome::Status(s) = r.outcome {
            if s >= 400 && s != 503 {
                *error_statuses.entry(s).or_insert(0) += 1;
            }
        }
    }
    let end = start + duration;
    let pod_seconds = pods
        .iter()
        .map(|p| {
            let from = p.taken.max(start);
            let to = p.gone.unwrap_or(end).min(end);
            (to - from).max(0.0)
        })
        .sum();
    let worker_seconds = samples
        .windows(2)
        .map(|w| w[0].workers as f64 * (w[1].t - w[0].t))
        .sum();
    let step_to_ready_s = largest_step(trace).and_then(|step| {
        let at = start + step;
        pods.iter()
            .filter(|p| p.taken >= at)
            .filter_map(|p| p.ready)
            .map(|r| r - at)
            .min_by(f64::total_cmp)
    });
    let scale_events = samples
        .windows(2)
        .filter(|w| w[0].desired != w[1].desired)
        .count();
    Summary {
        requests: records.len(),
        ok: ok.len(),
        rejected_503,
        errors: records.len() - ok.len() - rejected_503,
        timeouts,
        refused,
        broken,
        shed,
        error_statuses,
        p50_ms: quantile(&ok, 0.50),
        p99_ms: quantile(&ok, 0.99),
        p999_ms: quantile(&ok, 0.999),
        pod_seconds,
        worker_seconds,
        step_to_ready_s,
        scale_events,
        max_ready: samples.iter().map(|s| s.ready).max().unwrap_or(0),
    }
}

/// Latency quantiles of the successful requests that started in each `bucket`-second slice
/// of the run: (slice start, p50 ms, p99 ms), for plots.
pub fn latency_over_time(records: &[Record], bucket: f64, duration: f64) -> Vec<(f64, f64, f64)> {
    let n = (duration / bucket).ceil().max(1.0) as usize;
    let mut slices: Vec<Vec<f64>> = vec![Vec::new(); n];
    for r in records.iter().filter(|r| r.outcome.ok()) {
        let i = ((r.start / bucket) as usize).min(n - 1);
        slices[i].push(r.latency * 1000.0);
    }
    slices
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(i, mut v)| {
            v.sort_by(f64::total_cmp);
            (i as f64 * bucket, quantile(&v, 0.5), quantile(&v, 0.99))
        })
        .collect()
}

/// Requests that ended well, and that failed, per second of their start.
pub fn outcomes_per_second(records: &[Record], duration: f64) -> (Vec<f64>, Vec<f64>) {
    let n = duration.ceil().max(1.0) as usize;
    let (mut ok, mut bad) = (vec![0.0; n], vec![0.0; n]);
    for r in records {
        let i = (r.start as usize).min(n - 1);
        if r.outcome.ok() {
            ok[i] += 1.0;
        } else {
            bad[i] += 1.0;
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(start: f64, ms: f64, outcome: Outcome) -> Record {
        Record {
            start,
            latency: ms / 1000.0,
            outcome,
        }
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 0.999), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn a_run_sums_up() {
        let trace = Trace::parse(
            "t_seconds,arrival_rate_rps,service_time_ms\n0,10,5\n10,100,5\n20,10,5\n30,10,5\n",
        )
        .expect("trace");
        assert_eq!(largest_step(&trace), Some(10.0));
        let records = vec![
            rec(0.5, 10.0, Outcome::Status(200)),
            rec(11.0, 30.0, Outcome::Status(200)),
            rec(12.0, 1.0, Outcome::Status(503)),
            rec(13.0, 30000.0, Outcome::Timeout),
            rec(14.0, 5.0, Outcome::Refused),
        ];
        let start = 1000.0;
        let pods = vec![
            PodRecord {
                taken: 990.0,
                ready: Some(995.0),
                ..PodRecord::default()
            },
            PodRecord {
                taken: 1012.0,
                ready: Some(1017.5),
                deleting: Some(1025.0),
                gone: Some(1026.0),
                ..PodRecord::default()
            },
        ];
        let samples: Vec<Sample> = (0..=30)
            .map(|t| Sample {
                t: t as f64,
                desired: if t < 12 {
                    1
                } else if t < 25 {
                    2
                } else {
                    1
                },
                ready: if (18..25).contains(&t) { 2 } else { 1 },
                pods: 1,
                workers: 2,
                cpu: 0.0,
            })
            .collect();
        let s = summarize(&records, &pods, &samples, &trace, start, 30.0);
        assert_eq!(
            (s.requests, s.ok, s.rejected_503, s.errors, s.timeouts),
            (5, 2, 1, 2, 1)
        );
        assert_eq!((s.refused, s.broken, s.error_statuses.len()), (1, 0, 0));
        assert_eq!((s.p50_ms, s.p99_ms), (10.0, 30.0));
        assert!(
            (s.pod_seconds - (30.0 + 14.0)).abs() < 1e-9,
            "{}",
            s.pod_seconds
        );
        assert!((s.worker_seconds - 60.0).abs() < 1e-9);
        assert_eq!(s.step_to_ready_s, Some(7.5));
        assert_eq!(s.scale_events, 2);
        assert_eq!(s.max_ready, 2);
        let lat = latency_over_time(&records, 5.0, 30.0);
        assert_eq!(lat, vec![(0.0, 10.0, 10.0), (10.0, 30.0, 30.0)]);
        let (ok, bad) = outcomes_per_second(&records, 30.0);
        assert_eq!(
            (ok.iter().sum::<f64>(), bad.iter().sum::<f64>()),
            (2.0, 3.0)
        );
    }
}

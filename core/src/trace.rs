//! Load traces, shared by the simulator (`wsgiscale-operator simulate`) and the live load
//! generator of the stand-in cluster: CSV with the header
//! `t_seconds,arrival_rate_rps,service_time_ms`, piecewise constant between rows; the last
//! row's time is the end of the trace. Pure: parsing, time compression, rate scaling, the
//! arrival times of one run (a Poisson process from a seed), and the per-minute invocation
//! counts of the Azure Functions 2019 public trace.

use crate::rng::SplitMix64;

/// What is wrong with a trace file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("trace line {line}: {reason}")]
pub struct TraceError {
    /// 1-based line (0: the whole file).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// One row: from `t` on, requests arrive at `rate` per second and each takes `service_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Start of the step, seconds.
    pub t: f64,
    /// Mean arrivals per second (Poisson).
    pub rate: f64,
    /// Mean service time, milliseconds (exponentially distributed).
    pub service_ms: f64,
}

/// A parsed trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Rows in time order.
    pub steps: Vec<Step>,
}

/// The header every trace starts with.
pub const HEADER: &str = "t_seconds,arrival_rate_rps,service_time_ms";

impl Trace {
    /// Parses the CSV text. Blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, h)) if h.replace(' ', "") == HEADER => {}
            Some((n, h)) => {
                return Err(TraceError {
                    line: n,
                    reason: format!("expected the header `{HEADER}`, found `{h}`"),
                })
            }
            None => {
                return Err(TraceError {
                    line: 0,
                    reason: "empty trace".into(),
                })
            }
        }
        let mut steps: Vec<Step> = Vec::new();
        for (n, line) in lines {
            let bad = |reason: String| TraceError { line: n, reason };
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let [t, rate, service] = cols.as_slice() else {
                return Err(bad(format!("expected 3 columns, found {}", cols.len())));
            };
            let num = |name: &str, v: &str| -> Result<f64, TraceError> {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| bad(format!("{name} `{v}` is not a number >= 0")))
            };
            let step = Step {
                t: num("t_seconds", t)?,
                rate: num("arrival_rate_rps", rate)?,
                service_ms: num("service_time_ms", service)?,
            };
            if let Some(prev) = steps.last() {
                if step.t <= prev.t {
                    return Err(bad(format!(
                        "t_seconds {} is not after the previous row's {}",
                        step.t, prev.t
                    )));
                }
            }
            steps.push(step);
        }
        if steps.len() < 2 {
            return Err(TraceError {
                line: 0,
                reason: "a trace needs at least two rows (its start and its end)".into(),
            });
        }
        Ok(Trace { steps })
    }

    /// Length of the trace, seconds from its first row.
    pub fn duration(&self) -> f64 {
        match (self.steps.first(), self.steps.last()) {
            (Some(a), Some(b)) => b.t - a.t,
            _ => 0.0,
        }
    }

    /// The step in force at `t` seconds after the start.
    pub fn at(&self, t: f64) -> Step {
        let t0 = self.steps.first().map_or(0.0, |s| s.t);
        let abs = t0 + t;
        self.steps
            .iter()
            .rev()
            .find(|s| s.t <= abs)
            .or(self.steps.first())
            .copied()
            .unwrap_or(Step {
                t: 0.0,
                rate: 0.0,
                service_ms: 0.0,
            })
    }
}

impl Trace {
    /// The highest arrival rate of any row.
    pub fn peak_rate(&self) -> f64 {
        self.steps.iter().map(|s| s.rate).fold(0.0, f64::max)
    }

    /// The same shape in `seconds`: every row's offset from the start divided by the same
    /// factor, rates unchanged. A trace compressed 3.6 times runs its step 3.6 times sooner.
    pub fn compressed_to(&self, seconds: f64) -> Trace {
        let d = self.duration();
        if d <= 0.0 || seconds <= 0.0 {
            return self.clone();
        }
        let t0 = self.steps.first().map_or(0.0, |s| s.t);
        let k = seconds / d;
        Trace {
            steps: self
                .steps
                .iter()
                .map(|s| Step {
                    t: (s.t - t0) * k,
                    ..*s
                })
                .collect(),
        }
    }

    /// The same shape with every rate multiplied so that the highest equals `peak` per second
    /// (a trace of zeros stays zero), and every service time set to `service_ms`.
    pub fn scaled_to(&self, peak: f64, service_ms: f64) -> Trace {
        let max = self.peak_rate();
        let k = if max > 0.0 { peak / max } else { 0.0 };
        Trace {
            steps: self
                .steps
                .iter()
                .map(|s| Step {
                    rate: s.rate * k,
                    service_ms,
                    ..*s
                })
                .collect(),
        }
    }

    /// The arrival times of one run, seconds from the start, in order: a Poisson process whose
    /// rate is the trace's, row by row (exponential gaps, drawn afresh at every row's start:
    /// the process is memoryless, so that is exact). The same seed gives the same arrivals.
    pub fn arrivals(&self, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix64(seed);
        let t0 = self.steps.first().map_or(0.0, |s| s.t);
        let mut out = Vec::new();
        for pair in self.steps.windows(2) {
            let (row, next) = (pair[0], pair[1]);
            if row.rate <= 0.0 {
                continue;
            }
            let (start, end) = (row.t - t0, next.t - t0);
            let mut t = start;
            loop {
                // 1 - U is in (0, 1]: its logarithm is finite.
                t += -(1.0 - rng.next_f64()).ln() / row.rate;
                if t >= end {
                    break;
                }
                out.push(t);
            }
        }
        out
    }

    /// The rate in force in each whole second of the trace (for plots and reports).
    pub fn rate_per_second(&self) -> Vec<f64> {
        (0..self.duration().ceil() as usize)
            .map(|s| self.at(s as f64).rate)
            .collect()
    }
}

/// One function of the Azure Functions 2019 public trace (Shahrad et al., "Serverless in the
/// Wild", USENIX ATC 2020; CC-BY 4.0): its invocations in each minute of one day, from a file
/// `invocations_per_function_md.anon.dNN.csv` (header
/// `HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440`; samples of that file, such as the
/// vhive-serverless/invitro copies, have the same header with fewer minutes).
#[derive(Debug, Clone, PartialEq)]
pub struct AzureFunction {
    /// HashOwner.
    pub owner: String,
    /// HashApp.
    pub app: String,
    /// HashFunction.
    pub function: String,
    /// Trigger: http, timer, queue, event, storage, orchestration, others.
    pub trigger: String,
    /// Invocations in each minute.
    pub per_minute: Vec<u64>,
}

impl AzureFunction {
    /// Every function of an invocations file.
    pub fn parse_all(text: &str) -> Result<Vec<AzureFunction>, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let minutes = match lines.next() {
            Some((_, h)) if h.starts_with("HashOwner,HashApp,HashFunction,Trigger,") => {
                h.split(',').count() - 4
            }
            Some((n, h)) => {
                return Err(TraceError {
                    line: n + 1,
                    reason: format!(
                        "expected the header `HashOwner,HashApp,HashFunction,Trigger,1,2,...`, found `{}`",
                        h.chars().take(80).collect::<String>()
                    ),
                })
            }
            None => {
                return Err(TraceError {
                    line: 0,
                    reason: "empty file".into(),
                })
            }
        };
        lines
            .map(|(n, line)| {
                let bad = |reason: String| TraceError {
                    line: n + 1,
                    reason,
                };
                let cols: Vec<&str> = line.trim().split(',').collect();
                if cols.len() != minutes + 4 {
                    return Err(bad(format!(
                        "expected {} columns, found {}",
                        minutes + 4,
                        cols.len()
                    )));
                }
                let per_minute = cols[4..]
                    .iter()
                    .map(|c| {
                        c.trim()
                            .parse::<u64>()
                            .map_err(|_| bad(format!("`{c}` is not a count")))
                    })
                    .collect::<Result<Vec<u64>, _>>()?;
                Ok(AzureFunction {
                    owner: cols[0].into(),
                    app: cols[1].into(),
                    function: cols[2].into(),
                    trigger: cols[3].into(),
                    per_minute,
                })
            })
            .collect()
    }

    /// Invocations over the whole file.
    pub fn total(&self) -> u64 {
        self.per_minute.iter().sum()
    }

    /// The selection rule of the showdown, fixed before its first run: of the HTTP-triggered
    /// functions, the one with the most invocations (ties: the smallest HashFunction).
    pub fn busiest_http(all: &[AzureFunction]) -> Option<&AzureFunction> {
        all.iter()
            .filter(|f| f.trigger == "http")
            .max_by(|a, b| a.total().cmp(&b.total()).then(b.function.cmp(&a.function)))
    }

    /// The `minutes` consecutive minutes with the most invocations (the earliest of equals),
    /// as a trace in which each minute lasts `seconds_per_minute` and its rate is the
    /// minute's count per (compressed) second; `service_ms` for every row.
    pub fn window_trace(&self, minutes: usize, seconds_per_minute: f64, service_ms: f64) -> Trace {
        let n = self.per_minute.len();
        let w = minutes.clamp(1, n.max(1));
        let best = (0..=n.saturating_sub(w))
            .max_by(|&a, &b| {
                let sa: u64 = self.per_minute[a..a + w].iter().sum();
                let sb: u64 = self.per_minute[b..b + w].iter().sum();
                sa.cmp(&sb).then(b.cmp(&a))
            })
            .unwrap_or(0);
        let counts = self.per_minute.get(best..(best + w).min(n)).unwrap_or(&[]);
        let mut steps: Vec<Step> = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| Step {
                t: i as f64 * seconds_per_minute,
                rate: c as f64 / seconds_per_minute,
                service_ms,
            })
            .collect();
        steps.push(Step {
            t: counts.len() as f64 * seconds_per_minute,
            rate: 0.0,
            service_ms,
        });
        Trace { steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_steps() {
        let t = Trace::parse(
            "# a step\nt_seconds,arrival_rate_rps,service_time_ms\n0,10,100\n\n60,200,100\n120,200,100\n",
        )
        .expect("parses");
        assert_eq!(t.duration(), 120.0);
        assert_eq!(t.at(0.0).rate, 10.0);
        assert_eq!(t.at(59.9).rate, 10.0);
        assert_eq!(t.at(60.0).rate, 200.0);
        assert_eq!(t.at(500.0).rate, 200.0);
    }

    fn step_trace() -> Trace {
        Trace::parse("t_seconds,arrival_rate_rps,service_time_ms\n0,10,100\n60,200,100\n300,10,100\n480,10,100\n")
            .expect("parses")
    }

    #[test]
    fn compression_keeps_the_shape() {
        let t = step_trace().compressed_to(96.0);
        assert_eq!(t.duration(), 96.0);
        assert_eq!(t.at(11.9).rate, 10.0);
        assert_eq!(t.at(12.0).rate, 200.0);
        assert_eq!(t.at(60.0).rate, 10.0);
        let s = t.scaled_to(150.0, 5.0);
        assert_eq!(s.peak_rate(), 150.0);
        assert_eq!(s.at(0.0).rate, 7.5);
        assert!(s.steps.iter().all(|r| r.service_ms == 5.0));
    }

    #[test]
    fn arrivals_follow_the_rate_and_the_seed() {
        let t = step_trace();
        let a = t.arrivals(1);
        assert_eq!(a, t.arrivals(1), "the same seed gives the same run");
        assert_ne!(a, t.arrivals(2));
        assert!(a.windows(2).all(|w| w[0] <= w[1]), "in order");
        let count = |lo: f64, hi: f64| a.iter().filter(|&&x| x >= lo && x < hi).count() as f64;
        // 600 expected in the first minute, 48,000 in the high part: within 5 standard
        // deviations of a Poisson count.
        assert!((count(0.0, 60.0) - 600.0).abs() < 5.0 * 600f64.sqrt());
        assert!((count(60.0, 300.0) - 48_000.0).abs() < 5.0 * 48_000f64.sqrt());
        assert!(a.iter().all(|&x| (0.0..480.0).contains(&x)));
        let zero = Trace::parse("t_seconds,arrival_rate_rps,service_time_ms\n0,0,1\n10,0,1\n")
            .expect("parses");
        assert!(zero.arrivals(3).is_empty());
    }

    #[test]
    fn azure_rule_picks_the_busiest_http_function_and_window() {
        let text = "HashOwner,HashApp,HashFunction,Trigger,1,2,3,4\n\
                    o,a,f1,http,1,0,0,5\n\
                    o,a,f2,timer,9,9,9,9\n\
                    o,a,f3,http,0,4,4,0\n";
        let all = AzureFunction::parse_all(text).expect("parses");
        let f = AzureFunction::busiest_http(&all).expect("one http function");
        assert_eq!(f.function, "f3");
        let t = f.window_trace(2, 3.0, 50.0);
        assert_eq!(t.duration(), 6.0);
        assert_eq!(t.at(0.0).rate, 4.0 / 3.0);
        assert_eq!(t.at(4.0).rate, 4.0 / 3.0);
        assert!(AzureFunction::parse_all("x,y\n").is_err());
        assert!(AzureFunction::parse_all(
            "HashOwner,HashApp,HashFunction,Trigger,1\no,a,f,http,x\n"
        )
        .is_err());
    }

    #[test]
    fn rejects_bad_input_with_the_line() {
        for (text, line, what) in [
            ("", 0, "empty"),
            ("t,r,s\n0,1,1\n", 1, "header"),
            (
                "t_seconds,arrival_rate_rps,service_time_ms\n0,1\n",
                2,
                "3 columns",
            ),
            (
                "t_seconds,arrival_rate_rps,service_time_ms\n0,x,1\n",
                2,
                "arrival_rate_rps",
            ),
            (
                "t_seconds,arrival_rate_rps,service_time_ms\n0,1,-5\n",
                2,
                "service_time_ms",
            ),
            (
                "t_seconds,arrival_rate_rps,service_time_ms\n5,1,1\n5,1,1\n",
                3,
                "not after",
            ),
            (
                "t_seconds,arrival_rate_rps,service_time_ms\n0,1,1\n",
                0,
                "two rows",
            ),
        ] {
            match Trace::parse(text) {
                Err(TraceError { line: l, reason }) => {
                    assert_eq!(l, line, "{text:?}: {reason}");
                    assert!(reason.contains(what), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}

//! Load traces: CSV with the header `t_seconds,arrival_rate_rps,service_time_ms`, piecewise
//! constant between rows; the last row's time is the end of the trace.

use super::SimError;

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
    pub fn parse(text: &str) -> Result<Trace, SimError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, h)) if h.replace(' ', "") == HEADER => {}
            Some((n, h)) => {
                return Err(SimError::Trace {
                    line: n,
                    reason: format!("expected the header `{HEADER}`, found `{h}`"),
                })
            }
            None => {
                return Err(SimError::Trace {
                    line: 0,
                    reason: "empty trace".into(),
                })
            }
        }
        let mut steps: Vec<Step> = Vec::new();
        for (n, line) in lines {
            let bad = |reason: String| SimError::Trace { line: n, reason };
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let [t, rate, service] = cols.as_slice() else {
                return Err(bad(format!("expected 3 columns, found {}", cols.len())));
            };
            let num = |name: &str, v: &str| -> Result<f64, SimError> {
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
            return Err(SimError::Trace {
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
                Err(SimError::Trace { line: l, reason }) => {
                    assert_eq!(l, line, "{text:?}: {reason}");
                    assert!(reason.contains(what), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}

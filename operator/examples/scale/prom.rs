//! The Prometheus text format as the benchmark needs it: samples (parsed by prometheus-parse),
//! sums over label filters, and quantiles from cumulative histogram buckets.

use std::collections::BTreeMap;

/// One sample line (a histogram's buckets come back as `NAME_bucket` samples with `le`).
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Every sample of `text` (the Prometheus text format or OpenMetrics; lines it cannot parse
/// are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in scrape.samples {
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => out.push(Sample {
                name: s.metric,
                labels,
                value: v,
            }),
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    let mut labels = labels.clone();
                    let le = if b.less_than.is_infinite() {
                        "+Inf".to_string()
                    } else {
                        b.less_than.to_string()
                    };
                    labels.insert("le".into(), le);
                    out.push(Sample {
                        name: format!("{}_bucket", s.metric),
                        labels,
                        value: b.count,
                    });
                }
            }
            prometheus_parse::Value::Summary(_) => {}
        }
    }
    out
}

/// The sum of the samples named `name` whose labels pass `keep`.
pub fn sum(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && keep(s))
        .map(|s| s.value)
        .sum()
}

/// The cumulative buckets `(le, count)` of the histogram `name` (its `_bucket` series), by le.
pub fn buckets(samples: &[Sample], name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket)
        .filter_map(|s| Some((s.labels.get("le")?.parse::<f64>().ok()?, s.value)))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `after - before`, bucket by bucket (the observations made between the two scrapes).
pub fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before
                .iter()
                .find(|b| b.0 == le)
                .map(|b| b.1)
                .unwrap_or(0.0);
            (le, n - was)
        })
        .collect()
}

/// The observations counted in the buckets.
pub fn count(b: &[(f64, f64)]) -> f64 {
    b.last().map(|l| l.1).unwrap_or(0.0)
}

/// The `q` quantile, interpolated linearly inside its bucket as Prometheus'
/// `histogram_quantile` does; `(value, bucket lower bound, bucket upper bound)`. In the +Inf
/// bucket the value is the largest finite bound (the true value is above it).
pub fn quantile(b: &[(f64, f64)], q: f64) -> Option<(f64, f64, f64)> {
    let total = count(b);
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in b {
        if n >= rank {
            if le.is_infinite() {
                return Some((lower.0, lower.0, le));
            }
            let in_bucket = n - lower.1;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * frac, lower.0, le));
        }
        lower = (le, n);
    }
    None
}

/// A quantile as text: `37.2 ms (20-40 ms bucket)`.
pub fn describe_quantile(b: &[(f64, f64)], q: f64) -> String {
    match quantile(b, q) {
        None => "no observations".into(),
        Some((_, lo, hi)) if hi.is_infinite() => format!("> {:.0} ms", lo * 1000.0),
        Some((v, lo, hi)) => format!(
            "{:.1} ms ({:.0}-{:.0} ms bucket)",
            v * 1000.0,
            lo * 1000.0,
            hi * 1000.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_interpolates() {
        let text = "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"0.01\"} 50\nh_bucket{le=\"0.02\"} 100\nh_bucket{le=\"+Inf\"} 100\n# TYPE c counter\nc_total{a=\"x\",b=\"q\"} 3\n";
        let s = parse(text);
        assert_eq!(s.len(), 4);
        let c = s.iter().find(|s| s.name == "c_total").expect("c_total");
        assert_eq!((c.label("a"), c.label("b"), c.value), ("x", "q", 3.0));
        let b = buckets(&s, "h");
        assert_eq!(b.last(), Some(&(f64::INFINITY, 100.0)));
        let (v, lo, hi) = quantile(&b, 0.99).expect("observations");
        assert!((v - 0.0198).abs() < 1e-9 && lo == 0.01 && hi == 0.02);
    }
}

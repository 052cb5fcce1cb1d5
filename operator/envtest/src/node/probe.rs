//! Probes as the kubelet runs them: a pure state machine (consecutive successes and failures
//! against the thresholds) and the checks themselves (an HTTP GET or a TCP connect to the
//! pod's address from the node, as the kubelet does, or a command in the pod).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::plan::{ProbeAction, ProbeSpec};

/// A probe's result so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    /// Whether it passes now.
    pub passing: bool,
    successes: u32,
    failures: u32,
}

impl ProbeState {
    /// A probe that starts `passing` (liveness) or not (readiness, startup).
    pub fn new(passing: bool) -> ProbeState {
        ProbeState {
            passing,
            successes: 0,
            failures: 0,
        }
    }

    /// Counts one check; returns whether `passing` changed.
    pub fn observe(&mut self, spec: &ProbeSpec, ok: bool) -> bool {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.passing && self.successes >= spec.success_threshold {
                self.passing = true;
                return true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.passing && self.failures >= spec.failure_threshold {
                self.passing = false;
                return true;
            }
            // A probe that never passed stays failing; a startup probe's failures still
            // count toward its budget (see `failures`).
        }
        false
    }

    /// Consecutive failures (a startup probe that reaches its failure threshold kills the
    /// container).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The outcome of one check, with a reason for the Event when it failed.
pub type CheckResult = Result<(), String>;

/// Runs one HTTP or TCP check against the pod at `ip` (exec checks are run by the node, which
/// can enter the pod).
pub async fn check_network(action: &ProbeAction, ip: Ipv4Addr, timeout: Duration) -> CheckResult {
    let run = async {
        match action {
            ProbeAction::Tcp { port } => {
                tokio::net::TcpStream::connect(SocketAddr::from((ip, *port)))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("dial tcp {ip}:{port}: {e}"))
            }
            ProbeAction::HttpGet { port, path } => {
                http_get(ip, *port, path).await.and_then(|code| {
                    if (200..400).contains(&code) {
                        Ok(())
                    } else {
                        Err(format!("HTTP probe failed with statuscode: {code}"))
                    }
                })
            }
            ProbeAction::Exec { .. } => Err("an exec probe is not a network check".into()),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get \"http://{ip}\": context deadline exceeded (timeout {}s)",
            timeout.as_secs()
        )),
    }
}

/// GET `path` from `ip:port`; the status code.
pub async fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(SocketAddr::from((ip, port)))
        .await
        .map_err(|e| format!("dial tcp {ip}:{port}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    // The status line is all that is needed.
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf).ok_or_else(|| "malformed HTTP response".to_string())
}

/// The status code of `HTTP/1.x NNN ...`.
pub fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: ProbeAction::Tcp { port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let s = spec(2, 3);
        let mut r = ProbeState::new(false);
        assert!(!r.observe(&s, true));
        assert!(!r.observe(&s, false), "a failure resets the successes");
        assert!(!r.observe(&s, true));
        assert!(r.observe(&s, true), "two in a row pass");
        assert!(r.passing);
        assert!(!r.observe(&s, false));
        assert!(!r.observe(&s, false));
        assert!(r.observe(&s, false), "three in a row fail");
        assert!(!r.passing);
        assert_eq!(r.failures(), 3);
        let mut live = ProbeState::new(true);
        assert!(!live.observe(&spec(1, 1), true));
        assert!(live.observe(&spec(1, 1), false));
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"garbage"), None);
    }
}

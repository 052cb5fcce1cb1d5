//! An open-loop load generator: it sends each request at its arrival time (a trace's Poisson
//! arrivals, [`wsgiscale_core::trace::Trace::arrivals`]) on a new connection, never waiting for
//! a response before sending the next, and records every request's start, latency and
//! outcome. Latency is measured from the request's scheduled arrival, so a generator that
//! falls behind its schedule adds the delay to the figures instead of hiding it (no
//! coordinated omission).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response with this status.
    Status(u16),
    /// The connection was refused or reset before a response began.
    Refused,
    /// The response was cut short (the connection closed before its end).
    Broken,
    /// No whole response within the timeout.
    Timeout,
    /// Not sent: [`MAX_OUTSTANDING`] requests were already waiting for their responses. It
    /// fails at once, as a request beyond an upstream proxy's connection limit does.
    Shed,
}

/// The most requests a run keeps outstanding. Each costs three descriptors in the harness's
/// process (the generator's socket and the stand-in kube-proxy's two), and the process's
/// open-file limit here is 20,000 and cannot be raised (no CAP_SYS_RESOURCE): a contender
/// that falls more than 5,000 requests behind (10.6 s of the io app's peak rate) would
/// otherwise exhaust the descriptors of the harness itself, which then refuses everyone's
/// connections and probes. The same for every contender; it binds only one that is already
/// failing, and its shed requests count as errors.
pub const MAX_OUTSTANDING: usize = 5000;

impl Outcome {
    /// A 2xx or 3xx response.
    pub fn ok(self) -> bool {
        matches!(self, Outcome::Status(s) if s < 400)
    }
}

/// One request of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// Scheduled arrival, seconds from the run's start.
    pub start: f64,
    /// From the scheduled arrival to the response's last byte (or the failure), seconds.
    pub latency: f64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Counters a caller can read while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent.
    pub sent: std::sync::atomic::AtomicU64,
    /// Requests ended (any outcome).
    pub done: std::sync::atomic::AtomicU64,
}

/// A free TCP port on loopback (for a listener a test starts next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on a connection of its own (`Connection: close`): the status (0 when none
/// came), the time it took and the whole response as text.
pub async fn get_once(addr: SocketAddr, path: &str) -> (u16, Duration, String) {
    let t = Instant::now();
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, t.elapsed(), String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, t.elapsed(), String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let code = crate::node::probe::parse_status_line(&buf).unwrap_or(0);
    (code, t.elapsed(), String::from_utf8_lossy(&buf).to_string())
}

/// Parses a whole HTTP/1.x response read to the connection's end: its status, if the body
/// is complete (as long as its Content-Length says, or any length without one).
pub fn parse_response(buf: &[u8]) -> Outcome {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.is_empty() {
            Outcome::Refused
        } else {
            Outcome::Broken
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    let Some(status) = status else {
        return Outcome::Broken;
    };
    let length = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = buf.len() - head_end - 4;
    match length {
        Some(n) if body < n => Outcome::Broken,
        _ => Outcome::Status(status),
    }
}

/// Source addresses for connections to a loopback target: 64 of 127.0.100.0/24, in turn.
/// One source address gives at most the ephemeral port range (28,232 ports) of connections to
/// one Service address per TIME_WAIT period (60 s), which 470 requests a second fill; the
/// closed connections' TIME_WAIT entries then meet the new connections' SYNs.
const SOURCES: u32 = 64;

fn source_for(target: SocketAddr) -> Option<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    let k = NEXT.fetch_add(1, Ordering::Relaxed) % SOURCES;
    Some(SocketAddr::from((
        std::net::Ipv4Addr::new(127, 0, 100, 1 + k as u8),
        0,
    )))
}

async fn connect(target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    match source_for(target) {
        Some(src) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(src)?;
            socket.connect(target).await
        }
        None => tokio::net::TcpStream::connect(target).await,
    }
}

async fn one(target: SocketAddr, request: Arc<Vec<u8>>) -> Outcome {
    let mut s = match connect(target).await {
        Ok(s) => s,
        Err(_) => return Outcome::Refused,
    };
    let _ = s.set_nodelay(true);
    if s.write_all(&request).await.is_err() {
        return Outcome::Refused;
    }
    let mut buf = Vec::with_capacity(512);
    match s.read_to_end(&mut buf).await {
        Ok(_) => parse_response(&buf),
        Err(_) if buf.is_empty() => Outcome::Refused,
        Err(_) => Outcome::Broken,
    }
}

/// Sends `GET path` to `target` at each of `arrivals` (seconds from now), one connection per
/// request (`Connection: close`), each given `timeout`; returns every request's record, in
/// arrival order, once the last has ended.
pub async fn run(
    target: SocketAddr,
    arrivals: &[f64],
    path: &str,
    timeout: Duration,
    progress: Arc<Progress>,
) -> Vec<Record> {
    use std::sync::atomic::Ordering;
    let request = Arc::new(
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: wsgiscale-showdown\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    );
    let t0 = Instant::now();
    let records: Arc<Mutex<Vec<Option<Record>>>> = Arc::new(Mutex::new(vec![None; arrivals.len()]));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &at) in arrivals.iter().enumerate() {
        let due = t0 + Duration::from_secs_f64(at);
        tokio::time::sleep_until(due.into()).await;
        // Reap finished tasks, so the set holds only what is in flight.
        while tasks.try_join_next().is_some() {}
        progress.sent.fetch_add(1, Ordering::Relaxed);
        if tasks.len() >= MAX_OUTSTANDING {
            records.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Record {
                start: at,
                latency: 0.0,
                outcome: Outcome::Shed,
            });
            progress.done.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (request, records, progress) = (request.clone(), records.clone(), progress.clone());
        tasks.spawn(async move {
            let outcome = match tokio::time::timeout(timeout, one(target, request)).await {
                Ok(o) => o,
                Err(_) => Outcome::Timeout,
            };
            let latency = Instant::now().saturating_duration_since(due).as_secs_f64();
            records.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Record {
                start: at,
                latency,
                outcome,
            });
            progress.done.fetch_add(1, Ordering::Relaxed);
        });
    }
    while tasks.join_next().await.is_some() {}
    let records = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    records
        .into_iter()
        .zip(arrivals)
        .map(|(r, &at)| {
            r.unwrap_or(Record {
                start: at,
                latency: timeout.as_secs_f64(),
                outcome: Outcome::Timeout,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_whole_or_not() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Outcome::Status(200)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok"),
            Outcome::Broken
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Outcome::Status(503)
        );
        assert_eq!(parse_response(b""), Outcome::Refused);
        assert_eq!(parse_response(b"HTTP/1.1 20"), Outcome::Broken);
        assert!(Outcome::Status(302).ok() && !Outcome::Status(503).ok() && !Outcome::Timeout.ok());
    }

    #[tokio::test]
    async fn sends_on_schedule_without_waiting_for_responses() {
        // A server that answers each request after 300 ms: ten requests 10 ms apart must all
        // be sent before the first answer comes back (open loop).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let acc = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let arrivals: Vec<f64> = (0..10).map(|i| i as f64 * 0.01).collect();
        let progress = Arc::new(Progress::default());
        let p = progress.clone();
        let watcher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            p.sent.load(std::sync::atomic::Ordering::SeqCst)
        });
        let records = run(addr, &arrivals, "/", Duration::from_secs(5), progress).await;
        assert_eq!(
            watcher.await.expect("watcher"),
            10,
            "all sent before any answer"
        );
        assert_eq!(records.len(), 10);
        assert!(records.iter().all(|r| r.outcome == Outcome::Status(200)));
        assert!(records.iter().all(|r| r.latency >= 0.3));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 10);
    }
}

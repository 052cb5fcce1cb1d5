//! Test support: start the real `wsgiscale` binary on 127.0.0.1:0 and talk to it.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn apps() -> PathBuf {
    repo().join("tests/apps")
}

/// The test virtualenv with Flask and Django, made by `make test` (or `make venv`).
pub fn venv() -> PathBuf {
    let v = repo().join(".venv");
    assert!(
        v.join("bin/python").exists(),
        "{} is missing: run `make test` (it creates it from tests/requirements.txt)",
        v.display()
    );
    v
}

/// The base interpreter of the test virtualenv: the Python `make test` built the binary with.
pub fn python3() -> PathBuf {
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", "import sys; print(sys._base_executable)"])
        .output()
        .unwrap();
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

type Spawned = (
    Child,
    Arc<Mutex<Vec<String>>>,
    mpsc::Receiver<(String, String)>,
);

fn spawn(app: &str, extra: &[&str]) -> Spawned {
    spawn_env(app, extra, &[])
}

fn spawn_env(app: &str, extra: &[&str], envs: &[(&str, &str)]) -> Spawned {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgiscale"))
        .envs(envs.iter().copied())
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--admin-bind",
            "127.0.0.1:0",
        ])
        .args(
            (!extra.contains(&"--log-format"))
                .then_some(["--log-format", "json"])
                .into_iter()
                .flatten(),
        )
        .arg("--chdir")
        .arg(apps())
        .args(extra)
        .args((!app.is_empty()).then_some(app))
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the wsgiscale binary starts");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let (Some(msg), Some(addr)) = (v["message"].as_str(), v["addr"].as_str()) {
                    let _ = tx.send((msg.to_string(), addr.to_string()));
                }
            } else if let Some((before, after)) = line.split_once(" listening addr=") {
                // A plain line: `... INFO listening addr=127.0.0.1:8000 app=...`.
                let msg = if before.ends_with("admin") {
                    "admin listening"
                } else {
                    "listening"
                };
                let addr = after.split(' ').next().unwrap_or_default();
                let _ = tx.send((msg.to_string(), addr.to_string()));
            }
            sink.lock().unwrap().push(line);
        }
    });
    (child, log, rx)
}

impl Server {
    /// Starts `app` with extra flags and waits until it is ready.
    pub fn start(app: &str, extra: &[&str]) -> Server {
        Server::start_env(app, extra, &[])
    }

    /// Starts `app` with extra flags and environment variables and waits until it is ready.
    pub fn start_env(app: &str, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let s = Server::start_unready(app, extra, envs);
        s.wait_ready();
        s
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Starts `app` and waits until it listens, not until it is ready.
    pub fn start_unready(app: &str, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let (child, log, rx) = spawn_env(app, extra, envs);
        // Owned by a Server from here on, so that a failed start still kills the process.
        let mut guard = Server {
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: log.clone(),
        };
        let mut addr = None;
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while addr.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((msg, a)) if msg == "listening" => addr = addr.or(a.parse().ok()),
                Ok((msg, a)) if msg == "admin listening" => admin = a.parse().ok(),
                Ok(_) => {}
                Err(_) => panic!(
                    "server did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                ),
            }
        }
        guard.addr = addr.unwrap();
        guard.admin = admin.unwrap();
        guard
    }

    /// Starts `app` and returns as soon as the admin port listens, without waiting for the
    /// app's import, the front or readiness (`addr` is unset).
    pub fn start_admin_only(app: &str, extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let (child, log, rx) = spawn_env(app, extra, envs);
        let mut guard = Server {
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((msg, a)) if msg == "admin listening" => {
                    guard.admin = a.parse().unwrap();
                    return guard;
                }
                Ok(_) => {}
                Err(_) => panic!(
                    "the admin port never listened; log:\n{}",
                    log.lock().unwrap().join("\n")
                ),
            }
        }
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = get(self.admin, "/readyz") {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "never ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn get(&self, path: &str) -> Resp {
        get(self.addr, path).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(60)).0
    }

    /// Sends SIGTERM and waits up to `within` for the exit; returns it and the log.
    pub fn terminate_within(mut self, within: Duration) -> (ExitStatus, String) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = wait_exit(self.child.as_mut().unwrap(), within);
        (status, self.log_text())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped, also when the test fails while it runs.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server that must fail to start; returns its exit status and log.
pub fn start_failing(app: &str, extra: &[&str]) -> (ExitStatus, String) {
    let (child, log, _rx) = spawn(app, extra);
    let mut child = KillOnDrop(child);
    let st = wait_exit(&mut child.0, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(100));
    let text = log.lock().unwrap().join("\n");
    (st, text)
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn to_resp(mut r: ureq::http::Response<ureq::Body>) -> Result<Resp, ureq::Error> {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = r.body_mut().with_config().limit(64 << 20).read_to_vec()?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// GET with a real HTTP client.
pub fn get(addr: SocketAddr, path: &str) -> Result<Resp, ureq::Error> {
    to_resp(agent().get(format!("http://{addr}{path}")).call()?)
}

/// POST with a real HTTP client.
pub fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Resp, ureq::Error> {
    to_resp(
        agent()
            .post(format!("http://{addr}{path}"))
            .header("Content-Type", content_type)
            .send(body)?,
    )
}

/// Writes raw bytes and reads until the server closes the connection (or `within` passes).
pub fn raw(addr: SocketAddr, bytes: &[u8], within: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// Parses consecutive HTTP/1.x responses with Content-Length or chunked bodies from `data`;
/// a trailing close-delimited body takes the rest.
pub fn parse_responses(mut data: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&data[..end]).into_owned();
        data = &data[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body;
        if status == 100 {
            out.push(Resp {
                status,
                headers,
                body: Vec::new(),
            });
            continue;
        }
        if let Some(cl) = find("content-length") {
            let n: usize = cl.parse().unwrap();
            let n = n.min(data.len());
            body = data[..n].to_vec();
            data = &data[n..];
        } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut b = Vec::new();
            loop {
                let Some(le) = data.windows(2).position(|w| w == b"\r\n") else {
                    data = &[];
                    break;
                };
                let size = usize::from_str_radix(String::from_utf8_lossy(&data[..le]).trim(), 16)
                    .unwrap_or(0);
                data = &data[le + 2..];
                if size == 0 {
                    data = data.get(2..).unwrap_or(&[]);
                    break;
                }
                let size = size.min(data.len());
                b.extend_from_slice(&data[..size]);
                data = data.get(size + 2..).unwrap_or(&[]);
            }
            body = b;
        } else {
            body = data.to_vec();
            data = &[];
        }
        out.push(Resp {
            status,
            headers,
            body,
        });
    }
    out
}

/// A closed-loop load generator: `clients` threads send GET `path` until stopped, counting
/// every status (connection errors count as status 0).
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<u16>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &str, clients: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                let path = path.to_string();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        seen.push(get(addr, &path).map(|r| r.status).unwrap_or(0));
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    seen
                })
            })
            .collect();
        Load {
            stop,
            done,
            threads,
        }
    }

    /// Waits until `more` further requests have completed (the load is flowing through
    /// whatever just happened); panics after `within`.
    pub fn wait_more(&self, more: usize, within: Duration) {
        let target = self.done.load(std::sync::atomic::Ordering::Relaxed) + more;
        let deadline = Instant::now() + within;
        while self.done.load(std::sync::atomic::Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "the load stalled: fewer than {more} requests in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops and returns (total, failed) requests.
    pub fn finish(self) -> (usize, Vec<u16>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let all: Vec<u16> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let failed = all.iter().copied().filter(|s| *s != 200).collect();
        (all.len(), failed)
    }
}

impl Server {
    /// The `/load` document.
    pub fn load(&self) -> serde_json::Value {
        get(self.admin, "/load").unwrap().json()
    }

    /// Waits until `n` requests are running in workers (`in_flight` of `/load`).
    pub fn wait_in_flight(&self, n: u64) {
        self.wait_load(Duration::from_secs(10), "requests in flight", |l| {
            l["in_flight"].as_u64().unwrap_or(0) >= n
        });
    }

    /// Polls `/load` until `pred` holds; returns the document, or panics after `within`.
    pub fn wait_load(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let l = self.load();
            if pred(&l) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last /load: {l}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A fresh temporary directory, removed when dropped (also when the test fails).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wsgiscale-test-")
        .tempdir()
        .unwrap()
}

/// The JSON lines of `path` (an events file several processes append to); none if absent.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls `f` until it returns Some, or panics with `what` after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory under the system's temp dir, removed (with everything in it) when dropped, so
/// a failing test leaves nothing behind.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wsgiscale-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends one raw request and returns the (first) response.
pub fn raw_one(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let out = raw(addr, bytes, Duration::from_secs(10));
    parse_responses(&out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&out)))
}

/// A GET with extra headers, on a connection closed after the response.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_one(addr, req.as_bytes())
}

impl Server {
    /// The access log lines (JSON) seen so far.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    }

    /// Waits for an access log line whose path is `path`.
    pub fn access_line(&self, path: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.access_lines().into_iter().find(|l| l["path"] == path) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no access line for {path}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of a Prometheus sample line starting with `series` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let text = get(self.admin, "/metrics").unwrap().text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

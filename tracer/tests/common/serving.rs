//! `gotrace serve` from the outside: start it, find its port, and speak HTTP to it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use testkit::lines_of;

/// A child that is killed when the test ends, however it ends.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `gotrace serve` and the port it listens on.
pub struct Server {
    pub child: Guard,
    pub port: u16,
}

/// Waits for a child to exit, failing the test after `limit` (`what` says why it should exit).
pub fn exit_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(started.elapsed() < limit, "no exit within {limit:?} of {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn start_serve(mut command: Command) -> Server {
    let mut child = Guard(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gotrace serve"),
    );
    // The reader thread drains the rest of stderr after the port line, so gotrace never
    // blocks on a full pipe.
    let stderr: Receiver<String> = lines_of(child.0.stderr.take().expect("stderr"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("gotrace serve says where it listens");
        if let Some(rest) = line.split("serving http://").nth(1) {
            let addr = rest.split('/').next().expect("address");
            let port = addr.rsplit(':').next().expect("port").parse().expect("port number");
            return Server { child, port };
        }
    }
}

/// A GET with HTTP/1.1 over a plain socket: status, headers (lowercased names) and body.
pub fn http(port: u16, method: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_mins(1))).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

pub fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).expect("hex").trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

pub fn metrics(port: u16) -> String {
    let (status, _, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200);
    String::from_utf8(body).expect("utf-8 metrics")
}

/// The value of the first sample line that starts with `prefix`.
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `/metrics` until `check` passes on its text, or fails after `limit`; returns how long
/// it took.
pub fn wait_for(port: u16, limit: Duration, what: &str, check: impl Fn(&str) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let text = metrics(port);
        if check(&text) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no {what} within {limit:?}; metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real Prometheus server (Debian's, unpacked by `scripts/setup.sh`) scraping one gotrace
/// every second; stopped when dropped.
pub struct Prometheus {
    _server: Guard,
    web_port: u16,
}

impl Prometheus {
    /// Starts Prometheus scraping `127.0.0.1:scrape_port`, keeping its files in `dir`.
    pub fn scraping(scrape_port: u16, dir: &std::path::Path) -> Self {
        let binary = testkit::repo_root().join(".cache/prometheus/usr/bin/prometheus");
        assert!(
            binary.exists(),
            "scripts/setup.sh unpacks Prometheus into {}",
            binary.display()
        );
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gotrace\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{scrape_port}']\n"
            ),
        )
        .expect("config");
        let web_port = free_port();
        let server = Guard(
            Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start prometheus"),
        );
        Self {
            _server: server,
            web_port,
        }
    }

    /// Polls an instant query (URL-encoded `query`) until `done` accepts its result, or fails
    /// after a minute; returns that result.
    pub fn wait_for(&self, query: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={query}");
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut last = Vec::new();
        loop {
            if TcpStream::connect(("127.0.0.1", self.web_port)).is_ok() {
                let (status, _, body) = http(self.web_port, "GET", &path);
                if status == 200 {
                    let doc: serde_json::Value = serde_json::from_slice(&body).expect("json");
                    last = doc["data"]["result"].as_array().cloned().unwrap_or_default();
                    if done(&last) {
                        return last;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never returned what was wanted of {query}; last: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

//! Child processes under test: the service binary and `loadgen bare-server`. Each is started with its
//! listeners on free ports (port 0; the address comes from its "listening" JSON log line), its output goes
//! to a log file, and WARN/ERROR lines are counted for the report.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use serde::{Deserialize, Serialize};

/// What the child logged that matters for the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LogSummary {
    /// WARN lines, except the expected `PUBLISHER=noop` notice.
    pub warn: u64,
    pub error: u64,
    /// Lines on stderr (the service logs JSON to stdout; stderr holds fatal errors and panics).
    pub stderr_lines: u64,
    /// First WARN/ERROR/stderr lines.
    pub samples: Vec<String>,
    /// The "shutdown complete" line, if any.
    pub shutdown: Option<String>,
}

pub struct Spawned {
    pub name: String,
    child: Child,
    pub pid: u32,
    pub http_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The two ports were found from the sockets, not the log line: which is which is not known yet.
    ports_unidentified: bool,
    logs: Arc<Mutex<LogSummary>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub log_path: PathBuf,
}

/// How a child ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exit {
    pub status: String,
    pub clean: bool,
    pub stop_s: f64,
    pub log: LogSummary,
}

fn note_line(logs: &Mutex<LogSummary>, line: &str, stderr: bool) {
    let mut l = logs.lock().unwrap();
    if stderr {
        if line.trim().is_empty() {
            return;
        }
        l.stderr_lines += 1;
    } else {
        let level = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("level").and_then(|x| x.as_str()).map(str::to_string));
        match level.as_deref() {
            Some("WARN") if !line.contains("PUBLISHER=noop") => l.warn += 1,
            Some("ERROR") => l.error += 1,
            _ => {
                if line.contains("shutdown complete") {
                    l.shutdown = Some(line.to_string());
                }
                return;
            }
        }
    }
    if l.samples.len() < 10 {
        l.samples.push(line.chars().take(600).collect());
    }
}

/// The addresses of a "… listening" JSON log line.
fn listening_addrs(line: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    if !line.contains("listening") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let http = v.get("http_addr")?.as_str()?.parse().ok()?;
    let admin = v.get("admin_addr").and_then(|a| a.as_str()).and_then(|a| a.parse().ok());
    Some((http, admin))
}

fn spawn(name: &str, mut cmd: Command, log_path: &Path, expected_ports: usize) -> anyhow::Result<Spawned> {
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let file = Arc::new(Mutex::new(
        std::fs::File::create(log_path).with_context(|| format!("cannot create {}", log_path.display()))?,
    ));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot start {name} ({cmd:?})"))?;
    let pid = child.id();
    let logs = Arc::new(Mutex::new(LogSummary::default()));
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    {
        let out = child.stdout.take().expect("piped stdout");
        let (file, logs) = (file.clone(), logs.clone());
        readers.push(std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = writeln!(file.lock().unwrap(), "{line}");
                if tx.is_some() {
                    if let Some(addrs) = listening_addrs(&line) {
                        let _ = tx.take().unwrap().send(addrs);
                    }
                }
                note_line(&logs, &line, false);
            }
        }));
    }
    {
        let err = child.stderr.take().expect("piped stderr");
        let (file, logs) = (file.clone(), logs.clone());
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(file.lock().unwrap(), "[stderr] {line}");
                note_line(&logs, &line, true);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // The addresses come from the child's "listening" log line; if its log level hides that line, from the
    // listening sockets the child holds (stable over two polls), told apart later by `wait_ready`.
    let mut last_seen: Vec<SocketAddr> = Vec::new();
    let mut unidentified = false;
    let addrs = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(a) => break a,
            Err(mpsc::RecvTimeoutError::Timeout) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(status) = child.try_wait()? {
                    for r in readers {
                        let _ = r.join();
                    }
                    let tail = std::fs::read_to_string(log_path).unwrap_or_default();
                    return Err(anyhow!(
                        "{name} exited ({status}) before listening; log {}:\n{tail}",
                        log_path.display()
                    ));
                }
                let seen = listening_sockets(pid);
                if seen.len() >= expected_ports && seen == last_seen {
                    unidentified = true;
                    break (seen[0], seen.get(1).copied());
                }
                last_seen = seen;
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(anyhow!(
                        "{name} did not listen within 30 s (no listening log line, {} listening sockets; see {})",
                        last_seen.len(),
                        log_path.display()
                    ));
                }
            }
        }
    };
    Ok(Spawned {
        name: name.to_string(),
        child,
        pid,
        http_addr: addrs.0,
        admin_addr: addrs.1,
        ports_unidentified: unidentified,
        logs,
        readers,
        log_path: log_path.to_path_buf(),
    })
}

/// The TCP sockets a process listens on (`/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`), sorted.
fn listening_sockets(pid: u32) -> Vec<SocketAddr> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|x| x.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode(9); st 0A = LISTEN
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                if let Some(addr) = parse_proc_addr(f[1]) {
                    out.push(addr);
                }
            }
        }
    }
    out.sort();
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6), as in /proc/net/tcp: 32-bit words in host order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip: std::net::IpAddr = match ip.len() {
        8 => std::net::Ipv4Addr::from(word(0)?).into(),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            std::net::Ipv6Addr::from(b).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Starts the service binary with the benchmark settings, `extra` env last (it wins).
pub fn spawn_service(bin: &Path, env: &[(String, String)], log_path: &Path) -> anyhow::Result<Spawned> {
    if !bin.exists() {
        return Err(anyhow!(
            "service binary {} not found: build it with `cargo build --release -p event-ingestor --locked`",
            bin.display()
        ));
    }
    let mut cmd = Command::new(bin);
    // Nothing from this shell's environment may change the service under test.
    for (k, _) in std::env::vars() {
        if k.starts_with("KAFKA_") || k == "CONFIG_FILE" || k.starts_with("OTEL_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn("event-ingestor", cmd, log_path, 2)
}

/// Starts `loadgen bare-server` (this executable) in its own process.
pub fn spawn_bare(threads: usize, log_path: &Path) -> anyhow::Result<Spawned> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bare-server", "--bind", "127.0.0.1:0", "--threads", &threads.to_string()]);
    spawn("bare-server", cmd, log_path, 1)
}

impl Spawned {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    pub fn peak_rss_kib(&self) -> Option<u64> {
        crate::common::proc_status_kib(self.pid, "VmHWM")
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::common::proc_cpu_seconds(self.pid)
    }

    /// Waits until `GET /readyz` on the admin port answers 200 (no admin port: ready once listening).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if self.ports_unidentified {
            self.identify_ports().await?;
        }
        let Some(admin) = self.admin_addr else { return Ok(()) };
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match http_get(admin, "/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(anyhow!("{} exited ({status}) before ready; see {}", self.name, self.log_path.display()));
            }
            if Instant::now() > deadline {
                return Err(anyhow!("{} not ready after {timeout:?}: {last}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Tells the admin port from the ingest port: only the admin port answers `/readyz` with its checks.
    async fn identify_ports(&mut self) -> anyhow::Result<()> {
        let Some(second) = self.admin_addr else {
            self.ports_unidentified = false;
            return Ok(());
        };
        let is_admin = |r: &anyhow::Result<(u16, String)>| matches!(r, Ok((status, body)) if (*status == 200 || *status == 503) && body.contains("\"checks\""));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (a, b) = (http_get(self.http_addr, "/readyz").await, http_get(second, "/readyz").await);
            match (is_admin(&a), is_admin(&b)) {
                (false, true) => break,
                (true, false) => {
                    self.admin_addr = Some(self.http_addr);
                    self.http_addr = second;
                    break;
                }
                _ if Instant::now() > deadline => {
                    return Err(anyhow!(
                        "cannot tell the admin port from the ingest port of {} ({} / {})",
                        self.name,
                        self.http_addr,
                        second
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.ports_unidentified = false;
        Ok(())
    }

    /// The counters of `GET /metrics` on the admin port that say where events went.
    pub async fn scrape_metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let mut out = std::collections::BTreeMap::new();
        let Some(admin) = self.admin_addr else { return out };
        let Ok((200, text)) = http_get(admin, "/metrics").await else { return out };
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let interesting = ["events_", "http_requests_total", "ingest_queue_size"];
            if !interesting.iter().any(|p| line.starts_with(p)) {
                continue;
            }
            if let Some((name, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    out.insert(name.to_string(), v);
                }
            }
        }
        out
    }

    /// SIGTERM, then SIGKILL after `timeout`; collects the log summary.
    pub async fn stop(mut self, timeout: Duration) -> Exit {
        let started = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let mut killed = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.to_string(),
                Ok(None) if started.elapsed() > timeout && !killed => {
                    let _ = self.child.kill();
                    killed = true;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => break format!("wait failed: {e}"),
            }
        };
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        let log = self.logs.lock().unwrap().clone();
        let clean = !killed && status.contains("exit status: 0");
        Exit {
            status: if killed { format!("killed after {timeout:?}: {status}") } else { status },
            clean,
            stop_s: started.elapsed().as_secs_f64(),
            log,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Never leave a child behind on an error path.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One GET over a fresh HTTP/1.1 connection; (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path).header(hyper::header::HOST, addr.to_string()).body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await??.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Samples `VmRSS` of any process every 100 ms; the maximum, in KiB.
pub struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Option<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = None;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(v) = crate::common::proc_status_kib(pid, "VmRSS") {
                    max = Some(max.map_or(v, |m: u64| m.max(v)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        });
        RssSampler { stop, handle }
    }

    pub fn finish(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

/// `loadgen bare-server`: an axum server that answers `POST /events` with 202 after reading the body, and
/// does nothing else. Runs in its own process so that it shares no runtime with the load generator.
pub fn bare_server(bind: &str, threads: usize) -> anyhow::Result<()> {
    use axum::routing::{get, post};
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        rt.worker_threads(threads);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("bind {bind}"))?;
        let addr = listener.local_addr()?;
        println!(
            "{}",
            serde_json::json!({"level": "INFO", "message": "loadgen bare-server listening", "http_addr": addr.to_string()})
        );
        std::io::stdout().flush().ok();
        let app = axum::Router::new()
            .route("/events", post(|_body: bytes::Bytes| async { axum::http::StatusCode::ACCEPTED }))
            .route("/readyz", get(|| async { "ok" }));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses() {
        assert_eq!(parse_proc_addr("0100007F:1F90").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:0050").unwrap(), "[::1]:80".parse().unwrap());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening_sockets(std::process::id()).contains(&l.local_addr().unwrap()));
    }

    #[test]
    fn parses_the_listening_line() {
        let line = r#"{"timestamp":"x","level":"INFO","http_addr":"127.0.0.1:4321","admin_addr":"127.0.0.1:4322","message":"event-ingestor listening"}"#;
        let (h, a) = listening_addrs(line).unwrap();
        assert_eq!(h.port(), 4321);
        assert_eq!(a.unwrap().port(), 4322);
        assert!(listening_addrs(r#"{"message":"other"}"#).is_none());
    }

    #[test]
    fn counts_warnings_but_not_the_noop_notice() {
        let logs = Mutex::new(LogSummary::default());
        note_line(&logs, r#"{"level":"WARN","message":"PUBLISHER=noop: events are acknowledged and dropped"}"#, false);
        note_line(&logs, r#"{"level":"WARN","message":"something"}"#, false);
        note_line(&logs, r#"{"level":"ERROR","message":"bad"}"#, false);
        note_line(&logs, r#"{"level":"INFO","message":"shutdown complete"}"#, false);
        note_line(&logs, "thread 'main' panicked", true);
        let l = logs.lock().unwrap();
        assert_eq!((l.warn, l.error, l.stderr_lines), (1, 1, 1));
        assert!(l.shutdown.is_some());
    }
}

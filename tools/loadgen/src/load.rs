//! The HTTP load engine: N keep-alive HTTP/1.1 connections (one `http1::Conn` each, so the connection
//! count is exact), closed-loop (as fast as answers come back) or open-loop (`--rate`: request
//! `i` is due at `start + i/rate`, and its latency is measured from that intended time, so a stalled
//! server is charged for the requests it kept waiting — no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use hdrhistogram::Histogram;
use hyper::{StatusCode, Uri};

use crate::common::{new_histogram, record_us, Ack};
use crate::http1;
use crate::payload::Payloads;
use crate::verify::AckSet;

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub connections: usize,
    /// Requests per second (open loop); None: closed loop, as fast as the target answers.
    pub rate: Option<f64>,
    /// Hard limit on the sending phase.
    pub duration: Duration,
    /// Requests to send at most.
    pub count: Option<u64>,
    /// Requests started before this are sent and verified but not counted in rates and latencies.
    pub warmup: Duration,
    pub timeout: Duration,
    pub ack: Option<Ack>,
    /// Worker threads of a runtime of the load's own; None: the caller's runtime.
    pub threads: Option<usize>,
    /// Prefix of the progress lines.
    pub label: String,
    pub quiet: bool,
}

/// What the load phase saw, from the client's side.
pub struct LoadOutcome {
    pub requests_sent: u64,
    pub responses: u64,
    pub ok_2xx: u64,
    /// By status code, with the problem `code` for errors (`503 queue_full`), plus `timeout`,
    /// `transport_error`, `connect_error`.
    pub status_counts: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub connects: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    /// Size of the sequence space used (highest request index + 1) × batch.
    pub seq_space: u64,
    pub acked: AckSet,
    /// The measured window: from the end of warm-up to the last answer of a request started in it.
    pub window_s: f64,
    pub window_ok: u64,
    pub window_responses: u64,
    pub window_events_acked: u64,
    /// 2xx latency from the intended send time (open loop) or the send (closed loop).
    pub latency: Histogram<u64>,
    /// 2xx latency from the moment the request was actually written.
    pub service_latency: Histogram<u64>,
    /// Non-2xx answers, from the actual send.
    pub rejection_latency: Histogram<u64>,
    /// Non-2xx answers, from the actual send to the kernel's receipt of the answer: without the time this
    /// client's own thread took to notice it, which on a shared machine is part of `rejection_latency`.
    pub rejection_kernel_latency: Histogram<u64>,
    /// Start of sending to the last answer.
    pub elapsed_s: f64,
    pub client_cpu_s: f64,
}

#[derive(Default)]
struct Progress {
    done: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    events_acked: AtomicU64,
    max_us: AtomicU64,
}

struct Ctx {
    addr: SocketAddr,
    host: String,
    path: String,
    payloads: Arc<Payloads>,
    spec: LoadSpec,
    start: Instant,
    end: Instant,
    warmup_end: Instant,
    next: AtomicU64,
    progress: Progress,
}

struct WorkerStats {
    sent: u64,
    responses: u64,
    ok: u64,
    status: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    connects: u64,
    max_index: u64,
    acked_requests: Vec<u64>,
    acked_items: Vec<u64>,
    events_acked: u64,
    window_ok: u64,
    window_responses: u64,
    window_events_acked: u64,
    last_window_done: Option<Instant>,
    last_done: Option<Instant>,
    latency: Histogram<u64>,
    service_latency: Histogram<u64>,
    rejection_latency: Histogram<u64>,
    rejection_kernel_latency: Histogram<u64>,
}

impl WorkerStats {
    fn new() -> Self {
        WorkerStats {
            sent: 0,
            responses: 0,
            ok: 0,
            status: BTreeMap::new(),
            error_samples: Vec::new(),
            connects: 0,
            max_index: 0,
            acked_requests: Vec::new(),
            acked_items: Vec::new(),
            events_acked: 0,
            window_ok: 0,
            window_responses: 0,
            window_events_acked: 0,
            last_window_done: None,
            last_done: None,
            latency: new_histogram(),
            service_latency: new_histogram(),
            rejection_latency: new_histogram(),
            rejection_kernel_latency: new_histogram(),
        }
    }

    fn error(&mut self, key: &str, detail: String) {
        *self.status.entry(key.to_string()).or_default() += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(detail);
        }
    }
}

/// Splits an `http://host:port/path?query` URL; adds `ack=` when asked.
fn parse_url(url: &str, ack: Option<Ack>) -> anyhow::Result<(String, u16, String)> {
    let uri: Uri = url.parse().with_context(|| format!("invalid URL {url:?}"))?;
    if uri.scheme_str().unwrap_or("http") != "http" {
        return Err(anyhow!("only http:// URLs are supported: {url}"));
    }
    let host = uri.host().ok_or_else(|| anyhow!("URL without host: {url}"))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let mut path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    if path.is_empty() {
        path = "/".into();
    }
    if let Some(ack) = ack {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str("ack=");
        path.push_str(ack.name());
    }
    Ok((host, port, path))
}

/// The load's own runtime, if it has one: shut down without blocking when dropped (it is dropped inside
/// another runtime, where a plain drop would panic); connections still open close with it.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs the load against `url` and returns what the client saw.
pub async fn run_http(url: &str, payloads: Arc<Payloads>, spec: &LoadSpec) -> anyhow::Result<LoadOutcome> {
    let (host, port, path) = parse_url(url, spec.ack)?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| anyhow!("{host} does not resolve"))?;
    if !addr.ip().is_loopback() {
        // This tool is for benchmarks on one machine; it never loads a remote host.
        return Err(anyhow!("refusing to send load to non-loopback address {addr}"));
    }
    let host_header = if port == 80 { host.clone() } else { format!("{host}:{port}") };

    let cpu0 = crate::common::self_cpu_seconds();
    let start = Instant::now();
    let warmup = if spec.warmup >= spec.duration { Duration::ZERO } else { spec.warmup };
    let ctx = Arc::new(Ctx {
        addr,
        host: host_header,
        path,
        payloads: payloads.clone(),
        spec: spec.clone(),
        start,
        end: start + spec.duration,
        warmup_end: start + warmup,
        next: AtomicU64::new(0),
        progress: Progress::default(),
    });

    let stop = Arc::new(AtomicBool::new(false));
    let progress = (!spec.quiet).then(|| tokio::spawn(report_progress(ctx.clone(), stop.clone())));

    // The connections' tasks run on the load's own runtime
    // when it has one; their handles are awaited from this one.
    let own_runtime = OwnRuntime(
        spec.threads
            .map(|n| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(n)
                    .thread_name("loadgen-load")
                    .enable_all()
                    .build()
                    .context("the load's runtime")
            })
            .transpose()?,
    );
    let runtime = own_runtime.0.as_ref().map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone());
    let mut handles = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections.max(1) {
        handles.push(runtime.spawn(worker(ctx.clone())));
    }
    let mut all = WorkerStats::new();
    for h in handles {
        let w = h.await.context("load worker panicked")?;
        all.sent += w.sent;
        all.responses += w.responses;
        all.ok += w.ok;
        for (k, v) in w.status {
            *all.status.entry(k).or_default() += v;
        }
        for s in w.error_samples {
            if all.error_samples.len() < 5 {
                all.error_samples.push(s);
            }
        }
        all.connects += w.connects;
        all.max_index = all.max_index.max(w.max_index);
        all.acked_requests.extend(w.acked_requests);
        all.acked_items.extend(w.acked_items);
        all.events_acked += w.events_acked;
        all.window_ok += w.window_ok;
        all.window_responses += w.window_responses;
        all.window_events_acked += w.window_events_acked;
        all.last_window_done = all.last_window_done.max(w.last_window_done);
        all.last_done = all.last_done.max(w.last_done);
        all.latency.add(&w.latency).ok();
        all.service_latency.add(&w.service_latency).ok();
        all.rejection_latency.add(&w.rejection_latency).ok();
        all.rejection_kernel_latency.add(&w.rejection_kernel_latency).ok();
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    drop(own_runtime);

    let batch = payloads.batch as u64;
    let seq_space = all.max_index * batch;
    let mut acked = AckSet::new(seq_space);
    for r in &all.acked_requests {
        acked.set_range(r * batch, batch);
    }
    for s in &all.acked_items {
        acked.set(*s);
    }
    let window_s =
        all.last_window_done.map(|t| t.saturating_duration_since(ctx.warmup_end).as_secs_f64()).unwrap_or(0.0);
    let elapsed_s = all.last_done.map(|t| t.saturating_duration_since(start).as_secs_f64()).unwrap_or(0.0);
    Ok(LoadOutcome {
        requests_sent: all.sent,
        responses: all.responses,
        ok_2xx: all.ok,
        status_counts: all.status,
        error_samples: all.error_samples,
        connects: all.connects,
        events_sent: all.sent * batch,
        events_acked: acked.count(),
        seq_space,
        acked,
        window_s,
        window_ok: all.window_ok,
        window_responses: all.window_responses,
        window_events_acked: all.window_events_acked,
        latency: all.latency,
        service_latency: all.service_latency,
        rejection_latency: all.rejection_latency,
        rejection_kernel_latency: all.rejection_kernel_latency,
        elapsed_s,
        client_cpu_s: crate::common::self_cpu_seconds() - cpu0,
    })
}

async fn worker(ctx: Arc<Ctx>) -> WorkerStats {
    let mut st = WorkerStats::new();
    let mut conn: Option<http1::Conn> = None;
    let (mut request, mut body) = (Vec::new(), Vec::new());
    let mut headers = vec![("host", ctx.host.as_str()), ("content-type", ctx.payloads.content_type())];
    if ctx.payloads.gzip {
        headers.push(("content-encoding", "gzip"));
    }
    let batch = ctx.payloads.batch as u64;
    loop {
        let i = ctx.next.fetch_add(1, Ordering::Relaxed);
        if ctx.spec.count.is_some_and(|c| i >= c) {
            break;
        }
        let intended = match ctx.spec.rate {
            Some(rate) => ctx.start + Duration::from_secs_f64(i as f64 / rate),
            None => Instant::now(),
        };
        if intended >= ctx.end {
            break;
        }
        if ctx.spec.rate.is_some() {
            tokio::time::sleep_until(intended.into()).await;
        }

        // A connection that the server closed is replaced before the request, not counted as an error.
        let mut c = match conn.take() {
            Some(c) if c.reusable() => c,
            _ => match http1::Conn::connect(ctx.addr).await {
                Ok(c) => {
                    st.connects += 1;
                    c
                }
                Err(e) => {
                    st.sent += 1;
                    st.max_index = st.max_index.max(i + 1);
                    st.error("connect_error", format!("connect {}: {e}", ctx.addr));
                    ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };

        ctx.payloads.write_body(&mut body, i);
        http1::post(&mut request, &ctx.path, &headers, &body);
        st.sent += 1;
        st.max_index = st.max_index.max(i + 1);
        let sent_at = Instant::now();
        let result = tokio::time::timeout(ctx.spec.timeout, c.send(&request)).await;
        let done = Instant::now();
        let in_window = intended >= ctx.warmup_end;
        ctx.progress.done.fetch_add(1, Ordering::Relaxed);
        st.last_done = Some(done);
        match result {
            Ok(Ok(http1::Answer { status, body, kernel_latency })) => {
                conn = Some(c);
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                st.responses += 1;
                if in_window {
                    st.window_responses += 1;
                    st.last_window_done = Some(done);
                }
                if status.is_success() {
                    st.ok += 1;
                    *st.status.entry(status.as_u16().to_string()).or_default() += 1;
                    let n = if status == StatusCode::MULTI_STATUS {
                        // Some items refused: only the accepted ones are owed to Kafka.
                        let before = st.acked_items.len();
                        collect_accepted_ids(&body, &ctx.payloads, &mut st.acked_items);
                        (st.acked_items.len() - before) as u64
                    } else {
                        st.acked_requests.push(i);
                        batch
                    };
                    st.events_acked += n;
                    ctx.progress.ok.fetch_add(1, Ordering::Relaxed);
                    ctx.progress.events_acked.fetch_add(n, Ordering::Relaxed);
                    let lat = done - intended;
                    ctx.progress.max_us.fetch_max(lat.as_micros() as u64, Ordering::Relaxed);
                    if in_window {
                        st.window_ok += 1;
                        st.window_events_acked += n;
                        record_us(&mut st.latency, lat);
                        record_us(&mut st.service_latency, done - sent_at);
                    }
                } else {
                    let code = problem_code(&body);
                    let key = match code {
                        Some(code) => format!("{} {code}", status.as_u16()),
                        None => status.as_u16().to_string(),
                    };
                    if st.error_samples.len() < 5 && !st.status.contains_key(&key) {
                        st.error_samples
                            .push(format!("{key}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])));
                    }
                    *st.status.entry(key).or_default() += 1;
                    ctx.progress.rejected.fetch_add(1, Ordering::Relaxed);
                    if in_window {
                        record_us(&mut st.rejection_latency, done - sent_at);
                        if let Some(k) = kernel_latency {
                            record_us(&mut st.rejection_kernel_latency, k);
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                st.error("transport_error", format!("request {i}: {e}"));
                ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                st.error("timeout", format!("request {i}: no answer within {:?}", ctx.spec.timeout));
                ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    st
}

/// The `code` of an RFC 9457 problem body, if it is one.
fn problem_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("code")?.as_str().map(str::to_string)
}

/// Ids of the items a 207 answer accepted (`accepted` or `published`).
fn collect_accepted_ids(body: &[u8], payloads: &Payloads, out: &mut Vec<u64>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    let Some(results) = v.get("results").and_then(|r| r.as_array()) else { return };
    for item in results {
        let status = item.get("status").and_then(|s| s.as_str()).unwrap_or("");
        if status == "accepted" || status == "published" {
            if let Some(seq) = item.get("id").and_then(|i| i.as_str()).and_then(|id| payloads.parse_seq(id)) {
                out.push(seq);
            }
        }
    }
}

async fn report_progress(ctx: Arc<Ctx>, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let p = &ctx.progress;
    let (mut done0, mut ev0) = (0u64, 0u64);
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (done, ok, ev) =
            (p.done.load(Ordering::Relaxed), p.ok.load(Ordering::Relaxed), p.events_acked.load(Ordering::Relaxed));
        let max_ms = p.max_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        eprintln!(
            "[{}] t={:>3.0}s  {:>7} req/s  {:>8} events/s  2xx {:>9}  non-2xx {:>6}  errors {:>4}  max {:>7.1} ms",
            ctx.spec.label,
            ctx.start.elapsed().as_secs_f64(),
            done - done0,
            ev - ev0,
            ok,
            p.rejected.load(Ordering::Relaxed),
            p.errors.load(Ordering::Relaxed),
            max_ms,
        );
        (done0, ev0) = (done, ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (h, p, path) = parse_url("http://127.0.0.1:8080/events", Some(Ack::Kafka)).unwrap();
        assert_eq!((h.as_str(), p, path.as_str()), ("127.0.0.1", 8080, "/events?ack=kafka"));
        let (_, p, path) = parse_url("http://localhost/events?x=1", Some(Ack::Queued)).unwrap();
        assert_eq!((p, path.as_str()), (80, "/events?x=1&ack=queued"));
        assert!(parse_url("https://x/events", None).is_err());
    }

    #[test]
    fn accepted_ids_of_a_partial_answer() {
        let p = Payloads::new("lgx", 3, crate::common::Format::Json, false, 1);
        let body = br#"{"status":"partial","results":[{"index":0,"id":"lgx-3","status":"accepted"},
            {"index":1,"status":"rejected"},{"index":2,"id":"lgx-5","status":"published"}]}"#;
        let mut out = Vec::new();
        collect_accepted_ids(body, &p, &mut out);
        assert_eq!(out, [3, 5]);
        assert_eq!(problem_code(br#"{"code":"queue_full","status":503}"#).as_deref(), Some("queue_full"));
    }
}

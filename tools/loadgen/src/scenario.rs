//! One run of one target: set up (topics, child process), load, measure, tear down, read back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use serde::{Deserialize, Serialize};

use crate::common::{fmt_duration, new_run_id, now_rfc3339, CpuWatch, Latency, Target};
use crate::load::{LoadOutcome, LoadSpec};
use crate::payload::Payloads;
use crate::service::{self, Exit, RssSampler};
use crate::verify::{self, Verification};
use crate::{LoadArgs, TargetArgs};

/// Everything one run measured. Rates are over the measured window (after warm-up).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub label: String,
    pub run_id: String,
    pub started_at: String,
    pub url: Option<String>,
    pub topic: Option<String>,
    // The load.
    pub connections: usize,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub count: Option<u64>,
    pub batch: usize,
    pub format: String,
    pub gzip: bool,
    pub ack: Option<String>,
    pub payload_bytes: usize,
    pub loadgen_threads: usize,
    // What the client saw.
    pub requests_sent: u64,
    pub responses: u64,
    pub ok_2xx: u64,
    pub status_counts: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub connects: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    pub window_s: f64,
    /// 2xx answers per second.
    pub req_per_s: f64,
    /// Answers of any status per second.
    pub responses_per_s: f64,
    /// Events in 2xx answers per second.
    pub events_per_s: f64,
    /// `events_per_s` × the share of acknowledged events found in Kafka (None: not checked).
    pub delivered_events_per_s: Option<f64>,
    /// 2xx latency: open loop from the intended send time, closed loop from the send.
    pub latency: Latency,
    /// 2xx latency from the actual send (equal to `latency` in closed loop).
    pub service_latency: Latency,
    /// Non-2xx answers, from the actual send.
    pub rejection_latency: Latency,
    /// Non-2xx answers, from the actual send to the kernel's receipt of the answer (loadgen's own delay in
    /// noticing it left out).
    #[serde(default)]
    pub rejection_kernel_latency: Latency,
    pub elapsed_s: f64,
    // What Kafka holds.
    pub verification: Option<Verification>,
    pub delivered: Option<u64>,
    pub missing: Option<u64>,
    pub duplicates: Option<u64>,
    // The target process.
    pub target_pid: Option<u32>,
    /// VmHWM once ready, before any load (KiB).
    pub rss_idle_kib: Option<u64>,
    /// VmHWM at the end of the load (spawned targets) or the largest sampled VmRSS (`--pid`) (KiB).
    pub rss_peak_kib: Option<u64>,
    /// CPU seconds the target used during the load phase.
    pub target_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
    /// The machine during the load phase: busy cores, the broker's share, and other work (noise).
    pub cpu: Option<crate::common::CpuShare>,
    pub service_metrics: BTreeMap<String, f64>,
    pub exit: Option<Exit>,
    pub log_file: Option<String>,
    pub notes: Vec<String>,
}

pub fn load_spec(load: &LoadArgs, label: &str, quiet: bool) -> LoadSpec {
    let duration =
        load.duration.unwrap_or(if load.count.is_some() { Duration::from_secs(120) } else { Duration::from_secs(10) });
    let warmup = load.warmup.unwrap_or(if load.count.is_some() { Duration::ZERO } else { Duration::from_secs(1) });
    LoadSpec {
        connections: load.connections,
        rate: load.rate.filter(|r| *r > 0.0),
        duration,
        count: load.count,
        warmup,
        timeout: load.timeout,
        ack: load.ack,
        threads: load.load_threads.map(|n| n.max(1)),
        label: label.to_string(),
        quiet,
    }
}

/// The service's settings for a benchmark: loopback, free ports (found from its listening sockets), no rate
/// limit, no drain delay, WARN logs.
fn service_env(
    opts: &TargetArgs,
    topic: &str,
    dlq: &str,
    noop: bool,
    spool: &std::path::Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let spool = spool.display().to_string();
    let mut env: Vec<(String, String)> = [
        ("BIND_ADDRESS", "127.0.0.1"),
        ("HTTP_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("KAFKA_BROKERS", opts.brokers.as_str()),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_DLQ_TOPIC", dlq),
        ("ACK_MODE", "queued"),
        ("RATE_LIMIT_RPS", "0"),
        ("SHUTDOWN_DRAIN_DELAY", "0s"),
        ("LOG_LEVEL", "WARN"),
        ("PUBLISHER", if noop { "noop" } else { "kafka" }),
        // A fresh spool and ledger per run: nothing of an earlier run may be replayed into this one.
        ("SPOOL_DIR", spool.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for kv in &opts.service_env {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--service-env wants KEY=VALUE, got {kv:?}"))?;
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    Ok(env)
}

/// One run of `target` with `load`.
pub async fn run_scenario(
    target: Target,
    load: &LoadArgs,
    opts: &TargetArgs,
    label: &str,
    threads: usize,
) -> anyhow::Result<RunResult> {
    verify::check_loopback_brokers(&opts.brokers)?;
    let run_id = new_run_id();
    let started_at = now_rfc3339();
    let spec = load_spec(load, label, opts.quiet);
    let payloads = Arc::new(Payloads::new(&run_id, load.batch, load.format, load.gzip, load.payload_bytes));
    let log_path = opts.log_dir.join(format!("{run_id}-{}.log", target.name()));
    let mut notes = Vec::new();
    if !opts.quiet {
        eprintln!("[{label}] run {run_id}: {} target, {}", target.name(), describe_load(load, &spec));
    }

    let mut url = None;
    let mut topic = None;
    let mut rss_idle = None;
    let mut rss_peak = None;
    let mut target_cpu = None;
    let mut target_pid = None;
    let mut metrics = BTreeMap::new();
    let mut exit = None;
    let mut log_file = None;
    let mut verification = None;
    let mut cpu_share = None;
    let broker_pid = opts.broker_pid.or_else(crate::common::kafka_sh_broker_pid);

    let outcome: LoadOutcome = match target {
        Target::Url => {
            let u = opts.url.clone().ok_or_else(|| anyhow!("--target url needs --url"))?;
            url = Some(u.clone());
            let sampler = opts.pid.map(RssSampler::start);
            let cpu0 = opts.pid.and_then(crate::common::proc_cpu_seconds);
            let watch = CpuWatch::start(broker_pid);
            let out = crate::load::run_http(&u, payloads.clone(), &spec).await?;
            if let Some(pid) = opts.pid {
                target_pid = Some(pid);
                target_cpu = cpu0.zip(crate::common::proc_cpu_seconds(pid)).map(|(a, b)| b - a);
            }
            cpu_share = Some(watch.finish(target_cpu.unwrap_or(0.0) + out.client_cpu_s));
            rss_peak = sampler.and_then(RssSampler::finish);
            if let (Some(t), false) = (&opts.topic, opts.no_verify) {
                topic = Some(t.clone());
                verification = Some(read_back(opts, t, None, &run_id, &out).await?);
            }
            out
        }
        Target::Bare => {
            let mut child = service::spawn_bare(opts.bare_threads, &log_path)?;
            child.wait_ready(Duration::from_secs(10)).await?;
            let u = child.url("/events");
            url = Some(u.clone());
            target_pid = Some(child.pid);
            tokio::time::sleep(Duration::from_millis(200)).await;
            rss_idle = child.peak_rss_kib();
            let cpu0 = child.cpu_seconds();
            let watch = CpuWatch::start(broker_pid);
            let out = crate::load::run_http(&u, payloads.clone(), &spec).await;
            target_cpu = cpu0.zip(child.cpu_seconds()).map(|(a, b)| b - a);
            let client = out.as_ref().map(|o| o.client_cpu_s).unwrap_or(0.0);
            cpu_share = Some(watch.finish(target_cpu.unwrap_or(0.0) + client));
            rss_peak = child.peak_rss_kib();
            log_file = Some(child.log_path.display().to_string());
            exit = Some(child.stop(Duration::from_secs(10)).await);
            out?
        }
        Target::Full | Target::FullNoop => {
            let t = format!("loadgen-{run_id}");
            let dlq = format!("{t}-dlq");
            let spool_dir = std::path::absolute(
                opts.log_dir.parent().unwrap_or(std::path::Path::new(".")).join("spool").join(&run_id),
            )?;
            verify::create_topics(&opts.brokers, &[&t, &dlq], opts.partitions).await?;
            topic = Some(t.clone());
            let result = async {
                let env = service_env(opts, &t, &dlq, target == Target::FullNoop, &spool_dir)?;
                let mut child = service::spawn_service(&opts.service_bin, &env, &log_path)?;
                log_file = Some(child.log_path.display().to_string());
                target_pid = Some(child.pid);
                child.wait_ready(Duration::from_secs(30)).await?;
                let u = child.url("/events");
                url = Some(u.clone());
                // Idle: after start-up and the first metadata round, before any load.
                tokio::time::sleep(Duration::from_millis(500)).await;
                rss_idle = child.peak_rss_kib();
                let cpu0 = child.cpu_seconds();
                let watch = CpuWatch::start(broker_pid);
                let out = crate::load::run_http(&u, payloads.clone(), &spec).await;
                target_cpu = cpu0.zip(child.cpu_seconds()).map(|(a, b)| b - a);
                let client = out.as_ref().map(|o| o.client_cpu_s).unwrap_or(0.0);
                cpu_share = Some(watch.finish(target_cpu.unwrap_or(0.0) + client));
                rss_peak = child.peak_rss_kib();
                metrics = child.scrape_metrics().await;
                // SIGTERM: the service drains its queue and flushes the producer before it exits.
                let e = child.stop(Duration::from_secs(40)).await;
                if !e.clean {
                    notes.push(format!("service did not exit cleanly: {}", e.status));
                }
                exit = Some(e);
                let out = out?;
                if target == Target::Full && !opts.no_verify {
                    verification = Some(read_back(opts, &t, Some(&dlq), &run_id, &out).await?);
                }
                anyhow::Ok(out)
            }
            .await;
            if !opts.keep_topics {
                verify::delete_topics(&opts.brokers, &[&t, &dlq]).await;
            }
            // The spool should hold nothing but the ledger after a clean stop; keep it otherwise.
            let spooled: u64 = std::fs::read_dir(&spool_dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name() != "ledger")
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            if spooled > 0 {
                notes.push(format!("the service left {spooled} bytes in its spool {}", spool_dir.display()));
            } else {
                let _ = std::fs::remove_dir_all(&spool_dir);
            }
            result?
        }
        Target::RawKafka => {
            let t = format!("loadgen-{run_id}-raw");
            verify::create_topics(&opts.brokers, &[&t], opts.partitions).await?;
            topic = Some(t.clone());
            let result = async {
                let (brokers, tt, p, s) = (opts.brokers.clone(), t.clone(), payloads.clone(), spec.clone());
                let watch = CpuWatch::start(broker_pid);
                let out = tokio::task::spawn_blocking(move || crate::raw_kafka::run_raw(&brokers, &tt, &p, &s))
                    .await
                    .context("raw-kafka thread")??;
                cpu_share = Some(watch.finish(out.client_cpu_s));
                if !opts.no_verify {
                    verification = Some(read_back(opts, &t, None, &run_id, &out).await?);
                }
                anyhow::Ok(out)
            }
            .await;
            if !opts.keep_topics {
                verify::delete_topics(&opts.brokers, &[&t]).await;
            }
            result?
        }
    };

    let window = outcome.window_s;
    let per_s = |n: u64| if window > 0.0 { n as f64 / window } else { 0.0 };
    let events_per_s = per_s(outcome.window_events_acked);
    let delivered_events_per_s =
        verification.as_ref().map(
            |v| {
                if v.acked == 0 {
                    0.0
                } else {
                    events_per_s * v.delivered as f64 / v.acked as f64
                }
            },
        );
    if let Some(v) = &verification {
        if !v.complete {
            notes.push(format!(
                "read-back stopped at the settle timeout with {} acknowledged events not found",
                v.missing
            ));
        }
        if v.missing > 0 {
            notes.push(format!(
                "MISSING: {} acknowledged events not in {}, e.g. {:?}",
                v.missing, v.topic, v.missing_sample
            ));
        }
        if v.duplicates > 0 {
            notes.push(format!(
                "DUPLICATES: {} extra copies in {}, e.g. {:?}",
                v.duplicates, v.topic, v.duplicate_offsets
            ));
        }
        if v.dlq_records.unwrap_or(0) > 0 {
            notes.push(format!("{} records in the dead-letter topic", v.dlq_records.unwrap_or(0)));
        }
    }
    if outcome.ok_2xx < outcome.requests_sent {
        notes.push(format!(
            "{} of {} requests without 2xx: {:?}",
            outcome.requests_sent - outcome.ok_2xx,
            outcome.requests_sent,
            outcome.status_counts
        ));
    }

    let result = RunResult {
        scenario: target.name().to_string(),
        label: label.to_string(),
        run_id,
        started_at,
        url,
        topic,
        connections: if target == Target::RawKafka { 0 } else { spec.connections },
        rate: spec.rate,
        duration_s: spec.duration.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        count: spec.count,
        batch: load.batch,
        format: format!("{:?}", load.format).to_lowercase(),
        gzip: load.gzip,
        ack: load.ack.map(|a| a.name().to_string()),
        payload_bytes: load.payload_bytes,
        loadgen_threads: spec.threads.unwrap_or(threads),
        requests_sent: outcome.requests_sent,
        responses: outcome.responses,
        ok_2xx: outcome.ok_2xx,
        status_counts: outcome.status_counts.clone(),
        error_samples: outcome.error_samples.clone(),
        connects: outcome.connects,
        events_sent: outcome.events_sent,
        events_acked: outcome.events_acked,
        window_s: window,
        req_per_s: per_s(outcome.window_ok),
        responses_per_s: per_s(outcome.window_responses),
        events_per_s,
        delivered_events_per_s,
        latency: Latency::from_hist(&outcome.latency),
        service_latency: Latency::from_hist(&outcome.service_latency),
        rejection_latency: Latency::from_hist(&outcome.rejection_latency),
        rejection_kernel_latency: Latency::from_hist(&outcome.rejection_kernel_latency),
        elapsed_s: outcome.elapsed_s,
        delivered: verification.as_ref().map(|v| v.delivered),
        missing: verification.as_ref().map(|v| v.missing),
        duplicates: verification.as_ref().map(|v| v.duplicates),
        verification,
        target_pid,
        rss_idle_kib: rss_idle,
        rss_peak_kib: rss_peak,
        target_cpu_s: target_cpu,
        client_cpu_s: outcome.client_cpu_s,
        cpu: cpu_share,
        service_metrics: metrics,
        exit,
        log_file,
        notes,
    };
    if !opts.quiet {
        eprintln!("[{label}] {}", crate::report::one_line(&result));
    }
    Ok(result)
}

async fn read_back(
    opts: &TargetArgs,
    topic: &str,
    dlq: Option<&str>,
    run_id: &str,
    out: &LoadOutcome,
) -> anyhow::Result<Verification> {
    let (brokers, topic, dlq, run_id) =
        (opts.brokers.clone(), topic.to_string(), dlq.map(str::to_string), run_id.to_string());
    let (acked, space, settle) = (out.acked.clone(), out.seq_space, opts.settle);
    tokio::task::spawn_blocking(move || {
        verify::consume_back(&brokers, &topic, dlq.as_deref(), &run_id, &acked, space, settle)
    })
    .await
    .context("read-back thread")?
}

pub fn describe_load(load: &LoadArgs, spec: &LoadSpec) -> String {
    let mut s = format!("{} connections, ", spec.connections);
    match spec.rate {
        Some(r) => s.push_str(&format!("open loop {r:.0} req/s, ")),
        None => s.push_str("closed loop, "),
    }
    match spec.count {
        Some(c) => s.push_str(&format!("{c} requests (at most {}), ", fmt_duration(spec.duration))),
        None => s.push_str(&format!(
            "{} (+{} warm-up), ",
            fmt_duration(spec.duration.saturating_sub(spec.warmup)),
            fmt_duration(spec.warmup)
        )),
    }
    if load.batch > 1 {
        s.push_str(&format!("batches of {} ({:?}), ", load.batch, load.format).to_lowercase());
    } else {
        s.push_str("single events, ");
    }
    if load.gzip {
        s.push_str("gzip, ");
    }
    s.push_str(&format!("ack={}", load.ack.map(|a| a.name()).unwrap_or("(service default)")));
    s
}

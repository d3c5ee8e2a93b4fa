//! Alternating comparisons (A B A B …) and the named suites behind the rows of docs/benchmarks.md.

use std::time::{Duration, Instant};

use clap::Parser as _;
use serde::{Deserialize, Serialize};

use crate::common::{cv, fmt_duration, median, now_rfc3339, Latency, Target};
use crate::scenario::{run_scenario, RunResult};
use crate::{Cli, Cmd, LoadArgs, TargetArgs};

/// Median, coefficient of variation and the values behind them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub cv: f64,
    pub values: Vec<f64>,
}

impl Stat {
    pub fn of(values: Vec<f64>) -> Self {
        Stat { median: median(&values), cv: cv(&values), values }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub scenario: String,
    pub runs: usize,
    pub req_per_s: Stat,
    pub events_per_s: Stat,
    pub delivered_events_per_s: Option<Stat>,
    pub p50_ms: Stat,
    pub p90_ms: Stat,
    pub p99_ms: Stat,
    pub max_ms: Stat,
    /// 2xx latency from the actual send (open loop; the same as p50_ms/p99_ms in closed loop).
    #[serde(default)]
    pub p50_actual_ms: Stat,
    #[serde(default)]
    pub p99_actual_ms: Stat,
    /// p99 of non-2xx answers (from the actual send), runs that had any.
    pub rejection_p99_ms: Stat,
    /// p50 of non-2xx answers (from the actual send), runs that had any.
    #[serde(default)]
    pub rejection_p50_ms: Stat,
    /// p99 of non-2xx answers from the actual send to the kernel's receipt of the answer, runs that had any.
    #[serde(default)]
    pub rejection_kernel_p99_ms: Stat,
    pub requests: u64,
    pub ok_2xx: u64,
    pub non_2xx: u64,
    pub acked: u64,
    pub delivered: Option<u64>,
    pub missing: Option<u64>,
    pub duplicates: Option<u64>,
    pub rss_idle_max_kib: Option<u64>,
    pub rss_peak_max_kib: Option<u64>,
    /// Target CPU time per acknowledged event, µs.
    pub target_cpu_us_per_event: Stat,
    pub client_cpu_us_per_request: Stat,
    /// Average busy cores during the load phase: the target, loadgen, the broker, and anything else.
    pub target_cores: Stat,
    pub loadgen_cores: Stat,
    pub broker_cores: Stat,
    pub other_cores: Stat,
    /// Cores' worth of CPU the hypervisor withheld (steal).
    #[serde(default)]
    pub steal_cores: Stat,
    /// Runs kept although the hypervisor withheld more than the steal limit (the reruns ran out).
    #[serde(default)]
    pub steal_over_limit: usize,
    /// The metric whose CV decides `noisy`: throughput in closed loop, p99 in open loop.
    pub headline: String,
    pub headline_cv: f64,
    /// CV across repeats above 0.1.
    pub noisy: bool,
    pub service_warnings: u64,
    pub service_errors: u64,
}

/// `numerator ÷ denominator` of one metric, per alternating pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ratio {
    pub numerator: String,
    pub denominator: String,
    pub metric: String,
    pub per_pair: Vec<f64>,
    pub median: f64,
    pub ratio_of_medians: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareResult {
    pub name: String,
    pub command: String,
    pub scenarios: Vec<String>,
    pub repeats: usize,
    pub runs: Vec<RunResult>,
    /// Rounds run again because the hypervisor withheld more CPU than `steal_limit` during them: kept for
    /// the record (and their deliveries still checked), not counted in the summary.
    #[serde(default)]
    pub set_aside: Vec<RunResult>,
    #[serde(default)]
    pub steal_limit: f64,
    /// Runs that failed to complete (setup or load errors), with the error.
    pub failures: Vec<String>,
    pub summary: Vec<ScenarioSummary>,
    pub ratios: Vec<Ratio>,
}

impl CompareResult {
    /// The summary and the per-round ratios of `runs` (each with its round), for `names` in their order.
    pub(crate) fn of_runs(
        name: &str,
        names: &[&str],
        repeats: usize,
        runs: Vec<(usize, RunResult)>,
        steal_limit: f64,
    ) -> Self {
        let summary = names
            .iter()
            .map(|&s| summarize(s, runs.iter().map(|(_, r)| r).filter(|r| r.scenario == s), steal_limit))
            .collect();
        let mut ratios = Vec::new();
        for (i, &a) in names.iter().enumerate() {
            for &b in &names[i + 1..] {
                for metric in ["req_per_s", "events_per_s", "delivered_events_per_s"] {
                    let get = |r: &RunResult| -> Option<f64> {
                        match metric {
                            "req_per_s" => Some(r.req_per_s),
                            "events_per_s" => Some(r.events_per_s),
                            _ => r.delivered_events_per_s,
                        }
                    };
                    let mut per_pair = Vec::new();
                    let (mut av, mut bv) = (Vec::new(), Vec::new());
                    for rep in 0..repeats {
                        let find = |t: &str| {
                            runs.iter().find(|(rr, x)| *rr == rep && x.scenario == t).and_then(|(_, x)| get(x))
                        };
                        if let (Some(x), Some(y)) = (find(a), find(b)) {
                            if y > 0.0 {
                                per_pair.push(x / y);
                            }
                            av.push(x);
                            bv.push(y);
                        }
                    }
                    if per_pair.is_empty() {
                        continue;
                    }
                    ratios.push(Ratio {
                        numerator: a.into(),
                        denominator: b.into(),
                        metric: metric.into(),
                        median: median(&per_pair),
                        ratio_of_medians: median(&av) / median(&bv),
                        per_pair,
                    });
                }
            }
        }
        CompareResult {
            name: name.to_string(),
            command: String::new(),
            scenarios: names.iter().map(|s| s.to_string()).collect(),
            repeats,
            runs: runs.into_iter().map(|(_, r)| r).collect(),
            set_aside: Vec::new(),
            steal_limit,
            failures: Vec::new(),
            summary,
            ratios,
        }
    }

    pub fn summary_of(&self, scenario: &str) -> Option<&ScenarioSummary> {
        self.summary.iter().find(|s| s.scenario == scenario)
    }

    pub fn ratio(&self, num: &str, den: &str, metric: &str) -> Option<&Ratio> {
        self.ratios.iter().find(|r| r.numerator == num && r.denominator == den && r.metric == metric)
    }
}

/// The scenario name of the closed-loop `full` run that `--peak-connections` adds to every round.
pub const PEAK: &str = "peak";

/// Runs `scenarios` in turn, `repeats` times (A B A B …), with the same load; with `--peak-connections`,
/// each round ends with a closed-loop run of `full` on that many connections (scenario `peak`).
pub async fn compare(
    name: &str,
    scenarios: &[Target],
    repeats: usize,
    load: &LoadArgs,
    opts: &TargetArgs,
    threads: usize,
    command: Option<String>,
) -> anyhow::Result<CompareResult> {
    let peak_load =
        load.peak_connections.map(|n| LoadArgs { connections: n, rate: None, peak_connections: None, ..load.clone() });
    let arms: Vec<(&str, Target, &LoadArgs)> = scenarios
        .iter()
        .map(|s| (s.name(), *s, load))
        .chain(peak_load.as_ref().map(|l| (PEAK, Target::Full, l)))
        .collect();
    let mut runs: Vec<(usize, RunResult)> = Vec::new();
    let mut set_aside = Vec::new();
    let mut failures = Vec::new();
    let repeats = repeats.max(1);
    let mut retries = if load.steal_limit > 0.0 { repeats } else { 0 };
    let mut r = 0;
    while r < repeats {
        let mut round = Vec::new();
        for &(arm, target, arm_load) in &arms {
            let label = format!("{name} {arm} {}/{}", r + 1, repeats);
            match run_scenario(target, arm_load, opts, &label, threads).await {
                Ok(res) => round.push((r, RunResult { scenario: arm.to_string(), ..res })),
                Err(e) => {
                    eprintln!("[{label}] FAILED: {e:#}");
                    failures.push(format!("{label}: {e:#}"));
                }
            }
            // Let the broker finish deleting the last run's topics and the machine settle.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Run again while reruns are left; after that the round is kept and its summary marks it.
        let steal = short_of_cpu(round.iter().map(|(_, x)| x), load.steal_limit).filter(|_| retries > 0);
        if let Some(steal) = steal {
            retries -= 1;
            eprintln!(
                "[{name}] round {}/{repeats} set aside: the hypervisor withheld {steal:.3} cores (steal > {}); running it again",
                r + 1,
                load.steal_limit
            );
            set_aside.extend(round.into_iter().map(|(_, x)| x));
            continue;
        }
        runs.extend(round);
        r += 1;
    }
    let names: Vec<&str> = arms.iter().map(|(arm, _, _)| *arm).collect();
    Ok(CompareResult {
        command: command.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        set_aside,
        failures,
        ..CompareResult::of_runs(name, &names, repeats, runs, load.steal_limit)
    })
}

/// The most CPU the hypervisor withheld during one of `runs`, if it was over `limit` (0: never).
fn short_of_cpu<'a>(runs: impl Iterator<Item = &'a RunResult>, limit: f64) -> Option<f64> {
    let steal = runs.filter_map(|x| x.cpu.as_ref()?.steal_cores).fold(0.0, f64::max);
    (limit > 0.0 && steal > limit).then_some(steal)
}

fn summarize<'a>(scenario: &str, runs: impl Iterator<Item = &'a RunResult>, steal_limit: f64) -> ScenarioSummary {
    let runs: Vec<&RunResult> = runs.collect();
    let stat = |f: &dyn Fn(&RunResult) -> f64| Stat::of(runs.iter().map(|r| f(r)).collect());
    let verified: Vec<&&RunResult> = runs.iter().filter(|r| r.verification.is_some()).collect();
    let sum_opt = |f: &dyn Fn(&RunResult) -> Option<u64>| -> Option<u64> {
        if verified.is_empty() {
            None
        } else {
            Some(verified.iter().filter_map(|r| f(r)).sum())
        }
    };
    // A percentile of the runs that measured any such answer.
    let answered = |lat: &dyn Fn(&RunResult) -> &Latency, q: &dyn Fn(&Latency) -> f64| {
        Stat::of(runs.iter().map(|r| lat(r)).filter(|l| l.count > 0).map(q).collect())
    };
    let open_loop = runs.iter().any(|r| r.rate.is_some());
    let req = stat(&|r| r.req_per_s);
    let ev = stat(&|r| r.events_per_s);
    let p99 = stat(&|r| r.latency.p99_ms);
    let (headline, headline_cv) = if open_loop {
        ("p99_ms".to_string(), p99.cv)
    } else {
        let c = if req.cv.is_nan() { ev.cv } else { req.cv.max(ev.cv) };
        ("throughput".to_string(), c)
    };
    ScenarioSummary {
        scenario: scenario.to_string(),
        runs: runs.len(),
        delivered_events_per_s: if verified.is_empty() {
            None
        } else {
            Some(Stat::of(verified.iter().filter_map(|r| r.delivered_events_per_s).collect()))
        },
        p50_ms: stat(&|r| r.latency.p50_ms),
        p90_ms: stat(&|r| r.latency.p90_ms),
        max_ms: stat(&|r| r.latency.max_ms),
        p50_actual_ms: stat(&|r| r.service_latency.p50_ms),
        p99_actual_ms: stat(&|r| r.service_latency.p99_ms),
        rejection_p99_ms: answered(&|r| &r.rejection_latency, &|l| l.p99_ms),
        rejection_p50_ms: answered(&|r| &r.rejection_latency, &|l| l.p50_ms),
        rejection_kernel_p99_ms: answered(&|r| &r.rejection_kernel_latency, &|l| l.p99_ms),
        requests: runs.iter().map(|r| r.requests_sent).sum(),
        ok_2xx: runs.iter().map(|r| r.ok_2xx).sum(),
        non_2xx: runs.iter().map(|r| r.requests_sent.saturating_sub(r.ok_2xx)).sum(),
        acked: runs.iter().map(|r| r.events_acked).sum(),
        delivered: sum_opt(&|r| r.delivered),
        missing: sum_opt(&|r| r.missing),
        duplicates: sum_opt(&|r| r.duplicates),
        rss_idle_max_kib: runs.iter().filter_map(|r| r.rss_idle_kib).max(),
        rss_peak_max_kib: runs.iter().filter_map(|r| r.rss_peak_kib).max(),
        target_cpu_us_per_event: Stat::of(
            runs.iter()
                .filter_map(|r| r.target_cpu_s.filter(|_| r.events_acked > 0).map(|c| c * 1e6 / r.events_acked as f64))
                .collect(),
        ),
        client_cpu_us_per_request: Stat::of(
            runs.iter()
                .filter(|r| r.requests_sent > 0)
                .map(|r| r.client_cpu_s * 1e6 / r.requests_sent as f64)
                .collect(),
        ),
        target_cores: Stat::of(
            runs.iter().filter_map(|r| r.target_cpu_s.zip(r.cpu.as_ref()).map(|(t, c)| t / c.wall_s)).collect(),
        ),
        loadgen_cores: Stat::of(
            runs.iter().filter_map(|r| r.cpu.as_ref().map(|c| r.client_cpu_s / c.wall_s)).collect(),
        ),
        broker_cores: Stat::of(runs.iter().filter_map(|r| r.cpu.as_ref().and_then(|c| c.broker_cores)).collect()),
        other_cores: Stat::of(runs.iter().filter_map(|r| r.cpu.as_ref().and_then(|c| c.other_cores)).collect()),
        steal_cores: Stat::of(runs.iter().filter_map(|r| r.cpu.as_ref().and_then(|c| c.steal_cores)).collect()),
        steal_over_limit: runs.iter().filter(|r| short_of_cpu(std::iter::once(**r), steal_limit).is_some()).count(),
        noisy: headline_cv > 0.1,
        headline,
        headline_cv,
        service_warnings: runs.iter().filter_map(|r| r.exit.as_ref()).map(|e| e.log.warn).sum(),
        service_errors: runs.iter().filter_map(|r| r.exit.as_ref()).map(|e| e.log.error + e.log.stderr_lines).sum(),
        req_per_s: req,
        events_per_s: ev,
        p99_ms: p99,
    }
}

/// One named suite: a `loadgen compare` command line. `{half_peak}` / `{double_peak}` become 0.5× / 2× the
/// service's measured peak req/s (the `full` median of `single-queued`).
pub struct SuiteDef {
    pub name: &'static str,
    pub row: &'static str,
    pub title: &'static str,
    pub args: &'static str,
    /// Repeats at least (outside `--quick`): the rows whose headline is a ratio or a p99 against a floor
    /// and swings most from run to run on this shared machine get more runs behind their median.
    pub min_repeats: usize,
}

pub const SUITES: &[SuiteDef] = &[
    // The rate-based rows right after the peak they are a fraction or a multiple of: this machine's speed
    // drifts within a run, and a peak measured minutes earlier can be one the machine no longer has.
    SuiteDef {
        name: "single-queued",
        row: "(a)",
        title: "single events to real Kafka, ack=queued, 64 connections, closed loop",
        args: "--scenarios full,bare --connections 64 --batch 1 --ack queued",
        min_repeats: 0,
    },
    SuiteDef {
        name: "half-load",
        row: "(d)",
        title: "single events, ack=queued, open loop at 50% of the measured peak, 64 connections, loadgen sending from 2 threads (one thread's own scheduling delays were most of the p99)",
        args: "--scenarios full --connections 64 --batch 1 --ack queued --rate {half_peak} --load-threads 2",
        min_repeats: 0,
    },
    SuiteDef {
        name: "overload",
        row: "(g)",
        title: "single events, ack=queued, open loop at 2× the measured peak, 512 connections; every round also measures the peak again (`peak`: closed loop, 64 connections), for the goodput of the same minutes",
        args: "--scenarios full --connections 512 --batch 1 --ack queued --rate {double_peak} --timeout 5s --peak-connections 64",
        min_repeats: 0,
    },
    SuiteDef {
        name: "batch-ndjson",
        row: "(b)",
        title: "100-event NDJSON batches to real Kafka, ack=queued, 4 connections, closed loop",
        args: "--scenarios full,raw-kafka --connections 4 --batch 100 --format ndjson --ack queued",
        min_repeats: 0,
    },
    SuiteDef {
        name: "batch-ndjson-q1k",
        row: "(b)",
        title: "as batch-ndjson with QUEUE_SIZE=1000 (the Go service's default, not ours: what a queue that small costs)",
        args: "--scenarios full,raw-kafka --connections 4 --batch 100 --format ndjson --ack queued --service-env QUEUE_SIZE=1000",
        min_repeats: 0,
    },
    SuiteDef {
        name: "ack-kafka",
        row: "(c)",
        title: "single events, ack=kafka, 256 connections, closed loop",
        args: "--scenarios full,bare --connections 256 --batch 1 --ack kafka",
        min_repeats: 0,
    },
    SuiteDef {
        name: "ack-kafka-light",
        row: "(c)",
        title: "single events, ack=kafka, open loop at 1,000 req/s, 64 connections (latency without queueing)",
        args: "--scenarios full --connections 64 --batch 1 --ack kafka --rate 1000",
        min_repeats: 0,
    },
    SuiteDef {
        name: "noop-overhead",
        row: "(g)",
        title: "single events, PUBLISHER=noop, 64 connections, closed loop",
        args: "--scenarios full-noop,bare --connections 64 --batch 1 --ack queued",
        // Its pairs spread from 0.70 to 1.06 within one run on this machine: 9 of them make the median
        // move less from one run to the next (docs/benchmarks.md, row (g)).
        min_repeats: 9,
    },
    SuiteDef {
        name: "shed-peak",
        row: "(g)",
        title: "single events, ack=kafka, MAX_CONCURRENT_REQUESTS=64, 64 connections, closed loop, loadgen sending from 2 threads (the peak of a service whose limit is its concurrency limit)",
        args: "--scenarios full --connections 64 --batch 1 --ack kafka --load-threads 2 --service-env MAX_CONCURRENT_REQUESTS=64",
        min_repeats: 0,
    },
    SuiteDef {
        name: "overload-shed",
        row: "(g)",
        title: "as shed-peak, open loop at 2× its peak, 512 connections: the excess is shed (503 overloaded); 2 sending threads, so that answers do not queue behind one busy client thread; `bare` under the same load alternates with it, as the latency this machine allows a server that does nothing; every round also measures shed-peak's peak again (`peak`), for the goodput of the same minutes",
        args: "--scenarios full,bare --connections 512 --batch 1 --ack kafka --rate {double_shed_peak} --timeout 5s --load-threads 2 --service-env MAX_CONCURRENT_REQUESTS=64 --peak-connections 64",
        min_repeats: 5,
    },
];

/// The suite whose median `full` req/s `{double_shed_peak}` stands for.
const SHED_PEAK_SUITE: &str = "shed-peak";

pub struct SuiteConfig {
    pub repeats: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub quick: bool,
    pub peak_rps: Option<f64>,
    pub threads: usize,
    pub kafka_label: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteRun {
    pub name: String,
    pub row: String,
    pub title: String,
    /// The equivalent single command.
    pub command: String,
    pub result: CompareResult,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub rustc: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteResults {
    pub invocation: String,
    pub started_at: String,
    pub total_s: f64,
    pub git_commit: String,
    pub git_dirty: bool,
    pub machine: Machine,
    pub repeats: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub quick: bool,
    pub loadgen_threads: usize,
    pub service_bin: String,
    pub brokers: String,
    pub kafka_label: String,
    pub peak_rps: Option<f64>,
    pub peak_source: String,
    /// The median `full` req/s of shed-peak, for overload-shed's rate.
    #[serde(default)]
    pub shed_peak_rps: Option<f64>,
    pub suites: Vec<SuiteRun>,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model,
        mem_total_gib: mem_kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        rustc,
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The args of a suite with the rate placeholders filled in: `{half_peak}` and `{double_peak}` from the
/// single-queued peak, `{double_shed_peak}` from shed-peak's.
fn suite_args(def: &SuiteDef, peak: Option<f64>, shed_peak: Option<f64>) -> anyhow::Result<String> {
    let mut args = def.args.to_string();
    if args.contains("{double_shed_peak}") {
        let shed_peak = shed_peak.ok_or_else(|| anyhow::anyhow!("suite {} needs shed-peak's req/s", def.name))?;
        args = args.replace("{double_shed_peak}", &format!("{:.0}", (shed_peak * 2.0).max(1.0)));
    }
    if args.contains('{') {
        let peak = peak.ok_or_else(|| {
            anyhow::anyhow!("suite {} needs the peak req/s (run single-queued or pass --peak-rps)", def.name)
        })?;
        args = args.replace("{half_peak}", &format!("{:.0}", (peak * 0.5).max(1.0)));
        args = args.replace("{double_peak}", &format!("{:.0}", (peak * 2.0).max(1.0)));
    }
    Ok(args)
}

fn parse_compare(args: &str) -> anyhow::Result<(Vec<Target>, LoadArgs, TargetArgs)> {
    let argv = std::iter::once("loadgen").chain(std::iter::once("compare")).chain(args.split_whitespace());
    match Cli::try_parse_from(argv)?.command {
        Cmd::Compare { scenarios, load, opts, .. } => Ok((scenarios, load, opts)),
        _ => unreachable!(),
    }
}

/// A suite's compare arguments parsed; the options returned carry its `--service-env` on top of `opts`.
fn suite_load(args: &str, opts: &TargetArgs) -> anyhow::Result<(Vec<Target>, LoadArgs, TargetArgs)> {
    let (scenarios, load, suite_opts) = parse_compare(args)?;
    let mut opts = opts.clone();
    opts.service_env.extend(suite_opts.service_env);
    Ok((scenarios, load, opts))
}

/// One closed-loop run of `full` with `def`'s load, when a rate-based suite needs its peak and the suite
/// that measures it was not run first.
async fn measure_peak(def: &SuiteDef, cfg: &SuiteConfig, opts: &TargetArgs) -> anyhow::Result<f64> {
    let args = format!("{} --duration {} --warmup {}", def.args, fmt_duration(cfg.duration), fmt_duration(cfg.warmup));
    let (_, load, opts) = suite_load(&args, opts)?;
    Ok(run_scenario(Target::Full, &load, &opts, def.name, cfg.threads).await?.req_per_s)
}

pub async fn run_suites(names: &[String], cfg: &SuiteConfig, opts: &TargetArgs) -> anyhow::Result<SuiteResults> {
    let t0 = Instant::now();
    let started_at = now_rfc3339();
    let all = names.is_empty() || names.iter().any(|n| n == "all");
    let selected: Vec<&SuiteDef> = if all {
        SUITES.iter().collect()
    } else {
        let mut v = Vec::new();
        for n in names {
            v.push(SUITES.iter().find(|s| s.name == n).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown suite {n:?}; known: {}",
                    SUITES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                )
            })?);
        }
        // single-queued first: it measures the peak the rate-based suites need.
        v.sort_by_key(|s| SUITES.iter().position(|x| x.name == s.name));
        v
    };
    if !opts.service_bin.exists() {
        anyhow::bail!(
            "service binary {} not found: `cargo build --release -p event-ingestor --locked` first",
            opts.service_bin.display()
        );
    }
    let mut peak = cfg.peak_rps;
    let mut peak_source = if peak.is_some() { "--peak-rps".to_string() } else { String::new() };
    let mut shed_peak = None;
    let mut suites = Vec::new();
    for def in selected {
        if def.args.contains("{double_shed_peak}") && shed_peak.is_none() {
            let shed = SUITES.iter().find(|s| s.name == SHED_PEAK_SUITE).expect("shed-peak suite");
            shed_peak = Some(measure_peak(shed, cfg, opts).await?);
        }
        if (def.args.contains("{half_peak}") || def.args.contains("{double_peak}")) && peak.is_none() {
            let p = measure_peak(&SUITES[0], cfg, opts).await?;
            peak = Some(p);
            peak_source = format!("one closed-loop run of `full` with the single-queued load: {p:.0} req/s");
        }
        let args = suite_args(def, peak, shed_peak)?;
        let repeats = if cfg.quick { cfg.repeats } else { cfg.repeats.max(def.min_repeats) };
        let full_args = format!(
            "{args} --repeats {} --duration {} --warmup {}",
            repeats,
            fmt_duration(cfg.duration),
            fmt_duration(cfg.warmup)
        );
        let (scenarios, load, opts) = suite_load(&full_args, opts)?;
        let command = format!("loadgen compare {full_args}");
        eprintln!("\n=== {} {} — {}\n=== {command}", def.row, def.name, def.title);
        let result = compare(def.name, &scenarios, repeats, &load, &opts, cfg.threads, Some(command.clone())).await?;
        eprintln!("{}", crate::report::compare_table(&result));
        if def.name == "single-queued" && cfg.peak_rps.is_none() {
            if let Some(s) = result.summary_of("full") {
                if s.req_per_s.median.is_finite() && s.req_per_s.median > 0.0 {
                    peak = Some(s.req_per_s.median);
                    peak_source = format!("median `full` req/s of single-queued: {:.0}", s.req_per_s.median);
                }
            }
        }
        if def.name == SHED_PEAK_SUITE {
            shed_peak = result.summary_of("full").map(|s| s.req_per_s.median).filter(|p| p.is_finite() && *p > 0.0);
        }
        suites.push(SuiteRun { name: def.name.into(), row: def.row.into(), title: def.title.into(), command, result });
    }
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()).unwrap_or(false);
    Ok(SuiteResults {
        invocation: std::env::args().collect::<Vec<_>>().join(" "),
        started_at,
        total_s: t0.elapsed().as_secs_f64(),
        git_commit: git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        git_dirty: dirty,
        machine: machine(),
        repeats: cfg.repeats,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        quick: cfg.quick,
        loadgen_threads: cfg.threads,
        service_bin: opts.service_bin.display().to_string(),
        brokers: opts.brokers.clone(),
        kafka_label: cfg.kafka_label.clone(),
        peak_rps: peak,
        peak_source,
        shed_peak_rps: shed_peak,
        suites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suite_parses() {
        for s in SUITES {
            let args = suite_args(s, Some(10_000.0), Some(4_000.0)).unwrap();
            let (scenarios, load, _) = parse_compare(&format!("{args} --duration 3s")).unwrap();
            assert!(!scenarios.is_empty(), "{}", s.name);
            assert_eq!(load.duration, Some(Duration::from_secs(3)));
        }
        let half = SUITES.iter().find(|s| s.name == "half-load").unwrap();
        assert!(suite_args(half, Some(10_000.0), None).unwrap().contains("--rate 5000"));
        assert!(suite_args(half, None, None).is_err());
        let shed = SUITES.iter().find(|s| s.name == "overload-shed").unwrap();
        assert!(suite_args(shed, None, Some(4_000.0)).unwrap().contains("--rate 8000"));
        assert!(suite_args(shed, Some(10_000.0), None).is_err(), "the shed overload needs its own peak");
        let (_, _, o) = parse_compare(SUITES.iter().find(|s| s.name == "batch-ndjson-q1k").unwrap().args).unwrap();
        assert_eq!(o.service_env, ["QUEUE_SIZE=1000"]);
        let (_, load, _) = parse_compare(SUITES.iter().find(|s| s.name == "shed-peak").unwrap().args).unwrap();
        assert_eq!(load.load_threads, Some(2), "the shed pair sends from 2 threads");
        let (_, load, _) = parse_compare(&suite_args(half, Some(10_000.0), None).unwrap()).unwrap();
        assert_eq!(load.load_threads, Some(2), "the half-load latency is measured from 2 sending threads");
    }

    fn run_with_steal(steal: Option<f64>) -> RunResult {
        RunResult {
            scenario: "full".into(),
            req_per_s: 1000.0,
            cpu: Some(crate::common::CpuShare { steal_cores: steal, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn rounds_short_of_cpu_are_told_apart() {
        let calm = [run_with_steal(Some(0.01)), run_with_steal(None)];
        assert_eq!(short_of_cpu(calm.iter(), 0.05), None);
        let stolen = [run_with_steal(Some(0.01)), run_with_steal(Some(0.3))];
        assert_eq!(short_of_cpu(stolen.iter(), 0.05), Some(0.3), "one run short of CPU sets the round aside");
        assert_eq!(short_of_cpu(stolen.iter(), 0.0), None, "limit 0 keeps every round");
        let s = summarize("full", stolen.iter(), 0.05);
        assert_eq!((s.runs, s.steal_over_limit), (2, 1), "a kept run over the limit is marked in the summary");
        assert_eq!(s.steal_cores.values, vec![0.01, 0.3]);
    }
}

//! loadgen: load generator and benchmark harness for event-ingestor.
//!
//! `loadgen run`      one run against one target (a URL, the bare server, raw Kafka, the service)
//! `loadgen compare`  several targets, alternating A B A B … `--repeats` times: medians, per-pair ratios, CV
//! `loadgen suite`    the named benchmark rows of docs/benchmarks.md (one command reproduces all)
//! `loadgen bare-server`  the baseline HTTP server (spawned by the above; not for direct use)
//!
//! All load goes to loopback addresses only, and every run is bounded in count and duration.

mod common;
mod http1;
mod load;
mod payload;
mod raw_kafka;
mod report;
mod scenario;
mod service;
mod suite;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::common::{parse_duration, Ack, Format, Target};

#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about = "Load generator and benchmark harness for event-ingestor")]
pub struct Cli {
    /// Worker threads of loadgen's own tokio runtime (kept small: the machine is shared with the target).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One run against one target; JSON to --json FILE (default stdout), a table on stderr.
    Run {
        #[arg(long, value_enum, default_value_t = Target::Url)]
        target: Target,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        opts: TargetArgs,
        /// Write the JSON result here (`-` or absent: stdout).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Several targets with the same load, alternating A B A B …; medians, per-pair ratios, CV.
    Compare {
        /// Comma-separated targets, e.g. `full,bare`.
        #[arg(long, value_enum, value_delimiter = ',', required = true)]
        scenarios: Vec<Target>,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        opts: TargetArgs,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The named benchmark rows (see `loadgen list-suites`); `all` (default) runs every one.
    Suite {
        /// Suite names, or `all`.
        names: Vec<String>,
        /// Short runs (3 s, 2 repeats) to check that everything works; not for the record.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        repeats: Option<usize>,
        /// Length of each run (default 8s; 3s with --quick).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        warmup: Duration,
        /// Peak req/s of the service for the rate-based rows when `single-queued` is not part of this run.
        #[arg(long)]
        peak_rps: Option<f64>,
        /// How the broker is described in the report (e.g. "Kafka 4.4.0 single node").
        #[arg(long, default_value = "Kafka")]
        kafka_label: String,
        #[command(flatten)]
        opts: TargetArgs,
        /// All results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The results table (Markdown) for docs/benchmarks.md.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Lists the suites and their rows.
    ListSuites,
    /// The baseline server: axum on --bind, POST /events → 202 (reads the body, nothing else).
    BareServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: String,
        /// Runtime worker threads (0: tokio's default, one per core — like the service).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

/// The load: how many connections, how fast, for how long, what each request carries.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Keep-alive HTTP/1.1 connections (one in-flight request each).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Open loop: requests per second, latency measured from each request's intended send time.
    /// Absent: closed loop, each connection sends as soon as its previous answer arrived.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to send (default 10s; with --count, at most 120s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How many requests to send at most.
    #[arg(long)]
    pub count: Option<u64>,
    /// Requests started in the first part of the run are sent and verified but not measured
    /// (default 1s; 0 with --count).
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Events per request: 1 sends one JSON object; more send a JSON array or NDJSON (--format).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Gzip request bodies (Content-Encoding: gzip).
    #[arg(long)]
    pub gzip: bool,
    /// Adds `?ack=queued|kafka`; absent: the service's ACK_MODE.
    #[arg(long, value_enum)]
    pub ack: Option<Ack>,
    /// Size of the filler in each event's payload.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Worker threads that send this load, on a runtime of their own (default: loadgen's `--threads`).
    /// Hundreds of connections at a high rate need more than one, or the answers wait for loadgen's own
    /// thread to read them and its queueing shows up in the latencies.
    #[arg(long)]
    pub load_threads: Option<usize>,
    /// `compare` (and the suites): a round of runs during which the hypervisor withheld more than this many
    /// cores' worth of CPU (steal, /proc/stat) is set aside and run again, at most `--repeats` times a
    /// compare; 0 keeps every round. A run the machine did not get its CPU for measures the host.
    #[arg(long, default_value_t = 0.05)]
    pub steal_limit: f64,
    /// `compare` (and the suites): end every round with a closed-loop run of `full` on this many connections
    /// (scenario `peak`). An open-loop load's goodput is then judged against a peak of the same minutes: this
    /// machine's speed drifts by a third within a few minutes, more than a floor's margin.
    #[arg(long)]
    pub peak_connections: Option<usize>,
}

/// Where the target and the broker are, and how a run is checked.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// `--target url`: the ingest endpoint, e.g. http://127.0.0.1:8080/events.
    #[arg(long)]
    pub url: Option<String>,
    /// Kafka bootstrap servers (loopback only).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// `--target url`: the topic the service writes to, to read the run's events back from.
    #[arg(long)]
    pub topic: Option<String>,
    /// `--target url`: a process whose VmRSS is sampled every 100 ms (its peak is reported).
    #[arg(long)]
    pub pid: Option<u32>,
    /// The service binary for `full` / `full-noop`.
    #[arg(long, default_value = "target/release/event-ingestor")]
    pub service_bin: PathBuf,
    /// Extra environment for the spawned service, KEY=VALUE (repeatable; wins over loadgen's settings).
    #[arg(long = "service-env")]
    pub service_env: Vec<String>,
    /// Partitions of the fresh topics created for each run.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Reading back stops when nothing new arrived for this long and not every acknowledged id was seen.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub settle: Duration,
    /// Skip reading the events back from Kafka.
    #[arg(long)]
    pub no_verify: bool,
    /// Keep the per-run topics (default: deleted after the run).
    #[arg(long)]
    pub keep_topics: bool,
    /// Worker threads of the bare server (0: one per core, like the service's runtime).
    #[arg(long, default_value_t = 0)]
    pub bare_threads: usize,
    /// Service and bare-server logs go here, one file per run.
    #[arg(long, default_value = "target/loadgen/logs")]
    pub log_dir: PathBuf,
    /// The broker's pid, to tell its CPU from other work on the machine (default: the pid file of
    /// scripts/kafka.sh, if it runs).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Cmd::BareServer { bind, threads } = &cli.command {
        return match service::bare_server(bind, *threads) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen bare-server: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let threads = cli.threads.max(1);
    let work = async move {
        match cli.command {
            Cmd::Run { target, load, opts, json } => {
                let r = scenario::run_scenario(target, &load, &opts, target.name(), threads).await?;
                eprintln!("{}", report::run_table(&r));
                report::write_json(json.as_deref(), &r)?;
                anyhow::Ok(())
            }
            Cmd::Compare { scenarios, repeats, load, opts, json } => {
                let c = suite::compare("compare", &scenarios, repeats, &load, &opts, threads, None).await?;
                eprintln!("{}", report::compare_table(&c));
                report::write_json(json.as_deref(), &c)?;
                Ok(())
            }
            Cmd::Suite { names, quick, repeats, duration, warmup, peak_rps, kafka_label, opts, json, markdown } => {
                let cfg = suite::SuiteConfig {
                    repeats: repeats.unwrap_or(if quick { 2 } else { 3 }),
                    duration: duration.unwrap_or(if quick { Duration::from_secs(3) } else { Duration::from_secs(8) }),
                    warmup,
                    quick,
                    peak_rps,
                    threads,
                    kafka_label,
                };
                let results = suite::run_suites(&names, &cfg, &opts).await?;
                let md = report::suite_markdown(&results);
                eprintln!("{md}");
                report::write_json(json.as_deref(), &results)?;
                if let Some(path) = markdown {
                    std::fs::write(&path, md)?;
                }
                Ok(())
            }
            Cmd::ListSuites => {
                for s in suite::SUITES {
                    println!("{:<16} {} {}\n{:<16} loadgen compare {}\n", s.name, s.row, s.title, "", s.args);
                }
                Ok(())
            }
            Cmd::BareServer { .. } => unreachable!(),
        }
    };
    // Ctrl-C / SIGTERM drop the work, and with it every child process (killed on drop).
    let result = runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

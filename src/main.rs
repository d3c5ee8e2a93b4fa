//! The `event-ingestor` binary: parse the command line and configuration, start telemetry, run the
//! service, and map the outcome to an exit code (0 clean stop, 1 runtime failure, 2 bad configuration).

// The binary's own module: the library forbids `unsafe`, and a global allocator is nothing but.
#[cfg(feature = "mimalloc")]
mod alloc;

use std::path::PathBuf;
use std::process::ExitCode;

use event_ingestor::config::{Brokers, Settings, KAFKA_PROPERTY_PREFIX, KEYS};
use event_ingestor::lifecycle::{listen_for_signals, Shutdown};
use event_ingestor::{telemetry, Application};

/// mimalloc rather than glibc's malloc: the request path allocates and frees many small objects and one
/// future over 1 KiB (beyond glibc's per-thread cache) per request; see docs/benchmarks.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

const USAGE: &str = "\
usage: event-ingestor [--embedded-kafka] [--config FILE]
       event-ingestor describe     print accepted settings, routes and probes as JSON
       event-ingestor spool show [DIR]     list a spool directory's segments, records and corruption
       event-ingestor spool replay [DIR]   replay a spool directory to KAFKA_BROKERS once, then exit
       event-ingestor --help | --version

Configuration comes from defaults, then the optional TOML/YAML file (--config or CONFIG_FILE), then
environment variables. librdkafka properties pass through as KAFKA_PROPERTY_<NAME> (dots as underscores).";

enum Command {
    Run { embedded: bool, config: Option<PathBuf> },
    Describe,
    SpoolShow(Option<PathBuf>),
    SpoolReplay(Option<PathBuf>),
    Help,
    Version,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut embedded = false;
    let mut config = None;
    let mut args = args.peekable();
    match args.peek().map(String::as_str) {
        Some("describe") => return Ok(Command::Describe),
        Some("spool") => {
            args.next();
            let verb = args.next().ok_or("spool needs `show` or `replay`")?;
            let dir = args.next().map(PathBuf::from);
            return match verb.as_str() {
                "show" => Ok(Command::SpoolShow(dir)),
                "replay" => Ok(Command::SpoolReplay(dir)),
                other => Err(format!("unknown spool command {other:?}")),
            };
        }
        _ => {}
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--embedded-kafka" => embedded = true,
            "--config" => config = Some(PathBuf::from(args.next().ok_or("--config needs a file path")?)),
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Run { embedded, config })
}

fn main() -> ExitCode {
    let (embedded, config) = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run { embedded, config }) => (embedded, config),
        Ok(Command::Describe) => {
            println!("{:#}", event_ingestor::http::describe());
            return ExitCode::SUCCESS;
        }
        Ok(Command::SpoolShow(dir)) => return spool_show(dir),
        Ok(Command::SpoolReplay(dir)) => return spool_replay(dir),
        Ok(Command::Help) => {
            println!("{USAGE}\n\nSettings (environment name, default):");
            for k in KEYS {
                println!("  {:<26} {:<16} {}", k.env, k.default, k.accepts);
            }
            println!("  {KAFKA_PROPERTY_PREFIX}*          librdkafka passthrough, e.g. {KAFKA_PROPERTY_PREFIX}SECURITY_PROTOCOL=SASL_SSL");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("event-ingestor {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("event-ingestor: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    // Every bad setting is reported here, before any port is bound.
    let mut settings = match Settings::from_process(config) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("event-ingestor: {errors}");
            return ExitCode::from(2);
        }
    };
    if embedded {
        settings.kafka.brokers = Brokers::Embedded;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("event-ingestor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let traces = telemetry::init(&settings.log_level, runtime.handle());
    tracing::info!(version = env!("CARGO_PKG_VERSION"), settings = ?settings, "starting event-ingestor");
    let result = runtime.block_on(async move {
        let shutdown = Shutdown::new();
        listen_for_signals(shutdown.clone()).map_err(|e| e.to_string())?;
        let app = Application::build(settings, shutdown).await.map_err(|e| e.to_string())?;
        app.run_until_stopped().await.map_err(|e| e.to_string())
    });
    // Spans still buffered are exported before the process exits.
    traces.shutdown();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "event-ingestor failed");
            eprintln!("event-ingestor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The spool directory: the argument, else SPOOL_DIR (and the rest of the configuration) as the service
/// would read it.
fn spool_settings(dir: Option<PathBuf>) -> Result<Settings, ExitCode> {
    let mut settings = Settings::from_process(None).map_err(|errors| {
        eprintln!("event-ingestor: {errors}");
        ExitCode::from(2)
    })?;
    if let Some(dir) = dir {
        settings.spool.dir = dir;
    }
    Ok(settings)
}

fn spool_show(dir: Option<PathBuf>) -> ExitCode {
    let settings = match spool_settings(dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match event_ingestor::kafka::spool::describe_dir(&settings.spool.dir) {
        Ok(v) => {
            println!("{v:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("event-ingestor: cannot read {}: {e}", settings.spool.dir.display());
            ExitCode::FAILURE
        }
    }
}

fn spool_replay(dir: Option<PathBuf>) -> ExitCode {
    let settings = match spool_settings(dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    telemetry::init_logging(&settings.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(event_ingestor::replay_spool(settings)) {
        Ok(summary) => {
            println!(
                "{}",
                serde_json::json!({
                    "segments": summary.segments, "replayed": summary.replayed,
                    "failed": summary.failed, "corrupt_segments": summary.corrupt_segments,
                })
            );
            if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("event-ingestor: {e}");
            ExitCode::FAILURE
        }
    }
}

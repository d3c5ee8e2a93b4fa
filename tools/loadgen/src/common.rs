//! Shared small pieces: enums of the command line, duration parsing, latency histograms, /proc readers.

use std::time::Duration;

use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// What a run sends its load to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// An already running HTTP endpoint (`--url`); Kafka is checked only when `--topic` is given.
    Url,
    /// `loadgen bare-server` in a child process: axum, 202, nothing else (the HTTP ceiling).
    Bare,
    /// An rdkafka producer loop straight to the broker with the service's producer settings (the Kafka ceiling).
    RawKafka,
    /// The service as shipped, spawned from `--service-bin`, on fresh topics.
    Full,
    /// The service with `PUBLISHER=noop` (events dropped after the queue); nothing to check in Kafka.
    FullNoop,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Url => "url",
            Target::Bare => "bare",
            Target::RawKafka => "raw-kafka",
            Target::Full => "full",
            Target::FullNoop => "full-noop",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One event: a JSON object; a batch: a JSON array.
    Json,
    /// One event per line, `content-type: application/x-ndjson`.
    Ndjson,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Ack {
    /// `?ack=queued`: 202 once the event is queued.
    Queued,
    /// `?ack=kafka`: 200 once the broker acknowledged.
    Kafka,
}

impl Ack {
    pub fn name(self) -> &'static str {
        match self {
            Ack::Queued => "queued",
            Ack::Kafka => "kafka",
        }
    }
}

/// `250ms`, `10s`, `2m`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?} (use e.g. 500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" | "min" => v * 60.0,
        "us" | "µs" => v / 1e6,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A latency histogram in microseconds, 1 µs .. 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record_us(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// A value of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l[field.len() + 1..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU seconds a process has used so far (`/proc/<pid>/stat`).
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime is field 14 of the full line = index 11 here, stime 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / if ticks > 0.0 { ticks } else { 100.0 })
}

/// CPU seconds of this process (all threads).
pub fn self_cpu_seconds() -> f64 {
    proc_cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// CPU seconds of the whole machine so far (`/proc/stat`, all cores).
#[derive(Clone, Copy)]
pub struct MachineCpu {
    /// Running something in this machine (steal not included).
    pub busy: f64,
    /// Time the hypervisor ran something else while this machine wanted the CPU.
    pub steal: f64,
}

/// The machine's CPU seconds from `/proc/stat`.
pub fn machine_cpu_seconds() -> Option<MachineCpu> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user)
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    let steal = v.get(7).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = if ticks > 0.0 { ticks } else { 100.0 };
    Some(MachineCpu { busy: (total - idle - steal) / ticks, steal: steal / ticks })
}

/// The pid of the broker started by scripts/kafka.sh (its pid file), if it is running.
pub fn kafka_sh_broker_pid() -> Option<u32> {
    let dir = match std::env::var("KAFKA_DATA_DIR") {
        Ok(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ => {
            let state = std::env::var("XDG_STATE_HOME").ok().filter(|s| !s.is_empty()).map(std::path::PathBuf::from);
            let state =
                state.or_else(|| std::env::var("HOME").ok().map(|h| std::path::Path::new(&h).join(".local/state")))?;
            state.join("event-ingestor/kafka-9092")
        }
    };
    let pid: u32 = std::fs::read_to_string(dir.join("kafka.pid")).ok()?.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Where the machine's CPU went during a load phase: the broker, and everything else that was busy.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CpuShare {
    pub wall_s: f64,
    /// Busy cores of the whole machine, on average.
    pub machine_busy_cores: f64,
    pub broker_cores: Option<f64>,
    /// Busy cores not used by the target, loadgen or the broker: other work on a shared machine (noise).
    pub other_cores: Option<f64>,
    /// Cores' worth of time the hypervisor gave to other guests while this one wanted to run (`steal` in
    /// /proc/stat): the CPU this virtual machine was promised and did not get.
    #[serde(default)]
    pub steal_cores: Option<f64>,
}

pub struct CpuWatch {
    start: std::time::Instant,
    machine: Option<MachineCpu>,
    broker_pid: Option<u32>,
    broker: Option<f64>,
}

impl CpuWatch {
    pub fn start(broker_pid: Option<u32>) -> Self {
        CpuWatch {
            start: std::time::Instant::now(),
            machine: machine_cpu_seconds(),
            broker_pid,
            broker: broker_pid.and_then(proc_cpu_seconds),
        }
    }

    /// `accounted`: CPU seconds of the target and loadgen over the same phase.
    pub fn finish(self, accounted: f64) -> CpuShare {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let delta = self.machine.zip(machine_cpu_seconds());
        let busy = delta.map(|(a, b)| b.busy - a.busy).unwrap_or(f64::NAN);
        let broker = self.broker.zip(self.broker_pid.and_then(proc_cpu_seconds)).map(|(a, b)| b - a);
        CpuShare {
            wall_s: wall,
            machine_busy_cores: busy / wall,
            broker_cores: broker.map(|b| b / wall),
            other_cores: broker.map(|b| ((busy - b - accounted) / wall).max(0.0)),
            steal_cores: delta.map(|(a, b)| (b.steal - a.steal) / wall),
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Coefficient of variation (sample standard deviation ÷ mean); NaN with fewer than two values.
pub fn cv(values: &[f64]) -> f64 {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.len() < 2 {
        return f64::NAN;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    if mean == 0.0 {
        return f64::NAN;
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    var.sqrt() / mean
}

/// A short unique run id (letters and digits only: ids are `<run-id>-<sequence>`).
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mix = (nanos as u64) ^ ((std::process::id() as u64) << 32) ^ (nanos >> 64) as u64;
    // splitmix64 so consecutive runs differ in every digit.
    let mut z = mix.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("lg{:010x}", z & 0xff_ffff_ffff)
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn stats() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(cv(&[1.0]).is_nan());
        assert!((cv(&[10.0, 10.0, 10.0])).abs() < 1e-12);
        assert!(cv(&[9.0, 11.0]) > 0.1);
    }

    #[test]
    fn proc_readers() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmRSS").unwrap() > 0);
        assert!(proc_status_kib(pid, "VmHWM").unwrap() > 0);
        assert!(proc_cpu_seconds(pid).is_some());
    }
}

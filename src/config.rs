//! Settings: built-in defaults → optional config file → environment, validated once with every error listed.
//!
//! The Go service's variable names and defaults keep working. Unlike the Go service, a bad value is never
//! replaced by a default: `Settings::load` returns every problem at once and the process stops before it
//! binds a port.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, File, FileFormat, Map, Value, ValueKind};

/// One accepted setting: its environment name, its default and what it accepts (for error messages,
/// `--help` and the chart checks, which read this table through `event-ingestor describe`).
pub struct Key {
    pub env: &'static str,
    pub default: &'static str,
    pub accepts: &'static str,
}

/// Every setting the binary accepts. The file form of a key is its lower-case name (`http_port`).
pub const KEYS: &[Key] = &[
    Key { env: "HTTP_PORT", default: "8080", accepts: "a TCP port (0-65535; 0 picks a free port)" },
    Key { env: "ADMIN_PORT", default: "8081", accepts: "a TCP port (0-65535), different from HTTP_PORT" },
    Key { env: "BIND_ADDRESS", default: "0.0.0.0", accepts: "an IPv4 or IPv6 address to listen on" },
    Key { env: "LOG_LEVEL", default: "INFO", accepts: "one of TRACE, DEBUG, INFO, WARN, ERROR" },
    Key {
        env: "KAFKA_BROKERS",
        default: "localhost:9092",
        accepts: "a comma-separated list of host:port, or `embedded`",
    },
    Key { env: "KAFKA_TOPIC", default: "events", accepts: "a Kafka topic name (1-249 of [a-zA-Z0-9._-])" },
    Key { env: "KAFKA_DLQ_TOPIC", default: "events-dlq", accepts: "a Kafka topic name different from KAFKA_TOPIC" },
    Key {
        env: "KAFKA_MAX_RETRIES",
        default: "3",
        accepts: "an integer 0-100: re-sends after a retriable delivery failure before the DLQ",
    },
    Key { env: "KAFKA_RETRY_BACKOFF", default: "100ms", accepts: "a duration with a unit, 1ms-60s (e.g. 250ms)" },
    Key {
        env: "KAFKA_WRITE_TIMEOUT",
        default: "10s",
        accepts: "a duration with a unit, 1s-15m: how long one delivery attempt may take",
    },
    Key { env: "KAFKA_LINGER", default: "5ms", accepts: "a duration with a unit, 0ms-1s: producer batching delay" },
    Key { env: "KAFKA_COMPRESSION", default: "lz4", accepts: "one of none, gzip, snappy, lz4, zstd" },
    Key {
        env: "KAFKA_METADATA_REFRESH",
        default: "5s",
        accepts: "a duration with a unit, 100ms-5m: how often readiness re-checks the brokers",
    },
    Key {
        env: "KAFKA_UNREACHABLE_WINDOW",
        default: "15s",
        accepts: "a duration with a unit, 1s-1h: how long the brokers may be unreachable before /readyz fails",
    },
    Key { env: "WORKER_POOL_SIZE", default: "10", accepts: "an integer 1-1024" },
    Key { env: "QUEUE_SIZE", default: "10000", accepts: "an integer 1-10000000 (events)" },
    Key {
        env: "QUEUE_MAX_BYTES",
        default: "67108864",
        accepts: "an integer 1024-1099511627776, at least MAX_EVENT_BYTES (key and value bytes of the queued events)",
    },
    Key {
        env: "QUEUE_HIGH_WATER",
        default: "0.9",
        accepts: "a fraction in (0, 1]: queue utilization above which /readyz fails",
    },
    Key {
        env: "PUBLISHER",
        default: "kafka",
        accepts: "`kafka`, or `noop` (benchmarks only: events are acknowledged and dropped)",
    },
    Key {
        env: "ACK_MODE",
        default: "queued",
        accepts: "`queued` (202 once queued) or `kafka` (200 once the broker acknowledged)",
    },
    Key { env: "RATE_LIMIT_RPS", default: "1000", accepts: "an integer 0-10000000 requests/s (0 disables the limit)" },
    Key { env: "RATE_LIMIT_BURST", default: "100", accepts: "an integer 1-10000000" },
    Key { env: "MAX_BODY_BYTES", default: "4194304", accepts: "an integer 1024-1073741824 (bytes)" },
    Key {
        env: "MAX_DECODED_BYTES",
        default: "16777216",
        accepts: "an integer 1024-1073741824 (bytes of a body after gzip/zstd decoding)",
    },
    Key { env: "MAX_EVENT_BYTES", default: "1048576", accepts: "an integer 64-104857600 (bytes of one encoded event)" },
    Key { env: "MAX_BATCH_EVENTS", default: "10000", accepts: "an integer 1-1000000 (events in one request)" },
    Key {
        env: "MAX_JSON_DEPTH",
        default: "64",
        accepts: "an integer 2-1024 (nesting of arrays and objects in a body)",
    },
    Key { env: "MAX_EVENT_HEADERS", default: "64", accepts: "an integer 0-1024 (entries in an event's `headers`)" },
    Key {
        env: "MAX_EVENT_HEADER_BYTES",
        default: "16384",
        accepts: "an integer 0-1048576 (bytes of an event's `headers`)",
    },
    Key {
        env: "KAFKA_TOPIC_ALLOWLIST",
        default: "",
        accepts: "a comma-separated list of topic names writable through POST /topics/{topic}/events",
    },
    Key {
        env: "RATE_LIMIT_UNIT",
        default: "requests",
        accepts: "`requests` or `events` (a batch counts as its number of events)",
    },
    Key {
        env: "CLIENT_RATE_LIMIT_RPS",
        default: "0",
        accepts: "an integer 0-10000000 per client (API key tenant, else client IP); 0 disables",
    },
    Key { env: "CLIENT_RATE_LIMIT_BURST", default: "100", accepts: "an integer 1-10000000" },
    Key {
        env: "TRUSTED_PROXIES",
        default: "",
        accepts: "comma-separated CIDRs whose X-Forwarded-For / Forwarded headers are believed",
    },
    Key {
        env: "API_KEYS_FILE",
        default: "",
        accepts: "path of a JSON API-keys file (empty: no file); reloaded on SIGHUP and on change",
    },
    Key {
        env: "API_KEYS",
        default: "",
        accepts: "comma-separated tenant:key pairs allowed to write every topic (empty: none)",
    },
    Key {
        env: "CORS_ALLOWED_ORIGINS",
        default: "",
        accepts: "comma-separated origins allowed to call the ingest API from browsers, or *",
    },
    Key {
        env: "BEACON_PATH",
        default: "/beacon",
        accepts: "a path starting with / that also takes events (navigator.sendBeacon, text/plain)",
    },
    Key {
        env: "HEADER_READ_TIMEOUT",
        default: "10s",
        accepts: "a duration with a unit, 100ms-10m: a request's headers must arrive within it of their first byte",
    },
    Key {
        env: "KEEPALIVE_TIMEOUT",
        default: "60s",
        accepts: "a duration with a unit, 100ms-1h: an idle keep-alive connection is closed after it",
    },
    Key {
        env: "BODY_READ_TIMEOUT",
        default: "15s",
        accepts: "a duration with a unit, 100ms-10m: the whole body must arrive within it",
    },
    Key {
        env: "MAX_CONNECTIONS",
        default: "10000",
        accepts: "an integer 1-1000000 (open connections on the ingest port)",
    },
    Key {
        env: "MAX_CONCURRENT_REQUESTS",
        default: "4096",
        accepts: "an integer 1-1000000 (requests in progress; beyond it 503 at once)",
    },
    Key { env: "SPOOL_DIR", default: "spool", accepts: "a writable directory for the local spool and the ledger" },
    Key {
        env: "SPOOL_MAX_BYTES",
        default: "268435456",
        accepts: "an integer 4096-1099511627776 (bytes; at the limit new events get 503)",
    },
    Key { env: "REQUEST_TIMEOUT", default: "30s", accepts: "a duration with a unit, 100ms-10m" },
    Key {
        env: "SHUTDOWN_DRAIN_DELAY",
        default: "5s",
        accepts: "a duration with a unit, 0s-10m: how long to keep serving after readiness turns 503",
    },
    Key {
        env: "SHUTDOWN_TIMEOUT",
        default: "25s",
        accepts: "a duration with a unit, 1s-1h: budget to finish requests and flush after the drain delay",
    },
];

/// Environment variables with this prefix are passed to librdkafka: `KAFKA_PROPERTY_SASL_MECHANISM=PLAIN`
/// becomes `sasl.mechanism=PLAIN`. In the config file use a `[kafka_properties]` table with the dotted names.
pub const KAFKA_PROPERTY_PREFIX: &str = "KAFKA_PROPERTY_";

/// Names the config file table for librdkafka properties.
const FILE_PROPERTIES_TABLE: &str = "kafka_properties";

/// The environment variable naming the optional config file (same as `--config`).
pub const CONFIG_FILE_ENV: &str = "CONFIG_FILE";

#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub log_level: String,
    pub kafka: KafkaSettings,
    pub ingest: IngestSettings,
    pub rate_limit: RateLimitSettings,
    pub access: AccessSettings,
    pub spool: SpoolSettings,
    pub shutdown: ShutdownSettings,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub bind: IpAddr,
    pub port: u16,
    pub admin_port: u16,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Brokers {
    /// librdkafka's in-process mock cluster: nothing leaves the process.
    Embedded,
    List(String),
}

#[derive(Clone)]
pub struct KafkaSettings {
    pub brokers: Brokers,
    pub topic: String,
    pub dlq_topic: String,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub write_timeout: Duration,
    pub linger: Duration,
    pub compression: String,
    pub metadata_refresh: Duration,
    pub unreachable_window: Duration,
    /// librdkafka passthrough (TLS, SASL, tuning). May hold secrets: never log the values.
    pub properties: BTreeMap<String, String>,
    /// Topics clients may name in `POST /topics/{topic}/events` (the default topic is always allowed).
    pub topic_allowlist: Vec<String>,
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> =
            self.properties.iter().map(|(k, v)| (k.as_str(), redact(k, v))).collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("write_timeout", &self.write_timeout)
            .field("linger", &self.linger)
            .field("compression", &self.compression)
            .field("properties", &properties)
            .field("topic_allowlist", &self.topic_allowlist)
            .finish_non_exhaustive()
    }
}

/// librdkafka property names whose values are secret.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "sasl.jaas", "oauthbearer.config", "key.pem", "ssl.key", "token"]
        .iter()
        .any(|s| name.contains(s))
}

/// The value to show for a property: the value itself, or a placeholder for secrets.
pub fn redact<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret_property(name) {
        "<redacted>"
    } else {
        value
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// 202 once the event is in the bounded queue (the Go service's behaviour).
    Queued,
    /// 200 once the broker acknowledged the event (acks=all).
    Kafka,
}

impl AckMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "queued" => Some(Self::Queued),
            "kafka" => Some(Self::Kafka),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub worker_pool_size: usize,
    pub queue_size: usize,
    pub queue_max_bytes: u64,
    pub queue_high_water: f64,
    pub ack_mode: AckMode,
    /// `false` only for benchmarks: events are acknowledged without reaching Kafka.
    pub publish_to_kafka: bool,
    pub max_decoded_bytes: usize,
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
    pub max_json_depth: usize,
    pub max_event_headers: usize,
    pub max_event_header_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// 0 disables the global limit.
    pub rps: u32,
    pub burst: u32,
    /// Count a batch as its number of events rather than one request.
    pub count_events: bool,
    /// Per-client (tenant or IP) limit; 0 disables.
    pub client_rps: u32,
    pub client_burst: u32,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Who may write, and how browsers may call.
#[derive(Clone)]
pub struct AccessSettings {
    pub api_keys_file: Option<PathBuf>,
    /// `tenant:key` pairs from the environment. Secret: never logged.
    pub api_keys_env: Vec<(String, String)>,
    pub cors_origins: Vec<String>,
    pub beacon_path: String,
}

impl fmt::Debug for AccessSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenants: Vec<&str> = self.api_keys_env.iter().map(|(t, _)| t.as_str()).collect();
        f.debug_struct("AccessSettings")
            .field("api_keys_file", &self.api_keys_file)
            .field("api_key_tenants_from_env", &tenants)
            .field("cors_origins", &self.cors_origins)
            .field("beacon_path", &self.beacon_path)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ShutdownSettings {
    pub drain_delay: Duration,
    pub timeout: Duration,
}

/// One rejected setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The environment variable name (or file key) of the setting.
    pub name: String,
    /// The rejected value, already redacted where it may be secret.
    pub value: String,
    pub accepts: String,
}

/// Every rejected setting of one load, so the operator can fix them all in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Invalid>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {}={:?}: expected {}", e.name, e.value, e.accepts)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects typed values and errors while reading the merged configuration.
struct Reader {
    merged: Config,
    errors: Vec<Invalid>,
}

impl Reader {
    fn raw(&self, key: &Key) -> String {
        // Every key has a default, so a missing value is impossible; an unreadable one (a table
        // where a string belongs, from a file) is reported through `parse`.
        self.merged.get_string(&key.env.to_ascii_lowercase()).unwrap_or_else(|_| String::from("<not a scalar>"))
    }

    fn parse<T>(&mut self, env: &str, check: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        let key = KEYS.iter().find(|k| k.env == env).expect("every parsed key is in KEYS");
        let raw = self.raw(key);
        let parsed = check(raw.trim());
        if parsed.is_none() {
            self.errors.push(Invalid { name: key.env.into(), value: raw, accepts: key.accepts.into() });
        }
        parsed
    }

    fn reject(&mut self, name: &str, value: &str, accepts: &str) {
        self.errors.push(Invalid { name: name.into(), value: value.into(), accepts: accepts.into() });
    }

    fn int<T: std::str::FromStr + PartialOrd>(&mut self, env: &str, min: T, max: T) -> Option<T> {
        self.parse(env, |s| s.parse::<T>().ok().filter(|v| *v >= min && *v <= max))
    }

    fn duration(&mut self, env: &str, min: Duration, max: Duration) -> Option<Duration> {
        self.parse(env, |s| parse_duration(s).filter(|d| *d >= min && *d <= max))
    }
}

/// Durations carry a unit (`250ms`, `10s`, `1m`), as Go's `time.ParseDuration` requires.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() || s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(s).ok()
}

fn valid_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_brokers(s: &str) -> Option<Brokers> {
    if s.eq_ignore_ascii_case("embedded") {
        return Some(Brokers::Embedded);
    }
    let ok = !s.is_empty()
        && s.split(',').all(|b| {
            let b = b.trim();
            match b.rsplit_once(':') {
                Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
                None => false,
            }
        });
    ok.then(|| Brokers::List(s.split(',').map(str::trim).collect::<Vec<_>>().join(",")))
}

fn parse_log_level(s: &str) -> Option<String> {
    let level = match s.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" => "error",
        _ => return None,
    };
    Some(level.to_string())
}

impl Settings {
    /// Loads settings from defaults, then `file` (if any), then `env`.
    ///
    /// `env` is passed in rather than read here so that tests and the binary share this one path.
    pub fn load<I>(env: I, file: Option<&Path>) -> Result<Settings, ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut errors = Vec::new();
        let mut env_values: Map<String, String> = Map::new();
        let mut properties = BTreeMap::new();
        for (name, value) in env {
            if let Some(prop) = name.strip_prefix(KAFKA_PROPERTY_PREFIX) {
                let prop = prop.to_ascii_lowercase().replace('_', ".");
                if prop.is_empty() {
                    errors.push(Invalid {
                        name,
                        value: String::new(),
                        accepts: "KAFKA_PROPERTY_<NAME> with a librdkafka property name".into(),
                    });
                } else {
                    properties.insert(prop, value);
                }
            } else if KEYS.iter().any(|k| k.env == name) {
                env_values.insert(name.to_ascii_lowercase(), value);
            }
        }

        let mut builder = Config::builder();
        for key in KEYS {
            builder =
                builder.set_default(key.env.to_ascii_lowercase(), key.default).expect("defaults are plain strings");
        }
        let mut file_properties = BTreeMap::new();
        if let Some(path) = file {
            match read_file(path) {
                Ok((file_cfg, props)) => {
                    builder = builder.add_source(file_cfg);
                    file_properties = props;
                }
                Err(e) => errors.push(e),
            }
        }
        // Environment wins over the file, and the file's librdkafka properties are overridden by env ones.
        file_properties.extend(properties);
        let properties = file_properties;
        let merged = match builder.add_source(config::Environment::default().source(Some(env_values))).build() {
            Ok(c) => c,
            Err(e) => {
                errors.push(Invalid {
                    name: "configuration".into(),
                    value: e.to_string(),
                    accepts: "a readable configuration".into(),
                });
                return Err(ConfigErrors(errors));
            }
        };

        let mut r = Reader { merged, errors };
        let bind = r.parse("BIND_ADDRESS", |s| s.parse::<IpAddr>().ok());
        let port = r.int::<u16>("HTTP_PORT", 0, u16::MAX);
        let admin_port = r.int::<u16>("ADMIN_PORT", 0, u16::MAX);
        if let (Some(p), Some(a)) = (port, admin_port) {
            if p == a && p != 0 {
                r.reject("ADMIN_PORT", &a.to_string(), "a port different from HTTP_PORT");
            }
        }
        let log_level = r.parse("LOG_LEVEL", parse_log_level);
        let brokers = r.parse("KAFKA_BROKERS", parse_brokers);
        let topic = r.parse("KAFKA_TOPIC", |s| valid_topic(s).then(|| s.to_string()));
        let dlq_topic = r.parse("KAFKA_DLQ_TOPIC", |s| valid_topic(s).then(|| s.to_string()));
        if let (Some(t), Some(d)) = (&topic, &dlq_topic) {
            if t == d {
                r.reject("KAFKA_DLQ_TOPIC", d, "a topic different from KAFKA_TOPIC");
            }
        }
        let max_retries = r.int::<u32>("KAFKA_MAX_RETRIES", 0, 100);
        let retry_backoff = r.duration("KAFKA_RETRY_BACKOFF", Duration::from_millis(1), Duration::from_secs(60));
        let write_timeout = r.duration("KAFKA_WRITE_TIMEOUT", Duration::from_secs(1), Duration::from_secs(900));
        let linger = r.duration("KAFKA_LINGER", Duration::ZERO, Duration::from_secs(1));
        let compression = r.parse("KAFKA_COMPRESSION", |s| {
            let s = s.to_ascii_lowercase();
            ["none", "gzip", "snappy", "lz4", "zstd"].contains(&s.as_str()).then_some(s)
        });
        let metadata_refresh =
            r.duration("KAFKA_METADATA_REFRESH", Duration::from_millis(100), Duration::from_secs(300));
        let unreachable_window =
            r.duration("KAFKA_UNREACHABLE_WINDOW", Duration::from_secs(1), Duration::from_secs(3600));
        let worker_pool_size = r.int::<usize>("WORKER_POOL_SIZE", 1, 1024);
        let queue_size = r.int::<usize>("QUEUE_SIZE", 1, 10_000_000);
        let queue_high_water = r.parse("QUEUE_HIGH_WATER", |s| s.parse::<f64>().ok().filter(|f| *f > 0.0 && *f <= 1.0));
        let ack_mode = r.parse("ACK_MODE", AckMode::parse);
        let publish_to_kafka = r.parse("PUBLISHER", |s| match s.to_ascii_lowercase().as_str() {
            "kafka" => Some(true),
            "noop" => Some(false),
            _ => None,
        });
        let rps = r.int::<u32>("RATE_LIMIT_RPS", 0, 10_000_000);
        let burst = r.int::<u32>("RATE_LIMIT_BURST", 1, 10_000_000);
        let max_body_bytes = r.int::<usize>("MAX_BODY_BYTES", 1024, 1 << 30);
        let max_event_bytes = r.int::<usize>("MAX_EVENT_BYTES", 64, 100 << 20);
        let queue_max_bytes = r.int::<u64>("QUEUE_MAX_BYTES", 1024, 1 << 40);
        if let (Some(q), Some(e)) = (queue_max_bytes, max_event_bytes) {
            if q < e as u64 {
                r.reject("QUEUE_MAX_BYTES", &q.to_string(), "at least MAX_EVENT_BYTES, so that one event fits");
            }
        }
        let max_batch_events = r.int::<usize>("MAX_BATCH_EVENTS", 1, 1_000_000);
        let max_decoded_bytes = r.int::<usize>("MAX_DECODED_BYTES", 1024, 1 << 30);
        let max_json_depth = r.int::<usize>("MAX_JSON_DEPTH", 2, 1024);
        let max_event_headers = r.int::<usize>("MAX_EVENT_HEADERS", 0, 1024);
        let max_event_header_bytes = r.int::<usize>("MAX_EVENT_HEADER_BYTES", 0, 1 << 20);
        let topic_allowlist = r.parse("KAFKA_TOPIC_ALLOWLIST", |s| {
            let topics: Vec<String> = s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
            topics.iter().all(|t| valid_topic(t)).then_some(topics)
        });
        let count_events = r.parse("RATE_LIMIT_UNIT", |s| match s.to_ascii_lowercase().as_str() {
            "requests" => Some(false),
            "events" => Some(true),
            _ => None,
        });
        let client_rps = r.int::<u32>("CLIENT_RATE_LIMIT_RPS", 0, 10_000_000);
        let client_burst = r.int::<u32>("CLIENT_RATE_LIMIT_BURST", 1, 10_000_000);
        let trusted_proxies = r.parse("TRUSTED_PROXIES", |s| {
            s.split(',').map(str::trim).filter(|c| !c.is_empty()).map(|c| c.parse::<ipnet::IpNet>().ok()).collect()
        });
        let api_keys_file = r.parse("API_KEYS_FILE", |s| Some((!s.is_empty()).then(|| PathBuf::from(s))));
        let api_keys_env = r.parse("API_KEYS", |s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.split_once(':')
                        .filter(|(t, k)| !t.is_empty() && k.len() >= 16)
                        .map(|(t, k)| (t.to_string(), k.to_string()))
                })
                .collect()
        });
        if let Some(raw) = r.errors.last_mut().filter(|e| e.name == "API_KEYS") {
            raw.value = "<redacted>".into();
            raw.accepts = "comma-separated tenant:key pairs, keys of 16 characters or more".into();
        }
        let cors_origins = r.parse("CORS_ALLOWED_ORIGINS", |s| {
            Some(s.split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from).collect())
        });
        let beacon_path = r.parse("BEACON_PATH", |s| {
            (s.starts_with('/') && s.len() > 1 && !s.contains('{') && s != "/events" && s != "/health")
                .then(|| s.to_string())
        });
        let header_read_timeout =
            r.duration("HEADER_READ_TIMEOUT", Duration::from_millis(100), Duration::from_secs(600));
        let keepalive_timeout = r.duration("KEEPALIVE_TIMEOUT", Duration::from_millis(100), Duration::from_secs(3600));
        let body_read_timeout = r.duration("BODY_READ_TIMEOUT", Duration::from_millis(100), Duration::from_secs(600));
        let max_connections = r.int::<usize>("MAX_CONNECTIONS", 1, 1_000_000);
        let max_concurrent_requests = r.int::<usize>("MAX_CONCURRENT_REQUESTS", 1, 1_000_000);
        let spool_dir = r.parse("SPOOL_DIR", |s| (!s.is_empty()).then(|| PathBuf::from(s)));
        let spool_max_bytes = r.int::<u64>("SPOOL_MAX_BYTES", 4096, 1 << 40);
        let request_timeout = r.duration("REQUEST_TIMEOUT", Duration::from_millis(100), Duration::from_secs(600));
        let drain_delay = r.duration("SHUTDOWN_DRAIN_DELAY", Duration::ZERO, Duration::from_secs(600));
        let shutdown_timeout = r.duration("SHUTDOWN_TIMEOUT", Duration::from_secs(1), Duration::from_secs(3600));
        for (name, value) in &properties {
            if name == "bootstrap.servers" {
                r.reject(&format!("{KAFKA_PROPERTY_PREFIX}BOOTSTRAP_SERVERS"), value, "KAFKA_BROKERS instead");
            }
        }

        let Reader { errors, .. } = r;
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // All parsers succeeded, so every Option below is Some.
        let settings = (|| {
            Some(Settings {
                http: HttpSettings {
                    bind: bind?,
                    port: port?,
                    admin_port: admin_port?,
                    request_timeout: request_timeout?,
                    max_body_bytes: max_body_bytes?,
                    header_read_timeout: header_read_timeout?,
                    keepalive_timeout: keepalive_timeout?,
                    body_read_timeout: body_read_timeout?,
                    max_connections: max_connections?,
                    max_concurrent_requests: max_concurrent_requests?,
                },
                log_level: log_level?,
                kafka: KafkaSettings {
                    brokers: brokers?,
                    topic: topic?,
                    dlq_topic: dlq_topic?,
                    max_retries: max_retries?,
                    retry_backoff: retry_backoff?,
                    write_timeout: write_timeout?,
                    linger: linger?,
                    compression: compression?,
                    metadata_refresh: metadata_refresh?,
                    unreachable_window: unreachable_window?,
                    properties,
                    topic_allowlist: topic_allowlist?,
                },
                ingest: IngestSettings {
                    worker_pool_size: worker_pool_size?,
                    queue_size: queue_size?,
                    queue_max_bytes: queue_max_bytes?,
                    queue_high_water: queue_high_water?,
                    ack_mode: ack_mode?,
                    publish_to_kafka: publish_to_kafka?,
                    max_decoded_bytes: max_decoded_bytes?,
                    max_event_bytes: max_event_bytes?,
                    max_batch_events: max_batch_events?,
                    max_json_depth: max_json_depth?,
                    max_event_headers: max_event_headers?,
                    max_event_header_bytes: max_event_header_bytes?,
                },
                rate_limit: RateLimitSettings {
                    rps: rps?,
                    burst: burst?,
                    count_events: count_events?,
                    client_rps: client_rps?,
                    client_burst: client_burst?,
                    trusted_proxies: trusted_proxies?,
                },
                access: AccessSettings {
                    api_keys_file: api_keys_file?,
                    api_keys_env: api_keys_env?,
                    cors_origins: cors_origins?,
                    beacon_path: beacon_path?,
                },
                spool: SpoolSettings { dir: spool_dir?, max_bytes: spool_max_bytes? },
                shutdown: ShutdownSettings { drain_delay: drain_delay?, timeout: shutdown_timeout? },
            })
        })();
        Ok(settings.expect("no errors means every value parsed"))
    }

    /// Loads from the process environment and the file named by `--config` or `CONFIG_FILE`.
    pub fn from_process(config_file: Option<PathBuf>) -> Result<Settings, ConfigErrors> {
        let file = config_file.or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
        Settings::load(std::env::vars(), file.as_deref())
    }

    /// Settings for tests and embedding: the defaults, with `overrides` applied like environment variables.
    pub fn with_overrides(overrides: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        Settings::load(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())), None)
    }
}

/// Reads the config file (TOML or YAML by extension), rejecting keys the binary does not know, and
/// splits off its librdkafka property table.
fn read_file(path: &Path) -> Result<(Config, BTreeMap<String, String>), Invalid> {
    let name = path.display().to_string();
    let bad = |accepts: String| Invalid { name: CONFIG_FILE_ENV.into(), value: name.clone(), accepts };
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => FileFormat::Yaml,
        _ => FileFormat::Toml,
    };
    let cfg = Config::builder()
        .add_source(File::from(path).format(format).required(true))
        .build()
        .map_err(|e| bad(format!("a readable TOML or YAML file ({e})")))?;
    let table: Map<String, Value> = cfg.try_deserialize().map_err(|e| bad(format!("a table of settings ({e})")))?;
    let mut unknown = Vec::new();
    let mut properties = BTreeMap::new();
    let mut settings = Map::new();
    for (key, value) in table {
        if key == FILE_PROPERTIES_TABLE {
            match value.kind {
                ValueKind::Table(t) => {
                    for (k, v) in t {
                        let v =
                            v.into_string().map_err(|_| bad(format!("string values in [{FILE_PROPERTIES_TABLE}]")))?;
                        properties.insert(k, v);
                    }
                }
                _ => return Err(bad(format!("[{FILE_PROPERTIES_TABLE}] to be a table"))),
            }
        } else if KEYS.iter().any(|k| k.env.eq_ignore_ascii_case(&key)) {
            settings.insert(key.to_ascii_lowercase(), value);
        } else {
            unknown.push(key);
        }
    }
    if !unknown.is_empty() {
        return Err(bad(format!("only known settings; unknown key(s): {}", unknown.join(", "))));
    }
    let mut builder = Config::builder();
    for (k, v) in settings {
        builder = builder.set_override(k, v).map_err(|e| bad(e.to_string()))?;
    }
    let cfg = builder.build().map_err(|e| bad(e.to_string()))?;
    Ok((cfg, properties))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_go_service() {
        let s = Settings::with_overrides(&[]).unwrap();
        assert_eq!(s.http.port, 8080);
        assert_eq!(s.http.admin_port, 8081);
        assert_eq!(s.kafka.brokers, Brokers::List("localhost:9092".into()));
        assert_eq!(s.kafka.topic, "events");
        assert_eq!(s.kafka.dlq_topic, "events-dlq");
        assert_eq!(s.ingest.worker_pool_size, 10);
        assert_eq!(s.ingest.queue_size, 10000);
        assert_eq!(s.ingest.queue_max_bytes, 64 << 20);
        assert_eq!(s.rate_limit.rps, 1000);
        assert_eq!(s.rate_limit.burst, 100);
        assert_eq!(s.ingest.ack_mode, AckMode::Queued);
    }

    #[test]
    fn every_bad_value_is_listed_with_its_name() {
        let err = Settings::with_overrides(&[
            ("HTTP_PORT", "eighty"),
            ("QUEUE_SIZE", "0"),
            ("KAFKA_RETRY_BACKOFF", "100"),
            ("ACK_MODE", "sometimes"),
        ])
        .unwrap_err();
        let names: Vec<_> = err.0.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["HTTP_PORT", "KAFKA_RETRY_BACKOFF", "QUEUE_SIZE", "ACK_MODE"]);
        assert!(err.to_string().contains("HTTP_PORT=\"eighty\": expected a TCP port"));
    }

    #[test]
    fn the_byte_bound_of_the_queue_must_hold_one_event() {
        let err = Settings::with_overrides(&[("QUEUE_MAX_BYTES", "4096"), ("MAX_EVENT_BYTES", "8192")]).unwrap_err();
        assert!(err.to_string().contains("QUEUE_MAX_BYTES=\"4096\": expected at least MAX_EVENT_BYTES"), "{err}");
        let s = Settings::with_overrides(&[("QUEUE_MAX_BYTES", "8192"), ("MAX_EVENT_BYTES", "8192")]).unwrap();
        assert_eq!(s.ingest.queue_max_bytes, 8192);
    }

    #[test]
    fn kafka_properties_pass_through_and_are_redacted_in_debug() {
        let s = Settings::with_overrides(&[
            ("KAFKA_PROPERTY_SASL_PASSWORD", "hunter2"),
            ("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL"),
        ])
        .unwrap();
        assert_eq!(s.kafka.properties["sasl.password"], "hunter2");
        assert_eq!(s.kafka.properties["security.protocol"], "SASL_SSL");
        let shown = format!("{:?}", s.kafka);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("SASL_SSL"));
    }

    #[test]
    fn file_then_env_and_unknown_file_keys_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingestor.toml");
        std::fs::write(
            &path,
            "queue_size = 50\nkafka_topic = \"from-file\"\n[kafka_properties]\n\"client.id\" = \"x\"\n",
        )
        .unwrap();
        let s = Settings::load([("QUEUE_SIZE".to_string(), "70".to_string())], Some(&path)).unwrap();
        assert_eq!(s.ingest.queue_size, 70);
        assert_eq!(s.kafka.topic, "from-file");
        assert_eq!(s.kafka.properties["client.id"], "x");

        std::fs::write(&path, "queue_sise = 50\n").unwrap();
        let err = Settings::load(Vec::<(String, String)>::new(), Some(&path)).unwrap_err();
        assert!(err.to_string().contains("queue_sise"), "{err}");
    }

    #[test]
    fn api_keys_never_show_in_debug_or_errors() {
        let s = Settings::with_overrides(&[("API_KEYS", "web:0123456789abcdef-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("secret"));
        let err = Settings::with_overrides(&[("API_KEYS", "web:short-secret")]).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn embedded_brokers_and_lists() {
        let s = Settings::with_overrides(&[("KAFKA_BROKERS", "embedded")]).unwrap();
        assert_eq!(s.kafka.brokers, Brokers::Embedded);
        let s = Settings::with_overrides(&[("KAFKA_BROKERS", "a:9092, b:9093")]).unwrap();
        assert_eq!(s.kafka.brokers, Brokers::List("a:9092,b:9093".into()));
        assert!(Settings::with_overrides(&[("KAFKA_BROKERS", "a")]).is_err());
    }
}

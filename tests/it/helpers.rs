//! Test helpers: find the real Kafka broker, create topics, spawn the app on port 0, read topics back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use event_ingestor::config::Settings;
use event_ingestor::kafka::{client_config, ClientRole, Publisher};
use event_ingestor::lifecycle::Shutdown;
use event_ingestor::{Application, ShutdownReport};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

/// Where the real broker is: `EVENT_INGESTOR_TEST_KAFKA` (default `127.0.0.1:9092`, started by
/// `scripts/kafka.sh start`), or `testcontainers` to start one in Docker.
pub const KAFKA_ENV: &str = "EVENT_INGESTOR_TEST_KAFKA";
/// Set to 1 to skip the tests that need a real broker. Without it, a missing broker fails them loudly.
pub const SKIP_ENV: &str = "EVENT_INGESTOR_SKIP_KAFKA_TESTS";

/// The real broker's bootstrap address, or `None` when the run explicitly opted out of Kafka tests.
/// Panics with instructions when no broker answers.
pub async fn real_kafka() -> Option<String> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {SKIP_ENV}=1 (this test needs a real Kafka broker)");
        return None;
    }
    static BOOTSTRAP: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let bootstrap = BOOTSTRAP
        .get_or_init(|| async {
            let wanted = std::env::var(KAFKA_ENV).unwrap_or_else(|_| "127.0.0.1:9092".to_string());
            if wanted == "testcontainers" {
                return containers::start_kafka().await;
            }
            wanted
        })
        .await
        .clone();
    let probe = bootstrap.clone();
    let reachable = tokio::task::spawn_blocking(move || {
        let admin: AdminClient<DefaultClientContext> = other_config(&probe).create().expect("admin client");
        admin.inner().fetch_metadata(None, Duration::from_secs(10)).is_ok()
    })
    .await
    .unwrap();
    assert!(
        reachable,
        "no Kafka broker answers at {bootstrap}. Start one with `scripts/kafka.sh start`, or set \
         {KAFKA_ENV}=testcontainers (Docker) or {KAFKA_ENV}=host:port, or opt out with {SKIP_ENV}=1."
    );
    Some(bootstrap)
}

mod containers {
    use testcontainers::core::{ContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{ContainerAsync, GenericImage, ImageExt};

    /// Starts apache/kafka in Docker on a fixed host port (the broker must advertise the address the
    /// host sees). Kept for the life of the test process.
    pub async fn start_kafka() -> String {
        static CONTAINER: std::sync::OnceLock<ContainerAsync<GenericImage>> = std::sync::OnceLock::new();
        let port = 19092;
        let container = GenericImage::new("apache/kafka", "4.1.0")
            .with_exposed_port(ContainerPort::Tcp(9092))
            .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
            .with_env_var("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
            .with_env_var("KAFKA_ADVERTISED_LISTENERS", format!("PLAINTEXT://127.0.0.1:{port}"))
            .with_mapped_port(port, ContainerPort::Tcp(9092))
            .start()
            .await
            .expect("starting Kafka with testcontainers (is Docker running?)");
        let _ = CONTAINER.set(container);
        format!("127.0.0.1:{port}")
    }
}

fn other_config(bootstrap: &str) -> ClientConfig {
    let settings = Settings::with_overrides(&[]).unwrap();
    client_config(&settings.kafka, bootstrap, ClientRole::Other, 0)
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Creates `topics` (3 partitions each) on the real broker and waits until they are usable.
pub async fn create_topics(bootstrap: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = other_config(bootstrap).create().unwrap();
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1))).collect();
    let results =
        admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)))).await.unwrap();
    for r in results {
        r.expect("topic created");
    }
}

/// A running app: its addresses, the shutdown trigger and the task that returns its report.
pub struct TestApp {
    pub http: String,
    pub admin: String,
    /// The app's own spool directory, removed when the app is dropped.
    _spool: tempfile::TempDir,
    pub shutdown: Shutdown,
    /// The app's producer side, for fault injection.
    pub publisher: Arc<Publisher>,
    pub handle: JoinHandle<std::io::Result<ShutdownReport>>,
    pub client: reqwest::Client,
}

impl TestApp {
    /// Stops the app (no drain delay) and returns its shutdown report.
    pub async fn stop(self) -> ShutdownReport {
        self.shutdown.begin();
        self.handle.await.unwrap().unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.client, &self.admin, name).await
    }
}

/// Reads one sample (`name` with its labels, as printed) from `/metrics`; 0 when absent.
pub async fn metric_value(client: &reqwest::Client, admin: &str, name: &str) -> f64 {
    let text = client.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// Spawns the app on 127.0.0.1:0 against `bootstrap` with fresh topics (created by the caller on a real
/// broker), no drain delay, and `overrides` on top.
pub async fn spawn_app(bootstrap: &str, topic: &str, dlq_topic: &str, overrides: &[(&str, &str)]) -> TestApp {
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("SPOOL_DIR", &spool_dir),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("HTTP_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("KAFKA_BROKERS", bootstrap),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_DLQ_TOPIC", dlq_topic),
        ("SHUTDOWN_DRAIN_DELAY", "0s"),
        ("SHUTDOWN_TIMEOUT", "20s"),
        ("RATE_LIMIT_RPS", "0"),
        ("KAFKA_METADATA_REFRESH", "500ms"),
    ];
    all.extend_from_slice(overrides);
    let settings = Settings::with_overrides(&all).expect("test settings are valid");
    init_test_logging();
    let shutdown = Shutdown::new();
    let app = Application::build(settings, shutdown.clone()).await.expect("app builds");
    let http = format!("http://{}", app.http_addr());
    let admin = format!("http://{}", app.admin_addr());
    let publisher = app.publisher();
    let handle = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    TestApp { http, admin, _spool: spool, shutdown, publisher, handle, client }
}

/// Logs of the app under test go to the test's captured output (shown when a test fails), at warn.
fn init_test_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let level = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
        event_ingestor::telemetry::init_logging(&level);
    });
}

/// Waits until `/readyz` answers 200 (Kafka metadata fetched), at most 30 s.
pub async fn wait_ready(client: &reqwest::Client, admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{admin}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "service not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `topic` from the beginning until `expected` records arrived (then 1 s more, to catch
/// duplicates) or `timeout` passed.
pub async fn consume(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let mut cfg = other_config(&bootstrap);
        cfg.set("group.id", format!("it-{}", uuid::Uuid::now_v7().simple()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = cfg.create().unwrap();
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(&topic, p.id(), Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut settle: Option<Instant> = None;
        while Instant::now() < deadline && settle.is_none_or(|s| Instant::now() < s) {
            if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
                out.push(msg.expect("consumer error").detach());
            }
            if out.len() >= expected && settle.is_none() {
                settle = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        out
    })
    .await
    .unwrap()
}

/// Reads the record at `partition`/`offset` of `topic`.
pub async fn fetch_at(bootstrap: &str, topic: &str, partition: i32, offset: i64) -> OwnedMessage {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let mut cfg = other_config(&bootstrap);
        cfg.set("group.id", format!("it-{}", uuid::Uuid::now_v7().simple())).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = cfg.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset)).unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
                return msg.unwrap().detach();
            }
        }
        panic!("no record at {topic}/{partition}@{offset}");
    })
    .await
    .unwrap()
}

/// A record's headers as a map of UTF-8 strings.
pub fn headers_of(msg: &OwnedMessage) -> HashMap<String, String> {
    msg.headers()
        .map(|h| {
            h.iter()
                .map(|hd| (hd.key.to_string(), String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Counts records per `ce_id` header.
pub fn ids_of(messages: &[OwnedMessage]) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for m in messages {
        if let Some(id) = headers_of(m).remove("ce_id") {
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    ids
}

/// A free 127.0.0.1 port for the real binary (bound and released; the race is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().map(|a: SocketAddr| a.port()).unwrap()
}

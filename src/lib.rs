//! event-ingestor: an HTTP gateway that publishes events to Apache Kafka without losing any it acknowledged.
//!
//! `Application::build` binds the listeners and starts the pipeline (HTTP handler → bounded queue →
//! worker pool → librdkafka → delivery reports); `Application::run_until_stopped` serves until the
//! shutdown trigger fires, then drains in order.
#![forbid(unsafe_code)]

pub mod config;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod lifecycle;
pub mod telemetry;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::{Brokers, Settings};
use crate::http::access::{Access, ApiKeys, RateLimits};
use crate::http::{AppState, IngestLimits, SharedState, Topics};
use crate::ingest::{IngestQueue, Sink};
use crate::kafka::{EmbeddedKafka, Ledger, Publisher, Spool};
use crate::lifecycle::{Readiness, Shutdown};
use crate::telemetry::{Metrics, QueueGauge};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the embedded Kafka cluster: {0}")]
    Embedded(String),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error("cannot load the API keys: {0}")]
    ApiKeys(String),
    #[error("cannot open the spool directory {dir}: {source}")]
    Spool { dir: std::path::PathBuf, source: std::io::Error },
}

/// What the shutdown did, for the exit log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events accepted but neither published, dead-lettered nor spooled: lost.
    pub undelivered: usize,
    /// Bytes in the spool at exit (replayed on the next start).
    pub spooled_bytes: u64,
    pub forced: bool,
}

/// A built, bound service, ready to run.
pub struct Application {
    settings: Settings,
    main_listener: TcpListener,
    admin_listener: TcpListener,
    state: AppState,
    publisher: Arc<Publisher>,
    workers: JoinSet<()>,
    failures_task: JoinHandle<()>,
    failures_stop: CancellationToken,
    health_stop: CancellationToken,
    ledger: Arc<Ledger>,
    bootstrap: String,
    embedded: Option<EmbeddedKafka>,
}

impl Application {
    /// Starts Kafka plumbing and binds both listeners (port 0 picks a free port: tests use that).
    pub async fn build(settings: Settings, shutdown: Shutdown) -> Result<Self, StartError> {
        let embedded = match settings.kafka.brokers {
            Brokers::Embedded => {
                let mut topics: Vec<&str> = vec![&settings.kafka.topic, &settings.kafka.dlq_topic];
                topics.extend(settings.kafka.topic_allowlist.iter().map(String::as_str));
                let cluster = EmbeddedKafka::start(&topics, 3).map_err(StartError::Embedded)?;
                tracing::warn!(
                    bootstrap_servers = cluster.bootstrap_servers(),
                    topics = ?topics,
                    "EMBEDDED KAFKA: events go to an in-process mock cluster and stay in memory; they are lost when \
                     the process exits. Any Kafka client on this host can read them from the bootstrap address."
                );
                Some(cluster)
            }
            Brokers::List(_) => None,
        };
        let bootstrap = match (&settings.kafka.brokers, &embedded) {
            (Brokers::List(list), _) => list.clone(),
            (Brokers::Embedded, Some(cluster)) => cluster.bootstrap_servers().to_string(),
            (Brokers::Embedded, None) => unreachable!("the embedded cluster was started above"),
        };

        let keys = ApiKeys::load(&settings).map_err(StartError::ApiKeys)?;
        let queue_gauge =
            Arc::new(QueueGauge::with_max_bytes(settings.ingest.queue_size, settings.ingest.queue_max_bytes));
        let metrics = Metrics::new(queue_gauge.clone());
        let spool_error = |source| StartError::Spool { dir: settings.spool.dir.clone(), source };
        let (ledger, previous) = Ledger::open(&settings.spool.dir).map_err(spool_error)?;
        if let Some(previous) = previous.filter(|p| p.unresolved() > 0) {
            tracing::error!(
                unresolved = previous.unresolved(),
                accepted = previous.accepted,
                resolved = previous.resolved,
                "the previous run stopped without a clean shutdown: up to this many accepted events were never \
                 published, dead-lettered or spooled (anything it spooled is replayed)"
            );
            metrics.set_unresolved_previous_run(previous.unresolved());
        }
        let spool = Spool::open(&settings.spool.dir, settings.spool.max_bytes, metrics.clone()).map_err(spool_error)?;
        if spool.bytes() > 0 {
            tracing::warn!(dir = %settings.spool.dir.display(), bytes = spool.bytes(), "the spool holds events; they are replayed once Kafka answers");
        }
        metrics.set_spool_bytes(spool.bytes());
        let (publisher, failures) =
            Publisher::new(&settings.kafka, &bootstrap, settings.ingest.queue_size, metrics.clone(), spool.clone())?;
        let failures_stop = CancellationToken::new();
        let failures_task = tokio::spawn(publisher.clone().run_failures(failures, failures_stop.clone()));

        let bind = |port: u16| SocketAddr::new(settings.http.bind, port);
        let main_listener = TcpListener::bind(bind(settings.http.port))
            .await
            .map_err(|source| StartError::Bind { addr: bind(settings.http.port), source })?;
        let admin_listener = TcpListener::bind(bind(settings.http.admin_port))
            .await
            .map_err(|source| StartError::Bind { addr: bind(settings.http.admin_port), source })?;

        let sink = if settings.ingest.publish_to_kafka {
            Sink::Kafka(publisher.clone())
        } else {
            tracing::warn!("PUBLISHER=noop: events are acknowledged and dropped (benchmarks only)");
            Sink::Noop(metrics.clone())
        };
        let ledger = Arc::new(ledger);
        let (queue, workers) =
            IngestQueue::start(settings.ingest.worker_pool_size, sink, metrics.clone(), ledger.clone());
        let readiness = Arc::new(Readiness::new(
            settings.kafka.unreachable_window,
            queue_gauge.clone(),
            settings.ingest.queue_high_water,
        ));
        let health_stop = CancellationToken::new();
        tokio::spawn(kafka::health::monitor(
            publisher.clone(),
            settings.kafka.topic.clone(),
            settings.kafka.metadata_refresh,
            readiness.clone(),
            health_stop.clone(),
        ));
        tokio::spawn(kafka::replay::run(
            publisher.clone(),
            readiness.clone(),
            metrics.clone(),
            settings.kafka.write_timeout + Duration::from_secs(5),
            health_stop.clone(),
        ));
        tokio::spawn(write_ledger(ledger.clone(), queue_gauge.clone(), health_stop.clone()));
        tokio::spawn(publisher.clone().run_fatal_recovery(health_stop.clone()));

        let state = AppState::new(SharedState {
            queue,
            metrics,
            readiness,
            shutdown,
            topics: Arc::new(Topics::from_settings(&settings)),
            ack_mode: settings.ingest.ack_mode,
            // One full librdkafka attempt plus a margin for the delivery report to arrive.
            ack_timeout: settings.kafka.write_timeout + Duration::from_secs(1),
            limits: Arc::new(IngestLimits::from_settings(&settings)),
            spool,
            access: Arc::new(Access { keys: keys.clone(), limits: RateLimits::from_settings(&settings) }),
            sampler: telemetry::trace::HeadSampler::from_env(),
            beacon_path: Arc::from(settings.access.beacon_path.as_str()),
            body_read_timeout: settings.http.body_read_timeout,
        });
        http::access::watch_keys(keys, health_stop.clone());
        Ok(Application {
            settings,
            main_listener,
            admin_listener,
            state,
            publisher,
            workers,
            failures_task,
            failures_stop,
            health_stop,
            ledger,
            bootstrap,
            embedded,
        })
    }

    /// The pipeline's producer side (for fault-injection tests).
    pub fn publisher(&self) -> Arc<kafka::Publisher> {
        self.publisher.clone()
    }

    /// The state the handlers share (for routers built around the same pipeline, e.g. in tests).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.main_listener.local_addr().expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener has an address")
    }

    /// The broker list the producer uses (the mock cluster's address in embedded mode).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The embedded cluster, for fault injection in tests.
    pub fn embedded_kafka(&self) -> Option<&EmbeddedKafka> {
        self.embedded.as_ref()
    }

    /// Serves until the shutdown trigger fires, then: readiness off, keep serving for the drain delay,
    /// stop accepting, finish in-flight requests, drain the queue, wait for delivery reports, flush.
    pub async fn run_until_stopped(self) -> std::io::Result<ShutdownReport> {
        let Application {
            settings,
            main_listener,
            admin_listener,
            state,
            publisher,
            mut workers,
            failures_task,
            failures_stop,
            health_stop,
            ledger,
            embedded,
            ..
        } = self;
        let shutdown = state.shutdown.clone();
        let http_addr = main_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let main_stop = CancellationToken::new();
        let main_app = http::ingest_router(state.clone(), &settings);
        let limits = http::server::ConnectionLimits {
            header_read_timeout: settings.http.header_read_timeout,
            keepalive_timeout: settings.http.keepalive_timeout,
            max_connections: settings.http.max_connections,
            peer_addresses: settings.rate_limit.client_rps > 0,
        };
        let mut main_server = tokio::spawn(http::server::serve(
            main_listener,
            main_app,
            limits,
            state.metrics.clone(),
            main_stop.clone(),
        ));
        let admin_stop = CancellationToken::new();
        let admin_server = tokio::spawn(
            axum::serve(admin_listener, http::admin::router(state.clone()))
                .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
                .into_future(),
        );
        state.readiness.set_started();
        tracing::info!(%http_addr, %admin_addr, topic = %settings.kafka.topic, ack_mode = ?settings.ingest.ack_mode, "event-ingestor listening");

        tokio::select! {
            _ = shutdown.begun() => {}
            result = &mut main_server => {
                // The ingest server stopped on its own: an I/O failure. Drain what was accepted.
                tracing::error!(?result, "ingest listener stopped unexpectedly; draining");
                shutdown.begin();
            }
        }
        let started = Instant::now();
        state.readiness.set_draining();
        tracing::info!(drain_delay = ?settings.shutdown.drain_delay, "readiness off; serving on while endpoints are removed");
        tokio::select! {
            _ = tokio::time::sleep(settings.shutdown.drain_delay) => {}
            _ = shutdown.forced() => {}
        }
        let deadline = tokio::time::Instant::now() + settings.shutdown.timeout;

        let step = Instant::now();
        main_stop.cancel();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => tracing::warn!("in-flight requests still open at the shutdown deadline"),
            _ = shutdown.forced() => {}
            _ = &mut main_server => {}
        }
        tracing::info!(
            elapsed_ms = step.elapsed().as_millis() as u64,
            "stopped accepting; in-flight requests finished"
        );

        let step = Instant::now();
        state.queue.close();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => tracing::warn!("queue not drained at the shutdown deadline"),
            _ = shutdown.forced() => {}
            _ = async { while workers.join_next().await.is_some() {} } => {}
        }
        tracing::info!(elapsed_ms = step.elapsed().as_millis() as u64, "ingest queue drained into the producer");

        let step = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.forced() => {}
            _ = async { while state.metrics.pending() > 0 { tokio::time::sleep(Duration::from_millis(5)).await } } => {}
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let flush_budget = if shutdown.is_forced() { Duration::ZERO } else { remaining };
        let p = publisher.clone();
        let _ = tokio::task::spawn_blocking(move || p.flush(flush_budget)).await;
        tracing::info!(elapsed_ms = step.elapsed().as_millis() as u64, "producer flushed");

        // Past the budget (or forced): nothing is dropped. Retries still waiting, jobs no worker took,
        // and what librdkafka still holds all go to the spool, fsynced, to be replayed on the next start.
        failures_stop.cancel();
        let _ = failures_task.await;
        workers.abort_all();
        let spool = publisher.spool().clone();
        let leftovers = state.queue.take_remaining();
        if !leftovers.is_empty() {
            tracing::warn!(events = leftovers.len(), "shutdown: spooling events no worker took");
        }
        for record in leftovers {
            if let Err(r) = spool.submit(record) {
                tracing::error!(id = %r.id, "event could not be spooled at shutdown; lost");
                state.metrics.lost(1, r.queue_bytes());
            }
        }
        let unsent = state.metrics.pending();
        if unsent > 0 {
            let p = publisher.clone();
            let _ = tokio::task::spawn_blocking(move || p.abandon()).await;
            tracing::warn!(events = unsent, "shutdown budget spent: spooling what Kafka had not acknowledged");
        }
        health_stop.cancel();
        let s = spool.clone();
        let _ = tokio::task::spawn_blocking(move || s.close()).await;
        let undelivered = state.metrics.pending();
        if undelivered > 0 {
            tracing::error!(undelivered, "events neither delivered nor spooled at shutdown; counted as lost");
            state.metrics.lost_pending();
        }
        ledger.clean_stop(state.metrics.queue().resolved_total());
        admin_stop.cancel();
        let _ = admin_server.await;
        drop(publisher);
        drop(embedded);
        let report = ShutdownReport { undelivered, spooled_bytes: spool.bytes(), forced: shutdown.is_forced() };
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, ?report, "shutdown complete");
        Ok(report)
    }
}

/// Writes the resolved count to the ledger every 100 ms (accepted counts are written as they happen).
async fn write_ledger(ledger: Arc<Ledger>, gauge: Arc<QueueGauge>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => ledger.resolved(gauge.resolved_total()),
        }
    }
}

/// `event-ingestor spool replay`: replays the spool directory of `settings` to its brokers once and
/// reports what happened. For an operator moving a spool by hand; the service replays on its own.
pub async fn replay_spool(settings: Settings) -> Result<kafka::replay::ReplaySummary, String> {
    let Brokers::List(bootstrap) = &settings.kafka.brokers else {
        return Err("spool replay needs real brokers (KAFKA_BROKERS), not the embedded cluster".into());
    };
    let metrics = Metrics::new(Arc::new(QueueGauge::new(settings.ingest.queue_size)));
    let spool = Spool::open(&settings.spool.dir, u64::MAX, metrics.clone()).map_err(|e| e.to_string())?;
    let (publisher, failures) =
        Publisher::new(&settings.kafka, bootstrap, settings.ingest.queue_size, metrics.clone(), spool.clone())
            .map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let failures_task = tokio::spawn(publisher.clone().run_failures(failures, stop.clone()));
    let summary =
        kafka::replay::replay_once(&publisher, &metrics, settings.kafka.write_timeout + Duration::from_secs(5)).await;
    stop.cancel();
    let _ = failures_task.await;
    let s = spool.clone();
    let _ = tokio::task::spawn_blocking(move || s.close()).await;
    Ok(summary)
}

//! Lifecycle: readiness as a set of checks every subsystem reports to, the shutdown trigger (signals,
//! `POST /drain`, tests), and the signal listener.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::telemetry::QueueGauge;

/// Readiness: started, Kafka metadata fresh, queue below its high-water mark, not draining.
#[derive(Debug)]
pub struct Readiness {
    origin: Instant,
    started: AtomicBool,
    draining: AtomicBool,
    /// Milliseconds since `origin` of the last successful metadata fetch, plus one (0 = never).
    kafka_ok_at: AtomicU64,
    kafka_up: AtomicBool,
    unreachable_window: Duration,
    queue: Arc<QueueGauge>,
    high_water: f64,
}

/// One line of the `/readyz` answer.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Readiness {
    pub fn new(unreachable_window: Duration, queue: Arc<QueueGauge>, high_water: f64) -> Self {
        Self {
            origin: Instant::now(),
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            kafka_ok_at: AtomicU64::new(0),
            kafka_up: AtomicBool::new(false),
            unreachable_window,
            queue,
            high_water,
        }
    }

    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Turns readiness off for good: the process is on its way out.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn kafka_reachable(&self) {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        self.kafka_ok_at.store(now, Ordering::Release);
        self.kafka_up.store(true, Ordering::Release);
    }

    /// The last metadata fetch failed.
    pub fn kafka_unreachable(&self) {
        self.kafka_up.store(false, Ordering::Release);
    }

    /// The last metadata fetch succeeded.
    pub fn kafka_ok(&self) -> bool {
        self.kafka_up.load(Ordering::Acquire)
    }

    pub fn kafka_ever_reachable(&self) -> bool {
        self.kafka_ok_at.load(Ordering::Acquire) != 0
    }

    /// Every check with its state; ready when all are ok.
    pub fn checks(&self) -> Vec<Check> {
        let started = self.started.load(Ordering::Acquire);
        let draining = self.is_draining();
        let ok_at = self.kafka_ok_at.load(Ordering::Acquire);
        let kafka = if ok_at == 0 {
            Check { name: "kafka", ok: false, detail: "metadata not fetched yet".into() }
        } else {
            let age = self.origin.elapsed().saturating_sub(Duration::from_millis(ok_at - 1));
            Check {
                name: "kafka",
                ok: age <= self.unreachable_window,
                detail: format!("last metadata fetch {} ms ago", age.as_millis()),
            }
        };
        let utilization = self.queue.utilization();
        vec![
            Check { name: "started", ok: started, detail: if started { "listening" } else { "starting" }.into() },
            kafka,
            Check {
                name: "queue",
                ok: utilization < self.high_water,
                detail: format!("utilization {utilization:.3} (high-water {})", self.high_water),
            },
            Check { name: "draining", ok: !draining, detail: if draining { "shutting down" } else { "no" }.into() },
        ]
    }

    pub fn is_ready(&self) -> bool {
        self.checks().iter().all(|c| c.ok)
    }
}

/// The shutdown trigger: `begin` starts the drain (first signal, `POST /drain`), `force` skips the
/// remaining waits (second signal).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    force: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn begin(&self) {
        self.drain.cancel();
    }

    pub fn force(&self) {
        self.drain.cancel();
        self.force.cancel();
    }

    pub async fn begun(&self) {
        self.drain.cancelled().await
    }

    pub async fn forced(&self) {
        self.force.cancelled().await
    }

    pub fn is_forced(&self) -> bool {
        self.force.is_cancelled()
    }
}

/// Listens for SIGTERM and SIGINT: the first begins the drain, the second forces it. Logs which signal
/// arrived. The handlers are installed before this returns, so no signal is missed.
#[cfg(unix)]
pub fn listen_for_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        for count in 1.. {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if count == 1 {
                tracing::info!(signal = name, "shutdown signal received; draining");
                shutdown.begin();
            } else {
                tracing::warn!(signal = name, "second shutdown signal; skipping the remaining waits");
                shutdown.force();
                return;
            }
        }
    });
    Ok(())
}

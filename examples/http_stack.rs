//! N single-event requests through the ingest API in process (`PUBLISHER=noop`, no sockets), or through a
//! bare axum router answering 202 (`bare`): the in-process half of the noop-overhead load row, for
//! profiling. Deterministic under callgrind, where the noisy shared machine is not:
//!
//! ```sh
//! cargo build --release --example http_stack
//! valgrind --tool=callgrind target/release/examples/http_stack 10000        # then 20000: the difference
//! valgrind --tool=callgrind target/release/examples/http_stack 10000 bare   # is the cost of 10000 requests
//! ```
use std::time::{Duration, Instant};

use axum::body::Body;
use event_ingestor::http::IngestService;
use tower::ServiceExt;

#[cfg(feature = "mimalloc")]
#[path = "../src/alloc.rs"]
mod alloc;

/// The binary's allocator, so that the profile is the binary's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

const EVENT: &str = r#"{"type":"page.view","key":"user-1234","headers":{"tenant":"acme"},"payload":{"url":"https://example.com/a/b","ref":"https://example.com/","ms":1234,"tags":["x","y"]}}"#;

async fn run(router: impl IngestService, n: u64) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
        let req = axum::http::Request::post("/events")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("content-length", EVENT.len())
            .body(Body::from(EVENT))
            .unwrap();
        // No `ConnectInfo`: the server adds it only when per-client rate limits are configured.
        let res = router.clone().oneshot(req).await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        drop(axum::body::to_bytes(res.into_body(), 1 << 16).await);
    }
    start.elapsed()
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let bare_only = std::env::args().nth(2).as_deref() == Some("bare");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let settings = event_ingestor::config::Settings::with_overrides(&[
        ("PUBLISHER", "noop"),
        ("QUEUE_SIZE", "1000000"),
        ("HTTP_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("RATE_LIMIT_RPS", "0"),
        ("KAFKA_BROKERS", "127.0.0.1:9"),
        ("SPOOL_DIR", spool.path().to_str().unwrap()),
    ])
    .unwrap();
    let app = rt
        .block_on(event_ingestor::Application::build(settings.clone(), event_ingestor::lifecycle::Shutdown::new()))
        .unwrap();
    let elapsed = if bare_only {
        let bare = axum::Router::new()
            .route("/events", axum::routing::post(|_b: axum::body::Bytes| async { axum::http::StatusCode::ACCEPTED }));
        rt.block_on(run(bare, n))
    } else {
        // The stack starts a task (the load shedding's completion rate): built within the runtime.
        let router = rt.block_on(async { event_ingestor::http::ingest_router(app.state(), &settings) });
        rt.block_on(run(router, n))
    };
    eprintln!("{n} requests, {:.2} µs each", elapsed.as_secs_f64() * 1e6 / n as f64);
    drop(app);
}

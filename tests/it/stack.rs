//! The middleware stack under abuse: quotas, saturation, slow clients, panics, API keys, CORS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use event_ingestor::http::access::hash_hex;
use event_ingestor::kafka::EmbeddedKafka;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn app_with(overrides: &[(&str, &str)]) -> (EmbeddedKafka, TestApp) {
    let cluster = EmbeddedKafka::start(&["events", "events-dlq", "audit"], 3).unwrap();
    let app = spawn_app(cluster.bootstrap_servers(), "events", "events-dlq", overrides).await;
    wait_ready(&app.client, &app.admin).await;
    (cluster, app)
}

fn event() -> Value {
    json!({"type": "t", "payload": 1})
}

/// The answer's `Retry-After`, in seconds.
fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"].to_str().unwrap().parse().unwrap()
}

fn assert_429(r: &reqwest::Response, scope: &str) {
    assert_eq!(r.status(), 429);
    let h = r.headers();
    assert!(retry_after(r) >= 1);
    assert!(h["ratelimit-policy"].to_str().unwrap().starts_with(&format!("\"{scope}\";q=")), "{h:?}");
    assert!(h["ratelimit"].to_str().unwrap().contains(";r=0;t="), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_quota_client_gets_429_while_others_are_served() {
    // Per client IP, behind a trusted proxy.
    let (_c, app) = app_with(&[
        ("CLIENT_RATE_LIMIT_RPS", "1"),
        ("CLIENT_RATE_LIMIT_BURST", "2"),
        ("TRUSTED_PROXIES", "127.0.0.0/8"),
    ])
    .await;
    let post = |ip: &'static str| {
        app.client.post(format!("{}/events", app.http)).header("x-forwarded-for", ip).json(&event()).send()
    };
    assert_eq!(post("198.51.100.1").await.unwrap().status(), 202);
    assert_eq!(post("198.51.100.1").await.unwrap().status(), 202);
    let r = post("198.51.100.1").await.unwrap();
    assert_429(&r, "client");
    assert_eq!(post("198.51.100.2").await.unwrap().status(), 202, "another client is served");
    assert_eq!(app.metric("http_rate_limited_total{scope=\"client\"}").await, 1.0);
    app.stop().await;

    // Per API key, each tenant with its own limit.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        json!({"keys": [
            {"tenant": "slow", "key_sha256": hash_hex("slow-key-0123456789"), "rate_limit_rps": 1, "rate_limit_burst": 1},
            {"tenant": "fast", "key": "fast-key-0123456789"}
        ]})
        .to_string(),
    )
    .unwrap();
    let (_c, app) = app_with(&[("API_KEYS_FILE", keys.to_str().unwrap())]).await;
    let post =
        |key: &'static str| app.client.post(format!("{}/events", app.http)).bearer_auth(key).json(&event()).send();
    assert_eq!(post("slow-key-0123456789").await.unwrap().status(), 202);
    assert_429(&post("slow-key-0123456789").await.unwrap(), "tenant");
    for _ in 0..5 {
        assert_eq!(post("fast-key-0123456789").await.unwrap().status(), 202);
    }
    app.stop().await;

    // Counting events: a batch spends its size.
    let (_c, app) =
        app_with(&[("RATE_LIMIT_UNIT", "events"), ("RATE_LIMIT_RPS", "1"), ("RATE_LIMIT_BURST", "10")]).await;
    let batch = json!([event(), event(), event(), event(), event(), event(), event(), event()]);
    let r = app.client.post(format!("{}/events", app.http)).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let r = app.client.post(format!("{}/events", app.http)).json(&batch).send().await.unwrap();
    assert_429(&r, "global");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_answers_503_fast_with_a_retry_after_that_follows_depth_while_probes_answer() {
    let (cluster, app) = app_with(&[("QUEUE_SIZE", "20")]).await;
    cluster.set_round_trip_time(Duration::from_secs(20)).unwrap();
    let url = format!("{}/events", app.http);
    let batch = |n: usize| Value::Array((0..n).map(|_| event()).collect());

    assert_eq!(app.client.post(&url).json(&batch(5)).send().await.unwrap().status(), 202);
    let started = Instant::now();
    let r = app.client.post(&url).json(&batch(18)).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "rejections return fast");
    assert_eq!(r.status(), 503);
    let shallow = retry_after(&r);
    assert_eq!(app.client.post(&url).json(&batch(10)).send().await.unwrap().status(), 202);
    let r = app.client.post(&url).json(&batch(18)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let deep = retry_after(&r);
    assert!(deep > shallow, "Retry-After grows with the queue depth ({shallow} s → {deep} s)");
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(app.client.post(&url).json(&batch(10)).send().await.unwrap().status(), 503);
        assert_eq!(app.client.get(format!("{}/livez", app.admin)).send().await.unwrap().status(), 200);
        assert_eq!(app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().status(), 200);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    cluster.set_round_trip_time(Duration::ZERO).unwrap();
    app.stop().await;
}

/// A full MAX_CONCURRENT_REQUESTS limit (requests waiting on a slow broker with `ack=kafka`): 503
/// `overloaded` at once, with a Retry-After of how long the requests in progress take to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_concurrency_limit_answers_503_with_a_retry_after_from_how_fast_requests_finish() {
    let (cluster, app) = app_with(&[("MAX_CONCURRENT_REQUESTS", "12"), ("REQUEST_TIMEOUT", "20s")]).await;
    // Metadata and the producer id first, while the broker is quick.
    let r = app.client.post(format!("{}/events?ack=kafka", app.http)).json(&event()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    cluster.set_round_trip_time(Duration::from_secs(2)).unwrap();
    // Twelve clients with one `ack=kafka` request each in progress: the limit is full, and each request
    // takes the broker's 2 s or more, so at most 6 finish a second.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (client, url, stop) = (app.client.clone(), format!("{}/events?ack=kafka", app.http), stop.clone());
            tokio::spawn(async move {
                let mut published = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = client.post(&url).json(&event()).send().await.unwrap();
                    match r.status().as_u16() {
                        200 => published += 1,
                        // A place taken by the probe below, between this client's requests.
                        503 => tokio::time::sleep(Duration::from_millis(50)).await,
                        status => panic!("{status}: {}", r.text().await.unwrap()),
                    }
                }
                published
            })
        })
        .collect();

    // Probing once the clients hold every place, so that only requests that waited on the broker finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("{}/events", app.http);
    let loaded = Instant::now();
    let mut retry_afters = Vec::new();
    while loaded.elapsed() < Duration::from_secs(8) {
        let started = Instant::now();
        let r = app.client.post(&url).json(&event()).send().await.unwrap();
        if r.status() == 503 {
            assert!(started.elapsed() < Duration::from_millis(500), "rejections return fast");
            let seconds = retry_after(&r);
            assert_eq!(r.json::<Value>().await.unwrap()["code"], "overloaded");
            retry_afters.push((loaded.elapsed(), seconds));
        }
        assert_eq!(app.client.get(format!("{}/livez", app.admin)).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut published = 0;
    for client in clients {
        published += client.await.unwrap();
    }
    assert!(published >= 12, "the clients' requests finish: {published}");
    // Before any of them had finished (only the warm-up request had), the answer was that of a stalled
    // drain: 12 in progress at 1 a second.
    let (at, retry_after) = *retry_afters.first().expect("the probe was refused while the limit was full");
    assert!(at < Duration::from_millis(1500) && retry_after == 12, "{retry_afters:?}");
    // Late in the run, once the rate has been measured over its whole window (5 s).
    let (at, retry_after) = *retry_afters.last().unwrap();
    assert!(at > Duration::from_secs(6), "{retry_afters:?}");
    // 12 in progress, finishing at most 6 a second: 2 s at least. Below the 12 s of a stalled drain (they
    // do finish), and not REQUEST_TIMEOUT's 20 s. How many finish a second depends on how librdkafka
    // batches them into its at most 5 produce requests in flight (2 s each here): once only 1.3, so 9 s.
    assert!((2..12).contains(&retry_after), "Retry-After {retry_after} s: {retry_afters:?}");
    assert!(app.metric("http_load_shed_total").await >= retry_afters.len() as f64);
    cluster.set_round_trip_time(Duration::ZERO).unwrap();
    app.stop().await;
}

/// Large events fill the queue's byte budget (QUEUE_MAX_BYTES) before its event count: 503 once the
/// budget is held, 413 for a request larger than the whole budget, and the bytes come back on delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_in_bytes_as_well_as_in_events() {
    let (cluster, app) = app_with(&[("QUEUE_MAX_BYTES", "65536"), ("MAX_EVENT_BYTES", "65536")]).await;
    cluster.set_round_trip_time(Duration::from_secs(3)).unwrap();
    let url = format!("{}/events", app.http);
    let big = || json!({"type": "t", "payload": "x".repeat(20_000)});
    for _ in 0..3 {
        assert_eq!(app.client.post(&url).json(&big()).send().await.unwrap().status(), 202);
    }
    let held = app.metric("ingest_queue_bytes").await;
    assert!((60_000.0..=65_536.0).contains(&held), "3 events of 20 KB held: {held} bytes");
    assert_eq!(app.metric("ingest_queue_size").await, 3.0, "3 of QUEUE_SIZE's 10,000 slots");

    let r = app.client.post(&url).json(&big()).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "queue_full");
    let r = app.client.post(&url).json(&json!([big(), big(), big(), big()])).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["code"], "batch_too_large");
    assert!(body["detail"].as_str().unwrap().contains("QUEUE_MAX_BYTES"), "{body}");

    cluster.set_round_trip_time(Duration::ZERO).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.metric("ingest_queue_bytes").await > 0.0 || app.metric("ingest_queue_size").await > 0.0 {
        assert!(Instant::now() < deadline, "the queue's bytes were not given back on delivery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.metric("events_published_total").await, 3.0);
    assert_eq!(app.client.post(&url).json(&big()).send().await.unwrap().status(), 202);
    app.stop().await;
}

/// The keep-alive idle limit is its own setting: an idle connection outlives the header timeout, and is
/// closed once idle past KEEPALIVE_TIMEOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_at_the_keepalive_timeout_not_the_header_timeout() {
    let (_c, app) = app_with(&[("HEADER_READ_TIMEOUT", "1s"), ("KEEPALIVE_TIMEOUT", "3s")]).await;
    let addr = app.http.trim_start_matches("http://").to_string();
    let body = r#"{"type":"t","payload":1}"#;
    let request = format!(
        "POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for pause in [Duration::ZERO, Duration::from_secs(2)] {
        tokio::time::sleep(pause).await;
        s.write_all(request.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 202"),
            "answered after {pause:?} idle: {}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let idle = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0, "the server closed the idle connection");
    let waited = idle.elapsed();
    println!("idle keep-alive connection closed after {waited:?} (KEEPALIVE_TIMEOUT 3s, HEADER_READ_TIMEOUT 1s)");
    assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_secs(5), "closed after {waited:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_normal_clients_keep_their_latency() {
    let (_c, app) = app_with(&[("HEADER_READ_TIMEOUT", "2s"), ("BODY_READ_TIMEOUT", "2s")]).await;
    let addr = app.http.trim_start_matches("http://").to_string();
    let baseline = app.metric("http_open_connections").await;

    // 500 connections sending their headers one byte a second.
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"P").await.unwrap();
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut closed = 0;
        for byte in b"OST /events HTTP/1.1\r\nhost: x\r\n".iter().cycle().take(8) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            closed = 0;
            for s in slow.iter_mut() {
                if s.write_all(&[*byte]).await.is_err() {
                    closed += 1;
                }
            }
        }
        // A closed socket is seen on read as EOF or a reset.
        let mut buf = [0u8; 256];
        for s in slow.iter_mut() {
            match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
                Ok(Ok(_)) => closed += 1, // an error answer, then close
                Err(_) => {}
            }
        }
        (closed, started.elapsed())
    });
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let r = app.client.post(format!("{}/events", app.http)).json(&event()).send().await.unwrap();
        assert_eq!(r.status(), 202);
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("normal client worst latency during the slowloris: {worst:?}");
    assert!(worst < Duration::from_secs(1));
    let (closed, took) = trickle.await.unwrap();
    assert!(closed >= 500, "slow connections closed at the header timeout ({closed} of 500 after {took:?})");

    // A body trickled at 1 byte/s: 408 at the body timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(6));
    drop(s);

    let deadline = Instant::now() + Duration::from_secs(10);
    while app.metric("http_open_connections").await > baseline + 1.0 {
        assert!(Instant::now() < deadline, "open connections never returned to baseline");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_answers_500_and_the_service_keeps_serving() {
    let cluster = EmbeddedKafka::start(&["events", "events-dlq"], 3).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let settings = event_ingestor::config::Settings::with_overrides(&[
        ("KAFKA_BROKERS", cluster.bootstrap_servers()),
        ("HTTP_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("SPOOL_DIR", spool.path().to_str().unwrap()),
    ])
    .unwrap();
    let built = event_ingestor::Application::build(settings.clone(), Default::default()).await.unwrap();
    let state = built.state();
    let routes = axum::Router::new()
        .route("/panic", get(|| async { panic!("a handler bug") as &'static str }))
        .route("/fine", get(|| async { "fine" }));
    let app = event_ingestor::http::with_middleware(routes, state.clone(), &settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let r = client.get(format!("http://{addr}/panic")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "internal_error");
    assert_eq!(client.get(format!("http://{addr}/fine")).send().await.unwrap().text().await.unwrap(), "fine");
    assert!(state.metrics.encode().contains("http_panics_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_401_403_and_reload_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let write = |entries: Value| std::fs::write(&keys, json!({"keys": entries}).to_string()).unwrap();
    write(json!([{"tenant": "web", "key": "web-key-0123456789", "topics": ["events"]}]));
    let (_c, app) = app_with(&[("API_KEYS_FILE", keys.to_str().unwrap()), ("KAFKA_TOPIC_ALLOWLIST", "audit")]).await;
    let post = |path: &str, key: Option<&str>| {
        let mut r = app.client.post(format!("{}{path}", app.http)).json(&event());
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        r.send()
    };
    let r = post("/events", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(post("/events", Some("wrong-key-0123456789")).await.unwrap().status(), 401);
    assert_eq!(post("/events", Some("web-key-0123456789")).await.unwrap().status(), 202);
    let r = post("/topics/audit/events", Some("web-key-0123456789")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "forbidden");
    assert_eq!(app.client.get(format!("{}/health", app.http)).send().await.unwrap().status(), 200, "health stays open");

    // A new key is picked up from the file without a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a distinct mtime
    write(json!([
        {"tenant": "web", "key": "web-key-0123456789", "topics": ["events"]},
        {"tenant": "audit", "key": "audit-key-0123456789", "topics": ["audit"]}
    ]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while post("/topics/audit/events", Some("audit-key-0123456789")).await.unwrap().status() != 202 {
        assert!(Instant::now() < deadline, "the new key was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_beacons_from_allowed_origins_only() {
    let (_c, app) = app_with(&[("CORS_ALLOWED_ORIGINS", "https://shop.example")]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/events", app.http))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let r = preflight("https://shop.example").await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    let r = preflight("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none(), "other origins are not allowed");

    // navigator.sendBeacon: a text/plain POST with the JSON event.
    let r = app
        .client
        .post(format!("{}/beacon", app.http))
        .header("origin", "https://shop.example")
        .header("content-type", "text/plain;charset=UTF-8")
        .body(r#"{"type":"page.view","payload":{"path":"/"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    app.stop().await;
}

//! Observability: a real Prometheus scrapes `/metrics`, OTLP spans with the right links reach a receiver,
//! Kafka records carry the producer span, logs carry trace ids, and queue utilization follows the queue.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use event_ingestor::kafka::EmbeddedKafka;
use rdkafka::message::Message;
use serde_json::{json, Value};

use crate::binary::{signal, start_binary, wait_exit};
use crate::helpers::*;

fn tool(name: &str) -> String {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().unwrap();
    assert!(
        found.status.success(),
        "{name} is not installed: run scripts/install-prometheus.sh (scripts/test.sh does)"
    );
    String::from_utf8(found.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_metrics_and_promtool_accepts_them() {
    let cluster = EmbeddedKafka::start(&["events", "events-dlq"], 3).unwrap();
    let app = spawn_app(cluster.bootstrap_servers(), "events", "events-dlq", &[]).await;
    wait_ready(&app.client, &app.admin).await;
    for i in 0..7 {
        let r = app
            .client
            .post(format!("{}/events", app.http))
            .json(&json!({"type": "t", "payload": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let exposition = app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap();
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), exposition.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let target = app.admin.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: event-ingestor\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let port = free_port();
    let mut prometheus = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = |q: &str| format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Value::Null;
    let found = loop {
        if let Ok(r) = app.client.get(query("events_received_total")).send().await {
            if let Ok(v) = r.json::<Value>().await {
                seen = v.clone();
                if v["data"]["result"][0]["value"][1] == "7" {
                    break true;
                }
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The HPA signal and a histogram are there too.
    let util: Value = app.client.get(query("ingest_queue_utilization")).send().await.unwrap().json().await.unwrap();
    let hist: Value =
        app.client.get(query("http_request_duration_seconds_count")).send().await.unwrap().json().await.unwrap();
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(found, "Prometheus never saw events_received_total = 7: {seen}");
    assert_eq!(util["data"]["result"].as_array().unwrap().len(), 1, "{util}");
    assert!(!hist["data"]["result"].as_array().unwrap().is_empty(), "{hist}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_utilization_follows_the_queue() {
    let cluster = EmbeddedKafka::start(&["events", "events-dlq"], 3).unwrap();
    let app = spawn_app(cluster.bootstrap_servers(), "events", "events-dlq", &[("QUEUE_SIZE", "100")]).await;
    wait_ready(&app.client, &app.admin).await;
    assert_eq!(app.metric("ingest_queue_utilization").await, 0.0);
    cluster.set_round_trip_time(Duration::from_secs(3)).unwrap();
    let batch = Value::Array((0..40).map(|i| json!({"type": "t", "payload": i})).collect());
    assert_eq!(app.client.post(format!("{}/events", app.http)).json(&batch).send().await.unwrap().status(), 202);
    let held = app.metric("ingest_queue_utilization").await;
    assert!((0.39..=0.41).contains(&held), "40 of 100 held: {held}");
    assert_eq!(app.metric("ingest_queue_size").await, 40.0);
    cluster.set_round_trip_time(Duration::ZERO).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.metric("ingest_queue_utilization").await > 0.0 {
        assert!(Instant::now() < deadline, "utilization never fell back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// An OTLP/HTTP JSON receiver: collects every span it is sent.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            let mut span = span.clone();
                            span["resource"] = rs["resource"].clone();
                            sink.lock().unwrap().push(span);
                        }
                    }
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

fn attr_text(span: &Value, key: &str) -> Option<String> {
    let v = attr(span, key)?;
    v.get("stringValue")
        .or_else(|| v.get("intValue"))
        .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_link_the_caller_the_server_span_the_producer_span_and_the_kafka_record() {
    let cluster = EmbeddedKafka::start(&["events", "events-dlq"], 3).unwrap();
    let (endpoint, spans) = otlp_receiver().await;
    let mut running = start_binary(&[
        ("KAFKA_BROKERS", cluster.bootstrap_servers()),
        ("SHUTDOWN_DRAIN_DELAY", "0s"),
        ("LOG_LEVEL", "debug"),
        ("RUST_LOG", "event_ingestor=debug,tower_http=debug,warn"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_SERVICE_NAME", "it-ingestor"),
    ]);
    let client = reqwest::Client::new();
    wait_ready(&client, &running.admin).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = client
        .post(format!("{}/events?ack=kafka", running.http))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"type": "traced", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let published: Value = r.json().await.unwrap();
    let record = fetch_at(
        cluster.bootstrap_servers(),
        "events",
        published["partition"].as_i64().unwrap() as i32,
        published["offset"].as_i64().unwrap(),
    )
    .await;
    let record_traceparent = headers_of(&record).remove("traceparent").expect("the record carries traceparent");

    // Spans are flushed at shutdown.
    signal(&running.child, "TERM");
    let lines = running.lines.clone();
    assert!(tokio::task::spawn_blocking(move || wait_exit(&mut running.child, Duration::from_secs(20)))
        .await
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let (server, producer) = loop {
        let all = spans.lock().unwrap().clone();
        let server = all.iter().find(|s| s["traceId"] == trace_id && s["kind"] == 2).cloned();
        let producer = all.iter().find(|s| s["traceId"] == trace_id && s["kind"] == 4).cloned();
        if let (Some(s), Some(p)) = (&server, &producer) {
            break (s.clone(), p.clone());
        }
        assert!(Instant::now() < deadline, "spans not received: {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(server["parentSpanId"], caller_span, "the caller's traceparent is the server span's parent");
    assert_eq!(attr_text(&server, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attr_text(&server, "http.route").as_deref(), Some("/events"));
    assert_eq!(attr_text(&server, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(producer["parentSpanId"], server["spanId"], "the producer span is a child of the server span");
    assert_eq!(attr_text(&producer, "messaging.system").as_deref(), Some("kafka"));
    assert_eq!(attr_text(&producer, "messaging.destination.name").as_deref(), Some("events"));
    assert_eq!(attr_text(&producer, "messaging.kafka.offset"), Some(published["offset"].to_string()), "{producer:#}");
    assert_eq!(attr_text(&producer, "messaging.kafka.destination.partition"), Some(published["partition"].to_string()));
    let service =
        server["resource"]["attributes"].as_array().unwrap().iter().find(|a| a["key"] == "service.name").unwrap();
    assert_eq!(service["value"]["stringValue"], "it-ingestor");
    assert_eq!(
        record_traceparent,
        format!("00-{trace_id}-{}-01", producer["spanId"].as_str().unwrap()),
        "the record names the producer span"
    );
    let server_span_id = server["spanId"].as_str().unwrap();
    let traced_lines =
        lines.lock().unwrap().iter().filter(|l| l.contains(trace_id) && l.contains(server_span_id)).count();
    assert!(traced_lines > 0, "log lines of the request carry its trace and span ids");
    let _ = rdkafka::message::Message::key(&record);
    let _ = record.payload();
}

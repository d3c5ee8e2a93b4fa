//! The HTTP API's edges: hostile and malformed input, methods, routes, the OpenAPI document. Uses the
//! embedded mock cluster: nothing here depends on what the broker does.

use std::io::Write;
use std::time::{Duration, Instant};

use event_ingestor::kafka::EmbeddedKafka;
use serde_json::{json, Value};

use crate::helpers::*;

async fn embedded_app(overrides: &[(&str, &str)]) -> (EmbeddedKafka, TestApp) {
    let cluster = EmbeddedKafka::start(&["events", "events-dlq", "audit"], 3).unwrap();
    let app = spawn_app(cluster.bootstrap_servers(), "events", "events-dlq", overrides).await;
    wait_ready(&app.client, &app.admin).await;
    (cluster, app)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// ≈1 MB of gzip that inflates to 1 GiB: 1,024 gzip members of 1 MiB of zeros each.
fn gzip_bomb() -> Vec<u8> {
    let member = gzip(&vec![0u8; 1 << 20]);
    member.repeat(1024)
}

/// A valid request still gets a quick 202 (the service was not hurt by what came before).
async fn still_serving(app: &TestApp) {
    let started = Instant::now();
    let r = app
        .client
        .post(format!("{}/events", app.http))
        .json(&json!({"type": "ok", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(started.elapsed() < Duration::from_secs(2), "slow after hostile input: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_the_right_status_and_never_hurt_other_clients() {
    let (_cluster, app) = embedded_app(&[]).await;
    let url = format!("{}/events", app.http);
    let nested = "[".repeat(100_000) + &"]".repeat(100_000);
    let tiny_items = "[".to_string() + &vec![r#"{"type":"t","payload":0}"#; 100_000].join(",") + "]";
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("gzip bomb", vec![("content-encoding", "gzip")], gzip_bomb(), 413, "decoded_body_too_large"),
        ("deep nesting", vec![], nested.into_bytes(), 400, "nesting_too_deep"),
        ("invalid utf-8", vec![], b"{\"type\":\"\xff\xfe\",\"payload\":1}".to_vec(), 400, "invalid_utf8"),
        ("truncated", vec![], br#"{"type":"t","payload":{"a":"#.to_vec(), 400, "malformed_json"),
        ("100k items", vec![], tiny_items.into_bytes(), 413, "batch_too_large"),
        ("wrong type", vec![("content-type", "application/xml")], b"<e/>".to_vec(), 415, "unsupported_media_type"),
        ("unknown encoding", vec![("content-encoding", "br")], b"x".to_vec(), 415, "unsupported_encoding"),
        ("empty body", vec![], Vec::new(), 400, "empty_body"),
        ("null", vec![], b"null".to_vec(), 400, "invalid_event"),
        ("bare number", vec![], b"42".to_vec(), 400, "invalid_event"),
        ("broken gzip", vec![("content-encoding", "gzip")], b"not gzip at all".to_vec(), 400, "invalid_encoding"),
    ];
    for (name, headers, body, status, code) in cases {
        let mut req = app.client.post(&url);
        if !headers.iter().any(|(k, _)| *k == "content-type") {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let started = Instant::now();
        let r = req.body(body).send().await.unwrap();
        assert_eq!(r.status(), status, "{name}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{name}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], code, "{name}: {problem}");
        assert!(started.elapsed() < Duration::from_secs(10), "{name} took {:?}", started.elapsed());
        still_serving(&app).await;
    }

    // Over the limit, with and without a Content-Length: refused at the limit, never buffered whole. A
    // raw client keeps sending while it reads the answer (an HTTP library reports the early close as an
    // upload error instead of showing the 413).
    let addr = app.http.trim_start_matches("http://").to_string();
    let ten_mb_string = format!(
        "POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        (10 << 20) + 30
    );
    let chunked =
        "POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    for (name, head, chunked) in [("10 MB string", ten_mb_string.as_str(), false), ("chunked 8 MB", chunked, true)] {
        let answer = raw_upload(&addr, head, chunked, 8 << 20).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{name}: {answer}");
        assert!(answer.contains("body_too_large"), "{name}: {answer}");
        still_serving(&app).await;
    }
    // Nothing of that reached the queue.
    assert_eq!(app.metric("events_received_total").await, 13.0, "only the 13 valid probes were taken");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_lines_columns_and_limits() {
    let (_cluster, app) =
        embedded_app(&[("MAX_EVENT_BYTES", "200"), ("MAX_EVENT_HEADERS", "2"), ("MAX_BATCH_EVENTS", "3")]).await;
    let url = format!("{}/events", app.http);
    let r = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\n  \"type\": \"t\",\n  oops\n}")
        .send()
        .await
        .unwrap();
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        (p["code"].as_str(), p["line"].as_u64(), p["column"].as_u64()),
        (Some("malformed_json"), Some(3), Some(3))
    );

    let big = json!({"type": "t", "payload": "y".repeat(300)});
    let r = app.client.post(&url).json(&big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "event_too_large");

    let headers = json!({"type": "t", "headers": {"a": "1", "b": "2", "c": "3"}, "payload": 1});
    let r = app.client.post(&url).json(&headers).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "too_many_headers");

    let r = app.client.post(&url).json(&json!([1, 2, 3, 4])).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "batch_too_large");

    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "method_not_allowed");
    let r = app.client.post(format!("{}/nope", app.http)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = app
        .client
        .post(format!("{}/topics/secret/events", app.http))
        .json(&json!({"type": "t", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unknown_topic");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_matches_the_routes() {
    let (_cluster, app) = embedded_app(&[]).await;
    let served: Value =
        app.client.get(format!("{}/openapi.json", app.http)).send().await.unwrap().json().await.unwrap();
    let in_repo: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(served, in_repo);
    assert_eq!(served["openapi"], "3.1.0");

    let described = event_ingestor::http::describe();
    let mut routes: Vec<(String, String)> = Vec::new();
    for listener in ["main", "admin"] {
        for r in described["routes"][listener].as_array().unwrap() {
            routes.push((r["method"].as_str().unwrap().to_lowercase(), r["path"].as_str().unwrap().to_string()));
        }
    }
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in served["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    routes.sort();
    documented.sort();
    assert_eq!(routes, documented, "the OpenAPI paths are exactly the routes the binary serves");
    app.stop().await;
}

/// Sends `head`, then up to `total` body bytes (as chunks when `chunked`) while reading the answer;
/// returns the start of the answer.
async fn raw_upload(addr: &str, head: &str, chunked: bool, total: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let head = head.to_string();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..total / chunk.len() {
            if chunked {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                wr.write_all(&chunk).await?;
                wr.write_all(b"\r\n").await?;
            } else {
                wr.write_all(&chunk).await?;
            }
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut answer)).await.expect("an answer").unwrap();
    writer.abort();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

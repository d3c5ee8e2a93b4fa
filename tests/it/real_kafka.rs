//! Against the real broker: what clients send is what lands in Kafka, exactly once.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use rdkafka::message::Message;
use rdkafka::Timestamp;
use serde_json::{json, Value};

use crate::helpers::*;

/// One of four shapes: bare, with id, with key and headers, with a timestamp.
fn mixed_event(i: usize) -> Value {
    match i % 4 {
        0 => json!({"type": "click", "payload": {"n": i}}),
        1 => json!({"id": format!("given-{i}-{}", uuid::Uuid::now_v7().simple()), "type": "view", "payload": {"n": i}}),
        2 => {
            json!({"type": "buy", "key": format!("user-{}", i % 7), "headers": {"tenant": "acme", "n": i.to_string()}, "payload": {"n": i}})
        }
        _ => json!({"type": "scroll", "timestamp": "2024-05-06T07:08:09.123Z", "payload": [i, null, "x"]}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_mixed_events_land_once_with_key_value_and_headers() {
    let Some(bootstrap) = real_kafka().await else { return };
    let (topic, dlq) = (unique_topic("it-mixed"), unique_topic("it-mixed-dlq"));
    create_topics(&bootstrap, &[&topic, &dlq]).await;
    let app = spawn_app(&bootstrap, &topic, &dlq, &[]).await;
    wait_ready(&app.client, &app.admin).await;

    let sent: Vec<(Value, String)> = stream::iter(0..1000)
        .map(|i| {
            let app = &app;
            async move {
                let event = mixed_event(i);
                let r = app.client.post(format!("{}/events", app.http)).json(&event).send().await.unwrap();
                assert_eq!(r.status(), 202, "event {i}");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["status"], "accepted");
                (event, body["id"].as_str().unwrap().to_string())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let messages = consume(&bootstrap, &topic, 1000, Duration::from_secs(60)).await;
    let ids = ids_of(&messages);
    assert_eq!(messages.len(), 1000, "every accepted event exactly once");
    let by_id: HashMap<String, _> = messages.iter().map(|m| (headers_of(m)["ce_id"].clone(), m)).collect();
    for (event, id) in &sent {
        assert_eq!(ids.get(id), Some(&1), "{id} present exactly once");
        if let Some(given) = event.get("id") {
            assert_eq!(given, id, "a given id is kept");
        }
        let msg = by_id[id];
        let value: Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        assert_eq!(value["id"], id.as_str());
        assert_eq!(value["type"], event["type"]);
        assert_eq!(value["payload"], event["payload"]);
        let expected_key = event.get("key").and_then(Value::as_str).unwrap_or(id);
        assert_eq!(msg.key(), Some(expected_key.as_bytes()), "key = key, else id");
        let headers = headers_of(msg);
        assert_eq!(headers["ce_type"], event["type"].as_str().unwrap());
        assert_eq!(headers["ce_specversion"], "1.0");
        assert_eq!(headers["ce_time"], value["timestamp"].as_str().unwrap());
        if let Some(h) = event.get("headers") {
            assert_eq!(headers["tenant"], h["tenant"].as_str().unwrap());
            assert_eq!(value["headers"], *h);
        }
        if event.get("timestamp").is_some() {
            assert_eq!(value["timestamp"], "2024-05-06T07:08:09.123Z");
            assert_eq!(msg.timestamp(), Timestamp::CreateTime(1_714_979_289_123));
        }
    }
    assert_eq!(app.metric("events_received_total").await, 1000.0);
    assert_eq!(app.metric("events_published_total").await, 1000.0);
    let report = app.stop().await;
    assert_eq!(report.undelivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_kafka_returns_the_partition_and_offset_that_hold_the_event() {
    let Some(bootstrap) = real_kafka().await else { return };
    let (topic, dlq) = (unique_topic("it-ack"), unique_topic("it-ack-dlq"));
    create_topics(&bootstrap, &[&topic, &dlq]).await;
    let app = spawn_app(&bootstrap, &topic, &dlq, &[]).await;
    wait_ready(&app.client, &app.admin).await;

    for i in 0..5 {
        let r = app
            .client
            .post(format!("{}/events?ack=kafka", app.http))
            .json(&json!({"type": "order", "key": format!("k{i}"), "payload": {"i": i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "published");
        let msg =
            fetch_at(&bootstrap, &topic, body["partition"].as_i64().unwrap() as i32, body["offset"].as_i64().unwrap())
                .await;
        assert_eq!(headers_of(&msg)["ce_id"], body["id"].as_str().unwrap());
        assert_eq!(msg.key(), Some(format!("k{i}").as_bytes()));
    }
    app.stop().await;

    // The same through configuration, for a batch.
    let app = spawn_app(&bootstrap, &topic, &dlq, &[("ACK_MODE", "kafka")]).await;
    wait_ready(&app.client, &app.admin).await;
    let r = app
        .client
        .post(format!("{}/events", app.http))
        .json(&json!([{"type": "a", "payload": 1}, {"type": "b", "payload": 2}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    for item in body["results"].as_array().unwrap() {
        assert_eq!(item["status"], "published");
        let msg =
            fetch_at(&bootstrap, &topic, item["partition"].as_i64().unwrap() as i32, item["offset"].as_i64().unwrap())
                .await;
        assert_eq!(headers_of(&msg)["ce_id"], item["id"].as_str().unwrap());
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_get_problem_json_naming_the_field_and_never_reach_kafka() {
    let Some(bootstrap) = real_kafka().await else { return };
    let (topic, dlq) = (unique_topic("it-invalid"), unique_topic("it-invalid-dlq"));
    create_topics(&bootstrap, &[&topic, &dlq]).await;
    let app = spawn_app(&bootstrap, &topic, &dlq, &[]).await;
    wait_ready(&app.client, &app.admin).await;

    let cases: [(&str, &str, u16, &str, Option<&str>); 6] = [
        ("application/json", r#"{"payload": 1}"#, 400, "missing_field", Some("type")),
        ("application/json", r#"{"type": 3, "payload": 1}"#, 400, "invalid_field", Some("type")),
        (
            "application/json",
            r#"{"type": "t", "timestamp": "noon", "payload": 1}"#,
            400,
            "invalid_field",
            Some("timestamp"),
        ),
        ("application/json", r#"{"type": "t", "payload": "#, 400, "malformed_json", None),
        ("application/json", "", 400, "empty_body", None),
        ("application/xml", "<event/>", 415, "unsupported_media_type", None),
    ];
    for (ct, body, status, code, field) in cases {
        let r =
            app.client.post(format!("{}/events", app.http)).header("content-type", ct).body(body).send().await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], code, "{body}");
        assert_eq!(problem["status"], status);
        assert_eq!(problem["field"].as_str(), field, "{body}");
    }
    // A valid event after all that is still taken, and it is the only record in the topic.
    let r = app
        .client
        .post(format!("{}/events", app.http))
        .json(&json!({"type": "ok", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let health = app.client.get(format!("{}/health", app.http)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "OK");
    let messages = consume(&bootstrap, &topic, 1, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 1);
    app.stop().await;
}

fn gz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Every accepted framing lands in Kafka: JSON, JSON array, 1,000-line NDJSON, gzip and zstd batches,
/// CloudEvents structured, batched and binary, and a topic from the allowlist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_round_trips_to_kafka() {
    let Some(bootstrap) = real_kafka().await else { return };
    let (topic, dlq, audit) = (unique_topic("it-formats"), unique_topic("it-formats-dlq"), unique_topic("it-audit"));
    create_topics(&bootstrap, &[&topic, &dlq, &audit]).await;
    // A 1,000-event batch needs 1,000 free slots at once: more than the Go service's default queue.
    let app = spawn_app(&bootstrap, &topic, &dlq, &[("KAFKA_TOPIC_ALLOWLIST", &audit), ("QUEUE_SIZE", "5000")]).await;
    wait_ready(&app.client, &app.admin).await;
    let url = format!("{}/events", app.http);
    let mut expected: Vec<String> = Vec::new();
    let ids = |body: &Value| -> Vec<String> {
        match body.get("results") {
            Some(r) => r.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect(),
            None => vec![body["id"].as_str().unwrap().to_string()],
        }
    };

    let ndjson: String =
        (0..1000).map(|i| format!("{{\"type\":\"nd\",\"key\":\"k{}\",\"payload\":{{\"i\":{i}}}}}\n", i % 10)).collect();
    let array = json!([{"type": "arr", "payload": 1}, {"type": "arr", "payload": 2}]).to_string();
    let gz_batch = gz((0..50).map(|i| format!("{{\"type\":\"gz\",\"payload\":{i}}}\n")).collect::<String>().as_bytes());
    let zstd_batch = zstd::encode_all(
        (0..50).map(|i| format!("{{\"type\":\"zs\",\"payload\":{i}}}\n")).collect::<String>().as_bytes(),
        3,
    )
    .unwrap();
    type Request<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
    let requests: Vec<Request> = vec![
        ("application/json", vec![], br#"{"type":"single","payload":{"a":1}}"#.to_vec()),
        ("application/json", vec![], array.into_bytes()),
        ("application/x-ndjson", vec![], ndjson.into_bytes()),
        ("application/x-ndjson", vec![("content-encoding", "gzip")], gz_batch),
        ("application/x-ndjson", vec![("content-encoding", "zstd")], zstd_batch),
        ("application/cloudevents+json", vec![], br#"{"specversion":"1.0","id":"ce-s-1","source":"/shop","type":"order","data":{"x":1}}"#.to_vec()),
        (
            "application/cloudevents-batch+json",
            vec![],
            br#"[{"specversion":"1.0","id":"ce-b-1","source":"/shop","type":"order","data":1},{"specversion":"1.0","id":"ce-b-2","source":"/shop","type":"order","data":2}]"#.to_vec(),
        ),
        (
            "application/json",
            vec![("ce-specversion", "1.0"), ("ce-id", "ce-bin-1"), ("ce-source", "/bin"), ("ce-type", "ping")],
            br#"{"hello":"world"}"#.to_vec(),
        ),
    ];
    for (ct, headers, body) in requests {
        let mut req = app.client.post(&url).header("content-type", ct);
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = req.body(body).send().await.unwrap();
        assert_eq!(r.status(), 202, "{ct} {headers:?}");
        expected.extend(ids(&r.json().await.unwrap()));
    }
    assert_eq!(expected.len(), 1 + 2 + 1000 + 50 + 50 + 1 + 2 + 1);

    let messages = consume(&bootstrap, &topic, expected.len(), Duration::from_secs(60)).await;
    let found = ids_of(&messages);
    assert_eq!(messages.len(), expected.len());
    for id in &expected {
        assert_eq!(found.get(id), Some(&1), "{id}");
    }
    // CloudEvents attributes follow the Kafka binding; NDJSON keeps per-key order.
    let ce = messages.iter().find(|m| headers_of(m)["ce_id"] == "ce-s-1").unwrap();
    assert_eq!(headers_of(ce)["ce_source"], "/shop");
    let bin = messages.iter().find(|m| headers_of(m)["ce_id"] == "ce-bin-1").unwrap();
    let value: Value = serde_json::from_slice(bin.payload().unwrap()).unwrap();
    assert_eq!(value["payload"], json!({"hello": "world"}));
    let k3: Vec<i64> = messages
        .iter()
        .filter(|m| m.key() == Some(&b"k3"[..]))
        .map(|m| serde_json::from_slice::<Value>(m.payload().unwrap()).unwrap()["payload"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(k3.len(), 100);
    assert!(k3.windows(2).all(|w| w[0] < w[1]), "per-key order kept");

    // Topic routing: the allowlisted topic gets it; the default topic does not.
    let r = app
        .client
        .post(format!("{}/topics/{audit}/events", app.http))
        .json(&json!({"type": "audit", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let audit_msgs = consume(&bootstrap, &audit, 1, Duration::from_secs(30)).await;
    assert_eq!(ids_of(&audit_msgs).get(&id), Some(&1));
    app.stop().await;
}

/// A batch of valid, invalid and oversized items: 207 with per-item answers; only the valid ones land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_answers_207_and_only_valid_items_reach_kafka() {
    let Some(bootstrap) = real_kafka().await else { return };
    let (topic, dlq) = (unique_topic("it-mixedbatch"), unique_topic("it-mixedbatch-dlq"));
    create_topics(&bootstrap, &[&topic, &dlq]).await;
    let app = spawn_app(&bootstrap, &topic, &dlq, &[("MAX_EVENT_BYTES", "1000")]).await;
    wait_ready(&app.client, &app.admin).await;
    let batch = json!([
        {"type": "ok", "payload": 1},
        {"payload": 2},
        {"type": "big", "payload": "z".repeat(2000)},
        {"type": "ok", "payload": 3},
        {"type": 5, "payload": 4},
    ]);
    let r = app.client.post(format!("{}/events", app.http)).json(&batch).send().await.unwrap();
    assert_eq!(r.status(), 207);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(2), Some(3)));
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "rejected", "rejected", "accepted", "rejected"]);
    assert_eq!(results[1]["error"]["field"], "type");
    assert_eq!(results[2]["error"]["code"], "event_too_large");
    assert_eq!(results[4]["error"]["code"], "invalid_field");
    let good: Vec<&str> = [0, 3].iter().map(|i| results[*i]["id"].as_str().unwrap()).collect();

    let r = app.client.post(format!("{}/events", app.http)).json(&json!([{"payload": 1}])).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "all_events_rejected");

    let messages = consume(&bootstrap, &topic, 2, Duration::from_secs(30)).await;
    let found = ids_of(&messages);
    assert_eq!(messages.len(), 2);
    for id in good {
        assert_eq!(found.get(id), Some(&1));
    }
    app.stop().await;
}

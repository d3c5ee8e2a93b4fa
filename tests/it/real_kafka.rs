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

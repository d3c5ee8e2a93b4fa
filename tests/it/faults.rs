//! Broker faults injected with librdkafka's mock cluster: a slow broker, produce errors.

use std::time::Duration;

use event_ingestor::kafka::EmbeddedKafka;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::{json, Value};

use crate::helpers::*;

fn mock_cluster(topic: &str, dlq: &str) -> EmbeddedKafka {
    EmbeddedKafka::start(&[topic, dlq], 3).expect("mock cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_and_recovers() {
    let (topic, dlq) = ("events", "events-dlq");
    let cluster = mock_cluster(topic, dlq);
    let app =
        spawn_app(cluster.bootstrap_servers(), topic, dlq, &[("QUEUE_SIZE", "5"), ("WORKER_POOL_SIZE", "1")]).await;
    wait_ready(&app.client, &app.admin).await;
    cluster.set_round_trip_time(Duration::from_secs(3)).unwrap();

    let post = || app.client.post(format!("{}/events", app.http)).json(&json!({"type": "t", "payload": 1})).send();
    for _ in 0..5 {
        assert_eq!(post().await.unwrap().status(), 202);
    }
    let started = std::time::Instant::now();
    let r = post().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(1), "a full queue answers at once");
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "queue_full");
    assert!(app.metric("ingest_queue_utilization").await >= 1.0);

    // The broker speeds up: the queue drains and events are taken again.
    cluster.set_round_trip_time(Duration::ZERO).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if post().await.unwrap().status() == 202 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "queue never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = app.stop().await;
    assert_eq!(report.undelivered, 0);
    assert_eq!(consume(cluster.bootstrap_servers(), topic, 6, Duration::from_secs(20)).await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_produce_error_sends_the_event_to_the_dlq_with_error_headers() {
    let (topic, dlq) = ("orders", "orders-dlq");
    let cluster = mock_cluster(topic, dlq);
    let app = spawn_app(cluster.bootstrap_servers(), topic, dlq, &[("KAFKA_WRITE_TIMEOUT", "5s")]).await;
    wait_ready(&app.client, &app.admin).await;
    // The next produce request is refused for good (a record the broker will never take).
    cluster.push_request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD]).unwrap();

    let r = app
        .client
        .post(format!("{}/events", app.http))
        .json(&json!({"type": "t", "key": "k1", "payload": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    let dead = consume(cluster.bootstrap_servers(), dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1, "the event is in the DLQ");
    let headers = headers_of(&dead[0]);
    assert_eq!(headers["ce_id"], id);
    assert_eq!(headers["x-original-topic"], topic);
    assert_eq!(headers["x-attempts"], "1");
    assert!(headers["x-error-code"].contains("InvalidRecord"), "{headers:?}");
    assert!(!headers["x-error-message"].is_empty());
    assert_eq!(rdkafka::message::Message::key(&dead[0]), Some(&b"k1"[..]));
    assert!(consume(cluster.bootstrap_servers(), topic, 1, Duration::from_secs(2)).await.is_empty());

    assert_eq!(app.metric("events_failed_total").await, 1.0);
    assert_eq!(app.metric("events_dlq_total").await, 1.0);
    assert_eq!(app.metric("events_published_total").await, 0.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_kafka_never_answers_2xx_for_an_event_the_broker_refused() {
    let (topic, dlq) = ("acks", "acks-dlq");
    let cluster = mock_cluster(topic, dlq);
    let app = spawn_app(cluster.bootstrap_servers(), topic, dlq, &[("KAFKA_WRITE_TIMEOUT", "2s")]).await;
    wait_ready(&app.client, &app.admin).await;

    cluster.push_request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD]).unwrap();
    let r = app
        .client
        .post(format!("{}/events?ack=kafka", app.http))
        .json(&json!({"type": "t", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "kafka_delivery_failed");

    // A broker that answers too late: 504, not 200.
    cluster.set_round_trip_time(Duration::from_secs(10)).unwrap();
    let r = app
        .client
        .post(format!("{}/events?ack=kafka", app.http))
        .json(&json!({"type": "t", "payload": 2}))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 504 || r.status() == 503, "got {}", r.status());
    cluster.set_round_trip_time(Duration::ZERO).unwrap();
    app.stop().await;
}

/// A producer that fails fatally on its own (the broker refuses its producer id: a fatal error for an
/// idempotent producer) is replaced, and events flow through the new one, each delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_refused_its_producer_id_is_replaced_and_nothing_is_lost() {
    let (topic, dlq) = ("fenced", "fenced-dlq");
    let cluster = mock_cluster(topic, dlq);
    cluster
        .push_request_errors(
            RDKafkaApiKey::InitProducerId,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
        )
        .unwrap();
    let app = spawn_app(cluster.bootstrap_servers(), topic, dlq, &[]).await;
    wait_ready(&app.client, &app.admin).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.metric("kafka_producer_recreated_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the fatally failed producer was not replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = app.client.post(format!("{}/events", app.http)).json(&json!({"type": "t", "payload": i})).send();
        let r = r.await.unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let found = ids_of(&consume(cluster.bootstrap_servers(), topic, ids.len(), Duration::from_secs(30)).await);
    for id in &ids {
        assert_eq!(found.get(id), Some(&1), "event {id} delivered once");
    }
    assert_eq!(app.metric("kafka_producer_recreated_total").await, 1.0);
    app.stop().await;
}

//! The real `event-ingestor` executable: configuration errors, ports, signals and exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_event-ingestor");

/// The running binary and the addresses it logged.
pub struct Running {
    pub child: Child,
    pub http: String,
    pub admin: String,
    /// Every line the binary logged so far.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Running {
    /// A failing test must not leave the binary running (it would also hold the test's output open).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the binary with `env` and waits for its "listening" log line, which names both addresses.
pub fn start_binary(env: &[(&str, &str)]) -> Running {
    let spool = tempfile::tempdir().unwrap().keep();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("SPOOL_DIR", &spool)
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("HTTP_PORT", "0")
        .env("ADMIN_PORT", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "event-ingestor listening" {
                        let _ = tx.send((
                            v["http_addr"].as_str().unwrap().to_string(),
                            v["admin_addr"].as_str().unwrap().to_string(),
                        ));
                        sent = true;
                    }
                }
            }
            // Keep draining so the child never blocks on a full pipe; echo for failing-test output.
            println!("[binary] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    let (http, admin) = rx.recv_timeout(Duration::from_secs(30)).expect("binary logs its listening addresses");
    Running { child, http: format!("http://{http}"), admin: format!("http://{admin}"), lines }
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("binary did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn invalid_configuration_exits_non_zero_before_binding_and_names_every_variable() {
    let port = free_port();
    let out = Command::new(BIN)
        .env_clear()
        .env("HTTP_PORT", port.to_string())
        .env("QUEUE_SIZE", "lots")
        .env("KAFKA_WRITE_TIMEOUT", "10")
        .env("ACK_MODE", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in ["QUEUE_SIZE=\"lots\"", "KAFKA_WRITE_TIMEOUT=\"10\"", "ACK_MODE=\"maybe\""] {
        assert!(stderr.contains(name), "stderr names {name}: {stderr}");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    // Nothing was bound: the port is still free.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port was never bound");
}

#[test]
fn describe_lists_the_settings_and_probe_routes() {
    let out = Command::new(BIN).arg("describe").output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    for go_name in [
        "HTTP_PORT",
        "LOG_LEVEL",
        "KAFKA_BROKERS",
        "KAFKA_TOPIC",
        "KAFKA_DLQ_TOPIC",
        "KAFKA_MAX_RETRIES",
        "KAFKA_RETRY_BACKOFF",
        "KAFKA_WRITE_TIMEOUT",
        "WORKER_POOL_SIZE",
        "QUEUE_SIZE",
        "RATE_LIMIT_RPS",
        "RATE_LIMIT_BURST",
        "ADMIN_PORT",
        "ACK_MODE",
    ] {
        assert!(names.contains(&go_name), "{go_name} accepted");
    }
    assert_eq!(v["probes"]["readiness"], "/readyz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_serves_the_readme_example() {
    let mut running = start_binary(&[("KAFKA_BROKERS", "embedded"), ("SHUTDOWN_DRAIN_DELAY", "0s")]);
    let client = reqwest::Client::new();
    wait_ready(&client, &running.admin).await;
    // Exactly the README's curl: no Content-Type header beyond curl's default form encoding.
    let r = client
        .post(format!("{}/events", running.http))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"type":"click","payload":{"user_id":123}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "accepted");
    assert_eq!(client.get(format!("{}/livez", running.admin)).send().await.unwrap().status(), 200);
    signal(&running.child, "TERM");
    assert!(wait_exit(&mut running.child, Duration::from_secs(20)).success());
}

/// SIGTERM while clients keep sending: readiness turns 503 at once, every event that got a 2xx is in
/// Kafka exactly once, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight_loses_no_acknowledged_event() {
    let Some(bootstrap) = real_kafka().await else { return };
    let (topic, dlq) = (unique_topic("it-sigterm"), unique_topic("it-sigterm-dlq"));
    create_topics(&bootstrap, &[&topic, &dlq]).await;
    let mut running = start_binary(&[
        ("KAFKA_BROKERS", &bootstrap),
        ("KAFKA_TOPIC", &topic),
        ("KAFKA_DLQ_TOPIC", &dlq),
        ("SHUTDOWN_DRAIN_DELAY", "2s"),
        ("SHUTDOWN_TIMEOUT", "20s"),
        ("QUEUE_SIZE", "100000"),
        ("RATE_LIMIT_RPS", "0"),
    ]);
    let client = reqwest::Client::new();
    wait_ready(&client, &running.admin).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for worker in 0..16 {
        let (client, url, acked, stop) = (client.clone(), running.http.clone(), acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Both ack modes at once; batches of 10 so a debug build sustains thousands of events/s.
                let ack = if worker % 2 == 0 { "?ack=kafka" } else { "" };
                let body: Vec<Value> = (0..10)
                    .map(|j| json!({"type": "load", "key": format!("w{worker}"), "payload": {"worker": worker, "i": i, "j": j}}))
                    .collect();
                match client.post(format!("{url}/events{ack}")).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.unwrap();
                        let mut acked = acked.lock().unwrap();
                        for item in v["results"].as_array().unwrap() {
                            acked.push(item["id"].as_str().unwrap().to_string());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
                i += 1;
            }
        }));
    }
    // Ten seconds of steady load in all: eight before the signal, two of drain delay after it.
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before = acked.lock().unwrap().len();
    println!("load before SIGTERM: {before} events acknowledged in 8 s ({:.0} events/s)", before as f64 / 8.0);
    assert!(before > 1000, "load was flowing before the signal ({before} acked)");

    signal(&running.child, "TERM");
    let signalled = Instant::now();
    loop {
        let r = client.get(format!("{}/readyz", running.admin)).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(signalled.elapsed() < Duration::from_secs(1), "readiness did not turn 503");
    }
    println!("readiness turned 503 {:?} after SIGTERM", signalled.elapsed());
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut running.child, Duration::from_secs(30))).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(status.code(), Some(0), "clean exit");

    let acked = acked.lock().unwrap().clone();
    println!(
        "sent for {:?}: {} events acknowledged ({} during the drain delay); exit {:?} after the signal",
        load_started.elapsed(),
        acked.len(),
        acked.len() - before,
        signalled.elapsed()
    );
    assert!(acked.len() > before, "requests were still served during the drain delay");
    let messages = consume(&bootstrap, &topic, acked.len(), Duration::from_secs(60)).await;
    let found = ids_of(&messages);
    let missing: Vec<_> = acked.iter().filter(|id| !found.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged events missing", missing.len(), acked.len());
    let duplicated: Vec<_> = found.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicates: {duplicated:?}");
}

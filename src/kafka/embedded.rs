//! The embedded cluster: librdkafka's in-process mock brokers, for `KAFKA_BROKERS=embedded` and for
//! fault injection in tests (slow brokers, produce errors, brokers going down).
//!
//! The mock cluster handle is not `Send`, so it lives on its own thread and is driven by commands.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// Number of mock brokers: more than one so that broker faults can be partial.
const BROKERS: i32 = 3;

enum Command {
    Rtt(Duration),
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>),
    ClearRequestErrors(RDKafkaApiKey),
    BrokerDown(i32),
    BrokerUp(i32),
    CreateTopic(String, i32),
}

/// A command for the cluster thread and where to send its result.
type Request = (Command, std_mpsc::Sender<Result<(), String>>);

/// A running in-process mock Kafka cluster. Dropping it stops the cluster.
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: Option<std_mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts the cluster with `topics` created (`partitions` each).
    pub fn start(topics: &[&str], partitions: i32) -> Result<Self, String> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<String, String>>();
        let (cmd_tx, cmd_rx) = std_mpsc::channel::<Request>();
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(BROKERS) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for topic in &topics {
                    if let Err(e) = cluster.create_topic(topic, partitions, 1) {
                        let _ = ready_tx.send(Err(format!("creating topic {topic}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Runs until the handle is dropped (the sender closes).
                while let Ok((command, reply)) = cmd_rx.recv() {
                    let result = match command {
                        Command::Rtt(rtt) => (1..=BROKERS).try_for_each(|b| cluster.broker_round_trip_time(b, rtt)),
                        Command::RequestErrors(api, errors) => {
                            cluster.request_errors(api, &errors);
                            Ok(())
                        }
                        Command::ClearRequestErrors(api) => {
                            cluster.clear_request_errors(api);
                            Ok(())
                        }
                        Command::BrokerDown(b) => cluster.broker_down(b),
                        Command::BrokerUp(b) => cluster.broker_up(b),
                        Command::CreateTopic(t, p) => cluster.create_topic(&t, p, 1),
                    };
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = ready_rx.recv().map_err(|_| "embedded kafka thread died".to_string())??;
        Ok(Self { bootstrap, commands: Some(cmd_tx), thread: Some(thread) })
    }

    /// The mock cluster's bootstrap address: any Kafka client in this process can use it.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn call(&self, command: Command) -> Result<(), String> {
        let (tx, rx) = std_mpsc::channel();
        self.commands
            .as_ref()
            .ok_or("embedded kafka stopped")?
            .send((command, tx))
            .map_err(|_| "embedded kafka stopped".to_string())?;
        rx.recv().map_err(|_| "embedded kafka stopped".to_string())?
    }

    /// Makes every broker answer `rtt` late (a slow broker).
    pub fn set_round_trip_time(&self, rtt: Duration) -> Result<(), String> {
        self.call(Command::Rtt(rtt))
    }

    /// The next requests of `api` fail with `errors`, one error per request, in order.
    pub fn push_request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) -> Result<(), String> {
        self.call(Command::RequestErrors(api, errors.to_vec()))
    }

    pub fn clear_request_errors(&self, api: RDKafkaApiKey) -> Result<(), String> {
        self.call(Command::ClearRequestErrors(api))
    }

    /// Takes every broker down (`up = false`) or brings them back.
    pub fn set_brokers_up(&self, up: bool) -> Result<(), String> {
        (1..=BROKERS).try_for_each(|b| self.call(if up { Command::BrokerUp(b) } else { Command::BrokerDown(b) }))
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        self.call(Command::CreateTopic(topic.to_string(), partitions))
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

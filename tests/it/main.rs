//! The integration test binary. Tests named `real_kafka::*` run against a real Apache Kafka broker
//! (`scripts/kafka.sh start`); `faults::*` inject broker faults with librdkafka's mock cluster;
//! `binary::*` run the real `event-ingestor` executable (signals, exit codes, ports).

mod api;
mod binary;
mod faults;
mod helpers;
mod observability;
mod real_kafka;
mod stack;
mod zero_loss;

//! Kafka: the one client-config builder, the producer with its delivery reports, retries and dead letters,
//! the broker health check, and the embedded (in-process mock) cluster.

pub mod client_config;
pub mod delivery;
pub mod embedded;
pub mod health;
pub mod publisher;
pub mod record;
pub mod replay;
pub mod spool;

pub use client_config::{client_config, ClientRole};
pub use delivery::{AckBatch, DeliveryOutcome};
pub use embedded::EmbeddedKafka;
pub use publisher::Publisher;
pub use record::OutboundRecord;
pub use spool::{Ledger, Spool, SpoolRecord};

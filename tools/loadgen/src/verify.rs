//! The Kafka side: fresh topics per run (AdminClient), and reading a run's topic back from the beginning
//! to count which acknowledged events really arrived (and which arrived twice).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::payload::parse_seq;

/// Which sequence numbers were acknowledged to the client: a bit per event.
#[derive(Clone, Debug, Default)]
pub struct AckSet {
    bits: Vec<u64>,
    len: u64,
}

impl AckSet {
    pub fn new(len: u64) -> Self {
        AckSet { bits: vec![0; len.div_ceil(64) as usize], len }
    }

    fn grow(&mut self, seq: u64) {
        if seq >= self.len {
            self.len = seq + 1;
            self.bits.resize(self.len.div_ceil(64) as usize, 0);
        }
    }

    pub fn set(&mut self, seq: u64) {
        self.grow(seq);
        self.bits[(seq / 64) as usize] |= 1 << (seq % 64);
    }

    pub fn set_range(&mut self, start: u64, n: u64) {
        for s in start..start + n {
            self.set(s);
        }
    }

    pub fn get(&self, seq: u64) -> bool {
        seq < self.len && self.bits[(seq / 64) as usize] & (1 << (seq % 64)) != 0
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// What reading the topic back found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Verification {
    pub topic: String,
    /// Events the client was told were accepted/published.
    pub acked: u64,
    /// Acknowledged events found in the topic (each counted once).
    pub delivered: u64,
    /// Acknowledged and not found.
    pub missing: u64,
    /// Extra copies of an event beyond the first.
    pub duplicates: u64,
    /// Events found although the client was not told they were accepted (e.g. a timed-out request).
    pub unacked_delivered: u64,
    /// Records of this topic that are not from this run.
    pub foreign: u64,
    pub records_read: u64,
    /// All acknowledged ids were seen (false: stopped at the settle timeout).
    pub complete: bool,
    pub read_s: f64,
    /// Up to 10 missing and duplicated ids, for investigation.
    pub missing_sample: Vec<String>,
    pub duplicate_sample: Vec<String>,
    /// Duplicates as (partition, offset) pairs of the copies, for the first duplicated ids.
    pub duplicate_offsets: Vec<String>,
    /// Records in the dead-letter topic (high watermarks), when one was given.
    pub dlq_records: Option<i64>,
}

fn base_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers).set("client.id", "loadgen");
    cfg.set_log_level(RDKafkaLogLevel::Warning);
    cfg
}

/// Refuses anything but loopback brokers: load goes to this machine only.
pub fn check_loopback_brokers(brokers: &str) -> anyhow::Result<()> {
    for b in brokers.split(',') {
        let host = b.trim().rsplit_once(':').map(|(h, _)| h).unwrap_or(b).trim_matches(['[', ']']);
        let ok = host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false);
        if !ok {
            return Err(anyhow!("refusing non-loopback broker {b:?}: benchmarks run against this machine only"));
        }
    }
    Ok(())
}

pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers).create().context("admin client")?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new.iter(), &opts).await.context("create topics")?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => eprintln!("loadgen: topic {t} already exists"),
            Err((t, code)) => return Err(anyhow!("cannot create topic {t}: {code:?}")),
        }
    }
    // Wait until the brokers know every partition's leader, so the first produce does not wait for it.
    let consumer: BaseConsumer = base_config(brokers).create()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in topics {
        loop {
            let md = consumer.fetch_metadata(Some(t), Duration::from_secs(5));
            let ready = md.as_ref().is_ok_and(|md| {
                md.topics().iter().any(|mt| {
                    mt.error().is_none()
                        && mt.partitions().len() == partitions as usize
                        && mt.partitions().iter().all(|p| p.leader() >= 0)
                })
            });
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(anyhow!("topic {t} has no leaders after 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub async fn delete_topics(brokers: &str, topics: &[&str]) {
    let Ok(admin) = base_config(brokers).create::<AdminClient<DefaultClientContext>>() else { return };
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    match admin.delete_topics(topics, &opts).await {
        Ok(results) => {
            for r in results {
                if let Err((t, code)) = r {
                    eprintln!("loadgen: could not delete topic {t}: {code:?}");
                }
            }
        }
        Err(e) => eprintln!("loadgen: could not delete topics {topics:?}: {e}"),
    }
}

/// The event id of a record: header `ce_id`, else the `"id"` of the JSON value.
fn record_id<'a>(msg: &'a rdkafka::message::BorrowedMessage<'a>) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(headers) = msg.headers() {
        for h in headers.iter() {
            if h.key == "ce_id" {
                if let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) {
                    return Some(std::borrow::Cow::Borrowed(v));
                }
            }
        }
    }
    #[derive(Deserialize)]
    struct WithId {
        id: String,
    }
    let v: WithId = serde_json::from_slice(msg.payload()?).ok()?;
    Some(std::borrow::Cow::Owned(v.id))
}

/// Reads `topic` from the beginning of every partition until every acknowledged event of `run_id` was seen
/// and every partition is at its end — or until nothing new arrived for `settle`. Blocking.
pub fn consume_back(
    brokers: &str,
    topic: &str,
    dlq_topic: Option<&str>,
    run_id: &str,
    acked: &AckSet,
    seq_space: u64,
    settle: Duration,
) -> anyhow::Result<Verification> {
    let started = Instant::now();
    let consumer: BaseConsumer = base_config(brokers)
        .set("group.id", format!("loadgen-verify-{run_id}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("consumer")?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).context("topic metadata")?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(anyhow!("topic {topic} has no partitions (does it exist?)"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let space = seq_space.max(acked.len());
    let mut seen = vec![0u16; space as usize];
    // Where the first copy of each event sits (partition << 48 | offset), to locate duplicates.
    let mut first_at = vec![0u64; space as usize];
    // For the first duplicated ids: where each copy sits.
    let mut locations: HashMap<u64, Vec<(i32, i64)>> = HashMap::new();
    let acked_total = acked.count();
    let mut acked_seen = 0u64;
    let mut eof: HashMap<i32, bool> = partitions.iter().map(|p| (*p, false)).collect();
    let mut records = 0u64;
    let mut foreign = 0u64;
    let mut last_new = Instant::now();
    let complete;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                records += 1;
                last_new = Instant::now();
                eof.insert(msg.partition(), false);
                match record_id(&msg).and_then(|id| parse_seq(run_id, &id)) {
                    Some(seq) if seq < space => {
                        let c = &mut seen[seq as usize];
                        *c = c.saturating_add(1);
                        if *c == 1 {
                            first_at[seq as usize] =
                                ((msg.partition() as u64) << 48) | (msg.offset() as u64 & 0xffff_ffff_ffff);
                            if acked.get(seq) {
                                acked_seen += 1;
                            }
                        } else if let Some(locs) = locations.get_mut(&seq) {
                            locs.push((msg.partition(), msg.offset()));
                        } else if locations.len() < 10 {
                            let f = first_at[seq as usize];
                            locations.insert(
                                seq,
                                vec![
                                    ((f >> 48) as i32, (f & 0xffff_ffff_ffff) as i64),
                                    (msg.partition(), msg.offset()),
                                ],
                            );
                        }
                    }
                    _ => foreign += 1,
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p, true);
            }
            Some(Err(e)) => eprintln!("loadgen: consumer: {e}"),
            None => {}
        }
        let at_end = eof.values().all(|e| *e);
        if acked_seen == acked_total && at_end {
            complete = true;
            break;
        }
        if last_new.elapsed() > settle && at_end {
            complete = false;
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!("loadgen: stopped reading {topic} after 600 s");
            complete = false;
            break;
        }
    }

    let mut v = Verification {
        topic: topic.to_string(),
        acked: acked_total,
        records_read: records,
        foreign,
        complete,
        ..Default::default()
    };
    for (seq, &c) in seen.iter().enumerate() {
        let seq = seq as u64;
        let is_acked = acked.get(seq);
        if c > 1 {
            v.duplicates += u64::from(c - 1);
            if v.duplicate_sample.len() < 10 {
                v.duplicate_sample.push(format!("{run_id}-{seq} ×{c}"));
            }
        }
        match (is_acked, c) {
            (true, 0) => {
                v.missing += 1;
                if v.missing_sample.len() < 10 {
                    v.missing_sample.push(format!("{run_id}-{seq}"));
                }
            }
            (true, _) => v.delivered += 1,
            (false, 0) => {}
            (false, _) => v.unacked_delivered += 1,
        }
    }
    let mut locs: Vec<_> = locations.into_iter().collect();
    locs.sort();
    v.duplicate_offsets = locs
        .into_iter()
        .map(|(seq, l)| {
            let where_: Vec<String> = l.iter().map(|(p, o)| format!("p{p}@{o}")).collect();
            format!("{run_id}-{seq}: {}", where_.join(" "))
        })
        .collect();
    if let Some(dlq) = dlq_topic {
        v.dlq_records = topic_record_count(&consumer, dlq);
    }
    v.read_s = started.elapsed().as_secs_f64();
    Ok(v)
}

/// Records currently in a topic (sum of high - low watermarks), None if it does not exist.
fn topic_record_count(consumer: &BaseConsumer, topic: &str) -> Option<i64> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() {
        return None;
    }
    let mut total = 0;
    for p in t.partitions() {
        let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5)).ok()?;
        total += hi - lo;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_set() {
        let mut a = AckSet::new(10);
        a.set_range(2, 3);
        a.set(70);
        assert!(a.get(2) && a.get(4) && !a.get(5) && a.get(70) && !a.get(1000));
        assert_eq!(a.count(), 4);
        assert_eq!(a.len(), 71);
    }

    #[test]
    fn loopback_only() {
        assert!(check_loopback_brokers("127.0.0.1:9092").is_ok());
        assert!(check_loopback_brokers("localhost:9092,[::1]:9093").is_ok());
        assert!(check_loopback_brokers("10.0.0.1:9092").is_err());
        assert!(check_loopback_brokers("broker:9092").is_err());
    }
}

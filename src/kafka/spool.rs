//! The local spool: events that could go neither to their topic nor to the dead-letter topic (broker
//! gone, shutdown budget spent) are appended to checksummed segment files, fsynced in groups, and
//! replayed to Kafka in order once the broker answers. Also the ledger that lets the next start tell how
//! many accepted events a crash left unresolved.
//!
//! Segment record: `magic u32 | len u32 | crc32 u32 | payload[len]`, little-endian. A torn or corrupt
//! record ends the readable part of its segment: it is reported and skipped, never replayed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use crate::telemetry::{event_bytes, Metrics};

const MAGIC: u32 = 0x4C4F_4F50; // "POOL"
const HEADER: usize = 12;
/// One record never exceeds this (Kafka's own limits are far below it): a larger length is corruption.
const MAX_RECORD: usize = 256 << 20;
const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".spool";

/// One spooled event: enough to produce it again exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub id: String,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
}

impl SpoolRecord {
    /// What the record counted against `QUEUE_MAX_BYTES` while it held a queue slot.
    pub fn queue_bytes(&self) -> u64 {
        event_bytes(self.key.as_ref().map_or(0, Vec::len), self.value.len())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        fn bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
            match b {
                Some(b) => {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            }
        }
        bytes(out, Some(self.id.as_bytes()));
        bytes(out, Some(self.topic.as_bytes()));
        bytes(out, self.key.as_deref());
        bytes(out, Some(&self.value));
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            bytes(out, Some(name.as_bytes()));
            bytes(out, value.as_deref());
        }
        out.extend_from_slice(&self.timestamp_ms.unwrap_or(i64::MIN).to_le_bytes());
    }

    fn decode(mut p: &[u8]) -> Option<Self> {
        fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if p.len() < n {
                return None;
            }
            let (a, b) = p.split_at(n);
            *p = b;
            Some(a)
        }
        fn u32_(p: &mut &[u8]) -> Option<u32> {
            Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?))
        }
        fn bytes(p: &mut &[u8]) -> Option<Option<Vec<u8>>> {
            match u32_(p)? {
                u32::MAX => Some(None),
                n => Some(Some(take(p, n as usize)?.to_vec())),
            }
        }
        let text = |b: Option<Vec<u8>>| b.and_then(|b| String::from_utf8(b).ok());
        let id = text(bytes(&mut p)?)?;
        let topic = text(bytes(&mut p)?)?;
        let key = bytes(&mut p)?;
        let value = bytes(&mut p)??;
        let n = u32_(&mut p)? as usize;
        let mut headers = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let name = text(bytes(&mut p)?)?;
            headers.push((name, bytes(&mut p)?));
        }
        let ts = i64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
        p.is_empty().then_some(SpoolRecord {
            id,
            topic,
            key,
            value,
            headers,
            timestamp_ms: (ts != i64::MIN).then_some(ts),
        })
    }
}

/// Where a segment stopped being readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub offset: u64,
    pub reason: &'static str,
}

/// A segment's readable records and, if its tail was torn or corrupt, where.
#[derive(Debug)]
pub struct SegmentContents {
    pub records: Vec<SpoolRecord>,
    pub corruption: Option<Corruption>,
}

/// Reads every valid record of a segment, stopping at the first torn or corrupt one.
pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    let corruption = loop {
        if at == data.len() {
            break None;
        }
        if data.len() - at < HEADER {
            break Some(Corruption { offset: at as u64, reason: "torn record header" });
        }
        let word = |i: usize| u32::from_le_bytes(data[at + i..at + i + 4].try_into().expect("4 bytes"));
        let (magic, len, crc) = (word(0), word(4) as usize, word(8));
        if magic != MAGIC {
            break Some(Corruption { offset: at as u64, reason: "bad magic" });
        }
        if len > MAX_RECORD {
            break Some(Corruption { offset: at as u64, reason: "impossible record length" });
        }
        if data.len() - at - HEADER < len {
            break Some(Corruption { offset: at as u64, reason: "torn record (shorter than its length)" });
        }
        let payload = &data[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break Some(Corruption { offset: at as u64, reason: "checksum mismatch" });
        }
        match SpoolRecord::decode(payload) {
            Some(r) => records.push(r),
            None => break Some(Corruption { offset: at as u64, reason: "undecodable record" }),
        }
        at += HEADER + len;
    };
    Ok(SegmentContents { records, corruption })
}

/// The segments of `dir`, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(seq) = name.strip_prefix(SEGMENT_PREFIX).and_then(|s| s.strip_suffix(SEGMENT_SUFFIX)) {
            if let Ok(seq) = seq.parse::<u64>() {
                out.push((seq, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{seq:020}{SEGMENT_SUFFIX}"))
}

enum WriterMsg {
    Record(SpoolRecord, Slot),
    /// Replies once everything sent before it is durable.
    Sync(std_mpsc::Sender<()>),
    /// Closes the current segment so it can be replayed; replies with the new segment's number.
    Rotate(std_mpsc::Sender<u64>),
}

/// Whether a spooled record still holds a queue slot (`QUEUE_SIZE`), which its write gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// An event of this run, unresolved until it is on disk.
    Held,
    /// A replayed record going back to the spool: its slot was given back when it was first spooled.
    None,
}

/// The spool: a writer thread appending to the current segment with group fsync, and the directory's
/// sealed segments waiting for replay.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    bytes: Arc<AtomicU64>,
    tx: Mutex<Option<std_mpsc::Sender<WriterMsg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    full_logged: AtomicBool,
}

impl Spool {
    /// Opens (creating) `dir` and starts the writer on a fresh segment after any existing ones.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Metrics) -> io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        let existing = segments(dir)?;
        let mut bytes = 0;
        for (_, path) in &existing {
            bytes += fs::metadata(path)?.len();
        }
        let next = existing.last().map_or(1, |(seq, _)| seq + 1);
        let bytes = Arc::new(AtomicU64::new(bytes));
        let (tx, rx) = std_mpsc::channel();
        let writer = SegmentWriter { dir: dir.to_path_buf(), seq: next, file: None, bytes: bytes.clone(), metrics };
        let handle = std::thread::Builder::new().name("spool-writer".into()).spawn(move || writer.run(rx))?;
        Ok(Arc::new(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            bytes,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            full_logged: AtomicBool::new(false),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// At its size limit: new events must be refused (503), since one could not be kept if Kafka failed.
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.max_bytes
    }

    /// Queues a record for the writer. Returns it back when the spool is full or closed (the caller
    /// counts it lost). Never blocks: callable from librdkafka's polling thread.
    // Handing the record back (not boxing it) keeps the hot failure path free of an allocation.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, record: SpoolRecord) -> Result<(), SpoolRecord> {
        self.send(record, Slot::Held)
    }

    /// Like `submit`, for a replayed record that Kafka refused again: it holds no queue slot, so its
    /// write resolves nothing (and is not counted as spooled a second time).
    #[allow(clippy::result_large_err)]
    pub fn resubmit(&self, record: SpoolRecord) -> Result<(), SpoolRecord> {
        self.send(record, Slot::None)
    }

    #[allow(clippy::result_large_err)]
    fn send(&self, record: SpoolRecord, slot: Slot) -> Result<(), SpoolRecord> {
        if self.is_full() {
            if !self.full_logged.swap(true, Ordering::Relaxed) {
                tracing::error!(dir = %self.dir.display(), max_bytes = self.max_bytes, "spool is full; events that cannot be delivered are lost");
            }
            return Err(record);
        }
        let guard = self.tx.lock().expect("spool sender lock");
        match guard.as_ref() {
            Some(tx) => tx.send(WriterMsg::Record(record, slot)).map_err(|std_mpsc::SendError(m)| match m {
                WriterMsg::Record(r, _) => r,
                _ => unreachable!("only records are returned"),
            }),
            None => Err(record),
        }
    }

    /// Waits until every record submitted so far is on disk and fsynced. Blocking.
    pub fn sync(&self) {
        let (tx, rx) = std_mpsc::channel();
        let sent = self.tx.lock().expect("spool sender lock").as_ref().map(|s| s.send(WriterMsg::Sync(tx)).is_ok());
        if sent == Some(true) {
            let _ = rx.recv();
        }
    }

    /// Seals the current segment; the returned sealed segments (oldest first) can be replayed.
    pub fn rotate(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let (tx, rx) = std_mpsc::channel();
        let current = {
            let guard = self.tx.lock().expect("spool sender lock");
            match guard.as_ref() {
                Some(s) if s.send(WriterMsg::Rotate(tx)).is_ok() => rx.recv().ok(),
                _ => None,
            }
        };
        let current = current.ok_or_else(|| io::Error::other("spool writer stopped"))?;
        Ok(segments(&self.dir)?.into_iter().filter(|(seq, _)| *seq < current).collect())
    }

    /// Removes a replayed segment.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path)?;
        self.bytes.fetch_sub(len.min(self.bytes()), Ordering::Relaxed);
        self.full_logged.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps a segment whose tail is corrupt for the operator, out of the replay set.
    pub fn quarantine(&self, path: &Path) -> io::Result<PathBuf> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let target = path.with_extension("corrupt");
        fs::rename(path, &target)?;
        self.bytes.fetch_sub(len.min(self.bytes()), Ordering::Relaxed);
        Ok(target)
    }

    /// Makes everything durable and stops the writer (end of shutdown).
    pub fn close(&self) {
        self.sync();
        self.tx.lock().expect("spool sender lock").take();
        if let Some(h) = self.writer.lock().expect("spool writer lock").take() {
            let _ = h.join();
        }
    }
}

struct SegmentWriter {
    dir: PathBuf,
    seq: u64,
    file: Option<BufWriter<File>>,
    bytes: Arc<AtomicU64>,
    metrics: Metrics,
}

impl SegmentWriter {
    fn run(mut self, rx: std_mpsc::Receiver<WriterMsg>) {
        let mut buf = Vec::with_capacity(4096);
        while let Ok(first) = rx.recv() {
            // Group commit: take everything already waiting, write it, fsync once.
            let mut written = Written::default();
            let mut waiters = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                match msg {
                    WriterMsg::Record(r, slot) => match self.append(&r, &mut buf) {
                        Ok(()) => written.add(slot, &r),
                        Err(e) => {
                            tracing::error!(id = %r.id, error = %e, "spool write failed; event lost");
                            Written::one(slot, &r).lost(&self.metrics);
                        }
                    },
                    WriterMsg::Sync(reply) => waiters.push(reply),
                    WriterMsg::Rotate(reply) => {
                        self.sync_file(&mut written);
                        self.file = None;
                        self.seq += 1;
                        let _ = reply.send(self.seq);
                    }
                }
            }
            self.sync_file(&mut written);
            for w in waiters {
                let _ = w.send(());
            }
        }
        let mut written = Written::default();
        self.sync_file(&mut written);
    }

    fn append(&mut self, record: &SpoolRecord, buf: &mut Vec<u8>) -> io::Result<()> {
        if self.file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(segment_path(&self.dir, self.seq))?;
            self.file = Some(BufWriter::with_capacity(256 * 1024, f));
        }
        buf.clear();
        record.encode(buf);
        let mut head = [0u8; HEADER];
        head[..4].copy_from_slice(&MAGIC.to_le_bytes());
        head[4..8].copy_from_slice(&(buf.len() as u32).to_le_bytes());
        head[8..].copy_from_slice(&crc32fast::hash(buf).to_le_bytes());
        let f = self.file.as_mut().expect("opened above");
        f.write_all(&head)?;
        f.write_all(buf)?;
        self.bytes.fetch_add((HEADER + buf.len()) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// fsyncs the current segment; the records written since the last sync now count as spooled.
    fn sync_file(&mut self, written: &mut Written) {
        if *written == Written::default() {
            return;
        }
        let result = match self.file.as_mut() {
            Some(f) => f.flush().and_then(|_| f.get_ref().sync_data()),
            None => Ok(()),
        };
        match result {
            // Re-spooled replays were counted when first spooled, and hold no slot to give back.
            Ok(()) => self.metrics.spooled(written.held, written.held_bytes),
            Err(e) => {
                tracing::error!(error = %e, records = written.held + written.replayed, "spool fsync failed; events lost");
                written.lost(&self.metrics);
            }
        }
        *written = Written::default();
    }
}

/// Records appended since the last fsync, by whether they hold a queue slot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Written {
    held: usize,
    /// What the records holding a slot count against `QUEUE_MAX_BYTES`.
    held_bytes: u64,
    replayed: usize,
}

impl Written {
    fn one(slot: Slot, record: &SpoolRecord) -> Self {
        let mut w = Written::default();
        w.add(slot, record);
        w
    }

    fn add(&mut self, slot: Slot, record: &SpoolRecord) {
        match slot {
            Slot::Held => {
                self.held += 1;
                self.held_bytes += record.queue_bytes();
            }
            Slot::None => self.replayed += 1,
        }
    }

    /// Counts these records lost, giving back the slots of those that held one.
    fn lost(&self, metrics: &Metrics) {
        metrics.lost(self.held, self.held_bytes);
        metrics.lost_after_spool(self.replayed);
    }
}

/// Counts what the process accepted and resolved, on disk, so that after a crash (SIGKILL, OOM) the next
/// start can tell how many accepted events were never resolved.
///
/// Before a request is answered 2xx, the file says at least as many events were accepted as really
/// were; `resolved` (published, dead-lettered, spooled, or counted lost) is written every 100 ms and at
/// shutdown. So after a crash the reported number is an upper bound: never less than what was really
/// lost. To keep a syscall off most requests, the accepted count is written with a small reserve ahead
/// of the true count, sized so that writes happen about once a millisecond under load and the reserve
/// decays to nothing when traffic is slow: the bound is exact for a trickle and overstates by at most a
/// few milliseconds of traffic at full speed. A clean stop writes the exact counts.
pub struct Ledger {
    file: File,
    /// Events accepted by this process.
    accepted: AtomicU64,
    /// The accepted count on disk: never below `accepted` once `accepted()` returns.
    written: AtomicU64,
    reserve: Mutex<Reserve>,
    /// Held for the life of the process: two instances must never share a spool directory.
    _lock: File,
}

/// How far ahead of the true count the last write went, and when.
struct Reserve {
    ahead: u64,
    at: std::time::Instant,
}

/// The reserve never exceeds this many events.
const MAX_RESERVE: u64 = 4096;

/// What the previous run's ledger said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousRun {
    pub clean: bool,
    pub accepted: u64,
    pub resolved: u64,
}

impl PreviousRun {
    /// Events accepted but not known to be resolved when the previous run ended without a clean stop.
    pub fn unresolved(&self) -> u64 {
        if self.clean {
            0
        } else {
            self.accepted.saturating_sub(self.resolved)
        }
    }
}

impl Ledger {
    /// Opens `dir/ledger`, returning what the previous run left, and starts a new run.
    pub fn open(dir: &Path) -> io::Result<(Self, Option<PreviousRun>)> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "another event-ingestor process is using this spool directory (SPOOL_DIR)",
            )
        })?;
        let path = dir.join("ledger");
        let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        let mut buf = [0u8; 17];
        let previous = match file.read_exact_at(&mut buf, 0) {
            Ok(()) => Some(PreviousRun {
                accepted: u64::from_le_bytes(buf[0..8].try_into().expect("8 bytes")),
                resolved: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
                clean: buf[16] == 1,
            }),
            Err(_) => None,
        };
        file.write_all_at(&[0u8; 17], 0)?;
        file.sync_data()?;
        // As if the last write were long ago: the first writes are exact.
        let long_ago = std::time::Instant::now().checked_sub(std::time::Duration::from_secs(1));
        let reserve = Mutex::new(Reserve { ahead: 0, at: long_ago.unwrap_or_else(std::time::Instant::now) });
        let ledger = Ledger { file, accepted: AtomicU64::new(0), written: AtomicU64::new(0), reserve, _lock: lock };
        Ok((ledger, previous))
    }

    /// Records `n` more accepted events. Called before the 2xx is sent; returns once the file covers them.
    pub fn accepted(&self, n: u64) {
        let total = self.accepted.fetch_add(n, Ordering::AcqRel) + n;
        // `written` only grows, and only after its value is in the file.
        if total <= self.written.load(Ordering::Acquire) {
            return;
        }
        let mut reserve = self.reserve.lock().expect("ledger lock");
        if total <= self.written.load(Ordering::Acquire) {
            return;
        }
        let since = reserve.at.elapsed();
        reserve.ahead = if since < std::time::Duration::from_millis(1) {
            (reserve.ahead * 2).clamp(1, MAX_RESERVE)
        } else if since > std::time::Duration::from_millis(10) {
            reserve.ahead / 2
        } else {
            reserve.ahead
        };
        let bound = self.accepted.load(Ordering::Acquire) + reserve.ahead;
        if let Err(e) = self.file.write_all_at(&bound.to_le_bytes(), 0) {
            tracing::warn!(error = %e, "ledger write failed");
        }
        reserve.at = std::time::Instant::now();
        self.written.store(bound, Ordering::Release);
    }

    pub fn resolved(&self, total: u64) {
        let _ = self.file.write_all_at(&total.to_le_bytes(), 8);
    }

    /// Marks a clean stop: nothing was left unresolved without being counted.
    pub fn clean_stop(&self, resolved_total: u64) {
        let accepted = self.accepted.load(Ordering::Acquire);
        let mut buf = [0u8; 17];
        buf[0..8].copy_from_slice(&accepted.to_le_bytes());
        buf[8..16].copy_from_slice(&resolved_total.to_le_bytes());
        buf[16] = 1;
        let _ = self.file.write_all_at(&buf, 0);
        let _ = self.file.sync_data();
    }
}

/// What `event-ingestor spool show` prints: every segment with its records and any corruption.
pub fn describe_dir(dir: &Path) -> io::Result<serde_json::Value> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for (seq, path) in segments(dir)? {
        let c = read_segment(&path)?;
        total += c.records.len();
        out.push(serde_json::json!({
            "segment": seq,
            "path": path.display().to_string(),
            "bytes": fs::metadata(&path)?.len(),
            "records": c.records.len(),
            "first_id": c.records.first().map(|r| r.id.clone()),
            "last_id": c.records.last().map(|r| r.id.clone()),
            "topics": c.records.iter().map(|r| r.topic.as_str()).collect::<std::collections::BTreeSet<_>>(),
            "corruption": c.corruption.map(|c| serde_json::json!({"offset": c.offset, "reason": c.reason})),
        }));
    }
    let previous = read_ledger(dir);
    Ok(serde_json::json!({
        "dir": dir.display().to_string(),
        "records": total,
        "segments": out,
        "ledger": previous.map(|p| serde_json::json!({
            "clean_stop": p.clean, "accepted": p.accepted, "resolved": p.resolved, "unresolved": p.unresolved()
        })),
    }))
}

/// The ledger as the last run left it, without starting a new run.
pub fn read_ledger(dir: &Path) -> Option<PreviousRun> {
    let data = fs::read(dir.join("ledger")).ok()?;
    (data.len() >= 17).then(|| PreviousRun {
        accepted: u64::from_le_bytes(data[0..8].try_into().expect("8 bytes")),
        resolved: u64::from_le_bytes(data[8..16].try_into().expect("8 bytes")),
        clean: data[16] == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::QueueGauge;

    fn record(i: usize) -> SpoolRecord {
        SpoolRecord {
            id: format!("id-{i}"),
            topic: "events".into(),
            key: i.is_multiple_of(2).then(|| b"k".to_vec()),
            value: format!("{{\"n\":{i}}}").into_bytes(),
            headers: vec![("ce_id".into(), Some(format!("id-{i}").into_bytes())), ("empty".into(), None)],
            timestamp_ms: (!i.is_multiple_of(3)).then_some(1_700_000_000_000 + i as i64),
        }
    }

    fn spool(dir: &Path, max: u64) -> (Arc<Spool>, Metrics) {
        let metrics = Metrics::new(Arc::new(QueueGauge::new(1000)));
        (Spool::open(dir, max, metrics.clone()).unwrap(), metrics)
    }

    #[test]
    fn only_records_holding_a_queue_slot_give_one_back() {
        let dir = tempfile::tempdir().unwrap();
        let (s, metrics) = spool(dir.path(), 1 << 20);
        let gauge = metrics.queue().clone();
        assert!(gauge.try_take(2, record(0).queue_bytes() + record(1).queue_bytes()));
        s.submit(record(0)).unwrap();
        s.submit(record(1)).unwrap();
        // A replayed record that Kafka refused again goes back without a slot.
        s.resubmit(record(2)).unwrap();
        s.sync();
        assert_eq!((gauge.depth(), gauge.bytes()), (0, 0));
        assert_eq!(gauge.resolved_total(), 2, "the re-spooled replay resolved nothing");
        assert!(gauge.try_take(gauge.capacity(), 0), "the whole queue is free again");
        assert!(!gauge.try_take(1, 0), "and no bigger than QUEUE_SIZE");
        s.close();
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        assert_eq!(read_segment(&path).unwrap().records, (0..3).map(record).collect::<Vec<_>>());
    }

    #[test]
    fn records_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = spool(dir.path(), 1 << 20);
        for i in 0..50 {
            s.submit(record(i)).unwrap();
        }
        s.close();
        let (s, _) = spool(dir.path(), 1 << 20);
        let sealed = s.rotate().unwrap();
        assert_eq!(sealed.len(), 1);
        let contents = read_segment(&sealed[0].1).unwrap();
        assert_eq!(contents.corruption, None);
        assert_eq!(contents.records, (0..50).map(record).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_detected_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = spool(dir.path(), 1 << 20);
        for i in 0..3 {
            s.submit(record(i)).unwrap();
        }
        s.close();
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let full = fs::read(&path).unwrap();

        // Truncated in the middle of the last record.
        fs::write(&path, &full[..full.len() - 5]).unwrap();
        let c = read_segment(&path).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.corruption.unwrap().reason, "torn record (shorter than its length)");

        // A flipped byte in the second record's payload.
        let mut bad = full.clone();
        let second = full.len() / 3 + 20;
        bad[second] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        let c = read_segment(&path).unwrap();
        assert!(c.records.len() < 3);
        assert!(c.corruption.is_some());
        assert!(c.records.iter().all(|r| r.id.starts_with("id-")), "nothing garbled is returned");
    }

    #[test]
    fn a_full_spool_refuses_records() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = spool(dir.path(), 200);
        s.submit(record(0)).unwrap();
        s.submit(record(1)).unwrap();
        s.sync();
        let _ = s.submit(record(2));
        s.sync();
        assert!(s.is_full());
        assert!(s.submit(record(3)).is_err());
    }

    #[test]
    fn the_ledger_reports_what_a_crash_left_unresolved() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, previous) = Ledger::open(dir.path()).unwrap();
        assert_eq!(previous, None);
        assert!(Ledger::open(dir.path()).is_err(), "a second process cannot share the directory");
        // A trickle is counted exactly.
        ledger.accepted(10);
        std::thread::sleep(std::time::Duration::from_millis(15));
        ledger.accepted(5);
        ledger.resolved(12);
        drop(ledger); // a crash: no clean stop
        let (ledger, previous) = Ledger::open(dir.path()).unwrap();
        assert_eq!(previous.unwrap().unresolved(), 3);
        ledger.accepted(4);
        ledger.clean_stop(4);
        drop(ledger);
        let (ledger, previous) = Ledger::open(dir.path()).unwrap();
        assert_eq!(previous.unwrap().unresolved(), 0);

        // A burst is never undercounted, and overcounted by at most the reserve.
        for _ in 0..100_000 {
            ledger.accepted(1);
        }
        drop(ledger);
        let (_, previous) = Ledger::open(dir.path()).unwrap();
        let unresolved = previous.unwrap().unresolved();
        assert!((100_000..=100_000 + MAX_RESERVE).contains(&unresolved), "{unresolved}");
    }
}

//! The bounded ingest queue (`QUEUE_SIZE` events, `QUEUE_MAX_BYTES` bytes) and the `WORKER_POOL_SIZE` workers
//! that drain it into the producer.
//!
//! A request's events travel as one job so that one worker sends them in order (per-key order within a
//! request). Capacity is counted in events and in their bytes (see `QueueGauge`): an event holds its slot
//! until it is resolved, so a slow broker fills the queue and clients hear 503 instead of the process
//! growing.
//!
//! Handing a job to librdkafka does not wait (except when its own buffer is full), so one awake worker
//! keeps up with any request rate. Waking one of 10 sleeping workers for every job cost more than the job
//! (a task wake-up, often on the other thread: 10 workers made `full` ≈ 15 % slower than one). So a job
//! wakes a sleeping worker only when none is awake, or when the awake ones fall behind (a worker held up by
//! a full librdkafka buffer): a backlog brings in up to `WORKER_POOL_SIZE` workers. A worker that finds the
//! queue empty sleeps at once, and the next job's handler wakes it into its own thread's next-task slot,
//! where it runs as soon as the handler's task is done with the thread. (It used to yield once first, but
//! tokio holds a yielded task back until its thread has run out of other work, and then polls the I/O
//! driver once more, an `epoll_wait`, only to wake it.)
//!
//! While every worker sleeps, an `ack=queued` job does not wake one on its own: such jobs gather, up to
//! `GATHER_JOBS` or for `GATHER_FOR` (1 ms; the producer then batches for `KAFKA_LINGER`, 5 ms by
//! default), and one wake-up takes them all. A job whose client waits for the broker (`ack=kafka`) wakes a
//! worker at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::kafka::delivery::{AckBatch, DeliveryTicket, Destination};
use crate::kafka::{DeliveryOutcome, Ledger, OutboundRecord, Publisher, SpoolRecord};
use crate::telemetry::{Metrics, QueueGauge};

use super::drain::DrainRate;

/// Where the workers hand events.
#[derive(Clone)]
pub enum Sink {
    Kafka(Arc<Publisher>),
    /// Benchmarks only (`PUBLISHER=noop`): every event is resolved as published at once.
    Noop(Metrics),
}

/// The events of one request, on their way to the producer.
pub struct Job {
    records: Vec<OutboundRecord>,
    acks: Option<Arc<AckBatch>>,
    received_at: Instant,
    span: tracing::Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// No room for the job now; retry after the given number of seconds.
    Full { retry_after_secs: u64 },
    /// More events than the whole queue can ever hold.
    TooLarge { capacity: usize },
    /// More bytes than the whole queue can ever hold.
    TooManyBytes { bytes: u64, max_bytes: u64 },
    /// Shutting down: no new events.
    Closed,
}

/// Jobs waiting per awake worker beyond which another worker is woken.
const BACKLOG_PER_AWAKE_WORKER: usize = 32;

/// Jobs without acknowledgements to wait for (`ack=queued`) that may gather while every worker sleeps
/// before one is woken for them, and the longest any of them waits for that (`Jobs::sweep`).
const GATHER_JOBS: usize = 32;
const GATHER_FOR: Duration = Duration::from_millis(1);

/// The jobs between the handlers and the workers, and how many workers are awake to take them.
struct Jobs {
    queue: Mutex<VecDeque<Job>>,
    /// Workers taking jobs now (not waiting for one).
    awake: AtomicUsize,
    workers: usize,
    /// Set under the queue's lock: no job is added after it.
    closed: AtomicBool,
    wake: Notify,
    /// Set while `sweep` is counting down for jobs queued without a wake-up.
    sweep_armed: AtomicBool,
    sweep: Notify,
}

impl Jobs {
    fn new(workers: usize) -> Self {
        Jobs {
            queue: Mutex::new(VecDeque::new()),
            // Every worker starts awake and goes to sleep on finding the queue empty.
            awake: AtomicUsize::new(workers),
            workers,
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            sweep_armed: AtomicBool::new(false),
            sweep: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        // Nothing panics while holding the lock; a poisoned queue is still a consistent queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a job, or gives it back once the queue is closed.
    fn push(&self, job: Job) -> Result<(), Job> {
        let urgent = job.acks.is_some();
        let waiting = {
            let mut queue = self.lock();
            if self.closed.load(Ordering::SeqCst) {
                return Err(job);
            }
            queue.push_back(job);
            queue.len()
        };
        // An awake worker looks at the queue again before it sleeps (see `next`), so a job needs a wake-up
        // only when no worker is awake, or when the awake ones fall behind (held up by a full librdkafka
        // buffer: at thousands of requests a second the backlog passes the mark within milliseconds).
        // With every worker asleep, a client waiting for the broker's acknowledgement wakes one at once;
        // other jobs gather, up to `GATHER_JOBS` or for `GATHER_FOR`, so that one wake-up takes many.
        let awake = self.awake.load(Ordering::SeqCst);
        if awake == 0 && !urgent && waiting < GATHER_JOBS {
            if !self.sweep_armed.load(Ordering::SeqCst) && !self.sweep_armed.swap(true, Ordering::SeqCst) {
                self.sweep.notify_one();
            }
        } else if awake < self.workers && waiting > awake * BACKLOG_PER_AWAKE_WORKER {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Wakes a worker for jobs that were queued without one (see `push`) at most `GATHER_FOR` after the
    /// first of them. One task for the whole pool; it only runs while such jobs are waiting.
    async fn sweep(&self) {
        loop {
            self.sweep.notified().await;
            if self.is_closed() {
                return;
            }
            tokio::time::sleep(GATHER_FOR).await;
            // Disarmed before the look: a job queued after the look arms the next round.
            self.sweep_armed.store(false, Ordering::SeqCst);
            let waiting = !self.lock().is_empty();
            if waiting && self.awake.load(Ordering::SeqCst) == 0 {
                self.wake.notify_one();
            }
        }
    }

    fn pop(&self) -> Option<Job> {
        self.lock().pop_front()
    }

    /// The next job, waiting for one when there is none; `None` once the queue is closed and empty.
    async fn next(&self) -> Option<Job> {
        loop {
            if let Some(job) = self.pop() {
                return Some(job);
            }
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            // Asleep from here; then one more look, so that a job pushed by a handler that still counted
            // this worker awake (and so woke nobody) is not left behind.
            self.awake.fetch_sub(1, Ordering::SeqCst);
            let notified = self.wake.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.lock().is_empty() && !self.closed.load(Ordering::SeqCst) {
                notified.await;
            }
            self.awake.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// No more jobs; the workers take what is queued, then stop.
    fn close(&self) {
        let _queue = self.lock();
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        self.sweep.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// The sending side of the queue, shared by all handlers.
#[derive(Clone)]
pub struct IngestQueue {
    jobs: Arc<Jobs>,
    ledger: Arc<Ledger>,
    metrics: Metrics,
    /// How fast events are resolved (published, dead-lettered or spooled).
    drain_rate: Arc<DrainRate>,
}

impl IngestQueue {
    /// Creates the queue (capacity from the metrics' queue gauge) and starts `workers` workers.
    pub fn start(workers: usize, sink: Sink, metrics: Metrics, ledger: Arc<Ledger>) -> (Self, JoinSet<()>) {
        let jobs = Arc::new(Jobs::new(workers));
        let drain_rate = DrainRate::track(metrics.queue(), QueueGauge::resolved_total);
        let mut set = JoinSet::new();
        for _ in 0..workers {
            let jobs = jobs.clone();
            let sink = sink.clone();
            set.spawn(async move {
                while let Some(job) = jobs.next().await {
                    match &sink {
                        Sink::Kafka(publisher) => send_job(publisher, job).await,
                        Sink::Noop(metrics) => discard_job(metrics, job),
                    }
                }
            });
        }
        let sweeper = jobs.clone();
        set.spawn(async move { sweeper.sweep().await });
        (IngestQueue { jobs, ledger, metrics, drain_rate }, set)
    }

    /// Queues the records of one request, or says why not. Never waits.
    pub fn try_push(
        &self,
        records: Vec<OutboundRecord>,
        acks: Option<Arc<AckBatch>>,
        received_at: Instant,
        span: tracing::Span,
    ) -> Result<(), QueueError> {
        if self.jobs.is_closed() {
            return Err(QueueError::Closed);
        }
        let gauge = self.metrics.queue();
        let n = records.len();
        if n > gauge.capacity() {
            return Err(QueueError::TooLarge { capacity: gauge.capacity() });
        }
        let bytes = records.iter().map(OutboundRecord::queue_bytes).sum();
        if bytes > gauge.max_bytes {
            return Err(QueueError::TooManyBytes { bytes, max_bytes: gauge.max_bytes });
        }
        if !gauge.try_take(n, bytes) {
            return Err(QueueError::Full { retry_after_secs: self.retry_after_secs(n) });
        }
        if self.jobs.push(Job { records, acks, received_at, span }).is_err() {
            gauge.give_back(n, bytes);
            return Err(QueueError::Closed);
        }
        self.metrics.accepted(n);
        // On disk before the 2xx: after a crash the next start can tell how many were accepted.
        self.ledger.accepted(n as u64);
        Ok(())
    }

    /// Seconds until the queue has likely drained enough for `n` more events, from the current depth and
    /// drain rate; 1 s at least, 60 s at most.
    pub fn retry_after_secs(&self, n: usize) -> u64 {
        self.drain_rate.retry_after_secs((self.metrics.queue().depth() + n) as u64, 60)
    }

    /// Stops taking jobs; queued jobs are still delivered by the workers, which then exit.
    pub fn close(&self) {
        self.jobs.close();
    }

    /// The records of jobs no worker took (a shutdown that ran out of time), as spool records.
    pub fn take_remaining(&self) -> Vec<SpoolRecord> {
        let mut out = Vec::new();
        while let Some(job) = self.jobs.pop() {
            if let Some(acks) = &job.acks {
                for i in 0..job.records.len() {
                    acks.resolve(
                        i,
                        DeliveryOutcome::Failed { code: "Shutdown".into(), message: "shutting down".into() },
                    );
                }
            }
            out.extend(job.records.into_iter().map(OutboundRecord::into_spool_record));
        }
        out
    }
}

async fn send_job(publisher: &Publisher, job: Job) {
    let Job { records, acks, received_at, span } = job;
    for (index, record) in records.into_iter().enumerate() {
        let ticket = Box::new(DeliveryTicket {
            id: record.id().to_string(),
            topic: record.topic.clone(),
            received_at,
            attempt: 1,
            destination: Destination::Primary,
            ack: acks.as_ref().map(|a| (a.clone(), index)),
            span: span.clone(),
        });
        publisher.send(record, ticket).await;
    }
}

fn discard_job(metrics: &Metrics, job: Job) {
    for (index, record) in job.records.iter().enumerate() {
        metrics.published(job.received_at.elapsed(), record.queue_bytes());
        if let Some(acks) = &job.acks {
            acks.resolve(index, DeliveryOutcome::Delivered { partition: -1, offset: -1 });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn job() -> Job {
        Job { records: Vec::new(), acks: None, received_at: Instant::now(), span: tracing::Span::none() }
    }

    /// Workers that count the jobs they take; each holds a job for `hold` (a worker held up by a full
    /// librdkafka buffer).
    fn workers(jobs: &Arc<Jobs>, n: usize, hold: Duration) -> (JoinSet<usize>, Arc<AtomicUsize>) {
        let busy_max = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        // The sweeper, as `IngestQueue::start` runs it; it stops when the queue is closed.
        let sweeper = jobs.clone();
        tokio::spawn(async move { sweeper.sweep().await });
        for _ in 0..n {
            let (jobs, busy, busy_max) = (jobs.clone(), busy.clone(), busy_max.clone());
            set.spawn(async move {
                let mut taken = 0;
                while let Some(_job) = jobs.next().await {
                    taken += 1;
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    busy_max.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(hold).await;
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
                taken
            });
        }
        (set, busy_max)
    }

    async fn total(mut set: JoinSet<usize>) -> usize {
        let mut sum = 0;
        while let Some(n) = set.join_next().await {
            sum += n.expect("worker");
        }
        sum
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_is_taken_when_workers_sleep_between_them() {
        let jobs = Arc::new(Jobs::new(4));
        let (set, _) = workers(&jobs, 4, Duration::ZERO);
        for i in 0..2_000 {
            assert!(jobs.push(job()).is_ok());
            if i % 100 == 0 {
                // Let every worker fall asleep on an empty queue now and then.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        jobs.close();
        assert!(jobs.push(job()).is_err(), "a closed queue takes no job");
        let taken = tokio::time::timeout(Duration::from_secs(10), total(set)).await.expect("workers stop");
        assert_eq!(taken, 2_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_job_is_taken_though_every_worker_sleeps_and_an_acknowledged_one_at_once() {
        let jobs = Arc::new(Jobs::new(4));
        let (set, _) = workers(&jobs, 4, Duration::ZERO);
        let taken = |jobs: &Jobs| jobs.lock().is_empty();
        for urgent in [false, true, false] {
            // Every worker asleep on the empty queue.
            while jobs.awake.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut job = job();
            if urgent {
                job.acks = Some(AckBatch::new(1));
            }
            assert!(jobs.push(job).is_ok());
            let waited = Instant::now();
            while !taken(&jobs) {
                assert!(waited.elapsed() < Duration::from_secs(5), "a job (urgent: {urgent}) was left in the queue");
                tokio::task::yield_now().await;
            }
        }
        jobs.close();
        let n = tokio::time::timeout(Duration::from_secs(10), total(set)).await.expect("workers stop");
        assert_eq!(n, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_behind_a_held_up_worker_wakes_the_others() {
        let jobs = Arc::new(Jobs::new(4));
        let (set, busy_max) = workers(&jobs, 4, Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..8 * BACKLOG_PER_AWAKE_WORKER {
            assert!(jobs.push(job()).is_ok());
        }
        jobs.close();
        let taken = tokio::time::timeout(Duration::from_secs(10), total(set)).await.expect("workers stop");
        assert_eq!(taken, 8 * BACKLOG_PER_AWAKE_WORKER);
        assert_eq!(busy_max.load(Ordering::SeqCst), 4, "all four workers held a job at once");
    }
}

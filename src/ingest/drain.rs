//! Backlogs and their drain rates: places held up to a limit (queued events, requests in progress, open
//! connections), how fast they clear, measured over the last few seconds, and the `Retry-After` that
//! gives a client refused because of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// How often the count is sampled.
const TICK: Duration = Duration::from_secs(1);
/// Ticks the rate is taken over. Five seconds even out completions that come in clumps (a slow broker
/// answers many waiting requests at once) and still follow a change within seconds.
const WINDOW: usize = 5;

/// Places held, up to a capacity, and how many were given back finished. Nothing ever waits for a place
/// (a refusal is an answer), so this is a count, not a semaphore, whose release takes its waiters' mutex.
#[derive(Debug)]
pub struct Slots {
    capacity: usize,
    held: AtomicUsize,
    finished: AtomicU64,
}

impl Slots {
    pub fn new(capacity: usize) -> Self {
        Slots { capacity, held: AtomicUsize::new(0), finished: AtomicU64::new(0) }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes `n` places, or none when fewer than `n` are free.
    pub fn try_take(&self, n: usize) -> bool {
        let room = |held: usize| held.checked_add(n).filter(|&after| after <= self.capacity);
        self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, room).is_ok()
    }

    /// Gives back `n` places whose work did not happen. Saturating: a miscount can only make room, never
    /// refuse everything.
    pub fn give_back(&self, n: usize) {
        let _ = self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| Some(h.saturating_sub(n)));
    }

    /// Gives back `n` places whose work is done.
    pub fn finish(&self, n: usize) {
        self.give_back(n);
        self.finished.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Places given back finished, so far.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// One place, held until the returned guard is dropped (then counted finished), or `None` when all
    /// are taken.
    pub fn enter(self: &Arc<Self>) -> Option<Slot> {
        self.try_take(1).then(|| Slot(self.clone()))
    }
}

/// One place of a [`Slots`], given back finished when dropped (also on unwinding).
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.finish(1);
    }
}

/// The recent rate, per second, at which a count of finished work grows.
#[derive(Debug, Default)]
pub struct DrainRate {
    /// An `f64`, as bits.
    per_second: AtomicU64,
}

impl DrainRate {
    /// Starts measuring how fast `finished(source)` grows, every second until `source` is dropped.
    pub fn track<T: Send + Sync + 'static>(source: &Arc<T>, finished: fn(&T) -> u64) -> Arc<DrainRate> {
        let rate = Arc::new(DrainRate::default());
        tokio::spawn(measure(Arc::downgrade(source), finished, rate.clone()));
        rate
    }

    fn per_second(&self) -> f64 {
        f64::from_bits(self.per_second.load(Ordering::Relaxed))
    }

    fn set(&self, per_second: f64) {
        self.per_second.store(per_second.to_bits(), Ordering::Relaxed);
    }

    /// Seconds until `backlog` has drained at the current rate: at least 1, at most `max`. A drain slower
    /// than 1 a second (or stalled) counts as 1 a second, so the answer still grows with the backlog.
    pub fn retry_after_secs(&self, backlog: u64, max: u64) -> u64 {
        let secs = (backlog as f64 / self.per_second().max(1.0)).ceil() as u64;
        secs.clamp(1, max.max(1))
    }
}

async fn measure<T>(source: Weak<T>, finished: fn(&T) -> u64, rate: Arc<DrainRate>) {
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::with_capacity(WINDOW + 1);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let Some(count) = source.upgrade().map(|source| finished(&source)) else { return };
        if samples.len() == WINDOW + 1 {
            samples.pop_front();
        }
        samples.push_back((Instant::now(), count));
        let ((then, before), (now, after)) = (samples[0], samples[samples.len() - 1]);
        let secs = now.duration_since(then).as_secs_f64();
        if secs > 0.0 {
            rate.set(after.saturating_sub(before) as f64 / secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_held_until_its_guard_drops_then_counted_finished() {
        let slots = Arc::new(Slots::new(2));
        let (a, b) = (slots.enter().unwrap(), slots.enter().unwrap());
        assert!(slots.enter().is_none(), "both places are held");
        drop(a);
        assert_eq!((slots.held(), slots.finished()), (1, 1));
        let c = slots.enter().expect("a dropped guard makes room");
        drop((b, c));
        assert_eq!((slots.held(), slots.finished()), (0, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_taken_over_the_last_seconds_and_follows_a_change() {
        let done = Arc::new(AtomicU64::new(0));
        let rate = DrainRate::track(&done, |d| d.load(Ordering::Relaxed));
        // Work finishes between the samples: in clumps of 30 every third second, 10 a second on average.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for second in 0..9 {
            if second % 3 == 2 {
                done.fetch_add(30, Ordering::Relaxed);
            }
            tokio::time::sleep(TICK).await;
        }
        // The last five seconds held two clumps (a one-second window would read 0 or 30).
        assert_eq!(rate.per_second(), 12.0);
        assert_eq!(rate.retry_after_secs(100, 60), 9);
        // Nothing finishes any more: within the window the rate falls to zero.
        tokio::time::sleep(TICK * WINDOW as u32).await;
        assert_eq!(rate.per_second(), 0.0);
        assert_eq!(rate.retry_after_secs(7, 60), 7, "a stalled drain counts as 1 a second");
        assert_eq!(rate.retry_after_secs(700, 60), 60);
        assert_eq!(rate.retry_after_secs(0, 60), 1);
    }

    #[test]
    fn retry_after_is_the_backlog_over_the_rate_rounded_up() {
        let rate = DrainRate::default();
        rate.set(400.0);
        assert_eq!(rate.retry_after_secs(1, 60), 1);
        assert_eq!(rate.retry_after_secs(400, 60), 1);
        assert_eq!(rate.retry_after_secs(401, 60), 2);
        assert_eq!(rate.retry_after_secs(10_000, 60), 25);
        assert_eq!(rate.retry_after_secs(10_000, 20), 20);
    }
}

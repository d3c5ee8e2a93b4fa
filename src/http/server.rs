//! The ingest listener's accept loop: hyper with a header-read timeout and a separate keep-alive idle
//! timeout (axum's `serve` has neither), a cap on open connections, and graceful shutdown that lets
//! in-flight requests finish.
//!
//! hyper's own `header_read_timeout` starts whenever a connection waits for its next request, so it
//! would also be the keep-alive limit. Instead each connection carries a [`ConnClock`]: its socket reads
//! and its requests move it between *waiting for a request head*, *busy* and *idle*, and one watchdog
//! task for all connections ([`Watchdog`]) closes a connection when its phase's limit runs out —
//! abruptly for an unfinished head (a slow or malicious client), gracefully for an idle connection (a
//! request arriving in the race is still answered) — and drains them all at shutdown. A connection's
//! own task only looks at one flag when it wakes: no timer and no shutdown signal of its own to poll.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ConnectInfo;
use futures_util::future::Either;
use futures_util::task::AtomicWaker;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::Oneshot;
use tower::ServiceExt;

use crate::ingest::drain::Slots;
use crate::telemetry::Metrics;

/// Connection-level defences against slow or greedy clients.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to receive a request's headers, from its first byte (or from the accept, for the first
    /// request of a connection).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub keepalive_timeout: Duration,
    /// Open connections beyond this are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Whether requests carry the peer address (`ConnectInfo`): only the per-client rate limits read
    /// it, and without it a request's extensions are never allocated.
    pub peer_addresses: bool,
}

/// Serves `app` on `listener` until `stop`, then waits for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: impl super::IngestService,
    limits: ConnectionLimits,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's header timer (30 s by default once a timer is set) would also cut idle keep-alive
    // connections; the connection clock below does both jobs.
    // `writev(false)`: an answer's head and its small body go out as one buffer in one write(2) (the
    // body is copied, a few hundred bytes) — 5 % less CPU a request than two iovecs (docs/benchmarks.md).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true).writev(false);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(20)));
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    let slots = Arc::new(Slots::new(limits.max_connections));
    let watchdog = Arc::new(Watchdog::new(limits));
    let watching = tokio::spawn(watchdog.clone().run(stop.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = slots.enter() else {
            metrics.connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watched = watchdog.watch();
        let service = ConnService {
            stack: RefCell::new(app.clone()),
            clock: watched.clock.clone(),
            peer: limits.peer_addresses.then_some(peer),
        };
        let io = TokioIo::new(ClockedIo { stream, clock: watched.clock.clone() });
        let builder = builder.clone();
        let metrics = metrics.clone();
        metrics.connection_opened();
        connections.spawn(async move {
            let connection = builder.serve_connection_with_upgrades(io, service);
            let mut connection = std::pin::pin!(connection);
            let mut draining = false;
            let clock = &watched.clock;
            let result = std::future::poll_fn(|cx| {
                // Registered before the order is read, so that an order given after the read wakes us.
                clock.waker.register(cx.waker());
                match clock.order.load(Ordering::Acquire) {
                    // A head that did not arrive in time: the client is slow or hostile; just close.
                    CLOSE => return Poll::Ready(Ok(())),
                    // Idle too long, or shutting down: close once the request in progress (if any) is answered.
                    DRAIN if !draining => {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ => {}
                }
                connection.as_mut().poll(cx)
            })
            .await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(watched);
            metrics.connection_closed();
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    watching.abort();
}

/// A connection's own copy of the ingest service, called in place. hyper-util's `TowerToHyperService`
/// clones the whole stack for every request — a reference count of each layer's shared state, counted
/// up and down on cache lines that every worker thread touches; a connection starts its requests one
/// at a time, so its copy can serve them all. It also keeps the connection's clock and puts the peer
/// address on the request when the per-client limits need it.
struct ConnService<S> {
    stack: RefCell<S>,
    clock: Arc<ConnClock>,
    peer: Option<SocketAddr>,
}

impl<S: super::IngestService> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnService<S> {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Answered<Either<S::Future, Pin<Box<Oneshot<S, axum::extract::Request>>>>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.clock.request_started();
        let mut req = req.map(axum::body::Body::new);
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        // Never held across an await: `call` is synchronous, and the future owns what it needs.
        let mut stack = self.stack.borrow_mut();
        let inner = match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(stack.call(req)),
            // No layer of the stack holds requests back in `poll_ready` (the limits refuse in `call`);
            // should one ever do, its request waits on a copy of its own, as with `TowerToHyperService`
            // (boxed: in place, a copy of the stack would make every request's future that much larger).
            _ => Either::Right(Box::pin(stack.clone().oneshot(req))),
        };
        Answered { inner, clock: self.clock.clone() }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer; the connection is idle from when it is ready.
    struct Answered<F> {
        #[pin]
        inner: F,
        clock: Arc<ConnClock>,
    }
}

impl<F: Future> Future for Answered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.clock.request_finished();
        Poll::Ready(out)
    }
}

/// No order: serve on.
const RUN: u8 = 0;
/// Close gracefully: finish the request in progress, take no new one.
const DRAIN: u8 = 1;
/// Close now.
const CLOSE: u8 = 2;

/// Every open connection's clock, looked at by one task every `period` (a tenth of the shorter of the
/// two limits, between 10 ms and 1 s).
///
/// Time is counted in the watchdog's ticks, which are at least `period` apart: a connection stamps its
/// phase changes with the current tick (an atomic load instead of a clock read on every request), and a
/// phase that began at tick `t` has lasted at least `(now - t - 1) × period` at tick `now`. So a limit
/// is never cut short, and is overrun by at most two periods (plus any lateness of the watchdog itself).
struct Watchdog {
    limits: ConnectionLimits,
    period: Duration,
    tick: Arc<AtomicU64>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    clocks: HashMap<u64, Arc<ConnClock>>,
    /// Set at shutdown: a connection registered from then on is told to drain at once.
    draining: bool,
}

/// A connection's registration with the watchdog; dropping it deregisters.
struct Watched {
    id: u64,
    clock: Arc<ConnClock>,
    watchdog: Arc<Watchdog>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watchdog.lock().clocks.remove(&self.id);
    }
}

impl Watchdog {
    fn new(limits: ConnectionLimits) -> Self {
        let period = (limits.header_read_timeout.min(limits.keepalive_timeout) / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        Watchdog { limits, period, tick: Arc::new(AtomicU64::new(1)), open: Mutex::new(Open::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Nothing panics while holding the lock; the map is consistent whatever happened.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, waiting for its first request head from now.
    fn watch(self: &Arc<Self>) -> Watched {
        let clock = Arc::new(ConnClock::new(self.tick.clone()));
        let mut open = self.lock();
        if open.draining {
            clock.order.store(DRAIN, Ordering::Release);
        }
        let id = open.next_id;
        open.next_id += 1;
        open.clocks.insert(id, clock.clone());
        Watched { id, clock, watchdog: self.clone() }
    }

    /// Looks at every connection each period; at `stop`, tells them all to drain, and goes on cutting
    /// off unfinished heads until the accept loop is done waiting for them.
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopped = false;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled(), if !stopped => {
                    stopped = true;
                    let mut open = self.lock();
                    open.draining = true;
                    for clock in open.clocks.values() {
                        clock.give(DRAIN);
                    }
                    continue;
                }
            }
            let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
            for clock in self.lock().clocks.values() {
                if let Some(order) = clock.expired(now, self.period, self.limits) {
                    clock.give(order);
                }
            }
        }
    }
}

/// A connection's phase and the watchdog tick it began at, in one atomic: bits 0-31 requests in progress,
/// bit 32 "bytes of a new request head have arrived", bits 33-63 the tick; and the watchdog's order.
struct ConnClock {
    state: AtomicU64,
    tick: Arc<AtomicU64>,
    order: AtomicU8,
    waker: AtomicWaker,
}

const BUSY_MASK: u64 = 0xffff_ffff;
const HEAD_BIT: u64 = 1 << 32;
const SINCE_SHIFT: u32 = 33;

impl ConnClock {
    /// A new connection waits for its first request head.
    fn new(tick: Arc<AtomicU64>) -> Self {
        let state = AtomicU64::new(HEAD_BIT | (tick.load(Ordering::Relaxed) << SINCE_SHIFT));
        Self { state, tick, order: AtomicU8::new(RUN), waker: AtomicWaker::new() }
    }

    fn now(&self) -> u64 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Bytes arrived: if the connection was idle, a new request head has begun.
    fn bytes_read(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if state & (BUSY_MASK | HEAD_BIT) == 0 {
            let head = HEAD_BIT | (self.now() << SINCE_SHIFT);
            let _ = self.state.compare_exchange(state, head, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        let _ =
            self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(((s & BUSY_MASK) + 1) & BUSY_MASK));
    }

    /// The last request in progress answered: idle from now.
    fn request_finished(&self) {
        let now = self.now();
        let _ = self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            let busy = (s & BUSY_MASK).saturating_sub(1);
            Some(if busy == 0 { now << SINCE_SHIFT } else { (s & !BUSY_MASK) | busy })
        });
    }

    /// The order for a connection whose phase has outlived its limit at tick `now`, if it has.
    fn expired(&self, now: u64, period: Duration, limits: ConnectionLimits) -> Option<u8> {
        let state = self.state.load(Ordering::Relaxed);
        let (limit, order) = match (state & BUSY_MASK, state & HEAD_BIT != 0) {
            // A request in progress has its own body and request timeouts.
            (busy, _) if busy > 0 => return None,
            (_, true) => (limits.header_read_timeout, CLOSE),
            (_, false) => (limits.keepalive_timeout, DRAIN),
        };
        let ticks = now.saturating_sub((state >> SINCE_SHIFT) + 1).min(u32::MAX.into()) as u32;
        let lasted = period.saturating_mul(ticks);
        (lasted >= limit).then_some(order)
    }

    /// Tells the connection's task to close (a stronger order replaces a weaker one) and wakes it.
    fn give(&self, order: u8) {
        if self.order.fetch_max(order, Ordering::AcqRel) < order {
            self.waker.wake();
        }
    }
}

/// The socket, reporting reads to the connection's clock.
struct ClockedIo {
    stream: TcpStream,
    clock: Arc<ConnClock>,
}

impl AsyncRead for ClockedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_read();
        }
        result
    }
}

impl AsyncWrite for ClockedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The peer address as the connection saw it.
pub type Peer = ConnectInfo<SocketAddr>;

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header: u64, idle: u64) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(header),
            keepalive_timeout: Duration::from_millis(idle),
            max_connections: 10,
            peer_addresses: false,
        }
    }

    #[test]
    fn phases_follow_reads_and_requests() {
        let clock = ConnClock::new(Arc::new(AtomicU64::new(1)));
        let phase = |c: &ConnClock| {
            let s = c.state.load(Ordering::Relaxed);
            (s & BUSY_MASK, s & HEAD_BIT != 0)
        };
        assert_eq!(phase(&clock), (0, true), "a new connection waits for a head");
        clock.request_started();
        clock.bytes_read();
        assert_eq!(phase(&clock), (1, false), "busy; reads of the body do not start a head");
        clock.request_started();
        clock.request_finished();
        assert_eq!(phase(&clock), (1, false), "still busy while one request is in progress");
        clock.request_finished();
        assert_eq!(phase(&clock), (0, false), "idle");
        clock.bytes_read();
        assert_eq!(phase(&clock), (0, true), "bytes while idle begin a head");
    }

    /// Counted in watchdog ticks (here 100 ms apart), a limit is never cut short and is overrun by at
    /// most two ticks; a busy connection is left to its request timeouts.
    #[test]
    fn a_phase_expires_after_its_limit_never_before() {
        let limits = limits(1_000, 3_000);
        let period = Duration::from_millis(100);
        let tick = Arc::new(AtomicU64::new(5));
        let clock = ConnClock::new(tick.clone());
        // The head began somewhere within tick 5; at tick 15 it may have lasted only 900 ms.
        let first_close = (6..40).find(|&now| clock.expired(now, period, limits).is_some()).unwrap();
        assert_eq!(first_close, 16, "a head gets 1 s, counted from the end of the tick it began in");
        assert_eq!(clock.expired(16, period, limits), Some(CLOSE));

        clock.request_started();
        assert_eq!(clock.expired(1_000, period, limits), None, "busy: not the watchdog's business");
        tick.store(20, Ordering::Relaxed);
        clock.request_finished();
        let first_drain = (21..100).find(|&now| clock.expired(now, period, limits).is_some()).unwrap();
        assert_eq!(first_drain, 51, "idle gets KEEPALIVE_TIMEOUT, not the header timeout");
        assert_eq!(clock.expired(51, period, limits), Some(DRAIN));
    }

    #[test]
    fn orders_only_grow_and_each_new_one_wakes_the_connection() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl futures_util::task::ArcWake for Count {
            fn wake_by_ref(me: &Arc<Self>) {
                me.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let wakes = Arc::new(Count(Default::default()));
        let waker = futures_util::task::waker(wakes.clone());
        let woken = || wakes.0.load(Ordering::SeqCst);
        let clock = ConnClock::new(Arc::new(AtomicU64::new(1)));
        clock.waker.register(&waker);
        clock.give(DRAIN);
        assert_eq!((clock.order.load(Ordering::Relaxed), woken()), (DRAIN, 1));
        clock.waker.register(&waker);
        clock.give(DRAIN);
        assert_eq!(woken(), 1, "the same order again does not wake");
        clock.give(CLOSE);
        clock.give(DRAIN);
        assert_eq!(clock.order.load(Ordering::Relaxed), CLOSE, "a drain does not take back a close");
        assert_eq!(woken(), 2);
    }

    #[test]
    fn the_watchdog_looks_ten_times_per_limit_within_bounds() {
        assert_eq!(Watchdog::new(limits(1_000, 3_000)).period, Duration::from_millis(100));
        assert_eq!(Watchdog::new(limits(100, 3_000)).period, Duration::from_millis(10));
        assert_eq!(Watchdog::new(limits(60_000, 600_000)).period, Duration::from_secs(1));
    }

    /// Deregistered when the connection ends; registered during shutdown means told to drain at once.
    #[test]
    fn connections_come_and_go_from_the_watchdog() {
        let watchdog = Arc::new(Watchdog::new(limits(1_000, 3_000)));
        let a = watchdog.watch();
        let b = watchdog.watch();
        assert_eq!(watchdog.lock().clocks.len(), 2);
        drop(a);
        assert_eq!(watchdog.lock().clocks.len(), 1);
        watchdog.lock().draining = true;
        let c = watchdog.watch();
        assert_eq!(c.clock.order.load(Ordering::Relaxed), DRAIN);
        assert_eq!(b.clock.order.load(Ordering::Relaxed), RUN);
    }
}

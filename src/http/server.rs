//! The ingest listener's accept loop: hyper with a header-read timeout and a separate keep-alive idle
//! timeout (axum's `serve` has neither), a cap on open connections, and graceful shutdown that lets
//! in-flight requests finish.
//!
//! hyper's own `header_read_timeout` starts whenever a connection waits for its next request, so it
//! would also be the keep-alive limit. Instead each connection carries a [`ConnClock`]: its socket reads
//! and its requests move it between *waiting for a request head*, *busy* and *idle*, and a watchdog
//! closes it when the phase's limit runs out — abruptly for an unfinished head (a slow or malicious
//! client), gracefully for an idle connection (a request arriving in the race is still answered).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let clock = Arc::new(ConnClock::new());
        let (on_request, on_response) = (clock.clone(), clock.clone());
        let service = app
            .clone()
            .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                on_request.request_started();
                if limits.peer_addresses {
                    req.extensions_mut().insert(ConnectInfo(peer));
                }
                req.map(axum::body::Body::new)
            })
            .map_response(move |res| {
                on_response.request_finished();
                res
            });
        let io = TokioIo::new(ClockedIo { stream, clock: clock.clone() });
        let builder = builder.clone();
        let (metrics, stop) = (metrics.clone(), stop.clone());
        metrics.connection_opened();
        connections.spawn(async move {
            let connection = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                expired = clock.expiry(limits) => match expired {
                    // A head that did not arrive in time: the client is slow or hostile; just close.
                    Expiry::Head => Ok(()),
                    // Idle: close once nothing is in progress (hyper closes an idle connection at once).
                    Expiry::Idle => {
                        connection.as_mut().graceful_shutdown();
                        connection.as_mut().await
                    }
                },
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            metrics.connection_closed();
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Which limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Head,
    Idle,
}

/// A connection's phase and when it began, in one atomic: bits 0-31 requests in progress, bit 32 "bytes of
/// a new request head have arrived", bits 33-63 milliseconds since the connection opened.
struct ConnClock {
    opened: Instant,
    state: AtomicU64,
}

const BUSY_MASK: u64 = 0xffff_ffff;
const HEAD_BIT: u64 = 1 << 32;
const SINCE_SHIFT: u32 = 33;

impl ConnClock {
    /// A new connection waits for its first request head.
    fn new() -> Self {
        Self { opened: Instant::now(), state: AtomicU64::new(HEAD_BIT) }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Bytes arrived: if the connection was idle, a new request head has begun.
    fn bytes_read(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if state & (BUSY_MASK | HEAD_BIT) == 0 {
            let head = HEAD_BIT | (self.now_ms() << SINCE_SHIFT);
            let _ = self.state.compare_exchange(state, head, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        let _ =
            self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(((s & BUSY_MASK) + 1) & BUSY_MASK));
    }

    /// The last request in progress answered: idle from now.
    fn request_finished(&self) {
        let now = self.now_ms();
        let _ = self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
            let busy = (s & BUSY_MASK).saturating_sub(1);
            Some(if busy == 0 { now << SINCE_SHIFT } else { (s & !BUSY_MASK) | busy })
        });
    }

    /// Resolves when the current phase outlives its limit.
    async fn expiry(&self, limits: ConnectionLimits) -> Expiry {
        loop {
            let state = self.state.load(Ordering::Relaxed);
            let since = Duration::from_millis(state >> SINCE_SHIFT);
            let (limit, expiry) = match (state & BUSY_MASK, state & HEAD_BIT != 0) {
                // A request in progress has its own body and request timeouts; look again later.
                (busy, _) if busy > 0 => (Duration::ZERO, None),
                (_, true) => (limits.header_read_timeout, Some(Expiry::Head)),
                (_, false) => (limits.keepalive_timeout, Some(Expiry::Idle)),
            };
            let wake = match expiry {
                Some(expiry) => {
                    let deadline = self.opened + since + limit;
                    if Instant::now() >= deadline {
                        return expiry;
                    }
                    deadline
                }
                None => Instant::now() + limits.header_read_timeout.min(limits.keepalive_timeout),
            };
            tokio::time::sleep_until(wake.into()).await;
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

    #[test]
    fn phases_follow_reads_and_requests() {
        let clock = ConnClock::new();
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
}

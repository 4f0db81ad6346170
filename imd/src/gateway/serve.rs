//! The HTTP server loop: hyper's HTTP/1 server on each accepted connection, serving the
//! router.
//!
//! `axum::serve` would do the same, but it gives hyper no timer, and without one hyper
//! has no header-read deadline: a client that connects and sends nothing, sends half a
//! request head, or leaves a keep-alive connection open and silent, holds its socket
//! (a file descriptor out of the 20,000) for as long as it likes. Here a connection that
//! has not delivered a complete request head within the idle timeout (counted from when
//! the server starts waiting for one, so an idle keep-alive connection too) is closed.
//! The request body has its own deadline where it is read (`http::read_json`).
//!
//! Writes have a deadline too: hyper waits as long as it takes for a response to go
//! out, so a client that pipelines requests and never reads the answers would hold its
//! socket for good once the buffers fill. Each connection's socket is wrapped in
//! [`WriteDeadline`]: a write that makes no progress for the idle timeout fails, and
//! hyper closes the connection. It stays under upgraded WebSocket connections as a
//! backstop to the session's own write timeout.
//!
//! Before HTTP, a connection may have to open in up to two steps, both within the idle
//! timeout in all ([`Front`]): a PROXY header when imd stands behind a TCP load balancer
//! (its client address replaces the peer's, for the blacklist, the per-ip limits and
//! the connection listings alike), then a TLS handshake. Without that deadline a client
//! that opens TCP and sends nothing would hold its slot, as with a request head. Both
//! run on the connection's own task, so a slow one never holds up the accept loop.
//!
//! Accept errors (EMFILE when the open-files limit is reached) are counted and retried
//! after a short pause, rather than axum's one second.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::proxy_protocol;
use crate::business::blacklist::IpNet;

/// Pause after a failed accept: long enough not to spin while the process is out of
/// file descriptors, short enough to take connections again soon after.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How an accepted connection opens before HTTP. The default: plain HTTP, the peer's
/// address as the client's.
#[derive(Clone, Default)]
pub struct Front {
    /// Serve TLS (https, wss) with this.
    pub tls: Option<TlsAcceptor>,
    /// Every connection starts with a PROXY header (v1 or v2), and only peers in these
    /// networks may connect at all (empty: any peer).
    pub proxy: Option<Arc<[IpNet]>>,
}

/// Why a connection was closed before HTTP.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("peer not allowed to send a PROXY header")]
    ProxyPeer,
    #[error(transparent)]
    ProxyHeader(#[from] proxy_protocol::ProxyHeaderError),
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
}

impl OpenError {
    /// The `reason` label of `imd_connections_refused_total`.
    fn reason(&self) -> &'static str {
        match self {
            OpenError::ProxyPeer => "proxy_peer",
            OpenError::ProxyHeader(_) => "proxy_header",
            OpenError::Tls(_) => "tls",
        }
    }
}

impl Front {
    /// Reads the PROXY header when one is due; returns the client's address.
    async fn client(&self, tcp: &mut TcpStream, peer: SocketAddr) -> Result<SocketAddr, OpenError> {
        let Some(allowed) = &self.proxy else {
            return Ok(peer);
        };
        if !allowed.is_empty() && !allowed.iter().any(|net| net.contains(peer.ip())) {
            return Err(OpenError::ProxyPeer);
        }
        Ok(proxy_protocol::read_header(tcp).await?.unwrap_or(peer))
    }
}

/// Serves `router` on `listener` until `stop` is cancelled. Each connection must open
/// (see [`Front`]) within `head_timeout` of being accepted, and send a complete request
/// head within `head_timeout` of the server waiting for one. On `stop`: no more
/// accepts, connections still opening and idle ones close, requests in flight are
/// answered, and this returns once every connection has closed or been upgraded (WebSocket
/// sessions are the application's to end), or after `head_timeout` at most.
pub async fn serve(
    listener: TcpListener,
    front: Front,
    router: Router,
    head_timeout: Duration,
    stop: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let connections = TaskTracker::new();
    loop {
        let (mut tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    metrics::counter!("imd_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Without TCP_NODELAY, a small push waits for the client's delayed ack (Nagle):
        // about 40 ms at p90 on loopback.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (front, http, router, stop) =
            (front.clone(), http.clone(), router.clone(), stop.clone());
        connections.spawn(async move {
            let opening = async {
                let remote = front.client(&mut tcp, peer).await?;
                // Under TLS too, so that the handshake's writes have the deadline.
                let tcp = WriteDeadline::new(tcp, head_timeout);
                let opened = match &front.tls {
                    Some(tls) => {
                        Opened::Tls(Box::new(tls.accept(tcp).await.map_err(OpenError::Tls)?))
                    }
                    None => Opened::Plain(tcp),
                };
                Ok::<_, OpenError>((opened, remote))
            };
            let opened = tokio::select! {
                opened = tokio::time::timeout(head_timeout, opening) => opened,
                _ = stop.cancelled() => return,
            };
            match opened {
                Err(_) => {
                    metrics::counter!("imd_connections_refused_total", "reason" => "open_timeout")
                        .increment(1);
                    tracing::debug!(%peer, "connection did not open in time; closed");
                }
                Ok(Err(e)) => {
                    metrics::counter!("imd_connections_refused_total", "reason" => e.reason())
                        .increment(1);
                    tracing::debug!(%peer, error = %e, "connection refused");
                }
                Ok(Ok((Opened::Plain(io), remote))) => {
                    serve_http(&http, io, remote, router, stop).await
                }
                Ok(Ok((Opened::Tls(io), remote))) => {
                    serve_http(&http, io, remote, router, stop).await
                }
            }
        });
    }
    drop(listener);
    connections.close();
    // Bounded: a client still trickling a request head or body when the server stops
    // would otherwise hold the shutdown for as long as its deadline allows.
    if tokio::time::timeout(head_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "http connections still open at shutdown; closing them"
        );
    }
}

/// A connection ready for HTTP.
enum Opened {
    Plain(WriteDeadline<TcpStream>),
    /// Boxed: rustls's state is a kilobyte or so, the plain socket a few words.
    Tls(Box<tokio_rustls::server::TlsStream<WriteDeadline<TcpStream>>>),
}

/// Serves HTTP/1 (and upgrades) on one opened connection until it ends; on `stop`,
/// idle connections close and requests in flight are answered.
async fn serve_http<IO>(
    http: &hyper::server::conn::http1::Builder,
    io: IO,
    remote: SocketAddr,
    router: Router,
    stop: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The client's address as the handlers see it: the PROXY header's when there is
    // one.
    let service = TowerToHyperService::new(router.map_request(
        move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            req
        },
    ));
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        if e.is_timeout() {
            metrics::counter!("imd_http_head_timeouts_total").increment(1);
        } else if stalled_write(&e) {
            metrics::counter!("imd_http_write_timeouts_total").increment(1);
        }
        tracing::debug!(%remote, error = %e, "http connection ended");
    }
}

/// Whether hyper ended a connection because a write passed its [`WriteDeadline`].
fn stalled_write(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::get_ref)
        .is_some_and(|inner| inner.is::<WriteStalled>())
}

/// The error a [`WriteDeadline`] fails a write with (kind `TimedOut`).
#[derive(Debug, thiserror::Error)]
#[error("the peer read nothing for {0:?}")]
pub struct WriteStalled(Duration);

/// A socket whose writes fail with `TimedOut` once one has made no progress for
/// `limit`. The timer exists only while a write waits, so an idle connection pays 24
/// bytes for it.
pub struct WriteDeadline<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Passes on a write's progress (or error) and disarms the timer; while the write
    /// waits, arms it, and fails once it fires.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    WriteStalled(limit),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A write into a pipe nobody reads fails after the limit; one that makes progress
    /// in time goes on, however long the whole takes.
    #[tokio::test(start_paused = true)]
    async fn a_write_without_progress_fails_after_the_limit() {
        let (near, far) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(near, Duration::from_secs(2));
        // 16 bytes fit; the next write waits for a reader that never comes.
        w.write_all(&[0; 16]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.get_ref().is_some_and(|e| e.is::<WriteStalled>()));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        drop(far);

        // A reader taking 8 bytes a second keeps a 64-byte write alive for 8 s.
        let (near, mut far2) = tokio::io::duplex(8);
        let mut w = WriteDeadline::new(near, Duration::from_secs(2));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0; 8];
            while got < 64 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                got += far2.read(&mut buf).await.unwrap();
            }
            got
        });
        let started = tokio::time::Instant::now();
        w.write_all(&[1; 64]).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(7));
        assert_eq!(reader.await.unwrap(), 64);
    }
}

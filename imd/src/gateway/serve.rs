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
//! Accept errors (EMFILE when the open-files limit is reached) are counted and retried
//! after a short pause, rather than axum's one second.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Pause after a failed accept: long enough not to spin while the process is out of
/// file descriptors, short enough to take connections again soon after.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop` is cancelled. Each connection must send
/// a complete request head within `head_timeout` of the server waiting for one. On
/// `stop`: no more accepts, idle connections close, requests in flight are answered,
/// and this returns once every connection has closed or been upgraded (WebSocket
/// sessions are the application's to end), or after `head_timeout` at most.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    head_timeout: Duration,
    stop: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let connections = TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
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
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                req
            },
        ));
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
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
                }
                tracing::debug!(%remote, error = %e, "http connection ended");
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

//! The WebSocket upgrade: authenticate before upgrading, configure small buffers, then
//! hand the socket to a worker session tracked for shutdown.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use shared::protocol::ErrorCode;
use shared::time::now_ms;
use tracing::Instrument;

use super::auth::{AuthError, bearer};
use super::bans;
use super::{ApiError, AppState};
use crate::worker::session;

/// tungstenite's read buffer, allocated up front for every connection and kept for its
/// life. Its default (128 KiB) would dwarf everything else an idle connection holds;
/// at 512 B a typical chat frame is still one read, and a larger frame is read in
/// several (its full length is reserved once its header is known).
const READ_BUFFER: usize = 512;

/// Unregisters a connection whose upgrade handler was dropped before the upgrade.
struct Unregister(
    Option<(
        std::sync::Arc<crate::worker::Hub>,
        std::sync::Arc<crate::worker::Conn>,
    )>,
);

impl Unregister {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Some((hub, conn)) = self.0.take() {
            hub.unregister(&conn);
        }
    }
}

/// Longest an upgrade waits for its route to be written (cluster mode).
const ROUTE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// 429 `rate_limited` with `Retry-After: 1`: the worker is too busy registering
/// connections with the cluster to take this one now.
fn busy(message: &'static str) -> Response {
    let mut res = ApiError::new(ErrorCode::RateLimited, message).into_response();
    res.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    res
}

pub(super) async fn upgrade(
    State(app): State<AppState>,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let peer_ip = connect_info.as_ref().map(|c| c.0.0.ip());
    if let Err(e) = bans::refuse_banned(&app, peer_ip) {
        return e.into_response();
    }
    // Authentication comes first: a bad token is a 401 whatever else is wrong.
    let who = match bearer(&headers, uri.query()).ok_or(AuthError::Missing) {
        Ok(token) => match app.keys.verify(&token) {
            Ok(who) => who,
            Err(e) => {
                bans::record_failure(&app, peer_ip, &e).await;
                return ApiError::from(e).into_response();
            }
        },
        Err(e) => return ApiError::from(e).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let status = rejection.status();
            let mut res =
                ApiError::new(ErrorCode::BadRequest, rejection.body_text()).into_response();
            *res.status_mut() = status;
            return res;
        }
    };
    let remote = connect_info.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0.0);
    let now = now_ms();
    let blacklist = app.messaging.blacklist();
    if blacklist.uid_blocked(&who.uid, now) || blacklist.ip_blocked(remote.ip(), now) {
        return ApiError::new(ErrorCode::Forbidden, "blacklisted").into_response();
    }
    if !app.limits.allow_connect(remote.ip()) {
        return ApiError::new(ErrorCode::RateLimited, "connecting too fast; retry later")
            .into_response();
    }
    let ctx = app.sessions.clone();
    if ctx.hub.routes_backlogged() {
        metrics::counter!("imd_ws_route_backlog_refusals_total").increment(1);
        return busy(
            "too many connections are being registered with the cluster; retry in a moment",
        );
    }
    let mut who = who;
    who.ip = Some(remote.ip());
    // Registered here, in the order the upgrades were accepted, not in the order their
    // sessions happen to start: of two connections of one device, the later one must
    // be the one that stays. Pushes queue in the outbox until the session runs.
    let (conn, route) = ctx.hub.register_routed(who, remote, now_ms());
    // In a cluster, other nodes push to a device only once its route is written. The
    // client may `sync` as soon as it has the 101, so the route is written first: a
    // message whose push missed the route was in the inbox before that sync. Without
    // a route no other node can reach the device, so the upgrade is refused rather
    // than leave it connected and deaf to them (429 when the writer is behind, 500
    // when the write failed); the client retries.
    if let Some(route) = route {
        // Unregisters on every way out but success, the client leaving included.
        let pending = Unregister(Some((ctx.hub.clone(), conn.clone())));
        match tokio::time::timeout(ROUTE_WAIT, route).await {
            // Entries after this head are pushed here by whoever writes them.
            Ok(Ok(Some(head))) => conn.start_after(head),
            // Not written in time: the writer is behind (a reconnection storm, a slow
            // Redis). That is load to shed, like the backlog above, not a fault.
            Err(_) => {
                // In a storm these come by the thousand: counted, not logged one by one.
                tracing::debug!(uid = %conn.who.uid, "route not written in time; upgrade refused");
                metrics::counter!("imd_ws_route_failures_total", "why" => "timeout").increment(1);
                return busy(
                    "this connection could not be registered with the cluster in time; retry in a moment",
                );
            }
            Ok(_) => {
                tracing::warn!(uid = %conn.who.uid, "route write failed; upgrade refused");
                metrics::counter!("imd_ws_route_failures_total", "why" => "error").increment(1);
                return ApiError::new(
                    ErrorCode::Internal,
                    "this connection could not be registered with the cluster; retry",
                )
                .into_response();
            }
        }
        pending.disarm();
    }
    let (failed, failed_hub) = (conn.clone(), ctx.hub.clone());
    // An agent is available when it connects: set before the session reads a frame, so
    // that a `status` the device sends at once comes after it.
    if let Err(e) = ctx.messaging.available(&conn.who).await {
        tracing::warn!(uid = %conn.who.uid, error = %e, "availability not reset");
    }
    // An agent coming online takes the conversations waiting for one; off the upgrade's
    // path, and its pushes queue in the outbox until the session runs.
    let (messaging, agent) = (ctx.messaging.clone(), conn.who.clone());
    tokio::spawn(async move {
        if let Err(e) = messaging.connected(&agent).await {
            tracing::warn!(uid = %agent.uid, error = %e, "assigning waiting conversations failed");
        }
    });
    let tracker = app.tracker.clone();
    let span = tracing::debug_span!("session", uid = %conn.who.uid, device = %conn.who.device);
    let max = app.max_body;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // One sync page or one push at most, plus a frame's worth of slack.
        .max_write_buffer_size(crate::store::PAGE_BYTES + 4 * max)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(move |e| {
            tracing::debug!(error = %e, "websocket upgrade failed");
            failed_hub.unregister(&failed);
        })
        // The session future is handed over as is, with no async block around it: an
        // async block would keep its own copy of the socket for the session's life.
        .on_upgrade(move |socket| {
            tracker.track_future(session::run(socket, conn, ctx).instrument(span))
        })
}

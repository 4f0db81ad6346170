//! The admin API, `/admin/v1/…`: operators' calls, behind the admin token.
//!
//! A client token is recognised and refused with 403; anything else is 401.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use std::sync::atomic::Ordering;

use axum::response::sse::{Event, KeepAlive, Sse};
use shared::admin::{
    AddBlacklist, BlacklistKind, BlacklistList, ClusterInfo, ConnectionList, GroupMembers, Kicked,
    NodeInfo, Replay, Replayed, ShopAgents, Transfer, Words, WordsStatus,
};
use shared::protocol::ErrorCode;
use tokio::sync::broadcast::error::RecvError;

use super::auth::{AuthError, bearer};
use super::http::{AdminBody, ApiPath, ApiQuery, PageQuery};
use super::{ApiError, AppState};
use crate::rpc::WorkerApi;
use crate::wire;

/// The admin routes, to nest under `/admin/v1`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/blacklist", get(blacklist).post(blacklist_add))
        .route("/blacklist/{kind}/{*value}", delete(blacklist_remove))
        .route("/connections", get(connections))
        .route("/connections/{uid}", delete(kick))
        .route(
            "/shops/{shop}/agents",
            get(shop_agents).put(set_shop_agents),
        )
        .route(
            "/groups/{name}/members",
            get(group_members).put(set_group_members),
        )
        .route("/conversations/{conv}", get(assignment))
        .route("/conversations/{conv}/messages", get(history))
        .route("/conversations/{conv}/transfer", post(transfer))
        .route("/conversations/{conv}/close", post(close))
        .route("/words", get(words).put(set_words))
        .route("/conversations/{conv}/stream", get(stream))
        .route("/replay", post(replay))
        .route("/cluster", get(cluster))
}

/// Compares without leaking, through timing, how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller holds the admin token.
pub(super) struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers, parts.uri.query()).ok_or(AuthError::Missing)?;
        if same(token.as_bytes(), app.admin_token.expose().as_bytes()) {
            return Ok(AdminAuth);
        }
        if app.keys.verify(&token).is_ok() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "a client token cannot call the admin API; use the admin token",
            ));
        }
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "invalid admin token",
        ))
    }
}

fn ok() -> Response {
    axum::Json(serde_json::json!({})).into_response()
}

async fn blacklist(_: AdminAuth, State(app): State<AppState>) -> Result<Response, ApiError> {
    let entries = app.admin.blacklist().await?;
    Ok(axum::Json(BlacklistList { entries }).into_response())
}

async fn blacklist_add(
    _: AdminAuth,
    State(app): State<AppState>,
    AdminBody(req): AdminBody<AddBlacklist>,
) -> Result<Response, ApiError> {
    let entry = app.admin.blacklist_add(req).await?;
    // Here at once; other workers when the store's change notification reaches them.
    let kicked = app.sessions.hub.enforce_blacklist();
    if kicked > 0 {
        tracing::info!(kicked, value = %entry.value, "blacklisted connections kicked");
    }
    Ok(axum::Json(entry).into_response())
}

async fn blacklist_remove(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath((kind, value)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let kind: BlacklistKind = kind
        .parse()
        .map_err(|e: String| ApiError::new(ErrorCode::BadRequest, e))?;
    app.admin.blacklist_remove(kind, &value).await?;
    Ok(ok())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnQuery {
    uid: Option<String>,
    /// Only connections held by this node.
    node: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    #[serde(default, rename = "token")]
    _token: Option<String>,
}

async fn connections(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ConnQuery>,
) -> Result<Response, ApiError> {
    if let Some(uid) = &q.uid
        && !shared::ids::is_valid_id(uid)
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("invalid uid {uid:?}"),
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let (connections, next) = app
        .workers
        .connections(
            q.uid.as_deref(),
            q.node.as_deref(),
            q.after.as_deref(),
            limit,
        )
        .await;
    Ok(axum::Json(ConnectionList { connections, next }).into_response())
}

async fn kick(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(uid): ApiPath<String>,
) -> Result<Response, ApiError> {
    let kicked = app.workers.kick_user(&uid, "admin").await;
    if kicked == 0 {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{uid:?} has no connections"),
        ));
    }
    Ok(axum::Json(Kicked { kicked }).into_response())
}

async fn shop_agents(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(shop): ApiPath<String>,
) -> Result<Response, ApiError> {
    let agents = app.admin.shop_agents(&shop).await?;
    Ok(axum::Json(ShopAgents { agents }).into_response())
}

async fn set_shop_agents(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(shop): ApiPath<String>,
    AdminBody(body): AdminBody<ShopAgents>,
) -> Result<Response, ApiError> {
    app.admin.set_shop_agents(&shop, body.agents).await?;
    Ok(ok())
}

async fn group_members(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let members = app.admin.group_members(&name).await?;
    Ok(axum::Json(GroupMembers { members }).into_response())
}

async fn set_group_members(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    AdminBody(body): AdminBody<GroupMembers>,
) -> Result<Response, ApiError> {
    app.admin.set_group_members(&name, body.members).await?;
    Ok(ok())
}

async fn assignment(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(conv): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.assignment(&conv).await?).into_response())
}

async fn history(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(conv): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = app.messaging.history_any(&conv, q.after, q.limit).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        wire::history_response(&page.items, page.more),
    )
        .into_response())
}

async fn transfer(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(conv): ApiPath<String>,
    AdminBody(body): AdminBody<Transfer>,
) -> Result<Response, ApiError> {
    app.admin.transfer(&conv, &body.agent).await?;
    Ok(ok())
}

async fn close(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(conv): ApiPath<String>,
) -> Result<Response, ApiError> {
    app.admin.close(&conv).await?;
    Ok(ok())
}

fn words_status((count, policy): (usize, crate::config::WordsPolicy)) -> Response {
    let policy = match policy {
        crate::config::WordsPolicy::Mask => "mask",
        crate::config::WordsPolicy::Reject => "reject",
    };
    axum::Json(WordsStatus {
        count,
        policy: policy.into(),
    })
    .into_response()
}

async fn words(_: AdminAuth, State(app): State<AppState>) -> Response {
    words_status(app.admin.words())
}

async fn set_words(
    _: AdminAuth,
    State(app): State<AppState>,
    AdminBody(body): AdminBody<Words>,
) -> Result<Response, ApiError> {
    Ok(words_status(
        app.admin.set_words(body.words, body.policy.as_deref())?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Start at this `seq` (default: only messages committed from now on).
    from_seq: Option<u64>,
    #[serde(default, rename = "token")]
    _token: Option<String>,
}

/// Just the `seq` of a stored message.
#[derive(Deserialize)]
struct SeqOf {
    seq: u64,
}

/// Sends `conv`'s messages after `*last` from the store, advancing `*last`.
/// `Err` when the follower has gone.
async fn catch_up(
    app: &AppState,
    conv: &str,
    last: &mut u64,
    tx: &tokio::sync::mpsc::Sender<Event>,
) -> Result<(), ()> {
    loop {
        let page = match app.messaging.history_any(conv, *last, Some(1000)).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(conv, error = %e, "tail: reading history failed");
                return Err(());
            }
        };
        for json in &page.items {
            let Ok(SeqOf { seq }) = serde_json::from_slice(json) else {
                continue;
            };
            let data = String::from_utf8_lossy(json).into_owned();
            tx.send(Event::default().event("msg").data(data))
                .await
                .map_err(drop)?;
            *last = seq;
        }
        if !page.more {
            return Ok(());
        }
    }
}

/// `GET /admin/v1/conversations/{conv}/stream`: server-sent events, one `msg` event per
/// message (its JSON as data), from `from_seq` (or from now) on, gapless and in `seq`
/// order: live messages come from the commit feed, and any gap (a follower that lagged,
/// a message committed between the catch-up and the subscription) is filled from the
/// store.
/// How often a conversation stream reads the store in cluster mode.
const CLUSTER_TAIL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

async fn stream(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(conv): ApiPath<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    if shared::ids::ConvRef::parse(&conv).is_none() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no such conversation {conv:?}"),
        ));
    }
    // Subscribe before reading where to start, so that nothing falls in between.
    let mut feed = app.messaging.subscribe();
    let mut last = match q.from_seq {
        Some(n) => n.saturating_sub(1),
        None => app.messaging.last_seq(&conv).await?,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(256);
    let stop = app.sessions.shutdown.clone();
    // In a cluster other nodes commit too, and this node's feed only sees what it
    // committed or relayed: the store is read again every CLUSTER_TAIL_POLL.
    let cluster = app.registry.is_some();
    let mut poll = tokio::time::interval(CLUSTER_TAIL_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::spawn(async move {
        if catch_up(&app, &conv, &mut last, &tx).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = poll.tick(), if cluster => {
                    if catch_up(&app, &conv, &mut last, &tx).await.is_err() {
                        break;
                    }
                }
                next = feed.recv() => match next {
                    Ok(c) if c.conv != conv || c.seq <= last => {}
                    Ok(c) if c.seq == last + 1 => {
                        let data = String::from_utf8_lossy(&c.json).into_owned();
                        if tx.send(Event::default().event("msg").data(data)).await.is_err() {
                            break;
                        }
                        last = c.seq;
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if catch_up(&app, &conv, &mut last, &tx).await.is_err() {
                            break;
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = tx.closed() => break,
                _ = stop.cancelled() => break,
            }
        }
    });
    let events = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|e| e.map(Ok::<_, std::convert::Infallible>))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn replay(
    _: AdminAuth,
    State(app): State<AppState>,
    AdminBody(req): AdminBody<Replay>,
) -> Result<Response, ApiError> {
    if !shared::ids::is_valid_id(&req.uid) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("invalid uid {:?}", req.uid),
        ));
    }
    let until = req.until.unwrap_or(u64::MAX);
    if until <= req.after {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "until must be above after",
        ));
    }
    let devices = app.dispatcher.devices(&req.uid).await;
    // Half an outbox per call: a replay must never overflow a device's queue, which
    // would disconnect it as too slow. Longer ranges take several calls.
    let cap = app.sessions.hub.outbox_capacity() / 2;
    let mut entries = if devices == 0 {
        Vec::new()
    } else {
        app.messaging
            .inbox_range(&req.uid, req.after, until, cap + 1)
            .await?
    };
    let next_after = (entries.len() > cap).then(|| {
        entries.truncate(cap);
        entries.last().map_or(req.after, |e| e.0)
    });
    let messages = entries.len();
    app.dispatcher.replay(&req.uid, entries);
    tracing::info!(uid = %req.uid, messages, devices, "replayed");
    let devices = if messages == 0 { 0 } else { devices };
    Ok(axum::Json(Replayed {
        messages,
        devices,
        next_after,
    })
    .into_response())
}

async fn cluster(_: AdminAuth, State(app): State<AppState>) -> Result<Response, ApiError> {
    let mut nodes = vec![node_info(&app)];
    if let Some(registry) = &app.registry {
        nodes.extend(app.workers.stats().await);
        // Live nodes without a worker (no RPC to ask): what the registry says.
        let live = registry
            .live_nodes()
            .await
            .map_err(crate::business::Error::from)?;
        for n in live {
            if nodes.iter().all(|known| known.node_id != n.id) {
                // Only what the registry knows: no version, zero figures.
                nodes.push(NodeInfo {
                    node_id: n.id,
                    roles: n.roles,
                    listen: n.listen,
                    started_at: n.started_ms,
                    ..NodeInfo::default()
                });
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    }
    Ok(axum::Json(ClusterInfo { nodes }).into_response())
}

/// This node's entry of the cluster view.
pub fn node_info(app: &AppState) -> NodeInfo {
    let hub = &app.sessions.hub;
    NodeInfo {
        node_id: app.node_id.clone(),
        roles: app.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        listen: app.listen.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: app.started_at_ms,
        connections: hub.len() as u64,
        // Queued pushes count too: they are not acked either.
        unacked: hub.stats.unacked.load(Ordering::Relaxed) + hub.queued_pushes() as i64,
        committed: app.messaging.committed_total(),
        committed_per_s: app.committed_per_s.load(Ordering::Relaxed),
        pushes: hub.stats.pushes.load(Ordering::Relaxed),
        retransmits: hub.stats.retransmits.load(Ordering::Relaxed),
    }
}

//! The admin API, `/admin/v1/…`: operators' calls, behind the admin token.
//!
//! A client token is recognised and refused with 403; anything else is 401.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shared::admin::{
    AddBlacklist, Assignment, BlacklistEntry, BlacklistKind, BlacklistList, ClusterInfo,
    ConnectionList, Erased, GroupMembers, Kicked, Replay, Replayed, ShopAgents, ShopStats, Shops,
    Transfer, Words, WordsStatus,
};
use shared::protocol::{ErrorCode, HistoryResponse, RecallResponse};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{AuthError, bearer};
use super::bans;
use super::http::{AdminBody, ApiPath, ApiQuery, ConvPath, MessagePath, PageQuery, ShopPath};
use super::openapi::{Conflict, Empty, NotFound};
use super::{ApiError, AppState};
use crate::wire;

/// The admin routes, to nest under `/admin/v1`; each `routes!` holds the handlers of one
/// path (it registers them all on each path it names).
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(blacklist, blacklist_add))
        .routes(routes!(blacklist_remove))
        .routes(routes!(connections))
        .routes(routes!(kick))
        .routes(routes!(erase_user))
        .routes(routes!(shops))
        .routes(routes!(shop_agents, set_shop_agents))
        .routes(routes!(shop_stats))
        .routes(routes!(group_members, set_group_members))
        .routes(routes!(assignment))
        .routes(routes!(history))
        .routes(routes!(recall))
        .routes(routes!(transfer))
        .routes(routes!(close))
        .routes(routes!(words, set_words))
        .routes(routes!(stream))
        .routes(routes!(replay))
        .routes(routes!(cluster))
        .routes(routes!(webhooks))
        .routes(routes!(webhooks_parked))
        .routes(routes!(webhooks_redrive))
}

/// `{kind}/{value}` of a blacklist entry.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct EntryPath {
    /// `uid` or `ip`.
    #[param(value_type = BlacklistKind)]
    kind: String,
    /// The uid, or the address or range (it may hold `/`: `10.1.0.0/16`).
    value: String,
}

/// `{uid}` of a user's connections or messages.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct UidPath {
    /// The user.
    uid: String,
}

/// `{name}` of a group.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct GroupPath {
    /// The group's name.
    name: String,
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
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        bans::refuse_banned(app, ip)?;
        let token = bearer(&parts.headers, parts.uri.query()).ok_or(AuthError::Missing)?;
        // Every accepted token is compared, so that the time taken tells nothing of
        // which one (if any) came close.
        let matched = app.admin_tokens.iter().fold(false, |hit, t| {
            same(token.as_bytes(), t.expose().as_bytes()) | hit
        });
        if matched {
            return Ok(AdminAuth);
        }
        if app.keys.verify(&token).is_ok() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "a client token cannot call the admin API; use the admin token",
            ));
        }
        bans::record_failure(app, ip, &AuthError::Invalid("admin token".into())).await;
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "invalid admin token",
        ))
    }
}

fn ok() -> Response {
    Json(Empty {}).into_response()
}

/// Lists the live blacklist entries.
#[utoipa::path(
    get,
    path = "/blacklist",
    responses((status = 200, description = "Every live entry", body = BlacklistList)),
)]
async fn blacklist(_: AdminAuth, State(app): State<AppState>) -> Result<Response, ApiError> {
    let entries = app.admin.blacklist().await?;
    Ok(axum::Json(BlacklistList { entries }).into_response())
}

/// Adds a blacklist entry; matching connections are kicked.
#[utoipa::path(
    post,
    path = "/blacklist",
    request_body = AddBlacklist,
    responses((status = 200, description = "The entry, its ip value canonical", body = BlacklistEntry)),
)]
async fn blacklist_add(
    _: AdminAuth,
    State(app): State<AppState>,
    AdminBody(req): AdminBody<AddBlacklist>,
) -> Result<Response, ApiError> {
    let entry = app.admin.blacklist_add(req).await?;
    Ok(axum::Json(entry).into_response())
}

/// Removes a blacklist entry.
#[utoipa::path(
    delete,
    path = "/blacklist/{kind}/{*value}",
    params(EntryPath),
    responses(
        (status = 200, description = "Removed", body = Empty),
        (status = 404, response = NotFound),
    ),
)]
async fn blacklist_remove(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(EntryPath { kind, value }): ApiPath<EntryPath>,
) -> Result<Response, ApiError> {
    let kind: BlacklistKind = kind.parse().map_err(|e: shared::admin::UnknownKind| {
        ApiError::new(ErrorCode::BadRequest, e.to_string())
    })?;
    app.admin.blacklist_remove(kind, &value).await?;
    Ok(ok())
}

/// `?uid=` or `?limit=&after=&node=` of the connection list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ConnQuery {
    /// Only this user's connections.
    uid: Option<String>,
    /// Only connections held by this node.
    node: Option<String>,
    /// The cursor of the page (`uid/device`): the `next` of the previous one.
    after: Option<String>,
    /// Page size.
    limit: Option<usize>,
    #[serde(default, rename = "token")]
    #[param(ignore)]
    _token: Option<String>,
}

/// Lists connections: a user's, or a page of all by (uid, device).
#[utoipa::path(
    get,
    path = "/connections",
    params(ConnQuery),
    responses((status = 200, description = "Connections by (uid, device)", body = ConnectionList)),
)]
async fn connections(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ConnQuery>,
) -> Result<Response, ApiError> {
    let list = app
        .admin
        .connections(
            q.uid.as_deref(),
            q.node.as_deref(),
            q.after.as_deref(),
            q.limit,
        )
        .await?;
    Ok(axum::Json(list).into_response())
}

/// Disconnects every device of a user (kick reason `admin`).
#[utoipa::path(
    delete,
    path = "/connections/{uid}",
    params(UidPath),
    responses(
        (status = 200, description = "How many devices were disconnected", body = Kicked),
        (status = 404, response = NotFound),
    ),
)]
async fn kick(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(UidPath { uid }): ApiPath<UidPath>,
) -> Result<Response, ApiError> {
    let kicked = app.admin.kick(&uid).await?;
    Ok(axum::Json(Kicked { kicked }).into_response())
}

/// Erases the body of every message a user sent: each stays, without its body and with
/// `"erased": true`, in its conversation and in every inbox. Safe to call again: a
/// second call erases what the first left (0 when nothing).
#[utoipa::path(
    delete,
    path = "/users/{uid}/messages",
    params(UidPath),
    responses((status = 200, description = "How many messages this call erased", body = Erased)),
)]
async fn erase_user(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(UidPath { uid }): ApiPath<UidPath>,
) -> Result<Response, ApiError> {
    let erased = app.admin.erase_user(&uid).await?;
    Ok(axum::Json(Erased { erased }).into_response())
}

/// A shop's agents and customer-service settings.
#[utoipa::path(
    get,
    path = "/shops/{shop}/agents",
    params(ShopPath),
    responses(
        (status = 200, description = "The shop's agents and settings", body = ShopAgents),
        (status = 404, response = NotFound),
    ),
)]
async fn shop_agents(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(ShopPath { shop }): ApiPath<ShopPath>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.shop(&shop).await?).into_response())
}

/// Every shop, by name.
#[utoipa::path(
    get,
    path = "/shops",
    responses((status = 200, description = "Every shop", body = Shops)),
)]
async fn shops(_: AdminAuth, State(app): State<AppState>) -> Result<Response, ApiError> {
    let shops = app.admin.shops().await?;
    Ok(axum::Json(shared::admin::Shops { shops }).into_response())
}

/// A shop's figures: agents, open and waiting conversations, first responses, ratings.
#[utoipa::path(
    get,
    path = "/shops/{shop}/stats",
    params(ShopPath),
    responses(
        (status = 200, description = "The shop's figures", body = ShopStats),
        (status = 404, response = NotFound),
    ),
)]
async fn shop_stats(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(ShopPath { shop }): ApiPath<ShopPath>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.shop_stats(&shop).await?).into_response())
}

/// Replaces a shop's agents and settings, and drains its queue to agents now eligible.
#[utoipa::path(
    put,
    path = "/shops/{shop}/agents",
    params(ShopPath),
    request_body = ShopAgents,
    responses((status = 200, description = "Set", body = Empty)),
)]
async fn set_shop_agents(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(ShopPath { shop }): ApiPath<ShopPath>,
    AdminBody(body): AdminBody<ShopAgents>,
) -> Result<Response, ApiError> {
    app.admin.set_shop(&shop, body).await?;
    Ok(ok())
}

/// A group's members.
#[utoipa::path(
    get,
    path = "/groups/{name}/members",
    params(GroupPath),
    responses(
        (status = 200, description = "The group's members", body = GroupMembers),
        (status = 404, response = NotFound),
    ),
)]
async fn group_members(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(GroupPath { name }): ApiPath<GroupPath>,
) -> Result<Response, ApiError> {
    let members = app.admin.group_members(&name).await?;
    Ok(axum::Json(GroupMembers { members }).into_response())
}

/// Replaces a group's members (creating the group).
#[utoipa::path(
    put,
    path = "/groups/{name}/members",
    params(GroupPath),
    request_body = GroupMembers,
    responses((status = 200, description = "Set", body = Empty)),
)]
async fn set_group_members(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(GroupPath { name }): ApiPath<GroupPath>,
    AdminBody(body): AdminBody<GroupMembers>,
) -> Result<Response, ApiError> {
    app.admin.set_group_members(&name, body.members).await?;
    Ok(ok())
}

/// A service conversation's assignment.
#[utoipa::path(
    get,
    path = "/conversations/{conv}",
    params(ConvPath),
    responses(
        (status = 200, description = "Its agent and whether it is open", body = Assignment),
        (status = 404, response = NotFound),
    ),
)]
async fn assignment(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.assignment(&conv).await?).into_response())
}

/// Reads any conversation's messages after `seq` `after`.
#[utoipa::path(
    get,
    path = "/conversations/{conv}/messages",
    params(ConvPath, PageQuery),
    responses(
        (status = 200, description = "Messages in `seq` order", body = HistoryResponse),
        (status = 404, response = NotFound),
    ),
)]
async fn history(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = app.messaging.history_any(&conv, q.after, q.limit).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        wire::history_response(&page.items, page.more, page.trimmed),
    )
        .into_response())
}

/// Hands a service conversation over to another agent.
#[utoipa::path(
    post,
    path = "/conversations/{conv}/transfer",
    params(ConvPath),
    request_body = Transfer,
    responses(
        (status = 200, description = "The handover is committed", body = Empty),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ),
)]
async fn transfer(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
    AdminBody(body): AdminBody<Transfer>,
) -> Result<Response, ApiError> {
    app.admin.transfer(&conv, &body.agent).await?;
    Ok(ok())
}

/// Recalls any message.
#[utoipa::path(
    delete,
    path = "/conversations/{conv}/messages/{seq}",
    params(MessagePath),
    responses(
        (status = 200, description = "The message is recalled", body = RecallResponse),
        (status = 404, response = NotFound),
    ),
)]
async fn recall(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(MessagePath { conv, seq }): ApiPath<MessagePath>,
) -> Result<Response, ApiError> {
    app.admin.recall(&conv, seq).await?;
    Ok(Json(RecallResponse { conv, seq }).into_response())
}

/// Closes an open service conversation.
#[utoipa::path(
    post,
    path = "/conversations/{conv}/close",
    params(ConvPath),
    responses(
        (status = 200, description = "The `closed` event is committed", body = Empty),
        (status = 404, response = NotFound),
    ),
)]
async fn close(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
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

/// The sensitive-word filter: how many words, which policy.
#[utoipa::path(
    get,
    path = "/words",
    responses((status = 200, description = "The filter's state", body = WordsStatus)),
)]
async fn words(_: AdminAuth, State(app): State<AppState>) -> Response {
    words_status(app.admin.words())
}

/// Replaces the word list, and the policy when given.
#[utoipa::path(
    put,
    path = "/words",
    request_body = Words,
    responses((status = 200, description = "The filter's state", body = WordsStatus)),
)]
async fn set_words(
    _: AdminAuth,
    State(app): State<AppState>,
    AdminBody(body): AdminBody<Words>,
) -> Result<Response, ApiError> {
    Ok(words_status(
        app.admin.set_words(body.words, body.policy.as_deref())?,
    ))
}

/// `?from_seq=` of the conversation stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Start at this `seq` (default: only messages committed from now on).
    from_seq: Option<u64>,
    #[serde(default, rename = "token")]
    #[param(ignore)]
    _token: Option<String>,
}

/// `GET /admin/v1/conversations/{conv}/stream`: server-sent events, one `msg` event per
/// message (its JSON as data), from `from_seq` (or from now) on, gapless and in `seq`
/// order (see [`crate::business::Admin::tail`]).
#[utoipa::path(
    get,
    path = "/conversations/{conv}/stream",
    params(ConvPath, StreamQuery),
    responses(
        (
            status = 200,
            description = "Server-sent events, one `msg` per message (its JSON as data), live until the client leaves",
            content_type = "text/event-stream",
            body = String,
        ),
        (status = 404, response = NotFound),
    ),
)]
async fn stream(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let mut tail = app.admin.tail(&conv, q.from_seq).await?;
    let events = futures_util::stream::poll_fn(move |cx| {
        tail.poll_recv(cx).map(|json| {
            json.map(|json| {
                let data = String::from_utf8_lossy(&json).into_owned();
                Ok::<_, std::convert::Infallible>(Event::default().event("msg").data(data))
            })
        })
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Re-pushes part of a user's inbox to the devices online now.
#[utoipa::path(
    post,
    path = "/replay",
    request_body = Replay,
    responses((status = 200, description = "What was pushed, and where to continue", body = Replayed)),
)]
async fn replay(
    _: AdminAuth,
    State(app): State<AppState>,
    AdminBody(req): AdminBody<Replay>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.replay(req).await?).into_response())
}

/// Every live node of the cluster.
#[utoipa::path(
    get,
    path = "/cluster",
    responses((status = 200, description = "The nodes", body = ClusterInfo)),
)]
async fn cluster(_: AdminAuth, State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.cluster().await?).into_response())
}

/// The webhook deliverer, or 404 when there is no webhook.
fn webhook(app: &AppState) -> Result<&crate::hooks::webhook::Webhook, ApiError> {
    app.webhook.as_ref().ok_or_else(|| {
        ApiError::new(
            shared::protocol::ErrorCode::NotFound,
            "no webhook is configured (--webhook-url)",
        )
    })
}

fn store_failed(e: crate::store::StoreError) -> ApiError {
    crate::business::Error::Store(e).into()
}

/// The webhook's state: deliveries, failures, backlog, parked events.
#[utoipa::path(
    get,
    path = "/webhooks",
    responses(
        (status = 200, description = "The webhook's state", body = shared::admin::WebhookStatus),
        (status = 404, response = NotFound),
    ),
)]
async fn webhooks(_: AdminAuth, State(app): State<AppState>) -> Result<Response, ApiError> {
    let s = webhook(&app)?.status().await.map_err(store_failed)?;
    Ok(axum::Json(shared::admin::WebhookStatus {
        delivered: s.delivered,
        failed: s.failed,
        parked_total: s.parked_total,
        dropped: s.dropped,
        receiver_up: s.receiver_up,
        pending_conversations: s.pending_conversations,
        parked: s.parked,
        lag_ms: s.lag_ms,
    })
    .into_response())
}

/// A page of parked webhook events.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ParkedQuery {
    /// List the events parked after this parked id (0: from the oldest).
    #[serde(default)]
    after: u64,
    /// Page size: 100 by default, at most 1000.
    limit: Option<usize>,
    #[serde(default, rename = "token")]
    #[param(ignore)]
    _token: Option<String>,
}

/// Lists parked webhook events (dead letters), oldest first.
#[utoipa::path(
    get,
    path = "/webhooks/parked",
    params(ParkedQuery),
    responses(
        (status = 200, description = "Parked events", body = shared::admin::ParkedWebhooks),
        (status = 404, response = NotFound),
    ),
)]
async fn webhooks_parked(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ParkedQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page = webhook(&app)?
        .parked(q.after, limit)
        .await
        .map_err(store_failed)?;
    let next = (page.len() == limit).then(|| page.last().map_or(q.after, |(id, _)| *id));
    let events = page
        .into_iter()
        .map(|(id, p)| shared::admin::ParkedWebhook {
            id,
            event: p.event,
            conv: p.conv,
            seq: p.seq,
            ts: p.ts,
            parked_ms: p.parked_ms,
            reason: p.reason,
        })
        .collect();
    Ok(axum::Json(shared::admin::ParkedWebhooks { events, next }).into_response())
}

/// How many parked events to re-drive.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RedriveQuery {
    /// At most this many, oldest first: 100 by default, at most 1000.
    limit: Option<usize>,
    #[serde(default, rename = "token")]
    #[param(ignore)]
    _token: Option<String>,
}

/// Sends parked webhook events again, oldest first; each accepted one leaves the
/// parked list, and the first failure stops. A re-driven event arrives after later
/// events of its conversation (its `msg.seq` tells where it belongs).
#[utoipa::path(
    post,
    path = "/webhooks/parked/redrive",
    params(RedriveQuery),
    responses(
        (status = 200, description = "What was re-driven", body = shared::admin::Redriven),
        (status = 404, response = NotFound),
    ),
)]
async fn webhooks_redrive(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<RedriveQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let (sent, gone, failed) = webhook(&app)?.redrive(limit).await.map_err(store_failed)?;
    Ok(axum::Json(shared::admin::Redriven { sent, gone, failed }).into_response())
}

//! HTTP API handlers and the extractors that turn bad input into protocol errors.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, Path, Query, RawQuery, Request, State,
};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::protocol::{
    AgentResponse, ConversationResponse, ConversationsResponse, ErrorCode, HistoryResponse,
    PresenceResponse, PushRegistration, RatingRequest, ReadRequest, ReadResponse, RecallResponse,
    SendRequest, SendResponse, ShopView, StatusRequest, SyncResponse, TransferRequest,
};
use utoipa::{IntoParams, ToSchema};

use super::auth::{AuthError, bearer};
use super::bans;
use super::openapi::{Conflict, Empty, Forbidden, NotFound, RateLimited};
use super::{ApiError, AppState};
use crate::business::Identity;
use crate::wire;

/// The caller, authenticated by a client token.
pub(super) struct Client(pub(super) Identity);

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        bans::refuse_banned(app, ip)?;
        let token = bearer(&parts.headers, parts.uri.query()).ok_or(AuthError::Missing)?;
        let mut who = match app.keys.verify(&token) {
            Ok(who) => who,
            Err(e) => {
                bans::record_failure(app, ip, &e).await;
                return Err(e.into());
            }
        };
        who.ip = ip;
        Ok(Client(who))
    }
}

/// Reads a JSON body of at most `limit` bytes within `deadline`: 413 `too_large` above,
/// 400 when malformed or late (a client that trickles its body must not hold its
/// connection forever).
async fn read_json<T: DeserializeOwned>(
    req: Request,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<T, ApiError> {
    let too_large = || ApiError::new(ErrorCode::TooLarge, format!("body over {limit} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(req.into_body(), limit));
    let bytes = read
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("the request body did not arrive within {deadline:?}"),
            )
        })?
        .map_err(|e| {
            let over = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if over {
                too_large()
            } else {
                ApiError::new(ErrorCode::BadRequest, "could not read the request body")
            }
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

/// A client's JSON body, of at most `max-frame-bytes`, like a WebSocket frame.
pub(super) struct JsonBody<T>(pub(super) T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        read_json(req, app.max_body, app.body_timeout)
            .await
            .map(JsonBody)
    }
}

/// Largest admin request body: a word list can be long.
const ADMIN_BODY_LIMIT: usize = 8 << 20;

/// An admin call's JSON body, of at most 8 MiB.
pub(super) struct AdminBody<T>(pub(super) T);

impl<T: DeserializeOwned> FromRequest<AppState> for AdminBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        read_json(req, ADMIN_BODY_LIMIT, app.body_timeout)
            .await
            .map(AdminBody)
    }
}

/// Query parameters; 400 `bad_request` when they do not parse.
pub(super) struct ApiQuery<T>(pub(super) T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, app)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
    }
}

/// A path parameter; 400 `bad_request` when it does not parse.
pub(super) struct ApiPath<T>(pub(super) T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, app)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
    }
}

/// `?after=&limit=` of sync and history reads.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    /// Read after this position (`useq` of the inbox, `seq` of a conversation); 0 reads
    /// from the start.
    #[serde(default)]
    pub(super) after: u64,
    /// Page size: 100 by default, at most 1000 (larger asks are clamped).
    pub(super) limit: Option<u32>,
    /// Allowed so that a token may ride in the query string (described as a security
    /// scheme, not as a parameter).
    #[serde(default, rename = "token")]
    #[param(ignore)]
    _token: Option<String>,
}

/// `{conv}` of a conversation's calls.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ConvPath {
    /// The conversation id (`d:…`, `g:…`, `s:…`, `n:…`).
    pub(super) conv: String,
}

/// `{conv}/messages/{seq}`: one message.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct MessagePath {
    /// The conversation id.
    pub(super) conv: String,
    /// The message's position in the conversation.
    pub(super) seq: u64,
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Posts a message: to a user (`to`), into a conversation (`conv`) or to a shop (`shop`).
///
/// Answers once the message is committed.
#[utoipa::path(
    post,
    path = "/v1/messages",
    request_body = SendRequest,
    responses(
        (status = 200, description = "The committed message", body = SendResponse),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = RateLimited),
    ),
)]
pub(super) async fn send(
    State(app): State<AppState>,
    Client(who): Client,
    JsonBody(req): JsonBody<SendRequest>,
) -> Result<Response, ApiError> {
    let out = app.messaging.send_and_wait(&who, req).await?;
    Ok(json(wire::send_response(&out.json)))
}

/// Reads the caller's inbox after `after`.
#[utoipa::path(
    get,
    path = "/v1/sync",
    params(PageQuery),
    responses((status = 200, description = "Inbox items in `useq` order", body = SyncResponse)),
)]
pub(super) async fn sync(
    State(app): State<AppState>,
    Client(who): Client,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let (page, generation) = app.messaging.sync(&who.uid, q.after, q.limit).await?;
    Ok(json(wire::sync_response(
        &page.items,
        page.more,
        page.trimmed,
        generation.as_str(),
    )))
}

/// Reads a conversation's messages after `seq` `after`; members only.
#[utoipa::path(
    get,
    path = "/v1/conversations/{conv}/messages",
    params(ConvPath, PageQuery),
    responses(
        (status = 200, description = "Messages in `seq` order", body = HistoryResponse),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
)]
pub(super) async fn history(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = app.messaging.history(&who, &conv, q.after, q.limit).await?;
    Ok(json(wire::history_response(
        &page.items,
        page.more,
        page.trimmed,
    )))
}

/// `?limit=&before=` of the conversation list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Page size.
    limit: Option<u32>,
    /// The cursor of the page: the `next` of the previous one.
    before: Option<String>,
    #[serde(default, rename = "token")]
    #[param(ignore)]
    _token: Option<String>,
}

/// Lists the caller's conversations, newest activity first.
#[utoipa::path(
    get,
    path = "/v1/conversations",
    params(ListQuery),
    responses((status = 200, description = "A page of conversations", body = ConversationsResponse)),
)]
pub(super) async fn conversations(
    State(app): State<AppState>,
    Client(who): Client,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ConversationsResponse>, ApiError> {
    let list = app
        .messaging
        .conversations(&who, q.before.as_deref(), q.limit)
        .await?;
    Ok(Json(list))
}

/// One conversation: its members, read positions and, for a service one, its state.
#[utoipa::path(
    get,
    path = "/v1/conversations/{conv}",
    params(ConvPath),
    responses(
        (status = 200, description = "The conversation", body = ConversationResponse),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
)]
pub(super) async fn conversation(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
) -> Result<Json<ConversationResponse>, ApiError> {
    Ok(Json(app.messaging.conversation(&who, &conv).await?))
}

/// Moves the caller's read position forward to `seq`.
#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/read",
    params(ConvPath),
    request_body = ReadRequest,
    responses(
        (status = 200, description = "The caller's read position now", body = ReadResponse),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = RateLimited),
    ),
)]
pub(super) async fn read(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
    JsonBody(req): JsonBody<ReadRequest>,
) -> Result<Json<ReadResponse>, ApiError> {
    let read_seq = app.messaging.read_and_wait(&who, &conv, req.seq).await?;
    Ok(Json(ReadResponse { read_seq }))
}

/// Takes back the caller's own message, within the recall window.
#[utoipa::path(
    delete,
    path = "/v1/conversations/{conv}/messages/{seq}",
    params(MessagePath),
    responses(
        (status = 200, description = "The message is recalled", body = RecallResponse),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = RateLimited),
    ),
)]
pub(super) async fn recall(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(MessagePath { conv, seq }): ApiPath<MessagePath>,
) -> Result<Json<RecallResponse>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.messaging
        .recall(&who, &conv, seq, Box::new(move |r| drop(tx.send(r))))
        .await?;
    rx.await
        .map_err(|_| crate::business::Error::ShuttingDown)??;
    Ok(Json(RecallResponse { conv, seq }))
}

/// Sets an agent's availability, echoed back; agents only.
#[utoipa::path(
    put,
    path = "/v1/agent/status",
    request_body = StatusRequest,
    responses(
        (status = 200, description = "The availability set", body = StatusRequest),
        (status = 403, response = Forbidden),
    ),
)]
pub(super) async fn set_status(
    State(app): State<AppState>,
    Client(who): Client,
    JsonBody(req): JsonBody<StatusRequest>,
) -> Result<Json<StatusRequest>, ApiError> {
    app.messaging.set_status(&who, req.status).await?;
    Ok(Json(req))
}

/// The caller as an agent: its availability and its shops.
#[utoipa::path(
    get,
    path = "/v1/agent",
    responses((status = 200, description = "The caller's availability and shops", body = AgentResponse)),
)]
pub(super) async fn agent(
    State(app): State<AppState>,
    Client(who): Client,
) -> Result<Json<AgentResponse>, ApiError> {
    Ok(Json(app.messaging.agent(&who).await?))
}

/// `{shop}` of a shop's calls.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ShopPath {
    /// The shop id.
    pub(super) shop: String,
}

/// A shop's queue and agents, for its agents.
#[utoipa::path(
    get,
    path = "/v1/shops/{shop}",
    params(ShopPath),
    responses(
        (status = 200, description = "The waiting conversations and the agents", body = ShopView),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
)]
pub(super) async fn shop_view(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(ShopPath { shop }): ApiPath<ShopPath>,
) -> Result<Json<ShopView>, ApiError> {
    Ok(Json(app.messaging.shop_view(&who, &shop).await?))
}

/// Hands a service conversation to a colleague, by its assigned agent.
#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/transfer",
    params(ConvPath),
    request_body = TransferRequest,
    responses(
        (status = 200, description = "The handover is committed", body = Empty),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ),
)]
pub(super) async fn transfer(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
    JsonBody(req): JsonBody<TransferRequest>,
) -> Result<Json<Empty>, ApiError> {
    app.messaging.transfer(&who, &conv, &req.agent).await?;
    Ok(Json(Empty {}))
}

/// Closes a service conversation, by its assigned agent.
#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/close",
    params(ConvPath),
    responses(
        (status = 200, description = "The `closed` event is committed", body = Empty),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
)]
pub(super) async fn close(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
) -> Result<Json<Empty>, ApiError> {
    app.messaging.close(&who, &conv).await?;
    Ok(Json(Empty {}))
}

/// Rates a closed service conversation, by its customer, once.
#[utoipa::path(
    post,
    path = "/v1/conversations/{conv}/rating",
    params(ConvPath),
    request_body = RatingRequest,
    responses(
        (status = 200, description = "The `rated` event is committed", body = Empty),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ),
)]
pub(super) async fn rate(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(ConvPath { conv }): ApiPath<ConvPath>,
    JsonBody(req): JsonBody<RatingRequest>,
) -> Result<Json<Empty>, ApiError> {
    app.messaging.rate(&who, &conv, req).await?;
    Ok(Json(Empty {}))
}

/// Whether users who share a conversation with the caller are online.
///
/// The query is read by hand, as serde's urlencoded decoder does not collect a repeated
/// key; so its parameter is declared here.
#[utoipa::path(
    get,
    path = "/v1/presence",
    params((
        "uid" = Vec<String>,
        Query,
        description = "A user to ask about; repeat it (`uid=A&uid=B`), at most 100",
        explode,
    )),
    responses((status = 200, description = "The asked users that share a conversation with the caller", body = PresenceResponse)),
)]
pub(super) async fn presence(
    State(app): State<AppState>,
    Client(who): Client,
    RawQuery(query): RawQuery,
) -> Result<Json<PresenceResponse>, ApiError> {
    let mut uids = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "uid" => uids.push(v.into_owned()),
            "token" => {}
            other => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("unknown query parameter {other:?}; ask with uid=A&uid=B"),
                ));
            }
        }
    }
    Ok(Json(app.messaging.presence(&who, uids).await?))
}

/// `{device}` of a device's calls.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct DevicePath {
    /// The device id: the caller's own (its token's `dev`).
    pub(super) device: String,
}

/// Registers the calling device's push token, for offline pushes (replacing its
/// earlier one). A user keeps at most 16; past that the oldest registration goes.
#[utoipa::path(
    put,
    path = "/v1/devices/{device}/push",
    params(DevicePath),
    request_body = PushRegistration,
    responses(
        (status = 200, description = "The token is registered", body = Empty),
        (status = 403, response = Forbidden),
    ),
)]
pub(super) async fn push_register(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(DevicePath { device }): ApiPath<DevicePath>,
    JsonBody(req): JsonBody<PushRegistration>,
) -> Result<Json<Empty>, ApiError> {
    app.push
        .register(&who, &device, &req.provider, &req.token)
        .await?;
    Ok(Json(Empty {}))
}

/// Removes the calling device's push token (at logout); removing none is no error.
#[utoipa::path(
    delete,
    path = "/v1/devices/{device}/push",
    params(DevicePath),
    responses(
        (status = 200, description = "The device has no push token now", body = Empty),
        (status = 403, response = Forbidden),
    ),
)]
pub(super) async fn push_unregister(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(DevicePath { device }): ApiPath<DevicePath>,
) -> Result<Json<Empty>, ApiError> {
    app.push.unregister(&who, &device).await?;
    Ok(Json(Empty {}))
}

/// `GET /healthz` answer.
#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    status: &'static str,
    /// This node's id.
    node: String,
    /// Open WebSocket connections on this node.
    connections: usize,
}

/// Liveness: answers while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    responses((status = 200, description = "The node is up", body = Health)),
)]
pub(super) async fn healthz(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        node: app.admin.node().id.clone(),
        connections: app.sessions.hub.len(),
    })
}

/// Prometheus metrics of this node (and, on a gateway, the shop gauges).
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)),
)]
pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    // The shop gauges are read at scrape time, on the nodes that serve the admin API
    // (one set per cluster view, not one per worker), within a bound so that a slow
    // store does not hold the scrape.
    if app.roles.contains(&crate::config::Role::Gateway) {
        match tokio::time::timeout(SHOP_GAUGES_WITHIN, app.admin.export_shop_metrics()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "shop gauges not refreshed"),
            Err(_) => tracing::warn!("shop gauges not refreshed in {SHOP_GAUGES_WITHIN:?}"),
        }
    }
    let text = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// How long a scrape waits for the shop gauges before it answers with the last ones.
const SHOP_GAUGES_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

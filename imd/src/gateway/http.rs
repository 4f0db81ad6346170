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
use serde::de::DeserializeOwned;
use shared::protocol::{
    ConversationResponse, ConversationsResponse, ErrorCode, PresenceResponse, RatingRequest,
    ReadRequest, ReadResponse, RecallResponse, SendRequest, StatusRequest,
};

use super::auth::{AuthError, bearer};
use super::{ApiError, AppState};
use crate::business::Identity;
use crate::wire;

/// The caller, authenticated by a client token.
pub(super) struct Client(pub(super) Identity);

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers, parts.uri.query()).ok_or(AuthError::Missing)?;
        let mut who = app.keys.verify(&token)?;
        who.ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    #[serde(default)]
    pub(super) after: u64,
    pub(super) limit: Option<u32>,
    /// Allowed so that a token may ride in the query string.
    #[serde(default, rename = "token")]
    _token: Option<String>,
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) async fn send(
    State(app): State<AppState>,
    Client(who): Client,
    JsonBody(req): JsonBody<SendRequest>,
) -> Result<Response, ApiError> {
    let out = app.messaging.send_and_wait(&who, req).await?;
    Ok(json(wire::send_response(&out.json)))
}

pub(super) async fn sync(
    State(app): State<AppState>,
    Client(who): Client,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = app.messaging.sync(&who.uid, q.after, q.limit).await?;
    Ok(json(wire::sync_response(&page.items, page.more)))
}

pub(super) async fn history(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(conv): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = app.messaging.history(&who, &conv, q.after, q.limit).await?;
    Ok(json(wire::history_response(&page.items, page.more)))
}

/// `?limit=&before=` of the conversation list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<u32>,
    before: Option<String>,
    #[serde(default, rename = "token")]
    _token: Option<String>,
}

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

pub(super) async fn conversation(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(conv): ApiPath<String>,
) -> Result<Json<ConversationResponse>, ApiError> {
    Ok(Json(app.messaging.conversation(&who, &conv).await?))
}

pub(super) async fn read(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(conv): ApiPath<String>,
    JsonBody(req): JsonBody<ReadRequest>,
) -> Result<Json<ReadResponse>, ApiError> {
    let read_seq = app.messaging.read_and_wait(&who, &conv, req.seq).await?;
    Ok(Json(ReadResponse { read_seq }))
}

pub(super) async fn recall(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath((conv, seq)): ApiPath<(String, u64)>,
) -> Result<Json<RecallResponse>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.messaging
        .recall(&who, &conv, seq, Box::new(move |r| drop(tx.send(r))))
        .await?;
    rx.await
        .map_err(|_| crate::business::Error::ShuttingDown)??;
    Ok(Json(RecallResponse { conv, seq }))
}

/// `PUT /v1/agent/status`: an agent's availability, echoed back.
pub(super) async fn set_status(
    State(app): State<AppState>,
    Client(who): Client,
    JsonBody(req): JsonBody<StatusRequest>,
) -> Result<Json<StatusRequest>, ApiError> {
    app.messaging.set_status(&who, req.status).await?;
    Ok(Json(req))
}

/// `POST /v1/conversations/{conv}/close`, by its assigned agent.
pub(super) async fn close(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(conv): ApiPath<String>,
) -> Result<Response, ApiError> {
    app.messaging.close(&who, &conv).await?;
    Ok(Json(serde_json::json!({})).into_response())
}

/// `POST /v1/conversations/{conv}/rating`, by its customer, once it is closed.
pub(super) async fn rate(
    State(app): State<AppState>,
    Client(who): Client,
    ApiPath(conv): ApiPath<String>,
    JsonBody(req): JsonBody<RatingRequest>,
) -> Result<Response, ApiError> {
    app.messaging.rate(&who, &conv, req).await?;
    Ok(Json(serde_json::json!({})).into_response())
}

/// `GET /v1/presence?uid=A&uid=B…`: the query is read by hand, as serde's
/// urlencoded decoder does not collect a repeated key.
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

pub(super) async fn healthz(State(app): State<AppState>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "node": app.admin.node().id,
        "connections": app.sessions.hub.len(),
    });
    axum::Json(body).into_response()
}

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

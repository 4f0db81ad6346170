//! The admin API, `/admin/v1/…`: operators' calls, behind the admin token.
//!
//! A client token is recognised and refused with 403; anything else is 401.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use shared::admin::{
    AddBlacklist, BlacklistKind, BlacklistList, GroupMembers, Kicked, Replay, ShopAgents, Transfer,
    Words, WordsStatus,
};
use shared::protocol::ErrorCode;

use super::auth::{AuthError, bearer};
use super::http::{AdminBody, ApiPath, ApiQuery, PageQuery};
use super::{ApiError, AppState};
use crate::wire;

/// The admin routes, to nest under `/admin/v1`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/blacklist", get(blacklist).post(blacklist_add))
        .route("/blacklist/{kind}/{*value}", delete(blacklist_remove))
        .route("/connections", get(connections))
        .route("/connections/{uid}", delete(kick))
        .route("/shops", get(shops))
        .route(
            "/shops/{shop}/agents",
            get(shop_agents).put(set_shop_agents),
        )
        .route("/shops/{shop}/stats", get(shop_stats))
        .route(
            "/groups/{name}/members",
            get(group_members).put(set_group_members),
        )
        .route("/conversations/{conv}", get(assignment))
        .route("/conversations/{conv}/messages", get(history))
        .route("/conversations/{conv}/messages/{seq}", delete(recall))
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
    Ok(axum::Json(entry).into_response())
}

async fn blacklist_remove(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath((kind, value)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let kind: BlacklistKind = kind.parse().map_err(|e: shared::admin::UnknownKind| {
        ApiError::new(ErrorCode::BadRequest, e.to_string())
    })?;
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

async fn kick(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(uid): ApiPath<String>,
) -> Result<Response, ApiError> {
    let kicked = app.admin.kick(&uid).await?;
    Ok(axum::Json(Kicked { kicked }).into_response())
}

async fn shop_agents(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(shop): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.shop(&shop).await?).into_response())
}

async fn shops(_: AdminAuth, State(app): State<AppState>) -> Result<Response, ApiError> {
    let shops = app.admin.shops().await?;
    Ok(axum::Json(shared::admin::Shops { shops }).into_response())
}

async fn shop_stats(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(shop): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.shop_stats(&shop).await?).into_response())
}

async fn set_shop_agents(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(shop): ApiPath<String>,
    AdminBody(body): AdminBody<ShopAgents>,
) -> Result<Response, ApiError> {
    app.admin.set_shop(&shop, body).await?;
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

async fn recall(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath((conv, seq)): ApiPath<(String, u64)>,
) -> Result<Response, ApiError> {
    app.admin.recall(&conv, seq).await?;
    Ok(axum::Json(shared::protocol::RecallResponse { conv, seq }).into_response())
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

/// `GET /admin/v1/conversations/{conv}/stream`: server-sent events, one `msg` event per
/// message (its JSON as data), from `from_seq` (or from now) on, gapless and in `seq`
/// order (see [`crate::business::Admin::tail`]).
async fn stream(
    _: AdminAuth,
    State(app): State<AppState>,
    ApiPath(conv): ApiPath<String>,
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

async fn replay(
    _: AdminAuth,
    State(app): State<AppState>,
    AdminBody(req): AdminBody<Replay>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.replay(req).await?).into_response())
}

async fn cluster(_: AdminAuth, State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(app.admin.cluster().await?).into_response())
}

//! What imd serves to browsers: the JavaScript SDK at a stable path, the customer chat
//! widget (`/chat/`) and the agent console (`/console/`) unless `--web false`, and,
//! only with `--dev-tokens`, an endpoint that mints demo tokens. The files live in
//! `imd/web/` and are compiled into the binary, so a running imd always serves the SDK
//! and pages of its own protocol version.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shared::ids::is_valid_id;
use shared::protocol::ErrorCode;
use shared::token::{Claims, Platform};
use utoipa::ToSchema;

use super::http::JsonBody;
use super::{ApiError, AppState};

/// The SDK, `imd/web/imd-client.js`.
const SDK: &str = include_str!("../../web/imd-client.js");
/// The customer chat widget, `imd/web/chat.html`.
const CHAT: &str = include_str!("../../web/chat.html");
/// The agent console, `imd/web/console.html`.
const CONSOLE: &str = include_str!("../../web/console.html");
/// How long a demo token lasts.
const DEV_TOKEN_TTL_S: u64 = 3600;

/// The JavaScript SDK of this imd's protocol version.
#[utoipa::path(
    get,
    path = "/sdk/imd-client.js",
    responses((status = 200, description = "`imd-client.js`, revalidated on each load", content_type = "text/javascript", body = String)),
)]
pub(super) async fn sdk() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Revalidated on every load: a new imd may serve a new SDK at the same path.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SDK,
    )
        .into_response()
}

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

/// `GET /chat/`: the customer chat widget.
pub(super) async fn chat() -> Response {
    page(CHAT)
}

/// `GET /console/`: the agent console.
pub(super) async fn console() -> Response {
    page(CONSOLE)
}

/// `POST /dev/v1/token` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DevTokenRequest {
    /// The uid to mint a token for.
    uid: String,
    /// `agent` for an agent's token.
    #[serde(default)]
    role: Option<String>,
    /// The device id (default `browser`).
    #[serde(default)]
    device: Option<String>,
}

/// `POST /dev/v1/token` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DevTokenResponse {
    /// A client token, valid for an hour.
    token: String,
}

/// Mints a client token for any uid, to whoever asks: only with `--dev-tokens`, for
/// trying the pages on one machine. What `imd token` prints.
#[utoipa::path(
    post,
    path = "/dev/v1/token",
    request_body = DevTokenRequest,
    responses((status = 200, description = "A token for an hour", body = DevTokenResponse)),
)]
pub(super) async fn dev_token(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<DevTokenRequest>,
) -> Result<Response, ApiError> {
    let device = req.device.unwrap_or_else(|| "browser".to_owned());
    for (what, v) in [("uid", &req.uid), ("device", &device)] {
        if !is_valid_id(v) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("invalid {what} {v:?}: 1-64 characters of [A-Za-z0-9_.:@-]"),
            ));
        }
    }
    let roles = match req.role.as_deref() {
        None => vec![],
        Some("agent") => vec!["agent".to_owned()],
        Some(r) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("unknown role {r:?} (agent)"),
            ));
        }
    };
    let claims = Claims {
        sub: req.uid,
        dev: device,
        plat: Platform::Web,
        exp: shared::time::now_ms() as u64 / 1000 + DEV_TOKEN_TTL_S,
        roles,
    };
    let token = app
        .keys
        .mint(&claims)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(DevTokenResponse { token }).into_response())
}

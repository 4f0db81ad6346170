//! Presentation layer: the axum router, the HTTP API and the WebSocket upgrade.
//!
//! It authenticates, enforces size limits, decodes, and turns business results into
//! HTTP answers. It holds no messaging rules (those are in `business`) and no session
//! logic (that is the worker's, which the upgrade hands the socket to).

mod admin;
pub mod auth;
pub mod error;
mod http;
pub mod serve;
mod web;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;

use crate::business::limits::Limits;
use crate::business::{Admin, Messaging};
use crate::config::{Role, Secret};
use crate::worker::session::SessionCtx;
use auth::TokenKeys;

pub use error::ApiError;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The inside of [`AppState`].
pub struct Shared {
    /// Verifies client tokens.
    pub keys: TokenKeys,
    /// The admin API's bearer token.
    pub admin_token: Secret,
    /// Admin operations.
    pub admin: Admin,
    /// Rate limits (connections per ip are checked at the upgrade).
    pub limits: Arc<Limits>,
    /// The business layer.
    pub messaging: Messaging,
    /// What WebSocket sessions share.
    pub sessions: Arc<SessionCtx>,
    /// Largest HTTP body and WebSocket frame.
    pub max_body: usize,
    /// How long a request body may take to arrive (the idle timeout).
    pub body_timeout: std::time::Duration,
    /// Renders `/metrics`; `None` when another recorder was installed first (tests).
    pub metrics: Option<PrometheusHandle>,
    /// Tracks WebSocket sessions so that shutdown can wait for them.
    pub tracker: TaskTracker,
    /// This node's roles: which routes it serves.
    pub roles: Vec<crate::config::Role>,
}

impl AppState {
    /// Wraps the shared state.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The routes of this node's roles: every node serves `/healthz` and `/metrics`; a
/// gateway the HTTP API, the admin API and the SDK (`/sdk/imd-client.js`); a worker
/// `/v1/ws`.
pub fn router(state: AppState) -> Router {
    let roles = &state.roles;
    let mut router = Router::new()
        .route("/healthz", get(http::healthz))
        .route("/metrics", get(http::metrics));
    if roles.contains(&Role::Gateway) {
        router = router
            .route("/v1/messages", post(http::send))
            .route("/v1/sync", get(http::sync))
            .route("/v1/conversations", get(http::conversations))
            .route("/v1/conversations/{conv}", get(http::conversation))
            .route("/v1/conversations/{conv}/messages", get(http::history))
            .route(
                "/v1/conversations/{conv}/messages/{seq}",
                delete(http::recall),
            )
            .route("/v1/conversations/{conv}/read", post(http::read))
            .route("/v1/conversations/{conv}/close", post(http::close))
            .route("/v1/conversations/{conv}/rating", post(http::rate))
            .route("/v1/agent/status", put(http::set_status))
            .route("/v1/presence", get(http::presence))
            .route("/sdk/imd-client.js", get(web::sdk))
            .nest("/admin/v1", admin::routes());
    }
    if roles.contains(&Role::Worker) {
        router = router.route("/v1/ws", get(ws::upgrade));
    }
    router.fallback(http::not_found).with_state(state)
}

#[cfg(test)]
mod tests;

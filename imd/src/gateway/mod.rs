//! Presentation layer: the axum router, the HTTP API and its OpenAPI description, and
//! the WebSocket upgrade.
//!
//! It authenticates, enforces size limits, decodes, and turns business results into
//! HTTP answers. It holds no messaging rules (those are in `business`) and no session
//! logic (that is the worker's, which the upgrade hands the socket to).

mod admin;
pub mod auth;
pub mod bans;
pub mod error;
mod http;
mod openapi;
pub mod proxy_protocol;
pub mod serve;
pub mod tls;
mod web;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::business::limits::Limits;
use crate::business::push::Push;
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
    /// The admin API's bearer tokens: the current one, then earlier ones still accepted.
    pub admin_tokens: Vec<Secret>,
    /// Failed authentications per ip, and the rule that bans an ip for them.
    pub auth_bans: bans::AuthBans,
    /// Admin operations.
    pub admin: Admin,
    /// Rate limits (connections per ip are checked at the upgrade).
    pub limits: Arc<Limits>,
    /// The business layer.
    pub messaging: Messaging,
    /// Devices' push tokens.
    pub push: Push,
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
    /// Whether gateway nodes serve the chat widget and the agent console.
    pub web: bool,
    /// Whether gateway nodes serve `POST /dev/v1/token` (demo tokens for anyone).
    pub dev_tokens: bool,
    /// The webhook deliverer, when there is a webhook (for the admin API).
    pub webhook: Option<crate::hooks::webhook::Webhook>,
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
/// gateway the HTTP API, the admin API, the SDK (`/sdk/imd-client.js`) and the OpenAPI
/// description of them all (`/openapi.json`); a worker `/v1/ws`.
///
/// Every HTTP route is registered through `routes!`, which puts its handler's
/// `#[utoipa::path]` into the description as it adds the route: what `/openapi.json`
/// describes is what this router serves (see [`openapi`]).
pub fn router(state: AppState) -> Router {
    let roles = &state.roles;
    let doc = openapi::Document::default();
    let mut api = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(http::healthz))
        .routes(routes!(http::metrics));
    if roles.contains(&Role::Gateway) {
        api = api
            .routes(routes!(http::send))
            .routes(routes!(http::sync))
            .routes(routes!(http::conversations))
            .routes(routes!(http::conversation))
            .routes(routes!(http::history))
            .routes(routes!(http::recall))
            .routes(routes!(http::read))
            .routes(routes!(http::close))
            .routes(routes!(http::rate))
            .routes(routes!(http::set_status))
            .routes(routes!(http::agent))
            .routes(routes!(http::shop_view))
            .routes(routes!(http::transfer))
            .routes(routes!(http::presence))
            .routes(routes!(http::push_register, http::push_unregister))
            .routes(routes!(web::sdk))
            .nest("/admin/v1", admin::routes())
            .merge(openapi::routes(doc.clone()));
        if state.dev_tokens {
            api = api.routes(routes!(web::dev_token));
        }
    }
    let (mut router, description) = api.split_for_parts();
    doc.set(description);
    if roles.contains(&Role::Gateway) && state.web {
        // Pages, not API operations: left out of the description.
        router = router
            .route("/chat/", get(web::chat))
            .route("/console/", get(web::console));
    }
    if roles.contains(&Role::Worker) {
        // Not in the description: a WebSocket upgrade is no HTTP operation.
        router = router.route("/v1/ws", get(ws::upgrade));
    }
    router.fallback(http::not_found).with_state(state)
}

#[cfg(test)]
mod tests;

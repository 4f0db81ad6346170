//! `imd`, the instant-messaging daemon.
//!
//! One process runs four layers; each module owns one and depends only downwards
//! (gateway → business → store; dispatch and worker use business and rpc):
//!
//! - [`gateway`]: presentation. axum HTTP API and the WebSocket upgrade, auth, limits.
//! - [`hooks`]: calls out to business systems: webhooks, the pre-send hook, offline
//!   pushes.
//! - [`business`]: messaging rules, validation, group commit; transport-free.
//! - [`dispatch`]: the dispatcher role: committed messages → pushes for workers.
//! - [`worker`]: the worker role: connection hub, sessions, acks, retransmits.
//! - [`rpc`]: the service traits between roles (direct calls in one process, tarpc
//!   between nodes).
//! - [`cluster`]: membership through Redis: heartbeats, discovery, failover cleanup,
//!   connection routes, blacklist notifications.
//! - [`store`]: the data layer: traits, the embedded redb backend, the Redis backend.
//! - [`wire`]: frames spliced from pre-serialized message JSON.
//! - [`app`]: the composition root and the shutdown sequence.
//! - [`config`], [`secrets`], [`metrics`]: configuration, generated secrets, Prometheus.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into here.

pub mod app;
pub mod business;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod gateway;
pub mod hooks;
pub mod metrics;
pub mod rpc;
pub mod secrets;
pub mod store;
pub mod wire;
pub mod worker;

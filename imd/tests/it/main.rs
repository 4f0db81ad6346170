//! imd's real-process tests, one test binary (so the crate is linked once, not once per
//! file): each module names the guarantee or the surface it proves, against the built
//! `imd` on port 0 and, for cluster mode and the Redis store, real `redis-server`
//! processes. The harness is [`common`] on top of the workspace's testkit.
//!
//! Run one module with `cargo test -p imd --test it cluster::`.

mod common;

mod admin_api;
mod admin_blacklist;
mod auth;
mod auth_bans;
mod bad_input;
mod before_send;
mod cluster;
mod config;
mod conversations;
mod delivery;
mod directory_contract;
mod durability;
mod groups_words_limits;
mod http_api;
mod lifecycle;
mod openapi;
mod proxy_protocol;
mod push;
mod redis_registry;
mod redis_restart;
mod retention;
mod secret_rotation;
mod service;
mod service_workflow;
mod slow_consumers;
mod state_lost;
mod store_contract;
mod tls;
mod web;
mod webhooks;

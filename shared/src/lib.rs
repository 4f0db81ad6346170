//! Wire types shared by `imd`, `imctl` and `imbench`, and the one handshake that
//! authenticates their private TCP links.
//!
//! Everything but [`link_auth`] and [`time`] is serde-only: no I/O, no async, no server
//! logic. The types are the client contract of `docs/protocol.md`, so a change here is a
//! protocol change. [`link_auth`] is one exception: a handshake over any tokio byte
//! stream, which both imd (node-to-node RPC) and imbench (coordinator to agent) run, so
//! that there is one implementation of it; it still opens no sockets itself. [`time`]
//! is the other: it reads the wall clock, so that every crate writes Unix milliseconds
//! the same way.
//!
//! Code map:
//! - [`admin`]: bodies of the admin API.
//! - [`ids`]: uid and conversation-id rules (`d:`, `g:`, `s:` conversations).
//! - [`link_auth`]: mutual HMAC challenge-response over a shared secret, for imd's RPC
//!   links and imbench's agent links.
//! - [`protocol`]: WebSocket frames, the message shape, HTTP bodies, error codes.
//! - [`secret`]: a secret string whose `Debug` prints `***` (imd's config, imbench's
//!   flags).
//! - [`time`]: Unix milliseconds now, the one copy of that helper.
//! - [`token`]: JWT claims of a client token.

pub mod admin;
pub mod ids;
pub mod link_auth;
pub mod protocol;
pub mod secret;
pub mod time;
pub mod token;

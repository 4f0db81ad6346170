//! Wire types shared by `imd`, `imctl` and `imbench`.
//!
//! Everything here is serde-only: no I/O, no async, no server logic. The types are
//! the client contract of `docs/protocol.md`, so a change here is a protocol change.
//!
//! Code map:
//! - [`admin`]: bodies of the admin API.
//! - [`ids`]: uid and conversation-id rules (`d:`, `g:`, `s:` conversations).
//! - [`protocol`]: WebSocket frames, the message shape, HTTP bodies, error codes.
//! - [`token`]: JWT claims of a client token.

pub mod admin;
pub mod ids;
pub mod protocol;
pub mod token;

//! Business layer: the rules of messaging, free of any transport.
//!
//! It validates requests, resolves who a message goes to, commits through the store
//! (group commit, in [`messaging`]) and hands committed messages to a [`Deliver`]
//! sink in commit order. It never imports axum, tarpc or redis, so the same rules run
//! behind HTTP, WebSocket and any store backend.
//!
//! What it needs from the other roles it asks through traits that they implement:
//! [`Deliver`] (the dispatcher takes committed messages), [`Presence`] (who is
//! online), [`Devices`] (where devices are connected, for the admin operations); and
//! from business systems, through traits that `hooks` implements over HTTP:
//! [`BeforeSend`] (the pre-send hook's say over a message) and [`PushRelay`] (offline
//! pushes, handed to a relay to APNs/FCM).

pub mod admin;
pub mod assignment;
pub mod blacklist;
pub mod limits;
pub mod locks;
pub mod messaging;
pub mod push;
pub mod retention;
pub mod service;
pub mod stats;
mod tail;
pub mod words;

pub use admin::{Admin, NodeCard};
pub use messaging::{Messaging, SendOutcome};

use bytes::Bytes;
use shared::admin::{ConnCursor, ConnectionInfo, NodeInfo};
use shared::protocol::ErrorCode;

use crate::store::{Committed, StoreError};

/// Who is asking: the verified claims of a client token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub uid: String,
    /// The device.
    pub device: String,
    /// The device's platform.
    pub platform: shared::token::Platform,
    /// Roles from the token, e.g. `agent`.
    pub roles: Vec<String>,
    /// The address the request came from, when known.
    pub ip: Option<std::net::IpAddr>,
}

/// Failures of a business operation, each mapped to one protocol code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a rule of the protocol.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The conversation, shop or group does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Over a rate limit.
    #[error("{0}")]
    RateLimited(String),
    /// The state does not allow it (a second rating, an agent at its cap).
    #[error("{0}")]
    Conflict(String),
    /// Refused by the sensitive-word filter.
    #[error("the message contains a blocked word")]
    BlockedContent,
    /// Refused by the pre-send hook, with its reason for the sender.
    #[error("{0}")]
    Rejected(String),
    /// The pre-send hook could not be asked and `--hook-fail-closed` refuses the
    /// message: nothing is wrong with it, so it is `internal` (resend later), not
    /// `blocked_content`.
    #[error(
        "pre-send hook unavailable; the message was not sent, resend it later with the same cid"
    )]
    HookUnavailable,
    /// The server is shutting down and takes no more messages.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl Error {
    /// The protocol code, which also decides the HTTP status.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadRequest(_) => ErrorCode::BadRequest,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::RateLimited(_) => ErrorCode::RateLimited,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::BlockedContent | Error::Rejected(_) => ErrorCode::BlockedContent,
            Error::ShuttingDown | Error::Store(_) | Error::HookUnavailable => ErrorCode::Internal,
        }
    }

    /// Whether it is a failure of this server, for its log at error level. A hook that
    /// is down is logged where it is called, at most every few seconds, not once per
    /// refused message.
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Error::ShuttingDown | Error::Store(_))
    }

    /// What the client is told. Store details stay in the server's log.
    pub fn client_message(&self) -> String {
        match self {
            Error::Store(_) => "internal error; retry with the same cid".into(),
            e => e.to_string(),
        }
    }
}

/// Where committed messages go, in commit order: the dispatcher.
///
/// Called from the commit task, so it must not block: enqueue and return.
pub trait Deliver: Send + Sync + 'static {
    /// `msg` is committed; push it to every online device of every recipient.
    fn deliver(&self, msg: &Committed);

    /// Passes `frame` (a whole JSON frame: `read`, `typing`) to every connected device
    /// of `uids`, wherever it is. Not stored and not acked: a device that misses it
    /// learns the state behind it by reading it. Never blocks.
    fn notify(&self, uids: Vec<String>, frame: String);

    /// Committed messages were lost on their way to [`Deliver::deliver`]; whoever
    /// holds devices must look in the inboxes for them (cluster: every worker catches
    /// up).
    fn lost(&self) {}
}

/// Who is online: the business rules ask it; the worker role answers on one node, the
/// cluster's connection routes in cluster mode.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Whether any device of `uid` is connected.
    async fn online(&self, uid: &str) -> bool;
}

/// Where devices are connected, as the admin operations see it: every worker of the
/// cluster, or this node's alone. The dispatcher's `Workers` implements it; workers
/// that do not answer are left out (and logged) rather than failing the operation.
#[async_trait::async_trait]
pub trait Devices: Send + Sync + 'static {
    /// A page of connections over every worker (or only `node`'s), ordered by
    /// (uid, device) after the cursor `after`, at most `limit`, and the next cursor.
    async fn connections(
        &self,
        uid: Option<&str>,
        node: Option<&str>,
        after: Option<&ConnCursor>,
        limit: usize,
    ) -> (Vec<ConnectionInfo>, Option<ConnCursor>);

    /// How many devices of `uid` are connected.
    async fn count(&self, uid: &str) -> usize;

    /// Disconnects every device of `uid` with a `kick` of `reason`; how many.
    async fn kick_user(&self, uid: &str, reason: &str) -> usize;

    /// Pushes inbox entries `(useq, message JSON)` of `uid` to its devices again,
    /// wherever they are connected. Never blocks.
    fn replay(&self, uid: &str, entries: Vec<(u64, Bytes)>);

    /// Kicks this node's connections that the blacklist cache now blocks; how many.
    /// (Other workers do it when the store's change notification reaches them.)
    fn enforce_blacklist(&self) -> usize;

    /// This node's worker's figures (connections, pushes, acks), when it is a worker.
    fn local_figures(&self) -> Option<NodeInfo>;

    /// The figures of every node: each reachable worker's, and in a cluster what the
    /// registry says of live nodes that have no worker to ask.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, Error>;
}

/// A message about to be committed, as the pre-send hook is asked about it: after the
/// sensitive-word filter, before the commit.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The sender.
    pub from: &'a str,
    /// The sender's device.
    pub device: &'a str,
    /// The conversation.
    pub conv: &'a str,
    /// The body, as the filter left it.
    pub body: &'a serde_json::Value,
    /// The sender's client message id.
    pub cid: Option<&'a str>,
}

/// What the pre-send hook decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Commit the message as it is.
    Allow,
    /// Refuse it; the sender is told this reason (`blocked_content`).
    Reject(String),
    /// Commit this body instead (not `null`, within the size limit: checked by whoever
    /// read the answer).
    Replace(serde_json::Value),
    /// The hook could not be asked, and the policy is to refuse the message. (With the
    /// policy to let it through, a failed call answers [`Verdict::Allow`].)
    Unavailable,
}

/// A business system's say over messages before they are committed (the pre-send
/// hook); `hooks::before_send` implements it over HTTP.
///
/// Called on the send path of every matching message, but never with a decision lock
/// held: it may take as long as its timeout.
#[async_trait::async_trait]
pub trait BeforeSend: Send + Sync + 'static {
    /// Whether messages of `conv` are asked about (`--hook-convs`).
    fn applies(&self, conv: &str) -> bool;

    /// What the hook says of `msg`. It never fails: a call that fails answers by the
    /// failure policy ([`Verdict::Allow`] or [`Verdict::Unavailable`]).
    async fn check(&self, msg: Outgoing<'_>) -> Verdict;
}

/// Why a relay did not take a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayFailed {
    /// It may take it later (no answer, a timeout, 408, 429, 5xx): try again.
    Retry,
    /// It refused it (another 4xx): trying again would get the same answer.
    Refused,
}

/// Where offline pushes go: a relay to the push services (APNs, FCM, …) that knows
/// their credentials; `hooks::push` implements it over HTTP.
#[async_trait::async_trait]
pub trait PushRelay: Send + Sync + 'static {
    /// Hands `push` over, once; the caller retries.
    async fn send(&self, push: &push::OfflinePush) -> Result<(), RelayFailed>;
}

//! The client contract: WebSocket frames, the message shape, HTTP bodies, error codes.
//!
//! Client → server frames are [`ClientFrame`]; server → client frames are
//! [`ServerFrame`]. The server writes its hottest frames (`msg`, `synced`) from
//! pre-serialized message bytes, so [`ServerFrame`] is what clients decode and what the
//! server uses for the rest.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest client message id (`cid`), in bytes.
pub const MAX_CID_LEN: usize = 64;
/// `limit` of a sync or history read when the client gives none.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest `limit` of a sync or history read; larger asks are clamped to it.
pub const MAX_PAGE: u32 = 1000;

/// A committed message, exactly as clients see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    /// Server-assigned unique id.
    pub id: String,
    /// Conversation id.
    pub conv: String,
    /// Position in the conversation: from 1, gapless, in commit order.
    pub seq: u64,
    /// Sender uid; for an event message, the uid that caused it.
    pub from: String,
    /// Application payload, any JSON; absent from event messages and from recalled
    /// messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// What happened to the conversation, for an event message (`{"type": …, …}`,
    /// see [`Event`]); kept as JSON so that clients decode event types they do not
    /// know, and ignore them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    /// Commit time, unix milliseconds.
    pub ts: i64,
    /// The sender's client message id, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// The sender took the message back: its body is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
    /// An operator erased what its sender wrote (`DELETE /admin/v1/users/{uid}/messages`):
    /// its body is gone; the message stays as a tombstone at its `seq`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
}

impl Message {
    /// Whether this is an event message.
    pub fn is_event(&self) -> bool {
        self.event.is_some()
    }
}

/// What happened to a conversation: the `event` of an event message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A service conversation got an agent: its first, a transfer, or a reassignment
    /// when the previous one went offline.
    Assigned {
        /// The agent now assigned.
        agent: String,
        /// The agent assigned before, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
    },
    /// The service conversation was closed; the customer's next message opens it
    /// again.
    Closed,
    /// The message at `seq` was recalled.
    Recalled {
        /// The recalled message.
        seq: u64,
        /// Who recalled it when it was not its sender: `"admin"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The customer rated the closed conversation.
    Rated {
        /// 1 to 5.
        score: u8,
        /// The customer's words, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
}

/// What a client sends to post a message (WebSocket `send` frame or `POST /v1/messages`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Client message id for idempotent resends (≤ 64 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// Direct message to this uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Message into an existing conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<String>,
    /// Customer-service message to this shop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop: Option<String>,
    /// Application payload: any JSON but `null`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub body: Value,
}

/// Client → server WebSocket frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Post a message.
    Send(SendRequest),
    /// Acknowledge pushes by their inbox positions.
    Ack {
        /// The acknowledged `useq`s.
        useqs: Vec<u64>,
    },
    /// Read the inbox after `after`.
    Sync {
        /// Last `useq` the device has; 0 reads from the start.
        #[serde(default)]
        after: u64,
        /// Page size (default 100, at most 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Application-level liveness check; answered with `pong`.
    Ping,
    /// Move the caller's read position in `conv` forward to `seq`.
    Read {
        /// The conversation.
        conv: String,
        /// The highest seq read (clamped to the conversation's last).
        seq: u64,
    },
    /// The caller is typing in `conv`; forwarded to the other members, not stored.
    Typing {
        /// The conversation.
        conv: String,
    },
    /// Take back the caller's own message `seq` of `conv`; answered with `recalled`.
    Recall {
        /// The conversation.
        conv: String,
        /// The message to recall.
        seq: u64,
    },
    /// An agent sets its availability for new conversations; not answered unless
    /// refused.
    Status {
        /// `available` or `away`.
        status: AgentStatus,
    },
}

/// An agent's availability: only `available` agents are given new conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Takes new conversations (up to its shop's cap). Every agent is available when
    /// it connects.
    Available,
    /// Keeps its conversations, takes no new one.
    Away,
}

/// `PUT /v1/agent/status` body and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// The new availability.
    pub status: AgentStatus,
}

/// `POST /v1/conversations/{conv}/rating` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RatingRequest {
    /// 1 to 5.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 5))]
    pub score: u8,
    /// The customer's words, at most [`MAX_COMMENT_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub comment: Option<String>,
}

/// The longest rating comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 1000;

/// One inbox position and its message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxItem {
    /// Position in the user's inbox.
    pub useq: u64,
    /// The message.
    pub msg: Message,
}

/// Server → client WebSocket frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The sender's message is committed.
    Sent {
        /// Echo of the request's `cid`.
        #[serde(default)]
        cid: Option<String>,
        /// The committed message.
        msg: Message,
    },
    /// A push; the client must `ack` its `useq`.
    Msg {
        /// Inbox position.
        useq: u64,
        /// The message.
        msg: Message,
    },
    /// Answer to `sync`.
    Synced {
        /// Inbox items in `useq` order.
        msgs: Vec<InboxItem>,
        /// Whether more items follow the last one.
        more: bool,
        /// The server's store generation: when it differs from the one the device
        /// stored, the server lost state and gives `useq`s again; the device syncs from
        /// the start (see `docs/protocol.md`, *Generations*).
        #[serde(default)]
        generation: String,
        /// The read asked for entries that retention removed: it starts at the oldest
        /// entry kept.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        trimmed: bool,
    },
    /// Answer to `ping`.
    Pong,
    /// A request failed.
    Error {
        /// The failed request's `cid`, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// A member's read position moved (not an inbox entry; not acked).
    Read {
        /// The conversation.
        conv: String,
        /// Whose position.
        uid: String,
        /// The new position.
        seq: u64,
    },
    /// A member is typing (not stored; not acked).
    Typing {
        /// The conversation.
        conv: String,
        /// Who types.
        uid: String,
    },
    /// Answer to `recall`: the message is recalled.
    Recalled {
        /// The conversation.
        conv: String,
        /// The recalled message.
        seq: u64,
    },
    /// The caller's service conversation waits for an agent: its place in the shop's
    /// queue (1 = next), sent when it starts waiting and whenever it moves.
    Queue {
        /// The conversation.
        conv: String,
        /// 1 = next.
        position: u64,
    },
    /// The server is about to close the connection.
    Kick {
        /// Why: `replaced`, `shutdown`, `slow`, `idle`, `blacklisted`, `admin`, …
        reason: String,
    },
}

/// Protocol error codes, shared by WebSocket `error` frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or breaks a rule.
    BadRequest,
    /// No valid credentials.
    Unauthorized,
    /// Valid credentials, but not allowed.
    Forbidden,
    /// The thing asked for does not exist.
    NotFound,
    /// The request or frame is over the size limit.
    TooLarge,
    /// Over a rate limit; retry later.
    RateLimited,
    /// The content was refused by the sensitive-word filter.
    BlockedContent,
    /// The request contradicts the state of what it names (a second rating).
    Conflict,
    /// The server failed; retrying may help.
    Internal,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::BlockedContent => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::Conflict => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
        }
    }

    /// The wire name, as in `"code": "…"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BlockedContent => "blocked_content",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
        }
    }
}

/// HTTP error body: `{"error":{"code":…,"message":…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// `POST /v1/messages` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendResponse {
    /// The committed message.
    pub msg: Message,
}

/// `GET /v1/sync` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncResponse {
    /// Inbox items in `useq` order.
    pub msgs: Vec<InboxItem>,
    /// Whether more items follow.
    pub more: bool,
    /// The server's store generation (see [`ServerFrame::Synced`]).
    #[serde(default)]
    pub generation: String,
    /// The read asked for entries that retention removed: it starts at the oldest
    /// entry kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trimmed: bool,
}

/// `GET /v1/conversations/{conv}/messages` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryResponse {
    /// Messages in `seq` order.
    pub msgs: Vec<Message>,
    /// Whether more messages follow.
    pub more: bool,
    /// The read asked for messages that retention removed: it starts at the oldest
    /// message kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trimmed: bool,
}

/// `POST /v1/conversations/{conv}/read` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The highest seq read.
    pub seq: u64,
}

/// `POST /v1/conversations/{conv}/read` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadResponse {
    /// The caller's read position now (it never moves back).
    pub read_seq: u64,
}

/// `DELETE /v1/conversations/{conv}/messages/{seq}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecallResponse {
    /// The conversation.
    pub conv: String,
    /// The recalled message.
    pub seq: u64,
}

/// The kind of a conversation, from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    /// Two users (`d:…`).
    Direct,
    /// A named group (`g:…`).
    Group,
    /// A customer and a shop's agents (`s:…`).
    Service,
    /// A shop's internal notes on a service conversation, for its agents only (`n:…`).
    Notes,
}

/// One entry of `GET /v1/conversations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConvSummary {
    /// The conversation.
    pub conv: String,
    /// Its kind.
    pub kind: ConvKind,
    /// Its last message, event messages included.
    pub last: Message,
    /// The caller's read position (0: nothing read).
    pub read_seq: u64,
    /// Messages after `read_seq` that are neither the caller's nor events.
    pub unread: u64,
    /// The other member's read position (direct and service conversations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_read_seq: Option<u64>,
}

/// `GET /v1/conversations` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationsResponse {
    /// Newest activity first.
    pub convs: Vec<ConvSummary>,
    /// The cursor of the next page (`before=`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /v1/conversations/{conv}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationResponse {
    /// The conversation.
    pub conv: String,
    /// Its kind.
    pub kind: ConvKind,
    /// Its members (service: the customer and the assigned agent).
    pub members: Vec<String>,
    /// Every member's read position (0 for none).
    pub read: std::collections::BTreeMap<String, u64>,
    /// Its last seq (0: no message yet).
    pub last_seq: u64,
    /// Service: the assigned agent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Service: open (assigned or waiting) or closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,
    /// Service, while it waits for an agent: 1 = next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
}

/// One user of `GET /v1/presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceEntry {
    /// The user.
    pub uid: String,
    /// Whether any device of the user is connected anywhere in the cluster.
    pub online: bool,
    /// When the user's last device disconnected (unix ms), when known and offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// `GET /v1/presence` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceResponse {
    /// The asked users that share a conversation with the caller.
    pub users: Vec<PresenceEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_frames_decode() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"send","cid":"c1","to":"bob","body":{"t":"hi"}}"#)
                .unwrap();
        let ClientFrame::Send(req) = f else {
            panic!("not a send")
        };
        assert_eq!(req.cid.as_deref(), Some("c1"));
        assert_eq!(req.to.as_deref(), Some("bob"));
        assert_eq!(req.body, json!({"t":"hi"}));

        let f: ClientFrame = serde_json::from_str(r#"{"type":"ack","useqs":[1,2]}"#).unwrap();
        assert_eq!(f, ClientFrame::Ack { useqs: vec![1, 2] });
        let f: ClientFrame = serde_json::from_str(r#"{"type":"sync","after":5}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Sync {
                after: 5,
                limit: None
            }
        );
        let f: ClientFrame = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(f, ClientFrame::Ping);
    }

    #[test]
    fn bad_client_frames_fail() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"no_type":1}"#,
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","useqs":[-1]}"#,
            r#"{"type":"send","to":"b","body":1,"extra":true}"#,
        ] {
            assert!(serde_json::from_str::<ClientFrame>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn message_shape_is_the_contract() {
        let m = Message {
            id: "x".into(),
            conv: "d:a~b".into(),
            seq: 1,
            from: "a".into(),
            body: Some(json!("hi")),
            event: None,
            ts: 5,
            cid: None,
            recalled: false,
            erased: false,
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"id":"x","conv":"d:a~b","seq":1,"from":"a","body":"hi","ts":5})
        );
        let e = ServerFrame::Error {
            cid: None,
            code: ErrorCode::TooLarge,
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type":"error","code":"too_large","message":"m"})
        );
    }

    #[test]
    fn codes_map_to_statuses() {
        for (code, status, name) in [
            (ErrorCode::BadRequest, 400, "bad_request"),
            (ErrorCode::Unauthorized, 401, "unauthorized"),
            (ErrorCode::Forbidden, 403, "forbidden"),
            (ErrorCode::NotFound, 404, "not_found"),
            (ErrorCode::TooLarge, 413, "too_large"),
            (ErrorCode::RateLimited, 429, "rate_limited"),
            (ErrorCode::Conflict, 409, "conflict"),
            (ErrorCode::Internal, 500, "internal"),
        ] {
            assert_eq!(code.http_status(), status);
            assert_eq!(code.as_str(), name);
            assert_eq!(serde_json::to_value(code).unwrap(), json!(name));
        }
    }
}

/// `GET /v1/agent` answer: the caller as an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentResponse {
    /// The caller.
    pub uid: String,
    /// Its availability (`available` unless it set `away`).
    pub status: AgentStatus,
    /// The shops it is an agent of, by name.
    pub shops: Vec<String>,
}

/// `GET /v1/shops/{shop}` answer, for the shop's agents: its queue and its agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShopView {
    /// The shop.
    pub shop: String,
    /// Open conversations one agent may hold (0: no cap).
    pub max_open: u32,
    /// Conversations waiting for an agent, first in line first.
    pub waiting: Vec<QueueEntry>,
    /// The shop's agents, in its order.
    pub agents: Vec<ShopAgent>,
}

/// One waiting conversation of [`ShopView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueEntry {
    /// The conversation.
    pub conv: String,
    /// Its customer.
    pub customer: String,
    /// 1 = next.
    pub position: u64,
}

/// One agent of [`ShopView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShopAgent {
    /// The agent.
    pub uid: String,
    /// Whether a device of it is connected.
    pub online: bool,
    /// Whether it takes new conversations (online and not away).
    pub available: bool,
    /// Its open conversations.
    pub open: u64,
}

/// `POST /v1/conversations/{conv}/transfer` body: the assigned agent hands the
/// conversation to a colleague.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransferRequest {
    /// The colleague who takes it.
    pub agent: String,
}

/// `PUT /v1/devices/{device}/push` body: the calling device's push token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushRegistration {
    /// The push service that issued the token, as the relay names it (`apns`, `fcm`,
    /// …): 1-32 characters of `[a-z0-9_-]`.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9_-]{1,32}$")
    )]
    pub provider: String,
    /// The device's token at that service: 1-4096 bytes, no control characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 4096))]
    pub token: String,
}

//! Admin API types: request and answer bodies of `/admin/v1/…`.

use serde::{Deserialize, Serialize};

/// What a blacklist entry blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BlacklistKind {
    /// A user.
    Uid,
    /// An address or a CIDR range.
    Ip,
}

impl BlacklistKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BlacklistKind::Uid => "uid",
            BlacklistKind::Ip => "ip",
        }
    }
}

/// A blacklist kind that is neither `uid` nor `ip`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown blacklist kind {0:?} (uid|ip)")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for BlacklistKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        match s {
            "uid" => Ok(BlacklistKind::Uid),
            "ip" => Ok(BlacklistKind::Ip),
            _ => Err(UnknownKind(s.to_owned())),
        }
    }
}

/// One blacklist entry, as stored and as `GET /admin/v1/blacklist` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlacklistEntry {
    /// `uid` or `ip`.
    pub kind: BlacklistKind,
    /// The uid, or the address or range in canonical form (`10.1.0.0/16`, `::1`).
    pub value: String,
    /// Why, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it stops applying, unix milliseconds; absent means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl BlacklistEntry {
    /// Whether the entry applies at `now_ms`.
    pub fn live(&self, now_ms: i64) -> bool {
        self.expires_at.is_none_or(|t| t > now_ms)
    }
}

/// `POST /admin/v1/blacklist` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddBlacklist {
    /// `uid` or `ip`.
    pub kind: BlacklistKind,
    /// A uid, an address, or a CIDR range.
    pub value: String,
    /// Lifetime in seconds; absent means until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Why, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /admin/v1/blacklist` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlacklistList {
    /// Every live entry.
    pub entries: Vec<BlacklistEntry>,
}

/// One connected device, as `GET /admin/v1/connections` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionInfo {
    /// The user.
    pub uid: String,
    /// The device.
    pub device: String,
    /// The device's platform.
    pub platform: crate::token::Platform,
    /// The node holding the connection.
    pub node: String,
    /// The peer address.
    pub remote: String,
    /// When it connected, unix milliseconds.
    pub connected_at: i64,
    /// Pushes to it not acked yet: queued for writing, or written and waiting.
    #[serde(default)]
    pub unacked: u64,
}

/// `GET /admin/v1/connections` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectionList {
    /// Connections ordered by (uid, device).
    pub connections: Vec<ConnectionInfo>,
    /// When more follow: pass it as `?after=` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Where a page of connections ends: the last (uid, device) of the page. On the wire it
/// is `uid/device` (the `next` of [`ConnectionList`], the `?after=` of the next call); a
/// uid never holds a `/`, so the first one splits it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnCursor {
    /// The last uid of the page.
    pub uid: String,
    /// Its last device on the page.
    pub device: String,
}

impl ConnCursor {
    /// The cursor just past `info`.
    pub fn after(info: &ConnectionInfo) -> Self {
        Self {
            uid: info.uid.clone(),
            device: info.device.clone(),
        }
    }

    /// Whether (uid, device) comes at or before the cursor (already listed).
    pub fn covers(&self, uid: &str, device: &str) -> bool {
        (uid, device) <= (self.uid.as_str(), self.device.as_str())
    }
}

impl std::fmt::Display for ConnCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.uid, self.device)
    }
}

/// A paging cursor that is not `uid/device`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {0:?} (uid/device)")]
pub struct BadCursor(pub String);

impl std::str::FromStr for ConnCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (uid, device) = s.split_once('/').ok_or_else(|| BadCursor(s.to_owned()))?;
        Ok(Self {
            uid: uid.to_owned(),
            device: device.to_owned(),
        })
    }
}

/// `DELETE /admin/v1/connections/{uid}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Kicked {
    /// How many devices were disconnected.
    pub kicked: usize,
}

/// `DELETE /admin/v1/users/{uid}/messages` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Erased {
    /// Messages of the user whose body this call removed (0 when a call before it
    /// erased them all).
    pub erased: u64,
}

/// `PUT`/`GET /admin/v1/shops/{shop}/agents` body: the shop's agents and its
/// customer-service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShopAgents {
    /// The shop's agents.
    pub agents: Vec<String>,
    /// Open conversations one agent may hold at once (0 or absent: no cap; at most
    /// [`MAX_OPEN_LIMIT`]).
    #[serde(default)]
    pub max_open: u32,
    /// The body of a message the shop sends when a conversation opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<serde_json::Value>,
    /// The body of a message the shop sends when a conversation opens while no agent
    /// is online and available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away: Option<serde_json::Value>,
}

impl ShopAgents {
    /// Agents only, no settings.
    pub fn agents(agents: Vec<String>) -> Self {
        Self {
            agents,
            max_open: 0,
            welcome: None,
            away: None,
        }
    }
}

/// The highest `max_open` a shop may set.
pub const MAX_OPEN_LIMIT: u32 = 10_000;

/// The largest `welcome` or `away` body a shop may set, in bytes of JSON.
pub const SHOP_MESSAGE_MAX: usize = 8 * 1024;

/// `GET /admin/v1/shops` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Shops {
    /// Every shop, by name.
    pub shops: Vec<String>,
}

/// `GET /admin/v1/shops/{shop}/stats` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShopStats {
    /// The shop.
    pub shop: String,
    /// Agents with a device connected.
    pub agents_online: u64,
    /// Of those, the ones not marked away.
    pub agents_available: u64,
    /// Open conversations with an agent.
    pub open: u64,
    /// Conversations waiting in the queue.
    pub waiting: u64,
    /// The cap per agent (0: none).
    pub max_open: u32,
    /// First-response times: from the message that opened a conversation to the first
    /// agent answer.
    pub first_response_ms: FirstResponse,
    /// The customers' ratings.
    pub rating: RatingStats,
    /// Each agent, in the shop's order.
    pub agents: Vec<AgentStats>,
}

/// First-response percentiles, each the upper bound of its histogram bucket (at most
/// 25% above the true figure); `null` before any answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FirstResponse {
    /// Conversations answered.
    pub count: u64,
    /// Median.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub p50: Option<u64>,
    /// 90th percentile.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub p90: Option<u64>,
    /// 99th percentile.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub p99: Option<u64>,
}

/// Ratings given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RatingStats {
    /// How many.
    pub count: u64,
    /// Their mean score; `null` before the first.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub avg: Option<f64>,
}

/// One agent of [`ShopStats`]: what its colleagues see of it too
/// (`GET /v1/shops/{shop}`).
pub use crate::protocol::ShopAgent as AgentStats;

/// `PUT`/`GET /admin/v1/groups/{name}/members` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupMembers {
    /// The group's members.
    pub members: Vec<String>,
}

/// `POST /admin/v1/conversations/{conv}/transfer` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The agent who takes the conversation over.
    pub agent: String,
}

/// A customer-service conversation's assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    /// The conversation.
    pub conv: String,
    /// The assigned agent; absent while it waits for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Whether the conversation is open (assigned or waiting).
    pub open: bool,
}

/// `PUT /admin/v1/words` body; `GET` answers with it (the words themselves are not
/// listed back, only their number, in `count`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Words {
    /// The new word list; replaces the old one.
    #[serde(default)]
    pub words: Vec<String>,
    /// `mask` or `reject`; unchanged when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// `GET`/`PUT /admin/v1/words` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WordsStatus {
    /// How many words the filter holds.
    pub count: usize,
    /// `mask` or `reject`.
    pub policy: String,
}

/// `POST /admin/v1/replay` body: re-push part of a user's inbox to the devices online now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// The user.
    pub uid: String,
    /// Replay entries with `useq > after`.
    pub after: u64,
    /// … and `useq <= until` (default: to the end of the inbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// `POST /admin/v1/replay` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Replayed {
    /// Inbox entries pushed.
    pub messages: usize,
    /// Devices they were pushed to.
    pub devices: usize,
    /// Set when the range was longer than one call pushes (half a device's outbox, so
    /// that a replay never overflows it): call again with `after` set to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// One node, as `GET /admin/v1/cluster` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    /// The node's id.
    pub node_id: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Its HTTP/WebSocket address.
    pub listen: String,
    /// Its version.
    pub version: String,
    /// The RPC protocol version it speaks between nodes; nodes of different versions
    /// refuse each other's links (0: unknown, a node from before it was reported).
    #[serde(default)]
    pub rpc_version: u32,
    /// When it started, unix milliseconds.
    pub started_at: i64,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Pushes not acked yet: queued for writing, or written and waiting for the ack.
    pub unacked: i64,
    /// Messages committed since start.
    pub committed: u64,
    /// Messages committed in the last second.
    pub committed_per_s: u64,
    /// Pushes queued since start.
    pub pushes: u64,
    /// Pushes resent since start.
    pub retransmits: u64,
}

/// `GET /admin/v1/cluster` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterInfo {
    /// Every live node.
    pub nodes: Vec<NodeInfo>,
}

/// `GET /admin/v1/webhooks` answer: the webhook's state. Counters are the answering
/// node's since it started; `pending_conversations` and `parked` are the whole
/// cluster's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookStatus {
    /// Events delivered (a 2xx answer).
    pub delivered: u64,
    /// POSTs that failed (non-2xx, no answer, timeout).
    pub failed: u64,
    /// Events parked after failing for the whole retry window.
    pub parked_total: u64,
    /// Events lost before delivery: removed by retention, or parked ones dropped at the
    /// cap of the parked list.
    pub dropped: u64,
    /// Whether the receiver answered lately (false after several failures in a row:
    /// one conversation at a time probes it until it answers).
    pub receiver_up: bool,
    /// Conversations with events that may be undelivered.
    pub pending_conversations: u64,
    /// Events parked now.
    pub parked: u64,
    /// Age of the oldest event being retried, in ms (0: none).
    pub lag_ms: i64,
}

/// One parked webhook event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParkedWebhook {
    /// The parked id (the order of parking).
    pub id: u64,
    /// The event id (the message id).
    pub event: String,
    /// The conversation.
    pub conv: String,
    /// The message's seq.
    pub seq: u64,
    /// When the message was committed (unix ms).
    pub ts: i64,
    /// When the event was parked (unix ms).
    pub parked_ms: i64,
    /// The last failure.
    pub reason: String,
}

/// `GET /admin/v1/webhooks/parked` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParkedWebhooks {
    /// Parked events, oldest first.
    pub events: Vec<ParkedWebhook>,
    /// The `after` of the next page, when there may be one.
    pub next: Option<u64>,
}

/// `POST /admin/v1/webhooks/parked/redrive` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Redriven {
    /// Events the receiver accepted; they left the parked list.
    pub sent: u64,
    /// Events whose message no longer exists (retention); they left the list.
    pub gone: u64,
    /// 1 when a send failed, which stopped the re-drive (the rest stay parked).
    pub failed: u64,
}

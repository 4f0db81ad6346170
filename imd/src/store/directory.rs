//! The directory: blacklists, shops (with their customer-service assignments), groups
//! and devices' push tokens, the state the business rules read and the admin API (or,
//! for push tokens, the devices themselves) changes. One trait per
//! domain, so that a backend keeps each domain in a file of its own; [`DirectoryStore`]
//! is their union, the one callers hold. It must not hold rules: what a blacklist
//! entry blocks, or which agent gets a conversation, is the business layer's.

use async_trait::async_trait;
use shared::admin::{BlacklistEntry, BlacklistKind};

use super::StoreError;

/// Everything the directory holds: every domain trait. Blanket-implemented, so a
/// backend implements the domain traits and never this one (see the module doc of
/// `store` for adding a domain).
pub trait DirectoryStore: BlacklistStore + ShopStore + GroupStore + PushStore {}

impl<T: BlacklistStore + ShopStore + GroupStore + PushStore + ?Sized> DirectoryStore for T {}

/// Blacklist entries: who may not send, and until when.
#[async_trait]
pub trait BlacklistStore: Send + Sync + 'static {
    /// Every blacklist entry, expired ones included until purged.
    async fn blacklist(&self) -> Result<Vec<BlacklistEntry>, StoreError>;
    /// Adds or replaces an entry.
    async fn blacklist_put(&self, entry: BlacklistEntry) -> Result<(), StoreError>;
    /// Removes an entry; whether it existed.
    async fn blacklist_remove(&self, kind: BlacklistKind, value: &str) -> Result<bool, StoreError>;
    /// Removes entries expired at `now_ms`; how many.
    async fn blacklist_purge(&self, now_ms: i64) -> Result<u64, StoreError>;
}

/// Shops, their agents, and the customer-service conversations assigned to them.
#[async_trait]
pub trait ShopStore: Send + Sync + 'static {
    /// A shop's settings and agents; `None` for a shop never set.
    async fn shop(&self, shop: &str) -> Result<Option<Shop>, StoreError>;
    /// Sets a shop's settings and agents (and the agents' reverse index).
    async fn set_shop(&self, shop: &str, settings: Shop) -> Result<(), StoreError>;
    /// The shops `uid` is an agent of.
    async fn agent_shops(&self, uid: &str) -> Result<Vec<String>, StoreError>;

    /// A shop's agents; `None` for a shop never set.
    async fn shop_agents(&self, shop: &str) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self.shop(shop).await?.map(|s| s.agents))
    }
    /// Sets a shop's agents, keeping its other settings (read, then write: for tests and
    /// tools, not for racing writers).
    async fn set_shop_agents(&self, shop: &str, agents: Vec<String>) -> Result<(), StoreError> {
        let settings = self.shop(shop).await?.unwrap_or_default();
        self.set_shop(shop, Shop { agents, ..settings }).await
    }

    /// A customer-service conversation's state; `None` before its first message.
    async fn service(&self, conv: &str) -> Result<Option<ServiceState>, StoreError>;
    /// Assigns `conv` of `shop` to `agent`, or leaves it waiting at the end of the
    /// shop's queue when `None`, if `admit` lets it (checked atomically with the
    /// change). Moves the open-conversation count from the previous agent to the new
    /// one. A conversation that was not open (new, or closed) opens: its `since` is
    /// now, and it is neither answered nor rated.
    ///
    /// Visible to every later read at once, but a store may leave its durability to
    /// the next [`MessageStore::commit`](super::MessageStore::commit) (the embedded store does: no fsync of its own).
    /// Every assignment is followed by the commit of what decided it (the join of the
    /// new agent, the message that opened the conversation), so a crash loses either
    /// both or neither, and nothing of it was acknowledged. Assignments of new
    /// conversations are then no longer one fsync each, one at a time under the
    /// decision lock: a burst of customers opening conversations waited on them (p99
    /// 45 ms against 5 ms, `docs/benchmarks.md`).
    async fn assign(
        &self,
        conv: &str,
        shop: &str,
        agent: Option<&str>,
        admit: Admit,
    ) -> Result<Assigned, StoreError>;
    /// Closes `conv`; whether it was open.
    async fn close_service(&self, conv: &str) -> Result<bool, StoreError>;
    /// Records the first agent reply of the open `conv`: how long after it opened (ms,
    /// by the store's clock, which also set `since`), the first time only (`None` after
    /// that, or when it is not open).
    async fn first_reply(&self, conv: &str) -> Result<Option<u64>, StoreError>;
    /// Counts one first-response time in bucket `bucket` of `shop`'s histogram.
    async fn count_first_response(&self, shop: &str, bucket: usize) -> Result<(), StoreError>;
    /// The customer rates the closed `conv`: once per closing, counted in its shop's
    /// ratings.
    async fn rate(&self, conv: &str, score: u8) -> Result<Rated, StoreError>;
    /// Open conversations assigned to each of `agents`, in the same order.
    async fn agent_loads(&self, agents: &[String]) -> Result<Vec<u64>, StoreError>;
    /// Conversations of `shop` waiting for an agent, oldest first.
    async fn waiting(&self, shop: &str) -> Result<Vec<String>, StoreError>;
    /// Marks `uid` away (`true`) or available (`false`). Every agent is available
    /// until marked away.
    async fn set_away(&self, uid: &str, away: bool) -> Result<(), StoreError>;
    /// Whether each of `agents` is marked away, in the same order.
    async fn away(&self, agents: &[String]) -> Result<Vec<bool>, StoreError>;
    /// `shop`'s counters: open and waiting conversations, first responses, ratings.
    async fn shop_counters(&self, shop: &str) -> Result<ShopCounters, StoreError>;
    /// Every shop, by name.
    async fn shops(&self) -> Result<Vec<String>, StoreError>;

    /// Whether other processes share this store, so that [`ShopStore::try_decide`]
    /// must be asked (Redis), or not (the embedded store).
    fn shared(&self) -> bool;
    /// Takes the decision lease of the service conversation `conv` for `token`, for
    /// `ttl_ms` at most (it expires if its holder dies); whether it was free. Every
    /// process that decides for `conv` takes it first, so that one decision and the
    /// commit of its ops happen before the next starts, whichever node makes it. A
    /// store that only one process can open answers `true` at once: that process's
    /// own lock is enough.
    async fn try_decide(&self, conv: &str, token: &str, ttl_ms: u64) -> Result<bool, StoreError>;
    /// Gives the lease of [`ShopStore::try_decide`] back, if `token` still holds it.
    async fn end_decide(&self, conv: &str, token: &str) -> Result<(), StoreError>;
}

/// A shop's settings and agents, as stored.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "StoredShop")]
pub struct Shop {
    /// The agents.
    pub agents: Vec<String>,
    /// Open conversations one agent may hold at once; 0: no cap.
    #[serde(default)]
    pub max_open: u32,
    /// The body of the message the shop sends when a conversation opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<serde_json::Value>,
    /// The body of the message the shop sends when a conversation opens and no agent
    /// is online and available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away: Option<serde_json::Value>,
}

/// A stored shop: an agents list before the shops had settings, an object since.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StoredShop {
    Agents(Vec<String>),
    Settings {
        agents: Vec<String>,
        #[serde(default)]
        max_open: u32,
        #[serde(default)]
        welcome: Option<serde_json::Value>,
        #[serde(default)]
        away: Option<serde_json::Value>,
    },
}

impl From<StoredShop> for Shop {
    fn from(s: StoredShop) -> Self {
        match s {
            StoredShop::Agents(agents) => Shop {
                agents,
                ..Shop::default()
            },
            StoredShop::Settings {
                agents,
                max_open,
                welcome,
                away,
            } => Shop {
                agents,
                max_open,
                welcome,
                away,
            },
        }
    }
}

/// What [`ShopStore::assign`] must check before it assigns to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Admit {
    /// Refuse ([`Assigned::Full`]) when the agent already holds this many open
    /// conversations; 0: no cap.
    pub max_open: u32,
    /// Refuse ([`Assigned::OutOfTurn`]) a conversation that is not open and assigned
    /// (new, closed or waiting) unless it is first in its shop's queue, or the queue
    /// is empty. Transfers of assigned conversations are never out of turn.
    pub in_turn: bool,
}

impl Admit {
    /// No check.
    pub const ANY: Admit = Admit {
        max_open: 0,
        in_turn: false,
    };
}

/// What [`ShopStore::assign`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// Assigned (or queued, for no agent).
    Done,
    /// Not assigned: the agent is at the cap.
    Full,
    /// Not assigned: older conversations wait.
    OutOfTurn,
}

/// What [`ShopStore::rate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rated {
    /// Counted.
    Done,
    /// Not counted: the conversation is open, or has no state.
    NotClosed,
    /// Not counted: already rated since it closed.
    Already,
}

/// A shop's counters (see [`ShopStore::shop_counters`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShopCounters {
    /// Open conversations with an agent.
    pub open: u64,
    /// Conversations waiting for an agent.
    pub waiting: u64,
    /// First-response times counted per bucket (index: bucket).
    pub first_response: Vec<u64>,
    /// Ratings given.
    pub ratings: u64,
    /// Their scores added up.
    pub rating_sum: u64,
}

/// Named groups and their members.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// A group's members; `None` for a group never set.
    async fn group_members(&self, name: &str) -> Result<Option<Vec<String>>, StoreError>;
    /// Sets a group's members.
    async fn set_group_members(&self, name: &str, members: Vec<String>) -> Result<(), StoreError>;
    /// The groups `uid` is a member of, by name (a reverse index kept by
    /// [`GroupStore::set_group_members`]).
    async fn member_groups(&self, uid: &str) -> Result<Vec<String>, StoreError>;
}

/// A customer-service conversation's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceState {
    /// The shop.
    pub shop: String,
    /// The assigned agent; `None` while it waits for one.
    pub agent: Option<String>,
    /// Open (assigned or waiting) or closed.
    pub open: bool,
    /// When it last opened (unix ms; 0 when opened before this was kept).
    #[serde(default)]
    pub since: i64,
    /// Whether an agent has answered since it opened.
    #[serde(default)]
    pub answered: bool,
    /// Whether the customer rated it since it last closed.
    #[serde(default)]
    pub rated: bool,
}

/// A device's push registration: where an offline push for its user goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushToken {
    /// The device (the client token's `dev`).
    pub device: String,
    /// The push service that knows the token (`apns`, `fcm`, …): the relay's business.
    pub provider: String,
    /// The token the push service gave the device.
    pub token: String,
    /// When it was registered (unix ms): the oldest goes first past the bound.
    pub at: i64,
}

/// Devices' push tokens, per user, bounded.
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    /// Sets the push token of `uid`'s `token.device`, replacing that device's earlier
    /// one. When `uid` then has more than `max` devices, the ones registered longest
    /// ago (the smallest `at`, then the smallest device id) go, but never the device
    /// just registered. Returns the devices removed.
    async fn push_register(
        &self,
        uid: &str,
        token: PushToken,
        max: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// Removes `uid`'s `device`'s push token; whether it had one.
    async fn push_unregister(&self, uid: &str, device: &str) -> Result<bool, StoreError>;
    /// Every push token of `uid`, by device id.
    async fn push_tokens(&self, uid: &str) -> Result<Vec<PushToken>, StoreError>;
}

/// The devices [`PushStore::push_register`] removes: of `all` (every device of the
/// user, the new one included, as `(at, device)`), the oldest beyond `max`, never
/// `new`. Both backends follow it (the Redis script in its own words).
pub(crate) fn push_evictions(mut all: Vec<(i64, String)>, new: &str, max: usize) -> Vec<String> {
    let over = all.len().saturating_sub(max);
    all.retain(|(_, d)| d != new);
    all.sort();
    all.into_iter().take(over).map(|(_, d)| d).collect()
}

//! The directory: blacklists, shops (with their customer-service assignments) and
//! groups, the state the business rules read and the admin API changes. One trait per
//! domain, so that a backend keeps each domain in a file of its own; [`DirectoryStore`]
//! is their union, the one callers hold. It must not hold rules: what a blacklist
//! entry blocks, or which agent gets a conversation, is the business layer's.

use async_trait::async_trait;
use shared::admin::{BlacklistEntry, BlacklistKind};

use super::StoreError;

/// Everything the directory holds: every domain trait. Blanket-implemented, so a
/// backend implements the domain traits and never this one (see the module doc of
/// `store` for adding a domain).
pub trait DirectoryStore: BlacklistStore + ShopStore + GroupStore {}

impl<T: BlacklistStore + ShopStore + GroupStore + ?Sized> DirectoryStore for T {}

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
    /// A shop's agents; `None` for a shop never set.
    async fn shop_agents(&self, shop: &str) -> Result<Option<Vec<String>>, StoreError>;
    /// Sets a shop's agents.
    async fn set_shop_agents(&self, shop: &str, agents: Vec<String>) -> Result<(), StoreError>;
    /// The shops `uid` is an agent of.
    async fn agent_shops(&self, uid: &str) -> Result<Vec<String>, StoreError>;

    /// A customer-service conversation's state; `None` before its first message.
    async fn service(&self, conv: &str) -> Result<Option<ServiceState>, StoreError>;
    /// Opens `conv` of `shop` and assigns it to `agent`, or leaves it waiting when `None`.
    /// Moves the open-conversation count from the previous agent to the new one.
    ///
    /// Visible to every later read at once, but a store may leave its durability to
    /// the next [`MessageStore::commit`](super::MessageStore::commit) (the embedded store does: no fsync of its own).
    /// Every assignment is followed by the commit of what decided it (the join of the
    /// new agent, the message that opened the conversation), so a crash loses either
    /// both or neither, and nothing of it was acknowledged. Assignments of new
    /// conversations are then no longer one fsync each, one at a time under the
    /// decision lock: a burst of customers opening conversations waited on them (p99
    /// 45 ms against 5 ms, `docs/benchmarks.md`).
    async fn assign(&self, conv: &str, shop: &str, agent: Option<&str>) -> Result<(), StoreError>;
    /// Closes `conv`; whether it was open.
    async fn close_service(&self, conv: &str) -> Result<bool, StoreError>;
    /// Open conversations assigned to each of `agents`, in the same order.
    async fn agent_loads(&self, agents: &[String]) -> Result<Vec<u64>, StoreError>;
    /// Conversations of `shop` waiting for an agent, oldest first.
    async fn waiting(&self, shop: &str) -> Result<Vec<String>, StoreError>;
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
}

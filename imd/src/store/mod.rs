//! Data layer: the traits every backend implements, and the two backends.
//!
//! The store is the authority for ordering: it assigns each conversation's `seq` and
//! each member's inbox `useq` inside the same atomic write that stores the message,
//! so sequences are gapless whatever crashes. It knows nothing of connections,
//! sessions or transports, and holds no business rules.
//!
//! # Code map
//!
//! - this file: [`MessageStore`] (messages, sequences, inboxes, idempotency) and the
//!   types of a commit;
//! - `directory`: one trait per directory domain, [`BlacklistStore`], [`ShopStore`]
//!   (shops and customer-service assignments) and [`GroupStore`], and their union
//!   [`DirectoryStore`], which callers hold (`Arc<dyn DirectoryStore>`);
//! - `error`: [`StoreError`];
//! - `embedded/`: redb under `--data-dir`, one file per domain beside `messages.rs`;
//! - `redis/`: standalone Redis or Redis Cluster, one file per domain beside
//!   `messages/`, plus the cluster's registries.
//!
//! # Adding a directory domain
//!
//! A domain is a trait in `directory.rs` and one file per backend that implements it
//! (`embedded/<domain>.rs`, `redis/<domain>.rs`), next to the domain's tables or keys.
//! [`DirectoryStore`] has every domain trait as a supertrait, and a blanket impl, so
//! adding the domain to its bounds (two lines) makes every backend's `DirectoryStore`
//! carry it; callers that hold `dyn DirectoryStore` change nothing. A caller that holds a concrete backend
//! (`EmbeddedStore`, `RedisStore`) rather than `dyn DirectoryStore` imports the domain
//! trait whose methods it calls.

mod directory;
mod embedded;
mod error;
mod redis;

pub use directory::{BlacklistStore, DirectoryStore, GroupStore, ServiceState, ShopStore};
pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use redis::{NodeInfo, RedisStore, RouteAdded};

use async_trait::async_trait;
use bytes::Bytes;

/// A message to commit, before the store gives it a `seq`.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Unique message id.
    pub id: String,
    /// Conversation id.
    pub conv: String,
    /// Sender uid.
    pub from: String,
    /// The sender's client message id, for idempotency.
    pub cid: Option<String>,
    /// Payload.
    pub body: serde_json::Value,
    /// Commit time, unix milliseconds.
    pub ts: i64,
    /// Every member of the conversation (deduplicated); each gets an inbox entry.
    pub members: Vec<String>,
}

/// One operation of a commit batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Commit a new message.
    Message(NewMessage),
    /// Give `uid` every message of `conv` so far, as new entries of its inbox: an agent
    /// taking a customer-service conversation over reads its whole history.
    Join {
        /// The conversation.
        conv: String,
        /// The user who joins it.
        uid: String,
    },
}

/// How many of a join's inbox entries are pushed; the rest wait for `sync`.
pub const JOIN_PUSH_TAIL: usize = 256;

/// A committed message: its serialized form and where it landed in each inbox.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The message as clients see it, serialized once (the `Message` JSON object).
    pub json: Bytes,
    /// Conversation id.
    pub conv: String,
    /// Position in the conversation.
    pub seq: u64,
    /// Commit time, unix milliseconds.
    pub ts: i64,
    /// `(uid, useq)` for every member, in the order of [`NewMessage::members`].
    pub recipients: Vec<(String, u64)>,
}

/// What committing one message came to.
#[derive(Debug, Clone)]
pub enum CommitOutcome {
    /// A new message.
    New(Committed),
    /// A resend of an earlier message with the same `(from, cid)`; nothing was written.
    /// Holds the earlier message's JSON.
    Duplicate(Bytes),
    /// A join: the last [`JOIN_PUSH_TAIL`] messages the joiner's inbox received, each
    /// with the joiner as its one recipient.
    Joined(Vec<Committed>),
}

/// One page of a read.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in sequence order.
    pub items: Vec<T>,
    /// Whether more items follow the last one.
    pub more: bool,
}

/// Most message bytes in one page of a read (at least one message is always returned).
///
/// Bounds the frames a sync writes: tungstenite's write buffer keeps its peak size for
/// the life of the connection, so pages are kept small and clients follow `more`.
pub const PAGE_BYTES: usize = 64 * 1024;

/// Fills a [`Page`] by the rule every backend follows: at most `limit` items, and at
/// most [`PAGE_BYTES`] of message bytes, but never fewer than one item.
pub(crate) struct PageFill<T> {
    items: Vec<T>,
    limit: usize,
    bytes: usize,
    more: bool,
}

impl<T> PageFill<T> {
    /// An empty page of at most `limit` items.
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            items: Vec::new(),
            limit: limit as usize,
            bytes: 0,
            more: false,
        }
    }

    /// Items so far.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether another item may come (checked before reading it); when not, more
    /// follow.
    pub(crate) fn has_room(&mut self) -> bool {
        if self.items.len() == self.limit {
            self.more = true;
        }
        !self.more
    }

    /// Adds `item` of `len` message bytes; false when it does not fit (it is left out,
    /// and more follow).
    pub(crate) fn push(&mut self, item: T, len: usize) -> bool {
        if !self.has_room() || (self.bytes + len > PAGE_BYTES && !self.items.is_empty()) {
            self.more = true;
            return false;
        }
        self.bytes += len;
        self.items.push(item);
        true
    }

    /// The page.
    pub(crate) fn finish(self) -> Page<T> {
        Page {
            items: self.items,
            more: self.more,
        }
    }
}

/// How long a `(sender, cid)` pair deduplicates resends.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Messages, sequences, inboxes and idempotency keys.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Commits `batch` in order, durably, before returning; one outcome per op.
    ///
    /// Each message either gets the next `seq` of its conversation and the next `useq`
    /// of each member, or is recognised as a duplicate of an earlier `(from, cid)`
    /// within [`IDEMPOTENCY_WINDOW_MS`] (also within the same batch).
    async fn commit(&self, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError>;

    /// Inbox entries of `uid` with `useq > after`, at most `limit`, as `(useq, message JSON)`.
    async fn inbox(
        &self,
        uid: &str,
        after: u64,
        limit: u32,
    ) -> Result<Page<(u64, Bytes)>, StoreError>;

    /// Messages of `conv` with `seq > after`, at most `limit`, as message JSON.
    async fn history(&self, conv: &str, after: u64, limit: u32) -> Result<Page<Bytes>, StoreError>;

    /// The highest `seq` of `conv` (0 when it has no messages).
    async fn last_seq(&self, conv: &str) -> Result<u64, StoreError>;

    /// Forgets idempotency keys committed before `before_ms`; returns how many.
    async fn expire_idempotency(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// Finishes fan-outs that some writer began and did not finish (it died between
    /// storing a message and writing its inbox entries); returns how many messages it
    /// finished. Their [`Committed`] records wait in [`MessageStore::take_relayed`].
    ///
    /// A backend that commits in one atomic write never leaves one unfinished.
    async fn sweep(&self) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Messages committed by other writers whose inbox entries this store wrote (while
    /// committing or sweeping) since the last call. The caller delivers them, as it
    /// delivers its own: whoever writes an inbox entry pushes it.
    fn take_relayed(&self) -> Vec<Committed> {
        Vec::new()
    }

    /// Whether inbox entries this store wrote may have gone unreported since the last
    /// call: records meant for [`MessageStore::take_relayed`] were dropped (its queue
    /// is bounded), or a request was sent again after a lost connection, and its second
    /// run reported as already there the entries its first run wrote. Their messages
    /// are in the inboxes, but nobody pushes them, so the caller has the workers catch
    /// up ([`Deliver::lost`]).
    ///
    /// [`Deliver::lost`]: crate::business::Deliver::lost
    fn pushes_lost(&self) -> bool {
        false
    }
}

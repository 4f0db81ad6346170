//! Data layer: the traits every backend implements, and the embedded backend.
//!
//! The store is the authority for ordering: it assigns each conversation's `seq` and
//! each member's inbox `useq` inside the same atomic write that stores the message,
//! so sequences are gapless whatever crashes. It knows nothing of connections,
//! sessions or transports.

mod embedded;

pub use embedded::EmbeddedStore;

use async_trait::async_trait;
use bytes::Bytes;

/// Failures of the data layer. All of them are the server's fault, never the client's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The store is shutting down.
    #[error("store closed")]
    Closed,
}

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

/// How long a `(sender, cid)` pair deduplicates resends.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Messages, sequences, inboxes and idempotency keys.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Commits `batch` in order, durably, before returning.
    ///
    /// Each message either gets the next `seq` of its conversation and the next `useq`
    /// of each member, or is recognised as a duplicate of an earlier `(from, cid)`
    /// within [`IDEMPOTENCY_WINDOW_MS`] (also within the same batch).
    async fn commit(&self, batch: Vec<NewMessage>) -> Result<Vec<CommitOutcome>, StoreError>;

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
}

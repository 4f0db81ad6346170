//! The store's one error type, [`StoreError`]: what failed, with the backend's own
//! error kept as the source. It must not decide what a caller does about a failure
//! (every store failure is the server's fault, never the client's: the business layer
//! maps them all to an internal error).
//!
//! The backends' errors are held in an [`Arc`] where they are not `Clone`, because a
//! commit's failure is handed to every sender of its batch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Failures of the data layer. All of them are the server's fault, never the client's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("create {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// redb could not open or create the database file.
    #[error("database: {0}")]
    Open(#[source] Arc<redb::DatabaseError>),
    /// redb could not begin a transaction.
    #[error("database: {0}")]
    Transaction(#[source] Arc<redb::TransactionError>),
    /// redb could not set a transaction's durability.
    #[error("database: {0}")]
    Durability(#[source] Arc<redb::SetDurabilityError>),
    /// redb could not open a table.
    #[error("database: {0}")]
    Table(#[source] Arc<redb::TableError>),
    /// redb failed to read or write.
    #[error("database: {0}")]
    Storage(#[source] Arc<redb::StorageError>),
    /// redb could not commit a transaction.
    #[error("database: {0}")]
    Commit(#[source] Arc<redb::CommitError>),
    /// The blocking task that ran the database work panicked or was cancelled.
    #[error("store task: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
    /// Redis failed, or refused a request.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Redis spec named no URL.
    #[error("no Redis URL given")]
    NoRedisUrl,
    /// Redis did not answer the first connection in time.
    #[error("redis: no answer from {url} in {after:?}")]
    ConnectTimeout {
        /// The URL tried.
        url: String,
        /// How long it waited.
        after: Duration,
    },
    /// A conversation's fan-out lease stayed with another writer past the drain's
    /// deadline.
    #[error("fan-out of {conv} still held elsewhere after {after:?}")]
    FanoutHeld {
        /// The conversation.
        conv: String,
        /// How long the writer waited.
        after: Duration,
    },
    /// A service conversation's decision lease stayed with another node past the
    /// decision's deadline.
    #[error("decision of {conv} still held elsewhere after {after:?}")]
    DecisionHeld {
        /// The conversation.
        conv: String,
        /// How long the decision waited.
        after: Duration,
    },
    /// A join lost its conversation's lease before its copy was done (copying on could
    /// leave a hole in the joiner's inbox).
    #[error("join of {conv} lost its lease")]
    JoinLeaseLost {
        /// The conversation.
        conv: String,
    },
    /// A recall lost its conversation's lease before the message's recalled form was
    /// set and every fan-out up to it written (going on could let an inbox receive the
    /// original afterwards).
    #[error("recall in {conv} lost its lease")]
    RecallLeaseLost {
        /// The conversation.
        conv: String,
    },
    /// An erasure lost its conversation's lease before the erased forms were set (going
    /// on could let an inbox receive an original afterwards).
    #[error("erasure in {conv} lost its lease")]
    EraseLeaseLost {
        /// The conversation.
        conv: String,
    },
    /// Messages kept meeting cancelled ids or moving idempotency claims past the rounds
    /// a commit allows them.
    #[error("{count} message(s) kept meeting cancelled ids or moving claims")]
    Unsettled {
        /// How many.
        count: usize,
    },
    /// A value could not be encoded as JSON.
    #[error("encode: {0}")]
    Encode(#[source] Arc<serde_json::Error>),
    /// A stored JSON record could not be decoded.
    #[error("corrupt record: {what}: {source}")]
    Decode {
        /// Which record.
        what: String,
        /// Why.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// Stored records contradict each other (an inbox entry names a missing message,
    /// pending fan-outs out of order, a script's reply of the wrong shape). No source
    /// error: the store found the contradiction itself.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The embedded store's commit log could not be read or written.
    #[error("commit log: {0}")]
    Log(#[source] Arc<std::io::Error>),
    /// The store is shutting down.
    #[error("store closed")]
    Closed,
}

impl StoreError {
    /// A value that did not encode as JSON.
    pub(crate) fn encode(source: serde_json::Error) -> Self {
        StoreError::Encode(Arc::new(source))
    }

    /// A commit log failure.
    pub(crate) fn log(source: std::io::Error) -> Self {
        StoreError::Log(Arc::new(source))
    }

    /// A stored record named `what` that did not decode.
    pub(crate) fn decode(what: impl Into<String>, source: serde_json::Error) -> Self {
        StoreError::Decode {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}

/// `From` for the source errors that are not `Clone`: each is shared behind an [`Arc`].
macro_rules! from_shared {
    ($($source:ty => $variant:ident),* $(,)?) => {
        $(impl From<$source> for StoreError {
            fn from(e: $source) -> Self {
                StoreError::$variant(Arc::new(e))
            }
        })*
    };
}

from_shared! {
    redb::DatabaseError => Open,
    redb::TransactionError => Transaction,
    redb::SetDurabilityError => Durability,
    redb::TableError => Table,
    redb::StorageError => Storage,
    redb::CommitError => Commit,
    tokio::task::JoinError => Task,
}

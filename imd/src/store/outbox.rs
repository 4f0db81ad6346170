//! The webhook outbox: which conversations hold committed messages that the webhook
//! has not delivered yet, and how far each conversation's delivery has come.
//!
//! The outbox holds no copy of a message. A conversation's history is already a
//! durable, gapless log in `seq` order, so the outbox is only:
//!
//! - a **mark** per conversation, written by the commit that stores a message (in the
//!   same transaction on the embedded store; on Redis in the fan-out's mark script,
//!   before the message is stored, with the same age guarantee as the sweep's mark);
//! - a **cursor** per conversation: the last `seq` delivered (or skipped by a filter,
//!   or parked), and since when its next event has been failing. A commit that writes a
//!   conversation's first message while the outbox is on starts its cursor just before
//!   that message, so turning webhooks on never sends old history;
//! - a **lease** per conversation, so that one deliverer at a time, on any node,
//!   sends its events in order; a cursor moves only under its lease;
//! - the **parked** events (dead letters), capped by count.
//!
//! A conversation is unmarked once its cursor has reached its last message and no
//! commit marked it since it was listed; [`OutboxStore::outbox_unmark`] says how each
//! backend makes that safe.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// How old a mark listed by [`OutboxStore::outbox_due`] must be before
/// [`OutboxStore::outbox_unmark`] may remove it (every backend: on Redis a commit
/// marks its conversation within this time before it stores the message).
pub const OUTBOX_SETTLE_MS: u64 = 2000;

/// A conversation that may hold undelivered events, as listed by
/// [`OutboxStore::outbox_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMark {
    /// The conversation.
    pub conv: String,
    /// What the mark was when listed (opaque; given back to
    /// [`OutboxStore::outbox_unmark`]).
    pub mark: String,
    /// When the conversation was last marked (unix ms; the backend's clock).
    pub marked_ms: i64,
}

/// How far a conversation's delivery has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxCursor {
    /// The last seq delivered, skipped or parked.
    pub seq: u64,
    /// Since when (unix ms) the event after `seq` has been failing; 0: it has not
    /// failed.
    pub failing_since: i64,
}

/// An event that failed for longer than the webhook retries, set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// The event id (the message's id).
    pub event: String,
    /// Its conversation.
    pub conv: String,
    /// Its seq in the conversation.
    pub seq: u64,
    /// When it was committed (unix ms).
    pub ts: i64,
    /// When it was parked (unix ms).
    pub parked_ms: i64,
    /// The last failure.
    pub reason: String,
}

/// The webhook outbox (see the module documentation).
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Marked conversations whose mark is at least `min_age_ms` old, oldest marks
    /// first, at most about `limit`. Several nodes may list the same ones: the lease
    /// decides who delivers.
    async fn outbox_due(
        &self,
        min_age_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxMark>, StoreError>;

    /// How many conversations are marked.
    async fn outbox_marked(&self) -> Result<u64, StoreError>;

    /// Takes `conv`'s delivery lease for `ttl_ms` (or renews it when `token` holds it)
    /// and returns the cursor; `None` when another token holds it.
    async fn outbox_lease(
        &self,
        conv: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<Option<OutboxCursor>, StoreError>;

    /// Sets `conv`'s cursor and renews the lease, only while `token` holds it; false
    /// when it does not (nothing written: another deliverer took over).
    async fn outbox_advance(
        &self,
        conv: &str,
        token: &str,
        cursor: OutboxCursor,
        ttl_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Frees `conv`'s lease if `token` holds it.
    async fn outbox_release(&self, conv: &str, token: &str) -> Result<(), StoreError>;

    /// Unmarks `mark`'s conversation, whose cursor the caller saw reach `delivered`, its
    /// last seq. The embedded store checks, in one transaction, that the cursor is at
    /// the conversation's end. On Redis, where the mark and the conversation live in
    /// different slots, `mark` must come from [`OutboxStore::outbox_due`] with an age of
    /// at least the sweep's (a commit marks within that age before it stores), and the
    /// mark is removed only if no commit marked the conversation since it was listed.
    /// Returns whether it was removed.
    async fn outbox_unmark(&self, mark: &OutboxMark, delivered: u64) -> Result<bool, StoreError>;

    /// Parks `event`, dropping the oldest parked ones past `max`; returns its parked id
    /// and how many were dropped.
    async fn park(&self, event: &ParkedEvent, max: usize) -> Result<(u64, u64), StoreError>;

    /// Parked events with an id above `after`, oldest first, at most `limit`.
    async fn parked(&self, after: u64, limit: usize)
    -> Result<Vec<(u64, ParkedEvent)>, StoreError>;

    /// Removes parked event `id`; false when it was not there.
    async fn unpark(&self, id: u64) -> Result<bool, StoreError>;

    /// How many events are parked.
    async fn parked_count(&self) -> Result<u64, StoreError>;
}

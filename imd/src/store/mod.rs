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
//!   (shops and customer-service assignments), [`GroupStore`] and [`PushStore`]
//!   (devices' push tokens), and their union
//!   [`DirectoryStore`], which callers hold (`Arc<dyn DirectoryStore>`);
//! - `error`: [`StoreError`];
//! - `outbox`: [`OutboxStore`], the webhook outbox (marks and cursors over the
//!   conversations' history, leases, parked events);
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
mod outbox;
mod redis;

pub use directory::{
    Admit, Assigned, BlacklistStore, DirectoryStore, GroupStore, PushStore, PushToken, Rated,
    ServiceState, Shop, ShopCounters, ShopStore,
};
pub use embedded::{EMBEDDED_CACHE_BYTES, EmbeddedOptions, EmbeddedStore};
pub use error::StoreError;
pub use outbox::{OUTBOX_SETTLE_MS, OutboxCursor, OutboxMark, OutboxStore, ParkedEvent};
pub use redis::{NodeInfo, RedisStore, RouteAdded, RouteRestored};

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use shared::protocol::{Event, Message};

/// A message to commit, before the store gives it a `seq`.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Unique message id.
    pub id: String,
    /// Conversation id.
    pub conv: String,
    /// Sender uid (for an event, the uid that caused it).
    pub from: String,
    /// The sender's client message id, for idempotency.
    pub cid: Option<String>,
    /// What it says.
    pub content: Content,
    /// Commit time, unix milliseconds.
    pub ts: i64,
    /// Every member of the conversation (deduplicated); each gets an inbox entry.
    pub members: Vec<String>,
}

/// What a message says: a body from its sender, or an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A message a user sent. Committing it moves the sender's read position to it.
    Body(serde_json::Value),
    /// Something that happened to the conversation. It moves no read position and
    /// does not count as unread.
    Event(Event),
}

impl NewMessage {
    /// Whether it is an event message.
    pub fn is_event(&self) -> bool {
        matches!(self.content, Content::Event(_))
    }

    /// The message as clients see it, at `seq`.
    pub fn to_message(&self, seq: u64) -> Message {
        let (body, event) = match &self.content {
            Content::Body(b) => (Some(b.clone()), None),
            Content::Event(e) => (None, Some(event_json(e))),
        };
        Message {
            id: self.id.clone(),
            conv: self.conv.clone(),
            seq,
            from: self.from.clone(),
            body,
            event,
            ts: self.ts,
            cid: self.cid.clone(),
            recalled: false,
            erased: false,
        }
    }
}

/// An event as the JSON object of a message's `event`.
fn event_json(e: &Event) -> serde_json::Value {
    // Events are plain structs of strings and numbers: they always serialize.
    serde_json::to_value(e).unwrap_or(serde_json::Value::Null)
}

/// `json` (a stored message) as recalled: without its body, with `"recalled": true`.
pub fn recalled_json(json: &[u8]) -> Result<Bytes, StoreError> {
    let mut m: Message =
        serde_json::from_slice(json).map_err(|e| StoreError::decode("message", e))?;
    m.body = None;
    m.recalled = true;
    Ok(Bytes::from(
        serde_json::to_vec(&m).map_err(StoreError::encode)?,
    ))
}

/// `json` (a stored message) as erased: without its body, with `"erased": true` (see
/// [`MessageStore::erase`]).
pub fn erased_json(json: &[u8]) -> Result<Bytes, StoreError> {
    let mut m: Message =
        serde_json::from_slice(json).map_err(|e| StoreError::decode("message", e))?;
    m.body = None;
    m.erased = true;
    Ok(Bytes::from(
        serde_json::to_vec(&m).map_err(StoreError::encode)?,
    ))
}

/// Whether a stored message is one [`MessageStore::erase`] takes the body of: a
/// message with a body from `sender`.
pub fn erasable(m: &Message, sender: &str) -> bool {
    m.from == sender && m.body.is_some() && !m.is_event()
}

/// A recall: the sender takes a message back.
///
/// The store checks, atomically with the change, that the message exists, that
/// `sender` (when given) sent it, and that it was committed at or after `not_before`;
/// then it replaces the stored message, in the conversation and in every inbox that
/// holds it, by its recalled form ([`recalled_json`]: the body is gone from the
/// store, not hidden), and commits `event` (a [`Event::Recalled`] message).
#[derive(Debug, Clone)]
pub struct Recall {
    /// The conversation.
    pub conv: String,
    /// The message to recall.
    pub seq: u64,
    /// Who must have sent it; `None`: anyone (an admin's recall).
    pub sender: Option<String>,
    /// The oldest commit time still recallable (unix ms); `i64::MIN`: any.
    pub not_before: i64,
    /// Every user whose inbox may hold the message (a superset is fine: a store that
    /// copies messages into inboxes looks only in these, and skips those whose inbox
    /// has not reached the message's seq).
    pub holders: Vec<String>,
    /// The `recalled` event message to commit when the recall is allowed.
    pub event: NewMessage,
}

/// Why a recall was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallRefused {
    /// No message at that seq.
    NotFound,
    /// The message is an event, or someone else's.
    NotSender,
    /// Committed before `not_before`.
    TooLate,
    /// Recalled already (nothing was written).
    AlreadyRecalled,
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
    /// Move `uid`'s read position in `conv` forward to `seq`, clamped to the
    /// conversation's last seq; never backward.
    Read {
        /// The conversation.
        conv: String,
        /// The reader.
        uid: String,
        /// The highest seq read.
        seq: u64,
    },
    /// Take a message back.
    Recall(Recall),
}

impl Op {
    /// The conversation the op writes.
    pub fn conv(&self) -> &str {
        match self {
            Op::Message(m) => &m.conv,
            Op::Join { conv, .. } | Op::Read { conv, .. } => conv,
            Op::Recall(r) => &r.conv,
        }
    }
}

/// How many of a join's inbox entries are pushed; the rest wait for `sync`.
pub const JOIN_PUSH_TAIL: usize = 256;

/// A committed message: its serialized form and where it landed in each inbox.
#[derive(Debug, Clone, PartialEq)]
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
    /// A read: the reader's position after it, and whether it moved.
    Read {
        /// The position now.
        seq: u64,
        /// Whether this op moved it.
        moved: bool,
    },
    /// A recall: its committed `recalled` event message, or why it was refused.
    Recalled(Result<Committed, RecallRefused>),
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvEntry {
    /// The conversation.
    pub conv: String,
    /// Its last activity: the commit time of its last message (unix ms).
    pub ts: i64,
    /// Its last message, as JSON (event messages included).
    pub last: Bytes,
    /// Its last seq.
    pub last_seq: u64,
    /// The user's read position (0: none).
    pub read_seq: u64,
    /// Messages with `seq > read_seq` that are neither the user's own nor events:
    /// exact.
    pub unread: u64,
    /// Every member's read position (members with none left out), for direct and
    /// service conversations; empty for groups.
    pub reads: Vec<(String, u64)>,
}

/// Where a page of a conversation list starts: after the entry at `(ts, conv)` in
/// the list's order (newest activity first; equal times by conversation id,
/// descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvCursor {
    /// The activity time of the last entry of the previous page.
    pub ts: i64,
    /// Its conversation.
    pub conv: String,
}

impl ConvCursor {
    /// The cursor of the page after `e`.
    pub fn after(e: &ConvEntry) -> Self {
        Self {
            ts: e.ts,
            conv: e.conv.clone(),
        }
    }
}

/// One page of a read.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in sequence order.
    pub items: Vec<T>,
    /// Whether more items follow the last one.
    pub more: bool,
    /// The read asked for positions that retention removed ([`MessageStore::trim`]):
    /// it starts at the oldest one kept.
    pub trimmed: bool,
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
    trimmed: bool,
}

impl<T> PageFill<T> {
    /// An empty page of at most `limit` items.
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            items: Vec::new(),
            limit: limit as usize,
            bytes: 0,
            more: false,
            trimmed: false,
        }
    }

    /// Records that the read started before the oldest position kept.
    pub(crate) fn set_trimmed(&mut self) {
        self.trimmed = true;
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
            trimmed: self.trimmed,
        }
    }
}

/// How long a `(sender, cid)` pair deduplicates resends.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Where a retention pass stands between calls of [`MessageStore::trim`]: a new one
/// (`TrimPass::default()`) starts a pass, and the store moves it on until
/// [`TrimPass::done`]. What it holds is the backend's (the embedded store: the table
/// and the last key looked at; Redis: the shard).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrimPass {
    /// The part of the pass the next call looks at (the backend's numbering).
    pub(crate) part: u32,
    /// The last key looked at in that part; `None`: its start.
    pub(crate) after: Option<String>,
    /// The pass is over.
    pub(crate) done: bool,
}

impl TrimPass {
    /// Whether the pass has looked at everything.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Moves on to part `part`, from its start.
    pub(crate) fn next_part(&mut self, part: u32) {
        self.part = part;
        self.after = None;
    }
}

/// Messages, sequences, inboxes and idempotency keys.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Commits `batch` in order, durably, before returning; one outcome per op.
    ///
    /// Each message either gets the next `seq` of its conversation and the next `useq`
    /// of each member, or is recognised as a duplicate of an earlier `(from, cid)`
    /// within [`IDEMPOTENCY_WINDOW_MS`] (also within the same batch). With its inbox
    /// entries, a new message moves each member's conversation list entry to its
    /// commit time; a [`Content::Body`] message also moves its sender's read position
    /// to its seq, in the same write. [`Op::Read`] and [`Op::Recall`] are described on
    /// their types.
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

    /// A page of `uid`'s conversations, newest activity first, after `before` (from the
    /// newest when `None`), at most `limit` (at least 1). A conversation is in the list
    /// once the user's inbox holds one of its messages; its activity is the commit
    /// time of its last message. Reads an index ordered by activity: the cost of a page
    /// does not grow with the number of the user's conversations.
    async fn conversations(
        &self,
        uid: &str,
        before: Option<&ConvCursor>,
        limit: u32,
    ) -> Result<Page<ConvEntry>, StoreError>;

    /// Whether `conv` is in `uid`'s conversation list.
    async fn in_conversations(&self, uid: &str, conv: &str) -> Result<bool, StoreError>;

    /// The read positions recorded in `conv`, by uid (users with none left out).
    async fn read_positions(&self, conv: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// Forgets idempotency keys committed before `before_ms`; returns how many.
    async fn expire_idempotency(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// One step of a retention pass: removes messages committed before `before_ms`
    /// from their conversations and from the inboxes, oldest first from each one's
    /// head (a conversation's, an inbox's), about `budget` of them at most, in small
    /// writes; returns how many entries (messages and inbox entries) it removed. Call
    /// again with the same `pass` until [`TrimPass::done`].
    ///
    /// What goes, goes for good: a read that starts before what is kept answers from
    /// the oldest entry kept, with [`Page::trimmed`]; a conversation's `seq`s and a
    /// user's `useq`s go on from where they were; a conversation all of whose messages
    /// in a user's inbox left leaves the user's list; a recall or an idempotency key
    /// that names a removed message finds none. Safe to run on several processes at
    /// once, and beside commits: a message still being fanned out is never removed.
    async fn trim(
        &self,
        before_ms: i64,
        budget: usize,
        pass: &mut TrimPass,
    ) -> Result<u64, StoreError>;

    /// Erasure, in the conversation: replaces each message of `seqs` in `conv` that
    /// `sender` sent with a body ([`erasable`]) by its erased form ([`erased_json`]:
    /// the body is gone from the store, the message stays as a tombstone), as a recall
    /// does, without an event message; returns how many it changed (an erased, recalled
    /// or missing one is left as it is). The embedded store's inboxes show the
    /// conversation's copy, so they change with it; a store that copies messages into
    /// inboxes needs [`MessageStore::erase_copies`] as well.
    async fn erase(&self, conv: &str, sender: &str, seqs: &[u64]) -> Result<u64, StoreError>;

    /// Erasure, in one inbox: replaces each copy in `uid`'s inbox of a message of
    /// `targets` (`(conv, seq)` pairs) by its erased form; returns how many it changed.
    /// Looks at the whole inbox, a chunk per request. Nothing to do for a store whose
    /// inboxes point at the conversation's copy.
    async fn erase_copies(
        &self,
        _uid: &str,
        _targets: &HashSet<(String, u64)>,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }

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

    /// The store's generation, as last verified: an id that changes when the store has
    /// lost state it acknowledged, so that `useq`s and `seq`s may be given again.
    /// Clients see it in every `sync` answer; workers compare it on every delivery.
    fn generation(&self) -> Generation;

    /// Checks whether the store lost acknowledged state since the last check, and
    /// returns the generation now. A store that cannot lose what it acknowledged (the
    /// embedded store fsyncs every commit) never changes it. The commit task calls
    /// this after each commit and before delivering, so that nothing written after a
    /// loss reaches a device under the generation from before it.
    async fn verify_generation(&self) -> Result<Generation, StoreError> {
        Ok(self.generation())
    }

    /// [`MessageStore::verify_generation`] without a write of its own: it sees a loss
    /// of everything, and a generation another process made, but not a loss of only
    /// this process's last writes (the check after its commits sees those). For reads
    /// (a sync) and the once-a-second watch.
    async fn read_generation(&self) -> Result<Generation, StoreError> {
        self.verify_generation().await
    }
}

/// A store generation: `<unix ms of its creation>-<random>`. A later one is newer; a
/// device that sees a new one has seen state that no longer exists (see
/// `docs/protocol.md`, *Generations*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(pub Arc<str>);

impl Generation {
    /// A new generation, created at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        let rand = uuid::Uuid::now_v7().as_u128() as u32;
        Generation(format!("{now_ms}-{rand:08x}").into())
    }

    /// When it was created (0 for an id not of this form).
    pub fn created_ms(&self) -> i64 {
        self.0
            .split_once('-')
            .and_then(|(ms, _)| ms.parse().ok())
            .unwrap_or(0)
    }

    /// Whether `self` came after `other`.
    pub fn newer_than(&self, other: &Generation) -> bool {
        (self.created_ms(), &*self.0) > (other.created_ms(), &*other.0)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

//! Messages in redb: conversations, inboxes, idempotency keys, each user's
//! conversation list and the read positions. Their rows are written by
//! [`Tables::write`]: by [`commit_batch`] in one durable write transaction per batch (the
//! direct commit, `--store-log false`, and a join or a recall), or behind the commit log
//! by its indexer (`logged`), many batches to a transaction; either way a crash keeps a
//! batch whole or not at all. It must not read or write the directory's tables.
//!
//! The conversation list is an index ordered by activity ([`BY_ACTIVITY`]), so a page
//! of it costs the same whatever the number of the user's conversations; unread counts
//! come from two read positions and a running count of event messages ([`EVENTS`]),
//! never from reading the messages in between.

use std::collections::{HashMap, VecDeque};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use shared::protocol::Message;

use super::outbox::OutboxTables;
use super::{Db, EmbeddedStore, scan_second};
use crate::store::{
    CommitOutcome, Committed, ConvCursor, ConvEntry, Generation, IDEMPOTENCY_WINDOW_MS,
    JOIN_PUSH_TAIL, MessageStore, NewMessage, Op, OutboxCursor, Page, PageFill, Recall,
    RecallRefused, StoreError, TrimPass, recalled_json,
};

/// `(conv, seq)` → message JSON.
pub(super) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// `conv` → last `seq`.
pub(super) const CONV_SEQ: TableDefinition<&str, u64> = TableDefinition::new("conv_seq");
/// `(uid, useq)` → `(conv, seq)`.
pub(super) const INBOX: TableDefinition<(&str, u64), (&str, u64)> = TableDefinition::new("inbox");
/// `uid` → last `useq`.
pub(super) const USER_SEQ: TableDefinition<&str, u64> = TableDefinition::new("user_seq");
/// `(from, cid)` → `(conv, seq, ts)`.
pub(super) const IDEM: TableDefinition<(&str, &str), (&str, u64, i64)> =
    TableDefinition::new("idem");
/// `(ts, from, cid)` → (), to expire [`IDEM`] in time order.
const IDEM_BY_TS: TableDefinition<(i64, &str, &str), ()> = TableDefinition::new("idem_by_ts");
/// `(conv, uid)` → the last `seq` of a service conversation in `uid`'s inbox, so that
/// a join copies only what the joiner is missing.
pub(super) const MEMBER_SEQ: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("member_seq");
/// `(uid, conv)` → `(ts, seq)`: `conv`'s place in `uid`'s conversation list, its
/// activity (the commit time of the last of its messages in `uid`'s inbox, never moved
/// back) and that message's seq. The key of its [`BY_ACTIVITY`] row.
pub(super) const ACTIVITY: TableDefinition<(&str, &str), (i64, u64)> =
    TableDefinition::new("conv_activity");
/// `(uid, ts, conv)` → seq: [`ACTIVITY`] ordered by activity, read backward for the
/// list (newest first, equal times by conversation id descending).
pub(super) const BY_ACTIVITY: TableDefinition<(&str, i64, &str), u64> =
    TableDefinition::new("conv_by_activity");
/// `(conv, uid)` → `uid`'s read position in `conv` (the highest seq read; only moves
/// forward).
pub(super) const READS: TableDefinition<(&str, &str), u64> = TableDefinition::new("read_seq");
/// `(conv, seq)` → how many event messages `conv` holds up to and including `seq`; one
/// row per event message. The events in `(a, b]` are the count at or before `b` less
/// the count at or before `a`: two lookups, whatever lies between.
pub(super) const EVENTS: TableDefinition<(&str, u64), u64> = TableDefinition::new("events");

/// The last seq of `conv` as `txn` sees it (0: none).
pub(super) fn last_seq_in(txn: &WriteTransaction, conv: &str) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(CONV_SEQ)?
        .get(conv)?
        .map_or(0, |g| g.value()))
}

/// Creates the tables of this domain (see [`super::EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(MESSAGES)?;
    txn.open_table(CONV_SEQ)?;
    txn.open_table(INBOX)?;
    txn.open_table(USER_SEQ)?;
    txn.open_table(IDEM)?;
    txn.open_table(IDEM_BY_TS)?;
    txn.open_table(MEMBER_SEQ)?;
    txn.open_table(ACTIVITY)?;
    txn.open_table(BY_ACTIVITY)?;
    txn.open_table(READS)?;
    txn.open_table(EVENTS)?;
    Ok(())
}

/// The tables a commit writes, open in its write transaction.
pub(super) struct Tables<'t> {
    /// [`MESSAGES`].
    messages: Table<'t, (&'static str, u64), &'static [u8]>,
    /// [`CONV_SEQ`].
    conv_seq: Table<'t, &'static str, u64>,
    /// [`INBOX`].
    inbox: Table<'t, (&'static str, u64), (&'static str, u64)>,
    /// [`USER_SEQ`].
    user_seq: Table<'t, &'static str, u64>,
    /// [`IDEM`].
    idem: Table<'t, (&'static str, &'static str), (&'static str, u64, i64)>,
    /// [`IDEM_BY_TS`].
    idem_by_ts: Table<'t, (i64, &'static str, &'static str), ()>,
    /// [`MEMBER_SEQ`].
    member_seq: Table<'t, (&'static str, &'static str), u64>,
    /// [`ACTIVITY`].
    activity: Table<'t, (&'static str, &'static str), (i64, u64)>,
    /// [`BY_ACTIVITY`].
    by_activity: Table<'t, (&'static str, i64, &'static str), u64>,
    /// [`READS`].
    reads: Table<'t, (&'static str, &'static str), u64>,
    /// [`EVENTS`].
    events: Table<'t, (&'static str, u64), u64>,
    /// The webhook outbox's marks and cursors, when the outbox is on.
    outbox: Option<OutboxTables<'t>>,
    /// Messages committed earlier in this batch, by `(from, cid)`: the table lookups
    /// would find them too, but this spares reading back what we just wrote.
    in_batch: HashMap<(String, String), Bytes>,
}

/// A message whose place is decided: its seq, every member's useq, its JSON. Its rows
/// are written from it ([`Tables::write`]): at once by a direct commit, or later by the
/// indexer from the commit log (`logged`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Placed {
    /// Where it landed, and its JSON.
    pub(super) committed: Committed,
    /// The sender.
    pub(super) from: String,
    /// The sender's client message id.
    pub(super) cid: Option<String>,
    /// Whether it is an event message.
    pub(super) event: bool,
}

impl Placed {
    /// `m` at `seq`, with `recipients` (each member and its useq).
    pub(super) fn new(
        m: &NewMessage,
        seq: u64,
        recipients: Vec<(String, u64)>,
    ) -> Result<Self, StoreError> {
        let json = serde_json::to_vec(&m.to_message(seq)).map_err(StoreError::encode)?;
        Ok(Self {
            committed: Committed {
                json: json.into(),
                conv: m.conv.clone(),
                seq,
                ts: m.ts,
                recipients,
            },
            from: m.from.clone(),
            cid: m.cid.clone(),
            event: m.is_event(),
        })
    }
}

/// Rows that several messages of one write move, each kept at its last value until
/// [`Tables::finish`] writes it once: a conversation's seq, a user's useq, a service
/// conversation's member seqs, a conversation's place in a member's list (its latest
/// time and seq), a read position (the highest). The indexer writes thousands of
/// messages at a time, and most of them share these keys.
#[derive(Default)]
pub(super) struct Later<'a> {
    /// `conv` → last seq.
    conv_seq: HashMap<&'a str, u64>,
    /// `uid` → last useq.
    user_seq: HashMap<&'a str, u64>,
    /// `(conv, uid)` → last seq, for service conversations.
    member_seq: HashMap<(&'a str, &'a str), u64>,
    /// `(uid, conv)` → the latest (time, seq).
    places: HashMap<(&'a str, &'a str), (i64, u64)>,
    /// `(conv, uid)` → the highest read position.
    reads: HashMap<(&'a str, &'a str), u64>,
}

impl<'a> Later<'a> {
    /// Moves `uid`'s read position in `conv` to `seq` if that is forward of what waits.
    pub(super) fn read(&mut self, conv: &'a str, uid: &'a str, seq: u64) {
        let at = self.reads.entry((conv, uid)).or_insert(seq);
        *at = (*at).max(seq);
    }
}

/// The message that an earlier send with `(from, cid)` committed, if that key still
/// deduplicates a send at `ts`: within the window, and its message not removed by
/// retention (a key past either is taken over by the new message).
pub(super) fn earlier_send(
    idem: &impl ReadableTable<(&'static str, &'static str), (&'static str, u64, i64)>,
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    from: &str,
    cid: &str,
    ts: i64,
) -> Result<Option<Bytes>, StoreError> {
    let Some((conv, seq, at)) = idem.get((from, cid))?.map(|g| {
        let (conv, seq, at) = g.value();
        (conv.to_owned(), seq, at)
    }) else {
        return Ok(None);
    };
    if ts - at >= IDEMPOTENCY_WINDOW_MS {
        return Ok(None);
    }
    Ok(messages
        .get((conv.as_str(), seq))?
        .map(|g| Bytes::copy_from_slice(g.value())))
}

/// Commits `batch` in one durable transaction; with the outbox on (`outbox` holds the
/// deliverer's cursor moves that waited), writes its marks and those moves too.
pub(super) fn commit_batch(
    db: &Db,
    batch: Vec<Op>,
    outbox: Option<Vec<(String, OutboxCursor)>>,
) -> Result<Vec<CommitOutcome>, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut t = Tables::open(&txn, outbox.is_some())?;
        t.move_cursors(outbox)?;
        for op in batch {
            out.push(match op {
                Op::Message(m) => t.message(&m)?,
                Op::Join { conv, uid } => t.join(&conv, &uid)?,
                Op::Read { conv, uid, seq } => t.read(&conv, &uid, seq)?,
                Op::Recall(r) => t.recall(&r)?,
            });
        }
    }
    txn.commit()?;
    Ok(out)
}

impl<'t> Tables<'t> {
    /// Opens every table of a commit in `txn` (the outbox's when `outbox`).
    pub(super) fn open(txn: &'t WriteTransaction, outbox: bool) -> Result<Self, StoreError> {
        Ok(Self {
            messages: txn.open_table(MESSAGES)?,
            conv_seq: txn.open_table(CONV_SEQ)?,
            inbox: txn.open_table(INBOX)?,
            user_seq: txn.open_table(USER_SEQ)?,
            idem: txn.open_table(IDEM)?,
            idem_by_ts: txn.open_table(IDEM_BY_TS)?,
            member_seq: txn.open_table(MEMBER_SEQ)?,
            activity: txn.open_table(ACTIVITY)?,
            by_activity: txn.open_table(BY_ACTIVITY)?,
            reads: txn.open_table(READS)?,
            events: txn.open_table(EVENTS)?,
            outbox: outbox.then(|| OutboxTables::open(txn)).transpose()?,
            in_batch: HashMap::new(),
        })
    }

    /// Writes the webhook deliverer's cursor `moves` (when the outbox is on).
    pub(super) fn move_cursors(
        &mut self,
        moves: Option<Vec<(String, OutboxCursor)>>,
    ) -> Result<(), StoreError> {
        if let (Some(tables), Some(moves)) = (&mut self.outbox, moves) {
            tables.write_cursors(moves)?;
        }
        Ok(())
    }

    /// Commits `m`, or recognises it as a resend of an earlier `(from, cid)`.
    fn message(&mut self, m: &NewMessage) -> Result<CommitOutcome, StoreError> {
        if let Some(cid) = &m.cid {
            if let Some(json) = self.in_batch.get(&(m.from.clone(), cid.clone())) {
                return Ok(CommitOutcome::Duplicate(json.clone()));
            }
            if let Some(json) = earlier_send(&self.idem, &self.messages, &m.from, cid, m.ts)? {
                return Ok(CommitOutcome::Duplicate(json));
            }
        }
        Ok(CommitOutcome::New(self.append(m)?))
    }

    /// Appends `m` to its conversation and its members' inboxes: places it after what
    /// the tables hold, then writes its rows.
    fn append(&mut self, m: &NewMessage) -> Result<Committed, StoreError> {
        let seq = self.conv_seq.get(m.conv.as_str())?.map_or(0, |g| g.value()) + 1;
        let mut recipients = Vec::with_capacity(m.members.len());
        for uid in &m.members {
            let useq = self.user_seq.get(uid.as_str())?.map_or(0, |g| g.value()) + 1;
            recipients.push((uid.clone(), useq));
        }
        let placed = Placed::new(m, seq, recipients)?;
        let mut later = Later::default();
        self.write(&placed, &mut later)?;
        self.finish(later)?;
        if let Some(cid) = &m.cid {
            self.in_batch
                .insert((m.from.clone(), cid.clone()), placed.committed.json.clone());
        }
        Ok(placed.committed)
    }

    /// Writes the rows of a placed message, with everything a new message moves: the
    /// counters, the members' inboxes and conversation lists, the sender's read
    /// position (for a body) or the event count (for an event), the idempotency key
    /// (taking over an expired one). The rows that only the last of several messages
    /// decides wait in `later`, for [`Tables::finish`].
    pub(super) fn write<'p>(
        &mut self,
        p: &'p Placed,
        later: &mut Later<'p>,
    ) -> Result<(), StoreError> {
        let Committed {
            json,
            conv,
            seq,
            ts,
            recipients,
        } = &p.committed;
        let (conv, seq, ts) = (conv.as_str(), *seq, *ts);
        later.conv_seq.insert(conv, seq);
        if let Some(outbox) = &mut self.outbox {
            outbox.mark(conv, seq, ts)?;
        }
        for (uid, useq) in recipients {
            let uid = uid.as_str();
            later.user_seq.insert(uid, *useq);
            self.inbox.insert((uid, *useq), (conv, seq))?;
            if conv.starts_with("s:") {
                later.member_seq.insert((conv, uid), seq);
            }
            let place = later.places.entry((uid, conv)).or_insert((ts, seq));
            *place = (place.0.max(ts), place.1.max(seq));
        }
        if p.event {
            let before = events_upto(&self.events, conv, seq)?;
            self.events.insert((conv, seq), before + 1)?;
        } else {
            // The sender has read what it sent.
            later.read(conv, &p.from, seq);
        }
        if let Some(cid) = &p.cid {
            let key = (p.from.as_str(), cid.as_str());
            let old = self.idem.insert(key, (conv, seq, ts))?.map(|g| g.value().2);
            if let Some(old_ts) = old {
                self.idem_by_ts.remove((old_ts, key.0, key.1))?;
            }
            self.idem_by_ts.insert((ts, key.0, key.1), ())?;
        }
        self.messages.insert((conv, seq), json.as_ref())?;
        Ok(())
    }

    /// Writes what waited in `later`: each key once, at its last value.
    pub(super) fn finish(&mut self, later: Later<'_>) -> Result<(), StoreError> {
        for (conv, seq) in later.conv_seq {
            self.conv_seq.insert(conv, seq)?;
        }
        for (uid, useq) in later.user_seq {
            self.user_seq.insert(uid, useq)?;
        }
        for (key, seq) in later.member_seq {
            self.member_seq.insert(key, seq)?;
        }
        for ((uid, conv), (ts, seq)) in later.places {
            self.touch(uid, conv, ts, seq)?;
        }
        for (key, seq) in later.reads {
            self.reads.insert(key, seq)?;
        }
        Ok(())
    }

    /// Moves `conv` in `uid`'s list to `ts`, its last message there to `seq`; neither
    /// moves back.
    fn touch(&mut self, uid: &str, conv: &str, ts: i64, seq: u64) -> Result<(), StoreError> {
        let old = self.activity.get((uid, conv))?.map(|g| g.value());
        let (ts, seq) = match old {
            Some((old_ts, old_seq)) => {
                self.by_activity.remove((uid, old_ts, conv))?;
                (ts.max(old_ts), seq.max(old_seq))
            }
            None => (ts, seq),
        };
        self.activity.insert((uid, conv), (ts, seq))?;
        self.by_activity.insert((uid, ts, conv), seq)?;
        Ok(())
    }

    /// Copies the messages of `conv` that `uid` does not have yet to the end of its
    /// inbox, in seq order, and puts `conv` in its list at the last one's time.
    fn join(&mut self, conv: &str, uid: &str) -> Result<CommitOutcome, StoreError> {
        let have = self.member_seq.get((conv, uid))?.map_or(0, |g| g.value());
        let mut useq = self.user_seq.get(uid)?.map_or(0, |g| g.value());
        let mut last = have;
        let mut last_json: Option<Bytes> = None;
        let mut tail = VecDeque::with_capacity(JOIN_PUSH_TAIL);
        for entry in self.messages.range((conv, have + 1)..=(conv, u64::MAX))? {
            let (k, v) = entry?;
            let seq = k.value().1;
            last = seq;
            useq += 1;
            self.inbox.insert((uid, useq), (conv, seq))?;
            if tail.len() == JOIN_PUSH_TAIL {
                tail.pop_front();
            }
            let json = Bytes::copy_from_slice(v.value());
            last_json = Some(json.clone());
            tail.push_back((seq, useq, json));
        }
        self.user_seq.insert(uid, useq)?;
        self.member_seq.insert((conv, uid), last)?;
        if let Some(json) = last_json {
            self.touch(uid, conv, stored_ts(&json)?, last)?;
        }
        let joined = tail
            .into_iter()
            .map(|(seq, useq, json)| Committed {
                json,
                conv: conv.to_owned(),
                seq,
                ts: 0,
                recipients: vec![(uid.to_owned(), useq)],
            })
            .collect();
        Ok(CommitOutcome::Joined(joined))
    }

    /// Moves `uid`'s read position in `conv` forward to `seq`, at most to the last seq.
    fn read(&mut self, conv: &str, uid: &str, seq: u64) -> Result<CommitOutcome, StoreError> {
        let last = self.conv_seq.get(conv)?.map_or(0, |g| g.value());
        let now = self.reads.get((conv, uid))?.map_or(0, |g| g.value());
        let to = seq.min(last);
        if to <= now {
            return Ok(CommitOutcome::Read {
                seq: now,
                moved: false,
            });
        }
        self.reads.insert((conv, uid), to)?;
        Ok(CommitOutcome::Read {
            seq: to,
            moved: true,
        })
    }

    /// Recalls a message, if `r` may: rewrites it in place (inbox rows name `(conv,
    /// seq)`, so every inbox shows the recalled form at once) and commits the event.
    fn recall(&mut self, r: &Recall) -> Result<CommitOutcome, StoreError> {
        let Some(original) = self
            .messages
            .get((r.conv.as_str(), r.seq))?
            .map(|g| Bytes::copy_from_slice(g.value()))
        else {
            return Ok(CommitOutcome::Recalled(Err(RecallRefused::NotFound)));
        };
        let m: Message =
            serde_json::from_slice(&original).map_err(|e| StoreError::decode("message", e))?;
        let refused = if m.is_event() || r.sender.as_ref().is_some_and(|s| *s != m.from) {
            Some(RecallRefused::NotSender)
        } else if m.ts < r.not_before {
            Some(RecallRefused::TooLate)
        } else if m.recalled {
            Some(RecallRefused::AlreadyRecalled)
        } else {
            None
        };
        if let Some(why) = refused {
            return Ok(CommitOutcome::Recalled(Err(why)));
        }
        let recalled = recalled_json(&original)?;
        self.messages
            .insert((r.conv.as_str(), r.seq), recalled.as_ref())?;
        // A resend later in this batch answers with what the store now holds.
        if let Some(cid) = m.cid
            && let Some(json) = self.in_batch.get_mut(&(m.from, cid))
        {
            *json = recalled;
        }
        Ok(CommitOutcome::Recalled(Ok(self.append(&r.event)?)))
    }
}

/// How many event messages `conv` holds with seq at most `seq`.
pub(super) fn events_upto(
    events: &impl ReadableTable<(&'static str, u64), u64>,
    conv: &str,
    seq: u64,
) -> Result<u64, StoreError> {
    match events.range((conv, 0)..=(conv, seq))?.next_back() {
        Some(entry) => Ok(entry?.1.value()),
        None => Ok(0),
    }
}

/// The commit time inside a stored message's JSON.
pub(super) fn stored_ts(json: &[u8]) -> Result<i64, StoreError> {
    /// The one field read.
    #[derive(serde::Deserialize)]
    struct Ts {
        /// Commit time, unix ms.
        ts: i64,
    }
    let t: Ts = serde_json::from_slice(json).map_err(|e| StoreError::decode("message", e))?;
    Ok(t.ts)
}

/// A page of `uid`'s conversation list (see [`MessageStore::conversations`]).
fn conversations_page(
    db: &Db,
    uid: &str,
    before: Option<&ConvCursor>,
    limit: u32,
) -> Result<Page<ConvEntry>, StoreError> {
    let txn = db.begin_read()?;
    let by_activity = txn.open_table(BY_ACTIVITY)?;
    let messages = txn.open_table(MESSAGES)?;
    let reads = txn.open_table(READS)?;
    let events = txn.open_table(EVENTS)?;
    // The string right after `uid`: every key of `uid` sorts below (next, ..).
    let next = format!("{uid}\0");
    let rows = match before {
        Some(c) => by_activity.range((uid, i64::MIN, "")..(uid, c.ts, c.conv.as_str()))?,
        None => by_activity.range((uid, i64::MIN, "")..(next.as_str(), i64::MIN, ""))?,
    };
    let limit = limit.max(1) as usize;
    let mut items = Vec::new();
    let mut more = false;
    for row in rows.rev() {
        if items.len() == limit {
            more = true;
            break;
        }
        let (k, v) = row?;
        let (_, ts, conv) = k.value();
        let last_seq = v.value();
        // Retention may have removed it, before the user's list entry follows (the
        // next pass removes that): nothing to show.
        let Some(last) = messages
            .get((conv, last_seq))?
            .map(|g| Bytes::copy_from_slice(g.value()))
        else {
            continue;
        };
        let first_kept = match messages.range((conv, 0)..=(conv, u64::MAX))?.next() {
            Some(entry) => entry?.0.value().1,
            None => continue,
        };
        let read_seq = reads.get((conv, uid))?.map_or(0, |g| g.value());
        // Own messages never lie past the reader's position (sending moves it), so the
        // unread ones are those past it less the events among them; messages that
        // retention removed count no more.
        let from = read_seq.min(last_seq).max(first_kept - 1);
        let events_between =
            events_upto(&events, conv, last_seq)?.saturating_sub(events_upto(&events, conv, from)?);
        let unread = (last_seq - from).saturating_sub(events_between);
        let reads = if conv.starts_with("d:") || conv.starts_with("s:") {
            scan_second(&reads, conv, |uid, v| (uid.to_owned(), v.value()))?
        } else {
            Vec::new()
        };
        items.push(ConvEntry {
            conv: conv.to_owned(),
            ts,
            last,
            last_seq,
            read_seq,
            unread,
            reads,
        });
    }
    Ok(Page {
        items,
        more,
        trimmed: false,
    })
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    fn generation(&self) -> Generation {
        self.generation.clone()
    }

    async fn commit(&self, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(logged) = &self.logged {
            let (logged, outbox) = (logged.clone(), self.outbox);
            return self
                .blocking(move |db| logged.commit(db, batch, outbox))
                .await;
        }
        let outbox = self.outbox.then(|| self.cursors.take());
        self.blocking(move |db| commit_batch(db, batch, outbox))
            .await
    }

    async fn inbox(
        &self,
        uid: &str,
        after: u64,
        limit: u32,
    ) -> Result<Page<(u64, Bytes)>, StoreError> {
        self.indexed().await?;
        let uid = uid.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let inbox = txn.open_table(INBOX)?;
            let messages = txn.open_table(MESSAGES)?;
            let start = after.saturating_add(1);
            let mut page = PageFill::new(limit);
            let first_kept = match inbox
                .range((uid.as_str(), 0)..=(uid.as_str(), u64::MAX))?
                .next()
            {
                Some(entry) => entry?.0.value().1,
                None => {
                    let user_seq = txn.open_table(USER_SEQ)?;
                    user_seq.get(uid.as_str())?.map_or(0, |g| g.value()) + 1
                }
            };
            if start < first_kept {
                page.set_trimmed();
            }
            for entry in inbox.range((uid.as_str(), start)..=(uid.as_str(), u64::MAX))? {
                let (k, v) = entry?;
                if !page.has_room() {
                    break;
                }
                let (_, useq) = k.value();
                let (conv, seq) = v.value();
                // Retention removed the message; its inbox entry goes in the same pass.
                let Some(json) = messages
                    .get((conv, seq))?
                    .map(|g| Bytes::copy_from_slice(g.value()))
                else {
                    page.set_trimmed();
                    continue;
                };
                let len = json.len();
                if !page.push((useq, json), len) {
                    break;
                }
            }
            Ok(page.finish())
        })
        .await
    }

    async fn history(&self, conv: &str, after: u64, limit: u32) -> Result<Page<Bytes>, StoreError> {
        self.indexed().await?;
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let messages = txn.open_table(MESSAGES)?;
            let start = after.saturating_add(1);
            let mut page = PageFill::new(limit);
            let first_kept = match messages
                .range((conv.as_str(), 0)..=(conv.as_str(), u64::MAX))?
                .next()
            {
                Some(entry) => entry?.0.value().1,
                None => {
                    let conv_seq = txn.open_table(CONV_SEQ)?;
                    conv_seq.get(conv.as_str())?.map_or(0, |g| g.value()) + 1
                }
            };
            if start < first_kept {
                page.set_trimmed();
            }
            for entry in messages.range((conv.as_str(), start)..=(conv.as_str(), u64::MAX))? {
                let (_, v) = entry?;
                if !page.has_room() {
                    break;
                }
                let len = v.value().len();
                if !page.push(Bytes::copy_from_slice(v.value()), len) {
                    break;
                }
            }
            Ok(page.finish())
        })
        .await
    }

    async fn conversations(
        &self,
        uid: &str,
        before: Option<&ConvCursor>,
        limit: u32,
    ) -> Result<Page<ConvEntry>, StoreError> {
        self.indexed().await?;
        let uid = uid.to_owned();
        let before = before.cloned();
        self.blocking(move |db| conversations_page(db, &uid, before.as_ref(), limit))
            .await
    }

    async fn in_conversations(&self, uid: &str, conv: &str) -> Result<bool, StoreError> {
        self.indexed().await?;
        let (uid, conv) = (uid.to_owned(), conv.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(ACTIVITY)?;
            Ok(t.get((uid.as_str(), conv.as_str()))?.is_some())
        })
        .await
    }

    async fn read_positions(&self, conv: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.indexed().await?;
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(READS)?;
            scan_second(&t, &conv, |uid, v| (uid.to_owned(), v.value()))
        })
        .await
    }

    async fn last_seq(&self, conv: &str) -> Result<u64, StoreError> {
        self.indexed().await?;
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(CONV_SEQ)?;
            Ok(t.get(conv.as_str())?.map_or(0, |g| g.value()))
        })
        .await
    }

    async fn trim(
        &self,
        before_ms: i64,
        budget: usize,
        pass: &mut TrimPass,
    ) -> Result<u64, StoreError> {
        self.indexed().await?;
        let mut moved = pass.clone();
        let (n, moved) = self
            .blocking(move |db| {
                let n = super::retention::trim_step(db, before_ms, budget, &mut moved)?;
                Ok((n, moved))
            })
            .await?;
        *pass = moved;
        Ok(n)
    }

    async fn erase(&self, conv: &str, sender: &str, seqs: &[u64]) -> Result<u64, StoreError> {
        self.indexed().await?;
        let (conv, sender, seqs) = (conv.to_owned(), sender.to_owned(), seqs.to_vec());
        self.blocking(move |db| super::retention::erase(db, &conv, &sender, &seqs))
            .await
    }

    async fn expire_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.indexed().await?;
        // In transactions of EXPIRE_CHUNK keys, so that the commits waiting for the
        // writer get it in between.
        let mut total = 0;
        loop {
            let n = self
                .blocking(move |db| expire_idempotency_chunk(db, before_ms, EXPIRE_CHUNK))
                .await?;
            total += n;
            if n < EXPIRE_CHUNK {
                return Ok(total);
            }
        }
    }
}

/// Most idempotency keys one transaction expires.
const EXPIRE_CHUNK: u64 = 5_000;

/// Removes up to `limit` idempotency keys claimed before `before_ms`, oldest first; how
/// many.
fn expire_idempotency_chunk(db: &Db, before_ms: i64, limit: u64) -> Result<u64, StoreError> {
    let txn = db.begin_write()?;
    let n;
    {
        let mut idem = txn.open_table(IDEM)?;
        let mut by_ts = txn.open_table(IDEM_BY_TS)?;
        let mut expired = Vec::new();
        for entry in by_ts
            .range((i64::MIN, "", "")..(before_ms, "", ""))?
            .take(limit as usize)
        {
            let (k, _) = entry?;
            let (ts, from, cid) = k.value();
            expired.push((ts, from.to_owned(), cid.to_owned()));
        }
        n = expired.len() as u64;
        for (ts, from, cid) in expired {
            by_ts.remove((ts, from.as_str(), cid.as_str()))?;
            idem.remove((from.as_str(), cid.as_str()))?;
        }
    }
    txn.commit()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Content, NewMessage};
    use serde_json::json;
    use shared::protocol::Message;

    use crate::store::EmbeddedOptions;

    /// The store in `dir`, committing directly or (`log`) through its commit log.
    fn open(dir: &std::path::Path, log: bool) -> EmbeddedStore {
        let options = EmbeddedOptions {
            log,
            ..Default::default()
        };
        EmbeddedStore::open_with(dir, options).unwrap()
    }

    /// Runs each `name(log)` as two tests, `name::direct` and `name::log`.
    macro_rules! both {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[tokio::test]
                async fn direct() {
                    super::$name(false).await
                }

                #[tokio::test]
                async fn log() {
                    super::$name(true).await
                }
            }
        )*};
    }

    both!(
        sequences_are_gapless_per_conv_and_per_user,
        idempotency_within_batch_across_batches_and_after_expiry,
        data_survives_reopen,
        join_gives_the_whole_history_to_the_joiner,
        the_list_orders_by_activity_and_counts_unread,
        a_join_lists_the_conversation_at_its_last_message,
        a_recall_rewrites_the_message_and_commits_its_event,
    );

    fn msg(conv: &str, from: &str, cid: Option<&str>, ts: i64, members: &[&str]) -> Op {
        Op::Message(NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            conv: conv.into(),
            from: from.into(),
            cid: cid.map(Into::into),
            content: crate::store::Content::Body(json!({"t": conv})),
            ts,
            members: members.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn event(conv: &str, from: &str, ts: i64, members: &[&str]) -> Op {
        let Op::Message(mut m) = msg(conv, from, None, ts, members) else {
            unreachable!()
        };
        m.content = Content::Event(shared::protocol::Event::Closed);
        Op::Message(m)
    }

    fn read(conv: &str, uid: &str, seq: u64) -> Op {
        Op::Read {
            conv: conv.into(),
            uid: uid.into(),
            seq,
        }
    }

    fn new(o: &CommitOutcome) -> &Committed {
        match o {
            CommitOutcome::New(c) => c,
            _ => panic!("expected a new message"),
        }
    }

    async fn sequences_are_gapless_per_conv_and_per_user(log: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), log);
        let out = store
            .commit(vec![
                msg("d:a~b", "a", None, 1, &["a", "b"]),
                msg("d:a~c", "a", None, 2, &["a", "c"]),
                msg("d:a~b", "b", None, 3, &["a", "b"]),
            ])
            .await
            .unwrap();
        let seqs: Vec<u64> = out.iter().map(|o| new(o).seq).collect();
        assert_eq!(seqs, [1, 1, 2]);
        assert_eq!(new(&out[0]).recipients, [("a".into(), 1), ("b".into(), 1)]);
        assert_eq!(new(&out[1]).recipients, [("a".into(), 2), ("c".into(), 1)]);
        assert_eq!(new(&out[2]).recipients, [("a".into(), 3), ("b".into(), 2)]);
        assert_eq!(store.last_seq("d:a~b").await.unwrap(), 2);
        assert_eq!(store.last_seq("d:x~y").await.unwrap(), 0);

        let page = store.inbox("a", 0, 2).await.unwrap();
        assert_eq!(page.items.iter().map(|i| i.0).collect::<Vec<_>>(), [1, 2]);
        assert!(page.more);
        let page = store.inbox("a", 2, 10).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(!page.more);
        let m: Message = serde_json::from_slice(&page.items[0].1).unwrap();
        assert_eq!((m.conv.as_str(), m.seq, m.from.as_str()), ("d:a~b", 2, "b"));

        let h = store.history("d:a~b", 1, 10).await.unwrap();
        assert_eq!(h.items.len(), 1);
        assert!(!h.more);
    }

    async fn idempotency_within_batch_across_batches_and_after_expiry(log: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), log);
        let out = store
            .commit(vec![
                msg("d:a~b", "a", Some("c1"), 10, &["a", "b"]),
                msg("d:a~b", "a", Some("c1"), 11, &["a", "b"]),
            ])
            .await
            .unwrap();
        let first = new(&out[0]).json.clone();
        assert!(matches!(&out[1], CommitOutcome::Duplicate(j) if *j == first));

        let out = store
            .commit(vec![msg("d:a~b", "a", Some("c1"), 20, &["a", "b"])])
            .await
            .unwrap();
        assert!(matches!(&out[0], CommitOutcome::Duplicate(j) if *j == first));
        // The same cid from another sender is another message.
        let out = store
            .commit(vec![msg("d:a~b", "b", Some("c1"), 21, &["a", "b"])])
            .await
            .unwrap();
        assert_eq!(new(&out[0]).seq, 2);

        // Past the window the key no longer deduplicates.
        let later = 10 + IDEMPOTENCY_WINDOW_MS;
        let out = store
            .commit(vec![msg("d:a~b", "a", Some("c1"), later, &["a", "b"])])
            .await
            .unwrap();
        assert_eq!(new(&out[0]).seq, 3);
        // Only b's key (ts 21) and the new one remain; expiring before 22 drops b's.
        assert_eq!(store.expire_idempotency(22).await.unwrap(), 1);
        let out = store
            .commit(vec![msg("d:a~b", "a", Some("c1"), later + 1, &["a", "b"])])
            .await
            .unwrap();
        assert!(matches!(out[0], CommitOutcome::Duplicate(_)));
    }

    #[tokio::test]
    async fn idempotency_keys_expire_oldest_first_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), false);
        let ops = (1..=5)
            .map(|ts| msg("d:a~b", "a", Some(&format!("c{ts}")), ts, &["a", "b"]))
            .collect();
        store.commit(ops).await.unwrap();
        let db = store.db.clone();
        let chunk = move |before| expire_idempotency_chunk(&db, before, 2).unwrap();
        // Keys of ts 1..=4 are past; at most two a transaction, the oldest first.
        assert_eq!(chunk(5), 2);
        let c3 = store
            .commit(vec![msg("d:a~b", "a", Some("c3"), 6, &["a", "b"])])
            .await
            .unwrap();
        assert!(matches!(c3[0], CommitOutcome::Duplicate(_)), "c3 was kept");
        assert_eq!(chunk(5), 2);
        assert_eq!(chunk(5), 0);
        // c5 (ts 5) is within the window still.
        let c5 = store
            .commit(vec![msg("d:a~b", "a", Some("c5"), 7, &["a", "b"])])
            .await
            .unwrap();
        assert!(matches!(c5[0], CommitOutcome::Duplicate(_)));
        // And the loop goes on until a chunk comes back short.
        assert_eq!(store.expire_idempotency(6).await.unwrap(), 1);
    }

    async fn data_survives_reopen(log: bool) {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), log);
            store
                .commit(vec![msg("d:a~b", "a", Some("k"), 1, &["a", "b"])])
                .await
                .unwrap();
        }
        let store = open(dir.path(), log);
        assert_eq!(store.inbox("b", 0, 10).await.unwrap().items.len(), 1);
        let out = store
            .commit(vec![msg("d:a~b", "a", Some("k"), 2, &["a", "b"])])
            .await
            .unwrap();
        assert!(matches!(out[0], CommitOutcome::Duplicate(_)));
        let out = store
            .commit(vec![msg("d:a~b", "a", None, 3, &["a", "b"])])
            .await
            .unwrap();
        assert_eq!(new(&out[0]).recipients, [("a".into(), 2), ("b".into(), 2)]);
    }

    async fn join_gives_the_whole_history_to_the_joiner(log: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), log);
        store
            .commit(vec![
                msg("s:shop~c", "c", None, 1, &["c"]),
                msg("d:a~x", "x", None, 1, &["a", "x"]),
                msg("s:shop~c", "c", None, 2, &["c"]),
            ])
            .await
            .unwrap();
        let out = store
            .commit(vec![
                Op::Join {
                    conv: "s:shop~c".into(),
                    uid: "a".into(),
                },
                msg("s:shop~c", "c", None, 3, &["c", "a"]),
            ])
            .await
            .unwrap();
        let CommitOutcome::Joined(joined) = &out[0] else {
            panic!("not a join")
        };
        let got: Vec<_> = joined
            .iter()
            .map(|c| (c.seq, c.recipients.clone()))
            .collect();
        assert_eq!(
            got,
            [(1, vec![("a".into(), 2)]), (2, vec![("a".into(), 3)])]
        );
        assert_eq!(new(&out[1]).recipients, [("c".into(), 3), ("a".into(), 4)]);
        let inbox = store.inbox("a", 0, 10).await.unwrap();
        assert_eq!(
            inbox.items.iter().map(|i| i.0).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // Joining again copies only what came since; here, nothing.
        let out = store
            .commit(vec![Op::Join {
                conv: "s:shop~c".into(),
                uid: "a".into(),
            }])
            .await
            .unwrap();
        assert!(matches!(&out[0], CommitOutcome::Joined(j) if j.is_empty()));
    }

    async fn the_list_orders_by_activity_and_counts_unread(log: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), log);
        store
            .commit(vec![
                msg("d:a~b", "b", None, 10, &["a", "b"]),
                msg("d:a~c", "c", None, 20, &["a", "c"]),
                msg("g:x", "c", None, 20, &["a", "c"]),
                event("d:a~b", "b", 30, &["a", "b"]),
                msg("d:a~b", "b", None, 5, &["a", "b"]),
            ])
            .await
            .unwrap();
        let page = store.conversations("a", None, 2).await.unwrap();
        let convs: Vec<_> = page.items.iter().map(|e| (&*e.conv, e.ts)).collect();
        // A message stamped earlier does not move the activity back.
        assert_eq!(convs, [("d:a~b", 30), ("g:x", 20)]);
        assert!(page.more);
        let b = &page.items[0];
        assert_eq!((b.last_seq, b.read_seq, b.unread), (3, 0, 2));
        assert_eq!(b.reads, [("b".into(), 3)]);
        assert!(page.items[1].reads.is_empty());
        let cursor = ConvCursor::after(&page.items[1]);
        let page = store.conversations("a", Some(&cursor), 0).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!((page.items[0].conv.as_str(), page.more), ("d:a~c", false));

        // Reads clamp to the last seq and never move back.
        let out = store
            .commit(vec![read("d:a~b", "a", 9), read("d:a~b", "a", 1)])
            .await
            .unwrap();
        assert!(matches!(
            out[0],
            CommitOutcome::Read {
                seq: 3,
                moved: true
            }
        ));
        assert!(matches!(
            out[1],
            CommitOutcome::Read {
                seq: 3,
                moved: false
            }
        ));
        let page = store.conversations("a", None, 1).await.unwrap();
        assert_eq!((page.items[0].read_seq, page.items[0].unread), (3, 0));
        assert!(store.in_conversations("c", "g:x").await.unwrap());
        assert!(!store.in_conversations("b", "g:x").await.unwrap());
        let mut reads = store.read_positions("d:a~b").await.unwrap();
        reads.sort();
        assert_eq!(reads, [("a".into(), 3), ("b".into(), 3)]);
    }

    async fn a_join_lists_the_conversation_at_its_last_message(log: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), log);
        store
            .commit(vec![
                msg("s:shop~c", "c", None, 7, &["c"]),
                Op::Join {
                    conv: "s:shop~e".into(),
                    uid: "a".into(),
                },
            ])
            .await
            .unwrap();
        assert!(!store.in_conversations("a", "s:shop~e").await.unwrap());
        store
            .commit(vec![Op::Join {
                conv: "s:shop~c".into(),
                uid: "a".into(),
            }])
            .await
            .unwrap();
        let page = store.conversations("a", None, 10).await.unwrap();
        assert_eq!(page.items.len(), 1);
        let e = &page.items[0];
        assert_eq!(
            (e.conv.as_str(), e.ts, e.last_seq, e.unread),
            ("s:shop~c", 7, 1, 1)
        );
    }

    async fn a_recall_rewrites_the_message_and_commits_its_event(log: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), log);
        store
            .commit(vec![
                msg("d:a~b", "a", None, 100, &["a", "b"]),
                event("d:a~b", "a", 101, &["a", "b"]),
            ])
            .await
            .unwrap();
        let recall = |seq, sender: &str, not_before| {
            let Op::Message(mut event) = event("d:a~b", sender, 200, &["a", "b"]) else {
                unreachable!()
            };
            event.content = Content::Event(shared::protocol::Event::Recalled { seq, by: None });
            Op::Recall(Recall {
                conv: "d:a~b".into(),
                seq,
                sender: Some(sender.into()),
                not_before,
                holders: vec!["a".into(), "b".into()],
                event,
            })
        };
        let out = store
            .commit(vec![
                recall(9, "a", 0),
                recall(2, "a", 0),
                recall(1, "b", 0),
                recall(1, "a", 101),
                recall(1, "a", 100),
                recall(1, "a", 100),
            ])
            .await
            .unwrap();
        let why = |o: &CommitOutcome| match o {
            CommitOutcome::Recalled(r) => r.as_ref().map(|c| c.seq).map_err(|e| *e),
            _ => panic!("not a recall"),
        };
        use RecallRefused::*;
        let got: Vec<_> = out.iter().map(why).collect();
        assert_eq!(
            got,
            [
                Err(NotFound),
                Err(NotSender),
                Err(NotSender),
                Err(TooLate),
                Ok(3),
                Err(AlreadyRecalled)
            ]
        );
        let inbox = store.inbox("b", 0, 10).await.unwrap();
        let m: Message = serde_json::from_slice(&inbox.items[0].1).unwrap();
        assert!(m.recalled && m.body.is_none());
        assert_eq!(store.last_seq("d:a~b").await.unwrap(), 3);

        // A resend later in the batch answers with the recalled form.
        let out = store
            .commit(vec![
                msg("d:a~b", "a", Some("k"), 300, &["a", "b"]),
                recall(4, "a", 0),
                msg("d:a~b", "a", Some("k"), 301, &["a", "b"]),
            ])
            .await
            .unwrap();
        let CommitOutcome::Duplicate(json) = &out[2] else {
            panic!("not a duplicate")
        };
        assert!(serde_json::from_slice::<Message>(json).unwrap().recalled);
    }
}

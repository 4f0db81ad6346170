//! Retention and erasure in redb: removing what is older than the retention from the
//! head of every conversation and every inbox ([`trim_step`]), and erasing a sender's
//! bodies ([`erase`]). It owns no table: it changes the tables of `messages`, and must
//! not touch the directory's.
//!
//! A pass walks the conversations (`CONV_SEQ`), then the users (`USER_SEQ`), in key
//! order, at most [`LOOK`] of them per step. A read transaction looks at each one's
//! head (the oldest messages; the oldest inbox entries, and the oldest conversations of
//! the user's list) and lists the keys of what is older than the cutoff, at most the
//! step's budget of rows; a write transaction then removes those keys, and only that,
//! so that the one writer (redb has one, and commits wait for it) is held for deletes
//! alone, never for reading or parsing. A pass costs one look per conversation and per
//! user and writes only what leaves; the commit path keeps no index for it. The write
//! is not fsynced (`Durability::None`): a crash can only undo a removal, which the next
//! pass does again, and the next commit's fsync carries it to the disk.
//!
//! What a trim removes, and what stays:
//!
//! - messages: from the head of the conversation, while older than the cutoff; the
//!   conversation's last seq stays (`CONV_SEQ`), so seqs go on, as do the read
//!   positions; of the event counts below what is kept, only the last stays, which is
//!   all an unread count reads;
//! - inbox entries: from the head of the inbox, while their message is gone or older
//!   than the cutoff; the user's last useq stays (`USER_SEQ`);
//! - the user's list: every conversation whose activity (its last message in the
//!   user's inbox) is older than the cutoff, with what a join would copy from
//!   (`MEMBER_SEQ`: a later join copies whatever is kept).
//!
//! An inbox entry copied by a join sits at the inbox's end with its message's own
//! time; it leaves when the head reaches it, at most one retention after the join (a
//! read skips it, with `trimmed`, once its message has left).

use std::ops::Bound;

use redb::{Durability, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use shared::protocol::Message;

use super::Db;
use super::messages::{
    ACTIVITY, BY_ACTIVITY, CONV_SEQ, EVENTS, INBOX, MEMBER_SEQ, MESSAGES, USER_SEQ, stored_ts,
};
use crate::store::{StoreError, TrimPass, erasable, erased_json};

/// Conversations or users whose heads one step looks at.
const LOOK: usize = 256;

/// The parts of a pass ([`TrimPass::part`]).
const CONVERSATIONS: u32 = 0;
const USERS: u32 = 1;

/// What one step removes, found by its read transaction: keys only, so that the write
/// transaction parses nothing. Nothing found can change meanwhile: commits only add
/// after the heads, and a message keeps its time when a recall or an erasure rewrites
/// it (and the one retention task is the only one to remove).
#[derive(Default)]
struct Gone {
    /// `(conv, seq)` of messages.
    messages: Vec<(String, u64)>,
    /// `(conv, seq)` of event counts read no more.
    events: Vec<(String, u64)>,
    /// `(uid, useq)` of inbox entries.
    inbox: Vec<(String, u64)>,
    /// `(uid, ts, conv)` of list entries.
    listed: Vec<(String, i64, String)>,
}

impl Gone {
    /// Rows counted against a step's budget.
    fn rows(&self) -> usize {
        self.messages.len() + self.inbox.len() + self.listed.len()
    }
}

/// One step of a pass (see [`crate::store::MessageStore::trim`]).
pub(super) fn trim_step(
    db: &Db,
    before: i64,
    budget: usize,
    pass: &mut TrimPass,
) -> Result<u64, StoreError> {
    if pass.done {
        return Ok(0);
    }
    let users = pass.part == USERS;
    let (gone, after, end) = look(db, before, users, pass.after.as_deref(), budget.max(1))?;
    let removed = (gone.messages.len() + gone.inbox.len()) as u64;
    if gone.rows() > 0 {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut t = TrimTables::open(&txn)?;
            t.remove(&gone)?;
        }
        txn.commit()?;
    }
    if end {
        match pass.part {
            CONVERSATIONS => pass.next_part(USERS),
            _ => pass.done = true,
        }
    } else {
        pass.after = after.or(pass.after.take());
    }
    Ok(removed)
}

/// Looks at the heads of the next [`LOOK`] conversations (or users) after `after`, and
/// finds what of them is older than `before`, at most `budget` rows; returns it, the
/// last key done (all of its due rows found), and whether that was the last key.
fn look(
    db: &Db,
    before: i64,
    users: bool,
    after: Option<&str>,
    budget: usize,
) -> Result<(Gone, Option<String>, bool), StoreError> {
    let txn = db.begin_read()?;
    let keys = txn.open_table(if users { USER_SEQ } else { CONV_SEQ })?;
    let messages = txn.open_table(MESSAGES)?;
    let events = txn.open_table(EVENTS)?;
    let inbox = txn.open_table(INBOX)?;
    let by_activity = txn.open_table(BY_ACTIVITY)?;
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut gone = Gone::default();
    let mut done: Option<String> = None;
    for (looked, entry) in keys.range::<&str>((from, Bound::Unbounded))?.enumerate() {
        if looked == LOOK {
            return Ok((gone, done, false));
        }
        let (k, _) = entry?;
        let key = k.value();
        let finished = if users {
            user_head(
                &messages,
                &inbox,
                &by_activity,
                key,
                before,
                budget,
                &mut gone,
            )?
        } else {
            conv_head(&messages, &events, key, before, budget, &mut gone)?
        };
        if !finished {
            // The budget ran out: this one again next step.
            return Ok((gone, done, false));
        }
        done = Some(key.to_owned());
    }
    Ok((gone, done, true))
}

/// Adds the messages of `conv` older than `before`, from its head, to `gone` while it
/// holds fewer than `budget` rows (and the event counts below them but the last);
/// returns whether it reached a message it keeps (or the end).
fn conv_head(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    events: &impl ReadableTable<(&'static str, u64), u64>,
    conv: &str,
    before: i64,
    budget: usize,
    gone: &mut Gone,
) -> Result<bool, StoreError> {
    let mut finished = true;
    let mut last = None;
    for entry in messages.range((conv, 0)..=(conv, u64::MAX))? {
        let (k, v) = entry?;
        if stored_ts(v.value())? >= before {
            break;
        }
        if gone.rows() >= budget {
            finished = false;
            break;
        }
        let seq = k.value().1;
        gone.messages.push((conv.to_owned(), seq));
        last = Some(seq);
    }
    if let Some(last) = last {
        // The count at the last event row at or below `last` is what an unread count
        // reads from now on (at the oldest kept message, less one); the rows below it
        // are read no more.
        let mut rows = Vec::new();
        for entry in events.range((conv, 0)..=(conv, last))? {
            rows.push(entry?.0.value().1);
        }
        rows.pop();
        gone.events
            .extend(rows.into_iter().map(|seq| (conv.to_owned(), seq)));
    }
    Ok(finished)
}

/// Adds the head of `uid`'s inbox while its message is gone or older than `before`,
/// and the conversations of its list whose activity is older than `before`, to `gone`
/// while it holds fewer than `budget` rows; returns whether it found all of them.
fn user_head(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    inbox: &impl ReadableTable<(&'static str, u64), (&'static str, u64)>,
    by_activity: &impl ReadableTable<(&'static str, i64, &'static str), u64>,
    uid: &str,
    before: i64,
    budget: usize,
    gone: &mut Gone,
) -> Result<bool, StoreError> {
    for entry in inbox.range((uid, 0)..=(uid, u64::MAX))? {
        let (k, v) = entry?;
        let (conv, seq) = v.value();
        let keep = match messages.get((conv, seq))? {
            Some(m) => stored_ts(m.value())? >= before,
            None => false,
        };
        if keep {
            break;
        }
        if gone.rows() >= budget {
            return Ok(false);
        }
        gone.inbox.push((uid.to_owned(), k.value().1));
    }
    for entry in by_activity.range((uid, i64::MIN, "")..(uid, before, ""))? {
        if gone.rows() >= budget {
            return Ok(false);
        }
        let (k, _) = entry?;
        let (_, ts, conv) = k.value();
        gone.listed.push((uid.to_owned(), ts, conv.to_owned()));
    }
    Ok(true)
}

/// The tables a trim writes, open in its write transaction.
struct TrimTables<'t> {
    messages: Table<'t, (&'static str, u64), &'static [u8]>,
    events: Table<'t, (&'static str, u64), u64>,
    inbox: Table<'t, (&'static str, u64), (&'static str, u64)>,
    activity: Table<'t, (&'static str, &'static str), (i64, u64)>,
    by_activity: Table<'t, (&'static str, i64, &'static str), u64>,
    member_seq: Table<'t, (&'static str, &'static str), u64>,
}

impl<'t> TrimTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            messages: txn.open_table(MESSAGES)?,
            events: txn.open_table(EVENTS)?,
            inbox: txn.open_table(INBOX)?,
            activity: txn.open_table(ACTIVITY)?,
            by_activity: txn.open_table(BY_ACTIVITY)?,
            member_seq: txn.open_table(MEMBER_SEQ)?,
        })
    }

    /// Removes what `gone` lists: each list entry with what a join would copy from
    /// (`MEMBER_SEQ`: a later join copies whatever is kept).
    fn remove(&mut self, gone: &Gone) -> Result<(), StoreError> {
        for (conv, seq) in &gone.messages {
            self.messages.remove((conv.as_str(), *seq))?;
        }
        for (conv, seq) in &gone.events {
            self.events.remove((conv.as_str(), *seq))?;
        }
        for (uid, useq) in &gone.inbox {
            self.inbox.remove((uid.as_str(), *useq))?;
        }
        for (uid, ts, conv) in &gone.listed {
            self.by_activity
                .remove((uid.as_str(), *ts, conv.as_str()))?;
            // A message committed since the look moved the entry: it stays, at its
            // new place.
            let listed_at = |g: redb::AccessGuard<'_, (i64, u64)>| g.value().0 == *ts;
            let unmoved = self
                .activity
                .get((uid.as_str(), conv.as_str()))?
                .is_some_and(listed_at);
            if unmoved {
                self.activity.remove((uid.as_str(), conv.as_str()))?;
                self.member_seq.remove((conv.as_str(), uid.as_str()))?;
            }
        }
        Ok(())
    }
}

/// Erases the messages of `seqs` of `conv` that `sender` sent with a body (see
/// [`crate::store::MessageStore::erase`]), in one fsynced write; returns how many.
pub(super) fn erase(db: &Db, conv: &str, sender: &str, seqs: &[u64]) -> Result<u64, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut n = 0;
    {
        let mut messages = txn.open_table(MESSAGES)?;
        for &seq in seqs {
            let Some(json) = messages.get((conv, seq))?.map(|g| g.value().to_vec()) else {
                continue;
            };
            let m: Message =
                serde_json::from_slice(&json).map_err(|e| StoreError::decode("message", e))?;
            if !erasable(&m, sender) {
                continue;
            }
            messages.insert((conv, seq), erased_json(&json)?.as_ref())?;
            n += 1;
        }
    }
    txn.commit()?;
    Ok(n)
}

//! Retention and erasure on Redis: trimming the heads of conversations and inboxes, the
//! index that finds what to trim, and erasing a sender's bodies in conversations and
//! in inbox copies. It must never remove a message whose fan-out is pending, and never
//! hold a conversation's lease except to erase in it.
//!
//! # Trimming
//!
//! A conversation's `msgs` and a user's `inbox` are lists whose position is the seq or
//! useq; a trim removes items from the head (`LTRIM`) and adds their number to the
//! list's base (`<list>:base`), so that every script that turns a position into an index
//! subtracts the base, and every script that gives the next position adds it to the
//! length (`list_base_lib.lua`). A trim is a compare-and-set on the base: several nodes
//! may trim at once, and only one removes each item. It needs no lease: the scripts
//! that read by position read the base in the same script, and the trim never reaches
//! a message still pending fan-out. With the messages go their ids (`ids`) and their
//! event marks (`events`); with the inbox entries, the conversations of the user's list
//! whose activity is older than the cutoff, with their `pos`.
//!
//! # The index
//!
//! Two sorted sets per fan-out shard, `retain-convs` (conv → a time at or before its
//! oldest message) and `retain-users` (uid, by [`shard_of`] the uid → a time at or
//! before its oldest inbox entry), say where a pass looks: the members scored before
//! the cutoff. A commit adds its conversations and members (`ZADD LT` of the commit
//! time) in step 1, beside the claims and marks, one script per shard; each process
//! remembers what it indexed lately ([`Indexed`]), so a conversation or a user costs an
//! index write about once per [`INDEX_FORGET`] per node, not per message. A visit sets
//! the score to the time of the oldest item kept, or to now when none is left; members
//! never leave the index (a conversation's next seq and a user's next useq live on
//! anyway, as the base).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use shared::protocol::Message;
use shared::time::now_ms;

use super::prepared::Prepared;
use super::scripts::{ERASE_AT, PAGE, RECALL_SET, RETAIN_INDEX, TRIM_CONV, TRIM_INBOX};
use super::{LEASE_MS, READ_CHUNK, corrupt};
use crate::store::redis::RedisStore;
use crate::store::redis::keys::{
    SHARDS, conv_key, retain_convs_key, retain_users_key, shard_of, user_key,
};
use crate::store::{StoreError, TrimPass, erasable, erased_json};

/// How long a process trusts that what it indexed is still in the index (a Redis that
/// lost its data forgets the index too); then it indexes again what it commits.
pub(super) const INDEX_FORGET: Duration = Duration::from_secs(600);
/// Most conversations and users a process remembers as indexed; past it, it forgets
/// them all.
pub(super) const INDEX_REMEMBER: usize = 200_000;
/// Conversations or users a step takes from one shard's index.
pub(super) const TRIM_DUE: usize = 32;
/// Head items one visit reads, at most.
pub(super) const TRIM_CHUNK: u64 = 128;
/// Conversations of a user's list one visit removes, at most.
pub(super) const TRIM_LIST: u64 = 64;

/// What this process indexed for retention lately (see the module doc).
#[derive(Default)]
pub(in crate::store::redis) struct Indexed {
    // std Mutex: lookups and inserts are short and never span an await.
    seen: Mutex<Seen>,
}

/// [`Indexed`]'s sets, and since when they fill.
struct Seen {
    convs: HashSet<String>,
    users: HashSet<String>,
    since: Instant,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            convs: HashSet::new(),
            users: HashSet::new(),
            since: Instant::now(),
        }
    }
}

/// Conversations and users to index, with the earliest commit time of each.
#[derive(Default)]
struct ToIndex {
    convs: HashMap<String, i64>,
    users: HashMap<String, i64>,
}

impl Indexed {
    /// What of `todo` this process has not indexed lately.
    fn missing(&self, todo: &[Prepared]) -> ToIndex {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.since.elapsed() > INDEX_FORGET
            || seen.convs.len() + seen.users.len() > INDEX_REMEMBER
        {
            *seen = Seen::default();
        }
        let mut out = ToIndex::default();
        for p in todo {
            if !seen.convs.contains(&p.conv) {
                let ts = out.convs.entry(p.conv.clone()).or_insert(p.ts);
                *ts = (*ts).min(p.ts);
            }
            for uid in &p.members {
                if !seen.users.contains(uid) {
                    let ts = out.users.entry(uid.clone()).or_insert(p.ts);
                    *ts = (*ts).min(p.ts);
                }
            }
        }
        out
    }

    /// Remembers what was indexed.
    fn indexed(&self, done: ToIndex) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.convs.extend(done.convs.into_keys());
        seen.users.extend(done.users.into_keys());
    }
}

/// What a visit read at the head of a list: each item's id and commit time.
#[derive(serde::Deserialize)]
struct Head {
    id: String,
    ts: i64,
}

/// The heads of `items` (message JSON).
fn heads(items: &[Vec<u8>]) -> Result<Vec<Head>, StoreError> {
    items
        .iter()
        .map(|i| serde_json::from_slice(i).map_err(|e| StoreError::decode("message", e)))
        .collect()
}

/// The score a visit leaves: `None` to look again in this pass (more may be due).
fn next_score(before: i64, heads: &[Head], asked: u64, due: usize, removed: usize) -> Option<i64> {
    if removed < due {
        // Held back (a pending fan-out): not in this pass, in the next.
        Some(before)
    } else if let Some(h) = heads.get(due) {
        Some(h.ts)
    } else if (heads.len() as u64) < asked {
        // Nothing left: what comes later is later than now.
        Some(now_ms())
    } else {
        None
    }
}

impl RedisStore {
    /// Step 1's part for retention: indexes the conversations and members of `todo`
    /// that this process has not indexed lately, one script per shard.
    pub(super) async fn index_for_retention(&self, todo: &[Prepared]) -> Result<(), StoreError> {
        let missing = self.indexed.missing(todo);
        if missing.convs.is_empty() && missing.users.is_empty() {
            return Ok(());
        }
        // Per shard: its conversations, and its users, each with a commit time.
        type Names<'a> = Vec<(&'a str, i64)>;
        let mut by_shard: HashMap<u32, (Names, Names)> = HashMap::new();
        for (conv, &ts) in &missing.convs {
            by_shard
                .entry(shard_of(conv))
                .or_default()
                .0
                .push((conv, ts));
        }
        for (uid, &ts) in &missing.users {
            by_shard.entry(shard_of(uid)).or_default().1.push((uid, ts));
        }
        try_join_all(by_shard.into_iter().map(|(k, (convs, users))| {
            let mut inv = RETAIN_INDEX.key(retain_convs_key(k));
            inv.key(retain_users_key(k)).arg(convs.len());
            for (name, ts) in convs.into_iter().chain(users) {
                inv.arg(name).arg(ts);
            }
            let mut conn = self.conn.clone();
            async move {
                inv.invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(StoreError::from)
            }
        }))
        .await?;
        self.indexed.indexed(missing);
        Ok(())
    }

    /// One step of a retention pass (see `MessageStore::trim`): the next due members of
    /// the pass's shard index (conversations, then users, shard by shard), each visited
    /// in turn.
    pub(super) async fn trim_step(
        &self,
        before: i64,
        budget: usize,
        pass: &mut TrimPass,
    ) -> Result<u64, StoreError> {
        let budget = budget.max(1) as u64;
        let mut removed = 0;
        while !pass.done {
            if pass.part >= 2 * SHARDS {
                pass.done = true;
                break;
            }
            let (shard, users) = (pass.part / 2, pass.part % 2 == 1);
            let index = if users {
                retain_users_key(shard)
            } else {
                retain_convs_key(shard)
            };
            let mut conn = self.conn.clone();
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(format!("({before}"))
                .arg("LIMIT")
                .arg(0)
                .arg(TRIM_DUE)
                .query_async(&mut conn)
                .await?;
            if due.is_empty() {
                pass.next_part(pass.part + 1);
                continue;
            }
            for name in due {
                let left = budget.saturating_sub(removed);
                if left == 0 {
                    break;
                }
                let (n, score) = if users {
                    self.trim_inbox(&name, before, left).await?
                } else {
                    self.trim_conversation(&name, before, left).await?
                };
                removed += n;
                if let Some(score) = score {
                    redis::cmd("ZADD")
                        .arg(&index)
                        .arg("XX")
                        .arg(score)
                        .arg(&name)
                        .exec_async(&mut conn)
                        .await?;
                }
            }
            break;
        }
        Ok(removed)
    }

    /// The first `asked` entries of `list`, its base, and how many of them were
    /// committed before `before` (the prefix a trim may remove).
    async fn head_of(
        &self,
        list: &str,
        asked: u64,
        before: i64,
    ) -> Result<(u64, Vec<Head>, usize), StoreError> {
        let (base, items): (u64, Vec<Vec<u8>>) = PAGE
            .key(list)
            .arg(0)
            .arg(asked)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let heads = heads(&items)?;
        let due = heads.iter().take_while(|h| h.ts < before).count();
        Ok((base, heads, due))
    }

    /// Removes the messages of `conv` older than `before` from its head, at most
    /// `max`; returns how many, and the conversation's next score in the index.
    async fn trim_conversation(
        &self,
        conv: &str,
        before: i64,
        max: u64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let msgs = conv_key(conv, "msgs");
        let asked = max.min(TRIM_CHUNK);
        let mut conn = self.conn.clone();
        let (base, heads, due) = self.head_of(&msgs, asked, before).await?;
        let removed = if due == 0 {
            0
        } else {
            let mut inv = TRIM_CONV.key(&msgs);
            inv.key(conv_key(conv, "ids"))
                .key(conv_key(conv, "pending"))
                .key(conv_key(conv, "events"))
                .arg(base)
                .arg(due);
            for h in &heads[..due] {
                inv.arg(&h.id);
            }
            let n: i64 = inv.invoke_async(&mut conn).await?;
            if n < 0 {
                return Ok((0, None)); // another process trimmed it meanwhile
            }
            n as usize
        };
        Ok((
            removed as u64,
            next_score(before, &heads, asked, due, removed),
        ))
    }

    /// Removes the head of `uid`'s inbox older than `before`, at most `max` entries,
    /// and the conversations of its list whose activity is older; returns how many
    /// entries, and the user's next score in the index.
    async fn trim_inbox(
        &self,
        uid: &str,
        before: i64,
        max: u64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let inbox = user_key(uid, "inbox");
        let asked = max.min(TRIM_CHUNK);
        let mut conn = self.conn.clone();
        let (base, heads, due) = self.head_of(&inbox, asked, before).await?;
        let (n, _listed, oldest): (i64, u64, String) = TRIM_INBOX
            .key(&inbox)
            .key(user_key(uid, "convs"))
            .key(user_key(uid, "pos"))
            .arg(base)
            .arg(due)
            .arg(before)
            .arg(TRIM_LIST)
            .invoke_async(&mut conn)
            .await?;
        if n < 0 {
            return Ok((0, None));
        }
        let score = next_score(before, &heads, asked, due, n as usize);
        // The list's oldest activity too: a visit removes at most TRIM_LIST of them.
        let oldest = match oldest.as_str() {
            "" => None,
            s => Some(
                s.parse::<f64>()
                    .map_err(|_| corrupt(format!("list score {s:?} of {uid}")))?
                    as i64,
            ),
        };
        let score = match (score, oldest) {
            (Some(a), Some(b)) if b < before => Some(a.min(b)),
            (score, _) => score,
        };
        Ok((n as u64, score))
    }

    /// Erasure in `conv` (see `MessageStore::erase`), under the conversation's lease:
    /// its drain first writes every pending fan-out, so no inbox can receive an
    /// original afterwards.
    pub(super) async fn erase_in_conversation(
        &self,
        conv: &str,
        sender: &str,
        seqs: &[u64],
    ) -> Result<u64, StoreError> {
        let lost = |conv| StoreError::EraseLeaseLost { conv };
        self.with_lease(conv, lost, async |token, _| {
            let mut n = 0;
            for &seq in seqs {
                let Some(original) = self.message_at(conv, seq).await? else {
                    continue;
                };
                let m: Message = serde_json::from_slice(&original)
                    .map_err(|e| StoreError::decode("message", e))?;
                if !erasable(&m, sender) {
                    continue;
                }
                let erased = erased_json(&original)?;
                let set: i64 = RECALL_SET
                    .key(conv_key(conv, "msgs"))
                    .key(conv_key(conv, "lock"))
                    .arg(token)
                    .arg(LEASE_MS)
                    .arg(seq)
                    .arg(&original[..])
                    .arg(&erased[..])
                    .invoke_async(&mut self.conn.clone())
                    .await?;
                match set {
                    1 => n += 1,
                    0 => return Err(lost(conv.to_owned())),
                    3 => {} // retention removed it meanwhile
                    _ => return Err(corrupt(format!("{conv} {seq} changed under the lease"))),
                }
            }
            Ok(n)
        })
        .await
    }

    /// Erasure in `uid`'s inbox (see `MessageStore::erase_copies`): the whole inbox, a
    /// chunk per request, each copy changed by a compare-and-set at its position.
    pub(super) async fn erase_in_inbox(
        &self,
        uid: &str,
        targets: &HashSet<(String, u64)>,
    ) -> Result<u64, StoreError> {
        let key = user_key(uid, "inbox");
        let mut conn = self.conn.clone();
        let mut after = 0;
        let mut n = 0;
        loop {
            let (base, chunk): (u64, Vec<Vec<u8>>) = PAGE
                .key(&key)
                .arg(after)
                .arg(READ_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            let start = after.max(base);
            for (k, item) in chunk.iter().enumerate() {
                let m: Message =
                    serde_json::from_slice(item).map_err(|e| StoreError::decode("message", e))?;
                if m.body.is_none() || !targets.contains(&(m.conv, m.seq)) {
                    continue;
                }
                let erased = erased_json(item)?;
                let set: u64 = ERASE_AT
                    .key(&key)
                    .arg(start + k as u64 + 1)
                    .arg(&item[..])
                    .arg(&erased[..])
                    .invoke_async(&mut conn)
                    .await?;
                n += set;
            }
            if (chunk.len() as u64) < READ_CHUNK as u64 {
                return Ok(n);
            }
            after = start + chunk.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(ts: i64) -> Head {
        Head {
            id: String::new(),
            ts,
        }
    }

    /// A visit leaves its member due only when a full chunk went (more may follow).
    #[test]
    fn a_visit_scores_its_member_by_what_is_left() {
        let hs = [head(1), head(2), head(50)];
        assert_eq!(next_score(10, &hs, 8, 2, 2), Some(50), "the oldest kept");
        assert_eq!(
            next_score(10, &hs, 8, 2, 1),
            Some(10),
            "held back: next pass"
        );
        assert_eq!(
            next_score(10, &hs[..2], 2, 2, 2),
            None,
            "a full chunk: again"
        );
        let left = next_score(10, &hs[..2], 8, 2, 2).unwrap();
        assert!(left > 10, "nothing left: now");
    }
}

//! Messages in Redis: conversations, inboxes and idempotency keys, and the fan-out
//! that carries each message from its conversation's slot into its members' slots. It
//! must never hold a conversation lock across anything but its own fan-out, and never
//! answer a sender before the message's inbox entries are written.
//!
//! The keys it uses are listed in `super::keys` (*Messages*).
//!
//! # Commit
//!
//! A batch is cut at each `Join`, `Recall`, and `Read` of a conversation that a message
//! or recall of the batch writes; each run of messages between them is committed as
//! one group, then the join, recall or read runs, so that each sees exactly the
//! messages before it, as in the embedded store. The other `Read`s (the usual ones: a
//! client reads what was committed before it read) run beside all of that, since no
//! message of the batch changes what they clamp to. A read is one script on the
//! conversation's slot (clamp to the last seq, move only forward). Outcomes keep the
//! batch's order. A group:
//!
//! 1. claims the idempotency keys (one script per sender) and, at the same time, marks
//!    the conversations dirty in their fan-out shard (one script per shard). A failed
//!    claim makes the message a duplicate of the one the key names.
//! 2. runs one script per conversation: appends each message (JSON built around its seq
//!    from a prefix and suffix made in Rust by serde, byte for byte what the embedded
//!    store writes), records its id and its pending fan-out, and moves its sender's
//!    read position to it (a message with a body) or records it as an event message;
//!    then, in the same script, takes the lease if it is free and returns the first
//!    pending entries.
//! 3. drains each conversation, concurrently: with the lease, one script per member
//!    appends all of that member's entries of the round (and moves the conversation in
//!    the member's list to the latest commit time appended); then a step script pops what
//!    was done and either renews the lease and returns the next entries, or releases it
//!    once the pending head is past this batch's seqs. That last step runs behind the
//!    answer: once a round has written the batch's last entries, the writer answers and
//!    the pop-and-release goes out on its own (a lost one costs the next writer of the
//!    conversation a lease expiry, never a message). Without the lease a writer polls
//!    the step script (200 µs doubling to 2 ms, 10 s overall) until the head is past
//!    its seqs or the lease frees.
//!
//! Round trips of an uncontended batch before its answer, whatever its size: 3 (claims
//! and marks; the conversation scripts; the member scripts), 2 without cids; the step
//! scripts follow. Every step of a round is one request per slot touched, issued
//! concurrently.
//!
//! Whoever writes an inbox entry reports it: this batch's messages come back as
//! `New` with the `(uid, useq)` pairs this call appended (none if another writer drained
//! them first; it pushes them), other writers' messages go to [`Relayed`], which
//! [`MessageStore::take_relayed`] empties.
//!
//! # Differences from the design note, and why
//!
//! - The fan-out shards carry their own hash tag (`{f:<k>}`) rather than `{g}`, so the
//!   16 shards, which every batch writes, spread over the cluster's nodes instead of
//!   all landing on the node that owns `{g}`.
//! - Shard scores are the Redis server's `TIME`, not the writer's clock, so that clock
//!   skew between hosts cannot make a fresh commit look old to the sweeper. A writer
//!   whose claims took longer than [`REMARK_AFTER`] marks again before storing, so the
//!   mark is never older than the sweeper's age threshold when the message lands.
//! - The conversation script also takes the lease and reads the first round (one round
//!   trip fewer); the "finish" and "acquire-and-read" scripts are one step script.
//! - A round is cut at about [`ROUND_MEMBERS`] member appends as well as at
//!   [`ROUND_ENTRIES`] entries, so that a big group's round stays well inside the lease.
//! - Idempotency: a claim that names a message which is not stored yet (its writer is
//!   still between claim and store, or died there) is waited for up to
//!   [`TAKEOVER_AFTER`]; then the id is cancelled in its conversation (`ids[id] = 0`,
//!   atomically with the check) and the resend takes the key over and is stored as new.
//!   A writer whose store script meets a cancelled id re-runs that message as a resend,
//!   so it answers with the taker's message: a cid never maps to two stored messages.
//! - A join holds the lease from its drain through its copy and renews it each chunk;
//!   a join that loses it fails rather than risk a hole in the joiner's inbox.
//!
//! # Recall
//!
//! Under the conversation's lease, as a join:
//!
//! 1. take the lease and drain everything pending up to the conversation's end;
//! 2. read the message (at its seq, less the base) and check it in Rust: missing, an event message or
//!    another sender's, older than allowed, or recalled already (which still goes on
//!    to step 4, so that a second try finishes a recall that died half-way);
//! 3. compare-and-set the stored message from its original bytes to its recalled
//!    form (JSON made in Rust by serde: `cjson` would reorder keys and round big
//!    integers); if the message was stored after step 1 began, drain up to it. No
//!    inbox can receive the original from now on: its fan-out is done, and member
//!    appends skip what an inbox has. Free the lease;
//! 4. in each inbox of the recall's holders that has reached the seq (`pos`), find the
//!    entry from the tail (the JSON's start up to its seq names the message in both
//!    forms) and `LSET` it, in bounded chunks (see `recall`);
//! 5. commit the `recalled` event message as an ordinary message.
//!
//! # Conversation list
//!
//! One script on the user's slot reads a page of `convs` after the cursor (the
//! cursor's time by `ZCOUNT`, its place among equal times by a binary search on rank,
//! so `O(log² n)`) and each listed conversation's last seq in the inbox (`pos`); then
//! one script per conversation of the page, all issued at once, reads the message at
//! that seq, the read positions and the event messages between the user's position and
//! that seq. Two round trips, whatever the number of conversations.
//!
//! # Retention
//!
//! A conversation's and an inbox's lists lose their heads to retention, and a base
//! (`<list>:base`) counts what left: a position is the base plus the index, in every
//! script that reads one (see `retention`).
//!
//! # Sweep
//!
//! For each shard, the conversations marked more than [`SWEEP_AGE_MS`] ago: take the
//! lease (skip the conversation if it is held), drain everything pending up to the
//! conversation's current end, and unmark it only if its pending list is then empty and
//! its score is still the one read (a newer commit re-marked it).
//!
//! # Code map
//!
//! - this file: the tuning constants, [`Relayed`], and [`MessageStore`] with its reads;
//! - `commit`: a batch, group and round, one function per numbered step above;
//! - `prepared`: a message's JSON cut around its seq, its claim and pending entry;
//! - `idempotency`: claims, and resolving or taking over another writer's key;
//! - `drain`: the lease, the step script and the rounds of member appends;
//! - `join`, `recall`, `sweep`: the join's copy, the recall and the sweeper;
//! - `retention`: trimming the heads of conversations and inboxes (and its index),
//!   and erasures;
//! - `state`: read positions and the conversation list;
//! - `scripts`: the Lua scripts (`../lua/`), with their keys and arguments;
//! - `hooks`: test-only entry points (a writer that died part-way).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::try_join_all;

use super::RedisStore;
use super::keys::{SHARDS, conv_key, user_key};
use crate::store::{
    CommitOutcome, Committed, ConvCursor, ConvEntry, Generation, MessageStore, Op, Page, PageFill,
    StoreError, TrimPass,
};
use scripts::{LIST_END, PAGE};

mod commit;
mod drain;
#[cfg(any(test, feature = "test-hooks"))]
mod hooks;
mod idempotency;
mod join;
mod prepared;
mod recall;
mod retention;
pub(super) mod scripts;

pub(super) use retention::Indexed;
mod state;
mod sweep;

/// How long a fan-out lease lasts without renewal; renewed at every round (a round is
/// two round trips). When its holder dies, every writer with a message in that
/// conversation waits this long, and on that node the whole commit batch with it: so
/// it is short. A holder that overruns it loses nothing: the next holder redoes the
/// round, and the inbox appends skip what is already there.
pub(super) const LEASE_MS: u64 = 500;
/// Most pending entries one round processes.
pub(super) const ROUND_ENTRIES: u64 = 64;
/// A round stops adding entries once this many member appends (plus one per entry) are
/// in it, so that a big group's round stays far inside the lease.
pub(super) const ROUND_MEMBERS: u64 = 4096;
/// First and longest wait between polls of a conversation whose lease someone else holds.
pub(super) const BACKOFF_START: Duration = Duration::from_micros(200);
pub(super) const BACKOFF_MAX: Duration = Duration::from_millis(2);
/// How long a writer waits for its messages' fan-out before it fails the batch.
pub(super) const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// A conversation marked longer ago than this is the sweeper's to finish.
pub(in crate::store::redis) const SWEEP_AGE_MS: u64 = 2000;
/// Conversations one sweep takes per shard.
pub(super) const SWEEP_LIMIT: u64 = 64;
/// A group whose claims took longer than this marks its conversations again before
/// storing (see the module doc).
pub(super) const REMARK_AFTER: Duration = Duration::from_millis(1000);
/// How old a claim whose message is not stored may get before a resend cancels that
/// message and takes the key over. A live writer stores within one round trip of its
/// claim; a writer that died in between (a worker killed with `kill -9`) must not
/// hold up the resend, which sits in the commit task of the node it reached: every
/// batch behind it waits too. A slow writer that is overtaken loses nothing: its
/// store script meets the cancelled id and it answers with the taker's message.
pub(super) const TAKEOVER_AFTER: Duration = Duration::from_millis(500);
/// Most records waiting in [`Relayed`]; the oldest are dropped beyond it (their
/// messages are in the inboxes, and the workers are told to catch up).
pub(super) const RELAYED_MAX: usize = 10_000;
/// Messages a join copies per script.
pub(super) const JOIN_CHUNK: u64 = 128;
/// Inbox entries one script of a recall's inbox rewrite looks at.
pub(super) const RECALL_CHUNK: u64 = 128;
/// Most inbox entries a recall looks at, from the tail, in each holder's inbox: the
/// entries that arrived after the message (see `recall`'s rewrite).
pub(super) const RECALL_SCAN: u64 = 4096;
/// Holders whose inboxes a recall rewrites at once.
pub(super) const RECALL_HOLDERS_AT_ONCE: usize = 64;
/// Items one `LRANGE` of a page read asks for.
pub(super) const READ_CHUNK: usize = 128;
/// How often a group's messages may be re-run (cancelled ids, taken-over claims).
pub(super) const MAX_ROUNDS: usize = 3;

/// Committed records of messages this store fanned out for other writers (or for the
/// sweeper), waiting for [`MessageStore::take_relayed`].
#[derive(Default)]
pub(crate) struct Relayed {
    // std Mutex: pushes and takes are short and never span an await.
    queue: Mutex<VecDeque<Committed>>,
    /// Records were dropped since [`Relayed::take_lost`] last looked.
    lost: AtomicBool,
}

impl Relayed {
    pub(super) fn push(&self, items: impl IntoIterator<Item = Committed>) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.extend(items);
        let over = q.len().saturating_sub(RELAYED_MAX);
        if over > 0 {
            q.drain(..over);
            drop(q);
            self.lost.store(true, Ordering::Relaxed);
            tracing::warn!(
                dropped = over,
                "relayed queue full: oldest fan-outs dropped, the workers will catch up"
            );
        }
    }

    fn take(&self) -> Vec<Committed> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.drain(..).collect()
    }

    fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::Relaxed)
    }
}

/// Indices grouped by key, groups in the order their keys first appear.
pub(super) fn group_by<'a>(
    items: impl Iterator<Item = (usize, &'a str)>,
) -> Vec<(&'a str, Vec<usize>)> {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, key) in items {
        match at.get(key) {
            Some(&g) => groups[g].1.push(i),
            None => {
                at.insert(key, groups.len());
                groups.push((key, vec![i]));
            }
        }
    }
    groups
}

/// A contradiction between stored records, or a script's reply of the wrong shape.
pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

impl RedisStore {
    /// One page of the list at `key` (whose head retention trims): items after position
    /// `after`, as (position, item), from the oldest one kept (and `trimmed`) when
    /// `after` lies before it.
    pub(super) async fn page(
        &self,
        key: String,
        after: u64,
        limit: u32,
    ) -> Result<Page<(u64, Bytes)>, StoreError> {
        let mut page = PageFill::new(limit);
        if i64::try_from(after).is_err() {
            return Ok(page.finish());
        }
        let mut conn = self.conn.clone();
        let mut from = after;
        let mut first = true;
        loop {
            let want = (limit as usize - page.len() + 1).min(READ_CHUNK) as u64;
            // Each chunk reads the base with its items: a trim between two chunks moves
            // the list's indices, never the positions.
            let (base, chunk): (u64, Vec<Vec<u8>>) = PAGE
                .key(&key)
                .arg(from)
                .arg(want)
                .invoke_async(&mut conn)
                .await?;
            if first && from < base {
                page.set_trimmed();
            }
            first = false;
            let start = from.max(base);
            let got = chunk.len() as u64;
            for (k, item) in chunk.into_iter().enumerate() {
                let len = item.len();
                if !page.push((start + k as u64 + 1, Bytes::from(item)), len) {
                    return Ok(page.finish());
                }
            }
            if got < want {
                return Ok(page.finish());
            }
            from = start + got;
        }
    }
}

#[async_trait]
impl MessageStore for RedisStore {
    fn generation(&self) -> Generation {
        self.known_generation()
    }

    async fn verify_generation(&self) -> Result<Generation, StoreError> {
        let (generation, changed) = self.verify().await?;
        if changed {
            metrics::counter!("imd_state_lost_total").increment(1);
        }
        Ok(generation)
    }

    async fn read_generation(&self) -> Result<Generation, StoreError> {
        let (generation, changed) = self.verify_read().await?;
        if changed {
            metrics::counter!("imd_state_lost_total").increment(1);
        }
        Ok(generation)
    }

    async fn commit(&self, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.commit_batch(batch, true).await
    }

    async fn inbox(
        &self,
        uid: &str,
        after: u64,
        limit: u32,
    ) -> Result<Page<(u64, Bytes)>, StoreError> {
        self.page(user_key(uid, "inbox"), after, limit).await
    }

    async fn history(&self, conv: &str, after: u64, limit: u32) -> Result<Page<Bytes>, StoreError> {
        let page = self.page(conv_key(conv, "msgs"), after, limit).await?;
        Ok(Page {
            items: page.items.into_iter().map(|(_, json)| json).collect(),
            more: page.more,
            trimmed: page.trimmed,
        })
    }

    async fn conversations(
        &self,
        uid: &str,
        before: Option<&ConvCursor>,
        limit: u32,
    ) -> Result<Page<ConvEntry>, StoreError> {
        self.conversation_page(uid, before, limit).await
    }

    async fn in_conversations(&self, uid: &str, conv: &str) -> Result<bool, StoreError> {
        self.listed(uid, conv).await
    }

    async fn read_positions(&self, conv: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.positions(conv).await
    }

    async fn last_seq(&self, conv: &str) -> Result<u64, StoreError> {
        LIST_END
            .key(conv_key(conv, "msgs"))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    /// Returns 0: Redis expires each idempotency key by itself (its window after its
    /// claim, `PX`: see [`RedisStore::with_idempotency_window`]), so there is nothing
    /// left to purge.
    async fn expire_idempotency(&self, _before_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn trim(
        &self,
        before_ms: i64,
        budget: usize,
        pass: &mut TrimPass,
    ) -> Result<u64, StoreError> {
        self.trim_step(before_ms, budget, pass).await
    }

    async fn erase(&self, conv: &str, sender: &str, seqs: &[u64]) -> Result<u64, StoreError> {
        self.erase_in_conversation(conv, sender, seqs).await
    }

    async fn erase_copies(
        &self,
        uid: &str,
        targets: &HashSet<(String, u64)>,
    ) -> Result<u64, StoreError> {
        self.erase_in_inbox(uid, targets).await
    }

    async fn sweep(&self) -> Result<usize, StoreError> {
        let counts = try_join_all((0..SHARDS).map(|k| self.sweep_shard(k))).await?;
        Ok(counts.into_iter().sum())
    }

    fn take_relayed(&self) -> Vec<Committed> {
        self.relayed.take()
    }

    fn pushes_lost(&self) -> bool {
        // Both looked at, so that each flag is cleared.
        let dropped = self.relayed.take_lost();
        let retried = self.conn.take_retried();
        dropped || retried
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay queue is bounded; what it drops is reported once, so that the workers
    /// catch up instead.
    #[test]
    fn relayed_records_dropped_beyond_the_bound_are_reported() {
        let relayed = Relayed::default();
        let record = |seq| Committed {
            json: Bytes::from_static(b"{}"),
            conv: "d:a~b".into(),
            seq,
            ts: 0,
            recipients: vec![("a".into(), seq)],
        };
        relayed.push((1..=RELAYED_MAX as u64).map(record));
        assert!(!relayed.take_lost(), "at the bound nothing is dropped");
        relayed.push([record(RELAYED_MAX as u64 + 1)]);
        assert!(relayed.take_lost());
        assert!(!relayed.take_lost(), "reported once");
        let kept = relayed.take();
        assert_eq!(kept.len(), RELAYED_MAX);
        assert_eq!(kept[0].seq, 2, "the oldest went");
    }
}

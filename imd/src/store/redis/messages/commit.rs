//! A commit, one function per step of the protocol that the *Commit* section of
//! `messages` describes: a batch is cut into groups at its joins, recalls and the reads
//! of conversations it writes (its other reads run beside them), each group runs in
//! rounds (a message whose claim or id changed hands runs again), and each round is
//! [`RedisStore::claim_and_mark`] (1), [`RedisStore::store_and_look_up`] (2),
//! [`RedisStore::drain_and_wait`] (3) and [`RedisStore::outcomes`] (4). It must never
//! answer a sender before the message's inbox entries are written.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::{join_all, try_join_all};

use super::drain::{Drain, Fanned, Step, StepReply, token};
use super::idempotency::{Claim, Resolved};
use super::prepared::Prepared;
use super::scripts::{MARK, STORE};
use super::{LEASE_MS, MAX_ROUNDS, REMARK_AFTER, ROUND_ENTRIES, ROUND_MEMBERS, corrupt, group_by};
use crate::store::redis::RedisStore;
use crate::store::redis::keys::{conv_key, hook_shard_key, shard_key, shard_of};
use crate::store::{CommitOutcome, Committed, Op, StoreError};

/// Where step 1 sent each message of a round (indices into the round's messages).
pub(super) struct Sorted {
    /// The claim is ours (or the message has no cid): to store.
    store: Vec<usize>,
    /// Duplicates of messages of this batch: `(index, id)`.
    local: Vec<(usize, String)>,
    /// Duplicates of other writers' messages: `(index, key value, conv, id)`.
    remote: Vec<(usize, String, String, String)>,
}

/// What step 2 wrote and found.
pub(super) struct Stored<'a> {
    /// The messages stored, by conversation, in the order of [`Stored::scripts`].
    by_conv: Vec<(&'a str, Vec<usize>)>,
    /// Per conversation: the seqs (0: cancelled id), the drain's first step (when the
    /// round fans out) and its lease token.
    scripts: Vec<(Vec<u64>, Option<Step>, String)>,
    /// What each remote duplicate's key names, in the order of [`Sorted::remote`].
    resolved: Vec<Resolved>,
}

/// What step 3 came to.
pub(super) struct Drained {
    /// Per conversation of [`Stored::by_conv`], the seqs its store script gave.
    seqs_by_conv: Vec<Vec<u64>>,
    /// Every entry this round's drains fanned out.
    fanned: Vec<Fanned>,
    /// What each remote duplicate's key names once its message is stored (or cancelled).
    waited: Vec<Resolved>,
}

impl RedisStore {
    /// Commits `batch`: each run of messages between joins, recalls and the reads of
    /// conversations the batch writes, as one group, then the join, recall or read, so
    /// that each sees exactly the messages before it, as in the embedded store. The
    /// other reads (the usual ones: a client reads what was committed before) run
    /// beside all of it, since no message of the batch can change what they clamp to.
    /// Without `fan` no inbox entry is written (a test hook's dead writer).
    pub(super) async fn commit_batch(
        &self,
        batch: Vec<Op>,
        fan: bool,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let n = batch.len();
        let written: HashSet<String> = batch
            .iter()
            .filter_map(|op| match op {
                Op::Message(m) => Some(m.conv.clone()),
                Op::Recall(r) => Some(r.conv.clone()),
                Op::Join { .. } | Op::Read { .. } => None,
            })
            .collect();
        let mut reads = Vec::new();
        let mut ordered = Vec::with_capacity(n);
        for (i, op) in batch.into_iter().enumerate() {
            match op {
                Op::Read { conv, uid, seq } if !written.contains(&conv) => {
                    reads.push(async move {
                        Ok::<_, StoreError>((i, self.read(&conv, &uid, seq).await?))
                    });
                }
                op => ordered.push((i, op)),
            }
        }
        let (mut out, reads) =
            tokio::try_join!(self.commit_ordered(ordered, n, fan), try_join_all(reads))?;
        for (i, o) in reads {
            out[i] = Some(o);
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| corrupt("an op of the batch got no outcome")))
            .collect()
    }

    /// The messages, joins, recalls and the reads that must see them, of a batch of `n`
    /// ops, in order; their outcomes at their places in the batch.
    async fn commit_ordered(
        &self,
        ops: Vec<(usize, Op)>,
        n: usize,
        fan: bool,
    ) -> Result<Vec<Option<CommitOutcome>>, StoreError> {
        let mut out: Vec<Option<CommitOutcome>> = (0..n).map(|_| None).collect();
        // JSON of this batch's stored messages by id, for duplicates within the batch.
        let mut known: HashMap<String, Bytes> = HashMap::new();
        let mut group = Vec::new();
        for (i, op) in ops {
            match op {
                Op::Message(m) => group.push(Prepared::new(i, m)?),
                Op::Join { conv, uid } => {
                    self.commit_group(std::mem::take(&mut group), &mut out, &mut known, fan)
                        .await?;
                    out[i] = Some(CommitOutcome::Joined(self.join(&conv, &uid).await?));
                }
                Op::Recall(r) => {
                    self.commit_group(std::mem::take(&mut group), &mut out, &mut known, fan)
                        .await?;
                    let outcome = match self.recall(&r).await? {
                        Err(why) => Err(why),
                        Ok((id, recalled)) => {
                            // A resend later in this batch answers with what is stored.
                            if let Some(json) = known.get_mut(&id) {
                                *json = recalled;
                            }
                            let event = vec![Prepared::new(i, r.event)?];
                            self.commit_group(event, &mut out, &mut known, fan).await?;
                            match out[i].take() {
                                Some(CommitOutcome::New(c)) => Ok(c),
                                other => {
                                    return Err(corrupt(format!(
                                        "a recall's event message came to {other:?}"
                                    )));
                                }
                            }
                        }
                    };
                    out[i] = Some(CommitOutcome::Recalled(outcome));
                }
                Op::Read { conv, uid, seq } => {
                    self.commit_group(std::mem::take(&mut group), &mut out, &mut known, fan)
                        .await?;
                    out[i] = Some(self.read(&conv, &uid, seq).await?);
                }
            }
        }
        self.commit_group(group, &mut out, &mut known, fan).await?;
        Ok(out)
    }

    /// Commits a run of messages, re-running those whose claim or id changed hands.
    async fn commit_group(
        &self,
        mut todo: Vec<Prepared>,
        out: &mut [Option<CommitOutcome>],
        known: &mut HashMap<String, Bytes>,
        fan: bool,
    ) -> Result<(), StoreError> {
        for _ in 0..MAX_ROUNDS {
            if todo.is_empty() {
                return Ok(());
            }
            todo = self.commit_round(todo, out, known, fan).await?;
        }
        if todo.is_empty() {
            return Ok(());
        }
        Err(StoreError::Unsettled { count: todo.len() })
    }

    /// One pass over `todo`, the four steps in order; returns the messages to run again.
    async fn commit_round(
        &self,
        todo: Vec<Prepared>,
        out: &mut [Option<CommitOutcome>],
        known: &mut HashMap<String, Bytes>,
        fan: bool,
    ) -> Result<Vec<Prepared>, StoreError> {
        let sorted = self.claim_and_mark(&todo, known).await?;
        let stored = self.store_and_look_up(&todo, &sorted, fan).await?;
        let Stored {
            by_conv,
            scripts,
            resolved,
        } = stored;
        let drained = self
            .drain_and_wait(&todo, &by_conv, scripts, &sorted, resolved)
            .await?;
        let (settled, mut take_over) = self.outcomes(&todo, &by_conv, sorted, drained, known);
        drop(by_conv);
        let mut again = Vec::new();
        for (i, (mut p, s)) in todo.into_iter().zip(settled).enumerate() {
            match s {
                Some(o) => out[p.idx] = Some(o),
                None => {
                    p.take_over = take_over.remove(&i);
                    again.push(p);
                }
            }
        }
        Ok(again)
    }

    /// Step 1: claims the idempotency keys and, at the same time, marks the
    /// conversations dirty in their fan-out shards; sorts the messages by what their
    /// claims came to. Marking a message that turns out a duplicate is harmless: the
    /// sweeper finds nothing pending and unmarks.
    async fn claim_and_mark(
        &self,
        todo: &[Prepared],
        known: &HashMap<String, Bytes>,
    ) -> Result<Sorted, StoreError> {
        let marked = Instant::now();
        // The retention index goes beside them (rarely anything: see `retention`).
        let (claims, (), ()) = tokio::try_join!(
            self.claim(todo),
            self.mark(todo.iter().map(|p| p.conv.as_str())),
            self.index_for_retention(todo)
        )?;

        let here: HashSet<&str> = todo.iter().map(|p| p.id.as_str()).collect();
        let mut sorted = Sorted {
            store: Vec::new(),
            local: Vec::new(),
            remote: Vec::new(),
        };
        for (i, c) in claims.into_iter().enumerate() {
            match c {
                Claim::Mine => sorted.store.push(i),
                Claim::Earlier(value, conv, id) => {
                    if known.contains_key(&id) || here.contains(id.as_str()) {
                        sorted.local.push((i, id));
                    } else {
                        sorted.remote.push((i, value, conv, id));
                    }
                }
            }
        }
        // The mark must not be older than the sweeper's age threshold when the message
        // lands (see *Differences* in `messages`).
        if marked.elapsed() > REMARK_AFTER {
            self.mark(sorted.store.iter().map(|&i| todo[i].conv.as_str()))
                .await?;
        }
        Ok(sorted)
    }

    /// Step 2: one store script per conversation (which also takes the lease and reads
    /// the first round), and the lookups of the messages other writers' keys name.
    async fn store_and_look_up<'a>(
        &self,
        todo: &'a [Prepared],
        sorted: &Sorted,
        fan: bool,
    ) -> Result<Stored<'a>, StoreError> {
        let by_conv = group_by(sorted.store.iter().map(|&i| (i, todo[i].conv.as_str())));
        let stores = by_conv.iter().map(|(conv, idx)| {
            let msgs: Vec<&Prepared> = idx.iter().map(|&i| &todo[i]).collect();
            self.store_conv(conv, msgs, fan)
        });
        let lookups = sorted
            .remote
            .iter()
            .map(|(_, _, conv, id)| self.resolve(conv, id, false));
        let (scripts, resolved) = tokio::try_join!(try_join_all(stores), try_join_all(lookups))?;
        Ok(Stored {
            by_conv,
            scripts,
            resolved,
        })
    }

    /// Step 3: drains each conversation, concurrently, and waits for the messages other
    /// writers' keys name that are still being stored. On failure, what this round
    /// wrote is still pushed (relayed) before the error returns.
    async fn drain_and_wait(
        &self,
        todo: &[Prepared],
        by_conv: &[(&str, Vec<usize>)],
        scripts: Vec<(Vec<u64>, Option<Step>, String)>,
        sorted: &Sorted,
        resolved: Vec<Resolved>,
    ) -> Result<Drained, StoreError> {
        let mut seqs_by_conv = Vec::with_capacity(scripts.len());
        let mut drains = Vec::new();
        for ((conv, _), (seqs, step, token)) in by_conv.iter().zip(scripts) {
            seqs_by_conv.push(seqs);
            if let Some(step) = step {
                drains.push(async move { self.drain(conv, &token, step, Drain::Commit).await });
            }
        }
        let waits = sorted
            .remote
            .iter()
            .zip(resolved)
            .map(|((i, _, conv, id), r)| {
                let resend = &todo[*i];
                async move {
                    match r {
                        Resolved::Missing => self.await_stored(resend, conv, id).await,
                        r => Ok(r),
                    }
                }
            });
        let (drained, waited) = tokio::join!(join_all(drains), try_join_all(waits));
        let mut fanned = Vec::new();
        let mut failed = None;
        for (f, r) in drained {
            fanned.extend(f);
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        }
        match (failed, waited) {
            (None, Ok(waited)) => Ok(Drained {
                seqs_by_conv,
                fanned,
                waited,
            }),
            (Some(e), _) | (None, Err(e)) => {
                // What we wrote is ours to push even though the batch fails.
                self.relayed.push(
                    fanned
                        .into_iter()
                        .filter(|f| !f.recipients.is_empty())
                        .map(Fanned::into_committed),
                );
                Err(e)
            }
        }
    }

    /// Step 4: the outcome of each message of the round (`None`: runs again), and the
    /// key values that those running again may take over. Entries of other writers'
    /// messages that this round wrote go to the relay.
    fn outcomes(
        &self,
        todo: &[Prepared],
        by_conv: &[(&str, Vec<usize>)],
        sorted: Sorted,
        drained: Drained,
        known: &mut HashMap<String, Bytes>,
    ) -> (Vec<Option<CommitOutcome>>, HashMap<usize, String>) {
        let Drained {
            seqs_by_conv,
            fanned,
            waited,
        } = drained;
        let mut own: HashMap<(&str, u64), usize> = HashMap::new();
        let mut seqs = vec![0u64; todo.len()];
        for ((_, idx), got) in by_conv.iter().zip(&seqs_by_conv) {
            for (&i, &seq) in idx.iter().zip(got) {
                seqs[i] = seq;
                if seq > 0 {
                    own.insert((todo[i].conv.as_str(), seq), i);
                }
            }
        }
        let mut recipients: HashMap<usize, Vec<(String, u64)>> = HashMap::new();
        let mut relay = Vec::new();
        for f in fanned {
            match own.get(&(f.conv.as_str(), f.entry.seq)) {
                Some(&i) => {
                    recipients.insert(i, f.recipients);
                }
                None if !f.recipients.is_empty() => relay.push(f.into_committed()),
                None => {}
            }
        }
        self.relayed.push(relay);

        let mut settled: Vec<Option<CommitOutcome>> = (0..todo.len()).map(|_| None).collect();
        for &i in &sorted.store {
            let p = &todo[i];
            if seqs[i] == 0 {
                continue; // cancelled: runs again as a resend
            }
            let json = p.json(seqs[i]);
            known.insert(p.id.clone(), json.clone());
            settled[i] = Some(CommitOutcome::New(Committed {
                json,
                conv: p.conv.clone(),
                seq: seqs[i],
                ts: p.ts,
                recipients: recipients.remove(&i).unwrap_or_default(),
            }));
        }
        for (i, id) in &sorted.local {
            if let Some(json) = known.get(id) {
                settled[*i] = Some(CommitOutcome::Duplicate(json.clone()));
            }
        }
        let mut take_over: HashMap<usize, String> = HashMap::new();
        for ((i, value, _, _), r) in sorted.remote.into_iter().zip(waited) {
            match r {
                Resolved::Stored(json) => settled[i] = Some(CommitOutcome::Duplicate(json)),
                Resolved::Cancelled | Resolved::Missing => {
                    take_over.insert(i, value);
                }
            }
        }
        (settled, take_over)
    }

    /// Marks `convs` dirty in their shards, one script per shard.
    async fn mark<'a>(&self, convs: impl Iterator<Item = &'a str>) -> Result<(), StoreError> {
        let mut by_shard: HashMap<u32, HashSet<&str>> = HashMap::new();
        for conv in convs {
            by_shard.entry(shard_of(conv)).or_default().insert(conv);
        }
        try_join_all(by_shard.into_iter().map(|(k, convs)| {
            let mut inv = MARK.key(shard_key(k));
            if self.outbox {
                inv.key(hook_shard_key(k));
            }
            for conv in convs {
                inv.arg(conv);
            }
            let mut conn = self.conn.clone();
            async move {
                inv.invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(StoreError::from)
            }
        }))
        .await
        .map(drop)
    }

    /// Stores one conversation's messages; returns their seqs (0: cancelled), and when
    /// `fan`, the first step of the drain with its lease token.
    async fn store_conv(
        &self,
        conv: &str,
        msgs: Vec<&Prepared>,
        fan: bool,
    ) -> Result<(Vec<u64>, Option<Step>, String), StoreError> {
        let token = token();
        let mut inv = STORE.prepare_invoke();
        inv.key(conv_key(conv, "msgs"))
            .key(conv_key(conv, "ids"))
            .key(conv_key(conv, "pending"))
            .key(conv_key(conv, "lock"))
            .key(conv_key(conv, "read"))
            .key(conv_key(conv, "events"));
        if self.outbox {
            inv.key(conv_key(conv, "hook"));
        }
        inv.arg(&token)
            .arg(LEASE_MS)
            .arg(ROUND_ENTRIES)
            .arg(ROUND_MEMBERS)
            .arg(u8::from(fan));
        for p in &msgs {
            inv.arg(&p.id)
                .arg(&p.prefix[..])
                .arg(&p.suffix[..])
                .arg(p.pending_tail())
                .arg(p.reader());
        }
        let mut conn = self.conn.clone();
        let (seqs, step): (Vec<u64>, StepReply) = inv.invoke_async(&mut conn).await?;
        if seqs.len() != msgs.len() {
            return Err(corrupt(format!(
                "store script of {conv}: {} seqs for {} messages",
                seqs.len(),
                msgs.len()
            )));
        }
        let step = fan.then(|| Step::from(step));
        Ok((seqs, step, token))
    }
}

//! Draining a conversation's pending fan-outs into its members' inboxes, under the
//! conversation's lease: the step script (pop what is done, take or renew the lease,
//! read the next round) and the rounds of member appends. Commits, joins and the sweep
//! all drain through here (see the *Commit* steps in `messages`); joins and recalls
//! run their own work under the lease once the drain is done ([`RedisStore::with_lease`]).
//! It must never hold the lease across anything but the drain of that one
//! conversation and the work a join or a recall hands it.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::try_join_all;

use super::scripts::{APPEND, BUSY, DONE, HELD, RELEASE, ROUND, STEP};
use super::{
    BACKOFF_MAX, BACKOFF_START, DRAIN_DEADLINE, LEASE_MS, ROUND_ENTRIES, ROUND_MEMBERS, corrupt,
};
use crate::store::redis::RedisStore;
use crate::store::redis::keys::{conv_key, user_key};
use crate::store::{Committed, StoreError};

/// One pending entry, as a round reads it.
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) ts: i64,
    pub(super) members: Vec<String>,
    pub(super) json: Bytes,
}

/// An entry this call fanned out, with the `(uid, useq)` pairs it appended.
pub(super) struct Fanned {
    pub(super) conv: String,
    pub(super) entry: Entry,
    pub(super) recipients: Vec<(String, u64)>,
}

impl Fanned {
    pub(super) fn into_committed(self) -> Committed {
        Committed {
            json: self.entry.json,
            conv: self.conv,
            seq: self.entry.seq,
            ts: self.entry.ts,
            recipients: self.recipients,
        }
    }
}

/// A step script's reply.
pub(super) struct Step {
    pub(super) code: i64,
    pub(super) need: u64,
    pub(super) entries: Vec<Vec<u8>>,
    pub(super) jsons: Vec<Vec<u8>>,
    /// Whether the pending list was empty.
    pub(super) empty: bool,
}

pub(super) type StepReply = (i64, u64, Vec<Vec<u8>>, Vec<Vec<u8>>, i64);

impl Step {
    /// What a commit's drain ends with once its entries are written and its last step
    /// is left to [`RedisStore::finish_later`].
    pub(super) fn finished(need: u64) -> Self {
        Self {
            code: DONE,
            need,
            entries: Vec::new(),
            jsons: Vec::new(),
            empty: false,
        }
    }
}

/// How a drain goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// A writer's: waits for a lease held elsewhere, and once its own entries are
    /// written leaves the last step (pop and free the lease) to run behind its answer.
    Commit,
    /// A join's: waits for the lease, and ends holding it.
    Join,
    /// The sweeper's: stops at a lease held elsewhere, and steps to the end, so that it
    /// knows whether the pending list is empty.
    Sweep,
}

impl From<StepReply> for Step {
    fn from((code, need, entries, jsons, empty): StepReply) -> Self {
        Self {
            code,
            need,
            entries,
            jsons,
            empty: empty == 1,
        }
    }
}

/// A call of the step script (see `step_lib.lua`).
pub(super) fn step_call(
    conv: &str,
    token: &str,
    last: u64,
    need: u64,
    hold: bool,
) -> redis::ScriptInvocation<'static> {
    let mut inv = STEP.prepare_invoke();
    inv.key(conv_key(conv, "pending"))
        .key(conv_key(conv, "lock"))
        .key(conv_key(conv, "msgs"))
        .arg(token)
        .arg(LEASE_MS)
        .arg(last)
        .arg(need)
        .arg(ROUND_ENTRIES)
        .arg(ROUND_MEMBERS)
        .arg(u8::from(hold));
    inv
}

/// A fresh lease token: unique across processes and calls.
pub(super) fn token() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The entries and messages of a step's round, checked to be contiguous.
pub(super) fn parse_entries(
    conv: &str,
    entries: Vec<Vec<u8>>,
    jsons: Vec<Vec<u8>>,
) -> Result<Vec<Entry>, StoreError> {
    if entries.len() != jsons.len() || entries.is_empty() {
        return Err(corrupt(format!(
            "pending of {conv}: {} entries for {} messages",
            entries.len(),
            jsons.len()
        )));
    }
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for (raw, json) in entries.into_iter().zip(jsons) {
        let text =
            String::from_utf8(raw).map_err(|_| corrupt(format!("pending of {conv}: not UTF-8")))?;
        let mut lines = text.split('\n');
        let head = lines.next().unwrap_or_default();
        let (seq, ts) = head
            .split_once(' ')
            .and_then(|(s, t)| Some((s.parse::<u64>().ok()?, t.parse::<i64>().ok()?)))
            .ok_or_else(|| corrupt(format!("pending of {conv}: bad entry {head:?}")))?;
        if let Some(prev) = out.last()
            && prev.seq + 1 != seq
        {
            return Err(corrupt(format!(
                "pending of {conv}: {seq} after {}",
                prev.seq
            )));
        }
        out.push(Entry {
            seq,
            ts,
            members: lines.map(str::to_owned).collect(),
            json: Bytes::from(json),
        });
    }
    Ok(out)
}

impl RedisStore {
    /// Drains `conv` and keeps its lease (what the drain wrote for other writers goes
    /// to the relay), runs `work` with the lease's token and the seq the drain
    /// reached, then releases the lease, whatever `work` returned. When the lease
    /// cannot be kept, `work` does not run and the answer is `lost(conv)`.
    pub(super) async fn with_lease<T>(
        &self,
        conv: &str,
        lost: fn(String) -> StoreError,
        work: impl AsyncFnOnce(&str, u64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let token = token();
        let first = self.step(conv, &token, 0, 0, true).await?;
        let (fanned, held) = self.drain(conv, &token, first, Drain::Join).await;
        self.relay(fanned);
        let done = match held {
            Ok(s) if s.code == HELD => work(&token, s.need).await,
            Ok(_) => Err(lost(conv.to_owned())),
            Err(e) => Err(e),
        };
        let released = RELEASE
            .key(conv_key(conv, "lock"))
            .arg(&token)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from);
        let done = done?;
        released?;
        Ok(done)
    }

    /// Hands entries this call fanned out for other writers to the relay.
    pub(super) fn relay(&self, fanned: Vec<Fanned>) {
        self.relayed.push(
            fanned
                .into_iter()
                .filter(|f| !f.recipients.is_empty())
                .map(Fanned::into_committed),
        );
    }

    /// One step of a drain (see `step_lib.lua`).
    pub(super) async fn step(
        &self,
        conv: &str,
        token: &str,
        last: u64,
        need: u64,
        hold: bool,
    ) -> Result<Step, StoreError> {
        let mut conn = self.conn.clone();
        let reply: StepReply = step_call(conv, token, last, need, hold)
            .invoke_async(&mut conn)
            .await?;
        Ok(reply.into())
    }

    /// The last step of a commit's drain, whose round wrote every inbox entry of the
    /// batch: it only pops those entries from the pending list and frees the lease, so
    /// the writer answers its senders without waiting for it (one round trip fewer).
    /// If it never runs (the process dies, Redis fails) nothing is lost: the lease
    /// expires after [`LEASE_MS`], and the next drain of the conversation redoes the
    /// round, whose member appends skip what is already there.
    pub(super) fn finish_later(&self, conv: &str, token: &str, last: u64, need: u64) {
        let inv = step_call(conv, token, last, need, false);
        let mut conn = self.conn.clone();
        let conv = conv.to_owned();
        tokio::spawn(async move {
            if let Err(e) = inv.invoke_async::<StepReply>(&mut conn).await {
                tracing::warn!(%conv, error = %e, "freeing a fan-out lease failed; it expires by itself");
            }
        });
    }

    /// Drains `conv` from `step` on until its pending head is past `step.need`, the way
    /// `mode` says. Returns what this call fanned out even when it fails.
    pub(super) async fn drain(
        &self,
        conv: &str,
        token: &str,
        mut step: Step,
        mode: Drain,
    ) -> (Vec<Fanned>, Result<Step, StoreError>) {
        let hold = mode == Drain::Join;
        let deadline = Instant::now() + DRAIN_DEADLINE;
        let mut backoff = BACKOFF_START;
        let mut done = Vec::new();
        loop {
            let next = match step.code {
                ROUND => {
                    backoff = BACKOFF_START;
                    let need = step.need;
                    match self.round(conv, step).await {
                        Ok((fanned, last)) => {
                            done.extend(fanned);
                            if mode == Drain::Commit && last >= need {
                                self.finish_later(conv, token, last, need);
                                return (done, Ok(Step::finished(need)));
                            }
                            self.step(conv, token, last, need, hold).await
                        }
                        Err(e) => Err(e),
                    }
                }
                BUSY if mode != Drain::Sweep => {
                    if Instant::now() >= deadline {
                        return (
                            done,
                            Err(StoreError::FanoutHeld {
                                conv: conv.to_owned(),
                                after: DRAIN_DEADLINE,
                            }),
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    self.step(conv, token, 0, step.need, hold).await
                }
                _ => return (done, Ok(step)),
            };
            match next {
                Ok(s) => step = s,
                Err(e) => return (done, Err(e)),
            }
        }
    }

    /// Fans one round's entries out, one script per member; returns them with the
    /// pairs appended, and the last seq of the round.
    pub(super) async fn round(
        &self,
        conv: &str,
        step: Step,
    ) -> Result<(Vec<Fanned>, u64), StoreError> {
        let entries = parse_entries(conv, step.entries, step.jsons)?;
        let last = entries.last().map_or(0, |e| e.seq);
        let mut by_uid: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for uid in &e.members {
                let v = by_uid.entry(uid.as_str()).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        let calls = by_uid.into_iter().map(|(uid, idx)| {
            let mut inv = APPEND.key(user_key(uid, "inbox"));
            inv.key(user_key(uid, "pos"))
                .key(user_key(uid, "convs"))
                .arg(conv);
            for &i in &idx {
                let e = &entries[i];
                inv.arg(e.seq).arg(e.ts).arg(&e.json[..]);
            }
            let mut conn = self.conn.clone();
            async move {
                let useqs: Vec<u64> = inv.invoke_async(&mut conn).await?;
                Ok::<_, StoreError>((uid, idx, useqs))
            }
        });
        let mut useq: HashMap<(&str, usize), u64> = HashMap::new();
        for (uid, idx, useqs) in try_join_all(calls).await? {
            useq.extend(idx.into_iter().zip(useqs).map(|(i, u)| ((uid, i), u)));
        }
        let recipients: Vec<Vec<(String, u64)>> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.members
                    .iter()
                    .filter_map(|uid| match useq.get(&(uid.as_str(), i)) {
                        Some(&u) if u > 0 => Some((uid.clone(), u)),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let fanned = entries
            .into_iter()
            .zip(recipients)
            .map(|(entry, recipients)| Fanned {
                conv: conv.to_owned(),
                entry,
                recipients,
            })
            .collect();
        Ok((fanned, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_entries_parse_and_must_be_contiguous() {
        let e = parse_entries(
            "c",
            vec![b"4 17\na\nb".to_vec(), b"5 -3".to_vec()],
            vec![b"{}".to_vec(), b"[]".to_vec()],
        )
        .unwrap();
        assert_eq!(
            (e[0].seq, e[0].ts, e[0].members.clone()),
            (4, 17, vec!["a".into(), "b".into()])
        );
        assert_eq!((e[1].seq, e[1].ts, e[1].members.len()), (5, -3, 0));
        assert!(
            parse_entries(
                "c",
                vec![b"4 1".to_vec(), b"6 1".to_vec()],
                vec![vec![], vec![]]
            )
            .is_err()
        );
        assert!(parse_entries("c", vec![b"4 1".to_vec()], vec![]).is_err());
        assert!(parse_entries("c", vec![b"x 1".to_vec()], vec![vec![]]).is_err());
    }
}

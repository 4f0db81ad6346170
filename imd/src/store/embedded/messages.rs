//! Messages in redb: conversations, inboxes and idempotency keys, all written by
//! [`commit_batch`] in one write transaction per batch (one fsync), so a crash keeps a
//! batch whole or not at all. It must not read or write the directory's tables.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::EmbeddedStore;
use crate::store::{
    CommitOutcome, Committed, ConvCursor, ConvEntry, IDEMPOTENCY_WINDOW_MS, JOIN_PUSH_TAIL,
    MessageStore, Op, Page, PageFill, StoreError,
};

/// `(conv, seq)` → message JSON.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// `conv` → last `seq`.
const CONV_SEQ: TableDefinition<&str, u64> = TableDefinition::new("conv_seq");
/// `(uid, useq)` → `(conv, seq)`.
const INBOX: TableDefinition<(&str, u64), (&str, u64)> = TableDefinition::new("inbox");
/// `uid` → last `useq`.
const USER_SEQ: TableDefinition<&str, u64> = TableDefinition::new("user_seq");
/// `(from, cid)` → `(conv, seq, ts)`.
const IDEM: TableDefinition<(&str, &str), (&str, u64, i64)> = TableDefinition::new("idem");
/// `(ts, from, cid)` → (), to expire [`IDEM`] in time order.
const IDEM_BY_TS: TableDefinition<(i64, &str, &str), ()> = TableDefinition::new("idem_by_ts");
/// `(conv, uid)` → the last `seq` of a service conversation in `uid`'s inbox, so that
/// a join copies only what the joiner is missing.
const MEMBER_SEQ: TableDefinition<(&str, &str), u64> = TableDefinition::new("member_seq");

/// Creates the tables of this domain (see [`super::EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(MESSAGES)?;
    txn.open_table(CONV_SEQ)?;
    txn.open_table(INBOX)?;
    txn.open_table(USER_SEQ)?;
    txn.open_table(IDEM)?;
    txn.open_table(IDEM_BY_TS)?;
    txn.open_table(MEMBER_SEQ)?;
    Ok(())
}

fn commit_batch(db: &Database, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut messages = txn.open_table(MESSAGES)?;
        let mut conv_seq = txn.open_table(CONV_SEQ)?;
        let mut inbox = txn.open_table(INBOX)?;
        let mut user_seq = txn.open_table(USER_SEQ)?;
        let mut idem = txn.open_table(IDEM)?;
        let mut idem_by_ts = txn.open_table(IDEM_BY_TS)?;
        let mut member_seq = txn.open_table(MEMBER_SEQ)?;
        // Messages committed earlier in this batch, by (from, cid): the table lookups
        // below would find them too, but this spares decoding what we just wrote.
        let mut in_batch: HashMap<(String, String), Bytes> = HashMap::new();

        for op in batch {
            let m = match op {
                Op::Message(m) => m,
                Op::Read { .. } | Op::Recall(_) => {
                    return Err(StoreError::Corrupt("TODO(#14): read and recall".into()));
                }
                Op::Join { conv, uid } => {
                    // The messages of `conv` that `uid` does not have yet, appended to its
                    // inbox in seq order.
                    let have = member_seq
                        .get((conv.as_str(), uid.as_str()))?
                        .map_or(0, |g| g.value());
                    let mut useq = user_seq.get(uid.as_str())?.map_or(0, |g| g.value());
                    let mut last = have;
                    let mut tail = std::collections::VecDeque::with_capacity(JOIN_PUSH_TAIL);
                    for entry in
                        messages.range((conv.as_str(), have + 1)..=(conv.as_str(), u64::MAX))?
                    {
                        let (k, v) = entry?;
                        let seq = k.value().1;
                        last = seq;
                        useq += 1;
                        inbox.insert((uid.as_str(), useq), (conv.as_str(), seq))?;
                        if tail.len() == JOIN_PUSH_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back((seq, useq, Bytes::copy_from_slice(v.value())));
                    }
                    user_seq.insert(uid.as_str(), useq)?;
                    member_seq.insert((conv.as_str(), uid.as_str()), last)?;
                    let joined = tail
                        .into_iter()
                        .map(|(seq, useq, json)| Committed {
                            json,
                            conv: conv.clone(),
                            seq,
                            ts: 0,
                            recipients: vec![(uid.clone(), useq)],
                        })
                        .collect();
                    out.push(CommitOutcome::Joined(joined));
                    continue;
                }
            };
            if let Some(cid) = &m.cid {
                if let Some(json) = in_batch.get(&(m.from.clone(), cid.clone())) {
                    out.push(CommitOutcome::Duplicate(json.clone()));
                    continue;
                }
                let earlier = idem.get((m.from.as_str(), cid.as_str()))?.map(|g| {
                    let (conv, seq, ts) = g.value();
                    (conv.to_owned(), seq, ts)
                });
                if let Some((conv, seq, ts)) = earlier {
                    if m.ts - ts < IDEMPOTENCY_WINDOW_MS {
                        let json = messages
                            .get((conv.as_str(), seq))?
                            .map(|g| Bytes::copy_from_slice(g.value()))
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!("idempotency key names {conv}#{seq}"))
                            })?;
                        out.push(CommitOutcome::Duplicate(json));
                        continue;
                    }
                    // Expired but not purged yet: the new message takes the key over.
                    idem_by_ts.remove((ts, m.from.as_str(), cid.as_str()))?;
                }
            }

            let seq = conv_seq.get(m.conv.as_str())?.map_or(0, |g| g.value()) + 1;
            conv_seq.insert(m.conv.as_str(), seq)?;

            let mut recipients = Vec::with_capacity(m.members.len());
            for uid in &m.members {
                let useq = user_seq.get(uid.as_str())?.map_or(0, |g| g.value()) + 1;
                user_seq.insert(uid.as_str(), useq)?;
                inbox.insert((uid.as_str(), useq), (m.conv.as_str(), seq))?;
                recipients.push((uid.clone(), useq));
                if m.conv.starts_with("s:") {
                    member_seq.insert((m.conv.as_str(), uid.as_str()), seq)?;
                }
            }

            if let Some(cid) = &m.cid {
                idem.insert(
                    (m.from.as_str(), cid.as_str()),
                    (m.conv.as_str(), seq, m.ts),
                )?;
                idem_by_ts.insert((m.ts, m.from.as_str(), cid.as_str()), ())?;
            }

            let msg = m.to_message(seq);
            let ts = m.ts;
            let json = Bytes::from(serde_json::to_vec(&msg).map_err(StoreError::encode)?);
            messages.insert((msg.conv.as_str(), seq), json.as_ref())?;
            if let Some(cid) = msg.cid {
                in_batch.insert((msg.from, cid), json.clone());
            }
            out.push(CommitOutcome::New(Committed {
                json,
                conv: msg.conv,
                seq,
                ts,
                recipients,
            }));
        }
    }
    txn.commit()?;
    Ok(out)
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn commit(&self, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move |db| commit_batch(db, batch)).await
    }

    async fn inbox(
        &self,
        uid: &str,
        after: u64,
        limit: u32,
    ) -> Result<Page<(u64, Bytes)>, StoreError> {
        let uid = uid.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let inbox = txn.open_table(INBOX)?;
            let messages = txn.open_table(MESSAGES)?;
            let start = after.saturating_add(1);
            let mut page = PageFill::new(limit);
            for entry in inbox.range((uid.as_str(), start)..=(uid.as_str(), u64::MAX))? {
                let (k, v) = entry?;
                if !page.has_room() {
                    break;
                }
                let (_, useq) = k.value();
                let (conv, seq) = v.value();
                let json = messages
                    .get((conv, seq))?
                    .map(|g| Bytes::copy_from_slice(g.value()))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("inbox of {uid} names missing {conv}#{seq}"))
                    })?;
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
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let messages = txn.open_table(MESSAGES)?;
            let start = after.saturating_add(1);
            let mut page = PageFill::new(limit);
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
        _uid: &str,
        _before: Option<&ConvCursor>,
        _limit: u32,
    ) -> Result<Page<ConvEntry>, StoreError> {
        Err(StoreError::Corrupt("TODO(#14): conversations".into()))
    }

    async fn in_conversations(&self, _uid: &str, _conv: &str) -> Result<bool, StoreError> {
        Err(StoreError::Corrupt("TODO(#14): in_conversations".into()))
    }

    async fn read_positions(&self, _conv: &str) -> Result<Vec<(String, u64)>, StoreError> {
        Err(StoreError::Corrupt("TODO(#14): read_positions".into()))
    }

    async fn last_seq(&self, conv: &str) -> Result<u64, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(CONV_SEQ)?;
            Ok(t.get(conv.as_str())?.map_or(0, |g| g.value()))
        })
        .await
    }

    async fn expire_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let mut n = 0;
            {
                let mut idem = txn.open_table(IDEM)?;
                let mut by_ts = txn.open_table(IDEM_BY_TS)?;
                let mut expired = Vec::new();
                for entry in by_ts.range((i64::MIN, "", "")..(before_ms, "", ""))? {
                    let (k, _) = entry?;
                    let (ts, from, cid) = k.value();
                    expired.push((ts, from.to_owned(), cid.to_owned()));
                }
                for (ts, from, cid) in expired {
                    by_ts.remove((ts, from.as_str(), cid.as_str()))?;
                    idem.remove((from.as_str(), cid.as_str()))?;
                    n += 1;
                }
            }
            txn.commit()?;
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewMessage;
    use serde_json::json;
    use shared::protocol::Message;

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

    fn new(o: &CommitOutcome) -> &Committed {
        match o {
            CommitOutcome::New(c) => c,
            _ => panic!("expected a new message"),
        }
    }

    #[tokio::test]
    async fn sequences_are_gapless_per_conv_and_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
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

    #[tokio::test]
    async fn idempotency_within_batch_across_batches_and_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store
                .commit(vec![msg("d:a~b", "a", Some("k"), 1, &["a", "b"])])
                .await
                .unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
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

    #[tokio::test]
    async fn join_gives_the_whole_history_to_the_joiner() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
}

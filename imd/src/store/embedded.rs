//! The embedded backend: redb, under `--data-dir`.
//!
//! Why redb: pure Rust, ACID with copy-on-write B-trees, crash-safe without a
//! recovery step, a stable file format, and durable by default (`Durability::Immediate`
//! fsyncs at commit). Its single writer suits us: the business layer already funnels
//! every commit through one group-commit task, so many messages share one fsync.
//! Reads run in MVCC read transactions and never wait for the writer.
//!
//! The file is locked by the process that opens it, which is why the secrets live in
//! their own file beside it (`imd token` must read them while `imd serve` runs).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use shared::protocol::Message;

use super::{
    CommitOutcome, Committed, IDEMPOTENCY_WINDOW_MS, MessageStore, NewMessage, PAGE_BYTES, Page,
    StoreError,
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

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into().to_string())
}

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file `dir/imd.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("create {}: {e}", dir.display())))?;
        let db = Database::create(dir.join("imd.redb")).map_err(db_err)?;
        // Create every table once, so read transactions never meet a missing one.
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(MESSAGES).map_err(db_err)?;
        txn.open_table(CONV_SEQ).map_err(db_err)?;
        txn.open_table(INBOX).map_err(db_err)?;
        txn.open_table(USER_SEQ).map_err(db_err)?;
        txn.open_table(IDEM).map_err(db_err)?;
        txn.open_table(IDEM_BY_TS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs blocking database work off the async runtime.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Db(format!("store task: {e}")))?
    }
}

fn commit_batch(db: &Database, batch: Vec<NewMessage>) -> Result<Vec<CommitOutcome>, StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut messages = txn.open_table(MESSAGES).map_err(db_err)?;
        let mut conv_seq = txn.open_table(CONV_SEQ).map_err(db_err)?;
        let mut inbox = txn.open_table(INBOX).map_err(db_err)?;
        let mut user_seq = txn.open_table(USER_SEQ).map_err(db_err)?;
        let mut idem = txn.open_table(IDEM).map_err(db_err)?;
        let mut idem_by_ts = txn.open_table(IDEM_BY_TS).map_err(db_err)?;
        // Messages committed earlier in this batch, by (from, cid): the table lookups
        // below would find them too, but this spares decoding what we just wrote.
        let mut in_batch: HashMap<(String, String), Bytes> = HashMap::new();

        for m in batch {
            if let Some(cid) = &m.cid {
                if let Some(json) = in_batch.get(&(m.from.clone(), cid.clone())) {
                    out.push(CommitOutcome::Duplicate(json.clone()));
                    continue;
                }
                let earlier = idem
                    .get((m.from.as_str(), cid.as_str()))
                    .map_err(db_err)?
                    .map(|g| {
                        let (conv, seq, ts) = g.value();
                        (conv.to_owned(), seq, ts)
                    });
                if let Some((conv, seq, ts)) = earlier {
                    if m.ts - ts < IDEMPOTENCY_WINDOW_MS {
                        let json = messages
                            .get((conv.as_str(), seq))
                            .map_err(db_err)?
                            .map(|g| Bytes::copy_from_slice(g.value()))
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!("idempotency key names {conv}#{seq}"))
                            })?;
                        out.push(CommitOutcome::Duplicate(json));
                        continue;
                    }
                    // Expired but not purged yet: the new message takes the key over.
                    idem_by_ts
                        .remove((ts, m.from.as_str(), cid.as_str()))
                        .map_err(db_err)?;
                }
            }

            let seq = conv_seq
                .get(m.conv.as_str())
                .map_err(db_err)?
                .map_or(0, |g| g.value())
                + 1;
            conv_seq.insert(m.conv.as_str(), seq).map_err(db_err)?;

            let mut recipients = Vec::with_capacity(m.members.len());
            for uid in &m.members {
                let useq = user_seq
                    .get(uid.as_str())
                    .map_err(db_err)?
                    .map_or(0, |g| g.value())
                    + 1;
                user_seq.insert(uid.as_str(), useq).map_err(db_err)?;
                inbox
                    .insert((uid.as_str(), useq), (m.conv.as_str(), seq))
                    .map_err(db_err)?;
                recipients.push((uid.clone(), useq));
            }

            if let Some(cid) = &m.cid {
                idem.insert(
                    (m.from.as_str(), cid.as_str()),
                    (m.conv.as_str(), seq, m.ts),
                )
                .map_err(db_err)?;
                idem_by_ts
                    .insert((m.ts, m.from.as_str(), cid.as_str()), ())
                    .map_err(db_err)?;
            }

            let NewMessage {
                id,
                conv,
                from,
                cid,
                body,
                ts,
                ..
            } = m;
            let msg = Message {
                id,
                conv,
                seq,
                from,
                body,
                ts,
                cid,
            };
            let json = Bytes::from(
                serde_json::to_vec(&msg).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
            messages
                .insert((msg.conv.as_str(), seq), json.as_ref())
                .map_err(db_err)?;
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
    txn.commit().map_err(db_err)?;
    Ok(out)
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn commit(&self, batch: Vec<NewMessage>) -> Result<Vec<CommitOutcome>, StoreError> {
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
            let txn = db.begin_read().map_err(db_err)?;
            let inbox = txn.open_table(INBOX).map_err(db_err)?;
            let messages = txn.open_table(MESSAGES).map_err(db_err)?;
            let start = after.saturating_add(1);
            let mut items: Vec<(u64, Bytes)> = Vec::new();
            let mut bytes = 0;
            let mut more = false;
            for entry in inbox
                .range((uid.as_str(), start)..=(uid.as_str(), u64::MAX))
                .map_err(db_err)?
            {
                let (k, v) = entry.map_err(db_err)?;
                if items.len() == limit as usize {
                    more = true;
                    break;
                }
                let (_, useq) = k.value();
                let (conv, seq) = v.value();
                let json = messages
                    .get((conv, seq))
                    .map_err(db_err)?
                    .map(|g| Bytes::copy_from_slice(g.value()))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("inbox of {uid} names missing {conv}#{seq}"))
                    })?;
                bytes += json.len();
                if bytes > PAGE_BYTES && !items.is_empty() {
                    more = true;
                    break;
                }
                items.push((useq, json));
            }
            Ok(Page { items, more })
        })
        .await
    }

    async fn history(&self, conv: &str, after: u64, limit: u32) -> Result<Page<Bytes>, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let messages = txn.open_table(MESSAGES).map_err(db_err)?;
            let start = after.saturating_add(1);
            let mut items = Vec::new();
            let mut bytes = 0;
            let mut more = false;
            for entry in messages
                .range((conv.as_str(), start)..=(conv.as_str(), u64::MAX))
                .map_err(db_err)?
            {
                let (_, v) = entry.map_err(db_err)?;
                if items.len() == limit as usize {
                    more = true;
                    break;
                }
                bytes += v.value().len();
                if bytes > PAGE_BYTES && !items.is_empty() {
                    more = true;
                    break;
                }
                items.push(Bytes::copy_from_slice(v.value()));
            }
            Ok(Page { items, more })
        })
        .await
    }

    async fn last_seq(&self, conv: &str) -> Result<u64, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(CONV_SEQ).map_err(db_err)?;
            Ok(t.get(conv.as_str())
                .map_err(db_err)?
                .map_or(0, |g| g.value()))
        })
        .await
    }

    async fn expire_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut n = 0;
            {
                let mut idem = txn.open_table(IDEM).map_err(db_err)?;
                let mut by_ts = txn.open_table(IDEM_BY_TS).map_err(db_err)?;
                let mut expired = Vec::new();
                for entry in by_ts
                    .range((i64::MIN, "", "")..(before_ms, "", ""))
                    .map_err(db_err)?
                {
                    let (k, _) = entry.map_err(db_err)?;
                    let (ts, from, cid) = k.value();
                    expired.push((ts, from.to_owned(), cid.to_owned()));
                }
                for (ts, from, cid) in expired {
                    by_ts
                        .remove((ts, from.as_str(), cid.as_str()))
                        .map_err(db_err)?;
                    idem.remove((from.as_str(), cid.as_str())).map_err(db_err)?;
                    n += 1;
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(conv: &str, from: &str, cid: Option<&str>, ts: i64, members: &[&str]) -> NewMessage {
        NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            conv: conv.into(),
            from: from.into(),
            cid: cid.map(Into::into),
            body: json!({"t": conv}),
            ts,
            members: members.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn new(o: &CommitOutcome) -> &Committed {
        match o {
            CommitOutcome::New(c) => c,
            CommitOutcome::Duplicate(_) => panic!("expected a new message"),
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
}

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

use shared::admin::{BlacklistEntry, BlacklistKind};

use super::{
    CommitOutcome, Committed, DirectoryStore, IDEMPOTENCY_WINDOW_MS, JOIN_PUSH_TAIL, MessageStore,
    NewMessage, Op, Page, PageFill, ServiceState, StoreError,
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
/// `(kind, value)` → entry JSON.
const BLACKLIST: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("blacklist");
/// `shop` → agents JSON array.
const SHOPS: TableDefinition<&str, &[u8]> = TableDefinition::new("shops");
/// `(agent, shop)` → (), the reverse of [`SHOPS`].
const AGENT_SHOPS: TableDefinition<(&str, &str), ()> = TableDefinition::new("agent_shops");
/// `group` → members JSON array.
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// service `conv` → [`ServiceState`] JSON.
const SERVICE: TableDefinition<&str, &[u8]> = TableDefinition::new("service");
/// `agent` → open conversations assigned to it.
const LOADS: TableDefinition<&str, u64> = TableDefinition::new("loads");
/// `(conv, uid)` → the last `seq` of a service conversation in `uid`'s inbox, so that
/// a join copies only what the joiner is missing.
const MEMBER_SEQ: TableDefinition<(&str, &str), u64> = TableDefinition::new("member_seq");
/// `(shop, conv)` → since when (unix ms) it waits for an agent.
const WAITING: TableDefinition<(&str, &str), i64> = TableDefinition::new("waiting");

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
        txn.open_table(BLACKLIST).map_err(db_err)?;
        txn.open_table(SHOPS).map_err(db_err)?;
        txn.open_table(AGENT_SHOPS).map_err(db_err)?;
        txn.open_table(GROUPS).map_err(db_err)?;
        txn.open_table(SERVICE).map_err(db_err)?;
        txn.open_table(LOADS).map_err(db_err)?;
        txn.open_table(WAITING).map_err(db_err)?;
        txn.open_table(MEMBER_SEQ).map_err(db_err)?;
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

fn commit_batch(db: &Database, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError> {
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
        let mut member_seq = txn.open_table(MEMBER_SEQ).map_err(db_err)?;
        // Messages committed earlier in this batch, by (from, cid): the table lookups
        // below would find them too, but this spares decoding what we just wrote.
        let mut in_batch: HashMap<(String, String), Bytes> = HashMap::new();

        for op in batch {
            let m = match op {
                Op::Message(m) => m,
                Op::Join { conv, uid } => {
                    // The messages of `conv` that `uid` does not have yet, appended to its
                    // inbox in seq order.
                    let have = member_seq
                        .get((conv.as_str(), uid.as_str()))
                        .map_err(db_err)?
                        .map_or(0, |g| g.value());
                    let mut useq = user_seq
                        .get(uid.as_str())
                        .map_err(db_err)?
                        .map_or(0, |g| g.value());
                    let mut last = have;
                    let mut tail = std::collections::VecDeque::with_capacity(JOIN_PUSH_TAIL);
                    for entry in messages
                        .range((conv.as_str(), have + 1)..=(conv.as_str(), u64::MAX))
                        .map_err(db_err)?
                    {
                        let (k, v) = entry.map_err(db_err)?;
                        let seq = k.value().1;
                        last = seq;
                        useq += 1;
                        inbox
                            .insert((uid.as_str(), useq), (conv.as_str(), seq))
                            .map_err(db_err)?;
                        if tail.len() == JOIN_PUSH_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back((seq, useq, Bytes::copy_from_slice(v.value())));
                    }
                    user_seq.insert(uid.as_str(), useq).map_err(db_err)?;
                    member_seq
                        .insert((conv.as_str(), uid.as_str()), last)
                        .map_err(db_err)?;
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
                if m.conv.starts_with("s:") {
                    member_seq
                        .insert((m.conv.as_str(), uid.as_str()), seq)
                        .map_err(db_err)?;
                }
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
            let txn = db.begin_read().map_err(db_err)?;
            let inbox = txn.open_table(INBOX).map_err(db_err)?;
            let messages = txn.open_table(MESSAGES).map_err(db_err)?;
            let start = after.saturating_add(1);
            let mut page = PageFill::new(limit);
            for entry in inbox
                .range((uid.as_str(), start)..=(uid.as_str(), u64::MAX))
                .map_err(db_err)?
            {
                let (k, v) = entry.map_err(db_err)?;
                if !page.has_room() {
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
            let txn = db.begin_read().map_err(db_err)?;
            let messages = txn.open_table(MESSAGES).map_err(db_err)?;
            let start = after.saturating_add(1);
            let mut page = PageFill::new(limit);
            for entry in messages
                .range((conv.as_str(), start)..=(conv.as_str(), u64::MAX))
                .map_err(db_err)?
            {
                let (_, v) = entry.map_err(db_err)?;
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

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The JSON value at `key` of a `&str → &[u8]` table.
fn json_at<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let v = t.get(key).map_err(db_err)?;
    v.map(|g| from_json(g.value())).transpose()
}

/// Reads one JSON value of a `&str → &[u8]` table.
fn get_json<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    json_at(&txn.open_table(table).map_err(db_err)?, key)
}

/// Every entry of a `(&str, &str)`-keyed table whose first part is `first`, as
/// `f(second part, value)`, in key order.
fn scan_second<V: redb::Value + 'static, T>(
    t: &impl ReadableTable<(&'static str, &'static str), V>,
    first: &str,
    mut f: impl FnMut(&str, redb::AccessGuard<'_, V>) -> T,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    // Ids are never empty, so (first, "") sorts below every key that starts with first.
    for entry in t.range((first, "")..).map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let (a, b) = k.value();
        if a != first {
            break;
        }
        out.push(f(b, v));
    }
    Ok(out)
}

fn load_of(t: &impl ReadableTable<&'static str, u64>, agent: &str) -> Result<u64, StoreError> {
    Ok(t.get(agent).map_err(db_err)?.map_or(0, |g| g.value()))
}

#[async_trait]
impl DirectoryStore for EmbeddedStore {
    async fn blacklist(&self) -> Result<Vec<BlacklistEntry>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(BLACKLIST).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in t.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                out.push(from_json(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn blacklist_put(&self, entry: BlacklistEntry) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(BLACKLIST).map_err(db_err)?;
                let json = to_json(&entry)?;
                t.insert((entry.kind.as_str(), entry.value.as_str()), json.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn blacklist_remove(&self, kind: BlacklistKind, value: &str) -> Result<bool, StoreError> {
        let value = value.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let existed = {
                let mut t = txn.open_table(BLACKLIST).map_err(db_err)?;
                t.remove((kind.as_str(), value.as_str()))
                    .map_err(db_err)?
                    .is_some()
            };
            txn.commit().map_err(db_err)?;
            Ok(existed)
        })
        .await
    }

    async fn blacklist_purge(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut n = 0;
            {
                let mut t = txn.open_table(BLACKLIST).map_err(db_err)?;
                let mut expired = Vec::new();
                for entry in t.iter().map_err(db_err)? {
                    let (_, v) = entry.map_err(db_err)?;
                    let e: BlacklistEntry = from_json(v.value())?;
                    if !e.live(now_ms) {
                        expired.push(e);
                    }
                }
                for e in expired {
                    t.remove((e.kind.as_str(), e.value.as_str()))
                        .map_err(db_err)?;
                    n += 1;
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(n)
        })
        .await
    }

    async fn shop_agents(&self, shop: &str) -> Result<Option<Vec<String>>, StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| get_json(db, SHOPS, &shop)).await
    }

    async fn set_shop_agents(&self, shop: &str, agents: Vec<String>) -> Result<(), StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut shops = txn.open_table(SHOPS).map_err(db_err)?;
                let mut reverse = txn.open_table(AGENT_SHOPS).map_err(db_err)?;
                let old: Vec<String> = json_at(&shops, &shop)?.unwrap_or_default();
                for a in &old {
                    reverse
                        .remove((a.as_str(), shop.as_str()))
                        .map_err(db_err)?;
                }
                for a in &agents {
                    reverse
                        .insert((a.as_str(), shop.as_str()), ())
                        .map_err(db_err)?;
                }
                shops
                    .insert(shop.as_str(), to_json(&agents)?.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn agent_shops(&self, uid: &str) -> Result<Vec<String>, StoreError> {
        let uid = uid.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(AGENT_SHOPS).map_err(db_err)?;
            scan_second(&t, &uid, |shop, _| shop.to_owned())
        })
        .await
    }

    async fn group_members(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| get_json(db, GROUPS, &name)).await
    }

    async fn set_group_members(&self, name: &str, members: Vec<String>) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut t = txn.open_table(GROUPS).map_err(db_err)?;
                t.insert(name.as_str(), to_json(&members)?.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn service(&self, conv: &str) -> Result<Option<ServiceState>, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| get_json(db, SERVICE, &conv)).await
    }

    async fn assign(&self, conv: &str, shop: &str, agent: Option<&str>) -> Result<(), StoreError> {
        let (conv, shop, agent) = (conv.to_owned(), shop.to_owned(), agent.map(str::to_owned));
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            // No fsync of its own: the commit that follows makes it durable (see
            // `DirectoryStore::assign`).
            txn.set_durability(Durability::None).map_err(db_err)?;
            {
                let mut service = txn.open_table(SERVICE).map_err(db_err)?;
                let mut loads = txn.open_table(LOADS).map_err(db_err)?;
                let mut waiting = txn.open_table(WAITING).map_err(db_err)?;
                let prev: Option<ServiceState> = json_at(&service, &conv)?;
                if let Some(ServiceState {
                    agent: Some(p),
                    open: true,
                    ..
                }) = &prev
                {
                    let n = load_of(&loads, p)?;
                    loads
                        .insert(p.as_str(), n.saturating_sub(1))
                        .map_err(db_err)?;
                }
                match &agent {
                    Some(a) => {
                        let n = load_of(&loads, a)?;
                        loads.insert(a.as_str(), n + 1).map_err(db_err)?;
                        waiting
                            .remove((shop.as_str(), conv.as_str()))
                            .map_err(db_err)?;
                    }
                    None => {
                        let since = shared::time::now_ms();
                        if waiting
                            .get((shop.as_str(), conv.as_str()))
                            .map_err(db_err)?
                            .is_none()
                        {
                            waiting
                                .insert((shop.as_str(), conv.as_str()), since)
                                .map_err(db_err)?;
                        }
                    }
                }
                let state = ServiceState {
                    shop: shop.clone(),
                    agent,
                    open: true,
                };
                service
                    .insert(conv.as_str(), to_json(&state)?.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn close_service(&self, conv: &str) -> Result<bool, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let was_open = {
                let mut service = txn.open_table(SERVICE).map_err(db_err)?;
                let mut loads = txn.open_table(LOADS).map_err(db_err)?;
                let mut waiting = txn.open_table(WAITING).map_err(db_err)?;
                let prev: Option<ServiceState> = json_at(&service, &conv)?;
                match prev {
                    Some(mut st) if st.open => {
                        if let Some(p) = &st.agent {
                            let n = load_of(&loads, p)?;
                            loads
                                .insert(p.as_str(), n.saturating_sub(1))
                                .map_err(db_err)?;
                        }
                        waiting
                            .remove((st.shop.as_str(), conv.as_str()))
                            .map_err(db_err)?;
                        st.open = false;
                        service
                            .insert(conv.as_str(), to_json(&st)?.as_slice())
                            .map_err(db_err)?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit().map_err(db_err)?;
            Ok(was_open)
        })
        .await
    }

    async fn agent_loads(&self, agents: &[String]) -> Result<Vec<u64>, StoreError> {
        let agents = agents.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(LOADS).map_err(db_err)?;
            agents.iter().map(|a| load_of(&t, a)).collect()
        })
        .await
    }

    async fn waiting(&self, shop: &str) -> Result<Vec<String>, StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(WAITING).map_err(db_err)?;
            let mut out = scan_second(&t, &shop, |conv, since| (since.value(), conv.to_owned()))?;
            out.sort();
            Ok(out.into_iter().map(|(_, conv)| conv).collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(conv: &str, from: &str, cid: Option<&str>, ts: i64, members: &[&str]) -> Op {
        Op::Message(NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            conv: conv.into(),
            from: from.into(),
            cid: cid.map(Into::into),
            body: json!({"t": conv}),
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

    #[tokio::test]
    async fn directory_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let entry = |value: &str, expires_at| BlacklistEntry {
            kind: BlacklistKind::Uid,
            value: value.into(),
            reason: Some("spam".into()),
            expires_at,
        };
        store.blacklist_put(entry("m", None)).await.unwrap();
        store.blacklist_put(entry("e", Some(10))).await.unwrap();
        assert_eq!(store.blacklist().await.unwrap().len(), 2);
        assert_eq!(store.blacklist_purge(11).await.unwrap(), 1);
        assert_eq!(store.blacklist().await.unwrap(), [entry("m", None)]);
        assert!(
            store
                .blacklist_remove(BlacklistKind::Uid, "m")
                .await
                .unwrap()
        );
        assert!(
            !store
                .blacklist_remove(BlacklistKind::Uid, "m")
                .await
                .unwrap()
        );

        assert_eq!(store.shop_agents("s1").await.unwrap(), None);
        store
            .set_shop_agents("s1", vec!["a1".into(), "a2".into()])
            .await
            .unwrap();
        store
            .set_shop_agents("s2", vec!["a2".into()])
            .await
            .unwrap();
        assert_eq!(store.agent_shops("a2").await.unwrap(), ["s1", "s2"]);
        store
            .set_shop_agents("s1", vec!["a1".into()])
            .await
            .unwrap();
        assert_eq!(store.agent_shops("a2").await.unwrap(), ["s2"]);
        assert_eq!(store.agent_shops("a1").await.unwrap(), ["s1"]);

        store
            .set_group_members("g", vec!["x".into()])
            .await
            .unwrap();
        assert_eq!(
            store.group_members("g").await.unwrap(),
            Some(vec!["x".into()])
        );

        store.assign("s:s1~c1", "s1", None).await.unwrap();
        store.assign("s:s1~c2", "s1", None).await.unwrap();
        assert_eq!(store.waiting("s1").await.unwrap(), ["s:s1~c1", "s:s1~c2"]);
        store.assign("s:s1~c1", "s1", Some("a1")).await.unwrap();
        assert_eq!(store.waiting("s1").await.unwrap(), ["s:s1~c2"]);
        store.assign("s:s1~c2", "s1", Some("a1")).await.unwrap();
        assert_eq!(
            store
                .agent_loads(&["a1".into(), "a2".into()])
                .await
                .unwrap(),
            [2, 0]
        );
        store.assign("s:s1~c2", "s1", Some("a2")).await.unwrap();
        assert_eq!(
            store
                .agent_loads(&["a1".into(), "a2".into()])
                .await
                .unwrap(),
            [1, 1]
        );
        assert!(store.close_service("s:s1~c2").await.unwrap());
        assert!(!store.close_service("s:s1~c2").await.unwrap());
        assert_eq!(
            store
                .agent_loads(&["a1".into(), "a2".into()])
                .await
                .unwrap(),
            [1, 0]
        );
        let st = store.service("s:s1~c2").await.unwrap().unwrap();
        assert_eq!((st.agent.as_deref(), st.open), (Some("a2"), false));
    }
}

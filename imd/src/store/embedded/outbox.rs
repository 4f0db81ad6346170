//! The webhook outbox in redb (see `crate::store::outbox`). The commit writes the
//! marks and first cursors in its own transaction ([`OutboxTables`]). The deliverer's
//! cursor moves wait in memory ([`Cursors`]) and ride along with the next commit's
//! transaction or the conversation's unmark, so delivering adds no write transaction
//! of its own to the one writer the commits use; a move lost in a crash re-sends
//! events, which at-least-once allows. A cursor never moves back: a write keeps the
//! higher seq. Leases live in memory: one process owns the data dir.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};

use super::{EmbeddedStore, from_json, to_json};
use crate::store::{OutboxCursor, OutboxMark, OutboxStore, ParkedEvent, StoreError};

/// `conv` → the commit time (ms) of its last mark.
const MARKS: TableDefinition<&str, i64> = TableDefinition::new("hook_marks");
/// `(mark time, conv)` → (): [`MARKS`] in time order, for the due list.
const MARKS_BY_TIME: TableDefinition<(i64, &str), ()> = TableDefinition::new("hook_marks_by_time");
/// `conv` → `(last seq delivered, failing since ms)`.
const CURSORS: TableDefinition<&str, (u64, i64)> = TableDefinition::new("hook_cursors");
/// parked id → [`ParkedEvent`] JSON.
const PARKED: TableDefinition<u64, &[u8]> = TableDefinition::new("hook_parked");

/// Creates the tables of the outbox (see [`EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(MARKS)?;
    txn.open_table(MARKS_BY_TIME)?;
    txn.open_table(CURSORS)?;
    txn.open_table(PARKED)?;
    Ok(())
}

/// The outbox's tables, open in a commit's write transaction.
pub(super) struct OutboxTables<'t> {
    marks: Table<'t, &'static str, i64>,
    by_time: Table<'t, (i64, &'static str), ()>,
    cursors: Table<'t, &'static str, (u64, i64)>,
    /// Conversations marked by this transaction already.
    marked: HashSet<String>,
}

impl<'t> OutboxTables<'t> {
    /// Opens them in `txn`.
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            marks: txn.open_table(MARKS)?,
            by_time: txn.open_table(MARKS_BY_TIME)?,
            cursors: txn.open_table(CURSORS)?,
            marked: HashSet::new(),
        })
    }

    /// Writes cursor moves that waited in memory (each only forward).
    pub(super) fn write_cursors(
        &mut self,
        moves: Vec<(String, OutboxCursor)>,
    ) -> Result<(), StoreError> {
        for (conv, c) in moves {
            write_cursor(&mut self.cursors, &conv, c)?;
        }
        Ok(())
    }

    /// Marks `conv`, which this transaction gives message `seq` committed at `ts`; a
    /// conversation without a cursor starts it before `seq`.
    pub(super) fn mark(&mut self, conv: &str, seq: u64, ts: i64) -> Result<(), StoreError> {
        if !self.marked.insert(conv.to_owned()) {
            return Ok(());
        }
        if let Some(old) = self.marks.insert(conv, ts)? {
            let old = old.value();
            self.by_time.remove((old, conv))?;
        }
        self.by_time.insert((ts, conv), ())?;
        if self.cursors.get(conv)?.is_none() {
            self.cursors.insert(conv, (seq - 1, 0))?;
        }
        Ok(())
    }
}

/// Sets `conv`'s cursor to `c` unless it stands past it already.
fn write_cursor(
    cursors: &mut Table<'_, &'static str, (u64, i64)>,
    conv: &str,
    c: OutboxCursor,
) -> Result<(), StoreError> {
    let stored = cursors.get(conv)?.map(|g| g.value().0);
    if stored.is_none_or(|seq| c.seq >= seq) {
        cursors.insert(conv, (c.seq, c.failing_since))?;
    }
    Ok(())
}

/// Cursor moves not written yet: conv → cursor.
#[derive(Default)]
pub(super) struct Cursors(Mutex<HashMap<String, OutboxCursor>>);

impl Cursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, OutboxCursor>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every waiting move, for a transaction to write.
    pub(super) fn take(&self) -> Vec<(String, OutboxCursor)> {
        self.lock().drain().collect()
    }
}

/// The in-memory delivery leases: conv → (token, expiry).
#[derive(Default)]
pub(super) struct Leases(Mutex<HashMap<String, (String, Instant)>>);

impl Leases {
    /// Takes or renews `conv`'s lease for `token`; false when another holds it.
    fn take(&self, conv: &str, token: &str, ttl_ms: u64) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some((holder, until)) = map.get(conv)
            && holder != token
            && *until > now
        {
            return false;
        }
        map.insert(
            conv.to_owned(),
            (token.to_owned(), now + Duration::from_millis(ttl_ms)),
        );
        true
    }

    /// Whether `token` holds `conv`'s lease.
    fn held(&self, conv: &str, token: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(conv)
            .is_some_and(|(holder, until)| holder == token && *until > Instant::now())
    }

    fn release(&self, conv: &str, token: &str) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(conv).is_some_and(|(holder, _)| holder == token) {
            map.remove(conv);
        }
    }
}

#[async_trait]
impl OutboxStore for EmbeddedStore {
    async fn outbox_due(
        &self,
        min_age_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxMark>, StoreError> {
        // The marks are written with the rows, by the log commit's indexer.
        self.indexed().await?;
        let cut = shared::time::now_ms() - min_age_ms as i64;
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let by_time = txn.open_table(MARKS_BY_TIME)?;
            let mut out = Vec::new();
            for entry in by_time.range((i64::MIN, "")..)?.take(limit) {
                let (k, _) = entry?;
                let (ts, conv) = k.value();
                if ts > cut {
                    break;
                }
                out.push(OutboxMark {
                    conv: conv.to_owned(),
                    mark: ts.to_string(),
                    marked_ms: ts,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn outbox_marked(&self) -> Result<u64, StoreError> {
        self.indexed().await?;
        self.blocking(|db| Ok(db.begin_read()?.open_table(MARKS)?.len()?))
            .await
    }

    async fn outbox_lease(
        &self,
        conv: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<Option<OutboxCursor>, StoreError> {
        if !self.leases.take(conv, token, ttl_ms) {
            return Ok(None);
        }
        if let Some(c) = self.cursors.lock().get(conv) {
            return Ok(Some(*c));
        }
        self.indexed().await?;
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let cursors = txn.open_table(CURSORS)?;
            let (seq, failing_since) = cursors.get(conv.as_str())?.map_or((0, 0), |g| g.value());
            Ok(Some(OutboxCursor { seq, failing_since }))
        })
        .await
    }

    async fn outbox_advance(
        &self,
        conv: &str,
        token: &str,
        cursor: OutboxCursor,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        if !self.leases.held(conv, token) {
            return Ok(false);
        }
        self.leases.take(conv, token, ttl_ms);
        self.cursors.lock().insert(conv.to_owned(), cursor);
        Ok(true)
    }

    async fn outbox_release(&self, conv: &str, token: &str) -> Result<(), StoreError> {
        self.leases.release(conv, token);
        Ok(())
    }

    async fn outbox_unmark(&self, mark: &OutboxMark, _delivered: u64) -> Result<bool, StoreError> {
        self.indexed().await?;
        let conv = mark.conv.clone();
        let moved = self.cursors.lock().remove(&conv);
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let removed = {
                let last = super::messages::last_seq_in(&txn, &conv)?;
                let mut cursors = txn.open_table(CURSORS)?;
                if let Some(c) = moved {
                    write_cursor(&mut cursors, &conv, c)?;
                }
                let delivered = cursors.get(conv.as_str())?.map_or(0, |g| g.value().0);
                let mut marks = txn.open_table(MARKS)?;
                if delivered < last {
                    false
                } else if let Some(ts) = marks.remove(conv.as_str())? {
                    let ts = ts.value();
                    txn.open_table(MARKS_BY_TIME)?.remove((ts, conv.as_str()))?;
                    // Keep the cursor's seq; a failure clock has no event to time.
                    cursors.insert(conv.as_str(), (delivered, 0))?;
                    true
                } else {
                    false
                }
            };
            txn.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn park(&self, event: &ParkedEvent, max: usize) -> Result<(u64, u64), StoreError> {
        let json = to_json(event)?;
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let out = {
                let mut parked = txn.open_table(PARKED)?;
                let id = parked.last()?.map_or(0, |(k, _)| k.value()) + 1;
                parked.insert(id, json.as_slice())?;
                let mut dropped = 0;
                while parked.len()? > max as u64 {
                    if parked.pop_first()?.is_none() {
                        break;
                    }
                    dropped += 1;
                }
                (id, dropped)
            };
            txn.commit()?;
            Ok(out)
        })
        .await
    }

    async fn parked(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ParkedEvent)>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let parked = txn.open_table(PARKED)?;
            let mut out = Vec::new();
            for entry in parked.range(after.saturating_add(1)..)?.take(limit) {
                let (k, v) = entry?;
                out.push((k.value(), from_json("parked event", v.value())?));
            }
            Ok(out)
        })
        .await
    }

    async fn unpark(&self, id: u64) -> Result<bool, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let removed = txn.open_table(PARKED)?.remove(id)?.is_some();
            txn.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn parked_count(&self) -> Result<u64, StoreError> {
        self.blocking(|db| Ok(db.begin_read()?.open_table(PARKED)?.len()?))
            .await
    }
}

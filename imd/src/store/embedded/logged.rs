//! The log commit (`--store-log`, the default): a batch is durable once one record of it is in the
//! commit log ([`super::log`]), one append and one `fdatasync`; its rows (the
//! message, every member's inbox row, counter and conversation-list place, the read
//! position, the idempotency key) are written to the tables afterwards by the indexer
//! thread, many batches to a transaction. A commit's cost no longer grows with the rows
//! it moves: a message to a 500-member group is one record.
//!
//! What a commit decides (each message's seq, each member's useq, whether a send is a
//! resend, whether a read position moves) it decides from the tables plus [`Pending`]:
//! the counters, read positions and idempotency keys of records logged but not indexed
//! yet. An entry leaves `Pending` when the indexer has committed the record that set
//! it, unless a later record set it again; so a key missing from `Pending` is read from
//! a snapshot begun after that check, which holds every record that left it.
//!
//! Reads that answer clients (inbox, history, the conversation list, read positions)
//! wait until the indexer holds every record logged before they began
//! ([`Logged::indexed`]): a client that was told `sent` finds its message. A join or a
//! recall reads and rewrites what earlier messages wrote, so it waits for the indexer
//! to catch up and commits directly, as without the log.
//!
//! Bounds: records logged and not indexed hold at most [`MAX_UNINDEXED_BYTES`] and
//! [`MAX_UNINDEXED_ROWS`]; a commit past either waits for the indexer. The rows bound
//! also keeps a read's wait and the replay after a crash short: at open, the records
//! past the tables' applied LSN ([`LOG_APPLIED`], written in each index transaction)
//! are applied before anything else runs.
//!
//! A failure to append, to sync or to index fails the store: every later commit and
//! read answers the first error, until a restart replays the log. Going on after a
//! failed `fdatasync` could acknowledge what the disk does not hold.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::{ReadOnlyTable, ReadableDatabase, TableDefinition};
use tokio::sync::watch;

use super::Db;
use super::log::CommitLog;
use super::messages::{
    self, CONV_SEQ, IDEM, Later, MESSAGES, Placed, READS, Tables, USER_SEQ, earlier_send,
};
use super::outbox::Cursors;
use crate::store::{CommitOutcome, Committed, IDEMPOTENCY_WINDOW_MS, NewMessage, Op, StoreError};

/// `"applied"` → the LSN of the last commit-log record whose rows the tables hold,
/// written in the same transaction as those rows.
const LOG_APPLIED: TableDefinition<&str, u64> = TableDefinition::new("log_applied");

/// Most bytes of records logged and not indexed yet: a commit past it waits for the
/// indexer. It bounds the memory of what waits.
pub(super) const MAX_UNINDEXED_BYTES: usize = 16 << 20;

/// Most rows (a message and each of its members' inbox rows; a read position) logged and
/// not indexed yet: a commit past it waits for the indexer. Rows are what indexing
/// costs (7-16 µs each on two cores), so this bounds how long a read waits for the
/// indexer and the replay after a crash: about a second. Bytes alone did not: 16 MiB of
/// 500-member group messages is 2,000 of them, 16 s of indexing.
pub(super) const MAX_UNINDEXED_ROWS: usize = 65_536;

/// Most counters (conversations' seqs and users' useqs) kept once indexed: about 100
/// bytes each.
const COUNTERS_CACHED: usize = 200_000;

/// Most records one index transaction applies.
const MAX_RECORDS_PER_TXN: usize = 4096;

/// The commit log's folder in the data dir.
const LOG_DIR: &str = "log";

/// What a commit decided, for the indexer to write.
#[derive(Debug, Clone, PartialEq)]
enum Record {
    /// A new message, placed.
    Message(Placed),
    /// A read position moved forward.
    Read {
        /// The conversation.
        conv: String,
        /// The reader.
        uid: String,
        /// The new position.
        seq: u64,
    },
}

/// One logged batch on its way to the indexer.
struct Batch {
    /// Its record's LSN.
    lsn: u64,
    /// What it writes.
    records: Vec<Record>,
    /// Its record's size.
    bytes: usize,
    /// Its rows (see [`MAX_UNINDEXED_ROWS`]).
    rows: usize,
}

/// What records logged and not indexed yet set, each with the LSN of the last record
/// that set it; and the indexer's progress.
///
/// The counters stay after their record is indexed, as a cache: the log commit is
/// their one writer (a join or a recall, which writes them directly, drops the ones it
/// moves), so a group's next message reads none of its members' counters from the
/// tables. Past [`COUNTERS_CACHED`] entries the indexed ones are dropped.
#[derive(Default)]
struct Pending {
    /// `conv` → (last seq, lsn).
    conv_seq: HashMap<String, (u64, u64)>,
    /// `uid` → (last useq, lsn).
    user_seq: HashMap<String, (u64, u64)>,
    /// `(conv, uid)` → (read position, lsn).
    reads: HashMap<(String, String), (u64, u64)>,
    /// `(from, cid)` → (the message's JSON, its commit time, lsn).
    idem: HashMap<(String, String), (Bytes, i64, u64)>,
    /// Bytes of the records logged and not indexed.
    bytes: usize,
    /// Rows of the records logged and not indexed.
    rows: usize,
    /// The LSN up to which the tables hold every record.
    applied: u64,
    /// Why the store failed, once it has.
    failed: Option<StoreError>,
}

/// The state the committers and the indexer share.
struct Shared {
    /// See [`Pending`].
    pending: Mutex<Pending>,
    /// Signalled when the indexer moves `pending.applied` or fails.
    moved: Condvar,
    /// The LSN of the last record appended.
    logged: AtomicU64,
    /// `pending.applied` for async readers; `u64::MAX` once the store failed.
    applied: watch::Sender<u64>,
}

/// The log commit of an [`super::EmbeddedStore`]: the log, and the indexer thread.
pub(super) struct Logged {
    /// The log; held by one commit at a time, from its first decision to its append.
    log: Mutex<CommitLog>,
    /// See [`Shared`].
    shared: Arc<Shared>,
    /// To the indexer; taken when the store is dropped, which ends the thread.
    to_indexer: Option<mpsc::Sender<Batch>>,
    /// The indexer, joined when the store is dropped (it holds the database open).
    indexer: Option<JoinHandle<()>>,
}

/// The tables a commit's decisions read, in one snapshot.
struct Snapshot {
    /// [`CONV_SEQ`].
    conv_seq: ReadOnlyTable<&'static str, u64>,
    /// [`USER_SEQ`].
    user_seq: ReadOnlyTable<&'static str, u64>,
    /// [`READS`].
    reads: ReadOnlyTable<(&'static str, &'static str), u64>,
    /// [`IDEM`].
    idem: ReadOnlyTable<(&'static str, &'static str), (&'static str, u64, i64)>,
    /// [`MESSAGES`].
    messages: ReadOnlyTable<(&'static str, u64), &'static [u8]>,
}

impl Snapshot {
    /// Opens the tables in a read transaction begun now.
    fn begin(db: &Db) -> Result<Self, StoreError> {
        let txn = db.begin_read()?;
        Ok(Self {
            conv_seq: txn.open_table(CONV_SEQ)?,
            user_seq: txn.open_table(USER_SEQ)?,
            reads: txn.open_table(READS)?,
            idem: txn.open_table(IDEM)?,
            messages: txn.open_table(MESSAGES)?,
        })
    }
}

impl Pending {
    /// The last seq of `conv`.
    fn conv_seq(&self, s: &Snapshot, conv: &str) -> Result<u64, StoreError> {
        match self.conv_seq.get(conv) {
            Some(&(seq, _)) => Ok(seq),
            None => Ok(s.conv_seq.get(conv)?.map_or(0, |g| g.value())),
        }
    }

    /// Decides where `m` lands (or that it is a resend), and notes it at `lsn`.
    fn message(
        &mut self,
        s: &Snapshot,
        m: NewMessage,
        lsn: u64,
        records: &mut Vec<Record>,
    ) -> Result<CommitOutcome, StoreError> {
        if let Some(cid) = &m.cid {
            // A key logged and not indexed is newer than the tables' one.
            let earlier = match self.idem.get(&(m.from.clone(), cid.clone())) {
                Some((json, at, _)) => (m.ts - at < IDEMPOTENCY_WINDOW_MS).then(|| json.clone()),
                None => earlier_send(&s.idem, &s.messages, &m.from, cid, m.ts)?,
            };
            if let Some(json) = earlier {
                return Ok(CommitOutcome::Duplicate(json));
            }
        }
        let seq = self.conv_seq(s, &m.conv)? + 1;
        let mut recipients = Vec::with_capacity(m.members.len());
        for uid in &m.members {
            let useq = match self.user_seq.get(uid.as_str()) {
                Some(&(useq, _)) => useq,
                None => s.user_seq.get(uid.as_str())?.map_or(0, |g| g.value()),
            };
            recipients.push((uid.clone(), useq + 1));
        }
        let placed = Placed::new(&m, seq, recipients)?;
        self.note(&placed, lsn);
        let committed = placed.committed.clone();
        records.push(Record::Message(placed));
        Ok(CommitOutcome::New(committed))
    }

    /// Moves `uid`'s read position in `conv` to `seq` (at most the last seq), if that
    /// is forward, noting it at `lsn`.
    fn read(
        &mut self,
        s: &Snapshot,
        (conv, uid, seq): (String, String, u64),
        lsn: u64,
        records: &mut Vec<Record>,
    ) -> Result<CommitOutcome, StoreError> {
        let last = self.conv_seq(s, &conv)?;
        let key = (conv, uid);
        let now = match self.reads.get(&key) {
            Some(&(now, _)) => now,
            None => s
                .reads
                .get((key.0.as_str(), key.1.as_str()))?
                .map_or(0, |g| g.value()),
        };
        let to = seq.min(last);
        if to <= now {
            return Ok(CommitOutcome::Read {
                seq: now,
                moved: false,
            });
        }
        self.reads.insert(key.clone(), (to, lsn));
        let (conv, uid) = key;
        records.push(Record::Read { conv, uid, seq: to });
        Ok(CommitOutcome::Read {
            seq: to,
            moved: true,
        })
    }

    /// Notes what the record of a placed message at `lsn` sets.
    fn note(&mut self, p: &Placed, lsn: u64) {
        /// Sets `key` to `v`, cloning the key only when it is new.
        fn set(map: &mut HashMap<String, (u64, u64)>, key: &str, v: (u64, u64)) {
            match map.get_mut(key) {
                Some(at) => *at = v,
                None => {
                    map.insert(key.to_owned(), v);
                }
            }
        }
        let c = &p.committed;
        set(&mut self.conv_seq, &c.conv, (c.seq, lsn));
        for (uid, useq) in &c.recipients {
            set(&mut self.user_seq, uid, (*useq, lsn));
        }
        if let Some(cid) = &p.cid {
            let key = (p.from.clone(), cid.clone());
            self.idem.insert(key, (c.json.clone(), c.ts, lsn));
        }
        if !p.event {
            self.reads
                .insert((c.conv.clone(), p.from.clone()), (c.seq, lsn));
        }
    }

    /// Counts `batch`, just logged, in the backlog.
    fn logged(&mut self, batch: &Batch) {
        self.bytes += batch.bytes;
        self.rows += batch.rows;
        self.report();
    }

    /// Takes `batch`, now in the tables, out of the backlog, with what it set.
    fn indexed(&mut self, batch: &Batch) {
        self.forget(batch.lsn, &batch.records);
        self.bytes -= batch.bytes;
        self.rows -= batch.rows;
        self.report();
    }

    /// The backlog, as metrics.
    fn report(&self) {
        metrics::gauge!("imd_store_unindexed_bytes").set(self.bytes as f64);
        metrics::gauge!("imd_store_unindexed_rows").set(self.rows as f64);
    }

    /// Forgets the read positions and idempotency keys that the records at `lsn` set,
    /// now in the tables, unless a later record set them again.
    fn forget(&mut self, lsn: u64, records: &[Record]) {
        /// Removes `key` if the record that set it last is at or before `lsn`.
        fn drop_upto<K: std::hash::Hash + Eq, V>(
            map: &mut HashMap<K, V>,
            key: &K,
            at: impl Fn(&V) -> u64,
            lsn: u64,
        ) {
            if map.get(key).is_some_and(|v| at(v) <= lsn) {
                map.remove(key);
            }
        }
        for record in records {
            match record {
                Record::Message(p) => {
                    let c = &p.committed;
                    if let Some(cid) = &p.cid {
                        let key = (p.from.clone(), cid.clone());
                        drop_upto(&mut self.idem, &key, |v| v.2, lsn);
                    }
                    if !p.event {
                        let key = (c.conv.clone(), p.from.clone());
                        drop_upto(&mut self.reads, &key, |v| v.1, lsn);
                    }
                }
                Record::Read { conv, uid, .. } => {
                    let key = (conv.clone(), uid.clone());
                    drop_upto(&mut self.reads, &key, |v| v.1, lsn);
                }
            }
        }
    }

    /// Drops the cached counters up to `applied` when there are too many.
    fn trim_counters(&mut self, applied: u64) {
        if self.conv_seq.len() + self.user_seq.len() > COUNTERS_CACHED {
            self.conv_seq.retain(|_, v| v.1 > applied);
            self.user_seq.retain(|_, v| v.1 > applied);
        }
    }

    /// Drops the counters that `op`, committed directly, moves.
    fn drop_counters(&mut self, op: &Op) {
        match op {
            Op::Join { uid, .. } => {
                self.user_seq.remove(uid);
            }
            Op::Recall(r) => {
                self.conv_seq.remove(&r.event.conv);
                for uid in &r.event.members {
                    self.user_seq.remove(uid);
                }
            }
            Op::Message(_) | Op::Read { .. } => {}
        }
    }

    /// The store's failure, if it failed.
    fn check(&self) -> Result<(), StoreError> {
        self.failed.clone().map_or(Ok(()), Err)
    }
}

impl Shared {
    /// The pending state. A panic while it was held leaves it unknown: that fails the
    /// store.
    fn pending(&self) -> Result<MutexGuard<'_, Pending>, StoreError> {
        self.pending
            .lock()
            .map_err(|_| StoreError::Corrupt("the commit log's state was poisoned".into()))
    }

    /// Fails the store with `e` (the first failure stays), and wakes every waiter.
    fn fail(&self, e: &StoreError) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.failed.is_none() {
            tracing::error!(error = %e, "the store failed; restart imd to replay its commit log");
            p.failed = Some(e.clone());
        }
        drop(p);
        self.moved.notify_all();
        self.applied.send_replace(u64::MAX);
    }

    /// Waits until `done` holds of the pending state, or the store failed.
    fn wait(&self, done: impl Fn(&Pending) -> bool) -> Result<(), StoreError> {
        let p = self.pending()?;
        let p = self
            .moved
            .wait_while(p, |p| p.failed.is_none() && !done(p))
            .map_err(|_| StoreError::Corrupt("the commit log's state was poisoned".into()))?;
        p.check()
    }
}

impl Logged {
    /// Opens the log in `dir` and replays it onto the tables: the records past their
    /// applied LSN, from a run that did not stop cleanly. With `keep`, starts the
    /// indexer and returns the log commit; without, removes the log (a store that was
    /// run with the log and is now run without it). `cursors` and `outbox`: the webhook
    /// outbox's, as a direct commit writes them.
    pub(super) fn open(
        db: &Arc<Db>,
        dir: &Path,
        keep: bool,
        outbox: bool,
        cursors: &Arc<Cursors>,
    ) -> Result<Option<Self>, StoreError> {
        let dir = dir.join(LOG_DIR);
        if !keep && !dir.exists() {
            return Ok(None);
        }
        let applied = {
            let txn = db.begin_read()?;
            let t = txn.open_table(LOG_APPLIED)?;
            t.get("applied")?.map_or(0, |g| g.value())
        };
        let (mut log, replayed) = CommitLog::open(&dir, applied).map_err(StoreError::log)?;
        if !replayed.is_empty() {
            tracing::warn!(
                records = replayed.len(),
                "applying the commit log's records that the tables did not hold yet (imd \
                 did not stop cleanly)"
            );
            for chunk in replayed.chunks(MAX_RECORDS_PER_TXN) {
                let batches = chunk
                    .iter()
                    .map(|r| Ok((r.lsn, decode(r.lsn, &r.payload)?)))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let moves = outbox.then(|| cursors.take());
                apply(
                    db,
                    batches.iter().map(|(lsn, rs)| (*lsn, rs.as_slice())),
                    moves,
                )?;
            }
        }
        if !keep {
            drop(log);
            std::fs::remove_dir_all(&dir).map_err(StoreError::log)?;
            return Ok(None);
        }
        log.reset().map_err(StoreError::log)?;
        let applied = log.next_lsn() - 1;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                applied,
                ..Pending::default()
            }),
            moved: Condvar::new(),
            logged: AtomicU64::new(applied),
            applied: watch::Sender::new(applied),
        });
        let (to_indexer, from_committers) = mpsc::channel();
        let indexer = {
            let (db, shared, cursors) = (db.clone(), shared.clone(), cursors.clone());
            std::thread::Builder::new()
                .name("imd-indexer".into())
                .spawn(move || index(&db, &shared, outbox.then_some(&*cursors), from_committers))
                .map_err(StoreError::log)?
        };
        Ok(Some(Self {
            log: Mutex::new(log),
            shared,
            to_indexer: Some(to_indexer),
            indexer: Some(indexer),
        }))
    }

    /// Commits `batch` (see the module doc); a failure fails the store.
    pub(super) fn commit(
        &self,
        db: &Db,
        batch: Vec<Op>,
        outbox: bool,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let result = self.commit_ops(db, batch, outbox);
        if let Err(e) = &result {
            self.shared.fail(e);
        }
        result
    }

    /// [`Self::commit`], without failing the store.
    fn commit_ops(
        &self,
        db: &Db,
        batch: Vec<Op>,
        outbox: bool,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut log = self
            .log
            .lock()
            .map_err(|_| StoreError::Corrupt("the commit log was poisoned".into()))?;
        let mut out = Vec::with_capacity(batch.len());
        let mut ops = batch.into_iter();
        loop {
            // Messages and reads up to the next join or recall: one record.
            let lsn = log.next_lsn();
            let mut records = Vec::new();
            let mut direct = None;
            {
                let mut pending = self.shared.pending()?;
                pending.check()?;
                let snapshot = Snapshot::begin(db)?;
                for op in ops.by_ref() {
                    out.push(match op {
                        Op::Message(m) => pending.message(&snapshot, m, lsn, &mut records)?,
                        Op::Read { conv, uid, seq } => {
                            pending.read(&snapshot, (conv, uid, seq), lsn, &mut records)?
                        }
                        op @ (Op::Join { .. } | Op::Recall(_)) => {
                            direct = Some(op);
                            break;
                        }
                    });
                }
            }
            self.append(&mut log, lsn, records)?;
            let Some(op) = direct else {
                return Ok(out);
            };
            let logged = log.next_lsn() - 1;
            self.shared.wait(|p| p.applied >= logged)?;
            self.shared.pending()?.drop_counters(&op);
            out.extend(messages::commit_batch(db, vec![op], outbox.then(Vec::new))?);
        }
    }

    /// Appends the record of `records` at `lsn` (none when empty) and hands it to the
    /// indexer; waits first while the records not indexed hold too many bytes.
    fn append(
        &self,
        log: &mut CommitLog,
        lsn: u64,
        records: Vec<Record>,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let payload = encode(&records);
        let rows = records
            .iter()
            .map(|r| match r {
                Record::Message(p) => 1 + p.committed.recipients.len(),
                Record::Read { .. } => 1,
            })
            .sum();
        self.shared
            .wait(|p| p.bytes < MAX_UNINDEXED_BYTES && p.rows < MAX_UNINDEXED_ROWS)?;
        let got = log.append(&payload).map_err(StoreError::log)?;
        if got != lsn {
            return Err(StoreError::Corrupt(format!(
                "the commit log gave LSN {got} to the record placed at {lsn}"
            )));
        }
        let batch = Batch {
            lsn,
            records,
            bytes: payload.len(),
            rows,
        };
        let applied = {
            let mut p = self.shared.pending()?;
            p.logged(&batch);
            p.applied
        };
        self.shared.logged.store(lsn, Ordering::Release);
        let sent = self.to_indexer.as_ref().map(|tx| tx.send(batch));
        if !matches!(sent, Some(Ok(()))) {
            return Err(StoreError::Closed);
        }
        // The record is durable and handed over: a segment that could not be deleted
        // now is tried again at the next append.
        if let Err(e) = log.release(applied) {
            tracing::warn!(error = %e, "the commit log kept a segment it no longer needs");
        }
        Ok(())
    }

    /// Waits until the tables hold every record logged so far.
    pub(super) async fn indexed(&self) -> Result<(), StoreError> {
        let target = self.shared.logged.load(Ordering::Acquire);
        let mut applied = self.shared.applied.subscribe();
        // The sender lives as long as `self`.
        let _ = applied.wait_for(|a| *a >= target).await;
        self.shared.pending()?.check()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // The indexer applies what it was sent, sees the channel closed and ends.
        self.to_indexer.take();
        if let Some(indexer) = self.indexer.take()
            && indexer.join().is_err()
        {
            tracing::error!("the store's indexer panicked");
            return;
        }
        // Everything is in the tables: empty the log, or the next open reads the
        // current segment (up to 64 MiB) through only to find nothing to apply.
        let indexed = self.shared.pending().is_ok_and(|p| {
            p.failed.is_none() && p.applied == self.shared.logged.load(Ordering::Acquire)
        });
        if !indexed {
            return;
        }
        if let Ok(mut log) = self.log.lock()
            && let Err(e) = log.reset()
        {
            tracing::warn!(error = %e, "the commit log was left for the next start to read");
        }
    }
}

/// The indexer: applies logged batches to the tables, as many as wait (up to
/// [`MAX_RECORDS_PER_TXN`] records) in one transaction, until the store is dropped or
/// an apply fails.
fn index(db: &Db, shared: &Shared, cursors: Option<&Cursors>, batches: mpsc::Receiver<Batch>) {
    background();
    while let Ok(first) = batches.recv() {
        let mut round = vec![first];
        let mut records = round[0].records.len();
        while records < MAX_RECORDS_PER_TXN {
            let Ok(next) = batches.try_recv() else { break };
            records += next.records.len();
            round.push(next);
        }
        let started = std::time::Instant::now();
        let moves = cursors.map(Cursors::take);
        let result = apply(
            db,
            round.iter().map(|b| (b.lsn, b.records.as_slice())),
            moves,
        );
        if let Err(e) = result {
            shared.fail(&e);
            return;
        }
        metrics::histogram!("imd_store_index_round_seconds").record(started.elapsed());
        metrics::histogram!("imd_store_index_round_size").record(records as f64);
        let applied = round.last().map_or(0, |b| b.lsn);
        {
            let mut p = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            for b in &round {
                p.indexed(b);
            }
            p.applied = applied;
            p.trim_counters(applied);
        }
        shared.moved.notify_all();
        shared.applied.send_replace(applied);
    }
}

/// Makes the calling thread background CPU work: Linux `SCHED_BATCH` at nice 19, so a
/// thread a send waits on takes the core from it at once, and it still gets a share
/// when every core is busy (then the backlog bound makes the commits wait for it).
/// At normal priority, the indexer woken by a commit's hand-over kept the core for a
/// scheduler slice: a lone 500-member group's commit measured 2.3 ms on two cores
/// instead of 0.4 ms (docs/benchmarks.md, *The log commit*). Failing leaves the thread
/// as it was.
fn background() {
    use thread_priority::ThreadPriority;
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, batch) {
        tracing::warn!(error = ?e, "the store's indexer runs at normal priority");
    }
}

/// Writes the rows of `batches` (LSN, records) in one durable transaction, with the
/// last LSN as the applied one, and the outbox's cursor `moves` when the outbox is on.
fn apply<'r>(
    db: &Db,
    batches: impl Iterator<Item = (u64, &'r [Record])>,
    moves: Option<Vec<(String, crate::store::OutboxCursor)>>,
) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    let mut last = None;
    {
        let mut t = Tables::open(&txn, moves.is_some())?;
        t.move_cursors(moves)?;
        // Counters, list places and read positions once per key for the whole round.
        let mut later = Later::default();
        for (lsn, records) in batches {
            for record in records {
                match record {
                    Record::Message(p) => t.write(p, &mut later)?,
                    Record::Read { conv, uid, seq } => later.read(conv, uid, *seq),
                }
            }
            last = Some(lsn);
        }
        t.finish(later)?;
    }
    if let Some(lsn) = last {
        txn.open_table(LOG_APPLIED)?.insert("applied", lsn)?;
    }
    txn.commit()?;
    Ok(())
}

/// Creates the log's table (see [`super::EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(LOG_APPLIED)?;
    Ok(())
}

/// Record tags.
const TAG_MESSAGE: u8 = 1;
/// See [`TAG_MESSAGE`].
const TAG_READ: u8 = 2;

/// The payload of a log record: a count, then each record. Integers little-endian,
/// strings and byte strings as a `u32` length and the bytes.
fn encode(records: &[Record]) -> Vec<u8> {
    let mut w = Vec::with_capacity(256);
    put_u32(&mut w, records.len());
    for record in records {
        match record {
            Record::Message(p) => {
                let c = &p.committed;
                w.push(TAG_MESSAGE);
                put_str(&mut w, &c.conv);
                w.extend_from_slice(&c.seq.to_le_bytes());
                w.extend_from_slice(&c.ts.to_le_bytes());
                put_str(&mut w, &p.from);
                match &p.cid {
                    Some(cid) => {
                        w.push(1);
                        put_str(&mut w, cid);
                    }
                    None => w.push(0),
                }
                w.push(u8::from(p.event));
                put_u32(&mut w, c.recipients.len());
                for (uid, useq) in &c.recipients {
                    put_str(&mut w, uid);
                    w.extend_from_slice(&useq.to_le_bytes());
                }
                put_bytes(&mut w, &c.json);
            }
            Record::Read { conv, uid, seq } => {
                w.push(TAG_READ);
                put_str(&mut w, conv);
                put_str(&mut w, uid);
                w.extend_from_slice(&seq.to_le_bytes());
            }
        }
    }
    w
}

/// Appends a length as a `u32` (lengths here are bounded by the frame limits far below
/// 4 GiB).
fn put_u32(w: &mut Vec<u8>, n: usize) {
    w.extend_from_slice(&(n as u32).to_le_bytes());
}

/// Appends a byte string.
fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len());
    w.extend_from_slice(b);
}

/// Appends a string.
fn put_str(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

/// The records of the payload at `lsn`.
fn decode(lsn: u64, payload: &[u8]) -> Result<Vec<Record>, StoreError> {
    let mut r = Reader { lsn, rest: payload };
    let n = r.u32()?;
    let mut records = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        records.push(match r.u8()? {
            TAG_MESSAGE => {
                let conv = r.string()?;
                let seq = r.u64()?;
                let ts = r.u64()? as i64;
                let from = r.string()?;
                let cid = match r.u8()? {
                    0 => None,
                    _ => Some(r.string()?),
                };
                let event = r.u8()? != 0;
                let count = r.u32()?;
                let mut recipients = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    recipients.push((r.string()?, r.u64()?));
                }
                let json = Bytes::copy_from_slice(r.bytes()?);
                Record::Message(Placed {
                    committed: Committed {
                        json,
                        conv,
                        seq,
                        ts,
                        recipients,
                    },
                    from,
                    cid,
                    event,
                })
            }
            TAG_READ => Record::Read {
                conv: r.string()?,
                uid: r.string()?,
                seq: r.u64()?,
            },
            tag => return Err(r.corrupt(&format!("unknown record tag {tag}"))),
        });
    }
    if !r.rest.is_empty() {
        return Err(r.corrupt("bytes after the last record"));
    }
    Ok(records)
}

/// Reads a payload front to back.
struct Reader<'a> {
    /// The record's LSN, for errors.
    lsn: u64,
    /// What is left.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A corrupt record error.
    fn corrupt(&self, what: &str) -> StoreError {
        StoreError::Corrupt(format!("commit log record {}: {what}", self.lsn))
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.rest.len() < n {
            return Err(self.corrupt("cut short"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// A byte.
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    /// A `u32`, as a length.
    fn u32(&mut self) -> Result<usize, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// A `u64`.
    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A byte string.
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()?;
        self.take(n)
    }

    /// A string.
    fn string(&mut self) -> Result<String, StoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("a string that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Content, EmbeddedOptions, EmbeddedStore, MessageStore};
    use serde_json::json;

    fn options(log: bool) -> EmbeddedOptions {
        EmbeddedOptions {
            log,
            ..Default::default()
        }
    }

    fn new_msg(from: &str, to: &str, cid: Option<&str>, ts: i64) -> NewMessage {
        NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            conv: shared::ids::direct_conv(from, to),
            from: from.into(),
            cid: cid.map(Into::into),
            content: Content::Body(json!({"ts": ts})),
            ts,
            members: vec![from.into(), to.into()],
        }
    }

    fn placed(o: &CommitOutcome) -> (u64, Vec<(String, u64)>) {
        match o {
            CommitOutcome::New(c) => (c.seq, c.recipients.clone()),
            other => panic!("expected a new message, got {other:?}"),
        }
    }

    fn useqs(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(u, n)| (u.to_string(), *n)).collect()
    }

    /// While the indexer cannot write (a test holds the database's write transaction),
    /// commits go on and decide from what is logged: seqs and useqs follow the records
    /// not indexed, a resend of one is a duplicate, a read position moves from the
    /// logged one. Then the indexer writes it all, and reads see it.
    #[tokio::test]
    async fn decisions_follow_records_not_indexed_yet() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(dir.path(), options(true)).unwrap();
        let conv = shared::ids::direct_conv("a", "b");
        let read = |seq| Op::Read {
            conv: conv.clone(),
            uid: "b".into(),
            seq,
        };
        let stall = store.db.begin_write().unwrap();
        let first = store
            .commit(vec![
                Op::Message(new_msg("a", "b", Some("k1"), 10)),
                Op::Message(new_msg("b", "a", None, 11)),
                read(9),
            ])
            .await
            .unwrap();
        assert_eq!(placed(&first[0]), (1, useqs(&[("a", 1), ("b", 1)])));
        assert_eq!(placed(&first[1]), (2, useqs(&[("b", 2), ("a", 2)])));
        // b sent seq 2, so its position is there already.
        assert!(matches!(
            first[2],
            CommitOutcome::Read {
                seq: 2,
                moved: false
            }
        ));
        let CommitOutcome::New(k1) = &first[0] else {
            unreachable!()
        };
        let second = store
            .commit(vec![
                Op::Message(new_msg("a", "b", Some("k1"), 12)),
                Op::Message(new_msg("a", "c", None, 13)),
                Op::Message(new_msg("a", "b", None, 14)),
                read(9),
                read(1),
            ])
            .await
            .unwrap();
        assert!(matches!(&second[0], CommitOutcome::Duplicate(j) if *j == k1.json));
        assert_eq!(placed(&second[1]), (1, useqs(&[("a", 3), ("c", 1)])));
        assert_eq!(placed(&second[2]), (3, useqs(&[("a", 4), ("b", 3)])));
        assert!(matches!(
            second[3],
            CommitOutcome::Read {
                seq: 3,
                moved: true
            }
        ));
        assert!(matches!(
            second[4],
            CommitOutcome::Read {
                seq: 3,
                moved: false
            }
        ));
        drop(stall);

        let inbox = store.inbox("a", 0, 10).await.unwrap();
        assert_eq!(
            inbox.items.iter().map(|i| i.0).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(store.last_seq(&conv).await.unwrap(), 3);
        let mut reads = store.read_positions(&conv).await.unwrap();
        reads.sort();
        assert_eq!(reads, [("a".into(), 3), ("b".into(), 3)]);
        // Once indexed, only the counters stay (as a cache).
        let p = store.logged.as_ref().unwrap().shared.pending().unwrap();
        assert!(p.reads.is_empty() && p.idem.is_empty());
        assert_eq!((p.conv_seq.len(), p.user_seq.len()), (2, 3));
        assert_eq!((p.bytes, p.rows), (0, 0));
    }

    /// A record that the indexer never wrote (a crash between the append and the index
    /// transaction) is applied when the store opens, with the log commit or without it
    /// (then the log is removed), and the counters go on after it.
    #[tokio::test]
    async fn records_not_indexed_are_applied_at_open() {
        for keep in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let conv = shared::ids::direct_conv("a", "b");
            {
                let store = EmbeddedStore::open_with(dir.path(), options(true)).unwrap();
                let out = store
                    .commit(vec![Op::Message(new_msg("a", "b", None, 1))])
                    .await
                    .unwrap();
                assert_eq!(placed(&out[0]).0, 1);
            }
            // A clean stop left the log empty: the next open reads nothing.
            let logged: u64 = std::fs::read_dir(dir.path().join(LOG_DIR))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert_eq!(logged, 0);
            {
                // What a crash right after an append leaves.
                let (mut log, replayed) = CommitLog::open(&dir.path().join(LOG_DIR), 1).unwrap();
                assert!(replayed.is_empty(), "the first record was indexed");
                let m = new_msg("b", "a", Some("r1"), 2);
                let p = Placed::new(&m, 2, useqs(&[("b", 2), ("a", 2)])).unwrap();
                let read = Record::Read {
                    conv: conv.clone(),
                    uid: "a".into(),
                    seq: 2,
                };
                assert_eq!(log.append(&encode(&[Record::Message(p), read])).unwrap(), 2);
            }
            let store = EmbeddedStore::open_with(dir.path(), options(keep)).unwrap();
            assert_eq!(dir.path().join(LOG_DIR).exists(), keep);
            let inbox = store.inbox("a", 0, 10).await.unwrap();
            assert_eq!(inbox.items.iter().map(|i| i.0).collect::<Vec<_>>(), [1, 2]);
            let mut reads = store.read_positions(&conv).await.unwrap();
            reads.sort();
            assert_eq!(reads, [("a".into(), 2), ("b".into(), 2)]);
            let out = store
                .commit(vec![
                    Op::Message(new_msg("b", "a", Some("r1"), 3)),
                    Op::Message(new_msg("a", "b", None, 4)),
                ])
                .await
                .unwrap();
            assert!(matches!(out[0], CommitOutcome::Duplicate(_)), "keep {keep}");
            assert_eq!(placed(&out[1]), (3, useqs(&[("a", 3), ("b", 3)])));
        }
    }

    #[test]
    fn records_encode_and_decode() {
        let records = vec![
            Record::Message(Placed {
                committed: Committed {
                    json: Bytes::from_static(br#"{"seq":7}"#),
                    conv: "g:team".into(),
                    seq: 7,
                    ts: -3,
                    recipients: vec![("a".into(), 1), ("béa".into(), u64::MAX)],
                },
                from: "a".into(),
                cid: Some("c-1".into()),
                event: false,
            }),
            Record::Read {
                conv: "d:a~b".into(),
                uid: "b".into(),
                seq: 9,
            },
            Record::Message(Placed {
                committed: Committed {
                    json: Bytes::new(),
                    conv: "s:shop~c".into(),
                    seq: 1,
                    ts: 5,
                    recipients: Vec::new(),
                },
                from: "c".into(),
                cid: None,
                event: true,
            }),
        ];
        let payload = encode(&records);
        assert_eq!(decode(1, &payload).unwrap(), records);
        // Cut anywhere, it is an error, never a shorter batch.
        for end in 0..payload.len() {
            assert!(decode(1, &payload[..end]).is_err(), "cut at {end}");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode(1, &longer).is_err());
    }
}

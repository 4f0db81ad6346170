//! The embedded backend: redb, under `--data-dir`.
//!
//! Why redb: pure Rust, ACID with copy-on-write B-trees, crash-safe, a stable file
//! format, and durable by default (`Durability::Immediate` fsyncs at commit). After a
//! crash the open repairs the file: from the allocator state every commit saves with
//! quick repair (the default, [`EmbeddedOptions::quick_repair`]), in a fraction of a
//! second; without it, by reading the whole file (25 s for 10 GB). Its single writer
//! suits us: the business layer already funnels every commit through one group-commit
//! task, so many messages share one fsync.
//! Reads run in MVCC read transactions and never wait for the writer.
//!
//! The file is locked by the process that opens it, which is why the secrets live in
//! their own file beside it (`imd token` must read them while `imd serve` runs).
//!
//! This file owns the database handle and the helpers the domains share; each domain
//! (`messages`, `blacklist`, `shops`, `groups`, `push`) owns its tables and must not touch
//! another's, except the messages' commit (directly, or through the commit log and its
//! indexer: `log`, `logged`), which is the only writer of its tables, and also writes
//! the webhook outbox's marks (`outbox`), which reads the last seqs.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{Generation, StoreError};

mod blacklist;
mod groups;
mod log;
mod logged;
mod messages;
mod outbox;
mod push;
mod retention;
mod shops;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Db>,
    /// Made once when the data dir is created; never changes (see
    /// [`MessageStore::generation`](crate::store::MessageStore::generation)).
    generation: Generation,
    /// Whether commits write the webhook outbox (see `crate::store::outbox`).
    outbox: bool,
    /// The outbox's delivery leases.
    leases: Arc<outbox::Leases>,
    /// The outbox's cursor moves not written yet.
    cursors: Arc<outbox::Cursors>,
    /// The log commit, with [`EmbeddedOptions::log`].
    logged: Option<Arc<logged::Logged>>,
}

/// The embedded store's page cache unless configured (`--store-cache-bytes`): redb's
/// default, 1 GiB, grew a node's memory with its data file by about 5 MiB a minute at
/// 500 msg/s for the whole of a 30-minute soak (docs/benchmarks.md, *Chaos runs*).
pub const EMBEDDED_CACHE_BYTES: usize = 64 << 20;

/// How the embedded store opens its file.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    /// The most bytes of the file's pages kept in memory (`--store-cache-bytes`).
    pub cache_bytes: usize,
    /// Every write transaction saves redb's allocator state and commits in two phases
    /// (`--store-quick-repair`, on by default): a commit costs a second fsync, and
    /// opening the file after a crash no longer walks all of it (docs/benchmarks.md,
    /// *Recovery after a crash*).
    pub quick_repair: bool,
    /// A commit is one append to a commit log and one `fdatasync`; the tables are
    /// written after it, in the background (`--store-log`, on by default; see
    /// `logged`). Off: every commit writes the tables in its own durable transaction.
    pub log: bool,
    /// Every commit writes the webhook outbox (see `crate::store::outbox`): on when a
    /// webhook is configured.
    pub outbox: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            cache_bytes: EMBEDDED_CACHE_BYTES,
            quick_repair: true,
            log: true,
            outbox: false,
        }
    }
}

/// The database, and how its write transactions commit. Reads go to the [`Database`]
/// itself; writes begin with [`Db::begin_write`], which applies the options.
pub(super) struct Db {
    inner: Database,
    quick_repair: bool,
}

impl std::ops::Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.inner
    }
}

impl Db {
    /// Begins a write transaction with the store's commit options (this method, not
    /// [`Database::begin_write`], which the deref would also offer).
    pub(super) fn begin_write(&self) -> Result<WriteTransaction, redb::TransactionError> {
        let mut txn = self.inner.begin_write()?;
        txn.set_quick_repair(self.quick_repair);
        Ok(txn)
    }
}

/// `key` → value: facts about the database itself.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

impl EmbeddedStore {
    /// Opens (or creates) the database file `dir/imd.redb` with the default options.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// Opens (or creates) the database file `dir/imd.redb`. After a crash this repairs
    /// the file first, which takes a walk of all of it unless every commit before the
    /// crash was made with [`EmbeddedOptions::quick_repair`], then applies what the
    /// commit log (`dir/log/`, with [`EmbeddedOptions::log`]) holds past the tables.
    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::DataDir {
            path: dir.to_owned(),
            source: Arc::new(e),
        })?;
        let db = Db {
            inner: redb::Builder::new()
                .set_cache_size(options.cache_bytes)
                .set_repair_callback(|session| {
                    tracing::warn!(
                        done = %format!("{:.0}%", 100.0 * session.progress()),
                        "the store was not shut down cleanly: repairing it, which reads the \
                         whole file (with --store-quick-repair, the default, it need not)"
                    );
                })
                .create(dir.join("imd.redb"))?,
            quick_repair: options.quick_repair,
        };
        // Create every table once, so read transactions never meet a missing one.
        let txn = db.begin_write()?;
        messages::create_tables(&txn)?;
        blacklist::create_tables(&txn)?;
        shops::create_tables(&txn)?;
        groups::create_tables(&txn)?;
        push::create_tables(&txn)?;
        outbox::create_tables(&txn)?;
        logged::create_tables(&txn)?;
        let generation = {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get("generation")?.map(|g| g.value().to_owned());
            match stored {
                Some(g) => Generation(g.into()),
                None => {
                    let g = Generation::new(shared::time::now_ms());
                    meta.insert("generation", g.as_str())?;
                    g
                }
            }
        };
        txn.commit()?;
        let db = Arc::new(db);
        let cursors = Arc::default();
        let logged = logged::Logged::open(&db, dir, options.log, options.outbox, &cursors)?;
        Ok(Self {
            db,
            generation,
            outbox: options.outbox,
            leases: Arc::default(),
            cursors,
            logged: logged.map(Arc::new),
        })
    }

    /// Waits, with the log commit, until the tables hold every commit made so far
    /// (reads that answer clients, and the webhook outbox's, call it first); at once
    /// without it.
    async fn indexed(&self) -> Result<(), StoreError> {
        match &self.logged {
            Some(logged) => logged.indexed().await,
            None => Ok(()),
        }
    }

    /// Runs blocking database work off the async runtime.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await?
    }
}

/// `v` as JSON bytes.
fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(StoreError::encode)
}

/// The stored JSON record `what`.
fn from_json<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::decode(what, e))
}

/// The JSON value at `key` of a `&str → &[u8]` table.
fn json_at<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let v = t.get(key)?;
    v.map(|g| from_json(key, g.value())).transpose()
}

/// Reads one JSON value of a `&str → &[u8]` table.
fn get_json<T: serde::de::DeserializeOwned>(
    db: &Db,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read()?;
    json_at(&txn.open_table(table)?, key)
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
    for entry in t.range((first, "")..)? {
        let (k, v) = entry?;
        let (a, b) = k.value();
        if a != first {
            break;
        }
        out.push(f(b, v));
    }
    Ok(out)
}

//! redb against fjall for the embedded store's commit, in one criterion run (issue 17).
//!
//! Three ways to write the same messages, each durable before the commit returns:
//!
//! - `redb-store`: the store as it is ([`EmbeddedStore::commit`]: redb, tuple keys,
//!   one write transaction per batch with `Durability::Immediate`).
//! - `redb-lean`: the commit's logical writes (below) on redb with byte keys and the
//!   counters cached in memory, to tell the engine's cost from the layout's.
//! - `fjall`: the same logical writes on fjall (an LSM tree with a journal): one write
//!   batch per commit, then `persist(SyncData)`, one `fdatasync`.
//!
//! The logical writes of one message are the store's: the message row, the
//! conversation's last seq, and per member the inbox row, the user's last useq, the
//! conversation's place in the member's list (read the old place, remove its index
//! row, write both anew); the sender's read position and the idempotency key with its
//! expiry row. Every engine starts from the same 100,000 messages among 10,000 users,
//! so the trees are not empty.
//!
//! `cargo bench -p imd --bench engines`; figures go to docs/benchmarks.md.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imd::store::{EmbeddedStore, MessageStore, NewMessage, Op};
use redb::{ReadableDatabase, TableDefinition};
use serde_json::json;

/// Users the direct messages go between.
const USERS: u64 = 10_000;
/// Messages written before measuring.
const PREFILL: u64 = 100_000;
/// Members of the group message.
const GROUP: u64 = 500;

/// A direct message between two of [`USERS`], or from the first of a group's members.
fn message(i: u64, group: bool) -> NewMessage {
    let from = format!("u{}", i % USERS);
    let (conv, members) = if group {
        let members = (0..GROUP)
            .map(|k| format!("u{}", (i + k) % USERS))
            .collect();
        ("g:big".to_owned(), members)
    } else {
        let to = format!("u{}", (i * 7 + 1) % USERS);
        (shared::ids::direct_conv(&from, &to), vec![from.clone(), to])
    };
    NewMessage {
        id: format!("m{i}"),
        conv,
        members,
        from,
        cid: Some(format!("c{i}")),
        content: imd::store::Content::Body(json!({"text": "hello, is this in stock?"})),
        ts: 1_795_778_030_410 + i as i64,
    }
}

/// The tables of the logical commit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum T {
    Messages,
    ConvSeq,
    Inbox,
    UserSeq,
    Idem,
    IdemByTs,
    Activity,
    ByActivity,
    Reads,
}

const TABLES: [T; 9] = [
    T::Messages,
    T::ConvSeq,
    T::Inbox,
    T::UserSeq,
    T::Idem,
    T::IdemByTs,
    T::Activity,
    T::ByActivity,
    T::Reads,
];

impl T {
    fn name(self) -> &'static str {
        match self {
            T::Messages => "messages",
            T::ConvSeq => "conv_seq",
            T::Inbox => "inbox",
            T::UserSeq => "user_seq",
            T::Idem => "idem",
            T::IdemByTs => "idem_by_ts",
            T::Activity => "activity",
            T::ByActivity => "by_activity",
            T::Reads => "reads",
        }
    }
}

/// `parts` joined by a 0 byte (ids hold none), numbers big-endian so keys sort.
fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (n, p) in parts.iter().enumerate() {
        if n > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// An engine under the logical commit: committed reads, and a batch of writes made
/// durable at once.
trait Engine {
    fn get(&self, t: T, k: &[u8]) -> Option<Vec<u8>>;
    fn write(&mut self, writes: Vec<(T, Vec<u8>, Option<Vec<u8>>)>);
}

/// The writer's state across commits: the counters, as the single writer would keep
/// them in memory.
#[derive(Default)]
struct Writer {
    conv_seq: HashMap<String, u64>,
    user_seq: HashMap<String, u64>,
}

impl Writer {
    /// Commits `msgs` through `e` in one durable batch.
    fn commit(&mut self, e: &mut impl Engine, msgs: &[NewMessage]) {
        // Rows a later message of the batch may read or write again, by key, so that
        // reads see the batch and each key is written once (fjall gives every item of
        // a batch one seqno). Everything else goes straight to `writes`.
        let mut activity: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut by_activity: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut users: HashMap<&str, u64> = HashMap::new();
        let mut convs: HashMap<&str, u64> = HashMap::new();
        let mut writes = Vec::with_capacity(msgs.len() * 12);
        for m in msgs {
            let cid = m.cid.as_deref().unwrap_or_default();
            let idem = key(&[m.from.as_bytes(), cid.as_bytes()]);
            assert!(
                e.get(T::Idem, &idem).is_none(),
                "the bench sends every cid once"
            );
            let seq = self.conv_seq.entry(m.conv.clone()).or_default();
            *seq += 1;
            let seq = *seq;
            convs.insert(&m.conv, seq);
            let place = key(&[m.conv.as_bytes(), &seq.to_be_bytes()]);
            let ts = m.ts.to_be_bytes();
            for uid in &m.members {
                let useq = self.user_seq.entry(uid.clone()).or_default();
                *useq += 1;
                let useq = *useq;
                users.insert(uid, useq);
                writes.push((
                    T::Inbox,
                    key(&[uid.as_bytes(), &useq.to_be_bytes()]),
                    Some(place.clone()),
                ));
                let ak = key(&[uid.as_bytes(), m.conv.as_bytes()]);
                let old = match activity.get(&ak) {
                    Some(v) => v.clone(),
                    None => e.get(T::Activity, &ak),
                };
                if let Some(old) = old {
                    by_activity.insert(key(&[uid.as_bytes(), &old[..8], m.conv.as_bytes()]), None);
                }
                let mut v = ts.to_vec();
                v.extend_from_slice(&seq.to_be_bytes());
                activity.insert(ak, Some(v));
                by_activity.insert(
                    key(&[uid.as_bytes(), &ts, m.conv.as_bytes()]),
                    Some(seq.to_be_bytes().to_vec()),
                );
            }
            writes.push((
                T::Reads,
                key(&[m.conv.as_bytes(), m.from.as_bytes()]),
                Some(seq.to_be_bytes().to_vec()),
            ));
            writes.push((T::Idem, idem, Some(place.clone())));
            writes.push((
                T::IdemByTs,
                key(&[&ts, m.from.as_bytes(), cid.as_bytes()]),
                Some(Vec::new()),
            ));
            let json = serde_json::to_vec(&m.to_message(seq)).unwrap();
            writes.push((T::Messages, place, Some(json)));
        }
        for (t, counters) in [(T::ConvSeq, convs), (T::UserSeq, users)] {
            writes.extend(
                counters
                    .into_iter()
                    .map(|(k, v)| (t, k.as_bytes().to_vec(), Some(v.to_be_bytes().to_vec()))),
            );
        }
        writes.extend(activity.into_iter().map(|(k, v)| (T::Activity, k, v)));
        writes.extend(by_activity.into_iter().map(|(k, v)| (T::ByActivity, k, v)));
        e.write(writes);
    }
}

/// The logical commit on redb: one `&[u8] → &[u8]` table per [`T`].
struct RedbLean {
    db: redb::Database,
}

fn def(t: T) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

impl RedbLean {
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("lean.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        for t in TABLES {
            txn.open_table(def(t)).unwrap();
        }
        txn.commit().unwrap();
        Self { db }
    }
}

impl Engine for RedbLean {
    fn get(&self, t: T, k: &[u8]) -> Option<Vec<u8>> {
        let txn = self.db.begin_read().unwrap();
        let table = txn.open_table(def(t)).unwrap();
        table.get(k).unwrap().map(|g| g.value().to_vec())
    }

    fn write(&mut self, writes: Vec<(T, Vec<u8>, Option<Vec<u8>>)>) {
        let txn = self.db.begin_write().unwrap();
        {
            let mut tables: HashMap<T, _> = TABLES
                .iter()
                .map(|&t| (t, txn.open_table(def(t)).unwrap()))
                .collect();
            for (t, k, v) in writes {
                let table = tables.get_mut(&t).unwrap();
                match v {
                    Some(v) => {
                        table.insert(k.as_slice(), v.as_slice()).unwrap();
                    }
                    None => {
                        table.remove(k.as_slice()).unwrap();
                    }
                }
            }
        }
        txn.commit().unwrap();
    }
}

/// The logical commit on fjall: one keyspace per [`T`], one write batch per commit,
/// then the journal synced.
struct Fjall {
    db: fjall::Database,
    keyspaces: HashMap<T, fjall::Keyspace>,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir.join("fjall"))
            .manual_journal_persist(true)
            .open()
            .unwrap();
        let keyspaces = TABLES
            .iter()
            .map(|&t| {
                let ks = db
                    .keyspace(t.name(), fjall::KeyspaceCreateOptions::default)
                    .unwrap();
                (t, ks)
            })
            .collect();
        Self { db, keyspaces }
    }
}

impl Engine for Fjall {
    fn get(&self, t: T, k: &[u8]) -> Option<Vec<u8>> {
        self.keyspaces[&t].get(k).unwrap().map(|v| v.to_vec())
    }

    fn write(&mut self, writes: Vec<(T, Vec<u8>, Option<Vec<u8>>)>) {
        let mut batch = self.db.batch();
        for (t, k, v) in writes {
            let ks = &self.keyspaces[&t];
            match v {
                Some(v) => batch.insert(ks, k, v),
                None => batch.remove(ks, k),
            }
        }
        batch.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncData).unwrap();
    }
}

/// Per engine: direct messages in batches of 1, 64 and 512, and one 500-member group
/// message per commit.
fn engines(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The store committing straight to its tables (`--store-log false`): the engines
    // compared here are what the log commit's indexer writes with.
    let direct = imd::store::EmbeddedOptions {
        log: false,
        ..Default::default()
    };
    let store = EmbeddedStore::open_with(&dir.path().join("store"), direct).unwrap();
    let mut lean = RedbLean::open(dir.path());
    let mut lean_writer = Writer::default();
    let mut fj = Fjall::open(dir.path());
    let mut fj_writer = Writer::default();

    let prefill: Vec<NewMessage> = (0..PREFILL).map(|i| message(i, false)).collect();
    for chunk in prefill.chunks(4096) {
        let ops = chunk.iter().cloned().map(Op::Message).collect();
        rt.block_on(store.commit(ops)).unwrap();
        lean_writer.commit(&mut lean, chunk);
        fj_writer.commit(&mut fj, chunk);
    }

    let mut next = PREFILL;
    let mut take = |n: u64, group: bool| {
        let msgs: Vec<NewMessage> = (next..next + n).map(|i| message(i, group)).collect();
        next += n;
        msgs
    };

    let mut g = c.benchmark_group("engines");
    g.sample_size(20).measurement_time(Duration::from_secs(6));
    for batch in [1u64, 64, 512] {
        g.throughput(Throughput::Elements(batch));
        let id = |engine: &str| BenchmarkId::new(format!("direct/{engine}"), batch);
        g.bench_function(id("redb-store"), |b| {
            b.iter(|| {
                let ops = take(batch, false).into_iter().map(Op::Message).collect();
                rt.block_on(store.commit(ops)).unwrap()
            })
        });
        g.bench_function(id("redb-lean"), |b| {
            b.iter(|| lean_writer.commit(&mut lean, &take(batch, false)))
        });
        g.bench_function(id("fjall"), |b| {
            b.iter(|| fj_writer.commit(&mut fj, &take(batch, false)))
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("group500/redb-store", |b| {
        b.iter(|| {
            let ops = take(1, true).into_iter().map(Op::Message).collect();
            rt.block_on(store.commit(ops)).unwrap()
        })
    });
    g.bench_function("group500/redb-lean", |b| {
        b.iter(|| lean_writer.commit(&mut lean, &take(1, true)))
    });
    g.bench_function("group500/fjall", |b| {
        b.iter(|| fj_writer.commit(&mut fj, &take(1, true)))
    });
    g.finish();
}

criterion_group!(benches, engines);
criterion_main!(benches);

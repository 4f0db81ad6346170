//! The store contract: one suite of properties of [`MessageStore`], run against every
//! backend (the embedded store, standalone Redis and a 3-node Redis Cluster), so that
//! the business layer may take any of them for the other.
//!
//! Each property is an async function of a [`Backend`]; `contract!` makes one test per
//! backend of it (`contract_<property>_<backend>`). Properties that need several
//! writers on one database (concurrency, crash recovery) run on the Redis backends only.
//! Nothing sleeps for luck: the waits below poll a condition under a deadline.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::Redis;
use imd::store::{
    CommitOutcome, Committed, EmbeddedStore, MessageStore, NewMessage, Op, PAGE_BYTES, RedisStore,
};
use serde_json::{Value, json};
use shared::protocol::Message;

/// A store under test and what keeps its database alive.
struct Backend {
    store: Arc<dyn MessageStore>,
    /// The Redis the store talks to (none for the embedded store).
    redis: Option<Redis>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn embedded() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        Backend {
            store: Arc::new(store),
            redis: None,
            _dir: Some(dir),
        }
    }

    async fn redis(redis: Redis) -> Backend {
        let store = RedisStore::connect(&redis.url())
            .await
            .expect("connect to redis");
        assert_eq!(store.is_cluster(), redis.is_cluster());
        Backend {
            store: Arc::new(store),
            redis: Some(redis),
            _dir: None,
        }
    }

    async fn standalone() -> Backend {
        Backend::redis(
            tokio::task::spawn_blocking(Redis::standalone)
                .await
                .unwrap(),
        )
        .await
    }

    async fn cluster() -> Backend {
        Backend::redis(tokio::task::spawn_blocking(Redis::cluster).await.unwrap()).await
    }

    /// Another store instance on the same Redis: another writer process.
    async fn another(&self) -> RedisStore {
        let redis = self.redis.as_ref().expect("a Redis backend");
        RedisStore::connect(&redis.url())
            .await
            .expect("connect to redis")
    }
}

/// One test per backend of property `$prop`.
macro_rules! contract {
    ($prop:ident => $embedded:ident, $standalone:ident, $cluster:ident) => {
        #[tokio::test]
        async fn $embedded() {
            $prop(Backend::embedded()).await;
        }
        contract!($prop => $standalone, $cluster);
    };
    ($prop:ident => $standalone:ident, $cluster:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $standalone() {
            $prop(Backend::standalone().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $cluster() {
            $prop(Backend::cluster().await).await;
        }
    };
}

contract!(sequences => contract_sequences_embedded, contract_sequences_standalone, contract_sequences_cluster);
contract!(idempotency => contract_idempotency_embedded, contract_idempotency_standalone, contract_idempotency_cluster);
contract!(paging => contract_paging_embedded, contract_paging_standalone, contract_paging_cluster);
contract!(join => contract_join_embedded, contract_join_standalone, contract_join_cluster);
contract!(unknown => contract_unknown_embedded, contract_unknown_standalone, contract_unknown_cluster);
contract!(concurrency => contract_concurrency_standalone, contract_concurrency_cluster);
contract!(crash_recovery => contract_crash_recovery_standalone, contract_crash_recovery_cluster);
contract!(takeover => contract_takeover_standalone, contract_takeover_cluster);
contract!(finish_behind_the_answer => contract_finish_behind_the_answer_standalone, contract_finish_behind_the_answer_cluster);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn new_msg(conv: &str, from: &str, cid: Option<&str>, body: Value, members: &[&str]) -> NewMessage {
    NewMessage {
        id: uuid::Uuid::now_v7().to_string(),
        conv: conv.into(),
        from: from.into(),
        cid: cid.map(Into::into),
        body,
        ts: now_ms(),
        members: members.iter().map(|s| s.to_string()).collect(),
    }
}

fn msg(conv: &str, from: &str, cid: Option<&str>, members: &[&str]) -> Op {
    Op::Message(new_msg(conv, from, cid, json!({"t": conv}), members))
}

fn join_op(conv: &str, uid: &str) -> Op {
    Op::Join {
        conv: conv.into(),
        uid: uid.into(),
    }
}

#[track_caller]
fn new(o: &CommitOutcome) -> &Committed {
    match o {
        CommitOutcome::New(c) => c,
        other => panic!("expected a new message, got {other:?}"),
    }
}

fn parse(json: &[u8]) -> Message {
    serde_json::from_slice(json).expect("message JSON")
}

/// Every item of `uid`'s inbox, following `more`.
async fn whole_inbox(store: &dyn MessageStore, uid: &str) -> Vec<(u64, Bytes)> {
    let mut all: Vec<(u64, Bytes)> = Vec::new();
    loop {
        let after = all.last().map_or(0, |i| i.0);
        let page = store.inbox(uid, after, 1000).await.expect("inbox");
        all.extend(page.items);
        if !page.more {
            return all;
        }
    }
}

/// Every message of `conv`, following `more`.
async fn whole_history(store: &dyn MessageStore, conv: &str) -> Vec<Bytes> {
    let mut all: Vec<Bytes> = Vec::new();
    loop {
        let page = store
            .history(conv, all.len() as u64, 1000)
            .await
            .expect("history");
        all.extend(page.items);
        if !page.more {
            return all;
        }
    }
}

/// `(conv, seq)` of each inbox item.
fn refs(items: &[(u64, Bytes)]) -> Vec<(String, u64)> {
    items
        .iter()
        .map(|(_, j)| {
            let m = parse(j);
            (m.conv, m.seq)
        })
        .collect()
}

/// Seq and useq are gapless from 1; recipients come in member order; each conversation
/// keeps seq order inside every inbox; the JSON is the `Message` the history holds.
async fn sequences(b: Backend) {
    let s = &*b.store;
    let out = s
        .commit(vec![
            msg("d:a~b", "a", None, &["a", "b"]),
            msg("d:a~c", "a", None, &["a", "c"]),
            msg("d:a~b", "b", None, &["a", "b"]),
        ])
        .await
        .unwrap();
    let seqs: Vec<u64> = out.iter().map(|o| new(o).seq).collect();
    assert_eq!(seqs, [1, 1, 2]);
    // Recipients in member order. A user's useqs within a batch are gapless and keep
    // each conversation's order; across conversations of one batch the order is the
    // backend's (Redis fans conversations out concurrently).
    let uids = |o: &CommitOutcome| -> Vec<String> {
        new(o).recipients.iter().map(|r| r.0.clone()).collect()
    };
    assert_eq!(uids(&out[0]), ["a", "b"]);
    assert_eq!(uids(&out[1]), ["a", "c"]);
    assert_eq!(uids(&out[2]), ["a", "b"]);
    let useq =
        |o: &CommitOutcome, uid: &str| new(o).recipients.iter().find(|r| r.0 == uid).unwrap().1;
    let mut of_a = [0, 1, 2].map(|i| useq(&out[i], "a"));
    assert!(of_a[0] < of_a[2]);
    of_a.sort();
    assert_eq!(of_a, [1, 2, 3]);
    assert_eq!([useq(&out[0], "b"), useq(&out[2], "b")], [1, 2]);
    assert_eq!(useq(&out[1], "c"), 1);
    let m = parse(&new(&out[2]).json);
    assert_eq!((m.conv.as_str(), m.seq, m.from.as_str()), ("d:a~b", 2, "b"));
    assert_eq!(m.body, json!({"t": "d:a~b"}));
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 2);
    assert_eq!(s.last_seq("d:a~c").await.unwrap(), 1);

    // More batches, interleaving three conversations in a's inbox.
    for i in 0..5 {
        let out = s
            .commit(vec![
                msg("d:a~c", "c", None, &["a", "c"]),
                msg("g:abc", "b", None, &["a", "b", "c"]),
                msg("d:a~b", "a", None, &["a", "b"]),
                msg("g:abc", "a", None, &["a", "b", "c"]),
            ])
            .await
            .unwrap();
        assert_eq!(new(&out[1]).seq, 2 * i + 1);
        assert_eq!(new(&out[3]).seq, 2 * i + 2);
    }
    for (uid, expected) in [("a", 3 + 20), ("b", 2 + 15), ("c", 1 + 15)] {
        let inbox = whole_inbox(s, uid).await;
        assert_eq!(
            inbox.iter().map(|i| i.0).collect::<Vec<_>>(),
            (1..=expected).collect::<Vec<u64>>(),
            "useqs of {uid}"
        );
        let mut last: HashMap<String, u64> = HashMap::new();
        for (conv, seq) in refs(&inbox) {
            let prev = last.insert(conv.clone(), seq).unwrap_or(0);
            assert_eq!(seq, prev + 1, "{conv} in {uid}'s inbox");
        }
    }
    for (conv, n) in [("d:a~b", 7), ("d:a~c", 6), ("g:abc", 10)] {
        let h = whole_history(s, conv).await;
        assert_eq!(
            h.iter().map(|j| parse(j).seq).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<u64>>()
        );
        assert_eq!(s.last_seq(conv).await.unwrap(), n);
    }
    // The committed JSON is byte for byte what history and inboxes hold.
    let h = s.history("d:a~b", 1, 1).await.unwrap();
    assert_eq!(h.items[0], new(&out[2]).json);
    let page = s.inbox("b", 1, 1).await.unwrap();
    assert_eq!(page.items, [(2, new(&out[2]).json.clone())]);
    assert!(page.more);
    let page = s.inbox("a", useq(&out[1], "a") - 1, 1).await.unwrap();
    assert_eq!(page.items[0].1, new(&out[1]).json);
}

/// A resend of `(from, cid)` is a duplicate of the first, within a batch, across
/// batches and across conversations; another sender's cid is its own.
async fn idempotency(b: Backend) {
    let s = &*b.store;
    let out = s
        .commit(vec![
            msg("d:a~b", "a", Some("c1"), &["a", "b"]),
            msg("d:a~b", "a", Some("c1"), &["a", "b"]),
            msg("d:a~b", "a", Some("c2"), &["a", "b"]),
            msg("d:a~b", "a", Some("c2"), &["a", "b"]),
        ])
        .await
        .unwrap();
    let first = new(&out[0]).json.clone();
    let second = new(&out[2]).json.clone();
    assert!(matches!(&out[1], CommitOutcome::Duplicate(j) if *j == first));
    assert!(matches!(&out[3], CommitOutcome::Duplicate(j) if *j == second));
    assert_eq!(new(&out[2]).seq, 2);

    let out = s
        .commit(vec![
            msg("d:a~b", "a", Some("c1"), &["a", "b"]),
            // The same cid in another conversation is still the same message.
            msg("d:a~x", "a", Some("c2"), &["a", "x"]),
            msg("d:a~b", "b", Some("c1"), &["a", "b"]),
            msg("d:a~b", "b", Some("c1"), &["a", "b"]),
        ])
        .await
        .unwrap();
    assert!(matches!(&out[0], CommitOutcome::Duplicate(j) if *j == first));
    assert!(matches!(&out[1], CommitOutcome::Duplicate(j) if *j == second));
    let third = new(&out[2]);
    assert_eq!(third.seq, 3);
    assert!(matches!(&out[3], CommitOutcome::Duplicate(j) if *j == third.json));

    // Nothing was written for the duplicates.
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 3);
    assert_eq!(s.last_seq("d:a~x").await.unwrap(), 0);
    assert_eq!(whole_inbox(s, "b").await.len(), 3);
    assert!(whole_inbox(s, "x").await.is_empty());
}

/// Pages stop at `limit` and before passing [`PAGE_BYTES`], always hold one item, and
/// say whether more follow.
async fn paging(b: Backend) {
    let s = &*b.store;
    let filler = "x".repeat(10_000);
    let mut ops: Vec<Op> = (0..20)
        .map(|i| {
            Op::Message(new_msg(
                "d:p~q",
                "p",
                None,
                json!({"i": i, "f": filler}),
                &["p", "q"],
            ))
        })
        .collect();
    // One message bigger than a page on its own.
    let big = "y".repeat(PAGE_BYTES + 1);
    ops.push(Op::Message(new_msg(
        "d:p~q",
        "q",
        None,
        json!({"i": 20, "f": big}),
        &["p", "q"],
    )));
    ops.push(msg("d:p~q", "q", None, &["p", "q"]));
    let out = s.commit(ops).await.unwrap();
    let jsons: Vec<Bytes> = out.iter().map(|o| new(o).json.clone()).collect();

    // What a page of items from `from` must hold under the byte cut alone.
    let fits = |from: usize| {
        let mut bytes = 0;
        let mut n = 0;
        for j in &jsons[from..] {
            bytes += j.len();
            if bytes > PAGE_BYTES && n > 0 {
                break;
            }
            n += 1;
        }
        n
    };

    let mut from = 0;
    let mut pages = 0;
    while from < jsons.len() {
        let h = s.history("d:p~q", from as u64, 1000).await.unwrap();
        let n = fits(from);
        assert_eq!(h.items, jsons[from..from + n], "history page from {from}");
        assert_eq!(h.more, from + n < jsons.len());
        let i = s.inbox("q", from as u64, 1000).await.unwrap();
        assert_eq!(
            i.items,
            (from..from + n)
                .map(|k| (k as u64 + 1, jsons[k].clone()))
                .collect::<Vec<_>>()
        );
        assert_eq!(i.more, h.more);
        from += n;
        pages += 1;
    }
    assert!(pages >= 5, "the byte cut made {pages} pages");
    // The big message comes alone, and says more follow.
    let h = s.history("d:p~q", 20, 1000).await.unwrap();
    assert_eq!((h.items.len(), h.more), (1, true));

    // The limit cuts first when it is smaller.
    let h = s.history("d:p~q", 0, 2).await.unwrap();
    assert_eq!((h.items.len(), h.more), (2, true));
    let h = s.history("d:p~q", 21, 1).await.unwrap();
    assert_eq!((h.items.len(), h.more), (1, false));
    let i = s.inbox("p", 0, 2).await.unwrap();
    assert_eq!(i.items.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2]);
    assert!(i.more);
    let i = s.inbox("p", 21, 5).await.unwrap();
    assert_eq!(i.items.iter().map(|x| x.0).collect::<Vec<_>>(), [22]);
    assert!(!i.more);
    // Limit 0 returns nothing, and tells whether anything is there.
    let h = s.history("d:p~q", 0, 0).await.unwrap();
    assert_eq!((h.items.len(), h.more), (0, true));
    let h = s.history("d:p~q", 22, 0).await.unwrap();
    assert_eq!((h.items.len(), h.more), (0, false));
    // Past the end, and far past it.
    let h = s.history("d:p~q", 22, 10).await.unwrap();
    assert_eq!((h.items.len(), h.more), (0, false));
    let h = s.history("d:p~q", u64::MAX, 10).await.unwrap();
    assert_eq!((h.items.len(), h.more), (0, false));
    let i = s.inbox("p", u64::MAX - 1, 10).await.unwrap();
    assert_eq!((i.items.len(), i.more), (0, false));
}

/// A join gives the joiner the messages it does not have, in seq order; joining again
/// gives only what came since.
async fn join(b: Backend) {
    let s = &*b.store;
    s.commit(vec![
        msg("s:shop~c", "c", None, &["c"]),
        msg("d:a~x", "x", None, &["a", "x"]),
        msg("s:shop~c", "c", None, &["c"]),
    ])
    .await
    .unwrap();
    let out = s
        .commit(vec![
            msg("s:shop~c", "c", None, &["c"]),
            join_op("s:shop~c", "a"),
            msg("s:shop~c", "c", None, &["c", "a"]),
        ])
        .await
        .unwrap();
    let CommitOutcome::Joined(joined) = &out[1] else {
        panic!("not a join: {:?}", out[1])
    };
    let got: Vec<_> = joined
        .iter()
        .map(|c| (c.seq, c.recipients.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (1, vec![("a".into(), 2)]),
            (2, vec![("a".into(), 3)]),
            (3, vec![("a".into(), 4)])
        ]
    );
    assert_eq!(parse(&joined[2].json).seq, 3);
    assert_eq!(new(&out[0]).seq, 3);
    assert_eq!(new(&out[2]).recipients, [("c".into(), 4), ("a".into(), 5)]);
    let inbox = whole_inbox(s, "a").await;
    assert_eq!(
        refs(&inbox),
        [
            ("d:a~x".into(), 1),
            ("s:shop~c".into(), 1),
            ("s:shop~c".into(), 2),
            ("s:shop~c".into(), 3),
            ("s:shop~c".into(), 4)
        ]
    );
    // Joining again copies only what came since: here, nothing; then one message.
    let out = s.commit(vec![join_op("s:shop~c", "a")]).await.unwrap();
    assert!(matches!(&out[0], CommitOutcome::Joined(j) if j.is_empty()));
    let out = s
        .commit(vec![
            msg("s:shop~c", "c", None, &["c"]),
            join_op("s:shop~c", "a"),
        ])
        .await
        .unwrap();
    let CommitOutcome::Joined(joined) = &out[1] else {
        panic!("not a join")
    };
    assert_eq!(
        joined
            .iter()
            .map(|c| (c.seq, c.recipients.clone()))
            .collect::<Vec<_>>(),
        [(5, vec![("a".into(), 6)])]
    );
    // Another user joins from the start.
    let out = s.commit(vec![join_op("s:shop~c", "z")]).await.unwrap();
    let CommitOutcome::Joined(joined) = &out[0] else {
        panic!("not a join")
    };
    assert_eq!(
        joined.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        whole_inbox(s, "z")
            .await
            .iter()
            .map(|i| i.0)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

/// Reads of what was never written are empty, not errors.
async fn unknown(b: Backend) {
    let s = &*b.store;
    assert_eq!(s.last_seq("d:no~body").await.unwrap(), 0);
    let h = s.history("d:no~body", 0, 10).await.unwrap();
    assert!(h.items.is_empty() && !h.more);
    let i = s.inbox("nobody", 0, 10).await.unwrap();
    assert!(i.items.is_empty() && !i.more);
    assert_eq!(s.commit(Vec::new()).await.unwrap().len(), 0);
    assert_eq!(s.sweep().await.unwrap(), 0);
    assert!(s.take_relayed().is_empty());
}

/// Four writers commit interleaved messages to shared conversations and users at once.
/// Seqs and useqs stay gapless, every message lands in each member's inbox exactly once
/// and in seq order, an answered message is already there, and every inbox entry is
/// reported (as a recipient or relayed) by exactly one writer.
async fn concurrency(b: Backend) {
    const WRITERS: usize = 4;
    const TASKS: usize = 2;
    const BATCHES: usize = 30;
    let convs: [(&str, &[&str]); 4] = [
        ("g:room", &["u0", "u1", "u2", "u3"]),
        ("d:u0~u1", &["u0", "u1"]),
        ("d:u1~u2", &["u1", "u2"]),
        ("g:trio", &["u0", "u2", "u3"]),
    ];
    let mut stores: Vec<Arc<RedisStore>> = Vec::new();
    for _ in 0..WRITERS {
        stores.push(Arc::new(b.another().await));
    }
    let mut tasks = Vec::new();
    for (w, store) in stores.iter().enumerate() {
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut news: Vec<Committed> = Vec::new();
                let mut dups = 0;
                for i in 0..BATCHES {
                    let n = 1 + (w + t + i) % 3;
                    let mut ops = Vec::new();
                    for k in 0..n {
                        let (conv, members) = convs[(w + 2 * t + i + k) % convs.len()];
                        let from = members[(i + k) % members.len()];
                        let cid = format!("w{w}t{t}b{i}k{k}");
                        ops.push(msg(conv, from, Some(&cid), members));
                    }
                    if i % 7 == 3 {
                        // A resend of the batch before's first message.
                        let (conv, members) = convs[(w + 2 * t + i - 1) % convs.len()];
                        let from = members[(i - 1) % members.len()];
                        ops.push(msg(
                            conv,
                            from,
                            Some(&format!("w{w}t{t}b{}k0", i - 1)),
                            members,
                        ));
                    }
                    let out = store.commit(ops).await.expect("commit");
                    for o in out {
                        match o {
                            CommitOutcome::New(c) => {
                                if i % 4 == 0 {
                                    // Answered, so already in every member's inbox.
                                    let m = parse(&c.json);
                                    let members =
                                        convs.iter().find(|(cv, _)| *cv == m.conv).unwrap().1;
                                    for uid in members {
                                        let inbox = whole_inbox(&*store, uid).await;
                                        assert!(
                                            inbox.iter().any(|(_, j)| *j == c.json),
                                            "{}#{} answered but not in {uid}'s inbox",
                                            m.conv,
                                            m.seq
                                        );
                                    }
                                }
                                news.push(c);
                            }
                            CommitOutcome::Duplicate(_) => dups += 1,
                            CommitOutcome::Joined(_) => unreachable!(),
                        }
                    }
                }
                (news, dups)
            }));
        }
    }
    let mut news = Vec::new();
    let mut dups = 0;
    for t in tasks {
        let (n, d) = t.await.expect("writer task");
        news.extend(n);
        dups += d;
    }
    assert!(dups > 0);
    let s = &*b.store;

    // Histories: gapless, holding exactly the answered messages.
    let mut by_conv: BTreeMap<String, Vec<&Committed>> = BTreeMap::new();
    for c in &news {
        by_conv.entry(c.conv.clone()).or_default().push(c);
    }
    for (conv, members) in convs {
        let h = whole_history(s, conv).await;
        assert_eq!(
            h.iter().map(|j| parse(j).seq).collect::<Vec<_>>(),
            (1..=h.len() as u64).collect::<Vec<_>>(),
            "seqs of {conv}"
        );
        let mut answered = by_conv.remove(conv).unwrap_or_default();
        answered.sort_by_key(|c| c.seq);
        assert_eq!(
            answered.iter().map(|c| c.json.clone()).collect::<Vec<_>>(),
            h,
            "history of {conv} is what was answered"
        );
        let _ = members;
    }

    // Inboxes: gapless useqs, each conversation of the user complete and in order.
    let mut entries: HashMap<(String, u64), Bytes> = HashMap::new();
    for uid in ["u0", "u1", "u2", "u3"] {
        let inbox = whole_inbox(s, uid).await;
        assert_eq!(
            inbox.iter().map(|i| i.0).collect::<Vec<_>>(),
            (1..=inbox.len() as u64).collect::<Vec<_>>(),
            "useqs of {uid}"
        );
        let mut per_conv: HashMap<String, Vec<u64>> = HashMap::new();
        for (conv, seq) in refs(&inbox) {
            per_conv.entry(conv).or_default().push(seq);
        }
        for (conv, members) in convs {
            let got = per_conv.remove(conv).unwrap_or_default();
            let want: Vec<u64> = if members.contains(&uid) {
                (1..=s.last_seq(conv).await.unwrap()).collect()
            } else {
                Vec::new()
            };
            assert_eq!(got, want, "{conv} in {uid}'s inbox");
        }
        assert!(per_conv.is_empty());
        for (useq, json) in inbox {
            entries.insert((uid.to_owned(), useq), json);
        }
    }

    // Pushes: every inbox entry reported by exactly one writer, with its JSON.
    let mut reported: HashSet<(String, u64)> = HashSet::new();
    let relayed: Vec<Committed> = stores.iter().flat_map(|s| s.take_relayed()).collect();
    assert!(!relayed.is_empty(), "writers drained each other's messages");
    for c in news.iter().chain(&relayed) {
        for r in &c.recipients {
            assert!(reported.insert(r.clone()), "{r:?} reported twice");
            assert_eq!(entries.get(r), Some(&c.json), "{r:?}");
        }
    }
    assert_eq!(reported.len(), entries.len(), "every entry reported");
}

/// Polls `sweep` on `store` until it has finished `n` entries in all, under a deadline
/// (the sweeper leaves fan-outs younger than its age threshold to their writers).
async fn sweep_until(store: &RedisStore, n: usize) -> usize {
    let end = Instant::now() + Duration::from_secs(15);
    let mut done = 0;
    loop {
        done += store.sweep().await.expect("sweep");
        if done >= n {
            return done;
        }
        assert!(
            Instant::now() < end,
            "the sweeper finished {done} of {n} fan-outs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A writer that died after storing (before any inbox entry): the sweeper of another
/// instance finishes its fan-out and relays it; and a later commit to the conversation
/// finishes it too.
async fn crash_recovery(b: Backend) {
    let dead = b.another().await;
    let sweeper = b.another().await;
    let out = dead
        .commit_unfanned(vec![
            msg("g:crash", "a", Some("k1"), &["a", "b", "c"]),
            msg("g:crash", "b", None, &["a", "b", "c"]),
            msg("d:a~b", "a", None, &["a", "b"]),
        ])
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|o| new(o).seq).collect::<Vec<_>>(),
        [1, 2, 1]
    );
    assert!(out.iter().all(|o| new(o).recipients.is_empty()));
    let s = &*b.store;
    assert_eq!(s.last_seq("g:crash").await.unwrap(), 2);
    assert!(whole_inbox(s, "a").await.is_empty());
    // The stored message is a duplicate target already.
    let resend = sweeper
        .commit(vec![msg("g:crash", "a", Some("k1"), &["a", "b", "c"])])
        .await
        .unwrap();
    assert!(matches!(&resend[0], CommitOutcome::Duplicate(j) if *j == new(&out[0]).json));

    assert_eq!(sweep_until(&sweeper, 3).await, 3);
    let relayed = sweeper.take_relayed();
    let mut got: Vec<(String, u64, Vec<String>)> = relayed
        .iter()
        .map(|c| {
            let uids = c.recipients.iter().map(|r| r.0.clone()).collect();
            (c.conv.clone(), c.seq, uids)
        })
        .collect();
    got.sort();
    let uids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            ("d:a~b".into(), 1, uids(&["a", "b"])),
            ("g:crash".into(), 1, uids(&["a", "b", "c"])),
            ("g:crash".into(), 2, uids(&["a", "b", "c"])),
        ]
    );
    for uid in ["a", "b", "c"] {
        let inbox = whole_inbox(s, uid).await;
        // Each relayed pair is the inbox entry it names.
        for c in &relayed {
            for (who, useq) in c.recipients.iter().filter(|r| r.0 == uid) {
                assert_eq!(inbox[*useq as usize - 1].1, c.json, "{who}#{useq}");
            }
        }
        let crash: Vec<u64> = refs(&inbox)
            .into_iter()
            .filter(|(conv, _)| conv == "g:crash")
            .map(|(_, seq)| seq)
            .collect();
        assert_eq!(crash, [1, 2], "g:crash in {uid}'s inbox");
        assert_eq!(inbox.len(), if uid == "c" { 2 } else { 3 });
    }
    assert_eq!(sweeper.sweep().await.unwrap(), 0, "nothing left");

    // Died again; this time the next commit to the conversation finishes it.
    dead.commit_unfanned(vec![msg("g:crash", "c", None, &["a", "b", "c"])])
        .await
        .unwrap();
    let other = b.another().await;
    let out = other
        .commit(vec![msg("g:crash", "a", None, &["a", "b", "c"])])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).seq, 4);
    assert_eq!(
        new(&out[0]).recipients,
        [("a".into(), 5), ("b".into(), 5), ("c".into(), 4)]
    );
    let relayed = other.take_relayed();
    assert_eq!(relayed.len(), 1);
    assert_eq!((relayed[0].seq, relayed[0].recipients.len()), (3, 3));
    assert_eq!(
        whole_inbox(s, "c")
            .await
            .iter()
            .map(|i| i.0)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(other.take_relayed().is_empty());
}

/// A writer that died between claiming a cid and storing its message: a resend waits
/// for it until the claim is half a second old, then takes the cid over and is stored as new; later resends are its
/// duplicates, the dead writer's message included.
async fn takeover(b: Backend) {
    let dead = b.another().await;
    let ghost = new_msg("d:a~b", "a", Some("lost"), json!("first"), &["a", "b"]);
    let claimed = Instant::now();
    dead.commit_claims_only(vec![Op::Message(ghost.clone())])
        .await
        .unwrap();
    let s = &*b.store;
    let out = s
        .commit(vec![msg("d:a~b", "a", Some("lost"), &["a", "b"])])
        .await
        .unwrap();
    // The claim's age comes from its key's TTL, in whole milliseconds.
    assert!(
        claimed.elapsed() >= Duration::from_millis(490),
        "it waited for the claimant until its claim was half a second old"
    );
    let taken = new(&out[0]).clone();
    assert_eq!(taken.seq, 1);
    assert_eq!(taken.recipients, [("a".into(), 1), ("b".into(), 1)]);
    let out = s
        .commit(vec![msg("d:a~b", "a", Some("lost"), &["a", "b"])])
        .await
        .unwrap();
    assert!(matches!(&out[0], CommitOutcome::Duplicate(j) if *j == taken.json));
    // The dead writer's message, retried as it was, is a duplicate too.
    let out = dead.commit(vec![Op::Message(ghost)]).await.unwrap();
    assert!(matches!(&out[0], CommitOutcome::Duplicate(j) if *j == taken.json));
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 1);
}

/// A commit answers once its inbox entries are written; popping its pending fan-out and
/// freeing the lease follow on their own. No sweeper runs here, so nothing but that
/// last step empties the pending list.
async fn finish_behind_the_answer(b: Backend) {
    let s = b.another().await;
    let out = s
        .commit(vec![msg("g:soon", "a", None, &["a", "b"])])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).recipients, [("a".into(), 1), ("b".into(), 1)]);
    let end = Instant::now() + Duration::from_secs(5);
    while s.pending_fanouts("g:soon").await.unwrap() > 0 {
        assert!(Instant::now() < end, "the fan-out is still pending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next writer finds the conversation finished: it drains only its own message.
    let next = b.another().await;
    let out = next
        .commit(vec![msg("g:soon", "b", None, &["a", "b"])])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).recipients, [("a".into(), 2), ("b".into(), 2)]);
    assert!(next.take_relayed().is_empty());
    assert!(s.take_relayed().is_empty());
}

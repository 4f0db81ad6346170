//! Criterion benches of imd's hot paths: frame decoding and encoding, and durable
//! commits on the embedded store, alone and through the group-commit task.
//!
//! `cargo bench -p imd --bench hot_paths`; figures go to docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imd::business::blacklist::Blacklist;
use imd::business::limits::{Limits, Rate};
use imd::business::messaging::Deps;
use imd::business::words::{WordFilter, Words, WordsPolicy};
use imd::business::{Deliver, Identity, Messaging};
use imd::store::{Committed, EmbeddedOptions, EmbeddedStore, MessageStore, NewMessage, Op};
use serde_json::json;
use shared::protocol::{ClientFrame, SendRequest};
use tokio_util::sync::CancellationToken;

fn codec(c: &mut Criterion) {
    let frame = r#"{"type":"send","cid":"c-12345","to":"bob","body":{"text":"hello, is this in stock?","sku":"A-1"}}"#;
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_send_frame", |b| {
        b.iter(|| serde_json::from_str::<ClientFrame>(std::hint::black_box(frame)).unwrap())
    });
    let msg = Bytes::from(
        r#"{"id":"01a2","conv":"d:alice~bob","seq":42,"from":"alice","body":{"text":"hello"},"ts":1795778030410}"#,
    );
    g.bench_function("encode_push_frame", |b| {
        b.iter(|| imd::wire::push_frame(std::hint::black_box(7), &msg))
    });
    g.finish();
}

fn new_message(i: u64) -> NewMessage {
    let from = format!("u{}", i % 1000);
    let to = format!("u{}", (i + 1) % 1000);
    NewMessage {
        id: format!("m{i}"),
        conv: shared::ids::direct_conv(&from, &to),
        members: vec![from.clone(), to],
        from,
        cid: Some(format!("c{i}")),
        content: imd::store::Content::Body(json!({"text": "hello, is this in stock?"})),
        ts: 1,
    }
}

fn store_commit(c: &mut Criterion) {
    // `--store-log false --store-quick-repair false`: each commit writes the tables in
    // a one-phase transaction, without the allocator state.
    let one_phase = EmbeddedOptions {
        quick_repair: false,
        ..direct()
    };
    commit_group(c, "store_commit", one_phase);
    // `--store-log false`: two-phase commits that save the allocator state.
    commit_group(c, "store_commit_quick_repair", direct());
    // The default (`--store-log`): one log append per commit, the tables written behind
    // it. Run long enough, the indexer's pace shows too: a commit waits when 16 MiB of
    // records wait for it.
    commit_group(c, "store_commit_log", log());
}

/// The options of `--store-log` (the default).
fn log() -> EmbeddedOptions {
    EmbeddedOptions::default()
}

/// The options of `--store-log false`: each commit writes the tables.
fn direct() -> EmbeddedOptions {
    EmbeddedOptions {
        log: false,
        ..Default::default()
    }
}

/// One message to a 500-member group: committed directly; through the log, the
/// commit alone with the indexer idle (`log_commit`: what its sender and members wait
/// for) and the commit with its indexing (`log_indexed`: what a read after it waits
/// for, and the sustained rate).
fn group_500(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let members: Vec<String> = (0..500).map(|i| format!("m{i}")).collect();
    let message = |i: u64| NewMessage {
        id: format!("g{i}"),
        conv: "g:five-hundred".into(),
        from: members[0].clone(),
        cid: None,
        content: imd::store::Content::Body(json!({"text": "sale starts at noon"})),
        ts: 1,
        members: members.clone(),
    };
    let mut g = c.benchmark_group("group_500");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for (name, options) in [
        ("direct", direct()),
        ("log_commit", log()),
        ("log_indexed", log()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        let mut next = 0u64;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    let started = Instant::now();
                    rt.block_on(store.commit(vec![Op::Message(message(next))]))
                        .unwrap();
                    if name == "log_indexed" {
                        // Reads wait for the indexer to write what was committed.
                        rt.block_on(store.last_seq("g:five-hundred")).unwrap();
                    }
                    total += started.elapsed();
                    if name == "log_commit" {
                        rt.block_on(store.last_seq("g:five-hundred")).unwrap();
                    }
                }
                total
            })
        });
    }
    g.finish();
}

/// Durable commits of 1, 16 and 256 direct messages on a store opened with `options`.
fn commit_group(c: &mut Criterion, name: &str, options: EmbeddedOptions) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
    let mut g = c.benchmark_group(name);
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut next = 0u64;
    for batch in [1u64, 16, 256] {
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let msgs = (next..next + batch)
                    .map(|i| Op::Message(new_message(i)))
                    .collect();
                next += batch;
                rt.block_on(store.commit(msgs)).unwrap()
            })
        });
    }
    g.finish();
}

struct Nobody;
#[async_trait::async_trait]
impl imd::business::Presence for Nobody {
    async fn online(&self, _: &str) -> bool {
        false
    }
}

struct Discard;
impl Deliver for Discard {
    fn deliver(&self, _: &Committed) {}
    fn notify(&self, _: Vec<String>, _: String) {}
}

/// Messages per second through the group-commit task with many concurrent senders,
/// each waiting for its commit: what HTTP senders see.
fn group_commit(c: &mut Criterion) {
    group_commit_with(c, "group_commit", direct());
    group_commit_with(c, "group_commit_log", log());
}

/// [`group_commit`] on a store opened with `options`.
fn group_commit_with(c: &mut Criterion, name: &str, options: EmbeddedOptions) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open_with(dir.path(), options).unwrap());
    let off = Rate {
        per_second: 0,
        burst: 0,
    };
    let deps = Deps {
        store: store.clone(),
        dir: store.clone(),
        presence: Arc::new(Nobody),
        deliver: Arc::new(Discard),
        blacklist: Arc::new(Blacklist::new()),
        words: Arc::new(Words::load(None, WordsPolicy::Mask).unwrap()),
        limits: Arc::new(Limits::new(off, off)),
        recall_window: Duration::from_secs(120),
        before_send: None,
    };
    let (messaging, _task) =
        rt.block_on(async { Messaging::start(deps, 1024, 1, CancellationToken::new()) });
    let mut g = c.benchmark_group(name);
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for senders in [1u64, 64, 512] {
        let per_sender = 2000 / senders.min(200) + 1;
        g.throughput(Throughput::Elements(senders * per_sender));
        g.bench_with_input(
            BenchmarkId::new("senders", senders),
            &senders,
            |b, &senders| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        rt.block_on(async {
                            let tasks: Vec<_> = (0..senders)
                                .map(|s| {
                                    let m = messaging.clone();
                                    tokio::spawn(async move {
                                        let who = Identity {
                                            uid: format!("s{s}"),
                                            device: "d".into(),
                                            platform: shared::token::Platform::Other,
                                            roles: vec![],
                                            ip: None,
                                        };
                                        for _ in 0..per_sender {
                                            let req = SendRequest {
                                                cid: None,
                                                to: Some(format!("r{s}")),
                                                conv: None,
                                                shop: None,
                                                body: json!({"text": "hello"}),
                                            };
                                            m.send_and_wait(&who, req).await.unwrap();
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                        });
                        total += started.elapsed();
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

/// The sensitive-word filter over a typical chat body, with a list of 10,000 words
/// (CJK and ASCII), in both policies; throughput in bytes of text.
fn words(c: &mut Criterion) {
    let list: Vec<String> = (0..10_000)
        .map(|i| {
            if i % 2 == 0 {
                format!("badword{i}")
            } else {
                format!("敏感词{i}")
            }
        })
        .collect();
    let text = "您好，请问这件蓝色的外套还有货吗？Is the BLUE jacket in stock in size M? 谢谢！";
    let mut g = c.benchmark_group("words");
    g.throughput(Throughput::Bytes(text.len() as u64));
    for policy in [WordsPolicy::Mask, WordsPolicy::Reject] {
        let filter = WordFilter::new(&list, policy).unwrap();
        g.bench_function(format!("{policy:?}").to_lowercase(), |b| {
            b.iter(|| {
                let mut body = json!({ "text": text });
                filter.apply(&mut body).unwrap()
            })
        });
    }
    let filter = WordFilter::new(&list, WordsPolicy::Mask).unwrap();
    let dirty = "this has BADWORD42 and 敏感词7 inside";
    g.throughput(Throughput::Bytes(dirty.len() as u64));
    g.bench_function("mask_hit", |b| {
        b.iter(|| {
            let mut body = json!({ "text": dirty });
            filter.apply(&mut body).unwrap()
        })
    });
    g.finish();
}

/// What the blacklist costs each send: a uid and an ip check against 10,000 uids,
/// 10,000 addresses and 100 CIDR ranges.
fn blacklist(c: &mut Criterion) {
    use shared::admin::{BlacklistEntry, BlacklistKind};
    let entry = |kind, value: String| BlacklistEntry {
        kind,
        value,
        reason: None,
        expires_at: None,
    };
    let mut entries: Vec<_> = (0..10_000)
        .map(|i| entry(BlacklistKind::Uid, format!("u{i}")))
        .collect();
    entries.extend(
        (0..10_000).map(|i| entry(BlacklistKind::Ip, format!("10.{}.{}.1", i / 250, i % 250))),
    );
    entries.extend((0..100).map(|i| entry(BlacklistKind::Ip, format!("172.{i}.0.0/16"))));
    let bl = Blacklist::new();
    bl.replace_all(&entries);
    let ip: std::net::IpAddr = "192.168.1.1".parse().unwrap();
    c.bench_function("blacklist/check_per_message", |b| {
        b.iter(|| bl.uid_blocked(std::hint::black_box("alice"), 1) || bl.ip_blocked(ip, 1))
    });
}

criterion_group!(
    benches,
    codec,
    words,
    blacklist,
    store_commit,
    group_500,
    group_commit
);
criterion_main!(benches);

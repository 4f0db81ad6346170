//! Criterion benches of imd's hot paths: frame decoding and encoding, and durable
//! commits on the embedded store, alone and through the group-commit task.
//!
//! `cargo bench -p imd --bench hot_paths`; figures go to docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imd::business::{Deliver, Identity, Messaging};
use imd::store::{Committed, EmbeddedStore, MessageStore, NewMessage};
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
        body: json!({"text": "hello, is this in stock?"}),
        ts: 1,
    }
}

fn store_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("store_commit");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut next = 0u64;
    for batch in [1u64, 16, 256] {
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let msgs = (next..next + batch).map(new_message).collect();
                next += batch;
                rt.block_on(store.commit(msgs)).unwrap()
            })
        });
    }
    g.finish();
}

struct Discard;
impl Deliver for Discard {
    fn deliver(&self, _: &Committed) {}
}

/// Messages per second through the group-commit task with many concurrent senders,
/// each waiting for its commit: what HTTP senders see.
fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn MessageStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let (messaging, _task) = rt.block_on(async {
        Messaging::start(store, Arc::new(Discard), 1024, CancellationToken::new())
    });
    let mut g = c.benchmark_group("group_commit");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for senders in [1u64, 64, 512] {
        let per_sender = 2000 / senders.min(200) + 1;
        g.throughput(Throughput::Elements(senders * per_sender));
        g.bench_with_input(BenchmarkId::new("senders", senders), &senders, |b, &senders| {
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
        });
    }
    g.finish();
}

criterion_group!(benches, codec, store_commit, group_commit);
criterion_main!(benches);

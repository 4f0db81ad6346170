//! Criterion bench of the conversation list: one page of the list of a user with
//! 10,000 conversations, on the embedded store and on a standalone Redis (started by
//! the bench, on loopback), from the newest and from the middle of the list.
//!
//! `cargo bench -p imd --bench conversations`; figures go to docs/benchmarks.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use imd::store::{Content, ConvCursor, EmbeddedStore, MessageStore, NewMessage, Op, RedisStore};
use serde_json::json;

/// The user's conversations.
const CONVS: u64 = 10_000;

/// `me` talks with `CONVS` peers: each conversation has a message from the peer and,
/// for every other one, a reply from `me` (so reads, unread counts and peer reads are
/// all in play).
async fn fill(store: &dyn MessageStore) {
    let mut ops = Vec::new();
    for i in 0..CONVS {
        let peer = format!("p{i:05}");
        let conv = shared::ids::direct_conv("me", &peer);
        let members = vec!["me".to_owned(), peer.clone()];
        let mut say = |from: &str, text: &str| {
            ops.push(Op::Message(NewMessage {
                id: uuid::Uuid::now_v7().to_string(),
                conv: conv.clone(),
                from: from.to_owned(),
                cid: None,
                content: Content::Body(json!({"text": text})),
                ts: 1_795_000_000_000 + i as i64,
                members: members.clone(),
            }))
        };
        say(&peer, "is this in stock?");
        if i % 2 == 0 {
            say("me", "yes, two left");
        }
        if ops.len() >= 512 {
            store.commit(std::mem::take(&mut ops)).await.unwrap();
        }
    }
    store.commit(ops).await.unwrap();
}

fn list(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let redis = testkit::Redis::standalone();
    let embedded: Arc<dyn MessageStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let on_redis: Arc<dyn MessageStore> =
        Arc::new(rt.block_on(RedisStore::connect(&redis.url())).unwrap());
    let mut g = c.benchmark_group("conversation_list_10k");
    g.sample_size(50).measurement_time(Duration::from_secs(5));
    for (name, store) in [("embedded", embedded), ("redis", on_redis)] {
        rt.block_on(fill(&*store));
        let middle = ConvCursor {
            ts: 1_795_000_000_000 + (CONVS / 2) as i64,
            conv: shared::ids::direct_conv("me", &format!("p{:05}", CONVS / 2)),
        };
        for limit in [50u32, 200] {
            let page = rt.block_on(store.conversations("me", None, limit)).unwrap();
            assert_eq!(page.items.len(), limit as usize);
            assert!(page.more);
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/newest"), limit),
                &limit,
                |b, &limit| b.iter(|| rt.block_on(store.conversations("me", None, limit)).unwrap()),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/middle"), limit),
                &limit,
                |b, &limit| {
                    b.iter(|| {
                        rt.block_on(store.conversations("me", Some(&middle), limit))
                            .unwrap()
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, list);
criterion_main!(benches);

//! The webhook outbox (`OutboxStore`) on every backend: commits mark their
//! conversations and start cursors just before the first message written with the
//! outbox on; one lease holder at a time moves a cursor; a conversation is unmarked
//! only when delivered to its end and not marked again since it was listed; the parked
//! list keeps the newest up to its cap.

use std::sync::Arc;
use std::time::Duration;

use imd::hooks::webhook::WebhookStore;
use imd::store::{EmbeddedOptions, EmbeddedStore, OutboxCursor, ParkedEvent, RedisStore};
use testkit::Redis;

use super::{msg, new};

/// Writes with the outbox off, then with it on, over the same data; returns the store
/// with the outbox on and what keeps its database alive.
async fn before_and_after(
    backend: &str,
) -> (
    Arc<dyn WebhookStore>,
    Option<Redis>,
    Option<tempfile::TempDir>,
) {
    let first = |conv: &str| {
        vec![
            msg(conv, "a", None, &["a", "b"]),
            msg(conv, "a", None, &["a", "b"]),
        ]
    };
    match backend {
        "embedded" => {
            let dir = tempfile::tempdir().unwrap();
            {
                let off = EmbeddedStore::open(dir.path()).unwrap();
                imd::store::MessageStore::commit(&off, first("d:a~b"))
                    .await
                    .unwrap();
            }
            let options = EmbeddedOptions {
                outbox: true,
                ..Default::default()
            };
            let on = EmbeddedStore::open_with(dir.path(), options).unwrap();
            (Arc::new(on), None, Some(dir))
        }
        _ => {
            let redis = tokio::task::spawn_blocking(if backend == "cluster" {
                Redis::cluster
            } else {
                Redis::standalone
            })
            .await
            .unwrap();
            let off = RedisStore::connect(&redis.url()).await.unwrap();
            imd::store::MessageStore::commit(&off, first("d:a~b"))
                .await
                .unwrap();
            let on = RedisStore::connect(&redis.url())
                .await
                .unwrap()
                .with_outbox();
            (Arc::new(on), Some(redis), None)
        }
    }
}

/// The mark of `conv` as the scan lists it; it must be listed.
async fn listed(store: &dyn WebhookStore, conv: &str) -> imd::store::OutboxMark {
    let due = store.outbox_due(0, 100).await.unwrap();
    due.into_iter()
        .find(|m| m.conv == conv)
        .unwrap_or_else(|| panic!("{conv} listed"))
}

async fn outbox_contract(backend: &str) {
    let (store, _redis, _dir) = before_and_after(backend).await;
    assert_eq!(
        store.outbox_marked().await.unwrap(),
        0,
        "no mark before the outbox"
    );
    let out = store
        .commit(vec![
            msg("d:a~b", "b", None, &["a", "b"]),
            msg("g:x", "a", None, &["a"]),
        ])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).seq, 3);
    assert_eq!(store.outbox_marked().await.unwrap(), 2);

    // The lease: one holder; its cursor starts before the first message marked.
    let c = store.outbox_lease("d:a~b", "t1", 5000).await.unwrap();
    assert_eq!(
        c,
        Some(OutboxCursor {
            seq: 2,
            failing_since: 0
        }),
        "old history is not sent"
    );
    assert_eq!(store.outbox_lease("d:a~b", "t2", 5000).await.unwrap(), None);
    let moved = OutboxCursor {
        seq: 3,
        failing_since: 0,
    };
    assert!(
        !store
            .outbox_advance("d:a~b", "t2", moved, 5000)
            .await
            .unwrap()
    );
    assert!(
        store
            .outbox_advance("d:a~b", "t1", moved, 5000)
            .await
            .unwrap()
    );
    store.outbox_release("d:a~b", "t1").await.unwrap();
    assert_eq!(
        store.outbox_lease("d:a~b", "t2", 5000).await.unwrap(),
        Some(moved)
    );
    store.outbox_release("d:a~b", "t2").await.unwrap();

    // Listed, then written to again: that mark may not go.
    let mark = listed(&*store, "d:a~b").await;
    tokio::time::sleep(Duration::from_millis(3)).await; // a later mark time on Redis's clock
    store
        .commit(vec![msg("d:a~b", "a", None, &["a", "b"])])
        .await
        .unwrap();
    assert!(
        !store.outbox_unmark(&mark, 3).await.unwrap(),
        "a newer commit keeps the mark"
    );
    // Delivered to the end and listed again: it goes.
    assert!(
        store
            .outbox_lease("d:a~b", "t1", 5000)
            .await
            .unwrap()
            .is_some()
    );
    let end = OutboxCursor {
        seq: 4,
        failing_since: 0,
    };
    assert!(
        store
            .outbox_advance("d:a~b", "t1", end, 5000)
            .await
            .unwrap()
    );
    store.outbox_release("d:a~b", "t1").await.unwrap();
    let mark = listed(&*store, "d:a~b").await;
    assert!(store.outbox_unmark(&mark, 4).await.unwrap());
    assert_eq!(
        store.outbox_marked().await.unwrap(),
        1,
        "g:x is still marked"
    );
    let c = store.outbox_lease("d:a~b", "t1", 5000).await.unwrap();
    assert_eq!(
        c.map(|c| c.seq),
        Some(4),
        "the cursor stays after the unmark"
    );
    store.outbox_release("d:a~b", "t1").await.unwrap();
    assert!(
        store.outbox_due(60_000, 100).await.unwrap().is_empty(),
        "nothing marked a minute ago"
    );

    // Parked events: the newest up to the cap, in order; unpark removes one.
    let parked = |seq| ParkedEvent {
        event: format!("m{seq}"),
        conv: "g:x".into(),
        seq,
        ts: 1,
        parked_ms: 2,
        reason: "HTTP 500".into(),
    };
    assert_eq!(store.park(&parked(1), 2).await.unwrap().1, 0);
    assert_eq!(store.park(&parked(2), 2).await.unwrap().1, 0);
    let (third, dropped) = store.park(&parked(3), 2).await.unwrap();
    assert_eq!(dropped, 1, "the oldest went at the cap");
    let list = store.parked(0, 10).await.unwrap();
    let seqs: Vec<u64> = list.iter().map(|(_, p)| p.seq).collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(list[1], (third, parked(3)));
    assert_eq!(
        store.parked(list[0].0, 10).await.unwrap().len(),
        1,
        "after the first"
    );
    assert!(store.unpark(third).await.unwrap());
    assert!(!store.unpark(third).await.unwrap());
    assert_eq!(store.parked_count().await.unwrap(), 1);
}

#[tokio::test]
async fn contract_outbox_embedded() {
    outbox_contract("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_outbox_standalone() {
    outbox_contract("standalone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_outbox_cluster() {
    outbox_contract("cluster").await;
}

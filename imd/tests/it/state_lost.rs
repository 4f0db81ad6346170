//! Redis losing what it had acknowledged, under a running imd (`FLUSHALL`: what a
//! restart without persistence leaves). The `useq`s given before are given again, so a
//! device that deduplicates by `useq` would drop the new messages as ones it has. imd
//! must move to a new store generation, close the devices' connections with `kick`
//! `state_lost` before anything of the new state reaches them, and answer their next
//! `sync` with the new generation, from which a device following `docs/protocol.md`
//! starts over: no message it acks after the loss is one it dropped.

use std::collections::BTreeMap;

use serde_json::json;
use shared::protocol::{Message, ServerFrame};
use testkit::Redis;

use crate::common::{Imd, WsClient, claims, metric, mint};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

fn tok(uid: &str) -> String {
    mint(SECRET, &claims(uid, "d", 3600))
}

/// A device as `docs/protocol.md` asks it to behave: it keeps the generation and the
/// last `useq` it took, takes a push only above that `useq`, and starts over when a
/// `sync` answers with another generation.
#[derive(Default)]
struct Device {
    generation: String,
    last: u64,
    /// What it took, by `useq`, in its generation.
    took: BTreeMap<u64, Message>,
    /// Messages it dropped as duplicates (acked and thrown away).
    dropped: Vec<Message>,
}

impl Device {
    fn push(&mut self, useq: u64, msg: Message) {
        if useq <= self.last {
            self.dropped.push(msg);
        } else {
            self.last = useq;
            self.took.insert(useq, msg);
        }
    }

    /// Syncs over HTTP from where it stands, starting over on a new generation.
    async fn sync(&mut self, imd: &Imd, token: &str) {
        let http = imd.http();
        let mut page = http.sync(token, self.last, None).await;
        if page.generation != self.generation {
            self.generation = page.generation.clone();
            self.last = 0;
            self.took.clear();
            page = http.sync(token, 0, None).await;
        }
        assert!(!page.more);
        for item in page.msgs {
            self.push(item.useq, item.msg);
        }
    }
}

/// alice writes bob three messages; Redis loses everything; bob's connection is
/// closed with `state_lost` and no push of the new state reaches it first; alice's
/// next messages reach bob's device, which starts over in the new generation.
#[tokio::test]
async fn a_redis_that_lost_everything_moves_devices_to_a_new_generation() {
    let redis = Redis::standalone();
    let url = redis.url();
    let imd = Imd::start(&[
        "--redis",
        &url,
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
    ]);
    let http = imd.http();
    let (alice, bob_token) = (tok("alice"), tok("bob"));
    let mut device = Device::default();
    device.sync(&imd, &bob_token).await;
    let before = device.generation.clone();
    assert!(!before.is_empty(), "a sync answer carries the generation");

    let mut bob: WsClient = imd.ws(&bob_token).await;
    for i in 1..=3 {
        let sent = http
            .send_to(&alice, "bob", None, json!(format!("before {i}")))
            .await;
        let (useq, msg) = bob.expect_push().await;
        bob.ack(&[useq]).await;
        assert_eq!(msg.id, sent.id);
        device.push(useq, msg);
    }
    assert_eq!(device.last, 3);

    redis.flush_all();
    // The node notices (its once-a-second check, or its next commit) and closes bob's
    // connection before pushing anything of the new state to it.
    let after_first = http.send_to(&alice, "bob", None, json!("after 1")).await;
    let reason = loop {
        match bob
            .next_frame_or_close(std::time::Duration::from_secs(10))
            .await
        {
            Ok(ServerFrame::Kick { reason }) => break reason,
            Ok(ServerFrame::Msg { useq, msg }) => {
                // Only pushes of the old state may come before the kick.
                assert_ne!(
                    msg.id, after_first.id,
                    "a push of the new state at useq {useq}"
                );
            }
            Ok(_) => {}
            Err(code) => panic!("closed without a kick ({code:?})"),
        }
    };
    assert_eq!(reason, "state_lost");

    // The device reconnects and syncs: a new generation, newer than the old one.
    device.sync(&imd, &bob_token).await;
    assert_ne!(device.generation, before);
    assert!(
        device
            .generation
            .split('-')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= before.split('-').next().unwrap().parse::<i64>().unwrap()
    );
    let mut bob = imd.ws(&bob_token).await;
    let after_second = http.send_to(&alice, "bob", None, json!("after 2")).await;
    let (useq, msg) = bob.expect_push().await;
    bob.ack(&[useq]).await;
    assert_eq!(msg.id, after_second.id);
    device.push(useq, msg);

    // The messages after the loss reuse useqs 1 and 2, and the device took both.
    let took: Vec<&str> = device.took.values().map(|m| m.id.as_str()).collect();
    assert_eq!(took, [after_first.id.as_str(), after_second.id.as_str()]);
    assert!(device.dropped.is_empty(), "dropped: {:?}", device.dropped);
    let text = http.metrics().await;
    assert!(metric(&text, "imd_state_lost_total").unwrap_or(0.0) >= 1.0);
}

/// The store's side: the embedded store keeps one generation for its data dir; on
/// Redis, a lost generation key or a process's write clock gone back makes a new one,
/// newer, which the other processes adopt.
#[tokio::test]
async fn store_generations() {
    use imd::store::{EmbeddedStore, MessageStore, RedisStore};

    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedStore::open(dir.path()).unwrap().generation();
    let again = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(again.generation(), first);
    assert_eq!(again.verify_generation().await.unwrap(), first);

    let redis = Redis::standalone();
    let a = RedisStore::connect(&redis.url()).await.unwrap();
    let b = RedisStore::connect(&redis.url()).await.unwrap();
    let g1 = a.verify_generation().await.unwrap();
    assert_eq!(b.verify_generation().await.unwrap(), g1);
    assert_eq!(
        a.verify_generation().await.unwrap(),
        g1,
        "nothing lost: no change"
    );

    // Everything lost: whoever checks first makes a new one; the other adopts it.
    redis.flush_all();
    let g2 = b.verify_generation().await.unwrap();
    assert!(g2.newer_than(&g1), "{g2:?} after {g1:?}");
    assert_eq!(a.verify_generation().await.unwrap(), g2);
    assert_eq!(a.generation(), g2);

    // A read-only check (a sync's, the watch's) sees a loss of everything too.
    redis.flush_all();
    let g2b = a.read_generation().await.unwrap();
    assert!(g2b.newer_than(&g2));
    assert_eq!(b.verify_generation().await.unwrap(), g2b);
    assert_eq!(
        a.read_generation().await.unwrap(),
        g2b,
        "nothing lost: no change"
    );
    assert_eq!(
        a.verify_generation().await.unwrap(),
        g2b,
        "a's clock starts again"
    );
    let g2 = g2b;

    // Only a's last writes lost (its clock went back, the generation key stayed): a
    // sees it at its next check.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let clocks: Vec<String> = redis::cmd("KEYS")
        .arg("imd:{g}:clock:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(clocks.len(), 2, "one clock per process: {clocks:?}");
    let _: () = redis::cmd("DEL")
        .arg(&clocks)
        .query_async(&mut conn)
        .await
        .unwrap();
    let g3 = a.verify_generation().await.unwrap();
    assert!(g3.newer_than(&g2));
    assert_eq!(b.verify_generation().await.unwrap(), g3);
}

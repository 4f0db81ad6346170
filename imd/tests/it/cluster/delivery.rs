//! Delivery across nodes: a message reaches every device wherever it is connected,
//! sequences stay gapless when several gateways commit at once or one restarts, and one
//! device has one connection in the whole cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use shared::ids::direct_conv;

use super::{Cluster, expect_push_of, history, node, routes};
use crate::common::{FRAME_DEADLINE, Imd, wait_until};
use testkit::Redis;

/// Alice on one worker and Bob on the other reach each other both ways, over
/// WebSocket and over the gateway's HTTP API; a second device of Bob's on the other
/// worker gets the same pushes.
async fn cross_worker_delivery(redis: Redis) {
    let c = Cluster::start(redis).await;
    let mut alice = c.connect(&c.w1, "alice", "a1").await;
    let mut bob = c.connect(&c.w2, "bob", "b1").await;
    let mut bob_phone = c.connect(&c.w1, "bob", "b2").await;

    alice.send_to("bob", "c1", json!("hello from w1")).await;
    let sent = alice.expect_sent("c1").await;
    let (useq_b1, got) = expect_push_of(&mut bob, &sent.id).await;
    assert_eq!(got, sent, "the push is the committed message");
    let (useq_b2, _) = expect_push_of(&mut bob_phone, &sent.id).await;
    assert_eq!(useq_b1, useq_b2, "both devices read one inbox");
    expect_push_of(&mut alice, &sent.id).await;

    bob.send_to("alice", "c2", json!("hello from w2")).await;
    let reply = bob.expect_sent("c2").await;
    let (_, got) = expect_push_of(&mut alice, &reply.id).await;
    assert_eq!(got.seq, sent.seq + 1, "one conversation, seq in order");
    expect_push_of(&mut bob_phone, &reply.id).await;

    let carol = c.gateway.token("carol", "c1");
    let over_http = c
        .gateway
        .http()
        .send_to(&carol, "bob", Some("h1"), json!("via the gateway"))
        .await;
    expect_push_of(&mut bob, &over_http.id).await;
    expect_push_of(&mut bob_phone, &over_http.id).await;
}

#[tokio::test]
async fn cross_worker_delivery_on_standalone_redis() {
    cross_worker_delivery(Redis::standalone()).await;
}

#[tokio::test]
async fn cross_worker_delivery_on_redis_cluster() {
    cross_worker_delivery(Redis::cluster()).await;
}

/// A gateway restarted (SIGTERM, then started again) goes on with the same sequences:
/// they live in Redis, not in the node.
#[tokio::test]
async fn a_gateway_restart_keeps_sequences() {
    let mut c = Cluster::start(Redis::standalone()).await;
    let alice = c.gateway.token("alice", "a1");
    let bob = c.gateway.token("bob", "b1");
    for i in 0..3 {
        c.gateway
            .http()
            .send_to(&alice, "bob", None, json!(i))
            .await;
    }
    c.gateway.sigterm();
    assert!(c.gateway.wait_exit(Duration::from_secs(20)).await.success());
    c.gateway.restart();
    let m = c
        .gateway
        .http()
        .send_to(&bob, "alice", None, json!("after"))
        .await;
    assert_eq!(m.seq, 4, "seq goes on after the restart");
    let seqs: Vec<u64> = history(&c.gateway, &alice, &direct_conv("alice", "bob"))
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let inbox = c.gateway.http().sync_all(&bob, 0, 100).await;
    let useqs: Vec<u64> = inbox.iter().map(|i| i.useq).collect();
    assert_eq!(useqs, [1, 2, 3, 4]);
}

/// Two gateways commit to one conversation at the same time: its `seq` stays gapless,
/// every message is there once, and each member's inbox is gapless and in seq order.
async fn interleaved_gateways(redis: Redis) {
    let g1 = node(&redis, "gateway,dispatcher", "gw1");
    let g2 = node(&redis, "gateway,dispatcher", "gw2");
    let alice = g1.token("alice", "a1");
    let bob = g1.token("bob", "b1");
    const EACH: usize = 40;
    let send = |gw: &Imd, token: String, to: &'static str, tag: &'static str| {
        let http = gw.http();
        async move {
            let mut out = Vec::new();
            for i in 0..EACH {
                out.push(
                    http.send_to(&token, to, Some(&format!("{tag}{i}")), json!(i))
                        .await,
                );
            }
            out
        }
    };
    let (a, b) = tokio::join!(
        send(&g1, alice.clone(), "bob", "g1-"),
        send(&g2, bob.clone(), "alice", "g2-")
    );
    let conv = direct_conv("alice", "bob");
    let hist = history(&g2, &alice, &conv).await;
    let seqs: Vec<u64> = hist.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=2 * EACH as u64).collect::<Vec<_>>(),
        "gapless seq"
    );
    let acked: BTreeSet<&str> = a.iter().chain(&b).map(|m| m.id.as_str()).collect();
    let stored: BTreeSet<&str> = hist.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(acked, stored, "every acknowledged message once");
    for token in [&alice, &bob] {
        let inbox = g1.http().sync_all(token, 0, 1000).await;
        let useqs: Vec<u64> = inbox.iter().map(|i| i.useq).collect();
        assert_eq!(
            useqs,
            (1..=2 * EACH as u64).collect::<Vec<_>>(),
            "gapless inbox"
        );
        let seqs: Vec<u64> = inbox.iter().map(|i| i.msg.seq).collect();
        assert_eq!(
            seqs,
            (1..=2 * EACH as u64).collect::<Vec<_>>(),
            "inbox in seq order"
        );
    }
}

#[tokio::test]
async fn two_gateways_interleave_gapless_on_standalone_redis() {
    interleaved_gateways(Redis::standalone()).await;
}

#[tokio::test]
async fn two_gateways_interleave_gapless_on_redis_cluster() {
    interleaved_gateways(Redis::cluster()).await;
}

/// One connection per (uid, device) across the cluster: the same device connecting to
/// another worker replaces its connection on the first, which is told `replaced`.
#[tokio::test]
async fn a_device_moving_to_another_worker_replaces_its_old_connection() {
    let c = Cluster::start(Redis::standalone()).await;
    let mut old = c.connect(&c.w2, "bob", "phone").await;
    let mut new = c.connect(&c.w1, "bob", "phone").await;
    assert_eq!(old.expect_kick().await, "replaced");
    new.ping_pong().await;
    let redis = &c.redis;
    wait_until(FRAME_DEADLINE, "one route, on w1", || async {
        routes(redis, "bob").await == [("phone".to_owned(), "w1".to_owned())]
    })
    .await;
}

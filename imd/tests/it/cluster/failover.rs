//! Nodes that die, stop or lose Redis: what was acknowledged is never lost, a push
//! lost with its writer is caught up, a clean stop costs no catch-up, a drained worker
//! leaves at once, and an upgrade that cannot be routed is refused.

use std::time::{Duration, Instant};

use imd::store::{MessageStore, NewMessage, Op};
use serde_json::json;
use shared::ids::direct_conv;
use shared::protocol::Message;

use super::{Cluster, FAILOVER_DEADLINE, expect_push_of, routes};
use crate::common::{Auth, metric, try_ws, wait_until};
use testkit::Redis;

/// Sends through the gateway keep succeeding while the recipient's worker is killed
/// with `kill -9`; the worker leaves the cluster within seconds and its routes are
/// removed; the recipient reconnects to the other worker and finds every acknowledged
/// message in its inbox, gapless.
#[tokio::test]
async fn a_worker_killed_mid_stream_loses_nothing() {
    let mut c = Cluster::start(Redis::standalone()).await;
    let alice = c.gateway.token("alice", "a1");
    let bob_token = c.gateway.token("bob", "b1");
    let mut bob = c.connect(&c.w2, "bob", "b1").await;
    let http = c.gateway.http();

    let mut acked = Vec::new();
    for i in 0..60 {
        if i == 20 {
            // Bob has seen some of them live.
            let first: &Message = &acked[0];
            expect_push_of(&mut bob, &first.id).await;
            c.w2.kill9();
        }
        let m = http
            .send_to(&alice, "bob", Some(&format!("k{i}")), json!(i))
            .await;
        acked.push(m);
    }
    let killed_at = Instant::now();
    c.wait_for_nodes(&["gw1", "w1"]).await;
    let gone_after = killed_at.elapsed();
    eprintln!("killed worker left the cluster view after {gone_after:?}");
    let redis = &c.redis;
    wait_until(FAILOVER_DEADLINE, "w2's routes removed", || async {
        routes(redis, "bob").await.iter().all(|(_, n)| n != "w2")
    })
    .await;

    let mut bob = c.w1.ws(&bob_token).await;
    let mut inbox = Vec::new();
    let mut after = 0;
    loop {
        let (page, more) = bob.sync(after, Some(1000)).await;
        if let Some(last) = page.last() {
            after = last.useq;
        }
        inbox.extend(page);
        if !more {
            break;
        }
    }
    let useqs: Vec<u64> = inbox.iter().map(|i| i.useq).collect();
    assert_eq!(useqs, (1..=60).collect::<Vec<u64>>(), "gapless inbox");
    let ids: Vec<&str> = inbox.iter().map(|i| i.msg.id.as_str()).collect();
    let sent: Vec<&str> = acked.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, sent, "every acknowledged message, in order");
}

/// A message whose inbox entries were written by a node that died before pushing them
/// still reaches the recipient's online device, with nothing after it to reveal the
/// gap: when the dead node's link ends, the worker compares each session with its
/// inbox and pushes what it missed. (The write is made here, straight into Redis, so
/// that nobody pushes it; then the gateway is killed.)
#[tokio::test]
async fn a_push_lost_with_its_writer_still_reaches_an_online_device() {
    let mut c = Cluster::start(Redis::standalone()).await;
    let alice = c.gateway.token("alice", "a1");
    let mut bob = c.connect(&c.w2, "bob", "b1").await;
    let first = c
        .gateway
        .http()
        .send_to(&alice, "bob", None, json!(1))
        .await;
    assert_eq!(expect_push_of(&mut bob, &first.id).await.0, 1);

    let store = imd::store::RedisStore::connect(&c.redis.url())
        .await
        .expect("connect to redis");
    let lost = NewMessage {
        id: "written-then-lost".into(),
        conv: direct_conv("alice", "bob"),
        from: "alice".into(),
        cid: None,
        content: imd::store::Content::Body(json!(2)),
        ts: first.ts,
        members: vec!["alice".into(), "bob".into()],
    };
    store.commit(vec![Op::Message(lost)]).await.expect("commit");
    c.gateway.kill9();

    let (useq, msg) = expect_push_of(&mut bob, "written-then-lost").await;
    assert_eq!((useq, msg.seq), (2, 2));
}

/// A gateway that stops cleanly (SIGTERM) sends what it owes, then says goodbye: the
/// workers run no catch-up for it, neither when its RPC connections end nor when it
/// leaves the registry. (A killed one makes them look: the test above.)
#[tokio::test]
async fn a_gateway_stopping_cleanly_costs_the_workers_no_catch_up() {
    let mut c = Cluster::start(Redis::standalone()).await;
    let alice = c.gateway.token("alice", "a1");
    let mut bob = c.connect(&c.w2, "bob", "b1").await;
    let sent = c
        .gateway
        .http()
        .send_to(&alice, "bob", None, json!("over the gateway's link"))
        .await;
    expect_push_of(&mut bob, &sent.id).await;
    let requests = |text: &str| metric(text, "imd_catch_up_requests_total").unwrap_or(0.0);
    let (w1, w2) = (c.w1.http(), c.w2.http());
    let before = [requests(&w1.metrics().await), requests(&w2.metrics().await)];

    c.gateway.sigterm();
    assert!(c.gateway.wait_exit(Duration::from_secs(20)).await.success());
    for (name, http) in [("w1", &w1), ("w2", &w2)] {
        // Its link ended, and it left the registry: both seen, both excused.
        wait_until(
            Duration::from_secs(10),
            &format!("{name} saw the gateway's link end and its departure"),
            || async { metric(&http.metrics().await, "imd_catch_up_skipped_total") >= Some(2.0) },
        )
        .await;
    }
    let after = [requests(&w1.metrics().await), requests(&w2.metrics().await)];
    assert_eq!(after, before, "no catch-up was asked for");
}

/// An upgrade whose connection route is not written in time is refused with 429 and
/// `Retry-After`, rather than leave a device connected that no other node can reach.
/// Redis is made to hold every write (`CLIENT PAUSE … WRITE`) for longer than an
/// upgrade waits for its route (2 s); once writes flow again the device connects, and
/// the gateway's pushes reach it.
#[tokio::test]
async fn an_upgrade_whose_route_cannot_be_written_is_refused() {
    let c = Cluster::start(Redis::standalone()).await;
    let alice = c.gateway.token("alice", "a1");
    let bob = c.w1.token("bob", "b1");
    let client = redis::Client::open(c.redis.url()).expect("redis URL");
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let paused = Instant::now();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    match try_ws(&c.w1.ws_url(), Auth::Header(&bob)).await {
        Err(status) => assert_eq!(status, 429),
        Ok(_) => panic!("upgraded without a route"),
    }
    assert!(
        paused.elapsed() < Duration::from_secs(4),
        "refused while writes were held, not after"
    );
    let mut ws = loop {
        match try_ws(&c.w1.ws_url(), Auth::Header(&bob)).await {
            Ok(ws) => break ws,
            Err(429) if paused.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("upgrade answered {status}"),
        }
    };
    let sent = c
        .gateway
        .http()
        .send_to(&alice, "bob", None, json!("after the pause"))
        .await;
    assert_eq!(expect_push_of(&mut ws, &sent.id).await.1.seq, 1);
    assert!(metric(&c.w1.http().metrics().await, "imd_ws_route_failures_total") >= Some(1.0));
}

/// SIGTERM drains a worker: its clients get `kick` `shutdown`, it deregisters (its
/// routes are gone at once, not after the TTL), and it exits cleanly.
#[tokio::test]
async fn sigterm_drains_a_worker() {
    let mut c = Cluster::start(Redis::standalone()).await;
    let mut alice = c.connect(&c.w1, "alice", "a1").await;
    c.w1.sigterm();
    assert_eq!(alice.expect_kick().await, "shutdown");
    assert!(c.w1.wait_exit(Duration::from_secs(20)).await.success());
    assert!(
        routes(&c.redis, "alice").await.is_empty(),
        "deregistering removed the routes"
    );
    let store = imd::store::RedisStore::connect(&c.redis.url())
        .await
        .expect("connect to redis");
    let live: Vec<String> = store
        .live_nodes()
        .await
        .expect("live nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert!(
        !live.contains(&"w1".to_owned()),
        "w1 left the registry at once, not after its TTL: {live:?}"
    );
}

/// A worker frozen (SIGSTOP) past its registration's TTL finds, once woken, that the
/// cluster moved on without it: it registers again and writes back the routes of the
/// devices still connected to it, which then get what was sent to them meanwhile; a
/// device that reconnected to another worker meanwhile keeps its new route (the woken
/// worker does not take its pushes back), and its stale connection there is closed
/// with `replaced`.
#[tokio::test]
async fn a_worker_woken_after_its_registration_expired_leaves_moved_devices_alone() {
    let c = Cluster::start(Redis::standalone()).await;
    let alice = c.gateway.token("alice", "a1");
    let mut bob_before = c.connect(&c.w2, "bob", "b1").await;
    let mut carol = c.connect(&c.w2, "carol", "c1").await;
    c.w2.sigstop();
    c.wait_for_nodes(&["gw1", "w1"]).await;
    let redis = &c.redis;
    wait_until(
        FAILOVER_DEADLINE,
        "the frozen worker's routes removed",
        || async {
            routes(redis, "bob").await.is_empty() && routes(redis, "carol").await.is_empty()
        },
    )
    .await;
    // Bob gives up on w2 and connects to w1; carol stays, and is sent a message that
    // nobody can push to her while she has no route.
    let mut bob = c.connect(&c.w1, "bob", "b1").await;
    let http = c.gateway.http();
    let to_carol = http
        .send_to(&alice, "carol", None, json!("while w2 was frozen"))
        .await;

    c.w2.sigcont();
    assert_eq!(expect_push_of(&mut carol, &to_carol.id).await.0, 1);
    wait_until(FAILOVER_DEADLINE, "carol's route back on w2", || async {
        routes(redis, "carol").await == [("c1".to_owned(), "w2".to_owned())]
    })
    .await;
    assert_eq!(bob_before.expect_kick().await, "replaced");
    assert_eq!(
        routes(redis, "bob").await,
        [("b1".to_owned(), "w1".to_owned())],
        "the woken worker left the moved device's route alone"
    );
    let to_bob = http
        .send_to(&alice, "bob", None, json!("after w2 woke"))
        .await;
    expect_push_of(&mut bob, &to_bob.id).await;
}

//! Conversation state across workers (1 gateway + 2 workers on real Redis), with each
//! user's devices on different workers: `read` frames and typing reach devices on the
//! other worker, unread counts and the conversation list read through the gateway
//! agree with reads made on a worker, presence is cluster-wide (and a killed worker's
//! users go offline), recall reaches a device that was away on the other worker, and a
//! service conversation's `assigned` / `closed` events reach the customer wherever it
//! is connected.

use std::time::{Duration, Instant};

use serde_json::json;
use shared::ids::{direct_conv, service_conv};
use shared::protocol::{ErrorCode, Message, PresenceResponse, ServerFrame};

use super::{Cluster, FAILOVER_DEADLINE, SECRETS, expect_push_of};
use crate::common::{
    FRAME_DEADLINE, Http, WsClient, claims, encode_path, entry_of, mint, now_ms, tick_past,
    wait_until,
};
use testkit::Redis;

/// How late a `read` or `typing` frame may be: the protocol's bound.
const LIVE: Duration = Duration::from_secs(1);

fn tok(uid: &str, device: &str) -> String {
    mint(SECRETS[1], &claims(uid, device, 3600))
}

fn admin() -> &'static str {
    SECRETS[3]
}

/// What is left of `LIVE` since `from`.
fn left(from: Instant) -> Duration {
    LIVE.saturating_sub(from.elapsed())
}

async fn read_frame(ws: &mut WsClient, conv: &str, seq: u64) {
    ws.send_json(&json!({"type": "read", "conv": conv, "seq": seq}))
        .await;
}

/// (read_seq, unread) of `conv` in the list of `token`'s user, read through `http`.
async fn position(http: &Http, token: &str, conv: &str) -> (u64, u64) {
    let list = http.conversation_list(token, "").await;
    let e = entry_of(&list, conv);
    (e.read_seq, e.unread)
}

/// Whether `uid` is online, as `token`'s user sees it (`None`: not listed).
async fn online(http: &Http, token: &str, uid: &str) -> Option<bool> {
    let resp = http.presence(token, &[uid]).await;
    let p: PresenceResponse = serde_json::from_value(resp.assert_ok().clone())
        .unwrap_or_else(|e| panic!("bad presence answer ({e}): {}", resp.body));
    p.users.iter().find(|u| u.uid == uid).map(|u| u.online)
}

fn is_event(m: &Message, ty: &str) -> bool {
    m.event.as_ref().is_some_and(|e| e["type"] == ty)
}

/// A read on one worker reaches the reader's other device and the peer's device on the
/// other worker within 1 s, over WebSocket and over the gateway's HTTP API; the list
/// read through the gateway with the second device's token has the new position and
/// unread count; the list pages through the gateway with `next`.
async fn reads_unread_counts_and_the_list_across_workers(redis: Redis) {
    let c = Cluster::start(redis).await;
    let http = c.gateway.http();
    let conv = direct_conv("alice", "bob");
    let mut a1 = c.connect(&c.w1, "alice", "a1").await;
    let mut a2 = c.connect(&c.w2, "alice", "a2").await;
    let mut b1 = c.connect(&c.w2, "bob", "b1").await;
    for i in 1..=4 {
        b1.send_to("alice", &format!("c{i}"), json!(i)).await;
        b1.expect_sent(&format!("c{i}")).await;
    }
    assert_eq!(position(&http, &tok("alice", "a2"), &conv).await, (0, 4));

    let t = Instant::now();
    read_frame(&mut a1, &conv, 3).await;
    for ws in [&mut a1, &mut a2, &mut b1] {
        ws.expect_read_at(left(t), &conv, "alice", 3).await;
    }
    assert_eq!(
        position(&http, &tok("alice", "a2"), &conv).await,
        (3, 1),
        "a2's list through the gateway after a1 read on w1"
    );
    let bobs = http.conversation_list(&tok("bob", "b1"), "").await;
    assert_eq!(entry_of(&bobs, &conv).peer_read_seq, Some(3), "{bobs:?}");

    let t = Instant::now();
    http.mark_read(&tok("alice", "a2"), &conv, 4)
        .await
        .assert_ok();
    a1.expect_read_at(left(t), &conv, "alice", 4).await;
    b1.expect_read_at(left(t), &conv, "alice", 4).await;
    assert_eq!(position(&http, &tok("alice", "a1"), &conv).await, (4, 0));
    let d = http.conversation(&tok("bob", "b1"), &conv).await;
    assert_eq!(d.assert_ok()["read"], json!({"alice": 4, "bob": 4}));

    // Five conversations of alice's, paged by two through the gateway.
    let mut want = vec![conv.clone()];
    for i in 0..4 {
        let last = http
            .send_to(&tok(&format!("p{i}"), "d"), "alice", None, json!(i))
            .await;
        tick_past(last.ts).await;
        want.insert(0, last.conv);
    }
    let mut got = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let page = http.conversation_list(&tok("alice", "a1"), &query).await;
        assert!(page.convs.len() <= 2, "{page:?}");
        got.extend(page.convs.into_iter().map(|c| c.conv));
        match page.next {
            Some(next) => query = format!("limit=2&before={}", encode_path(&next)),
            None => break,
        }
        assert!(got.len() <= want.len(), "next never ends: {got:?}");
    }
    assert_eq!(got, want, "pages of 2, newest first");
}

#[tokio::test]
async fn reads_unread_counts_and_the_list_across_workers_on_standalone_redis() {
    reads_unread_counts_and_the_list_across_workers(Redis::standalone()).await;
}

#[tokio::test]
async fn reads_unread_counts_and_the_list_across_workers_on_redis_cluster() {
    reads_unread_counts_and_the_list_across_workers(Redis::cluster()).await;
}

/// Typing on w1 reaches the other member's devices on w2 within 1 s; a burst of 20 is
/// cut to about one; a non-member is refused.
#[tokio::test]
async fn typing_crosses_workers_and_a_flood_is_cut() {
    let c = Cluster::start(Redis::standalone()).await;
    let http = c.gateway.http();
    let conv = direct_conv("alice", "bob");
    http.put_group(admin(), "pair", &["alice", "bob"]).await;
    let mut a1 = c.connect(&c.w1, "alice", "a1").await;
    let mut b1 = c.connect(&c.w2, "bob", "b1").await;
    let mut b2 = c.connect(&c.w1, "bob", "b2").await;
    let mut carol = c.connect(&c.w2, "carol", "c1").await;
    // Typing goes nowhere in a direct conversation nobody wrote in yet.
    http.send_to(&tok("alice", "a1"), "bob", None, json!("hi"))
        .await;

    let t = Instant::now();
    a1.send_json(&json!({"type": "typing", "conv": conv})).await;
    b1.expect_typing(left(t), &conv, "alice").await;
    b2.expect_typing(left(t), &conv, "alice").await;

    carol
        .send_json(&json!({"type": "typing", "conv": conv}))
        .await;
    assert_eq!(carol.expect_error().await, (None, ErrorCode::Forbidden));

    for _ in 0..20 {
        a1.send_json(&json!({"type": "typing", "conv": "g:pair"}))
            .await;
    }
    let frames = b1.frames_for(Duration::from_millis(1500)).await;
    let typing = frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Typing { conv, uid } if conv == "g:pair" && uid == "alice"))
        .count();
    assert!(
        (1..=2).contains(&typing),
        "20 typing frames in a burst on w1 gave bob on w2 {typing}: {frames:?}"
    );
}

/// Presence is cluster-wide: a contact connected on either worker is online, one whose
/// devices have all gone (closed, or on a killed worker) is offline; strangers are
/// left out.
#[tokio::test]
async fn presence_is_cluster_wide_and_a_killed_workers_users_go_offline() {
    let mut c = Cluster::start(Redis::standalone()).await;
    let http = c.gateway.http();
    let alice = tok("alice", "a1");
    let _a1 = c.connect(&c.w1, "alice", "a1").await;
    let bob = c.connect(&c.w2, "bob", "b1").await;
    let _dave = c.connect(&c.w2, "dave", "d1").await;
    http.send_to(&alice, "bob", None, json!("hi")).await;
    http.send_to(&alice, "carol", None, json!("hi")).await;

    assert_eq!(online(&http, &alice, "bob").await, Some(true), "bob on w2");
    assert_eq!(online(&http, &alice, "dave").await, None, "a stranger");
    assert_eq!(online(&http, &alice, "carol").await, Some(false));

    bob.close().await;
    wait_until(FRAME_DEADLINE, "bob to be offline", || async {
        online(&http, &alice, "bob").await == Some(false)
    })
    .await;
    let _carol = c.connect(&c.w2, "carol", "c1").await;
    let _bob = c.connect(&c.w1, "bob", "b2").await;
    wait_until(FRAME_DEADLINE, "bob and carol to be online", || async {
        online(&http, &alice, "bob").await == Some(true)
            && online(&http, &alice, "carol").await == Some(true)
    })
    .await;

    // carol's only device was on w2, which dies.
    c.w2.kill9();
    wait_until(
        FAILOVER_DEADLINE,
        "carol to be offline after w2 died",
        || async { online(&http, &alice, "carol").await == Some(false) },
    )
    .await;
    assert_eq!(
        online(&http, &alice, "bob").await,
        Some(true),
        "bob is still on w1"
    );
}

/// A recall made on w1 (frame) and through the gateway (HTTP) reaches bob's device on
/// the other worker as an event message; bob's device that was away syncs on w2 and
/// sees the message recalled, without its body. Refusals are the same through the
/// gateway and on a worker.
#[tokio::test]
async fn a_recall_reaches_a_device_that_was_away_on_the_other_worker() {
    let c = Cluster::start(Redis::standalone()).await;
    let http = c.gateway.http();
    let conv = direct_conv("alice", "bob");
    let mut a1 = c.connect(&c.w1, "alice", "a1").await;
    let mut b2 = c.connect(&c.w1, "bob", "b2").await;
    let mut away = c.connect(&c.w2, "bob", "b1").await;
    a1.send_to("bob", "c1", json!("wrong chat")).await;
    let m1 = a1.expect_sent("c1").await;
    a1.send_to("bob", "c2", json!("sorry")).await;
    let m2 = a1.expect_sent("c2").await;
    expect_push_of(&mut away, &m1.id).await;
    let (seen, _) = expect_push_of(&mut away, &m2.id).await;
    away.close().await;

    a1.send_json(&json!({"type": "recall", "conv": conv, "seq": m1.seq}))
        .await;
    let answer = a1
        .next_matching(FRAME_DEADLINE, "recalled", |f| {
            matches!(f, ServerFrame::Recalled { .. })
        })
        .await;
    assert_eq!(
        answer,
        ServerFrame::Recalled {
            conv: conv.clone(),
            seq: m1.seq
        }
    );
    let (_, event) = b2
        .push_where("the recalled event", |m| m.event.is_some())
        .await;
    assert_eq!(
        event.event,
        Some(json!({"type": "recalled", "seq": m1.seq})),
        "{event:?}"
    );
    assert_eq!((event.from.as_str(), event.seq), ("alice", 3));

    let mut back = c.connect(&c.w2, "bob", "b1").await;
    let (items, _) = back.sync(seen, None).await;
    assert_eq!(
        items.iter().map(|i| &i.msg).collect::<Vec<_>>(),
        [&event],
        "what the device missed on w2"
    );
    let (items, _) = back.sync(0, None).await;
    let first = &items[0].msg;
    assert_eq!(first.id, m1.id);
    assert!(
        first.recalled && first.body.is_none(),
        "sync shows m1 recalled: {first:?}"
    );

    // Through the gateway; the event reaches the device on w2.
    let resp = http.recall(&tok("alice", "a1"), &conv, m2.seq, false).await;
    assert_eq!(resp.assert_ok(), &json!({"conv": conv, "seq": m2.seq}));
    let (_, event2) = back
        .push_where("the second recalled event", |m| {
            m.event.as_ref().is_some_and(|e| e["seq"] == m2.seq)
        })
        .await;
    assert_eq!(
        event2.event,
        Some(json!({"type": "recalled", "seq": m2.seq}))
    );
    let hist = http.history_all(&tok("bob", "b1"), &conv).await;
    let shown: Vec<(u64, bool, bool)> = hist
        .iter()
        .map(|m| (m.seq, m.recalled, m.body.is_some()))
        .collect();
    assert_eq!(
        shown,
        [
            (1, true, false),
            (2, true, false),
            (3, false, false),
            (4, false, false)
        ],
        "(seq, recalled, has body) through the gateway"
    );

    // Refusals.
    let m5 = http
        .send_to(&tok("bob", "b1"), "alice", None, json!("mine"))
        .await;
    http.recall(&tok("alice", "a1"), &conv, m5.seq, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.recall(&tok("carol", "c"), &conv, m5.seq, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.recall(&tok("bob", "b1"), &conv, 99, false)
        .await
        .assert_error(404, ErrorCode::NotFound);
    a1.send_json(&json!({"type": "recall", "conv": conv, "seq": m5.seq}))
        .await;
    assert_eq!(a1.expect_error().await, (None, ErrorCode::Forbidden));
}

/// `--recall-window` holds on every node: past it, the sender is refused on a worker
/// and through the gateway, and the admin still recalls (the event says `by: admin`),
/// which bob's device on the other worker gets.
#[tokio::test]
async fn the_recall_window_holds_on_every_node_and_the_admin_passes_it() {
    let c = Cluster::start_with(Redis::standalone(), &["--recall-window", "1s"]).await;
    let http = c.gateway.http();
    let conv = direct_conv("alice", "bob");
    let mut a1 = c.connect(&c.w1, "alice", "a1").await;
    let mut b1 = c.connect(&c.w2, "bob", "b1").await;
    a1.send_to("bob", "c1", json!("hello")).await;
    let m1 = a1.expect_sent("c1").await;
    wait_until(
        Duration::from_secs(5),
        "m1 to be older than 1 s",
        || async { now_ms() > m1.ts + 1_100 },
    )
    .await;
    a1.send_json(&json!({"type": "recall", "conv": conv, "seq": m1.seq}))
        .await;
    assert_eq!(a1.expect_error().await, (None, ErrorCode::Forbidden));
    http.recall(&tok("alice", "a1"), &conv, m1.seq, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);

    http.recall(admin(), &conv, m1.seq, true).await.assert_ok();
    let (_, event) = b1
        .push_where("the admin's recalled event", |m| m.event.is_some())
        .await;
    assert_eq!(
        event.event,
        Some(json!({"type": "recalled", "seq": m1.seq, "by": "admin"}))
    );
}

/// A customer on w1 and an agent on w2: the assigned event follows the first message
/// and reaches the customer's device; a waiting conversation gets its event when an
/// agent connects on the other worker; the admin's close commits a closed event; event
/// messages never count as unread.
#[tokio::test]
async fn service_events_reach_the_customer_across_workers() {
    let c = Cluster::start(Redis::standalone()).await;
    let http = c.gateway.http();
    http.put_shop_agents(admin(), "shop", &["ag1"]).await;
    http.put_shop_agents(admin(), "late", &["ag2"]).await;
    let conv = service_conv("shop", "cust");
    let mut ag1 = c.connect(&c.w2, "ag1", "desk").await;
    let mut cust = c.connect(&c.w1, "cust", "phone").await;

    cust.send_json(&json!({"type": "send", "cid": "q", "shop": "shop", "body": "hi"}))
        .await;
    let q = cust.expect_sent("q").await;
    let (_, assigned) = cust
        .push_where("the assigned event", |m| is_event(m, "assigned"))
        .await;
    assert_eq!(
        assigned.event,
        Some(json!({"type": "assigned", "agent": "ag1"})),
        "{assigned:?}"
    );
    assert_eq!((assigned.from.as_str(), assigned.seq), ("ag1", q.seq + 1));
    assert!(assigned.body.is_none());

    expect_push_of(&mut ag1, &q.id).await;
    ag1.send_json(&json!({"type": "send", "cid": "r", "conv": conv, "body": "hello"}))
        .await;
    let reply = ag1.expect_sent("r").await;
    expect_push_of(&mut cust, &reply.id).await;
    let list = http.conversation_list(&tok("cust", "phone"), "").await;
    let e = entry_of(&list, &conv);
    assert_eq!(
        (e.read_seq, e.unread, e.peer_read_seq),
        (q.seq, 1, Some(reply.seq)),
        "the reply is unread, the assigned event is not: {e:?}"
    );
    // The customer reads on w1; the agent on w2 hears of it.
    let t = Instant::now();
    read_frame(&mut cust, &conv, reply.seq).await;
    ag1.expect_read_at(left(t), &conv, "cust", reply.seq).await;

    http.post_json(
        &format!("/admin/v1/conversations/{}/close", encode_path(&conv)),
        Some(admin()),
        &json!({}),
    )
    .await
    .assert_ok();
    let (_, closed) = cust
        .push_where("the closed event", |m| is_event(m, "closed"))
        .await;
    assert_eq!(closed.event, Some(json!({"type": "closed"})));
    let list = http.conversation_list(&tok("cust", "phone"), "").await;
    let e = entry_of(&list, &conv);
    assert_eq!(e.last, closed, "the last message is the closed event");
    assert_eq!(
        (e.read_seq, e.unread),
        (reply.seq, 0),
        "the closed event is not unread: {e:?}"
    );

    // A waiting conversation: ag2 is offline, then connects on w2.
    let late = service_conv("late", "cust");
    cust.send_json(&json!({"type": "send", "cid": "w", "shop": "late", "body": "hello?"}))
        .await;
    let w = cust.expect_sent("w").await;
    assert_eq!(w.conv, late);
    let _ag2 = c.connect(&c.w2, "ag2", "desk").await;
    let (_, assigned) = cust
        .push_where("the late assigned event", |m| {
            m.conv == late && is_event(m, "assigned")
        })
        .await;
    assert_eq!(
        assigned.event,
        Some(json!({"type": "assigned", "agent": "ag2"}))
    );
    assert_eq!(assigned.seq, w.seq + 1);
}

//! The customer-service workflow across nodes: customers deciding on two workers at
//! once never push an agent over its cap nor get one conversation given twice; the
//! queue keeps its order whichever node drains it; a rating is counted once.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};
use shared::protocol::{ErrorCode, ServerFrame};

use super::{Cluster, SECRETS, history, routes};
use crate::common::{self, Auth, FRAME_DEADLINE, Http, Imd, WsClient, wait_until};
use testkit::Redis;

fn tok(uid: &str, device: &str) -> String {
    common::mint(SECRETS[1], &common::claims(uid, device, 3600))
}

fn agent_tok(uid: &str) -> String {
    let mut c = common::claims(uid, "desk", 3600);
    c.roles = vec!["agent".into()];
    common::mint(SECRETS[1], &c)
}

/// Connects agent `uid` (a token with the agent role) to `worker`, from `from`, and
/// waits for its route.
async fn connect_agent(c: &Cluster, worker: &Imd, uid: &str, from: IpAddr) -> WsClient {
    let ws = WsClient::connect_from(&worker.ws_url(), Auth::Header(&agent_tok(uid)), from).await;
    let want = ("desk".to_owned(), worker.node_id.clone());
    wait_until(FRAME_DEADLINE, &format!("route of {uid}"), || {
        let want = want.clone();
        async move { routes(&c.redis, uid).await.contains(&want) }
    })
    .await;
    ws
}

async fn stats(http: &Http, shop: &str) -> Value {
    http.get(&format!("/admin/v1/shops/{shop}/stats"), Some(SECRETS[3]))
        .await
        .assert_ok()
        .clone()
}

/// `conv`'s state as its customer sees it.
async fn detail(http: &Http, customer: &str, conv: &str) -> Value {
    http.conversation(&tok(customer, "d"), conv)
        .await
        .assert_ok()
        .clone()
}

/// The `assigned` events of `conv`'s history: the agents, in order.
async fn assigned_to(gateway: &Imd, customer: &str, conv: &str) -> Vec<String> {
    history(gateway, &tok(customer, "d"), conv)
        .await
        .into_iter()
        .filter_map(|m| m.event)
        .filter(|e| e["type"] == "assigned")
        .map(|e| e["agent"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// 20 customers write their first message at once, half through each worker, to a
/// shop of 3 agents with a cap of 2: exactly 6 get an agent, none is given twice, no
/// agent holds more than 2, and the other 14 wait with the places 1 to 14.
#[tokio::test]
async fn caps_hold_with_20_customers_deciding_on_two_workers() {
    let c = Cluster::start(Redis::standalone()).await;
    let http = c.gateway.http();
    http.put_json(
        "/admin/v1/shops/s1/agents",
        Some(SECRETS[3]),
        &json!({"agents": ["a1", "a2", "a3"], "max_open": 2}),
    )
    .await
    .assert_ok();
    let _a1 = connect_agent(&c, &c.w1, "a1", [127, 0, 2, 1].into()).await;
    let _a2 = connect_agent(&c, &c.w2, "a2", [127, 0, 2, 2].into()).await;
    let _a3 = connect_agent(&c, &c.w1, "a3", [127, 0, 2, 3].into()).await;

    let mut customers = Vec::new();
    for i in 0..20u8 {
        let uid = format!("cu{i}");
        let worker = if i % 2 == 0 { &c.w1 } else { &c.w2 };
        // Each from its own address: the connect rate limit is per address.
        let from = IpAddr::from([127, 0, 1, i + 1]);
        let ws =
            WsClient::connect_from(&worker.ws_url(), Auth::Header(&tok(&uid, "d")), from).await;
        customers.push((uid, ws));
    }
    let sends = customers.iter_mut().map(|(_, ws)| async move {
        ws.send_json(&json!({"type": "send", "cid": "hi", "shop": "s1", "body": "hello"}))
            .await;
        ws.expect_sent("hi").await
    });
    futures_util::future::join_all(sends).await;

    let mut holders: BTreeMap<String, usize> = BTreeMap::new();
    let mut places = Vec::new();
    for (uid, _) in &customers {
        let conv = format!("s:s1~{uid}");
        let d = detail(&http, uid, &conv).await;
        let assigned = assigned_to(&c.gateway, uid, &conv).await;
        assert!(
            assigned.len() <= 1,
            "{conv} assigned more than once: {assigned:?}"
        );
        match d["agent"].as_str() {
            Some(agent) => {
                assert_eq!(assigned, [agent], "{conv}: {d}");
                *holders.entry(agent.to_owned()).or_default() += 1;
            }
            None => {
                assert!(assigned.is_empty(), "{conv}: {assigned:?}");
                places.push(d["queue_position"].as_u64().expect("a waiting place"));
            }
        }
    }
    assert_eq!(
        holders,
        BTreeMap::from([("a1".into(), 2), ("a2".into(), 2), ("a3".into(), 2)])
    );
    places.sort_unstable();
    assert_eq!(places, (1..=14).collect::<Vec<u64>>());
    let s = stats(&http, "s1").await;
    assert_eq!((&s["open"], &s["waiting"]), (&json!(6), &json!(14)), "{s}");
    for a in s["agents"].as_array().unwrap() {
        assert_eq!(a["open"], 2, "{s}");
    }
}

/// Customers queue in the order they arrive, through either worker; places freed by
/// closes on the gateway and by an agent turning available on a worker hand out the
/// queue in that order, each customer hearing its new place.
#[tokio::test]
async fn the_queue_keeps_its_order_whichever_node_drains_it() {
    let c = Cluster::start(Redis::standalone()).await;
    let http = c.gateway.http();
    http.put_json(
        "/admin/v1/shops/s1/agents",
        Some(SECRETS[3]),
        &json!({"agents": ["b1", "b2"], "max_open": 1}),
    )
    .await
    .assert_ok();
    let _b1 = connect_agent(&c, &c.w1, "b1", [127, 0, 2, 1].into()).await;
    let mut b2 = connect_agent(&c, &c.w2, "b2", [127, 0, 2, 2].into()).await;
    // Both full.
    for uid in ["first", "second"] {
        http.send_to_shop(&tok(uid, "d"), "s1", json!("hi")).await;
    }
    // Six wait, arriving one after the other through alternate workers.
    let mut waiting = Vec::new();
    for i in 0..6u8 {
        let uid = format!("q{i}");
        let worker = if i % 2 == 0 { &c.w1 } else { &c.w2 };
        let from = IpAddr::from([127, 0, 1, i + 1]);
        let mut ws =
            WsClient::connect_from(&worker.ws_url(), Auth::Header(&tok(&uid, "d")), from).await;
        ws.send_json(&json!({"type": "send", "cid": "hi", "shop": "s1", "body": "hello"}))
            .await;
        ws.expect_sent("hi").await;
        let place = ws
            .next_matching(FRAME_DEADLINE, "queue frame", |f| {
                matches!(f, ServerFrame::Queue { .. })
            })
            .await;
        assert!(
            matches!(place, ServerFrame::Queue { position, .. } if position == u64::from(i) + 1),
            "{uid}: {place:?}"
        );
        waiting.push((uid, ws));
    }

    let holding = |agent: &'static str| {
        let http = http.clone();
        async move {
            let mut held = Vec::new();
            for uid in ["first", "second", "q0", "q1", "q2", "q3", "q4", "q5"] {
                let conv = format!("s:s1~{uid}");
                let d = detail(&http, uid, &conv).await;
                if d["agent"] == agent && d["open"] == true {
                    held.push(conv);
                }
            }
            held
        }
    };
    for (k, (uid, ws)) in waiting.iter_mut().enumerate() {
        if k % 2 == 0 {
            // b1's place frees on the gateway: the gateway drains.
            let conv = holding("b1").await.pop().expect("b1 holds one");
            http.post_json(
                &format!("/v1/conversations/{}/close", common::encode_path(&conv)),
                Some(&agent_tok("b1")),
                &json!({}),
            )
            .await
            .assert_ok();
        } else {
            // b2 goes away, closes (nobody takes the place), then turns available on
            // its worker: w2 drains.
            b2.send_json(&json!({"type": "status", "status": "away"}))
                .await;
            b2.ping_pong().await;
            let conv = holding("b2").await.pop().expect("b2 holds one");
            http.post_json(
                &format!("/v1/conversations/{}/close", common::encode_path(&conv)),
                Some(&agent_tok("b2")),
                &json!({}),
            )
            .await
            .assert_ok();
            assert!(holding("b2").await.is_empty(), "an away agent takes no one");
            b2.send_json(&json!({"type": "status", "status": "available"}))
                .await;
        }
        // The oldest waiting one, and no other, got the place.
        let (_, assigned) = ws
            .push_where("its assigned event", |m| {
                m.event.as_ref().is_some_and(|e| e["type"] == "assigned")
            })
            .await;
        let agent = if k % 2 == 0 { "b1" } else { "b2" };
        assert_eq!(assigned.event.unwrap()["agent"], agent, "{uid}");
        let s = stats(&http, "s1").await;
        assert_eq!(s["waiting"], 5 - k as u64, "{s}");
        // Everyone behind moved up one place.
        for i in (k + 1)..6 {
            let later = format!("q{i}");
            let d = detail(&http, &later, &format!("s:s1~{later}")).await;
            assert_eq!(d["queue_position"], (i - k) as u64, "{later}: {d}");
        }
    }
}

/// Two ratings of one closed conversation sent at once: one is counted, the other is
/// 409; a third later is 409 too.
#[tokio::test]
async fn a_rating_is_counted_once_across_the_cluster() {
    let c = Cluster::start(Redis::standalone()).await;
    let http = c.gateway.http();
    http.put_json(
        "/admin/v1/shops/s1/agents",
        Some(SECRETS[3]),
        &json!({"agents": ["a1"]}),
    )
    .await
    .assert_ok();
    let _a1 = connect_agent(&c, &c.w2, "a1", [127, 0, 2, 1].into()).await;
    http.send_to_shop(&tok("cu", "d"), "s1", json!("hello"))
        .await;
    let conv = "s:s1~cu";
    http.post_json(
        &format!(
            "/admin/v1/conversations/{}/close",
            common::encode_path(conv)
        ),
        Some(SECRETS[3]),
        &json!({}),
    )
    .await
    .assert_ok();
    let path = format!("/v1/conversations/{}/rating", common::encode_path(conv));
    let token = tok("cu", "d");
    let (five, one) = (json!({"score": 5}), json!({"score": 1}));
    let (one, two) = tokio::join!(
        http.post_json(&path, Some(&token), &five),
        http.post_json(&path, Some(&token), &one),
    );
    let codes = [one.status, two.status];
    assert!(codes.contains(&200) && codes.contains(&409), "{codes:?}");
    http.post_json(&path, Some(&token), &json!({"score": 3}))
        .await
        .assert_error(409, ErrorCode::Conflict);
    let s = stats(&http, "s1").await;
    assert_eq!(s["rating"]["count"], 1, "{s}");
    let rated = history(&c.gateway, &token, conv)
        .await
        .into_iter()
        .filter(|m| m.event.as_ref().is_some_and(|e| e["type"] == "rated"))
        .count();
    assert_eq!(rated, 1);
}

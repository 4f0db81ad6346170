//! Customer service across workers: assignment sees agents wherever they are
//! connected, and racing first messages from two workers leave the assigned agent no
//! hole.

use std::collections::BTreeSet;

use serde_json::json;

use super::{Cluster, SECRETS, expect_push_of};
use crate::common;
use crate::common::{Auth, WsClient};
use testkit::Redis;

/// Customer-service assignment sees agents online on any worker: a customer on w1
/// writing to a shop whose only online agent is on w2 is assigned that agent, who gets
/// the message pushed; an agent whose worker was killed is no longer picked.
#[tokio::test]
async fn assignment_sees_agents_on_every_worker() {
    let mut c = Cluster::start(Redis::standalone()).await;
    let http = c.gateway.http();
    http.put_json(
        "/admin/v1/shops/shoe/agents",
        Some(SECRETS[3]),
        &json!({"agents": ["ann", "abe"]}),
    )
    .await
    .assert_ok();
    let mut ann = c.connect(&c.w2, "ann", "desk").await;
    let mut carol = c.connect(&c.w1, "carol", "phone").await;

    carol
        .send_json(&json!({"type": "send", "cid": "q1", "shop": "shoe", "body": "in stock?"}))
        .await;
    let question = carol.expect_sent("q1").await;
    let (_, got) = expect_push_of(&mut ann, &question.id).await;
    assert_eq!(got.conv, "s:shoe~carol");
    let assigned = http
        .get("/admin/v1/conversations/s:shoe~carol", Some(SECRETS[3]))
        .await;
    assert_eq!(assigned.assert_ok()["agent"], "ann");

    // ann's worker dies; abe comes online on w1: the next question goes to abe.
    c.w2.kill9();
    c.wait_for_nodes(&["gw1", "w1"]).await;
    let mut abe = c.connect(&c.w1, "abe", "desk").await;
    carol
        .send_json(&json!({"type": "send", "cid": "q2", "shop": "shoe", "body": "hello?"}))
        .await;
    let again = carol.expect_sent("q2").await;
    expect_push_of(&mut abe, &again.id).await;
    let reassigned = http
        .get("/admin/v1/conversations/s:shoe~carol", Some(SECRETS[3]))
        .await;
    assert_eq!(reassigned.assert_ok()["agent"], "abe");
}

/// A customer writes from two devices on two workers at the same moment, first
/// messages of a new service conversation: the agent the conversation ends up assigned
/// to has both messages in its inbox. Both workers decide under the conversation's
/// decision lease, the second after the first's join and message are committed, so the
/// second routes to the agent the first assigned.
#[tokio::test]
async fn racing_first_messages_from_two_workers_leave_the_assigned_agent_no_hole() {
    let c = Cluster::start(Redis::standalone()).await;
    let secret = SECRETS[1];
    let admin = SECRETS[3];
    let tok = |uid: &str, device: &str| common::mint(secret, &common::claims(uid, device, 3600));
    c.gateway
        .http()
        .put_json(
            "/admin/v1/shops/s1/agents",
            Some(admin),
            &json!({"agents": ["ag1", "ag2"]}),
        )
        .await
        .assert_ok();
    let _ag1 = c.connect(&c.w1, "ag1", "d").await;
    let _ag2 = c.connect(&c.w2, "ag2", "d").await;
    for i in 0..20 {
        let customer = format!("cu{i}");
        // Each customer from its own address: the connect rate limit is per address.
        let from = std::net::IpAddr::from([127, 0, 1, i as u8 + 1]);
        let (t1, t2) = (tok(&customer, "d1"), tok(&customer, "d2"));
        let mut d1 = WsClient::connect_from(&c.w1.ws_url(), Auth::Header(&t1), from).await;
        let mut d2 = WsClient::connect_from(&c.w2.ws_url(), Auth::Header(&t2), from).await;
        let send = |cid: &str| json!({"type": "send", "cid": cid, "shop": "s1", "body": cid});
        let (one, two) = (send("one"), send("two"));
        tokio::join!(d1.send_json(&one), d2.send_json(&two));
        let (m1, m2) = tokio::join!(d1.expect_sent("one"), d2.expect_sent("two"));
        let conv = m1.conv.clone();
        assert_eq!(m2.conv, conv);
        let state = c
            .gateway
            .http()
            .get(
                &format!("/admin/v1/conversations/{}", common::encode_path(&conv)),
                Some(admin),
            )
            .await;
        let agent = state.assert_ok()["agent"]
            .as_str()
            .unwrap_or_else(|| panic!("{conv} unassigned"))
            .to_owned();
        let inbox = c.gateway.http().sync_all(&tok(&agent, "d"), 0, 1000).await;
        let got: BTreeSet<&str> = inbox
            .iter()
            .filter(|item| item.msg.conv == conv && !item.msg.is_event())
            .map(|item| item.msg.id.as_str())
            .collect();
        assert_eq!(
            got,
            BTreeSet::from([m1.id.as_str(), m2.id.as_str()]),
            "{conv}: {agent}'s inbox"
        );
    }
}

//! Customer-service conversations against a real process: least-loaded assignment,
//! stickiness, reassignment with history after the agent goes offline, queued
//! conversations reaching an agent who connects later, replies, who may write and
//! read, and the admin's transfer and close.

use std::time::Duration;

use serde_json::{Value, json};
use shared::protocol::{ErrorCode, Message, ServerFrame};

use crate::common;
use crate::common::{Http, Imd, WsClient, claims, mint, wait_until};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

fn start() -> Imd {
    Imd::start(&["--token-secret", SECRET, "--admin-token", ADMIN])
}

fn tok(uid: &str, device: &str) -> String {
    mint(SECRET, &claims(uid, device, 3600))
}

fn conv_of(shop: &str, customer: &str) -> String {
    format!("s:{shop}~{customer}")
}

async fn set_agents(http: &Http, shop: &str, agents: &[&str]) {
    let resp = http
        .put_json(
            &format!("/admin/v1/shops/{shop}/agents"),
            Some(ADMIN),
            &json!({ "agents": agents }),
        )
        .await;
    resp.assert_ok();
}

/// `GET /admin/v1/conversations/{conv}`.
async fn assignment(http: &Http, conv: &str) -> Value {
    let resp = http
        .get(
            &format!("/admin/v1/conversations/{}", common::encode_path(conv)),
            Some(ADMIN),
        )
        .await;
    let v = resp.assert_ok().clone();
    assert_eq!(v["conv"], conv, "{v}");
    v
}

/// The agent `conv` is assigned to (asserts it is open and assigned).
async fn agent_of(http: &Http, conv: &str) -> String {
    let v = assignment(http, conv).await;
    assert_eq!(v["open"], true, "{conv} should be open: {v}");
    v["agent"]
        .as_str()
        .unwrap_or_else(|| panic!("{conv} has no agent: {v}"))
        .to_owned()
}

/// A customer writes to `shop` over HTTP; asserts 200 and returns the message.
async fn customer_says(http: &Http, customer: &str, shop: &str, body: Value) -> Message {
    let resp = http
        .post_message(&tok(customer, "web"), &json!({"shop": shop, "body": body}))
        .await;
    let v = resp.assert_ok();
    let msg: Message = serde_json::from_value(v["msg"].clone())
        .unwrap_or_else(|e| panic!("bad send answer ({e}): {v}"));
    assert_eq!(msg.conv, conv_of(shop, customer), "service conversation id");
    assert_eq!(msg.from, customer);
    msg
}

/// The next push of `c` that is not an event message, acked (the events before it
/// too); asserts it is `want`. The event messages are checked where they are the
/// point (`assignments_and_closes_are_event_messages`).
async fn expect_msg(name: &str, c: &mut WsClient, want: &Message) -> u64 {
    let (useq, msg) = next_said(c).await;
    assert_eq!(&msg, want, "{name}: pushed message");
    useq
}

/// The next push of `c` that is not an event message, acked.
async fn expect_push_acked(c: &mut WsClient) -> Message {
    next_said(c).await.1
}

async fn next_said(c: &mut WsClient) -> (u64, Message) {
    loop {
        let (useq, msg) = c.expect_push().await;
        c.ack(&[useq]).await;
        if !msg.is_event() {
            return (useq, msg);
        }
    }
}

/// The messages of `msgs` that are not events.
fn said(msgs: &[Message]) -> Vec<Message> {
    msgs.iter().filter(|m| !m.is_event()).cloned().collect()
}

/// The events of `msgs`, with their senders.
fn events(msgs: &[Message]) -> Vec<(String, Value)> {
    msgs.iter()
        .filter_map(|m| Some((m.from.clone(), m.event.clone()?)))
        .collect()
}

/// `c` got no frame but event message pushes (acked): its pong comes after anything
/// queued for it before the ping. Call it after the sender got its answer, which comes
/// after the pushes are queued.
async fn expect_nothing(name: &str, c: &mut WsClient) {
    c.ping_pong().await;
    let mut frames = c.take_pending();
    let mut acks = Vec::new();
    frames.retain(|f| match f {
        ServerFrame::Msg { useq, msg } if msg.is_event() => {
            acks.push(*useq);
            false
        }
        _ => true,
    });
    if !acks.is_empty() {
        c.ack(&acks).await;
    }
    assert!(frames.is_empty(), "{name} got frames: {frames:?}");
}

/// Agents are connected in `agents`; asserts that `msg` reached exactly the agent the
/// conversation is assigned to, and returns that agent's index.
async fn delivered_to_assigned(
    http: &Http,
    agents: &mut [(&str, WsClient)],
    msg: &Message,
) -> usize {
    let agent = agent_of(http, &msg.conv).await;
    let i = agents
        .iter()
        .position(|(name, _)| *name == agent)
        .unwrap_or_else(|| panic!("{} assigned to {agent}, not a connected agent", msg.conv));
    for (j, (name, c)) in agents.iter_mut().enumerate() {
        if j == i {
            expect_msg(name, c, msg).await;
        } else {
            expect_nothing(name, c).await;
        }
    }
    i
}

/// Shop agents are set and read back; an unknown shop is 404, on the admin API and
/// for a customer writing to it.
#[tokio::test]
async fn shop_agents_are_set_and_read_back() {
    let imd = start();
    let http = imd.http();
    set_agents(&http, "s1", &["ag1", "ag2"]).await;
    let got = http.get("/admin/v1/shops/s1/agents", Some(ADMIN)).await;
    assert_eq!(
        got.assert_ok(),
        &json!({"agents": ["ag1", "ag2"], "max_open": 0})
    );
    set_agents(&http, "s1", &["ag2"]).await;
    let got = http.get("/admin/v1/shops/s1/agents", Some(ADMIN)).await;
    assert_eq!(got.assert_ok(), &json!({"agents": ["ag2"], "max_open": 0}));
    http.get("/admin/v1/shops/nope/agents", Some(ADMIN))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.post_message(&tok("cust", "w"), &json!({"shop": "nope", "body": "hi"}))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.put_json(
        "/admin/v1/shops/s1/agents",
        Some(ADMIN),
        &json!({"agents": ["not a uid!"]}),
    )
    .await
    .assert_error(400, ErrorCode::BadRequest);
}

/// Two customers go to two different agents (least loaded); a customer's next message
/// sticks to its agent though the other one is less loaded; a tie goes to the agent
/// assigned longest ago.
#[tokio::test]
async fn least_loaded_assignment_sticks_and_ties_go_to_the_longest_idle() {
    let imd = start();
    let http = imd.http();
    set_agents(&http, "s1", &["ag1", "ag2"]).await;
    let mut agents = [
        ("ag1", imd.ws(&tok("ag1", "d")).await),
        ("ag2", imd.ws(&tok("ag2", "d")).await),
    ];

    let m = customer_says(&http, "c1", "s1", json!("hello")).await;
    let x = delivered_to_assigned(&http, &mut agents, &m).await;
    let y = 1 - x;
    // Sticky: c1 stays with x, though y has no conversation at all.
    for i in 0..2 {
        let m = customer_says(&http, "c1", "s1", json!(format!("again {i}"))).await;
        assert_eq!(
            delivered_to_assigned(&http, &mut agents, &m).await,
            x,
            "c1's message {i} left its agent"
        );
    }
    // Least loaded: the second customer goes to the other agent.
    let m = customer_says(&http, "c2", "s1", json!("hi")).await;
    assert_eq!(
        delivered_to_assigned(&http, &mut agents, &m).await,
        y,
        "c2 should go to the idle agent"
    );
    // One conversation each: the tie goes to x, assigned longest ago.
    let m = customer_says(&http, "c3", "s1", json!("hey")).await;
    assert_eq!(
        delivered_to_assigned(&http, &mut agents, &m).await,
        x,
        "c3: tie between agents with one conversation each"
    );
    // x has two, y one: y.
    let m = customer_says(&http, "c4", "s1", json!("yo")).await;
    assert_eq!(
        delivered_to_assigned(&http, &mut agents, &m).await,
        y,
        "c4 should go to the less loaded agent"
    );
}

/// When the assigned agent has gone offline, the customer's next message goes to
/// another online agent, who first gets the earlier messages in its inbox (pushed in
/// useq order, before the new one) and can read the history; its reply reaches the
/// customer.
#[tokio::test]
async fn offline_agent_is_replaced_and_the_new_one_gets_the_history() {
    let imd = start();
    let http = imd.http();
    set_agents(&http, "s1", &["ag1", "ag2"]).await;
    let conv = conv_of("s1", "cust");
    let mut cust = imd.ws(&tok("cust", "phone")).await;
    let mut ag1 = imd.ws(&tok("ag1", "d")).await;

    let mut earlier = Vec::new();
    for i in 1..=2 {
        let m = customer_says(&http, "cust", "s1", json!(format!("m{i}"))).await;
        expect_msg("ag1", &mut ag1, &m).await;
        earlier.push(m);
    }
    assert_eq!(agent_of(&http, &conv).await, "ag1");

    // ag2 comes online; c sticks with ag1 meanwhile.
    let mut ag2 = imd.ws(&tok("ag2", "d")).await;
    let m = customer_says(&http, "cust", "s1", json!("m3")).await;
    expect_msg("ag1", &mut ag1, &m).await;
    expect_nothing("ag2", &mut ag2).await;
    earlier.push(m);

    ag1.close().await;
    wait_until(Duration::from_secs(2), "ag1 to be offline", || async {
        let v = http.get("/admin/v1/connections?uid=ag1", Some(ADMIN)).await;
        v.assert_ok()["connections"] == json!([])
    })
    .await;

    let new = customer_says(&http, "cust", "s1", json!("m4")).await;
    assert_eq!(agent_of(&http, &conv).await, "ag2", "reassigned");
    let mut want = earlier.clone();
    want.push(new.clone());
    let mut useqs = Vec::new();
    for m in &want {
        useqs.push(expect_msg("ag2", &mut ag2, m).await);
    }
    // Useq 2 is ag1's assignment, 6 ag2's.
    assert_eq!(
        useqs,
        [1, 3, 4, 5],
        "ag2's inbox: the history, then the new one"
    );
    let sync = http.sync(&tok("ag2", "d"), 0, None).await;
    let synced: Vec<Message> = sync.msgs.into_iter().map(|i| i.msg).collect();
    assert_eq!(said(&synced), want, "ag2's inbox through sync");
    let assigned = |agent: &str, previous: Option<&str>| {
        let mut e = json!({"type": "assigned", "agent": agent});
        if let Some(p) = previous {
            e["previous"] = json!(p);
        }
        (agent.to_owned(), e)
    };
    assert_eq!(
        events(&synced),
        [assigned("ag1", None), assigned("ag2", Some("ag1"))],
        "ag2's inbox: both assignments"
    );
    let hist = http.history(&tok("ag2", "d"), &conv, 0, None).await;
    let msgs: Vec<Message> =
        serde_json::from_value(hist.assert_ok()["msgs"].clone()).expect("history");
    assert_eq!(msgs, synced, "ag2 reads the whole history");

    // The customer's device got its own four messages, then ag2's reply.
    for m in &want {
        expect_msg("customer", &mut cust, m).await;
    }
    ag2.send_json(&json!({"type": "send", "cid": "r1", "conv": conv, "body": "on it"}))
        .await;
    let reply = ag2.expect_sent("r1").await;
    assert_eq!(reply.seq, 7, "four messages, two assignments, the reply");
    assert_eq!(reply.from, "ag2");
    expect_msg("customer", &mut cust, &reply).await;
}

/// With no agent online the customer's messages are stored (200 / `sent`) and the
/// conversation waits unassigned; the first agent to connect gets it, with the waiting
/// messages pushed and in its inbox.
#[tokio::test]
async fn queued_conversation_reaches_the_agent_who_connects_later() {
    let imd = start();
    let http = imd.http();
    set_agents(&http, "s1", &["ag1", "ag2"]).await;
    let conv = conv_of("s1", "early");

    let m1 = customer_says(&http, "early", "s1", json!("anyone?")).await;
    let mut cust = imd.ws(&tok("early", "phone")).await;
    cust.send_json(&json!({"type": "send", "cid": "q2", "shop": "s1", "body": "hello?"}))
        .await;
    let m2 = cust.expect_sent("q2").await;
    assert_eq!((m1.seq, m2.seq), (1, 2));
    let waiting = assignment(&http, &conv).await;
    assert_eq!(
        waiting["open"], true,
        "a waiting conversation is open: {waiting}"
    );
    assert!(
        waiting.get("agent").is_none_or(Value::is_null),
        "nobody is online, yet assigned: {waiting}"
    );

    let mut ag = imd.ws(&tok("ag2", "d")).await;
    let u1 = expect_msg("ag2", &mut ag, &m1).await;
    let u2 = expect_msg("ag2", &mut ag, &m2).await;
    assert_eq!((u1, u2), (1, 2), "ag2's useqs");
    assert_eq!(agent_of(&http, &conv).await, "ag2");
    let synced: Vec<Message> = http
        .sync(&tok("ag2", "d"), 0, None)
        .await
        .msgs
        .into_iter()
        .map(|i| i.msg)
        .collect();
    assert_eq!(
        said(&synced),
        [m1.clone(), m2.clone()],
        "ag2's inbox through sync"
    );
    assert_eq!(
        events(&synced),
        [("ag2".into(), json!({"type": "assigned", "agent": "ag2"}))],
        "the waiting conversation's assignment follows its messages"
    );

    let m3 = customer_says(&http, "early", "s1", json!("thanks")).await;
    expect_msg("ag2", &mut ag, &m3).await;
}

/// Agents reply with `conv` and every device of the customer gets it; a user who is
/// neither the customer nor an agent of the shop gets 403 on send and on history;
/// any agent of the shop may read.
#[tokio::test]
async fn agent_replies_reach_the_customer_and_outsiders_are_refused() {
    let imd = start();
    let http = imd.http();
    set_agents(&http, "s1", &["ag1", "ag2"]).await;
    set_agents(&http, "s2", &["ag3"]).await;
    let conv = conv_of("s1", "cu");
    let mut ag1 = imd.ws(&tok("ag1", "d")).await;
    let mut cd1 = imd.ws(&tok("cu", "d1")).await;
    let mut cd2 = imd.ws(&tok("cu", "d2")).await;

    cd1.send_json(&json!({"type": "send", "cid": "q1", "shop": "s1", "body": "where is it?"}))
        .await;
    let q = cd1.expect_sent("q1").await;
    assert_eq!(q.conv, conv);
    for (name, c) in [("cd1", &mut cd1), ("cd2", &mut cd2), ("ag1", &mut ag1)] {
        expect_msg(name, c, &q).await;
    }

    ag1.send_json(&json!({"type": "send", "cid": "r1", "conv": conv, "body": "on its way"}))
        .await;
    let r = ag1.expect_sent("r1").await;
    assert_eq!(
        (r.conv.as_str(), r.from.as_str(), r.seq),
        (conv.as_str(), "ag1", 3),
        "the question, ag1's assignment, the reply"
    );
    for (name, c) in [("cd1", &mut cd1), ("cd2", &mut cd2), ("ag1", &mut ag1)] {
        expect_msg(name, c, &r).await;
    }
    let r2 = http
        .post_message(&tok("ag1", "d"), &json!({"conv": conv, "body": "tomorrow"}))
        .await;
    let r2: Message = serde_json::from_value(r2.assert_ok()["msg"].clone()).expect("msg");
    for (name, c) in [("cd1", &mut cd1), ("cd2", &mut cd2)] {
        expect_msg(name, c, &r2).await;
    }

    // Outsiders: a stranger, another customer, an agent of another shop.
    for outsider in ["eve", "other-customer", "ag3"] {
        let t = tok(outsider, "d");
        http.post_message(&t, &json!({"conv": conv, "body": "let me in"}))
            .await
            .assert_error(403, ErrorCode::Forbidden);
        http.history(&t, &conv, 0, None)
            .await
            .assert_error(403, ErrorCode::Forbidden);
    }
    let mut eve = imd.ws(&tok("eve", "d")).await;
    eve.send_json(&json!({"type": "send", "cid": "e1", "conv": conv, "body": "hi"}))
        .await;
    let (cid, code) = eve.expect_error().await;
    assert_eq!(cid.as_deref(), Some("e1"));
    assert_eq!(code, ErrorCode::Forbidden);

    // Any agent of the shop reads, assigned or not, online or not; so does the customer.
    for reader in ["ag2", "ag1", "cu"] {
        let hist = http.history(&tok(reader, "d"), &conv, 0, None).await;
        let msgs: Vec<Message> =
            serde_json::from_value(hist.assert_ok()["msgs"].clone()).expect("history");
        assert_eq!(
            said(&msgs),
            [q.clone(), r.clone(), r2.clone()],
            "{reader} reads"
        );
    }
}

/// The admin hands a conversation to another agent, who gets the history and the next
/// messages; closing ends the assignment (404 when not open) and the customer's next
/// message opens it again.
#[tokio::test]
async fn transfer_and_close() {
    let imd = start();
    let http = imd.http();
    set_agents(&http, "s1", &["ag1", "ag2"]).await;
    let conv = conv_of("s1", "cu");
    let path = |what: &str| {
        format!(
            "/admin/v1/conversations/{}/{what}",
            common::encode_path(&conv)
        )
    };
    let mut agents = [
        ("ag1", imd.ws(&tok("ag1", "d")).await),
        ("ag2", imd.ws(&tok("ag2", "d")).await),
    ];

    let m1 = customer_says(&http, "cu", "s1", json!("first")).await;
    let x = delivered_to_assigned(&http, &mut agents, &m1).await;
    let y = 1 - x;
    let to = agents[y].0;

    let resp = http
        .post_json(&path("transfer"), Some(ADMIN), &json!({"agent": to}))
        .await;
    assert_eq!(resp.assert_ok(), &json!({}));
    assert_eq!(agent_of(&http, &conv).await, to, "after the transfer");
    // The new agent gets the history…
    expect_msg(to, &mut agents[y].1, &m1).await;
    // …and the next message, the old one does not (though online).
    let m2 = customer_says(&http, "cu", "s1", json!("second")).await;
    expect_msg(to, &mut agents[y].1, &m2).await;
    let (from_name, from) = &mut agents[x];
    expect_nothing(from_name, from).await;

    let resp = http
        .post_json(&path("close"), Some(ADMIN), &json!({}))
        .await;
    assert_eq!(resp.assert_ok(), &json!({}));
    let closed = assignment(&http, &conv).await;
    assert_eq!(closed["open"], false, "after close: {closed}");
    http.post_json(&path("close"), Some(ADMIN), &json!({}))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.post_json(
        &format!(
            "/admin/v1/conversations/{}/close",
            common::encode_path(&conv_of("s1", "never"))
        ),
        Some(ADMIN),
        &json!({}),
    )
    .await
    .assert_error(404, ErrorCode::NotFound);

    // The customer's next message opens it again, with an online agent.
    let m3 = customer_says(&http, "cu", "s1", json!("third")).await;
    // first, assigned, assigned (the transfer), second, closed, third.
    assert_eq!(m3.seq, 6);
    let agent = agent_of(&http, &conv).await;
    let z = agents
        .iter()
        .position(|(name, _)| *name == agent)
        .unwrap_or_else(|| panic!("reopened with {agent}, not an online agent"));
    // Whichever agent it is gets the new message, maybe after history of the
    // conversation (earlier messages, in order).
    let (name, c) = &mut agents[z];
    let mut got = Vec::new();
    while got.last() != Some(&m3) {
        got.push(expect_push_acked(c).await);
    }
    let before: Vec<(&str, u64)> = got[..got.len() - 1]
        .iter()
        .map(|m| (m.conv.as_str(), m.seq))
        .collect();
    assert!(
        before.iter().all(|(c, seq)| *c == conv && *seq < 6)
            && before.windows(2).all(|w| w[0].1 < w[1].1),
        "{name} got {got:?} before the new message"
    );
    let (other, c) = &mut agents[1 - z];
    expect_nothing(other, c).await;

    // The history shows each assignment and the close in place.
    let hist = http.history(&tok("cu", "d"), &conv, 0, None).await;
    let msgs: Vec<Message> =
        serde_json::from_value(hist.assert_ok()["msgs"].clone()).expect("history");
    let (old, new) = (agents[x].0, agents[y].0);
    assert_eq!(
        events(&msgs),
        [
            (old.into(), json!({"type": "assigned", "agent": old})),
            (
                new.into(),
                json!({"type": "assigned", "agent": new, "previous": old})
            ),
            (new.into(), json!({"type": "closed"})),
            (agent.clone(), json!({"type": "assigned", "agent": agent})),
        ]
    );
    assert_eq!(
        msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );
}

/// Assignments acknowledged to someone survive `kill -9`: the assignment of each
/// conversation whose opening message was answered with 200, and an admin's transfer
/// answered with 200. (Assignments carry no fsync of their own: the commit that
/// follows each one makes it durable.)
#[tokio::test]
async fn acknowledged_assignments_survive_kill_9() {
    let mut imd = start();
    let http = imd.http();
    set_agents(&http, "s1", &["ag1", "ag2"]).await;
    let _agents = [
        imd.ws(&tok("ag1", "d")).await,
        imd.ws(&tok("ag2", "d")).await,
    ];
    let customers: Vec<String> = (0..6).map(|i| format!("cu{i}")).collect();
    for c in &customers {
        customer_says(&http, c, "s1", json!("hello")).await;
    }
    let mut before = Vec::new();
    for c in &customers {
        before.push(agent_of(&http, &conv_of("s1", c)).await);
    }
    assert!(
        before.iter().any(|a| a == "ag1") && before.iter().any(|a| a == "ag2"),
        "least loaded spreads them: {before:?}"
    );
    // The last step before the crash: a transfer, answered once it is committed.
    let moved = conv_of("s1", &customers[0]);
    let to = if before[0] == "ag1" { "ag2" } else { "ag1" };
    http.post_json(
        &format!(
            "/admin/v1/conversations/{}/transfer",
            common::encode_path(&moved)
        ),
        Some(ADMIN),
        &json!({"agent": to}),
    )
    .await
    .assert_ok();
    before[0] = to.to_owned();

    imd.kill9();
    imd.restart();
    let http = imd.http();
    let mut after = Vec::new();
    for c in &customers {
        after.push(agent_of(&http, &conv_of("s1", c)).await);
    }
    assert_eq!(after, before, "assignments after kill -9");
}

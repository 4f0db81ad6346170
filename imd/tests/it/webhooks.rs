//! The webhook of committed messages (`docs/webhooks.md`), against a real HTTP
//! receiver: every committed message, event messages included, POSTed signed; at
//! least once and in `seq` order within each conversation, across a receiver that is
//! down, `kill -9` and restarts, and a node of a cluster that dies; a dead receiver
//! never slows sending; events that fail past the retry window are parked and can be
//! re-driven.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::Redis;

use crate::common::{Answer, Got, Imd, Receiver, claims, metric, mint};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";
const HOOK_SECRET: &str = "whsec-0123456789";
/// Long enough for a scan to find settled marks (2 s) and a few backoffs.
const DEADLINE: Duration = Duration::from_secs(30);

fn tok(uid: &str) -> String {
    mint(SECRET, &claims(uid, "d", 3600))
}

/// The flags of a node with a webhook to `receiver`, and `extra`.
fn flags(receiver: &Receiver, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--webhook-secret",
        HOOK_SECRET,
        "--webhook-backoff-max",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("--webhook-url".into());
    v.push(receiver.url("/hook"));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start(receiver: &Receiver, extra: &[&str]) -> Imd {
    Imd::builder().args(flags(receiver, extra)).start()
}

/// Checks `got`'s signature with the secret of these tests.
fn signed(got: &Got) -> bool {
    got.signed_with(HOOK_SECRET)
}

/// The accepted events' `(conv, seq, id)`, in the order accepted.
fn accepted(receiver: &Receiver) -> Vec<(String, u64, String)> {
    receiver
        .accepted()
        .iter()
        .map(|g| {
            let v = g.json();
            (
                v["msg"]["conv"].as_str().unwrap().to_owned(),
                v["msg"]["seq"].as_u64().unwrap(),
                v["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Asserts that the receiver accepted every one of `want` (conv → last seq), each
/// conversation's seqs in order (a repeat of the last accepted is allowed: at least
/// once), and returns the number of repeats.
fn assert_complete_and_ordered(receiver: &Receiver, want: &BTreeMap<String, u64>) -> usize {
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    let mut repeats = 0;
    for (conv, seq, _) in accepted(receiver) {
        let at = next.entry(conv.clone()).or_insert(0);
        if seq <= *at {
            repeats += 1;
            continue;
        }
        assert_eq!(seq, *at + 1, "{conv}: seq {seq} accepted after {at}");
        *at = seq;
    }
    assert_eq!(&next, want, "every committed message reached the receiver");
    repeats
}

/// Waits until the receiver accepted every seq of `want`.
async fn wait_delivered(receiver: &Receiver, want: &BTreeMap<String, u64>) {
    wait_delivered_within(receiver, want, DEADLINE).await;
}

/// [`wait_delivered`] under `deadline`.
async fn wait_delivered_within(
    receiver: &Receiver,
    want: &BTreeMap<String, u64>,
    deadline: Duration,
) {
    receiver
        .wait_for(deadline, "every event accepted", |_| {
            let mut top: BTreeMap<String, u64> = BTreeMap::new();
            for (conv, seq, _) in accepted(receiver) {
                let t = top.entry(conv).or_insert(0);
                *t = (*t).max(seq);
            }
            &top == want
        })
        .await;
}

/// Direct messages, a group's messages and event messages (a recall) all reach the
/// receiver signed, once each, in seq order, with the documented shape.
#[tokio::test]
async fn every_committed_message_is_posted_signed_and_in_order() {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let imd = start(&receiver, &[]);
    let http = imd.http();
    let (alice, bob) = (tok("alice"), tok("bob"));
    let admin = imd.admin_token();
    http.put_group(&admin, "team", &["alice", "bob", "carol"])
        .await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(http.send_to(&alice, "bob", None, json!({"text": i})).await);
        sent.push(http.send_in(&bob, "g:team", json!({"text": i})).await);
    }
    let first = sent[0].clone();
    http.recall(&alice, &first.conv, first.seq, false)
        .await
        .assert_ok();
    let want: BTreeMap<String, u64> = [(first.conv.clone(), 11), ("g:team".to_owned(), 10)].into();
    wait_delivered(&receiver, &want).await;
    assert_eq!(
        assert_complete_and_ordered(&receiver, &want),
        0,
        "a receiver that always answers 200 gets each event once"
    );

    let got = receiver.accepted();
    assert!(
        got.iter().all(signed),
        "every body is signed with the secret"
    );
    assert!(got.iter().all(|g| g.path == "/hook"));
    let ids: HashSet<String> = got
        .iter()
        .map(|g| g.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), got.len(), "event ids are unique");
    for m in &sent[1..] {
        let g = got
            .iter()
            .find(|g| g.json()["msg"]["id"] == m.id)
            .unwrap_or_else(|| panic!("message {} posted", m.id));
        let v = g.json();
        assert_eq!(v["id"], m.id.as_str(), "the event id is the message id");
        assert_eq!(v["type"], "message");
        assert_eq!(v["ts"], m.ts);
        assert_eq!(v["msg"]["body"], m.body.clone().unwrap());
        assert_eq!(g.header("x-imd-event-id"), Some(m.id.as_str()));
        assert_eq!(g.header("content-type"), Some("application/json"));
    }
    let recall = got
        .iter()
        .map(Got::json)
        .find(|v| v["msg"]["event"]["type"] == "recalled")
        .expect("the recall's event message is posted");
    assert_eq!(recall["msg"]["seq"], 11);

    let status = http.get("/admin/v1/webhooks", Some(&admin)).await;
    let s = status.assert_ok();
    assert_eq!(s["delivered"], 21);
    assert_eq!(s["failed"], 0);
    assert_eq!(s["receiver_up"], true);
    let metrics = http.metrics().await;
    assert_eq!(metric(&metrics, "imd_webhook_delivered_total"), Some(21.0));
}

/// The receiver answers 500 while messages commit; imd is killed with `kill -9`; the
/// receiver comes back and imd restarts: every message is delivered, each
/// conversation in order, and sending never waited for the receiver.
#[tokio::test]
async fn a_down_receiver_and_kill_9_lose_nothing() {
    let receiver = Receiver::start(Answer::Status(500)).await;
    let mut imd = start(&receiver, &[]);
    let http = imd.http();
    let alice = tok("alice");
    let mut want = BTreeMap::new();
    for to in ["bob", "carol", "dave"] {
        for i in 0..10 {
            let m = http.send_to(&alice, to, None, json!({"text": i})).await;
            want.insert(m.conv, m.seq);
        }
    }
    receiver
        .wait_for(DEADLINE, "failed tries", |got| got.len() >= 3)
        .await;
    assert!(accepted(&receiver).is_empty());
    let metrics = http.metrics().await;
    assert!(metric(&metrics, "imd_webhook_failed_total").unwrap() >= 3.0);
    imd.kill9();
    receiver.answer(Answer::Status(204));
    imd.restart();
    wait_delivered(&receiver, &want).await;
    assert_complete_and_ordered(&receiver, &want);
    let status = imd.http().get("/admin/v1/webhooks", Some(ADMIN)).await;
    assert_eq!(status.assert_ok()["parked"], 0);
}

/// A receiver that never answers does not slow sending: 50 sends with a hanging
/// receiver take about as long as without one.
#[tokio::test]
async fn a_hanging_receiver_does_not_slow_sending() {
    let receiver = Receiver::start(Answer::Hang).await;
    let imd = start(&receiver, &["--webhook-timeout", "30s"]);
    let http = imd.http();
    let alice = tok("alice");
    http.send_to(&alice, "bob", None, json!({"text": "first"}))
        .await;
    receiver
        .wait_for(DEADLINE, "the first POST to hang", |got| !got.is_empty())
        .await;
    let started = Instant::now();
    for i in 0..50 {
        let to = format!("u{}", i % 5);
        http.send_to(&alice, &to, None, json!({"text": i})).await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "50 sends took {took:?} with a hanging receiver"
    );
}

/// An event that fails for longer than `--webhook-retry-for` is parked, listed, and
/// the conversation goes on; a re-drive sends it once the receiver is back.
#[tokio::test]
async fn events_failing_past_the_retry_window_are_parked_and_redriven() {
    let receiver = Receiver::start(Answer::Status(503)).await;
    let imd = start(&receiver, &["--webhook-retry-for", "1s"]);
    let http = imd.http();
    let alice = tok("alice");
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(http.send_to(&alice, "bob", None, json!({"text": i})).await);
    }
    let parked = wait_parked(&http, 3).await;
    let seqs: Vec<u64> = parked.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3], "parked in order");
    assert_eq!(parked[0]["event"], sent[0].id.as_str());
    assert_eq!(parked[0]["reason"], "HTTP 503");
    let metrics = http.metrics().await;
    assert_eq!(metric(&metrics, "imd_webhook_parked_total"), Some(3.0));

    // The receiver is back: new messages flow; the parked ones wait for a re-drive.
    receiver.answer(Answer::Status(200));
    let next = http
        .send_to(&alice, "bob", None, json!({"text": "after"}))
        .await;
    receiver
        .wait_for(DEADLINE, "the next message accepted", |got| {
            got.iter()
                .any(|g| g.status == 200 && g.json()["id"] == next.id)
        })
        .await;
    let r = http
        .post_json("/admin/v1/webhooks/parked/redrive", Some(ADMIN), &json!({}))
        .await;
    let r = r.assert_ok();
    assert_eq!(
        (r["sent"].as_u64(), r["failed"].as_u64()),
        (Some(3), Some(0))
    );
    for m in &sent {
        assert!(
            receiver
                .accepted()
                .iter()
                .any(|g| g.json()["id"] == m.id && signed(g)),
            "parked message {} re-driven",
            m.id
        );
    }
    assert!(wait_parked(&http, 0).await.is_empty());
}

/// Waits until exactly `n` events are parked; returns them.
async fn wait_parked(http: &crate::common::Http, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let page = http.get("/admin/v1/webhooks/parked", Some(ADMIN)).await;
        let events = page.assert_ok()["events"].as_array().unwrap().clone();
        if events.len() == n {
            return events;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{n} events parked: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no conversation has undelivered events.
async fn wait_settled(http: &crate::common::Http) {
    let started = Instant::now();
    loop {
        let s = http.get("/admin/v1/webhooks", Some(ADMIN)).await;
        let s = s.assert_ok().clone();
        if s["pending_conversations"] == 0 {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "outbox settled: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--webhook-events` and `--webhook-convs` filter what is posted; what is filtered
/// out is skipped, not held.
#[tokio::test]
async fn filters_choose_what_is_posted() {
    let receiver = Receiver::start(Answer::Status(200)).await;
    let imd = start(
        &receiver,
        &["--webhook-events", "event", "--webhook-convs", "direct"],
    );
    let http = imd.http();
    let admin = imd.admin_token();
    let alice = tok("alice");
    http.put_group(&admin, "team", &["alice", "bob"]).await;
    http.send_in(&alice, "g:team", json!({"text": "group"}))
        .await;
    let m = http
        .send_to(&alice, "bob", None, json!({"text": "direct"}))
        .await;
    http.recall(&alice, &m.conv, m.seq, false).await.assert_ok();
    wait_settled(&http).await;
    let got = receiver.got();
    assert_eq!(
        got.len(),
        1,
        "only the direct conversation's event message: {got:?}"
    );
    assert_eq!(got[0].json()["msg"]["event"]["type"], "recalled");
}

/// In a cluster, a node dies (`kill -9`) while the receiver is down; the receiver
/// comes back; the surviving node delivers everything the dead one committed, in
/// order.
#[tokio::test]
async fn a_cluster_node_killed_while_the_receiver_is_down_loses_nothing() {
    let redis = Redis::standalone();
    let url = redis.url();
    let receiver = Receiver::start(Answer::Status(500)).await;
    let mut a = start(&receiver, &["--redis", &url]);
    let b = start(&receiver, &["--redis", &url]);
    let alice = tok("alice");
    let mut want = BTreeMap::new();
    for to in ["bob", "carol"] {
        for i in 0..8 {
            let m = a.http().send_to(&alice, to, None, json!({"text": i})).await;
            want.insert(m.conv, m.seq);
        }
    }
    receiver
        .wait_for(DEADLINE, "failed tries", |got| got.len() >= 2)
        .await;
    a.kill9();
    receiver.answer(Answer::Status(200));
    // A node killed between taking a conversation's lease and freeing it leaves the
    // lease to expire (30 s) before the survivor can take that conversation.
    wait_delivered_within(&receiver, &want, Duration::from_secs(75)).await;
    assert_complete_and_ordered(&receiver, &want);
    let s = b.http().get("/admin/v1/webhooks", Some(ADMIN)).await;
    assert!(
        s.assert_ok()["delivered"].as_u64().unwrap() >= 16,
        "the survivor delivered them"
    );
}

/// A cluster node stopped with SIGTERM while a POST of its hangs frees the
/// conversation's lease on the way out: the other node delivers at once, not after the
/// lease's 30 s expiry.
#[tokio::test]
async fn a_node_stopping_cleanly_hands_its_conversations_over_at_once() {
    let redis = Redis::standalone();
    let url = redis.url();
    let receiver = Receiver::start(Answer::Hang).await;
    let extra = [
        "--redis",
        &url,
        "--webhook-timeout",
        "2s",
        "--shutdown-grace",
        "10s",
    ];
    let mut a = start(&receiver, &extra);
    let b = start(&receiver, &extra);
    let alice = tok("alice");
    let m = a
        .http()
        .send_to(&alice, "bob", None, json!({"text": "hi"}))
        .await;
    receiver
        .wait_for(DEADLINE, "a POST in flight", |got| !got.is_empty())
        .await;
    a.sigterm();
    a.wait_exit(Duration::from_secs(20)).await;
    receiver.answer(Answer::Status(200));
    let want: BTreeMap<String, u64> = [(m.conv.clone(), m.seq)].into();
    // Well under the lease's 30 s: B takes the conversation at its next scan.
    wait_delivered_within(&receiver, &want, Duration::from_secs(15)).await;
    let s = b.http().get("/admin/v1/webhooks", Some(ADMIN)).await;
    assert_eq!(s.assert_ok()["delivered"], 1, "the other node delivered it");
}

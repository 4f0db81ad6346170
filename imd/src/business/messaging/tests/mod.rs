//! The messaging rules over a real embedded store, with recorded deliveries; the
//! conversation state (reads, typing, recall, the list, presence) in `state`.

mod before_send;
mod state;

use super::*;
use crate::store::{Committed, EmbeddedStore, GroupStore, ShopStore};
use serde_json::json;
use shared::token::Platform;
use std::sync::Mutex;

/// `(conv, seq, recipients)` of one delivered message.
type Delivered = (String, u64, Vec<(String, u64)>);

/// `(uids, frame)` of one notice.
type Noticed = (Vec<String>, serde_json::Value);

/// Records what was delivered, and the notices, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Delivered>>, Mutex<Vec<Noticed>>);
impl Deliver for Recorder {
    fn deliver(&self, c: &Committed) {
        self.0
            .lock()
            .unwrap()
            .push((c.conv.clone(), c.seq, c.recipients.clone()));
    }

    fn notify(&self, mut uids: Vec<String>, frame: String) {
        uids.sort();
        let frame = serde_json::from_str(&frame).expect("a notice is JSON");
        self.1.lock().unwrap().push((uids, frame));
    }
}

impl Recorder {
    /// The notices so far, taken.
    fn notices(&self) -> Vec<Noticed> {
        std::mem::take(&mut *self.1.lock().unwrap())
    }
}

fn who(uid: &str) -> Identity {
    Identity {
        uid: uid.into(),
        device: "d1".into(),
        platform: Platform::Web,
        roles: vec![],
        ip: None,
    }
}

fn req(v: serde_json::Value) -> SendRequest {
    serde_json::from_value(v).unwrap()
}

/// Presence as a test sets it.
#[derive(Default)]
struct Online(Mutex<std::collections::HashSet<String>>);
#[async_trait::async_trait]
impl Presence for Online {
    async fn online(&self, uid: &str) -> bool {
        self.0.lock().unwrap().contains(uid)
    }
}
impl Online {
    fn set(&self, uid: &str, on: bool) {
        let mut s = self.0.lock().unwrap();
        if on {
            s.insert(uid.into());
        } else {
            s.remove(uid);
        }
    }
}

struct Rig {
    m: Messaging,
    rec: Arc<Recorder>,
    online: Arc<Online>,
    store: Arc<EmbeddedStore>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn rig_with(limits: Limits, words: Words) -> Rig {
    rig_lanes(limits, words, 1)
}

fn rig_lanes(limits: Limits, words: Words, lanes: usize) -> Rig {
    rig_full(limits, words, lanes, std::time::Duration::from_secs(120))
}

fn rig_full(limits: Limits, words: Words, lanes: usize, recall_window: std::time::Duration) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let rec = Arc::new(Recorder::default());
    let online = Arc::new(Online::default());
    let stop = CancellationToken::new();
    let deps = Deps {
        store: store.clone(),
        dir: store.clone(),
        presence: online.clone(),
        deliver: rec.clone(),
        blacklist: Arc::new(Blacklist::new()),
        words: Arc::new(words),
        limits: Arc::new(limits),
        recall_window,
        before_send: None,
    };
    let (m, _task) = Messaging::start(deps, 64, lanes, stop.clone());
    Rig {
        m,
        rec,
        online,
        store,
        stop,
        _dir: dir,
    }
}

fn no_limits() -> Limits {
    use crate::business::limits::Rate;
    Limits::new(
        Rate {
            per_second: 0,
            burst: 0,
        },
        Rate {
            per_second: 0,
            burst: 0,
        },
    )
}

fn rig() -> Rig {
    rig_with(
        no_limits(),
        Words::load(None, crate::business::words::WordsPolicy::Mask).unwrap(),
    )
}

fn setup() -> (Messaging, Arc<Recorder>, Rig, CancellationToken) {
    let r = rig();
    let (m, rec, stop) = (r.m.clone(), r.rec.clone(), r.stop.clone());
    (m, rec, r, stop)
}

#[tokio::test]
async fn invalid_requests_are_refused_with_their_codes() {
    let (m, rec, _dir, _stop) = setup();
    use shared::protocol::ErrorCode::*;
    let long_cid = "c".repeat(65);
    for (r, code) in [
        (json!({"body": 1}), BadRequest),
        (json!({"to": "b", "conv": "d:a~b", "body": 1}), BadRequest),
        (json!({"to": "b c", "body": 1}), BadRequest),
        (json!({"to": "b"}), BadRequest),
        (json!({"to": "b", "cid": long_cid, "body": 1}), BadRequest),
        (json!({"to": "b", "cid": "", "body": 1}), BadRequest),
        (json!({"conv": "d:b~c", "body": 1}), Forbidden),
        (json!({"conv": "nope", "body": 1}), NotFound),
        (json!({"conv": "g:none", "body": 1}), NotFound),
        (json!({"shop": "s1", "body": 1}), NotFound),
        (json!({"shop": "s 1", "body": 1}), BadRequest),
        (json!({"conv": "s:s1~a", "body": 1}), NotFound),
    ] {
        let err = m
            .send_and_wait(&who("a"), req(r.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{r}");
    }
    assert!(rec.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn sends_commit_deliver_in_order_and_dedupe() {
    let (m, rec, _dir, _stop) = setup();
    let first = m
        .send_and_wait(&who("a"), req(json!({"to": "b", "cid": "k", "body": "x"})))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let again = m
        .send_and_wait(
            &who("a"),
            req(json!({"to": "b", "cid": "k", "body": "other"})),
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.json, first.json);
    // The reply path: b answers into the conversation.
    m.send_and_wait(&who("b"), req(json!({"conv": "d:a~b", "body": "y"})))
        .await
        .unwrap();
    let delivered = rec.0.lock().unwrap().clone();
    assert_eq!(
        delivered,
        [
            (
                "d:a~b".to_string(),
                1,
                vec![("a".to_string(), 1), ("b".to_string(), 1)]
            ),
            (
                "d:a~b".to_string(),
                2,
                vec![("a".to_string(), 2), ("b".to_string(), 2)]
            ),
        ]
    );
    let page = m.sync("b", 0, None).await.unwrap().0;
    assert_eq!(page.items.len(), 2);
    assert_eq!(
        m.history(&who("a"), "d:a~b", 1, None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let err = m.history(&who("c"), "d:a~b", 0, None).await.unwrap_err();
    assert_eq!(err.code(), shared::protocol::ErrorCode::Forbidden);
}

#[tokio::test]
async fn concurrent_sends_are_delivered_in_commit_order() {
    let (m, rec, _dir, _stop) = setup();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.send_and_wait(&who("a"), req(json!({"to": "b", "body": i})))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let delivered = rec.0.lock().unwrap().clone();
    let seqs: Vec<u64> = delivered.iter().map(|d| d.1).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn lanes_keep_each_conversation_in_order() {
    let r = rig_lanes(
        no_limits(),
        Words::load(None, crate::business::words::WordsPolicy::Mask).unwrap(),
        4,
    );
    // Eight senders, each with its own conversation, queueing 25 messages without
    // waiting for their commits; the conversations spread over the lanes and
    // commit side by side.
    let mut tasks = Vec::new();
    for s in 0..8 {
        let m = r.m.clone();
        tasks.push(tokio::spawn(async move {
            let from = who(&format!("s{s}"));
            let mut answers = Vec::new();
            for i in 0..25 {
                let (tx, rx) = oneshot::channel();
                let reply: Reply = Box::new(move |r| drop(tx.send(r)));
                m.send(&from, req(json!({"to": "hub", "body": i})), reply)
                    .await
                    .unwrap();
                answers.push(rx);
            }
            let mut seqs = Vec::new();
            for (i, rx) in answers.into_iter().enumerate() {
                let out = rx.await.unwrap().unwrap();
                let msg: serde_json::Value = serde_json::from_slice(&out.json).unwrap();
                assert_eq!(msg["body"], i);
                seqs.push(msg["seq"].as_u64().unwrap());
            }
            seqs
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            (1..=25).collect::<Vec<u64>>(),
            "in send order"
        );
    }
    // Delivered in commit order within each conversation, and every inbox gapless.
    let delivered = r.rec.0.lock().unwrap().clone();
    for s in 0..8 {
        let conv = direct_conv(&format!("s{s}"), "hub");
        let seqs: Vec<u64> = delivered
            .iter()
            .filter(|d| d.0 == conv)
            .map(|d| d.1)
            .collect();
        assert_eq!(seqs, (1..=25).collect::<Vec<u64>>(), "{conv}");
    }
    let inbox = r.m.sync("hub", 0, Some(1000)).await.unwrap().0;
    let stored: Vec<u64> = inbox.items.iter().map(|(u, _)| *u).collect();
    assert_eq!(stored, (1..=200).collect::<Vec<u64>>());
    let mut useqs: Vec<u64> = delivered
        .iter()
        .flat_map(|d| d.2.iter().filter(|(u, _)| u == "hub").map(|(_, q)| *q))
        .collect();
    useqs.sort();
    assert_eq!(useqs, (1..=200).collect::<Vec<u64>>());
}

#[tokio::test]
async fn shutdown_commits_what_is_queued_then_refuses() {
    let (m, _rec, _dir, stop) = setup();
    m.send_and_wait(&who("a"), req(json!({"to": "b", "body": 1})))
        .await
        .unwrap();
    stop.cancel();
    // Once the task has closed its queue, sends are refused, not lost silently.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match m
            .send_and_wait(&who("a"), req(json!({"to": "b", "body": 2})))
            .await
        {
            Err(Error::ShuttingDown) => break,
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "still accepting after shutdown"
            ),
            Err(e) => panic!("unexpected {e}"),
        }
        tokio::task::yield_now().await;
    }
}

async fn send(m: &Messaging, uid: &str, v: serde_json::Value) -> serde_json::Value {
    let out = m.send_and_wait(&who(uid), req(v)).await.unwrap();
    serde_json::from_slice(&out.json).unwrap()
}

fn sorted<const N: usize>(uids: [&str; N]) -> Vec<String> {
    let mut v: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
    v.sort();
    v
}

/// The `seq`s of the messages in `uid`'s inbox, in inbox order.
async fn inbox_seqs(m: &Messaging, uid: &str) -> Vec<u64> {
    let page = m.sync(uid, 0, None).await.unwrap().0;
    let seq = |j: &Bytes| serde_json::from_slice::<serde_json::Value>(j).unwrap()["seq"].as_u64();
    page.items.iter().map(|(_, j)| seq(j).unwrap()).collect()
}

/// Who received message `seq` of `conv`, per the recorder.
fn receivers(rec: &Recorder, conv: &str, seq: u64) -> Vec<String> {
    let all = rec.0.lock().unwrap();
    let mut out: Vec<String> = all
        .iter()
        .filter(|d| d.0 == conv && d.1 == seq)
        .flat_map(|d| d.2.iter().map(|r| r.0.clone()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn service_assigns_least_loaded_sticks_and_reassigns() {
    let r = rig();
    r.store
        .set_shop_agents("shop", vec!["a1".into(), "a2".into()])
        .await
        .unwrap();
    r.online.set("a1", true);
    r.online.set("a2", true);
    // Two customers: one each, least loaded first.
    let m1 = send(&r.m, "c1", json!({"shop": "shop", "body": "hi"})).await;
    let m2 = send(&r.m, "c2", json!({"shop": "shop", "body": "hi"})).await;
    assert_eq!(m1["conv"], "s:shop~c1");
    let first = receivers(&r.rec, "s:shop~c1", 1);
    let second = receivers(&r.rec, "s:shop~c2", 1);
    assert_eq!(first.len(), 2);
    assert_ne!(first, second, "the second customer goes to the other agent");
    let agent1 = first.iter().find(|u| *u != "c1").unwrap().clone();
    let agent2 = if agent1 == "a1" { "a2" } else { "a1" }.to_owned();
    // The assignment is an event message after the message that caused it.
    assert_eq!(receivers(&r.rec, "s:shop~c1", 2), first);
    // Sticky while online.
    send(&r.m, "c1", json!({"shop": "shop", "body": "again"})).await;
    assert_eq!(receivers(&r.rec, "s:shop~c1", 3), sorted(["c1", &agent1]));
    // The agent replies by conv; an outsider may not.
    send(&r.m, &agent1, json!({"conv": m1["conv"], "body": "hello"})).await;
    let err =
        r.m.send_and_wait(&who("x"), req(json!({"conv": m1["conv"], "body": 1})))
            .await;
    assert_eq!(
        err.unwrap_err().code(),
        shared::protocol::ErrorCode::Forbidden
    );
    // Offline: the next message moves to the other agent, who gets the history.
    r.online.set(&agent1, false);
    send(&r.m, "c1", json!({"shop": "shop", "body": "anyone?"})).await;
    assert_eq!(receivers(&r.rec, "s:shop~c1", 5), sorted(["c1", &agent2]));
    // The reassignment's event reaches the agent it was taken from too.
    assert_eq!(
        receivers(&r.rec, "s:shop~c1", 6),
        sorted(["c1", &agent1, &agent2])
    );
    let history: Vec<u64> = r
        .rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.0 == "s:shop~c1" && d.2.iter().any(|(u, _)| *u == agent2))
        .map(|d| d.1)
        .collect();
    assert_eq!(
        history,
        [1, 2, 3, 4, 5, 6],
        "the new agent received the whole history in order"
    );
    let page =
        r.m.history(&who(&agent2), "s:shop~c1", 0, None)
            .await
            .unwrap();
    assert_eq!(page.items.len(), 6);
    drop(m2);
}

#[tokio::test]
async fn a_waiting_conversation_goes_to_the_first_agent_to_connect() {
    let r = rig();
    r.store
        .set_shop_agents("shop", vec!["a1".into()])
        .await
        .unwrap();
    send(&r.m, "c1", json!({"shop": "shop", "body": "hello?"})).await;
    assert_eq!(receivers(&r.rec, "s:shop~c1", 1), ["c1"]);
    r.online.set("a1", true);
    r.m.connected(&who("a1")).await.unwrap();
    // The join and its `assigned` event commit through the queue; a send after them
    // is delivered after them.
    send(&r.m, "c1", json!({"shop": "shop", "body": "still there?"})).await;
    assert_eq!(inbox_seqs(&r.m, "a1").await, [1, 2, 3]);
}

#[tokio::test]
async fn groups_fan_out_to_members_only() {
    let r = rig();
    r.store
        .set_group_members("team", vec!["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    send(&r.m, "a", json!({"conv": "g:team", "body": "standup"})).await;
    assert_eq!(receivers(&r.rec, "g:team", 1), ["a", "b", "c"]);
    let err =
        r.m.send_and_wait(&who("z"), req(json!({"conv": "g:team", "body": 1})))
            .await;
    assert_eq!(
        err.unwrap_err().code(),
        shared::protocol::ErrorCode::Forbidden
    );
    let err = r.m.history(&who("z"), "g:team", 0, None).await.unwrap_err();
    assert_eq!(err.code(), shared::protocol::ErrorCode::Forbidden);
}

#[tokio::test]
async fn blacklist_words_and_rate_limits_refuse_sends() {
    use crate::business::limits::Rate;
    use crate::business::words::{WordFilter, WordsPolicy};
    let words = Words::load(None, WordsPolicy::Reject).unwrap();
    words.set(WordFilter::new(["SPAM"], WordsPolicy::Reject).unwrap());
    let limits = Limits::new(
        Rate {
            per_second: 1,
            burst: 2,
        },
        Rate {
            per_second: 0,
            burst: 0,
        },
    );
    let r = rig_with(limits, words);
    use shared::protocol::ErrorCode::*;
    let err =
        r.m.send_and_wait(&who("a"), req(json!({"to": "b", "body": "spam!"})))
            .await;
    assert_eq!(err.unwrap_err().code(), BlockedContent);
    r.m.send_and_wait(&who("a"), req(json!({"to": "b", "body": "ok"})))
        .await
        .unwrap();
    let err =
        r.m.send_and_wait(&who("a"), req(json!({"to": "b", "body": "ok"})))
            .await;
    assert_eq!(err.unwrap_err().code(), RateLimited);
    r.m.blacklist().upsert(&shared::admin::BlacklistEntry {
        kind: shared::admin::BlacklistKind::Uid,
        value: "b".into(),
        reason: None,
        expires_at: None,
    });
    let err =
        r.m.send_and_wait(&who("b"), req(json!({"to": "a", "body": "x"})))
            .await;
    assert_eq!(err.unwrap_err().code(), Forbidden);
}

/// Customers of two shops (one agent in both) open conversations all at once, two
/// messages each: shops decide side by side, yet every conversation is assigned
/// once, to one agent, and the open-conversation counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_customers_of_two_shops_are_each_assigned_once() {
    let r = rig();
    let shops = [("s1", ["a1", "a2"]), ("s2", ["a2", "a3"])];
    for (shop, agents) in shops {
        let agents = agents.iter().map(|a| a.to_string()).collect();
        r.store.set_shop_agents(shop, agents).await.unwrap();
    }
    for a in ["a1", "a2", "a3"] {
        r.online.set(a, true);
    }
    let mut sends = tokio::task::JoinSet::new();
    for (shop, _) in shops {
        for c in 0..20 {
            for n in 0..2 {
                let m = r.m.clone();
                let customer = format!("{shop}-c{c}");
                sends.spawn(
                    async move { send(&m, &customer, json!({"shop": shop, "body": n})).await },
                );
            }
        }
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap();
    }
    // Which agents' inboxes hold each conversation.
    let mut holders: std::collections::HashMap<String, Vec<&str>> = Default::default();
    for a in ["a1", "a2", "a3"] {
        let page = r.m.sync(a, 0, Some(1000)).await.unwrap().0;
        let mut convs: Vec<String> = page.items.iter().map(|(_, j)| parse_conv(j)).collect();
        convs.sort();
        convs.dedup();
        for conv in convs {
            holders.entry(conv).or_default().push(a);
        }
    }
    assert_eq!(holders.len(), 40, "every conversation reached an agent");
    for (conv, agents) in &holders {
        assert_eq!(agents.len(), 1, "{conv} went to {agents:?}");
    }
    let agents: Vec<String> = ["a1", "a2", "a3"].map(String::from).to_vec();
    let loads = r.store.agent_loads(&agents).await.unwrap();
    assert_eq!(loads.iter().sum::<u64>(), 40, "loads {loads:?}");
    for (a, load) in agents.iter().zip(&loads) {
        let held = holders.values().filter(|h| h[0] == a.as_str()).count() as u64;
        assert_eq!(*load, held, "{a}'s load");
    }
}

fn parse_conv(json: &Bytes) -> String {
    serde_json::from_slice::<serde_json::Value>(json).unwrap()["conv"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A reassignment and a reply racing for the same conversation: the new agent must
/// still get the whole history, whichever of the two commits first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_racing_a_reassignment_leaves_no_hole_in_the_history() {
    for round in 0..20 {
        let r = rig();
        r.store
            .set_shop_agents("shop", vec!["a1".into(), "a2".into()])
            .await
            .unwrap();
        r.online.set("a1", true);
        for i in 0..3 {
            send(&r.m, "c", json!({"shop": "shop", "body": i})).await;
        }
        r.online.set("a1", false);
        r.online.set("a2", true);
        let (m1, m2) = (r.m.clone(), r.m.clone());
        let customer = tokio::spawn(async move {
            send(&m1, "c", json!({"shop": "shop", "body": "anyone?"})).await
        });
        let agent = tokio::spawn(async move {
            send(&m2, "a2", json!({"conv": "s:shop~c", "body": "here"})).await
        });
        customer.await.unwrap();
        agent.await.unwrap();
        let mut seqs = inbox_seqs(&r.m, "a2").await;
        seqs.sort();
        // Three messages and the first assignment, the customer's message and its
        // reassignment, the reply.
        assert_eq!(
            seqs,
            [1, 2, 3, 4, 5, 6, 7],
            "round {round}: a2's inbox has a hole"
        );
    }
}

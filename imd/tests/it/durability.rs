//! Guarantee 1 against a real process: what was acknowledged to its sender survives
//! `kill -9` and a restart on the same data dir, in history and in every inbox.

use serde_json::json;
use shared::ids::direct_conv;
use shared::protocol::{HistoryResponse, Message};

use crate::common::Imd;

/// The whole history of `conv` as `token`'s user sees it.
async fn history(imd: &Imd, token: &str, conv: &str) -> Vec<Message> {
    let resp = imd.http().history(token, conv, 0, Some(1000)).await;
    let page: HistoryResponse =
        serde_json::from_value(resp.assert_ok().clone()).expect("history body");
    assert!(!page.more);
    page.msgs
}

/// Messages answered with HTTP 200 are all there after kill -9: in the conversation's
/// history and in every member's inbox, with the same ids, seqs and useqs; and seq and
/// useq go on from there. The commit log holds them (`--store-log`, the default) and
/// the restart applies what its indexer had not written. The restart needed no repair
/// of the store: every commit recorded what a repair would rebuild
/// (`--store-quick-repair`, the default).
#[tokio::test]
async fn http_acknowledged_messages_survive_kill_9() {
    let imd = acknowledged_messages_survive_kill_9(&[]).await;
    assert!(!imd.stderr().contains(REPAIRING), "{}", imd.stderr());
}

/// The same with `--store-quick-repair false`: the restart repaired the store (a walk
/// of its whole file) and lost nothing either.
#[tokio::test]
async fn without_quick_repair_acknowledged_messages_survive_kill_9_and_a_repair() {
    let imd = acknowledged_messages_survive_kill_9(&["--store-quick-repair", "false"]).await;
    assert!(imd.stderr().contains(REPAIRING), "no repair logged");
}

/// The same with each commit writing the tables itself (`--store-log false`).
#[tokio::test]
async fn without_the_log_acknowledged_messages_survive_kill_9() {
    let imd = acknowledged_messages_survive_kill_9(&["--store-log", "false"]).await;
    assert!(!imd.stderr().contains(REPAIRING), "{}", imd.stderr());
}

/// What imd logs while it repairs its store after a crash.
const REPAIRING: &str = "the store was not shut down cleanly";

async fn acknowledged_messages_survive_kill_9(args: &[&str]) -> Imd {
    let mut imd = Imd::start(args);
    // Tokens are signed with the secret generated into the data dir, so they outlive
    // the process.
    let alice = imd.token("alice", "a1");
    let bob = imd.token("bob", "b1");
    let carol = imd.token("carol", "c1");

    let http = imd.http();
    let mut ab = Vec::new();
    let mut ac = Vec::new();
    for i in 0..10 {
        ab.push(
            http.send_to(&alice, "bob", Some(&format!("ab{i}")), json!(i))
                .await,
        );
        ab.push(http.send_to(&bob, "alice", None, json!({"reply": i})).await);
        if i % 2 == 0 {
            ac.push(http.send_to(&alice, "carol", None, json!(["c", i])).await);
        }
    }
    let mut alice_inbox = Vec::new();
    for i in 0..10 {
        alice_inbox.extend_from_slice(&ab[2 * i..2 * i + 2]);
        if i % 2 == 0 {
            alice_inbox.push(ac[i / 2].clone());
        }
    }

    imd.kill9();
    imd.restart();
    let http = imd.http();

    let ab_conv = direct_conv("alice", "bob");
    assert_eq!(history(&imd, &alice, &ab_conv).await, ab);
    assert_eq!(history(&imd, &bob, &ab_conv).await, ab);
    assert_eq!(
        history(&imd, &carol, &direct_conv("alice", "carol")).await,
        ac
    );

    for (who, token, want) in [
        ("alice", &alice, &alice_inbox),
        ("bob", &bob, &ab),
        ("carol", &carol, &ac),
    ] {
        let inbox = http.sync_all(token, 0, 8).await;
        let useqs: Vec<u64> = inbox.iter().map(|i| i.useq).collect();
        assert_eq!(
            useqs,
            (1..=want.len() as u64).collect::<Vec<_>>(),
            "{who}'s useqs"
        );
        let msgs: Vec<&Message> = inbox.iter().map(|i| &i.msg).collect();
        assert_eq!(msgs, want.iter().collect::<Vec<_>>(), "{who}'s inbox");
    }

    // Counters go on after the last committed value: no seq or useq is reused.
    let next = http
        .send_to(&alice, "bob", None, json!("after restart"))
        .await;
    assert_eq!(next.seq, ab.len() as u64 + 1);
    let tail = http.sync(&bob, ab.len() as u64, None).await;
    assert_eq!(tail.msgs.len(), 1);
    assert_eq!(
        (tail.msgs[0].useq, &tail.msgs[0].msg),
        (ab.len() as u64 + 1, &next)
    );
    // A resent cid is still known after the crash.
    let again = http.send_to(&alice, "bob", Some("ab3"), json!(3)).await;
    assert_eq!(again, ab[6]);
    imd
}

/// Messages answered with a `sent` frame survive a kill -9 that comes right after the
/// last `sent` (which usually finds records the indexer has not written), and pushes
/// after the restart go on from the stored useq.
#[tokio::test]
async fn ws_sent_messages_survive_kill_9() {
    ws_sent_messages_survive_kill_9_with(&[]).await;
}

/// The same with each commit writing the tables itself (`--store-log false`).
#[tokio::test]
async fn without_the_log_ws_sent_messages_survive_kill_9() {
    ws_sent_messages_survive_kill_9_with(&["--store-log", "false"]).await;
}

async fn ws_sent_messages_survive_kill_9_with(args: &[&str]) {
    let mut imd = Imd::start(args);
    let bob = imd.token("bob", "b1");
    let mut alice = imd.ws_as("alice", "a1").await;
    for i in 0..20 {
        alice.send_to("bob", &format!("w{i}"), json!(i)).await;
    }
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(alice.expect_sent(&format!("w{i}")).await);
    }
    sent.sort_by_key(|m| m.seq);
    imd.kill9();
    drop(alice);

    imd.restart();
    let conv = direct_conv("alice", "bob");
    assert_eq!(history(&imd, &bob, &conv).await, sent);
    let inbox = imd.http().sync_all(&bob, 0, 1000).await;
    assert_eq!(
        inbox.iter().map(|i| &i.msg).collect::<Vec<_>>(),
        sent.iter().collect::<Vec<_>>()
    );

    let mut bob_ws = imd.ws(&bob).await;
    let mut alice = imd.ws_as("alice", "a1").await;
    alice.send_to("bob", "w-after", json!("after")).await;
    let after = alice.expect_sent("w-after").await;
    assert_eq!(after.seq, 21);
    let (useq, msg) = bob_ws.expect_push().await;
    assert_eq!((useq, &msg), (21, &after));
    bob_ws.ack(&[useq]).await;
}

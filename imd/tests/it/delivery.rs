//! Delivery guarantees against a real `imd` process: fan-out to every device, order,
//! idempotent resends, acks and retransmits, and sync after a reconnect.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::ids::direct_conv;

use crate::common::{FRAME_DEADLINE, Imd, metric, wait_until};

/// Guarantee 2: every device of every member gets the push, the sending device too,
/// whether the message came over WebSocket or HTTP; a non-member gets nothing.
#[tokio::test]
async fn every_device_of_every_member_gets_each_push_sender_included() {
    let imd = Imd::start(&[]);
    let mut a1 = imd.ws_as("alice", "a1").await;
    let mut a2 = imd.ws_as("alice", "a2").await;
    let mut b1 = imd.ws_as("bob", "b1").await;
    let mut b2 = imd.ws_as("bob", "b2").await;
    let mut carol = imd.ws_as("carol", "c1").await;

    a1.send_to("bob", "m-1", json!({"text": "hi"})).await;
    let sent = a1.expect_sent("m-1").await;
    assert_eq!(sent.conv, direct_conv("alice", "bob"));
    assert_eq!(sent.seq, 1);
    assert_eq!(sent.from, "alice");
    assert_eq!(sent.body.clone().unwrap_or_default(), json!({"text": "hi"}));
    assert_eq!(sent.cid.as_deref(), Some("m-1"));
    for (name, dev) in [
        ("a1", &mut a1),
        ("a2", &mut a2),
        ("b1", &mut b1),
        ("b2", &mut b2),
    ] {
        let (useq, msg) = dev.expect_push().await;
        assert_eq!(useq, 1, "{name}: first item of the inbox");
        assert_eq!(msg, sent, "{name}: pushed message");
        dev.ack(&[useq]).await;
    }

    // Over HTTP, from a device of bob that is also connected: all four devices again.
    let b2_token = imd.token("bob", "b2");
    let reply = imd
        .http()
        .send_to(&b2_token, "alice", Some("m-2"), json!("hello"))
        .await;
    assert_eq!(reply.conv, direct_conv("alice", "bob"));
    assert_eq!(reply.seq, 2);
    assert_eq!(reply.from, "bob");
    for (name, dev) in [
        ("a1", &mut a1),
        ("a2", &mut a2),
        ("b1", &mut b1),
        ("b2", &mut b2),
    ] {
        let (useq, msg) = dev.expect_push().await;
        assert_eq!(useq, 2, "{name}: second item of the inbox");
        assert_eq!(msg, reply, "{name}: pushed message");
        dev.ack(&[useq]).await;
    }

    // Every member's push has arrived; carol's own round trip comes after anything that
    // was queued for her, and nothing was.
    carol.ping_pong().await;
    assert!(carol.take_pending().is_empty(), "a non-member got a frame");
}

/// Pushes arrive in inbox order: 100 messages give useq 1..=100 and seq 1..=100 with no
/// gap, to the receiver and to the sender's own device.
#[tokio::test]
async fn hundred_messages_arrive_with_gapless_increasing_useq_and_seq() {
    let imd = Imd::start(&[]);
    let mut alice = imd.ws_as("alice", "a1").await;
    let mut bob = imd.ws_as("bob", "b1").await;
    const N: u64 = 100;
    for i in 0..N {
        alice.send_to("bob", &format!("c{i}"), json!(i)).await;
    }

    let mut bob_ids = Vec::new();
    let mut bodies = BTreeSet::new();
    for n in 1..=N {
        let (useq, msg) = bob.expect_push().await;
        assert_eq!((useq, msg.seq), (n, n), "bob's push #{n}");
        bob.ack(&[useq]).await;
        bodies.insert(
            msg.body
                .clone()
                .unwrap_or_default()
                .as_u64()
                .expect("numeric body"),
        );
        bob_ids.push(msg.id);
    }
    assert_eq!(
        bodies,
        (0..N).collect::<BTreeSet<_>>(),
        "every message arrived once"
    );

    let mut alice_ids = Vec::new();
    for n in 1..=N {
        let (useq, msg) = alice.expect_push().await;
        assert_eq!((useq, msg.seq), (n, n), "alice's own push #{n}");
        alice.ack(&[useq]).await;
        alice_ids.push(msg.id);
    }
    assert_eq!(
        alice_ids, bob_ids,
        "both inboxes hold the same messages in the same order"
    );

    let mut seqs = BTreeSet::new();
    for i in 0..N {
        let msg = alice.expect_sent(&format!("c{i}")).await;
        assert_eq!(msg.body.clone().unwrap_or_default(), json!(i), "sent c{i}");
        assert_eq!(
            bob_ids[msg.seq as usize - 1],
            msg.id,
            "seq of c{i} is its inbox position"
        );
        seqs.insert(msg.seq);
    }
    assert_eq!(seqs, (1..=N).collect::<BTreeSet<_>>());
}

/// Guarantee 3 over WebSocket: the same cid twice returns the first message, pushes
/// nothing new and adds one inbox entry; another sender's equal cid is its own message.
#[tokio::test]
async fn resending_a_cid_over_ws_returns_the_first_message() {
    let imd = Imd::start(&[]);
    let mut alice = imd.ws_as("alice", "a1").await;
    let mut bob = imd.ws_as("bob", "b1").await;

    alice.send_to("bob", "dup", json!("once")).await;
    let first = alice.expect_sent("dup").await;
    let (useq, pushed) = bob.expect_push().await;
    assert_eq!((useq, &pushed), (1, &first));
    bob.ack(&[useq]).await;

    alice.send_to("bob", "dup", json!("once")).await;
    let again = alice.expect_sent("dup").await;
    assert_eq!(again, first, "the resend answers with the first message");

    alice.send_to("bob", "next", json!("twice")).await;
    let next = alice.expect_sent("next").await;
    assert_eq!(next.seq, 2, "the resend took no seq");
    let (useq, pushed) = bob.expect_push().await;
    assert_eq!(
        (useq, pushed.id.as_str()),
        (2, next.id.as_str()),
        "the resend pushed nothing"
    );
    bob.ack(&[useq]).await;

    // A cid belongs to its sender: bob's "dup" is a new message.
    bob.send_to("alice", "dup", json!("bob's own")).await;
    let bobs = bob.expect_sent("dup").await;
    assert_ne!(bobs.id, first.id);
    assert_eq!(bobs.seq, 3);

    let bob_token = imd.token("bob", "b9");
    let inbox = imd.http().sync_all(&bob_token, 0, 100).await;
    let ids: Vec<_> = inbox.iter().map(|i| (i.useq, i.msg.id.clone())).collect();
    assert_eq!(ids, vec![(1, first.id), (2, next.id), (3, bobs.id)]);
}

/// Guarantee 3 over HTTP, and across transports: same sender, same cid, same message.
#[tokio::test]
async fn resending_a_cid_over_http_returns_the_first_message() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let alice = imd.token("alice", "a1");
    let bob = imd.token("bob", "b1");

    let first = http
        .send_to(&alice, "bob", Some("h-1"), json!({"n": 1}))
        .await;
    let again = http
        .send_to(&alice, "bob", Some("h-1"), json!({"n": 1}))
        .await;
    assert_eq!(again, first);

    // Sent over WebSocket from another device of alice, then resent over HTTP.
    let mut ws = imd.ws_as("alice", "a2").await;
    ws.send_to("bob", "w-1", json!({"n": 2})).await;
    let over_ws = ws.expect_sent("w-1").await;
    let over_http = http
        .send_to(&alice, "bob", Some("w-1"), json!({"n": 2}))
        .await;
    assert_eq!(over_http, over_ws);

    let inbox = http.sync_all(&bob, 0, 100).await;
    let got: Vec<_> = inbox.iter().map(|i| (i.useq, i.msg.id.as_str())).collect();
    assert_eq!(got, vec![(1, first.id.as_str()), (2, over_ws.id.as_str())]);
    let history = http
        .history(&bob, &direct_conv("alice", "bob"), 0, None)
        .await;
    assert_eq!(
        history.assert_ok()["msgs"].as_array().map(Vec::len),
        Some(2)
    );
}

/// An unacked push is sent 1 + `--ack-retries` times, `--ack-timeout` apart, then no
/// more; the message stays in the inbox for `sync`.
#[tokio::test]
async fn unacked_push_is_resent_ack_retries_times_then_left_to_sync() {
    const ACK_TIMEOUT: Duration = Duration::from_millis(300);
    let imd = Imd::start(&["--ack-timeout", "300ms", "--ack-retries", "2"]);
    let mut bob = imd.ws_as("bob", "b1").await;
    let alice = imd.token("alice", "a1");
    let sent = imd
        .http()
        .send_to(&alice, "bob", Some("r-1"), json!("hi"))
        .await;

    let mut times = Vec::new();
    for n in 1..=3 {
        let (useq, msg) = bob.expect_push_within(FRAME_DEADLINE).await;
        times.push(Instant::now());
        assert_eq!((useq, msg.id.as_str()), (1, sent.id.as_str()), "send #{n}");
    }
    for w in times.windows(2) {
        // Timers never fire early; the margin is for when the first push was read late.
        assert!(
            w[1] - w[0] >= ACK_TIMEOUT / 2,
            "resent after {:?}, before the ack timeout",
            w[1] - w[0]
        );
    }
    // Long enough for a fourth send even if the timeout doubled after each retry.
    bob.expect_no_frame_for(ACK_TIMEOUT * 7).await;

    let (items, more) = bob.sync(0, None).await;
    assert!(!more);
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].useq, &items[0].msg),
        (1, &sent),
        "the message waits in the inbox"
    );

    let http = imd.http();
    wait_until(FRAME_DEADLINE, "retransmit metrics", || async {
        let text = http.metrics().await;
        metric(&text, "imd_retransmits_total").unwrap_or(0.0) >= 2.0
            && metric(&text, "imd_ack_timeouts_total").unwrap_or(0.0) >= 1.0
    })
    .await;
}

/// An ack stops the resends of that device; a device that does not ack keeps getting them.
#[tokio::test]
async fn ack_stops_retransmit_per_device() {
    const ACK_TIMEOUT: Duration = Duration::from_millis(300);
    let imd = Imd::start(&["--ack-timeout", "300ms", "--ack-retries", "2"]);
    let mut acking = imd.ws_as("bob", "b1").await;
    let mut silent = imd.ws_as("bob", "b2").await;
    let alice = imd.token("alice", "a1");
    let sent = imd.http().send_to(&alice, "bob", None, json!("hi")).await;

    let (useq, msg) = acking.expect_push().await;
    assert_eq!((useq, msg.id.as_str()), (1, sent.id.as_str()));
    acking.ack(&[useq]).await;

    for n in 1..=3 {
        let (useq, _) = silent.expect_push().await;
        assert_eq!(useq, 1, "the silent device's send #{n}");
    }
    // By now the ack timeout has passed twice: the acking device would have seen a resend.
    acking.expect_no_frame_for(ACK_TIMEOUT * 3).await;

    let http = imd.http();
    wait_until(FRAME_DEADLINE, "imd_acks_total >= 1", || async {
        metric(&http.metrics().await, "imd_acks_total").unwrap_or(0.0) >= 1.0
    })
    .await;
}

/// Guarantee 2 for offline devices: after a reconnect, `sync` from the last useq seen
/// returns everything missed, paged by `limit` with `more`.
#[tokio::test]
async fn reconnected_device_syncs_everything_it_missed_in_pages() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let alice = imd.token("alice", "a1");
    let bob_token = imd.token("bob", "b1");

    let mut bob = imd.ws(&bob_token).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(http.send_to(&alice, "bob", None, json!(i)).await);
    }
    for n in 1..=5 {
        let (useq, msg) = bob.expect_push().await;
        assert_eq!((useq, &msg), (n, &sent[n as usize - 1]));
        bob.ack(&[useq]).await;
    }
    bob.close().await;

    for i in 5..30 {
        sent.push(http.send_to(&alice, "bob", None, json!(i)).await);
    }

    let mut bob = imd.ws(&bob_token).await;
    let mut after = 5;
    for (len, more) in [(10, true), (10, true), (5, false)] {
        let (items, got_more) = bob.sync(after, Some(10)).await;
        assert_eq!((items.len(), got_more), (len, more), "page after {after}");
        for item in items {
            after += 1;
            assert_eq!(item.useq, after, "gapless useq");
            assert_eq!(item.msg, sent[after as usize - 1]);
        }
    }
    assert_eq!(after, 30);

    // A device that was never online reads the same inbox over HTTP.
    let other = imd.token("bob", "b2");
    let all = http.sync_all(&other, 0, 7).await;
    let useqs: Vec<u64> = all.iter().map(|i| i.useq).collect();
    assert_eq!(useqs, (1..=30).collect::<Vec<_>>());
    assert!(all.iter().zip(&sent).all(|(i, m)| &i.msg == m));
    // A page that ends exactly at the last item says there is no more.
    let last = http.sync(&other, 10, Some(20)).await;
    assert_eq!((last.msgs.len(), last.more), (20, false));
    // The sender's inbox holds its own messages too.
    let own = http.sync_all(&alice, 0, 1000).await;
    assert_eq!(own.len(), 30);
}

//! Read positions, typing, recall, the conversation list and presence, over a real
//! embedded store: what each notifies, and whom.

use serde_json::{Value, json};
use shared::protocol::ErrorCode;

use super::*;

fn read_frame(conv: &str, uid: &str, seq: u64) -> Value {
    json!({"type": "read", "conv": conv, "uid": uid, "seq": seq})
}

fn uids<const N: usize>(u: [&str; N]) -> Vec<String> {
    sorted(u)
}

#[tokio::test]
async fn a_read_moves_forward_clamped_and_tells_the_reader_and_the_peer() {
    let r = rig();
    for text in ["a", "b", "c"] {
        send(&r.m, "bob", json!({"to": "alice", "body": text})).await;
    }
    r.rec.notices();
    let conv = "d:alice~bob";
    assert_eq!(r.m.read_and_wait(&who("alice"), conv, 2).await.unwrap(), 2);
    assert_eq!(
        r.rec.notices(),
        [(uids(["alice", "bob"]), read_frame(conv, "alice", 2))]
    );
    // Backward: stays, and tells nobody.
    assert_eq!(r.m.read_and_wait(&who("alice"), conv, 1).await.unwrap(), 2);
    // Past the end: clamped.
    assert_eq!(r.m.read_and_wait(&who("alice"), conv, 99).await.unwrap(), 3);
    assert_eq!(
        r.rec.notices(),
        [(uids(["alice", "bob"]), read_frame(conv, "alice", 3))]
    );
    let code = |r: Result<u64, Error>| r.unwrap_err().code();
    assert_eq!(
        code(r.m.read_and_wait(&who("eve"), conv, 1).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(r.m.read_and_wait(&who("alice"), "nope", 1).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn a_group_read_tells_only_the_reader() {
    let r = rig();
    r.store
        .set_group_members("g", vec!["a".into(), "b".into(), "c".into()])
        .await
        .unwrap();
    send(&r.m, "a", json!({"conv": "g:g", "body": 1})).await;
    r.rec.notices();
    r.m.read_and_wait(&who("b"), "g:g", 1).await.unwrap();
    assert_eq!(r.rec.notices(), [(uids(["b"]), read_frame("g:g", "b", 1))]);
}

#[tokio::test]
async fn unread_counts_leave_out_own_messages_and_events() {
    let r = rig();
    r.store
        .set_shop_agents("shop", vec!["ann".into()])
        .await
        .unwrap();
    r.online.set("ann", true);
    // 1: the customer's message; 2: ann assigned; 3: ann's reply; 4: the customer.
    send(&r.m, "cu", json!({"shop": "shop", "body": "hi"})).await;
    send(&r.m, "ann", json!({"conv": "s:shop~cu", "body": "hello"})).await;
    send(
        &r.m,
        "cu",
        json!({"shop": "shop", "body": "is it in stock?"}),
    )
    .await;
    let list = |uid: &'static str| {
        let m = r.m.clone();
        async move { m.conversations(&who(uid), None, None).await.unwrap() }
    };
    let ann = list("ann").await;
    let e = &ann.convs[0];
    // ann's reply moved her position to 3: only the customer's last message is unread.
    assert_eq!((e.read_seq, e.unread, e.peer_read_seq), (3, 1, Some(4)));
    assert_eq!(e.last.seq, 4);
    let cu = list("cu").await;
    let e = &cu.convs[0];
    // The customer read up to 4 by sending it; the event is not unread either way.
    assert_eq!((e.read_seq, e.unread, e.peer_read_seq), (4, 0, Some(3)));
    assert_eq!(
        r.m.read_and_wait(&who("ann"), "s:shop~cu", 4)
            .await
            .unwrap(),
        4
    );
    assert_eq!(list("ann").await.convs[0].unread, 0);
}

#[tokio::test]
async fn typing_reaches_the_others_once_a_second_and_not_from_outsiders() {
    let limits = Limits::new(
        crate::business::limits::Rate {
            per_second: 0,
            burst: 0,
        },
        crate::business::limits::Rate {
            per_second: 0,
            burst: 0,
        },
    );
    let r = rig_with(
        limits,
        Words::load(None, crate::business::words::WordsPolicy::Mask).unwrap(),
    );
    send(&r.m, "bob", json!({"to": "alice", "body": "hi"})).await;
    for _ in 0..5 {
        r.m.typing(&who("alice"), "d:alice~bob").await.unwrap();
    }
    let typing = json!({"type": "typing", "conv": "d:alice~bob", "uid": "alice"});
    assert_eq!(r.rec.notices(), [(uids(["bob"]), typing)]);
    let err = r.m.typing(&who("eve"), "d:alice~bob").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Forbidden);
}

#[tokio::test]
async fn only_the_sender_recalls_and_only_within_the_window() {
    let r = rig_full(
        no_limits(),
        Words::load(None, crate::business::words::WordsPolicy::Mask).unwrap(),
        1,
        std::time::Duration::ZERO,
    );
    let sent = send(&r.m, "bob", json!({"to": "alice", "body": "oops"})).await;
    let recall = |uid: &'static str, seq: u64| {
        let m = r.m.clone();
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            m.recall(
                &who(uid),
                "d:alice~bob",
                seq,
                Box::new(move |r| drop(tx.send(r))),
            )
            .await?;
            rx.await.unwrap()
        }
    };
    // A window of zero: recallable within the millisecond of its commit only.
    let ts = sent["ts"].as_i64().unwrap();
    while shared::time::now_ms() <= ts {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        recall("bob", 1).await.unwrap_err().code(),
        ErrorCode::Forbidden
    );
    assert_eq!(
        recall("alice", 1).await.unwrap_err().code(),
        ErrorCode::Forbidden
    );
    assert_eq!(
        recall("bob", 7).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(
        recall("eve", 1).await.unwrap_err().code(),
        ErrorCode::Forbidden
    );
    // An admin recalls whatever and whenever.
    r.m.recall_any("d:alice~bob", 1).await.unwrap();
    let page =
        r.m.history(&who("alice"), "d:alice~bob", 0, None)
            .await
            .unwrap();
    let msgs: Vec<Value> = page
        .items
        .iter()
        .map(|j| serde_json::from_slice(j).unwrap())
        .collect();
    assert_eq!(msgs[0]["recalled"], true);
    assert!(msgs[0].get("body").is_none(), "{}", msgs[0]);
    assert_eq!(
        msgs[1]["event"],
        json!({"type": "recalled", "seq": 1, "by": "admin"})
    );
    assert_eq!(msgs[1]["from"], "bob");
}

#[tokio::test]
async fn presence_is_told_only_to_those_who_share_a_conversation() {
    let r = rig();
    r.store
        .set_group_members("g", vec!["a".into(), "c".into()])
        .await
        .unwrap();
    send(&r.m, "a", json!({"to": "b", "body": "hi"})).await;
    for u in ["b", "c", "d"] {
        r.online.set(u, true);
    }
    let asked = ["b", "c", "d", "b"].map(String::from).to_vec();
    let got = r.m.presence(&who("a"), asked).await.unwrap();
    let told: Vec<(&str, bool)> = got
        .users
        .iter()
        .map(|u| (u.uid.as_str(), u.online))
        .collect();
    assert_eq!(told, [("b", true), ("c", true)], "d shares nothing with a");
    let many = (0..=PRESENCE_MAX).map(|i| format!("u{i}")).collect();
    let err = r.m.presence(&who("a"), many).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
}

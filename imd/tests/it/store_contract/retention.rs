//! The store contract's properties of retention and erasure: a trim removes what is
//! older than its cutoff from the head of every conversation and inbox and from the
//! lists, reads that start before what is kept say `trimmed`, sequences go on, and a
//! second pass finds nothing; an erasure takes the bodies of a sender's messages from
//! the conversations and every inbox copy, and a second one changes nothing. The
//! messages carry the commit times the test gives them, so nothing waits for a clock.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use imd::store::{CommitOutcome, MessageStore, Op, Recall, RecallRefused, TrimPass};
use serde_json::json;
use shared::protocol::{Event, Message};

use super::{Backend, new, new_msg, parse, whole_inbox};

/// A body message from `from` committed at `ts`, with `cid`.
fn at(conv: &str, from: &str, cid: Option<&str>, ts: i64, members: &[&str]) -> Op {
    let mut m = new_msg(conv, from, cid, json!({"t": from}), members);
    m.ts = ts;
    Op::Message(m)
}

/// A whole pass with cutoff `before`; returns how many entries it removed.
async fn pass(s: &dyn MessageStore, before: i64) -> u64 {
    let mut pass = TrimPass::default();
    let mut removed = 0;
    let mut steps = 0;
    while !pass.done() {
        // A small budget, so that a pass takes several steps.
        removed += s.trim(before, 3, &mut pass).await.expect("trim");
        steps += 1;
        assert!(steps < 10_000, "the pass does not end");
    }
    removed
}

/// `(seqs, trimmed)` of a history read after `after`.
async fn history(s: &dyn MessageStore, conv: &str, after: u64) -> (Vec<u64>, bool) {
    let page = s.history(conv, after, 100).await.expect("history");
    let seqs = page.items.iter().map(|j| parse(j).seq).collect();
    (seqs, page.trimmed)
}

/// `(useqs, trimmed)` of an inbox read after `after`.
async fn inbox(s: &dyn MessageStore, uid: &str, after: u64) -> (Vec<u64>, bool) {
    let page = s.inbox(uid, after, 100).await.expect("inbox");
    (page.items.iter().map(|i| i.0).collect(), page.trimmed)
}

/// The conversations of `uid`'s list, with their unread counts.
async fn list(s: &dyn MessageStore, uid: &str) -> Vec<(String, u64)> {
    let page = s.conversations(uid, None, 100).await.expect("list");
    page.items.into_iter().map(|e| (e.conv, e.unread)).collect()
}

/// A trim removes the messages older than its cutoff from their conversations and the
/// members' inboxes (the heads only), and the conversations left empty from the lists;
/// reads from before what is kept start at the oldest kept one and say `trimmed`;
/// unread counts count what is kept; seqs and useqs go on; a recall or an idempotency
/// key naming a removed message finds none; a second pass removes nothing.
pub(super) async fn trim_removes_old_messages_everywhere(b: Backend) {
    let s = &*b.store;
    let g = &["a", "b", "c"];
    // Old, each inbox's head: a has 5 entries, b 4, c 2.
    s.commit(vec![
        at("d:a~b", "a", Some("k1"), 1_000, &["a", "b"]),
        at("d:a~b", "b", None, 1_001, &["a", "b"]),
        at("d:a~b", "a", None, 1_002, &["a", "b"]),
        at("g:x", "c", None, 1_003, g),
        at("d:a~c", "a", None, 1_004, &["a", "c"]),
    ])
    .await
    .unwrap();
    // Kept.
    s.commit(vec![
        at("d:a~b", "b", None, 5_000, &["a", "b"]),
        at("d:a~b", "a", None, 5_001, &["a", "b"]),
        at("g:x", "a", None, 5_002, g),
    ])
    .await
    .unwrap();
    assert_eq!(history(s, "d:a~b", 0).await, (vec![1, 2, 3, 4, 5], false));

    // 5 messages, and 5 + 4 + 2 inbox entries.
    assert_eq!(pass(s, 3_000).await, 16);

    assert_eq!(history(s, "d:a~b", 0).await, (vec![4, 5], true));
    assert_eq!(history(s, "d:a~b", 2).await, (vec![4, 5], true));
    assert_eq!(history(s, "d:a~b", 3).await, (vec![4, 5], false));
    assert_eq!(history(s, "d:a~b", 4).await, (vec![5], false));
    assert_eq!(history(s, "g:x", 0).await, (vec![2], true));
    assert_eq!(history(s, "d:a~c", 0).await, (vec![], true));
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 5);
    assert_eq!(s.last_seq("d:a~c").await.unwrap(), 1);

    assert_eq!(inbox(s, "a", 0).await, (vec![6, 7, 8], true));
    assert_eq!(inbox(s, "a", 5).await, (vec![6, 7, 8], false));
    assert_eq!(inbox(s, "a", 6).await, (vec![7, 8], false));
    assert_eq!(inbox(s, "b", 0).await, (vec![5, 6, 7], true));
    assert_eq!(inbox(s, "c", 0).await, (vec![3], true));
    assert_eq!(inbox(s, "nobody", 0).await, (vec![], false));

    // c's direct conversation left with its messages; b's unread counts what is kept
    // (its own message at 4 is read: 5 is not; g:x's kept message is not).
    let mut c_list = list(s, "c").await;
    c_list.sort();
    assert_eq!(c_list, [("g:x".to_string(), 1)]);
    let mut b_list = list(s, "b").await;
    b_list.sort();
    assert_eq!(b_list, [("d:a~b".to_string(), 1), ("g:x".to_string(), 1)]);
    assert!(!s.in_conversations("c", "d:a~c").await.unwrap());

    // A removed message cannot be recalled.
    let mut event = new_msg("d:a~b", "a", None, json!(null), &["a", "b"]);
    event.content = imd::store::Content::Event(Event::Recalled { seq: 1, by: None });
    let out = s
        .commit(vec![Op::Recall(Recall {
            conv: "d:a~b".into(),
            seq: 1,
            sender: Some("a".into()),
            not_before: i64::MIN,
            holders: vec!["a".into(), "b".into()],
            event,
        })])
        .await
        .unwrap();
    assert!(matches!(
        out[0],
        CommitOutcome::Recalled(Err(RecallRefused::NotFound))
    ));

    // Sequences go on; the conversation comes back to c's list.
    let out = s
        .commit(vec![at("d:a~c", "a", None, 6_000, &["a", "c"])])
        .await
        .unwrap();
    let c = new(&out[0]);
    assert_eq!(c.seq, 2);
    assert_eq!(c.recipients, [("a".into(), 9), ("c".into(), 4)]);
    assert_eq!(history(s, "d:a~c", 0).await, (vec![2], true));
    assert_eq!(inbox(s, "c", 0).await, (vec![3, 4], true));
    assert!(s.in_conversations("c", "d:a~c").await.unwrap());

    // The idempotency key of a removed message deduplicates no more.
    let out = s
        .commit(vec![at("d:a~b", "a", Some("k1"), 6_001, &["a", "b"])])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).seq, 6, "a new message, not a duplicate");

    // Nothing more is older than the cutoff.
    assert_eq!(pass(s, 3_000).await, 0);
    assert_eq!(inbox(s, "a", 0).await, (vec![6, 7, 8, 9, 10], true));
}

/// On Redis, whose fan-out runs after a message is stored: a trim never removes a
/// message whose fan-out is pending (a writer died before it); once swept, it goes.
pub(super) async fn trim_waits_for_a_pending_fan_out(b: Backend) {
    let dead = b.another().await;
    let s = &*b.store;
    let mut old = new_msg("d:a~b", "a", None, json!({"t": 1}), &["a", "b"]);
    old.ts = 1_000;
    dead.commit_unfanned(vec![Op::Message(old)]).await.unwrap();
    assert_eq!(pass(s, 3_000).await, 0, "pending: kept");
    assert_eq!(history(s, "d:a~b", 0).await, (vec![1], false));

    let end = Instant::now() + Duration::from_secs(15);
    while dead.pending_fanouts("d:a~b").await.unwrap() > 0 {
        dead.sweep().await.unwrap();
        assert!(Instant::now() < end, "the sweeper finished nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(inbox(s, "b", 0).await, (vec![1], false));
    // The next pass (a later cutoff) removes it.
    assert_eq!(pass(s, 3_001).await, 1);
    assert_eq!(history(s, "d:a~b", 0).await, (vec![], true));
    // The first pass found the inboxes empty: what the sweep wrote into them later is
    // looked at by the passes after that visit (a sweep comes seconds after a commit).
    assert_eq!(pass(s, testkit::now_ms() + 1_000).await, 2);
    assert_eq!(inbox(s, "b", 0).await, (vec![], true));
}

/// Whether a stored message's JSON is an erased tombstone of it.
fn is_erased(json: &Bytes) -> bool {
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    v.get("erased") == Some(&json!(true)) && v.get("body").is_none()
}

/// An erasure replaces each of the sender's messages by its tombstone (no body,
/// `"erased": true`, the same id, seq and time) in the conversation and in every
/// inbox; others' messages, events and recalled ones stay as they were; a second one
/// changes nothing.
pub(super) async fn erase_takes_the_bodies_everywhere(b: Backend) {
    let s = &*b.store;
    let g = &["a", "b", "c"];
    let out = s
        .commit(vec![
            at("d:a~b", "a", None, 1_000, &["a", "b"]),
            at("d:a~b", "b", None, 1_001, &["a", "b"]),
            at("g:x", "a", Some("k"), 1_002, g),
            at("g:x", "c", None, 1_003, g),
            at("d:a~b", "a", None, 1_004, &["a", "b"]),
        ])
        .await
        .unwrap();
    let original = parse(&new(&out[0]).json);

    assert_eq!(s.erase("d:a~b", "a", &[1, 2, 3, 9]).await.unwrap(), 2);
    assert_eq!(s.erase("g:x", "a", &[1, 2]).await.unwrap(), 1);
    let targets: HashSet<(String, u64)> = [("d:a~b", 1), ("d:a~b", 3), ("g:x", 1)]
        .into_iter()
        .map(|(c, s)| (c.to_string(), s))
        .collect();
    for uid in ["b", "c", "a"] {
        s.erase_copies(uid, &targets).await.unwrap();
    }

    let h = s.history("d:a~b", 0, 100).await.unwrap().items;
    assert_eq!(
        h.iter().map(is_erased).collect::<Vec<_>>(),
        [true, false, true]
    );
    let m: Message = parse(&h[0]);
    assert_eq!(
        (m.id, m.seq, m.from, m.ts, m.erased, m.recalled),
        (original.id, 1, "a".into(), 1_000, true, false)
    );
    for uid in g {
        for (useq, json) in whole_inbox(s, uid).await {
            let m = parse(&json);
            let mine = m.from == "a";
            assert_eq!(is_erased(&json), mine, "{uid}#{useq}: {m:?}");
            assert_eq!(m.body.is_some(), !mine, "{uid}#{useq}");
        }
    }
    // A resend of an erased message answers with its tombstone.
    let out = s
        .commit(vec![at("g:x", "a", Some("k"), 1_005, g)])
        .await
        .unwrap();
    assert!(matches!(&out[0], CommitOutcome::Duplicate(j) if is_erased(j)));

    // Again: nothing to change.
    assert_eq!(s.erase("d:a~b", "a", &[1, 2, 3]).await.unwrap(), 0);
    assert_eq!(s.erase("g:x", "a", &[1]).await.unwrap(), 0);
    for uid in g {
        assert_eq!(s.erase_copies(uid, &targets).await.unwrap(), 0, "{uid}");
    }
}

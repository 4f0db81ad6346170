//! The store contract's properties of conversation state that take several writers or
//! a writer that died (the Redis backends only): a recall racing other writers of its
//! conversation, a recall that died half-way and is tried again, and the conversation
//! list of a user with many conversations, paged across equal activity times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use imd::store::{
    CommitOutcome, Content, ConvCursor, MessageStore, NewMessage, Op, Recall, RecallRefused,
    RedisStore,
};
use serde_json::json;
use shared::protocol::Event;

use super::{Backend, new, new_msg, parse, whole_history, whole_inbox};
use testkit::now_ms;

/// A recall of `seq` of `conv` by `sender`, allowed for the last two minutes.
fn recall(conv: &str, seq: u64, sender: &str, members: &[&str]) -> Op {
    let mut event = new_msg(conv, sender, None, json!(null), members);
    event.content = Content::Event(Event::Recalled { seq, by: None });
    Op::Recall(Recall {
        conv: conv.into(),
        seq,
        sender: Some(sender.into()),
        not_before: now_ms() - 120_000,
        holders: members.iter().map(|s| s.to_string()).collect(),
        event,
    })
}

/// The JSON of `conv`'s message `seq` in `uid`'s inbox.
async fn inbox_copy(s: &dyn MessageStore, uid: &str, conv: &str, seq: u64) -> bytes::Bytes {
    let inbox = whole_inbox(s, uid).await;
    let found: Vec<_> = inbox
        .into_iter()
        .filter(|(_, j)| {
            let m = parse(j);
            m.conv == conv && m.seq == seq
        })
        .collect();
    assert_eq!(found.len(), 1, "{conv}#{seq} once in {uid}'s inbox");
    found.into_iter().next().unwrap().1
}

/// Writers keep committing to a group while one of its members sends and recalls
/// messages through another store: every recalled message ends recalled in the
/// history and in every member's inbox (none receives the original after the recall),
/// and each recall's event message names it.
pub(super) async fn recall_beside_writers(b: Backend) {
    const MEMBERS: [&str; 4] = ["r0", "r1", "r2", "r3"];
    const CONV: &str = "g:recall-race";
    let writers: Vec<Arc<RedisStore>> =
        vec![Arc::new(b.another().await), Arc::new(b.another().await)];
    let recaller = b.another().await;
    let busy = writers.iter().enumerate().map(|(w, store)| {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                let from = MEMBERS[(w + i) % MEMBERS.len()];
                let ops = (0..3)
                    .map(|_| {
                        Op::Message(new_msg(CONV, from, None, json!({"w": w, "i": i}), &MEMBERS))
                    })
                    .collect();
                store.commit(ops).await.expect("commit");
            }
        })
    });
    let busy: Vec<_> = busy.collect();
    let mut recalled = Vec::new();
    for i in 0..10 {
        let sent = recaller
            .commit(vec![Op::Message(new_msg(
                CONV,
                "r1",
                None,
                json!({"secret": i}),
                &MEMBERS,
            ))])
            .await
            .unwrap();
        let seq = new(&sent[0]).seq;
        let out = recaller
            .commit(vec![recall(CONV, seq, "r1", &MEMBERS)])
            .await
            .unwrap();
        let CommitOutcome::Recalled(Ok(event)) = &out[0] else {
            panic!("recall of {seq}: {:?}", out[0]);
        };
        let e = parse(&event.json);
        assert!(e.seq > seq);
        assert_eq!(e.event, Some(json!({"type": "recalled", "seq": seq})));
        assert_eq!(e.from, "r1");
        recalled.push(seq);
    }
    for t in busy {
        t.await.unwrap();
    }
    let s = &*b.store;
    let history = whole_history(s, CONV).await;
    assert_eq!(history.len(), 40 * 3 * 2 + 10 * 2);
    for seq in recalled {
        let stored = &history[seq as usize - 1];
        let m = parse(stored);
        assert!(
            m.recalled && m.body.is_none(),
            "{CONV}#{seq} recalled: {m:?}"
        );
        for uid in MEMBERS {
            assert_eq!(
                &inbox_copy(s, uid, CONV, seq).await,
                stored,
                "{uid}'s copy of #{seq}"
            );
        }
    }
}

/// A recall that died after recalling the stored message but before rewriting the
/// inboxes is finished by the next try, which answers "already recalled"; the refusals
/// write nothing.
pub(super) async fn recall_finishes_a_half_done_one(b: Backend) {
    const MEMBERS: [&str; 3] = ["h0", "h1", "h2"];
    const CONV: &str = "g:half";
    let s = &*b.store;
    let dead = b.another().await;
    let mut ops: Vec<Op> = (0..5)
        .map(|i| Op::Message(new_msg(CONV, "h0", None, json!({"n": i}), &MEMBERS)))
        .collect();
    ops.insert(2, {
        let mut m = new_msg(CONV, "h0", None, json!(null), &MEMBERS);
        m.content = Content::Event(Event::Closed);
        Op::Message(m)
    });
    let out = s.commit(ops).await.unwrap();
    assert_eq!(new(&out[5]).seq, 6);
    let original = new(&out[1]).json.clone();

    let Op::Recall(r) = recall(CONV, 2, "h0", &MEMBERS) else {
        unreachable!()
    };
    assert!(dead.recall_unfinished(&r).await.unwrap());
    let stored = whole_history(s, CONV).await[1].clone();
    assert!(parse(&stored).recalled);
    assert_eq!(
        inbox_copy(s, "h1", CONV, 2).await,
        original,
        "not rewritten yet"
    );

    let out = s
        .commit(vec![recall(CONV, 2, "h0", &MEMBERS)])
        .await
        .unwrap();
    assert!(matches!(
        out[0],
        CommitOutcome::Recalled(Err(RecallRefused::AlreadyRecalled))
    ));
    for uid in MEMBERS {
        assert_eq!(inbox_copy(s, uid, CONV, 2).await, stored, "{uid}'s copy");
    }

    let refused = |seq, sender: &str, late: bool| {
        let Op::Recall(mut r) = recall(CONV, seq, sender, &MEMBERS) else {
            unreachable!()
        };
        if late {
            r.not_before = now_ms() + 60_000;
        }
        Op::Recall(r)
    };
    let out = s
        .commit(vec![
            refused(99, "h0", false),
            refused(0, "h0", false),
            refused(4, "h1", false),
            refused(3, "h0", false),
            refused(4, "h0", true),
        ])
        .await
        .unwrap();
    let why: Vec<_> = out
        .iter()
        .map(|o| match o {
            CommitOutcome::Recalled(Err(w)) => *w,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        why,
        [
            RecallRefused::NotFound,
            RecallRefused::NotFound,
            RecallRefused::NotSender,
            RecallRefused::NotSender,
            RecallRefused::TooLate
        ]
    );
    assert_eq!(
        s.last_seq(CONV).await.unwrap(),
        6,
        "refusals commit nothing"
    );
}

/// A user with 10,000 conversations, many sharing an activity time: paging the list
/// from the newest, cursor after cursor, yields each once, newest first and equal times
/// by conversation id descending; a page costs about the same as with one
/// conversation, and unread counts are exact.
pub(super) async fn list_of_many(b: Backend) {
    const N: usize = 10_000;
    const BASE: i64 = 1_700_000_000_000;
    let s = &*b.store;
    let mut want: Vec<(i64, String)> = Vec::with_capacity(N);
    let mut ops = Vec::new();
    for i in 0..N {
        let peer = format!("p{i:05}");
        let conv = format!("d:me~{peer}");
        // Seven conversations per millisecond, in an order unlike their ids'.
        let ts = BASE + ((i * 7919) % N / 7) as i64;
        let mut m: NewMessage = new_msg(&conv, &peer, None, json!({"i": i}), &["me", &peer]);
        m.ts = ts;
        ops.push(Op::Message(m));
        want.push((ts, conv));
        if ops.len() == 500 {
            s.commit(std::mem::take(&mut ops)).await.unwrap();
        }
    }
    want.sort_by(|a, b| b.cmp(a));

    let mut got: Vec<(i64, String)> = Vec::new();
    let mut cursor: Option<ConvCursor> = None;
    let mut slowest = Duration::ZERO;
    loop {
        let started = Instant::now();
        let page = s.conversations("me", cursor.as_ref(), 200).await.unwrap();
        slowest = slowest.max(started.elapsed());
        for e in &page.items {
            assert_eq!(e.unread, 1);
            assert_eq!(e.read_seq, 0);
            let peer = e.conv.trim_start_matches("d:me~");
            assert_eq!(e.reads, vec![(peer.to_owned(), 1)]);
            got.push((e.ts, e.conv.clone()));
        }
        let Some(last) = page.items.last() else { break };
        cursor = Some(ConvCursor::after(last));
        if !page.more {
            break;
        }
    }
    assert_eq!(got.len(), N);
    assert!(got == want, "pages in order, each conversation once");

    for limit in [1, 10, 50] {
        let started = Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            s.conversations("me", None, limit).await.unwrap();
        }
        eprintln!(
            "conversations of a user with {N}: a page of {limit} in {:?} on average",
            started.elapsed() / rounds
        );
    }
    eprintln!("slowest page of 200 {slowest:?}");
}

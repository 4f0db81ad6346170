//! The store contract's properties of conversation state: each user's conversation
//! list (order, paging, activity, unread counts), read positions, and recall. Every
//! backend must have them; they use one writer, and set each message's commit time
//! themselves so that the order they check does not hang on the clock.

use imd::store::{
    CommitOutcome, Committed, ConvCursor, ConvEntry, MessageStore, NewMessage, Op, Recall,
    RecallRefused,
};
use serde_json::json;
use shared::protocol::Event;

use super::{Backend, join_op, new, new_msg, parse, whole_history, whole_inbox};

/// A body message from `from` committed at `ts`.
fn at(conv: &str, from: &str, ts: i64, members: &[&str]) -> Op {
    let mut m = new_msg(conv, from, None, json!({"t": conv}), members);
    m.ts = ts;
    Op::Message(m)
}

/// An event message caused by `from`, committed at `ts`.
fn event_msg(conv: &str, from: &str, ts: i64, event: Event, members: &[&str]) -> NewMessage {
    let mut m = new_msg(conv, from, None, json!(null), members);
    m.content = imd::store::Content::Event(event);
    m.ts = ts;
    m
}

/// A `closed` event message.
fn closed(conv: &str, from: &str, ts: i64, members: &[&str]) -> Op {
    Op::Message(event_msg(conv, from, ts, Event::Closed, members))
}

fn read(conv: &str, uid: &str, seq: u64) -> Op {
    Op::Read {
        conv: conv.into(),
        uid: uid.into(),
        seq,
    }
}

/// `(seq, moved)` of a read's outcome.
#[track_caller]
fn read_outcome(o: &CommitOutcome) -> (u64, bool) {
    match o {
        CommitOutcome::Read { seq, moved } => (*seq, *moved),
        other => panic!("expected a read, got {other:?}"),
    }
}

/// A recall of `conv#seq` by `sender` (`None`: an admin), allowed from `not_before`,
/// whose event is committed at `ts`.
fn recall(
    conv: &str,
    seq: u64,
    sender: Option<&str>,
    not_before: i64,
    ts: i64,
    members: &[&str],
) -> Op {
    let by = sender.is_none().then(|| "admin".to_string());
    Op::Recall(Recall {
        conv: conv.into(),
        seq,
        sender: sender.map(Into::into),
        not_before,
        holders: members.iter().map(|s| s.to_string()).collect(),
        event: event_msg(
            conv,
            sender.unwrap_or("admin"),
            ts,
            Event::Recalled { seq, by },
            members,
        ),
    })
}

#[track_caller]
fn recalled(o: &CommitOutcome) -> Result<&Committed, RecallRefused> {
    match o {
        CommitOutcome::Recalled(r) => r.as_ref().map_err(|e| *e),
        other => panic!("expected a recall, got {other:?}"),
    }
}

/// Every entry of `uid`'s list, `limit` at a time, following the cursor.
async fn whole_list(s: &dyn MessageStore, uid: &str, limit: u32) -> Vec<ConvEntry> {
    let mut all: Vec<ConvEntry> = Vec::new();
    loop {
        let cursor = all.last().map(ConvCursor::after);
        let page = s
            .conversations(uid, cursor.as_ref(), limit)
            .await
            .expect("conversations");
        assert!(page.items.len() <= limit.max(1) as usize);
        all.extend(page.items);
        if !page.more {
            return all;
        }
    }
}

/// `(conv, ts)` of each entry.
fn order(list: &[ConvEntry]) -> Vec<(&str, i64)> {
    list.iter().map(|e| (e.conv.as_str(), e.ts)).collect()
}

/// The entry of `conv` in `uid`'s list.
async fn entry(s: &dyn MessageStore, uid: &str, conv: &str) -> ConvEntry {
    whole_list(s, uid, 200)
        .await
        .into_iter()
        .find(|e| e.conv == conv)
        .unwrap_or_else(|| panic!("{conv} is not in {uid}'s list"))
}

/// The list runs newest activity first, equal times by conversation id descending;
/// pages hold at most `limit` (0 counts as 1), say whether more follow, and resume
/// after the cursor of their last entry, ties included. A new message moves its
/// conversation to its commit time in every member's list, and each entry holds the
/// conversation's last message.
pub(super) async fn list_order_and_paging(b: Backend) {
    let s = &*b.store;
    let empty = s.conversations("a", None, 10).await.unwrap();
    assert!(empty.items.is_empty() && !empty.more);

    s.commit(vec![
        at("d:a~b", "b", 1_000, &["a", "b"]),
        at("d:a~c", "c", 3_000, &["a", "c"]),
        at("g:one", "c", 3_000, &["a", "c"]),
        at("g:two", "a", 3_000, &["a", "b", "c"]),
        at("d:a~d", "d", 2_000, &["a", "d"]),
        at("s:shop~a", "a", 4_000, &["a"]),
    ])
    .await
    .unwrap();
    let expected = [
        ("s:shop~a", 4_000),
        ("g:two", 3_000),
        ("g:one", 3_000),
        ("d:a~c", 3_000),
        ("d:a~d", 2_000),
        ("d:a~b", 1_000),
    ];
    for limit in [0, 1, 2, 3, 4, 200] {
        assert_eq!(
            order(&whole_list(s, "a", limit).await),
            expected,
            "limit {limit}"
        );
    }
    let page = s.conversations("a", None, 3).await.unwrap();
    assert_eq!(order(&page.items), expected[..3]);
    assert!(page.more);
    // A cursor in the middle of equal times resumes right after it.
    let cursor = ConvCursor::after(&page.items[1]);
    let page = s.conversations("a", Some(&cursor), 2).await.unwrap();
    assert_eq!(order(&page.items), expected[2..4]);
    assert!(page.more);
    let page = s.conversations("a", Some(&cursor), 4).await.unwrap();
    assert_eq!(order(&page.items), expected[2..]);
    assert!(!page.more);
    let last = ConvCursor::after(&page.items[3]);
    let page = s.conversations("a", Some(&last), 4).await.unwrap();
    assert!(page.items.is_empty() && !page.more);
    // Other users see their own conversations only.
    assert_eq!(
        order(&whole_list(s, "c", 10).await),
        [("g:two", 3_000), ("g:one", 3_000), ("d:a~c", 3_000)]
    );

    // A new message moves its conversation up in every member's list.
    let out = s
        .commit(vec![
            at("d:a~b", "a", 5_000, &["a", "b"]),
            at("d:a~b", "b", 5_001, &["a", "b"]),
        ])
        .await
        .unwrap();
    let list = whole_list(s, "a", 2).await;
    assert_eq!(
        order(&list)[..3],
        [("d:a~b", 5_001), ("s:shop~a", 4_000), ("g:two", 3_000)]
    );
    assert_eq!(list.len(), expected.len());
    assert_eq!(order(&whole_list(s, "b", 1).await)[0], ("d:a~b", 5_001));
    let e = &list[0];
    assert_eq!((e.last_seq, &e.last), (3, &new(&out[1]).json));
    assert_eq!(parse(&e.last).seq, 3);
}

/// Unread counts the messages past the reader's position that are neither its own nor
/// events; a body message moves its sender's position to it, an event moves none.
pub(super) async fn unread_and_a_send_moves_the_senders_position(b: Backend) {
    let s = &*b.store;
    let m = &["a", "b"];
    s.commit(vec![
        at("d:a~b", "a", 1_000, m),
        at("d:a~b", "b", 1_001, m),
        at("d:a~b", "b", 1_002, m),
        closed("d:a~b", "b", 1_003, m),
    ])
    .await
    .unwrap();
    let a = entry(s, "a", "d:a~b").await;
    assert_eq!((a.last_seq, a.read_seq, a.unread), (4, 1, 2));
    let b_ = entry(s, "b", "d:a~b").await;
    assert_eq!((b_.read_seq, b_.unread), (3, 0));
    // The last message is the event, and it leads the list.
    assert!(parse(&a.last).is_event());
    assert_eq!(a.ts, 1_003);

    // a answers: its position moves to its message, past everything before it.
    s.commit(vec![
        closed("d:a~b", "b", 1_004, m),
        at("d:a~b", "a", 1_005, m),
    ])
    .await
    .unwrap();
    let a = entry(s, "a", "d:a~b").await;
    assert_eq!((a.last_seq, a.read_seq, a.unread), (6, 6, 0));
    let b_ = entry(s, "b", "d:a~b").await;
    assert_eq!((b_.read_seq, b_.unread), (3, 1));
    let mut reads = s.read_positions("d:a~b").await.unwrap();
    reads.sort();
    assert_eq!(reads, [("a".into(), 6), ("b".into(), 3)]);

    // In a group, the others' messages count for each member, events never.
    let g = &["a", "b", "c"];
    s.commit(vec![
        at("g:room", "a", 2_000, g),
        at("g:room", "b", 2_001, g),
        closed("g:room", "c", 2_002, g),
        at("g:room", "b", 2_003, g),
    ])
    .await
    .unwrap();
    let unread = |e: ConvEntry| (e.read_seq, e.unread);
    assert_eq!(unread(entry(s, "a", "g:room").await), (1, 2));
    assert_eq!(unread(entry(s, "b", "g:room").await), (4, 0));
    assert_eq!(unread(entry(s, "c", "g:room").await), (0, 3));
}

/// A read clamps to the conversation's last seq, only moves forward, and says where the
/// position is and whether it moved; the list shows it.
pub(super) async fn reads_clamp_and_never_move_back(b: Backend) {
    let s = &*b.store;
    let m = &["a", "b"];
    let out = s.commit(vec![read("d:a~b", "a", 5)]).await.unwrap();
    assert_eq!(read_outcome(&out[0]), (0, false), "nothing to read yet");
    s.commit(vec![
        at("d:a~b", "b", 1_000, m),
        at("d:a~b", "b", 1_001, m),
        at("d:a~b", "b", 1_002, m),
    ])
    .await
    .unwrap();
    let out = s
        .commit(vec![
            read("d:a~b", "a", 0),
            read("d:a~b", "a", 2),
            read("d:a~b", "a", 1),
            read("d:a~b", "a", 2),
        ])
        .await
        .unwrap();
    let got: Vec<_> = out.iter().map(read_outcome).collect();
    assert_eq!(got, [(0, false), (2, true), (2, false), (2, false)]);
    let e = entry(s, "a", "d:a~b").await;
    assert_eq!((e.read_seq, e.unread), (2, 1));

    let out = s
        .commit(vec![read("d:a~b", "a", 99), read("d:a~b", "a", u64::MAX)])
        .await
        .unwrap();
    assert_eq!(read_outcome(&out[0]), (3, true));
    assert_eq!(read_outcome(&out[1]), (3, false));
    let e = entry(s, "a", "d:a~b").await;
    assert_eq!((e.read_seq, e.unread), (3, 0));
    // A read moves no activity and writes no message.
    assert_eq!(e.ts, 1_002);
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 3);
    assert_eq!(whole_inbox(s, "a").await.len(), 3);
    // The sender's own position is not the reader's.
    let e = entry(s, "b", "d:a~b").await;
    assert_eq!(e.read_seq, 3);
}

/// Entries of direct and service conversations hold every recorded read position;
/// groups hold none. `in_conversations` answers for the list, `read_positions` for the
/// conversation.
pub(super) async fn read_positions_and_membership(b: Backend) {
    let s = &*b.store;
    assert!(s.read_positions("d:a~b").await.unwrap().is_empty());
    assert!(!s.in_conversations("a", "d:a~b").await.unwrap());
    s.commit(vec![
        at("d:a~b", "a", 1_000, &["a", "b"]),
        at("d:a~b", "a", 1_001, &["a", "b"]),
        read("d:a~b", "b", 1),
        at("s:shop~c", "c", 1_002, &["c", "agent"]),
        read("s:shop~c", "agent", 1),
        at("g:room", "a", 1_003, &["a", "b", "c"]),
        read("g:room", "c", 1),
    ])
    .await
    .unwrap();
    let sorted = |mut v: Vec<(String, u64)>| {
        v.sort();
        v
    };
    let pairs = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(u, n)| (u.to_string(), *n)).collect()
    };
    assert_eq!(
        sorted(s.read_positions("d:a~b").await.unwrap()),
        pairs(&[("a", 2), ("b", 1)])
    );
    assert_eq!(
        sorted(entry(s, "b", "d:a~b").await.reads),
        pairs(&[("a", 2), ("b", 1)])
    );
    assert_eq!(
        sorted(entry(s, "c", "s:shop~c").await.reads),
        pairs(&[("agent", 1), ("c", 1)])
    );
    assert!(entry(s, "b", "g:room").await.reads.is_empty());
    assert_eq!(
        sorted(s.read_positions("g:room").await.unwrap()),
        pairs(&[("a", 1), ("c", 1)])
    );

    for (uid, conv, is) in [
        ("a", "d:a~b", true),
        ("b", "d:a~b", true),
        ("agent", "s:shop~c", true),
        ("b", "g:room", true),
        ("a", "s:shop~c", false),
        ("c", "d:a~b", false),
        ("nobody", "g:room", false),
        ("a", "g:nothing", false),
    ] {
        assert_eq!(
            s.in_conversations(uid, conv).await.unwrap(),
            is,
            "{uid} {conv}"
        );
    }
}

/// A join puts the conversation in the joiner's list at the commit time of its last
/// message, with the joiner's own read position.
pub(super) async fn join_lists_the_conversation(b: Backend) {
    let s = &*b.store;
    s.commit(vec![
        at("d:a~x", "x", 5_000, &["a", "x"]),
        at("s:shop~c", "c", 1_000, &["c"]),
        closed("s:shop~c", "c", 1_001, &["c"]),
        at("s:shop~c", "c", 1_002, &["c"]),
    ])
    .await
    .unwrap();
    assert!(!s.in_conversations("a", "s:shop~c").await.unwrap());
    s.commit(vec![join_op("s:shop~c", "a")]).await.unwrap();
    assert!(s.in_conversations("a", "s:shop~c").await.unwrap());
    let list = whole_list(s, "a", 10).await;
    assert_eq!(order(&list), [("d:a~x", 5_000), ("s:shop~c", 1_002)]);
    let e = &list[1];
    assert_eq!((e.last_seq, e.read_seq, e.unread), (3, 0, 2));
    assert_eq!(parse(&e.last).seq, 3);

    // After the join, new messages move it as for any member.
    s.commit(vec![at("s:shop~c", "a", 6_000, &["c", "a"])])
        .await
        .unwrap();
    let list = whole_list(s, "a", 10).await;
    assert_eq!(order(&list), [("s:shop~c", 6_000), ("d:a~x", 5_000)]);
    assert_eq!((list[0].read_seq, list[0].unread), (4, 0));
}

/// Each refusal of a recall, in its order of precedence; a refusal writes nothing.
pub(super) async fn recall_refusals(b: Backend) {
    let s = &*b.store;
    let m = &["a", "b"];
    s.commit(vec![
        at("d:a~b", "a", 1_000, m),
        closed("d:a~b", "a", 1_001, m),
    ])
    .await
    .unwrap();
    let out = s
        .commit(vec![
            recall("d:a~b", 3, Some("a"), 0, 2_000, m),
            recall("d:a~nobody", 1, Some("a"), 0, 2_000, m),
            recall("d:a~b", 1, Some("b"), 0, 2_000, m),
            // An event is nobody's to recall, not even an admin's.
            recall("d:a~b", 2, Some("a"), 0, 2_000, m),
            recall("d:a~b", 2, None, i64::MIN, 2_000, m),
            recall("d:a~b", 1, Some("a"), 1_001, 2_000, m),
            // Another's message past the window: not the sender comes first.
            recall("d:a~b", 1, Some("b"), 1_001, 2_000, m),
        ])
        .await
        .unwrap();
    let got: Vec<_> = out.iter().map(|o| recalled(o).map(|c| c.seq)).collect();
    use RecallRefused::*;
    assert_eq!(
        got,
        [
            Err(NotFound),
            Err(NotFound),
            Err(NotSender),
            Err(NotSender),
            Err(NotSender),
            Err(TooLate),
            Err(NotSender)
        ]
    );
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 2);
    assert_eq!(
        parse(&whole_history(s, "d:a~b").await[0]).body,
        Some(json!({"t": "d:a~b"}))
    );

    // Recalled already: refused, and again nothing is written.
    let out = s
        .commit(vec![
            recall("d:a~b", 1, Some("a"), 1_000, 2_000, m),
            recall("d:a~b", 1, Some("a"), 1_000, 2_001, m),
        ])
        .await
        .unwrap();
    assert_eq!(recalled(&out[0]).unwrap().seq, 3);
    assert_eq!(recalled(&out[1]).map(|c| c.seq), Err(AlreadyRecalled));
    let out = s
        .commit(vec![recall("d:a~b", 1, None, i64::MIN, 2_002, m)])
        .await
        .unwrap();
    assert_eq!(recalled(&out[0]).map(|c| c.seq), Err(AlreadyRecalled));
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 3);
    assert_eq!(whole_inbox(s, "b").await.len(), 3);
}

/// A recall rewrites the message, in history and in every holder's inbox, to
/// `"recalled": true` without `body`, and commits its `recalled` event like any
/// message: next seq, an inbox entry per member, the lists moved, counted as no
/// unread message.
pub(super) async fn recall_rewrites_history_and_every_inbox(b: Backend) {
    let s = &*b.store;
    let g = &["a", "b", "c"];
    let out = s
        .commit(vec![
            at("g:room", "a", 1_000, g),
            at("g:room", "b", 1_001, g),
            at("d:a~b", "a", 1_002, &["a", "b"]),
        ])
        .await
        .unwrap();
    let original = parse(&new(&out[0]).json);
    let out = s
        .commit(vec![recall("g:room", 1, Some("a"), 1_000, 3_000, g)])
        .await
        .unwrap();
    let event = recalled(&out[0]).expect("the recall is allowed");
    assert_eq!(event.seq, 3);
    assert_eq!(event.ts, 3_000);
    assert_eq!(
        event
            .recipients
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        g
    );
    let e = parse(&event.json);
    assert_eq!(
        (e.conv.as_str(), e.seq, e.from.as_str()),
        ("g:room", 3, "a")
    );
    assert_eq!(e.event, Some(json!({"type": "recalled", "seq": 1})));
    assert!(e.body.is_none());

    let is_recalled = |json: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        v.get("recalled") == Some(&json!(true)) && v.get("body").is_none()
    };
    let history = whole_history(s, "g:room").await;
    assert_eq!(history.len(), 3);
    assert!(is_recalled(&history[0]), "history shows the recalled form");
    let m = parse(&history[0]);
    assert_eq!(
        (m.id, m.seq, m.from, m.ts),
        (original.id.clone(), 1, original.from.clone(), original.ts)
    );
    assert!(!is_recalled(&history[1]));
    assert_eq!(history[2], event.json);
    for uid in g {
        let inbox = whole_inbox(s, uid).await;
        let of_room: Vec<_> = inbox
            .iter()
            .map(|(_, j)| parse(j))
            .filter(|m| m.conv == "g:room")
            .collect();
        assert_eq!(of_room.len(), 3, "{uid}'s inbox");
        let first = inbox
            .iter()
            .find(|(_, j)| parse(j).id == original.id)
            .unwrap();
        assert!(
            is_recalled(&first.1),
            "{uid}'s inbox shows the recalled form"
        );
        assert!(!of_room[1].recalled && of_room[1].body.is_some());
        assert_eq!(
            of_room[2].event,
            Some(json!({"type": "recalled", "seq": 1}))
        );
        let useq = event.recipients.iter().find(|r| r.0 == *uid).unwrap().1;
        assert_eq!(inbox.last().unwrap().0, useq);
    }
    // The other conversation is untouched.
    assert!(!is_recalled(&whole_history(s, "d:a~b").await[0]));

    // The event leads the lists and is not unread; the recalled message still is.
    let c = entry(s, "c", "g:room").await;
    assert_eq!((c.ts, c.last_seq, c.unread), (3_000, 3, 2));
    assert_eq!(c.last, event.json);
    let a = entry(s, "a", "g:room").await;
    assert_eq!((a.read_seq, a.unread), (1, 1));

    // An admin recalls anyone's message at any age.
    let out = s
        .commit(vec![recall("g:room", 2, None, i64::MIN, 3_001, g)])
        .await
        .unwrap();
    let e = parse(&recalled(&out[0]).unwrap().json);
    assert_eq!(
        e.event,
        Some(json!({"type": "recalled", "seq": 2, "by": "admin"}))
    );
    assert!(is_recalled(&whole_history(s, "g:room").await[1]));
    assert!(is_recalled(&s.inbox("c", 1, 1).await.unwrap().items[0].1));
}

//! The store contract's properties for one writer: gapless sequences, idempotent
//! resends, paging, joins, and reads of what was never written. Every backend must
//! have them; they must not start a second store on the same database.

use std::collections::HashMap;

use bytes::Bytes;
use imd::store::{CommitOutcome, Op, PAGE_BYTES};
use serde_json::json;

use super::{Backend, join_op, msg, new, new_msg, parse, refs, whole_history, whole_inbox};

/// Seq and useq are gapless from 1; recipients come in member order; each conversation
/// keeps seq order inside every inbox; the JSON is the `Message` the history holds.
pub(super) async fn sequences(b: Backend) {
    let s = &*b.store;
    let out = s
        .commit(vec![
            msg("d:a~b", "a", None, &["a", "b"]),
            msg("d:a~c", "a", None, &["a", "c"]),
            msg("d:a~b", "b", None, &["a", "b"]),
        ])
        .await
        .unwrap();
    let seqs: Vec<u64> = out.iter().map(|o| new(o).seq).collect();
    assert_eq!(seqs, [1, 1, 2]);
    // Recipients in member order. A user's useqs within a batch are gapless and keep
    // each conversation's order; across conversations of one batch the order is the
    // backend's (Redis fans conversations out concurrently).
    let uids = |o: &CommitOutcome| -> Vec<String> {
        new(o).recipients.iter().map(|r| r.0.clone()).collect()
    };
    assert_eq!(uids(&out[0]), ["a", "b"]);
    assert_eq!(uids(&out[1]), ["a", "c"]);
    assert_eq!(uids(&out[2]), ["a", "b"]);
    let useq =
        |o: &CommitOutcome, uid: &str| new(o).recipients.iter().find(|r| r.0 == uid).unwrap().1;
    let mut of_a = [0, 1, 2].map(|i| useq(&out[i], "a"));
    assert!(of_a[0] < of_a[2]);
    of_a.sort();
    assert_eq!(of_a, [1, 2, 3]);
    assert_eq!([useq(&out[0], "b"), useq(&out[2], "b")], [1, 2]);
    assert_eq!(useq(&out[1], "c"), 1);
    let m = parse(&new(&out[2]).json);
    assert_eq!((m.conv.as_str(), m.seq, m.from.as_str()), ("d:a~b", 2, "b"));
    assert_eq!(m.body.clone().unwrap_or_default(), json!({"t": "d:a~b"}));
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 2);
    assert_eq!(s.last_seq("d:a~c").await.unwrap(), 1);

    // More batches, interleaving three conversations in a's inbox.
    for i in 0..5 {
        let out = s
            .commit(vec![
                msg("d:a~c", "c", None, &["a", "c"]),
                msg("g:abc", "b", None, &["a", "b", "c"]),
                msg("d:a~b", "a", None, &["a", "b"]),
                msg("g:abc", "a", None, &["a", "b", "c"]),
            ])
            .await
            .unwrap();
        assert_eq!(new(&out[1]).seq, 2 * i + 1);
        assert_eq!(new(&out[3]).seq, 2 * i + 2);
    }
    for (uid, expected) in [("a", 3 + 20), ("b", 2 + 15), ("c", 1 + 15)] {
        let inbox = whole_inbox(s, uid).await;
        assert_eq!(
            inbox.iter().map(|i| i.0).collect::<Vec<_>>(),
            (1..=expected).collect::<Vec<u64>>(),
            "useqs of {uid}"
        );
        let mut last: HashMap<String, u64> = HashMap::new();
        for (conv, seq) in refs(&inbox) {
            let prev = last.insert(conv.clone(), seq).unwrap_or(0);
            assert_eq!(seq, prev + 1, "{conv} in {uid}'s inbox");
        }
    }
    for (conv, n) in [("d:a~b", 7), ("d:a~c", 6), ("g:abc", 10)] {
        let h = whole_history(s, conv).await;
        assert_eq!(
            h.iter().map(|j| parse(j).seq).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<u64>>()
        );
        assert_eq!(s.last_seq(conv).await.unwrap(), n);
    }
    // The committed JSON is byte for byte what history and inboxes hold.
    let h = s.history("d:a~b", 1, 1).await.unwrap();
    assert_eq!(h.items[0], new(&out[2]).json);
    let page = s.inbox("b", 1, 1).await.unwrap();
    assert_eq!(page.items, [(2, new(&out[2]).json.clone())]);
    assert!(page.more);
    let page = s.inbox("a", useq(&out[1], "a") - 1, 1).await.unwrap();
    assert_eq!(page.items[0].1, new(&out[1]).json);
}

/// A resend of `(from, cid)` is a duplicate of the first, within a batch, across
/// batches and across conversations; another sender's cid is its own.
pub(super) async fn idempotency(b: Backend) {
    let s = &*b.store;
    let out = s
        .commit(vec![
            msg("d:a~b", "a", Some("c1"), &["a", "b"]),
            msg("d:a~b", "a", Some("c1"), &["a", "b"]),
            msg("d:a~b", "a", Some("c2"), &["a", "b"]),
            msg("d:a~b", "a", Some("c2"), &["a", "b"]),
        ])
        .await
        .unwrap();
    let first = new(&out[0]).json.clone();
    let second = new(&out[2]).json.clone();
    assert!(matches!(&out[1], CommitOutcome::Duplicate(j) if *j == first));
    assert!(matches!(&out[3], CommitOutcome::Duplicate(j) if *j == second));
    assert_eq!(new(&out[2]).seq, 2);

    let out = s
        .commit(vec![
            msg("d:a~b", "a", Some("c1"), &["a", "b"]),
            // The same cid in another conversation is still the same message.
            msg("d:a~x", "a", Some("c2"), &["a", "x"]),
            msg("d:a~b", "b", Some("c1"), &["a", "b"]),
            msg("d:a~b", "b", Some("c1"), &["a", "b"]),
        ])
        .await
        .unwrap();
    assert!(matches!(&out[0], CommitOutcome::Duplicate(j) if *j == first));
    assert!(matches!(&out[1], CommitOutcome::Duplicate(j) if *j == second));
    let third = new(&out[2]);
    assert_eq!(third.seq, 3);
    assert!(matches!(&out[3], CommitOutcome::Duplicate(j) if *j == third.json));

    // Nothing was written for the duplicates.
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 3);
    assert_eq!(s.last_seq("d:a~x").await.unwrap(), 0);
    assert_eq!(whole_inbox(s, "b").await.len(), 3);
    assert!(whole_inbox(s, "x").await.is_empty());
}

/// Pages stop at `limit` and before passing [`PAGE_BYTES`], always hold one item, and
/// say whether more follow.
pub(super) async fn paging(b: Backend) {
    let s = &*b.store;
    let filler = "x".repeat(10_000);
    let mut ops: Vec<Op> = (0..20)
        .map(|i| {
            Op::Message(new_msg(
                "d:p~q",
                "p",
                None,
                json!({"i": i, "f": filler}),
                &["p", "q"],
            ))
        })
        .collect();
    // One message bigger than a page on its own.
    let big = "y".repeat(PAGE_BYTES + 1);
    ops.push(Op::Message(new_msg(
        "d:p~q",
        "q",
        None,
        json!({"i": 20, "f": big}),
        &["p", "q"],
    )));
    ops.push(msg("d:p~q", "q", None, &["p", "q"]));
    let out = s.commit(ops).await.unwrap();
    let jsons: Vec<Bytes> = out.iter().map(|o| new(o).json.clone()).collect();

    // What a page of items from `from` must hold under the byte cut alone.
    let fits = |from: usize| {
        let mut bytes = 0;
        let mut n = 0;
        for j in &jsons[from..] {
            bytes += j.len();
            if bytes > PAGE_BYTES && n > 0 {
                break;
            }
            n += 1;
        }
        n
    };

    let mut from = 0;
    let mut pages = 0;
    while from < jsons.len() {
        let h = s.history("d:p~q", from as u64, 1000).await.unwrap();
        let n = fits(from);
        assert_eq!(h.items, jsons[from..from + n], "history page from {from}");
        assert_eq!(h.more, from + n < jsons.len());
        let i = s.inbox("q", from as u64, 1000).await.unwrap();
        assert_eq!(
            i.items,
            (from..from + n)
                .map(|k| (k as u64 + 1, jsons[k].clone()))
                .collect::<Vec<_>>()
        );
        assert_eq!(i.more, h.more);
        from += n;
        pages += 1;
    }
    assert!(pages >= 5, "the byte cut made {pages} pages");
    // The big message comes alone, and says more follow.
    let h = s.history("d:p~q", 20, 1000).await.unwrap();
    assert_eq!((h.items.len(), h.more), (1, true));

    // The limit cuts first when it is smaller.
    let h = s.history("d:p~q", 0, 2).await.unwrap();
    assert_eq!((h.items.len(), h.more), (2, true));
    let h = s.history("d:p~q", 21, 1).await.unwrap();
    assert_eq!((h.items.len(), h.more), (1, false));
    let i = s.inbox("p", 0, 2).await.unwrap();
    assert_eq!(i.items.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2]);
    assert!(i.more);
    let i = s.inbox("p", 21, 5).await.unwrap();
    assert_eq!(i.items.iter().map(|x| x.0).collect::<Vec<_>>(), [22]);
    assert!(!i.more);
    // Limit 0 returns nothing, and tells whether anything is there.
    let h = s.history("d:p~q", 0, 0).await.unwrap();
    assert_eq!((h.items.len(), h.more), (0, true));
    let h = s.history("d:p~q", 22, 0).await.unwrap();
    assert_eq!((h.items.len(), h.more), (0, false));
    // Past the end, and far past it.
    let h = s.history("d:p~q", 22, 10).await.unwrap();
    assert_eq!((h.items.len(), h.more), (0, false));
    let h = s.history("d:p~q", u64::MAX, 10).await.unwrap();
    assert_eq!((h.items.len(), h.more), (0, false));
    let i = s.inbox("p", u64::MAX - 1, 10).await.unwrap();
    assert_eq!((i.items.len(), i.more), (0, false));
}

/// A join gives the joiner the messages it does not have, in seq order; joining again
/// gives only what came since.
pub(super) async fn join(b: Backend) {
    let s = &*b.store;
    s.commit(vec![
        msg("s:shop~c", "c", None, &["c"]),
        msg("d:a~x", "x", None, &["a", "x"]),
        msg("s:shop~c", "c", None, &["c"]),
    ])
    .await
    .unwrap();
    let out = s
        .commit(vec![
            msg("s:shop~c", "c", None, &["c"]),
            join_op("s:shop~c", "a"),
            msg("s:shop~c", "c", None, &["c", "a"]),
        ])
        .await
        .unwrap();
    let CommitOutcome::Joined(joined) = &out[1] else {
        panic!("not a join: {:?}", out[1])
    };
    let got: Vec<_> = joined
        .iter()
        .map(|c| (c.seq, c.recipients.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (1, vec![("a".into(), 2)]),
            (2, vec![("a".into(), 3)]),
            (3, vec![("a".into(), 4)])
        ]
    );
    assert_eq!(parse(&joined[2].json).seq, 3);
    assert_eq!(new(&out[0]).seq, 3);
    assert_eq!(new(&out[2]).recipients, [("c".into(), 4), ("a".into(), 5)]);
    let inbox = whole_inbox(s, "a").await;
    assert_eq!(
        refs(&inbox),
        [
            ("d:a~x".into(), 1),
            ("s:shop~c".into(), 1),
            ("s:shop~c".into(), 2),
            ("s:shop~c".into(), 3),
            ("s:shop~c".into(), 4)
        ]
    );
    // Joining again copies only what came since: here, nothing; then one message.
    let out = s.commit(vec![join_op("s:shop~c", "a")]).await.unwrap();
    assert!(matches!(&out[0], CommitOutcome::Joined(j) if j.is_empty()));
    let out = s
        .commit(vec![
            msg("s:shop~c", "c", None, &["c"]),
            join_op("s:shop~c", "a"),
        ])
        .await
        .unwrap();
    let CommitOutcome::Joined(joined) = &out[1] else {
        panic!("not a join")
    };
    assert_eq!(
        joined
            .iter()
            .map(|c| (c.seq, c.recipients.clone()))
            .collect::<Vec<_>>(),
        [(5, vec![("a".into(), 6)])]
    );
    // Another user joins from the start.
    let out = s.commit(vec![join_op("s:shop~c", "z")]).await.unwrap();
    let CommitOutcome::Joined(joined) = &out[0] else {
        panic!("not a join")
    };
    assert_eq!(
        joined.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        whole_inbox(s, "z")
            .await
            .iter()
            .map(|i| i.0)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

/// Reads of what was never written are empty, not errors.
pub(super) async fn unknown(b: Backend) {
    let s = &*b.store;
    assert_eq!(s.last_seq("d:no~body").await.unwrap(), 0);
    let h = s.history("d:no~body", 0, 10).await.unwrap();
    assert!(h.items.is_empty() && !h.more);
    let i = s.inbox("nobody", 0, 10).await.unwrap();
    assert!(i.items.is_empty() && !i.more);
    assert_eq!(s.commit(Vec::new()).await.unwrap().len(), 0);
    assert_eq!(s.sweep().await.unwrap(), 0);
    assert!(s.take_relayed().is_empty());
}

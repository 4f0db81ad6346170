//! The store contract's properties for several writers on one database (the Redis
//! backends only): racing commits, a writer that died mid-commit whose work another
//! finishes, and the fan-out that completes after the answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use imd::store::{CommitOutcome, Committed, MessageStore, Op, RedisStore};
use serde_json::json;

use super::{Backend, msg, new, new_msg, parse, refs, whole_history, whole_inbox};

/// Four writers commit interleaved messages to shared conversations and users at once.
/// Seqs and useqs stay gapless, every message lands in each member's inbox exactly once
/// and in seq order, an answered message is already there, and every inbox entry is
/// reported (as a recipient or relayed) by exactly one writer.
pub(super) async fn concurrency(b: Backend) {
    const WRITERS: usize = 4;
    const TASKS: usize = 2;
    const BATCHES: usize = 30;
    let convs: [(&str, &[&str]); 4] = [
        ("g:room", &["u0", "u1", "u2", "u3"]),
        ("d:u0~u1", &["u0", "u1"]),
        ("d:u1~u2", &["u1", "u2"]),
        ("g:trio", &["u0", "u2", "u3"]),
    ];
    let mut stores: Vec<Arc<RedisStore>> = Vec::new();
    for _ in 0..WRITERS {
        stores.push(Arc::new(b.another().await));
    }
    let mut tasks = Vec::new();
    for (w, store) in stores.iter().enumerate() {
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut news: Vec<Committed> = Vec::new();
                let mut dups = 0;
                for i in 0..BATCHES {
                    let n = 1 + (w + t + i) % 3;
                    let mut ops = Vec::new();
                    for k in 0..n {
                        let (conv, members) = convs[(w + 2 * t + i + k) % convs.len()];
                        let from = members[(i + k) % members.len()];
                        let cid = format!("w{w}t{t}b{i}k{k}");
                        ops.push(msg(conv, from, Some(&cid), members));
                    }
                    if i % 7 == 3 {
                        // A resend of the batch before's first message.
                        let (conv, members) = convs[(w + 2 * t + i - 1) % convs.len()];
                        let from = members[(i - 1) % members.len()];
                        ops.push(msg(
                            conv,
                            from,
                            Some(&format!("w{w}t{t}b{}k0", i - 1)),
                            members,
                        ));
                    }
                    let out = store.commit(ops).await.expect("commit");
                    for o in out {
                        match o {
                            CommitOutcome::New(c) => {
                                if i % 4 == 0 {
                                    // Answered, so already in every member's inbox.
                                    let m = parse(&c.json);
                                    let members =
                                        convs.iter().find(|(cv, _)| *cv == m.conv).unwrap().1;
                                    for uid in members {
                                        let inbox = whole_inbox(&*store, uid).await;
                                        assert!(
                                            inbox.iter().any(|(_, j)| *j == c.json),
                                            "{}#{} answered but not in {uid}'s inbox",
                                            m.conv,
                                            m.seq
                                        );
                                    }
                                }
                                news.push(c);
                            }
                            CommitOutcome::Duplicate(_) => dups += 1,
                            other => unreachable!("{other:?}"),
                        }
                    }
                }
                (news, dups)
            }));
        }
    }
    let mut news = Vec::new();
    let mut dups = 0;
    for t in tasks {
        let (n, d) = t.await.expect("writer task");
        news.extend(n);
        dups += d;
    }
    assert!(dups > 0);
    let s = &*b.store;

    // Histories: gapless, holding exactly the answered messages.
    let mut by_conv: BTreeMap<String, Vec<&Committed>> = BTreeMap::new();
    for c in &news {
        by_conv.entry(c.conv.clone()).or_default().push(c);
    }
    for (conv, members) in convs {
        let h = whole_history(s, conv).await;
        assert_eq!(
            h.iter().map(|j| parse(j).seq).collect::<Vec<_>>(),
            (1..=h.len() as u64).collect::<Vec<_>>(),
            "seqs of {conv}"
        );
        let mut answered = by_conv.remove(conv).unwrap_or_default();
        answered.sort_by_key(|c| c.seq);
        assert_eq!(
            answered.iter().map(|c| c.json.clone()).collect::<Vec<_>>(),
            h,
            "history of {conv} is what was answered"
        );
        let _ = members;
    }

    // Inboxes: gapless useqs, each conversation of the user complete and in order.
    let mut entries: HashMap<(String, u64), Bytes> = HashMap::new();
    for uid in ["u0", "u1", "u2", "u3"] {
        let inbox = whole_inbox(s, uid).await;
        assert_eq!(
            inbox.iter().map(|i| i.0).collect::<Vec<_>>(),
            (1..=inbox.len() as u64).collect::<Vec<_>>(),
            "useqs of {uid}"
        );
        let mut per_conv: HashMap<String, Vec<u64>> = HashMap::new();
        for (conv, seq) in refs(&inbox) {
            per_conv.entry(conv).or_default().push(seq);
        }
        for (conv, members) in convs {
            let got = per_conv.remove(conv).unwrap_or_default();
            let want: Vec<u64> = if members.contains(&uid) {
                (1..=s.last_seq(conv).await.unwrap()).collect()
            } else {
                Vec::new()
            };
            assert_eq!(got, want, "{conv} in {uid}'s inbox");
        }
        assert!(per_conv.is_empty());
        for (useq, json) in inbox {
            entries.insert((uid.to_owned(), useq), json);
        }
    }

    // Pushes: every inbox entry reported by exactly one writer, with its JSON.
    let mut reported: HashSet<(String, u64)> = HashSet::new();
    let relayed: Vec<Committed> = stores.iter().flat_map(|s| s.take_relayed()).collect();
    assert!(!relayed.is_empty(), "writers drained each other's messages");
    for c in news.iter().chain(&relayed) {
        for r in &c.recipients {
            assert!(reported.insert(r.clone()), "{r:?} reported twice");
            assert_eq!(entries.get(r), Some(&c.json), "{r:?}");
        }
    }
    assert_eq!(reported.len(), entries.len(), "every entry reported");
}

/// Polls `sweep` on `store` until it has finished `n` entries in all, under a deadline
/// (the sweeper leaves fan-outs younger than its age threshold to their writers).
async fn sweep_until(store: &RedisStore, n: usize) -> usize {
    let end = Instant::now() + Duration::from_secs(15);
    let mut done = 0;
    loop {
        done += store.sweep().await.expect("sweep");
        if done >= n {
            return done;
        }
        assert!(
            Instant::now() < end,
            "the sweeper finished {done} of {n} fan-outs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A writer that died after storing (before any inbox entry): the sweeper of another
/// instance finishes its fan-out and relays it; and a later commit to the conversation
/// finishes it too.
pub(super) async fn crash_recovery(b: Backend) {
    let dead = b.another().await;
    let sweeper = b.another().await;
    let out = dead
        .commit_unfanned(vec![
            msg("g:crash", "a", Some("k1"), &["a", "b", "c"]),
            msg("g:crash", "b", None, &["a", "b", "c"]),
            msg("d:a~b", "a", None, &["a", "b"]),
        ])
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|o| new(o).seq).collect::<Vec<_>>(),
        [1, 2, 1]
    );
    assert!(out.iter().all(|o| new(o).recipients.is_empty()));
    let s = &*b.store;
    assert_eq!(s.last_seq("g:crash").await.unwrap(), 2);
    assert!(whole_inbox(s, "a").await.is_empty());
    // The stored message is a duplicate target already.
    let resend = sweeper
        .commit(vec![msg("g:crash", "a", Some("k1"), &["a", "b", "c"])])
        .await
        .unwrap();
    assert!(matches!(&resend[0], CommitOutcome::Duplicate(j) if *j == new(&out[0]).json));

    assert_eq!(sweep_until(&sweeper, 3).await, 3);
    let relayed = sweeper.take_relayed();
    let mut got: Vec<(String, u64, Vec<String>)> = relayed
        .iter()
        .map(|c| {
            let uids = c.recipients.iter().map(|r| r.0.clone()).collect();
            (c.conv.clone(), c.seq, uids)
        })
        .collect();
    got.sort();
    let uids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            ("d:a~b".into(), 1, uids(&["a", "b"])),
            ("g:crash".into(), 1, uids(&["a", "b", "c"])),
            ("g:crash".into(), 2, uids(&["a", "b", "c"])),
        ]
    );
    for uid in ["a", "b", "c"] {
        let inbox = whole_inbox(s, uid).await;
        // Each relayed pair is the inbox entry it names.
        for c in &relayed {
            for (who, useq) in c.recipients.iter().filter(|r| r.0 == uid) {
                assert_eq!(inbox[*useq as usize - 1].1, c.json, "{who}#{useq}");
            }
        }
        let crash: Vec<u64> = refs(&inbox)
            .into_iter()
            .filter(|(conv, _)| conv == "g:crash")
            .map(|(_, seq)| seq)
            .collect();
        assert_eq!(crash, [1, 2], "g:crash in {uid}'s inbox");
        assert_eq!(inbox.len(), if uid == "c" { 2 } else { 3 });
    }
    assert_eq!(sweeper.sweep().await.unwrap(), 0, "nothing left");

    // Died again; this time the next commit to the conversation finishes it.
    dead.commit_unfanned(vec![msg("g:crash", "c", None, &["a", "b", "c"])])
        .await
        .unwrap();
    let other = b.another().await;
    let out = other
        .commit(vec![msg("g:crash", "a", None, &["a", "b", "c"])])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).seq, 4);
    assert_eq!(
        new(&out[0]).recipients,
        [("a".into(), 5), ("b".into(), 5), ("c".into(), 4)]
    );
    let relayed = other.take_relayed();
    assert_eq!(relayed.len(), 1);
    assert_eq!((relayed[0].seq, relayed[0].recipients.len()), (3, 3));
    assert_eq!(
        whole_inbox(s, "c")
            .await
            .iter()
            .map(|i| i.0)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(other.take_relayed().is_empty());
}

/// A writer that died between claiming a cid and storing its message: a resend waits
/// for it until the claim is half a second old, then takes the cid over and is stored as new; later resends are its
/// duplicates, the dead writer's message included.
pub(super) async fn takeover(b: Backend) {
    let dead = b.another().await;
    let ghost = new_msg("d:a~b", "a", Some("lost"), json!("first"), &["a", "b"]);
    let claimed = Instant::now();
    dead.commit_claims_only(vec![Op::Message(ghost.clone())])
        .await
        .unwrap();
    let s = &*b.store;
    let out = s
        .commit(vec![msg("d:a~b", "a", Some("lost"), &["a", "b"])])
        .await
        .unwrap();
    // The claim's age comes from its key's TTL, in whole milliseconds.
    assert!(
        claimed.elapsed() >= Duration::from_millis(490),
        "it waited for the claimant until its claim was half a second old"
    );
    let taken = new(&out[0]).clone();
    assert_eq!(taken.seq, 1);
    assert_eq!(taken.recipients, [("a".into(), 1), ("b".into(), 1)]);
    let out = s
        .commit(vec![msg("d:a~b", "a", Some("lost"), &["a", "b"])])
        .await
        .unwrap();
    assert!(matches!(&out[0], CommitOutcome::Duplicate(j) if *j == taken.json));
    // The dead writer's message, retried as it was, is a duplicate too.
    let out = dead.commit(vec![Op::Message(ghost)]).await.unwrap();
    assert!(matches!(&out[0], CommitOutcome::Duplicate(j) if *j == taken.json));
    assert_eq!(s.last_seq("d:a~b").await.unwrap(), 1);
}

/// A commit answers once its inbox entries are written; popping its pending fan-out and
/// freeing the lease follow on their own. No sweeper runs here, so nothing but that
/// last step empties the pending list.
pub(super) async fn finish_behind_the_answer(b: Backend) {
    let s = b.another().await;
    let out = s
        .commit(vec![msg("g:soon", "a", None, &["a", "b"])])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).recipients, [("a".into(), 1), ("b".into(), 1)]);
    let end = Instant::now() + Duration::from_secs(5);
    while s.pending_fanouts("g:soon").await.unwrap() > 0 {
        assert!(Instant::now() < end, "the fan-out is still pending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next writer finds the conversation finished: it drains only its own message.
    let next = b.another().await;
    let out = next
        .commit(vec![msg("g:soon", "b", None, &["a", "b"])])
        .await
        .unwrap();
    assert_eq!(new(&out[0]).recipients, [("a".into(), 2), ("b".into(), 2)]);
    assert!(next.take_relayed().is_empty());
    assert!(s.take_relayed().is_empty());
}

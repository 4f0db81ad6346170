//! Retention (`--retention`) and erasure (`DELETE /admin/v1/users/{uid}/messages`)
//! against a real process, on the embedded store and on Redis: old messages leave
//! history, `sync` and the conversation list, reads from before what is kept start at
//! the oldest kept entry and say `"trimmed": true`, sequences go on, Redis gives the
//! memory back; an erasure leaves tombstones without bodies everywhere, and a second
//! one erases nothing.
//!
//! The test build of `imd` accepts a retention of seconds (the `test-hooks` feature);
//! the pass runs every 200 ms (`--retention-interval`). The waits are for the clock to
//! pass a commit time, or for the pass to have removed what it must.

use std::time::Duration;

use serde_json::{Value, json};
use shared::ids::{direct_conv, group_conv};
use shared::protocol::{ClientFrame, ErrorCode, HistoryResponse, ServerFrame, SyncResponse};
use testkit::Redis;

use crate::common::{FRAME_DEADLINE, Imd, metric, now_ms, wait_until};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";
/// The retention of these tests.
const KEEP_MS: i64 = 6_000;

fn start(extra: &[&str]) -> Imd {
    let mut args = vec![
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--retention",
        "6s",
        "--retention-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Imd::start(&args)
}

fn tok(imd: &Imd, uid: &str) -> String {
    imd.token(uid, &format!("{uid}-dev"))
}

/// A history read: `(seqs, trimmed)`, and the body as it came.
async fn history(imd: &Imd, token: &str, conv: &str, after: u64) -> (Vec<u64>, bool, Value) {
    let resp = imd.http().history(token, conv, after, Some(100)).await;
    let page: HistoryResponse = serde_json::from_value(resp.assert_ok().clone())
        .unwrap_or_else(|e| panic!("bad history answer ({e}): {}", resp.body));
    let seqs = page.msgs.iter().map(|m| m.seq).collect();
    (seqs, page.trimmed, resp.body.clone())
}

/// A sync: `(useqs, trimmed)`.
async fn sync(imd: &Imd, token: &str, after: u64) -> (Vec<u64>, bool) {
    let page: SyncResponse = imd.http().sync(token, after, Some(100)).await;
    (page.msgs.iter().map(|i| i.useq).collect(), page.trimmed)
}

/// Waits until the clock is past `ts` (a commit time) plus `ms`.
async fn clock_past(ts: i64, ms: i64) {
    wait_until(
        Duration::from_millis(ms as u64 + 2_000),
        "the clock to pass a commit time",
        || async { now_ms() > ts + ms },
    )
    .await;
}

/// alice and bob write three messages, carol one to alice; later two more. Once the
/// first ones are older than the retention: history and `sync` from 0 start at the
/// oldest kept, with `"trimmed": true` (and without it from there on), over HTTP and
/// WebSocket; carol's conversation, all of whose messages left, leaves alice's list;
/// a recall of a removed message is 404; the next message gets the next seq and useqs;
/// the metrics count the removals. Returns the process, for the backend's own checks.
async fn old_messages_leave(imd: Imd) -> Imd {
    let (alice, bob, carol) = (tok(&imd, "alice"), tok(&imd, "bob"), tok(&imd, "carol"));
    let http = imd.http();
    let ab = direct_conv("alice", "bob");
    let ac = direct_conv("alice", "carol");
    http.send_to(&alice, "bob", None, json!("old 1")).await;
    http.send_to(&bob, "alice", None, json!("old 2")).await;
    http.send_to(&carol, "alice", None, json!("old c")).await;
    let last_old = http.send_to(&alice, "bob", None, json!("old 3")).await;
    // Kept while the old ones leave: sent well after them.
    clock_past(last_old.ts, KEEP_MS / 2).await;
    http.send_to(&bob, "alice", None, json!("new 4")).await;
    let kept = http.send_to(&alice, "bob", None, json!("new 5")).await;
    assert_eq!(kept.seq, 5);
    assert_eq!(history(&imd, &alice, &ab, 0).await.0, [1, 2, 3, 4, 5]);

    // The old ones leave once they are older than the retention (and a pass ran).
    wait_until(
        Duration::from_millis(KEEP_MS as u64),
        "the old messages to leave the history",
        || async { history(&imd, &alice, &ab, 0).await.0 == [4, 5] },
    )
    .await;
    // What relies on 4 and 5 being kept comes first: they leave 3 s later.
    let (seqs, trimmed, body) = history(&imd, &bob, &ab, 0).await;
    assert_eq!((seqs, trimmed), (vec![4, 5], true));
    assert_eq!(body["trimmed"], json!(true), "{body}");
    let (seqs, trimmed, body) = history(&imd, &bob, &ab, 3).await;
    assert_eq!((seqs, trimmed), (vec![4, 5], false));
    assert!(
        body.get("trimmed").is_none(),
        "absent when nothing was skipped: {body}"
    );

    // bob's inbox: 1 to 3 leave; alice's: 1 to 4 (3 was carol's).
    wait_until(
        FRAME_DEADLINE,
        "the old entries to leave bob's inbox",
        || async { sync(&imd, &bob, 0).await == (vec![4, 5], true) },
    )
    .await;
    assert_eq!(sync(&imd, &bob, 3).await, (vec![4, 5], false));
    assert_eq!(sync(&imd, &bob, 4).await, (vec![5], false));
    wait_until(
        FRAME_DEADLINE,
        "the old entries to leave alice's inbox",
        || async { sync(&imd, &alice, 0).await == (vec![5, 6], true) },
    )
    .await;
    let mut ws = imd.ws(&bob).await;
    ws.send_frame(&ClientFrame::Sync {
        after: 0,
        limit: None,
    })
    .await;
    let f = ws
        .next_matching(FRAME_DEADLINE, "synced", |f| {
            matches!(f, ServerFrame::Synced { .. })
        })
        .await;
    let ServerFrame::Synced { msgs, trimmed, .. } = f else {
        unreachable!("matched a synced frame")
    };
    assert_eq!(msgs.iter().map(|i| i.useq).collect::<Vec<_>>(), [4, 5]);
    assert!(trimmed, "the WebSocket sync says trimmed too");
    ws.close().await;

    // Sequences go on.
    let next = http.send_to(&alice, "bob", None, json!("next")).await;
    assert_eq!(next.seq, 6);
    assert_eq!(sync(&imd, &bob, 5).await, (vec![6], false));
    assert_eq!(history(&imd, &alice, &ac, 0).await.0, Vec::<u64>::new());

    // carol's conversation left alice's list; bob's stayed.
    wait_until(
        FRAME_DEADLINE,
        "the emptied conversation to leave alice's list",
        || async {
            let list = http.conversation_list(&alice, "").await;
            list.convs.iter().all(|e| e.conv != ac)
        },
    )
    .await;
    let list = http.conversation_list(&alice, "").await;
    assert_eq!(
        list.convs
            .iter()
            .map(|e| e.conv.as_str())
            .collect::<Vec<_>>(),
        [ab.as_str()]
    );

    // A removed message cannot be recalled.
    http.recall(&alice, &ab, 3, false)
        .await
        .assert_error(404, ErrorCode::NotFound);

    let again = http.send_to(&carol, "alice", None, json!("again")).await;
    assert_eq!(again.seq, 2);
    assert_eq!(history(&imd, &carol, &ac, 0).await.0, [2]);

    let text = http.metrics().await;
    assert!(
        metric(&text, "imd_retention_removed_total").unwrap_or(0.0) >= 12.0,
        "4 messages and 8 inbox entries removed: {text}"
    );
    assert!(metric(&text, "imd_retention_last_pass_timestamp_seconds").unwrap_or(0.0) > 0.0);
    imd
}

#[tokio::test]
async fn old_messages_leave_history_sync_and_lists_embedded() {
    old_messages_leave(start(&[])).await;
}

#[tokio::test]
async fn old_messages_leave_history_sync_and_lists_on_redis_and_free_its_memory() {
    let redis = Redis::standalone();
    let url = redis.url();
    let _imd = old_messages_leave(start(&["--redis", &url])).await;
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let for_llen = conn.clone();
    let llen = |key: String| {
        let mut conn = for_llen.clone();
        async move {
            redis::cmd("LLEN")
                .arg(key)
                .query_async::<u64>(&mut conn)
                .await
                .expect("LLEN")
        }
    };
    let ab = direct_conv("alice", "bob");
    // 4, 5 and 6 are kept: the list holds those only; the bases count what left.
    assert_eq!(llen(format!("imd:{{c:{ab}}}:msgs")).await, 3);
    assert_eq!(llen("imd:{u:bob}:inbox".into()).await, 3);
    let base: u64 = redis::cmd("GET")
        .arg(format!("imd:{{c:{ab}}}:msgs:base"))
        .query_async(&mut conn)
        .await
        .expect("GET base");
    assert_eq!(base, 3);
    // carol's first message left, and with it its id.
    let ac = direct_conv("alice", "carol");
    assert_eq!(llen(format!("imd:{{c:{ac}}}:msgs")).await, 1);
    let ids: u64 = redis::cmd("HLEN")
        .arg(format!("imd:{{c:{ac}}}:ids"))
        .query_async(&mut conn)
        .await
        .expect("HLEN");
    assert_eq!(ids, 1);
}

/// alice writes to bob and in a group; bob and carol write too; an operator erases
/// alice's messages: each is a tombstone (`"erased": true`, no body, same id and seq)
/// in history and in every member's `sync`; the others' messages keep their bodies; a
/// second erasure erases nothing; alice writes again as before.
async fn erasure_leaves_tombstones(imd: Imd) {
    let (alice, bob, carol) = (tok(&imd, "alice"), tok(&imd, "bob"), tok(&imd, "carol"));
    let http = imd.http();
    http.put_group(ADMIN, "team", &["alice", "bob", "carol"])
        .await;
    let ab = direct_conv("alice", "bob");
    let team = group_conv("team");
    let first = http.send_to(&alice, "bob", None, json!("secret 1")).await;
    http.send_to(&bob, "alice", None, json!("reply")).await;
    http.send_to(&alice, "bob", None, json!({"secret": 2}))
        .await;
    http.send_in(&alice, &team, json!("secret 3")).await;
    http.send_in(&carol, &team, json!("carol's")).await;

    let erase = |uid: &'static str| {
        let http = http.clone();
        async move {
            http.delete(&format!("/admin/v1/users/{uid}/messages"), Some(ADMIN))
                .await
        }
    };
    let resp = erase("alice").await;
    assert_eq!(resp.assert_ok(), &json!({"erased": 3}));

    let is_tombstone = |m: &shared::protocol::Message| m.erased && m.body.is_none();
    let h = http.history_all(&bob, &ab).await;
    assert_eq!(
        h.iter().map(is_tombstone).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!((h[0].id.as_str(), h[0].seq), (first.id.as_str(), 1));
    assert_eq!(h[1].body, Some(json!("reply")));
    let h = http.history_all(&carol, &team).await;
    assert_eq!(
        h.iter().map(is_tombstone).collect::<Vec<_>>(),
        [true, false]
    );
    for token in [&alice, &bob, &carol] {
        for item in http.sync_all(token, 0, 100).await {
            let m = &item.msg;
            assert_eq!(is_tombstone(m), m.from == "alice", "{m:?}");
        }
    }
    let raw = http.history(&bob, &ab, 0, None).await;
    assert_eq!(raw.body["msgs"][0]["erased"], json!(true));
    assert!(raw.body["msgs"][0].get("body").is_none());

    // Idempotent.
    assert_eq!(erase("alice").await.assert_ok(), &json!({"erased": 0}));
    assert_eq!(erase("nobody").await.assert_ok(), &json!({"erased": 0}));
    http.delete("/admin/v1/users/not%20valid/messages", Some(ADMIN))
        .await
        .assert_error(400, ErrorCode::BadRequest);
    http.delete("/admin/v1/users/alice/messages", Some(&alice))
        .await
        .assert_error(403, ErrorCode::Forbidden);

    // Not a ban: alice writes on.
    let later = http
        .send_to(&alice, "bob", None, json!("hello again"))
        .await;
    assert_eq!(later.body, Some(json!("hello again")));
    let text = http.metrics().await;
    assert_eq!(metric(&text, "imd_erased_total"), Some(3.0));
}

#[tokio::test]
async fn erasure_leaves_tombstones_everywhere_embedded() {
    erasure_leaves_tombstones(Imd::start(&[
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
    ]))
    .await;
}

#[tokio::test]
async fn erasure_leaves_tombstones_everywhere_on_redis() {
    let redis = Redis::standalone();
    let url = redis.url();
    erasure_leaves_tombstones(Imd::start(&[
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--redis",
        &url,
    ]))
    .await;
}

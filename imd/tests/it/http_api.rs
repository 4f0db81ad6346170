//! The HTTP API against a real process: message shape, history access and paging,
//! health and metrics.

use serde_json::{Value, json};
use shared::ids::direct_conv;
use shared::protocol::{ErrorCode, HistoryResponse};

use crate::common::{FRAME_DEADLINE, Imd, metric, now_ms, wait_until};

/// A message serializes as `{"id","conv","seq","from","body","ts"}` plus `cid` only when
/// the sender gave one.
#[tokio::test]
async fn message_has_the_contract_shape() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let alice = imd.token("alice", "a1");
    let before = now_ms();

    let body = json!({"text": "hi", "n": [1, 2, {"deep": null}]});
    let with_cid = http
        .post_message(&alice, &json!({"cid": "k1", "to": "bob", "body": body}))
        .await;
    let msg = &with_cid.assert_ok()["msg"];
    assert!(
        msg["id"].as_str().is_some_and(|s| !s.is_empty()),
        "id: {msg}"
    );
    assert_eq!(msg["conv"], json!(direct_conv("alice", "bob")));
    assert_eq!(msg["seq"], json!(1));
    assert_eq!(msg["from"], json!("alice"));
    assert_eq!(msg["body"], body, "body comes back as sent");
    assert_eq!(msg["cid"], json!("k1"));
    let ts = msg["ts"].as_i64().expect("ts is an integer");
    let after = now_ms();
    assert!(
        (before - 1000..=after + 1000).contains(&ts),
        "ts {ts} is unix ms now"
    );

    let without = http
        .post_message(&alice, &json!({"to": "bob", "body": 5}))
        .await;
    let msg2 = &without.assert_ok()["msg"];
    assert!(
        msg2.get("cid").is_none(),
        "no cid key without a cid: {msg2}"
    );
    assert_eq!(msg2["seq"], json!(2));
    assert_ne!(msg2["id"], msg["id"]);

    // The same shape in history.
    let hist = http
        .history(&alice, &direct_conv("alice", "bob"), 0, None)
        .await;
    let msgs = hist.assert_ok()["msgs"].as_array().expect("msgs").clone();
    assert_eq!(msgs, vec![msg.clone(), msg2.clone()]);
}

/// Sending into a direct conversation by its `conv` id works for a member.
#[tokio::test]
async fn member_can_send_by_conv_id() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let alice = imd.token("alice", "a1");
    let first = http.send_to(&alice, "bob", None, json!(1)).await;
    let resp = http
        .post_message(&alice, &json!({"conv": first.conv, "body": 2}))
        .await;
    let v = resp.assert_ok();
    assert_eq!(v["msg"]["conv"], json!(first.conv));
    assert_eq!(v["msg"]["seq"], json!(2));
}

/// History is for members only: 403 `forbidden` for anyone else, 200 for both members,
/// paged by `after`/`limit` with `more`.
#[tokio::test]
async fn conversation_history_is_members_only() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let alice = imd.token("alice", "a1");
    let bob = imd.token("bob", "b1");
    let carol = imd.token("carol", "c1");
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(http.send_to(&alice, "bob", None, json!(i)).await);
    }
    let conv = direct_conv("alice", "bob");

    http.history(&carol, &conv, 0, None)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    let no_token = http
        .get(&format!("/v1/conversations/{conv}/messages?after=0"), None)
        .await;
    no_token.assert_error(401, ErrorCode::Unauthorized);

    for (who, token) in [("alice", &alice), ("bob", &bob)] {
        let resp = http.history(token, &conv, 0, None).await;
        let page: HistoryResponse =
            serde_json::from_value(resp.assert_ok().clone()).expect("history");
        assert_eq!((page.msgs, page.more), (sent.clone(), false), "{who}");
    }

    let resp = http.history(&bob, &conv, 1, Some(1)).await;
    let page: HistoryResponse = serde_json::from_value(resp.assert_ok().clone()).expect("history");
    assert_eq!((page.msgs, page.more), (vec![sent[1].clone()], true));
    let resp = http.history(&bob, &conv, 2, Some(1)).await;
    let page: HistoryResponse = serde_json::from_value(resp.assert_ok().clone()).expect("history");
    assert_eq!((page.msgs, page.more), (vec![sent[2].clone()], false));
}

/// `/healthz` is 200 without a token.
#[tokio::test]
async fn healthz_is_200_without_auth() {
    let imd = Imd::start(&[]);
    let resp = imd.http().get("/healthz", None).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
}

/// `/metrics` is Prometheus text with the counters, the connection gauge and the
/// latency histograms, and they move with traffic.
#[tokio::test]
async fn metrics_count_commits_pushes_acks_and_connections() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let mut bob = imd.ws_as("bob", "b1").await;
    let alice = imd.token("alice", "a1");
    http.send_to(&alice, "bob", None, json!("hi")).await;
    let (useq, _) = bob.expect_push().await;
    bob.ack(&[useq]).await;

    let at_least = |text: &str, name: &str, min: f64| metric(text, name).is_some_and(|v| v >= min);
    wait_until(FRAME_DEADLINE, "metrics after one message", || async {
        let text = http.metrics().await;
        at_least(&text, "imd_messages_committed_total", 1.0)
            && at_least(&text, "imd_pushes_total", 1.0)
            && at_least(&text, "imd_acks_total", 1.0)
            && metric(&text, "imd_connections") == Some(1.0)
            && at_least(&text, "imd_commit_latency_seconds_count", 1.0)
            && at_least(&text, "imd_push_latency_seconds_count", 1.0)
    })
    .await;
    let text = http.metrics().await;
    for name in [
        "imd_messages_committed_total",
        "imd_pushes_total",
        "imd_acks_total",
        "imd_connections",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("# TYPE ") && l.contains(name)),
            "no # TYPE line for {name}:\n{text}"
        );
    }

    bob.close().await;
    wait_until(FRAME_DEADLINE, "imd_connections back to 0", || async {
        metric(&http.metrics().await, "imd_connections") == Some(0.0)
    })
    .await;
}

/// The sync endpoint clamps `limit` to 1000 and reads from `after`.
#[tokio::test]
async fn http_sync_reads_after_and_clamps_limit() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let alice = imd.token("alice", "a1");
    for i in 0..3 {
        http.send_to(&alice, "bob", None, json!(i)).await;
    }
    let page = http.sync(&alice, 1, Some(5000)).await;
    let useqs: Vec<u64> = page.msgs.iter().map(|i| i.useq).collect();
    assert_eq!((useqs, page.more), (vec![2, 3], false));
    let resp = http.get("/v1/sync?after=0", Some(&alice)).await;
    assert_eq!(resp.assert_ok()["msgs"].as_array().map(Vec::len), Some(3));
    assert_eq!(resp.body["more"], Value::Bool(false));
}

//! Groups, the sensitive-word filter and rate limits against a real process.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::protocol::{ErrorCode, Message, ServerFrame};

use crate::common;
use crate::common::{Auth, Http, Imd, WsClient, claims, mint, try_ws_from, wait_until};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

fn tok(uid: &str, device: &str) -> String {
    mint(SECRET, &claims(uid, device, 3600))
}

fn start_with(extra: &[&str]) -> Imd {
    let mut args = vec!["--token-secret", SECRET, "--admin-token", ADMIN];
    args.extend_from_slice(extra);
    Imd::start(&args)
}

fn msg_of(resp: &common::Resp) -> Message {
    let v = resp.assert_ok();
    serde_json::from_value(v["msg"].clone()).unwrap_or_else(|e| panic!("bad answer ({e}): {v}"))
}

async fn history(http: &Http, token: &str, conv: &str) -> Vec<Message> {
    let resp = http.history(token, conv, 0, None).await;
    serde_json::from_value(resp.assert_ok()["msgs"].clone()).expect("history messages")
}

/// The next push of `c`, acked.
async fn push(c: &mut WsClient) -> Message {
    let (useq, msg) = c.expect_push().await;
    c.ack(&[useq]).await;
    msg
}

// ---------------------------------------------------------------------------------
// Groups

/// A message into `g:{name}` reaches every device of every member (the sender's too);
/// a non-member gets 403 on send (HTTP and WebSocket) and on history, and nothing;
/// members read the history; an unknown group is 404; membership changes apply.
#[tokio::test]
async fn group_fans_out_to_every_members_devices_and_refuses_others() {
    let imd = start_with(&[]);
    let http = imd.http();
    let resp = http
        .put_json(
            "/admin/v1/groups/team/members",
            Some(ADMIN),
            &json!({"members": ["ga", "gb", "gc"]}),
        )
        .await;
    assert_eq!(resp.assert_ok(), &json!({}));
    let got = http.get("/admin/v1/groups/team/members", Some(ADMIN)).await;
    assert_eq!(got.assert_ok(), &json!({"members": ["ga", "gb", "gc"]}));

    let mut devices = [
        ("ga/1", imd.ws(&tok("ga", "1")).await),
        ("ga/2", imd.ws(&tok("ga", "2")).await),
        ("gb", imd.ws(&tok("gb", "1")).await),
        ("gc", imd.ws(&tok("gc", "1")).await),
    ];
    let mut outsider = imd.ws(&tok("gd", "1")).await;

    devices[0]
        .1
        .send_json(&json!({"type": "send", "cid": "g1", "conv": "g:team", "body": "standup"}))
        .await;
    let m1 = devices[0].1.expect_sent("g1").await;
    assert_eq!(
        (m1.conv.as_str(), m1.seq, m1.from.as_str()),
        ("g:team", 1, "ga")
    );
    let m2 = msg_of(
        &http
            .post_message(&tok("gb", "1"), &json!({"conv": "g:team", "body": "ok"}))
            .await,
    );
    assert_eq!((m2.seq, m2.from.as_str()), (2, "gb"));
    for (name, c) in devices.iter_mut() {
        assert_eq!(push(c).await, m1, "{name}: first group message");
        assert_eq!(push(c).await, m2, "{name}: second group message");
    }
    outsider.ping_pong().await;
    assert!(
        outsider.take_pending().is_empty(),
        "a non-member got a push"
    );

    let gd = tok("gd", "1");
    http.post_message(&gd, &json!({"conv": "g:team", "body": "me too"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.history(&gd, "g:team", 0, None)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    outsider
        .send_json(&json!({"type": "send", "cid": "x", "conv": "g:team", "body": "me too"}))
        .await;
    let (cid, code) = outsider.expect_error().await;
    assert_eq!((cid.as_deref(), code), (Some("x"), ErrorCode::Forbidden));
    for member in ["ga", "gb", "gc"] {
        assert_eq!(
            history(&http, &tok(member, "1"), "g:team").await,
            [m1.clone(), m2.clone()],
            "{member} reads the group"
        );
    }

    http.post_message(&tok("ga", "1"), &json!({"conv": "g:nope", "body": "?"}))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.get("/admin/v1/groups/nope/members", Some(ADMIN))
        .await
        .assert_error(404, ErrorCode::NotFound);

    // gc leaves, gd joins.
    http.put_json(
        "/admin/v1/groups/team/members",
        Some(ADMIN),
        &json!({"members": ["ga", "gb", "gd"]}),
    )
    .await
    .assert_ok();
    http.post_message(&tok("gc", "1"), &json!({"conv": "g:team", "body": "hey"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    let m3 = msg_of(
        &http
            .post_message(&gd, &json!({"conv": "g:team", "body": "joined"}))
            .await,
    );
    assert_eq!(
        push(&mut outsider).await,
        m3,
        "the new member gets the push"
    );
}

// ---------------------------------------------------------------------------------
// Sensitive words

fn words_file(dir: &Path, words: &[&str]) -> String {
    let path = dir.join("words.txt");
    let mut text = words.join("\n");
    text.push('\n');
    std::fs::write(&path, text).expect("write words file");
    path.display().to_string()
}

/// A body with the words in every form the filter must catch, and what `mask` makes of
/// it (list: `傻瓜`, `spam`).
fn dirty_and_masked() -> (Value, Value) {
    (
        json!({
            "text": "你是傻瓜吗 SPAM, ＳＰＡＭ and spam!",
            "list": ["Spam", {"deep": "傻瓜"}, "ｓpAＭ"],
            "n": 5,
            "clean": "hello",
        }),
        json!({
            "text": "你是**吗 ****, **** and ****!",
            "list": ["****", {"deep": "**"}, "****"],
            "n": 5,
            "clean": "hello",
        }),
    )
}

/// `mask`: each matched character (CJK, upper-case ASCII, full-width) becomes `*` in
/// every string of the body; the masked message is what is answered, pushed and stored.
#[tokio::test]
async fn mask_policy_masks_cjk_upper_case_and_full_width_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = words_file(dir.path(), &["傻瓜", "spam"]);
    let imd = start_with(&["--words-file", &file, "--words-policy", "mask"]);
    let http = imd.http();
    let status = http.get("/admin/v1/words", Some(ADMIN)).await;
    assert_eq!(status.assert_ok(), &json!({"count": 2, "policy": "mask"}));

    let mut alice = imd.ws(&tok("alice", "a")).await;
    let mut bob = imd.ws(&tok("bob", "b")).await;
    let (dirty, masked) = dirty_and_masked();
    alice
        .send_json(&json!({"type": "send", "cid": "w1", "to": "bob", "body": dirty}))
        .await;
    let sent = alice.expect_sent("w1").await;
    assert_eq!(
        sent.body.clone().unwrap_or_default(),
        masked,
        "the sender's answer is masked"
    );
    assert_eq!(push(&mut bob).await, sent, "bob's push is masked");

    let sent2 = msg_of(
        &http
            .post_message(
                &tok("alice", "a"),
                &json!({"to": "bob", "body": "SPAM傻瓜"}),
            )
            .await,
    );
    assert_eq!(sent2.body.clone().unwrap_or_default(), json!("******"));
    assert_eq!(push(&mut bob).await, sent2);
    let stored = history(&http, &tok("bob", "b"), &sent.conv).await;
    assert_eq!(stored, [sent, sent2], "the stored messages are masked");
}

/// `reject`: a body with a word anywhere, in any form, gets 400 `blocked_content` (an
/// `error` frame on WebSocket) and nothing is stored; clean bodies pass.
#[tokio::test]
async fn reject_policy_refuses_cjk_upper_case_and_full_width_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = words_file(dir.path(), &["傻瓜", "spam"]);
    let imd = start_with(&["--words-file", &file, "--words-policy", "reject"]);
    let http = imd.http();
    let alice = tok("alice", "a");

    let (dirty, _) = dirty_and_masked();
    for body in [
        json!("你是傻瓜"),
        json!("SPAM"),
        json!("ＳＰＡＭ"),
        json!({"a": ["ok", {"b": "buy Spam now"}]}),
        dirty,
    ] {
        http.post_message(&alice, &json!({"to": "bob", "body": body}))
            .await
            .assert_error(400, ErrorCode::BlockedContent);
    }
    let mut ws = imd.ws(&alice).await;
    ws.send_json(&json!({"type": "send", "cid": "r1", "to": "bob", "body": {"t": "傻瓜"}}))
        .await;
    let (cid, code) = ws.expect_error().await;
    assert_eq!(
        (cid.as_deref(), code),
        (Some("r1"), ErrorCode::BlockedContent)
    );

    let clean = msg_of(
        &http
            .post_message(&alice, &json!({"to": "bob", "body": "spa m, 傻 瓜"}))
            .await,
    );
    assert_eq!(clean.seq, 1, "refused messages took no seq");
    let inbox = http.sync(&tok("bob", "b"), 0, None).await;
    let got: Vec<Message> = inbox.msgs.into_iter().map(|i| i.msg).collect();
    assert_eq!(got, [clean], "only the clean message is stored");
}

/// `PUT /admin/v1/words` replaces the list (and the policy when given) at once; `GET`
/// tells the count and policy.
#[tokio::test]
async fn put_words_changes_the_filter_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = words_file(dir.path(), &["spam"]);
    let imd = start_with(&["--words-file", &file, "--words-policy", "mask"]);
    let http = imd.http();
    let alice = tok("alice", "a");
    let send = |body: &'static str| {
        let http = http.clone();
        let alice = alice.clone();
        async move {
            http.post_message(&alice, &json!({"to": "bob", "body": body}))
                .await
        }
    };
    assert_eq!(
        msg_of(&send("SPAM ham").await)
            .body
            .clone()
            .unwrap_or_default(),
        json!("**** ham")
    );

    let resp = http
        .put_json(
            "/admin/v1/words",
            Some(ADMIN),
            &json!({"words": ["ham", "火腿"], "policy": "reject"}),
        )
        .await;
    assert_eq!(resp.assert_ok(), &json!({"count": 2, "policy": "reject"}));
    let got = http.get("/admin/v1/words", Some(ADMIN)).await;
    assert_eq!(got.assert_ok(), &json!({"count": 2, "policy": "reject"}));
    send("HAM")
        .await
        .assert_error(400, ErrorCode::BlockedContent);
    send("有火腿")
        .await
        .assert_error(400, ErrorCode::BlockedContent);
    assert_eq!(
        msg_of(&send("SPAM").await).body.clone().unwrap_or_default(),
        json!("SPAM"),
        "spam is off the list now"
    );

    // Without `policy`, the policy stays.
    let resp = http
        .put_json("/admin/v1/words", Some(ADMIN), &json!({"words": ["egg"]}))
        .await;
    assert_eq!(resp.assert_ok(), &json!({"count": 1, "policy": "reject"}));
    send("EGG")
        .await
        .assert_error(400, ErrorCode::BlockedContent);
    assert_eq!(
        msg_of(&send("ham").await).body.clone().unwrap_or_default(),
        json!("ham")
    );

    let resp = http
        .put_json(
            "/admin/v1/words",
            Some(ADMIN),
            &json!({"words": ["egg"], "policy": "mask"}),
        )
        .await;
    assert_eq!(resp.assert_ok(), &json!({"count": 1, "policy": "mask"}));
    assert_eq!(
        msg_of(&send("ＥＧＧ egg").await)
            .body
            .clone()
            .unwrap_or_default(),
        json!("*** ***")
    );

    http.put_json(
        "/admin/v1/words",
        Some(ADMIN),
        &json!({"words": ["x"], "policy": "drop"}),
    )
    .await
    .assert_error(400, ErrorCode::BadRequest);
    let got = http.get("/admin/v1/words", Some(ADMIN)).await;
    assert_eq!(
        got.assert_ok(),
        &json!({"count": 1, "policy": "mask"}),
        "a refused PUT changes nothing"
    );
}

/// SIGHUP reloads the words file: the new list applies and the old one no longer does.
#[tokio::test]
async fn sighup_reloads_the_words_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = words_file(dir.path(), &["spam"]);
    let imd = start_with(&["--words-file", &file, "--words-policy", "mask"]);
    let http = imd.http();
    let alice = tok("alice", "a");
    let send = || async {
        msg_of(
            &http
                .post_message(&alice, &json!({"to": "bob", "body": "spam and ham"}))
                .await,
        )
        .body
        .clone()
        .unwrap_or_default()
    };
    assert_eq!(send().await, json!("**** and ham"));

    words_file(dir.path(), &["ham"]);
    imd.sighup();
    wait_until(
        Duration::from_secs(5),
        "the reloaded list to apply",
        || async { send().await == json!("spam and ***") },
    )
    .await;
    let status = http.get("/admin/v1/words", Some(ADMIN)).await;
    assert_eq!(status.assert_ok(), &json!({"count": 1, "policy": "mask"}));
    // Still serving after the signal.
    assert!(
        imd.http().metrics().await.contains('#'),
        "/metrics after SIGHUP"
    );
}

// ---------------------------------------------------------------------------------
// Rate limits

/// The most sends a bucket of `burst` refilled at `rate` per second may allow in
/// `elapsed`.
fn most_allowed(burst: u32, rate: u32, elapsed: Duration) -> usize {
    burst as usize + (elapsed.as_secs_f64() * f64::from(rate)).ceil() as usize
}

/// With `--send-burst 5 --send-rate 1`, a burst of HTTP sends gets 429 `rate_limited`
/// after the fifth; another uid is not affected; the bucket refills at the rate.
#[tokio::test]
async fn http_send_burst_gets_429_after_the_burst() {
    let imd = start_with(&["--send-burst", "5", "--send-rate", "1"]);
    let http = imd.http();
    let alice = tok("alice", "a");

    let t0 = Instant::now();
    let mut results = Vec::new();
    for i in 0..10 {
        let r = http
            .post_message(&alice, &json!({"to": "bob", "body": i}))
            .await;
        results.push((r, t0.elapsed()));
    }
    let total = t0.elapsed();
    for (i, (r, _)) in results.iter().enumerate().take(5) {
        assert_eq!(r.status, 200, "send {i} is within the burst: {}", r.body);
    }
    let (sixth, at) = &results[5];
    if *at < Duration::from_secs(1) {
        sixth.assert_error(429, ErrorCode::RateLimited);
    }
    let mut ok = 0;
    for (r, _) in &results {
        match r.status {
            200 => ok += 1,
            _ => r.assert_error(429, ErrorCode::RateLimited),
        }
    }
    assert!(
        ok <= most_allowed(5, 1, total),
        "{ok} of 10 sends went through in {total:?}"
    );
    assert!(ok < 10, "no send was limited");

    // Per uid: bob is not limited.
    http.send_to(&tok("bob", "b"), "alice", None, json!("fine"))
        .await;
    // The bucket refills at 1 per second.
    wait_until(
        Duration::from_secs(3),
        "alice's bucket to refill",
        || async {
            http.post_message(&alice, &json!({"to": "bob", "body": "later"}))
                .await
                .status
                == 200
        },
    )
    .await;
}

/// Over WebSocket, the send after the burst gets an `error` frame `rate_limited` with
/// its cid, and the connection stays open.
#[tokio::test]
async fn websocket_send_over_the_limit_gets_rate_limited() {
    let imd = start_with(&["--send-burst", "5", "--send-rate", "1"]);
    let mut carol = imd.ws(&tok("carol", "c")).await;
    let t0 = Instant::now();
    for i in 0..6 {
        carol.send_to("dave", &format!("w{i}"), json!(i)).await;
    }
    let mut sent = Vec::new();
    let mut limited = Vec::new();
    for _ in 0..6 {
        let f = carol
            .next_matching(common::FRAME_DEADLINE, "sent or error", |f| {
                matches!(f, ServerFrame::Sent { .. } | ServerFrame::Error { .. })
            })
            .await;
        match f {
            ServerFrame::Sent { cid, .. } => sent.push(cid.expect("cid")),
            ServerFrame::Error { cid, code, .. } => {
                assert_eq!(code, ErrorCode::RateLimited, "error for {cid:?}");
                limited.push(cid.expect("cid"));
            }
            _ => unreachable!(),
        }
    }
    let elapsed = t0.elapsed();
    assert!(
        sent.len() <= most_allowed(5, 1, elapsed),
        "sent {sent:?} in {elapsed:?}"
    );
    if elapsed < Duration::from_secs(1) {
        assert_eq!(limited, ["w5"], "the sixth send is limited");
    }
    carol.ping_pong().await;
}

/// `--send-rate 0` turns the send limit off.
#[tokio::test]
async fn send_rate_zero_is_unlimited() {
    let imd = start_with(&["--send-burst", "5", "--send-rate", "0"]);
    let mut erin = imd.ws(&tok("erin", "e")).await;
    const N: usize = 250;
    for i in 0..N {
        erin.send_to("frank", &format!("u{i}"), json!(i)).await;
    }
    for i in 0..N {
        let f = erin
            .next_matching(common::FRAME_DEADLINE, "sent or error", |f| {
                matches!(f, ServerFrame::Sent { .. } | ServerFrame::Error { .. })
            })
            .await;
        assert!(
            matches!(f, ServerFrame::Sent { .. }),
            "send {i} with the limit off: {f:?}"
        );
    }
}

/// With `--connect-burst 3 --connect-rate 1`, the fourth upgrade from one ip in a burst
/// gets 429 `rate_limited`; another ip is not affected; the bucket refills.
#[tokio::test]
async fn upgrade_burst_gets_429_per_ip() {
    let imd = start_with(&["--connect-burst", "3", "--connect-rate", "1"]);
    let url = imd.ws_url();
    let lo1 = "127.0.0.1".parse().expect("ip");
    let lo9 = "127.0.0.9".parse().expect("ip");

    let t0 = Instant::now();
    let mut kept = Vec::new();
    let mut refused = Vec::new();
    for i in 0..6 {
        match try_ws_from(&url, Auth::Header(&tok("u", &format!("d{i}"))), lo1).await {
            Ok(c) => kept.push((i, c)),
            Err(resp) => {
                resp.assert_error(429, ErrorCode::RateLimited);
                refused.push((i, t0.elapsed()));
            }
        }
    }
    let elapsed = t0.elapsed();
    let ok: Vec<usize> = kept.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        &ok[..3.min(ok.len())],
        [0, 1, 2],
        "the burst of 3 goes through"
    );
    assert!(
        ok.len() <= most_allowed(3, 1, elapsed),
        "{} upgrades went through in {elapsed:?}",
        ok.len()
    );
    if elapsed < Duration::from_secs(1) {
        assert_eq!(ok, [0, 1, 2], "everything after the burst is refused");
    }
    assert!(!refused.is_empty(), "no upgrade was limited");

    // Another ip has its own bucket.
    WsClient::connect_from(&url, Auth::Header(&tok("v", "d")), lo9).await;
    // The bucket refills at 1 per second.
    wait_until(
        Duration::from_secs(3),
        "the ip's bucket to refill",
        || async {
            try_ws_from(&url, Auth::Header(&tok("u", "late")), lo1)
                .await
                .is_ok()
        },
    )
    .await;
}

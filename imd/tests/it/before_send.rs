//! The pre-send hook against a real process and a real HTTP receiver
//! (`docs/webhooks.md`, *Pre-send hook*): it is asked, signed, before a message is
//! committed; its `allow`, `reject` (with the reason the sender is told, over HTTP and
//! WebSocket) and `replace` (the body committed and delivered) decide; a hook that
//! fails or does not answer in time lets the message through, unless
//! `--hook-fail-closed` refuses it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::protocol::{ErrorCode, ServerFrame};

use crate::common::{Answer, Got, Imd, Receiver, WsClient, claims, metric, mint};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";
const HOOK_SECRET: &str = "hook-secret-0123456789";
const FRAME: Duration = Duration::from_secs(5);

fn tok(uid: &str) -> String {
    mint(SECRET, &claims(uid, "d", 3600))
}

/// An imd whose pre-send hook is `receiver`, signed, with `extra` flags.
fn start(receiver: &Receiver, extra: &[&str]) -> Imd {
    let url = receiver.url("/hook");
    let mut args = vec![
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--webhook-secret",
        HOOK_SECRET,
        "--hook-before-send",
        &url,
    ];
    args.extend_from_slice(extra);
    Imd::start(&args)
}

/// Checks `got`'s signature with the secret of these tests.
fn signed(got: &Got) -> bool {
    got.signed_with(HOOK_SECRET)
}

fn error_frame(f: &ServerFrame) -> Option<(Option<String>, ErrorCode, String)> {
    match f {
        ServerFrame::Error { cid, code, message } => Some((cid.clone(), *code, message.clone())),
        _ => None,
    }
}

/// The next `error` frame of `ws`: `(cid, code, message)`.
async fn next_error(ws: &mut WsClient) -> (Option<String>, ErrorCode, String) {
    let f = ws
        .next_matching(FRAME, "error", |f| error_frame(f).is_some())
        .await;
    error_frame(&f).expect("matched an error frame")
}

#[tokio::test]
async fn an_allowed_message_is_committed_after_a_signed_question() {
    let receiver = Receiver::start(Answer::Json(json!({"action": "allow"}))).await;
    let imd = start(&receiver, &[]);
    let http = imd.http();
    let msg = http
        .send_to(&tok("alice"), "bob", Some("c1"), json!({"text": "hi"}))
        .await;
    assert_eq!(msg.body, Some(json!({"text": "hi"})));

    let got = receiver.got();
    assert_eq!(got.len(), 1, "asked once");
    assert_eq!(got[0].path, "/hook");
    assert!(signed(&got[0]), "signed with --webhook-secret");
    assert_eq!(
        got[0].json(),
        json!({"type": "before_send", "from": "alice", "device": "d", "conv": "d:alice~bob",
               "body": {"text": "hi"}, "cid": "c1"})
    );
    let text = http.metrics().await;
    assert!(
        text.contains(r#"imd_hook_before_send_total{result="allow"} 1"#),
        "{text}"
    );
    assert!(metric(&text, "imd_hook_before_send_seconds_count").is_some_and(|n| n >= 1.0));
}

#[tokio::test]
async fn a_rejected_message_is_refused_with_the_hooks_reason_over_http_and_websocket() {
    let reject = json!({"action": "reject", "reason": "no phone numbers, please"});
    let receiver = Receiver::start(Answer::Json(reject)).await;
    let imd = start(&receiver, &[]);
    let http = imd.http();
    let resp = http
        .post_message(
            &tok("alice"),
            &json!({"to": "bob", "body": {"text": "call 555"}}),
        )
        .await;
    resp.assert_error(400, ErrorCode::BlockedContent);
    assert_eq!(resp.body["error"]["message"], "no phone numbers, please");

    let mut ws = imd.ws(&tok("alice")).await;
    ws.send_to("bob", "w1", json!({"text": "call 555"})).await;
    let (cid, code, message) = next_error(&mut ws).await;
    assert_eq!(cid.as_deref(), Some("w1"));
    assert_eq!(code, ErrorCode::BlockedContent);
    assert_eq!(message, "no phone numbers, please");

    assert_eq!(receiver.got().len(), 2, "both sends were asked about");
    assert!(
        http.sync(&tok("bob"), 0, None).await.msgs.is_empty(),
        "nothing was committed"
    );
}

#[tokio::test]
async fn a_replacement_is_the_body_committed_and_delivered() {
    let replace = json!({"action": "replace", "body": {"text": "call ***"}});
    let receiver = Receiver::start(Answer::Json(replace)).await;
    let imd = start(&receiver, &[]);
    let mut bob = imd.ws(&tok("bob")).await;
    let mut alice = imd.ws(&tok("alice")).await;
    alice
        .send_to("bob", "c1", json!({"text": "call 555"}))
        .await;
    let sent = alice.expect_sent("c1").await;
    assert_eq!(sent.body, Some(json!({"text": "call ***"})));
    let (_, pushed) = bob.expect_push().await;
    assert_eq!(pushed.body, Some(json!({"text": "call ***"})));
    assert_eq!(
        receiver.got()[0].json()["body"],
        json!({"text": "call 555"})
    );

    // A replacement with no body is a broken answer: the original goes through.
    receiver.answer(Answer::Json(json!({"action": "replace", "body": null})));
    alice.send_to("bob", "c2", json!({"text": "kept"})).await;
    assert_eq!(
        alice.expect_sent("c2").await.body,
        Some(json!({"text": "kept"}))
    );
}

#[tokio::test]
async fn a_hook_that_fails_or_does_not_answer_in_time_lets_messages_through() {
    let receiver = Receiver::start(Answer::Status(500)).await;
    let imd = start(&receiver, &["--hook-timeout", "300ms"]);
    let http = imd.http();
    let alice = tok("alice");
    http.send_to(&alice, "bob", Some("c1"), json!({"text": "one"}))
        .await;

    receiver.answer(Answer::Hang);
    let began = Instant::now();
    let msg = http
        .send_to(&alice, "bob", Some("c2"), json!({"text": "two"}))
        .await;
    let took = began.elapsed();
    assert_eq!(msg.seq, 2, "committed");
    assert!(
        took >= Duration::from_millis(300),
        "waited for the hook: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "no longer than the timeout: {took:?}"
    );

    // An answer that is none of the three is a failure too.
    receiver.answer(Answer::Json(json!({"action": "maybe"})));
    http.send_to(&alice, "bob", Some("c3"), json!({"text": "three"}))
        .await;

    let text = http.metrics().await;
    assert!(
        text.contains(r#"imd_hook_before_send_total{result="error"} 3"#),
        "{text}"
    );
    let bob = http.sync(&tok("bob"), 0, None).await;
    assert_eq!(bob.msgs.len(), 3, "every message was delivered");
}

#[tokio::test]
async fn fail_closed_refuses_messages_while_the_hook_is_down() {
    let receiver = Receiver::start(Answer::Status(503)).await;
    let imd = start(
        &receiver,
        &["--hook-fail-closed", "--hook-timeout", "300ms"],
    );
    let http = imd.http();
    let resp = http
        .post_message(
            &tok("alice"),
            &json!({"to": "bob", "cid": "c1", "body": {"text": "x"}}),
        )
        .await;
    resp.assert_error(500, ErrorCode::Internal);
    let message = resp.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("pre-send hook unavailable"), "{message}");

    receiver.answer(Answer::Hang);
    let mut ws = imd.ws(&tok("alice")).await;
    ws.send_to("bob", "w1", json!({"text": "x"})).await;
    let (cid, code, message) = next_error(&mut ws).await;
    assert_eq!((cid.as_deref(), code), (Some("w1"), ErrorCode::Internal));
    assert!(message.contains("pre-send hook unavailable"), "{message}");
    assert!(http.sync(&tok("bob"), 0, None).await.msgs.is_empty());

    // Back up: the resend with the same cid goes through.
    receiver.answer(Answer::Json(json!({"action": "allow"})));
    let msg = http
        .send_to(&tok("alice"), "bob", Some("c1"), json!({"text": "x"}))
        .await;
    assert_eq!(msg.seq, 1);
}

#[tokio::test]
async fn only_the_conversation_kinds_asked_for_go_to_the_hook() {
    let receiver = Receiver::start(Answer::Json(json!({"action": "reject"}))).await;
    let imd = start(&receiver, &["--hook-convs", "service"]);
    let http = imd.http();
    http.put_json(
        "/admin/v1/shops/shop1/agents",
        Some(ADMIN),
        &json!({"agents": ["ann"]}),
    )
    .await
    .assert_ok();
    // Direct: not asked.
    http.send_to(&tok("alice"), "bob", None, json!({"text": "hi"}))
        .await;
    assert!(receiver.got().is_empty());
    // Service: asked, and refused with the default reason; no conversation opened.
    let resp = http
        .post_message(
            &tok("carol"),
            &json!({"shop": "shop1", "body": {"text": "hi"}}),
        )
        .await;
    resp.assert_error(400, ErrorCode::BlockedContent);
    let asked: Vec<Value> = receiver.got().iter().map(Got::json).collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["conv"], "s:shop1~carol");
    let state = http
        .get("/admin/v1/conversations/s:shop1~carol", Some(ADMIN))
        .await;
    assert_ne!(
        state.body["open"],
        json!(true),
        "a refused message opens nothing: {}",
        state.body
    );
    // Someone who may not write there is refused before the hook hears of it.
    let resp = http
        .post_message(
            &tok("mallory"),
            &json!({"conv": "s:shop1~carol", "body": {"text": "x"}}),
        )
        .await;
    resp.assert_error(403, ErrorCode::Forbidden);
    assert_eq!(receiver.got().len(), 1);
}

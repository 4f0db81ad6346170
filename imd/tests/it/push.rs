//! Offline pushes against a real process and a real HTTP relay (`docs/webhooks.md`,
//! *Offline push*): a device registers its own push token (`PUT`/`DELETE
//! /v1/devices/{device}/push`, checked), and a message to a user with no device
//! connected is POSTed, signed, to `--push-webhook-url` with the user's tokens, its
//! unread count as the badge and a preview (none with `--push-preview false`); a user
//! who is online gets none. Also on the Redis store.

use std::time::Duration;

use serde_json::{Value, json};
use shared::protocol::ErrorCode;
use testkit::Redis;

use crate::common::{Answer, Got, Http, Imd, Receiver, claims, mint, wait_until};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";
const HOOK_SECRET: &str = "hook-secret-0123456789";
const DEADLINE: Duration = Duration::from_secs(5);

/// A token of `uid`'s `device`.
fn tok(uid: &str, device: &str) -> String {
    mint(SECRET, &claims(uid, device, 3600))
}

/// An imd that pushes to `relay`, signed, with `extra` flags.
fn start(relay: &Receiver, extra: &[&str]) -> Imd {
    let url = relay.url("/push");
    let mut args = vec![
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--webhook-secret",
        HOOK_SECRET,
        "--push-webhook-url",
        &url,
    ];
    args.extend_from_slice(extra);
    Imd::start(&args)
}

/// Checks `got`'s signature with the secret of these tests.
fn signed(got: &Got) -> bool {
    got.signed_with(HOOK_SECRET)
}

async fn register(http: &Http, uid: &str, device: &str, provider: &str, token: &str) {
    http.put_json(
        &format!("/v1/devices/{device}/push"),
        Some(&tok(uid, device)),
        &json!({"provider": provider, "token": token}),
    )
    .await
    .assert_ok();
}

/// The value of one series (`name{labels}`) of `/metrics`; 0 when absent.
async fn series(http: &Http, name: &str) -> f64 {
    let text = http.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits for the `n`-th push; returns its body.
async fn nth_push(relay: &Receiver, n: usize) -> Value {
    relay
        .wait_for(DEADLINE, &format!("push {n}"), |got| got.len() >= n)
        .await;
    let got = relay.got();
    assert!(signed(&got[n - 1]), "signed with --webhook-secret");
    assert_eq!(got[n - 1].path, "/push");
    got[n - 1].json()
}

/// Waits until `uid` shows offline to `asker`, who shares a conversation with it.
async fn wait_offline(http: &Http, asker: &str, uid: &str) {
    wait_until(DEADLINE, &format!("{uid} offline"), || async {
        let resp = http.presence(&tok(asker, "d"), &[uid]).await;
        resp.assert_ok()["users"][0]["online"] == json!(false)
    })
    .await;
}

#[tokio::test]
async fn a_device_registers_and_removes_only_its_own_push_token() {
    let relay = Receiver::start(Answer::Status(200)).await;
    let imd = start(&relay, &[]);
    let http = imd.http();
    let phone = tok("bob", "phone");
    let put = |device: &str, token: &str, body: Value| {
        let (http, path, token) = (
            http.clone(),
            format!("/v1/devices/{device}/push"),
            token.to_owned(),
        );
        async move { http.put_json(&path, Some(&token), &body).await }
    };
    let ok = json!({"provider": "apns", "token": "abc123"});
    put("phone", &phone, ok.clone()).await.assert_ok();
    // Again, another provider: replaced.
    put("phone", &phone, json!({"provider": "fcm", "token": "f"}))
        .await
        .assert_ok();

    put("tablet", &phone, ok.clone())
        .await
        .assert_error(403, ErrorCode::Forbidden);
    let long = "x".repeat(4097);
    for bad in [
        json!({"provider": "APNS", "token": "t"}),
        json!({"provider": "", "token": "t"}),
        json!({"provider": "a".repeat(33), "token": "t"}),
        json!({"provider": "apns", "token": ""}),
        json!({"provider": "apns", "token": long}),
        json!({"provider": "apns"}),
        json!({"provider": "apns", "token": "t", "extra": 1}),
    ] {
        put("phone", &phone, bad.clone())
            .await
            .assert_error(400, ErrorCode::BadRequest);
    }
    put("bad%20device", &phone, ok.clone())
        .await
        .assert_error(400, ErrorCode::BadRequest);
    let anonymous = http.put_json("/v1/devices/phone/push", None, &ok).await;
    anonymous.assert_error(401, ErrorCode::Unauthorized);

    http.delete("/v1/devices/tablet/push", Some(&phone))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.delete("/v1/devices/phone/push", Some(&phone))
        .await
        .assert_ok();
    // Removing none is no error (a logout that runs twice).
    http.delete("/v1/devices/phone/push", Some(&phone))
        .await
        .assert_ok();

    // Removed: a message to bob, offline, pushes nothing, while carol's is pushed.
    register(&http, "carol", "phone", "apns", "c").await;
    let alice = tok("alice", "d");
    http.send_to(&alice, "bob", None, json!({"text": "to bob"}))
        .await;
    http.send_to(&alice, "carol", None, json!({"text": "to carol"}))
        .await;
    let push = nth_push(&relay, 1).await;
    assert_eq!(push["uid"], "carol");
    wait_until(DEADLINE, "bob to be looked at", || async {
        series(
            &http,
            r#"imd_offline_push_skipped_total{reason="no_token"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    assert_eq!(relay.got().len(), 1);
}

#[tokio::test]
async fn an_offline_user_gets_a_push_with_its_tokens_badge_and_preview() {
    let relay = Receiver::start(Answer::Status(200)).await;
    let imd = start(&relay, &[]);
    let http = imd.http();
    register(&http, "bob", "phone", "apns", "apns-token-1").await;
    register(&http, "bob", "pad", "fcm", "fcm-token-2").await;
    let alice = tok("alice", "d");
    let first = http
        .send_to(&alice, "bob", None, json!({"text": "are you there?"}))
        .await;
    let push = nth_push(&relay, 1).await;
    assert_eq!(
        push,
        json!({
            "type": "push",
            "uid": "bob",
            "tokens": [
                {"device": "pad", "provider": "fcm", "token": "fcm-token-2"},
                {"device": "phone", "provider": "apns", "token": "apns-token-1"},
            ],
            "msg": {"id": first.id, "conv": "d:alice~bob", "seq": 1, "from": "alice", "ts": first.ts},
            "preview": "are you there?",
            "badge": 1,
        })
    );

    // Unread add up across conversations; a long text is cut to 100 characters.
    let long = "ü".repeat(150);
    http.send_to(&tok("carol", "d"), "bob", None, json!({"text": long}))
        .await;
    let push = nth_push(&relay, 2).await;
    assert_eq!(push["badge"], 2);
    assert_eq!(push["preview"], "ü".repeat(100));
    assert_eq!(push["msg"]["conv"], "d:bob~carol");
    // The sender's own devices get no push, even with a token.
    register(&http, "alice", "d", "apns", "alice-token").await;
    http.send_to(&alice, "bob", None, json!({"image": "x.png"}))
        .await;
    let push = nth_push(&relay, 3).await;
    assert_eq!(
        (push["uid"].clone(), push["preview"].clone()),
        (json!("bob"), Value::Null)
    );
    assert_eq!(push["badge"], 3);
}

#[tokio::test]
async fn no_push_while_the_user_is_online() {
    let relay = Receiver::start(Answer::Status(200)).await;
    let imd = start(&relay, &[]);
    let http = imd.http();
    register(&http, "bob", "phone", "apns", "t").await;
    // Online on another device: any device counts.
    let mut desk = imd.ws(&tok("bob", "desk")).await;
    let alice = tok("alice", "d");
    http.send_to(&alice, "bob", None, json!({"text": "one"}))
        .await;
    desk.expect_push().await;
    wait_until(DEADLINE, "the push to skip bob, online", || async {
        series(&http, r#"imd_offline_push_skipped_total{reason="online"}"#).await >= 1.0
    })
    .await;
    desk.close().await;
    wait_offline(&http, "alice", "bob").await;
    http.send_to(&alice, "bob", None, json!({"text": "two"}))
        .await;
    let push = nth_push(&relay, 1).await;
    assert_eq!(push["msg"]["seq"], 2);
    assert_eq!(
        push["badge"], 2,
        "one unread from while it was online, and this one"
    );
    assert_eq!(relay.got().len(), 1, "none for the message while online");
    assert_eq!(
        series(&http, r#"imd_offline_pushes_total{result="sent"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn no_preview_leaves_imd_with_push_preview_false() {
    let relay = Receiver::start(Answer::Status(200)).await;
    let imd = start(&relay, &["--push-preview", "false"]);
    let http = imd.http();
    register(&http, "bob", "phone", "apns", "t").await;
    http.send_to(&tok("alice", "d"), "bob", None, json!({"text": "secret"}))
        .await;
    let push = nth_push(&relay, 1).await;
    assert_eq!(push["preview"], Value::Null);
    assert!(!relay.got()[0].body.windows(6).any(|w| w == b"secret"));
}

#[tokio::test]
async fn a_failing_relay_is_retried_then_given_up_on() {
    let relay = Receiver::start(Answer::Status(503)).await;
    let imd = start(&relay, &[]);
    let http = imd.http();
    register(&http, "bob", "phone", "apns", "t").await;
    http.send_to(&tok("alice", "d"), "bob", None, json!({"text": "x"}))
        .await;
    // The first try and three retries (0.25 + 0.5 + 1 s of backoff).
    relay
        .wait_for(DEADLINE, "four tries", |got| got.len() >= 4)
        .await;
    wait_until(DEADLINE, "the push to be given up on", || async {
        series(&http, r#"imd_offline_pushes_total{result="failed"}"#).await >= 1.0
    })
    .await;
    assert_eq!(relay.got().len(), 4);
    assert_eq!(series(&http, "imd_offline_push_retries_total").await, 3.0);
}

#[tokio::test]
async fn a_node_on_redis_keeps_push_tokens_in_redis_and_pushes() {
    let redis = Redis::standalone();
    let relay = Receiver::start(Answer::Status(200)).await;
    let url = redis.url();
    let mut imd = start(&relay, &["--redis", &url]);
    let http = imd.http();
    register(&http, "bob", "phone", "apns", "t").await;
    // The tokens outlive the node: they are in Redis.
    imd.restart();
    let http = imd.http();
    http.send_to(&tok("alice", "d"), "bob", None, json!({"text": "x"}))
        .await;
    let push = nth_push(&relay, 1).await;
    assert_eq!(push["tokens"][0]["token"], "t");
    assert_eq!(push["badge"], 1);
}

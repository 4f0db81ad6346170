//! Blacklists against a real process: uid and ip (exact and CIDR) entries kick live
//! connections within 1 s, refuse the upgrade (403) and every send (403 `forbidden`),
//! expire on their own, and are listed, validated and deleted by the admin API.
//!
//! The ip tests rely on Linux answering for all of 127.0.0.0/8: the server listens on
//! 127.0.0.1 and clients bind their end to 127.0.0.9, 127.0.0.10, 127.0.0.16.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::protocol::ErrorCode;

use crate::common::{
    Auth, FRAME_DEADLINE, Http, Imd, WsClient, claims, mint, now_ms, try_ws, try_ws_from,
    wait_until,
};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";
/// How soon a blacklist change must take effect, kicks included.
const EFFECT: Duration = Duration::from_secs(1);

fn start() -> Imd {
    Imd::start(&["--token-secret", SECRET, "--admin-token", ADMIN])
}

fn tok(uid: &str, device: &str) -> String {
    mint(SECRET, &claims(uid, device, 3600))
}

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn add(http: &Http, body: Value) -> Value {
    let resp = http
        .post_json("/admin/v1/blacklist", Some(ADMIN), &body)
        .await;
    resp.assert_ok().clone()
}

async fn entries(http: &Http) -> Vec<Value> {
    let resp = http.get("/admin/v1/blacklist", Some(ADMIN)).await;
    resp.assert_ok()["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("entries is not a list: {}", resp.body))
        .clone()
}

/// Asserts that `c` gets `kick` `blacklisted` and is closed, and that this all happened
/// within [`EFFECT`] of `start` (taken just before the POST).
async fn assert_kicked_in_time(name: &str, c: &mut WsClient, start: Instant) {
    let reason = c.expect_kick().await;
    assert_eq!(reason, "blacklisted", "{name}: kick reason");
    c.expect_closed(FRAME_DEADLINE).await;
    let took = start.elapsed();
    assert!(
        took <= EFFECT,
        "{name}: kicked and closed {took:?} after the POST, over {EFFECT:?}"
    );
}

/// Asserts that `c` is still connected and got nothing (after the kicks of the others
/// were seen, so the server's enforcement pass is over).
async fn assert_untouched(name: &str, c: &mut WsClient) {
    c.ping_pong().await;
    let frames = c.take_pending();
    assert!(frames.is_empty(), "{name} got frames: {frames:?}");
}

/// Every live connection of a blacklisted uid is kicked (`blacklisted`) and closed within
/// 1 s of the POST; other users are untouched; the uid is refused before the upgrade and
/// on HTTP sends; after DELETE it connects and sends again.
#[tokio::test]
async fn blacklisted_uid_is_kicked_within_a_second_refused_then_let_back_after_delete() {
    let imd = start();
    let http = imd.http();
    let url = imd.ws_url();
    let mut m1 = imd.ws(&tok("mallory", "m1")).await;
    let mut m2 = imd.ws(&tok("mallory", "m2")).await;
    let mut bob = imd.ws(&tok("bob", "b1")).await;
    http.send_to(&tok("mallory", "m1"), "bob", None, json!("before"))
        .await;
    bob.expect_push().await;

    let start = Instant::now();
    let entry = add(
        &http,
        json!({"kind": "uid", "value": "mallory", "reason": "spam"}),
    )
    .await;
    assert_eq!(entry["kind"], "uid", "entry {entry}");
    assert_eq!(entry["value"], "mallory", "entry {entry}");
    assert_eq!(entry["reason"], "spam", "entry {entry}");
    assert!(
        entry.get("expires_at").is_none_or(Value::is_null),
        "no ttl, no expiry: {entry}"
    );
    assert_kicked_in_time("mallory/m1", &mut m1, start).await;
    assert_kicked_in_time("mallory/m2", &mut m2, start).await;
    assert_untouched("bob", &mut bob).await;

    // Refused before the upgrade, whatever the device, and on every send.
    for device in ["m1", "m3"] {
        assert_eq!(
            try_ws(&url, Auth::Header(&tok("mallory", device)))
                .await
                .err(),
            Some(403),
            "upgrade of mallory/{device}"
        );
    }
    let blocked = tok("mallory", "m1");
    http.post_message(&blocked, &json!({"to": "bob", "body": "x"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.post_message(&blocked, &json!({"to": "mallory", "body": "self"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    // Bob is not affected.
    http.send_to(&tok("bob", "b1"), "alice", None, json!("fine"))
        .await;

    let del = http
        .delete("/admin/v1/blacklist/uid/mallory", Some(ADMIN))
        .await;
    assert_eq!(del.assert_ok(), &json!({}), "DELETE answer");
    // Probes use their own device: a dropped probe must not race with m1 below.
    let probe = tok("mallory", "probe");
    wait_until(EFFECT, "mallory may connect again after DELETE", || async {
        try_ws(&url, Auth::Header(&probe)).await.is_ok()
    })
    .await;
    let token = tok("mallory", "m1");
    let mut m1 = imd.ws(&token).await;
    m1.send_to("bob", "after", json!("back")).await;
    let sent = m1.expect_sent("after").await;
    assert_eq!(sent.from, "mallory");
    http.send_to(&token, "bob", None, json!("back over http"))
        .await;
    assert!(
        entries(&http).await.is_empty(),
        "the deleted entry is still listed"
    );
}

/// An exact ip entry kicks the connection from that address within 1 s and refuses it
/// before the upgrade and on HTTP sends; connections from 127.0.0.1 and 127.0.0.10 are
/// untouched, and the same uid may go on from another address.
#[tokio::test]
async fn blacklisted_ip_kicks_and_refuses_that_address_only() {
    let imd = start();
    let http = imd.http();
    let url = imd.ws_url();
    let mut from9 = WsClient::connect_from(&url, Auth::Header(&tok("ann", "a1")), lo(9)).await;
    let mut from10 = WsClient::connect_from(&url, Auth::Header(&tok("ben", "b1")), lo(10)).await;
    let mut from1 = WsClient::connect_from(&url, Auth::Header(&tok("cat", "c1")), lo(1)).await;
    assert_eq!(from9.local_addr().ip(), lo(9), "the client really binds .9");

    let start = Instant::now();
    let entry = add(&http, json!({"kind": "ip", "value": "127.0.0.9"})).await;
    assert_eq!(entry["kind"], "ip", "entry {entry}");
    assert_eq!(entry["value"], "127.0.0.9", "entry {entry}");
    assert_kicked_in_time("client from 127.0.0.9", &mut from9, start).await;
    assert_untouched("client from 127.0.0.10", &mut from10).await;
    assert_untouched("client from 127.0.0.1", &mut from1).await;

    // A new upgrade from .9 is refused, whoever it is; from .1 the same user is fine.
    let refused = try_ws_from(&url, Auth::Header(&tok("ann", "a2")), lo(9))
        .await
        .err()
        .expect("upgrade from 127.0.0.9 must be refused");
    refused.assert_error(403, ErrorCode::Forbidden);
    let refused = try_ws_from(&url, Auth::Header(&tok("dan", "d1")), lo(9))
        .await
        .err()
        .expect("upgrade from 127.0.0.9 must be refused");
    refused.assert_error(403, ErrorCode::Forbidden);
    let mut ann = WsClient::connect_from(&url, Auth::Header(&tok("ann", "a2")), lo(1)).await;
    ann.send_to("cat", "from-1", json!("hi")).await;
    ann.expect_sent("from-1").await;

    // HTTP sends from .9 are refused too, from .1 they go through.
    http.bound_to(lo(9))
        .post_message(&tok("ann", "a1"), &json!({"to": "cat", "body": "x"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.bound_to(lo(1))
        .send_to(&tok("ann", "a1"), "cat", None, json!("ok"))
        .await;

    let del = http
        .delete("/admin/v1/blacklist/ip/127.0.0.9", Some(ADMIN))
        .await;
    assert_eq!(del.assert_ok(), &json!({}), "DELETE answer");
    let token = tok("ann", "a1");
    wait_until(EFFECT, "127.0.0.9 may connect again", || async {
        try_ws_from(&url, Auth::Header(&token), lo(9)).await.is_ok()
    })
    .await;
}

/// A CIDR entry (127.0.0.8/29: .8 to .15) kicks every connection from inside the range
/// and none from outside; it is deleted with its `/` in the path.
#[tokio::test]
async fn blacklisted_cidr_kicks_and_refuses_the_whole_range() {
    let imd = start();
    let http = imd.http();
    let url = imd.ws_url();
    let mut from9 = WsClient::connect_from(&url, Auth::Header(&tok("u9", "d")), lo(9)).await;
    let mut from10 = WsClient::connect_from(&url, Auth::Header(&tok("u10", "d")), lo(10)).await;
    let mut from16 = WsClient::connect_from(&url, Auth::Header(&tok("u16", "d")), lo(16)).await;
    let mut from1 = WsClient::connect_from(&url, Auth::Header(&tok("u1", "d")), lo(1)).await;

    let start = Instant::now();
    let entry = add(&http, json!({"kind": "ip", "value": "127.0.0.8/29"})).await;
    assert_eq!(entry["value"], "127.0.0.8/29", "entry {entry}");
    assert_kicked_in_time("client from 127.0.0.9", &mut from9, start).await;
    assert_kicked_in_time("client from 127.0.0.10", &mut from10, start).await;
    assert_untouched("client from 127.0.0.16", &mut from16).await;
    assert_untouched("client from 127.0.0.1", &mut from1).await;

    for last in [8, 9, 15] {
        let refused = try_ws_from(&url, Auth::Header(&tok("x", "d")), lo(last))
            .await
            .err()
            .unwrap_or_else(|| panic!("upgrade from 127.0.0.{last} must be refused"));
        refused.assert_error(403, ErrorCode::Forbidden);
    }
    for last in [7, 16] {
        assert!(
            try_ws_from(&url, Auth::Header(&tok("y", &format!("d{last}"))), lo(last))
                .await
                .is_ok(),
            "upgrade from 127.0.0.{last}, outside the range, must succeed"
        );
    }
    http.bound_to(lo(12))
        .post_message(&tok("u1", "d"), &json!({"to": "u16", "body": "x"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);

    let del = http
        .delete("/admin/v1/blacklist/ip/127.0.0.8/29", Some(ADMIN))
        .await;
    assert_eq!(del.assert_ok(), &json!({}), "DELETE answer");
    let token = tok("u9", "d");
    wait_until(EFFECT, "127.0.0.9 may connect again", || async {
        try_ws_from(&url, Auth::Header(&token), lo(9)).await.is_ok()
    })
    .await;
}

/// An entry with `ttl_s: 1` blocks (kick, 403 upgrade, 403 send), then stops applying by
/// itself, not before its `expires_at`, and leaves the list, with no restart.
#[tokio::test]
async fn ttl_entry_blocks_then_expires_by_itself() {
    let imd = start();
    let http = imd.http();
    let url = imd.ws_url();
    let token = tok("temp", "t1");
    let mut live = imd.ws(&token).await;

    let before = now_ms();
    let start = Instant::now();
    let entry = add(&http, json!({"kind": "uid", "value": "temp", "ttl_s": 1})).await;
    let after = now_ms();
    let expires_at = entry["expires_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("an entry with ttl_s has expires_at: {entry}"));
    assert!(
        (before + 1000..=after + 1000).contains(&expires_at),
        "expires_at {expires_at} is not 1 s after the POST ({before}..{after})"
    );
    // Milliseconds after the POST, well inside the entry's second.
    assert_eq!(
        try_ws(&url, Auth::Header(&token)).await.err(),
        Some(403),
        "upgrade while the entry lives"
    );
    http.post_message(&token, &json!({"to": "bob", "body": "x"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    assert!(
        now_ms() < expires_at,
        "the checks above ran after the entry expired; the server is too slow for this test"
    );
    assert_kicked_in_time("temp/t1", &mut live, start).await;

    let ttl = Duration::from_secs(1);
    wait_until(
        ttl + Duration::from_secs(3),
        "the 1 s entry to expire",
        || async { try_ws(&url, Auth::Header(&token)).await.is_ok() },
    )
    .await;
    let first_ok = now_ms();
    assert!(
        first_ok >= expires_at,
        "the entry stopped applying at {first_ok}, before its expires_at {expires_at}"
    );
    http.send_to(&token, "bob", None, json!("free again")).await;
    let listed = entries(&http).await;
    assert!(
        listed.iter().all(|e| e["value"] != "temp"),
        "an expired entry is still listed: {listed:?}"
    );
}

/// `GET` lists live entries with reason and expires_at; ip values come back canonical;
/// bad kinds and values are 400 and change nothing; deleting what is not there is 404.
#[tokio::test]
async fn list_validate_and_delete_entries() {
    let imd = start();
    let http = imd.http();

    let before = now_ms();
    let uid = add(
        &http,
        json!({"kind": "uid", "value": "spammer", "reason": "spam", "ttl_s": 3600}),
    )
    .await;
    let after = now_ms();
    let net = add(&http, json!({"kind": "ip", "value": "10.1.2.3/16"})).await;
    assert_eq!(net["value"], "10.1.0.0/16", "canonical CIDR: {net}");
    assert!(
        net.get("reason").is_none_or(Value::is_null),
        "no reason given: {net}"
    );
    assert!(
        net.get("expires_at").is_none_or(Value::is_null),
        "no ttl given: {net}"
    );

    let listed = entries(&http).await;
    assert_eq!(listed.len(), 2, "entries: {listed:?}");
    let got = listed
        .iter()
        .find(|e| e["kind"] == "uid" && e["value"] == "spammer")
        .unwrap_or_else(|| panic!("uid entry not listed: {listed:?}"));
    assert_eq!(got["reason"], "spam", "{got}");
    let exp = got["expires_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("expires_at missing: {got}"));
    assert!(
        (before + 3_600_000..=after + 3_600_000).contains(&exp),
        "expires_at {exp} is not an hour after the POST ({before}..{after})"
    );
    assert_eq!(got, &uid, "listed entry differs from the POST answer");
    let got = listed
        .iter()
        .find(|e| e["kind"] == "ip")
        .unwrap_or_else(|| panic!("ip entry not listed: {listed:?}"));
    assert_eq!(got["value"], "10.1.0.0/16", "{got}");

    for bad in [
        json!({"kind": "user", "value": "x"}),
        json!({"kind": "uid", "value": "not a uid!"}),
        json!({"kind": "uid", "value": ""}),
        json!({"kind": "ip", "value": "300.1.1.1"}),
        json!({"kind": "ip", "value": "10.0.0.0/33"}),
        json!({"kind": "ip", "value": "not-an-ip"}),
        json!({"kind": "ip"}),
        json!({"value": "x"}),
    ] {
        http.post_json("/admin/v1/blacklist", Some(ADMIN), &bad)
            .await
            .assert_error(400, ErrorCode::BadRequest);
    }
    http.post_raw("/admin/v1/blacklist", Some(ADMIN), b"{not json".to_vec())
        .await
        .assert_error(400, ErrorCode::BadRequest);
    assert_eq!(
        entries(&http).await.len(),
        2,
        "a refused POST added an entry"
    );

    let del = http
        .delete("/admin/v1/blacklist/ip/10.1.0.0/16", Some(ADMIN))
        .await;
    assert_eq!(del.assert_ok(), &json!({}));
    let listed = entries(&http).await;
    assert_eq!(listed, vec![uid], "after deleting the ip entry");
    http.delete("/admin/v1/blacklist/ip/10.1.0.0/16", Some(ADMIN))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.delete("/admin/v1/blacklist/uid/nobody", Some(ADMIN))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.delete("/admin/v1/blacklist/ip/192.168.0.1", Some(ADMIN))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.delete("/admin/v1/blacklist/uid/spammer", Some(ADMIN))
        .await
        .assert_ok();
    assert!(entries(&http).await.is_empty());
}

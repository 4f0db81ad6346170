//! Tokens against a real process: who is refused before the upgrade and on HTTP, and
//! whether `imd token` / `imd admin-token` agree with `imd serve` on the same data dir.

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::json;
use shared::protocol::ErrorCode;
use shared::token::{Claims, Platform};

use crate::common::{Auth, Imd, WsClient, claims, mint, now_secs, try_ws};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

/// Every way a token can be wrong gets 401 on HTTP and before the WebSocket upgrade,
/// with the token in the header or in the query; a right one made the same way works.
#[tokio::test]
async fn bad_tokens_are_401_on_http_and_before_the_upgrade() {
    let imd = Imd::start(&["--token-secret", SECRET]);
    let http = imd.http();
    let url = imd.ws_url();

    let good = mint(SECRET, &claims("alice", "a1", 3600));
    WsClient::connect(&url, Auth::Header(&good))
        .await
        .ping_pong()
        .await;
    WsClient::connect(&url, Auth::Query(&good))
        .await
        .ping_pong()
        .await;
    http.send_to(&good, "bob", None, json!("ok")).await;

    let expired = mint(SECRET, &claims("alice", "a1", -3600));
    let foreign = mint("some-other-secret-0123456789", &claims("alice", "a1", 3600));
    let garbage = "not.a.jwt".to_owned();
    let mut unsigned = good.clone();
    unsigned.truncate(good.rfind('.').expect("three parts") + 1);
    for (what, token) in [
        ("expired", Some(&expired)),
        ("wrong secret", Some(&foreign)),
        ("garbage", Some(&garbage)),
        ("no signature", Some(&unsigned)),
        ("missing", None),
    ] {
        let header = match token {
            Some(t) => Auth::Header(t),
            None => Auth::None,
        };
        assert_eq!(
            try_ws(&url, header).await.err(),
            Some(401),
            "{what} token in the header"
        );
        if let Some(t) = token {
            assert_eq!(
                try_ws(&url, Auth::Query(t)).await.err(),
                Some(401),
                "{what} token in the query"
            );
        }
        let t = token.map(String::as_str);
        let post = http
            .post_raw(
                "/v1/messages",
                t,
                json!({"to": "bob", "body": 1}).to_string().into_bytes(),
            )
            .await;
        assert_eq!(post.status, 401, "{what}: POST /v1/messages: {}", post.body);
        assert_eq!(
            post.error_code(),
            Some(ErrorCode::Unauthorized.as_str()),
            "{what}: {}",
            post.body
        );
        http.get("/v1/sync?after=0", t)
            .await
            .assert_error(401, ErrorCode::Unauthorized);
    }
    let inbox = http.sync(&good, 0, None).await;
    assert_eq!(inbox.msgs.len(), 1, "no refused request committed anything");
}

/// A token whose claims break the uid rule is refused like any other bad token.
#[tokio::test]
async fn token_with_invalid_uid_is_refused() {
    let imd = Imd::start(&["--token-secret", SECRET]);
    let bad = mint(SECRET, &claims("bad uid", "a1", 3600));
    let status = try_ws(&imd.ws_url(), Auth::Header(&bad)).await.err();
    assert!(
        matches!(status, Some(400 | 401)),
        "upgrade with an invalid uid: {status:?}"
    );
    let resp = imd
        .http()
        .post_message(&bad, &json!({"to": "bob", "body": 1}))
        .await;
    assert!(
        matches!(resp.status, 400 | 401),
        "POST with an invalid uid: {}",
        resp.status
    );
}

/// With no secret configured, `imd token` and `imd admin-token` use the ones `serve`
/// generated into the data dir, and they stay the same across a restart.
#[tokio::test]
async fn helpers_agree_with_generated_secrets() {
    let mut imd = Imd::start(&[]);
    let http = imd.http();
    let token = imd.token("alice", "a1");
    imd.ws(&token).await.ping_pong().await;
    http.send_to(&token, "bob", None, json!("hi")).await;
    let admin = imd.admin_token();
    assert!(!admin.is_empty());

    imd.restart();
    let http = imd.http();
    assert_eq!(imd.admin_token(), admin, "the admin token is reused");
    assert_eq!(
        http.sync(&token, 0, None).await.msgs.len(),
        1,
        "an old token still works"
    );
    let fresh = imd.token("bob", "b1");
    assert_eq!(http.sync(&fresh, 0, None).await.msgs.len(), 1);

    // Another data dir has another secret.
    let other = Imd::start(&[]);
    other
        .http()
        .get("/v1/sync?after=0", Some(&token))
        .await
        .assert_error(401, ErrorCode::Unauthorized);
    assert_ne!(other.admin_token(), admin);
}

/// The generated admin token printed by `imd admin-token` opens the admin API; other
/// bearer tokens do not.
#[tokio::test]
async fn generated_admin_token_opens_the_admin_api() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let admin = imd.admin_token();
    let resp = http
        .get("/admin/v1/connections?uid=alice", Some(&admin))
        .await;
    assert!(resp.assert_ok()["connections"].is_array(), "{}", resp.body);
    let wrong = http
        .get("/admin/v1/connections?uid=alice", Some("wrong-admin-token"))
        .await;
    wrong.assert_error(401, ErrorCode::Unauthorized);
    let client = imd.token("alice", "a1");
    let client_on_admin = http
        .get("/admin/v1/connections?uid=alice", Some(&client))
        .await;
    assert!(
        matches!(client_on_admin.status, 401 | 403),
        "client token on the admin API: {}",
        client_on_admin.status
    );
}

/// `--token-secret` and `--admin-token` given to both `serve` and the helpers: the
/// helper's token is signed with that secret and the admin token is the given one.
#[tokio::test]
async fn helpers_honour_explicit_secrets() {
    let imd = Imd::start(&["--token-secret", SECRET, "--admin-token", ADMIN]);
    assert_eq!(imd.admin_token(), ADMIN);
    let token = imd.token("alice", "a1");
    let mut v = Validation::new(jsonwebtoken::Algorithm::HS256);
    v.required_spec_claims = ["exp".to_owned()].into();
    let data =
        jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
            .expect("the helper's token is signed with --token-secret");
    assert_eq!(data.claims.sub, "alice");
    assert_eq!(data.claims.dev, "a1");
    assert_eq!(data.claims.plat, Platform::Web);
    imd.ws(&token).await.ping_pong().await;
}

/// An admin token given with `--admin-token` opens the admin API.
#[tokio::test]
async fn explicit_admin_token_opens_the_admin_api() {
    let imd = Imd::start(&["--admin-token", ADMIN]);
    let resp = imd
        .http()
        .get("/admin/v1/connections?uid=alice", Some(ADMIN))
        .await;
    assert!(resp.assert_ok()["connections"].is_array(), "{}", resp.body);
}

/// `imd token` writes the claims it was given: platform, role and ttl.
#[tokio::test]
async fn token_helper_sets_platform_role_and_ttl() {
    let imd = Imd::start(&["--token-secret", SECRET]);
    let token = imd.helper(
        "token",
        &[
            "--uid",
            "agent.1@shop",
            "--device",
            "pc-1",
            "--platform",
            "pc",
            "--ttl",
            "1h",
            "--role",
            "agent",
        ],
    );
    let mut v = Validation::new(jsonwebtoken::Algorithm::HS256);
    v.required_spec_claims = ["exp".to_owned()].into();
    let c =
        jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
            .expect("valid token")
            .claims;
    assert_eq!(
        (c.sub.as_str(), c.dev.as_str(), c.plat),
        ("agent.1@shop", "pc-1", Platform::Pc)
    );
    assert_eq!(c.roles, vec!["agent".to_owned()]);
    let now = now_secs();
    assert!(
        (now + 3500..=now + 3700).contains(&c.exp),
        "exp {} is about an hour from {now}",
        c.exp
    );
    imd.ws(&token).await.ping_pong().await;
}

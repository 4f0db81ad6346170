//! Rotating the token secret and the admin token without logging anyone out: during a
//! rotation the old key's tokens (with their `kid`, or none) keep working, new tokens
//! carry the new `kid`, a `kid` no accepted key has is refused with a clear message,
//! and the old admin token works until it is removed.

use shared::protocol::ErrorCode;

use crate::common::{Auth, Imd, claims, try_ws};

const OLD: &str = "old-secret-0123456789abcdef";
const NEW: &str = "new-secret-0123456789abcdef";
const ADMIN_OLD: &str = "admin-old-0123456789abcdef";
const ADMIN_NEW: &str = "admin-new-0123456789abcdef";

/// The `kid` in a token's header.
fn kid_of(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).expect("a JWT").kid
}

/// Signs with `secret`, naming `kid` in the header.
fn mint_with_kid(secret: &str, kid: &str, uid: &str) -> String {
    let header = jsonwebtoken::Header {
        kid: Some(kid.to_owned()),
        ..Default::default()
    };
    jsonwebtoken::encode(
        &header,
        &claims(uid, "d1", 3600),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

#[tokio::test]
async fn old_tokens_work_during_a_rotation_and_unknown_kids_are_refused() {
    // Before: one key, k1.
    let before = Imd::start(&[
        "--token-secret",
        OLD,
        "--token-kid",
        "k1",
        "--admin-token",
        ADMIN_OLD,
    ]);
    let by_old = before.token("alice", "a1");
    assert_eq!(
        kid_of(&by_old).as_deref(),
        Some("k1"),
        "imd token names the kid"
    );
    let legacy = crate::common::mint(OLD, &claims("carol", "c1", 3600));
    assert_eq!(kid_of(&legacy), None);

    // During: k2 signs, k1 is accepted; both admin tokens open the admin API.
    let during = Imd::start(&[
        "--token-secret",
        NEW,
        "--token-kid",
        "k2",
        "--token-secrets-old",
        &format!("k1={OLD}"),
        "--admin-token",
        ADMIN_NEW,
        "--admin-tokens-old",
        ADMIN_OLD,
    ]);
    let http = during.http();
    during.ws(&by_old).await.ping_pong().await;
    http.sync(&by_old, 0, None).await;
    http.sync(&legacy, 0, None).await;
    let by_new = during.token("bob", "b1");
    assert_eq!(
        kid_of(&by_new).as_deref(),
        Some("k2"),
        "new tokens carry the new kid"
    );
    during.ws(&by_new).await.ping_pong().await;
    for admin in [ADMIN_OLD, ADMIN_NEW] {
        http.get("/admin/v1/connections?uid=alice", Some(admin))
            .await
            .assert_ok();
    }

    // A kid nobody has: 401 naming the key id, before the upgrade and on HTTP.
    let unknown = mint_with_kid(NEW, "k9", "alice");
    assert_eq!(
        try_ws(&during.ws_url(), Auth::Header(&unknown)).await.err(),
        Some(401)
    );
    let resp = http.get("/v1/sync?after=0", Some(&unknown)).await;
    resp.assert_error(401, ErrorCode::Unauthorized);
    let message = resp.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unknown key id \"k9\""), "{message}");
    // The right kid with the wrong secret is no way in either.
    let forged = mint_with_kid("guess-0123456789abcdef", "k1", "alice");
    http.get("/v1/sync?after=0", Some(&forged))
        .await
        .assert_error(401, ErrorCode::Unauthorized);

    // After: k1 and the old admin token removed.
    let after = Imd::start(&[
        "--token-secret",
        NEW,
        "--token-kid",
        "k2",
        "--admin-token",
        ADMIN_NEW,
    ]);
    let http = after.http();
    http.sync(&by_new, 0, None).await;
    let resp = http.get("/v1/sync?after=0", Some(&by_old)).await;
    resp.assert_error(401, ErrorCode::Unauthorized);
    assert!(
        resp.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown key id \"k1\"")),
        "{}",
        resp.body
    );
    http.get("/admin/v1/connections?uid=alice", Some(ADMIN_OLD))
        .await
        .assert_error(401, ErrorCode::Unauthorized);
    http.get("/admin/v1/connections?uid=alice", Some(ADMIN_NEW))
        .await
        .assert_ok();
}

/// The rotation settings come from the TOML file too, as a list of `{kid, secret}`.
#[tokio::test]
async fn accepted_keys_from_the_config_file() {
    let imd = Imd::builder()
        .config_toml(&format!(
            "token_secret = \"{NEW}\"\ntoken_kid = \"k2\"\nadmin_token = \"{ADMIN_NEW}\"\n\
             admin_tokens_old = [\"{ADMIN_OLD}\"]\n\
             [[token_secrets_old]]\nkid = \"k1\"\nsecret = \"{OLD}\"\n"
        ))
        .start();
    let http = imd.http();
    http.sync(&mint_with_kid(OLD, "k1", "alice"), 0, None).await;
    assert_eq!(kid_of(&imd.token("bob", "b1")).as_deref(), Some("k2"));
    http.get("/admin/v1/connections?uid=alice", Some(ADMIN_OLD))
        .await
        .assert_ok();
}

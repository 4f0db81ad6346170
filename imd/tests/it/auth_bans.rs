//! Automatic bans, from outside: an ip that fails authentication `--auth-fail-limit`
//! times is refused (403) at the upgrade, on the HTTP API and on the admin API, listed
//! as an ip blacklist entry with an `auto-ban:` reason, counted in `/metrics`, and let
//! back when an operator deletes the entry; other ips are untouched.
//!
//! Clients bind their end to other loopback addresses (Linux answers for all of
//! 127.0.0.0/8): 127.0.0.1, where the test's own admin calls come from, is exempt by
//! default (`--auth-ban-exempt`).

use std::net::{IpAddr, Ipv4Addr};

use serde_json::Value;
use shared::protocol::ErrorCode;

use crate::common::{Auth, Imd, claims, metric, mint, try_ws_from};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

fn lo(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn start(limit: &str) -> Imd {
    Imd::start(&[
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--auth-fail-limit",
        limit,
        "--auth-fail-window",
        "1m",
        "--auth-ban",
        "10m",
    ])
}

#[tokio::test]
async fn repeated_failures_ban_the_ip_until_the_entry_is_deleted() {
    let imd = start("3");
    let http = imd.http();
    let url = imd.ws_url();
    let good = mint(SECRET, &claims("alice", "a1", 3600));
    let foreign = mint("some-other-secret-0123456789", &claims("alice", "a1", 3600));
    let expired = mint(SECRET, &claims("alice", "a1", -60));
    let from20 = http.bound_to(lo(20));

    // Two failures (one on HTTP, one at the upgrade), and a request without a token,
    // which guesses nothing and is not counted: not banned yet.
    from20
        .get("/v1/sync?after=0", Some(&foreign))
        .await
        .assert_error(401, ErrorCode::Unauthorized);
    try_ws_from(&url, Auth::Header(&expired), lo(20))
        .await
        .err()
        .expect("expired token refused")
        .assert_error(401, ErrorCode::Unauthorized);
    from20
        .get("/v1/sync?after=0", None)
        .await
        .assert_error(401, ErrorCode::Unauthorized);
    from20.sync(&good, 0, None).await;

    // The third bans it: the right token is now refused everywhere from there.
    from20
        .get("/v1/sync?after=0", Some("garbage"))
        .await
        .assert_error(401, ErrorCode::Unauthorized);
    let banned = from20.get("/v1/sync?after=0", Some(&good)).await;
    banned.assert_error(403, ErrorCode::Forbidden);
    assert!(
        banned.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("repeated failed authentications")),
        "{}",
        banned.body
    );
    try_ws_from(&url, Auth::Header(&good), lo(20))
        .await
        .err()
        .expect("upgrade from a banned ip refused")
        .assert_error(403, ErrorCode::Forbidden);
    from20
        .get("/admin/v1/blacklist", Some(ADMIN))
        .await
        .assert_error(403, ErrorCode::Forbidden);

    // Other ips are untouched; the ban is listed with its reason and TTL.
    http.bound_to(lo(21)).sync(&good, 0, None).await;
    let list = http.get("/admin/v1/blacklist", Some(ADMIN)).await;
    let entries: Vec<Value> = list.assert_ok()["entries"]
        .as_array()
        .expect("entries")
        .clone();
    let entry = entries
        .iter()
        .find(|e| e["value"] == "127.0.0.20")
        .unwrap_or_else(|| panic!("the ban is listed: {entries:?}"));
    assert_eq!(entry["kind"], "ip");
    assert_eq!(
        entry["reason"],
        "auto-ban: 3 failed authentications within 1m"
    );
    assert!(entry["expires_at"].is_i64(), "a ban expires: {entry}");

    let metrics = http.metrics().await;
    assert_eq!(metric(&metrics, "imd_auth_failures_total"), Some(3.0));
    assert_eq!(metric(&metrics, "imd_auth_bans_total"), Some(1.0));

    // An operator lifts it.
    http.delete("/admin/v1/blacklist/ip/127.0.0.20", Some(ADMIN))
        .await
        .assert_ok();
    from20.sync(&good, 0, None).await;
}

#[tokio::test]
async fn bad_admin_tokens_ban_too_and_zero_disables() {
    let imd = start("2");
    let http = imd.http();
    let from22 = http.bound_to(lo(22));
    for _ in 0..2 {
        from22
            .get("/admin/v1/blacklist", Some("wrong-admin-token"))
            .await
            .assert_error(401, ErrorCode::Unauthorized);
    }
    from22
        .get("/admin/v1/blacklist", Some(ADMIN))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    // 127.0.0.1 is exempt by default (a co-located proxy, the operators' tools).
    for _ in 0..3 {
        http.get("/admin/v1/blacklist", Some("wrong-admin-token"))
            .await
            .assert_error(401, ErrorCode::Unauthorized);
    }
    http.get("/admin/v1/blacklist", Some(ADMIN))
        .await
        .assert_ok();

    let off = start("0");
    let from23 = off.http().bound_to(lo(23));
    for _ in 0..5 {
        from23
            .get("/admin/v1/blacklist", Some("wrong-admin-token"))
            .await
            .assert_error(401, ErrorCode::Unauthorized);
    }
    from23
        .get("/admin/v1/blacklist", Some(ADMIN))
        .await
        .assert_ok();
    let metrics = off.http().metrics().await;
    assert_eq!(metric(&metrics, "imd_auth_bans_total"), Some(0.0));
}

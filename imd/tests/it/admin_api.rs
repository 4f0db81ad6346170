//! The admin API's other calls against a real process: who may call it (401/403),
//! connection inspection and paging, kicking a user, and reading any conversation.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use shared::ids::direct_conv;
use shared::protocol::ErrorCode;
use shared::token::{Claims, Platform};

use crate::common;
use crate::common::{
    Auth, FRAME_DEADLINE, Http, Imd, Resp, WsClient, claims, mint, now_ms, wait_until,
};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

fn start() -> Imd {
    Imd::start(&["--token-secret", SECRET, "--admin-token", ADMIN])
}

fn tok(uid: &str, device: &str) -> String {
    mint(SECRET, &claims(uid, device, 3600))
}

fn tok_on(uid: &str, device: &str, plat: Platform) -> String {
    mint(
        SECRET,
        &Claims {
            plat,
            ..claims(uid, device, 3600)
        },
    )
}

async fn connections(http: &Http, query: &str) -> Value {
    http.get(&format!("/admin/v1/connections{query}"), Some(ADMIN))
        .await
        .assert_ok()
        .clone()
}

fn list(v: &Value) -> Vec<Value> {
    v["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("connections is not a list: {v}"))
        .clone()
}

/// One call of every admin endpoint, with `token` (`None`: no Authorization header).
async fn call_all(http: &Http, token: Option<&str>) -> Vec<(&'static str, Resp)> {
    vec![
        (
            "GET blacklist",
            http.get("/admin/v1/blacklist", token).await,
        ),
        (
            "POST blacklist",
            http.post_json(
                "/admin/v1/blacklist",
                token,
                &json!({"kind": "uid", "value": "victim"}),
            )
            .await,
        ),
        (
            "DELETE blacklist",
            http.delete("/admin/v1/blacklist/uid/victim", token).await,
        ),
        (
            "GET connections",
            http.get("/admin/v1/connections?uid=alice", token).await,
        ),
        (
            "DELETE connections",
            http.delete("/admin/v1/connections/alice", token).await,
        ),
        (
            "PUT shop agents",
            http.put_json(
                "/admin/v1/shops/s1/agents",
                token,
                &json!({"agents": ["ag"]}),
            )
            .await,
        ),
        (
            "GET shop agents",
            http.get("/admin/v1/shops/s1/agents", token).await,
        ),
        (
            "PUT group members",
            http.put_json(
                "/admin/v1/groups/g1/members",
                token,
                &json!({"members": ["alice"]}),
            )
            .await,
        ),
        ("GET words", http.get("/admin/v1/words", token).await),
        (
            "PUT words",
            http.put_json("/admin/v1/words", token, &json!({"words": ["x"]}))
                .await,
        ),
        (
            "GET conversation messages",
            http.get(
                "/admin/v1/conversations/d:alice~bob/messages?after=0",
                token,
            )
            .await,
        ),
        (
            "GET conversation",
            http.get("/admin/v1/conversations/s:s1~cust", token).await,
        ),
        (
            "POST transfer",
            http.post_json(
                "/admin/v1/conversations/s:s1~cust/transfer",
                token,
                &json!({"agent": "ag"}),
            )
            .await,
        ),
        (
            "POST close",
            http.post_json("/admin/v1/conversations/s:s1~cust/close", token, &json!({}))
                .await,
        ),
    ]
}

/// Every admin endpoint answers 401 `unauthorized` without a token or with a wrong one,
/// and 403 `forbidden` to a valid client token, and changes nothing; the admin token
/// from `imd admin-token` gets through.
#[tokio::test]
async fn admin_calls_need_the_admin_token() {
    // Secrets generated in the data dir, read back by the helpers.
    let imd = Imd::start(&[]);
    let http = imd.http();
    let admin = imd.admin_token();
    let client = imd.token("alice", "a1");
    let _alice = imd.ws(&client).await;

    for (what, resp) in call_all(&http, None).await {
        assert_eq!(resp.status, 401, "{what} without a token: {}", resp.body);
        assert_eq!(resp.error_code(), Some("unauthorized"), "{what}");
    }
    let wrong = format!("{admin}x");
    for token in [wrong.as_str(), "nonsense", &tok("alice", "a1")] {
        for (what, resp) in call_all(&http, Some(token)).await {
            assert_eq!(resp.status, 401, "{what} with {token:?}: {}", resp.body);
            assert_eq!(resp.error_code(), Some("unauthorized"), "{what}");
        }
    }
    for (what, resp) in call_all(&http, Some(&client)).await {
        assert_eq!(
            resp.status, 403,
            "{what} with a client token: {}",
            resp.body
        );
        assert_eq!(resp.error_code(), Some("forbidden"), "{what}");
    }
    // Nothing of the above took effect: alice is still connected, nothing is listed.
    let listed = http.get("/admin/v1/blacklist", Some(&admin)).await;
    assert_eq!(listed.assert_ok()["entries"], json!([]), "blacklist");
    let conns = http
        .get("/admin/v1/connections?uid=alice", Some(&admin))
        .await;
    assert_eq!(
        conns.assert_ok()["connections"].as_array().map(Vec::len),
        Some(1),
        "alice's connection: {}",
        conns.body
    );
    http.get("/admin/v1/shops/s1/agents", Some(&admin))
        .await
        .assert_error(404, ErrorCode::NotFound);

    for (what, resp) in call_all(&http, Some(&admin)).await {
        assert!(
            ![401, 403].contains(&resp.status),
            "{what} with the admin token: {} {}",
            resp.status,
            resp.body
        );
    }
}

/// `?uid=` lists each device of the user with its platform, this node, the client's
/// address and when it connected; an unknown uid lists nothing.
#[tokio::test]
async fn connections_of_a_user_show_each_device() {
    let imd = start();
    let http = imd.http();
    let before = now_ms();
    let web = imd.ws(&tok_on("alice", "laptop", Platform::Web)).await;
    let ios = imd.ws(&tok_on("alice", "phone", Platform::Ios)).await;
    let _bob = imd.ws(&tok_on("bob", "b1", Platform::Android)).await;
    let after = now_ms();

    let got = list(&connections(&http, "?uid=alice").await);
    assert_eq!(got.len(), 2, "alice's devices: {got:?}");
    let mut devices = BTreeSet::new();
    for (device, plat, client) in [("laptop", "web", &web), ("phone", "ios", &ios)] {
        let c = got
            .iter()
            .find(|c| c["device"] == device)
            .unwrap_or_else(|| panic!("{device} not listed: {got:?}"));
        assert_eq!(c["uid"], "alice", "{c}");
        assert_eq!(c["platform"], plat, "{c}");
        assert_eq!(c["node"], imd.node_id.as_str(), "{c}");
        assert_eq!(
            c["remote"],
            client.local_addr().to_string(),
            "remote is the client's address: {c}"
        );
        let at = c["connected_at"]
            .as_i64()
            .unwrap_or_else(|| panic!("connected_at is not ms: {c}"));
        assert!(
            (before..=after).contains(&at),
            "connected_at {at} outside {before}..{after}"
        );
        devices.insert(device);
    }
    assert_eq!(devices.len(), 2);

    let nobody = connections(&http, "?uid=nobody").await;
    assert_eq!(list(&nobody), Vec::<Value>::new(), "{nobody}");
}

/// Without `uid`, pages of `limit` go through every connection once, ordered by
/// (uid, device), each page but the last carrying `next`.
#[tokio::test]
async fn paging_through_all_connections_lists_each_once_in_order() {
    let imd = start();
    let http = imd.http();
    let want = [
        ("ann", "d1"),
        ("ann", "d2"),
        ("bob", "x"),
        ("cat", "a"),
        ("cat", "b"),
    ];
    let mut clients = Vec::new();
    // Connected out of order, so that the order is the server's.
    for (uid, device) in want.iter().rev() {
        clients.push(imd.ws(&tok(uid, device)).await);
    }

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let query = match &after {
            None => "?limit=2".to_owned(),
            Some(c) => format!("?limit=2&after={}", common::encode_path(c)),
        };
        let page = connections(&http, &query).await;
        let items = list(&page);
        assert!(items.len() <= 2, "page over the limit: {page}");
        pages.push(items.len());
        for c in &items {
            seen.push((
                c["uid"].as_str().expect("uid").to_owned(),
                c["device"].as_str().expect("device").to_owned(),
            ));
        }
        match page.get("next").filter(|n| !n.is_null()) {
            Some(next) => {
                let next = next.as_str().expect("next is a string").to_owned();
                let last = seen.last().expect("a page with next is not empty");
                assert_eq!(next, format!("{}/{}", last.0, last.1), "cursor");
                after = Some(next);
            }
            None => break,
        }
        assert!(pages.len() <= 5, "paging does not end: {pages:?}");
    }
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(u, d)| ((*u).to_owned(), (*d).to_owned()))
        .collect();
    assert_eq!(seen, want, "every connection once, in (uid, device) order");
    assert_eq!(pages, [2, 2, 1], "page sizes");

    // A page that ends exactly at the last connection has no `next`.
    let whole = connections(&http, "?limit=5").await;
    assert_eq!(list(&whole).len(), 5, "{whole}");
    assert!(
        whole.get("next").is_none_or(Value::is_null),
        "no more follow, yet next: {whole}"
    );
}

/// DELETE kicks every device of the user with reason `admin`, answers how many, and
/// leaves others alone; a user with no connection is 404.
#[tokio::test]
async fn deleting_a_users_connections_kicks_every_device() {
    let imd = start();
    let http = imd.http();
    let mut d1 = imd.ws(&tok("alice", "d1")).await;
    let mut d2 = imd.ws(&tok_on("alice", "d2", Platform::Pc)).await;
    let mut bob = imd.ws(&tok("bob", "b1")).await;

    let resp = http
        .delete("/admin/v1/connections/alice", Some(ADMIN))
        .await;
    assert_eq!(resp.assert_ok(), &json!({"kicked": 2}));
    for (name, c) in [("d1", &mut d1), ("d2", &mut d2)] {
        assert_eq!(c.expect_kick().await, "admin", "{name}: kick reason");
        c.expect_closed(FRAME_DEADLINE).await;
    }
    bob.ping_pong().await;
    assert!(bob.take_pending().is_empty(), "bob got frames");

    wait_until(
        Duration::from_secs(2),
        "alice's connections to be gone",
        || async { list(&connections(&http, "?uid=alice").await).is_empty() },
    )
    .await;
    http.delete("/admin/v1/connections/alice", Some(ADMIN))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.delete("/admin/v1/connections/nobody", Some(ADMIN))
        .await
        .assert_error(404, ErrorCode::NotFound);
    // A kick is not a ban: alice comes back.
    let mut again = WsClient::connect(&imd.ws_url(), Auth::Header(&tok("alice", "d1"))).await;
    again.send_to("bob", "back", json!("hi")).await;
    again.expect_sent("back").await;
}

/// The admin reads any conversation in pages; an unparseable conversation id is 404.
#[tokio::test]
async fn admin_reads_any_conversation() {
    let imd = start();
    let http = imd.http();
    let alice = tok("alice", "a1");
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(http.send_to(&alice, "bob", None, json!(i)).await);
    }
    let conv = direct_conv("alice", "bob");
    let path = |after: u64, limit: u32| {
        format!(
            "/admin/v1/conversations/{}/messages?after={after}&limit={limit}",
            common::encode_path(&conv)
        )
    };
    let page = http.get(&path(0, 2), Some(ADMIN)).await;
    let v = page.assert_ok();
    assert_eq!(v["more"], true, "{v}");
    let msgs: Vec<shared::protocol::Message> =
        serde_json::from_value(v["msgs"].clone()).expect("messages");
    assert_eq!(msgs, sent[..2], "first page");
    let page = http.get(&path(2, 2), Some(ADMIN)).await;
    let v = page.assert_ok();
    assert_eq!(v["more"], false, "{v}");
    let msgs: Vec<shared::protocol::Message> =
        serde_json::from_value(v["msgs"].clone()).expect("messages");
    assert_eq!(msgs, sent[2..], "second page");

    for bad in ["nonsense", "x:abc", "d:alice", "g:", "s:shop"] {
        let resp = http
            .get(
                &format!(
                    "/admin/v1/conversations/{}/messages",
                    common::encode_path(bad)
                ),
                Some(ADMIN),
            )
            .await;
        resp.assert_error(404, ErrorCode::NotFound);
    }
}

//! The customer-service workflow against a real process: availability, the shop's
//! cap, the queue and its `queue` frames, close and rating, the shop's welcome and
//! away messages, and the shop's figures (`docs/protocol.md`, "Customer service").

use std::time::Duration;

use serde_json::{Value, json};
use shared::protocol::{ErrorCode, Message, ServerFrame};

use crate::common::{Http, Imd, WsClient, claims, encode_path, metric, mint, wait_until};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";
const FRAME: Duration = Duration::from_secs(5);

fn start() -> Imd {
    Imd::start(&["--token-secret", SECRET, "--admin-token", ADMIN])
}

fn tok(uid: &str) -> String {
    mint(SECRET, &claims(uid, "d", 3600))
}

/// A token with the agent role, for `uid`'s desk.
fn agent_tok(uid: &str) -> String {
    agent_device(uid, "desk")
}

/// A token with the agent role, for `uid`'s `device`.
fn agent_device(uid: &str, device: &str) -> String {
    let mut c = claims(uid, device, 3600);
    c.roles = vec!["agent".into()];
    mint(SECRET, &c)
}

fn conv(shop: &str, customer: &str) -> String {
    format!("s:{shop}~{customer}")
}

async fn set_shop(http: &Http, shop: &str, body: Value) {
    http.put_json(
        &format!("/admin/v1/shops/{shop}/agents"),
        Some(ADMIN),
        &body,
    )
    .await
    .assert_ok();
}

/// The conversation as its customer sees it (`GET /v1/conversations/{conv}`).
async fn detail(http: &Http, customer: &str, shop: &str) -> Value {
    http.conversation(&tok(customer), &conv(shop, customer))
        .await
        .assert_ok()
        .clone()
}

async fn agent_of(http: &Http, customer: &str, shop: &str) -> Option<String> {
    detail(http, customer, shop).await["agent"]
        .as_str()
        .map(str::to_owned)
}

async fn stats(http: &Http, shop: &str) -> Value {
    http.get(&format!("/admin/v1/shops/{shop}/stats"), Some(ADMIN))
        .await
        .assert_ok()
        .clone()
}

async fn set_status(http: &Http, token: &str, status: &str) -> crate::common::Resp {
    http.put_json(
        "/v1/agent/status",
        Some(token),
        &json!({ "status": status }),
    )
    .await
}

/// The next `queue` frame of `c` for `conv`: its position.
async fn queue_position(c: &mut WsClient, conv: &str) -> u64 {
    let f = c
        .next_matching(
            FRAME,
            "queue frame",
            |f| matches!(f, ServerFrame::Queue { conv: q, .. } if q == conv),
        )
        .await;
    let ServerFrame::Queue { position, .. } = f else {
        unreachable!("matched a queue frame")
    };
    position
}

/// The events of `conv`'s history, as JSON values, in order.
async fn events(http: &Http, token: &str, conv: &str) -> Vec<Value> {
    http.history_all(token, conv)
        .await
        .into_iter()
        .filter_map(|m: Message| m.event)
        .collect()
}

async fn close(http: &Http, token: &str, conv: &str) -> crate::common::Resp {
    http.post_json(
        &format!("/v1/conversations/{}/close", encode_path(conv)),
        Some(token),
        &json!({}),
    )
    .await
}

async fn rate(http: &Http, token: &str, conv: &str, body: Value) -> crate::common::Resp {
    http.post_json(
        &format!("/v1/conversations/{}/rating", encode_path(conv)),
        Some(token),
        &body,
    )
    .await
}

/// An agent marked away (by frame or over HTTP) gets no new conversation but keeps its
/// own; available again, it takes new ones; reconnecting makes it available. Only a
/// token with the agent role sets a status, and only to one of the two values.
#[tokio::test]
async fn only_available_agents_get_new_conversations() {
    let imd = start();
    let http = imd.http();
    set_shop(&http, "s1", json!({"agents": ["a1", "a2"]})).await;
    let mut a1 = imd.ws(&agent_tok("a1")).await;
    let _a2 = imd.ws(&agent_tok("a2")).await;

    // a1 goes away by frame: every new customer goes to a2, however loaded.
    a1.send_json(&json!({"type": "status", "status": "away"}))
        .await;
    a1.ping_pong().await;
    for customer in ["c1", "c2", "c3"] {
        http.send_to_shop(&tok(customer), "s1", json!("hi")).await;
        assert_eq!(agent_of(&http, customer, "s1").await.as_deref(), Some("a2"));
    }
    let s = stats(&http, "s1").await;
    assert_eq!(
        (&s["agents_online"], &s["agents_available"]),
        (&json!(2), &json!(1))
    );

    // Available again over HTTP: the least loaded takes the next one.
    let back = set_status(&http, &agent_tok("a1"), "available").await;
    assert_eq!(back.assert_ok(), &json!({"status": "available"}));
    http.send_to_shop(&tok("c4"), "s1", json!("hi")).await;
    assert_eq!(agent_of(&http, "c4", "s1").await.as_deref(), Some("a1"));

    // Away keeps what it has: c4 writes again and still reaches a1.
    set_status(&http, &agent_tok("a1"), "away")
        .await
        .assert_ok();
    http.send_to_shop(&tok("c4"), "s1", json!("still there?"))
        .await;
    assert_eq!(agent_of(&http, "c4", "s1").await.as_deref(), Some("a1"));

    // A new connection makes it available.
    let _a1b = imd.ws(&agent_device("a1", "phone")).await;
    let s = stats(&http, "s1").await;
    assert_eq!(s["agents_available"], 2, "{s}");

    // Bad input: no agent role, an unknown status, over HTTP and by frame.
    set_status(&http, &tok("c1"), "away")
        .await
        .assert_error(403, ErrorCode::Forbidden);
    set_status(&http, &agent_tok("a1"), "busy")
        .await
        .assert_error(400, ErrorCode::BadRequest);
    let mut customer = imd.ws(&tok("c1")).await;
    customer
        .send_json(&json!({"type": "status", "status": "away"}))
        .await;
    assert_eq!(customer.expect_error().await.1, ErrorCode::Forbidden);
    a1.send_json(&json!({"type": "status", "status": "lunch"}))
        .await;
    assert_eq!(a1.expect_error().await.1, ErrorCode::BadRequest);
}

/// With every agent at the shop's cap, new customers wait first come first served and
/// hear their place; each close hands the oldest waiting one to the freed agent, with
/// an `assigned` event, and everyone behind moves up; raising the cap drains the rest.
#[tokio::test]
async fn a_full_shop_queues_customers_in_order_and_drains_as_agents_free_up() {
    let imd = start();
    let http = imd.http();
    set_shop(&http, "s1", json!({"agents": ["a1"], "max_open": 1})).await;
    let _a1 = imd.ws(&agent_tok("a1")).await;
    http.send_to_shop(&tok("c1"), "s1", json!("first")).await;
    assert_eq!(agent_of(&http, "c1", "s1").await.as_deref(), Some("a1"));

    let mut c2 = imd.ws(&tok("c2")).await;
    let mut c3 = imd.ws(&tok("c3")).await;
    http.send_to_shop(&tok("c2"), "s1", json!("second")).await;
    assert_eq!(queue_position(&mut c2, &conv("s1", "c2")).await, 1);
    http.send_to_shop(&tok("c3"), "s1", json!("third")).await;
    assert_eq!(queue_position(&mut c3, &conv("s1", "c3")).await, 2);
    let waiting = detail(&http, "c3", "s1").await;
    assert_eq!(waiting["queue_position"], 2, "{waiting}");
    assert_eq!(waiting["open"], true);
    assert!(waiting.get("agent").is_none_or(Value::is_null), "{waiting}");
    let s = stats(&http, "s1").await;
    assert_eq!((&s["open"], &s["waiting"]), (&json!(1), &json!(2)), "{s}");

    // a1 closes c1: c2 is next, and c3 moves up.
    close(&http, &agent_tok("a1"), &conv("s1", "c1"))
        .await
        .assert_ok();
    let (_, assigned) = c2
        .push_where("assigned", |m| {
            m.event.as_ref().is_some_and(|e| e["type"] == "assigned")
        })
        .await;
    assert_eq!(assigned.event.unwrap()["agent"], "a1");
    assert_eq!(queue_position(&mut c3, &conv("s1", "c3")).await, 1);
    assert_eq!(agent_of(&http, "c2", "s1").await.as_deref(), Some("a1"));
    assert_eq!(detail(&http, "c3", "s1").await["queue_position"], 1);

    // A new customer queues behind c3 even if a place frees up meanwhile.
    http.send_to_shop(&tok("c4"), "s1", json!("fourth")).await;
    assert_eq!(detail(&http, "c4", "s1").await["queue_position"], 2);

    // Raising the cap to 3 hands both waiting ones to a1, oldest first.
    set_shop(&http, "s1", json!({"agents": ["a1"], "max_open": 3})).await;
    wait_until(FRAME, "the queue drained", || async {
        stats(&http, "s1").await["waiting"] == 0
    })
    .await;
    assert_eq!(agent_of(&http, "c3", "s1").await.as_deref(), Some("a1"));
    assert_eq!(agent_of(&http, "c4", "s1").await.as_deref(), Some("a1"));
    let s = stats(&http, "s1").await;
    assert_eq!(s["agents"][0]["open"], 3, "{s}");
    assert_eq!(s["max_open"], 3);

    // The cap also bounds an agent who answers a waiting customer itself.
    set_shop(&http, "s1", json!({"agents": ["a1"], "max_open": 3})).await;
    http.send_to_shop(&tok("c5"), "s1", json!("fifth")).await;
    let refused = http
        .post_message(
            &agent_tok("a1"),
            &json!({"conv": conv("s1", "c5"), "body": "hello"}),
        )
        .await;
    refused.assert_error(409, ErrorCode::Conflict);
}

/// An agent becoming available, or connecting, takes the oldest waiting conversation.
#[tokio::test]
async fn an_agent_turning_available_or_connecting_takes_the_queue() {
    let imd = start();
    let http = imd.http();
    set_shop(&http, "s1", json!({"agents": ["a1", "a2"]})).await;
    let mut a1 = imd.ws(&agent_tok("a1")).await;
    a1.send_json(&json!({"type": "status", "status": "away"}))
        .await;
    a1.ping_pong().await;
    http.send_to_shop(&tok("c1"), "s1", json!("anyone?")).await;
    http.send_to_shop(&tok("c2"), "s1", json!("hello?")).await;
    assert_eq!(stats(&http, "s1").await["waiting"], 2);

    a1.send_json(&json!({"type": "status", "status": "available"}))
        .await;
    let (_, got) = a1
        .push_where("c1's question", |m| {
            m.conv == conv("s1", "c1") && !m.is_event()
        })
        .await;
    assert_eq!(got.body, Some(json!("anyone?")));
    // No cap: it takes both.
    a1.push_where("c2's question", |m| {
        m.conv == conv("s1", "c2") && !m.is_event()
    })
    .await;

    // The next waiting customer goes to a2 when it connects (a1 is away again).
    set_status(&http, &agent_tok("a1"), "away")
        .await
        .assert_ok();
    http.send_to_shop(&tok("c3"), "s1", json!("me too")).await;
    assert_eq!(stats(&http, "s1").await["waiting"], 1);
    let mut a2 = imd.ws(&agent_tok("a2")).await;
    a2.push_where("c3's question", |m| {
        m.conv == conv("s1", "c3") && !m.is_event()
    })
    .await;
    assert_eq!(agent_of(&http, "c3", "s1").await.as_deref(), Some("a2"));
}

/// The assigned agent closes (a `closed` event message); the customer then rates once
/// (a `rated` event message); a second rating, or a rating of an open conversation, is
/// 409; anyone but the customer is 403, and a score out of range is 400.
#[tokio::test]
async fn close_then_rate_once() {
    let imd = start();
    let http = imd.http();
    set_shop(&http, "s1", json!({"agents": ["a1", "a2"]})).await;
    let _a1 = imd.ws(&agent_tok("a1")).await;
    let c = conv("s1", "cu");
    http.send_to_shop(&tok("cu"), "s1", json!("my order?"))
        .await;
    let agent = agent_of(&http, "cu", "s1").await.unwrap();
    assert_eq!(agent, "a1");

    rate(&http, &tok("cu"), &c, json!({"score": 5}))
        .await
        .assert_error(409, ErrorCode::Conflict);
    // Only the assigned agent closes.
    close(&http, &agent_tok("a2"), &c)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    close(&http, &tok("cu"), &c)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    close(&http, &agent_tok("a1"), &c).await.assert_ok();
    close(&http, &agent_tok("a1"), &c)
        .await
        .assert_error(404, ErrorCode::NotFound);
    assert_eq!(detail(&http, "cu", "s1").await["open"], false);

    for (token, body, status, code) in [
        (tok("cu"), json!({"score": 0}), 400, ErrorCode::BadRequest),
        (tok("cu"), json!({"score": 6}), 400, ErrorCode::BadRequest),
        (tok("cu"), json!({"score": "5"}), 400, ErrorCode::BadRequest),
        (
            tok("cu"),
            json!({"score": 5, "extra": 1}),
            400,
            ErrorCode::BadRequest,
        ),
        (
            agent_tok("a1"),
            json!({"score": 5}),
            403,
            ErrorCode::Forbidden,
        ),
    ] {
        rate(&http, &token, &c, body)
            .await
            .assert_error(status, code);
    }
    rate(
        &http,
        &tok("cu"),
        &c,
        json!({"score": 4, "comment": "quick"}),
    )
    .await
    .assert_ok();
    rate(&http, &tok("cu"), &c, json!({"score": 5}))
        .await
        .assert_error(409, ErrorCode::Conflict);

    let evs = events(&http, &tok("cu"), &c).await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["assigned", "closed", "rated"]);
    assert_eq!(
        evs[2],
        json!({"type": "rated", "score": 4, "comment": "quick"})
    );
    let s = stats(&http, "s1").await;
    assert_eq!(s["rating"], json!({"count": 1, "avg": 4.0}));

    // Opened again by the customer, closed again: one more rating.
    http.send_to_shop(&tok("cu"), "s1", json!("one more thing"))
        .await;
    close(&http, &agent_tok("a1"), &c).await.assert_ok();
    rate(&http, &tok("cu"), &c, json!({"score": 1}))
        .await
        .assert_ok();
    assert_eq!(
        stats(&http, "s1").await["rating"],
        json!({"count": 2, "avg": 2.5})
    );
}

/// The shop's welcome message follows the message that opens a conversation, and its
/// away message too when no agent is available; both come from `shop:{shop}`.
#[tokio::test]
async fn welcome_and_away_messages() {
    let imd = start();
    let http = imd.http();
    set_shop(
        &http,
        "s1",
        json!({"agents": ["a1"], "welcome": {"text": "Hi!"}, "away": {"text": "Back at 9"}}),
    )
    .await;
    let got = http.get("/admin/v1/shops/s1/agents", Some(ADMIN)).await;
    assert_eq!(got.assert_ok()["welcome"], json!({"text": "Hi!"}));

    // Nobody online: welcome, then away.
    http.send_to_shop(&tok("c1"), "s1", json!("hello")).await;
    let said: Vec<(String, Option<Value>)> = http
        .history_all(&tok("c1"), &conv("s1", "c1"))
        .await
        .into_iter()
        .map(|m| (m.from, m.body))
        .collect();
    assert_eq!(
        said,
        [
            ("c1".into(), Some(json!("hello"))),
            ("shop:s1".into(), Some(json!({"text": "Hi!"}))),
            ("shop:s1".into(), Some(json!({"text": "Back at 9"}))),
        ]
    );
    // Not again while it stays open.
    http.send_to_shop(&tok("c1"), "s1", json!("hello?")).await;
    assert_eq!(
        http.history_all(&tok("c1"), &conv("s1", "c1")).await.len(),
        4
    );

    // An agent online: welcome only, and the agent has it too.
    let mut a1 = imd.ws(&agent_tok("a1")).await;
    http.send_to_shop(&tok("c2"), "s1", json!("hi")).await;
    let (_, welcome) = a1
        .push_where("the welcome", |m| {
            m.conv == conv("s1", "c2") && m.from == "shop:s1"
        })
        .await;
    assert_eq!(welcome.body, Some(json!({"text": "Hi!"})));
    let bodies: Vec<Option<Value>> = http
        .history_all(&tok("c2"), &conv("s1", "c2"))
        .await
        .into_iter()
        .filter(|m| !m.is_event())
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, [Some(json!("hi")), Some(json!({"text": "Hi!"}))]);

    // Bad settings.
    for body in [
        json!({"agents": ["a1"], "max_open": 10_001}),
        json!({"agents": ["a1"], "max_open": -1}),
        json!({"agents": ["a1"], "welcome": null, "max_open": "3"}),
        json!({"agents": ["a1"], "welcome": "x".repeat(9_000)}),
    ] {
        http.put_json("/admin/v1/shops/s1/agents", Some(ADMIN), &body)
            .await
            .assert_error(400, ErrorCode::BadRequest);
    }
}

/// The shop's figures: agents online and available, open and waiting conversations,
/// first-response percentiles once an agent answered, ratings; an unknown shop is 404.
#[tokio::test]
async fn shop_stats_count_what_happened() {
    let imd = start();
    let http = imd.http();
    set_shop(&http, "s1", json!({"agents": ["a1", "a2"], "max_open": 1})).await;
    let empty = stats(&http, "s1").await;
    assert_eq!(empty["first_response_ms"]["p50"], Value::Null, "{empty}");
    assert_eq!(empty["rating"], json!({"count": 0, "avg": null}));
    let _a1 = imd.ws(&agent_tok("a1")).await;
    http.send_to_shop(&tok("c1"), "s1", json!("q1")).await;
    http.send_to_shop(&tok("c2"), "s1", json!("q2")).await;
    let s = stats(&http, "s1").await;
    assert_eq!(
        (
            &s["agents_online"],
            &s["agents_available"],
            &s["open"],
            &s["waiting"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(1)),
        "{s}"
    );
    assert_eq!(
        s["agents"],
        json!([
            {"uid": "a1", "online": true, "available": true, "open": 1},
            {"uid": "a2", "online": false, "available": false, "open": 0},
        ])
    );
    // a1 answers c1 twice: one first response.
    for text in ["hello", "anything else?"] {
        http.send_in(&agent_tok("a1"), &conv("s1", "c1"), json!(text))
            .await;
    }
    let s = stats(&http, "s1").await;
    let frt = &s["first_response_ms"];
    assert_eq!(frt["count"], 1, "{s}");
    let p50 = frt["p50"].as_u64().expect("a p50 once answered");
    assert!(p50 <= 60_000, "{s}");
    assert!(frt["p90"].as_u64().unwrap() >= p50);

    // The same figures as gauges labelled by shop, read at scrape time.
    let text = http.metrics().await;
    for (name, want) in [
        ("imd_shop_open{shop=\"s1\"}", 1.0),
        ("imd_shop_waiting{shop=\"s1\"}", 1.0),
        ("imd_shop_agents_online{shop=\"s1\"}", 1.0),
        ("imd_shop_first_responses{shop=\"s1\"}", 1.0),
        ("imd_shop_metrics_omitted", 0.0),
    ] {
        assert_eq!(metric(&text, name), Some(want), "{name}");
    }
    let p50_s = metric(
        &text,
        "imd_shop_first_response_seconds{shop=\"s1\",quantile=\"0.5\"}",
    );
    assert_eq!(p50_s, Some(p50 as f64 / 1000.0));

    http.get("/admin/v1/shops/nope/stats", Some(ADMIN))
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.get("/admin/v1/shops/s1/stats", Some(&tok("c1")))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    let shops = http.get("/admin/v1/shops", Some(ADMIN)).await;
    assert_eq!(shops.assert_ok(), &json!({"shops": ["s1"]}));
}

/// Internal notes live in `n:{shop}~{customer}`: the shop's agents write and read
/// them, the assigned agent has them pushed, and nothing of them reaches the
/// customer: not its inbox, its list, the service conversation, or the notes' history.
#[tokio::test]
async fn internal_notes_never_reach_the_customer() {
    let imd = start();
    let http = imd.http();
    set_shop(&http, "s1", json!({"agents": ["a1", "a2"]})).await;
    let mut a1 = imd.ws(&agent_tok("a1")).await;
    http.send_to_shop(&tok("cu"), "s1", json!("where is my parcel?"))
        .await;
    assert_eq!(agent_of(&http, "cu", "s1").await.as_deref(), Some("a1"));
    let notes = "n:s1~cu";

    // a2, a colleague, notes something; a1, assigned, has it pushed.
    let note = http
        .send_in(&agent_tok("a2"), notes, json!("VIP: refund without asking"))
        .await;
    let (_, got) = a1.push_where("the note", |m| m.conv == notes).await;
    assert_eq!(got.id, note.id);
    let read = http.history_all(&agent_tok("a1"), notes).await;
    assert_eq!(read.len(), 1);

    // The customer: refused, and none of its read paths shows it.
    http.post_message(&tok("cu"), &json!({"conv": notes, "body": "me too"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.history(&tok("cu"), notes, 0, None)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.conversation(&tok("cu"), notes)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    let inbox = http.sync_all(&tok("cu"), 0, 1000).await;
    assert!(inbox.iter().all(|i| i.msg.conv != notes), "{inbox:?}");
    let list = http.conversations(&tok("cu"), "").await;
    assert!(!list.assert_ok().to_string().contains("refund"), "{list:?}");
    let service = http.history_all(&tok("cu"), &conv("s1", "cu")).await;
    assert!(service.iter().all(|m| m.id != note.id));
    // Nor anyone outside the shop, nor a note on a shop that does not exist.
    http.post_message(&tok("other"), &json!({"conv": notes, "body": "hi"}))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.post_message(
        &agent_tok("a1"),
        &json!({"conv": "n:nope~cu", "body": "hi"}),
    )
    .await
    .assert_error(404, ErrorCode::NotFound);
    // The agents' list shows the notes as their own kind.
    let list = http.conversations(&agent_tok("a1"), "").await;
    let kinds: Vec<(String, String)> = list.assert_ok()["convs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["conv"].as_str().unwrap().into(),
                c["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(kinds.contains(&(notes.into(), "notes".into())), "{kinds:?}");
}

/// What an agent's console reads and does: `GET /v1/agent` (availability, shops),
/// `GET /v1/shops/{shop}` (the queue and the colleagues; agents of the shop only), and
/// a handover by the assigned agent (`POST /v1/conversations/{conv}/transfer`): refused
/// to anyone else, and to a colleague at the cap.
#[tokio::test]
async fn an_agent_sees_its_shop_and_hands_a_conversation_over() {
    let imd = start();
    let http = imd.http();
    set_shop(&http, "s1", json!({"agents": ["a1", "a2"], "max_open": 1})).await;
    let _a1 = imd.ws(&agent_tok("a1")).await;
    let me = http.get("/v1/agent", Some(&agent_tok("a1"))).await;
    assert_eq!(
        me.assert_ok(),
        &json!({"uid": "a1", "status": "available", "shops": ["s1"]})
    );
    http.send_to_shop(&tok("c1"), "s1", json!("first")).await;
    http.send_to_shop(&tok("c2"), "s1", json!("second")).await;
    let view = http.get("/v1/shops/s1", Some(&agent_tok("a2"))).await;
    let view = view.assert_ok();
    assert_eq!(
        view["waiting"],
        json!([{"conv": conv("s1", "c2"), "customer": "c2", "position": 1}])
    );
    assert_eq!(view["agents"][0]["uid"], "a1");
    assert_eq!(view["agents"][0]["open"], 1);
    assert_eq!(view["max_open"], 1);
    http.get("/v1/shops/s1", Some(&tok("c1")))
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.get("/v1/shops/nope", Some(&agent_tok("a1")))
        .await
        .assert_error(404, ErrorCode::NotFound);

    let transfer = |token: String, agent: &'static str| {
        let http = http.clone();
        async move {
            http.post_json(
                &format!(
                    "/v1/conversations/{}/transfer",
                    encode_path(&conv("s1", "c1"))
                ),
                Some(&token),
                &json!({ "agent": agent }),
            )
            .await
        }
    };
    // Only the assigned agent hands over.
    transfer(agent_tok("a2"), "a2")
        .await
        .assert_error(403, ErrorCode::Forbidden);
    transfer(tok("c1"), "a2")
        .await
        .assert_error(403, ErrorCode::Forbidden);
    // a2 is offline but below the cap: it takes c1, and a1, freed, takes c2.
    transfer(agent_tok("a1"), "a2").await.assert_ok();
    assert_eq!(agent_of(&http, "c1", "s1").await.as_deref(), Some("a2"));
    wait_until(FRAME, "a1 took the waiting c2", || async {
        agent_of(&http, "c2", "s1").await.as_deref() == Some("a1")
    })
    .await;
    // Back to a full colleague: 409.
    transfer(agent_tok("a2"), "a1")
        .await
        .assert_error(409, ErrorCode::Conflict);
}

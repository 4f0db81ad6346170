//! Conversation state against one real process on the embedded store: the conversation
//! list (order, kinds, last message, read positions, unread counts, paging and its
//! limit), marking read over HTTP and WebSocket and the `read` frames that tell every
//! device, typing and its flood cut, presence that leaves strangers out, recall (by the
//! sender within `--recall-window`, by the admin at any time) as seen live and after a
//! sync, and the `assigned` / `closed` event messages of a service conversation.
//!
//! Times that the protocol states (a `read` or `typing` frame within 1 s) are the
//! deadlines here, counted from the request that caused the frame.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::ids::{direct_conv, service_conv};
use shared::protocol::{
    ConvKind, ConversationResponse, ErrorCode, InboxItem, Message, PresenceResponse, ServerFrame,
};

use crate::common::{
    FRAME_DEADLINE, Http, Imd, WsClient, claims, encode_path, entry_of, mint, now_ms, tick_past,
    wait_until,
};

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";
/// How late a `read` or `typing` frame may be: the protocol's bound.
const LIVE: Duration = Duration::from_secs(1);

fn start(extra: &[&str]) -> Imd {
    let mut args = vec!["--token-secret", SECRET, "--admin-token", ADMIN];
    args.extend_from_slice(extra);
    Imd::start(&args)
}

fn tok(uid: &str, device: &str) -> String {
    mint(SECRET, &claims(uid, device, 3600))
}

/// What is left of `LIVE` since `from`.
fn left(from: Instant) -> Duration {
    LIVE.saturating_sub(from.elapsed())
}

/// `GET /v1/conversations/{conv}` as `token`, decoded (asserts 200).
async fn detail(http: &Http, token: &str, conv: &str) -> ConversationResponse {
    let resp = http.conversation(token, conv).await;
    serde_json::from_value(resp.assert_ok().clone())
        .unwrap_or_else(|e| panic!("bad conversation answer ({e}): {}", resp.body))
}

/// The `event` of an event message; panics when it has a body or no event.
fn event_of(m: &Message) -> &Value {
    assert!(m.body.is_none(), "an event message has no body: {m:?}");
    m.event
        .as_ref()
        .unwrap_or_else(|| panic!("not an event message: {m:?}"))
}

/// Whether `m` is an event message of type `ty`.
fn is_event(m: &Message, ty: &str) -> bool {
    m.event.as_ref().is_some_and(|e| e["type"] == ty)
}

/// The `read` frames of `frames`, as (conv, uid, seq).
fn reads_in(frames: &[ServerFrame]) -> Vec<(String, String, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Read { conv, uid, seq } => Some((conv.clone(), uid.clone(), *seq)),
            _ => None,
        })
        .collect()
}

/// Sends the WebSocket `read` frame.
async fn read_frame(ws: &mut WsClient, conv: &str, seq: u64) {
    ws.send_json(&json!({"type": "read", "conv": conv, "seq": seq}))
        .await;
}

/// `ws` got no `error` frame: its pong comes after the answer to anything it sent
/// before the ping.
async fn expect_no_error(name: &str, ws: &mut WsClient) {
    ws.ping_pong().await;
    let errors: Vec<ServerFrame> = ws
        .take_pending()
        .into_iter()
        .filter(|f| matches!(f, ServerFrame::Error { .. }))
        .collect();
    assert!(errors.is_empty(), "{name} got errors: {errors:?}");
}

/// Waits until the service conversation `conv`'s history holds an `assigned` event
/// after seq `after`, asserts that it names `agent` (and comes from it), and returns it.
async fn assigned_event(http: &Http, token: &str, conv: &str, agent: &str, after: u64) -> Message {
    let until = Instant::now() + FRAME_DEADLINE;
    loop {
        let hist = http.history_all(token, conv).await;
        if let Some(m) = hist
            .iter()
            .find(|m| m.seq > after && is_event(m, "assigned"))
        {
            assert_eq!(event_of(m)["agent"], agent, "the assigned agent: {m:?}");
            assert_eq!(m.from, agent, "an assigned event is from the agent: {m:?}");
            return m.clone();
        }
        assert!(
            Instant::now() < until,
            "no assigned event after seq {after} in {conv} within {FRAME_DEADLINE:?}: {hist:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// The conversation list

/// The list holds each of the caller's conversations, newest activity first, with its
/// kind, its last message (event messages included), the caller's read position, the
/// unread count (others' messages after it; event messages never count) and, for a
/// direct or service conversation, the other member's read position. Activity moves a
/// conversation to the top.
#[tokio::test]
async fn the_list_is_newest_first_with_kind_last_message_read_positions_and_unread() {
    let imd = start(&[]);
    let http = imd.http();
    http.put_group(ADMIN, "team", &["alice", "bob", "carol"])
        .await;
    http.put_shop_agents(ADMIN, "shop", &["ag1"]).await;
    let _ag1 = imd.ws(&tok("ag1", "desk")).await;
    let alice = tok("alice", "web");
    let direct = direct_conv("alice", "bob");
    let service = service_conv("shop", "alice");

    // Oldest activity: the group; then the direct one; then the service one.
    let g1 = http
        .send_in(&tok("carol", "w"), "g:team", json!("hi team"))
        .await;
    let g2 = http
        .send_in(&tok("bob", "w"), "g:team", json!("hello"))
        .await;
    tick_past(g2.ts).await;
    let d1 = http.send_to(&alice, "bob", None, json!("hey bob")).await;
    http.send_to(&tok("bob", "w"), "alice", None, json!("hey"))
        .await;
    let d3 = http
        .send_to(&tok("bob", "w"), "alice", None, json!("how are you?"))
        .await;
    assert_eq!((g1.seq, d1.seq, d3.seq), (1, 1, 3));
    tick_past(d3.ts).await;
    let s1 = http
        .send_to_shop(&alice, "shop", json!("where is my parcel?"))
        .await;
    assert_eq!((s1.conv.as_str(), s1.seq), (service.as_str(), 1));
    let assigned = assigned_event(&http, &alice, &service, "ag1", 1).await;
    assert_eq!(assigned.seq, 2, "the assigned event follows the message");

    let list = http.conversation_list(&alice, "").await;
    let order: Vec<&str> = list.convs.iter().map(|c| c.conv.as_str()).collect();
    assert_eq!(
        order,
        [service.as_str(), direct.as_str(), "g:team"],
        "newest activity first: {list:?}"
    );
    assert_eq!(list.next, None, "one page holds three conversations");

    let s = &list.convs[0];
    assert_eq!(s.kind, ConvKind::Service, "{s:?}");
    assert_eq!(s.last, assigned, "the last message is the assigned event");
    assert_eq!(
        (s.read_seq, s.unread),
        (1, 0),
        "sending read alice's own message; the event does not count: {s:?}"
    );
    assert!(
        s.peer_read_seq.is_some(),
        "a service entry holds the agent's read position: {s:?}"
    );

    let d = &list.convs[1];
    assert_eq!(d.kind, ConvKind::Direct, "{d:?}");
    assert_eq!(d.last, d3, "the last direct message");
    assert_eq!(
        (d.read_seq, d.unread),
        (1, 2),
        "bob's two are unread: {d:?}"
    );
    assert_eq!(d.peer_read_seq, Some(3), "bob read by sending: {d:?}");

    let g = &list.convs[2];
    assert_eq!(g.kind, ConvKind::Group, "{g:?}");
    assert_eq!(g.last, g2, "the last group message");
    assert_eq!((g.read_seq, g.unread), (0, 2), "{g:?}");
    assert_eq!(g.peer_read_seq, None, "a group entry has no peer: {g:?}");

    // The other side of each.
    let bobs = http.conversation_list(&tok("bob", "w"), "").await;
    let d = entry_of(&bobs, &direct);
    assert_eq!(
        (d.read_seq, d.unread, d.peer_read_seq),
        (3, 0, Some(1)),
        "bob's direct entry: {d:?}"
    );
    let carols = http.conversation_list(&tok("carol", "w"), "").await;
    let g = entry_of(&carols, "g:team");
    assert_eq!((g.read_seq, g.unread), (1, 1), "carol's group entry: {g:?}");
    let ag1s = http.conversation_list(&tok("ag1", "desk"), "").await;
    let s = entry_of(&ag1s, &service);
    assert_eq!(s.unread, 1, "ag1: alice's message, not the event: {s:?}");
    assert_eq!(s.peer_read_seq, Some(1), "ag1 sees alice's position: {s:?}");
    let daves = http.conversation_list(&tok("dave", "w"), "").await;
    assert!(daves.convs.is_empty(), "dave is in none: {daves:?}");

    // New activity moves the group to the top.
    tick_past(assigned.ts).await;
    let g3 = http
        .send_in(&tok("carol", "w"), "g:team", json!("lunch?"))
        .await;
    let list = http.conversation_list(&alice, "").await;
    let order: Vec<&str> = list.convs.iter().map(|c| c.conv.as_str()).collect();
    assert_eq!(
        order,
        ["g:team", service.as_str(), direct.as_str()],
        "after a new group message: {list:?}"
    );
    assert_eq!(list.convs[0].last, g3);
    assert_eq!(list.convs[0].unread, 3);
}

/// Pages of `limit` follow `next` (passed back as `before`) through the whole list,
/// newest first, each conversation once; the last page has no `next`.
#[tokio::test]
async fn the_list_pages_with_next_until_the_oldest() {
    let imd = start(&[]);
    let http = imd.http();
    let alice = tok("alice", "web");
    let mut want = Vec::new();
    for i in 0..7 {
        let m = http.send_to(&alice, &format!("p{i}"), None, json!(i)).await;
        tick_past(m.ts).await;
        want.push(m.conv);
    }
    want.reverse();

    let mut got = Vec::new();
    let mut sizes = Vec::new();
    let mut query = "limit=3".to_owned();
    loop {
        let page = http.conversation_list(&alice, &query).await;
        sizes.push(page.convs.len());
        got.extend(page.convs.into_iter().map(|c| c.conv));
        match page.next {
            Some(next) => query = format!("limit=3&before={}", encode_path(&next)),
            None => break,
        }
        assert!(sizes.len() <= 7, "next never ends: pages {sizes:?}");
    }
    assert_eq!(got, want, "pages of 3, newest first");
    assert_eq!(sizes, [3, 3, 1], "page sizes");
    http.conversations(&alice, "limit=3&before=not-a-cursor")
        .await
        .assert_error(400, ErrorCode::BadRequest);
}

/// Without `limit` a page holds 50 conversations; a `limit` over 200 is clamped to
/// 200; `next` leads on to the rest.
#[tokio::test]
async fn the_list_limit_defaults_to_50_and_is_clamped_to_200() {
    let imd = start(&["--send-rate", "0"]);
    let http = imd.http();
    let alice = tok("alice", "web");
    const N: usize = 205;
    let mut all = BTreeSet::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(16) {
        let sends = chunk.iter().map(|i| {
            let (http, alice) = (&http, &alice);
            async move {
                http.send_to(alice, &format!("peer{i}"), None, json!(i))
                    .await
            }
        });
        for m in futures_util::future::join_all(sends).await {
            all.insert(m.conv);
        }
    }
    assert_eq!(all.len(), N);

    let page = http.conversation_list(&alice, "").await;
    assert_eq!(page.convs.len(), 50, "default limit");
    assert!(page.next.is_some(), "more follow the default page");

    let first = http.conversation_list(&alice, "limit=500").await;
    assert_eq!(first.convs.len(), 200, "limit=500 is clamped to 200");
    let next = first.next.clone().expect("more follow 200 of 205");
    let rest = http
        .conversation_list(&alice, &format!("limit=500&before={}", encode_path(&next)))
        .await;
    assert_eq!(rest.convs.len(), N - 200, "the rest");
    assert_eq!(rest.next, None, "the last page");
    let listed: Vec<&str> = first
        .convs
        .iter()
        .chain(&rest.convs)
        .map(|c| c.conv.as_str())
        .collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(unique.len(), N, "each conversation once");
    assert_eq!(
        unique,
        all.iter().map(String::as_str).collect(),
        "every conversation"
    );
    let ts: Vec<i64> = first
        .convs
        .iter()
        .chain(&rest.convs)
        .map(|c| c.last.ts)
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] >= w[1]),
        "newest activity first: {ts:?}"
    );
}

// ---------------------------------------------------------------------------------
// Read positions

/// A read position moves forward only and never past the last seq, over HTTP and over
/// WebSocket. A negative seq is `bad_request`, a non-member is refused (403
/// `forbidden`), an unknown conversation is 404 `not_found`; on WebSocket the same
/// come as `error` frames and a read that succeeds has no answer. The conversation's
/// detail shows every member's position.
#[tokio::test]
async fn a_read_position_moves_forward_only_and_never_past_the_last_seq() {
    let imd = start(&[]);
    let http = imd.http();
    let (alice, bob, carol) = (tok("alice", "a1"), tok("bob", "b1"), tok("carol", "c1"));
    let conv = direct_conv("alice", "bob");
    for i in 1..=3 {
        http.send_to(&bob, "alice", None, json!(i)).await;
    }

    let read = |seq: i64| {
        let (http, alice, conv) = (&http, &alice, &conv);
        async move { http.mark_read(alice, conv, seq).await }
    };
    assert_eq!(read(2).await.assert_ok(), &json!({"read_seq": 2}));
    assert_eq!(
        read(1).await.assert_ok(),
        &json!({"read_seq": 2}),
        "never backward"
    );
    assert_eq!(read(0).await.assert_ok(), &json!({"read_seq": 2}));
    assert_eq!(
        read(99).await.assert_ok(),
        &json!({"read_seq": 3}),
        "clamped to the last seq"
    );
    let list = http.conversation_list(&alice, "").await;
    let e = entry_of(&list, &conv);
    assert_eq!((e.read_seq, e.unread), (3, 0), "{e:?}");
    http.send_to(&bob, "alice", None, json!(4)).await;
    let list = http.conversation_list(&alice, "").await;
    let e = entry_of(&list, &conv);
    assert_eq!((e.read_seq, e.unread), (3, 1), "one new after it: {e:?}");

    read(-1).await.assert_error(400, ErrorCode::BadRequest);
    http.mark_read(&carol, &conv, 1)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.mark_read(&alice, "g:nope", 1)
        .await
        .assert_error(404, ErrorCode::NotFound);

    let d = detail(&http, &alice, &conv).await;
    assert_eq!(d.conv, conv);
    assert_eq!(d.kind, ConvKind::Direct);
    let members: BTreeSet<&str> = d.members.iter().map(String::as_str).collect();
    assert_eq!(members, BTreeSet::from(["alice", "bob"]), "{d:?}");
    assert_eq!(d.read.get("alice"), Some(&3), "{d:?}");
    assert_eq!(d.read.get("bob"), Some(&4), "bob read by sending: {d:?}");
    assert_eq!(d.last_seq, 4, "{d:?}");
    assert_eq!(
        (d.agent.as_deref(), d.open),
        (None, None),
        "not service: {d:?}"
    );
    http.conversation(&carol, &conv)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.conversation(&alice, "g:nope")
        .await
        .assert_error(404, ErrorCode::NotFound);

    // The same over WebSocket.
    let mut a1 = imd.ws(&alice).await;
    read_frame(&mut a1, &conv, 4).await;
    assert_eq!(
        a1.expect_read(LIVE, &conv, "alice").await,
        4,
        "the reader's own device hears of the move"
    );
    read_frame(&mut a1, &conv, 1).await;
    expect_no_error("a1 after a backward read", &mut a1).await;
    http.send_to(&bob, "alice", None, json!(5)).await;
    read_frame(&mut a1, &conv, 99).await;
    assert_eq!(
        a1.expect_read(LIVE, &conv, "alice").await,
        5,
        "a backward read moved nothing, then 99 is clamped to the last seq"
    );
    let list = http.conversation_list(&alice, "").await;
    let e = entry_of(&list, &conv);
    assert_eq!((e.read_seq, e.unread), (5, 0), "{e:?}");

    a1.send_json(&json!({"type": "read", "conv": conv, "seq": -1}))
        .await;
    assert_eq!(a1.expect_error().await, (None, ErrorCode::BadRequest));
    read_frame(&mut a1, "g:nope", 1).await;
    assert_eq!(a1.expect_error().await, (None, ErrorCode::NotFound));
    let mut c1 = imd.ws(&carol).await;
    read_frame(&mut c1, &conv, 1).await;
    assert_eq!(c1.expect_error().await, (None, ErrorCode::Forbidden));
    let d = detail(&http, &bob, &conv).await;
    assert_eq!(d.read.get("alice"), Some(&5), "{d:?}");
}

/// A read that moves the position reaches every connected device of the reader and of
/// the other member within 1 s, as `{"type":"read","conv","uid","seq"}`, whether it
/// came as a frame or over HTTP; a read that moves nothing sends nothing; a non-member
/// hears nothing.
#[tokio::test]
async fn a_read_reaches_every_device_of_the_reader_and_the_peer_within_a_second() {
    let imd = start(&[]);
    let http = imd.http();
    let conv = direct_conv("alice", "bob");
    let mut devices = [
        ("a1", imd.ws(&tok("alice", "a1")).await),
        ("a2", imd.ws(&tok("alice", "a2")).await),
        ("b1", imd.ws(&tok("bob", "b1")).await),
        ("b2", imd.ws(&tok("bob", "b2")).await),
    ];
    let mut carol = imd.ws(&tok("carol", "c1")).await;
    for i in 1..=3 {
        http.send_to(&tok("bob", "b1"), "alice", None, json!(i))
            .await;
    }

    let t = Instant::now();
    read_frame(&mut devices[0].1, &conv, 2).await;
    for (name, ws) in devices.iter_mut() {
        assert_eq!(
            ws.expect_read(left(t), &conv, "alice").await,
            2,
            "{name}: alice's read frame"
        );
    }

    let t = Instant::now();
    http.mark_read(&tok("alice", "a2"), &conv, 3)
        .await
        .assert_ok();
    for (name, ws) in devices.iter_mut() {
        assert_eq!(
            ws.expect_read(left(t), &conv, "alice").await,
            3,
            "{name}: alice's read over HTTP"
        );
    }

    // Reads that move nothing (backward, equal), then one that moves: the next read
    // frame anyone gets for alice is the last one.
    http.send_to(&tok("bob", "b1"), "alice", None, json!(4))
        .await;
    read_frame(&mut devices[0].1, &conv, 1).await;
    http.mark_read(&tok("alice", "a1"), &conv, 3)
        .await
        .assert_ok();
    let t = Instant::now();
    read_frame(&mut devices[1].1, &conv, 4).await;
    for (name, ws) in devices.iter_mut() {
        assert_eq!(
            ws.expect_read(left(t), &conv, "alice").await,
            4,
            "{name}: reads that moved nothing sent nothing"
        );
    }

    carol.ping_pong().await;
    let heard = reads_in(&carol.take_pending());
    assert!(heard.is_empty(), "a non-member heard reads: {heard:?}");
}

/// In a group, a read reaches only the reader's own devices; the other members learn
/// positions from the conversation's detail.
#[tokio::test]
async fn in_a_group_a_read_reaches_only_the_readers_devices() {
    let imd = start(&[]);
    let http = imd.http();
    http.put_group(ADMIN, "team", &["ga", "gb", "gc"]).await;
    let mut ga1 = imd.ws(&tok("ga", "1")).await;
    let mut ga2 = imd.ws(&tok("ga", "2")).await;
    let mut gb = imd.ws(&tok("gb", "1")).await;
    let mut gc = imd.ws(&tok("gc", "1")).await;
    http.send_in(&tok("gb", "1"), "g:team", json!("one")).await;
    http.send_in(&tok("gb", "1"), "g:team", json!("two")).await;

    let t = Instant::now();
    read_frame(&mut ga1, "g:team", 2).await;
    assert_eq!(ga1.expect_read(left(t), "g:team", "ga").await, 2, "ga1");
    assert_eq!(ga2.expect_read(left(t), "g:team", "ga").await, 2, "ga2");
    let (b, c) = tokio::join!(gb.frames_for(LIVE), gc.frames_for(LIVE));
    for (name, frames) in [("gb", b), ("gc", c)] {
        let ga_reads: Vec<_> = reads_in(&frames)
            .into_iter()
            .filter(|(_, uid, _)| uid == "ga")
            .collect();
        assert!(
            ga_reads.is_empty(),
            "{name} heard ga's read in a group: {ga_reads:?}"
        );
    }

    let d = detail(&http, &tok("gc", "1"), "g:team").await;
    assert_eq!(d.kind, ConvKind::Group);
    assert_eq!(d.read.get("ga"), Some(&2), "{d:?}");
    assert_eq!(d.read.get("gb"), Some(&2), "gb read by sending: {d:?}");
    assert_eq!(d.read.get("gc").copied().unwrap_or(0), 0, "{d:?}");
    assert_eq!(d.last_seq, 2);
    let list = http.conversation_list(&tok("gc", "1"), "").await;
    let e = entry_of(&list, "g:team");
    assert_eq!(
        (e.read_seq, e.unread, e.peer_read_seq),
        (0, 2, None),
        "{e:?}"
    );
}

/// Reads on one device show on the user's other device: its conversation list, read
/// over HTTP with its own token, has the new read position and unread count.
#[tokio::test]
async fn a_second_device_sees_the_unread_count_after_reads_on_the_first() {
    let imd = start(&[]);
    let http = imd.http();
    let conv = direct_conv("alice", "bob");
    let (phone, laptop) = (tok("alice", "phone"), tok("alice", "laptop"));
    let mut a1 = imd.ws(&phone).await;
    let mut a2 = imd.ws(&laptop).await;
    for i in 1..=5 {
        http.send_to(&tok("bob", "b"), "alice", None, json!(i))
            .await;
    }
    let unread = |token: &str| {
        let (http, conv, token) = (&http, &conv, token.to_owned());
        async move {
            let list = http.conversation_list(&token, "").await;
            let e = entry_of(&list, conv);
            (e.read_seq, e.unread)
        }
    };
    assert_eq!(unread(&laptop).await, (0, 5), "before any read");

    let t = Instant::now();
    read_frame(&mut a1, &conv, 3).await;
    assert_eq!(a2.expect_read(left(t), &conv, "alice").await, 3);
    assert_eq!(
        unread(&laptop).await,
        (3, 2),
        "the laptop's list after the phone read 3 of 5"
    );

    let t = Instant::now();
    http.mark_read(&phone, &conv, 5).await.assert_ok();
    assert_eq!(a2.expect_read(left(t), &conv, "alice").await, 5);
    assert_eq!(unread(&laptop).await, (5, 0), "after the phone read all");

    http.send_to(&tok("bob", "b"), "alice", None, json!(6))
        .await;
    assert_eq!(unread(&laptop).await, (5, 1), "one new");
    let bobs = http.conversation_list(&tok("bob", "b"), "").await;
    assert_eq!(entry_of(&bobs, &conv).peer_read_seq, Some(5));
}

/// Sending moves the sender's read position to the new message's seq, so their own
/// messages are never unread, and what came before is read too; in a group as well.
#[tokio::test]
async fn sending_moves_the_senders_read_position_to_the_new_message() {
    let imd = start(&[]);
    let http = imd.http();
    let conv = direct_conv("alice", "bob");
    let (alice, bob) = (tok("alice", "a"), tok("bob", "b"));
    http.send_to(&bob, "alice", None, json!(1)).await;
    http.send_to(&bob, "alice", None, json!(2)).await;
    let list = http.conversation_list(&alice, "").await;
    let e = entry_of(&list, &conv);
    assert_eq!((e.read_seq, e.unread), (0, 2), "{e:?}");

    let mine = http.send_to(&alice, "bob", None, json!("hi")).await;
    assert_eq!(mine.seq, 3);
    let list = http.conversation_list(&alice, "").await;
    let e = entry_of(&list, &conv);
    assert_eq!((e.read_seq, e.unread), (3, 0), "after alice sent: {e:?}");
    let list = http.conversation_list(&bob, "").await;
    let e = entry_of(&list, &conv);
    assert_eq!(
        (e.read_seq, e.unread, e.peer_read_seq),
        (2, 1, Some(3)),
        "bob's side: {e:?}"
    );

    // Over WebSocket, in a group.
    http.put_group(ADMIN, "team", &["ga", "gb", "gc"]).await;
    http.send_in(&tok("gb", "1"), "g:team", json!("one")).await;
    http.send_in(&tok("gb", "1"), "g:team", json!("two")).await;
    let mut ga = imd.ws(&tok("ga", "1")).await;
    ga.send_json(&json!({"type": "send", "cid": "x", "conv": "g:team", "body": "three"}))
        .await;
    assert_eq!(ga.expect_sent("x").await.seq, 3);
    let list = http.conversation_list(&tok("ga", "1"), "").await;
    let e = entry_of(&list, "g:team");
    assert_eq!((e.read_seq, e.unread), (3, 0), "ga after sending: {e:?}");
    let list = http.conversation_list(&tok("gc", "1"), "").await;
    let e = entry_of(&list, "g:team");
    assert_eq!((e.read_seq, e.unread), (0, 3), "gc read nothing: {e:?}");
}

/// A member added to a group starts at the group's last seq: what was said before
/// does not count as unread; what comes after does.
#[tokio::test]
async fn a_member_added_to_a_group_starts_with_nothing_unread() {
    let imd = start(&[]);
    let http = imd.http();
    http.put_group(ADMIN, "team", &["ga", "gb"]).await;
    for i in 0..3 {
        http.send_in(&tok("gb", "1"), "g:team", json!(i)).await;
    }
    http.put_group(ADMIN, "team", &["ga", "gb", "gd"]).await;
    let after = http
        .send_in(&tok("gb", "1"), "g:team", json!("welcome"))
        .await;
    assert_eq!(after.seq, 4);
    let list = http.conversation_list(&tok("gd", "1"), "").await;
    let e = entry_of(&list, "g:team");
    assert_eq!(
        (e.read_seq, e.unread),
        (3, 1),
        "gd joined at seq 3, then one message: {e:?}"
    );
    let list = http.conversation_list(&tok("ga", "1"), "").await;
    let e = entry_of(&list, "g:team");
    assert_eq!(
        (e.read_seq, e.unread),
        (0, 4),
        "ga was there all along: {e:?}"
    );
}

// ---------------------------------------------------------------------------------
// Typing and presence

/// A member's `typing` reaches the other members' devices within 1 s as
/// `{"type":"typing","conv","uid"}`; a non-member gets `forbidden` and others hear
/// nothing of it; a burst of 20 is cut to about one a second, silently; nothing of it
/// is stored.
#[tokio::test]
async fn typing_reaches_the_other_members_and_a_flood_is_cut() {
    let imd = start(&[]);
    let http = imd.http();
    let conv = direct_conv("alice", "bob");
    http.put_group(ADMIN, "pair", &["alice", "bob"]).await;
    let mut a1 = imd.ws(&tok("alice", "a1")).await;
    let mut b1 = imd.ws(&tok("bob", "b1")).await;
    let mut b2 = imd.ws(&tok("bob", "b2")).await;
    let mut carol = imd.ws(&tok("carol", "c1")).await;
    // A direct conversation that nobody wrote in is nobody's: typing into it reaches
    // no one (it would tell a stranger that someone is there).
    let mut zed = imd.ws(&tok("zed", "z1")).await;
    let stranger = direct_conv("alice", "zed");
    a1.send_json(&json!({"type": "typing", "conv": stranger}))
        .await;
    let frames = zed.frames_for(Duration::from_millis(300)).await;
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Typing { .. })),
        "typing into an empty direct conversation went through: {frames:?}"
    );
    http.send_to(&tok("alice", "a1"), "bob", None, json!("hi"))
        .await;

    let t = Instant::now();
    a1.send_json(&json!({"type": "typing", "conv": conv})).await;
    b1.expect_typing(left(t), &conv, "alice").await;
    b2.expect_typing(left(t), &conv, "alice").await;

    carol
        .send_json(&json!({"type": "typing", "conv": conv}))
        .await;
    assert_eq!(carol.expect_error().await, (None, ErrorCode::Forbidden));
    let frames = b1.frames_for(Duration::from_millis(300)).await;
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Typing { uid, .. } if uid == "carol")),
        "a non-member's typing went through: {frames:?}"
    );

    // A burst in a conversation with no typing yet: far fewer than 20 get through, and
    // at least the first.
    for _ in 0..20 {
        a1.send_json(&json!({"type": "typing", "conv": "g:pair"}))
            .await;
    }
    let frames = b1.frames_for(Duration::from_millis(1500)).await;
    let typing = frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Typing { conv, uid } if conv == "g:pair" && uid == "alice"))
        .count();
    assert!(
        (1..=2).contains(&typing),
        "20 typing frames in a burst gave bob {typing}: {frames:?}"
    );
    expect_no_error("a1 after the burst", &mut a1).await;

    let inbox = http.sync_all(&tok("bob", "b1"), 0, 100).await;
    assert_eq!(
        inbox.iter().map(|i| i.msg.seq).collect::<Vec<_>>(),
        [1],
        "typing is not stored: {inbox:?}"
    );
}

/// Presence answers only for asked users who share a conversation with the caller (a
/// direct one with a message, a common group, a service conversation both are members
/// of), online while any device is connected, with `last_seen` only in the past; others
/// are left out. Over 100 uids is `bad_request`.
#[tokio::test]
async fn presence_answers_for_contacts_only_and_follows_connections() {
    let imd = start(&[]);
    let http = imd.http();
    let t0 = now_ms();
    let alice = tok("alice", "a");
    http.put_group(ADMIN, "team", &["alice", "carol"]).await;
    http.put_group(ADMIN, "others", &["frank", "gina"]).await;
    http.put_shop_agents(ADMIN, "shop", &["ag1", "ag2"]).await;
    let mut bob = imd.ws(&tok("bob", "b")).await;
    let carol = imd.ws(&tok("carol", "c")).await;
    let _dave = imd.ws(&tok("dave", "d")).await;
    let _frank = imd.ws(&tok("frank", "f")).await;
    let _ag1 = imd.ws(&tok("ag1", "d")).await;
    http.send_to(&alice, "bob", None, json!("hi")).await;
    http.send_to_shop(&alice, "shop", json!("help")).await;
    assigned_event(&http, &alice, &service_conv("shop", "alice"), "ag1", 1).await;
    // ag2 connects after the assignment: an agent of the shop, but not of alice's
    // conversation.
    let _ag2 = imd.ws(&tok("ag2", "d")).await;
    carol.close().await;

    let presence = |uids: Vec<&'static str>| {
        let (http, alice) = (&http, &alice);
        async move {
            let resp = http.presence(alice, &uids).await;
            let p: PresenceResponse = serde_json::from_value(resp.assert_ok().clone())
                .unwrap_or_else(|e| panic!("bad presence answer ({e}): {}", resp.body));
            p
        }
    };
    wait_until(FRAME_DEADLINE, "carol to be offline", || async {
        presence(vec!["carol"])
            .await
            .users
            .iter()
            .any(|u| u.uid == "carol" && !u.online)
    })
    .await;

    let asked = vec!["bob", "carol", "ag1", "ag2", "dave", "frank", "nobody"];
    let p = presence(asked).await;
    let got: BTreeSet<&str> = p.users.iter().map(|u| u.uid.as_str()).collect();
    assert_eq!(
        got,
        BTreeSet::from(["bob", "carol", "ag1"]),
        "only contacts: {p:?}"
    );
    let user = |uid: &str| p.users.iter().find(|u| u.uid == uid).expect("listed");
    assert!(user("bob").online, "{p:?}");
    assert!(user("ag1").online, "{p:?}");
    let c = user("carol");
    assert!(!c.online, "{p:?}");
    if let Some(seen) = c.last_seen {
        assert!(
            (t0..=now_ms()).contains(&seen),
            "carol's last_seen {seen} is not since the test began ({t0}): {p:?}"
        );
    }

    bob.ping_pong().await;
    bob.close().await;
    wait_until(FRAME_DEADLINE, "bob to be offline", || async {
        presence(vec!["bob"]).await.users.first().map(|u| u.online) == Some(false)
    })
    .await;
    let _bob = imd.ws(&tok("bob", "b2")).await;
    wait_until(FRAME_DEADLINE, "bob to be online again", || async {
        presence(vec!["bob"]).await.users.first().map(|u| u.online) == Some(true)
    })
    .await;

    // The other way round: bob sees alice (offline: she never connected).
    let p = http.presence(&tok("bob", "b2"), &["alice", "carol"]).await;
    let p: PresenceResponse = serde_json::from_value(p.assert_ok().clone()).expect("presence");
    assert_eq!(p.users.len(), 1, "bob shares nothing with carol: {p:?}");
    assert_eq!(
        (p.users[0].uid.as_str(), p.users[0].online),
        ("alice", false)
    );

    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    http.presence(&alice, &many)
        .await
        .assert_error(400, ErrorCode::BadRequest);
    let p = http.presence(&alice, &many[..100]).await;
    assert_eq!(p.assert_ok(), &json!({"users": []}), "100 strangers");
    http.presence(&alice, &["bob", "not%20a%20uid"])
        .await
        .assert_error(400, ErrorCode::BadRequest);
    let anonymous = http.get("/v1/presence?uid=bob", None).await;
    anonymous.assert_error(401, ErrorCode::Unauthorized);
}

// ---------------------------------------------------------------------------------
// Recall

/// The sender recalls a message over HTTP and over WebSocket (answered `recalled`): a
/// `recalled` event message from the sender reaches every device through the inbox,
/// and history and sync show the original with `"recalled": true` and no body. A
/// device that was away sees both after it syncs.
#[tokio::test]
async fn a_recall_reaches_every_device_and_one_that_was_away_sees_it_after_syncing() {
    let imd = start(&[]);
    let http = imd.http();
    let conv = direct_conv("alice", "bob");
    let mut a1 = imd.ws(&tok("alice", "a1")).await;
    let mut b1 = imd.ws(&tok("bob", "b1")).await;
    let mut away = imd.ws(&tok("bob", "b2")).await;
    a1.send_to("bob", "c1", json!("my card number is 1234"))
        .await;
    let m1 = a1.expect_sent("c1").await;
    a1.send_to("bob", "c2", json!("oops")).await;
    let m2 = a1.expect_sent("c2").await;
    let (_, got) = away.push_where("m1", |m| m.id == m1.id).await;
    assert_eq!(got, m1);
    let (seen, _) = away.push_where("m2", |m| m.id == m2.id).await;
    away.close().await;

    let resp = http.recall(&tok("alice", "a1"), &conv, m1.seq, false).await;
    assert_eq!(resp.assert_ok(), &json!({"conv": conv, "seq": m1.seq}));
    let mut events = Vec::new();
    for (name, ws) in [("a1", &mut a1), ("b1", &mut b1)] {
        let (_, ev) = ws
            .push_where("the recalled event", |m| m.event.is_some())
            .await;
        assert_eq!(
            event_of(&ev),
            &json!({"type": "recalled", "seq": m1.seq}),
            "{name}: {ev:?}"
        );
        assert_eq!(
            (ev.conv.as_str(), ev.from.as_str(), ev.seq),
            (conv.as_str(), "alice", 3),
            "{name}: {ev:?}"
        );
        events.push(ev);
    }
    assert_eq!(events[0], events[1], "one event message");
    let event = events.remove(0);

    let recalled = Message {
        body: None,
        recalled: true,
        ..m1.clone()
    };
    let hist = http.history_all(&tok("bob", "b1"), &conv).await;
    assert_eq!(
        hist,
        [recalled.clone(), m2.clone(), event.clone()],
        "history after the recall"
    );

    // The device that was away comes back.
    let mut back = imd.ws(&tok("bob", "b2")).await;
    let (items, more) = back.sync(seen, None).await;
    assert!(!more);
    assert_eq!(
        items.iter().map(|i| &i.msg).collect::<Vec<_>>(),
        [&event],
        "what the device missed: the event"
    );
    let (items, _) = back.sync(0, None).await;
    let msgs: Vec<Message> = items.into_iter().map(|i: InboxItem| i.msg).collect();
    assert_eq!(
        msgs,
        [recalled.clone(), m2.clone(), event.clone()],
        "the whole inbox, from the start"
    );
    let synced = http.sync(&tok("bob", "b2"), 0, None).await;
    assert_eq!(synced.msgs[0].msg, recalled, "HTTP sync shows it recalled");

    // Over WebSocket.
    a1.send_json(&json!({"type": "recall", "conv": conv, "seq": m2.seq}))
        .await;
    let answer = a1
        .next_matching(FRAME_DEADLINE, "recalled", |f| {
            matches!(f, ServerFrame::Recalled { .. })
        })
        .await;
    assert_eq!(
        answer,
        ServerFrame::Recalled {
            conv: conv.clone(),
            seq: m2.seq
        }
    );
    let (_, ev2) = back
        .push_where("the second recalled event", |m| {
            m.event.as_ref().is_some_and(|e| e["seq"] == m2.seq)
        })
        .await;
    assert_eq!(event_of(&ev2), &json!({"type": "recalled", "seq": m2.seq}));
    let hist = http.history_all(&tok("alice", "a1"), &conv).await;
    let shown: Vec<(u64, bool, bool)> = hist
        .iter()
        .map(|m| (m.seq, m.recalled, m.body.is_some()))
        .collect();
    assert_eq!(
        shown,
        [
            (1, true, false),
            (2, true, false),
            (3, false, false),
            (4, false, false)
        ],
        "(seq, recalled, has body) after both recalls"
    );
    let list = http.conversation_list(&tok("bob", "b1"), "").await;
    assert_eq!(
        entry_of(&list, &conv).last,
        ev2,
        "the last message is the event"
    );
}

/// Recall is refused (403 `forbidden`) for another user's message, for a non-member
/// and past `--recall-window`; an unknown seq is 404. The same as `error` frames over
/// WebSocket. Nothing refused is recalled.
#[tokio::test]
async fn recall_is_refused_for_others_messages_outsiders_unknown_seqs_and_late_ones() {
    let imd = start(&["--recall-window", "2s"]);
    let http = imd.http();
    let conv = direct_conv("alice", "bob");
    let (alice, bob, carol) = (tok("alice", "a"), tok("bob", "b"), tok("carol", "c"));
    let m1 = http.send_to(&alice, "bob", None, json!("hello")).await;

    http.recall(&bob, &conv, m1.seq, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.recall(&carol, &conv, m1.seq, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    http.recall(&alice, &conv, 99, false)
        .await
        .assert_error(404, ErrorCode::NotFound);
    let mut b = imd.ws(&bob).await;
    b.send_json(&json!({"type": "recall", "conv": conv, "seq": m1.seq}))
        .await;
    assert_eq!(b.expect_error().await, (None, ErrorCode::Forbidden));
    let mut a = imd.ws(&alice).await;
    a.send_json(&json!({"type": "recall", "conv": conv, "seq": 99}))
        .await;
    assert_eq!(a.expect_error().await, (None, ErrorCode::NotFound));
    let mut c = imd.ws(&carol).await;
    c.send_json(&json!({"type": "recall", "conv": conv, "seq": m1.seq}))
        .await;
    assert_eq!(c.expect_error().await, (None, ErrorCode::Forbidden));

    // Within the window the sender may.
    let m2 = http.send_to(&alice, "bob", None, json!("typo")).await;
    http.recall(&alice, &conv, m2.seq, false).await.assert_ok();
    // Again: answered as the first time, and nothing more is committed (see the
    // history's length below).
    let again = http.recall(&alice, &conv, m2.seq, false).await;
    assert_eq!(
        again.assert_ok(),
        &json!({"conv": conv, "seq": m2.seq}),
        "a second recall of m2"
    );
    // The recall's event message (seq 3, from alice) cannot be recalled.
    http.recall(&alice, &conv, 3, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);

    // Past it, not any more.
    wait_until(
        Duration::from_secs(5),
        "m1 to be older than 2 s",
        || async { now_ms() > m1.ts + 2_100 },
    )
    .await;
    http.recall(&alice, &conv, m1.seq, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);
    a.send_json(&json!({"type": "recall", "conv": conv, "seq": m1.seq}))
        .await;
    assert_eq!(a.expect_error().await, (None, ErrorCode::Forbidden));

    let hist = http.history_all(&bob, &conv).await;
    assert_eq!(hist[0], m1, "m1 is intact");
    assert!(hist[1].recalled && hist[1].body.is_none(), "{:?}", hist[1]);
    assert_eq!(hist.len(), 3, "one recall, one event: {hist:?}");
}

/// `IMD_RECALL_WINDOW` sets the window as the flag does.
#[tokio::test]
async fn the_recall_window_comes_from_the_environment_too() {
    let imd = Imd::builder()
        .args(["--token-secret", SECRET, "--admin-token", ADMIN])
        .env("IMD_RECALL_WINDOW", "1s")
        .start();
    let http = imd.http();
    let conv = direct_conv("alice", "bob");
    let alice = tok("alice", "a");
    let m1 = http.send_to(&alice, "bob", None, json!("one")).await;
    let m2 = http.send_to(&alice, "bob", None, json!("two")).await;
    http.recall(&alice, &conv, m2.seq, false).await.assert_ok();
    wait_until(
        Duration::from_secs(5),
        "m1 to be older than 1 s",
        || async { now_ms() > m1.ts + 1_100 },
    )
    .await;
    http.recall(&alice, &conv, m1.seq, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);
}

/// The admin recalls any message at any time (past the window, someone else's): the
/// event says `"by": "admin"`. An unknown seq is 404; a client token is refused (403, as on all of the admin API).
#[tokio::test]
async fn the_admin_recalls_any_message_at_any_time() {
    let imd = start(&["--recall-window", "1s"]);
    let http = imd.http();
    let conv = direct_conv("alice", "bob");
    let mut a = imd.ws(&tok("alice", "a")).await;
    let m1 = http
        .send_to(&tok("bob", "b"), "alice", None, json!("spam"))
        .await;
    wait_until(
        Duration::from_secs(5),
        "m1 to be older than 1 s",
        || async { now_ms() > m1.ts + 1_100 },
    )
    .await;
    http.recall(&tok("bob", "b"), &conv, m1.seq, false)
        .await
        .assert_error(403, ErrorCode::Forbidden);

    let resp = http.recall(ADMIN, &conv, m1.seq, true).await;
    assert_eq!(resp.assert_ok(), &json!({"conv": conv, "seq": m1.seq}));
    let (_, ev) = a
        .push_where("the recalled event", |m| m.event.is_some())
        .await;
    assert_eq!(
        event_of(&ev),
        &json!({"type": "recalled", "seq": m1.seq, "by": "admin"})
    );
    let hist = http.history_all(&tok("alice", "a"), &conv).await;
    assert_eq!(hist.len(), 2, "{hist:?}");
    assert!(hist[0].recalled && hist[0].body.is_none(), "{:?}", hist[0]);
    assert_eq!(hist[1], ev);

    http.recall(ADMIN, &conv, 99, true)
        .await
        .assert_error(404, ErrorCode::NotFound);
    http.recall(&tok("alice", "a"), &conv, 1, true)
        .await
        .assert_error(403, ErrorCode::Forbidden);
}

// ---------------------------------------------------------------------------------
// Event messages of a service conversation

/// A service conversation's history holds an `assigned` event (from the agent, no
/// body) after the message that caused each assignment: the first message, an admin
/// transfer, the first message after a close; and a `closed` event on an admin close.
/// The customer's device gets them pushed. Event messages are never unread; the detail
/// shows the agent, whether it is open, the members and their positions.
#[tokio::test]
async fn assigned_and_closed_events_are_messages_of_the_service_conversation() {
    let imd = start(&[]);
    let http = imd.http();
    http.put_shop_agents(ADMIN, "shop", &["ag1", "ag2"]).await;
    let _agents = [
        imd.ws(&tok("ag1", "d")).await,
        imd.ws(&tok("ag2", "d")).await,
    ];
    let cust = tok("cust", "phone");
    let mut phone = imd.ws(&cust).await;
    let conv = service_conv("shop", "cust");

    let m1 = http.send_to_shop(&cust, "shop", json!("hello?")).await;
    let (_, pushed) = phone
        .push_where("the assigned event", |m| is_event(m, "assigned"))
        .await;
    let first = pushed.from.clone();
    assert!(["ag1", "ag2"].contains(&first.as_str()), "{pushed:?}");
    assert_eq!(event_of(&pushed)["agent"], first.as_str(), "{pushed:?}");
    assert_eq!(
        pushed.seq,
        m1.seq + 1,
        "right after the message: {pushed:?}"
    );
    let other = if first == "ag1" { "ag2" } else { "ag1" };
    assert_eq!(
        http.history_all(&cust, &conv).await,
        [m1.clone(), pushed.clone()],
        "history: the message, then its assignment"
    );

    let d = detail(&http, &cust, &conv).await;
    assert_eq!(d.kind, ConvKind::Service);
    assert_eq!(d.agent.as_deref(), Some(first.as_str()), "{d:?}");
    assert_eq!(d.open, Some(true), "{d:?}");
    assert_eq!(d.queue_position, None, "assigned, not waiting: {d:?}");
    let members: BTreeSet<&str> = d.members.iter().map(String::as_str).collect();
    assert_eq!(members, BTreeSet::from(["cust", first.as_str()]), "{d:?}");
    assert_eq!(d.read.get("cust"), Some(&1), "{d:?}");
    assert_eq!(d.last_seq, 2, "{d:?}");
    http.conversation(&tok("eve", "x"), &conv)
        .await
        .assert_error(403, ErrorCode::Forbidden);

    // The agent answers: the customer has one unread, the event not counted.
    let reply = http
        .send_in(&tok(&first, "d"), &conv, json!("how can I help?"))
        .await;
    assert_eq!(reply.seq, 3);
    let list = http.conversation_list(&cust, "").await;
    let e = entry_of(&list, &conv);
    assert_eq!(
        (e.read_seq, e.unread, e.peer_read_seq),
        (1, 1, Some(3)),
        "the customer's entry: {e:?}"
    );
    let list = http.conversation_list(&tok(&first, "d"), "").await;
    let e = entry_of(&list, &conv);
    assert_eq!(
        (e.read_seq, e.unread, e.peer_read_seq),
        (3, 0, Some(1)),
        "the agent's entry: {e:?}"
    );

    // An admin transfer assigns the other agent.
    let path = |what: &str| format!("/admin/v1/conversations/{}/{what}", encode_path(&conv));
    http.post_json(&path("transfer"), Some(ADMIN), &json!({"agent": other}))
        .await
        .assert_ok();
    let transferred = assigned_event(&http, &cust, &conv, other, reply.seq).await;
    assert_eq!(transferred.seq, 4, "{transferred:?}");
    let (_, pushed) = phone
        .push_where("the transfer's event", |m| m.seq == 4)
        .await;
    assert_eq!(pushed, transferred);

    // The admin closes it.
    http.post_json(&path("close"), Some(ADMIN), &json!({}))
        .await
        .assert_ok();
    let (_, closed) = phone
        .push_where("the closed event", |m| is_event(m, "closed"))
        .await;
    assert_eq!(event_of(&closed), &json!({"type": "closed"}));
    assert_eq!(closed.seq, 5, "{closed:?}");
    let list = http.conversation_list(&cust, "").await;
    let e = entry_of(&list, &conv);
    assert_eq!(e.last, closed, "the closed event is the last message");
    assert_eq!((e.read_seq, e.unread), (1, 1), "events never count: {e:?}");
    let d = detail(&http, &cust, &conv).await;
    assert_eq!(d.open, Some(false), "{d:?}");

    // The customer's next message opens it again with an assignment.
    let m6 = http
        .send_to_shop(&cust, "shop", json!("one more thing"))
        .await;
    assert_eq!(m6.seq, 6);
    let hist = http.history_all(&cust, &conv).await;
    let again = hist
        .iter()
        .find(|m| m.seq > 6 && is_event(m, "assigned"))
        .unwrap_or_else(|| panic!("no assigned event after the reopening message: {hist:?}"));
    assert_eq!(again.seq, 7, "{hist:?}");
    let kinds: Vec<Option<&str>> = hist
        .iter()
        .map(|m| m.event.as_ref().and_then(|e| e["type"].as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            None,
            Some("assigned"),
            None,
            Some("assigned"),
            Some("closed"),
            None,
            Some("assigned")
        ],
        "the history's messages and events"
    );
}

/// A conversation that waits for an agent has no assignment event and shows its queue
/// position; the agent who connects gets it, with an `assigned` event; when that agent
/// goes offline the customer's next message is reassigned, with another one.
#[tokio::test]
async fn waiting_and_reassigned_conversations_get_assigned_events() {
    let imd = start(&[]);
    let http = imd.http();
    http.put_shop_agents(ADMIN, "shop", &["ag1", "ag2"]).await;
    let cust = tok("cust", "phone");
    let conv = service_conv("shop", "cust");

    let m1 = http.send_to_shop(&cust, "shop", json!("anyone?")).await;
    assert_eq!(
        http.history_all(&cust, &conv).await,
        std::slice::from_ref(&m1),
        "nobody online: no assignment yet"
    );
    let d = detail(&http, &cust, &conv).await;
    assert_eq!((d.agent.as_deref(), d.open), (None, Some(true)), "{d:?}");
    assert_eq!(d.queue_position, Some(1), "first in the queue: {d:?}");

    let ag1 = imd.ws(&tok("ag1", "d")).await;
    let a1 = assigned_event(&http, &cust, &conv, "ag1", m1.seq).await;
    assert_eq!(a1.seq, 2);
    let d = detail(&http, &cust, &conv).await;
    assert_eq!(d.agent.as_deref(), Some("ag1"), "{d:?}");
    assert_eq!(d.queue_position, None, "{d:?}");

    // ag1 leaves; ag2 is online; the next message goes to ag2.
    let _ag2 = imd.ws(&tok("ag2", "d")).await;
    ag1.close().await;
    wait_until(FRAME_DEADLINE, "ag1 to be offline", || async {
        let v = http.get("/admin/v1/connections?uid=ag1", Some(ADMIN)).await;
        v.assert_ok()["connections"] == json!([])
    })
    .await;
    let m3 = http
        .send_to_shop(&cust, "shop", json!("still there?"))
        .await;
    let a2 = assigned_event(&http, &cust, &conv, "ag2", m3.seq).await;
    assert_eq!(a2.seq, m3.seq + 1, "right after the message that caused it");
}

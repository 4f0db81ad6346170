//! The session driven over channels: frames in, frames out, with a real embedded store
//! behind the business layer.

use super::*;
use crate::worker::Hub;

fn settings() -> SessionSettings {
    SessionSettings {
        ack_timeout: Duration::from_millis(100),
        ack_retries: 2,
        idle_timeout: Duration::from_secs(3),
        ping_interval: Duration::from_secs(1),
        max_unacked: 8,
        max_unacked_bytes: 1 << 20,
        write_timeout: Duration::from_secs(1),
    }
}

fn state(now: Instant) -> State {
    State {
        last_recv: now,
        last_ping: now,
        check_at: now,
        unacked: BTreeMap::new(),
        unacked_bytes: 0,
        reorder: Reorder::default(),
    }
}

fn texts(frames: &[Message]) -> usize {
    frames
        .iter()
        .filter(|m| matches!(m, Message::Text(_)))
        .count()
}

#[test]
fn retransmits_retries_times_then_gives_up() {
    let s = settings();
    let t0 = Instant::now();
    let mut st = state(t0);
    st.unacked.insert(
        1,
        Unacked {
            frame: "p".into(),
            deadline: t0 + s.ack_timeout,
            sends: 1,
        },
    );
    st.unacked_bytes = 1;
    let ms = |n| t0 + Duration::from_millis(n);
    assert_eq!(
        texts(&on_tick(ms(50), &mut st, &s).ok().unwrap()),
        0,
        "not due yet"
    );
    assert_eq!(
        texts(&on_tick(ms(100), &mut st, &s).ok().unwrap()),
        1,
        "first resend"
    );
    assert_eq!(texts(&on_tick(ms(150), &mut st, &s).ok().unwrap()), 0);
    assert_eq!(
        texts(&on_tick(ms(200), &mut st, &s).ok().unwrap()),
        1,
        "second resend"
    );
    assert_eq!(st.unacked.len(), 1);
    assert_eq!(
        texts(&on_tick(ms(300), &mut st, &s).ok().unwrap()),
        0,
        "given up"
    );
    assert!(st.unacked.is_empty());
    assert_eq!(st.unacked_bytes, 0, "its bytes no longer count");
}

#[test]
fn pings_on_interval_and_closes_when_idle() {
    let s = settings();
    let t0 = Instant::now();
    let mut st = state(t0);
    let frames = on_tick(t0 + Duration::from_millis(999), &mut st, &s)
        .ok()
        .unwrap();
    assert!(frames.is_empty());
    let frames = on_tick(t0 + Duration::from_secs(1), &mut st, &s)
        .ok()
        .unwrap();
    assert!(matches!(frames.as_slice(), [Message::Ping(_)]));
    assert!(matches!(
        on_tick(t0 + Duration::from_secs(3), &mut st, &s),
        Err(End::Kick(reason, _)) if reason == "idle"
    ));
}

/// A socket made of two channels: the test plays the client on the other ends.
struct TestSocket {
    incoming: tokio::sync::mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    outgoing: tokio::sync::mpsc::UnboundedSender<Message>,
}

impl Stream for TestSocket {
    type Item = Result<Message, axum::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx)
    }
}

impl Sink<Message> for TestSocket {
    type Error = axum::Error;
    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn start_send(self: std::pin::Pin<&mut Self>, m: Message) -> Result<(), axum::Error> {
        self.outgoing.send(m).map_err(axum::Error::new)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), axum::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The client's end of a [`TestSocket`].
struct Client {
    to_server: tokio::sync::mpsc::UnboundedSender<Result<Message, axum::Error>>,
    from_server: tokio::sync::mpsc::UnboundedReceiver<Message>,
}

impl Client {
    fn send(&self, v: serde_json::Value) {
        self.to_server
            .send(Ok(Message::Text(v.to_string().into())))
            .unwrap();
    }

    /// The next text frame, skipping pings; `None` once the session closed.
    async fn next(&mut self) -> Option<serde_json::Value> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.from_server.recv())
                .await
                .expect("no frame within 5 s")?;
            match m {
                Message::Text(t) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(c) => {
                    return Some(serde_json::json!({"close": c.map(|c| c.code)}));
                }
                _ => {}
            }
        }
    }
}

struct Rig {
    ctx: Arc<SessionCtx>,
    /// The store under `ctx`: what is committed here is in the inboxes, unpushed.
    store: Arc<crate::store::EmbeddedStore>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::EmbeddedStore::open(dir.path()).unwrap());
    let blacklist = Arc::new(crate::business::blacklist::Blacklist::new());
    let hub = Arc::new(Hub::new(64, "n1".into(), blacklist.clone()));
    let dispatcher = Arc::new(crate::dispatch::Direct::new(hub.clone()));
    let stop = CancellationToken::new();
    let off = crate::business::limits::Rate {
        per_second: 0,
        burst: 0,
    };
    let deps = crate::business::messaging::Deps {
        store: store.clone(),
        dir: store.clone(),
        presence: hub.clone(),
        deliver: dispatcher,
        blacklist,
        words: Arc::new(
            crate::business::words::Words::load(None, crate::config::WordsPolicy::Mask).unwrap(),
        ),
        limits: Arc::new(crate::business::limits::Limits::new(off, off)),
        recall_window: std::time::Duration::from_secs(120),
        before_send: None,
    };
    let (messaging, _) = Messaging::start(deps, 64, 1, CancellationToken::new());
    let ctx = Arc::new(SessionCtx {
        hub,
        messaging,
        // Long enough that an ack sent at once always beats the resend.
        settings: SessionSettings {
            ack_timeout: Duration::from_millis(500),
            ..settings()
        },
        clock: Clock::start(Duration::from_millis(20), stop.clone()),
        shutdown: stop.clone(),
    });
    Rig {
        ctx,
        store,
        stop,
        _dir: dir,
    }
}

fn connect(rig: &Rig, uid: &str, device: &str) -> (Client, tokio::task::JoinHandle<()>) {
    connect_after(rig, uid, device, None)
}

/// [`connect`], as if the inbox head was `inbox_head` when the route was written.
fn connect_after(
    rig: &Rig,
    uid: &str,
    device: &str,
    inbox_head: Option<u64>,
) -> (Client, tokio::task::JoinHandle<()>) {
    let (to_server, incoming) = tokio::sync::mpsc::unbounded_channel();
    let (outgoing, from_server) = tokio::sync::mpsc::unbounded_channel();
    let who = crate::business::Identity {
        uid: uid.into(),
        device: device.into(),
        platform: shared::token::Platform::Web,
        roles: vec![],
        ip: None,
    };
    let conn = rig.ctx.hub.register(who, "127.0.0.1:9".parse().unwrap(), 0);
    if let Some(head) = inbox_head {
        conn.start_after(head);
    }
    let task = tokio::spawn(run(
        TestSocket { incoming, outgoing },
        conn,
        rig.ctx.clone(),
    ));
    (
        Client {
            to_server,
            from_server,
        },
        task,
    )
}

#[tokio::test]
async fn send_reaches_every_device_and_ack_stops_resends() {
    let rig = rig();
    let (mut a, _) = connect(&rig, "alice", "phone");
    let (mut b1, _) = connect(&rig, "bob", "phone");
    let (mut b2, _) = connect(&rig, "bob", "laptop");
    a.send(serde_json::json!({"type": "send", "cid": "c1", "to": "bob", "body": "hi"}));

    // The sender hears `sent` and gets its own push, in either order.
    let mut kinds = vec![];
    for _ in 0..2 {
        let f = a.next().await.unwrap();
        kinds.push(f["type"].as_str().unwrap().to_owned());
        if f["type"] == "sent" {
            assert_eq!(f["cid"], "c1");
            assert_eq!(f["msg"]["seq"], 1);
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["msg", "sent"]);
    for b in [&mut b1, &mut b2] {
        let f = b.next().await.unwrap();
        assert_eq!(
            (f["type"].as_str(), f["useq"].as_u64()),
            (Some("msg"), Some(1))
        );
        assert_eq!(f["msg"]["body"], "hi");
    }
    // b1 acks; b2 does not and gets the push again after the ack timeout.
    b1.send(serde_json::json!({"type": "ack", "useqs": [1]}));
    let again = b2.next().await.unwrap();
    assert_eq!(
        (again["type"].as_str(), again["useq"].as_u64()),
        (Some("msg"), Some(1))
    );
    // b1 proves it is still served, and got nothing but the pong.
    b1.send(serde_json::json!({"type": "ping"}));
    assert_eq!(b1.next().await.unwrap()["type"], "pong");
    // The listing's per-device count: b1 acked, b2 did not.
    let unacked = |device: &str| {
        let conns = rig.ctx.hub.devices("bob");
        let c = conns.iter().find(|c| c.who.device == device).unwrap();
        c.unacked.load(Ordering::Relaxed)
    };
    assert_eq!(unacked("phone"), 0);
    assert_eq!(unacked("laptop"), 1);
    assert_eq!(
        rig.ctx.hub.stats.unacked.load(Ordering::Relaxed),
        2,
        "b2 and alice's own push"
    );
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_session_goes_on() {
    let rig = rig();
    let (mut a, _) = connect(&rig, "alice", "phone");
    a.to_server.send(Ok(Message::Text("{nope".into()))).unwrap();
    assert_eq!(a.next().await.unwrap()["code"], "bad_request");
    a.send(serde_json::json!({"type": "fly", "cid": "x1"}));
    let f = a.next().await.unwrap();
    assert_eq!(
        (f["code"].as_str(), f["cid"].as_str()),
        (Some("bad_request"), Some("x1"))
    );
    a.send(serde_json::json!({"type": "send", "cid": "x2", "body": 1}));
    let f = a.next().await.unwrap();
    assert_eq!(
        (f["code"].as_str(), f["cid"].as_str()),
        (Some("bad_request"), Some("x2"))
    );
    a.to_server
        .send(Ok(Message::Binary(bytes::Bytes::from_static(b"\x00"))))
        .unwrap();
    assert_eq!(a.next().await.unwrap()["code"], "bad_request");
    a.send(serde_json::json!({"type": "sync", "after": 0}));
    let f = a.next().await.unwrap();
    assert_eq!(
        (f["type"].as_str(), f["more"].as_bool()),
        (Some("synced"), Some(false))
    );
}

#[tokio::test]
async fn replaced_and_shutdown_sessions_are_kicked() {
    let rig = rig();
    let (mut first, task) = connect(&rig, "alice", "phone");
    let (mut second, _) = connect(&rig, "alice", "phone");
    assert_eq!(first.next().await.unwrap()["reason"], "replaced");
    assert_eq!(first.next().await.unwrap()["close"], close_code::NORMAL);
    task.await.unwrap();
    assert_eq!(rig.ctx.hub.len(), 1, "the replacement stays registered");

    rig.stop.cancel();
    assert_eq!(second.next().await.unwrap()["reason"], "shutdown");
    assert_eq!(second.next().await.unwrap()["close"], close_code::AWAY);
}

#[tokio::test]
async fn a_push_lost_on_the_way_is_read_from_the_inbox() {
    let rig = rig();
    let alice = crate::business::Identity {
        uid: "alice".into(),
        device: "a1".into(),
        platform: shared::token::Platform::Web,
        roles: vec![],
        ip: None,
    };
    // Three messages to bob while he is away: in his inbox, not pushed.
    for i in 1..=3 {
        let req = shared::protocol::SendRequest {
            cid: None,
            to: Some("bob".into()),
            conv: None,
            shop: None,
            body: serde_json::json!(i),
        };
        rig.ctx.messaging.send_and_wait(&alice, req).await.unwrap();
    }
    let (mut bob, _task) = connect(&rig, "bob", "b1");
    // Pushes 1 and 3 arrive (as from two nodes); 2 was lost with the node that
    // wrote it.
    let inbox = rig.ctx.messaging.inbox_range("bob", 0, 3, 3).await.unwrap();
    let push = |i: usize| crate::worker::Push {
        uid: "bob".into(),
        useq: inbox[i].0,
        msg: inbox[i].1.clone(),
    };
    rig.ctx.hub.push([push(0), push(2)]);
    let mut got = Vec::new();
    for _ in 0..3 {
        let f = bob.next().await.unwrap();
        assert_eq!(f["type"], "msg", "{f}");
        got.push((
            f["useq"].as_u64().unwrap(),
            f["msg"]["body"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        got,
        [(1, 1), (2, 2), (3, 3)],
        "in order, the gap read from the inbox"
    );
    rig.stop.cancel();
}

/// Commits a message from alice to bob straight into the store: in both inboxes,
/// pushed to nobody (as by a node that died right after writing it).
async fn commit_unpushed(rig: &Rig, body: u64) {
    use crate::store::{MessageStore, NewMessage, Op};
    let op = Op::Message(NewMessage {
        id: format!("m{body}"),
        conv: shared::ids::direct_conv("alice", "bob"),
        from: "alice".into(),
        cid: None,
        content: crate::store::Content::Body(serde_json::json!(body)),
        ts: 1,
        members: vec!["alice".into(), "bob".into()],
    });
    rig.store.commit(vec![op]).await.unwrap();
}

/// The next frame, which must be a push: `(useq, body)`.
async fn next_push(c: &mut Client) -> (u64, u64) {
    let f = c.next().await.unwrap();
    assert_eq!(f["type"], "msg", "{f}");
    (
        f["useq"].as_u64().unwrap(),
        f["msg"]["body"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn a_lost_last_push_is_read_once_the_inbox_head_is_known() {
    let rig = rig();
    for i in 1..=3 {
        commit_unpushed(&rig, i).await;
    }
    // The route was written when bob's inbox held 1; the pushes of 2 and 3 were
    // lost with the node that wrote them, and nothing came after them.
    let (mut bob, _task) = connect_after(&rig, "bob", "b1", Some(1));
    rig.ctx.hub.offer_inbox_head("bob", 3);
    assert_eq!(next_push(&mut bob).await, (2, 2));
    assert_eq!(next_push(&mut bob).await, (3, 3));
    rig.stop.cancel();
}

#[tokio::test]
async fn a_complete_sync_tells_where_the_device_stands() {
    let rig = rig();
    let (mut bob, _task) = connect(&rig, "bob", "b1");
    commit_unpushed(&rig, 1).await;
    commit_unpushed(&rig, 2).await;
    // Where the device stands is unknown yet: a head pushes nothing.
    rig.ctx.hub.offer_inbox_head("bob", 2);
    bob.send(serde_json::json!({"type": "sync", "after": 0}));
    let synced = bob.next().await.unwrap();
    assert_eq!(synced["type"], "synced", "{synced}");
    assert_eq!(synced["msgs"].as_array().unwrap().len(), 2);
    assert_eq!(synced["more"], false);
    commit_unpushed(&rig, 3).await;
    rig.ctx.hub.offer_inbox_head("bob", 3);
    assert_eq!(
        next_push(&mut bob).await,
        (3, 3),
        "only what the sync did not have"
    );
    rig.stop.cancel();
}

#[test]
fn cid_is_recovered_from_frames_that_fail_to_decode() {
    assert_eq!(
        cid_of(r#"{"type":"nope","cid":"c7"}"#).as_deref(),
        Some("c7")
    );
    assert_eq!(cid_of(r#"{"type":"nope","cid":7}"#), None);
    assert_eq!(cid_of("{"), None);
}

#[test]
fn connections_opened_together_ping_spread_over_half_an_interval() {
    let now = Instant::now();
    let interval = Duration::from_secs(20);
    // 1,000 connections opened at once: their first pings fall in ten buckets of a
    // second each (the second half of the interval), none holding twice its share.
    let mut buckets = [0u32; 10];
    for id in 1..=1000 {
        let first = ping_base(now, id, interval) + interval - now;
        assert!(first >= interval / 2 && first <= interval, "{first:?}");
        let b = (first - interval / 2).as_secs() as usize;
        buckets[b.min(9)] += 1;
    }
    assert!(
        buckets.iter().all(|&n| (50..=200).contains(&n)),
        "{buckets:?}"
    );
}

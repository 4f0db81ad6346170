//! One WebSocket session: a single task that reads client frames, writes what its
//! outbox holds, answers the shared clock's ticks, and tracks unacked pushes.
//!
//! A single `select!` loop (rather than split reader and writer tasks) keeps one owner
//! for the socket and for the ack state, and flushes tungstenite's queued pongs on
//! every read. The session is generic over any `Stream + Sink` of WebSocket messages so
//! that its logic runs in tests without a network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, close_code};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use shared::protocol::{ClientFrame, ErrorCode};
use tokio_util::sync::CancellationToken;

use super::reorder::{Held, Reorder};
use super::{Clock, Conn, Hub, Out};
use crate::business::Messaging;
use crate::wire;

/// Limits and timings of every session of a worker.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Wait for an ack before resending a push.
    pub ack_timeout: Duration,
    /// Resends of one push before it is left to `sync`.
    pub ack_retries: u32,
    /// Close a connection silent for this long.
    pub idle_timeout: Duration,
    /// Send a WebSocket ping this often.
    pub ping_interval: Duration,
    /// Unacked pushes before the connection counts as too slow.
    pub max_unacked: usize,
    /// Give up on a write that makes no progress for this long.
    pub write_timeout: Duration,
}

/// What every session of a worker shares.
pub struct SessionCtx {
    /// The worker's connections.
    pub hub: Arc<Hub>,
    /// Where sends and syncs go.
    pub messaging: Messaging,
    /// Limits and timings.
    pub settings: SessionSettings,
    /// The shared clock.
    pub clock: Clock,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
}

/// A push waiting for its ack.
struct Unacked {
    frame: Utf8Bytes,
    deadline: Instant,
    /// How many times it was written, the first time included.
    sends: u32,
}

/// Widest push gap a session reads from the inbox itself (see `reorder`).
const REPAIR_MAX: u64 = 1024;

/// How long a closing session waits to write its `kick` and close frames.
const FAREWELL: Duration = Duration::from_secs(2);

/// Why a session ends.
enum End {
    /// Tell the client why, then close with this code.
    Kick(String, u16),
    /// A frame was over the size limit: close 1009.
    TooBig,
    /// The client is gone or the socket failed: nothing more to say.
    Gone,
}

struct State {
    last_recv: Instant,
    last_ping: Instant,
    unacked: BTreeMap<u64, Unacked>,
    /// Pushes that overtook a missing `useq` (cluster mode), held briefly.
    reorder: Reorder,
}

/// Runs the session of `conn` over `socket` until either side ends it, then removes
/// the connection from the hub.
pub async fn run<S>(mut socket: S, conn: Arc<Conn>, ctx: Arc<SessionCtx>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let mut ticks = ctx.clock.subscribe();
    let now = Instant::now();
    let mut st = State {
        last_recv: now,
        last_ping: now,
        unacked: BTreeMap::new(),
        reorder: Reorder::default(),
    };
    let s = &ctx.settings;
    // How many of this session's unacked pushes the hub's total counts.
    let mut counted = 0usize;
    let stats = &ctx.hub.stats;

    // Every write is boxed: the write futures (with their timeout) are three times the
    // size of everything else, and an idle session would carry their space for life.
    let end = loop {
        let len = st.unacked.len();
        if len != counted {
            stats
                .unacked
                .fetch_add(len as i64 - counted as i64, Ordering::Relaxed);
            conn.unacked.store(len as u64, Ordering::Relaxed);
            counted = len;
        }
        // Unbiased: a flood of pushes must not starve the client's acks, nor a flood of
        // client frames the pushes.
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break End::Kick("shutdown".into(), close_code::AWAY),
            _ = conn.outbox.notified() => {
                let (queue, closing) = conn.outbox.take();
                if let Err(end) = Box::pin(write_queued(&mut socket, queue, &mut st, s)).await {
                    break end;
                }
                if let Some(reason) = closing {
                    break End::Kick(reason, close_code::NORMAL);
                }
            }
            read = socket.next() => {
                let msg = match read {
                    None => break End::Gone,
                    Some(Err(e)) => break if is_too_big(e) { End::TooBig } else { End::Gone },
                    Some(Ok(msg)) => msg,
                };
                st.last_recv = Instant::now();
                let reply = match msg {
                    Message::Text(text) => {
                        Box::pin(handle_text(text.as_str(), &conn, &ctx, &mut st)).await
                    }
                    Message::Binary(_) => Some(wire::error_frame(
                        None,
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text frames",
                    )),
                    Message::Close(_) => break End::Gone,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(frame) = reply
                    && Box::pin(send_all(&mut socket, [Message::Text(frame.into())], s)).await.is_err()
                {
                    break End::Gone;
                }
            }
            _ = st.reorder.expired(), if st.reorder.holding() => {
                if let Err(end) = Box::pin(write_held(&mut socket, &conn, &ctx, &mut st)).await {
                    break end;
                }
            }
            changed = ticks.changed() => {
                if changed.is_err() {
                    break End::Kick("shutdown".into(), close_code::AWAY);
                }
                let now = *ticks.borrow_and_update();
                match on_tick(now, &mut st, s) {
                    Err(end) => break end,
                    Ok(frames) if frames.is_empty() => {}
                    Ok(frames) => {
                        let resent = frames.iter().filter(|f| matches!(f, Message::Text(_))).count();
                        stats.retransmits.fetch_add(resent as u64, Ordering::Relaxed);
                        if Box::pin(send_all(&mut socket, frames, s)).await.is_err() {
                            break End::Gone;
                        }
                    }
                }
            }
        }
    };

    stats.unacked.fetch_sub(counted as i64, Ordering::Relaxed);
    ctx.hub.unregister(&conn);
    let farewell = match end {
        End::Kick(reason, code) => {
            tracing::debug!(uid = %conn.who.uid, device = %conn.who.device, %reason, "session kicked");
            vec![
                Message::Text(wire::kick_frame(&reason).into()),
                close(code, &reason),
            ]
        }
        End::TooBig => {
            metrics::counter!("imd_frames_too_large_total").increment(1);
            vec![close(close_code::SIZE, "frame too large")]
        }
        End::Gone => Vec::new(),
    };
    if !farewell.is_empty() {
        // A client that is being closed gets a short grace to read why, not the full
        // write timeout: a slow consumer would otherwise hold its socket that long.
        let quick = SessionSettings {
            write_timeout: s.write_timeout.min(FAREWELL),
            ..*s
        };
        let _ = Box::pin(send_all(&mut socket, farewell, &quick)).await;
    }
    if !st.unacked.is_empty() {
        tracing::debug!(uid = %conn.who.uid, unacked = st.unacked.len(), "closed with unacked pushes; they wait in the inbox");
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// Whether a read error is tungstenite refusing a frame or message over the size limit.
fn is_too_big(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Writes `frames` and flushes, giving up after the write timeout: a client that does
/// not read is dead to us, and must not hold its session forever.
async fn send_all<S>(
    socket: &mut S,
    frames: impl IntoIterator<Item = Message>,
    s: &SessionSettings,
) -> Result<(), ()>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let write = async {
        for f in frames {
            socket.feed(f).await?;
        }
        socket.flush().await
    };
    // The timer is armed only if the write cannot finish at once.
    match tokio::time::timeout(s.write_timeout, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Writes what the outbox held, pushes in `useq` order (see `reorder`); pushes start
/// waiting for their acks.
async fn write_queued<S>(
    socket: &mut S,
    queue: std::collections::VecDeque<Out>,
    st: &mut State,
    s: &SessionSettings,
) -> Result<(), End>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    if queue.is_empty() {
        return Ok(());
    }
    let now = Instant::now();
    let mut frames = Vec::with_capacity(queue.len());
    let mut ready = Vec::new();
    for out in queue {
        match out {
            Out::Push {
                useq,
                frame,
                queued,
            } => {
                st.reorder.offer(
                    Held {
                        useq,
                        frame,
                        queued,
                    },
                    now,
                    &mut ready,
                );
                for p in ready.drain(..) {
                    track(p, now, st, s, &mut frames);
                }
            }
            Out::Frame(frame) => frames.push(Message::Text(frame)),
            Out::Start(head) => st.reorder.start_after(head),
            Out::Head(head) => st.reorder.expect(head, now),
        }
    }
    write_tracked(socket, frames, st, s).await
}

/// The reorder window ended and the gap (or an expected tail) is still there: its
/// pushes were lost on the way, so the missing entries are read from the inbox and
/// pushed, in order with the held ones.
async fn write_held<S>(
    socket: &mut S,
    conn: &Conn,
    ctx: &SessionCtx,
    st: &mut State,
) -> Result<(), End>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let s = &ctx.settings;
    let now = Instant::now();
    let mut ready = Vec::new();
    // A wider gap is not read here: that many lost pushes mean the device is better
    // served by its own `sync` (and reading them would cost memory for each session).
    if let Some((after, until)) = st.reorder.gap().filter(|(a, u)| u - a <= REPAIR_MAX) {
        let cap = (until - after) as usize;
        match ctx
            .messaging
            .inbox_range(&conn.who.uid, after, until, cap)
            .await
        {
            Ok(entries) => {
                metrics::counter!("imd_push_gaps_repaired_total").increment(1);
                let missing: Vec<_> = entries
                    .into_iter()
                    .filter(|(u, _)| st.reorder.missing(*u))
                    .collect();
                for (useq, msg) in missing {
                    let frame = Utf8Bytes::from(wire::push_frame(useq, &msg));
                    st.reorder.offer(
                        Held {
                            useq,
                            frame,
                            queued: now,
                        },
                        now,
                        &mut ready,
                    );
                }
            }
            Err(e) => {
                tracing::warn!(uid = %conn.who.uid, error = %e, "reading a push gap from the inbox failed; sync covers it");
            }
        }
    }
    st.reorder.release_all(&mut ready);
    let mut frames = Vec::with_capacity(ready.len());
    for p in ready {
        track(p, now, st, s, &mut frames);
    }
    write_tracked(socket, frames, st, s).await
}

/// A push about to be written starts waiting for its ack.
fn track(p: Held, now: Instant, st: &mut State, s: &SessionSettings, frames: &mut Vec<Message>) {
    metrics::histogram!("imd_push_latency_seconds")
        .record(now.saturating_duration_since(p.queued).as_secs_f64());
    st.unacked.insert(
        p.useq,
        Unacked {
            frame: p.frame.clone(),
            deadline: now + s.ack_timeout,
            sends: 1,
        },
    );
    frames.push(Message::Text(p.frame));
}

/// Writes `frames` unless the device has too many pushes in flight.
async fn write_tracked<S>(
    socket: &mut S,
    frames: Vec<Message>,
    st: &mut State,
    s: &SessionSettings,
) -> Result<(), End>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    if st.unacked.len() > s.max_unacked {
        metrics::counter!("imd_slow_consumer_disconnects_total").increment(1);
        return Err(End::Kick("slow".into(), close_code::POLICY));
    }
    if frames.is_empty() {
        return Ok(());
    }
    send_all(socket, frames, s).await.map_err(|()| End::Gone)
}

/// Heartbeat, idle check and retransmits; returns the frames to write.
fn on_tick(now: Instant, st: &mut State, s: &SessionSettings) -> Result<Vec<Message>, End> {
    if now.saturating_duration_since(st.last_recv) >= s.idle_timeout {
        metrics::counter!("imd_idle_disconnects_total").increment(1);
        return Err(End::Kick("idle".into(), close_code::AWAY));
    }
    let mut frames = Vec::new();
    if now.saturating_duration_since(st.last_ping) >= s.ping_interval {
        st.last_ping = now;
        frames.push(Message::Ping(bytes::Bytes::new()));
    }
    st.unacked.retain(|_, u| {
        if u.deadline > now {
            return true;
        }
        if u.sends > s.ack_retries {
            metrics::counter!("imd_ack_timeouts_total").increment(1);
            return false;
        }
        u.sends += 1;
        u.deadline = now + s.ack_timeout;
        metrics::counter!("imd_retransmits_total").increment(1);
        frames.push(Message::Text(u.frame.clone()));
        true
    });
    Ok(frames)
}

/// Handles one text frame; returns the frame to answer with, if any. `sent` answers
/// arrive later through the outbox, from the commit task.
async fn handle_text(
    text: &str,
    conn: &Arc<Conn>,
    ctx: &SessionCtx,
    st: &mut State,
) -> Option<String> {
    let frame = match serde_json::from_str::<ClientFrame>(text) {
        Ok(f) => f,
        Err(e) => {
            metrics::counter!("imd_bad_frames_total").increment(1);
            return Some(wire::error_frame(
                cid_of(text),
                ErrorCode::BadRequest,
                e.to_string(),
            ));
        }
    };
    match frame {
        ClientFrame::Send(req) => {
            let cid = req.cid.clone();
            let target = conn.clone();
            let reply_cid = cid.clone();
            let reply = Box::new(move |r: Result<crate::business::SendOutcome, _>| {
                let frame = match r {
                    Ok(o) => wire::sent_frame(o.cid.as_deref(), &o.json),
                    Err(e) => {
                        let e: &crate::business::Error = &e;
                        wire::error_frame(reply_cid, e.code(), e.client_message())
                    }
                };
                target.outbox.enqueue_frame(frame);
            });
            match ctx.messaging.send(&conn.who, req, reply).await {
                Ok(()) => None,
                Err(e) => Some(wire::error_frame(cid, e.code(), e.client_message())),
            }
        }
        ClientFrame::Ack { useqs } => {
            for useq in useqs {
                if st.unacked.remove(&useq).is_some() {
                    metrics::counter!("imd_acks_total").increment(1);
                }
            }
            None
        }
        ClientFrame::Sync { after, limit } => Some(
            match ctx.messaging.sync(&conn.who.uid, after, limit).await {
                Ok(page) => {
                    // A last page ends at the inbox's head: pushes are owed after it.
                    if let (false, Some((last, _))) = (page.more, page.items.last()) {
                        st.reorder.start_after(*last);
                    }
                    wire::synced_frame(&page.items, page.more)
                }
                Err(e) => {
                    tracing::warn!(uid = %conn.who.uid, error = %e, "sync failed");
                    wire::error_frame(None, e.code(), e.client_message())
                }
            },
        ),
        ClientFrame::Ping => Some(wire::PONG_FRAME.to_owned()),
    }
}

/// The `cid` of a frame that failed to decode, when it has one, for the error answer.
fn cid_of(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("cid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::Hub;

    fn settings() -> SessionSettings {
        SessionSettings {
            ack_timeout: Duration::from_millis(100),
            ack_retries: 2,
            idle_timeout: Duration::from_secs(3),
            ping_interval: Duration::from_secs(1),
            max_unacked: 8,
            write_timeout: Duration::from_secs(1),
        }
    }

    fn state(now: Instant) -> State {
        State {
            last_recv: now,
            last_ping: now,
            unacked: BTreeMap::new(),
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
        let dispatcher = Arc::new(crate::dispatch::Dispatcher::local(hub.clone()));
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
                crate::business::words::Words::load(None, crate::config::WordsPolicy::Mask)
                    .unwrap(),
            ),
            limits: Arc::new(crate::business::limits::Limits::new(off, off)),
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
        let push = |i: usize| crate::rpc::Push {
            uid: "bob".into(),
            useq: inbox[i].0,
            msg: inbox[i].1.clone(),
        };
        crate::rpc::WorkerApi::push(&*rig.ctx.hub, vec![push(0), push(2)]);
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
            body: serde_json::json!(body),
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
}
/// An idle connection's memory is mostly this future; docs/benchmarks.md has the
/// figure it buys. Growing it (an inline write future, a new select branch) costs
/// every connection, so it is checked.
#[cfg(test)]
mod footprint {
    fn output_size<F, A, B, C, R>(_: F) -> usize
    where
        F: Fn(A, B, C) -> R,
    {
        std::mem::size_of::<R>()
    }

    #[test]
    fn the_session_future_stays_small() {
        let size = output_size(super::run::<axum::extract::ws::WebSocket>);
        assert!(size <= 1400, "the session future grew to {size} bytes");
    }
}

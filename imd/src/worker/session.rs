//! One WebSocket session: a single task that reads client frames, writes what its
//! outbox holds, answers the shared clock's ticks, and tracks unacked pushes.
//!
//! A single `select!` loop (rather than split reader and writer tasks) keeps one owner
//! for the socket and for the ack state, and flushes tungstenite's queued pongs on
//! every read. The session is generic over any `Stream + Sink` of WebSocket messages so
//! that its logic runs in tests without a network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, close_code};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use shared::protocol::{ClientFrame, ErrorCode};
use tokio_util::sync::CancellationToken;

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
    };
    let s = &ctx.settings;

    let end = loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break End::Kick("shutdown".into(), close_code::AWAY),
            _ = conn.outbox.notified() => {
                let (queue, closing) = conn.outbox.take();
                if let Err(end) = write_queued(&mut socket, queue, &mut st, s).await {
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
                if let Some(frame) = reply {
                    if send_all(&mut socket, [Message::Text(frame.into())], s).await.is_err() {
                        break End::Gone;
                    }
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
                        if send_all(&mut socket, frames, s).await.is_err() {
                            break End::Gone;
                        }
                    }
                }
            }
        }
    };

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
        let _ = send_all(&mut socket, farewell, s).await;
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

/// Writes what the outbox held; pushes start waiting for their acks.
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
    for out in queue {
        match out {
            Out::Push {
                useq,
                frame,
                queued,
            } => {
                metrics::histogram!("imd_push_latency_seconds")
                    .record(now.saturating_duration_since(queued).as_secs_f64());
                st.unacked.insert(
                    useq,
                    Unacked {
                        frame: frame.clone(),
                        deadline: now + s.ack_timeout,
                        sends: 1,
                    },
                );
                frames.push(Message::Text(frame));
            }
            Out::Frame(frame) => frames.push(Message::Text(frame)),
        }
    }
    if st.unacked.len() > s.max_unacked {
        metrics::counter!("imd_slow_consumer_disconnects_total").increment(1);
        return Err(End::Kick("slow".into(), close_code::POLICY));
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
                Ok(page) => wire::synced_frame(&page.items, page.more),
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

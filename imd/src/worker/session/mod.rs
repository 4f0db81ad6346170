//! One WebSocket session: a single task that reads client frames, writes what its
//! outbox holds, checks its deadlines when the shared clock wakes it (pings, idle
//! timeout, retransmits), and tracks unacked pushes.
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
use shared::protocol::{ClientFrame, ErrorCode, ServerFrame};
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
    /// Bytes of unacked pushes before the connection counts as too slow (the outbox
    /// has the same bound for what waits to be written: `--max-outbox-bytes`).
    pub max_unacked_bytes: usize,
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
    /// The shared clock, which wakes a session when its next deadline is due.
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

/// The golden ratio's fractional part: multiples of it are evenly spread in [0, 1).
const GOLDEN: f64 = 0.618_033_988_749_895;

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
    /// A write made no progress for the write timeout: `kick` `slow`, if it can still
    /// be written within the farewell's grace, then close.
    Stalled,
}

struct State {
    last_recv: Instant,
    last_ping: Instant,
    /// When the clock will wake the session next to check its deadlines (the earliest
    /// wake it asked for).
    check_at: Instant,
    unacked: BTreeMap<u64, Unacked>,
    /// Bytes of the frames in `unacked`.
    unacked_bytes: usize,
    /// Pushes that overtook a missing `useq` (cluster mode), held briefly.
    reorder: Reorder,
}

/// Runs the session of `conn` over `socket` until either side ends it, then removes
/// the connection from the hub.
pub async fn run<S>(mut socket: S, conn: Arc<Conn>, ctx: Arc<SessionCtx>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let now = Instant::now();
    let s = &ctx.settings;
    let last_ping = ping_base(now, conn.id, s.ping_interval);
    let mut st = State {
        last_recv: now,
        last_ping,
        check_at: (last_ping + s.ping_interval).min(now + s.idle_timeout),
        unacked: BTreeMap::new(),
        unacked_bytes: 0,
        reorder: Reorder::default(),
    };
    ctx.clock.wake_at(&conn, st.check_at);
    // How many of this session's unacked pushes the hub's total counts.
    let mut counted = 0usize;
    let stats = &ctx.hub.stats;

    // Every write is boxed: the write futures (with their timeout) are three times the
    // size of everything else, and an idle session would carry their space for life.
    let end = loop {
        count_unacked(&st, &conn, stats, &mut counted);
        // Unbiased: a flood of pushes must not starve the client's acks, nor a flood of
        // client frames the pushes.
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break End::Kick("shutdown".into(), close_code::AWAY),
            _ = conn.outbox.notified() => {
                let (queue, closing) = conn.outbox.take();
                let taken = queue.iter().filter(|o| matches!(o, Out::Push { .. })).count();
                let written = Box::pin(write_queued(&mut socket, queue, &mut st, s)).await;
                // Counted here before the outbox forgets them: never zero in between.
                count_unacked(&st, &conn, stats, &mut counted);
                conn.outbox.settle(taken);
                if let Err(end) = written {
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
                    && let Err(e) = Box::pin(send_all(&mut socket, [Message::Text(frame.into())], s)).await
                {
                    break e;
                }
            }
            _ = st.reorder.expired(), if st.reorder.holding() => {
                if let Err(end) = Box::pin(write_held(&mut socket, &conn, &ctx, &mut st)).await {
                    break end;
                }
            }
        }
        // Deadlines: the clock wakes the session through its outbox when one is due;
        // any other wake that finds one due serves as well.
        let now = Instant::now();
        if now >= st.check_at {
            match on_tick(now, &mut st, s) {
                Err(end) => break end,
                Ok(frames) if frames.is_empty() => {}
                Ok(frames) => {
                    let resent = frames
                        .iter()
                        .filter(|f| matches!(f, Message::Text(_)))
                        .count();
                    stats
                        .retransmits
                        .fetch_add(resent as u64, Ordering::Relaxed);
                    if let Err(e) = Box::pin(send_all(&mut socket, frames, s)).await {
                        break e;
                    }
                }
            }
            st.check_at = next_check(&st, s);
            ctx.clock.wake_at(&conn, st.check_at);
        } else if !st.unacked.is_empty() && now + s.ack_timeout < st.check_at {
            // A push written since the last check is due before it (within the few
            // microseconds since it was written).
            st.check_at = now + s.ack_timeout;
            ctx.clock.wake_at(&conn, st.check_at);
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
        End::Stalled => {
            metrics::counter!("imd_write_timeouts_total").increment(1);
            // A full outbox already counted this connection as slow.
            if !conn.outbox.is_closing() {
                metrics::counter!("imd_slow_consumer_disconnects_total").increment(1);
            }
            tracing::debug!(uid = %conn.who.uid, device = %conn.who.device, "write stalled; closing as slow");
            vec![
                Message::Text(wire::kick_frame("slow").into()),
                close(close_code::POLICY, "slow"),
            ]
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

/// Publishes how many of this session's pushes are not acked yet (written and
/// waiting, or held for reordering): on the connection, for listings and replay
/// pacing, and in the hub's total, of which `counted` is this session's share.
fn count_unacked(st: &State, conn: &Conn, stats: &super::WorkerStats, counted: &mut usize) {
    let n = st.unacked.len() + st.reorder.held();
    if n != *counted {
        stats
            .unacked
            .fetch_add(n as i64 - *counted as i64, Ordering::Relaxed);
        conn.unacked.store(n as u64, Ordering::Relaxed);
        *counted = n;
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

/// Writes `frames` and flushes, giving up after the write timeout (`--write-timeout`):
/// a client that does not read must not hold its session, and what is queued for it,
/// for long. A write that stalls ends the session with `kick` `slow` (tried within the
/// farewell's short grace); a socket that failed ends it with nothing more to say.
///
/// The timeout covers one batch of frames: a batch is at most an outbox's worth
/// (`--max-outbox-bytes`), which a client that reads at all takes in far less.
async fn send_all<S>(
    socket: &mut S,
    frames: impl IntoIterator<Item = Message>,
    s: &SessionSettings,
) -> Result<(), End>
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
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Stalled),
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
                if st.reorder.retry_repair(now) {
                    tracing::debug!(uid = %conn.who.uid, error = %e, "reading a push gap from the inbox failed; trying again");
                    return Ok(());
                }
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
    let replaced = st.unacked.insert(
        p.useq,
        Unacked {
            frame: p.frame.clone(),
            deadline: now + s.ack_timeout,
            sends: 1,
        },
    );
    st.unacked_bytes += p.frame.len();
    if let Some(old) = replaced {
        st.unacked_bytes -= old.frame.len();
    }
    frames.push(Message::Text(p.frame));
}

/// Writes `frames` unless the device has too many pushes in flight, by count
/// (`--max-unacked`) or by bytes (`--max-outbox-bytes`).
async fn write_tracked<S>(
    socket: &mut S,
    frames: Vec<Message>,
    st: &mut State,
    s: &SessionSettings,
) -> Result<(), End>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    if st.unacked.len() > s.max_unacked || st.unacked_bytes > s.max_unacked_bytes {
        metrics::counter!("imd_slow_consumer_disconnects_total").increment(1);
        if st.unacked_bytes > s.max_unacked_bytes {
            metrics::counter!("imd_unacked_bytes_exceeded_total").increment(1);
        }
        return Err(End::Kick("slow".into(), close_code::POLICY));
    }
    if frames.is_empty() {
        return Ok(());
    }
    send_all(socket, frames, s).await
}

/// When a new connection counts as last pinged: up to half an interval ago, by the
/// connection's id, so that its first ping comes somewhere in the second half of the
/// interval. Ids are sequential, and a golden-ratio step spreads neighbours evenly:
/// connections opened together do not ping, and wake, together ever after.
fn ping_base(now: Instant, id: u64, ping_interval: Duration) -> Instant {
    let spread = ping_interval.mul_f64(0.5 * (id as f64 * GOLDEN).fract());
    now.checked_sub(spread).unwrap_or(now)
}

/// When the session must look at its deadlines next: the idle timeout, the next ping,
/// or the earliest ack deadline, whichever comes first.
fn next_check(st: &State, s: &SessionSettings) -> Instant {
    let idle = st.last_recv + s.idle_timeout;
    let ping = st.last_ping + s.ping_interval;
    let ack = st.unacked.values().map(|u| u.deadline).min();
    ack.map_or(idle.min(ping), |a| a.min(idle).min(ping))
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
    let mut dropped = 0;
    st.unacked.retain(|_, u| {
        if u.deadline > now {
            return true;
        }
        if u.sends > s.ack_retries {
            metrics::counter!("imd_ack_timeouts_total").increment(1);
            dropped += u.frame.len();
            return false;
        }
        u.sends += 1;
        u.deadline = now + s.ack_timeout;
        metrics::counter!("imd_retransmits_total").increment(1);
        frames.push(Message::Text(u.frame.clone()));
        true
    });
    st.unacked_bytes -= dropped;
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
                if let Some(u) = st.unacked.remove(&useq) {
                    st.unacked_bytes -= u.frame.len();
                    metrics::counter!("imd_acks_total").increment(1);
                }
            }
            None
        }
        ClientFrame::Sync { after, limit } => Some(
            match ctx.messaging.sync(&conn.who.uid, after, limit).await {
                Ok((page, generation)) => {
                    // A last page ends at the inbox's head: pushes are owed after it.
                    if let (false, Some((last, _))) = (page.more, page.items.last()) {
                        st.reorder.start_after(*last);
                    }
                    wire::synced_frame(&page.items, page.more, page.trimmed, generation.as_str())
                }
                Err(e) => {
                    tracing::warn!(uid = %conn.who.uid, error = %e, "sync failed");
                    wire::error_frame(None, e.code(), e.client_message())
                }
            },
        ),
        ClientFrame::Ping => Some(wire::PONG_FRAME.to_owned()),
        // Boxed: rare next to acks and sends, so their futures do not grow every
        // session's.
        f @ (ClientFrame::Read { .. }
        | ClientFrame::Typing { .. }
        | ClientFrame::Recall { .. }
        | ClientFrame::Status { .. }) => Box::pin(handle_state(f, conn, ctx)).await,
    }
}

/// Handles a frame about conversation state (`read`, `typing`, `recall`, `status`); returns
/// the frame to answer with, if any. A `read` is answered only when it fails, and a
/// `recall` with `recalled` once committed, both through the outbox.
async fn handle_state(frame: ClientFrame, conn: &Arc<Conn>, ctx: &SessionCtx) -> Option<String> {
    let error = |e: crate::business::Error| wire::error_frame(None, e.code(), e.client_message());
    let target = conn.clone();
    let queued = match frame {
        ClientFrame::Read { conv, seq } => {
            let reply = Box::new(move |r: Result<u64, crate::business::Error>| {
                if let Err(e) = r {
                    target.outbox.enqueue_frame(error(e));
                }
            });
            ctx.messaging.read(&conn.who, &conv, seq, reply).await
        }
        ClientFrame::Recall { conv, seq } => {
            let answer = ServerFrame::Recalled {
                conv: conv.clone(),
                seq,
            };
            let reply = Box::new(move |r: Result<(), crate::business::Error>| {
                let frame = match r {
                    Ok(()) => serde_json::to_string(&answer).unwrap_or_default(),
                    Err(e) => error(e),
                };
                target.outbox.enqueue_frame(frame);
            });
            ctx.messaging.recall(&conn.who, &conv, seq, reply).await
        }
        ClientFrame::Typing { conv } => ctx.messaging.typing(&conn.who, &conv).await,
        ClientFrame::Status { status } => ctx.messaging.set_status(&conn.who, status).await,
        ClientFrame::Send(_)
        | ClientFrame::Ack { .. }
        | ClientFrame::Sync { .. }
        | ClientFrame::Ping => {
            return None;
        }
    };
    queued.err().map(error)
}

/// The `cid` of a frame that failed to decode, when it has one, for the error answer.
fn cid_of(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("cid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests;

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

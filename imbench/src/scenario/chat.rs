//! `chat`: user 2k and user 2k+1 send each other direct messages, open loop.
//!
//! Each sending connection has a fixed schedule (its share of `--rate`, phase-shifted
//! so that the agent's sends spread evenly). A message's intended send time goes in
//! its body, and latency is measured from it to the push on the recipient's device,
//! so a send that is late because the connection is backed up still counts its full
//! delay. Every push is acked. Each device records which `useq`s and which message
//! numbers it saw; the agent compares them with what the senders had acknowledged.
//!
//! A dropped connection reconnects, resends its unacknowledged messages with the same
//! `cid` (the server must not create them twice) and catches up with `sync`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::protocol::{ClientFrame, Message, SendRequest, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Outcome, close, dropped, open_first, reconnect, send_text};
use crate::agent::{Ctx, bump};
use crate::dial::Ws;
use crate::verify::{DeviceLog, Push, SenderLog, SeqSet};

/// Acks are batched while frames keep arriving, up to this many.
const MAX_ACK_BATCH: usize = 64;
/// Page size of the catch-up `sync` after a reconnect.
const SYNC_PAGE: u32 = 1000;

/// What one chat connection sent and saw.
#[derive(Debug, Default)]
pub struct ChatLog {
    /// Messages sent, numbered 1..=sent.
    sent: u64,
    /// Sent and not yet acknowledged: number → intended send time (unix µs).
    pending: HashMap<u64, u64>,
    /// Refused by the server.
    refused: BTreeSet<u64>,
    /// Numbers of the peer's messages seen on this device.
    pub from_peer: SeqSet,
    /// Numbers of this user's own messages seen on this device.
    pub echo: SeqSet,
    /// The device's `useq` stream.
    pub device: DeviceLog,
}

impl ChatLog {
    /// What this connection knows as a sender.
    pub fn sender_log(&self) -> SenderLog {
        SenderLog {
            sent: self.sent,
            unacked: self.pending.keys().copied().collect(),
            refused: self.refused.clone(),
        }
    }
}

enum End {
    Stop,
    Dropped(String),
}

struct Chat<'a> {
    ctx: &'a Ctx,
    uid: String,
    peer_uid: Option<String>,
    /// Time between two sends; None for a connection that does not send.
    period: Option<Duration>,
    next_due: Instant,
    log: ChatLog,
    acks: Vec<u64>,
    /// Frames to write before anything else (sync requests, resends).
    queued: Vec<String>,
}

/// Runs chat connection `i` until the stop.
pub async fn run(ctx: Arc<Ctx>, i: u64) -> Outcome {
    let uid = ctx.plan.uid(i);
    let Some(mut ws) = open_first(&ctx, i, &uid).await else {
        return Outcome::NeverOpened;
    };
    let mut chat = Chat::new(&ctx, i, uid);
    loop {
        match chat.drive(&mut ws).await {
            End::Stop => {
                close(&ctx, ws).await;
                break;
            }
            End::Dropped(why) => {
                dropped(&ctx, &why);
                match reconnect(&ctx, i, &chat.uid).await {
                    Some(new) => {
                        ws = new;
                        chat.after_reconnect();
                    }
                    None => break,
                }
            }
        }
    }
    Outcome::Chat(Box::new(chat.log))
}

impl<'a> Chat<'a> {
    fn new(ctx: &'a Ctx, i: u64, uid: String) -> Self {
        let plan = &ctx.plan;
        let peer_uid = plan.peer(i).map(|p| plan.uid(p));
        let period = (peer_uid.is_some() && plan.per_conn_rate > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / plan.per_conn_rate));
        // Sender k of S starts k/rate into the first period, so that the sends of
        // all connections interleave evenly at the total rate.
        let total_rate = plan.per_conn_rate * (plan.total_connections / 2 * 2) as f64;
        let phase = match period {
            Some(p) if total_rate > 0.0 => {
                Duration::from_secs_f64((i as f64 / total_rate) % p.as_secs_f64())
            }
            _ => Duration::ZERO,
        };
        Chat {
            ctx,
            uid,
            peer_uid,
            period,
            next_due: ctx.timeline.traffic_start + phase,
            log: ChatLog::default(),
            acks: Vec::new(),
            queued: Vec::new(),
        }
    }

    async fn drive(&mut self, ws: &mut Ws) -> End {
        let timer = tokio::time::sleep_until(self.next_due.into());
        tokio::pin!(timer);
        loop {
            let can_send = self.period.is_some() && self.next_due < self.ctx.timeline.traffic_end;
            tokio::select! {
                biased;
                _ = self.ctx.stop.cancelled() => return End::Stop,
                frame = ws.next() => {
                    match frame {
                        Some(Ok(WsMessage::Text(text))) => self.on_text(&text),
                        Some(Ok(WsMessage::Ping(_))) => {
                            // the pong is queued; send it now
                            if let Err(e) = ws.flush().await {
                                return End::Dropped(format!("flushing a pong: {e}"));
                            }
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            return End::Dropped(format!("closed by the server: {frame:?}"));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return End::Dropped(format!("read: {e}")),
                        None => return End::Dropped("stream ended".into()),
                    }
                    if self.acks.len() >= MAX_ACK_BATCH
                        && let Err(e) = self.flush_queued(ws).await
                    {
                        return End::Dropped(e);
                    }
                }
                // After reads, so that a sender catching up on its schedule still
                // drains what the server pushes; the late sends keep their
                // intended times.
                _ = &mut timer, if can_send => {
                    let frame = self.next_message();
                    if let Err(e) = send_text(ws, frame).await {
                        return End::Dropped(e);
                    }
                    bump(&self.ctx.stats.sent);
                    timer.as_mut().reset(self.next_due.into());
                }
                _ = std::future::ready(()), if !self.acks.is_empty() || !self.queued.is_empty() => {
                    if let Err(e) = self.flush_queued(ws).await {
                        return End::Dropped(e);
                    }
                }
            }
        }
    }

    /// Writes queued frames, then one `ack` for every push read so far.
    async fn flush_queued(&mut self, ws: &mut Ws) -> Result<(), String> {
        for frame in std::mem::take(&mut self.queued) {
            ws.feed(WsMessage::text(frame))
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        if !self.acks.is_empty() {
            let ack = ClientFrame::Ack {
                useqs: std::mem::take(&mut self.acks),
            };
            let text = serde_json::to_string(&ack).expect("an ack serializes");
            ws.feed(WsMessage::text(text))
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        ws.flush().await.map_err(|e| format!("write: {e}"))
    }

    /// The next scheduled message; advances the schedule.
    fn next_message(&mut self) -> String {
        let intended = self.next_due;
        self.next_due += self.period.expect("only senders send");
        self.log.sent += 1;
        let n = self.log.sent;
        let t = self.ctx.clock.unix_us(intended);
        self.log.pending.insert(n, t);
        self.send_frame(n, t)
    }

    fn send_frame(&self, n: u64, t: u64) -> String {
        let frame = ClientFrame::Send(SendRequest {
            cid: Some(n.to_string()),
            to: self.peer_uid.clone(),
            conv: None,
            shop: None,
            body: json!({ "id": format!("{}/{n}", self.uid), "t": t }),
        });
        serde_json::to_string(&frame).expect("a send serializes")
    }

    /// After a reconnect: catch up on the inbox and resend what was not acknowledged.
    fn after_reconnect(&mut self) {
        self.acks.clear();
        let sync = ClientFrame::Sync {
            after: self.log.device.sync_after(),
            limit: Some(SYNC_PAGE),
        };
        self.queued
            .push(serde_json::to_string(&sync).expect("a sync serializes"));
        let mut pending: Vec<(u64, u64)> = self.log.pending.iter().map(|(n, t)| (*n, *t)).collect();
        pending.sort_unstable();
        for (n, t) in pending {
            self.queued.push(self.send_frame(n, t));
        }
    }

    fn on_text(&mut self, text: &str) {
        let stats = &self.ctx.stats;
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(ServerFrame::Msg { useq, msg }) => self.on_push(useq, &msg),
            Ok(ServerFrame::Sent { cid, .. }) => {
                let n = cid.and_then(|c| c.parse::<u64>().ok());
                if let Some(t) = n.and_then(|n| self.log.pending.remove(&n)) {
                    bump(&stats.acked);
                    stats.record_ack_latency(self.ctx.clock.now_us().saturating_sub(t));
                }
            }
            Ok(ServerFrame::Synced { msgs, more }) => {
                for item in &msgs {
                    self.on_push(item.useq, &item.msg);
                }
                if let (true, Some(last)) = (more, msgs.last()) {
                    let sync = ClientFrame::Sync {
                        after: last.useq,
                        limit: Some(SYNC_PAGE),
                    };
                    self.queued
                        .push(serde_json::to_string(&sync).expect("a sync serializes"));
                }
            }
            Ok(ServerFrame::Error { cid, code, message }) => {
                let n = cid.and_then(|c| c.parse::<u64>().ok());
                if let Some(n) = n.filter(|n| self.log.pending.remove(n).is_some()) {
                    self.log.refused.insert(n);
                    bump(&stats.refused);
                    stats.error(&format!("refused {}", code.as_str()), &message);
                } else {
                    bump(&stats.server_errors);
                    stats.error(&format!("server {}", code.as_str()), &message);
                }
            }
            Ok(ServerFrame::Kick { reason }) => {
                bump(&stats.kicks);
                stats.error("kick", &reason);
            }
            Ok(ServerFrame::Pong) => {}
            Err(e) => {
                bump(&stats.server_errors);
                stats.error("bad frame", &format!("{e}: {}", truncate(text, 200)));
            }
        }
    }

    fn on_push(&mut self, useq: u64, msg: &Message) {
        let stats = &self.ctx.stats;
        self.acks.push(useq);
        match self.log.device.record(useq) {
            Push::Retransmit => {
                bump(&stats.retransmits);
                return;
            }
            Push::NewOutOfOrder => bump(&stats.out_of_order),
            Push::New => {}
        }
        let id = msg.body.get("id").and_then(Value::as_str).and_then(|id| {
            let (who, n) = id.rsplit_once('/')?;
            Some((who, n.parse::<u64>().ok()?))
        });
        let Some((who, n)) = id else {
            bump(&stats.foreign);
            return;
        };
        if who == msg.from && self.peer_uid.as_deref() == Some(who) {
            if self.log.from_peer.insert(n) {
                bump(&stats.delivered);
                if let Some(t) = msg.body.get("t").and_then(Value::as_u64) {
                    stats.record_latency(self.ctx.clock.now_us().saturating_sub(t));
                }
            } else {
                bump(&stats.duplicated);
            }
        } else if who == msg.from && who == self.uid {
            if self.log.echo.insert(n) {
                bump(&stats.echoed);
            } else {
                bump(&stats.duplicated);
            }
        } else {
            bump(&stats.foreign);
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

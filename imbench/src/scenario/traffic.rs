//! `chat`, `group` and `service`: connections that send messages open loop, ack
//! every push, and record what they saw for the delivery check.
//!
//! - chat: user 2k and user 2k+1 send each other direct messages;
//! - group: every member of a group of `--group-size` sends to `g:{group}`, and each
//!   message fans out to every member's device;
//! - service: customers send `{"shop": …}`; the shop's agents (tokens with role
//!   `agent`) reply with `{"conv": "s:{shop}~{customer}"}` to each customer message
//!   the first time their device is pushed it.
//!
//! Each scheduled sender has a fixed schedule (its share of `--rate`, phase-shifted so
//! that all sends interleave evenly). A message's intended send time goes in its body
//! (`{"id":"{uid}/{n}","t":unix_µs}`), and latency runs from it to the push on a
//! recipient's device, so a send that is late because the connection is backed up
//! still counts its full delay. A reply's intended time is when its agent was pushed
//! the customer's message. Every device records, per sender, which message numbers it
//! saw; [`check`] compares that with what each sender had acknowledged.
//!
//! With `--read-receipts`, every message a device receives for the first time from
//! another member of its unit is answered with a `read` frame for its `seq`, written
//! with the next batch of acks.
//!
//! A dropped connection reconnects (bounded backoff), resends its unacknowledged
//! messages with the same `cid` (the server must not create them twice) and catches up
//! with `sync`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::protocol::{ClientFrame, Message, SendRequest, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Outcome, close, dropped, open_first, reconnect, send_text};
use crate::conn::{Ctx, bump};
use crate::dial::Ws;
use crate::plan::{AgentPlan, Role};
use crate::report::VerifyCounts;
use crate::verify::{DeviceLog, Push, SenderLog, SeqSet, check_stream};

/// Acks are batched while frames keep arriving, up to this many.
const MAX_ACK_BATCH: usize = 64;
/// Page size of the catch-up `sync` after a reconnect.
const SYNC_PAGE: u32 = 1000;

/// What one connection sent and saw.
#[derive(Debug, Default)]
pub struct TrafficLog {
    /// Messages sent, numbered 1..=sent.
    sent: u64,
    /// Sent and not yet acknowledged: number → intended send time (unix µs).
    pending: HashMap<u64, u64>,
    /// Refused by the server.
    refused: BTreeSet<u64>,
    /// A shop agent's replies: number → the customer's global index.
    reply_to: HashMap<u64, u64>,
    /// Per sender (global index, this connection's own included): the numbers of its
    /// messages seen on this device.
    pub seen: HashMap<u64, SeqSet>,
    /// The device's `useq` stream.
    pub device: DeviceLog,
}

impl TrafficLog {
    /// What this connection knows as a sender.
    pub fn sender_log(&self) -> SenderLog {
        SenderLog {
            sent: self.sent,
            unacked: self.pending.keys().copied().collect(),
            refused: self.refused.clone(),
        }
    }

    fn seen_from(&self, sender: u64) -> Option<&SeqSet> {
        self.seen.get(&sender)
    }
}

enum End {
    Stop,
    Dropped(String),
}

struct Traffic<'a> {
    ctx: &'a Ctx,
    i: u64,
    uid: String,
    role: Role,
    /// Time between two scheduled sends; None for a connection that only replies or
    /// says nothing.
    period: Option<Duration>,
    next_due: Instant,
    log: TrafficLog,
    acks: Vec<u64>,
    /// Frames to write before anything else (sync requests, resends, replies).
    queued: Vec<String>,
    /// Read receipts to write after `queued` (`--read-receipts`); kept across a
    /// reconnect, since a receipt is as good later.
    receipts: Vec<String>,
}

/// Runs connection `i` until the stop.
pub async fn run(ctx: Arc<Ctx>, i: u64) -> Outcome {
    let uid = ctx.plan.uid(i);
    let role = ctx.plan.role(i);
    let Some(mut ws) = open_first(&ctx, i, &uid, role).await else {
        return Outcome::NeverOpened;
    };
    let mut t = Traffic::new(&ctx, i, uid, role);
    loop {
        match t.drive(&mut ws).await {
            End::Stop => {
                close(&ctx, ws).await;
                break;
            }
            End::Dropped(why) => {
                dropped(&ctx, &why);
                match reconnect(&ctx, i, &t.uid, role).await {
                    Some(new) => {
                        ws = new;
                        t.after_reconnect();
                    }
                    None => break,
                }
            }
        }
    }
    Outcome::Traffic(Box::new(t.log))
}

impl<'a> Traffic<'a> {
    fn new(ctx: &'a Ctx, i: u64, uid: String, role: Role) -> Self {
        let plan = &ctx.plan;
        let schedules = matches!(
            role,
            Role::Peer { .. } | Role::Member { .. } | Role::Customer { .. }
        );
        let period = (schedules && plan.per_conn_rate > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / plan.per_conn_rate));
        // Connection i starts i/rate into the first period, so that the sends of all
        // connections interleave evenly at the total rate.
        let total_rate = plan.per_conn_rate * plan.senders as f64;
        let phase = match period {
            Some(p) if total_rate > 0.0 => {
                Duration::from_secs_f64((i as f64 / total_rate) % p.as_secs_f64())
            }
            _ => Duration::ZERO,
        };
        Traffic {
            ctx,
            i,
            uid,
            role,
            period,
            next_due: ctx.timeline.traffic_start + phase,
            log: TrafficLog::default(),
            acks: Vec::new(),
            queued: Vec::new(),
            receipts: Vec::new(),
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
                    bump(&self.ctx.stats.counts.sent);
                    timer.as_mut().reset(self.next_due.into());
                }
                _ = std::future::ready(()), if !self.acks.is_empty()
                    || !self.queued.is_empty()
                    || !self.receipts.is_empty() => {
                    if let Err(e) = self.flush_queued(ws).await {
                        return End::Dropped(e);
                    }
                }
            }
        }
    }

    /// Writes queued frames and read receipts, then one `ack` for every push read so
    /// far.
    async fn flush_queued(&mut self, ws: &mut Ws) -> Result<(), String> {
        for frame in std::mem::take(&mut self.queued) {
            ws.feed(WsMessage::text(frame))
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        let receipts = std::mem::take(&mut self.receipts);
        let written = receipts.len() as u64;
        for frame in receipts {
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
        ws.flush().await.map_err(|e| format!("write: {e}"))?;
        self.ctx
            .stats
            .counts
            .reads
            .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The next scheduled message; advances the schedule.
    fn next_message(&mut self) -> String {
        let intended = self.next_due;
        self.next_due += self.period.expect("only scheduled senders send");
        self.log.sent += 1;
        let n = self.log.sent;
        let t = self.ctx.clock.unix_us(intended);
        self.log.pending.insert(n, t);
        self.send_frame(n, t)
    }

    /// A shop agent's reply to `customer`, queued; its intended time is now.
    fn queue_reply(&mut self, customer: u64) {
        self.log.sent += 1;
        let n = self.log.sent;
        let t = self.ctx.clock.now_us();
        self.log.pending.insert(n, t);
        self.log.reply_to.insert(n, customer);
        let frame = self.send_frame(n, t);
        self.queued.push(frame);
        bump(&self.ctx.stats.counts.sent);
    }

    fn send_frame(&self, n: u64, t: u64) -> String {
        let plan = &self.ctx.plan;
        let mut req = SendRequest {
            cid: Some(n.to_string()),
            to: None,
            conv: None,
            shop: None,
            body: json!({ "id": format!("{}/{n}", self.uid), "t": t }),
        };
        match self.role {
            Role::Peer { peer } => req.to = Some(plan.uid(peer)),
            Role::Member { group } => {
                req.conv = Some(shared::ids::group_conv(&plan.group_name(group)));
            }
            Role::Customer { shop } => req.shop = Some(plan.shop_id(shop)),
            Role::ShopAgent { shop } => {
                let customer = self.log.reply_to.get(&n).copied().unwrap_or_default();
                req.conv = Some(shared::ids::service_conv(
                    &plan.shop_id(shop),
                    &plan.uid(customer),
                ));
            }
            Role::Idle | Role::Silent => unreachable!("silent roles never send"),
        }
        serde_json::to_string(&ClientFrame::Send(req)).expect("a send serializes")
    }

    /// After a reconnect: catch up on the inbox and resend what was not acknowledged.
    fn after_reconnect(&mut self) {
        self.acks.clear();
        // Replies queued and never written are in `pending` too: resent below.
        self.queued.clear();
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
                    bump(&stats.counts.acked);
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
                    bump(&stats.counts.refused);
                    stats.error(&format!("refused {}", code.as_str()), &message);
                } else {
                    bump(&stats.counts.server_errors);
                    stats.error(&format!("server {}", code.as_str()), &message);
                }
            }
            Ok(ServerFrame::Kick { reason }) => {
                bump(&stats.counts.kicks);
                stats.error("kick", &reason);
            }
            // Other members' read positions and typing, answers to recalls, and queue
            // places: the load sends no recall, and needs none of them.
            Ok(
                ServerFrame::Pong
                | ServerFrame::Read { .. }
                | ServerFrame::Typing { .. }
                | ServerFrame::Recalled { .. }
                | ServerFrame::Queue { .. },
            ) => {}
            Err(e) => {
                bump(&stats.counts.server_errors);
                stats.error("bad frame", &format!("{e}: {}", truncate(text, 200)));
            }
        }
    }

    fn on_push(&mut self, useq: u64, msg: &Message) {
        let stats = &self.ctx.stats;
        self.acks.push(useq);
        match self.log.device.record(useq) {
            Push::Retransmit => {
                bump(&stats.counts.retransmits);
                return;
            }
            Push::NewOutOfOrder => bump(&stats.counts.out_of_order),
            Push::New => {}
        }
        let plan = &self.ctx.plan;
        let id = msg
            .body
            .as_ref()
            .and_then(|b| b.get("id"))
            .and_then(Value::as_str)
            .and_then(|id| {
                let (who, n) = id.rsplit_once('/')?;
                Some((who, n.parse::<u64>().ok()?))
            });
        let sender = id
            .filter(|(who, _)| *who == msg.from)
            .and_then(|(who, n)| Some((plan.index_of(who)?, n)));
        let Some((sender, n)) = sender else {
            bump(&stats.counts.foreign);
            return;
        };
        if sender == self.i {
            if self.log.seen.entry(sender).or_default().insert(n) {
                bump(&stats.counts.echoed);
                stats.record_push(self.ctx.clock.now_us());
            } else {
                bump(&stats.counts.duplicated);
            }
            return;
        }
        if plan.unit_of(sender) != plan.unit_of(self.i) {
            bump(&stats.counts.foreign);
            return;
        }
        if !self.log.seen.entry(sender).or_default().insert(n) {
            bump(&stats.counts.duplicated);
            return;
        }
        bump(&stats.counts.delivered);
        if plan.read_receipts {
            let read = ClientFrame::Read {
                conv: msg.conv.clone(),
                seq: msg.seq,
            };
            self.receipts
                .push(serde_json::to_string(&read).expect("a read serializes"));
        }
        let now = self.ctx.clock.now_us();
        stats.record_push(now);
        if let Some(t) = msg
            .body
            .as_ref()
            .and_then(|b| b.get("t"))
            .and_then(Value::as_u64)
        {
            stats.record_latency(now.saturating_sub(t));
        }
        if matches!(self.role, Role::ShopAgent { .. })
            && matches!(plan.role(sender), Role::Customer { .. })
            && !self.ctx.stop.is_cancelled()
        {
            self.queue_reply(sender);
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The delivery check over this agent's units (every unit lives in one agent by
/// construction of the split). Losses count deliveries: a group message missing on
/// two members' devices is two.
pub fn check(plan: &AgentPlan, outcomes: &HashMap<u64, Outcome>) -> VerifyCounts {
    let log = |i: u64| match outcomes.get(&i) {
        Some(Outcome::Traffic(l)) => Some(&**l),
        _ => None,
    };
    let empty = SeqSet::new();
    let mut v = VerifyCounts::default();
    for s in plan.indices() {
        let Some(me) = log(s) else { continue };
        let sender = me.sender_log();
        v.unacked += sender.unacked.len() as u64;
        v.lost_echo += check_stream(&sender, me.seen_from(s).unwrap_or(&empty)).lost;
        let each = |r: u64, v: &mut VerifyCounts| match log(r) {
            Some(rl) => {
                let c = check_stream(&sender, rl.seen_from(s).unwrap_or(&empty));
                v.lost += c.lost;
                v.received_unacked += c.received_unacked;
            }
            // The recipient never connected: its inbox holds the messages for a
            // later sync; nothing was owed to a live device.
            None => v.undeliverable += sender.acked_count(),
        };
        match plan.role(s) {
            Role::Idle | Role::Silent => {}
            Role::Peer { peer } => each(peer, &mut v),
            Role::Member { group } => {
                for r in plan.unit_range(group).filter(|&r| r != s) {
                    each(r, &mut v);
                }
            }
            Role::Customer { shop } => {
                // Whichever agent the server assigned: one of them must have it.
                let agents: Vec<&TrafficLog> = plan.shop_agents_of(shop).filter_map(log).collect();
                for n in (1..=sender.sent).filter(|&n| sender.acked(n)) {
                    let got = agents
                        .iter()
                        .any(|a| a.seen_from(s).is_some_and(|seen| seen.contains(n)));
                    if got {
                        continue;
                    }
                    if agents.is_empty() {
                        v.undeliverable += 1;
                    } else {
                        v.lost += 1;
                    }
                }
            }
            Role::ShopAgent { .. } => {
                for n in (1..=sender.sent).filter(|&n| sender.acked(n)) {
                    let Some(&customer) = me.reply_to.get(&n) else {
                        continue;
                    };
                    match log(customer) {
                        Some(c) if c.seen_from(s).is_some_and(|seen| seen.contains(n)) => {}
                        Some(_) => v.lost += 1,
                        None => v.undeliverable += 1,
                    }
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Scenario;
    use crate::plan::{RunPlan, Target};

    fn plan(scenario: Scenario, connections: u64) -> AgentPlan {
        let p = RunPlan {
            run_id: "r".into(),
            scenario,
            targets: vec![Target::parse("http://127.0.0.1:1").unwrap()],
            token_secret: "s".parse().unwrap(),
            connections,
            ramp_per_s: 100.0,
            rate_per_s: 10.0,
            duration_ms: 1000,
            drain_ms: 1000,
            source_ips: Vec::new(),
            verify: true,
            connect_timeout_ms: 1000,
            heartbeat_ms: 0,
            read_buffer: 4096,
            spread: false,
            read_receipts: false,
            api: None,
            admin_token: None,
            group_size: 3,
            shop_size: 3,
            shop_agents: 2,
        };
        p.agent_plans(1).remove(0)
    }

    /// A log that sent `sent` messages, all acknowledged, and saw `seen`.
    fn log(sent: u64, seen: &[(u64, &[u64])]) -> Outcome {
        let mut l = TrafficLog {
            sent,
            ..Default::default()
        };
        for (sender, ns) in seen {
            let set = l.seen.entry(*sender).or_default();
            for n in *ns {
                set.insert(*n);
            }
        }
        Outcome::Traffic(Box::new(l))
    }

    #[test]
    fn group_losses_count_per_member_device() {
        let p = plan(Scenario::Group, 3);
        let mut outcomes = HashMap::new();
        // member 0 sent 2; member 1 saw both, member 2 only the first
        outcomes.insert(0, log(2, &[(0, &[1, 2])]));
        outcomes.insert(1, log(0, &[(0, &[1, 2])]));
        outcomes.insert(2, log(0, &[(0, &[1])]));
        let v = check(&p, &outcomes);
        assert_eq!((v.lost, v.lost_echo, v.undeliverable), (1, 0, 0));
        // a member that never connected is owed nothing
        outcomes.insert(2, Outcome::NeverOpened);
        let v = check(&p, &outcomes);
        assert_eq!((v.lost, v.undeliverable), (0, 2));
    }

    #[test]
    fn a_customer_message_needs_one_agent_and_a_reply_its_customer() {
        let p = plan(Scenario::Service, 3); // agents 0 and 1, customer 2
        let mut outcomes = HashMap::new();
        // the customer sent 3: agent 0 got 1 and 2, agent 1 got 3 (reassigned)
        outcomes.insert(2, log(3, &[(2, &[1, 2, 3]), (0, &[1])]));
        outcomes.insert(0, log(0, &[(2, &[1, 2])]));
        outcomes.insert(1, log(0, &[(2, &[3])]));
        assert_eq!(check(&p, &outcomes), VerifyCounts::default());
        // agent 0 replied twice to the customer, who saw only its first reply
        let mut agent = TrafficLog {
            sent: 2,
            ..Default::default()
        };
        agent.reply_to.insert(1, 2);
        agent.reply_to.insert(2, 2);
        agent.seen.entry(0).or_default().insert(1);
        agent.seen.entry(0).or_default().insert(2);
        agent.seen.entry(2).or_default().insert(1);
        agent.seen.entry(2).or_default().insert(2);
        outcomes.insert(0, Outcome::Traffic(Box::new(agent)));
        assert_eq!(check(&p, &outcomes).lost, 1);
        // a customer message no agent saw is lost
        outcomes.insert(1, log(0, &[]));
        assert_eq!(check(&p, &outcomes).lost, 2);
    }
}

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
//! With `--max-open` or `--close-after` (the service workflow), the shops' agents are
//! capped, each agent closes a conversation after K replies, conversations wait in the
//! shop's queue, and [`super::service`] keeps each connection's view of it: an agent
//! holds back pushes of conversations it does not hold until an event tells this
//! opening's messages from history, counts its open conversations against the cap, and
//! answers only K messages per opening; a customer measures its queue waits and knows
//! which agent owes each of its messages, which is what [`check`] then expects.
//!
//! A dropped connection reconnects (jittered bounded backoff), resends its
//! unacknowledged messages with the same `cid` (the server must not create them twice)
//! and catches up with `sync`; so does one that ends its own opening (`--lifetime`,
//! connection churn).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::ids::ConvRef;
use shared::protocol::{ClientFrame, Event, Message, SendRequest, ServerFrame};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::service::{AgentDesk, CustomerDesk, HeldBack, Owed};
use super::{
    Outcome, churn, churn_at, close, dropped, first_lifetime, open_first, reconnect, send_text,
    sleep_until_some,
};
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
    /// A customer's view of its conversation (service workflow).
    pub customer: Option<CustomerDesk>,
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
    /// Its opening's lifetime is over (`--lifetime`).
    Churn,
}

/// How a shop agent's close call went.
struct CloseDone {
    /// Whose conversation.
    customer: u64,
    /// imd's answer.
    outcome: Result<(), String>,
    /// From sending it to the answer.
    took: Duration,
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
    /// A shop agent's desk (service workflow).
    desk: Option<AgentDesk>,
    /// A shop agent's close calls in flight. Dropped, with the connection's task, at
    /// the end: the calls are aborted.
    closes: JoinSet<CloseDone>,
    /// A shop agent's token for its HTTP calls, minted at its first close.
    token: Option<String>,
}

/// Runs connection `i` until the stop.
pub async fn run(ctx: Arc<Ctx>, i: u64) -> Outcome {
    let uid = ctx.plan.uid(i);
    let role = ctx.plan.role(i);
    let Some(mut ws) = open_first(&ctx, i, &uid, role).await else {
        return Outcome::NeverOpened;
    };
    let mut t = Traffic::new(&ctx, i, uid, role);
    let lifetime = Duration::from_millis(ctx.plan.lifetime_ms);
    let mut this_time = first_lifetime(ctx.plan.lifetime_ms, i);
    loop {
        let next = match t.drive(&mut ws, churn_at(&ctx, this_time)).await {
            End::Stop => {
                close(&ctx, ws).await;
                break;
            }
            End::Dropped(why) => {
                dropped(&ctx, &why);
                reconnect(&ctx, i, &t.uid, role).await
            }
            End::Churn => churn(&ctx, ws, i, &t.uid, role).await,
        };
        match next {
            Some(new) => {
                ws = new;
                t.after_reconnect();
            }
            None => break,
        }
        this_time = this_time.map(|_| lifetime);
    }
    Outcome::Traffic(Box::new(t.finish()))
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
        let workflow = plan.workflow();
        let desk = (workflow && matches!(role, Role::ShopAgent { .. }))
            .then(|| AgentDesk::new(plan.max_open, plan.close_after));
        let customer =
            (workflow && matches!(role, Role::Customer { .. })).then(CustomerDesk::default);
        Traffic {
            ctx,
            i,
            uid,
            role,
            period,
            next_due: ctx.timeline.traffic_start + phase,
            log: TrafficLog {
                customer,
                ..TrafficLog::default()
            },
            acks: Vec::new(),
            queued: Vec::new(),
            receipts: Vec::new(),
            desk,
            closes: JoinSet::new(),
            token: None,
        }
    }

    /// The log at the end: what an agent still held back did reach its device.
    fn finish(mut self) -> TrafficLog {
        if let Some(desk) = self.desk.as_mut() {
            for h in desk.take_held_back() {
                self.log.seen.entry(h.sender).or_default().insert(h.n);
            }
        }
        self.log
    }

    async fn drive(&mut self, ws: &mut Ws, churn_at: Option<tokio::time::Instant>) -> End {
        let timer = tokio::time::sleep_until(self.next_due.into());
        tokio::pin!(timer);
        let churn = sleep_until_some(churn_at);
        tokio::pin!(churn);
        loop {
            let can_send = self.period.is_some() && self.next_due < self.ctx.timeline.traffic_end;
            tokio::select! {
                biased;
                _ = self.ctx.stop.cancelled() => return End::Stop,
                _ = &mut churn => return End::Churn,
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
                Some(done) = self.closes.join_next(), if !self.closes.is_empty() => {
                    self.close_done(done);
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
        bump(&self.ctx.stats.counts.replies);
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
        let ctx: &'a Ctx = self.ctx;
        let stats = &ctx.stats;
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(ServerFrame::Msg { useq, msg }) => self.on_push(useq, &msg, false),
            Ok(ServerFrame::Sent { cid, .. }) => {
                let n = cid.and_then(|c| c.parse::<u64>().ok());
                if let Some((n, t)) = n.and_then(|n| Some((n, self.log.pending.remove(&n)?))) {
                    bump(&stats.counts.acked);
                    stats.record_ack_latency(ctx.clock.now_us().saturating_sub(t));
                    self.reply_answered(n);
                }
            }
            Ok(ServerFrame::Synced { msgs, more, .. }) => {
                for item in &msgs {
                    self.on_push(item.useq, &item.msg, true);
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
                    self.reply_answered(n);
                } else {
                    bump(&stats.counts.server_errors);
                    stats.error(&format!("server {}", code.as_str()), &message);
                }
            }
            Ok(ServerFrame::Kick { reason }) => {
                bump(&stats.counts.kicks);
                stats.error("kick", &reason);
            }
            Ok(ServerFrame::Queue { position, .. }) => {
                // A customer's place in its shop's queue (service workflow).
                if self.log.customer.is_some() {
                    bump(&stats.service.queue_frames);
                }
                if let Some(c) = self.log.customer.as_mut()
                    && c.queue()
                {
                    stats
                        .service
                        .max_queue_position
                        .fetch_max(position, Ordering::Relaxed);
                }
            }
            // Other members' read positions and typing, and answers to recalls: the
            // load sends no recall, and needs none of them.
            Ok(
                ServerFrame::Pong
                | ServerFrame::Read { .. }
                | ServerFrame::Typing { .. }
                | ServerFrame::Recalled { .. },
            ) => {}
            Err(e) => {
                bump(&stats.counts.server_errors);
                stats.error("bad frame", &format!("{e}: {}", truncate(text, 200)));
            }
        }
    }

    /// A message pushed, or brought by a `sync` (`synced`).
    fn on_push(&mut self, useq: u64, msg: &Message, synced: bool) {
        let ctx: &'a Ctx = self.ctx;
        let stats = &ctx.stats;
        self.acks.push(useq);
        let seen = if synced {
            self.log.device.record_synced(useq)
        } else {
            self.log.device.record(useq)
        };
        match seen {
            Push::Retransmit => {
                bump(&stats.counts.retransmits);
                return;
            }
            Push::NewOutOfOrder => bump(&stats.counts.out_of_order),
            Push::New | Push::CaughtUp => {}
        }
        if let (true, Some(event)) = (ctx.plan.workflow(), &msg.event) {
            self.on_event(msg, event);
            return;
        }
        let plan = &ctx.plan;
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
        let t = msg
            .body
            .as_ref()
            .and_then(|b| b.get("t"))
            .and_then(Value::as_u64);
        if sender == self.i {
            if self.log.seen.entry(sender).or_default().insert(n) {
                bump(&stats.counts.echoed);
                stats.record_push(ctx.clock.now_us());
                if let Some(c) = self.log.customer.as_mut() {
                    c.own(n, t);
                }
            } else {
                bump(&stats.counts.duplicated);
            }
            return;
        }
        if plan.unit_of(sender) != plan.unit_of(self.i) {
            bump(&stats.counts.foreign);
            return;
        }
        // An agent holds back what comes of a conversation it does not hold, until an
        // event says whether it is this opening's or history.
        if let Some(desk) = self.desk.as_mut()
            && let Some(customer) = customer_of(plan, &msg.conv)
            && !desk.holds(customer)
        {
            desk.hold_back(
                customer,
                HeldBack {
                    sender,
                    n,
                    t,
                    conv: msg.conv.clone(),
                    seq: msg.seq,
                },
            );
            return;
        }
        self.deliver(sender, n, t, &msg.conv, msg.seq, false);
    }

    /// A first push of message `n` of `sender` (of this unit, not this connection),
    /// intended at `t`, at `seq` of `conv`: counted, checked, timed (unless it came
    /// with an assignment, when its time includes the queue wait), receipted, and
    /// answered by a shop agent.
    fn deliver(
        &mut self,
        sender: u64,
        n: u64,
        t: Option<u64>,
        conv: &str,
        seq: u64,
        at_assignment: bool,
    ) {
        let ctx: &'a Ctx = self.ctx;
        let stats = &ctx.stats;
        let plan = &ctx.plan;
        if !self.log.seen.entry(sender).or_default().insert(n) {
            bump(&stats.counts.duplicated);
            return;
        }
        bump(&stats.counts.delivered);
        if plan.read_receipts {
            let read = ClientFrame::Read {
                conv: conv.to_owned(),
                seq,
            };
            self.receipts
                .push(serde_json::to_string(&read).expect("a read serializes"));
        }
        let now = ctx.clock.now_us();
        stats.record_push(now);
        if at_assignment {
            bump(&stats.service.at_assignment);
        } else if let Some(t) = t {
            stats.record_latency(now.saturating_sub(t));
        }
        if matches!(self.role, Role::ShopAgent { .. })
            && matches!(plan.role(sender), Role::Customer { .. })
            && !ctx.stop.is_cancelled()
            && self.desk.as_mut().is_none_or(|d| d.may_reply(sender))
        {
            self.queue_reply(sender);
        }
    }

    /// An event message of a service conversation (service workflow): the customer
    /// learns whom its conversation is with, and how long it waited; an agent counts
    /// what it holds, and learns what it held back.
    fn on_event(&mut self, msg: &Message, event: &Value) {
        let ctx: &'a Ctx = self.ctx;
        let stats = &ctx.stats;
        let plan = &ctx.plan;
        let (Some(customer), Ok(event)) = (
            customer_of(plan, &msg.conv),
            serde_json::from_value::<Event>(event.clone()),
        ) else {
            bump(&stats.counts.foreign);
            return;
        };
        match event {
            Event::Assigned { agent, previous } => {
                let agent = plan.index_of(&agent);
                if let (Some(c), Some(a)) = (self.log.customer.as_mut(), agent) {
                    bump(&stats.service.assignments);
                    if let Some(wait) = c.assigned(a, ctx.clock.now_us()) {
                        bump(&stats.service.queued);
                        stats.service.record_queue_wait(wait);
                    }
                }
                let Some(desk) = self.desk.as_mut() else {
                    return;
                };
                if agent == Some(self.i) {
                    let (held, over) = desk.assigned(customer);
                    stats
                        .service
                        .max_open_per_agent
                        .fetch_max(desk.caps.max(), Ordering::Relaxed);
                    if let Some(open) = over {
                        bump(&stats.service.over_cap);
                        stats.error(
                            "over cap",
                            &format!(
                                "{} held {open} open conversations (--max-open {}) once {} \
                                 was assigned to it (seq {})",
                                self.uid, plan.max_open, msg.conv, msg.seq
                            ),
                        );
                    }
                    for h in held {
                        self.deliver(h.sender, h.n, h.t, &h.conv, h.seq, true);
                    }
                } else if previous.as_deref() == Some(self.uid.as_str()) {
                    desk.taken_away(customer);
                }
            }
            Event::Closed => {
                if let Some(c) = self.log.customer.as_mut() {
                    c.closed();
                }
                if let Some(desk) = self.desk.as_mut() {
                    let history = desk.closed(customer);
                    stats.service.history.fetch_add(history, Ordering::Relaxed);
                }
            }
            // Recalls and ratings change nothing here.
            _ => {}
        }
    }

    /// imd answered reply `n` (if it was one): a shop agent may now close its
    /// conversation (`--close-after`).
    fn reply_answered(&mut self, n: u64) {
        let (Some(desk), Some(&customer)) = (self.desk.as_mut(), self.log.reply_to.get(&n)) else {
            return;
        };
        if desk.reply_answered(customer) {
            self.start_close(customer);
        }
    }

    /// Sends the close of `customer`'s conversation, as its agent, in the background.
    fn start_close(&mut self, customer: u64) {
        let ctx: &'a Ctx = self.ctx;
        let Role::ShopAgent { shop } = self.role else {
            return;
        };
        let token = match &self.token {
            Some(t) => t.clone(),
            None => match ctx.minter.token(&self.uid, &["agent"]) {
                Ok(t) => self.token.insert(t).clone(),
                Err(e) => {
                    bump(&ctx.stats.service.close_errors);
                    ctx.stats.error("close", &format!("{e:#}"));
                    return;
                }
            },
        };
        let conv = shared::ids::service_conv(&ctx.plan.shop_id(shop), &ctx.plan.uid(customer));
        let call = super::service::close(ctx.http.clone(), ctx.http_base(self.i), conv, token);
        self.closes.spawn(async move {
            let started = Instant::now();
            let outcome = call.await;
            CloseDone {
                customer,
                outcome,
                took: started.elapsed(),
            }
        });
    }

    /// A close call ended.
    fn close_done(&mut self, done: Result<CloseDone, tokio::task::JoinError>) {
        let stats = &self.ctx.stats;
        match done {
            Ok(CloseDone {
                outcome: Ok(()),
                took,
                ..
            }) => {
                bump(&stats.service.closes);
                stats.service.record_close_latency(took.as_micros() as u64);
            }
            Ok(CloseDone {
                customer,
                outcome: Err(e),
                ..
            }) => {
                bump(&stats.service.close_errors);
                stats.error("close", &e);
                if let Some(desk) = self.desk.as_mut() {
                    desk.close_failed(customer);
                }
            }
            Err(e) => {
                bump(&stats.service.close_errors);
                stats.error("close", &format!("close task: {e}"));
            }
        }
    }
}

/// The customer (global index) of a service conversation of this run.
fn customer_of(plan: &AgentPlan, conv: &str) -> Option<u64> {
    match ConvRef::parse(conv)? {
        ConvRef::Service { customer, .. } => plan.index_of(customer),
        _ => None,
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
                let agents: Vec<&TrafficLog> = plan.shop_agents_of(shop).filter_map(log).collect();
                for n in (1..=sender.sent).filter(|&n| sender.acked(n)) {
                    // The workflow's customer knows which agent owes it (the one its
                    // conversation was with, or went to after waiting); otherwise
                    // whichever agent the server assigned: one of them must have it.
                    let owed = me.customer.as_ref().map_or(Owed::Unknown, |c| c.owed(n));
                    match owed {
                        Owed::Agent(a) => {
                            let has = |l: &TrafficLog| {
                                l.seen_from(s).is_some_and(|seen| seen.contains(n))
                            };
                            match log(a) {
                                Some(al) if has(al) => {}
                                Some(_) if agents.iter().any(|l| has(l)) => v.misrouted += 1,
                                Some(_) => v.lost += 1,
                                None => v.undeliverable += 1,
                            }
                        }
                        Owed::Waiting => v.waiting += 1,
                        Owed::Unknown => {
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
            lifetime_ms: 0,
            reconnect_max_ms: 2000,
            read_buffer: 4096,
            spread: false,
            read_receipts: false,
            api: None,
            admin_token: None,
            group_size: 3,
            shop_size: 3,
            shop_agents: 2,
            max_open: 0,
            close_after: 0,
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

    #[test]
    fn a_workflow_customer_message_is_owed_to_the_agent_its_conversation_was_with() {
        let p = plan(Scenario::Service, 3); // agents 0 and 1, customer 2
        // message 1 opens the conversation, agent 0 takes it, message 2 follows; it
        // is closed, message 3 opens it again and still waits at the end
        let mut desk = CustomerDesk::default();
        desk.own(1, Some(1));
        desk.assigned(0, 5);
        desk.own(2, Some(6));
        desk.closed();
        assert!(desk.queue());
        desk.own(3, Some(9));
        let mut customer = TrafficLog {
            sent: 3,
            customer: Some(desk),
            ..Default::default()
        };
        for n in 1..=3 {
            customer.seen.entry(2).or_default().insert(n);
        }
        let mut outcomes = HashMap::new();
        outcomes.insert(2, Outcome::Traffic(Box::new(customer)));
        outcomes.insert(0, log(0, &[(2, &[1, 2])]));
        outcomes.insert(1, log(0, &[]));
        let v = check(&p, &outcomes);
        assert_eq!((v.lost, v.misrouted, v.waiting), (0, 0, 1));
        // message 2 reached agent 1 instead: events and delivery disagree
        outcomes.insert(0, log(0, &[(2, &[1])]));
        outcomes.insert(1, log(0, &[(2, &[2])]));
        let v = check(&p, &outcomes);
        assert_eq!((v.lost, v.misrouted), (0, 1));
        // no agent has it: lost, whoever had the rest
        outcomes.insert(1, log(0, &[]));
        let v = check(&p, &outcomes);
        assert_eq!((v.lost, v.misrouted), (1, 0));
    }
}

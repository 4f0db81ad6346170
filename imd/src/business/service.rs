//! Customer-service conversations: who gets a customer, when, and what everyone is
//! told.
//!
//! - An agent is *eligible* for a new conversation when it is online, `available`
//!   (every agent is when it connects; `away` keeps its conversations but takes no new
//!   one) and below its shop's `max_open`.
//! - A customer's first message opens `s:{shop}~{customer}`. If nobody waits before it
//!   and an agent is eligible, the least loaded one gets it (ties: the one assigned
//!   longest ago); otherwise it waits in the shop's queue, first come first served,
//!   and its customer's devices get `queue` frames with its place.
//! - When an agent becomes eligible (connects, turns available, a conversation of
//!   theirs is closed or handed over, the cap is raised), the shop's queue is drained
//!   in order ([`CustomerService::drain`]).
//! - The assignment sticks while its agent is online, away or not. If the agent is
//!   offline when the customer writes again, an eligible colleague takes over and
//!   receives the history; if there is none, it stays with the offline agent.
//! - Any agent of the shop may read the conversation and reply into it; a reply to a
//!   waiting or closed conversation assigns it to the replying agent (within the cap).
//! - The shop may send a welcome message when a conversation opens, and an away
//!   message when it opens with no agent available; both come from `shop:{shop}`.
//!
//! Every decision over a conversation holds its decision lock ([`Locks`]) from before
//! it reads the state until its last op is committed, on whichever node it runs; the
//! caps are checked by the store atomically with each assignment, and the queue order
//! too ([`Admit`]). So two nodes never give one conversation to two agents, an agent
//! never goes over its cap, and an assigned agent never misses a message of its
//! conversation in its inbox.

use std::collections::HashMap;
use std::sync::Arc;

use shared::ids::{ConvRef, service_conv};
use shared::protocol::{Event, ServerFrame};
use shared::time::now_ms;

use super::assignment::{Candidate, choose};
use super::locks::{Held, Locks};
use super::stats;
use super::{Deliver, Error, Presence};
use crate::store::{
    Admit, Assigned, Content, DirectoryStore, NewMessage, Op, Rated, ServiceState, Shop,
};

/// How many times a decision picks again when the store refuses its pick (another node
/// filled the agent, or took the head of the queue) before it leaves the conversation
/// waiting.
const PICK_TRIES: usize = 8;
/// The most conversations one drain assigns; a drain that stops there leaves the rest
/// to the next event that drains.
const DRAIN_MAX: usize = 1_000;

/// How many times one drain reads the queue again after the store said its head moved.
const DRAIN_REREADS: usize = 3;

/// What an attempt to assign a conversation came to.
enum Pick {
    /// To this agent.
    Assigned(String),
    /// Nobody is eligible.
    Nobody,
    /// Older conversations wait before it.
    OutOfTurn,
}

/// The sender of a shop's own messages (welcome, away): `shop:{shop}`. The gateway
/// refuses tokens whose uid starts with `shop:`, so nobody else speaks as one.
pub fn shop_sender(shop: &str) -> String {
    format!("shop:{shop}")
}

/// What a decision must commit, with the conversation's decision lock held until the
/// last of it is committed ([`Decision::take_lock`] hands the lock to that op's done).
#[derive(Debug, Default)]
pub struct Decision {
    /// Joins to commit, in order, before the message that caused them (if any).
    pub ops: Vec<Op>,
    /// Event messages (`assigned`, `closed`) and the shop's messages, to commit after
    /// that message.
    pub events: Vec<Op>,
    /// A shop whose queue must be drained once this decision's lock is gone: the
    /// conversation entered the queue, and an agent may have become eligible since
    /// the decision looked (or was eligible, and the queue's head was taken meanwhile).
    pub drain_after: Option<String>,
    held: Option<Held>,
}

impl Decision {
    fn new(held: Held) -> Self {
        Self {
            ops: Vec::new(),
            events: Vec::new(),
            drain_after: None,
            held: Some(held),
        }
    }

    /// Adds an assignment: the agent's join, and its `assigned` event.
    fn push(&mut self, (join, event): (Op, Op)) {
        self.ops.push(join);
        self.events.push(event);
    }

    /// The decision lock, to drop once the last op is committed.
    pub fn take_lock(&mut self) -> Option<Held> {
        self.held.take()
    }
}

/// An event message of `conv`, from `from`, to `members`.
pub(crate) fn event_message(
    conv: &str,
    from: &str,
    event: Event,
    members: Vec<String>,
) -> NewMessage {
    message(conv, from, Content::Event(event), members)
}

fn message(conv: &str, from: &str, content: Content, members: Vec<String>) -> NewMessage {
    NewMessage {
        id: uuid::Uuid::now_v7().to_string(),
        conv: conv.to_owned(),
        from: from.to_owned(),
        cid: None,
        content,
        ts: now_ms(),
        members,
    }
}

/// [`event_message`] as the op that commits it.
fn event(conv: &str, from: &str, e: Event, members: Vec<String>) -> Op {
    Op::Message(event_message(conv, from, e, members))
}

/// The customer of a service conversation id.
fn customer_of(conv: &str) -> Option<&str> {
    match ConvRef::parse(conv) {
        Some(ConvRef::Service { customer, .. }) => Some(customer),
        _ => None,
    }
}

/// The shop of a service conversation id.
fn shop_of(conv: &str) -> Result<&str, Error> {
    match ConvRef::parse(conv) {
        Some(ConvRef::Service { shop, .. }) => Ok(shop),
        _ => Err(Error::NotFound(format!(
            "no such service conversation {conv:?}"
        ))),
    }
}

/// A close under way (see [`CustomerService::close_begin`]): the conversation's lock,
/// held until the store has closed it, and its `closed` event to commit first.
#[derive(Debug)]
pub struct Closing {
    conv: String,
    shop: String,
    had_agent: bool,
    /// The `closed` event, without the lock (it stays here).
    pub event: Decision,
    held: Held,
}

/// Where a service message goes, and which joins must commit before it.
#[derive(Debug)]
pub struct Route {
    /// The conversation.
    pub conv: String,
    /// Who gets the message in their inbox.
    pub recipients: Vec<String>,
    /// Joins of newly assigned agents, to commit before the message, the events after
    /// it, and the lock.
    pub joins: Decision,
    /// Whether the message may be the first agent answer since the conversation opened
    /// (see [`CustomerService::answered`]).
    pub answer: bool,
}

#[derive(Debug, Default)]
struct Turns {
    clock: u64,
    last: HashMap<String, u64>,
}

/// One agent as the shop's figures see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    /// The agent.
    pub uid: String,
    /// Whether any of its devices is connected.
    pub online: bool,
    /// Whether it is marked away.
    pub away: bool,
    /// Its open conversations.
    pub open: u64,
}

/// The customer-service rules.
pub struct CustomerService {
    dir: Arc<dyn DirectoryStore>,
    presence: Arc<dyn Presence>,
    deliver: Arc<dyn Deliver>,
    locks: Locks,
    /// The tie-break record; held only for the moment of a pick. Per process: in a
    /// cluster, equally loaded agents take turns per node.
    turns: std::sync::Mutex<Turns>,
    /// Shops whose queue places are being sent, and the lowest place that changed
    /// since the pass began (`usize::MAX`: none); see `tell_queue`.
    telling: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// One pass of `CustomerService::tell_queue`: each customer waiting in `shop`'s queue
/// from place `from` on gets its place.
async fn send_places(dir: &dyn DirectoryStore, deliver: &dyn Deliver, shop: &str, from: usize) {
    let waiting = match dir.waiting(shop).await {
        Ok(w) => w,
        Err(e) => {
            // Their next read of the conversation shows their place.
            tracing::warn!(shop, error = %e, "queue places not sent");
            return;
        }
    };
    for (i, conv) in waiting.iter().enumerate().skip(from) {
        let Some(customer) = customer_of(conv) else {
            continue;
        };
        let frame = ServerFrame::Queue {
            conv: conv.clone(),
            position: i as u64 + 1,
        };
        match serde_json::to_string(&frame) {
            Ok(json) => deliver.notify(vec![customer.to_owned()], json),
            Err(e) => tracing::error!(error = %e, "queue frame not encoded"),
        }
    }
}

fn recipients(of: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(of.len());
    for uid in of {
        if !out.iter().any(|u| u == uid) {
            out.push((*uid).to_owned());
        }
    }
    out
}

impl AgentState {
    /// As the shop's figures and its agents show it.
    pub fn view(self) -> shared::protocol::ShopAgent {
        shared::protocol::ShopAgent {
            available: self.online && !self.away,
            online: self.online,
            uid: self.uid,
            open: self.open,
        }
    }
}

impl CustomerService {
    /// Rules over `dir`, asking `presence` who is online and telling customers their
    /// place in the queue through `deliver`.
    pub fn new(
        dir: Arc<dyn DirectoryStore>,
        presence: Arc<dyn Presence>,
        deliver: Arc<dyn Deliver>,
    ) -> Self {
        Self {
            locks: Locks::new(dir.clone()),
            dir,
            presence,
            deliver,
            turns: std::sync::Mutex::new(Turns::default()),
            telling: Arc::default(),
        }
    }

    async fn lock(&self, conv: &str) -> Result<Held, Error> {
        Ok(self.locks.lock(conv).await?)
    }

    async fn shop(&self, shop: &str) -> Result<Shop, Error> {
        self.dir
            .shop(shop)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such shop {shop:?}")))
    }

    /// Each agent of `shop`: online, away, open conversations.
    pub async fn agents(&self, shop: &Shop) -> Result<Vec<AgentState>, Error> {
        let loads = self.dir.agent_loads(&shop.agents).await?;
        let away = self.dir.away(&shop.agents).await?;
        let mut out = Vec::with_capacity(shop.agents.len());
        for ((uid, open), away) in shop.agents.iter().zip(loads).zip(away) {
            out.push(AgentState {
                online: self.presence.online(uid).await,
                uid: uid.clone(),
                away,
                open,
            });
        }
        Ok(out)
    }

    /// Picks an eligible agent of `shop` (other than `not`), and records the pick for
    /// the tie-break.
    async fn pick(&self, shop: &Shop, not: Option<&str>) -> Result<Option<String>, Error> {
        let agents = self.agents(shop).await?;
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        let cap = u64::from(shop.max_open);
        let candidates: Vec<Candidate<'_>> = agents
            .iter()
            .filter(|a| Some(a.uid.as_str()) != not)
            .map(|a| Candidate {
                uid: &a.uid,
                online: a.online && !a.away && (cap == 0 || a.open < cap),
                load: a.open,
                last_assigned: turns.last.get(&a.uid).copied().unwrap_or(0),
            })
            .collect();
        let chosen = choose(&candidates).map(str::to_owned);
        if let Some(a) = &chosen {
            turns.clock += 1;
            let clock = turns.clock;
            turns.last.insert(a.clone(), clock);
        }
        Ok(chosen)
    }

    /// Whether any agent of `shop` is online and available (at its cap or not).
    async fn anyone_available(&self, shop: &Shop) -> Result<bool, Error> {
        Ok(self.agents(shop).await?.iter().any(|a| a.online && !a.away))
    }

    /// Assigns `conv` to an eligible agent of `shop` (other than `not`), picking again
    /// when the store refuses a pick; the agent, or `None` when nobody is eligible or
    /// `conv` is not the next in turn.
    async fn assign_eligible(
        &self,
        conv: &str,
        shop_id: &str,
        shop: &Shop,
        not: Option<&str>,
    ) -> Result<Option<String>, Error> {
        Ok(match self.assign_in_turn(conv, shop_id, shop, not).await? {
            Pick::Assigned(agent) => Some(agent),
            Pick::Nobody | Pick::OutOfTurn => None,
        })
    }

    /// [`CustomerService::assign_eligible`], telling why nobody was assigned.
    async fn assign_in_turn(
        &self,
        conv: &str,
        shop_id: &str,
        shop: &Shop,
        not: Option<&str>,
    ) -> Result<Pick, Error> {
        let admit = Admit {
            max_open: shop.max_open,
            in_turn: true,
        };
        for _ in 0..PICK_TRIES {
            let Some(agent) = self.pick(shop, not).await? else {
                return Ok(Pick::Nobody);
            };
            match self.dir.assign(conv, shop_id, Some(&agent), admit).await? {
                Assigned::Done => {
                    tracing::debug!(conv, agent, "conversation assigned");
                    return Ok(Pick::Assigned(agent));
                }
                Assigned::OutOfTurn => return Ok(Pick::OutOfTurn),
                // Filled by another node since the loads were read: pick again.
                Assigned::Full => {}
            }
        }
        Ok(Pick::Nobody)
    }

    /// `conv`'s place in `shop`'s queue (0-based), if it waits there.
    async fn queue_place(&self, shop: &str, conv: &str) -> Result<Option<usize>, Error> {
        let waiting = self.dir.waiting(shop).await?;
        Ok(waiting.iter().position(|c| c == conv))
    }

    /// Assigns `conv` to the agent named (an agent answering it, a transfer): out of
    /// queue order, but within the shop's cap (409 at the cap). If it was waiting,
    /// the customers behind it move up.
    async fn assign_named(
        &self,
        conv: &str,
        shop_id: &str,
        shop: &Shop,
        agent: &str,
        before: &ServiceState,
    ) -> Result<(), Error> {
        let place = if before.open && before.agent.is_none() {
            self.queue_place(shop_id, conv).await?
        } else {
            None
        };
        let admit = Admit {
            max_open: shop.max_open,
            in_turn: false,
        };
        if self.dir.assign(conv, shop_id, Some(agent), admit).await? != Assigned::Done {
            return Err(Error::Conflict(format!(
                "{agent:?} holds {} open conversations, the cap of shop {shop_id:?}",
                shop.max_open
            )));
        }
        if let Some(i) = place {
            self.tell_queue(shop_id, i).await;
        }
        Ok(())
    }

    /// The join of `agent` and its `assigned` event (to the customer, the agent, and
    /// the agent it was taken from, if any, so that its devices learn it is no longer
    /// theirs). `before` is the state the conversation had.
    fn assigned(conv: &str, agent: &str, before: Option<&ServiceState>) -> (Op, Op) {
        let previous = before
            .filter(|s| s.open)
            .and_then(|s| s.agent.clone())
            .filter(|p| p != agent);
        let customer = customer_of(conv).unwrap_or(agent);
        let mut members = recipients(&[customer, agent]);
        if let Some(p) = &previous {
            members.push(p.clone());
        }
        let join = Op::Join {
            conv: conv.to_owned(),
            uid: agent.to_owned(),
        };
        let assigned = Event::Assigned {
            agent: agent.to_owned(),
            previous,
        };
        (join, event(conv, agent, assigned, members))
    }

    /// A customer writes to `shop` (with `"shop"`, or `"conv"` of their own conversation).
    pub async fn from_customer(&self, customer: &str, shop_id: &str) -> Result<Route, Error> {
        let shop = self.shop(shop_id).await?;
        let conv = service_conv(shop_id, customer);
        let held = self.lock(&conv).await?;
        let mut decision = Decision::new(held);
        let state = self.dir.service(&conv).await?;
        let open = state.as_ref().filter(|s| s.open);
        let current = open
            .and_then(|s| s.agent.clone())
            .filter(|a| shop.agents.contains(a));
        let route = |recipients, joins| Route {
            conv: conv.clone(),
            recipients,
            joins,
            answer: false,
        };
        if let Some(a) = &current {
            if self.presence.online(a).await {
                return Ok(route(recipients(&[customer, a]), decision));
            }
            // Its agent is gone: an eligible colleague takes over, or it stays.
            return Ok(
                match self.assign_eligible(&conv, shop_id, &shop, Some(a)).await? {
                    Some(b) => {
                        decision.push(Self::assigned(&conv, &b, state.as_ref()));
                        route(recipients(&[customer, &b]), decision)
                    }
                    None => route(recipients(&[customer, a]), decision),
                },
            );
        }
        let opens = open.is_none();
        match self.assign_eligible(&conv, shop_id, &shop, None).await? {
            Some(b) => {
                let waited = open.is_some_and(|s| s.agent.is_none());
                decision.push(Self::assigned(&conv, &b, state.as_ref()));
                if opens {
                    self.greet(&mut decision, &conv, shop_id, &shop, &[customer, &b]);
                }
                if waited {
                    // It was at the head of the queue: everyone behind moves up.
                    self.tell_queue(shop_id, 0).await;
                }
                Ok(route(recipients(&[customer, &b]), decision))
            }
            None if opens => {
                // It opens waiting, behind whoever waits already.
                self.dir.assign(&conv, shop_id, None, Admit::ANY).await?;
                self.greet(&mut decision, &conv, shop_id, &shop, &[customer]);
                if let Some(body) = &shop.away
                    && !self.anyone_available(&shop).await?
                {
                    let from = shop_sender(shop_id);
                    decision.events.push(Op::Message(message(
                        &conv,
                        &from,
                        Content::Body(body.clone()),
                        vec![customer.to_owned()],
                    )));
                }
                if let Some(i) = self.queue_place(shop_id, &conv).await? {
                    self.tell_queue(shop_id, i).await;
                }
                decision.drain_after = Some(shop_id.to_owned());
                Ok(route(recipients(&[customer]), decision))
            }
            // Waiting, and still not its turn.
            None => Ok(route(recipients(&[customer]), decision)),
        }
    }

    /// The shop's welcome message, after the message that opened `conv`.
    fn greet(&self, decision: &mut Decision, conv: &str, shop_id: &str, shop: &Shop, to: &[&str]) {
        if let Some(body) = &shop.welcome {
            decision.events.push(Op::Message(message(
                conv,
                &shop_sender(shop_id),
                Content::Body(body.clone()),
                recipients(to),
            )));
        }
    }

    /// Someone writes into `s:{shop}~{customer}` with `"conv"`.
    pub async fn from_member(
        &self,
        uid: &str,
        shop_id: &str,
        customer: &str,
    ) -> Result<Route, Error> {
        if uid == customer {
            return self.from_customer(customer, shop_id).await;
        }
        let shop = self.shop(shop_id).await?;
        if !shop.agents.iter().any(|a| a == uid) {
            return Err(Error::Forbidden(format!(
                "not an agent of shop {shop_id:?}"
            )));
        }
        let conv = service_conv(shop_id, customer);
        let held = self.lock(&conv).await?;
        let mut decision = Decision::new(held);
        let state = self
            .dir
            .service(&conv)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such conversation {conv:?}")))?;
        let route = |recipients, joins, answer| Route {
            conv: conv.clone(),
            recipients,
            joins,
            answer,
        };
        match state.agent.clone().filter(|_| state.open) {
            Some(current) => {
                // A colleague of the assigned agent joins before its reply lands in its
                // inbox: an inbox entry without the history before it would hide that
                // history from any later join (a join copies what comes after the last
                // message the member has).
                if current != uid {
                    decision.ops.push(Op::Join {
                        conv: conv.clone(),
                        uid: uid.to_owned(),
                    });
                }
                let to = recipients(&[customer, &current, uid]);
                Ok(route(to, decision, !state.answered))
            }
            // Waiting or closed: the agent who answers takes it, within the cap.
            None => {
                self.assign_named(&conv, shop_id, &shop, uid, &state)
                    .await?;
                decision.push(Self::assigned(&conv, uid, Some(&state)));
                // An answer to a waiting conversation is its first response; one that
                // opens a closed conversation again is not an answer to anything.
                Ok(route(recipients(&[customer, uid]), decision, state.open))
            }
        }
    }

    /// Counts an agent's answer to `conv`: its first one since the conversation opened
    /// is the shop's first-response time.
    pub async fn answered(&self, conv: &str) -> Result<(), Error> {
        if let Some(ms) = self.dir.first_reply(conv).await? {
            let shop = shop_of(conv)?;
            self.dir
                .count_first_response(shop, stats::bucket_of(ms))
                .await?;
        }
        Ok(())
    }

    /// Whether `uid` is an agent of `shop` (404 for an unknown shop).
    pub async fn is_agent(&self, uid: &str, shop: &str) -> Result<bool, Error> {
        Ok(self.shop(shop).await?.agents.iter().any(|a| a == uid))
    }

    /// Who a note on `s:{shop}~{customer}` goes to: the conversation's assigned agent
    /// while it is open, and `writer`, who must be an agent of the shop. Other agents
    /// read the notes' history; the customer never is a member.
    pub async fn note_takers(
        &self,
        shop: &str,
        customer: &str,
        writer: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        if let Some(w) = writer
            && !self.is_agent(w, shop).await?
        {
            return Err(Error::Forbidden(format!(
                "only agents of shop {shop:?} write its notes"
            )));
        }
        let state = self.dir.service(&service_conv(shop, customer)).await?;
        let agent = state.filter(|s| s.open).and_then(|s| s.agent);
        let mut out: Vec<String> = writer.map(str::to_owned).into_iter().collect();
        out.extend(agent.filter(|a| Some(a.as_str()) != writer && a != customer));
        Ok(out)
    }

    /// Whether `uid` may read `s:{shop}~{customer}`: the customer and the shop's agents.
    pub async fn can_read(&self, uid: &str, shop: &str, customer: &str) -> Result<bool, Error> {
        if uid == customer {
            return Ok(true);
        }
        Ok(self.shop(shop).await?.agents.iter().any(|a| a == uid))
    }

    /// Sends each customer waiting in `shop`'s queue from place `from` (0-based) on its
    /// place, as a `queue` frame, in a task of its own. One pass per shop at a time: a
    /// change while a pass runs makes that pass go round once more (from the lowest
    /// place changed), so every customer whose place changed gets a frame with its place
    /// as it is then, and a burst of changes costs one more pass, not one each.
    async fn tell_queue(&self, shop: &str, from: usize) {
        {
            let mut telling = self.telling.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(again) = telling.get_mut(shop) {
                *again = (*again).min(from);
                return;
            }
            telling.insert(shop.to_owned(), usize::MAX);
        }
        let (dir, deliver, telling) =
            (self.dir.clone(), self.deliver.clone(), self.telling.clone());
        let shop = shop.to_owned();
        tokio::spawn(async move {
            let mut from = from;
            loop {
                send_places(dir.as_ref(), deliver.as_ref(), &shop, from).await;
                let mut t = telling.lock().unwrap_or_else(|e| e.into_inner());
                match t.get(&shop).copied() {
                    Some(again) if again != usize::MAX => {
                        t.insert(shop.clone(), usize::MAX);
                        from = again;
                    }
                    _ => {
                        // Under the lock: a change from now on starts a pass of its own.
                        t.remove(&shop);
                        return;
                    }
                }
            }
        });
    }

    /// Hands `shop`'s waiting conversations, oldest first, to eligible agents, until
    /// the queue is empty or nobody is eligible. One decision per conversation, each
    /// with its lock.
    pub async fn drain(&self, shop_id: &str) -> Result<Vec<Decision>, Error> {
        let Some(shop) = self.dir.shop(shop_id).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut moved = false;
        // The queue is read once, and taken in its order; the store refuses a
        // conversation that is not at the head (another node took the one before it
        // meanwhile), and then the queue is read again, a few times at most. Whatever
        // joins the queue after the read drains by itself (`Decision::drain_after`).
        let mut queue: std::collections::VecDeque<String> = self.dir.waiting(shop_id).await?.into();
        let mut rereads = 0;
        for _ in 0..DRAIN_MAX {
            let Some(head) = queue.pop_front() else {
                break;
            };
            let held = self.lock(&head).await?;
            let state = self.dir.service(&head).await?;
            if !state.as_ref().is_some_and(|s| s.open && s.agent.is_none()) {
                // Assigned or closed while this waited for the lock.
                continue;
            }
            match self.assign_in_turn(&head, shop_id, &shop, None).await? {
                Pick::Assigned(agent) => {
                    let mut decision = Decision::new(held);
                    decision.push(Self::assigned(&head, &agent, state.as_ref()));
                    out.push(decision);
                    moved = true;
                }
                Pick::Nobody => break,
                Pick::OutOfTurn if rereads < DRAIN_REREADS => {
                    rereads += 1;
                    drop(held);
                    queue = self.dir.waiting(shop_id).await?.into();
                }
                Pick::OutOfTurn => break,
            }
        }
        if moved {
            self.tell_queue(shop_id, 0).await;
        }
        Ok(out)
    }

    /// [`CustomerService::drain`] for each shop `uid` is an agent of.
    pub async fn drain_for(&self, uid: &str) -> Result<Vec<Decision>, Error> {
        let mut out = Vec::new();
        for shop in self.dir.agent_shops(uid).await? {
            out.append(&mut self.drain(&shop).await?);
        }
        Ok(out)
    }

    /// An agent came online: it takes waiting conversations of its shops.
    pub async fn agent_online(&self, uid: &str) -> Result<Vec<Decision>, Error> {
        self.drain_for(uid).await
    }

    /// Marks `uid` away or available, and nothing else.
    pub async fn set_away(&self, uid: &str, away: bool) -> Result<(), Error> {
        Ok(self.dir.set_away(uid, away).await?)
    }

    /// An agent sets its availability; available, it takes waiting conversations.
    pub async fn set_status(&self, uid: &str, away: bool) -> Result<Vec<Decision>, Error> {
        self.dir.set_away(uid, away).await?;
        if away {
            Ok(Vec::new())
        } else {
            self.drain_for(uid).await
        }
    }

    /// Hands `conv` to `agent` (an agent of its shop, below the cap), who joins it; the
    /// agent it was taken from may take a waiting one. `by`, when given, must be the
    /// assigned agent of the open conversation (an agent's handover; an operator's has
    /// none).
    pub async fn transfer(
        &self,
        conv: &str,
        agent: &str,
        by: Option<&str>,
    ) -> Result<Vec<Decision>, Error> {
        let shop_id = shop_of(conv)?;
        let shop = self.shop(shop_id).await?;
        if !shop.agents.iter().any(|a| a == agent) {
            return Err(Error::BadRequest(format!(
                "{agent:?} is not an agent of shop {shop_id:?}"
            )));
        }
        let held = self.lock(conv).await?;
        let Some(before) = self.dir.service(conv).await? else {
            return Err(Error::NotFound(format!("no such conversation {conv:?}")));
        };
        if let Some(uid) = by
            && !(before.open && before.agent.as_deref() == Some(uid))
        {
            return Err(Error::Forbidden(
                "only its assigned agent hands a conversation over".into(),
            ));
        }
        self.assign_named(conv, shop_id, &shop, agent, &before)
            .await?;
        let mut decision = Decision::new(held);
        decision.push(Self::assigned(conv, agent, Some(&before)));
        let mut out = vec![decision];
        if before.open && before.agent.as_deref().is_some_and(|p| p != agent) {
            out.append(&mut self.drain(shop_id).await?);
        }
        Ok(out)
    }

    /// Begins ending `conv`'s assignment (the customer's next message opens it again):
    /// takes its lock, checks that it is open and that `by` (an agent; `None`: an
    /// operator) may close it, and makes the `closed` event, from `by` (the assigned
    /// agent for an operator's close; the customer when there was no agent either).
    /// The caller commits the event, then calls [`CustomerService::close_finish`].
    ///
    /// The event commits before the store frees the agent's place: were it the other
    /// way round, a drain elsewhere could hand the place to a waiting customer, and the
    /// agent's inbox show that `assigned` before the `closed` that freed it.
    pub async fn close_begin(&self, conv: &str, by: Option<&str>) -> Result<Closing, Error> {
        let not_open = || Error::NotFound(format!("no open conversation {conv:?}"));
        let Ok(shop_id) = shop_of(conv) else {
            return Err(not_open());
        };
        // Only a shop that exists gets a lock.
        match self.shop(shop_id).await {
            Err(Error::NotFound(_)) => return Err(not_open()),
            other => drop(other?),
        }
        let held = self.lock(conv).await?;
        let before = self
            .dir
            .service(conv)
            .await?
            .filter(|s| s.open)
            .ok_or_else(not_open)?;
        if let Some(uid) = by
            && before.agent.as_deref() != Some(uid)
        {
            return Err(Error::Forbidden(
                "only its assigned agent may close a conversation".into(),
            ));
        }
        let customer = customer_of(conv).unwrap_or_default();
        let agent = before.agent;
        let mut members = vec![customer.to_owned()];
        members.extend(agent.iter().filter(|a| *a != customer).cloned());
        let from = by.or(agent.as_deref()).unwrap_or(customer);
        let mut closed = Decision::default();
        closed
            .events
            .push(event(conv, from, Event::Closed, members));
        Ok(Closing {
            conv: conv.to_owned(),
            shop: shop_id.to_owned(),
            had_agent: agent.is_some(),
            event: closed,
            held,
        })
    }

    /// Ends what [`CustomerService::close_begin`] began, once its event is committed:
    /// the store closes the conversation (and frees the agent's place), customers who
    /// waited behind it move up, the lock goes, and the freed place is handed to the
    /// queue (the decisions returned).
    pub async fn close_finish(&self, closing: Closing) -> Result<Vec<Decision>, Error> {
        let Closing {
            conv,
            shop,
            had_agent,
            held,
            ..
        } = closing;
        let place = if had_agent {
            None
        } else {
            self.queue_place(&shop, &conv).await?
        };
        if !self.dir.close_service(&conv).await? {
            tracing::warn!(conv, "closed elsewhere while its closed event committed");
        }
        drop(held);
        if let Some(i) = place {
            self.tell_queue(&shop, i).await;
        }
        if had_agent {
            self.drain(&shop).await
        } else {
            Ok(Vec::new())
        }
    }

    /// The customer rates the closed `conv` (once per closing): the `rated` event.
    pub async fn rate(
        &self,
        uid: &str,
        conv: &str,
        score: u8,
        comment: Option<String>,
    ) -> Result<Decision, Error> {
        let shop_id = shop_of(conv)?;
        if customer_of(conv) != Some(uid) {
            return Err(Error::Forbidden(
                "only the customer rates a conversation".into(),
            ));
        }
        if !(1..=5).contains(&score) {
            return Err(Error::BadRequest("score must be 1 to 5".into()));
        }
        if let Some(c) = &comment
            && c.chars().count() > shared::protocol::MAX_COMMENT_CHARS
        {
            return Err(Error::BadRequest(format!(
                "comment must be at most {} characters",
                shared::protocol::MAX_COMMENT_CHARS
            )));
        }
        self.shop(shop_id).await?;
        let held = self.lock(conv).await?;
        let state = self.dir.service(conv).await?;
        match self.dir.rate(conv, score).await? {
            Rated::Done => {}
            Rated::NotClosed if state.is_none() => {
                return Err(Error::NotFound(format!("no such conversation {conv:?}")));
            }
            Rated::NotClosed => {
                return Err(Error::Conflict(
                    "the conversation is open: it can be rated once closed".into(),
                ));
            }
            Rated::Already => {
                return Err(Error::Conflict("already rated".into()));
            }
        }
        let mut members = vec![uid.to_owned()];
        members.extend(state.and_then(|s| s.agent).filter(|a| a != uid));
        let mut decision = Decision::new(held);
        decision
            .events
            .push(event(conv, uid, Event::Rated { score, comment }, members));
        Ok(decision)
    }
}

//! Customer-service conversations: routing a customer's message to an agent of the
//! shop, and the assignment rules around it.
//!
//! - A customer's first message opens `s:{shop}~{customer}` and assigns the online agent
//!   with the fewest open conversations (ties: the one assigned longest ago).
//! - The assignment sticks while that agent is online. If the agent is offline when the
//!   customer writes again, another online agent takes over and receives the history.
//!   If nobody else is online either, the conversation stays with the offline agent.
//! - With no agent online for a new conversation, the message is stored and the
//!   conversation waits; the first agent of the shop to connect gets it, history
//!   included.
//! - Any agent of the shop may read the conversation and reply into it; a reply to a
//!   waiting conversation assigns it to the replying agent.
//!
//! Decisions are serialized by one lock per shop (in each process), held across the
//! store reads and writes of one decision, so two messages cannot assign the same
//! conversation twice; shops decide side by side. An agent of several shops can be
//! picked by two of them at once on the same load figure: the spread is then off by
//! one conversation, never wrong.

use std::collections::HashMap;
use std::sync::Arc;

use shared::ids::{ConvRef, service_conv};
use shared::protocol::Event;
use shared::time::now_ms;

use super::assignment::{Candidate, choose};
use super::{Error, Presence};
use crate::store::{Content, DirectoryStore, NewMessage, Op, ServiceState};

/// What a decision must commit, with the decision lock still held: the ops must enter
/// the commit queue before any later decision's, or a message routed to a newly
/// assigned agent could commit before that agent's join and leave a hole in the
/// history the join copies. Drop it once the ops are queued.
#[derive(Debug, Default)]
pub struct Decision {
    /// Joins to commit, in order, before the message that caused them (if any).
    pub ops: Vec<Op>,
    /// Event messages (`assigned`, `closed`) to commit after that message.
    pub events: Vec<Op>,
    _held: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

impl Decision {
    fn held(ops: Vec<Op>, guards: Vec<tokio::sync::OwnedMutexGuard<()>>) -> Self {
        Self {
            ops,
            events: Vec::new(),
            _held: guards,
        }
    }

    /// Adds an assignment: the agent's join, and its `assigned` event.
    fn push(&mut self, (join, event): (Op, Op)) {
        self.ops.push(join);
        self.events.push(event);
    }
}

/// An event message of `conv`, from `from`, to `members`.
pub(crate) fn event_message(
    conv: &str,
    from: &str,
    event: Event,
    members: Vec<String>,
) -> NewMessage {
    NewMessage {
        id: uuid::Uuid::now_v7().to_string(),
        conv: conv.to_owned(),
        from: from.to_owned(),
        cid: None,
        content: Content::Event(event),
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

/// Where a service message goes, and which joins must commit before it.
#[derive(Debug)]
pub struct Route {
    /// The conversation.
    pub conv: String,
    /// Who gets the message in their inbox.
    pub recipients: Vec<String>,
    /// Joins of newly assigned agents, to commit before the message, and the lock.
    pub joins: Decision,
}

#[derive(Debug, Default)]
struct Turns {
    clock: u64,
    last: HashMap<String, u64>,
}

/// The customer-service rules.
pub struct CustomerService {
    dir: Arc<dyn DirectoryStore>,
    presence: Arc<dyn Presence>,
    /// The decision lock of each shop. tokio Mutexes: a decision awaits the store while
    /// holding one, and its caller keeps it until the decision's ops are queued (see
    /// `Decision`). One per shop that passed the shop check, so bounded by the shops.
    shops: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The tie-break record; held only for the moment of a pick.
    turns: std::sync::Mutex<Turns>,
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

impl CustomerService {
    /// Rules over `dir`, asking `presence` who is online.
    pub fn new(dir: Arc<dyn DirectoryStore>, presence: Arc<dyn Presence>) -> Self {
        Self {
            dir,
            presence,
            shops: std::sync::Mutex::new(HashMap::new()),
            turns: std::sync::Mutex::new(Turns::default()),
        }
    }

    /// Takes the decision locks of `shops`, in name order (a decision over several
    /// shops, an agent's coming online, never deadlocks with another).
    async fn lock(&self, shops: &[&str]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut names: Vec<&str> = shops.to_vec();
        names.sort_unstable();
        names.dedup();
        let locks: Vec<_> = {
            let mut all = self.shops.lock().unwrap_or_else(|e| e.into_inner());
            names
                .iter()
                .map(|s| all.entry((*s).to_owned()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(locks.len());
        for lock in locks {
            guards.push(lock.lock_owned().await);
        }
        guards
    }

    async fn agents(&self, shop: &str) -> Result<Vec<String>, Error> {
        self.dir
            .shop_agents(shop)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such shop {shop:?}")))
    }

    /// Picks an online agent of `agents`, and records the pick for the tie-break.
    async fn pick(&self, agents: &[String]) -> Result<Option<String>, Error> {
        let loads = self.dir.agent_loads(agents).await?;
        let mut online = Vec::with_capacity(agents.len());
        for uid in agents {
            online.push(self.presence.online(uid).await);
        }
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        let candidates: Vec<Candidate<'_>> = agents
            .iter()
            .zip(loads)
            .zip(online)
            .map(|((uid, load), online)| Candidate {
                uid,
                online,
                load,
                last_assigned: turns.last.get(uid).copied().unwrap_or(0),
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

    /// Assigns `conv` to `agent`: the agent's join, and the `assigned` event (to the
    /// customer, the agent, and the agent it was taken from, if any, so that its
    /// devices learn it is no longer theirs). `before` is the state it had.
    async fn assign(
        &self,
        conv: &str,
        shop: &str,
        agent: &str,
        before: Option<&ServiceState>,
    ) -> Result<(Op, Op), Error> {
        self.dir.assign(conv, shop, Some(agent)).await?;
        tracing::debug!(conv, agent, "conversation assigned");
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
        Ok((join, event(conv, agent, assigned, members)))
    }

    /// A customer writes to `shop` (with `"shop"`, or `"conv"` of their own conversation).
    pub async fn from_customer(&self, customer: &str, shop: &str) -> Result<Route, Error> {
        let agents = self.agents(shop).await?;
        let conv = service_conv(shop, customer);
        let held = self.lock(&[shop]).await;
        let state = self.dir.service(&conv).await?;
        let current = state
            .as_ref()
            .filter(|s| s.open)
            .and_then(|s| s.agent.clone())
            .filter(|a| agents.contains(a));
        if let Some(a) = &current
            && self.presence.online(a).await
        {
            let recipients = recipients(&[customer, a]);
            return Ok(Route {
                conv,
                recipients,
                joins: Decision::held(vec![], held),
            });
        }
        match (self.pick(&agents).await?, current) {
            (Some(b), _) => {
                let mut joins = Decision::held(vec![], held);
                joins.push(self.assign(&conv, shop, &b, state.as_ref()).await?);
                let recipients = recipients(&[customer, &b]);
                Ok(Route {
                    conv,
                    recipients,
                    joins,
                })
            }
            // Nobody else is online: it stays with its (offline) agent's inbox.
            (None, Some(a)) => {
                let recipients = recipients(&[customer, &a]);
                Ok(Route {
                    conv,
                    recipients,
                    joins: Decision::held(vec![], held),
                })
            }
            (None, None) => {
                self.dir.assign(&conv, shop, None).await?;
                let recipients = recipients(&[customer]);
                Ok(Route {
                    conv,
                    recipients,
                    joins: Decision::held(vec![], held),
                })
            }
        }
    }

    /// Someone writes into `s:{shop}~{customer}` with `"conv"`.
    pub async fn from_member(&self, uid: &str, shop: &str, customer: &str) -> Result<Route, Error> {
        if uid == customer {
            return self.from_customer(customer, shop).await;
        }
        let agents = self.agents(shop).await?;
        if !agents.iter().any(|a| a == uid) {
            return Err(Error::Forbidden(format!("not an agent of shop {shop:?}")));
        }
        let conv = service_conv(shop, customer);
        let held = self.lock(&[shop]).await;
        let state = self
            .dir
            .service(&conv)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such conversation {conv:?}")))?;
        match state.agent.clone().filter(|_| state.open) {
            Some(current) => {
                // A colleague of the assigned agent joins before its reply lands in its
                // inbox: an inbox entry without the history before it would hide that
                // history from any later join (a join copies what comes after the last
                // message the member has).
                let joins = if current == uid {
                    vec![]
                } else {
                    vec![Op::Join {
                        conv: conv.clone(),
                        uid: uid.to_owned(),
                    }]
                };
                let recipients = recipients(&[customer, &current, uid]);
                Ok(Route {
                    conv,
                    recipients,
                    joins: Decision::held(joins, held),
                })
            }
            // Waiting or closed: the agent who answers takes it.
            None => {
                let mut joins = Decision::held(vec![], held);
                joins.push(self.assign(&conv, shop, uid, Some(&state)).await?);
                let recipients = recipients(&[customer, uid]);
                Ok(Route {
                    conv,
                    recipients,
                    joins,
                })
            }
        }
    }

    /// Whether `uid` may read `s:{shop}~{customer}`: the customer and the shop's agents.
    pub async fn can_read(&self, uid: &str, shop: &str, customer: &str) -> Result<bool, Error> {
        if uid == customer {
            return Ok(true);
        }
        Ok(self.agents(shop).await?.iter().any(|a| a == uid))
    }

    /// An agent came online: hands it (or a less loaded online colleague) the
    /// conversations of its shops that wait for an agent.
    pub async fn agent_online(&self, uid: &str) -> Result<Decision, Error> {
        let shops = self.dir.agent_shops(uid).await?;
        if shops.is_empty() {
            return Ok(Decision::default());
        }
        let names: Vec<&str> = shops.iter().map(String::as_str).collect();
        let held = self.lock(&names).await;
        let mut decision = Decision::held(vec![], held);
        for shop in &shops {
            let agents = self.agents(shop).await?;
            for conv in self.dir.waiting(shop).await? {
                match self.pick(&agents).await? {
                    Some(agent) => decision.push(self.assign(&conv, shop, &agent, None).await?),
                    None => break,
                }
            }
        }
        Ok(decision)
    }

    /// [`CustomerService::agent_online`], if `uid` is online.
    pub async fn agent_online_if(&self, uid: &str) -> Result<Decision, Error> {
        if self.presence.online(uid).await {
            self.agent_online(uid).await
        } else {
            Ok(Decision::default())
        }
    }

    /// Hands `conv` to `agent` (an agent of its shop), who joins it.
    pub async fn transfer(&self, conv: &str, agent: &str) -> Result<Decision, Error> {
        let Some(shared::ids::ConvRef::Service { shop, .. }) = shared::ids::ConvRef::parse(conv)
        else {
            return Err(Error::NotFound(format!(
                "no such service conversation {conv:?}"
            )));
        };
        let agents = self.agents(shop).await?;
        if !agents.iter().any(|a| a == agent) {
            return Err(Error::BadRequest(format!(
                "{agent:?} is not an agent of shop {shop:?}"
            )));
        }
        let held = self.lock(&[shop]).await;
        let Some(before) = self.dir.service(conv).await? else {
            return Err(Error::NotFound(format!("no such conversation {conv:?}")));
        };
        let mut decision = Decision::held(vec![], held);
        decision.push(self.assign(conv, shop, agent, Some(&before)).await?);
        Ok(decision)
    }

    /// Ends `conv`'s assignment; the customer's next message opens it again. The
    /// decision holds the `closed` event, from `by` (the assigned agent when `None`:
    /// an admin's close; the customer when there was no agent either).
    pub async fn close(&self, conv: &str, by: Option<&str>) -> Result<Decision, Error> {
        let not_open = || Error::NotFound(format!("no open conversation {conv:?}"));
        let Some(shared::ids::ConvRef::Service { shop, .. }) = shared::ids::ConvRef::parse(conv)
        else {
            return Err(not_open());
        };
        // Only a shop that exists gets a lock.
        match self.agents(shop).await {
            Err(Error::NotFound(_)) => return Err(not_open()),
            other => drop(other?),
        }
        let held = self.lock(&[shop]).await;
        let before = self.dir.service(conv).await?;
        if !self.dir.close_service(conv).await? {
            return Err(not_open());
        }
        let customer = customer_of(conv).unwrap_or_default();
        let agent = before.and_then(|s| s.agent);
        let mut members = vec![customer.to_owned()];
        members.extend(agent.iter().filter(|a| *a != customer).cloned());
        let from = by.or(agent.as_deref()).unwrap_or(customer);
        let mut decision = Decision::held(vec![], held);
        decision
            .events
            .push(event(conv, from, Event::Closed, members));
        Ok(decision)
    }
}

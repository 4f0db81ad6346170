//! Sending, syncing and reading history; the group-commit task.
//!
//! - this file: the checks and routing of a send ([`Messaging::send`],
//!   `Messaging::prepare`) and the lanes it is queued on;
//! - [`commit`]: a lane's commit task and the feed of committed messages;
//! - [`read`]: sync, history and who may read what;
//! - [`erasure`]: an operator's erasure of what a user sent.
//!
//! Every send, from any transport, is checked here (blacklist, rate limit, rules,
//! sensitive words, the pre-send hook), resolved to its recipients, queued to a commit task, and committed
//! in batches: one store transaction (one fsync) for everything that queued while the
//! previous batch was being written. The commit task then hands each new message to
//! the [`Deliver`] sink and answers its sender, both in commit order, so pushes leave in
//! the same order as `seq` and `useq` were given.
//!
//! There are one or more commit tasks (lanes). A conversation always goes to the same
//! lane, chosen by hashing its id, so that its messages and joins commit in the order
//! they were queued. The embedded store runs one lane: it has one writer, and one
//! batch is one fsync. On Redis, where a commit is a few round trips and may wait on a
//! fan-out lease that a dead node held, several lanes keep one slow conversation from
//! holding up the others, and keep several batches in flight. Pushes of one user's
//! inbox can then leave two lanes out of `useq` order; the session puts them back in
//! order (`worker::reorder`), as it does for pushes from different nodes.

mod commit;
mod erasure;
mod read;
mod state;
mod workflow;

pub use state::{CONV_PAGE_DEFAULT, CONV_PAGE_MAX, PRESENCE_MAX, ReadReply, RecallReply};

use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use shared::ids::{ConvRef, direct_conv, is_valid_id, service_conv};
use shared::protocol::{MAX_CID_LEN, SendRequest};
use shared::time::now_ms;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use commit::{Feed, commit_loop};

use super::blacklist::Blacklist;
use super::limits::Limits;
use super::service::{CustomerService, Decision};
use super::words::Words;
use super::{BeforeSend, Deliver, Error, Identity, Outgoing, Presence, Verdict};
use crate::store::{
    CommitOutcome, Committed, Content, DirectoryStore, MessageStore, NewMessage, Op,
};

/// How a queued send is answered: called once, from the commit task, so it must not block.
pub type Reply = Box<dyn FnOnce(Result<SendOutcome, Error>) + Send>;

/// What the commit task does with a queued op's outcome: called once, from the commit
/// task, after the op's messages were handed to the [`Deliver`] sink; must not block.
type Done = Box<dyn FnOnce(Result<CommitOutcome, Error>) + Send>;

/// A send's result.
#[derive(Debug, Clone, Default)]
pub struct SendOutcome {
    /// The message JSON: the earlier one for a duplicate, empty for a join.
    pub json: Bytes,
    /// The request's `cid`.
    pub cid: Option<String>,
    /// Whether this was a resend of an already committed `cid`.
    pub duplicate: bool,
}

struct Queued {
    op: Op,
    done: Option<Done>,
}

/// A send's [`Reply`] as the [`Done`] of its message.
fn send_done(cid: Option<String>, reply: Reply) -> Done {
    Box::new(move |r| {
        reply(r.map(|outcome| match outcome {
            CommitOutcome::New(c) => SendOutcome {
                json: c.json,
                cid,
                duplicate: false,
            },
            CommitOutcome::Duplicate(json) => SendOutcome {
                json,
                cid,
                duplicate: true,
            },
            _ => SendOutcome::default(),
        }))
    })
}

/// Answers `reply` once an op is committed (joins answer with no message).
fn committed_done(reply: Reply) -> Done {
    Box::new(move |r| reply(r.map(|_| SendOutcome::default())))
}

/// What the business layer is built on.
pub struct Deps {
    /// Messages, sequences, inboxes.
    pub store: Arc<dyn MessageStore>,
    /// Blacklists, shops, groups, assignments.
    pub dir: Arc<dyn DirectoryStore>,
    /// Who is online.
    pub presence: Arc<dyn Presence>,
    /// Where committed messages go.
    pub deliver: Arc<dyn Deliver>,
    /// The blacklist cache.
    pub blacklist: Arc<Blacklist>,
    /// The sensitive-word filter.
    pub words: Arc<Words>,
    /// Rate limits.
    pub limits: Arc<Limits>,
    /// How long after sending a user may recall a message.
    pub recall_window: std::time::Duration,
    /// The pre-send hook, when one is configured.
    pub before_send: Option<Arc<dyn BeforeSend>>,
}

struct Inner {
    feed: Arc<Feed>,
    store: Arc<dyn MessageStore>,
    dir: Arc<dyn DirectoryStore>,
    deliver: Arc<dyn Deliver>,
    presence: Arc<dyn Presence>,
    recall_window: std::time::Duration,
    blacklist: Arc<Blacklist>,
    words: Arc<Words>,
    limits: Arc<Limits>,
    before_send: Option<Arc<dyn BeforeSend>>,
    service: Arc<CustomerService>,
    /// One queue per commit lane.
    lanes: Vec<mpsc::Sender<Queued>>,
    /// Hashes a conversation id to its lane.
    hasher: std::hash::RandomState,
}

/// The messaging service. Cheap to clone.
#[derive(Clone)]
pub struct Messaging(Arc<Inner>);

impl Messaging {
    /// Starts `lanes` commit tasks (at least one). Each commits at most `batch_max`
    /// operations per transaction, and on `shutdown` stops taking sends, commits what
    /// is queued, and returns; the handle ends when every lane has.
    pub fn start(
        deps: Deps,
        batch_max: usize,
        lanes: usize,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let feed = Arc::new(Feed::new());
        let mut tasks = tokio::task::JoinSet::new();
        let lanes: Vec<_> = (0..lanes.max(1))
            .map(|_| {
                // A queue of a few batches: deep enough to keep the store busy, shallow
                // enough that senders feel backpressure instead of growing memory.
                let (tx, rx) = mpsc::channel(batch_max * 4);
                tasks.spawn(commit_loop(
                    deps.store.clone(),
                    deps.deliver.clone(),
                    feed.clone(),
                    rx,
                    batch_max,
                    shutdown.clone(),
                ));
                tx
            })
            .collect();
        let task = tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
        let service = Arc::new(CustomerService::new(
            deps.dir.clone(),
            deps.presence.clone(),
            deps.deliver.clone(),
        ));
        let inner = Inner {
            feed,
            store: deps.store,
            dir: deps.dir,
            deliver: deps.deliver,
            presence: deps.presence,
            recall_window: deps.recall_window,
            blacklist: deps.blacklist,
            words: deps.words,
            limits: deps.limits,
            before_send: deps.before_send,
            service,
            lanes,
            hasher: std::hash::RandomState::new(),
        };
        (Self(Arc::new(inner)), task)
    }

    /// Queues `q` on the lane of its conversation.
    async fn enqueue(&self, q: Queued) -> Result<(), Error> {
        let conv = q.op.conv();
        let lanes = &self.0.lanes;
        let lane = &lanes[self.0.hasher.hash_one(conv) as usize % lanes.len()];
        lane.send(q).await.map_err(|_| Error::ShuttingDown)
    }

    /// The customer-service rules.
    pub fn service(&self) -> &Arc<CustomerService> {
        &self.0.service
    }

    /// The blacklist cache.
    pub fn blacklist(&self) -> &Arc<Blacklist> {
        &self.0.blacklist
    }

    /// Follows messages as they commit (only new ones, not joins).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Committed>> {
        self.0.feed.subscribe()
    }

    /// Messages committed since start.
    pub fn committed_total(&self) -> u64 {
        self.0.feed.committed()
    }

    /// Checks `req`, resolves its recipients, and queues it for commit. `reply` is called
    /// once the message is committed (or refused by the store). A request refused here
    /// returns the error, and `reply` is never called.
    pub async fn send(&self, who: &Identity, req: SendRequest, reply: Reply) -> Result<(), Error> {
        let cid = req.cid.clone();
        // The decision holds the conversation's decision lock, when routing took it,
        // until its last op is committed.
        let (message, mut decision) = self.prepare(who, req).await?;
        let mut ops: Vec<(Op, Option<Done>)> = std::mem::take(&mut decision.ops)
            .into_iter()
            .map(|op| (op, None))
            .collect();
        ops.push((message, Some(send_done(cid, reply))));
        // The events of the decision (an agent assigned, the shop's welcome) follow
        // the message that caused it.
        ops.extend(
            std::mem::take(&mut decision.events)
                .into_iter()
                .map(|op| (op, None)),
        );
        self.queue_ops(ops, decision).await
    }

    /// [`Messaging::send`], waiting for the commit. Runs detached from the caller (see
    /// [`detached`]): an HTTP client that goes away does not stop it half way.
    pub async fn send_and_wait(
        &self,
        who: &Identity,
        req: SendRequest,
    ) -> Result<SendOutcome, Error> {
        let (m, who) = (self.clone(), who.clone());
        detached(async move {
            let (tx, rx) = oneshot::channel();
            m.send(&who, req, Box::new(move |r| drop(tx.send(r))))
                .await?;
            rx.await.map_err(|_| Error::ShuttingDown)?
        })
        .await
    }

    /// Queues decisions' operations (joins of agents, then events), each decision's in
    /// order; each decision's lock goes once its last op is committed.
    pub async fn submit(&self, decisions: Vec<Decision>) -> Result<(), Error> {
        for decision in decisions {
            self.queue_decision(decision, None).await?;
        }
        Ok(())
    }

    /// Queues `first` and waits until its last operation is committed (a decision that
    /// someone is told about, like an admin's transfer, must not be answered before it
    /// is durable), then queues the others.
    pub async fn submit_and_wait(&self, mut decisions: Vec<Decision>) -> Result<(), Error> {
        if decisions.is_empty() {
            return Ok(());
        }
        let first = decisions.remove(0);
        let (tx, rx) = oneshot::channel();
        let done: Reply = Box::new(move |r| drop(tx.send(r)));
        self.queue_decision(first, Some(done)).await?;
        let committed = rx.await.map_err(|_| Error::ShuttingDown)?.map(drop);
        self.submit(decisions).await?;
        committed
    }

    /// Queues `decision`'s operations, then its events; `done` answers when the last
    /// one is committed.
    async fn queue_decision(
        &self,
        mut decision: Decision,
        done: Option<Reply>,
    ) -> Result<(), Error> {
        let mut ops: Vec<(Op, Option<Done>)> = std::mem::take(&mut decision.ops)
            .into_iter()
            .chain(std::mem::take(&mut decision.events))
            .map(|op| (op, None))
            .collect();
        match (ops.last_mut(), done) {
            (Some(last), Some(done)) => last.1 = Some(committed_done(done)),
            (None, Some(done)) => done(Ok(SendOutcome::default())),
            (_, None) => {}
        }
        self.queue_ops(ops, decision).await
    }

    /// Queues `ops` in order; `decision`'s lock goes when the last is committed (at
    /// once when there is none, or when queueing fails).
    async fn queue_ops(
        &self,
        mut ops: Vec<(Op, Option<Done>)>,
        mut decision: Decision,
    ) -> Result<(), Error> {
        if let (Some(last), Some(held)) = (ops.last_mut(), decision.take_lock()) {
            let done = last.1.take();
            last.1 = Some(Box::new(move |r| {
                if let Some(done) = done {
                    done(r);
                }
                drop(held);
            }));
        }
        for (op, done) in ops {
            self.enqueue(Queued { op, done }).await?;
        }
        if let Some(shop) = decision.drain_after.take() {
            self.drain_later(shop);
        }
        Ok(())
    }

    /// Drains `shop`'s queue, detached from the caller (see [`detached`]), and queues
    /// what it decided.
    pub async fn drain_now(&self, shop: &str) -> Result<(), Error> {
        let (m, shop) = (self.clone(), shop.to_owned());
        detached(async move {
            let decisions = m.0.service.drain(&shop).await?;
            m.submit(decisions).await
        })
        .await
    }

    /// Drains `shop`'s queue in a task of its own: after the caller's decision lock,
    /// as the drain may take the same conversation.
    fn drain_later(&self, shop: String) {
        let m = self.clone();
        // Boxed as `Send`: the drain submits decisions, which may drain again.
        let drain: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let drained = match m.0.service.drain(&shop).await {
                Ok(decisions) => m.submit(decisions).await,
                Err(e) => Err(e),
            };
            if let Err(e) = drained {
                tracing::warn!(shop, error = %e, "queue not drained");
            }
        });
        tokio::spawn(drain);
    }

    /// A device connected: if its user is an agent, it takes waiting conversations
    /// (its availability is set by [`Messaging::available`], before its frames).
    pub async fn connected(&self, who: &Identity) -> Result<(), Error> {
        let decisions = self.0.service.agent_online(&who.uid).await?;
        self.submit(decisions).await
    }

    fn refuse_blocked(&self, who: &Identity) -> Result<(), Error> {
        let now = now_ms();
        let bl = &self.0.blacklist;
        if bl.uid_blocked(&who.uid, now) || who.ip.is_some_and(|ip| bl.ip_blocked(ip, now)) {
            return Err(Error::Forbidden("blacklisted".into()));
        }
        Ok(())
    }

    /// Checks and routes a send: its message op, and the decision it took (agents to
    /// join before it, events to commit after it), with the decision lock held.
    ///
    /// The order: the sender (blacklist, rate), the request, who may write there, the
    /// content (the sensitive-word filter, then the pre-send hook), and last the
    /// decision of a service conversation. That decision takes the conversation's lock
    /// and may write an assignment, so it comes after everything that can still refuse
    /// the message: a refused message leaves no assignment behind, and the hook, which
    /// may take its whole timeout, is never waited on with the lock held.
    async fn prepare(&self, who: &Identity, mut req: SendRequest) -> Result<(Op, Decision), Error> {
        self.refuse_blocked(who)?;
        if !self.0.limits.allow_send(&who.uid) {
            return Err(Error::RateLimited(
                "sending too fast; slow down and resend".into(),
            ));
        }
        if let Some(cid) = &req.cid
            && (cid.is_empty() || cid.len() > MAX_CID_LEN)
        {
            return Err(Error::BadRequest(format!(
                "cid must be 1-{MAX_CID_LEN} bytes"
            )));
        }
        if req.body.is_null() {
            return Err(Error::BadRequest("body is required".into()));
        }
        let target = self.target(who, &req).await?;
        // Filter after the target's checks, so that a refused target is reported as
        // such, and before commit, so that what is stored is what was filtered.
        let filtered = self.0.words.get().apply(&mut req.body);
        let hook = self
            .0
            .before_send
            .as_ref()
            .filter(|h| h.applies(target.conv()));
        if let Target::Service { shop, customer, .. } = &target
            && (filtered.is_err() || hook.is_some())
        {
            // Only now that it matters (routing checks it again): a refusal of the
            // target comes first, and the hook hears only of writers who may write.
            self.may_write(who, shop, customer).await?;
        }
        filtered.map_err(|_| Error::BlockedContent)?;
        if let Some(hook) = hook {
            let verdict = hook
                .check(Outgoing {
                    from: &who.uid,
                    device: &who.device,
                    conv: target.conv(),
                    body: &req.body,
                    cid: req.cid.as_deref(),
                })
                .await;
            match verdict {
                Verdict::Allow => {}
                Verdict::Reject(reason) => return Err(Error::Rejected(reason)),
                // The business system's own body: not filtered again.
                Verdict::Replace(body) => req.body = body,
                Verdict::Unavailable => return Err(Error::HookUnavailable),
            }
        }
        // Whether this may be an agent's first answer in a service conversation.
        let (conv, members, decision, answer) = match target {
            Target::Routed { conv, members } => (conv, members, Decision::default(), false),
            Target::Service { shop, customer, .. } => {
                let route = self
                    .0
                    .service
                    .from_member(&who.uid, &shop, &customer)
                    .await?;
                (route.conv, route.recipients, route.joins, route.answer)
            }
        };
        if answer {
            self.0.service.answered(&conv).await?;
        }
        let message = Op::Message(NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            conv,
            from: who.uid.clone(),
            cid: req.cid,
            content: Content::Body(req.body),
            ts: now_ms(),
            members,
        });
        Ok((message, decision))
    }

    /// Where `req` goes, and whether `who` may write there; for a service
    /// conversation, only where (its routing checks the writer, later, under the lock;
    /// see [`Messaging::may_write`]).
    async fn target(&self, who: &Identity, req: &SendRequest) -> Result<Target, Error> {
        Ok(match (&req.to, &req.conv, &req.shop) {
            (Some(to), None, None) => {
                if !is_valid_id(to) {
                    return Err(Error::BadRequest(format!(
                        "invalid uid {to:?}: 1-64 characters of [A-Za-z0-9_.:@-]"
                    )));
                }
                Target::Routed {
                    conv: direct_conv(&who.uid, to),
                    members: pair(&who.uid, to),
                }
            }
            (None, Some(conv), None) => match ConvRef::parse(conv) {
                Some(ConvRef::Service { shop, customer }) => Target::Service {
                    shop: shop.to_owned(),
                    customer: customer.to_owned(),
                    conv: conv.clone(),
                },
                Some(ConvRef::Notes { shop, customer }) => {
                    let to = self
                        .0
                        .service
                        .note_takers(shop, customer, Some(&who.uid))
                        .await?;
                    Target::Routed {
                        conv: conv.clone(),
                        members: to,
                    }
                }
                _ => {
                    let members = self.members(conv).await?;
                    if !members.contains(&who.uid) {
                        return Err(Error::Forbidden(format!("not a member of {conv}")));
                    }
                    Target::Routed {
                        conv: conv.clone(),
                        members,
                    }
                }
            },
            (None, None, Some(shop)) => {
                if !is_valid_id(shop) {
                    return Err(Error::BadRequest(format!("invalid shop id {shop:?}")));
                }
                Target::Service {
                    shop: shop.clone(),
                    customer: who.uid.clone(),
                    conv: service_conv(shop, &who.uid),
                }
            }
            _ => {
                return Err(Error::BadRequest(
                    "give exactly one of to, conv, shop".into(),
                ));
            }
        })
    }

    /// Whether `who` may write into `s:{shop}~{customer}`: the same rule as its
    /// routing's, without the lock: 404 for a shop that does not exist, 403 for
    /// anyone but the customer and the shop's agents.
    async fn may_write(&self, who: &Identity, shop: &str, customer: &str) -> Result<(), Error> {
        if !self.0.service.is_agent(&who.uid, shop).await? && who.uid != customer {
            return Err(Error::Forbidden(format!("not an agent of shop {shop:?}")));
        }
        Ok(())
    }

    /// The members of a direct or group conversation.
    async fn members(&self, conv: &str) -> Result<Vec<String>, Error> {
        match ConvRef::parse(conv) {
            Some(ConvRef::Direct(a, b)) => Ok(pair(a, b)),
            Some(ConvRef::Group(name)) => self
                .0
                .dir
                .group_members(name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no such group {name:?}"))),
            Some(ConvRef::Service { .. } | ConvRef::Notes { .. }) | None => {
                Err(Error::NotFound(format!("no such conversation {conv:?}")))
            }
        }
    }
}

/// Runs `f`, a decision and the commits it waits for, in a task of its own, so that a
/// caller that goes away (an HTTP client disconnecting drops its handler's future)
/// cannot stop it half way: a customer-service decision writes the store, then queues
/// its ops, then waits for them, and cut between two of those steps it would leave, say,
/// an assignment without its join, or a conversation closed without its event.
pub(crate) async fn detached<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
{
    tokio::spawn(f).await.map_err(|_| Error::ShuttingDown)?
}

/// Where a send goes (see [`Messaging::target`]).
enum Target {
    /// A direct, group or notes conversation, with its recipients: no decision to take.
    Routed { conv: String, members: Vec<String> },
    /// A customer-service conversation: routed by its decision, under its lock.
    Service {
        shop: String,
        customer: String,
        conv: String,
    },
}

impl Target {
    /// The conversation.
    fn conv(&self) -> &str {
        match self {
            Target::Routed { conv, .. } | Target::Service { conv, .. } => conv,
        }
    }
}

fn pair(a: &str, b: &str) -> Vec<String> {
    if a == b {
        vec![a.to_owned()]
    } else {
        vec![a.to_owned(), b.to_owned()]
    }
}

#[cfg(test)]
mod tests;

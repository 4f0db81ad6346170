//! Sending, syncing and reading history; the group-commit task.
//!
//! Every send, from any transport, is checked here (blacklist, rate limit, rules,
//! sensitive words), resolved to its recipients, queued to a commit task, and committed
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

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shared::ids::{ConvRef, direct_conv, is_valid_id};
use shared::protocol::{DEFAULT_PAGE, MAX_CID_LEN, MAX_PAGE, SendRequest};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::blacklist::Blacklist;
use super::limits::Limits;
use super::service::{CustomerService, Decision};
use super::words::Words;
use super::{Deliver, Error, Identity, Presence};
use crate::store::{CommitOutcome, Committed, DirectoryStore, MessageStore, NewMessage, Op, Page};

/// How a queued send is answered: called once, from the commit task, so it must not block.
pub type Reply = Box<dyn FnOnce(Result<SendOutcome, Error>) + Send>;

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
    cid: Option<String>,
    reply: Option<Reply>,
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
}

/// Committed messages as they commit, for followers such as the admin tail, and the
/// count of them.
pub struct Feed {
    tx: tokio::sync::broadcast::Sender<Arc<Committed>>,
    committed: AtomicU64,
}

impl Feed {
    fn new() -> Self {
        // Followers that fall this far behind are told they lagged, and catch up from
        // the store.
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        Self {
            tx,
            committed: AtomicU64::new(0),
        }
    }

    fn publish(&self, c: &Committed) {
        self.committed.fetch_add(1, Ordering::Relaxed);
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(c.clone()));
        }
    }
}

struct Inner {
    feed: Arc<Feed>,
    store: Arc<dyn MessageStore>,
    dir: Arc<dyn DirectoryStore>,
    blacklist: Arc<Blacklist>,
    words: Arc<Words>,
    limits: Arc<Limits>,
    service: Arc<CustomerService>,
    /// One queue per commit lane.
    lanes: Vec<mpsc::Sender<Queued>>,
    /// Hashes a conversation id to its lane.
    hasher: std::hash::RandomState,
}

/// The messaging service. Cheap to clone.
#[derive(Clone)]
pub struct Messaging(Arc<Inner>);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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
        let service = Arc::new(CustomerService::new(deps.dir.clone(), deps.presence));
        let inner = Inner {
            feed,
            store: deps.store,
            dir: deps.dir,
            blacklist: deps.blacklist,
            words: deps.words,
            limits: deps.limits,
            service,
            lanes,
            hasher: std::hash::RandomState::new(),
        };
        (Self(Arc::new(inner)), task)
    }

    /// Queues `q` on the lane of its conversation.
    async fn enqueue(&self, q: Queued) -> Result<(), Error> {
        let conv = match &q.op {
            Op::Message(m) => &m.conv,
            Op::Join { conv, .. } => conv,
        };
        let lanes = &self.0.lanes;
        let lane = &lanes[self.0.hasher.hash_one(conv.as_str()) as usize % lanes.len()];
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
        self.0.feed.tx.subscribe()
    }

    /// Messages committed since start.
    pub fn committed_total(&self) -> u64 {
        self.0.feed.committed.load(Ordering::Relaxed)
    }

    /// The highest `seq` of `conv`.
    pub async fn last_seq(&self, conv: &str) -> Result<u64, Error> {
        Ok(self.0.store.last_seq(conv).await?)
    }

    /// Inbox entries of `uid` with `after < useq <= until`, at most `cap` of them.
    pub async fn inbox_range(
        &self,
        uid: &str,
        after: u64,
        until: u64,
        cap: usize,
    ) -> Result<Vec<(u64, Bytes)>, Error> {
        let mut out = Vec::new();
        let mut from = after;
        while out.len() < cap && from < until {
            let page = self.0.store.inbox(uid, from, MAX_PAGE).await?;
            let Some(&(last, _)) = page.items.last() else {
                break;
            };
            out.extend(page.items.into_iter().filter(|(u, _)| *u <= until));
            from = last;
            if !page.more {
                break;
            }
        }
        out.truncate(cap);
        Ok(out)
    }

    /// Checks `req`, resolves its recipients, and queues it for commit. `reply` is called
    /// once the message is committed (or refused by the store). A request refused here
    /// returns the error, and `reply` is never called.
    pub async fn send(&self, who: &Identity, req: SendRequest, reply: Reply) -> Result<(), Error> {
        let cid = req.cid.clone();
        // `_decided` holds the customer-service lock, when routing took it, until the
        // ops are queued.
        let (ops, _decided) = self.prepare(who, req).await?;
        let last = ops.len() - 1;
        let mut reply = Some(reply);
        for (i, op) in ops.into_iter().enumerate() {
            let reply = if i == last { reply.take() } else { None };
            let cid = if i == last { cid.clone() } else { None };
            self.enqueue(Queued { op, cid, reply }).await?;
        }
        Ok(())
    }

    /// [`Messaging::send`], waiting for the commit.
    pub async fn send_and_wait(
        &self,
        who: &Identity,
        req: SendRequest,
    ) -> Result<SendOutcome, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(who, req, Box::new(move |r| drop(tx.send(r))))
            .await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Queues a decision's operations (joins of agents), in order, then lets the next
    /// decision go.
    pub async fn submit(&self, decision: Decision) -> Result<(), Error> {
        self.queue_decision(decision, None).await
    }

    /// [`Messaging::submit`], then waits until the last operation is committed: for a
    /// decision over one conversation that someone is told about (an admin's
    /// transfer), which must not be answered before it is durable. (Operations on
    /// several conversations may commit on several lanes, in any order.)
    pub async fn submit_and_wait(&self, decision: Decision) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let done: Reply = Box::new(move |r| drop(tx.send(r)));
        self.queue_decision(decision, Some(done)).await?;
        rx.await.map_err(|_| Error::ShuttingDown)?.map(drop)
    }

    /// Queues `decision`'s operations; `done` answers when the last one is committed.
    async fn queue_decision(
        &self,
        mut decision: Decision,
        mut done: Option<Reply>,
    ) -> Result<(), Error> {
        let ops = std::mem::take(&mut decision.ops);
        let last = ops.len().saturating_sub(1);
        if ops.is_empty()
            && let Some(done) = done.take()
        {
            done(Ok(SendOutcome::default()));
        }
        for (i, op) in ops.into_iter().enumerate() {
            self.enqueue(Queued {
                op,
                cid: None,
                reply: if i == last { done.take() } else { None },
            })
            .await?;
        }
        Ok(())
    }

    /// A device connected: if its user is an agent, hand it waiting conversations.
    pub async fn connected(&self, who: &Identity) -> Result<(), Error> {
        let decision = self.0.service.agent_online(&who.uid).await?;
        self.submit(decision).await
    }

    fn refuse_blocked(&self, who: &Identity) -> Result<(), Error> {
        let now = now_ms();
        let bl = &self.0.blacklist;
        if bl.uid_blocked(&who.uid, now) || who.ip.is_some_and(|ip| bl.ip_blocked(ip, now)) {
            return Err(Error::Forbidden("blacklisted".into()));
        }
        Ok(())
    }

    async fn prepare(
        &self,
        who: &Identity,
        mut req: SendRequest,
    ) -> Result<(Vec<Op>, Decision), Error> {
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
        let (conv, members, mut decision) = match (&req.to, &req.conv, &req.shop) {
            (Some(to), None, None) => {
                if !is_valid_id(to) {
                    return Err(Error::BadRequest(format!(
                        "invalid uid {to:?}: 1-64 characters of [A-Za-z0-9_.:@-]"
                    )));
                }
                (
                    direct_conv(&who.uid, to),
                    pair(&who.uid, to),
                    Decision::default(),
                )
            }
            (None, Some(conv), None) => match ConvRef::parse(conv) {
                Some(ConvRef::Service { shop, customer }) => {
                    let route = self.0.service.from_member(&who.uid, shop, customer).await?;
                    (route.conv, route.recipients, route.joins)
                }
                _ => {
                    let members = self.members(conv).await?;
                    if !members.contains(&who.uid) {
                        return Err(Error::Forbidden(format!("not a member of {conv}")));
                    }
                    (conv.clone(), members, Decision::default())
                }
            },
            (None, None, Some(shop)) => {
                if !is_valid_id(shop) {
                    return Err(Error::BadRequest(format!("invalid shop id {shop:?}")));
                }
                let route = self.0.service.from_customer(&who.uid, shop).await?;
                (route.conv, route.recipients, route.joins)
            }
            _ => {
                return Err(Error::BadRequest(
                    "give exactly one of to, conv, shop".into(),
                ));
            }
        };
        // Filter after routing, so that a refused target is reported as such, and
        // before commit, so that what is stored is what was filtered.
        self.0
            .words
            .get()
            .apply(&mut req.body)
            .map_err(|_| Error::BlockedContent)?;
        let mut ops = std::mem::take(&mut decision.ops);
        ops.push(Op::Message(NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            conv,
            from: who.uid.clone(),
            cid: req.cid,
            body: req.body,
            ts: now_ms(),
            members,
        }));
        Ok((ops, decision))
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
            Some(ConvRef::Service { .. }) | None => {
                Err(Error::NotFound(format!("no such conversation {conv:?}")))
            }
        }
    }

    /// Whether `uid` may read `conv`.
    async fn can_read(&self, uid: &str, conv: &str) -> Result<bool, Error> {
        match ConvRef::parse(conv) {
            Some(ConvRef::Service { shop, customer }) => {
                self.0.service.can_read(uid, shop, customer).await
            }
            _ => Ok(self.members(conv).await?.iter().any(|m| m == uid)),
        }
    }

    /// The inbox of `uid` after `after`: what a device that has seen `after` missed.
    pub async fn sync(
        &self,
        uid: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Page<(u64, Bytes)>, Error> {
        Ok(self.0.store.inbox(uid, after, page_size(limit)).await?)
    }

    /// Messages of `conv` after `seq`, for a member of it.
    pub async fn history(
        &self,
        who: &Identity,
        conv: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Page<Bytes>, Error> {
        if !self.can_read(&who.uid, conv).await? {
            return Err(Error::Forbidden(format!("not a member of {conv}")));
        }
        Ok(self.0.store.history(conv, after, page_size(limit)).await?)
    }

    /// Messages of any conversation, for the admin API.
    pub async fn history_any(
        &self,
        conv: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Page<Bytes>, Error> {
        if ConvRef::parse(conv).is_none() {
            return Err(Error::NotFound(format!("no such conversation {conv:?}")));
        }
        Ok(self.0.store.history(conv, after, page_size(limit)).await?)
    }
}

fn pair(a: &str, b: &str) -> Vec<String> {
    if a == b {
        vec![a.to_owned()]
    } else {
        vec![a.to_owned(), b.to_owned()]
    }
}

fn page_size(limit: Option<u32>) -> u32 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

async fn commit_loop(
    store: Arc<dyn MessageStore>,
    deliver: Arc<dyn Deliver>,
    feed: Arc<Feed>,
    mut rx: mpsc::Receiver<Queued>,
    batch_max: usize,
    shutdown: CancellationToken,
) {
    let mut queued = Vec::with_capacity(batch_max);
    let mut closed = false;
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut queued, batch_max) => n,
            _ = shutdown.cancelled(), if !closed => {
                // Refuse new sends; what is already queued still commits below.
                rx.close();
                closed = true;
                continue;
            }
        };
        if n == 0 {
            break;
        }
        let mut ops = Vec::with_capacity(n);
        let mut answers = Vec::with_capacity(n);
        for q in queued.drain(..) {
            ops.push(q.op);
            answers.push((q.cid, q.reply));
        }
        let started = Instant::now();
        let result = store.commit(ops).await;
        metrics::histogram!("imd_commit_latency_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("imd_commit_batch_size").record(n as f64);
        match result {
            Ok(outcomes) => {
                for (outcome, (cid, reply)) in outcomes.into_iter().zip(answers) {
                    let (json, duplicate) = match outcome {
                        CommitOutcome::New(c) => {
                            deliver.deliver(&c);
                            feed.publish(&c);
                            metrics::counter!("imd_messages_committed_total").increment(1);
                            (c.json, false)
                        }
                        CommitOutcome::Duplicate(json) => {
                            metrics::counter!("imd_messages_duplicate_total").increment(1);
                            (json, true)
                        }
                        CommitOutcome::Joined(entries) => {
                            for c in &entries {
                                deliver.deliver(c);
                            }
                            // A join answers (when asked to) with no message.
                            if let Some(reply) = reply {
                                reply(Ok(SendOutcome::default()));
                            }
                            continue;
                        }
                    };
                    if let Some(reply) = reply {
                        reply(Ok(SendOutcome {
                            json,
                            cid,
                            duplicate,
                        }));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = n, "commit failed");
                metrics::counter!("imd_commit_failures_total").increment(1);
                for (_, reply) in answers {
                    if let Some(reply) = reply {
                        reply(Err(Error::Store(e.clone())));
                    }
                }
            }
        }
        // Other writers' messages whose inbox entries this commit wrote (cluster mode):
        // whoever writes an entry pushes it.
        for c in store.take_relayed() {
            deliver.deliver(&c);
            feed.publish(&c);
        }
        if store.pushes_lost() {
            deliver.lost();
        }
    }
    tracing::debug!("commit task stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Committed, EmbeddedStore, GroupStore, ShopStore};
    use serde_json::json;
    use shared::token::Platform;
    use std::sync::Mutex;

    /// `(conv, seq, recipients)` of one delivered message.
    type Delivered = (String, u64, Vec<(String, u64)>);

    /// Records what was delivered, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Delivered>>);
    impl Deliver for Recorder {
        fn deliver(&self, c: &Committed) {
            self.0
                .lock()
                .unwrap()
                .push((c.conv.clone(), c.seq, c.recipients.clone()));
        }
    }

    fn who(uid: &str) -> Identity {
        Identity {
            uid: uid.into(),
            device: "d1".into(),
            platform: Platform::Web,
            roles: vec![],
            ip: None,
        }
    }

    fn req(v: serde_json::Value) -> SendRequest {
        serde_json::from_value(v).unwrap()
    }

    /// Presence as a test sets it.
    #[derive(Default)]
    struct Online(Mutex<std::collections::HashSet<String>>);
    #[async_trait::async_trait]
    impl Presence for Online {
        async fn online(&self, uid: &str) -> bool {
            self.0.lock().unwrap().contains(uid)
        }
    }
    impl Online {
        fn set(&self, uid: &str, on: bool) {
            let mut s = self.0.lock().unwrap();
            if on {
                s.insert(uid.into());
            } else {
                s.remove(uid);
            }
        }
    }

    struct Rig {
        m: Messaging,
        rec: Arc<Recorder>,
        online: Arc<Online>,
        store: Arc<EmbeddedStore>,
        stop: CancellationToken,
        _dir: tempfile::TempDir,
    }

    fn rig_with(limits: Limits, words: Words) -> Rig {
        rig_lanes(limits, words, 1)
    }

    fn rig_lanes(limits: Limits, words: Words, lanes: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let rec = Arc::new(Recorder::default());
        let online = Arc::new(Online::default());
        let stop = CancellationToken::new();
        let deps = Deps {
            store: store.clone(),
            dir: store.clone(),
            presence: online.clone(),
            deliver: rec.clone(),
            blacklist: Arc::new(Blacklist::new()),
            words: Arc::new(words),
            limits: Arc::new(limits),
        };
        let (m, _task) = Messaging::start(deps, 64, lanes, stop.clone());
        Rig {
            m,
            rec,
            online,
            store,
            stop,
            _dir: dir,
        }
    }

    fn no_limits() -> Limits {
        use crate::business::limits::Rate;
        Limits::new(
            Rate {
                per_second: 0,
                burst: 0,
            },
            Rate {
                per_second: 0,
                burst: 0,
            },
        )
    }

    fn rig() -> Rig {
        rig_with(
            no_limits(),
            Words::load(None, crate::business::words::WordsPolicy::Mask).unwrap(),
        )
    }

    fn setup() -> (Messaging, Arc<Recorder>, Rig, CancellationToken) {
        let r = rig();
        let (m, rec, stop) = (r.m.clone(), r.rec.clone(), r.stop.clone());
        (m, rec, r, stop)
    }

    #[tokio::test]
    async fn invalid_requests_are_refused_with_their_codes() {
        let (m, rec, _dir, _stop) = setup();
        use shared::protocol::ErrorCode::*;
        let long_cid = "c".repeat(65);
        for (r, code) in [
            (json!({"body": 1}), BadRequest),
            (json!({"to": "b", "conv": "d:a~b", "body": 1}), BadRequest),
            (json!({"to": "b c", "body": 1}), BadRequest),
            (json!({"to": "b"}), BadRequest),
            (json!({"to": "b", "cid": long_cid, "body": 1}), BadRequest),
            (json!({"to": "b", "cid": "", "body": 1}), BadRequest),
            (json!({"conv": "d:b~c", "body": 1}), Forbidden),
            (json!({"conv": "nope", "body": 1}), NotFound),
            (json!({"conv": "g:none", "body": 1}), NotFound),
            (json!({"shop": "s1", "body": 1}), NotFound),
            (json!({"shop": "s 1", "body": 1}), BadRequest),
            (json!({"conv": "s:s1~a", "body": 1}), NotFound),
        ] {
            let err = m
                .send_and_wait(&who("a"), req(r.clone()))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{r}");
        }
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn sends_commit_deliver_in_order_and_dedupe() {
        let (m, rec, _dir, _stop) = setup();
        let first = m
            .send_and_wait(&who("a"), req(json!({"to": "b", "cid": "k", "body": "x"})))
            .await
            .unwrap();
        assert!(!first.duplicate);
        let again = m
            .send_and_wait(
                &who("a"),
                req(json!({"to": "b", "cid": "k", "body": "other"})),
            )
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.json, first.json);
        // The reply path: b answers into the conversation.
        m.send_and_wait(&who("b"), req(json!({"conv": "d:a~b", "body": "y"})))
            .await
            .unwrap();
        let delivered = rec.0.lock().unwrap().clone();
        assert_eq!(
            delivered,
            [
                (
                    "d:a~b".to_string(),
                    1,
                    vec![("a".to_string(), 1), ("b".to_string(), 1)]
                ),
                (
                    "d:a~b".to_string(),
                    2,
                    vec![("a".to_string(), 2), ("b".to_string(), 2)]
                ),
            ]
        );
        let page = m.sync("b", 0, None).await.unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(
            m.history(&who("a"), "d:a~b", 1, None)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let err = m.history(&who("c"), "d:a~b", 0, None).await.unwrap_err();
        assert_eq!(err.code(), shared::protocol::ErrorCode::Forbidden);
    }

    #[tokio::test]
    async fn concurrent_sends_are_delivered_in_commit_order() {
        let (m, rec, _dir, _stop) = setup();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let m = m.clone();
            tasks.push(tokio::spawn(async move {
                m.send_and_wait(&who("a"), req(json!({"to": "b", "body": i})))
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let delivered = rec.0.lock().unwrap().clone();
        let seqs: Vec<u64> = delivered.iter().map(|d| d.1).collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn lanes_keep_each_conversation_in_order() {
        let r = rig_lanes(
            no_limits(),
            Words::load(None, crate::business::words::WordsPolicy::Mask).unwrap(),
            4,
        );
        // Eight senders, each with its own conversation, queueing 25 messages without
        // waiting for their commits; the conversations spread over the lanes and
        // commit side by side.
        let mut tasks = Vec::new();
        for s in 0..8 {
            let m = r.m.clone();
            tasks.push(tokio::spawn(async move {
                let from = who(&format!("s{s}"));
                let mut answers = Vec::new();
                for i in 0..25 {
                    let (tx, rx) = oneshot::channel();
                    let reply: Reply = Box::new(move |r| drop(tx.send(r)));
                    m.send(&from, req(json!({"to": "hub", "body": i})), reply)
                        .await
                        .unwrap();
                    answers.push(rx);
                }
                let mut seqs = Vec::new();
                for (i, rx) in answers.into_iter().enumerate() {
                    let out = rx.await.unwrap().unwrap();
                    let msg: serde_json::Value = serde_json::from_slice(&out.json).unwrap();
                    assert_eq!(msg["body"], i);
                    seqs.push(msg["seq"].as_u64().unwrap());
                }
                seqs
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                (1..=25).collect::<Vec<u64>>(),
                "in send order"
            );
        }
        // Delivered in commit order within each conversation, and every inbox gapless.
        let delivered = r.rec.0.lock().unwrap().clone();
        for s in 0..8 {
            let conv = direct_conv(&format!("s{s}"), "hub");
            let seqs: Vec<u64> = delivered
                .iter()
                .filter(|d| d.0 == conv)
                .map(|d| d.1)
                .collect();
            assert_eq!(seqs, (1..=25).collect::<Vec<u64>>(), "{conv}");
        }
        let inbox = r.m.sync("hub", 0, Some(1000)).await.unwrap();
        let stored: Vec<u64> = inbox.items.iter().map(|(u, _)| *u).collect();
        assert_eq!(stored, (1..=200).collect::<Vec<u64>>());
        let mut useqs: Vec<u64> = delivered
            .iter()
            .flat_map(|d| d.2.iter().filter(|(u, _)| u == "hub").map(|(_, q)| *q))
            .collect();
        useqs.sort();
        assert_eq!(useqs, (1..=200).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn shutdown_commits_what_is_queued_then_refuses() {
        let (m, _rec, _dir, stop) = setup();
        m.send_and_wait(&who("a"), req(json!({"to": "b", "body": 1})))
            .await
            .unwrap();
        stop.cancel();
        // Once the task has closed its queue, sends are refused, not lost silently.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match m
                .send_and_wait(&who("a"), req(json!({"to": "b", "body": 2})))
                .await
            {
                Err(Error::ShuttingDown) => break,
                Ok(_) => assert!(Instant::now() < deadline, "still accepting after shutdown"),
                Err(e) => panic!("unexpected {e}"),
            }
            tokio::task::yield_now().await;
        }
    }

    async fn send(m: &Messaging, uid: &str, v: serde_json::Value) -> serde_json::Value {
        let out = m.send_and_wait(&who(uid), req(v)).await.unwrap();
        serde_json::from_slice(&out.json).unwrap()
    }

    fn sorted<const N: usize>(uids: [&str; N]) -> Vec<String> {
        let mut v: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
        v.sort();
        v
    }

    /// The `seq`s of the messages in `uid`'s inbox, in inbox order.
    async fn inbox_seqs(m: &Messaging, uid: &str) -> Vec<u64> {
        let page = m.sync(uid, 0, None).await.unwrap();
        let seq =
            |j: &Bytes| serde_json::from_slice::<serde_json::Value>(j).unwrap()["seq"].as_u64();
        page.items.iter().map(|(_, j)| seq(j).unwrap()).collect()
    }

    /// Who received message `seq` of `conv`, per the recorder.
    fn receivers(rec: &Recorder, conv: &str, seq: u64) -> Vec<String> {
        let all = rec.0.lock().unwrap();
        let mut out: Vec<String> = all
            .iter()
            .filter(|d| d.0 == conv && d.1 == seq)
            .flat_map(|d| d.2.iter().map(|r| r.0.clone()))
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn service_assigns_least_loaded_sticks_and_reassigns() {
        let r = rig();
        r.store
            .set_shop_agents("shop", vec!["a1".into(), "a2".into()])
            .await
            .unwrap();
        r.online.set("a1", true);
        r.online.set("a2", true);
        // Two customers: one each, least loaded first.
        let m1 = send(&r.m, "c1", json!({"shop": "shop", "body": "hi"})).await;
        let m2 = send(&r.m, "c2", json!({"shop": "shop", "body": "hi"})).await;
        assert_eq!(m1["conv"], "s:shop~c1");
        let first = receivers(&r.rec, "s:shop~c1", 1);
        let second = receivers(&r.rec, "s:shop~c2", 1);
        assert_eq!(first.len(), 2);
        assert_ne!(first, second, "the second customer goes to the other agent");
        let agent1 = first.iter().find(|u| *u != "c1").unwrap().clone();
        let agent2 = if agent1 == "a1" { "a2" } else { "a1" }.to_owned();
        // Sticky while online.
        send(&r.m, "c1", json!({"shop": "shop", "body": "again"})).await;
        assert_eq!(receivers(&r.rec, "s:shop~c1", 2), sorted(["c1", &agent1]));
        // The agent replies by conv; an outsider may not.
        send(&r.m, &agent1, json!({"conv": m1["conv"], "body": "hello"})).await;
        let err =
            r.m.send_and_wait(&who("x"), req(json!({"conv": m1["conv"], "body": 1})))
                .await;
        assert_eq!(
            err.unwrap_err().code(),
            shared::protocol::ErrorCode::Forbidden
        );
        // Offline: the next message moves to the other agent, who gets the history.
        r.online.set(&agent1, false);
        send(&r.m, "c1", json!({"shop": "shop", "body": "anyone?"})).await;
        assert_eq!(receivers(&r.rec, "s:shop~c1", 4), sorted(["c1", &agent2]));
        let history: Vec<u64> = r
            .rec
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.0 == "s:shop~c1" && d.2.iter().any(|(u, _)| *u == agent2))
            .map(|d| d.1)
            .collect();
        assert_eq!(
            history,
            [1, 2, 3, 4],
            "the new agent received the whole history in order"
        );
        let page =
            r.m.history(&who(&agent2), "s:shop~c1", 0, None)
                .await
                .unwrap();
        assert_eq!(page.items.len(), 4);
        drop(m2);
    }

    #[tokio::test]
    async fn a_waiting_conversation_goes_to_the_first_agent_to_connect() {
        let r = rig();
        r.store
            .set_shop_agents("shop", vec!["a1".into()])
            .await
            .unwrap();
        send(&r.m, "c1", json!({"shop": "shop", "body": "hello?"})).await;
        assert_eq!(receivers(&r.rec, "s:shop~c1", 1), ["c1"]);
        r.online.set("a1", true);
        r.m.connected(&who("a1")).await.unwrap();
        // The join commits through the queue; a send after it is delivered after it.
        send(&r.m, "c1", json!({"shop": "shop", "body": "still there?"})).await;
        assert_eq!(inbox_seqs(&r.m, "a1").await, [1, 2]);
    }

    #[tokio::test]
    async fn groups_fan_out_to_members_only() {
        let r = rig();
        r.store
            .set_group_members("team", vec!["a".into(), "b".into(), "c".into()])
            .await
            .unwrap();
        send(&r.m, "a", json!({"conv": "g:team", "body": "standup"})).await;
        assert_eq!(receivers(&r.rec, "g:team", 1), ["a", "b", "c"]);
        let err =
            r.m.send_and_wait(&who("z"), req(json!({"conv": "g:team", "body": 1})))
                .await;
        assert_eq!(
            err.unwrap_err().code(),
            shared::protocol::ErrorCode::Forbidden
        );
        let err = r.m.history(&who("z"), "g:team", 0, None).await.unwrap_err();
        assert_eq!(err.code(), shared::protocol::ErrorCode::Forbidden);
    }

    #[tokio::test]
    async fn blacklist_words_and_rate_limits_refuse_sends() {
        use crate::business::limits::Rate;
        use crate::business::words::{WordFilter, WordsPolicy};
        let words = Words::load(None, WordsPolicy::Reject).unwrap();
        words.set(WordFilter::new(["SPAM"], WordsPolicy::Reject).unwrap());
        let limits = Limits::new(
            Rate {
                per_second: 1,
                burst: 2,
            },
            Rate {
                per_second: 0,
                burst: 0,
            },
        );
        let r = rig_with(limits, words);
        use shared::protocol::ErrorCode::*;
        let err =
            r.m.send_and_wait(&who("a"), req(json!({"to": "b", "body": "spam!"})))
                .await;
        assert_eq!(err.unwrap_err().code(), BlockedContent);
        r.m.send_and_wait(&who("a"), req(json!({"to": "b", "body": "ok"})))
            .await
            .unwrap();
        let err =
            r.m.send_and_wait(&who("a"), req(json!({"to": "b", "body": "ok"})))
                .await;
        assert_eq!(err.unwrap_err().code(), RateLimited);
        r.m.blacklist().upsert(&shared::admin::BlacklistEntry {
            kind: shared::admin::BlacklistKind::Uid,
            value: "b".into(),
            reason: None,
            expires_at: None,
        });
        let err =
            r.m.send_and_wait(&who("b"), req(json!({"to": "a", "body": "x"})))
                .await;
        assert_eq!(err.unwrap_err().code(), Forbidden);
    }

    /// Customers of two shops (one agent in both) open conversations all at once, two
    /// messages each: shops decide side by side, yet every conversation is assigned
    /// once, to one agent, and the open-conversation counts add up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_customers_of_two_shops_are_each_assigned_once() {
        let r = rig();
        let shops = [("s1", ["a1", "a2"]), ("s2", ["a2", "a3"])];
        for (shop, agents) in shops {
            let agents = agents.iter().map(|a| a.to_string()).collect();
            r.store.set_shop_agents(shop, agents).await.unwrap();
        }
        for a in ["a1", "a2", "a3"] {
            r.online.set(a, true);
        }
        let mut sends = tokio::task::JoinSet::new();
        for (shop, _) in shops {
            for c in 0..20 {
                for n in 0..2 {
                    let m = r.m.clone();
                    let customer = format!("{shop}-c{c}");
                    sends.spawn(async move {
                        send(&m, &customer, json!({"shop": shop, "body": n})).await
                    });
                }
            }
        }
        while let Some(sent) = sends.join_next().await {
            sent.unwrap();
        }
        // Which agents' inboxes hold each conversation.
        let mut holders: std::collections::HashMap<String, Vec<&str>> = Default::default();
        for a in ["a1", "a2", "a3"] {
            let page = r.m.sync(a, 0, Some(1000)).await.unwrap();
            let mut convs: Vec<String> = page.items.iter().map(|(_, j)| parse_conv(j)).collect();
            convs.sort();
            convs.dedup();
            for conv in convs {
                holders.entry(conv).or_default().push(a);
            }
        }
        assert_eq!(holders.len(), 40, "every conversation reached an agent");
        for (conv, agents) in &holders {
            assert_eq!(agents.len(), 1, "{conv} went to {agents:?}");
        }
        let agents: Vec<String> = ["a1", "a2", "a3"].map(String::from).to_vec();
        let loads = r.store.agent_loads(&agents).await.unwrap();
        assert_eq!(loads.iter().sum::<u64>(), 40, "loads {loads:?}");
        for (a, load) in agents.iter().zip(&loads) {
            let held = holders.values().filter(|h| h[0] == a.as_str()).count() as u64;
            assert_eq!(*load, held, "{a}'s load");
        }
    }

    fn parse_conv(json: &Bytes) -> String {
        serde_json::from_slice::<serde_json::Value>(json).unwrap()["conv"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A reassignment and a reply racing for the same conversation: the new agent must
    /// still get the whole history, whichever of the two commits first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_racing_a_reassignment_leaves_no_hole_in_the_history() {
        for round in 0..20 {
            let r = rig();
            r.store
                .set_shop_agents("shop", vec!["a1".into(), "a2".into()])
                .await
                .unwrap();
            r.online.set("a1", true);
            for i in 0..3 {
                send(&r.m, "c", json!({"shop": "shop", "body": i})).await;
            }
            r.online.set("a1", false);
            r.online.set("a2", true);
            let (m1, m2) = (r.m.clone(), r.m.clone());
            let customer = tokio::spawn(async move {
                send(&m1, "c", json!({"shop": "shop", "body": "anyone?"})).await
            });
            let agent = tokio::spawn(async move {
                send(&m2, "a2", json!({"conv": "s:shop~c", "body": "here"})).await
            });
            customer.await.unwrap();
            agent.await.unwrap();
            let mut seqs = inbox_seqs(&r.m, "a2").await;
            seqs.sort();
            assert_eq!(
                seqs,
                [1, 2, 3, 4, 5],
                "round {round}: a2's inbox has a hole"
            );
        }
    }
}

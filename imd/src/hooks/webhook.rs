//! The webhook of committed messages: every committed message, event messages
//! included, POSTed to `--webhook-url`, at least once, in `seq` order within each
//! conversation, signed (see `docs/webhooks.md` for the contract).
//!
//! # How
//!
//! The outbox ([`OutboxStore`]) marks each conversation a commit writes, in the
//! commit's own transaction (or, on Redis, before the message is stored), and keeps a
//! cursor per conversation: the last seq delivered. The deliverer here reads each
//! marked conversation's history after its cursor and POSTs one event at a time,
//! moving the cursor as they succeed. So an acknowledged message is in the webhook's
//! stream whatever crashes: it is in the history, and its conversation is marked.
//!
//! - **Work**: this node's own commits are hints (the commit feed), delivered at once;
//!   a scan every second lists marks older than [`OUTBOX_SETTLE_MS`], which finds what
//!   a crash, a restart or another node left, and unmarks what is done.
//! - **One deliverer per conversation**: a lease in the store ([`LEASE`]), renewed as
//!   the cursor moves; a cursor moves only under its lease. Conversations proceed
//!   independently, `--webhook-concurrency` at once.
//! - **Failures**: a conversation whose head event fails waits with exponential
//!   backoff and jitter (1 s doubling to `--webhook-backoff-max`, 10 s by default)
//!   while the others go on. After [`DOWN_AFTER`] failures in a row, with no success
//!   between, the receiver counts as down: one conversation at a time probes it,
//!   paced by the same backoff over the failures in a row, until one succeeds; then
//!   every waiting conversation is tried at once. An event that has waited for `--webhook-retry-for` since it
//!   was committed or since its conversation began failing, whichever is later, is
//!   parked (dead letter) and the conversation goes on; parked events are listed and
//!   re-driven through the admin API.
//! - **Bounded**: the outbox holds no copy of a message (it costs a mark and a cursor
//!   per conversation); in memory, at most [`MAX_TRACKED`] conversations are queued,
//!   in flight or waiting at once (the rest stay marked in the store for the scan),
//!   and one page of history per conversation in flight.
//! - **Never slows sending**: nothing here is on the send path; the commit only
//!   writes the mark. It shares the store with the commits (history reads, cursor
//!   moves without fsync on the embedded store).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use shared::time::now_ms;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConvKindName, WebhookKind};
use crate::store::{
    Committed, MessageStore, OUTBOX_SETTLE_MS, OutboxCursor, OutboxMark, OutboxStore, ParkedEvent,
    StoreError,
};

/// How long a delivery lease lasts without a renewal (renewed as the cursor moves; at
/// least three POST timeouts).
const LEASE: Duration = Duration::from_secs(30);
/// Failures in a row, with no success between, after which the receiver counts as
/// down and only one conversation probes it.
const DOWN_AFTER: u32 = 5;
/// Most conversations tracked in memory (queued, in flight, waiting to retry).
const MAX_TRACKED: usize = 50_000;
/// Events read from a conversation's history at once.
const PAGE: u32 = 64;
/// How often the outbox is scanned for marks.
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// Marks listed per scan.
const SCAN_LIMIT: usize = 1024;
/// The first retry's delay; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The delay before a conversation whose lease another deliverer held is tried again
/// (that deliverer may have finished before this node's message was stored).
const BUSY_AGAIN: Duration = Duration::from_millis(200);
/// Tries of a conversation whose lease stays held; then the scan takes over.
const BUSY_TRIES: u32 = 3;
/// Cursor moves renew the lease at least this often while events succeed.
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// The webhook's settings, from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where events go.
    pub url: String,
    /// The signature key.
    pub secret: Vec<u8>,
    /// Time limit of one POST.
    pub timeout: Duration,
    /// How long an event is retried before it is parked.
    pub retry_for: Duration,
    /// The longest wait between two tries of a conversation.
    pub backoff_max: Duration,
    /// Conversations delivered at once.
    pub concurrency: usize,
    /// Which messages go.
    pub events: Vec<WebhookKind>,
    /// Which conversations go.
    pub convs: Vec<ConvKindName>,
    /// Most parked events kept.
    pub parked_max: usize,
}

impl Settings {
    /// The webhook's settings, when `cfg` has one.
    pub fn from_config(cfg: &Config) -> Option<Self> {
        let url = cfg.webhook_url.clone()?;
        let secret = cfg.webhook_secret.as_ref()?.expose().as_bytes().to_vec();
        Some(Self {
            url,
            secret,
            timeout: cfg.webhook_timeout,
            retry_for: cfg.webhook_retry_for,
            backoff_max: cfg.webhook_backoff_max,
            concurrency: cfg.webhook_concurrency,
            events: cfg.webhook_events.clone(),
            convs: cfg.webhook_convs.clone(),
            parked_max: cfg.webhook_parked_max,
        })
    }

    fn conv_wanted(&self, conv: &str) -> bool {
        self.convs.iter().any(|k| k.matches(conv))
    }

    fn kind_wanted(&self, event: bool) -> bool {
        self.events.contains(if event {
            &WebhookKind::Event
        } else {
            &WebhookKind::Message
        })
    }
}

/// What the store gives the deliverer: the messages and the outbox.
pub trait WebhookStore: MessageStore + OutboxStore {}
impl<T: MessageStore + OutboxStore> WebhookStore for T {}

/// The webhook deliverer. Cheap to clone.
#[derive(Clone)]
pub struct Webhook(Arc<Inner>);

struct Inner {
    settings: Settings,
    client: reqwest::Client,
    store: Arc<dyn WebhookStore>,
    /// This process's lease token.
    token: String,
    sched: Mutex<Sched>,
    /// Wakes the workers when a job is ready.
    ready: Notify,
    /// Wakes the conversations waiting to retry when a down receiver answers again.
    recovered: Notify,
    health: Mutex<Health>,
    stats: Stats,
    stop: CancellationToken,
    /// The workers, for [`Webhook::shutdown`] to wait for.
    workers: TaskTracker,
}

/// A conversation to deliver.
#[derive(Debug, Clone)]
struct Job {
    conv: String,
    /// Tries that found the lease held by another deliverer.
    busy: u32,
}

/// The conversations this node works on.
#[derive(Default)]
struct Sched {
    ready: VecDeque<Job>,
    /// Every conversation queued, in flight or waiting to retry.
    tracked: HashSet<String>,
    /// In flight.
    active: HashSet<String>,
    /// In flight, and hinted again meanwhile: run once more after.
    again: HashSet<String>,
    /// Failed tries in a row of the conversations that wait to retry.
    attempts: HashMap<String, u32>,
    /// Commit time of the head event of each conversation that waits to retry.
    failing: HashMap<String, i64>,
    /// The marks scans listed for tracked conversations: a try that reaches the end
    /// of its conversation unmarks it.
    marks: HashMap<String, OutboxMark>,
}

#[derive(Default)]
struct Health {
    /// Failures in a row, over every conversation.
    failures: u32,
    /// While the receiver is down: when the next probe may go.
    next_probe: Option<Instant>,
}

/// What a worker may do now.
enum Take {
    /// Deliver this conversation.
    Job(Job),
    /// Wait for the next probe's time (or a wake-up).
    Until(Instant),
    /// Wait for a wake-up.
    Idle,
}

impl Health {
    fn down(&self) -> bool {
        self.failures >= DOWN_AFTER
    }
}

/// Counters since start, for the admin API (the metrics count the same).
#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    failed: AtomicU64,
    parked: AtomicU64,
    dropped: AtomicU64,
    up: AtomicBool,
}

/// The webhook as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Events delivered by this node since it started.
    pub delivered: u64,
    /// POSTs that failed on this node since it started.
    pub failed: u64,
    /// Events this node parked since it started.
    pub parked_total: u64,
    /// Events lost to retention before delivery, or parked events dropped at the cap,
    /// on this node since it started.
    pub dropped: u64,
    /// Whether the receiver answered the last tries (false after [`DOWN_AFTER`]
    /// failures in a row).
    pub receiver_up: bool,
    /// Conversations with events that may be undelivered (the whole cluster).
    pub pending_conversations: u64,
    /// Parked events (the whole cluster).
    pub parked: u64,
    /// Age of the oldest event this node is retrying (ms; 0: none).
    pub lag_ms: i64,
}

/// How one try of a conversation ended.
enum Outcome {
    /// Everything up to the conversation's end is delivered (or parked, or skipped).
    Done,
    /// Another deliverer holds the lease.
    Busy,
    /// The head event failed: try again later.
    Failed,
    /// The lease was lost on the way (another deliverer took over).
    Lost,
}

/// The fields of a stored message the deliverer reads.
#[derive(Deserialize)]
struct Head {
    id: String,
    seq: u64,
    ts: i64,
    #[serde(default)]
    event: Option<serde::de::IgnoredAny>,
}

impl Webhook {
    /// Starts the deliverer: `settings.concurrency` workers, the scan, and the
    /// follower of `feed` (this node's commits). Everything stops on `stop` (or on
    /// [`Webhook::shutdown`], which also waits for the tries in flight).
    pub fn start(
        settings: Settings,
        store: Arc<dyn WebhookStore>,
        feed: broadcast::Receiver<Arc<Committed>>,
        stop: CancellationToken,
    ) -> Self {
        let client = super::client(settings.timeout);
        let token = format!(
            "{:032x}",
            uuid::Uuid::now_v7().as_u128() ^ random_u64() as u128
        );
        let workers = settings.concurrency;
        let inner = Arc::new(Inner {
            settings,
            client,
            store,
            token,
            sched: Mutex::default(),
            ready: Notify::new(),
            recovered: Notify::new(),
            health: Mutex::default(),
            stats: Stats {
                up: AtomicBool::new(true),
                ..Stats::default()
            },
            stop: stop.child_token(),
            workers: TaskTracker::new(),
        });
        for _ in 0..workers {
            inner.workers.spawn(inner.clone().work());
        }
        inner.workers.close();
        tokio::spawn(inner.clone().scan());
        tokio::spawn(inner.clone().follow(feed));
        Self(inner)
    }

    /// Stops taking conversations and waits, at most `grace`, for the tries in flight:
    /// each ends after its current event, saves its cursor and frees its lease, so
    /// that another node takes the conversation over at once instead of after the
    /// lease's expiry.
    pub async fn shutdown(&self, grace: Duration) {
        self.0.stop.cancel();
        if tokio::time::timeout(grace, self.0.workers.wait())
            .await
            .is_err()
        {
            tracing::warn!("webhook deliveries still in flight after the grace period");
        }
    }

    /// The webhook's state now.
    pub async fn status(&self) -> Result<Status, StoreError> {
        let s = &self.0.stats;
        let oldest = {
            let sched = self.0.sched();
            sched.failing.values().min().copied()
        };
        Ok(Status {
            delivered: s.delivered.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            parked_total: s.parked.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            receiver_up: s.up.load(Ordering::Relaxed),
            pending_conversations: self.0.store.outbox_marked().await?,
            parked: self.0.store.parked_count().await?,
            lag_ms: oldest.map_or(0, |ts| (now_ms() - ts).max(0)),
        })
    }

    /// Parked events with a parked id above `after`, oldest first, at most `limit`.
    pub async fn parked(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ParkedEvent)>, StoreError> {
        self.0.store.parked(after, limit).await
    }

    /// Sends parked events again, oldest first, at most `limit`: each one that the
    /// receiver accepts leaves the parked list; the first failure stops (the receiver
    /// is likely still down). A parked event whose message is gone (retention) leaves
    /// the list too. Returns (sent, gone, failed: 0 or 1).
    ///
    /// A re-driven event arrives after later events of its conversation: receivers
    /// that need order compare `seq` (its `msg.seq` is unchanged).
    pub async fn redrive(&self, limit: usize) -> Result<(u64, u64, u64), StoreError> {
        let inner = &self.0;
        let (mut sent, mut gone) = (0, 0);
        for (id, p) in inner.store.parked(0, limit).await? {
            let page = inner.store.history(&p.conv, p.seq - 1, 1).await?;
            let Some(json) = page.items.first().filter(|j| {
                serde_json::from_slice::<Head>(j).is_ok_and(|h| h.seq == p.seq && h.id == p.event)
            }) else {
                inner.store.unpark(id).await?;
                gone += 1;
                continue;
            };
            let head: Head =
                serde_json::from_slice(json).map_err(|e| StoreError::decode("message", e))?;
            match inner.post(&head, json).await {
                Ok(()) => {
                    inner.store.unpark(id).await?;
                    sent += 1;
                }
                Err(reason) => {
                    tracing::info!(id, reason, "re-drive of a parked webhook event failed");
                    return Ok((sent, gone, 1));
                }
            }
        }
        Ok((sent, gone, 0))
    }
}

impl Inner {
    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `conv` unless it is tracked already (an in-flight one runs again
    /// after); keeps `mark`, a scan's, for the try that reaches its end.
    fn offer(&self, conv: &str, mark: Option<OutboxMark>) {
        let mut sched = self.sched();
        let tracked = sched.tracked.contains(conv);
        if !tracked && sched.tracked.len() >= MAX_TRACKED {
            return; // it stays marked; a later scan finds it
        }
        if let Some(mark) = mark {
            sched.marks.insert(conv.to_owned(), mark);
        }
        if tracked {
            if sched.active.contains(conv) {
                sched.again.insert(conv.to_owned());
            }
            return;
        }
        sched.tracked.insert(conv.to_owned());
        sched.ready.push_back(Job {
            conv: conv.to_owned(),
            busy: 0,
        });
        drop(sched);
        self.ready.notify_one();
    }

    /// Follows this node's commits: each is a hint to deliver its conversation now.
    async fn follow(self: Arc<Self>, mut feed: broadcast::Receiver<Arc<Committed>>) {
        loop {
            let c = tokio::select! {
                c = feed.recv() => c,
                _ = self.stop.cancelled() => return,
            };
            match c {
                Ok(c) => self.offer(&c.conv, None),
                // Missed hints: their conversations are marked; the scan finds them.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Lists settled marks every [`SCAN_EVERY`] (at once again when a full page came
    /// and there is room), and keeps the gauges.
    async fn scan(self: Arc<Self>) {
        loop {
            let full = match self.store.outbox_due(OUTBOX_SETTLE_MS, SCAN_LIMIT).await {
                Ok(marks) => {
                    let full = marks.len() >= SCAN_LIMIT;
                    for mark in marks {
                        let conv = mark.conv.clone();
                        self.offer(&conv, Some(mark));
                    }
                    full
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox scan failed");
                    false
                }
            };
            self.gauges().await;
            let room = self.sched().tracked.len() + SCAN_LIMIT <= MAX_TRACKED;
            let pause = if full && room && !self.health().down() {
                Duration::from_millis(50)
            } else {
                SCAN_EVERY
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    async fn gauges(&self) {
        let oldest = self.sched().failing.values().min().copied();
        metrics::gauge!("imd_webhook_lag_seconds")
            .set(oldest.map_or(0.0, |ts| (now_ms() - ts).max(0) as f64 / 1000.0));
        if let Ok(n) = self.store.outbox_marked().await {
            metrics::gauge!("imd_webhook_pending_conversations").set(n as f64);
        }
        if let Ok(n) = self.store.parked_count().await {
            metrics::gauge!("imd_webhook_parked").set(n as f64);
        }
    }

    /// A worker: takes ready conversations, one at a time while the receiver is down.
    async fn work(self: Arc<Self>) {
        loop {
            let job = loop {
                if self.stop.is_cancelled() {
                    return;
                }
                let notified = self.ready.notified();
                let until = match self.take() {
                    Take::Job(job) => break job,
                    Take::Until(t) => Some(t),
                    Take::Idle => None,
                };
                let paced = async {
                    match until {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = notified => {}
                    _ = paced => {}
                    _ = self.stop.cancelled() => return,
                }
            };
            let outcome = match self.deliver(&job).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(conv = job.conv, error = %e, "webhook delivery: store failed");
                    Outcome::Failed
                }
            };
            self.finish(job, outcome);
        }
    }

    /// The next ready job; while the receiver is down, only one at a time and not
    /// before the next probe's time.
    fn take(&self) -> Take {
        let (down, next_probe) = {
            let h = self.health();
            (h.down(), h.next_probe)
        };
        let mut sched = self.sched();
        if down && !sched.active.is_empty() {
            return Take::Idle;
        }
        if down
            && let Some(t) = next_probe
            && t > Instant::now()
        {
            return if sched.ready.is_empty() {
                Take::Idle
            } else {
                Take::Until(t)
            };
        }
        let Some(job) = sched.ready.pop_front() else {
            return Take::Idle;
        };
        sched.active.insert(job.conv.clone());
        Take::Job(job)
    }

    /// Settles a try: untracks a finished conversation, or schedules its next try.
    fn finish(self: &Arc<Self>, mut job: Job, outcome: Outcome) {
        let mut sched = self.sched();
        sched.active.remove(&job.conv);
        let again = sched.again.remove(&job.conv);
        let delay = match outcome {
            Outcome::Done | Outcome::Lost => {
                sched.attempts.remove(&job.conv);
                sched.failing.remove(&job.conv);
                if again { Some(Duration::ZERO) } else { None }
            }
            Outcome::Busy => {
                job.busy += 1;
                (again || job.busy < BUSY_TRIES).then_some(BUSY_AGAIN)
            }
            Outcome::Failed => {
                let n = sched.attempts.entry(job.conv.clone()).or_insert(0);
                *n += 1;
                Some(backoff(*n, self.settings.backoff_max))
            }
        };
        let Some(delay) = delay else {
            sched.tracked.remove(&job.conv);
            sched.marks.remove(&job.conv);
            drop(sched);
            // A probe ended: a waiting conversation may go.
            self.ready.notify_one();
            return;
        };
        drop(sched);
        self.ready.notify_one();
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inner.recovered.notified() => {}
                _ = inner.stop.cancelled() => return,
            }
            inner.sched().ready.push_back(job);
            inner.ready.notify_one();
        });
    }

    /// One try of a conversation: under its lease, POSTs its events after the cursor
    /// in order until its end or a failure.
    async fn deliver(&self, job: &Job) -> Result<Outcome, StoreError> {
        let conv = job.conv.as_str();
        let ttl = LEASE.max(self.settings.timeout * 3).as_millis() as u64;
        let Some(mut cursor) = self.store.outbox_lease(conv, &self.token, ttl).await? else {
            return Ok(Outcome::Busy);
        };
        let outcome = self.deliver_leased(job, &mut cursor, ttl).await;
        if !matches!(outcome, Ok(Outcome::Lost)) {
            self.store.outbox_release(conv, &self.token).await?;
        }
        outcome
    }

    async fn deliver_leased(
        &self,
        job: &Job,
        cursor: &mut OutboxCursor,
        ttl: u64,
    ) -> Result<Outcome, StoreError> {
        let conv = job.conv.as_str();
        // A mark listed before this try reads the history is settled (its commits
        // stored their messages before it was listed): once this try reaches the
        // end, it can go. One listed later makes the conversation run again.
        let mark = self.sched().marks.remove(conv);
        let wanted = self.settings.conv_wanted(conv);
        let mut saved = *cursor;
        let mut renewed = Instant::now();
        let mut since_save = 0u32;
        loop {
            let page = self.store.history(conv, cursor.seq, PAGE).await?;
            if page.items.is_empty() {
                break;
            }
            for json in &page.items {
                if self.stop.is_cancelled() {
                    // Shutting down: save what was delivered and free the lease.
                    return self.save_and_stop(conv, *cursor, saved, ttl).await;
                }
                let head: Head =
                    serde_json::from_slice(json).map_err(|e| StoreError::decode("message", e))?;
                if head.seq <= cursor.seq {
                    continue;
                }
                if head.seq > cursor.seq + 1 {
                    // Removed by retention before it was delivered.
                    let lost = head.seq - cursor.seq - 1;
                    self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
                    metrics::counter!("imd_webhook_dropped_total", "reason" => "retention")
                        .increment(lost);
                    tracing::warn!(
                        conv,
                        from = cursor.seq + 1,
                        to = head.seq - 1,
                        "webhook events removed by retention before delivery"
                    );
                }
                if wanted && self.settings.kind_wanted(head.event.is_some()) {
                    if let Err(reason) = self.send(conv, &head, json, cursor).await? {
                        tracing::debug!(conv, seq = head.seq, reason, "webhook POST failed");
                        return self.save_and_stop(conv, *cursor, saved, ttl).await;
                    }
                } else {
                    cursor.seq = head.seq;
                }
                since_save += 1;
                if since_save >= PAGE || renewed.elapsed() >= RENEW_EVERY {
                    if !self
                        .store
                        .outbox_advance(conv, &self.token, *cursor, ttl)
                        .await?
                    {
                        return Ok(Outcome::Lost);
                    }
                    saved = *cursor;
                    renewed = Instant::now();
                    since_save = 0;
                }
            }
            if !page.more {
                break;
            }
        }
        if !self.save(conv, *cursor, saved, ttl).await? {
            return Ok(Outcome::Lost);
        }
        if let Some(mark) = mark {
            self.store.outbox_unmark(&mark, cursor.seq).await?;
        }
        Ok(Outcome::Done)
    }

    /// Saves `cursor` unless it is still where it was `saved`; whether the lease still
    /// held (false: another node took the conversation over).
    async fn save(
        &self,
        conv: &str,
        cursor: OutboxCursor,
        saved: OutboxCursor,
        ttl: u64,
    ) -> Result<bool, StoreError> {
        Ok(cursor == saved
            || self
                .store
                .outbox_advance(conv, &self.token, cursor, ttl)
                .await?)
    }

    /// Ends a try before the end of the history: saves `cursor` ([`Self::save`]), then
    /// [`Outcome::Failed`], or [`Outcome::Lost`] when the lease was gone.
    async fn save_and_stop(
        &self,
        conv: &str,
        cursor: OutboxCursor,
        saved: OutboxCursor,
        ttl: u64,
    ) -> Result<Outcome, StoreError> {
        Ok(if self.save(conv, cursor, saved, ttl).await? {
            Outcome::Failed
        } else {
            Outcome::Lost
        })
    }

    /// POSTs the event of `head`; on success moves `cursor` past it. A failure past
    /// the retry window parks it and moves on (`Ok(Ok)`); a failure within it sets
    /// the cursor's failure clock and returns `Ok(Err(reason))`.
    async fn send(
        &self,
        conv: &str,
        head: &Head,
        json: &Bytes,
        cursor: &mut OutboxCursor,
    ) -> Result<Result<(), String>, StoreError> {
        if cursor.failing_since != 0 {
            metrics::counter!("imd_webhook_retried_total").increment(1);
        }
        match self.post(head, json).await {
            Ok(()) => {
                *cursor = OutboxCursor {
                    seq: head.seq,
                    failing_since: 0,
                };
                let mut sched = self.sched();
                sched.failing.remove(conv);
                sched.attempts.remove(conv);
                Ok(Ok(()))
            }
            Err(reason) => {
                let now = now_ms();
                let since = if cursor.failing_since == 0 {
                    now
                } else {
                    cursor.failing_since
                };
                cursor.failing_since = since;
                let waiting_since = since.max(head.ts);
                if now - waiting_since < self.settings.retry_for.as_millis() as i64 {
                    self.sched().failing.insert(conv.to_owned(), head.ts);
                    return Ok(Err(reason));
                }
                let parked = ParkedEvent {
                    event: head.id.clone(),
                    conv: conv.to_owned(),
                    seq: head.seq,
                    ts: head.ts,
                    parked_ms: now,
                    reason,
                };
                let (id, dropped) = self.store.park(&parked, self.settings.parked_max).await?;
                tracing::warn!(conv, seq = head.seq, id, "webhook event parked");
                self.stats.parked.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("imd_webhook_parked_total").increment(1);
                if dropped > 0 {
                    self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
                    metrics::counter!("imd_webhook_dropped_total", "reason" => "parked_cap")
                        .increment(dropped);
                }
                cursor.seq = head.seq;
                Ok(Ok(()))
            }
        }
    }

    /// One POST of the event of `head` (message JSON `json`); the failure's reason.
    async fn post(&self, head: &Head, json: &[u8]) -> Result<(), String> {
        let body = event_body(head, json);
        let started = Instant::now();
        let answer = super::signed_post(
            &self.client,
            &self.settings.url,
            Some(&self.settings.secret),
            body,
        )
        .header("X-Imd-Event-Id", &head.id)
        .send()
        .await;
        metrics::histogram!("imd_webhook_post_seconds").record(started.elapsed().as_secs_f64());
        let failure = match answer {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Some("timed out".to_owned()),
            Err(e) => Some(format!("{e}")),
        };
        let mut health = self.health();
        match failure {
            None => {
                health.failures = 0;
                health.next_probe = None;
                if !self.stats.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("webhook receiver answers again");
                    self.recovered.notify_waiters();
                }
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("imd_webhook_delivered_total").increment(1);
                Ok(())
            }
            Some(reason) => {
                health.failures = health.failures.saturating_add(1);
                if health.down() {
                    let probes = health.failures - DOWN_AFTER + 1;
                    health.next_probe =
                        Some(Instant::now() + backoff(probes, self.settings.backoff_max));
                    if self.stats.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(reason, "webhook receiver counts as down; probing it");
                    }
                }
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("imd_webhook_failed_total").increment(1);
                Err(reason)
            }
        }
    }
}

/// The JSON body of the event of message `json`:
/// `{"id":…,"type":"message","ts":…,"msg":{…}}`, the message as stored, byte for byte.
fn event_body(head: &Head, json: &[u8]) -> Vec<u8> {
    let id = serde_json::to_string(&head.id).unwrap_or_default();
    let mut body = Vec::with_capacity(json.len() + id.len() + 48);
    body.extend_from_slice(b"{\"id\":");
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(b",\"type\":\"message\",\"ts\":");
    body.extend_from_slice(head.ts.to_string().as_bytes());
    body.extend_from_slice(b",\"msg\":");
    body.extend_from_slice(json);
    body.push(b'}');
    body
}

/// The delay before try `n + 1` of a failing conversation: 1 s doubling up to `max`,
/// ±20% jitter.
fn backoff(n: u32, max: Duration) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(max);
    let jitter = 0.8 + (random_u64() % 1000) as f64 / 2500.0;
    base.mul_f64(jitter)
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| now_ms() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_body_wraps_the_stored_message() {
        let json = br#"{"id":"m1","conv":"d:a~b","seq":3,"from":"a","body":{"t":"x\"y"},"ts":17}"#;
        let head: Head = serde_json::from_slice(json).unwrap();
        let body = event_body(&head, json);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "m1");
        assert_eq!(v["type"], "message");
        assert_eq!(v["ts"], 17);
        assert_eq!(v["msg"]["body"]["t"], "x\"y");
        assert!(head.event.is_none());
    }

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter() {
        for (n, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let d = backoff(n, Duration::from_secs(60)).as_secs_f64();
            assert!(d >= base * 0.8 && d <= base * 1.2, "try {n}: {d}");
        }
    }
}

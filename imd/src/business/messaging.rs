//! Sending, syncing and reading history; the group-commit task.
//!
//! Every send, from any transport, is validated here, queued to one commit task per
//! process, and committed in batches: one store transaction (one fsync) for everything
//! that queued while the previous batch was being written. The commit task then hands
//! each new message to the [`Deliver`] sink and answers its sender, both in commit
//! order, so pushes leave in the same order as `seq` and `useq` were given.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shared::ids::{ConvRef, direct_conv, is_valid_id};
use shared::protocol::{DEFAULT_PAGE, MAX_CID_LEN, MAX_PAGE, SendRequest};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Deliver, Error, Identity};
use crate::store::{CommitOutcome, MessageStore, NewMessage, Page};

/// How a queued send is answered: called once, from the commit task, so it must not block.
pub type Reply = Box<dyn FnOnce(Result<SendOutcome, Error>) + Send>;

/// A send's result.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The message JSON (the earlier one for a duplicate).
    pub json: Bytes,
    /// The request's `cid`.
    pub cid: Option<String>,
    /// Whether this was a resend of an already committed `cid`.
    pub duplicate: bool,
}

struct Queued {
    msg: NewMessage,
    reply: Reply,
}

/// The messaging service. Cheap to clone.
#[derive(Clone)]
pub struct Messaging {
    store: Arc<dyn MessageStore>,
    queue: mpsc::Sender<Queued>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Messaging {
    /// Starts the commit task. It commits at most `batch_max` messages per transaction,
    /// and on `shutdown` stops taking sends, commits what is queued, and returns.
    pub fn start(
        store: Arc<dyn MessageStore>,
        deliver: Arc<dyn Deliver>,
        batch_max: usize,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        // A queue of a few batches: deep enough to keep the store busy, shallow enough
        // that senders feel backpressure instead of growing memory.
        let (tx, rx) = mpsc::channel(batch_max * 4);
        let task = tokio::spawn(commit_loop(store.clone(), deliver, rx, batch_max, shutdown));
        (Self { store, queue: tx }, task)
    }

    /// Validates `req`, resolves its members, and queues it for commit. `reply` is called
    /// once the message is committed (or refused by the store). A request that breaks a
    /// rule is refused here, and `reply` is never called.
    pub async fn send(&self, who: &Identity, req: SendRequest, reply: Reply) -> Result<(), Error> {
        let msg = self.prepare(who, req)?;
        self.queue
            .send(Queued { msg, reply })
            .await
            .map_err(|_| Error::ShuttingDown)
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

    fn prepare(&self, who: &Identity, req: SendRequest) -> Result<NewMessage, Error> {
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
        let (conv, members) = match (&req.to, &req.conv, &req.shop) {
            (Some(to), None, None) => {
                if !is_valid_id(to) {
                    return Err(Error::BadRequest(format!(
                        "invalid uid {to:?}: 1-64 characters of [A-Za-z0-9_.:@-]"
                    )));
                }
                (direct_conv(&who.uid, to), pair(&who.uid, to))
            }
            (None, Some(conv), None) => {
                let members = self.members(conv)?;
                if !members.contains(&who.uid) {
                    return Err(Error::Forbidden(format!("not a member of {conv}")));
                }
                (conv.clone(), members)
            }
            (None, None, Some(shop)) => {
                if !is_valid_id(shop) {
                    return Err(Error::BadRequest(format!("invalid shop id {shop:?}")));
                }
                return Err(Error::NotFound(format!("no such shop {shop:?}")));
            }
            _ => {
                return Err(Error::BadRequest(
                    "give exactly one of to, conv, shop".into(),
                ));
            }
        };
        Ok(NewMessage {
            id: uuid::Uuid::now_v7().to_string(),
            conv,
            from: who.uid.clone(),
            cid: req.cid,
            body: req.body,
            ts: now_ms(),
            members,
        })
    }

    /// The members of a conversation.
    fn members(&self, conv: &str) -> Result<Vec<String>, Error> {
        match ConvRef::parse(conv) {
            Some(ConvRef::Direct(a, b)) => Ok(pair(a, b)),
            Some(ConvRef::Group(name)) => Err(Error::NotFound(format!("no such group {name:?}"))),
            Some(ConvRef::Service { .. }) | None => {
                Err(Error::NotFound(format!("no such conversation {conv:?}")))
            }
        }
    }

    /// The inbox of `uid` after `after`: what a device that has seen `after` missed.
    pub async fn sync(
        &self,
        uid: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Page<(u64, Bytes)>, Error> {
        Ok(self.store.inbox(uid, after, page_size(limit)).await?)
    }

    /// Messages of `conv` after `seq`, for a member of it.
    pub async fn history(
        &self,
        who: &Identity,
        conv: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Page<Bytes>, Error> {
        if !self.members(conv)?.contains(&who.uid) {
            return Err(Error::Forbidden(format!("not a member of {conv}")));
        }
        Ok(self.store.history(conv, after, page_size(limit)).await?)
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
        let (batch, replies): (Vec<_>, Vec<_>) = queued
            .drain(..)
            .map(|q| ((q.msg.cid.clone(), q.msg), q.reply))
            .unzip();
        let (cids, msgs): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let started = Instant::now();
        let result = store.commit(msgs).await;
        metrics::histogram!("imd_commit_latency_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("imd_commit_batch_size").record(n as f64);
        match result {
            Ok(outcomes) => {
                for ((outcome, reply), cid) in outcomes.into_iter().zip(replies).zip(cids) {
                    let (json, duplicate) = match outcome {
                        CommitOutcome::New(c) => {
                            deliver.deliver(&c);
                            metrics::counter!("imd_messages_committed_total").increment(1);
                            (c.json, false)
                        }
                        CommitOutcome::Duplicate(json) => {
                            metrics::counter!("imd_messages_duplicate_total").increment(1);
                            (json, true)
                        }
                    };
                    reply(Ok(SendOutcome {
                        json,
                        cid,
                        duplicate,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = n, "commit failed");
                metrics::counter!("imd_commit_failures_total").increment(1);
                for reply in replies {
                    reply(Err(Error::Store(e.clone())));
                }
            }
        }
    }
    tracing::debug!("commit task stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Committed, EmbeddedStore};
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
        }
    }

    fn req(v: serde_json::Value) -> SendRequest {
        serde_json::from_value(v).unwrap()
    }

    fn setup() -> (
        Messaging,
        Arc<Recorder>,
        tempfile::TempDir,
        CancellationToken,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let rec = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let (m, _task) = Messaging::start(store, rec.clone(), 64, stop.clone());
        (m, rec, dir, stop)
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
}

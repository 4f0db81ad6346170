//! The commit task of one lane, and the feed of what it committed.
//!
//! A lane drains up to `batch_max` queued ops into one store commit (one transaction,
//! one fsync on the embedded store), then, in commit order, hands each new message
//! (event messages included) to the [`Deliver`] sink, publishes it on the [`Feed`],
//! and hands each op's outcome to whoever queued it. It must not decide anything
//! about an op: that was done before it was queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Queued;
use crate::business::{Deliver, Error};
use crate::store::{CommitOutcome, Committed, MessageStore};

/// Committed messages as they commit, for followers such as the admin tail, and the
/// count of them.
pub(super) struct Feed {
    tx: tokio::sync::broadcast::Sender<Arc<Committed>>,
    committed: AtomicU64,
}

impl Feed {
    pub(super) fn new() -> Self {
        // Followers that fall this far behind are told they lagged, and catch up from
        // the store.
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        Self {
            tx,
            committed: AtomicU64::new(0),
        }
    }

    /// Follows what commits from now on.
    pub(super) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Committed>> {
        self.tx.subscribe()
    }

    /// Messages committed since start.
    pub(super) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    fn publish(&self, c: &Committed) {
        self.committed.fetch_add(1, Ordering::Relaxed);
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(c.clone()));
        }
    }
}

/// Commits what `rx` brings, batch by batch, until it is closed and drained; stops
/// taking new ops when `shutdown` is cancelled.
pub(super) async fn commit_loop(
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
            answers.push(q.done);
        }
        let started = Instant::now();
        let result = store.commit(ops).await;
        metrics::histogram!("imd_commit_latency_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("imd_commit_batch_size").record(n as f64);
        if result.is_ok() {
            // Before anything of this commit reaches a device: if the store lost state,
            // its generation moves first (see `MessageStore::verify_generation`).
            if let Err(e) = store.verify_generation().await {
                tracing::warn!(error = %e, "store generation not checked after a commit");
            }
        }
        match result {
            Ok(outcomes) => {
                for (outcome, done) in outcomes.into_iter().zip(answers) {
                    match &outcome {
                        CommitOutcome::New(c) | CommitOutcome::Recalled(Ok(c)) => {
                            deliver.deliver(c);
                            feed.publish(c);
                            metrics::counter!("imd_messages_committed_total").increment(1);
                        }
                        CommitOutcome::Duplicate(_) => {
                            metrics::counter!("imd_messages_duplicate_total").increment(1);
                        }
                        CommitOutcome::Joined(entries) => {
                            for c in entries {
                                deliver.deliver(c);
                            }
                        }
                        CommitOutcome::Read { .. } | CommitOutcome::Recalled(Err(_)) => {}
                    }
                    if let Some(done) = done {
                        done(Ok(outcome));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = n, "commit failed");
                metrics::counter!("imd_commit_failures_total").increment(1);
                for done in answers.into_iter().flatten() {
                    done(Err(Error::Store(e.clone())));
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

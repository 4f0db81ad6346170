//! Retention: the task that removes messages older than `--retention` from the store,
//! one pass every interval (a tenth of the retention, at most a minute), each pass in
//! small steps ([`MessageStore::trim`]) with a pause after each step that removed
//! something, so that commits get the store in between. It decides when and how much;
//! the store decides how, and what it keeps (see `MessageStore::trim`). It must not
//! hold anything across a step, and never runs a step after shutdown begins.
//!
//! On one node it runs beside the commits; in a cluster on the nodes with the
//! dispatcher role, and several of them may pass at once: a store's trim is safe
//! against that (only one removes each entry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::time::now_ms;
use tokio_util::sync::CancellationToken;

use crate::store::{MessageStore, StoreError, TrimPass};

/// Entries one step removes at most: one small write.
pub const STEP_BUDGET: usize = 256;
/// The pause after a step that removed something: a commit waiting for the store's
/// writer (the embedded store has one) goes first.
const STEP_PAUSE: Duration = Duration::from_millis(2);

/// The retention task's settings and its store.
pub struct Retention {
    store: Arc<dyn MessageStore>,
    /// How long messages are kept.
    keep: Duration,
    /// How often a pass runs.
    every: Duration,
}

impl Retention {
    /// Keeps messages for `keep`, a pass every `every`.
    pub fn new(store: Arc<dyn MessageStore>, keep: Duration, every: Duration) -> Self {
        Self { store, keep, every }
    }

    /// Passes every interval until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.cancelled() => break,
            }
            match self.pass(&stop).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "retention pass"),
                Err(e) => {
                    metrics::counter!("imd_retention_failures_total").increment(1);
                    tracing::warn!(error = %e, "retention pass failed; the next one goes on");
                }
            }
        }
    }

    /// One pass: removes what is older than the retention now; returns how many
    /// entries (messages and inbox entries).
    pub async fn pass(&self, stop: &CancellationToken) -> Result<u64, StoreError> {
        let started = Instant::now();
        let keep = i64::try_from(self.keep.as_millis()).unwrap_or(i64::MAX);
        let before = now_ms().saturating_sub(keep);
        let mut pass = TrimPass::default();
        let mut removed = 0;
        while !pass.done() {
            if stop.is_cancelled() {
                return Ok(removed);
            }
            let n = self.store.trim(before, STEP_BUDGET, &mut pass).await?;
            removed += n;
            metrics::counter!("imd_retention_removed_total").increment(n);
            if n > 0 {
                tokio::time::sleep(STEP_PAUSE).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        metrics::gauge!("imd_retention_last_pass_timestamp_seconds").set(now_ms() as f64 / 1000.0);
        metrics::histogram!("imd_retention_pass_seconds").record(started.elapsed().as_secs_f64());
        Ok(removed)
    }
}

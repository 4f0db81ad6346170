//! Hooks for tests of the sweeper, of the idempotency takeover and of a recall's second
//! try: a writer that died part-way through a commit or a recall, and a look at a
//! conversation's pending fan-outs. Built
//! only for tests (`cfg(test)`, or the `test-hooks` feature that `imd`'s integration
//! tests enable); it must not be reachable from a release build.

use super::prepared::Prepared;
use super::recall::Checked;
use crate::store::redis::RedisStore;
use crate::store::redis::keys::conv_key;
use crate::store::{CommitOutcome, Op, Recall, StoreError};

impl RedisStore {
    /// Runs steps 1 to 3 of a commit (claims, marks, stores) but writes no inbox entry:
    /// a writer that died right after storing. Joins in `batch` run in full. For tests
    /// of the sweeper.
    #[doc(hidden)]
    pub async fn commit_unfanned(&self, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError> {
        self.commit_batch(batch, false).await
    }

    /// How many fan-outs of `conv` are pending (stored, inbox entries not all
    /// confirmed written). For tests.
    #[doc(hidden)]
    pub async fn pending_fanouts(&self, conv: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("LLEN")
            .arg(conv_key(conv, "pending"))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::from)
    }

    /// Claims the idempotency keys of `batch`'s messages and stops: a writer that died
    /// between claiming and storing. For tests of the takeover.
    #[doc(hidden)]
    pub async fn commit_claims_only(&self, batch: Vec<Op>) -> Result<(), StoreError> {
        let mut todo = Vec::new();
        for (i, op) in batch.into_iter().enumerate() {
            if let Op::Message(m) = op {
                todo.push(Prepared::new(i, m)?);
            }
        }
        self.claim(&todo).await.map(drop)
    }

    /// Runs a recall's part in its conversation (checks, the recalled form stored, the
    /// fan-out drained) and stops before rewriting any inbox or committing the event: a
    /// writer that died half-way through a recall. Whether the recall was allowed. For
    /// tests of a recall's second try.
    #[doc(hidden)]
    pub async fn recall_unfinished(&self, r: &Recall) -> Result<bool, StoreError> {
        Ok(matches!(
            self.recall_in_conversation(r).await?,
            Checked::Rewrite { .. }
        ))
    }
}

//! The sweep: finishes the fan-outs that writers began and did not finish (they died
//! between storing a message and writing its inbox entries). For each shard, the
//! conversations marked more than [`SWEEP_AGE_MS`] ago: take the lease (skip the
//! conversation if it is held), drain everything pending up to the conversation's
//! current end, and unmark it only if its pending list is then empty and its score is
//! still the one read (a newer commit re-marked it). It must never wait for a lease.

use futures_util::future::join_all;

use super::drain::{Drain, Fanned, token};
use super::scripts::{BUSY, DONE, DUE, UNMARK};
use super::{SWEEP_AGE_MS, SWEEP_LIMIT};
use crate::store::StoreError;
use crate::store::redis::RedisStore;
use crate::store::redis::keys::shard_key;

impl RedisStore {
    /// Finishes the due conversations of shard `k`; returns how many entries.
    pub(super) async fn sweep_shard(&self, k: u32) -> Result<usize, StoreError> {
        let shard = shard_key(k);
        let mut conn = self.conn.clone();
        let due: Vec<String> = DUE
            .key(&shard)
            .arg(SWEEP_AGE_MS)
            .arg(SWEEP_LIMIT)
            .invoke_async(&mut conn)
            .await?;
        let convs = due.chunks_exact(2).map(|pair| async {
            let (conv, score) = (&pair[0], &pair[1]);
            let token = token();
            let first = self.step(conv, &token, 0, 0, false).await?;
            if first.code == BUSY {
                return Ok(0); // its writer, or another sweeper, is on it
            }
            let (fanned, last) = self.drain(conv, &token, first, Drain::Sweep).await;
            let n = fanned.len();
            self.relayed.push(
                fanned
                    .into_iter()
                    .filter(|f| !f.recipients.is_empty())
                    .map(Fanned::into_committed),
            );
            let last = last?;
            if last.code == DONE && last.empty {
                let mut conn = self.conn.clone();
                UNMARK
                    .key(&shard)
                    .arg(conv)
                    .arg(score)
                    .invoke_async::<i64>(&mut conn)
                    .await?;
            }
            Ok::<_, StoreError>(n)
        });
        let counts = join_all(convs).await;
        let mut n = 0;
        for c in counts {
            n += c?;
        }
        Ok(n)
    }
}

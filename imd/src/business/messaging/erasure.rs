//! Erasure: an operator removes the body of every message a user sent
//! (`DELETE /admin/v1/users/{uid}/messages`). Each message stays where it was, as a
//! tombstone with `"erased": true` and no body, in its conversation and in every inbox
//! copy, as a recall leaves it; unlike a recall, nothing is committed (no event
//! message, no push): devices see the tombstones in history and `sync`. It must not
//! decide who may erase (the admin API does), and keeps each store call bounded.
//!
//! The user's own inbox holds every message they sent, so it is the list of what to
//! erase: it is read in rounds of at most [`ROUND_TARGETS`] of them; each round erases
//! them in their conversations ([`MessageStore::erase`], [`CONV_CHUNK`] per call), then
//! in the inboxes of everyone who may hold a copy ([`MessageStore::erase_copies`],
//! nothing to do on the embedded store), the user's own inbox last. A second call
//! finds in the user's inbox only what a first one left unfinished, and does it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures_util::{StreamExt, TryStreamExt, stream};
use shared::protocol::{MAX_PAGE, Message};

use super::Messaging;
use crate::business::Error;
use crate::store::{StoreError, erasable};

/// Messages one round collects before it erases them: bounds the memory of a call,
/// and each round reads every holder's inbox once.
const ROUND_TARGETS: usize = 10_000;
/// Messages of one conversation erased per store call (on Redis, one hold of the
/// conversation's fan-out lease).
const CONV_CHUNK: usize = 64;
/// Holders whose inboxes are rewritten at once.
const HOLDERS_AT_ONCE: usize = 8;

impl Messaging {
    /// Erases the body of every message `uid` sent; returns how many this call erased
    /// (0 when an earlier call erased them all).
    pub async fn erase_user(&self, uid: &str) -> Result<u64, Error> {
        let mut after = 0;
        let mut erased = 0;
        loop {
            let mut targets: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut collected = 0;
            let more = loop {
                let page = self.0.store.inbox(uid, after, MAX_PAGE).await?;
                for (useq, json) in &page.items {
                    after = *useq;
                    let m: Message = serde_json::from_slice(json)
                        .map_err(|e| Error::Store(StoreError::decode("message", e)))?;
                    if erasable(&m, uid) {
                        targets.entry(m.conv).or_default().push(m.seq);
                        collected += 1;
                    }
                }
                if !page.more || collected >= ROUND_TARGETS {
                    break page.more;
                }
            };
            erased += self.erase_round(uid, targets).await?;
            if !more {
                return Ok(erased);
            }
        }
    }

    /// Erases `targets` (conversation → seqs, all sent by `uid`) in their conversations,
    /// then in every holder's inbox, `uid`'s last.
    async fn erase_round(
        &self,
        uid: &str,
        targets: BTreeMap<String, Vec<u64>>,
    ) -> Result<u64, Error> {
        let mut erased = 0;
        let mut holders = BTreeSet::new();
        let mut all = HashSet::new();
        for (conv, seqs) in targets {
            for chunk in seqs.chunks(CONV_CHUNK) {
                erased += self.0.store.erase(&conv, uid, chunk).await?;
            }
            match self.holders_of(&conv).await {
                Ok(h) => holders.extend(h),
                // A conversation that no longer resolves (a group removed): its
                // members' copies cannot be found; the conversation's copy is erased.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            all.extend(seqs.into_iter().map(|seq| (conv.clone(), seq)));
        }
        holders.remove(uid);
        let all = &all;
        stream::iter(holders)
            .map(|h| async move { self.0.store.erase_copies(&h, all).await })
            .buffer_unordered(HOLDERS_AT_ONCE)
            .try_collect::<Vec<u64>>()
            .await?;
        // Last: a copy left with its body in `uid`'s inbox is what a second call finds.
        self.0.store.erase_copies(uid, all).await?;
        Ok(erased)
    }
}

//! The decision lock of a customer-service conversation: one decision over it, and the
//! commit of that decision's ops, at a time, whichever node makes it.
//!
//! A decision reads the conversation's state, maybe assigns it, and queues ops whose
//! recipients depend on what it read (the message goes to the agent it found, the join
//! copies the history up to that point). Two decisions over one conversation must
//! not interleave, and the second must not read before the first's ops are committed:
//! on two nodes, two commit queues would otherwise order one node's join against the
//! other node's message in any way, and an agent could miss a message in its inbox.
//!
//! So a decision holds [`Held`] from before it reads until its last op is committed
//! (its `done` drops it). In one process a mutex per conversation is enough; when
//! the store is shared ([`ShopStore::shared`]), the holder also takes the
//! conversation's lease in the store, which expires if its holder dies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{DirectoryStore, StoreError};

/// How long a lease lasts if its holder never gives it back (a node died). A decision
/// and its commit take milliseconds; a commit slower than this could let another node
/// decide before it lands.
const LEASE_MS: u64 = 10_000;
/// How long a decision waits for another node's lease before it gives up (the client
/// retries with the same `cid`).
const WAIT_MAX: Duration = Duration::from_secs(5);

type Slot = Arc<tokio::sync::Mutex<()>>;

/// The decision locks of one process.
pub struct Locks {
    dir: Arc<dyn DirectoryStore>,
    /// A mutex per conversation that someone holds or waits for; removed by the last
    /// holder, so bounded by the decisions in flight.
    local: Arc<Mutex<HashMap<String, Slot>>>,
}

/// A held decision lock; dropping it lets the next decision over the conversation go.
pub struct Held {
    conv: String,
    /// The store lease's token, when the store is shared.
    token: Option<String>,
    dir: Arc<dyn DirectoryStore>,
    local: Arc<Mutex<HashMap<String, Slot>>>,
    slot: Option<(Slot, tokio::sync::OwnedMutexGuard<()>)>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("conv", &self.conv).finish()
    }
}

impl Locks {
    /// Locks over `dir`'s leases.
    pub fn new(dir: Arc<dyn DirectoryStore>) -> Self {
        Self {
            dir,
            local: Arc::default(),
        }
    }

    /// Waits for `conv`'s decision lock.
    pub async fn lock(&self, conv: &str) -> Result<Held, StoreError> {
        let slot = {
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            local.entry(conv.to_owned()).or_default().clone()
        };
        let guard = slot.clone().lock_owned().await;
        let mut held = Held {
            conv: conv.to_owned(),
            token: None,
            dir: self.dir.clone(),
            local: self.local.clone(),
            slot: Some((slot, guard)),
        };
        if !self.dir.shared() {
            return Ok(held);
        }
        let token = uuid::Uuid::now_v7().simple().to_string();
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        while !self.dir.try_decide(conv, &token, LEASE_MS).await? {
            if started.elapsed() > WAIT_MAX {
                return Err(StoreError::DecisionHeld {
                    conv: conv.to_owned(),
                    after: started.elapsed(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        held.token = Some(token);
        Ok(held)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(token) = self.token.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (dir, conv) = (self.dir.clone(), self.conv.clone());
            rt.spawn(async move {
                if let Err(e) = dir.end_decide(&conv, &token).await {
                    // It expires by itself; until then the conversation's next
                    // decision waits.
                    tracing::warn!(conv, error = %e, "could not give a decision lease back");
                }
            });
        }
        if let Some((slot, guard)) = self.slot.take() {
            drop(guard);
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            // Ours and the map's: nobody else holds or waits for it.
            if Arc::strong_count(&slot) == 2 {
                local.remove(&self.conv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_nothing_kept_after() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn DirectoryStore> =
            Arc::new(crate::store::EmbeddedStore::open(dir.path()).unwrap());
        let locks = Arc::new(Locks::new(store));
        let first = locks.lock("s:a~b").await.unwrap();
        let l = locks.clone();
        let second = tokio::spawn(async move { l.lock("s:a~b").await.map(drop) });
        // Another conversation is not held up.
        drop(locks.lock("s:a~c").await.unwrap());
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the second waits for the first");
        drop(first);
        second.await.unwrap().unwrap();
        assert!(locks.local.lock().unwrap().is_empty());
    }
}

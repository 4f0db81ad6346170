//! Noticing that Redis lost acknowledged writes, and moving to a new generation.
//!
//! Redis without persistence loses everything when it restarts; with AOF `everysec`,
//! or a failover to a replica that had not caught up, it loses the last writes. Then
//! `seq` and `useq` counters go back and are given again, and a device that
//! deduplicates by `useq` would drop the new messages as ones it has. So the store
//! keeps a *generation* (`imd:{g}:generation`, `<unix ms>-<random>`), and every
//! process checks it after each of its commits, before anything of that commit is
//! delivered, and once a second besides ([`RedisStore::verify`]):
//!
//! - the key is gone: everything was lost (a restart without persistence, `FLUSHALL`,
//!   an empty replica promoted). The first process to look makes a new generation;
//! - the key is there but this process's own write clock (`imd:{g}:clock:<process>`,
//!   incremented by every check, so after each of its commits) is at or under the
//!   highest value it has seen: writes of this process were lost, and the process
//!   makes a new generation;
//! - the key holds a generation other than the one this process knows: another
//!   process made it; this one adopts it.
//!
//! The check after a commit increments the clock (a write); the checks of a sync and
//! of the once-a-second watch only read the key ([`RedisStore::verify_read`]), since
//! only this process's own commits can have lost writes of its own, and a reconnect
//! storm should not cost a write per sync.
//!
//! Writes persist in order (AOF, replication), so if a commit of this process was
//! lost, the clock increment after it was lost too. A loss of only other processes'
//! last writes is seen by them at their next check (at most a second later, or their
//! next commit); until then this process's deliveries carry the old generation. A
//! loss of everything is seen by whoever commits first, before it delivers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use redis::Script;

use super::RedisStore;
use super::keys::global_key;
use crate::store::{Generation, StoreError};

/// How long a process's write clock outlives its last check: a process that stopped
/// leaves no key behind for long.
const CLOCK_TTL_MS: u64 = 24 * 3600 * 1000;

static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/now_ms_lib.lua"),
        include_str!("lua/generation_lib.lua"),
        include_str!("lua/generation_read.lua"),
    ))
});

static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/now_ms_lib.lua"),
        include_str!("lua/generation_lib.lua"),
        include_str!("lua/generation.lua"),
    ))
});

/// One process's view of the generation.
pub(crate) struct GenerationState {
    /// This process's clock key.
    clock: String,
    /// The highest value of the clock seen.
    seen: AtomicU64,
    /// The generation known; `None` before the first check.
    known: Mutex<Option<Generation>>,
}

impl Default for GenerationState {
    fn default() -> Self {
        let process = uuid::Uuid::now_v7().simple().to_string();
        Self {
            clock: global_key(&format!("clock:{process}")),
            seen: AtomicU64::new(0),
            known: Mutex::new(None),
        }
    }
}

impl RedisStore {
    /// The generation known, without asking Redis (an empty id before the first check).
    pub fn known_generation(&self) -> Generation {
        let known = self
            .generation
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        known.clone().unwrap_or(Generation("".into()))
    }

    /// Reads the generation, making a new one if the key is gone; the one now, and
    /// whether it changed since this process's last check.
    pub(crate) async fn verify_read(&self) -> Result<(Generation, bool), StoreError> {
        let known = self.known_generation();
        let (id, _made): (String, u8) = READ
            .key(global_key("generation"))
            .arg(format!("{:08x}", uuid::Uuid::now_v7().as_u128() as u32))
            .arg(known.as_str())
            .invoke_async(&mut self.conn.clone())
            .await?;
        let now = Generation(id.into());
        let changed = self.adopt(now.clone());
        if changed {
            // The clock belongs to the state that was lost: what this process writes
            // from now on starts a new lineage, whatever the key holds.
            self.generation.seen.store(0, Ordering::Relaxed);
        }
        Ok((now, changed))
    }

    /// Records `now` as the generation known; whether it differs from the one before.
    fn adopt(&self, now: Generation) -> bool {
        let mut known = self
            .generation
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let changed = known.as_ref().is_some_and(|k| *k != now);
        if changed {
            tracing::error!(
                generation = now.as_str(),
                "redis lost acknowledged state; devices are told to sync again from the start"
            );
        }
        *known = Some(now);
        changed
    }

    /// Checks the generation (see the module doc); the one now, and whether it
    /// changed since the last check of this process.
    pub(crate) async fn verify(&self) -> Result<(Generation, bool), StoreError> {
        let st = &self.generation;
        let known = self.known_generation();
        let (clock, id, made): (u64, String, u8) = CHECK
            .key(&st.clock)
            .key(global_key("generation"))
            .arg(st.seen.load(Ordering::Relaxed))
            .arg(known.as_str())
            .arg(CLOCK_TTL_MS)
            .arg(format!("{:08x}", uuid::Uuid::now_v7().as_u128() as u32))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let now = Generation(id.into());
        let changed = self.adopt(now.clone());
        if changed || made == 1 {
            // A new lineage of the clock starts here.
            st.seen.store(clock, Ordering::Relaxed);
        } else {
            st.seen.fetch_max(clock, Ordering::Relaxed);
        }
        Ok((now, changed))
    }
}

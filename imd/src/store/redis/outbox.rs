//! The webhook outbox on Redis (see `crate::store::outbox`; keys in `keys`, *Webhook
//! outbox*). Marks share the fan-out's mark script and its age guarantee, so a mark
//! listed at least [`SWEEP_AGE_MS`] old names every message its commit stored; leases
//! and cursor moves are one script each on the conversation's slot.

use std::sync::LazyLock;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use redis::Script;

use super::keys::{
    SHARDS, conv_key, hook_parked_id_key, hook_parked_key, hook_shard_key, shard_of,
};
use super::messages::SWEEP_AGE_MS;
use super::messages::scripts::{DUE, RELEASE, UNMARK};
use super::{RedisStore, from_json, to_json};
use crate::store::{OutboxCursor, OutboxMark, OutboxStore, ParkedEvent, StoreError};

// A mark listed as settled must be at least as old as the sweep's (see
// `OutboxStore::outbox_unmark`).
const _: () = assert!(SWEEP_AGE_MS <= crate::store::OUTBOX_SETTLE_MS);

/// Takes or renews a delivery lease and reads the cursor. KEYS: lock, cursor. ARGV:
/// token, lease ms. Returns {1, seq, since}, or {0, …} when another token holds it.
static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/hook_lease.lua")));

/// Sets the cursor under the lease and renews it. KEYS: lock, cursor. ARGV: token,
/// lease ms, seq, since. Returns 1, or 0 when the lease is not ours.
static ADVANCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/hook_advance.lua")));

/// Parks an event. KEYS: parked, parked id. ARGV: event JSON, most kept. Returns {id,
/// dropped}.
static PARK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/hook_park.lua")));

/// `"<id> <json>"`, a parked member, as its parts.
fn parked_member(member: &str) -> Result<(u64, ParkedEvent), StoreError> {
    let (id, json) = member
        .split_once(' ')
        .ok_or_else(|| StoreError::Corrupt(format!("parked webhook event {member:?}")))?;
    let id = id
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("parked webhook event id {id:?}")))?;
    Ok((id, from_json("parked event", json)?))
}

#[async_trait]
impl OutboxStore for RedisStore {
    async fn outbox_due(
        &self,
        min_age_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxMark>, StoreError> {
        let per_shard = limit.div_ceil(SHARDS as usize).max(1);
        let shards = (0..SHARDS).map(|k| {
            let mut conn = self.conn.clone();
            async move {
                DUE.key(hook_shard_key(k))
                    .arg(min_age_ms)
                    .arg(per_shard)
                    .invoke_async::<Vec<String>>(&mut conn)
                    .await
            }
        });
        let mut out = Vec::new();
        for flat in try_join_all(shards).await? {
            for pair in flat.chunks_exact(2) {
                out.push(OutboxMark {
                    conv: pair[0].clone(),
                    marked_ms: pair[1].parse().unwrap_or(0),
                    mark: pair[1].clone(),
                });
            }
        }
        out.sort_by_key(|m| m.marked_ms);
        Ok(out)
    }

    async fn outbox_marked(&self) -> Result<u64, StoreError> {
        let shards = (0..SHARDS).map(|k| {
            let mut conn = self.conn.clone();
            async move {
                redis::cmd("ZCARD")
                    .arg(hook_shard_key(k))
                    .query_async::<u64>(&mut conn)
                    .await
            }
        });
        Ok(try_join_all(shards).await?.into_iter().sum())
    }

    async fn outbox_lease(
        &self,
        conv: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<Option<OutboxCursor>, StoreError> {
        let mut conn = self.conn.clone();
        let (got, seq, since): (u8, u64, i64) = LEASE
            .key(conv_key(conv, "hook-lock"))
            .key(conv_key(conv, "hook"))
            .arg(token)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok((got == 1).then_some(OutboxCursor {
            seq,
            failing_since: since,
        }))
    }

    async fn outbox_advance(
        &self,
        conv: &str,
        token: &str,
        cursor: OutboxCursor,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let ok: u8 = ADVANCE
            .key(conv_key(conv, "hook-lock"))
            .key(conv_key(conv, "hook"))
            .arg(token)
            .arg(ttl_ms)
            .arg(cursor.seq)
            .arg(cursor.failing_since)
            .invoke_async(&mut conn)
            .await?;
        Ok(ok == 1)
    }

    async fn outbox_release(&self, conv: &str, token: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        RELEASE
            .key(conv_key(conv, "hook-lock"))
            .arg(token)
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    async fn outbox_unmark(&self, mark: &OutboxMark, _delivered: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let removed: i64 = UNMARK
            .key(hook_shard_key(shard_of(&mark.conv)))
            .arg(&mark.conv)
            .arg(&mark.mark)
            .invoke_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    async fn park(&self, event: &ParkedEvent, max: usize) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn.clone();
        Ok(PARK
            .key(hook_parked_key())
            .key(hook_parked_id_key())
            .arg(to_json(event)?)
            .arg(max)
            .invoke_async(&mut conn)
            .await?)
    }

    async fn parked(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ParkedEvent)>, StoreError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(hook_parked_key())
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        members.iter().map(|m| parked_member(m)).collect()
    }

    async fn unpark(&self, id: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("ZREMRANGEBYSCORE")
            .arg(hook_parked_key())
            .arg(id)
            .arg(id)
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    async fn parked_count(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("ZCARD")
            .arg(hook_parked_key())
            .query_async(&mut conn)
            .await?)
    }
}

//! The blacklist on Redis: one hash under the directory's hash tag (see `keys`). It
//! mirrors the embedded backend's semantics exactly; it holds no business rules.
//!
//! Every blacklist change publishes on [`BLACKLIST_CHANNEL`] from the script that
//! stores it, so a change is never stored without its notification.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;
use shared::admin::{BlacklistEntry, BlacklistKind};

use super::keys::{blacklist_field, blacklist_key};
use super::registry::BLACKLIST_CHANNEL;
use super::{RedisStore, from_json, to_json};
use crate::store::{BlacklistStore, StoreError};

/// Stores one entry and publishes the change.
/// KEYS[1] = blacklist; ARGV[1] = field, ARGV[2] = entry JSON, ARGV[3] = channel.
static BLACKLIST_PUT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/blacklist_put.lua")));

/// Deletes the fields whose value is still the one given (a purge must not delete an
/// entry replaced since it was read), publishes when any went; returns how many.
/// KEYS[1] = blacklist; ARGV[1] = channel, then field, JSON, field, JSON, ….
static BLACKLIST_DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/blacklist_delete.lua")));

/// Deletes one field whatever its value, publishes when it existed; whether it did.
/// KEYS[1] = blacklist; ARGV[1] = channel, ARGV[2] = field.
static BLACKLIST_REMOVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/blacklist_remove.lua")));

#[async_trait]
impl BlacklistStore for RedisStore {
    async fn blacklist(&self) -> Result<Vec<BlacklistEntry>, StoreError> {
        let values: Vec<String> = redis::cmd("HVALS")
            .arg(blacklist_key())
            .query_async(&mut self.conn.clone())
            .await?;
        let mut entries = values
            .iter()
            .map(|v| from_json::<BlacklistEntry>("blacklist entry", v))
            .collect::<Result<Vec<_>, _>>()?;
        // The embedded store's order: by kind, then value.
        entries.sort_by(|a, b| (a.kind.as_str(), &a.value).cmp(&(b.kind.as_str(), &b.value)));
        Ok(entries)
    }

    async fn blacklist_put(&self, entry: BlacklistEntry) -> Result<(), StoreError> {
        BLACKLIST_PUT
            .key(blacklist_key())
            .arg(blacklist_field(entry.kind, &entry.value))
            .arg(to_json(&entry)?)
            .arg(BLACKLIST_CHANNEL)
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn blacklist_remove(&self, kind: BlacklistKind, value: &str) -> Result<bool, StoreError> {
        let n: u64 = BLACKLIST_REMOVE
            .key(blacklist_key())
            .arg(BLACKLIST_CHANNEL)
            .arg(blacklist_field(kind, value))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    async fn blacklist_purge(&self, now_ms: i64) -> Result<u64, StoreError> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(blacklist_key())
            .query_async(&mut self.conn.clone())
            .await?;
        let mut expired = Vec::new();
        for (field, json) in all {
            let entry: BlacklistEntry = from_json("blacklist entry", &json)?;
            if !entry.live(now_ms) {
                expired.push((field, json));
            }
        }
        if expired.is_empty() {
            return Ok(0);
        }
        let mut invocation = BLACKLIST_DELETE.key(blacklist_key());
        invocation.arg(BLACKLIST_CHANNEL);
        for (field, json) in &expired {
            invocation.arg(field).arg(json);
        }
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }
}

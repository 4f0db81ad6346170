//! Devices' push tokens on Redis: a hash and a sorted set per user, under the user's
//! hash tag (see `keys`); one script changes both. It mirrors the embedded backend's
//! semantics exactly.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::keys::{push_at_key, push_key};
use super::{RedisStore, from_json, to_json};
use crate::store::{PushStore, PushToken, StoreError};

/// Sets a token and applies the bound; returns the devices removed.
/// KEYS[1] = push, KEYS[2] = push-at; ARGV[1] = device, ARGV[2] = JSON, ARGV[3] = at,
/// ARGV[4] = max.
static PUSH_REGISTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/push_register.lua")));

/// Removes a token; 1 when there was one.
/// KEYS[1] = push, KEYS[2] = push-at; ARGV[1] = device.
static PUSH_UNREGISTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/push_unregister.lua")));

#[async_trait]
impl PushStore for RedisStore {
    async fn push_register(
        &self,
        uid: &str,
        token: PushToken,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        PUSH_REGISTER
            .key(push_key(uid))
            .key(push_at_key(uid))
            .arg(&token.device)
            .arg(to_json(&token)?)
            .arg(token.at)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn push_unregister(&self, uid: &str, device: &str) -> Result<bool, StoreError> {
        let n: u64 = PUSH_UNREGISTER
            .key(push_key(uid))
            .key(push_at_key(uid))
            .arg(device)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    async fn push_tokens(&self, uid: &str) -> Result<Vec<PushToken>, StoreError> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(push_key(uid))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut tokens = all
            .iter()
            .map(|(_, json)| from_json::<PushToken>("push token", json))
            .collect::<Result<Vec<_>, _>>()?;
        // The embedded store's order: by device.
        tokens.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(tokens)
    }
}

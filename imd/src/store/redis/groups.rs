//! Groups on Redis: one hash, group → members JSON, and the reverse index, a set of
//! groups per member, under the directory's hash tag (see `keys`); one script changes
//! both. It mirrors the embedded backend's semantics exactly.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::keys::{groups_key, member_groups_prefix};
use super::{RedisStore, to_json};
use crate::store::{GroupStore, StoreError};

/// Sets a group's members and moves the reverse index from the old members to the new.
/// KEYS[1] = groups; ARGV[1] = group, ARGV[2] = members JSON, ARGV[3] = reverse prefix,
/// ARGV[4..] = members.
static SET_GROUP_MEMBERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/set_group_members.lua")));

#[async_trait]
impl GroupStore for RedisStore {
    async fn group_members(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.hget_json(groups_key(), name).await
    }

    async fn set_group_members(&self, name: &str, members: Vec<String>) -> Result<(), StoreError> {
        let mut invocation = SET_GROUP_MEMBERS.key(groups_key());
        invocation
            .arg(name)
            .arg(to_json(&members)?)
            .arg(member_groups_prefix());
        for m in &members {
            invocation.arg(m);
        }
        invocation
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn member_groups(&self, uid: &str) -> Result<Vec<String>, StoreError> {
        let mut groups: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}{uid}", member_groups_prefix()))
            .query_async(&mut self.conn.clone())
            .await?;
        groups.sort();
        Ok(groups)
    }
}

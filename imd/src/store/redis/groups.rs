//! Groups on Redis: one hash, group → members JSON, and the reverse index, a set of
//! groups per member, under the directory's hash tag (see `keys`); one script changes
//! both. It mirrors the embedded backend's semantics exactly.

use async_trait::async_trait;

use super::keys::{groups_key, member_groups_prefix};
use super::{RedisStore, to_json};
use crate::store::{GroupStore, StoreError};

#[async_trait]
impl GroupStore for RedisStore {
    async fn group_members(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.hget_json(groups_key(), name).await
    }

    async fn set_group_members(&self, name: &str, members: Vec<String>) -> Result<(), StoreError> {
        self.set_with_reverse_index(
            groups_key(),
            name,
            to_json(&members)?,
            &members,
            member_groups_prefix(),
        )
        .await
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

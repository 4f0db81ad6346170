//! Groups on Redis: one hash, group → members JSON, under the directory's hash tag
//! (see `keys`). It mirrors the embedded backend's semantics exactly.

use async_trait::async_trait;

use super::keys::groups_key;
use super::{RedisStore, to_json};
use crate::store::{GroupStore, StoreError};

#[async_trait]
impl GroupStore for RedisStore {
    async fn group_members(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.hget_json(groups_key(), name).await
    }

    async fn set_group_members(&self, name: &str, members: Vec<String>) -> Result<(), StoreError> {
        redis::cmd("HSET")
            .arg(groups_key())
            .arg(name)
            .arg(to_json(&members)?)
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn member_groups(&self, _uid: &str) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Corrupt("TODO(#14): member_groups".into()))
    }
}

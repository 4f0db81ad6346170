//! Named groups and their members in redb. It must not read or write other domains'
//! tables.

use async_trait::async_trait;
use redb::{TableDefinition, WriteTransaction};

use super::{EmbeddedStore, get_json, to_json};
use crate::store::{GroupStore, StoreError};

/// `group` → members JSON array.
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");

/// Creates the tables of this domain (see [`super::EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(GROUPS)?;
    Ok(())
}

#[async_trait]
impl GroupStore for EmbeddedStore {
    async fn group_members(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| get_json(db, GROUPS, &name)).await
    }

    async fn set_group_members(&self, name: &str, members: Vec<String>) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(GROUPS)?;
                t.insert(name.as_str(), to_json(&members)?.as_slice())?;
            }
            Ok(txn.commit()?)
        })
        .await
    }

    async fn member_groups(&self, _uid: &str) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Corrupt("TODO(#14): member_groups".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn groups_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .set_group_members("g", vec!["x".into()])
            .await
            .unwrap();
        assert_eq!(
            store.group_members("g").await.unwrap(),
            Some(vec!["x".into()])
        );
    }
}

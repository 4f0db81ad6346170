//! Named groups and their members in redb, and the reverse index of each user's
//! groups, written together in one transaction. It must not read or write other
//! domains' tables.

use async_trait::async_trait;
use redb::{ReadableDatabase, TableDefinition, WriteTransaction};

use super::{EmbeddedStore, get_json, json_at, scan_second, to_json};
use crate::store::{GroupStore, StoreError};

/// `group` → members JSON array.
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// `(uid, group)` → (): the groups each user is a member of ([`GROUPS`] reversed).
const MEMBER_GROUPS: TableDefinition<(&str, &str), ()> = TableDefinition::new("member_groups");

/// Creates the tables of this domain (see [`super::EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(GROUPS)?;
    txn.open_table(MEMBER_GROUPS)?;
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
                let mut by_member = txn.open_table(MEMBER_GROUPS)?;
                let old: Vec<String> = json_at(&t, &name)?.unwrap_or_default();
                for uid in old.iter().filter(|u| !members.contains(u)) {
                    by_member.remove((uid.as_str(), name.as_str()))?;
                }
                for uid in &members {
                    by_member.insert((uid.as_str(), name.as_str()), ())?;
                }
                t.insert(name.as_str(), to_json(&members)?.as_slice())?;
            }
            Ok(txn.commit()?)
        })
        .await
    }

    async fn member_groups(&self, uid: &str) -> Result<Vec<String>, StoreError> {
        let uid = uid.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(MEMBER_GROUPS)?;
            scan_second(&t, &uid, |group, _| group.to_owned())
        })
        .await
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

    #[tokio::test]
    async fn member_groups_follow_every_change_of_members() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let set = |g: &'static str, m: &[&str]| {
            let m: Vec<String> = m.iter().map(|s| s.to_string()).collect();
            let store = store.clone();
            async move { store.set_group_members(g, m).await.unwrap() }
        };
        set("g2", &["x", "y"]).await;
        set("g1", &["x"]).await;
        assert_eq!(store.member_groups("x").await.unwrap(), ["g1", "g2"]);
        set("g2", &["y", "z"]).await;
        assert_eq!(store.member_groups("x").await.unwrap(), ["g1"]);
        assert_eq!(store.member_groups("z").await.unwrap(), ["g2"]);
        set("g2", &[]).await;
        assert!(store.member_groups("y").await.unwrap().is_empty());
        assert!(store.member_groups("nobody").await.unwrap().is_empty());
    }
}

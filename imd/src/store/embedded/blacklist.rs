//! Blacklist entries in redb. It must not read or write other domains' tables.

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use shared::admin::{BlacklistEntry, BlacklistKind};

use super::{EmbeddedStore, from_json, to_json};
use crate::store::{BlacklistStore, StoreError};

/// `(kind, value)` → entry JSON.
const BLACKLIST: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("blacklist");

/// Creates the tables of this domain (see [`super::EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(BLACKLIST)?;
    Ok(())
}

#[async_trait]
impl BlacklistStore for EmbeddedStore {
    async fn blacklist(&self) -> Result<Vec<BlacklistEntry>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(BLACKLIST)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (_, v) = entry?;
                out.push(from_json("blacklist entry", v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn blacklist_put(&self, entry: BlacklistEntry) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(BLACKLIST)?;
                let json = to_json(&entry)?;
                t.insert((entry.kind.as_str(), entry.value.as_str()), json.as_slice())?;
            }
            Ok(txn.commit()?)
        })
        .await
    }

    async fn blacklist_remove(&self, kind: BlacklistKind, value: &str) -> Result<bool, StoreError> {
        let value = value.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let existed = {
                let mut t = txn.open_table(BLACKLIST)?;
                t.remove((kind.as_str(), value.as_str()))?.is_some()
            };
            txn.commit()?;
            Ok(existed)
        })
        .await
    }

    async fn blacklist_purge(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let mut n = 0;
            {
                let mut t = txn.open_table(BLACKLIST)?;
                let mut expired = Vec::new();
                for entry in t.iter()? {
                    let (_, v) = entry?;
                    let e: BlacklistEntry = from_json("blacklist entry", v.value())?;
                    if !e.live(now_ms) {
                        expired.push(e);
                    }
                }
                for e in expired {
                    t.remove((e.kind.as_str(), e.value.as_str()))?;
                    n += 1;
                }
            }
            txn.commit()?;
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blacklist_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let entry = |value: &str, expires_at| BlacklistEntry {
            kind: BlacklistKind::Uid,
            value: value.into(),
            reason: Some("spam".into()),
            expires_at,
        };
        store.blacklist_put(entry("m", None)).await.unwrap();
        store.blacklist_put(entry("e", Some(10))).await.unwrap();
        assert_eq!(store.blacklist().await.unwrap().len(), 2);
        assert_eq!(store.blacklist_purge(11).await.unwrap(), 1);
        assert_eq!(store.blacklist().await.unwrap(), [entry("m", None)]);
        assert!(
            store
                .blacklist_remove(BlacklistKind::Uid, "m")
                .await
                .unwrap()
        );
        assert!(
            !store
                .blacklist_remove(BlacklistKind::Uid, "m")
                .await
                .unwrap()
        );
    }
}

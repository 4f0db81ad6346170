//! Devices' push tokens in redb: one table keyed by (uid, device), so that a user's
//! devices are one range scan. It must not read or write other domains' tables.

use async_trait::async_trait;
use redb::{ReadableDatabase, TableDefinition, WriteTransaction};

use super::{EmbeddedStore, from_json, scan_second, to_json};
use crate::store::directory::push_evictions;
use crate::store::{PushStore, PushToken, StoreError};

/// `(uid, device)` → [`PushToken`] JSON.
const PUSH_TOKENS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("push_tokens");

/// Creates the tables of this domain (see [`super::EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(PUSH_TOKENS)?;
    Ok(())
}

#[async_trait]
impl PushStore for EmbeddedStore {
    async fn push_register(
        &self,
        uid: &str,
        token: PushToken,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let uid = uid.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let removed = {
                let mut t = txn.open_table(PUSH_TOKENS)?;
                t.insert(
                    (uid.as_str(), token.device.as_str()),
                    to_json(&token)?.as_slice(),
                )?;
                // At most `max + 1` entries: the bound held before this one.
                let all = scan_second(&t, &uid, |device, v| {
                    from_json::<PushToken>("push token", v.value())
                        .map(|p| (p.at, device.to_owned()))
                })?
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
                let removed = push_evictions(all, &token.device, max);
                for device in &removed {
                    t.remove((uid.as_str(), device.as_str()))?;
                }
                removed
            };
            txn.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn push_unregister(&self, uid: &str, device: &str) -> Result<bool, StoreError> {
        let (uid, device) = (uid.to_owned(), device.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let existed = {
                let mut t = txn.open_table(PUSH_TOKENS)?;
                t.remove((uid.as_str(), device.as_str()))?.is_some()
            };
            txn.commit()?;
            Ok(existed)
        })
        .await
    }

    async fn push_tokens(&self, uid: &str) -> Result<Vec<PushToken>, StoreError> {
        let uid = uid.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(PUSH_TOKENS)?;
            scan_second(&t, &uid, |_, v| from_json("push token", v.value()))?
                .into_iter()
                .collect()
        })
        .await
    }
}

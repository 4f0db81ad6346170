//! Shops, their agents and customer-service assignments in redb: a shop's agents with
//! the reverse index, each conversation's state, the agents' loads and the waiting
//! lists, each change in one write transaction. It must not read or write other
//! domains' tables, and it holds no rule of who gets a conversation.

use async_trait::async_trait;
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{EmbeddedStore, get_json, json_at, scan_second, to_json};
use crate::store::{ServiceState, ShopStore, StoreError};

/// `shop` → agents JSON array.
const SHOPS: TableDefinition<&str, &[u8]> = TableDefinition::new("shops");
/// `(agent, shop)` → (), the reverse of [`SHOPS`].
const AGENT_SHOPS: TableDefinition<(&str, &str), ()> = TableDefinition::new("agent_shops");
/// service `conv` → [`ServiceState`] JSON.
const SERVICE: TableDefinition<&str, &[u8]> = TableDefinition::new("service");
/// `agent` → open conversations assigned to it.
const LOADS: TableDefinition<&str, u64> = TableDefinition::new("loads");
/// `(shop, conv)` → since when (unix ms) it waits for an agent.
const WAITING: TableDefinition<(&str, &str), i64> = TableDefinition::new("waiting");

/// Creates the tables of this domain (see [`super::EmbeddedStore::open`]).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(SHOPS)?;
    txn.open_table(AGENT_SHOPS)?;
    txn.open_table(SERVICE)?;
    txn.open_table(LOADS)?;
    txn.open_table(WAITING)?;
    Ok(())
}

fn load_of(t: &impl ReadableTable<&'static str, u64>, agent: &str) -> Result<u64, StoreError> {
    Ok(t.get(agent)?.map_or(0, |g| g.value()))
}

#[async_trait]
impl ShopStore for EmbeddedStore {
    async fn shop_agents(&self, shop: &str) -> Result<Option<Vec<String>>, StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| get_json(db, SHOPS, &shop)).await
    }

    async fn set_shop_agents(&self, shop: &str, agents: Vec<String>) -> Result<(), StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut shops = txn.open_table(SHOPS)?;
                let mut reverse = txn.open_table(AGENT_SHOPS)?;
                let old: Vec<String> = json_at(&shops, &shop)?.unwrap_or_default();
                for a in &old {
                    reverse.remove((a.as_str(), shop.as_str()))?;
                }
                for a in &agents {
                    reverse.insert((a.as_str(), shop.as_str()), ())?;
                }
                shops.insert(shop.as_str(), to_json(&agents)?.as_slice())?;
            }
            Ok(txn.commit()?)
        })
        .await
    }

    async fn agent_shops(&self, uid: &str) -> Result<Vec<String>, StoreError> {
        let uid = uid.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(AGENT_SHOPS)?;
            scan_second(&t, &uid, |shop, _| shop.to_owned())
        })
        .await
    }

    async fn service(&self, conv: &str) -> Result<Option<ServiceState>, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| get_json(db, SERVICE, &conv)).await
    }

    async fn assign(&self, conv: &str, shop: &str, agent: Option<&str>) -> Result<(), StoreError> {
        let (conv, shop, agent) = (conv.to_owned(), shop.to_owned(), agent.map(str::to_owned));
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            // No fsync of its own: the commit that follows makes it durable (see
            // `DirectoryStore::assign`).
            txn.set_durability(Durability::None)?;
            {
                let mut service = txn.open_table(SERVICE)?;
                let mut loads = txn.open_table(LOADS)?;
                let mut waiting = txn.open_table(WAITING)?;
                let prev: Option<ServiceState> = json_at(&service, &conv)?;
                if let Some(ServiceState {
                    agent: Some(p),
                    open: true,
                    ..
                }) = &prev
                {
                    let n = load_of(&loads, p)?;
                    loads.insert(p.as_str(), n.saturating_sub(1))?;
                }
                match &agent {
                    Some(a) => {
                        let n = load_of(&loads, a)?;
                        loads.insert(a.as_str(), n + 1)?;
                        waiting.remove((shop.as_str(), conv.as_str()))?;
                    }
                    None => {
                        let since = shared::time::now_ms();
                        if waiting.get((shop.as_str(), conv.as_str()))?.is_none() {
                            waiting.insert((shop.as_str(), conv.as_str()), since)?;
                        }
                    }
                }
                let state = ServiceState {
                    shop: shop.clone(),
                    agent,
                    open: true,
                };
                service.insert(conv.as_str(), to_json(&state)?.as_slice())?;
            }
            Ok(txn.commit()?)
        })
        .await
    }

    async fn close_service(&self, conv: &str) -> Result<bool, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let was_open = {
                let mut service = txn.open_table(SERVICE)?;
                let mut loads = txn.open_table(LOADS)?;
                let mut waiting = txn.open_table(WAITING)?;
                let prev: Option<ServiceState> = json_at(&service, &conv)?;
                match prev {
                    Some(mut st) if st.open => {
                        if let Some(p) = &st.agent {
                            let n = load_of(&loads, p)?;
                            loads.insert(p.as_str(), n.saturating_sub(1))?;
                        }
                        waiting.remove((st.shop.as_str(), conv.as_str()))?;
                        st.open = false;
                        service.insert(conv.as_str(), to_json(&st)?.as_slice())?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit()?;
            Ok(was_open)
        })
        .await
    }

    async fn agent_loads(&self, agents: &[String]) -> Result<Vec<u64>, StoreError> {
        let agents = agents.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(LOADS)?;
            agents.iter().map(|a| load_of(&t, a)).collect()
        })
        .await
    }

    async fn waiting(&self, shop: &str) -> Result<Vec<String>, StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(WAITING)?;
            let mut out = scan_second(&t, &shop, |conv, since| (since.value(), conv.to_owned()))?;
            out.sort();
            Ok(out.into_iter().map(|(_, conv)| conv).collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shops_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.shop_agents("s1").await.unwrap(), None);
        store
            .set_shop_agents("s1", vec!["a1".into(), "a2".into()])
            .await
            .unwrap();
        store
            .set_shop_agents("s2", vec!["a2".into()])
            .await
            .unwrap();
        assert_eq!(store.agent_shops("a2").await.unwrap(), ["s1", "s2"]);
        store
            .set_shop_agents("s1", vec!["a1".into()])
            .await
            .unwrap();
        assert_eq!(store.agent_shops("a2").await.unwrap(), ["s2"]);
        assert_eq!(store.agent_shops("a1").await.unwrap(), ["s1"]);
    }

    #[tokio::test]
    async fn assignments_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.assign("s:s1~c1", "s1", None).await.unwrap();
        store.assign("s:s1~c2", "s1", None).await.unwrap();
        assert_eq!(store.waiting("s1").await.unwrap(), ["s:s1~c1", "s:s1~c2"]);
        store.assign("s:s1~c1", "s1", Some("a1")).await.unwrap();
        assert_eq!(store.waiting("s1").await.unwrap(), ["s:s1~c2"]);
        store.assign("s:s1~c2", "s1", Some("a1")).await.unwrap();
        assert_eq!(
            store
                .agent_loads(&["a1".into(), "a2".into()])
                .await
                .unwrap(),
            [2, 0]
        );
        store.assign("s:s1~c2", "s1", Some("a2")).await.unwrap();
        assert_eq!(
            store
                .agent_loads(&["a1".into(), "a2".into()])
                .await
                .unwrap(),
            [1, 1]
        );
        assert!(store.close_service("s:s1~c2").await.unwrap());
        assert!(!store.close_service("s:s1~c2").await.unwrap());
        assert_eq!(
            store
                .agent_loads(&["a1".into(), "a2".into()])
                .await
                .unwrap(),
            [1, 0]
        );
        let st = store.service("s:s1~c2").await.unwrap().unwrap();
        assert_eq!((st.agent.as_deref(), st.open), (Some("a2"), false));
    }
}

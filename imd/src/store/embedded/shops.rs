//! Shops, their agents and customer-service assignments in redb: a shop's agents with
//! the reverse index, each conversation's state, the agents' loads and the waiting
//! lists, each change in one write transaction. It must not read or write other
//! domains' tables, and it holds no rule of who gets a conversation.

use async_trait::async_trait;
use redb::{
    Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};

use super::{EmbeddedStore, get_json, json_at, scan_second, to_json};
use crate::store::{
    Admit, Assigned, Rated, ServiceState, Shop, ShopCounters, ShopStore, StoreError,
};

/// `shop` → [`Shop`] JSON (an agents array in data written before shops had settings).
const SHOPS: TableDefinition<&str, &[u8]> = TableDefinition::new("shops");
/// `(agent, shop)` → (), the reverse of [`SHOPS`].
const AGENT_SHOPS: TableDefinition<(&str, &str), ()> = TableDefinition::new("agent_shops");
/// service `conv` → [`ServiceState`] JSON.
const SERVICE: TableDefinition<&str, &[u8]> = TableDefinition::new("service");
/// `agent` → open conversations assigned to it.
const LOADS: TableDefinition<&str, u64> = TableDefinition::new("loads");
/// `(shop, conv)` → since when (unix ms) it waits for an agent.
const WAITING: TableDefinition<(&str, &str), i64> = TableDefinition::new("waiting");
/// `(shop, since, conv)` → (): [`WAITING`] in queue order.
const QUEUE: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("queue");
/// `agent` → (), for agents marked away.
const AWAY: TableDefinition<&str, ()> = TableDefinition::new("away");
/// `shop` → [`Counters`] JSON.
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("shop_counters");

/// A shop's stored counters; `waiting` is counted from [`QUEUE`].
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Counters {
    open: u64,
    first_response: Vec<u64>,
    ratings: u64,
    rating_sum: u64,
}

/// Creates the tables of this domain (see [`super::EmbeddedStore::open`]), and the
/// queue order of data written before it was kept.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(SHOPS)?;
    txn.open_table(AGENT_SHOPS)?;
    txn.open_table(SERVICE)?;
    txn.open_table(LOADS)?;
    txn.open_table(AWAY)?;
    txn.open_table(COUNTERS)?;
    let waiting = txn.open_table(WAITING)?;
    let mut queue = txn.open_table(QUEUE)?;
    if queue.is_empty()? {
        for entry in waiting.iter()? {
            let (k, since) = entry?;
            let (shop, conv) = k.value();
            queue.insert((shop, since.value(), conv), ())?;
        }
    }
    Ok(())
}

fn load_of(t: &impl ReadableTable<&'static str, u64>, agent: &str) -> Result<u64, StoreError> {
    Ok(t.get(agent)?.map_or(0, |g| g.value()))
}

/// The first conversation in `shop`'s queue.
fn head(
    t: &impl ReadableTable<(&'static str, i64, &'static str), ()>,
    shop: &str,
) -> Result<Option<String>, StoreError> {
    // Ids are never empty, so (shop, MIN, "") sorts below every key of the shop.
    let mut range = t.range((shop, i64::MIN, "")..)?;
    match range.next() {
        Some(entry) => {
            let (k, _) = entry?;
            let (s, _, conv) = k.value();
            Ok((s == shop).then(|| conv.to_owned()))
        }
        None => Ok(None),
    }
}

/// The tables one assignment or close changes.
struct Service<'t> {
    service: Table<'t, &'static str, &'static [u8]>,
    loads: Table<'t, &'static str, u64>,
    waiting: Table<'t, (&'static str, &'static str), i64>,
    queue: Table<'t, (&'static str, i64, &'static str), ()>,
    counters: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Service<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            service: txn.open_table(SERVICE)?,
            loads: txn.open_table(LOADS)?,
            waiting: txn.open_table(WAITING)?,
            queue: txn.open_table(QUEUE)?,
            counters: txn.open_table(COUNTERS)?,
        })
    }

    fn add_load(&mut self, agent: &str, by: i64) -> Result<(), StoreError> {
        let n = load_of(&self.loads, agent)?;
        self.loads.insert(agent, n.saturating_add_signed(by))?;
        Ok(())
    }

    fn add_open(&mut self, shop: &str, by: i64) -> Result<(), StoreError> {
        self.counters_of(shop, |c| c.open = c.open.saturating_add_signed(by))
    }

    fn counters_of(&mut self, shop: &str, f: impl FnOnce(&mut Counters)) -> Result<(), StoreError> {
        let mut c: Counters = json_at(&self.counters, shop)?.unwrap_or_default();
        f(&mut c);
        self.counters.insert(shop, to_json(&c)?.as_slice())?;
        Ok(())
    }

    fn dequeue(&mut self, shop: &str, conv: &str) -> Result<(), StoreError> {
        if let Some(since) = self.waiting.remove((shop, conv))? {
            self.queue.remove((shop, since.value(), conv))?;
        }
        Ok(())
    }

    fn enqueue(&mut self, shop: &str, conv: &str) -> Result<(), StoreError> {
        if self.waiting.get((shop, conv))?.is_none() {
            let since = shared::time::now_ms();
            self.waiting.insert((shop, conv), since)?;
            self.queue.insert((shop, since, conv), ())?;
        }
        Ok(())
    }
}

#[async_trait]
impl ShopStore for EmbeddedStore {
    async fn shop(&self, shop: &str) -> Result<Option<Shop>, StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| get_json(db, SHOPS, &shop)).await
    }

    async fn set_shop(&self, shop: &str, settings: Shop) -> Result<(), StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            {
                let mut shops = txn.open_table(SHOPS)?;
                let mut reverse = txn.open_table(AGENT_SHOPS)?;
                let old: Shop = json_at(&shops, &shop)?.unwrap_or_default();
                for a in &old.agents {
                    reverse.remove((a.as_str(), shop.as_str()))?;
                }
                for a in &settings.agents {
                    reverse.insert((a.as_str(), shop.as_str()), ())?;
                }
                shops.insert(shop.as_str(), to_json(&settings)?.as_slice())?;
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

    async fn assign(
        &self,
        conv: &str,
        shop: &str,
        agent: Option<&str>,
        admit: Admit,
    ) -> Result<Assigned, StoreError> {
        let (conv, shop, agent) = (conv.to_owned(), shop.to_owned(), agent.map(str::to_owned));
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            // No fsync of its own: the commit that follows makes it durable (see
            // `DirectoryStore::assign`).
            txn.set_durability(Durability::None)?;
            let outcome = {
                let mut t = Service::open(&txn)?;
                let prev: Option<ServiceState> = json_at(&t.service, &conv)?;
                let assigned = prev
                    .as_ref()
                    .filter(|p| p.open)
                    .and_then(|p| p.agent.clone());
                if let Some(a) = &agent {
                    if admit.max_open > 0
                        && assigned.as_ref() != Some(a)
                        && load_of(&t.loads, a)? >= u64::from(admit.max_open)
                    {
                        return Ok(Assigned::Full);
                    }
                    if admit.in_turn
                        && assigned.is_none()
                        && head(&t.queue, &shop)?.is_some_and(|h| h != conv)
                    {
                        return Ok(Assigned::OutOfTurn);
                    }
                }
                if let Some(p) = &assigned {
                    t.add_load(p, -1)?;
                }
                match (&agent, &assigned) {
                    (Some(_), None) => t.add_open(&shop, 1)?,
                    (None, Some(_)) => t.add_open(&shop, -1)?,
                    _ => {}
                }
                match &agent {
                    Some(a) => {
                        t.add_load(a, 1)?;
                        t.dequeue(&shop, &conv)?;
                    }
                    None => t.enqueue(&shop, &conv)?,
                }
                let state = match prev {
                    Some(p) if p.open => ServiceState { agent, ..p },
                    _ => ServiceState {
                        shop: shop.clone(),
                        agent,
                        open: true,
                        since: shared::time::now_ms(),
                        answered: false,
                        rated: false,
                    },
                };
                t.service
                    .insert(conv.as_str(), to_json(&state)?.as_slice())?;
                Assigned::Done
            };
            txn.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn close_service(&self, conv: &str) -> Result<bool, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let was_open = {
                let mut t = Service::open(&txn)?;
                let prev: Option<ServiceState> = json_at(&t.service, &conv)?;
                match prev {
                    Some(mut st) if st.open => {
                        if let Some(p) = &st.agent {
                            t.add_load(p, -1)?;
                            t.add_open(&st.shop, -1)?;
                        }
                        t.dequeue(&st.shop, &conv)?;
                        st.open = false;
                        st.rated = false;
                        t.service.insert(conv.as_str(), to_json(&st)?.as_slice())?;
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

    async fn first_reply(&self, conv: &str) -> Result<Option<u64>, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            // Made durable by the commit of the reply that follows.
            txn.set_durability(Durability::None)?;
            let took = {
                let mut service = txn.open_table(SERVICE)?;
                let prev: Option<ServiceState> = json_at(&service, &conv)?;
                match prev {
                    Some(mut st) if st.open && !st.answered => {
                        st.answered = true;
                        service.insert(conv.as_str(), to_json(&st)?.as_slice())?;
                        Some(u64::try_from(shared::time::now_ms() - st.since).unwrap_or(0))
                    }
                    _ => None,
                }
            };
            txn.commit()?;
            Ok(took)
        })
        .await
    }

    async fn count_first_response(&self, shop: &str, bucket: usize) -> Result<(), StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            Service::open(&txn)?.counters_of(&shop, |c| {
                if c.first_response.len() <= bucket {
                    c.first_response.resize(bucket + 1, 0);
                }
                c.first_response[bucket] += 1;
            })?;
            Ok(txn.commit()?)
        })
        .await
    }

    async fn rate(&self, conv: &str, score: u8) -> Result<Rated, StoreError> {
        let conv = conv.to_owned();
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            // Made durable by the commit of the `rated` event that follows.
            txn.set_durability(Durability::None)?;
            let outcome = {
                let mut t = Service::open(&txn)?;
                let prev: Option<ServiceState> = json_at(&t.service, &conv)?;
                match prev {
                    Some(st) if st.open => Rated::NotClosed,
                    None => Rated::NotClosed,
                    Some(st) if st.rated => Rated::Already,
                    Some(mut st) => {
                        st.rated = true;
                        t.service.insert(conv.as_str(), to_json(&st)?.as_slice())?;
                        t.counters_of(&st.shop, |c| {
                            c.ratings += 1;
                            c.rating_sum += u64::from(score);
                        })?;
                        Rated::Done
                    }
                }
            };
            txn.commit()?;
            Ok(outcome)
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
            let t = txn.open_table(QUEUE)?;
            let mut out = Vec::new();
            for entry in t.range((shop.as_str(), i64::MIN, "")..)? {
                let (k, _) = entry?;
                let (s, _, conv) = k.value();
                if s != shop {
                    break;
                }
                out.push(conv.to_owned());
            }
            Ok(out)
        })
        .await
    }

    async fn set_away(&self, uid: &str, away: bool) -> Result<(), StoreError> {
        let uid = uid.to_owned();
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            // Availability is set again at every connection: not worth an fsync.
            txn.set_durability(Durability::None)?;
            {
                let mut t = txn.open_table(AWAY)?;
                if away {
                    t.insert(uid.as_str(), ())?;
                } else {
                    t.remove(uid.as_str())?;
                }
            }
            Ok(txn.commit()?)
        })
        .await
    }

    async fn away(&self, agents: &[String]) -> Result<Vec<bool>, StoreError> {
        let agents = agents.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(AWAY)?;
            agents
                .iter()
                .map(|a| Ok(t.get(a.as_str())?.is_some()))
                .collect()
        })
        .await
    }

    async fn shop_counters(&self, shop: &str) -> Result<ShopCounters, StoreError> {
        let shop = shop.to_owned();
        self.blocking(move |db| {
            let c: Counters = get_json(db, COUNTERS, &shop)?.unwrap_or_default();
            let txn = db.begin_read()?;
            let t = txn.open_table(WAITING)?;
            let waiting = scan_second(&t, &shop, |_, _| ())?.len() as u64;
            Ok(ShopCounters {
                open: c.open,
                waiting,
                first_response: c.first_response,
                ratings: c.ratings,
                rating_sum: c.rating_sum,
            })
        })
        .await
    }

    async fn shops(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(SHOPS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                out.push(entry?.0.value().to_owned());
            }
            Ok(out)
        })
        .await
    }

    fn shared(&self) -> bool {
        false
    }

    async fn try_decide(&self, _: &str, _: &str, _: u64) -> Result<bool, StoreError> {
        // One process holds the database (redb locks the file): its own lock suffices.
        Ok(true)
    }

    async fn end_decide(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
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
        store
            .assign("s:s1~c1", "s1", None, Admit::ANY)
            .await
            .unwrap();
        store
            .assign("s:s1~c2", "s1", None, Admit::ANY)
            .await
            .unwrap();
        assert_eq!(store.waiting("s1").await.unwrap(), ["s:s1~c1", "s:s1~c2"]);
        store
            .assign("s:s1~c1", "s1", Some("a1"), Admit::ANY)
            .await
            .unwrap();
        assert_eq!(store.waiting("s1").await.unwrap(), ["s:s1~c2"]);
        store
            .assign("s:s1~c2", "s1", Some("a1"), Admit::ANY)
            .await
            .unwrap();
        assert_eq!(
            store
                .agent_loads(&["a1".into(), "a2".into()])
                .await
                .unwrap(),
            [2, 0]
        );
        store
            .assign("s:s1~c2", "s1", Some("a2"), Admit::ANY)
            .await
            .unwrap();
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

//! Shops and customer-service assignments on Redis: a shop's agents with the reverse
//! index, each conversation's state, the agents' loads and the waiting lists, all under
//! the directory's hash tag (see `keys`), each change that spans keys one atomic
//! script. It mirrors the embedded backend's semantics exactly; it holds no rule of who
//! gets a conversation.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::keys::{agent_shops_prefix, loads_key, service_key, shops_key, waiting_prefix};
use super::{RedisStore, to_json};
use crate::store::{ServiceState, ShopStore, StoreError};

/// Opens a conversation and assigns it (ARGV[3] = '1') or leaves it waiting.
/// KEYS[1] = service, KEYS[2] = loads, KEYS[3] = waiting list of the shop;
/// ARGV[1] = conv, ARGV[2] = new state JSON, ARGV[3] = '1' when assigned, ARGV[4] = agent.
/// Uses `decrement` of `decrement_load_lib.lua`, which decrements an agent's load, never
/// below zero.
static ASSIGN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/decrement_load_lib.lua"),
        include_str!("lua/now_ms_lib.lua"),
        include_str!("lua/assign.lua"),
    ))
});

/// Closes a conversation; 1 when it was open.
/// KEYS[1] = service, KEYS[2] = loads; ARGV[1] = conv, ARGV[2] = waiting prefix.
/// Uses `decrement`, as [`ASSIGN`].
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/decrement_load_lib.lua"),
        include_str!("lua/close_service.lua"),
    ))
});

#[async_trait]
impl ShopStore for RedisStore {
    async fn shop_agents(&self, shop: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.hget_json(shops_key(), shop).await
    }

    async fn set_shop_agents(&self, shop: &str, agents: Vec<String>) -> Result<(), StoreError> {
        self.set_with_reverse_index(shops_key(), shop, &agents, agent_shops_prefix())
            .await
    }

    async fn agent_shops(&self, uid: &str) -> Result<Vec<String>, StoreError> {
        let mut shops: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}{uid}", agent_shops_prefix()))
            .query_async(&mut self.conn.clone())
            .await?;
        shops.sort();
        Ok(shops)
    }

    async fn service(&self, conv: &str) -> Result<Option<ServiceState>, StoreError> {
        self.hget_json(service_key(), conv).await
    }

    async fn assign(&self, conv: &str, shop: &str, agent: Option<&str>) -> Result<(), StoreError> {
        let state = ServiceState {
            shop: shop.to_owned(),
            agent: agent.map(str::to_owned),
            open: true,
        };
        ASSIGN
            .key(service_key())
            .key(loads_key())
            .key(format!("{}{shop}", waiting_prefix()))
            .arg(conv)
            .arg(to_json(&state)?)
            .arg(if agent.is_some() { "1" } else { "0" })
            .arg(agent.unwrap_or_default())
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn close_service(&self, conv: &str) -> Result<bool, StoreError> {
        let was_open: u64 = CLOSE
            .key(service_key())
            .key(loads_key())
            .arg(conv)
            .arg(waiting_prefix())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(was_open == 1)
    }

    async fn agent_loads(&self, agents: &[String]) -> Result<Vec<u64>, StoreError> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        let loads: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(loads_key())
            .arg(agents)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(loads.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn waiting(&self, shop: &str) -> Result<Vec<String>, StoreError> {
        // Ordered by score (since when), then by conv: the embedded store's order.
        redis::cmd("ZRANGE")
            .arg(format!("{}{shop}", waiting_prefix()))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }
}

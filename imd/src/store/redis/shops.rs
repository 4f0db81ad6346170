//! Shops and customer-service assignments on Redis: a shop's agents with the reverse
//! index, each conversation's state, the agents' loads and the waiting lists, all under
//! the directory's hash tag (see `keys`), each change that spans keys one atomic
//! script. It mirrors the embedded backend's semantics exactly; it holds no rule of who
//! gets a conversation.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::keys::{
    agent_shops_prefix, away_key, conv_key, counters_prefix, loads_key, service_key, shops_key,
    waiting_prefix,
};
use super::messages::scripts::RELEASE;
use super::{RedisStore, to_json};
use crate::store::{
    Admit, Assigned, Rated, ServiceState, Shop, ShopCounters, ShopStore, StoreError,
};

/// Assigns a conversation, or queues it, if the cap and the queue let it (see the
/// script's header). Uses `decrement` of `decrement_load_lib.lua`, which decrements a
/// hash field, never below zero, and `now_ms`.
static ASSIGN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/decrement_load_lib.lua"),
        include_str!("lua/now_ms_lib.lua"),
        include_str!("lua/assign.lua"),
    ))
});

/// Closes a conversation; 1 when it was open. Uses `decrement`, as [`ASSIGN`].
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/decrement_load_lib.lua"),
        include_str!("lua/close_service.lua"),
    ))
});

/// Marks a conversation answered; how long after it opened.
static FIRST_REPLY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/now_ms_lib.lua"),
        include_str!("lua/first_reply.lua"),
    ))
});

/// Counts a rating of a closed conversation, once per closing.
static RATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/rate.lua")));

fn counters_key(shop: &str) -> String {
    format!("{}{shop}", counters_prefix())
}

fn waiting_key(shop: &str) -> String {
    format!("{}{shop}", waiting_prefix())
}

#[async_trait]
impl ShopStore for RedisStore {
    async fn shop(&self, shop: &str) -> Result<Option<Shop>, StoreError> {
        self.hget_json(shops_key(), shop).await
    }

    async fn set_shop(&self, shop: &str, settings: Shop) -> Result<(), StoreError> {
        self.set_with_reverse_index(
            shops_key(),
            shop,
            to_json(&settings)?,
            &settings.agents,
            agent_shops_prefix(),
        )
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

    async fn assign(
        &self,
        conv: &str,
        shop: &str,
        agent: Option<&str>,
        admit: Admit,
    ) -> Result<Assigned, StoreError> {
        let outcome: u8 = ASSIGN
            .key(service_key())
            .key(loads_key())
            .key(waiting_key(shop))
            .key(counters_key(shop))
            .arg(conv)
            .arg(shop)
            .arg(agent.unwrap_or_default())
            .arg(admit.max_open)
            .arg(if admit.in_turn { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match outcome {
            0 => Assigned::Done,
            1 => Assigned::Full,
            _ => Assigned::OutOfTurn,
        })
    }

    async fn close_service(&self, conv: &str) -> Result<bool, StoreError> {
        let was_open: u64 = CLOSE
            .key(service_key())
            .key(loads_key())
            .arg(conv)
            .arg(waiting_prefix())
            .arg(counters_prefix())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(was_open == 1)
    }

    async fn first_reply(&self, conv: &str) -> Result<Option<u64>, StoreError> {
        let took: i64 = FIRST_REPLY
            .key(service_key())
            .arg(conv)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(u64::try_from(took).ok())
    }

    async fn count_first_response(&self, shop: &str, bucket: usize) -> Result<(), StoreError> {
        redis::cmd("HINCRBY")
            .arg(counters_key(shop))
            .arg(format!("frt:{bucket}"))
            .arg(1)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn rate(&self, conv: &str, score: u8) -> Result<Rated, StoreError> {
        let outcome: u8 = RATE
            .key(service_key())
            .arg(conv)
            .arg(score)
            .arg(counters_prefix())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match outcome {
            0 => Rated::Done,
            1 => Rated::NotClosed,
            _ => Rated::Already,
        })
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
            .arg(waiting_key(shop))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn set_away(&self, uid: &str, away: bool) -> Result<(), StoreError> {
        redis::cmd(if away { "SADD" } else { "SREM" })
            .arg(away_key())
            .arg(uid)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn away(&self, agents: &[String]) -> Result<Vec<bool>, StoreError> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        redis::cmd("SMISMEMBER")
            .arg(away_key())
            .arg(agents)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    async fn shop_counters(&self, shop: &str) -> Result<ShopCounters, StoreError> {
        let (fields, waiting): (Vec<(String, u64)>, u64) = redis::pipe()
            .cmd("HGETALL")
            .arg(counters_key(shop))
            .cmd("ZCARD")
            .arg(waiting_key(shop))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut c = ShopCounters {
            waiting,
            ..ShopCounters::default()
        };
        for (field, n) in fields {
            match field.as_str() {
                "open" => c.open = n,
                "ratings" => c.ratings = n,
                "rating_sum" => c.rating_sum = n,
                f => {
                    if let Some(bucket) =
                        f.strip_prefix("frt:").and_then(|b| b.parse::<usize>().ok())
                    {
                        if c.first_response.len() <= bucket {
                            c.first_response.resize(bucket + 1, 0);
                        }
                        c.first_response[bucket] = n;
                    }
                }
            }
        }
        Ok(c)
    }

    async fn shops(&self) -> Result<Vec<String>, StoreError> {
        let mut shops: Vec<String> = redis::cmd("HKEYS")
            .arg(shops_key())
            .query_async(&mut self.conn.clone())
            .await?;
        shops.sort();
        Ok(shops)
    }

    fn shared(&self) -> bool {
        true
    }

    async fn try_decide(&self, conv: &str, token: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(conv_key(conv, "decide"))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    async fn end_decide(&self, conv: &str, token: &str) -> Result<(), StoreError> {
        RELEASE
            .key(conv_key(conv, "decide"))
            .arg(token)
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }
}

//! [`DirectoryStore`] on Redis: blacklist, shops, groups and customer-service state.
//! It mirrors the embedded backend's semantics exactly; it holds no business rules.
//!
//! The directory is small and changes at admin rate, so all of it lives under the one
//! global hash tag (`imd:{g}:…`, one slot): every update that spans several keys (a
//! shop's agents and the reverse index; an assignment, the loads and the waiting list)
//! is one atomic Lua script. Scripts build some key names from a prefix (the reverse
//! index of each agent, the waiting list of a stored state's shop), which Redis Cluster
//! allows because they share the slot of the declared keys.
//!
//! Keys:
//!
//! - `imd:{g}:blacklist`: hash `<kind>:<value>` → entry JSON;
//! - `imd:{g}:shops`: hash shop → agents JSON; `imd:{g}:agent-shops:<uid>`: set of shops;
//! - `imd:{g}:groups`: hash group → members JSON;
//! - `imd:{g}:service`: hash conv → [`ServiceState`] JSON (one `HGET` per
//!   customer-service message);
//! - `imd:{g}:loads`: hash agent → open conversations;
//! - `imd:{g}:waiting:<shop>`: sorted set of convs scored by when they began waiting
//!   (unix ms from Redis's clock, the one clock every imd node shares).
//!
//! Every blacklist change publishes on [`super::registry::BLACKLIST_CHANNEL`] from the
//! script that stores it, so a change is never stored without its notification.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;
use shared::admin::{BlacklistEntry, BlacklistKind};

use super::registry::BLACKLIST_CHANNEL;
use super::{LUA_NOW_MS, RedisStore, db, global_key};
use crate::store::{DirectoryStore, ServiceState, StoreError};

fn blacklist_key() -> String {
    global_key("blacklist")
}

fn blacklist_field(kind: BlacklistKind, value: &str) -> String {
    format!("{}:{value}", kind.as_str())
}

fn shops_key() -> String {
    global_key("shops")
}

/// Prefix of the per-agent sets of shops.
fn agent_shops_prefix() -> String {
    global_key("agent-shops:")
}

fn groups_key() -> String {
    global_key("groups")
}

fn service_key() -> String {
    global_key("service")
}

fn loads_key() -> String {
    global_key("loads")
}

/// Prefix of the per-shop waiting lists.
fn waiting_prefix() -> String {
    global_key("waiting:")
}

/// Stores one entry and publishes the change.
/// KEYS[1] = blacklist; ARGV[1] = field, ARGV[2] = entry JSON, ARGV[3] = channel.
static BLACKLIST_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SPUBLISH', ARGV[3], 'changed')
",
    )
});

/// Deletes the fields whose value is still the one given (a purge must not delete an
/// entry replaced since it was read), publishes when any went; returns how many.
/// KEYS[1] = blacklist; ARGV[1] = channel, then field, JSON, field, JSON, ….
static BLACKLIST_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
if n > 0 then redis.call('SPUBLISH', ARGV[1], 'changed') end
return n
",
    )
});

/// Deletes one field whatever its value, publishes when it existed; whether it did.
/// KEYS[1] = blacklist; ARGV[1] = channel, ARGV[2] = field.
static BLACKLIST_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('HDEL', KEYS[1], ARGV[2])
if n > 0 then redis.call('SPUBLISH', ARGV[1], 'changed') end
return n
",
    )
});

/// Sets a shop's agents and moves the reverse index from the old agents to the new.
/// KEYS[1] = shops; ARGV[1] = shop, ARGV[2] = agents JSON, ARGV[3] = reverse prefix,
/// ARGV[4..] = agents.
static SET_SHOP_AGENTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  for _, a in ipairs(cjson.decode(old)) do
    redis.call('SREM', ARGV[3] .. a, ARGV[1])
  end
end
for i = 4, #ARGV do
  redis.call('SADD', ARGV[3] .. ARGV[i], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
",
    )
});

/// Decrements an agent's load, never below zero (shared by the two scripts below).
const DECREMENT_LOAD: &str = r"
local function decrement(loads, agent)
  if tonumber(redis.call('HGET', loads, agent) or '0') > 0 then
    redis.call('HINCRBY', loads, agent, -1)
  end
end
";

/// Opens a conversation and assigns it (ARGV[3] = '1') or leaves it waiting.
/// KEYS[1] = service, KEYS[2] = loads, KEYS[3] = waiting list of the shop;
/// ARGV[1] = conv, ARGV[2] = new state JSON, ARGV[3] = '1' when assigned, ARGV[4] = agent.
static ASSIGN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{DECREMENT_LOAD}{LUA_NOW_MS}
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then
  local st = cjson.decode(prev)
  if st.open == true and type(st.agent) == 'string' then decrement(KEYS[2], st.agent) end
end
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[3], 'NX', now_ms(), ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
"
    ))
});

/// Closes a conversation; 1 when it was open.
/// KEYS[1] = service, KEYS[2] = loads; ARGV[1] = conv, ARGV[2] = waiting prefix.
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{DECREMENT_LOAD}
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if not prev then return 0 end
local st = cjson.decode(prev)
if st.open ~= true then return 0 end
if type(st.agent) == 'string' then decrement(KEYS[2], st.agent) end
redis.call('ZREM', ARGV[2] .. st.shop, ARGV[1])
st.open = false
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
return 1
"
    ))
});

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

impl RedisStore {
    /// One JSON value of a global hash.
    async fn hget_json<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
        field: &str,
    ) -> Result<Option<T>, StoreError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(db)?;
        json.map(|j| from_json(field, &j)).transpose()
    }
}

#[async_trait]
impl DirectoryStore for RedisStore {
    async fn blacklist(&self) -> Result<Vec<BlacklistEntry>, StoreError> {
        let values: Vec<String> = redis::cmd("HVALS")
            .arg(blacklist_key())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(db)?;
        let mut entries = values
            .iter()
            .map(|v| from_json::<BlacklistEntry>("blacklist entry", v))
            .collect::<Result<Vec<_>, _>>()?;
        // The embedded store's order: by kind, then value.
        entries.sort_by(|a, b| (a.kind.as_str(), &a.value).cmp(&(b.kind.as_str(), &b.value)));
        Ok(entries)
    }

    async fn blacklist_put(&self, entry: BlacklistEntry) -> Result<(), StoreError> {
        BLACKLIST_PUT
            .key(blacklist_key())
            .arg(blacklist_field(entry.kind, &entry.value))
            .arg(to_json(&entry)?)
            .arg(BLACKLIST_CHANNEL)
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(db)
    }

    async fn blacklist_remove(&self, kind: BlacklistKind, value: &str) -> Result<bool, StoreError> {
        let n: u64 = BLACKLIST_REMOVE
            .key(blacklist_key())
            .arg(BLACKLIST_CHANNEL)
            .arg(blacklist_field(kind, value))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(db)?;
        Ok(n > 0)
    }

    async fn blacklist_purge(&self, now_ms: i64) -> Result<u64, StoreError> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(blacklist_key())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(db)?;
        let mut expired = Vec::new();
        for (field, json) in all {
            let entry: BlacklistEntry = from_json("blacklist entry", &json)?;
            if !entry.live(now_ms) {
                expired.push((field, json));
            }
        }
        if expired.is_empty() {
            return Ok(0);
        }
        let mut invocation = BLACKLIST_DELETE.key(blacklist_key());
        invocation.arg(BLACKLIST_CHANNEL);
        for (field, json) in &expired {
            invocation.arg(field).arg(json);
        }
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(db)
    }

    async fn shop_agents(&self, shop: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.hget_json(shops_key(), shop).await
    }

    async fn set_shop_agents(&self, shop: &str, agents: Vec<String>) -> Result<(), StoreError> {
        let mut invocation = SET_SHOP_AGENTS.key(shops_key());
        invocation
            .arg(shop)
            .arg(to_json(&agents)?)
            .arg(agent_shops_prefix());
        for a in &agents {
            invocation.arg(a);
        }
        invocation
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(db)
    }

    async fn agent_shops(&self, uid: &str) -> Result<Vec<String>, StoreError> {
        let mut shops: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}{uid}", agent_shops_prefix()))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(db)?;
        shops.sort();
        Ok(shops)
    }

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
            .map_err(db)
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
            .map_err(db)
    }

    async fn close_service(&self, conv: &str) -> Result<bool, StoreError> {
        let was_open: u64 = CLOSE
            .key(service_key())
            .key(loads_key())
            .arg(conv)
            .arg(waiting_prefix())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(db)?;
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
            .await
            .map_err(db)?;
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
            .map_err(db)
    }
}

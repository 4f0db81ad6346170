//! The cluster's shared registries in Redis: node discovery, connection routes, and the
//! blacklist change notification. It stores where things are; it never decides who
//! delivers what, nor when a node counts as dead (callers ask and act).
//!
//! Keys:
//!
//! - `imd:{n:<id>}:info`: the node's [`NodeInfo`] as JSON, with a TTL that heartbeats
//!   refresh;
//! - `imd:{g}:nodes`: the set of registered node ids; a member whose `info` is gone is
//!   dead until [`RedisStore::clean_node`] forgets it;
//! - `imd:{u:<uid>}:conns`: the user's routes, a hash of device → node id;
//! - `imd:{n:<id>}:users`: the uids the node has (or recently had) routes for, so that
//!   its routes can be found when it dies. A superset is harmless; a missing uid leaves
//!   a route behind, hence the order of writes in [`RedisStore::route_add`].
//!
//! Notifications use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) on [`BLACKLIST_CHANNEL`],
//! which is hash-tagged like the directory's keys: the directory's scripts publish on it
//! from the slot they write, and it works alike on standalone Redis 7 and on a cluster.
//! Pub/sub is fire-and-forget, so subscribers also hear `()` after every (re)connection
//! and must treat each `()` as "reload", never as the change itself.

use std::sync::LazyLock;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script};
use tokio::sync::mpsc;

use super::keys::{global_key, node_key, user_key};
use super::messages::scripts::LIST_END;
use super::{RESPONSE_TIMEOUT, RedisStore};
use crate::store::StoreError;

/// The sharded channel that tells every node the blacklist changed. Its hash tag is the
/// directory's (`{g}`), so a script that changes the blacklist can publish on it.
pub(super) const BLACKLIST_CHANNEL: &str = "imd:{g}:blacklist:changed";

/// How many single-slot requests one call keeps in flight (routes of many users, the
/// routes of a dead node).
const FAN_OUT: usize = 64;
/// How many members of a node's user set one `SSCAN` step asks for.
const SCAN_COUNT: usize = 512;
/// How often the subscriber checks its connection. A failed check makes redis-rs
/// reconnect (and resubscribe) when its own retries ran out meanwhile.
const SUBSCRIPTION_CHECK: Duration = Duration::from_secs(5);
/// Consecutive failed checks after which the subscriber drops its connection and builds
/// a new one (a half-open connection only ever times out; redis-rs does not reconnect
/// on timeouts).
const SUBSCRIPTION_REBUILD_AFTER: u32 = 2;

/// A node as registered for discovery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// Unique node id.
    pub id: String,
    /// The roles it runs: `gateway`, `dispatcher`, `worker`.
    pub roles: Vec<String>,
    /// Its HTTP/WebSocket address.
    pub listen: String,
    /// The tarpc address of its worker role, when it runs one.
    pub rpc: Option<String>,
    /// When it started, unix milliseconds.
    pub started_ms: i64,
    /// The RPC protocol version it speaks (`rpc::RPC_VERSION`); absent: a node from
    /// before versions were announced, which speaks version 1.
    #[serde(default = "rpc_version_1")]
    pub rpc_version: u32,
}

fn rpc_version_1() -> u32 {
    1
}

/// What [`RedisStore::route_add`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAdded {
    /// The node that held the device before, when it was another one.
    pub previous: Option<String>,
    /// The user's highest `useq` when the route was written. Every later inbox entry is
    /// written after the route, so its writer sees the route and pushes it here.
    pub inbox_head: u64,
}

/// `route_add`: sets the route; returns `{the node it named before or "", the last useq
/// of the user's inbox}`, both read atomically with the write.
/// KEYS[1] = conns hash, KEYS[2] = the user's inbox; ARGV[1] = device, ARGV[2] = node.
static ROUTE_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/list_base_lib.lua"),
        include_str!("lua/route_add.lua"),
    ))
});

/// What [`RedisStore::route_restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteRestored {
    /// The route names the node (again); the user's highest `useq` when it was
    /// written, as in [`RouteAdded::inbox_head`].
    Restored {
        /// The user's inbox head.
        inbox_head: u64,
    },
    /// The route names another node, which the device connected to since: left as is.
    Moved {
        /// The node it names.
        to: String,
    },
}

/// `route_restore`: sets the route unless it names another node; returns `{the other
/// node, 0}` when it does, else `{"", the last useq of the user's inbox}`.
/// KEYS[1] = conns hash, KEYS[2] = the user's inbox; ARGV[1] = device, ARGV[2] = node.
static ROUTE_RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/list_base_lib.lua"),
        include_str!("lua/route_restore.lua"),
    ))
});

/// `route_remove`: deletes the route if it names the node; returns `{removed, devices
/// of the user still on that node}`.
/// KEYS[1] = conns hash; ARGV[1] = device, ARGV[2] = node.
static ROUTE_REMOVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/route_remove.lua")));

/// Deletes every route of one user that names the node; returns how many.
/// KEYS[1] = conns hash; ARGV[1] = node.
static ROUTES_DROP_NODE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/routes_drop_node.lua")));

fn info_key(node_id: &str) -> String {
    node_key(node_id, "info")
}

fn users_key(node_id: &str) -> String {
    node_key(node_id, "users")
}

fn conns_key(uid: &str) -> String {
    user_key(uid, "conns")
}

fn nodes_key() -> String {
    global_key("nodes")
}

impl RedisStore {
    /// Registers `node` or refreshes its registration, which expires after `ttl` unless
    /// refreshed (heartbeat).
    pub async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let json = serde_json::to_string(node).map_err(StoreError::encode)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        // The info first: a listed node without info counts as dead and gets cleaned.
        redis::cmd("SET")
            .arg(info_key(&node.id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .exec_async(&mut conn)
            .await?;
        redis::cmd("SADD")
            .arg(nodes_key())
            .arg(&node.id)
            .exec_async(&mut conn)
            .await
            .map_err(StoreError::from)
    }

    /// Removes `node_id`'s registration and every connection route naming it (graceful
    /// exit); returns the routes removed.
    pub async fn deregister(&self, node_id: &str) -> Result<u64, StoreError> {
        redis::cmd("DEL")
            .arg(info_key(node_id))
            .exec_async(&mut self.conn.clone())
            .await?;
        self.clean_node(node_id).await
    }

    /// Nodes whose registration has not expired, by id.
    pub async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let ids = self.registered_nodes().await?;
        let infos: Vec<Option<String>> = fan_out(ids.iter().map(|id| {
            let mut conn = self.conn.clone();
            let key = info_key(id);
            async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(StoreError::from)
            }
        }))
        .await?;
        let mut nodes = infos
            .into_iter()
            .flatten()
            .map(|json| {
                serde_json::from_str::<NodeInfo>(&json)
                    .map_err(|e| StoreError::decode("node info", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Ids of nodes that registered and then stopped heartbeating (expired), not yet
    /// cleaned, sorted.
    pub async fn dead_nodes(&self) -> Result<Vec<String>, StoreError> {
        let ids = self.registered_nodes().await?;
        let alive: Vec<bool> = fan_out(ids.iter().map(|id| {
            let mut conn = self.conn.clone();
            let key = info_key(id);
            async move {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .map_err(StoreError::from)
            }
        }))
        .await?;
        Ok(ids
            .into_iter()
            .zip(alive)
            .filter_map(|(id, alive)| (!alive).then_some(id))
            .collect())
    }

    /// Removes every connection route naming `node_id` and forgets the node; returns how
    /// many routes were removed. Safe to run from several nodes at once.
    ///
    /// Every step is idempotent and each route is deleted by a conditional script in its
    /// user's slot, so concurrent cleaners never remove a route twice (their counts add
    /// up) and a cleaner that dies half-way leaves work that the next run finishes: the
    /// node's user set and its membership are dropped only after its routes.
    pub async fn clean_node(&self, node_id: &str) -> Result<u64, StoreError> {
        let users = users_key(node_id);
        let mut conn = self.conn.clone();
        let mut removed = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, uids): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&users)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await?;
            let counts: Vec<u64> = fan_out(uids.iter().map(|uid| {
                let mut conn = self.conn.clone();
                let (key, node) = (conns_key(uid), node_id.to_owned());
                async move {
                    ROUTES_DROP_NODE
                        .key(key)
                        .arg(node)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(StoreError::from)
                }
            }))
            .await?;
            removed += counts.iter().sum::<u64>();
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis::cmd("DEL").arg(&users).exec_async(&mut conn).await?;
        redis::cmd("SREM")
            .arg(nodes_key())
            .arg(node_id)
            .exec_async(&mut conn)
            .await?;
        Ok(removed)
    }

    /// Adds `uids` to `node`'s user set in one request, for routes written next with
    /// [`RedisStore::route_add_listed`].
    pub async fn list_users(&self, node: &str, uids: &[&str]) -> Result<(), StoreError> {
        if uids.is_empty() {
            return Ok(());
        }
        redis::cmd("SADD")
            .arg(users_key(node))
            .arg(uids)
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    /// Records that device `device` of `uid` is connected on `node`.
    pub async fn route_add(
        &self,
        uid: &str,
        device: &str,
        node: &str,
    ) -> Result<RouteAdded, StoreError> {
        self.list_users(node, &[uid]).await?;
        self.route_add_listed(uid, device, node).await
    }

    /// [`RedisStore::route_add`] for a `uid` already added to `node`'s user set with
    /// [`RedisStore::list_users`] (one request for a round of routes).
    pub async fn route_add_listed(
        &self,
        uid: &str,
        device: &str,
        node: &str,
    ) -> Result<RouteAdded, StoreError> {
        let (previous, inbox_head) = self.run_route(&ROUTE_ADD, uid, device, node).await?;
        Ok(RouteAdded {
            previous: Some(previous).filter(|p| !p.is_empty() && p != node),
            inbox_head,
        })
    }

    /// Records again that device `device` of `uid` is connected on `node`, after
    /// `node`'s registration expired and its routes may have been removed, unless the
    /// route now names another node: the device connected there meanwhile, and the
    /// connection on `node` is the stale one. Unlike [`RedisStore::route_add`], it never
    /// takes a device away from another node.
    pub async fn route_restore(
        &self,
        uid: &str,
        device: &str,
        node: &str,
    ) -> Result<RouteRestored, StoreError> {
        self.list_users(node, &[uid]).await?;
        let (other, inbox_head) = self.run_route(&ROUTE_RESTORE, uid, device, node).await?;
        Ok(if other.is_empty() {
            RouteRestored::Restored { inbox_head }
        } else {
            RouteRestored::Moved { to: other }
        })
    }

    /// Runs `script` (`route_add` or `route_restore`) on the user's routes and inbox:
    /// its `{node, inbox head}` answer. The caller has added `uid` to `node`'s user set
    /// first: a uid listed without a route is harmless, a route whose uid is not listed
    /// would outlive the node.
    async fn run_route(
        &self,
        script: &Script,
        uid: &str,
        device: &str,
        node: &str,
    ) -> Result<(String, u64), StoreError> {
        let mut conn = self.conn.clone();
        Ok(script
            .key(conns_key(uid))
            .key(user_key(uid, "inbox"))
            .arg(device)
            .arg(node)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Removes the route of (uid, device) if it still names `node`; whether it did.
    ///
    /// When the user has no device left on `node`, the uid also leaves the node's user
    /// set. That takes a second request in another slot, so a device of the same user
    /// connecting to the same node in between may lose its uid from the set (a race we
    /// accept): its route then survives a crash of that node until the device reconnects
    /// elsewhere, which overwrites it.
    pub async fn route_remove(
        &self,
        uid: &str,
        device: &str,
        node: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let (removed, left): (u64, u64) = ROUTE_REMOVE
            .key(conns_key(uid))
            .arg(device)
            .arg(node)
            .invoke_async(&mut conn)
            .await?;
        if left == 0 {
            redis::cmd("SREM")
                .arg(users_key(node))
                .arg(uid)
                .exec_async(&mut conn)
                .await?;
        }
        Ok(removed == 1)
    }

    /// The routes of each of `uids`, as (device, node) pairs sorted by device, in the
    /// order of `uids` (concurrent single-slot reads).
    pub async fn routes(&self, uids: &[String]) -> Result<Vec<Vec<(String, String)>>, StoreError> {
        fan_out(uids.iter().map(|uid| {
            let mut conn = self.conn.clone();
            let key = conns_key(uid);
            async move {
                let mut routes: Vec<(String, String)> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await?;
                routes.sort();
                Ok(routes)
            }
        }))
        .await
    }

    /// The highest `useq` of each of `uids` (0 for an empty inbox), in the order of
    /// `uids` (concurrent single-slot reads).
    pub async fn inbox_heads(&self, uids: &[String]) -> Result<Vec<u64>, StoreError> {
        fan_out(uids.iter().map(|uid| {
            let mut conn = self.conn.clone();
            let key = user_key(uid, "inbox");
            async move {
                LIST_END
                    .key(key)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(StoreError::from)
            }
        }))
        .await
    }

    /// Tells every node that the blacklist changed.
    ///
    /// The directory's own blacklist changes publish by themselves, in the script that
    /// stores them; this is for anything else that should make nodes reload.
    pub async fn publish_blacklist_changed(&self) -> Result<(), StoreError> {
        redis::cmd("SPUBLISH")
            .arg(BLACKLIST_CHANNEL)
            .arg("changed")
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    /// Subscribes to blacklist changes. The receiver gets `()` for each notification, and
    /// also once after every (re)connection of the subscription (the first one included),
    /// because a notification may have been missed meanwhile. Runs until the receiver is
    /// dropped.
    ///
    /// Notifications coalesce: the channel holds one `()`, and one pending `()` already
    /// means "reload". The subscription has a connection of its own (RESP3, pushes);
    /// redis-rs reconnects it and replays its `SSUBSCRIBE`, whose confirmation is what
    /// sends the `()` after a reconnection. A periodic check covers what redis-rs does
    /// not: it makes a connection whose reconnect retries ran out try again, and rebuilds
    /// one that only times out.
    pub async fn subscribe_blacklist(&self) -> Result<mpsc::Receiver<()>, StoreError> {
        let (pushes_tx, pushes) = mpsc::unbounded_channel();
        let sub = Subscriber::connect(&self.spec, self.is_cluster(), pushes_tx.clone()).await?;
        let (tx, rx) = mpsc::channel(1);
        let task = Subscription {
            spec: self.spec.clone(),
            cluster: self.is_cluster(),
            pushes_tx,
            sub: Some(sub),
        };
        tokio::spawn(task.run(pushes, tx));
        Ok(rx)
    }

    /// Every registered node id (live or dead), sorted.
    async fn registered_nodes(&self) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(nodes_key())
            .query_async(&mut self.conn.clone())
            .await?;
        ids.sort();
        Ok(ids)
    }
}

/// Runs `requests` (single-slot, each owning what it needs) with at most [`FAN_OUT`] in
/// flight; the results in the order of `requests`.
///
/// The requests are built before they are polled and borrow nothing: a stream that maps
/// borrowed items to futures makes the caller's future fail to be `Send` for spawned
/// tasks (rustc's higher-ranked lifetime limitation, rust-lang/rust#102211).
async fn fan_out<T, F>(requests: impl Iterator<Item = F>) -> Result<Vec<T>, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let requests: Vec<F> = requests.collect();
    stream::iter(requests).buffered(FAN_OUT).try_collect().await
}

/// The subscription's own connection, which delivers pushes to the sender it was built
/// with.
enum Subscriber {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Subscriber {
    /// Connects to `spec` with RESP3 and subscribes to [`BLACKLIST_CHANNEL`]. redis-rs
    /// records the subscription as the server confirms it, and replays it after each
    /// reconnection.
    async fn connect(
        spec: &str,
        cluster: bool,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<Self, StoreError> {
        let urls = super::seeds(spec)?;
        let first = urls[0];
        if cluster {
            let client = ClusterClientBuilder::new(urls.iter().map(|u| u.to_string()))
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(pushes)
                .connection_timeout(super::CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()?;
            let mut conn = client.get_async_connection().await?;
            conn.ssubscribe(BLACKLIST_CHANNEL).await?;
            Ok(Subscriber::Cluster(conn))
        } else {
            let info = first.into_connection_info()?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(super::CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_push_sender(pushes)
                .set_automatic_resubscription();
            let mut conn = client.get_connection_manager_with_config(config).await?;
            // ConnectionManager has no `ssubscribe`; a raw one-channel SSUBSCRIBE is
            // answered by one confirmation, which also records it for resubscription.
            redis::cmd("SSUBSCRIBE")
                .arg(BLACKLIST_CHANNEL)
                .exec_async(&mut conn)
                .await?;
            Ok(Subscriber::Single(conn))
        }
    }

    /// Subscribes again (after the server dropped the subscription: a slot migration
    /// sends `sunsubscribe`, which redis-rs also forgets).
    async fn resubscribe(&mut self) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(c) => {
                redis::cmd("SSUBSCRIBE")
                    .arg(BLACKLIST_CHANNEL)
                    .exec_async(c)
                    .await
            }
            Subscriber::Cluster(c) => c.ssubscribe(BLACKLIST_CHANNEL).await,
        }
    }

    /// A cheap request to the channel's slot: it fails when the connection does.
    async fn check(&mut self) -> redis::RedisResult<()> {
        let cmd = {
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(BLACKLIST_CHANNEL);
            cmd
        };
        match self {
            Subscriber::Single(c) => cmd.exec_async(c).await,
            Subscriber::Cluster(c) => cmd.exec_async(c).await,
        }
    }
}

/// The task behind [`RedisStore::subscribe_blacklist`].
struct Subscription {
    spec: String,
    cluster: bool,
    /// Every connection the task builds pushes here; the task holds a sender so that the
    /// receiver never closes while it runs.
    pushes_tx: mpsc::UnboundedSender<PushInfo>,
    /// `None` after a failed rebuild, until the next check builds one.
    sub: Option<Subscriber>,
}

impl Subscription {
    /// Turns the subscription's pushes into `()`s on `tx` until `tx`'s receiver is dropped.
    async fn run(mut self, mut pushes: mpsc::UnboundedReceiver<PushInfo>, tx: mpsc::Sender<()>) {
        let mut subscribed = true;
        let mut failures = 0u32;
        let mut check = tokio::time::interval(SUBSCRIPTION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset(); // the first check one period from now, not at once
        loop {
            tokio::select! {
                () = tx.closed() => return,
                push = pushes.recv() => match push.map(|p| p.kind) {
                    Some(PushKind::SMessage | PushKind::SSubscribe) => {
                        subscribed = true;
                        // Full means a `()` is pending already, which says the same.
                        let _ = tx.try_send(());
                    }
                    Some(PushKind::SUnsubscribe) => {
                        // The server dropped the subscription (the slot moved), and redis-rs
                        // forgot it with the confirmation; the next check subscribes again.
                        tracing::warn!(channel = BLACKLIST_CHANNEL, "subscription dropped by the server");
                        subscribed = false;
                    }
                    Some(_) => {}
                    None => return, // unreachable: `self.pushes_tx` lives as long as this loop
                },
                _ = check.tick() => {
                    let Some(sub) = self.sub.as_mut() else {
                        subscribed = self.rebuild().await;
                        continue;
                    };
                    let ok = if subscribed {
                        sub.check().await.is_ok()
                    } else {
                        sub.resubscribe().await.is_ok()
                    };
                    if ok {
                        subscribed = true;
                        failures = 0;
                        continue;
                    }
                    failures += 1;
                    if failures >= SUBSCRIPTION_REBUILD_AFTER {
                        tracing::warn!(channel = BLACKLIST_CHANNEL, failures, "subscription connection unhealthy; rebuilding it");
                        failures = 0;
                        subscribed = self.rebuild().await;
                    }
                }
            }
        }
    }

    /// Drops the subscription's connection and builds a new one; whether that worked (on
    /// failure the next check tries again).
    async fn rebuild(&mut self) -> bool {
        self.sub = None;
        match Subscriber::connect(&self.spec, self.cluster, self.pushes_tx.clone()).await {
            Ok(s) => {
                self.sub = Some(s);
                true
            }
            Err(error) => {
                tracing::warn!(%error, channel = BLACKLIST_CHANNEL, "could not rebuild the subscription");
                false
            }
        }
    }
}

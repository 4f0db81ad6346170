//! Cluster membership, through Redis: registration with a TTL'd heartbeat, discovery of
//! the live workers, failover cleanup, connection routes, and change notifications.
//!
//! Every node registers itself (id, roles, addresses) under a key that expires
//! [`NODE_TTL`] after its last heartbeat, and follows the registry every
//! [`HEARTBEAT`] to keep an RPC client to each live worker ([`Workers::follow`]).
//! A worker killed with `kill -9` stops heartbeating: within `NODE_TTL` its
//! registration expires, within one more tick every node drops its client, and the
//! nodes with the dispatcher role remove the dead node's connection routes. Until then
//! pushes to it fail fast (its TCP connection is gone) and its users' messages wait in
//! their inboxes. A node that was only away past `NODE_TTL` (frozen, cut off) finds its
//! registration gone at its next tick: it registers again and restores its
//! connections' routes, except those of devices that connected elsewhere meanwhile,
//! whose connections here it closes (see `Membership::republish_routes`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::business::{Admin, Deliver, Presence};
use crate::dispatch::{Routed, Workers};
use crate::store::{MessageStore, NodeInfo, RedisStore, RouteRestored};
use crate::worker::{Hub, RouteChange};

/// How often a node heartbeats, follows discovery, and (dispatcher role) sweeps.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a registration outlives its last heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(3);
/// How long a catch-up waits after it is asked for: pushes still on their way from
/// live nodes land first, and a burst of requests makes one pass.
const CATCH_UP_DELAY: Duration = Duration::from_millis(500);
/// Shortest time from one catch-up pass to the next: a node that crash-loops (or a
/// link that flaps) must not turn every worker into a steady stream of `LLEN`s over all
/// its users. What is lost meanwhile is found by the next pass.
const CATCH_UP_EVERY: Duration = Duration::from_secs(5);
/// Users whose inbox heads one round of a catch-up reads.
const CATCH_UP_CHUNK: usize = 1024;
/// How often the blacklist is reloaded even without a notification (pub/sub is
/// fire-and-forget; this bounds how long a missed one matters).
const BLACKLIST_RELOAD: Duration = Duration::from_secs(10);

/// What a node's membership runs on.
pub struct Membership {
    /// The shared store.
    pub store: Arc<RedisStore>,
    /// This node as registered.
    pub me: NodeInfo,
    /// The reachable workers.
    pub workers: Arc<Workers>,
    /// Delivers what the sweeper finished.
    pub dispatcher: Arc<Routed>,
    /// Reloads the blacklist cache.
    pub admin: Admin,
    /// Whether this node sweeps unfinished fan-outs and cleans dead nodes.
    pub dispatcher_role: bool,
}

impl Membership {
    /// Registers the node (forgetting routes a previous life of the same id left
    /// behind), connects to the live workers, and starts the background tasks, which
    /// end with `stop`.
    pub async fn start(self, stop: CancellationToken) -> anyhow::Result<()> {
        let cleaned = self.store.clean_node(&self.me.id).await?;
        if cleaned > 0 {
            tracing::info!(
                routes = cleaned,
                "routes of a previous run of this node removed"
            );
        }
        self.store.heartbeat(&self.me, NODE_TTL).await?;
        self.workers.follow(&self.store.live_nodes().await?).await;
        if let Some(hub) = self.workers.local() {
            if let Some(changes) = hub.watch_routes() {
                tokio::spawn(write_routes(
                    self.store.clone(),
                    self.workers.clone(),
                    hub.clone(),
                    changes,
                    stop.clone(),
                ));
            }
            tokio::spawn(catch_up(hub.clone(), self.store.clone(), stop.clone()));
        }
        let notifications = self.store.subscribe_blacklist().await?;
        tokio::spawn(follow_blacklist(
            self.admin.clone(),
            self.workers.local().cloned(),
            notifications,
            stop.clone(),
        ));
        tokio::spawn(self.tick(stop));
        Ok(())
    }

    /// Heartbeat, discovery and (dispatcher role) sweeping, once per [`HEARTBEAT`].
    async fn tick(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.cancelled() => break,
            }
            let live = self.store.live_nodes().await;
            if let Err(e) = self.store.heartbeat(&self.me, NODE_TTL).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            match live {
                Ok(live) => {
                    if !live.iter().any(|n| n.id == self.me.id) {
                        // Our registration had expired (Redis or this node stalled), and
                        // a dispatcher may have cleaned our routes: write them again.
                        tracing::warn!("registration had expired; re-registered");
                        self.republish_routes().await;
                    }
                    self.workers.follow(&live).await;
                }
                Err(e) => tracing::warn!(error = %e, "reading the node registry failed"),
            }
            if self.dispatcher_role {
                self.clean_dead().await;
                self.sweep().await;
            }
        }
    }

    /// Writes the route of every local connection again, after this node was away
    /// (frozen, or cut off from Redis) past its registration's TTL and the cluster moved
    /// on without it. A device whose route now names another node reconnected there
    /// meanwhile: its connection here is the stale one, so it is closed with
    /// `replaced` and the route is left alone (overwriting it would take the device's
    /// pushes away from where it is). A device whose route is written again is offered
    /// its inbox head, so that it reads what was committed for it while it had no
    /// route (nobody pushed it) without waiting for a later push to show the gap.
    ///
    /// It runs inside the heartbeat's tick, so the writes go out [`REPUBLISH_FAN_OUT`]
    /// at a time: one after the other they took 8–13 ms each on a busy 2-core box just
    /// woken from SIGSTOP (0.8–1.3 s for 100 connections), all of it time the next
    /// heartbeat waits, and a few hundred connections more would hold it past the TTL.
    async fn republish_routes(&self) {
        let Some(hub) = self.workers.local() else {
            return;
        };
        let (mut restored, mut moved) = (0u64, 0u64);
        let mut after = None;
        loop {
            let (page, next) = hub.connections(None, after.as_ref(), 1000);
            // Owned futures, built before they are polled: see `registry::fan_out`.
            let writes: Vec<_> = page
                .into_iter()
                .map(|c| {
                    let (store, me) = (self.store.clone(), self.me.id.clone());
                    async move {
                        let written = store.route_restore(&c.uid, &c.device, &me).await;
                        (c, written)
                    }
                })
                .collect();
            let mut done = futures_util::stream::iter(writes).buffer_unordered(REPUBLISH_FAN_OUT);
            while let Some((c, written)) = done.next().await {
                match written {
                    Ok(RouteRestored::Restored { inbox_head }) => {
                        restored += 1;
                        hub.offer_inbox_head(&c.uid, inbox_head);
                    }
                    Ok(RouteRestored::Moved { to }) => {
                        moved += 1;
                        hub.kick_device(&c.uid, &c.device, "replaced");
                        tracing::debug!(
                            uid = c.uid,
                            device = c.device,
                            to,
                            "device moved away meanwhile"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(uid = c.uid, error = %e, "rewriting a route failed");
                    }
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        tracing::info!(
            restored,
            moved,
            "routes written again; devices that moved away meanwhile closed"
        );
    }

    async fn clean_dead(&self) {
        let dead = match self.store.dead_nodes().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading dead nodes failed");
                return;
            }
        };
        for node in dead {
            match self.store.clean_node(&node).await {
                Ok(routes) => tracing::info!(node, routes, "dead node cleaned"),
                Err(e) => tracing::warn!(node, error = %e, "cleaning a dead node failed"),
            }
        }
    }

    async fn sweep(&self) {
        match self.store.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "unfinished fan-outs finished"),
            Err(e) => tracing::warn!(error = %e, "sweeping fan-outs failed"),
        }
        for c in self.store.take_relayed() {
            self.dispatcher.deliver(&c);
        }
        if self.store.pushes_lost() {
            self.dispatcher.lost();
        }
    }

    /// Leaves the cluster: removes the registration and this node's routes.
    pub async fn leave(store: &RedisStore, node: &str) {
        match store.deregister(node).await {
            Ok(routes) => tracing::info!(routes, "deregistered"),
            Err(e) => tracing::warn!(error = %e, "deregistering failed; the registration expires"),
        }
    }
}

/// Most connection changes written in one round.
const ROUTE_BATCH: usize = 512;
/// Route writes a node that re-registers keeps in flight.
const REPUBLISH_FAN_OUT: usize = 64;

/// Publishes the hub's connection changes as routes. Changes are taken in rounds of up
/// to [`ROUTE_BATCH`]; within a round those of different devices are written
/// concurrently (the connection pipelines them) and those of one device in order, so
/// that a ramp of thousands of connections per second does not queue up behind one
/// round trip each. A device that was held by another worker until now is kicked there
/// with `replaced`, without holding up the round (the other worker may be as busy as
/// this one). A connection whose upgrade stopped waiting for its route (it was refused,
/// see `gateway::ws`) gets none: in a reconnection storm those writes would only delay
/// the upgrades still waiting, and kick the device's newer connection elsewhere.
async fn write_routes(
    store: Arc<RedisStore>,
    workers: Arc<Workers>,
    hub: Arc<Hub>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<RouteChange>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(ROUTE_BATCH);
    loop {
        let n = tokio::select! {
            n = changes.recv_many(&mut batch, ROUTE_BATCH) => n,
            _ = stop.cancelled() => 0,
        };
        if n == 0 {
            break;
        }
        // Per device, in arrival order.
        let mut per_device: Vec<Vec<RouteChange>> = Vec::new();
        let mut index: std::collections::HashMap<(String, String), usize> =
            std::collections::HashMap::new();
        for change in batch.drain(..) {
            let key = match &change {
                RouteChange::Connected { uid, device, .. }
                | RouteChange::Disconnected { uid, device } => (uid.clone(), device.clone()),
            };
            match index.get(&key) {
                Some(&i) => per_device[i].push(change),
                None => {
                    index.insert(key, per_device.len());
                    per_device.push(vec![change]);
                }
            }
        }
        // One SADD for the node's user set instead of one per route: the uids whose
        // changes this round are all connections still waiting. A uid with a
        // disconnection in the round keeps its own SADD after the removal's SREM.
        let started = std::time::Instant::now();
        let mut uids: Vec<&str> = Vec::new();
        let mut mixed = std::collections::HashSet::new();
        for change in per_device.iter().flatten() {
            match change {
                RouteChange::Connected { uid, written, .. } if !written.is_closed() => {
                    uids.push(uid)
                }
                RouteChange::Connected { .. } => {}
                RouteChange::Disconnected { uid, .. } => {
                    mixed.insert(uid.as_str());
                }
            }
        }
        uids.retain(|uid| !mixed.contains(uid));
        uids.sort_unstable();
        uids.dedup();
        let listed: std::collections::HashSet<String> = match store
            .list_users(hub.node_id(), &uids)
            .await
        {
            Ok(()) => uids.into_iter().map(str::to_owned).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing this round's users failed; each route lists its own");
                Default::default()
            }
        };
        let (store, workers, hub, listed) = (&store, &workers, &hub, &listed);
        futures_util::future::join_all(per_device.into_iter().map(|changes| async move {
            for change in changes {
                let connected = matches!(change, RouteChange::Connected { .. });
                write_route(store, workers, hub.node_id(), listed, change).await;
                if connected {
                    hub.route_taken();
                }
            }
        }))
        .await;
        metrics::histogram!("imd_route_write_round_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("imd_route_write_round_size").record(n as f64);
    }
}

/// Writes one change. `listed` holds the uids already in this node's user set.
async fn write_route(
    store: &RedisStore,
    workers: &Arc<Workers>,
    me: &str,
    listed: &std::collections::HashSet<String>,
    change: RouteChange,
) {
    match change {
        RouteChange::Connected {
            uid,
            device,
            written,
        } => {
            // Its `Disconnected` follows and removes nothing.
            if written.is_closed() {
                metrics::counter!("imd_route_writes_skipped_total").increment(1);
                return;
            }
            let added = if listed.contains(&uid) {
                store.route_add_listed(&uid, &device, me).await
            } else {
                store.route_add(&uid, &device, me).await
            };
            // The upgrade waits for this: a failed write refuses it (no other node could
            // reach the device).
            let _ = written.send(added.as_ref().ok().map(|a| a.inbox_head));
            match added.map(|a| a.previous) {
                Ok(Some(previous)) => {
                    let workers = workers.clone();
                    tokio::spawn(async move {
                        if !workers.is_live(&previous) {
                            // A worker started less than a discovery tick ago: look now.
                            workers.refresh().await;
                        }
                        let kicked = workers
                            .kick_device(&previous, &uid, &device, "replaced")
                            .await;
                        tracing::debug!(uid, device, previous, kicked, "device moved here");
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(uid, device, error = %e, "writing a route failed"),
            }
        }
        RouteChange::Disconnected { uid, device } => {
            if let Err(e) = store.route_remove(&uid, &device, me).await {
                tracing::warn!(uid, device, error = %e, "removing a route failed");
            }
        }
    }
}

/// Runs a catch-up pass each time the hub asks for one ([`Hub::catch_up_soon`]): reads
/// the inbox head of every user connected here and hands it to their sessions, which
/// read from the inbox whatever they should have been pushed and were not.
///
/// A pass costs one `LLEN` per connected user, pipelined; it runs only after a node
/// left, a link broke or a sender lost deliveries, not on a timer, and at most once per
/// [`CATCH_UP_EVERY`].
async fn catch_up(hub: Arc<Hub>, store: Arc<RedisStore>, stop: CancellationToken) {
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = hub.catch_up_wanted() => {}
            _ = stop.cancelled() => break,
        }
        let soonest = tokio::time::Instant::now() + CATCH_UP_DELAY;
        let at = last.map_or(soonest, |l| soonest.max(l + CATCH_UP_EVERY));
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.cancelled() => break,
        }
        last = Some(tokio::time::Instant::now());
        let uids = hub.uids();
        for chunk in uids.chunks(CATCH_UP_CHUNK) {
            match store.inbox_heads(chunk).await {
                Ok(heads) => {
                    for (uid, head) in chunk.iter().zip(heads) {
                        hub.offer_inbox_head(uid, head);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading inbox heads failed; devices catch up at their next sync");
                    break;
                }
            }
        }
        metrics::counter!("imd_catch_up_passes_total").increment(1);
        tracing::info!(
            users = uids.len(),
            "catch-up pass: sessions compared with their inbox heads"
        );
    }
}

/// Reloads the blacklist cache on every notification (and every [`BLACKLIST_RELOAD`]),
/// and kicks the connections it now blocks.
async fn follow_blacklist(
    admin: Admin,
    hub: Option<Arc<Hub>>,
    mut notifications: tokio::sync::mpsc::Receiver<()>,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(BLACKLIST_RELOAD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = notifications.recv() => if n.is_none() { break },
            _ = every.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Err(e) = admin.load_blacklist().await {
            tracing::warn!(error = %e, "reloading the blacklist failed");
            continue;
        }
        if let Some(hub) = &hub {
            let kicked = hub.enforce_blacklist();
            if kicked > 0 {
                tracing::info!(kicked, "blacklisted connections kicked");
            }
        }
    }
}

/// Presence from the connection routes: a user is online when a live worker holds one
/// of its devices.
pub struct RoutedPresence {
    store: Arc<RedisStore>,
    workers: Arc<Workers>,
}

impl RoutedPresence {
    /// Presence over `store`'s routes and `workers`' liveness.
    pub fn new(store: Arc<RedisStore>, workers: Arc<Workers>) -> Self {
        Self { store, workers }
    }
}

#[async_trait]
impl Presence for RoutedPresence {
    async fn online(&self, uid: &str) -> bool {
        let routes = match self
            .store
            .routes(std::slice::from_ref(&uid.to_owned()))
            .await
        {
            Ok(mut r) => r.remove(0),
            Err(e) => {
                tracing::warn!(uid, error = %e, "presence lookup failed; taken as offline");
                return false;
            }
        };
        if routes.iter().any(|(_, node)| self.workers.is_live(node)) {
            return true;
        }
        if routes.is_empty() {
            return false;
        }
        // A route to a worker this node does not know yet (it started less than a
        // discovery tick ago): look at the registry now rather than call the user away.
        self.workers.refresh().await;
        routes.iter().any(|(_, node)| self.workers.is_live(node))
    }
}

//! The workers a node can reach: its own hub, and an RPC client per live worker of the
//! cluster, kept in step with discovery. All of them are [`Worker`]s in one map, so
//! each operation is one loop over it, whatever the deployment.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::admin::{ConnCursor, ConnectionInfo, NodeInfo};

use crate::business::{Devices, Error};
use crate::rpc::auth::LinkKey;
use crate::rpc::remote::RemoteWorker;
use crate::store::{NodeInfo as Registration, RedisStore};
use crate::worker::{CatchUpCause, Delivery, Hub, Notice, Worker};

/// How long a worker that could not be reached is left alone before the next try
/// (a host that is down costs a whole connect timeout per try).
const RETRY_AFTER: Duration = Duration::from_secs(3);

/// One reachable worker.
struct Entry {
    worker: Arc<dyn Worker>,
    /// Where its RPC server listens; `None` for this node's own hub.
    addr: Option<SocketAddr>,
}

/// The reachable workers, by node id.
pub struct Workers {
    local_id: String,
    /// This node's hub, when it is a worker: it is in `all` too, and is also asked
    /// what only the local worker knows (goodbyes heard, the blacklist to enforce).
    local: Option<Arc<Hub>>,
    /// The cluster's registry, in cluster mode.
    registry: Option<Arc<RedisStore>>,
    /// What this node's RPC links prove, both ways.
    link: LinkKey,
    all: RwLock<HashMap<String, Entry>>,
    /// When connecting to a worker last failed.
    failed: Mutex<HashMap<String, Instant>>,
    /// Ids of every node (any role) live at the last [`Workers::follow`].
    nodes: Mutex<HashSet<String>>,
    /// Runs (id, start) of live workers of another RPC version, not linked to; each
    /// is logged once.
    mismatched: Mutex<HashSet<(String, i64)>>,
    /// One [`Workers::follow`] at a time (the discovery tick and the routing task both
    /// call it): two would connect to the same new worker, and the second client would
    /// replace the first with its queued deliveries.
    following: tokio::sync::Mutex<()>,
}

impl Workers {
    /// This node (`local_id`), with its hub when it is a worker, and no remote yet;
    /// `registry` is the cluster's (none on a single node); its links prove `link`.
    pub fn new(
        local_id: String,
        local: Option<Arc<Hub>>,
        registry: Option<Arc<RedisStore>>,
        link: LinkKey,
    ) -> Self {
        let all = local
            .iter()
            .map(|hub| {
                let worker: Arc<dyn Worker> = hub.clone();
                (local_id.clone(), Entry { worker, addr: None })
            })
            .collect();
        Self {
            local_id,
            local,
            registry,
            link,
            all: RwLock::new(all),
            failed: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashSet::new()),
            mismatched: Mutex::new(HashSet::new()),
            following: tokio::sync::Mutex::new(()),
        }
    }

    /// The key this node's RPC links prove (its worker server asks it of callers).
    pub fn link_key(&self) -> &LinkKey {
        &self.link
    }

    /// This node's hub, when it is a worker.
    pub fn local(&self) -> Option<&Arc<Hub>> {
        self.local.as_ref()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        // Every write leaves the map whole, even one that panicked.
        self.all.read().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, node: &str) -> Option<Arc<dyn Worker>> {
        self.read().get(node).map(|e| e.worker.clone())
    }

    /// Every worker, to loop over without holding the map.
    fn each(&self) -> Vec<Arc<dyn Worker>> {
        self.read().values().map(|e| e.worker.clone()).collect()
    }

    /// The worker of `node`, if this node can reach it now (a worker whose connection
    /// broke cannot be, even before discovery drops it).
    fn live(&self, node: &str) -> Option<Arc<dyn Worker>> {
        self.get(node).filter(|w| w.is_live())
    }

    /// Whether `node` is a worker this node can reach now.
    pub fn is_live(&self, node: &str) -> bool {
        self.live(node).is_some()
    }

    /// Ids of every reachable worker, this node's first.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().keys().cloned().collect();
        ids.sort_by_key(|id| (*id != self.local_id, id.clone()));
        ids
    }

    /// Follows discovery: connects to live workers not connected yet (or whose
    /// connection broke, or moved), and drops those no longer live. When a node left
    /// the registry without saying goodbye, the local hub catches up: that node may
    /// have written inbox entries and died before pushing them.
    pub async fn follow(&self, live: &[Registration]) {
        let _one = self.following.lock().await;
        let now_live: HashSet<String> = live.iter().map(|n| n.id.clone()).collect();
        let left: Vec<String> = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let left = nodes
                .iter()
                .filter(|id| !now_live.contains(*id))
                .cloned()
                .collect();
            *nodes = now_live;
            left
        };
        if let Some(hub) = &self.local {
            hub.forget_farewells_of(live.iter().map(|n| (n.id.as_str(), n.started_ms)));
            // Every departed node is asked about, so that each goodbye is used up.
            let unannounced = left.iter().filter(|id| !hub.left_cleanly(id)).count();
            if unannounced > 0 {
                hub.catch_up_soon(CatchUpCause::NodeLeft);
            } else if !left.is_empty() {
                hub.catch_up_skipped(CatchUpCause::NodeLeft);
            }
        }
        let ours = crate::rpc::rpc_version();
        {
            let mut mismatched = self.mismatched.lock().unwrap_or_else(|e| e.into_inner());
            mismatched.retain(|(id, started)| {
                live.iter().any(|n| n.id == *id && n.started_ms == *started)
            });
            for n in live.iter().filter(|n| n.rpc_version != ours) {
                if mismatched.insert((n.id.clone(), n.started_ms)) {
                    tracing::error!(
                        node = %n.id,
                        ours,
                        theirs = n.rpc_version,
                        "rpc version mismatch: not linking to this node (every node of a \
                         cluster must run the same rpc version)"
                    );
                }
            }
        }
        let wanted: HashMap<&str, SocketAddr> = live
            .iter()
            .filter(|n| n.id != self.local_id && n.roles.iter().any(|r| r == "worker"))
            .filter(|n| n.rpc_version == ours)
            .filter_map(|n| Some((n.id.as_str(), n.rpc.as_deref()?.parse().ok()?)))
            .collect();
        let stale: Vec<String> = self
            .read()
            .iter()
            .filter(|(_, e)| {
                e.addr.is_some_and(|addr| {
                    wanted.get(e.worker.node()) != Some(&addr) || !e.worker.is_live()
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !stale.is_empty() {
            let mut all = self.all.write().unwrap_or_else(|e| e.into_inner());
            for id in &stale {
                all.remove(id);
                tracing::info!(node = %id, "worker dropped");
            }
        }
        let now = Instant::now();
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, at| wanted.contains_key(id.as_str()) && now - *at < RETRY_AFTER);
        for (id, addr) in wanted {
            let recently_failed = self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(id);
            if self.get(id).is_some() || recently_failed {
                continue;
            }
            match RemoteWorker::connect(id, addr, &self.link).await {
                Ok(w) => {
                    tracing::info!(node = %id, %addr, "worker connected");
                    let entry = Entry {
                        worker: Arc::new(w),
                        addr: Some(addr),
                    };
                    self.all
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.to_owned(), entry);
                }
                Err(e) => {
                    tracing::warn!(node = %id, %addr, error = %e, "cannot reach worker");
                    self.failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.to_owned(), Instant::now());
                }
            }
        }
    }

    /// Reads the registry and [`Workers::follow`]s it now, between discovery ticks: for
    /// a route naming a worker not known yet (one that started less than a tick ago).
    pub async fn refresh(&self) {
        let Some(registry) = &self.registry else {
            return;
        };
        match registry.live_nodes().await {
            Ok(live) => self.follow(&live).await,
            Err(e) => tracing::warn!(error = %e, "reading the node registry failed"),
        }
    }

    /// Tells every other worker that this node's run started at `started_ms` is
    /// leaving, once each has been sent every delivery queued for it (see
    /// [`Worker::goodbye`]), waiting at most `wait`; how many took it. Call it after
    /// the last commit: a worker told goodbye runs no catch-up for this node's
    /// departure.
    pub async fn goodbye(&self, started_ms: i64, wait: Duration) -> usize {
        let others: Vec<_> = self
            .each()
            .into_iter()
            .filter(|w| w.node() != self.local_id)
            .collect();
        let said = futures_util::future::join_all(others.iter().map(|w| async move {
            let said = tokio::time::timeout(wait, w.goodbye(&self.local_id, started_ms)).await;
            if !matches!(said, Ok(true)) {
                tracing::info!(
                    node = w.node(),
                    "no goodbye to this worker; it will catch up"
                );
            }
            matches!(said, Ok(true))
        }))
        .await;
        said.into_iter().filter(|&s| s).count()
    }

    /// Pushes meant for unknown workers were lost (a route lookup failed, the routing
    /// queue was full): tells every worker, this node's too, to catch up.
    pub fn catch_up_everywhere(&self) {
        for w in self.each() {
            w.catch_up();
        }
    }

    /// Hands `d` to the worker of `node`; false when that worker is not reachable.
    pub fn deliver(&self, node: &str, d: Delivery) -> bool {
        self.live(node).map(|w| w.deliver(d)).is_some()
    }

    /// Hands `n` to the worker of `node`; false when that worker is not reachable.
    pub fn notify(&self, node: &str, n: Notice) -> bool {
        self.live(node).map(|w| w.notify(n)).is_some()
    }

    /// Disconnects device `device` of `uid` on worker `node`; how many (0 or 1).
    pub async fn kick_device(&self, node: &str, uid: &str, device: &str, reason: &str) -> usize {
        let Some(w) = self.get(node) else {
            return 0;
        };
        w.kick_device(uid, device, reason)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(node, error = %e, "kick on worker failed");
                0
            })
    }
}

#[async_trait::async_trait]
impl Devices for Workers {
    async fn connections(
        &self,
        uid: Option<&str>,
        node: Option<&str>,
        after: Option<&ConnCursor>,
        limit: usize,
    ) -> (Vec<ConnectionInfo>, Option<ConnCursor>) {
        let asked: Vec<_> = self
            .each()
            .into_iter()
            .filter(|w| node.is_none_or(|n| n == w.node()))
            .collect();
        let answers =
            futures_util::future::join_all(asked.iter().map(|w| w.connections(uid, after, limit)))
                .await;
        let mut all = Vec::new();
        let mut more = false;
        for a in answers {
            match a {
                Ok((page, next)) => {
                    more |= next.is_some();
                    all.extend(page);
                }
                Err(e) => tracing::warn!(error = %e, "listing on worker failed"),
            }
        }
        merge_page(all, more, limit)
    }

    async fn count(&self, uid: &str) -> usize {
        Devices::connections(self, Some(uid), None, None, usize::MAX)
            .await
            .0
            .len()
    }

    async fn kick_user(&self, uid: &str, reason: &str) -> usize {
        let all = self.each();
        let answers =
            futures_util::future::join_all(all.iter().map(|w| w.kick_user(uid, reason))).await;
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "kick on worker failed");
                    0
                })
            })
            .sum()
    }

    fn replay(&self, uid: &str, entries: Vec<(u64, Bytes)>) {
        // Each worker passes on what it holds a device for; the others drop it.
        for w in self.each().into_iter().filter(|w| w.is_live()) {
            for (useq, msg) in &entries {
                w.deliver(Delivery {
                    msg: msg.clone(),
                    to: vec![(uid.to_owned(), *useq)],
                    generation: None,
                });
            }
        }
    }

    fn enforce_blacklist(&self) -> usize {
        self.local.as_ref().map_or(0, |hub| hub.enforce_blacklist())
    }

    fn local_figures(&self) -> Option<NodeInfo> {
        self.local.as_ref().map(|hub| hub.figures())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let all = self.each();
        let answers = futures_util::future::join_all(all.iter().map(|w| w.stats())).await;
        let mut nodes: Vec<NodeInfo> = answers
            .into_iter()
            .filter_map(|a| {
                a.inspect_err(|e| tracing::warn!(error = %e, "stats failed"))
                    .ok()
            })
            .collect();
        if let Some(registry) = &self.registry {
            // Live nodes without a worker (no RPC to ask): what the registry says, no
            // version, zero figures.
            for n in registry.live_nodes().await? {
                if nodes.iter().all(|known| known.node_id != n.id) {
                    nodes.push(NodeInfo {
                        node_id: n.id,
                        roles: n.roles,
                        listen: n.listen,
                        started_at: n.started_ms,
                        rpc_version: n.rpc_version,
                        ..NodeInfo::default()
                    });
                }
            }
        }
        Ok(nodes)
    }
}

/// Merges per-worker pages (each sorted, each at most `limit`) into one page of at most
/// `limit`, with a next cursor when anything was left over.
fn merge_page(
    mut all: Vec<ConnectionInfo>,
    more: bool,
    limit: usize,
) -> (Vec<ConnectionInfo>, Option<ConnCursor>) {
    all.sort_by(|a, b| (&a.uid, &a.device).cmp(&(&b.uid, &b.device)));
    let cut = all.len() > limit;
    all.truncate(limit);
    let next = (cut || more)
        .then(|| all.last().map(ConnCursor::after))
        .flatten();
    (all, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::token::Platform;

    fn conn(uid: &str, device: &str, node: &str) -> ConnectionInfo {
        ConnectionInfo {
            uid: uid.into(),
            device: device.into(),
            platform: Platform::Web,
            node: node.into(),
            remote: "127.0.0.1:1".into(),
            connected_at: 0,
            unacked: 0,
        }
    }

    fn gateway(id: &str) -> Registration {
        Registration {
            id: id.into(),
            roles: vec!["gateway".into()],
            listen: "127.0.0.1:1".into(),
            rpc: None,
            started_ms: 0,
            rpc_version: crate::rpc::RPC_VERSION,
        }
    }

    /// [`gateway`] in its run started at `started_ms`.
    fn gateway_run(id: &str, started_ms: i64) -> Registration {
        Registration {
            started_ms,
            ..gateway(id)
        }
    }

    /// Whether the hub was asked to catch up since the last look.
    async fn asked(hub: &Hub) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(50), hub.catch_up_wanted())
            .await
            .is_ok()
    }

    /// Node w1's [`Workers`], with its own hub (the worker role).
    fn worker_w1() -> (Arc<Hub>, Workers) {
        let hub = Arc::new(Hub::new(
            16,
            "w1".into(),
            Arc::new(crate::business::blacklist::Blacklist::new()),
        ));
        let workers = Workers::new(
            "w1".into(),
            Some(hub.clone()),
            None,
            LinkKey::derive(b"secret"),
        );
        (hub, workers)
    }

    #[tokio::test]
    async fn a_node_leaving_the_registry_makes_the_local_worker_catch_up() {
        let (hub, workers) = worker_w1();
        workers.follow(&[gateway("gw1"), gateway("gw2")]).await;
        assert!(!asked(&hub).await, "nodes arriving is no reason");
        workers.follow(&[gateway("gw1"), gateway("gw2")]).await;
        assert!(!asked(&hub).await, "nor is nothing changing");
        workers.follow(&[gateway("gw2")]).await;
        assert!(asked(&hub).await, "gw1 left");
    }

    #[tokio::test]
    async fn a_node_that_said_goodbye_leaves_without_a_catch_up() {
        let (hub, workers) = worker_w1();
        workers
            .follow(&[gateway("gw1"), gateway("gw2"), gateway("gw3")])
            .await;
        hub.farewell("gw1", 0);
        // Still registered right after its goodbye: the goodbye is kept.
        workers
            .follow(&[gateway("gw1"), gateway("gw2"), gateway("gw3")])
            .await;
        workers.follow(&[gateway("gw2"), gateway("gw3")]).await;
        assert!(!asked(&hub).await, "gw1 said goodbye");
        // The goodbye is used up: gw1 back under the same id, then gone unannounced.
        workers
            .follow(&[gateway("gw1"), gateway("gw2"), gateway("gw3")])
            .await;
        workers.follow(&[gateway("gw2"), gateway("gw3")]).await;
        assert!(asked(&hub).await, "gw1 left without a goodbye this time");
        // Two leave at once, one of them unannounced.
        hub.farewell("gw2", 0);
        workers.follow(&[]).await;
        assert!(asked(&hub).await, "gw3 left without a goodbye");
        assert!(
            !hub.left_cleanly("gw2"),
            "gw2's goodbye was used up with it"
        );
        // A goodbye belongs to the run that said it: gw2 says goodbye, restarts before
        // anyone sees it leave, and its new run then dies unannounced.
        workers.follow(&[gateway("gw2")]).await;
        hub.farewell("gw2", 0);
        workers.follow(&[gateway_run("gw2", 5)]).await;
        workers.follow(&[]).await;
        assert!(asked(&hub).await, "gw2's new run left without a goodbye");
        // Routing that lost messages asks every worker, this node's included.
        workers.catch_up_everywhere();
        assert!(asked(&hub).await, "routing lost messages");
    }

    #[test]
    fn pages_merge_in_order_with_a_cursor_when_cut() {
        let all = vec![
            conn("b", "1", "n2"),
            conn("a", "2", "n1"),
            conn("a", "1", "n2"),
        ];
        let (page, next) = merge_page(all.clone(), false, 2);
        let ids: Vec<_> = page
            .iter()
            .map(|c| format!("{}/{}", c.uid, c.device))
            .collect();
        assert_eq!(ids, ["a/1", "a/2"]);
        assert_eq!(next.map(|c| c.to_string()).as_deref(), Some("a/2"));
        let (page, next) = merge_page(all, false, 3);
        assert_eq!(page.len(), 3);
        assert_eq!(next, None, "nothing left over");
        let (_, next) = merge_page(vec![conn("a", "1", "n1")], true, 5);
        assert_eq!(
            next.map(|c| c.to_string()).as_deref(),
            Some("a/1"),
            "a worker had more"
        );
    }
}

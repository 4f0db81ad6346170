//! The connection hub: uid → that user's connected devices on this worker, at most one
//! connection per (uid, device), in 64 shards of short `std::sync::Mutex` sections.
//!
//! The hub is this node's [`Worker`]: it queues what it is given on each device's
//! [`Outbox`] and never decides who receives what (that is the business layer's and the
//! dispatcher's). It also keeps what the cluster's catch-up needs: the goodbyes of nodes
//! that left cleanly, and the wake-up of the catch-up pass.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use shared::admin::{ConnCursor, ConnectionInfo, NodeInfo};
use tokio::sync::{Notify, mpsc};

use super::outbox::{Out, Outbox};
use super::{Delivery, Push, Unreachable, Worker};
use crate::business::blacklist::Blacklist;
use crate::business::{Identity, Presence};
use crate::store::Generation;

const SHARDS: usize = 64;

/// Bytes one connection's outbox holds before it counts as too slow, unless the hub is
/// told otherwise (`--max-outbox-bytes`).
const DEFAULT_OUTBOX_BYTES: usize = 8 << 20;

/// One connected device.
#[derive(Debug)]
pub struct Conn {
    /// Unique within this process; tells a connection from its replacement.
    pub id: u64,
    /// Who is connected.
    pub who: Identity,
    /// The peer address.
    pub remote: SocketAddr,
    /// When the connection was opened, unix milliseconds.
    pub connected_at_ms: i64,
    /// Outgoing frames.
    pub outbox: Outbox,
    /// Pushes written and not acked yet (kept by the session, read by listings).
    pub unacked: std::sync::atomic::AtomicU64,
}

impl Conn {
    /// Tells the session where the device stands: `useq` was the inbox head when the
    /// connection's route was written (cluster mode), so pushes are owed after it. Goes
    /// through the outbox rather than the session's arguments: those would stay in
    /// every session's future for its whole life.
    pub fn start_after(&self, useq: u64) {
        self.outbox.enqueue(Out::Start(useq));
    }
}

/// One shard of the hub: uid → that user's connected devices.
type Shard = HashMap<String, Vec<Arc<Conn>>>;

/// Counters of a worker, for the admin API's cluster view (the same events also go
/// to Prometheus).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Pushes not acked yet (written and waiting, or held for reordering), over all
    /// sessions.
    pub unacked: std::sync::atomic::AtomicI64,
    /// Pushes queued since start.
    pub pushes: AtomicU64,
    /// Pushes resent since start.
    pub retransmits: AtomicU64,
}

/// A change of the hub's connections, for the cluster's connection routes.
#[derive(Debug)]
pub enum RouteChange {
    /// Device `device` of `uid` connected here.
    Connected {
        /// The user.
        uid: String,
        /// The device.
        device: String,
        /// Told when the route is written, with the user's inbox head (highest
        /// `useq`) as it was then; `None` when the write failed.
        written: tokio::sync::oneshot::Sender<Option<u64>>,
    },
    /// Device `device` of `uid` left, and no replacement took its place here.
    Disconnected {
        /// The user.
        uid: String,
        /// The device.
        device: String,
    },
}

/// The connections of this worker, by uid.
pub struct Hub {
    /// Counters.
    pub stats: WorkerStats,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    next_id: AtomicU64,
    outbox_capacity: usize,
    /// Bytes of frames one connection's outbox holds before it counts as too slow.
    outbox_bytes: usize,
    node_id: String,
    blacklist: Arc<Blacklist>,
    /// Where connection changes go in cluster mode. Unbounded, but at most two changes
    /// per connection are ever in it, and connections are bounded by the rate limits
    /// and the open-files limit.
    routes: OnceLock<mpsc::UnboundedSender<RouteChange>>,
    /// Connections whose route waits to be written (see [`Hub::routes_backlogged`]).
    routes_waiting: AtomicUsize,
    /// Wakes the cluster's catch-up pass (see [`Hub::catch_up_soon`]).
    catch_up: Notify,
    /// Nodes that said goodbye: the start time of the run that said it, and when (see
    /// [`Hub::farewell`]).
    farewells: Mutex<HashMap<String, (i64, Instant)>>,
    /// The store generation this worker's devices are in (see
    /// [`Hub::observe_generation`]); `None` before the first.
    generation: Mutex<Option<Generation>>,
}

/// How a generation compares with the one a worker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationSeen {
    /// The same (or the first one seen).
    Same,
    /// An older one: what carries it belongs to state the store no longer has.
    Older,
    /// A newer one: the store lost state; every device was told.
    Newer,
}

/// Routes waiting to be written past which new upgrades are refused at once (see
/// [`Hub::routes_backlogged`]): one round of the cluster's route writer, which a
/// loaded node writes in well under the two seconds an upgrade waits.
const ROUTES_WAITING_MAX: usize = 512;

/// How long a goodbye excuses its node's departure from the registry. The node
/// deregisters right after it; this only bounds what a departure never seen leaves
/// behind.
const FAREWELL_KEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a worker is asked to catch up (the `cause` label of the catch-up counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUpCause {
    /// An incoming RPC connection ended.
    LinkEnded,
    /// A node left the registry.
    NodeLeft,
    /// A sender dropped deliveries for this worker, or a push call failed.
    SenderLost,
}

impl CatchUpCause {
    fn label(self) -> &'static str {
        match self {
            Self::LinkEnded => "link_ended",
            Self::NodeLeft => "node_left",
            Self::SenderLost => "sender_lost",
        }
    }
}

impl Hub {
    /// An empty hub of node `node_id`, whose connections queue at most
    /// `outbox_capacity` frames, and which enforces `blacklist`.
    pub fn new(outbox_capacity: usize, node_id: String, blacklist: Arc<Blacklist>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            outbox_capacity,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            node_id,
            blacklist,
            stats: WorkerStats::default(),
            routes: OnceLock::new(),
            routes_waiting: AtomicUsize::new(0),
            catch_up: Notify::new(),
            farewells: Mutex::new(HashMap::new()),
            generation: Mutex::new(None),
        }
    }

    /// Compares `g`, the generation of something about to reach this worker's devices,
    /// with the one they are in. A newer one means the store lost state that devices
    /// may have, so its `useq`s are being given again: every connection is closed with
    /// `kick` `state_lost` before anything of the new generation reaches it, and its
    /// device syncs again and sees the new generation in the answer.
    pub fn observe_generation(&self, g: &Generation) -> GenerationSeen {
        let mut known = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        match known.as_ref() {
            Some(k) if k == g => GenerationSeen::Same,
            Some(k) if k.newer_than(g) => GenerationSeen::Older,
            Some(_) => {
                *known = Some(g.clone());
                drop(known);
                let mut kicked = 0;
                for c in self.all() {
                    c.outbox.close("state_lost");
                    kicked += 1;
                }
                metrics::counter!("imd_state_lost_kicks_total").increment(kicked);
                tracing::error!(
                    generation = g.as_str(),
                    kicked,
                    "the store lost state: every device syncs again"
                );
                GenerationSeen::Newer
            }
            None => {
                *known = Some(g.clone());
                GenerationSeen::Same
            }
        }
    }

    /// From now on, reports every connection change (cluster mode publishes them as
    /// connection routes). Only the first call gets a receiver.
    pub fn watch_routes(&self) -> Option<mpsc::UnboundedReceiver<RouteChange>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes.set(tx).ok().map(|()| rx)
    }

    /// Whether so many connections wait for their routes that a new one would not be
    /// written before its upgrade gives up (a reconnection storm): the upgrade is then
    /// better refused at once, before it costs anything, and retried by its client.
    pub fn routes_backlogged(&self) -> bool {
        self.routes_waiting.load(Ordering::Relaxed) >= ROUTES_WAITING_MAX
    }

    /// The route writer took a connection's route change off the queue.
    pub fn route_taken(&self) {
        self.routes_waiting.fetch_sub(1, Ordering::Relaxed);
    }

    fn route_change(&self, change: RouteChange) {
        if let Some(tx) = self.routes.get() {
            let _ = tx.send(change);
        }
    }

    /// Pushes to this worker may have been lost on the way: a node that sent them died
    /// or its link broke, or it dropped some. Wakes whoever waits in
    /// [`Hub::catch_up_wanted`] (cluster mode), now or, if nobody waits yet, at its next
    /// wait.
    pub fn catch_up_soon(&self, cause: CatchUpCause) {
        metrics::counter!("imd_catch_up_requests_total", "cause" => cause.label()).increment(1);
        self.catch_up.notify_one();
    }

    /// What would have asked for a catch-up did not need to: the node it came from
    /// said goodbye. Counted only.
    pub fn catch_up_skipped(&self, cause: CatchUpCause) {
        metrics::counter!("imd_catch_up_skipped_total", "cause" => cause.label()).increment(1);
    }

    /// Node `node`, in its run started at `started_ms`, said goodbye: it is leaving,
    /// and it has sent this worker every push it owed. Its departure from the registry
    /// then needs no catch-up.
    pub fn farewell(&self, node: &str, started_ms: i64) {
        let now = Instant::now();
        let mut f = self.farewells.lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|_, (_, at)| now.duration_since(*at) < FAREWELL_KEEP);
        f.insert(node.to_owned(), (started_ms, now));
    }

    /// Whether `node` said goodbye lately; forgets that it did (one goodbye excuses one
    /// departure).
    pub fn left_cleanly(&self, node: &str) -> bool {
        let mut f = self.farewells.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(node)
            .is_some_and(|(_, at)| at.elapsed() < FAREWELL_KEEP)
    }

    /// Forgets the goodbyes of nodes registered now by a later run (a restart under
    /// the same id, perhaps between two looks at the registry): that run's departure
    /// is a new one. `live` is (node id, run start) of each registered node.
    pub fn forget_farewells_of<'a>(&self, live: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut f = self.farewells.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_empty() {
            return;
        }
        for (id, started_ms) in live {
            if f.get(id).is_some_and(|(said, _)| *said != started_ms) {
                f.remove(id);
            }
        }
    }

    /// Waits for [`Hub::catch_up_soon`].
    pub async fn catch_up_wanted(&self) {
        self.catch_up.notified().await
    }

    /// Every uid with a device connected here, unordered.
    pub fn uids(&self) -> Vec<String> {
        self.shards()
            .flat_map(|s| s.keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Tells each device of `uid` that its inbox reached `head`: a session that pushed
    /// less than that reads the rest from the inbox unless the pushes come first.
    pub fn offer_inbox_head(&self, uid: &str, head: u64) {
        for c in self.devices(uid) {
            c.outbox.enqueue(Out::Head(head));
        }
    }

    /// This worker's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Disconnects device `device` of `uid` with a `kick` of `reason`; how many (0 or 1).
    pub fn kick_device(&self, uid: &str, device: &str, reason: &str) -> usize {
        let conns = self.devices(uid);
        let mut kicked = 0;
        for c in conns.iter().filter(|c| c.who.device == device) {
            c.outbox.close(reason);
            kicked += 1;
        }
        kicked
    }

    /// Bounds each connection's outbox by bytes too (default 8 MiB).
    pub fn with_outbox_bytes(mut self, bytes: usize) -> Self {
        self.outbox_bytes = bytes;
        self
    }

    /// Frames one connection may queue.
    pub fn outbox_capacity(&self) -> usize {
        self.outbox_capacity
    }

    /// Each shard, locked in turn.
    fn shards(&self) -> impl Iterator<Item = std::sync::MutexGuard<'_, Shard>> {
        // Every critical section leaves its shard consistent, even if it panicked.
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every connection, unordered.
    fn all(&self) -> Vec<Arc<Conn>> {
        self.shards()
            .flat_map(|s| s.values().flatten().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn info(&self, c: &Conn) -> ConnectionInfo {
        ConnectionInfo {
            uid: c.who.uid.clone(),
            device: c.who.device.clone(),
            platform: c.who.platform,
            node: self.node_id.clone(),
            remote: c.remote.to_string(),
            connected_at: c.connected_at_ms,
            // Queued pushes are not acked either (a replay paces on this).
            unacked: c.unacked.load(Ordering::Relaxed) + c.outbox.queued_pushes() as u64,
        }
    }

    fn shard(&self, uid: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(uid) as usize % SHARDS;
        // Every critical section below leaves the map consistent, even if it panicked.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection. A connection of the same (uid, device) is replaced:
    /// it is told to close with `kick` reason `replaced`.
    pub fn register(&self, who: Identity, remote: SocketAddr, connected_at_ms: i64) -> Arc<Conn> {
        self.register_routed(who, remote, connected_at_ms).0
    }

    /// [`Hub::register`], and in cluster mode a receiver told when the connection's
    /// route is written (with the user's inbox head then): until then other nodes do
    /// not push to it.
    pub fn register_routed(
        &self,
        who: Identity,
        remote: SocketAddr,
        connected_at_ms: i64,
    ) -> (
        Arc<Conn>,
        Option<tokio::sync::oneshot::Receiver<Option<u64>>>,
    ) {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            who,
            remote,
            connected_at_ms,
            outbox: Outbox::new(self.outbox_capacity, self.outbox_bytes),
            unacked: std::sync::atomic::AtomicU64::new(0),
        });
        let replaced = {
            let mut shard = self.shard(&conn.who.uid);
            let devices = shard.entry(conn.who.uid.clone()).or_default();
            let old = devices
                .iter()
                .position(|c| c.who.device == conn.who.device)
                .map(|i| devices.swap_remove(i));
            devices.push(conn.clone());
            old
        };
        match replaced {
            Some(old) => old.outbox.close("replaced"),
            None => metrics::gauge!("imd_connections").increment(1.0),
        }
        let written = self.routes.get().map(|tx| {
            self.routes_waiting.fetch_add(1, Ordering::Relaxed);
            let (written, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(RouteChange::Connected {
                uid: conn.who.uid.clone(),
                device: conn.who.device.clone(),
                written,
            });
            rx
        });
        (conn, written)
    }

    /// Removes `conn`, unless a replacement already took its place.
    pub fn unregister(&self, conn: &Conn) {
        let mut shard = self.shard(&conn.who.uid);
        if let Some(devices) = shard.get_mut(&conn.who.uid) {
            if let Some(i) = devices.iter().position(|c| c.id == conn.id) {
                devices.swap_remove(i);
                metrics::gauge!("imd_connections").decrement(1.0);
                self.route_change(RouteChange::Disconnected {
                    uid: conn.who.uid.clone(),
                    device: conn.who.device.clone(),
                });
            }
            if devices.is_empty() {
                shard.remove(&conn.who.uid);
            }
        }
    }

    /// The connections of `uid`.
    pub fn devices(&self, uid: &str) -> Vec<Arc<Conn>> {
        self.shard(uid).get(uid).cloned().unwrap_or_default()
    }

    /// Pushes queued on outboxes and not written yet, over all connections. Together
    /// with [`WorkerStats::unacked`] it is every push not acked yet; a replay paces on
    /// the sum (a push counted only once written would look acked while queued).
    pub fn queued_pushes(&self) -> u64 {
        self.all()
            .iter()
            .map(|c| c.outbox.queued_pushes() as u64)
            .sum()
    }

    /// Whether any device of `uid` is connected here.
    pub fn is_online(&self, uid: &str) -> bool {
        self.shard(uid).get(uid).is_some_and(|d| !d.is_empty())
    }

    /// How many connections the hub holds.
    pub fn len(&self) -> usize {
        self.shards()
            .map(|s| s.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Whether the hub holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The hub's own calls, which [`Worker`] wraps (infallible and synchronous here).
impl Hub {
    /// Queues `pushes` for every online device of each recipient, in the given order.
    /// Never blocks: a device whose queue is full is disconnected as too slow, and the
    /// message waits in its inbox.
    pub fn push(&self, pushes: impl IntoIterator<Item = Push>) {
        let now = Instant::now();
        for p in pushes {
            let conns = self.devices(&p.uid);
            if conns.is_empty() {
                continue;
            }
            // One frame per user, shared by all of the user's devices.
            let frame = Utf8Bytes::from(crate::wire::push_frame(p.useq, &p.msg));
            for c in conns {
                if c.outbox.enqueue(Out::Push {
                    useq: p.useq,
                    frame: frame.clone(),
                    queued: now,
                }) {
                    metrics::counter!("imd_pushes_total").increment(1);
                }
            }
        }
    }

    /// Queues `frame` for every online device of each of `uids`.
    pub fn notify(&self, uids: &[String], frame: &Utf8Bytes) {
        for uid in uids {
            for c in self.devices(uid) {
                c.outbox.enqueue(Out::Frame(frame.clone()));
            }
        }
    }

    /// Disconnects every device of `uid` with a `kick` of `reason`; returns how many.
    pub fn kick_user(&self, uid: &str, reason: &str) -> usize {
        let conns = self.devices(uid);
        for c in &conns {
            c.outbox.close(reason);
        }
        conns.len()
    }

    /// Disconnects, with `kick` `blacklisted`, every connection whose uid or ip the
    /// worker's blacklist cache now blocks; returns how many.
    pub fn enforce_blacklist(&self) -> usize {
        let now = shared::time::now_ms();
        let mut kicked = 0;
        for c in self.all() {
            if self.blacklist.uid_blocked(&c.who.uid, now)
                || self.blacklist.ip_blocked(c.remote.ip(), now)
            {
                c.outbox.close("blacklisted");
                kicked += 1;
            }
        }
        kicked
    }

    /// Connections of `uid`, or a page of all connections ordered by (uid, device)
    /// after the cursor `after`. Returns the page and the next cursor.
    pub fn connections(
        &self,
        uid: Option<&str>,
        after: Option<&ConnCursor>,
        limit: usize,
    ) -> (Vec<ConnectionInfo>, Option<ConnCursor>) {
        let mut conns = match uid {
            Some(uid) => self.devices(uid),
            None => self.all(),
        };
        conns.sort_by(|a, b| (&a.who.uid, &a.who.device).cmp(&(&b.who.uid, &b.who.device)));
        let start = after.map_or(0, |cursor| {
            conns.partition_point(|c| cursor.covers(&c.who.uid, &c.who.device))
        });
        let page: Vec<_> = conns
            .iter()
            .skip(start)
            .take(limit)
            .map(|c| self.info(c))
            .collect();
        let next = (start + page.len() < conns.len())
            .then(|| page.last().map(ConnCursor::after))
            .flatten();
        (page, next)
    }

    /// This worker's part of its node's figures: connections, pushes not acked yet,
    /// pushes and retransmits since start (the rest of [`NodeInfo`] is left empty).
    pub fn figures(&self) -> NodeInfo {
        NodeInfo {
            node_id: self.node_id.clone(),
            connections: self.len() as u64,
            // Queued pushes count too: they are not acked either.
            unacked: self.stats.unacked.load(Ordering::Relaxed) + self.queued_pushes() as i64,
            pushes: self.stats.pushes.load(Ordering::Relaxed),
            retransmits: self.stats.retransmits.load(Ordering::Relaxed),
            ..NodeInfo::default()
        }
    }
}

#[async_trait::async_trait]
impl Worker for Hub {
    fn node(&self) -> &str {
        &self.node_id
    }

    fn is_live(&self) -> bool {
        true
    }

    fn deliver(&self, d: Delivery) {
        if let Some(g) = &d.generation {
            match self.observe_generation(&Generation(g.as_str().into())) {
                GenerationSeen::Same => {}
                // Devices were closed; they read the inbox as it is now.
                GenerationSeen::Newer => return,
                GenerationSeen::Older => {
                    metrics::counter!("imd_stale_deliveries_total").increment(1);
                    return;
                }
            }
        }
        self.push(d.into_pushes());
    }

    fn notify(&self, n: super::Notice) {
        Hub::notify(self, &n.uids, &Utf8Bytes::from(n.frame));
    }

    fn catch_up(&self) {
        self.catch_up_soon(CatchUpCause::SenderLost);
    }

    async fn kick_user(&self, uid: &str, reason: &str) -> Result<usize, Unreachable> {
        Ok(Hub::kick_user(self, uid, reason))
    }

    async fn kick_device(
        &self,
        uid: &str,
        device: &str,
        reason: &str,
    ) -> Result<usize, Unreachable> {
        Ok(Hub::kick_device(self, uid, device, reason))
    }

    async fn connections(
        &self,
        uid: Option<&str>,
        after: Option<&ConnCursor>,
        limit: usize,
    ) -> Result<super::ConnPage, Unreachable> {
        Ok(Hub::connections(self, uid, after, limit))
    }

    async fn stats(&self) -> Result<NodeInfo, Unreachable> {
        Ok(self.figures())
    }

    async fn goodbye(&self, node: &str, started_ms: i64) -> bool {
        self.farewell(node, started_ms);
        true
    }
}

#[async_trait::async_trait]
impl Presence for Hub {
    async fn online(&self, uid: &str) -> bool {
        self.is_online(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::token::Platform;

    fn who(uid: &str, device: &str) -> Identity {
        Identity {
            uid: uid.into(),
            device: device.into(),
            platform: Platform::Web,
            roles: vec![],
            ip: None,
        }
    }

    fn hub() -> Hub {
        Hub::new(16, "n1".into(), Arc::new(Blacklist::new()))
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn frames(c: &Conn) -> (Vec<u64>, Option<String>) {
        let (q, closing) = c.outbox.take();
        let useqs = q
            .into_iter()
            .filter_map(|o| match o {
                Out::Push { useq, .. } => Some(useq),
                Out::Frame(_) | Out::Start(_) | Out::Head(_) => None,
            })
            .collect();
        (useqs, closing)
    }

    #[test]
    fn an_inbox_head_reaches_every_device_of_its_user() {
        let hub = hub();
        let a1 = hub.register(who("a", "1"), addr(), 0);
        let a2 = hub.register(who("a", "2"), addr(), 0);
        let b = hub.register(who("b", "1"), addr(), 0);
        let mut uids = hub.uids();
        uids.sort();
        assert_eq!(uids, ["a", "b"]);
        hub.offer_inbox_head("a", 7);
        hub.offer_inbox_head("nobody", 3);
        for c in [&a1, &a2] {
            let (q, _) = c.outbox.take();
            assert!(matches!(q.as_slices().0, [Out::Head(7)]), "{q:?}");
        }
        assert!(b.outbox.take().0.is_empty());
    }

    #[test]
    fn same_device_replaces_other_devices_coexist() {
        let hub = hub();
        let a1 = hub.register(who("a", "phone"), addr(), 0);
        let a2 = hub.register(who("a", "laptop"), addr(), 0);
        let a1b = hub.register(who("a", "phone"), addr(), 0);
        assert_eq!(hub.len(), 2);
        assert_eq!(frames(&a1).1.as_deref(), Some("replaced"));
        assert_eq!(frames(&a2).1, None);
        // The replaced session's late unregister leaves its replacement alone.
        hub.unregister(&a1);
        assert_eq!(hub.len(), 2);
        hub.unregister(&a1b);
        hub.unregister(&a2);
        assert!(hub.is_empty());
    }

    #[test]
    fn pushes_reach_every_device_in_order() {
        let hub = hub();
        let a1 = hub.register(who("a", "1"), addr(), 0);
        let a2 = hub.register(who("a", "2"), addr(), 0);
        let b = hub.register(who("b", "1"), addr(), 0);
        let msg = bytes::Bytes::from_static(b"{}");
        hub.push(vec![
            Push {
                uid: "a".into(),
                useq: 1,
                msg: msg.clone(),
            },
            Push {
                uid: "b".into(),
                useq: 9,
                msg: msg.clone(),
            },
            Push {
                uid: "a".into(),
                useq: 2,
                msg: msg.clone(),
            },
            Push {
                uid: "nobody".into(),
                useq: 1,
                msg,
            },
        ]);
        assert_eq!(frames(&a1).0, [1, 2]);
        assert_eq!(frames(&a2).0, [1, 2]);
        assert_eq!(frames(&b).0, [9]);
    }

    #[test]
    fn a_notice_reaches_every_device_of_its_users_and_nobody_else() {
        let hub = hub();
        let a1 = hub.register(who("a", "1"), addr(), 0);
        let a2 = hub.register(who("a", "2"), addr(), 0);
        let b = hub.register(who("b", "1"), addr(), 0);
        let c = hub.register(who("c", "1"), addr(), 0);
        Worker::notify(
            &hub,
            super::super::Notice {
                uids: vec!["a".into(), "c".into(), "nobody".into()],
                frame: r#"{"type":"typing"}"#.into(),
            },
        );
        let texts = |conn: &Conn| -> Vec<String> {
            conn.outbox
                .take()
                .0
                .into_iter()
                .filter_map(|o| match o {
                    Out::Frame(f) => Some(f.as_str().to_owned()),
                    _ => None,
                })
                .collect()
        };
        for conn in [&a1, &a2, &c] {
            assert_eq!(texts(conn), [r#"{"type":"typing"}"#]);
        }
        assert!(texts(&b).is_empty(), "b was not named");
    }

    /// A replay paces on "queued + unacked": a push taken by the session must stay
    /// counted until the session counts it as its own, or the replay sees zero in
    /// between and sends its next batch into a device that has not acked.
    #[test]
    fn taken_pushes_stay_counted_until_the_session_settles_them() {
        let hub = hub();
        let a = hub.register(who("a", "1"), addr(), 0);
        let msg = bytes::Bytes::from_static(b"{}");
        hub.push((1..=3).map(|useq| Push {
            uid: "a".into(),
            useq,
            msg: msg.clone(),
        }));
        assert_eq!(a.outbox.queued_pushes(), 3);
        let (taken, _) = a.outbox.take();
        assert_eq!(taken.len(), 3);
        assert_eq!(
            a.outbox.queued_pushes(),
            3,
            "still counted while in transit"
        );
        a.outbox.settle(3);
        assert_eq!(a.outbox.queued_pushes(), 0);
    }

    #[test]
    fn a_full_outbox_closes_the_connection_as_slow() {
        let hub = hub();
        let a = hub.register(who("a", "1"), addr(), 0);
        let msg = bytes::Bytes::from_static(b"{}");
        let pushes = (1..=20).map(|u| Push {
            uid: "a".into(),
            useq: u,
            msg: msg.clone(),
        });
        hub.push(pushes);
        let (useqs, closing) = frames(&a);
        assert!(useqs.is_empty(), "a slow connection's queue is dropped");
        assert_eq!(closing.as_deref(), Some("slow"));
        assert!(!a.outbox.enqueue_frame("x".into()));
    }

    #[test]
    fn kick_user_closes_every_device() {
        let hub = hub();
        let a1 = hub.register(who("a", "1"), addr(), 0);
        let a2 = hub.register(who("a", "2"), addr(), 0);
        assert_eq!(hub.kick_user("a", "admin"), 2);
        assert_eq!(hub.kick_user("zed", "admin"), 0);
        assert_eq!(frames(&a1).1.as_deref(), Some("admin"));
        assert_eq!(frames(&a2).1.as_deref(), Some("admin"));
    }

    #[test]
    fn a_newer_generation_closes_every_connection_and_an_older_one_is_dropped() {
        let hub = hub();
        let a = hub.register(who("a", "1"), addr(), 0);
        let b = hub.register(who("b", "1"), addr(), 0);
        let old = Generation("100-aa".into());
        let new = Generation("200-bb".into());
        assert_eq!(
            hub.observe_generation(&old),
            GenerationSeen::Same,
            "the first"
        );
        assert_eq!(hub.observe_generation(&old), GenerationSeen::Same);
        let push = |g: &Generation| Delivery {
            msg: bytes::Bytes::from_static(b"{}"),
            to: vec![("a".into(), 7)],
            generation: Some(g.as_str().to_owned()),
        };
        Worker::deliver(&hub, push(&old));
        assert_eq!(a.outbox.queued_pushes(), 1);
        // A delivery of the new generation closes everyone before any of it is pushed.
        Worker::deliver(&hub, push(&new));
        assert_eq!(a.outbox.queued_pushes(), 1);
        assert_eq!(frames(&a).1.as_deref(), Some("state_lost"));
        assert_eq!(frames(&b).1.as_deref(), Some("state_lost"));
        // A late delivery of the old one goes nowhere, even to a new connection.
        let a2 = hub.register(who("a", "2"), addr(), 0);
        Worker::deliver(&hub, push(&old));
        assert_eq!(a2.outbox.queued_pushes(), 0);
        assert_eq!(hub.observe_generation(&old), GenerationSeen::Older);
        Worker::deliver(&hub, push(&new));
        assert_eq!(a2.outbox.queued_pushes(), 1);
    }

    #[test]
    fn listing_pages_in_uid_device_order() {
        let hub = hub();
        for (uid, dev) in [("b", "1"), ("a", "2"), ("a", "1"), ("c", "1")] {
            hub.register(who(uid, dev), addr(), 0);
        }
        let (page, next) = hub.connections(None, None, 2);
        let ids: Vec<_> = page
            .iter()
            .map(|c| format!("{}/{}", c.uid, c.device))
            .collect();
        assert_eq!(ids, ["a/1", "a/2"]);
        assert_eq!(
            next.as_ref().map(ToString::to_string).as_deref(),
            Some("a/2")
        );
        let (page, next) = hub.connections(None, next.as_ref(), 2);
        let ids: Vec<_> = page
            .iter()
            .map(|c| format!("{}/{}", c.uid, c.device))
            .collect();
        assert_eq!(ids, ["b/1", "c/1"]);
        assert_eq!(next, None);
        let (page, _) = hub.connections(Some("a"), None, 100);
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].node, "n1");
        assert!(hub.is_online("a") && !hub.is_online("z"));
    }

    #[test]
    fn enforcing_the_blacklist_kicks_matching_connections() {
        let bl = Arc::new(Blacklist::new());
        let hub = Hub::new(16, "n1".into(), bl.clone());
        let a = hub.register(who("a", "1"), "10.1.2.3:5".parse().unwrap(), 0);
        let b = hub.register(who("b", "1"), "127.0.0.1:5".parse().unwrap(), 0);
        let c = hub.register(who("c", "1"), "127.0.0.1:6".parse().unwrap(), 0);
        assert_eq!(hub.enforce_blacklist(), 0);
        let entry = |kind, value: &str| shared::admin::BlacklistEntry {
            kind,
            value: value.into(),
            reason: None,
            expires_at: None,
        };
        bl.upsert(&entry(shared::admin::BlacklistKind::Ip, "10.1.0.0/16"));
        bl.upsert(&entry(shared::admin::BlacklistKind::Uid, "b"));
        assert_eq!(hub.enforce_blacklist(), 2);
        assert_eq!(frames(&a).1.as_deref(), Some("blacklisted"));
        assert_eq!(frames(&b).1.as_deref(), Some("blacklisted"));
        assert_eq!(frames(&c).1, None);
    }
}

//! The worker's service over the network: tarpc on TCP, bincode frames.
//!
//! A node calls the workers of other nodes through a [`RemoteWorker`], which is a
//! [`Worker`] like the node's own hub; [`WorkerServer`] serves a hub to the others.
//! Deliveries and notices are queued and sent in batches ([`Item`]s), one call per
//! batch and one batch in flight per worker, so that they arrive in the order they were
//! queued; the worker executes the requests of one connection one after another (they
//! only enqueue, never wait), which keeps that order on its side too.
//!
//! Every connection gets `TCP_NODELAY`: a small push batch must not wait for the
//! peer's delayed ack, and starts with the handshake of [`super::auth`]: only nodes
//! that hold the cluster's `--token-secret` get to call.
//!
//! Pushes can still be lost: a node dies with deliveries queued, a link breaks, a
//! queue overflows, a batch misses its deadline. The messages are in the inboxes
//! already; what the worker needs is to hear that it should look. It does when an
//! incoming RPC connection ends, and when the sending node calls
//! [`WorkerRpc::catch_up`] after it dropped or failed deliveries; then every session
//! compares what it pushed with its user's inbox (see `cluster::catch_up`). A node
//! that stops cleanly sends [`WorkerRpc::goodbye`] behind its last deliveries instead,
//! and the end of its connection costs the worker nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use shared::admin::{ConnCursor, ConnectionInfo, NodeInfo};
use tarpc::client::RpcError;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tarpc::{context, serde_transport};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::auth::{
    HandshakeErrorKind, LinkKey, client_handshake, peer_rpc_version, server_handshake,
};
use crate::worker::{CatchUpCause, ConnPage, Delivery, Hub, Notice, Unreachable, Worker};

/// Largest RPC frame. A batch is at most [`BATCH_MAX`] deliveries of messages of at
/// most the configured frame size; larger frames would show up as a bare disconnect.
const MAX_FRAME: usize = 256 * 1024 * 1024;
/// Most deliveries in one `push` call.
const BATCH_MAX: usize = 256;
/// Deliveries queued for one worker before new ones are dropped (they wait in inboxes).
const QUEUE: usize = 16 * 1024;
/// Deadline of a push batch.
const PUSH_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of the other calls.
const CALL_DEADLINE: Duration = Duration::from_secs(3);
/// How long connecting to a worker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One item of a `push` batch, in the order the sender queued it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Item {
    /// See [`Worker::deliver`].
    Deliver(Delivery),
    /// See [`Worker::notify`].
    Notify(Notice),
}

/// What one node may ask of another node's worker.
#[tarpc::service]
pub trait WorkerRpc {
    /// Queues `items` (deliveries and notices) for the online devices of their
    /// recipients, in order.
    async fn push(items: Vec<Item>);
    /// Disconnects every device of `uid` with `kick` `reason`; how many.
    async fn kick_user(uid: String, reason: String) -> usize;
    /// Disconnects device `device` of `uid` with `kick` `reason`; how many (0 or 1).
    async fn kick_device(uid: String, device: String, reason: String) -> usize;
    /// A page of this worker's connections (see [`Worker::connections`]).
    async fn connections(
        uid: Option<String>,
        after: Option<ConnCursor>,
        limit: usize,
    ) -> (Vec<ConnectionInfo>, Option<ConnCursor>);
    /// This node's figures, for the cluster view.
    async fn stats() -> NodeInfo;
    /// Some deliveries the caller queued for this worker were dropped or failed: the
    /// worker's sessions look in their inboxes for what they missed.
    async fn catch_up();
    /// Node `node` (the caller), in its run started at `started_ms`, is leaving, and
    /// every delivery it queued for this worker has been pushed: neither the end of
    /// this connection nor that run's departure from the registry needs a catch-up.
    async fn goodbye(node: String, started_ms: i64);
}

/// Serves [`WorkerRpc`] from a node's hub.
#[derive(Clone)]
pub struct WorkerServer {
    hub: Arc<Hub>,
    stats: Arc<dyn Fn() -> NodeInfo + Send + Sync>,
    key: LinkKey,
    /// Whether the peer of this connection said goodbye (one flag per connection).
    farewell: Arc<AtomicBool>,
}

impl WorkerServer {
    /// Serves `hub` to the nodes that prove `key`; `stats` describes the node.
    pub fn new(
        hub: Arc<Hub>,
        stats: Arc<dyn Fn() -> NodeInfo + Send + Sync>,
        key: LinkKey,
    ) -> Self {
        Self {
            hub,
            stats,
            key,
            farewell: Arc::default(),
        }
    }

    /// Accepts RPC connections on `listener` until `stop` is cancelled.
    pub async fn run(self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "rpc accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let _ = tcp.set_nodelay(true);
            tracing::debug!(%peer, "rpc connection");
            let server = Self {
                farewell: Arc::default(),
                ..self.clone()
            };
            let farewell = server.farewell.clone();
            let hub = self.hub.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tcp = tcp;
                if let Err(e) = server_handshake(&mut tcp, &server.key).await {
                    metrics::counter!("imd_rpc_handshake_failures_total").increment(1);
                    let theirs = match e.kind() {
                        HandshakeErrorKind::WrongMagic { got } => peer_rpc_version(got),
                        _ => None,
                    };
                    match theirs {
                        Some(theirs) => tracing::error!(
                            %peer,
                            ours = super::rpc_version(),
                            theirs,
                            "rpc version mismatch: link refused (every node of a cluster \
                             must run the same rpc version)"
                        ),
                        None => tracing::warn!(%peer, error = %e, "rpc connection refused"),
                    }
                    return;
                }
                let transport = serde_transport::new(framed(tcp), Bincode::default());
                // One request after another: each only enqueues, and order matters.
                let requests = BaseChannel::with_defaults(transport)
                    .execute(server.serve())
                    .for_each(|handle| handle);
                tokio::select! {
                    _ = requests => {
                        // The peer left or its link broke, perhaps with pushes for us
                        // still queued on its side, unless it said goodbye first.
                        tracing::debug!(%peer, "rpc connection ended");
                        if farewell.load(Ordering::Relaxed) {
                            hub.catch_up_skipped(CatchUpCause::LinkEnded);
                        } else {
                            hub.catch_up_soon(CatchUpCause::LinkEnded);
                        }
                    }
                    _ = stop.cancelled() => {}
                }
            });
        }
    }
}

impl WorkerRpc for WorkerServer {
    async fn push(self, _: context::Context, items: Vec<Item>) {
        for item in items {
            match item {
                Item::Deliver(d) => self.hub.push(d.into_pushes()),
                Item::Notify(n) => self.hub.notify(&n.uids, &Utf8Bytes::from(n.frame)),
            }
        }
    }

    async fn kick_user(self, _: context::Context, uid: String, reason: String) -> usize {
        self.hub.kick_user(&uid, &reason)
    }

    async fn kick_device(
        self,
        _: context::Context,
        uid: String,
        device: String,
        reason: String,
    ) -> usize {
        self.hub.kick_device(&uid, &device, &reason)
    }

    async fn connections(
        self,
        _: context::Context,
        uid: Option<String>,
        after: Option<ConnCursor>,
        limit: usize,
    ) -> (Vec<ConnectionInfo>, Option<ConnCursor>) {
        self.hub
            .connections(uid.as_deref(), after.as_ref(), limit.min(1000))
    }

    async fn stats(self, _: context::Context) -> NodeInfo {
        (self.stats)()
    }

    async fn catch_up(self, _: context::Context) {
        self.hub.catch_up_soon(CatchUpCause::SenderLost);
    }

    async fn goodbye(self, _: context::Context, node: String, started_ms: i64) {
        tracing::info!(node, "goodbye: the node is leaving with nothing owed here");
        self.farewell.store(true, Ordering::Relaxed);
        self.hub.farewell(&node, started_ms);
    }
}

fn framed(tcp: TcpStream) -> tokio_util::codec::Framed<TcpStream, LengthDelimitedCodec> {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_framed(tcp)
}

fn deadline(d: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + d;
    ctx
}

/// A connection to another node's worker.
pub struct RemoteWorker {
    node: String,
    addr: SocketAddr,
    client: WorkerRpcClient,
    queue: mpsc::Sender<Outgoing>,
    broken: Arc<AtomicBool>,
    /// Deliveries were dropped or failed since the worker last heard of it.
    owed: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl RemoteWorker {
    /// Connects to the worker of node `node` at `addr`, proves `key` to it (and checks
    /// that it holds the same), and starts the delivery task.
    ///
    /// While the token secret is rotated, a peer not yet restarted refuses the key of
    /// the new secret: the keys of the earlier secrets are then tried in turn, each on
    /// a fresh connection (the peer closes after a failed proof).
    pub async fn connect(node: &str, addr: SocketAddr, key: &LinkKey) -> std::io::Result<Self> {
        let mut dial = key.for_dialling().peekable();
        let tcp = loop {
            let key = dial.next().expect("a link key has at least one key");
            let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            match client_handshake(&mut tcp, &key).await {
                Ok(()) => break tcp,
                Err(e)
                    if dial.peek().is_some()
                        && matches!(
                            e.kind(),
                            HandshakeErrorKind::Rejected | HandshakeErrorKind::BadProof
                        ) =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e));
                }
            }
        };
        let transport = serde_transport::new(framed(tcp), Bincode::default());
        let tarpc::client::NewClient { client, dispatch } =
            WorkerRpcClient::new(tarpc::client::Config::default(), transport);
        let broken = Arc::new(AtomicBool::new(false));
        // The dispatch ends when the connection does: a worker killed with `kill -9`
        // counts as gone at once, without waiting for a call to fail.
        let gone = broken.clone();
        let peer = node.to_owned();
        tokio::spawn(async move {
            if let Err(e) = dispatch.await {
                tracing::debug!(node = peer, error = %e, "rpc connection ended");
            }
            gone.store(true, Ordering::Relaxed);
        });
        let (queue, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let owed = Arc::new(AtomicBool::new(false));
        tokio::spawn(deliver_loop(
            Link {
                node: node.to_owned(),
                client: client.clone(),
                broken: broken.clone(),
                owed: owed.clone(),
            },
            rx,
            stop.clone(),
        ));
        Ok(Self {
            node: node.to_owned(),
            addr,
            client,
            queue,
            broken,
            owed,
            stop,
        })
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues `item` without waiting. When the queue is full the item is dropped: a
    /// delivery's message is already in every inbox, and the worker is told to catch
    /// up after the next batch.
    fn queue(&self, item: Item) {
        if self.queue.try_send(Outgoing::Item(item)).is_err() {
            self.owed.store(true, Ordering::Relaxed);
            metrics::counter!("imd_rpc_deliveries_dropped_total").increment(1);
        }
    }

    /// Notes a failed call (a broken link makes the worker not live) and names the
    /// worker in the error.
    fn note<T>(&self, r: Result<T, RpcError>) -> Result<T, Unreachable> {
        r.map_err(|e| {
            if breaks_link(&e) {
                self.broken.store(true, Ordering::Relaxed);
            }
            Unreachable {
                node: self.node.clone(),
                source: Box::new(e),
            }
        })
    }
}

#[async_trait::async_trait]
impl Worker for RemoteWorker {
    fn node(&self) -> &str {
        &self.node
    }

    /// False once the connection is gone: discovery replaces it.
    fn is_live(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }

    fn deliver(&self, d: Delivery) {
        self.queue(Item::Deliver(d));
    }

    fn notify(&self, n: Notice) {
        self.queue(Item::Notify(n));
    }

    /// Deliveries for this worker were lost before they reached its queue: it is told
    /// to catch up, after the batch in flight or at once when there is none.
    fn catch_up(&self) {
        if !self.owed.swap(true, Ordering::Relaxed) {
            // A full queue needs no wake: its next batch ends with the check.
            let _ = self.queue.try_send(Outgoing::Wake);
        }
    }

    async fn kick_user(&self, uid: &str, reason: &str) -> Result<usize, Unreachable> {
        let r = self
            .client
            .kick_user(deadline(CALL_DEADLINE), uid.into(), reason.into())
            .await;
        self.note(r)
    }

    async fn kick_device(
        &self,
        uid: &str,
        device: &str,
        reason: &str,
    ) -> Result<usize, Unreachable> {
        let r = self
            .client
            .kick_device(
                deadline(CALL_DEADLINE),
                uid.into(),
                device.into(),
                reason.into(),
            )
            .await;
        self.note(r)
    }

    async fn connections(
        &self,
        uid: Option<&str>,
        after: Option<&ConnCursor>,
        limit: usize,
    ) -> Result<ConnPage, Unreachable> {
        let r = self
            .client
            .connections(
                deadline(CALL_DEADLINE),
                uid.map(str::to_owned),
                after.cloned(),
                limit,
            )
            .await;
        self.note(r)
    }

    async fn stats(&self) -> Result<NodeInfo, Unreachable> {
        let r = self.client.stats(deadline(CALL_DEADLINE)).await;
        self.note(r)
    }

    /// Says goodbye as node `me` behind every item queued so far; true once the worker
    /// has taken it. False when the link is gone, or a catch-up call for deliveries
    /// lost before it failed.
    async fn goodbye(&self, me: &str, started_ms: i64) -> bool {
        let (done, said) = oneshot::channel();
        let bye = Outgoing::Goodbye {
            me: me.to_owned(),
            started_ms,
            done,
        };
        if self.queue.send(bye).await.is_err() {
            return false;
        }
        said.await.unwrap_or(false)
    }
}

impl Drop for RemoteWorker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a worker's delivery queue carries.
enum Outgoing {
    Item(Item),
    /// Nothing to send; the loop checks whether deliveries are owed.
    Wake,
    /// See [`RemoteWorker::goodbye`].
    Goodbye {
        me: String,
        started_ms: i64,
        done: oneshot::Sender<bool>,
    },
}

/// What the delivery task of one worker works with.
struct Link {
    node: String,
    client: WorkerRpcClient,
    broken: Arc<AtomicBool>,
    owed: Arc<AtomicBool>,
}

impl Link {
    /// Pushes one batch; a failure makes the deliveries owed.
    async fn push(&self, items: Vec<Item>) {
        let n = items.len();
        let started = Instant::now();
        match self.client.push(deadline(PUSH_DEADLINE), items).await {
            Ok(()) => {
                metrics::histogram!("imd_rpc_push_seconds").record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                // The messages are in the inboxes; the worker is told to look.
                metrics::counter!("imd_rpc_push_failures_total").increment(1);
                tracing::warn!(node = self.node, error = %e, batch = n, "push to worker failed");
                self.note_failure(&e);
                self.owed.store(true, Ordering::Relaxed);
            }
        }
    }

    fn note_failure(&self, e: &RpcError) {
        if breaks_link(e) {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether `e` means the connection is gone (rather than a call that failed on it).
fn breaks_link(e: &RpcError) -> bool {
    matches!(
        e,
        RpcError::Shutdown | RpcError::Channel(_) | RpcError::Send(_)
    )
}

/// Sends queued deliveries in batches, one batch in flight, until the worker is dropped.
/// After a batch, if deliveries were lost, tells the worker to catch up; then passes on
/// a goodbye queued behind the batch.
async fn deliver_loop(link: Link, mut rx: mpsc::Receiver<Outgoing>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH_MAX) => n,
            _ = stop.cancelled() => break,
        };
        if n == 0 {
            break;
        }
        let mut items = Vec::with_capacity(n);
        let mut goodbye = None;
        for item in batch.drain(..) {
            match item {
                Outgoing::Item(item) => items.push(item),
                Outgoing::Wake => {}
                Outgoing::Goodbye {
                    me,
                    started_ms,
                    done,
                } => goodbye = Some((me, started_ms, done)),
            }
        }
        if !items.is_empty() {
            link.push(items).await;
        }
        if link.owed.swap(false, Ordering::Relaxed) {
            // A broken link needs no call: the worker sees its connection end.
            if let Err(e) = link.client.catch_up(deadline(CALL_DEADLINE)).await {
                tracing::debug!(node = link.node, error = %e, "asking a worker to catch up failed");
                link.note_failure(&e);
                link.owed.store(true, Ordering::Relaxed);
            }
        }
        if let Some((me, started_ms, done)) = goodbye {
            // Owed deliveries make no goodbye: the worker must look, and does.
            let said = !link.owed.load(Ordering::Relaxed)
                && link
                    .client
                    .goodbye(deadline(CALL_DEADLINE), me, started_ms)
                    .await
                    .is_ok();
            let _ = done.send(said);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::business::blacklist::Blacklist;
    use bytes::Bytes;

    /// A worker whose server runs in this process, and a client of it.
    async fn pair(key: &LinkKey) -> (Arc<Hub>, RemoteWorker, CancellationToken) {
        let hub = Arc::new(Hub::new(16, "w1".into(), Arc::new(Blacklist::new())));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stats: Arc<dyn Fn() -> NodeInfo + Send + Sync> = Arc::new(|| NodeInfo {
            node_id: "w1".into(),
            ..NodeInfo::default()
        });
        tokio::spawn(
            WorkerServer::new(hub.clone(), stats, key.clone()).run(listener, stop.clone()),
        );
        let remote = RemoteWorker::connect("w1", addr, key).await.unwrap();
        (hub, remote, stop)
    }

    fn delivery() -> Delivery {
        Delivery {
            msg: Bytes::from_static(b"{}"),
            to: vec![("nobody".into(), 1)],
            generation: None,
        }
    }

    /// Deliveries a full queue dropped make the sender ask the worker to catch up,
    /// after the next batch; deliveries that all arrive do not.
    #[tokio::test]
    async fn dropped_deliveries_make_the_worker_catch_up() {
        let key = LinkKey::derive(b"secret");
        let (hub, remote, stop) = pair(&key).await;
        let wanted = |hub: Arc<Hub>| async move {
            tokio::time::timeout(Duration::from_secs(5), hub.catch_up_wanted())
                .await
                .is_ok()
        };
        remote.deliver(delivery());
        assert_eq!(remote.stats().await.unwrap().node_id, "w1", "link up");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), hub.catch_up_wanted())
                .await
                .is_err(),
            "nothing was lost"
        );
        // This test's runtime has one thread: the delivery task cannot run while the
        // queue is filled, so the last push finds it full.
        for _ in 0..=QUEUE {
            remote.deliver(delivery());
        }
        assert!(
            wanted(hub.clone()).await,
            "the worker was asked to catch up"
        );
        stop.cancel();
    }

    /// Whether `hub` is asked to catch up within `within`.
    async fn asked(hub: &Hub, within: Duration) -> bool {
        tokio::time::timeout(within, hub.catch_up_wanted())
            .await
            .is_ok()
    }

    /// A goodbye goes out behind the deliveries queued before it; the end of its
    /// connection then asks for no catch-up. Without one, the end does.
    #[tokio::test]
    async fn a_goodbye_spares_the_worker_a_catch_up() {
        let key = LinkKey::derive(b"secret");
        let (hub, remote, stop) = pair(&key).await;
        let bob = hub.register(
            crate::business::Identity {
                uid: "bob".into(),
                device: "b1".into(),
                platform: shared::token::Platform::Web,
                roles: vec![],
                ip: None,
            },
            "127.0.0.1:1".parse().unwrap(),
            0,
        );
        for useq in 1..=10 {
            remote.deliver(Delivery {
                msg: Bytes::from_static(b"{}"),
                to: vec![("bob".into(), useq)],
                generation: None,
            });
        }
        assert!(remote.goodbye("gw1", 7).await, "taken");
        assert_eq!(
            bob.outbox.queued_pushes(),
            10,
            "the deliveries queued before the goodbye arrived before it"
        );
        drop(remote);
        assert!(
            !asked(&hub, Duration::from_millis(300)).await,
            "no catch-up for a link that said goodbye"
        );
        assert!(hub.left_cleanly("gw1"), "the departure is excused too");

        let (hub, remote, stop2) = pair(&key).await;
        assert_eq!(remote.stats().await.unwrap().node_id, "w1", "link up");
        drop(remote);
        assert!(
            asked(&hub, Duration::from_secs(5)).await,
            "a link that ends without a goodbye makes the worker look"
        );
        stop.cancel();
        stop2.cancel();
    }

    /// Deliveries lost before a goodbye still make the worker catch up; and a link
    /// with nothing queued is woken to ask for one.
    #[tokio::test]
    async fn owed_deliveries_make_a_catch_up_goodbye_or_not() {
        let key = LinkKey::derive(b"secret");
        let (hub, remote, stop) = pair(&key).await;
        remote.catch_up();
        assert!(
            asked(&hub, Duration::from_secs(5)).await,
            "an idle link asks at once"
        );
        for _ in 0..=QUEUE {
            remote.deliver(delivery());
        }
        // The catch-up call goes out behind the batch that follows the loss, so the
        // goodbye behind it is true again.
        assert!(remote.goodbye("gw1", 7).await);
        assert!(
            asked(&hub, Duration::from_secs(5)).await,
            "the lost deliveries are looked for"
        );
        stop.cancel();
    }

    /// A notice travels in the same queue as the deliveries, behind those queued
    /// before it, to every device of its users on the remote worker.
    #[tokio::test]
    async fn a_notice_arrives_behind_the_deliveries_queued_before_it() {
        let key = LinkKey::derive(b"secret");
        let (hub, remote, stop) = pair(&key).await;
        let who = |device: &str| crate::business::Identity {
            uid: "bob".into(),
            device: device.into(),
            platform: shared::token::Platform::Web,
            roles: vec![],
            ip: None,
        };
        let phone = hub.register(who("phone"), "127.0.0.1:1".parse().unwrap(), 0);
        let laptop = hub.register(who("laptop"), "127.0.0.1:2".parse().unwrap(), 0);
        remote.deliver(Delivery {
            msg: Bytes::from_static(b"{}"),
            to: vec![("bob".into(), 1)],
            generation: None,
        });
        remote.notify(Notice {
            uids: vec!["bob".into()],
            frame: r#"{"type":"typing","conv":"c","uid":"al"}"#.into(),
        });
        assert!(remote.goodbye("gw1", 1).await, "taken, behind both");
        for conn in [&phone, &laptop] {
            let (queued, _) = conn.outbox.take();
            let kinds: Vec<&str> = queued
                .iter()
                .map(|o| match o {
                    crate::worker::Out::Push { .. } => "push",
                    crate::worker::Out::Frame(f) if f.as_str().contains("typing") => "notice",
                    _ => "other",
                })
                .collect();
            assert_eq!(kinds, ["push", "notice"], "in order, on every device");
        }
        stop.cancel();
    }
}

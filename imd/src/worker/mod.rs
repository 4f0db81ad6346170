//! Worker role: the connection hub, each connection's outbox, the sessions, and the
//! one seam through which everything else reaches a worker.
//!
//! [`Worker`] is that seam. This node's [`Hub`] implements it by queueing on its
//! connections' outboxes; `rpc::remote::RemoteWorker` implements it over tarpc for the
//! worker of another node. The dispatcher and the admin operations hold every worker
//! they can reach as an `Arc<dyn Worker>` (see `dispatch::Workers`), so one loop serves
//! one node and a cluster alike. A worker must not decide who receives what: that is
//! the business layer's and the dispatcher's.
//!
//! - [`hub`]: connections by uid, pushes onto outboxes, kicks, listings, goodbyes.
//! - [`outbox`]: a connection's bounded queue of frames.
//! - [`session`]: one task per connection: reads frames, writes the outbox, acks,
//!   retransmits.
//! - `reorder`, `clock`: the session's push reordering and the shared tick.

mod clock;
mod hub;
mod outbox;
mod reorder;
pub mod session;

pub use clock::Clock;
pub use hub::{CatchUpCause, Conn, Hub, RouteChange, WorkerStats};
pub(crate) use outbox::Out;
pub use outbox::Outbox;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shared::admin::{ConnCursor, ConnectionInfo, NodeInfo};

/// One message for one user's devices on a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Push {
    /// Recipient uid.
    pub uid: String,
    /// The message's position in the recipient's inbox.
    pub useq: u64,
    /// The message JSON, serialized once at commit and shared by every push of it.
    pub msg: Bytes,
}

/// One committed message for some of its recipients on one worker: the JSON once,
/// and each recipient's `useq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// The message JSON.
    pub msg: Bytes,
    /// `(uid, useq)` of each recipient on that worker.
    pub to: Vec<(String, u64)>,
    /// The store generation the committing node verified after the commit; `None` for
    /// entries read back from the store (a replay), which are of the current one.
    pub generation: Option<String>,
}

impl Delivery {
    /// The per-recipient pushes.
    pub fn into_pushes(self) -> impl Iterator<Item = Push> {
        let msg = self.msg;
        self.to.into_iter().map(move |(uid, useq)| Push {
            uid,
            useq,
            msg: msg.clone(),
        })
    }
}

/// An ephemeral frame for every connected device of some users: not an inbox entry,
/// not stored, not acked (a `read`, `typing` or `queue` frame). A device that misses
/// one learns the state behind it by reading it over HTTP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    /// The users whose devices get it.
    pub uids: Vec<String>,
    /// The whole frame (JSON), serialized once.
    pub frame: String,
}

/// A page of connections, ordered by (uid, device), and where the next page starts.
pub type ConnPage = (Vec<ConnectionInfo>, Option<ConnCursor>);

/// A worker could not be asked: its link is down or the call failed or timed out.
#[derive(Debug, thiserror::Error)]
#[error("worker {node} unreachable: {source}")]
pub struct Unreachable {
    /// The worker's node.
    pub node: String,
    /// What failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// What the rest of a node may ask of a worker: this node's or another node's.
///
/// The queueing calls ([`Worker::deliver`], [`Worker::notify`], [`Worker::catch_up`])
/// never block: they run on the commit path. Each worker keeps the order in which they
/// were made. The asking calls are async and may fail for a remote worker.
#[async_trait::async_trait]
pub trait Worker: Send + Sync + 'static {
    /// The node this worker runs on.
    fn node(&self) -> &str;

    /// Whether it can be reached now (a remote worker whose link broke cannot, even
    /// before discovery drops it).
    fn is_live(&self) -> bool;

    /// Queues `d` for every online device of each recipient, in call order. Never
    /// blocks: a device whose queue is full is disconnected as too slow, a link whose
    /// queue is full drops it and catches up; either way the message waits in the
    /// inbox.
    fn deliver(&self, d: Delivery);

    /// Queues an ephemeral frame for every online device of `n.uids`, in order with
    /// the deliveries. Never blocks. It takes a place in each device's queue like any
    /// frame (a full queue disconnects the device as too slow); across nodes it is
    /// best effort, as the frame has no inbox entry to catch up from.
    fn notify(&self, n: Notice);

    /// Pushes meant for this worker were lost on their way: its sessions compare what
    /// they pushed with their users' inboxes, soon.
    fn catch_up(&self);

    /// Disconnects every device of `uid` with a `kick` of `reason`; how many.
    async fn kick_user(&self, uid: &str, reason: &str) -> Result<usize, Unreachable>;

    /// Disconnects device `device` of `uid` with a `kick` of `reason`; how many (0 or 1).
    async fn kick_device(
        &self,
        uid: &str,
        device: &str,
        reason: &str,
    ) -> Result<usize, Unreachable>;

    /// Connections of `uid`, or a page of all connections, ordered by (uid, device)
    /// after the cursor `after`, at most `limit`.
    async fn connections(
        &self,
        uid: Option<&str>,
        after: Option<&ConnCursor>,
        limit: usize,
    ) -> Result<ConnPage, Unreachable>;

    /// The figures of the worker's node. A remote node describes itself whole; this
    /// node's hub knows only its own part (connections, pushes, acks), and the node's
    /// admin service adds the rest.
    async fn stats(&self) -> Result<NodeInfo, Unreachable>;

    /// Node `node`, in its run started at `started_ms`, is leaving, and this worker has
    /// been sent everything that node queued for it before this call: neither the end
    /// of its link nor its departure needs a catch-up. True once the worker took it.
    async fn goodbye(&self, node: &str, started_ms: i64) -> bool;
}

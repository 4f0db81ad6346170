//! Service traits between roles.
//!
//! The dispatcher talks to workers only through [`WorkerApi`]. When every role shares
//! one process, the worker's hub implements it directly; the cluster mode puts tarpc
//! under the same trait. Calls carry owned, serializable data for that reason.
//!
//! [`remote`] is the network form: the [`remote::WorkerRpc`] tarpc service, its server
//! over a node's hub, and [`remote::RemoteWorker`], a client that batches deliveries.
//! [`auth`] is imd's use of the link handshake in `shared::link_auth`, which every RPC
//! connection runs first.

pub mod auth;
pub mod remote;

use bytes::Bytes;
use shared::admin::ConnectionInfo;

/// One message for one user's devices on a worker.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Push {
    /// Recipient uid.
    pub uid: String,
    /// The message's position in the recipient's inbox.
    pub useq: u64,
    /// The message JSON, serialized once at commit and shared by every push of it.
    pub msg: Bytes,
}

/// What a dispatcher may ask of a worker.
pub trait WorkerApi: Send + Sync + 'static {
    /// Queues `pushes` for every online device of each recipient, in the given order.
    /// Never blocks: a device whose queue is full is disconnected as too slow, and the
    /// message waits in its inbox.
    fn push(&self, pushes: Vec<Push>);

    /// Disconnects every device of `uid` with a `kick` of `reason`; returns how many.
    fn kick_user(&self, uid: &str, reason: &str) -> usize;

    /// Disconnects, with `kick` `blacklisted`, every connection whose uid or ip the
    /// worker's blacklist cache now blocks; returns how many.
    fn enforce_blacklist(&self) -> usize;

    /// Connections of `uid`, or a page of all connections ordered by (uid, device)
    /// after the cursor `after` (`"uid/device"`). Returns the page and the next cursor.
    fn connections(
        &self,
        uid: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<ConnectionInfo>, Option<String>);
}

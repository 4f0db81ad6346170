//! The network between nodes: the worker seam over tarpc.
//!
//! [`remote`] is [`crate::worker::Worker`] across the network: the
//! [`remote::WorkerRpc`] tarpc service, its server over a node's hub, and
//! [`remote::RemoteWorker`], a client that implements `Worker` and batches deliveries.
//! In one process nothing here runs: the hub is called directly through the same trait.
//! [`auth`] is imd's use of the link handshake in `shared::link_auth`, which every RPC
//! connection runs first.
//!
//! The dependency runs one way: `rpc` uses `worker`, never the reverse.

pub mod auth;
pub mod remote;

/// The version of the RPC protocol between nodes: the tarpc service and the bincode
/// of its types. Nodes of different versions cannot talk, so they refuse each other
/// at once, with an error naming both versions, instead of failing later: the version
/// is in the link handshake's magic (`IMDRPC02`) and in each node's registration,
/// and `imctl cluster` shows it. Bump it with any change of `remote::WorkerRpc` or of
/// a type it carries.
///
/// 1: before versions were announced (registrations without `rpc_version`).
/// 2: `NodeInfo` gained `rpc_version`.
pub const RPC_VERSION: u32 = 2;

/// The version this node speaks: [`RPC_VERSION`], or in builds with the `test-hooks`
/// feature `IMD_TEST_RPC_VERSION`, so that a test can start a node of another version.
pub fn rpc_version() -> u32 {
    #[cfg(feature = "test-hooks")]
    if let Some(v) = std::env::var("IMD_TEST_RPC_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    RPC_VERSION
}

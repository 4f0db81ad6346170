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

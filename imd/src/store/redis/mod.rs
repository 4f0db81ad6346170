//! The Redis backend: standalone Redis or Redis Cluster, chosen by probing the server.
//!
//! Every key starts with `imd:` and carries a hash tag, so that each script or
//! transaction touches one slot (Redis Cluster refuses anything else):
//!
//! - `imd:{c:<conv>}:…` per conversation;
//! - `imd:{u:<uid>}:…` per user;
//! - `imd:{n:<node>}:…` per node;
//! - `imd:{f:<k>}:…` for the 16 fan-out shards (spread over slots: every commit writes one);
//! - `imd:{g}:…` for the few global keys (directory tables, node list).
//!
//! Work that spans slots (a message's fan-out into its members' inboxes) is a sequence
//! of single-slot scripts, each safe to re-run; see `messages`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::StoreError;

mod directory;
mod messages;
mod registry;

pub use registry::{NodeInfo, RouteAdded};

/// How long one command may take before it fails (redis-rs defaults to 500 ms).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One multiplexed connection to standalone Redis or to a Redis Cluster.
///
/// Cheap to clone; clones share the connection. Cluster connections route each command
/// by its first key; a pipeline must stay within one slot there, so multi-slot work is
/// issued as concurrent single-slot requests (which the multiplexer pipelines anyway).
#[derive(Clone)]
pub(crate) enum Conn {
    /// Standalone Redis, reconnecting by itself.
    Single(ConnectionManager),
    /// Redis Cluster, following slot moves by itself.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to `spec`: one `redis://` URL, or several separated by commas (seeds of
    /// a cluster). Whether the server runs in cluster mode is asked, not configured.
    pub(crate) async fn connect(spec: &str) -> Result<Self, StoreError> {
        let urls = seeds(spec)?;
        let first = &urls[0];
        let client = redis::Client::open(*first).map_err(db)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        // One plain attempt first: the connection manager retries with backoff for
        // several seconds, which at start-up only delays the error.
        tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| {
                StoreError::Db(format!(
                    "redis: no answer from {first} in {CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(db)?;
        let mut probe = client
            .get_connection_manager_with_config(config.clone())
            .await
            .map_err(db)?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut probe)
            .await
            .map_err(db)?;
        if !info.contains("cluster_enabled:1") {
            return Ok(Conn::Single(probe));
        }
        let cluster = ClusterClientBuilder::new(urls.iter().map(|u| u.to_string()))
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(db)?;
        Ok(Conn::Cluster(
            cluster.get_async_connection().await.map_err(db)?,
        ))
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The URLs of `spec` (comma-separated); at least one.
pub(crate) fn seeds(spec: &str) -> Result<Vec<&str>, StoreError> {
    let urls: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(StoreError::Db("no Redis URL given".into()));
    }
    Ok(urls)
}

/// Maps a Redis failure to the store's error.
pub(crate) fn db(e: redis::RedisError) -> StoreError {
    StoreError::Db(format!("redis: {e}"))
}

/// Key of a conversation's `part` (`imd:{c:<conv>}:<part>`).
pub(crate) fn conv_key(conv: &str, part: &str) -> String {
    format!("imd:{{c:{conv}}}:{part}")
}

/// Key of a user's `part` (`imd:{u:<uid>}:<part>`).
pub(crate) fn user_key(uid: &str, part: &str) -> String {
    format!("imd:{{u:{uid}}}:{part}")
}

/// Key of a node's `part` (`imd:{n:<node>}:<part>`).
pub(crate) fn node_key(node: &str, part: &str) -> String {
    format!("imd:{{n:{node}}}:{part}")
}

/// A global key (`imd:{g}:<part>`).
pub(crate) fn global_key(part: &str) -> String {
    format!("imd:{{g}}:{part}")
}

/// The Redis backend of [`super::MessageStore`] and [`super::DirectoryStore`], plus the
/// cluster's shared registries (nodes, connection routes) and change notifications.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: Conn,
    pub(crate) spec: String,
    /// Other writers' messages whose inbox entries this store wrote (see `messages`).
    pub(crate) relayed: Arc<messages::Relayed>,
}

impl RedisStore {
    /// Connects to `spec` (see [`Conn::connect`]).
    pub async fn connect(spec: &str) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Conn::connect(spec).await?,
            spec: spec.to_string(),
            relayed: Arc::default(),
        })
    }

    /// Whether the server is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }
}

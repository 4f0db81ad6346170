//! The Redis backend: standalone Redis or Redis Cluster, chosen by probing the server.
//!
//! This file owns the connection (standalone or cluster, and the retry of a request
//! whose connection was lost) and [`RedisStore`]; it must not know any key. The rest:
//!
//! - `keys`: the key schema, every key's name and what it holds;
//! - `messages/`: [`MessageStore`](super::MessageStore), the commit protocol (one
//!   file per part: claims, commit steps, drain, join, recall, sweep) and the
//!   conversation state (read positions, conversation lists);
//! - `blacklist`, `shops`, `groups`, `push`: one directory domain each;
//! - `registry`: node discovery, connection routes, blacklist notifications;
//! - `lua/`: the server-side scripts, loaded with `include_str!` by the file that runs
//!   them.
//!
//! Work that spans slots (a message's fan-out into its members' inboxes) is a sequence
//! of single-slot scripts, each safe to re-run; see `messages`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::StoreError;

mod blacklist;
mod generation;
mod groups;
mod keys;
mod messages;
mod outbox;
mod push;
mod registry;
mod shops;

pub use registry::{NodeInfo, RouteAdded, RouteRestored};

/// How long one command may take before it fails (redis-rs defaults to 500 ms).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries a request to standalone Redis gets in all when its connection is lost (see
/// [`retry_lost`]).
const TRIES: u32 = 3;
/// The wait before the second try; it doubles before each later one (50, 100 ms).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// A retry starts only this soon after the first try. A try that failed later than
/// this already waited out the manager's own reconnect backoff (about 6 s while Redis
/// is down), and its caller should hear of it rather than wait that long again.
const RETRY_WITHIN: Duration = Duration::from_secs(1);
/// How long a request keeps being sent again while Redis answers `LOADING` (it ran
/// nothing, so trying again is always safe): a send waits out a restart's load rather
/// than fail with `internal`. A longer load (a large AOF) fails the request then.
const LOADING_WAIT: Duration = Duration::from_secs(5);
/// The wait between tries while Redis is loading.
const LOADING_POLL: Duration = Duration::from_millis(50);

/// One multiplexed connection to standalone Redis or to a Redis Cluster.
///
/// Cheap to clone; clones share the connection. Cluster connections route each command
/// by its first key; a pipeline must stay within one slot there, so multi-slot work is
/// issued as concurrent single-slot requests (which the multiplexer pipelines anyway).
#[derive(Clone)]
pub(crate) enum Conn {
    /// Standalone Redis, reconnecting by itself; and whether a request was sent again
    /// after a lost connection (see [`retry_lost`]) since [`Conn::take_retried`].
    Single(ConnectionManager, Arc<AtomicBool>),
    /// Redis Cluster, following slot moves by itself.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to `spec`: one `redis://` URL, or several separated by commas (seeds of
    /// a cluster). Whether the server runs in cluster mode is asked, not configured.
    pub(crate) async fn connect(spec: &str) -> Result<Self, StoreError> {
        let urls = seeds(spec)?;
        let first = &urls[0];
        let client = redis::Client::open(*first)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        // One plain attempt first: the connection manager retries with backoff for
        // several seconds, which at start-up only delays the error.
        tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| StoreError::ConnectTimeout {
                url: (*first).to_owned(),
                after: CONNECT_TIMEOUT,
            })??;
        let mut probe = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut probe)
            .await?;
        if !info.contains("cluster_enabled:1") {
            return Ok(Conn::Single(probe, Arc::default()));
        }
        let cluster = ClusterClientBuilder::new(urls.iter().map(|u| u.to_string()))
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()?;
        Ok(Conn::Cluster(cluster.get_async_connection().await?))
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Whether a request was sent again after a lost connection since the last call.
    pub(crate) fn take_retried(&self) -> bool {
        match self {
            Conn::Single(_, retried) => retried.swap(false, Ordering::Relaxed),
            Conn::Cluster(_) => false,
        }
    }
}

/// Standalone requests go through [`retry_lost`]: after Redis restarts, the connection
/// manager (RESP2: no disconnect notice) only learns that its connection is gone when a
/// request fails on it, and that first request would otherwise fail a client's send or
/// a heartbeat. Cluster requests do not: redis-rs's cluster connection already retries a
/// lost connection itself (reconnecting the node, up to 16 retries with backoff).
impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c, retried) => Box::pin(retry_lost(retried, move || {
                let mut c = c.clone();
                async move { loading_as_error(c.send_packed_command(cmd).await?) }
            })),
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
            Conn::Single(c, retried) => {
                let flag = retried.clone();
                Box::pin(retry_lost(retried, move || {
                    let (mut c, retried) = (c.clone(), flag.clone());
                    async move {
                        let values = c.send_packed_commands(pipeline, offset, count).await?;
                        let Some(e) = values.iter().find_map(loading_value) else {
                            return Ok(values);
                        };
                        // Redis finished loading part-way through: what ran will run again,
                        // with the same consequences as after a lost answer.
                        if values.iter().any(|v| loading_value(v).is_none()) {
                            retried.store(true, Ordering::Relaxed);
                        }
                        Err(e)
                    }
                }))
            }
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c, _) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs `request` until it succeeds, fails otherwise than by [`connection_lost`], has
/// had [`TRIES`] tries, or [`RETRY_WITHIN`] has passed since the first; returns the last
/// outcome. Waits [`RETRY_BACKOFF`], doubling, between tries. While Redis answers
/// `LOADING` ([`loading`]), tries again every [`LOADING_POLL`] for up to
/// [`LOADING_WAIT`] since the first try.
///
/// Sending a request again is safe only because every request imd sends may run twice:
/// a connection lost after the request went out may have lost only the answer. Reads,
/// `SET`/`SADD`/`HSET`/`DEL`, and the Lua scripts of this module are written to be
/// re-runnable; a new request must be too. What a second run may change is an answer,
/// never the data: `route_add` then reports no previous node (an old connection on
/// another worker is not kicked, and goes when its client does), a member append
/// reports entries as already there (nobody pushes them: `retried` is set, and the
/// store's caller has every worker catch up, see `MessageStore::pushes_lost`), and
/// removals report nothing removed.
async fn retry_lost<T, F, Fut>(retried: &AtomicBool, mut request: F) -> RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let first = Instant::now();
    let mut backoff = RETRY_BACKOFF;
    let mut tries = 1;
    loop {
        match request().await {
            // Not run at all: safe to send again whatever it is, and nothing is lost.
            Err(e) if loading(&e) && first.elapsed() < LOADING_WAIT => {
                tracing::debug!(error = %e, "redis is loading its data; waiting");
                metrics::counter!("imd_redis_retries_total").increment(1);
                tokio::time::sleep(LOADING_POLL).await;
            }
            Err(e) if tries < TRIES && connection_lost(&e) && first.elapsed() < RETRY_WITHIN => {
                tracing::debug!(error = %e, tries, "redis connection lost; retrying the request");
                metrics::counter!("imd_redis_retries_total").increment(1);
                retried.store(true, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                tries += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Whether `e` is Redis's `LOADING`: a restarted server answers it to every command
/// until it has read its AOF or RDB (about a second for a 30 s chat run's AOF here).
fn loading(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
}

/// `value` as an error when it is a `LOADING` answer, which a request's answer may
/// carry as a value rather than an error, so that [`retry_lost`] sees it.
fn loading_as_error(value: Value) -> RedisResult<Value> {
    match loading_value(&value) {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

/// The error of `value` when it is a `LOADING` answer (see [`loading`]).
fn loading_value(value: &Value) -> Option<RedisError> {
    match value {
        Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::BusyLoading) => {
            Some(e.clone().into())
        }
        _ => None,
    }
}

/// Whether `e` says the connection was dropped or refused, the errors on which the
/// connection manager reconnects. Not a timeout: the request may still be running, and
/// trying again would double a wait that is already long (redis-rs reports a response
/// timeout as an I/O error too, which is why `is_io_error` alone is not the test). Not a
/// server error either (`WRONGTYPE`, …): the server answered; `NOSCRIPT` is handled by
/// redis-rs's `Script`.
fn connection_lost(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_connection_refusal())
}

/// The URLs of `spec` (comma-separated); at least one.
pub(crate) fn seeds(spec: &str) -> Result<Vec<&str>, StoreError> {
    let urls: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(StoreError::NoRedisUrl);
    }
    Ok(urls)
}

/// The Redis backend of [`super::MessageStore`] and [`super::DirectoryStore`] (each
/// domain's trait), plus the
/// cluster's shared registries (nodes, connection routes) and change notifications.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: Conn,
    pub(crate) spec: String,
    /// Other writers' messages whose inbox entries this store wrote (see `messages`).
    pub(crate) relayed: Arc<messages::Relayed>,
    /// This process's view of the store's generation (see `generation`).
    pub(crate) generation: Arc<generation::GenerationState>,
    /// The conversations and users this process indexed for retention lately.
    indexed: Arc<messages::Indexed>,
    /// Whether commits write the webhook outbox (see `crate::store::outbox`).
    pub(crate) outbox: bool,
    /// How long an idempotency key lives, in ms (Redis expires it).
    pub(crate) idempotency_ms: i64,
}

impl RedisStore {
    /// Connects to `spec` (see [`Conn::connect`]).
    pub async fn connect(spec: &str) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Conn::connect(spec).await?,
            spec: spec.to_string(),
            relayed: Arc::default(),
            generation: Arc::default(),
            indexed: Arc::default(),
            outbox: false,
            idempotency_ms: crate::store::IDEMPOTENCY_WINDOW_MS,
        })
    }

    /// Has idempotency keys claimed from now on live `ms` instead of
    /// [`IDEMPOTENCY_WINDOW_MS`](crate::store::IDEMPOTENCY_WINDOW_MS) (a shorter
    /// retention: a key outliving its message deduplicates nothing).
    pub fn with_idempotency_window(mut self, ms: i64) -> Self {
        self.idempotency_ms = ms;
        self
    }

    /// Has every later commit write the webhook outbox (call before sharing the store).
    pub fn with_outbox(mut self) -> Self {
        self.outbox = true;
        self
    }

    /// Whether the server is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }
}

/// `v` as JSON.
fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(StoreError::encode)
}

/// The stored JSON record `what`.
fn from_json<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::decode(what, e))
}

impl RedisStore {
    /// One JSON value of a global hash.
    async fn hget_json<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
        field: &str,
    ) -> Result<Option<T>, StoreError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut self.conn.clone())
            .await?;
        json.map(|j| from_json(field, &j)).transpose()
    }

    /// Sets `name` in the global hash `hash` to `stored`, which holds `list` (a shop's
    /// agents, a group's members), and moves the reverse index (a set per listed uid,
    /// under `reverse_prefix`) from the old list to the new, in one script.
    async fn set_with_reverse_index(
        &self,
        hash: String,
        name: &str,
        stored: String,
        list: &[String],
        reverse_prefix: String,
    ) -> Result<(), StoreError> {
        let mut invocation = SET_WITH_REVERSE_INDEX.key(hash);
        invocation.arg(name).arg(stored).arg(reverse_prefix);
        for uid in list {
            invocation.arg(uid);
        }
        invocation
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }
}

/// The script of [`RedisStore::set_with_reverse_index`]. KEYS[1] = the hash; ARGV[1] =
/// name, ARGV[2] = the stored JSON (the list, or an object with it under `agents`), ARGV[3] = reverse prefix, ARGV[4..] = the list.
static SET_WITH_REVERSE_INDEX: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/set_with_reverse_index.lua")));

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicU32, Ordering};

    use redis::{ErrorKind, ServerErrorKind};

    use super::*;

    fn io_error(kind: io::ErrorKind) -> RedisError {
        io::Error::from(kind).into()
    }

    #[test]
    fn only_a_lost_connection_counts_as_lost() {
        let cases = [
            // What a request on the connection the server closed gets.
            (io_error(io::ErrorKind::BrokenPipe), true),
            (io_error(io::ErrorKind::ConnectionReset), true),
            (io_error(io::ErrorKind::UnexpectedEof), true),
            // What the reconnection gets while the server is not back yet.
            (io_error(io::ErrorKind::ConnectionRefused), true),
            // A response timeout: the request may still run.
            (io_error(io::ErrorKind::TimedOut), false),
            (
                RedisError::from((
                    ErrorKind::Server(ServerErrorKind::ResponseError),
                    "WRONGTYPE",
                )),
                false,
            ),
            (
                RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT")),
                false,
            ),
            (RedisError::from((ErrorKind::Parse, "bad reply")), false),
        ];
        for (e, lost) in cases {
            assert_eq!(connection_lost(&e), lost, "{e:?}");
        }
    }

    /// Tries `retry_lost` makes when every try fails with `e`; checks that it reports
    /// a retry exactly when it made one.
    async fn tries_on(e: RedisError) -> u32 {
        let tries = AtomicU32::new(0);
        let retried = AtomicBool::new(false);
        let outcome: RedisResult<()> = retry_lost(&retried, || {
            tries.fetch_add(1, Ordering::Relaxed);
            let e = e.clone();
            async move { Err(e) }
        })
        .await;
        assert!(outcome.is_err());
        let tries = tries.into_inner();
        assert_eq!(retried.into_inner(), tries > 1);
        tries
    }

    #[tokio::test]
    async fn retries_a_lost_connection_a_bounded_number_of_times() {
        assert_eq!(tries_on(io_error(io::ErrorKind::BrokenPipe)).await, TRIES);
        assert_eq!(tries_on(io_error(io::ErrorKind::TimedOut)).await, 1);
        let wrongtype = (
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        );
        assert_eq!(tries_on(RedisError::from(wrongtype)).await, 1);
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_returns_its_answer() {
        let tries = AtomicU32::new(0);
        let retried = AtomicBool::new(false);
        let outcome = retry_lost(&retried, || {
            let n = tries.fetch_add(1, Ordering::Relaxed);
            async move {
                if n == 0 {
                    Err(io_error(io::ErrorKind::BrokenPipe))
                } else {
                    Ok(Value::Okay)
                }
            }
        })
        .await;
        assert_eq!(outcome.expect("the second try"), Value::Okay);
        assert_eq!(tries.into_inner(), 2);
        assert!(retried.into_inner(), "the retry is reported");
    }
}

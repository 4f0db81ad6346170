//! Redis restarting under a connected [`RedisStore`]: the first request after the
//! restart must succeed, not fail with the connection the server closed.
//!
//! redis-rs's `ConnectionManager` on RESP2 only notices a dropped connection when a
//! request fails on it (it reconnects in the background then), so without a retry in
//! the store that first request becomes an error for a client's send or a heartbeat.
//! The cluster connection retries by itself; the cluster test keeps it that way.
//!
//! The servers come from the harness ([`Redis::standalone`], [`Redis::cluster`]). The
//! restart is done here: `SHUTDOWN SAVE` writes each server's data to its RDB file and
//! stops it, then a new `redis-server` is started on the same port, directory and
//! cluster config file, which loads them. Nothing sleeps for luck: each step waits for
//! its condition under a deadline.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imd::store::{CommitOutcome, MessageStore, NewMessage, NodeInfo, Op, RedisStore};
use serde_json::json;

use testkit::Redis;

/// How long the old server may take to stop and the new one to answer `PING`.
const RESTART_DEADLINE: Duration = Duration::from_secs(20);

/// The conversation the test writes.
const CONV: &str = "d:alice~bob";

/// The settings a restarted server must keep: its data, and its cluster identity.
const KEPT_SETTINGS: [&str; 6] = [
    "dir",
    "dbfilename",
    "cluster-enabled",
    "cluster-config-file",
    "cluster-port",
    "cluster-node-timeout",
];

/// The `redis-server` processes started here (the restarted ones); killed by their PIDs
/// on drop.
struct Restarted(Vec<Child>);

impl Drop for Restarted {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The reply of `command` on a fresh connection to `url`, or `None` when the server
/// does not answer in time.
async fn ask(url: &str, command: &redis::Cmd) -> Option<redis::Value> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    command.query_async(&mut conn).await.ok()
}

/// Whether `url` answers `PING`, and when `cluster`, reports `cluster_state:ok`.
async fn ready(url: &str, cluster: bool) -> bool {
    if ask(url, &redis::cmd("PING")).await != Some(redis::Value::SimpleString("PONG".into())) {
        return false;
    }
    if !cluster {
        return true;
    }
    let mut info = redis::cmd("CLUSTER");
    info.arg("INFO");
    match ask(url, &info).await {
        Some(redis::Value::BulkString(text)) => {
            String::from_utf8_lossy(&text).contains("cluster_state:ok")
        }
        _ => false,
    }
}

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after
/// [`RESTART_DEADLINE`].
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + RESTART_DEADLINE;
    while !cond().await {
        assert!(
            Instant::now() < end,
            "timed out after {RESTART_DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops one server with `SHUTDOWN SAVE`; returns its port and [`KEPT_SETTINGS`] as
/// `redis-server` arguments.
async fn shut_down(url: &str) -> (u16, Vec<String>) {
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port of the Redis URL");
    let client = redis::Client::open(url).expect("redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the running server");
    let settings: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(&KEPT_SETTINGS[..])
        .query_async(&mut conn)
        .await
        .expect("CONFIG GET");
    let args = KEPT_SETTINGS
        .iter()
        .flat_map(|name| {
            let value = settings.get(*name).expect("a kept setting").clone();
            [format!("--{name}"), value]
        })
        .collect();
    // The server saves, then exits without answering: the reply is a closed connection.
    let _ = redis::cmd("SHUTDOWN")
        .arg("SAVE")
        .query_async::<()>(&mut conn)
        .await;
    wait_for("the old redis-server to stop", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    (port, args)
}

/// Restarts every server of `redis`: stops each with `SHUTDOWN SAVE`, starts a new one
/// on the same port with the same data and cluster identity, and returns once all of
/// them are ready (and the cluster reports `ok`).
async fn restart(redis: &Redis, previous: Option<Restarted>) -> Restarted {
    let url = redis.url();
    let urls: Vec<&str> = url.split(',').collect();
    let mut stopped = Vec::new();
    for url in &urls {
        stopped.push(shut_down(url).await);
    }
    // The harness reaps the first servers on drop; servers started here are reaped now.
    drop(previous);

    let children = stopped
        .into_iter()
        .map(|(port, kept)| {
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(kept)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server again")
        })
        .collect();
    let restarted = Restarted(children);
    for url in &urls {
        wait_for("the restarted redis-server to be ready", || {
            ready(url, redis.is_cluster())
        })
        .await;
    }
    restarted
}

fn node() -> NodeInfo {
    NodeInfo {
        id: "n1".into(),
        roles: vec!["gateway".into(), "worker".into()],
        listen: "127.0.0.1:8080".into(),
        rpc: Some("127.0.0.1:9000".into()),
        started_ms: 1_700_000_000_000,
        rpc_version: imd::rpc::RPC_VERSION,
    }
}

fn message(text: &str) -> Op {
    Op::Message(NewMessage {
        id: uuid::Uuid::now_v7().to_string(),
        conv: CONV.into(),
        from: "alice".into(),
        cid: Some(uuid::Uuid::now_v7().to_string()),
        content: imd::store::Content::Body(json!({ "t": text })),
        ts: 1_700_000_000_000,
        members: vec!["alice".into(), "bob".into()],
    })
}

/// The seq of a commit of one new message.
fn seq_of(outcomes: &[CommitOutcome]) -> u64 {
    match outcomes {
        [CommitOutcome::New(c)] => c.seq,
        other => panic!("expected one new message, got {other:?}"),
    }
}

/// After each restart, the very first request of a different kind (a plain read, a
/// commit made of Lua scripts whose cache the restart emptied, a heartbeat) succeeds,
/// and sees the data from before the restart.
async fn first_requests_after_a_restart_succeed(redis: Redis) {
    let store = RedisStore::connect(&redis.url())
        .await
        .expect("connect to Redis");
    assert_eq!(store.is_cluster(), redis.is_cluster());
    let ttl = Duration::from_secs(60);

    // Before any restart: everything works, and there is data to find afterwards.
    let seq = seq_of(&store.commit(vec![message("one")]).await.expect("commit"));
    assert_eq!(seq, 1);
    store.heartbeat(&node(), ttl).await.expect("heartbeat");

    // A plain read.
    let servers = restart(&redis, None).await;
    assert_eq!(
        store
            .last_seq(CONV)
            .await
            .expect("last_seq, the first request after a restart"),
        1
    );

    // A commit: claims, marks, the store script and the fan-out, all scripts.
    let servers = restart(&redis, Some(servers)).await;
    let seq = seq_of(
        &store
            .commit(vec![message("two")])
            .await
            .expect("commit, the first request after a restart"),
    );
    assert_eq!(seq, 2);

    // A heartbeat (SET PX, then SADD).
    let _servers = restart(&redis, Some(servers)).await;
    store
        .heartbeat(&node(), ttl)
        .await
        .expect("heartbeat, the first request after a restart");
    assert_eq!(store.live_nodes().await.expect("live nodes"), vec![node()]);
    assert_eq!(store.last_seq(CONV).await.expect("last_seq"), 2);
    let inbox = store.inbox("bob", 0, 10).await.expect("bob's inbox");
    assert_eq!(inbox.items.len(), 2, "both messages reached bob's inbox");
}

#[tokio::test]
async fn standalone() {
    let redis = tokio::task::spawn_blocking(Redis::standalone)
        .await
        .expect("start redis-server");
    first_requests_after_a_restart_succeed(redis).await;
}

#[tokio::test]
async fn cluster() {
    let redis = tokio::task::spawn_blocking(Redis::cluster)
        .await
        .expect("start a Redis Cluster");
    first_requests_after_a_restart_succeed(redis).await;
}

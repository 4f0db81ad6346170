//! Cluster mode against real processes: `redis-server` (standalone, or a 3-node Redis
//! Cluster), gateways and workers as separate `imd serve` processes on loopback.
//!
//! Each test names the guarantee it checks. Waits are for conditions (a frame, a route
//! in Redis, a node leaving the cluster view) under deadlines.
//!
//! This file starts a cluster and reads its state; the tests live by the guarantee
//! they prove: [`delivery`], [`failover`], [`admin`] (the admin API and imctl),
//! [`service`] (customer service), [`service_workflow`] (availability, caps, the
//! queue, ratings), [`conversations`] (read positions, typing,
//! presence, recall, event messages across workers), [`nodes`] (joining: secrets,
//! start-up).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shared::admin::ClusterInfo;
use shared::protocol::{HistoryResponse, Message};

use crate::common::{FRAME_DEADLINE, Imd, WsClient, wait_until};
use testkit::Redis;

mod admin;
mod conversations;
mod delivery;
mod failover;
mod nodes;
mod service;
mod service_workflow;

/// Every node of a cluster shares these (generated secrets would differ per node).
const SECRETS: [&str; 4] = [
    "--token-secret",
    "cluster-test-secret",
    "--admin-token",
    "cluster-test-admin",
];
/// How long a killed worker may take to leave the cluster view: its registration's
/// TTL (3 s), one discovery tick (1 s), and slack for a loaded machine.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(10);

/// Starts one node with `roles` and `id` on `redis`.
fn node(redis: &Redis, roles: &str, id: &str) -> Imd {
    node_with(redis, roles, id, &[])
}

/// Starts one node with `roles` and `id` on `redis`, with `extra` flags.
fn node_with(redis: &Redis, roles: &str, id: &str, extra: &[&str]) -> Imd {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--roles", roles, "--node-id", id];
    args.extend(SECRETS);
    args.extend_from_slice(extra);
    Imd::start(&args)
}

/// One gateway (with the dispatcher role) and two workers.
struct Cluster {
    redis: Redis,
    gateway: Imd,
    w1: Imd,
    w2: Imd,
}

impl Cluster {
    async fn start(redis: Redis) -> Cluster {
        Cluster::start_with(redis, &[]).await
    }

    /// [`Cluster::start`] with `extra` flags on every node.
    async fn start_with(redis: Redis, extra: &[&str]) -> Cluster {
        let gateway = node_with(&redis, "gateway,dispatcher", "gw1", extra);
        let w1 = node_with(&redis, "worker", "w1", extra);
        let w2 = node_with(&redis, "worker", "w2", extra);
        let c = Cluster {
            redis,
            gateway,
            w1,
            w2,
        };
        c.wait_for_nodes(&["gw1", "w1", "w2"]).await;
        c
    }

    /// Waits until the gateway's cluster view lists exactly `ids`, each worker with
    /// its own figures (the gateway reached it over RPC).
    async fn wait_for_nodes(&self, ids: &[&str]) {
        let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        let gw = &self.gateway;
        wait_until(FAILOVER_DEADLINE, &format!("cluster view {want:?}"), || {
            let want = want.clone();
            async move { cluster_ids(gw).await == want }
        })
        .await;
    }

    /// Connects `uid`'s `device` to `worker` and waits until its route is in Redis.
    async fn connect(&self, worker: &Imd, uid: &str, device: &str) -> WsClient {
        let ws = worker.ws_as(uid, device).await;
        let want = (device.to_owned(), worker.node_id.clone());
        wait_until(FRAME_DEADLINE, &format!("route of {uid}/{device}"), || {
            let want = want.clone();
            async move { routes(&self.redis, uid).await.contains(&want) }
        })
        .await;
        ws
    }
}

/// Ids of the nodes in `gateway`'s cluster view that it reached (a node only in the
/// registry has no version).
async fn cluster_ids(gateway: &Imd) -> BTreeSet<String> {
    let resp = gateway
        .http()
        .get("/admin/v1/cluster", Some(SECRETS[3]))
        .await;
    let view: ClusterInfo = serde_json::from_value(resp.assert_ok().clone()).expect("cluster view");
    view.nodes
        .into_iter()
        .filter(|n| !n.version.is_empty())
        .map(|n| n.node_id)
        .collect()
}

/// `uid`'s connection routes in Redis, as (device, node).
async fn routes(redis: &Redis, uid: &str) -> Vec<(String, String)> {
    let store = imd::store::RedisStore::connect(&redis.url())
        .await
        .expect("connect to redis");
    store
        .routes(&[uid.to_owned()])
        .await
        .expect("read routes")
        .remove(0)
}

/// The whole history of `conv`, read through `gateway`.
async fn history(gateway: &Imd, token: &str, conv: &str) -> Vec<Message> {
    let resp = gateway.http().history(token, conv, 0, Some(1000)).await;
    let page: HistoryResponse = serde_json::from_value(resp.assert_ok().clone()).expect("history");
    assert!(!page.more);
    page.msgs
}

/// Reads pushes until one carries message `id`; acks every push on the way.
async fn expect_push_of(ws: &mut WsClient, id: &str) -> (u64, Message) {
    let until = Instant::now() + FRAME_DEADLINE;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let (useq, msg) = ws.expect_push_within(left).await;
        ws.ack(&[useq]).await;
        if msg.id == id {
            return (useq, msg);
        }
    }
}

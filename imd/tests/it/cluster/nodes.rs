//! What a node needs to join a cluster: the cluster's secret on its RPC links, shared
//! secrets and a reachable Redis at start-up (or a clear refusal).

use shared::admin::ClusterInfo;

use super::{Cluster, FAILOVER_DEADLINE, SECRETS, cluster_ids};
use crate::common::{Imd, metric, wait_until};
use testkit::Redis;

/// The RPC links between nodes need the cluster's `--token-secret`: a worker started
/// with another one registers, but every handshake with it fails, so no node reaches
/// it (nor pushes to it), and the other workers stay reached.
#[tokio::test]
async fn rpc_links_need_the_clusters_secret() {
    let c = Cluster::start(Redis::standalone()).await;
    let url = c.redis.url();
    let stranger = Imd::start(&[
        "--redis",
        &url,
        "--roles",
        "worker",
        "--node-id",
        "w3",
        "--token-secret",
        "not-the-cluster-secret",
        "--admin-token",
        SECRETS[3],
    ]);
    let w3 = stranger.http();
    wait_until(
        FAILOVER_DEADLINE,
        "w3 refusing the others' links",
        || async {
            metric(&w3.metrics().await, "imd_rpc_handshake_failures_total")
                .is_some_and(|v| v >= 1.0)
        },
    )
    .await;
    let view = c
        .gateway
        .http()
        .get("/admin/v1/cluster", Some(SECRETS[3]))
        .await;
    let view: ClusterInfo = serde_json::from_value(view.assert_ok().clone()).expect("cluster view");
    let w3 = view.nodes.iter().find(|n| n.node_id == "w3");
    assert!(
        w3.is_some_and(|n| n.version.is_empty()),
        "w3 registered, not reached: {w3:?}"
    );
    assert_eq!(
        cluster_ids(&c.gateway).await,
        ["gw1", "w1", "w2"].map(String::from).into()
    );
}

/// Cluster mode refuses to start, with a clear message, without shared secrets, with
/// split roles and no Redis, and when Redis cannot be reached.
#[test]
fn cluster_mode_start_up_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .expect("run imd");
        assert!(!out.status.success(), "imd serve {args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--redis", "redis://127.0.0.1:1"]);
    assert!(
        err.contains("needs --token-secret and --admin-token"),
        "{err}"
    );
    let err = run(&["--roles", "worker"]);
    assert!(err.contains("splitting roles needs --redis"), "{err}");
    let mut unreachable = vec!["--redis", "redis://127.0.0.1:1"];
    unreachable.extend(SECRETS);
    let err = run(&unreachable);
    assert!(
        err.contains("connecting to Redis at redis://127.0.0.1:1"),
        "{err}"
    );
}

/// Nodes of different RPC versions refuse to link, at once and loudly: each logs an
/// error naming the peer and both versions, and the cluster view shows each node's
/// version (the other node registered, not reached).
#[tokio::test]
async fn nodes_of_different_rpc_versions_refuse_each_other_with_a_clear_error() {
    let redis = Redis::standalone();
    let url = redis.url();
    let args = |id: &'static str| {
        let mut a = vec!["--redis", url.as_str(), "--node-id", id];
        a.extend(SECRETS);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let n1 = Imd::builder()
        .args(
            args("n1")
                .into_iter()
                .chain(["--roles".into(), "gateway,dispatcher,worker".into()]),
        )
        .start();
    let n2 = Imd::builder()
        .args(
            args("n2")
                .into_iter()
                .chain(["--roles".into(), "worker".into()]),
        )
        .env("IMD_TEST_RPC_VERSION", "3")
        .start();
    let ours = imd::rpc::RPC_VERSION;
    for (node, peer, theirs) in [(&n1, "n2", 3), (&n2, "n1", ours)] {
        let want = format!("theirs={theirs}");
        wait_until(
            FAILOVER_DEADLINE,
            "an rpc version mismatch error in the log",
            || async {
                plain(&node.stderr()).lines().any(|l| {
                    l.contains("ERROR")
                        && l.contains("rpc version mismatch")
                        && l.contains(&format!("node={peer}"))
                        && l.contains(&want)
                })
            },
        )
        .await;
    }
    let view = n1.http().get("/admin/v1/cluster", Some(SECRETS[3])).await;
    let view: ClusterInfo = serde_json::from_value(view.assert_ok().clone()).expect("cluster view");
    let version = |id: &str| {
        view.nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(|n| (n.rpc_version, n.version.is_empty()))
    };
    assert_eq!(version("n1"), Some((ours, false)), "{view:?}");
    assert_eq!(
        version("n2"),
        Some((3, true)),
        "registered, not reached: {view:?}"
    );
}

/// `text` without the ANSI colour sequences of a terminal log (`ESC [ … m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

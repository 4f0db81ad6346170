//! Operating a cluster through its gateway: the admin API and imctl see and act on
//! connections held by every worker (blacklist kicks, connection lists, kicks, tail).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::ids::direct_conv;

use super::{Cluster, SECRETS, expect_push_of};
use crate::common;
use crate::common::Imd;
use testkit::Redis;

/// A blacklist entry added on the gateway kicks the user's connection on another
/// worker within one second, and leaves others alone.
#[tokio::test]
async fn blacklist_on_the_gateway_kicks_on_every_worker_within_a_second() {
    let c = Cluster::start(Redis::standalone()).await;
    let mut mallory = c.connect(&c.w2, "mallory", "m1").await;
    let mut mallory_too = c.connect(&c.w1, "mallory", "m2").await;
    let mut dave = c.connect(&c.w2, "dave", "d1").await;

    let started = Instant::now();
    c.gateway
        .http()
        .post_json(
            "/admin/v1/blacklist",
            Some(SECRETS[3]),
            &json!({"kind": "uid", "value": "mallory", "reason": "test"}),
        )
        .await
        .assert_ok();
    assert_eq!(mallory.expect_kick().await, "blacklisted");
    assert_eq!(mallory_too.expect_kick().await, "blacklisted");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "kicked on both workers after {took:?}"
    );
    dave.ping_pong().await;
    let refused = common::try_ws(
        &c.w1.ws_url(),
        common::Auth::Header(&c.w1.token("mallory", "m3")),
    )
    .await;
    assert_eq!(
        refused.err(),
        Some(403),
        "a blacklisted uid is refused at the door"
    );
}

/// The admin API of the gateway lists connections held by every worker, and an admin
/// kick reaches them.
#[tokio::test]
async fn admin_connections_span_workers() {
    let c = Cluster::start(Redis::standalone()).await;
    let _a = c.connect(&c.w1, "alice", "a1").await;
    let _b = c.connect(&c.w2, "bob", "b1").await;
    let mut b2 = c.connect(&c.w1, "bob", "b2").await;
    let resp = c
        .gateway
        .http()
        .get("/admin/v1/connections?limit=2", Some(SECRETS[3]))
        .await;
    let body: Value = resp.assert_ok().clone();
    let page: Vec<(String, String, String)> = body["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            (
                c["uid"].as_str().unwrap().to_owned(),
                c["device"].as_str().unwrap().to_owned(),
                c["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        page,
        [
            ("alice".into(), "a1".into(), "w1".into()),
            ("bob".into(), "b1".into(), "w2".into())
        ]
    );
    let next = body["next"].as_str().expect("a next cursor").to_owned();
    let resp = c
        .gateway
        .http()
        .get(
            &format!("/admin/v1/connections?after={next}"),
            Some(SECRETS[3]),
        )
        .await;
    assert_eq!(resp.assert_ok()["connections"][0]["device"], "b2");
    let kicked = c
        .gateway
        .http()
        .delete("/admin/v1/connections/bob", Some(SECRETS[3]))
        .await;
    assert_eq!(kicked.assert_ok()["kicked"], 2);
    assert_eq!(b2.expect_kick().await, "admin");
}

/// The built `imctl`, beside the `imd` under test (`bash .ci/test` builds every binary
/// of the workspace first).
fn imctl(gateway: &Imd) -> std::process::Command {
    let bin = testkit::sibling_bin(env!("CARGO_BIN_EXE_imd"), "imctl");
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--server",
        &format!("http://{}", gateway.addr),
        "--token",
        SECRETS[3],
    ]);
    cmd
}

/// Runs `imctl --json ARGS` to the end; asserts success and returns its stdout lines
/// as JSON.
fn imctl_json(gateway: &Imd, args: &[&str]) -> Vec<Value> {
    let out = imctl(gateway)
        .arg("--json")
        .args(args)
        .output()
        .expect("run imctl");
    assert!(
        out.status.success(),
        "imctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// imctl against a cluster's gateway: the cluster view, connections on both workers,
/// a tail that follows messages committed by the workers (not by the gateway), a
/// replay to a device on a worker, a blacklist and a kick.
#[tokio::test]
async fn imctl_works_against_a_cluster_gateway() {
    let c = Cluster::start(Redis::standalone()).await;
    let mut alice = c.connect(&c.w1, "alice", "a1").await;
    let mut bob = c.connect(&c.w2, "bob", "b1").await;

    let nodes: BTreeSet<String> = imctl_json(&c.gateway, &["cluster"])
        .iter()
        .map(|n| n["node_id"].as_str().expect("node_id").to_owned())
        .collect();
    assert_eq!(nodes, ["gw1", "w1", "w2"].map(String::from).into());
    let conns: Vec<(String, String)> = imctl_json(&c.gateway, &["conns"])
        .iter()
        .map(|c| {
            (
                c["uid"].as_str().unwrap().into(),
                c["node"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        conns,
        [("alice".into(), "w1".into()), ("bob".into(), "w2".into())]
    );

    // tail: both messages are committed by workers, over WebSocket.
    let mut tail = imctl(&c.gateway)
        .args([
            "--json",
            "tail",
            "conversation",
            &direct_conv("alice", "bob"),
            "--count",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn imctl tail");
    let mut stderr = std::io::BufReader::new(tail.stderr.take().expect("stderr"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).expect("tail's first line");
    assert!(line.contains("following"), "{line}");
    alice.send_to("bob", "t1", json!("over w1")).await;
    let first = alice.expect_sent("t1").await;
    expect_push_of(&mut bob, &first.id).await;
    bob.send_to("alice", "t2", json!("over w2")).await;
    let second = bob.expect_sent("t2").await;
    expect_push_of(&mut alice, &first.id).await;
    expect_push_of(&mut alice, &second.id).await;
    expect_push_of(&mut bob, &second.id).await;
    let out = tokio::task::spawn_blocking(move || tail.wait_with_output())
        .await
        .expect("join")
        .expect("tail output");
    assert!(out.status.success(), "tail exits after --count");
    let seqs: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert_eq!(seqs, [1, 2], "tail followed what the workers committed");

    // replay: bob's device on w2 gets its inbox again.
    let replayed = imctl_json(&c.gateway, &["replay", "bob", "--after", "0"]);
    assert_eq!(replayed[0]["messages"], 2);
    let again: Vec<u64> = [bob.expect_push().await.0, bob.expect_push().await.0].into();
    assert_eq!(again, [1, 2], "the whole inbox again, in order");

    imctl_json(
        &c.gateway,
        &["blacklist", "add", "uid", "alice", "--reason", "test"],
    );
    assert_eq!(alice.expect_kick().await, "blacklisted");
    let listed = imctl_json(&c.gateway, &["blacklist", "ls"]);
    assert_eq!(listed[0]["value"], "alice");
    let kicked = imctl_json(&c.gateway, &["kick", "bob"]);
    assert_eq!(kicked[0]["kicked"], 1);
    assert_eq!(bob.expect_kick().await, "admin");
}

//! The Redis registries (node discovery, connection routes) and the blacklist change
//! notification, on a standalone Redis and on a 3-node Redis Cluster (real
//! `redis-server` processes). `both!` makes a module per scenario with a `standalone`
//! and a `cluster` test, each on fresh servers.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use imd::store::{BlacklistStore, MessageStore, NewMessage, NodeInfo, Op, RedisStore, RouteAdded};
use shared::admin::{BlacklistEntry, BlacklistKind};
use tokio::sync::mpsc;

use crate::common::wait_until;
use testkit::Redis;

/// How long a registration with a short TTL may take to be seen as expired.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(5);
/// How soon a notification must reach a subscriber.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(1);
/// How long a subscription may take to come back after its connection is killed.
const RESUBSCRIBE_DEADLINE: Duration = Duration::from_secs(10);
/// The channel the store publishes blacklist changes on.
const CHANNEL: &str = "imd:{g}:blacklist:changed";

macro_rules! both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn standalone() {
                super::$scenario(super::Redis::standalone()).await;
            }

            #[tokio::test]
            async fn cluster() {
                super::$scenario(super::Redis::cluster()).await;
            }
        }
    )*};
}

both!(
    heartbeat_live_dead,
    routes_add_remove,
    routes_and_inbox_heads,
    clean_node_removes_only_its_routes,
    deregister_removes_node_and_routes,
    blacklist_notifications,
    subscription_survives_reconnect,
);

/// Ids of the live nodes.
async fn live_ids(s: &RedisStore) -> Vec<String> {
    s.live_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect()
}

async fn connect(redis: &Redis) -> RedisStore {
    let store = RedisStore::connect(&redis.url())
        .await
        .expect("connect to Redis");
    assert_eq!(store.is_cluster(), redis.is_cluster());
    store
}

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        roles: vec!["gateway".into(), "worker".into()],
        listen: format!("127.0.0.1:80{}", id.len()),
        rpc: Some("127.0.0.1:9000".into()),
        started_ms: 1_700_000_000_000,
        rpc_version: imd::rpc::RPC_VERSION,
    }
}

fn route(device: &str, node: &str) -> (String, String) {
    (device.into(), node.into())
}

async fn heartbeat_live_dead(redis: Redis) {
    let s = connect(&redis).await;
    assert_eq!(s.live_nodes().await.unwrap(), []);
    assert_eq!(s.dead_nodes().await.unwrap(), Vec::<String>::new());

    let short = node("n-short");
    let mut long = node("n-long");
    long.rpc = None;
    long.roles = vec!["dispatcher".into()];
    s.heartbeat(&short, Duration::from_millis(300))
        .await
        .unwrap();
    s.heartbeat(&long, Duration::from_secs(60)).await.unwrap();
    // By id.
    assert_eq!(s.live_nodes().await.unwrap(), [long.clone(), short.clone()]);
    assert_eq!(s.dead_nodes().await.unwrap(), Vec::<String>::new());

    // A heartbeat refreshes what is registered.
    long.listen = "127.0.0.1:9999".into();
    s.heartbeat(&long, Duration::from_secs(60)).await.unwrap();

    wait_until(
        EXPIRY_DEADLINE,
        "the short registration to expire",
        || async { s.dead_nodes().await.unwrap() == ["n-short"] },
    )
    .await;
    assert_eq!(s.live_nodes().await.unwrap(), [long.clone()]);

    // Dead until cleaned, then forgotten.
    assert_eq!(s.clean_node("n-short").await.unwrap(), 0);
    assert_eq!(s.dead_nodes().await.unwrap(), Vec::<String>::new());
    assert_eq!(s.live_nodes().await.unwrap(), [long.clone()]);

    // A node that comes back registers again.
    s.heartbeat(&short, Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.live_nodes().await.unwrap(), [long, short]);
}

async fn routes_add_remove(redis: Redis) {
    let s = connect(&redis).await;
    let users = |v: &[&str]| v.iter().map(|u| u.to_string()).collect::<Vec<_>>();

    let previous = |added: RouteAdded| added.previous;
    assert_eq!(previous(s.route_add("u1", "d1", "n1").await.unwrap()), None);
    // The same node again is no move.
    assert_eq!(previous(s.route_add("u1", "d1", "n1").await.unwrap()), None);
    // The device moved: the previous node is returned.
    assert_eq!(
        previous(s.route_add("u1", "d1", "n2").await.unwrap()),
        Some("n1".into())
    );
    assert_eq!(previous(s.route_add("u1", "d2", "n1").await.unwrap()), None);
    assert_eq!(previous(s.route_add("u2", "d1", "n1").await.unwrap()), None);

    assert_eq!(
        s.routes(&users(&["u2", "nobody", "u1"])).await.unwrap(),
        [
            vec![route("d1", "n1")],
            vec![],
            vec![route("d1", "n2"), route("d2", "n1")],
        ]
    );
    assert_eq!(
        s.routes(&[]).await.unwrap(),
        Vec::<Vec<(String, String)>>::new()
    );

    // Removal is conditional on the node still holding the device.
    assert!(!s.route_remove("u1", "d1", "n1").await.unwrap());
    assert!(s.route_remove("u1", "d1", "n2").await.unwrap());
    assert!(!s.route_remove("u1", "d1", "n2").await.unwrap());
    assert!(!s.route_remove("nobody", "d1", "n2").await.unwrap());
    assert_eq!(
        s.routes(&users(&["u1", "u2"])).await.unwrap(),
        [vec![route("d2", "n1")], vec![route("d1", "n1")]]
    );
}

/// A route write reads the user's inbox head with it, and `inbox_heads` reads many.
async fn routes_and_inbox_heads(redis: Redis) {
    let s = connect(&redis).await;
    let members = vec!["a".to_string(), "b".to_string()];
    for i in 0..3 {
        let op = Op::Message(NewMessage {
            id: format!("m{i}"),
            conv: "d:a~b".into(),
            from: "a".into(),
            cid: None,
            content: imd::store::Content::Body(serde_json::json!(i)),
            ts: 1,
            members: members.clone(),
        });
        s.commit(vec![op]).await.unwrap();
    }
    let added = s.route_add("a", "phone", "n1").await.unwrap();
    assert_eq!(added.inbox_head, 3);
    assert_eq!(
        s.route_add("nobody", "phone", "n1")
            .await
            .unwrap()
            .inbox_head,
        0
    );
    let uids = ["b", "nobody", "a"].map(String::from);
    assert_eq!(s.inbox_heads(&uids).await.unwrap(), [3, 0, 3]);
    assert!(s.inbox_heads(&[]).await.unwrap().is_empty());
}

async fn clean_node_removes_only_its_routes(redis: Redis) {
    let s = connect(&redis).await;
    let other = connect(&redis).await;
    s.heartbeat(&node("dying"), Duration::from_millis(300))
        .await
        .unwrap();
    s.heartbeat(&node("alive"), Duration::from_secs(60))
        .await
        .unwrap();

    // Enough users that the node's user set takes several SSCAN steps.
    let uids: Vec<String> = (0..1500).map(|i| format!("user-{i}")).collect();
    stream::iter(&uids)
        .map(|uid| s.route_add(uid, "phone", "dying"))
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    // A user with one device on each node, and one whose device moved away.
    s.route_add("both", "phone", "dying").await.unwrap();
    s.route_add("both", "web", "alive").await.unwrap();
    s.route_add("moved", "phone", "dying").await.unwrap();
    s.route_add("moved", "phone", "alive").await.unwrap();

    wait_until(EXPIRY_DEADLINE, "the dying node to expire", || async {
        s.dead_nodes().await.unwrap() == ["dying"]
    })
    .await;

    // Two cleaners at once (as every node may run one): each route goes once.
    let (a, b) = tokio::join!(s.clean_node("dying"), other.clean_node("dying"));
    assert_eq!(a.unwrap() + b.unwrap(), 1501);
    assert_eq!(s.clean_node("dying").await.unwrap(), 0);
    assert_eq!(s.dead_nodes().await.unwrap(), Vec::<String>::new());
    assert_eq!(live_ids(&s).await, ["alive"]);

    let routes = s
        .routes(&[
            "both".into(),
            "moved".into(),
            uids[0].clone(),
            uids[1499].clone(),
        ])
        .await
        .unwrap();
    assert_eq!(
        routes,
        [
            vec![route("web", "alive")],
            vec![route("phone", "alive")],
            vec![],
            vec![]
        ]
    );
}

async fn deregister_removes_node_and_routes(redis: Redis) {
    let s = connect(&redis).await;
    s.heartbeat(&node("leaving"), Duration::from_secs(60))
        .await
        .unwrap();
    s.heartbeat(&node("staying"), Duration::from_secs(60))
        .await
        .unwrap();
    s.route_add("u1", "d1", "leaving").await.unwrap();
    s.route_add("u1", "d2", "staying").await.unwrap();
    // u2's as a worker's round writes them: the round's users listed in one request.
    s.list_users("leaving", &["u2"]).await.unwrap();
    s.route_add_listed("u2", "d1", "leaving").await.unwrap();
    s.route_add_listed("u2", "d2", "leaving").await.unwrap();

    assert_eq!(s.deregister("leaving").await.unwrap(), 3);
    assert_eq!(live_ids(&s).await, ["staying"]);
    // Gone, not dead.
    assert_eq!(s.dead_nodes().await.unwrap(), Vec::<String>::new());
    assert_eq!(
        s.routes(&["u1".into(), "u2".into()]).await.unwrap(),
        [vec![route("d2", "staying")], vec![]]
    );
    assert_eq!(s.deregister("leaving").await.unwrap(), 0);
}

/// Waits for one `()` on `rx` within `deadline`.
async fn expect_notice(rx: &mut mpsc::Receiver<()>, deadline: Duration, what: &str) {
    match tokio::time::timeout(deadline, rx.recv()).await {
        Ok(Some(())) => {}
        Ok(None) => panic!("subscription ended while waiting for {what}"),
        Err(_) => panic!("no notification within {deadline:?}: {what}"),
    }
}

/// Drops whatever notifications are pending.
fn drain(rx: &mut mpsc::Receiver<()>) {
    while rx.try_recv().is_ok() {}
}

/// Subscribes on `sub` and waits for the first `()` (the subscription is confirmed).
async fn subscribe(sub: &RedisStore) -> mpsc::Receiver<()> {
    let mut rx = sub.subscribe_blacklist().await.expect("subscribe");
    expect_notice(
        &mut rx,
        RESUBSCRIBE_DEADLINE,
        "the subscription's first notice",
    )
    .await;
    rx
}

async fn blacklist_notifications(redis: Redis) {
    let publisher = connect(&redis).await;
    let subscriber = connect(&redis).await;
    let mut rx = subscribe(&subscriber).await;

    let entry = BlacklistEntry {
        kind: BlacklistKind::Uid,
        value: "mallory".into(),
        reason: None,
        expires_at: Some(10),
    };
    publisher.blacklist_put(entry.clone()).await.unwrap();
    expect_notice(&mut rx, NOTIFY_DEADLINE, "blacklist_put").await;
    // The change is stored before anyone hears of it.
    assert_eq!(
        subscriber.blacklist().await.unwrap(),
        std::slice::from_ref(&entry)
    );

    assert_eq!(publisher.blacklist_purge(20).await.unwrap(), 1);
    expect_notice(&mut rx, NOTIFY_DEADLINE, "blacklist_purge").await;
    assert_eq!(subscriber.blacklist().await.unwrap(), []);

    publisher.blacklist_put(entry).await.unwrap();
    expect_notice(&mut rx, NOTIFY_DEADLINE, "blacklist_put again").await;
    assert!(
        publisher
            .blacklist_remove(BlacklistKind::Uid, "mallory")
            .await
            .unwrap()
    );
    expect_notice(&mut rx, NOTIFY_DEADLINE, "blacklist_remove").await;

    publisher.publish_blacklist_changed().await.unwrap();
    expect_notice(&mut rx, NOTIFY_DEADLINE, "publish_blacklist_changed").await;

    // Every subscriber hears it, on any store.
    let mut rx2 = subscribe(&publisher).await;
    subscriber.publish_blacklist_changed().await.unwrap();
    expect_notice(&mut rx, NOTIFY_DEADLINE, "first subscriber").await;
    expect_notice(&mut rx2, NOTIFY_DEADLINE, "second subscriber").await;
}

/// Opens a plain connection to each server of `redis`.
async fn server_connections(redis: &Redis) -> Vec<redis::aio::MultiplexedConnection> {
    let mut conns = Vec::new();
    for url in redis.url().split(',') {
        let client = redis::Client::open(url).expect("a Redis URL");
        conns.push(
            client
                .get_multiplexed_async_connection()
                .await
                .expect("connect"),
        );
    }
    conns
}

/// Shard-channel subscribers of [`CHANNEL`], summed over the servers.
async fn shard_subscribers(conns: &mut [redis::aio::MultiplexedConnection]) -> u64 {
    let mut n = 0;
    for c in conns {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(CHANNEL)
            .query_async(c)
            .await
            .expect("PUBSUB SHARDNUMSUB");
        n += count;
    }
    n
}

async fn subscription_survives_reconnect(redis: Redis) {
    let subscriber = connect(&redis).await;
    let mut rx = subscribe(&subscriber).await;
    let mut admin = server_connections(&redis).await;
    assert_eq!(shard_subscribers(&mut admin).await, 1);
    // Nothing pending, so the next notice is the reconnection's.
    assert!(rx.try_recv().is_err());

    // Cut every client connection but our own, on every server.
    for c in &mut admin {
        for kind in ["normal", "pubsub"] {
            let _: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg(kind)
                .arg("SKIPME")
                .arg("yes")
                .query_async(c)
                .await
                .expect("CLIENT KILL");
        }
    }

    // The subscription comes back by itself and says so: a notification may have been
    // missed meanwhile.
    expect_notice(
        &mut rx,
        RESUBSCRIBE_DEADLINE,
        "the notice after reconnecting",
    )
    .await;
    wait_until(
        RESUBSCRIBE_DEADLINE,
        "the subscription to be back on the server",
        || {
            let mut admin = admin.clone();
            async move { shard_subscribers(&mut admin).await == 1 }
        },
    )
    .await;

    // A store of its own: the kill also cut the other stores' connections, and the
    // first request on a cut standalone connection fails before it reconnects.
    let publisher = connect(&redis).await;
    drain(&mut rx);
    publisher.publish_blacklist_changed().await.unwrap();
    expect_notice(&mut rx, NOTIFY_DEADLINE, "a change after reconnecting").await;

    // Dropping the receiver ends the subscription.
    drop(rx);
    wait_until(RESUBSCRIBE_DEADLINE, "the subscription to end", || {
        let mut admin = admin.clone();
        async move { shard_subscribers(&mut admin).await == 0 }
    })
    .await;
}

/// Every registry call can run in a spawned task (its future is `Send`), as the
/// cluster's background tasks run them.
#[tokio::test]
async fn calls_run_in_spawned_tasks() {
    let redis = Redis::standalone();
    let s = connect(&redis).await;
    tokio::spawn(async move {
        s.heartbeat(&node("n1"), Duration::from_secs(60))
            .await
            .unwrap();
        s.route_add("u1", "d1", "n1").await.unwrap();
        assert_eq!(s.live_nodes().await.unwrap().len(), 1);
        assert_eq!(s.dead_nodes().await.unwrap().len(), 0);
        assert_eq!(s.routes(&["u1".into()]).await.unwrap().len(), 1);
        assert!(s.route_remove("u1", "d1", "n1").await.unwrap());
        assert_eq!(s.clean_node("n1").await.unwrap(), 0);
        assert_eq!(s.deregister("n1").await.unwrap(), 0);
        s.publish_blacklist_changed().await.unwrap();
        s.subscribe_blacklist().await.unwrap();
        s.blacklist_put(BlacklistEntry {
            kind: BlacklistKind::Ip,
            value: "::1".into(),
            reason: None,
            expires_at: None,
        })
        .await
        .unwrap();
        assert_eq!(s.blacklist_purge(0).await.unwrap(), 0);
    })
    .await
    .unwrap();
}

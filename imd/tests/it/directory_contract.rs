//! The `DirectoryStore` contract, run against every backend: the embedded store, a
//! standalone Redis and a 3-node Redis Cluster (real `redis-server` processes). Each
//! property is an async fn over `&dyn DirectoryStore`; `contract!` makes a module per
//! property with one test per backend (`<property>::embedded`, `::standalone`,
//! `::cluster`), each on fresh storage.

use std::time::Duration;

use imd::store::{DirectoryStore, EmbeddedStore, RedisStore, ServiceState};
use shared::admin::{BlacklistEntry, BlacklistKind};

use testkit::Redis;

/// A store and whatever must live as long as it (its directory, its servers).
struct Backend {
    store: Box<dyn DirectoryStore>,
    _keep: Box<dyn std::any::Any>,
}

fn embedded() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
    Backend {
        store: Box::new(store),
        _keep: Box::new(dir),
    }
}

async fn redis(redis: Redis) -> Backend {
    let store = RedisStore::connect(&redis.url())
        .await
        .expect("connect to Redis");
    assert_eq!(store.is_cluster(), redis.is_cluster());
    Backend {
        store: Box::new(store),
        _keep: Box::new(redis),
    }
}

async fn standalone() -> Backend {
    redis(Redis::standalone()).await
}

async fn cluster() -> Backend {
    redis(Redis::cluster()).await
}

macro_rules! contract {
    ($($property:ident),* $(,)?) => {$(
        mod $property {
            #[tokio::test]
            async fn embedded() {
                let b = super::embedded();
                super::$property(b.store.as_ref()).await;
            }

            #[tokio::test]
            async fn standalone() {
                let b = super::standalone().await;
                super::$property(b.store.as_ref()).await;
            }

            #[tokio::test]
            async fn cluster() {
                let b = super::cluster().await;
                super::$property(b.store.as_ref()).await;
            }
        }
    )*};
}

contract!(
    blacklist_put_replace_remove,
    blacklist_purge,
    shops_and_reverse_index,
    groups,
    member_groups,
    assign_waits_oldest_first,
    assign_moves_the_load,
    close_fixes_loads_and_waiting,
);

fn entry(
    kind: BlacklistKind,
    value: &str,
    reason: &str,
    expires_at: Option<i64>,
) -> BlacklistEntry {
    BlacklistEntry {
        kind,
        value: value.into(),
        reason: Some(reason.into()),
        expires_at,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn blacklist_put_replace_remove(s: &dyn DirectoryStore) {
    assert_eq!(s.blacklist().await.unwrap(), []);
    let ip = entry(BlacklistKind::Ip, "10.1.0.0/16", "scan", None);
    let bob = entry(BlacklistKind::Uid, "bob", "spam", Some(i64::MAX));
    let alice = entry(BlacklistKind::Uid, "alice", "spam", None);
    // Same value, other kind: a separate entry.
    let ip_bob = entry(BlacklistKind::Ip, "bob", "odd", None);
    for e in [&bob, &ip, &alice, &ip_bob] {
        s.blacklist_put(e.clone()).await.unwrap();
    }
    // Listed by kind, then value.
    assert_eq!(
        s.blacklist().await.unwrap(),
        [ip.clone(), ip_bob.clone(), alice.clone(), bob.clone()]
    );

    // Putting the same (kind, value) replaces the entry.
    let bob2 = entry(BlacklistKind::Uid, "bob", "abuse", Some(1));
    s.blacklist_put(bob2.clone()).await.unwrap();
    assert_eq!(
        s.blacklist().await.unwrap(),
        [ip.clone(), ip_bob.clone(), alice.clone(), bob2]
    );

    assert!(s.blacklist_remove(BlacklistKind::Uid, "bob").await.unwrap());
    assert!(!s.blacklist_remove(BlacklistKind::Uid, "bob").await.unwrap());
    assert!(
        !s.blacklist_remove(BlacklistKind::Uid, "nobody")
            .await
            .unwrap()
    );
    assert!(s.blacklist_remove(BlacklistKind::Ip, "bob").await.unwrap());
    assert_eq!(s.blacklist().await.unwrap(), [ip, alice]);
}

async fn blacklist_purge(s: &dyn DirectoryStore) {
    let forever = entry(BlacklistKind::Uid, "forever", "r", None);
    let early = entry(BlacklistKind::Uid, "early", "r", Some(10));
    let at = entry(BlacklistKind::Ip, "::1", "r", Some(20));
    let late = entry(BlacklistKind::Ip, "10.0.0.1", "r", Some(30));
    for e in [&forever, &early, &at, &late] {
        s.blacklist_put(e.clone()).await.unwrap();
    }
    assert_eq!(s.blacklist_purge(5).await.unwrap(), 0);
    // Expired entries stay listed until purged.
    assert_eq!(s.blacklist().await.unwrap().len(), 4);
    // An entry expires at its instant: live means `expires_at > now`.
    assert_eq!(s.blacklist_purge(20).await.unwrap(), 2);
    assert_eq!(
        s.blacklist().await.unwrap(),
        [late.clone(), forever.clone()]
    );
    assert_eq!(s.blacklist_purge(20).await.unwrap(), 0);
    assert_eq!(s.blacklist_purge(i64::MAX).await.unwrap(), 1);
    assert_eq!(s.blacklist().await.unwrap(), [forever]);
}

async fn shops_and_reverse_index(s: &dyn DirectoryStore) {
    assert_eq!(s.shop_agents("s1").await.unwrap(), None);
    assert_eq!(s.agent_shops("a1").await.unwrap(), Vec::<String>::new());

    s.set_shop_agents("s1", strings(&["a2", "a1"]))
        .await
        .unwrap();
    s.set_shop_agents("s0", strings(&["a2"])).await.unwrap();
    // The order given is kept.
    assert_eq!(
        s.shop_agents("s1").await.unwrap(),
        Some(strings(&["a2", "a1"]))
    );
    // Shops are listed sorted.
    assert_eq!(s.agent_shops("a2").await.unwrap(), ["s0", "s1"]);
    assert_eq!(s.agent_shops("a1").await.unwrap(), ["s1"]);

    // Removing an agent from a shop removes the shop from its reverse index.
    s.set_shop_agents("s1", strings(&["a1", "a3"]))
        .await
        .unwrap();
    assert_eq!(s.agent_shops("a2").await.unwrap(), ["s0"]);
    assert_eq!(s.agent_shops("a1").await.unwrap(), ["s1"]);
    assert_eq!(s.agent_shops("a3").await.unwrap(), ["s1"]);

    // A shop set to no agents is set (Some), not unknown.
    s.set_shop_agents("s0", Vec::new()).await.unwrap();
    assert_eq!(s.shop_agents("s0").await.unwrap(), Some(Vec::new()));
    assert_eq!(s.agent_shops("a2").await.unwrap(), Vec::<String>::new());
    // Setting agents again after an empty list works from the empty list.
    s.set_shop_agents("s0", strings(&["a1"])).await.unwrap();
    assert_eq!(s.agent_shops("a1").await.unwrap(), ["s0", "s1"]);
}

async fn groups(s: &dyn DirectoryStore) {
    assert_eq!(s.group_members("g").await.unwrap(), None);
    s.set_group_members("g", strings(&["x", "y"]))
        .await
        .unwrap();
    s.set_group_members("h", strings(&["z"])).await.unwrap();
    assert_eq!(
        s.group_members("g").await.unwrap(),
        Some(strings(&["x", "y"]))
    );
    s.set_group_members("g", strings(&["y"])).await.unwrap();
    assert_eq!(s.group_members("g").await.unwrap(), Some(strings(&["y"])));
    assert_eq!(s.group_members("h").await.unwrap(), Some(strings(&["z"])));
    s.set_group_members("g", Vec::new()).await.unwrap();
    assert_eq!(s.group_members("g").await.unwrap(), Some(Vec::new()));
}

/// `member_groups` is `group_members` reversed, after every change of members.
async fn member_groups(s: &dyn DirectoryStore) {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert!(s.member_groups("x").await.unwrap().is_empty());
    s.set_group_members("g", strings(&["x", "y"]))
        .await
        .unwrap();
    s.set_group_members("h", strings(&["x", "z"]))
        .await
        .unwrap();
    assert_eq!(
        sorted(s.member_groups("x").await.unwrap()),
        strings(&["g", "h"])
    );
    assert_eq!(s.member_groups("y").await.unwrap(), strings(&["g"]));
    // A member dropped from a group loses it; one added gains it.
    s.set_group_members("g", strings(&["y", "w"]))
        .await
        .unwrap();
    assert_eq!(s.member_groups("x").await.unwrap(), strings(&["h"]));
    assert_eq!(s.member_groups("w").await.unwrap(), strings(&["g"]));
    assert_eq!(s.member_groups("y").await.unwrap(), strings(&["g"]));
    s.set_group_members("h", Vec::new()).await.unwrap();
    assert!(s.member_groups("x").await.unwrap().is_empty());
    assert!(s.member_groups("z").await.unwrap().is_empty());
    // A uid that is a prefix of another's does not see its groups.
    s.set_group_members("k", strings(&["xx"])).await.unwrap();
    assert!(s.member_groups("x").await.unwrap().is_empty());
    assert_eq!(s.member_groups("xx").await.unwrap(), strings(&["k"]));
}

fn state(shop: &str, agent: Option<&str>, open: bool) -> Option<ServiceState> {
    Some(ServiceState {
        shop: shop.into(),
        agent: agent.map(Into::into),
        open,
    })
}

async fn assign_waits_oldest_first(s: &dyn DirectoryStore) {
    // Waiting times have millisecond resolution (ties sort by conv); the pauses make
    // each conversation start waiting in a later millisecond than the one before.
    let gap = Duration::from_millis(5);
    assert_eq!(s.service("s:s1~c3").await.unwrap(), None);
    assert_eq!(s.waiting("s1").await.unwrap(), Vec::<String>::new());
    s.assign("s:s1~c3", "s1", None).await.unwrap();
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c1", "s1", None).await.unwrap();
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c2", "s1", None).await.unwrap();
    s.assign("s:s2~c9", "s2", None).await.unwrap();
    assert_eq!(s.service("s:s1~c3").await.unwrap(), state("s1", None, true));
    // Oldest first, not by name.
    assert_eq!(
        s.waiting("s1").await.unwrap(),
        ["s:s1~c3", "s:s1~c1", "s:s1~c2"]
    );
    assert_eq!(s.waiting("s2").await.unwrap(), ["s:s2~c9"]);

    // Waiting again keeps its place in the queue.
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c3", "s1", None).await.unwrap();
    assert_eq!(
        s.waiting("s1").await.unwrap(),
        ["s:s1~c3", "s:s1~c1", "s:s1~c2"]
    );

    // Assigning takes it off the queue; no load moves for waiting ones.
    s.assign("s:s1~c1", "s1", Some("a1")).await.unwrap();
    assert_eq!(
        s.service("s:s1~c1").await.unwrap(),
        state("s1", Some("a1"), true)
    );
    assert_eq!(s.waiting("s1").await.unwrap(), ["s:s1~c3", "s:s1~c2"]);
    assert_eq!(s.agent_loads(&strings(&["a1"])).await.unwrap(), [1]);

    // Back to waiting (the agent left): its load goes, it queues behind the others.
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c1", "s1", None).await.unwrap();
    assert_eq!(s.service("s:s1~c1").await.unwrap(), state("s1", None, true));
    assert_eq!(
        s.waiting("s1").await.unwrap(),
        ["s:s1~c3", "s:s1~c2", "s:s1~c1"]
    );
    assert_eq!(s.agent_loads(&strings(&["a1"])).await.unwrap(), [0]);
}

async fn assign_moves_the_load(s: &dyn DirectoryStore) {
    let agents = strings(&["a1", "a2", "never"]);
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [0, 0, 0]);
    assert_eq!(s.agent_loads(&[]).await.unwrap(), Vec::<u64>::new());
    s.assign("s:s1~c1", "s1", Some("a1")).await.unwrap();
    s.assign("s:s1~c2", "s1", Some("a1")).await.unwrap();
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [2, 0, 0]);
    // Reassigning moves the count from the previous agent to the new one.
    s.assign("s:s1~c2", "s1", Some("a2")).await.unwrap();
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [1, 1, 0]);
    assert_eq!(
        s.service("s:s1~c2").await.unwrap(),
        state("s1", Some("a2"), true)
    );
    // Assigning to the same agent again changes nothing.
    s.assign("s:s1~c2", "s1", Some("a2")).await.unwrap();
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [1, 1, 0]);
    // In the order asked, repeats included.
    assert_eq!(
        s.agent_loads(&strings(&["a2", "a1", "a2"])).await.unwrap(),
        [1, 1, 1]
    );
    assert_eq!(s.waiting("s1").await.unwrap(), Vec::<String>::new());
}

async fn close_fixes_loads_and_waiting(s: &dyn DirectoryStore) {
    let agents = strings(&["a1", "a2"]);
    assert!(!s.close_service("s:s1~none").await.unwrap());

    s.assign("s:s1~c1", "s1", Some("a1")).await.unwrap();
    s.assign("s:s1~c2", "s1", Some("a1")).await.unwrap();
    s.assign("s:s1~c3", "s1", None).await.unwrap();
    assert!(s.close_service("s:s1~c1").await.unwrap());
    assert!(!s.close_service("s:s1~c1").await.unwrap());
    // A closed conversation keeps its shop and agent.
    assert_eq!(
        s.service("s:s1~c1").await.unwrap(),
        state("s1", Some("a1"), false)
    );
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [1, 0]);

    // Closing a waiting one takes it off the queue.
    assert!(s.close_service("s:s1~c3").await.unwrap());
    assert_eq!(s.waiting("s1").await.unwrap(), Vec::<String>::new());
    assert_eq!(
        s.service("s:s1~c3").await.unwrap(),
        state("s1", None, false)
    );

    // Reopening a closed conversation counts for the new agent only: the closed one
    // already gave its load back.
    s.assign("s:s1~c1", "s1", Some("a2")).await.unwrap();
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [1, 1]);
    assert_eq!(
        s.service("s:s1~c1").await.unwrap(),
        state("s1", Some("a2"), true)
    );

    // Reopening one to wait queues it again.
    s.assign("s:s1~c3", "s1", None).await.unwrap();
    assert_eq!(s.waiting("s1").await.unwrap(), ["s:s1~c3"]);

    assert!(s.close_service("s:s1~c2").await.unwrap());
    assert!(s.close_service("s:s1~c1").await.unwrap());
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [0, 0]);
}

//! The `DirectoryStore` contract, run against every backend: the embedded store, a
//! standalone Redis and a 3-node Redis Cluster (real `redis-server` processes). Each
//! property is an async fn over `&dyn DirectoryStore`; `contract!` makes a module per
//! property with one test per backend (`<property>::embedded`, `::standalone`,
//! `::cluster`), each on fresh storage.

use std::time::Duration;

use imd::store::{
    Admit, Assigned, DirectoryStore, EmbeddedStore, PushToken, Rated, RedisStore, ServiceState,
    Shop, ShopCounters,
};
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
    assign_respects_the_cap,
    assign_in_turn,
    opening_answering_rating,
    shop_counters,
    away_flags,
    shop_settings,
    decision_lease,
    push_register_replace_remove,
    push_bound_replaces_the_oldest,
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

/// A conversation's state as (shop, agent, open).
type View = Option<(String, Option<String>, bool)>;

fn state(shop: &str, agent: Option<&str>, open: bool) -> View {
    Some((shop.into(), agent.map(Into::into), open))
}

async fn st(s: &dyn DirectoryStore, conv: &str) -> View {
    let state: Option<ServiceState> = s.service(conv).await.unwrap();
    state.map(|x| (x.shop, x.agent, x.open))
}

async fn assign_waits_oldest_first(s: &dyn DirectoryStore) {
    // Waiting times have millisecond resolution (ties sort by conv); the pauses make
    // each conversation start waiting in a later millisecond than the one before.
    let gap = Duration::from_millis(5);
    assert_eq!(st(s, "s:s1~c3").await, None);
    assert_eq!(s.waiting("s1").await.unwrap(), Vec::<String>::new());
    s.assign("s:s1~c3", "s1", None, Admit::ANY).await.unwrap();
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c1", "s1", None, Admit::ANY).await.unwrap();
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c2", "s1", None, Admit::ANY).await.unwrap();
    s.assign("s:s2~c9", "s2", None, Admit::ANY).await.unwrap();
    assert_eq!(st(s, "s:s1~c3").await, state("s1", None, true));
    // Oldest first, not by name.
    assert_eq!(
        s.waiting("s1").await.unwrap(),
        ["s:s1~c3", "s:s1~c1", "s:s1~c2"]
    );
    assert_eq!(s.waiting("s2").await.unwrap(), ["s:s2~c9"]);

    // Waiting again keeps its place in the queue.
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c3", "s1", None, Admit::ANY).await.unwrap();
    assert_eq!(
        s.waiting("s1").await.unwrap(),
        ["s:s1~c3", "s:s1~c1", "s:s1~c2"]
    );

    // Assigning takes it off the queue; no load moves for waiting ones.
    s.assign("s:s1~c1", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    assert_eq!(st(s, "s:s1~c1").await, state("s1", Some("a1"), true));
    assert_eq!(s.waiting("s1").await.unwrap(), ["s:s1~c3", "s:s1~c2"]);
    assert_eq!(s.agent_loads(&strings(&["a1"])).await.unwrap(), [1]);

    // Back to waiting (the agent left): its load goes, it queues behind the others.
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c1", "s1", None, Admit::ANY).await.unwrap();
    assert_eq!(st(s, "s:s1~c1").await, state("s1", None, true));
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
    s.assign("s:s1~c1", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    s.assign("s:s1~c2", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [2, 0, 0]);
    // Reassigning moves the count from the previous agent to the new one.
    s.assign("s:s1~c2", "s1", Some("a2"), Admit::ANY)
        .await
        .unwrap();
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [1, 1, 0]);
    assert_eq!(st(s, "s:s1~c2").await, state("s1", Some("a2"), true));
    // Assigning to the same agent again changes nothing.
    s.assign("s:s1~c2", "s1", Some("a2"), Admit::ANY)
        .await
        .unwrap();
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

    s.assign("s:s1~c1", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    s.assign("s:s1~c2", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    s.assign("s:s1~c3", "s1", None, Admit::ANY).await.unwrap();
    assert!(s.close_service("s:s1~c1").await.unwrap());
    assert!(!s.close_service("s:s1~c1").await.unwrap());
    // A closed conversation keeps its shop and agent.
    assert_eq!(st(s, "s:s1~c1").await, state("s1", Some("a1"), false));
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [1, 0]);

    // Closing a waiting one takes it off the queue.
    assert!(s.close_service("s:s1~c3").await.unwrap());
    assert_eq!(s.waiting("s1").await.unwrap(), Vec::<String>::new());
    assert_eq!(st(s, "s:s1~c3").await, state("s1", None, false));

    // Reopening a closed conversation counts for the new agent only: the closed one
    // already gave its load back.
    s.assign("s:s1~c1", "s1", Some("a2"), Admit::ANY)
        .await
        .unwrap();
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [1, 1]);
    assert_eq!(st(s, "s:s1~c1").await, state("s1", Some("a2"), true));

    // Reopening one to wait queues it again.
    s.assign("s:s1~c3", "s1", None, Admit::ANY).await.unwrap();
    assert_eq!(s.waiting("s1").await.unwrap(), ["s:s1~c3"]);

    assert!(s.close_service("s:s1~c2").await.unwrap());
    assert!(s.close_service("s:s1~c1").await.unwrap());
    assert_eq!(s.agent_loads(&agents).await.unwrap(), [0, 0]);
}

async fn assign_respects_the_cap(s: &dyn DirectoryStore) {
    let cap = Admit {
        max_open: 2,
        in_turn: false,
    };
    assert_eq!(
        s.assign("s:s1~c1", "s1", Some("a1"), cap).await.unwrap(),
        Assigned::Done
    );
    assert_eq!(
        s.assign("s:s1~c2", "s1", Some("a1"), cap).await.unwrap(),
        Assigned::Done
    );
    // A third is refused and changes nothing.
    assert_eq!(
        s.assign("s:s1~c3", "s1", Some("a1"), cap).await.unwrap(),
        Assigned::Full
    );
    assert_eq!(st(s, "s:s1~c3").await, None);
    assert_eq!(loads(s, &["a1", "a2"]).await, [2, 0]);
    // Assigning again to the agent that holds it is not one more.
    assert_eq!(
        s.assign("s:s1~c2", "s1", Some("a1"), cap).await.unwrap(),
        Assigned::Done
    );
    assert_eq!(loads(s, &["a1", "a2"]).await, [2, 0]);
    // A transfer to a full agent is refused too.
    assert_eq!(
        s.assign("s:s1~c3", "s1", Some("a2"), cap).await.unwrap(),
        Assigned::Done
    );
    assert_eq!(
        s.assign("s:s1~c3", "s1", Some("a1"), cap).await.unwrap(),
        Assigned::Full
    );
    assert_eq!(st(s, "s:s1~c3").await, state("s1", Some("a2"), true));
    // A close frees a place.
    assert!(s.close_service("s:s1~c1").await.unwrap());
    assert_eq!(
        s.assign("s:s1~c3", "s1", Some("a1"), cap).await.unwrap(),
        Assigned::Done
    );
    assert_eq!(loads(s, &["a1", "a2"]).await, [2, 0]);
    // No cap: anything goes.
    assert_eq!(
        s.assign("s:s1~c4", "s1", Some("a1"), Admit::ANY)
            .await
            .unwrap(),
        Assigned::Done
    );
    assert_eq!(loads(s, &["a1", "a2"]).await, [3, 0]);
}

async fn assign_in_turn(s: &dyn DirectoryStore) {
    let gap = Duration::from_millis(5);
    let turn = Admit {
        max_open: 0,
        in_turn: true,
    };
    // New, with nobody waiting: in turn.
    assert_eq!(
        s.assign("s:s1~c0", "s1", Some("a1"), turn).await.unwrap(),
        Assigned::Done
    );
    s.assign("s:s1~c1", "s1", None, Admit::ANY).await.unwrap();
    tokio::time::sleep(gap).await;
    s.assign("s:s1~c2", "s1", None, Admit::ANY).await.unwrap();
    // The second waiting, and a new one, wait for the first.
    for conv in ["s:s1~c2", "s:s1~c5"] {
        assert_eq!(
            s.assign(conv, "s1", Some("a1"), turn).await.unwrap(),
            Assigned::OutOfTurn,
            "{conv}"
        );
    }
    assert_eq!(st(s, "s:s1~c5").await, None);
    assert_eq!(s.waiting("s1").await.unwrap(), ["s:s1~c1", "s:s1~c2"]);
    // Another shop's queue is its own.
    assert_eq!(
        s.assign("s:s2~c1", "s2", Some("a1"), turn).await.unwrap(),
        Assigned::Done
    );
    // A transfer of an assigned one is never out of turn.
    assert_eq!(
        s.assign("s:s1~c0", "s1", Some("a2"), turn).await.unwrap(),
        Assigned::Done
    );
    // The head goes, then the next.
    assert_eq!(
        s.assign("s:s1~c1", "s1", Some("a1"), turn).await.unwrap(),
        Assigned::Done
    );
    assert_eq!(
        s.assign("s:s1~c2", "s1", Some("a1"), turn).await.unwrap(),
        Assigned::Done
    );
    assert_eq!(s.waiting("s1").await.unwrap(), Vec::<String>::new());
    assert_eq!(
        s.assign("s:s1~c5", "s1", Some("a2"), turn).await.unwrap(),
        Assigned::Done
    );
}

async fn opening_answering_rating(s: &dyn DirectoryStore) {
    let before = shared::time::now_ms();
    assert_eq!(s.rate("s:s1~c1", 5).await.unwrap(), Rated::NotClosed);
    assert_eq!(s.first_reply("s:s1~c1").await.unwrap(), None);
    s.assign("s:s1~c1", "s1", None, Admit::ANY).await.unwrap();
    let opened = s.service("s:s1~c1").await.unwrap().unwrap();
    // Within a second of the test's clock (Redis keeps its own).
    assert!(
        (opened.since - before).abs() < 1_000,
        "{} vs {before}",
        opened.since
    );
    assert!(!opened.answered && !opened.rated);
    // Assigning the waiting one keeps when it opened.
    s.assign("s:s1~c1", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    assert_eq!(
        s.service("s:s1~c1").await.unwrap().unwrap().since,
        opened.since
    );
    // The first answer is timed once.
    let took = s
        .first_reply("s:s1~c1")
        .await
        .unwrap()
        .expect("the first answer");
    assert!(took < 60_000, "{took}");
    assert_eq!(s.first_reply("s:s1~c1").await.unwrap(), None);
    // Rated once closed, once.
    assert_eq!(s.rate("s:s1~c1", 4).await.unwrap(), Rated::NotClosed);
    assert!(s.close_service("s:s1~c1").await.unwrap());
    assert_eq!(s.first_reply("s:s1~c1").await.unwrap(), None);
    assert_eq!(s.rate("s:s1~c1", 4).await.unwrap(), Rated::Done);
    assert_eq!(s.rate("s:s1~c1", 5).await.unwrap(), Rated::Already);
    // Opened again, it is new: not answered, not rated, and rated again once closed.
    s.assign("s:s1~c1", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    let again = s.service("s:s1~c1").await.unwrap().unwrap();
    assert!(!again.answered && !again.rated && again.since >= opened.since);
    assert!(s.first_reply("s:s1~c1").await.unwrap().is_some());
    assert!(s.close_service("s:s1~c1").await.unwrap());
    assert_eq!(s.rate("s:s1~c1", 2).await.unwrap(), Rated::Done);
}

async fn shop_counters(s: &dyn DirectoryStore) {
    assert_eq!(
        s.shop_counters("s1").await.unwrap(),
        ShopCounters::default()
    );
    s.assign("s:s1~c1", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    s.assign("s:s1~c2", "s1", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    s.assign("s:s1~c3", "s1", None, Admit::ANY).await.unwrap();
    s.assign("s:s2~c1", "s2", Some("a1"), Admit::ANY)
        .await
        .unwrap();
    let c = s.shop_counters("s1").await.unwrap();
    assert_eq!((c.open, c.waiting), (2, 1));
    // A transfer moves no open count; waiting → assigned, and back, do.
    s.assign("s:s1~c2", "s1", Some("a2"), Admit::ANY)
        .await
        .unwrap();
    s.assign("s:s1~c3", "s1", Some("a2"), Admit::ANY)
        .await
        .unwrap();
    s.assign("s:s1~c1", "s1", None, Admit::ANY).await.unwrap();
    let c = s.shop_counters("s1").await.unwrap();
    assert_eq!((c.open, c.waiting), (2, 1));
    assert!(s.close_service("s:s1~c2").await.unwrap());
    assert!(s.close_service("s:s1~c1").await.unwrap());
    let c = s.shop_counters("s1").await.unwrap();
    assert_eq!((c.open, c.waiting), (1, 0));
    s.count_first_response("s1", 3).await.unwrap();
    s.count_first_response("s1", 3).await.unwrap();
    s.count_first_response("s1", 0).await.unwrap();
    assert_eq!(s.rate("s:s1~c2", 5).await.unwrap(), Rated::Done);
    assert_eq!(s.rate("s:s1~c1", 2).await.unwrap(), Rated::Done);
    let c = s.shop_counters("s1").await.unwrap();
    assert_eq!(c.first_response, [1, 0, 0, 2]);
    assert_eq!((c.ratings, c.rating_sum), (2, 7));
    // Shops count apart.
    let other = s.shop_counters("s2").await.unwrap();
    assert_eq!(
        (other.open, other.ratings, other.first_response.len()),
        (1, 0, 0)
    );
}

async fn away_flags(s: &dyn DirectoryStore) {
    let agents = strings(&["a1", "a2", "a1"]);
    assert_eq!(s.away(&agents).await.unwrap(), [false, false, false]);
    assert_eq!(s.away(&[]).await.unwrap(), Vec::<bool>::new());
    s.set_away("a1", true).await.unwrap();
    s.set_away("a1", true).await.unwrap();
    assert_eq!(s.away(&agents).await.unwrap(), [true, false, true]);
    s.set_away("a1", false).await.unwrap();
    s.set_away("a2", false).await.unwrap();
    assert_eq!(s.away(&agents).await.unwrap(), [false, false, false]);
}

async fn shop_settings(s: &dyn DirectoryStore) {
    assert_eq!(s.shop("s1").await.unwrap(), None);
    assert_eq!(s.shops().await.unwrap(), Vec::<String>::new());
    let settings = Shop {
        agents: strings(&["a1", "a2"]),
        max_open: 3,
        welcome: Some(serde_json::json!({"text": "Hello"})),
        away: Some(serde_json::json!({"text": "Back at 9"})),
    };
    s.set_shop("s1", settings.clone()).await.unwrap();
    s.set_shop_agents("s0", strings(&["a2"])).await.unwrap();
    assert_eq!(s.shop("s1").await.unwrap(), Some(settings.clone()));
    assert_eq!(s.shops().await.unwrap(), ["s0", "s1"]);
    assert_eq!(s.agent_shops("a2").await.unwrap(), ["s0", "s1"]);
    // Setting the agents alone keeps the rest, and moves the reverse index.
    s.set_shop_agents("s1", strings(&["a3"])).await.unwrap();
    let now = s.shop("s1").await.unwrap().unwrap();
    assert_eq!((now.max_open, now.welcome), (3, settings.welcome));
    assert_eq!(s.agent_shops("a2").await.unwrap(), ["s0"]);
    assert_eq!(s.agent_shops("a3").await.unwrap(), ["s1"]);
}

async fn decision_lease(s: &dyn DirectoryStore) {
    assert!(s.try_decide("s:s1~c1", "t1", 10_000).await.unwrap());
    if !s.shared() {
        // One process: its own lock is the only one.
        assert!(s.try_decide("s:s1~c1", "t2", 10_000).await.unwrap());
        return;
    }
    assert!(!s.try_decide("s:s1~c1", "t2", 10_000).await.unwrap());
    assert!(s.try_decide("s:s1~c2", "t2", 10_000).await.unwrap());
    // Only its holder gives it back.
    s.end_decide("s:s1~c1", "t2").await.unwrap();
    assert!(!s.try_decide("s:s1~c1", "t2", 10_000).await.unwrap());
    s.end_decide("s:s1~c1", "t1").await.unwrap();
    assert!(s.try_decide("s:s1~c1", "t2", 10_000).await.unwrap());
    // A holder that never gives it back loses it when it expires.
    assert!(s.try_decide("s:s1~c3", "t1", 50).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !s.try_decide("s:s1~c3", "t2", 10_000).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn loads(s: &dyn DirectoryStore, agents: &[&str]) -> Vec<u64> {
    s.agent_loads(&strings(agents)).await.unwrap()
}

fn push_token(device: &str, token: &str, at: i64) -> PushToken {
    PushToken {
        device: device.into(),
        provider: "apns".into(),
        token: token.into(),
        at,
    }
}

fn devices(tokens: &[PushToken]) -> Vec<&str> {
    tokens.iter().map(|t| t.device.as_str()).collect()
}

async fn push_register_replace_remove(s: &dyn DirectoryStore) {
    assert_eq!(s.push_tokens("bob").await.unwrap(), []);
    let removed = s
        .push_register("bob", push_token("tablet", "t1", 10), 16)
        .await
        .unwrap();
    assert!(removed.is_empty());
    s.push_register("bob", push_token("phone", "p1", 20), 16)
        .await
        .unwrap();
    // Another user's tokens are apart, even for a device of the same name.
    s.push_register("carol", push_token("phone", "c1", 30), 16)
        .await
        .unwrap();
    assert_eq!(
        s.push_tokens("bob").await.unwrap(),
        [
            push_token("phone", "p1", 20),
            push_token("tablet", "t1", 10)
        ],
        "by device"
    );
    // A device registers again: its token is replaced, nothing is added.
    let fcm = PushToken {
        provider: "fcm".into(),
        ..push_token("phone", "p2", 40)
    };
    s.push_register("bob", fcm.clone(), 16).await.unwrap();
    assert_eq!(
        s.push_tokens("bob").await.unwrap(),
        [fcm, push_token("tablet", "t1", 10)]
    );
    assert!(s.push_unregister("bob", "phone").await.unwrap());
    assert!(!s.push_unregister("bob", "phone").await.unwrap());
    assert!(!s.push_unregister("nobody", "phone").await.unwrap());
    assert_eq!(devices(&s.push_tokens("bob").await.unwrap()), ["tablet"]);
    assert_eq!(devices(&s.push_tokens("carol").await.unwrap()), ["phone"]);
}

async fn push_bound_replaces_the_oldest(s: &dyn DirectoryStore) {
    for (device, at) in [("a", 30), ("b", 10), ("c", 20)] {
        let removed = s
            .push_register("bob", push_token(device, device, at), 3)
            .await
            .unwrap();
        assert!(removed.is_empty(), "within the bound");
    }
    // Past the bound, the registration longest ago goes.
    let removed = s
        .push_register("bob", push_token("d", "d", 40), 3)
        .await
        .unwrap();
    assert_eq!(removed, ["b"]);
    assert_eq!(
        devices(&s.push_tokens("bob").await.unwrap()),
        ["a", "c", "d"]
    );
    // A registration again moves a device to the newest; no one goes.
    let removed = s
        .push_register("bob", push_token("c", "c2", 50), 3)
        .await
        .unwrap();
    assert!(removed.is_empty());
    let removed = s
        .push_register("bob", push_token("e", "e", 40), 3)
        .await
        .unwrap();
    assert_eq!(
        removed,
        ["a"],
        "a (30) is older than c (50, registered again)"
    );
    // Equal times (d and e at 40): the smaller device id goes first.
    let removed = s
        .push_register("bob", push_token("f", "f", 60), 3)
        .await
        .unwrap();
    assert_eq!(removed, ["d"]);
    // The device just registered never goes, even when its clock is behind.
    let removed = s
        .push_register("bob", push_token("g", "g", 1), 3)
        .await
        .unwrap();
    assert_eq!(removed, ["e"]);
    assert_eq!(
        devices(&s.push_tokens("bob").await.unwrap()),
        ["c", "f", "g"]
    );
    // Only this user's devices count.
    s.push_register("carol", push_token("x", "x", 0), 3)
        .await
        .unwrap();
    assert_eq!(s.push_tokens("bob").await.unwrap().len(), 3);
}

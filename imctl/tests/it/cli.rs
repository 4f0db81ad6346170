//! The built `imctl` against a live `imd`: each command does what the issue says, seen
//! from the devices it acts on, and every failure is one clear line with a non-zero exit.

use std::time::Duration;

use serde_json::Value;

use crate::common;
use crate::common::{Imd, Running, bare_imctl};

#[tokio::test]
async fn blacklist_add_kicks_ls_shows_rm_lets_back_in() {
    let imd = Imd::start();
    let mut mallory = imd.device("mallory", "laptop").await;
    let mut bystander = imd.device("alice", "laptop").await;

    let out = imd.run(&[
        "blacklist",
        "add",
        "uid",
        "mallory",
        "--ttl",
        "1h",
        "--reason",
        "spam",
    ]);
    assert!(
        out.ok().contains("blacklisted uid mallory"),
        "{}",
        out.stdout
    );
    mallory.expect_kick("blacklisted").await;
    assert!(!imd.can_connect("mallory", "laptop").await, "blocked");

    let ls = imd.run(&["blacklist", "ls", "--json"]).json_lines();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0]["kind"], "uid");
    assert_eq!(ls[0]["value"], "mallory");
    assert_eq!(ls[0]["reason"], "spam");
    let expires = ls[0]["expires_at"].as_i64().expect("expires_at");
    let in_ms = expires - imctl::output::now_ms();
    assert!((3_590_000..=3_600_000).contains(&in_ms), "{in_ms}");
    let human = imd.run(&["blacklist", "ls"]);
    let lines: Vec<&str> = human.ok().lines().collect();
    assert_eq!(lines[0], "KIND  VALUE    REASON  EXPIRES");
    assert_eq!(lines[1], "uid   mallory  spam    in 1h");

    // An ip range: stored canonical, removed by the value `ls` shows (with its `/`).
    let ip = imd
        .run(&["--json", "blacklist", "add", "ip", "10.1.2.3/16"])
        .json_lines();
    assert_eq!(ip[0]["value"], "10.1.0.0/16");
    imd.run(&["blacklist", "rm", "ip", "10.1.0.0/16"]).ok();

    let rm = imd.run(&["blacklist", "rm", "uid", "mallory"]);
    assert!(rm.ok().contains("removed uid mallory"), "{}", rm.stdout);
    assert!(
        imd.run(&["blacklist", "ls"])
            .ok()
            .contains("the blacklist is empty")
    );
    let mut back = imd.device("mallory", "laptop").await;
    let mine = imd.token("mallory", "laptop");
    imd.send(&mine, "mallory", "i am back").await;
    assert_eq!(back.push().await.1, "i am back");

    imd.run(&["blacklist", "rm", "uid", "mallory"])
        .fails(1, "not found");
    // Nobody else was touched.
    bystander.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn conns_shows_each_device_and_kick_disconnects_them() {
    let imd = Imd::start();
    let mut laptop = imd.device("alice", "laptop").await;
    let mut phone = imd.device("alice", "phone").await;
    let mut bob = imd.device("bob", "tablet").await;

    let all = imd.run(&["conns"]);
    let lines: Vec<&str> = all.ok().lines().collect();
    assert_eq!(lines.len(), 4, "{}", all.stdout);
    assert!(
        lines[0].starts_with("UID    DEVICE  PLATFORM  NODE"),
        "{}",
        lines[0]
    );
    for (line, (uid, device)) in
        lines[1..]
            .iter()
            .zip([("alice", "laptop"), ("alice", "phone"), ("bob", "tablet")])
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &cols[..4],
            &[uid, device, "web", imd.node_id.as_str()],
            "{line}"
        );
        assert!(cols[4].starts_with("127.0.0.1:"), "{line}");
        assert!(
            line.ends_with("just now") || line.ends_with("s ago"),
            "{line}"
        );
    }

    let alice = imd.run(&["conns", "--uid", "alice", "--json"]).json_lines();
    let devices: Vec<&str> = alice
        .iter()
        .map(|c| c["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["laptop", "phone"]);
    assert!(alice.iter().all(|c| c["node"] == imd.node_id.as_str()));
    let on_node = imd
        .run(&["conns", "--node", &imd.node_id, "--json"])
        .json_lines();
    assert_eq!(on_node.len(), 3);
    assert!(
        imd.run(&["conns", "--node", "elsewhere"])
            .ok()
            .contains("no connections on elsewhere")
    );

    let kick = imd.run(&["kick", "alice"]);
    assert_eq!(kick.ok().trim(), "kicked 2 devices of alice");
    laptop.expect_kick("admin").await;
    phone.expect_kick("admin").await;
    assert!(
        imd.run(&["conns", "--uid", "alice"])
            .ok()
            .contains("alice has no connections")
    );
    assert_eq!(
        imd.run(&["conns", "--json"]).json_lines().len(),
        1,
        "bob stays"
    );
    bob.expect_silence(Duration::from_millis(50)).await;

    imd.run(&["kick", "alice"])
        .fails(1, "not found: \"alice\" has no connections");
}

#[tokio::test]
async fn tail_prints_messages_sent_while_it_runs_in_order() {
    let imd = Imd::start();
    let alice = imd.token("alice", "laptop");
    let mut cmd = imd.imctl();
    cmd.args(["tail", "conversation", "d:alice~bob", "--count", "5"]);
    let mut tail = Running::spawn(cmd);
    tail.stderr_until("following d:alice~bob");
    for i in 1..=5 {
        imd.send(&alice, "bob", &format!("message {i}")).await;
    }
    for i in 1..=5 {
        let line = tail.line();
        assert!(
            line.starts_with(&format!("#{i}  "))
                && line.ends_with(&format!("  alice: message {i}")),
            "{line}"
        );
    }
    assert_eq!(tail.wait(), 0, "exits after --count");

    // From a seq, as JSON: the stored ones, then the live one, gapless.
    let mut cmd = imd.imctl();
    cmd.args([
        "--json",
        "tail",
        "conversation",
        "d:alice~bob",
        "--from-seq",
        "4",
        "--count",
        "3",
    ]);
    let tail = Running::spawn(cmd);
    let seqs: Vec<u64> = (0..2)
        .map(|_| {
            serde_json::from_str::<Value>(&tail.line()).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [4, 5]);
    imd.send(&alice, "bob", "message 6").await;
    let six: Value = serde_json::from_str(&tail.line()).unwrap();
    assert_eq!(
        (six["seq"].as_u64(), six["body"]["text"].as_str()),
        (Some(6), Some("message 6"))
    );
}

#[tokio::test]
async fn replay_repushes_exactly_the_range_asked_for() {
    let imd = Imd::start();
    let alice = imd.token("alice", "laptop");
    let mut bob = imd.device("bob", "phone").await;
    for i in 1..=5 {
        imd.send(&alice, "bob", &format!("m{i}")).await;
    }
    for i in 1..=5 {
        assert_eq!(bob.push().await, (i, format!("m{i}")));
    }

    let out = imd.run(&["replay", "bob", "--after", "1", "--until", "4"]);
    assert_eq!(
        out.ok().trim(),
        "pushed 3 messages (useq 2..=4) to 1 device of bob"
    );
    for i in 2..=4 {
        assert_eq!(bob.push().await, (i, format!("m{i}")));
    }
    bob.expect_silence(Duration::from_millis(300)).await;

    let json = imd
        .run(&["--json", "replay", "bob", "--after", "4"])
        .json_lines();
    assert_eq!(json[0]["messages"], 1);
    assert_eq!(json[0]["devices"], 1);
    assert_eq!(bob.push().await, (5, "m5".to_owned()));
    bob.expect_silence(Duration::from_millis(300)).await;

    assert_eq!(
        imd.run(&["replay", "carol", "--after", "0"]).ok().trim(),
        "pushed nothing: carol has no device online"
    );
    imd.run(&["replay", "bob", "--after", "3", "--until", "2"])
        .fails(1, "--until must be above --after");
}

#[tokio::test]
async fn a_long_replay_goes_in_paced_batches() {
    // The smallest outbox, 16, makes imd push at most 8 entries per replay call.
    let imd = Imd::start_with(&["--outbox-capacity", "16"]);
    let alice = imd.token("alice", "laptop");
    let mut bob = imd.device("bob", "phone").await;
    for i in 1..=20 {
        imd.send(&alice, "bob", &format!("m{i}")).await;
        assert_eq!(bob.push().await, (i, format!("m{i}")));
    }
    // imctl waits for bob's acks between batches: bob must read while it runs.
    let cmd = imd.imctl();
    let replay = tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        common::Run::of(
            cmd.args(["replay", "bob", "--after", "0", "--until", "19"])
                .output()
                .unwrap(),
            &["replay"],
        )
    });
    for i in 1..=19 {
        assert_eq!(bob.push().await, (i, format!("m{i}")));
    }
    let out = replay.await.unwrap();
    assert_eq!(
        out.ok().trim(),
        "pushed 19 messages (useq 1..=19) to 1 device of bob, in 3 batches"
    );
    bob.expect_silence(Duration::from_millis(300)).await;

    // A device that does not ack stops the replay, with the command that resumes it.
    let mut cmd = imd.imctl();
    let out = tokio::task::spawn_blocking(move || {
        let args = ["replay", "bob", "--after", "0", "--ack-wait", "300ms"];
        common::Run::of(cmd.args(args).output().unwrap(), &args)
    })
    .await
    .unwrap();
    out.fails(
        1,
        "replay paused after useq 8 (8 messages pushed so far): the devices of bob did not \
         ack the last batch within 300ms; resume with `imctl replay bob --after 8`",
    );
    for i in 1..=8 {
        assert_eq!(bob.push().await, (i, format!("m{i}")));
    }
    bob.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn cluster_reports_the_live_connection() {
    let imd = Imd::start();
    let _alice = imd.device("alice", "laptop").await;
    let nodes = imd.run(&["--json", "cluster"]).json_lines();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node_id"], imd.node_id.as_str());
    assert_eq!(nodes[0]["connections"], 1);
    assert_eq!(nodes[0]["listen"], imd.addr.to_string());
    assert_eq!(nodes[0]["rpc_version"], 2, "the RPC protocol version");
    let human = imd.run(&["cluster"]);
    let lines: Vec<&str> = human.ok().lines().collect();
    assert!(lines[0].starts_with("NODE"), "{}", lines[0]);
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[0], imd.node_id);
    assert_eq!(cols[1], "all");
    assert_eq!(cols[4], "2", "RPC: {}", lines[1]);
    assert_eq!(cols[6], "1", "CONNS: {}", lines[1]);
}

#[tokio::test]
async fn shop_agents_and_group_members_show_and_set() {
    let imd = Imd::start();
    let _ann = imd.device("ann", "pc").await;
    imd.run(&["shop", "agents", "s1"])
        .fails(1, "not found: no such shop \"s1\"");
    imd.run(&["shop", "agents", "s1", "ann", "bob"]).ok();
    let json = imd
        .wait_json(&["shop", "agents", "s1"], "ann online", |l| {
            l[0]["agents"][0]["online"] == true
        })
        .await;
    assert_eq!(
        json[0],
        serde_json::json!({"shop": "s1", "max_open": 0, "agents": [
            {"uid": "ann", "online": true, "available": true, "open": 0},
            {"uid": "bob", "online": false, "available": false, "open": 0},
        ]})
    );
    let shown = imd.run(&["shop", "agents", "s1"]);
    let lines: Vec<&str> = shown.ok().lines().collect();
    assert_eq!(
        lines,
        [
            "AGENT  ONLINE  STATUS     OPEN/CAP",
            "ann    yes     available  0/-",
            "bob    no      -          0/-",
        ]
    );
    imd.run(&["shop", "agents", "s1", "--clear"]).ok();
    assert_eq!(
        imd.run(&["shop", "agents", "s1"]).ok().trim(),
        "shop s1 has no agents"
    );

    imd.run(&["group", "members", "team", "ann", "carol"]).ok();
    let json = imd
        .run(&["--json", "group", "members", "team"])
        .json_lines();
    assert_eq!(json[0]["members"], serde_json::json!(["ann", "carol"]));
    imd.run(&["group", "members", "team", "--clear"]).ok();
    assert!(
        imd.run(&["group", "members", "team"])
            .ok()
            .contains("group team has nobody")
    );
    imd.run(&["group", "members", "team", "not a uid!"])
        .fails(1, "400 bad_request");
}

/// `imctl shop stats s1` as JSON, once `cond` holds of it.
async fn stats_when(imd: &Imd, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    imd.wait_json(&["shop", "stats", "s1"], what, |l| cond(&l[0]))
        .await
        .remove(0)
}

/// `imctl shop agents s1`'s table.
fn agents_table(imd: &Imd) -> Vec<String> {
    imd.run(&["shop", "agents", "s1"])
        .ok()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn shop_stats_and_agents_show_availability_load_queue_and_ratings() {
    let imd = Imd::start();
    // A new shop made by its settings, then its agents: the agents keep the settings.
    let set = imd.run(&[
        "shop",
        "set",
        "s1",
        "--max-open",
        "1",
        "--welcome",
        "Hi, how can we help?",
        "--away",
        "Back at 9",
    ]);
    assert_eq!(
        set.ok().trim(),
        "created shop s1: 0 agents, at most 1 open per agent, welcome \"Hi, how can we \
         help?\", away \"Back at 9\"; add agents with `imctl shop agents s1 UID…`"
    );
    imd.run(&["shop", "agents", "s1", "ann", "bob"]).ok();
    let settings = serde_json::json!({
        "shop": "s1",
        "agents": ["ann", "bob"],
        "max_open": 1,
        "welcome": {"text": "Hi, how can we help?"},
        "away": {"text": "Back at 9"},
    });
    assert_eq!(
        imd.run(&["--json", "shop", "show", "s1"]).json_lines(),
        std::slice::from_ref(&settings)
    );
    let shown = imd.run(&["shop", "show", "s1"]);
    assert_eq!(
        shown.ok().lines().collect::<Vec<_>>(),
        [
            "SHOP  AGENTS   CAP  WELCOME               AWAY",
            "s1    ann,bob  1    Hi, how can we help?  Back at 9",
        ]
    );

    // ann connects as an agent, bob stays offline; carol's conversation goes to ann,
    // which fills her cap, so dave's waits.
    let ann = imd.agent_token("ann", "desk");
    let _ann_desk = imd.device_with(&ann).await;
    stats_when(&imd, "ann online", |s| s["agents_online"] == 1).await;
    let carol = imd.token("carol", "phone");
    let sent = imd
        .send_json(
            &carol,
            &serde_json::json!({"shop": "s1", "body": {"text": "is the blue one in stock?"}}),
        )
        .await;
    let conv = sent["msg"]["conv"].as_str().expect("conv").to_owned();
    stats_when(&imd, "carol's conversation open", |s| s["open"] == 1).await;
    let dave = imd.token("dave", "phone");
    imd.send_json(
        &dave,
        &serde_json::json!({"shop": "s1", "body": {"text": "hello?"}}),
    )
    .await;
    stats_when(&imd, "dave waiting", |s| s["waiting"] == 1).await;
    // ann answers carol: the shop's first response.
    imd.send_json(
        &ann,
        &serde_json::json!({"conv": conv, "body": {"text": "yes, two left"}}),
    )
    .await;
    let stats = stats_when(&imd, "a first response", |s| {
        s["first_response_ms"]["count"] == 1
    })
    .await;
    let p50 = stats["first_response_ms"]["p50"].as_u64().expect("p50");
    assert_eq!(
        stats,
        serde_json::json!({
            "shop": "s1",
            "agents_online": 1,
            "agents_available": 1,
            "open": 1,
            "waiting": 1,
            "max_open": 1,
            "first_response_ms": {"count": 1, "p50": p50, "p90": p50, "p99": p50},
            "rating": {"count": 0, "avg": null},
            "agents": [
                {"uid": "ann", "online": true, "available": true, "open": 1},
                {"uid": "bob", "online": false, "available": false, "open": 0},
            ],
        })
    );
    let human = imd.run(&["shop", "stats", "s1"]);
    let lines: Vec<&str> = human.ok().lines().collect();
    assert_eq!(
        lines[0],
        "SHOP  AGENTS  ONLINE  AVAILABLE  OPEN  WAITING  CAP  ANSWERED  P50    P90    P99    \
         RATINGS  AVG"
    );
    let p = imctl::output::latency(p50);
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "s1", "2", "1", "1", "1", "1", "1", "1", &p, &p, &p, "0", "-"
        ],
        "{}",
        lines[1]
    );
    assert_eq!(
        agents_table(&imd),
        [
            "AGENT  ONLINE  STATUS     OPEN/CAP",
            "ann    yes     available  1/1",
            "bob    no      -          0/1",
        ]
    );

    // ann steps away: she keeps carol, takes nobody new.
    imd.client_call(
        reqwest::Method::PUT,
        "agent/status",
        &ann,
        &serde_json::json!({"status": "away"}),
    )
    .await;
    stats_when(&imd, "ann away", |s| s["agents_available"] == 0).await;
    assert_eq!(
        agents_table(&imd),
        [
            "AGENT  ONLINE  STATUS  OPEN/CAP",
            "ann    yes     away    1/1",
            "bob    no      -       0/1",
        ]
    );

    // Carol's conversation closes and she rates it; dave still waits, as ann is away.
    imd.run(&["conv", "close", &conv]).ok();
    imd.client_call(
        reqwest::Method::POST,
        &format!("conversations/{conv}/rating"),
        &carol,
        &serde_json::json!({"score": 4}),
    )
    .await;
    let stats = stats_when(&imd, "a rating", |s| s["rating"]["count"] == 1).await;
    assert_eq!(stats["rating"]["avg"], 4.0);
    assert_eq!(
        (stats["open"].as_u64(), stats["waiting"].as_u64()),
        (Some(0), Some(1))
    );
    let human = imd.run(&["shop", "stats", "s1"]);
    let row = human.ok().lines().nth(1).expect("a row").to_owned();
    assert!(row.ends_with("  1        4.0"), "{row}");
    assert_eq!(agents_table(&imd)[1], "ann    yes     away    0/1");

    // Back: she takes dave from the queue.
    imd.client_call(
        reqwest::Method::PUT,
        "agent/status",
        &ann,
        &serde_json::json!({"status": "available"}),
    )
    .await;
    stats_when(&imd, "dave assigned", |s| {
        s["waiting"] == 0 && s["open"] == 1
    })
    .await;
    assert_eq!(agents_table(&imd)[1], "ann    yes     available  1/1");

    // Settings change alone, agents and the other message stay; every shop is listed.
    let set = imd.run(&["shop", "set", "s1", "--max-open", "0", "--no-welcome"]);
    assert_eq!(
        set.ok().trim(),
        "updated shop s1: 2 agents, no cap, no welcome message, away \"Back at 9\""
    );
    let mut now = settings;
    now["max_open"] = 0.into();
    now.as_object_mut().unwrap().remove("welcome");
    assert_eq!(
        imd.run(&["--json", "shop", "show", "s1"]).json_lines(),
        [now]
    );
    imd.run(&["shop", "agents", "s0", "bob"]).ok();
    let all = imd.run(&["--json", "shop", "stats"]).json_lines();
    let names: Vec<&str> = all.iter().map(|s| s["shop"].as_str().unwrap()).collect();
    assert_eq!(names, ["s0", "s1"]);
    let human = imd.run(&["shop", "stats"]);
    let rows: Vec<&str> = human.ok().lines().collect();
    assert_eq!(rows.len(), 3, "{}", human.stdout);
    assert!(
        rows[1].starts_with("s0  ") && rows[2].starts_with("s1  "),
        "{rows:?}"
    );

    // Unknown shops and bad settings are one clear line each.
    for args in [
        &["shop", "stats", "nope"][..],
        &["shop", "agents", "nope"],
        &["shop", "show", "nope"],
    ] {
        imd.run(args).fails(1, "not found: no such shop \"nope\"");
    }
    imd.run(&["shop", "set", "s1", "--max-open", "10001"])
        .fails(2, "must be 0 (no cap) to 10000");
    imd.run(&["shop", "set", "s1", "--welcome", ""])
        .fails(2, "the text is empty");
    imd.run(&["shop", "set", "s1"]).fails(2, "--max-open");
    imd.run(&["shop", "set", "not a shop!", "--max-open", "1"])
        .fails(1, "400 bad_request");
}

#[tokio::test]
async fn conv_recall_close_and_transfer_act_and_say_so() {
    let imd = Imd::start();
    let alice = imd.token("alice", "laptop");
    imd.send(&alice, "bob", "my card number is 4111").await;
    let recalled = imd.run(&["conv", "recall", "d:alice~bob", "1"]);
    assert!(
        recalled.ok().contains("recalled #1 of d:alice~bob"),
        "{}",
        recalled.stdout
    );
    let mut tail = imd.imctl();
    tail.args([
        "tail",
        "conversation",
        "d:alice~bob",
        "--from-seq",
        "1",
        "--count",
        "2",
    ]);
    let tail = Running::spawn(tail);
    assert!(tail.line().ends_with("  alice: (recalled)"));
    assert!(tail.line().ends_with("  alice: [recalled #1 by admin]"));
    imd.run(&["conv", "recall", "d:alice~bob", "9"])
        .fails(1, "not found");

    imd.run(&["shop", "agents", "s1", "ann", "bob"]).ok();
    let carol = imd.token("carol", "phone");
    let _ann = imd.device("ann", "desk").await;
    let sent = imd
        .send_json(&carol, &serde_json::json!({"shop": "s1", "body": "hi"}))
        .await;
    let conv = sent["msg"]["conv"].as_str().expect("conv").to_owned();
    let shown = imd.run(&["--json", "conv", "show", &conv]).json_lines();
    assert_eq!(shown[0]["agent"], "ann", "{shown:?}");
    assert!(
        imd.run(&["conv", "transfer", &conv, "bob"])
            .ok()
            .contains(&format!("transferred {conv} to bob"))
    );
    let shown = imd.run(&["--json", "conv", "show", &conv]).json_lines();
    assert_eq!(
        (shown[0]["agent"].as_str(), shown[0]["open"].as_bool()),
        (Some("bob"), Some(true))
    );
    assert!(imd.run(&["conv", "close", &conv]).ok().contains("closed"));
    let shown = imd.run(&["conv", "show", &conv]);
    assert!(shown.ok().contains("closed"), "{}", shown.stdout);
    imd.run(&["conv", "close", &conv]).fails(1, "not found");
}

#[tokio::test]
async fn user_erase_leaves_tombstones_and_says_how_many() {
    let imd = Imd::start();
    let alice = imd.token("alice", "laptop");
    let bob = imd.token("bob", "phone");
    imd.send(&alice, "bob", "my card number is 4111").await;
    imd.send(&bob, "alice", "thanks").await;
    imd.send(&alice, "bob", "and the code is 123").await;
    let erased = imd.run(&["user", "erase", "alice"]);
    assert_eq!(erased.ok().trim(), "erased 2 messages of alice");
    let mut tail = imd.imctl();
    tail.args([
        "tail",
        "conversation",
        "d:alice~bob",
        "--from-seq",
        "1",
        "--count",
        "3",
    ]);
    let tail = Running::spawn(tail);
    assert!(tail.line().ends_with("  alice: (erased)"));
    assert!(tail.line().ends_with("  bob: thanks"));
    assert!(tail.line().ends_with("  alice: (erased)"));
    let again = imd.run(&["--json", "user", "erase", "alice"]).json_lines();
    assert_eq!(again[0], serde_json::json!({"uid": "alice", "erased": 0}));
}

/// A webhook to a port where nothing listens: `status` shows the failures, `parked`
/// lists what failed past the retry window, `redrive` stops at the first failure.
#[tokio::test]
async fn webhooks_status_parked_and_redrive() {
    let nobody = format!("http://127.0.0.1:{}/hook", testkit::free_port());
    let imd = Imd::start_with(&[
        "--webhook-url",
        &nobody,
        "--webhook-secret",
        "whsec-test",
        "--webhook-retry-for",
        "1s",
        "--webhook-backoff-max",
        "200ms",
    ]);
    let alice = imd.token("alice", "laptop");
    imd.send(&alice, "bob", "order 1042?").await;
    imd.send(&alice, "bob", "hello?").await;
    let mut parked = Vec::new();
    testkit::wait_until(
        std::time::Duration::from_secs(20),
        "two events parked",
        || {
            let lines = imd.run(&["--json", "webhooks", "parked"]).json_lines();
            let n = lines.len();
            parked = lines;
            async move { n == 2 }
        },
    )
    .await;
    assert_eq!(parked[0]["conv"], "d:alice~bob");
    assert_eq!(
        (parked[0]["seq"].as_u64(), parked[1]["seq"].as_u64()),
        (Some(1), Some(2))
    );
    let table = imd.run(&["webhooks", "parked"]);
    let table = table.ok();
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.contains("d:alice~bob"), "{table}");

    let status = imd.run(&["webhooks", "status"]);
    let status = status.ok();
    assert!(status.contains("down (probing)"), "{status}");
    assert!(status.contains("2 now"), "{status}");
    let redrive = imd.run(&["webhooks", "redrive"]);
    let redrive = redrive.ok();
    assert_eq!(
        redrive.trim(),
        "re-drove 0 parked events; stopped at a failure (the receiver may still be down)"
    );
}

#[tokio::test]
async fn every_error_is_one_clear_line_and_a_non_zero_exit() {
    let imd = Imd::start();

    // Server down: the URL is named.
    let run = |cmd: &mut std::process::Command, args: &[&str]| {
        common::Run::of(cmd.args(args).output().expect("run imctl"), args)
    };
    let down = run(
        bare_imctl().args(["--server", "http://127.0.0.1:1", "--token", "t"]),
        &["cluster"],
    );
    let line = down.fails(1, "cannot reach imd at http://127.0.0.1:1");
    assert_eq!(line.lines().count(), 1, "{line}");
    let down = run(
        bare_imctl().args(["--server", "http://127.0.0.1:1", "--token", "t"]),
        &["tail", "conversation", "d:a~b"],
    );
    down.fails(1, "cannot reach imd at http://127.0.0.1:1");

    // Wrong admin token, and a client token: each says which.
    imd.run(&["--token", "not-the-admin-token", "conns"])
        .fails(1, "the admin token was refused by");
    let client = imd.token("alice", "laptop");
    imd.run(&["--token", &client, "blacklist", "ls"])
        .fails(1, "that is a client token, not the admin token (403)");

    // Unknown uid or conversation.
    imd.run(&["kick", "nobody"]).fails(1, "not found");
    imd.run(&["tail", "conversation", "nonsense"])
        .fails(1, "not found: no such conversation");

    // Bad arguments: clap's message, exit 2.
    for (args, needle) in [
        (&["replay", "bob"][..], "--after"),
        (&["blacklist", "add", "user", "x"], "unknown blacklist kind"),
        (&["blacklist", "add", "uid", "x", "--ttl", "soon"], "--ttl"),
        (&["frobnicate"], "unrecognized subcommand"),
    ] {
        imd.run(args).fails(2, needle);
    }
    // The console needs a terminal (stdin here is /dev/null, stdout a pipe).
    imd.run(&["tui"]).fails(1, "imctl tui needs a terminal");
    run(
        bare_imctl().args(["--server", "ftp://x", "--token", "t"]),
        &["cluster"],
    )
    .fails(1, "invalid server URL");

    // No token anywhere; then the data dir's, as `imd admin-token` reads it.
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = bare_imctl();
    cmd.env("IMCTL_SERVER", imd.url())
        .env("IMD_DATA_DIR", empty.path());
    run(&mut cmd, &["cluster"]).fails(1, "no admin token: pass --token or set IMCTL_TOKEN");
    let mut cmd = bare_imctl();
    cmd.env("IMCTL_SERVER", imd.url())
        .arg("--data-dir")
        .arg(imd.data_dir());
    let ok = run(&mut cmd, &["--json", "cluster"]);
    assert_eq!(ok.json_lines()[0]["node_id"], imd.node_id.as_str());
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let imd = Imd::start();
    // `head -c 0` closes the pipe at once: imctl must neither panic nor fail.
    let bin = common::imctl_bin();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{0}' --json blacklist ls | head -c 0 && '{0}' cluster | head -c 0",
            bin.display()
        ))
        .env("IMCTL_SERVER", imd.url())
        .env("IMCTL_TOKEN", &imd.admin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

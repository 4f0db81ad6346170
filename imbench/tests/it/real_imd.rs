//! imbench against a real `imd serve` process: the "done when" check, a
//! verified chat run with two agent processes and zero loss, over stdio children and
//! over authenticated TCP links to `imbench agent --listen` processes.
//!
//! Needs the imd binary next to imbench's (`cargo test --workspace` builds it;
//! alone, run `cargo build -p imd` first).

use std::time::Duration;

use crate::common;
use crate::common::{ADMIN, Imd, RemoteAgent, SECRET, SecretBy, run_imbench, start_imd_with};

async fn start_imd() -> Imd {
    tokio::task::spawn_blocking(|| start_imd_with(SECRET))
        .await
        .unwrap()
}

fn chat_args<'a>(url: &'a str, agents: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--target",
        url,
        "--token-secret",
        SECRET,
        "--scenario",
        "chat",
        "--connections",
        "40",
        "--ramp",
        "400",
        "--rate",
        "400",
        "--duration",
        "3s",
        "--drain",
        "2s",
        "--verify",
    ];
    args.extend_from_slice(agents);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agent_verified_chat_against_imd_loses_nothing() {
    let imd = start_imd().await;
    let r = run_imbench(
        &chat_args(&imd.url(), &["--local-agents", "2"]),
        Duration::from_secs(90),
    )
    .await;
    check_clean_chat(&r);
    assert_eq!(r.report["agents"].as_array().unwrap().len(), 2);
    // the chart next to the report, with the run's p99 on it
    let p99 = r.report["latency_ms"]["p99"].as_f64().unwrap();
    assert!(r.chart.contains("<svg"), "no chart");
    assert!(r.chart.contains(&format!("p99 {p99:.3}")), "{}", r.chart);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_remote_agents_over_tcp_verified_chat_loses_nothing() {
    let imd = start_imd().await;
    // The agents hold the deployment's secret, one by flag and one by environment;
    // the coordinator proves it to each before it sends a plan, which carries none.
    let (a, b) = tokio::task::spawn_blocking(|| {
        (
            RemoteAgent::start(SECRET),
            RemoteAgent::start_with(SECRET, SecretBy::Env),
        )
    })
    .await
    .unwrap();
    let agents = format!("{},{}", a.addr, b.addr);
    let r = run_imbench(
        &chat_args(&imd.url(), &["--agents", &agents]),
        Duration::from_secs(90),
    )
    .await;
    check_clean_chat(&r);
    let rep = &r.report;
    assert_eq!(rep["agents"][0]["addr"], a.addr.as_str(), "{rep}");
    assert_eq!(rep["agents"][1]["addr"], b.addr.as_str(), "{rep}");
    // the agents outlive the run and serve the next one
    let r = run_imbench(
        &chat_args(&imd.url(), &["--agents", &agents, "--local-agents", "1"]),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(r.report["agents"].as_array().unwrap().len(), 3);
    check_clean_chat(&r);
}

fn check_clean_chat(r: &common::RunResult) {
    r.assert_exit(0);
    let rep = &r.report;
    assert_eq!(rep["ok"], true, "{rep}");
    assert_eq!(rep["connections"]["opened"], 40, "{rep}");
    let agents = rep["agents"].as_array().unwrap();
    assert!(agents.iter().all(|a| a["status"] == "ok"), "{rep}");
    let m = &rep["messages"];
    for field in [
        "lost",
        "lost_echo",
        "duplicated",
        "out_of_order",
        "unacked",
        "refused",
    ] {
        assert_eq!(m[field], 0, "{field} in {rep}");
    }
    let sent = m["sent"].as_u64().unwrap();
    assert!(
        (1_150..=1_250).contains(&sent),
        "sent {sent} for 400 msg/s over 3 s: {rep}"
    );
    assert_eq!(m["acked"], sent, "{rep}");
    assert_eq!(m["delivered"], sent, "{rep}");
    assert_eq!(m["echoed"], sent, "{rep}");
    let l = &rep["latency_ms"];
    let (p50, p99, max) = (
        l["p50"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= max && max < 5_000.0,
        "latency {l}"
    );
    assert_eq!(l["count"], sent);
}

fn fanout_args<'a>(url: &'a str, scenario: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--target",
        url,
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--scenario",
        scenario,
        "--connections",
        "30",
        "--ramp",
        "300",
        "--duration",
        "3s",
        "--drain",
        "2s",
        "--verify",
        "--local-agents",
        "2",
    ];
    args.extend_from_slice(extra);
    args
}

fn assert_no_loss(r: &common::RunResult) -> (u64, u64) {
    r.assert_exit(0);
    let rep = &r.report;
    assert_eq!(rep["ok"], true, "{rep}");
    assert_eq!(rep["connections"]["opened"], 30, "{rep}");
    let m = &rep["messages"];
    for field in [
        "lost",
        "lost_echo",
        "duplicated",
        "out_of_order",
        "unacked",
        "refused",
        "undeliverable",
    ] {
        assert_eq!(m[field], 0, "{field} in {rep}");
    }
    let sent = m["sent"].as_u64().unwrap();
    assert_eq!(m["acked"], sent, "{rep}");
    assert_eq!(m["echoed"], sent, "{rep}");
    assert_eq!(rep["errors"].as_array().unwrap().len(), 0, "{rep}");
    let l = &rep["latency_ms"];
    let (p50, p99) = (l["p50"].as_f64().unwrap(), l["p99"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 < 5_000.0, "latency {l}");
    (sent, m["delivered"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fanout_reaches_every_member_device() {
    let imd = start_imd().await;
    let r = run_imbench(
        &fanout_args(&imd.url(), "group", &["--group-size", "5", "--rate", "150"]),
        Duration::from_secs(90),
    )
    .await;
    let (sent, delivered) = assert_no_loss(&r);
    assert!((420..=480).contains(&sent), "sent {sent}: {}", r.report);
    // every message reaches the 4 other members of its group
    assert_eq!(delivered, sent * 4, "{}", r.report);
    assert_eq!(r.report["run"]["group_size"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_customers_reach_an_agent_and_get_every_reply() {
    let imd = start_imd().await;
    let r = run_imbench(
        &fanout_args(
            &imd.url(),
            "service",
            &["--shop-size", "5", "--shop-agents", "2", "--rate", "120"],
        ),
        Duration::from_secs(90),
    )
    .await;
    let (sent, delivered) = assert_no_loss(&r);
    // 120 customer messages a second for 3 s, and one reply to each
    assert!((680..=760).contains(&sent), "sent {sent}: {}", r.report);
    assert_eq!(sent % 2, 0, "one reply per customer message: {}", r.report);
    // each message has one recipient device: the assigned agent, or the customer
    assert_eq!(delivered, sent, "{}", r.report);
    // without --max-open and --close-after, the workflow's section stays out
    assert!(r.report.get("service").is_none(), "{}", r.report);
}

/// The service workflow against imd (`--max-open`, `--close-after`): 2 agents capped
/// at one open conversation each, 7 customers writing 2 messages a second, each agent
/// closing a conversation after 2 replies. A queue forms and drains, agents take
/// conversations other agents had (and receive their history), no agent ever holds
/// two, and every message reaches the agent its conversation was with when it was
/// sent, or went to after waiting. One agent process, so that the figures cross the
/// agent link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_queue_forms_and_drains_and_no_agent_goes_over_its_cap() {
    let imd = start_imd().await;
    let url = imd.url();
    let r = run_imbench(
        &[
            "--target",
            &url,
            "--token-secret",
            SECRET,
            "--admin-token",
            ADMIN,
            "--scenario",
            "service",
            "--connections",
            "9",
            "--shop-size",
            "9",
            "--shop-agents",
            "2",
            "--rate",
            "14",
            "--max-open",
            "1",
            "--close-after",
            "2",
            "--duration",
            "4s",
            "--drain",
            "2s",
            "--verify",
            "--local-agents",
            "1",
        ],
        Duration::from_secs(90),
    )
    .await;
    r.assert_exit(0);
    let rep = &r.report;
    assert_eq!(rep["ok"], true, "{rep}");
    assert_eq!(rep["errors"].as_array().unwrap().len(), 0, "{rep}");
    let m = &rep["messages"];
    for field in ["lost", "lost_echo", "duplicated", "unacked", "refused"] {
        assert_eq!(m[field], 0, "{field} in {rep}");
    }
    let s = &rep["service"];
    let n = |f: &str| {
        s[f].as_u64()
            .unwrap_or_else(|| panic!("service.{f} in {rep}"))
    };
    assert_eq!((n("max_open"), n("close_after")), (1, 2), "{rep}");
    // the cap held, and was reached
    assert_eq!((n("max_open_per_agent"), n("over_cap")), (1, 0), "{rep}");
    // each message reached the agent its conversation was with, by its events
    assert_eq!(n("misrouted"), 0, "{rep}");
    // a queue formed (7 customers, 2 places) and drained: waits were measured
    let queued = n("queued");
    assert!(queued > 0 && n("max_queue_position") >= 1, "{rep}");
    let w = &s["queue_wait_ms"];
    assert_eq!(w["count"].as_u64(), Some(queued), "{rep}");
    let (p50, p99) = (w["p50"].as_f64().unwrap(), w["p99"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 < 5_000.0, "queue wait {w}");
    // conversations were closed and opened again, every one by its agent
    assert!(n("closes") >= 10 && n("close_errors") == 0, "{rep}");
    assert!(n("assignments") >= n("closes"), "{rep}");
    assert!(n("delivered_at_assignment") >= queued, "{rep}");
    // 7 customers over 2 agents: conversations change agents, and the agent taking
    // one over is given its earlier openings, which it holds back and never answers
    assert!(n("history") > 0, "{rep}");
    // every message (customer messages and replies) reached its one device once, but
    // those still waiting in the queue at the end; the history agents were given is
    // not counted as delivered
    let sent = m["sent"].as_u64().unwrap();
    assert_eq!(m["echoed"].as_u64(), Some(sent), "{rep}");
    assert_eq!(
        m["delivered"].as_u64().unwrap() + n("waiting_at_end"),
        sent,
        "{rep}"
    );
}

/// `--read-receipts` against imd: every group message a member's device receives is
/// answered with a `read` frame, and imd takes them all (no `error` frame: `errors`
/// stays empty) while delivery stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_are_taken_by_imd_without_errors() {
    let imd = start_imd().await;
    let r = run_imbench(
        &fanout_args(
            &imd.url(),
            "group",
            &["--group-size", "5", "--rate", "150", "--read-receipts"],
        ),
        Duration::from_secs(90),
    )
    .await;
    let (sent, delivered) = assert_no_loss(&r);
    assert_eq!(delivered, sent * 4, "{}", r.report);
    assert_eq!(
        r.report["messages"]["reads"], delivered,
        "one receipt per delivery: {}",
        r.report
    );
}

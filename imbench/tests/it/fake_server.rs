//! imbench against an in-process fake of imd's WebSocket contract: the coordinator,
//! child agents, the chat schedule and the delivery check, including faults the
//! check must catch (a skipped push) and ones it must ride out (a dropped sender).

use std::time::Duration;

use crate::common;
use crate::common::{FakeImd, Faults, SECRET, run_imbench};

/// The harness's short verified chat, 2 s of traffic, with this file's secret.
fn chat_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    common::chat_args(url, SECRET, "2s", extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agent_chat_delivers_everything() {
    let server = FakeImd::start(Faults::default()).await;
    let r = run_imbench(
        &chat_args(
            &server.url,
            &["--local-agents", "2", "--source-ips", "127.0.0.2-127.0.0.3"],
        ),
        Duration::from_secs(60),
    )
    .await;
    r.assert_exit(0);
    let m = &r.report["messages"];
    assert_eq!(m["lost"], 0, "{}", r.report);
    assert_eq!(m["lost_echo"], 0, "{}", r.report);
    assert_eq!(m["duplicated"], 0);
    assert_eq!(m["out_of_order"], 0);
    // 200 msg/s for 2 s, give or take the edges of the schedule
    let sent = m["sent"].as_u64().unwrap();
    assert!((390..=410).contains(&sent), "sent {sent}");
    assert_eq!(m["delivered"], m["acked"]);
    assert_eq!(m["echoed"], m["acked"]);
    assert_eq!(r.report["connections"]["opened"], 20);
    assert_eq!(r.report["agents"].as_array().unwrap().len(), 2);
    let p50 = r.report["latency_ms"]["p50"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 < 500.0, "p50 {p50}");
    assert!(r.stdout.contains("result       OK"), "{}", r.stdout);
    assert!(r.stderr.contains("open 20/20"), "{}", r.stderr);
    assert!(r.chart.contains("Result: OK"), "{}", r.chart);
    assert_eq!(r.report["messages"]["intended"], 400, "{}", r.report);
}

/// `--read-receipts`: each message delivered to a device from its peer is answered
/// with one `read` frame for a conversation and seq the reader has; the report counts
/// them. Without the flag, none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_answer_every_delivered_message() {
    let server = FakeImd::start(Faults::default()).await;
    let r = run_imbench(
        &chat_args(&server.url, &["--read-receipts", "--local-agents", "2"]),
        Duration::from_secs(60),
    )
    .await;
    r.assert_exit(0);
    let m = &r.report["messages"];
    let delivered = m["delivered"].as_u64().unwrap();
    assert!(delivered >= 390, "{}", r.report);
    assert_eq!(m["lost"], 0, "{}", r.report);
    assert_eq!(m["reads"], delivered, "receipts written: {}", r.report);
    assert!(
        r.stdout.contains(&format!("read {delivered}")),
        "{}",
        r.stdout
    );
    // imbench has exited; the fake reads each closed connection to its end.
    testkit::wait_until(
        Duration::from_secs(5),
        "the fake to have read every receipt",
        || async { server.reads().0 >= delivered },
    )
    .await;
    assert_eq!(
        server.reads(),
        (delivered, 0),
        "(good, bad) read frames the server received for {delivered} deliveries"
    );

    let quiet = FakeImd::start(Faults::default()).await;
    let r = run_imbench(&chat_args(&quiet.url, &[]), Duration::from_secs(60)).await;
    r.assert_exit(0);
    assert_eq!(r.report["messages"]["reads"], 0, "{}", r.report);
    assert_eq!(quiet.reads(), (0, 0), "no receipts without the flag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_push_is_a_loss_and_fails_the_run() {
    let server = FakeImd::start(Faults {
        skip_push_every: Some(10),
        ..Default::default()
    })
    .await;
    let r = run_imbench(&chat_args(&server.url, &[]), Duration::from_secs(60)).await;
    r.assert_exit(1);
    let lost = r.report["messages"]["lost"].as_u64().unwrap();
    let sent = r.report["messages"]["sent"].as_u64().unwrap();
    assert_eq!(lost, sent / 10, "{}", r.report);
    assert_eq!(r.report["ok"], false);
    assert!(r.stdout.contains("FAILED"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_senders_reconnect_resend_and_lose_nothing() {
    let server = FakeImd::start(Faults {
        drop_sender_every: Some(25),
        ..Default::default()
    })
    .await;
    let r = run_imbench(&chat_args(&server.url, &[]), Duration::from_secs(60)).await;
    r.assert_exit(0);
    let c = &r.report["connections"];
    assert!(c["reconnects"].as_u64().unwrap() > 0, "{}", r.report);
    let m = &r.report["messages"];
    assert_eq!(m["lost"], 0, "{}", r.report);
    // every resend with the same cid was answered with the first message
    assert_eq!(m["duplicated"], 0, "{}", r.report);
    assert_eq!(m["unacked"], 0, "{}", r.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_open_and_hold() {
    let server = FakeImd::start(Faults::default()).await;
    let args = idle_args(&server.url, "1s", &["--heartbeat", "200ms"]);
    let r = run_imbench(&args, Duration::from_secs(60)).await;
    r.assert_exit(0);
    let c = &r.report["connections"];
    assert_eq!(c["opened"], 300, "{}", r.report);
    assert_eq!(c["failed"], 0);
    assert_eq!(c["dropped"], 0);
    assert!(
        c["handshakes_per_s"].as_f64().unwrap() > 100.0,
        "{}",
        r.report
    );
}

/// The flags of an idle run of 300 connections at 1,000 a second, with `--duration`
/// and `extra`.
fn idle_args<'a>(url: &'a str, duration: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--target",
        url,
        "--token-secret",
        SECRET,
        "--scenario",
        "idle",
        "--connections",
        "300",
        "--ramp",
        "1000",
        "--duration",
        duration,
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_idle_connections_reconnect() {
    // The server drops all 300 once, 200 ms after each opened (in the ramp or early in
    // the load): every one comes back, with jitter.
    let server = FakeImd::start(Faults {
        drop_first: Some((300, Duration::from_millis(200))),
        ..Default::default()
    })
    .await;
    let r = run_imbench(&idle_args(&server.url, "2s", &[]), Duration::from_secs(60)).await;
    r.assert_exit(0);
    let c = &r.report["connections"];
    assert_eq!(c["opened"], 300, "{}", r.report);
    assert_eq!(c["dropped"], 300, "{}", r.report);
    assert_eq!(c["reconnects"], 300, "{}", r.report);
    assert_eq!(c["open_at_end"], 300, "{}", r.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churned_idle_connections_close_and_open_again() {
    let server = FakeImd::start(Faults::default()).await;
    let r = run_imbench(
        &idle_args(&server.url, "2s", &["--lifetime", "500ms"]),
        Duration::from_secs(60),
    )
    .await;
    r.assert_exit(0);
    let c = &r.report["connections"];
    // 300 connections living 500 ms, for 2 s of load of which the last second has no
    // churn: each first close within the first 500 ms, some a second one
    let churned = c["churned"].as_u64().unwrap();
    assert!((300..=700).contains(&churned), "{}", r.report);
    assert_eq!(c["reconnects"], churned, "{}", r.report);
    assert_eq!(c["dropped"], 0, "{}", r.report);
    assert_eq!(c["open_at_end"], 300, "{}", r.report);
    assert!(
        r.stdout
            .contains(&format!("churn        {churned} openings")),
        "{}",
        r.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churned_chat_connections_resend_sync_and_lose_nothing() {
    let server = FakeImd::start(Faults::default()).await;
    let r = run_imbench(
        &chat_args(&server.url, &["--lifetime", "400ms"]),
        Duration::from_secs(60),
    )
    .await;
    r.assert_exit(0);
    let c = &r.report["connections"];
    assert!(c["churned"].as_u64().unwrap() >= 40, "{}", r.report);
    assert_eq!(c["reconnects"], c["churned"], "{}", r.report);
    assert_eq!(c["dropped"], 0, "{}", r.report);
    assert_eq!(c["open_at_end"], 20, "{}", r.report);
    let m = &r.report["messages"];
    assert_eq!(m["lost"], 0, "{}", r.report);
    assert_eq!(m["lost_echo"], 0, "{}", r.report);
    assert_eq!(m["duplicated"], 0, "{}", r.report);
    assert_eq!(m["unacked"], 0, "{}", r.report);
    assert!(m["sent"].as_u64().unwrap() >= 390, "{}", r.report);
}

/// A wrong secret is not fatal to the coordinator (it runs, writes its report), but a
/// run where no connection opened did not happen: it fails, naming the status imd
/// answered and what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_fails_the_run_with_the_status_and_the_fix() {
    let server = FakeImd::start(Faults::default()).await;
    let r = run_imbench(
        &[
            "--target",
            &server.url,
            "--token-secret",
            "wrong",
            "--connections",
            "5",
            "--duration",
            "1s",
        ],
        Duration::from_secs(60),
    )
    .await;
    r.assert_exit(1);
    assert_eq!(r.report["connections"]["failed"], 5);
    assert_eq!(r.report["errors"][0]["kind"], "http 401", "{}", r.report);
    assert_eq!(r.report["ok"], false);
    let failure = r.report["failures"][0].as_str().unwrap();
    assert!(
        failure.starts_with("opened 0 of 5 connections")
            && failure.contains("http 401 ×5")
            && failure.contains("--token-secret"),
        "{failure}"
    );
    assert!(r.stdout.contains("http 401 ×5"), "{}", r.stdout);
    assert!(r.chart.contains("Result: FAILED"), "{}", r.chart);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_fails_the_run_not_the_coordinator() {
    use std::process::Stdio;
    let server = FakeImd::start(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut args = chat_args(&server.url, &["--local-agents", "2"]);
    let report_arg = report.to_str().unwrap().to_owned();
    args.extend_from_slice(&["--report", &report_arg]);
    let mut child = tokio::process::Command::new(common::imbench_bin())
        .arg("run")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // wait for both agents to be up, then SIGKILL the second by its PID
    // Children may be started from any thread of the runtime: read every thread's list.
    let children = move || -> Vec<String> {
        let mut pids = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(list.split_whitespace().map(str::to_owned));
        }
        pids
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let agents = loop {
        let pids = children();
        if pids.len() == 2 {
            break pids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents not seen: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &agents[1]])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["agents"][0]["status"], "ok", "{r}");
    assert!(
        r["agents"][1]["status"]
            .as_str()
            .unwrap()
            .starts_with("died"),
        "{r}"
    );
    assert_eq!(r["connections"]["failed"], 10, "{r}");
    assert_eq!(r["messages"]["lost"], 0, "{r}");
    // the failure names the dead agent and what went with it
    let failures: Vec<&str> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        failures[0].starts_with("agent 1: died") && failures[0].contains("its 10 connection(s)"),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|f| f.contains("10 were planned on agent(s) that never reported")),
        "{failures:?}"
    );
    // and when: its link closing is marked on the time axis
    assert!(
        r["series"]["marks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["label"] == "agent 1 gone"),
        "{r}"
    );
    let chart = std::fs::read_to_string(report.with_extension("html")).unwrap();
    assert!(chart.contains("Result: FAILED"), "{chart}");
    assert!(chart.contains("agent 1: died"), "{chart}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_agent_is_a_failed_agent() {
    let server = FakeImd::start(Faults::default()).await;
    // a port that was just free: nothing listens there
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let r = run_imbench(
        &chat_args(&server.url, &["--agents", &dead, "--local-agents", "1"]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let agents = r.report["agents"].as_array().unwrap();
    assert_eq!(agents[0]["status"], "ok", "{}", r.report);
    assert_eq!(agents[0]["addr"], "local");
    assert!(
        agents[1]["status"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{}",
        r.report
    );
    assert_eq!(agents[1]["addr"], dead.as_str());
    assert_eq!(r.report["connections"]["failed"], 10, "{}", r.report);
}

//! The TCP link to a listening agent (`imbench agent --listen`) is authenticated: a
//! coordinator with another `--token-secret` is a failed agent and leaves the agent
//! listening, a peer that skips the handshake gets nothing, and the plan that crosses
//! the network carries no secret. Real `imbench` processes against the fake imd.

use std::time::Duration;

use clap::Parser;
use imbench::cli::{Cli, Command};
use imbench::link::{AGENT_LINK, PlanLine};
use imbench::plan::{AgentPlan, RunPlan};
use serde_json::Value;
use shared::link_auth::{LinkKey, client_handshake};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common;
use crate::common::{FakeImd, Faults, RemoteAgent, SECRET, run_imbench};

/// A short verified chat (1 s of traffic) with `secret` as the coordinator's.
fn chat_args<'a>(url: &'a str, secret: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    common::chat_args(url, secret, "1s", extra)
}

async fn start_agent(secret: &'static str) -> RemoteAgent {
    tokio::task::spawn_blocking(move || RemoteAgent::start(secret))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_another_secret_is_a_failed_agent_and_the_agent_serves_the_next() {
    let server = FakeImd::start(Faults::default()).await;
    let mut agent = start_agent(SECRET).await;

    // The wrong coordinator: its remote agent fails the handshake; its local agent
    // runs (its tokens are refused by the server, which is counted, not fatal).
    let r = run_imbench(
        &chat_args(
            &server.url,
            "another-secret",
            &["--agents", &agent.addr, "--local-agents", "1"],
        ),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let agents = r.report["agents"].as_array().unwrap();
    assert_eq!(agents[1]["addr"], agent.addr.as_str(), "{}", r.report);
    let status = agents[1]["status"].as_str().unwrap();
    assert!(
        status.starts_with("failed: not authenticated: the agent's --token-secret differs"),
        "{status}"
    );
    // The agent's share of the plan is counted as failed connections.
    assert!(
        r.report["connections"]["failed"].as_u64().unwrap() >= 10,
        "{}",
        r.report
    );

    // The agent logged the refusal and is still listening.
    agent
        .wait_for_log("failed the handshake", Duration::from_secs(10))
        .await;
    assert!(agent.is_running(), "the agent exited after a bad handshake");

    // ... and serves a coordinator with the right secret.
    let r = run_imbench(
        &chat_args(&server.url, SECRET, &["--agents", &agent.addr]),
        Duration::from_secs(60),
    )
    .await;
    r.assert_exit(0);
    let rep = &r.report;
    assert_eq!(rep["agents"][0]["status"], "ok", "{rep}");
    assert_eq!(rep["agents"][0]["addr"], agent.addr.as_str(), "{rep}");
    assert_eq!(rep["connections"]["opened"], 20, "{rep}");
    assert_eq!(rep["messages"]["lost"], 0, "{rep}");
    assert!(rep["messages"]["delivered"].as_u64().unwrap() > 0, "{rep}");
}

/// A one-agent plan of a chat run against `url`, as a coordinator with `secret`
/// would make it.
fn agent_plan(url: &str, secret: &str) -> AgentPlan {
    let cli = Cli::try_parse_from([
        "imbench",
        "run",
        "--target",
        url,
        "--token-secret",
        secret,
        "--scenario",
        "chat",
        "--connections",
        "2",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else {
        panic!("not run")
    };
    RunPlan::from_args(&args).unwrap().agent_plans(1).remove(0)
}

/// Plays coordinator: connects to `addr`, runs the handshake with `secret`, sends
/// `line`, and returns the agent's first event. Retries, until a deadline, while the
/// agent is still busy with the previous connection's run.
async fn first_event_after_handshake(addr: &str, secret: &str, line: &str) -> Value {
    let key = LinkKey::derive(&AGENT_LINK, secret.as_bytes());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        client_handshake(&mut socket, &key).await.unwrap();
        // A busy agent answers and closes without reading the line, so this write may
        // fail; what the agent said is in the read.
        let _ = socket.write_all(format!("{line}\n").as_bytes()).await;
        let mut lines = BufReader::new(socket).lines();
        let answer = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the agent answers or closes");
        // The end of the stream, or a reset that lost the answer, is a busy agent too:
        // one that runs a plan or refuses it reads the whole line first.
        if let Ok(Some(answer)) = &answer {
            let event: Value = serde_json::from_str(answer).unwrap();
            let busy = event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("busy"));
            if !busy {
                return event;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent stayed busy; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_crosses_the_network_only_after_the_handshake_and_without_the_secret() {
    let agent = start_agent(SECRET).await;
    let plan = agent_plan("http://127.0.0.1:1", SECRET);

    // A peer that skips the handshake and sends a plan gets nothing back: the agent
    // closes without a word (and says why on its stderr).
    let network_line = serde_json::to_string(&PlanLine::for_network(plan.clone())).unwrap();
    let mut socket = TcpStream::connect(&agent.addr).await.unwrap();
    // The agent reads 8 bytes, sees no magic and closes: the write may fail.
    let _ = socket
        .write_all(format!("{network_line}\n").as_bytes())
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .expect("the agent closes the connection");
    // The agent closes with most of our line unread, so the kernel may send a reset
    // rather than a plain end of stream.
    assert!(
        read.as_ref().map_or_else(
            |e| e.kind() == std::io::ErrorKind::ConnectionReset,
            |_| true
        ),
        "{read:?}"
    );
    assert!(
        answer.is_empty(),
        "answered: {}",
        String::from_utf8_lossy(&answer)
    );
    agent
        .wait_for_log("failed the handshake", Duration::from_secs(10))
        .await;

    // The plan line for the network has no secret, and the agent runs it with its
    // own: it says ready.
    assert!(!network_line.contains(SECRET), "{network_line}");
    assert!(!network_line.contains("token_secret"), "{network_line}");
    let event = first_event_after_handshake(&agent.addr, SECRET, &network_line).await;
    assert_eq!(event["type"], "ready", "{event}");

    // A plan line with the secret in it is refused: the secret must not cross the
    // network (the pipe to a local agent is the only place for it).
    let pipe_line =
        serde_json::to_string(&PlanLine::for_pipe(plan, SECRET.parse().unwrap())).unwrap();
    assert!(pipe_line.contains(SECRET), "{pipe_line}");
    let event = first_event_after_handshake(&agent.addr, SECRET, &pipe_line).await;
    assert_eq!(event["type"], "failed", "{event}");
    let message = event["message"].as_str().unwrap();
    assert!(message.contains("must not cross the network"), "{message}");
}

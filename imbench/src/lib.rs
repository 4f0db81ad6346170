//! `imbench`: the load generator of the imd instant-messaging system.
//!
//! It opens many WebSocket connections to one or more imd nodes, drives open-loop
//! traffic (each message has an intended send time, and latency counts from it, so a
//! slow server cannot hide behind a slow client), acknowledges every push like a real
//! client, and with `--verify` proves that every acknowledged message reached every
//! device it should have.
//!
//! A run has one coordinator and one or more agents. The coordinator (`imbench run`)
//! turns the command line into a [`plan::RunPlan`], splits it into one
//! [`plan::AgentPlan`] per agent, starts the agents together, merges their per-second
//! counters and latency histograms into a progress line, and writes the report. An
//! agent (`imbench agent`, or a task inside the coordinator) owns the sockets. The
//! coordinator talks to agents with JSON lines ([`agent::Control`] down,
//! [`agent::AgentEvent`] up): over a child's stdin/stdout for `--local-agents`, over
//! TCP for remote agents (`imbench agent --listen`, `imbench run --agents`), where both
//! ends first prove that they hold the deployment's `--token-secret`
//! (`shared::link_auth`) and the secret itself never crosses the network.
//!
//! Code map:
//! - [`cli`]: the command line (clap derive).
//! - [`plan`]: run plan, agent plans, source-address ranges, capacity checks.
//! - [`coordinator`]: `imbench run`: agents, progress view, final report, exit code.
//! - [`agent`]: one agent: connection schedule, ticks, final report.
//! - [`clock`]: the plan's clock (Unix time ↔ `Instant`) and its phases.
//! - [`conn`]: what an agent's connection tasks share: plan, endpoints, live counters.
//! - [`dial`]: token minting, source-address binding, the WebSocket handshake.
//! - [`scenario`]: what each connection does (`idle`; `chat`, `group`, `service`,
//!   and the service workflow of caps, queue and closes).
//! - [`setup`]: groups' members and shops' agents through the admin API.
//! - [`verify`]: per-device sequence bookkeeping and the loss/duplicate arithmetic.
//! - [`report`]: histogram transport, latency summaries, the JSON report, the verdict
//!   (a run that did not happen as asked fails, with its cause and fix), the
//!   per-second series, the summary.
//! - [`chart`]: the HTML page next to the report: the result, the run second by second
//!   (with the moments of `--mark-file`), the percentile chart; inline SVG.
//! - [`link`]: the JSON-lines link between coordinator and agents (stdio, or
//!   authenticated TCP), and `imbench agent`'s entry point.
//! - [`limits`]: the open-files limit.
//! - [`relay`]: `imbench relay`, the bare floor imd is compared with in one run.
//! - [`sink`]: `imbench webhook-sink`, a receiver of imd's webhook that checks signatures
//!   and per-conversation order.

pub mod agent;
pub mod chart;
pub mod cli;
pub mod clock;
pub mod conn;
pub mod coordinator;
pub mod dial;
pub mod limits;
pub mod link;
pub mod plan;
pub mod relay;
pub mod report;
pub mod scenario;
pub mod setup;
pub mod sink;
pub mod verify;

use std::process::ExitCode;

/// Runs the parsed command line; what `main` calls.
pub async fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Run(args) => coordinator::run_command(*args).await,
        cli::Command::Agent(args) => link::run_agent(args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Relay(args) => relay::run(args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::WebhookSink(args) => sink::run(args).await,
    }
}

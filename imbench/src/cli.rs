//! The command line of `imbench`: `run` (the coordinator), `agent`, and `relay` (the
//! bare floor).
//!
//! Only parsing and flag documentation live here; [`crate::plan`] validates the values
//! against each other and against this machine.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use shared::secret::Secret;

/// Load generator for imd.
#[derive(Debug, Parser)]
#[command(name = "imbench", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a benchmark: plan it, start the agents, report. Exits 1 when the run failed:
    /// it did not happen as asked (a connection that never opened, under 90% of the
    /// intended messages sent, a refused send, an error from imd, a dead agent) or,
    /// with `--verify`, lost messages; the summary names each cause and what to change.
    Run(Box<RunArgs>),
    /// Run one load agent (normally started by `imbench run --local-agents K`).
    Agent(AgentArgs),
    /// Serve the bare relay floor: imd's client protocol for `idle` and `chat`, with
    /// no store and no durability, to measure imd against in the same run.
    Relay(RelayArgs),
    /// Receive imd's webhook: check each event's signature and its conversation's
    /// order, answer 500 for a while if asked, and report throughput, duplicates,
    /// order breaks and lag once a second and at the end.
    WebhookSink(WebhookSinkArgs),
}

/// `imbench webhook-sink`.
#[derive(Debug, Args)]
pub struct WebhookSinkArgs {
    /// Address to listen on (port 0 picks one); prints
    /// `{"event":"listening","listen":…}` once bound.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,

    /// The webhook secret (imd's `--webhook-secret`).
    #[arg(long, env = "IMBENCH_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Secret,

    /// Answer 500 to everything for this long after the first event, e.g. `60s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub fail_for: Option<std::time::Duration>,

    /// Stop after this long (the sink always stops by itself), then print the summary.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub duration: std::time::Duration,

    /// Stop once this many distinct events were accepted (0: only `--duration`).
    #[arg(long, default_value_t = 0)]
    pub expect: u64,
}

/// `imbench relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on (port 0 picks one); prints
    /// `{"event":"listening","listen":…}` once bound.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,

    /// The secret that signs the clients' tokens (as for `imbench run`).
    #[arg(long, env = "IMBENCH_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Secret,
}

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Connections that only answer the server's heartbeats.
    Idle,
    /// Pairs of users exchanging direct messages, acking every push.
    Chat,
    /// Customers messaging shops whose agents reply to every message.
    Service,
    /// Members of groups of `--group-size` each sending to their group.
    Group,
}

impl Scenario {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Chat => "chat",
            Scenario::Service => "service",
            Scenario::Group => "group",
        }
    }
}

/// Flags of `imbench run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// imd base URL (`http://host:port`); repeat for several nodes. Connections go
    /// to the targets by unit (a chat pair, a group, a shop stays on one target):
    /// unit k to target k mod (number of targets).
    #[arg(long = "target", required = true, value_name = "URL")]
    pub targets: Vec<String>,

    /// The token secret of the imd deployment; client tokens are minted locally. It
    /// also authenticates the coordinator to remote `--agents`, which must hold the
    /// same one.
    #[arg(long, env = "IMBENCH_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Secret,

    /// Number of WebSocket connections (one user and device each).
    #[arg(long, default_value_t = 100)]
    pub connections: u64,

    /// Connections opened per second, in total over all agents.
    #[arg(long, default_value_t = 1000.0)]
    pub ramp: f64,

    /// What the connections do.
    #[arg(long, value_enum, default_value_t = Scenario::Idle)]
    pub scenario: Scenario,

    /// Messages per second in total, open loop (chat, group: every member; service:
    /// the customers, whose messages each get one reply on top).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Admin API base URL for the groups' and shops' set-up (a cluster's gateway).
    /// Default: each group's or shop's own target, which is the first target when
    /// there is one, and right for independent nodes.
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,

    /// Admin bearer token (`imd admin-token`), for the service and group scenarios.
    #[arg(long, env = "IMBENCH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Members per group (group scenario); each message fans out to all of them.
    #[arg(long, default_value_t = 10)]
    pub group_size: u64,

    /// Connections per shop, agents included (service scenario).
    #[arg(long, default_value_t = 10)]
    pub shop_size: u64,

    /// Agents per shop (service scenario): the first connections of each shop.
    #[arg(long, default_value_t = 2)]
    pub shop_agents: u64,

    /// Open conversations one shop agent may hold at once (service scenario; 0: no
    /// cap), set with the shops' agents (`max_open`). With more customers than agents
    /// × N, new conversations wait in the shop's queue until an agent closes one (see
    /// `--close-after`). With this flag or `--close-after`, imbench also measures queue
    /// waits (the customer message that opened a conversation which then waited → the
    /// `assigned` event at the customer), counts assignments and closes, and has each
    /// agent count its own open conversations from the events in its inbox: the run
    /// fails if any agent is ever above N. Customer messages an agent receives with its
    /// assignment are checked for delivery but left out of the send → push latency
    /// (they include the wait).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_open: u32,

    /// Each shop agent closes a conversation (`POST /v1/conversations/{conv}/close`,
    /// with its agent token) once imd has acknowledged K replies of its into it, and
    /// answers no more of its messages until the customer's next message opens it
    /// again (service scenario; 0: never close, the default). A close not answered
    /// with 200 within 10 s counts as failed, and the agent answers the conversation
    /// again as if it had not tried.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub close_after: u64,

    /// How long the load lasts once every connection has been opened.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// How long to keep reading after the last send before counting losses.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Source addresses to bind, round-robin: `127.0.0.2-127.0.0.40`, or a
    /// comma-separated list of addresses and ranges. Default: the kernel's choice.
    #[arg(long, value_name = "RANGE")]
    pub source_ips: Option<String>,

    /// Check delivery: every acknowledged message must reach its recipient's device
    /// (and the sender's own device) exactly once, in order; loss exits non-zero.
    #[arg(long)]
    pub verify: bool,

    /// Write the JSON report here, and its chart next to it (`r.json` → `r.html`).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Moments to mark on the chart's time axis, read at the end of the run: one
    /// `<unix ms> <label>` a line (`echo "$(date +%s%3N) kill -9 imd" >> FILE`), so
    /// that a script can note what it did to the system (a kill, a restart) while the
    /// load ran. A missing file or a bad line is reported, not fatal.
    #[arg(long, value_name = "FILE")]
    pub mark_file: Option<PathBuf>,

    /// Spawn this many agent processes on this machine and split the plan across
    /// them (and the `--agents`). 0 with no `--agents` runs the load inside this
    /// process. Default: none with `--agents`; otherwise inside this process when the
    /// plan fits under the open-files limit, else as many agents as it needs.
    #[arg(long, value_name = "K")]
    pub local_agents: Option<usize>,

    /// Give up on a connection attempt (TCP + WebSocket handshake) after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Send an application `ping` this often on every connection (0: never; the
    /// server's WebSocket pings are always answered).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// Widest backoff window of a reconnection: after a drop a connection waits a
    /// random time in a window of 100 ms that doubles with each failed try up to this
    /// (full jitter), so that connections dropped together come back spread out. The
    /// 2 s default finds a restarted imd fast; thousands of connections dropped at once
    /// may need more (see `chaos-reconnect-storm.sh`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,

    /// Connection churn: each connection closes itself (a clean WebSocket close) this
    /// long after it opened, and opens again at once (after the reconnection's jitter,
    /// up to 100 ms): a chat connection then resends what was not acknowledged and
    /// syncs, as after a drop, and goes on being verified. The first openings last
    /// between 1/1000 and all of this, spread over the connections, so that about
    /// `--connections` / LIFETIME connections close every second, evenly; churn happens
    /// in the load phase only (not the ramp or the drain). 0: never (the default).
    /// The report counts the closes as `churned` (not `dropped`).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,

    /// Send a read receipt (`{"type":"read","conv","seq"}`) for every message a
    /// connection receives from someone else in its unit, so that the load includes
    /// receipts and the `read` notices they fan out (chat, group, service). imd limits
    /// receipts per user to the send rate: keep each user's incoming rate under
    /// `--send-rate`.
    #[arg(long)]
    pub read_receipts: bool,

    /// Spread the connections of each unit over the targets (connection j of unit k
    /// on target (k + j) mod targets) instead of keeping a unit on one target. For the
    /// workers of one cluster, which share users: every message then crosses workers,
    /// and a dropped connection reconnects to the next worker.
    #[arg(long)]
    pub spread: bool,

    /// Read buffer of each client WebSocket, in bytes (tungstenite's default is
    /// 128 KiB allocated up front; the frames here are small).
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,

    /// Remote agents (`imbench agent --listen`) to use, `host:port,…`; the plan is
    /// split over these and the `--local-agents`. Each must run with this
    /// `--token-secret`: the coordinator and the agent prove it to each other before
    /// the plan is sent, without the secret; an agent that fails the proof is a failed
    /// agent. Their clocks should agree (NTP): they start at one unix time.
    #[arg(long = "agents", value_name = "HOST:PORT", value_delimiter = ',')]
    pub remote_agents: Vec<String>,

    /// Program to start as `PROGRAM agent` for local agents (default: this binary).
    #[arg(long, hide = true)]
    pub agent_bin: Option<PathBuf>,
}

/// Flags of `imbench agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Serve coordinators over TCP on this address (`0.0.0.0:7070`; port 0 picks
    /// one), one run at a time, printing `{"event":"listening","listen":…}` once
    /// bound. Needs `--token-secret`: each coordinator must prove that it holds the
    /// same secret (and the agent proves it back) before it may send a plan, and the
    /// plan then comes without the secret; a connection that fails the proof is
    /// logged and closed, and the agent goes on listening. The link is authenticated
    /// but not encrypted: the plan and the counters can be read on the path, so keep
    /// it on a network you trust. Without `--listen`, the agent reads its plan, secret
    /// included, from stdin (how `--local-agents` starts it).
    #[arg(long, value_name = "ADDR", requires = "token_secret")]
    pub listen: Option<String>,

    /// With `--listen`: the token secret of the imd deployment under test, the same
    /// as the coordinators' `imbench run --token-secret`. The agent mints its client
    /// tokens with it, and coordinators authenticate with it. Without `--listen` it is
    /// not used: a local agent gets the secret from its coordinator.
    #[arg(long, env = "IMBENCH_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<Secret>,

    /// With `--listen`: exit after the first run.
    #[arg(long, requires = "listen")]
    pub once: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_listening_agent_needs_a_token_secret() {
        let listen = ["imbench", "agent", "--listen", "127.0.0.1:0"];
        // The environment may give it (IMBENCH_TOKEN_SECRET), as it does to `run`.
        if std::env::var_os("IMBENCH_TOKEN_SECRET").is_none() {
            let error = Cli::try_parse_from(listen).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{error}"
            );
            assert!(error.to_string().contains("--token-secret"), "{error}");
        }
        let cli = Cli::try_parse_from([&listen[..], &["--token-secret", "s"]].concat()).unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not agent")
        };
        assert_eq!(args.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(
            args.token_secret.map(|s| s.expose().to_owned()),
            Some("s".into())
        );
        // A local agent, started by its coordinator, needs none.
        assert!(Cli::try_parse_from(["imbench", "agent"]).is_ok());
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "imbench",
            "run",
            "--target",
            "http://127.0.0.1:1",
            "--target",
            "http://127.0.0.1:2",
            "--token-secret",
            "s",
            "--scenario",
            "chat",
            "--duration",
            "1m",
            "--source-ips",
            "127.0.0.2-127.0.0.4",
            "--verify",
            "--local-agents",
            "2",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.targets.len(), 2);
        assert_eq!(args.scenario, Scenario::Chat);
        assert_eq!(args.duration, Duration::from_secs(60));
        assert!(args.verify);
        assert_eq!(args.local_agents, Some(2));
    }
}

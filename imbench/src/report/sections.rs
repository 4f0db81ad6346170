//! The shape of the JSON report of `--report` (a contract: tests and scripts read its
//! fields by path). Plain data; [`super::combine`] fills it, [`super::summary`] prints it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    Counters, ErrorSample, LatencySummary, Quantile, SeriesSection, ServiceSection, VerifyCounts,
};

/// `connections` of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsSection {
    /// Planned.
    pub target: u64,
    /// Handshakes that succeeded.
    pub opened: u64,
    /// Connections whose first handshake failed (or never tried: the run stopped
    /// before their turn, or their agent never ran).
    pub failed: u64,
    /// Failed handshakes by cause, first tries and reconnections alike: `http 429`
    /// (imd's connect limit), `http 401`, `tcp connect`, `timeout`, `not attempted`, …
    #[serde(default)]
    pub failed_by_cause: BTreeMap<String, u64>,
    /// Closed by the server or network during the run.
    pub dropped: u64,
    /// Reconnections after a drop or a churn.
    pub reconnects: u64,
    /// Openings the connections ended themselves to open again (`--lifetime`).
    #[serde(default)]
    pub churned: u64,
    /// Open when the load ended, just before imbench closed them.
    pub open_at_end: u64,
    /// Opened per second over the ramp (first to last handshake).
    pub handshakes_per_s: f64,
    /// Best one-second handshake count seen by the progress view.
    pub handshakes_per_s_peak: f64,
}

/// `messages` of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessagesSection {
    /// Messages the plan meant to send on its schedule: `--rate` × `--duration`
    /// (0 for idle). A run that sends under 90% of them fails.
    #[serde(default)]
    pub intended: u64,
    /// `send` frames written (shop agents' replies included).
    pub sent: u64,
    /// Of `sent`, shop agents' replies (service): answers, not on the schedule.
    #[serde(default)]
    pub replies: u64,
    /// Acknowledged by `sent`.
    pub acked: u64,
    /// Refused with `error` (any: the run fails).
    pub refused: u64,
    /// `error` frames not tied to a send, and frames imbench could not read (any: the
    /// run fails).
    #[serde(default)]
    pub server_errors: u64,
    /// First pushes on the recipient's device.
    pub delivered: u64,
    /// First pushes back on the sender's device.
    pub echoed: u64,
    /// Acknowledged, never pushed to the recipient's device (with `--verify`).
    pub lost: u64,
    /// Acknowledged, never pushed back to the sender's device (with `--verify`).
    pub lost_echo: u64,
    /// Same message on one device under two `useq`s.
    pub duplicated: u64,
    /// `useq` going backwards on a device.
    pub out_of_order: u64,
    /// Pushes of an already seen `useq`.
    pub retransmits: u64,
    /// Never acknowledged by the end.
    pub unacked: u64,
    /// To devices that never connected.
    pub undeliverable: u64,
    /// Read receipts written (`--read-receipts`): one per message delivered.
    #[serde(default)]
    pub reads: u64,
}

/// `delivery_gap` of the report: the longest time during which no device received a
/// push (pauses under 50 ms are not seen), e.g. while a killed server restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryGap {
    /// Its length, milliseconds (0: no pause of 50 ms or more).
    pub longest_ms: f64,
    /// When it began (unix ms), if there was one.
    pub from_unix_ms: Option<u64>,
    /// When it ended (unix ms).
    pub to_unix_ms: Option<u64>,
}

/// `throughput` of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThroughputSection {
    /// Sends per second over the load phase.
    pub sent_per_s: f64,
    /// Deliveries per second over the load phase.
    pub delivered_per_s: f64,
}

/// One agent in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentSection {
    /// Index.
    pub agent: usize,
    /// Process id.
    pub pid: u32,
    /// Where it ran: `in-process`, `local`, or a remote agent's `host:port`.
    #[serde(default)]
    pub addr: String,
    /// `ok`, or what went wrong with it.
    pub status: String,
    /// Planned connections.
    pub connections: u64,
    /// Counters.
    pub counters: Counters,
    /// Its delivery check.
    pub verify: Option<VerifyCounts>,
    /// Its latency.
    pub latency_ms: LatencySummary,
}

/// What the run was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSection {
    /// Run tag (in every uid).
    pub run_id: String,
    /// Scenario.
    pub scenario: String,
    /// Target URLs.
    pub targets: Vec<String>,
    /// Messages per second asked for.
    pub rate: f64,
    /// Connections per second asked for.
    pub ramp: f64,
    /// Load phase, seconds.
    pub duration_s: f64,
    /// Whether delivery was checked.
    pub verify: bool,
    /// Members per group (group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<u64>,
    /// Connections per shop (service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop_size: Option<u64>,
    /// Agents per shop (service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop_agents: Option<u64>,
    /// Open conversations one agent may hold (service with `--max-open`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open: Option<u32>,
    /// Replies after which an agent closes a conversation (service with
    /// `--close-after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_after: Option<u64>,
    /// Local agent processes (0 and no remote agents: in the coordinator).
    pub local_agents: usize,
    /// Remote agents (`host:port`).
    #[serde(default)]
    pub remote_agents: Vec<String>,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
}

/// The JSON report of `--report`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What ran.
    pub run: RunSection,
    /// Connection counts.
    pub connections: ConnectionsSection,
    /// Message counts.
    pub messages: MessagesSection,
    /// Intended send → push on the recipient's device.
    pub latency_ms: LatencySummary,
    /// Intended send → `sent` acknowledgement.
    pub ack_latency_ms: LatencySummary,
    /// The distribution behind `latency_ms` (for the chart).
    #[serde(default)]
    pub latency_distribution: Vec<Quantile>,
    /// The distribution behind `ack_latency_ms`.
    #[serde(default)]
    pub ack_latency_distribution: Vec<Quantile>,
    /// Rates.
    pub throughput: ThroughputSection,
    /// The longest pause in deliveries.
    #[serde(default)]
    pub delivery_gap: DeliveryGap,
    /// The customer-service workflow (`--max-open`, `--close-after`): queue waits,
    /// assignments, closes, the cap check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSection>,
    /// Per agent.
    pub agents: Vec<AgentSection>,
    /// Errors by kind, all agents.
    pub errors: Vec<ErrorSample>,
    /// Per second over the run (the progress view's samples) and the marks of
    /// `--mark-file`, for the chart.
    #[serde(default)]
    pub series: SeriesSection,
    /// Whether the run passed: it happened as planned (every connection opened, at
    /// least 90% of the intended messages sent, no refusal or server error, every
    /// agent finished), and nothing was lost when verifying. See `report::verdict`.
    pub ok: bool,
    /// Why not: one line per problem, each with its cause and what to change.
    pub failures: Vec<String>,
}

//! Numbers a run produces and how they travel and add up: counter snapshots,
//! histogram transport, latency summaries, the JSON report and the human summary.
//!
//! Pure data and arithmetic; the coordinator and the agents decide when to call it.
//! This file holds what an agent sends up at the end ([`AgentReport`] and its parts);
//! the rest is one job per file:
//! - [`counters`]: the one list of counters, its wire form and its live (atomic) form.
//! - [`latency`]: histograms, their wire form, percentile summaries.
//! - [`sections`]: the JSON report's shape.
//! - [`combine`]: adding agents' reports up into that shape.
//! - [`verdict`]: whether the run passed; each problem with its cause and its fix.
//! - [`series`]: the run second by second, and the moments scripts marked.
//! - [`service`]: the customer-service workflow's figures (queue waits, caps).
//! - [`summary`]: the human summary.

use serde::{Deserialize, Serialize};

pub mod combine;
pub mod counters;
pub mod latency;
pub mod sections;
pub mod series;
pub mod service;
pub mod summary;
pub mod verdict;

pub use combine::{combine, longest_silence, per_second};
pub use counters::{Counters, LiveCounters};
pub use latency::{
    HistData, LatencySummary, MAX_LATENCY_US, Quantile, distribution, new_histogram, record_us,
};
pub use sections::{
    AgentSection, ConnectionsSection, DeliveryGap, MessagesSection, Report, RunSection,
    ThroughputSection,
};
pub use series::{Mark, Second, SeriesSection, parse_marks};
pub use service::{LiveService, ServiceReport, ServiceSection};
pub use summary::summary;
pub use verdict::verdict;

/// End-of-run delivery check of one agent's pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyCounts {
    /// Acknowledged, never pushed to the recipient's device.
    pub lost: u64,
    /// Acknowledged, never pushed back to the sender's own device.
    pub lost_echo: u64,
    /// Sent, never acknowledged (no `sent` frame by the end): not counted as lost.
    pub unacked: u64,
    /// Received although never acknowledged to the sender: not a loss.
    pub received_unacked: u64,
    /// Acknowledged messages to a device that never connected: not counted as lost.
    pub undeliverable: u64,
    /// Acknowledged customer messages whose conversation still waited in the shop's
    /// queue at the end (`--max-open`): owed to no agent yet, not counted as lost.
    #[serde(default)]
    pub waiting: u64,
    /// Acknowledged customer messages that missed the agent their conversation was
    /// with (as its events told the customer) but reached another agent of the shop:
    /// imd's events and its deliveries disagree (`--max-open`, `--close-after`).
    #[serde(default)]
    pub misrouted: u64,
}

impl VerifyCounts {
    /// Adds `o` field by field.
    pub fn add(&mut self, o: &VerifyCounts) {
        self.lost += o.lost;
        self.lost_echo += o.lost_echo;
        self.unacked += o.unacked;
        self.received_unacked += o.received_unacked;
        self.undeliverable += o.undeliverable;
        self.waiting += o.waiting;
        self.misrouted += o.misrouted;
    }
}

/// A kind of error, how often it happened, and one example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorSample {
    /// Coarse kind (`tcp connect`, `http 401`, `timeout`, `closed`, …).
    pub kind: String,
    /// How many.
    pub count: u64,
    /// The first message of that kind.
    pub sample: String,
}

/// Adds `count` errors of `kind` into `list`, keeping one sample per kind.
pub fn add_error(list: &mut Vec<ErrorSample>, kind: &str, count: u64, sample: &str) {
    match list.iter_mut().find(|e| e.kind == kind) {
        Some(e) => e.count += count,
        None => list.push(ErrorSample {
            kind: kind.to_owned(),
            count,
            sample: sample.to_owned(),
        }),
    }
}

/// An agent's final word.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentReport {
    /// Agent index.
    pub agent: usize,
    /// Its process id.
    pub pid: u32,
    /// Connections planned for it.
    pub connections: u64,
    /// Counters at the end.
    pub counters: Counters,
    /// Send (intended time) → push on the recipient's device, µs.
    pub latency: HistData,
    /// Send (intended time) → `sent` frame, µs.
    pub ack_latency: HistData,
    /// Delivery check (with `--verify`).
    pub verify: Option<VerifyCounts>,
    /// Milliseconds from the start to the first successful handshake.
    pub first_open_ms: Option<u64>,
    /// Milliseconds from the start to the last successful first handshake.
    pub last_open_ms: Option<u64>,
    /// Milliseconds during which messages were being sent.
    pub traffic_ms: u64,
    /// Connections open when the run stopped (before closing them).
    #[serde(default)]
    pub open_at_stop: u64,
    /// Errors by kind.
    pub errors: Vec<ErrorSample>,
    /// When its devices received new pushes (None: never).
    #[serde(default)]
    pub pushes: Option<PushTimes>,
    /// The customer-service workflow's figures (`--max-open`, `--close-after`).
    #[serde(default)]
    pub service: Option<ServiceReport>,
}

/// When one agent's devices received new pushes (unix µs): the first and the last,
/// and the pauses between two pushes of at least 50 ms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTimes {
    /// First and last push.
    pub span_us: [u64; 2],
    /// Pauses, in time order.
    pub gaps_us: Vec<[u64; 2]>,
}

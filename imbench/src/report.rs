//! Numbers a run produces and how they travel and add up: counter snapshots,
//! histogram transport, latency summaries, the JSON report and the human summary.
//!
//! Pure data and arithmetic; the coordinator and the agents decide when to call it.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in microseconds (one hour); above it values
/// are clamped.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty latency histogram: microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Records `us` (clamped into the histogram's range).
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// A histogram on the wire: `[value, count]` per non-empty bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HistData(pub Vec<[u64; 2]>);

impl HistData {
    /// Snapshot of `h`.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        HistData(
            h.iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect(),
        )
    }

    /// Adds the snapshot into `h`.
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &[value, count] in &self.0 {
            // value_iterated_to() of a bucket maps back into the same bucket
            let _ = h.record_n(value.clamp(1, MAX_LATENCY_US), count);
        }
    }

    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Cumulative counters of one agent (or of all agents, added up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connections whose handshake succeeded (first time only).
    pub opened: u64,
    /// Connections whose first handshake failed.
    pub failed: u64,
    /// Connections open right now.
    pub open: u64,
    /// Connections the server or the network closed during the run.
    pub dropped: u64,
    /// Successful reconnections after a drop.
    pub reconnects: u64,
    /// `send` frames written.
    pub sent: u64,
    /// `sent` frames received (messages the server acknowledged).
    pub acked: u64,
    /// `error` frames answering a `send`.
    pub refused: u64,
    /// Messages received for the first time on their recipient's device.
    pub delivered: u64,
    /// Messages received for the first time on their sender's own device.
    pub echoed: u64,
    /// Pushes of a `useq` the device had already seen.
    pub retransmits: u64,
    /// A message received twice on one device under different `useq`s.
    pub duplicated: u64,
    /// New `useq`s lower than one already seen on the device.
    pub out_of_order: u64,
    /// `error` frames not tied to a send.
    pub server_errors: u64,
    /// `kick` frames.
    pub kicks: u64,
    /// Pushes whose body was not one of this run's messages.
    pub foreign: u64,
}

impl Counters {
    /// Adds `o` field by field.
    pub fn add(&mut self, o: &Counters) {
        self.opened += o.opened;
        self.failed += o.failed;
        self.open += o.open;
        self.dropped += o.dropped;
        self.reconnects += o.reconnects;
        self.sent += o.sent;
        self.acked += o.acked;
        self.refused += o.refused;
        self.delivered += o.delivered;
        self.echoed += o.echoed;
        self.retransmits += o.retransmits;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.server_errors += o.server_errors;
        self.kicks += o.kicks;
        self.foreign += o.foreign;
    }
}

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
}

impl VerifyCounts {
    /// Adds `o` field by field.
    pub fn add(&mut self, o: &VerifyCounts) {
        self.lost += o.lost;
        self.lost_echo += o.lost_echo;
        self.unacked += o.unacked;
        self.received_unacked += o.received_unacked;
        self.undeliverable += o.undeliverable;
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

/// The longest time during which no device of any agent received a push, between the
/// first push and the last (intervals in unix µs). Each agent was silent outside its
/// span and during its gaps; the run was silent where all of them were.
pub fn longest_silence(agents: &[&PushTimes]) -> Option<[u64; 2]> {
    let first = agents.iter().map(|a| a.span_us[0]).min()?;
    let last = agents.iter().map(|a| a.span_us[1]).max()?;
    let silent = |a: &PushTimes| -> Vec<[u64; 2]> {
        let mut v = Vec::with_capacity(a.gaps_us.len() + 2);
        v.push([0, a.span_us[0]]);
        v.extend_from_slice(&a.gaps_us);
        v.push([a.span_us[1], u64::MAX]);
        v
    };
    let mut common = silent(agents[0]);
    for a in &agents[1..] {
        let other = silent(a);
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        while i < common.len() && j < other.len() {
            let lo = common[i][0].max(other[j][0]);
            let hi = common[i][1].min(other[j][1]);
            if lo < hi {
                out.push([lo, hi]);
            }
            if common[i][1] < other[j][1] {
                i += 1;
            } else {
                j += 1;
            }
        }
        common = out;
    }
    common
        .into_iter()
        .map(|[lo, hi]| [lo.max(first), hi.min(last)])
        .filter(|[lo, hi]| lo < hi)
        .max_by_key(|[lo, hi]| hi - lo)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Number of samples.
    pub count: u64,
}

impl LatencySummary {
    /// Percentiles of a microsecond histogram, in milliseconds (all 0 when empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

/// One point of a latency distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    /// Fraction of samples at or below `ms` (0…1).
    pub quantile: f64,
    /// Latency, milliseconds.
    pub ms: f64,
}

/// The percentile distribution of a microsecond histogram, as HdrHistogram prints it
/// (5 steps per halving of the distance to 100%), in milliseconds.
pub fn distribution(h: &Histogram<u64>) -> Vec<Quantile> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| Quantile {
            quantile: v.quantile_iterated_to(),
            ms: v.value_iterated_to() as f64 / 1000.0,
        })
        .collect()
}

/// Events per second, 0 for an empty window.
pub fn per_second(count: u64, millis: u64) -> f64 {
    if millis == 0 {
        0.0
    } else {
        count as f64 * 1000.0 / millis as f64
    }
}

/// `connections` of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsSection {
    /// Planned.
    pub target: u64,
    /// Handshakes that succeeded.
    pub opened: u64,
    /// Handshakes that failed.
    pub failed: u64,
    /// Closed by the server or network during the run.
    pub dropped: u64,
    /// Reconnections after a drop.
    pub reconnects: u64,
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
    /// `send` frames written.
    pub sent: u64,
    /// Acknowledged by `sent`.
    pub acked: u64,
    /// Refused with `error`.
    pub refused: u64,
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
    /// Per agent.
    pub agents: Vec<AgentSection>,
    /// Errors by kind, all agents.
    pub errors: Vec<ErrorSample>,
    /// Whether the run passed (no loss when verifying, every agent finished).
    pub ok: bool,
    /// Why not.
    pub failures: Vec<String>,
}

/// Adds up agent reports into the report's sections. `statuses[i]` says what became
/// of agent i (`ok`, `died: …`); an agent with no report contributes nothing but its
/// planned connections, which count as failed.
pub fn combine(
    run: RunSection,
    planned: &[u64],
    finals: &[Option<AgentReport>],
    statuses: &[String],
    handshakes_peak: f64,
) -> Report {
    let mut counters = Counters::default();
    let mut verify = VerifyCounts::default();
    let mut latency = new_histogram();
    let mut ack_latency = new_histogram();
    let mut errors = Vec::new();
    let mut agents = Vec::new();
    let (mut first_open, mut last_open, mut traffic_ms) = (None::<u64>, None::<u64>, 0u64);
    let mut missing_connections = 0;
    let mut open_at_end = 0;
    for (i, planned) in planned.iter().enumerate() {
        let status = statuses.get(i).cloned().unwrap_or_else(|| "unknown".into());
        let Some(r) = finals.get(i).and_then(Option::as_ref) else {
            missing_connections += planned;
            agents.push(AgentSection {
                agent: i,
                status,
                connections: *planned,
                ..Default::default()
            });
            continue;
        };
        counters.add(&r.counters);
        open_at_end += r.open_at_stop;
        if let Some(v) = &r.verify {
            verify.add(v);
        }
        let mut h = new_histogram();
        r.latency.add_to(&mut h);
        latency.add(&h).expect("histograms share bounds");
        r.ack_latency.add_to(&mut ack_latency);
        for e in &r.errors {
            add_error(&mut errors, &e.kind, e.count, &e.sample);
        }
        first_open = match (first_open, r.first_open_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last_open = last_open.max(r.last_open_ms);
        traffic_ms = traffic_ms.max(r.traffic_ms);
        agents.push(AgentSection {
            agent: i,
            pid: r.pid,
            addr: String::new(),
            status,
            connections: r.connections,
            counters: r.counters,
            verify: r.verify,
            latency_ms: LatencySummary::from_histogram(&h),
        });
    }
    let pushes: Vec<&PushTimes> = finals
        .iter()
        .flatten()
        .filter_map(|r| r.pushes.as_ref())
        .collect();
    let delivery_gap = match longest_silence(&pushes) {
        Some([from, to]) => DeliveryGap {
            longest_ms: (to - from) as f64 / 1000.0,
            from_unix_ms: Some(from / 1000),
            to_unix_ms: Some(to / 1000),
        },
        None => DeliveryGap::default(),
    };
    let ramp_ms = match (first_open, last_open) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => 0,
    };
    let mut failures = Vec::new();
    for a in &agents {
        if a.status != "ok" {
            failures.push(format!("agent {}: {}", a.agent, a.status));
        }
    }
    if run.verify {
        if verify.lost > 0 {
            failures.push(format!(
                "{} acknowledged message(s) never reached the recipient",
                verify.lost
            ));
        }
        if verify.lost_echo > 0 {
            failures.push(format!(
                "{} acknowledged message(s) never reached the sender's own device",
                verify.lost_echo
            ));
        }
    }
    Report {
        connections: ConnectionsSection {
            target: planned.iter().sum(),
            opened: counters.opened,
            failed: counters.failed + missing_connections,
            dropped: counters.dropped,
            reconnects: counters.reconnects,
            open_at_end,
            handshakes_per_s: if ramp_ms == 0 {
                counters.opened as f64
            } else {
                per_second(counters.opened.saturating_sub(1), ramp_ms)
            },
            handshakes_per_s_peak: handshakes_peak,
        },
        messages: MessagesSection {
            sent: counters.sent,
            acked: counters.acked,
            refused: counters.refused,
            delivered: counters.delivered,
            echoed: counters.echoed,
            lost: verify.lost,
            lost_echo: verify.lost_echo,
            duplicated: counters.duplicated,
            out_of_order: counters.out_of_order,
            retransmits: counters.retransmits,
            unacked: verify.unacked,
            undeliverable: verify.undeliverable,
        },
        latency_ms: LatencySummary::from_histogram(&latency),
        ack_latency_ms: LatencySummary::from_histogram(&ack_latency),
        latency_distribution: distribution(&latency),
        ack_latency_distribution: distribution(&ack_latency),
        throughput: ThroughputSection {
            sent_per_s: per_second(counters.sent, traffic_ms),
            delivered_per_s: per_second(counters.delivered, traffic_ms),
        },
        delivery_gap,
        ok: failures.is_empty(),
        failures,
        agents,
        errors,
        run,
    }
}

/// The human summary printed at the end.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let run = &r.run;
    let _ = writeln!(
        s,
        "imbench {} run {}: {} connection(s) to {} target(s), {} agent process(es), {:.0}s load{}",
        run.scenario,
        run.run_id,
        r.connections.target,
        run.targets.len(),
        run.local_agents + run.remote_agents.len(),
        run.duration_s,
        if run.scenario != "idle" {
            format!(" at {} msg/s", run.rate)
        } else {
            String::new()
        }
    );
    let c = &r.connections;
    let _ = writeln!(
        s,
        "  connections  opened {}/{}  failed {}  dropped {}  reconnects {}  open at end {}  \
         handshakes/s {:.0} (peak {:.0})",
        c.opened,
        c.target,
        c.failed,
        c.dropped,
        c.reconnects,
        c.open_at_end,
        c.handshakes_per_s,
        c.handshakes_per_s_peak
    );
    if run.scenario != "idle" {
        let m = &r.messages;
        let _ = writeln!(
            s,
            "  messages     sent {}  acked {}  refused {}  delivered {}  echoed {}  retransmits {}",
            m.sent, m.acked, m.refused, m.delivered, m.echoed, m.retransmits
        );
        let l = &r.latency_ms;
        let _ = writeln!(
            s,
            "  latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={}, send→push)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
        let a = &r.ack_latency_ms;
        let _ = writeln!(
            s,
            "  ack ms       p50 {:.3}  p99 {:.3}  max {:.3}  (send→sent)",
            a.p50, a.p99, a.max
        );
        let t = &r.throughput;
        let _ = writeln!(
            s,
            "  throughput   sent {:.1}/s  delivered {:.1}/s  longest delivery gap {:.0} ms",
            t.sent_per_s, t.delivered_per_s, r.delivery_gap.longest_ms
        );
        if run.verify {
            let _ = writeln!(
                s,
                "  verify       lost {}  lost_echo {}  duplicated {}  out_of_order {}  unacked {}  \
                 undeliverable {}",
                m.lost, m.lost_echo, m.duplicated, m.out_of_order, m.unacked, m.undeliverable
            );
        }
    }
    for e in &r.errors {
        let _ = writeln!(s, "  error        {} x{}: {}", e.kind, e.count, e.sample);
    }
    if r.ok {
        let _ = writeln!(s, "  result       OK");
    } else {
        for f in &r.failures {
            let _ = writeln!(s, "  FAILED       {f}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_wire() {
        let mut h = new_histogram();
        for us in [1, 50, 51, 999, 1_000, 12_345, 5_000_000, u64::MAX] {
            record_us(&mut h, us);
        }
        let wire: HistData =
            serde_json::from_str(&serde_json::to_string(&HistData::from_histogram(&h)).unwrap())
                .unwrap();
        let mut back = new_histogram();
        wire.add_to(&mut back);
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q={q}");
        }
        assert!(back.max() >= 3_600_000_000 - 3_600_000);
    }

    #[test]
    fn latency_summary_in_ms() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record_us(&mut h, us * 10); // 10 µs … 10 ms, uniform
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p90 - 9.0).abs() < 0.01, "{s:?}");
        assert!((s.p99 - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.max - 10.0).abs() < 0.01, "{s:?}");
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram()),
            LatencySummary::default()
        );
    }

    fn agent(i: usize, opened: u64, delivered: u64, lost: u64, lat_us: u64) -> AgentReport {
        let mut h = new_histogram();
        for _ in 0..delivered {
            record_us(&mut h, lat_us);
        }
        AgentReport {
            agent: i,
            pid: 100 + i as u32,
            connections: 10,
            counters: Counters {
                opened,
                failed: 10 - opened,
                open: opened,
                sent: delivered + lost,
                acked: delivered + lost,
                delivered,
                ..Default::default()
            },
            latency: HistData::from_histogram(&h),
            verify: Some(VerifyCounts {
                lost,
                ..Default::default()
            }),
            first_open_ms: Some(1000 + i as u64),
            last_open_ms: Some(2000 + i as u64),
            traffic_ms: 10_000,
            errors: vec![ErrorSample {
                kind: "http 401".into(),
                count: 10 - opened,
                sample: "x".into(),
            }],
            ..Default::default()
        }
    }

    fn run(verify: bool) -> RunSection {
        RunSection {
            scenario: "chat".into(),
            verify,
            ..Default::default()
        }
    }

    #[test]
    fn combine_adds_up_agents() {
        let finals = vec![
            Some(agent(0, 10, 1000, 0, 1_000)),
            Some(agent(1, 8, 3000, 0, 3_000)),
        ];
        let r = combine(
            run(true),
            &[10, 10],
            &finals,
            &["ok".into(), "ok".into()],
            7.0,
        );
        assert!(r.ok, "{:?}", r.failures);
        assert_eq!(
            (
                r.connections.target,
                r.connections.opened,
                r.connections.failed
            ),
            (20, 18, 2)
        );
        // 18 handshakes from t=1000 to t=2001: 17 intervals in 1.001 s
        assert!((r.connections.handshakes_per_s - 17.0 / 1.001).abs() < 1e-9);
        assert_eq!(r.connections.handshakes_per_s_peak, 7.0);
        assert_eq!((r.messages.sent, r.messages.delivered), (4000, 4000));
        assert_eq!(r.throughput.delivered_per_s, 400.0);
        // 1000 samples at 1 ms and 3000 at 3 ms: the median is 3 ms
        assert_eq!(r.latency_ms.count, 4000);
        assert!((r.latency_ms.p50 - 3.0).abs() < 0.01);
        assert!((r.agents[0].latency_ms.p99 - 1.0).abs() < 0.01);
        assert_eq!(
            r.errors,
            vec![ErrorSample {
                kind: "http 401".into(),
                count: 2,
                sample: "x".into()
            }]
        );
    }

    #[test]
    fn loss_and_dead_agents_fail_the_run() {
        let finals = vec![Some(agent(0, 10, 1000, 2, 1_000)), None];
        let r = combine(
            run(true),
            &[10, 10],
            &finals,
            &["ok".into(), "died: exit 9".into()],
            0.0,
        );
        assert!(!r.ok);
        assert_eq!(r.messages.lost, 2);
        assert_eq!(r.connections.failed, 10);
        assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
        // without --verify a loss count is not a failure
        let finals = vec![Some(agent(0, 10, 1000, 2, 1_000))];
        assert!(combine(run(false), &[10], &finals, &["ok".into()], 0.0).ok);
    }

    #[test]
    fn report_json_has_the_contract_fields() {
        let r = combine(
            run(true),
            &[10],
            &[Some(agent(0, 10, 10, 0, 5))],
            &["ok".into()],
            0.0,
        );
        let v = serde_json::to_value(&r).unwrap();
        for path in [
            "/connections/target",
            "/connections/opened",
            "/connections/failed",
            "/messages/sent",
            "/messages/delivered",
            "/messages/lost",
            "/messages/duplicated",
            "/messages/out_of_order",
            "/latency_ms/p50",
            "/latency_ms/p90",
            "/latency_ms/p99",
            "/latency_ms/p999",
            "/latency_ms/max",
            "/throughput/sent_per_s",
            "/throughput/delivered_per_s",
            "/agents/0/status",
        ] {
            assert!(v.pointer(path).is_some(), "{path} missing in {v}");
        }
        assert!(summary(&r).contains("result       OK"));
    }

    #[test]
    fn the_longest_silence_is_where_every_agent_was_silent() {
        let a = PushTimes {
            span_us: [100, 10_000],
            gaps_us: vec![[1_000, 5_000], [6_000, 9_000]],
        };
        let b = PushTimes {
            span_us: [200, 12_000],
            gaps_us: vec![[2_000, 7_000]],
        };
        // a: silent 1000-5000 and 6000-9000; b: 2000-7000 → both 2000-5000, 6000-7000
        assert_eq!(longest_silence(&[&a, &b]), Some([2_000, 5_000]));
        assert_eq!(longest_silence(&[&a]), Some([1_000, 5_000]));
        // one agent finished before the other began: the run was silent between
        let c = PushTimes {
            span_us: [100, 3_000],
            gaps_us: vec![],
        };
        let d = PushTimes {
            span_us: [8_000, 9_000],
            gaps_us: vec![],
        };
        assert_eq!(longest_silence(&[&c, &d]), Some([3_000, 8_000]));
        assert_eq!(longest_silence(&[]), None);
        let e = PushTimes {
            span_us: [5, 5],
            gaps_us: vec![],
        };
        assert_eq!(longest_silence(&[&e]), None);
    }

    #[test]
    fn rates_guard_empty_windows() {
        assert_eq!(per_second(10, 0), 0.0);
        assert_eq!(per_second(10, 2000), 5.0);
    }
}

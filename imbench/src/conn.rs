//! What every connection task of an agent shares: the plan, the resolved targets, token
//! minting, the clock, and the live counters and samples ([`Stats`]) that the agent
//! reads out once a second and at the end.
//!
//! The scenarios decide what to count; this module owns how it is kept (atomics, and
//! short std-mutex sections for histograms and samples). It must not open sockets or
//! decide anything about a connection's life.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Timeline};
use crate::dial::{Endpoint, TokenMinter};
use crate::plan::AgentPlan;
use crate::report::{self, Counters, ErrorSample, LiveCounters, LiveService, PushTimes};

/// Live counters of one agent, shared by its connection tasks.
#[derive(Debug, Default)]
pub struct Stats {
    /// The counters of [`Counters`], one atomic each.
    pub(crate) counts: LiveCounters,
    /// The customer-service workflow's figures (`--max-open`, `--close-after`).
    pub(crate) service: LiveService,
    first_open_ms: AtomicU64,
    last_open_ms: AtomicU64,
    // std Mutexes: a record is a few nanoseconds and never awaits.
    latency_delta: Mutex<Option<Histogram<u64>>>,
    ack_latency: Mutex<Option<Histogram<u64>>>,
    errors: Mutex<Vec<ErrorSample>>,
    gaps: Mutex<GapTracker>,
}

/// When this agent's devices received pushes: the first and last, and every pause of
/// at least [`GAP_MIN_US`] between two, so that the coordinator can find the longest
/// time during which no device of any agent received anything.
#[derive(Debug, Default)]
struct GapTracker {
    span: Option<[u64; 2]>,
    gaps: Vec<[u64; 2]>,
}

/// Pauses shorter than this are not recorded (a global pause of at least this long is
/// a recorded pause on every agent, so the coordinator's figure is exact above it).
pub const GAP_MIN_US: u64 = 50_000;
/// Most pauses one agent records (a 50 ms pause at least: 20 a second).
const MAX_GAPS: usize = 20_000;

impl GapTracker {
    fn record(&mut self, unix_us: u64) {
        match &mut self.span {
            None => self.span = Some([unix_us, unix_us]),
            Some([_, last]) => {
                if unix_us >= *last + GAP_MIN_US && self.gaps.len() < MAX_GAPS {
                    self.gaps.push([*last, unix_us]);
                }
                *last = (*last).max(unix_us);
            }
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn new() -> Self {
        let s = Stats::default();
        s.first_open_ms.store(u64::MAX, Ordering::Relaxed);
        s
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.counts.snapshot()
    }

    /// A first handshake succeeded at `elapsed_ms`.
    pub(crate) fn opened_at(&self, elapsed_ms: u64) {
        bump(&self.counts.opened);
        bump(&self.counts.open);
        self.first_open_ms.fetch_min(elapsed_ms, Ordering::Relaxed);
        self.last_open_ms.fetch_max(elapsed_ms, Ordering::Relaxed);
    }

    /// Records that a device received a new push now (unix µs).
    pub(crate) fn record_push(&self, unix_us: u64) {
        self.gaps
            .lock()
            .expect("gaps lock poisoned")
            .record(unix_us);
    }

    /// Records a delivery latency.
    pub(crate) fn record_latency(&self, us: u64) {
        let mut h = self.latency_delta.lock().expect("latency lock poisoned");
        report::record_us(h.get_or_insert_with(report::new_histogram), us);
    }

    /// Records an acknowledgement latency.
    pub(crate) fn record_ack_latency(&self, us: u64) {
        let mut h = self.ack_latency.lock().expect("latency lock poisoned");
        report::record_us(h.get_or_insert_with(report::new_histogram), us);
    }

    /// Counts an error of `kind`, keeping the first message as a sample.
    pub(crate) fn error(&self, kind: &str, sample: &str) {
        let mut errors = self.errors.lock().expect("errors lock poisoned");
        report::add_error(&mut errors, kind, 1, sample);
    }

    /// Takes the latency samples recorded since the last call.
    pub(crate) fn take_latency(&self) -> Option<Histogram<u64>> {
        self.latency_delta
            .lock()
            .expect("latency lock poisoned")
            .take()
    }

    /// Takes the acknowledgement latencies recorded so far (the final report's).
    pub(crate) fn take_ack_latency(&self) -> Option<Histogram<u64>> {
        self.ack_latency
            .lock()
            .expect("latency lock poisoned")
            .take()
    }

    /// Milliseconds from the start to the first and to the last first handshake, if
    /// any succeeded.
    pub(crate) fn open_span_ms(&self) -> Option<(u64, u64)> {
        let first = self.first_open_ms.load(Ordering::Relaxed);
        let last = self.last_open_ms.load(Ordering::Relaxed);
        (first != u64::MAX).then_some((first, last))
    }

    /// Takes when this agent's devices received pushes (None: never).
    pub(crate) fn take_pushes(&self) -> Option<PushTimes> {
        let g = std::mem::take(&mut *self.gaps.lock().expect("gaps lock poisoned"));
        g.span.map(|span| PushTimes {
            span_us: span,
            gaps_us: g.gaps,
        })
    }

    /// The errors so far, by kind.
    pub(crate) fn errors(&self) -> Vec<ErrorSample> {
        self.errors.lock().expect("errors lock poisoned").clone()
    }

    /// Counts `missed` connections that were never tried because the run stopped
    /// before their turn in the ramp.
    pub(crate) fn not_attempted(&self, missed: u64) {
        self.counts.failed.fetch_add(missed, Ordering::Relaxed);
        let errors = &mut self.errors.lock().expect("errors lock poisoned");
        report::add_error(
            errors,
            "not attempted",
            missed,
            "stopped before its turn in the ramp",
        );
    }
}

/// What every connection task of an agent shares.
pub struct Ctx {
    /// The plan.
    pub plan: AgentPlan,
    /// Resolved targets, indexed like `plan.targets`.
    pub endpoints: Vec<Endpoint>,
    /// Token minting.
    pub minter: TokenMinter,
    /// HTTP client for the few calls a scenario makes besides its WebSocket (a shop
    /// agent's closes); one pool per agent process.
    pub http: reqwest::Client,
    /// Client WebSocket settings.
    pub ws_config: WebSocketConfig,
    /// The plan's clock.
    pub clock: Clock,
    /// Phase boundaries.
    pub timeline: Timeline,
    /// Counters.
    pub stats: Stats,
    /// Cancelled when connections must close.
    pub stop: CancellationToken,
}

impl Ctx {
    /// Target of global connection `i` for its try `attempt` (0: the first connection):
    /// its own target, or with `--spread`, where the targets are one cluster's workers,
    /// the `attempt`-th one after it.
    pub fn endpoint_for(&self, i: u64, attempt: u64) -> &Endpoint {
        let own = self.plan.target_of(i);
        let shift = if self.plan.spread { attempt } else { 0 };
        &self.endpoints
            [(own + (shift % self.endpoints.len() as u64) as usize) % self.endpoints.len()]
    }

    /// The HTTP base URL (`http://host:port`) of global connection `i`'s own target.
    pub fn http_base(&self, i: u64) -> String {
        format!(
            "http://{}",
            self.plan.targets[self.plan.target_of(i)].authority
        )
    }

    /// Source address of global connection `i`.
    pub fn source(&self, i: u64) -> Option<std::net::IpAddr> {
        let ips = &self.plan.source_ips;
        (!ips.is_empty()).then(|| ips[(i % ips.len() as u64) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_pauses_between_pushes() {
        let mut g = GapTracker::default();
        for t in [
            1_000_000, 1_010_000, 1_100_000, 1_100_500, 2_000_000, 1_999_000,
        ] {
            g.record(t);
        }
        assert_eq!(g.span, Some([1_000_000, 2_000_000]));
        assert_eq!(g.gaps, vec![[1_010_000, 1_100_000], [1_100_500, 2_000_000]]);
    }
}

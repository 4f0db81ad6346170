//! One load agent: it owns a share of the connections, opens them on the global ramp
//! schedule, runs the scenario on each (one task per connection), reports counters
//! and a latency histogram delta every second, and a final report with the delivery
//! check at the end.
//!
//! An agent runs inside the coordinator ([`serve`] on channels), as a child process
//! (`imbench agent`: plan and [`Control`] as JSON lines on stdin, [`AgentEvent`]s as
//! JSON lines on stdout), or as a TCP server for remote coordinators (`imbench agent
//! --listen`); [`crate::link`] carries the lines. A child must never print anything
//! else on stdout, and every agent stops by itself: at the end of its plan, on
//! `stop`, or when its link closes (the coordinator is gone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::cli::{AgentArgs, Scenario};
use crate::dial::{Endpoint, TokenMinter};
use crate::plan::{AgentPlan, Secret};
use crate::report::{self, AgentReport, Counters, ErrorSample, HistData, PushTimes};
use crate::scenario::{self, Outcome};

/// How long an agent waits for `start` before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connection tasks get to close after the stop before they are aborted.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Coordinator → agent, after the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Control {
    /// Start the plan's clock at this unix time (ms), so that all agents ramp as one.
    Start {
        /// Unix milliseconds.
        at_unix_ms: u64,
    },
    /// Stop now: close the connections and send the final report.
    Stop,
}

/// Agent → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one Final per run
pub enum AgentEvent {
    /// The plan is accepted; waiting for `start`.
    Ready {
        /// Agent index.
        agent: usize,
        /// Process id.
        pid: u32,
        /// Open-files soft limit after raising it.
        fd_soft: u64,
        /// Open-files hard limit.
        fd_hard: u64,
    },
    /// Once a second.
    Tick {
        /// Agent index.
        agent: usize,
        /// Milliseconds since the start.
        elapsed_ms: u64,
        /// Cumulative counters.
        counters: Counters,
        /// Latency samples since the previous tick (µs).
        latency: HistData,
    },
    /// The last event of a successful run.
    Final(AgentReport),
    /// The agent could not run its plan.
    Failed {
        /// Agent index.
        agent: usize,
        /// Why.
        message: String,
    },
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The plan's clock: when the run starts, and the mapping from `Instant` to the unix
/// microseconds carried in message bodies (one mapping per agent, so latency inside
/// an agent is monotonic even if the wall clock steps).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The start of the plan.
    pub t0: Instant,
    unix_us_at_t0: i128,
}

impl Clock {
    /// A clock whose start is the unix time `at_unix_ms`.
    pub fn starting_at(at_unix_ms: u64) -> Self {
        let now = Instant::now();
        let now_ms = unix_ms();
        let t0 = if at_unix_ms >= now_ms {
            now + Duration::from_millis(at_unix_ms - now_ms)
        } else {
            now.checked_sub(Duration::from_millis(now_ms - at_unix_ms))
                .unwrap_or(now)
        };
        Clock {
            t0,
            unix_us_at_t0: i128::from(at_unix_ms) * 1000,
        }
    }

    /// `at` as unix microseconds.
    pub fn unix_us(&self, at: Instant) -> u64 {
        let offset = if at >= self.t0 {
            (at - self.t0).as_micros() as i128
        } else {
            -((self.t0 - at).as_micros() as i128)
        };
        (self.unix_us_at_t0 + offset).max(0) as u64
    }

    /// Now as unix microseconds.
    pub fn now_us(&self) -> u64 {
        self.unix_us(Instant::now())
    }

    /// Milliseconds since the start (0 before it).
    pub fn elapsed_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.t0)
            .as_millis() as u64
    }
}

/// When things happen, from the plan.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Start.
    pub t0: Instant,
    /// Connections per second, over all agents.
    pub ramp_per_s: f64,
    /// First message.
    pub traffic_start: Instant,
    /// No message is sent from here on.
    pub traffic_end: Instant,
    /// Connections close here.
    pub close_at: Instant,
}

impl Timeline {
    /// The timeline of `plan` starting at `t0`.
    pub fn new(plan: &AgentPlan, t0: Instant) -> Self {
        let ms = Duration::from_millis;
        let traffic_start = t0 + ms(plan.ramp_ms + plan.settle_ms);
        let traffic_end = traffic_start + ms(plan.duration_ms);
        Timeline {
            t0,
            ramp_per_s: plan.ramp_per_s,
            traffic_start,
            traffic_end,
            close_at: traffic_end + ms(plan.drain_ms),
        }
    }

    /// When global connection `i` opens.
    pub fn open_at(&self, i: u64) -> Instant {
        self.t0 + Duration::from_secs_f64(i as f64 / self.ramp_per_s)
    }
}

/// Live counters of one agent, shared by its connection tasks.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) opened: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) echoed: AtomicU64,
    pub(crate) retransmits: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) kicks: AtomicU64,
    pub(crate) foreign: AtomicU64,
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
    fn new() -> Self {
        let s = Stats::default();
        s.first_open_ms.store(u64::MAX, Ordering::Relaxed);
        s
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            opened: g(&self.opened),
            failed: g(&self.failed),
            open: g(&self.open),
            dropped: g(&self.dropped),
            reconnects: g(&self.reconnects),
            sent: g(&self.sent),
            acked: g(&self.acked),
            refused: g(&self.refused),
            delivered: g(&self.delivered),
            echoed: g(&self.echoed),
            retransmits: g(&self.retransmits),
            duplicated: g(&self.duplicated),
            out_of_order: g(&self.out_of_order),
            server_errors: g(&self.server_errors),
            kicks: g(&self.kicks),
            foreign: g(&self.foreign),
        }
    }

    /// A first handshake succeeded at `elapsed_ms`.
    pub(crate) fn opened_at(&self, elapsed_ms: u64) {
        bump(&self.opened);
        bump(&self.open);
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
    fn take_latency(&self) -> Option<Histogram<u64>> {
        self.latency_delta
            .lock()
            .expect("latency lock poisoned")
            .take()
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

    /// Source address of global connection `i`.
    pub fn source(&self, i: u64) -> Option<std::net::IpAddr> {
        let ips = &self.plan.source_ips;
        (!ips.is_empty()).then(|| ips[(i % ips.len() as u64) as usize])
    }
}

/// Runs an agent on channels: sends `Ready`, waits for `Start`, runs the plan, minting
/// client tokens with `token_secret`, sends `Final` (or `Failed`). Returns when the
/// final event is sent.
pub async fn serve(
    plan: AgentPlan,
    token_secret: Secret,
    mut control: mpsc::Receiver<Control>,
    events: mpsc::Sender<AgentEvent>,
) -> anyhow::Result<()> {
    let agent = plan.agent;
    let result = async {
        let limits = crate::limits::raise_nofile()?;
        let _ = events
            .send(AgentEvent::Ready {
                agent,
                pid: std::process::id(),
                fd_soft: limits.soft,
                fd_hard: limits.hard,
            })
            .await;
        let at_unix_ms = match tokio::time::timeout(START_TIMEOUT, control.recv()).await {
            Ok(Some(Control::Start { at_unix_ms })) => at_unix_ms,
            Ok(Some(Control::Stop)) | Ok(None) => return Ok(None),
            Err(_) => anyhow::bail!("no start within {START_TIMEOUT:?}"),
        };
        let stop = CancellationToken::new();
        let watcher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                // Stop on request, and when the coordinator goes away.
                loop {
                    match control.recv().await {
                        Some(Control::Stop) | None => break,
                        Some(Control::Start { .. }) => {}
                    }
                }
                stop.cancel();
            })
        };
        let report = run_load(plan, &token_secret, at_unix_ms, stop, events.clone()).await;
        watcher.abort();
        report.map(Some)
    }
    .await;
    match result {
        Ok(Some(report)) => {
            let _ = events.send(AgentEvent::Final(report)).await;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(error) => {
            let message = format!("{error:#}");
            let _ = events.send(AgentEvent::Failed { agent, message }).await;
            Err(error)
        }
    }
}

/// Runs the plan from `at_unix_ms` until its end or `stop`, sending a tick a second.
async fn run_load(
    plan: AgentPlan,
    token_secret: &Secret,
    at_unix_ms: u64,
    stop: CancellationToken,
    events: mpsc::Sender<AgentEvent>,
) -> anyhow::Result<AgentReport> {
    let mut endpoints = Vec::with_capacity(plan.targets.len());
    for t in &plan.targets {
        endpoints.push(Endpoint::resolve(t).await?);
    }
    let clock = Clock::starting_at(at_unix_ms);
    let timeline = Timeline::new(&plan, clock.t0);
    // Tokens outlive the run by an hour, whatever happens to it.
    let valid_for =
        Duration::from_millis(plan.ramp_ms + plan.duration_ms) + Duration::from_secs(3600);
    let ctx = Arc::new(Ctx {
        minter: TokenMinter::new(token_secret.expose(), valid_for),
        ws_config: crate::dial::ws_config(plan.read_buffer),
        endpoints,
        clock,
        timeline,
        stats: Stats::new(),
        stop: stop.clone(),
        plan,
    });

    // Close everything at the end of the plan (or earlier, on stop).
    let closer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(timeline.close_at.into()).await;
            stop.cancel();
        })
    };

    let mut spawner = tokio::spawn(spawn_connections(ctx.clone()));
    let mut ticks = tokio::time::interval_at(
        (clock.t0 + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut latency = report::new_histogram();
    let outcomes = loop {
        tokio::select! {
            joined = &mut spawner => break joined.context("connection spawner panicked")?,
            _ = ticks.tick() => {
                let delta = ctx.stats.take_latency();
                if let Some(d) = &delta {
                    latency.add(d).expect("histograms share bounds");
                }
                let _ = events.send(AgentEvent::Tick {
                    agent: ctx.plan.agent,
                    elapsed_ms: ctx.clock.elapsed_ms(),
                    counters: ctx.stats.counters(),
                    latency: delta.as_ref().map(HistData::from_histogram).unwrap_or_default(),
                }).await;
            }
        }
    };
    closer.abort();
    if let Some(d) = ctx.stats.take_latency() {
        latency.add(&d).expect("histograms share bounds");
    }
    let messaging = ctx.plan.scenario != Scenario::Idle;
    let verify = messaging.then(|| scenario::traffic::check(&ctx.plan, &outcomes));
    let traffic_ms = if messaging {
        let end = Instant::now().min(timeline.traffic_end);
        end.saturating_duration_since(timeline.traffic_start)
            .as_millis() as u64
    } else {
        0
    };
    let ack_latency = ctx
        .stats
        .ack_latency
        .lock()
        .expect("latency lock poisoned")
        .take();
    let first = ctx.stats.first_open_ms.load(Ordering::Relaxed);
    let last = ctx.stats.last_open_ms.load(Ordering::Relaxed);
    let counters = ctx.stats.counters();
    let report = AgentReport {
        agent: ctx.plan.agent,
        pid: std::process::id(),
        connections: ctx.plan.count,
        counters,
        latency: HistData::from_histogram(&latency),
        ack_latency: ack_latency
            .as_ref()
            .map(HistData::from_histogram)
            .unwrap_or_default(),
        verify: if ctx.plan.verify { verify } else { None },
        first_open_ms: (first != u64::MAX).then_some(first),
        last_open_ms: (first != u64::MAX).then_some(last),
        traffic_ms,
        // Up when the stop came: every open minus every drop (the closes that
        // follow the stop are imbench's own).
        open_at_stop: counters.opened + counters.reconnects - counters.dropped,
        pushes: {
            let g = std::mem::take(&mut *ctx.stats.gaps.lock().expect("gaps lock poisoned"));
            g.span.map(|span| PushTimes {
                span_us: span,
                gaps_us: g.gaps,
            })
        },
        errors: ctx
            .stats
            .errors
            .lock()
            .expect("errors lock poisoned")
            .clone(),
    };
    Ok(report)
}

/// Opens this agent's connections on the global schedule, one task each, and
/// collects what each saw once they have all closed.
async fn spawn_connections(ctx: Arc<Ctx>) -> HashMap<u64, Outcome> {
    let mut tasks = Vec::with_capacity(ctx.plan.count as usize);
    for i in ctx.plan.indices() {
        tokio::select! {
            _ = tokio::time::sleep_until(ctx.timeline.open_at(i).into()) => {}
            _ = ctx.stop.cancelled() => {
                let missed = ctx.plan.first + ctx.plan.count - i;
                ctx.stats.failed.fetch_add(missed, Ordering::Relaxed);
                let errors = &mut ctx.stats.errors.lock().expect("errors lock poisoned");
                report::add_error(errors, "not attempted", missed, "stopped before its turn in the ramp");
                break;
            }
        }
        let task_ctx = ctx.clone();
        tasks.push((i, tokio::spawn(scenario::run_connection(task_ctx, i))));
    }
    ctx.stop.cancelled().await;
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    let mut outcomes = HashMap::with_capacity(tasks.len());
    for (i, mut task) in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(outcome)) => {
                outcomes.insert(i, outcome);
            }
            Ok(Err(error)) => ctx.stats.error("task", &format!("connection {i}: {error}")),
            Err(_) => {
                task.abort();
                ctx.stats.error(
                    "close timeout",
                    &format!("connection {i} did not close in {CLOSE_GRACE:?}"),
                );
            }
        }
    }
    outcomes
}

/// `imbench agent`: with `--listen`, serve coordinators over TCP, each authenticated
/// with `--token-secret` before it may send a plan; without, the plan (with the token
/// secret) is the first JSON line on stdin, then [`Control`] lines, and
/// [`AgentEvent`]s go to stdout, one JSON line each (how `--local-agents` starts it).
pub async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    match (args.listen, args.token_secret) {
        (Some(addr), Some(secret)) => crate::link::listen(&addr, args.once, secret).await,
        (Some(_), None) => anyhow::bail!(
            "--listen needs --token-secret (or IMBENCH_TOKEN_SECRET): coordinators prove \
             that they hold it, and the agent mints its client tokens with it"
        ),
        // A child of the coordinator: the secret comes with the plan, on the pipe.
        (None, _) => {
            crate::link::serve_agent(
                tokio::io::stdin(),
                tokio::io::stdout(),
                crate::link::AgentSecret::InPlan,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_instants_to_unix_time() {
        let at = unix_ms() + 2_000;
        let c = Clock::starting_at(at);
        assert_eq!(c.unix_us(c.t0), at * 1000);
        assert_eq!(
            c.unix_us(c.t0 + Duration::from_micros(1_500)),
            at * 1000 + 1_500
        );
        assert_eq!(c.elapsed_ms(), 0);
        let now = c.now_us();
        assert!(
            now + 2_100_000 > at * 1000 && now < at * 1000,
            "{now} vs {at}"
        );
    }

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

    #[test]
    fn control_lines_are_stable() {
        assert_eq!(
            serde_json::to_string(&Control::Start { at_unix_ms: 5 }).unwrap(),
            r#"{"cmd":"start","at_unix_ms":5}"#
        );
        assert_eq!(
            serde_json::to_string(&Control::Stop).unwrap(),
            r#"{"cmd":"stop"}"#
        );
    }
}

//! One load agent: it owns a share of the connections, opens them on the global ramp
//! schedule, runs the scenario on each (one task per connection), reports counters
//! and a latency histogram delta every second, and a final report with the delivery
//! check at the end.
//!
//! An agent runs inside the coordinator ([`serve`] on channels), as a child process
//! (`imbench agent`: plan and [`Control`] as JSON lines on stdin, [`AgentEvent`]s as
//! JSON lines on stdout), or as a TCP server for remote coordinators (`imbench agent
//! --listen`); `crate::link` carries the lines and is where `imbench agent` starts, so
//! this module knows nothing of links. What its connection tasks share (counters,
//! clock, endpoints) is `crate::conn`'s. A child must never print anything else on
//! stdout, and every agent stops by itself: at the end of its plan, on `stop`, or when
//! its link closes (the coordinator is gone).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shared::secret::Secret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::Scenario;
use crate::clock::{Clock, Timeline};
use crate::conn::{Ctx, Stats};
use crate::dial::{Endpoint, TokenMinter};
use crate::plan::AgentPlan;
use crate::report::{self, AgentReport, Counters, HistData};
use crate::scenario::{self, Outcome};

/// How long an agent waits for `start` before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connection tasks get to close after the stop before they are aborted.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Deadline of one HTTP call of a connection (a shop agent's close).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

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
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let ctx = Arc::new(Ctx {
        minter: TokenMinter::new(token_secret.expose(), valid_for),
        http,
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
    let ack_latency = ctx.stats.take_ack_latency();
    let open_span = ctx.stats.open_span_ms();
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
        first_open_ms: open_span.map(|(first, _)| first),
        last_open_ms: open_span.map(|(_, last)| last),
        traffic_ms,
        // Up when the stop came: every open minus every drop and churn (the closes
        // that follow the stop are imbench's own).
        open_at_stop: (counters.opened + counters.reconnects)
            .saturating_sub(counters.dropped + counters.churned),
        pushes: ctx.stats.take_pushes(),
        service: ctx.plan.workflow().then(|| ctx.stats.service.take_report()),
        errors: ctx.stats.errors(),
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
                ctx.stats.not_attempted(missed);
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

#[cfg(test)]
mod tests {
    use super::*;

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

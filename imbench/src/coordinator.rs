//! `imbench run`: the coordinator. It checks the plan against this machine, starts the
//! agents (in this process, or as `imbench agent` children), starts them together,
//! prints one progress line a second on stderr (and keeps each second for the report's
//! series), stops them at the end of the plan (or on Ctrl-C, or when they overrun), and
//! turns their final reports into the summary, the JSON report, its chart (with the
//! marks of `--mark-file`) and the exit code.
//!
//! It owns no sockets to imd. An agent that dies, fails or overruns is recorded in
//! the report and fails the run; it does not crash the coordinator.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use shared::link_auth::LinkKey;
use shared::secret::Secret;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::agent::{self, AgentEvent, Control};
use crate::cli::{RunArgs, Scenario};
use crate::clock::Clock;
use crate::limits;
use crate::link;
use crate::link::PlanLine;
use crate::plan::{AgentPlan, RunPlan, SETTLE_MS};
use crate::report::{
    self, AgentReport, Counters, LatencySummary, Report, RunSection, Second, SeriesSection,
};
use crate::setup;

/// How long agents get to say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack after the plan's end before agents are told to stop, then killed.
const OVERRUN_SLACK: Duration = Duration::from_secs(15);
/// Delay between `start` and the plan's time zero, so that every agent has it.
const START_DELAY: Duration = Duration::from_millis(500);

/// Runs `imbench run` and returns the process exit code: 0 when the run passed, 1
/// when it ran but failed (it did not happen as planned, or lost messages: see
/// `report::verdict`), errors before the run starts as `Err`.
pub async fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    let plan = RunPlan::from_args(&args)?;
    let fd = limits::raise_nofile()?;
    let per_process = limits::sockets_per_process(fd);
    let agents = AgentSet {
        local: if args.remote_agents.is_empty() {
            plan.agent_count(args.local_agents, per_process)
        } else {
            args.local_agents.unwrap_or(0)
        },
        remote: args.remote_agents.clone(),
    };
    if agents.remote.is_empty() {
        plan.check_capacity(agents.local, per_process, limits::ephemeral_ports())?;
    } else if agents.local > 0 {
        // Remote agents check their own share against their limit when they say
        // ready; ports are per machine, so only the local sockets are checked here.
        plan.check_capacity(agents.shares(), per_process, u64::MAX)?;
    }
    if plan.scenario == Scenario::Idle && args.rate != 100.0 {
        eprintln!("imbench: --rate has no effect on the idle scenario");
    }
    let setup = setup::admin_setup(&plan).await.context("admin set-up")?;
    if setup.units > 0 {
        eprintln!(
            "imbench: set up {} {} through the admin API in {:.1}s",
            setup.units,
            if plan.scenario == Scenario::Group {
                "group(s)"
            } else {
                "shop(s)"
            },
            setup.elapsed.as_secs_f64()
        );
    }
    let agent_bin = match &args.agent_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this binary to start agents")?,
    };
    let mut report = run_plan(&plan, &agents, agent_bin).await?;
    if let Some(path) = &args.mark_file {
        report.series.marks.extend(read_marks(path));
        report.series.marks.sort_by_key(|m| m.unix_ms);
    }
    print!("{}", report::summary(&report));
    if let Some(path) = &args.report {
        write_report(path, &report)?;
        let chart = chart_path(path);
        std::fs::write(&chart, crate::chart::html(&report))
            .with_context(|| format!("writing {}", chart.display()))?;
        eprintln!(
            "imbench: report written to {}, charts to {}",
            path.display(),
            chart.display()
        );
    }
    if !report.ok {
        eprintln!(
            "imbench: the run FAILED ({} problem(s)); see the summary above",
            report.failures.len()
        );
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The marks of a `--mark-file`; what cannot be read is said on stderr and skipped
/// (the marks only annotate the chart).
fn read_marks(path: &std::path::Path) -> Vec<report::Mark> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let (marks, bad) = report::parse_marks(&text);
            for b in bad {
                eprintln!("imbench: --mark-file {}: {b}; skipped", path.display());
            }
            marks
        }
        Err(e) => {
            eprintln!(
                "imbench: --mark-file {}: {e}; no marks on the chart",
                path.display()
            );
            Vec::new()
        }
    }
}

/// Where the chart of the report at `path` goes: `r.json` → `r.html`.
pub fn chart_path(path: &std::path::Path) -> PathBuf {
    path.with_extension("html")
}

/// Writes the JSON report.
pub fn write_report(path: &PathBuf, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("encoding the report")?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

/// What an agent link delivers: an event, or `None` when the link closed.
type Incoming = Option<AgentEvent>;

struct Link {
    control: Option<mpsc::Sender<Control>>,
    child: Option<Child>,
    /// Where the agent runs: `in-process`, `local`, or the remote `host:port`.
    addr: String,
    /// Why the agent never came up (a remote agent that could not be reached).
    failed: Option<String>,
}

#[derive(Default)]
struct AgentState {
    ready: bool,
    closed: bool,
    pid: u32,
    counters: Counters,
    final_report: Option<AgentReport>,
    failure: Option<String>,
}

/// Where the agents of a run come from.
#[derive(Debug, Clone, Default)]
pub struct AgentSet {
    /// Child processes on this machine (0 and no remote: one agent in this process).
    pub local: usize,
    /// Remote agents, `host:port`.
    pub remote: Vec<String>,
}

impl AgentSet {
    /// Number of agent shares of the plan.
    pub fn shares(&self) -> usize {
        (self.local + self.remote.len()).max(1)
    }

    /// Agent processes (0: the in-process agent).
    pub fn processes(&self) -> usize {
        self.local + self.remote.len()
    }
}

/// Runs `plan` on `agents` (child processes, remote agents, or this process) and
/// returns the combined report.
pub async fn run_plan(
    plan: &RunPlan,
    agents: &AgentSet,
    agent_bin: PathBuf,
) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let plans = plan.agent_plans(agents.shares());
    let planned: Vec<u64> = plans.iter().map(|p| p.count).collect();
    let (tx, mut rx) = mpsc::channel::<(usize, Incoming)>(256);
    let mut links = Vec::with_capacity(plans.len());
    let secret = &plan.token_secret;
    if agents.processes() == 0 {
        links.push(spawn_in_process(
            plans[0].clone(),
            secret.clone(),
            tx.clone(),
        ));
    } else {
        let (local, remote) = plans.split_at(agents.local);
        for p in local {
            links.push(spawn_child(&agent_bin, p.clone(), secret, tx.clone())?);
        }
        let key = LinkKey::derive(&link::AGENT_LINK, secret.expose().as_bytes());
        // Reach the remote agents together, so that one dead host costs one timeout.
        let remote = futures_util::future::join_all(
            remote
                .iter()
                .zip(&agents.remote)
                .map(|(p, addr)| spawn_remote(addr, p.clone(), &key, tx.clone())),
        )
        .await;
        links.extend(remote);
    }
    drop(tx);
    let mut states: Vec<AgentState> = links
        .iter()
        .map(|l| AgentState {
            closed: l.failed.is_some(),
            failure: l.failed.clone(),
            ..Default::default()
        })
        .collect();
    let mut latency = LiveLatency::default();

    // Everyone ready, or out of time.
    let ready_deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while !states.iter().all(|s| s.ready || s.closed) {
        tokio::select! {
            incoming = rx.recv() => match incoming {
                Some((i, msg)) => on_incoming(&mut states[i], msg, planned[i], &mut latency),
                None => break,
            },
            _ = tokio::time::sleep_until(ready_deadline) => break,
        }
    }
    // An agent that came up but cannot run its share is let go now.
    for (link, s) in links.iter_mut().zip(&states) {
        if s.ready && s.failure.is_some() {
            link.control = None;
        }
    }
    for s in states
        .iter_mut()
        .filter(|s| !s.ready && s.failure.is_none())
    {
        s.failure = Some(if s.closed {
            "exited before ready".into()
        } else {
            "never ready".into()
        });
    }
    if !states.iter().any(|s| s.ready && s.failure.is_none()) {
        stop_all(&mut links);
        kill_all(&mut links).await;
        anyhow::bail!(
            "no agent started: {}",
            states
                .iter()
                .filter_map(|s| s.failure.clone())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    let at = shared::time::now_ms_u64() + START_DELAY.as_millis() as u64;
    for (link, s) in links.iter().zip(&states) {
        if let (true, None, Some(control)) = (s.ready, &s.failure, &link.control) {
            let _ = control.send(Control::Start { at_unix_ms: at }).await;
        }
    }
    let clock = Clock::starting_at(at);
    eprintln!(
        "imbench: {} {} connection(s), {} agent process(es), ramp {} conn/s, {:?} load{}; ends in about {:.0}s",
        plan.scenario.as_str(),
        plan.connections,
        agents.processes(),
        plan.ramp_per_s,
        Duration::from_millis(plan.duration_ms),
        if plan.scenario != Scenario::Idle {
            format!(" at {} msg/s", plan.rate_per_s)
        } else {
            String::new()
        },
        (START_DELAY.as_millis() as u64 + plan.total_ms()) as f64 / 1000.0,
    );

    let plan_end =
        clock.t0 + Duration::from_millis(plan.total_ms() + plan.connect_timeout_ms) + OVERRUN_SLACK;
    let mut stop_deadline = tokio::time::Instant::from_std(plan_end);
    let mut kill_deadline: Option<tokio::time::Instant> = None;
    // Agents tick on whole seconds of the plan; print just after, so that each line
    // has this second's ticks.
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::from_std(clock.t0 + Duration::from_millis(1_150)),
        Duration::from_secs(1),
    );
    let mut view = Progress::new(plan.connections, plan.scenario);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stopping = false;
    // What the coordinator itself saw happen, for the chart (with `--mark-file`'s).
    let mut marks = Vec::new();
    while !states.iter().all(|s| s.closed) {
        tokio::select! {
            incoming = rx.recv() => match incoming {
                Some((i, msg)) => {
                    if msg.is_none() && states[i].final_report.is_none() && !stopping {
                        marks.push(mark_now(format!("agent {i} gone")));
                    }
                    on_incoming(&mut states[i], msg, planned[i], &mut latency);
                }
                None => break,
            },
            _ = progress.tick() => {
                eprintln!("{}", view.line(clock.elapsed_ms(), &states, &mut latency));
            }
            _ = &mut ctrl_c, if !stopping => {
                eprintln!("imbench: stopping (Ctrl-C)");
                marks.push(mark_now("Ctrl-C".into()));
                stopping = true;
                stop_all(&mut links);
                kill_deadline = Some(tokio::time::Instant::now() + OVERRUN_SLACK);
            }
            _ = tokio::time::sleep_until(stop_deadline), if !stopping => {
                eprintln!("imbench: agents overran the plan; stopping them");
                marks.push(mark_now("agents overran; stop".into()));
                stopping = true;
                stop_all(&mut links);
                kill_deadline = Some(tokio::time::Instant::now() + OVERRUN_SLACK);
            }
            _ = async { tokio::time::sleep_until(kill_deadline.expect("guarded")).await }, if kill_deadline.is_some() => {
                eprintln!("imbench: agents did not stop; killing them");
                break;
            }
        }
        // Keep the stop branch armed only until it fires.
        if stopping {
            stop_deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        }
    }
    stop_all(&mut links);
    let exits = kill_all(&mut links).await;

    let mut finals = Vec::with_capacity(states.len());
    let mut statuses = Vec::with_capacity(states.len());
    for (s, exit) in states.into_iter().zip(exits) {
        let status = match (&s.final_report, &s.failure, exit) {
            (Some(_), _, _) => "ok".to_string(),
            (None, Some(f), _) => format!("failed: {f}"),
            (None, None, Some(e)) => format!("died without a report ({e})"),
            (None, None, None) => "died without a report".to_string(),
        };
        statuses.push(status);
        finals.push(s.final_report);
    }
    let run = RunSection {
        run_id: plan.run_id.clone(),
        scenario: plan.scenario.as_str().into(),
        targets: plan.targets.iter().map(|t| t.ws_url.clone()).collect(),
        rate: plan.rate_per_s,
        ramp: plan.ramp_per_s,
        duration_s: plan.duration_ms as f64 / 1000.0,
        verify: plan.verify,
        group_size: (plan.scenario == Scenario::Group).then_some(plan.group_size),
        shop_size: (plan.scenario == Scenario::Service).then_some(plan.shop_size),
        shop_agents: (plan.scenario == Scenario::Service).then_some(plan.shop_agents),
        max_open: plan.workflow().then_some(plan.max_open),
        close_after: plan.workflow().then_some(plan.close_after),
        local_agents: agents.local,
        remote_agents: agents.remote.clone(),
        wall_s: wall.elapsed().as_secs_f64(),
    };
    let mut report = report::combine(run, &planned, &finals, &statuses, view.peak_handshakes);
    let load_from_s = (plan.ramp_ms() + SETTLE_MS) as f64 / 1000.0;
    report.series = SeriesSection {
        start_unix_ms: at,
        load_s: [load_from_s, load_from_s + plan.duration_ms as f64 / 1000.0],
        seconds: view.seconds,
        marks,
    };
    for (section, link) in report.agents.iter_mut().zip(&links) {
        section.addr = link.addr.clone();
    }
    Ok(report)
}

/// A mark of the coordinator's own, now.
fn mark_now(label: String) -> report::Mark {
    report::Mark {
        unix_ms: shared::time::now_ms_u64(),
        label,
    }
}

/// The coordinator's latency samples: the run's, and the current second's (for the
/// series).
struct LiveLatency {
    run: Histogram<u64>,
    second: Histogram<u64>,
}

impl Default for LiveLatency {
    fn default() -> Self {
        LiveLatency {
            run: report::new_histogram(),
            second: report::new_histogram(),
        }
    }
}

fn on_incoming(state: &mut AgentState, msg: Incoming, planned: u64, latency: &mut LiveLatency) {
    let msg = match msg {
        Some(event) => event,
        None => {
            state.closed = true;
            if state.final_report.is_none() {
                // died: whatever it held is gone
                state.counters.open = 0;
            }
            return;
        }
    };
    match msg {
        AgentEvent::Ready { pid, fd_soft, .. } => {
            state.ready = true;
            state.pid = pid;
            let room = limits::sockets_per_process(limits::FdLimits {
                soft: fd_soft,
                hard: fd_soft,
            });
            if planned > room {
                state.failure = Some(format!(
                    "cannot hold its {planned} connections: its open-files limit {fd_soft} \
                     leaves room for {room}; add agents"
                ));
            }
        }
        AgentEvent::Tick {
            counters,
            latency: delta,
            ..
        } => {
            state.counters = counters;
            delta.add_to(&mut latency.run);
            delta.add_to(&mut latency.second);
        }
        AgentEvent::Final(r) => {
            state.counters = r.counters;
            state.final_report = Some(r);
        }
        AgentEvent::Failed { message, .. } => state.failure = Some(message),
    }
}

/// Tells every agent to stop (dropping the control channel: a child sees EOF).
fn stop_all(links: &mut [Link]) {
    for link in links.iter_mut() {
        if let Some(control) = link.control.take() {
            let _ = control.try_send(Control::Stop);
        }
    }
}

/// Waits a little for child agents to exit, then kills the rest (by their handle,
/// i.e. by PID). Returns each agent's exit status, if it was a process.
async fn kill_all(links: &mut [Link]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(links.len());
    for link in links.iter_mut() {
        let Some(child) = link.child.as_mut() else {
            out.push(None);
            continue;
        };
        let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                "killed after overrunning".to_string()
            }
        };
        out.push(Some(status));
    }
    out
}

fn spawn_in_process(
    plan: AgentPlan,
    token_secret: Secret,
    tx: mpsc::Sender<(usize, Incoming)>,
) -> Link {
    let (control_tx, control_rx) = mpsc::channel(4);
    let (events_tx, mut events_rx) = mpsc::channel(64);
    let agent = plan.agent;
    tokio::spawn(async move {
        if let Err(error) = agent::serve(plan, token_secret, control_rx, events_tx).await {
            tracing::warn!(%error, "in-process agent failed");
        }
    });
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            if tx.send((agent, Some(event))).await.is_err() {
                return;
            }
        }
        let _ = tx.send((agent, None)).await;
    });
    Link {
        control: Some(control_tx),
        child: None,
        addr: "in-process".into(),
        failed: None,
    }
}

fn spawn_child(
    bin: &PathBuf,
    plan: AgentPlan,
    token_secret: &Secret,
    tx: mpsc::Sender<(usize, Incoming)>,
) -> anyhow::Result<Link> {
    let agent = plan.agent;
    let mut child = Command::new(bin)
        .arg("agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting agent {agent} ({})", bin.display()))?;
    let stdin = child.stdin.take().context("agent stdin")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    // A pipe to a child of this process: the secret may go with the plan.
    let first = PlanLine::for_pipe(plan, token_secret.clone());
    let control = link::attach(&first, stdout, stdin, tx);
    Ok(Link {
        control: Some(control),
        child: Some(child),
        addr: "local".into(),
        failed: None,
    })
}

/// Reaches a remote agent (`imbench agent --listen`), authenticates with `key` (both
/// ways), and hands it its plan, without the token secret. A remote agent that cannot
/// be reached or holds another secret is a failed agent, not a failed run.
async fn spawn_remote(
    addr: &str,
    plan: AgentPlan,
    key: &LinkKey,
    tx: mpsc::Sender<(usize, Incoming)>,
) -> Link {
    let failed = |why: String| Link {
        control: None,
        child: None,
        addr: addr.to_owned(),
        failed: Some(why),
    };
    let mut socket = match link::connect(addr).await {
        Ok(socket) => socket,
        Err(error) => return failed(format!("unreachable: {error:#}")),
    };
    if let Err(error) = link::authenticate(&mut socket, key).await {
        return failed(format!("{error:#}"));
    }
    let (r, w) = socket.into_split();
    Link {
        control: Some(link::attach(&PlanLine::for_network(plan), r, w, tx)),
        child: None,
        addr: addr.to_owned(),
        failed: None,
    }
}

/// The one-line-a-second progress view, which keeps each second for the series.
struct Progress {
    target: u64,
    scenario: Scenario,
    last: Counters,
    last_ms: u64,
    peak_handshakes: f64,
    seconds: Vec<Second>,
}

impl Progress {
    fn new(target: u64, scenario: Scenario) -> Self {
        Progress {
            target,
            scenario,
            last: Counters::default(),
            last_ms: 0,
            peak_handshakes: 0.0,
            seconds: Vec::new(),
        }
    }

    fn line(
        &mut self,
        elapsed_ms: u64,
        states: &[AgentState],
        latency: &mut LiveLatency,
    ) -> String {
        let mut c = Counters::default();
        for s in states {
            c.add(&s.counters);
        }
        let dt = elapsed_ms.saturating_sub(self.last_ms).max(1);
        let rate = |now: u64, before: u64| report::per_second(now.saturating_sub(before), dt);
        let handshakes = rate(
            c.opened + c.reconnects,
            self.last.opened + self.last.reconnects,
        );
        self.peak_handshakes = self.peak_handshakes.max(handshakes);
        let errors = report::series::error_count(&c);
        let second = &mut latency.second;
        let p99 = (!second.is_empty()).then(|| LatencySummary::from_histogram(second).p99);
        second.reset();
        self.seconds
            .push(Second::between(&self.last, &c, dt, elapsed_ms, p99));
        let mut line = format!(
            "[{:>4}s] open {}/{} failed {} | {:.0} hs/s",
            elapsed_ms / 1000,
            c.open,
            self.target,
            c.failed,
            handshakes
        );
        if self.scenario != Scenario::Idle {
            let l = LatencySummary::from_histogram(&latency.run);
            line += &format!(
                " | sent {:.0}/s deliv {:.0}/s | p50 {:.2} p99 {:.2} ms",
                rate(c.sent, self.last.sent),
                rate(c.delivered, self.last.delivered),
                l.p50,
                l.p99
            );
        }
        let live = states.iter().filter(|s| s.ready && !s.closed).count();
        line += &format!(" | errors {errors} | agents {live}/{}", states.len());
        if states.len() > 1 && states.len() <= 8 {
            let per: Vec<String> = states.iter().map(|s| s.counters.open.to_string()).collect();
            line += &format!(" [{}]", per.join(" "));
        }
        self.last = c;
        self.last_ms = elapsed_ms;
        line
    }
}

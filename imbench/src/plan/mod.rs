//! The plan of a run: what the command line asks for, checked against this machine,
//! and split into one share per agent.
//!
//! Everything here is plain data and arithmetic, so that it can be unit-tested and
//! shipped to an agent as JSON. It must not open sockets or spawn anything. This file
//! builds the run's plan ([`RunPlan`]) and splits it; [`parse`] reads the command
//! line's strings, [`agent`] is one agent's share and the per-connection rules.

pub mod agent;
pub mod parse;

use std::net::IpAddr;

use anyhow::ensure;
use shared::secret::Secret;

pub use agent::{AgentPlan, Role, group_name, shop_id, uid};
pub use parse::{Target, api_base, parse_source_ips};

use crate::cli::{RunArgs, Scenario};

/// File descriptors an agent keeps for itself besides its sockets (stdio, epoll,
/// eventfds, the odd log file).
pub const FD_HEADROOM: u64 = 256;

/// The most source addresses one `--source-ips` may name.
pub const MAX_SOURCE_IPS: usize = 65_536;

/// Time between the last scheduled connection and the first message, so that the
/// last handshakes finish before the traffic starts.
pub const SETTLE_MS: u64 = 1_000;

/// The whole run, as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Random tag in every uid, so that runs against one data dir never share users.
    pub run_id: String,
    /// What the connections do.
    pub scenario: Scenario,
    /// imd nodes.
    pub targets: Vec<Target>,
    /// Token secret: mints client tokens, and authenticates the coordinator to remote
    /// agents. Never part of an [`AgentPlan`].
    pub token_secret: Secret,
    /// Connections in total.
    pub connections: u64,
    /// Connections opened per second in total.
    pub ramp_per_s: f64,
    /// Messages per second in total.
    pub rate_per_s: f64,
    /// Load phase, after the ramp.
    pub duration_ms: u64,
    /// Reading-only phase after the load.
    pub drain_ms: u64,
    /// Source addresses (empty: the kernel's choice).
    pub source_ips: Vec<IpAddr>,
    /// Whether to check delivery.
    pub verify: bool,
    /// Per-connection handshake timeout.
    pub connect_timeout_ms: u64,
    /// Application ping period (0: none).
    pub heartbeat_ms: u64,
    /// Connection lifetime for churn (`--lifetime`; 0: none).
    pub lifetime_ms: u64,
    /// Widest reconnection backoff window (`--reconnect-max`).
    pub reconnect_max_ms: u64,
    /// Client WebSocket read buffer.
    pub read_buffer: usize,
    /// Whether a unit's connections are spread over the targets.
    pub spread: bool,
    /// Whether each connection sends a read receipt for every message it receives
    /// from someone else.
    pub read_receipts: bool,
    /// Admin API for the whole run (`--api`); None: each group's or shop's own target.
    pub api: Option<String>,
    /// Admin bearer token (service and group set-up).
    pub admin_token: Option<Secret>,
    /// Connections per group (group scenario).
    pub group_size: u64,
    /// Connections per shop, its agents first (service scenario).
    pub shop_size: u64,
    /// Agents per shop (service scenario).
    pub shop_agents: u64,
    /// Open conversations one shop agent may hold (service; 0: no cap).
    pub max_open: u32,
    /// Replies after which a shop agent closes a conversation (service; 0: never).
    pub close_after: u64,
}

impl RunPlan {
    /// Checks the flags and builds the plan.
    pub fn from_args(args: &RunArgs) -> anyhow::Result<Self> {
        ensure!(args.connections > 0, "--connections must be at least 1");
        match args.scenario {
            Scenario::Group => {
                ensure!(args.group_size >= 2, "--group-size must be at least 2");
                ensure!(
                    args.connections >= args.group_size,
                    "group needs --connections of at least --group-size"
                );
            }
            Scenario::Service => {
                ensure!(args.shop_agents >= 1, "--shop-agents must be at least 1");
                ensure!(
                    args.shop_size > args.shop_agents,
                    "--shop-size must be above --shop-agents (a shop needs customers)"
                );
                ensure!(
                    args.connections >= args.shop_size,
                    "service needs --connections of at least --shop-size"
                );
            }
            Scenario::Idle | Scenario::Chat => {}
        }
        ensure!(
            args.scenario == Scenario::Service || (args.max_open == 0 && args.close_after == 0),
            "--max-open and --close-after need the service scenario"
        );
        ensure!(
            args.max_open <= shared::admin::MAX_OPEN_LIMIT,
            "--max-open is at most {} (imd's limit)",
            shared::admin::MAX_OPEN_LIMIT
        );
        if matches!(args.scenario, Scenario::Group | Scenario::Service) {
            ensure!(
                args.admin_token.is_some(),
                "the {} scenario sets up its {} through the admin API: give --admin-token \
                 (`imd admin-token --data-dir …` prints it)",
                args.scenario.as_str(),
                if args.scenario == Scenario::Group {
                    "groups"
                } else {
                    "shops"
                }
            );
            ensure!(
                args.rate > 0.0,
                "{} needs --rate above 0",
                args.scenario.as_str()
            );
        }
        ensure!(
            args.ramp.is_finite() && args.ramp > 0.0,
            "--ramp must be a positive number"
        );
        ensure!(
            args.rate.is_finite() && args.rate >= 0.0,
            "--rate must be zero or positive"
        );
        if args.scenario == Scenario::Chat {
            ensure!(
                args.connections >= 2,
                "chat needs at least 2 connections (one pair)"
            );
            ensure!(args.rate > 0.0, "chat needs --rate above 0");
        }
        ensure!(
            !(args.read_receipts && args.scenario == Scenario::Idle),
            "--read-receipts needs a messaging scenario (chat, group or service)"
        );
        ensure!(
            args.read_buffer >= 256,
            "--read-buffer below 256 bytes makes no sense"
        );
        let targets = args
            .targets
            .iter()
            .map(|t| Target::parse(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let source_ips = match &args.source_ips {
            Some(spec) => parse_source_ips(spec)?,
            None => Vec::new(),
        };
        let api = match &args.api {
            Some(url) => Some(api_base(url)?),
            None => None,
        };
        Ok(RunPlan {
            run_id: new_run_id(),
            scenario: args.scenario,
            targets,
            token_secret: args.token_secret.clone(),
            connections: args.connections,
            ramp_per_s: args.ramp,
            rate_per_s: args.rate,
            duration_ms: args.duration.as_millis() as u64,
            drain_ms: args.drain.as_millis() as u64,
            source_ips,
            verify: args.verify,
            connect_timeout_ms: args.connect_timeout.as_millis().max(1) as u64,
            heartbeat_ms: args.heartbeat.as_millis() as u64,
            lifetime_ms: args.lifetime.as_millis() as u64,
            reconnect_max_ms: args.reconnect_max.as_millis() as u64,
            read_buffer: args.read_buffer,
            spread: args.spread,
            read_receipts: args.read_receipts,
            api,
            admin_token: args.admin_token.clone(),
            group_size: args.group_size,
            shop_size: args.shop_size,
            shop_agents: args.shop_agents,
            max_open: args.max_open,
            close_after: args.close_after,
        })
    }

    /// Whether the service scenario runs the workflow of caps, queue and closes
    /// (`--max-open` or `--close-after`).
    pub fn workflow(&self) -> bool {
        self.scenario == Scenario::Service && (self.max_open > 0 || self.close_after > 0)
    }

    /// Connections that belong together and must share an agent process (for the
    /// delivery check) and a target (independent nodes do not share users): a chat
    /// pair, a group, a shop. 1 for idle.
    pub fn unit(&self) -> u64 {
        unit_size(
            self.scenario,
            self.group_size,
            self.shop_size,
            self.connections,
        )
    }

    /// Number of units (pairs, groups, shops), the last one possibly short.
    pub fn units(&self) -> u64 {
        self.connections.div_ceil(self.unit())
    }

    /// The HTTP base URL of the admin API for unit `k`: `--api`, or the unit's target.
    pub fn api_for(&self, k: u64) -> String {
        match &self.api {
            Some(api) => api.clone(),
            None => format!(
                "http://{}",
                self.targets[(k % self.targets.len() as u64) as usize].authority
            ),
        }
    }

    /// Connections that send on a schedule: both ends of every pair (chat), every
    /// member (group), every customer (service).
    pub fn senders(&self) -> u64 {
        let n = self.connections;
        match self.scenario {
            Scenario::Idle => 0,
            Scenario::Chat => n / 2 * 2,
            Scenario::Group => n,
            Scenario::Service => (0..self.units())
                .map(|k| {
                    let len = (n - k * self.shop_size).min(self.shop_size);
                    len.saturating_sub(self.shop_agents)
                })
                .sum(),
        }
    }

    /// Time from the start until the last connection is scheduled.
    pub fn ramp_ms(&self) -> u64 {
        (self.connections as f64 / self.ramp_per_s * 1000.0).ceil() as u64
    }

    /// Reading-only phase after the load (idle has nothing to drain).
    pub fn effective_drain_ms(&self) -> u64 {
        if self.scenario == Scenario::Idle {
            0
        } else {
            self.drain_ms
        }
    }

    /// Time from the start until the agents close their connections.
    pub fn total_ms(&self) -> u64 {
        self.ramp_ms() + SETTLE_MS + self.duration_ms + self.effective_drain_ms()
    }

    /// Message rate of one sending connection ([`RunPlan::senders`] share `--rate`).
    pub fn per_connection_rate(&self) -> f64 {
        match self.senders() {
            0 => 0.0,
            senders => self.rate_per_s / senders as f64,
        }
    }

    /// Checks that `agents` processes can hold the plan: each under `per_process`
    /// sockets, and each (source address, target) pair under `ports` ephemeral ports.
    pub fn check_capacity(
        &self,
        agents: usize,
        per_process: u64,
        ports: u64,
    ) -> anyhow::Result<()> {
        let shares = split(self.connections, agents.max(1), self.unit());
        let biggest = shares.iter().map(|s| s.count).max().unwrap_or(0);
        ensure!(
            biggest <= per_process,
            "the plan cannot fit: {} connections over {} agent process(es) puts {biggest} in one \
             process, over the {per_process} one process may hold (open-files hard limit minus \
             {FD_HEADROOM}); use --local-agents {} or more",
            self.connections,
            agents.max(1),
            self.connections.div_ceil(per_process.max(1))
        );
        let sources = self.source_ips.len().max(1) as u64;
        let per_pair = self
            .connections
            .div_ceil(sources * self.targets.len() as u64);
        ensure!(
            per_pair <= ports,
            "the plan cannot fit: {per_pair} connections per (source address, target) pair, over \
             the {ports} ephemeral ports of ip_local_port_range; give more --source-ips"
        );
        Ok(())
    }

    /// How many agent processes to start for `--local-agents` (None: decide).
    /// 0 means "inside the coordinator".
    pub fn agent_count(&self, asked: Option<usize>, per_process: u64) -> usize {
        match asked {
            Some(k) => k,
            None if self.connections <= per_process => 0,
            None => self.connections.div_ceil(per_process.max(1)) as usize,
        }
    }

    /// One plan per agent (`agents` = 0 is one in-process agent).
    pub fn agent_plans(&self, agents: usize) -> Vec<AgentPlan> {
        let per_conn_rate = self.per_connection_rate();
        let senders = self.senders();
        let unit = self.unit();
        split(self.connections, agents.max(1), unit)
            .into_iter()
            .enumerate()
            .map(|(i, share)| AgentPlan {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                agent: i,
                run_id: self.run_id.clone(),
                scenario: self.scenario,
                targets: self.targets.clone(),
                total_connections: self.connections,
                first: share.first,
                count: share.count,
                ramp_per_s: self.ramp_per_s,
                per_conn_rate,
                senders,
                unit,
                shop_agents: self.shop_agents,
                max_open: self.max_open,
                close_after: self.close_after,
                ramp_ms: self.ramp_ms(),
                settle_ms: SETTLE_MS,
                duration_ms: self.duration_ms,
                drain_ms: self.effective_drain_ms(),
                source_ips: self.source_ips.clone(),
                verify: self.verify,
                connect_timeout_ms: self.connect_timeout_ms,
                heartbeat_ms: self.heartbeat_ms,
                lifetime_ms: self.lifetime_ms,
                reconnect_max_ms: self.reconnect_max_ms,
                read_buffer: self.read_buffer,
                spread: self.spread,
                read_receipts: self.read_receipts,
            })
            .collect()
    }
}

/// A contiguous range of global connection indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// First global index.
    pub first: u64,
    /// Number of connections.
    pub count: u64,
}

/// Connections per unit of `scenario` (see [`RunPlan::unit`]).
pub fn unit_size(scenario: Scenario, group_size: u64, shop_size: u64, connections: u64) -> u64 {
    let unit = match scenario {
        Scenario::Idle => 1,
        Scenario::Chat => 2,
        Scenario::Group => group_size,
        Scenario::Service => shop_size,
    };
    unit.clamp(1, connections.max(1))
}

/// Splits `total` connections into `agents` contiguous shares as even as possible,
/// cutting only between units of `unit` connections (chat pairs, groups, shops), so
/// that each agent can verify its own units; a short last unit goes to the last agent.
pub fn split(total: u64, agents: usize, unit: u64) -> Vec<Share> {
    let agents = agents.max(1) as u64;
    let unit = unit.max(1);
    let units = total / unit;
    let (base, extra) = (units / agents, units % agents);
    let mut out = Vec::with_capacity(agents as usize);
    let mut first = 0;
    for i in 0..agents {
        let mut count = (base + u64::from(i < extra)) * unit;
        if i == agents - 1 {
            count = total - first;
        }
        out.push(Share { first, count });
        first += count;
    }
    out
}

fn new_run_id() -> String {
    let nanos = shared::time::since_epoch().as_nanos();
    // Good enough to tell runs apart; not a security boundary.
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!("{:08x}", (mixed ^ (mixed >> 29)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_everything_once() {
        for (total, agents, scenario) in [
            (10, 3, Scenario::Idle),
            (10, 3, Scenario::Chat),
            (11, 3, Scenario::Chat),
            (1, 4, Scenario::Idle),
            (15_000, 1, Scenario::Idle),
            (1_000_000, 51, Scenario::Chat),
        ] {
            let unit = unit_size(scenario, 5, 5, total);
            let shares = split(total, agents, unit);
            assert_eq!(shares.len(), agents);
            let mut next = 0;
            for s in &shares {
                assert_eq!(s.first, next);
                next += s.count;
            }
            assert_eq!(next, total);
            let max = shares.iter().map(|s| s.count).max().unwrap();
            let min = shares.iter().map(|s| s.count).min().unwrap();
            assert!(max - min <= 3 + unit, "{total}/{agents}: {shares:?}");
            if scenario == Scenario::Chat {
                // every share but the last starts and ends on a pair boundary
                for s in &shares[..agents - 1] {
                    assert_eq!(s.first % 2, 0);
                    assert_eq!(s.count % 2, 0);
                }
            }
        }
        assert_eq!(
            split(10, 3, 2),
            vec![
                Share { first: 0, count: 4 },
                Share { first: 4, count: 4 },
                Share { first: 8, count: 2 }
            ]
        );
    }

    #[test]
    fn spread_puts_each_units_connections_on_different_targets() {
        let mut p = plan(8, Scenario::Chat);
        p.targets = (1..=2)
            .map(|i| Target::parse(&format!("http://127.0.0.1:{i}")).unwrap())
            .collect();
        p.spread = true;
        let a = p.agent_plans(1).remove(0);
        let targets: Vec<usize> = (0..8).map(|i| a.target_of(i)).collect();
        assert_eq!(
            targets,
            [0, 1, 1, 0, 0, 1, 1, 0],
            "each pair across both targets"
        );
        p.spread = false;
        let a = p.agent_plans(1).remove(0);
        let targets: Vec<usize> = (0..8).map(|i| a.target_of(i)).collect();
        assert_eq!(targets, [0, 0, 1, 1, 0, 0, 1, 1], "each pair on one target");
    }

    fn plan(connections: u64, scenario: Scenario) -> RunPlan {
        RunPlan {
            run_id: "r".into(),
            scenario,
            targets: vec![Target::parse("http://127.0.0.1:1").unwrap()],
            token_secret: "s".parse().unwrap(),
            connections,
            ramp_per_s: 1000.0,
            rate_per_s: 2000.0,
            duration_ms: 20_000,
            drain_ms: 3_000,
            source_ips: Vec::new(),
            verify: true,
            connect_timeout_ms: 10_000,
            heartbeat_ms: 0,
            lifetime_ms: 0,
            reconnect_max_ms: 2000,
            read_buffer: 4096,
            spread: false,
            read_receipts: false,
            api: None,
            admin_token: None,
            group_size: 5,
            shop_size: 5,
            shop_agents: 2,
            max_open: 0,
            close_after: 0,
        }
    }

    #[test]
    fn units_stay_together_on_one_target_and_one_agent() {
        for scenario in [
            Scenario::Chat,
            Scenario::Group,
            Scenario::Service,
            Scenario::Idle,
        ] {
            let mut p = plan(103, scenario);
            p.targets = (1..=3)
                .map(|port| Target::parse(&format!("http://127.0.0.1:{port}")).unwrap())
                .collect();
            let plans = p.agent_plans(4);
            let unit = p.unit();
            for a in &plans {
                for i in a.indices() {
                    let k = a.unit_of(i);
                    for j in a.unit_range(k) {
                        assert!(a.indices().contains(&j), "{scenario:?}: {j} of unit {k}");
                        assert_eq!(a.target_of(j), a.target_of(i));
                    }
                }
            }
            // every target gets its share of units
            let mut per_target = [0u64; 3];
            for i in 0..103 {
                per_target[plans[0].target_of(i)] += 1;
            }
            assert!(
                per_target.iter().all(|&n| n + 2 * unit >= 103 / 3),
                "{scenario:?}: {per_target:?}"
            );
            if scenario == Scenario::Chat {
                assert_eq!(plans[0].target_of(0), plans[0].target_of(1));
                assert_ne!(plans[0].target_of(1), plans[0].target_of(2));
            }
        }
    }

    #[test]
    fn the_million_plan_fits_51_independent_imds() {
        let mut p = plan(1_000_000, Scenario::Idle);
        p.targets = (0..51)
            .map(|n| Target::parse(&format!("http://127.0.0.1:{}", 9000 + n)).unwrap())
            .collect();
        p.source_ips = parse_source_ips("127.0.0.2-127.0.0.201").unwrap();
        // 51 agents under the 20,000 open files of each process, ports to spare
        assert!(p.check_capacity(51, 20_000 - FD_HEADROOM, 64_512).is_ok());
        let a = &p.agent_plans(51)[0];
        let mut per_target = vec![0u64; 51];
        for i in 0..1_000_000 {
            per_target[a.target_of(i)] += 1;
        }
        // each imd holds about 19,608, under its own limit
        assert_eq!(per_target.iter().max(), Some(&19_608));
        assert_eq!(per_target.iter().min(), Some(&19_607));
    }

    #[test]
    fn roles_and_senders() {
        let p = plan(12, Scenario::Service); // shops of 5: 2 agents + 3 customers; 2 + 0
        let a = &p.agent_plans(1)[0];
        assert_eq!(a.role(0), Role::ShopAgent { shop: 0 });
        assert_eq!(a.role(2), Role::Customer { shop: 0 });
        assert_eq!(a.role(6), Role::ShopAgent { shop: 1 });
        assert_eq!(a.role(11), Role::ShopAgent { shop: 2 });
        assert_eq!(a.shop_agents_of(1), 5..7);
        assert_eq!(p.senders(), 6);
        assert_eq!(p.per_connection_rate(), 2000.0 / 6.0);
        assert_eq!(a.index_of(&a.uid(7)), Some(7));
        assert_eq!(a.index_of("bzzzu7"), None);
        assert_eq!(a.index_of(&a.uid(12)), None);
        let p = plan(12, Scenario::Group);
        assert_eq!(p.senders(), 12);
        assert_eq!(p.agent_plans(1)[0].unit_range(2), 10..12);
        assert_eq!(p.agent_plans(1)[0].role(11), Role::Member { group: 2 });
        assert_eq!(p.api_for(1), "http://127.0.0.1:1");
    }

    #[test]
    fn capacity_and_agent_count() {
        let per_process = 20_000 - FD_HEADROOM;
        let p = plan(15_000, Scenario::Idle);
        assert_eq!(p.agent_count(None, per_process), 0);
        assert!(p.check_capacity(1, per_process, 28_232).is_ok());

        let p = plan(100_000, Scenario::Idle);
        assert_eq!(p.agent_count(None, per_process), 6);
        let err = p
            .check_capacity(2, per_process, 1_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot fit") && err.contains("--local-agents 6"),
            "{err}"
        );
        // one source address: ports run out before sockets do
        assert!(
            p.check_capacity(6, per_process, 28_232)
                .unwrap_err()
                .to_string()
                .contains("--source-ips")
        );
        let mut p = p;
        p.source_ips = parse_source_ips("127.0.0.2-127.0.0.10").unwrap();
        assert!(p.check_capacity(6, per_process, 28_232).is_ok());
    }

    #[test]
    fn rates_and_schedule() {
        let p = plan(200, Scenario::Chat);
        assert_eq!(p.per_connection_rate(), 10.0);
        assert_eq!(p.ramp_ms(), 200);
        assert_eq!(p.total_ms(), 200 + SETTLE_MS + 20_000 + 3_000);
        // an odd connection has no peer and does not send
        let p = plan(201, Scenario::Chat);
        assert_eq!(p.per_connection_rate(), 10.0);
        let plans = p.agent_plans(2);
        assert_eq!(plans[1].indices(), 100..201);
        assert_eq!(plans[1].peer(200), None);
        assert_eq!(plans[1].peer(199), Some(198));
        assert_eq!(plans[0].peer(0), Some(1));
        assert_eq!(plan(10, Scenario::Idle).per_connection_rate(), 0.0);
    }

    /// `--read-receipts` reaches every agent's plan, and is refused for idle
    /// connections, which receive no messages to answer.
    #[test]
    fn read_receipts_reach_the_agents_and_need_messages() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let args = |scenario: &str| {
            let cli = Cli::try_parse_from([
                "imbench",
                "run",
                "--target",
                "http://127.0.0.1:1",
                "--token-secret",
                "s",
                "--scenario",
                scenario,
                "--read-receipts",
            ])
            .unwrap();
            let Command::Run(args) = cli.command else {
                panic!("not run")
            };
            args
        };
        let plans = RunPlan::from_args(&args("chat")).unwrap().agent_plans(2);
        assert!(plans.iter().all(|p| p.read_receipts));
        let error = RunPlan::from_args(&args("idle")).unwrap_err();
        assert!(error.to_string().contains("--read-receipts"), "{error}");
        // An agent plan without the field (an older coordinator's) means none.
        let mut json = serde_json::to_value(&plans[0]).unwrap();
        json.as_object_mut().unwrap().remove("read_receipts");
        let old: AgentPlan = serde_json::from_value(json).unwrap();
        assert!(!old.read_receipts);
    }
}

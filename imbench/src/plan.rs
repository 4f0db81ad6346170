//! The plan of a run: what the command line asks for, checked against this machine,
//! and split into one share per agent.
//!
//! Everything here is plain data and arithmetic, so that it can be unit-tested and
//! shipped to an agent as JSON. It must not open sockets or spawn anything.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use shared::secret::Secret;

use crate::cli::{RunArgs, Scenario};

/// File descriptors an agent keeps for itself besides its sockets (stdio, epoll,
/// eventfds, the odd log file).
pub const FD_HEADROOM: u64 = 256;

/// The most source addresses one `--source-ips` may name.
pub const MAX_SOURCE_IPS: usize = 65_536;

/// Time between the last scheduled connection and the first message, so that the
/// last handshakes finish before the traffic starts.
pub const SETTLE_MS: u64 = 1_000;

/// Parses `--source-ips`: comma-separated IPv4/IPv6 addresses and IPv4 ranges
/// `A-B` (inclusive, `A <= B`), in the order given.
pub fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad range start in {item:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad range end in {item:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            ensure!(a <= b, "range {item:?} runs backwards");
            let len = u64::from(b - a) + 1;
            ensure!(
                out.len() as u64 + len <= MAX_SOURCE_IPS as u64,
                "--source-ips names more than {MAX_SOURCE_IPS} addresses"
            );
            out.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            let ip: IpAddr = item
                .parse()
                .with_context(|| format!("bad address {item:?}"))?;
            ensure!(
                out.len() < MAX_SOURCE_IPS,
                "--source-ips names more than {MAX_SOURCE_IPS} addresses"
            );
            out.push(ip);
        }
    }
    ensure!(!out.is_empty(), "--source-ips {spec:?} names no address");
    Ok(out)
}

/// A WebSocket endpoint of one imd node, from a `--target` base URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `host:port` as given (for the Host header and resolution).
    pub authority: String,
    /// `ws://host:port/v1/ws` (no token).
    pub ws_url: String,
}

impl Target {
    /// Parses `http://host:port` (or `ws://`, or a bare `host:port`).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if let Some(r) = url.strip_prefix("ws://") {
            r
        } else if url.starts_with("https://") || url.starts_with("wss://") {
            bail!("target {url:?}: TLS is not supported by imbench yet");
        } else if url.contains("://") {
            bail!("target {url:?}: expected http://host:port");
        } else {
            url
        };
        let authority = rest.split('/').next().unwrap_or_default();
        ensure!(
            authority
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
            "target {url:?}: expected http://host:port"
        );
        Ok(Target {
            authority: authority.to_owned(),
            ws_url: format!("ws://{authority}/v1/ws"),
        })
    }
}

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
    /// Client WebSocket read buffer.
    pub read_buffer: usize,
    /// Whether a unit's connections are spread over the targets.
    pub spread: bool,
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
            read_buffer: args.read_buffer,
            spread: args.spread,
            api,
            admin_token: args.admin_token.clone(),
            group_size: args.group_size,
            shop_size: args.shop_size,
            shop_agents: args.shop_agents,
        })
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
                ramp_ms: self.ramp_ms(),
                settle_ms: SETTLE_MS,
                duration_ms: self.duration_ms,
                drain_ms: self.effective_drain_ms(),
                source_ips: self.source_ips.clone(),
                verify: self.verify,
                connect_timeout_ms: self.connect_timeout_ms,
                heartbeat_ms: self.heartbeat_ms,
                read_buffer: self.read_buffer,
                spread: self.spread,
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

/// One agent's share of the run. Sent to the agent as JSON, over a pipe or over the
/// network, so it carries no secret: the token secret travels apart (see
/// [`PlanLine`](crate::link::PlanLine)), and only on a pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentPlan {
    /// imbench version of the coordinator; an agent of another version refuses.
    pub version: String,
    /// Agent index, from 0.
    pub agent: usize,
    /// Tag in every uid.
    pub run_id: String,
    /// What the connections do.
    pub scenario: Scenario,
    /// imd nodes; global connection i goes to `targets[i % len]`.
    pub targets: Vec<Target>,
    /// Connections over all agents (the ramp schedule is global).
    pub total_connections: u64,
    /// First global connection index of this agent.
    pub first: u64,
    /// Connections of this agent.
    pub count: u64,
    /// Connections per second over all agents: global connection i opens at
    /// `start + i / ramp_per_s`.
    pub ramp_per_s: f64,
    /// Messages per second of each sending connection.
    pub per_conn_rate: f64,
    /// Sending connections over all agents.
    pub senders: u64,
    /// Connections per unit (pair, group, shop; 1 for idle): unit k is
    /// `k*unit .. (k+1)*unit`, on target `k % targets`.
    pub unit: u64,
    /// Agents per shop (service): the first connections of each shop.
    pub shop_agents: u64,
    /// Ramp length over all agents.
    pub ramp_ms: u64,
    /// Pause between the ramp and the load.
    pub settle_ms: u64,
    /// Load phase.
    pub duration_ms: u64,
    /// Reading-only phase after the load.
    pub drain_ms: u64,
    /// Source addresses; global connection i binds `source_ips[i % len]`.
    pub source_ips: Vec<IpAddr>,
    /// Whether to check delivery.
    pub verify: bool,
    /// Handshake timeout.
    pub connect_timeout_ms: u64,
    /// Application ping period (0: none).
    pub heartbeat_ms: u64,
    /// Client WebSocket read buffer.
    pub read_buffer: usize,
    /// Whether a unit's connections are spread over the targets (see
    /// [`AgentPlan::target_of`]).
    #[serde(default)]
    pub spread: bool,
}

impl AgentPlan {
    /// The uid of global connection `i`.
    pub fn uid(&self, i: u64) -> String {
        uid(&self.run_id, i)
    }

    /// Global indices of this agent's connections.
    pub fn indices(&self) -> std::ops::Range<u64> {
        self.first..self.first + self.count
    }

    /// The chat peer of global connection `i`, if it has one.
    pub fn peer(&self, i: u64) -> Option<u64> {
        let p = i ^ 1;
        (p < self.total_connections).then_some(p)
    }

    /// The global index of a uid of this run (None for anyone else).
    pub fn index_of(&self, uid: &str) -> Option<u64> {
        uid.strip_prefix('b')?
            .strip_prefix(self.run_id.as_str())?
            .strip_prefix('u')?
            .parse()
            .ok()
            .filter(|i| *i < self.total_connections)
    }

    /// Unit (pair, group, shop) of global connection `i`.
    pub fn unit_of(&self, i: u64) -> u64 {
        i / self.unit.max(1)
    }

    /// Global indices of unit `k`.
    pub fn unit_range(&self, k: u64) -> std::ops::Range<u64> {
        let unit = self.unit.max(1);
        (k * unit).min(self.total_connections)..((k + 1) * unit).min(self.total_connections)
    }

    /// Target index of global connection `i`: every connection of a unit on one, or
    /// with `spread` connection j of unit k on target (k + j) mod targets.
    pub fn target_of(&self, i: u64) -> usize {
        let k = self.unit_of(i);
        let j = if self.spread {
            i - self.unit_range(k).start
        } else {
            0
        };
        ((k + j) % self.targets.len().max(1) as u64) as usize
    }

    /// What global connection `i` does.
    pub fn role(&self, i: u64) -> Role {
        let k = self.unit_of(i);
        match self.scenario {
            Scenario::Idle => Role::Idle,
            Scenario::Chat => match self.peer(i) {
                Some(peer) => Role::Peer { peer },
                None => Role::Silent,
            },
            Scenario::Group => Role::Member { group: k },
            Scenario::Service => {
                if i - self.unit_range(k).start < self.shop_agents {
                    Role::ShopAgent { shop: k }
                } else {
                    Role::Customer { shop: k }
                }
            }
        }
    }

    /// The agents of shop `k`.
    pub fn shop_agents_of(&self, k: u64) -> std::ops::Range<u64> {
        let r = self.unit_range(k);
        r.start..(r.start + self.shop_agents).min(r.end)
    }

    /// The name of group `k` (the conversation is `g:{name}`).
    pub fn group_name(&self, k: u64) -> String {
        group_name(&self.run_id, k)
    }

    /// The id of shop `k`.
    pub fn shop_id(&self, k: u64) -> String {
        shop_id(&self.run_id, k)
    }
}

/// What one connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Stays open.
    Idle,
    /// Chat: sends to and hears from `peer`.
    Peer {
        /// The peer's global index.
        peer: u64,
    },
    /// Chat's odd last connection: no peer, sends nothing.
    Silent,
    /// Group: sends to the group, hears every other member.
    Member {
        /// Group index.
        group: u64,
    },
    /// Service: writes to the shop, hears the replies.
    Customer {
        /// Shop index.
        shop: u64,
    },
    /// Service: one of the shop's agents (token role `agent`); replies to every
    /// customer message it is pushed.
    ShopAgent {
        /// Shop index.
        shop: u64,
    },
}

/// The uid of global connection `i` of run `run_id`.
pub fn uid(run_id: &str, i: u64) -> String {
    format!("b{run_id}u{i}")
}

/// The name of group `k` of run `run_id`.
pub fn group_name(run_id: &str, k: u64) -> String {
    format!("b{run_id}g{k}")
}

/// The id of shop `k` of run `run_id`.
pub fn shop_id(run_id: &str, k: u64) -> String {
    format!("b{run_id}s{k}")
}

/// Parses `--api`: an `http://host:port` base URL, without a trailing slash.
pub fn api_base(url: &str) -> anyhow::Result<String> {
    let t = Target::parse(url).with_context(|| format!("--api {url:?}"))?;
    Ok(format!("http://{}", t.authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn source_ip_ranges_parse() {
        assert_eq!(
            parse_source_ips("127.0.0.2-127.0.0.4").unwrap(),
            vec![ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")]
        );
        assert_eq!(
            parse_source_ips("127.0.0.9").unwrap(),
            vec![ip("127.0.0.9")]
        );
        assert_eq!(
            parse_source_ips("127.0.0.2, 127.0.1.254-127.0.2.1,::1").unwrap(),
            vec![
                ip("127.0.0.2"),
                ip("127.0.1.254"),
                ip("127.0.1.255"),
                ip("127.0.2.0"),
                ip("127.0.2.1"),
                ip("::1")
            ]
        );
        assert_eq!(parse_source_ips("127.0.0.2-127.0.0.40").unwrap().len(), 39);
        for bad in [
            "",
            ",",
            "127.0.0.5-127.0.0.4",
            "127.0.0.x",
            "1-2",
            "::1-::2",
            "10.0.0.0-10.1.0.0",
        ] {
            assert!(parse_source_ips(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.ws_url, "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(Target::parse("ws://h:1/").unwrap().ws_url, "ws://h:1/v1/ws");
        assert_eq!(
            Target::parse("localhost:9").unwrap().authority,
            "localhost:9"
        );
        for bad in [
            "https://h:1",
            "http://h",
            "http://:1",
            "ftp://h:1",
            "h:port",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

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
            read_buffer: 4096,
            spread: false,
            api: None,
            admin_token: None,
            group_size: 5,
            shop_size: 5,
            shop_agents: 2,
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
}

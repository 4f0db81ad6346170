//! One agent's share of the run ([`AgentPlan`], shipped to it as JSON) and the rules
//! every agent applies the same way to a global connection index: its uid, its role,
//! its target, its unit (chat pair, group, shop). Both ends of a run derive the same
//! answers from the same plan, which is how the coordinator's setup and the agents'
//! verification agree without talking.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Target;
use crate::cli::Scenario;

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
    /// Open conversations one shop agent may hold (service; 0: no cap).
    #[serde(default)]
    pub max_open: u32,
    /// Replies after which a shop agent closes a conversation (service; 0: never).
    #[serde(default)]
    pub close_after: u64,
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
    /// Connection lifetime for churn (`--lifetime`; 0: none).
    #[serde(default)]
    pub lifetime_ms: u64,
    /// Widest reconnection backoff window (`--reconnect-max`).
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Client WebSocket read buffer.
    pub read_buffer: usize,
    /// Whether a unit's connections are spread over the targets (see
    /// [`AgentPlan::target_of`]).
    #[serde(default)]
    pub spread: bool,
    /// Whether each connection sends a read receipt for every message it receives
    /// from someone else in its unit.
    #[serde(default)]
    pub read_receipts: bool,
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

    /// Whether the service scenario runs the workflow of caps, queue and closes
    /// (`--max-open` or `--close-after`); without it, the scenario is as it was.
    pub fn workflow(&self) -> bool {
        self.scenario == Scenario::Service && (self.max_open > 0 || self.close_after > 0)
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

/// `--reconnect-max`'s default, for a plan from an imbench without it.
fn default_reconnect_max_ms() -> u64 {
    2000
}

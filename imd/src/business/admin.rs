//! The operations of the admin API: blacklists, shops, groups, assignments, words,
//! and over the workers: connections, kicks, replay, the cluster view, and the tail of
//! a conversation ([`super::tail`]).
//!
//! Each change goes to the store first and the node's caches second, so that a restart
//! finds what the caches held. Connections are reached through [`Devices`], which the
//! dispatcher's workers implement: this layer knows no transport. The HTTP handlers
//! only parse, call one operation, and answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shared::admin::{
    AddBlacklist, AgentStats, BlacklistEntry, BlacklistKind, ClusterInfo, ConnCursor,
    ConnectionList, FirstResponse, MAX_OPEN_LIMIT, NodeInfo, RatingStats, Replay, Replayed,
    SHOP_MESSAGE_MAX, ShopAgents, ShopStats,
};
use shared::ids::is_valid_id;
use shared::time::now_ms;
use tokio_util::sync::CancellationToken;

use super::blacklist::{Blacklist, IpNet};
use super::messaging::Messaging;
use super::service::AgentState;
use super::words::{WordFilter, Words, WordsPolicy};
use super::{Devices, Error, stats};
use crate::store::{DirectoryStore, Shop};

/// The shop `--dev-tokens` sets up, and its agent.
const DEMO_SHOP: &str = "demo";
const DEMO_AGENT: &str = "ann";

/// The most shops with per-shop gauges (see [`Admin::export_shop_metrics`]).
pub const SHOP_METRICS_MAX: usize = 100;

/// What a node says of itself in the cluster view, besides its worker's figures.
#[derive(Debug)]
pub struct NodeCard {
    /// The node id.
    pub id: String,
    /// Its roles, by name.
    pub roles: Vec<String>,
    /// Its HTTP/WebSocket address.
    pub listen: String,
    /// When it started, unix ms.
    pub started_at_ms: i64,
    /// The RPC protocol version it speaks (`rpc::rpc_version`; 0 where nothing set it).
    pub rpc_version: u32,
    /// Messages committed in the last second, sampled.
    committed_per_s: AtomicU64,
}

impl NodeCard {
    /// A node with no commit rate sampled yet.
    pub fn new(id: String, roles: Vec<String>, listen: String, started_at_ms: i64) -> Self {
        Self {
            id,
            roles,
            listen,
            started_at_ms,
            rpc_version: 0,
            committed_per_s: AtomicU64::new(0),
        }
    }

    /// The same node, speaking RPC version `version`.
    pub fn with_rpc_version(self, version: u32) -> Self {
        Self {
            rpc_version: version,
            ..self
        }
    }

    /// Records the commit rate of the last second.
    pub fn set_commit_rate(&self, per_s: u64) {
        self.committed_per_s.store(per_s, Ordering::Relaxed);
    }
}

/// What [`Admin`] is built from.
pub struct AdminDeps {
    /// Blacklists, shops, groups, assignments.
    pub dir: Arc<dyn DirectoryStore>,
    /// The node's blacklist cache.
    pub blacklist: Arc<Blacklist>,
    /// The node's word filter.
    pub words: Arc<Words>,
    /// The messaging rules (history, inboxes, service decisions).
    pub messaging: Messaging,
    /// Every worker's connections.
    pub devices: Arc<dyn Devices>,
    /// This node.
    pub node: Arc<NodeCard>,
    /// Frames one connection may queue: a replay sends at most half of it per call.
    pub outbox_capacity: usize,
    /// Bytes one connection may queue, and have unacked: a replay sends at most a
    /// quarter of it per call.
    pub outbox_bytes: usize,
    /// How often a tail reads the store again: in a cluster other nodes commit too,
    /// and this node's commit feed only sees what it committed. `None` on one node.
    pub tail_poll: Option<Duration>,
    /// Ends the tails at shutdown.
    pub stop: CancellationToken,
}

/// Admin operations. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    dir: Arc<dyn DirectoryStore>,
    blacklist: Arc<Blacklist>,
    words: Arc<Words>,
    pub(super) messaging: Messaging,
    devices: Arc<dyn Devices>,
    node: Arc<NodeCard>,
    outbox_capacity: usize,
    outbox_bytes: usize,
    pub(super) tail_poll: Option<Duration>,
    pub(super) stop: CancellationToken,
}

fn ids(list: Vec<String>, what: &str) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for uid in list {
        if !is_valid_id(&uid) {
            return Err(Error::BadRequest(format!("invalid {what} {uid:?}")));
        }
        if !out.contains(&uid) {
            out.push(uid);
        }
    }
    Ok(out)
}

fn name(s: &str, what: &str) -> Result<(), Error> {
    if is_valid_id(s) {
        Ok(())
    } else {
        Err(Error::BadRequest(format!("invalid {what} {s:?}")))
    }
}

impl Admin {
    /// Admin operations over the business layer's state and `deps.devices`.
    pub fn new(deps: AdminDeps) -> Self {
        Self {
            dir: deps.dir,
            blacklist: deps.blacklist,
            words: deps.words,
            messaging: deps.messaging,
            devices: deps.devices,
            node: deps.node,
            outbox_capacity: deps.outbox_capacity,
            outbox_bytes: deps.outbox_bytes,
            tail_poll: deps.tail_poll,
            stop: deps.stop,
        }
    }

    /// This node.
    pub fn node(&self) -> &NodeCard {
        &self.node
    }

    /// Loads the blacklist cache from the store (at start).
    pub async fn load_blacklist(&self) -> Result<usize, Error> {
        let entries = self.dir.blacklist().await?;
        self.blacklist.replace_all(&entries);
        Ok(entries.len())
    }

    /// Drops expired entries from the store; the cache already ignores them.
    pub async fn purge_blacklist(&self) -> Result<u64, Error> {
        Ok(self.dir.blacklist_purge(now_ms()).await?)
    }

    /// Live entries, uids first, then ips.
    pub async fn blacklist(&self) -> Result<Vec<BlacklistEntry>, Error> {
        let now = now_ms();
        let mut entries: Vec<_> = self
            .dir
            .blacklist()
            .await?
            .into_iter()
            .filter(|e| e.live(now))
            .collect();
        entries.sort_by(|a, b| (a.kind.as_str(), &a.value).cmp(&(b.kind.as_str(), &b.value)));
        Ok(entries)
    }

    /// Adds (or replaces) an entry; it applies on this node at once, and its live
    /// connections that it blocks are kicked (other nodes follow the store's change
    /// notification).
    pub async fn blacklist_add(&self, req: AddBlacklist) -> Result<BlacklistEntry, Error> {
        let value = match req.kind {
            BlacklistKind::Uid => {
                name(&req.value, "uid")?;
                req.value
            }
            BlacklistKind::Ip => IpNet::parse(&req.value)
                .map_err(|e| Error::BadRequest(e.to_string()))?
                .to_string(),
        };
        if req.reason.as_ref().is_some_and(|r| r.len() > 1024) {
            return Err(Error::BadRequest("reason is over 1024 bytes".into()));
        }
        let expires_at = match req.ttl_s {
            Some(0) => return Err(Error::BadRequest("ttl_s must be above 0".into())),
            Some(ttl) => Some(
                now_ms().saturating_add(
                    i64::try_from(ttl)
                        .unwrap_or(i64::MAX / 2)
                        .saturating_mul(1000),
                ),
            ),
            None => None,
        };
        let entry = BlacklistEntry {
            kind: req.kind,
            value,
            reason: req.reason,
            expires_at,
        };
        self.dir.blacklist_put(entry.clone()).await?;
        self.blacklist.upsert(&entry);
        tracing::info!(kind = entry.kind.as_str(), value = %entry.value, "blacklisted");
        let kicked = self.devices.enforce_blacklist();
        if kicked > 0 {
            tracing::info!(kicked, value = %entry.value, "blacklisted connections kicked");
        }
        Ok(entry)
    }

    /// Removes an entry.
    pub async fn blacklist_remove(&self, kind: BlacklistKind, value: &str) -> Result<(), Error> {
        let value = match kind {
            BlacklistKind::Uid => value.to_owned(),
            BlacklistKind::Ip => IpNet::parse(value)
                .map_err(|e| Error::BadRequest(e.to_string()))?
                .to_string(),
        };
        let existed = self.dir.blacklist_remove(kind, &value).await?;
        self.blacklist.remove(kind, &value);
        if existed {
            tracing::info!(kind = kind.as_str(), value = %value, "removed from blacklist");
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "no {} entry {value:?}",
                kind.as_str()
            )))
        }
    }

    /// Sets a shop's agents and settings, then hands its waiting conversations to any
    /// agent now eligible (added, or under a raised cap).
    pub async fn set_shop(&self, shop: &str, body: ShopAgents) -> Result<(), Error> {
        name(shop, "shop id")?;
        let agents = ids(body.agents, "uid")?;
        if body.max_open > MAX_OPEN_LIMIT {
            return Err(Error::BadRequest(format!(
                "max_open must be 0 (no cap) to {MAX_OPEN_LIMIT}"
            )));
        }
        for (what, v) in [("welcome", &body.welcome), ("away", &body.away)] {
            match v {
                Some(serde_json::Value::Null) => {
                    return Err(Error::BadRequest(format!("{what} must not be null")));
                }
                Some(v) if v.to_string().len() > SHOP_MESSAGE_MAX => {
                    return Err(Error::BadRequest(format!(
                        "{what} must be at most {SHOP_MESSAGE_MAX} bytes of JSON"
                    )));
                }
                _ => {}
            }
        }
        let settings = Shop {
            agents,
            max_open: body.max_open,
            welcome: body.welcome,
            away: body.away,
        };
        self.dir.set_shop(shop, settings).await?;
        self.messaging.drain_now(shop).await
    }

    /// With `--dev-tokens`: the shop `demo` with the agent `ann` and a welcome
    /// message, so that the pages can be tried at once; left alone when it exists.
    pub async fn demo_shop(&self) -> Result<(), Error> {
        if self.dir.shop(DEMO_SHOP).await?.is_some() {
            return Ok(());
        }
        self.set_shop(
            DEMO_SHOP,
            ShopAgents {
                agents: vec![DEMO_AGENT.to_owned()],
                max_open: 0,
                welcome: Some(serde_json::json!({"text": "Hello! How can we help?"})),
                away: Some(serde_json::json!({
                    "text": "Nobody is at the desk right now; we will answer as soon as we are back."
                })),
            },
        )
        .await?;
        tracing::info!(shop = DEMO_SHOP, agent = DEMO_AGENT, "demo shop set up");
        Ok(())
    }

    /// A shop's agents and settings.
    pub async fn shop(&self, shop: &str) -> Result<ShopAgents, Error> {
        let s = self
            .dir
            .shop(shop)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such shop {shop:?}")))?;
        Ok(ShopAgents {
            agents: s.agents,
            max_open: s.max_open,
            welcome: s.welcome,
            away: s.away,
        })
    }

    /// Every shop, by name.
    pub async fn shops(&self) -> Result<Vec<String>, Error> {
        Ok(self.dir.shops().await?)
    }

    /// Sets the per-shop gauges (`imd_shop_…{shop}`) from [`Admin::shop_stats`], for
    /// the first [`SHOP_METRICS_MAX`] shops by name: the label set is bounded by that,
    /// and the shops beyond it are counted in `imd_shop_metrics_omitted`.
    pub async fn export_shop_metrics(&self) -> Result<(), Error> {
        let shops = self.dir.shops().await?;
        let omitted = shops.len().saturating_sub(SHOP_METRICS_MAX);
        metrics::gauge!("imd_shop_metrics_omitted").set(omitted as f64);
        for shop in shops.into_iter().take(SHOP_METRICS_MAX) {
            let s = self.shop_stats(&shop).await?;
            let label = [("shop", shop)];
            metrics::gauge!("imd_shop_agents_online", &label).set(s.agents_online as f64);
            metrics::gauge!("imd_shop_agents_available", &label).set(s.agents_available as f64);
            metrics::gauge!("imd_shop_open", &label).set(s.open as f64);
            metrics::gauge!("imd_shop_waiting", &label).set(s.waiting as f64);
            metrics::gauge!("imd_shop_first_responses", &label)
                .set(s.first_response_ms.count as f64);
            for (q, v) in [
                ("0.5", s.first_response_ms.p50),
                ("0.9", s.first_response_ms.p90),
                ("0.99", s.first_response_ms.p99),
            ] {
                if let Some(ms) = v {
                    let labels = [("shop", label[0].1.clone()), ("quantile", q.to_owned())];
                    metrics::gauge!("imd_shop_first_response_seconds", &labels)
                        .set(ms as f64 / 1000.0);
                }
            }
            metrics::gauge!("imd_shop_ratings", &label).set(s.rating.count as f64);
            if let Some(avg) = s.rating.avg {
                metrics::gauge!("imd_shop_rating_avg", &label).set(avg);
            }
        }
        Ok(())
    }

    /// A shop's figures: agents online and available, open and waiting conversations,
    /// first-response percentiles, ratings, and each agent's load.
    pub async fn shop_stats(&self, shop: &str) -> Result<ShopStats, Error> {
        let settings = self
            .dir
            .shop(shop)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such shop {shop:?}")))?;
        let agents = self.messaging.service().agents(&settings).await?;
        let c = self.dir.shop_counters(shop).await?;
        let agents: Vec<AgentStats> = agents.into_iter().map(AgentState::view).collect();
        let q = |q| stats::quantile_ms(&c.first_response, q);
        Ok(ShopStats {
            shop: shop.to_owned(),
            agents_online: agents.iter().filter(|a| a.online).count() as u64,
            agents_available: agents.iter().filter(|a| a.available).count() as u64,
            open: c.open,
            waiting: c.waiting,
            max_open: settings.max_open,
            first_response_ms: FirstResponse {
                count: c.first_response.iter().sum(),
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
            },
            rating: RatingStats {
                count: c.ratings,
                avg: (c.ratings > 0).then(|| c.rating_sum as f64 / c.ratings as f64),
            },
            agents,
        })
    }

    /// Sets a group's members (conversation `g:{name}`). Members it adds start
    /// reading at the group's current end: what was said before them is not unread.
    pub async fn set_group_members(&self, group: &str, members: Vec<String>) -> Result<(), Error> {
        name(group, "group name")?;
        let members = ids(members, "uid")?;
        let before = self.dir.group_members(group).await?.unwrap_or_default();
        let added: Vec<String> = members
            .iter()
            .filter(|m| !before.contains(m))
            .cloned()
            .collect();
        self.dir.set_group_members(group, members).await?;
        self.messaging
            .read_from_now(&shared::ids::group_conv(group), added)
            .await
    }

    /// A group's members.
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, Error> {
        self.dir
            .group_members(group)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such group {group:?}")))
    }

    /// Hands a service conversation to `agent`, who receives its history.
    pub async fn transfer(&self, conv: &str, agent: &str) -> Result<(), Error> {
        name(agent, "uid")?;
        // Answered once the join is committed: the assignment is durable with it.
        self.messaging.transfer_by(conv, agent, None).await
    }

    /// Recalls any message of `conv` (moderation): its body goes, and a `recalled`
    /// event message with `"by": "admin"` is committed.
    pub async fn recall(&self, conv: &str, seq: u64) -> Result<(), Error> {
        self.messaging.recall_any(conv, seq).await
    }

    /// Erases the body of every message `uid` sent (see `messaging::erasure`); returns
    /// how many this call erased. Runs in a task of its own: an operator who goes away
    /// does not stop it half way (a second call would finish it anyway).
    pub async fn erase_user(&self, uid: &str) -> Result<u64, Error> {
        name(uid, "uid")?;
        let messaging = self.messaging.clone();
        let uid = uid.to_owned();
        let erased = super::messaging::detached(async move {
            let erased = messaging.erase_user(&uid).await?;
            tracing::info!(%uid, erased, "user's messages erased");
            Ok(erased)
        })
        .await?;
        metrics::counter!("imd_erased_total").increment(erased);
        Ok(erased)
    }

    /// Ends a service conversation's assignment, with a `closed` event message.
    pub async fn close(&self, conv: &str) -> Result<(), Error> {
        self.messaging.close_by(conv, None).await
    }

    /// The assignment of a service conversation.
    pub async fn assignment(&self, conv: &str) -> Result<shared::admin::Assignment, Error> {
        let st = self
            .dir
            .service(conv)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such conversation {conv:?}")))?;
        Ok(shared::admin::Assignment {
            conv: conv.to_owned(),
            agent: st.agent,
            open: st.open,
        })
    }

    /// Replaces the word list (and the policy, when given).
    pub fn set_words(
        &self,
        words: Vec<String>,
        policy: Option<&str>,
    ) -> Result<(usize, WordsPolicy), Error> {
        let policy = match policy {
            None => self.words.get().policy(),
            Some("mask") => WordsPolicy::Mask,
            Some("reject") => WordsPolicy::Reject,
            Some(p) => {
                return Err(Error::BadRequest(format!(
                    "unknown policy {p:?} (mask|reject)"
                )));
            }
        };
        if words.len() > 100_000 || words.iter().any(|w| w.len() > 256) {
            return Err(Error::BadRequest(
                "at most 100000 words of at most 256 bytes".into(),
            ));
        }
        let filter =
            WordFilter::new(words, policy).map_err(|e| Error::BadRequest(e.to_string()))?;
        let n = filter.len();
        self.words.set(filter);
        tracing::info!(words = n, "word list replaced");
        Ok((n, policy))
    }

    /// The filter's size and policy.
    pub fn words(&self) -> (usize, WordsPolicy) {
        let f = self.words.get();
        (f.len(), f.policy())
    }

    /// A page of connections, of one user or of all, over every worker (or only
    /// `node`'s), after the cursor `after`; `limit` defaults to 100, at most 1000.
    pub async fn connections(
        &self,
        uid: Option<&str>,
        node: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ConnectionList, Error> {
        if let Some(uid) = uid {
            name(uid, "uid")?;
        }
        let after: Option<ConnCursor> = after
            .map(str::parse)
            .transpose()
            .map_err(|e: shared::admin::BadCursor| Error::BadRequest(e.to_string()))?;
        let limit = limit.unwrap_or(100).clamp(1, 1000);
        let (connections, next) = self
            .devices
            .connections(uid, node, after.as_ref(), limit)
            .await;
        Ok(ConnectionList {
            connections,
            next: next.map(|c| c.to_string()),
        })
    }

    /// Disconnects every device of `uid`, on every worker, with `kick` `admin`; how
    /// many. `NotFound` when it had none.
    pub async fn kick(&self, uid: &str) -> Result<usize, Error> {
        let kicked = self.devices.kick_user(uid, "admin").await;
        if kicked == 0 {
            return Err(Error::NotFound(format!("{uid:?} has no connections")));
        }
        Ok(kicked)
    }

    /// Pushes a range of `req.uid`'s inbox to its connected devices again. At most half
    /// an outbox per call: a replay must never overflow a device's queue, which would
    /// disconnect it as too slow; longer ranges take several calls (`next_after`).
    pub async fn replay(&self, req: Replay) -> Result<Replayed, Error> {
        name(&req.uid, "uid")?;
        let until = req.until.unwrap_or(u64::MAX);
        if until <= req.after {
            return Err(Error::BadRequest("until must be above after".into()));
        }
        let devices = self.devices.count(&req.uid).await;
        let cap = self.outbox_capacity / 2;
        let mut entries = if devices == 0 {
            Vec::new()
        } else {
            self.messaging
                .inbox_range(&req.uid, req.after, until, cap + 1)
                .await?
        };
        // Half an outbox by frames, and a quarter by bytes (what is queued and what is
        // unacked count separately, and large messages must not push a device past
        // either bound): never fewer than one entry.
        let bytes_cap = self.outbox_bytes / 4;
        let mut bytes = 0;
        let fit = entries
            .iter()
            .take(cap)
            .take_while(|(_, json)| {
                bytes += json.len() + 32;
                bytes <= bytes_cap
            })
            .count()
            .max(1);
        let next_after = (entries.len() > fit).then(|| {
            entries.truncate(fit);
            entries.last().map_or(req.after, |e| e.0)
        });
        let messages = entries.len();
        self.devices.replay(&req.uid, entries);
        tracing::info!(uid = %req.uid, messages, devices, "replayed");
        Ok(Replayed {
            messages,
            devices: if messages == 0 { 0 } else { devices },
            next_after,
        })
    }

    /// This node's entry of the cluster view.
    pub fn node_info(&self) -> NodeInfo {
        let node = &self.node;
        NodeInfo {
            node_id: node.id.clone(),
            roles: node.roles.clone(),
            listen: node.listen.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            rpc_version: node.rpc_version,
            started_at: node.started_at_ms,
            committed: self.messaging.committed_total(),
            committed_per_s: node.committed_per_s.load(Ordering::Relaxed),
            ..self.devices.local_figures().unwrap_or_default()
        }
    }

    /// Every node of the cluster, by id (this one alone on a single node).
    pub async fn cluster(&self) -> Result<ClusterInfo, Error> {
        let mut nodes = self.devices.nodes().await?;
        // This node's worker knows only its part; the node describes itself whole.
        nodes.retain(|n| n.node_id != self.node.id);
        nodes.push(self.node_info());
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(ClusterInfo { nodes })
    }

    /// Reloads the words file (SIGHUP).
    pub fn reload_words(&self) -> Result<usize, super::words::WordsError> {
        self.words.reload()
    }
}

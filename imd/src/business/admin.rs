//! The operations of the admin API: blacklists, shops, groups, assignments, words.
//!
//! Each changes the store first and the node's caches second, so that a restart finds
//! what the caches held. Kicking the connections a change affects is the caller's job
//! (the gateway asks the workers), because this layer knows no connections.

use std::sync::Arc;

use shared::admin::{AddBlacklist, BlacklistEntry, BlacklistKind};
use shared::ids::is_valid_id;
use shared::time::now_ms;

use super::Error;
use super::blacklist::{Blacklist, IpNet};
use super::messaging::Messaging;
use super::words::{WordFilter, Words, WordsPolicy};
use crate::store::DirectoryStore;

/// Admin operations. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    dir: Arc<dyn DirectoryStore>,
    blacklist: Arc<Blacklist>,
    words: Arc<Words>,
    messaging: Messaging,
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
    /// Admin operations over the business layer's state.
    pub fn new(
        dir: Arc<dyn DirectoryStore>,
        blacklist: Arc<Blacklist>,
        words: Arc<Words>,
        messaging: Messaging,
    ) -> Self {
        Self {
            dir,
            blacklist,
            words,
            messaging,
        }
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

    /// Adds (or replaces) an entry; it applies on this node at once.
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

    /// Sets a shop's agents, and hands its waiting conversations to any who are online.
    pub async fn set_shop_agents(&self, shop: &str, agents: Vec<String>) -> Result<(), Error> {
        name(shop, "shop id")?;
        let agents = ids(agents, "uid")?;
        self.dir.set_shop_agents(shop, agents.clone()).await?;
        for agent in agents {
            let decision = self.messaging.service().agent_online_if(&agent).await?;
            self.messaging.submit(decision).await?;
        }
        Ok(())
    }

    /// A shop's agents.
    pub async fn shop_agents(&self, shop: &str) -> Result<Vec<String>, Error> {
        self.dir
            .shop_agents(shop)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such shop {shop:?}")))
    }

    /// Sets a group's members (conversation `g:{name}`).
    pub async fn set_group_members(&self, group: &str, members: Vec<String>) -> Result<(), Error> {
        name(group, "group name")?;
        let members = ids(members, "uid")?;
        Ok(self.dir.set_group_members(group, members).await?)
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
        let decision = self.messaging.service().transfer(conv, agent).await?;
        // Answered once the join is committed: the assignment is durable with it.
        self.messaging.submit_and_wait(decision).await
    }

    /// Ends a service conversation's assignment.
    pub async fn close(&self, conv: &str) -> Result<(), Error> {
        self.messaging.service().close(conv).await
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

    /// Reloads the words file (SIGHUP).
    pub fn reload_words(&self) -> Result<usize, super::words::WordsError> {
        self.words.reload()
    }
}

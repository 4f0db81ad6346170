//! The customer-service calls of clients: an agent's availability, closing a
//! conversation, and the customer's rating. The rules are `CustomerService`'s; this
//! checks who asks and commits what it decided.

use shared::ids::ConvRef;
use shared::protocol::{
    AgentResponse, AgentStatus, QueueEntry, RatingRequest, ShopAgent, ShopView,
};

use super::Messaging;
use crate::business::{Error, Identity};

/// The role a token must carry to set an availability.
const AGENT_ROLE: &str = "agent";

impl Messaging {
    /// A device with the agent role connected: the agent is available (nothing for
    /// other tokens, so that a connection costs no store write).
    pub async fn available(&self, who: &Identity) -> Result<(), Error> {
        if who.roles.iter().any(|r| r == AGENT_ROLE) {
            self.0.service.set_away(&who.uid, false).await?;
        }
        Ok(())
    }

    /// An agent sets its availability; turning available, it takes waiting
    /// conversations of its shops.
    pub async fn set_status(&self, who: &Identity, status: AgentStatus) -> Result<(), Error> {
        if !who.roles.iter().any(|r| r == AGENT_ROLE) {
            return Err(Error::Forbidden(
                "only a token with the agent role sets a status".into(),
            ));
        }
        let away = status == AgentStatus::Away;
        let decisions = self.0.service.set_status(&who.uid, away).await?;
        self.submit(decisions).await
    }

    /// The assigned agent closes its conversation: answered once the `closed` event is
    /// committed.
    pub async fn close(&self, who: &Identity, conv: &str) -> Result<(), Error> {
        let decisions = self.0.service.close(conv, Some(&who.uid)).await?;
        self.submit_and_wait(decisions).await
    }

    /// The caller as an agent: its availability and its shops.
    pub async fn agent(&self, who: &Identity) -> Result<AgentResponse, Error> {
        let shops = self.0.dir.agent_shops(&who.uid).await?;
        let away = self.0.dir.away(std::slice::from_ref(&who.uid)).await?;
        Ok(AgentResponse {
            uid: who.uid.clone(),
            status: if away.first().copied().unwrap_or(false) {
                AgentStatus::Away
            } else {
                AgentStatus::Available
            },
            shops,
        })
    }

    /// A shop's queue and agents, for its agents (403 for anyone else).
    pub async fn shop_view(&self, who: &Identity, shop: &str) -> Result<ShopView, Error> {
        let settings = self
            .0
            .dir
            .shop(shop)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no such shop {shop:?}")))?;
        if !settings.agents.contains(&who.uid) {
            return Err(Error::Forbidden(format!("not an agent of shop {shop:?}")));
        }
        let waiting = self.0.dir.waiting(shop).await?;
        let waiting = waiting
            .into_iter()
            .enumerate()
            .filter_map(|(i, conv)| {
                let customer = match ConvRef::parse(&conv) {
                    Some(ConvRef::Service { customer, .. }) => customer.to_owned(),
                    _ => return None,
                };
                Some(QueueEntry {
                    conv,
                    customer,
                    position: i as u64 + 1,
                })
            })
            .collect();
        let agents = self
            .0
            .service
            .agents(&settings)
            .await?
            .into_iter()
            .map(|a| ShopAgent {
                available: a.online && !a.away,
                online: a.online,
                uid: a.uid,
                open: a.open,
            })
            .collect();
        Ok(ShopView {
            shop: shop.to_owned(),
            max_open: settings.max_open,
            waiting,
            agents,
        })
    }

    /// The assigned agent hands its conversation to `agent`, a colleague below the
    /// cap: answered once the handover is committed.
    pub async fn transfer(&self, who: &Identity, conv: &str, agent: &str) -> Result<(), Error> {
        let decisions = self.0.service.transfer(conv, agent, Some(&who.uid)).await?;
        self.submit_and_wait(decisions).await
    }

    /// The customer rates its closed conversation: answered once the `rated` event is
    /// committed.
    pub async fn rate(&self, who: &Identity, conv: &str, req: RatingRequest) -> Result<(), Error> {
        let decision = self
            .0
            .service
            .rate(&who.uid, conv, req.score, req.comment)
            .await?;
        self.submit_and_wait(vec![decision]).await
    }
}

//! The customer-service calls of clients: an agent's availability, closing a
//! conversation, and the customer's rating. The rules are `CustomerService`'s; this
//! checks who asks and commits what it decided.

use shared::ids::ConvRef;
use shared::protocol::{AgentResponse, AgentStatus, QueueEntry, RatingRequest, ShopView};

use super::{Messaging, detached};
use crate::business::service::AgentState;
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
        let (m, uid) = (self.clone(), who.uid.clone());
        detached(async move {
            let decisions = m.0.service.set_status(&uid, away).await?;
            m.submit(decisions).await
        })
        .await
    }

    /// The assigned agent closes its conversation: answered once the `closed` event is
    /// committed.
    pub async fn close(&self, who: &Identity, conv: &str) -> Result<(), Error> {
        self.close_by(conv, Some(&who.uid)).await
    }

    /// Closes `conv` for `by` (an agent; `None`: an operator): the `closed` event is
    /// committed, then the store closes it, then the queue takes the freed place.
    pub async fn close_by(&self, conv: &str, by: Option<&str>) -> Result<(), Error> {
        let (m, conv, by) = (self.clone(), conv.to_owned(), by.map(str::to_owned));
        detached(async move {
            let mut closing = m.0.service.close_begin(&conv, by.as_deref()).await?;
            let event = std::mem::take(&mut closing.event);
            m.submit_and_wait(vec![event]).await?;
            let drains = m.0.service.close_finish(closing).await?;
            m.submit(drains).await
        })
        .await
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
            .map(AgentState::view)
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
        self.transfer_by(conv, agent, Some(&who.uid)).await
    }

    /// Hands `conv` to `agent` for `by` (its assigned agent; `None`: an operator),
    /// answered once the handover is committed.
    pub async fn transfer_by(
        &self,
        conv: &str,
        agent: &str,
        by: Option<&str>,
    ) -> Result<(), Error> {
        let m = self.clone();
        let (conv, agent, by) = (conv.to_owned(), agent.to_owned(), by.map(str::to_owned));
        detached(async move {
            let decisions = m.0.service.transfer(&conv, &agent, by.as_deref()).await?;
            m.submit_and_wait(decisions).await
        })
        .await
    }

    /// The customer rates its closed conversation: answered once the `rated` event is
    /// committed.
    pub async fn rate(&self, who: &Identity, conv: &str, req: RatingRequest) -> Result<(), Error> {
        let (m, uid, conv) = (self.clone(), who.uid.clone(), conv.to_owned());
        detached(async move {
            let decision =
                m.0.service
                    .rate(&uid, &conv, req.score, req.comment)
                    .await?;
            m.submit_and_wait(vec![decision]).await
        })
        .await
    }
}

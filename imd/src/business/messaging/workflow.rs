//! The customer-service calls of clients: an agent's availability, closing a
//! conversation, and the customer's rating. The rules are `CustomerService`'s; this
//! checks who asks and commits what it decided.

use shared::protocol::{AgentStatus, RatingRequest};

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

//! Choosing an agent for a customer-service conversation: the pure rule.
//!
//! The online agent with the fewest open conversations wins. Ties go to the agent who
//! was assigned longest ago (least recently used), so that equally loaded agents take
//! turns instead of the first in the list taking every new customer.

/// What the rule needs to know of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The agent's uid.
    pub uid: &'a str,
    /// Whether any of the agent's devices is connected.
    pub online: bool,
    /// Open conversations assigned to the agent.
    pub load: u64,
    /// When the agent was last assigned a conversation (any monotonic counter; 0 = never).
    pub last_assigned: u64,
}

/// The agent to assign, or `None` when no agent is online.
pub fn choose<'a>(candidates: &[Candidate<'a>]) -> Option<&'a str> {
    candidates
        .iter()
        .filter(|c| c.online)
        .min_by_key(|c| (c.load, c.last_assigned, c.uid))
        .map(|c| c.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(uid: &str, online: bool, load: u64, last_assigned: u64) -> Candidate<'_> {
        Candidate {
            uid,
            online,
            load,
            last_assigned,
        }
    }

    #[test]
    fn least_loaded_online_agent_wins() {
        for (agents, want) in [
            (vec![c("a", true, 3, 0), c("b", true, 1, 0)], Some("b")),
            (vec![c("a", true, 3, 0), c("b", false, 0, 0)], Some("a")),
            (vec![c("a", false, 0, 0), c("b", false, 0, 0)], None),
            (vec![], None),
            // a tie goes to whoever waited longest since their last assignment
            (vec![c("a", true, 2, 9), c("b", true, 2, 4)], Some("b")),
            // then to the uid order, so that the choice is deterministic
            (vec![c("b", true, 0, 0), c("a", true, 0, 0)], Some("a")),
        ] {
            assert_eq!(choose(&agents), want, "{agents:?}");
        }
    }

    #[test]
    fn equal_agents_take_turns() {
        let mut agents = vec![c("a", true, 0, 0), c("b", true, 0, 0), c("c", true, 0, 0)];
        let mut picks = Vec::new();
        for clock in 1..=6 {
            let pick = choose(&agents).unwrap().to_owned();
            let chosen = agents.iter_mut().find(|a| a.uid == pick).unwrap();
            chosen.last_assigned = clock;
            picks.push(pick);
        }
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }
}

//! The customer-service workflow (`--max-open`, `--close-after`) as one connection
//! sees it: a shop agent's desk ([`AgentDesk`]: which conversations it holds, by its
//! own count against the cap, when to stop answering and close), a customer's view of
//! its conversation ([`CustomerDesk`]: open, waiting, with which agent; how long it
//! waited; which agent owes it each message), and the close call.
//!
//! Everything is driven by what arrives on the connection, in inbox order: pushes of
//! messages and event messages (`assigned`, `closed`), and `queue` frames. The state
//! machines here do no I/O and know nothing of WebSockets; `traffic` feeds them and
//! acts on their answers. Two facts of imd's they rely on (docs/protocol.md, *Customer
//! service*):
//!
//! - when an agent takes a conversation (an assignment, from the queue or not), its
//!   inbox receives what it has not seen of the conversation, the history of earlier
//!   openings included, and then its `assigned` event; so an agent holds back the
//!   messages of a conversation it does not hold until the next event says what they
//!   were: `assigned` to it (they are this opening's: deliveries), or `closed` (an
//!   earlier opening's: history, neither delivered nor answered);
//! - a customer is a member of every message of its conversation, so the order of its
//!   own messages' pushes and the events tells it which opening, and which agent, each
//!   message belongs to.

use std::collections::{BTreeSet, HashMap, HashSet};

/// An agent's count of its open conversations, kept from the events it receives:
/// `assigned` to it +1; `assigned` to someone else with it as `previous`, or `closed`
/// of a conversation it holds, −1. A conversation is counted once (a set of the
/// customers whose conversation it holds), so an `assigned` it already holds adds
/// nothing, and a `closed` of one it does not hold (history of someone else's opening)
/// takes nothing away.
#[derive(Debug, Clone, Default)]
pub struct CapTracker {
    /// The cap (0: none).
    cap: u64,
    /// The customers whose conversation it holds.
    open: HashSet<u64>,
    /// The most it held at once.
    max: u64,
    /// Times the count went above the cap.
    over: u64,
}

impl CapTracker {
    /// A tracker for an agent whose shop's cap is `cap` (0: none).
    pub fn new(cap: u32) -> Self {
        Self {
            cap: u64::from(cap),
            ..Default::default()
        }
    }

    /// `customer`'s conversation was assigned to this agent. `Some(open)` when that
    /// put the agent above its cap (`open` conversations).
    pub fn assigned(&mut self, customer: u64) -> Option<u64> {
        if !self.open.insert(customer) {
            return None;
        }
        let open = self.open.len() as u64;
        self.max = self.max.max(open);
        if self.cap > 0 && open > self.cap {
            self.over += 1;
            return Some(open);
        }
        None
    }

    /// `customer`'s conversation left this agent (closed, or assigned to another);
    /// false when it did not hold it.
    pub fn released(&mut self, customer: u64) -> bool {
        self.open.remove(&customer)
    }

    /// Whether this agent holds `customer`'s conversation.
    pub fn holds(&self, customer: u64) -> bool {
        self.open.contains(&customer)
    }

    /// Open conversations now.
    pub fn open(&self) -> u64 {
        self.open.len() as u64
    }

    /// The most open conversations at once so far.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Times the count went above the cap.
    pub fn over(&self) -> u64 {
        self.over
    }
}

/// A push an agent held back until it knows whether it is this opening's message or
/// history: enough of it to count, check and answer it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    /// The sender's global index.
    pub sender: u64,
    /// The sender's message number.
    pub n: u64,
    /// Its intended send time (unix µs), if it had one.
    pub t: Option<u64>,
    /// Its conversation.
    pub conv: String,
    /// Its place in the conversation.
    pub seq: u64,
}

/// What a shop agent knows of one customer's conversation.
#[derive(Debug, Default)]
struct DeskConv {
    /// Pushes of it while the agent did not hold it, oldest first.
    held_back: Vec<HeldBack>,
    /// Replies sent into it since it was last closed.
    replies: u64,
    /// Of those, the ones imd answered (`sent`, or an `error`).
    answered: u64,
    /// It got its last reply: no more, and a close once all are answered.
    closing: bool,
    /// The close call is in flight.
    close_sent: bool,
}

/// A shop agent's desk: the conversations it holds (against the cap), the pushes it
/// holds back, and its replies and closes per conversation (`--close-after`).
#[derive(Debug)]
pub struct AgentDesk {
    /// Replies after which it closes a conversation (0: never).
    close_after: u64,
    /// Its open conversations, by its own count.
    pub caps: CapTracker,
    convs: HashMap<u64, DeskConv>,
}

impl AgentDesk {
    /// The desk of an agent whose shop caps it at `max_open` and which closes after
    /// `close_after` replies (0: never).
    pub fn new(max_open: u32, close_after: u64) -> Self {
        Self {
            close_after,
            caps: CapTracker::new(max_open),
            convs: HashMap::new(),
        }
    }

    /// Whether it holds `customer`'s conversation (its pushes are deliveries now).
    pub fn holds(&self, customer: u64) -> bool {
        self.caps.holds(customer)
    }

    /// Keeps a push of a conversation it does not hold until the next event of it.
    pub fn hold_back(&mut self, customer: u64, push: HeldBack) {
        self.convs.entry(customer).or_default().held_back.push(push);
    }

    /// `assigned` to it: it holds the conversation; returns what it held back (this
    /// opening's messages, to deliver now) and, when the assignment put it above its
    /// cap, its open count.
    pub fn assigned(&mut self, customer: u64) -> (Vec<HeldBack>, Option<u64>) {
        let over = self.caps.assigned(customer);
        let held = self
            .convs
            .get_mut(&customer)
            .map(|c| std::mem::take(&mut c.held_back))
            .unwrap_or_default();
        (held, over)
    }

    /// `assigned` to another agent, with it as `previous`: it no longer holds it.
    pub fn taken_away(&mut self, customer: u64) {
        self.caps.released(customer);
    }

    /// `closed`: it no longer holds the conversation, what it held back was an earlier
    /// opening (returned: their number, as history), and the next opening starts its
    /// replies from zero.
    pub fn closed(&mut self, customer: u64) -> u64 {
        self.caps.released(customer);
        self.convs
            .remove(&customer)
            .map_or(0, |c| c.held_back.len() as u64)
    }

    /// Whether to answer a customer message of this conversation: always without
    /// `--close-after`, else its first K since the conversation was last closed.
    /// Counts the reply it then sends.
    pub fn may_reply(&mut self, customer: u64) -> bool {
        if self.close_after == 0 {
            return true;
        }
        let c = self.convs.entry(customer).or_default();
        if c.closing {
            return false;
        }
        c.replies += 1;
        c.closing = c.replies >= self.close_after;
        true
    }

    /// imd answered one of its replies into this conversation; true when that was
    /// the last one owed before the close, and the close should be sent now.
    pub fn reply_answered(&mut self, customer: u64) -> bool {
        let Some(c) = self.convs.get_mut(&customer) else {
            return false;
        };
        c.answered += 1;
        if c.closing && !c.close_sent && c.answered >= c.replies {
            c.close_sent = true;
            return true;
        }
        false
    }

    /// Its close failed: it goes on answering the conversation as if it had not
    /// tried (another close comes after K more replies).
    pub fn close_failed(&mut self, customer: u64) {
        if let Some(c) = self.convs.get_mut(&customer).filter(|c| c.close_sent) {
            c.replies = 0;
            c.answered = 0;
            c.closing = false;
            c.close_sent = false;
        }
    }

    /// What is still held back at the end of the run (pushes whose event had not come
    /// yet): they did reach this device.
    pub fn take_held_back(&mut self) -> Vec<HeldBack> {
        self.convs
            .values_mut()
            .flat_map(|c| std::mem::take(&mut c.held_back))
            .collect()
    }
}

/// Where a customer's conversation stands, from the customer's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stand {
    /// Never opened, or closed: the next message opens it.
    #[default]
    Closed,
    /// Opened, no agent yet.
    Opened,
    /// With this agent (global index).
    With(u64),
}

/// Which agent owes a customer message, as the customer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    /// The agent its conversation was with (or assigned to right after it).
    Agent(u64),
    /// Nobody yet: its conversation still waited in the queue at the end, or was
    /// closed before any agent took it.
    Waiting,
    /// The customer never saw its push, so it cannot tell.
    Unknown,
}

/// A customer's view of its conversation with its shop: the openings, the queue, the
/// agent each of its messages is owed to.
#[derive(Debug, Default)]
pub struct CustomerDesk {
    stand: Stand,
    /// Intended send time (unix µs) of the message that opened the current opening.
    opened_at: Option<u64>,
    /// A `queue` frame came for the current (or the next) opening.
    queued: bool,
    /// Messages of the current opening pushed before it had an agent.
    unassigned: Vec<u64>,
    /// Message number → the agent it is owed to.
    owed: HashMap<u64, u64>,
    /// Messages of openings closed before any agent took them.
    orphaned: BTreeSet<u64>,
}

impl CustomerDesk {
    /// The push of its own message `n`, intended at `t` (unix µs).
    pub fn own(&mut self, n: u64, t: Option<u64>) {
        match self.stand {
            Stand::With(agent) => {
                self.owed.insert(n, agent);
            }
            Stand::Closed => {
                // It opens the conversation again.
                self.stand = Stand::Opened;
                self.opened_at = t;
                self.unassigned.push(n);
            }
            Stand::Opened => self.unassigned.push(n),
        }
    }

    /// A `queue` frame: true when it counts (it came before the assignment; a late
    /// one, after it, is stale).
    pub fn queue(&mut self) -> bool {
        if matches!(self.stand, Stand::With(_)) {
            return false;
        }
        self.queued = true;
        true
    }

    /// `assigned` to `agent`, pushed at `now` (unix µs): the queue wait (µs), when the
    /// opening waited.
    pub fn assigned(&mut self, agent: u64, now: u64) -> Option<u64> {
        for n in self.unassigned.drain(..) {
            self.owed.insert(n, agent);
        }
        self.stand = Stand::With(agent);
        let waited = std::mem::take(&mut self.queued);
        match (waited, self.opened_at) {
            (true, Some(t)) => Some(now.saturating_sub(t)),
            _ => None,
        }
    }

    /// `closed`: the next message opens it again.
    pub fn closed(&mut self) {
        self.orphaned.extend(self.unassigned.drain(..));
        self.stand = Stand::Closed;
        self.opened_at = None;
    }

    /// Which agent owes message `n`, at the end of the run.
    pub fn owed(&self, n: u64) -> Owed {
        if let Some(&agent) = self.owed.get(&n) {
            Owed::Agent(agent)
        } else if self.orphaned.contains(&n) || (self.queued && self.unassigned.contains(&n)) {
            // Waiting with a `queue` frame to show for it; an opening with neither a
            // place in the queue nor an agent by the end is not excused.
            Owed::Waiting
        } else {
            Owed::Unknown
        }
    }
}

/// Closes `conv` as its assigned agent: `POST {base}/v1/conversations/{conv}/close`
/// with the agent's `token`; the error says what imd answered.
pub async fn close(
    http: reqwest::Client,
    base: String,
    conv: String,
    token: String,
) -> Result<(), String> {
    let url = format!("{base}/v1/conversations/{conv}/close");
    let response = http
        .post(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {}", chain(&e)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(format!("POST {url} answered {status}: {}", body.trim()))
}

/// An error and its sources, `: `-separated (reqwest's own message leaves out the
/// cause, e.g. a timeout).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as an agent sees it in its inbox.
    #[derive(Debug, Clone, Copy)]
    enum Ev {
        /// `assigned` to it.
        Mine(u64),
        /// `assigned` to a colleague, with it as `previous`.
        TakenAway(u64),
        /// `closed`.
        Closed(u64),
    }

    fn feed(cap: u32, events: &[Ev]) -> CapTracker {
        let mut t = CapTracker::new(cap);
        for e in events {
            match *e {
                Ev::Mine(c) => {
                    t.assigned(c);
                }
                Ev::TakenAway(c) | Ev::Closed(c) => {
                    t.released(c);
                }
            }
        }
        t
    }

    #[test]
    fn the_cap_tracker_catches_an_agent_over_its_cap() {
        use Ev::*;
        // (cap, events, max open, times over)
        let table: &[(u32, &[Ev], u64, u64)] = &[
            // two at cap 2, one closed, a third: never over
            (2, &[Mine(1), Mine(2), Closed(1), Mine(3)], 2, 0),
            // a third before any close: over
            (2, &[Mine(1), Mine(2), Mine(3)], 3, 1),
            // taken away counts down like a close
            (1, &[Mine(1), TakenAway(1), Mine(2)], 1, 0),
            // a close of a conversation it never held (history) takes nothing away,
            // so the next assignment goes over
            (1, &[Mine(1), Closed(9), Mine(2)], 2, 1),
            // the same assignment twice is one conversation
            (1, &[Mine(1), Mine(1)], 1, 0),
            // over twice: 2 then 3 at cap 1
            (1, &[Mine(1), Mine(2), Mine(3), Closed(3), Closed(2)], 3, 2),
            // no cap: never over
            (0, &[Mine(1), Mine(2), Mine(3)], 3, 0),
        ];
        for (cap, events, max, over) in table {
            let t = feed(*cap, events);
            assert_eq!((t.max(), t.over()), (*max, *over), "cap {cap}: {events:?}");
        }
        let mut t = CapTracker::new(1);
        assert_eq!(t.assigned(1), None);
        assert_eq!(
            t.assigned(2),
            Some(2),
            "the assignment that goes over says so"
        );
        assert_eq!(t.open(), 2);
    }

    fn push(sender: u64, n: u64, seq: u64) -> HeldBack {
        HeldBack {
            sender,
            n,
            t: Some(n * 1000),
            conv: "s:shop~c".into(),
            seq,
        }
    }

    #[test]
    fn held_back_pushes_are_this_openings_at_assigned_and_history_at_closed() {
        let mut d = AgentDesk::new(2, 0);
        // a join gives it an earlier opening (customer 7's messages 1 and 2, and the
        // reply of agent 0) and its close, then this opening's message 3 and its
        // `assigned`
        d.hold_back(7, push(7, 1, 1));
        d.hold_back(7, push(7, 2, 2));
        d.hold_back(7, push(0, 1, 3));
        assert_eq!(d.closed(7), 3, "history");
        d.hold_back(7, push(7, 3, 5));
        assert!(!d.holds(7));
        let (held, over) = d.assigned(7);
        assert_eq!((held, over), (vec![push(7, 3, 5)], None));
        assert!(d.holds(7));
        // closed: no longer held
        assert_eq!(d.closed(7), 0);
        assert!(!d.holds(7) && d.caps.open() == 0);
        // pushes still held back at the end reached the device
        d.hold_back(8, push(8, 1, 1));
        assert_eq!(d.take_held_back(), vec![push(8, 1, 1)]);
    }

    #[test]
    fn an_agent_answers_k_messages_then_closes_once_they_are_acknowledged() {
        let mut d = AgentDesk::new(1, 2);
        d.assigned(5);
        assert!(d.may_reply(5));
        assert!(d.may_reply(5));
        assert!(!d.may_reply(5), "its third message goes unanswered");
        assert!(!d.reply_answered(5), "one reply still owed");
        assert!(d.reply_answered(5), "both answered: close now");
        assert!(!d.reply_answered(5), "one close");
        // a failed close: it answers again, and closes after two more
        d.close_failed(5);
        assert!(d.may_reply(5) && d.may_reply(5) && !d.may_reply(5));
        // the close went through: the next opening starts from zero
        d.closed(5);
        d.assigned(5);
        assert!(d.may_reply(5));
        // without --close-after it answers everything, and never closes
        let mut d = AgentDesk::new(0, 0);
        assert!((0..100).all(|_| d.may_reply(1)));
        assert!(!d.reply_answered(1));
    }

    #[test]
    fn a_customer_measures_its_wait_and_knows_which_agent_owes_each_message() {
        let mut c = CustomerDesk::default();
        // message 1 opens the conversation and it waits (the queue frame may come
        // before the push of message 1); message 2 is sent while it waits
        assert!(c.queue());
        c.own(1, Some(1_000_000));
        c.own(2, Some(1_500_000));
        assert_eq!(c.owed(2), Owed::Waiting);
        assert_eq!(c.assigned(3, 4_000_000), Some(3_000_000));
        c.own(3, Some(4_100_000));
        assert_eq!(
            (c.owed(1), c.owed(2), c.owed(3)),
            (Owed::Agent(3), Owed::Agent(3), Owed::Agent(3))
        );
        // a late queue frame after the assignment is stale
        assert!(!c.queue());
        // closed; message 4 opens it again, an agent takes it at once: no wait
        c.closed();
        c.own(4, Some(5_000_000));
        assert_eq!(c.owed(4), Owed::Unknown, "neither queued nor assigned yet");
        assert_eq!(c.assigned(2, 5_001_000), None);
        assert_eq!(c.owed(4), Owed::Agent(2));
        // reassigned (its agent went offline): later messages are owed to the new one
        assert_eq!(c.assigned(4, 6_000_000), None);
        c.own(5, Some(6_100_000));
        assert_eq!((c.owed(4), c.owed(5)), (Owed::Agent(2), Owed::Agent(4)));
        assert_eq!(c.owed(99), Owed::Unknown, "never pushed");
    }
}

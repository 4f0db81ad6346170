//! The customer-service workflow's figures (`--max-open`, `--close-after`): queue
//! waits, assignments, closes, the longest queue, and the most open conversations any
//! agent held, in their three forms: live in an agent ([`LiveService`]: atomics and a
//! histogram, bumped by connection tasks), on the wire ([`ServiceReport`], in an
//! agent's final report), and in the run's report ([`ServiceSection`]).
//!
//! Pure bookkeeping; what each figure means is decided by `scenario::service`, and
//! whether the run failed by [`super::combine`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{HistData, LatencySummary, new_histogram, record_us};

/// One agent's workflow figures, live.
#[derive(Debug, Default)]
pub struct LiveService {
    /// `assigned` events pushed to customers.
    pub(crate) assignments: AtomicU64,
    /// Openings that waited in the queue (a `queue` frame before their `assigned`).
    pub(crate) queued: AtomicU64,
    /// Closes imd answered 200.
    pub(crate) closes: AtomicU64,
    /// Closes that failed.
    pub(crate) close_errors: AtomicU64,
    /// Highest `position` of a `queue` frame.
    pub(crate) max_queue_position: AtomicU64,
    /// `queue` frames customers received.
    pub(crate) queue_frames: AtomicU64,
    /// Most open conversations one agent held, by its own count.
    pub(crate) max_open_per_agent: AtomicU64,
    /// Times an agent's count went above `--max-open`.
    pub(crate) over_cap: AtomicU64,
    /// Customer messages an agent received with its assignment of their conversation
    /// (pushed before its `assigned` event: they waited, or opened it).
    pub(crate) at_assignment: AtomicU64,
    /// Pushes of earlier openings an agent received when it took a conversation over
    /// (a join gives it the history).
    pub(crate) history: AtomicU64,
    // std Mutexes: a record is a few nanoseconds and never awaits.
    queue_wait: Mutex<Option<Histogram<u64>>>,
    close_latency: Mutex<Option<Histogram<u64>>>,
}

impl LiveService {
    /// Records a queue wait, in µs.
    pub(crate) fn record_queue_wait(&self, us: u64) {
        let mut h = self.queue_wait.lock().expect("queue wait lock poisoned");
        record_us(h.get_or_insert_with(new_histogram), us);
    }

    /// Records how long a close call took, in µs.
    pub(crate) fn record_close_latency(&self, us: u64) {
        let mut h = self.close_latency.lock().expect("close lock poisoned");
        record_us(h.get_or_insert_with(new_histogram), us);
    }

    /// What the agent reports at the end (the histograms are taken).
    pub(crate) fn take_report(&self) -> ServiceReport {
        let take = |h: &Mutex<Option<Histogram<u64>>>| {
            h.lock()
                .expect("service histogram lock poisoned")
                .take()
                .as_ref()
                .map(HistData::from_histogram)
                .unwrap_or_default()
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServiceReport {
            queue_wait: take(&self.queue_wait),
            close_latency: take(&self.close_latency),
            queue_frames: get(&self.queue_frames),
            assignments: get(&self.assignments),
            queued: get(&self.queued),
            closes: get(&self.closes),
            close_errors: get(&self.close_errors),
            max_queue_position: get(&self.max_queue_position),
            max_open_per_agent: get(&self.max_open_per_agent),
            over_cap: get(&self.over_cap),
            at_assignment: get(&self.at_assignment),
            history: get(&self.history),
        }
    }
}

/// One agent's workflow figures at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// Queue waits, µs.
    pub queue_wait: HistData,
    /// Close calls, from sending to imd's answer, µs.
    pub close_latency: HistData,
    /// See [`ServiceSection::queue_frames`].
    pub queue_frames: u64,
    /// See [`ServiceSection::assignments`].
    pub assignments: u64,
    /// See [`ServiceSection::queued`].
    pub queued: u64,
    /// See [`ServiceSection::closes`].
    pub closes: u64,
    /// See [`ServiceSection::close_errors`].
    pub close_errors: u64,
    /// See [`ServiceSection::max_queue_position`].
    pub max_queue_position: u64,
    /// See [`ServiceSection::max_open_per_agent`].
    pub max_open_per_agent: u64,
    /// See [`ServiceSection::over_cap`].
    pub over_cap: u64,
    /// See [`ServiceSection::delivered_at_assignment`].
    pub at_assignment: u64,
    /// See [`ServiceSection::history`].
    pub history: u64,
}

/// `service` of the report: the workflow run with `--max-open` / `--close-after`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSection {
    /// The shops' cap per agent (0: none).
    pub max_open: u32,
    /// Replies after which an agent closes a conversation (0: never).
    pub close_after: u64,
    /// From the intended send time of the customer message that opened a conversation
    /// which then waited (its customer got a `queue` frame) to the `assigned` event
    /// pushed to that customer.
    pub queue_wait_ms: LatencySummary,
    /// A close call (`POST …/close`), from sending it to imd's answer (which comes
    /// once the `closed` event is committed).
    pub close_ms: LatencySummary,
    /// `assigned` events pushed to customers: every assignment, waited or not.
    pub assignments: u64,
    /// Openings that waited in the queue (the samples of `queue_wait_ms`).
    pub queued: u64,
    /// Conversations closed by their agent (`POST …/close` answered 200).
    pub closes: u64,
    /// Closes that failed (see `errors`).
    pub close_errors: u64,
    /// Highest place in a shop's queue any customer was told.
    pub max_queue_position: u64,
    /// `queue` frames customers received (one to every waiting customer each time
    /// the queue moves).
    pub queue_frames: u64,
    /// Most open conversations one agent held at once, counted by each agent from the
    /// events in its inbox (`assigned` to it +1; `assigned` away from it, or `closed`
    /// of one of its conversations, −1).
    pub max_open_per_agent: u64,
    /// Times an agent's count went above `max_open` (any: the run fails).
    pub over_cap: u64,
    /// Customer messages pushed to an agent with the assignment of their conversation
    /// (they waited in the queue, or opened it); their send → push time includes the
    /// wait, so `latency_ms` leaves them out.
    pub delivered_at_assignment: u64,
    /// Pushes of earlier openings an agent received as history when it took a
    /// conversation: not deliveries, never answered.
    pub history: u64,
    /// Acknowledged customer messages still waiting for an agent when the run ended
    /// (their conversation was in the queue): owed to nobody yet, not lost.
    pub waiting_at_end: u64,
    /// Acknowledged customer messages that missed the agent their conversation was
    /// with, by its events, and reached another agent (with `--verify`: the run
    /// fails).
    pub misrouted: u64,
}

impl ServiceSection {
    /// Adds up agents' figures; `waiting_at_end` and `misrouted` come from the
    /// delivery check.
    pub fn combine(max_open: u32, close_after: u64, reports: &[&ServiceReport]) -> Self {
        let mut wait = new_histogram();
        let mut close = new_histogram();
        let mut s = ServiceSection {
            max_open,
            close_after,
            ..Default::default()
        };
        for r in reports {
            r.queue_wait.add_to(&mut wait);
            r.close_latency.add_to(&mut close);
            s.queue_frames += r.queue_frames;
            s.assignments += r.assignments;
            s.queued += r.queued;
            s.closes += r.closes;
            s.close_errors += r.close_errors;
            s.max_queue_position = s.max_queue_position.max(r.max_queue_position);
            s.max_open_per_agent = s.max_open_per_agent.max(r.max_open_per_agent);
            s.over_cap += r.over_cap;
            s.delivered_at_assignment += r.at_assignment;
            s.history += r.history;
        }
        s.queue_wait_ms = LatencySummary::from_histogram(&wait);
        s.close_ms = LatencySummary::from_histogram(&close);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_add_up_and_maxima_stay_maxima() {
        let a = LiveService::default();
        a.record_queue_wait(10_000);
        a.max_open_per_agent.fetch_max(3, Ordering::Relaxed);
        a.closes.fetch_add(2, Ordering::Relaxed);
        a.record_close_latency(2_000);
        a.queue_frames.fetch_add(5, Ordering::Relaxed);
        let b = LiveService::default();
        b.record_queue_wait(30_000);
        b.max_open_per_agent.fetch_max(2, Ordering::Relaxed);
        b.max_queue_position.fetch_max(7, Ordering::Relaxed);
        let (ra, rb) = (a.take_report(), b.take_report());
        let s = ServiceSection::combine(3, 2, &[&ra, &rb]);
        assert_eq!(s.queue_wait_ms.count, 2);
        assert!((s.queue_wait_ms.max - 30.0).abs() < 0.1, "{s:?}");
        assert_eq!((s.max_open_per_agent, s.max_queue_position), (3, 7));
        assert_eq!((s.closes, s.over_cap, s.max_open), (2, 0, 3));
        assert_eq!((s.close_ms.count, s.queue_frames), (1, 5));
        // the histogram was taken
        assert!(a.take_report().queue_wait.is_empty());
    }
}

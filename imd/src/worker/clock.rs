//! The shared clock of all sessions: one task ticks, and on each tick wakes only the
//! sessions that asked to be woken by then.
//!
//! Heartbeats, idle timeouts and retransmits are checked when a session's own next
//! deadline comes, so no session owns a timer, and an idle connection costs no CPU
//! between its deadlines: it asks once per ping interval (20 s by default), not on
//! every tick. (Before, every tick woke every session: 15,000 idle connections were
//! polled all at once each second, a burst of tens of milliseconds that the chat's
//! 99th percentile landed in; `docs/benchmarks.md`.)
//!
//! The wakes wait in a wheel of [`SLOTS`] slots, one per tick, each a short
//! `std::sync::Mutex` over a `Vec` (held to push one entry or to swap the slot's list,
//! never across an `.await`). A wake further away than one turn of the wheel stays in
//! its slot and is looked at once per turn. A session is woken through its outbox, as
//! for any other work: the wheel holds a `Weak` of the connection, and drops the wakes
//! of closed connections at the latest one turn after they closed, so what it keeps
//! is bounded by the connection churn of one turn.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Conn;

/// Slots of the wheel: with the default 100 ms tick, one turn is 25.6 s, longer than
/// the default ping interval, so an idle session's wake is looked at once.
const SLOTS: u64 = 256;

/// One session's wish to be woken at a tick.
struct Wake {
    tick: u64,
    conn: Weak<Conn>,
}

struct Wheel {
    start: Instant,
    period: Duration,
    /// The last tick whose wakes were sent. Stored while holding that tick's slot, so
    /// a wake put in a slot under its lock either comes before the slot is emptied or
    /// sees that its tick has passed.
    ticked: AtomicU64,
    slots: Box<[Mutex<Vec<Wake>>]>,
}

impl Wheel {
    fn slot(&self, tick: u64) -> std::sync::MutexGuard<'_, Vec<Wake>> {
        // A panic while holding a slot cannot leave its Vec half-written.
        self.slots[(tick % SLOTS) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The first tick at or after `at`.
    fn tick_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        let period = self.period.as_nanos();
        since.as_nanos().div_ceil(period) as u64
    }

    /// Sends the wakes of every tick up to the one `now` is in.
    fn advance(&self, now: Instant) {
        let now_tick =
            now.saturating_duration_since(self.start).as_nanos() / self.period.as_nanos();
        let now_tick = now_tick as u64;
        let last = self.ticked.load(Ordering::Acquire);
        // After a stall, one turn of the wheel covers every slot.
        let first = (last + 1).max(now_tick.saturating_sub(SLOTS - 1));
        for tick in first..=now_tick {
            let due = {
                let mut slot = self.slot(tick);
                self.ticked.store(tick, Ordering::Release);
                let (due, mut later): (Vec<Wake>, Vec<Wake>) = std::mem::take(&mut *slot)
                    .into_iter()
                    .partition(|w| w.tick <= now_tick);
                // A wake kept for a later turn must not keep a closed connection's
                // memory (a `Weak` holds its allocation) for longer than a turn.
                later.retain(|w| w.conn.strong_count() > 0);
                *slot = later;
                due
            };
            for wake in due {
                if let Some(conn) = wake.conn.upgrade() {
                    conn.outbox.wake();
                }
            }
        }
    }
}

/// Handle to the ticking clock.
#[derive(Clone)]
pub struct Clock {
    wheel: Arc<Wheel>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("period", &self.wheel.period)
            .finish_non_exhaustive()
    }
}

impl Clock {
    /// Starts a clock that ticks every `period` until `stop`.
    pub fn start(period: Duration, stop: CancellationToken) -> Self {
        let wheel = Arc::new(Wheel {
            start: Instant::now(),
            period,
            ticked: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| Mutex::new(Vec::new())).collect(),
        });
        let ticking = wheel.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = every.tick() => ticking.advance(Instant::now()),
                    _ = stop.cancelled() => break,
                }
            }
        });
        Self { wheel }
    }

    /// The tick period.
    pub fn period(&self) -> Duration {
        self.wheel.period
    }

    /// Wakes `conn`'s session (through its outbox) on the first tick at or after `at`,
    /// or on the next tick when that one has passed. Asking again for another time adds
    /// a wake; the session ignores the ones that find nothing due.
    pub fn wake_at(&self, conn: &Arc<Conn>, at: Instant) {
        let wheel = &self.wheel;
        let mut tick = wheel.tick_at(at);
        loop {
            tick = tick.max(wheel.ticked.load(Ordering::Acquire) + 1);
            let mut slot = wheel.slot(tick);
            // Checked under the slot's lock: see `Wheel::ticked`.
            if wheel.ticked.load(Ordering::Acquire) < tick {
                slot.push(Wake {
                    tick,
                    conn: Arc::downgrade(conn),
                });
                return;
            }
        }
    }

    /// The period that keeps heartbeats and retransmits within a quarter of their
    /// intervals, between 20 ms and 100 ms. A tick wakes only the sessions due then, so
    /// a short one costs nothing more, and spreads the sessions of one ping interval
    /// over more ticks: fewer wake at once.
    pub fn period_for(ack_timeout: Duration, ping_interval: Duration) -> Duration {
        (ack_timeout.min(ping_interval) / 4)
            .clamp(Duration::from_millis(20), Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::business::Identity;

    fn conn(hub: &super::super::Hub, uid: &str) -> Arc<Conn> {
        let who = Identity {
            uid: uid.into(),
            device: "d".into(),
            platform: shared::token::Platform::Web,
            roles: vec![],
            ip: None,
        };
        hub.register(who, "127.0.0.1:1".parse().unwrap(), 0)
    }

    fn wheel(period: Duration) -> Wheel {
        Wheel {
            start: Instant::now(),
            period,
            ticked: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Whether the session of `c` was woken since the last look.
    async fn woken(c: &Conn) -> bool {
        tokio::time::timeout(Duration::from_millis(1), c.outbox.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_tick_wakes_only_the_sessions_that_are_due() {
        let hub = super::super::Hub::new(
            16,
            "n1".into(),
            Arc::new(crate::business::blacklist::Blacklist::new()),
        );
        let (soon, later, far) = (conn(&hub, "a"), conn(&hub, "b"), conn(&hub, "c"));
        let p = Duration::from_secs(1);
        let w = Arc::new(wheel(p));
        let clock = Clock { wheel: w.clone() };
        let t0 = w.start;
        clock.wake_at(&soon, t0 + p);
        clock.wake_at(&later, t0 + 3 * p);
        // Beyond one turn of the wheel: it shares slot 2 and must not fire with it.
        clock.wake_at(&far, t0 + p * (SLOTS as u32 + 2));
        w.advance(t0 + p);
        assert!(woken(&soon).await);
        assert!(!woken(&later).await && !woken(&far).await);
        w.advance(t0 + 2 * p);
        assert!(!woken(&later).await && !woken(&far).await, "nobody is due");
        w.advance(t0 + 3 * p);
        assert!(woken(&later).await);
        assert!(!woken(&far).await, "a turn early");
        w.advance(t0 + p * (SLOTS as u32 + 2));
        assert!(
            woken(&far).await,
            "after the stall, one turn covers every slot"
        );
    }

    #[tokio::test]
    async fn a_wake_for_a_tick_that_passed_comes_on_the_next_one() {
        let hub = super::super::Hub::new(
            16,
            "n1".into(),
            Arc::new(crate::business::blacklist::Blacklist::new()),
        );
        let late = conn(&hub, "a");
        let p = Duration::from_secs(1);
        let w = Arc::new(wheel(p));
        let clock = Clock { wheel: w.clone() };
        let t0 = w.start;
        w.advance(t0 + 5 * p);
        clock.wake_at(&late, t0 + p);
        assert!(!woken(&late).await);
        w.advance(t0 + 6 * p);
        assert!(woken(&late).await);
    }

    #[tokio::test]
    async fn a_closed_connection_s_far_wake_is_dropped_within_a_turn() {
        let hub = super::super::Hub::new(
            16,
            "n1".into(),
            Arc::new(crate::business::blacklist::Blacklist::new()),
        );
        let gone = conn(&hub, "a");
        let p = Duration::from_secs(1);
        let w = Arc::new(wheel(p));
        let clock = Clock { wheel: w.clone() };
        clock.wake_at(&gone, w.start + p * (SLOTS as u32 + 2));
        hub.unregister(&gone);
        drop(gone);
        assert_eq!(w.slot(2).len(), 1);
        w.advance(w.start + 2 * p);
        assert!(
            w.slot(2).is_empty(),
            "nothing kept for a connection that closed"
        );
    }
}

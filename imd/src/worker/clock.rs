//! The shared clock of all sessions: one task ticks, every session reads the tick.
//!
//! Heartbeats, idle timeouts and retransmits are checked on these ticks, so no session
//! owns a timer: a connection costs no timer-wheel entry, and a tick is one atomic
//! version bump that wakes the sessions waiting on it.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Handle to the ticking clock.
#[derive(Debug, Clone)]
pub struct Clock {
    rx: watch::Receiver<Instant>,
    period: Duration,
}

impl Clock {
    /// Starts a clock that ticks every `period` until `stop`.
    pub fn start(period: Duration, stop: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(Instant::now());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        if tx.send(Instant::now()).is_err() {
                            break;
                        }
                    }
                    _ = stop.cancelled() => break,
                }
            }
        });
        Self { rx, period }
    }

    /// The tick period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// A receiver for one session.
    pub fn subscribe(&self) -> watch::Receiver<Instant> {
        self.rx.clone()
    }

    /// The period that keeps heartbeats and retransmits within a quarter of their
    /// intervals, between 20 ms and 1 s.
    pub fn period_for(ack_timeout: Duration, ping_interval: Duration) -> Duration {
        (ack_timeout.min(ping_interval) / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}

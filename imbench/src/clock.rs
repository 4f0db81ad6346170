//! Time in a run: the plan's clock, which maps the coordinator's start time (Unix
//! milliseconds) onto this process's `Instant`s, and the timeline of phases (ramp,
//! traffic, drain) measured from it.
//!
//! The coordinator starts its progress view on one, each agent runs its connections on
//! another; both start at the same Unix time, so the agents ramp as one. It must not
//! sleep or spawn: callers wait on the instants it computes.

use std::time::{Duration, Instant};

use crate::plan::AgentPlan;

/// The plan's clock: when the run starts, and the mapping from `Instant` to the unix
/// microseconds carried in message bodies (one mapping per agent, so latency inside
/// an agent is monotonic even if the wall clock steps).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The start of the plan.
    pub t0: Instant,
    unix_us_at_t0: i128,
}

impl Clock {
    /// A clock whose start is the unix time `at_unix_ms`.
    pub fn starting_at(at_unix_ms: u64) -> Self {
        let now = Instant::now();
        let now_ms = shared::time::now_ms_u64();
        let t0 = if at_unix_ms >= now_ms {
            now + Duration::from_millis(at_unix_ms - now_ms)
        } else {
            now.checked_sub(Duration::from_millis(now_ms - at_unix_ms))
                .unwrap_or(now)
        };
        Clock {
            t0,
            unix_us_at_t0: i128::from(at_unix_ms) * 1000,
        }
    }

    /// `at` as unix microseconds.
    pub fn unix_us(&self, at: Instant) -> u64 {
        let offset = if at >= self.t0 {
            (at - self.t0).as_micros() as i128
        } else {
            -((self.t0 - at).as_micros() as i128)
        };
        (self.unix_us_at_t0 + offset).max(0) as u64
    }

    /// Now as unix microseconds.
    pub fn now_us(&self) -> u64 {
        self.unix_us(Instant::now())
    }

    /// Milliseconds since the start (0 before it).
    pub fn elapsed_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.t0)
            .as_millis() as u64
    }
}

/// When things happen, from the plan.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Start.
    pub t0: Instant,
    /// Connections per second, over all agents.
    pub ramp_per_s: f64,
    /// First message.
    pub traffic_start: Instant,
    /// No message is sent from here on.
    pub traffic_end: Instant,
    /// Connections close here.
    pub close_at: Instant,
}

impl Timeline {
    /// The timeline of `plan` starting at `t0`.
    pub fn new(plan: &AgentPlan, t0: Instant) -> Self {
        let ms = Duration::from_millis;
        let traffic_start = t0 + ms(plan.ramp_ms + plan.settle_ms);
        let traffic_end = traffic_start + ms(plan.duration_ms);
        Timeline {
            t0,
            ramp_per_s: plan.ramp_per_s,
            traffic_start,
            traffic_end,
            close_at: traffic_end + ms(plan.drain_ms),
        }
    }

    /// When global connection `i` opens.
    pub fn open_at(&self, i: u64) -> Instant {
        self.t0 + Duration::from_secs_f64(i as f64 / self.ramp_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_instants_to_unix_time() {
        let at = shared::time::now_ms_u64() + 2_000;
        let c = Clock::starting_at(at);
        assert_eq!(c.unix_us(c.t0), at * 1000);
        assert_eq!(
            c.unix_us(c.t0 + Duration::from_micros(1_500)),
            at * 1000 + 1_500
        );
        assert_eq!(c.elapsed_ms(), 0);
        let now = c.now_us();
        assert!(
            now + 2_100_000 > at * 1000 && now < at * 1000,
            "{now} vs {at}"
        );
    }
}

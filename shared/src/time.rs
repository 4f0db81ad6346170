//! Wall-clock time as the workspace writes it down: milliseconds since the Unix epoch.
//!
//! Every timestamp on the wire and in the store (`ts`, `started_at`, blacklist expiries,
//! imbench's start time) is Unix milliseconds, so there is one reading of the clock
//! here instead of a copy per crate. It must not be used to measure durations inside a
//! process: the wall clock can step, so intervals use `Instant`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; zero on a clock set before 1970, which no caller could
/// do anything better with.
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix milliseconds now, as the protocol's `i64` timestamps carry them.
pub fn now_ms() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds now, unsigned (imbench's schedule arithmetic).
pub fn now_ms_u64() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flavours_read_the_same_clock() {
        let before = now_ms();
        let unsigned = now_ms_u64();
        let after = now_ms();
        // After 2020-01-01 and in order: a clock reading, not a constant.
        assert!(before > 1_577_836_800_000, "{before}");
        assert!(before as u64 <= unsigned && unsigned <= after as u64);
        assert!(since_epoch().as_millis() as i64 >= after);
    }
}

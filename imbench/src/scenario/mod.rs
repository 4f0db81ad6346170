//! What one connection does during a run, per scenario, and the pieces they share:
//! opening a counted connection, reconnecting after a drop (full jitter, so that
//! connections dropped together do not come back together), ending an opening on
//! purpose (`--lifetime` churn), closing it politely, reading server frames.
//!
//! A scenario task owns its WebSocket and all of its bookkeeping (one task per
//! connection, no locks on the hot path); it touches the agent only through the
//! atomic counters in [`crate::conn::Stats`]. It must return by itself once the
//! agent's stop token is cancelled.

pub mod idle;
pub mod service;
pub mod traffic;

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::cli::Scenario;
use crate::conn::{Ctx, bump};
use crate::dial::{self, Ws};
use crate::plan::Role;

/// What a connection task hands back at the end.
#[derive(Debug)]
pub enum Outcome {
    /// Its first handshake failed (or the run stopped first).
    NeverOpened,
    /// An idle connection.
    Idle,
    /// A messaging connection (chat, group, service) and what it sent and saw.
    Traffic(Box<traffic::TrafficLog>),
}

/// Runs global connection `i` of the agent's plan until the stop.
pub async fn run_connection(ctx: Arc<Ctx>, i: u64) -> Outcome {
    match ctx.plan.scenario {
        Scenario::Idle => idle::run(ctx, i).await,
        Scenario::Chat | Scenario::Group | Scenario::Service => traffic::run(ctx, i).await,
    }
}

/// Dials connection `i` as `uid` (a shop agent's token carries role `agent`) on its
/// target for try `attempt` (see [`Ctx::endpoint_for`]), counting a failure by kind.
/// `None` when it failed or the run stopped first.
pub(crate) async fn connect(ctx: &Ctx, i: u64, attempt: u64, uid: &str, role: Role) -> Option<Ws> {
    let roles: &[&str] = if matches!(role, Role::ShopAgent { .. }) {
        &["agent"]
    } else {
        &[]
    };
    let attempt = dial::dial(
        ctx.endpoint_for(i, attempt),
        ctx.source(i),
        &ctx.minter,
        uid,
        roles,
        ctx.ws_config,
        Duration::from_millis(ctx.plan.connect_timeout_ms),
    );
    tokio::select! {
        result = attempt => match result {
            Ok(ws) => Some(ws),
            Err((kind, sample)) => {
                ctx.stats.error(&kind.to_string(), &sample);
                None
            }
        },
        _ = ctx.stop.cancelled() => None,
    }
}

/// Opens connection `i` for the first time, counting it as opened or failed.
pub(crate) async fn open_first(ctx: &Ctx, i: u64, uid: &str, role: Role) -> Option<Ws> {
    match connect(ctx, i, 0, uid, role).await {
        Some(ws) => {
            ctx.stats.opened_at(ctx.clock.elapsed_ms());
            Some(ws)
        }
        None => {
            bump(&ctx.stats.counts.failed);
            None
        }
    }
}

/// First backoff window of a reconnection: the first try waits a random time in
/// [0, this); each failure doubles the window, up to `--reconnect-max`.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);

/// Reconnects connection `i` after a drop, retrying until it works or the run stops.
/// Each try, the first included, waits a random time in the current window (full
/// jitter: 100 ms doubling to `--reconnect-max`, 2 s by default, see
/// [`backoff_window`]), so that thousands of
/// connections dropped at the same instant come back spread over the window instead
/// of all at once, and their retries do not fall into step. With `--spread` (the
/// targets are workers of one cluster) each try goes to the next target, starting
/// with the one after its own: the worker that dropped it may be gone.
pub(crate) async fn reconnect(ctx: &Ctx, i: u64, uid: &str, role: Role) -> Option<Ws> {
    let max = Duration::from_millis(ctx.plan.reconnect_max_ms);
    let mut attempt = 0;
    loop {
        let wait = jittered(backoff_window(attempt, max), unit_random(i, attempt));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.stop.cancelled() => return None,
        }
        attempt += 1;
        if let Some(ws) = connect(ctx, i, attempt, uid, role).await {
            bump(&ctx.stats.counts.reconnects);
            bump(&ctx.stats.counts.open);
            return Some(ws);
        }
    }
}

/// The backoff window before reconnection try `attempt + 1` (`attempt` tries have
/// failed): [`RECONNECT_FIRST`] doubled per failure, at most `max` (and never under
/// the first).
pub(crate) fn backoff_window(attempt: u64, max: Duration) -> Duration {
    let doublings = attempt.min(16) as u32;
    RECONNECT_FIRST
        .saturating_mul(1 << doublings)
        .min(max.max(RECONNECT_FIRST))
}

/// Full jitter: the fraction `unit` (in [0, 1)) of `window`.
pub(crate) fn jittered(window: Duration, unit: f64) -> Duration {
    window.mul_f64(unit.clamp(0.0, 1.0))
}

/// A number in [0, 1) that differs per connection, per try and per call (splitmix64
/// of the three; imbench needs spread, not cryptographic randomness).
fn unit_random(i: u64, attempt: u64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut z = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(attempt.rotate_left(32))
        .wrapping_add(nanos);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// With `--lifetime` (connection churn), how long connection `i`'s first opening
/// lasts: a share (1/1000 to 1000/1000) of the lifetime that differs between
/// neighbouring connections, so that the closes of all connections are spread evenly
/// over every lifetime instead of coming at once. Later openings last the whole
/// lifetime. None: no churn.
pub(crate) fn first_lifetime(lifetime_ms: u64, i: u64) -> Option<Duration> {
    (lifetime_ms > 0).then(|| {
        Duration::from_millis(lifetime_ms).mul_f64((1 + (i * 7919) % 1000) as f64 / 1000.0)
    })
}

/// When the opening that began now ends by itself (`--lifetime`): `this_time` (the
/// first opening's share, later ones the whole lifetime) after now, or after the start
/// of the load for an opening of the ramp, if that falls at least [`CHURN_MARGIN`]
/// before the end of the load; the connections do not churn in the ramp or the drain.
/// None: it stays open.
pub(crate) fn churn_at(ctx: &Ctx, this_time: Option<Duration>) -> Option<tokio::time::Instant> {
    let from = std::time::Instant::now().max(ctx.timeline.traffic_start);
    let at = from + this_time?;
    (at + CHURN_MARGIN < ctx.timeline.traffic_end).then(|| at.into())
}

/// No churn this close to the end of the load, so that every churned connection is
/// open again when the run stops (an idle run has no drain).
const CHURN_MARGIN: Duration = Duration::from_secs(1);

/// Sleeps until `at`, or forever when it is None (a `select!` branch that never fires).
pub(crate) async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A connection that ends its own opening (`--lifetime`) and opens again: a clean
/// close, counted as a churn, then [`reconnect`].
pub(crate) async fn churn(ctx: &Ctx, ws: Ws, i: u64, uid: &str, role: Role) -> Option<Ws> {
    bump(&ctx.stats.counts.churned);
    close(ctx, ws).await;
    reconnect(ctx, i, uid, role).await
}

/// Counts a connection the server or the network closed.
pub(crate) fn dropped(ctx: &Ctx, why: &str) {
    bump(&ctx.stats.counts.dropped);
    ctx.stats
        .counts
        .open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    ctx.stats.error("closed", why);
}

/// Closes a connection at the end of the run without waiting long for the server.
pub(crate) async fn close(ctx: &Ctx, mut ws: Ws) {
    ctx.stats
        .counts
        .open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// Writes one text frame (flushed: the write buffer is off).
pub(crate) async fn send_text(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(WsMessage::text(text))
        .await
        .map_err(|e| format!("write: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_window_doubles_from_100_ms_to_the_max() {
        let two_s = Duration::from_secs(2);
        let windows: Vec<u64> = (0..8)
            .map(|a| backoff_window(a, two_s).as_millis() as u64)
            .collect();
        assert_eq!(windows, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(backoff_window(u64::MAX, two_s), two_s);
        let thirty_s = Duration::from_secs(30);
        assert_eq!(backoff_window(8, thirty_s), Duration::from_millis(25_600));
        assert_eq!(backoff_window(9, thirty_s), thirty_s);
        // a max under the first window is the first window
        assert_eq!(backoff_window(3, Duration::ZERO), RECONNECT_FIRST);
    }

    #[test]
    fn full_jitter_waits_a_share_of_the_window() {
        let w = Duration::from_millis(800);
        assert_eq!(jittered(w, 0.0), Duration::ZERO);
        assert_eq!(jittered(w, 0.5), Duration::from_millis(400));
        assert!(jittered(w, 0.999_999) < w);
        // out of range is clamped, never longer than the window
        assert_eq!(jittered(w, 7.0), w);
        assert_eq!(jittered(w, -1.0), Duration::ZERO);
    }

    #[test]
    fn the_waits_of_connections_dropped_together_are_spread_over_the_window() {
        // 20,000 connections dropped at once: their first waits must fill [0, 100 ms)
        // roughly evenly, not bunch up (ten buckets of 10 ms, each near 2,000).
        let mut buckets = [0u32; 10];
        for i in 0..20_000 {
            let u = unit_random(i, 0);
            assert!((0.0..1.0).contains(&u), "{u}");
            let wait = jittered(backoff_window(0, Duration::from_secs(2)), u);
            buckets[(wait.as_millis() / 10) as usize] += 1;
        }
        for b in buckets {
            assert!((1_600..2_400).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn first_lifetimes_spread_the_closes_over_one_lifetime() {
        assert_eq!(first_lifetime(0, 5), None);
        let mut shares: Vec<u64> = (0..1000)
            .map(|i| first_lifetime(60_000, i).unwrap().as_millis() as u64)
            .collect();
        shares.sort_unstable();
        shares.dedup();
        // every 60 ms step of the minute is someone's first close, none at 0
        assert_eq!(shares.len(), 1000);
        assert_eq!((shares[0], shares[999]), (60, 60_000));
    }
}

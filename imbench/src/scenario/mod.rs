//! What one connection does during a run, per scenario, and the pieces they share:
//! opening a counted connection, closing it politely, reading server frames.
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

/// First wait between reconnection attempts; it doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts: a restarted server is found again
/// within about this long.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Reconnects connection `i` after a drop, retrying with bounded backoff (100 ms
/// doubling to 2 s) until it works or the run stops. With `--spread` (the targets are
/// workers of one cluster) each try goes to the next target, starting with the one
/// after its own: the worker that dropped it may be gone.
pub(crate) async fn reconnect(ctx: &Ctx, i: u64, uid: &str, role: Role) -> Option<Ws> {
    let mut backoff = RECONNECT_FIRST;
    let mut attempt = 0;
    loop {
        if ctx.stop.is_cancelled() {
            return None;
        }
        attempt += 1;
        if let Some(ws) = connect(ctx, i, attempt, uid, role).await {
            bump(&ctx.stats.counts.reconnects);
            bump(&ctx.stats.counts.open);
            return Some(ws);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = ctx.stop.cancelled() => return None,
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
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

//! `idle`: a connection that only stays open. It answers the server's WebSocket pings
//! (tungstenite queues the pong; reading and flushing sends it), optionally sends an
//! application `ping` every `--heartbeat`, and counts kicks and errors. A dropped idle
//! connection is counted and not reopened: the figure of interest is how many stay up.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shared::protocol::{ClientFrame, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Outcome, close, dropped, open_first, send_text};
use crate::conn::{Ctx, bump};
use crate::plan::Role;

/// Runs idle connection `i` until the stop.
pub async fn run(ctx: Arc<Ctx>, i: u64) -> Outcome {
    let uid = ctx.plan.uid(i);
    let Some(mut ws) = open_first(&ctx, i, &uid, Role::Idle).await else {
        return Outcome::NeverOpened;
    };
    let ping = serde_json::to_string(&ClientFrame::Ping).expect("a ping serializes");
    let heartbeat =
        (ctx.plan.heartbeat_ms > 0).then(|| Duration::from_millis(ctx.plan.heartbeat_ms));
    let mut beat = heartbeat.map(|period| {
        // Spread the heartbeats of all connections over one period.
        let phase =
            Duration::from_secs_f64(period.as_secs_f64() * ((i * 7919) % 1000) as f64 / 1000.0);
        tokio::time::interval_at(tokio::time::Instant::now() + phase, period)
    });
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => {
                close(&ctx, ws).await;
                return Outcome::Idle;
            }
            frame = ws.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(ServerFrame::Kick { reason }) => {
                        bump(&ctx.stats.counts.kicks);
                        ctx.stats.error("kick", &reason);
                    }
                    Ok(ServerFrame::Error { code, message, .. }) => {
                        bump(&ctx.stats.counts.server_errors);
                        ctx.stats.error(&format!("server {}", code.as_str()), &message);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        bump(&ctx.stats.counts.server_errors);
                        ctx.stats.error("bad frame", &e.to_string());
                    }
                },
                Some(Ok(WsMessage::Ping(_))) => {
                    if let Err(e) = ws.flush().await {
                        dropped(&ctx, &format!("flushing a pong: {e}"));
                        return Outcome::Idle;
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    dropped(&ctx, &format!("closed by the server: {frame:?}"));
                    return Outcome::Idle;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    dropped(&ctx, &format!("read: {e}"));
                    return Outcome::Idle;
                }
                None => {
                    dropped(&ctx, "stream ended");
                    return Outcome::Idle;
                }
            },
            _ = async { beat.as_mut().expect("guarded").tick().await }, if beat.is_some() => {
                if let Err(e) = send_text(&mut ws, ping.clone()).await {
                    dropped(&ctx, &e);
                    return Outcome::Idle;
                }
            }
        }
    }
}

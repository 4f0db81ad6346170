//! `idle`: a connection that only stays open. It answers the server's WebSocket pings
//! (tungstenite queues the pong; reading and flushing sends it), optionally sends an
//! application `ping` every `--heartbeat`, and counts kicks and errors. A dropped idle
//! connection is counted and reconnects like a messaging one (jittered backoff), so a
//! mass drop is followed by a reconnection storm of every connection, not only the
//! talking ones; with `--lifetime` it also closes itself and reopens (churn).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shared::protocol::{ClientFrame, ServerFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{
    Outcome, churn, churn_at, close, dropped, first_lifetime, open_first, reconnect, send_text,
    sleep_until_some,
};
use crate::conn::{Ctx, bump};
use crate::dial::Ws;
use crate::plan::Role;

/// How one opening of an idle connection ended.
enum End {
    Stop,
    Dropped(String),
    Churn,
}

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
    let lifetime = Duration::from_millis(ctx.plan.lifetime_ms);
    let mut this_time = first_lifetime(ctx.plan.lifetime_ms, i);
    loop {
        let next = match serve(
            &ctx,
            &mut ws,
            &ping,
            beat.as_mut(),
            churn_at(&ctx, this_time),
        )
        .await
        {
            End::Stop => {
                close(&ctx, ws).await;
                return Outcome::Idle;
            }
            End::Dropped(why) => {
                dropped(&ctx, &why);
                reconnect(&ctx, i, &uid, Role::Idle).await
            }
            End::Churn => churn(&ctx, ws, i, &uid, Role::Idle).await,
        };
        match next {
            Some(new) => ws = new,
            None => return Outcome::Idle,
        }
        this_time = this_time.map(|_| lifetime);
    }
}

/// Serves one opening until the stop, a drop or its churn time.
async fn serve(
    ctx: &Ctx,
    ws: &mut Ws,
    ping: &str,
    mut beat: Option<&mut tokio::time::Interval>,
    churn_at: Option<tokio::time::Instant>,
) -> End {
    let churn = sleep_until_some(churn_at);
    tokio::pin!(churn);
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return End::Stop,
            _ = &mut churn => return End::Churn,
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
                        return End::Dropped(format!("flushing a pong: {e}"));
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return End::Dropped(format!("closed by the server: {frame:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return End::Dropped(format!("read: {e}")),
                None => return End::Dropped("stream ended".into()),
            },
            _ = async { beat.as_mut().expect("guarded").tick().await }, if beat.is_some() => {
                if let Err(e) = send_text(ws, ping.to_owned()).await {
                    return End::Dropped(e);
                }
            }
        }
    }
}

//! The coordinator ↔ agent link: JSON lines over any byte stream, both ends.
//!
//! The coordinator writes the [`AgentPlan`] as the first line, then [`Control`]
//! lines; the agent answers with [`AgentEvent`] lines (`ready`, a `tick` a second, one
//! `final` or `failed`). The same framing runs over a child's stdin/stdout
//! (`--local-agents`) and over TCP (`imbench agent --listen`, `--agents host:port`),
//! so that one tested code path serves both. Lines are bounded ([`MAX_LINE`]), every
//! wait has a deadline, and a link that closes means "stop" to the agent and "agent
//! gone" to the coordinator. This module moves lines; it never decides what a run
//! does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

use crate::agent::{self, AgentEvent, Control};
use crate::plan::AgentPlan;

/// Longest line either side accepts (a plan with 65,536 source addresses is about
/// 1 MiB; a final report with a full histogram a few hundred KiB).
pub const MAX_LINE: usize = 16 << 20;
/// How long a remote agent waits for the plan after a coordinator connects.
pub const PLAN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the coordinator waits for the TCP connection to a remote agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive on agent links: a peer that vanishes without a FIN is noticed
/// within about idle + 3 × interval.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("link messages serialize")
}

/// Agent side: reads the plan and control lines from `reader`, runs the agent, writes
/// its events to `writer`. Returns when the agent has sent its last event.
pub async fn serve_agent<R, W>(reader: R, writer: W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE));
    let mut out = FramedWrite::new(writer, LinesCodec::new_with_max_length(MAX_LINE));
    let first = match tokio::time::timeout(PLAN_TIMEOUT, lines.next()).await {
        Ok(Some(Ok(line))) => line,
        Ok(Some(Err(e))) => return Err(e).context("reading the plan"),
        Ok(None) => anyhow::bail!("the link closed before the plan"),
        Err(_) => anyhow::bail!("no plan within {PLAN_TIMEOUT:?}"),
    };
    let plan = match decode_plan(&first) {
        Ok(plan) => plan,
        Err(error) => {
            // Say why on the link, so the coordinator reports it.
            let message = format!("{error:#}");
            let _ = out
                .send(encode(&AgentEvent::Failed { agent: 0, message }))
                .await;
            return Err(error);
        }
    };

    let (control_tx, control_rx) = mpsc::channel(4);
    let reader = tokio::spawn(async move {
        while let Some(line) = lines.next().await {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Control>(&line) {
                Ok(c) => {
                    if control_tx.send(c).await.is_err() {
                        break;
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring a bad control line"),
            }
        }
        // EOF: dropping the sender tells the agent to stop.
    });
    let (events_tx, mut events_rx) = mpsc::channel::<AgentEvent>(64);
    let writer = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            out.send(encode(&event)).await?;
        }
        anyhow::Ok(())
    });
    let result = agent::serve(plan, control_rx, events_tx).await;
    let written = writer.await.context("event writer panicked")?;
    reader.abort();
    result.and(written)
}

fn decode_plan(line: &str) -> anyhow::Result<AgentPlan> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: Option<String>,
    }
    let mine = env!("CARGO_PKG_VERSION");
    if let Ok(v) = serde_json::from_str::<Version>(line)
        && v.version.as_deref() != Some(mine)
    {
        anyhow::bail!(
            "version mismatch: the coordinator runs imbench {}, this agent {mine}",
            v.version.as_deref().unwrap_or("(unknown)")
        );
    }
    serde_json::from_str(line).context("decoding the plan")
}

/// `imbench agent --listen ADDR`: serves coordinators over TCP, one run at a time (a
/// second coordinator is told the agent is busy). Prints one JSON line
/// `{"event":"listening","listen":"IP:PORT"}` on stdout once bound. With `once`, it
/// returns after the first run.
pub async fn listen(addr: &str, once: bool) -> anyhow::Result<()> {
    crate::limits::raise_nofile()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "listen": local.to_string()})
    );
    let busy = Arc::new(AtomicBool::new(false));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tune(&socket);
        if busy.swap(true, Ordering::AcqRel) {
            tokio::spawn(refuse_busy(socket, peer));
            continue;
        }
        tracing::info!(%peer, "coordinator connected");
        let busy = busy.clone();
        let run = tokio::spawn(async move {
            let (r, w) = socket.into_split();
            if let Err(error) = serve_agent(r, w).await {
                tracing::warn!(%peer, error = %format!("{error:#}"), "run ended with an error");
            }
            busy.store(false, Ordering::Release);
        });
        if once {
            let _ = run.await;
            return Ok(());
        }
    }
}

async fn refuse_busy(socket: TcpStream, peer: SocketAddr) {
    tracing::warn!(%peer, "refusing a second coordinator");
    let mut out = FramedWrite::new(socket, LinesCodec::new());
    let message = "busy: this agent is serving another run".to_string();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        out.send(encode(&AgentEvent::Failed { agent: 0, message })),
    )
    .await;
}

fn tune(socket: &TcpStream) {
    let _ = socket.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(3);
    let _ = socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive);
}

/// Coordinator side: sends `plan` and then whatever arrives on the returned control
/// channel down `writer`; forwards each event line read from `reader` to `events`,
/// tagged with the plan's agent index, then `None` once the link closes. Dropping the control sender closes the write
/// half, which an agent takes as "stop".
pub fn attach<R, W>(
    plan: &AgentPlan,
    reader: R,
    writer: W,
    events: mpsc::Sender<(usize, Option<AgentEvent>)>,
) -> mpsc::Sender<Control>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let first = encode(plan);
    let agent = plan.agent;
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(4);
    tokio::spawn(async move {
        let mut out = FramedWrite::new(writer, LinesCodec::new_with_max_length(MAX_LINE));
        if out.send(first).await.is_err() {
            return;
        }
        while let Some(c) = control_rx.recv().await {
            if out.send(encode(&c)).await.is_err() {
                return;
            }
        }
        // Shut the write half down: the agent sees EOF and stops.
        let _ = SinkExt::<String>::close(&mut out).await;
    });
    tokio::spawn(async move {
        let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE));
        while let Some(line) = lines.next().await {
            let Ok(line) = line else { break };
            match decode_line::<AgentEvent>(&line) {
                Ok(event) => {
                    if events.send((agent, Some(event))).await.is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring a bad agent line"),
            }
        }
        let _ = events.send((agent, None)).await;
    });
    control_tx
}

fn decode_line<T: DeserializeOwned>(line: &str) -> serde_json::Result<T> {
    serde_json::from_str(line)
}

/// Connects to a remote agent at `addr` (`host:port`), with a deadline.
pub async fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    let socket = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("no TCP connection within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to agent {addr}"))?;
    tune(&socket);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_version_mismatch_is_reported_on_the_link() {
        let (coord, agent_end) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(agent_end);
        let served = tokio::spawn(serve_agent(ar, aw));
        let (cr, mut cw) = tokio::io::split(coord);
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        cw.write_all(b"{\"version\":\"0.0.0-other\"}\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(cr).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        let event: AgentEvent = serde_json::from_str(&line).unwrap();
        let AgentEvent::Failed { message, .. } = event else {
            panic!("{line}")
        };
        assert!(message.contains("version mismatch"), "{message}");
        assert!(served.await.unwrap().is_err());
    }
}

//! The coordinator ↔ agent link: JSON lines over any byte stream, both ends.
//!
//! The coordinator writes the [`PlanLine`] as the first line, then [`Control`] lines;
//! the agent answers with [`AgentEvent`] lines (`ready`, a `tick` a second, one `final`
//! or `failed`). The same framing runs over a child's stdin/stdout (`--local-agents`)
//! and over TCP (`imbench agent --listen`, `--agents host:port`), so that one tested
//! code path serves both. Lines are bounded ([`MAX_LINE`]), every wait has a deadline,
//! and a link that closes means "stop" to the agent and "agent gone" to the
//! coordinator. This module moves lines; it never decides what a run does.
//!
//! Over TCP, the two ends first run the [`AGENT_LINK`] handshake of
//! [`shared::link_auth`] (the one imd's RPC links run, with its own magic and key),
//! proving to each other that they hold the deployment's `--token-secret` before a
//! plan is sent or read. The secret itself then stays off the wire: a plan line sent
//! over TCP carries none, and a listening agent refuses one that does and uses its own
//! `--token-secret`. Only a child on its coordinator's pipes gets the secret in its
//! plan line. The link is authenticated, not encrypted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shared::link_auth::{
    HandshakeErrorKind, LinkKey, Protocol, client_handshake, server_handshake,
};
use shared::secret::Secret;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentEvent, Control};
use crate::cli::AgentArgs;
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

/// The handshake of a TCP agent link. Its magic differs from imd's RPC links, so that
/// a coordinator pointed at an imd RPC port (or the reverse) fails with a clear
/// "wrong magic", and its key label differs, so that the two never share a key.
pub const AGENT_LINK: Protocol = Protocol {
    name: "agent link handshake",
    magic: *b"IMBAGT01",
    key_label: b"imbench agent link v1",
    endpoint: "an imbench agent's --listen address",
    secret_hint: "the --token-secret of the agent and of the coordinator differ",
};

/// The first line of a link: the agent's plan and, on a private pipe only, the token
/// secret. Built with [`PlanLine::for_pipe`] or [`PlanLine::for_network`], so that the
/// secret never goes over TCP.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlanLine {
    /// The agent's share of the run.
    #[serde(flatten)]
    pub plan: AgentPlan,
    /// The deployment's token secret: on a child's stdin only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_secret: Option<Secret>,
}

impl PlanLine {
    /// The plan line for a child agent on this machine, whose stdin is a pipe: the
    /// secret goes with the plan.
    pub fn for_pipe(plan: AgentPlan, token_secret: Secret) -> Self {
        PlanLine {
            plan,
            token_secret: Some(token_secret),
        }
    }

    /// The plan line for a remote agent over TCP: no secret (the agent has its own).
    pub fn for_network(plan: AgentPlan) -> Self {
        PlanLine {
            plan,
            token_secret: None,
        }
    }
}

/// Where a served agent takes the deployment's token secret from.
#[derive(Debug, Clone)]
pub enum AgentSecret {
    /// From the plan line: a child agent on its coordinator's pipes.
    InPlan,
    /// Its own `--token-secret`: a listening agent, whose plan line must carry none.
    Own(Secret),
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("link messages serialize")
}

/// `imbench agent`: with `--listen`, serve coordinators over TCP, each authenticated
/// with `--token-secret` before it may send a plan; without, the plan (with the token
/// secret) is the first JSON line on stdin, then [`Control`] lines, and
/// [`AgentEvent`]s go to stdout, one JSON line each (how `--local-agents` starts it).
pub async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    match (args.listen, args.token_secret) {
        (Some(addr), Some(secret)) => listen(&addr, args.once, secret).await,
        (Some(_), None) => anyhow::bail!(
            "--listen needs --token-secret (or IMBENCH_TOKEN_SECRET): coordinators prove \
             that they hold it, and the agent mints its client tokens with it"
        ),
        // A child of the coordinator: the secret comes with the plan, on the pipe.
        (None, _) => {
            serve_agent(tokio::io::stdin(), tokio::io::stdout(), AgentSecret::InPlan).await
        }
    }
}

/// Agent side: reads the plan and control lines from `reader`, runs the agent with the
/// token secret from `secret`, writes its events to `writer`. Returns when the agent
/// has sent its last event.
pub async fn serve_agent<R, W>(reader: R, writer: W, secret: AgentSecret) -> anyhow::Result<()>
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
    let (plan, token_secret) = match decode_plan(&first, secret) {
        Ok(decoded) => decoded,
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
    let result = agent::serve(plan, token_secret, control_rx, events_tx).await;
    let written = writer.await.context("event writer panicked")?;
    reader.abort();
    result.and(written)
}

/// Decodes the plan line, and takes the token secret from it or from `secret`.
fn decode_plan(line: &str, secret: AgentSecret) -> anyhow::Result<(AgentPlan, Secret)> {
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
    let PlanLine { plan, token_secret } =
        serde_json::from_str(line).context("decoding the plan")?;
    let token_secret = match (secret, token_secret) {
        (AgentSecret::InPlan, Some(s)) => s,
        (AgentSecret::InPlan, None) => {
            anyhow::bail!("the plan carries no token secret, which a local agent needs")
        }
        (AgentSecret::Own(s), None) => s,
        (AgentSecret::Own(_), Some(_)) => anyhow::bail!(
            "the plan carries the token secret, which must not cross the network: \
             refusing it (this agent uses its own --token-secret)"
        ),
    };
    Ok((plan, token_secret))
}

/// `imbench agent --listen ADDR`: serves coordinators over TCP, one run at a time (a
/// second coordinator is told the agent is busy). Each connection must pass the
/// [`AGENT_LINK`] handshake with `token_secret` first; one that fails it is logged and
/// closed, and the agent goes on listening. Prints one JSON line
/// `{"event":"listening","listen":"IP:PORT"}` on stdout once bound. With `once`, it
/// returns after the first run.
pub async fn listen(addr: &str, once: bool, token_secret: Secret) -> anyhow::Result<()> {
    crate::limits::raise_nofile()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "listen": local.to_string()})
    );
    let gate = Arc::new(Gate {
        key: LinkKey::derive(&AGENT_LINK, token_secret.expose().as_bytes()),
        token_secret,
        busy: AtomicBool::new(false),
        run_ended: once.then(CancellationToken::new),
    });
    let ended = gate.run_ended.clone().unwrap_or_default();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = ended.cancelled() => return Ok(()),
        };
        tune(&socket);
        // The handshake runs in the connection's task, so that a silent peer holds
        // nothing but its own task, for at most the handshake's timeout.
        tokio::spawn(gate.clone().serve(socket, peer));
    }
}

/// What the connections of a listening agent share.
struct Gate {
    /// The [`AGENT_LINK`] key that coordinators must prove.
    key: LinkKey,
    /// The secret the agent mints client tokens with.
    token_secret: Secret,
    /// Whether a run is in progress.
    busy: AtomicBool,
    /// With `--once`: cancelled when the first run ends.
    run_ended: Option<CancellationToken>,
}

impl Gate {
    /// Serves one accepted connection: the handshake, then a run, unless another run
    /// is in progress.
    async fn serve(self: Arc<Self>, mut socket: TcpStream, peer: SocketAddr) {
        if let Err(error) = server_handshake(&mut socket, &self.key).await {
            // Anyone who can reach the port gets here: say so, and keep listening.
            tracing::warn!(%peer, %error, "refused a connection that failed the handshake");
            return;
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            refuse_busy(socket, peer).await;
            return;
        }
        tracing::info!(%peer, "coordinator connected");
        let (r, w) = socket.into_split();
        let secret = AgentSecret::Own(self.token_secret.clone());
        if let Err(error) = serve_agent(r, w, secret).await {
            tracing::warn!(%peer, error = %format!("{error:#}"), "run ended with an error");
        }
        self.busy.store(false, Ordering::Release);
        if let Some(ended) = &self.run_ended {
            ended.cancel();
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

/// Coordinator side: sends `first` and then whatever arrives on the returned control
/// channel down `writer`; forwards each event line read from `reader` to `events`,
/// tagged with the plan's agent index, then `None` once the link closes. Dropping the
/// control sender closes the write half, which an agent takes as "stop".
pub fn attach<R, W>(
    first: &PlanLine,
    reader: R,
    writer: W,
    events: mpsc::Sender<(usize, Option<AgentEvent>)>,
) -> mpsc::Sender<Control>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let agent = first.plan.agent;
    let first = encode(first);
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

/// Coordinator side of the [`AGENT_LINK`] handshake on a fresh connection to a remote
/// agent: proves `key` to it and checks that it holds the same. A secret that differs
/// is said so in plain words.
pub async fn authenticate<S>(io: &mut S, key: &LinkKey) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let differs = |how: &str| {
        anyhow::anyhow!(
            "not authenticated: the agent's --token-secret differs from this \
             coordinator's ({how})"
        )
    };
    client_handshake(io, key)
        .await
        .map_err(|error| match error.kind() {
            HandshakeErrorKind::Rejected => differs("the agent rejected our proof"),
            HandshakeErrorKind::BadProof => differs("the agent's proof is wrong"),
            _ => anyhow::Error::new(error).context("not authenticated"),
        })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::plan::RunPlan;

    const SECRET: &str = "the-deployment-secret";

    /// A one-agent plan over two source addresses, as `imbench run` makes it.
    fn agent_plan() -> AgentPlan {
        let cli = Cli::try_parse_from([
            "imbench",
            "run",
            "--target",
            "http://127.0.0.1:1",
            "--token-secret",
            SECRET,
            "--source-ips",
            "127.0.0.2-127.0.0.3",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        RunPlan::from_args(&args).unwrap().agent_plans(1).remove(0)
    }

    fn secret() -> Secret {
        SECRET.parse().unwrap()
    }

    #[test]
    fn the_network_plan_line_carries_no_secret_and_the_agent_uses_its_own() {
        let line = encode(&PlanLine::for_network(agent_plan()));
        assert!(!line.contains(SECRET), "{line}");
        assert!(!line.contains("token_secret"), "{line}");
        let own = "the-agent-s-own".parse().unwrap();
        let (plan, used) = decode_plan(&line, AgentSecret::Own(own)).unwrap();
        assert_eq!(used.expose(), "the-agent-s-own");
        // The flattened plan comes through whole.
        assert_eq!(plan.source_ips.len(), 2);
        assert_eq!(plan.targets, agent_plan().targets);
        // A local agent cannot run it: it has no secret of its own.
        let error = decode_plan(&line, AgentSecret::InPlan).unwrap_err();
        assert!(error.to_string().contains("no token secret"), "{error}");
    }

    #[test]
    fn the_pipe_plan_line_carries_the_secret_which_a_listening_agent_refuses() {
        let line = encode(&PlanLine::for_pipe(agent_plan(), secret()));
        let (_, used) = decode_plan(&line, AgentSecret::InPlan).unwrap();
        assert_eq!(used.expose(), SECRET);
        let error = decode_plan(&line, AgentSecret::Own(secret())).unwrap_err();
        assert!(
            error.to_string().contains("must not cross the network"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn authenticate_says_when_the_agent_s_secret_differs() {
        let coordinator = LinkKey::derive(&AGENT_LINK, b"one");
        let agent = LinkKey::derive(&AGENT_LINK, b"two");
        let (mut c, mut a) = tokio::io::duplex(1024);
        let (cr, ar) = tokio::join!(
            authenticate(&mut c, &coordinator),
            server_handshake(&mut a, &agent)
        );
        assert!(ar.is_err());
        let message = format!("{:#}", cr.unwrap_err());
        assert!(
            message.starts_with(
                "not authenticated: the agent's --token-secret differs from this coordinator's"
            ),
            "{message}"
        );

        let (mut c, mut a) = tokio::io::duplex(1024);
        let (cr, ar) = tokio::join!(
            authenticate(&mut c, &agent),
            server_handshake(&mut a, &agent)
        );
        cr.unwrap();
        ar.unwrap();
    }

    #[tokio::test]
    async fn authenticate_refuses_an_imd_rpc_port() {
        // An imd RPC port speaks the same handshake with another magic: it closes at
        // once, and the coordinator says what to check.
        const IMD_LIKE: Protocol = Protocol {
            magic: *b"IMDRPC01",
            key_label: b"imd rpc link v1",
            ..AGENT_LINK
        };
        let (ours, imd) = (
            LinkKey::derive(&AGENT_LINK, b"s"),
            LinkKey::derive(&IMD_LIKE, b"s"),
        );
        let (mut c, mut a) = tokio::io::duplex(1024);
        let (cr, ar) = tokio::join!(authenticate(&mut c, &ours), server_handshake(&mut a, &imd));
        assert!(ar.is_err());
        let message = format!("{:#}", cr.unwrap_err());
        assert!(
            message.starts_with("not authenticated: agent link handshake: ")
                && message.contains("--listen"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_version_mismatch_is_reported_on_the_link() {
        let (coord, agent_end) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(agent_end);
        let served = tokio::spawn(serve_agent(ar, aw, AgentSecret::InPlan));
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

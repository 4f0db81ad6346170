//! Opening one client connection: mint the token, bind the source address, connect,
//! and do the WebSocket handshake with small buffers.
//!
//! No retries and no counting here; the scenarios decide what a failure means.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use shared::token::{Claims, Platform};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::plan::Target;

/// A client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Device id of every imbench connection (one device per user).
pub const DEVICE: &str = "bench";

/// Mints client tokens with the deployment's secret.
#[derive(Clone)]
pub struct TokenMinter {
    key: EncodingKey,
    header: Header,
    exp: u64,
}

impl TokenMinter {
    /// A minter whose tokens stay valid for `valid_for` from now.
    pub fn new(secret: &str, valid_for: Duration) -> Self {
        let now = shared::time::since_epoch();
        TokenMinter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
            exp: (now + valid_for).as_secs(),
        }
    }

    /// A token for `uid` on the bench device, with `roles` (e.g. `agent`).
    pub fn token(&self, uid: &str, roles: &[&str]) -> anyhow::Result<String> {
        let claims = Claims {
            sub: uid.to_owned(),
            dev: DEVICE.to_owned(),
            plat: Platform::Other,
            exp: self.exp,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).context("minting a token")
    }
}

/// A resolved target.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `ws://host:port/v1/ws`.
    pub ws_url: String,
}

impl Endpoint {
    /// Resolves a target's host (once per run, not per connection).
    pub async fn resolve(target: &Target) -> anyhow::Result<Self> {
        let addr = tokio::net::lookup_host(&target.authority)
            .await
            .with_context(|| format!("resolving {}", target.authority))?
            .next()
            .with_context(|| format!("{} resolves to nothing", target.authority))?;
        Ok(Endpoint {
            addr,
            ws_url: target.ws_url.clone(),
        })
    }
}

/// The client WebSocket settings: a small read buffer allocated per connection,
/// frames written straight through, and a bounded write buffer.
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20))
}

/// Opens a TCP connection from `source` (or the kernel's choice) to `addr`.
pub async fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = source {
        if ip.is_ipv4() {
            // Pick the port at connect time, per 4-tuple, instead of reserving one per
            // source address at bind time: without this, one source address caps all
            // targets together at the ephemeral range. Best effort (Linux ≥ 4.2).
            let _ = nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            );
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    let std_stream: std::net::TcpStream = socket.into();
    TcpSocket::from_std_stream(std_stream).connect(addr).await
}

/// Why a connection attempt failed, coarse enough to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialError {
    /// TCP connect failed (refused, no ports, no fds…).
    Connect,
    /// The handshake got an HTTP status instead of 101.
    Http(u16),
    /// Anything else in the WebSocket handshake.
    Handshake,
    /// Over the connect timeout.
    Timeout,
    /// Token minting failed.
    Token,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Connect => f.write_str("tcp connect"),
            DialError::Http(code) => write!(f, "http {code}"),
            DialError::Handshake => f.write_str("handshake"),
            DialError::Timeout => f.write_str("timeout"),
            DialError::Token => f.write_str("token"),
        }
    }
}

/// Connects and upgrades one client of `uid`. The error's string is a sample for the
/// report.
pub async fn dial(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    minter: &TokenMinter,
    uid: &str,
    roles: &[&str],
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<Ws, (DialError, String)> {
    let token = minter
        .token(uid, roles)
        .map_err(|e| (DialError::Token, format!("{e:#}")))?;
    let url = format!("{}?token={token}", endpoint.ws_url);
    let attempt = async {
        let tcp = connect_tcp(endpoint.addr, source).await.map_err(|e| {
            (
                DialError::Connect,
                format!("connect {} from {source:?}: {e}", endpoint.addr),
            )
        })?;
        match tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await {
            Ok((ws, _response)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                Err((
                    DialError::Http(status),
                    format!("handshake answered HTTP {status}"),
                ))
            }
            Err(e) => Err((DialError::Handshake, format!("handshake: {e}"))),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err((
            DialError::Timeout,
            format!("no handshake within {timeout:?}"),
        )),
    }
}

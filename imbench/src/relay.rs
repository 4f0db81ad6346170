//! `imbench relay`: the bare floor that imd's figures are compared with in the same
//! run. It speaks enough of imd's client protocol for the `idle` and `chat`
//! scenarios (token check at the upgrade, `send` → `sent` and a `msg` push to every
//! device of both members with per-user `useq`s, `ack`, `ping`), over the same
//! WebSocket stack (tokio-tungstenite, a 512-byte read buffer, write-through), and
//! nothing else: no store, no durability, no retransmits, no server pings, no history
//! (`sync` answers an empty page). What imd costs above it is what durability, the
//! business rules and the worker's bookkeeping cost.
//!
//! Bounded: each connection has a queue of [`QUEUE`] frames, and a connection whose
//! queue is full is closed (as imd closes a slow consumer); the per-user and
//! per-conversation counters grow with the users of the run, which the run bounds.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};
use shared::protocol::ClientFrame;
use shared::token::Claims;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cli::RelayArgs;

/// Frames queued for one connection before it counts as too slow and is closed.
const QUEUE: usize = 1024;
/// Shards of the user and conversation maps.
const SHARDS: usize = 64;

/// One user's inbox position and connected devices.
#[derive(Default)]
struct User {
    useq: u64,
    devices: Vec<(u64, mpsc::Sender<Message>)>,
}

/// Users and conversations, sharded by key. Each shard is a `std::sync::Mutex` held
/// for a lookup and an increment, never across an `.await`.
struct Relay {
    users: Box<[Mutex<HashMap<String, User>>]>,
    convs: Box<[Mutex<HashMap<String, u64>>]>,
    hasher: RandomState,
    key: DecodingKey,
    next_conn: AtomicU64,
    next_msg: AtomicU64,
}

impl Relay {
    fn shard<'a, T>(&self, shards: &'a [Mutex<T>], key: &str) -> std::sync::MutexGuard<'a, T> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        // A panic while holding a shard leaves its map whole.
        shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves the relay on `args.listen` until the process is stopped; prints one JSON
/// line `{"event":"listening","listen":…}` once bound.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    crate::limits::raise_nofile()?;
    let listener = TcpListener::bind(&args.listen).await?;
    let listen = listener.local_addr()?;
    println!(
        "{}",
        json!({"event": "listening", "listen": listen.to_string()})
    );
    let relay = Arc::new(Relay {
        users: (0..SHARDS).map(|_| Mutex::default()).collect(),
        convs: (0..SHARDS).map(|_| Mutex::default()).collect(),
        hasher: RandomState::new(),
        key: DecodingKey::from_secret(args.token_secret.expose().as_bytes()),
        next_conn: AtomicU64::new(0),
        next_msg: AtomicU64::new(0),
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(accept(relay.clone(), tcp, peer));
    }
}

/// The uid in a valid token of the request (`?token=` or `Authorization: Bearer`).
fn authorize(relay: &Relay, req: &Request) -> Option<String> {
    let from_query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let from_header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = from_query.or(from_header)?;
    let validation = Validation::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::decode::<Claims>(token, &relay.key, &validation)
        .ok()
        .map(|d| d.claims.sub)
}

async fn accept(relay: Arc<Relay>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut uid = None;
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        uid = authorize(&relay, req);
        if uid.is_some() {
            Ok(resp)
        } else {
            let mut r = ErrorResponse::new(Some("unauthorized".into()));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            Err(r)
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 10))
        .max_frame_size(Some(64 << 10));
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(tcp, check, Some(config)).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
    };
    let Some(uid) = uid else { return };
    serve(relay, ws, uid).await;
}

/// One connection: a single task that reads frames, answers them, and writes what is
/// queued for it. Only the user's device list holds the queue's sender, so dropping it
/// there (a full queue) ends the task.
async fn serve(
    relay: Arc<Relay>,
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    uid: String,
) {
    let id = relay.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    relay
        .shard(&relay.users, &uid)
        .entry(uid.clone())
        .or_default()
        .devices
        .push((id, tx));
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => if ws.send(m).await.is_err() { break },
                None => break,
            },
            read = ws.next() => match read {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = handle(&relay, &uid, text.as_str())
                        && ws.send(Message::text(reply)).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    if let Some(user) = relay.shard(&relay.users, &uid).get_mut(&uid) {
        user.devices.retain(|(d, _)| *d != id);
    }
}

/// Answers one client frame; pushes a sent message to both members' devices.
fn handle(relay: &Relay, uid: &str, text: &str) -> Option<String> {
    let frame = match serde_json::from_str::<ClientFrame>(text) {
        Ok(f) => f,
        Err(e) => {
            let error = json!({"type": "error", "code": "bad_request", "message": e.to_string()});
            return Some(error.to_string());
        }
    };
    match frame {
        ClientFrame::Ping => Some(json!({"type": "pong"}).to_string()),
        // Acks, and read receipts, typing and availability, which the floor neither
        // stores nor forwards.
        ClientFrame::Ack { .. }
        | ClientFrame::Read { .. }
        | ClientFrame::Typing { .. }
        | ClientFrame::Status { .. } => None,
        ClientFrame::Recall { .. } => {
            let error = json!({"type": "error", "code": "bad_request",
                "message": "the relay keeps no messages to recall"});
            Some(error.to_string())
        }
        ClientFrame::Sync { .. } => {
            Some(json!({"type": "synced", "msgs": [], "more": false}).to_string())
        }
        ClientFrame::Send(req) => {
            let Some(to) = req.to.clone() else {
                let error = json!({"type": "error", "cid": req.cid, "code": "bad_request",
                    "message": "the relay takes direct messages only (\"to\")"});
                return Some(error.to_string());
            };
            let conv = shared::ids::direct_conv(uid, &to);
            let seq = {
                let mut convs = relay.shard(&relay.convs, &conv);
                let seq = convs.entry(conv.clone()).or_default();
                *seq += 1;
                *seq
            };
            let n = relay.next_msg.fetch_add(1, Ordering::Relaxed);
            let mut msg = json!({"id": format!("r{n}"), "conv": conv, "seq": seq, "from": uid,
                "body": req.body, "ts": shared::time::now_ms()});
            if let Some(cid) = &req.cid {
                msg["cid"] = json!(cid);
            }
            push(relay, uid, &msg);
            if to != uid {
                push(relay, &to, &msg);
            }
            Some(json!({"type": "sent", "cid": req.cid, "msg": msg}).to_string())
        }
    }
}

/// Gives `msg` the next `useq` of `uid` and queues it on each of its devices; a device
/// whose queue is full is dropped (its task ends when its sender goes).
fn push(relay: &Relay, uid: &str, msg: &Value) {
    let mut users = relay.shard(&relay.users, uid);
    let user = users.entry(uid.to_owned()).or_default();
    user.useq += 1;
    // Serialized once per user, shared by its devices.
    let frame = Message::text(json!({"type": "msg", "useq": user.useq, "msg": msg}).to_string());
    user.devices
        .retain(|(_, tx)| tx.try_send(frame.clone()).is_ok());
}

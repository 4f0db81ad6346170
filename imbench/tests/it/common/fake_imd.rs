//! A fake imd, in process: `/v1/ws?token=…`, send/sent, msg pushes to every device of
//! both members, ack, sync, ping, cid idempotency and server WebSocket pings, with
//! faults to inject (a skipped push, a sender dropped after the commit, the first
//! connections dropped). It counts the
//! `read` frames it receives (and those naming a conversation or seq the reader could
//! not have seen), and answers none. It is what imbench's own checks are tested
//! against; it must not grow imd's other behaviour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};
use shared::protocol::ClientFrame;
use shared::token::Claims;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::SECRET;

/// Faults the fake server can inject.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Commit every Nth message but never push it to the recipient.
    pub(crate) skip_push_every: Option<u64>,
    /// Commit every Nth message, then close the sender's connection before `sent`.
    pub(crate) drop_sender_every: Option<u64>,
    /// Close each of the first N connections the server accepts this long after it
    /// opened (a server dropping every client once).
    pub(crate) drop_first: Option<(u64, Duration)>,
}

#[derive(Default)]
struct User {
    next_useq: u64,
    inbox: Vec<(u64, Value)>,
    conns: HashMap<u64, mpsc::UnboundedSender<WsMessage>>,
}

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    convs: HashMap<String, u64>,
    by_cid: HashMap<(String, String), Value>,
    messages: u64,
    /// `read` frames of a member for a seq of the conversation that exists.
    reads: u64,
    /// Other `read` frames.
    bad_reads: u64,
}

/// A fake imd: `/v1/ws?token=…`, send/sent, msg pushes to every device of both
/// members, ack, sync, ping, cid idempotency, server WebSocket pings.
pub(crate) struct FakeImd {
    pub(crate) url: String,
    state: Arc<Mutex<State>>,
}

impl FakeImd {
    pub(crate) async fn start(faults: Faults) -> FakeImd {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let kept = state.clone();
        tokio::spawn(async move {
            let next_conn = AtomicU64::new(0);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let conn_id = next_conn.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut uid = None;
                    // the callback's signature is tungstenite's
                    #[allow(clippy::result_large_err)]
                    let callback =
                        |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                            let token = req
                                .uri()
                                .query()
                                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
                                .unwrap_or_default();
                            let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
                            validation.validate_exp = true;
                            match jsonwebtoken::decode::<Claims>(
                                token,
                                &DecodingKey::from_secret(SECRET.as_bytes()),
                                &validation,
                            ) {
                                Ok(data) => {
                                    uid = Some(data.claims.sub);
                                    Ok(resp)
                                }
                                Err(_) => {
                                    let mut r = ErrorResponse::new(Some("unauthorized".into()));
                                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                                    Err(r)
                                }
                            }
                        };
                    let _ = tcp.set_nodelay(true);
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                        return;
                    };
                    let uid = uid.expect("set by the callback");
                    serve_conn(ws, uid, conn_id, state, faults).await;
                });
            }
        });
        FakeImd { url, state: kept }
    }

    /// `read` frames received so far: (for a seq its sender's conversation has, from a
    /// member; any other).
    pub(crate) fn reads(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap();
        (st.reads, st.bad_reads)
    }
}

async fn serve_conn(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    uid: String,
    conn_id: u64,
    state: Arc<Mutex<State>>,
    faults: Faults,
) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<WsMessage>();
    state
        .lock()
        .unwrap()
        .users
        .entry(uid.clone())
        .or_default()
        .conns
        .insert(conn_id, tx.clone());
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(WsMessage::Close(_)) | None => { let _ = sink.close().await; return }
                    Some(m) => if sink.send(m).await.is_err() { return },
                },
                _ = ping.tick() => if sink.send(WsMessage::Ping(Default::default())).await.is_err() { return },
            }
        }
    });
    if let Some((n, after)) = faults.drop_first
        && conn_id < n
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(WsMessage::Close(None));
        });
    }
    let text = |v: Value| WsMessage::text(v.to_string());
    while let Some(Ok(frame)) = stream.next().await {
        let WsMessage::Text(t) = frame else { continue };
        let Ok(frame) = serde_json::from_str::<ClientFrame>(&t) else {
            let _ = tx.send(text(
                json!({"type":"error","code":"bad_request","message":"bad frame"}),
            ));
            continue;
        };
        match frame {
            ClientFrame::Ping => {
                let _ = tx.send(text(json!({"type":"pong"})));
            }
            ClientFrame::Read { conv, seq } => {
                let mut st = state.lock().unwrap();
                let member = shared::ids::ConvRef::parse(&conv).is_some_and(
                    |c| matches!(c, shared::ids::ConvRef::Direct(a, b) if a == uid || b == uid),
                );
                let last = st.convs.get(&conv).copied().unwrap_or(0);
                if member && (1..=last).contains(&seq) {
                    st.reads += 1;
                } else {
                    st.bad_reads += 1;
                }
            }
            ClientFrame::Ack { .. }
            | ClientFrame::Typing { .. }
            | ClientFrame::Recall { .. }
            | ClientFrame::Status { .. } => {}
            ClientFrame::Sync { after, limit } => {
                let st = state.lock().unwrap();
                let inbox = st
                    .users
                    .get(&uid)
                    .map(|u| u.inbox.as_slice())
                    .unwrap_or_default();
                let limit = limit.unwrap_or(100).min(1000) as usize;
                let items: Vec<Value> = inbox
                    .iter()
                    .filter(|(u, _)| *u > after)
                    .take(limit + 1)
                    .map(|(u, m)| json!({"useq": u, "msg": m}))
                    .collect();
                let more = items.len() > limit;
                let items: Vec<Value> = items.into_iter().take(limit).collect();
                let _ = tx.send(text(json!({"type":"synced","msgs":items,"more":more})));
            }
            ClientFrame::Send(req) => {
                let to = req.to.clone().unwrap_or_default();
                let mut st = state.lock().unwrap();
                let key = (uid.clone(), req.cid.clone().unwrap_or_default());
                if req.cid.is_some()
                    && let Some(msg) = st.by_cid.get(&key)
                {
                    let _ = tx.send(text(json!({"type":"sent","cid":req.cid,"msg":msg})));
                    continue;
                }
                st.messages += 1;
                let n = st.messages;
                let conv = shared::ids::direct_conv(&uid, &to);
                let seq = {
                    let s = st.convs.entry(conv.clone()).or_default();
                    *s += 1;
                    *s
                };
                let mut msg = json!({"id": format!("m{n}"), "conv": conv, "seq": seq, "from": uid,
                    "body": req.body, "ts": 0});
                if let Some(cid) = &req.cid {
                    msg["cid"] = json!(cid);
                }
                st.by_cid.insert(key, msg.clone());
                let mut members = vec![uid.clone()];
                if to != uid {
                    members.push(to.clone());
                }
                for member in members {
                    let user = st.users.entry(member.clone()).or_default();
                    user.next_useq += 1;
                    let useq = user.next_useq;
                    user.inbox.push((useq, msg.clone()));
                    let skip = member != uid
                        && faults.skip_push_every.is_some_and(|k| n.is_multiple_of(k));
                    if !skip {
                        for conn in user.conns.values() {
                            let _ = conn.send(text(json!({"type":"msg","useq":useq,"msg":msg})));
                        }
                    }
                }
                if faults
                    .drop_sender_every
                    .is_some_and(|k| n.is_multiple_of(k))
                {
                    let _ = tx.send(WsMessage::Close(None));
                    break;
                }
                let _ = tx.send(text(json!({"type":"sent","cid":req.cid,"msg":msg})));
            }
        }
    }
    if let Some(u) = state.lock().unwrap().users.get_mut(&uid) {
        u.conns.remove(&conn_id);
    }
    drop(tx);
    let _ = writer.await;
}

//! Test harness: a small in-process stand-in for imd's WebSocket contract (with fault
//! knobs), a handle on a real `imd serve` process, and a runner for the `imbench`
//! binary with a time bound.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

pub const SECRET: &str = "test-secret";
pub const ADMIN: &str = "test-admin-token";

/// Faults the fake server can inject.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Commit every Nth message but never push it to the recipient.
    pub skip_push_every: Option<u64>,
    /// Commit every Nth message, then close the sender's connection before `sent`.
    pub drop_sender_every: Option<u64>,
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
}

/// A fake imd: `/v1/ws?token=…`, send/sent, msg pushes to every device of both
/// members, ack, sync, ping, cid idempotency, server WebSocket pings.
pub struct FakeImd {
    pub url: String,
    pub handshakes: Arc<AtomicU64>,
}

impl FakeImd {
    pub async fn start(faults: Faults) -> FakeImd {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let handshakes = Arc::new(AtomicU64::new(0));
        let hs = handshakes.clone();
        tokio::spawn(async move {
            let next_conn = AtomicU64::new(0);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let conn_id = next_conn.fetch_add(1, Ordering::Relaxed);
                let hs = hs.clone();
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
                    hs.fetch_add(1, Ordering::Relaxed);
                    let uid = uid.expect("set by the callback");
                    serve_conn(ws, uid, conn_id, state, faults).await;
                });
            }
        });
        FakeImd { url, handshakes }
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
            ClientFrame::Ack { .. } => {}
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

/// What an `imbench` run left behind.
pub struct RunResult {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub report: Value,
    /// The HTML chart written next to the report.
    pub chart: String,
}

impl RunResult {
    /// Asserts that imbench exited with `code`, showing its output when it did not.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// The `imbench` binary under test.
pub fn imbench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imbench"))
}

/// A short verified chat against `url` signed with `secret`: 20 connections, 200 msg/s
/// for `duration`, then a 1 s drain; `extra` picks the agents.
pub fn chat_args<'a>(
    url: &'a str,
    secret: &'a str,
    duration: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "--target",
        url,
        "--token-secret",
        secret,
        "--scenario",
        "chat",
        "--connections",
        "20",
        "--ramp",
        "500",
        "--rate",
        "200",
        "--duration",
        duration,
        "--drain",
        "1s",
        "--verify",
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs `imbench run ARGS --report FILE` with a time bound and returns its report.
pub async fn run_imbench(args: &[&str], limit: Duration) -> RunResult {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let child = tokio::process::Command::new(imbench_bin())
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(&report_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("imbench ran past {limit:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // shown with --nocapture, or when the test fails
    eprintln!("--- imbench {}\n{stderr}{stdout}", args.join(" "));
    let report = std::fs::read_to_string(&report_path)
        .map(|s| serde_json::from_str(&s).unwrap())
        .unwrap_or_else(|e| panic!("no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let chart = std::fs::read_to_string(dir.path().join("report.html")).unwrap_or_default();
    RunResult {
        chart,
        code: out.status.code(),
        stdout,
        stderr,
        report,
    }
}

/// A real `imd serve` on a temporary data dir, killed (by its handle) on drop.
pub struct Imd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Imd {
    /// Path of the imd binary built next to imbench's.
    pub fn bin() -> PathBuf {
        let exe = imbench_bin();
        exe.parent().expect("imbench has a directory").join("imd")
    }

    pub fn start(secret: &str) -> Imd {
        let bin = Self::bin();
        assert!(
            Path::new(&bin).exists(),
            "{} is missing: build it first (`cargo build -p imd`; `cargo test --workspace` builds it)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--token-secret",
                secret,
                "--admin-token",
                ADMIN,
                "--connect-rate",
                "0",
                "--send-rate",
                "0",
                "--data-dir",
            ])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["event"] == "ready"
                {
                    let _ = tx.send(v);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = match rx.recv_timeout(deadline - Instant::now()) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                panic!("imd printed no ready line within 20 s");
            }
        };
        let listen = ready["listen"]
            .as_str()
            .expect("ready line has listen")
            .to_owned();
        Imd {
            child,
            url: format!("http://{listen}"),
            _dir: dir,
        }
    }
}

impl Drop for Imd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a [`RemoteAgent`] gets its `--token-secret`.
#[derive(Debug, Clone, Copy)]
pub enum SecretBy {
    /// The `--token-secret` flag.
    Flag,
    /// The `IMBENCH_TOKEN_SECRET` environment variable.
    Env,
}

/// `imbench agent --listen 127.0.0.1:0 --token-secret S`, killed (by its handle) on
/// drop. Its stderr is kept (and echoed) so that tests can wait for its log lines.
pub struct RemoteAgent {
    child: Child,
    pub addr: String,
    stderr: Arc<Mutex<String>>,
}

impl RemoteAgent {
    /// Starts an agent that holds `secret`, given by flag.
    pub fn start(secret: &str) -> RemoteAgent {
        Self::start_with(secret, SecretBy::Flag)
    }

    /// Starts an agent that holds `secret`, given as `by` says.
    pub fn start_with(secret: &str, by: SecretBy) -> RemoteAgent {
        let mut command = Command::new(imbench_bin());
        command.args(["agent", "--listen", "127.0.0.1:0"]);
        match by {
            SecretBy::Flag => command.args(["--token-secret", secret]),
            SecretBy::Env => command.env("IMBENCH_TOKEN_SECRET", secret),
        };
        let mut child = command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["event"] == "listening"
                {
                    let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => RemoteAgent {
                child,
                addr,
                stderr,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("imbench agent --listen printed no listening line within 20 s");
            }
        }
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits, up to `limit`, until the agent's stderr contains `needle`; panics with
    /// what it did print otherwise.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.stderr.lock().unwrap().contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not log {needle:?} within {limit:?}; its stderr:\n{}",
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RemoteAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

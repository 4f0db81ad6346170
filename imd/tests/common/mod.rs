//! Real-process test harness: starts the `imd` binary on port 0 in a temporary data
//! dir, speaks to it over WebSocket and HTTP, and signals or kills it.
//!
//! Modelled on nats.rs's server helper: the process prints one ready line with its
//! bound address, which [`Imd::start`] parses under a deadline, and [`Drop`] kills it.
//! Nothing here sleeps for luck: waits are for a condition ([`wait_until`], a frame, a
//! close, an exit) under a deadline. The one exception, [`WsClient::expect_no_frame_for`],
//! is a window that proves absence and is sized by the caller from the configured
//! timeouts.
//!
//! Each test file uses a different part of the harness, hence `dead_code` is allowed.
#![allow(dead_code)]

pub(crate) mod redis;

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::protocol::{ClientFrame, ErrorCode, InboxItem, Message, ServerFrame, SyncResponse};
use shared::token::{Claims, Platform};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the binary may take to print its ready line.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Default deadline for a frame that must come.
pub(crate) const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// Flags of `imd serve` that `imd token` and `imd admin-token` take too.
const COMMON_FLAGS: [&str; 3] = ["--config", "--token-secret", "--admin-token"];

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after `deadline`.
pub(crate) async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Signs `claims` with `secret` (HS256), as a test-made token.
pub(crate) fn mint(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// Claims of a web device of `uid` that expire `ttl_secs` from now (negative: in the past).
pub(crate) fn claims(uid: &str, device: &str, ttl_secs: i64) -> Claims {
    Claims {
        sub: uid.to_owned(),
        dev: device.to_owned(),
        plat: Platform::Web,
        exp: now_secs().saturating_add_signed(ttl_secs),
        roles: Vec::new(),
    }
}

/// Builder of an [`Imd`]: extra flags, environment, a TOML config file, a data dir.
#[derive(Default)]
pub(crate) struct ImdBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    config_toml: Option<String>,
    data_dir: Option<PathBuf>,
}

impl ImdBuilder {
    /// Adds flags of `imd serve`. `--config`, `--token-secret` and `--admin-token` are
    /// passed to `imd token` and `imd admin-token` too.
    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the server and the helpers.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes `text` to a config file and passes `--config` to the server and helpers.
    pub(crate) fn config_toml(mut self, text: &str) -> Self {
        self.config_toml = Some(text.to_owned());
        self
    }

    /// Uses `dir` as the data dir instead of a fresh one.
    pub(crate) fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Starts the server and waits for its ready line.
    pub(crate) fn start(self) -> Imd {
        let work = tempfile::Builder::new()
            .prefix("imd-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = self.data_dir.unwrap_or_else(|| work.path().join("data"));
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let mut args = self.args;
        if let Some(text) = &self.config_toml {
            let path = work.path().join("imd.toml");
            std::fs::write(&path, text).expect("write config");
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        let mut imd = Imd {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_id: String::new(),
            data_dir,
            args,
            env: self.env,
            stdout: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            work,
        };
        imd.spawn();
        imd
    }
}

/// A running `imd serve` process.
pub(crate) struct Imd {
    child: Option<Child>,
    /// The bound HTTP/WebSocket address, from the ready line.
    pub(crate) addr: SocketAddr,
    /// The node id, from the ready line.
    pub(crate) node_id: String,
    data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Every stdout line of the current process, the ready line first.
    stdout: Arc<Mutex<Vec<String>>>,
    starts: usize,
    http: reqwest::Client,
    work: tempfile::TempDir,
}

impl Imd {
    /// Starts a server in a fresh data dir with these extra flags.
    pub(crate) fn start(args: &[&str]) -> Imd {
        Imd::builder().args(args.iter().copied()).start()
    }

    pub(crate) fn builder() -> ImdBuilder {
        ImdBuilder::default()
    }

    /// The data dir; it outlives restarts.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A scratch directory that lives as long as this value.
    pub(crate) fn work_dir(&self) -> &Path {
        self.work.path()
    }

    fn command(&self, sub: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imd"));
        // The runner's own IMD_* must not leak into what a test configures.
        for (key, _) in std::env::vars() {
            if key.starts_with("IMD_") {
                cmd.env_remove(key);
            }
        }
        let log = std::env::var("IMD_TEST_LOG").unwrap_or_else(|_| "warn".into());
        cmd.env("RUST_LOG", log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.arg(sub).arg("--data-dir").arg(&self.data_dir);
        cmd
    }

    /// The flags of `args` that the token helpers share with `serve`.
    fn common_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if COMMON_FLAGS.contains(&a.as_str()) {
                out.push(a.clone());
                out.extend(it.next().cloned());
            } else if COMMON_FLAGS.iter().any(|f| a.starts_with(&format!("{f}="))) {
                out.push(a.clone());
            }
        }
        out
    }

    fn stderr_path(&self) -> PathBuf {
        self.work
            .path()
            .join(format!("imd-stderr-{}.log", self.starts))
    }

    /// The current process's stderr so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Every stdout line of the current process so far.
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let stderr = File::create(self.stderr_path()).expect("stderr log");
        let mut cmd = self.command("serve");
        cmd.args(["--listen", "127.0.0.1:0"]).args(&self.args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn imd");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        self.stdout = Arc::clone(&lines);
        let (tx, rx) = mpsc::channel();
        // Drains stdout to the end, so the pipe never fills, and hands over the first line.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("stdout lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(READY_DEADLINE) {
            Ok(line) => line,
            Err(e) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "imd printed no ready line ({e}); exit status {status:?}; args {:?}\nstderr:\n{}",
                    self.args,
                    self.stderr()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ready line is not JSON ({e}): {line:?}"));
        assert_eq!(ready["event"], "ready", "ready line: {line}");
        self.addr = ready["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("ready line has no listen address: {line}"));
        self.node_id = ready["node_id"].as_str().unwrap_or_default().to_owned();
    }

    /// The process id of the current process.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("imd is running").id()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors only when it already exited; `wait` reaps it either way. No panic
            // here: this also runs in `Drop`, maybe while a test is panicking.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM; see [`Imd::wait_exit`].
    pub(crate) fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT; see [`Imd::wait_exit`].
    pub(crate) fn sigint(&self) {
        self.signal("INT");
    }

    /// Sends SIGHUP (reload).
    pub(crate) fn sighup(&self) {
        self.signal("HUP");
    }

    /// Sends a signal by name with `kill(1)`, to this process's pid only.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// Waits for the process to exit and returns its status.
    pub(crate) async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        let child = self.child.as_mut().expect("imd is running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < end, "imd did not exit within {deadline:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the process if it still runs (SIGKILL) and starts it again on the same data
    /// dir with the same configuration. The address changes.
    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs `imd <sub> --data-dir … <common flags> <extra>` and returns its one stdout line.
    pub(crate) fn helper(&self, sub: &str, extra: &[&str]) -> String {
        let out = self
            .command(sub)
            .args(self.common_args())
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run imd helper");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "imd {sub} {extra:?} failed: {}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "imd {sub} must print one line, printed {stdout:?}"
        );
        lines[0].trim().to_owned()
    }

    /// A token of a web device from `imd token`.
    pub(crate) fn token(&self, uid: &str, device: &str) -> String {
        self.helper(
            "token",
            &["--uid", uid, "--device", device, "--platform", "web"],
        )
    }

    /// The admin token from `imd admin-token`.
    pub(crate) fn admin_token(&self) -> String {
        self.helper("admin-token", &[])
    }

    pub(crate) fn http(&self) -> Http {
        Http {
            client: self.http.clone(),
            base: format!("http://{}", self.addr),
        }
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Connects a WebSocket client with `Authorization: Bearer`.
    pub(crate) async fn ws(&self, token: &str) -> WsClient {
        WsClient::connect(&self.ws_url(), Auth::Header(token)).await
    }

    /// Connects the WebSocket of `uid`'s `device` (token from `imd token`).
    pub(crate) async fn ws_as(&self, uid: &str, device: &str) -> WsClient {
        self.ws(&self.token(uid, device)).await
    }
}

impl Drop for Imd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
            eprintln!("--- imd stderr (last {} lines) ---", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.kill9();
    }
}

/// An HTTP answer: status and body (JSON, or a JSON string of the raw text).
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Resp {
    /// The `error.code` of an error body.
    pub(crate) fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    /// Asserts a JSON error body `{"error":{"code":code,"message":…}}` with `status`.
    pub(crate) fn assert_error(&self, status: u16, code: ErrorCode) {
        assert_eq!(self.status, status, "status; body {}", self.body);
        assert_eq!(
            self.error_code(),
            Some(code.as_str()),
            "error code; body {}",
            self.body
        );
        assert!(
            self.body["error"]["message"].is_string(),
            "error message; body {}",
            self.body
        );
    }

    pub(crate) fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, 200, "body {}", self.body);
        &self.body
    }
}

/// HTTP client of one server.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    pub(crate) base: String,
}

impl Http {
    async fn finish(res: reqwest::Response) -> Resp {
        let status = res.status().as_u16();
        let text = res.text().await.expect("read body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, body }
    }

    /// GET `path` (with query), with a bearer token when given.
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.send().await.expect("GET")).await
    }

    /// POST raw bytes as `application/json` to `path`.
    pub(crate) async fn post_raw(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.send().await.expect("POST")).await
    }

    /// The same server through a client whose connections leave from `local`
    /// (e.g. `127.0.0.9`, another loopback address).
    pub(crate) fn bound_to(&self, local: IpAddr) -> Http {
        Http {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .local_address(local)
                .build()
                .expect("http client"),
            base: self.base.clone(),
        }
    }

    /// POST this JSON to `path`.
    pub(crate) async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.post_raw(path, token, body.to_string().into_bytes())
            .await
    }

    /// PUT this JSON to `path`.
    pub(crate) async fn put_json(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        let mut req = self
            .client
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.send().await.expect("PUT")).await
    }

    /// DELETE `path`.
    pub(crate) async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        let mut req = self.client.delete(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.send().await.expect("DELETE")).await
    }

    /// `POST /v1/messages` with this JSON body.
    pub(crate) async fn post_message(&self, token: &str, body: &Value) -> Resp {
        self.post_raw("/v1/messages", Some(token), body.to_string().into_bytes())
            .await
    }

    /// Sends a direct message and returns the committed message (asserts 200).
    pub(crate) async fn send_to(
        &self,
        token: &str,
        to: &str,
        cid: Option<&str>,
        body: Value,
    ) -> Message {
        let mut req = json!({"to": to, "body": body});
        if let Some(cid) = cid {
            req["cid"] = json!(cid);
        }
        let resp = self.post_message(token, &req).await;
        let v = resp.assert_ok();
        serde_json::from_value(v["msg"].clone())
            .unwrap_or_else(|e| panic!("bad send answer ({e}): {v}"))
    }

    /// `GET /v1/sync`, asserting 200.
    pub(crate) async fn sync(&self, token: &str, after: u64, limit: Option<u32>) -> SyncResponse {
        let mut path = format!("/v1/sync?after={after}");
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        let resp = self.get(&path, Some(token)).await;
        serde_json::from_value(resp.assert_ok().clone())
            .unwrap_or_else(|e| panic!("bad sync answer ({e}): {}", resp.body))
    }

    /// Every inbox item after `after`, following `more` with pages of `limit`.
    pub(crate) async fn sync_all(&self, token: &str, after: u64, limit: u32) -> Vec<InboxItem> {
        let mut out: Vec<InboxItem> = Vec::new();
        let mut after = after;
        loop {
            let page = self.sync(token, after, Some(limit)).await;
            assert!(page.msgs.len() <= limit as usize, "page over the limit");
            if let Some(last) = page.msgs.last() {
                after = last.useq;
            }
            let more = page.more;
            let empty = page.msgs.is_empty();
            out.extend(page.msgs);
            if !more {
                return out;
            }
            assert!(!empty, "sync said more but gave nothing");
        }
    }

    /// `GET /v1/conversations/{conv}/messages`.
    pub(crate) async fn history(
        &self,
        token: &str,
        conv: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Resp {
        let mut path = format!(
            "/v1/conversations/{}/messages?after={after}",
            encode_path(conv)
        );
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        self.get(&path, Some(token)).await
    }

    /// `GET /metrics` as text (asserts 200).
    pub(crate) async fn metrics(&self) -> String {
        let res = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(res.status().as_u16(), 200, "/metrics status");
        res.text().await.expect("metrics body")
    }
}

/// Percent-encodes a path segment; `:`, `~`, `@` and the unreserved characters stay.
pub(crate) fn encode_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The sum of every sample of metric `name` (any labels) in Prometheus text; `None`
/// when there is none.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        // Labels, then the value, then maybe a timestamp.
        let after_labels = match rest.find('}') {
            Some(i) => &rest[i + 1..],
            None => rest,
        };
        let v = after_labels
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = v {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// Where a WebSocket client puts its token.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth<'a> {
    None,
    Header(&'a str),
    Query(&'a str),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The upgrade request to `url`, with the token where `auth` puts it; and the URL.
fn ws_request(
    url: &str,
    auth: Auth<'_>,
) -> (
    String,
    tokio_tungstenite::tungstenite::handshake::client::Request,
) {
    let url = match auth {
        Auth::Query(t) => format!("{url}?token={t}"),
        _ => url.to_owned(),
    };
    let mut req = url.as_str().into_client_request().expect("ws request");
    if let Auth::Header(t) = auth {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).expect("header value"),
        );
    }
    (url, req)
}

/// Tries the WebSocket upgrade; `Ok(client)` on 101, `Err(status)` when refused with an
/// HTTP answer.
pub(crate) async fn try_ws(url: &str, auth: Auth<'_>) -> Result<WsClient, u16> {
    let (url, req) = ws_request(url, auth);
    match tokio::time::timeout(FRAME_DEADLINE, tokio_tungstenite::connect_async(req)).await {
        Err(_) => panic!("WebSocket upgrade to {url} timed out"),
        Ok(Ok((ws, _))) => Ok(WsClient {
            ws,
            pending: VecDeque::new(),
        }),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("WebSocket upgrade to {url} failed: {e}"),
    }
}

/// Tries the WebSocket upgrade over a TCP connection bound to the local source address
/// `local` (port chosen by the system); `Ok(client)` on 101, `Err(answer)` (status and
/// body) when refused with an HTTP answer.
pub(crate) async fn try_ws_from(
    url: &str,
    auth: Auth<'_>,
    local: IpAddr,
) -> Result<WsClient, Resp> {
    let (url, req) = ws_request(url, auth);
    let uri = req.uri();
    let host: IpAddr = uri
        .host()
        .and_then(|h| h.trim_matches(['[', ']']).parse().ok())
        .unwrap_or_else(|| panic!("{url}: the host must be an IP address"));
    let server = SocketAddr::new(host, uri.port_u16().unwrap_or(80));
    let upgrade = async {
        let socket = match local {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("tcp socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .unwrap_or_else(|e| panic!("bind to {local}: {e}"));
        let stream = socket
            .connect(server)
            .await
            .unwrap_or_else(|e| panic!("connect from {local} to {server}: {e}"));
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await
    };
    match tokio::time::timeout(FRAME_DEADLINE, upgrade).await {
        Err(_) => panic!("WebSocket upgrade to {url} from {local} timed out"),
        Ok(Ok((ws, _))) => Ok(WsClient {
            ws,
            pending: VecDeque::new(),
        }),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let text =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Err(Resp { status, body })
        }
        Ok(Err(e)) => panic!("WebSocket upgrade to {url} from {local} failed: {e}"),
    }
}

/// A WebSocket client that decodes server frames. Frames read while waiting for
/// another kind are kept, in order, for the next read.
pub(crate) struct WsClient {
    ws: Ws,
    pending: VecDeque<ServerFrame>,
}

/// What the raw stream yielded.
enum Next {
    Frame(ServerFrame),
    Closed(String),
}

impl WsClient {
    /// Upgrades and waits for a `pong` to a `ping`, so that the server's session is
    /// running before the test goes on.
    pub(crate) async fn connect(url: &str, auth: Auth<'_>) -> WsClient {
        let mut c = match try_ws(url, auth).await {
            Ok(c) => c,
            Err(status) => panic!("WebSocket upgrade refused with HTTP {status}"),
        };
        c.ping_pong().await;
        c
    }

    /// [`WsClient::connect`] over a TCP connection from the local address `local`.
    pub(crate) async fn connect_from(url: &str, auth: Auth<'_>, local: IpAddr) -> WsClient {
        let mut c = match try_ws_from(url, auth, local).await {
            Ok(c) => c,
            Err(resp) => panic!(
                "WebSocket upgrade from {local} refused with HTTP {}: {}",
                resp.status, resp.body
            ),
        };
        c.ping_pong().await;
        c
    }

    /// The client's end of the TCP connection.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => s.local_addr().expect("local address"),
            _ => panic!("not a plain TCP connection"),
        }
    }

    /// Sends a text frame as is.
    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text.to_owned()))
            .await
            .expect("send text frame");
    }

    /// Sends a binary frame.
    pub(crate) async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(WsMessage::binary(bytes))
            .await
            .expect("send binary frame");
    }

    pub(crate) async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub(crate) async fn send_frame(&mut self, f: &ClientFrame) {
        self.send_text(&serde_json::to_string(f).expect("encode frame"))
            .await;
    }

    /// Sends a direct message `{"type":"send","to":…,"cid":…,"body":…}`.
    pub(crate) async fn send_to(&mut self, to: &str, cid: &str, body: Value) {
        self.send_json(&json!({"type": "send", "cid": cid, "to": to, "body": body}))
            .await;
    }

    pub(crate) async fn ack(&mut self, useqs: &[u64]) {
        self.send_frame(&ClientFrame::Ack {
            useqs: useqs.to_vec(),
        })
        .await;
    }

    /// Closes the connection from the client side.
    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read to the end so that the close handshake completes.
        let _ = tokio::time::timeout(FRAME_DEADLINE, async {
            while self.ws.next().await.is_some() {}
        })
        .await;
    }

    async fn raw_next(&mut self, until: Instant) -> Option<Next> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let item = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(item) => item,
            };
            match item {
                None => return Some(Next::Closed("stream ended without a close frame".into())),
                Some(Err(e)) => return Some(Next::Closed(format!("error: {e}"))),
                Some(Ok(WsMessage::Text(t))) => {
                    let f = serde_json::from_str::<ServerFrame>(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent an undecodable frame ({e}): {t}"));
                    return Some(Next::Frame(f));
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Some(Next::Closed(match frame {
                        Some(f) => {
                            format!("close frame {} {:?}", u16::from(f.code), f.reason.as_str())
                        }
                        None => "close frame without code".into(),
                    }));
                }
                Some(Ok(WsMessage::Binary(b))) => panic!("server sent a binary frame: {b:?}"),
                // Pings are answered by tungstenite while we read.
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next server frame within `timeout` (kept frames first); panics on close or timeout.
    pub(crate) async fn next_frame(&mut self, timeout: Duration) -> ServerFrame {
        if let Some(f) = self.pending.pop_front() {
            return f;
        }
        match self.raw_next(Instant::now() + timeout).await {
            Some(Next::Frame(f)) => f,
            Some(Next::Closed(how)) => panic!("connection closed while waiting for a frame: {how}"),
            None => panic!("no frame within {timeout:?}"),
        }
    }

    /// The next server frame within `timeout`, or `Err(close code)` when the server
    /// closes first (`Err(None)`: closed without a code). Panics on timeout.
    pub(crate) async fn next_frame_or_close(
        &mut self,
        timeout: Duration,
    ) -> Result<ServerFrame, Option<u16>> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let item = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("neither a frame nor a close within {timeout:?}"),
                Ok(item) => item,
            };
            match item {
                None | Some(Err(_)) => return Err(None),
                Some(Ok(WsMessage::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(WsMessage::Text(t))) => {
                    return Ok(
                        serde_json::from_str::<ServerFrame>(t.as_str()).unwrap_or_else(|e| {
                            panic!("server sent an undecodable frame ({e}): {t}")
                        }),
                    );
                }
                Some(Ok(WsMessage::Binary(b))) => panic!("server sent a binary frame: {b:?}"),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The first frame that `pred` accepts within `timeout`; the frames before it are
    /// kept for later reads.
    pub(crate) async fn next_matching(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&ServerFrame) -> bool,
    ) -> ServerFrame {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index in range");
        }
        let until = Instant::now() + timeout;
        loop {
            match self.raw_next(until).await {
                Some(Next::Frame(f)) if pred(&f) => return f,
                Some(Next::Frame(f)) => self.pending.push_back(f),
                Some(Next::Closed(how)) => {
                    panic!(
                        "connection closed while waiting for {what}: {how}; before it: {:?}",
                        self.pending
                    )
                }
                None => panic!(
                    "no {what} within {timeout:?}; other frames: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Sends `ping` and waits for `pong`.
    pub(crate) async fn ping_pong(&mut self) {
        self.send_frame(&ClientFrame::Ping).await;
        self.next_matching(FRAME_DEADLINE, "pong", |f| matches!(f, ServerFrame::Pong))
            .await;
    }

    /// The `sent` frame of `cid`.
    pub(crate) async fn expect_sent(&mut self, cid: &str) -> Message {
        let f = self
            .next_matching(
                FRAME_DEADLINE,
                &format!("sent {cid}"),
                |f| matches!(f, ServerFrame::Sent { cid: Some(c), .. } if c == cid),
            )
            .await;
        let ServerFrame::Sent { msg, .. } = f else {
            unreachable!("matched a sent frame")
        };
        msg
    }

    /// The next push `(useq, msg)`.
    pub(crate) async fn expect_push(&mut self) -> (u64, Message) {
        self.expect_push_within(FRAME_DEADLINE).await
    }

    pub(crate) async fn expect_push_within(&mut self, timeout: Duration) -> (u64, Message) {
        let f = self
            .next_matching(timeout, "msg push", |f| {
                matches!(f, ServerFrame::Msg { .. })
            })
            .await;
        let ServerFrame::Msg { useq, msg } = f else {
            unreachable!("matched a msg frame")
        };
        (useq, msg)
    }

    /// The next `error` frame: `(cid, code)`.
    pub(crate) async fn expect_error(&mut self) -> (Option<String>, ErrorCode) {
        let f = self
            .next_matching(FRAME_DEADLINE, "error", |f| {
                matches!(f, ServerFrame::Error { .. })
            })
            .await;
        let ServerFrame::Error { cid, code, message } = f else {
            unreachable!("matched an error frame")
        };
        assert!(!message.is_empty(), "error frames carry a message");
        (cid, code)
    }

    /// The next `kick` frame's reason.
    pub(crate) async fn expect_kick(&mut self) -> String {
        let f = self
            .next_matching(FRAME_DEADLINE, "kick", |f| {
                matches!(f, ServerFrame::Kick { .. })
            })
            .await;
        let ServerFrame::Kick { reason } = f else {
            unreachable!("matched a kick frame")
        };
        reason
    }

    /// Sends `sync` and returns the `synced` answer.
    pub(crate) async fn sync(&mut self, after: u64, limit: Option<u32>) -> (Vec<InboxItem>, bool) {
        self.send_frame(&ClientFrame::Sync { after, limit }).await;
        let f = self
            .next_matching(FRAME_DEADLINE, "synced", |f| {
                matches!(f, ServerFrame::Synced { .. })
            })
            .await;
        let ServerFrame::Synced { msgs, more } = f else {
            unreachable!("matched a synced frame")
        };
        (msgs, more)
    }

    /// Reads until the server closes; returns the close code (`None`: the connection
    /// ended without a close frame). Frames before the close are kept.
    pub(crate) async fn expect_closed(&mut self, timeout: Duration) -> Option<u16> {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let item = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!(
                    "server did not close within {timeout:?}; frames: {:?}",
                    self.pending
                ),
                Ok(item) => item,
            };
            match item {
                None | Some(Err(_)) => return None,
                Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(WsMessage::Text(t))) => {
                    if let Ok(f) = serde_json::from_str::<ServerFrame>(t.as_str()) {
                        self.pending.push_back(f);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Asserts that the server closes with `code`.
    pub(crate) async fn expect_close_code(&mut self, code: u16) {
        let got = self.expect_closed(FRAME_DEADLINE).await;
        assert_eq!(
            got,
            Some(code),
            "close code; frames before: {:?}",
            self.pending
        );
    }

    /// Asserts that no frame arrives for `window` (kept frames count). Reading goes on
    /// meanwhile, so the server's pings are answered.
    pub(crate) async fn expect_no_frame_for(&mut self, window: Duration) {
        assert!(
            self.pending.is_empty(),
            "unexpected frames: {:?}",
            self.pending
        );
        match self.raw_next(Instant::now() + window).await {
            None => {}
            Some(Next::Frame(f)) => panic!("expected no frame for {window:?}, got {f:?}"),
            Some(Next::Closed(how)) => {
                panic!("expected no frame for {window:?}, connection closed: {how}")
            }
        }
    }

    /// Frames kept from earlier reads.
    pub(crate) fn take_pending(&mut self) -> Vec<ServerFrame> {
        self.pending.drain(..).collect()
    }
}

/// Opens a raw TCP connection, does the WebSocket upgrade by hand and returns the
/// stream, which never answers anything afterwards (a dead client).
pub(crate) fn raw_upgrade(addr: SocketAddr, token: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(FRAME_DEADLINE))
        .expect("read timeout");
    write!(
        s,
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read upgrade answer");
        assert!(
            n == 1,
            "connection closed during the upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    s
}

/// Reads (and discards) from `s` until EOF or a reset; returns how long that took.
/// Panics when the connection is still open after `deadline`.
pub(crate) fn wait_eof(s: &mut std::net::TcpStream, deadline: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        assert!(!left.is_zero(), "connection still open after {deadline:?}");
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("connection still open after {deadline:?}")
            }
            Err(_) => return start.elapsed(),
        }
    }
}

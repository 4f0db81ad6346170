//! imctl's side of the real-process harness: a live `imd serve` (the workspace's
//! testkit starts it on port 0, parses its ready line and kills it), the built `imctl`
//! pointed at it, and WebSocket clients that act as users' devices.
//!
//! imd is found next to imctl's own binary (`target/debug/imd`): `cargo test --workspace`
//! builds every binary first; alone, run `cargo build -p imd` before `cargo test -p imctl`.
//! Nothing here sleeps for luck: waits are for a condition under a deadline, except
//! [`Device::expect_silence`], a window that proves absence.

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shared::protocol::{ClientFrame, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a frame that must come may take.
pub(crate) const FRAME_DEADLINE: Duration = Duration::from_secs(5);

/// The built imctl.
pub(crate) fn imctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imctl"))
}

/// The built imd, next to imctl.
pub(crate) fn imd_bin() -> PathBuf {
    testkit::sibling_bin(imctl_bin(), "imd")
}

/// A running `imd serve` (the testkit's, through `Deref`: address, node id, restarts,
/// `imd token`) with its admin token, and the imctl and devices that act on it.
pub(crate) struct Imd {
    process: testkit::Imd,
    /// The admin token.
    pub(crate) admin: String,
}

impl Deref for Imd {
    type Target = testkit::Imd;

    fn deref(&self) -> &testkit::Imd {
        &self.process
    }
}

impl DerefMut for Imd {
    fn deref_mut(&mut self) -> &mut testkit::Imd {
        &mut self.process
    }
}

impl Imd {
    /// Starts imd on a free port in a fresh data dir.
    pub(crate) fn start() -> Imd {
        Imd::start_with(&[])
    }

    /// Starts imd with extra flags of `imd serve`; connections are not rate-limited.
    pub(crate) fn start_with(args: &[&str]) -> Imd {
        let process = testkit::Imd::builder(imd_bin())
            .args(["--connect-rate", "0"])
            .args(args.iter().copied())
            .start();
        let admin = process.admin_token();
        Imd { process, admin }
    }

    /// `imctl` pointed at this server with the admin token, environment scrubbed.
    pub(crate) fn imctl(&self) -> Command {
        let mut cmd = bare_imctl();
        cmd.env("IMCTL_SERVER", self.url())
            .env("IMCTL_TOKEN", &self.admin);
        cmd
    }

    /// Runs `imctl ARGS` to its end.
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        Run::of(self.imctl().args(args).output().expect("run imctl"), args)
    }

    /// Sends a message as `uid` over HTTP; returns the committed message.
    pub(crate) async fn send(&self, token: &str, to: &str, text: &str) -> Value {
        let body = serde_json::json!({"to": to, "body": {"text": text}});
        self.send_json(token, &body).await["msg"].clone()
    }

    /// `POST /v1/messages` with `body`; asserts a 200 and returns the answer.
    pub(crate) async fn send_json(&self, token: &str, body: &Value) -> Value {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/messages", self.url()))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST /v1/messages");
        assert!(resp.status().is_success(), "send: {}", resp.status());
        resp.json().await.expect("send answer")
    }

    /// Connects `uid`'s `device`.
    pub(crate) async fn device(&self, uid: &str, device: &str) -> Device {
        Device::connect(self, &self.token(uid, device))
            .await
            .unwrap_or_else(|e| panic!("{uid}/{device} could not connect: {e}"))
    }

    /// A token of `uid`'s web `device` with the `agent` role, which may set its
    /// availability.
    pub(crate) fn agent_token(&self, uid: &str, device: &str) -> String {
        self.helper(
            "token",
            &[
                "--uid",
                uid,
                "--device",
                device,
                "--platform",
                "web",
                "--role",
                "agent",
            ],
        )
    }

    /// Connects `uid`'s `device` with the `token` given.
    pub(crate) async fn device_with(&self, token: &str) -> Device {
        Device::connect(self, token)
            .await
            .unwrap_or_else(|e| panic!("could not connect: {e}"))
    }

    /// A client call: `method /v1/{path}` as the holder of `token`, with a JSON body;
    /// asserts a 2xx and returns the answer.
    pub(crate) async fn client_call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Value {
        let resp = reqwest::Client::new()
            .request(method.clone(), format!("{}/v1/{path}", self.url()))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} /v1/{path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} /v1/{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} /v1/{path}: {e}: {text}"))
    }

    /// Runs `imctl --json ARGS` until its lines satisfy `cond`, and returns them; fails
    /// with the last lines after [`FRAME_DEADLINE`].
    pub(crate) async fn wait_json(
        &self,
        args: &[&str],
        what: &str,
        cond: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let args: Vec<&str> = std::iter::once("--json")
            .chain(args.iter().copied())
            .collect();
        let end = Instant::now() + FRAME_DEADLINE;
        loop {
            let lines = self.run(&args).json_lines();
            if cond(&lines) {
                return lines;
            }
            assert!(
                Instant::now() < end,
                "imctl {args:?} never showed {what}; it last printed {lines:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `uid`'s `device` may connect now (false on an HTTP refusal).
    pub(crate) async fn can_connect(&self, uid: &str, device: &str) -> bool {
        Device::connect(self, &self.token(uid, device))
            .await
            .is_ok()
    }
}

/// imctl with no server, token or data dir from the runner's environment.
pub(crate) fn bare_imctl() -> Command {
    let mut cmd = Command::new(imctl_bin());
    for key in ["IMCTL_SERVER", "IMCTL_TOKEN", "IMD_DATA_DIR", "NO_COLOR"] {
        cmd.env_remove(key);
    }
    cmd.env("RUST_BACKTRACE", "1").stdin(Stdio::null());
    cmd
}

/// A finished imctl.
pub(crate) struct Run {
    /// Exit code (-1 when killed by a signal).
    pub(crate) code: i32,
    /// stdout.
    pub(crate) stdout: String,
    /// stderr.
    pub(crate) stderr: String,
    args: String,
}

impl Run {
    /// From a finished process.
    pub(crate) fn of(out: Output, args: &[&str]) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.join(" "),
        }
    }

    /// Asserts exit 0 and returns stdout.
    pub(crate) fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "imctl {} failed:\n{}", self.args, self.stderr);
        &self.stdout
    }

    /// stdout's lines as JSON objects.
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.ok()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    /// Asserts a clean failure: exit `code`, nothing on stdout, one line on stderr that
    /// holds `needle`, and no panic or stack trace. Returns that line.
    pub(crate) fn fails(&self, code: i32, needle: &str) -> &str {
        assert_eq!(
            self.code, code,
            "imctl {}: exit {} (want {code})\nstdout: {}\nstderr: {}",
            self.args, self.code, self.stdout, self.stderr
        );
        assert!(self.stdout.is_empty(), "stdout: {:?}", self.stdout);
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(!self.stderr.contains(bad), "{bad}: {}", self.stderr);
        }
        assert!(
            self.stderr.contains(needle),
            "imctl {}: {needle:?} not in stderr {:?}",
            self.args,
            self.stderr
        );
        self.stderr.trim_end()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A user's device on a WebSocket.
pub(crate) struct Device {
    ws: Ws,
}

impl Device {
    async fn connect(imd: &Imd, token: &str) -> Result<Device, String> {
        let url = format!("ws://{}/v1/ws?token={token}", imd.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Device { ws })
    }

    /// The next frame; `None` when the connection closed.
    pub(crate) async fn next(&mut self, deadline: Duration) -> Option<ServerFrame> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let msg = tokio::time::timeout_at(end, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {deadline:?}"));
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("a server frame"));
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {} // pings are answered by tungstenite
            }
        }
    }

    /// Waits for `kick` with `reason`, then for the close.
    pub(crate) async fn expect_kick(&mut self, reason: &str) {
        loop {
            match self.next(FRAME_DEADLINE).await {
                Some(ServerFrame::Kick { reason: r }) => {
                    assert_eq!(r, reason);
                    break;
                }
                Some(ServerFrame::Msg { .. }) => {}
                other => panic!("expected kick {reason}, got {other:?}"),
            }
        }
        assert!(
            self.next(FRAME_DEADLINE).await.is_none(),
            "closed after kick"
        );
    }

    /// The next push: acks it and returns its useq and text.
    pub(crate) async fn push(&mut self) -> (u64, String) {
        match self.next(FRAME_DEADLINE).await {
            Some(ServerFrame::Msg { useq, msg }) => {
                self.ack(useq).await;
                let text = msg
                    .body
                    .as_ref()
                    .and_then(|b| b["text"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                (useq, text)
            }
            other => panic!("expected a push, got {other:?}"),
        }
    }

    /// Acks `useq`.
    pub(crate) async fn ack(&mut self, useq: u64) {
        let frame = serde_json::to_string(&ClientFrame::Ack { useqs: vec![useq] }).unwrap();
        self.ws
            .send(WsMessage::text(frame))
            .await
            .expect("send ack");
    }

    /// Asserts that no frame comes within `window`.
    pub(crate) async fn expect_silence(&mut self, window: Duration) {
        if let Ok(frame) = tokio::time::timeout(window, self.ws.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }
}

/// A long-running imctl (`tail`), its stdout and stderr read line by line.
pub(crate) struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    /// Spawns `cmd` with piped output.
    pub(crate) fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imctl");
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// The next stdout line.
    pub(crate) fn line(&self) -> String {
        self.stdout
            .recv_timeout(FRAME_DEADLINE)
            .unwrap_or_else(|e| panic!("no stdout line: {e}"))
    }

    /// Waits for a stderr line holding `needle`.
    pub(crate) fn stderr_until(&self, needle: &str) -> String {
        loop {
            let line = self
                .stderr
                .recv_timeout(FRAME_DEADLINE)
                .unwrap_or_else(|e| panic!("no stderr line with {needle:?}: {e}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for the exit code.
    pub(crate) fn wait(&mut self) -> i32 {
        let end = Instant::now() + FRAME_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < end, "imctl did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! imbench's side of the test harness: a runner for the `imbench` binary with a time
//! bound, its `agent --listen` processes, a real `imd serve` (the workspace's testkit
//! starts it, parses its ready line and kills it), and [`fake_imd`], an in-process
//! stand-in for imd's WebSocket contract with fault knobs.

mod fake_imd;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) use fake_imd::{FakeImd, Faults};
use serde_json::Value;
pub(crate) use testkit::Imd;

pub(crate) const SECRET: &str = "test-secret";
pub(crate) const ADMIN: &str = "test-admin-token";

/// What an `imbench` run left behind.
pub(crate) struct RunResult {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) report: Value,
    /// The HTML chart written next to the report.
    pub(crate) chart: String,
}

impl RunResult {
    /// Asserts that imbench exited with `code`, showing its output when it did not.
    #[track_caller]
    pub(crate) fn assert_exit(&self, code: i32) {
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
pub(crate) fn imbench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imbench"))
}

/// A short verified chat against `url` signed with `secret`: 20 connections, 200 msg/s
/// for `duration`, then a 1 s drain; `extra` picks the agents.
pub(crate) fn chat_args<'a>(
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
pub(crate) async fn run_imbench(args: &[&str], limit: Duration) -> RunResult {
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

/// A real `imd serve` on a temporary data dir (the testkit's, killed on drop) that
/// takes tokens signed with `secret`, with no connect or send rate limit.
pub(crate) fn start_imd_with(secret: &str) -> Imd {
    start_imd_limited(secret, &["--connect-rate", "0", "--send-rate", "0"])
}

/// [`start_imd_with`], with imd's rate limits as `limits` sets them (`--connect-rate`,
/// `--connect-burst`, `--send-rate`, `--send-burst`; those it leaves out keep imd's
/// defaults).
pub(crate) fn start_imd_limited(secret: &str, limits: &[&str]) -> Imd {
    Imd::builder(testkit::sibling_bin(imbench_bin(), "imd"))
        .args(["--token-secret", secret, "--admin-token", ADMIN])
        .args(limits.iter().copied())
        .start()
}

/// How a [`RemoteAgent`] gets its `--token-secret`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SecretBy {
    /// The `--token-secret` flag.
    Flag,
    /// The `IMBENCH_TOKEN_SECRET` environment variable.
    Env,
}

/// The address in the `{"event":"listening","listen":…}` line that `imbench agent
/// --listen` and `imbench relay` print on stdout once bound (`child`'s stdout must be
/// piped); `None` when none comes within 20 s.
pub(crate) fn listening_addr(child: &mut Child) -> Option<String> {
    let stdout = child.stdout.take()?;
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
    rx.recv_timeout(Duration::from_secs(20)).ok()
}

/// `imbench agent --listen 127.0.0.1:0 --token-secret S`, killed (by its handle) on
/// drop. Its stderr is kept (and echoed) so that tests can wait for its log lines.
pub(crate) struct RemoteAgent {
    child: Child,
    pub(crate) addr: String,
    stderr: Arc<Mutex<String>>,
}

impl RemoteAgent {
    /// Starts an agent that holds `secret`, given by flag.
    pub(crate) fn start(secret: &str) -> RemoteAgent {
        Self::start_with(secret, SecretBy::Flag)
    }

    /// Starts an agent that holds `secret`, given as `by` says.
    pub(crate) fn start_with(secret: &str, by: SecretBy) -> RemoteAgent {
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
        match listening_addr(&mut child) {
            Some(addr) => RemoteAgent {
                child,
                addr,
                stderr,
            },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("imbench agent --listen printed no listening line within 20 s");
            }
        }
    }

    /// Whether the agent process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits, up to `limit`, until the agent's stderr contains `needle`; panics with
    /// what it did print otherwise.
    pub(crate) async fn wait_for_log(&self, needle: &str, limit: Duration) {
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

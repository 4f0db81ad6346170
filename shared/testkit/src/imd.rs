//! One `imd serve` process for a test: started on port 0 (or a given address) in a
//! temporary data dir, its one JSON ready line parsed under a deadline, its stderr kept
//! in a file (its tail printed when the test panics), signalled, restarted on the same
//! data dir, and killed on drop. The helpers `imd token` and `imd admin-token` run on
//! the same data dir and flags, so the tokens they mint are the server's.
//!
//! Modelled on nats.rs's server helper. The binary's path comes from the caller:
//! `env!("CARGO_BIN_EXE_imd")` exists only in imd's own tests, the others find it with
//! [`crate::sibling_bin`]. It must not speak imd's protocol (HTTP API, WebSocket
//! frames): that belongs to the tests of the crate that needs it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the binary may take to print its ready line.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a just-freed port may take to be bindable again.
const REBIND_DEADLINE: Duration = Duration::from_secs(10);
/// Flags of `imd serve` that `imd token` and `imd admin-token` take too: without them
/// the helpers would sign with the data dir's generated secret, not the server's.
const COMMON_FLAGS: [&str; 6] = [
    "--config",
    "--token-secret",
    "--token-kid",
    "--token-secrets-old",
    "--admin-token",
    "--admin-tokens-old",
];
/// How many lines of stderr a panicking test prints.
const STDERR_TAIL: usize = 60;

/// What the ready line says: `{"event":"ready","listen":…,"node_id":…,"rpc"?:…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The bound HTTP/WebSocket address.
    pub listen: SocketAddr,
    /// The node id.
    pub node_id: String,
    /// The bound RPC address of a node that serves one.
    pub rpc: Option<SocketAddr>,
}

impl Ready {
    /// Parses a ready line; panics with the line when it is not one.
    pub fn parse(line: &str) -> Ready {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("ready line is not JSON ({e}): {line:?}"));
        assert_eq!(v["event"], "ready", "ready line: {line}");
        let listen = v["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("ready line has no listen address: {line}"));
        let node_id = v["node_id"]
            .as_str()
            .unwrap_or_else(|| panic!("ready line has no node_id: {line}"))
            .to_owned();
        let rpc = match &v["rpc"] {
            Value::Null => None,
            other => Some(
                other
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("ready line has a bad rpc address: {line}")),
            ),
        };
        Ready {
            listen,
            node_id,
            rpc,
        }
    }
}

/// Builder of an [`Imd`]: extra flags, environment, a TOML config file, a data dir.
#[derive(Debug, Clone)]
pub struct ImdBuilder {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    config_toml: Option<String>,
    data_dir: Option<PathBuf>,
}

impl ImdBuilder {
    /// A server of the binary at `bin`, with no extra flags.
    pub fn new(bin: impl Into<PathBuf>) -> ImdBuilder {
        ImdBuilder {
            bin: bin.into(),
            args: Vec::new(),
            env: Vec::new(),
            config_toml: None,
            data_dir: None,
        }
    }

    /// Adds flags of `imd serve`. `--config` and the secrets' flags (`--token-secret`,
    /// `--token-kid`, `--admin-token`, …) are passed to `imd token` and `imd admin-token`
    /// too.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the server and the helpers.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes `text` to a config file and passes `--config` to the server and helpers.
    pub fn config_toml(mut self, text: &str) -> Self {
        self.config_toml = Some(text.to_owned());
        self
    }

    /// Uses `dir` as the data dir instead of a fresh one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Starts the server on `127.0.0.1:0` and waits for its ready line.
    pub fn start(self) -> Imd {
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
            bin: self.bin,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_id: String::new(),
            rpc: None,
            data_dir,
            args,
            env: self.env,
            stdout: Arc::new(Mutex::new(Vec::new())),
            starts: 0,
            work,
        };
        imd.spawn("127.0.0.1:0");
        imd
    }
}

/// A running `imd serve` process, killed on drop.
#[derive(Debug)]
pub struct Imd {
    bin: PathBuf,
    child: Option<Child>,
    /// The bound HTTP/WebSocket address, from the ready line.
    pub addr: SocketAddr,
    /// The node id, from the ready line.
    pub node_id: String,
    /// The bound RPC address, from the ready line, when it names one.
    pub rpc: Option<SocketAddr>,
    data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Every stdout line of the current process, the ready line first.
    stdout: Arc<Mutex<Vec<String>>>,
    starts: usize,
    work: tempfile::TempDir,
}

impl Imd {
    /// A builder of a server of the binary at `bin`.
    pub fn builder(bin: impl Into<PathBuf>) -> ImdBuilder {
        ImdBuilder::new(bin)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The data dir; it outlives restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A scratch directory that lives as long as this value.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// `imd <sub> --data-dir DIR` with the test's environment: the runner's own `IMD_*`
    /// removed, `RUST_LOG` from `IMD_TEST_LOG` (default `warn`), stdin closed.
    pub fn command(&self, sub: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
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
        cmd.arg(sub)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null());
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
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Every stdout line of the current process so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    fn spawn(&mut self, listen: &str) {
        self.starts += 1;
        let stderr = File::create(self.stderr_path()).expect("stderr log");
        let mut cmd = self.command("serve");
        cmd.args(["--listen", listen]).args(&self.args);
        cmd.stdout(Stdio::piped()).stderr(stderr);
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
        let ready = Ready::parse(&line);
        self.addr = ready.listen;
        self.node_id = ready.node_id;
        self.rpc = ready.rpc;
    }

    /// The process id of the current process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("imd is running").id()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors only when it already exited; `wait` reaps it either way. No panic
            // here: this also runs in `Drop`, maybe while a test is panicking.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM; see [`Imd::wait_exit`].
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT; see [`Imd::wait_exit`].
    pub fn sigint(&self) {
        self.signal("INT");
    }

    /// Sends SIGHUP (reload).
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Freezes the process (SIGSTOP) until [`Imd::sigcont`]; a frozen one still dies
    /// by `kill9`, so `Drop` ends it either way.
    pub fn sigstop(&self) {
        self.signal("STOP");
    }

    /// Wakes a process frozen by [`Imd::sigstop`].
    pub fn sigcont(&self) {
        self.signal("CONT");
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
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
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
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn("127.0.0.1:0");
    }

    /// Like [`Imd::restart`], on the same address: for a client that must find the
    /// server where it was.
    pub fn restart_same_port(&mut self) {
        self.kill9();
        let listen = self.addr.to_string();
        // The port was just freed; binding it again may race a lingering socket.
        let end = Instant::now() + REBIND_DEADLINE;
        while TcpListener::bind(self.addr).is_err() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn(&listen);
    }

    /// Runs `imd <sub> --data-dir … <common flags> <extra>` and returns its one stdout line.
    pub fn helper(&self, sub: &str, extra: &[&str]) -> String {
        let out = self
            .command(sub)
            .args(self.common_args())
            .args(extra)
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

    /// A token of `uid`'s web `device`, from `imd token`.
    pub fn token(&self, uid: &str, device: &str) -> String {
        self.helper(
            "token",
            &["--uid", uid, "--device", device, "--platform", "web"],
        )
    }

    /// The admin token, from `imd admin-token`.
    pub fn admin_token(&self) -> String {
        self.helper("admin-token", &[])
    }
}

impl Drop for Imd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(STDERR_TAIL).collect();
            eprintln!("--- imd stderr (last {} lines) ---", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_line_with_and_without_rpc() {
        let r = Ready::parse(r#"{"event":"ready","listen":"127.0.0.1:4000","node_id":"n1"}"#);
        assert_eq!(r.listen, SocketAddr::from(([127, 0, 0, 1], 4000)));
        assert_eq!(r.node_id, "n1");
        assert_eq!(r.rpc, None);
        let r = Ready::parse(
            r#"{"event":"ready","listen":"127.0.0.1:4000","node_id":"n1","rpc":"127.0.0.1:4001"}"#,
        );
        assert_eq!(r.rpc, Some(SocketAddr::from(([127, 0, 0, 1], 4001))));
    }

    #[test]
    #[should_panic(expected = "ready line")]
    fn another_event_is_not_a_ready_line() {
        Ready::parse(r#"{"event":"listening","listen":"127.0.0.1:4000"}"#);
    }

    #[test]
    fn the_helpers_get_the_flags_that_choose_the_secrets() {
        let imd = ImdBuilder::new("imd").args([
            "--token-secret",
            "s",
            "--roles",
            "worker",
            "--admin-token=a",
        ]);
        let probe = Imd {
            bin: imd.bin,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            node_id: String::new(),
            rpc: None,
            data_dir: PathBuf::new(),
            args: imd.args,
            env: Vec::new(),
            stdout: Arc::default(),
            starts: 0,
            work: tempfile::tempdir().expect("tempdir"),
        };
        assert_eq!(
            probe.common_args(),
            ["--token-secret", "s", "--admin-token=a"]
        );
    }
}

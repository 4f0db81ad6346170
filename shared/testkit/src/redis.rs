//! Real `redis-server` processes for tests: one standalone server, or a 3-node Redis
//! Cluster made with `redis-cli --cluster create`. Each lives in its own temporary
//! directory, on ports picked free, and is killed on drop.
//!
//! `bash .ci/test` installs `redis-server` and `redis-cli` when they are missing. What a
//! test does to a server beyond starting it (restarting it, reading its keys) is the
//! test's own business.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How long a server may take to answer `PING`, and a cluster to reach `cluster_state:ok`.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// Sends one inline command over a fresh connection and returns the raw reply, or
/// `None` when nobody answers.
fn raw_command(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One `redis-server` process.
#[derive(Debug)]
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` on a free port in `dir` with `extra` settings, and waits for
/// `PING`. Retries on another port when the chosen one was taken meanwhile.
fn start_server(dir: &std::path::Path, extra: &[String]) -> Server {
    for _ in 0..5 {
        let port = free_port();
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dbfilename".into(),
            format!("dump-{port}.rdb"),
        ];
        args.extend(extra.iter().map(|a| a.replace("{port}", &port.to_string())));
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start redis-server (install it: apt-get install redis-server; bash .ci/test does)",
            );
        let mut server = Server { child, port };
        let end = Instant::now() + READY_DEADLINE;
        loop {
            if raw_command(port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                return server;
            }
            if server
                .child
                .try_wait()
                .expect("poll redis-server")
                .is_some()
            {
                break; // the port was taken; try another
            }
            assert!(
                Instant::now() < end,
                "redis-server on port {port} never answered PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("could not start redis-server on a free port");
}

/// A running Redis, standalone or a cluster; everything stops on drop.
#[derive(Debug)]
pub struct Redis {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// One standalone server.
    pub fn standalone() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("imd-redis-")
            .tempdir()
            .expect("tempdir");
        let server = start_server(dir.path(), &[]);
        Redis {
            servers: vec![server],
            _dir: dir,
        }
    }

    /// A Redis Cluster of three masters without replicas, every slot assigned.
    pub fn cluster() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("imd-redis-cluster-")
            .tempdir()
            .expect("tempdir");
        let servers: Vec<Server> = (0..3)
            .map(|_| {
                let bus = free_port();
                start_server(
                    dir.path(),
                    &[
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        "nodes-{port}.conf".into(),
                        "--cluster-port".into(),
                        bus.to_string(),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                    ],
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for s in &servers {
            create.arg(format!("127.0.0.1:{}", s.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create (install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let end = Instant::now() + READY_DEADLINE;
        for s in &servers {
            loop {
                let info = raw_command(s.port, "CLUSTER INFO").unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "cluster never reached cluster_state:ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Redis { servers, _dir: dir }
    }

    /// What `imd --redis` takes: the URL of each server, comma-separated.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        self.servers.len() > 1
    }

    /// Empties every server (`FLUSHALL`): what a restart without persistence, or a
    /// failover to an empty replica, leaves.
    pub fn flush_all(&self) {
        for s in &self.servers {
            let answer = raw_command(s.port, "FLUSHALL").unwrap_or_default();
            assert!(
                answer.starts_with("+OK"),
                "FLUSHALL on {}: {answer:?}",
                s.port
            );
        }
    }
}

//! `imctl tui` in a real terminal: tmux runs it at 80×24 against a live imd, keys go in
//! with `send-keys`, the screen comes back with `capture-pane`.
//!
//! tmux is required, not optional: without it this test fails and says so (CI installs
//! it), rather than skipping in silence.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::Imd;

/// How long the screen may take to show what a step expects.
const SCREEN_DEADLINE: Duration = Duration::from_secs(10);

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "`tmux -V` failed ({}): the TUI smoke test needs tmux",
                out.status
            ),
            Err(e) => panic!(
                "tmux is not installed ({e}): the TUI smoke test needs it \
                 (apt-get install tmux); CI installs it"
            ),
        }
        // Unique per process and per server in it: tmux servers share one socket dir.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Tmux {
            socket: format!("imctl-test-{}-{n}", std::process::id()),
        }
    }

    /// Runs `imctl tui` against `imd` in a new 80×24 session `tui`; its exit status
    /// goes to `status_file` as `exit=N`.
    fn console(&self, imd: &Imd, status_file: &Path) {
        let bin = common::imctl_bin();
        let server = format!("IMCTL_SERVER={}", imd.url());
        let token = format!("IMCTL_TOKEN={}", imd.admin);
        self.tmux(&[
            "new-session",
            "-d",
            "-s",
            "tui",
            "-x",
            "80",
            "-y",
            "24",
            "-e",
            &server,
            "-e",
            &token,
            "-e",
            "RUST_BACKTRACE=1",
            // sh waits for imctl and writes its exit status down: tmux may mark the pane
            // dead (the pty closed) without ever reporting the status.
            &format!(
                "'{}' tui; echo \"exit=$?\" > '{}'",
                bin.display(),
                status_file.display()
            ),
        ]);
        // Keep the pane after imctl exits, to read its exit status and its last screen.
        self.tmux(&["set-option", "-t", "tui", "remain-on-exit", "on"]);
    }

    /// Presses `q` and waits for the console's exit status; returns it with the screen
    /// left behind.
    fn quit(&self, status_file: &Path) -> (String, String) {
        self.keys(&["q"]);
        let end = Instant::now() + SCREEN_DEADLINE;
        let status = loop {
            if let Ok(text) = std::fs::read_to_string(status_file)
                && text.ends_with('\n')
            {
                break text.trim().to_owned();
            }
            assert!(
                Instant::now() < end,
                "imctl tui did not exit on q; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, self.screen())
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The visible screen.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "tui"]).stdout)
            .into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "tui"];
        args.extend(keys);
        self.tmux(&args);
    }

    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "tui", "-l", text]);
    }

    /// Waits until the screen holds every one of `needles`; returns it.
    fn wait_for(&self, needles: &[&str]) -> String {
        self.wait_screen(&format!("{needles:?}"), |s| {
            needles.iter().all(|n| s.contains(n))
        })
    }

    fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + SCREEN_DEADLINE;
        loop {
            let screen = self.screen();
            if cond(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < end,
                "the screen never showed {what}; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Only this test's own server, by its socket.
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[tokio::test]
async fn the_console_in_a_real_terminal() {
    let mut imd = Imd::start();
    let mut alice = imd.device("alice", "laptop").await;
    let tmux = Tmux::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    let status_file = scratch.path().join("status");
    tmux.console(&imd, &status_file);

    // The dashboard: the node, its connection, the key help.
    tmux.wait_for(&[
        "1 Dashboard",
        &imd.node_id,
        "connections 1",
        "acks pending 0",
        "q quit",
    ]);

    // Connections: find alice, kick her after a y/n question.
    tmux.keys(&["2"]);
    tmux.wait_for(&["alice", "laptop", "k kick"]);
    tmux.keys(&["k"]);
    tmux.wait_for(&["Kick every device of alice (1 device)?"]);
    tmux.keys(&["y"]);
    alice.expect_kick("admin").await;
    tmux.wait_for(&["kicked 1 device of alice", "connections (0)"]);

    // Tail: pick a conversation, see a message sent to it.
    tmux.keys(&["4", "c"]);
    tmux.type_text("d:alice~bob");
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["d:alice~bob live"]);
    let alice_token = imd.token("alice", "laptop");
    imd.send(&alice_token, "bob", "hello from the test").await;
    tmux.wait_for(&["#1 ", "alice: hello from the test"]);

    // The server goes away: the banner says so, the console stays.
    imd.kill9();
    tmux.wait_for(&["server unreachable, retrying", "cannot reach imd at"]);
    // It comes back on the same address: the banner goes, the tail resumes.
    imd.restart_same_port();
    tmux.wait_screen("the banner gone", |s| !s.contains("unreachable"));
    tmux.wait_for(&["d:alice~bob live"]);
    imd.send(&alice_token, "bob", "after the restart").await;
    tmux.wait_for(&["#2 ", "alice: after the restart"]);
    tmux.keys(&["1"]);
    tmux.wait_for(&[&imd.node_id, "updated"]);

    // q quits with status 0 and gives the terminal back (the alternate screen is gone).
    let (status, screen) = tmux.quit(&status_file);
    assert_eq!(status, "exit=0", "screen:\n{screen}");
    assert!(
        !screen.contains("1 Dashboard"),
        "terminal not restored:\n{screen}"
    );
    assert!(!screen.contains("panicked"), "{screen}");
}

/// The cells of the table row whose first cell is `first`, in a bordered table.
fn row(screen: &str, first: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|l| {
        let cells: Vec<String> = l
            .trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (cells.first().map(String::as_str) == Some(first)).then_some(cells)
    })
}

#[tokio::test]
async fn the_service_tab_follows_a_shop_live() {
    let imd = Imd::start();
    imd.run(&["shop", "set", "s1", "--max-open", "1"]).ok();
    imd.run(&["shop", "agents", "s1", "ann", "bob"]).ok();
    // ann, an agent, takes carol and answers her; bob is offline.
    let ann = imd.agent_token("ann", "desk");
    let _desk = imd.device_with(&ann).await;
    imd.wait_json(&["shop", "stats", "s1"], "ann online", |l| {
        l[0]["agents_online"] == 1
    })
    .await;
    let carol = imd.token("carol", "phone");
    let sent = imd
        .send_json(
            &carol,
            &serde_json::json!({"shop": "s1", "body": {"text": "hi"}}),
        )
        .await;
    let conv = sent["msg"]["conv"].as_str().expect("conv").to_owned();
    imd.send_json(
        &ann,
        &serde_json::json!({"conv": conv, "body": {"text": "hello, carol"}}),
    )
    .await;

    let tmux = Tmux::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    let status_file = scratch.path().join("status");
    tmux.console(&imd, &status_file);
    tmux.wait_for(&["1 Dashboard", &imd.node_id]);
    tmux.keys(&["5"]);
    tmux.wait_for(&[
        "5 Service",
        "shops (1)",
        "REPLY p50/p90",
        "agents of s1 (2)",
    ]);
    // s1: 1 of 2 agents online, 1 available, 1 open, none waiting, cap 1, a first
    // response, no rating yet.
    let screen = tmux.wait_screen("s1 answered", |s| {
        row(s, "s1").is_some_and(|r| r.len() == 8 && r[6] != "-")
    });
    let s1 = row(&screen, "s1").unwrap();
    assert_eq!(&s1[..6], ["s1", "1/2", "1", "1", "0", "1"], "{screen}");
    // p50/p90 of the one answer: one bucket's bound, twice.
    let (p50, p90) = s1[6].split_once('/').expect("p50/p90");
    assert!(p50 == p90 && p50.ends_with('s'), "{screen}");
    assert_eq!(s1[7], "-", "{screen}");
    assert_eq!(
        row(&screen, "ann").unwrap(),
        ["ann", "yes", "available", "1/1"]
    );
    assert_eq!(row(&screen, "bob").unwrap(), ["bob", "no", "-", "0/1"]);

    // Live: dave queues behind ann's cap, then ann steps away.
    let dave = imd.token("dave", "phone");
    imd.send_json(
        &dave,
        &serde_json::json!({"shop": "s1", "body": {"text": "anyone?"}}),
    )
    .await;
    tmux.wait_screen("dave waiting", |s| {
        row(s, "s1").is_some_and(|r| r[4] == "1")
    });
    imd.client_call(
        reqwest::Method::PUT,
        "agent/status",
        &ann,
        &serde_json::json!({"status": "away"}),
    )
    .await;
    let screen = tmux.wait_screen("ann away", |s| {
        row(s, "ann").is_some_and(|r| r[2] == "away")
    });
    assert_eq!(
        &row(&screen, "s1").unwrap()[..5],
        ["s1", "1/2", "0", "1", "1"]
    );

    let (status, screen) = tmux.quit(&status_file);
    assert_eq!(status, "exit=0", "screen:\n{screen}");
    assert!(!screen.contains("panicked"), "{screen}");
}

//! `imctl tui` in a real terminal: tmux runs it at 80×24 against a live imd, keys go in
//! with `send-keys`, the screen comes back with `capture-pane`.
//!
//! tmux is required, not optional: without it this test fails and says so (CI installs
//! it), rather than skipping in silence.

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
    let bin = common::imctl_bin();
    let server = format!("IMCTL_SERVER={}", imd.url());
    let token = format!("IMCTL_TOKEN={}", imd.admin);
    let scratch = tempfile::tempdir().expect("tempdir");
    let status_file = scratch.path().join("status");
    tmux.tmux(&[
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
        // sh waits for imctl and writes its exit status down: tmux may mark the pane dead
        // (the pty closed) without ever reporting the status.
        &format!(
            "'{}' tui; echo \"exit=$?\" > '{}'",
            bin.display(),
            status_file.display()
        ),
    ]);
    // Keep the pane after imctl exits, to read its exit status and its last screen.
    tmux.tmux(&["set-option", "-t", "tui", "remain-on-exit", "on"]);

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
    tmux.keys(&["q"]);
    let end = Instant::now() + SCREEN_DEADLINE;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && text.ends_with('\n')
        {
            break text.trim().to_owned();
        }
        assert!(
            Instant::now() < end,
            "imctl tui did not exit on q; screen:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let screen = tmux.screen();
    assert_eq!(status, "exit=0", "screen:\n{screen}");
    assert!(
        !screen.contains("1 Dashboard"),
        "terminal not restored:\n{screen}"
    );
    assert!(!screen.contains("panicked"), "{screen}");
}

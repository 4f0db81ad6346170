//! `imbench relay`, the bare floor, as a real process: a verified chat against it
//! loses nothing (so a run can put imd's figures next to the floor's), and it refuses
//! a connection without a valid token, as imd does.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{SECRET, chat_args, imbench_bin, listening_addr, run_imbench};

/// An `imbench relay` process, killed on drop.
struct Relay {
    child: Child,
    url: String,
}

impl Relay {
    fn start() -> Relay {
        let mut child = Command::new(imbench_bin())
            .args(["relay", "--listen", "127.0.0.1:0", "--token-secret", SECRET])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let Some(addr) = listening_addr(&mut child) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("imbench relay printed no listening line within 20 s");
        };
        Relay {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_chat_against_the_relay_loses_nothing() {
    let relay = tokio::task::spawn_blocking(Relay::start).await.unwrap();
    let r = run_imbench(
        &chat_args(&relay.url, SECRET, "2s", &["--local-agents", "1"]),
        Duration::from_secs(60),
    )
    .await;
    r.assert_exit(0);
    let m = &r.report["messages"];
    assert!(m["delivered"].as_u64().unwrap() > 0, "{}", r.report);
    for field in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(m[field], 0, "{field} in {}", r.report);
    }
}

#[tokio::test]
async fn the_relay_refuses_a_connection_without_a_valid_token() {
    let relay = tokio::task::spawn_blocking(Relay::start).await.unwrap();
    let ws = relay.url.replace("http://", "ws://");
    let refused = tokio_tungstenite::connect_async(format!("{ws}/v1/ws?token=nope")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

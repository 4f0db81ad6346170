//! Process and session lifecycle against a real process: the ready line, replaced
//! sessions, SIGTERM, and the idle timeout.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{FRAME_DEADLINE, Imd, raw_upgrade, wait_eof};

/// The ready line is one JSON object with the bound address and the node id, and it is
/// the only thing on stdout.
#[tokio::test]
async fn ready_line_names_the_bound_address_and_node() {
    let imd = Imd::start(&[]);
    let lines = imd.stdout_lines();
    assert_eq!(lines.len(), 1, "stdout: {lines:?}");
    let ready: Value = serde_json::from_str(&lines[0]).expect("ready line is JSON");
    let addr: SocketAddr = ready["listen"]
        .as_str()
        .expect("listen")
        .parse()
        .expect("an address");
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the bound port, not the asked-for 0");
    assert_eq!(ready["node_id"], json!(format!("imd-{}", addr.port())));
    assert_eq!(imd.http().get("/healthz", None).await.status, 200);
}

/// A second connection of the same uid and device replaces the first, which gets
/// `kick` `replaced` and is closed; pushes go to the new one.
#[tokio::test]
async fn second_connection_of_a_device_replaces_the_first() {
    let imd = Imd::start(&[]);
    let mut old = imd.ws_as("alice", "a1").await;
    let mut new = imd.ws_as("alice", "a1").await;
    assert_eq!(old.expect_kick().await, "replaced");
    old.expect_closed(FRAME_DEADLINE).await;

    new.ping_pong().await;
    let bob = imd.token("bob", "b1");
    let sent = imd.http().send_to(&bob, "alice", None, json!("hi")).await;
    let (useq, msg) = new.expect_push().await;
    assert_eq!((useq, msg), (1, sent));
    new.ack(&[useq]).await;

    // Another device of the same user is not replaced.
    let mut other = imd.ws_as("alice", "a2").await;
    other.ping_pong().await;
    new.ping_pong().await;
    assert!(
        new.take_pending()
            .iter()
            .all(|f| !matches!(f, shared::protocol::ServerFrame::Kick { .. })),
        "a different device kicked the first"
    );
}

/// SIGTERM: every open WebSocket gets `kick` `shutdown` and is closed, the process exits
/// with status 0, and what was acknowledged is there after a restart.
#[tokio::test]
async fn sigterm_kicks_with_shutdown_and_exits_0() {
    let mut imd = Imd::start(&["--shutdown-grace", "5s"]);
    let mut a = imd.ws_as("alice", "a1").await;
    let mut b = imd.ws_as("bob", "b1").await;
    a.send_to("bob", "before", json!("x")).await;
    let sent = a.expect_sent("before").await;

    imd.sigterm();
    for (name, c) in [("alice", &mut a), ("bob", &mut b)] {
        let reason = c.expect_kick().await;
        assert_eq!(reason, "shutdown", "{name}'s kick");
        c.expect_closed(Duration::from_secs(10)).await;
    }
    let status = imd.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let lines = imd.stdout_lines();
    assert_eq!(
        lines.len(),
        1,
        "stdout holds only the ready line: {lines:?}"
    );

    imd.restart();
    let bob = imd.token("bob", "b1");
    let inbox = imd.http().sync(&bob, 0, None).await;
    assert_eq!(inbox.msgs.len(), 1);
    assert_eq!(inbox.msgs[0].msg, sent);
}

/// SIGINT (Ctrl-C) shuts down the same way as SIGTERM.
#[tokio::test]
async fn sigint_kicks_with_shutdown_and_exits_0() {
    let mut imd = Imd::start(&["--shutdown-grace", "5s"]);
    let mut c = imd.ws_as("alice", "a1").await;
    imd.sigint();
    assert_eq!(c.expect_kick().await, "shutdown");
    c.expect_closed(Duration::from_secs(10)).await;
    let status = imd.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

/// SIGTERM with no client connected exits 0 too.
#[tokio::test]
async fn sigterm_when_idle_exits_0() {
    let mut imd = Imd::start(&[]);
    imd.sigterm();
    let status = imd.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

/// A client that answers nothing, not even the server's pings, is closed within the
/// idle timeout (plus one ping period of slack), and not long before it.
#[tokio::test]
async fn idle_timeout_closes_a_client_that_never_answers() {
    const IDLE: Duration = Duration::from_secs(1);
    let imd = Imd::start(&["--idle-timeout", "1s"]);
    let token = imd.token("alice", "a1");
    let mut dead = raw_upgrade(imd.addr, &token);
    let took = tokio::task::spawn_blocking(move || wait_eof(&mut dead, IDLE * 4))
        .await
        .expect("join reader");
    assert!(
        took >= IDLE / 2,
        "closed after {took:?}, well before the idle timeout"
    );
    // The server is fine afterwards.
    let mut c = imd.ws(&token).await;
    c.ping_pong().await;
}

/// A client that sends nothing of its own but answers pings stays connected well past
/// the idle timeout.
#[tokio::test]
async fn idle_timeout_spares_a_client_that_answers_pings() {
    const IDLE: Duration = Duration::from_secs(1);
    let imd = Imd::start(&["--idle-timeout", "1s"]);
    let mut c = imd.ws_as("alice", "a1").await;
    // tungstenite answers pings while we read; the window spans three idle timeouts.
    c.expect_no_frame_for(IDLE * 3).await;
    c.ping_pong().await;
}

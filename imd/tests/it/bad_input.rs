//! Guarantee 4 against a real process: bad input gets a clear error and the connection,
//! or the server, goes on serving.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use serde_json::json;
use shared::protocol::{ErrorCode, ServerFrame};

use crate::common::{Auth, FRAME_DEADLINE, Imd, WsClient, metric, try_ws, wait_until};

/// Sends `frame` over a fresh connection, expects `bad_request` (echoing `cid` when
/// given), then proves the connection still works with a ping and a send that commits
/// seq 1, so the bad frame committed nothing.
async fn bad_frame_keeps_connection(frame: &str, cid: Option<&str>) {
    let imd = Imd::start(&[]);
    let mut c = imd.ws_as("alice", "a1").await;
    c.send_text(frame).await;
    let (got_cid, code) = c.expect_error().await;
    assert_eq!(code, ErrorCode::BadRequest, "code for {frame}");
    if let Some(cid) = cid {
        assert_eq!(got_cid.as_deref(), Some(cid), "cid echoed for {frame}");
    }
    c.ping_pong().await;
    c.send_to("bob", "good", json!("still here")).await;
    let msg = c.expect_sent("good").await;
    assert_eq!(msg.seq, 1, "the bad frame committed nothing");
}

#[tokio::test]
async fn ws_malformed_json_is_bad_request() {
    bad_frame_keeps_connection(r#"{"type":"send","to":"bob","bo"#, None).await;
}

#[tokio::test]
async fn ws_non_object_json_is_bad_request() {
    bad_frame_keeps_connection(r#"[1,2,3]"#, None).await;
}

#[tokio::test]
async fn ws_unknown_type_is_bad_request() {
    bad_frame_keeps_connection(r#"{"type":"teleport","to":"bob"}"#, None).await;
}

#[tokio::test]
async fn ws_send_without_target_is_bad_request() {
    bad_frame_keeps_connection(
        r#"{"type":"send","cid":"no-target","body":"x"}"#,
        Some("no-target"),
    )
    .await;
}

#[tokio::test]
async fn ws_send_with_two_targets_is_bad_request() {
    bad_frame_keeps_connection(
        r#"{"type":"send","cid":"two","to":"bob","conv":"d:alice~bob","body":"x"}"#,
        Some("two"),
    )
    .await;
}

#[tokio::test]
async fn ws_send_to_invalid_uid_is_bad_request() {
    bad_frame_keeps_connection(
        r#"{"type":"send","cid":"sp","to":"bo b","body":"x"}"#,
        Some("sp"),
    )
    .await;
}

#[tokio::test]
async fn ws_send_to_too_long_uid_is_bad_request() {
    let frame = json!({"type": "send", "cid": "long", "to": "b".repeat(65), "body": "x"});
    bad_frame_keeps_connection(&frame.to_string(), Some("long")).await;
}

#[tokio::test]
async fn ws_send_with_too_long_cid_is_bad_request() {
    let frame = json!({"type": "send", "cid": "c".repeat(65), "to": "bob", "body": "x"});
    bad_frame_keeps_connection(&frame.to_string(), None).await;
}

#[tokio::test]
async fn ws_cid_of_64_bytes_is_accepted() {
    let imd = Imd::start(&[]);
    let mut c = imd.ws_as("alice", "a1").await;
    let cid = "c".repeat(64);
    c.send_to("bob", &cid, json!("x")).await;
    let msg = c.expect_sent(&cid).await;
    assert_eq!(msg.cid.as_deref(), Some(cid.as_str()));
}

#[tokio::test]
async fn ws_ack_with_bad_useqs_is_bad_request() {
    bad_frame_keeps_connection(r#"{"type":"ack","useqs":"all"}"#, None).await;
}

/// Frames are JSON text. A binary frame gets a clear answer: either a `bad_request`
/// error on a connection that stays open, or a close with 1003 (unsupported data); the
/// server serves on either way.
#[tokio::test]
async fn ws_binary_frame_is_refused_clearly() {
    let imd = Imd::start(&[]);
    let mut c = imd.ws_as("alice", "a1").await;
    c.send_binary(vec![0xde, 0xad, 0xbe, 0xef]).await;
    match c.next_frame_or_close(FRAME_DEADLINE).await {
        Ok(ServerFrame::Error { code, .. }) => {
            assert_eq!(code, ErrorCode::BadRequest);
            c.ping_pong().await;
        }
        Ok(other) => panic!("binary frame answered with {other:?}, want a bad_request error"),
        Err(code) => assert_eq!(
            code,
            Some(1003),
            "binary frame closed the connection without a clear code"
        ),
    }
    let mut other = imd.ws_as("alice", "a2").await;
    other.send_to("bob", "after", json!("ok")).await;
    other.expect_sent("after").await;
}

/// A frame over `--max-frame-bytes` closes that connection with 1009; one under it is
/// served, and so are other connections afterwards.
#[tokio::test]
async fn ws_frame_over_limit_closes_with_1009() {
    let imd = Imd::start(&["--max-frame-bytes", "4096"]);
    let mut c = imd.ws_as("alice", "a1").await;
    c.send_to("bob", "under", json!("x".repeat(3500))).await;
    c.expect_sent("under").await;

    c.send_to("bob", "over", json!("x".repeat(5000))).await;
    c.expect_close_code(1009).await;
    assert!(
        !c.take_pending()
            .iter()
            .any(|f| matches!(f, ServerFrame::Sent { .. })),
        "the oversize frame was not committed"
    );

    let mut other = imd.ws_as("alice", "a1").await;
    other.send_to("bob", "after", json!("ok")).await;
    let msg = other.expect_sent("after").await;
    assert_eq!(msg.seq, 2);
}

/// An HTTP body over the limit is 413 `too_large`; one under it is 200.
#[tokio::test]
async fn http_body_over_limit_is_413_too_large() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let alice = imd.token("alice", "a1");
    let under = json!({"to": "bob", "body": "x".repeat(60_000)});
    http.post_message(&alice, &under).await.assert_ok();
    let over = json!({"to": "bob", "body": "x".repeat(70_000)});
    http.post_message(&alice, &over)
        .await
        .assert_error(413, ErrorCode::TooLarge);
    let inbox = http.sync(&alice, 0, None).await;
    assert_eq!(
        inbox.msgs.len(),
        1,
        "only the message under the limit was committed"
    );
}

/// Malformed or rule-breaking HTTP bodies are 400 `bad_request`; the server goes on.
#[tokio::test]
async fn http_bad_bodies_are_400_bad_request() {
    let imd = Imd::start(&[]);
    let http = imd.http();
    let alice = imd.token("alice", "a1");
    for body in [
        r#"{"to":"bob","bo"#.to_owned(),
        "not json".to_owned(),
        r#"{"body":"no target"}"#.to_owned(),
        r#"{"to":"bob","conv":"d:alice~bob","body":"two targets"}"#.to_owned(),
        r#"{"to":"bo b","body":"invalid uid"}"#.to_owned(),
        json!({"to": "b".repeat(65), "body": "uid too long"}).to_string(),
        json!({"to": "bob", "cid": "c".repeat(65), "body": "cid too long"}).to_string(),
    ] {
        let resp = http
            .post_raw("/v1/messages", Some(&alice), body.clone().into_bytes())
            .await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.body);
        assert_eq!(
            resp.error_code(),
            Some("bad_request"),
            "{body}: {}",
            resp.body
        );
    }
    let msg = http.send_to(&alice, "bob", None, json!("fine")).await;
    assert_eq!(msg.seq, 1, "no bad body committed anything");
}

/// One client's garbage does not disturb another client's session.
#[tokio::test]
async fn garbage_from_one_client_does_not_disturb_others() {
    let imd = Imd::start(&[]);
    let mut bob = imd.ws_as("bob", "b1").await;
    let mut bad = imd.ws_as("mallory", "m1").await;
    for frame in ["", "{", "null", r#"{"type":7}"#, &"[".repeat(10_000)] {
        bad.send_text(frame).await;
    }
    let mut alice = imd.ws_as("alice", "a1").await;
    alice.send_to("bob", "hi", json!("hi")).await;
    let sent = alice.expect_sent("hi").await;
    let (useq, msg) = bob.expect_push().await;
    assert_eq!((useq, msg), (1, sent));
    // The bad client itself is still served too.
    bad.ping_pong().await;
    // And a fresh client still gets in.
    let t = imd.token("dave", "d1");
    let mut dave: WsClient = match try_ws(&imd.ws_url(), Auth::Header(&t)).await {
        Ok(c) => c,
        Err(status) => panic!("upgrade refused: {status}"),
    };
    dave.ping_pong().await;
}

/// Reads from `tcp` until the server closes it (EOF or reset), within `deadline`;
/// returns what it sent.
async fn read_until_closed(
    tcp: &mut (impl tokio::io::AsyncRead + Unpin),
    deadline: Duration,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await
        .unwrap_or_else(|_| panic!("the server kept the connection open past {deadline:?}"));
    String::from_utf8_lossy(&got).into_owned()
}

/// A client that pipelines requests and never reads the answers does not hold its
/// socket: once the buffers between it and the server are full, the server's write
/// waits, and after the idle timeout without progress the server closes the
/// connection and counts it.
#[tokio::test]
async fn http_clients_that_never_read_are_closed() {
    use tokio::io::AsyncWriteExt;
    let idle = Duration::from_secs(1);
    let imd = Imd::start(&["--idle-timeout", "1s"]);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (mut reader, mut writer) = socket.connect(imd.addr).await.unwrap().into_split();
    // /metrics answers with kilobytes: 4,000 answers fill any socket buffer. The
    // requests go out from their own task, which ends with the connection.
    let requests = tokio::spawn(async move {
        let request = b"GET /metrics HTTP/1.1\r\nHost: imd\r\n\r\n";
        for _ in 0..4000 {
            if writer.write_all(request).await.is_err() {
                return;
            }
        }
        let _ = std::future::pending::<()>().await;
    });
    let http = imd.http();
    wait_until(idle + FRAME_DEADLINE, "a write timeout counted", || async {
        metric(&http.metrics().await, "imd_http_write_timeouts_total") == Some(1.0)
    })
    .await;
    // What was in flight can still be read; then the connection is gone.
    let answers = read_until_closed(&mut reader, FRAME_DEADLINE).await;
    assert!(
        answers.starts_with("HTTP/1.1 200"),
        "{}",
        &answers[..answers.len().min(200)]
    );
    assert!(
        answers.matches("HTTP/1.1 200").count() < 4000,
        "the server stopped before answering every request"
    );
    requests.abort();
    assert_eq!(imd.http().get("/healthz", None).await.status, 200);
}

/// Reads one HTTP response (its head, then `Content-Length` bytes of body).
async fn read_response(tcp: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(FRAME_DEADLINE, tcp.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed mid-response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text.into_owned();
            }
        }
    }
}

/// Dead and slow HTTP clients do not hold their sockets: a connection that sends
/// nothing, half a request head, or stays silent after a keep-alive response is closed
/// once the idle timeout passes (not before), and a body that trickles in gets 400.
#[tokio::test]
async fn http_connections_silent_past_the_idle_timeout_are_closed() {
    use tokio::io::AsyncWriteExt;
    let idle = Duration::from_secs(1);
    let imd = Imd::start(&["--idle-timeout", "1s"]);
    let deadline = idle + FRAME_DEADLINE;

    // Connects and says nothing.
    let started = Instant::now();
    let mut silent = TcpStream::connect(imd.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent, deadline).await, "");
    assert!(
        started.elapsed() >= idle / 2,
        "closed before the idle timeout"
    );

    // Half a request head.
    let mut half = TcpStream::connect(imd.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: imd\r\n")
        .await
        .unwrap();
    read_until_closed(&mut half, deadline).await;

    // A keep-alive connection: two requests are answered, then silence closes it.
    let mut kept = TcpStream::connect(imd.addr).await.unwrap();
    let mut answers = 0;
    for _ in 0..2 {
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: imd\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut kept).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answers += 1;
    }
    assert_eq!(answers, 2);
    read_until_closed(&mut kept, deadline).await;

    // A body that stops arriving.
    let token = imd.token("alice", "a1");
    let mut slow = TcpStream::connect(imd.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: imd\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"to\":"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut slow, deadline).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("bad_request") && answer.contains("did not arrive"),
        "{answer}"
    );

    // The server goes on serving, and counted the connections it closed.
    assert_eq!(imd.http().get("/healthz", None).await.status, 200);
    let http = imd.http();
    wait_until(FRAME_DEADLINE, "three head timeouts counted", || async {
        metric(&http.metrics().await, "imd_http_head_timeouts_total") == Some(3.0)
    })
    .await;
}

//! A WebSocket client of imd's protocol: upgrades with the token where a test puts it
//! (header, query, none; from a chosen local address), decodes server frames, and waits
//! for the frame, kind of frame or close a test expects, keeping the frames it passes
//! for the next read. It never sleeps for luck: every read has a deadline.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shared::protocol::{ClientFrame, ErrorCode, InboxItem, Message, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{FRAME_DEADLINE, Resp};

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
    let socket = match local {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("tcp socket");
    socket
        .bind(SocketAddr::new(local, 0))
        .unwrap_or_else(|e| panic!("bind to {local}: {e}"));
    let stream = tokio::time::timeout(FRAME_DEADLINE, socket.connect(server))
        .await
        .unwrap_or_else(|_| panic!("connect from {local} to {server} timed out"))
        .unwrap_or_else(|e| panic!("connect from {local} to {server}: {e}"));
    upgrade_over(&url, req, stream).await
}

/// Tries the WebSocket upgrade over `stream`, already connected (a test may have
/// written a PROXY header on it first); `Ok(client)` on 101, `Err(answer)` (status and
/// body) when refused with an HTTP answer.
pub(crate) async fn try_ws_over(
    url: &str,
    auth: Auth<'_>,
    stream: TcpStream,
) -> Result<WsClient, Resp> {
    let (url, req) = ws_request(url, auth);
    upgrade_over(&url, req, stream).await
}

async fn upgrade_over(
    url: &str,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: TcpStream,
) -> Result<WsClient, Resp> {
    let local = stream.local_addr().expect("local address");
    let upgrade = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream));
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
        let ServerFrame::Synced { msgs, more, .. } = f else {
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

    /// Every frame that arrives within `window`, kept frames first: a bounded count of
    /// what came (the window is the caller's claim about how late a frame may be).
    /// Panics when the connection closes meanwhile.
    pub(crate) async fn frames_for(&mut self, window: Duration) -> Vec<ServerFrame> {
        let mut out: Vec<ServerFrame> = self.pending.drain(..).collect();
        let until = Instant::now() + window;
        loop {
            match self.raw_next(until).await {
                None => return out,
                Some(Next::Frame(f)) => out.push(f),
                Some(Next::Closed(how)) => {
                    panic!("connection closed within {window:?}: {how}; frames: {out:?}")
                }
            }
        }
    }

    /// Waits up to `timeout` for a `read` frame of `uid` in `conv` and returns its
    /// `seq`; other frames are kept.
    pub(crate) async fn expect_read(&mut self, timeout: Duration, conv: &str, uid: &str) -> u64 {
        let f = self
            .next_matching(
                timeout,
                &format!("read of {uid} in {conv}"),
                |f| matches!(f, ServerFrame::Read { conv: c, uid: u, .. } if c == conv && u == uid),
            )
            .await;
        let ServerFrame::Read { seq, .. } = f else {
            unreachable!("matched a read frame")
        };
        seq
    }

    /// Waits up to `timeout` for a `read` frame of `uid` in `conv` at `seq` exactly
    /// (a send may bring read frames of lower positions first; they are kept).
    pub(crate) async fn expect_read_at(
        &mut self,
        timeout: Duration,
        conv: &str,
        uid: &str,
        seq: u64,
    ) {
        self.next_matching(
            timeout,
            &format!("read of {uid} in {conv} at {seq}"),
            |f| matches!(f, ServerFrame::Read { conv: c, uid: u, seq: s } if c == conv && u == uid && *s == seq),
        )
        .await;
    }

    /// Waits up to `timeout` for a `typing` frame of `uid` in `conv`.
    pub(crate) async fn expect_typing(&mut self, timeout: Duration, conv: &str, uid: &str) {
        self.next_matching(
            timeout,
            &format!("typing of {uid} in {conv}"),
            |f| matches!(f, ServerFrame::Typing { conv: c, uid: u } if c == conv && u == uid),
        )
        .await;
    }

    /// Reads pushes (acking each) until one satisfies `pred`; returns it. Panics when
    /// none does within [`FRAME_DEADLINE`].
    pub(crate) async fn push_where(
        &mut self,
        what: &str,
        pred: impl Fn(&Message) -> bool,
    ) -> (u64, Message) {
        let until = Instant::now() + FRAME_DEADLINE;
        let mut passed = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no push of {what} within {FRAME_DEADLINE:?}; pushes before: {passed:?}");
            }
            let f = self
                .next_matching(left, &format!("push of {what}"), |f| {
                    matches!(f, ServerFrame::Msg { .. })
                })
                .await;
            let ServerFrame::Msg { useq, msg } = f else {
                unreachable!("matched a msg frame")
            };
            self.ack(&[useq]).await;
            if pred(&msg) {
                return (useq, msg);
            }
            passed.push(msg);
        }
    }

    /// Frames kept from earlier reads.
    pub(crate) fn take_pending(&mut self) -> Vec<ServerFrame> {
        self.pending.drain(..).collect()
    }
}

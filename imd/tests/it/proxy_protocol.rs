//! imd behind a TCP load balancer (`--proxy-protocol`): raw TCP clients play the
//! balancer, writing a PROXY header (v1 text, v2 binary) before their request. The
//! client address in the header, not the peer's (127.0.0.1), is the one the ip
//! blacklist, the per-ip connect limit and the connection listing see; a connection
//! without a header, or from a peer outside `--proxy-from`, is closed unanswered; the
//! header comes before the TLS handshake when imd serves TLS.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::common::{Auth, FRAME_DEADLINE, Imd, claims, mint, try_ws_over, wait_eof};
use crate::tls::Certs;

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

fn tok(uid: &str, device: &str) -> String {
    mint(SECRET, &claims(uid, device, 3600))
}

/// A v1 header from `src` to `dst`.
fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 `PROXY` header over TCP from `src` to `dst` (same family), with one TLV after
/// the addresses, as AWS's balancers send.
fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut addrs = Vec::new();
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("v2 header with mixed families"),
    };
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    addrs.extend_from_slice(&[0xEA, 0x00, 0x03, b'v', b'p', b'c']);
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, family]);
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h
}

/// A TCP connection to `imd` that starts with `header`.
async fn proxied(imd: &Imd, header: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(imd.addr).await.expect("connect");
    s.write_all(header).await.expect("write the PROXY header");
    s
}

/// One HTTP/1.1 request on `s` (`Connection: close`): the status and the JSON body;
/// `None` when the server closed the connection without an answer.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: imd\r\nConnection: close\r\n\
         Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // The server may already have closed a refused connection.
    if s.write_all(req.as_bytes()).await.is_err() {
        return None;
    }
    let mut out = Vec::new();
    // A reset or a TLS stream cut without close_notify ends the read like EOF does.
    let _ = tokio::time::timeout(FRAME_DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the server neither answered nor closed");
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// The `remote` of every listed connection.
async fn remotes(imd: &Imd, header: &[u8]) -> Vec<String> {
    let (status, list) = request(
        proxied(imd, header).await,
        "GET",
        "/admin/v1/connections",
        None,
    )
    .await
    .expect("connections answered");
    assert_eq!(status, 200, "GET /admin/v1/connections: {list}");
    list["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("no connections list: {list}"))
        .iter()
        .map(|c| c["remote"].as_str().expect("remote").to_owned())
        .collect()
}

/// For v1 and v2 headers alike: a client whose header names a blacklisted address is
/// refused (403) though the real peer, 127.0.0.1, is not blacklisted; another client
/// connects and is listed under its header's address; the connect limit counts per
/// header address; a connection without a header gets no answer.
#[tokio::test]
async fn the_header_address_is_the_one_blacklist_limits_and_listings_see() {
    let imd = Imd::start(&[
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--proxy-protocol",
        "--proxy-from",
        "127.0.0.0/8,::1",
        "--connect-rate",
        "1",
        "--connect-burst",
        "1",
    ]);
    let url = format!("ws://{}/v1/ws", imd.addr);
    let lb: SocketAddr = "10.0.0.1:1".parse().unwrap();
    let lb6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
    let dst = imd.addr;
    let dst6: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
    type Header = fn(SocketAddr, SocketAddr) -> Vec<u8>;
    let cases: [(&str, Header, SocketAddr, SocketAddr, SocketAddr, SocketAddr); 3] = [
        (
            "v1",
            v1,
            "198.51.100.7:4000".parse().unwrap(),
            "203.0.113.5:4001".parse().unwrap(),
            lb,
            dst,
        ),
        (
            "v2",
            v2,
            "198.51.100.8:4000".parse().unwrap(),
            "203.0.113.6:4001".parse().unwrap(),
            lb,
            dst,
        ),
        (
            "v2-ipv6",
            v2,
            "[2001:db8:bad::8]:4000".parse().unwrap(),
            "[2001:db8:600d::6]:4001".parse().unwrap(),
            lb6,
            dst6,
        ),
    ];
    for (name, header, blocked, client, admin_from, dst) in cases {
        let (status, entry) = request(
            proxied(&imd, &header(admin_from, dst)).await,
            "POST",
            "/admin/v1/blacklist",
            Some(&json!({"kind": "ip", "value": blocked.ip().to_string()})),
        )
        .await
        .expect("blacklist answered");
        assert_eq!(status, 200, "{name}: POST blacklist: {entry}");

        let refused = try_ws_over(
            &url,
            Auth::Header(&tok("mallory", name)),
            proxied(&imd, &header(blocked, dst)).await,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: a blacklisted header address was let in"));
        assert_eq!(refused.status, 403, "{name}: {}", refused.body);

        let mut ok = try_ws_over(
            &url,
            Auth::Header(&tok("bob", name)),
            proxied(&imd, &header(client, dst)).await,
        )
        .await
        .unwrap_or_else(|r| panic!("{name}: upgrade refused: {} {}", r.status, r.body));
        ok.ping_pong().await;
        let listed = remotes(&imd, &header(admin_from, dst)).await;
        assert!(
            listed.contains(&client.to_string()),
            "{name}: {client} not in {listed:?}"
        );
        assert!(
            !listed.iter().any(|r| r.starts_with("127.0.0.1:")),
            "{name}: the balancer's address is listed: {listed:?}"
        );

        // The burst of one is the header address's: spent by `ok`, so its next
        // upgrade is refused, while `admin_from`'s own burst is untouched.
        let again = try_ws_over(
            &url,
            Auth::Header(&tok("bob", "again")),
            proxied(&imd, &header(client, dst)).await,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: the connect limit did not apply"));
        assert_eq!(again.status, 429, "{name}: {}", again.body);
    }

    // No header: closed without an answer.
    let bare = TcpStream::connect(imd.addr).await.unwrap();
    assert_eq!(request(bare, "GET", "/healthz", None).await, None);
    // A header that is not one.
    let junk = proxied(&imd, b"PROXY TCP4 nonsense\r\n").await;
    assert_eq!(request(junk, "GET", "/healthz", None).await, None);
}

/// With `--proxy-from`, a peer outside the list is closed unanswered, valid header
/// or not.
#[tokio::test]
async fn peers_outside_proxy_from_are_refused() {
    let imd = Imd::start(&["--proxy-protocol", "--proxy-from", "10.0.0.0/8"]);
    let header = v1("203.0.113.5:4000".parse().unwrap(), imd.addr);
    let s = proxied(&imd, &header).await;
    assert_eq!(request(s, "GET", "/healthz", None).await, None);
}

/// With TLS, the PROXY header comes first, in the clear, then the handshake; the
/// session is listed under the header's address.
#[tokio::test]
async fn the_header_comes_before_the_tls_handshake() {
    let certs = Certs::make();
    let imd = Imd::builder()
        .args([
            "--token-secret",
            SECRET,
            "--admin-token",
            ADMIN,
            "--proxy-protocol",
        ])
        .args(certs.flags())
        .start();
    let tls = TlsConnector::from(certs.client_config());
    let open = async |src: &str| {
        let tcp = proxied(&imd, &v2(src.parse().unwrap(), imd.addr)).await;
        tls.connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake after the PROXY header")
    };
    let stream = open("192.0.2.44:5000").await;
    let (status, list) = request(stream, "GET", "/healthz", None)
        .await
        .expect("healthz answered over TLS");
    assert_eq!(status, 200, "{list}");

    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("wss://{}/v1/ws", imd.addr),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", tok("carol", "c1")).parse().unwrap(),
    );
    let (_ws, _) = tokio::time::timeout(
        FRAME_DEADLINE,
        tokio_tungstenite::client_async(req, open("192.0.2.45:5001").await),
    )
    .await
    .expect("wss upgrade timed out")
    .expect("wss upgrade");
    let (status, list) = request(
        open("192.0.2.46:5002").await,
        "GET",
        "/admin/v1/connections",
        None,
    )
    .await
    .expect("connections answered over TLS");
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["connections"][0]["remote"], "192.0.2.45:5001",
        "{list}"
    );
}

/// A client that sends nothing, or half a header, is closed once the idle timeout has
/// passed: waiting for a PROXY header cannot hold a slot for good.
#[tokio::test]
async fn a_header_that_never_comes_is_given_up_after_the_idle_timeout() {
    let imd = Imd::start(&["--proxy-protocol", "--idle-timeout", "1s"]);
    for (name, sent) in [
        ("silent", &b""[..]),
        ("half a header", b"PROXY TCP4 192.0.2.1"),
    ] {
        let mut s = std::net::TcpStream::connect(imd.addr).unwrap();
        std::io::Write::write_all(&mut s, sent).unwrap();
        let took = tokio::task::spawn_blocking(move || wait_eof(&mut s, Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(
            took >= Duration::from_millis(800),
            "{name}: closed after {took:?}, before the 1s deadline"
        );
    }
}

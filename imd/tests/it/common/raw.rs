//! Clients that misbehave on purpose, over a plain TCP stream: an upgrade done by hand
//! that never answers afterwards (a dead client), and a read to the end that times how
//! long the server took to close it.

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::FRAME_DEADLINE;

/// Opens a raw TCP connection, does the WebSocket upgrade by hand and returns the
/// stream, which never answers anything afterwards (a dead client).
pub(crate) fn raw_upgrade(addr: SocketAddr, token: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(FRAME_DEADLINE))
        .expect("read timeout");
    write!(
        s,
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read upgrade answer");
        assert!(
            n == 1,
            "connection closed during the upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    s
}

/// Reads (and discards) from `s` until EOF or a reset; returns how long that took.
/// Panics when the connection is still open after `deadline`.
pub(crate) fn wait_eof(s: &mut std::net::TcpStream, deadline: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        assert!(!left.is_zero(), "connection still open after {deadline:?}");
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("connection still open after {deadline:?}")
            }
            Err(_) => return start.elapsed(),
        }
    }
}

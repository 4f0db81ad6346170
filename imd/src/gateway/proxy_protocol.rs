//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): the header a TCP load
//! balancer puts before a connection's first byte to say whose connection it is. It
//! owns reading one header off a socket and what address it names; whether a
//! connection must carry one, and from which peers, is the accept loop's (`serve`).
//!
//! Parsed here rather than with a crate such as `ppp`: the two formats take a hundred
//! lines, and the header must be read straight off the socket without consuming a byte
//! past it (what follows is the client's TLS handshake or HTTP request), which a parser
//! of a byte slice leaves to the caller anyway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The first 12 bytes of a v2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, `\r\n` included (the spec's bound).
const V1_MAX: usize = 107;
/// The longest v2 address block accepted. Addresses take 36 bytes at most; the rest is
/// TLVs (AWS and Azure add a few dozen bytes), skipped. A bound, so that a peer cannot
/// make us buffer 64 KiB.
const V2_MAX_BODY: usize = 1024;
/// The shortest v1 line (`PROXY UNKNOWN\r\n`): reading this many bytes first never
/// reads past a header.
const V1_MIN: usize = 15;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection failed or ended before a whole header arrived.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The connection does not start with a PROXY header.
    #[error("the connection does not start with a PROXY header")]
    Missing,
    /// A v1 line that does not follow the spec.
    #[error("malformed PROXY v1 header")]
    BadV1,
    /// A v2 header that does not follow the spec, or is too long.
    #[error("malformed PROXY v2 header")]
    BadV2,
}

/// Reads one PROXY header (v1 or v2) from `io`, and no byte past it. Returns the client
/// address it carries, or `None` where it names none (v1 `UNKNOWN`, a v2 `LOCAL`
/// command such as the balancer's own health check, a family other than TCP/UDP over
/// IPv4/IPv6): the caller then keeps the peer's address.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = [0u8; V1_MIN];
    io.read_exact(&mut head[..V2_SIGNATURE.len()]).await?;
    if head[..V2_SIGNATURE.len()] == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        io.read_exact(&mut fixed).await?;
        let [version_command, family, len_hi, len_lo] = fixed;
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if version_command >> 4 != 2 || len > V2_MAX_BODY {
            return Err(ProxyHeaderError::BadV2);
        }
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        return parse_v2(version_command & 0x0f, family, &body);
    }
    if !head.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    io.read_exact(&mut head[V2_SIGNATURE.len()..]).await?;
    let mut line = head.to_vec();
    // One byte at a time past the shortest line: a buffered read could take the
    // client's first bytes along. Once per connection, a few dozen reads of bytes
    // already in the kernel's buffer.
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::BadV1);
        }
        line.push(io.read_u8().await?);
    }
    parse_v1(&line)
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (or `TCP6`, or `UNKNOWN …`).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = || ProxyHeaderError::BadV1;
    let line = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_suffix("\r\n"))
        .ok_or_else(bad)?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(bad());
    }
    let v4 = match parts.next() {
        Some("UNKNOWN") => return Ok(None),
        Some("TCP4") => true,
        Some("TCP6") => false,
        _ => return Err(bad()),
    };
    let mut next = || parts.next().ok_or_else(bad);
    let src: IpAddr = next()?.parse().map_err(|_| bad())?;
    let dst: IpAddr = next()?.parse().map_err(|_| bad())?;
    let sport: u16 = next()?.parse().map_err(|_| bad())?;
    let _dport: u16 = next()?.parse().map_err(|_| bad())?;
    if parts.next().is_some() || src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
        return Err(bad());
    }
    Ok(Some(SocketAddr::new(src, sport)))
}

/// A v2 header's command (low nibble of byte 13), family (byte 14) and address block.
fn parse_v2(command: u8, family: u8, body: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match command {
        0x0 => return Ok(None), // LOCAL: the balancer speaking for itself
        0x1 => {}               // PROXY
        _ => return Err(ProxyHeaderError::BadV2),
    }
    // High nibble: the address family; low nibble: stream or datagram, both carrying
    // the same address block.
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family >> 4 {
        0x1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(ip.into(), port(8))))
        }
        0x2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Ok(Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                port(32),
            )))
        }
        // UNSPEC, or a Unix socket: no IP address to use.
        0x0 | 0x3 => Ok(None),
        _ => Err(ProxyHeaderError::BadV2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut rest = bytes;
        let got = read_header(&mut rest).await;
        (got, rest.to_vec())
    }

    #[tokio::test]
    async fn headers_give_the_client_address_and_leave_what_follows() {
        let v4 = [203, 0, 113, 7, 10, 0, 0, 1, 0x30, 0x39, 0x01, 0xbb];
        let mut v6 = [0u8; 36];
        v6[..16].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6[32..34].copy_from_slice(&443u16.to_be_bytes());
        let mut v4_tlv = v4.to_vec();
        v4_tlv.extend_from_slice(&[0x04, 0x00, 0x02, b'x', b'y']);
        let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
            (
                b"PROXY TCP4 198.51.100.9 10.0.0.1 5555 443\r\n".to_vec(),
                Some("198.51.100.9:5555"),
            ),
            (
                b"PROXY TCP6 2001:db8::9 2001:db8::1 5555 443\r\n".to_vec(),
                Some("[2001:db8::9]:5555"),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
            (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n".to_vec(), None),
            (v2(0x1, 0x11, &v4), Some("203.0.113.7:12345")),
            (v2(0x1, 0x11, &v4_tlv), Some("203.0.113.7:12345")),
            (v2(0x1, 0x21, &v6), Some("[2001:db8::1]:443")),
            (v2(0x0, 0x00, &[]), None),
        ];
        for (header, want) in cases {
            let mut bytes = header.clone();
            bytes.extend_from_slice(b"GET /");
            let (got, rest) = read(&bytes).await;
            let got = got.unwrap_or_else(|e| panic!("{header:?}: {e}"));
            assert_eq!(got, want.map(|w| w.parse().unwrap()), "{header:?}");
            assert_eq!(rest, b"GET /", "{header:?}: bytes past the header are left");
        }
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let long = format!("PROXY TCP4 1.1.1.1 2.2.2.2 1 2{}\r\n", " ".repeat(100));
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00".to_vec(),
            b"PROXY TCP4 1.1.1.1 2.2.2.2 1\r\n".to_vec(),
            b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.1.1.1 2.2.2.2 1 99999\r\n".to_vec(),
            b"PROXY UDP4 1.1.1.1 2.2.2.2 1 2\r\n".to_vec(),
            long.into_bytes(),
            v2(0x1, 0x11, &[1, 2, 3]),
            v2(0x1, 0x41, &[0; 12]),
            v2(0x5, 0x11, &[0; 12]),
            v2(0x1, 0x11, &[0; V2_MAX_BODY + 1]),
            // Cut short: the connection ends inside the header.
            b"PROXY TCP4 1.1.1.1".to_vec(),
        ];
        for bytes in cases {
            let (got, _) = read(&bytes).await;
            assert!(got.is_err(), "{bytes:?} was taken: {got:?}");
        }
    }
}

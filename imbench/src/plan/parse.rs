//! What the command line's strings become: source-address lists, target URLs, the
//! admin API's base URL. Each parser names the bad part in its error; none of them
//! looks at this machine or the network.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

use super::MAX_SOURCE_IPS;

/// Parses `--source-ips`: comma-separated IPv4/IPv6 addresses and IPv4 ranges
/// `A-B` (inclusive, `A <= B`), in the order given.
pub fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad range start in {item:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad range end in {item:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            ensure!(a <= b, "range {item:?} runs backwards");
            let len = u64::from(b - a) + 1;
            ensure!(
                out.len() as u64 + len <= MAX_SOURCE_IPS as u64,
                "--source-ips names more than {MAX_SOURCE_IPS} addresses"
            );
            out.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            let ip: IpAddr = item
                .parse()
                .with_context(|| format!("bad address {item:?}"))?;
            ensure!(
                out.len() < MAX_SOURCE_IPS,
                "--source-ips names more than {MAX_SOURCE_IPS} addresses"
            );
            out.push(ip);
        }
    }
    ensure!(!out.is_empty(), "--source-ips {spec:?} names no address");
    Ok(out)
}

/// A WebSocket endpoint of one imd node, from a `--target` base URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `host:port` as given (for the Host header and resolution).
    pub authority: String,
    /// `ws://host:port/v1/ws` (no token).
    pub ws_url: String,
}

impl Target {
    /// Parses `http://host:port` (or `ws://`, or a bare `host:port`).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if let Some(r) = url.strip_prefix("ws://") {
            r
        } else if url.starts_with("https://") || url.starts_with("wss://") {
            bail!("target {url:?}: TLS is not supported by imbench yet");
        } else if url.contains("://") {
            bail!("target {url:?}: expected http://host:port");
        } else {
            url
        };
        let authority = rest.split('/').next().unwrap_or_default();
        ensure!(
            authority
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
            "target {url:?}: expected http://host:port"
        );
        Ok(Target {
            authority: authority.to_owned(),
            ws_url: format!("ws://{authority}/v1/ws"),
        })
    }
}

/// Parses `--api`: an `http://host:port` base URL, without a trailing slash.
pub fn api_base(url: &str) -> anyhow::Result<String> {
    let t = Target::parse(url).with_context(|| format!("--api {url:?}"))?;
    Ok(format!("http://{}", t.authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn source_ip_ranges_parse() {
        assert_eq!(
            parse_source_ips("127.0.0.2-127.0.0.4").unwrap(),
            vec![ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")]
        );
        assert_eq!(
            parse_source_ips("127.0.0.9").unwrap(),
            vec![ip("127.0.0.9")]
        );
        assert_eq!(
            parse_source_ips("127.0.0.2, 127.0.1.254-127.0.2.1,::1").unwrap(),
            vec![
                ip("127.0.0.2"),
                ip("127.0.1.254"),
                ip("127.0.1.255"),
                ip("127.0.2.0"),
                ip("127.0.2.1"),
                ip("::1")
            ]
        );
        assert_eq!(parse_source_ips("127.0.0.2-127.0.0.40").unwrap().len(), 39);
        for bad in [
            "",
            ",",
            "127.0.0.5-127.0.0.4",
            "127.0.0.x",
            "1-2",
            "::1-::2",
            "10.0.0.0-10.1.0.0",
        ] {
            assert!(parse_source_ips(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.ws_url, "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(Target::parse("ws://h:1/").unwrap().ws_url, "ws://h:1/v1/ws");
        assert_eq!(
            Target::parse("localhost:9").unwrap().authority,
            "localhost:9"
        );
        for bad in [
            "https://h:1",
            "http://h",
            "http://:1",
            "ftp://h:1",
            "h:port",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }
}

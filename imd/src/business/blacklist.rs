//! Blacklists of uids and ip ranges, and the in-memory cache that the hot path reads.
//!
//! Entries live in the store; every node keeps all of them in a [`Blacklist`] cache,
//! loaded at start and kept fresh by change notifications, so a check costs a read lock
//! and a hash lookup (plus a scan of the CIDR ranges), never a store round trip.
//! Expired entries stop applying at once, because each check compares the expiry with
//! the current time; a periodic purge removes them from the store.

use std::collections::HashMap;
use std::net::{AddrParseError, IpAddr};
use std::num::ParseIntError;
use std::sync::RwLock;

pub use shared::admin::{BlacklistEntry as Entry, BlacklistKind as Kind};

/// An IPv4 or IPv6 network: an address and a prefix length. In configuration files it
/// is the string [`IpNet::parse`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpNet`]. The messages are what an admin reads in the API's
/// `bad_request` answer, so they quote the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("invalid ip address {addr:?}")]
    Address {
        /// The address part as given.
        addr: String,
        /// Why the standard library refused it.
        source: AddrParseError,
    },
    /// The prefix length is not a number.
    #[error("invalid prefix length {prefix:?} (0-{max})")]
    Prefix {
        /// The prefix part as given.
        prefix: String,
        /// The longest prefix of the address's family.
        max: u8,
        /// Why it is not a number.
        source: ParseIntError,
    },
    /// The prefix length is longer than the address.
    #[error("invalid prefix length {prefix:?} (0-{max})")]
    PrefixTooLong {
        /// The prefix part as given.
        prefix: String,
        /// The longest prefix of the address's family.
        max: u8,
    },
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl IpNet {
    /// Parses `1.2.3.4`, `10.1.0.0/16`, `::1` or `fe80::/10`. Host bits are cleared,
    /// so `10.1.2.3/16` is `10.1.0.0/16`.
    pub fn parse(s: &str) -> Result<Self, IpNetError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|source| IpNetError::Address {
            addr: addr.to_owned(),
            source,
        })?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                Ok(_) => {
                    return Err(IpNetError::PrefixTooLong {
                        prefix: p.to_owned(),
                        max,
                    });
                }
                Err(source) => {
                    return Err(IpNetError::Prefix {
                        prefix: p.to_owned(),
                        max,
                        source,
                    });
                }
            },
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }

    /// Whether this is a single address.
    pub fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

impl std::str::FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, IpNetError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for IpNet {
    type Error = IpNetError;

    fn try_from(s: String) -> Result<Self, IpNetError> {
        Self::parse(&s)
    }
}

impl From<IpNet> for String {
    fn from(net: IpNet) -> String {
        net.to_string()
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// How the reason of an automatic ban begins (`gateway::bans`): such entries also
/// refuse the ip before authentication, the admin API included.
pub const AUTO_BAN_REASON: &str = "auto-ban:";

#[derive(Debug, Default)]
struct Cache {
    uids: HashMap<String, Option<i64>>,
    hosts: HashMap<IpAddr, Option<i64>>,
    /// The hosts whose entry is an automatic ban ([`AUTO_BAN_REASON`]).
    auto: std::collections::HashSet<IpAddr>,
    ranges: Vec<(IpNet, Option<i64>)>,
}

fn live(expires_at: Option<i64>, now_ms: i64) -> bool {
    expires_at.is_none_or(|t| t > now_ms)
}

/// The node's copy of every blacklist entry. A `std::sync::RwLock`: checks are short
/// reads on every send and upgrade; writes come only from admin changes.
#[derive(Debug, Default)]
pub struct Blacklist {
    cache: RwLock<Cache>,
}

impl Blacklist {
    /// An empty blacklist.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every entry (at start, or after missing notifications).
    pub fn replace_all(&self, entries: &[Entry]) {
        let mut cache = Cache::default();
        for e in entries {
            Self::insert(&mut cache, e);
        }
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = cache;
    }

    fn insert(cache: &mut Cache, e: &Entry) {
        match e.kind {
            Kind::Uid => {
                cache.uids.insert(e.value.clone(), e.expires_at);
            }
            Kind::Ip => {
                if let Ok(net) = IpNet::parse(&e.value) {
                    if net.is_host() {
                        cache.hosts.insert(net.addr, e.expires_at);
                        if e.reason
                            .as_deref()
                            .is_some_and(|r| r.starts_with(AUTO_BAN_REASON))
                        {
                            cache.auto.insert(net.addr);
                        } else {
                            cache.auto.remove(&net.addr);
                        }
                    } else {
                        cache.ranges.retain(|(n, _)| *n != net);
                        cache.ranges.push((net, e.expires_at));
                    }
                }
            }
        }
    }

    /// Adds or replaces one entry.
    pub fn upsert(&self, e: &Entry) {
        Self::insert(
            &mut self.cache.write().unwrap_or_else(|e| e.into_inner()),
            e,
        );
    }

    /// Removes one entry.
    pub fn remove(&self, kind: Kind, value: &str) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        match kind {
            Kind::Uid => {
                cache.uids.remove(value);
            }
            Kind::Ip => {
                if let Ok(net) = IpNet::parse(value) {
                    cache.hosts.remove(&net.addr);
                    cache.auto.remove(&net.addr);
                    cache.ranges.retain(|(n, _)| *n != net);
                }
            }
        }
    }

    /// Whether `uid` is blocked at `now_ms`.
    pub fn uid_blocked(&self, uid: &str, now_ms: i64) -> bool {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.uids.get(uid).is_some_and(|exp| live(*exp, now_ms))
    }

    /// Whether `ip` is blocked at `now_ms` by an automatic ban (repeated failed
    /// authentications), which refuses it before any authentication.
    pub fn ip_auto_banned(&self, ip: IpAddr, now_ms: i64) -> bool {
        let ip = canonical(ip);
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.auto.contains(&ip) && cache.hosts.get(&ip).is_some_and(|exp| live(*exp, now_ms))
    }

    /// Whether `ip` is blocked at `now_ms`.
    pub fn ip_blocked(&self, ip: IpAddr, now_ms: i64) -> bool {
        let ip = canonical(ip);
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.hosts.get(&ip).is_some_and(|exp| live(*exp, now_ms))
            || cache
                .ranges
                .iter()
                .any(|(net, exp)| live(*exp, now_ms) && net.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        for (net, inside, outside) in [
            ("10.1.0.0/16", "10.1.255.3", "10.2.0.1"),
            ("10.1.2.3/16", "10.1.0.0", "11.1.0.0"),
            ("127.0.0.9", "127.0.0.9", "127.0.0.1"),
            ("0.0.0.0/0", "8.8.8.8", "::1"),
            ("fe80::/10", "fe80::1", "fec0::1"),
            ("::1", "::1", "::2"),
            ("1.2.3.0/24", "::ffff:1.2.3.4", "::ffff:1.2.4.4"),
        ] {
            let n = IpNet::parse(net).unwrap();
            assert!(n.contains(ip(inside)), "{net} ∋ {inside}");
            assert!(!n.contains(ip(outside)), "{net} ∌ {outside}");
        }
        assert_eq!(
            IpNet::parse("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            IpNet::parse("127.0.0.9/32").unwrap().to_string(),
            "127.0.0.9"
        );
        for bad in [
            "",
            "10.1.0.0/33",
            "10.1/8",
            "::1/129",
            "x",
            "1.2.3.4/",
            "1.2.3.4/-1",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parse_errors_quote_the_bad_part_and_keep_the_source() {
        use std::error::Error as _;
        for (bad, message, has_source) in [
            ("x/8", r#"invalid ip address "x""#, true),
            ("10.0.0.0/x", r#"invalid prefix length "x" (0-32)"#, true),
            ("::1/129", r#"invalid prefix length "129" (0-128)"#, false),
        ] {
            let e = IpNet::parse(bad).unwrap_err();
            assert_eq!(e.to_string(), message);
            assert_eq!(e.source().is_some(), has_source, "{bad:?}");
        }
    }

    #[test]
    fn entries_apply_until_they_expire_or_are_removed() {
        let bl = Blacklist::new();
        let entry = |kind, value: &str, expires_at| Entry {
            kind,
            value: value.into(),
            reason: None,
            expires_at,
        };
        bl.replace_all(&[
            entry(Kind::Uid, "mallory", None),
            entry(Kind::Uid, "eve", Some(1000)),
            entry(Kind::Ip, "10.1.0.0/16", None),
            entry(Kind::Ip, "127.0.0.9", Some(1000)),
        ]);
        assert!(bl.uid_blocked("mallory", 5000));
        assert!(bl.uid_blocked("eve", 999));
        assert!(
            !bl.uid_blocked("eve", 1000),
            "expired entries stop applying"
        );
        assert!(!bl.uid_blocked("alice", 0));
        assert!(bl.ip_blocked(ip("10.1.9.9"), 0));
        assert!(bl.ip_blocked(ip("127.0.0.9"), 999));
        assert!(!bl.ip_blocked(ip("127.0.0.9"), 1000));
        assert!(!bl.ip_blocked(ip("127.0.0.1"), 0));

        bl.remove(Kind::Uid, "mallory");
        bl.remove(Kind::Ip, "10.1.0.0/16");
        assert!(!bl.uid_blocked("mallory", 0));
        assert!(!bl.ip_blocked(ip("10.1.9.9"), 0));
        bl.upsert(&entry(Kind::Ip, "10.1.0.0/16", None));
        assert!(bl.ip_blocked(ip("10.1.9.9"), 0));
    }
}

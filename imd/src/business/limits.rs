//! Rate limits: sends and read receipts per uid, typing per (uid, conversation), and
//! connections per ip, as token buckets (GCRA).
//!
//! The limiters are keyed maps, which would grow with every uid and ip ever seen;
//! [`Limits::retain_recent`] drops the keys whose bucket is full again, so memory stays
//! proportional to the senders active within one refill period.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A rate and a burst; a rate of 0 turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained events per second.
    pub per_second: u32,
    /// Events allowed at once.
    pub burst: u32,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: Rate) -> Option<DefaultKeyedRateLimiter<K>> {
    let per_second = NonZeroU32::new(rate.per_second)?;
    let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Some(RateLimiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    ))
}

/// Typing notices forwarded per (uid, conversation): one a second, as the protocol
/// allows; the rest are dropped.
const TYPING: Rate = Rate {
    per_second: 1,
    burst: 1,
};

/// The node's rate limiters.
pub struct Limits {
    sends: Option<DefaultKeyedRateLimiter<String>>,
    /// Read receipts per uid: the send rate, in a bucket of their own, so that a client
    /// that marks every message read does not eat its own sending budget.
    reads: Option<DefaultKeyedRateLimiter<String>>,
    /// Keyed by `uid` and conversation, joined by a newline (neither holds one).
    typing: Option<DefaultKeyedRateLimiter<String>>,
    connects: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Limits {
    /// Limiters for sends (and read receipts) per uid and connections per ip.
    pub fn new(sends: Rate, connects: Rate) -> Self {
        Self {
            sends: limiter(sends),
            reads: limiter(sends),
            typing: limiter(TYPING),
            connects: limiter(connects),
        }
    }

    /// Whether `uid` may mark one more read position now.
    pub fn allow_read(&self, uid: &str) -> bool {
        self.reads
            .as_ref()
            .is_none_or(|l| l.check_key(&uid.to_owned()).is_ok())
    }

    /// Whether a typing notice of `uid` in `conv` is forwarded now.
    pub fn allow_typing(&self, uid: &str, conv: &str) -> bool {
        self.typing
            .as_ref()
            .is_none_or(|l| l.check_key(&format!("{uid}\n{conv}")).is_ok())
    }

    /// Whether `uid` may send one more message now.
    pub fn allow_send(&self, uid: &str) -> bool {
        self.sends
            .as_ref()
            .is_none_or(|l| l.check_key(&uid.to_owned()).is_ok())
    }

    /// Whether `ip` may open one more connection now.
    pub fn allow_connect(&self, ip: IpAddr) -> bool {
        self.connects
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }

    /// Forgets keys whose bucket has refilled; call periodically.
    pub fn retain_recent(&self) {
        for l in [&self.sends, &self.reads, &self.typing]
            .into_iter()
            .flatten()
        {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.connects {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys held, for tests and metrics.
    pub fn keys(&self) -> usize {
        [&self.sends, &self.reads, &self.typing]
            .into_iter()
            .flatten()
            .map(|l| l.len())
            .sum::<usize>()
            + self.connects.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_and_zero_means_off() {
        let limits = Limits::new(
            Rate {
                per_second: 1,
                burst: 3,
            },
            Rate {
                per_second: 0,
                burst: 0,
            },
        );
        let allowed = (0..10).filter(|_| limits.allow_send("a")).count();
        assert_eq!(allowed, 3);
        assert!(limits.allow_send("b"), "each uid has its own bucket");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..1000).all(|_| limits.allow_connect(ip)));
    }

    #[test]
    fn typing_is_one_a_second_per_user_and_conversation() {
        let off = Rate {
            per_second: 0,
            burst: 0,
        };
        let limits = Limits::new(off, off);
        let forwarded = (0..20)
            .filter(|_| limits.allow_typing("a", "d:a~b"))
            .count();
        assert_eq!(forwarded, 1);
        assert!(limits.allow_typing("a", "g:x"), "another conversation");
        assert!(limits.allow_typing("b", "d:a~b"), "another user");
        assert!(
            (0..100).all(|_| limits.allow_read("a")),
            "reads follow the send rate: off"
        );
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limits = Limits::new(
            Rate {
                per_second: 1000,
                burst: 1,
            },
            Rate {
                per_second: 0,
                burst: 0,
            },
        );
        for i in 0..100 {
            limits.allow_send(&format!("u{i}"));
        }
        assert_eq!(limits.keys(), 100);
        std::thread::sleep(std::time::Duration::from_millis(5));
        limits.retain_recent();
        assert_eq!(limits.keys(), 0);
    }
}

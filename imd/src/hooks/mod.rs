//! Calls out to business systems: the webhook of committed messages ([`webhook`]), the
//! pre-send hook ([`before_send`]) and offline pushes ([`push`]).
//!
//! All three speak JSON over HTTP(S) POST with the same client settings and the same
//! signature: `X-Imd-Signature: sha256=<hex HMAC-SHA256 of the raw body>`, keyed with
//! `--webhook-secret` (see `docs/webhooks.md`). None of them may hold a lock, a
//! conversation or a commit while it waits on the network.

pub mod before_send;
pub mod push;
pub mod webhook;

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries a body's signature.
pub const SIGNATURE_HEADER: &str = "X-Imd-Signature";

/// `sha256=<hex HMAC-SHA256 of body keyed with secret>`, the value of
/// [`SIGNATURE_HEADER`].
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A POST of the JSON `body` to `url`, signed with `secret` when there is one: the
/// request every call to a business system makes.
pub fn signed_post(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&[u8]>,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = secret {
        req = req.header(SIGNATURE_HEADER, sign(secret, &body));
    }
    req.body(body)
}

/// An HTTP client for calls to business systems: `timeout` for the whole call, a
/// short connect timeout, kept-alive connections, no redirects (a POST that is
/// redirected is a misconfiguration, not something to follow with a signed body).
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .user_agent(concat!("imd/", env!("CARGO_PKG_VERSION")))
        .build()
        // Only fails when the TLS backend cannot start, which is a broken build.
        .expect("the HTTP client's TLS backend starts")
}

/// Lets a warning through at most once per `every`, and says how many it held back
/// since the last: a business system that is down fails every call, and the log must
/// not grow with the traffic. A `std` atomic: no lock on the call path.
pub(crate) struct Throttle {
    every_ms: i64,
    last_ms: std::sync::atomic::AtomicI64,
    held: std::sync::atomic::AtomicU64,
}

impl Throttle {
    /// At most one warning per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every_ms: i64::try_from(every.as_millis()).unwrap_or(i64::MAX),
            last_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last)` when a warning may go out now.
    pub(crate) fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = shared::time::now_ms();
        let last = self.last_ms.load(Relaxed);
        if now.saturating_sub(last) >= self.every_ms
            && self
                .last_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

/// Reads at most `limit` bytes of `res`'s body; `None` when it is longer.
pub(crate) async fn body_within(
    mut res: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        if out.len() + chunk.len() > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_warning_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        // The period has not passed: still held back, and counted.
        assert_eq!(t.held.load(std::sync::atomic::Ordering::Relaxed), 2);
        let every = Throttle::new(Duration::ZERO);
        assert_eq!(every.allow(), Some(0));
        assert_eq!(every.allow(), Some(0));
    }

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

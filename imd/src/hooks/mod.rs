//! Calls out to business systems: the webhook of committed messages ([`webhook`]), the
//! pre-send hook ([`before_send`]) and offline pushes ([`push`]).
//!
//! All three speak JSON over HTTP(S) POST with the same client settings and the same
//! signature: `X-Imd-Signature: sha256=<hex HMAC-SHA256 of the raw body>`, keyed with
//! `--webhook-secret` (see `docs/webhooks.md`). None of them may hold a lock, a
//! conversation or a commit while it waits on the network.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

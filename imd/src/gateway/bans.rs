//! Automatic bans of ips that fail authentication repeatedly, like ejabberd's
//! `mod_fail2ban`: `--auth-fail-limit` failures (a bad or expired client token at the
//! WebSocket upgrade or on the HTTP API, a bad admin token) within
//! `--auth-fail-window` make the ip an ip blacklist entry for `--auth-ban`, with the
//! reason `auto-ban: …`.
//!
//! The ban goes through the blacklist, so that it is listed (`imctl blacklist ls`),
//! lifted by deleting the entry, and applies on every node of a cluster. Auto-ban
//! entries refuse the ip before authentication everywhere, the admin API included
//! (`Blacklist::ip_auto_banned`); other ip entries keep their own rules. A request
//! without any token is not counted: it guesses nothing. `--auth-ban-exempt` (by
//! default 127.0.0.1 and ::1) is never counted: a co-located reverse proxy connects
//! from there for every client, and so do the operators' own tools.
//!
//! This module only counts; it does not decide what a request may do otherwise.
//! Memory is bounded: at most [`MAX_TRACKED`] ips are counted at once. Past it, the
//! tallies whose window has ended are dropped, and if none has, a new ip goes
//! uncounted until one does (a flood from that many addresses is a job for the
//! network's own defences).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shared::admin::{AddBlacklist, BlacklistKind};
use shared::protocol::ErrorCode;

use super::auth::AuthError;
use super::{ApiError, AppState};
use crate::business::blacklist::{AUTO_BAN_REASON, IpNet};

/// Most ips whose failures are counted at once.
pub const MAX_TRACKED: usize = 65_536;

/// Failures of one ip in its current window.
#[derive(Debug, Clone, Copy)]
struct Tally {
    since: Instant,
    failures: u32,
}

/// The failure counts, and the rule that turns them into bans.
#[derive(Debug)]
pub struct AuthBans {
    limit: u32,
    window: Duration,
    ban: Duration,
    /// Never counted nor banned.
    exempt: Vec<IpNet>,
    /// A `std::sync::Mutex`: one short map update per failed authentication, no
    /// `.await` inside.
    tracked: Mutex<HashMap<IpAddr, Tally>>,
}

impl AuthBans {
    /// `limit` failures within `window` ban an ip for `ban`; a `limit` of 0 never bans.
    pub fn new(limit: u32, window: Duration, ban: Duration) -> Self {
        Self {
            limit,
            window,
            ban,
            exempt: Vec::new(),
            tracked: Mutex::default(),
        }
    }

    /// The same, never banning an address in `exempt`.
    pub fn exempting(self, exempt: Vec<IpNet>) -> Self {
        Self { exempt, ..self }
    }

    /// Counts one failure of `ip` at `now`; `true` when it reaches the limit, and the
    /// caller bans the ip (its tally starts again).
    pub fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 || self.exempt.iter().any(|net| net.contains(ip)) {
            return false;
        }
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        if tracked.len() >= MAX_TRACKED && !tracked.contains_key(&ip) {
            let window = self.window;
            tracked.retain(|_, t| now.duration_since(t.since) < window);
            if tracked.len() >= MAX_TRACKED {
                return false;
            }
        }
        let tally = tracked.entry(ip).or_insert(Tally {
            since: now,
            failures: 0,
        });
        if now.duration_since(tally.since) >= self.window {
            *tally = Tally {
                since: now,
                failures: 0,
            };
        }
        tally.failures += 1;
        if tally.failures >= self.limit {
            tracked.remove(&ip);
            return true;
        }
        false
    }

    /// The blacklist entry that bans `ip`.
    fn entry(&self, ip: IpAddr) -> AddBlacklist {
        AddBlacklist {
            kind: BlacklistKind::Ip,
            value: ip.to_string(),
            ttl_s: Some(self.ban.as_secs().max(1)),
            reason: Some(format!(
                "{AUTO_BAN_REASON} {} failed authentications within {}",
                self.limit,
                humantime::format_duration(self.window)
            )),
        }
    }
}

/// Refuses an ip under an automatic ban: 403 `forbidden`, before any authentication.
pub(super) fn refuse_banned(app: &AppState, ip: Option<IpAddr>) -> Result<(), ApiError> {
    match ip {
        Some(ip)
            if app
                .messaging
                .blacklist()
                .ip_auto_banned(ip, shared::time::now_ms()) =>
        {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                "this address is banned for a while after repeated failed authentications",
            ))
        }
        _ => Ok(()),
    }
}

/// Counts a failed authentication from `ip` (a missing token is not one), and bans the
/// ip when it reaches the limit.
pub(super) async fn record_failure(app: &AppState, ip: Option<IpAddr>, error: &AuthError) {
    if matches!(error, AuthError::Missing) {
        return;
    }
    metrics::counter!("imd_auth_failures_total").increment(1);
    let Some(ip) = ip else { return };
    if !app.auth_bans.failed(ip, Instant::now()) {
        return;
    }
    match app.admin.blacklist_add(app.auth_bans.entry(ip)).await {
        Ok(_) => {
            metrics::counter!("imd_auth_bans_total").increment(1);
            tracing::warn!(
                %ip,
                failures = app.auth_bans.limit,
                ban = %humantime::format_duration(app.auth_bans.ban),
                "ip banned after repeated failed authentications"
            );
        }
        Err(error) => tracing::error!(%ip, %error, "could not ban ip"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_limit_within_the_window_bans_and_the_tally_starts_again() {
        let bans = AuthBans::new(3, Duration::from_secs(60), Duration::from_secs(600));
        let t0 = Instant::now();
        assert!(!bans.failed(ip(1), t0));
        assert!(!bans.failed(ip(1), t0 + Duration::from_secs(1)));
        assert!(!bans.failed(ip(2), t0), "ips are counted apart");
        assert!(bans.failed(ip(1), t0 + Duration::from_secs(2)));
        assert!(
            !bans.failed(ip(1), t0 + Duration::from_secs(3)),
            "starts again"
        );
        // Failures spread wider than the window never ban.
        let slow = AuthBans::new(2, Duration::from_secs(10), Duration::from_secs(600));
        for i in 0..5 {
            assert!(!slow.failed(ip(3), t0 + Duration::from_secs(11 * i)));
        }
        let off = AuthBans::new(0, Duration::from_secs(60), Duration::from_secs(600));
        assert!((0..100).all(|_| !off.failed(ip(4), t0)), "0 disables");
        let exempting = AuthBans::new(1, Duration::from_secs(60), Duration::from_secs(600))
            .exempting(vec![IpNet::parse("10.0.0.0/30").unwrap()]);
        assert!(!exempting.failed(ip(3), t0), "exempt");
        assert!(exempting.failed(ip(4), t0), "outside the exempt range");
        let entry = bans.entry(ip(1));
        assert_eq!((entry.value.as_str(), entry.ttl_s), ("10.0.0.1", Some(600)));
        assert_eq!(
            entry.reason.as_deref(),
            Some("auto-ban: 3 failed authentications within 1m")
        );
    }

    #[test]
    fn memory_is_bounded() {
        let bans = AuthBans::new(5, Duration::from_secs(60), Duration::from_secs(600));
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            bans.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        let extra = IpAddr::from([250, 0, 0, 1]);
        for _ in 0..10 {
            assert!(!bans.failed(extra, t0), "a full table counts no new ip");
        }
        // Once the windows have ended, old tallies make room.
        let later = t0 + Duration::from_secs(61);
        bans.failed(extra, later);
        let tracked = bans.tracked.lock().unwrap();
        assert_eq!(tracked.len(), 1);
    }
}

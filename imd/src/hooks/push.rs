//! Offline pushes over HTTP: [`PushRelay`] as a signed POST of each
//! [`OfflinePush`] to `--push-webhook-url`, where a relay to APNs, FCM or another push
//! service takes it (see `docs/webhooks.md`, *Offline push*).
//!
//! It owns the body's shape (`{"type":"push", …}`), the signature, the time limit
//! (`--webhook-timeout`) and what an answer means: 2xx taken; 408, 429, 5xx and no
//! answer worth a retry; any other status a refusal. Who gets a push, the retries and
//! the counting are the business layer's (`business::push`).

use std::time::Duration;

use serde::Serialize;

use super::Throttle;
use crate::business::push::OfflinePush;
use crate::business::{PushRelay, RelayFailed};
use crate::config::{Config, Secret};

/// How often a failing relay is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// `POST --push-webhook-url` body: the push, tagged.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    push: &'a OfflinePush,
}

/// The relay of `--push-webhook-url`.
pub struct HttpPushRelay {
    client: reqwest::Client,
    url: String,
    secret: Option<Secret>,
    warn: Throttle,
}

impl HttpPushRelay {
    /// The relay `cfg` configures, if any.
    pub fn from_config(cfg: &Config) -> Option<Self> {
        let url = cfg.push_webhook_url.clone()?;
        Some(Self {
            client: super::client(cfg.webhook_timeout),
            url,
            secret: cfg.webhook_secret.clone(),
            warn: Throttle::new(WARN_EVERY),
        })
    }

    fn warn(&self, uid: &str, why: &dyn std::fmt::Display) {
        if let Some(held) = self.warn.allow() {
            tracing::warn!(uid, error = %why, failures_not_logged = held, "offline push failed");
        }
    }
}

#[async_trait::async_trait]
impl PushRelay for HttpPushRelay {
    async fn send(&self, push: &OfflinePush) -> Result<(), RelayFailed> {
        let body = serde_json::to_vec(&Body { kind: "push", push })
            .expect("strings and numbers serialize");
        let secret = self.secret.as_ref().map(|s| s.expose().as_bytes());
        let res = match super::signed_post(&self.client, &self.url, secret, body)
            .send()
            .await
        {
            Ok(res) => res,
            Err(e) => {
                self.warn(&push.uid, &e);
                return Err(RelayFailed::Retry);
            }
        };
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        self.warn(&push.uid, &format_args!("the relay answered HTTP {status}"));
        if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
            Err(RelayFailed::Retry)
        } else {
            Err(RelayFailed::Refused)
        }
    }
}

//! The pre-send hook over HTTP: [`BeforeSend`] as a signed POST to
//! `--hook-before-send`, answered with allow, reject or replace (see
//! `docs/webhooks.md`, *Pre-send hook*).
//!
//! It owns the request and answer shapes, the time limit (`--hook-timeout` for the
//! whole call, body included), the checks of an answer, the failure policy
//! (`--hook-fail-closed`) and the hook's metrics. Where in a send it is asked, and what
//! a verdict does, is the business layer's (`Messaging::prepare`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Throttle;
use crate::business::{BeforeSend, Outgoing, Verdict};
use crate::config::{Config, ConvKindName, Secret};

/// Longest reason of a reject that the sender is told, in bytes (cut at a character).
pub const REASON_MAX: usize = 500;
/// What a sender is told when the hook gives no reason.
const NO_REASON: &str = "refused by the pre-send hook";
/// How often a failing hook is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// `POST --hook-before-send` body.
#[derive(Serialize)]
struct Request<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    device: &'a str,
    conv: &'a str,
    body: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<&'a str>,
}

/// The hook's answer. Unknown fields are ignored, so that a hook may say more.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Answer {
    Allow,
    Reject {
        #[serde(default)]
        reason: Option<String>,
    },
    Replace {
        #[serde(default)]
        body: serde_json::Value,
    },
}

/// Why a call counts as failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answer over {0} bytes")]
    TooLong(usize),
    #[error("answer is not an allow, reject or replace: {0}")]
    Answer(#[from] serde_json::Error),
    #[error("replace without a body (or with null)")]
    NullBody,
    #[error("replace body of {0} bytes, over --max-frame-bytes")]
    LargeBody(usize),
}

/// The pre-send hook of `--hook-before-send`.
pub struct HttpBeforeSend {
    client: reqwest::Client,
    url: String,
    secret: Option<Secret>,
    convs: Vec<ConvKindName>,
    fail_closed: bool,
    max_body: usize,
    warn: Throttle,
}

impl HttpBeforeSend {
    /// The hook `cfg` configures, if any.
    pub fn from_config(cfg: &Config) -> Option<Self> {
        let url = cfg.hook_before_send.clone()?;
        Some(Self {
            client: super::client(cfg.hook_timeout),
            url,
            secret: cfg.webhook_secret.clone(),
            convs: cfg.hook_convs.clone(),
            fail_closed: cfg.hook_fail_closed,
            max_body: cfg.max_frame_bytes,
            warn: Throttle::new(WARN_EVERY),
        })
    }

    /// One call: the verdict, or why there is none.
    async fn ask(&self, msg: &Outgoing<'_>) -> Result<Verdict, Failure> {
        let body = serde_json::to_vec(&Request {
            kind: "before_send",
            from: msg.from,
            device: msg.device,
            conv: msg.conv,
            body: msg.body,
            cid: msg.cid,
        })
        .expect("strings and a JSON value serialize");
        let secret = self.secret.as_ref().map(|s| s.expose().as_bytes());
        let res = super::signed_post(&self.client, &self.url, secret, body)
            .send()
            .await?;
        if !res.status().is_success() {
            return Err(Failure::Status(res.status().as_u16()));
        }
        // A replacement body may be as large as a message, and the rest is small.
        let limit = self.max_body + 4096;
        let bytes = super::body_within(res, limit)
            .await?
            .ok_or(Failure::TooLong(limit))?;
        match serde_json::from_slice(&bytes)? {
            Answer::Allow => Ok(Verdict::Allow),
            Answer::Reject { reason } => Ok(Verdict::Reject(reason_of(reason))),
            Answer::Replace { body } => {
                if body.is_null() {
                    return Err(Failure::NullBody);
                }
                let len = serde_json::to_vec(&body).map_or(usize::MAX, |b| b.len());
                if len > self.max_body {
                    return Err(Failure::LargeBody(len));
                }
                Ok(Verdict::Replace(body))
            }
        }
    }
}

#[async_trait::async_trait]
impl BeforeSend for HttpBeforeSend {
    fn applies(&self, conv: &str) -> bool {
        self.convs.iter().any(|k| k.matches(conv))
    }

    async fn check(&self, msg: Outgoing<'_>) -> Verdict {
        let started = Instant::now();
        let asked = self.ask(&msg).await;
        metrics::histogram!("imd_hook_before_send_seconds").record(started.elapsed().as_secs_f64());
        let result = match &asked {
            Ok(Verdict::Allow) => "allow",
            Ok(Verdict::Reject(_)) => "reject",
            Ok(Verdict::Replace(_)) => "replace",
            Ok(Verdict::Unavailable) | Err(_) => "error",
        };
        metrics::counter!("imd_hook_before_send_total", "result" => result).increment(1);
        asked.unwrap_or_else(|e| {
            if let Some(held) = self.warn.allow() {
                tracing::warn!(
                    error = %e,
                    conv = msg.conv,
                    fail_closed = self.fail_closed,
                    failures_not_logged = held,
                    "pre-send hook failed; the message is {}",
                    if self.fail_closed { "refused" } else { "let through" }
                );
            }
            if self.fail_closed {
                Verdict::Unavailable
            } else {
                Verdict::Allow
            }
        })
    }
}

/// The reason the sender is told: the hook's, trimmed and cut to [`REASON_MAX`].
fn reason_of(reason: Option<String>) -> String {
    let reason = reason.as_deref().map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return NO_REASON.to_owned();
    }
    let mut end = reason.len().min(REASON_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_by_their_action() {
        let decode = |s: &str| serde_json::from_str::<Answer>(s);
        assert!(matches!(decode(r#"{"action":"allow"}"#), Ok(Answer::Allow)));
        assert!(matches!(
            decode(r#"{"action":"reject","reason":"no","extra":1}"#),
            Ok(Answer::Reject { reason: Some(r) }) if r == "no"
        ));
        assert!(matches!(
            decode(r#"{"action":"replace"}"#),
            Ok(Answer::Replace {
                body: serde_json::Value::Null
            })
        ));
        for bad in [r#"{"action":"maybe"}"#, r#"{}"#, "[]", "allow"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reasons_are_trimmed_cut_at_a_character_and_never_empty() {
        assert_eq!(reason_of(None), NO_REASON);
        assert_eq!(reason_of(Some("  ".into())), NO_REASON);
        assert_eq!(reason_of(Some(" spam ".into())), "spam");
        let long = "é".repeat(REASON_MAX);
        let cut = reason_of(Some(long));
        assert!(cut.len() <= REASON_MAX && cut.chars().all(|c| c == 'é'));
    }
}

//! Idempotency keys: claiming each sender's `(from, cid)` keys, and resolving a key
//! that names another writer's message, waiting for it to be stored and taking the key
//! over when it never is (see *Differences* in `messages`: a cid never maps to two
//! stored messages). It must not store or fan out messages.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::try_join_all;

use super::prepared::Prepared;
use super::scripts::{CLAIM, RESOLVE};
use super::{TAKEOVER_AFTER, corrupt, group_by};
use crate::store::StoreError;
use crate::store::redis::RedisStore;
use crate::store::redis::keys::{conv_key, user_key};

/// What a claim came to.
pub(super) enum Claim {
    /// The key is ours (or the message has no cid).
    Mine,
    /// The key names another message: `(value, conv, id)`.
    Earlier(String, String, String),
}

/// What the message an idempotency key names came to.
pub(super) enum Resolved {
    Stored(Bytes),
    Missing,
    Cancelled,
}

impl RedisStore {
    /// Claims the idempotency keys of `todo`, one script per sender.
    pub(super) async fn claim(&self, todo: &[Prepared]) -> Result<Vec<Claim>, StoreError> {
        let by_sender = group_by(
            todo.iter()
                .enumerate()
                .filter(|(_, p)| p.cid.is_some())
                .map(|(i, p)| (i, p.from.as_str())),
        );
        let calls = by_sender.iter().map(|(from, idx)| {
            let mut inv = CLAIM.prepare_invoke();
            inv.arg(self.idempotency_ms);
            for &i in idx {
                let p = &todo[i];
                let cid = p.cid.as_deref().unwrap_or_default();
                inv.key(user_key(from, &format!("cid:{cid}")))
                    .arg(p.claim())
                    .arg(p.take_over.as_deref().unwrap_or(""));
            }
            let mut conn = self.conn.clone();
            async move {
                inv.invoke_async::<Vec<String>>(&mut conn)
                    .await
                    .map_err(StoreError::from)
            }
        });
        let replies = try_join_all(calls).await?;
        let mut out: Vec<Claim> = todo.iter().map(|_| Claim::Mine).collect();
        for ((_, idx), reply) in by_sender.iter().zip(replies) {
            for (&i, value) in idx.iter().zip(reply) {
                if value.is_empty() {
                    continue;
                }
                let (conv, id) = value
                    .rsplit_once('\n')
                    .map(|(c, i)| (c.to_owned(), i.to_owned()))
                    .ok_or_else(|| corrupt(format!("idempotency key value {value:?}")))?;
                out[i] = Claim::Earlier(value, conv, id);
            }
        }
        Ok(out)
    }

    /// Looks up message `id` of `conv`; with `cancel`, cancels it if it is not stored.
    pub(super) async fn resolve(
        &self,
        conv: &str,
        id: &str,
        cancel: bool,
    ) -> Result<Resolved, StoreError> {
        let mut conn = self.conn.clone();
        let (code, json): (i64, Vec<u8>) = RESOLVE
            .key(conv_key(conv, "ids"))
            .key(conv_key(conv, "msgs"))
            .arg(id)
            .arg(u8::from(cancel))
            .invoke_async(&mut conn)
            .await?;
        Ok(match code {
            0 => Resolved::Stored(Bytes::from(json)),
            1 => Resolved::Missing,
            _ => Resolved::Cancelled,
        })
    }

    /// Waits for message `id` of `conv`, which the idempotency key of `resend` names, to
    /// be stored; once the claim is [`TAKEOVER_AFTER`] old (its key's age, from its
    /// remaining TTL), cancels it.
    pub(super) async fn await_stored(
        &self,
        resend: &Prepared,
        conv: &str,
        id: &str,
    ) -> Result<Resolved, StoreError> {
        let key = user_key(
            &resend.from,
            &format!("cid:{}", resend.cid.as_deref().unwrap_or_default()),
        );
        let mut conn = self.conn.clone();
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
        // -2: the key is gone, -1: no expiry (not ours): nothing to wait for.
        let age = if pttl >= 0 {
            Duration::from_millis((self.idempotency_ms - pttl).max(0) as u64)
        } else {
            TAKEOVER_AFTER
        };
        let deadline = Instant::now() + TAKEOVER_AFTER.saturating_sub(age);
        let mut backoff = Duration::from_millis(1);
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
            let cancel = Instant::now() >= deadline;
            match self.resolve(conv, id, cancel).await? {
                Resolved::Missing => {}
                r => {
                    if cancel {
                        tracing::warn!(
                            conv,
                            id,
                            "idempotency key named a message never stored; taken over"
                        );
                    }
                    return Ok(r);
                }
            }
        }
    }
}

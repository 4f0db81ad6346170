//! A join: gives a user (an agent taking a customer-service conversation over) every
//! message of the conversation it does not have, under the conversation's lease, so
//! that no message committed meanwhile can land between the copy and the user's
//! membership; the copy moves the conversation's entry of the user's list to the last
//! copied message's commit time, as a member append does. It must not decide who
//! joins.

use std::collections::VecDeque;

use bytes::Bytes;

use super::scripts::{APPEND, CHUNK};
use super::{JOIN_CHUNK, LEASE_MS};
use crate::store::redis::RedisStore;
use crate::store::redis::keys::{conv_key, user_key};
use crate::store::{Committed, JOIN_PUSH_TAIL, StoreError};

impl RedisStore {
    /// Gives `uid` the messages of `conv` after those it has, under the conversation's
    /// lease; returns the last [`JOIN_PUSH_TAIL`] of them.
    pub(super) async fn join(&self, conv: &str, uid: &str) -> Result<Vec<Committed>, StoreError> {
        let lost = |conv| StoreError::JoinLeaseLost { conv };
        self.with_lease(conv, lost, async |token, _| {
            self.copy_history(conv, uid, token).await
        })
        .await
    }

    /// The copy of a join: the messages after `pos[conv]` (those retention kept) into
    /// `uid`'s inbox, in chunks.
    pub(super) async fn copy_history(
        &self,
        conv: &str,
        uid: &str,
        token: &str,
    ) -> Result<Vec<Committed>, StoreError> {
        let mut conn = self.conn.clone();
        let have: Option<u64> = redis::cmd("HGET")
            .arg(user_key(uid, "pos"))
            .arg(conv)
            .query_async(&mut conn)
            .await?;
        let mut next = have.unwrap_or(0);
        let mut tail: VecDeque<Committed> = VecDeque::with_capacity(JOIN_PUSH_TAIL);
        loop {
            let (mine, jsons, from): (i64, Vec<Vec<u8>>, u64) = CHUNK
                .key(conv_key(conv, "msgs"))
                .key(conv_key(conv, "lock"))
                .arg(token)
                .arg(LEASE_MS)
                .arg(next)
                .arg(JOIN_CHUNK)
                .invoke_async(&mut conn)
                .await?;
            if mine != 1 {
                return Err(StoreError::JoinLeaseLost {
                    conv: conv.to_owned(),
                });
            }
            // Later than asked when retention removed what followed: the copy starts at
            // the oldest message kept.
            next = from;
            let n = jsons.len() as u64;
            if n == 0 {
                break;
            }
            let jsons: Vec<Bytes> = jsons.into_iter().map(Bytes::from).collect();
            let mut inv = APPEND.key(user_key(uid, "inbox"));
            inv.key(user_key(uid, "pos"))
                .key(user_key(uid, "convs"))
                .arg(conv);
            for (k, json) in jsons.iter().enumerate() {
                inv.arg(next + 1 + k as u64)
                    .arg(ts_of(json)?)
                    .arg(&json[..]);
            }
            let useqs: Vec<u64> = inv.invoke_async(&mut conn).await?;
            for (k, (json, useq)) in jsons.into_iter().zip(useqs).enumerate() {
                if useq == 0 {
                    continue;
                }
                if tail.len() == JOIN_PUSH_TAIL {
                    tail.pop_front();
                }
                tail.push_back(Committed {
                    json,
                    conv: conv.to_owned(),
                    seq: next + 1 + k as u64,
                    // As the embedded store: a join's records carry no commit time.
                    ts: 0,
                    recipients: vec![(uid.to_owned(), useq)],
                });
            }
            next += n;
            if n < JOIN_CHUNK {
                break;
            }
        }
        Ok(tail.into())
    }
}

/// The commit time of a stored message (for the joiner's conversation list).
fn ts_of(json: &[u8]) -> Result<i64, StoreError> {
    #[derive(serde::Deserialize)]
    struct Ts {
        ts: i64,
    }
    serde_json::from_slice::<Ts>(json)
        .map(|t| t.ts)
        .map_err(|e| StoreError::decode("message", e))
}

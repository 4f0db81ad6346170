//! A recall: replaces a stored message by its recalled form in its conversation and in
//! the inboxes that hold it (the *Recall* section of `messages`). The conversation's
//! copy changes under the fan-out lease, once every pending fan-out up to it is
//! written, so that no inbox can receive the original afterwards; the inboxes are then
//! rewritten without the lease. It must not decide who may recall what: the `Recall`
//! carries the sender and the time limit, and this only checks them.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use shared::protocol::Message;

use super::drain::Drain;
use super::scripts::{HELD, PAGE, RECALL_INBOX, RECALL_SET};
use super::{LEASE_MS, RECALL_CHUNK, RECALL_HOLDERS_AT_ONCE, RECALL_SCAN, corrupt};
use crate::store::redis::RedisStore;
use crate::store::redis::keys::{conv_key, user_key};
use crate::store::{Recall, RecallRefused, StoreError, recalled_json};

/// What the conversation's part of a recall came to: refused, or the inbox entries
/// to rewrite.
pub(super) enum Checked {
    Refused(RecallRefused),
    Rewrite {
        /// The message's id.
        id: String,
        /// The message's JSON up to and with the comma after its seq: what both its
        /// forms start with, and no other message's JSON.
        prefix: Vec<u8>,
        /// Its recalled form.
        recalled: Vec<u8>,
        /// It was recalled before this call.
        already: bool,
    },
}

impl RedisStore {
    /// Recalls `r.seq` of `r.conv`, or says why not; the caller commits `r.event`
    /// after an `Ok`, which holds the message's id and recalled JSON. A message recalled before gets [`RecallRefused::AlreadyRecalled`],
    /// but its inboxes are rewritten again, so that a recall that died half-way is
    /// finished by the next try.
    pub(super) async fn recall(
        &self,
        r: &Recall,
    ) -> Result<Result<(String, Bytes), RecallRefused>, StoreError> {
        match self.recall_in_conversation(r).await? {
            Checked::Refused(why) => Ok(Err(why)),
            Checked::Rewrite {
                id,
                prefix,
                recalled,
                already,
            } => {
                self.rewrite_inboxes(r, &prefix, &recalled).await?;
                Ok(if already {
                    Err(RecallRefused::AlreadyRecalled)
                } else {
                    Ok((id, Bytes::from(recalled)))
                })
            }
        }
    }

    /// Steps 1 to 3 of a recall (see `messages`): the conversation's part, under the
    /// lease.
    pub(super) async fn recall_in_conversation(&self, r: &Recall) -> Result<Checked, StoreError> {
        // The lease is released when this returns, before the inboxes are rewritten:
        // nothing can write the original into an inbox any more, and writers of the
        // conversation must not wait on the rewrite.
        let lost = |conv| StoreError::RecallLeaseLost { conv };
        self.with_lease(&r.conv, lost, async |token, drained| {
            self.recall_stored(r, token, drained).await
        })
        .await
    }

    /// The conversation's part, under the lease `token` whose drain reached
    /// `drained`: checks the message and sets its recalled form, then drains the
    /// pending fan-outs up to it if the first drain stopped short of it (the message
    /// was stored after that drain began).
    async fn recall_stored(
        &self,
        r: &Recall,
        token: &str,
        drained: u64,
    ) -> Result<Checked, StoreError> {
        let conv = r.conv.as_str();
        let Some(original) = self.message_at(conv, r.seq).await? else {
            return Ok(Checked::Refused(RecallRefused::NotFound));
        };
        let m: Message =
            serde_json::from_slice(&original).map_err(|e| StoreError::decode("message", e))?;
        if m.is_event() || r.sender.as_ref().is_some_and(|s| *s != m.from) {
            return Ok(Checked::Refused(RecallRefused::NotSender));
        }
        if m.ts < r.not_before {
            return Ok(Checked::Refused(RecallRefused::TooLate));
        }
        let prefix = identity_prefix(&original)?;
        let recalled = if m.recalled {
            original
        } else {
            let recalled = recalled_json(&original)?.to_vec();
            let set: i64 = RECALL_SET
                .key(conv_key(conv, "msgs"))
                .key(conv_key(conv, "lock"))
                .arg(token)
                .arg(LEASE_MS)
                .arg(r.seq)
                .arg(&original[..])
                .arg(&recalled[..])
                .invoke_async(&mut self.conn.clone())
                .await?;
            match set {
                1 => {}
                0 => {
                    return Err(StoreError::RecallLeaseLost {
                        conv: conv.to_owned(),
                    });
                }
                // Retention removed it since it was read.
                3 => return Ok(Checked::Refused(RecallRefused::NotFound)),
                _ => return Err(corrupt(format!("{conv} {} changed under the lease", r.seq))),
            }
            recalled
        };
        if r.seq > drained {
            let step = self.step(conv, token, 0, r.seq, true).await?;
            let (fanned, held) = self.drain(conv, token, step, Drain::Join).await;
            self.relay(fanned);
            if held?.code != HELD {
                return Err(StoreError::RecallLeaseLost {
                    conv: conv.to_owned(),
                });
            }
        }
        Ok(Checked::Rewrite {
            id: m.id,
            prefix,
            recalled,
            already: m.recalled,
        })
    }

    /// The message at `seq` of `conv`, if it is there (retention may have removed it).
    pub(super) async fn message_at(
        &self,
        conv: &str,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(after) = seq.checked_sub(1) else {
            return Ok(None);
        };
        let (base, mut items): (u64, Vec<Vec<u8>>) = PAGE
            .key(conv_key(conv, "msgs"))
            .arg(after)
            .arg(1)
            .invoke_async(&mut self.conn.clone())
            .await?;
        // Past the base, the item read is the one at `seq`; before it, a later one.
        Ok(items.pop().filter(|_| base <= after))
    }

    /// Sets the entry of the message in each holder's inbox to `recalled`, a bounded
    /// number of holders at a time.
    ///
    /// Each inbox is looked at from its tail down, [`RECALL_CHUNK`] entries per script,
    /// and at most [`RECALL_SCAN`] entries: the look stops at the entry, at an entry of
    /// the same conversation with a lower seq (a conversation's entries are in seq
    /// order in every inbox), or at the bound. A holder whose inbox received more than
    /// [`RECALL_SCAN`] entries after the message keeps the original in its inbox (the
    /// conversation's history shows it recalled); within a recall window of minutes
    /// that takes hundreds of messages a minute into one inbox.
    async fn rewrite_inboxes(
        &self,
        r: &Recall,
        prefix: &[u8],
        recalled: &[u8],
    ) -> Result<(), StoreError> {
        let mut field = serde_json::to_vec(&r.conv).map_err(StoreError::encode)?;
        field.extend_from_slice(b",\"seq\":");
        let mut holders: Vec<&str> = r.holders.iter().map(String::as_str).collect();
        holders.sort_unstable();
        holders.dedup();
        let rewrites: Vec<_> = holders
            .into_iter()
            .map(|uid| self.rewrite_inbox(uid, r, prefix, &field, recalled))
            .collect();
        stream::iter(rewrites)
            .buffer_unordered(RECALL_HOLDERS_AT_ONCE)
            .try_collect::<()>()
            .await
    }

    /// [`RedisStore::rewrite_inboxes`] for one holder: the entry's field of the
    /// conversation is `field` (`<conv JSON>,"seq":`).
    async fn rewrite_inbox(
        &self,
        uid: &str,
        r: &Recall,
        prefix: &[u8],
        field: &[u8],
        recalled: &[u8],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut from: i64 = -1;
        for _ in 0..RECALL_SCAN.div_ceil(RECALL_CHUNK) {
            let (code, next): (i64, i64) = RECALL_INBOX
                .key(user_key(uid, "inbox"))
                .key(user_key(uid, "pos"))
                .arg(&r.conv)
                .arg(r.seq)
                .arg(from)
                .arg(RECALL_CHUNK)
                .arg(prefix)
                .arg(field)
                .arg(recalled)
                .invoke_async(&mut conn)
                .await?;
            if code != 1 {
                return Ok(());
            }
            from = next;
        }
        tracing::warn!(%uid, conv = %r.conv, seq = r.seq, "recalled message not found near the inbox's tail; left as it was");
        Ok(())
    }
}

/// A stored message's JSON up to and with the comma after its seq
/// (`{"id":…,"conv":…,"seq":N,`): the same in its original and recalled forms, and
/// unique to it (message ids are).
///
/// A JSON string never holds `,"` unescaped, so the first `,"seq":` is the field.
fn identity_prefix(json: &[u8]) -> Result<Vec<u8>, StoreError> {
    const FIELD: &[u8] = b",\"seq\":";
    let at = json
        .windows(FIELD.len())
        .position(|w| w == FIELD)
        .ok_or_else(|| corrupt("message JSON without a seq field"))?
        + FIELD.len();
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    match json.get(at + digits) {
        Some(b',') if digits > 0 => Ok(json[..=at + digits].to_vec()),
        _ => Err(corrupt("message JSON with a bad seq field")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{Content, NewMessage};

    /// Both forms of a message start with its prefix; a message whose seq only starts
    /// with the same digits does not.
    #[test]
    fn the_identity_prefix_names_one_message_in_both_forms() {
        let m = NewMessage {
            id: "i,\"seq\":3,".into(),
            conv: "g:x".into(),
            from: "u".into(),
            cid: None,
            content: Content::Body(json!({"seq": 1})),
            ts: 5,
            members: vec![],
        };
        let json = serde_json::to_vec(&m.to_message(1)).unwrap();
        let prefix = identity_prefix(&json).unwrap();
        assert!(prefix.ends_with(b",\"seq\":1,"));
        assert!(recalled_json(&json).unwrap().starts_with(&prefix));
        let later = serde_json::to_vec(&m.to_message(12)).unwrap();
        assert!(!later.starts_with(&prefix));
        assert!(identity_prefix(b"{\"seq\":x}").is_err());
    }
}

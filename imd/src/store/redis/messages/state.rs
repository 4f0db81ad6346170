//! Conversation state: read positions (the `Read` ops of a commit) and each user's
//! conversation list with its unread counts. The list is an index kept by the member
//! appends (`convs`, see `super::keys`); a page reads it in one script on the user's
//! slot, with the last seq of each listed conversation in the user's inbox (`pos`),
//! then each conversation of the page up to that seq in one script on its own slot,
//! all issued at once (on standalone Redis, where slots do not matter, in one script
//! for the whole page, which costs a third of a page of scripts): two round trips,
//! whatever the number of the user's conversations. An entry shows the last message the user's inbox holds, as the
//! embedded store does (a message still being fanned out, or one committed after the
//! user left the conversation, is not in it). It must not write messages or inbox
//! entries.

use bytes::Bytes;
use futures_util::future::try_join_all;

use super::corrupt;
use super::scripts::{CONV_PAGE, CONV_STATE, CONV_STATES, READ};
use crate::store::redis::RedisStore;
use crate::store::redis::keys::{conv_key, user_key};
use crate::store::{CommitOutcome, ConvCursor, ConvEntry, Page, StoreError};

/// Whether a conversation's list entries carry every member's read position (direct
/// and customer-service conversations), from its id's kind prefix.
fn shows_reads(conv: &str) -> bool {
    conv.starts_with("d:") || conv.starts_with("s:")
}

/// `(uid, position)` pairs of a flat `HGETALL` reply, by uid.
fn positions(flat: Vec<String>) -> Result<Vec<(String, u64)>, StoreError> {
    if !flat.len().is_multiple_of(2) {
        return Err(corrupt("read positions: an odd reply"));
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(uid), Some(seq)) = (it.next(), it.next()) {
        let seq = seq
            .parse()
            .map_err(|_| corrupt(format!("read position {seq:?} of {uid}")))?;
        out.push((uid, seq));
    }
    out.sort();
    Ok(out)
}

/// A conversation as [`CONV_STATE`] reads it.
type StateReply = (u64, Vec<u8>, u64, Vec<String>, u64, u64);

impl RedisStore {
    /// Moves `uid`'s read position in `conv` forward to `seq`, clamped to the last seq.
    pub(super) async fn read(
        &self,
        conv: &str,
        uid: &str,
        seq: u64,
    ) -> Result<CommitOutcome, StoreError> {
        let (seq, moved): (u64, u8) = READ
            .key(conv_key(conv, "msgs"))
            .key(conv_key(conv, "read"))
            .arg(uid)
            .arg(seq)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(CommitOutcome::Read {
            seq,
            moved: moved == 1,
        })
    }

    /// A page of `uid`'s conversation list (see `MessageStore::conversations`).
    pub(super) async fn conversation_page(
        &self,
        uid: &str,
        before: Option<&ConvCursor>,
        limit: u32,
    ) -> Result<Page<ConvEntry>, StoreError> {
        let limit = limit.max(1);
        let mut inv = CONV_PAGE.key(user_key(uid, "convs"));
        inv.key(user_key(uid, "pos"));
        match before {
            Some(c) => inv.arg(1).arg(c.ts).arg(&c.conv),
            None => inv.arg(0).arg(0).arg(""),
        };
        // One more than asked, to know whether more follow.
        let (flat, have): (Vec<String>, Vec<u64>) = inv
            .arg(u64::from(limit) + 1)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if flat.len() != 2 * have.len() {
            return Err(corrupt("conversation list: a reply of the wrong shape"));
        }
        let mut listed: Vec<(String, i64, u64)> = Vec::with_capacity(have.len());
        let mut it = flat.into_iter();
        for upto in have {
            let (Some(conv), Some(score)) = (it.next(), it.next()) else {
                break;
            };
            let ts = score
                .parse::<f64>()
                .map_err(|_| corrupt(format!("conversation list score {score:?}")))?;
            // Scores are commit times in ms, well inside f64's exact integers.
            listed.push((conv, ts as i64, upto));
        }
        let more = listed.len() > limit as usize;
        listed.truncate(limit as usize);
        let states = if self.conn.is_cluster() {
            try_join_all(
                listed
                    .iter()
                    .map(|(conv, _, upto)| self.conv_state(conv, uid, *upto)),
            )
            .await?
        } else {
            self.conv_states(&listed, uid).await?
        };
        let mut items = Vec::with_capacity(listed.len());
        for ((conv, ts, _), state) in listed.into_iter().zip(states) {
            let (last_seq, last, read_seq, reads, events_between, base) = state;
            if last.is_empty() {
                // Listed but retention removed its messages, before the user's list
                // follows (the next pass of the user's inbox does): nothing to show.
                continue;
            }
            // Exact: the user's own messages all lie at or below its read position
            // (sending one moves the position to it); what retention removed counts
            // no more.
            let unread = last_seq
                .saturating_sub(read_seq.max(base))
                .saturating_sub(events_between);
            items.push(ConvEntry {
                conv,
                ts,
                last: Bytes::from(last),
                last_seq,
                read_seq,
                unread,
                reads: positions(reads)?,
            });
        }
        Ok(Page {
            items,
            more,
            trimmed: false,
        })
    }

    /// One conversation of `uid`'s list, up to `upto`, the last seq of it in `uid`'s
    /// inbox (0: the conversation's end): that seq and message, `uid`'s position, every
    /// member's (direct and service conversations), and the event messages between
    /// `uid`'s position and `upto`.
    async fn conv_state(&self, conv: &str, uid: &str, upto: u64) -> Result<StateReply, StoreError> {
        CONV_STATE
            .key(conv_key(conv, "msgs"))
            .key(conv_key(conv, "read"))
            .key(conv_key(conv, "events"))
            .arg(uid)
            .arg(u8::from(shows_reads(conv)))
            .arg(upto)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    /// [`RedisStore::conv_state`] of every `(conv, _, upto)` of `listed`, in one script
    /// (standalone Redis only).
    async fn conv_states(
        &self,
        listed: &[(String, i64, u64)],
        uid: &str,
    ) -> Result<Vec<StateReply>, StoreError> {
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = CONV_STATES.prepare_invoke();
        inv.arg(uid);
        for (conv, _, upto) in listed {
            inv.key(conv_key(conv, "msgs"))
                .key(conv_key(conv, "read"))
                .key(conv_key(conv, "events"))
                .arg(u8::from(shows_reads(conv)))
                .arg(*upto);
        }
        let states: Vec<StateReply> = inv.invoke_async(&mut self.conn.clone()).await?;
        if states.len() != listed.len() {
            return Err(corrupt("conversation states: a reply of the wrong shape"));
        }
        Ok(states)
    }

    /// Whether `conv` is in `uid`'s conversation list.
    pub(super) async fn listed(&self, uid: &str, conv: &str) -> Result<bool, StoreError> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(user_key(uid, "convs"))
            .arg(conv)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(score.is_some())
    }

    /// Every read position recorded in `conv`, by uid.
    pub(super) async fn positions(&self, conv: &str) -> Result<Vec<(String, u64)>, StoreError> {
        // A flat list in RESP2, a map in RESP3 (the cluster's): both decode as pairs.
        let mut all: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(conv_key(conv, "read"))
            .query_async(&mut self.conn.clone())
            .await?;
        all.sort();
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_pair_up_and_sort_by_uid() {
        let flat = ["b", "3", "a", "7"].map(String::from).to_vec();
        assert_eq!(
            positions(flat).unwrap(),
            vec![("a".to_owned(), 7), ("b".to_owned(), 3)]
        );
        assert!(positions(vec!["a".into()]).is_err());
        assert!(positions(["a", "x"].map(String::from).to_vec()).is_err());
    }

    #[test]
    fn direct_and_service_conversations_show_every_position() {
        assert!(shows_reads("d:a~b"));
        assert!(shows_reads("s:shop~c"));
        assert!(!shows_reads("g:team"));
    }
}

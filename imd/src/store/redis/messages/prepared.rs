//! A message made ready to store: its JSON cut around the seq (so the store script
//! writes exactly what serde writes for it, whatever seq it gets), its idempotency
//! claim and its pending entry. It must not talk to Redis.

use bytes::Bytes;
use shared::protocol::Message;

use super::corrupt;
use crate::store::{NewMessage, StoreError};

/// A message ready to store: its JSON around the seq, and its idempotency claim.
pub(super) struct Prepared {
    /// Position of its op in the batch.
    pub(super) idx: usize,
    pub(super) id: String,
    pub(super) conv: String,
    pub(super) from: String,
    pub(super) cid: Option<String>,
    pub(super) ts: i64,
    pub(super) members: Vec<String>,
    /// An event message: it moves no read position.
    pub(super) event: bool,
    /// The message JSON up to the seq's digits, and from after them.
    pub(super) prefix: Vec<u8>,
    pub(super) suffix: Vec<u8>,
    /// An idempotency key's value this message may take over (its message was
    /// cancelled).
    pub(super) take_over: Option<String>,
}

impl Prepared {
    pub(super) fn new(idx: usize, m: NewMessage) -> Result<Self, StoreError> {
        let (prefix, suffix) = split_json(&m.to_message(0))?;
        let event = m.is_event();
        let NewMessage {
            id,
            conv,
            from,
            cid,
            ts,
            members,
            ..
        } = m;
        Ok(Self {
            idx,
            id,
            conv,
            from,
            cid,
            ts,
            members,
            event,
            prefix,
            suffix,
            take_over: None,
        })
    }

    /// The message JSON with `seq`: what serde writes for the `Message`.
    pub(super) fn json(&self, seq: u64) -> Bytes {
        let seq = seq.to_string();
        let mut v = Vec::with_capacity(self.prefix.len() + seq.len() + self.suffix.len());
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(seq.as_bytes());
        v.extend_from_slice(&self.suffix);
        Bytes::from(v)
    }

    /// The value of its idempotency key.
    pub(super) fn claim(&self) -> String {
        format!("{}\n{}", self.conv, self.id)
    }

    /// Whose read position storing it moves: its sender, or `""` for an event message
    /// (the store script's argument).
    pub(super) fn reader(&self) -> &str {
        if self.event { "" } else { &self.from }
    }

    /// Its pending entry after the seq: `" <ts>\n<uid>…"`.
    pub(super) fn pending_tail(&self) -> String {
        let mut s = format!(" {}", self.ts);
        for uid in &self.members {
            s.push('\n');
            s.push_str(uid);
        }
        s
    }
}

/// Serializes `msg` (whose seq is 0) and splits it around the seq's digit.
///
/// A JSON string never holds `,"` unescaped, so the first `,"seq":0,` is the field.
pub(super) fn split_json(msg: &Message) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    const FIELD: &[u8] = b",\"seq\":0,";
    let json = serde_json::to_vec(msg).map_err(StoreError::encode)?;
    let at = json
        .windows(FIELD.len())
        .position(|w| w == FIELD)
        .ok_or_else(|| corrupt("message JSON without a seq field"))?;
    let digit = at + FIELD.len() - 2;
    Ok((json[..digit].to_vec(), json[digit + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The JSON built around a seq is what serde writes for the same message, for every
    /// shape of message: with and without cid, strings that look like fields, big seqs.
    #[test]
    fn json_around_the_seq_is_what_serde_writes() {
        let cases = [
            (
                "id1",
                "d:a~b",
                None,
                json!({"t": "hi"}),
                1_700_000_000_000,
                1,
            ),
            (
                "i,\"seq\":0,",
                "g:x",
                Some("c,\"seq\":0,"),
                json!("a,\"seq\":0,b"),
                -1,
                10,
            ),
            (
                "id3",
                "s:shop~c",
                Some("k"),
                json!([1, {"seq": 0}]),
                0,
                u64::MAX,
            ),
            ("id4", "d:é~ü", None, json!(null), 42, 1234567),
        ];
        for (id, conv, cid, body, ts, seq) in cases {
            let m = NewMessage {
                id: id.into(),
                conv: conv.into(),
                from: "u".into(),
                cid: cid.map(Into::into),
                content: crate::store::Content::Body(body.clone()),
                ts,
                members: vec!["u".into(), "v".into()],
            };
            let p = Prepared::new(0, m).unwrap();
            let expected = serde_json::to_vec(&Message {
                id: id.into(),
                conv: conv.into(),
                seq,
                from: "u".into(),
                body: Some(body),
                event: None,
                ts,
                cid: cid.map(Into::into),
                recalled: false,
                erased: false,
            })
            .unwrap();
            assert_eq!(p.json(seq), expected, "case {id}");
            assert_eq!(p.pending_tail(), format!(" {ts}\nu\nv"));
        }
    }
}

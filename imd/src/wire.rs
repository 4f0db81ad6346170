//! Encoders of the frames and bodies built from pre-serialized message JSON.
//!
//! A message is serialized once, at commit; these functions splice those bytes into
//! the frames around them instead of decoding and re-encoding the message.

use bytes::Bytes;
use shared::protocol::{ErrorCode, ServerFrame};

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serializes")
}

fn raw(json: &Bytes) -> &str {
    // Message JSON comes from serde_json, so it is always UTF-8; a store that handed
    // back anything else would be corrupt, and an empty object is the safe stand-in.
    std::str::from_utf8(json).unwrap_or("{}")
}

/// `{"type":"msg","useq":N,"msg":…}`
pub fn push_frame(useq: u64, msg: &Bytes) -> String {
    let msg = raw(msg);
    let mut s = String::with_capacity(msg.len() + 40);
    s.push_str(r#"{"type":"msg","useq":"#);
    s.push_str(itoa(useq).as_str());
    s.push_str(r#","msg":"#);
    s.push_str(msg);
    s.push('}');
    s
}

/// `{"type":"sent","cid":…,"msg":…}`
pub fn sent_frame(cid: Option<&str>, msg: &Bytes) -> String {
    let cid = cid.map_or_else(|| "null".to_owned(), json_str);
    format!(r#"{{"type":"sent","cid":{cid},"msg":{}}}"#, raw(msg))
}

/// `{"msg":…}`, the answer of `POST /v1/messages`.
pub fn send_response(msg: &Bytes) -> String {
    format!(r#"{{"msg":{}}}"#, raw(msg))
}

/// `[{"useq":N,"msg":…},…]` followed by `,"more":b,"generation":G}` (and
/// `"trimmed":true` when `trimmed`); `head` opens the object.
fn inbox_page(
    head: &str,
    items: &[(u64, Bytes)],
    more: bool,
    trimmed: bool,
    generation: &str,
) -> String {
    let len: usize = items.iter().map(|(_, m)| m.len() + 24).sum();
    let mut s = String::with_capacity(head.len() + len + 40 + generation.len());
    s.push_str(head);
    s.push('[');
    for (i, (useq, msg)) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r#"{"useq":"#);
        s.push_str(itoa(*useq).as_str());
        s.push_str(r#","msg":"#);
        s.push_str(raw(msg));
        s.push('}');
    }
    s.push_str(if more {
        r#"],"more":true,"#
    } else {
        r#"],"more":false,"#
    });
    if trimmed {
        s.push_str(r#""trimmed":true,"#);
    }
    s.push_str(r#""generation":"#);
    s.push_str(&json_str(generation));
    s.push('}');
    s
}

/// `{"type":"synced","msgs":[…],"more":b,"generation":G}`, with `"trimmed":true` when
/// the read started before what retention kept.
pub fn synced_frame(items: &[(u64, Bytes)], more: bool, trimmed: bool, generation: &str) -> String {
    inbox_page(
        r#"{"type":"synced","msgs":"#,
        items,
        more,
        trimmed,
        generation,
    )
}

/// `{"msgs":[{"useq","msg"}…],"more":b,"generation":G}`, the answer of `GET /v1/sync`,
/// with `"trimmed":true` when the read started before what retention kept.
pub fn sync_response(
    items: &[(u64, Bytes)],
    more: bool,
    trimmed: bool,
    generation: &str,
) -> String {
    inbox_page(r#"{"msgs":"#, items, more, trimmed, generation)
}

/// `{"msgs":[msg…],"more":b}`, the answer of a history read, with `"trimmed":true`
/// when the read started before what retention kept.
pub fn history_response(items: &[Bytes], more: bool, trimmed: bool) -> String {
    let len: usize = items.iter().map(|m| m.len() + 1).sum();
    let mut s = String::with_capacity(len + 24);
    s.push_str(r#"{"msgs":["#);
    for (i, msg) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(raw(msg));
    }
    s.push_str(if more {
        r#"],"more":true"#
    } else {
        r#"],"more":false"#
    });
    s.push_str(if trimmed { r#","trimmed":true}"# } else { "}" });
    s
}

/// `{"type":"error",…}`
pub fn error_frame(cid: Option<String>, code: ErrorCode, message: impl Into<String>) -> String {
    let frame = ServerFrame::Error {
        cid,
        code,
        message: message.into(),
    };
    serde_json::to_string(&frame).expect("frames always serialize")
}

/// `{"type":"kick","reason":…}`
pub fn kick_frame(reason: &str) -> String {
    format!(r#"{{"type":"kick","reason":{}}}"#, json_str(reason))
}

/// `{"type":"pong"}`
pub const PONG_FRAME: &str = r#"{"type":"pong"}"#;

fn itoa(n: u64) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::{HistoryResponse, InboxItem, Message, SyncResponse};

    fn msg(seq: u64) -> (Message, Bytes) {
        let m = Message {
            id: format!("id{seq}"),
            conv: "d:a~b".into(),
            seq,
            from: "a".into(),
            body: Some(serde_json::json!({"t": "é\"\n"})),
            ts: 1,
            cid: Some("c\"1".into()),
            ..Default::default()
        };
        let b = Bytes::from(serde_json::to_vec(&m).unwrap());
        (m, b)
    }

    #[test]
    fn spliced_frames_decode_as_the_protocol_types() {
        let (m1, b1) = msg(1);
        let (m2, b2) = msg(2);
        let f: ServerFrame = serde_json::from_str(&push_frame(7, &b1)).unwrap();
        assert_eq!(
            f,
            ServerFrame::Msg {
                useq: 7,
                msg: m1.clone()
            }
        );
        let f: ServerFrame = serde_json::from_str(&sent_frame(Some("c\"1"), &b1)).unwrap();
        assert_eq!(
            f,
            ServerFrame::Sent {
                cid: Some("c\"1".into()),
                msg: m1.clone()
            }
        );
        let f: ServerFrame = serde_json::from_str(&sent_frame(None, &b1)).unwrap();
        assert_eq!(
            f,
            ServerFrame::Sent {
                cid: None,
                msg: m1.clone()
            }
        );
        let items = vec![(3, b1.clone()), (4, b2.clone())];
        let f: ServerFrame =
            serde_json::from_str(&synced_frame(&items, true, false, "1-ab")).unwrap();
        let expect = vec![
            InboxItem {
                useq: 3,
                msg: m1.clone(),
            },
            InboxItem {
                useq: 4,
                msg: m2.clone(),
            },
        ];
        assert_eq!(
            f,
            ServerFrame::Synced {
                msgs: expect.clone(),
                more: true,
                generation: "1-ab".into(),
                trimmed: false,
            }
        );
        let r: SyncResponse =
            serde_json::from_str(&sync_response(&items, false, true, "1-ab")).unwrap();
        assert_eq!(
            r,
            SyncResponse {
                msgs: expect,
                more: false,
                generation: "1-ab".into(),
                trimmed: true,
            }
        );
        let r: SyncResponse =
            serde_json::from_str(&sync_response(&[], false, false, "1-ab")).unwrap();
        assert!(r.msgs.is_empty() && !r.trimmed);
        let r: HistoryResponse =
            serde_json::from_str(&history_response(&[b1.clone(), b2.clone()], true, false))
                .unwrap();
        assert_eq!(
            r,
            HistoryResponse {
                msgs: vec![m1.clone(), m2.clone()],
                more: true,
                trimmed: false,
            }
        );
        let r: HistoryResponse =
            serde_json::from_str(&history_response(&[b2], false, true)).unwrap();
        assert_eq!((r.msgs, r.more, r.trimmed), (vec![m2], false, true));
        // Absent unless true: the answers of a store that keeps everything are as before.
        assert!(!history_response(&[b1], false, false).contains("trimmed"));
        let f: ServerFrame = serde_json::from_str(&kick_frame("shutdown")).unwrap();
        assert_eq!(
            f,
            ServerFrame::Kick {
                reason: "shutdown".into()
            }
        );
        let f: ServerFrame = serde_json::from_str(PONG_FRAME).unwrap();
        assert_eq!(f, ServerFrame::Pong);
    }
}

//! `imctl tail conversation CONV [--from-seq N] [--count N]`: one line per message,
//! following the conversation until interrupted.
//!
//! When the stream breaks (the server restarts, the network drops) it reconnects from
//! the seq after the last one printed, so that nothing is printed twice or skipped.

use std::time::Duration;

use shared::protocol::Message;

use crate::cli::TailCmd;
use crate::client::{Client, ClientError, ErrorKind};
use crate::output::{Out, Paint, clock, message_text};

/// First wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn run(client: &Client, out: &Out, cmd: TailCmd) -> anyhow::Result<()> {
    let TailCmd::Conversation {
        conv,
        from_seq,
        count,
    } = cmd;
    if count == Some(0) {
        return Ok(());
    }
    // Connect once up front: a bad token or an unknown conversation fails right away.
    let mut stream = client.stream(&conv, from_seq).await?;
    // On stderr, so that stdout stays one line per message; scripts (and tests) may wait
    // for it to know that nothing sent from now on can be missed.
    let from = from_seq.map_or_else(|| "new messages".to_owned(), |n| format!("seq {n}"));
    eprintln!("imctl: following {conv} from {from} (Ctrl-C stops)");
    let mut next = from_seq;
    let mut printed = 0u64;
    loop {
        let lost: ClientError = match stream.next().await {
            Some(Ok(msg)) => {
                out.line(&line(out, &msg))?;
                next = Some(msg.seq + 1);
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    return Ok(());
                }
                continue;
            }
            Some(Err(e)) if e.kind() == ErrorKind::Unreachable => e,
            Some(Err(e)) => return Err(e.into()),
            None => ClientError::Unreachable {
                url: client.server().to_owned(),
                detail: "the server closed the stream".into(),
            },
        };
        stream = reconnect(client, &conv, next, &lost).await?;
    }
}

/// Reconnects until the server takes the stream again; fails on errors a retry cannot
/// mend (the token, the conversation).
async fn reconnect(
    client: &Client,
    conv: &str,
    next: Option<u64>,
    lost: &ClientError,
) -> anyhow::Result<crate::client::MessageStream> {
    let from = next.map_or_else(|| "new messages".to_owned(), |n| format!("seq {n}"));
    eprintln!("imctl: {lost}; reconnecting from {from}");
    let mut wait = FIRST_BACKOFF;
    loop {
        tokio::time::sleep(wait).await;
        match client.stream(conv, next).await {
            Ok(s) => {
                eprintln!("imctl: reconnected to {}", client.server());
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::Unreachable => wait = (wait * 2).min(MAX_BACKOFF),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `#7  11:30:55  alice: hi`, the seq dimmed and the sender coloured on a terminal.
/// With `--json`, the message as the server sent it.
fn line(out: &Out, msg: &Message) -> String {
    if out.json {
        return serde_json::to_string(msg).unwrap_or_default();
    }
    format!(
        "{}  {}  {}: {}",
        out.paint(Paint::Dim, &format!("#{}", msg.seq)),
        clock(msg.ts),
        out.paint(Paint::Cyan, &msg.from),
        message_text(msg)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_line_per_message() {
        let msg = Message {
            id: "01".into(),
            conv: "d:a~b".into(),
            seq: 7,
            from: "alice".into(),
            body: Some(json!({"text": "is the\nblue one in stock?"})),
            ts: 3_600_000 + 61_000,
            cid: None,
            ..Default::default()
        };
        let plain = Out {
            json: false,
            colour: false,
        };
        assert_eq!(
            line(&plain, &msg),
            "#7  01:01:01  alice: is the blue one in stock?"
        );
        let json_out = Out {
            json: true,
            colour: false,
        };
        let back: Message = serde_json::from_str(&line(&json_out, &msg)).unwrap();
        assert_eq!(back, msg);
    }
}

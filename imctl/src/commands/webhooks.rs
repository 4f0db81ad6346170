//! `imctl webhooks status|parked|redrive`: the webhook to business systems.

use shared::time::now_ms;

use crate::cli::WebhooksCmd;
use crate::client::Client;
use crate::output::{Out, Table, datetime, duration, relative};

pub(super) async fn run(client: &Client, out: &Out, cmd: WebhooksCmd) -> anyhow::Result<()> {
    match cmd {
        WebhooksCmd::Status => {
            let s = client.webhooks().await?;
            if out.json {
                return out.json_line(&s);
            }
            let mut t = Table::new(&["", ""]);
            t.row(vec![
                "receiver".into(),
                if s.receiver_up {
                    "up"
                } else {
                    "down (probing)"
                }
                .into(),
            ]);
            t.row(vec![
                "delivered".into(),
                format!("{} (failed tries {})", s.delivered, s.failed),
            ]);
            t.row(vec![
                "backlog".into(),
                format!(
                    "{} conversations, oldest retried event {}",
                    s.pending_conversations,
                    if s.lag_ms > 0 {
                        duration(s.lag_ms)
                    } else {
                        "-".into()
                    }
                ),
            ]);
            t.row(vec![
                "parked".into(),
                format!(
                    "{} now ({} on this node since start)",
                    s.parked, s.parked_total
                ),
            ]);
            t.row(vec!["dropped".into(), s.dropped.to_string()]);
            out.table(&t, "")
        }
        WebhooksCmd::Parked { after, limit } => {
            let page = client.webhooks_parked(after, limit.clamp(1, 1000)).await?;
            if out.json {
                for e in &page.events {
                    out.json_line(e)?;
                }
                return Ok(());
            }
            let now = now_ms();
            let mut t = Table::new(&["ID", "CONV", "SEQ", "COMMITTED", "PARKED", "REASON"]);
            for e in &page.events {
                t.row(vec![
                    e.id.to_string(),
                    e.conv.clone(),
                    e.seq.to_string(),
                    format!("{} UTC", datetime(e.ts)),
                    relative(now, e.parked_ms),
                    e.reason.clone(),
                ]);
            }
            out.table(&t, "no parked events")?;
            if let Some(next) = page.next {
                out.line(&format!("more: imctl webhooks parked --after {next}"))?;
            }
            Ok(())
        }
        WebhooksCmd::Redrive { limit } => {
            let r = client.webhooks_redrive(limit.clamp(1, 1000)).await?;
            if out.json {
                return out.json_line(&r);
            }
            let mut line = format!("re-drove {} parked events", r.sent);
            if r.gone > 0 {
                line.push_str(&format!("; {} whose message is gone left the list", r.gone));
            }
            if r.failed > 0 {
                line.push_str("; stopped at a failure (the receiver may still be down)");
            }
            out.line(&line)
        }
    }
}

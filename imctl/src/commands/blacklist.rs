//! `imctl blacklist add|ls|rm`.

use serde_json::json;
use shared::admin::{AddBlacklist, BlacklistEntry};
use shared::time::now_ms;

use crate::cli::BlacklistCmd;
use crate::client::Client;
use crate::output::{Out, Paint, Table, datetime, relative};

pub(super) async fn run(client: &Client, out: &Out, cmd: BlacklistCmd) -> anyhow::Result<()> {
    match cmd {
        BlacklistCmd::Add {
            kind,
            value,
            ttl,
            reason,
        } => {
            let req = AddBlacklist {
                kind,
                value,
                ttl_s: ttl.map(|d| d.as_secs()),
                reason,
            };
            let entry = client.blacklist_add(&req).await?;
            if out.json {
                return out.json_line(&entry);
            }
            let until = match entry.expires_at {
                Some(t) => format!("until {} UTC ({})", datetime(t), relative(now_ms(), t)),
                None => "until removed".to_owned(),
            };
            let reason = entry
                .reason
                .as_deref()
                .map(|r| format!(", reason: {r}"))
                .unwrap_or_default();
            out.line(&format!(
                "blacklisted {} {} {until}{reason}; live connections it matches were kicked",
                entry.kind.as_str(),
                out.paint(Paint::Cyan, &entry.value),
            ))
        }
        BlacklistCmd::Ls => {
            let entries = client.blacklist().await?;
            if out.json {
                for e in &entries {
                    out.json_line(e)?;
                }
                return Ok(());
            }
            out.table(&table(&entries, now_ms()), "the blacklist is empty")
        }
        BlacklistCmd::Rm { kind, value } => {
            client.blacklist_remove(kind, &value).await?;
            if out.json {
                return out.json_line(&json!({"kind": kind, "value": value, "removed": true}));
            }
            out.line(&format!(
                "removed {} {} from the blacklist",
                kind.as_str(),
                out.paint(Paint::Cyan, &value)
            ))
        }
    }
}

/// The `ls` table.
fn table(entries: &[BlacklistEntry], now: i64) -> Table {
    let mut t = Table::new(&["KIND", "VALUE", "REASON", "EXPIRES"]);
    for e in entries {
        t.row(vec![
            e.kind.as_str().to_owned(),
            e.value.clone(),
            e.reason.clone().unwrap_or_else(|| "-".into()),
            e.expires_at
                .map_or_else(|| "never".to_owned(), |t| relative(now, t)),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::admin::BlacklistKind;

    #[test]
    fn ls_table() {
        let now = 1_000_000_000;
        let entries = [
            BlacklistEntry {
                kind: BlacklistKind::Uid,
                value: "mallory".into(),
                reason: Some("spam".into()),
                expires_at: Some(now + 3_600_000),
            },
            BlacklistEntry {
                kind: BlacklistKind::Ip,
                value: "10.1.0.0/16".into(),
                reason: None,
                expires_at: None,
            },
        ];
        assert_eq!(
            table(&entries, now).render(false),
            vec![
                "KIND  VALUE        REASON  EXPIRES",
                "uid   mallory      spam    in 1h",
                "ip    10.1.0.0/16  -       never",
            ]
        );
    }
}

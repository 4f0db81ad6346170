//! `imctl conv …`: one conversation's assignment, and the operator's actions on it
//! (recall a message, close, transfer). Each action prints what it did in one line.

use serde_json::json;

use crate::cli::ConvCmd;
use crate::client::Client;
use crate::output::{Out, Table};

pub(super) async fn run(client: &Client, out: &Out, cmd: ConvCmd) -> anyhow::Result<()> {
    match cmd {
        ConvCmd::Show { conv } => {
            let a = client.assignment(&conv).await?;
            if out.json {
                return out.json_line(&a);
            }
            let mut t = Table::new(&["CONV", "AGENT", "STATE"]);
            let state = match (a.open, &a.agent) {
                (false, _) => "closed",
                (true, Some(_)) => "open",
                (true, None) => "waiting",
            };
            t.row(vec![
                a.conv,
                a.agent.unwrap_or_else(|| "-".into()),
                state.into(),
            ]);
            out.table(&t, "")
        }
        ConvCmd::Recall { conv, seq } => {
            client.recall(&conv, seq).await?;
            done(
                out,
                json!({"conv": conv, "recalled": seq}),
                &format!("recalled #{seq} of {conv}"),
            )
        }
        ConvCmd::Close { conv } => {
            client.close(&conv).await?;
            done(
                out,
                json!({"conv": conv, "closed": true}),
                &format!("closed {conv}"),
            )
        }
        ConvCmd::Transfer { conv, agent } => {
            client.transfer(&conv, &agent).await?;
            done(
                out,
                json!({"conv": conv, "agent": agent}),
                &format!("transferred {conv} to {agent}"),
            )
        }
    }
}

/// Says what an action did: `json` with `--json`, else `line`.
fn done(out: &Out, json: serde_json::Value, line: &str) -> anyhow::Result<()> {
    if out.json {
        return out.json_line(&json);
    }
    out.line(line)
}

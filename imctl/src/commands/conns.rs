//! `imctl conns` and `imctl kick`.

use serde_json::json;
use shared::admin::ConnectionInfo;
use shared::time::now_ms;

use super::plural;
use crate::cli::ConnsArgs;
use crate::client::Client;
use crate::output::{Out, Paint, Table, relative};

pub(super) async fn list(client: &Client, out: &Out, args: ConnsArgs) -> anyhow::Result<()> {
    let mut conns = client.connections(args.uid.as_deref()).await?;
    if let Some(node) = &args.node {
        // The API has no node filter; the list is already complete here.
        conns.retain(|c| &c.node == node);
    }
    if out.json {
        for c in &conns {
            out.json_line(c)?;
        }
        return Ok(());
    }
    let empty = match (&args.uid, &args.node) {
        (Some(uid), _) => format!("{uid} has no connections"),
        (None, Some(node)) => format!("no connections on {node}"),
        (None, None) => "no connections".to_owned(),
    };
    out.table(&table(&conns, now_ms()), &empty)
}

/// The `conns` table.
fn table(conns: &[ConnectionInfo], now: i64) -> Table {
    let mut t = Table::new(&["UID", "DEVICE", "PLATFORM", "NODE", "REMOTE", "CONNECTED"]);
    for c in conns {
        t.row(vec![
            c.uid.clone(),
            c.device.clone(),
            c.platform.as_str().to_owned(),
            c.node.clone(),
            c.remote.clone(),
            relative(now, c.connected_at),
        ]);
    }
    t
}

pub(super) async fn kick(client: &Client, out: &Out, uid: &str) -> anyhow::Result<()> {
    let kicked = client.kick(uid).await?;
    if out.json {
        return out.json_line(&json!({"uid": uid, "kicked": kicked.kicked}));
    }
    out.line(&format!(
        "kicked {} of {}",
        plural(kicked.kicked, "device", "devices"),
        out.paint(Paint::Cyan, uid)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::token::Platform;

    #[test]
    fn conns_table() {
        let now = 10_000_000;
        let c = |uid: &str, device: &str, platform, ago_ms| ConnectionInfo {
            uid: uid.into(),
            device: device.into(),
            platform,
            node: "imd-8080".into(),
            remote: "127.0.0.1:50000".into(),
            connected_at: now - ago_ms,
            unacked: 0,
        };
        let conns = [
            c("alice", "laptop", Platform::Web, 180_000),
            c("alice", "phone", Platform::Ios, 500),
        ];
        assert_eq!(
            table(&conns, now).render(false),
            vec![
                "UID    DEVICE  PLATFORM  NODE      REMOTE           CONNECTED",
                "alice  laptop  web       imd-8080  127.0.0.1:50000  3m ago",
                "alice  phone   ios       imd-8080  127.0.0.1:50000  just now",
            ]
        );
    }
}

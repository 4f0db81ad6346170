//! `imctl group members`: show or set a group's list of uids.

use serde_json::json;

use crate::cli::GroupCmd;
use crate::client::Client;
use crate::output::{Out, Table};

pub(super) async fn group(client: &Client, out: &Out, cmd: GroupCmd) -> anyhow::Result<()> {
    let GroupCmd::Members { name, uids, clear } = cmd;
    let members = if uids.is_empty() && !clear {
        client.group_members(&name).await?
    } else {
        client.set_group_members(&name, uids.clone()).await?;
        uids
    };
    if out.json {
        return out.json_line(&json!({"group": name, "members": members}));
    }
    show(client, out, &format!("group {name}"), "MEMBER", &members).await
}

/// The uids with how many devices each has online: what an operator asks next.
async fn show(
    client: &Client,
    out: &Out,
    what: &str,
    title: &str,
    uids: &[String],
) -> anyhow::Result<()> {
    let mut t = Table::new(&[title, "DEVICES ONLINE"]);
    for uid in uids {
        let online = client.connections(Some(uid)).await?.len();
        t.row(vec![uid.clone(), online.to_string()]);
    }
    out.table(&t, &format!("{what} has nobody"))
}

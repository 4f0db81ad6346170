//! `imctl replay UID --after USEQ [--until USEQ]`.

use serde_json::json;
use shared::admin::Replay;

use super::plural;
use crate::cli::ReplayArgs;
use crate::client::Client;
use crate::output::{Out, Paint};

pub(super) async fn run(client: &Client, out: &Out, args: ReplayArgs) -> anyhow::Result<()> {
    if args.until.is_some_and(|u| u <= args.after) {
        anyhow::bail!("--until must be above --after");
    }
    let req = Replay {
        uid: args.uid.clone(),
        after: args.after,
        until: args.until,
    };
    let done = client.replay(&req).await?;
    if out.json {
        return out.json_line(&json!({
            "uid": args.uid,
            "messages": done.messages,
            "devices": done.devices,
        }));
    }
    let range = match args.until {
        Some(u) => format!("useq {}..={u}", args.after + 1),
        None => format!("useq {}..", args.after + 1),
    };
    let uid = out.paint(Paint::Cyan, &args.uid);
    if done.messages == 0 {
        // imd reads nothing when the user has no device online; say which it was.
        let online = client.connections(Some(&args.uid)).await?.len();
        return out.line(&if online == 0 {
            format!("pushed nothing: {uid} has no device online")
        } else {
            format!("pushed nothing: {uid}'s inbox has no entries in {range}")
        });
    }
    out.line(&format!(
        "pushed {} ({range}) to {} of {uid}",
        plural(done.messages, "message", "messages"),
        plural(done.devices, "device", "devices"),
    ))
}

//! `imctl replay UID --after USEQ [--until USEQ]`.
//!
//! imd pushes at most half a device's outbox per call and says where to go on
//! (`next_after`), so that a replay never overflows a device's queue. imctl makes as many
//! calls as the range needs, and between two of them waits until the user's devices
//! have acked at least half of the last batch (their `unacked`, which counts pushes
//! queued and written, is at most half of it); a device that does not ack stops the
//! replay with the command that resumes it, rather than being pushed into a `slow`
//! disconnect. The threshold is absolute, not relative to a baseline: acks of earlier
//! pushes still on their way can only make it wait longer, never go on too early.

use std::time::{Duration, Instant};

use serde_json::json;
use shared::admin::Replay;

use super::plural;
use crate::cli::ReplayArgs;
use crate::client::{Client, ClientError};
use crate::output::{Out, Paint};

/// How often the pacing looks at the user's unacked pushes.
const PACE_POLL: Duration = Duration::from_millis(50);

/// Pushes to `uid`'s devices not acked yet (queued or written), over the cluster.
async fn unacked(client: &Client, uid: &str) -> Result<u64, ClientError> {
    Ok(client
        .connections(Some(uid))
        .await?
        .iter()
        .map(|c| c.unacked)
        .sum())
}

pub(super) async fn run(client: &Client, out: &Out, args: ReplayArgs) -> anyhow::Result<()> {
    if args.until.is_some_and(|u| u <= args.after) {
        anyhow::bail!("--until must be above --after");
    }
    let uid = args.uid.as_str();
    let (mut messages, mut devices, mut batches) = (0usize, 0usize, 0usize);
    let mut after = args.after;
    loop {
        let done = client
            .replay(&Replay {
                uid: uid.to_owned(),
                after,
                until: args.until,
            })
            .await?;
        batches += 1;
        messages += done.messages;
        devices = devices.max(done.devices);
        // A cursor that does not move would loop forever.
        let Some(next) = done.next_after.filter(|n| *n > after) else {
            break;
        };
        after = next;
        let enough = (done.messages * done.devices / 2) as u64;
        let deadline = Instant::now() + args.ack_wait;
        while unacked(client, uid).await? > enough {
            if Instant::now() >= deadline {
                let until = args
                    .until
                    .map(|u| format!(" --until {u}"))
                    .unwrap_or_default();
                anyhow::bail!(
                    "replay paused after useq {after} ({} pushed so far): the devices of {uid} \
                     did not ack the last batch within {}; resume with \
                     `imctl replay {uid} --after {after}{until}`",
                    plural(messages, "message", "messages"),
                    humantime::format_duration(args.ack_wait)
                );
            }
            tokio::time::sleep(PACE_POLL).await;
        }
    }
    if out.json {
        return out.json_line(&json!({
            "uid": uid,
            "messages": messages,
            "devices": devices,
        }));
    }
    let range = match args.until {
        Some(u) => format!("useq {}..={u}", args.after + 1),
        None => format!("useq {}..", args.after + 1),
    };
    let who = out.paint(Paint::Cyan, uid);
    if messages == 0 {
        // imd reads nothing when the user has no device online; say which it was.
        let online = client.connections(Some(uid)).await?.len();
        return out.line(&if online == 0 {
            format!("pushed nothing: {who} has no device online")
        } else {
            format!("pushed nothing: {who}'s inbox has no entries in {range}")
        });
    }
    let in_batches = if batches > 1 {
        format!(", in {batches} batches")
    } else {
        String::new()
    };
    out.line(&format!(
        "pushed {} ({range}) to {} of {who}{in_batches}",
        plural(messages, "message", "messages"),
        plural(devices, "device", "devices"),
    ))
}

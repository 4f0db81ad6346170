//! `imctl user …`: one user's data (erase what they sent). Each action prints what it
//! did in one line.

use serde_json::json;

use crate::cli::UserCmd;
use crate::client::Client;
use crate::output::Out;

pub(super) async fn run(client: &Client, out: &Out, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Erase { uid } => {
            let erased = client.erase_user(&uid).await?.erased;
            if out.json {
                return out.json_line(&json!({"uid": uid, "erased": erased}));
            }
            out.line(&format!(
                "erased {} of {uid}",
                super::plural(erased as usize, "message", "messages")
            ))
        }
    }
}

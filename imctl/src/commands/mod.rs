//! The commands: each turns its arguments into admin calls and prints the answer as a
//! table or as JSON lines.
//!
//! They own wording and output; they must not build HTTP requests themselves (that is
//! [`crate::client`]) nor decide exit codes (that is `main`).

mod blacklist;
mod cluster;
mod conns;
mod conv;
mod members;
mod replay;
mod shop;
mod tail;
mod user;
mod webhooks;

pub(crate) use cluster::roles;
pub(crate) use shop::{cap, load, percentile, rating, status, yes_no};

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::output::Out;

/// Runs the command `cli` names against the server it names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = cli.admin_token()?;
    let client = Client::new(&cli.server, token)?;
    let out = Out::stdout(cli.json);
    match cli.command {
        Command::Blacklist(cmd) => blacklist::run(&client, &out, cmd).await,
        Command::Conns(args) => conns::list(&client, &out, args).await,
        Command::Kick { uid } => conns::kick(&client, &out, &uid).await,
        Command::Tail(cmd) => tail::run(&client, &out, cmd).await,
        Command::Replay(args) => replay::run(&client, &out, args).await,
        Command::Cluster => cluster::run(&client, &out).await,
        Command::Shop(cmd) => shop::run(&client, &out, cmd).await,
        Command::Group(cmd) => members::group(&client, &out, cmd).await,
        Command::Conv(cmd) => conv::run(&client, &out, cmd).await,
        Command::User(cmd) => user::run(&client, &out, cmd).await,
        Command::Webhooks(cmd) => webhooks::run(&client, &out, cmd).await,
        Command::Tui => crate::tui::run(client).await,
    }
}

/// "1 device", "2 devices".
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

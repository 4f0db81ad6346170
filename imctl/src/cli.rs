//! The command line of `imctl`.

use clap::{Parser, Subcommand};

/// Operator CLI and TUI for imd.
#[derive(Debug, Parser)]
#[command(name = "imctl", version, about)]
pub struct Cli {
    /// imd base URL.
    #[arg(
        long,
        env = "IMCTL_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Admin token [default: read from the default imd data dir].
    #[arg(long, env = "IMCTL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// One JSON object per line instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// imctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage uid and ip blacklists.
    Blacklist,
    /// List connections.
    Conns,
    /// Disconnect every device of a user.
    Kick {
        /// The user.
        uid: String,
    },
    /// Follow a conversation.
    Tail,
    /// Re-push a range of a user's inbox.
    Replay,
    /// Show the cluster's nodes.
    Cluster,
    /// Show or set a shop's agents.
    Shop,
    /// Show or set a group's members.
    Group,
    /// The live console.
    Tui,
}

impl Command {
    /// The command's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Blacklist => "blacklist",
            Command::Conns => "conns",
            Command::Kick { .. } => "kick",
            Command::Tail => "tail",
            Command::Replay => "replay",
            Command::Cluster => "cluster",
            Command::Shop => "shop",
            Command::Group => "group",
            Command::Tui => "tui",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

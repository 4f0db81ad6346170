//! The command line of `imctl`: flags, commands and their arguments, parsed by clap.
//!
//! It owns what the operator can type and how the admin token is found; it must not talk
//! to the server (that is [`crate::client`]) nor print anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shared::admin::{BlacklistKind, MAX_OPEN_LIMIT};

/// The server imctl talks to when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// imd's data dir when none is given, as `imd serve` uses it.
pub const DEFAULT_DATA_DIR: &str = "./imd-data";
/// The largest welcome or away body imd takes, in bytes of JSON.
pub use shared::admin::SHOP_MESSAGE_MAX;

/// Operator CLI and TUI for imd: blacklists, connections, conversations, the cluster.
#[derive(Debug, Parser)]
#[command(name = "imctl", version, about, propagate_version = true)]
pub struct Cli {
    /// imd's base URL (any gateway of a cluster).
    #[arg(
        long,
        env = "IMCTL_SERVER",
        default_value = DEFAULT_SERVER,
        global = true,
        value_name = "URL"
    )]
    pub server: String,
    /// The admin token [default: `admin_token` of <DATA_DIR>/secrets.toml, as
    /// `imd admin-token` prints it].
    #[arg(
        long,
        env = "IMCTL_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// imd's data dir, read for the admin token when no token is given.
    #[arg(
        long,
        env = "IMD_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        global = true,
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// One JSON object per line instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// imctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Block or unblock users and addresses.
    #[command(subcommand)]
    Blacklist(BlacklistCmd),
    /// List live connections: uid, device, platform, node, remote, connected since.
    Conns(ConnsArgs),
    /// Disconnect every device of a user (kick reason `admin`).
    Kick {
        /// The user.
        uid: String,
    },
    /// Follow a conversation live.
    #[command(subcommand)]
    Tail(TailCmd),
    /// Re-push a range of a user's inbox to the devices online now.
    Replay(ReplayArgs),
    /// Show the cluster's nodes: roles, address, uptime, connections, message rates.
    Cluster,
    /// Customer-service shops: agents and their load, figures, settings.
    #[command(subcommand)]
    Shop(ShopCmd),
    /// Group conversations.
    #[command(subcommand)]
    Group(GroupCmd),
    /// One conversation: its assignment, recall a message, close, transfer.
    #[command(subcommand)]
    Conv(ConvCmd),
    /// One user's data: erase what they sent.
    #[command(subcommand)]
    User(UserCmd),
    /// The webhook to business systems: its state, parked events, re-drive.
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
    /// The live console: dashboard, connections, blacklist, conversation tail, service.
    Tui,
}

/// `imctl webhooks …`
#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// Delivered, failed, parked and dropped events; backlog and lag.
    Status,
    /// Parked events (dead letters), oldest first.
    Parked {
        /// List those parked after this parked id.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send parked events again, oldest first; stops at the first failure.
    Redrive {
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `imctl user …`
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Erase the body of every message a user sent (each stays as a tombstone,
    /// `"erased": true`, in its conversation and every inbox); safe to repeat.
    Erase {
        /// The user.
        uid: String,
    },
}

/// `imctl blacklist …`
#[derive(Debug, Subcommand)]
pub enum BlacklistCmd {
    /// Block a uid, an ip address or a CIDR range; its live connections are kicked.
    Add {
        /// `uid` or `ip`.
        kind: BlacklistKind,
        /// The uid, or the address or range (`10.1.0.0/16`).
        value: String,
        /// How long it applies (`90s`, `1h`, `7d`) [default: until removed].
        #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
        ttl: Option<Duration>,
        /// Why, for the other operators.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// List the live entries with their reason and expiry.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove an entry.
    #[command(visible_alias = "remove")]
    Rm {
        /// `uid` or `ip`.
        kind: BlacklistKind,
        /// The uid, or the address or range as listed.
        value: String,
    },
}

/// `imctl conns …`
#[derive(Debug, Args)]
pub struct ConnsArgs {
    /// Only this user's devices.
    #[arg(long, value_name = "UID")]
    pub uid: Option<String>,
    /// Only connections held by this node.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
}

/// `imctl tail …`
#[derive(Debug, Subcommand)]
pub enum TailCmd {
    /// Print a conversation's messages, one line each, following it until interrupted.
    Conversation {
        /// The conversation id (`d:alice~bob`, `g:team`, `s:shop~carol`).
        conv: String,
        /// Start at this seq [default: only messages committed from now on].
        #[arg(long, value_name = "SEQ")]
        from_seq: Option<u64>,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// `imctl replay …`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The user.
    pub uid: String,
    /// Re-push inbox entries with useq above this.
    #[arg(long, value_name = "USEQ")]
    pub after: u64,
    /// … and at most this [default: to the end of the inbox].
    #[arg(long, value_name = "USEQ")]
    pub until: Option<u64>,
    /// A long range goes in batches; how long the devices may take to ack one before
    /// the replay stops (saying how to resume).
    #[arg(long, value_parser = parse_duration, default_value = "15s", value_name = "DURATION")]
    pub ack_wait: Duration,
}

/// `imctl shop …`
#[derive(Debug, Subcommand)]
pub enum ShopCmd {
    /// Show a shop's agents (online, available or away, open conversations against the
    /// cap), or set them (the shop's cap and messages stay as they are).
    Agents {
        /// The shop.
        shop: String,
        /// The new agents; replace the old list.
        #[arg(value_name = "UID", conflicts_with = "clear")]
        uids: Vec<String>,
        /// Remove every agent.
        #[arg(long)]
        clear: bool,
    },
    /// Show a shop's figures: agents online and available, open and waiting
    /// conversations, first-response times, ratings; every shop's without SHOP.
    Stats {
        /// The shop [default: every shop].
        shop: Option<String>,
    },
    /// Show a shop's settings: agents, cap, welcome and away messages.
    Show {
        /// The shop.
        shop: String,
    },
    /// Change a shop's cap or messages (creating the shop if it is new); what is not
    /// given stays as it is.
    #[command(group(
        clap::ArgGroup::new("change")
            .required(true)
            .multiple(true)
            .args(["max_open", "welcome", "no_welcome", "away", "no_away"])
    ))]
    Set {
        /// The shop.
        shop: String,
        /// Open conversations one agent may hold at once (0: no cap).
        #[arg(long, value_parser = parse_max_open, value_name = "N")]
        max_open: Option<u32>,
        /// The message the shop sends when a conversation opens (its body is
        /// `{"text": TEXT}`).
        #[arg(long, value_parser = parse_shop_text, value_name = "TEXT")]
        welcome: Option<String>,
        /// Send no welcome message.
        #[arg(long, conflicts_with = "welcome")]
        no_welcome: bool,
        /// The message the shop sends when a conversation opens while no agent is
        /// online and available.
        #[arg(long, value_parser = parse_shop_text, value_name = "TEXT")]
        away: Option<String>,
        /// Send no away message.
        #[arg(long, conflicts_with = "away")]
        no_away: bool,
    },
}

/// `imctl conv …`
#[derive(Debug, Subcommand)]
pub enum ConvCmd {
    /// Show a customer-service conversation's agent and whether it is open.
    Show {
        /// The conversation (`s:SHOP~CUSTOMER`).
        conv: String,
    },
    /// Take a message back (moderation): its body is removed from the store, and the
    /// conversation gets a `recalled` event with `"by": "admin"`.
    Recall {
        /// The conversation.
        conv: String,
        /// The message's seq.
        seq: u64,
    },
    /// Close a customer-service conversation (a `closed` event message).
    Close {
        /// The conversation (`s:SHOP~CUSTOMER`).
        conv: String,
    },
    /// Hand a customer-service conversation to another agent of its shop, who gets
    /// its history (an `assigned` event message).
    Transfer {
        /// The conversation (`s:SHOP~CUSTOMER`).
        conv: String,
        /// The agent who takes it.
        agent: String,
    },
}

/// `imctl group …`
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Show a group's members, or set them.
    Members {
        /// The group (its conversation is `g:NAME`).
        name: String,
        /// The new members; replace the old list.
        #[arg(value_name = "UID", conflicts_with = "clear")]
        uids: Vec<String>,
        /// Remove every member.
        #[arg(long)]
        clear: bool,
    },
}

/// Parses `--max-open`: 0 (no cap) to [`MAX_OPEN_LIMIT`], as imd accepts it.
fn parse_max_open(s: &str) -> Result<u32, String> {
    let why = || format!("must be 0 (no cap) to {MAX_OPEN_LIMIT}");
    let n: u32 = s.trim().parse().map_err(|_| why())?;
    if n > MAX_OPEN_LIMIT {
        return Err(why());
    }
    Ok(n)
}

/// Parses `--welcome`/`--away`: some text whose body (`{"text": TEXT}`) imd takes.
fn parse_shop_text(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the text is empty (--no-welcome / --no-away remove a message)".into());
    }
    let len = shop_message(s).to_string().len();
    if len > SHOP_MESSAGE_MAX {
        return Err(format!(
            "the message is {len} bytes as JSON; imd takes at most {SHOP_MESSAGE_MAX}"
        ));
    }
    Ok(s.to_owned())
}

/// The body of a shop message given as text: `{"text": TEXT}`.
pub fn shop_message(text: &str) -> serde_json::Value {
    serde_json::json!({ "text": text })
}

/// Parses a humantime duration of at least one second (`90s`, `1h`, `7d`).
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

/// Parses a humantime duration (`500ms`, `15s`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (try 500ms, 90s, 1h, 7d)"))
}

/// The secrets file imd writes into its data dir.
#[derive(serde::Deserialize)]
struct SecretsFile {
    admin_token: String,
}

impl Cli {
    /// The admin token: `--token`/`IMCTL_TOKEN`, else the one imd generated into the
    /// data dir.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        match &self.token {
            Some(t) if !t.is_empty() => Ok(t.clone()),
            Some(_) => anyhow::bail!("--token is empty"),
            None => token_from_data_dir(&self.data_dir),
        }
    }
}

/// Reads `admin_token` from `dir/secrets.toml`.
fn token_from_data_dir(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("secrets.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no admin token: pass --token or set IMCTL_TOKEN \
             (there is no {} to read it from; `imd admin-token` prints it)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let secrets: SecretsFile = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not imd's secrets file: {}",
            path.display(),
            e.message()
        )
    })?;
    Ok(secrets.admin_token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("imctl").chain(args.iter().copied()))
    }

    #[test]
    fn commands_parse_as_documented() {
        let cli = parse(&[
            "blacklist",
            "add",
            "ip",
            "10.1.0.0/16",
            "--ttl",
            "1h",
            "--reason",
            "scraper",
        ])
        .unwrap();
        let Command::Blacklist(BlacklistCmd::Add {
            kind,
            value,
            ttl,
            reason,
        }) = cli.command
        else {
            panic!("not blacklist add")
        };
        assert_eq!(kind, BlacklistKind::Ip);
        assert_eq!(value, "10.1.0.0/16");
        assert_eq!(ttl, Some(Duration::from_secs(3600)));
        assert_eq!(reason.as_deref(), Some("scraper"));

        let cli = parse(&["--json", "conns", "--uid", "alice", "--node", "imd-1"]).unwrap();
        assert!(cli.json);
        let Command::Conns(a) = cli.command else {
            panic!("not conns")
        };
        assert_eq!(
            (a.uid.as_deref(), a.node.as_deref()),
            (Some("alice"), Some("imd-1"))
        );

        // Global flags go after the command too.
        let cli = parse(&["tail", "conversation", "d:a~b", "--from-seq", "3", "--json"]).unwrap();
        assert!(cli.json);
        let Command::Tail(TailCmd::Conversation {
            conv,
            from_seq,
            count,
        }) = cli.command
        else {
            panic!("not tail")
        };
        assert_eq!((conv.as_str(), from_seq, count), ("d:a~b", Some(3), None));

        let cli = parse(&["replay", "bob", "--after", "2", "--until", "5"]).unwrap();
        let Command::Replay(r) = cli.command else {
            panic!("not replay")
        };
        assert_eq!((r.uid.as_str(), r.after, r.until), ("bob", 2, Some(5)));

        let cli = parse(&["shop", "agents", "s1", "ann", "bob"]).unwrap();
        let Command::Shop(ShopCmd::Agents { shop, uids, clear }) = cli.command else {
            panic!("not shop")
        };
        assert_eq!((shop.as_str(), uids.len(), clear), ("s1", 2, false));

        let cli = parse(&[
            "shop",
            "set",
            "s1",
            "--max-open",
            "3",
            "--welcome",
            "Hi, how can we help?",
            "--no-away",
        ])
        .unwrap();
        let Command::Shop(ShopCmd::Set {
            shop,
            max_open,
            welcome,
            no_welcome,
            away,
            no_away,
        }) = cli.command
        else {
            panic!("not shop set")
        };
        assert_eq!(
            (shop.as_str(), max_open, welcome.as_deref(), no_welcome),
            ("s1", Some(3), Some("Hi, how can we help?"), false)
        );
        assert_eq!((away, no_away), (None, true));
        let cli = parse(&["shop", "stats"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Shop(ShopCmd::Stats { shop: None })
        ));

        for ok in [
            &["blacklist", "ls"][..],
            &["shop", "stats", "s1"],
            &["shop", "show", "s1"],
            &["shop", "set", "s1", "--max-open", "0"],
            &["shop", "set", "s1", "--max-open", "10000"],
            &["shop", "set", "s1", "--away", "back at 9", "--no-welcome"],
            &["blacklist", "rm", "uid", "mallory"],
            &["kick", "alice"],
            &["user", "erase", "alice"],
            &["cluster"],
            &["group", "members", "team"],
            &["group", "members", "team", "--clear"],
            &["tui"],
        ] {
            parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["blacklist", "add", "user", "x"][..],
            &["blacklist", "add", "uid", "x", "--ttl", "soon"],
            &["blacklist", "add", "uid", "x", "--ttl", "10ms"],
            &["replay", "bob"],
            &["replay", "bob", "--after", "-1"],
            &["tail", "conversation"],
            &["kick"],
            &["user", "erase"],
            &["shop", "agents", "s1", "ann", "--clear"],
            &["shop", "set", "s1"],
            &["shop", "set", "s1", "--max-open", "10001"],
            &["shop", "set", "s1", "--max-open", "-1"],
            &["shop", "set", "s1", "--max-open", "many"],
            &["shop", "set", "s1", "--welcome", ""],
            &["shop", "set", "s1", "--welcome", "  "],
            &["shop", "set", "s1", "--welcome", "hi", "--no-welcome"],
            &["shop", "set", "s1", "--away", "x", "--no-away"],
            &["shop", "show"],
            &["nope"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn shop_settings_are_checked_before_any_call() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        let e = err(&["shop", "set", "s1", "--max-open", "10001"]);
        assert!(e.contains("must be 0 (no cap) to 10000"), "{e}");
        let e = err(&["shop", "set", "s1"]);
        assert!(e.contains("--max-open"), "names what may be set: {e}");
        let e = err(&["shop", "set", "s1", "--welcome", ""]);
        assert!(e.contains("the text is empty"), "{e}");
        // The limit is on the body as JSON: quotes and escapes count.
        let fits = "a".repeat(SHOP_MESSAGE_MAX - r#"{"text":""}"#.len());
        parse(&["shop", "set", "s1", "--away", &fits]).unwrap();
        let over = format!("{fits}\n");
        let e = err(&["shop", "set", "s1", "--away", &over]);
        assert!(
            e.contains(&format!(
                "the message is {} bytes as JSON; imd takes at most {SHOP_MESSAGE_MAX}",
                SHOP_MESSAGE_MAX + 2
            )),
            "{e}"
        );
    }

    #[test]
    fn token_comes_from_the_flag_or_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let err = parse(&["--data-dir", d, "cluster"])
            .unwrap()
            .admin_token()
            .unwrap_err();
        assert!(err.to_string().contains("no admin token"), "{err}");

        std::fs::write(
            dir.path().join("secrets.toml"),
            "token_secret = \"s\"\nadmin_token = \"adm\"\n",
        )
        .unwrap();
        let cli = parse(&["--data-dir", d, "cluster"]).unwrap();
        assert_eq!(cli.admin_token().unwrap(), "adm");
        let cli = parse(&["--data-dir", d, "--token", "given", "cluster"]).unwrap();
        assert_eq!(cli.admin_token().unwrap(), "given");

        std::fs::write(dir.path().join("secrets.toml"), "garbage").unwrap();
        let err = parse(&["--data-dir", d, "cluster"])
            .unwrap()
            .admin_token()
            .unwrap_err();
        assert!(err.to_string().contains("secrets file"), "{err}");
    }
}

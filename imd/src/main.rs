//! `imd`: parse the command line, set up logging, and call into the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use imd::config::{CommonArgs, Config, LogFormat, ServeArgs};
use imd::secrets::Secrets;
use shared::token::{Claims, Platform};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The instant-messaging daemon.
#[derive(Debug, Parser)]
#[command(name = "imd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (all roles, embedded store, unless configured otherwise).
    Serve(Box<ServeArgs>),
    /// Print a client token signed with the server's token secret.
    Token(TokenArgs),
    /// Print the admin token.
    AdminToken(CommonArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The user's uid.
    #[arg(long)]
    uid: String,
    /// The device id.
    #[arg(long)]
    device: String,
    /// web, pc, ios, android or other.
    #[arg(long)]
    platform: Platform,
    /// Validity, e.g. `1h`, `30d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// A role to grant, e.g. `agent`; repeatable.
    #[arg(long = "role")]
    roles: Vec<String>,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<String> {
    for (what, id) in [("uid", &args.uid), ("device", &args.device)] {
        anyhow::ensure!(
            shared::ids::is_valid_id(id),
            "invalid {what} {id:?}: 1-64 characters of [A-Za-z0-9_.:@-]"
        );
    }
    let cfg = Config::from_common(&args.common)?;
    let secrets = Secrets::resolve(&cfg)?;
    let now = shared::time::since_epoch().as_secs();
    let claims = Claims {
        sub: args.uid,
        dev: args.device,
        plat: args.platform,
        exp: now + args.ttl.as_secs(),
        roles: args.roles,
    };
    secrets.token_keys().mint(&claims)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => Config::load(&args).and_then(|cfg| {
            init_tracing(cfg.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(imd::app::serve(cfg))
        }),
        Command::Token(args) => token(args).map(|t| println!("{t}")),
        Command::AdminToken(common) => Config::from_common(&common)
            .and_then(|cfg| Secrets::resolve(&cfg))
            .map(|s| println!("{}", s.admin_token.expose())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

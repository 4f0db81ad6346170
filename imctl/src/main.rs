//! `imctl`: parse the command line and run the command.

use clap::Parser;
use imctl::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "imctl {}: not implemented yet (imd's admin API lands first); nothing was done",
        cli.command.name()
    );
    std::process::ExitCode::from(2)
}

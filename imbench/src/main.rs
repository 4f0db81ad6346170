//! The `imbench` binary: parse the command line, set up logging, call [`imbench::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = imbench::cli::Cli::parse();
    // Logs go to stderr: an agent's stdout carries its JSON event stream.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("imbench: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(imbench::run(cli));
    // An agent's stdin reader sits on a blocking thread that only returns at EOF;
    // do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("imbench: {error:#}");
            ExitCode::from(2)
        }
    }
}

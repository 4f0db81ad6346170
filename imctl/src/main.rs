//! `imctl`: parse the command line, run the command, print an error as one line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use imctl::cli::Cli;
use imctl::output::{Paint, StdoutClosed, colour_for};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    let result = runtime.block_on(imctl::run(cli));
    // A `tail` stream or a TUI task may still be running; do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints `imctl: error: …` (the whole cause chain on one line) and exits 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    let colour = colour_for(std::io::stderr().is_terminal());
    let text = format!("{e:#}").replace('\n', " ");
    eprintln!("imctl: {} {text}", Paint::Red.apply(colour, "error:"));
    ExitCode::FAILURE
}

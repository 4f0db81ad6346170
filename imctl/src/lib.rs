//! `imctl`, the operator's CLI and TUI over imd's admin API (`/admin/v1/…`, see
//! `docs/protocol.md`). It works the same against a single node or any gateway of a
//! cluster: everything goes through the admin API of the one server it is pointed at.
//!
//! Code map:
//! - [`cli`]: the command line (clap derive) and where the admin token comes from;
//! - [`client`]: the admin API client and [`client::ClientError`], one line per failure;
//! - [`sse`]: the server-sent events decoder behind `tail` and the TUI's tail;
//! - [`output`]: tables, relative times, JSON lines, colour on a terminal only;
//! - [`commands`]: one module per command, from arguments to printed lines;
//! - [`tui`]: the live console: state in `app`, drawing in `ui`, the loop in `event`.
//!
//! `main` parses, runs [`run`] on a tokio runtime and turns an error into one line on
//! stderr and exit code 1 (clap's own errors exit 2).

pub mod cli;
pub mod client;
pub mod commands;
pub mod output;
pub mod sse;
pub mod tui;

pub use commands::run;

//! `imctl`, the operator's CLI and TUI over imd's admin API.
//!
//! Code map: [`cli`] holds the command line. The commands themselves, the HTTP client
//! and the TUI land with the imctl issue; until then every command says plainly that
//! it is not implemented yet and exits non-zero.

pub mod cli;

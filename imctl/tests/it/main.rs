//! imctl's real-process tests, one test binary: the built `imctl` against a live
//! `imd`, as a command line ([`cli`]) and as a console in a real terminal ([`tui`]).
//! The harness is [`common`] on top of the workspace's testkit.

mod common;

mod cli;
mod tui;

//! `imctl tui`: the live console over the admin API.
//!
//! - [`app`]: the state and what keys and answers do to it (pure, no I/O);
//! - [`ui`]: drawing an `App` onto a frame (pure, tested on `TestBackend`);
//! - [`event`]: the loop: terminal set-up and restore, keys, polls, the tail stream.

pub mod app;
mod event;
pub mod ui;

pub use event::run;

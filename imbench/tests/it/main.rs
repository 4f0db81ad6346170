//! imbench's tests as real processes, one test binary: the coordinator, its agents and
//! the delivery check against an in-process fake of imd ([`fake_server`]), the
//! authenticated link to listening agents ([`agent_link`]), verified runs against a
//! real `imd serve` ([`real_imd`]) and against the bare floor `imbench relay`
//! ([`relay`]). The harness is [`common`] on top of the workspace's testkit.

mod common;

mod agent_link;
mod fake_server;
mod real_imd;
mod relay;

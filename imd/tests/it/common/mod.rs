//! imd's side of the real-process harness: the built `imd` (from the workspace's
//! testkit, which starts it, parses its ready line and kills it) with imd's own
//! clients on top, tokens made in the test, and the deadlines the tests share.
//!
//! What every crate's tests need (the process, Redis, waits, the clock) lives in the
//! testkit; only what speaks imd's protocol lives here:
//! - [`http`]: the HTTP API and `/metrics`;
//! - [`ws`]: a WebSocket client that decodes server frames;
//! - [`raw`]: hand-made upgrades for clients that misbehave on purpose;
//! - [`receiver`]: a real HTTP receiver for webhooks, the pre-send hook and pushes.
//!
//! Nothing here sleeps for luck: waits are for a condition ([`wait_until`], a frame, a
//! close, an exit) under a deadline. The one exception, [`WsClient::expect_no_frame_for`],
//! is a window that proves absence and is sized by the caller from the configured
//! timeouts.

mod http;
mod raw;
mod receiver;
mod ws;

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use shared::token::{Claims, Platform};

pub(crate) use http::{Http, Resp, encode_path, entry_of, metric};
pub(crate) use raw::{raw_upgrade, wait_eof};
pub(crate) use receiver::{Answer, Got, Receiver};
pub(crate) use testkit::{now_ms, now_secs, wait_until};
pub(crate) use ws::{Auth, WsClient, try_ws, try_ws_from, try_ws_over};

/// Default deadline for a frame that must come.
pub(crate) const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// How long one HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until the clock has passed the unix millisecond `ts`, so that the next commit
/// is stamped later than a message stamped `ts` (the list orders by commit time).
pub(crate) async fn tick_past(ts: i64) {
    wait_until(
        Duration::from_secs(1),
        "the clock to pass a commit time",
        || async { now_ms() > ts },
    )
    .await;
}

/// Signs `claims` with `secret` (HS256), as a test-made token.
pub(crate) fn mint(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// Claims of a web device of `uid` that expire `ttl_secs` from now (negative: in the past).
pub(crate) fn claims(uid: &str, device: &str, ttl_secs: i64) -> Claims {
    Claims {
        sub: uid.to_owned(),
        dev: device.to_owned(),
        plat: Platform::Web,
        exp: now_secs().saturating_add_signed(ttl_secs),
        roles: Vec::new(),
    }
}

/// Builder of an [`Imd`]: the testkit's, for the `imd` built with these tests.
pub(crate) struct ImdBuilder(testkit::ImdBuilder);

impl ImdBuilder {
    /// Adds flags of `imd serve`. `--config` and the secrets' flags are passed to
    /// `imd token` and `imd admin-token` too.
    pub(crate) fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ImdBuilder(self.0.args(args))
    }

    /// Sets an environment variable of the server and the helpers.
    pub(crate) fn env(self, key: &str, value: &str) -> Self {
        ImdBuilder(self.0.env(key, value))
    }

    /// Writes `text` to a config file and passes `--config` to the server and helpers.
    pub(crate) fn config_toml(self, text: &str) -> Self {
        ImdBuilder(self.0.config_toml(text))
    }

    /// Starts the server and waits for its ready line.
    pub(crate) fn start(self) -> Imd {
        Imd {
            process: self.0.start(),
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .build()
                .expect("http client"),
        }
    }
}

/// A running `imd serve` process (the testkit's, through `Deref`: address, node id,
/// signals, restarts, `imd token`) and imd's clients of it.
pub(crate) struct Imd {
    process: testkit::Imd,
    http: reqwest::Client,
}

impl Deref for Imd {
    type Target = testkit::Imd;

    fn deref(&self) -> &testkit::Imd {
        &self.process
    }
}

impl DerefMut for Imd {
    fn deref_mut(&mut self) -> &mut testkit::Imd {
        &mut self.process
    }
}

impl Imd {
    /// Starts a server in a fresh data dir with these extra flags.
    pub(crate) fn start(args: &[&str]) -> Imd {
        Imd::builder().args(args.iter().copied()).start()
    }

    pub(crate) fn builder() -> ImdBuilder {
        ImdBuilder(testkit::Imd::builder(env!("CARGO_BIN_EXE_imd")))
    }

    pub(crate) fn http(&self) -> Http {
        Http::new(self.http.clone(), self.url())
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Connects a WebSocket client with `Authorization: Bearer`.
    pub(crate) async fn ws(&self, token: &str) -> WsClient {
        WsClient::connect(&self.ws_url(), Auth::Header(token)).await
    }

    /// Connects the WebSocket of `uid`'s `device` (token from `imd token`).
    pub(crate) async fn ws_as(&self, uid: &str, device: &str) -> WsClient {
        self.ws(&self.token(uid, device)).await
    }
}

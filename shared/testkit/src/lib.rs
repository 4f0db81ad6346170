//! The workspace's real-process test harness, shared by the integration tests of imd,
//! imctl and imbench (a dev-dependency of each; never a dependency of a binary).
//!
//! It owns what every caller needs the same way: an `imd serve` process on port 0 whose
//! one JSON ready line is parsed under a deadline and which is killed on drop
//! ([`Imd`]), minting tokens through the binary, real `redis-server` processes
//! ([`Redis`]), free ports, condition waits ([`wait_until`]) and the clock in Unix
//! milliseconds ([`now_ms`]). It must stay free of anything one crate's tests alone
//! need (imd's WebSocket protocol client, imctl's and imbench's own binaries): those
//! live in that crate's `tests/`.
//!
//! Code map:
//! - [`imd`]: the `imd` process, its builder, its ready line, signals and restarts.
//! - [`redis`]: standalone Redis and a 3-node Redis Cluster.
//! - this file: waits, the clock, free ports, finding a sibling binary.
//!
//! Nothing here sleeps for luck: every wait is for a condition under a deadline.

pub mod imd;
pub mod redis;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use imd::{Imd, ImdBuilder, Ready};
pub use redis::Redis;

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unix milliseconds now, the unit of every timestamp imd stores and serves (the
/// workspace's one clock, `shared::time`).
pub use shared::time::now_ms;

/// Unix seconds now, the unit of a token's `exp`.
pub fn now_secs() -> u64 {
    shared::time::since_epoch().as_secs()
}

/// A port nobody listens on right now. The caller binds it at once; a clash shows up as
/// a process that exits, and the caller retries on another port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// The binary `name` built next to `own` (e.g. imd next to `CARGO_BIN_EXE_imctl`).
///
/// Cargo sets `CARGO_BIN_EXE_<name>` only for the binaries of the crate under test; the
/// others of the workspace land in the same directory when they were built (`cargo
/// build --workspace --bins`, or `cargo test --workspace`, which `bash .ci/test` runs).
/// Panics, saying how to build it, when it is missing.
pub fn sibling_bin(own: impl AsRef<Path>, name: &str) -> PathBuf {
    let own = own.as_ref();
    let bin = own.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "no {name} binary at {}: build it first with `cargo build -p {name}` \
         (`cargo test --workspace` and `bash .ci/test` build it)",
        bin.display()
    );
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_ms_and_now_secs_agree() {
        let ms = now_ms();
        let secs = now_secs();
        let from_ms = u64::try_from(ms / 1000).expect("after 1970");
        assert!(secs.abs_diff(from_ms) <= 1, "{secs} vs {ms}");
    }

    #[test]
    fn sibling_bin_is_beside_the_given_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let own = dir.path().join("own");
        let other = dir
            .path()
            .join(format!("other{}", std::env::consts::EXE_SUFFIX));
        std::fs::write(&other, b"").expect("write");
        assert_eq!(sibling_bin(&own, "other"), other);
    }
}

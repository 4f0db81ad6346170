//! Configuration against a real process: every setting comes from a flag, an `IMD_*`
//! environment variable or a TOML file, with flags over environment over file.
//! `--max-frame-bytes` is the probe: it moves the HTTP 413 threshold.

use serde_json::json;
use shared::protocol::ErrorCode;

use crate::common::{Imd, claims, mint};

/// Posts a message whose body is `size` bytes long and returns the status.
async fn post_of_size(imd: &Imd, token: &str, size: usize) -> u16 {
    let filler = "x".repeat(size.saturating_sub(40));
    let body = json!({"to": "bob", "body": filler})
        .to_string()
        .into_bytes();
    let resp = imd.http().post_raw("/v1/messages", Some(token), body).await;
    if resp.status == 413 {
        assert_eq!(
            resp.error_code(),
            Some(ErrorCode::TooLarge.as_str()),
            "{}",
            resp.body
        );
    }
    resp.status
}

/// Asserts the body limit is `limit`: a body well under it passes, one over it is 413.
async fn assert_limit(imd: &Imd, token: &str, limit: usize) {
    assert_eq!(
        post_of_size(imd, token, limit - 200).await,
        200,
        "a body under {limit}"
    );
    assert_eq!(
        post_of_size(imd, token, limit + 200).await,
        413,
        "a body over {limit}"
    );
}

#[tokio::test]
async fn max_frame_bytes_from_env() {
    let imd = Imd::builder().env("IMD_MAX_FRAME_BYTES", "2048").start();
    let token = imd.token("alice", "a1");
    assert_limit(&imd, &token, 2048).await;
}

#[tokio::test]
async fn max_frame_bytes_from_flag() {
    let imd = Imd::start(&["--max-frame-bytes", "3000"]);
    let token = imd.token("alice", "a1");
    assert_limit(&imd, &token, 3000).await;
}

/// A TOML file sets the limit and the token secret; `imd token --config` signs with the
/// same secret, and so can anyone who knows it.
#[tokio::test]
async fn settings_from_toml_file() {
    let secret = "toml-secret-0123456789abcdef";
    let imd = Imd::builder()
        .config_toml(&format!(
            "max_frame_bytes = 2048\ntoken_secret = \"{secret}\"\nack_timeout = \"2s\"\n"
        ))
        .start();
    let minted = mint(secret, &claims("alice", "a1", 3600));
    assert_limit(&imd, &minted, 2048).await;
    let helper = imd.token("bob", "b1");
    assert_eq!(
        imd.http().sync(&helper, 0, None).await.msgs.len(),
        1,
        "bob got alice's message"
    );
}

/// Precedence: flag over environment over file.
#[tokio::test]
async fn flags_beat_env_and_env_beats_file() {
    let file_env = Imd::builder()
        .config_toml("max_frame_bytes = 2048\n")
        .env("IMD_MAX_FRAME_BYTES", "8192")
        .start();
    let token = file_env.token("alice", "a1");
    assert_limit(&file_env, &token, 8192).await;

    let all = Imd::builder()
        .config_toml("max_frame_bytes = 2048\n")
        .env("IMD_MAX_FRAME_BYTES", "8192")
        .args(["--max-frame-bytes", "4096"])
        .start();
    let token = all.token("alice", "a1");
    assert_limit(&all, &token, 4096).await;
}

/// The token secret from the environment reaches both `serve` and `imd token`.
#[tokio::test]
async fn token_secret_from_env() {
    let secret = "env-secret-0123456789abcdef";
    let imd = Imd::builder().env("IMD_TOKEN_SECRET", secret).start();
    let minted = mint(secret, &claims("alice", "a1", 3600));
    imd.ws(&minted).await.ping_pong().await;
    let helper = imd.token("alice", "a2");
    imd.ws(&helper).await.ping_pong().await;
}

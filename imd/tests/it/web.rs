//! What imd serves to browsers: the SDK, the chat widget and the agent console (on
//! unless `--web false`), and the demo-token endpoint (off unless `--dev-tokens`, and
//! refused on anything but a loopback listen address), with its demo shop.

use std::process::{Command, Stdio};

use serde_json::json;
use shared::protocol::ErrorCode;

use crate::common::Imd;

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

fn start(extra: &[&str]) -> Imd {
    let mut args = vec!["--token-secret", SECRET, "--admin-token", ADMIN];
    args.extend_from_slice(extra);
    Imd::start(&args)
}

/// `GET path` without a token: status, content type, body.
async fn fetch(imd: &Imd, path: &str) -> (u16, String, String) {
    let res = reqwest::get(format!("{}{path}", imd.url())).await.unwrap();
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, res.text().await.unwrap())
}

/// The SDK and both pages are served by default, and not with `--web false` (the SDK
/// stays: it is the client library, not a page).
#[tokio::test]
async fn the_sdk_and_the_pages_are_served_unless_turned_off() {
    let imd = start(&[]);
    let (status, ctype, body) = fetch(&imd, "/sdk/imd-client.js").await;
    assert_eq!(
        (status, ctype.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(body.contains("export class ImdClient"));
    for page in ["/chat/", "/console/"] {
        let (status, ctype, body) = fetch(&imd, page).await;
        assert_eq!(
            (status, ctype.as_str()),
            (200, "text/html; charset=utf-8"),
            "{page}"
        );
        assert!(body.contains("/sdk/imd-client.js"), "{page} loads the SDK");
    }

    let off = start(&["--web", "false"]);
    for page in ["/chat/", "/console/"] {
        assert_eq!(fetch(&off, page).await.0, 404, "{page} with --web false");
    }
    assert_eq!(fetch(&off, "/sdk/imd-client.js").await.0, 200);
}

/// `POST /dev/v1/token` mints working tokens with `--dev-tokens`, checks what it is
/// given, and does not exist without the flag.
#[tokio::test]
async fn dev_tokens_only_when_asked_for() {
    let imd = start(&["--dev-tokens"]);
    let http = imd.http();
    // The demo shop is there for the pages.
    let demo = http.get("/admin/v1/shops/demo/agents", Some(ADMIN)).await;
    assert_eq!(demo.assert_ok()["agents"], json!(["ann"]));
    let minted = http
        .post_json(
            "/dev/v1/token",
            None,
            &json!({"uid": "ann", "role": "agent"}),
        )
        .await;
    let token = minted.assert_ok()["token"].as_str().unwrap().to_owned();
    let me = http.get("/v1/agent", Some(&token)).await;
    assert_eq!(me.assert_ok()["uid"], "ann");
    http.put_json("/v1/agent/status", Some(&token), &json!({"status": "away"}))
        .await
        .assert_ok();
    for bad in [
        json!({"uid": "a b"}),
        json!({"uid": "ann", "role": "admin"}),
        json!({"uid": "ann", "extra": 1}),
        json!({}),
    ] {
        http.post_json("/dev/v1/token", None, &bad)
            .await
            .assert_error(400, ErrorCode::BadRequest);
    }

    let off = start(&[]);
    off.http()
        .post_json("/dev/v1/token", None, &json!({"uid": "ann"}))
        .await
        .assert_error(404, ErrorCode::NotFound);
}

/// `--dev-tokens` on an address other machines reach is refused at start, with why.
#[test]
fn dev_tokens_refuse_a_listen_address_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imd"))
        .args([
            "serve",
            "--dev-tokens",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
}

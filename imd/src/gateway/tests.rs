//! Component tests: the router driven through `tower::ServiceExt::oneshot`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shared::token::{Claims, Platform};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::app::App;
use crate::config::{Config, Secret};
use crate::gateway::auth::TokenKeys;

struct Fixture {
    app: App,
    keys: TokenKeys,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().to_owned(),
        token_secret: Some(Secret::new("test-secret")),
        admin_token: Some(Secret::new("test-admin")),
        max_frame_bytes: 2048,
        ..Config::default()
    };
    let app = App::build(&cfg, cfg.listen, CancellationToken::new())
        .await
        .unwrap();
    Fixture {
        app,
        keys: TokenKeys::new(&Secret::new("test-secret")),
        _dir: dir,
    }
}

impl Fixture {
    fn token(&self, uid: &str) -> String {
        let exp = shared::time::now_ms() as u64 / 1000 + 60;
        let claims = Claims {
            sub: uid.into(),
            dev: "d1".into(),
            plat: Platform::Web,
            exp,
            roles: vec![],
        };
        self.keys.mint(&claims).unwrap()
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = self.app.router().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }

    async fn post(&self, uid: Option<&str>, body: impl Into<Body>) -> (StatusCode, Value) {
        let mut req = Request::post("/v1/messages").header("content-type", "application/json");
        if let Some(uid) = uid {
            req = req.header("authorization", format!("Bearer {}", self.token(uid)));
        }
        self.call(req.body(body.into()).unwrap()).await
    }

    async fn get(&self, uid: &str, path: &str) -> (StatusCode, Value) {
        let req = Request::get(path)
            .header("authorization", format!("Bearer {}", self.token(uid)))
            .body(Body::empty())
            .unwrap();
        self.call(req).await
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn send_then_sync_and_history() {
    let f = fixture().await;
    let (status, body) = f
        .post(
            Some("alice"),
            json!({"to": "bob", "body": "hi"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["msg"]["conv"], "d:alice~bob");
    assert_eq!(body["msg"]["seq"], 1);

    let (status, body) = f.get("bob", "/v1/sync?after=0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["msgs"][0]["useq"], 1);
    assert_eq!(body["more"], false);

    let (status, body) = f.get("bob", "/v1/conversations/d:alice~bob/messages").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["msgs"].as_array().unwrap().len(), 1);
    let (status, body) = f
        .get("carol", "/v1/conversations/d:alice~bob/messages")
        .await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    let (status, body) = f.get("carol", "/v1/conversations/nonsense/messages").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn bad_requests_get_protocol_errors() {
    let f = fixture().await;
    let (status, body) = f.post(None, "{}").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, body) = f.post(Some("alice"), "{not json").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, body) = f.post(Some("alice"), json!({"body": 1}).to_string()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let big = json!({"to": "bob", "body": "x".repeat(4096)}).to_string();
    let (status, body) = f.post(Some("alice"), big).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    let (status, body) = f.get("alice", "/v1/sync?after=minus-one").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, body) = f.get("alice", "/v1/nowhere").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn a_body_without_length_is_still_limited() {
    let f = fixture().await;
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..10)
        .map(|_| Ok(bytes::Bytes::from(vec![b' '; 1000])))
        .collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let (status, body) = f.post(Some("alice"), body).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
}

#[tokio::test]
async fn websocket_upgrade_needs_a_valid_token_first() {
    let f = fixture().await;
    let req = Request::get("/v1/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Body::empty())
        .unwrap();
    let (status, body) = f.call(req).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let req = Request::get("/v1/ws?token=garbage")
        .body(Body::empty())
        .unwrap();
    let (status, _) = f.call(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn healthz_answers() {
    let f = fixture().await;
    let req = Request::get("/healthz").body(Body::empty()).unwrap();
    let (status, body) = f.call(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn a_malformed_connections_cursor_is_a_bad_request() {
    let f = fixture().await;
    let admin = |path: &str| {
        Request::get(path)
            .header("authorization", "Bearer test-admin")
            .body(Body::empty())
            .unwrap()
    };
    let (status, body) = f.call(admin("/admin/v1/connections?after=no-slash")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "bad_request");
    let (status, body) = f.call(admin("/admin/v1/connections?after=a/1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["connections"], json!([]));
}

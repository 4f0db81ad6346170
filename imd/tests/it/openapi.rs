//! The OpenAPI description at `GET /openapi.json`, against a real process: it is
//! OpenAPI 3.1, it describes every call of the HTTP and admin tables of
//! `docs/protocol.md`, each operation has its 200 answer and its error answers with the
//! error body, and every operation it describes is one the server routes. (The fuzz that
//! checks the answers against it is `imd/tests/schemathesis.sh`, run by `.ci/test`.)

use std::collections::BTreeSet;

use serde_json::Value;
use shared::protocol::MAX_COMMENT_CHARS;

use crate::common::Imd;

const SECRET: &str = "test-secret-0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef";

/// The HTTP API and admin API tables of docs/protocol.md, path templates as OpenAPI
/// writes them.
const DOCUMENTED: &[(&str, &str)] = &[
    ("post", "/v1/messages"),
    ("get", "/v1/sync"),
    ("get", "/v1/conversations/{conv}/messages"),
    ("get", "/v1/conversations"),
    ("get", "/v1/conversations/{conv}"),
    ("post", "/v1/conversations/{conv}/read"),
    ("delete", "/v1/conversations/{conv}/messages/{seq}"),
    ("get", "/v1/presence"),
    ("put", "/v1/agent/status"),
    ("post", "/v1/conversations/{conv}/close"),
    ("post", "/v1/conversations/{conv}/rating"),
    ("get", "/v1/agent"),
    ("get", "/v1/shops/{shop}"),
    ("post", "/v1/conversations/{conv}/transfer"),
    ("put", "/v1/devices/{device}/push"),
    ("delete", "/v1/devices/{device}/push"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/admin/v1/blacklist"),
    ("post", "/admin/v1/blacklist"),
    ("delete", "/admin/v1/blacklist/{kind}/{value}"),
    ("get", "/admin/v1/connections"),
    ("delete", "/admin/v1/connections/{uid}"),
    ("delete", "/admin/v1/users/{uid}/messages"),
    ("get", "/admin/v1/shops"),
    ("get", "/admin/v1/shops/{shop}/agents"),
    ("put", "/admin/v1/shops/{shop}/agents"),
    ("get", "/admin/v1/shops/{shop}/stats"),
    ("get", "/admin/v1/groups/{name}/members"),
    ("put", "/admin/v1/groups/{name}/members"),
    ("get", "/admin/v1/conversations/{conv}"),
    ("get", "/admin/v1/conversations/{conv}/messages"),
    ("post", "/admin/v1/conversations/{conv}/transfer"),
    ("post", "/admin/v1/conversations/{conv}/close"),
    ("delete", "/admin/v1/conversations/{conv}/messages/{seq}"),
    ("get", "/admin/v1/words"),
    ("put", "/admin/v1/words"),
    ("get", "/admin/v1/conversations/{conv}/stream"),
    ("post", "/admin/v1/replay"),
    ("get", "/admin/v1/cluster"),
    ("get", "/admin/v1/webhooks"),
    ("get", "/admin/v1/webhooks/parked"),
    ("post", "/admin/v1/webhooks/parked/redrive"),
];

const METHODS: [&str; 9] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace", "query",
];

/// Every `(method, path, operation)` of the description.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                ops.push((method.to_owned(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

/// Follows a `$ref` within the document.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

/// Whether an answer's JSON schema is the error body (possibly narrowed by `allOf`).
fn is_error_body(doc: &Value, response: &Value) -> bool {
    let schema = &resolve(doc, response)["content"]["application/json"]["schema"];
    let error = "#/components/schemas/ErrorResponse";
    schema["$ref"] == error
        || schema["allOf"]
            .as_array()
            .is_some_and(|all| all.iter().any(|s| s["$ref"] == error))
}

async fn description(imd: &Imd) -> Value {
    let res = imd.http().get("/openapi.json", None).await;
    res.assert_ok().clone()
}

#[tokio::test]
async fn the_description_is_openapi_3_1_and_lists_every_documented_call() {
    let imd = Imd::start(&["--token-secret", SECRET, "--admin-token", ADMIN]);
    let doc = description(&imd).await;
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "version {version}");

    let described: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    for (method, path) in DOCUMENTED {
        assert!(
            described.contains(&(method.to_string(), path.to_string())),
            "{} {path} is in docs/protocol.md but not in /openapi.json",
            method.to_uppercase()
        );
    }
    // The WebSocket is left out on purpose (docs/protocol.md, *OpenAPI*).
    assert!(doc["paths"].get("/v1/ws").is_none());

    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| {
            METHODS
                .iter()
                .filter_map(|m| item[m]["operationId"].as_str())
        })
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "operation ids are unique: {ids:?}");

    // The rule the derive cannot take from the constant is pinned to it here.
    assert_eq!(
        doc["components"]["schemas"]["RatingRequest"]["properties"]["comment"]["maxLength"],
        MAX_COMMENT_CHARS
    );
}

#[tokio::test]
async fn every_operation_has_its_answer_and_its_errors_carry_the_error_body() {
    let imd = Imd::start(&["--token-secret", SECRET, "--admin-token", ADMIN]);
    let doc = description(&imd).await;
    let ids: BTreeSet<String> = operations(&doc)
        .iter()
        .filter_map(|(_, _, op)| op["operationId"].as_str().map(str::to_owned))
        .collect();
    for (method, path, op) in operations(&doc) {
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no 2xx answer"
        );
        let api = path.starts_with("/v1/") || path.starts_with("/admin/v1/");
        if api {
            // 403: an address banned after repeated failed authentications is refused
            // before its token is read, on every call.
            for status in ["401", "403", "500"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: no {status}"
                );
            }
            assert!(op["security"].is_array(), "{method} {path}: no security");
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path}: a body but no {status}"
                );
            }
        }
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    is_error_body(&doc, response),
                    "{method} {path}: {status} is not the error body"
                );
            }
            for (name, link) in resolve(&doc, response)["links"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let to = link["operationId"].as_str().unwrap_or_default();
                assert!(ids.contains(to), "{method} {path}: link {name} to {to}");
            }
        }
    }
}

/// What `routes!` guarantees, seen from outside: a request to each described operation
/// reaches a handler (not the 404 of an unknown path, nor a 405 of a known one).
#[tokio::test]
async fn every_described_operation_is_routed() {
    let imd = Imd::start(&["--token-secret", SECRET, "--admin-token", ADMIN]);
    let doc = description(&imd).await;
    let client = imd.token("alice", "a1");
    let http = reqwest::Client::new();
    for (method, path, _) in operations(&doc) {
        // Names that exist nowhere, so that nothing is changed and the stream ends at once.
        let url = format!(
            "{}{}",
            imd.url(),
            path.replace("{seq}", "1")
                .replace("{kind}", "uid")
                .replace('{', "nothing-")
                .replace('}', "")
        );
        let token = if path.starts_with("/admin/") {
            ADMIN
        } else {
            &client
        };
        let res = http
            .request(method.to_uppercase().parse().unwrap(), &url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {path}: not routed for this method");
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "{method} {path}: not routed"
        );
    }
}

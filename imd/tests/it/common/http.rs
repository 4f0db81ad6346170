//! imd's HTTP API as the tests call it: one client per server, answers as status and
//! JSON body, and the Prometheus text of `/metrics`. It asserts only what every caller
//! wants asserted (a 200 where the helper's name says so); the guarantees belong to the
//! tests.

use std::net::IpAddr;

use serde_json::{Value, json};
use shared::protocol::{ErrorCode, InboxItem, Message, SyncResponse};

/// An HTTP answer: status and body (JSON, or a JSON string of the raw text).
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Resp {
    /// The `error.code` of an error body.
    pub(crate) fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    /// Asserts a JSON error body `{"error":{"code":code,"message":…}}` with `status`.
    pub(crate) fn assert_error(&self, status: u16, code: ErrorCode) {
        assert_eq!(self.status, status, "status; body {}", self.body);
        assert_eq!(
            self.error_code(),
            Some(code.as_str()),
            "error code; body {}",
            self.body
        );
        assert!(
            self.body["error"]["message"].is_string(),
            "error message; body {}",
            self.body
        );
    }

    pub(crate) fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, 200, "body {}", self.body);
        &self.body
    }
}

/// HTTP client of one server.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    pub(crate) base: String,
}

impl Http {
    /// A client of the server at `base` (`http://ADDR`).
    pub(crate) fn new(client: reqwest::Client, base: String) -> Http {
        Http { client, base }
    }

    async fn finish(res: reqwest::Response) -> Resp {
        let status = res.status().as_u16();
        let text = res.text().await.expect("read body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, body }
    }

    /// GET `path` (with query), with a bearer token when given.
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.send().await.expect("GET")).await
    }

    /// POST raw bytes as `application/json` to `path`.
    pub(crate) async fn post_raw(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.send().await.expect("POST")).await
    }

    /// The same server through a client whose connections leave from `local`
    /// (e.g. `127.0.0.9`, another loopback address).
    pub(crate) fn bound_to(&self, local: IpAddr) -> Http {
        Http {
            client: reqwest::Client::builder()
                .timeout(super::HTTP_TIMEOUT)
                .local_address(local)
                .build()
                .expect("http client"),
            base: self.base.clone(),
        }
    }

    /// POST this JSON to `path`.
    pub(crate) async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.post_raw(path, token, body.to_string().into_bytes())
            .await
    }

    /// PUT this JSON to `path`.
    pub(crate) async fn put_json(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        let mut req = self
            .client
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.send().await.expect("PUT")).await
    }

    /// DELETE `path`.
    pub(crate) async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        let mut req = self.client.delete(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.send().await.expect("DELETE")).await
    }

    /// `POST /v1/messages` with this JSON body.
    pub(crate) async fn post_message(&self, token: &str, body: &Value) -> Resp {
        self.post_raw("/v1/messages", Some(token), body.to_string().into_bytes())
            .await
    }

    /// Sends a direct message and returns the committed message (asserts 200).
    pub(crate) async fn send_to(
        &self,
        token: &str,
        to: &str,
        cid: Option<&str>,
        body: Value,
    ) -> Message {
        let mut req = json!({"to": to, "body": body});
        if let Some(cid) = cid {
            req["cid"] = json!(cid);
        }
        let resp = self.post_message(token, &req).await;
        let v = resp.assert_ok();
        serde_json::from_value(v["msg"].clone())
            .unwrap_or_else(|e| panic!("bad send answer ({e}): {v}"))
    }

    /// `GET /v1/sync`, asserting 200.
    pub(crate) async fn sync(&self, token: &str, after: u64, limit: Option<u32>) -> SyncResponse {
        let mut path = format!("/v1/sync?after={after}");
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        let resp = self.get(&path, Some(token)).await;
        serde_json::from_value(resp.assert_ok().clone())
            .unwrap_or_else(|e| panic!("bad sync answer ({e}): {}", resp.body))
    }

    /// Every inbox item after `after`, following `more` with pages of `limit`.
    pub(crate) async fn sync_all(&self, token: &str, after: u64, limit: u32) -> Vec<InboxItem> {
        let mut out: Vec<InboxItem> = Vec::new();
        let mut after = after;
        loop {
            let page = self.sync(token, after, Some(limit)).await;
            assert!(page.msgs.len() <= limit as usize, "page over the limit");
            if let Some(last) = page.msgs.last() {
                after = last.useq;
            }
            let more = page.more;
            let empty = page.msgs.is_empty();
            out.extend(page.msgs);
            if !more {
                return out;
            }
            assert!(!empty, "sync said more but gave nothing");
        }
    }

    /// `GET /v1/conversations/{conv}/messages`.
    pub(crate) async fn history(
        &self,
        token: &str,
        conv: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Resp {
        let mut path = format!(
            "/v1/conversations/{}/messages?after={after}",
            encode_path(conv)
        );
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        self.get(&path, Some(token)).await
    }

    /// `GET /metrics` as text (asserts 200).
    pub(crate) async fn metrics(&self) -> String {
        let res = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(res.status().as_u16(), 200, "/metrics status");
        res.text().await.expect("metrics body")
    }
}

/// Percent-encodes a path segment; `:`, `~`, `@` and the unreserved characters stay.
pub(crate) fn encode_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The sum of every sample of metric `name` (any labels) in Prometheus text; `None`
/// when there is none.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        // Labels, then the value, then maybe a timestamp.
        let after_labels = match rest.find('}') {
            Some(i) => &rest[i + 1..],
            None => rest,
        };
        let v = after_labels
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = v {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

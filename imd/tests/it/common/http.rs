//! imd's HTTP API as the tests call it: one client per server, answers as status and
//! JSON body, and the Prometheus text of `/metrics`. It asserts only what every caller
//! wants asserted (a 200 where the helper's name says so); the guarantees belong to the
//! tests.

use std::net::IpAddr;

use serde_json::{Value, json};
use shared::protocol::{
    ConvSummary, ConversationsResponse, ErrorCode, HistoryResponse, InboxItem, Message,
    SyncResponse,
};

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

    /// Sends `body` into the existing conversation `conv` over HTTP and returns the
    /// committed message (asserts 200).
    pub(crate) async fn send_in(&self, token: &str, conv: &str, body: Value) -> Message {
        let resp = self
            .post_message(token, &json!({"conv": conv, "body": body}))
            .await;
        let v = resp.assert_ok();
        serde_json::from_value(v["msg"].clone())
            .unwrap_or_else(|e| panic!("bad send answer ({e}): {v}"))
    }

    /// A customer's message to `shop` over HTTP; returns the committed message
    /// (asserts 200).
    pub(crate) async fn send_to_shop(&self, token: &str, shop: &str, body: Value) -> Message {
        let resp = self
            .post_message(token, &json!({"shop": shop, "body": body}))
            .await;
        let v = resp.assert_ok();
        serde_json::from_value(v["msg"].clone())
            .unwrap_or_else(|e| panic!("bad send answer ({e}): {v}"))
    }

    /// `PUT /admin/v1/groups/{name}/members` (asserts 200).
    pub(crate) async fn put_group(&self, admin: &str, name: &str, members: &[&str]) {
        self.put_json(
            &format!("/admin/v1/groups/{name}/members"),
            Some(admin),
            &json!({ "members": members }),
        )
        .await
        .assert_ok();
    }

    /// `PUT /admin/v1/shops/{shop}/agents` (asserts 200).
    pub(crate) async fn put_shop_agents(&self, admin: &str, shop: &str, agents: &[&str]) {
        self.put_json(
            &format!("/admin/v1/shops/{shop}/agents"),
            Some(admin),
            &json!({ "agents": agents }),
        )
        .await
        .assert_ok();
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

    /// The whole history of `conv` (asserts 200 and a single page).
    pub(crate) async fn history_all(&self, token: &str, conv: &str) -> Vec<Message> {
        let resp = self.history(token, conv, 0, Some(1000)).await;
        let page: HistoryResponse = serde_json::from_value(resp.assert_ok().clone())
            .unwrap_or_else(|e| panic!("bad history answer ({e}): {}", resp.body));
        assert!(!page.more, "history of {conv} is over one page");
        page.msgs
    }

    /// `GET /v1/conversations?{query}` (`limit=…&before=…`, or empty).
    pub(crate) async fn conversations(&self, token: &str, query: &str) -> Resp {
        let path = if query.is_empty() {
            "/v1/conversations".to_owned()
        } else {
            format!("/v1/conversations?{query}")
        };
        self.get(&path, Some(token)).await
    }

    /// The first page of the caller's conversation list (asserts 200 and decodes it).
    pub(crate) async fn conversation_list(
        &self,
        token: &str,
        query: &str,
    ) -> ConversationsResponse {
        let resp = self.conversations(token, query).await;
        serde_json::from_value(resp.assert_ok().clone())
            .unwrap_or_else(|e| panic!("bad conversation list ({e}): {}", resp.body))
    }

    /// `GET /v1/conversations/{conv}`.
    pub(crate) async fn conversation(&self, token: &str, conv: &str) -> Resp {
        self.get(
            &format!("/v1/conversations/{}", encode_path(conv)),
            Some(token),
        )
        .await
    }

    /// `POST /v1/conversations/{conv}/read` with `{"seq":seq}` (signed, so that a
    /// test can send a negative one).
    pub(crate) async fn mark_read(&self, token: &str, conv: &str, seq: i64) -> Resp {
        self.post_json(
            &format!("/v1/conversations/{}/read", encode_path(conv)),
            Some(token),
            &json!({ "seq": seq }),
        )
        .await
    }

    /// `DELETE /v1/conversations/{conv}/messages/{seq}` with a client token, or
    /// `DELETE /admin/v1/…` when `admin` is set (then `token` is the admin token).
    pub(crate) async fn recall(&self, token: &str, conv: &str, seq: u64, admin: bool) -> Resp {
        let prefix = if admin { "/admin" } else { "" };
        self.delete(
            &format!(
                "{prefix}/v1/conversations/{}/messages/{seq}",
                encode_path(conv)
            ),
            Some(token),
        )
        .await
    }

    /// `GET /v1/presence?uid=…&uid=…`.
    pub(crate) async fn presence(&self, token: &str, uids: &[&str]) -> Resp {
        let query: Vec<String> = uids.iter().map(|u| format!("uid={u}")).collect();
        self.get(&format!("/v1/presence?{}", query.join("&")), Some(token))
            .await
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

/// The entry of `conv` in a conversation list; panics, showing the list, when absent.
pub(crate) fn entry_of<'a>(list: &'a ConversationsResponse, conv: &str) -> &'a ConvSummary {
    list.convs
        .iter()
        .find(|c| c.conv == conv)
        .unwrap_or_else(|| panic!("{conv} is not in the list: {list:?}"))
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

//! The admin API client: one method per `/admin/v1/…` call imctl makes, typed with
//! `shared::admin`, and [`ClientError`], which says in one line what went wrong.
//!
//! It owns HTTP, the admin token and the reading of the conversation stream; it must not
//! print, nor decide exit codes (the commands and `main` do).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::admin::{
    AddBlacklist, Assignment, BlacklistEntry, BlacklistKind, BlacklistList, ClusterInfo,
    ConnectionInfo, ConnectionList, Erased, GroupMembers, Kicked, ParkedWebhooks, Redriven, Replay,
    Replayed, ShopAgents, ShopStats, Shops, WebhookStatus,
};
use shared::protocol::{ErrorResponse, Message};

use crate::sse::{SseEvent, SseParser};

/// How long to wait for a TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one ordinary admin call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// imd sends a keep-alive comment every 15 s; this much silence means the stream is dead
/// (a half-open TCP connection would otherwise hang `tail` forever).
const STREAM_SILENCE: Duration = Duration::from_secs(45);
/// Page size when listing every connection.
const CONNECTIONS_PAGE: usize = 1000;
/// Shop figures asked for at once when reading many shops: enough to hide the round
/// trips, few enough not to crowd the server's admin calls.
const STATS_AT_ONCE: usize = 8;

/// What went wrong talking to imd. Each variant reads as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--server` is not a URL imctl can use.
    #[error("invalid server URL {url:?}: {why}")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// No TCP connection, or it broke, or the server went silent.
    #[error("cannot reach imd at {url}: {detail}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The innermost cause (`Connection refused (os error 111)`).
        detail: String,
    },
    /// 401: the token is not this server's admin token.
    #[error(
        "the admin token was refused by {url} (401): it is not this server's admin token; \
         `imd admin-token --data-dir DIR` prints the right one"
    )]
    BadAdminToken {
        /// The server's base URL.
        url: String,
    },
    /// 403: a client token was given where the admin token is needed.
    #[error(
        "that is a client token, not the admin token (403): the admin API needs the token \
         `imd admin-token --data-dir DIR` prints"
    )]
    ClientToken,
    /// 404: the uid, conversation, shop or entry does not exist (the server's words).
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other refusal, with the server's code and message.
    #[error("imd answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The protocol error code (`bad_request`, …), or `http` for a foreign body.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The answer was not what the admin API promises.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// The server's base URL.
        url: String,
        /// What did not fit.
        detail: String,
    },
}

/// Broad classes of [`ClientError`], for callers that decide what to do next (the TUI
/// retries on `Unreachable`, and says "retrying" only then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server could not be reached; retrying may help.
    Unreachable,
    /// The token is wrong; retrying will not help.
    Auth,
    /// What was asked for does not exist.
    NotFound,
    /// Anything else: bad input, a server error, a foreign answer.
    Other,
}

impl ClientError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Unreachable { .. } => ErrorKind::Unreachable,
            ClientError::BadAdminToken { .. } | ClientError::ClientToken => ErrorKind::Auth,
            ClientError::NotFound(_) => ErrorKind::NotFound,
            ClientError::BadUrl { .. } | ClientError::Api { .. } | ClientError::Protocol { .. } => {
                ErrorKind::Other
            }
        }
    }
}

/// The innermost cause of an error: "Connection refused (os error 111)" rather than
/// "error sending request for url (…)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A client of one imd's admin API. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// As the operator gave it, for messages.
    server: String,
    token: String,
    /// How long one ordinary call may take (not the stream).
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("token", &"***")
            .finish()
    }
}

/// Parses `--server`: `http://host:port[/prefix]`, or `host:port` for short.
pub fn parse_server(server: &str) -> Result<Url, ClientError> {
    let bad = |why: &str| ClientError::BadUrl {
        url: server.to_owned(),
        why: why.to_owned(),
    };
    let text = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let url = Url::parse(&text).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(
                "https is not supported by this build; imd serves plain http (put imctl \
                 where it reaches imd directly)",
            ));
        }
        other => return Err(bad(&format!("scheme {other:?} is not http"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("no query or fragment, please"));
    }
    Ok(url)
}

impl Client {
    /// A client of the server at `server` (see [`parse_server`]) with the admin `token`.
    pub fn new(server: &str, token: impl Into<String>) -> Result<Self, ClientError> {
        let base = parse_server(server)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("imctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: server.to_owned(),
                why: root_cause(&e),
            })?;
        Ok(Self {
            http,
            server: base.as_str().trim_end_matches('/').to_owned(),
            base,
            token: token.into(),
            request_timeout: REQUEST_TIMEOUT,
        })
    }

    /// The same client, with ordinary calls limited to `timeout` (the stream is not).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The server's base URL, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// `base/admin/v1/{segments…}`, each segment percent-encoded on its own.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("parse_server only accepts http URLs, which have a path")
            .pop_if_empty()
            .extend(["admin", "v1"])
            .extend(segments);
        url
    }

    fn unreachable(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Unreachable {
            url: self.server.clone(),
            detail: detail.into(),
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            url: self.server.clone(),
            detail: detail.into(),
        }
    }

    /// Turns a transport error into the operator's words.
    fn transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_timeout() {
            return self.unreachable(format!(
                "no answer within {}s",
                self.request_timeout.as_secs_f32()
            ));
        }
        if e.is_decode() {
            return self.protocol(root_cause(&e));
        }
        self.unreachable(root_cause(&e))
    }

    /// Sends a request and returns the response when its status is 2xx, else the error
    /// the status and the body say.
    async fn execute(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(self.status_error(status, &text))
    }

    fn status_error(&self, status: StatusCode, body: &str) -> ClientError {
        let parsed: Option<ErrorResponse> = serde_json::from_str(body).ok();
        match (status, parsed) {
            (StatusCode::UNAUTHORIZED, _) => ClientError::BadAdminToken {
                url: self.server.clone(),
            },
            (StatusCode::FORBIDDEN, _) => ClientError::ClientToken,
            (StatusCode::NOT_FOUND, Some(e)) => ClientError::NotFound(e.error.message),
            (StatusCode::NOT_FOUND, None) => {
                ClientError::NotFound("no such admin endpoint on this server".into())
            }
            (_, Some(e)) => ClientError::Api {
                status: status.as_u16(),
                code: e.error.code.as_str().to_owned(),
                message: e.error.message,
            },
            (_, None) => {
                let snippet: String = body.trim().chars().take(200).collect();
                ClientError::Api {
                    status: status.as_u16(),
                    code: "http".into(),
                    message: if snippet.is_empty() {
                        status.canonical_reason().unwrap_or("error").to_owned()
                    } else {
                        snippet
                    },
                }
            }
        }
    }

    /// A JSON request body.
    fn json<B: Serialize>(&self, body: &B) -> Result<Option<Vec<u8>>, ClientError> {
        serde_json::to_vec(body)
            .map(Some)
            .map_err(|e| self.protocol(e.to_string()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let resp = self
            .execute(method, url, body, Some(self.request_timeout))
            .await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(e.to_string()))
    }

    /// `GET /admin/v1/blacklist`: the live entries.
    pub async fn blacklist(&self) -> Result<Vec<BlacklistEntry>, ClientError> {
        let list: BlacklistList = self
            .call(Method::GET, self.url(&["blacklist"]), None)
            .await?;
        Ok(list.entries)
    }

    /// `POST /admin/v1/blacklist`: adds an entry (the server kicks what it matches).
    pub async fn blacklist_add(&self, req: &AddBlacklist) -> Result<BlacklistEntry, ClientError> {
        self.call(Method::POST, self.url(&["blacklist"]), self.json(req)?)
            .await
    }

    /// `DELETE /admin/v1/blacklist/{kind}/{value}`; `NotFound` when absent.
    pub async fn blacklist_remove(
        &self,
        kind: BlacklistKind,
        value: &str,
    ) -> Result<(), ClientError> {
        // A CIDR value keeps its `/` as a path separator, as the API documents.
        let mut segments = vec!["blacklist", kind.as_str()];
        segments.extend(value.split('/'));
        let _: serde_json::Value = self.call(Method::DELETE, self.url(&segments), None).await?;
        Ok(())
    }

    /// `GET /admin/v1/connections`: one page, of one user's devices or of everyone's.
    pub async fn connections_page(
        &self,
        uid: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ConnectionList, ClientError> {
        let mut url = self.url(&["connections"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(uid) = uid {
                q.append_pair("uid", uid);
            }
            if let Some(after) = after {
                q.append_pair("after", after);
            }
            q.append_pair("limit", &limit.to_string());
        }
        self.call(Method::GET, url, None).await
    }

    /// Every connection (of `uid`, when given), following the pages to the end.
    pub async fn connections(&self, uid: Option<&str>) -> Result<Vec<ConnectionInfo>, ClientError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .connections_page(uid, after.as_deref(), CONNECTIONS_PAGE)
                .await?;
            all.extend(page.connections);
            match page.next {
                // A cursor that does not move would loop forever.
                Some(next) if after.as_deref() != Some(next.as_str()) => after = Some(next),
                _ => return Ok(all),
            }
        }
    }

    /// `DELETE /admin/v1/connections/{uid}`; `NotFound` when the user has none.
    pub async fn kick(&self, uid: &str) -> Result<Kicked, ClientError> {
        self.call(Method::DELETE, self.url(&["connections", uid]), None)
            .await
    }

    /// `DELETE /admin/v1/users/{uid}/messages`: erases what `uid` sent. Not limited in
    /// time: the server works until it is done (and goes on if imctl goes away).
    pub async fn erase_user(&self, uid: &str) -> Result<Erased, ClientError> {
        let resp = self
            .execute(
                Method::DELETE,
                self.url(&["users", uid, "messages"]),
                None,
                None,
            )
            .await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(e.to_string()))
    }

    /// `GET /admin/v1/webhooks`; `NotFound` when the server has no webhook.
    pub async fn webhooks(&self) -> Result<WebhookStatus, ClientError> {
        self.call(Method::GET, self.url(&["webhooks"]), None).await
    }

    /// `GET /admin/v1/webhooks/parked`: a page of parked events.
    pub async fn webhooks_parked(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<ParkedWebhooks, ClientError> {
        let mut url = self.url(&["webhooks", "parked"]);
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("limit", &limit.to_string());
        self.call(Method::GET, url, None).await
    }

    /// `POST /admin/v1/webhooks/parked/redrive`.
    pub async fn webhooks_redrive(&self, limit: usize) -> Result<Redriven, ClientError> {
        let mut url = self.url(&["webhooks", "parked", "redrive"]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        self.call(Method::POST, url, Some(b"{}".to_vec())).await
    }

    /// `GET /admin/v1/shops`: every shop, by name.
    pub async fn shops(&self) -> Result<Vec<String>, ClientError> {
        let s: Shops = self.call(Method::GET, self.url(&["shops"]), None).await?;
        Ok(s.shops)
    }

    /// `GET /admin/v1/shops/{shop}/agents`: the agents and settings; `NotFound` for an
    /// unknown shop.
    pub async fn shop(&self, shop: &str) -> Result<ShopAgents, ClientError> {
        self.call(Method::GET, self.url(&["shops", shop, "agents"]), None)
            .await
    }

    /// `PUT /admin/v1/shops/{shop}/agents`: replaces the agents and every setting.
    pub async fn set_shop(&self, shop: &str, settings: &ShopAgents) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::PUT,
                self.url(&["shops", shop, "agents"]),
                self.json(settings)?,
            )
            .await?;
        Ok(())
    }

    /// Changes part of a shop: reads it (an unknown shop starts empty), lets `change`
    /// edit it, and writes it all back, since the `PUT` replaces agents and settings
    /// together. Returns what was written and whether the shop is new.
    ///
    /// The API has no version to compare against, so an operator changing the same
    /// shop in the same instant may be overwritten; the window is one round trip.
    pub async fn update_shop(
        &self,
        shop: &str,
        change: impl FnOnce(&mut ShopAgents),
    ) -> Result<(ShopAgents, bool), ClientError> {
        let (mut settings, created) = match self.shop(shop).await {
            Ok(s) => (s, false),
            Err(ClientError::NotFound(_)) => (ShopAgents::agents(Vec::new()), true),
            Err(e) => return Err(e),
        };
        change(&mut settings);
        self.set_shop(shop, &settings).await?;
        Ok((settings, created))
    }

    /// Sets a shop's agents, keeping its cap and messages.
    pub async fn set_shop_agents(
        &self,
        shop: &str,
        agents: Vec<String>,
    ) -> Result<ShopAgents, ClientError> {
        let (settings, _) = self.update_shop(shop, |s| s.agents = agents).await?;
        Ok(settings)
    }

    /// `GET /admin/v1/shops/{shop}/stats`: the shop's figures and each agent's load.
    pub async fn shop_stats(&self, shop: &str) -> Result<ShopStats, ClientError> {
        self.call(Method::GET, self.url(&["shops", shop, "stats"]), None)
            .await
    }

    /// The figures of each of `shops`, in their order, a few calls at a time. (imd has
    /// no call that removes a shop, so a listed shop is there to read.)
    pub async fn shops_stats(&self, shops: &[String]) -> Result<Vec<ShopStats>, ClientError> {
        // Owned names and a client per call: with a closure that borrows, the compiler
        // cannot prove the future `Send` for all lifetimes, and the TUI spawns it.
        futures_util::stream::iter(shops.iter().cloned())
            .map(|shop| {
                let client = self.clone();
                async move { client.shop_stats(&shop).await }
            })
            .buffered(STATS_AT_ONCE)
            .try_collect()
            .await
    }

    /// `GET /admin/v1/groups/{name}/members`.
    pub async fn group_members(&self, name: &str) -> Result<Vec<String>, ClientError> {
        let g: GroupMembers = self
            .call(Method::GET, self.url(&["groups", name, "members"]), None)
            .await?;
        Ok(g.members)
    }

    /// `PUT /admin/v1/groups/{name}/members`.
    pub async fn set_group_members(
        &self,
        name: &str,
        members: Vec<String>,
    ) -> Result<(), ClientError> {
        let body = GroupMembers { members };
        let _: serde_json::Value = self
            .call(
                Method::PUT,
                self.url(&["groups", name, "members"]),
                self.json(&body)?,
            )
            .await?;
        Ok(())
    }

    /// `GET /admin/v1/conversations/{conv}`: a service conversation's assignment.
    pub async fn assignment(&self, conv: &str) -> Result<Assignment, ClientError> {
        self.call(Method::GET, self.url(&["conversations", conv]), None)
            .await
    }

    /// `DELETE /admin/v1/conversations/{conv}/messages/{seq}`.
    pub async fn recall(&self, conv: &str, seq: u64) -> Result<(), ClientError> {
        let seq = seq.to_string();
        let _: serde_json::Value = self
            .call(
                Method::DELETE,
                self.url(&["conversations", conv, "messages", &seq]),
                None,
            )
            .await?;
        Ok(())
    }

    /// `POST /admin/v1/conversations/{conv}/close`.
    pub async fn close(&self, conv: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                self.url(&["conversations", conv, "close"]),
                self.json(&serde_json::json!({}))?,
            )
            .await?;
        Ok(())
    }

    /// `POST /admin/v1/conversations/{conv}/transfer`.
    pub async fn transfer(&self, conv: &str, agent: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                self.url(&["conversations", conv, "transfer"]),
                self.json(&serde_json::json!({"agent": agent}))?,
            )
            .await?;
        Ok(())
    }

    /// `POST /admin/v1/replay`.
    pub async fn replay(&self, req: &Replay) -> Result<Replayed, ClientError> {
        self.call(Method::POST, self.url(&["replay"]), self.json(req)?)
            .await
    }

    /// `GET /admin/v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        self.call(Method::GET, self.url(&["cluster"]), None).await
    }

    /// `GET /admin/v1/conversations/{conv}/stream`: returns once the server has
    /// accepted the stream (so a bad token or an unknown conversation fails here), then
    /// yields its messages.
    pub async fn stream(
        &self,
        conv: &str,
        from_seq: Option<u64>,
    ) -> Result<MessageStream, ClientError> {
        let mut url = self.url(&["conversations", conv, "stream"]);
        if let Some(n) = from_seq {
            url.query_pairs_mut()
                .append_pair("from_seq", &n.to_string());
        }
        let resp = self.execute(Method::GET, url, None, None).await?;
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Err(self.protocol("the conversation stream is not text/event-stream"));
        }
        Ok(MessageStream {
            body: resp.bytes_stream().boxed(),
            parser: SseParser::new(),
            ready: VecDeque::new(),
            client: self.clone(),
        })
    }
}

/// A conversation's messages as the server streams them, in `seq` order.
pub struct MessageStream {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
    client: Client,
}

impl std::fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream").finish_non_exhaustive()
    }
}

impl MessageStream {
    /// The next message; `None` when the server ended the stream (it is shutting
    /// down), an `Unreachable` error when the connection broke or went silent.
    pub async fn next(&mut self) -> Option<Result<Message, ClientError>> {
        loop {
            while let Some(ev) = self.ready.pop_front() {
                if ev.event != "msg" {
                    continue; // events this imctl does not know of
                }
                return Some(
                    serde_json::from_str(&ev.data)
                        .map_err(|e| self.client.protocol(format!("bad msg event: {e}"))),
                );
            }
            let chunk = match tokio::time::timeout(STREAM_SILENCE, self.body.next()).await {
                Err(_) => {
                    return Some(Err(self.client.unreachable(format!(
                        "the stream was silent for {}s",
                        STREAM_SILENCE.as_secs()
                    ))));
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(self.client.unreachable(root_cause(&e)))),
                Ok(Some(Ok(chunk))) => chunk,
            };
            match self.parser.push(&chunk) {
                Ok(events) => self.ready.extend(events),
                Err(e) => return Some(Err(self.client.protocol(e.to_string()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        for (given, want) in [
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/admin/v1/cluster",
            ),
            (
                "http://127.0.0.1:8080/",
                "http://127.0.0.1:8080/admin/v1/cluster",
            ),
            ("localhost:9000", "http://localhost:9000/admin/v1/cluster"),
            (
                "http://gw.example/imd/",
                "http://gw.example/imd/admin/v1/cluster",
            ),
        ] {
            let c = Client::new(given, "t").unwrap();
            assert_eq!(c.url(&["cluster"]).as_str(), want, "{given}");
        }
        for bad in ["https://x", "ftp://x", "http://", "http://x?a=b", "::"] {
            let err = Client::new(bad, "t").unwrap_err();
            assert!(matches!(err, ClientError::BadUrl { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn path_segments_are_encoded_one_by_one() {
        let c = Client::new("http://h:1", "t").unwrap();
        assert_eq!(
            c.url(&["conversations", "d:a@x~b", "stream"]).path(),
            "/admin/v1/conversations/d:a@x~b/stream"
        );
        assert_eq!(
            c.url(&["connections", "a/b c?"]).path(),
            "/admin/v1/connections/a%2Fb%20c%3F"
        );
    }

    #[test]
    fn statuses_become_the_operators_words() {
        let c = Client::new("http://h:1", "t").unwrap();
        let body =
            |code: &str, msg: &str| format!(r#"{{"error":{{"code":"{code}","message":"{msg}"}}}}"#);
        let e = c.status_error(StatusCode::UNAUTHORIZED, &body("unauthorized", "x"));
        assert!(e.to_string().contains("401"), "{e}");
        assert!(
            e.to_string().contains("not this server's admin token"),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::Auth);
        let e = c.status_error(StatusCode::FORBIDDEN, &body("forbidden", "x"));
        assert!(e.to_string().contains("client token"), "{e}");
        let e = c.status_error(
            StatusCode::NOT_FOUND,
            &body("not_found", "\\\"bob\\\" has no connections"),
        );
        assert_eq!(e.to_string(), "not found: \"bob\" has no connections");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = c.status_error(
            StatusCode::BAD_REQUEST,
            &body("bad_request", "until must be above after"),
        );
        assert_eq!(
            e.to_string(),
            "imd answered 400 bad_request: until must be above after"
        );
        let e = c.status_error(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>");
        assert_eq!(
            e.to_string(),
            "imd answered 502 http: <html>bad gateway</html>"
        );
        let e = c.status_error(StatusCode::BAD_GATEWAY, "");
        assert_eq!(e.to_string(), "imd answered 502 http: Bad Gateway");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named() {
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let c = Client::new("http://127.0.0.1:1", "t").unwrap();
        let e = c.cluster().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unreachable);
        let text = e.to_string();
        assert!(
            text.starts_with("cannot reach imd at http://127.0.0.1:1: "),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    #[test]
    fn the_token_stays_out_of_debug() {
        let c = Client::new("http://h:1", "sekrit").unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}

//! A real HTTP receiver for the calls imd makes to business systems (webhooks, the
//! pre-send hook, offline pushes): it records every request and answers as the test
//! says (a status, a JSON body, or no answer at all).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    /// Its path.
    pub(crate) path: String,
    /// Its headers.
    pub(crate) headers: HeaderMap,
    /// Its raw body.
    pub(crate) body: Bytes,
    /// The status it was answered with (0: not answered).
    pub(crate) status: u16,
}

impl Got {
    /// The body as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "receiver got a body that is not JSON ({e}): {:?}",
                self.body
            )
        })
    }

    /// A header's value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether its `X-Imd-Signature` is the HMAC-SHA256 of its raw body keyed with
    /// `secret`, checked with the recipe of `docs/webhooks.md`.
    pub(crate) fn signed_with(&self, secret: &str) -> bool {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&self.body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.header("x-imd-signature") == Some(&format!("sha256={want}"))
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// This status, with `{}`.
    Status(u16),
    /// 200 with this JSON body.
    Json(Value),
    /// Nothing, ever (the request hangs until the caller gives up).
    Hang,
}

#[derive(Default)]
struct State {
    got: Vec<Got>,
    answer: Option<Answer>,
}

/// A receiver on 127.0.0.1, served until dropped.
pub(crate) struct Receiver {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver that answers `answer`.
    pub(crate) async fn start(answer: Answer) -> Receiver {
        let state = Arc::new(Mutex::new(State {
            got: Vec::new(),
            answer: Some(answer),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let s = state.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move { respond(&s, uri.path().to_owned(), headers, body).await }
            },
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serve the receiver");
        });
        Receiver { addr, state, task }
    }

    /// The URL of `path` on the receiver.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with `answer`.
    pub(crate) fn answer(&self, answer: Answer) {
        self.lock().answer = Some(answer);
    }

    /// Every request so far.
    pub(crate) fn got(&self) -> Vec<Got> {
        self.lock().got.clone()
    }

    /// Requests so far answered with a 2xx.
    pub(crate) fn accepted(&self) -> Vec<Got> {
        self.lock()
            .got
            .iter()
            .filter(|g| (200..300).contains(&g.status))
            .cloned()
            .collect()
    }

    /// Waits until `cond` holds of the requests so far.
    pub(crate) async fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        cond: impl Fn(&[Got]) -> bool,
    ) {
        crate::common::wait_until(deadline, what, || async {
            let got = self.got();
            cond(&got)
        })
        .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond(state: &Mutex<State>, path: String, headers: HeaderMap, body: Bytes) -> Response {
    let answer = state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .answer
        .clone()
        .unwrap_or(Answer::Status(200));
    let (status, response) = match &answer {
        Answer::Status(code) => (
            *code,
            (StatusCode::from_u16(*code).expect("a status code"), "{}").into_response(),
        ),
        Answer::Json(v) => (200, axum::Json(v.clone()).into_response()),
        Answer::Hang => (0, StatusCode::OK.into_response()),
    };
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .got
        .push(Got {
            path,
            headers,
            body,
            status,
        });
    if let Answer::Hang = answer {
        std::future::pending::<()>().await;
    }
    response
}

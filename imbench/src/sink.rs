//! `imbench webhook-sink`: a receiver of imd's webhook for benchmarks and chaos runs.
//! It checks every event's signature and, per conversation, that accepted events come
//! in `seq` order with no gap (a repeat of an accepted seq is a duplicate, which
//! at-least-once allows); it can answer 500 for a while (`--fail-for`) to measure how
//! imd rides out a dead receiver and how fast it drains the backlog once it answers.
//!
//! It prints one JSON line per second and a summary at the end (also on SIGTERM or
//! SIGINT); it exits non-zero
//! when an event failed its signature, a conversation skipped a seq, or fewer than
//! `--expect` distinct events came. Bounded: it stops after `--duration`, and what it
//! keeps (one id per distinct event, one seq per conversation) is bounded by the
//! events the run sends.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::cli::WebhookSinkArgs;

#[derive(Deserialize)]
struct Event {
    id: String,
    msg: Msg,
}

#[derive(Deserialize)]
struct Msg {
    conv: String,
    seq: u64,
    ts: i64,
}

struct Sink {
    secret: Vec<u8>,
    fail_for: Option<Duration>,
    state: Mutex<State>,
}

struct State {
    /// When the first event came.
    first: Option<Instant>,
    /// When the failing window ended (wall ms), once it has.
    recovered_ms: Option<i64>,
    /// When the last event committed before recovery was accepted (after recovery).
    drained: Option<Instant>,
    requests: u64,
    answered_500: u64,
    bad_signatures: u64,
    accepted: u64,
    repeats: u64,
    gaps: u64,
    ids: HashSet<String>,
    last_seq: HashMap<String, u64>,
    /// Commit → acceptance, ms.
    lag: Histogram<u64>,
    /// Accepted in the current second.
    second: u64,
    /// The most accepted in one second.
    peak: u64,
    /// Distinct events accepted after recovery, and the first and last of those
    /// acceptances: the backlog's drain rate.
    after_recovery: u64,
    first_after: Option<Instant>,
    last_after: Option<Instant>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Sink {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signed(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        let Some(got) = headers
            .get("x-imd-signature")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("sha256="))
        else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // A benchmark tool: constant time does not matter here.
        got == want
    }

    fn receive(&self, headers: &HeaderMap, body: &[u8]) -> StatusCode {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.requests += 1;
        if !self.signed(headers, body) {
            s.bad_signatures += 1;
            return StatusCode::UNAUTHORIZED;
        }
        let Ok(event) = serde_json::from_slice::<Event>(body) else {
            s.bad_signatures += 1;
            return StatusCode::BAD_REQUEST;
        };
        let first = *s.first.get_or_insert_with(Instant::now);
        if let Some(window) = self.fail_for {
            if first.elapsed() < window {
                s.answered_500 += 1;
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            if s.recovered_ms.is_none() {
                s.recovered_ms = Some(now_ms());
            }
        }
        s.accepted += 1;
        s.second += 1;
        let last = s.last_seq.entry(event.msg.conv).or_insert(0);
        if event.msg.seq <= *last {
            s.repeats += 1;
        } else {
            if event.msg.seq > *last + 1 && *last > 0 {
                s.gaps += 1;
            }
            *last = event.msg.seq;
        }
        if s.ids.insert(event.id) {
            let lag = (now_ms() - event.msg.ts).max(0) as u64;
            s.lag.saturating_record(lag);
            if s.recovered_ms.is_some() {
                let now = Instant::now();
                s.after_recovery += 1;
                s.first_after.get_or_insert(now);
                s.last_after = Some(now);
            }
            if s.recovered_ms.is_some_and(|r| event.msg.ts <= r) {
                s.drained = Some(Instant::now());
            }
        }
        StatusCode::NO_CONTENT
    }
}

/// Serves the sink until `--duration` passes or `--expect` events came.
pub async fn run(args: WebhookSinkArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!(
        "{}",
        json!({"event": "listening", "listen": listener.local_addr()?.to_string()})
    );
    let sink = Arc::new(Sink {
        secret: args.secret.expose().as_bytes().to_vec(),
        fail_for: args.fail_for,
        state: Mutex::new(State {
            first: None,
            recovered_ms: None,
            drained: None,
            requests: 0,
            answered_500: 0,
            bad_signatures: 0,
            accepted: 0,
            repeats: 0,
            gaps: 0,
            ids: HashSet::new(),
            last_seq: HashMap::new(),
            lag: Histogram::new_with_bounds(1, 24 * 3600 * 1000, 3)?,
            second: 0,
            peak: 0,
            after_recovery: 0,
            first_after: None,
            last_after: None,
        }),
    });
    let s = sink.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let s = s.clone();
        async move { s.receive(&headers, &body) }
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let stopped = tokio::select! {
            _ = every.tick() => false,
            _ = term.recv() => true,
            _ = tokio::signal::ctrl_c() => true,
        };
        let (line, unique) = {
            let mut s = sink.lock();
            let second = std::mem::take(&mut s.second);
            s.peak = s.peak.max(second);
            let line = json!({
                "event": "second",
                "t": started.elapsed().as_secs(),
                "accepted": second,
                "unique": s.ids.len(),
                "answered_500": s.answered_500,
            });
            (line, s.ids.len() as u64)
        };
        println!("{line}");
        if stopped
            || started.elapsed() >= args.duration
            || (args.expect > 0 && unique >= args.expect)
        {
            break;
        }
    }
    server.abort();
    let s = sink.lock();
    let active = s.first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let summary = json!({
        "event": "summary",
        "requests": s.requests,
        "accepted": s.accepted,
        "unique": s.ids.len(),
        "repeats": s.repeats,
        "gaps": s.gaps,
        "bad_signatures": s.bad_signatures,
        "answered_500": s.answered_500,
        "conversations": s.last_seq.len(),
        "peak_per_s": s.peak,
        "backlog_per_s": match (s.first_after, s.last_after) {
            (Some(a), Some(b)) if b > a => json!((s.after_recovery as f64 / b.duration_since(a).as_secs_f64()).round()),
            _ => serde_json::Value::Null,
        },
        "seconds_since_first": active,
        "lag_ms": {
            "p50": s.lag.value_at_quantile(0.5),
            "p99": s.lag.value_at_quantile(0.99),
            "max": s.lag.max(),
        },
        "drain_ms": match (s.recovered_ms, s.drained, s.first, args.fail_for) {
            (Some(_), Some(d), Some(f), Some(w)) => json!(d.duration_since(f).saturating_sub(w).as_millis() as u64),
            _ => serde_json::Value::Null,
        },
    });
    println!("{summary}");
    let ok = s.bad_signatures == 0
        && s.gaps == 0
        && (args.expect == 0 || s.ids.len() as u64 >= args.expect);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

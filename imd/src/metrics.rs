//! Prometheus metrics: the recorder, its upkeep, and the names `imd` exports.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the process-wide recorder and starts its upkeep (which keeps histograms
/// from growing). Returns `None` when a recorder is already installed.
pub fn install(stop: CancellationToken) -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .ok()?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), BATCH_BUCKETS)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = every.tick() => upkeep.run_upkeep(),
                _ = stop.cancelled() => break,
            }
        }
    });
    Some(handle)
}

/// Describes every metric and registers the counters at zero, so that `/metrics`
/// lists them before the first event.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    for (name, help) in [
        (
            "imd_messages_committed_total",
            "Messages committed to the store.",
        ),
        (
            "imd_messages_duplicate_total",
            "Sends answered with an earlier message (same cid).",
        ),
        ("imd_commit_failures_total", "Store commits that failed."),
        (
            "imd_pushes_total",
            "Pushes queued to devices (one per device per message).",
        ),
        ("imd_acks_total", "Pushes acknowledged by devices."),
        (
            "imd_retransmits_total",
            "Pushes resent after the ack timeout.",
        ),
        (
            "imd_ack_timeouts_total",
            "Pushes given up on after the last retry; left to sync.",
        ),
        (
            "imd_slow_consumer_disconnects_total",
            "Connections closed for not keeping up.",
        ),
        (
            "imd_idle_disconnects_total",
            "Connections closed after the idle timeout.",
        ),
        (
            "imd_auth_failures_total",
            "Failed authentications: bad or expired client tokens, bad admin tokens.",
        ),
        (
            "imd_auth_bans_total",
            "Ips banned after repeated failed authentications.",
        ),
        (
            "imd_bad_frames_total",
            "WebSocket frames that failed to decode.",
        ),
        (
            "imd_frames_too_large_total",
            "Connections closed for a frame over the limit.",
        ),
        (
            "imd_http_head_timeouts_total",
            "HTTP connections closed for sending no complete request head in time.",
        ),
        (
            "imd_http_write_timeouts_total",
            "HTTP connections closed for reading none of their answers in time.",
        ),
        (
            "imd_connections_refused_total",
            "Connections closed before HTTP, by reason: open_timeout (no PROXY header or TLS handshake in time), proxy_peer, proxy_header, tls.",
        ),
        (
            "imd_retention_removed_total",
            "Messages and inbox entries removed by retention (--retention).",
        ),
        (
            "imd_retention_failures_total",
            "Retention passes that failed (the next one goes on).",
        ),
        (
            "imd_erased_total",
            "Messages whose body an operator's erasure removed.",
        ),
        (
            "imd_webhook_delivered_total",
            "Webhook events the receiver accepted (2xx).",
        ),
        (
            "imd_webhook_failed_total",
            "Webhook POSTs that failed (non-2xx, no answer, timeout).",
        ),
        (
            "imd_webhook_retried_total",
            "Webhook POSTs of an event that had failed before.",
        ),
        (
            "imd_webhook_parked_total",
            "Webhook events parked after failing for the whole retry window.",
        ),
        (
            "imd_webhook_dropped_total",
            "Webhook events lost before delivery, by reason: retention (removed before delivered), parked_cap (oldest parked dropped at the cap).",
        ),
    ] {
        describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
    // Counters of the pre-send hook and offline pushes, by outcome, each at zero.
    for (name, label, values, help) in [
        (
            "imd_hook_before_send_total",
            "result",
            &["allow", "reject", "replace", "error"][..],
            "Pre-send hook calls, by outcome (error: the call failed, whatever the policy did).",
        ),
        (
            "imd_offline_pushes_total",
            "result",
            &["sent", "refused", "failed"][..],
            "Offline pushes: taken by the relay, refused by it (4xx), or given up on.",
        ),
        (
            "imd_offline_push_skipped_total",
            "reason",
            &["no_token", "online"][..],
            "Recipients of a message not pushed: no push token, or a device online.",
        ),
        (
            "imd_offline_push_dropped_total",
            "reason",
            &["queue_full", "lagged"][..],
            "Offline pushes dropped unlooked at: recipients over the queue, messages missed behind the commits.",
        ),
    ] {
        describe_counter!(name, help);
        for value in values {
            metrics::counter!(name, label => *value).increment(0);
        }
    }
    describe_counter!(
        "imd_offline_push_retries_total",
        "Offline pushes tried again after the relay failed."
    );
    metrics::counter!("imd_offline_push_retries_total").increment(0);
    describe_histogram!(
        "imd_hook_before_send_seconds",
        Unit::Seconds,
        "Time of one pre-send hook call, failures included."
    );
    describe_gauge!("imd_connections", "Open WebSocket connections.");
    describe_gauge!(
        "imd_retention_last_pass_timestamp_seconds",
        Unit::Seconds,
        "When the last complete retention pass ended (unix seconds)."
    );
    for (name, help) in [
        (
            "imd_shop_agents_online",
            "Agents of the shop with a device connected.",
        ),
        (
            "imd_shop_agents_available",
            "Agents of the shop online and not away.",
        ),
        (
            "imd_shop_open",
            "Open conversations of the shop with an agent.",
        ),
        (
            "imd_shop_waiting",
            "Conversations of the shop waiting in its queue.",
        ),
        (
            "imd_shop_first_responses",
            "Conversations of the shop answered by an agent.",
        ),
        (
            "imd_shop_first_response_seconds",
            "First-response time percentiles of the shop (upper bound of the histogram bucket).",
        ),
        ("imd_shop_ratings", "Ratings the shop received."),
        ("imd_shop_rating_avg", "The shop's mean rating score."),
        (
            "imd_shop_metrics_omitted",
            "Shops beyond the first 100 by name, which get no per-shop gauges.",
        ),
    ] {
        describe_gauge!(name, help);
    }
    for (name, help) in [
        (
            "imd_webhook_lag_seconds",
            "Age of the oldest webhook event this node is retrying (0: none).",
        ),
        (
            "imd_webhook_pending_conversations",
            "Conversations with webhook events that may be undelivered.",
        ),
        ("imd_webhook_parked", "Webhook events parked now."),
    ] {
        describe_gauge!(name, help);
    }
    metrics::gauge!("imd_connections").increment(0.0);
    describe_histogram!(
        "imd_commit_latency_seconds",
        Unit::Seconds,
        "Time to commit one batch durably."
    );
    describe_histogram!("imd_commit_batch_size", "Messages per committed batch.");
    describe_histogram!(
        "imd_route_write_round_seconds",
        Unit::Seconds,
        "Time one round of connection route writes took (cluster workers)."
    );
    describe_histogram!(
        "imd_route_write_round_size",
        "Connection changes in one round of route writes (cluster workers)."
    );
    describe_histogram!(
        "imd_retention_pass_seconds",
        Unit::Seconds,
        "Time one retention pass took."
    );
    describe_histogram!(
        "imd_webhook_post_seconds",
        Unit::Seconds,
        "Time of one webhook POST, answered or not."
    );
    describe_histogram!(
        "imd_push_latency_seconds",
        Unit::Seconds,
        "Time from a push being queued to being written to its socket."
    );
}

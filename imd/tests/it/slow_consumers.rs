//! Slow consumers (`--max-outbox-bytes`, `--write-timeout`): a device that does not
//! read is cut off long before the idle timeout, by the bytes queued for it or by a
//! write that makes no progress; a device that reads gets a large burst in full under
//! the defaults.

use std::time::Duration;

use serde_json::json;

use crate::common::{Http, Imd, metric, raw_upgrade, wait_eof, wait_until};

/// `n` messages of 16 KiB (a large message, well under the 64 KiB frame limit) from
/// `sender` to `to`, each committed before the next.
async fn flood(http: &Http, sender: &str, to: &str, n: u64) {
    let pad = "x".repeat(16 * 1024);
    for i in 0..n {
        http.post_message(sender, &json!({"to": to, "body": {"i": i, "pad": pad}}))
            .await
            .assert_ok();
    }
}

/// Waits until the counter `name` of `/metrics` is at least 1.
async fn counted(http: &Http, name: &str, what: &str) {
    wait_until(Duration::from_secs(10), what, || async {
        metric(&http.metrics().await, name).unwrap_or(0.0) >= 1.0
    })
    .await;
}

#[tokio::test]
async fn a_device_that_never_reads_is_cut_off_by_bytes_and_time() {
    let imd = Imd::start(&[
        "--max-outbox-bytes",
        "262144",
        "--write-timeout",
        "1s",
        "--send-rate",
        "0",
    ]);
    let http = imd.http();
    // Upgraded, then silent: it never reads a byte (nor answers pings: the idle
    // timeout, 60 s by default, is not what closes it here).
    let mut dead = raw_upgrade(imd.addr, &imd.token("dead", "d1"));
    let sender = imd.token("sender", "s1");
    // 128 × 16 KiB = 2 MiB for it: eight times its outbox's bound, and more than the
    // socket buffers take, so its writes stall as well.
    flood(&http, &sender, "dead", 128).await;
    counted(
        &http,
        "imd_slow_consumer_disconnects_total",
        "the silent device cut off as slow",
    )
    .await;
    let text = http.metrics().await;
    // Which bound comes first depends on how much the socket buffers take: what is
    // written and not acked, what waits to be written, or the stalled write.
    let bounds = [
        "imd_unacked_bytes_exceeded_total",
        "imd_outbox_bytes_exceeded_total",
        "imd_write_timeouts_total",
    ]
    .map(|m| metric(&text, m).unwrap_or(0.0));
    assert!(
        bounds.iter().sum::<f64>() >= 1.0,
        "cut off, but by none of the byte and time bounds: {bounds:?}"
    );
    // The server closed it: reading now finds the end of the stream.
    tokio::task::spawn_blocking(move || wait_eof(&mut dead, Duration::from_secs(10)))
        .await
        .expect("join reader");
    // Nothing is lost: the messages wait in its inbox.
    let inbox = http.sync_all(&imd.token("dead", "d2"), 0, 1000).await;
    assert_eq!(
        inbox.len(),
        128,
        "the inbox keeps what the device did not take"
    );
}

#[tokio::test]
async fn a_write_that_makes_no_progress_closes_the_connection() {
    // Bytes bounds far above the flood: only the stalled write can end it.
    let imd = Imd::start(&[
        "--max-outbox-bytes",
        "67108864",
        "--write-timeout",
        "1s",
        "--send-rate",
        "0",
    ]);
    let http = imd.http();
    let mut dead = raw_upgrade(imd.addr, &imd.token("dead", "d1"));
    let sender = imd.token("sender", "s1");
    // 16 MiB: more than loopback's socket buffers take.
    flood(&http, &sender, "dead", 1024).await;
    counted(
        &http,
        "imd_write_timeouts_total",
        "the stalled write to time out",
    )
    .await;
    tokio::task::spawn_blocking(move || wait_eof(&mut dead, Duration::from_secs(10)))
        .await
        .expect("join reader");
}

#[tokio::test]
async fn a_device_that_reads_gets_a_large_burst_under_the_defaults() {
    let imd = Imd::start(&["--send-rate", "0"]);
    let http = imd.http();
    let mut reader = imd.ws_as("reader", "r1").await;
    let sender = imd.token("sender", "s1");
    // 256 × 16 KiB = 4 MiB, all committed before the device reads any of it: the
    // size of a reassigned agent's pushed history, with large messages.
    flood(&http, &sender, "reader", 256).await;
    for i in 0..256u64 {
        let (useq, msg) = reader.expect_push().await;
        reader.ack(&[useq]).await;
        let body = msg.body.expect("a body");
        assert_eq!(body["i"], i, "push {i} in order");
    }
    reader.ping_pong().await;
    let text = http.metrics().await;
    assert_eq!(
        metric(&text, "imd_slow_consumer_disconnects_total").unwrap_or(0.0),
        0.0,
        "nobody was cut off"
    );
}

/// An admin replay of large messages goes in batches that keep the device under its
/// byte bounds (a quarter of `--max-outbox-bytes` a call), instead of pushing it into
/// a `slow` disconnect.
#[tokio::test]
async fn a_replay_of_large_messages_goes_in_batches_the_device_can_take() {
    const ADMIN: &str = "admin-slow-consumers-0123456789";
    let imd = Imd::start(&[
        "--admin-token",
        ADMIN,
        "--max-outbox-bytes",
        "262144",
        "--send-rate",
        "0",
    ]);
    let http = imd.http();
    let sender = imd.token("sender", "s1");
    flood(&http, &sender, "bob", 10).await;
    let mut bob = imd.ws_as("bob", "b1").await;
    let mut after = 0;
    let mut replayed = Vec::new();
    loop {
        let answer = http
            .post_json(
                "/admin/v1/replay",
                Some(ADMIN),
                &json!({"uid": "bob", "after": after}),
            )
            .await;
        let answer = answer.assert_ok().clone();
        let n = answer["messages"].as_u64().expect("messages");
        // 64 KiB a call: three messages of a little over 16 KiB.
        assert!((1..=3).contains(&n), "a batch of {n}: {answer}");
        for _ in 0..n {
            let (useq, _) = bob.expect_push().await;
            bob.ack(&[useq]).await;
            replayed.push(useq);
        }
        match answer["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(replayed, (1..=10).collect::<Vec<u64>>());
    bob.ping_pong().await;
}

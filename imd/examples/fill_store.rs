//! Fills an embedded store's data dir with direct messages until its file holds a
//! size on disk, to measure how long imd takes to open it after a crash (issue 17: a
//! data dir of 10 GB must recover in seconds; `DATA=DIR
//! imbench/scripts/kill-during-chat.sh` runs the rest).
//!
//! ```sh
//! cargo run --release -p imd --example fill_store -- DIR GIB [BODY_BYTES]
//! ```
//!
//! Messages go through the store's own commit (every table a real send writes), 1,000
//! per transaction, among 100,000 users in random pairs, each with a `cid` and a body
//! of BODY_BYTES (default 600) bytes of text. A dir already filled that far is left as
//! it is.

use std::path::PathBuf;
use std::time::Instant;

use imd::store::{Content, EmbeddedOptions, EmbeddedStore, MessageStore, NewMessage, Op};
use serde_json::json;

const USERS: u64 = 100_000;
const BATCH: u64 = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: fill_store DIR GIB [BODY_BYTES]";
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let gib: f64 = args.next().ok_or(usage)?.parse()?;
    let body_bytes: usize = args.next().map_or(Ok(600), |b| b.parse())?;
    let target = (gib * f64::from(1u32 << 30)) as u64;
    let file = dir.join("imd.redb");
    // The bytes the file holds on disk (redb grows its file a region at a time and
    // the new region's pages are holes until written), not its length.
    let size = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&file).map_or(0, |m| m.blocks() * 512)
    };
    let gib = || size() as f64 / f64::from(1u32 << 30);

    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    // A cache bigger than imd's default only to fill faster; the measured imd opens
    // the dir with its own.
    let opening = Instant::now();
    let options = EmbeddedOptions {
        cache_bytes: 2 << 30,
        ..Default::default()
    };
    let store = EmbeddedStore::open_with(&dir, options)?;
    eprintln!(
        "opened {} ({:.2} GiB on disk) in {:.2} s",
        file.display(),
        gib(),
        opening.elapsed().as_secs_f64()
    );
    let text = "x".repeat(body_bytes);
    let started = Instant::now();
    // A run that continues a dir goes on with new ids and cids: its start time.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let mut sent = 0u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while size() < target {
        let batch = (0..BATCH)
            .map(|_| {
                let i = sent;
                sent += 1;
                let (a, b) = (next(&mut state) % USERS, next(&mut state) % USERS);
                let b = if a == b { (b + 1) % USERS } else { b };
                // Not imbench's uids: a load run on the filled dir syncs only its own.
                let (from, to) = (format!("fill{a}"), format!("fill{b}"));
                Op::Message(NewMessage {
                    id: format!("f{run:x}-{i}"),
                    conv: shared::ids::direct_conv(&from, &to),
                    members: vec![from.clone(), to],
                    from,
                    cid: Some(format!("f{run:x}-{i}")),
                    content: Content::Body(json!({ "text": text })),
                    ts: shared::time::now_ms(),
                })
            })
            .collect();
        rt.block_on(store.commit(batch))?;
        if sent.is_multiple_of(50 * BATCH) {
            let s = started.elapsed().as_secs_f64();
            eprintln!(
                "{sent} messages, {:.2} GiB, {:.0} msg/s",
                gib(),
                sent as f64 / s
            );
        }
    }
    println!(
        "{}: {:.2} GiB after {sent} more messages in {:.0} s",
        file.display(),
        gib(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// xorshift64*: enough spread for picking users, and no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

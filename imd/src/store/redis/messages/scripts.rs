//! The Lua scripts of the message protocol, each loaded from `lua/` and documented
//! with its keys, arguments and reply; `step_lib.lua` (the step shared by the store and
//! step scripts) and `now_ms_lib.lua` (the server's clock) are prepended to the scripts
//! that use them. It must not hold any logic of its own.

use std::sync::LazyLock;

use redis::Script;

/// Step replies: done and not holding the lease; lease held by someone else; entries to
/// process under our lease; done and holding the lease (joins).
pub(super) const DONE: i64 = 0;
pub(super) const BUSY: i64 = 1;
pub(super) const ROUND: i64 = 2;
pub(super) const HELD: i64 = 3;

/// KEYS: pending, lock, msgs. ARGV: token, lease ms, last done, need, nmax, budget, hold.
pub(super) static STEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/step_lib.lua"),
        include_str!("../lua/step.lua"),
    ))
});

/// Stores a conversation's messages of one batch, then (when ARGV[5] is 1) steps once.
/// KEYS: msgs, ids, pending, lock. ARGV: token, lease ms, nmax, budget, drain, then per
/// message: id, JSON prefix, JSON suffix, pending tail (`" <ts>\n<uid>…"`).
/// Returns {seqs (0: cancelled id), step reply}.
pub(super) static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/step_lib.lua"),
        include_str!("../lua/store.lua"),
    ))
});

/// Appends one member's entries of one conversation, skipping those at or below its
/// `pos`. KEYS: inbox, pos. ARGV: conv, then seq, JSON pairs in seq order. Returns the
/// useq of each entry, 0 for a skipped one.
pub(super) static APPEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/append.lua")));

/// Claims one sender's idempotency keys in order. KEYS: the keys. ARGV: window ms, then
/// per key: our value, a value we may take over (`""`: none). Returns per key `""` when
/// ours, else the value that holds it.
pub(super) static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/claim.lua")));

/// Marks conversations dirty at the server's time. KEYS: shard. ARGV: convs.
pub(super) static MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/now_ms_lib.lua"),
        include_str!("../lua/mark.lua"),
    ))
});

/// Conversations marked before the server's now minus ARGV[1] ms, at most ARGV[2], as
/// a flat conv, score list. KEYS: shard.
pub(super) static DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/now_ms_lib.lua"),
        include_str!("../lua/due.lua"),
    ))
});

/// Unmarks ARGV[1] if its score is still ARGV[2]. KEYS: shard.
pub(super) static UNMARK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/unmark.lua")));

/// Finds the message an idempotency key names. KEYS: ids, msgs. ARGV: id, cancel (1:
/// cancel the id if it is not stored). Returns {0, json} when stored, {1, ""} when not
/// stored (yet), {2, ""} when cancelled.
pub(super) static RESOLVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/resolve.lua")));

/// A join's copy: renews the lease and reads ARGV[4] messages from index ARGV[3], or
/// returns {0, {}} when the lease is no longer ours. KEYS: msgs, lock. ARGV: token,
/// lease ms, from, count.
pub(super) static CHUNK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/chunk.lua")));

/// Releases a lease if it is still ours. KEYS: lock. ARGV: token.
pub(super) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/release.lua")));

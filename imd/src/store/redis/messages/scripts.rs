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
/// A message with a body moves its sender's read position to its seq; an event
/// message is recorded in `events` instead.
/// KEYS: msgs, ids, pending, lock, read, events. ARGV: token, lease ms, nmax, budget,
/// drain, then per message: id, JSON prefix, JSON suffix, pending tail
/// (`" <ts>\n<uid>…"`), sender (`""`: an event message).
/// Returns {seqs (0: cancelled id), step reply}.
pub(super) static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/step_lib.lua"),
        include_str!("../lua/store.lua"),
    ))
});

/// Appends one member's entries of one conversation, skipping those at or below its
/// `pos`, and moves the conversation's entry of the member's list forward to the
/// latest commit time appended (`ZADD GT`: never back). KEYS: inbox, pos, convs. ARGV:
/// conv, then seq, ts, JSON triples in seq order. Returns the useq of each entry, 0 for
/// a skipped one.
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

/// Releases a lease if it is still ours (the fan-out lease, and the decision lease of
/// `shops`). KEYS: lock. ARGV: token.
pub(in crate::store::redis) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/release.lua")));

/// Moves a read position forward, clamped to the conversation's last seq. KEYS: msgs,
/// read. ARGV: uid, seq. Returns {position now, 1 when it moved}.
pub(super) static READ: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/read.lua")));

/// One page of a user's conversation list: the entries after the cursor (ARGV[1] = 1:
/// ARGV[2] ts, ARGV[3] conv) in the list's order, at most ARGV[4]. KEYS: convs, pos.
/// Returns {flat conv, score list, the last seq of each conv in the inbox (`pos`)}.
pub(super) static CONV_PAGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/conv_page.lua")));

/// A conversation as one user's list shows it, up to the last seq of it in the user's
/// inbox. KEYS: msgs, read, events. ARGV: uid, 1 for every member's position (0: the
/// user's only), that seq (0: the conversation's end). Returns {that seq, its message
/// (`""`: none), the user's position, flat uid/position list (empty for the user's
/// only), event messages between the user's position and that seq}.
pub(super) static CONV_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/conv_state_lib.lua"),
        include_str!("../lua/conv_state.lua"),
    ))
});

/// [`CONV_STATE`] for several conversations at once, on standalone Redis only (their
/// keys are in different slots). KEYS: msgs, read, events of each. ARGV: uid, then for
/// each the two last arguments of [`CONV_STATE`]. Returns one [`CONV_STATE`] reply each.
pub(super) static CONV_STATES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/conv_state_lib.lua"),
        include_str!("../lua/conv_states.lua"),
    ))
});

/// A recall's compare-and-set of the stored message, under the lease. KEYS: msgs, lock.
/// ARGV: token, lease ms, index, original JSON, recalled JSON. Returns 1 when set (or
/// set already: a re-run), 0 when the lease is not ours, 2 when the message is neither.
pub(super) static RECALL_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/recall_set.lua")));

/// One chunk of a recall's inbox rewrite: nothing unless `pos[conv] >= seq`; else looks
/// at the entries from index ARGV[3] (-1: the tail) down, at most ARGV[4], for the
/// message's entry (it starts with ARGV[5]) and sets it to ARGV[7]. Stops at an entry of
/// the conversation below the seq (its field `"conv":…,"seq":` is ARGV[6]). KEYS:
/// inbox, pos. ARGV: conv, seq, from, count, prefix, conv field, recalled JSON. Returns
/// {code, next}: 0 not there, 1 go on from index next, 2 rewritten, 3 rewritten
/// already.
pub(super) static RECALL_INBOX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/recall_inbox.lua")));

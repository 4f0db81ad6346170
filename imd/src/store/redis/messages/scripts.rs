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
        include_str!("../lua/list_base_lib.lua"),
        include_str!("../lua/step_lib.lua"),
        include_str!("../lua/step.lua"),
    ))
});

/// Stores a conversation's messages of one batch, then (when ARGV[5] is 1) steps once.
/// A message with a body moves its sender's read position to its seq; an event
/// message is recorded in `events` instead.
/// KEYS: msgs, ids, pending, lock, read, events, and when the webhook outbox is on its
/// cursor (set before the first message stored, if unset). ARGV: token, lease ms, nmax, budget,
/// drain, then per message: id, JSON prefix, JSON suffix, pending tail
/// (`" <ts>\n<uid>…"`), sender (`""`: an event message).
/// Returns {seqs (0: cancelled id), step reply}.
pub(super) static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/list_base_lib.lua"),
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
    LazyLock::new(|| with_list_base(include_str!("../lua/append.lua")));

/// Claims one sender's idempotency keys in order. KEYS: the keys. ARGV: window ms, then
/// per key: our value, a value we may take over (`""`: none). Returns per key `""` when
/// ours, else the value that holds it.
pub(super) static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/claim.lua")));

/// Marks conversations dirty at the server's time. KEYS: shard, and when the webhook
/// outbox is on its shard. ARGV: convs.
pub(super) static MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/now_ms_lib.lua"),
        include_str!("../lua/mark.lua"),
    ))
});

/// Conversations marked before the server's now minus ARGV[1] ms, at most ARGV[2], as
/// a flat conv, score list. KEYS: shard.
pub(in crate::store::redis) static DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/now_ms_lib.lua"),
        include_str!("../lua/due.lua"),
    ))
});

/// Unmarks ARGV[1] if its score is still ARGV[2]. KEYS: shard.
pub(in crate::store::redis) static UNMARK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/unmark.lua")));

/// Finds the message an idempotency key names. KEYS: ids, msgs. ARGV: id, cancel (1:
/// cancel the id if it is not stored). Returns {0, json} when stored, {1, ""} when not
/// stored (yet), {2, ""} when cancelled or removed by retention.
pub(super) static RESOLVE: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/resolve.lua")));

/// A join's copy: renews the lease and reads ARGV[4] messages after seq ARGV[3] (or
/// after what retention removed, if more), or returns {0, {}, 0} when the lease is no
/// longer ours. KEYS: msgs, lock. ARGV: token, lease ms, from, count. Returns {1,
/// messages, the seq they follow}.
pub(super) static CHUNK: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/chunk.lua")));

/// Releases a lease if it is still ours (the fan-out lease, and the decision lease of
/// `shops`). KEYS: lock. ARGV: token.
pub(in crate::store::redis) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/release.lua")));

/// Moves a read position forward, clamped to the conversation's last seq. KEYS: msgs,
/// read. ARGV: uid, seq. Returns {position now, 1 when it moved}.
pub(super) static READ: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/read.lua")));

/// One page of a user's conversation list: the entries after the cursor (ARGV[1] = 1:
/// ARGV[2] ts, ARGV[3] conv) in the list's order, at most ARGV[4]. KEYS: convs, pos.
/// Returns {flat conv, score list, the last seq of each conv in the inbox (`pos`)}.
pub(super) static CONV_PAGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/conv_page.lua")));

/// A conversation as one user's list shows it, up to the last seq of it in the user's
/// inbox. KEYS: msgs, read, events. ARGV: uid, 1 for every member's position (0: the
/// user's only), that seq (0: the conversation's end). Returns {that seq, its message
/// (`""`: none), the user's position, flat uid/position list (empty for the user's
/// only), event messages between the user's position (or what retention removed, if
/// later) and that seq, the messages retention removed from its head}.
pub(super) static CONV_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/list_base_lib.lua"),
        include_str!("../lua/conv_state_lib.lua"),
        include_str!("../lua/conv_state.lua"),
    ))
});

/// [`CONV_STATE`] for several conversations at once, on standalone Redis only (their
/// keys are in different slots). KEYS: msgs, read, events of each. ARGV: uid, then for
/// each the two last arguments of [`CONV_STATE`]. Returns one [`CONV_STATE`] reply each.
pub(super) static CONV_STATES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../lua/list_base_lib.lua"),
        include_str!("../lua/conv_state_lib.lua"),
        include_str!("../lua/conv_states.lua"),
    ))
});

/// A recall's (or an erasure's) compare-and-set of the stored message, under the lease.
/// KEYS: msgs, lock. ARGV: token, lease ms, seq, original JSON, new JSON. Returns 1 when
/// set (or set already: a re-run), 0 when the lease is not ours, 2 when the message is
/// neither, 3 when retention removed it.
pub(super) static RECALL_SET: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/recall_set.lua")));

/// One chunk of a recall's inbox rewrite: nothing unless `pos[conv] >= seq`; else looks
/// at the entries from index ARGV[3] (-1: the tail) down, at most ARGV[4], for the
/// message's entry (it starts with ARGV[5]) and sets it to ARGV[7]. Stops at an entry of
/// the conversation below the seq (its field `"conv":…,"seq":` is ARGV[6]). KEYS:
/// inbox, pos. ARGV: conv, seq, from, count, prefix, conv field, recalled JSON. Returns
/// {code, next}: 0 not there, 1 go on from index next, 2 rewritten, 3 rewritten
/// already.
pub(super) static RECALL_INBOX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/recall_inbox.lua")));

/// `script` after the helpers of lists whose head retention trims (`list_base_lib.lua`:
/// a list's base, its end).
fn with_list_base(script: &str) -> Script {
    Script::new(&format!(
        "{}{script}",
        include_str!("../lua/list_base_lib.lua")
    ))
}

/// The last position of a list whose head retention trims (a conversation's last seq,
/// an inbox's last useq). KEYS: the list.
pub(in crate::store::redis) static LIST_END: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/list_end.lua")));

/// A page of a list whose head retention trims: ARGV[2] items after position ARGV[1]
/// (from the oldest one kept if that is later). KEYS: the list. Returns {its base (the
/// items removed from its head), the items}: the first is at position base + max(0,
/// ARGV[1] - base) + 1.
pub(super) static PAGE: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/page.lua")));

/// Sets the item at position ARGV[1] of a list whose head retention trims to ARGV[3] if
/// it is ARGV[2] (an erasure's change of an inbox copy). KEYS: the list. Returns 1 when
/// set, 0 when the item is another (or gone).
pub(super) static ERASE_AT: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/erase_at.lua")));

/// Removes ARGV[2] messages from the head of a conversation if its base is still
/// ARGV[1], never one whose fan-out is pending, with their ids (ARGV[3..]) and event
/// marks. KEYS: msgs, ids, pending, events. Returns how many it removed, -1 when the
/// base moved (another process trimmed).
pub(super) static TRIM_CONV: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/trim_conv.lua")));

/// Removes ARGV[2] entries from the head of an inbox if its base is still ARGV[1], and
/// the conversations of the user's list whose activity is before ARGV[3] (at most
/// ARGV[4], with their `pos`). KEYS: inbox, convs, pos. Returns {entries removed (-1:
/// the base moved), conversations removed, the oldest activity left (`""`: none)}.
pub(super) static TRIM_INBOX: LazyLock<Script> =
    LazyLock::new(|| with_list_base(include_str!("../lua/trim_inbox.lua")));

/// Indexes conversations and users for retention: `ZADD LT` of each at the commit
/// time given (a time at or before its oldest message, or inbox entry). KEYS: a
/// shard's conversations index, its users index. ARGV: the number of conversations,
/// then conv, ts pairs, then uid, ts pairs.
pub(super) static RETAIN_INDEX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/retain_index.lua")));

//! The Redis key schema: every key imd writes, and the functions that name them. It
//! must not read or write Redis itself.
//!
//! Every key starts with `imd:` and carries a hash tag, so that each script or
//! transaction touches one slot (Redis Cluster refuses anything else):
//!
//! - `imd:{c:<conv>}:…` per conversation;
//! - `imd:{u:<uid>}:…` per user;
//! - `imd:{n:<node>}:…` per node;
//! - `imd:{f:<k>}:…` for the 16 fan-out shards (spread over slots: every commit writes one);
//! - `imd:{g}:…` for the few global keys (directory tables, node list).
//!
//! # Messages
//!
//! - `imd:{c:<conv>}:msgs` LIST of message JSON; `seq` is the list position (from 1)
//!   plus the base, so it is gapless by construction. `history` is an `LRANGE`,
//!   `last_seq` an `LLEN` plus the base. A recall or an erasure `LSET`s an item to its
//!   recalled or erased form; nothing else changes an item.
//! - `imd:{c:<conv>}:msgs:base` how many messages retention removed from the head of
//!   `msgs` (absent: none); every script that turns a seq into an index, or gives the
//!   next seq, reads it (`lua/list_base_lib.lua`).
//! - `imd:{c:<conv>}:ids` HASH message id → seq, or `0` for a cancelled id (see
//!   *Idempotency* in `messages`). It makes the conversation script idempotent by message id.
//! - `imd:{c:<conv>}:pending` LIST of fan-outs not yet written into inboxes, one per
//!   seq, contiguous, in seq order: `"<seq> <ts>\n<uid>\n<uid>…"` (uids never hold a
//!   newline or a space).
//! - `imd:{c:<conv>}:lock` the fan-out lease: a random token, `PX` `messages::LEASE_MS`.
//! - `imd:{c:<conv>}:decide` the decision lease of a service conversation (see
//!   `ShopStore::try_decide`): a random token with a `PX` expiry.
//! - `imd:{c:<conv>}:read` HASH uid → read position (the highest seq read). The store
//!   script sets a sender's to the seq of its message with a body (the conversation's
//!   last: always forward); a `Read` op moves it forward, clamped to `LLEN msgs`.
//! - `imd:{c:<conv>}:events` ZSET seq → seq of the event messages, set by the store
//!   script. Unread of a user = last seq − read position − events after it (exact: the
//!   user's own messages lie at or below its position).
//! - `imd:{u:<uid>}:inbox` LIST of message JSON; `useq` is the list position plus the
//!   base. A recall or an erasure `LSET`s an entry to the message's recalled or erased
//!   form.
//! - `imd:{u:<uid>}:inbox:base` how many entries retention removed from the head of
//!   `inbox`, as for `msgs`.
//! - `imd:{u:<uid>}:pos` HASH conv → the highest seq of that conversation already in this
//!   inbox. A member append skips what is at or below it, which makes appends
//!   idempotent and keeps each conversation in seq order inside every inbox.
//! - `imd:{u:<uid>}:convs` ZSET conv → activity: the commit time (ms) of the latest
//!   message of that conversation in this inbox. The user's conversation list, newest
//!   first (equal times: conv descending, Redis's order of equal scores). The member
//!   append and a join's copy set it in the same script as the inbox entries, with
//!   `ZADD GT`: it never moves back, whatever order writers' clocks give.
//! - `imd:{u:<from>}:cid:<cid>` idempotency key, `"<conv>\n<message id>"`, expiring
//!   after [`IDEMPOTENCY_WINDOW_MS`](crate::store::IDEMPOTENCY_WINDOW_MS), or a shorter
//!   retention.
//! - `imd:{f:<k>}:fanout`, k in 0..16, ZSET conv → server time (ms) of its last commit:
//!   the conversations the sweeper looks at.
//! - `imd:{f:<k>}:retain-convs` ZSET conv → a commit time (ms) at or before its oldest
//!   message kept, and `imd:{f:<k>}:retain-users` ZSET uid (by the shard of the uid) →
//!   one at or before the oldest entry of its inbox: where a retention pass looks (see
//!   `messages/retention.rs`). Members never leave; a visit moves their score on.
//!
//! # Webhook outbox
//!
//! Written only when the outbox is on (`--webhook-url`); see `crate::store::outbox`.
//!
//! - `imd:{f:<k>}:hook` ZSET conv → server time (ms) of its last mark: the
//!   conversations that may hold undelivered events. Marked by the mark script with
//!   the fan-out shard of the same slot, so it has the same age guarantee.
//! - `imd:{c:<conv>}:hook` HASH `seq` → the last seq delivered (set by the store
//!   script before the first message it stores, if unset), `since` → since when (ms)
//!   the next event has been failing (0: not failing).
//! - `imd:{c:<conv>}:hook-lock` the delivery lease: a random token, `PX`.
//! - `imd:{g}:hook-parked` ZSET parked id → `"<id> <ParkedEvent JSON>"`, capped;
//!   `imd:{g}:hook-parked-id` the counter of parked ids.
//!
//! # Push tokens
//!
//! Per user, so that they spread over the cluster's slots like the inboxes:
//!
//! - `imd:{u:<uid>}:push` HASH device → [`PushToken`](crate::store::PushToken) JSON;
//! - `imd:{u:<uid>}:push-at` ZSET device → when it was registered (ms): the order in
//!   which devices past the bound go. One script changes both.
//!
//! # Directory
//!
//! The directory is small and changes at admin rate, so all of it lives under the one
//! global hash tag (`imd:{g}:…`, one slot): every update that spans several keys (a
//! shop's agents or a group's members and the reverse index; an assignment, the loads
//! and the waiting list) is one atomic Lua script. Scripts build some key names from a
//! prefix (the reverse index of each agent or member, the waiting list of a stored
//! state's shop), which Redis Cluster allows because they share the slot of the
//! declared keys.
//!
//! - `imd:{g}:blacklist`: hash `<kind>:<value>` → entry JSON;
//! - `imd:{g}:shops`: hash shop → [`Shop`](crate::store::Shop) JSON (an agents array
//!   when written before shops had settings); `imd:{g}:agent-shops:<uid>`: set of shops;
//! - `imd:{g}:groups`: hash group → members JSON; `imd:{g}:member-groups:<uid>`: set of
//!   groups;
//! - `imd:{g}:service`: hash conv → [`ServiceState`](crate::store::ServiceState) JSON (one `HGET` per
//!   customer-service message);
//! - `imd:{g}:loads`: hash agent → open conversations;
//! - `imd:{g}:waiting:<shop>`: sorted set of convs scored by when they began waiting
//!   (unix ms from Redis's clock, the one clock every imd node shares);
//! - `imd:{g}:shop-counters:<shop>`: hash `open` → open conversations with an agent,
//!   `ratings` and `rating_sum`, `frt:<bucket>` → first responses in that bucket;
//! - `imd:{g}:away`: set of agents marked away.
//!
//! # Registries
//!
//! Node records, the node list and the connection routes are listed in `registry`,
//! which alone reads and writes them.

use shared::admin::BlacklistKind;

/// Fan-out shards.
pub(super) const SHARDS: u32 = 16;

/// Key of a conversation's `part` (`imd:{c:<conv>}:<part>`).
pub(crate) fn conv_key(conv: &str, part: &str) -> String {
    format!("imd:{{c:{conv}}}:{part}")
}

/// Key of a user's `part` (`imd:{u:<uid>}:<part>`).
pub(crate) fn user_key(uid: &str, part: &str) -> String {
    format!("imd:{{u:{uid}}}:{part}")
}

/// Key of a node's `part` (`imd:{n:<node>}:<part>`).
pub(crate) fn node_key(node: &str, part: &str) -> String {
    format!("imd:{{n:{node}}}:{part}")
}

/// A global key (`imd:{g}:<part>`).
pub(crate) fn global_key(part: &str) -> String {
    format!("imd:{{g}}:{part}")
}

/// The key of fan-out shard `k`.
pub(super) fn shard_key(k: u32) -> String {
    format!("imd:{{f:{k}}}:fanout")
}

/// The retention index of the conversations of shard `k` (the same slot as fan-out
/// shard `k`).
pub(super) fn retain_convs_key(k: u32) -> String {
    format!("imd:{{f:{k}}}:retain-convs")
}

/// The retention index of the users of shard `k` (by [`shard_of`] their uid).
pub(super) fn retain_users_key(k: u32) -> String {
    format!("imd:{{f:{k}}}:retain-users")
}

/// The key of webhook outbox shard `k` (the same slot as fan-out shard `k`).
pub(super) fn hook_shard_key(k: u32) -> String {
    format!("imd:{{f:{k}}}:hook")
}

/// The key of the parked webhook events.
pub(super) fn hook_parked_key() -> String {
    global_key("hook-parked")
}

/// The counter of parked webhook event ids.
pub(super) fn hook_parked_id_key() -> String {
    global_key("hook-parked-id")
}

/// The shard of `conv` (FNV-1a, stable across processes and builds).
pub(super) fn shard_of(conv: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in conv.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SHARDS
}

/// The hash of `uid`'s push tokens, by device.
pub(super) fn push_key(uid: &str) -> String {
    user_key(uid, "push")
}

/// The sorted set of `uid`'s devices with a push token, by registration time.
pub(super) fn push_at_key(uid: &str) -> String {
    user_key(uid, "push-at")
}

/// The blacklist hash.
pub(super) fn blacklist_key() -> String {
    global_key("blacklist")
}

/// A blacklist entry's field in [`blacklist_key`].
pub(super) fn blacklist_field(kind: BlacklistKind, value: &str) -> String {
    format!("{}:{value}", kind.as_str())
}

/// The hash of shops' agents.
pub(super) fn shops_key() -> String {
    global_key("shops")
}

/// Prefix of the per-agent sets of shops.
pub(super) fn agent_shops_prefix() -> String {
    global_key("agent-shops:")
}

/// The hash of groups' members.
pub(super) fn groups_key() -> String {
    global_key("groups")
}

/// Prefix of the per-member sets of groups.
pub(super) fn member_groups_prefix() -> String {
    global_key("member-groups:")
}

/// The hash of customer-service conversations' states.
pub(super) fn service_key() -> String {
    global_key("service")
}

/// The hash of agents' loads.
pub(super) fn loads_key() -> String {
    global_key("loads")
}

/// Prefix of the per-shop waiting lists.
pub(super) fn waiting_prefix() -> String {
    global_key("waiting:")
}

/// Prefix of the per-shop counters (open, ratings, first-response buckets).
pub(super) fn counters_prefix() -> String {
    global_key("shop-counters:")
}

/// The set of agents marked away.
pub(super) fn away_key() -> String {
    global_key("away")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("d:a~b"), shard_of("d:a~b"));
        assert!((0..1000).all(|i| shard_of(&format!("g:{i}")) < SHARDS));
        let used: HashSet<u32> = (0..1000).map(|i| shard_of(&format!("g:{i}"))).collect();
        assert_eq!(used.len(), SHARDS as usize);
    }
}

//! Messages in Redis: conversations, inboxes and idempotency keys, and the fan-out
//! that carries each message from its conversation's slot into its members' slots. It
//! must never hold a conversation lock across anything but its own fan-out, and never
//! answer a sender before the message's inbox entries are written.
//!
//! # Keys
//!
//! - `imd:{c:<conv>}:msgs` LIST of message JSON; `seq` is the list position (from 1), so
//!   it is gapless by construction. `history` is an `LRANGE`, `last_seq` an `LLEN`.
//! - `imd:{c:<conv>}:ids` HASH message id → seq, or `0` for a cancelled id (see
//!   *Idempotency*). It makes the conversation script idempotent by message id.
//! - `imd:{c:<conv>}:pending` LIST of fan-outs not yet written into inboxes, one per
//!   seq, contiguous, in seq order: `"<seq> <ts>\n<uid>\n<uid>…"` (uids never hold a
//!   newline or a space).
//! - `imd:{c:<conv>}:lock` the fan-out lease: a random token, `PX` [`LEASE_MS`].
//! - `imd:{u:<uid>}:inbox` LIST of message JSON; `useq` is the list position.
//! - `imd:{u:<uid>}:pos` HASH conv → the highest seq of that conversation already in this
//!   inbox. A member append skips what is at or below it, which makes appends
//!   idempotent and keeps each conversation in seq order inside every inbox.
//! - `imd:{u:<from>}:cid:<cid>` idempotency key, `"<conv>\n<message id>"`, expiring
//!   after [`IDEMPOTENCY_WINDOW_MS`].
//! - `imd:{f:<k>}:fanout`, k in 0..16, ZSET conv → server time (ms) of its last commit:
//!   the conversations the sweeper looks at.
//!
//! # Commit
//!
//! A batch is cut at each `Join`; each run of messages between joins is committed as
//! one group, then the join runs, so that a join sees exactly the messages before it,
//! as in the embedded store. A group:
//!
//! 1. claims the idempotency keys (one script per sender) and, at the same time, marks
//!    the conversations dirty in their fan-out shard (one script per shard). A failed
//!    claim makes the message a duplicate of the one the key names.
//! 2. runs one script per conversation: appends each message (JSON built around its seq
//!    from a prefix and suffix made in Rust by serde, byte for byte what the embedded
//!    store writes), records its id and its pending fan-out; then, in the same script,
//!    takes the lease if it is free and returns the first pending entries.
//! 3. drains each conversation, concurrently: with the lease, one script per member
//!    appends all of that member's entries of the round; then a step script pops what
//!    was done and either renews the lease and returns the next entries, or releases it
//!    once the pending head is past this batch's seqs. That last step runs behind the
//!    answer: once a round has written the batch's last entries, the writer answers and
//!    the pop-and-release goes out on its own (a lost one costs the next writer of the
//!    conversation a lease expiry, never a message). Without the lease a writer polls
//!    the step script (200 µs doubling to 2 ms, 10 s overall) until the head is past
//!    its seqs or the lease frees.
//!
//! Round trips of an uncontended batch before its answer, whatever its size: 3 (claims
//! and marks; the conversation scripts; the member scripts), 2 without cids; the step
//! scripts follow. Every step of a round is one request per slot touched, issued
//! concurrently.
//!
//! Whoever writes an inbox entry reports it: this batch's messages come back as
//! `New` with the `(uid, useq)` pairs this call appended (none if another writer drained
//! them first; it pushes them), other writers' messages go to [`Relayed`], which
//! [`MessageStore::take_relayed`] empties.
//!
//! # Differences from the design note, and why
//!
//! - The fan-out shards carry their own hash tag (`{f:<k>}`) rather than `{g}`, so the
//!   16 shards, which every batch writes, spread over the cluster's nodes instead of
//!   all landing on the node that owns `{g}`.
//! - Shard scores are the Redis server's `TIME`, not the writer's clock, so that clock
//!   skew between hosts cannot make a fresh commit look old to the sweeper. A writer
//!   whose claims took longer than [`REMARK_AFTER`] marks again before storing, so the
//!   mark is never older than the sweeper's age threshold when the message lands.
//! - The conversation script also takes the lease and reads the first round (one round
//!   trip fewer); the "finish" and "acquire-and-read" scripts are one step script.
//! - A round is cut at about [`ROUND_MEMBERS`] member appends as well as at
//!   [`ROUND_ENTRIES`] entries, so that a big group's round stays well inside the lease.
//! - Idempotency: a claim that names a message which is not stored yet (its writer is
//!   still between claim and store, or died there) is waited for up to
//!   [`TAKEOVER_AFTER`]; then the id is cancelled in its conversation (`ids[id] = 0`,
//!   atomically with the check) and the resend takes the key over and is stored as new.
//!   A writer whose store script meets a cancelled id re-runs that message as a resend,
//!   so it answers with the taker's message: a cid never maps to two stored messages.
//! - A join holds the lease from its drain through its copy and renews it each chunk;
//!   a join that loses it fails rather than risk a hole in the joiner's inbox.
//!
//! # Sweep
//!
//! For each shard, the conversations marked more than [`SWEEP_AGE_MS`] ago: take the
//! lease (skip the conversation if it is held), drain everything pending up to the
//! conversation's current end, and unmark it only if its pending list is then empty and
//! its score is still the one read (a newer commit re-marked it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::{join_all, try_join_all};
use redis::Script;
use shared::protocol::Message;

use super::{LUA_NOW_MS, RedisStore, conv_key, db, user_key};
use crate::store::{
    CommitOutcome, Committed, IDEMPOTENCY_WINDOW_MS, JOIN_PUSH_TAIL, MessageStore, NewMessage, Op,
    Page, PageFill, StoreError,
};

/// How long a fan-out lease lasts without renewal; renewed at every round (a round is
/// two round trips). When its holder dies, every writer with a message in that
/// conversation waits this long, and on that node the whole commit batch with it: so
/// it is short. A holder that overruns it loses nothing: the next holder redoes the
/// round, and the inbox appends skip what is already there.
const LEASE_MS: u64 = 500;
/// Most pending entries one round processes.
const ROUND_ENTRIES: u64 = 64;
/// A round stops adding entries once this many member appends (plus one per entry) are
/// in it, so that a big group's round stays far inside the lease.
const ROUND_MEMBERS: u64 = 4096;
/// First and longest wait between polls of a conversation whose lease someone else holds.
const BACKOFF_START: Duration = Duration::from_micros(200);
const BACKOFF_MAX: Duration = Duration::from_millis(2);
/// How long a writer waits for its messages' fan-out before it fails the batch.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// A conversation marked longer ago than this is the sweeper's to finish.
const SWEEP_AGE_MS: u64 = 2000;
/// Conversations one sweep takes per shard.
const SWEEP_LIMIT: u64 = 64;
/// A group whose claims took longer than this marks its conversations again before
/// storing (see the module doc).
const REMARK_AFTER: Duration = Duration::from_millis(1000);
/// How old a claim whose message is not stored may get before a resend cancels that
/// message and takes the key over. A live writer stores within one round trip of its
/// claim; a writer that died in between (a worker killed with `kill -9`) must not
/// hold up the resend, which sits in the commit task of the node it reached: every
/// batch behind it waits too. A slow writer that is overtaken loses nothing: its
/// store script meets the cancelled id and it answers with the taker's message.
const TAKEOVER_AFTER: Duration = Duration::from_millis(500);
/// Most records waiting in [`Relayed`]; the oldest are dropped beyond it (their
/// messages are in the inboxes, and the workers are told to catch up).
const RELAYED_MAX: usize = 10_000;
/// Fan-out shards.
const SHARDS: u32 = 16;
/// Messages a join copies per script.
const JOIN_CHUNK: u64 = 128;
/// Items one `LRANGE` of a page read asks for.
const READ_CHUNK: usize = 128;
/// How often a group's messages may be re-run (cancelled ids, taken-over claims).
const MAX_ROUNDS: usize = 3;

/// Step replies: done and not holding the lease; lease held by someone else; entries to
/// process under our lease; done and holding the lease (joins).
const DONE: i64 = 0;
const BUSY: i64 = 1;
const ROUND: i64 = 2;
const HELD: i64 = 3;

/// Lua shared by the conversation and step scripts.
const LUA_STEP: &str = r#"
local function seq_of(e)
  return tonumber(string.match(e, '^%d+'))
end

-- The first pending entries (at most nmax, and about `budget` member appends) and the
-- messages they name (pending is contiguous in seq).
local function read(pending, msgs, nmax, budget)
  local es = redis.call('LRANGE', pending, 0, nmax - 1)
  local total = 0
  for i = 1, #es do
    local _, c = string.gsub(es[i], '\n', '')
    total = total + c + 1
    if total >= budget then
      for j = #es, i + 1, -1 do es[j] = nil end
      break
    end
  end
  local js = redis.call('LRANGE', msgs, seq_of(es[1]) - 1, seq_of(es[#es]) - 1)
  return es, js
end

-- Takes or renews the lease for `token`; false when another writer holds it.
local function hold_lease(lock, owner, token, lease)
  if owner == token then
    redis.call('PEXPIRE', lock, lease)
  elseif owner then
    return false
  else
    redis.call('SET', lock, token, 'PX', lease)
  end
  return true
end

-- Pops the entries up to `last` (0: none), then: done when the head is past `need`
-- (0: the conversation's current end), else the next round under the lease.
local function step(pending, lock, msgs, token, lease, last, need, nmax, budget, hold)
  if last > 0 then
    local h = redis.call('LINDEX', pending, 0)
    if h then
      local hs = seq_of(h)
      if hs <= last then
        redis.call('LTRIM', pending, last - hs + 1, -1)
      end
    end
  end
  if need <= 0 then
    need = redis.call('LLEN', msgs)
  end
  local owner = redis.call('GET', lock)
  local h = redis.call('LINDEX', pending, 0)
  local empty = 0
  if not h then empty = 1 end
  if empty == 1 or seq_of(h) > need then
    if hold == 1 then
      if not hold_lease(lock, owner, token, lease) then
        return {1, need, {}, {}, empty}
      end
      return {3, need, {}, {}, empty}
    end
    if owner == token then
      redis.call('DEL', lock)
    end
    return {0, need, {}, {}, empty}
  end
  if not hold_lease(lock, owner, token, lease) then
    return {1, need, {}, {}, empty}
  end
  local es, js = read(pending, msgs, nmax, budget)
  return {2, need, es, js, empty}
end
"#;

/// KEYS: pending, lock, msgs. ARGV: token, lease ms, last done, need, nmax, budget, hold.
static STEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_STEP}\nreturn step(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], \
         tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), \
         tonumber(ARGV[7]))"
    ))
});

/// Stores a conversation's messages of one batch, then (when ARGV[5] is 1) steps once.
/// KEYS: msgs, ids, pending, lock. ARGV: token, lease ms, nmax, budget, drain, then per
/// message: id, JSON prefix, JSON suffix, pending tail (`" <ts>\n<uid>…"`).
/// Returns {seqs (0: cancelled id), step reply}.
static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_STEP}\n{}",
        r#"
local out = {}
local need = 0
for b = 6, #ARGV, 4 do
  local s = redis.call('HGET', KEYS[2], ARGV[b])
  if s then
    s = tonumber(s)
  else
    s = redis.call('LLEN', KEYS[1]) + 1
    local seq = string.format('%d', s)
    redis.call('RPUSH', KEYS[1], ARGV[b + 1] .. seq .. ARGV[b + 2])
    redis.call('HSET', KEYS[2], ARGV[b], seq)
    redis.call('RPUSH', KEYS[3], seq .. ARGV[b + 3])
  end
  out[#out + 1] = s
  if s > need then need = s end
end
if ARGV[5] ~= '1' or need == 0 then
  return {out, {0, need, {}, {}, 0}}
end
return {out, step(KEYS[3], KEYS[4], KEYS[1], ARGV[1], ARGV[2], 0, need,
  tonumber(ARGV[3]), tonumber(ARGV[4]), 0)}
"#
    ))
});

/// Appends one member's entries of one conversation, skipping those at or below its
/// `pos`. KEYS: inbox, pos. ARGV: conv, then seq, JSON pairs in seq order. Returns the
/// useq of each entry, 0 for a skipped one.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local out = {}
local moved = false
for i = 2, #ARGV, 2 do
  local s = tonumber(ARGV[i])
  if s > p then
    out[#out + 1] = redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    p = s
    moved = true
  else
    out[#out + 1] = 0
  end
end
if moved then
  redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', p))
end
return out
"#,
    )
});

/// Claims one sender's idempotency keys in order. KEYS: the keys. ARGV: window ms, then
/// per key: our value, a value we may take over (`""`: none). Returns per key `""` when
/// ours, else the value that holds it.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i = 1, #KEYS do
  local mine = ARGV[2 * i]
  local old = ARGV[2 * i + 1]
  local cur = redis.call('GET', KEYS[i])
  if (not cur) or (old ~= '' and cur == old) then
    redis.call('SET', KEYS[i], mine, 'PX', ARGV[1])
    out[i] = ''
  elseif cur == mine then
    out[i] = ''
  else
    out[i] = cur
  end
end
return out
"#,
    )
});

/// Marks conversations dirty at the server's time. KEYS: shard. ARGV: convs.
static MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_NOW_MS}{}",
        r#"
local now = now_ms()
for i = 1, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
end
return 1
"#
    ))
});

/// Conversations marked before the server's now minus ARGV[1] ms, at most ARGV[2], as
/// a flat conv, score list. KEYS: shard.
static DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_NOW_MS}{}",
        r#"
local cut = string.format('%d', tonumber(now_ms()) - tonumber(ARGV[1]))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cut, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
"#
    ))
});

/// Unmarks ARGV[1] if its score is still ARGV[2]. KEYS: shard.
static UNMARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"#,
    )
});

/// Finds the message an idempotency key names. KEYS: ids, msgs. ARGV: id, cancel (1:
/// cancel the id if it is not stored). Returns {0, json} when stored, {1, ""} when not
/// stored (yet), {2, ""} when cancelled.
static RESOLVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local s = redis.call('HGET', KEYS[1], ARGV[1])
if not s then
  if ARGV[2] == '1' then
    redis.call('HSET', KEYS[1], ARGV[1], '0')
    return {2, ''}
  end
  return {1, ''}
end
if s == '0' then
  return {2, ''}
end
return {0, redis.call('LINDEX', KEYS[2], tonumber(s) - 1) or ''}
"#,
    )
});

/// A join's copy: renews the lease and reads ARGV[4] messages from index ARGV[3], or
/// returns {0, {}} when the lease is no longer ours. KEYS: msgs, lock. ARGV: token,
/// lease ms, from, count.
static CHUNK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {0, {}}
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local from = tonumber(ARGV[3])
return {1, redis.call('LRANGE', KEYS[1], from, from + tonumber(ARGV[4]) - 1)}
"#,
    )
});

/// Releases a lease if it is still ours. KEYS: lock. ARGV: token.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Committed records of messages this store fanned out for other writers (or for the
/// sweeper), waiting for [`MessageStore::take_relayed`].
#[derive(Default)]
pub(crate) struct Relayed {
    // std Mutex: pushes and takes are short and never span an await.
    queue: Mutex<VecDeque<Committed>>,
    /// Records were dropped since [`Relayed::take_lost`] last looked.
    lost: AtomicBool,
}

impl Relayed {
    fn push(&self, items: impl IntoIterator<Item = Committed>) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.extend(items);
        let over = q.len().saturating_sub(RELAYED_MAX);
        if over > 0 {
            q.drain(..over);
            drop(q);
            self.lost.store(true, Ordering::Relaxed);
            tracing::warn!(
                dropped = over,
                "relayed queue full: oldest fan-outs dropped, the workers will catch up"
            );
        }
    }

    fn take(&self) -> Vec<Committed> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.drain(..).collect()
    }

    fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::Relaxed)
    }
}

/// The key of fan-out shard `k`.
fn shard_key(k: u32) -> String {
    format!("imd:{{f:{k}}}:fanout")
}

/// The shard of `conv` (FNV-1a, stable across processes and builds).
fn shard_of(conv: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in conv.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SHARDS
}

/// Indices grouped by key, groups in the order their keys first appear.
fn group_by<'a>(items: impl Iterator<Item = (usize, &'a str)>) -> Vec<(&'a str, Vec<usize>)> {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, key) in items {
        match at.get(key) {
            Some(&g) => groups[g].1.push(i),
            None => {
                at.insert(key, groups.len());
                groups.push((key, vec![i]));
            }
        }
    }
    groups
}

/// A call of the step script (see `LUA_STEP`).
fn step_call(
    conv: &str,
    token: &str,
    last: u64,
    need: u64,
    hold: bool,
) -> redis::ScriptInvocation<'static> {
    let mut inv = STEP.prepare_invoke();
    inv.key(conv_key(conv, "pending"))
        .key(conv_key(conv, "lock"))
        .key(conv_key(conv, "msgs"))
        .arg(token)
        .arg(LEASE_MS)
        .arg(last)
        .arg(need)
        .arg(ROUND_ENTRIES)
        .arg(ROUND_MEMBERS)
        .arg(u8::from(hold));
    inv
}

/// A fresh lease token: unique across processes and calls.
fn token() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// A message ready to store: its JSON around the seq, and its idempotency claim.
struct Prepared {
    /// Position of its op in the batch.
    idx: usize,
    id: String,
    conv: String,
    from: String,
    cid: Option<String>,
    ts: i64,
    members: Vec<String>,
    /// The message JSON up to the seq's digits, and from after them.
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    /// An idempotency key's value this message may take over (its message was
    /// cancelled).
    take_over: Option<String>,
}

impl Prepared {
    fn new(idx: usize, m: NewMessage) -> Result<Self, StoreError> {
        let NewMessage {
            id,
            conv,
            from,
            cid,
            body,
            ts,
            members,
        } = m;
        let msg = Message {
            id,
            conv,
            seq: 0,
            from,
            body,
            ts,
            cid,
        };
        let (prefix, suffix) = split_json(&msg)?;
        let Message {
            id,
            conv,
            from,
            cid,
            ..
        } = msg;
        Ok(Self {
            idx,
            id,
            conv,
            from,
            cid,
            ts,
            members,
            prefix,
            suffix,
            take_over: None,
        })
    }

    /// The message JSON with `seq`: what serde writes for the `Message`.
    fn json(&self, seq: u64) -> Bytes {
        let seq = seq.to_string();
        let mut v = Vec::with_capacity(self.prefix.len() + seq.len() + self.suffix.len());
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(seq.as_bytes());
        v.extend_from_slice(&self.suffix);
        Bytes::from(v)
    }

    /// The value of its idempotency key.
    fn claim(&self) -> String {
        format!("{}\n{}", self.conv, self.id)
    }

    /// Its pending entry after the seq: `" <ts>\n<uid>…"`.
    fn pending_tail(&self) -> String {
        let mut s = format!(" {}", self.ts);
        for uid in &self.members {
            s.push('\n');
            s.push_str(uid);
        }
        s
    }
}

/// Serializes `msg` (whose seq is 0) and splits it around the seq's digit.
///
/// A JSON string never holds `,"` unescaped, so the first `,"seq":0,` is the field.
fn split_json(msg: &Message) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    const FIELD: &[u8] = b",\"seq\":0,";
    let json = serde_json::to_vec(msg).map_err(corrupt)?;
    let at = json
        .windows(FIELD.len())
        .position(|w| w == FIELD)
        .ok_or_else(|| corrupt("message JSON without a seq field"))?;
    let digit = at + FIELD.len() - 2;
    Ok((json[..digit].to_vec(), json[digit + 1..].to_vec()))
}

/// One pending entry, as a round reads it.
struct Entry {
    seq: u64,
    ts: i64,
    members: Vec<String>,
    json: Bytes,
}

/// An entry this call fanned out, with the `(uid, useq)` pairs it appended.
struct Fanned {
    conv: String,
    entry: Entry,
    recipients: Vec<(String, u64)>,
}

impl Fanned {
    fn into_committed(self) -> Committed {
        Committed {
            json: self.entry.json,
            conv: self.conv,
            seq: self.entry.seq,
            ts: self.entry.ts,
            recipients: self.recipients,
        }
    }
}

/// A step script's reply.
struct Step {
    code: i64,
    need: u64,
    entries: Vec<Vec<u8>>,
    jsons: Vec<Vec<u8>>,
    /// Whether the pending list was empty.
    empty: bool,
}

type StepReply = (i64, u64, Vec<Vec<u8>>, Vec<Vec<u8>>, i64);

impl Step {
    /// What a commit's drain ends with once its entries are written and its last step
    /// is left to [`RedisStore::finish_later`].
    fn finished(need: u64) -> Self {
        Self {
            code: DONE,
            need,
            entries: Vec::new(),
            jsons: Vec::new(),
            empty: false,
        }
    }
}

/// How a drain goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// A writer's: waits for a lease held elsewhere, and once its own entries are
    /// written leaves the last step (pop and free the lease) to run behind its answer.
    Commit,
    /// A join's: waits for the lease, and ends holding it.
    Join,
    /// The sweeper's: stops at a lease held elsewhere, and steps to the end, so that it
    /// knows whether the pending list is empty.
    Sweep,
}

impl From<StepReply> for Step {
    fn from((code, need, entries, jsons, empty): StepReply) -> Self {
        Self {
            code,
            need,
            entries,
            jsons,
            empty: empty == 1,
        }
    }
}

fn parse_entries(
    conv: &str,
    entries: Vec<Vec<u8>>,
    jsons: Vec<Vec<u8>>,
) -> Result<Vec<Entry>, StoreError> {
    if entries.len() != jsons.len() || entries.is_empty() {
        return Err(corrupt(format!(
            "pending of {conv}: {} entries for {} messages",
            entries.len(),
            jsons.len()
        )));
    }
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for (raw, json) in entries.into_iter().zip(jsons) {
        let text =
            String::from_utf8(raw).map_err(|_| corrupt(format!("pending of {conv}: not UTF-8")))?;
        let mut lines = text.split('\n');
        let head = lines.next().unwrap_or_default();
        let (seq, ts) = head
            .split_once(' ')
            .and_then(|(s, t)| Some((s.parse::<u64>().ok()?, t.parse::<i64>().ok()?)))
            .ok_or_else(|| corrupt(format!("pending of {conv}: bad entry {head:?}")))?;
        if let Some(prev) = out.last()
            && prev.seq + 1 != seq
        {
            return Err(corrupt(format!(
                "pending of {conv}: {seq} after {}",
                prev.seq
            )));
        }
        out.push(Entry {
            seq,
            ts,
            members: lines.map(str::to_owned).collect(),
            json: Bytes::from(json),
        });
    }
    Ok(out)
}

/// What a claim came to.
enum Claim {
    /// The key is ours (or the message has no cid).
    Mine,
    /// The key names another message: `(value, conv, id)`.
    Earlier(String, String, String),
}

/// What the message an idempotency key names came to.
enum Resolved {
    Stored(Bytes),
    Missing,
    Cancelled,
}

impl RedisStore {
    /// Runs steps 1 to 3 of a commit (claims, marks, stores) but writes no inbox entry:
    /// a writer that died right after storing. Joins in `batch` run in full. For tests
    /// of the sweeper.
    #[doc(hidden)]
    pub async fn commit_unfanned(&self, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError> {
        self.commit_batch(batch, false).await
    }

    /// How many fan-outs of `conv` are pending (stored, inbox entries not all
    /// confirmed written). For tests.
    #[doc(hidden)]
    pub async fn pending_fanouts(&self, conv: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("LLEN")
            .arg(conv_key(conv, "pending"))
            .query_async(&mut conn)
            .await
            .map_err(db)
    }

    /// Claims the idempotency keys of `batch`'s messages and stops: a writer that died
    /// between claiming and storing. For tests of the takeover.
    #[doc(hidden)]
    pub async fn commit_claims_only(&self, batch: Vec<Op>) -> Result<(), StoreError> {
        let mut todo = Vec::new();
        for (i, op) in batch.into_iter().enumerate() {
            if let Op::Message(m) = op {
                todo.push(Prepared::new(i, m)?);
            }
        }
        self.claim(&todo).await.map(drop)
    }

    async fn commit_batch(
        &self,
        batch: Vec<Op>,
        fan: bool,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let mut out: Vec<Option<CommitOutcome>> = (0..batch.len()).map(|_| None).collect();
        // JSON of this batch's stored messages by id, for duplicates within the batch.
        let mut known: HashMap<String, Bytes> = HashMap::new();
        let mut group = Vec::new();
        for (i, op) in batch.into_iter().enumerate() {
            match op {
                Op::Message(m) => group.push(Prepared::new(i, m)?),
                Op::Join { conv, uid } => {
                    self.commit_group(std::mem::take(&mut group), &mut out, &mut known, fan)
                        .await?;
                    out[i] = Some(CommitOutcome::Joined(self.join(&conv, &uid).await?));
                }
            }
        }
        self.commit_group(group, &mut out, &mut known, fan).await?;
        out.into_iter()
            .map(|o| {
                o.ok_or_else(|| StoreError::Db("a message of the batch got no outcome".into()))
            })
            .collect()
    }

    /// Commits a run of messages, re-running those whose claim or id changed hands.
    async fn commit_group(
        &self,
        mut todo: Vec<Prepared>,
        out: &mut [Option<CommitOutcome>],
        known: &mut HashMap<String, Bytes>,
        fan: bool,
    ) -> Result<(), StoreError> {
        for _ in 0..MAX_ROUNDS {
            if todo.is_empty() {
                return Ok(());
            }
            todo = self.commit_round(todo, out, known, fan).await?;
        }
        if todo.is_empty() {
            return Ok(());
        }
        Err(StoreError::Db(format!(
            "{} message(s) kept meeting cancelled ids or moving claims",
            todo.len()
        )))
    }

    /// One pass over `todo`; returns the messages to run again.
    async fn commit_round(
        &self,
        todo: Vec<Prepared>,
        out: &mut [Option<CommitOutcome>],
        known: &mut HashMap<String, Bytes>,
        fan: bool,
    ) -> Result<Vec<Prepared>, StoreError> {
        // 1. Claims and marks. Marking a message that turns out a duplicate is harmless:
        // the sweeper finds nothing pending and unmarks.
        let marked = Instant::now();
        let (claims, ()) = tokio::try_join!(
            self.claim(&todo),
            self.mark(todo.iter().map(|p| p.conv.as_str()))
        )?;

        let here: HashSet<&str> = todo.iter().map(|p| p.id.as_str()).collect();
        let mut store = Vec::new();
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for (i, c) in claims.into_iter().enumerate() {
            match c {
                Claim::Mine => store.push(i),
                Claim::Earlier(value, conv, id) => {
                    if known.contains_key(&id) || here.contains(id.as_str()) {
                        local.push((i, id));
                    } else {
                        remote.push((i, value, conv, id));
                    }
                }
            }
        }
        if marked.elapsed() > REMARK_AFTER {
            self.mark(store.iter().map(|&i| todo[i].conv.as_str()))
                .await?;
        }

        // 2. One store script per conversation, and the lookups of earlier messages.
        let by_conv = group_by(store.iter().map(|&i| (i, todo[i].conv.as_str())));
        let stores = by_conv.iter().map(|(conv, idx)| {
            let msgs: Vec<&Prepared> = idx.iter().map(|&i| &todo[i]).collect();
            self.store_conv(conv, msgs, fan)
        });
        let lookups = remote
            .iter()
            .map(|(_, _, conv, id)| self.resolve(conv, id, false));
        let (stored, resolved) = tokio::try_join!(try_join_all(stores), try_join_all(lookups))?;

        // 3. Drains, and waits for earlier messages still being stored.
        let mut seqs_by_conv = Vec::with_capacity(stored.len());
        let mut drains = Vec::new();
        for ((conv, _), (seqs, step, token)) in by_conv.iter().zip(stored) {
            seqs_by_conv.push(seqs);
            if let Some(step) = step {
                drains.push(async move { self.drain(conv, &token, step, Drain::Commit).await });
            }
        }
        let waits = remote.iter().zip(resolved).map(|((i, _, conv, id), r)| {
            let resend = &todo[*i];
            async move {
                match r {
                    Resolved::Missing => self.await_stored(resend, conv, id).await,
                    r => Ok(r),
                }
            }
        });
        let (drained, waited) = tokio::join!(join_all(drains), try_join_all(waits));
        let mut fanned = Vec::new();
        let mut failed = None;
        for (f, r) in drained {
            fanned.extend(f);
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        }
        let waited = match (failed, waited) {
            (None, Ok(w)) => w,
            (Some(e), _) | (None, Err(e)) => {
                // What we wrote is ours to push even though the batch fails.
                self.relayed.push(
                    fanned
                        .into_iter()
                        .filter(|f| !f.recipients.is_empty())
                        .map(Fanned::into_committed),
                );
                return Err(e);
            }
        };

        // 4. Outcomes.
        let mut own: HashMap<(&str, u64), usize> = HashMap::new();
        let mut seqs = vec![0u64; todo.len()];
        for ((_, idx), got) in by_conv.iter().zip(&seqs_by_conv) {
            for (&i, &seq) in idx.iter().zip(got) {
                seqs[i] = seq;
                if seq > 0 {
                    own.insert((todo[i].conv.as_str(), seq), i);
                }
            }
        }
        let mut recipients: HashMap<usize, Vec<(String, u64)>> = HashMap::new();
        let mut relay = Vec::new();
        for f in fanned {
            match own.get(&(f.conv.as_str(), f.entry.seq)) {
                Some(&i) => {
                    recipients.insert(i, f.recipients);
                }
                None if !f.recipients.is_empty() => relay.push(f.into_committed()),
                None => {}
            }
        }
        self.relayed.push(relay);

        let mut again = Vec::new();
        let mut settled: Vec<Option<CommitOutcome>> = (0..todo.len()).map(|_| None).collect();
        for &i in &store {
            let p = &todo[i];
            if seqs[i] == 0 {
                continue; // cancelled: runs again as a resend
            }
            let json = p.json(seqs[i]);
            known.insert(p.id.clone(), json.clone());
            settled[i] = Some(CommitOutcome::New(Committed {
                json,
                conv: p.conv.clone(),
                seq: seqs[i],
                ts: p.ts,
                recipients: recipients.remove(&i).unwrap_or_default(),
            }));
        }
        for (i, id) in &local {
            if let Some(json) = known.get(id) {
                settled[*i] = Some(CommitOutcome::Duplicate(json.clone()));
            }
        }
        let mut take_over: HashMap<usize, String> = HashMap::new();
        for ((i, value, _, _), r) in remote.into_iter().zip(waited) {
            match r {
                Resolved::Stored(json) => settled[i] = Some(CommitOutcome::Duplicate(json)),
                Resolved::Cancelled | Resolved::Missing => {
                    take_over.insert(i, value);
                }
            }
        }
        for (i, (mut p, s)) in todo.into_iter().zip(settled).enumerate() {
            match s {
                Some(o) => out[p.idx] = Some(o),
                None => {
                    p.take_over = take_over.remove(&i);
                    again.push(p);
                }
            }
        }
        Ok(again)
    }

    /// Claims the idempotency keys of `todo`, one script per sender.
    async fn claim(&self, todo: &[Prepared]) -> Result<Vec<Claim>, StoreError> {
        let by_sender = group_by(
            todo.iter()
                .enumerate()
                .filter(|(_, p)| p.cid.is_some())
                .map(|(i, p)| (i, p.from.as_str())),
        );
        let calls = by_sender.iter().map(|(from, idx)| {
            let mut inv = CLAIM.prepare_invoke();
            inv.arg(IDEMPOTENCY_WINDOW_MS);
            for &i in idx {
                let p = &todo[i];
                let cid = p.cid.as_deref().unwrap_or_default();
                inv.key(user_key(from, &format!("cid:{cid}")))
                    .arg(p.claim())
                    .arg(p.take_over.as_deref().unwrap_or(""));
            }
            let mut conn = self.conn.clone();
            async move { inv.invoke_async::<Vec<String>>(&mut conn).await.map_err(db) }
        });
        let replies = try_join_all(calls).await?;
        let mut out: Vec<Claim> = todo.iter().map(|_| Claim::Mine).collect();
        for ((_, idx), reply) in by_sender.iter().zip(replies) {
            for (&i, value) in idx.iter().zip(reply) {
                if value.is_empty() {
                    continue;
                }
                let (conv, id) = value
                    .rsplit_once('\n')
                    .map(|(c, i)| (c.to_owned(), i.to_owned()))
                    .ok_or_else(|| corrupt(format!("idempotency key value {value:?}")))?;
                out[i] = Claim::Earlier(value, conv, id);
            }
        }
        Ok(out)
    }

    /// Marks `convs` dirty in their shards, one script per shard.
    async fn mark<'a>(&self, convs: impl Iterator<Item = &'a str>) -> Result<(), StoreError> {
        let mut by_shard: HashMap<u32, HashSet<&str>> = HashMap::new();
        for conv in convs {
            by_shard.entry(shard_of(conv)).or_default().insert(conv);
        }
        try_join_all(by_shard.into_iter().map(|(k, convs)| {
            let mut inv = MARK.key(shard_key(k));
            for conv in convs {
                inv.arg(conv);
            }
            let mut conn = self.conn.clone();
            async move { inv.invoke_async::<i64>(&mut conn).await.map_err(db) }
        }))
        .await
        .map(drop)
    }

    /// Stores one conversation's messages; returns their seqs (0: cancelled), and when
    /// `fan`, the first step of the drain with its lease token.
    async fn store_conv(
        &self,
        conv: &str,
        msgs: Vec<&Prepared>,
        fan: bool,
    ) -> Result<(Vec<u64>, Option<Step>, String), StoreError> {
        let token = token();
        let mut inv = STORE.prepare_invoke();
        inv.key(conv_key(conv, "msgs"))
            .key(conv_key(conv, "ids"))
            .key(conv_key(conv, "pending"))
            .key(conv_key(conv, "lock"))
            .arg(&token)
            .arg(LEASE_MS)
            .arg(ROUND_ENTRIES)
            .arg(ROUND_MEMBERS)
            .arg(u8::from(fan));
        for p in &msgs {
            inv.arg(&p.id)
                .arg(&p.prefix[..])
                .arg(&p.suffix[..])
                .arg(p.pending_tail());
        }
        let mut conn = self.conn.clone();
        let (seqs, step): (Vec<u64>, StepReply) = inv.invoke_async(&mut conn).await.map_err(db)?;
        if seqs.len() != msgs.len() {
            return Err(corrupt(format!(
                "store script of {conv}: {} seqs for {} messages",
                seqs.len(),
                msgs.len()
            )));
        }
        let step = fan.then(|| Step::from(step));
        Ok((seqs, step, token))
    }

    /// One step of a drain (see `LUA_STEP`).
    async fn step(
        &self,
        conv: &str,
        token: &str,
        last: u64,
        need: u64,
        hold: bool,
    ) -> Result<Step, StoreError> {
        let mut conn = self.conn.clone();
        let reply: StepReply = step_call(conv, token, last, need, hold)
            .invoke_async(&mut conn)
            .await
            .map_err(db)?;
        Ok(reply.into())
    }

    /// The last step of a commit's drain, whose round wrote every inbox entry of the
    /// batch: it only pops those entries from the pending list and frees the lease, so
    /// the writer answers its senders without waiting for it (one round trip fewer).
    /// If it never runs (the process dies, Redis fails) nothing is lost: the lease
    /// expires after [`LEASE_MS`], and the next drain of the conversation redoes the
    /// round, whose member appends skip what is already there.
    fn finish_later(&self, conv: &str, token: &str, last: u64, need: u64) {
        let inv = step_call(conv, token, last, need, false);
        let mut conn = self.conn.clone();
        let conv = conv.to_owned();
        tokio::spawn(async move {
            if let Err(e) = inv.invoke_async::<StepReply>(&mut conn).await {
                tracing::warn!(%conv, error = %e, "freeing a fan-out lease failed; it expires by itself");
            }
        });
    }

    /// Drains `conv` from `step` on until its pending head is past `step.need`, the way
    /// `mode` says. Returns what this call fanned out even when it fails.
    async fn drain(
        &self,
        conv: &str,
        token: &str,
        mut step: Step,
        mode: Drain,
    ) -> (Vec<Fanned>, Result<Step, StoreError>) {
        let hold = mode == Drain::Join;
        let deadline = Instant::now() + DRAIN_DEADLINE;
        let mut backoff = BACKOFF_START;
        let mut done = Vec::new();
        loop {
            let next = match step.code {
                ROUND => {
                    backoff = BACKOFF_START;
                    let need = step.need;
                    match self.round(conv, step).await {
                        Ok((fanned, last)) => {
                            done.extend(fanned);
                            if mode == Drain::Commit && last >= need {
                                self.finish_later(conv, token, last, need);
                                return (done, Ok(Step::finished(need)));
                            }
                            self.step(conv, token, last, need, hold).await
                        }
                        Err(e) => Err(e),
                    }
                }
                BUSY if mode != Drain::Sweep => {
                    if Instant::now() >= deadline {
                        return (
                            done,
                            Err(StoreError::Db(format!(
                                "fan-out of {conv} still held elsewhere after {DRAIN_DEADLINE:?}"
                            ))),
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    self.step(conv, token, 0, step.need, hold).await
                }
                _ => return (done, Ok(step)),
            };
            match next {
                Ok(s) => step = s,
                Err(e) => return (done, Err(e)),
            }
        }
    }

    /// Fans one round's entries out, one script per member; returns them with the
    /// pairs appended, and the last seq of the round.
    async fn round(&self, conv: &str, step: Step) -> Result<(Vec<Fanned>, u64), StoreError> {
        let entries = parse_entries(conv, step.entries, step.jsons)?;
        let last = entries.last().map_or(0, |e| e.seq);
        let mut by_uid: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for uid in &e.members {
                let v = by_uid.entry(uid.as_str()).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        let calls = by_uid.into_iter().map(|(uid, idx)| {
            let mut inv = APPEND.key(user_key(uid, "inbox"));
            inv.key(user_key(uid, "pos")).arg(conv);
            for &i in &idx {
                inv.arg(entries[i].seq).arg(&entries[i].json[..]);
            }
            let mut conn = self.conn.clone();
            async move {
                let useqs: Vec<u64> = inv.invoke_async(&mut conn).await.map_err(db)?;
                Ok::<_, StoreError>((uid, idx, useqs))
            }
        });
        let mut useq: HashMap<(&str, usize), u64> = HashMap::new();
        for (uid, idx, useqs) in try_join_all(calls).await? {
            useq.extend(idx.into_iter().zip(useqs).map(|(i, u)| ((uid, i), u)));
        }
        let recipients: Vec<Vec<(String, u64)>> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.members
                    .iter()
                    .filter_map(|uid| match useq.get(&(uid.as_str(), i)) {
                        Some(&u) if u > 0 => Some((uid.clone(), u)),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let fanned = entries
            .into_iter()
            .zip(recipients)
            .map(|(entry, recipients)| Fanned {
                conv: conv.to_owned(),
                entry,
                recipients,
            })
            .collect();
        Ok((fanned, last))
    }

    /// Looks up message `id` of `conv`; with `cancel`, cancels it if it is not stored.
    async fn resolve(&self, conv: &str, id: &str, cancel: bool) -> Result<Resolved, StoreError> {
        let mut conn = self.conn.clone();
        let (code, json): (i64, Vec<u8>) = RESOLVE
            .key(conv_key(conv, "ids"))
            .key(conv_key(conv, "msgs"))
            .arg(id)
            .arg(u8::from(cancel))
            .invoke_async(&mut conn)
            .await
            .map_err(db)?;
        Ok(match code {
            0 => Resolved::Stored(Bytes::from(json)),
            1 => Resolved::Missing,
            _ => Resolved::Cancelled,
        })
    }

    /// Waits for message `id` of `conv`, which the idempotency key of `resend` names, to
    /// be stored; once the claim is [`TAKEOVER_AFTER`] old (its key's age, from its
    /// remaining TTL), cancels it.
    async fn await_stored(
        &self,
        resend: &Prepared,
        conv: &str,
        id: &str,
    ) -> Result<Resolved, StoreError> {
        let key = user_key(
            &resend.from,
            &format!("cid:{}", resend.cid.as_deref().unwrap_or_default()),
        );
        let mut conn = self.conn.clone();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(db)?;
        // -2: the key is gone, -1: no expiry (not ours): nothing to wait for.
        let age = if pttl >= 0 {
            Duration::from_millis((IDEMPOTENCY_WINDOW_MS - pttl).max(0) as u64)
        } else {
            TAKEOVER_AFTER
        };
        let deadline = Instant::now() + TAKEOVER_AFTER.saturating_sub(age);
        let mut backoff = Duration::from_millis(1);
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
            let cancel = Instant::now() >= deadline;
            match self.resolve(conv, id, cancel).await? {
                Resolved::Missing => {}
                r => {
                    if cancel {
                        tracing::warn!(
                            conv,
                            id,
                            "idempotency key named a message never stored; taken over"
                        );
                    }
                    return Ok(r);
                }
            }
        }
    }

    /// Gives `uid` the messages of `conv` after those it has, under the conversation's
    /// lease; returns the last [`JOIN_PUSH_TAIL`] of them.
    async fn join(&self, conv: &str, uid: &str) -> Result<Vec<Committed>, StoreError> {
        let token = token();
        let first = self.step(conv, &token, 0, 0, true).await?;
        let (fanned, held) = self.drain(conv, &token, first, Drain::Join).await;
        self.relayed.push(
            fanned
                .into_iter()
                .filter(|f| !f.recipients.is_empty())
                .map(Fanned::into_committed),
        );
        let copied = match held {
            Ok(s) if s.code == HELD => self.copy_history(conv, uid, &token).await,
            Ok(_) => Err(StoreError::Db(format!(
                "join of {conv} ended without the lease"
            ))),
            Err(e) => Err(e),
        };
        let mut conn = self.conn.clone();
        let released = RELEASE
            .key(conv_key(conv, "lock"))
            .arg(&token)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(db);
        let copied = copied?;
        released?;
        Ok(copied)
    }

    /// The copy of a join: `msgs[pos[conv]..]` into `uid`'s inbox, in chunks.
    async fn copy_history(
        &self,
        conv: &str,
        uid: &str,
        token: &str,
    ) -> Result<Vec<Committed>, StoreError> {
        let mut conn = self.conn.clone();
        let have: Option<u64> = redis::cmd("HGET")
            .arg(user_key(uid, "pos"))
            .arg(conv)
            .query_async(&mut conn)
            .await
            .map_err(db)?;
        let mut next = have.unwrap_or(0);
        let mut tail: VecDeque<Committed> = VecDeque::with_capacity(JOIN_PUSH_TAIL);
        loop {
            let (mine, jsons): (i64, Vec<Vec<u8>>) = CHUNK
                .key(conv_key(conv, "msgs"))
                .key(conv_key(conv, "lock"))
                .arg(token)
                .arg(LEASE_MS)
                .arg(next)
                .arg(JOIN_CHUNK)
                .invoke_async(&mut conn)
                .await
                .map_err(db)?;
            if mine != 1 {
                return Err(StoreError::Db(format!("join of {conv} lost its lease")));
            }
            let n = jsons.len() as u64;
            if n == 0 {
                break;
            }
            let jsons: Vec<Bytes> = jsons.into_iter().map(Bytes::from).collect();
            let mut inv = APPEND.key(user_key(uid, "inbox"));
            inv.key(user_key(uid, "pos")).arg(conv);
            for (k, json) in jsons.iter().enumerate() {
                inv.arg(next + 1 + k as u64).arg(&json[..]);
            }
            let useqs: Vec<u64> = inv.invoke_async(&mut conn).await.map_err(db)?;
            for (k, (json, useq)) in jsons.into_iter().zip(useqs).enumerate() {
                if useq == 0 {
                    continue;
                }
                if tail.len() == JOIN_PUSH_TAIL {
                    tail.pop_front();
                }
                tail.push_back(Committed {
                    json,
                    conv: conv.to_owned(),
                    seq: next + 1 + k as u64,
                    // As the embedded store: a join's records carry no commit time.
                    ts: 0,
                    recipients: vec![(uid.to_owned(), useq)],
                });
            }
            next += n;
            if n < JOIN_CHUNK {
                break;
            }
        }
        Ok(tail.into())
    }

    /// One page of the list at `key`: items after position `after`, as (position, item).
    async fn page(
        &self,
        key: String,
        after: u64,
        limit: u32,
    ) -> Result<Page<(u64, Bytes)>, StoreError> {
        let mut page = PageFill::new(limit);
        let Ok(mut start) = i64::try_from(after) else {
            return Ok(page.finish());
        };
        let mut conn = self.conn.clone();
        loop {
            let want = (limit as usize - page.len() + 1).min(READ_CHUNK) as i64;
            let chunk: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(start)
                .arg(start + want - 1)
                .query_async(&mut conn)
                .await
                .map_err(db)?;
            let got = chunk.len() as i64;
            for (k, item) in chunk.into_iter().enumerate() {
                let len = item.len();
                if !page.push((start as u64 + k as u64 + 1, Bytes::from(item)), len) {
                    return Ok(page.finish());
                }
            }
            if got < want {
                return Ok(page.finish());
            }
            start += got;
        }
    }

    /// Finishes the due conversations of shard `k`; returns how many entries.
    async fn sweep_shard(&self, k: u32) -> Result<usize, StoreError> {
        let shard = shard_key(k);
        let mut conn = self.conn.clone();
        let due: Vec<String> = DUE
            .key(&shard)
            .arg(SWEEP_AGE_MS)
            .arg(SWEEP_LIMIT)
            .invoke_async(&mut conn)
            .await
            .map_err(db)?;
        let convs = due.chunks_exact(2).map(|pair| async {
            let (conv, score) = (&pair[0], &pair[1]);
            let token = token();
            let first = self.step(conv, &token, 0, 0, false).await?;
            if first.code == BUSY {
                return Ok(0); // its writer, or another sweeper, is on it
            }
            let (fanned, last) = self.drain(conv, &token, first, Drain::Sweep).await;
            let n = fanned.len();
            self.relayed.push(
                fanned
                    .into_iter()
                    .filter(|f| !f.recipients.is_empty())
                    .map(Fanned::into_committed),
            );
            let last = last?;
            if last.code == DONE && last.empty {
                let mut conn = self.conn.clone();
                UNMARK
                    .key(&shard)
                    .arg(conv)
                    .arg(score)
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(db)?;
            }
            Ok::<_, StoreError>(n)
        });
        let counts = join_all(convs).await;
        let mut n = 0;
        for c in counts {
            n += c?;
        }
        Ok(n)
    }
}

#[async_trait]
impl MessageStore for RedisStore {
    async fn commit(&self, batch: Vec<Op>) -> Result<Vec<CommitOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.commit_batch(batch, true).await
    }

    async fn inbox(
        &self,
        uid: &str,
        after: u64,
        limit: u32,
    ) -> Result<Page<(u64, Bytes)>, StoreError> {
        self.page(user_key(uid, "inbox"), after, limit).await
    }

    async fn history(&self, conv: &str, after: u64, limit: u32) -> Result<Page<Bytes>, StoreError> {
        let page = self.page(conv_key(conv, "msgs"), after, limit).await?;
        Ok(Page {
            items: page.items.into_iter().map(|(_, json)| json).collect(),
            more: page.more,
        })
    }

    async fn last_seq(&self, conv: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("LLEN")
            .arg(conv_key(conv, "msgs"))
            .query_async(&mut conn)
            .await
            .map_err(db)
    }

    /// Returns 0: Redis expires each idempotency key by itself ([`IDEMPOTENCY_WINDOW_MS`]
    /// after its claim, `PX`), so there is nothing left to purge.
    async fn expire_idempotency(&self, _before_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn sweep(&self) -> Result<usize, StoreError> {
        let counts = try_join_all((0..SHARDS).map(|k| self.sweep_shard(k))).await?;
        Ok(counts.into_iter().sum())
    }

    fn take_relayed(&self) -> Vec<Committed> {
        self.relayed.take()
    }

    fn pushes_lost(&self) -> bool {
        // Both looked at, so that each flag is cleared.
        let dropped = self.relayed.take_lost();
        let retried = self.conn.take_retried();
        dropped || retried
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The JSON built around a seq is what serde writes for the same message, for every
    /// shape of message: with and without cid, strings that look like fields, big seqs.
    #[test]
    fn json_around_the_seq_is_what_serde_writes() {
        let cases = [
            (
                "id1",
                "d:a~b",
                None,
                json!({"t": "hi"}),
                1_700_000_000_000,
                1,
            ),
            (
                "i,\"seq\":0,",
                "g:x",
                Some("c,\"seq\":0,"),
                json!("a,\"seq\":0,b"),
                -1,
                10,
            ),
            (
                "id3",
                "s:shop~c",
                Some("k"),
                json!([1, {"seq": 0}]),
                0,
                u64::MAX,
            ),
            ("id4", "d:é~ü", None, json!(null), 42, 1234567),
        ];
        for (id, conv, cid, body, ts, seq) in cases {
            let m = NewMessage {
                id: id.into(),
                conv: conv.into(),
                from: "u".into(),
                cid: cid.map(Into::into),
                body: body.clone(),
                ts,
                members: vec!["u".into(), "v".into()],
            };
            let p = Prepared::new(0, m).unwrap();
            let expected = serde_json::to_vec(&Message {
                id: id.into(),
                conv: conv.into(),
                seq,
                from: "u".into(),
                body,
                ts,
                cid: cid.map(Into::into),
            })
            .unwrap();
            assert_eq!(p.json(seq), expected, "case {id}");
            assert_eq!(p.pending_tail(), format!(" {ts}\nu\nv"));
        }
    }

    #[test]
    fn pending_entries_parse_and_must_be_contiguous() {
        let e = parse_entries(
            "c",
            vec![b"4 17\na\nb".to_vec(), b"5 -3".to_vec()],
            vec![b"{}".to_vec(), b"[]".to_vec()],
        )
        .unwrap();
        assert_eq!(
            (e[0].seq, e[0].ts, e[0].members.clone()),
            (4, 17, vec!["a".into(), "b".into()])
        );
        assert_eq!((e[1].seq, e[1].ts, e[1].members.len()), (5, -3, 0));
        assert!(
            parse_entries(
                "c",
                vec![b"4 1".to_vec(), b"6 1".to_vec()],
                vec![vec![], vec![]]
            )
            .is_err()
        );
        assert!(parse_entries("c", vec![b"4 1".to_vec()], vec![]).is_err());
        assert!(parse_entries("c", vec![b"x 1".to_vec()], vec![vec![]]).is_err());
    }

    /// The relay queue is bounded; what it drops is reported once, so that the workers
    /// catch up instead.
    #[test]
    fn relayed_records_dropped_beyond_the_bound_are_reported() {
        let relayed = Relayed::default();
        let record = |seq| Committed {
            json: Bytes::from_static(b"{}"),
            conv: "d:a~b".into(),
            seq,
            ts: 0,
            recipients: vec![("a".into(), seq)],
        };
        relayed.push((1..=RELAYED_MAX as u64).map(record));
        assert!(!relayed.take_lost(), "at the bound nothing is dropped");
        relayed.push([record(RELAYED_MAX as u64 + 1)]);
        assert!(relayed.take_lost());
        assert!(!relayed.take_lost(), "reported once");
        let kept = relayed.take();
        assert_eq!(kept.len(), RELAYED_MAX);
        assert_eq!(kept[0].seq, 2, "the oldest went");
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("d:a~b"), shard_of("d:a~b"));
        assert!((0..1000).all(|i| shard_of(&format!("g:{i}")) < SHARDS));
        let used: HashSet<u32> = (0..1000).map(|i| shard_of(&format!("g:{i}"))).collect();
        assert_eq!(used.len(), SHARDS as usize);
    }
}

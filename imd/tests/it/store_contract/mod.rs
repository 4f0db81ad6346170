//! The store contract: one suite of properties of [`MessageStore`], run against every
//! backend (the embedded store, standalone Redis and a 3-node Redis Cluster), so that
//! the business layer may take any of them for the other.
//!
//! Each property is an async function of a [`Backend`]; `contract!` makes one test per
//! backend of it (`contract_<property>_<backend>`). Properties that need several
//! writers on one database (concurrency, crash recovery) run on the Redis backends only.
//! Nothing sleeps for luck: the waits poll a condition under a deadline.
//!
//! This file holds the backends, the list of tests and the helpers the properties
//! share; the properties live by what they need of the database: [`one_writer`] (what
//! any store must do for one process), [`conversations`] (conversation lists, read
//! positions and recall, for one process), [`many_writers`] (writers racing, dying, and
//! finishing each other's work).
//! [`state_many_writers`] adds conversation state under several writers: recalls beside
//! other writers or after one died, the list of a user with many conversations.
//! [`retention`]: trims by a cutoff, and erasures of a sender's messages.
//! [`outbox`]: the webhook outbox's marks, cursors, leases and parked events.

use std::sync::Arc;

use bytes::Bytes;
use imd::store::{
    CommitOutcome, Committed, EmbeddedOptions, EmbeddedStore, MessageStore, NewMessage, Op,
    RedisStore,
};
use serde_json::{Value, json};
use shared::protocol::Message;

use testkit::{Redis, now_ms};

mod conversations;
mod many_writers;
mod one_writer;
mod outbox;
mod retention;
mod state_many_writers;

/// A store under test and what keeps its database alive.
struct Backend {
    store: Arc<dyn MessageStore>,
    /// The Redis the store talks to (none for the embedded store).
    redis: Option<Redis>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// The embedded store; with `log`, committing through its commit log.
    fn embedded(log: bool) -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = EmbeddedOptions {
            log,
            ..Default::default()
        };
        let store = EmbeddedStore::open_with(dir.path(), options).expect("open the embedded store");
        Backend {
            store: Arc::new(store),
            redis: None,
            _dir: Some(dir),
        }
    }

    async fn redis(redis: Redis) -> Backend {
        let store = RedisStore::connect(&redis.url())
            .await
            .expect("connect to redis");
        assert_eq!(store.is_cluster(), redis.is_cluster());
        Backend {
            store: Arc::new(store),
            redis: Some(redis),
            _dir: None,
        }
    }

    async fn standalone() -> Backend {
        Backend::redis(
            tokio::task::spawn_blocking(Redis::standalone)
                .await
                .unwrap(),
        )
        .await
    }

    async fn cluster() -> Backend {
        Backend::redis(tokio::task::spawn_blocking(Redis::cluster).await.unwrap()).await
    }

    /// Another store instance on the same Redis: another writer process.
    async fn another(&self) -> RedisStore {
        let redis = self.redis.as_ref().expect("a Redis backend");
        RedisStore::connect(&redis.url())
            .await
            .expect("connect to redis")
    }
}

/// One test per backend of property `$prop` (the embedded store twice: committing
/// directly, `$embedded::direct`, and through its commit log, `$embedded::log`).
macro_rules! contract {
    ($prop:path => $embedded:ident, $standalone:ident, $cluster:ident) => {
        mod $embedded {
            use super::*;

            #[tokio::test]
            async fn direct() {
                $prop(Backend::embedded(false)).await;
            }

            #[tokio::test]
            async fn log() {
                $prop(Backend::embedded(true)).await;
            }
        }
        contract!($prop => $standalone, $cluster);
    };
    ($prop:path => $standalone:ident, $cluster:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $standalone() {
            $prop(Backend::standalone().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $cluster() {
            $prop(Backend::cluster().await).await;
        }
    };
}

contract!(one_writer::sequences => contract_sequences_embedded, contract_sequences_standalone, contract_sequences_cluster);
contract!(one_writer::idempotency => contract_idempotency_embedded, contract_idempotency_standalone, contract_idempotency_cluster);
contract!(one_writer::paging => contract_paging_embedded, contract_paging_standalone, contract_paging_cluster);
contract!(one_writer::join => contract_join_embedded, contract_join_standalone, contract_join_cluster);
contract!(one_writer::unknown => contract_unknown_embedded, contract_unknown_standalone, contract_unknown_cluster);
contract!(conversations::list_order_and_paging => contract_list_order_and_paging_embedded, contract_list_order_and_paging_standalone, contract_list_order_and_paging_cluster);
contract!(conversations::unread_and_a_send_moves_the_senders_position => contract_unread_and_a_send_moves_the_senders_position_embedded, contract_unread_and_a_send_moves_the_senders_position_standalone, contract_unread_and_a_send_moves_the_senders_position_cluster);
contract!(conversations::reads_clamp_and_never_move_back => contract_reads_clamp_and_never_move_back_embedded, contract_reads_clamp_and_never_move_back_standalone, contract_reads_clamp_and_never_move_back_cluster);
contract!(conversations::read_positions_and_membership => contract_read_positions_and_membership_embedded, contract_read_positions_and_membership_standalone, contract_read_positions_and_membership_cluster);
contract!(conversations::join_lists_the_conversation => contract_join_lists_the_conversation_embedded, contract_join_lists_the_conversation_standalone, contract_join_lists_the_conversation_cluster);
contract!(conversations::recall_refusals => contract_recall_refusals_embedded, contract_recall_refusals_standalone, contract_recall_refusals_cluster);
contract!(conversations::recall_rewrites_history_and_every_inbox => contract_recall_rewrites_history_and_every_inbox_embedded, contract_recall_rewrites_history_and_every_inbox_standalone, contract_recall_rewrites_history_and_every_inbox_cluster);
contract!(many_writers::concurrency => contract_concurrency_standalone, contract_concurrency_cluster);
contract!(many_writers::crash_recovery => contract_crash_recovery_standalone, contract_crash_recovery_cluster);
contract!(many_writers::takeover => contract_takeover_standalone, contract_takeover_cluster);
contract!(many_writers::finish_behind_the_answer => contract_finish_behind_the_answer_standalone, contract_finish_behind_the_answer_cluster);
contract!(state_many_writers::recall_beside_writers => contract_recall_beside_writers_standalone, contract_recall_beside_writers_cluster);
contract!(state_many_writers::recall_finishes_a_half_done_one => contract_recall_finishes_a_half_done_one_standalone, contract_recall_finishes_a_half_done_one_cluster);
contract!(state_many_writers::list_of_many => contract_list_of_many_standalone, contract_list_of_many_cluster);
contract!(retention::trim_removes_old_messages_everywhere => contract_trim_removes_old_messages_everywhere_embedded, contract_trim_removes_old_messages_everywhere_standalone, contract_trim_removes_old_messages_everywhere_cluster);
contract!(retention::erase_takes_the_bodies_everywhere => contract_erase_takes_the_bodies_everywhere_embedded, contract_erase_takes_the_bodies_everywhere_standalone, contract_erase_takes_the_bodies_everywhere_cluster);
contract!(retention::trim_waits_for_a_pending_fan_out => contract_trim_waits_for_a_pending_fan_out_standalone, contract_trim_waits_for_a_pending_fan_out_cluster);

fn new_msg(conv: &str, from: &str, cid: Option<&str>, body: Value, members: &[&str]) -> NewMessage {
    NewMessage {
        id: uuid::Uuid::now_v7().to_string(),
        conv: conv.into(),
        from: from.into(),
        cid: cid.map(Into::into),
        content: imd::store::Content::Body(body),
        ts: now_ms(),
        members: members.iter().map(|s| s.to_string()).collect(),
    }
}

fn msg(conv: &str, from: &str, cid: Option<&str>, members: &[&str]) -> Op {
    Op::Message(new_msg(conv, from, cid, json!({"t": conv}), members))
}

fn join_op(conv: &str, uid: &str) -> Op {
    Op::Join {
        conv: conv.into(),
        uid: uid.into(),
    }
}

#[track_caller]
fn new(o: &CommitOutcome) -> &Committed {
    match o {
        CommitOutcome::New(c) => c,
        other => panic!("expected a new message, got {other:?}"),
    }
}

fn parse(json: &[u8]) -> Message {
    serde_json::from_slice(json).expect("message JSON")
}

/// Every item of `uid`'s inbox, following `more`.
async fn whole_inbox(store: &dyn MessageStore, uid: &str) -> Vec<(u64, Bytes)> {
    let mut all: Vec<(u64, Bytes)> = Vec::new();
    loop {
        let after = all.last().map_or(0, |i| i.0);
        let page = store.inbox(uid, after, 1000).await.expect("inbox");
        all.extend(page.items);
        if !page.more {
            return all;
        }
    }
}

/// Every message of `conv`, following `more`.
async fn whole_history(store: &dyn MessageStore, conv: &str) -> Vec<Bytes> {
    let mut all: Vec<Bytes> = Vec::new();
    loop {
        let page = store
            .history(conv, all.len() as u64, 1000)
            .await
            .expect("history");
        all.extend(page.items);
        if !page.more {
            return all;
        }
    }
}

/// `(conv, seq)` of each inbox item.
fn refs(items: &[(u64, Bytes)]) -> Vec<(String, u64)> {
    items
        .iter()
        .map(|(_, j)| {
            let m = parse(j);
            (m.conv, m.seq)
        })
        .collect()
}

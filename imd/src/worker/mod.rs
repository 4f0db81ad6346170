//! Worker role: the connection hub, each connection's outbox, and the sessions.
//!
//! The hub maps a uid to its connected devices, at most one connection per
//! (uid, device). Pushes are queued on each device's bounded [`Outbox`] and written by
//! that device's session task, which also tracks acks and retransmits. The worker must
//! not decide who receives what: that is the business layer's and the dispatcher's.

mod clock;
pub mod session;

pub use clock::Clock;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::business::Identity;
use crate::rpc::{Push, WorkerApi};

const SHARDS: usize = 64;

/// What is queued for a connection.
#[derive(Debug)]
pub(crate) enum Out {
    /// A push to track for its ack.
    Push {
        useq: u64,
        frame: Utf8Bytes,
        queued: Instant,
    },
    /// Any other frame (`sent`, `error`, …).
    Frame(Utf8Bytes),
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Out>,
    /// Set once the connection must close; the session sends `kick` with this reason.
    closing: Option<String>,
}

/// A connection's bounded queue of outgoing frames, filled by any task and drained by
/// the session. A `std::sync::Mutex`: held only to push or swap a `VecDeque`, never
/// across an `.await`.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    wake: Notify,
    capacity: usize,
}

impl Outbox {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(OutboxState::default()),
            wake: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        // A panic while holding this lock cannot leave the queue half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `out`. A full queue marks the connection as too slow: it is closed and
    /// its messages wait in the inbox. Returns whether `out` was queued.
    pub(crate) fn enqueue(&self, out: Out) -> bool {
        let mut st = self.lock();
        if st.closing.is_some() {
            return false;
        }
        if st.queue.len() >= self.capacity {
            st.queue = VecDeque::new();
            st.closing = Some("slow".into());
            drop(st);
            metrics::counter!("imd_slow_consumer_disconnects_total").increment(1);
            self.wake.notify_one();
            return false;
        }
        st.queue.push_back(out);
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Queues a plain frame.
    pub fn enqueue_frame(&self, frame: String) -> bool {
        self.enqueue(Out::Frame(frame.into()))
    }

    /// Asks the session to send `kick` with `reason` and close. The first reason wins.
    pub fn close(&self, reason: &str) {
        let mut st = self.lock();
        if st.closing.is_none() {
            st.closing = Some(reason.to_owned());
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Takes everything queued, and the close reason if there is one.
    pub(crate) fn take(&self) -> (VecDeque<Out>, Option<String>) {
        let mut st = self.lock();
        (std::mem::take(&mut st.queue), st.closing.clone())
    }

    /// Waits until something is queued or a close is asked for.
    pub(crate) async fn notified(&self) {
        self.wake.notified().await
    }
}

/// One connected device.
#[derive(Debug)]
pub struct Conn {
    /// Unique within this process; tells a connection from its replacement.
    pub id: u64,
    /// Who is connected.
    pub who: Identity,
    /// The peer address.
    pub remote: SocketAddr,
    /// When the connection was opened, unix milliseconds.
    pub connected_at_ms: i64,
    /// Outgoing frames.
    pub outbox: Outbox,
}

/// One shard of the hub: uid → that user's connected devices.
type Shard = HashMap<String, Vec<Arc<Conn>>>;

/// The connections of this worker, by uid.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    next_id: AtomicU64,
    outbox_capacity: usize,
}

impl Hub {
    /// An empty hub whose connections queue at most `outbox_capacity` frames.
    pub fn new(outbox_capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            outbox_capacity,
        }
    }

    fn shard(&self, uid: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(uid) as usize % SHARDS;
        // Every critical section below leaves the map consistent, even if it panicked.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection. A connection of the same (uid, device) is replaced:
    /// it is told to close with `kick` reason `replaced`.
    pub fn register(&self, who: Identity, remote: SocketAddr, connected_at_ms: i64) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            who,
            remote,
            connected_at_ms,
            outbox: Outbox::new(self.outbox_capacity),
        });
        let replaced = {
            let mut shard = self.shard(&conn.who.uid);
            let devices = shard.entry(conn.who.uid.clone()).or_default();
            let old = devices
                .iter()
                .position(|c| c.who.device == conn.who.device)
                .map(|i| devices.swap_remove(i));
            devices.push(conn.clone());
            old
        };
        match replaced {
            Some(old) => old.outbox.close("replaced"),
            None => metrics::gauge!("imd_connections").increment(1.0),
        }
        conn
    }

    /// Removes `conn`, unless a replacement already took its place.
    pub fn unregister(&self, conn: &Conn) {
        let mut shard = self.shard(&conn.who.uid);
        if let Some(devices) = shard.get_mut(&conn.who.uid) {
            if let Some(i) = devices.iter().position(|c| c.id == conn.id) {
                devices.swap_remove(i);
                metrics::gauge!("imd_connections").decrement(1.0);
            }
            if devices.is_empty() {
                shard.remove(&conn.who.uid);
            }
        }
    }

    /// The connections of `uid`.
    pub fn connections(&self, uid: &str) -> Vec<Arc<Conn>> {
        self.shard(uid).get(uid).cloned().unwrap_or_default()
    }

    /// How many connections the hub holds.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }

    /// Whether the hub holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl WorkerApi for Hub {
    fn push(&self, pushes: Vec<Push>) {
        let now = Instant::now();
        for p in pushes {
            let conns = self.connections(&p.uid);
            if conns.is_empty() {
                continue;
            }
            // One frame per user, shared by all of the user's devices.
            let frame = Utf8Bytes::from(crate::wire::push_frame(p.useq, &p.msg));
            for c in conns {
                if c.outbox.enqueue(Out::Push {
                    useq: p.useq,
                    frame: frame.clone(),
                    queued: now,
                }) {
                    metrics::counter!("imd_pushes_total").increment(1);
                }
            }
        }
    }

    fn kick_user(&self, uid: &str, reason: &str) -> usize {
        let conns = self.connections(uid);
        for c in &conns {
            c.outbox.close(reason);
        }
        conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::token::Platform;

    fn who(uid: &str, device: &str) -> Identity {
        Identity {
            uid: uid.into(),
            device: device.into(),
            platform: Platform::Web,
            roles: vec![],
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn frames(c: &Conn) -> (Vec<u64>, Option<String>) {
        let (q, closing) = c.outbox.take();
        let useqs = q
            .into_iter()
            .filter_map(|o| match o {
                Out::Push { useq, .. } => Some(useq),
                Out::Frame(_) => None,
            })
            .collect();
        (useqs, closing)
    }

    #[test]
    fn same_device_replaces_other_devices_coexist() {
        let hub = Hub::new(16);
        let a1 = hub.register(who("a", "phone"), addr(), 0);
        let a2 = hub.register(who("a", "laptop"), addr(), 0);
        let a1b = hub.register(who("a", "phone"), addr(), 0);
        assert_eq!(hub.len(), 2);
        assert_eq!(frames(&a1).1.as_deref(), Some("replaced"));
        assert_eq!(frames(&a2).1, None);
        // The replaced session's late unregister leaves its replacement alone.
        hub.unregister(&a1);
        assert_eq!(hub.len(), 2);
        hub.unregister(&a1b);
        hub.unregister(&a2);
        assert!(hub.is_empty());
    }

    #[test]
    fn pushes_reach_every_device_in_order() {
        let hub = Hub::new(16);
        let a1 = hub.register(who("a", "1"), addr(), 0);
        let a2 = hub.register(who("a", "2"), addr(), 0);
        let b = hub.register(who("b", "1"), addr(), 0);
        let msg = bytes::Bytes::from_static(b"{}");
        hub.push(vec![
            Push {
                uid: "a".into(),
                useq: 1,
                msg: msg.clone(),
            },
            Push {
                uid: "b".into(),
                useq: 9,
                msg: msg.clone(),
            },
            Push {
                uid: "a".into(),
                useq: 2,
                msg: msg.clone(),
            },
            Push {
                uid: "nobody".into(),
                useq: 1,
                msg,
            },
        ]);
        assert_eq!(frames(&a1).0, [1, 2]);
        assert_eq!(frames(&a2).0, [1, 2]);
        assert_eq!(frames(&b).0, [9]);
    }

    #[test]
    fn a_full_outbox_closes_the_connection_as_slow() {
        let hub = Hub::new(16);
        let a = hub.register(who("a", "1"), addr(), 0);
        let msg = bytes::Bytes::from_static(b"{}");
        let pushes = (1..=20).map(|u| Push {
            uid: "a".into(),
            useq: u,
            msg: msg.clone(),
        });
        hub.push(pushes.collect());
        let (useqs, closing) = frames(&a);
        assert!(useqs.is_empty(), "a slow connection's queue is dropped");
        assert_eq!(closing.as_deref(), Some("slow"));
        assert!(!a.outbox.enqueue_frame("x".into()));
    }

    #[test]
    fn kick_user_closes_every_device() {
        let hub = Hub::new(16);
        let a1 = hub.register(who("a", "1"), addr(), 0);
        let a2 = hub.register(who("a", "2"), addr(), 0);
        assert_eq!(hub.kick_user("a", "admin"), 2);
        assert_eq!(hub.kick_user("zed", "admin"), 0);
        assert_eq!(frames(&a1).1.as_deref(), Some("admin"));
        assert_eq!(frames(&a2).1.as_deref(), Some("admin"));
    }
}

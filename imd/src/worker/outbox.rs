//! A connection's outbox: the bounded queue of frames that any task fills and the
//! connection's session drains. It decides nothing about who gets what; it only holds
//! what it is given, and marks the connection as too slow when it is full: by count of
//! frames, or by their bytes (`--max-outbox-bytes`), whichever comes first.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

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
    /// The device has everything up to this `useq` in its inbox, or gets it with its
    /// own `sync`: pushes are owed after it (see [`Conn::start_after`]).
    Start(u64),
    /// The user's inbox reached this `useq`: a session that pushed less than that
    /// waits briefly for the rest, then reads what is still missing from the inbox
    /// (see [`Hub::offer_inbox_head`]).
    Head(u64),
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Out>,
    /// How many of `queue` are pushes.
    pushes: usize,
    /// Bytes of the frames in `queue`.
    bytes: usize,
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
    max_bytes: usize,
}

impl Out {
    /// Bytes of the frame it carries.
    fn len(&self) -> usize {
        match self {
            Out::Push { frame, .. } | Out::Frame(frame) => frame.len(),
            Out::Start(_) | Out::Head(_) => 0,
        }
    }
}

impl Outbox {
    pub(super) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(OutboxState::default()),
            wake: Notify::new(),
            capacity,
            max_bytes,
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
        let len = out.len();
        let over_bytes = st.bytes + len > self.max_bytes;
        if st.queue.len() >= self.capacity || over_bytes {
            // Everything queued goes at once: its messages wait in the inbox.
            st.queue = VecDeque::new();
            st.pushes = 0;
            st.bytes = 0;
            st.closing = Some("slow".into());
            drop(st);
            metrics::counter!("imd_slow_consumer_disconnects_total").increment(1);
            if over_bytes {
                metrics::counter!("imd_outbox_bytes_exceeded_total").increment(1);
            }
            self.wake.notify_one();
            return false;
        }
        if matches!(out, Out::Push { .. }) {
            st.pushes += 1;
        }
        st.bytes += len;
        st.queue.push_back(out);
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Whether the connection was already marked to close (a full outbox, a kick).
    pub(crate) fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }

    /// Pushes queued and not taken by the session yet.
    pub fn queued_pushes(&self) -> usize {
        self.lock().pushes
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

    /// Takes everything queued, and the close reason if there is one. The pushes taken
    /// still count in [`Outbox::queued_pushes`] until the session has counted them as
    /// its own and calls [`Outbox::settle`]: a push is never seen as acked (by a
    /// replay that paces on the count) while it moves from the queue to the session.
    pub(crate) fn take(&self) -> (VecDeque<Out>, Option<String>) {
        let mut st = self.lock();
        st.bytes = 0;
        (std::mem::take(&mut st.queue), st.closing.clone())
    }

    /// `n` pushes taken with [`Outbox::take`] are now counted by the session.
    pub(crate) fn settle(&self, n: usize) {
        let mut st = self.lock();
        st.pushes = st.pushes.saturating_sub(n);
    }

    /// Wakes the session with nothing queued: the clock's call when one of the
    /// session's deadlines is due.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until something is queued or a close is asked for.
    pub(crate) async fn notified(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(useq: u64, len: usize) -> Out {
        Out::Push {
            useq,
            frame: "x".repeat(len).into(),
            queued: Instant::now(),
        }
    }

    /// The byte bound closes the connection before the count bound does, drops what
    /// was queued, and a session that keeps taking frames never meets it.
    #[test]
    fn bytes_bound_the_queue_as_well_as_frames() {
        let outbox = Outbox::new(1024, 10_000);
        for useq in 1..=4 {
            assert!(outbox.enqueue(push(useq, 2_000)));
        }
        let (taken, closing) = outbox.take();
        assert_eq!((taken.len(), closing), (4, None));
        for useq in 5..=9 {
            assert!(
                outbox.enqueue(push(useq, 2_000)),
                "taken frames no longer count"
            );
        }
        assert!(!outbox.enqueue(push(10, 1)), "10,001 bytes");
        assert_eq!(outbox.queued_pushes(), 0, "dropped: they wait in the inbox");
        let (taken, closing) = outbox.take();
        assert_eq!((taken.len(), closing.as_deref()), (0, Some("slow")));
        assert!(!outbox.enqueue(Out::Frame("late".into())), "closing");
    }
}

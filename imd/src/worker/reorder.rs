//! Puts a device's pushes back in `useq` order when they arrive out of it, and finds
//! the pushes that never arrive.
//!
//! On one node pushes reach a session in commit order. In a cluster the entries of one
//! inbox are written, and pushed, by whichever node holds the conversation's fan-out
//! lease: one node's pushes come straight from its own hub, another's over RPC, so a
//! later `useq` can overtake an earlier one. A session holds a push that arrives ahead
//! of a missing `useq` for at most [`WINDOW`] (or until [`MAX_HELD`] are held), and
//! releases everything in order as soon as the gap fills. A gap that does not fill
//! is a push lost on the way (the node that wrote those inbox entries died before
//! pushing them, or its delivery was dropped): the session reads the missing entries
//! from the inbox and pushes them, then the rest. A late push below the released ones
//! is written at once.
//!
//! A lost push with nothing after it leaves no gap to see. For those, the session is
//! told the inbox's head from outside ([`Reorder::expect`]: the cluster's catch-up
//! after a peer was lost) and treats everything up to it as expected: it waits the
//! same window, then reads what is still missing. This needs to know where the device
//! stands: the inbox head when its route was written, its last complete `sync`, or its
//! last push ([`Reorder::start_after`]).
//!
//! A repair that cannot read the inbox (Redis restarting and loading its AOF answers
//! `LOADING` for about a second) keeps holding and tries again every
//! [`REPAIR_RETRY`], up to [`REPAIR_TRIES`] times: releasing past the gap would leave
//! the device without those messages until its next `sync`, and an online device has
//! no reason to sync.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tokio::time::Sleep;

/// Longest a push waits for a missing predecessor.
pub(crate) const WINDOW: Duration = Duration::from_millis(50);
/// Most pushes held at once; one more releases them all.
pub(crate) const MAX_HELD: usize = 256;
/// How long a gap whose repair could not read the inbox waits for the next try.
pub(crate) const REPAIR_RETRY: Duration = Duration::from_millis(250);
/// Tries a gap's repair gets before what is held goes out past the gap: about 5 s of a
/// store that cannot be read (a restarted Redis loaded a 30 s run's AOF in about 1 s
/// here).
pub(crate) const REPAIR_TRIES: u32 = 20;

/// A push as the outbox queued it.
pub(crate) struct Held {
    pub(crate) useq: u64,
    pub(crate) frame: Utf8Bytes,
    pub(crate) queued: Instant,
}

/// One session's reorder buffer: two words, and no allocation, while pushes come in
/// order (every connection carries one).
#[derive(Default)]
pub(crate) struct Reorder {
    /// The `useq` after the highest one released; 0 while the device's place is not
    /// known (useqs start at 1).
    next: u64,
    holding: Option<Box<Holding>>,
}

/// What a session holds while a `useq` is missing.
struct Holding {
    held: BTreeMap<u64, Held>,
    /// The highest `useq` known to exist: the last one held, or an inbox head.
    until: u64,
    /// Fires when the oldest hold's window ends.
    timer: Pin<Box<Sleep>>,
    /// Repairs of this gap that could not read the inbox.
    failed: u32,
}

impl Reorder {
    /// The device has everything up to `useq`, or gets it from its own `sync`: pushes
    /// after it are expected in order from here. Ignored while something is held (the
    /// gap's repair settles the order then).
    pub(crate) fn start_after(&mut self, useq: u64) {
        if self.holding.is_none() {
            self.next = self.next.max(useq + 1);
        }
    }

    /// The inbox holds entries up to `head`: those not pushed within the window are
    /// read from the inbox. Ignored while the device's place is unknown.
    pub(crate) fn expect(&mut self, head: u64, now: Instant) {
        if self.next == 0 || head < self.next {
            return;
        }
        let h = self.hold(now);
        h.until = h.until.max(head);
    }

    fn hold(&mut self, now: Instant) -> &mut Holding {
        self.holding.get_or_insert_with(|| {
            Box::new(Holding {
                held: BTreeMap::new(),
                until: 0,
                timer: Box::pin(tokio::time::sleep_until((now + WINDOW).into())),
                failed: 0,
            })
        })
    }

    /// Takes one push; appends to `out`, in order, what may be written now.
    pub(crate) fn offer(&mut self, push: Held, now: Instant, out: &mut Vec<Held>) {
        if self.next != 0 && push.useq > self.next {
            let h = self.hold(now);
            h.until = h.until.max(push.useq);
            h.held.insert(push.useq, push);
            if h.held.len() > MAX_HELD {
                self.release_all(out);
            }
        } else if push.useq < self.next {
            out.push(push);
        } else {
            self.next = push.useq + 1;
            out.push(push);
            self.release_consecutive(out);
        }
    }

    /// The range `(after, until]` of `useq`s from the first missing one to the last one
    /// known to exist, while something is held or expected.
    pub(crate) fn gap(&self) -> Option<(u64, u64)> {
        let h = self.holding.as_ref()?;
        Some((self.next.saturating_sub(1), h.until))
    }

    /// Whether `useq` is one of the gap's missing pushes (not released, not held).
    pub(crate) fn missing(&self, useq: u64) -> bool {
        useq >= self.next
            && self
                .holding
                .as_ref()
                .is_none_or(|h| !h.held.contains_key(&useq))
    }

    /// How many pushes are held (received, not written yet).
    pub(crate) fn held(&self) -> usize {
        self.holding.as_ref().map_or(0, |h| h.held.len())
    }

    /// Whether something is held or expected (and [`Reorder::expired`] will fire).
    pub(crate) fn holding(&self) -> bool {
        self.holding.is_some()
    }

    /// Waits for the window of the oldest hold to end; pending forever when nothing is
    /// held.
    pub(crate) fn expired(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| match &mut self.holding {
            Some(h) => h.timer.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        })
    }

    /// The gap's repair could not read the inbox: keeps holding for another
    /// [`REPAIR_RETRY`] and returns true, unless this gap failed [`REPAIR_TRIES`] times
    /// (false: release what is held, [`Reorder::release_all`]).
    pub(crate) fn retry_repair(&mut self, now: Instant) -> bool {
        let Some(h) = &mut self.holding else {
            return false;
        };
        h.failed += 1;
        if h.failed >= REPAIR_TRIES {
            return false;
        }
        h.timer.as_mut().reset((now + REPAIR_RETRY).into());
        true
    }

    /// The window ended: appends everything held to `out`, in order, past the gap. An
    /// expected tail that did not arrive is given up (the device's `sync` has it).
    pub(crate) fn release_all(&mut self, out: &mut Vec<Held>) {
        if let Some(h) = self.holding.take() {
            if let Some((&last, _)) = h.held.last_key_value() {
                self.next = self.next.max(last + 1);
            }
            out.extend(h.held.into_values());
        }
    }

    fn release_consecutive(&mut self, out: &mut Vec<Held>) {
        let Some(h) = &mut self.holding else {
            return;
        };
        while let Some(p) = h.held.remove(&self.next) {
            self.next += 1;
            out.push(p);
        }
        if h.held.is_empty() && self.next > h.until {
            self.holding = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(useq: u64) -> Held {
        Held {
            useq,
            frame: Utf8Bytes::from(useq.to_string()),
            queued: Instant::now(),
        }
    }

    fn offer(r: &mut Reorder, useqs: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        for &u in useqs {
            r.offer(push(u), Instant::now(), &mut out);
        }
        out.iter().map(|p| p.useq).collect()
    }

    #[tokio::test]
    async fn in_order_pushes_pass_straight_through() {
        let mut r = Reorder::default();
        assert_eq!(offer(&mut r, &[7, 8, 9]), [7, 8, 9]);
        assert!(!r.holding());
    }

    #[tokio::test]
    async fn an_overtaking_push_waits_for_the_gap_to_fill() {
        let mut r = Reorder::default();
        assert_eq!(offer(&mut r, &[1, 3, 4]), [1]);
        assert!(r.holding());
        assert_eq!(offer(&mut r, &[2]), [2, 3, 4]);
        assert!(!r.holding(), "nothing held, no timer");
        assert_eq!(offer(&mut r, &[5]), [5]);
    }

    #[tokio::test]
    async fn a_gap_that_does_not_fill_is_passed_after_the_window() {
        let mut r = Reorder::default();
        assert_eq!(offer(&mut r, &[1, 3, 5]), [1]);
        let started = Instant::now();
        r.expired().await;
        assert!(started.elapsed() >= WINDOW);
        let mut out = Vec::new();
        r.release_all(&mut out);
        assert_eq!(out.iter().map(|p| p.useq).collect::<Vec<_>>(), [3, 5]);
        assert_eq!(offer(&mut r, &[2]), [2], "a late push goes out at once");
        assert_eq!(offer(&mut r, &[6]), [6], "and the order goes on after 5");
    }

    #[tokio::test]
    async fn the_gap_spans_the_first_missing_to_the_last_held() {
        let mut r = Reorder::default();
        assert_eq!(r.gap(), None);
        assert_eq!(offer(&mut r, &[4, 7, 9]), [4]);
        assert_eq!(r.gap(), Some((4, 9)), "useqs 5..=9 to read, 7 and 9 held");
        // The repair offers what it read and is missing: everything goes out in order.
        let read: Vec<u64> = (5..=9).filter(|&u| r.missing(u)).collect();
        assert_eq!(read, [5, 6, 8]);
        assert_eq!(offer(&mut r, &read), [5, 6, 7, 8, 9]);
        assert_eq!(r.gap(), None);
    }

    #[tokio::test]
    async fn an_expected_tail_waits_for_its_pushes() {
        let mut r = Reorder::default();
        r.expect(5, Instant::now());
        assert!(
            !r.holding(),
            "nothing is expected before the device's place is known"
        );
        r.start_after(3);
        r.expect(3, Instant::now());
        assert!(
            !r.holding(),
            "a head the device already has expects nothing"
        );
        r.expect(6, Instant::now());
        assert_eq!(r.gap(), Some((3, 6)));
        // Pushes that arrive within the window close it.
        assert_eq!(offer(&mut r, &[4, 5]), [4, 5]);
        assert!(r.holding(), "6 is still expected");
        assert_eq!(offer(&mut r, &[6]), [6]);
        assert!(!r.holding(), "nothing expected, no timer");
        assert_eq!(r.gap(), None);
    }

    #[tokio::test]
    async fn an_expected_tail_that_does_not_come_is_read() {
        let mut r = Reorder::default();
        assert_eq!(offer(&mut r, &[1, 2]), [1, 2]);
        r.expect(5, Instant::now());
        assert_eq!(offer(&mut r, &[4]), Vec::<u64>::new(), "4 waits for 3");
        r.expired().await;
        let (after, until) = r.gap().expect("a gap after the window");
        assert_eq!((after, until), (2, 5));
        let read: Vec<u64> = (after + 1..=until).filter(|&u| r.missing(u)).collect();
        assert_eq!(read, [3, 5]);
        assert_eq!(offer(&mut r, &read), [3, 4, 5]);
        assert!(!r.holding());
    }

    #[tokio::test]
    async fn start_after_moves_forward_only_and_not_while_holding() {
        let mut r = Reorder::default();
        r.start_after(10);
        assert_eq!(offer(&mut r, &[11]), [11]);
        r.start_after(5);
        assert_eq!(offer(&mut r, &[12]), [12], "not moved back");
        assert_eq!(offer(&mut r, &[14]), Vec::<u64>::new());
        r.start_after(20);
        assert_eq!(r.gap(), Some((12, 14)), "a hold keeps its place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_whose_inbox_cannot_be_read_is_held_and_tried_again() {
        // The paused clock, which the timers follow.
        let now = || tokio::time::Instant::now().into_std();
        let mut r = Reorder::default();
        assert_eq!(offer(&mut r, &[1, 3]), [1]);
        r.expired().await;
        for _ in 1..REPAIR_TRIES {
            let failed_at = tokio::time::Instant::now();
            assert!(r.retry_repair(now()), "held for another try");
            r.expired().await;
            assert!(failed_at.elapsed() >= REPAIR_RETRY);
            assert_eq!(r.gap(), Some((1, 3)), "the gap is still there to read");
        }
        assert!(!r.retry_repair(now()), "given up after the last try");
        let mut out = Vec::new();
        r.release_all(&mut out);
        assert_eq!(out.iter().map(|p| p.useq).collect::<Vec<_>>(), [3]);
        assert!(!r.retry_repair(now()), "nothing held, nothing to retry");
    }

    #[tokio::test]
    async fn too_many_held_releases_them_all() {
        let mut r = Reorder::default();
        assert_eq!(offer(&mut r, &[1]), [1]);
        let ahead: Vec<u64> = (3..3 + MAX_HELD as u64).collect();
        assert!(offer(&mut r, &ahead).is_empty());
        let released = offer(&mut r, &[1000]);
        assert_eq!(released.len(), MAX_HELD + 1);
        assert_eq!(offer(&mut r, &[1001]), [1001], "in order again after 1000");
        assert!(released.windows(2).all(|w| w[0] < w[1]), "in order");
        assert!(!r.holding());
    }
}

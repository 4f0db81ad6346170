//! Delivery bookkeeping: which sequence numbers a device has seen, and the
//! arithmetic that turns what senders and devices saw into lost / duplicated /
//! out-of-order counts.
//!
//! The sets are compact for the common case (numbers arrive mostly in order): a
//! watermark below which everything was seen plus a small set above it. Nothing here
//! does I/O or knows about WebSockets.

use std::collections::BTreeSet;

/// A set of positive integers, stored as "all of 1..=low" plus the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    low: u64,
    above: BTreeSet<u64>,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n` (≥ 1); false when it was already there.
    pub fn insert(&mut self, n: u64) -> bool {
        if n == 0 || n <= self.low || !self.above.insert(n) {
            return false;
        }
        while self.above.first() == Some(&(self.low + 1)) {
            self.above.pop_first();
            self.low += 1;
        }
        true
    }

    /// Whether `n` is in the set.
    pub fn contains(&self, n: u64) -> bool {
        (n >= 1 && n <= self.low) || self.above.contains(&n)
    }

    /// The largest `n` such that all of 1..=n are in the set.
    pub fn contiguous(&self) -> u64 {
        self.low
    }

    /// The largest element (0 when empty).
    pub fn max(&self) -> u64 {
        self.above.last().copied().unwrap_or(self.low)
    }

    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.low + self.above.len() as u64
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates the elements in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (1..=self.low).chain(self.above.iter().copied())
    }
}

/// What one device saw of its inbox pushes.
#[derive(Debug, Clone, Default)]
pub struct DeviceLog {
    useqs: SeqSet,
    /// Pushes of a `useq` already seen (the server's retransmits).
    pub retransmits: u64,
    /// New `useq`s pushed below one already seen.
    pub out_of_order: u64,
}

/// How a push relates to what the device had seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// A `useq` not seen before, above every one seen.
    New,
    /// A `useq` not seen before, pushed below one already seen.
    NewOutOfOrder,
    /// A `useq` not seen before, below one already seen, brought by a `sync`: the
    /// catch-up after a reconnection, whose answer may come after the first live
    /// pushes of newer ones. That is what the sync is for, not disorder.
    CaughtUp,
    /// A `useq` already seen: a retransmit, ignored after the ack.
    Retransmit,
}

impl DeviceLog {
    /// Records a push of `useq`.
    pub fn record(&mut self, useq: u64) -> Push {
        self.record_from(useq, false)
    }

    /// Records an item of `useq` in a `sync` answer.
    pub fn record_synced(&mut self, useq: u64) -> Push {
        self.record_from(useq, true)
    }

    fn record_from(&mut self, useq: u64, synced: bool) -> Push {
        let max = self.useqs.max();
        if !self.useqs.insert(useq) {
            self.retransmits += 1;
            return Push::Retransmit;
        }
        match (useq < max, synced) {
            (false, _) => Push::New,
            (true, true) => Push::CaughtUp,
            (true, false) => {
                self.out_of_order += 1;
                Push::NewOutOfOrder
            }
        }
    }

    /// The `useq` a `sync` should continue after.
    pub fn sync_after(&self) -> u64 {
        self.useqs.contiguous()
    }
}

/// What one sender knows about its messages: numbers 1..=sent were sent; the server
/// acknowledged all but those still pending or refused.
#[derive(Debug, Clone, Default)]
pub struct SenderLog {
    /// Highest message number sent (numbers are 1, 2, …, with no gaps).
    pub sent: u64,
    /// Numbers sent and not (yet) acknowledged by a `sent` frame.
    pub unacked: BTreeSet<u64>,
    /// Numbers the server refused with an `error` frame.
    pub refused: BTreeSet<u64>,
}

impl SenderLog {
    /// Whether message `n` was acknowledged.
    pub fn acked(&self, n: u64) -> bool {
        n >= 1 && n <= self.sent && !self.unacked.contains(&n) && !self.refused.contains(&n)
    }

    /// Number of acknowledged messages.
    pub fn acked_count(&self) -> u64 {
        self.sent - self.unacked.len() as u64 - self.refused.len() as u64
    }
}

/// The outcome of one direction: `sender`'s messages as seen by one receiving device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCheck {
    /// Acknowledged but never received.
    pub lost: u64,
    /// Received, but never acknowledged to the sender (the `sent` frame was lost,
    /// or is still in flight): not a loss.
    pub received_unacked: u64,
}

/// Compares what a sender had acknowledged with what one device received.
pub fn check_stream(sender: &SenderLog, received: &SeqSet) -> StreamCheck {
    let mut out = StreamCheck::default();
    for n in 1..=sender.sent {
        let got = received.contains(n);
        if sender.acked(n) && !got {
            out.lost += 1;
        } else if got && !sender.acked(n) {
            out.received_unacked += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqset_compacts_and_answers() {
        let mut s = SeqSet::new();
        assert!(s.is_empty());
        assert!(!s.insert(0));
        assert!(s.insert(1));
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert_eq!((s.contiguous(), s.max(), s.len()), (1, 3, 2));
        assert!(s.insert(2));
        assert_eq!((s.contiguous(), s.max(), s.len()), (3, 3, 3));
        assert!(!s.insert(2));
        assert!(s.contains(1) && s.contains(3) && !s.contains(4) && !s.contains(0));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        // in-order inserts never grow the sparse part
        for n in 4..10_000 {
            s.insert(n);
        }
        assert!(s.above.is_empty());
    }

    #[test]
    fn device_log_tells_retransmits_from_disorder() {
        let mut d = DeviceLog::default();
        assert_eq!(d.record(1), Push::New);
        assert_eq!(d.record(3), Push::New);
        assert_eq!(d.record(2), Push::NewOutOfOrder); // backwards
        assert_eq!(d.record(3), Push::Retransmit);
        assert_eq!(d.record(4), Push::New);
        assert_eq!((d.retransmits, d.out_of_order, d.sync_after()), (1, 1, 4));
    }

    #[test]
    fn a_sync_filling_in_below_live_pushes_is_not_disorder() {
        let mut d = DeviceLog::default();
        assert_eq!(d.record(1), Push::New);
        // Reconnected: 4 and 5 are pushed before the sync after 1 answers 2 and 3.
        assert_eq!(d.record(4), Push::New);
        assert_eq!(d.record(5), Push::New);
        assert_eq!(d.record_synced(2), Push::CaughtUp);
        assert_eq!(d.record_synced(3), Push::CaughtUp);
        assert_eq!(d.record_synced(4), Push::Retransmit);
        assert_eq!((d.out_of_order, d.sync_after()), (0, 5));
    }

    #[test]
    fn stream_check_counts_losses() {
        let mut sender = SenderLog {
            sent: 6,
            ..Default::default()
        };
        sender.unacked.insert(5); // still in flight
        sender.refused.insert(6); // server said no
        assert_eq!(sender.acked_count(), 4);
        let mut got = SeqSet::new();
        for n in [1, 2, 5] {
            got.insert(n);
        }
        // 3 and 4 were acknowledged and never arrived; 5 arrived before its ack
        assert_eq!(
            check_stream(&sender, &got),
            StreamCheck {
                lost: 2,
                received_unacked: 1
            }
        );
        got.insert(3);
        got.insert(4);
        assert_eq!(check_stream(&sender, &got).lost, 0);
        assert_eq!(
            check_stream(&SenderLog::default(), &got),
            StreamCheck::default()
        );
    }
}

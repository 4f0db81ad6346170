//! The counters of a run, listed once. The list below generates the wire form
//! ([`Counters`]: what ticks and final reports carry, and what the coordinator adds
//! up), its field-by-field sum, and the live form ([`LiveCounters`]: one atomic per
//! counter, bumped by connection tasks, snapshotted once a second); so a new counter is
//! one line here, not a line in three places that can drift apart.
//!
//! Names are the JSON field names of `counters` in ticks, final reports and the
//! report's `agents[]`, so renaming one is a format change.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Defines [`Counters`] and [`LiveCounters`] from one list of documented names.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)+) => {
        /// Cumulative counters of one agent (or of all agents, added up).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counters {
            $($(#[$doc])* pub $name: u64,)+
        }

        impl Counters {
            /// Adds `o` field by field.
            pub fn add(&mut self, o: &Counters) {
                $(self.$name += o.$name;)+
            }
        }

        /// The live form of [`Counters`], shared by an agent's connection tasks: each
        /// counter an atomic, bumped with `Relaxed` (they are independent tallies; a
        /// snapshot need not be consistent across them).
        #[derive(Debug, Default)]
        pub struct LiveCounters {
            $($(#[$doc])* pub $name: AtomicU64,)+
        }

        impl LiveCounters {
            /// The counters now.
            pub fn snapshot(&self) -> Counters {
                Counters {
                    $($name: self.$name.load(Ordering::Relaxed),)+
                }
            }
        }
    };
}

counters! {
    /// Connections whose handshake succeeded (first time only).
    opened,
    /// Connections whose first handshake failed.
    failed,
    /// Connections open right now.
    open,
    /// Connections the server or the network closed during the run.
    dropped,
    /// Successful reconnections after a drop or a churn.
    reconnects,
    /// Openings a connection ended itself to open again (`--lifetime`).
    churned,
    /// `send` frames written.
    sent,
    /// Of `sent`, shop agents' replies (answers, not on the schedule).
    replies,
    /// `sent` frames received (messages the server acknowledged).
    acked,
    /// `error` frames answering a `send`.
    refused,
    /// Messages received for the first time on their recipient's device.
    delivered,
    /// Messages received for the first time on their sender's own device.
    echoed,
    /// Pushes of a `useq` the device had already seen.
    retransmits,
    /// A message received twice on one device under different `useq`s.
    duplicated,
    /// New `useq`s lower than one already seen on the device.
    out_of_order,
    /// `error` frames not tied to a send.
    server_errors,
    /// `kick` frames.
    kicks,
    /// Pushes whose body was not one of this run's messages.
    foreign,
    /// `read` frames written (`--read-receipts`).
    reads,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_snapshotted_and_added() {
        let live = LiveCounters::default();
        live.opened.fetch_add(2, Ordering::Relaxed);
        live.foreign.fetch_add(3, Ordering::Relaxed);
        let mut sum = live.snapshot();
        assert_eq!((sum.opened, sum.foreign, sum.sent), (2, 3, 0));
        sum.add(&live.snapshot());
        assert_eq!((sum.opened, sum.foreign), (4, 6));
        // The JSON names are the list's names.
        let json = serde_json::to_value(sum).unwrap();
        assert_eq!(json.as_object().unwrap().len(), 19);
        assert_eq!(json["out_of_order"], 0);
        assert_eq!(json["foreign"], 6);
    }
}

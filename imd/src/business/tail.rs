//! The tail of a conversation (`imctl tail`, `GET /admin/v1/conversations/{conv}/stream`):
//! every message from a given `seq` on, gapless and in `seq` order, for as long as the
//! follower reads. It owns the catch-up loop between the commit feed and the store; it
//! must not know how the messages reach the follower (the gateway makes them
//! server-sent events).

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::{Admin, Error};

/// Messages a tail holds for a follower that reads slower than they come; beyond it,
/// the tail waits (and catches up from the store when the feed has moved on).
const TAIL_BUFFER: usize = 256;
/// Messages read from the store per round of a catch-up.
const CATCH_UP_PAGE: u32 = 1000;

/// Just the `seq` of a stored message.
#[derive(serde::Deserialize)]
struct SeqOf {
    seq: u64,
}

impl Admin {
    /// Follows `conv` from `from_seq` (default: only messages committed from now on):
    /// each message's JSON, in `seq` order, without gaps. Live messages come from the
    /// commit feed; any gap (a follower that lagged, a message committed between the
    /// catch-up and the subscription, another node's commit in a cluster) is filled
    /// from the store. Ends when the receiver is dropped, or at shutdown.
    pub async fn tail(
        &self,
        conv: &str,
        from_seq: Option<u64>,
    ) -> Result<mpsc::Receiver<Bytes>, Error> {
        if shared::ids::ConvRef::parse(conv).is_none() {
            return Err(Error::NotFound(format!("no such conversation {conv:?}")));
        }
        // Subscribe before reading where to start, so that nothing falls in between.
        let mut feed = self.messaging.subscribe();
        let mut last = match from_seq {
            Some(n) => n.saturating_sub(1),
            None => self.messaging.last_seq(conv).await?,
        };
        let (tx, rx) = mpsc::channel(TAIL_BUFFER);
        let follower = Follower {
            admin: self.clone(),
            conv: conv.to_owned(),
            tx,
        };
        let poll_every = self.tail_poll;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            // Without a poll period the branch below is off and this never ticks.
            let period = poll_every.unwrap_or(std::time::Duration::from_secs(3600));
            let mut poll = tokio::time::interval(period);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            if follower.catch_up(&mut last).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    _ = poll.tick(), if poll_every.is_some() => {
                        if follower.catch_up(&mut last).await.is_err() {
                            break;
                        }
                    }
                    next = feed.recv() => match next {
                        Ok(c) if c.conv != follower.conv || c.seq <= last => {}
                        Ok(c) if c.seq == last + 1 => {
                            if follower.tx.send(c.json.clone()).await.is_err() {
                                break;
                            }
                            last = c.seq;
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            if follower.catch_up(&mut last).await.is_err() {
                                break;
                            }
                        }
                        Err(RecvError::Closed) => break,
                    },
                    _ = follower.tx.closed() => break,
                    _ = stop.cancelled() => break,
                }
            }
        });
        Ok(rx)
    }
}

/// One tail's way to the follower.
struct Follower {
    admin: Admin,
    conv: String,
    tx: mpsc::Sender<Bytes>,
}

impl Follower {
    /// Sends the conversation's messages after `*last` from the store, advancing
    /// `*last`. `Err` when the follower has gone or the store failed.
    async fn catch_up(&self, last: &mut u64) -> Result<(), ()> {
        loop {
            let page = match self
                .admin
                .messaging
                .history_any(&self.conv, *last, Some(CATCH_UP_PAGE))
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(conv = self.conv, error = %e, "tail: reading history failed");
                    return Err(());
                }
            };
            for json in page.items {
                let Ok(SeqOf { seq }) = serde_json::from_slice(&json) else {
                    continue;
                };
                self.tx.send(json).await.map_err(drop)?;
                *last = seq;
            }
            if !page.more {
                return Ok(());
            }
        }
    }
}

//! Conversation state: read positions, typing, recall, a user's conversation list, a
//! conversation's detail, and presence.
//!
//! Reads and recalls are ops of the commit lanes, so a read position moves in the
//! same batch (the same fsync) as the messages around it, and a recall lands in its
//! conversation's order. Typing and moved read positions reach devices as notices
//! (frames with no inbox entry, never stored, never acked) through the [`Deliver`]
//! sink. Nothing here writes except through the lanes.
//!
//! [`Deliver`]: crate::business::Deliver

use std::collections::HashSet;

use futures_util::future::join_all;
use shared::ids::{ConvRef, direct_conv, is_valid_id, service_conv};
use shared::protocol::{
    ConvKind, ConvSummary, ConversationResponse, ConversationsResponse, Event, Message,
    PresenceEntry, PresenceResponse, ServerFrame,
};
use shared::time::now_ms;

use super::{Done, Messaging, Queued, pair};
use crate::business::service::event_message;
use crate::business::{Error, Identity};
use crate::store::{
    CommitOutcome, ConvCursor, Op, Recall, RecallRefused, ServiceState, StoreError,
};

/// Entries of a conversation list page when the caller gives no `limit`.
pub const CONV_PAGE_DEFAULT: u32 = 50;
/// Largest conversation list page; larger asks are clamped to it.
pub const CONV_PAGE_MAX: u32 = 200;
/// Most users one presence call may ask about.
pub const PRESENCE_MAX: usize = 100;

/// How a read is answered: the reader's position after it. Called once, from the
/// commit task; must not block.
pub type ReadReply = Box<dyn FnOnce(Result<u64, Error>) + Send>;

/// How a recall is answered. Called once, from the commit task; must not block.
pub type RecallReply = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// Who is in a conversation.
struct Members {
    kind: ConvKind,
    /// Who a message of it reaches now: the pair, the group's members, or the customer
    /// and the assigned agent.
    now: Vec<String>,
    /// A service conversation's state.
    service: Option<ServiceState>,
}

impl Members {
    /// Everyone in it but `uid`.
    fn others(&self, uid: &str) -> Vec<String> {
        self.now.iter().filter(|m| *m != uid).cloned().collect()
    }
}

impl Messaging {
    /// The members of `conv`: 404 when it does not exist.
    async fn members_of(&self, conv: &str) -> Result<Members, Error> {
        let unknown = || Error::NotFound(format!("no such conversation {conv:?}"));
        match ConvRef::parse(conv).ok_or_else(unknown)? {
            ConvRef::Direct(a, b) => Ok(Members {
                kind: ConvKind::Direct,
                now: pair(a, b),
                service: None,
            }),
            ConvRef::Group(_) => Ok(Members {
                kind: ConvKind::Group,
                now: self.members(conv).await?,
                service: None,
            }),
            ConvRef::Service { customer, .. } => {
                let state = self.0.dir.service(conv).await?.ok_or_else(unknown)?;
                let mut now = vec![customer.to_owned()];
                now.extend(state.agent.iter().filter(|a| *a != customer).cloned());
                Ok(Members {
                    kind: ConvKind::Service,
                    now,
                    service: Some(state),
                })
            }
            ConvRef::Notes { shop, customer } => Ok(Members {
                kind: ConvKind::Notes,
                now: self.0.service.note_takers(shop, customer, None).await?,
                service: None,
            }),
        }
    }

    /// The members of `conv`, when `uid` may act in it: a member, or for a service
    /// conversation its customer or any agent of its shop. 404 when it does not exist,
    /// 403 when `uid` is not in it.
    async fn members_for(&self, uid: &str, conv: &str) -> Result<Members, Error> {
        let members = self.members_of(conv).await?;
        let allowed = match members.kind {
            ConvKind::Service | ConvKind::Notes => self.can_read(uid, conv).await?,
            ConvKind::Direct | ConvKind::Group => members.now.iter().any(|m| m == uid),
        };
        if !allowed {
            return Err(Error::Forbidden(format!("not a member of {conv}")));
        }
        Ok(members)
    }

    /// Moves `who`'s read position in `conv` forward to `seq` (clamped to the last
    /// seq). When it moves, the reader's devices and, in a direct or service
    /// conversation, the other member's get a `read` frame. `reply` gets the position.
    pub async fn read(
        &self,
        who: &Identity,
        conv: &str,
        seq: u64,
        reply: ReadReply,
    ) -> Result<(), Error> {
        if !self.0.limits.allow_read(&who.uid) {
            return Err(Error::RateLimited(
                "marking read too fast; mark the latest seq only".into(),
            ));
        }
        let members = self.members_for(&who.uid, conv).await?;
        let mut told = vec![who.uid.clone()];
        if members.kind != ConvKind::Group {
            told.extend(members.others(&who.uid));
        }
        let deliver = self.0.deliver.clone();
        let (uid, conv_id) = (who.uid.clone(), conv.to_owned());
        let done: Done = Box::new(move |r| match r {
            Ok(CommitOutcome::Read { seq, moved }) => {
                if moved {
                    let frame = ServerFrame::Read {
                        conv: conv_id,
                        uid,
                        seq,
                    };
                    deliver.notify(told, frame_json(&frame));
                }
                reply(Ok(seq));
            }
            Ok(other) => reply(Err(unexpected("read", &other))),
            Err(e) => reply(Err(e)),
        });
        let op = Op::Read {
            conv: conv.to_owned(),
            uid: who.uid.clone(),
            seq,
        };
        self.enqueue(Queued {
            op,
            done: Some(done),
        })
        .await
    }

    /// [`Messaging::read`], waiting for the commit.
    pub async fn read_and_wait(&self, who: &Identity, conv: &str, seq: u64) -> Result<u64, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.read(who, conv, seq, Box::new(move |r| drop(tx.send(r))))
            .await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Starts `uids` reading `conv` at its current end, without telling anyone: members
    /// added to a group do not inherit what was said before them as unread.
    pub async fn read_from_now(&self, conv: &str, uids: Vec<String>) -> Result<(), Error> {
        for uid in uids {
            let op = Op::Read {
                conv: conv.to_owned(),
                uid,
                seq: u64::MAX,
            };
            self.enqueue(Queued { op, done: None }).await?;
        }
        Ok(())
    }

    /// `who` is typing in `conv`: the other members' devices get a `typing` frame. More
    /// than one a second per user and conversation is dropped (not an error).
    pub async fn typing(&self, who: &Identity, conv: &str) -> Result<(), Error> {
        // The limit first: a flood costs no store read.
        if !self.0.limits.allow_typing(&who.uid, conv) {
            metrics::counter!("imd_typing_dropped_total").increment(1);
            return Ok(());
        }
        let members = self.members_for(&who.uid, conv).await?;
        // A direct conversation exists for any pair of uids: typing into one that holds
        // no message yet would reach a stranger (and say they are online), so it goes
        // nowhere until someone wrote in it.
        if members.kind == ConvKind::Direct && self.0.store.last_seq(conv).await? == 0 {
            return Ok(());
        }
        let others = members.others(&who.uid);
        if !others.is_empty() {
            let frame = ServerFrame::Typing {
                conv: conv.to_owned(),
                uid: who.uid.clone(),
            };
            self.0.deliver.notify(others, frame_json(&frame));
        }
        Ok(())
    }

    /// `who` recalls their message `seq` of `conv`, if it is theirs and within the
    /// recall window: a `recalled` event message is committed, and the message loses
    /// its body in the store. Recalling a recalled message again answers as the first
    /// recall did, and commits nothing.
    pub async fn recall(
        &self,
        who: &Identity,
        conv: &str,
        seq: u64,
        reply: RecallReply,
    ) -> Result<(), Error> {
        self.refuse_blocked(who)?;
        if !self.0.limits.allow_send(&who.uid) {
            return Err(Error::RateLimited(
                "sending too fast; slow down and resend".into(),
            ));
        }
        let members = self.members_for(&who.uid, conv).await?;
        let window = self.0.recall_window;
        let not_before =
            now_ms().saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        let recalled = Event::Recalled { seq, by: None };
        let recall = Recall {
            conv: conv.to_owned(),
            seq,
            sender: Some(who.uid.clone()),
            not_before,
            holders: self.holders(conv, &members).await?,
            event: event_message(conv, &who.uid, recalled, members.now),
        };
        self.queue_recall(recall, window, reply).await
    }

    /// An admin recalls any message of `conv`, however old; the `recalled` event
    /// (`"by": "admin"`) is from the message's sender.
    pub async fn recall_any(&self, conv: &str, seq: u64) -> Result<(), Error> {
        let members = self.members_of(conv).await?;
        let missing = || Error::NotFound(format!("no message {seq} in {conv}"));
        let page = self
            .0
            .store
            .history(conv, seq.checked_sub(1).ok_or_else(missing)?, 1)
            .await?;
        let original = page.items.first().ok_or_else(missing)?;
        let original: Message = serde_json::from_slice(original)
            .map_err(|e| Error::Store(StoreError::decode("message", e)))?;
        if original.seq != seq {
            return Err(missing());
        }
        let recalled = Event::Recalled {
            seq,
            by: Some("admin".into()),
        };
        let recall = Recall {
            conv: conv.to_owned(),
            seq,
            sender: None,
            not_before: i64::MIN,
            holders: self.holders(conv, &members).await?,
            event: event_message(conv, &original.from, recalled, members.now),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let window = self.0.recall_window;
        self.queue_recall(recall, window, Box::new(move |r| drop(tx.send(r))))
            .await?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Everyone whose inbox may hold a message of `conv` (see [`Messaging::holders`]).
    pub(super) async fn holders_of(&self, conv: &str) -> Result<Vec<String>, Error> {
        let members = self.members_of(conv).await?;
        self.holders(conv, &members).await
    }

    /// Everyone whose inbox may hold a message of `conv`: its members, and for a
    /// service conversation or its notes every agent of its shop (colleagues who
    /// replied, agents it was taken from).
    async fn holders(&self, conv: &str, members: &Members) -> Result<Vec<String>, Error> {
        let mut holders = members.now.clone();
        if let Some(ConvRef::Service { shop, .. } | ConvRef::Notes { shop, .. }) =
            ConvRef::parse(conv)
        {
            for agent in self.0.dir.shop_agents(shop).await?.unwrap_or_default() {
                if !holders.contains(&agent) {
                    holders.push(agent);
                }
            }
        }
        Ok(holders)
    }

    async fn queue_recall(
        &self,
        recall: Recall,
        window: std::time::Duration,
        reply: RecallReply,
    ) -> Result<(), Error> {
        let (conv, seq) = (recall.conv.clone(), recall.seq);
        let done: Done = Box::new(move |r| {
            reply(match r {
                Ok(CommitOutcome::Recalled(Ok(_) | Err(RecallRefused::AlreadyRecalled))) => Ok(()),
                Ok(CommitOutcome::Recalled(Err(RecallRefused::NotFound))) => {
                    Err(Error::NotFound(format!("no message {seq} in {conv}")))
                }
                Ok(CommitOutcome::Recalled(Err(RecallRefused::NotSender))) => Err(
                    Error::Forbidden("only its sender may recall a message".into()),
                ),
                Ok(CommitOutcome::Recalled(Err(RecallRefused::TooLate))) => {
                    Err(Error::Forbidden(format!(
                        "a message may be recalled within {} of sending",
                        humantime::format_duration(window)
                    )))
                }
                Ok(other) => Err(unexpected("recall", &other)),
                Err(e) => Err(e),
            });
        });
        self.enqueue(Queued {
            op: Op::Recall(recall),
            done: Some(done),
        })
        .await
    }

    /// A page of `who`'s conversations, newest activity first, after the cursor
    /// `before` (a `next` of an earlier page).
    pub async fn conversations(
        &self,
        who: &Identity,
        before: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ConversationsResponse, Error> {
        let cursor = before.map(parse_cursor).transpose()?;
        let limit = limit.unwrap_or(CONV_PAGE_DEFAULT).clamp(1, CONV_PAGE_MAX);
        let page = self
            .0
            .store
            .conversations(&who.uid, cursor.as_ref(), limit)
            .await?;
        let next = page
            .more
            .then(|| {
                page.items
                    .last()
                    .map(|e| format_cursor(&ConvCursor::after(e)))
            })
            .flatten();
        // The assigned agents of the caller's service conversations as a customer, all
        // asked at once.
        let agents = join_all(page.items.iter().map(|e| async move {
            match ConvRef::parse(&e.conv) {
                Some(ConvRef::Service { customer, .. }) if customer == who.uid => self
                    .0
                    .dir
                    .service(&e.conv)
                    .await
                    .map(|s| s.and_then(|s| s.agent)),
                _ => Ok(None),
            }
        }))
        .await;
        let mut convs = Vec::with_capacity(page.items.len());
        for (e, agent) in page.items.into_iter().zip(agents) {
            let Some(r) = ConvRef::parse(&e.conv) else {
                continue;
            };
            let read_of = |uid: &str| {
                e.reads
                    .iter()
                    .find(|(u, _)| u == uid)
                    .map_or(0, |(_, s)| *s)
            };
            let peer_read_seq = match r {
                ConvRef::Direct(a, b) => Some(read_of(if a == who.uid { b } else { a })),
                ConvRef::Service { customer, .. } if customer == who.uid => {
                    Some(agent?.as_deref().map_or(0, read_of))
                }
                ConvRef::Service { customer, .. } => Some(read_of(customer)),
                ConvRef::Group(_) | ConvRef::Notes { .. } => None,
            };
            let last: Message = serde_json::from_slice(&e.last)
                .map_err(|err| Error::Store(StoreError::decode("message", err)))?;
            convs.push(ConvSummary {
                conv: e.conv.clone(),
                kind: r.kind(),
                last,
                read_seq: e.read_seq,
                unread: e.unread,
                peer_read_seq,
            });
        }
        Ok(ConversationsResponse { convs, next })
    }

    /// What a member may know of `conv`: its kind, members and their read positions,
    /// and for a service conversation its agent, whether it is open, and its place in
    /// the shop's queue while it waits.
    pub async fn conversation(
        &self,
        who: &Identity,
        conv: &str,
    ) -> Result<ConversationResponse, Error> {
        let members = self.members_for(&who.uid, conv).await?;
        let last_seq = self.0.store.last_seq(conv).await?;
        if last_seq == 0 && members.kind == ConvKind::Direct {
            return Err(Error::NotFound(format!("no such conversation {conv:?}")));
        }
        let reads = self.0.store.read_positions(conv).await?;
        let read = members
            .now
            .iter()
            .map(|m| {
                let seq = reads.iter().find(|(u, _)| u == m).map_or(0, |(_, s)| *s);
                (m.clone(), seq)
            })
            .collect();
        let mut out = ConversationResponse {
            conv: conv.to_owned(),
            kind: members.kind,
            members: members.now,
            read,
            last_seq,
            agent: None,
            open: None,
            queue_position: None,
        };
        if let (Some(state), Some(ConvRef::Service { shop, .. })) =
            (members.service, ConvRef::parse(conv))
        {
            if state.open && state.agent.is_none() {
                let waiting = self.0.dir.waiting(shop).await?;
                out.queue_position = waiting.iter().position(|c| c == conv).map(|i| i as u64 + 1);
            }
            out.agent = state.agent;
            out.open = Some(state.open);
        }
        Ok(out)
    }

    /// Whether `uids` are online, for those of them who share a conversation with
    /// `who`: presence must not tell strangers who is online.
    pub async fn presence(
        &self,
        who: &Identity,
        uids: Vec<String>,
    ) -> Result<PresenceResponse, Error> {
        if uids.len() > PRESENCE_MAX {
            return Err(Error::BadRequest(format!(
                "at most {PRESENCE_MAX} uids per presence call"
            )));
        }
        if let Some(bad) = uids.iter().find(|u| !is_valid_id(u)) {
            return Err(Error::BadRequest(format!(
                "invalid uid {bad:?}: 1-64 characters of [A-Za-z0-9_.:@-]"
            )));
        }
        let me = who.uid.as_str();
        let my_groups: HashSet<String> = self.0.dir.member_groups(me).await?.into_iter().collect();
        let my_shops = self.0.dir.agent_shops(me).await?;
        let mut seen = HashSet::new();
        let asked: Vec<String> = uids
            .into_iter()
            .filter(|u| seen.insert(u.clone()))
            .collect();
        // Every asked user at once: each costs a few store reads.
        let told = join_all(asked.into_iter().map(|uid| {
            let (my_groups, my_shops) = (&my_groups, &my_shops);
            async move {
                if !self.shares(me, &uid, my_groups, my_shops).await? {
                    return Ok(None);
                }
                Ok::<_, Error>(Some(PresenceEntry {
                    online: self.0.presence.online(&uid).await,
                    uid,
                    last_seen: None,
                }))
            }
        }))
        .await;
        let mut users = Vec::new();
        for entry in told {
            users.extend(entry?);
        }
        Ok(PresenceResponse { users })
    }

    /// Whether `me` and `uid` are members of one conversation: a direct one with a
    /// message, a group, or a service conversation (one is its customer, the other an
    /// agent who joined it).
    async fn shares(
        &self,
        me: &str,
        uid: &str,
        my_groups: &HashSet<String>,
        my_shops: &[String],
    ) -> Result<bool, Error> {
        let store = &self.0.store;
        if uid == me || store.in_conversations(me, &direct_conv(me, uid)).await? {
            return Ok(true);
        }
        if !my_groups.is_empty()
            && self
                .0
                .dir
                .member_groups(uid)
                .await?
                .iter()
                .any(|g| my_groups.contains(g))
        {
            return Ok(true);
        }
        for shop in my_shops {
            if store.in_conversations(me, &service_conv(shop, uid)).await? {
                return Ok(true);
            }
        }
        for shop in self.0.dir.agent_shops(uid).await? {
            if store
                .in_conversations(uid, &service_conv(&shop, me))
                .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A frame as JSON.
fn frame_json(frame: &ServerFrame) -> String {
    // Frames of strings and numbers always serialize.
    serde_json::to_string(frame).unwrap_or_default()
}

/// An op answered with another op's outcome: a store that broke the contract.
fn unexpected(op: &str, got: &CommitOutcome) -> Error {
    Error::Store(StoreError::Corrupt(format!(
        "a {op} was answered with {got:?}"
    )))
}

/// A conversation list cursor as clients carry it: `<ts>_<conv>`.
fn format_cursor(c: &ConvCursor) -> String {
    format!("{}_{}", c.ts, c.conv)
}

fn parse_cursor(s: &str) -> Result<ConvCursor, Error> {
    let bad = || {
        Error::BadRequest(format!(
            "invalid cursor {s:?}: pass a `next` back as it came"
        ))
    };
    let (ts, conv) = s.split_once('_').ok_or_else(bad)?;
    let ts = ts.parse::<i64>().map_err(|_| bad())?;
    if ConvRef::parse(conv).is_none() {
        return Err(bad());
    }
    Ok(ConvCursor {
        ts,
        conv: conv.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        for conv in ["d:a_1~b", "g:x", "s:shop_1~c@d.e"] {
            let c = ConvCursor {
                ts: 1_733_450_000_123,
                conv: conv.into(),
            };
            assert_eq!(parse_cursor(&format_cursor(&c)).unwrap(), c);
        }
        for bad in ["", "12", "x_d:a~b", "12_", "12_nope", "_g:x"] {
            assert!(
                matches!(parse_cursor(bad), Err(Error::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}

//! Reading: a user's inbox (`sync`, replay ranges), a conversation's history, and who
//! may read it. Nothing here writes.

use bytes::Bytes;
use shared::ids::ConvRef;
use shared::protocol::{DEFAULT_PAGE, MAX_PAGE};

use super::Messaging;
use crate::business::{Error, Identity};
use crate::store::{Generation, Page};

impl Messaging {
    /// The highest `seq` of `conv`.
    pub async fn last_seq(&self, conv: &str) -> Result<u64, Error> {
        Ok(self.0.store.last_seq(conv).await?)
    }

    /// Inbox entries of `uid` with `after < useq <= until`, at most `cap` of them.
    pub async fn inbox_range(
        &self,
        uid: &str,
        after: u64,
        until: u64,
        cap: usize,
    ) -> Result<Vec<(u64, Bytes)>, Error> {
        let mut out = Vec::new();
        let mut from = after;
        while out.len() < cap && from < until {
            let page = self.0.store.inbox(uid, from, MAX_PAGE).await?;
            let Some(&(last, _)) = page.items.last() else {
                break;
            };
            out.extend(page.items.into_iter().filter(|(u, _)| *u <= until));
            from = last;
            if !page.more {
                break;
            }
        }
        out.truncate(cap);
        Ok(out)
    }

    /// Whether `uid` may read `conv`.
    pub(super) async fn can_read(&self, uid: &str, conv: &str) -> Result<bool, Error> {
        match ConvRef::parse(conv) {
            Some(ConvRef::Service { shop, customer }) => {
                self.0.service.can_read(uid, shop, customer).await
            }
            Some(ConvRef::Notes { shop, .. }) => self.0.service.is_agent(uid, shop).await,
            _ => Ok(self.members(conv).await?.iter().any(|m| m == uid)),
        }
    }

    /// The inbox of `uid` after `after`: what a device that has seen `after` missed, and
    /// the store's generation.
    pub async fn sync(
        &self,
        uid: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<(Page<(u64, Bytes)>, Generation), Error> {
        // The generation is checked alongside: a device told of a new one starts over
        // from the inbox's beginning instead of taking reused `useq`s for ones it has.
        let (page, generation) = tokio::join!(
            self.0.store.inbox(uid, after, page_size(limit)),
            self.0.store.read_generation()
        );
        let generation = generation.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "store generation not checked for a sync");
            self.0.store.generation()
        });
        Ok((page?, generation))
    }

    /// Messages of `conv` after `seq`, for a member of it.
    pub async fn history(
        &self,
        who: &Identity,
        conv: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Page<Bytes>, Error> {
        if !self.can_read(&who.uid, conv).await? {
            return Err(Error::Forbidden(format!("not a member of {conv}")));
        }
        Ok(self.0.store.history(conv, after, page_size(limit)).await?)
    }

    /// Messages of any conversation, for the admin API.
    pub async fn history_any(
        &self,
        conv: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Page<Bytes>, Error> {
        if ConvRef::parse(conv).is_none() {
            return Err(Error::NotFound(format!("no such conversation {conv:?}")));
        }
        Ok(self.0.store.history(conv, after, page_size(limit)).await?)
    }
}

fn page_size(limit: Option<u32>) -> u32 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

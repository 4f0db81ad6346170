//! Offline pushes: devices' push tokens, and a push to the relay for each message that
//! reaches a user none of whose devices is connected.
//!
//! - **Registration** ([`Push::register`], [`Push::unregister`]): a device registers
//!   its own push token (the device named must be the caller's token's); a user keeps
//!   at most [`DEVICES_MAX`] devices, and past that the one registered longest ago is
//!   replaced.
//! - **Pushing** ([`Push::start`]): it follows the messages this node commits (each
//!   node pushes for its own commits, so a cluster pushes each message once), and for
//!   each message with a body, each recipient but its sender that has a push token and
//!   is not online gets one [`OfflinePush`], handed to the [`PushRelay`]: the user's
//!   tokens, the message's coordinates, a preview of its text (unless previews are
//!   off) and the user's unread count as the badge.
//!
//! Pushes are best effort by nature, and so is this: a queue of [`QUEUE`] recipients
//! between the commit feed and [`CONCURRENCY`] pushes in flight, a few retries with
//! backoff, and everything that does not fit or does not get through is dropped and
//! counted (`imd_offline_push_*`), never waited for. A device that missed a push
//! still finds the message with `sync` when it connects. It must not slow a commit or
//! a send: it only reads what was committed.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shared::ids::is_valid_id;
use shared::protocol::Message;
use shared::time::now_ms;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Error, Identity, Presence, PushRelay, RelayFailed};
use crate::store::{Committed, DirectoryStore, MessageStore, PushToken};

/// Devices with a push token per user; past it, the oldest registration goes.
pub const DEVICES_MAX: usize = 16;
/// Longest push token, in bytes.
pub const TOKEN_MAX: usize = 4096;
/// Longest provider name.
pub const PROVIDER_MAX: usize = 32;
/// Characters of a body's `text` in a push's preview.
pub const PREVIEW_CHARS: usize = 100;
/// The badge counts the unread messages of the user's most recently active
/// conversations, this many (one page of the conversation list): a bounded read per
/// push. Older conversations with unread messages are left out of it.
pub const BADGE_CONVS: u32 = 100;
/// Recipients waiting to be looked at; past it, they are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Pushes looked at and sent at once.
pub const CONCURRENCY: usize = 32;
/// Tries of a push after the first, when the relay may take it later.
pub const RETRIES: u32 = 3;
/// The wait before the first retry; it doubles before each later one.
pub const BACKOFF: Duration = Duration::from_millis(250);

/// What the relay is asked to push: to `uid`'s devices, for one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OfflinePush {
    /// The user.
    pub uid: String,
    /// Every device of the user with a push token.
    pub tokens: Vec<PushTarget>,
    /// The message.
    pub msg: PushedMessage,
    /// The first [`PREVIEW_CHARS`] characters of the body's `text`; `None` when the
    /// body has no text, or previews are off (`--push-preview false`).
    pub preview: Option<String>,
    /// The user's unread messages (see [`BADGE_CONVS`]), this one included.
    pub badge: u64,
}

/// One device's push token, as the relay needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushTarget {
    /// The device.
    pub device: String,
    /// The push service (`apns`, `fcm`, …).
    pub provider: String,
    /// The device's token at that service.
    pub token: String,
}

/// Which message a push is for, without its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushedMessage {
    /// The message id.
    pub id: String,
    /// The conversation.
    pub conv: String,
    /// Its position in the conversation.
    pub seq: u64,
    /// The sender.
    pub from: String,
    /// Its commit time (unix ms).
    pub ts: i64,
}

/// One recipient to look at.
struct Job {
    uid: String,
    msg: Arc<(PushedMessage, Option<String>)>,
}

/// How pushes go out.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Whether pushes carry a preview of the text.
    pub preview: bool,
    /// Recipients waiting at most.
    pub queue: usize,
    /// Pushes in flight at most.
    pub concurrency: usize,
    /// Retries of a push the relay may take later.
    pub retries: u32,
    /// The wait before the first retry (doubling).
    pub backoff: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            preview: true,
            queue: QUEUE,
            concurrency: CONCURRENCY,
            retries: RETRIES,
            backoff: BACKOFF,
        }
    }
}

struct Inner {
    dir: Arc<dyn DirectoryStore>,
    store: Arc<dyn MessageStore>,
    presence: Arc<dyn Presence>,
}

/// Push tokens and offline pushes. Cheap to clone.
#[derive(Clone)]
pub struct Push(Arc<Inner>);

impl Push {
    /// Over the directory (tokens), the message store (badges) and presence.
    pub fn new(
        dir: Arc<dyn DirectoryStore>,
        store: Arc<dyn MessageStore>,
        presence: Arc<dyn Presence>,
    ) -> Self {
        Self(Arc::new(Inner {
            dir,
            store,
            presence,
        }))
    }

    /// Registers the push token of `who`'s `device`, which must be the caller's own.
    pub async fn register(
        &self,
        who: &Identity,
        device: &str,
        provider: &str,
        token: &str,
    ) -> Result<(), Error> {
        own_device(who, device)?;
        let provider_ok = (1..=PROVIDER_MAX).contains(&provider.len())
            && provider
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !provider_ok {
            return Err(Error::BadRequest(format!(
                "provider must be 1-{PROVIDER_MAX} characters of [a-z0-9_-]"
            )));
        }
        if token.is_empty() || token.len() > TOKEN_MAX || token.chars().any(char::is_control) {
            return Err(Error::BadRequest(format!(
                "token must be 1-{TOKEN_MAX} bytes without control characters"
            )));
        }
        let token = PushToken {
            device: device.to_owned(),
            provider: provider.to_owned(),
            token: token.to_owned(),
            at: now_ms(),
        };
        let removed = self
            .0
            .dir
            .push_register(&who.uid, token, DEVICES_MAX)
            .await?;
        if !removed.is_empty() {
            tracing::debug!(uid = %who.uid, ?removed, "push tokens replaced past the bound");
        }
        Ok(())
    }

    /// Removes the push token of `who`'s `device` (the caller's own); whether there was
    /// one.
    pub async fn unregister(&self, who: &Identity, device: &str) -> Result<bool, Error> {
        own_device(who, device)?;
        Ok(self.0.dir.push_unregister(&who.uid, device).await?)
    }

    /// Pushes to offline recipients of what `feed` brings (the node's commits), through
    /// `relay`, until `stop`.
    pub fn start(
        &self,
        feed: broadcast::Receiver<Arc<Committed>>,
        relay: Arc<dyn PushRelay>,
        settings: PushSettings,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(follow(feed, tx, settings.preview, stop.clone()));
        let this = self.clone();
        tokio::spawn(async move { this.run(rx, relay, settings, stop).await })
    }

    /// Takes recipients off the queue, [`PushSettings::concurrency`] at a time.
    async fn run(
        self,
        mut rx: mpsc::Receiver<Job>,
        relay: Arc<dyn PushRelay>,
        settings: PushSettings,
        stop: CancellationToken,
    ) {
        let limit = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let tasks = TaskTracker::new();
        loop {
            let job = tokio::select! {
                job = rx.recv() => job,
                _ = stop.cancelled() => None,
            };
            let Some(job) = job else { break };
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = stop.cancelled() => break,
            };
            let (this, relay, settings, stop) =
                (self.clone(), relay.clone(), settings.clone(), stop.clone());
            tasks.spawn(async move {
                // Best effort: at shutdown, what is in flight is dropped.
                tokio::select! {
                    _ = this.push_one(job, relay.as_ref(), &settings) => {}
                    _ = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Looks at one recipient: tokens, presence, badge; then pushes, with retries.
    async fn push_one(&self, job: Job, relay: &dyn PushRelay, settings: &PushSettings) {
        let push = match self.prepare(&job).await {
            Ok(Some(push)) => push,
            Ok(None) => return,
            Err(e) => {
                metrics::counter!("imd_offline_pushes_total", "result" => "failed").increment(1);
                tracing::warn!(uid = %job.uid, error = %e, "offline push not prepared");
                return;
            }
        };
        let mut wait = settings.backoff;
        for attempt in 0..=settings.retries {
            match relay.send(&push).await {
                Ok(()) => {
                    metrics::counter!("imd_offline_pushes_total", "result" => "sent").increment(1);
                    return;
                }
                Err(RelayFailed::Refused) => {
                    metrics::counter!("imd_offline_pushes_total", "result" => "refused")
                        .increment(1);
                    return;
                }
                Err(RelayFailed::Retry) if attempt < settings.retries => {
                    metrics::counter!("imd_offline_push_retries_total").increment(1);
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(RelayFailed::Retry) => {}
            }
        }
        metrics::counter!("imd_offline_pushes_total", "result" => "failed").increment(1);
    }

    /// The push for `job`, or `None` when its user has no push token or is online.
    async fn prepare(&self, job: &Job) -> Result<Option<OfflinePush>, Error> {
        let tokens = self.0.dir.push_tokens(&job.uid).await?;
        let skipped = if tokens.is_empty() {
            "no_token"
        } else if self.0.presence.online(&job.uid).await {
            "online"
        } else {
            ""
        };
        if !skipped.is_empty() {
            metrics::counter!("imd_offline_push_skipped_total", "reason" => skipped).increment(1);
            return Ok(None);
        }
        let page = self
            .0
            .store
            .conversations(&job.uid, None, BADGE_CONVS)
            .await?;
        let badge = page.items.iter().map(|c| c.unread).sum();
        let (msg, preview) = &*job.msg;
        Ok(Some(OfflinePush {
            uid: job.uid.clone(),
            tokens: tokens
                .into_iter()
                .map(|t| PushTarget {
                    device: t.device,
                    provider: t.provider,
                    token: t.token,
                })
                .collect(),
            msg: msg.clone(),
            preview: preview.clone(),
            badge,
        }))
    }
}

/// A device registers and removes only its own push token: another device's token is
/// another phone's, and a token of the same user must not move it (403).
fn own_device(who: &Identity, device: &str) -> Result<(), Error> {
    if !is_valid_id(device) {
        return Err(Error::BadRequest(format!(
            "invalid device id {device:?}: 1-64 characters of [A-Za-z0-9_.:@-]"
        )));
    }
    if device != who.device {
        return Err(Error::Forbidden(format!(
            "a device manages only its own push token: this token is device {:?}",
            who.device
        )));
    }
    Ok(())
}

/// Queues each recipient of each message `feed` brings; counts what it cannot queue,
/// and what the feed dropped because this fell behind.
async fn follow(
    mut feed: broadcast::Receiver<Arc<Committed>>,
    tx: mpsc::Sender<Job>,
    preview: bool,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            next = feed.recv() => next,
            _ = stop.cancelled() => break,
        };
        match next {
            Ok(c) => {
                for job in jobs(&c, preview) {
                    if tx.try_send(job).is_err() {
                        metrics::counter!("imd_offline_push_dropped_total", "reason" => "queue_full")
                            .increment(1);
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Messages, not recipients: who they were for is not known any more.
                metrics::counter!("imd_offline_push_dropped_total", "reason" => "lagged")
                    .increment(n);
                tracing::debug!(missed = n, "offline pushes fell behind the commits");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// A job per recipient of `c` but its sender, when it is a message with a body.
fn jobs(c: &Committed, preview: bool) -> Vec<Job> {
    let Ok(m) = serde_json::from_slice::<Message>(&c.json) else {
        tracing::warn!(conv = %c.conv, seq = c.seq, "committed message does not decode");
        return Vec::new();
    };
    let Some(body) = m.body.as_ref().filter(|_| !m.recalled) else {
        // Event messages wake nobody.
        return Vec::new();
    };
    let text = preview.then(|| preview_of(body)).flatten();
    let msg = Arc::new((
        PushedMessage {
            id: m.id.clone(),
            conv: m.conv.clone(),
            seq: m.seq,
            from: m.from.clone(),
            ts: m.ts,
        },
        text,
    ));
    c.recipients
        .iter()
        .filter(|(uid, _)| *uid != m.from)
        .map(|(uid, _)| Job {
            uid: uid.clone(),
            msg: msg.clone(),
        })
        .collect()
}

/// The first [`PREVIEW_CHARS`] characters of `body.text`, when it is a string.
fn preview_of(body: &serde_json::Value) -> Option<String> {
    let text = body.get("text")?.as_str()?;
    Some(text.chars().take(PREVIEW_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Instant;

    use serde_json::json;
    use shared::protocol::Event;
    use shared::token::Platform;

    use super::*;
    use crate::store::{CommitOutcome, Content, EmbeddedStore, NewMessage, Op, PushStore};

    fn who(uid: &str, device: &str) -> Identity {
        Identity {
            uid: uid.into(),
            device: device.into(),
            platform: Platform::Ios,
            roles: vec![],
            ip: None,
        }
    }

    #[derive(Default)]
    struct Online(Mutex<HashSet<String>>);

    #[async_trait::async_trait]
    impl Presence for Online {
        async fn online(&self, uid: &str) -> bool {
            self.0.lock().unwrap().contains(uid)
        }
    }

    /// Records what it is sent; answers each call with the next of `answers`, then Ok.
    #[derive(Default)]
    struct Relay {
        got: Mutex<Vec<OfflinePush>>,
        calls: Mutex<usize>,
        answers: Mutex<Vec<RelayFailed>>,
    }

    #[async_trait::async_trait]
    impl PushRelay for Relay {
        async fn send(&self, push: &OfflinePush) -> Result<(), RelayFailed> {
            *self.calls.lock().unwrap() += 1;
            let mut answers = self.answers.lock().unwrap();
            if !answers.is_empty() {
                return Err(answers.remove(0));
            }
            self.got.lock().unwrap().push(push.clone());
            Ok(())
        }
    }

    impl Relay {
        fn failing(answers: &[RelayFailed]) -> Self {
            Self {
                answers: Mutex::new(answers.to_vec()),
                ..Self::default()
            }
        }

        fn calls(&self) -> usize {
            *self.calls.lock().unwrap()
        }

        /// Waits (real time: the store works on blocking threads) until `n` pushes
        /// arrived; returns them.
        async fn wait_for(&self, n: usize) -> Vec<OfflinePush> {
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                let got = self.got.lock().unwrap().clone();
                if got.len() >= n {
                    return got;
                }
                assert!(Instant::now() < end, "{n} pushes expected, got {got:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    struct Rig {
        store: Arc<EmbeddedStore>,
        online: Arc<Online>,
        push: Push,
        relay: Arc<Relay>,
        feed: broadcast::Sender<Arc<Committed>>,
        stop: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    /// One push at a time, so that a later push proves an earlier recipient was
    /// looked at (and skipped).
    fn rig(relay: Relay, preview: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let online = Arc::new(Online::default());
        let push = Push::new(store.clone(), store.clone(), online.clone());
        let relay = Arc::new(relay);
        let (feed, rx) = broadcast::channel(64);
        let stop = CancellationToken::new();
        let settings = PushSettings {
            preview,
            concurrency: 1,
            backoff: Duration::from_millis(1),
            ..PushSettings::default()
        };
        push.start(rx, relay.clone(), settings, stop.clone());
        Rig {
            store,
            online,
            push,
            relay,
            feed,
            stop,
            _dir: dir,
        }
    }

    impl Rig {
        async fn register(&self, uid: &str, device: &str) {
            let token = format!("tok-{uid}-{device}");
            self.push
                .register(&who(uid, device), device, "apns", &token)
                .await
                .unwrap();
        }

        /// Commits a message (or an event) into `conv` and publishes it.
        async fn commit(&self, conv: &str, from: &str, members: &[&str], content: Content) {
            let msg = NewMessage {
                id: uuid::Uuid::now_v7().to_string(),
                conv: conv.into(),
                from: from.into(),
                cid: None,
                content,
                ts: now_ms(),
                members: members.iter().map(|m| m.to_string()).collect(),
            };
            let out = self.store.commit(vec![Op::Message(msg)]).await.unwrap();
            let [CommitOutcome::New(c)] = &out[..] else {
                panic!("not committed: {out:?}")
            };
            self.feed.send(Arc::new(c.clone())).unwrap();
        }

        async fn say(&self, from: &str, to: &str, text: &str) {
            let conv = shared::ids::direct_conv(from, to);
            let body = Content::Body(json!({ "text": text }));
            self.commit(&conv, from, &[from, to], body).await;
        }
    }

    #[tokio::test]
    async fn a_device_registers_only_its_own_token_within_the_rules() {
        let r = rig(Relay::default(), true);
        let me = who("bob", "phone");
        let long = "x".repeat(TOKEN_MAX + 1);
        for (device, provider, token, code) in [
            (
                "tablet",
                "apns",
                "t",
                shared::protocol::ErrorCode::Forbidden,
            ),
            (
                "bad device",
                "apns",
                "t",
                shared::protocol::ErrorCode::BadRequest,
            ),
            ("phone", "", "t", shared::protocol::ErrorCode::BadRequest),
            (
                "phone",
                "APNS",
                "t",
                shared::protocol::ErrorCode::BadRequest,
            ),
            (
                "phone",
                &"a".repeat(PROVIDER_MAX + 1),
                "t",
                shared::protocol::ErrorCode::BadRequest,
            ),
            ("phone", "fcm", "", shared::protocol::ErrorCode::BadRequest),
            (
                "phone",
                "fcm",
                &long,
                shared::protocol::ErrorCode::BadRequest,
            ),
            (
                "phone",
                "fcm",
                "a\nb",
                shared::protocol::ErrorCode::BadRequest,
            ),
        ] {
            let err = r
                .push
                .register(&me, device, provider, token)
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{device:?} {provider:?} {token:?}");
        }
        assert!(r.store.push_tokens("bob").await.unwrap().is_empty());
        r.push
            .register(&me, "phone", "fcm_v1-2", &"x".repeat(TOKEN_MAX))
            .await
            .unwrap();
        assert_eq!(r.store.push_tokens("bob").await.unwrap().len(), 1);
        let err = r.push.unregister(&me, "tablet").await.unwrap_err();
        assert_eq!(err.code(), shared::protocol::ErrorCode::Forbidden);
        assert!(r.push.unregister(&me, "phone").await.unwrap());
        assert!(!r.push.unregister(&me, "phone").await.unwrap());
    }

    #[tokio::test]
    async fn a_user_keeps_at_most_sixteen_devices_and_the_oldest_goes() {
        let r = rig(Relay::default(), true);
        for i in 0..=DEVICES_MAX {
            r.register("bob", &format!("d{i:02}")).await;
        }
        let devices: Vec<String> = r
            .store
            .push_tokens("bob")
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.device)
            .collect();
        assert_eq!(devices.len(), DEVICES_MAX);
        assert!(
            devices.contains(&format!("d{DEVICES_MAX:02}")),
            "the newest stays"
        );
    }

    #[tokio::test]
    async fn an_offline_recipient_gets_its_tokens_the_badge_and_a_preview() {
        let r = rig(Relay::default(), true);
        r.register("bob", "phone").await;
        r.register("bob", "tablet").await;
        // The sender has a token too, and gets no push for its own message.
        r.register("alice", "phone").await;
        r.say("alice", "bob", "hi").await;
        // The badge is read when the push is made: the second message waits for the
        // first push, or the first badge could count it too.
        r.relay.wait_for(1).await;
        let long = "é".repeat(PREVIEW_CHARS + 20);
        r.say("carol", "bob", &long).await;
        let got = r.relay.wait_for(2).await;
        assert_eq!(got.len(), 2, "{got:?}");
        let first = &got[0];
        assert_eq!(first.uid, "bob");
        assert_eq!(
            first.tokens,
            [
                PushTarget {
                    device: "phone".into(),
                    provider: "apns".into(),
                    token: "tok-bob-phone".into()
                },
                PushTarget {
                    device: "tablet".into(),
                    provider: "apns".into(),
                    token: "tok-bob-tablet".into()
                },
            ]
        );
        assert_eq!(first.msg.conv, "d:alice~bob");
        assert_eq!((first.msg.seq, first.msg.from.as_str()), (1, "alice"));
        assert_eq!(first.preview.as_deref(), Some("hi"));
        assert_eq!(first.badge, 1);
        // Unread across conversations; the preview cut at characters.
        assert_eq!(got[1].badge, 2);
        assert_eq!(got[1].preview, Some("é".repeat(PREVIEW_CHARS)));
    }

    #[tokio::test]
    async fn no_push_to_the_online_to_those_without_tokens_or_for_events() {
        let r = rig(Relay::default(), true);
        r.register("bob", "phone").await;
        r.register("dave", "phone").await;
        r.online.0.lock().unwrap().insert("bob".into());
        r.say("alice", "bob", "you are online").await;
        r.say("alice", "carol", "you have no token").await;
        let closed = Content::Event(Event::Closed);
        r.commit("d:alice~dave", "alice", &["alice", "dave"], closed)
            .await;
        // One at a time, in order: this one proves the three before were looked at.
        r.say("alice", "dave", "marker").await;
        let got = r.relay.wait_for(1).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].uid.as_str(), got[0].preview.as_deref()),
            ("dave", Some("marker"))
        );
        assert_eq!(r.relay.calls(), 1);
    }

    #[tokio::test]
    async fn previews_are_off_on_request_and_absent_without_text() {
        let r = rig(Relay::default(), false);
        r.register("bob", "phone").await;
        r.say("alice", "bob", "secret").await;
        let got = r.relay.wait_for(1).await;
        assert_eq!(got[0].preview, None);
        assert_eq!(preview_of(&json!({"image": "x.png"})), None);
        assert_eq!(preview_of(&json!({"text": 7})), None);
        assert_eq!(preview_of(&json!("text")), None);
    }

    #[tokio::test]
    async fn a_push_is_retried_while_the_relay_may_take_it_and_not_after_a_refusal() {
        use RelayFailed::{Refused, Retry};
        let r = rig(Relay::failing(&[Retry, Retry]), true);
        r.register("bob", "phone").await;
        r.say("alice", "bob", "one").await;
        r.relay.wait_for(1).await;
        assert_eq!(r.relay.calls(), 3, "two failures, then taken");

        let r = rig(Relay::failing(&[Refused]), true);
        r.register("bob", "phone").await;
        r.say("alice", "bob", "refused").await;
        r.say("alice", "bob", "next").await;
        let got = r.relay.wait_for(1).await;
        assert_eq!(got[0].preview.as_deref(), Some("next"));
        assert_eq!(r.relay.calls(), 2, "a refusal is not retried");

        let gives_up = vec![Retry; RETRIES as usize + 1];
        let r = rig(Relay::failing(&gives_up), true);
        r.register("bob", "phone").await;
        r.say("alice", "bob", "dropped").await;
        r.say("alice", "bob", "after").await;
        let got = r.relay.wait_for(1).await;
        assert_eq!(got[0].preview.as_deref(), Some("after"));
        assert_eq!(
            r.relay.calls(),
            RETRIES as usize + 2,
            "given up after the retries"
        );
    }
}

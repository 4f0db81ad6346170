//! The pre-send hook's place in a send: after the target's checks and the word filter,
//! before routing and commit; its verdicts; and that a refused service message leaves
//! no assignment behind.

use super::*;
use crate::business::words::{WordFilter, WordsPolicy};
use crate::business::{BeforeSend, Outgoing, Verdict};

/// A hook that answers `verdict` and records what it was asked (conv, body).
struct Hook {
    verdict: Mutex<Verdict>,
    asked: Mutex<Vec<(String, serde_json::Value)>>,
}

#[async_trait::async_trait]
impl BeforeSend for Hook {
    fn applies(&self, conv: &str) -> bool {
        !conv.starts_with("g:")
    }

    async fn check(&self, msg: Outgoing<'_>) -> Verdict {
        self.asked
            .lock()
            .unwrap()
            .push((msg.conv.to_owned(), msg.body.clone()));
        self.verdict.lock().unwrap().clone()
    }
}

fn hooked(verdict: Verdict) -> (Rig, Arc<Hook>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let rec = Arc::new(Recorder::default());
    let online = Arc::new(Online::default());
    let stop = CancellationToken::new();
    let hook = Arc::new(Hook {
        verdict: Mutex::new(verdict),
        asked: Mutex::default(),
    });
    let words = Words::load(None, WordsPolicy::Reject).unwrap();
    words.set(WordFilter::new(["spam"], WordsPolicy::Reject).unwrap());
    let deps = Deps {
        store: store.clone(),
        dir: store.clone(),
        presence: online.clone(),
        deliver: rec.clone(),
        blacklist: Arc::new(Blacklist::new()),
        words: Arc::new(words),
        limits: Arc::new(no_limits()),
        recall_window: std::time::Duration::from_secs(120),
        before_send: Some(hook.clone()),
    };
    let (m, _task) = Messaging::start(deps, 64, 1, stop.clone());
    let rig = Rig {
        m,
        rec,
        online,
        store,
        stop,
        _dir: dir,
    };
    (rig, hook)
}

fn set(hook: &Hook, v: Verdict) {
    *hook.verdict.lock().unwrap() = v;
}

#[tokio::test]
async fn each_verdict_decides_what_is_committed() {
    use shared::protocol::ErrorCode;
    let (r, hook) = hooked(Verdict::Allow);
    let m = send(&r.m, "a", json!({"to": "b", "body": {"text": "hi"}})).await;
    assert_eq!(m["body"], json!({"text": "hi"}));

    set(&hook, Verdict::Replace(json!({"text": "***"})));
    let m = send(&r.m, "a", json!({"to": "b", "body": {"text": "555"}})).await;
    assert_eq!(
        m["body"],
        json!({"text": "***"}),
        "the replacement is committed"
    );

    set(&hook, Verdict::Reject("not here".into()));
    let err =
        r.m.send_and_wait(&who("a"), req(json!({"to": "b", "body": 1})))
            .await
            .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BlockedContent);
    assert_eq!(err.client_message(), "not here");

    set(&hook, Verdict::Unavailable);
    let err =
        r.m.send_and_wait(&who("a"), req(json!({"to": "b", "body": 1})))
            .await
            .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert!(err.client_message().contains("pre-send hook unavailable"));
    assert!(
        !err.is_server_fault(),
        "logged by the hook, not per refusal"
    );

    assert_eq!(
        inbox_seqs(&r.m, "b").await,
        [1, 2],
        "refusals commit nothing"
    );
    let asked: Vec<_> = hook
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.1.clone())
        .collect();
    assert_eq!(asked[1], json!({"text": "555"}), "asked with the original");
}

#[tokio::test]
async fn the_hook_hears_only_of_sends_that_pass_the_other_checks() {
    use shared::protocol::ErrorCode;
    let (r, hook) = hooked(Verdict::Allow);
    r.store
        .set_shop_agents("shop", vec!["ann".into()])
        .await
        .unwrap();
    r.store
        .set_group_members("team", vec!["a".into(), "b".into()])
        .await
        .unwrap();
    for (uid, body, code) in [
        // The word filter first.
        (
            "a",
            json!({"to": "b", "body": "spam"}),
            ErrorCode::BlockedContent,
        ),
        // Who may write there comes before the filter's refusal, and before the hook.
        (
            "a",
            json!({"conv": "d:b~c", "body": 1}),
            ErrorCode::Forbidden,
        ),
        (
            "x",
            json!({"conv": "s:shop~c", "body": "spam"}),
            ErrorCode::Forbidden,
        ),
        (
            "x",
            json!({"conv": "s:shop~c", "body": 1}),
            ErrorCode::Forbidden,
        ),
        ("c", json!({"shop": "nope", "body": 1}), ErrorCode::NotFound),
    ] {
        let err =
            r.m.send_and_wait(&who(uid), req(body.clone()))
                .await
                .unwrap_err();
        assert_eq!(err.code(), code, "{body}");
    }
    assert!(hook.asked.lock().unwrap().is_empty());
    // Groups are not asked about (`applies`); a customer's message to a shop is.
    send(&r.m, "a", json!({"conv": "g:team", "body": 1})).await;
    assert!(hook.asked.lock().unwrap().is_empty());
    send(&r.m, "c", json!({"shop": "shop", "body": 1})).await;
    assert_eq!(hook.asked.lock().unwrap()[0].0, "s:shop~c");
}

#[tokio::test]
async fn a_refused_first_message_opens_no_service_conversation() {
    let (r, hook) = hooked(Verdict::Reject("no".into()));
    r.store
        .set_shop_agents("shop", vec!["ann".into()])
        .await
        .unwrap();
    r.online.set("ann", true);
    let err =
        r.m.send_and_wait(&who("c"), req(json!({"shop": "shop", "body": 1})))
            .await;
    assert!(err.is_err());
    assert_eq!(
        r.store.service("s:shop~c").await.unwrap(),
        None,
        "not opened"
    );
    assert_eq!(r.store.agent_loads(&["ann".into()]).await.unwrap(), [0]);
    set(&hook, Verdict::Allow);
    send(&r.m, "c", json!({"shop": "shop", "body": 1})).await;
    assert_eq!(r.store.agent_loads(&["ann".into()]).await.unwrap(), [1]);
}

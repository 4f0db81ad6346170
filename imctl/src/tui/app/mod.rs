//! The console's state, and what keys and server answers do to it.
//!
//! Everything here is plain data and pure functions of it: no I/O, no clock (the loop
//! sets [`App::now_ms`]), no terminal. Keys come in as crossterm `KeyEvent`s and come
//! out, when they ask the server for something, as [`Action`]s that the loop in
//! `event` carries out; the answers come back through the `on_*` methods. This is what
//! lets `ui` be tested on a `TestBackend` from states built by hand.
//!
//! This file holds the state and what server answers do to it; `keys.rs` holds what
//! keys do to it (per tab: navigation, search, the blacklist form, the tail's picker).

use std::collections::VecDeque;
use std::time::Duration;

use shared::admin::{
    AddBlacklist, BlacklistEntry, BlacklistKind, ClusterInfo, ConnectionInfo, ShopStats,
};
use shared::protocol::Message;

use crate::client::{ClientError, ErrorKind};

mod keys;

/// Samples of the cluster's messages per second kept for the sparkline (one a second).
pub const RATE_HISTORY: usize = 300;
/// Messages the tail view keeps.
pub const TAIL_KEEP: usize = 500;
/// How long a flash message stays.
pub const FLASH_MS: i64 = 5_000;

/// The console's tabs, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Nodes, connections, message rate, acks pending, retransmits.
    Dashboard,
    /// Live connections: search, kick.
    Connections,
    /// Blacklist entries: add, remove.
    Blacklist,
    /// A conversation, live.
    Tail,
    /// Customer service: per shop, its agents' availability and load, the queue,
    /// first-response times and ratings.
    Service,
}

impl Tab {
    /// Every tab, in order.
    pub const ALL: [Tab; 5] = [
        Tab::Dashboard,
        Tab::Connections,
        Tab::Blacklist,
        Tab::Tail,
        Tab::Service,
    ];

    /// Its title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Dashboard => "Dashboard",
            Tab::Connections => "Connections",
            Tab::Blacklist => "Blacklist",
            Tab::Tail => "Tail",
            Tab::Service => "Service",
        }
    }

    /// Its position in [`Tab::ALL`].
    pub fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }

    fn step(self, by: isize) -> Tab {
        let n = Tab::ALL.len() as isize;
        Tab::ALL[(self.index() as isize + by).rem_euclid(n) as usize]
    }
}

/// Whether the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// No answer yet.
    Connecting,
    /// The last poll was answered.
    Up,
    /// The last poll failed; polling goes on.
    Down {
        /// Unreachable, or refused for another reason (a wrong token).
        kind: ErrorKind,
        /// The error, in one line.
        error: String,
    },
}

/// A short-lived message on the status line: the outcome of a kick, an add, a remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// What to say.
    pub text: String,
    /// Whether it is bad news.
    pub error: bool,
    /// When it was said, unix ms.
    pub at_ms: i64,
}

/// The connections tab.
#[derive(Debug, Clone, Default)]
pub struct ConnsView {
    /// The connections fetched last.
    pub list: Vec<ConnectionInfo>,
    /// More connections exist than were fetched.
    pub more: bool,
    /// The uid search text.
    pub search: String,
    /// Keys go to the search text.
    pub editing: bool,
    /// Index into [`ConnsView::visible`].
    pub selected: usize,
    /// A kick waiting for y/n: the uid.
    pub confirm: Option<String>,
}

impl ConnsView {
    /// The connections that match the search (a substring of the uid, any case).
    pub fn visible(&self) -> Vec<&ConnectionInfo> {
        let needle = self.search.to_lowercase();
        self.list
            .iter()
            .filter(|c| c.uid.to_lowercase().contains(&needle))
            .collect()
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.visible().len().saturating_sub(1));
    }
}

/// A field of the blacklist form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormField {
    /// uid or ip.
    Kind,
    /// The uid, address or range.
    Value,
    /// How long (`1h`), blank for ever.
    Ttl,
    /// Why.
    Reason,
}

impl FormField {
    const ALL: [FormField; 4] = [
        FormField::Kind,
        FormField::Value,
        FormField::Ttl,
        FormField::Reason,
    ];

    fn step(self, by: isize) -> FormField {
        let i = FormField::ALL.iter().position(|f| *f == self).unwrap_or(0) as isize;
        FormField::ALL[(i + by).rem_euclid(4) as usize]
    }
}

/// The form that adds a blacklist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlacklistForm {
    /// uid or ip.
    pub kind: BlacklistKind,
    /// The uid, address or range.
    pub value: String,
    /// The ttl as typed.
    pub ttl: String,
    /// The reason as typed.
    pub reason: String,
    /// Where keys go.
    pub field: FormField,
    /// Why the last submit was refused.
    pub error: Option<String>,
}

impl Default for BlacklistForm {
    fn default() -> Self {
        Self {
            kind: BlacklistKind::Uid,
            value: String::new(),
            ttl: String::new(),
            reason: String::new(),
            field: FormField::Value,
            error: None,
        }
    }
}

impl BlacklistForm {
    /// The request the form describes, or why it cannot be sent.
    pub fn request(&self) -> Result<AddBlacklist, String> {
        let value = self.value.trim();
        if value.is_empty() {
            return Err("value is empty".into());
        }
        let ttl = self.ttl.trim();
        let ttl_s = if ttl.is_empty() {
            None
        } else {
            let d = humantime::parse_duration(ttl)
                .map_err(|e| format!("ttl {ttl:?}: {e} (try 90s, 1h, 7d)"))?;
            if d < Duration::from_secs(1) {
                return Err("ttl must be at least 1s".into());
            }
            Some(d.as_secs())
        };
        let reason = self.reason.trim();
        Ok(AddBlacklist {
            kind: self.kind,
            value: value.to_owned(),
            ttl_s,
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
        })
    }

    fn text_mut(&mut self) -> Option<&mut String> {
        match self.field {
            FormField::Kind => None,
            FormField::Value => Some(&mut self.value),
            FormField::Ttl => Some(&mut self.ttl),
            FormField::Reason => Some(&mut self.reason),
        }
    }

    fn toggle_kind(&mut self) {
        self.kind = match self.kind {
            BlacklistKind::Uid => BlacklistKind::Ip,
            BlacklistKind::Ip => BlacklistKind::Uid,
        };
    }
}

/// The blacklist tab.
#[derive(Debug, Clone, Default)]
pub struct BlacklistView {
    /// The live entries fetched last.
    pub entries: Vec<BlacklistEntry>,
    /// Index into `entries`.
    pub selected: usize,
    /// The add form, while open.
    pub form: Option<BlacklistForm>,
    /// A removal waiting for y/n.
    pub confirm: Option<(BlacklistKind, String)>,
}

/// What the service poll brings: the figures of the first shops, and how many shops
/// there are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServicePoll {
    /// The figures of the shops polled, by name.
    pub shops: Vec<ShopStats>,
    /// Every shop the server has (more than `shops.len()` past the poll's limit).
    pub total: usize,
}

/// The service tab.
#[derive(Debug, Clone, Default)]
pub struct ServiceView {
    /// The last poll's answer; `None` before the first.
    pub poll: Option<ServicePoll>,
    /// Index into the polled shops; its agents show below them.
    pub selected: usize,
}

impl ServiceView {
    /// The shops' figures, empty before the first answer.
    pub fn shops(&self) -> &[ShopStats] {
        self.poll.as_ref().map_or(&[], |p| &p.shops)
    }

    /// The selected shop's figures.
    pub fn current(&self) -> Option<&ShopStats> {
        self.shops().get(self.selected)
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.shops().len().saturating_sub(1));
    }
}

/// Where the tail's stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailState {
    /// No conversation picked.
    Idle,
    /// Opening the stream.
    Connecting,
    /// Following.
    Live,
    /// The stream broke; reconnecting from the next seq.
    Lost(String),
    /// The server refused it (unknown conversation, bad token); not retried.
    Failed(String),
}

/// The tail tab.
#[derive(Debug, Clone)]
pub struct TailView {
    /// The conversation followed.
    pub conv: Option<String>,
    /// The conversation id being typed, while the prompt is open.
    pub input: Option<String>,
    /// The latest messages, oldest first.
    pub msgs: VecDeque<Message>,
    /// The stream's state.
    pub state: TailState,
    /// Bumped at each start and stop, so that events of an older stream are dropped.
    pub generation: u64,
}

impl Default for TailView {
    fn default() -> Self {
        Self {
            conv: None,
            input: None,
            msgs: VecDeque::new(),
            state: TailState::Idle,
            generation: 0,
        }
    }
}

/// What the tail's stream task reports.
#[derive(Debug, Clone)]
pub enum TailEvent {
    /// The server took the stream.
    Live,
    /// A message.
    Msg(Message),
    /// The stream broke; the task retries.
    Lost(String),
    /// The server refused the stream; the task stopped.
    Failed(String),
}

/// What a key asks the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Poll now rather than at the next tick.
    Refresh,
    /// Disconnect every device of the uid.
    Kick(String),
    /// Add the entry.
    AddBlacklist(AddBlacklist),
    /// Remove the entry.
    RemoveBlacklist(BlacklistKind, String),
    /// Follow this conversation (stopping any other).
    StartTail(String),
    /// Stop following.
    StopTail,
}

/// The whole console.
#[derive(Debug, Clone)]
pub struct App {
    /// The server's URL, for the status line.
    pub server: String,
    /// The tab shown.
    pub tab: Tab,
    /// Whether the server answers.
    pub link: Link,
    /// Now, unix ms, as the loop last set it; every relative time is against it.
    pub now_ms: i64,
    /// When the server last answered.
    pub last_ok_ms: Option<i64>,
    /// The cluster as last polled.
    pub cluster: Option<ClusterInfo>,
    /// The cluster's messages per second, one sample per poll, oldest first.
    pub rates: VecDeque<u64>,
    /// The connections tab.
    pub conns: ConnsView,
    /// The blacklist tab.
    pub blacklist: BlacklistView,
    /// The tail tab.
    pub tail: TailView,
    /// The service tab.
    pub service: ServiceView,
    /// The latest outcome to show.
    pub flash: Option<Flash>,
    /// `q` was pressed.
    pub quit: bool,
}

impl App {
    /// A console for `server`, before any answer.
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            tab: Tab::Dashboard,
            link: Link::Connecting,
            now_ms: 0,
            last_ok_ms: None,
            cluster: None,
            rates: VecDeque::new(),
            conns: ConnsView::default(),
            blacklist: BlacklistView::default(),
            tail: TailView::default(),
            service: ServiceView::default(),
            flash: None,
            quit: false,
        }
    }

    /// Whether a text field or a question has the keyboard (so `q` types a `q`).
    pub fn capturing(&self) -> bool {
        match self.tab {
            Tab::Dashboard | Tab::Service => false,
            Tab::Connections => self.conns.editing || self.conns.confirm.is_some(),
            Tab::Blacklist => self.blacklist.form.is_some() || self.blacklist.confirm.is_some(),
            Tab::Tail => self.tail.input.is_some(),
        }
    }

    /// The flash, while it is fresh.
    pub fn current_flash(&self) -> Option<&Flash> {
        self.flash
            .as_ref()
            .filter(|f| self.now_ms.saturating_sub(f.at_ms) < FLASH_MS)
    }

    /// Says `text` on the status line for a while.
    pub fn say(&mut self, text: impl Into<String>, error: bool) {
        self.flash = Some(Flash {
            text: text.into(),
            error,
            at_ms: self.now_ms,
        });
    }

    /// The cluster poll's answer.
    pub fn on_cluster(&mut self, answer: Result<ClusterInfo, ClientError>) {
        match answer {
            Ok(cluster) => {
                self.link = Link::Up;
                self.last_ok_ms = Some(self.now_ms);
                let rate = cluster.nodes.iter().map(|n| n.committed_per_s).sum();
                if self.rates.len() == RATE_HISTORY {
                    self.rates.pop_front();
                }
                self.rates.push_back(rate);
                self.cluster = Some(cluster);
            }
            Err(e) => self.link_down(&e),
        }
    }

    fn link_down(&mut self, e: &ClientError) {
        self.link = Link::Down {
            kind: e.kind(),
            error: e.to_string(),
        };
    }

    /// The connections poll's answer: the list, and whether more exist.
    pub fn on_conns(&mut self, answer: Result<(Vec<ConnectionInfo>, bool), ClientError>) {
        match answer {
            Ok((list, more)) => {
                self.conns.list = list;
                self.conns.more = more;
                self.conns.clamp();
            }
            // Unreachable shows on the banner; say anything else here.
            Err(e) if e.kind() == ErrorKind::Unreachable => self.link_down(&e),
            Err(e) => self.say(format!("connections: {e}"), true),
        }
    }

    /// The blacklist poll's answer.
    pub fn on_blacklist(&mut self, answer: Result<Vec<BlacklistEntry>, ClientError>) {
        match answer {
            Ok(entries) => {
                let v = &mut self.blacklist;
                v.entries = entries;
                v.selected = v.selected.min(v.entries.len().saturating_sub(1));
            }
            Err(e) if e.kind() == ErrorKind::Unreachable => self.link_down(&e),
            Err(e) => self.say(format!("blacklist: {e}"), true),
        }
    }

    /// The service poll's answer; the selection stays on the same shop when it is
    /// still there.
    pub fn on_service(&mut self, answer: Result<ServicePoll, ClientError>) {
        match answer {
            Ok(poll) => {
                let v = &mut self.service;
                let was = v.current().map(|s| s.shop.clone());
                if let Some(i) = was.and_then(|name| poll.shops.iter().position(|s| s.shop == name))
                {
                    v.selected = i;
                }
                v.poll = Some(poll);
                v.clamp();
            }
            Err(e) if e.kind() == ErrorKind::Unreachable => self.link_down(&e),
            Err(e) => self.say(format!("service: {e}"), true),
        }
    }

    /// What the tail's stream of `generation` reports; older streams are ignored.
    pub fn on_tail(&mut self, generation: u64, event: TailEvent) {
        if generation != self.tail.generation || self.tail.conv.is_none() {
            return;
        }
        let t = &mut self.tail;
        match event {
            TailEvent::Live => t.state = TailState::Live,
            TailEvent::Msg(m) => {
                t.state = TailState::Live;
                if t.msgs.len() == TAIL_KEEP {
                    t.msgs.pop_front();
                }
                t.msgs.push_back(m);
            }
            TailEvent::Lost(e) => t.state = TailState::Lost(e),
            TailEvent::Failed(e) => t.state = TailState::Failed(e),
        }
    }

    /// The outcome of a kick, an add or a remove.
    pub fn on_done(&mut self, outcome: Result<String, ClientError>) {
        match outcome {
            Ok(text) => self.say(text, false),
            Err(e) => self.say(e.to_string(), true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use shared::token::Platform;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn type_str(app: &mut App, s: &str) {
        for c in s.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    fn conn(uid: &str, device: &str) -> ConnectionInfo {
        ConnectionInfo {
            uid: uid.into(),
            device: device.into(),
            platform: Platform::Web,
            node: "imd-1".into(),
            remote: "127.0.0.1:1".into(),
            connected_at: 0,
            unacked: 0,
        }
    }

    #[test]
    fn tabs_switch_and_q_quits() {
        let mut app = App::new("http://x");
        assert_eq!(app.on_key(key(KeyCode::Tab)), Some(Action::Refresh));
        assert_eq!(app.tab, Tab::Connections);
        app.on_key(key(KeyCode::BackTab));
        app.on_key(key(KeyCode::BackTab));
        assert_eq!(app.tab, Tab::Service);
        app.on_key(key(KeyCode::Left));
        assert_eq!(app.tab, Tab::Tail);
        assert_eq!(
            app.on_key(key(KeyCode::Char('5'))),
            Some(Action::Refresh),
            "a tab polls what it shows at once"
        );
        assert_eq!(app.tab, Tab::Service);
        app.on_key(key(KeyCode::Char('3')));
        assert_eq!(app.tab, Tab::Blacklist);
        app.on_key(key(KeyCode::Char('q')));
        assert!(app.quit);

        let mut app = App::new("http://x");
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(app.quit);
    }

    #[test]
    fn search_then_kick_with_confirmation() {
        let mut app = App::new("http://x");
        app.on_conns(Ok((
            vec![
                conn("alice", "laptop"),
                conn("bob", "phone"),
                conn("carol", "pc"),
            ],
            false,
        )));
        app.on_key(key(KeyCode::Char('2')));
        app.on_key(key(KeyCode::Char('/')));
        // While searching, q is a letter, not quit.
        type_str(&mut app, "qo");
        assert!(!app.quit);
        assert!(app.conns.visible().is_empty());
        app.on_key(key(KeyCode::Backspace));
        app.on_key(key(KeyCode::Backspace));
        type_str(&mut app, "O");
        assert_eq!(app.conns.visible().len(), 2, "bob and carol");
        app.on_key(key(KeyCode::Enter));
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.on_key(key(KeyCode::Char('k'))), None);
        assert_eq!(app.conns.confirm.as_deref(), Some("carol"));
        // n cancels.
        assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
        assert_eq!(app.conns.confirm, None);
        app.on_key(key(KeyCode::Char('k')));
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            Some(Action::Kick("carol".into()))
        );
        // The list shrinks under the selection: it stays in range.
        app.on_conns(Ok((vec![conn("bob", "phone")], false)));
        assert_eq!(app.conns.selected, 0);
    }

    #[test]
    fn the_blacklist_form_validates_then_submits() {
        let mut app = App::new("http://x");
        app.on_key(key(KeyCode::Char('3')));
        app.on_key(key(KeyCode::Char('a')));
        assert_eq!(app.on_key(key(KeyCode::Enter)), None);
        assert_eq!(
            app.blacklist.form.as_ref().unwrap().error.as_deref(),
            Some("value is empty")
        );
        type_str(&mut app, "10.1.0.0/16");
        app.on_key(key(KeyCode::BackTab)); // to Kind
        app.on_key(key(KeyCode::Char(' '))); // uid -> ip
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Tab)); // to Ttl
        type_str(&mut app, "soon");
        app.on_key(key(KeyCode::Enter));
        assert!(
            app.blacklist
                .form
                .as_ref()
                .unwrap()
                .error
                .as_ref()
                .unwrap()
                .contains("ttl")
        );
        for _ in 0..4 {
            app.on_key(key(KeyCode::Backspace));
        }
        type_str(&mut app, "1h");
        app.on_key(key(KeyCode::Tab));
        type_str(&mut app, "scraper q");
        assert!(!app.quit);
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Action::AddBlacklist(AddBlacklist {
                kind: BlacklistKind::Ip,
                value: "10.1.0.0/16".into(),
                ttl_s: Some(3600),
                reason: Some("scraper q".into()),
            }))
        );
        assert!(app.blacklist.form.is_none());

        app.on_blacklist(Ok(vec![BlacklistEntry {
            kind: BlacklistKind::Uid,
            value: "mallory".into(),
            reason: None,
            expires_at: None,
        }]));
        app.on_key(key(KeyCode::Char('d')));
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            Some(Action::RemoveBlacklist(
                BlacklistKind::Uid,
                "mallory".into()
            ))
        );
    }

    #[test]
    fn the_tail_follows_the_latest_pick_only() {
        let mut app = App::new("http://x");
        app.on_key(key(KeyCode::Char('4')));
        app.on_key(key(KeyCode::Char('c')));
        type_str(&mut app, "d:a~b");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Action::StartTail("d:a~b".into()))
        );
        let generation = app.tail.generation;
        let msg = |seq: u64| Message {
            id: seq.to_string(),
            conv: "d:a~b".into(),
            seq,
            from: "a".into(),
            body: Some(serde_json::json!("hi")),
            ts: 0,
            cid: None,
            ..Default::default()
        };
        app.on_tail(generation, TailEvent::Msg(msg(1)));
        app.on_tail(generation - 1, TailEvent::Msg(msg(99)));
        assert_eq!(app.tail.msgs.len(), 1);
        assert_eq!(app.tail.state, TailState::Live);
        assert_eq!(app.on_key(key(KeyCode::Char('x'))), Some(Action::StopTail));
        app.on_tail(generation, TailEvent::Msg(msg(2)));
        assert_eq!(app.tail.msgs.len(), 1, "a stopped stream is ignored");
    }

    #[test]
    fn the_service_selection_follows_its_shop() {
        let stats = |names: &[&str]| ServicePoll {
            shops: names
                .iter()
                .map(|n| ShopStats {
                    shop: (*n).into(),
                    agents_online: 0,
                    agents_available: 0,
                    open: 0,
                    waiting: 0,
                    max_open: 0,
                    first_response_ms: shared::admin::FirstResponse {
                        count: 0,
                        p50: None,
                        p90: None,
                        p99: None,
                    },
                    rating: shared::admin::RatingStats {
                        count: 0,
                        avg: None,
                    },
                    agents: vec![],
                })
                .collect(),
            total: names.len(),
        };
        let mut app = App::new("http://x");
        app.on_key(key(KeyCode::Char('5')));
        assert!(!app.capturing(), "q quits from the service tab");
        app.on_service(Ok(stats(&["s1", "s2", "s3"])));
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Down));
        assert_eq!(
            app.service.current().unwrap().shop,
            "s3",
            "stops at the end"
        );
        app.on_key(key(KeyCode::Up));
        assert_eq!(app.service.current().unwrap().shop, "s2");
        // A shop added before it: the selection stays on s2.
        app.on_service(Ok(stats(&["s0", "s1", "s2", "s3"])));
        assert_eq!(app.service.current().unwrap().shop, "s2");
        // s2 is gone: the selection stays in range.
        app.on_service(Ok(stats(&["s0"])));
        assert_eq!(app.service.current().unwrap().shop, "s0");
        // A refusal other than unreachable is said, and the last figures stay.
        app.on_service(Err(ClientError::NotFound("no such admin endpoint".into())));
        assert!(app.current_flash().unwrap().text.starts_with("service: "));
        assert_eq!(app.service.shops().len(), 1);
        app.on_service(Err(ClientError::Unreachable {
            url: "http://x".into(),
            detail: "refused".into(),
        }));
        assert!(matches!(app.link, Link::Down { .. }));
    }

    #[test]
    fn the_link_follows_the_polls() {
        let mut app = App::new("http://x");
        app.on_cluster(Err(ClientError::Unreachable {
            url: "http://x".into(),
            detail: "refused".into(),
        }));
        assert!(matches!(
            app.link,
            Link::Down {
                kind: ErrorKind::Unreachable,
                ..
            }
        ));
        app.on_cluster(Ok(ClusterInfo { nodes: vec![] }));
        assert_eq!(app.link, Link::Up);
        assert_eq!(app.rates.len(), 1);
    }
}

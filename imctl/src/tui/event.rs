//! The console's loop: it sets the terminal up (raw mode, alternate screen) and always
//! restores it, then waits on three things at once: keys, a one-second tick that polls
//! the server, and the answers of the tasks it spawned (polls, kicks, the tail stream).
//!
//! It owns every side effect of the TUI; what the effects mean for the state is
//! [`App`]'s business, and what the screen shows is `ui`'s. A poll that fails only sets
//! the banner: the next tick polls again, which is how the console survives the server
//! going away and coming back.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use crossterm::event::{Event as TermEvent, EventStream};
use futures_util::StreamExt;
use shared::admin::{BlacklistEntry, ClusterInfo, ConnectionInfo};
use shared::ids::is_valid_id;
use shared::time::now_ms;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::app::{Action, App, ServicePoll, Tab, TailEvent};
use super::ui;
use crate::client::{Client, ClientError, ErrorKind};

/// How often the console polls.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long one poll may take before the server counts as unreachable; short, so that
/// the banner comes up quickly when a server hangs.
const POLL_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections fetched for the connections tab: one page (a search narrows it).
const CONNS_SHOWN: usize = 1000;
/// Wait before the tail reconnects.
const TAIL_RETRY: Duration = Duration::from_secs(1);
/// Shops whose figures the service tab polls, by name: one call each per second, so
/// a server with many shops is not asked for all of them every second.
const SHOPS_SHOWN: usize = 50;

/// What the spawned tasks report to the loop.
enum Event {
    Cluster(Result<ClusterInfo, ClientError>),
    Conns(Result<(Vec<ConnectionInfo>, bool), ClientError>),
    Blacklist(Result<Vec<BlacklistEntry>, ClientError>),
    Service(Result<ServicePoll, ClientError>),
    Tail(u64, TailEvent),
    Done(Result<String, ClientError>),
}

/// Polls in flight, so that a slow server does not pile them up.
#[derive(Default)]
struct Busy {
    cluster: bool,
    conns: bool,
    blacklist: bool,
    service: bool,
}

/// Runs the console until `q`; restores the terminal whatever happens.
pub async fn run(client: Client) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!("imctl tui needs a terminal; in scripts use the other commands");
    }
    let client = client.with_request_timeout(POLL_TIMEOUT);
    // try_init also installs a panic hook that restores the terminal first.
    let terminal = ratatui::try_init().context("setting up the terminal");
    let result = match terminal {
        Ok(mut terminal) => run_loop(&mut terminal, client).await,
        Err(e) => Err(e),
    };
    let restored = ratatui::try_restore().context("restoring the terminal");
    result.and(restored)
}

async fn run_loop(terminal: &mut ratatui::DefaultTerminal, client: Client) -> anyhow::Result<()> {
    let mut app = App::new(client.server());
    // Bounded: tasks wait when the loop is behind, rather than queueing without limit.
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut busy = Busy::default();
    let mut tail: Option<JoinHandle<()>> = None;
    // SIGTERM and SIGHUP (the terminal closed) quit like `q`, so the terminal is restored.
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let result = loop {
        app.now_ms = now_ms();
        if let Err(e) = terminal.draw(|f| ui::draw(f, &app)) {
            break Err(e).context("drawing");
        }
        if app.quit {
            break Ok(());
        }
        tokio::select! {
            _ = tick.tick() => poll(&client, &app, &tx, &mut busy),
            _ = term.recv() => break Ok(()),
            _ = hangup.recv() => break Ok(()),
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(key))) => {
                    if let Some(action) = app.on_key(key) {
                        act(action, &client, &app, &tx, &mut busy, &mut tail);
                    }
                }
                // A resize (or anything else) just redraws.
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e).context("reading the keyboard"),
                None => break Ok(()),
            },
            Some(event) = rx.recv() => {
                app.now_ms = now_ms();
                let mut refresh = apply(&mut app, event, &mut busy);
                // Take whatever else is ready before drawing: one frame per batch.
                while let Ok(event) = rx.try_recv() {
                    refresh |= apply(&mut app, event, &mut busy);
                }
                if refresh {
                    poll(&client, &app, &tx, &mut busy);
                }
            }
        }
    };
    if let Some(t) = tail {
        t.abort();
    }
    result
}

fn signal(kind: tokio::signal::unix::SignalKind) -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("listening for signals")
}

/// Applies a task's report; true when the lists should be fetched again.
fn apply(app: &mut App, event: Event, busy: &mut Busy) -> bool {
    match event {
        Event::Cluster(r) => {
            busy.cluster = false;
            app.on_cluster(r);
        }
        Event::Conns(r) => {
            busy.conns = false;
            app.on_conns(r);
        }
        Event::Blacklist(r) => {
            busy.blacklist = false;
            app.on_blacklist(r);
        }
        Event::Service(r) => {
            busy.service = false;
            app.on_service(r);
        }
        Event::Tail(generation, e) => app.on_tail(generation, e),
        Event::Done(r) => {
            app.on_done(r);
            return true;
        }
    }
    false
}

/// Spawns the polls the visible tab needs, unless one is still running.
fn poll(client: &Client, app: &App, tx: &mpsc::Sender<Event>, busy: &mut Busy) {
    if !busy.cluster {
        busy.cluster = true;
        let (c, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(Event::Cluster(c.cluster().await)).await;
        });
    }
    if app.tab == Tab::Connections && !busy.conns {
        busy.conns = true;
        let (c, tx) = (client.clone(), tx.clone());
        let search = app.conns.search.trim().to_owned();
        tokio::spawn(async move {
            let _ = tx.send(Event::Conns(fetch_conns(&c, &search).await)).await;
        });
    }
    if app.tab == Tab::Blacklist && !busy.blacklist {
        busy.blacklist = true;
        let (c, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(Event::Blacklist(c.blacklist().await)).await;
        });
    }
    if app.tab == Tab::Service && !busy.service {
        busy.service = true;
        let (c, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(Event::Service(fetch_service(&c).await)).await;
        });
    }
}

/// The figures of the first [`SHOPS_SHOWN`] shops, by name.
async fn fetch_service(client: &Client) -> Result<ServicePoll, ClientError> {
    let mut names = client.shops().await?;
    names.sort();
    let total = names.len();
    names.truncate(SHOPS_SHOWN);
    let shops = client.shops_stats(&names).await?;
    Ok(ServicePoll { shops, total })
}

/// The first page of connections, plus, when the search is a whole uid, that user's
/// devices even if they are beyond the first page.
async fn fetch_conns(
    client: &Client,
    search: &str,
) -> Result<(Vec<ConnectionInfo>, bool), ClientError> {
    let page = client.connections_page(None, None, CONNS_SHOWN).await?;
    let mut list = page.connections;
    if is_valid_id(search) {
        for c in client.connections(Some(search)).await? {
            if !list.iter().any(|x| x.uid == c.uid && x.device == c.device) {
                list.push(c);
            }
        }
        list.sort_by(|a, b| (&a.uid, &a.device).cmp(&(&b.uid, &b.device)));
    }
    Ok((list, page.next.is_some()))
}

/// Carries out what a key asked for.
fn act(
    action: Action,
    client: &Client,
    app: &App,
    tx: &mpsc::Sender<Event>,
    busy: &mut Busy,
    tail: &mut Option<JoinHandle<()>>,
) {
    let (c, tx2) = (client.clone(), tx.clone());
    match action {
        Action::Refresh => poll(client, app, tx, busy),
        Action::Kick(uid) => {
            tokio::spawn(async move {
                let r = c.kick(&uid).await.map(|k| {
                    let s = if k.kicked == 1 { "" } else { "s" };
                    format!("kicked {} device{s} of {uid}", k.kicked)
                });
                let _ = tx2.send(Event::Done(r)).await;
            });
        }
        Action::AddBlacklist(req) => {
            tokio::spawn(async move {
                let r = c
                    .blacklist_add(&req)
                    .await
                    .map(|e| format!("blacklisted {} {}", e.kind.as_str(), e.value));
                let _ = tx2.send(Event::Done(r)).await;
            });
        }
        Action::RemoveBlacklist(kind, value) => {
            tokio::spawn(async move {
                let r = c
                    .blacklist_remove(kind, &value)
                    .await
                    .map(|()| format!("removed {} {value} from the blacklist", kind.as_str()));
                let _ = tx2.send(Event::Done(r)).await;
            });
        }
        Action::StartTail(conv) => {
            if let Some(t) = tail.take() {
                t.abort();
            }
            *tail = Some(tokio::spawn(follow(c, conv, app.tail.generation, tx2)));
        }
        Action::StopTail => {
            if let Some(t) = tail.take() {
                t.abort();
            }
        }
    }
}

/// Follows `conv` until aborted, reconnecting from the next seq when the stream breaks.
async fn follow(client: Client, conv: String, generation: u64, tx: mpsc::Sender<Event>) {
    let send = |e: TailEvent| {
        let tx = tx.clone();
        async move { tx.send(Event::Tail(generation, e)).await.is_ok() }
    };
    let mut next: Option<u64> = None;
    loop {
        let lost = match client.stream(&conv, next).await {
            Ok(mut stream) => {
                if !send(TailEvent::Live).await {
                    return;
                }
                loop {
                    match stream.next().await {
                        Some(Ok(msg)) => {
                            next = Some(msg.seq + 1);
                            if !send(TailEvent::Msg(msg)).await {
                                return;
                            }
                        }
                        Some(Err(e)) if e.kind() == ErrorKind::Unreachable => break e.to_string(),
                        Some(Err(e)) => {
                            send(TailEvent::Failed(e.to_string())).await;
                            return;
                        }
                        None => break "the server closed the stream".to_owned(),
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Unreachable => e.to_string(),
            Err(e) => {
                send(TailEvent::Failed(e.to_string())).await;
                return;
            }
        };
        if !send(TailEvent::Lost(lost)).await {
            return;
        }
        tokio::time::sleep(TAIL_RETRY).await;
    }
}

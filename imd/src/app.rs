//! Composition root: builds the store, the business layer and the roles, serves, and
//! shuts down in order.
//!
//! Without `--redis` every role runs in this process on the embedded store. With it,
//! the store is Redis, the dispatcher routes through the cluster's connection routes,
//! a worker serves RPC on `--rpc-listen`, and the node joins the cluster
//! ([`crate::cluster`]).
//!
//! Shutdown (SIGTERM or SIGINT): stop accepting and finish in-flight HTTP requests,
//! `kick` every session with reason `shutdown`, wait for the sessions (bounded by
//! `shutdown_grace`), then let the commit task commit what is queued, route and send
//! the pushes still queued, say goodbye to the other workers (so that they need not
//! look for pushes lost with this node), leave the cluster (deregister), and close the
//! store. Every acknowledged message is already durable before this starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::time::now_ms;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::business::admin::AdminDeps;
use crate::business::blacklist::Blacklist;
use crate::business::limits::{Limits, Rate};
use crate::business::messaging::Deps;
use crate::business::push::{Push, PushSettings};
use crate::business::retention::Retention;
use crate::business::words::Words;
use crate::business::{Admin, BeforeSend, Deliver, Messaging, NodeCard, Presence, PushRelay};
use crate::cluster::{Membership, RoutedPresence};
use crate::config::{Config, Role};
use crate::dispatch::{Direct, Routed, Workers};
use crate::gateway::bans::AuthBans;
use crate::gateway::{self, AppState, Shared};
use crate::hooks::before_send::HttpBeforeSend;
use crate::hooks::push::HttpPushRelay;
use crate::hooks::webhook::{self, Webhook, WebhookStore};
use crate::rpc::remote::WorkerServer;
use crate::secrets::Secrets;
use crate::store::{
    DirectoryStore, EmbeddedOptions, EmbeddedStore, IDEMPOTENCY_WINDOW_MS, MessageStore,
    NodeInfo as Registration, RedisStore,
};
use crate::worker::session::{SessionCtx, SessionSettings};
use crate::worker::{Clock, Hub};

/// Runs `imd serve` until SIGTERM or SIGINT.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn(signals(stop.clone()));
    serve_until(cfg, stop).await
}

/// How often a conversation's tail reads the store in cluster mode, where other nodes
/// commit too.
const CLUSTER_TAIL_POLL: Duration = Duration::from_millis(100);

/// A built node: every layer wired together, not yet listening.
pub struct App {
    /// The state the router serves from.
    pub state: AppState,
    /// Every worker this node reaches, its own hub included when it is a worker.
    workers: Arc<Workers>,
    /// The cluster's dispatcher, in cluster mode (drained at shutdown).
    routed: Option<Arc<Routed>>,
    store: Arc<dyn MessageStore>,
    /// The cluster's store and this node's registration, in cluster mode.
    cluster: Option<(Arc<RedisStore>, Registration)>,
    membership_stop: CancellationToken,
    commit_stop: CancellationToken,
    commit_task: tokio::task::JoinHandle<()>,
    background: CancellationToken,
    grace: Duration,
}

impl App {
    /// Opens the store and starts the commit task, the clock and the metrics upkeep.
    /// Sessions end when `stop` is cancelled. `listen` is the bound address, for the
    /// default node id.
    pub async fn build(
        cfg: &Config,
        listen: SocketAddr,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let secrets = Secrets::resolve(cfg)?;
        // Commits write the webhook outbox when there is a webhook.
        let webhook = webhook::Settings::from_config(cfg);
        let redis = match &cfg.redis {
            Some(url) => {
                let r = RedisStore::connect(url)
                    .await
                    .with_context(|| format!("connecting to Redis at {url}"))?
                    .with_idempotency_window(idempotency_window(cfg.retention));
                Some(Arc::new(if webhook.is_some() {
                    r.with_outbox()
                } else {
                    r
                }))
            }
            None => None,
        };
        let (store, dir, outbox): (
            Arc<dyn MessageStore>,
            Arc<dyn DirectoryStore>,
            Arc<dyn WebhookStore>,
        ) = match &redis {
            Some(r) => (r.clone(), r.clone(), r.clone()),
            None => {
                let options = EmbeddedOptions {
                    cache_bytes: cfg.store_cache_bytes,
                    quick_repair: cfg.store_quick_repair,
                    log: cfg.store_log,
                    outbox: webhook.is_some(),
                };
                let e = EmbeddedStore::open_with(&cfg.data_dir, options)
                    .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
                let e = Arc::new(e);
                (e.clone(), e.clone(), e)
            }
        };
        let background = CancellationToken::new();
        let metrics = crate::metrics::install(background.clone());
        let node_id = cfg
            .node_id
            .clone()
            .unwrap_or_else(|| default_node_id(cfg.redis.is_some(), listen));

        let blacklist = Arc::new(Blacklist::new());
        let words = Arc::new(
            Words::load(cfg.words_file.as_deref(), cfg.words_policy).map_err(anyhow::Error::msg)?,
        );
        let limits = Arc::new(Limits::new(
            Rate {
                per_second: cfg.send_rate,
                burst: cfg.send_burst,
            },
            Rate {
                per_second: cfg.connect_rate,
                burst: cfg.connect_burst,
            },
        ));
        let hub = Arc::new(
            Hub::new(cfg.outbox_capacity, node_id.clone(), blacklist.clone())
                .with_outbox_bytes(cfg.max_outbox_bytes),
        );
        // The devices of this worker start in the store's generation as it is now.
        let generation = store
            .verify_generation()
            .await
            .context("checking the store's generation")?;
        hub.observe_generation(&generation);
        if redis.is_some() {
            tokio::spawn(watch_generation(
                store.clone(),
                hub.clone(),
                background.clone(),
            ));
        }
        let is_worker = cfg.roles.contains(&Role::Worker);
        let workers = Arc::new(Workers::new(
            node_id.clone(),
            is_worker.then(|| hub.clone()),
            redis.clone(),
            secrets.link_key(),
        ));
        let routed = redis.as_ref().map(|r| {
            Arc::new(Routed::start(
                r.clone(),
                workers.clone(),
                background.clone(),
            ))
        });
        let (deliver, presence): (Arc<dyn Deliver>, Arc<dyn Presence>) = match (&redis, &routed) {
            (Some(r), Some(routed)) => (
                routed.clone(),
                Arc::new(RoutedPresence::new(r.clone(), workers.clone())),
            ),
            _ => (Arc::new(Direct::new(hub.clone())), hub.clone()),
        };
        let commit_stop = CancellationToken::new();
        let push = Push::new(dir.clone(), store.clone(), presence.clone());
        let before_send =
            HttpBeforeSend::from_config(cfg).map(|h| Arc::new(h) as Arc<dyn BeforeSend>);
        let deps = Deps {
            store: store.clone(),
            dir: dir.clone(),
            presence,
            deliver,
            blacklist: blacklist.clone(),
            words: words.clone(),
            limits: limits.clone(),
            recall_window: cfg.recall_window,
            before_send,
        };
        let (messaging, commit_task) = Messaging::start(
            deps,
            cfg.commit_batch,
            cfg.commit_lanes(),
            commit_stop.clone(),
        );
        // Each node pushes for what it commits, from its first commit on.
        if let Some(relay) = HttpPushRelay::from_config(cfg) {
            let settings = PushSettings {
                preview: cfg.push_preview,
                ..PushSettings::default()
            };
            let relay: Arc<dyn PushRelay> = Arc::new(relay);
            push.start(messaging.subscribe(), relay, settings, background.clone());
        }
        // The deliverer follows this node's commits: it runs where sends commit.
        let webhook = webhook
            .filter(|_| cfg.roles.contains(&Role::Gateway))
            .map(|settings| {
                Webhook::start(settings, outbox, messaging.subscribe(), background.clone())
            });
        let node = Arc::new(
            NodeCard::new(
                node_id,
                cfg.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                listen.to_string(),
                now_ms(),
            )
            .with_rpc_version(crate::rpc::rpc_version()),
        );
        let admin = Admin::new(AdminDeps {
            dir,
            blacklist,
            words,
            messaging: messaging.clone(),
            devices: workers.clone(),
            node: node.clone(),
            outbox_capacity: cfg.outbox_capacity,
            outbox_bytes: cfg.max_outbox_bytes,
            tail_poll: redis.is_some().then_some(CLUSTER_TAIL_POLL),
            stop: stop.clone(),
        });
        tokio::spawn(housekeeping(
            store.clone(),
            admin.clone(),
            limits.clone(),
            idempotency_window(cfg.retention),
            background.clone(),
        ));
        // Retention runs beside the commits on one node; in a cluster where the
        // sweeper does (the dispatchers).
        if let (Some(keep), Some(every)) = (cfg.retention, cfg.retention_interval())
            && (redis.is_none() || cfg.roles.contains(&Role::Dispatcher))
        {
            let retention = Retention::new(store.clone(), keep, every);
            tokio::spawn(retention.run(background.clone()));
        }

        let ping_interval = cfg.ping_interval();
        let clock = Clock::start(
            Clock::period_for(cfg.ack_timeout, ping_interval),
            background.clone(),
        );
        let settings = SessionSettings {
            ack_timeout: cfg.ack_timeout,
            ack_retries: cfg.ack_retries,
            idle_timeout: cfg.idle_timeout,
            ping_interval,
            max_unacked: cfg.max_unacked,
            max_unacked_bytes: cfg.max_outbox_bytes,
            write_timeout: cfg.write_timeout,
        };
        let sessions = Arc::new(SessionCtx {
            hub: hub.clone(),
            messaging: messaging.clone(),
            settings,
            clock,
            shutdown: stop,
        });
        let state = AppState::new(Shared {
            keys: secrets.token_keys(),
            admin_tokens: secrets.admin_tokens(),
            auth_bans: AuthBans::new(cfg.auth_fail_limit, cfg.auth_fail_window, cfg.auth_ban)
                .exempting(cfg.auth_ban_exempt.clone()),
            admin,
            limits,
            messaging,
            push,
            sessions,
            max_body: cfg.max_frame_bytes,
            body_timeout: cfg.idle_timeout,
            metrics,
            tracker: TaskTracker::new(),
            roles: cfg.roles.clone(),
            web: cfg.web,
            dev_tokens: cfg.dev_tokens,
            webhook,
        });
        tokio::spawn(sample_rate(
            state.messaging.clone(),
            node.clone(),
            background.clone(),
        ));

        let cluster = redis.map(|r| {
            let me = Registration {
                id: node.id.clone(),
                roles: node.roles.clone(),
                listen: node.listen.clone(),
                rpc: None,
                started_ms: node.started_at_ms,
                rpc_version: crate::rpc::rpc_version(),
            };
            (r, me)
        });
        Ok(Self {
            state,
            workers,
            routed,
            store,
            cluster,
            membership_stop: CancellationToken::new(),
            commit_stop,
            commit_task,
            background,
            grace: cfg.shutdown_grace,
        })
    }

    /// Loads what the caches start from (the blacklist). Call once before serving.
    pub async fn load(&self) -> anyhow::Result<()> {
        let n = self
            .state
            .admin
            .load_blacklist()
            .await
            .context("loading the blacklist")?;
        tracing::debug!(entries = n, "blacklist loaded");
        if self.state.dev_tokens {
            tracing::warn!(
                "--dev-tokens: POST /dev/v1/token mints a token for any uid to anyone who \
                 can reach this server; for trying the pages only, never in production"
            );
            self.state
                .admin
                .demo_shop()
                .await
                .context("setting up the demo shop")?;
        }
        Ok(())
    }

    /// In cluster mode: serves the worker's RPC on `rpc` (when this node is a worker)
    /// and joins the cluster. Returns the bound RPC address.
    pub async fn join(&mut self, rpc: Option<SocketAddr>) -> anyhow::Result<Option<SocketAddr>> {
        let Some((store, me)) = &mut self.cluster else {
            return Ok(None);
        };
        let mut bound = None;
        if let (Some(addr), Some(hub)) = (rpc, self.workers.local()) {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the RPC listener {addr}"))?;
            let local = listener.local_addr()?;
            let admin = self.state.admin.clone();
            let stats: Arc<dyn Fn() -> shared::admin::NodeInfo + Send + Sync> =
                Arc::new(move || admin.node_info());
            tokio::spawn(
                WorkerServer::new(hub.clone(), stats, self.workers.link_key().clone())
                    .run(listener, self.background.clone()),
            );
            me.rpc = Some(local.to_string());
            bound = Some(local);
        }
        let routed = self
            .routed
            .clone()
            .context("cluster mode without its dispatcher")?;
        Membership {
            store: store.clone(),
            me: me.clone(),
            workers: self.workers.clone(),
            dispatcher: routed,
            admin: self.state.admin.clone(),
            dispatcher_role: me.roles.iter().any(|r| r == "dispatcher"),
        }
        .start(self.membership_stop.clone())
        .await
        .context("joining the cluster")?;
        Ok(bound)
    }

    /// The HTTP and WebSocket routes.
    pub fn router(&self) -> axum::Router {
        gateway::router(self.state.clone())
    }

    /// After `stop` was cancelled and the listener closed: waits for the sessions, then
    /// commits what is queued and closes the store.
    pub async fn shutdown(self) {
        let tracker = &self.state.tracker;
        tracing::info!(
            sessions = self.state.sessions.hub.len(),
            "shutting down: closing sessions"
        );
        tracker.close();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = tracker.len(),
                "sessions still open after the grace period"
            );
        }
        self.commit_stop.cancel();
        if tokio::time::timeout(self.grace, self.commit_task)
            .await
            .is_err()
        {
            tracing::warn!("commit task did not finish within the grace period");
        }
        // Deliveries in flight free their conversations' leases for the other nodes.
        if let Some(webhook) = &self.state.webhook {
            webhook.shutdown(self.grace).await;
        }
        self.membership_stop.cancel();
        if let (Some((store, me)), Some(routed)) = (&self.cluster, &self.routed) {
            // Every push this node owes goes out, then each worker hears goodbye and
            // skips the catch-up it would otherwise run for this node's departure.
            let routed = tokio::time::timeout(self.grace, routed.finish()).await;
            if routed.is_ok() {
                let said = self.workers.goodbye(me.started_ms, GOODBYE_WAIT).await;
                tracing::info!(workers = said, "said goodbye");
            } else {
                tracing::warn!("pushes still being routed after the grace period; no goodbye");
            }
            Membership::leave(store, &me.id).await;
        }
        self.background.cancel();
        drop(self.store);
    }
}

/// How long shutdown waits for the workers to take this node's goodbye (behind the
/// deliveries still queued for them).
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

/// Runs `imd serve` until `stop` is cancelled.
pub async fn serve_until(cfg: Config, stop: CancellationToken) -> anyhow::Result<()> {
    raise_fd_limit();

    // Read before binding: a bad certificate stops the start with its error.
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(gateway::tls::acceptor(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let front = gateway::serve::Front {
        tls,
        proxy: cfg.proxy_protocol.then(|| cfg.proxy_from.clone().into()),
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let listen = listener.local_addr()?;
    let mut app = App::build(&cfg, listen, stop.clone()).await?;
    app.load().await?;
    let rpc = app.join(cfg.rpc_address()).await?;
    tokio::spawn(reload_on_sighup(app.state.admin.clone(), stop.clone()));
    let node_id = app.state.admin.node().id.clone();
    // The one machine-readable line on stdout; logs go to stderr.
    let mut ready = serde_json::json!({
        "event": "ready",
        "listen": listen.to_string(),
        "url": format!("{scheme}://{listen}"),
        "node_id": node_id,
    });
    if let Some(rpc) = rpc {
        ready["rpc"] = rpc.to_string().into();
    }
    println!("{ready}");
    tracing::info!(
        %listen,
        scheme,
        proxy_protocol = cfg.proxy_protocol,
        node_id,
        cluster = cfg.redis.is_some(),
        "imd serving"
    );

    gateway::serve::serve(
        listener,
        front,
        app.router(),
        cfg.idle_timeout,
        stop.clone(),
    )
    .await;
    // The listener is closed and HTTP requests are answered; sessions saw `stop` too.
    app.shutdown().await;
    tracing::info!("imd stopped");
    Ok(())
}

async fn signals(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    stop.cancel();
}

/// `imd-<port>` on one node; in a cluster, where several machines may use the same
/// port, `<hostname>-<port>`.
fn default_node_id(cluster: bool, listen: SocketAddr) -> String {
    let host = cluster
        .then(|| nix::unistd::gethostname().ok())
        .flatten()
        .and_then(|h| h.into_string().ok())
        .filter(|h| shared::ids::is_valid_id(&format!("{h}-{}", listen.port())));
    match host {
        Some(h) => format!("{h}-{}", listen.port()),
        None => format!("imd-{}", listen.port()),
    }
}

/// Raises the soft open-files limit to the hard one: each connection is a descriptor,
/// and axum's accept loop sleeps a whole second on EMFILE.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let raised = getrlimit(Resource::RLIMIT_NOFILE).and_then(|(soft, hard)| {
        if soft < hard {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        }
        Ok(hard)
    });
    match raised {
        Ok(n) => tracing::debug!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

/// Checks the store's generation once a second, so that a node with no commits of
/// its own also notices that Redis lost state, and closes its devices' connections.
async fn watch_generation(store: Arc<dyn MessageStore>, hub: Arc<Hub>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => break,
        }
        match store.read_generation().await {
            Ok(g) => {
                hub.observe_generation(&g);
            }
            Err(e) => tracing::debug!(error = %e, "store generation not checked"),
        }
    }
}

/// Samples the commit rate once a second, for the cluster view.
async fn sample_rate(messaging: Messaging, node: Arc<NodeCard>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut last = messaging.committed_total();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => break,
        }
        let now = messaging.committed_total();
        node.set_commit_rate(now - last);
        last = now;
    }
}

/// Reloads the words file on SIGHUP.
async fn reload_on_sighup(admin: Admin, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match admin.reload_words() {
                Ok(n) => tracing::info!(words = n, "SIGHUP: word list reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: word list not reloaded; the old one stays"),
            },
            _ = stop.cancelled() => break,
        }
    }
}

/// How long idempotency keys are kept: [`IDEMPOTENCY_WINDOW_MS`], or the retention
/// when it is shorter, since a key whose message retention removed deduplicates no more
/// (`docs/protocol.md`, *Retention and erasure*) and would only grow the store.
fn idempotency_window(retention: Option<Duration>) -> i64 {
    let retention = retention.map_or(i64::MAX, |r| {
        i64::try_from(r.as_millis()).unwrap_or(i64::MAX)
    });
    IDEMPOTENCY_WINDOW_MS.min(retention)
}

/// How often [`housekeeping`] runs.
const HOUSEKEEPING_TICK: Duration = Duration::from_secs(10);

/// Every how many housekeeping ticks idempotency keys past a window of `window_ms`
/// are expired: a tenth of the window, at most every ten minutes (the default 24 h
/// window) and at least every tick (a short retention's: a minute's keys, not ten
/// minutes' worth, then wait in the store).
fn expire_every(window_ms: i64) -> u64 {
    let tick_ms = HOUSEKEEPING_TICK.as_millis() as i64;
    (window_ms / 10 / tick_ms).clamp(1, 60) as u64
}

/// Periodic upkeep: idempotency keys past `window_ms` (see [`expire_every`]), expired
/// blacklist entries (every ten minutes), and idle rate-limiter keys (every ten
/// seconds).
async fn housekeeping(
    store: Arc<dyn MessageStore>,
    admin: Admin,
    limits: Arc<Limits>,
    window_ms: i64,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(HOUSEKEEPING_TICK);
    let expire = expire_every(window_ms);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => break,
        }
        limits.retain_recent();
        if ticks.is_multiple_of(expire) {
            match store.expire_idempotency(now_ms() - window_ms).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(expired = n, "idempotency keys expired"),
                Err(e) => tracing::warn!(error = %e, "expiring idempotency keys failed"),
            }
        }
        if ticks.is_multiple_of(60)
            && let Err(e) = admin.purge_blacklist().await
        {
            tracing::warn!(error = %e, "purging the blacklist failed");
        }
        ticks += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_live_no_longer_than_the_retention() {
        assert_eq!(idempotency_window(None), IDEMPOTENCY_WINDOW_MS);
        assert_eq!(idempotency_window(Some(Duration::from_secs(60))), 60_000);
        let longer = Duration::from_secs(48 * 3600);
        assert_eq!(idempotency_window(Some(longer)), IDEMPOTENCY_WINDOW_MS);
    }

    #[test]
    fn idempotency_keys_are_expired_a_tenth_of_their_window_apart() {
        // The 24 h window: every ten minutes (60 ticks of 10 s).
        assert_eq!(expire_every(IDEMPOTENCY_WINDOW_MS), 60);
        // A one-hour retention: every six minutes.
        assert_eq!(expire_every(3_600_000), 36);
        // A minute's: every tick, not ten minutes' worth of keys at a time.
        assert_eq!(expire_every(60_000), 1);
        assert_eq!(expire_every(1_000), 1);
    }
}

//! Configuration: one serde tree, filled from defaults < TOML file < `IMD_*` environment
//! < command-line flags.
//!
//! clap reads flags and the environment (each flag names its `IMD_*` variable), so
//! [`ServeArgs`] holds only what was given; [`Config::load`] lays it over the TOML file,
//! which lies over [`Config::default`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::business::blacklist::IpNet;

/// Secrets in the configuration; the type lives in `shared` so that imbench wraps its
/// flags in the same one.
pub use shared::secret::Secret;

/// A verification-only token key: a secret that signed tokens before a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OldTokenKey {
    /// The key id that tokens signed with it carry in their header; none: only tokens
    /// without a `kid` are checked against it.
    #[serde(default)]
    pub kid: Option<String>,
    /// The HS256 secret.
    pub secret: Secret,
}

impl std::str::FromStr for OldTokenKey {
    type Err = shared::secret::EmptySecret;

    /// `kid=secret`, or a bare `secret` (no key id). Secrets made by imd are hex, so
    /// the first `=` separates the two.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.split_once('=') {
            Some((kid, secret)) if !kid.is_empty() => OldTokenKey {
                kid: Some(kid.to_owned()),
                secret: secret.parse()?,
            },
            _ => OldTokenKey {
                kid: None,
                secret: s.parse()?,
            },
        })
    }
}

/// What the sensitive-word filter does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WordsPolicy {
    /// Replace each matched character with `*`.
    #[default]
    Mask,
    /// Refuse the message with `blocked_content`.
    Reject,
}

/// Roles a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// HTTP API and admin API.
    Gateway,
    /// Fan-out of committed messages to workers; in a cluster also the sweep of
    /// unfinished fan-outs and the cleanup of dead nodes.
    Dispatcher,
    /// WebSocket connections, pushes, acks and retransmits.
    Worker,
}

impl Role {
    /// The name on the command line and in the node registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Dispatcher => "dispatcher",
            Role::Worker => "worker",
        }
    }
}

/// A kind of conversation, as hooks and webhooks filter them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConvKindName {
    /// Two users (`d:…`).
    Direct,
    /// A group (`g:…`).
    Group,
    /// A customer and a shop (`s:…`).
    Service,
    /// A shop's internal notes (`n:…`).
    Notes,
}

impl ConvKindName {
    /// Every kind.
    pub const ALL: [ConvKindName; 4] = [Self::Direct, Self::Group, Self::Service, Self::Notes];

    /// Whether `conv` is of this kind (by its id's prefix).
    pub fn matches(self, conv: &str) -> bool {
        use shared::protocol::ConvKind;
        let kind = match shared::ids::ConvRef::parse(conv) {
            Some(r) => r.kind(),
            None => return false,
        };
        matches!(
            (self, kind),
            (Self::Direct, ConvKind::Direct)
                | (Self::Group, ConvKind::Group)
                | (Self::Service, ConvKind::Service)
                | (Self::Notes, ConvKind::Notes)
        )
    }
}

/// Which committed messages go to the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WebhookKind {
    /// Messages users sent (with a body).
    Message,
    /// Event messages (`joined`, `assigned`, `closed`, `recalled`, …).
    Event,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for production.
    Json,
}

/// The whole configuration of `imd serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket listen address.
    pub listen: SocketAddr,
    /// Directory of the embedded store and the generated secrets.
    pub data_dir: PathBuf,
    /// HS256 secret that signs client tokens; generated into `data_dir` when absent.
    pub token_secret: Option<Secret>,
    /// Key id of `token_secret`, written into the header of the tokens it signs (`kid`),
    /// so that a rotated-out key's tokens are told apart; none: tokens carry no `kid`.
    pub token_kid: Option<String>,
    /// Earlier token secrets, accepted for verification only while their tokens expire
    /// (see "Rotating secrets" in `docs/operations.md`).
    pub token_secrets_old: Vec<OldTokenKey>,
    /// Bearer token of the admin API; generated into `data_dir` when absent.
    pub admin_token: Option<Secret>,
    /// Earlier admin tokens, still accepted until removed.
    pub admin_tokens_old: Vec<Secret>,
    /// How long a push waits for its ack before it is resent.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How many times an unacked push is resent before it is left to `sync`.
    pub ack_retries: u32,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    /// The server pings at a third of it.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest WebSocket frame or HTTP request body, in bytes.
    pub max_frame_bytes: usize,
    /// Sensitive words, one per line (UTF-8).
    pub words_file: Option<PathBuf>,
    /// What to do with a sensitive word.
    pub words_policy: WordsPolicy,
    /// Redis URL, or several comma-separated (seeds of a Redis Cluster, detected by
    /// asking the server); absent means the embedded single-node store.
    pub redis: Option<String>,
    /// Roles this node runs.
    pub roles: Vec<Role>,
    /// This node's id in the cluster and in connection listings.
    pub node_id: Option<String>,
    /// Address of a worker's RPC listener in a cluster, as other nodes reach it
    /// (default 127.0.0.1 on an ephemeral port: one machine only). The link is
    /// authenticated but not encrypted: across machines, keep it on a private network
    /// or a WireGuard/IPsec tunnel.
    pub rpc_listen: Option<SocketAddr>,
    /// PEM certificate chain (the server's certificate first): serve https:// and
    /// wss:// on `listen`. Needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Every connection starts with a PROXY header (v1 or v2) from a TCP load balancer,
    /// whose client address is the one imd uses; connections without one are refused.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: only these peers (addresses or CIDR networks) may connect;
    /// empty: any.
    pub proxy_from: Vec<IpNet>,
    /// Frames queued for one connection before it counts as too slow and is closed.
    pub outbox_capacity: usize,
    /// Unacked pushes tracked for one connection before it counts as too slow.
    pub max_unacked: usize,
    /// Most messages committed in one store transaction.
    pub commit_batch: usize,
    /// Commit tasks, each owning the conversations that hash to it; `None`: 1 on the
    /// embedded store (one writer; one fsync per batch), 8 on Redis.
    pub commit_lanes: Option<usize>,
    /// How long shutdown waits for sessions and commits to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Messages per second one uid may send (0: no limit).
    pub send_rate: u32,
    /// Messages one uid may send at once.
    pub send_burst: u32,
    /// WebSocket connections per second one ip may open (0: no limit).
    pub connect_rate: u32,
    /// Connections one ip may open at once.
    pub connect_burst: u32,
    /// Failed authentications (bad or expired client token, bad admin token) of one ip
    /// within `auth_fail_window` that ban it for `auth_ban` (0: never ban).
    pub auth_fail_limit: u32,
    /// The window in which `auth_fail_limit` failures count.
    #[serde(with = "humantime_serde")]
    pub auth_fail_window: Duration,
    /// How long an automatic ban lasts (an ip blacklist entry with this TTL).
    #[serde(with = "humantime_serde")]
    pub auth_ban: Duration,
    /// Addresses or CIDRs never banned automatically: by default this host's own
    /// 127.0.0.1 and ::1, where a co-located reverse proxy (every client behind it
    /// would be banned together) and the operators' own tools connect from.
    pub auth_ban_exempt: Vec<IpNet>,
    /// How long after sending a user may recall a message.
    #[serde(with = "humantime_serde")]
    pub recall_window: Duration,
    /// Bytes of frames queued for one connection before it counts as too slow.
    pub max_outbox_bytes: usize,
    /// Bytes of the embedded store's page cache (redb's own default, 1 GiB, would let
    /// a busy node's memory grow with its data file for a long while).
    pub store_cache_bytes: usize,
    /// Every embedded-store commit saves redb's allocator state, in two phases: a
    /// second fsync per commit, and a reopen after a crash without a walk of the file
    /// (a 10 GB data dir: 0.14 s instead of 25 s, or 133 s from a cold page cache).
    pub store_quick_repair: bool,
    /// Embedded-store commits append one record to a commit log and `fdatasync` it; the
    /// tables are written behind, by an indexer thread, and reads wait for it (see
    /// docs/benchmarks.md, *The log commit*). Off: each commit writes the tables in its
    /// own durable transaction.
    pub store_log: bool,
    /// A write to a connection that makes no progress for this long closes it as too
    /// slow.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Serve the customer chat widget (`/chat/`) and the agent console (`/console/`)
    /// on gateway nodes.
    pub web: bool,
    /// Serve `POST /dev/v1/token`, which mints a client token for any uid to anyone who
    /// asks: for trying the pages on one machine only (refused unless `listen` is a
    /// loopback address). Never in production.
    pub dev_tokens: bool,
    /// Where every committed message is POSTed (see `docs/webhooks.md`); none: no
    /// webhook.
    pub webhook_url: Option<String>,
    /// Signs each webhook body (`X-Imd-Signature: sha256=<HMAC-SHA256 hex>`); required
    /// with `webhook_url`.
    pub webhook_secret: Option<Secret>,
    /// How long one webhook POST may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// How long an event is retried before it is parked (dead letter).
    #[serde(with = "humantime_serde")]
    pub webhook_retry_for: Duration,
    /// The longest wait between two tries of a failing conversation (also how soon a
    /// receiver that came back is noticed).
    #[serde(with = "humantime_serde")]
    pub webhook_backoff_max: Duration,
    /// Conversations whose webhook events are in flight at once (one POST at a time
    /// each, in `seq` order).
    pub webhook_concurrency: usize,
    /// Which messages go to the webhook: users' messages, event messages, or both.
    pub webhook_events: Vec<WebhookKind>,
    /// Which kinds of conversation go to the webhook.
    pub webhook_convs: Vec<ConvKindName>,
    /// Most parked events kept; past it the oldest is dropped (and counted).
    pub webhook_parked_max: usize,
    /// Called before a matching message is committed: allow, reject or replace.
    pub hook_before_send: Option<String>,
    /// How long the pre-send hook may take.
    #[serde(with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// Refuse the message when the pre-send hook fails or times out (default: let it
    /// through).
    pub hook_fail_closed: bool,
    /// Which kinds of conversation the pre-send hook is called for.
    pub hook_convs: Vec<ConvKindName>,
    /// Called for a message to a user with no device online, with the user's push
    /// tokens (a relay to APNs/FCM answers it).
    pub push_webhook_url: Option<String>,
    /// Put a short preview of the message in offline pushes (off: no content leaves
    /// imd in a push).
    pub push_preview: bool,
    /// Messages older than this leave history and inboxes; none: kept forever.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// How often the retention pass runs; none: a tenth of `retention`, at most a
    /// minute (see [`Config::retention_interval`]). For tests.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./imd-data"),
            token_secret: None,
            token_kid: None,
            token_secrets_old: Vec::new(),
            admin_token: None,
            admin_tokens_old: Vec::new(),
            ack_timeout: Duration::from_secs(18),
            ack_retries: 3,
            idle_timeout: Duration::from_secs(60),
            max_frame_bytes: 64 * 1024,
            words_file: None,
            words_policy: WordsPolicy::Mask,
            redis: None,
            roles: vec![Role::Gateway, Role::Dispatcher, Role::Worker],
            node_id: None,
            rpc_listen: None,
            tls_cert: None,
            tls_key: None,
            proxy_protocol: false,
            proxy_from: Vec::new(),
            outbox_capacity: 1024,
            max_unacked: 4096,
            commit_batch: 1024,
            commit_lanes: None,
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
            send_rate: 100,
            send_burst: 200,
            connect_rate: 20,
            connect_burst: 100,
            auth_fail_limit: 20,
            auth_fail_window: Duration::from_secs(60),
            auth_ban: Duration::from_secs(600),
            auth_ban_exempt: ["127.0.0.1", "::1"]
                .map(|ip| IpNet::parse(ip).expect("a valid address"))
                .to_vec(),
            recall_window: Duration::from_secs(120),
            max_outbox_bytes: 8 << 20,
            store_cache_bytes: crate::store::EMBEDDED_CACHE_BYTES,
            store_quick_repair: true,
            store_log: true,
            write_timeout: Duration::from_secs(10),
            web: true,
            dev_tokens: false,
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(10),
            webhook_retry_for: Duration::from_secs(24 * 3600),
            webhook_backoff_max: Duration::from_secs(10),
            webhook_concurrency: 64,
            webhook_events: vec![WebhookKind::Message, WebhookKind::Event],
            webhook_convs: ConvKindName::ALL.to_vec(),
            webhook_parked_max: 100_000,
            hook_before_send: None,
            hook_timeout: Duration::from_millis(300),
            hook_fail_closed: false,
            hook_convs: ConvKindName::ALL.to_vec(),
            push_webhook_url: None,
            push_preview: true,
            retention: None,
            retention_interval: None,
        }
    }
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// The shortest retention. Builds with the `test-hooks` feature (imd's own integration
/// tests) accept a second, so that a test sees messages leave without waiting minutes.
#[cfg(not(feature = "test-hooks"))]
const MIN_RETENTION: Duration = Duration::from_secs(60);
#[cfg(feature = "test-hooks")]
const MIN_RETENTION: Duration = Duration::from_secs(1);

/// Flags shared by `imd serve`, `imd token` and `imd admin-token`, so that the helpers
/// find the same secrets as the server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, env = "IMD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded store and generated secrets [default: ./imd-data].
    #[arg(long, env = "IMD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HS256 secret for client tokens [default: generated into the data dir].
    #[arg(long, env = "IMD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<Secret>,
    /// Key id of --token-secret, carried in the tokens it signs (`kid`).
    #[arg(long, env = "IMD_TOKEN_KID")]
    pub token_kid: Option<String>,
    /// Comma-separated `kid=secret` (or bare `secret`): earlier token secrets, accepted
    /// for verification only.
    #[arg(
        long,
        env = "IMD_TOKEN_SECRETS_OLD",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub token_secrets_old: Option<Vec<OldTokenKey>>,
    /// Admin bearer token [default: generated into the data dir].
    #[arg(long, env = "IMD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Comma-separated earlier admin tokens, still accepted.
    #[arg(
        long,
        env = "IMD_ADMIN_TOKENS_OLD",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub admin_tokens_old: Option<Vec<Secret>>,
}

/// Flags of `imd serve`. Each is also read from `IMD_<NAME>`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// HTTP and WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "IMD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Ack timeout before a push is resent, e.g. `18s`, `500ms` [default: 18s].
    #[arg(long, env = "IMD_ACK_TIMEOUT", value_parser = duration)]
    pub ack_timeout: Option<Duration>,
    /// Resends of an unacked push [default: 3].
    #[arg(long, env = "IMD_ACK_RETRIES")]
    pub ack_retries: Option<u32>,
    /// Close connections silent this long; pings go out at a third of it [default: 60s].
    #[arg(long, env = "IMD_IDLE_TIMEOUT", value_parser = duration)]
    pub idle_timeout: Option<Duration>,
    /// Largest WebSocket frame or HTTP body in bytes [default: 65536].
    #[arg(long, env = "IMD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Sensitive-word list, one word per line.
    #[arg(long, env = "IMD_WORDS_FILE")]
    pub words_file: Option<PathBuf>,
    /// `mask` or `reject` [default: mask].
    #[arg(long, env = "IMD_WORDS_POLICY")]
    pub words_policy: Option<WordsPolicy>,
    /// Redis URL for cluster mode [default: embedded single-node store].
    #[arg(long, env = "IMD_REDIS")]
    pub redis: Option<String>,
    /// Comma-separated roles: gateway,dispatcher,worker [default: all].
    #[arg(long, env = "IMD_ROLES", value_delimiter = ',')]
    pub roles: Option<Vec<Role>>,
    /// Node id [default: imd-<listen port>].
    #[arg(long, env = "IMD_NODE_ID")]
    pub node_id: Option<String>,
    /// RPC listen address between roles. Authenticated, not encrypted: across machines
    /// use a private network or a WireGuard/IPsec tunnel.
    #[arg(long, env = "IMD_RPC_LISTEN")]
    pub rpc_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve https:// and wss:// (with --tls-key).
    #[arg(long, env = "IMD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "IMD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Each connection starts with a PROXY header (v1/v2) from a TCP load balancer;
    /// its client address is used, connections without one refused [default: false].
    #[arg(long, env = "IMD_PROXY_PROTOCOL", num_args = 0..=1, default_missing_value = "true")]
    pub proxy_protocol: Option<bool>,
    /// Comma-separated addresses or CIDRs of the balancers allowed to connect with
    /// --proxy-protocol [default: any].
    #[arg(long, env = "IMD_PROXY_FROM", value_delimiter = ',')]
    pub proxy_from: Option<Vec<IpNet>>,
    /// Frames queued per connection before it is closed as too slow [default: 1024].
    #[arg(long, env = "IMD_OUTBOX_CAPACITY")]
    pub outbox_capacity: Option<usize>,
    /// Unacked pushes per connection before it is closed as too slow [default: 4096].
    #[arg(long, env = "IMD_MAX_UNACKED")]
    pub max_unacked: Option<usize>,
    /// Most messages per store transaction [default: 1024].
    #[arg(long, env = "IMD_COMMIT_BATCH")]
    pub commit_batch: Option<usize>,
    /// Commit tasks working side by side, each for the conversations that hash to it
    /// [default: 1 on the embedded store, 8 with --redis].
    #[arg(long, env = "IMD_COMMIT_LANES")]
    pub commit_lanes: Option<usize>,
    /// Grace period of a shutdown [default: 10s].
    #[arg(long, env = "IMD_SHUTDOWN_GRACE", value_parser = duration)]
    pub shutdown_grace: Option<Duration>,
    /// `text` or `json` [default: text].
    #[arg(long, env = "IMD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Messages per second per uid; 0 turns the limit off [default: 100].
    #[arg(long, env = "IMD_SEND_RATE")]
    pub send_rate: Option<u32>,
    /// Burst of messages per uid [default: 200].
    #[arg(long, env = "IMD_SEND_BURST")]
    pub send_burst: Option<u32>,
    /// WebSocket connections per second per ip; 0 turns the limit off [default: 20].
    #[arg(long, env = "IMD_CONNECT_RATE")]
    pub connect_rate: Option<u32>,
    /// Burst of connections per ip [default: 100].
    #[arg(long, env = "IMD_CONNECT_BURST")]
    pub connect_burst: Option<u32>,
    /// Failed authentications of one ip within --auth-fail-window that ban it; 0 turns
    /// bans off [default: 20].
    #[arg(long, env = "IMD_AUTH_FAIL_LIMIT")]
    pub auth_fail_limit: Option<u32>,
    /// Window of --auth-fail-limit [default: 1m].
    #[arg(long, env = "IMD_AUTH_FAIL_WINDOW", value_parser = duration)]
    pub auth_fail_window: Option<Duration>,
    /// How long an automatic ban lasts [default: 10m].
    #[arg(long, env = "IMD_AUTH_BAN", value_parser = duration)]
    pub auth_ban: Option<Duration>,
    /// Comma-separated addresses or CIDRs never banned automatically [default:
    /// 127.0.0.1,::1].
    #[arg(long, env = "IMD_AUTH_BAN_EXEMPT", value_delimiter = ',')]
    pub auth_ban_exempt: Option<Vec<IpNet>>,
    /// How long after sending a user may recall a message [default: 2m].
    #[arg(long, env = "IMD_RECALL_WINDOW", value_parser = duration)]
    pub recall_window: Option<Duration>,
    /// Bytes queued for one connection before it is closed as too slow [default: 8 MiB].
    #[arg(long, env = "IMD_MAX_OUTBOX_BYTES")]
    pub max_outbox_bytes: Option<usize>,
    /// Bytes of the embedded store's page cache; pages beyond it are read again from
    /// the file (the OS's page cache) [default: 64 MiB].
    #[arg(long, env = "IMD_STORE_CACHE_BYTES")]
    pub store_cache_bytes: Option<usize>,
    /// Commit the embedded store in two phases with its allocator state: a second
    /// fsync per commit, and a restart after a crash that does not read the whole file
    /// first; `false` saves the fsync [default: true].
    #[arg(long, env = "IMD_STORE_QUICK_REPAIR", num_args = 0..=1, default_missing_value = "true")]
    pub store_quick_repair: Option<bool>,
    /// Embedded store: commit by appending to a commit log (one fdatasync a batch) and
    /// write the tables behind it, reads waiting for them; `false` writes the tables in
    /// each commit's own transaction [default: true].
    #[arg(long, env = "IMD_STORE_LOG", num_args = 0..=1, default_missing_value = "true")]
    pub store_log: Option<bool>,
    /// Close a connection whose write makes no progress for this long [default: 10s].
    #[arg(long, env = "IMD_WRITE_TIMEOUT", value_parser = duration)]
    pub write_timeout: Option<Duration>,
    /// Serve the chat widget (/chat/) and the agent console (/console/); `--web false`
    /// turns them off [default: true].
    #[arg(long, env = "IMD_WEB", num_args = 0..=1, default_missing_value = "true")]
    pub web: Option<bool>,
    /// Serve POST /dev/v1/token, minting tokens for any uid to anyone: for trying the
    /// pages on one machine (loopback `--listen` only); never in production
    /// [default: false].
    #[arg(long, env = "IMD_DEV_TOKENS", num_args = 0..=1, default_missing_value = "true")]
    pub dev_tokens: Option<bool>,
    /// POST every committed message here, signed with --webhook-secret.
    #[arg(long, env = "IMD_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of the webhook signature (required with --webhook-url).
    #[arg(long, env = "IMD_WEBHOOK_SECRET")]
    pub webhook_secret: Option<Secret>,
    /// Time limit of one webhook POST [default: 10s].
    #[arg(long, env = "IMD_WEBHOOK_TIMEOUT", value_parser = duration)]
    pub webhook_timeout: Option<Duration>,
    /// Retry a failing webhook event this long, then park it [default: 24h].
    #[arg(long, env = "IMD_WEBHOOK_RETRY_FOR", value_parser = duration)]
    pub webhook_retry_for: Option<Duration>,
    /// Longest wait between two tries of a failing conversation [default: 10s].
    #[arg(long, env = "IMD_WEBHOOK_BACKOFF_MAX", value_parser = duration)]
    pub webhook_backoff_max: Option<Duration>,
    /// Conversations delivered to the webhook at once [default: 64].
    #[arg(long, env = "IMD_WEBHOOK_CONCURRENCY")]
    pub webhook_concurrency: Option<usize>,
    /// Comma-separated: message,event [default: both].
    #[arg(long, env = "IMD_WEBHOOK_EVENTS", value_delimiter = ',')]
    pub webhook_events: Option<Vec<WebhookKind>>,
    /// Comma-separated conversation kinds: direct,group,service,notes [default: all].
    #[arg(long, env = "IMD_WEBHOOK_CONVS", value_delimiter = ',')]
    pub webhook_convs: Option<Vec<ConvKindName>>,
    /// Parked (dead-letter) webhook events kept [default: 100000].
    #[arg(long, env = "IMD_WEBHOOK_PARKED_MAX")]
    pub webhook_parked_max: Option<usize>,
    /// Ask this URL before committing a message: allow, reject or replace.
    #[arg(long, env = "IMD_HOOK_BEFORE_SEND")]
    pub hook_before_send: Option<String>,
    /// Time limit of the pre-send hook [default: 300ms].
    #[arg(long, env = "IMD_HOOK_TIMEOUT", value_parser = duration)]
    pub hook_timeout: Option<Duration>,
    /// Refuse messages when the pre-send hook fails [default: false: let them through].
    #[arg(long, env = "IMD_HOOK_FAIL_CLOSED", num_args = 0..=1, default_missing_value = "true")]
    pub hook_fail_closed: Option<bool>,
    /// Comma-separated conversation kinds the pre-send hook sees [default: all].
    #[arg(long, env = "IMD_HOOK_CONVS", value_delimiter = ',')]
    pub hook_convs: Option<Vec<ConvKindName>>,
    /// POST offline pushes (push tokens, preview, badge) here.
    #[arg(long, env = "IMD_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,
    /// Include a short preview in offline pushes [default: true].
    #[arg(long, env = "IMD_PUSH_PREVIEW", num_args = 0..=1, default_missing_value = "true")]
    pub push_preview: Option<bool>,
    /// Remove messages older than this, e.g. `90d` [default: keep forever].
    #[arg(long, env = "IMD_RETENTION", value_parser = duration)]
    pub retention: Option<Duration>,
    /// How often the retention pass runs [default: retention/10, at most 1m]. For tests.
    #[arg(long, env = "IMD_RETENTION_INTERVAL", value_parser = duration, hide = true)]
    pub retention_interval: Option<Duration>,
}

impl Config {
    /// Defaults, then the TOML file named by `common.config`, then what `common` gives.
    pub fn from_common(common: &CommonArgs) -> anyhow::Result<Self> {
        let mut cfg = match &common.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = &common.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &common.token_secret {
            cfg.token_secret = Some(v.clone());
        }
        if let Some(v) = &common.admin_token {
            cfg.admin_token = Some(v.clone());
        }
        if let Some(v) = &common.token_kid {
            cfg.token_kid = Some(v.clone());
        }
        if let Some(v) = &common.token_secrets_old {
            cfg.token_secrets_old = v.clone();
        }
        if let Some(v) = &common.admin_tokens_old {
            cfg.admin_tokens_old = v.clone();
        }
        Ok(cfg)
    }

    /// The configuration of `imd serve`: defaults < file < environment < flags.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Self> {
        let mut cfg = Self::from_common(&args.common)?;
        macro_rules! overlay {
            ($($field:ident),*) => {$(
                if let Some(v) = &args.$field {
                    cfg.$field = v.clone().into();
                }
            )*};
        }
        overlay!(
            listen,
            ack_timeout,
            ack_retries,
            idle_timeout,
            max_frame_bytes,
            words_file,
            words_policy,
            redis,
            roles,
            node_id,
            rpc_listen,
            tls_cert,
            tls_key,
            proxy_protocol,
            proxy_from,
            outbox_capacity,
            max_unacked,
            commit_batch,
            commit_lanes,
            shutdown_grace,
            log_format,
            send_rate,
            send_burst,
            connect_rate,
            connect_burst,
            auth_fail_limit,
            auth_fail_window,
            auth_ban,
            auth_ban_exempt,
            recall_window,
            max_outbox_bytes,
            store_cache_bytes,
            store_quick_repair,
            store_log,
            write_timeout,
            web,
            dev_tokens,
            webhook_url,
            webhook_secret,
            webhook_timeout,
            webhook_retry_for,
            webhook_backoff_max,
            webhook_concurrency,
            webhook_events,
            webhook_convs,
            webhook_parked_max,
            hook_before_send,
            hook_timeout,
            hook_fail_closed,
            hook_convs,
            push_webhook_url,
            push_preview,
            retention,
            retention_interval
        );
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.dev_tokens || self.listen.ip().is_loopback(),
            "dev-tokens mints a token for any uid to anyone who asks: it is refused unless \
             listen is a loopback address (it is {})",
            self.listen
        );
        anyhow::ensure!(
            self.auth_fail_limit == 0
                || (!self.auth_fail_window.is_zero() && self.auth_ban >= Duration::from_secs(1)),
            "auth-fail-window must be above zero and auth-ban at least 1s"
        );
        let kids = std::iter::once(&self.token_kid)
            .chain(self.token_secrets_old.iter().map(|k| &k.kid))
            .flatten();
        let mut seen = std::collections::HashSet::new();
        for kid in kids {
            anyhow::ensure!(
                shared::ids::is_valid_id(kid),
                "token key ids must be 1-64 of [A-Za-z0-9_.:@-] (got {kid:?})"
            );
            anyhow::ensure!(
                seen.insert(kid),
                "token key id {kid:?} names two keys (token-kid and token-secrets-old)"
            );
        }
        anyhow::ensure!(
            !self.ack_timeout.is_zero(),
            "ack-timeout must be above zero"
        );
        anyhow::ensure!(
            self.idle_timeout >= Duration::from_millis(300),
            "idle-timeout must be at least 300ms"
        );
        anyhow::ensure!(
            (1024..=16 << 20).contains(&self.max_frame_bytes),
            "max-frame-bytes must be between 1 KiB and 16 MiB"
        );
        anyhow::ensure!(
            self.outbox_capacity >= 16,
            "outbox-capacity must be at least 16"
        );
        anyhow::ensure!(self.max_unacked >= 16, "max-unacked must be at least 16");
        anyhow::ensure!(
            self.max_outbox_bytes >= self.max_frame_bytes,
            "max-outbox-bytes must be at least max-frame-bytes ({})",
            self.max_frame_bytes
        );
        anyhow::ensure!(
            self.write_timeout >= Duration::from_millis(100),
            "write-timeout must be at least 100ms"
        );
        anyhow::ensure!(
            (1..=65536).contains(&self.commit_batch),
            "commit-batch must be between 1 and 65536"
        );
        if let Some(lanes) = self.commit_lanes {
            anyhow::ensure!(
                (1..=64).contains(&lanes),
                "commit-lanes must be between 1 and 64"
            );
        }
        anyhow::ensure!(!self.roles.is_empty(), "roles must name at least one role");
        for (name, url) in [
            ("webhook-url", &self.webhook_url),
            ("hook-before-send", &self.hook_before_send),
            ("push-webhook-url", &self.push_webhook_url),
        ] {
            if let Some(url) = url {
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "{name} must be an http:// or https:// URL (it is {url:?})"
                );
            }
        }
        anyhow::ensure!(
            self.webhook_url.is_none() || self.webhook_secret.is_some(),
            "webhook-url needs webhook-secret: receivers check every body's signature"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.webhook_concurrency),
            "webhook-concurrency must be between 1 and 4096"
        );
        anyhow::ensure!(
            !self.webhook_timeout.is_zero()
                && !self.hook_timeout.is_zero()
                && self.webhook_backoff_max >= Duration::from_millis(100),
            "webhook-timeout and hook-timeout must be above zero, webhook-backoff-max at least 100ms"
        );
        anyhow::ensure!(
            !self.webhook_events.is_empty() && !self.webhook_convs.is_empty(),
            "webhook-events and webhook-convs must name at least one kind"
        );
        if let Some(r) = self.retention {
            anyhow::ensure!(r >= MIN_RETENTION, "retention must be at least 1m");
        }
        if let Some(i) = self.retention_interval {
            anyhow::ensure!(
                i >= Duration::from_millis(100),
                "retention-interval must be at least 100ms"
            );
        }
        let all = [Role::Gateway, Role::Dispatcher, Role::Worker];
        anyhow::ensure!(
            self.redis.is_some() || all.iter().all(|r| self.roles.contains(r)),
            "--roles: splitting roles needs --redis (nodes share state through it); leave --roles out for one node"
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls-cert and tls-key go together: give both or neither"
        );
        anyhow::ensure!(
            self.proxy_protocol || self.proxy_from.is_empty(),
            "proxy-from names who may send a PROXY header: it needs proxy-protocol"
        );
        if let Some(rpc) = self.rpc_listen {
            anyhow::ensure!(
                !rpc.ip().is_unspecified(),
                "rpc-listen must be the address other nodes reach (not {rpc})"
            );
        }
        if let Some(id) = &self.node_id {
            anyhow::ensure!(
                shared::ids::is_valid_id(id),
                "node-id must be 1-64 of [A-Za-z0-9_.:@-]"
            );
        }
        Ok(())
    }

    /// Where a worker serves RPC: only in a cluster, on `rpc_listen` or else on an
    /// ephemeral port of 127.0.0.1.
    pub fn rpc_address(&self) -> Option<SocketAddr> {
        (self.redis.is_some() && self.roles.contains(&Role::Worker)).then(|| {
            self.rpc_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
        })
    }

    /// How many commit tasks to run (see `commit_lanes`).
    pub fn commit_lanes(&self) -> usize {
        self.commit_lanes
            .unwrap_or(if self.redis.is_some() { 8 } else { 1 })
    }

    /// How often the retention pass runs: `retention_interval`, or a tenth of the
    /// retention, at most a minute (a message leaves at most that long after it is
    /// due); `None` without retention.
    pub fn retention_interval(&self) -> Option<Duration> {
        let retention = self.retention?;
        Some(
            self.retention_interval
                .unwrap_or_else(|| (retention / 10).min(Duration::from_secs(60))),
        )
    }

    /// The interval of server pings: a third of the idle timeout.
    pub fn ping_interval(&self) -> Duration {
        self.idle_timeout / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("imd.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nack_timeout = \"5s\"\nack_retries = 7\nmax_frame_bytes = 2048\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "imd",
            "--config",
            file.to_str().unwrap(),
            "--ack-retries",
            "2",
            "--idle-timeout",
            "2s",
        ]);
        let cfg = Config::load(&cli.serve).unwrap();
        assert_eq!(cfg.listen.port(), 9000, "file over default");
        assert_eq!(cfg.ack_timeout, Duration::from_secs(5), "file over default");
        assert_eq!(cfg.ack_retries, 2, "flag over file");
        assert_eq!(
            cfg.idle_timeout,
            Duration::from_secs(2),
            "flag over default"
        );
        assert_eq!(cfg.max_frame_bytes, 2048);
        assert_eq!(cfg.data_dir, PathBuf::from("./imd-data"));
    }

    #[test]
    fn tls_and_proxy_settings_from_the_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("imd.toml");
        std::fs::write(
            &file,
            "tls_cert = \"/etc/imd/cert.pem\"\ntls_key = \"/etc/imd/key.pem\"\n\
             proxy_protocol = true\nproxy_from = [\"10.0.0.0/8\", \"fd00::1\"]\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["imd", "--config", file.to_str().unwrap()]);
        let cfg = Config::load(&cli.serve).unwrap();
        assert_eq!(cfg.tls_cert, Some(PathBuf::from("/etc/imd/cert.pem")));
        assert!(cfg.proxy_protocol);
        assert_eq!(
            cfg.proxy_from,
            [
                IpNet::parse("10.0.0.0/8").unwrap(),
                IpNet::parse("fd00::1").unwrap()
            ]
        );
        let cli = Cli::parse_from([
            "imd",
            "--config",
            file.to_str().unwrap(),
            "--proxy-from",
            "192.168.1.0/24,127.0.0.1",
        ]);
        let cfg = Config::load(&cli.serve).unwrap();
        assert_eq!(cfg.proxy_from.len(), 2, "flag over file");
        assert!(Cli::try_parse_from(["imd", "--proxy-from", "10.0.0.0/33"]).is_err());
        std::fs::write(&file, "proxy_from = [\"not-an-ip\"]\n").unwrap();
        let cli = Cli::parse_from(["imd", "--config", file.to_str().unwrap()]);
        assert!(Config::load(&cli.serve).is_err());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("imd.toml");
        std::fs::write(&file, "listen_addr = \"127.0.0.1:1\"\n").unwrap();
        let cli = Cli::parse_from(["imd", "--config", file.to_str().unwrap()]);
        let err = Config::load(&cli.serve).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn secrets_do_not_print() {
        let cfg = Config {
            token_secret: Some(Secret::new("hunter2")),
            ..Config::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            Config {
                max_frame_bytes: 10,
                ..Config::default()
            },
            Config {
                ack_timeout: Duration::ZERO,
                ..Config::default()
            },
            Config {
                node_id: Some("a b".into()),
                ..Config::default()
            },
            // Split roles share state through Redis only.
            Config {
                roles: vec![Role::Worker],
                ..Config::default()
            },
            Config {
                commit_lanes: Some(0),
                ..Config::default()
            },
            // A certificate without its key, and the other way round.
            Config {
                tls_cert: Some("cert.pem".into()),
                ..Config::default()
            },
            Config {
                tls_key: Some("key.pem".into()),
                ..Config::default()
            },
            Config {
                proxy_from: vec![IpNet::parse("10.0.0.0/8").unwrap()],
                ..Config::default()
            },
            // Other nodes cannot reach an unspecified address.
            Config {
                redis: Some("redis://127.0.0.1:6379".into()),
                rpc_listen: Some("0.0.0.0:9000".parse().unwrap()),
                ..Config::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn old_token_keys_parse_and_key_ids_are_unique() {
        let cli = Cli::parse_from([
            "imd",
            "--token-kid",
            "k2",
            "--token-secrets-old",
            "k1=s=1,bare",
            "--admin-tokens-old",
            "a1,a2",
        ]);
        let cfg = Config::load(&cli.serve).unwrap();
        assert_eq!(cfg.token_kid.as_deref(), Some("k2"));
        let old: Vec<(Option<&str>, &str)> = cfg
            .token_secrets_old
            .iter()
            .map(|k| (k.kid.as_deref(), k.secret.expose()))
            .collect();
        assert_eq!(old, [(Some("k1"), "s=1"), (None, "bare")]);
        assert_eq!(cfg.admin_tokens_old.len(), 2);
        assert!(
            !format!("{cfg:?}").contains("s=1"),
            "old secrets do not print"
        );
        for bad in [
            Config {
                token_kid: Some("k1".into()),
                token_secrets_old: vec!["k1=x".parse().unwrap()],
                ..Config::default()
            },
            Config {
                token_kid: Some("a b".into()),
                ..Config::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!("k1=".parse::<OldTokenKey>().is_err(), "an empty secret");
    }

    #[test]
    fn one_commit_lane_on_the_embedded_store_eight_on_redis() {
        assert_eq!(Config::default().commit_lanes(), 1);
        let redis = Config {
            redis: Some("redis://127.0.0.1:6379".into()),
            ..Config::default()
        };
        assert_eq!(redis.commit_lanes(), 8);
        let given = Config {
            commit_lanes: Some(3),
            ..redis
        };
        assert_eq!(given.commit_lanes(), 3);
    }

    #[test]
    fn a_worker_serves_rpc_only_in_a_cluster() {
        let one = Config::default();
        assert_eq!(one.rpc_address(), None);
        let worker = Config {
            redis: Some("redis://127.0.0.1:6379".into()),
            roles: vec![Role::Worker],
            ..Config::default()
        };
        worker.validate().unwrap();
        assert_eq!(worker.rpc_address(), Some("127.0.0.1:0".parse().unwrap()));
        let gateway = Config {
            roles: vec![Role::Gateway, Role::Dispatcher],
            ..worker
        };
        assert_eq!(gateway.rpc_address(), None, "no worker, no RPC");
    }
}

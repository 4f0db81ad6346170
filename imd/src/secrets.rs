//! The token secret and the admin token: given in the configuration, or generated once
//! into `data_dir/secrets.toml` and reused by every later `imd serve`, `imd token` and
//! `imd admin-token` on the same data dir.
//!
//! They live in a file of their own, not in the store, because the store's database is
//! locked by the running server while the helpers must still read the secrets.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::{Config, OldTokenKey, Secret};
use crate::gateway::auth::TokenKeys;
use crate::rpc::auth::LinkKey;

/// File name of the generated secrets inside the data dir.
pub const SECRETS_FILE: &str = "secrets.toml";

/// The secrets a node runs with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// HS256 key of client tokens.
    pub token_secret: Secret,
    /// Bearer token of the admin API.
    pub admin_token: Secret,
    /// Key id of `token_secret` (from the configuration only).
    #[serde(skip)]
    pub token_kid: Option<String>,
    /// Earlier token secrets, accepted for verification (from the configuration only).
    #[serde(skip)]
    pub token_secrets_old: Vec<OldTokenKey>,
    /// Earlier admin tokens, still accepted (from the configuration only).
    #[serde(skip)]
    pub admin_tokens_old: Vec<Secret>,
}

impl Secrets {
    /// The configured secrets, completed from (or generated into) the data dir.
    pub fn resolve(cfg: &Config) -> anyhow::Result<Self> {
        let (token_secret, admin_token) = match (&cfg.token_secret, &cfg.admin_token) {
            (Some(token_secret), Some(admin_token)) => (token_secret.clone(), admin_token.clone()),
            (token_secret, admin_token) => {
                // Generated secrets live in one node's data dir; the nodes of a cluster
                // would each make their own and refuse each other's tokens.
                anyhow::ensure!(
                    cfg.redis.is_none(),
                    "cluster mode (--redis) needs --token-secret and --admin-token, the same on every node"
                );
                let stored = load_or_create(&cfg.data_dir)?;
                (
                    token_secret.clone().unwrap_or(stored.token_secret),
                    admin_token.clone().unwrap_or(stored.admin_token),
                )
            }
        };
        Ok(Self {
            token_secret,
            admin_token,
            token_kid: cfg.token_kid.clone(),
            token_secrets_old: cfg.token_secrets_old.clone(),
            admin_tokens_old: cfg.admin_tokens_old.clone(),
        })
    }

    /// The keys that sign (`token_secret`, named `token_kid`) and verify client tokens.
    pub fn token_keys(&self) -> TokenKeys {
        TokenKeys::rotating(
            &self.token_secret,
            self.token_kid.as_deref(),
            &self.token_secrets_old,
        )
    }

    /// Every admin token accepted: the current one, then the earlier ones.
    pub fn admin_tokens(&self) -> Vec<Secret> {
        std::iter::once(self.admin_token.clone())
            .chain(self.admin_tokens_old.iter().cloned())
            .collect()
    }

    /// The RPC link key: derived from `token_secret` (this node proves it when
    /// dialling), also accepting those of the earlier token secrets from a peer that
    /// still runs with one of them as its `--token-secret` (the middle of a rotation;
    /// see [`LinkKey`]).
    pub fn link_key(&self) -> LinkKey {
        LinkKey::rotating(
            self.token_secret.expose().as_bytes(),
            self.token_secrets_old
                .iter()
                .map(|k| k.secret.expose().as_bytes()),
        )
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads `dir/secrets.toml`, creating it with fresh random secrets when it is missing.
///
/// Creation is race-free: the file is written under a temporary name and hard-linked
/// into place, which fails if another process got there first; then theirs is read.
fn load_or_create(dir: &Path) -> anyhow::Result<Secrets> {
    let path = dir.join(SECRETS_FILE);
    if !path.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let fresh = Secrets {
            token_secret: Secret::new(random_hex(32)?),
            admin_token: Secret::new(random_hex(24)?),
            token_kid: None,
            token_secrets_old: Vec::new(),
            admin_tokens_old: Vec::new(),
        };
        let tmp = dir.join(format!(".{SECRETS_FILE}.{}", std::process::id()));
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(toml::to_string(&fresh)?.as_bytes())?;
            f.sync_all()?;
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(fresh),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_and_overridable() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let a = Secrets::resolve(&cfg).unwrap();
        let b = Secrets::resolve(&cfg).unwrap();
        assert_eq!(a.token_secret, b.token_secret);
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.token_secret.expose().len(), 64);

        let cfg = Config {
            token_secret: Some(Secret::new("given")),
            ..cfg
        };
        let c = Secrets::resolve(&cfg).unwrap();
        assert_eq!(c.token_secret.expose(), "given");
        assert_eq!(c.admin_token, a.admin_token);
    }
}

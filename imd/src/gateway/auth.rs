//! Client tokens: HS256 JWTs with the claims of `shared::token::Claims`.
//!
//! Verification is strict: the signature, `exp` (no leeway: an expired token is
//! refused the second it expires), and the id rules of `sub` and `dev`.
//!
//! Several keys may be accepted at once, so that a secret can be rotated without
//! logging everyone out (`docs/operations.md`, "Rotating secrets"): one signing key
//! (`--token-secret`, named by `--token-kid`) and the keys of `token_secrets_old`,
//! accepted for verification only. A token whose header names a `kid` is checked
//! against that key alone, and refused when no accepted key has that id; a token
//! without one (minted before key ids) is checked against every accepted key.

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use shared::ids::is_valid_id;
use shared::token::Claims;

use crate::business::Identity;
use crate::config::{OldTokenKey, Secret};

/// Why a token was refused. Each reason becomes a 401 `unauthorized`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the `Authorization` header or the `token` query parameter.
    #[error("missing token: send Authorization: Bearer <token> or ?token=<token>")]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// Its header names a key id that no accepted key has: signed with a key that
    /// was rotated out (or never in).
    #[error(
        "invalid token: unknown key id {0:?} (signed with a key this server does not accept; get a new token)"
    )]
    UnknownKid(String),
    /// Anything else wrong with it.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// One accepted key.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    decoding: DecodingKey,
}

/// The keys that sign and verify client tokens: the signing key first, then the
/// verification-only ones.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    kid: Option<String>,
    accepted: Vec<VerifyKey>,
    validation: Validation,
}

impl TokenKeys {
    /// Keys from the token secret, which signs without a key id.
    pub fn new(secret: &Secret) -> Self {
        Self::rotating(secret, None, &[])
    }

    /// The signing key `secret` (tokens carry `kid` in their header when given), and
    /// `old` keys accepted for verification only.
    pub fn rotating(secret: &Secret, kid: Option<&str>, old: &[OldTokenKey]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let accepted = std::iter::once(VerifyKey {
            kid: kid.map(str::to_owned),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
        })
        .chain(old.iter().map(|k| VerifyKey {
            kid: k.kid.clone(),
            decoding: DecodingKey::from_secret(k.secret.expose().as_bytes()),
        }))
        .collect();
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            kid: kid.map(str::to_owned),
            accepted,
            validation,
        }
    }

    /// Signs `claims` with the signing key, naming its key id.
    pub fn mint(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = self.kid.clone();
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let decode = |key: &VerifyKey| {
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid(e.to_string()),
                }
            })
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let data = match header.kid {
            Some(kid) => {
                let key = self
                    .accepted
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                    // The id is echoed in the answer: at most 64 characters of it.
                    .ok_or_else(|| AuthError::UnknownKid(kid.chars().take(64).collect()))?;
                decode(key)?
            }
            // Tokens from before key ids: any accepted key. The signature is checked
            // before `exp`, so `Expired` means that a key matched.
            None => {
                let mut first_err = None;
                let mut matched = None;
                for result in self.accepted.iter().map(decode) {
                    match result {
                        Ok(data) => {
                            matched = Some(data);
                            break;
                        }
                        Err(AuthError::Expired) => return Err(AuthError::Expired),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                matched.ok_or_else(|| first_err.expect("the signing key is always accepted"))?
            }
        };
        let c = data.claims;
        if !is_valid_id(&c.sub) {
            return Err(AuthError::Invalid("sub is not a valid uid".into()));
        }
        // The shops' own messages (welcome, away) come from `shop:{shop}`: nobody may
        // speak as one.
        if c.sub.starts_with(SHOP_SENDER_PREFIX) {
            return Err(AuthError::Invalid(format!(
                "uids starting with {SHOP_SENDER_PREFIX:?} are the shops' own"
            )));
        }
        if !is_valid_id(&c.dev) {
            return Err(AuthError::Invalid("dev is not a valid device id".into()));
        }
        Ok(Identity {
            uid: c.sub,
            device: c.dev,
            platform: c.plat,
            roles: c.roles,
            ip: None,
        })
    }
}

/// The prefix of the shops' own sender ids (`business::service::shop_sender`).
const SHOP_SENDER_PREFIX: &str = "shop:";

/// The bearer token of a request: the `Authorization` header, else `?token=`.
pub fn bearer<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    #[derive(serde::Deserialize)]
    struct Q {
        token: Option<String>,
    }
    let q: Q = serde_urlencoded_query(query?)?;
    q.token.filter(|t| !t.is_empty())
}

fn serde_urlencoded_query<T: serde::de::DeserializeOwned>(q: &str) -> Option<T> {
    let uri: axum::http::Uri = format!("/?{q}").parse().ok()?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .ok()
        .map(|q| q.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::token::Platform;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            dev: "p1".into(),
            plat: Platform::Ios,
            exp,
            roles: vec![],
        }
    }

    fn now() -> u64 {
        shared::time::now_ms() as u64 / 1000
    }

    #[test]
    fn round_trip_and_refusals() {
        let keys = TokenKeys::new(&Secret::new("s1"));
        let t = keys.mint(&claims(now() + 60)).unwrap();
        let who = keys.verify(&t).unwrap();
        assert_eq!((who.uid.as_str(), who.device.as_str()), ("alice", "p1"));

        let expired = keys.mint(&claims(now() - 1)).unwrap();
        assert_eq!(keys.verify(&expired), Err(AuthError::Expired));
        let other = TokenKeys::new(&Secret::new("s2"))
            .mint(&claims(now() + 60))
            .unwrap();
        assert!(matches!(keys.verify(&other), Err(AuthError::Invalid(_))));
        assert!(matches!(keys.verify("garbage"), Err(AuthError::Invalid(_))));
        let bad_uid = keys
            .mint(&Claims {
                sub: "a b".into(),
                ..claims(now() + 60)
            })
            .unwrap();
        assert!(matches!(keys.verify(&bad_uid), Err(AuthError::Invalid(_))));
        let shop = keys
            .mint(&Claims {
                sub: "shop:s1".into(),
                ..claims(now() + 60)
            })
            .unwrap();
        assert!(matches!(keys.verify(&shop), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn rotation_accepts_old_keys_and_refuses_unknown_kids() {
        let old = TokenKeys::rotating(&Secret::new("old"), Some("k1"), &[]);
        let legacy = TokenKeys::new(&Secret::new("legacy"));
        let keys = TokenKeys::rotating(
            &Secret::new("new"),
            Some("k2"),
            &["k1=old".parse().unwrap(), "legacy".parse().unwrap()],
        );
        let by_old = old.mint(&claims(now() + 60)).unwrap();
        assert_eq!(keys.verify(&by_old).unwrap().uid, "alice");
        let by_legacy = legacy.mint(&claims(now() + 60)).unwrap();
        assert_eq!(
            keys.verify(&by_legacy).unwrap().uid,
            "alice",
            "no kid: any key"
        );
        let by_new = keys.mint(&claims(now() + 60)).unwrap();
        let header = jsonwebtoken::decode_header(&by_new).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k2"));
        assert!(keys.verify(&by_new).is_ok());
        assert!(
            old.verify(&by_new).is_err(),
            "a kid the old node lacks is refused"
        );
        assert_eq!(old.verify(&by_new), Err(AuthError::UnknownKid("k2".into())));
        let expired_legacy = legacy.mint(&claims(now() - 1)).unwrap();
        assert_eq!(keys.verify(&expired_legacy), Err(AuthError::Expired));
        // A kid names one key: the right kid with another secret is refused.
        let forged = TokenKeys::rotating(&Secret::new("guess"), Some("k1"), &[])
            .mint(&claims(now() + 60))
            .unwrap();
        assert!(matches!(keys.verify(&forged), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn bearer_from_header_or_query() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h, Some("token=abc&x=1")), Some("abc".into()));
        assert_eq!(bearer(&h, Some("x=1")), None);
        assert_eq!(bearer(&h, None), None);
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(bearer(&h, Some("token=abc")), Some("xyz".into()));
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h, None), None);
    }
}

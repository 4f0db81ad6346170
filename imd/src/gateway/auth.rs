//! Client tokens: HS256 JWTs with the claims of `shared::token::Claims`.
//!
//! Verification is strict: the signature, `exp` (no leeway: an expired token is
//! refused the second it expires), and the id rules of `sub` and `dev`.

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use shared::ids::is_valid_id;
use shared::token::Claims;

use crate::business::Identity;
use crate::config::Secret;

/// Why a token was refused. Each reason becomes a 401 `unauthorized`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the `Authorization` header or the `token` query parameter.
    #[error("missing token: send Authorization: Bearer <token> or ?token=<token>")]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// Anything else wrong with it.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The keys that sign and verify client tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    /// Keys from the token secret.
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// Signs `claims`.
    pub fn mint(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
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

//! A secret string (a token-signing secret, an admin token) that cannot leak through a
//! log line.
//!
//! imd's configuration and imbench's command line both hold secrets; they share this
//! one wrapper so that both print `***` for `{:?}` and refuse an empty value on the
//! command line in the same way. It must not implement `Display`: the only way to the
//! text is [`Secret::expose`], which names the risk at the call.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A secret string whose `Debug` prints `***`. Serialized as the plain string (a config
/// file, imbench's plan line on a child's pipe); parsed from a flag or the environment
/// through [`FromStr`], which refuses an empty one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A secret given as the empty string: on a command line this is nearly always an
/// unset variable (`--token-secret "$SECRET"`), not a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must not be empty")]
pub struct EmptySecret;

impl FromStr for Secret {
    type Err = EmptySecret;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(EmptySecret);
        }
        Ok(Secret(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s: Secret = "hunter2".parse().unwrap();
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn an_empty_secret_is_refused_on_parse_only() {
        assert_eq!("".parse::<Secret>(), Err(EmptySecret));
        assert_eq!(EmptySecret.to_string(), "must not be empty");
        // A config file is trusted as written; serde does not go through FromStr.
        let s: Secret = serde_json::from_str(r#""x""#).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""x""#);
    }
}

//! Claims of a client token (a JWT signed HS256 with the server's token secret).

use serde::{Deserialize, Serialize};

/// Client platforms a token may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Browser.
    Web,
    /// Desktop application.
    Pc,
    /// iOS application.
    Ios,
    /// Android application.
    Android,
    /// Anything else, e.g. a backend system.
    Other,
}

impl Platform {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Web => "web",
            Platform::Pc => "pc",
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Other => "other",
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "web" => Ok(Platform::Web),
            "pc" => Ok(Platform::Pc),
            "ios" => Ok(Platform::Ios),
            "android" => Ok(Platform::Android),
            "other" => Ok(Platform::Other),
            _ => Err(format!("unknown platform {s:?} (web|pc|ios|android|other)")),
        }
    }
}

/// The claims of a client token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's uid.
    pub sub: String,
    /// The device id; one connection per (uid, device).
    pub dev: String,
    /// The device's platform.
    pub plat: Platform,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Roles such as `agent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

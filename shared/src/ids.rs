//! Identifier rules: what a uid is, and how conversation ids are formed and read.
//!
//! Conversation ids are opaque to clients but structured for the server:
//! - `d:{a}~{b}`: a direct conversation, `a <= b` byte-wise. `~` is not a uid
//!   character, so the split is unambiguous even though uids may contain `:`.
//! - `g:{name}`: a group, members set by the admin API.
//! - `s:{shop}~{customer}`: a customer-service conversation of one customer with a shop.

/// Longest uid, device id, group name or shop id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Whether `s` is a valid uid: 1–64 characters of `[A-Za-z0-9_.:@-]`.
///
/// Device ids, shop ids and group names follow the same rule.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// The kind of a conversation, read from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvRef<'a> {
    /// Direct conversation between two users (possibly the same one).
    Direct(&'a str, &'a str),
    /// Group conversation `g:{name}`.
    Group(&'a str),
    /// Customer-service conversation of `customer` with `shop`.
    Service {
        /// The shop id.
        shop: &'a str,
        /// The customer's uid.
        customer: &'a str,
    },
    /// The shop's internal notes on its conversation with `customer`: agents only.
    Notes {
        /// The shop id.
        shop: &'a str,
        /// The customer's uid (never a member).
        customer: &'a str,
    },
}

impl<'a> ConvRef<'a> {
    /// Parses a conversation id; `None` when it is not one the server could have made.
    pub fn parse(conv: &'a str) -> Option<Self> {
        if let Some(rest) = conv.strip_prefix("d:") {
            let (a, b) = rest.split_once('~')?;
            (is_valid_id(a) && is_valid_id(b) && a <= b).then_some(ConvRef::Direct(a, b))
        } else if let Some(name) = conv.strip_prefix("g:") {
            is_valid_id(name).then_some(ConvRef::Group(name))
        } else if let Some(rest) = conv.strip_prefix("s:") {
            let (shop, customer) = rest.split_once('~')?;
            (is_valid_id(shop) && is_valid_id(customer))
                .then_some(ConvRef::Service { shop, customer })
        } else if let Some(rest) = conv.strip_prefix("n:") {
            let (shop, customer) = rest.split_once('~')?;
            (is_valid_id(shop) && is_valid_id(customer))
                .then_some(ConvRef::Notes { shop, customer })
        } else {
            None
        }
    }
}

impl ConvRef<'_> {
    /// The conversation's kind.
    pub fn kind(&self) -> crate::protocol::ConvKind {
        use crate::protocol::ConvKind;
        match self {
            ConvRef::Direct(..) => ConvKind::Direct,
            ConvRef::Group(_) => ConvKind::Group,
            ConvRef::Service { .. } => ConvKind::Service,
            ConvRef::Notes { .. } => ConvKind::Notes,
        }
    }
}

/// The id of the direct conversation between `a` and `b`, whichever order they come in.
pub fn direct_conv(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("d:{lo}~{hi}")
}

/// The id of the customer-service conversation of `customer` with `shop`.
pub fn service_conv(shop: &str, customer: &str) -> String {
    format!("s:{shop}~{customer}")
}

/// The id of the internal notes of `shop` on its conversation with `customer`.
pub fn notes_conv(shop: &str, customer: &str) -> String {
    format!("n:{shop}~{customer}")
}

/// The id of the group conversation `name`.
pub fn group_conv(name: &str) -> String {
    format!("g:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_rules() {
        let long = "a".repeat(64);
        let too_long = "a".repeat(65);
        for (uid, ok) in [
            ("alice", true),
            ("a", true),
            ("user.name@shop-1:x_y", true),
            (long.as_str(), true),
            ("", false),
            (too_long.as_str(), false),
            ("al ice", false),
            ("alice/bob", false),
            ("al~ice", false),
            ("ålice", false),
        ] {
            assert_eq!(is_valid_id(uid), ok, "{uid:?}");
        }
    }

    #[test]
    fn direct_ids_are_order_free_and_parse_back() {
        let id = direct_conv("bob", "alice");
        assert_eq!(id, direct_conv("alice", "bob"));
        assert_eq!(ConvRef::parse(&id), Some(ConvRef::Direct("alice", "bob")));
        // uids may contain ':' without confusing the parser
        let id = direct_conv("a:1", "a:0");
        assert_eq!(ConvRef::parse(&id), Some(ConvRef::Direct("a:0", "a:1")));
    }

    #[test]
    fn conv_ids_parse() {
        assert_eq!(ConvRef::parse("g:team"), Some(ConvRef::Group("team")));
        assert_eq!(
            ConvRef::parse(&service_conv("shop1", "carol")),
            Some(ConvRef::Service {
                shop: "shop1",
                customer: "carol"
            })
        );
        assert_eq!(
            ConvRef::parse(&notes_conv("shop1", "carol")),
            Some(ConvRef::Notes {
                shop: "shop1",
                customer: "carol"
            })
        );
        for bad in [
            "",
            "x",
            "d:",
            "d:alice",
            "d:bob~alice",
            "g:",
            "g:a b",
            "s:shop",
            "n:shop",
            "n:~c",
            "q:x",
        ] {
            assert_eq!(ConvRef::parse(bad), None, "{bad:?}");
        }
    }
}

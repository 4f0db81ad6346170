//! Mutual authentication of the RPC links between the nodes of one cluster: imd's use
//! of the handshake in [`shared::link_auth`], which imbench's agent links share.
//!
//! Before a TCP connection is handed to tarpc, both ends run the handshake on the raw
//! stream and prove that they hold the same [`LinkKey`], derived from the
//! `--token-secret` that every node of a cluster shares; the secret never crosses the
//! wire. What this module adds is imd's [`RPC_LINK`] protocol (its magic `IMDRPC02`,
//! its key label, the hints of its error messages), so that callers derive a key from
//! the secret alone and cannot pick another protocol by mistake.
//!
//! The handshake authenticates a peer when the link opens; it is not transport
//! security. The stream that follows is neither encrypted nor integrity-protected:
//! cluster traffic belongs on a private network (or a VPN). It does no logging: the
//! caller knows the peer's address and logs the error.

use shared::link_auth::{self, Protocol};
use tokio::io::{AsyncRead, AsyncWrite};

pub use shared::link_auth::{HANDSHAKE_TIMEOUT, HandshakeError, HandshakeErrorKind};

/// imd's RPC link. The magic and the key label are the wire format: the magic ends
/// in [`super::RPC_VERSION`] (two digits), so that nodes of another RPC version fail
/// the handshake with `WrongMagic` ([`peer_rpc_version`] reads theirs from it).
pub const RPC_LINK: Protocol = Protocol {
    name: "rpc handshake",
    magic: *b"IMDRPC02",
    key_label: b"imd rpc link v1",
    endpoint: "an imd node's RPC port (--rpc-listen)",
    secret_hint: "the peer's --token-secret differs from this node's (all nodes of a \
                  cluster need the same one)",
};

/// The protocol of this node's RPC version: [`RPC_LINK`], or (test builds only) the
/// same with the magic of another version.
fn link_protocol() -> &'static Protocol {
    static PROTOCOL: std::sync::OnceLock<&'static Protocol> = std::sync::OnceLock::new();
    PROTOCOL.get_or_init(|| {
        let version = super::rpc_version();
        if version == super::RPC_VERSION {
            return &RPC_LINK;
        }
        let mut magic = RPC_LINK.magic;
        magic[6..].copy_from_slice(format!("{:02}", version % 100).as_bytes());
        // Once per process, and only where the version was overridden (tests).
        Box::leak(Box::new(Protocol { magic, ..RPC_LINK }))
    })
}

/// The RPC version of a peer whose handshake failed with `WrongMagic { got }`, when
/// it is an imd node (`IMDRPCnn`).
pub fn peer_rpc_version(got: &[u8; shared::link_auth::MAGIC_LEN]) -> Option<u32> {
    let digits = got.strip_prefix(b"IMDRPC")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The key that nodes of one cluster prove to each other: the [`RPC_LINK`] key of
/// [`shared::link_auth::LinkKey`], HMAC-SHA256 of `b"imd rpc link v1"` under the
/// shared `--token-secret`, so that it is never the token key itself.
///
/// While the token secret is rotated (`--token-secrets-old`), a node still accepts the
/// links of peers that prove the key of an earlier secret, so that nodes restarted
/// with the new secret and nodes not yet restarted keep talking; it always dials with
/// the key of its own `--token-secret`.
///
/// Its `Debug` prints `LinkKey(..)`, never the key.
#[derive(Clone)]
pub struct LinkKey {
    /// The key of `--token-secret` first, then those of earlier secrets.
    keys: Vec<link_auth::LinkKey>,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.keys[0].fmt(f)
    }
}

impl LinkKey {
    /// Derives the link key from the cluster's token secret:
    /// HMAC-SHA256(key = `token_secret`, msg = `b"imd rpc link v1"`).
    pub fn derive(token_secret: &[u8]) -> Self {
        Self::rotating(token_secret, std::iter::empty())
    }

    /// The key of `token_secret`, also accepting from peers the keys of `old` secrets.
    pub fn rotating<'a>(token_secret: &'a [u8], old: impl Iterator<Item = &'a [u8]>) -> Self {
        let keys = std::iter::once(token_secret)
            .chain(old)
            .map(|s| link_auth::LinkKey::derive(link_protocol(), s))
            .collect();
        Self { keys }
    }

    /// The keys to dial with, one at a time: this node's own first, then those of the
    /// earlier secrets, for a peer that has not been given the new secret yet.
    pub fn for_dialling(&self) -> impl Iterator<Item = LinkKey> + '_ {
        self.keys.iter().map(|k| LinkKey {
            keys: vec![k.clone()],
        })
    }
}

/// Runs the dialling side's handshake on `io` (see
/// [`shared::link_auth::client_handshake`]): on `Ok`, `io` is ready for tarpc; on
/// `Err`, drop it.
pub async fn client_handshake<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    link_auth::client_handshake(io, &key.keys[0]).await
}

/// Runs the accepting side's handshake on `io` (see
/// [`shared::link_auth::server_handshake`]): on `Ok`, `io` is ready for tarpc; on
/// `Err`, nothing has been sent that could help the peer; drop it.
pub async fn server_handshake<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    link_auth::server_handshake_any(io, &key.keys).await
}

#[cfg(test)]
mod tests {
    //! The handshake itself is tested in `shared::link_auth`; these tests pin imd's
    //! protocol and check that the adapter runs it.

    use tokio::io::duplex;

    use super::*;

    #[test]
    fn the_wire_format_is_unchanged() {
        // shared::link_auth checks HMAC-SHA256 of this label against a value computed
        // independently; a change of either breaks clusters of mixed versions.
        assert_eq!(&RPC_LINK.magic, b"IMDRPC02");
        let version = format!("{:02}", super::super::RPC_VERSION);
        assert_eq!(&RPC_LINK.magic[6..], version.as_bytes());
        assert_eq!(peer_rpc_version(b"IMDRPC01"), Some(1));
        assert_eq!(peer_rpc_version(b"OTHERL01"), None);
        assert_eq!(RPC_LINK.key_label, b"imd rpc link v1");
        assert_eq!(format!("{:?}", LinkKey::derive(b"s")), "LinkKey(..)");
    }

    #[tokio::test]
    async fn same_secret_succeeds_and_another_is_refused() {
        let key = LinkKey::derive(b"cluster secret");
        let (mut c, mut s) = duplex(1024);
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, &key),
            server_handshake(&mut s, &key)
        );
        cr.expect("client");
        sr.expect("server");

        let other = LinkKey::derive(b"another secret");
        let (mut c, mut s) = duplex(1024);
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, &other),
            server_handshake(&mut s, &key)
        );
        let sr = sr.expect_err("server");
        assert!(matches!(sr.kind(), HandshakeErrorKind::BadProof), "{sr:?}");
        let cr = cr.expect_err("client");
        assert!(matches!(cr.kind(), HandshakeErrorKind::Rejected), "{cr:?}");
    }

    #[tokio::test]
    async fn during_a_rotation_nodes_of_either_secret_link() {
        let rotating = LinkKey::rotating(b"new", [&b"old"[..]].into_iter());
        let old = LinkKey::derive(b"old");
        let (mut c, mut s) = duplex(1024);
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, &old),
            server_handshake(&mut s, &rotating)
        );
        cr.expect("old dials rotating");
        sr.expect("rotating accepts old");
        // The other way the old node must accept the new key: it is given
        // `--token-secrets-old` with the new secret first (step 1 of the rotation).
        let staged = LinkKey::rotating(b"old", [&b"new"[..]].into_iter());
        let (mut c, mut s) = duplex(1024);
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, &rotating),
            server_handshake(&mut s, &staged)
        );
        cr.expect("rotating dials staged");
        sr.expect("staged accepts new");
    }

    #[tokio::test]
    async fn a_peer_of_another_protocol_is_refused_with_wrong_magic() {
        // What an imbench agent link (or any other use of the handshake) looks like
        // to an imd RPC port.
        const ELSEWHERE: Protocol = Protocol {
            name: "other handshake",
            magic: *b"OTHERL01",
            key_label: b"other link v1",
            ..RPC_LINK
        };
        let stranger = link_auth::LinkKey::derive(&ELSEWHERE, b"s");
        let ours = LinkKey::derive(b"s");
        let (mut c, mut s) = duplex(1024);
        let (_, sr) = tokio::join!(
            link_auth::client_handshake(&mut c, &stranger),
            server_handshake(&mut s, &ours)
        );
        let sr = sr.expect_err("server");
        assert!(
            matches!(sr.kind(), HandshakeErrorKind::WrongMagic { got } if got == b"OTHERL01"),
            "{sr:?}"
        );
    }

    #[tokio::test]
    async fn errors_name_imd_s_flags() {
        // A peer that is gone before the hello: the message points at the RPC port.
        let (mut c, s) = duplex(1024);
        drop(s);
        let gone = client_handshake(&mut c, &LinkKey::derive(b"s"))
            .await
            .expect_err("closed peer")
            .to_string();
        assert!(
            gone.starts_with("rpc handshake: ") && gone.contains("--rpc-listen"),
            "{gone}"
        );
        // A peer with another secret: the message points at the secret.
        let (one, two) = (LinkKey::derive(b"one"), LinkKey::derive(b"two"));
        let (mut c, mut s) = duplex(1024);
        let (cr, _) = tokio::join!(
            client_handshake(&mut c, &one),
            server_handshake(&mut s, &two)
        );
        let rejected = cr.expect_err("client").to_string();
        assert!(
            rejected.contains("--token-secret") && rejected.contains("this node's"),
            "{rejected}"
        );
    }
}

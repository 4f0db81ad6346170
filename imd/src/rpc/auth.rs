//! Mutual authentication of the RPC links between the nodes of one cluster: imd's use
//! of the handshake in [`shared::link_auth`], which imbench's agent links share.
//!
//! Before a TCP connection is handed to tarpc, both ends run the handshake on the raw
//! stream and prove that they hold the same [`LinkKey`], derived from the
//! `--token-secret` that every node of a cluster shares; the secret never crosses the
//! wire. What this module adds is imd's [`RPC_LINK`] protocol (its magic `IMDRPC01`,
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

/// imd's RPC link. The magic and the key label are the wire format: changing either
/// breaks clusters of mixed versions.
pub const RPC_LINK: Protocol = Protocol {
    name: "rpc handshake",
    magic: *b"IMDRPC01",
    key_label: b"imd rpc link v1",
    endpoint: "an imd node's RPC port (--rpc-listen)",
    secret_hint: "the peer's --token-secret differs from this node's (all nodes of a \
                  cluster need the same one)",
};

/// The key that nodes of one cluster prove to each other: the [`RPC_LINK`] key of
/// [`shared::link_auth::LinkKey`], HMAC-SHA256 of `b"imd rpc link v1"` under the
/// shared `--token-secret`, so that it is never the token key itself.
///
/// Its `Debug` prints `LinkKey(..)`, never the key.
#[derive(Clone)]
pub struct LinkKey(link_auth::LinkKey);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl LinkKey {
    /// Derives the link key from the cluster's token secret:
    /// HMAC-SHA256(key = `token_secret`, msg = `b"imd rpc link v1"`).
    pub fn derive(token_secret: &[u8]) -> Self {
        Self(link_auth::LinkKey::derive(&RPC_LINK, token_secret))
    }
}

/// Runs the dialling side's handshake on `io` (see
/// [`shared::link_auth::client_handshake`]): on `Ok`, `io` is ready for tarpc; on
/// `Err`, drop it.
pub async fn client_handshake<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    link_auth::client_handshake(io, &key.0).await
}

/// Runs the accepting side's handshake on `io` (see
/// [`shared::link_auth::server_handshake`]): on `Ok`, `io` is ready for tarpc; on
/// `Err`, nothing has been sent that could help the peer; drop it.
pub async fn server_handshake<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    link_auth::server_handshake(io, &key.0).await
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
        assert_eq!(&RPC_LINK.magic, b"IMDRPC01");
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

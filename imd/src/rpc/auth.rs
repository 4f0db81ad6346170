//! Mutual authentication of the RPC links between the nodes of one cluster.
//!
//! Before a TCP connection is handed to tarpc, both ends run a short handshake on the
//! raw stream and prove that they hold the same [`LinkKey`], derived from the
//! `--token-secret` that every node of a cluster shares. The secret never crosses the
//! wire: each side proves itself with an HMAC over both sides' fresh nonces, so a
//! recorded handshake cannot be replayed, and the `client`/`server` labels stop a
//! proof from being reflected back to its sender. The server checks the client first
//! and, on any failure, closes without sending a reason.
//!
//! Wire format, all fixed-size: the client sends `IMDRPC01` and its 32-byte nonce; the
//! server checks the magic, then answers `IMDRPC01` and its own nonce; the client sends
//! its 32-byte proof, and the server, once the proof checks out, sends its own.
//!
//! This module authenticates a peer when the link opens; it must not be mistaken for
//! transport security. The stream that follows is neither encrypted nor
//! integrity-protected, so an attacker on the path between two nodes can still read,
//! relay or alter it: cluster traffic belongs on a private network (or a VPN). It
//! does no logging either: the caller knows the peer's address and logs the error.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a whole handshake may take, either side. Nodes of one cluster are close,
/// so this only bounds how long a silent or stalled peer holds a connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first bytes each side sends: names the protocol and its version, so that a
/// peer of another kind or version fails with [`HandshakeError::WrongMagic`].
const MAGIC: [u8; 8] = *b"IMDRPC01";
/// Length of each side's random nonce.
const NONCE_LEN: usize = 32;
/// Length of a proof: one HMAC-SHA256 tag.
const PROOF_LEN: usize = 32;
/// Length of a hello: the magic, then the nonce.
const HELLO_LEN: usize = MAGIC.len() + NONCE_LEN;
/// The message whose HMAC under the token secret is the link key. The version in it
/// keeps the link key apart from any other key a later protocol derives.
const LINK_KEY_LABEL: &[u8] = b"imd rpc link v1";

/// HMAC-SHA256, the MAC of every step.
type HmacSha256 = Hmac<Sha256>;
/// A random nonce, one per side and handshake.
type Nonce = [u8; NONCE_LEN];
/// One side's proof that it holds the link key.
type Proof = [u8; PROOF_LEN];

/// The key that nodes of one cluster prove to each other: HMAC-SHA256 of a fixed
/// label under the shared `--token-secret`, so that it is never the token key itself.
///
/// Its `Debug` prints `LinkKey(..)`, never the key.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl LinkKey {
    /// Derives the link key from the cluster's token secret:
    /// HMAC-SHA256(key = `token_secret`, msg = `b"imd rpc link v1"`).
    pub fn derive(token_secret: &[u8]) -> Self {
        let tag = mac_keyed_with(token_secret)
            .chain_update(LINK_KEY_LABEL)
            .finalize()
            .into_bytes();
        Self(tag.into())
    }

    /// The MAC that `role` computes over both nonces, its peer's first: each side
    /// proves itself over the nonce that the other side just chose.
    fn proof_mac(&self, role: Role, peer_nonce: &Nonce, own_nonce: &Nonce) -> HmacSha256 {
        mac_keyed_with(&self.0)
            .chain_update(role.label())
            .chain_update(peer_nonce)
            .chain_update(own_nonce)
    }

    /// The proof that `role` sends.
    fn prove(&self, role: Role, peer_nonce: &Nonce, own_nonce: &Nonce) -> Proof {
        self.proof_mac(role, peer_nonce, own_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks, in constant time, the proof that a peer in `role` sent.
    fn verify(
        &self,
        role: Role,
        peer_nonce: &Nonce,
        own_nonce: &Nonce,
        proof: &Proof,
    ) -> Result<(), HandshakeError> {
        self.proof_mac(role, peer_nonce, own_nonce)
            .verify_slice(proof)
            .map_err(|_| HandshakeError::BadProof)
    }
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

/// An HMAC-SHA256 keyed with `key`.
fn mac_keyed_with(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts a key of any length")
}

/// Why an RPC link handshake failed. The messages say what an operator should check.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing the stream failed, or the peer closed it early.
    #[error(
        "rpc handshake: I/O error while {stage}: {source} (check that the peer is a \
         reachable imd node that is still running)"
    )]
    Io {
        /// The step that failed, e.g. "reading the peer's hello".
        stage: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection instead of proving itself, which is what an
    /// imd server does when it rejects the client's proof.
    #[error(
        "rpc handshake: the peer closed the connection after our proof, so it most \
         likely rejected it: check that the peer's --token-secret is the same as this \
         node's"
    )]
    Rejected,
    /// The whole handshake took longer than allowed.
    #[error(
        "rpc handshake: no answer within {0:?}: check that the address is a node's RPC \
         port (--rpc-listen) and that the peer is not overloaded"
    )]
    Timeout(Duration),
    /// The peer does not speak this protocol, or speaks another version of it.
    #[error(
        "rpc handshake: the peer is not an imd RPC endpoint of this version (it sent \
         \"{}\", expected \"IMDRPC01\"): check that the address is a node's RPC port \
         (--rpc-listen) and that every node runs the same imd version",
        .got.escape_ascii()
    )]
    WrongMagic {
        /// The first bytes the peer sent.
        got: [u8; 8],
    },
    /// The peer's proof does not match this node's link key.
    #[error(
        "rpc handshake: the peer's proof is wrong: the peer's --token-secret differs \
         from this node's (all nodes of a cluster need the same one)"
    )]
    BadProof,
    /// The OS could not supply random bytes for a nonce.
    #[error("rpc handshake: no OS randomness for the nonce: {0}")]
    Randomness(#[source] getrandom::Error),
}

/// Which end of the link a side is; also the label that keeps the two proofs apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The side that dialled.
    Client,
    /// The side that accepted.
    Server,
}

impl Role {
    /// The label that starts this role's proof.
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Server => b"server",
        }
    }
}

/// Runs the dialling side's handshake on `io`, within [`HANDSHAKE_TIMEOUT`].
///
/// On `Ok`, the server has proved that it holds `key` and has accepted this side's
/// proof, and `io` is positioned right after the handshake, ready for tarpc. On `Err`,
/// the write half has been shut down where possible; drop the stream.
pub async fn client_handshake<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake(Role::Client, io, key, HANDSHAKE_TIMEOUT).await
}

/// Runs the accepting side's handshake on `io`, within [`HANDSHAKE_TIMEOUT`].
///
/// On `Ok`, the client has proved that it holds `key`, and `io` is positioned right
/// after the handshake, ready for tarpc. On `Err`, nothing that could help the peer
/// has been sent (no reason, no proof) and the write half has been shut down where
/// possible; drop the stream.
pub async fn server_handshake<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake(Role::Server, io, key, HANDSHAKE_TIMEOUT).await
}

/// Runs `role`'s side within `limit`, and shuts the write half down on failure so
/// that the peer sees the end of the stream at once instead of waiting for its own
/// timeout.
async fn handshake<S>(
    role: Role,
    io: &mut S,
    key: &LinkKey,
    limit: Duration,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let steps = async {
        let result = match role {
            Role::Client => client_steps(io, key).await,
            Role::Server => server_steps(io, key).await,
        };
        if result.is_err() {
            // Best effort: the stream is being abandoned, and the caller drops it.
            let _ = io.shutdown().await;
        }
        result
    };
    tokio::time::timeout(limit, steps)
        .await
        .map_err(|_| HandshakeError::Timeout(limit))?
}

/// The client's steps: hello, the server's hello, proof, the server's proof.
async fn client_steps<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let own_nonce = fresh_nonce()?;
    send(io, &hello(&own_nonce), "sending the hello").await?;
    let peer_nonce = read_hello(io).await?;
    let proof = key.prove(Role::Client, &peer_nonce, &own_nonce);
    send(io, &proof, "sending the proof").await?;
    let peer_proof = read_server_proof(io).await?;
    key.verify(Role::Server, &own_nonce, &peer_nonce, &peer_proof)
}

/// The server's steps: the client's hello, hello, the client's proof, proof. The
/// server answers nothing until the magic matches, and proves nothing until the
/// client has.
async fn server_steps<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer_nonce = read_hello(io).await?;
    let own_nonce = fresh_nonce()?;
    send(io, &hello(&own_nonce), "sending the hello").await?;
    let peer_proof: Proof = recv(io, "reading the peer's proof").await?;
    key.verify(Role::Client, &own_nonce, &peer_nonce, &peer_proof)?;
    let proof = key.prove(Role::Server, &peer_nonce, &own_nonce);
    send(io, &proof, "sending the proof").await
}

/// A fresh random nonce from the OS.
fn fresh_nonce() -> Result<Nonce, HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(HandshakeError::Randomness)?;
    Ok(nonce)
}

/// The hello that carries `nonce`: the magic, then the nonce.
fn hello(nonce: &Nonce) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..MAGIC.len()].copy_from_slice(&MAGIC);
    out[MAGIC.len()..].copy_from_slice(nonce);
    out
}

/// Reads the peer's hello and returns its nonce. The magic is read and checked on its
/// own first, so that a peer of another kind which sent a few bytes and now waits
/// (an HTTP client, say) fails with `WrongMagic` rather than a timeout.
async fn read_hello<S>(io: &mut S) -> Result<Nonce, HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let magic: [u8; MAGIC.len()] = recv(io, "reading the peer's hello").await?;
    if magic != MAGIC {
        return Err(HandshakeError::WrongMagic { got: magic });
    }
    recv(io, "reading the peer's nonce").await
}

/// Reads the server's proof. A server that rejects the client's proof closes the
/// connection, so the end of the stream here means [`HandshakeError::Rejected`].
async fn read_server_proof<S>(io: &mut S) -> Result<Proof, HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let mut proof = [0u8; PROOF_LEN];
    match io.read_exact(&mut proof).await {
        Ok(_) => Ok(proof),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(HandshakeError::Rejected),
        Err(source) => Err(HandshakeError::Io {
            stage: "reading the peer's proof",
            source,
        }),
    }
}

/// Reads exactly `N` bytes; `stage` names the step in the error.
async fn recv<S, const N: usize>(io: &mut S, stage: &'static str) -> Result<[u8; N], HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = [0u8; N];
    io.read_exact(&mut buf)
        .await
        .map_err(|source| HandshakeError::Io { stage, source })?;
    Ok(buf)
}

/// Writes all of `bytes` and flushes them; `stage` names the step in the error.
async fn send<S>(io: &mut S, bytes: &[u8], stage: &'static str) -> Result<(), HandshakeError>
where
    S: AsyncWrite + Unpin,
{
    let result = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    result
        .await
        .map_err(|source| HandshakeError::Io { stage, source })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// The limit in tests that wait for a timeout on purpose (a silent peer), short
    /// to keep the suite fast; tokio's paused clock needs the `test-util` feature,
    /// which the workspace does not enable.
    const SHORT: Duration = Duration::from_millis(100);

    /// A connected in-memory pair: (client end, server end).
    fn pipe() -> (DuplexStream, DuplexStream) {
        duplex(1024)
    }

    /// A connected loopback TCP pair: (client end, server end).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.expect("accept");
        (client.expect("connect"), server)
    }

    /// `bytes` as lowercase hex.
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn link_key_is_hmac_sha256_of_the_label() {
        // Computed independently: Python's hmac.new(b"test-secret", b"imd rpc link v1",
        // hashlib.sha256). A change here breaks clusters of mixed versions.
        let key = LinkKey::derive(b"test-secret");
        assert_eq!(
            hex(&key.0),
            "e369f22093fafa6dcf2f4279ee683253309b13d66e1ab51005ff322674b868c6"
        );
        assert_ne!(key.0, LinkKey::derive(b"other-secret").0);
    }

    #[test]
    fn link_key_debug_hides_the_key() {
        assert_eq!(format!("{:?}", LinkKey::derive(b"s")), "LinkKey(..)");
    }

    #[test]
    fn proofs_of_the_two_roles_differ() {
        let key = LinkKey::derive(b"s");
        let (a, b) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let client = key.prove(Role::Client, &a, &b);
        assert_ne!(client, key.prove(Role::Server, &a, &b));
        assert!(key.verify(Role::Client, &a, &b, &client).is_ok());
        // A proof reflected back with the nonces swapped does not verify.
        assert!(matches!(
            key.verify(Role::Client, &b, &a, &client),
            Err(HandshakeError::BadProof)
        ));
    }

    /// Runs both sides with the same key over `c` and `s`; both succeed, and nothing
    /// of the handshake is left unread on either side.
    async fn same_key_succeeds_and_leaves_the_stream_clean<S>(mut c: S, mut s: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let key = LinkKey::derive(b"cluster secret");
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, &key),
            server_handshake(&mut s, &key)
        );
        cr.expect("client");
        sr.expect("server");
        c.write_all(b"ping").await.expect("write");
        s.write_all(b"pong").await.expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        c.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn same_key_succeeds_in_memory() {
        let (c, s) = pipe();
        same_key_succeeds_and_leaves_the_stream_clean(c, s).await;
    }

    #[tokio::test]
    async fn different_secrets_fail_on_both_sides() {
        let (one, two) = (
            LinkKey::derive(b"secret one"),
            LinkKey::derive(b"secret two"),
        );
        let (mut c, mut s) = pipe();
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, &one),
            server_handshake(&mut s, &two)
        );
        assert!(matches!(sr, Err(HandshakeError::BadProof)), "{sr:?}");
        // The server closes, so the client fails at once rather than timing out.
        assert!(matches!(cr, Err(HandshakeError::Rejected)), "{cr:?}");
    }

    #[tokio::test]
    async fn client_rejects_a_server_with_a_bad_proof() {
        let key = LinkKey::derive(b"s");
        let (mut c, mut peer) = pipe();
        let fake_server = async {
            let mut hello_in = [0u8; HELLO_LEN];
            peer.read_exact(&mut hello_in).await.expect("read hello");
            peer.write_all(&hello(&[7u8; NONCE_LEN]))
                .await
                .expect("write hello");
            let mut proof = [0u8; PROOF_LEN];
            peer.read_exact(&mut proof).await.expect("read proof");
            peer.write_all(&[0u8; PROOF_LEN])
                .await
                .expect("write proof");
        };
        let (cr, ()) = tokio::join!(client_handshake(&mut c, &key), fake_server);
        assert!(matches!(cr, Err(HandshakeError::BadProof)), "{cr:?}");
    }

    #[tokio::test]
    async fn server_refuses_wrong_magic_and_sends_nothing() {
        let key = LinkKey::derive(b"s");
        let (mut peer, mut s) = pipe();
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let sr = server_handshake(&mut s, &key).await;
        match sr {
            Err(HandshakeError::WrongMagic { got }) => assert_eq!(&got, b"GET / HT"),
            other => panic!("expected WrongMagic, got {other:?}"),
        }
        drop(s);
        let mut answer = Vec::new();
        peer.read_to_end(&mut answer).await.expect("read");
        assert!(answer.is_empty(), "server answered {answer:?}");
    }

    #[tokio::test]
    async fn client_refuses_another_version() {
        let key = LinkKey::derive(b"s");
        let (mut c, mut peer) = pipe();
        let fake_server = async {
            let mut hello_in = [0u8; HELLO_LEN];
            peer.read_exact(&mut hello_in).await.expect("read hello");
            peer.write_all(b"IMDRPC02").await.expect("write");
            peer.write_all(&[0u8; NONCE_LEN]).await.expect("write");
        };
        let (cr, ()) = tokio::join!(client_handshake(&mut c, &key), fake_server);
        match cr {
            Err(HandshakeError::WrongMagic { got }) => assert_eq!(&got, b"IMDRPC02"),
            other => panic!("expected WrongMagic, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn silent_peer_times_out_on_both_roles() {
        let key = LinkKey::derive(b"s");
        for role in [Role::Client, Role::Server] {
            // `peer` stays open and says nothing.
            let (mut own, _peer) = pipe();
            let result = handshake(role, &mut own, &key, SHORT).await;
            assert!(
                matches!(result, Err(HandshakeError::Timeout(d)) if d == SHORT),
                "{role:?}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn peer_closing_mid_handshake_is_an_io_error() {
        let key = LinkKey::derive(b"s");

        // A client that sends the magic and half a nonce, then hangs up.
        let (mut peer, mut s) = pipe();
        peer.write_all(&hello(&[0u8; NONCE_LEN])[..MAGIC.len() + 10])
            .await
            .expect("write");
        drop(peer);
        let sr = server_handshake(&mut s, &key).await;
        assert!(
            matches!(&sr, Err(HandshakeError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof),
            "{sr:?}"
        );

        // A server that answers the magic only, then hangs up.
        let (mut c, mut peer) = pipe();
        let fake_server = async move {
            let mut hello_in = [0u8; HELLO_LEN];
            peer.read_exact(&mut hello_in).await.expect("read hello");
            peer.write_all(&MAGIC).await.expect("write");
        };
        let (cr, ()) = tokio::join!(client_handshake(&mut c, &key), fake_server);
        assert!(
            matches!(&cr, Err(HandshakeError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof),
            "{cr:?}"
        );
    }

    #[tokio::test]
    async fn tcp_same_key_succeeds() {
        let (c, s) = tcp_pair().await;
        same_key_succeeds_and_leaves_the_stream_clean(c, s).await;
    }

    #[tokio::test]
    async fn tcp_different_secrets_fail_on_both_sides() {
        let (mut c, mut s) = tcp_pair().await;
        // Each side in its own task, owning its stream, as in the daemon.
        let server =
            tokio::spawn(
                async move { server_handshake(&mut s, &LinkKey::derive(b"secret two")).await },
            );
        let cr = client_handshake(&mut c, &LinkKey::derive(b"secret one")).await;
        let sr = server.await.expect("server task");
        assert!(matches!(sr, Err(HandshakeError::BadProof)), "{sr:?}");
        assert!(matches!(cr, Err(HandshakeError::Rejected)), "{cr:?}");
    }

    #[tokio::test]
    async fn tcp_wrong_magic_and_silence() {
        let key = LinkKey::derive(b"s");

        let (mut peer, mut s) = tcp_pair().await;
        peer.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01")
            .await
            .expect("write");
        let sr = server_handshake(&mut s, &key).await;
        assert!(
            matches!(sr, Err(HandshakeError::WrongMagic { .. })),
            "{sr:?}"
        );

        let (_peer, mut s) = tcp_pair().await;
        let sr = handshake(Role::Server, &mut s, &key, SHORT).await;
        assert!(matches!(sr, Err(HandshakeError::Timeout(_))), "{sr:?}");
    }

    #[test]
    fn errors_tell_the_operator_what_to_check() {
        let bad = HandshakeError::BadProof.to_string();
        assert!(bad.contains("--token-secret"), "{bad}");
        let rejected = HandshakeError::Rejected.to_string();
        assert!(rejected.contains("--token-secret"), "{rejected}");
        let magic = HandshakeError::WrongMagic { got: *b"GET / HT" }.to_string();
        assert!(
            magic.contains("\"GET / HT\"") && magic.contains("version"),
            "{magic}"
        );
    }
}

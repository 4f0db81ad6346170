//! Mutual authentication of a private TCP link between two programs that share a
//! secret: imd's RPC links between the nodes of a cluster, and imbench's link between
//! a coordinator and a listening agent.
//!
//! Before the stream is handed to its real protocol, both ends run a short handshake on
//! it and prove that they hold the same [`LinkKey`], derived from the secret they share
//! (the deployment's `--token-secret`) and from a label of their [`Protocol`], so that
//! the two uses derive different keys from one secret. The secret never crosses the
//! wire: each side proves itself with an HMAC over both sides' fresh nonces, so a
//! recorded handshake cannot be replayed, and the `client`/`server` labels stop a
//! proof from being reflected back to its sender. The server checks the client first
//! and, on any failure, closes without sending a reason.
//!
//! Wire format, all fixed-size: the client sends the protocol's 8-byte magic and its
//! 32-byte nonce; the server checks the magic, then answers the magic and its own
//! nonce; the client sends its 32-byte proof, and the server, once the proof checks
//! out, sends its own. Each use has its own magic, so an imd RPC port and an imbench
//! agent port refuse each other with [`HandshakeErrorKind::WrongMagic`].
//!
//! This module authenticates a peer when the link opens; it must not be mistaken for
//! transport security. The stream that follows is neither encrypted nor
//! integrity-protected, so an attacker on the path can still read, relay or alter it:
//! these links belong on a private network (or a VPN), and nothing secret may be sent
//! over them. It does no logging either: the caller knows the peer's address and logs
//! the error.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a whole handshake may take, either side. Only bounds how long a silent or
/// stalled peer holds a connection; a live peer answers in a round trip or two.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Length of a protocol's magic.
pub const MAGIC_LEN: usize = 8;
/// Length of each side's random nonce.
const NONCE_LEN: usize = 32;
/// Length of a proof: one HMAC-SHA256 tag.
const PROOF_LEN: usize = 32;
/// Length of a hello: the magic, then the nonce.
const HELLO_LEN: usize = MAGIC_LEN + NONCE_LEN;

/// HMAC-SHA256, the MAC of every step.
type HmacSha256 = Hmac<Sha256>;
/// A random nonce, one per side and handshake.
type Nonce = [u8; NONCE_LEN];
/// One side's proof that it holds the link key.
type Proof = [u8; PROOF_LEN];

/// One use of the handshake: what its two ends send first, which key they derive, and
/// what its error messages tell an operator to check. Each use is one `const`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// Names the link in error messages, e.g. `"rpc handshake"`.
    pub name: &'static str,
    /// The first bytes each side sends: names the protocol and its version, so that a
    /// peer of another kind or version fails with [`HandshakeErrorKind::WrongMagic`].
    pub magic: [u8; MAGIC_LEN],
    /// The message whose HMAC under the shared secret is the link key. The version in
    /// it keeps the key apart from any key that another use, or a later version,
    /// derives from the same secret.
    pub key_label: &'static [u8],
    /// What the dialled address should be, for error messages, e.g. `"an imd node's
    /// RPC port (--rpc-listen)"`.
    pub endpoint: &'static str,
    /// What to check when a proof fails, for error messages, e.g. `"the peer's
    /// --token-secret differs from this node's"`.
    pub secret_hint: &'static str,
}

/// The key that both ends of a link prove to each other: HMAC-SHA256 of the
/// protocol's label under the shared secret, so that it is never the secret itself.
/// It belongs to one [`Protocol`], whose magic the handshake then sends.
///
/// Its `Debug` prints `LinkKey(..)`, never the key.
#[derive(Clone)]
pub struct LinkKey {
    /// The use this key was derived for.
    protocol: &'static Protocol,
    /// HMAC-SHA256(key = secret, msg = `protocol.key_label`).
    key: [u8; 32],
}

impl LinkKey {
    /// Derives the link key of `protocol` from the shared `secret`:
    /// HMAC-SHA256(key = `secret`, msg = `protocol.key_label`).
    pub fn derive(protocol: &'static Protocol, secret: &[u8]) -> Self {
        let tag = mac_keyed_with(secret)
            .chain_update(protocol.key_label)
            .finalize()
            .into_bytes();
        Self {
            protocol,
            key: tag.into(),
        }
    }

    /// The protocol this key was derived for.
    pub fn protocol(&self) -> &'static Protocol {
        self.protocol
    }

    /// The MAC that `role` computes over both nonces, its peer's first: each side
    /// proves itself over the nonce that the other side just chose.
    fn proof_mac(&self, role: Role, peer_nonce: &Nonce, own_nonce: &Nonce) -> HmacSha256 {
        mac_keyed_with(&self.key)
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
    ) -> Result<(), HandshakeErrorKind> {
        self.proof_mac(role, peer_nonce, own_nonce)
            .verify_slice(proof)
            .map_err(|_| HandshakeErrorKind::BadProof)
    }

    /// An error of `kind` in this key's protocol.
    fn error(&self, kind: HandshakeErrorKind) -> HandshakeError {
        HandshakeError {
            protocol: self.protocol,
            kind,
        }
    }
}

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

/// An HMAC-SHA256 keyed with `key`.
fn mac_keyed_with(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts a key of any length")
}

/// Why a handshake failed, and in which protocol. Its message names the protocol and
/// says what an operator should check.
#[derive(Debug)]
pub struct HandshakeError {
    /// The protocol whose handshake failed; its texts complete the message.
    protocol: &'static Protocol,
    /// What went wrong.
    kind: HandshakeErrorKind,
}

impl HandshakeError {
    /// What went wrong.
    pub fn kind(&self) -> &HandshakeErrorKind {
        &self.kind
    }
}

/// What went wrong in a handshake.
#[derive(Debug)]
pub enum HandshakeErrorKind {
    /// Reading or writing the stream failed, or the peer closed it early.
    Io {
        /// The step that failed, e.g. "reading the peer's hello".
        stage: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server closed the connection instead of proving itself, which is what a
    /// server of this module does when it rejects the client's proof.
    Rejected,
    /// The whole handshake took longer than allowed.
    Timeout(Duration),
    /// The peer does not speak this protocol, or speaks another version of it.
    WrongMagic {
        /// The first bytes the peer sent.
        got: [u8; MAGIC_LEN],
    },
    /// The peer's proof does not match this side's link key.
    BadProof,
    /// The OS could not supply random bytes for a nonce.
    Randomness(getrandom::Error),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Protocol {
            name,
            magic,
            endpoint,
            secret_hint,
            ..
        } = self.protocol;
        match &self.kind {
            HandshakeErrorKind::Io { stage, source } => write!(
                f,
                "{name}: I/O error while {stage}: {source} (check that the dialled address \
                 is {endpoint} and that the peer is still running)"
            ),
            HandshakeErrorKind::Rejected => write!(
                f,
                "{name}: the peer closed the connection after our proof, so it most likely \
                 rejected it: {secret_hint}"
            ),
            HandshakeErrorKind::Timeout(limit) => write!(
                f,
                "{name}: no answer within {limit:?}: check that the dialled address is \
                 {endpoint} and that the peer is not overloaded"
            ),
            HandshakeErrorKind::WrongMagic { got } => write!(
                f,
                "{name}: the peer does not speak this protocol of this version (it sent \
                 \"{}\", expected \"{}\"): check that the dialled address is {endpoint} and \
                 that both ends run the same version",
                got.escape_ascii(),
                magic.escape_ascii()
            ),
            HandshakeErrorKind::BadProof => {
                write!(f, "{name}: the peer's proof is wrong: {secret_hint}")
            }
            HandshakeErrorKind::Randomness(error) => {
                write!(f, "{name}: no OS randomness for the nonce: {error}")
            }
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            HandshakeErrorKind::Io { source, .. } => Some(source),
            HandshakeErrorKind::Randomness(error) => Some(error),
            _ => None,
        }
    }
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

/// Runs the dialling side's handshake on `io`, within [`HANDSHAKE_TIMEOUT`], in the
/// protocol of `key`.
///
/// On `Ok`, the server has proved that it holds `key` and has accepted this side's
/// proof, and `io` is positioned right after the handshake, ready for the real
/// protocol. On `Err`, the write half has been shut down where possible; drop the
/// stream.
pub async fn client_handshake<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake(
        Role::Client,
        io,
        std::slice::from_ref(key),
        HANDSHAKE_TIMEOUT,
    )
    .await
}

/// Runs the accepting side's handshake on `io`, within [`HANDSHAKE_TIMEOUT`], in the
/// protocol of `key`.
///
/// On `Ok`, the client has proved that it holds `key`, and `io` is positioned right
/// after the handshake, ready for the real protocol. On `Err`, nothing that could help
/// the peer has been sent (no reason, no proof) and the write half has been shut down
/// where possible; drop the stream.
pub async fn server_handshake<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    server_handshake_any(io, std::slice::from_ref(key)).await
}

/// [`server_handshake`] that accepts a client proving any of `keys` (all of one
/// protocol, the first one's), and proves back with the key the client proved: while
/// a shared secret is rotated, a node accepts peers that still hold the previous one.
///
/// # Panics
///
/// If `keys` is empty.
pub async fn server_handshake_any<S>(io: &mut S, keys: &[LinkKey]) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake(Role::Server, io, keys, HANDSHAKE_TIMEOUT).await
}

/// Runs `role`'s side within `limit` (a client proves `keys[0]`; a server accepts any
/// of `keys`), and shuts the write half down on failure so
/// that the peer sees the end of the stream at once instead of waiting for its own
/// timeout.
async fn handshake<S>(
    role: Role,
    io: &mut S,
    keys: &[LinkKey],
    limit: Duration,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = keys.first().expect("a handshake needs a key");
    let steps = async {
        let result = match role {
            Role::Client => client_steps(io, key).await,
            Role::Server => server_steps(io, keys).await,
        };
        if result.is_err() {
            // Best effort: the stream is being abandoned, and the caller drops it.
            let _ = io.shutdown().await;
        }
        result
    };
    let kind = match tokio::time::timeout(limit, steps).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(kind)) => kind,
        Err(_) => HandshakeErrorKind::Timeout(limit),
    };
    Err(key.error(kind))
}

/// The client's steps: hello, the server's hello, proof, the server's proof.
async fn client_steps<S>(io: &mut S, key: &LinkKey) -> Result<(), HandshakeErrorKind>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let magic = &key.protocol.magic;
    let own_nonce = fresh_nonce()?;
    send(io, &hello(magic, &own_nonce), "sending the hello").await?;
    let peer_nonce = read_hello(io, magic).await?;
    let proof = key.prove(Role::Client, &peer_nonce, &own_nonce);
    send(io, &proof, "sending the proof").await?;
    let peer_proof = read_server_proof(io).await?;
    key.verify(Role::Server, &own_nonce, &peer_nonce, &peer_proof)
}

/// The server's steps: the client's hello, hello, the client's proof, proof. The
/// server answers nothing until the magic matches, and proves nothing until the
/// client has.
async fn server_steps<S>(io: &mut S, keys: &[LinkKey]) -> Result<(), HandshakeErrorKind>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let magic = &keys[0].protocol.magic;
    let peer_nonce = read_hello(io, magic).await?;
    let own_nonce = fresh_nonce()?;
    send(io, &hello(magic, &own_nonce), "sending the hello").await?;
    let peer_proof: Proof = recv(io, "reading the peer's proof").await?;
    // Each check is constant-time; which key matched may leak through timing, which
    // tells a peer nothing it can use without a key.
    let key = keys
        .iter()
        .find(|k| {
            k.verify(Role::Client, &own_nonce, &peer_nonce, &peer_proof)
                .is_ok()
        })
        .ok_or(HandshakeErrorKind::BadProof)?;
    let proof = key.prove(Role::Server, &peer_nonce, &own_nonce);
    send(io, &proof, "sending the proof").await
}

/// A fresh random nonce from the OS.
fn fresh_nonce() -> Result<Nonce, HandshakeErrorKind> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(HandshakeErrorKind::Randomness)?;
    Ok(nonce)
}

/// The hello that carries `nonce`: `magic`, then the nonce.
fn hello(magic: &[u8; MAGIC_LEN], nonce: &Nonce) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..MAGIC_LEN].copy_from_slice(magic);
    out[MAGIC_LEN..].copy_from_slice(nonce);
    out
}

/// Reads the peer's hello, which must start with `magic`, and returns its nonce. The
/// magic is read and checked on its own first, so that a peer of another kind which
/// sent a few bytes and now waits (an HTTP client, say) fails with `WrongMagic` rather
/// than a timeout.
async fn read_hello<S>(io: &mut S, magic: &[u8; MAGIC_LEN]) -> Result<Nonce, HandshakeErrorKind>
where
    S: AsyncRead + Unpin,
{
    let got: [u8; MAGIC_LEN] = recv(io, "reading the peer's hello").await?;
    if &got != magic {
        return Err(HandshakeErrorKind::WrongMagic { got });
    }
    recv(io, "reading the peer's nonce").await
}

/// Reads the server's proof. A server that rejects the client's proof closes the
/// connection, so the end of the stream here means [`HandshakeErrorKind::Rejected`].
async fn read_server_proof<S>(io: &mut S) -> Result<Proof, HandshakeErrorKind>
where
    S: AsyncRead + Unpin,
{
    let mut proof = [0u8; PROOF_LEN];
    match io.read_exact(&mut proof).await {
        Ok(_) => Ok(proof),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(HandshakeErrorKind::Rejected)
        }
        Err(source) => Err(HandshakeErrorKind::Io {
            stage: "reading the peer's proof",
            source,
        }),
    }
}

/// Reads exactly `N` bytes; `stage` names the step in the error.
async fn recv<S, const N: usize>(
    io: &mut S,
    stage: &'static str,
) -> Result<[u8; N], HandshakeErrorKind>
where
    S: AsyncRead + Unpin,
{
    let mut buf = [0u8; N];
    io.read_exact(&mut buf)
        .await
        .map_err(|source| HandshakeErrorKind::Io { stage, source })?;
    Ok(buf)
}

/// Writes all of `bytes` and flushes them; `stage` names the step in the error.
async fn send<S>(io: &mut S, bytes: &[u8], stage: &'static str) -> Result<(), HandshakeErrorKind>
where
    S: AsyncWrite + Unpin,
{
    let result = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    result
        .await
        .map_err(|source| HandshakeErrorKind::Io { stage, source })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// The protocol of most tests.
    const TEST: Protocol = Protocol {
        name: "test handshake",
        magic: *b"TESTLK01",
        key_label: b"test link v1",
        endpoint: "a test listener",
        secret_hint: "the peer's --token-secret differs from ours",
    };

    /// Another use, with its own magic and label, as imd's RPC and imbench's agent
    /// links are to each other.
    const OTHER: Protocol = Protocol {
        name: "other handshake",
        magic: *b"OTHERL01",
        key_label: b"other link v1",
        endpoint: "another listener",
        secret_hint: "the peer's --token-secret differs from ours",
    };

    /// The limit in tests that wait for a timeout on purpose (a silent peer), short
    /// to keep the suite fast; tokio's paused clock needs the `test-util` feature,
    /// which the workspace does not enable.
    const SHORT: Duration = Duration::from_millis(100);

    /// The key of [`TEST`] for `secret`.
    fn key(secret: &[u8]) -> LinkKey {
        LinkKey::derive(&TEST, secret)
    }

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
        // hashlib.sha256). imd's RPC links use this label: a change here breaks
        // clusters of mixed versions.
        const IMD_LABEL: Protocol = Protocol {
            key_label: b"imd rpc link v1",
            ..TEST
        };
        let imd = LinkKey::derive(&IMD_LABEL, b"test-secret");
        assert_eq!(
            hex(&imd.key),
            "e369f22093fafa6dcf2f4279ee683253309b13d66e1ab51005ff322674b868c6"
        );
        assert_ne!(imd.key, LinkKey::derive(&IMD_LABEL, b"other-secret").key);
        // Another label gives another key from the same secret.
        assert_ne!(imd.key, key(b"test-secret").key);
    }

    #[test]
    fn link_key_debug_hides_the_key() {
        assert_eq!(format!("{:?}", key(b"s")), "LinkKey(..)");
    }

    #[test]
    fn proofs_of_the_two_roles_differ() {
        let key = key(b"s");
        let (a, b) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let client = key.prove(Role::Client, &a, &b);
        assert_ne!(client, key.prove(Role::Server, &a, &b));
        assert!(key.verify(Role::Client, &a, &b, &client).is_ok());
        // A proof reflected back with the nonces swapped does not verify.
        assert!(matches!(
            key.verify(Role::Client, &b, &a, &client),
            Err(HandshakeErrorKind::BadProof)
        ));
    }

    /// Runs both sides with the same key over `c` and `s`; both succeed, and nothing
    /// of the handshake is left unread on either side.
    async fn same_key_succeeds_and_leaves_the_stream_clean<S>(mut c: S, mut s: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let key = key(b"cluster secret");
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
        let (one, two) = (key(b"secret one"), key(b"secret two"));
        let (mut c, mut s) = pipe();
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, &one),
            server_handshake(&mut s, &two)
        );
        let sr = sr.expect_err("server");
        assert!(matches!(sr.kind(), HandshakeErrorKind::BadProof), "{sr:?}");
        // The server closes, so the client fails at once rather than timing out.
        let cr = cr.expect_err("client");
        assert!(matches!(cr.kind(), HandshakeErrorKind::Rejected), "{cr:?}");
    }

    #[tokio::test]
    async fn two_protocols_refuse_each_other_with_wrong_magic() {
        // Same secret, different uses: the server sees the other magic and answers
        // nothing; the client sees the stream end before any hello.
        let (other, ours) = (LinkKey::derive(&OTHER, b"s"), key(b"s"));
        let (mut c, mut s) = pipe();
        let (cr, sr) = tokio::join!(
            client_handshake(&mut c, &other),
            server_handshake(&mut s, &ours)
        );
        let sr = sr.expect_err("server");
        match sr.kind() {
            HandshakeErrorKind::WrongMagic { got } => assert_eq!(got, b"OTHERL01"),
            other => panic!("expected WrongMagic, got {other:?}"),
        }
        let cr = cr.expect_err("client");
        assert!(
            matches!(cr.kind(), HandshakeErrorKind::Io { source, .. }
                if source.kind() == std::io::ErrorKind::UnexpectedEof),
            "{cr:?}"
        );
        assert!(cr.to_string().starts_with("other handshake: "), "{cr}");
    }

    #[tokio::test]
    async fn a_server_with_several_keys_accepts_a_client_of_any_and_no_other() {
        let server = [key(b"new"), key(b"old")];
        for (client, ok) in [(b"new", true), (b"old", true), (b"xxx", false)] {
            let (mut c, mut s) = pipe();
            let client = key(client);
            let (cr, sr) = tokio::join!(
                client_handshake(&mut c, &client),
                server_handshake_any(&mut s, &server)
            );
            assert_eq!(cr.is_ok(), ok, "client {cr:?}");
            assert_eq!(sr.is_ok(), ok, "server {sr:?}");
        }
    }

    #[tokio::test]
    async fn client_rejects_a_server_with_a_bad_proof() {
        let key = key(b"s");
        let (mut c, mut peer) = pipe();
        let fake_server = async {
            let mut hello_in = [0u8; HELLO_LEN];
            peer.read_exact(&mut hello_in).await.expect("read hello");
            peer.write_all(&hello(&TEST.magic, &[7u8; NONCE_LEN]))
                .await
                .expect("write hello");
            let mut proof = [0u8; PROOF_LEN];
            peer.read_exact(&mut proof).await.expect("read proof");
            peer.write_all(&[0u8; PROOF_LEN])
                .await
                .expect("write proof");
        };
        let (cr, ()) = tokio::join!(client_handshake(&mut c, &key), fake_server);
        let cr = cr.expect_err("client");
        assert!(matches!(cr.kind(), HandshakeErrorKind::BadProof), "{cr:?}");
    }

    #[tokio::test]
    async fn server_refuses_wrong_magic_and_sends_nothing() {
        let key = key(b"s");
        let (mut peer, mut s) = pipe();
        peer.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let sr = server_handshake(&mut s, &key).await.expect_err("server");
        match sr.kind() {
            HandshakeErrorKind::WrongMagic { got } => assert_eq!(got, b"GET / HT"),
            other => panic!("expected WrongMagic, got {other:?}"),
        }
        drop(s);
        let mut answer = Vec::new();
        peer.read_to_end(&mut answer).await.expect("read");
        assert!(answer.is_empty(), "server answered {answer:?}");
    }

    #[tokio::test]
    async fn client_refuses_another_version() {
        let key = key(b"s");
        let (mut c, mut peer) = pipe();
        let fake_server = async {
            let mut hello_in = [0u8; HELLO_LEN];
            peer.read_exact(&mut hello_in).await.expect("read hello");
            peer.write_all(b"TESTLK02").await.expect("write");
            peer.write_all(&[0u8; NONCE_LEN]).await.expect("write");
        };
        let (cr, ()) = tokio::join!(client_handshake(&mut c, &key), fake_server);
        let cr = cr.expect_err("client");
        match cr.kind() {
            HandshakeErrorKind::WrongMagic { got } => assert_eq!(got, b"TESTLK02"),
            other => panic!("expected WrongMagic, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn silent_peer_times_out_on_both_roles() {
        let key = key(b"s");
        for role in [Role::Client, Role::Server] {
            // `peer` stays open and says nothing.
            let (mut own, _peer) = pipe();
            let result = handshake(role, &mut own, std::slice::from_ref(&key), SHORT).await;
            assert!(
                matches!(
                    result.as_ref().map_err(HandshakeError::kind),
                    Err(HandshakeErrorKind::Timeout(d)) if *d == SHORT
                ),
                "{role:?}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn peer_closing_mid_handshake_is_an_io_error() {
        let key = key(b"s");
        let is_eof = |r: &Result<(), HandshakeError>| {
            matches!(
                r.as_ref().map_err(HandshakeError::kind),
                Err(HandshakeErrorKind::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::UnexpectedEof
            )
        };

        // A client that sends the magic and half a nonce, then hangs up.
        let (mut peer, mut s) = pipe();
        peer.write_all(&hello(&TEST.magic, &[0u8; NONCE_LEN])[..MAGIC_LEN + 10])
            .await
            .expect("write");
        drop(peer);
        let sr = server_handshake(&mut s, &key).await;
        assert!(is_eof(&sr), "{sr:?}");

        // A server that answers the magic only, then hangs up.
        let (mut c, mut peer) = pipe();
        let fake_server = async move {
            let mut hello_in = [0u8; HELLO_LEN];
            peer.read_exact(&mut hello_in).await.expect("read hello");
            peer.write_all(&TEST.magic).await.expect("write");
        };
        let (cr, ()) = tokio::join!(client_handshake(&mut c, &key), fake_server);
        assert!(is_eof(&cr), "{cr:?}");
    }

    #[tokio::test]
    async fn tcp_same_key_succeeds() {
        let (c, s) = tcp_pair().await;
        same_key_succeeds_and_leaves_the_stream_clean(c, s).await;
    }

    #[tokio::test]
    async fn tcp_different_secrets_fail_on_both_sides() {
        let (mut c, mut s) = tcp_pair().await;
        // Each side in its own task, owning its stream, as in imd and imbench.
        let server =
            tokio::spawn(async move { server_handshake(&mut s, &key(b"secret two")).await });
        let cr = client_handshake(&mut c, &key(b"secret one"))
            .await
            .expect_err("client");
        let sr = server.await.expect("server task").expect_err("server");
        assert!(matches!(sr.kind(), HandshakeErrorKind::BadProof), "{sr:?}");
        assert!(matches!(cr.kind(), HandshakeErrorKind::Rejected), "{cr:?}");
    }

    #[tokio::test]
    async fn tcp_wrong_magic_and_silence() {
        let key = key(b"s");

        let (mut peer, mut s) = tcp_pair().await;
        peer.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01")
            .await
            .expect("write");
        let sr = server_handshake(&mut s, &key).await.expect_err("server");
        assert!(
            matches!(sr.kind(), HandshakeErrorKind::WrongMagic { .. }),
            "{sr:?}"
        );

        let (_peer, mut s) = tcp_pair().await;
        let sr = handshake(Role::Server, &mut s, std::slice::from_ref(&key), SHORT)
            .await
            .expect_err("server");
        assert!(
            matches!(sr.kind(), HandshakeErrorKind::Timeout(_)),
            "{sr:?}"
        );
    }

    #[test]
    fn errors_name_the_protocol_and_tell_the_operator_what_to_check() {
        let error = |kind| HandshakeError {
            protocol: &TEST,
            kind,
        };
        let bad = error(HandshakeErrorKind::BadProof).to_string();
        assert_eq!(
            bad,
            "test handshake: the peer's proof is wrong: the peer's --token-secret differs \
             from ours"
        );
        let rejected = error(HandshakeErrorKind::Rejected).to_string();
        assert!(
            rejected.starts_with("test handshake: ") && rejected.contains("--token-secret"),
            "{rejected}"
        );
        let magic = error(HandshakeErrorKind::WrongMagic { got: *b"GET / HT" }).to_string();
        assert!(
            magic.contains("\"GET / HT\"")
                && magic.contains("expected \"TESTLK01\"")
                && magic.contains("a test listener")
                && magic.contains("version"),
            "{magic}"
        );
        let timeout = error(HandshakeErrorKind::Timeout(SHORT)).to_string();
        assert!(timeout.contains("a test listener"), "{timeout}");
        let io = error(HandshakeErrorKind::Io {
            stage: "reading the peer's hello",
            source: std::io::ErrorKind::UnexpectedEof.into(),
        });
        assert!(
            std::error::Error::source(&io).is_some(),
            "the I/O error is the source"
        );
    }
}

//! TLS of the gateway's listener (`--tls-cert`, `--tls-key`): the certificate chain and
//! private key read from PEM files at start-up, served with rustls on the ring provider.
//! It owns building the acceptor; the handshake and its deadline are the accept loop's
//! (`serve`). RPC between nodes is not TLS (see `docs/operations.md`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Builds the acceptor from a PEM certificate chain (the server's certificate first)
/// and a PEM private key (PKCS#8, PKCS#1 or SEC1). Every way the files can be wrong
/// (missing, unreadable, no certificate, no key, a key that is not the certificate's)
/// is an error naming the file, so that `imd serve` stops at start-up, not at the
/// first client.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the TLS certificate file {} holds no PEM certificate",
        cert.display()
    );
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS private key {}", key.display()))?;
    // The same provider reqwest's clients use, named explicitly: no process-wide
    // default to install, and no second provider linked in. rustls 0.23.48 marks ring
    // deprecated for lacking post-quantum key exchange; its replacement, aws-lc-rs, is
    // a C build this workspace does not otherwise carry.
    #[allow(deprecated)]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no protocol version")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "the TLS private key {} does not fit the certificate {}",
                key.display(),
                cert.display()
            )
        })?;
    // HTTP/1.1 only: the server loop is hyper's HTTP/1 (WebSocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

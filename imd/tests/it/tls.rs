//! TLS served by imd itself (`--tls-cert`, `--tls-key`), with a CA and a server
//! certificate made by `openssl` in the test: https and wss work end to end with a
//! client that trusts only that CA; plain HTTP to the TLS port is closed, not served;
//! a client that opens TCP and never handshakes is closed after the idle timeout; and
//! a missing, invalid or half-given certificate stops the start with a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use shared::protocol::{ClientFrame, ServerFrame};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::common::{FRAME_DEADLINE, Http, Imd, claims, metric, mint, wait_eof, wait_until};

const SECRET: &str = "test-secret-0123456789abcdef";

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1, as PEM
/// files in a temporary directory.
pub(crate) struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub(crate) fn make() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path();
        std::fs::write(
            p.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("write ext.cnf");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            p,
            &["req", "-x509", "-new"],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=imd-test-ca",
            ],
        );
        openssl(
            p,
            &["req", "-new"],
            &ec,
            &[
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            p,
            &["x509", "-req"],
            &[],
            &[
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "cert.pem",
            ],
        );
        Certs { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The flags that serve TLS with this certificate.
    pub(crate) fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("cert.pem").display().to_string(),
            "--tls-key".into(),
            self.path("key.pem").display().to_string(),
        ]
    }

    /// A rustls client configuration that trusts this CA only.
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).expect("read ca.pem"))
            .expect("add the test CA");
        #[allow(deprecated)] // the provider imd uses; see imd/src/gateway/tls.rs
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// An HTTPS client that trusts this CA only.
    pub(crate) fn http(&self, imd: &Imd) -> Http {
        let ca = std::fs::read(self.path("ca.pem")).expect("read ca.pem");
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA certificate"))
            .timeout(FRAME_DEADLINE)
            .build()
            .expect("https client");
        Http::new(client, format!("https://{}", imd.addr))
    }
}

fn openssl(dir: &Path, cmd: &[&str], key: &[&str], rest: &[&str]) {
    let out = Command::new("openssl")
        .args(cmd)
        .args(key)
        .args(rest)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tok(uid: &str, device: &str) -> String {
    mint(SECRET, &claims(uid, device, 3600))
}

/// `imd serve` with these flags, expected to fail at start: its stderr.
fn start_fails(args: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "imd started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// GET /healthz over https and a wss:// session that authenticates, pings and receives
/// a message sent over https, all with a client trusting only the test CA; the ready
/// line names the https URL.
#[tokio::test]
async fn https_and_wss_work_with_the_given_certificate() {
    let certs = Certs::make();
    let imd = Imd::builder()
        .args(["--token-secret", SECRET])
        .args(certs.flags())
        .start();
    let ready = imd.stdout_lines();
    assert!(
        ready[0].contains(&format!("\"url\":\"https://{}\"", imd.addr)),
        "ready line: {}",
        ready[0]
    );
    let https = certs.http(&imd);
    let health = https.get("/healthz", None).await;
    assert_eq!(
        health.status, 200,
        "GET /healthz over https: {}",
        health.body
    );

    let tcp = tokio::net::TcpStream::connect(imd.addr).await.unwrap();
    let tls = TlsConnector::from(certs.client_config())
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake with imd");
    let mut req = format!("wss://{}/v1/ws", imd.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", tok("bob", "b1"))).unwrap(),
    );
    let (mut ws, _) =
        tokio::time::timeout(FRAME_DEADLINE, tokio_tungstenite::client_async(req, tls))
            .await
            .expect("wss upgrade timed out")
            .expect("wss upgrade");
    let ping = serde_json::to_string(&ClientFrame::Ping).unwrap();
    ws.send(WsMessage::Text(Utf8Bytes::from(ping)))
        .await
        .unwrap();
    // The pong says the session runs: the push below goes to a registered device.
    let read = async {
        while let Some(m) = ws.next().await {
            if let WsMessage::Text(t) = m.expect("wss read") {
                let f: ServerFrame = serde_json::from_str(t.as_str()).expect("server frame");
                if matches!(f, ServerFrame::Pong) {
                    return;
                }
            }
        }
        panic!("wss closed before the pong");
    };
    tokio::time::timeout(FRAME_DEADLINE, read)
        .await
        .expect("no pong over wss");

    https
        .send_to(&tok("alice", "a1"), "bob", None, json!("over tls"))
        .await;
    let push = async {
        while let Some(m) = ws.next().await {
            if let WsMessage::Text(t) = m.expect("wss read")
                && let ServerFrame::Msg { msg, .. } =
                    serde_json::from_str(t.as_str()).expect("server frame")
            {
                return msg;
            }
        }
        panic!("wss closed before the push");
    };
    let msg = tokio::time::timeout(FRAME_DEADLINE, push)
        .await
        .expect("no push over wss");
    assert_eq!(msg.from, "alice");
    assert_eq!(msg.body, Some(json!("over tls")));
}

/// Plain HTTP to the TLS port gets no answer but a closed connection, counted; a TCP
/// client that never starts the handshake is closed after the idle timeout, so it
/// cannot hold a slot; the server goes on serving https.
#[tokio::test]
async fn plain_http_and_silent_clients_are_closed() {
    let certs = Certs::make();
    let imd = Imd::builder()
        .args(["--idle-timeout", "1s"])
        .args(certs.flags())
        .start();
    let plain = reqwest::Client::builder()
        .timeout(FRAME_DEADLINE)
        .build()
        .unwrap();
    let err = plain
        .get(format!("http://{}/healthz", imd.addr))
        .send()
        .await
        .expect_err("plain http to the TLS port must not be answered");
    assert!(
        !err.is_timeout(),
        "plain http hung instead of closing: {err}"
    );

    let mut silent = std::net::TcpStream::connect(imd.addr).unwrap();
    let took = tokio::task::spawn_blocking(move || wait_eof(&mut silent, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the 1s deadline"
    );

    let https = certs.http(&imd);
    wait_until(FRAME_DEADLINE, "both refusals counted", || async {
        let m = https.metrics().await;
        metric(&m, "imd_connections_refused_total{reason=\"tls\"}") >= Some(1.0)
            && metric(&m, "imd_connections_refused_total{reason=\"open_timeout\"}") >= Some(1.0)
    })
    .await;
    assert_eq!(https.get("/healthz", None).await.status, 200);
}

/// A missing file, a file that holds no certificate or key, and one flag without the
/// other each stop the start, with an error that names what is wrong.
#[test]
fn a_bad_certificate_or_key_stops_the_start() {
    let certs = Certs::make();
    let cert = certs.path("cert.pem").display().to_string();
    let key = certs.path("key.pem").display().to_string();
    let junk = certs.path("ext.cnf").display().to_string();
    let missing = certs.path("nope.pem").display().to_string();
    let flags = |c: &str, k: &str| -> Vec<String> {
        vec!["--tls-cert".into(), c.into(), "--tls-key".into(), k.into()]
    };
    for (args, want) in [
        (flags(&missing, &key), "reading the TLS certificate"),
        (flags(&cert, &missing), "reading the TLS private key"),
        (flags(&junk, &key), "holds no PEM certificate"),
        (flags(&cert, &junk), "reading the TLS private key"),
        (
            flags(&cert, &certs.path("ca.key").display().to_string()),
            "does not fit",
        ),
        (
            vec!["--tls-cert".into(), cert.clone()],
            "tls-cert and tls-key go together",
        ),
    ] {
        let stderr = start_fails(&args);
        assert!(
            stderr.contains(want),
            "{args:?}: want {want:?} in:\n{stderr}"
        );
    }
}

//! TLS for `switchyard serve --tls` and for `[listener.tls]`: loading a
//! certificate chain and key from PEM files, generating a self-signed
//! certificate for local use, the SHA-256 fingerprint a person compares by
//! eye, and the rustls [`ServerConfig`] with the ALPN list the server offers.
//!
//! The crypto provider is always ring (`rustls::crypto::ring`), chosen
//! explicitly so that a second provider linked in by another crate can never
//! make the process-wide default ambiguous.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The host names and addresses a self-signed certificate covers when the
/// caller gives none: everything that reaches this machine over loopback.
pub const DEFAULT_SELF_SIGNED_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Why a certificate, a key or a server configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read at all.
    #[error("cannot read {what} file {}: {source}; check the path and its permissions", path.display())]
    Unreadable {
        /// "certificate", "private key" or "CA certificate".
        what: &'static str,
        /// The file named in the configuration or on the command line.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The certificate file holds no `BEGIN CERTIFICATE` section.
    #[error(
        "no certificate found in {}: expected at least one PEM block \
         \"-----BEGIN CERTIFICATE-----\"; is this the key file or a DER file?",
        path.display()
    )]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no private key section.
    #[error(
        "no private key found in {}: expected a PEM block \"-----BEGIN PRIVATE KEY-----\" \
         (PKCS#8), \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\"; is this the \
         certificate file?",
        path.display()
    )]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// A PEM section is present but broken (bad base64, missing END line...).
    #[error("malformed PEM in {what} file {}: {detail}; re-export the file in PEM format", path.display())]
    MalformedPem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser found wrong.
        detail: String,
    },
    /// rcgen could not generate the self-signed certificate.
    #[error("cannot generate a self-signed certificate for {names:?}: {source}")]
    SelfSigned {
        /// The names asked for.
        names: Vec<String>,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// rustls refused the certificate, the key or the protocol versions.
    #[error(
        "TLS configuration rejected: {0}; check that the key belongs to the first \
         certificate of the chain"
    )]
    Rustls(#[from] rustls::Error),
}

/// Loads a certificate chain (leaf first) and its private key from PEM files.
///
/// Every `CERTIFICATE` block of `cert_path` is taken, in order; other blocks
/// are skipped. The first private key block of `key_path` (PKCS#8, PKCS#1
/// RSA or SEC1 EC) is taken. Errors name the file and what was missing.
pub fn load_pem(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_pem = read_file("certificate", cert_path)?;
    let key_pem = read_file("private key", key_path)?;
    let certs = certs_from_pem(&cert_pem, cert_path)?;
    let key = key_from_pem(&key_pem, key_path)?;
    Ok((certs, key))
}

/// Loads CA certificates from a PEM file and gives the file's bytes back
/// (what a client that takes PEM roots wants), once at least one
/// certificate in it parses.
pub fn load_ca_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read_file("CA certificate", path)?;
    certs_from_pem(&pem, path)?;
    Ok(pem)
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn malformed(what: &'static str, path: &Path, err: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::MalformedPem {
        what,
        path: path.to_path_buf(),
        detail: pem_error_detail(&err),
    }
}

fn pem_error_detail(err: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match err {
        Error::MissingSectionEnd { end_marker } => format!(
            "a section is missing its end line \"-----END {}-----\"",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a BEGIN line is malformed: \"{}\"",
            String::from_utf8_lossy(line)
        ),
        Error::Base64Decode(detail) => format!("invalid base64 inside a section ({detail})"),
        other => other.to_string(),
    }
}

fn certs_from_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        certs.push(cert.map_err(|e| malformed("certificate", path, e))?);
    }
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(malformed("private key", path, e)),
    }
}

/// Generates a self-signed certificate (ECDSA P-256) and its PKCS#8 key for
/// `hostnames`; names that parse as IP addresses become IP SANs, the others
/// DNS SANs. An empty slice means [`DEFAULT_SELF_SIGNED_NAMES`].
///
/// For development and tests only: no client trusts it unless told to, which
/// is what [`fingerprint_sha256`] is for.
pub fn self_signed(
    hostnames: &[&str],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let names: Vec<String> = if hostnames.is_empty() {
        DEFAULT_SELF_SIGNED_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        hostnames.iter().map(|s| s.to_string()).collect()
    };
    let certified = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|source| TlsError::SelfSigned { names, source })?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    Ok((vec![cert], key))
}

/// The SHA-256 fingerprint of a DER certificate in the form `openssl x509
/// -fingerprint -sha256` prints: 32 uppercase hex bytes joined by colons.
pub fn fingerprint_sha256(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = String::with_capacity(32 * 3);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02X}");
    }
    out
}

/// The ALPN list of a server that speaks HTTP/2 and HTTP/1.1, preferring h2.
pub const ALPN_H2_HTTP11: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Builds the server configuration: ring provider, TLS 1.2 and 1.3, no client
/// authentication, the given chain and key, and `alpn` offered in the given
/// order of preference (the server's order wins).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate chain and key that can be replaced while the server runs
/// (a reload): the [`ServerConfig`] of [`server_config_reloadable`] asks it
/// on every handshake, so new handshakes (TCP TLS and QUIC alike) get the
/// current pair and established connections keep theirs.
#[derive(Debug)]
pub struct ReloadableCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCert {
    /// Checks that `key` belongs to the first certificate of `certs`.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ReloadableCert>, TlsError> {
        Ok(Arc::new(ReloadableCert {
            current: std::sync::RwLock::new(certified_key(certs, key)?),
        }))
    }

    /// Replace the pair; only new handshakes see it.
    pub fn replace(&self, key: Arc<rustls::sign::CertifiedKey>) {
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(p) => *p.into_inner() = key,
        }
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// A chain and its key as rustls signs with them, after checking that the
/// key belongs to the first certificate.
pub fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(rustls::sign::CertifiedKey::from_der(
        certs, key, &provider,
    )?))
}

/// [`load_pem`] then [`certified_key`]: what a reload reads.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let (certs, key) = load_pem(cert_path, key_path)?;
    certified_key(certs, key)
}

/// [`server_config`] with the pair of `cert`, which can be replaced later.
pub fn server_config_reloadable(
    cert: Arc<ReloadableCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-tls-test-{}-{}",
            std::process::id(),
            name
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        use std::fmt::Write;
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            let _ = writeln!(out, "{}", std::str::from_utf8(line).unwrap());
        }
        let _ = writeln!(out, "-----END {label}-----");
        out
    }

    fn write_pair(dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, certified.cert.pem()).unwrap();
        std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
        (cert_path, key_path, certified.cert.der().clone())
    }

    #[test]
    fn load_pem_reads_rcgen_files() {
        let dir = temp_dir("load");
        let (cert_path, key_path, der) = write_pair(&dir);
        let (certs, key) = load_pem(&cert_path, &key_path).unwrap();
        assert_eq!(certs, vec![der]);
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
        server_config(certs, key, ALPN_H2_HTTP11).unwrap();
    }

    #[test]
    fn own_base64_matches_rcgen_pem() {
        // Guards the helper used to write hand-made PEM files below.
        let certified = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let ours = pem_block("CERTIFICATE", certified.cert.der());
        assert_eq!(
            ours.replace("\r\n", "\n"),
            certified.cert.pem().replace("\r\n", "\n")
        );
    }

    #[test]
    fn load_pem_keeps_chain_order_and_skips_other_blocks() {
        let dir = temp_dir("chain");
        let (_, key_path, leaf) = write_pair(&dir);
        let other = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        let text = format!(
            "junk before\n{}{}{}",
            pem_block("CERTIFICATE", &leaf),
            pem_block("X509 CRL", b"not a crl"),
            pem_block("CERTIFICATE", other.cert.der())
        );
        let chain_path = dir.join("chain.pem");
        std::fs::write(&chain_path, text).unwrap();
        let (certs, _) = load_pem(&chain_path, &key_path).unwrap();
        assert_eq!(certs, vec![leaf, other.cert.der().clone()]);
    }

    #[test]
    fn load_pem_missing_file_names_the_file() {
        let dir = temp_dir("missing");
        let (cert_path, _, _) = write_pair(&dir);
        let missing = dir.join("nope.key");
        let err = load_pem(&cert_path, &missing).unwrap_err();
        assert!(matches!(
            err,
            TlsError::Unreadable {
                what: "private key",
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("nope.key"), "{msg}");
        assert!(msg.contains("cannot read private key file"), "{msg}");
    }

    #[test]
    fn load_pem_swapped_files_say_what_is_missing() {
        let dir = temp_dir("swapped");
        let (cert_path, key_path, _) = write_pair(&dir);
        let err = load_pem(&key_path, &cert_path).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert!(err.to_string().contains("no certificate found"), "{err}");

        let err = load_pem(&cert_path, &cert_path).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("cert.pem"), "{err}");
        assert!(err.to_string().contains("no private key found"), "{err}");
    }

    #[test]
    fn load_pem_empty_and_broken_files() {
        let dir = temp_dir("broken");
        let (_, key_path, _) = write_pair(&dir);
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            load_pem(&empty, &key_path).unwrap_err(),
            TlsError::NoCertificate { .. }
        ));

        let truncated = dir.join("truncated.pem");
        std::fs::write(&truncated, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let err = load_pem(&truncated, &key_path).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::MalformedPem {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("truncated.pem"), "{err}");
        assert!(err.to_string().contains("END CERTIFICATE"), "{err}");

        let bad64 = dir.join("bad64.pem");
        std::fs::write(
            &bad64,
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let (cert_path, _, _) = write_pair(&dir);
        let err = load_pem(&cert_path, &bad64).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::MalformedPem {
                    what: "private key",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn mismatched_key_is_rejected_by_server_config() {
        let (certs, _) = self_signed(&["a.test"]).unwrap();
        let (_, other_key) = self_signed(&["b.test"]).unwrap();
        let err = server_config(certs, other_key, ALPN_H2_HTTP11).unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err}");
    }

    #[test]
    fn self_signed_default_names_and_fingerprint() {
        let (certs, key) = self_signed(&[]).unwrap();
        assert_eq!(certs.len(), 1);
        let fp = fingerprint_sha256(&certs[0]);
        assert_eq!(fp.len(), 32 * 3 - 1);
        let parts: Vec<&str> = fp.split(':').collect();
        assert_eq!(parts.len(), 32);
        let bytes: Vec<u8> = parts
            .iter()
            .map(|p| {
                assert_eq!(p.len(), 2);
                assert_eq!(p.to_uppercase(), *p);
                u8::from_str_radix(p, 16).unwrap()
            })
            .collect();
        let digest = ring::digest::digest(&ring::digest::SHA256, certs[0].as_ref());
        assert_eq!(bytes, digest.as_ref());
        server_config(certs, key, ALPN_H2_HTTP11).unwrap();
    }

    #[test]
    fn fingerprint_of_known_bytes() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        let fp = fingerprint_sha256(&CertificateDer::from(b"abc".to_vec()));
        assert_eq!(
            fp,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn self_signed_rejects_invalid_name() {
        let err = self_signed(&["caf\u{e9}.example"]).unwrap_err();
        assert!(matches!(err, TlsError::SelfSigned { .. }), "{err}");
    }

    /// Handshakes a tokio-rustls client that trusts only `certs[0]` with a
    /// server built by [`server_config`], over an in-memory duplex pipe, and
    /// returns the ALPN protocol both sides agreed on.
    async fn handshake(
        server_alpn: &[&[u8]],
        client_alpn: &[&[u8]],
        server_name: &'static str,
    ) -> Option<Vec<u8>> {
        handshake_with(
            &["localhost", "127.0.0.1"],
            server_alpn,
            client_alpn,
            server_name,
        )
        .await
    }

    async fn handshake_with(
        names: &[&str],
        server_alpn: &[&[u8]],
        client_alpn: &[&[u8]],
        server_name: &'static str,
    ) -> Option<Vec<u8>> {
        let (certs, key) = self_signed(names).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs[0].clone()).unwrap();
        let server = server_config(certs, key, server_alpn).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = client_alpn.iter().map(|p| p.to_vec()).collect();

        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls_pki_types::ServerName::try_from(server_name).unwrap();

        let server_task = tokio::spawn(async move {
            let mut tls = acceptor.accept(server_io).await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
            tls.flush().await.unwrap();
            tls.get_ref().1.alpn_protocol().map(|p| p.to_vec())
        });
        let mut tls = connector.connect(name, client_io).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let client_alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let server_alpn = server_task.await.unwrap();
        assert_eq!(client_alpn, server_alpn);
        client_alpn
    }

    #[tokio::test]
    async fn handshake_negotiates_h2_when_offered() {
        let alpn = handshake(ALPN_H2_HTTP11, &[b"h2", b"http/1.1"], "localhost").await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    }

    #[tokio::test]
    async fn handshake_negotiates_http11_when_only_that_is_offered() {
        let alpn = handshake(ALPN_H2_HTTP11, &[b"http/1.1"], "localhost").await;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn handshake_by_ip_address_and_without_alpn() {
        let alpn = handshake(ALPN_H2_HTTP11, &[], "127.0.0.1").await;
        assert_eq!(alpn, None);
    }

    #[tokio::test]
    async fn default_self_signed_covers_every_loopback_name() {
        for name in ["localhost", "127.0.0.1", "::1"] {
            let alpn = handshake_with(&[], ALPN_H2_HTTP11, &[b"http/1.1"], name).await;
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "{name}");
        }
    }

    #[tokio::test]
    async fn handshake_fails_for_a_name_the_cert_does_not_cover() {
        let (certs, key) = self_signed(&["localhost"]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs[0].clone()).unwrap();
        let server = server_config(certs, key, ALPN_H2_HTTP11).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move { acceptor.accept(server_io).await.is_ok() });
        let name = rustls_pki_types::ServerName::try_from("other.test").unwrap();
        let result = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, client_io)
            .await;
        assert!(result.is_err());
        assert!(!server_task.await.unwrap());
    }
}

//! TLS for the doctor: a certificate verifier that records webpki's verdict
//! (expired, not valid for this name, unknown issuer...) and the chain, then
//! lets the handshake go on so the later steps can still be diagnosed; and
//! the leaf certificate's facts (subject, names, issuer, notAfter) from
//! x509-parser.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What the verifier saw during one handshake.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The leaf certificate (DER).
    pub leaf: Vec<u8>,
    /// Certificates sent after the leaf.
    pub intermediates: usize,
    /// webpki's verdict for the chain and the name.
    pub verdict: Result<(), rustls::Error>,
}

/// Verifies like a browser would, records the result, and accepts.
#[derive(Debug)]
pub struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl Recorder {
    pub fn seen(&self) -> Option<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ());
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seen {
            leaf: end_entity.as_ref().to_vec(),
            intermediates: intermediates.len(),
            verdict,
        });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trusted roots: the system's, Mozilla's (webpki-roots), and `--ca` files.
#[derive(Debug, Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    pub sources: String,
}

impl Trust {
    pub fn load(ca_files: &[PathBuf]) -> Result<Trust, String> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (n_native, _) = roots.add_parsable_certificates(native.certs);
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut n_ca = 0;
        for path in ca_files {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read --ca {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad PEM in --ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--ca {} holds no PEM CERTIFICATE block",
                    path.display()
                ));
            }
            let (added, _) = roots.add_parsable_certificates(certs);
            n_ca += added;
        }
        Ok(Trust {
            roots: Arc::new(roots),
            sources: format!("{n_native} system roots, Mozilla's roots, {n_ca} from --ca"),
        })
    }

    /// A client configuration offering `alpn` whose verifier records and
    /// accepts.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<(Arc<rustls::ClientConfig>, Arc<Recorder>), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let recorder = Arc::new(Recorder {
            inner,
            seen: Mutex::new(None),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok((Arc::new(cfg), recorder))
    }
}

/// The leaf certificate's facts, for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    pub not_before: i64,
}

/// Parse the leaf certificate (None when it is not valid DER X.509).
pub fn leaf_info(der: &[u8]) -> Option<LeafInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        let b: [u8; 4] = [ip[0], ip[1], ip[2], ip[3]];
                        names.push(std::net::Ipv4Addr::from(b).to_string());
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(LeafInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_after: cert.validity().not_after.timestamp(),
        not_before: cert.validity().not_before.timestamp(),
    })
}

/// Now, in seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time (proleptic Gregorian).
pub fn format_utc(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// webpki's verdict in words, and which fix applies.
pub fn explain(err: &rustls::Error, host: &str) -> (String, super::fixes::Problem) {
    use super::fixes::Problem;
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ("certificate expired".to_owned(), Problem::TlsExpired)
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "certificate not valid yet (check the server's and this machine's clocks)"
                    .to_owned(),
                Problem::TlsExpired,
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                (
                    format!("certificate not valid for this name: {host} is not among its names"),
                    Problem::TlsWrongName,
                )
            }
            CertificateError::UnknownIssuer => (
                "unknown issuer: the chain does not lead to a trusted root (self-signed, \
                 private CA, or missing intermediates)"
                    .to_owned(),
                Problem::TlsUnknownIssuer,
            ),
            CertificateError::Revoked => ("certificate revoked".to_owned(), Problem::TlsOther),
            other => (
                format!("certificate rejected: {other:?}"),
                Problem::TlsOther,
            ),
        },
        other => (format!("TLS failed: {other}"), Problem::TlsOther),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_798_761_599), "2026-12-31 23:59:59 UTC");
        assert_eq!(format_utc(-86_400), "1969-12-31 00:00:00 UTC");
    }

    #[test]
    fn verdicts_map_to_fixes() {
        use super::super::fixes::Problem;
        let e = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(
            explain(&e(CertificateError::Expired), "h").1,
            Problem::TlsExpired
        );
        let (text, p) = explain(&e(CertificateError::NotValidForName), "example.org");
        assert_eq!(p, Problem::TlsWrongName);
        assert!(text.contains("not valid for this name: example.org"));
        assert_eq!(
            explain(&e(CertificateError::UnknownIssuer), "h").1,
            Problem::TlsUnknownIssuer
        );
    }

    #[test]
    fn leaf_info_reads_names_and_dates() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = leaf_info(cert.der()).unwrap();
        assert_eq!(info.names, vec!["a.example", "127.0.0.1"]);
        assert!(format_utc(info.not_after).starts_with("2031-05-06"));
        assert!(leaf_info(b"not a certificate").is_none());
    }
}

//! Where listener certificates come from.

use std::sync::OnceLock;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertificateSource;
use crate::tls::{self, TlsError};

/// Where listener certificates come from: files (read on every call, so a
/// reload reads them again) or the process's self-signed certificate
/// (generated once).
#[derive(Debug, Default)]
pub(crate) struct Certificates {
    self_signed: OnceLock<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Certificates {
    /// The chain and key of `source`.
    pub(crate) fn load(
        &self,
        source: &CertificateSource,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        match source {
            CertificateSource::Files { cert, key } => tls::load_pem(cert, key),
            CertificateSource::SelfSigned => {
                let (chain, key) = match self.self_signed.get() {
                    Some(pair) => pair,
                    None => {
                        let generated = tls::self_signed(&[])?;
                        self.self_signed.get_or_init(|| generated)
                    }
                };
                Ok((chain.clone(), key.clone_key()))
            }
        }
    }

    /// The SHA-256 fingerprint of the self-signed certificate, once generated.
    pub(super) fn self_signed_fingerprint(&self) -> Option<String> {
        let (chain, _) = self.self_signed.get()?;
        chain.first().map(tls::fingerprint_sha256)
    }
}

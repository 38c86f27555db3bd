//! Which certificates an `https://` upstream may show the door: as Python's
//! `ssl` decides for the app's client. One chains to the authorities in the
//! files `ssl.get_default_verify_paths()` names (SSL_CERT_FILE and
//! SSL_CERT_DIR honoured alike), names the host called and is within its
//! dates; TLS 1.2 at least. Or, as with OpenSSL, it is itself one of those
//! authorities (a self-signed upstream trusted by naming its certificate),
//! which webpki alone refuses when the certificate is marked as an
//! authority, as `openssl req -x509` marks it by default.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// The certificate authorities an `https://` upstream must chain to: a
/// file of them and a directory of such files (either may be missing).
#[derive(Clone, Default)]
pub struct Trust {
    pub file: Option<PathBuf>,
    pub dir: Option<PathBuf>,
}

impl Trust {
    /// The client's TLS settings; an error when no authority can be read.
    /// Certificates that cannot be read are skipped, as OpenSSL skips them.
    pub fn connector(&self) -> Result<TlsConnector, String> {
        let authorities = self.authorities();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(authorities.iter().cloned());
        if roots.is_empty() {
            return Err("no certificate authority to check it against \
                 (SSL_CERT_FILE, SSL_CERT_DIR)"
                .into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let verifier = Verifier {
            webpki,
            authorities: authorities.iter().map(|cert| cert.to_vec()).collect(),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }

    fn authorities(&self) -> Vec<CertificateDer<'static>> {
        let in_dir = self.dir.iter().flat_map(|dir| {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path())
        });
        self.file
            .iter()
            .cloned()
            .chain(in_dir)
            .filter_map(|path| CertificateDer::pem_file_iter(path).ok())
            .flat_map(|certs| certs.flatten())
            .collect()
    }
}

/// webpki's checks, and OpenSSL's acceptance of a certificate that is itself
/// a trusted authority.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// Each authority's certificate, as read.
    authorities: HashSet<Vec<u8>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match verdict {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
                if other.0.downcast_ref() == Some(&webpki::Error::CaUsedAsEndEntity) =>
            {
                if self.authorities.contains(end_entity.as_ref()) {
                    trusted_itself(end_entity, server_name, now)
                } else if self_issued(end_entity) {
                    // What it is to OpenSSL: a self-signed certificate not trusted.
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer,
                    ))
                } else {
                    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                        other,
                    )))
                }
            }
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, signed)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn self_issued(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert)
        .is_ok_and(|(_, parsed)| parsed.issuer() == parsed.subject())
}

/// A certificate that is one of the trusted authorities: no chain to
/// check, but its name and dates hold as for any other (the handshake's
/// signature proves the upstream holds its key).
fn trusted_itself(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    let bad = |error: CertificateError| rustls::Error::InvalidCertificate(error);
    webpki::EndEntityCert::try_from(cert)
        .map_err(|_| bad(CertificateError::BadEncoding))?
        .verify_is_valid_for_subject_name(server_name)
        .map_err(|_| bad(CertificateError::NotValidForName))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| bad(CertificateError::BadEncoding))?;
    let dates = parsed.validity();
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < dates.not_before.timestamp() {
        return Err(bad(CertificateError::NotValidYet));
    }
    if now > dates.not_after.timestamp() {
        return Err(bad(CertificateError::Expired));
    }
    Ok(ServerCertVerified::assertion())
}

//! Which certificates an `https://` upstream may show the core's client: as
//! Python's `ssl` decides for the app's event-loop client. One chains to the
//! authorities in the files `ssl.get_default_verify_paths()` names
//! (SSL_CERT_FILE and SSL_CERT_DIR honoured alike; in the directory, the
//! hash-named files OpenSSL looks up), names the host called and is within
//! its dates; TLS 1.2 at least. Two of OpenSSL's rules webpki alone lacks
//! are kept, as `openssl req -x509 -subj /CN=host` makes such certificates
//! by default: a certificate that is itself one of those authorities is
//! accepted though it is marked as an authority, and a certificate with no
//! DNS name in its subjectAltName names the host by its common name
//! (Python's `hostname_checks_common_name`).

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
use x509_parser::extensions::GeneralName;

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
        let parsed = authorities
            .iter()
            .filter_map(|cert| x509_parser::parse_x509_certificate(cert).ok());
        let verifier = Verifier {
            webpki,
            constraining: parsed
                .filter(|(_, authority)| !matches!(authority.name_constraints(), Ok(None)))
                .map(|(_, authority)| authority.subject().as_raw().to_vec())
                .collect(),
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

    /// The file's certificates, then the directory's, each once.
    fn authorities(&self) -> Vec<CertificateDer<'static>> {
        let in_dir = self.dir.iter().flat_map(|dir| {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|entry| hash_named(&entry.file_name().to_string_lossy()))
                .map(|entry| entry.path())
        });
        let mut seen = HashSet::new();
        self.file
            .iter()
            .cloned()
            .chain(in_dir)
            .filter_map(|path| CertificateDer::pem_file_iter(path).ok())
            .flat_map(|certs| certs.flatten())
            .filter(|cert| seen.insert(cert.to_vec()))
            .collect()
    }
}

/// A certificate's name in a directory OpenSSL looks up by hash (`c_rehash`,
/// `openssl rehash`): eight hex digits, a dot and a number (`.rN` are CRLs).
fn hash_named(name: &str) -> bool {
    name.split_once('.').is_some_and(|(hash, n)| {
        hash.len() == 8
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// webpki's checks, with OpenSSL's common name and its acceptance of a
/// certificate that is itself a trusted authority.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// Each authority's certificate, as read.
    authorities: HashSet<Vec<u8>>,
    /// The subjects of the authorities with name constraints.
    constraining: HashSet<Vec<u8>>,
}

impl Verifier {
    /// Whether name constraints may bear on the chain: OpenSSL holds a
    /// common name to them, webpki reads none on it, so the fallback to it
    /// is not taken.
    fn constrained(&self, end_entity: &CertificateDer<'_>, chain: &[CertificateDer<'_>]) -> bool {
        std::iter::once(end_entity).chain(chain).any(|cert| {
            match x509_parser::parse_x509_certificate(cert) {
                Ok((_, cert)) => {
                    !matches!(cert.name_constraints(), Ok(None))
                        || self.constraining.contains(cert.issuer().as_raw())
                }
                Err(_) => true,
            }
        })
    }
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
            // webpki checks the name after the chain: the chain holds.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if common_name_is(end_entity, server_name)
                && !self.constrained(end_entity, intermediates) =>
            {
                Ok(ServerCertVerified::assertion())
            }
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

/// OpenSSL's fallback to the subject's common name for a DNS name, taken
/// only when the certificate has no DNS name in its subjectAltName; a
/// wildcard only as a whole leftmost label of letters, digits and hyphens,
/// over two labels at least.
fn common_name_is(cert: &CertificateDer<'_>, server_name: &ServerName<'_>) -> bool {
    let ServerName::DnsName(host) = server_name else {
        return false; // an address is matched in the subjectAltName only
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    let names_dns = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .any(|name| matches!(name, GeneralName::DNSName(_))),
        Ok(None) => false,
        Err(_) => return false,
    };
    let host = host.as_ref().trim_end_matches('.');
    !names_dns
        && parsed
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .any(|cn| match cn.strip_prefix("*.") {
                Some(parent) => {
                    parent.contains('.')
                        && host.split_once('.').is_some_and(|(label, rest)| {
                            !label.is_empty()
                                && label
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                                && rest.eq_ignore_ascii_case(parent)
                        })
                }
                None => cn.eq_ignore_ascii_case(host),
            })
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
    let named = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| bad(CertificateError::BadEncoding))?
        .verify_is_valid_for_subject_name(server_name)
        .is_ok();
    if !named && !common_name_is(cert, server_name) {
        return Err(bad(CertificateError::NotValidForName));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn common_name(cn: &str, host: &str) -> bool {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        common_name_is(cert.der(), &ServerName::try_from(host.to_string()).unwrap())
    }

    #[test]
    fn a_wildcard_common_name_stands_for_one_whole_leftmost_label() {
        assert!(common_name("*.example.com", "api.example.com"));
        assert!(common_name("*.example.com", "API.Example.com."));
        assert!(!common_name("*.example.com", "example.com"));
        assert!(!common_name("*.example.com", "a.b.example.com"));
        assert!(!common_name("*.com", "example.com"), "two labels at least");
        assert!(
            !common_name("a*.example.com", "ab.example.com"),
            "no partial wildcard"
        );
        assert!(
            !common_name("*.example.com", "a_b.example.com"),
            "a name's letters"
        );
    }

    #[test]
    fn only_hash_named_files_of_a_directory_are_authorities() {
        for name in ["0123abcd.0", "ffffffff.12"] {
            assert!(hash_named(name), "{name}");
        }
        for name in [
            "0123ABCD.0",
            "0123abcd.r0",
            "0123abcd.",
            "0123abc.0",
            "ca.pem",
            "x",
        ] {
            assert!(!hash_named(name), "{name}");
        }
    }
}

//! HTTPS for the simulator: a throwaway certificate authority (rcgen) and the server
//! configurations it signs, so tests and the demo take the path production takes (rustls,
//! SNI, a CA that must be trusted) without any real certificate. Also used by idledger's
//! tests and `bench api` for certificates of `serve`.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::sync::Arc;

/// What went wrong making a certificate or a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused the parameters.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The PEM text held no certificate or no key.
    #[error("PEM: {0}")]
    Pem(String),
}

/// A certificate authority that lives as long as the test or demo that made it.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The leaf certificate followed by nothing else (the CA is the trust anchor).
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a test key, but a Debug print is still no place for a private key.
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new authority with a fresh P-256 key, named `name`.
    pub fn new(name: &str) -> Result<TestCa, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    /// The authority's certificate, PEM: what a client must trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from a day ago
    /// for a year.
    pub fn issue(&self, names: &[&str]) -> Result<Issued, TlsError> {
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        self.issue_valid(names, now - day, now + 365 * day)
    }

    /// A server certificate for `names` valid between `not_before` and `not_after` (an
    /// expired one, for tests of the client's errors).
    pub fn issue_valid(
        &self,
        names: &[&str],
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Result<Issued, TlsError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A server configuration from PEM text: TLS 1.2 and 1.3 only (rustls has nothing older),
/// ring's algorithms, `h2` and `http/1.1` offered by ALPN.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Issued {
    /// This certificate as a server configuration.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        server_config(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }
}

/// What one client hello asked for: the name it sent (SNI) and the protocols it offered
/// (ALPN). Graph's front ends route by SNI: a client that sent none would reach nothing
/// there, so tests check what ours sends.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Hello {
    /// The server name, if one was sent.
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<String>,
}

/// The latest client hellos, at most [`Hellos::KEPT`].
#[derive(Debug, Default)]
pub struct Hellos(std::sync::Mutex<std::collections::VecDeque<Hello>>);

impl Hellos {
    /// How many hellos are kept.
    pub const KEPT: usize = 1000;

    fn note(&self, hello: Hello) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() == Self::KEPT {
            seen.pop_front();
        }
        seen.push_back(hello);
    }

    /// The hellos kept, oldest first.
    pub fn seen(&self) -> Vec<Hello> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().cloned().collect()
    }
}

/// `config` with every client hello noted in `hellos` before its certificate is chosen.
pub fn recording_hellos(
    config: &Arc<rustls::ServerConfig>,
    hellos: Arc<Hellos>,
) -> Arc<rustls::ServerConfig> {
    let mut config = (**config).clone();
    config.cert_resolver = Arc::new(RecordingResolver {
        inner: config.cert_resolver.clone(),
        hellos,
    });
    Arc::new(config)
}

#[derive(Debug)]
struct RecordingResolver {
    inner: Arc<dyn rustls::server::ResolvesServerCert>,
    hellos: Arc<Hellos>,
}

impl rustls::server::ResolvesServerCert for RecordingResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.hellos.note(Hello {
            server_name: hello.server_name().map(str::to_owned),
            alpn: hello
                .alpn()
                .into_iter()
                .flatten()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
        });
        self.inner.resolve(hello)
    }
}

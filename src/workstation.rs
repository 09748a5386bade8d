//! The workstation passwordless logon certificate of a domain (the seed's "certificate
//! required for configuring Workstation Passwordless Logon Settings"): a self-signed
//! X.509 certificate with an ECDSA P-256 key, one per domain. Workstation agents are
//! configured to trust it; the engine keeps its private key sealed with the domain's data
//! key, so removing the domain's keys makes the key unusable.

use rcgen::{CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber};
use sha2::{Digest, Sha256};

/// How long a certificate is valid.
pub const VALID_DAYS: i64 = 3 * 365;

/// A new certificate and its key.
pub struct NewCertificate {
    /// SHA-256 fingerprint of the DER, hex.
    pub fingerprint: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The private key, PKCS#8 DER (to be sealed at once; wiped when dropped).
    pub private_key_der: zeroize::Zeroizing<Vec<u8>>,
    /// Valid from.
    pub not_before: chrono::DateTime<chrono::Utc>,
    /// Valid until.
    pub not_after: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for NewCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCertificate")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Makes the certificate of the domain named `domain`, valid from `now`.
pub fn generate(
    domain: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<NewCertificate, rcgen::Error> {
    use rand::RngCore;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("idledger workstation logon {domain}"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, domain.to_owned());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A random serial: two certificates of one domain never share one.
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    // Whole seconds, so what the log records is exactly what the certificate says; five
    // minutes back, so a workstation whose clock runs a little slow takes it at once.
    let not_before = chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
        - chrono::Duration::minutes(5);
    let not_after = not_before + chrono::Duration::days(VALID_DAYS);
    params.not_before = std::time::SystemTime::from(not_before).into();
    params.not_after = std::time::SystemTime::from(not_after).into();
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = cert.der().to_vec();
    Ok(NewCertificate {
        fingerprint: hex::encode(Sha256::digest(&der)),
        der,
        private_key_der: zeroize::Zeroizing::new(key.serialize_der()),
        not_before,
        not_after,
    })
}

/// The certificate as PEM.
pub fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_domain_and_parses() {
        let now = chrono::Utc::now();
        let c = generate("contoso.onmicrosoft.com", now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.fingerprint.len(), 64);
        assert_eq!(
            c.not_after - c.not_before,
            chrono::Duration::days(VALID_DAYS)
        );
        let back = now - c.not_before;
        assert!(back >= chrono::Duration::minutes(5) && back < chrono::Duration::minutes(6));
        // rustls' parser takes it; the PEM round-trips to the same DER.
        use rustls::pki_types::pem::PemObject;
        let parsed = rustls::pki_types::CertificateDer::from_pem_slice(pem(&c.der).as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.as_ref(), c.der.as_slice());
        // The common name is in the DER.
        let text = String::from_utf8_lossy(&c.der);
        assert!(text.contains("idledger workstation logon contoso.onmicrosoft.com"));
        // Two certificates never share a fingerprint.
        let d = generate("contoso.onmicrosoft.com", now).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(c.fingerprint, d.fingerprint);
    }
}

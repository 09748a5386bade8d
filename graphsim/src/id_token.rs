//! ID tokens as Entra's v2.0 endpoint issues them: RS256 JWTs whose key is published at
//! `/{tenant}/discovery/v2.0/keys`, so a relying party validates them exactly as it would
//! Entra's (fetch the JWKS, pick the key by `kid`, check the signature).
//!
//! The key is `id_token_key.pk8`, a 2048-bit RSA key made once with
//! `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -outform DER` (OpenSSL 3
//! writes PKCS#1 there, so it went through `openssl pkcs8 -topk8 -nocrypt -inform DER
//! -outform DER` into the PKCS#8 ring reads) and committed as a test fixture: it is public, signs nothing but simulator tokens, and must never be
//! trusted outside tests and the demo. A fixed key (rather than one per process) keeps the
//! `kid` stable, and ring cannot generate RSA keys anyway.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{KeyPair, RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_SHA256};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The simulator-only signing key (PKCS#8 DER). Public on purpose: see the module docs.
const KEY_PKCS8: &[u8] = include_bytes!("id_token_key.pk8");

/// The key that signs ID tokens, with its public half in the forms the JWKS needs.
pub struct IdTokenKey {
    pair: RsaKeyPair,
    kid: String,
    /// Modulus, big-endian, no leading zero.
    n: Vec<u8>,
    /// Public exponent, big-endian, no leading zero.
    e: Vec<u8>,
}

impl std::fmt::Debug for IdTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the public identity: the private half stays out of logs.
        f.debug_struct("IdTokenKey")
            .field("kid", &self.kid)
            .finish()
    }
}

/// The signing key, loaded once; `None` only if the committed fixture were corrupt (every
/// route using it then answers 500 instead of panicking).
pub fn key() -> Option<&'static IdTokenKey> {
    static KEY: OnceLock<Option<IdTokenKey>> = OnceLock::new();
    KEY.get_or_init(|| IdTokenKey::from_pkcs8(KEY_PKCS8))
        .as_ref()
}

impl IdTokenKey {
    fn from_pkcs8(der: &[u8]) -> Option<Self> {
        let pair = RsaKeyPair::from_pkcs8(der).ok()?;
        let public: RsaPublicKeyComponents<Vec<u8>> = pair.public_key().into();
        // Stable and derived from the key alone, so a rotated fixture gets a new kid and a
        // relying party that cached the old JWKS refetches, as with Entra's rollover.
        let kid = B64.encode(&Sha256::digest(&public.n)[..16]);
        Some(IdTokenKey {
            pair,
            kid,
            n: public.n,
            e: public.e,
        })
    }

    /// The key id in every token header and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, stamped with the issuer it signs for (Entra's JWKS carries
    /// `issuer` per key, and Microsoft's validators read it).
    pub fn jwk(&self, issuer: &str) -> Jwk {
        Jwk {
            kty: "RSA".into(),
            use_: "sig".into(),
            kid: self.kid.clone(),
            n: B64.encode(&self.n),
            e: B64.encode(&self.e),
            alg: "RS256".into(),
            issuer: issuer.to_owned(),
        }
    }

    /// Signs `claims` into a compact RS256 JWT; `None` if ring refuses (it does not, for a
    /// valid key, but a failed signature must not take the server down).
    pub fn sign(&self, claims: &IdTokenClaims) -> Option<String> {
        let header = JwtHeader {
            typ: "JWT",
            alg: "RS256",
            kid: &self.kid,
        };
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).ok()?),
            B64.encode(serde_json::to_vec(claims).ok()?)
        );
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        let rng = ring::rand::SystemRandom::new();
        self.pair
            .sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
            .ok()?;
        Some(format!("{input}.{}", B64.encode(sig)))
    }
}

#[derive(Serialize)]
struct JwtHeader<'a> {
    typ: &'static str,
    alg: &'static str,
    kid: &'a str,
}

/// One key of a JWKS (RFC 7517), as Entra publishes it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Jwk {
    pub kty: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub kid: String,
    /// Modulus, base64url without padding.
    pub n: String,
    /// Exponent, base64url without padding.
    pub e: String,
    pub alg: String,
    pub issuer: String,
}

/// `GET /{tenant}/discovery/v2.0/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// The claims of a v2.0 ID token. Optional ones are left out, not null, when absent: Entra
/// omits what the scopes did not ask for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IdTokenClaims {
    /// The client id of the app that asked.
    pub aud: String,
    /// `{base}/{tenant id}/v2.0`.
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// The user's `mail`, with the `email` scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display name, with the `profile` scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The authorization request's nonce, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The user's object id, with the `profile` scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    /// The UPN, with the `profile` scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// Pairwise subject: stable per user and app, different across apps.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Unique token id (Entra's `jti`).
    pub uti: String,
    /// Always `2.0`.
    pub ver: String,
}

/// Entra's pairwise `sub`: the same user gets a different, stable subject in each app (and
/// tenant), so apps cannot correlate users by it.
pub fn pairwise_sub(tenant_id: &str, user_id: &str, client_id: &str) -> String {
    B64.encode(Sha256::digest(
        format!("{tenant_id}:{user_id}:{client_id}").as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_loads_and_signs_verifiably() {
        let key = key().expect("the committed key loads");
        assert_eq!(key.n.len(), 256, "2048-bit modulus");
        assert_ne!(key.n[0], 0, "no leading zero");
        assert_eq!(key.kid().len(), 22);
        let claims = IdTokenClaims {
            aud: "a".into(),
            iss: "i".into(),
            iat: 1,
            nbf: 1,
            exp: 2,
            email: None,
            name: None,
            nonce: Some("n".into()),
            oid: None,
            preferred_username: None,
            sub: "s".into(),
            tid: "t".into(),
            uti: "u".into(),
            ver: "2.0".into(),
        };
        let token = key.sign(&claims).expect("signs");
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let public = RsaPublicKeyComponents {
            n: &key.n,
            e: &key.e,
        };
        public
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                input.as_bytes(),
                &B64.decode(sig).expect("base64url"),
            )
            .expect("verifies");
        let payload = input.split('.').nth(1).expect("payload");
        let back: IdTokenClaims =
            serde_json::from_slice(&B64.decode(payload).expect("b64")).expect("json");
        assert_eq!(back, claims);
        assert!(!String::from_utf8_lossy(&B64.decode(payload).expect("b64")).contains("email"));
    }
}

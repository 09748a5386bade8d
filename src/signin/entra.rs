//! The Entra ID step of `password_and_second_factor`: PKCE, and validation of the ID
//! token Entra returns — signature against the tenant's published keys (RS256 as Entra
//! signs; ES256 also accepted), issuer, audience, nonce and lifetime — as OpenID Connect
//! Core §3.1.3.7 says. Only then is the token's `oid` matched to an imported user.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Clock skew allowed on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: i64 = 300;

/// Why an ID token was not accepted (shown to no one but the log and the audit trail).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdTokenError {
    /// Not a JWT, or its parts do not decode.
    #[error("the ID token is malformed: {0}")]
    Malformed(&'static str),
    /// An algorithm other than RS256 or ES256 (`none` among them).
    #[error("the ID token's algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// No published key has the token's `kid`.
    #[error("no signing key of the tenant has the ID token's kid")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the ID token's signature does not verify")]
    Signature,
    /// `iss` is not the tenant's issuer.
    #[error("the ID token comes from another issuer")]
    Issuer,
    /// `aud` is not this app registration.
    #[error("the ID token is for another app")]
    Audience,
    /// `nonce` is not this request's.
    #[error("the ID token's nonce does not match the request")]
    Nonce,
    /// Expired or not yet valid.
    #[error("the ID token is expired or not yet valid")]
    Lifetime,
}

/// The claims idledger reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct IdClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Not before.
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Issued at.
    pub iat: i64,
    /// The request's nonce.
    #[serde(default)]
    pub nonce: Option<String>,
    /// The user's object id in the tenant.
    pub oid: String,
    /// The tenant.
    #[serde(default)]
    pub tid: Option<String>,
    /// The user principal name.
    #[serde(default)]
    pub preferred_username: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(a) => a,
    })
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// One key of a JWKS document (the fields a signature check needs).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

/// A PKCE verifier (43 characters of base64url) and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = crate::http::new_token_text();
    let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn verify_with(jwk: &Jwk, alg: &str, input: &[u8], sig: &[u8]) -> Result<(), IdTokenError> {
    use ring::signature as rs;
    let part = |v: &Option<String>| -> Result<Vec<u8>, IdTokenError> {
        B64.decode(
            v.as_deref()
                .ok_or(IdTokenError::UnknownKey)?
                .trim_end_matches('='),
        )
        .map_err(|_| IdTokenError::UnknownKey)
    };
    match (alg, jwk.kty.as_str()) {
        ("RS256", "RSA") => {
            let key = rs::RsaPublicKeyComponents {
                n: part(&jwk.n)?,
                e: part(&jwk.e)?,
            };
            key.verify(&rs::RSA_PKCS1_2048_8192_SHA256, input, sig)
                .map_err(|_| IdTokenError::Signature)
        }
        ("ES256", "EC") if jwk.crv.as_deref() == Some("P-256") => {
            let (x, y) = (part(&jwk.x)?, part(&jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err(IdTokenError::UnknownKey);
            }
            let point = [&[4u8][..], &x, &y].concat();
            rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point)
                .verify(input, sig)
                .map_err(|_| IdTokenError::Signature)
        }
        _ => Err(IdTokenError::UnknownKey),
    }
}

/// Checks `token` against the tenant's `jwks`, `issuer`, this app's `client_id`, the
/// request's `nonce`, at Unix time `now`; answers its claims.
pub fn validate(
    token: &str,
    jwks: &serde_json::Value,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now: i64,
) -> Result<IdClaims, IdTokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdTokenError::Malformed("not three parts"));
    };
    let decode = |part: &str| {
        B64.decode(part)
            .map_err(|_| IdTokenError::Malformed("base64url"))
    };
    let header: Header =
        serde_json::from_slice(&decode(h)?).map_err(|_| IdTokenError::Malformed("header"))?;
    if header.alg != "RS256" && header.alg != "ES256" {
        return Err(IdTokenError::Algorithm(header.alg));
    }
    let keys: Jwks =
        serde_json::from_value(jwks.clone()).map_err(|_| IdTokenError::Malformed("JWKS"))?;
    let input = format!("{h}.{p}");
    let sig = decode(s)?;
    let candidates = keys.keys.iter().filter(|k| {
        k.usage.as_deref().is_none_or(|u| u == "sig")
            && (header.kid.is_none() || k.kid == header.kid)
    });
    let mut verified = false;
    let mut any = false;
    for k in candidates {
        any = true;
        if verify_with(k, &header.alg, input.as_bytes(), &sig).is_ok() {
            verified = true;
            break;
        }
    }
    if !any {
        return Err(IdTokenError::UnknownKey);
    }
    if !verified {
        return Err(IdTokenError::Signature);
    }
    let claims: IdClaims =
        serde_json::from_slice(&decode(p)?).map_err(|_| IdTokenError::Malformed("claims"))?;
    if claims.iss != issuer {
        return Err(IdTokenError::Issuer);
    }
    if !claims.aud.iter().any(|a| a == client_id) {
        return Err(IdTokenError::Audience);
    }
    if claims.nonce.as_deref() != Some(nonce) {
        return Err(IdTokenError::Nonce);
    }
    if now > claims.exp.saturating_add(LEEWAY_SECS)
        || claims
            .nbf
            .is_some_and(|nbf| now < nbf.saturating_sub(LEEWAY_SECS))
        || now < claims.iat.saturating_sub(LEEWAY_SECS)
    {
        return Err(IdTokenError::Lifetime);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// RFC 7515 Appendix A.2: an RS256 JWS and its key — the algorithm Entra signs with.
    #[test]
    fn rfc7515_rs256_signature_verifies() {
        let n = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
        let e = "AQAB";
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
        let jwk = Jwk {
            kty: "RSA".into(),
            kid: None,
            usage: None,
            n: Some(n.into()),
            e: Some(e.into()),
            crv: None,
            x: None,
            y: None,
        };
        let (input, sig) = token.rsplit_once('.').unwrap_or_default();
        let sig = B64.decode(sig).unwrap_or_default();
        assert_eq!(verify_with(&jwk, "RS256", input.as_bytes(), &sig), Ok(()));
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert_eq!(
            verify_with(&jwk, "RS256", input.as_bytes(), &bad),
            Err(IdTokenError::Signature)
        );
    }

    struct Signer {
        key: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Signer {
        fn new() -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap_or_else(|_| unreachable!());
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap_or_else(|_| unreachable!());
            Signer { key, rng }
        }

        fn jwks(&self) -> serde_json::Value {
            let p = self.key.public_key().as_ref();
            serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
                "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])}]})
        }

        fn sign(&self, header: &str, claims: &serde_json::Value) -> String {
            let input = format!("{}.{}", B64.encode(header), B64.encode(claims.to_string()));
            let sig = self
                .key
                .sign(&self.rng, input.as_bytes())
                .unwrap_or_else(|_| unreachable!());
            format!("{input}.{}", B64.encode(sig.as_ref()))
        }
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss": "https://login.example/t/v2.0", "aud": "app", "exp": 2000,
            "iat": 1000, "nbf": 1000, "nonce": "n1", "oid": "user-1", "tid": "t"})
    }

    #[test]
    fn id_token_checks() {
        let s = Signer::new();
        let jwks = s.jwks();
        let header = r#"{"alg":"ES256","kid":"k1"}"#;
        let check = |token: &str, now| {
            validate(
                token,
                &jwks,
                "https://login.example/t/v2.0",
                "app",
                "n1",
                now,
            )
        };
        let good = s.sign(header, &claims());
        assert_eq!(check(&good, 1500).map(|c| c.oid), Ok("user-1".into()));
        let with = |k: &str, v: serde_json::Value| {
            let mut c = claims();
            c[k] = v;
            s.sign(header, &c)
        };
        assert_eq!(
            check(&with("iss", "https://evil/v2.0".into()), 1500),
            Err(IdTokenError::Issuer)
        );
        assert_eq!(
            check(&with("aud", "other".into()), 1500),
            Err(IdTokenError::Audience)
        );
        assert_eq!(
            check(&with("nonce", "n2".into()), 1500),
            Err(IdTokenError::Nonce)
        );
        assert_eq!(
            check(&good, 2000 + LEEWAY_SECS + 1),
            Err(IdTokenError::Lifetime)
        );
        assert_eq!(
            check(&good, 1000 - LEEWAY_SECS - 1),
            Err(IdTokenError::Lifetime)
        );
        // `none`, HS256 and a stranger's key are refused.
        let unsigned = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none"}"#),
            B64.encode(claims().to_string())
        );
        assert!(matches!(
            check(&unsigned, 1500),
            Err(IdTokenError::Algorithm(_))
        ));
        let other = Signer::new().sign(header, &claims());
        assert_eq!(check(&other, 1500), Err(IdTokenError::Signature));
        let unknown_kid = s.sign(r#"{"alg":"ES256","kid":"k9"}"#, &claims());
        assert_eq!(check(&unknown_kid, 1500), Err(IdTokenError::UnknownKey));
        // A claim changed after signing.
        let (h, rest) = good.split_once('.').unwrap_or_default();
        let (_, sig) = rest.split_once('.').unwrap_or_default();
        let forged = format!("{h}.{}.{sig}", B64.encode(with_oid("admin").to_string()));
        assert_eq!(check(&forged, 1500), Err(IdTokenError::Signature));
        assert!(matches!(
            check("a.b", 1500),
            Err(IdTokenError::Malformed(_))
        ));
    }

    fn with_oid(oid: &str) -> serde_json::Value {
        let mut c = claims();
        c["oid"] = oid.into();
        c
    }
}

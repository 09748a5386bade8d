//! Access tokens shaped like Entra's: a JWT with `aud`, `iss`, `tid`, `appid`, `roles`,
//! `iat`, `nbf`, `exp`. Signed with HS256 under a key of this simulator process (real
//! Entra signs RS256; clients read the claims and never verify the signature).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The claims idledger and the simulator care about.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Audience: the Graph service root.
    pub aud: String,
    pub iss: String,
    /// Tenant id.
    pub tid: String,
    /// Client id of the app.
    pub appid: String,
    /// Granted application permissions.
    pub roles: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    pub exp: i64,
}

/// Signs claims into a compact JWT.
pub fn sign(claims: &Claims, key: &[u8]) -> String {
    let header = B64.encode(br#"{"typ":"JWT","alg":"HS256"}"#);
    let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let input = format!("{header}.{payload}");
    let sig = B64.encode(mac(key, input.as_bytes()));
    format!("{input}.{sig}")
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Checks the signature and returns the claims (expiry is the caller's check).
pub fn verify(token: &str, key: &[u8]) -> Option<Claims> {
    let (input, sig) = token.rsplit_once('.')?;
    let sig = B64.decode(sig).ok()?;
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    m.update(input.as_bytes());
    m.verify_slice(&sig).ok()?;
    let payload = input.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

/// Reads the claims of any JWT without checking the signature (what a client does).
pub fn peek(token: &str) -> Option<Claims> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

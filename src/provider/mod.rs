//! The OpenID Connect provider's signing keys: ES256 key pairs made here, their private
//! halves sealed (provider stream) the moment they exist, published as a JWKS, and the
//! JWTs they sign. Used by the token endpoint (`signin::oidc`), the admin API (rotation
//! on demand) and `serve`'s start (a first key).

use crate::engine::Engine;
use crate::secrets::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use idledger_domain::decide::provider::{decide, evolve, ProviderCommand};
use idledger_domain::events::SigningKeyAdded;
use idledger_domain::{Actor, StreamId};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

/// The longest a token signed by a key lives: a retired key stays published this long
/// (plus five minutes of clock skew), so every token it signed still verifies.
pub const TOKEN_TTL_SECS: i64 = 900;

/// Why a key could not be made, kept or used.
#[derive(Debug, thiserror::Error)]
pub enum ProviderKeyError {
    /// ring refused.
    #[error("signing key: {0}")]
    Crypto(String),
    /// Sealing or unsealing failed.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// The command path refused or failed.
    #[error(transparent)]
    Command(#[from] crate::store::CommandError),
    /// No key is in force (none was made yet).
    #[error("the provider has no signing key")]
    NoKey,
}

/// A public key as a JWK (RFC 7517/7518).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Jwk {
    /// `EC`.
    pub kty: String,
    /// `P-256`.
    pub crv: String,
    /// The point's x.
    pub x: String,
    /// The point's y.
    pub y: String,
    /// Its id.
    pub kid: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub usage: String,
    /// `ES256`.
    pub alg: String,
}

/// Makes a new ES256 key and puts it in force through the command path; the key in force
/// is retired and published until every token it signed has expired.
pub async fn add_signing_key(engine: &Engine, actor: &Actor) -> Result<String, ProviderKeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| ProviderKeyError::Crypto(e.to_string()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| ProviderKeyError::Crypto(e.to_string()))?;
    let point = pair.public_key().as_ref();
    let (x, y) = (&point[1..33], &point[33..65]);
    let kid = B64.encode(&Sha256::digest([x, y].concat())[..16]);
    let jwk = Jwk {
        kty: "EC".into(),
        crv: "P-256".into(),
        x: B64.encode(x),
        y: B64.encode(y),
        kid: kid.clone(),
        usage: "sig".into(),
        alg: "ES256".into(),
    };
    let stream = StreamId::provider();
    let sealed = engine
        .keyring
        .seal(&stream, &Secret::new(B64.encode(pkcs8.as_ref())))?;
    let command = ProviderCommand::AddSigningKey {
        key: SigningKeyAdded {
            kid: kid.clone(),
            alg: "ES256".into(),
            public_jwk: serde_json::to_string(&jwk).unwrap_or_default(),
            sealed_private_key: sealed,
        },
        verify_until: chrono::Utc::now() + chrono::Duration::seconds(TOKEN_TTL_SECS + 300),
    };
    let position =
        crate::store::decide_and_append(&*engine.log, &stream, actor, None, evolve, |s| {
            decide(s, command.clone())
        })
        .await?;
    engine
        .projector
        .wait_for(position, std::time::Duration::from_secs(10))
        .await
        .ok();
    Ok(kid)
}

/// The key in force, unsealed: its id and pair.
type Unsealed = Option<(String, Arc<EcdsaKeyPair>)>;

/// Signs JWTs with the key in force, kept unsealed in memory per key id.
#[derive(Clone, Default)]
pub struct Signer {
    cached: Arc<Mutex<Unsealed>>,
}

impl Signer {
    fn key(&self, engine: &Engine) -> Result<(String, Arc<EcdsaKeyPair>), ProviderKeyError> {
        let (kid, sealed) = {
            let p = engine.projector.read();
            let k = p.provider.signing_key().ok_or(ProviderKeyError::NoKey)?;
            (k.kid.clone(), k.sealed_private_key.clone())
        };
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, pair)) = cached.as_ref() {
            if *k == kid {
                return Ok((kid, pair.clone()));
            }
        }
        let pkcs8 = engine.keyring.unseal(&StreamId::provider(), &sealed)?;
        let der = B64
            .decode(pkcs8.expose())
            .map_err(|e| ProviderKeyError::Crypto(e.to_string()))?;
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
                .map_err(|e| ProviderKeyError::Crypto(e.to_string()))?;
        let pair = Arc::new(pair);
        *cached = Some((kid.clone(), pair.clone()));
        Ok((kid, pair))
    }

    /// A compact JWS (ES256) of `claims`.
    pub fn sign<C: Serialize>(
        &self,
        engine: &Engine,
        claims: &C,
    ) -> Result<String, ProviderKeyError> {
        let (kid, pair) = self.key(engine)?;
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(claims).unwrap_or_default())
        );
        let sig = pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|e| ProviderKeyError::Crypto(e.to_string()))?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    }
}

/// Checks a JWT this provider signed (any published key, at `now`); answers its claims.
/// Expiry is the caller's check (an `id_token_hint` may be expired).
pub fn verify(
    engine: &Engine,
    token: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<serde_json::Value> {
    let (input, sig) = token.rsplit_once('.')?;
    let (header, payload) = input.split_once('.')?;
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    if header["alg"] != "ES256" {
        return None;
    }
    let kid = header["kid"].as_str()?;
    let jwk: Jwk = {
        let p = engine.projector.read();
        let k = p.provider.published_keys(now).find(|k| k.kid == kid)?;
        serde_json::from_str(&k.public_jwk).ok()?
    };
    let point = [
        &[4u8][..],
        &B64.decode(&jwk.x).ok()?,
        &B64.decode(&jwk.y).ok()?,
    ]
    .concat();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &B64.decode(sig).ok()?)
        .ok()?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

//! A software WebAuthn authenticator (ES256 on ring) for tests over HTTP: it makes the
//! registrations and assertions a browser would post, for one relying party.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub struct SoftKey {
    pub credential: Vec<u8>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    pub counter: u32,
    /// The user handle it was registered with.
    pub user_handle: Vec<u8>,
    /// A synced (backup-eligible, backed-up) passkey, like a phone's.
    pub synced: bool,
}

fn cose(public: &[u8]) -> Vec<u8> {
    use ciborium::value::{Integer, Value as C};
    let int = |n: i64| C::Integer(Integer::from(n));
    let map = C::Map(vec![
        (int(1), int(2)),
        (int(3), int(-7)),
        (int(-1), int(1)),
        (int(-2), C::Bytes(public[1..33].to_vec())),
        (int(-3), C::Bytes(public[33..65].to_vec())),
    ]);
    let mut out = Vec::new();
    ciborium::ser::into_writer(&map, &mut out).unwrap();
    out
}

impl SoftKey {
    pub fn new() -> SoftKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        SoftKey {
            credential: uuid::Uuid::new_v4().as_bytes().to_vec(),
            key,
            rng,
            counter: 0,
            user_handle: Vec::new(),
            synced: false,
        }
    }

    /// A key claiming another key's credential id (a forger's).
    pub fn forging(id: &[u8]) -> SoftKey {
        let mut k = SoftKey::new();
        k.credential = id.to_vec();
        k
    }

    fn auth_data(&self, rp_id: &str, flags: u8) -> Vec<u8> {
        let mut a = Sha256::digest(rp_id.as_bytes()).to_vec();
        // BE and BS: eligible for backup, and backed up.
        a.push(if self.synced { flags | 0x18 } else { flags });
        a.extend_from_slice(&self.counter.to_be_bytes());
        a
    }

    /// The answer to creation `options` (as the server sent them) at `origin`.
    pub fn register(&mut self, options: &Value, origin: &str) -> Value {
        self.counter += 1;
        let rp_id = options["rp"]["id"].as_str().unwrap();
        self.user_handle = B64.decode(options["user"]["id"].as_str().unwrap()).unwrap();
        let client_data = json!({"type": "webauthn.create",
            "challenge": options["challenge"], "origin": origin, "crossOrigin": false})
        .to_string();
        let mut auth = self.auth_data(rp_id, 0x45);
        auth.extend_from_slice(&[0u8; 16]);
        auth.extend_from_slice(&(self.credential.len() as u16).to_be_bytes());
        auth.extend_from_slice(&self.credential);
        auth.extend_from_slice(&cose(self.key.public_key().as_ref()));
        use ciborium::value::Value as C;
        let object = C::Map(vec![
            (C::Text("fmt".into()), C::Text("none".into())),
            (C::Text("attStmt".into()), C::Map(vec![])),
            (C::Text("authData".into()), C::Bytes(auth)),
        ]);
        let mut att = Vec::new();
        ciborium::ser::into_writer(&object, &mut att).unwrap();
        let id = B64.encode(&self.credential);
        json!({"id": id, "rawId": id, "type": "public-key",
            "authenticatorAttachment": "cross-platform",
            "response": {"clientDataJSON": B64.encode(client_data),
                         "attestationObject": B64.encode(att)}})
    }

    /// The answer to request `options` at `origin`, with `user_handle` (None: none sent).
    pub fn assert(&mut self, options: &Value, origin: &str, user_handle: Option<&[u8]>) -> Value {
        self.counter += 1;
        let rp_id = options["rpId"].as_str().unwrap();
        let client_data = json!({"type": "webauthn.get",
            "challenge": options["challenge"], "origin": origin, "crossOrigin": false})
        .to_string();
        let auth = self.auth_data(rp_id, 0x05);
        let signed = [&auth[..], &Sha256::digest(client_data.as_bytes())[..]].concat();
        let sig = self.key.sign(&self.rng, &signed).unwrap();
        let id = B64.encode(&self.credential);
        json!({"id": id, "rawId": id, "type": "public-key",
            "authenticatorAttachment": "cross-platform",
            "response": {"clientDataJSON": B64.encode(client_data),
                         "authenticatorData": B64.encode(auth),
                         "signature": B64.encode(sig.as_ref()),
                         "userHandle": user_handle.map(|h| B64.encode(h))}})
    }
}

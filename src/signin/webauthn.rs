//! WebAuthn Level 2 relying-party verification: passkeys and FIDO2 security keys.
//!
//! Hand-written rather than taken from `webauthn-rs` because that crate links OpenSSL,
//! which a fresh build machine lacks; everything here runs on `ring` (already built for
//! rustls) and decodes CBOR with `ciborium`.
//!
//! What this module does (W3C WebAuthn Level 2, §7.1 "Registering a New Credential" and
//! §7.2 "Verifying an Authentication Assertion"):
//! - builds the JSON options for `navigator.credentials.create()` / `.get()`,
//! - verifies the browser's answers: `clientDataJSON` (type, challenge, origin, no
//!   cross-origin embedding), `authenticatorData` (RP ID hash, user present, user
//!   verified, backup flags, attested credential data), the attestation statement's
//!   format, and assertion signatures and signature counters.
//!
//! What it leaves to the caller (it has no storage): issuing and consuming each
//! challenge exactly once, refusing a credential ID that is already registered, looking
//! up the credential a sign-in names, checking that an assertion's user handle (when
//! present) belongs to that credential's user, and saving the new signature counter.
//!
//! Attestation is NOT used for trust decisions: we ask for `attestation: "none"`, accept
//! `none` and `packed` statements, and verify certificate chains never. A packed
//! self-attestation (no `x5c`) is still checked, because it is signed by the credential
//! key itself and costs nothing to verify; a packed statement with certificates is only
//! checked for shape. The AAGUID we report is therefore self-asserted by the
//! authenticator and good for display ("YubiKey 5", "iCloud Keychain"), not for policy.
//!
//! All input is hostile: nothing here unwraps, indexes unchecked, or panics on input.
//! Error messages name what was wrong, never key material, so they may be shown to users.

use std::panic::{catch_unwind, AssertUnwindSafe};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use ciborium::value::Value;
use rand::rngs::OsRng;
use rand::RngCore as _;
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519,
    RSA_PKCS1_2048_8192_SHA256,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// COSE algorithm identifiers we offer and accept (IANA "COSE Algorithms").
pub const COSE_ALG_ES256: i64 = -7;
pub const COSE_ALG_EDDSA: i64 = -8;
pub const COSE_ALG_RS256: i64 = -257;

/// Milliseconds the browser gives the user; 60 s is the spec's recommended default range.
const TIMEOUT_MS: u32 = 60_000;

/// §7.1: credential IDs longer than 1023 bytes SHOULD fail registration (they are also
/// what we store and index, so a bound matters).
const MAX_CREDENTIAL_ID_LEN: usize = 1023;

/// §5.4.3: a user handle is at most 64 bytes.
const MAX_USER_HANDLE_LEN: usize = 64;

/// Upper bound for any one decoded binary field. Real attestation objects, even with a
/// certificate chain, are a few KiB; the bound keeps a hostile request from making us
/// base64-decode and CBOR-expand megabytes (a CBOR `Value` costs ~50 bytes of memory per
/// one-byte input item).
const MAX_FIELD_LEN: usize = 64 * 1024;

/// CBOR nesting limit. WebAuthn structures nest at most three deep (attestationObject →
/// attStmt → x5c); ciborium's default of 256 is deeper than we need and each level costs
/// stack, so hostile nesting is cut off early.
const CBOR_DEPTH_LIMIT: usize = 16;

/// The most entries we accept in a CBOR map we interpret (COSE key, attestation object,
/// attStmt). Real ones have at most 5; the bound keeps the duplicate-key check cheap.
const MAX_MAP_ENTRIES: usize = 16;

/// authenticatorData flag bits (§6.1).
const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_BE: u8 = 0x08;
const FLAG_BS: u8 = 0x10;
const FLAG_AT: u8 = 0x40;
const FLAG_ED: u8 = 0x80;

/// rpIdHash (32) + flags (1) + signCount (4).
const AUTH_DATA_MIN_LEN: usize = 37;

/// Base64url as browsers and our page's JS produce it: no padding. Decoding tolerates
/// padding because some JS helpers add it and it carries no meaning; it still rejects
/// the standard alphabet (`+`, `/`) and non-canonical trailing bits.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a ceremony failed. Messages are safe to show to a user: they never contain key
/// material, and the one attacker-chosen string (an attestation format) is truncated and
/// escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebauthnError {
    /// The named part of the response could not be decoded or has the wrong shape.
    #[error("malformed WebAuthn response: {0}")]
    Malformed(&'static str),
    /// clientDataJSON is for the other ceremony (a `get` answer posted to registration or
    /// vice versa).
    #[error("the response is for the wrong kind of WebAuthn ceremony")]
    WrongType,
    #[error("the response does not answer this sign-in's challenge")]
    ChallengeMismatch,
    #[error("the response comes from a different web origin")]
    OriginMismatch,
    /// The ceremony ran in a cross-origin iframe; we never embed our sign-in page.
    #[error("the response was made inside a cross-origin frame")]
    CrossOrigin,
    #[error("the credential is scoped to a different relying party")]
    RpIdMismatch,
    #[error("the authenticator did not confirm user presence")]
    UserNotPresent,
    #[error("the authenticator did not verify the user (PIN or biometric)")]
    UserNotVerified,
    #[error("unsupported credential algorithm {0}")]
    UnsupportedAlgorithm(i64),
    /// The COSE public key is structurally wrong (missing or mismatched parameters).
    #[error("invalid credential public key: {0}")]
    InvalidPublicKey(&'static str),
    #[error("the signature does not verify")]
    BadSignature,
    /// The credential in the response is not the one we expected.
    #[error("the response is for a different credential")]
    CredentialMismatch,
    /// The signature counter did not advance: possibly a cloned authenticator.
    #[error("the authenticator's signature counter went back (stored {stored}, got {got}); it may have been cloned")]
    CounterWentBack { stored: u32, got: u32 },
    #[error("unsupported attestation format {0:?}")]
    UnsupportedAttestation(String),
    /// The attestation statement is inconsistent with its format.
    #[error("invalid attestation statement: {0}")]
    BadAttestation(&'static str),
}

use WebauthnError as E;

// ---------------------------------------------------------------------------------------
// Relying party and challenges
// ---------------------------------------------------------------------------------------

/// The relying party: its id (a host, e.g. "localhost" or "idp.contoso.com") and the
/// exact origin browsers report (e.g. "http://localhost:8080", "https://idp.contoso.com").
///
/// `id` must be the lowercase host the browser sees (or a registrable suffix of it);
/// `origin` is compared byte for byte, so it has scheme, host and non-default port and no
/// trailing slash, exactly as `window.location.origin` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingParty {
    pub id: String,
    pub origin: String,
    pub name: String,
}

/// A fresh 32-byte challenge from the OS CSPRNG. The caller keeps it server-side (bound
/// to the session), uses it for exactly one ceremony, and discards it afterwards so a
/// captured response cannot be replayed.
pub fn new_challenge() -> [u8; 32] {
    let mut challenge = [0u8; 32];
    // OsRng only fails if the kernel's getrandom is unavailable, which on the Linux
    // targets we ship means the machine is broken; rand 0.8 then panics, which is the
    // right outcome (there is no safe challenge to fall back to). It is not input-driven.
    OsRng.fill_bytes(&mut challenge);
    challenge
}

// ---------------------------------------------------------------------------------------
// Options sent to the browser
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpEntity {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserEntity {
    /// base64url of the user handle (opaque, no personal data, at most 64 bytes).
    pub id: String,
    pub name: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialParameter {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub alg: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorSelection {
    pub resident_key: &'static str,
    /// Level 1 spelling of `residentKey: "required"`, for older browsers.
    pub require_resident_key: bool,
    pub user_verification: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialDescriptor {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// base64url of the credential ID.
    pub id: String,
}

/// What the browser needs for `navigator.credentials.create({ publicKey })`, as JSON with
/// binary fields base64url (no padding); the page's JS decodes `challenge`, `user.id` and
/// each `excludeCredentials[].id` to ArrayBuffers before the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationOptions {
    pub rp: RpEntity,
    pub user: UserEntity,
    pub challenge: String,
    pub pub_key_cred_params: Vec<CredentialParameter>,
    pub timeout: u32,
    pub attestation: &'static str,
    pub authenticator_selection: AuthenticatorSelection,
    pub exclude_credentials: Vec<CredentialDescriptor>,
}

fn descriptors(ids: &[Vec<u8>]) -> Vec<CredentialDescriptor> {
    ids.iter()
        .map(|id| CredentialDescriptor {
            kind: "public-key",
            id: B64URL.encode(id),
        })
        .collect()
}

/// Options for registering a credential. `user_handle` is the opaque, stable, at most
/// 64-byte id of the user (never an email address: authenticators may show or sync it);
/// `exclude` lists the user's existing credential IDs so one authenticator is not
/// registered twice. `discoverable` asks for a passkey (resident key) that can sign in
/// without a user name; when false, a resident key is merely preferred.
pub fn creation_options(
    rp: &RelyingParty,
    challenge: &[u8; 32],
    user_handle: &[u8],
    user_name: &str,
    display_name: &str,
    exclude: &[Vec<u8>],
    discoverable: bool,
) -> CreationOptions {
    CreationOptions {
        rp: RpEntity {
            id: rp.id.clone(),
            name: rp.name.clone(),
        },
        user: UserEntity {
            id: B64URL.encode(user_handle),
            name: user_name.to_owned(),
            display_name: display_name.to_owned(),
        },
        challenge: B64URL.encode(challenge),
        // In preference order: ES256 is what nearly every authenticator supports, EdDSA
        // is offered for newer keys, RS256 for Windows Hello's TPM-backed keys.
        pub_key_cred_params: [COSE_ALG_ES256, COSE_ALG_EDDSA, COSE_ALG_RS256]
            .into_iter()
            .map(|alg| CredentialParameter {
                kind: "public-key",
                alg,
            })
            .collect(),
        timeout: TIMEOUT_MS,
        // We make no trust decision from attestation (see module docs), so we do not ask
        // for it: it would only add privacy cost and consent prompts.
        attestation: "none",
        authenticator_selection: AuthenticatorSelection {
            resident_key: if discoverable {
                "required"
            } else {
                "preferred"
            },
            require_resident_key: discoverable,
            // The passkey is the whole sign-in (no password), so it must be two factors:
            // possession of the authenticator plus its PIN or biometric.
            user_verification: "required",
        },
        exclude_credentials: descriptors(exclude),
    }
}

/// What the browser needs for `navigator.credentials.get({ publicKey })`; binary fields
/// base64url (no padding), decoded by the page's JS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestOptions {
    pub challenge: String,
    pub timeout: u32,
    pub rp_id: String,
    /// Empty asks the browser to offer any discoverable credential (passkey) for the RP.
    pub allow_credentials: Vec<CredentialDescriptor>,
    pub user_verification: &'static str,
}

/// Options for a sign-in. `allow` lists acceptable credential IDs (the user's, when the
/// user name is already known); pass an empty slice for a username-less passkey sign-in.
pub fn request_options(
    rp: &RelyingParty,
    challenge: &[u8; 32],
    allow: &[Vec<u8>],
) -> RequestOptions {
    RequestOptions {
        challenge: B64URL.encode(challenge),
        timeout: TIMEOUT_MS,
        rp_id: rp.id.clone(),
        allow_credentials: descriptors(allow),
        user_verification: "required",
    }
}

// ---------------------------------------------------------------------------------------
// Responses posted by the page
// ---------------------------------------------------------------------------------------
//
// Unknown fields are ignored on purpose: browsers add fields (clientExtensionResults,
// transports, publicKey, publicKeyAlgorithm, ...) and more will come. Everything we rely
// on is re-derived from the signed/attested binary data, never from these convenience
// fields.

#[derive(Debug, Clone, Deserialize)]
struct AttestationResponseJson {
    #[serde(rename = "clientDataJSON")]
    client_data_json: String,
    #[serde(rename = "attestationObject")]
    attestation_object: String,
}

/// A `PublicKeyCredential` from `navigator.credentials.create()`, as the page's JS posts
/// it: `{ id, rawId, type, response: { clientDataJSON, attestationObject },
/// authenticatorAttachment }` with binary fields base64url.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationResponse {
    id: String,
    raw_id: String,
    #[serde(rename = "type")]
    kind: String,
    response: AttestationResponseJson,
    #[serde(default)]
    authenticator_attachment: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssertionResponseJson {
    #[serde(rename = "clientDataJSON")]
    client_data_json: String,
    authenticator_data: String,
    signature: String,
    #[serde(default)]
    user_handle: Option<String>,
}

/// A `PublicKeyCredential` from `navigator.credentials.get()`, as the page's JS posts it:
/// `{ id, rawId, type, response: { clientDataJSON, authenticatorData, signature,
/// userHandle }, authenticatorAttachment }` with binary fields base64url and `userHandle`
/// null or absent when the authenticator returned none.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssertionResponse {
    id: String,
    raw_id: String,
    #[serde(rename = "type")]
    kind: String,
    response: AssertionResponseJson,
    #[serde(default)]
    authenticator_attachment: Option<serde_json::Value>,
}

/// The challenge a `clientDataJSON` says it answers, if it can be read. Unauthenticated:
/// it only picks which pending challenge verification holds the response to.
fn claimed_challenge(client_data_json: &str) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Claimed {
        challenge: String,
    }
    let json = B64URL.decode(client_data_json).ok()?;
    let claimed: Claimed = serde_json::from_slice(&json).ok()?;
    B64URL.decode(claimed.challenge).ok()
}

impl RegistrationResponse {
    /// The challenge this response says it answers (see [`claimed_challenge`]).
    pub fn answered_challenge(&self) -> Option<Vec<u8>> {
        claimed_challenge(&self.response.client_data_json)
    }
}

impl AssertionResponse {
    /// The challenge this response says it answers (see [`claimed_challenge`]).
    pub fn answered_challenge(&self) -> Option<Vec<u8>> {
        claimed_challenge(&self.response.client_data_json)
    }

    /// The credential ID the browser used: what the caller looks the credential up by.
    /// Unauthenticated until [`verify_assertion`] succeeds.
    pub fn credential_id(&self) -> Result<Vec<u8>, WebauthnError> {
        checked_credential_id(&self.kind, &self.id, &self.raw_id)
    }

    /// The user handle a discoverable credential returned (None when absent, null or
    /// empty). Unauthenticated until [`verify_assertion`] succeeds; the caller must check
    /// it equals the handle of the user who owns the credential (§7.2 step 6).
    pub fn user_handle(&self) -> Result<Option<Vec<u8>>, WebauthnError> {
        match self.response.user_handle.as_deref() {
            None | Some("") => Ok(None),
            Some(encoded) => {
                let handle = b64("userHandle", encoded)?;
                if handle.len() > MAX_USER_HANDLE_LEN {
                    return Err(E::Malformed("userHandle (longer than 64 bytes)"));
                }
                Ok(Some(handle))
            }
        }
    }

    /// How the authenticator was attached, as the browser reports it (unauthenticated).
    pub fn attachment(&self) -> Option<Attachment> {
        attachment(self.authenticator_attachment.as_ref())
    }
}

/// `authenticatorAttachment`: built into the device (Touch ID, Windows Hello, a phone's
/// own passkey) or roaming (USB/NFC security key, phone via hybrid). Browser-reported and
/// unauthenticated: for display and UX hints only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    Platform,
    CrossPlatform,
}

fn attachment(value: Option<&serde_json::Value>) -> Option<Attachment> {
    match value.and_then(serde_json::Value::as_str) {
        Some("platform") => Some(Attachment::Platform),
        Some("cross-platform") => Some(Attachment::CrossPlatform),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// A verified new credential, for the caller to store with the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    /// The credential ID (≤ 1023 bytes). The caller must refuse it if already registered.
    pub id: Vec<u8>,
    /// The COSE_Key bytes exactly as in authenticatorData: pass back to `verify_assertion`.
    pub public_key: Vec<u8>,
    /// COSE algorithm of `public_key` (-7, -8 or -257).
    pub algorithm: i64,
    /// Initial signature counter; store it as the first `stored_count`.
    pub sign_count: u32,
    /// Authenticator model id, self-asserted (attestation is not verified); zeros when
    /// the browser anonymised it. For display only.
    pub aaguid: [u8; 16],
    pub user_verified: bool,
    /// The credential may be synced to other devices (a multi-device passkey); fixed for
    /// the credential's lifetime.
    pub backup_eligible: bool,
    pub attachment: Option<Attachment>,
}

impl NewCredential {
    /// Where it lives, as far as the authenticator itself tells: the browser's
    /// `authenticatorAttachment` is not signed, and calls a phone's synced passkey used by
    /// QR code "cross-platform". A backup-eligible (syncable) credential is bound to no
    /// hardware, so only one that is not counts as a security key (and signs in as `hwk`).
    pub fn hardware_attachment(&self) -> Option<Attachment> {
        match self.attachment {
            Some(Attachment::CrossPlatform) if self.backup_eligible => Some(Attachment::Platform),
            other => other,
        }
    }
}

/// A verified sign-in. The caller stores `sign_count` as the new `stored_count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub sign_count: u32,
    pub user_verified: bool,
    /// The credential is currently backed up (synced).
    pub backup_state: bool,
    /// BE as reported now; §6.1.3 says it never changes for a credential, so a caller that
    /// stored `NewCredential::backup_eligible` may treat a difference as suspicious.
    pub backup_eligible: bool,
}

// ---------------------------------------------------------------------------------------
// Ceremonies
// ---------------------------------------------------------------------------------------

/// Verifies a registration (§7.1) against the challenge issued for it.
pub fn verify_registration(
    rp: &RelyingParty,
    challenge: &[u8; 32],
    response: &RegistrationResponse,
) -> Result<NewCredential, WebauthnError> {
    let raw_id = checked_credential_id(&response.kind, &response.id, &response.raw_id)?;

    // §7.1 steps 5–12: clientDataJSON, and its hash for the attestation signature.
    let client_data_json = b64("clientDataJSON", &response.response.client_data_json)?;
    verify_client_data(rp, challenge, &client_data_json, "webauthn.create")?;
    let client_data_hash: [u8; 32] = Sha256::digest(&client_data_json).into();

    // Step 12: the attestation object {fmt, attStmt, authData}.
    let attestation_object = b64("attestationObject", &response.response.attestation_object)?;
    let attestation_value = cbor_exact(&attestation_object, "attestationObject")?;
    let attestation = attestation_fields(&attestation_value)?;
    let auth_data = parse_auth_data(attestation.auth_data)?;

    // Steps 13–16: RP ID hash, UP, UV, backup flags.
    check_auth_data(rp, &auth_data)?;

    let Some(credential) = auth_data.attested else {
        return Err(E::Malformed(
            "authenticatorData (no attested credential data)",
        ));
    };
    // The credential ID in the signed authenticator data is the one that counts; the
    // browser's rawId must agree, or the page is confused or tampering.
    if credential.credential_id != raw_id.as_slice() {
        return Err(E::CredentialMismatch);
    }

    // Step 17: the key's algorithm must be one we offered (parse_cose_key knows only
    // those three and rejects every other key type, curve and algorithm).
    let key = parse_cose_key(credential.public_key)?;

    // Steps 19–21: the attestation statement (not used for trust, see module docs).
    verify_attestation_statement(
        attestation.fmt,
        attestation.att_stmt,
        attestation.auth_data,
        &client_data_hash,
        &key,
    )?;

    Ok(NewCredential {
        id: raw_id,
        public_key: credential.public_key.to_vec(),
        algorithm: key.alg(),
        sign_count: auth_data.sign_count,
        aaguid: credential.aaguid,
        user_verified: auth_data.flags & FLAG_UV != 0,
        backup_eligible: auth_data.flags & FLAG_BE != 0,
        attachment: attachment(response.authenticator_attachment.as_ref()),
    })
}

/// Verifies a sign-in (§7.2). `credential_id`, `public_key` and `stored_count` are what
/// the caller stored for the credential that `response.credential_id()` named (and, for a
/// discoverable sign-in, whose owner matches `response.user_handle()`).
pub fn verify_assertion(
    rp: &RelyingParty,
    challenge: &[u8; 32],
    credential_id: &[u8],
    public_key: &[u8],
    stored_count: u32,
    response: &AssertionResponse,
) -> Result<VerifiedAssertion, WebauthnError> {
    // Steps 5–6: the credential used is the one the caller looked up.
    let raw_id = response.credential_id()?;
    if raw_id.as_slice() != credential_id {
        return Err(E::CredentialMismatch);
    }
    // Reject an undecodable userHandle even though the caller checks its value.
    response.user_handle()?;

    // Steps 8–14: clientDataJSON.
    let client_data_json = b64("clientDataJSON", &response.response.client_data_json)?;
    verify_client_data(rp, challenge, &client_data_json, "webauthn.get")?;

    // Steps 15–18: authenticator data.
    let auth_data_bytes = b64("authenticatorData", &response.response.authenticator_data)?;
    let auth_data = parse_auth_data(&auth_data_bytes)?;
    if auth_data.attested.is_some() {
        // Assertions never carry attested credential data (§6.3.3); its presence means
        // this is not an authenticatorGetAssertion output.
        return Err(E::Malformed(
            "authenticatorData (attested credential data in an assertion)",
        ));
    }
    check_auth_data(rp, &auth_data)?;

    // Steps 19–20: signature over authenticatorData || SHA-256(clientDataJSON).
    let key = parse_cose_key(public_key)?;
    let signature = b64("signature", &response.response.signature)?;
    let client_data_hash = Sha256::digest(&client_data_json);
    let signed = [auth_data_bytes.as_slice(), client_data_hash.as_slice()].concat();
    key.verify(&signed, &signature)?;

    // Step 21: the counter, checked only after the signature so an unauthenticated
    // response cannot provoke a "cloned authenticator" alarm. Synced passkeys keep 0/0.
    let got = auth_data.sign_count;
    if (stored_count != 0 || got != 0) && got <= stored_count {
        return Err(E::CounterWentBack {
            stored: stored_count,
            got,
        });
    }

    Ok(VerifiedAssertion {
        sign_count: got,
        user_verified: auth_data.flags & FLAG_UV != 0,
        backup_state: auth_data.flags & FLAG_BS != 0,
        backup_eligible: auth_data.flags & FLAG_BE != 0,
    })
}

// ---------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------

/// Decodes a base64url field, bounding its size first.
fn b64(field: &'static str, encoded: &str) -> Result<Vec<u8>, WebauthnError> {
    // 4 characters per 3 bytes, plus up to 2 padding characters.
    if encoded.len() > MAX_FIELD_LEN / 3 * 4 + 4 {
        return Err(E::Malformed(field));
    }
    let decoded = B64URL.decode(encoded).map_err(|_| E::Malformed(field))?;
    if decoded.len() > MAX_FIELD_LEN {
        return Err(E::Malformed(field));
    }
    Ok(decoded)
}

/// `type` must be "public-key", and `id` must be the base64url of `rawId` (both are the
/// credential ID; a disagreement means a confused or tampering page).
fn checked_credential_id(kind: &str, id: &str, raw_id: &str) -> Result<Vec<u8>, WebauthnError> {
    if kind != "public-key" {
        return Err(E::Malformed("credential type (not \"public-key\")"));
    }
    let raw = b64("rawId", raw_id)?;
    let id = b64("id", id)?;
    if raw != id {
        return Err(E::Malformed("id (differs from rawId)"));
    }
    if raw.is_empty() || raw.len() > MAX_CREDENTIAL_ID_LEN {
        return Err(E::Malformed("rawId (length)"));
    }
    Ok(raw)
}

/// The fields of CollectedClientData we check (§5.8.1). Others (tokenBinding, which no
/// current browser sends, and future ones) are ignored; serde rejects duplicate keys, so
/// no JSON-parser disagreement can smuggle a second "origin" past us.
#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: Option<bool>,
    #[serde(rename = "topOrigin", default)]
    top_origin: Option<String>,
}

fn verify_client_data(
    rp: &RelyingParty,
    challenge: &[u8; 32],
    client_data_json: &[u8],
    expected_type: &str,
) -> Result<(), WebauthnError> {
    // serde_json checks UTF-8 and rejects trailing garbage.
    let client_data: ClientData =
        serde_json::from_slice(client_data_json).map_err(|_| E::Malformed("clientDataJSON"))?;
    if client_data.kind != expected_type {
        return Err(E::WrongType);
    }
    // The challenge is not secret (it went to the browser in the clear), so a plain
    // comparison is fine. An undecodable one is simply not ours.
    let got = B64URL
        .decode(&client_data.challenge)
        .map_err(|_| E::ChallengeMismatch)?;
    if got.as_slice() != challenge.as_slice() {
        return Err(E::ChallengeMismatch);
    }
    // Exact match: the origin is what phishing resistance rests on.
    if client_data.origin != rp.origin {
        return Err(E::OriginMismatch);
    }
    // Our pages are never framed by another origin; a cross-origin ceremony means
    // someone else's page is driving ours (clickjacking).
    if client_data.cross_origin == Some(true) {
        return Err(E::CrossOrigin);
    }
    // Level 3 adds topOrigin for framed ceremonies; any value but ours is framing.
    if client_data
        .top_origin
        .as_deref()
        .is_some_and(|top| top != rp.origin)
    {
        return Err(E::CrossOrigin);
    }
    Ok(())
}

/// Checks common to both ceremonies (§7.1 steps 13–16, §7.2 steps 15–18).
fn check_auth_data(rp: &RelyingParty, auth_data: &AuthData<'_>) -> Result<(), WebauthnError> {
    let expected: [u8; 32] = Sha256::digest(rp.id.as_bytes()).into();
    if auth_data.rp_id_hash != expected {
        return Err(E::RpIdMismatch);
    }
    if auth_data.flags & FLAG_UP == 0 {
        return Err(E::UserNotPresent);
    }
    // We always request userVerification "required": a passkey replaces the password,
    // so the PIN/biometric is the second factor.
    if auth_data.flags & FLAG_UV == 0 {
        return Err(E::UserNotVerified);
    }
    // Level 3 §7.1 step 16: a credential cannot be backed up without being eligible.
    if auth_data.flags & FLAG_BS != 0 && auth_data.flags & FLAG_BE == 0 {
        return Err(E::Malformed(
            "authenticatorData (backed up but not backup eligible)",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CBOR
// ---------------------------------------------------------------------------------------

/// Decodes ONE CBOR item from the front of `input` and returns it with the number of
/// bytes it occupied. authenticatorData gives no length for the COSE key, and extensions
/// may follow it, so the only way to find where the key ends is to decode it and see how
/// far the reader advanced. ciborium reads exactly the bytes of the item (it never reads
/// ahead), so the slice reader's position is the item's end.
fn cbor_prefix(input: &[u8], what: &'static str) -> Result<(Value, usize), WebauthnError> {
    let mut rest = input;
    // ciborium guards itself with internal assertions; a bug there must turn into a
    // rejected request, not a panicking handler. (No shared state is touched inside.)
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        ciborium::de::from_reader_with_recursion_limit::<Value, _>(&mut rest, CBOR_DEPTH_LIMIT)
    }));
    match decoded {
        // `rest` is a suffix of `input`, so this never saturates.
        Ok(Ok(value)) => Ok((value, input.len().saturating_sub(rest.len()))),
        _ => Err(E::Malformed(what)),
    }
}

/// Decodes `input` as exactly one CBOR item with nothing after it.
fn cbor_exact(input: &[u8], what: &'static str) -> Result<Value, WebauthnError> {
    let (value, used) = cbor_prefix(input, what)?;
    if used != input.len() {
        return Err(E::Malformed(what));
    }
    Ok(value)
}

/// A CBOR map we interpret, checked for size and duplicate keys: a duplicate would let
/// two parsers (ours, and whoever else reads the stored bytes) see different values.
fn cbor_map<'v>(
    value: &'v Value,
    what: &'static str,
) -> Result<&'v [(Value, Value)], WebauthnError> {
    let Value::Map(entries) = value else {
        return Err(E::Malformed(what));
    };
    if entries.len() > MAX_MAP_ENTRIES {
        return Err(E::Malformed(what));
    }
    for (i, (key, _)) in entries.iter().enumerate() {
        if entries.iter().take(i).any(|(earlier, _)| earlier == key) {
            return Err(E::Malformed(what));
        }
    }
    Ok(entries)
}

fn map_get<'v>(entries: &'v [(Value, Value)], key: &Value) -> Option<&'v Value> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn text_key(key: &str) -> Value {
    Value::Text(key.to_owned())
}

fn int_key(key: i64) -> Value {
    Value::Integer(key.into())
}

fn as_i64(value: &Value) -> Option<i64> {
    value.as_integer().and_then(|i| i64::try_from(i).ok())
}

// ---------------------------------------------------------------------------------------
// Attestation object and statement
// ---------------------------------------------------------------------------------------

struct AttestationObject<'a> {
    fmt: &'a str,
    att_stmt: &'a Value,
    auth_data: &'a [u8],
}

/// Reads the attestation object's map: `fmt` text, `attStmt` any item (checked per
/// format later), `authData` bytes. Unknown keys are ignored; duplicates are not.
fn attestation_fields(value: &Value) -> Result<AttestationObject<'_>, WebauthnError> {
    let entries = cbor_map(value, "attestationObject")?;
    let Some(Value::Text(fmt)) = map_get(entries, &text_key("fmt")) else {
        return Err(E::Malformed("attestationObject (fmt)"));
    };
    let Some(Value::Bytes(auth_data)) = map_get(entries, &text_key("authData")) else {
        return Err(E::Malformed("attestationObject (authData)"));
    };
    let Some(att_stmt) = map_get(entries, &text_key("attStmt")) else {
        return Err(E::Malformed("attestationObject (attStmt)"));
    };
    Ok(AttestationObject {
        fmt,
        att_stmt,
        auth_data,
    })
}

/// Checks the attestation statement for its format (§8). Attestation is not a trust
/// input here; this only makes sure the statement is one of the two formats we expect
/// and that a self-attestation really is signed by the new credential.
fn verify_attestation_statement(
    fmt: &str,
    att_stmt: &Value,
    auth_data: &[u8],
    client_data_hash: &[u8; 32],
    key: &CoseKey,
) -> Result<(), WebauthnError> {
    match fmt {
        // §8.7: the statement is an empty map.
        "none" => match att_stmt {
            Value::Map(entries) if entries.is_empty() => Ok(()),
            _ => Err(E::BadAttestation(
                "\"none\" attestation with a non-empty statement",
            )),
        },
        // §8.2.
        "packed" => {
            let entries = cbor_map(att_stmt, "attStmt")?;
            let alg = map_get(entries, &text_key("alg"))
                .and_then(as_i64)
                .ok_or(E::BadAttestation("packed statement without an integer alg"))?;
            let Some(Value::Bytes(sig)) = map_get(entries, &text_key("sig")) else {
                return Err(E::BadAttestation("packed statement without a sig"));
            };
            if map_get(entries, &text_key("ecdaaKeyId")).is_some() {
                // ECDAA was removed in Level 2; nothing implements it.
                return Err(E::UnsupportedAttestation("packed (ECDAA)".to_owned()));
            }
            match map_get(entries, &text_key("x5c")) {
                // Full attestation: accepted for its shape only. We do not verify the
                // certificate chain (no trust store, and we asked for "none"), so nothing
                // from it may be trusted, including the AAGUID.
                Some(Value::Array(certs))
                    if !certs.is_empty() && certs.iter().all(|c| matches!(c, Value::Bytes(_))) =>
                {
                    Ok(())
                }
                Some(_) => Err(E::BadAttestation("packed statement with a malformed x5c")),
                // Self attestation: signed by the credential key itself, with its alg.
                None => {
                    if alg != key.alg() {
                        return Err(E::BadAttestation(
                            "self attestation uses a different algorithm than the credential",
                        ));
                    }
                    let signed = [auth_data, client_data_hash.as_slice()].concat();
                    key.verify(&signed, sig)
                }
            }
        }
        other => Err(E::UnsupportedAttestation(other.chars().take(32).collect())),
    }
}

// ---------------------------------------------------------------------------------------
// Authenticator data (§6.1)
// ---------------------------------------------------------------------------------------

struct AuthData<'a> {
    rp_id_hash: &'a [u8],
    flags: u8,
    sign_count: u32,
    attested: Option<AttestedCredential<'a>>,
}

struct AttestedCredential<'a> {
    aaguid: [u8; 16],
    credential_id: &'a [u8],
    /// Exactly the bytes of the COSE_Key CBOR item.
    public_key: &'a [u8],
}

const SHORT: E = E::Malformed("authenticatorData (truncated)");

fn parse_auth_data(data: &[u8]) -> Result<AuthData<'_>, WebauthnError> {
    if data.len() < AUTH_DATA_MIN_LEN {
        return Err(SHORT);
    }
    let (rp_id_hash, rest) = data.split_at_checked(32).ok_or(SHORT)?;
    let (&flags, rest) = rest.split_first().ok_or(SHORT)?;
    let (count, mut rest) = rest.split_first_chunk::<4>().ok_or(SHORT)?;
    let sign_count = u32::from_be_bytes(*count);

    let attested = if flags & FLAG_AT != 0 {
        let (aaguid, r) = rest.split_first_chunk::<16>().ok_or(SHORT)?;
        let (len, r) = r.split_first_chunk::<2>().ok_or(SHORT)?;
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 || len > MAX_CREDENTIAL_ID_LEN {
            return Err(E::Malformed("authenticatorData (credential ID length)"));
        }
        let (credential_id, r) = r.split_at_checked(len).ok_or(SHORT)?;
        // The COSE key has no length prefix: decode it to learn where it ends.
        let (_, used) = cbor_prefix(r, "credential public key")?;
        let (public_key, r) = r.split_at_checked(used).ok_or(SHORT)?;
        rest = r;
        Some(AttestedCredential {
            aaguid: *aaguid,
            credential_id,
            public_key,
        })
    } else {
        None
    };

    if flags & FLAG_ED != 0 {
        // Extension outputs: one CBOR map. We act on none of them, but they are part of
        // the structure and must be well-formed for the length accounting to hold.
        let (extensions, used) = cbor_prefix(rest, "authenticatorData (extensions)")?;
        if !matches!(extensions, Value::Map(_)) {
            return Err(E::Malformed("authenticatorData (extensions)"));
        }
        rest = rest.get(used..).ok_or(SHORT)?;
    }

    // Anything left is not described by the flags: the structure is not what it claims.
    if !rest.is_empty() {
        return Err(E::Malformed("authenticatorData (trailing bytes)"));
    }
    Ok(AuthData {
        rp_id_hash,
        flags,
        sign_count,
        attested,
    })
}

// ---------------------------------------------------------------------------------------
// COSE keys (RFC 9052/9053, RFC 8230) and signatures
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum CoseKey {
    /// Uncompressed SEC1 point 0x04 || x || y.
    Es256([u8; 65]),
    Ed25519([u8; 32]),
    /// Big-endian n and e without leading zeros (what ring requires).
    Rs256 {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

// COSE_Key labels and values.
const COSE_KTY: i64 = 1;
const COSE_ALG: i64 = 3;
const COSE_CRV: i64 = -1; // EC2/OKP curve; RSA n
const COSE_X: i64 = -2; // EC2/OKP x; RSA e
const COSE_Y: i64 = -3;
const KTY_OKP: i64 = 1;
const KTY_EC2: i64 = 2;
const KTY_RSA: i64 = 3;
const CRV_P256: i64 = 1;
const CRV_ED25519: i64 = 6;

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

fn parse_cose_key(bytes: &[u8]) -> Result<CoseKey, WebauthnError> {
    let value = cbor_exact(bytes, "credential public key")?;
    let entries = cbor_map(&value, "credential public key")?;
    let int_param = |label: i64| map_get(entries, &int_key(label)).and_then(as_i64);
    let bytes_param = |label: i64| match map_get(entries, &int_key(label)) {
        Some(Value::Bytes(b)) => Some(b.as_slice()),
        _ => None,
    };

    let kty = int_param(COSE_KTY).ok_or(E::InvalidPublicKey("missing key type"))?;
    // §6.5.1.1: the credential public key MUST carry its alg.
    let alg = int_param(COSE_ALG).ok_or(E::InvalidPublicKey("missing algorithm"))?;
    let expected_kty = match alg {
        COSE_ALG_ES256 => KTY_EC2,
        COSE_ALG_EDDSA => KTY_OKP,
        COSE_ALG_RS256 => KTY_RSA,
        other => return Err(E::UnsupportedAlgorithm(other)),
    };
    // A key's type must fit its algorithm, or we would be choosing how to read the key
    // from one field and how to use it from another.
    if kty != expected_kty {
        return Err(E::InvalidPublicKey("key type does not match its algorithm"));
    }

    match alg {
        COSE_ALG_ES256 => {
            if int_param(COSE_CRV) != Some(CRV_P256) {
                return Err(E::InvalidPublicKey("ES256 key not on curve P-256"));
            }
            // y must be the 32-byte coordinate; a boolean y (compressed point) is not
            // allowed by WebAuthn and ring would not take it anyway.
            let x: &[u8; 32] = bytes_param(COSE_X)
                .and_then(|x| x.try_into().ok())
                .ok_or(E::InvalidPublicKey("P-256 x coordinate"))?;
            let y: &[u8; 32] = bytes_param(COSE_Y)
                .and_then(|y| y.try_into().ok())
                .ok_or(E::InvalidPublicKey("P-256 y coordinate"))?;
            let mut point = [0u8; 65];
            point[0] = 0x04;
            point[1..33].copy_from_slice(x);
            point[33..].copy_from_slice(y);
            Ok(CoseKey::Es256(point))
        }
        COSE_ALG_EDDSA => {
            if int_param(COSE_CRV) != Some(CRV_ED25519) {
                return Err(E::InvalidPublicKey("EdDSA key not on curve Ed25519"));
            }
            let x: [u8; 32] = bytes_param(COSE_X)
                .and_then(|x| x.try_into().ok())
                .ok_or(E::InvalidPublicKey("Ed25519 public key"))?;
            Ok(CoseKey::Ed25519(x))
        }
        _ => {
            // RSA: label -1 is n, -2 is e (RFC 8230 §4). Leading zero bytes carry no
            // value and ring refuses them, so strip them.
            let n = strip_leading_zeros(
                bytes_param(COSE_CRV).ok_or(E::InvalidPublicKey("RSA modulus"))?,
            );
            let e = strip_leading_zeros(
                bytes_param(COSE_X).ok_or(E::InvalidPublicKey("RSA exponent"))?,
            );
            // ring's RSA_PKCS1_2048_8192_SHA256 takes 2048..=8192-bit moduli; checking
            // here rejects a useless key at registration instead of at every sign-in.
            let bits = match n.first() {
                // n has no leading zero byte, so only the top byte has leading zero bits.
                Some(&top) => n
                    .len()
                    .saturating_mul(8)
                    .saturating_sub(top.leading_zeros() as usize),
                None => 0,
            };
            if !(2048..=8192).contains(&bits) {
                return Err(E::InvalidPublicKey("RSA modulus must be 2048 to 8192 bits"));
            }
            if e.is_empty() || e.len() > 4 || e.last().is_some_and(|last| last & 1 == 0) {
                return Err(E::InvalidPublicKey("RSA exponent"));
            }
            Ok(CoseKey::Rs256 {
                n: n.to_vec(),
                e: e.to_vec(),
            })
        }
    }
}

impl CoseKey {
    fn alg(&self) -> i64 {
        match self {
            CoseKey::Es256(_) => COSE_ALG_ES256,
            CoseKey::Ed25519(_) => COSE_ALG_EDDSA,
            CoseKey::Rs256 { .. } => COSE_ALG_RS256,
        }
    }

    /// WebAuthn signatures: ES256 is ASN.1 DER (§6.5.6), EdDSA raw, RS256 PKCS#1 v1.5.
    /// ring also validates the key (P-256 point on the curve, RSA modulus) here.
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), WebauthnError> {
        let verified = match self {
            CoseKey::Es256(point) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point).verify(message, signature)
            }
            CoseKey::Ed25519(x) => UnparsedPublicKey::new(&ED25519, x).verify(message, signature),
            CoseKey::Rs256 { n, e } => RsaPublicKeyComponents { n, e }.verify(
                &RSA_PKCS1_2048_8192_SHA256,
                message,
                signature,
            ),
        };
        verified.map_err(|_| E::BadSignature)
    }
}

// ---------------------------------------------------------------------------------------
// Tests: a software authenticator that builds real responses
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING,
        RSA_PKCS1_SHA256,
    };
    use serde_json::json;

    fn rp() -> RelyingParty {
        RelyingParty {
            id: "localhost".to_owned(),
            origin: "http://localhost:8080".to_owned(),
            name: "idledger".to_owned(),
        }
    }

    fn enc(bytes: &[u8]) -> String {
        B64URL.encode(bytes)
    }

    fn cbor(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).expect("CBOR encodes");
        out
    }

    fn imap(entries: Vec<(i64, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (int_key(k), v)).collect())
    }

    fn tmap(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (text_key(k), v)).collect())
    }

    /// A 2048-bit RSA key generated with `openssl genpkey` for these tests only (ring
    /// cannot generate RSA keys). PKCS#8 DER, base64 (standard alphabet).
    const RSA_TEST_PKCS8: &str = concat!(
        "MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCKYXMqQ40aofUTSXB7+KQtOZIV",
        "gbZwTAvbwi5e6k7jI3hxSICNw1B/nre8A5H+j7jlnoIJhMlNG7KnT02EoIw/axIecBTKsf6mh25Q",
        "HKSANyEJ5FYLNdSscABbUcWQ9d2PYhAkiuX7OaXHMbAoOxOSNXvU4VZ4O+l/YnVlHfgOQRAPshWi",
        "9d5FGKg9UO2Gm6Gz8cFHWHFTgdRtjey2Z5cwvRMkdn2XelCvasTopuTZxLvgrIO+iWJi/RWMKGsz",
        "td8sgk4oT3LhJysyGQ/hH3H7CXotOYWkXZzYo06IW7ROiNn/qUC5VPpsvwtV1pKX8iptJfawKtnr",
        "PuADtGKN11MxAgMBAAECggEAARUHAgcaNOGcWYTDAO0uV34yQsHLa/BkTVkk5LAfYs5VtEkVXEZx",
        "PDZBCJLckumL0Bvft3RW4Kf9SyqnGAjrX9mWAC/vMbCXpbS8a5r1vFzyALJM6/SFT73metBWY65Q",
        "h70EFE0TxFWskrS0RHRF0GhjqgQDGZiaWFksQtirpmzf4bIJqEG9CrIo6z5MtI1PU2q/FhqKRXhb",
        "91VJvOKMb2mG1gTIzaG1u3YJa94lujL3qrluMrENyBHWcAhr5SuvM6+5OzpVktFQEWxzNC9NBnvU",
        "7LvMjfXOt9lGKUZYJgGI59LDGs5b5KJgYUbNxW48fauCk9QGJmKKzPwSaFeTuQKBgQDDE0mNf7yp",
        "+r4WYpPoxXodYaaXTCK29yHC4DITAV64Wmia1GraSAka1srZI0GwLea7JxM5jKQ5sXPgxj3IrQT8",
        "nEvY2jBjnjJH6f0CJbaTRzQChvKdicJoDmvUcOqroBoWumZH4jf9BhJEaDB9z9p5Vph8RVv4ARf9",
        "QKTINk9UbQKBgQC1mUuiNwGb+NUkgncczhxVQQY6yjHLVtC9ibw4hy+sKATsbTTvxxGfKGmIanMl",
        "A28tldXFA5CBS5NxR1xPT7Rx/OTUPJsJsOf1JWJr0qJ1abpKKUmCks7RDyc84H4PP/LtjNub5Z4D",
        "pfpxr14gpx75UH7eZoL3sFy9iO5wbQSXVQKBgEaIYr/Wv9B16OUPH4u6WzzkYeeyj5q4IGzlwzU7",
        "+ZOOnOPeigQCp8gcgZuhM88Pya1Bo6HbSEXT86ICC7TTWko7+PCfc3+RY3y9Dc4I9MqrpBKF2JM9",
        "jB0zmalmanNDoCs3mmPDV5sU5uX1BhN3Y/cbaGcGbQpu2s2m4e3CNUzBAoGAKi9KGoycmxbarHiC",
        "IvbeLg/E2rNNjebE5sKwLpF4yY0iV6mmumyL82T33vCbfuWlVfmQhwuk7eQYhCAHmYTybehJX+QU",
        "P9QQjin5CwMLKis9Uyz0Hpjr4jSa8NFVd0VrsTMfcL+OTVqpKu+J9hvcXh4M2q0Fj3QwlvbQLN2m",
        "S2ECgYAHYAyVG4Lhp067vPX45KzLqFm0q5xlhQF5liPqoSvygbgJlpFHT6Eyo8F7dvPK8glpVWW5",
        "WRQss7joqs8nlrE95FNtxr2MrFzl4jrJxIrfHBLU2s2Xj+2GjK/NXvuA3NAPYg5BvLrPL2aExqCj",
        "Xq08K4apDpV0HdtD83jigEC/9A==",
    );

    enum Key {
        Es256(EcdsaKeyPair),
        Ed25519(Ed25519KeyPair),
        Rs256(RsaKeyPair),
    }

    /// A software authenticator: one credential, real signatures.
    struct SoftAuthenticator {
        key: Key,
        cred_id: Vec<u8>,
        aaguid: [u8; 16],
        rng: SystemRandom,
    }

    /// Knobs for one response; `Default` is a valid one for `rp()`.
    struct Knobs {
        rp_id: String,
        origin: String,
        kind: String,
        challenge: Vec<u8>,
        cross_origin: Option<bool>,
        flags: u8,
        count: u32,
        fmt: &'static str,
        /// Replaces the built attStmt.
        att_stmt: Option<Value>,
        /// Appended as authData extensions (sets ED).
        extensions: Option<Value>,
        /// Replaces the credential's COSE key in authData.
        cose_key: Option<Vec<u8>>,
    }

    impl Knobs {
        fn new(challenge: &[u8; 32]) -> Self {
            Knobs {
                rp_id: rp().id,
                origin: rp().origin,
                kind: String::new(),
                challenge: challenge.to_vec(),
                cross_origin: None,
                flags: FLAG_UP | FLAG_UV,
                count: 0,
                fmt: "none",
                att_stmt: None,
                extensions: None,
                cose_key: None,
            }
        }
    }

    impl SoftAuthenticator {
        fn es256() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .expect("generate P-256");
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .expect("load P-256");
            Self::with(Key::Es256(key), rng)
        }

        fn eddsa() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate Ed25519");
            let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("load Ed25519");
            Self::with(Key::Ed25519(key), rng)
        }

        fn rs256() -> Self {
            let der = base64::engine::general_purpose::STANDARD
                .decode(RSA_TEST_PKCS8)
                .expect("test key base64");
            let key = RsaKeyPair::from_pkcs8(&der).expect("load RSA");
            Self::with(Key::Rs256(key), SystemRandom::new())
        }

        fn with(key: Key, rng: SystemRandom) -> Self {
            let mut cred_id = vec![0u8; 32];
            OsRng.fill_bytes(&mut cred_id);
            SoftAuthenticator {
                key,
                cred_id,
                aaguid: *b"idledger-softkey",
                rng,
            }
        }

        fn alg(&self) -> i64 {
            match self.key {
                Key::Es256(_) => COSE_ALG_ES256,
                Key::Ed25519(_) => COSE_ALG_EDDSA,
                Key::Rs256(_) => COSE_ALG_RS256,
            }
        }

        fn cose_key(&self) -> Vec<u8> {
            let value = match &self.key {
                Key::Es256(k) => {
                    let point = k.public_key().as_ref();
                    imap(vec![
                        (COSE_KTY, KTY_EC2.into()),
                        (COSE_ALG, COSE_ALG_ES256.into()),
                        (COSE_CRV, CRV_P256.into()),
                        (COSE_X, point[1..33].to_vec().into()),
                        (COSE_Y, point[33..65].to_vec().into()),
                    ])
                }
                Key::Ed25519(k) => imap(vec![
                    (COSE_KTY, KTY_OKP.into()),
                    (COSE_ALG, COSE_ALG_EDDSA.into()),
                    (COSE_CRV, CRV_ED25519.into()),
                    (COSE_X, k.public_key().as_ref().to_vec().into()),
                ]),
                Key::Rs256(k) => {
                    let parts: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
                    imap(vec![
                        (COSE_KTY, KTY_RSA.into()),
                        (COSE_ALG, COSE_ALG_RS256.into()),
                        (COSE_CRV, parts.n.into()),
                        (COSE_X, parts.e.into()),
                    ])
                }
            };
            cbor(&value)
        }

        fn sign(&self, message: &[u8]) -> Vec<u8> {
            match &self.key {
                Key::Es256(k) => k.sign(&self.rng, message).expect("sign").as_ref().to_vec(),
                Key::Ed25519(k) => k.sign(message).as_ref().to_vec(),
                Key::Rs256(k) => {
                    let mut sig = vec![0u8; k.public().modulus_len()];
                    k.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
                        .expect("sign");
                    sig
                }
            }
        }

        fn auth_data(&self, knobs: &Knobs, attested: bool) -> Vec<u8> {
            let mut flags = knobs.flags;
            let mut out = Sha256::digest(knobs.rp_id.as_bytes()).to_vec();
            if attested {
                flags |= FLAG_AT;
            }
            if knobs.extensions.is_some() {
                flags |= FLAG_ED;
            }
            out.push(flags);
            out.extend_from_slice(&knobs.count.to_be_bytes());
            if attested {
                out.extend_from_slice(&self.aaguid);
                let len = u16::try_from(self.cred_id.len()).expect("id length");
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&self.cred_id);
                out.extend_from_slice(&knobs.cose_key.clone().unwrap_or_else(|| self.cose_key()));
            }
            if let Some(ext) = &knobs.extensions {
                out.extend_from_slice(&cbor(ext));
            }
            out
        }

        fn client_data(&self, knobs: &Knobs, default_kind: &str) -> Vec<u8> {
            let kind = if knobs.kind.is_empty() {
                default_kind
            } else {
                &knobs.kind
            };
            let mut cd = json!({
                "type": kind,
                "challenge": enc(&knobs.challenge),
                "origin": knobs.origin,
            });
            if let Some(cross) = knobs.cross_origin {
                cd["crossOrigin"] = json!(cross);
            }
            serde_json::to_vec(&cd).expect("JSON")
        }

        /// Builds the attestation object's parts.
        fn attestation_object(&self, knobs: &Knobs, client_data: &[u8]) -> Vec<u8> {
            let auth_data = self.auth_data(knobs, true);
            let att_stmt = knobs.att_stmt.clone().unwrap_or_else(|| match knobs.fmt {
                "packed" => {
                    let mut signed = auth_data.clone();
                    signed.extend_from_slice(&Sha256::digest(client_data));
                    tmap(vec![
                        ("alg", self.alg().into()),
                        ("sig", self.sign(&signed).into()),
                    ])
                }
                _ => Value::Map(vec![]),
            });
            cbor(&tmap(vec![
                ("fmt", knobs.fmt.into()),
                ("attStmt", att_stmt),
                ("authData", auth_data.into()),
            ]))
        }

        fn register(&self, knobs: &Knobs) -> RegistrationResponse {
            let client_data = self.client_data(knobs, "webauthn.create");
            let attestation_object = self.attestation_object(knobs, &client_data);
            registration_json(&self.cred_id, &client_data, &attestation_object)
        }

        fn assert(&self, knobs: &Knobs) -> AssertionResponse {
            let client_data = self.client_data(knobs, "webauthn.get");
            let auth_data = self.auth_data(knobs, false);
            let mut signed = auth_data.clone();
            signed.extend_from_slice(&Sha256::digest(&client_data));
            let signature = self.sign(&signed);
            assertion_json(&self.cred_id, &client_data, &auth_data, &signature)
        }
    }

    fn registration_json(
        id: &[u8],
        client_data: &[u8],
        attestation_object: &[u8],
    ) -> RegistrationResponse {
        serde_json::from_value(json!({
            "id": enc(id),
            "rawId": enc(id),
            "type": "public-key",
            "response": {
                "clientDataJSON": enc(client_data),
                "attestationObject": enc(attestation_object),
                "transports": ["internal", "hybrid"],
            },
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {"credProps": {"rk": true}},
        }))
        .expect("registration JSON")
    }

    fn assertion_json(
        id: &[u8],
        client_data: &[u8],
        auth_data: &[u8],
        signature: &[u8],
    ) -> AssertionResponse {
        serde_json::from_value(json!({
            "id": enc(id),
            "rawId": enc(id),
            "type": "public-key",
            "response": {
                "clientDataJSON": enc(client_data),
                "authenticatorData": enc(auth_data),
                "signature": enc(signature),
                "userHandle": enc(b"user-1"),
            },
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {},
        }))
        .expect("assertion JSON")
    }

    /// Registers `auth` with default knobs and returns the stored credential.
    fn registered(auth: &SoftAuthenticator) -> NewCredential {
        let challenge = new_challenge();
        verify_registration(&rp(), &challenge, &auth.register(&Knobs::new(&challenge)))
            .expect("registration verifies")
    }

    fn try_register(
        auth: &SoftAuthenticator,
        tweak: impl FnOnce(&mut Knobs),
    ) -> Result<NewCredential, E> {
        let challenge = new_challenge();
        let mut knobs = Knobs::new(&challenge);
        tweak(&mut knobs);
        verify_registration(&rp(), &challenge, &auth.register(&knobs))
    }

    fn try_assert(
        auth: &SoftAuthenticator,
        cred: &NewCredential,
        stored_count: u32,
        tweak: impl FnOnce(&mut Knobs),
    ) -> Result<VerifiedAssertion, E> {
        let challenge = new_challenge();
        let mut knobs = Knobs::new(&challenge);
        knobs.count = stored_count + 1;
        tweak(&mut knobs);
        verify_assertion(
            &rp(),
            &challenge,
            &cred.id,
            &cred.public_key,
            stored_count,
            &auth.assert(&knobs),
        )
    }

    fn round_trip(auth: &SoftAuthenticator, fmt: &'static str) {
        let challenge = new_challenge();
        let mut knobs = Knobs::new(&challenge);
        knobs.fmt = fmt;
        knobs.count = 5;
        knobs.flags |= FLAG_BE | FLAG_BS;
        let cred =
            verify_registration(&rp(), &challenge, &auth.register(&knobs)).expect("registers");
        assert_eq!(cred.id, auth.cred_id);
        assert_eq!(cred.public_key, auth.cose_key());
        assert_eq!(cred.algorithm, auth.alg());
        assert_eq!(cred.sign_count, 5);
        assert_eq!(cred.aaguid, auth.aaguid);
        assert!(cred.user_verified && cred.backup_eligible);
        assert_eq!(cred.attachment, Some(Attachment::Platform));

        let challenge = new_challenge();
        let mut knobs = Knobs::new(&challenge);
        knobs.count = 6;
        knobs.flags |= FLAG_BE | FLAG_BS;
        let response = auth.assert(&knobs);
        assert_eq!(response.credential_id(), Ok(auth.cred_id.clone()));
        assert_eq!(response.user_handle(), Ok(Some(b"user-1".to_vec())));
        assert_eq!(response.attachment(), Some(Attachment::CrossPlatform));
        let verified =
            verify_assertion(&rp(), &challenge, &cred.id, &cred.public_key, 5, &response)
                .expect("assertion verifies");
        assert_eq!(
            verified,
            VerifiedAssertion {
                sign_count: 6,
                user_verified: true,
                backup_state: true,
                backup_eligible: true,
            }
        );
    }

    #[test]
    fn es256_round_trip_none_and_packed() {
        round_trip(&SoftAuthenticator::es256(), "none");
        round_trip(&SoftAuthenticator::es256(), "packed");
    }

    #[test]
    fn eddsa_round_trip_none_and_packed() {
        round_trip(&SoftAuthenticator::eddsa(), "none");
        round_trip(&SoftAuthenticator::eddsa(), "packed");
    }

    #[test]
    fn rs256_round_trip_none_and_packed() {
        round_trip(&SoftAuthenticator::rs256(), "none");
        round_trip(&SoftAuthenticator::rs256(), "packed");
    }

    #[test]
    fn rs256_cose_key_parses_to_components() {
        let auth = SoftAuthenticator::rs256();
        let CoseKey::Rs256 { n, e } = parse_cose_key(&auth.cose_key()).expect("parses") else {
            panic!("not RSA");
        };
        assert_eq!(n.len(), 256);
        assert_eq!(e, vec![1, 0, 1]);
        // A leading zero on n (as some encoders emit) is tolerated and stripped.
        let mut padded = vec![0u8];
        padded.extend_from_slice(&n);
        let key = cbor(&imap(vec![
            (COSE_KTY, KTY_RSA.into()),
            (COSE_ALG, COSE_ALG_RS256.into()),
            (COSE_CRV, padded.into()),
            (COSE_X, vec![1u8, 0, 1].into()),
        ]));
        assert_eq!(
            parse_cose_key(&key),
            Ok(CoseKey::Rs256 {
                n: n.clone(),
                e: vec![1, 0, 1]
            })
        );
        // A 1024-bit modulus is refused up front.
        let small = cbor(&imap(vec![
            (COSE_KTY, KTY_RSA.into()),
            (COSE_ALG, COSE_ALG_RS256.into()),
            (COSE_CRV, n[..128].to_vec().into()),
            (COSE_X, vec![1u8, 0, 1].into()),
        ]));
        assert!(matches!(
            parse_cose_key(&small),
            Err(E::InvalidPublicKey(_))
        ));
    }

    #[test]
    fn options_json_shape() {
        let challenge = [7u8; 32];
        let creation = creation_options(
            &rp(),
            &challenge,
            b"user-1",
            "ada",
            "Ada L.",
            &[vec![1, 2, 3]],
            true,
        );
        let json = serde_json::to_value(&creation).expect("JSON");
        assert_eq!(
            json,
            json!({
                "rp": {"id": "localhost", "name": "idledger"},
                "user": {"id": enc(b"user-1"), "name": "ada", "displayName": "Ada L."},
                "challenge": enc(&challenge),
                "pubKeyCredParams": [
                    {"type": "public-key", "alg": -7},
                    {"type": "public-key", "alg": -8},
                    {"type": "public-key", "alg": -257},
                ],
                "timeout": 60000,
                "attestation": "none",
                "authenticatorSelection": {
                    "residentKey": "required",
                    "requireResidentKey": true,
                    "userVerification": "required",
                },
                "excludeCredentials": [{"type": "public-key", "id": "AQID"}],
            })
        );
        let creation = creation_options(&rp(), &challenge, b"u", "a", "A", &[], false);
        assert_eq!(creation.authenticator_selection.resident_key, "preferred");
        assert!(!creation.authenticator_selection.require_resident_key);

        let request = serde_json::to_value(request_options(&rp(), &challenge, &[])).expect("JSON");
        assert_eq!(
            request,
            json!({
                "challenge": enc(&challenge),
                "timeout": 60000,
                "rpId": "localhost",
                "allowCredentials": [],
                "userVerification": "required",
            })
        );
        assert_ne!(new_challenge(), new_challenge());
    }

    #[test]
    fn registration_rejections() {
        let auth = SoftAuthenticator::es256();
        assert_eq!(
            try_register(&auth, |k| k.challenge = vec![0; 32]),
            Err(E::ChallengeMismatch)
        );
        assert_eq!(
            try_register(&auth, |k| k.origin = "http://localhost:8081".into()),
            Err(E::OriginMismatch)
        );
        assert_eq!(
            try_register(&auth, |k| k.origin = "http://localhost:8080/".into()),
            Err(E::OriginMismatch)
        );
        assert_eq!(
            try_register(&auth, |k| k.rp_id = "evil.example".into()),
            Err(E::RpIdMismatch)
        );
        assert_eq!(
            try_register(&auth, |k| k.flags = FLAG_UV),
            Err(E::UserNotPresent)
        );
        assert_eq!(
            try_register(&auth, |k| k.flags = FLAG_UP),
            Err(E::UserNotVerified)
        );
        assert_eq!(
            try_register(&auth, |k| k.kind = "webauthn.get".into()),
            Err(E::WrongType)
        );
        assert_eq!(
            try_register(&auth, |k| k.cross_origin = Some(true)),
            Err(E::CrossOrigin)
        );
        assert!(try_register(&auth, |k| k.cross_origin = Some(false)).is_ok());
        assert!(matches!(
            try_register(&auth, |k| k.flags |= FLAG_BS),
            Err(E::Malformed(_))
        ));
        assert_eq!(
            try_register(&auth, |k| k.fmt = "tpm"),
            Err(E::UnsupportedAttestation("tpm".into()))
        );
        assert_eq!(
            try_register(&auth, |k| k.fmt = "fido-u2f"),
            Err(E::UnsupportedAttestation("fido-u2f".into()))
        );
        // "none" must carry an empty statement.
        assert!(matches!(
            try_register(&auth, |k| k.att_stmt =
                Some(tmap(vec![("alg", (-7).into())]))),
            Err(E::BadAttestation(_))
        ));
    }

    #[test]
    fn packed_attestation_checks() {
        let auth = SoftAuthenticator::es256();
        // Self attestation with a different alg than the credential's.
        let wrong_alg = try_register(&auth, |k| {
            k.fmt = "packed";
            k.att_stmt = Some(tmap(vec![
                ("alg", (-8).into()),
                ("sig", vec![1u8; 64].into()),
            ]));
        });
        assert!(matches!(wrong_alg, Err(E::BadAttestation(_))));
        // Self attestation whose signature does not verify.
        let bad_sig = try_register(&auth, |k| {
            k.fmt = "packed";
            k.att_stmt = Some(tmap(vec![
                ("alg", (-7).into()),
                ("sig", vec![0x30u8, 0].into()),
            ]));
        });
        assert_eq!(bad_sig, Err(E::BadSignature));
        // Missing sig.
        let no_sig = try_register(&auth, |k| {
            k.fmt = "packed";
            k.att_stmt = Some(tmap(vec![("alg", (-7).into())]));
        });
        assert!(matches!(no_sig, Err(E::BadAttestation(_))));
        // Full attestation: accepted without certificate verification (documented).
        let full = try_register(&auth, |k| {
            k.fmt = "packed";
            k.att_stmt = Some(tmap(vec![
                ("alg", (-7).into()),
                ("sig", vec![0u8; 70].into()),
                ("x5c", Value::Array(vec![vec![0x30u8, 0x82].into()])),
            ]));
        });
        assert!(full.is_ok());
        let bad_x5c = try_register(&auth, |k| {
            k.fmt = "packed";
            k.att_stmt = Some(tmap(vec![
                ("alg", (-7).into()),
                ("sig", vec![0u8; 70].into()),
                ("x5c", Value::Array(vec![])),
            ]));
        });
        assert!(matches!(bad_x5c, Err(E::BadAttestation(_))));
        // Duplicate keys in attStmt.
        let dup = try_register(&auth, |k| {
            k.fmt = "packed";
            k.att_stmt = Some(tmap(vec![
                ("alg", (-7).into()),
                ("alg", (-8).into()),
                ("sig", vec![0u8; 70].into()),
            ]));
        });
        assert!(matches!(dup, Err(E::Malformed(_))));
    }

    #[test]
    fn registration_with_extensions_measures_the_cose_key() {
        let auth = SoftAuthenticator::eddsa();
        for fmt in ["none", "packed"] {
            let cred = try_register(&auth, |k| {
                k.fmt = fmt;
                k.extensions = Some(tmap(vec![("credProtect", 2.into())]));
            })
            .expect("registers with extensions");
            assert_eq!(cred.public_key, auth.cose_key());
        }
        // An extension block that is not a map.
        assert!(matches!(
            try_register(&auth, |k| k.extensions = Some(Value::Integer(3.into()))),
            Err(E::Malformed(_))
        ));
    }

    #[test]
    fn cose_key_mismatches_are_rejected() {
        let auth = SoftAuthenticator::es256();
        let point = match &auth.key {
            Key::Es256(k) => k.public_key().as_ref().to_vec(),
            _ => unreachable!(),
        };
        let ec = |kty: i64, alg: i64, crv: i64| {
            cbor(&imap(vec![
                (COSE_KTY, kty.into()),
                (COSE_ALG, alg.into()),
                (COSE_CRV, crv.into()),
                (COSE_X, point[1..33].to_vec().into()),
                (COSE_Y, point[33..].to_vec().into()),
            ]))
        };
        let reg = |key: Vec<u8>| try_register(&auth, |k| k.cose_key = Some(key));
        // alg ES256 with kty OKP / RSA.
        assert!(matches!(
            reg(ec(KTY_OKP, COSE_ALG_ES256, CRV_P256)),
            Err(E::InvalidPublicKey(_))
        ));
        assert!(matches!(
            reg(ec(KTY_RSA, COSE_ALG_ES256, CRV_P256)),
            Err(E::InvalidPublicKey(_))
        ));
        // EC2 key labelled EdDSA.
        assert!(matches!(
            reg(ec(KTY_EC2, COSE_ALG_EDDSA, CRV_P256)),
            Err(E::InvalidPublicKey(_))
        ));
        // P-384 curve with ES256.
        assert!(matches!(
            reg(ec(KTY_EC2, COSE_ALG_ES256, 2)),
            Err(E::InvalidPublicKey(_))
        ));
        // ES384 and ES256K are not offered.
        assert_eq!(reg(ec(KTY_EC2, -35, 2)), Err(E::UnsupportedAlgorithm(-35)));
        assert_eq!(reg(ec(KTY_EC2, -47, 8)), Err(E::UnsupportedAlgorithm(-47)));
        // Missing alg.
        let no_alg = cbor(&imap(vec![
            (COSE_KTY, KTY_EC2.into()),
            (COSE_CRV, CRV_P256.into()),
            (COSE_X, point[1..33].to_vec().into()),
            (COSE_Y, point[33..].to_vec().into()),
        ]));
        assert!(matches!(reg(no_alg), Err(E::InvalidPublicKey(_))));
        // Compressed point (y as a bool) and short x.
        let compressed = cbor(&imap(vec![
            (COSE_KTY, KTY_EC2.into()),
            (COSE_ALG, COSE_ALG_ES256.into()),
            (COSE_CRV, CRV_P256.into()),
            (COSE_X, point[1..33].to_vec().into()),
            (COSE_Y, Value::Bool(true)),
        ]));
        assert!(matches!(reg(compressed), Err(E::InvalidPublicKey(_))));
        // Duplicate kty label.
        let dup = cbor(&imap(vec![
            (COSE_KTY, KTY_EC2.into()),
            (COSE_KTY, KTY_OKP.into()),
            (COSE_ALG, COSE_ALG_ES256.into()),
            (COSE_CRV, CRV_P256.into()),
            (COSE_X, point[1..33].to_vec().into()),
            (COSE_Y, point[33..].to_vec().into()),
        ]));
        assert!(matches!(reg(dup), Err(E::Malformed(_))));
        // A stored key with trailing bytes is refused at sign-in.
        let cred = registered(&auth);
        let mut trailing = cred.public_key.clone();
        trailing.push(0);
        let challenge = new_challenge();
        let mut knobs = Knobs::new(&challenge);
        knobs.count = 1;
        assert!(matches!(
            verify_assertion(
                &rp(),
                &challenge,
                &cred.id,
                &trailing,
                0,
                &auth.assert(&knobs)
            ),
            Err(E::Malformed(_))
        ));
    }

    #[test]
    fn assertion_rejections() {
        let auth = SoftAuthenticator::es256();
        let cred = registered(&auth);
        assert!(try_assert(&auth, &cred, 3, |_| {}).is_ok());
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.challenge = vec![1; 32]),
            Err(E::ChallengeMismatch)
        );
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.origin =
                "https://localhost:8080".into()),
            Err(E::OriginMismatch)
        );
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.rp_id = "localhos".into()),
            Err(E::RpIdMismatch)
        );
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.flags = FLAG_UV),
            Err(E::UserNotPresent)
        );
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.flags = FLAG_UP),
            Err(E::UserNotVerified)
        );
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.kind = "webauthn.create".into()),
            Err(E::WrongType)
        );
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.cross_origin = Some(true)),
            Err(E::CrossOrigin)
        );
        assert!(matches!(
            try_assert(&auth, &cred, 3, |k| k.flags |= FLAG_BS),
            Err(E::Malformed(_))
        ));
        // Counter: equal or lower is a possible clone; 0/0 is a synced passkey.
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.count = 3),
            Err(E::CounterWentBack { stored: 3, got: 3 })
        );
        assert_eq!(
            try_assert(&auth, &cred, 3, |k| k.count = 0),
            Err(E::CounterWentBack { stored: 3, got: 0 })
        );
        assert_eq!(
            try_assert(&auth, &cred, 0, |k| k.count = 0).map(|v| v.sign_count),
            Ok(0)
        );
        assert_eq!(
            try_assert(&auth, &cred, 0, |k| k.count = 1).map(|v| v.sign_count),
            Ok(1)
        );

        // Wrong credential: another authenticator's response, or the wrong stored key.
        let other = SoftAuthenticator::es256();
        let challenge = new_challenge();
        let mut knobs = Knobs::new(&challenge);
        knobs.count = 1;
        let response = other.assert(&knobs);
        assert_eq!(
            verify_assertion(&rp(), &challenge, &cred.id, &cred.public_key, 0, &response),
            Err(E::CredentialMismatch)
        );
        assert_eq!(
            verify_assertion(
                &rp(),
                &challenge,
                &other.cred_id,
                &cred.public_key,
                0,
                &response
            ),
            Err(E::BadSignature)
        );
        // An EdDSA key stored for an ES256 signature.
        let ed = registered(&SoftAuthenticator::eddsa());
        assert_eq!(
            verify_assertion(
                &rp(),
                &challenge,
                &other.cred_id,
                &ed.public_key,
                0,
                &response
            ),
            Err(E::BadSignature)
        );
    }

    /// Builds an assertion and lets `tamper` change its binary parts after signing.
    fn tampered(
        auth: &SoftAuthenticator,
        cred: &NewCredential,
        tamper: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>, &mut Vec<u8>),
    ) -> Result<VerifiedAssertion, E> {
        let challenge = new_challenge();
        let mut knobs = Knobs::new(&challenge);
        knobs.count = 1;
        let mut client_data = auth.client_data(&knobs, "webauthn.get");
        let mut auth_data = auth.auth_data(&knobs, false);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let mut signature = auth.sign(&signed);
        tamper(&mut client_data, &mut auth_data, &mut signature);
        let response = assertion_json(&auth.cred_id, &client_data, &auth_data, &signature);
        verify_assertion(&rp(), &challenge, &cred.id, &cred.public_key, 0, &response)
    }

    #[test]
    fn tampering_is_detected() {
        for auth in [
            SoftAuthenticator::es256(),
            SoftAuthenticator::eddsa(),
            SoftAuthenticator::rs256(),
        ] {
            let cred = registered(&auth);
            assert!(tampered(&auth, &cred, |_, _, _| {}).is_ok());
            // Flip a signature bit.
            assert_eq!(
                tampered(&auth, &cred, |_, _, sig| {
                    let last = sig.len() - 1;
                    sig[last] ^= 1;
                }),
                Err(E::BadSignature)
            );
            // Raise the counter after signing.
            assert_eq!(
                tampered(&auth, &cred, |_, ad, _| ad[36] = 9),
                Err(E::BadSignature)
            );
            // Set the BE flag after signing.
            assert_eq!(
                tampered(&auth, &cred, |_, ad, _| ad[32] |= FLAG_BE),
                Err(E::BadSignature)
            );
            // Change clientDataJSON (still valid JSON, same challenge) after signing.
            assert_eq!(
                tampered(&auth, &cred, |cd, _, _| {
                    cd.pop();
                    cd.extend_from_slice(b",\"extra\":1}");
                }),
                Err(E::BadSignature)
            );
            // Empty signature.
            assert_eq!(
                tampered(&auth, &cred, |_, _, sig| sig.clear()),
                Err(E::BadSignature)
            );
            // Truncated / extended authData.
            assert!(matches!(
                tampered(&auth, &cred, |_, ad, _| ad.truncate(36)),
                Err(E::Malformed(_))
            ));
            assert!(matches!(
                tampered(&auth, &cred, |_, ad, _| ad.push(0)),
                Err(E::Malformed(_))
            ));
            // Attested credential data inside an assertion.
            assert!(matches!(
                tampered(&auth, &cred, |_, ad, _| ad[32] |= FLAG_AT),
                Err(E::Malformed(_))
            ));
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let auth = SoftAuthenticator::es256();
        let cred = registered(&auth);
        let challenge = new_challenge();
        let knobs = Knobs::new(&challenge);
        let client_data = auth.client_data(&knobs, "webauthn.create");
        let good_att = auth.attestation_object(&knobs, &client_data);

        let reg = |id: &str, cd: &str, att: &str| -> Result<NewCredential, E> {
            let response: RegistrationResponse = serde_json::from_value(json!({
                "id": id, "rawId": id, "type": "public-key",
                "response": {"clientDataJSON": cd, "attestationObject": att},
            }))
            .expect("JSON");
            verify_registration(&rp(), &challenge, &response)
        };
        let id = enc(&auth.cred_id);
        let cd = enc(&client_data);
        let att = enc(&good_att);
        assert!(reg(&id, &cd, &att).is_ok());
        for (i, c, a) in [
            ("!!", cd.as_str(), att.as_str()),                // bad base64 id
            (id.as_str(), "a+b/", att.as_str()),              // standard alphabet
            (id.as_str(), cd.as_str(), "@@@"),                // bad base64
            (id.as_str(), "e30", att.as_str()),               // "{}" is not client data
            (id.as_str(), &enc(b"not json"), att.as_str()),   // not JSON
            (id.as_str(), &enc(&[0xff, 0xfe]), att.as_str()), // not UTF-8
            (id.as_str(), cd.as_str(), &enc(&[0xff])),        // not CBOR
            (
                id.as_str(),
                cd.as_str(),
                &enc(&good_att[..good_att.len() - 1]),
            ), // truncated CBOR
            (
                id.as_str(),
                cd.as_str(),
                &enc(&[good_att.as_slice(), &[0]].concat()),
            ), // trailing byte
            (id.as_str(), cd.as_str(), &enc(&cbor(&Value::Array(vec![])))), // not a map
            (
                id.as_str(),
                cd.as_str(),
                &enc(&cbor(&tmap(vec![("fmt", "none".into())]))),
            ), // no authData
            ("", cd.as_str(), att.as_str()),                  // empty id
        ] {
            assert!(matches!(reg(i, c, a), Err(E::Malformed(_))), "{i} {c} {a}");
        }
        // Duplicate "origin" in clientDataJSON.
        let dup = format!(
            r#"{{"type":"webauthn.create","challenge":"{}","origin":"http://evil","origin":"{}"}}"#,
            enc(&challenge),
            rp().origin
        );
        assert!(matches!(
            reg(&id, &enc(dup.as_bytes()), &att),
            Err(E::Malformed(_))
        ));
        // Oversized field.
        let huge = "A".repeat(MAX_FIELD_LEN * 2);
        assert!(matches!(reg(&id, &cd, &huge), Err(E::Malformed(_))));
        // Deeply nested CBOR is cut off, not a stack overflow.
        let deep = [vec![0x81u8; 100_000], vec![0]].concat();
        assert!(matches!(reg(&id, &cd, &enc(&deep)), Err(E::Malformed(_))));
        // id and rawId disagree.
        let response: RegistrationResponse = serde_json::from_value(json!({
            "id": enc(b"x"), "rawId": id, "type": "public-key",
            "response": {"clientDataJSON": cd, "attestationObject": att},
        }))
        .expect("JSON");
        assert!(matches!(
            verify_registration(&rp(), &challenge, &response),
            Err(E::Malformed(_))
        ));
        // rawId differs from the credential ID in authData.
        assert_eq!(
            reg(&enc(b"another-id"), &cd, &att),
            Err(E::CredentialMismatch)
        );

        // Assertion side: bad userHandle and bad type.
        let bad_handle: AssertionResponse = serde_json::from_value(json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {"clientDataJSON": cd, "authenticatorData": "", "signature": "", "userHandle": "%%"},
        }))
        .expect("JSON");
        assert!(matches!(bad_handle.user_handle(), Err(E::Malformed(_))));
        assert!(matches!(
            verify_assertion(
                &rp(),
                &challenge,
                &cred.id,
                &cred.public_key,
                0,
                &bad_handle
            ),
            Err(E::Malformed(_))
        ));
        let no_handle: AssertionResponse = serde_json::from_value(json!({
            "id": id, "rawId": id, "type": "public-key", "authenticatorAttachment": null,
            "response": {"clientDataJSON": cd, "authenticatorData": "", "signature": "", "userHandle": null},
        }))
        .expect("JSON");
        assert_eq!(no_handle.user_handle(), Ok(None));
        assert_eq!(no_handle.attachment(), None);
        let wrong_type: AssertionResponse = serde_json::from_value(json!({
            "id": id, "rawId": id, "type": "password",
            "response": {"clientDataJSON": cd, "authenticatorData": "", "signature": ""},
        }))
        .expect("JSON");
        assert!(matches!(wrong_type.credential_id(), Err(E::Malformed(_))));
    }

    #[test]
    fn auth_data_parsing_edges() {
        let auth = SoftAuthenticator::es256();
        let challenge = new_challenge();
        let knobs = Knobs::new(&challenge);
        let good = auth.auth_data(&knobs, true);
        let parsed = parse_auth_data(&good).expect("parses");
        let attested = parsed.attested.expect("attested");
        assert_eq!(attested.credential_id, auth.cred_id.as_slice());
        assert_eq!(attested.public_key, auth.cose_key().as_slice());
        // Every truncation fails cleanly.
        for len in 0..good.len() {
            assert!(
                matches!(parse_auth_data(&good[..len]), Err(E::Malformed(_))),
                "len {len}"
            );
        }
        // Credential ID length 0 and 1024.
        for bad_len in [0u16, 1024] {
            let mut ad = good.clone();
            ad[53..55].copy_from_slice(&bad_len.to_be_bytes());
            assert!(matches!(parse_auth_data(&ad), Err(E::Malformed(_))));
        }
        // A 1023-byte credential ID is accepted end to end.
        let mut long = SoftAuthenticator::eddsa();
        long.cred_id = vec![0xab; 1023];
        assert!(try_register(&long, |_| {}).is_ok());
    }

    #[test]
    fn error_messages_hold_no_attacker_bytes() {
        let long = "x".repeat(1000) + "\n<script>";
        let err = verify_attestation_statement(
            &long,
            &Value::Map(vec![]),
            &[],
            &[0; 32],
            &CoseKey::Ed25519([0; 32]),
        )
        .expect_err("rejected");
        let message = err.to_string();
        assert!(message.len() < 100, "{message}");
        assert!(!message.contains('\n'));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..512)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn random_attestation_object_never_panics(bytes in any_bytes()) {
                let challenge = [0u8; 32];
                let client_data = serde_json::to_vec(&json!({
                    "type": "webauthn.create", "challenge": enc(&challenge), "origin": rp().origin,
                })).expect("JSON");
                let response = registration_json(b"id", &client_data, &bytes);
                prop_assert!(verify_registration(&rp(), &challenge, &response).is_err());
            }

            #[test]
            fn random_auth_data_never_panics(bytes in any_bytes(), sig in any_bytes()) {
                let _ = parse_auth_data(&bytes);
                let _ = parse_cose_key(&bytes);
                let challenge = [0u8; 32];
                let client_data = serde_json::to_vec(&json!({
                    "type": "webauthn.get", "challenge": enc(&challenge), "origin": rp().origin,
                })).expect("JSON");
                let key = SoftAuthenticator::eddsa().cose_key();
                let response = assertion_json(b"id", &client_data, &bytes, &sig);
                prop_assert!(verify_assertion(&rp(), &challenge, b"id", &key, 0, &response).is_err());
            }

            /// Mutations of a valid attestation object reach deeper than random bytes.
            #[test]
            fn mutated_attestation_object_never_panics(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let auth = SoftAuthenticator::eddsa();
                let challenge = [9u8; 32];
                let mut knobs = Knobs::new(&challenge);
                knobs.fmt = "packed";
                knobs.extensions = Some(tmap(vec![("credProtect", 2.into())]));
                let client_data = auth.client_data(&knobs, "webauthn.create");
                let mut att = auth.attestation_object(&knobs, &client_data);
                for (index, byte) in flips {
                    let i = index.index(att.len());
                    att[i] ^= byte;
                }
                if truncate {
                    att.truncate(cut.index(att.len()));
                }
                let response = registration_json(&auth.cred_id, &client_data, &att);
                let _ = verify_registration(&rp(), &challenge, &response);
            }
        }
    }
}

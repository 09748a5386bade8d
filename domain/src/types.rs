//! Value types shared by events, decisions and projections.

use crate::ids::{DataKeyId, DomainId, LinkId, TokenId, UserId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A SHA-256 digest. Hex in human-readable formats, raw bytes otherwise.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, pattern = "^[0-9a-f]{64}$")
)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash before the first record of the log.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Hash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
        } else {
            <[u8; 32]>::deserialize(d).map(Hash)
        }
    }
}

/// An API role.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read, replay and export.
    Auditor,
    /// A workstation agent: its own keys' writes only.
    Agent,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            "agent" => Ok(Role::Agent),
            other => Err(format!("role {other:?}: use admin, auditor or agent")),
        }
    }
}

impl Role {
    /// The role's name as used in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Agent => "agent",
        }
    }
}

/// Who caused an event. Shown as a short string in human-readable formats
/// (`system`, `operator`, `sync:<domain>`, `scheduler:<domain>`, `admin:<token>`,
/// `auditor:<token>`, `agent:<token>`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Actor {
    /// The engine itself (start-up recovery, housekeeping).
    System,
    /// A person at the CLI with access to the data dir (server stopped).
    Operator,
    /// The sync worker of a domain.
    Sync(DomainId),
    /// The rotation scheduler of a domain.
    Scheduler(DomainId),
    /// An API caller, by token and role.
    Token(TokenId, Role),
    /// A user acting for themselves: enrolling, signing in, managing their methods.
    User(UserId),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::System => f.write_str("system"),
            Actor::Operator => f.write_str("operator"),
            Actor::Sync(d) => write!(f, "sync:{d}"),
            Actor::Scheduler(d) => write!(f, "scheduler:{d}"),
            Actor::Token(t, r) => write!(f, "{}:{t}", r.as_str()),
            Actor::User(u) => write!(f, "user:{u}"),
        }
    }
}

impl std::str::FromStr for Actor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad actor {s:?}");
        Ok(match s.split_once(':') {
            None if s == "system" => Actor::System,
            None if s == "operator" => Actor::Operator,
            None => return Err(bad()),
            Some((kind, id)) => {
                let uuid = id.parse().map_err(|_| bad())?;
                match kind {
                    "sync" => Actor::Sync(DomainId(uuid)),
                    "scheduler" => Actor::Scheduler(DomainId(uuid)),
                    "admin" => Actor::Token(TokenId(uuid), Role::Admin),
                    "auditor" => Actor::Token(TokenId(uuid), Role::Auditor),
                    "agent" => Actor::Token(TokenId(uuid), Role::Agent),
                    "user" => Actor::User(UserId(uuid)),
                    _ => return Err(bad()),
                }
            }
        })
    }
}

/// The binary shape of [`Actor`]; its variant order is part of the stored format.
#[derive(Serialize, Deserialize)]
enum ActorRepr {
    System,
    Operator,
    Sync(DomainId),
    Scheduler(DomainId),
    Token(TokenId, Role),
    User(UserId),
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_str(self);
        }
        match self.clone() {
            Actor::System => ActorRepr::System,
            Actor::Operator => ActorRepr::Operator,
            Actor::Sync(d) => ActorRepr::Sync(d),
            Actor::Scheduler(d) => ActorRepr::Scheduler(d),
            Actor::Token(t, r) => ActorRepr::Token(t, r),
            Actor::User(u) => ActorRepr::User(u),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            return s.parse().map_err(serde::de::Error::custom);
        }
        Ok(match ActorRepr::deserialize(d)? {
            ActorRepr::System => Actor::System,
            ActorRepr::Operator => Actor::Operator,
            ActorRepr::Sync(d) => Actor::Sync(d),
            ActorRepr::Scheduler(d) => Actor::Scheduler(d),
            ActorRepr::Token(t, r) => Actor::Token(t, r),
            ActorRepr::User(u) => Actor::User(u),
        })
    }
}

/// What happens to a user who leaves the sync group or is deleted or disabled in Entra ID,
/// ordered from the mildest (the variants' order).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RemovalBehavior {
    /// The user stays active.
    Keep,
    /// SSO off, PC unlock kept; only an admin reactivates.
    #[default]
    Deactivate,
    /// The user is deleted and their data key shredded.
    Delete,
}

impl RemovalBehavior {
    /// The milder of two behaviours (keep, then deactivate, then delete): what a removal
    /// held under one and approved under another may do.
    pub fn milder(self, other: RemovalBehavior) -> RemovalBehavior {
        self.min(other)
    }
}

/// How a user signs in with SSO.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SsoMethod {
    /// Hardware key only.
    #[default]
    Passwordless,
    /// Password plus a second factor.
    PasswordAndSecondFactor,
}

/// SSO settings: a domain's defaults or a user's override.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SsoSettings {
    /// Whether SSO is on.
    pub enabled: bool,
    /// The sign-in method.
    pub method: SsoMethod,
}

/// A secret sealed with an AEAD under a data key. The stream name is the associated data.
///
/// In human-readable formats (JSON) it is always shown as the string `"sealed"`,
/// so no JSON view of an event can carry even the ciphertext.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SealedSecret {
    /// The data key that sealed it.
    pub key_id: DataKeyId,
    /// The AEAD nonce (XChaCha20-Poly1305: 24 bytes).
    pub nonce: [u8; 24],
    /// Ciphertext with the authentication tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret(key {}, sealed)", self.key_id)
    }
}

#[derive(Serialize, Deserialize)]
struct SealedRepr {
    key_id: DataKeyId,
    nonce: [u8; 24],
    ciphertext: Vec<u8>,
}

impl Serialize for SealedSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.serialize_str("sealed");
        }
        SealedRepr {
            key_id: self.key_id,
            nonce: self.nonce,
            ciphertext: self.ciphertext.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SealedSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return Err(serde::de::Error::custom(
                "a sealed secret cannot be read back from its human-readable form",
            ));
        }
        let r = SealedRepr::deserialize(d)?;
        Ok(SealedSecret {
            key_id: r.key_id,
            nonce: r.nonce,
            ciphertext: r.ciphertext,
        })
    }
}

/// The user attributes idledger keeps from Entra ID.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
pub struct UserAttributes {
    /// `userPrincipalName`.
    pub user_principal_name: String,
    /// `displayName`.
    pub display_name: String,
    /// `mail`.
    pub mail: Option<String>,
    /// `givenName`.
    pub given_name: Option<String>,
    /// `surname`.
    pub surname: Option<String>,
    /// `accountEnabled`.
    pub account_enabled: bool,
}

/// A group named by display name, optionally pinned to an object id.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GroupRef {
    /// The display name to resolve.
    pub display_name: String,
    /// A configured object id; wins over the display name.
    pub object_id: Option<String>,
}

impl GroupRef {
    /// A group known only by display name.
    pub fn named(name: &str) -> Self {
        GroupRef {
            display_name: name.to_owned(),
            object_id: None,
        }
    }
}

/// The default sync group name.
pub const DEFAULT_SYNC_GROUP: &str = "Hideez Users Sync";
/// The default rotation group name.
pub const DEFAULT_ROTATION_GROUP: &str = "Hideez Key Auto Password Change";
/// The public cloud's Graph service root.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// The public cloud's identity platform authority.
pub const DEFAULT_AUTHORITY_URL: &str = "https://login.microsoftonline.com";

/// A domain's settings. Stored whole in each change so a fold never merges partial updates.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DomainSettings {
    /// Rotate passwords every this many days (1 to 365); `None` disables rotation.
    pub auto_password_change_days: Option<u16>,
    /// What happens to users who leave.
    pub removal_behavior: RemovalBehavior,
    /// The group whose members are synced.
    pub sync_group: GroupRef,
    /// The group whose members (with a key) get rotated passwords.
    pub rotation_group: GroupRef,
    /// Import candidates on every run without an admin's selection.
    pub auto_import: bool,
    /// Minutes between scheduled sync runs.
    pub sync_interval_minutes: u32,
    /// Graph service root.
    pub graph_url: String,
    /// Identity platform authority.
    pub authority_url: String,
    /// The deletion guard: a run removing more users than this (and more than 10%) is quarantined.
    pub deletion_threshold: u32,
    /// Generated password length (at least 16).
    pub password_length: u16,
    /// Hours after a reveal before a rotation follows.
    pub rotate_after_reveal_hours: u32,
    /// Rotations running at once for this domain.
    pub max_concurrent_rotations: u32,
}

impl Default for DomainSettings {
    fn default() -> Self {
        DomainSettings {
            auto_password_change_days: None,
            removal_behavior: RemovalBehavior::Deactivate,
            sync_group: GroupRef::named(DEFAULT_SYNC_GROUP),
            rotation_group: GroupRef::named(DEFAULT_ROTATION_GROUP),
            auto_import: false,
            sync_interval_minutes: 15,
            graph_url: DEFAULT_GRAPH_URL.to_owned(),
            authority_url: DEFAULT_AUTHORITY_URL.to_owned(),
            deletion_threshold: 20,
            password_length: 24,
            rotate_after_reveal_hours: 24,
            max_concurrent_rotations: 4,
        }
    }
}

/// Why a user left the sync group (as far as Graph tells).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// Removed from the sync group.
    LeftGroup,
    /// Deleted in Entra ID.
    DeletedInEntra,
    /// `accountEnabled` turned false in Entra ID.
    DisabledInEntra,
}

/// Why a rotation was started.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RotationReason {
    /// First rotation after import and key assignment.
    Initial,
    /// The interval elapsed.
    Scheduled,
    /// An admin asked.
    Manual,
    /// The password was revealed; it must not stay in use.
    AfterReveal,
    /// The engine's current password sent again before a new one, after an attempt whose
    /// outcome was unknown: whatever landed late is overwritten. No new password, no key
    /// write.
    Reassert,
    /// The password was written onto a key the user no longer held (an agent's late
    /// answer): whoever holds that key may have it, so it must not stay in use.
    Exposed,
}

/// What started a sync run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SyncTrigger {
    /// The interval elapsed.
    Scheduled,
    /// An admin asked.
    Manual,
}

/// Counters of a sync run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncCounters {
    /// Users seen for the first time.
    pub added: u32,
    /// Users whose attributes changed.
    pub changed: u32,
    /// Users who left the sync group.
    pub left: u32,
    /// Users deleted or disabled in Entra ID.
    pub deleted: u32,
    /// Users imported by the run (auto import).
    pub imported: u32,
    /// Users deactivated or deleted by the removal behaviour.
    pub removed: u32,
    /// Users that did not change.
    pub unchanged: u32,
}

/// Where a password delivered to a key stands.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyWriteState {
    /// Waiting for the agent.
    Queued,
    /// Handed to the agent.
    Delivered,
    /// The agent wrote the key.
    Confirmed,
    /// The agent reported a failure.
    Failed,
    /// A newer rotation replaced it before delivery.
    Superseded,
}

impl KeyWriteState {
    /// The state's name used in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyWriteState::Queued => "queued",
            KeyWriteState::Delivered => "delivered",
            KeyWriteState::Confirmed => "confirmed",
            KeyWriteState::Failed => "failed",
            KeyWriteState::Superseded => "superseded",
        }
    }
}

/// An invite's enrolment link as the log knows it: its id, the SHA-256 of its secret
/// (the secret itself is only in the invite) and when it stops working.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EnrolmentLink {
    /// Named by events and pages.
    pub link_id: LinkId,
    /// SHA-256 of the link's secret.
    pub token_hash: Hash,
    /// The link stops working then.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Where a WebAuthn authenticator lives (WebAuthn's `authenticatorAttachment`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    /// Built into the device (a platform passkey): `amr` `swk`.
    Platform,
    /// A separate security key such as the Hideez Key: `amr` `hwk`.
    CrossPlatform,
}

/// One thing a user proves themselves with; failures and lockouts count per factor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Factor {
    /// A WebAuthn credential (passkey or security key).
    Passkey,
    /// Entra ID credentials (the first factor of `password_and_second_factor`).
    Entra,
    /// An authenticator-app code.
    Totp,
}

impl Factor {
    /// The factor's name in the API and pages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Factor::Passkey => "passkey",
            Factor::Entra => "entra",
            Factor::Totp => "totp",
        }
    }
}

/// Why a sign-in attempt failed (no secret, no key material).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInFailure {
    /// The credential's proof did not verify (signature, origin, challenge …).
    BadCredential(String),
    /// The authenticator's counter went back: a possibly cloned authenticator.
    CounterWentBack,
    /// The passkey is not the user's (or was removed).
    UnknownCredential,
    /// The authenticator code is wrong.
    WrongCode,
    /// The authenticator code was used already.
    ReusedCode,
    /// Entra ID refused the credentials or the answer did not validate.
    EntraRefused(String),
    /// Entra ID signed in a different user than the one at hand.
    EntraUserMismatch,
    /// The factor is locked after repeated failures.
    Locked,
    /// The user is not active (deactivated, deleted, a candidate).
    NotActive,
    /// SSO is off for the user.
    SsoOff,
    /// The user's SSO method does not allow this way of signing in.
    MethodNotAllowed,
    /// The user has not enrolled the factor.
    NotEnrolled,
}

impl SignInFailure {
    /// A short machine-readable name.
    pub fn code(&self) -> &'static str {
        match self {
            SignInFailure::BadCredential(_) => "bad_credential",
            SignInFailure::CounterWentBack => "counter_went_back",
            SignInFailure::UnknownCredential => "unknown_credential",
            SignInFailure::WrongCode => "wrong_code",
            SignInFailure::ReusedCode => "reused_code",
            SignInFailure::EntraRefused(_) => "entra_refused",
            SignInFailure::EntraUserMismatch => "entra_user_mismatch",
            SignInFailure::Locked => "locked",
            SignInFailure::NotActive => "not_active",
            SignInFailure::SsoOff => "sso_off",
            SignInFailure::MethodNotAllowed => "method_not_allowed",
            SignInFailure::NotEnrolled => "not_enrolled",
        }
    }

    /// What to tell the person signing in, and what to do next.
    pub fn message(&self) -> &'static str {
        match self {
            SignInFailure::BadCredential(_) | SignInFailure::UnknownCredential => {
                "That passkey could not be verified. Try again, or use another passkey."
            }
            SignInFailure::CounterWentBack => {
                "That security key looks copied and was refused. Ask your administrator."
            }
            SignInFailure::WrongCode => {
                "That code is not right. Type the current code from your authenticator app."
            }
            SignInFailure::ReusedCode => {
                "That code was used already. Wait for the next code and type it."
            }
            SignInFailure::EntraRefused(_) => "Entra ID did not confirm your sign-in. Try again.",
            SignInFailure::EntraUserMismatch => {
                "You signed in to Entra ID as someone else. Sign in with your own account."
            }
            SignInFailure::Locked => {
                "Too many failed attempts: this method is locked for at least 15 minutes, longer after each lock. Try again later."
            }
            SignInFailure::NotActive | SignInFailure::SsoOff => {
                "Your account cannot sign in here. Ask your administrator."
            }
            SignInFailure::MethodNotAllowed => {
                "Your account signs in another way. Use the method your administrator set."
            }
            SignInFailure::NotEnrolled => {
                "You have not set up this method. Open your invite to enrol."
            }
        }
    }
}

/// How an app authenticates at the token endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClientType {
    /// A server-side app holding a client secret (PKCE allowed).
    Confidential,
    /// A browser or native app without a secret (PKCE with S256 required).
    Public,
}

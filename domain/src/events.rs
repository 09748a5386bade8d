//! The event catalogue: every fact idledger records, one struct per kind.
//!
//! Each kind has a stable name and a schema version. The payload is stored as the bincode
//! encoding of the struct of that version; [`Event::decode_payload`] is the one place where
//! an old schema would be upcast to the current struct.

use crate::codec::{decode_exact, encode_into, CodecError};
use crate::ids::*;
use crate::types::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

// ---- domain stream -------------------------------------------------------------------------

/// A domain was added.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DomainRegistered {
    /// The domain's id (also in its stream name).
    pub domain_id: DomainId,
    /// The tenant's domain name, e.g. `contoso.onmicrosoft.com`.
    pub name: String,
    /// Initial settings.
    pub settings: DomainSettings,
}

/// A domain's settings were changed (the whole new settings).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DomainSettingsChanged {
    /// The new settings.
    pub settings: DomainSettings,
}

/// Graph credentials were saved for a domain.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DomainCredentialsSet {
    /// Entra tenant id.
    pub tenant_id: String,
    /// App registration's client id.
    pub client_id: String,
    /// The client secret, sealed.
    pub client_secret: SealedSecret,
}

/// A domain's credentials were removed: all sync and rotation for it stop.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DomainCredentialsRemoved {}

/// A domain's default SSO settings changed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SsoDefaultsChanged {
    /// The new defaults, applied to users imported from now on.
    pub sso: SsoSettings,
}

/// A domain got a new workstation passwordless logon certificate (its signing key sealed
/// with the domain's data key). An earlier one is retired in the same append.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WorkstationCertificateIssued {
    /// SHA-256 fingerprint of the certificate (hex): its name.
    pub certificate_id: String,
    /// The X.509 certificate, DER (public).
    pub certificate_der: Vec<u8>,
    /// The ECDSA P-256 private key (PKCS#8), sealed.
    pub sealed_private_key: SealedSecret,
    /// Valid from.
    pub not_before: DateTime<Utc>,
    /// Valid until.
    pub not_after: DateTime<Utc>,
}

/// A workstation logon certificate was replaced; it stays listed as retired.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WorkstationCertificateRetired {
    /// Its fingerprint.
    pub certificate_id: String,
}

/// A domain was removed. Its history stays in the log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DomainRemoved {}

/// The sync and rotation groups resolved to these object ids.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SyncGroupsResolved {
    /// Object id of the sync group.
    pub sync_group_id: String,
    /// Object id of the rotation group.
    pub rotation_group_id: String,
}

/// A sync run began.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SyncRunStarted {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
    /// Why it runs.
    pub trigger: SyncTrigger,
    /// A dry run computes changes and applies none.
    pub dry_run: bool,
    /// A full round (no stored delta link, or it expired).
    pub full: bool,
}

/// A sync run finished.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SyncRunCompleted {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
    /// What changed.
    pub counters: SyncCounters,
    /// Whether the run read everything (a full round): what happened, which may differ
    /// from what `SyncRunStarted` expected (an expired delta token forces a full round).
    /// `None` in records of schema 1, which did not say.
    pub full: Option<bool>,
}

/// Schema 1 of [`SyncRunCompleted`].
#[derive(Deserialize)]
struct SyncRunCompletedV1 {
    run_id: SyncRunId,
    counters: SyncCounters,
}

/// A sync run failed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SyncRunFailed {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
    /// What went wrong (never a secret).
    pub error: String,
    /// Graph's error code, when Graph gave one.
    pub graph_code: Option<String>,
    /// Whether the run had gone on to a full round when it failed (an expired delta
    /// token switches a delta run to one). `None`: not known (records of schema 1, a run
    /// closed by a restart).
    pub full: Option<bool>,
}

/// Schema 1 of [`SyncRunFailed`].
#[derive(Deserialize)]
struct SyncRunFailedV1 {
    run_id: SyncRunId,
    error: String,
    graph_code: Option<String>,
}

/// A sync run would have removed too many users and applied none of those removals.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SyncQuarantined {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
    /// The users whose removal is held back.
    pub held_removals: Vec<UserId>,
    /// The domain's user count when the guard tripped.
    pub domain_users: u32,
}

/// An admin approved a quarantined run's removals.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SyncQuarantineApproved {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
}

/// Every removal an approved quarantine held was carried out (or found owed no more):
/// the approval is finished, and approving again changes nothing.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SyncQuarantineApplied {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
}

/// The tenant's federated domains changed to these names (lower case, sorted): their
/// users' passwords live with the federation's identity provider, and Graph cannot set
/// them, so those users are not rotated.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FederatedDomainsSeen {
    /// The federated domains' names.
    pub names: Vec<String>,
}

/// A run's delta rounds ended with these links; the next run starts from them.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DeltaCheckpointed {
    /// The run that reached them.
    pub run_id: SyncRunId,
    /// `@odata.deltaLink` of the `groups/delta` round (sync and rotation group membership).
    pub groups_delta_link: String,
    /// `@odata.deltaLink` of the `users/delta` round (attributes, disabling, deletion).
    pub users_delta_link: String,
    /// Changes Graph named that a member list or a read by id contradicted: the next
    /// rounds ask about them again though the links moved past them. Empty in records of
    /// schema 1.
    pub recheck: Vec<Recheck>,
}

/// Schema 1 of [`DeltaCheckpointed`].
#[derive(Deserialize)]
struct DeltaCheckpointedV1 {
    run_id: SyncRunId,
    groups_delta_link: String,
    users_delta_link: String,
}

/// A change Graph named about a user that what else Graph answered contradicted: a list
/// or a read that has not caught up with it yet (replication), or an old change named
/// again (GRAPH.md §3). Neither can be told from the other at once.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Recheck {
    /// The user's object id in Entra ID.
    pub external_id: String,
    /// What the change said.
    pub claim: GraphClaim,
    /// When a round first found the contradiction.
    pub since: DateTime<Utc>,
}

/// What a change Graph named said of a user.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum GraphClaim {
    /// In the sync group (`true`) or removed from it.
    SyncMember(bool),
    /// In the rotation group (`true`) or removed from it.
    RotationMember(bool),
    /// Deleted in Entra ID.
    Deleted,
    /// Disabled in Entra ID (`accountEnabled` turned false).
    Disabled,
    /// Enabled again in Entra ID (`accountEnabled` turned true).
    Enabled,
}

// ---- provider stream -------------------------------------------------------------------

/// A web app (relying party) was registered.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AppRegistered {
    /// The app.
    pub app_id: AppId,
    /// Its OAuth `client_id`.
    pub client_id: String,
    /// Its name, shown to admins.
    pub name: String,
    /// Redirect URIs, matched exactly.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may send the browser, matched exactly.
    pub post_logout_redirect_uris: Vec<String>,
    /// Confidential (with a secret) or public.
    pub client_type: ClientType,
    /// Users of these domains may sign in to it.
    pub domain_ids: Vec<DomainId>,
    /// `ES256` (default) or `RS256`.
    pub id_token_alg: String,
    /// SHA-256 of the client secret (confidential apps); the secret itself is shown once.
    pub secret_hash: Option<Hash>,
}

/// An app's settings changed (all of them, as they are now).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AppChanged {
    /// The app.
    pub app_id: AppId,
    /// Its name.
    pub name: String,
    /// Redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
    /// Domains whose users may sign in.
    pub domain_ids: Vec<DomainId>,
    /// The algorithm of its ID tokens from now on (`ES256` or `RS256`). `None`: as before
    /// (records of schema 1, which could not change it).
    pub id_token_alg: Option<String>,
}

/// Schema 1 of [`AppChanged`].
#[derive(Deserialize)]
struct AppChangedV1 {
    app_id: AppId,
    name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    domain_ids: Vec<DomainId>,
}

/// A confidential app got a new client secret; the old one stops working.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AppSecretRotated {
    /// The app.
    pub app_id: AppId,
    /// SHA-256 of the new secret.
    pub secret_hash: Hash,
}

/// An app was removed: no sign-in or token for it any more.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AppRemoved {
    /// The app.
    pub app_id: AppId,
}

/// The provider got a signing key; earlier keys are retired in the same append.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SigningKeyAdded {
    /// Its `kid`.
    pub kid: String,
    /// `ES256` or `RS256`: each algorithm has its own key in force.
    pub alg: String,
    /// The public key as a JWK (JSON text).
    pub public_jwk: String,
    /// The private key (PKCS#8), sealed.
    pub sealed_private_key: SealedSecret,
}

/// A signing key signs no more; tokens it signed verify until `verify_until`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SigningKeyRetired {
    /// Its `kid`.
    pub kid: String,
    /// It stays in the JWKS until then (the longest lifetime of a token it signed).
    pub verify_until: DateTime<Utc>,
}

/// The key added in the same append takes over signing for its algorithm only `at`, from
/// `from` (the key in force, which signs until then): published first, so a relying party
/// that cached the JWKS before has it before any token it signs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SigningKeyHandover {
    /// The key that signs until `at`, if one did.
    pub from: Option<String>,
    /// The key that signs from `at`.
    pub to: String,
    /// When signing passes to `to`.
    pub at: DateTime<Utc>,
}

/// Tokens were issued to an app for the user.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AppTokensIssued {
    /// The app.
    pub app_id: AppId,
    /// `authorization_code` or `refresh_token`.
    pub grant: String,
    /// The sign-in session (`sid`).
    pub sid: String,
    /// The refresh token handed out with them, if `offline_access` was granted.
    pub refresh: Option<RefreshIssued>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A refresh token: its family, its hash, and what the family grants. Each rotation
/// repeats the grant, so the family can be rebuilt from the log alone and every record
/// says what its tokens carried.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RefreshIssued {
    /// The family: every token rotated from one code exchange.
    pub family: uuid::Uuid,
    /// SHA-256 of the refresh token (the token itself is never recorded).
    pub token_hash: Hash,
    /// What its tokens carry. `None` only in records of schema 1, written when families
    /// lived in memory: such a family cannot be refreshed from the log.
    pub grant: Option<TokenGrant>,
}

/// What the tokens issued to an app carry: fixed at the code exchange, repeated by every
/// refresh of its family.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TokenGrant {
    /// The scopes granted.
    pub scope: Vec<String>,
    /// The authorization request's `nonce`, for the first ID token (refreshed ones carry
    /// none: OIDC Core §12.2).
    pub nonce: Option<String>,
    /// When the user signed in (the ID token's `auth_time`).
    pub auth_time: DateTime<Utc>,
    /// RFC 8176 method references of that sign-in.
    pub amr: Vec<String>,
    /// The method signed in with (the ID token's `acr`).
    pub method: SsoMethod,
}

/// Schema 1 of [`AppTokensIssued`]: the refresh family and token hash only.
#[derive(Deserialize)]
struct AppTokensIssuedV1 {
    app_id: AppId,
    grant: String,
    sid: String,
    refresh: Option<(uuid::Uuid, Hash)>,
    at: DateTime<Utc>,
}

/// A token request for the user was refused.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AppTokenRefused {
    /// The app.
    pub app_id: AppId,
    /// RFC 6749's error code and a few words (never a token).
    pub reason: String,
    /// The grant whose tokens it revoked, if any: a reused refresh token's family, or a
    /// reused code's grant (its family when it began one). Access tokens name their grant
    /// (`grant_id`), so those are refused too.
    pub revoked_family: Option<uuid::Uuid>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The app revoked one of its refresh tokens (RFC 7009): the family it belongs to ends, and
/// the access tokens of that grant with it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AppTokensRevoked {
    /// The app.
    pub app_id: AppId,
    /// The refresh family ended (also the grant its access tokens name).
    pub family: uuid::Uuid,
    /// When.
    pub at: DateTime<Utc>,
}

// ---- user stream ---------------------------------------------------------------------------

/// A member of the sync group was seen for the first time: a candidate.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserDiscovered {
    /// The engine's id for the user.
    pub user_id: UserId,
    /// The domain the user belongs to.
    pub domain_id: DomainId,
    /// The Entra object id.
    pub external_id: String,
    /// Attributes as read.
    pub attributes: UserAttributes,
}

/// Entra ID attributes changed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserAttributesChanged {
    /// The new attributes (all of them).
    pub attributes: UserAttributes,
}

/// An admin (or auto import) imported a candidate.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserImported {
    /// The domain's SSO defaults at import.
    pub sso: SsoSettings,
}

/// The user left the sync group, or was deleted or disabled in Entra ID.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MemberLeftSyncGroup {
    /// What Graph reported.
    pub reason: LeaveReason,
}

/// The user is back in the sync group (and enabled).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MemberRejoinedSyncGroup {}

/// The removal behaviour `keep` was applied: the user stays active.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserKept {
    /// The removal that was not acted on.
    pub reason: LeaveReason,
}

/// The user was deactivated: SSO off, PC unlock kept.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserDeactivated {
    /// Set by the removal behaviour; `None` when an admin did it.
    pub reason: Option<LeaveReason>,
}

/// The user was deleted; their data key is shredded.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserDeleted {
    /// Set by the removal behaviour; `None` when an admin did it.
    pub reason: Option<LeaveReason>,
}

/// An admin reactivated a deactivated user.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserReactivated {}

/// The user joined the rotation group.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationGroupJoined {}

/// The user left the rotation group.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationGroupLeft {}

/// An admin set or cleared the user's SSO override.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserSsoOverrideSet {
    /// The override; `None` falls back to the settings applied at import.
    pub sso: Option<SsoSettings>,
}

/// A hardware key was assigned to the user.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyAssigned {
    /// The hardware key's serial.
    pub key_id: KeyId,
}

/// The user's hardware key was unassigned.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyUnassigned {
    /// The hardware key's serial.
    pub key_id: KeyId,
}

/// An invite was sent to the user. Its enrolment link replaces any earlier one.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InviteSent {
    /// The address it went to.
    pub to: String,
    /// The mailer that took it (`smtp`, `outbox`).
    pub via: String,
    /// The enrolment link it carried (`None` for invites recorded before links existed).
    pub link: Option<EnrolmentLink>,
}

/// Schema 1 of [`InviteSent`]: no enrolment link.
#[derive(Deserialize)]
struct InviteSentV1 {
    to: String,
    via: String,
}

/// The user opened their enrolment link and began registering a method.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EnrolmentStarted {
    /// The link used.
    pub link_id: LinkId,
}

/// Enrolment finished: the link is used up and the user can sign in.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EnrolmentCompleted {
    /// The link used.
    pub link_id: LinkId,
    /// The sign-in method the user enrolled for.
    pub method: SsoMethod,
}

/// A WebAuthn credential (passkey or FIDO2 security key) was registered.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PasskeyRegistered {
    /// The credential id, base64url.
    pub credential_id: String,
    /// The user's name for it.
    pub name: String,
    /// The COSE public key, sealed with the user's data key (shredded with the user).
    pub sealed_public_key: SealedSecret,
    /// Its COSE algorithm (-7 ES256, -8 EdDSA, -257 RS256).
    pub algorithm: i64,
    /// Platform (built into the device) or cross-platform (a security key), when known.
    pub attachment: Option<Attachment>,
    /// The authenticator's signature counter at registration.
    pub sign_count: u32,
}

/// A passkey was renamed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PasskeyRenamed {
    /// The credential id, base64url.
    pub credential_id: String,
    /// The new name.
    pub name: String,
}

/// A passkey was removed; it signs nobody in any more.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PasskeyRemoved {
    /// The credential id, base64url.
    pub credential_id: String,
}

/// An authenticator app (TOTP) was set up, confirmed by a typed code.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TotpEnrolled {
    /// The seed, sealed with the user's data key.
    pub sealed_seed: SealedSecret,
    /// The step of the confirmation code (used: it is not accepted again).
    pub step: u64,
}

/// The authenticator app was removed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TotpRemoved {}

/// The user signed in.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignInSucceeded {
    /// The method signed in with.
    pub method: SsoMethod,
    /// Authentication method references (RFC 8176), as ID tokens carry them.
    pub amr: Vec<String>,
    /// The app the sign-in was for (`None`: the user's own page).
    pub app: Option<String>,
    /// The passkey used and its new signature counter.
    pub passkey: Option<(String, u32)>,
    /// The authenticator-code step used.
    pub totp_step: Option<u64>,
    /// When (the lockout window counts from here).
    pub at: DateTime<Utc>,
}

/// A sign-in attempt failed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignInFailed {
    /// The factor that failed.
    pub factor: Factor,
    /// Why.
    pub reason: SignInFailure,
    /// The app the sign-in was for.
    pub app: Option<String>,
    /// When (the lockout window counts from here).
    pub at: DateTime<Utc>,
}

/// Too many failures: the factor is locked.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignInLocked {
    /// The factor locked.
    pub factor: Factor,
    /// Until when.
    pub until: DateTime<Utc>,
}

/// An admin lifted the user's sign-in locks: the locked factors work again at once, and
/// the next lock is the shortest again.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignInUnlocked {
    /// The factors that were locked, or had been locked since the user last signed in.
    pub factors: Vec<Factor>,
}

/// A rotation began. The new password is sealed here and durable before Graph is asked.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationStarted {
    /// The rotation this belongs to (also the correlation id of its events).
    pub rotation_id: RotationId,
    /// Why.
    pub reason: RotationReason,
    /// The candidate password, sealed.
    pub sealed_password: SealedSecret,
}

/// Graph's answer was unknown (timeout, 5xx); the same password is tried again.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationRetried {
    /// The rotation this belongs to (also the correlation id of its events).
    pub rotation_id: RotationId,
    /// Attempt number that failed (1-based).
    pub attempt: u32,
    /// What happened.
    pub error: String,
}

/// Graph set the password: it is now the current one.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationSucceeded {
    /// The rotation this belongs to (also the correlation id of its events).
    pub rotation_id: RotationId,
}

/// The rotation ended without success.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationFailed {
    /// The rotation this belongs to (also the correlation id of its events).
    pub rotation_id: RotationId,
    /// `false`: Graph refused and the previous password stays current. `true`: the outcome
    /// is unknown, both candidate passwords are kept and the user needs attention.
    pub retryable: bool,
    /// Graph's error code, when it gave one.
    pub graph_code: Option<String>,
    /// What happened (never a password).
    pub error: String,
}

/// A password is waiting to be written to the user's key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyWriteQueued {
    /// The key write this step belongs to.
    pub key_write_id: KeyWriteId,
    /// The rotation whose password it carries.
    pub rotation_id: RotationId,
    /// The key to write.
    pub key_id: KeyId,
}

/// The agent fetched the write (the password left the engine).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyWriteDelivered {
    /// The key write this step belongs to.
    pub key_write_id: KeyWriteId,
}

/// The agent wrote the key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyWriteConfirmed {
    /// The key write this step belongs to.
    pub key_write_id: KeyWriteId,
}

/// An agent wrote a superseded write's password onto the key after all, and said so: the
/// key may hold an older password than the engine's current one (the engine owes it the
/// current one again, in the same record).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyWriteWrittenLate {
    /// The key write this step belongs to.
    pub key_write_id: KeyWriteId,
}

/// The agent could not write the key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyWriteFailed {
    /// The key write this step belongs to.
    pub key_write_id: KeyWriteId,
    /// The agent's explanation.
    pub detail: String,
}

/// A key write will never be delivered: a newer rotation replaced it, the key was
/// taken from its user (a password reaches only the key of the user it belongs to), or
/// the user was deleted.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyWriteSuperseded {
    /// The key write this step belongs to.
    pub key_write_id: KeyWriteId,
    /// Why it will not be delivered.
    pub reason: SupersedeReason,
}

/// Why a key write was superseded.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupersedeReason {
    /// A newer rotation's write replaces it.
    NewerRotation {
        /// That rotation.
        rotation_id: RotationId,
    },
    /// The key was unassigned from the user.
    KeyUnassigned {
        /// The hardware key's serial.
        key_id: KeyId,
    },
    /// The user was given another key.
    KeyReassigned {
        /// The key the write was for.
        from: KeyId,
        /// The user's new key.
        to: KeyId,
    },
    /// The user was deleted: their data key is shredded, so the password is gone.
    UserDeleted {},
}

/// Schema 1 of [`KeyWriteSuperseded`]: only newer rotations superseded writes.
#[derive(Deserialize)]
struct KeyWriteSupersededV1 {
    key_write_id: KeyWriteId,
    by_rotation: RotationId,
}

/// Decodes payloads of schemas older than the catalogue's, into today's structs.
fn upcast(kind: &str, schema: u16, bytes: &[u8]) -> Result<Event, CodecError> {
    match (kind, schema) {
        ("KeyWriteSuperseded", 1) => {
            let v1: KeyWriteSupersededV1 = decode_exact(bytes)?;
            Ok(Event::KeyWriteSuperseded(KeyWriteSuperseded {
                key_write_id: v1.key_write_id,
                reason: SupersedeReason::NewerRotation {
                    rotation_id: v1.by_rotation,
                },
            }))
        }
        ("InviteSent", 1) => {
            let v1: InviteSentV1 = decode_exact(bytes)?;
            Ok(Event::InviteSent(InviteSent {
                to: v1.to,
                via: v1.via,
                link: None,
            }))
        }
        ("AppTokensIssued", 1) => {
            let v1: AppTokensIssuedV1 = decode_exact(bytes)?;
            Ok(Event::AppTokensIssued(AppTokensIssued {
                app_id: v1.app_id,
                grant: v1.grant,
                sid: v1.sid,
                refresh: v1.refresh.map(|(family, token_hash)| RefreshIssued {
                    family,
                    token_hash,
                    grant: None,
                }),
                at: v1.at,
            }))
        }
        ("DeltaCheckpointed", 1) => {
            let v1: DeltaCheckpointedV1 = decode_exact(bytes)?;
            Ok(Event::DeltaCheckpointed(DeltaCheckpointed {
                run_id: v1.run_id,
                groups_delta_link: v1.groups_delta_link,
                users_delta_link: v1.users_delta_link,
                recheck: Vec::new(),
            }))
        }
        ("AppChanged", 1) => {
            let v1: AppChangedV1 = decode_exact(bytes)?;
            Ok(Event::AppChanged(AppChanged {
                app_id: v1.app_id,
                name: v1.name,
                redirect_uris: v1.redirect_uris,
                post_logout_redirect_uris: v1.post_logout_redirect_uris,
                domain_ids: v1.domain_ids,
                id_token_alg: None,
            }))
        }
        ("SyncRunFailed", 1) => {
            let v1: SyncRunFailedV1 = decode_exact(bytes)?;
            Ok(Event::SyncRunFailed(SyncRunFailed {
                run_id: v1.run_id,
                error: v1.error,
                graph_code: v1.graph_code,
                full: None,
            }))
        }
        ("SyncRunCompleted", 1) => {
            let v1: SyncRunCompletedV1 = decode_exact(bytes)?;
            Ok(Event::SyncRunCompleted(SyncRunCompleted {
                run_id: v1.run_id,
                counters: v1.counters,
                full: None,
            }))
        }
        _ => Err(CodecError::UnknownKind {
            kind: kind.to_owned(),
            schema,
        }),
    }
}

/// An admin revealed the current password (break-glass).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PasswordRevealed {
    /// The rotation whose password was shown.
    pub rotation_id: RotationId,
    /// The admin's stated reason.
    pub reason: String,
}

/// An attempt of the rotation may have reached Graph without an answer: the process
/// stopped, or the domain's credentials were removed, while it was in flight. The
/// rotation stays open and keeps its password.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationInterrupted {
    /// The rotation this belongs to (also the correlation id of its events).
    pub rotation_id: RotationId,
}

/// A rotation was asked for that may not start yet (an uncertainty window is open, or an
/// earlier rotation's outcome must be settled first); the scheduler starts it when allowed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationRequested {
    /// Why it was asked for.
    pub reason: RotationReason,
}

// ---- tokens stream -------------------------------------------------------------------------

/// An API token was issued. Only its SHA-256 is kept.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TokenIssued {
    /// The token's id (its text is never stored, only its hash).
    pub token_id: TokenId,
    /// What the token may do.
    pub role: Role,
    /// A label.
    pub name: String,
    /// For agents: the keys it may serve.
    pub key_ids: Vec<KeyId>,
    /// SHA-256 of the secret token text.
    pub token_hash: Hash,
}

/// An API token was revoked.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TokenRevoked {
    /// The token's id (its text is never stored, only its hash).
    pub token_id: TokenId,
}

impl Event {
    /// The secret sealed in this event, if it carries one: reading it needs the data key
    /// of its stream's subject.
    pub fn sealed(&self) -> Option<&SealedSecret> {
        match self {
            Event::DomainCredentialsSet(e) => Some(&e.client_secret),
            Event::WorkstationCertificateIssued(e) => Some(&e.sealed_private_key),
            Event::SigningKeyAdded(e) => Some(&e.sealed_private_key),
            Event::PasskeyRegistered(e) => Some(&e.sealed_public_key),
            Event::TotpEnrolled(e) => Some(&e.sealed_seed),
            Event::RotationStarted(e) => Some(&e.sealed_password),
            _ => None,
        }
    }
}

macro_rules! event_catalogue {
    ($( $(#[$doc:meta])* $variant:ident = $kind:literal, schema $schema:literal, $cat:ident; )*) => {
        /// Every event idledger records.
        #[derive(Clone, PartialEq, Eq, Debug)]
        pub enum Event {
            $( $(#[$doc])* $variant($variant), )*
        }

        impl Event {
            /// Every kind name, in catalogue order.
            pub const KINDS: &'static [&'static str] = &[$($kind),*];

            /// The kind's stable name.
            pub fn kind(&self) -> &'static str {
                match self { $(Event::$variant(_) => $kind,)* }
            }

            /// The schema version the payload is encoded with.
            pub fn schema(&self) -> u16 {
                match self { $(Event::$variant(_) => $schema,)* }
            }

            /// The kind of stream the event belongs to.
            pub fn stream_kind(&self) -> StreamKind {
                match self { $(Event::$variant(_) => StreamKind::$cat,)* }
            }

            /// Appends the payload's canonical bytes to `out`.
            pub fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
                match self { $(Event::$variant(p) => encode_into(p, out),)* }
            }

            /// Decodes a payload of the given kind and schema, upcasting old schemas.
            pub fn decode_payload(kind: &str, schema: u16, bytes: &[u8]) -> Result<Event, CodecError> {
                match (kind, schema) {
                    $( ($kind, $schema) => Ok(Event::$variant(decode_exact(bytes)?)), )*
                    _ => upcast(kind, schema, bytes),
                }
            }

            /// The payload as JSON (sealed secrets show as `"sealed"`).
            pub fn payload_json(&self) -> serde_json::Value {
                let v = match self { $(Event::$variant(p) => serde_json::to_value(p),)* };
                // Serializing these plain structs into a Value cannot fail.
                v.unwrap_or(serde_json::Value::Null)
            }
        }

        $(
            impl From<$variant> for Event {
                fn from(p: $variant) -> Event { Event::$variant(p) }
            }
        )*
    };
}

event_catalogue! {
    /// See [`DomainRegistered`].
    DomainRegistered = "DomainRegistered", schema 1, Domain;
    /// See [`DomainSettingsChanged`].
    DomainSettingsChanged = "DomainSettingsChanged", schema 1, Domain;
    /// See [`DomainCredentialsSet`].
    DomainCredentialsSet = "DomainCredentialsSet", schema 1, Domain;
    /// See [`DomainCredentialsRemoved`].
    DomainCredentialsRemoved = "DomainCredentialsRemoved", schema 1, Domain;
    /// See [`SsoDefaultsChanged`].
    SsoDefaultsChanged = "SsoDefaultsChanged", schema 1, Domain;
    /// See [`DomainRemoved`].
    DomainRemoved = "DomainRemoved", schema 1, Domain;
    /// See [`SyncGroupsResolved`].
    SyncGroupsResolved = "SyncGroupsResolved", schema 1, Domain;
    /// See [`SyncRunStarted`].
    SyncRunStarted = "SyncRunStarted", schema 1, Domain;
    /// See [`SyncRunCompleted`].
    SyncRunCompleted = "SyncRunCompleted", schema 2, Domain;
    /// See [`SyncRunFailed`].
    SyncRunFailed = "SyncRunFailed", schema 2, Domain;
    /// See [`SyncQuarantined`].
    SyncQuarantined = "SyncQuarantined", schema 1, Domain;
    /// See [`SyncQuarantineApproved`].
    SyncQuarantineApproved = "SyncQuarantineApproved", schema 1, Domain;
    /// See [`DeltaCheckpointed`].
    DeltaCheckpointed = "DeltaCheckpointed", schema 2, Domain;
    /// See [`UserDiscovered`].
    UserDiscovered = "UserDiscovered", schema 1, User;
    /// See [`UserAttributesChanged`].
    UserAttributesChanged = "UserAttributesChanged", schema 1, User;
    /// See [`UserImported`].
    UserImported = "UserImported", schema 1, User;
    /// See [`MemberLeftSyncGroup`].
    MemberLeftSyncGroup = "MemberLeftSyncGroup", schema 1, User;
    /// See [`MemberRejoinedSyncGroup`].
    MemberRejoinedSyncGroup = "MemberRejoinedSyncGroup", schema 1, User;
    /// See [`UserKept`].
    UserKept = "UserKept", schema 1, User;
    /// See [`UserDeactivated`].
    UserDeactivated = "UserDeactivated", schema 1, User;
    /// See [`UserDeleted`].
    UserDeleted = "UserDeleted", schema 1, User;
    /// See [`UserReactivated`].
    UserReactivated = "UserReactivated", schema 1, User;
    /// See [`RotationGroupJoined`].
    RotationGroupJoined = "RotationGroupJoined", schema 1, User;
    /// See [`RotationGroupLeft`].
    RotationGroupLeft = "RotationGroupLeft", schema 1, User;
    /// See [`UserSsoOverrideSet`].
    UserSsoOverrideSet = "UserSsoOverrideSet", schema 1, User;
    /// See [`KeyAssigned`].
    KeyAssigned = "KeyAssigned", schema 1, User;
    /// See [`KeyUnassigned`].
    KeyUnassigned = "KeyUnassigned", schema 1, User;
    /// See [`InviteSent`].
    InviteSent = "InviteSent", schema 2, User;
    /// See [`RotationStarted`].
    RotationStarted = "RotationStarted", schema 1, User;
    /// See [`RotationRetried`].
    RotationRetried = "RotationRetried", schema 1, User;
    /// See [`RotationSucceeded`].
    RotationSucceeded = "RotationSucceeded", schema 1, User;
    /// See [`RotationFailed`].
    RotationFailed = "RotationFailed", schema 1, User;
    /// See [`KeyWriteQueued`].
    KeyWriteQueued = "KeyWriteQueued", schema 1, User;
    /// See [`KeyWriteDelivered`].
    KeyWriteDelivered = "KeyWriteDelivered", schema 1, User;
    /// See [`KeyWriteConfirmed`].
    KeyWriteConfirmed = "KeyWriteConfirmed", schema 1, User;
    /// See [`KeyWriteFailed`].
    KeyWriteFailed = "KeyWriteFailed", schema 1, User;
    /// See [`KeyWriteSuperseded`].
    KeyWriteSuperseded = "KeyWriteSuperseded", schema 2, User;
    /// See [`PasswordRevealed`].
    PasswordRevealed = "PasswordRevealed", schema 1, User;
    /// See [`TokenIssued`].
    TokenIssued = "TokenIssued", schema 1, Tokens;
    /// See [`TokenRevoked`].
    TokenRevoked = "TokenRevoked", schema 1, Tokens;
    /// See [`RotationInterrupted`].
    RotationInterrupted = "RotationInterrupted", schema 1, User;
    /// See [`RotationRequested`].
    RotationRequested = "RotationRequested", schema 1, User;
    /// See [`EnrolmentStarted`].
    EnrolmentStarted = "EnrolmentStarted", schema 1, User;
    /// See [`EnrolmentCompleted`].
    EnrolmentCompleted = "EnrolmentCompleted", schema 1, User;
    /// See [`PasskeyRegistered`].
    PasskeyRegistered = "PasskeyRegistered", schema 1, User;
    /// See [`PasskeyRenamed`].
    PasskeyRenamed = "PasskeyRenamed", schema 1, User;
    /// See [`PasskeyRemoved`].
    PasskeyRemoved = "PasskeyRemoved", schema 1, User;
    /// See [`TotpEnrolled`].
    TotpEnrolled = "TotpEnrolled", schema 1, User;
    /// See [`TotpRemoved`].
    TotpRemoved = "TotpRemoved", schema 1, User;
    /// See [`SignInSucceeded`].
    SignInSucceeded = "SignInSucceeded", schema 1, User;
    /// See [`SignInFailed`].
    SignInFailed = "SignInFailed", schema 1, User;
    /// See [`SignInLocked`].
    SignInLocked = "SignInLocked", schema 1, User;
    /// See [`WorkstationCertificateIssued`].
    WorkstationCertificateIssued = "WorkstationCertificateIssued", schema 1, Domain;
    /// See [`WorkstationCertificateRetired`].
    WorkstationCertificateRetired = "WorkstationCertificateRetired", schema 1, Domain;
    /// See [`AppRegistered`].
    AppRegistered = "AppRegistered", schema 1, Provider;
    /// See [`AppChanged`].
    AppChanged = "AppChanged", schema 2, Provider;
    /// See [`AppSecretRotated`].
    AppSecretRotated = "AppSecretRotated", schema 1, Provider;
    /// See [`AppRemoved`].
    AppRemoved = "AppRemoved", schema 1, Provider;
    /// See [`SigningKeyAdded`].
    SigningKeyAdded = "SigningKeyAdded", schema 1, Provider;
    /// See [`SigningKeyRetired`].
    SigningKeyRetired = "SigningKeyRetired", schema 1, Provider;
    /// See [`AppTokensIssued`].
    AppTokensIssued = "AppTokensIssued", schema 2, User;
    /// See [`AppTokenRefused`].
    AppTokenRefused = "AppTokenRefused", schema 1, User;
    /// See [`FederatedDomainsSeen`].
    FederatedDomainsSeen = "FederatedDomainsSeen", schema 1, Domain;
    /// See [`SyncQuarantineApplied`].
    SyncQuarantineApplied = "SyncQuarantineApplied", schema 1, Domain;
    /// See [`KeyWriteWrittenLate`].
    KeyWriteWrittenLate = "KeyWriteWrittenLate", schema 1, User;
    /// See [`SigningKeyHandover`].
    SigningKeyHandover = "SigningKeyHandover", schema 1, Provider;
    /// See [`SignInUnlocked`].
    SignInUnlocked = "SignInUnlocked", schema 1, User;
    /// See [`AppTokensRevoked`].
    AppTokensRevoked = "AppTokensRevoked", schema 1, User;
}

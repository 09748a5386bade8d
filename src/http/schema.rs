//! What the OpenAPI document says of the value types the API shows but does not own: the
//! domain's and the projections' enums and small structs, as they serialize. They carry
//! no web derives themselves (a domain type is not an API type); these descriptions stand
//! beside them, and `tests/it/api.rs` checks every documented answer against what is
//! actually sent, so a description cannot drift from the type it describes.

// Only described, never built.
#![allow(dead_code)]

use utoipa::openapi::{RefOr, Schema};
use utoipa::ToSchema;

/// Schemas a document needs, by name.
pub type Components = Vec<(String, RefOr<Schema>)>;

/// A reference to `T`'s schema, adding it (and what it refers to) to `components`.
pub fn reference<T: ToSchema>(components: &mut Components) -> RefOr<Schema> {
    T::schemas(components);
    components.push((T::name().into_owned(), T::schema()));
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
}

/// An API role.
#[derive(ToSchema)]
#[schema(as = Role)]
#[serde(rename_all = "snake_case")]
pub enum RoleSchema {
    /// Everything.
    Admin,
    /// Read, replay, export.
    Auditor,
    /// A workstation agent: its own keys' writes.
    Agent,
}

/// What happens to a user who leaves the sync group (or is deleted or disabled in Entra).
#[derive(ToSchema)]
#[schema(as = RemovalBehavior)]
#[serde(rename_all = "snake_case")]
pub enum RemovalBehaviorSchema {
    /// The user stays active.
    Keep,
    /// SSO off, PC unlock kept.
    Deactivate,
    /// Deleted; their data key shredded.
    Delete,
}

/// How a user signs in with SSO.
#[derive(ToSchema)]
#[schema(as = SsoMethod)]
#[serde(rename_all = "snake_case")]
pub enum SsoMethodSchema {
    /// A passkey or hardware key.
    Passwordless,
    /// Entra ID credentials and a second factor.
    PasswordAndSecondFactor,
}

/// SSO settings.
#[derive(ToSchema)]
#[schema(as = SsoSettings)]
pub struct SsoSettingsSchema {
    /// SSO is on.
    pub enabled: bool,
    /// How.
    pub method: SsoMethodSchema,
}

/// Where a user stands.
#[derive(ToSchema)]
#[schema(as = UserStatus)]
#[serde(rename_all = "snake_case")]
pub enum UserStatusSchema {
    /// In the sync group, not imported.
    Candidate,
    /// Imported.
    Active,
    /// SSO off, PC unlock kept.
    Deactivated,
    /// Gone; their data key is shredded.
    Deleted,
}

/// Why a rotation started.
#[derive(ToSchema)]
#[schema(as = RotationReason)]
#[serde(rename_all = "snake_case")]
pub enum RotationReasonSchema {
    /// The first after import and key assignment.
    Initial,
    /// The interval passed.
    Scheduled,
    /// An admin asked.
    Manual,
    /// A reveal showed the password; it is replaced.
    AfterReveal,
    /// The current password sent again after an uncertainty window.
    Reassert,
    /// An agent wrote the password onto a key its user no longer held.
    Exposed,
}

/// How a rotation ended, if it has.
#[derive(ToSchema)]
#[schema(as = RotationOutcome)]
#[serde(rename_all = "snake_case")]
pub enum RotationOutcomeSchema {
    /// In flight.
    Pending,
    /// Graph set the password.
    Succeeded,
    /// Graph refused; the previous password stays current.
    Failed,
    /// Unknown for now: the candidate is kept and tried again.
    Unknown,
}

/// Where a key write stands.
#[derive(ToSchema)]
#[schema(as = KeyWriteState)]
#[serde(rename_all = "snake_case")]
pub enum KeyWriteStateSchema {
    /// Waiting for the agent.
    Queued,
    /// Handed to the agent.
    Delivered,
    /// The agent wrote the key.
    Confirmed,
    /// The agent could not.
    Failed,
    /// Will never be delivered.
    Superseded,
}

/// What started a sync run.
#[derive(ToSchema)]
#[schema(as = SyncTrigger)]
#[serde(rename_all = "snake_case")]
pub enum SyncTriggerSchema {
    /// The domain's schedule.
    Scheduled,
    /// An admin.
    Manual,
}

/// Where a sync run stands.
#[derive(ToSchema)]
#[schema(as = SyncRunStatus)]
#[serde(rename_all = "snake_case")]
pub enum SyncRunStatusSchema {
    /// Going.
    Running,
    /// Done.
    Succeeded,
    /// Failed (its error says why).
    Failed,
    /// Held back removals; waits for approval.
    Quarantined,
}

/// What Entra ID said of a user in a run.
#[derive(ToSchema)]
#[schema(as = SyncOutcome)]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcomeSchema {
    /// First seen.
    Added,
    /// Attributes changed.
    Changed,
    /// Left the sync group.
    Left,
    /// Back in the sync group.
    Rejoined,
    /// Deleted or disabled in Entra ID.
    Deleted,
}

/// What a run did to a user beside the facts.
#[derive(ToSchema)]
#[schema(as = RunAction)]
#[serde(rename_all = "snake_case")]
pub enum RunActionSchema {
    /// Imported automatically.
    Imported,
    /// Kept active (removal behaviour `keep`).
    Kept,
    /// SSO off; PC unlock kept.
    Deactivated,
    /// Gone; their data key is shredded.
    Deleted,
}

/// Counters of a sync run.
#[derive(ToSchema)]
#[schema(as = SyncCounters)]
pub struct SyncCountersSchema {
    /// Seen for the first time.
    pub added: u32,
    /// Attributes changed.
    pub changed: u32,
    /// Left the sync group.
    pub left: u32,
    /// Deleted or disabled in Entra ID.
    pub deleted: u32,
    /// Imported by the run.
    pub imported: u32,
    /// Deactivated or deleted by the removal behaviour.
    pub removed: u32,
    /// Seen, with nothing to record.
    pub unchanged: u32,
}

/// What an export holds.
#[derive(ToSchema)]
#[schema(as = ExportKind)]
#[serde(rename_all = "kebab-case")]
pub enum ExportKindSchema {
    /// Every step of every password change.
    PasswordChanges,
    /// Every event.
    Events,
    /// The users at the end of the range.
    Users,
    /// Every sign-in attempt, enrolment and lockout.
    SignIns,
}

/// How an export is written.
#[derive(ToSchema)]
#[schema(as = ExportFormat)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormatSchema {
    /// RFC 4180.
    Csv,
    /// JSON Lines.
    Jsonl,
}

/// An envelope as the log shows it (`idledger log`, `/v1/events`): sealed secrets as
/// `"sealed"`; with the stored `record` (base64) on `/v1/events`.
#[derive(ToSchema)]
#[schema(as = EnvelopeView)]
pub struct EnvelopeSchema {
    /// Global position, from 1.
    pub position: u64,
    /// Stream name.
    pub stream: String,
    /// Version in the stream, from 1.
    pub version: u64,
    /// Unique id: the idempotency key.
    pub event_id: uuid::Uuid,
    /// Commit time.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// Who caused it.
    pub actor: String,
    /// Ties a run's or a rotation's events together.
    pub correlation_id: Option<uuid::Uuid>,
    /// What caused it.
    pub causation_id: Option<uuid::Uuid>,
    /// Event kind.
    pub kind: String,
    /// Its schema version.
    pub schema: u16,
    /// The event's fields.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
    /// The stored record, base64 (on `/v1/events` only).
    pub record: Option<String>,
}

/// The manifest of an export (`FILE.manifest.json`, `/v1/audit/exports/{kind}/manifest`).
#[derive(ToSchema)]
#[schema(as = Manifest)]
pub struct ManifestSchema {
    pub kind: ExportKindSchema,
    pub format: ExportFormatSchema,
    pub filters: ManifestFiltersSchema,
    pub range: ManifestRangeSchema,
    /// Rows in the file.
    pub rows: u64,
    /// Position of the first row's event.
    pub first_position: Option<u64>,
    /// Position of the last row's event.
    pub last_position: Option<u64>,
    /// The last log position read: `verify-export` reads the log to here.
    pub log_position: u64,
    /// The chain hash at `log_position` (hex).
    pub chain_hash: String,
    /// SHA-256 of the file (hex).
    pub file_sha256: String,
    /// The tool and version that made it.
    pub tool: String,
    pub made_at: chrono::DateTime<chrono::Utc>,
    /// A signed tree head covering `log_position`.
    pub signed_head: Option<ManifestHeadSchema>,
}

/// A signed tree head covering an export, and the proof tying the export's position to it.
#[derive(ToSchema)]
#[schema(as = ManifestHead)]
pub struct ManifestHeadSchema {
    /// The head as a C2SP checkpoint (signed note).
    pub checkpoint: String,
    /// Consistency proof (base64) from the tree of `log_position` records to the head's;
    /// empty when the head is of exactly that size.
    pub consistency: Vec<String>,
}

/// An export's filters.
#[derive(ToSchema)]
#[schema(as = ManifestFilters)]
pub struct ManifestFiltersSchema {
    pub domain: Option<uuid::Uuid>,
    pub user: Option<uuid::Uuid>,
}

/// An export's time range.
#[derive(ToSchema)]
#[schema(as = ManifestRange)]
pub struct ManifestRangeSchema {
    /// Events recorded at or after this time.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Events recorded at or before this time (for `users`, the state then).
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

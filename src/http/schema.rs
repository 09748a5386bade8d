//! The schemas of the value types the API shows but does not own. The domain's and the
//! projections' types derive theirs (their `openapi` feature, which this crate turns on),
//! so a description cannot drift from the type it describes; `tests/it/openapi.rs` checks
//! every documented answer against what is actually sent.

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

// The names the handlers' files and the operation table still use for the real types,
// until they name those types themselves (no attribute is needed then: a field of a real
// type brings its schema).
pub type RoleSchema = idledger_domain::Role;
pub type RemovalBehaviorSchema = idledger_domain::RemovalBehavior;
pub type SsoSettingsSchema = idledger_domain::SsoSettings;
pub type UserStatusSchema = idledger_projections::UserStatus;
pub type RotationReasonSchema = idledger_domain::RotationReason;
pub type RotationOutcomeSchema = idledger_projections::RotationOutcome;
pub type KeyWriteStateSchema = idledger_domain::KeyWriteState;
pub type SyncTriggerSchema = idledger_domain::SyncTrigger;
pub type SyncRunStatusSchema = idledger_projections::SyncRunStatus;
pub type RunActionSchema = idledger_projections::RunAction;
pub type SyncCountersSchema = idledger_domain::SyncCounters;
pub type ManifestSchema = crate::audit::Manifest;
/// `/v1/events` and `/v1/users/{id}/events` list envelopes; the first adds each one's
/// stored record (see [`LoggedEventSchema`]), which its schema allows and the second's
/// answers leave out.
pub type EnvelopeSchema = LoggedEventSchema;

/// What Entra ID said of a user in a run.
///
/// A description kept by hand: `SyncOutcome` lives in `idledger_domain::sync`, outside
/// this change's files; it derives its schema as the other domain enums do once that file
/// takes the same `cfg_attr` line, and this goes.
#[derive(ToSchema)]
#[schema(as = SyncOutcome)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // only described: the answers carry `idledger_domain::sync::SyncOutcome`
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

/// An item of `/v1/events`: the envelope's view ([`idledger_domain::envelope::EnvelopeView`],
/// its schema derived from it) and the stored record, base64, so a client can check the
/// chain itself. Composed here because the handler flattens a JSON value today
/// (`events::LoggedEvent`); once that holds the typed view and derives its schema, the
/// operation table names it and this goes.
pub struct LoggedEventSchema;

impl utoipa::PartialSchema for LoggedEventSchema {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::schema::{AllOf, ObjectBuilder, Type};
        let record = ObjectBuilder::new()
            .property(
                "record",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_encoding("base64")
                    .description(Some("The stored record (on `/v1/events` only).")),
            )
            .build();
        let mut all = AllOf::new();
        all.items
            .push(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                idledger_domain::envelope::EnvelopeView::name(),
            )));
        all.items.push(RefOr::T(Schema::Object(record)));
        RefOr::T(Schema::AllOf(all))
    }
}

impl ToSchema for LoggedEventSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "LoggedEvent".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use idledger_domain::envelope::EnvelopeView;
        use utoipa::PartialSchema;
        EnvelopeView::schemas(schemas);
        schemas.push((EnvelopeView::name().into_owned(), EnvelopeView::schema()));
    }
}

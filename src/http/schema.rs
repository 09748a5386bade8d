//! How the operation table refers to a body's schema. Every schema is derived from the
//! type the handlers use: the domain's, the projections' and the replay's types derive
//! theirs (their `openapi` feature, which this crate turns on), so a description cannot
//! drift from the type it describes; `tests/it/openapi.rs` checks every documented answer
//! against what is actually sent.

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

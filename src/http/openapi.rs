//! The OpenAPI 3.1 document of the operation table: every path, its roles, its query
//! parameters and the JSON Schema of every request and answer body, each generated from
//! the Rust type its handler uses (utoipa), the error body and the collection page
//! included.

use super::error::ErrorBody;
use super::schema::{reference, Components};
use super::{operations, Access};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use utoipa::openapi::{RefOr, Schema};
use utoipa::ToSchema;

/// A schema and the components it needs.
pub type SchemaOf = fn(&mut Components) -> RefOr<Schema>;

/// What an answer carries.
#[derive(Clone, Copy)]
pub enum Content {
    /// JSON of this schema.
    Json(SchemaOf),
    /// Another media type (exports, metrics, the event stream).
    Other(&'static str),
}

/// The schema of a page of `T`s: `{"items":[T…],"next":"cursor"|null}`.
pub fn page_of<T: utoipa::ToSchema>(components: &mut Components) -> RefOr<Schema> {
    use utoipa::openapi::schema::SchemaType;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let items = ArrayBuilder::new().items(reference::<T>(components));
    let next = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .description(Some("Pass as `after` for the next page; null on the last."));
    ObjectBuilder::new()
        .property("items", items)
        .required("items")
        .property("next", next)
        .required("next")
        .into()
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The path parameters of an axum path (`{id}` …): object ids are UUIDs, `kind` an
/// export kind, `tree_size` a number of records.
fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema = match name {
                "kind" => {
                    let kinds = idledger_replay::export::ExportKind::ALL.map(|k| k.as_str());
                    json!({"type": "string", "enum": kinds})
                }
                "tree_size" => json!({"type": "integer", "format": "int64", "minimum": 1}),
                _ => json!({"type": "string", "format": "uuid"}),
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

/// The OpenAPI 3.1 document itself, as `/v1/openapi.json` answers it. Its operations and
/// schemas are objects of the OpenAPI specification's own meta-schema
/// (<https://spec.openapis.org/oas/3.1/schema/2022-10-07>), not restated here.
#[derive(Serialize, ToSchema)]
pub struct Document {
    components: DocumentComponents,
    info: Info,
    /// The OpenAPI version: `3.1.0`.
    openapi: &'static str,
    /// Each path's operations, by lowercase method.
    #[schema(value_type = BTreeMap<String, BTreeMap<String, Object>>)]
    paths: BTreeMap<String, Map<String, Value>>,
}

/// The document's reusable parts.
#[derive(Serialize, ToSchema)]
pub struct DocumentComponents {
    /// Every schema the operations refer to, by name.
    #[schema(value_type = BTreeMap<String, Object>)]
    schemas: Map<String, Value>,
    /// How callers authenticate: a bearer token.
    #[serde(rename = "securitySchemes")]
    #[schema(value_type = BTreeMap<String, Object>)]
    security_schemes: Map<String, Value>,
}

/// What the document describes.
#[derive(Serialize, ToSchema)]
pub struct Info {
    /// `idledger`.
    title: &'static str,
    /// This build's version.
    version: &'static str,
}

/// The document.
pub fn document() -> Document {
    let mut components: Components = Vec::new();
    let error = reference::<ErrorBody>(&mut components);
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for o in operations() {
        let mut parameters = path_parameters(o.path);
        if let Some(query) = o.query {
            parameters.extend(query().iter().map(to_value));
        }
        let mut responses = Map::new();
        for (status, content) in &o.answers {
            let (media, body) = match content {
                Content::Json(schema) => (
                    "application/json",
                    json!({"schema": to_value(&schema(&mut components))}),
                ),
                Content::Other(media) => (
                    *media,
                    // Text or bytes other than JSON.
                    json!({"schema": {"type": "string"}}),
                ),
            };
            // One status may carry several media types (an export's CSV or JSON Lines).
            let description = if (200..300).contains(status) {
                "Success"
            } else {
                "This operation's own answer with this status (its summary says when)"
            };
            let answer = responses
                .entry(status.to_string())
                .or_insert_with(|| json!({"description": description, "content": {}}));
            answer["content"][media] = body;
        }
        responses.insert(
            "4XX".into(),
            json!({"description": "Refused: the body says why",
                   "content": {"application/json": {"schema": to_value(&error)}}}),
        );
        // Any route can fail on this side (500, the details in the server's log), time
        // out or find a bounded resource busy (503; busy adds `Retry-After`), or have its
        // projections stopped (503). A status an operation documents itself wins.
        responses.insert(
            "5XX".into(),
            json!({"description": "Failed on this side, or unavailable for now: the body says which",
                   "content": {"application/json": {"schema": to_value(&error)}}}),
        );
        let (security, roles) = match o.access {
            Access::Open => (json!([]), "none"),
            Access::Admin => (json!([{"bearer": []}]), "admin"),
            Access::Read => (json!([{"bearer": []}]), "admin, auditor"),
            Access::Agent => (json!([{"bearer": []}]), "agent"),
        };
        let mut operation = json!({
            "summary": o.summary,
            "description": format!("Roles: {roles}."),
            "operationId": format!("{} {}", o.method, o.path),
            "parameters": parameters,
            "security": security,
            "responses": responses,
        });
        if let Some(body) = o.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": to_value(&body(&mut components))}},
            });
        }
        if let Some((media, what)) = o.raw_body {
            operation["requestBody"] = json!({
                "required": true,
                "description": what,
                "content": {media: {"schema": {"type": "string", "format": "binary"}}},
            });
        }
        paths
            .entry(o.path.to_owned())
            .or_default()
            .insert(o.method.as_str().to_lowercase(), operation);
    }
    let schemas: Map<String, Value> = components
        .into_iter()
        .map(|(name, schema)| (name, to_value(&schema)))
        .collect();
    let mut security_schemes = Map::new();
    security_schemes.insert("bearer".into(), json!({"type": "http", "scheme": "bearer"}));
    Document {
        components: DocumentComponents {
            schemas,
            security_schemes,
        },
        info: Info {
            title: "idledger",
            version: env!("CARGO_PKG_VERSION"),
        },
        openapi: "3.1.0",
        paths,
    }
}

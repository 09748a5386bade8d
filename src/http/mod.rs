//! The HTTP API (axum): the shared state, the router, and the command path every write
//! takes. One file per resource with its routes and JSON types; handlers stay thin.

mod audit;
mod auth;
mod domains;
mod error;
mod events;
mod meta;
mod rotation;
mod sync;
mod tokens;
mod users;

pub use auth::{new_token_text, token_hash, Principal};
pub use error::ApiError;
pub use events::StreamSlots;

use crate::projector::Projector;
use crate::secrets::Keyring;
use crate::store::EventLog;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use idledger_domain::decide::Rejection;
use idledger_domain::{Actor, Event, StreamId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body.
pub const BODY_LIMIT: usize = 1 << 20;
/// Longest wait for `min_position`.
const MIN_POSITION_WAIT: Duration = Duration::from_secs(5);

/// Request counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// The live projections.
    pub projector: Projector,
    /// Sealing of secrets.
    pub keyring: Arc<Keyring>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Every route's timeout.
    pub request_timeout: Duration,
    /// The sync workers.
    pub sync: crate::sync::SyncService,
    /// Where invites go.
    pub mailer: Arc<crate::invite::Mailer>,
    /// The rotation scheduler and protocol.
    pub rotation: crate::rotation::RotationService,
    /// How long a key write handed to an agent waits for its acknowledgement before it is
    /// handed out again.
    pub agent_lease: Duration,
    /// Open event streams (SSE), bounded.
    pub event_streams: Arc<events::StreamSlots>,
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Open,
    /// Admins only.
    Admin,
    /// Admins and auditors.
    Read,
    /// Workstation agents (their own keys' writes only).
    Agent,
}

/// One operation of the API: the router and the OpenAPI document are both built from the
/// list of these, so the document lists exactly what the router serves.
pub struct Operation {
    /// HTTP method.
    pub method: axum::http::Method,
    /// Path in axum's syntax (`{id}` parameters).
    pub path: &'static str,
    /// One line for the document.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    handler: axum::routing::MethodRouter<AppState>,
}

fn op(
    method: axum::http::Method,
    path: &'static str,
    access: Access,
    summary: &'static str,
    handler: axum::routing::MethodRouter<AppState>,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        access,
        handler,
    }
}

/// Every operation of the API.
pub fn operations() -> Vec<Operation> {
    use axum::http::Method as M;
    use Access::*;
    vec![
        op(
            M::GET,
            "/healthz",
            Open,
            "Liveness, log head and projector position",
            get(meta::healthz),
        ),
        op(
            M::GET,
            "/metrics",
            Open,
            "Prometheus metrics",
            get(meta::metrics),
        ),
        op(
            M::GET,
            "/v1/openapi.json",
            Open,
            "This document",
            get(meta::openapi),
        ),
        op(
            M::POST,
            "/v1/tokens",
            Admin,
            "Issue an API token (its text is shown once)",
            post(tokens::create),
        ),
        op(
            M::GET,
            "/v1/tokens",
            Admin,
            "List API tokens",
            get(tokens::list),
        ),
        op(
            M::DELETE,
            "/v1/tokens/{id}",
            Admin,
            "Revoke an API token",
            delete(tokens::revoke),
        ),
        op(
            M::POST,
            "/v1/domains",
            Admin,
            "Add a domain (optionally with credentials)",
            post(domains::create),
        ),
        op(
            M::GET,
            "/v1/domains",
            Read,
            "List domains",
            get(domains::list),
        ),
        op(
            M::GET,
            "/v1/domains/{id}",
            Read,
            "One domain",
            get(domains::get_one),
        ),
        op(
            M::PATCH,
            "/v1/domains/{id}",
            Admin,
            "Change a domain's settings",
            axum::routing::patch(domains::patch),
        ),
        op(
            M::DELETE,
            "/v1/domains/{id}",
            Admin,
            "Remove a domain",
            delete(domains::remove),
        ),
        op(
            M::PUT,
            "/v1/domains/{id}/credentials",
            Admin,
            "Save Graph credentials (sealed at once)",
            put(domains::put_credentials),
        ),
        op(
            M::DELETE,
            "/v1/domains/{id}/credentials",
            Admin,
            "Remove Graph credentials",
            delete(domains::remove_credentials),
        ),
        op(
            M::PUT,
            "/v1/domains/{id}/sso-defaults",
            Admin,
            "Set the SSO defaults applied at import",
            put(domains::put_sso_defaults),
        ),
        op(
            M::POST,
            "/v1/domains/{id}/sync",
            Admin,
            "Start a sync run (202 with run_id; ?dry_run=true answers the changes)",
            post(sync::start),
        ),
        op(
            M::GET,
            "/v1/domains/{id}/sync-runs",
            Read,
            "A domain's sync runs, newest first",
            get(sync::list),
        ),
        op(
            M::GET,
            "/v1/domains/{id}/sync-runs/{run}",
            Read,
            "One sync run with its per-user outcomes",
            get(sync::get_one),
        ),
        op(
            M::GET,
            "/v1/domains/{id}/sync-runs/{run}/outcomes",
            Read,
            "A sync run's per-user outcomes, paged",
            get(sync::run_outcomes),
        ),
        op(
            M::POST,
            "/v1/domains/{id}/sync-runs/{run}/approve",
            Admin,
            "Apply the removals a quarantined run held back",
            post(sync::approve),
        ),
        op(
            M::GET,
            "/v1/domains/{id}/candidates",
            Read,
            "Members of the sync group not yet imported",
            get(sync::candidates),
        ),
        op(
            M::POST,
            "/v1/domains/{id}/import",
            Admin,
            "Import candidates ({\"user_ids\":[…]} or {\"all\":true})",
            post(sync::import),
        ),
        op(
            M::GET,
            "/v1/users",
            Read,
            "List users (filters, paging, at / at_position)",
            get(users::list),
        ),
        op(
            M::GET,
            "/v1/users/{id}",
            Read,
            "One user (at / at_position)",
            get(users::get_one),
        ),
        op(
            M::PATCH,
            "/v1/users/{id}",
            Admin,
            "Set or clear the user's SSO override",
            axum::routing::patch(users::patch),
        ),
        op(
            M::GET,
            "/v1/users/{id}/events",
            Read,
            "The user's events",
            get(users::events),
        ),
        op(
            M::POST,
            "/v1/users/{id}/activate",
            Admin,
            "Reactivate a deactivated user",
            post(users::activate),
        ),
        op(
            M::POST,
            "/v1/users/{id}/deactivate",
            Admin,
            "Deactivate a user",
            post(users::deactivate),
        ),
        op(
            M::PUT,
            "/v1/users/{id}/key",
            Admin,
            "Assign a hardware key ({\"key_id\":…})",
            put(users::put_key),
        ),
        op(
            M::DELETE,
            "/v1/users/{id}/key",
            Admin,
            "Take the user's hardware key away",
            delete(users::delete_key),
        ),
        op(
            M::POST,
            "/v1/users/{id}/rotate",
            Admin,
            "Rotate the user's password now (202 with rotation_id)",
            post(rotation::rotate),
        ),
        op(
            M::GET,
            "/v1/users/{id}/password-history",
            Read,
            "Every rotation of the user's password (never a password)",
            get(rotation::history),
        ),
        op(
            M::POST,
            "/v1/users/{id}/password/reveal",
            Admin,
            "Break-glass: the current password, recorded with the reason",
            post(rotation::reveal),
        ),
        op(
            M::GET,
            "/v1/rotations/upcoming",
            Read,
            "Who rotates when (within_days)",
            get(rotation::upcoming),
        ),
        op(
            M::GET,
            "/v1/agent/key-writes",
            Agent,
            "Pending key writes for this agent's keys, oldest first, with the passwords",
            get(rotation::key_writes),
        ),
        op(
            M::POST,
            "/v1/agent/key-writes/{id}/ack",
            Agent,
            "Acknowledge a key write ({\"result\":\"written\"|\"failed\",\"detail\":…})",
            post(rotation::ack),
        ),
        op(
            M::POST,
            "/v1/users/{id}/invite",
            Admin,
            "Send the user an invite",
            post(sync::invite),
        ),
        op(
            M::GET,
            "/v1/users/{id}/timeline",
            Read,
            "One user's whole story in order (sync, status, SSO, keys, rotations, key writes, reveals)",
            get(audit::timeline),
        ),
        op(
            M::GET,
            "/v1/audit/exports/{kind}",
            Read,
            "Export rows (password-changes, events, users; from, to, domain, user, format)",
            get(audit::export),
        ),
        op(
            M::GET,
            "/v1/audit/exports/{kind}/manifest",
            Read,
            "The manifest of the same export query",
            get(audit::export_manifest),
        ),
        op(
            M::GET,
            "/v1/events",
            Read,
            "Envelopes from a position (with the stored record)",
            get(events::list),
        ),
        op(
            M::GET,
            "/v1/events/stream",
            Read,
            "Server-Sent Events: history, then live",
            get(events::stream),
        ),
    ]
}

/// The router with every route, the body limit, timeouts and request metrics.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for o in operations() {
        // Access is checked before any extractor reads the request, so a caller without
        // the right learns nothing from validation errors. Operations on one path merge.
        let handler = match o.access {
            Access::Open => o.handler,
            access => o.handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), access),
                check_access,
            )),
        };
        router = router.route(o.path, handler);
    }
    router
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            timeout_and_count,
        ))
        .with_state(state)
}

async fn check_access(
    State((state, access)): State<(AppState, Access)>,
    req: Request,
    next: Next,
) -> Response {
    use axum::extract::FromRequestParts;
    use axum::response::IntoResponse;
    use idledger_domain::Role;
    let (mut parts, body) = req.into_parts();
    let allowed: &[Role] = match access {
        Access::Open => return next.run(Request::from_parts(parts, body)).await,
        Access::Admin => &[Role::Admin],
        Access::Read => &[Role::Admin, Role::Auditor],
        Access::Agent => &[Role::Agent],
    };
    match Principal::from_request_parts(&mut parts, &state).await {
        Ok(who) => match who.require(allowed) {
            Ok(()) => next.run(Request::from_parts(parts, body)).await,
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// The OpenAPI 3.1 document of [`operations`].
pub fn openapi_document() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for o in operations() {
        let params: Vec<serde_json::Value> = o
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let schema = match name {
                    "kind" => serde_json::json!({"type": "string", "enum": ["password-changes", "events", "users"]}),
                    _ => serde_json::json!({"type": "string", "format": "uuid"}),
                };
                serde_json::json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        let security = match o.access {
            Access::Open => serde_json::json!([]),
            _ => serde_json::json!([{"bearer": []}]),
        };
        let roles = match o.access {
            Access::Open => "none",
            Access::Admin => "admin",
            Access::Read => "admin, auditor",
            Access::Agent => "agent",
        };
        let entry = paths
            .entry(o.path.to_owned())
            .or_insert_with(|| serde_json::json!({}));
        entry[o.method.as_str().to_lowercase()] = serde_json::json!({
            "summary": o.summary,
            "description": format!("Roles: {roles}."),
            "parameters": params,
            "security": security,
            "responses": {
                "2XX": {"description": "Success"},
                "4XX": {"description": "{\"error\":{\"code\",\"message\"}}"},
            },
        });
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {"title": "idledger", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}

/// Bounds every request's time and counts it by route and status.
async fn timeout_and_count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout("the request took too long".into()).into_response(),
    };
    let mut counts = state
        .metrics
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *counts
        .entry((route, response.status().as_u16()))
        .or_default() += 1;
    response
}

/// `min_position` (read your writes) and paging, accepted by every query.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    /// Wait (bounded) until the projections include this position.
    pub min_position: Option<u64>,
}

impl AppState {
    /// Waits for `min_position`, if given.
    pub async fn reach(&self, min_position: Option<u64>) -> Result<(), ApiError> {
        match min_position {
            None => Ok(()),
            Some(p) if p > self.log.head().position => Err(ApiError::BadRequest(format!(
                "min_position {p} is past the log's head {}",
                self.log.head().position
            ))),
            Some(p) => self
                .projector
                .wait_for(p, MIN_POSITION_WAIT)
                .await
                .map_err(|e| ApiError::Timeout(e.to_string())),
        }
    }

    /// The projections as they were at a past time or position: a replay of the log's
    /// prefix, on a blocking thread (it reads the whole prefix).
    pub async fn replay_until(
        &self,
        until: idledger_replay::Until,
    ) -> Result<idledger_projections::Projections, ApiError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            idledger_replay::fold(crate::store::envelopes(&*log, 1), until, |_| {})
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
    }

    /// The command path ([`crate::store::decide_and_append`]) with the API's errors.
    pub async fn command<S: Default>(
        &self,
        stream: &StreamId,
        actor: &Actor,
        evolve: fn(S, &Event) -> S,
        decide: impl Fn(&S) -> Result<Vec<Event>, Rejection>,
    ) -> Result<u64, ApiError> {
        Ok(
            crate::store::decide_and_append(&*self.log, stream, actor, None, evolve, decide)
                .await?,
        )
    }
}

/// Most items one page of any collection holds.
pub const MAX_PAGE: usize = 1000;

/// One page of `items`, which the caller has positioned after the request's cursor: at
/// most `limit` (1 to [`MAX_PAGE`], default 100) of them, and the cursor of the next page
/// (`cursor` of the last item taken) when more follow. Every collection pages so.
pub fn page_of<T, C: std::fmt::Display>(
    items: impl Iterator<Item = T>,
    limit: Option<usize>,
    cursor: impl Fn(&T) -> C,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!("limit: 1 to {MAX_PAGE}")));
    }
    let mut taken = Vec::new();
    for item in items {
        if taken.len() == limit {
            let next = taken.last().map(|l| cursor(l).to_string());
            return Ok((taken, next));
        }
        taken.push(item);
    }
    Ok((taken, None))
}

/// A collection page: `{"items":[…],"next":CURSOR_OR_NULL}`.
pub fn page<T: serde::Serialize>(
    items: Vec<T>,
    next: Option<String>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"items": items, "next": next}))
}

/// Serves `state` on `listener` until `shutdown`; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

//! The HTTP API (axum): the shared state, the router, and the command path every write
//! takes. One file per resource with its routes and JSON types; handlers stay thin.

mod apps;
mod audit;
mod auth;
mod backup;
mod domains;
mod error;
mod events;
pub mod listen;
mod meta;
pub mod openapi;
mod origin;
pub mod past;
mod proofs;
mod rotation;
pub mod schema;
pub mod session;
mod sync;
mod tokens;
mod users;
pub mod web;
mod workstation;

pub use auth::{credentials, new_token_text, token_hash, Principal};
pub use error::ApiError;
pub use events::StreamSlots;
pub use listen::{serve, Limits};
pub use meta::DataDirProbe;
pub use origin::PublicUrl;
pub use session::Sessions;

use crate::engine::Engine;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use idledger_domain::decide::Rejection;
use idledger_domain::{Actor, Event, StreamId, UserId};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body.
pub const BODY_LIMIT: usize = 1 << 20;
/// Longest wait for `min_position`.
const MIN_POSITION_WAIT: Duration = Duration::from_secs(5);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The log, the projections and the keyring.
    pub engine: Engine,
    /// The data dir.
    pub data_dir: Arc<std::path::Path>,
    /// Whether the data dir takes writes (`/readyz`).
    pub data_dir_probe: Arc<DataDirProbe>,
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
    /// Signed tree heads and the Merkle tree's proofs.
    pub notary: crate::notary::Notary,
    /// This server ends TLS itself (see [`AppState::secure_cookies`] for what browsers see).
    pub https: bool,
    /// Console sign-ins.
    pub sessions: Arc<session::Sessions>,
    /// Where users' browsers reach this server (invites link there); `None` until known.
    pub public_url: Option<PublicUrl>,
    /// How long an invite's enrolment link works.
    pub invite_ttl: chrono::Duration,
    /// How long a user's sign-in session lasts without a request.
    pub signin_idle: Duration,
    /// How long after signing in a user may change their sign-in methods.
    pub signin_reauth: Duration,
    /// The OpenID Connect provider's code and token lifetimes and key schedule.
    pub oidc: crate::provider::Timing,
    /// Turn of hardware key assignments: "one key serves one live user" spans users'
    /// streams (see [`AppState::in_turn`]).
    pub key_assignments: Turn,
    /// Turn of domain registrations: one name, one domain, across domains' streams.
    pub domain_names: Turn,
    /// Requests that read the whole log (a past point in time, an export's manifest, a
    /// verified upload) run on blocking threads a request's timeout cannot stop: at most
    /// [`WHOLE_LOG_READS`] at once, the rest answered 503.
    pub whole_log_reads: Arc<tokio::sync::Semaphore>,
    /// Streamed exports and backups each hold a blocking thread for as long as their client
    /// takes to read them: at most [`LOG_STREAMS`] at once, the rest answered 503.
    pub log_streams: Arc<tokio::sync::Semaphore>,
    /// The last past states asked for (`at`, `at_position`).
    pub past: Arc<past::PastStates>,
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
/// list of these, so the document lists exactly what the router serves, with the schemas
/// of the very types its handler reads and answers.
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
    /// Its query parameters (the handler's query type).
    pub query: Option<fn() -> Vec<utoipa::openapi::path::Parameter>>,
    /// Its JSON request body.
    pub body: Option<openapi::SchemaOf>,
    /// Its request body when not JSON: the media type and what the bytes are.
    pub raw_body: Option<(&'static str, &'static str)>,
    /// Its answers on success: status and what they carry.
    pub answers: Vec<(u16, openapi::Content)>,
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
        query: None,
        body: None,
        raw_body: None,
        answers: Vec::new(),
    }
}

impl Operation {
    /// Its query parameters are `Q`'s.
    fn query<Q: utoipa::IntoParams>(mut self) -> Self {
        self.query = Some(|| Q::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query)));
        self
    }

    /// Its request body is a `B` as JSON.
    fn body<B: utoipa::ToSchema>(self) -> Self {
        self.body_with(schema::reference::<B>)
    }

    /// Its request body is JSON of a composed schema (a body read in parts).
    fn body_with(mut self, schema: openapi::SchemaOf) -> Self {
        self.body = Some(schema);
        self
    }

    /// Its request body is bytes of `media`, described by `what`.
    fn raw_body(mut self, media: &'static str, what: &'static str) -> Self {
        self.raw_body = Some((media, what));
        self
    }

    /// It answers `status` with an `R` as JSON.
    fn json<R: utoipa::ToSchema>(mut self, status: u16) -> Self {
        self.answers
            .push((status, openapi::Content::Json(schema::reference::<R>)));
        self
    }

    /// It answers 200 with a page of `T`s: `{"items":[…],"next":…}`.
    fn page<T: utoipa::ToSchema>(mut self) -> Self {
        self.answers
            .push((200, openapi::Content::Json(openapi::page_of::<T>)));
        self
    }

    /// It answers `status` with other content (`text/csv`, `text/event-stream` …).
    fn other(mut self, status: u16, content_type: &'static str) -> Self {
        self.answers
            .push((status, openapi::Content::Other(content_type)));
        self
    }
}

/// Every operation of the API.
pub fn operations() -> Vec<Operation> {
    use axum::http::Method as M;
    use axum::routing::patch;
    use idledger_domain::envelope::EnvelopeView;
    use Access::*;
    vec![
        op(M::GET, "/healthz", Open, "Liveness, log head and projector position", get(meta::healthz))
            .json::<meta::Health>(200),
        op(M::GET, "/readyz", Open, "Readiness: 200 when the server can take traffic, 503 with the reasons when not", get(meta::readyz))
            .json::<meta::Readiness>(200)
            .json::<meta::Readiness>(503),
        op(M::GET, "/metrics", Open, "Metrics: Prometheus text, or OpenMetrics when Accept asks for it", get(meta::metrics))
            .other(200, "text/plain")
            .other(200, "application/openmetrics-text"),
        op(M::GET, "/v1/openapi.json", Open, "This document", get(meta::openapi))
            .json::<openapi::Document>(200),
        op(M::POST, "/v1/tokens", Admin, "Issue an API token (its text is shown once)", post(tokens::create))
            .body::<tokens::NewToken>()
            .json::<tokens::TokenCreated>(201),
        op(M::GET, "/v1/tokens", Admin, "List API tokens", get(tokens::list))
            .query::<tokens::TokensQuery>()
            .page::<tokens::Token>(),
        op(M::DELETE, "/v1/tokens/{id}", Admin, "Revoke an API token", delete(tokens::revoke))
            .json::<tokens::TokenRevoked>(200),
        op(M::POST, "/v1/domains", Admin, "Add a domain (optionally with credentials)", post(domains::create))
            .body_with(domains::new_domain_schema)
            .json::<domains::Domain>(201),
        op(M::POST, "/v1/domains/check", Admin, "Test a connection before saving it (the graph check; nothing is kept)", post(domains::check_connection))
            .body::<domains::ConnectionCheck>()
            .json::<domains::ConnectionReport>(200),
        op(M::GET, "/v1/domains", Read, "List domains", get(domains::list))
            .query::<domains::DomainsQuery>()
            .page::<domains::Domain>(),
        op(M::GET, "/v1/domains/{id}", Read, "One domain", get(domains::get_one))
            .query::<Consistency>()
            .json::<domains::Domain>(200),
        op(M::PATCH, "/v1/domains/{id}", Admin, "Change a domain's settings", patch(domains::patch))
            .body_with(domains::settings_change_schema)
            .json::<domains::Domain>(200),
        op(M::DELETE, "/v1/domains/{id}", Admin, "Remove a domain", delete(domains::remove))
            .json::<domains::Domain>(200),
        op(M::PUT, "/v1/domains/{id}/credentials", Admin, "Save Graph credentials (sealed at once)", put(domains::put_credentials))
            .body::<domains::Credentials>()
            .json::<domains::Domain>(200),
        op(M::DELETE, "/v1/domains/{id}/credentials", Admin, "Remove Graph credentials", delete(domains::remove_credentials))
            .json::<domains::Domain>(200),
        op(M::POST, "/v1/apps", Admin, "Register a web app (OpenID Connect relying party); a confidential app's secret is in this answer only", post(apps::create))
            .body::<apps::NewApp>()
            .json::<apps::App>(201),
        op(M::GET, "/v1/apps", Read, "Registered apps", get(apps::list))
            .query::<apps::AppsQuery>()
            .page::<apps::App>(),
        op(M::GET, "/v1/apps/{id}", Read, "One app", get(apps::get_one))
            .json::<apps::App>(200),
        op(M::PATCH, "/v1/apps/{id}", Admin, "Change an app's name, redirect URIs, domains or ID token algorithm", patch(apps::patch))
            .body::<apps::AppPatch>()
            .json::<apps::App>(200),
        op(M::DELETE, "/v1/apps/{id}", Admin, "Remove an app", delete(apps::remove))
            .json::<apps::App>(200),
        op(M::POST, "/v1/apps/{id}/secret", Admin, "A new client secret for a confidential app (in this answer only)", post(apps::rotate_secret))
            .json::<apps::App>(200),
        op(M::GET, "/v1/provider/signing-keys", Read, "The provider's signing keys, newest first", get(apps::keys))
            .query::<apps::KeysQuery>()
            .page::<apps::SigningKey>(),
        op(M::POST, "/v1/provider/signing-keys", Admin, "Put a new signing key in force (?alg=ES256|RS256); the previous one stays published while its tokens live", post(apps::rotate_key))
            .query::<apps::RotateKeyQuery>()
            .json::<apps::SigningKey>(201),
        op(M::GET, "/v1/domains/{id}/workstation-certificate", Read, "The domain's workstation passwordless logon certificate (?format=pem|der)", get(workstation::download))
            .query::<workstation::FormatQuery>()
            .other(200, "application/x-pem-file")
            .other(200, "application/pkix-cert"),
        op(M::POST, "/v1/domains/{id}/workstation-certificate", Admin, "Issue a new workstation logon certificate; the one in force is retired", post(workstation::replace))
            .json::<workstation::WorkstationCertificate>(201),
        op(M::GET, "/v1/domains/{id}/workstation-certificates", Read, "Every workstation logon certificate of the domain, current and retired", get(workstation::list))
            .query::<workstation::CertificatesQuery>()
            .page::<workstation::WorkstationCertificate>(),
        op(M::PUT, "/v1/domains/{id}/sso-defaults", Admin, "Set the SSO defaults applied at import", put(domains::put_sso_defaults))
            .body::<idledger_domain::SsoSettings>()
            .json::<domains::Domain>(200),
        op(M::POST, "/v1/domains/{id}/sync", Admin, "Start a sync run (202 with run_id; ?dry_run=true answers the changes)", post(sync::start))
            .query::<sync::SyncQuery>()
            .json::<sync::RunStarted>(202)
            .json::<sync::DryRunReport>(200),
        op(M::GET, "/v1/domains/{id}/sync-runs", Read, "A domain's sync runs, newest first", get(sync::list))
            .query::<sync::RunsQuery>()
            .page::<sync::SyncRun>(),
        op(M::GET, "/v1/domains/{id}/sync-runs/{run}", Read, "One sync run with its per-user outcomes", get(sync::get_one))
            .query::<Consistency>()
            .json::<sync::SyncRunDetail>(200),
        op(M::GET, "/v1/domains/{id}/sync-runs/{run}/outcomes", Read, "A sync run's per-user outcomes, paged", get(sync::run_outcomes))
            .query::<sync::OutcomesQuery>()
            .page::<sync::RunOutcome>(),
        op(M::GET, "/v1/domains/{id}/sync-runs/{run}/held-removals", Read, "The removals a quarantined run held back, paged", get(sync::held_removals))
            .query::<sync::OutcomesQuery>()
            .page::<sync::HeldRemoval>(),
        op(M::GET, "/v1/domains/{id}/sync-runs/{run}/changes", Read, "A recent dry run's changes, paged", get(sync::dry_run_changes))
            .query::<sync::ChangesQuery>()
            .page::<sync::PlannedChange>(),
        op(M::POST, "/v1/domains/{id}/sync-runs/{run}/approve", Admin, "Apply the removals a quarantined run held back", post(sync::approve))
            .json::<sync::SyncRunDetail>(200),
        op(M::GET, "/v1/domains/{id}/candidates", Read, "Members of the sync group not yet imported", get(sync::candidates))
            .query::<sync::CandidatesQuery>()
            .page::<users::User>(),
        op(M::POST, "/v1/domains/{id}/import", Admin, "Import candidates ({\"user_ids\":[…]} or {\"all\":true})", post(sync::import))
            .body::<sync::ImportBody>()
            .json::<sync::Imported>(200),
        op(M::GET, "/v1/users", Read, "List users (filters, paging, at / at_position)", get(users::list))
            .query::<users::UserQuery>()
            .page::<users::User>(),
        op(M::GET, "/v1/users/{id}", Read, "One user (at / at_position)", get(users::get_one))
            .query::<users::OneQuery>()
            .json::<users::User>(200),
        op(M::PATCH, "/v1/users/{id}", Admin, "Set or clear the user's SSO override", patch(users::patch))
            .body::<users::UserPatch>()
            .json::<users::User>(200),
        op(M::GET, "/v1/users/{id}/events", Read, "The user's events", get(users::events))
            .query::<users::EventsQuery>()
            .page::<EnvelopeView>(),
        op(M::POST, "/v1/users/{id}/activate", Admin, "Reactivate a deactivated user", post(users::activate))
            .json::<users::User>(200),
        op(M::POST, "/v1/users/{id}/deactivate", Admin, "Deactivate a user", post(users::deactivate))
            .json::<users::User>(200),
        op(M::PUT, "/v1/users/{id}/key", Admin, "Assign a hardware key ({\"key_id\":…})", put(users::put_key))
            .body::<users::KeyBody>()
            .json::<users::User>(200),
        op(M::DELETE, "/v1/users/{id}/key", Admin, "Take the user's hardware key away", delete(users::delete_key))
            .json::<users::User>(200),
        op(M::POST, "/v1/users/{id}/sign-in/unlock", Admin, "Lift the user's sign-in locks (the next lock is the shortest again)", post(users::unlock_sign_in))
            .json::<users::User>(200),
        op(M::POST, "/v1/users/{id}/key/rewrite", Admin, "Queue the user's current password for their key again (after a failed key write; 409 while a write is still owed)", post(users::write_key_again))
            .json::<users::User>(200),
        op(M::POST, "/v1/users/{id}/rotate", Admin, "Rotate the user's password now (202 with rotation_id)", post(rotation::rotate))
            .json::<rotation::RotateAccepted>(202),
        op(M::GET, "/v1/users/{id}/password-history", Read, "Every rotation of the user's password (never a password)", get(rotation::history))
            .query::<rotation::HistoryQuery>()
            .page::<rotation::PasswordChange>(),
        op(M::GET, "/v1/users/{id}/password-history/{rotation}", Read, "One rotation of the user's password (never a password)", get(rotation::one_change))
            .query::<Consistency>()
            .json::<rotation::PasswordChange>(200),
        op(M::POST, "/v1/users/{id}/password/reveal", Admin, "Break-glass: the current password, recorded with the reason", post(rotation::reveal))
            .body::<rotation::RevealBody>()
            .json::<rotation::Revealed>(200),
        op(M::GET, "/v1/rotations/upcoming", Read, "Who rotates when (within_days)", get(rotation::upcoming))
            .query::<rotation::UpcomingQuery>()
            .page::<rotation::DueRotation>(),
        op(M::GET, "/v1/rotations/recent", Read, "Every rotation, the last started first: outcomes, Graph's refusals (never a password)", get(rotation::recent))
            .query::<rotation::RecentQuery>()
            .page::<rotation::RecentRotation>(),
        op(M::GET, "/v1/agent/key-writes", Agent, "Pending key writes for this agent's keys, oldest first, with the passwords", get(rotation::key_writes))
            .query::<rotation::AgentQuery>()
            .page::<rotation::KeyWrite>(),
        op(M::POST, "/v1/agent/key-writes/{id}/ack", Agent, "Acknowledge a key write ({\"result\":\"written\"|\"failed\",\"detail\":…})", post(rotation::ack))
            .body::<rotation::AckBody>()
            .json::<rotation::Acknowledged>(200),
        op(M::POST, "/v1/users/{id}/invite", Admin, "Send the user an invite", post(sync::invite))
            .json::<sync::InviteSent>(200),
        op(M::GET, "/v1/users/{id}/timeline", Read, "One user's whole story in order (sync, status, SSO, keys, rotations, key writes, reveals)", get(audit::timeline))
            .query::<audit::TimelineQuery>()
            .page::<audit::TimelineEntry>(),
        op(M::GET, "/v1/backup", Read, "A backup of the log up to its head now, with the sealed key store (never the master key): what `idledger backup` writes; with `from`, an increment for a `backup --follow` copy", get(backup::download))
            .query::<backup::BackupQuery>()
            .other(200, "application/octet-stream"),
        op(M::GET, "/v1/audit/exports/{kind}", Read, "Export rows (password-changes, events, users, sign-ins; from, to, domain, user, format)", get(audit::export))
            .query::<audit::ExportParams>()
            .other(200, "text/csv")
            .other(200, "application/x-ndjson"),
        op(M::GET, "/v1/audit/exports/{kind}/manifest", Read, "The manifest of the same export query", get(audit::export_manifest))
            .query::<audit::ExportParams>()
            .json::<crate::audit::Manifest>(200),
        op(M::POST, "/v1/audit/verify-export", Read, "Verify an export against the log (body: its manifest as one JSON line, then the file)", post(audit::verify_upload))
            .raw_body("application/octet-stream", "The export's manifest as one line of JSON, a newline, then the export file's bytes exactly as downloaded.")
            .json::<crate::audit::export::ExportCheck>(200),
        op(M::GET, "/v1/events", Read, "Envelopes from a position (with the stored record)", get(events::list))
            .query::<events::EventsQuery>()
            .page::<events::LoggedEvent>(),
        op(M::GET, "/v1/events/stream", Read, "Server-Sent Events: history, then live", get(events::stream))
            .query::<events::StreamQuery>()
            .other(200, "text/event-stream"),
        op(M::GET, "/v1/log/public-key", Read, "The log's public key (C2SP verifier key)", get(proofs::public_key))
            .other(200, "text/plain"),
        op(M::GET, "/v1/log/sth", Read, "The latest signed tree head (C2SP checkpoint; ?format=json)", get(proofs::latest))
            .query::<proofs::HeadQuery>()
            .other(200, "text/plain")
            .json::<proofs::SignedHead>(200),
        op(M::GET, "/v1/log/sth/{tree_size}", Read, "The signed tree head kept for this tree size", get(proofs::at_size))
            .query::<proofs::HeadQuery>()
            .other(200, "text/plain")
            .json::<proofs::SignedHead>(200),
        op(M::GET, "/v1/log/sths", Read, "Every signed tree head kept, by tree size", get(proofs::heads))
            .query::<proofs::HeadsQuery>()
            .page::<proofs::SignedHead>(),
        op(M::GET, "/v1/log/proof/inclusion", Read, "RFC 9162 inclusion proof of a position in a tree size", get(proofs::inclusion))
            .query::<proofs::InclusionQuery>()
            .json::<proofs::InclusionProof>(200),
        op(M::GET, "/v1/log/proof/consistency", Read, "RFC 9162 consistency proof between two tree sizes", get(proofs::consistency))
            .query::<proofs::ConsistencyQuery>()
            .json::<proofs::ConsistencyProof>(200),
    ]
}

/// The router with every API route and the body limit (the request timeout is the whole
/// app's: [`timeout`]).
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for o in operations() {
        let declared = Declared {
            query: o.query.is_some(),
            body: o.body.is_some() || o.raw_body.is_some(),
        };
        let handler = o
            .handler
            .route_layer(middleware::from_fn_with_state(declared, refuse_undeclared));
        // Access is checked before any extractor reads the request, so a caller without
        // the right learns nothing from validation errors. Operations on one path merge.
        let handler = match o.access {
            Access::Open => handler,
            access => handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), access),
                check_access,
            )),
        };
        router = router.route(o.path, handler);
    }
    router
        .fallback(|| async { ApiError::NotFound("route".into()) })
        // After every route: it is set on the routes there are.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::map_response(api_headers))
        .with_state(state)
}

/// What an operation takes besides its path.
#[derive(Clone, Copy)]
struct Declared {
    query: bool,
    body: bool,
}

/// A query or a body an operation does not take is refused, not ignored: a `dry_run`
/// sent where the route has none would otherwise do the real thing.
async fn refuse_undeclared(State(d): State<Declared>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    use axum::response::IntoResponse;
    if !d.query && req.uri().query().is_some_and(|q| !q.is_empty()) {
        return ApiError::BadRequest("this route takes no query parameters".into()).into_response();
    }
    let no_body =
        || ApiError::BadRequest("this route takes no request body".into()).into_response();
    if d.body {
        return next.run(req).await;
    }
    let h = req.headers();
    let sized = h
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0");
    if sized || h.contains_key(axum::http::header::TRANSFER_ENCODING) {
        return no_body();
    }
    // HTTP/2 has no Transfer-Encoding and need not send a length: a body streamed there
    // shows only in the body itself. Read to its end, taking nothing (a client that
    // closes its stream with an empty frame sent no body).
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, 0).await {
        Ok(empty) if empty.is_empty() => {
            next.run(Request::from_parts(parts, axum::body::Body::empty()))
                .await
        }
        _ => no_body(),
    }
}

/// Every API answer is `nosniff`, and `no-store` unless its route says otherwise: answers
/// carry people's details and some carry secrets (a revealed password, a new client
/// secret or token), which no browser cache or proxy in between may keep.
async fn api_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    h.entry(axum::http::header::CACHE_CONTROL)
        .or_insert(axum::http::HeaderValue::from_static("no-store"));
    response
}

async fn check_access(
    State((state, access)): State<(AppState, Access)>,
    req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    use idledger_domain::Role;
    let (mut parts, body) = req.into_parts();
    let allowed: &[Role] = match access {
        Access::Open => return next.run(Request::from_parts(parts, body)).await,
        Access::Admin => &[Role::Admin],
        Access::Read => &[Role::Admin, Role::Auditor],
        Access::Agent => &[Role::Agent],
    };
    let who = match Principal::of_request(&parts, &state) {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = who.require(allowed) {
        return e.into_response();
    }
    who.note_use(&parts, &state);
    parts.extensions.insert(who);
    next.run(Request::from_parts(parts, body)).await
}

/// Once the projections have stopped (a record they cannot fold), every request but
/// liveness, readiness and metrics answers 503: tokens, sessions and every check are read
/// from the projections, and a token revoked after the stop would keep working. A layer
/// over the whole app: API, console and sign-in pages.
pub async fn refuse_without_projections(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let open = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if !open && state.engine.projector.stopped() {
        return ApiError::Unavailable(format!(
            "the projections stopped at position {}; see the server's log",
            state.engine.projector.position()
        ))
        .into_response();
    }
    next.run(req).await
}

/// Every request of the app (API, console, sign-in) ends within `request_timeout`, body
/// read included: the connection layer bounds only the head, and a body that never comes
/// would hold its connection for ever, with no credential needed.
pub async fn timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout("the request took too long".into()).into_response(),
    }
}

/// Records every request's duration by method, route template and status class (a layer
/// over the whole app: API, console and sign-in pages).
pub async fn record_request(req: Request, next: Next) -> Response {
    // Off, it costs nothing: `bench api` compares against that.
    if !crate::metrics::on() {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    crate::metrics::http_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `min_position` (read your writes) and paging, accepted by every query.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    /// Wait (bounded) until the projections include this position.
    pub min_position: Option<u64>,
}

/// One at a time, for a check that spans streams and the append it allows.
pub type Turn = Arc<tokio::sync::Mutex<()>>;

/// A place among the [`WHOLE_LOG_READS`] or the [`LOG_STREAMS`], held until the read is done.
pub struct ReadPlace {
    _held: tokio::sync::OwnedSemaphorePermit,
}

impl ReadPlace {
    /// A free one of `places`, or 503 saying that `busy`.
    fn take(
        places: &Arc<tokio::sync::Semaphore>,
        busy: std::fmt::Arguments<'_>,
    ) -> Result<ReadPlace, ApiError> {
        places
            .clone()
            .try_acquire_owned()
            .map(|held| ReadPlace { _held: held })
            .map_err(|_| ApiError::Unavailable(format!("{busy}; retry shortly")))
    }
}

impl AppState {
    /// Runs `f` alone among the callers of `turn`, once the projections hold every append
    /// made so far (the last caller's included), so that what `f` checks there cannot
    /// change before its own append. A task of its own holds the turn: a request that
    /// times out or goes away must not let the next caller in while its append may still
    /// land.
    pub async fn in_turn<T, F, Fut>(&self, turn: &Turn, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(AppState) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
        T: Send + 'static,
    {
        let held = turn.clone().lock_owned().await;
        let s = self.clone();
        tokio::spawn(async move {
            let _held = held;
            s.reach(Some(s.engine.log.head().position)).await?;
            f(s).await
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    /// Cookies are `Secure` (and `__Host-` named) when browsers reach us over HTTPS: this
    /// server speaks it, or its public origin is HTTPS (TLS ended at a proxy in front).
    pub fn secure_cookies(&self) -> bool {
        self.https || self.public_url.as_ref().is_some_and(|p| p.https)
    }

    /// Waits for `min_position`, if given.
    pub async fn reach(&self, min_position: Option<u64>) -> Result<(), ApiError> {
        match min_position {
            None => Ok(()),
            Some(p) if p > self.engine.log.head().position => Err(ApiError::BadRequest(format!(
                "min_position {p} is past the log's head {}",
                self.engine.log.head().position
            ))),
            Some(p) => self
                .engine
                .projector
                .wait_for(p, MIN_POSITION_WAIT)
                .await
                .map_err(|e| ApiError::Timeout(e.to_string())),
        }
    }

    /// The projections as they were at a past time or position: a replay of the log's
    /// prefix on a blocking thread, from the nearest past state kept before it (see
    /// [`past`]), or a kept state itself. A point not yet reached is refused: its answer
    /// would change as the log grows, and a past state does not.
    pub async fn replay_until(
        &self,
        who: &Principal,
        until: idledger_replay::Until,
    ) -> Result<Arc<idledger_replay::Prefix>, ApiError> {
        self.reached(until).await?;
        if let Some(state) = self.past.kept(until) {
            // Answered at once, to a caller still live (revoked while it waited above?).
            who.live(self)?;
            return Ok(state);
        }
        // The place first: a kept state moved out for the fold must have one to go to.
        let place = self.whole_log_place()?;
        let start = match self.past.start(until) {
            past::Start::Kept(state) => {
                who.live(self)?;
                return Ok(state);
            }
            start => start,
        };
        let log = self.engine.log.clone();
        let past = self.past.clone();
        // The copy of a kept state and the drop of the one pushed out each take as long as
        // a few thousand records' fold: both stay on the blocking thread.
        self.whole_log_read_in(who, place, move || {
            let anchor = start.is_scratch();
            let base = start.base();
            let from = base.position() + 1;
            let state =
                Arc::new(base.extend(crate::store::envelopes(&*log, from), until, |_| {})?);
            past.keep(state.clone(), anchor);
            Ok(state)
        })
        .await?
    }

    /// Refuses a past point the log has not reached yet: its answer would change as the
    /// log grows, and a past state does not. Returns once every record committed by a
    /// point in time is readable.
    pub async fn reached(&self, until: idledger_replay::Until) -> Result<(), ApiError> {
        let head = self.engine.log.head().position;
        match until {
            idledger_replay::Until::Position(p) if p > head => Err(ApiError::BadRequest(format!(
                "at_position {p} is past the log's head {head}"
            ))),
            idledger_replay::Until::Time(t) if t > chrono::Utc::now() => Err(ApiError::BadRequest(
                "at is in the future: leave it out for the state now".into(),
            )),
            idledger_replay::Until::Time(_) => {
                // A group is stamped when the writer opens it and readable once flushed:
                // events recorded at or before `at` may still be on their way. Every one
                // was taken before this marker, so after it the prefix is whole.
                self.engine.log.barrier().await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One user as they were at `at` or `at_position`, or as they are now: a fold of their
    /// stream alone (see [`idledger_replay::fold_user`]; a few records, where the log's
    /// prefix may be millions), or a kept past state that is that point. A log whose commit
    /// times went back (an earlier build's) is folded from the start to a time instead.
    /// Only the user's own part of the answer is filled in.
    pub async fn user_at(
        &self,
        who: &Principal,
        user: UserId,
        at: Option<chrono::DateTime<chrono::Utc>>,
        at_position: Option<u64>,
    ) -> Result<ProjectionsAt<'_>, ApiError> {
        let Some(until) = point_in_time(at, at_position)? else {
            return Ok(ProjectionsAt::Live(self.engine.projector.read()));
        };
        if matches!(until, idledger_replay::Until::Time(_)) && !self.engine.log.times_ordered() {
            return Ok(ProjectionsAt::Past(self.replay_until(who, until).await?));
        }
        self.reached(until).await?;
        if let Some(state) = self.past.kept(until) {
            who.live(self)?;
            return Ok(ProjectionsAt::Past(state));
        }
        let log = self.engine.log.clone();
        let state = tokio::task::spawn_blocking(move || {
            let stream = StreamId::user(user);
            idledger_replay::fold_user(crate::store::stream_envelopes(&*log, &stream, 1), until)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        who.live(self)?;
        Ok(ProjectionsAt::Past(Arc::new(state)))
    }

    /// The projections to answer from: as they were at `at` or `at_position` when one is
    /// given (see [`AppState::replay_until`]), else as they are now.
    pub async fn projections_at(
        &self,
        who: &Principal,
        at: Option<chrono::DateTime<chrono::Utc>>,
        at_position: Option<u64>,
    ) -> Result<ProjectionsAt<'_>, ApiError> {
        Ok(match point_in_time(at, at_position)? {
            Some(until) => ProjectionsAt::Past(self.replay_until(who, until).await?),
            None => ProjectionsAt::Live(self.engine.projector.read()),
        })
    }

    /// Runs `work`, a read of the whole log, on a blocking thread, if fewer than
    /// [`WHOLE_LOG_READS`] run; it holds its place until done, even if the request is gone.
    /// Its result goes only to a caller still live after it: such a read takes a while,
    /// and a token revoked (or a console session ended) meanwhile gets none of it.
    pub async fn whole_log_read<T: Send + 'static>(
        &self,
        who: &Principal,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let place = self.whole_log_place()?;
        self.whole_log_read_in(who, place, work).await
    }

    /// A place among the [`WHOLE_LOG_READS`], taken before a read's input arrives (an
    /// upload to check), so that input is never taken in when the read could not run.
    pub fn whole_log_place(&self) -> Result<ReadPlace, ApiError> {
        ReadPlace::take(
            &self.whole_log_reads,
            format_args!("{WHOLE_LOG_READS} reads of the whole log are running"),
        )
    }

    /// A place among the [`LOG_STREAMS`], for a streamed export or backup to hold until its
    /// body is written.
    pub fn log_stream_place(&self) -> Result<ReadPlace, ApiError> {
        ReadPlace::take(
            &self.log_streams,
            format_args!("{LOG_STREAMS} exports and backups are streaming"),
        )
    }

    /// [`AppState::whole_log_read`] in a place already taken.
    pub async fn whole_log_read_in<T: Send + 'static>(
        &self,
        who: &Principal,
        place: ReadPlace,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let done = tokio::task::spawn_blocking(move || {
            let done = work();
            drop(place);
            done
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        who.live(self)?;
        Ok(done)
    }

    /// The command path ([`crate::store::decide_and_append`]) with the API's errors.
    pub async fn command<S: Default + Clone + Send + Sync + 'static>(
        &self,
        stream: &StreamId,
        actor: &Actor,
        evolve: fn(S, &Event) -> S,
        decide: impl Fn(&S) -> Result<Vec<Event>, Rejection>,
    ) -> Result<u64, ApiError> {
        Ok(
            crate::store::decide_and_append(&*self.engine.log, stream, actor, None, evolve, decide)
                .await?,
        )
    }
}

/// HTML-escapes text for an element's content or a quoted attribute (the console's and
/// sign-in's pages put every value from a request or the log through it).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whole-log reads at once (see [`AppState::whole_log_reads`]).
pub const WHOLE_LOG_READS: usize = 2;

/// Streamed exports and backups at once (see [`AppState::log_streams`]).
pub const LOG_STREAMS: usize = 8;

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
    let limit = page_limit(limit)?;
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

/// Which end of a story a page starts from.
#[derive(Clone, Copy, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Oldest,
    Newest,
}

/// A page's size: `limit`, or 100; 1 to [`MAX_PAGE`].
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!("limit: 1 to {MAX_PAGE}")));
    }
    Ok(limit)
}

/// A collection page: `{"items":[…],"next":CURSOR_OR_NULL}`.
#[derive(serde::Serialize)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// A collection page as an answer.
pub fn page<T: serde::Serialize>(items: Vec<T>, next: Option<String>) -> axum::Json<Page<T>> {
    axum::Json(Page { items, next })
}

/// `at` / `at_position`: which past state a request asks for, if any.
pub(crate) fn point_in_time(
    at: Option<chrono::DateTime<chrono::Utc>>,
    at_position: Option<u64>,
) -> Result<Option<idledger_replay::Until>, ApiError> {
    use idledger_replay::Until;
    match (at, at_position) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "at, at_position: give one, not both".into(),
        )),
        (Some(t), None) => Ok(Some(Until::Time(t))),
        (None, Some(p)) => Ok(Some(Until::Position(p))),
        (None, None) => Ok(None),
    }
}

/// Projections a request answers from: a past state, or the live ones (read-locked while
/// held, so never across an `.await`).
pub enum ProjectionsAt<'a> {
    Past(Arc<idledger_replay::Prefix>),
    Live(std::sync::RwLockReadGuard<'a, idledger_projections::Projections>),
}

impl ProjectionsAt<'_> {
    /// True for a past state.
    pub fn is_past(&self) -> bool {
        matches!(self, ProjectionsAt::Past(_))
    }
}

impl std::ops::Deref for ProjectionsAt<'_> {
    type Target = idledger_projections::Projections;
    fn deref(&self) -> &Self::Target {
        match self {
            ProjectionsAt::Past(prefix) => &prefix.projections,
            ProjectionsAt::Live(live) => live,
        }
    }
}

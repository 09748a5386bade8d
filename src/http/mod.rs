//! The HTTP API (axum): the shared state, the router, and the command path every write
//! takes. One file per resource with its routes and JSON types; handlers stay thin.

mod auth;
mod domains;
mod error;
mod events;
mod meta;
mod tokens;
mod users;

pub use auth::{new_token_text, token_hash, Principal};
pub use error::ApiError;

use crate::projector::Projector;
use crate::secrets::Keyring;
use crate::store::{AppendRequest, EventLog, ExpectedVersion, SledEventLog};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use idledger_domain::decide::Rejection;
use idledger_domain::{Actor, Event, ProposedEvent, StreamId};
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
    pub log: Arc<SledEventLog>,
    /// The live projections.
    pub projector: Projector,
    /// Sealing of secrets.
    pub keyring: Arc<Keyring>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Every route's timeout.
    pub request_timeout: Duration,
}

/// The router with every route, the body limit, timeouts and request metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/metrics", get(meta::metrics))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route("/v1/domains", post(domains::create).get(domains::list))
        .route(
            "/v1/domains/{id}",
            get(domains::get_one)
                .patch(domains::patch)
                .delete(domains::remove),
        )
        .route(
            "/v1/domains/{id}/credentials",
            put(domains::put_credentials).delete(domains::remove_credentials),
        )
        .route(
            "/v1/domains/{id}/sso-defaults",
            put(domains::put_sso_defaults),
        )
        .route("/v1/users", get(users::list))
        .route("/v1/users/{id}", get(users::get_one).patch(users::patch))
        .route("/v1/users/{id}/events", get(users::events))
        .route("/v1/users/{id}/activate", post(users::activate))
        .route("/v1/users/{id}/deactivate", post(users::deactivate))
        .route("/v1/events", get(events::list))
        .route("/v1/events/stream", get(events::stream))
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            timeout_and_count,
        ))
        .with_state(state)
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
        tokio::task::spawn_blocking(move || idledger_replay::fold(log.envelopes(1), until, |_| {}))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::from)
    }

    /// The command path: fold `stream` with `evolve`, `decide`, append at exactly the
    /// version folded. A concurrent change is retried once on fresh state. Returns the
    /// position of the last event appended (the log's head when nothing changed).
    pub async fn command<S: Default>(
        &self,
        stream: &StreamId,
        actor: &Actor,
        evolve: fn(S, &Event) -> S,
        decide: impl Fn(&S) -> Result<Vec<Event>, Rejection>,
    ) -> Result<u64, ApiError> {
        for attempt in 0..2 {
            let past = self.log.read_stream(stream, 1, usize::MAX)?;
            let version = past.last().map_or(0, |e| e.version);
            let state = past.iter().fold(S::default(), |s, e| evolve(s, &e.event));
            let events = decide(&state)?;
            if events.is_empty() {
                return Ok(self.log.head().position);
            }
            let proposed = events
                .into_iter()
                .map(|e| ProposedEvent::new(uuid::Uuid::now_v7(), actor.clone(), e))
                .collect();
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            match self
                .log
                .append(AppendRequest::new(stream.clone(), expected, proposed))
                .await
            {
                Ok(done) => return Ok(done.last_position),
                Err(crate::store::AppendError::WrongExpectedVersion { .. }) if attempt == 0 => {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(
            "the resource changed meanwhile; retry".into(),
        ))
    }
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

//! Auditors over the API: exports with the same rows and columns as `idledger export`,
//! their manifests, and one user's timeline.

use super::auth::Principal;
use super::error::{ApiError, ApiQuery, IdPath};
use super::{page, AppState};
use crate::cli::CliError;
use crate::export::{manifest, query_of, records_of_log, run_export, HashedWriter};
use crate::store::EventLog;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::{Role, StreamId, UserId};
use idledger_replay::ExportFormat;
use serde::Deserialize;
use serde_json::{json, Value};

/// `GET /v1/audit/exports/{kind}` query.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    domain: Option<uuid::Uuid>,
    user: Option<uuid::Uuid>,
    format: Option<String>,
}

/// Makes the export on a blocking thread, over the server's own log as committed now.
async fn make(
    s: &AppState,
    kind: String,
    q: ExportParams,
) -> Result<(Vec<u8>, Value, ExportFormat), ApiError> {
    let format = q.format.clone().unwrap_or_else(|| "csv".into());
    let (query, format) =
        query_of(&kind, &format, q.from, q.to, q.domain, q.user).map_err(ApiError::BadRequest)?;
    let log = s.log.clone();
    let head = log.head().position;
    tokio::task::spawn_blocking(move || {
        let mut body = HashedWriter::new(Vec::new());
        let summary = run_export(
            records_of_log(&log),
            &query,
            format,
            Some(head),
            &mut body,
            None,
            |_| {},
        )?;
        let (sha, body) = body.finish();
        Ok::<_, CliError>((body, manifest(&query, format, &summary, &sha), format))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))
}

/// The rows of an export (CSV by default, or `format=jsonl`).
pub async fn export(
    State(s): State<AppState>,
    who: Principal,
    Path(kind): Path<String>,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    let (body, m, format) = make(&s, kind, q).await?;
    let content_type = match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Jsonl => "application/x-ndjson",
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::HeaderName::from_static("x-idledger-log-position"),
                m["log_position"].to_string(),
            ),
        ],
        body,
    ))
}

/// The manifest of the same query.
pub async fn export_manifest(
    State(s): State<AppState>,
    who: Principal,
    Path(kind): Path<String>,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    let (_, m, _) = make(&s, kind, q).await?;
    Ok(Json(m))
}

/// One user's whole story, in order: every event of their stream with its position, time,
/// actor and payload (sealed secrets as `"sealed"`).
pub async fn timeline(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    let stream = StreamId::user(UserId(id));
    let events = s.log.read_stream(&stream, 1, usize::MAX)?;
    if events.is_empty() {
        return Err(ApiError::NotFound("user".into()));
    }
    let items: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "position": e.position,
                "recorded_at": e.recorded_at,
                "kind": e.event.kind(),
                "what": what(&e.event),
                "actor": e.actor.to_string(),
                "correlation_id": e.correlation_id,
                "payload": e.event.payload_json(),
                "hash": e.hash.to_hex(),
            })
        })
        .collect();
    Ok(page(items, None))
}

/// The area of the story an event belongs to.
fn what(e: &idledger_domain::Event) -> &'static str {
    use idledger_domain::Event as E;
    match e {
        E::UserDiscovered(_)
        | E::MemberLeftSyncGroup(_)
        | E::MemberRejoinedSyncGroup(_)
        | E::UserAttributesChanged(_)
        | E::RotationGroupJoined(_)
        | E::RotationGroupLeft(_) => "sync",
        E::UserImported(_)
        | E::UserKept(_)
        | E::UserDeactivated(_)
        | E::UserDeleted(_)
        | E::UserReactivated(_) => "status",
        E::UserSsoOverrideSet(_) => "sso",
        E::KeyAssigned(_) | E::KeyUnassigned(_) => "key",
        E::InviteSent(_) => "invite",
        E::RotationStarted(_)
        | E::RotationRetried(_)
        | E::RotationSucceeded(_)
        | E::RotationFailed(_) => "rotation",
        E::KeyWriteQueued(_)
        | E::KeyWriteDelivered(_)
        | E::KeyWriteConfirmed(_)
        | E::KeyWriteFailed(_)
        | E::KeyWriteSuperseded(_) => "key_write",
        E::PasswordRevealed(_) => "reveal",
        _ => "other",
    }
}

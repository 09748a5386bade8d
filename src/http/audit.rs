//! Auditors over the API: exports with the same rows and columns as `idledger export`,
//! their manifests, and one user's timeline.

use super::auth::Principal;
use super::error::{ApiError, ApiQuery, IdPath};
use super::{page, AppState};
use crate::audit::{query_of, records_of_log, run_export, HashedWriter, Manifest, RowSink};
use crate::error::Error;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::{Role, StreamId, UserId};
use idledger_replay::{ExportFormat, ExportQuery};
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

/// The query and format of a request.
fn query(kind: &str, q: &ExportParams) -> Result<(ExportQuery, ExportFormat), ApiError> {
    let format = q.format.as_deref().unwrap_or("csv");
    query_of(kind, format, q.from, q.to, q.domain, q.user).map_err(ApiError::BadRequest)
}

/// Rows handed to the response body in large pieces as they are made.
struct BodySink {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
}

/// Bytes per piece of the response body.
const BODY_PIECE: usize = 256 << 10;

impl BodySink {
    fn send(&mut self) -> std::io::Result<()> {
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(BODY_PIECE));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl RowSink for BodySink {
    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BODY_PIECE {
            self.send()?;
        }
        Ok(())
    }
}

/// The rows of an export (CSV by default, or `format=jsonl`), streamed as they are made
/// over the server's own log as committed when the request came. A failure midway aborts
/// the body, so a client never takes a cut-off export for a whole one.
pub async fn export(
    State(s): State<AppState>,
    who: Principal,
    Path(kind): Path<String>,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    let (query, format) = query(&kind, &q)?;
    let log = s.log.clone();
    let head = log.head().position;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut body = BodySink {
            buf: Vec::with_capacity(BODY_PIECE),
            tx: tx.clone(),
        };
        let done = run_export(
            records_of_log(&*log),
            &query,
            format,
            Some(head),
            &mut body,
            None,
            |_| {},
        )
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|_| body.send());
        if let Err(e) = done {
            tracing::warn!(error = %e, "export stopped");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let content_type = match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Jsonl => "application/x-ndjson",
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(content_type),
    );
    if q.to.is_none() {
        // Without `to` the export reads the log up to its head now: the manifest's
        // `log_position`. (With `to`, only the manifest knows.)
        headers.insert(
            header::HeaderName::from_static("x-idledger-log-position"),
            axum::http::HeaderValue::from(head),
        );
    }
    // A revoked token aborts the body (an error, so the cut export is not taken whole).
    let revoked = Err(std::io::Error::other("the token was revoked"));
    let pieces = super::auth::until_revoked(Box::pin(pieces), s.clone(), who, Some(revoked));
    Ok((headers, Body::from_stream(pieces)))
}

/// The manifest of the same query (the rows are made again and hashed, not kept).
pub async fn export_manifest(
    State(s): State<AppState>,
    who: Principal,
    Path(kind): Path<String>,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    let (query, format) = query(&kind, &q)?;
    let log = s.log.clone();
    let head = log.head().position;
    let m = tokio::task::spawn_blocking(move || {
        let mut rows = HashedWriter::new(std::io::sink());
        let summary = run_export(
            records_of_log(&*log),
            &query,
            format,
            Some(head),
            &mut rows,
            None,
            |_| {},
        )?;
        let (sha, _) = rows.finish();
        Ok::<_, Error>(Manifest::new(&query, format, &summary, &sha, Utc::now()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(m))
}

/// One user's whole story, in order: every event of their stream with its position, time,
/// actor and payload (sealed secrets as `"sealed"`).
pub async fn timeline(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<TimelineQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    s.reach(q.min_position).await?;
    let stream = StreamId::user(UserId(id));
    if s.log.stream_version(&stream) == 0 {
        return Err(ApiError::NotFound("user".into()));
    }
    // The cursor is the stream version of the last event sent.
    let from = q.after.unwrap_or(0).saturating_add(1);
    let wanted = q.limit.unwrap_or(100).min(super::MAX_PAGE);
    let events = s.log.read_stream(&stream, from, wanted.saturating_add(1))?;
    let (events, next) = super::page_of(events.into_iter(), q.limit, |e| e.version)?;
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
    Ok(page(items, next))
}

/// `GET /v1/users/{id}/timeline` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    limit: Option<usize>,
    after: Option<u64>,
    min_position: Option<u64>,
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

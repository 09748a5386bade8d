//! Auditors over the API: exports with the same rows and columns as `idledger export`,
//! their manifests, and one user's timeline.

use super::auth::Principal;
use super::error::{ApiError, ApiPath, ApiQuery, IdPath};
use super::{page, AppState, Page};
use crate::audit::{
    parse_kind, query_of, records_of_log, run_export, HashedWriter, Manifest, RowSink,
};
use crate::error::Error;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::{StreamId, UserId};
use idledger_replay::{ExportFormat, ExportQuery, Until};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET /v1/audit/exports/{kind}` query.
#[derive(Deserialize, Clone, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Events recorded at or after this time (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Events recorded at or before this time; for `users`, the state at this time.
    to: Option<DateTime<Utc>>,
    /// Only this domain.
    domain: Option<uuid::Uuid>,
    /// Only this user.
    user: Option<uuid::Uuid>,
    /// `csv` (the default) or `jsonl`.
    format: Option<ExportFormat>,
    /// Read the log only up to this position (1 to the head): the export's
    /// `x-idledger-log-position`, so that a manifest asked for later describes that very
    /// file while the log grows. Default: the head when the request comes. With `to`,
    /// the range's end says where the export stops, and this is only checked.
    at_position: Option<u64>,
}

/// Where an export reads to: `at_position`, or the head now.
///
/// A closed range (`to`) is read to the head whatever `at_position` says: stopping
/// before the range's last record would make a file that `verify-export` rightly finds
/// incomplete, and past its end the export stops by itself.
async fn read_to(s: &AppState, q: &ExportParams) -> Result<u64, ApiError> {
    if q.to.is_some() {
        // A group is stamped when it opens and readable once flushed: records stamped
        // within the range may still be on their way however long ago it closed.
        s.engine.log.barrier().await;
    }
    let head = s.engine.log.head().position;
    match q.at_position {
        Some(p) if p > head => Err(ApiError::BadRequest(format!(
            "at_position: {p} is past the log's head ({head})"
        ))),
        Some(0) if head > 0 => Err(ApiError::BadRequest(
            "at_position: 0 reads none of the log; give 1 to the head, or leave it out".into(),
        )),
        Some(_) if q.to.is_some() => Ok(head),
        Some(p) => Ok(p),
        None => Ok(head),
    }
}

/// The query and format of a request.
fn query(kind: &str, q: &ExportParams) -> Result<(ExportQuery, ExportFormat), ApiError> {
    let kind = parse_kind(kind).map_err(ApiError::BadRequest)?;
    let query = query_of(kind, q.from, q.to, q.domain, q.user, chrono::Utc::now())
        .map_err(ApiError::BadRequest)?;
    Ok((query, q.format.unwrap_or(ExportFormat::Csv)))
}

/// Rows handed to the response body in large pieces as they are made.
pub(super) struct BodySink {
    pub(super) buf: Vec<u8>,
    pub(super) tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
}

/// Bytes per piece of the response body.
pub(super) const BODY_PIECE: usize = 256 << 10;

/// A backup's bytes are a body too.
impl std::io::Write for BodySink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.row(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl BodySink {
    pub(super) fn send(&mut self) -> std::io::Result<()> {
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
    ApiPath(kind): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> Result<impl IntoResponse, ApiError> {
    let (query, format) = query(&kind, &q)?;
    let head = read_to(&s, &q).await?;
    let place = s.log_stream_place()?;
    let log = s.engine.log.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let _place = place;
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
    let (content_type, ext) = match format {
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        ExportFormat::Jsonl => ("application/x-ndjson", "jsonl"),
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(content_type),
    );
    // A file to keep, never a page to render: its cells are Entra's values.
    let disposition = format!("attachment; filename=\"idledger-{kind}.{ext}\"");
    if let Ok(v) = axum::http::HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
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
    ApiPath(kind): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> Result<(axum::http::HeaderMap, Json<Manifest>), ApiError> {
    let (query, format) = query(&kind, &q)?;
    let head = read_to(&s, &q).await?;
    let log = s.engine.log.clone();
    let m = s
        .whole_log_read(&who, move || {
            let mut rows = HashedWriter::new(std::io::sink());
            let summary = run_export(
                records_of_log(&*log),
                &query,
                format,
                Some(head),
                &mut rows,
                None,
                |_| {},
            )?
            .summary;
            let (sha, _) = rows.finish();
            Ok::<_, Error>(Manifest::new(&query, format, &summary, &sha, Utc::now()))
        })
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut m = m;
    if m.log_position > 0 {
        // The first head the server keeps over the tree the export read, with the proof
        // that tree is its prefix: one of the heads auditors already hold, not one made
        // for this manifest alone. Signing one may flush the log to the device first: not
        // on a runtime thread.
        let (notary, size) = (s.notary.clone(), m.log_position);
        let covering = tokio::task::spawn_blocking(move || notary.covering(size))
            .await
            .map_err(|e| ApiError::Internal(format!("signing the manifest's head: {e}")))??;
        let (head, proof) = covering.ok_or_else(|| {
            ApiError::Unavailable(
                "no signed tree head covers the export yet: the log's tree trails its head; try again shortly".into(),
            )
        })?;
        m.signed_head = Some(crate::audit::proofs::manifest_head(&head, &proof));
    }
    // Kept beside the export it describes, not shown in place of the console.
    let mut headers = axum::http::HeaderMap::new();
    let ext = match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Jsonl => "jsonl",
    };
    let disposition = format!("attachment; filename=\"idledger-{kind}.{ext}.manifest.json\"");
    if let Ok(v) = axum::http::HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok((headers, Json(m)))
}

/// One user's whole story, in order (or newest first): every event of their stream with
/// its position, time, actor and payload (sealed secrets as `"sealed"`).
pub async fn timeline(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<TimelineQuery>,
) -> Result<Json<Page<TimelineEntry>>, ApiError> {
    s.reach(q.min_position).await?;
    let stream = StreamId::user(UserId(id));
    let point = super::point_in_time(q.at, q.at_position)?;
    if let Some(until) = point {
        // Every event committed by `at` is readable after this (the version is read after).
        s.reached(until).await?;
    }
    let mut version = s.engine.log.stream_version(&stream);
    if version == 0 {
        return Err(ApiError::NotFound("user".into()));
    }
    if let Some(until) = point {
        let until = match until {
            // Where a replay to `at` stops (a kept past state when the user's page asked
            // for it just before): a log whose times went back is cut only by a fold.
            Until::Time(_) if !s.engine.log.times_ordered() => {
                Until::Position(s.replay_until(&who, until).await?.position())
            }
            until => until,
        };
        version = versions_through(&*s.engine.log, &stream, version, until)?;
        // Not yet there, as `GET /v1/users/{id}?at=` says.
        if version == 0 {
            return Err(ApiError::NotFound("user (at that point)".into()));
        }
    }
    // The cursor is the stream version of the last event sent, in either order.
    let wanted = super::page_limit(q.limit)?;
    let (events, next) = match q.order.unwrap_or_default() {
        super::Order::Oldest => {
            if q.after.is_some_and(|a| a > version) {
                return Err(ApiError::BadRequest(
                    "after: no such event in this user's timeline".into(),
                ));
            }
            let from = q.after.unwrap_or(0).saturating_add(1);
            // Up to the story's end as of `at`: nothing later, not even to peek.
            let left = version.saturating_sub(from - 1);
            let count = (wanted.saturating_add(1) as u64).min(left) as usize;
            let events = if count == 0 {
                Vec::new()
            } else {
                s.engine.log.read_stream(&stream, from, count)?
            };
            super::page_of(events.into_iter(), q.limit, |e| e.version)?
        }
        super::Order::Newest => {
            let end = match q.after {
                // Past the story's end the cursor names nothing a page gave out.
                Some(a) if a > version.saturating_add(1) => {
                    return Err(ApiError::BadRequest(
                        "after: no such event in this user's timeline".into(),
                    ))
                }
                Some(a) => a.saturating_sub(1),
                None => version,
            };
            let start = end.saturating_sub(wanted as u64).saturating_add(1);
            let mut events = if end == 0 {
                Vec::new()
            } else {
                s.engine
                    .log
                    .read_stream(&stream, start, (end - start + 1) as usize)?
            };
            events.reverse();
            (events, (start > 1).then(|| start.to_string()))
        }
    };
    let items = events
        .iter()
        .map(|e| TimelineEntry {
            position: e.position,
            recorded_at: e.recorded_at,
            kind: e.event.kind(),
            what: Area::of(&e.event),
            actor: e.actor.to_string(),
            correlation_id: e.correlation_id,
            payload: e.event.payload_json(),
            hash: e.hash.to_hex(),
        })
        .collect();
    Ok(page(items, next))
}

/// How many of `stream`'s first `version` events lie at or before `until`: a binary
/// search over the stream (its positions grow with its versions, and so do its times in a
/// log whose times are ordered).
fn versions_through(
    log: &dyn crate::store::EventLog,
    stream: &StreamId,
    version: u64,
    until: Until,
) -> Result<u64, ApiError> {
    let (mut low, mut high) = (0, version);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        let at = log.read_stream(stream, mid, 1)?;
        match at.first() {
            Some(e) if !until.is_past(e) => low = mid,
            _ => high = mid - 1,
        }
    }
    Ok(low)
}

/// `GET /v1/users/{id}/timeline` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
    /// The cursor `next` of the previous page (a version of the user's stream).
    after: Option<u64>,
    /// `oldest` first (the default) or `newest` first.
    order: Option<super::Order>,
    /// Wait (bounded) until the projections include this position.
    min_position: Option<u64>,
    /// The story as it stood at this time: events recorded later left out (where a
    /// replay to `at` stops, as `GET /v1/users/{id}?at=` answers).
    at: Option<DateTime<Utc>>,
    /// The story as it stood at this log position.
    at_position: Option<u64>,
}

/// One event of a user's story.
#[derive(Serialize, ToSchema)]
pub struct TimelineEntry {
    /// Its position in the log.
    position: u64,
    recorded_at: DateTime<Utc>,
    /// The event's kind (`RotationStarted` …).
    kind: &'static str,
    what: Area,
    /// Who caused it (`sync:<domain>`, `admin:<token>` …).
    actor: String,
    /// Ties a run's or a rotation's events together.
    correlation_id: Option<uuid::Uuid>,
    /// The event's fields, sealed secrets as `"sealed"`.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// The record's hash (hex).
    hash: String,
}

/// The area of the story an event belongs to.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// What Entra ID said.
    Sync,
    /// Imported, kept, deactivated, deleted, reactivated.
    Status,
    /// The SSO override.
    Sso,
    /// Key assignment.
    Key,
    Invite,
    /// Rotation steps.
    Rotation,
    /// Key-write steps.
    KeyWrite,
    /// Break-glass reveals.
    Reveal,
    /// Anything else of the stream.
    Other,
}

impl Area {
    fn of(e: &idledger_domain::Event) -> Area {
        use idledger_domain::Event as E;
        match e {
            E::UserDiscovered(_)
            | E::MemberLeftSyncGroup(_)
            | E::MemberRejoinedSyncGroup(_)
            | E::UserAttributesChanged(_)
            | E::RotationGroupJoined(_)
            | E::RotationGroupLeft(_) => Area::Sync,
            E::UserImported(_)
            | E::UserKept(_)
            | E::UserDeactivated(_)
            | E::UserDeleted(_)
            | E::UserReactivated(_) => Area::Status,
            E::UserSsoOverrideSet(_) => Area::Sso,
            E::KeyAssigned(_) | E::KeyUnassigned(_) => Area::Key,
            E::InviteSent(_) => Area::Invite,
            E::RotationStarted(_)
            | E::RotationRetried(_)
            | E::RotationSucceeded(_)
            | E::RotationFailed(_) => Area::Rotation,
            E::KeyWriteQueued(_)
            | E::KeyWriteDelivered(_)
            | E::KeyWriteConfirmed(_)
            | E::KeyWriteFailed(_)
            | E::KeyWriteSuperseded(_)
            | E::KeyWriteWrittenLate(_) => Area::KeyWrite,
            E::PasswordRevealed(_) => Area::Reveal,
            _ => Area::Other,
        }
    }
}

/// The largest export `POST /v1/audit/verify-export` takes (it is written to a private
/// temporary file while it arrives, never held in memory).
const UPLOAD_LIMIT: u64 = 2 << 30;

/// The largest manifest line.
const MANIFEST_LIMIT: usize = 256 << 10;

/// Free space an upload must leave on the file system it is written to when the data dir
/// is on the same one: a full disk would stop every append.
const UPLOAD_HEADROOM: u64 = 1 << 30;

/// How often (in bytes written) an upload of no declared length looks at the free space.
const UPLOAD_ROOM_LOOK: u64 = 64 << 20;

/// Whether `dir`'s file system has room for `more` bytes, and the headroom when it is
/// the data dir's too (`data_dir`); an unknown answer (no statvfs) is taken as room.
fn room_for(dir: &std::path::Path, data_dir: &std::path::Path, more: u64) -> Result<(), ApiError> {
    #[cfg(unix)]
    let shared = {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        dev(dir).is_none_or(|d| Some(d) == dev(data_dir))
    };
    #[cfg(not(unix))]
    let shared = true;
    let headroom = if shared { UPLOAD_HEADROOM } else { 0 };
    match super::meta::available_bytes(dir) {
        Some(free) if free < more.saturating_add(headroom) => Err(ApiError::Unavailable(
            "not enough free disk space to take this upload in just now".into(),
        )),
        _ => Ok(()),
    }
}

/// A directory of this process's own, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    /// A new directory under `parent` that only this user can enter: an upload holds
    /// people's names and sign-ins, and the system's temporary directory is everyone's.
    fn create(parent: &std::path::Path) -> std::io::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = parent.join(format!("idledger-verify-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Verifies an uploaded export (the console's drag and drop) as `idledger verify-export`
/// does, against the live log: the manifest's query is run again to its position, the
/// chain checked, and the file compared row by row and by its SHA-256.
pub async fn verify_upload(
    State(s): State<AppState>,
    who: Principal,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<crate::audit::export::ExportCheck>, ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > UPLOAD_LIMIT + MANIFEST_LIMIT as u64) {
        return Err(ApiError::PayloadTooLarge(UPLOAD_LIMIT as usize));
    }
    // The place comes first: an upload of up to 2 GiB goes to disk as it arrives, and
    // none is taken in that could not be checked now.
    let place = s.whole_log_place()?;
    let temp = std::env::temp_dir();
    // Room for all it declares first, and then as it arrives.
    room_for(&temp, &s.data_dir, declared.unwrap_or(0))?;
    let scratch = Scratch::create(&temp).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut stream = body.into_data_stream();
    let mut head = Vec::new();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the body: {e}")))?;
        match chunk.iter().position(|b| *b == b'\n') {
            Some(at) => {
                head.extend_from_slice(&chunk[..at]);
                rest.extend_from_slice(&chunk[at + 1..]);
                break;
            }
            None => head.extend_from_slice(&chunk),
        }
        if head.len() > MANIFEST_LIMIT {
            return Err(ApiError::PayloadTooLarge(MANIFEST_LIMIT));
        }
    }
    let manifest: Manifest = serde_json::from_slice(&head)
        .map_err(|e| ApiError::BadRequest(format!("the manifest line: {e}")))?;
    // Checked before anything is read or sized by it: the verifier makes room for the
    // manifest's record count.
    let log_head = s.engine.log.head().position;
    if manifest.log_position > log_head {
        return Err(ApiError::Unprocessable(format!(
            "the manifest names log position {}, past this log's head ({log_head}): it is not of this log",
            manifest.log_position
        )));
    }
    let file = scratch.0.join(match manifest.format {
        ExportFormat::Csv => "export.csv",
        _ => "export.jsonl",
    });
    std::fs::write(
        Manifest::path_of(&file),
        serde_json::to_vec(&manifest).map_err(|e| ApiError::Internal(e.to_string()))?,
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut out = tokio::fs::File::create(&file)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut written = rest.len() as u64;
    out.write_all(&rest)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the body: {e}")))?;
        let before = written;
        written += chunk.len() as u64;
        if written > UPLOAD_LIMIT {
            return Err(ApiError::PayloadTooLarge(UPLOAD_LIMIT as usize));
        }
        if before / UPLOAD_ROOM_LOOK != written / UPLOAD_ROOM_LOOK {
            room_for(&scratch.0, &s.data_dir, 0)?;
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    out.flush()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    drop(out);
    let log = s.engine.log.clone();
    // The server's own key proves only that this log signed the head, not that it is the
    // history an auditor holds (`head_key: "log"` says so); it still catches a head that
    // is not this log's, or a proof that does not hold.
    let key = s.notary.public_key().clone();
    let report = s
        .whole_log_read_in(&who, place, move || {
            let report = crate::audit::verify_export_file(
                &file,
                records_of_log(&*log),
                crate::audit::HeadKey::OfLog(&key),
                |_| {},
            );
            drop(scratch);
            report
        })
        .await?
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::Scratch;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_uploads_scratch_directory_is_private_and_goes_when_dropped() {
        let parent = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(parent.path()).unwrap();
        let mode = std::fs::metadata(&scratch.0).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        let dir = scratch.0.clone();
        drop(scratch);
        assert!(!dir.exists());
    }
}

//! `GET /v1/backup`: the same file `idledger backup` writes, streamed from a running
//! server: every record up to the head when the request came, then the sealed key store
//! and log key (never the master key, never a plaintext secret), then the manifest. With
//! `from`, an increment: the records after `from - 1`, which a `backup --follow` copy
//! checks against its own head.

use super::audit::{BodySink, BODY_PIECE};
use super::auth::Principal;
use super::error::{ApiError, ApiQuery};
use super::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use std::ops::ControlFlow;
use utoipa::IntoParams;

/// `GET /v1/backup` parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BackupQuery {
    /// The first position to carry (1: a whole backup); at most the head + 1.
    from: Option<u64>,
    /// Carry at most this many records (all up to the head).
    limit: Option<u64>,
    /// Stop adding records once this many bytes of them are in (at least one record is):
    /// a follower's memory stays bounded whatever the records' sizes.
    max_bytes: Option<u64>,
    /// SHA-256 (hex) of the key store the reader holds: when it is still the server's,
    /// the key store is left out (the manifest says so).
    keystore_sha256: Option<String>,
    /// An increment's head over exactly what it carries, signed and kept now if need be,
    /// as a whole backup's is (a follower's last increment before it stops), rather than
    /// the latest kept one while that is younger than `sth_interval_ms`.
    #[serde(default)]
    exact_head: bool,
}

/// The hash the record at `position` carries.
fn hash_at(
    log: &dyn crate::store::EventLog,
    position: u64,
) -> Result<idledger_domain::Hash, ApiError> {
    let mut found = None;
    log.records(position)(&mut |p, bytes| {
        if p == position {
            found = idledger_domain::envelope::RawRecord::parse(bytes)
                .ok()
                .map(|r| r.hash);
        }
        ControlFlow::Break(())
    })?;
    found.ok_or_else(|| ApiError::Internal(format!("position {position} cannot be read")))
}

/// The backup, streamed; `x-idledger-log-position` names the position it runs to (at
/// most: `max_bytes` may end it sooner), `x-idledger-log-head` the log's head.
pub async fn download(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<BackupQuery>,
) -> Result<impl IntoResponse, ApiError> {
    // A bad request changes nothing (a whole backup signs and keeps a head): checked first.
    let from = q.from.unwrap_or(1);
    let head = s.engine.log.head().position;
    if from == 0 || from > head + 1 {
        return Err(ApiError::BadRequest(format!(
            "from: 1 to {} (the log's head is {head})",
            head + 1
        )));
    }
    if q.limit == Some(0) || q.max_bytes == Some(0) {
        return Err(ApiError::BadRequest(
            "limit and max_bytes: at least 1".into(),
        ));
    }
    if let Some(k) = &q.keystore_sha256 {
        if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::BadRequest(
                "keystore_sha256: 64 hex digits".into(),
            ));
        }
    }
    let notary = s.notary.clone();
    let whole = from == 1;
    let exact_head = whole || q.exact_head;
    // Places first: a request answered 503 for want of one has done no work.
    let place = s.log_stream_place()?;
    // A whole backup checks every record as it goes, with state that grows with the log
    // (event ids, stream versions): it is also one of the few reads of the whole log.
    let whole_place = whole.then(|| s.whole_log_place()).transpose()?;
    let log = s.engine.log.clone();
    // At or past the head checked above: the log only grows. The key store is read with
    // it, while no key is made or shredded: a user deleted after this head keeps the key
    // the records before it need (read later, it could be shredded already).
    let (head, sealed) = {
        let (s, log, data_dir) = (s.clone(), log.clone(), s.data_dir.clone());
        tokio::task::spawn_blocking(move || {
            s.engine.keyring.with_keys_unchanged(|| {
                (log.head().position, crate::backup::sealed_files(&data_dir))
            })
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    let sealed = sealed.map_err(|e| ApiError::Internal(format!("the key store: {e}")))?;
    let max_bytes = q.max_bytes.unwrap_or(u64::MAX);
    let through = q
        .limit
        .map_or(head, |l| head.min(from.saturating_add(l - 1)));
    let after = match from {
        1 => None,
        _ => {
            let log = log.clone();
            let hash = tokio::task::spawn_blocking(move || hash_at(&*log, from - 1))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            Some((from - 1, hash))
        }
    };
    let known = q.keystore_sha256.map(|k| k.to_ascii_lowercase());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let _places = (place, whole_place);
        let body = BodySink {
            buf: Vec::with_capacity(BODY_PIECE),
            tx: tx.clone(),
        };
        let done = (|| -> Result<(), crate::backup::BackupError> {
            let mut w = match after {
                None => crate::backup::BackupWriter::new(body)?,
                Some((position, hash)) => crate::backup::BackupWriter::after(body, position, hash)?,
            };
            let mut failed = None;
            let mut carried = 0u64;
            let mut held = from - 1;
            if from <= through {
                log.records(from)(&mut |position, bytes| {
                    if position > through || carried >= max_bytes {
                        return ControlFlow::Break(());
                    }
                    carried += bytes.len() as u64;
                    match w.push(position, bytes) {
                        Ok(()) => {
                            held = position;
                            ControlFlow::Continue(())
                        }
                        Err(e) => {
                            failed = Some(e);
                            ControlFlow::Break(())
                        }
                    }
                })?;
            }
            if let Some(e) = failed {
                return Err(e);
            }
            // A head over no more than it holds: no restore may find it covering more
            // (it ended early: a `limit`, `max_bytes`), and a whole backup's covers all it
            // holds, so no restore need take records after it unproven (see
            // `Notary::for_backup`). (A follower keeps an increment's head only once it
            // holds what it covers.)
            let sth = notary.for_backup(held, exact_head);
            w.finish(&sealed, known.as_deref(), sth.map(|h| h.to_note()))?;
            Ok(())
        })();
        if let Err(e) = done {
            tracing::warn!(error = %e, "backup stopped");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    // With `max_bytes` the file may end before `through`: its manifest says where.
    headers.insert(
        header::HeaderName::from_static("x-idledger-log-position"),
        axum::http::HeaderValue::from(through),
    );
    headers.insert(
        header::HeaderName::from_static("x-idledger-log-head"),
        axum::http::HeaderValue::from(head),
    );
    // A revoked token aborts the body: a cut backup fails its check, never passes as whole.
    let revoked = Err(std::io::Error::other("the token was revoked"));
    let pieces = super::auth::until_revoked(Box::pin(pieces), s.clone(), who, Some(revoked));
    Ok((headers, Body::from_stream(pieces)))
}

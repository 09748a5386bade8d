//! `GET /v1/backup`: the same file `idledger backup` writes, streamed from a running
//! server: every record up to the head when the request came, then the sealed key store
//! and log key (never the master key, never a plaintext secret), then the manifest.

use super::audit::{BodySink, BODY_PIECE};
use super::auth::Principal;
use super::error::ApiError;
use super::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::ops::ControlFlow;

/// The backup, streamed; `x-idledger-log-position` names the position it runs to.
pub async fn download(
    State(s): State<AppState>,
    who: Principal,
) -> Result<impl IntoResponse, ApiError> {
    // The signed head first: every head is signed over committed records, so the log's
    // head read after it is at or past its size.
    let sth = s.notary.latest().ok().flatten().map(|h| h.to_note());
    let log = s.engine.log.clone();
    let head = log.head().position;
    let data_dir = s.data_dir.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let body = BodySink {
            buf: Vec::with_capacity(BODY_PIECE),
            tx: tx.clone(),
        };
        let done = (|| -> Result<(), crate::backup::BackupError> {
            let mut w = crate::backup::BackupWriter::new(body)?;
            let mut failed = None;
            log.records(1)(&mut |position, bytes| {
                if position > head {
                    return ControlFlow::Break(());
                }
                match w.push(position, bytes) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => {
                        failed = Some(e);
                        ControlFlow::Break(())
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            let sealed = crate::backup::sealed_files(&data_dir)?;
            w.finish(sealed.keystore.as_deref(), sealed.log_key.as_deref(), sth)?;
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
    headers.insert(
        header::HeaderName::from_static("x-idledger-log-position"),
        axum::http::HeaderValue::from(head),
    );
    // A revoked token aborts the body: a cut backup fails its check, never passes as whole.
    let revoked = Err(std::io::Error::other("the token was revoked"));
    let pieces = super::auth::until_revoked(Box::pin(pieces), s.clone(), who, Some(revoked));
    Ok((headers, Body::from_stream(pieces)))
}

//! `/v1/log/…`: provable history for auditors. The log's public key, its signed tree
//! heads (C2SP checkpoints as text, or JSON), and RFC 9162 inclusion and consistency
//! proofs. The leaf of position P is the record `/v1/events` serves for P in `record`.

use super::error::{ApiError, ApiPath, ApiQuery};
use super::{page_of, AppState, Page};
use crate::notary::NotaryError;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use idledger_domain::Hash;
use idledger_replay::tree::{ProofError, SignedTreeHead};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl From<NotaryError> for ApiError {
    fn from(e: NotaryError) -> Self {
        match e {
            NotaryError::Tree(e) => out_of_range(e),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn out_of_range(e: ProofError) -> ApiError {
    match e {
        ProofError::OutOfRange(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(other.to_string()),
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// The log's public key as C2SP verifier key text (`name+keyid+base64key`).
pub async fn public_key(State(s): State<AppState>) -> Response {
    text(format!("{}\n", s.notary.public_key()))
}

/// A signed tree head as JSON.
#[derive(Serialize, ToSchema)]
pub struct SignedHead {
    /// Records in the tree.
    tree_size: u64,
    /// The tree's root, base64.
    root_hash: String,
    /// When it was signed, milliseconds since the Unix epoch.
    timestamp: u64,
    /// The note's signature: base64 of the 4-byte key id and the Ed25519 signature.
    signature: String,
    /// The same head as a C2SP checkpoint (signed note).
    checkpoint: String,
}

impl From<&SignedTreeHead> for SignedHead {
    fn from(h: &SignedTreeHead) -> Self {
        SignedHead {
            tree_size: h.head.tree_size,
            root_hash: B64.encode(h.head.root_hash.0),
            timestamp: h.head.timestamp_ms,
            signature: h.signature_base64(),
            checkpoint: h.to_note(),
        }
    }
}

/// How a head is answered.
#[derive(Deserialize, Clone, Copy, Default, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HeadFormat {
    /// The C2SP checkpoint, `text/plain`.
    #[default]
    Text,
    /// JSON with the checkpoint in it.
    Json,
}

/// `GET /v1/log/sth` and `/v1/log/sth/{tree_size}` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HeadQuery {
    /// `text` (the checkpoint, the default) or `json`.
    format: Option<HeadFormat>,
    /// `/v1/log/sth` only: rather than the latest, the first kept head over at least this
    /// many records, signed and kept now when none is yet (an exporter's manifest names
    /// the head of its position without waiting for `sth_interval_ms`).
    covering: Option<u64>,
}

fn answer(head: &SignedTreeHead, format: Option<HeadFormat>) -> Response {
    match format.unwrap_or_default() {
        HeadFormat::Text => text(head.to_note()),
        HeadFormat::Json => Json(SignedHead::from(head)).into_response(),
    }
}

/// The latest signed tree head.
pub async fn latest(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<HeadQuery>,
) -> Result<Response, ApiError> {
    let notary = s.notary.clone();
    let head = match q.covering {
        None => tokio::task::spawn_blocking(move || notary.latest())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
            .ok_or_else(|| ApiError::NotFound("signed tree head (the log is empty)".into()))?,
        Some(size) => {
            let head = s.engine.log.head().position;
            if size == 0 || size > head {
                return Err(ApiError::BadRequest(format!(
                    "covering: 1 to the log's head {head}"
                )));
            }
            tokio::task::spawn_blocking(move || notary.covering(size))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??
                .map(|(head, _)| head)
                .ok_or_else(|| {
                    ApiError::Unavailable(format!(
                        "no signed tree head covers {size} records yet: the tree trails the log"
                    ))
                })?
        }
    };
    Ok(answer(&head, q.format))
}

/// The signed tree head kept for exactly `tree_size`.
pub async fn at_size(
    State(s): State<AppState>,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(q): ApiQuery<HeadQuery>,
) -> Result<Response, ApiError> {
    let size = raw
        .parse::<u64>()
        .map_err(|_| ApiError::BadRequest(format!("tree_size: {raw:?} is not a number")))?;
    if q.covering.is_some() {
        return Err(ApiError::BadRequest(
            "covering: only for the latest head, /v1/log/sth".into(),
        ));
    }
    // Off the async threads: the heads' lock is held while a new head is signed, which
    // syncs the log to the device first.
    let notary = s.notary.clone();
    let head = tokio::task::spawn_blocking(move || notary.at(size))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
        .ok_or_else(|| ApiError::NotFound(format!("signed tree head of size {size}")))?;
    Ok(answer(&head, q.format))
}

/// `GET /v1/log/sths` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HeadsQuery {
    /// Heads of trees larger than this (the `next` of the page before).
    after: Option<u64>,
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
}

/// Every head kept, by increasing tree size, paged.
pub async fn heads(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<HeadsQuery>,
) -> Result<Json<Page<SignedHead>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    // One more than asked, so the page knows whether another follows.
    let (notary, after) = (s.notary.clone(), q.after.unwrap_or(0));
    let most = limit.saturating_add(1).min(super::MAX_PAGE + 1);
    let kept = tokio::task::spawn_blocking(move || notary.after(after, most))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let (items, next) = page_of(kept.into_iter(), q.limit, |h| h.head.tree_size)?;
    Ok(super::page(
        items.iter().map(SignedHead::from).collect(),
        next,
    ))
}

/// `GET /v1/log/proof/inclusion` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The record's position (its leaf index is position − 1).
    position: u64,
    /// The tree to prove it in (the latest signed head's size).
    tree_size: Option<u64>,
}

/// An inclusion proof (RFC 9162's audit path).
#[derive(Serialize, ToSchema)]
pub struct InclusionProof {
    /// Position − 1.
    leaf_index: u64,
    tree_size: u64,
    /// The audit path, leaf to root, base64.
    hashes: Vec<String>,
}

fn base64_all(hashes: Vec<Hash>) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h.0)).collect()
}

/// The size to prove against: the one asked for, or the latest signed head's.
async fn size_or_latest(s: &AppState, asked: Option<u64>) -> Result<u64, ApiError> {
    if let Some(size) = asked {
        return Ok(size);
    }
    let notary = s.notary.clone();
    let latest = tokio::task::spawn_blocking(move || notary.latest())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    latest
        .map(|h| h.head.tree_size)
        .ok_or_else(|| ApiError::NotFound("signed tree head (the log is empty)".into()))
}

/// The proof that the record at `position` is in the tree of `tree_size`.
pub async fn inclusion(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    if q.position == 0 {
        return Err(ApiError::BadRequest("position: from 1".into()));
    }
    let size = size_or_latest(&s, q.tree_size).await?;
    let index = q.position - 1;
    // Inline, not on a blocking thread: a proof is a few reads of page-cached 2 KiB
    // chunks and a few hundred hashes (tens of microseconds), less than a hand-off costs.
    let hashes = s
        .notary
        .tree()
        .inclusion(index, size)
        .map_err(out_of_range)?;
    Ok(Json(InclusionProof {
        leaf_index: index,
        tree_size: size,
        hashes: base64_all(hashes),
    }))
}

/// `GET /v1/log/proof/consistency` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older tree's size (1 or more).
    from: u64,
    /// The newer tree's size (the latest signed head's).
    to: Option<u64>,
}

/// A consistency proof (RFC 9162).
#[derive(Serialize, ToSchema)]
pub struct ConsistencyProof {
    from: u64,
    to: u64,
    /// The proof's hashes, base64.
    hashes: Vec<String>,
}

/// The proof that the tree of `from` records is a prefix of the tree of `to`.
pub async fn consistency(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    let to = size_or_latest(&s, q.to).await?;
    let from = q.from;
    // Inline, as `inclusion`.
    let hashes = s
        .notary
        .tree()
        .consistency(from, to)
        .map_err(out_of_range)?;
    Ok(Json(ConsistencyProof {
        from,
        to,
        hashes: base64_all(hashes),
    }))
}

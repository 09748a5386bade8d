//! Compliance exports and their independent check: the rows of a query made from stored
//! records on every core, written to a file (or any [`RowSink`]) with a [`Manifest`], and
//! `verify-export`'s comparison of a file with the rows the log gives.

use super::files::{FileSink, FileSource, RowSink};
use super::manifest::{Manifest, ManifestHead};
use super::source::Records;
use crate::error::Error;
use crate::store::parallel_decode::{decoder_threads, parallel_map};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use idledger_domain::{DomainId, UserId};
use idledger_replay::export::{RowComparer, RowMismatch};
use idledger_replay::tree::{check_consistency, LogPublicKey};
use idledger_replay::verify::CheckedRecord;
use idledger_replay::{ExportFormat, ExportKind, ExportQuery, ExportSummary, Exporter, Verifier};
use serde::Serialize;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// An export kind from the CLI's or the API's words, or what to say instead.
pub fn parse_kind(kind: &str) -> Result<ExportKind, String> {
    ExportKind::parse(kind)
        .ok_or_else(|| format!("kind {kind:?}: use password-changes, events, users or sign-ins"))
}

/// An export format from the CLI's or the API's words, or what to say instead.
pub fn parse_format(format: &str) -> Result<ExportFormat, String> {
    ExportFormat::parse(format).ok_or_else(|| format!("format {format:?}: use csv or jsonl"))
}

/// A range must have ended this long before an export of it: a group of events is
/// stamped when it opens and readable once committed, and an auditor's clock may run
/// ahead of the server's.
pub const RANGE_SETTLE: chrono::Duration = chrono::Duration::seconds(5);

/// The query of an export; a range that ends before it begins, or later than
/// [`RANGE_SETTLE`] before `now`, is refused: an export covers a range only once it has
/// closed (`verify-export` holds it to that).
pub fn query_of(
    kind: ExportKind,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    domain: Option<uuid::Uuid>,
    user: Option<uuid::Uuid>,
    now: DateTime<Utc>,
) -> Result<ExportQuery, String> {
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err("from is after to".into());
        }
    }
    if to.is_some_and(|t| t > now - RANGE_SETTLE) {
        return Err(format!(
            "to is in the future or less than {} s ago: the range may still be filling; leave it out to export up to now",
            RANGE_SETTLE.num_seconds()
        ));
    }
    Ok(ExportQuery {
        kind,
        from,
        to,
        domain: domain.map(DomainId),
        user: user.map(UserId),
    })
}

/// What an export run read: its summary, and the time of the first record past
/// `until_position`, when it stopped there and the log held one.
pub struct ExportRun {
    pub summary: ExportSummary,
    pub next_recorded_at: Option<DateTime<Utc>>,
}

/// Runs an export over `records`, handing the header and each row to `sink`; stops after
/// `until_position` when given. Records are decoded (and, for a `chain` verifier, hashed)
/// on every core, then exported in log order; `chain` sees every record exported.
pub fn run_export(
    records: Records,
    query: &ExportQuery,
    format: ExportFormat,
    until_position: Option<u64>,
    sink: &mut dyn RowSink,
    mut chain: Option<&mut Verifier>,
    mut on_position: impl FnMut(u64),
) -> Result<ExportRun, Error> {
    let hash = chain.is_some();
    let checked = parallel_map(
        records,
        move |pos, bytes| {
            if hash {
                CheckedRecord::check(pos, bytes)
            } else {
                CheckedRecord::decode(pos, bytes)
            }
        },
        decoder_threads(),
        |what| Error::Other(what.to_owned()),
    );
    let mut exporter = Exporter::new(query.clone(), format);
    sink.header(&exporter.header())?;
    let mut row = Vec::with_capacity(1024);
    let mut next_recorded_at = None;
    for record in checked {
        let record = record?;
        if until_position.is_some_and(|u| record.position > u) {
            next_recorded_at = record.envelope.as_ref().ok().map(|e| e.recorded_at);
            break;
        }
        on_position(record.position);
        if let Some(chain) = chain.as_deref_mut() {
            chain.accept(&record);
        }
        let env = record.envelope.as_ref().map_err(|e| StoreError::Corrupt {
            position: record.position,
            reason: e.clone(),
        })?;
        row.clear();
        let flow = exporter.push(env, &mut row);
        if !row.is_empty() {
            sink.row(&row)?;
        }
        if flow.is_break() {
            break;
        }
    }
    let mut failed = Ok(());
    let summary = exporter.finish(|row| {
        if failed.is_ok() {
            failed = sink.row(row);
        }
    });
    failed?;
    Ok(ExportRun {
        summary,
        next_recorded_at,
    })
}

/// Where an export went.
#[derive(Debug, Serialize)]
pub struct Written {
    pub file: PathBuf,
    pub manifest: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// The last log position read.
    pub log_position: u64,
    /// The size of the signed tree head the manifest carries (none: it carries none).
    pub signed_tree_size: Option<u64>,
}

/// Writes the export of `query` over `records` to `out`, and its manifest beside it, with
/// the signed tree head `cover(log_position)` finds for it.
pub fn export_file(
    records: Records,
    query: &ExportQuery,
    format: ExportFormat,
    out: &Path,
    cover: impl FnOnce(u64) -> Result<Option<ManifestHead>, Error>,
    on_position: impl FnMut(u64),
) -> Result<Written, Error> {
    let mut sink = FileSink::create(out)?;
    let summary = run_export(records, query, format, None, &mut sink, None, on_position)?.summary;
    let sha = sink.finish()?;
    let mut manifest = Manifest::new(query, format, &summary, &sha, Utc::now());
    manifest.signed_head = cover(summary.log_position)?;
    let signed_tree_size = manifest
        .signed_head
        .as_ref()
        .and_then(|h| h.checkpoint.lines().nth(1))
        .and_then(|size| size.parse().ok());
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Other(e.to_string()))?;
    let manifest_path = Manifest::path_of(out);
    std::fs::write(&manifest_path, format!("{text}\n"))?;
    Ok(Written {
        file: out.to_path_buf(),
        manifest: manifest_path,
        rows: summary.rows,
        log_position: summary.log_position,
        signed_tree_size,
    })
}

/// What `verify-export` found wrong.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Problem {
    /// A row differs from, lacks or adds to what the log gives.
    Row(RowMismatch),
    /// Anything else, named.
    Other {
        /// Which check failed.
        problem: ProblemKind,
        /// What is wrong.
        detail: ProblemDetail,
    },
}

/// The checks of `verify-export` beside the row comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The log's hash chain, its versions or its signed heads (the detail is the chain
    /// check's summary).
    Chain,
    /// The log's record at `log_position` is not the one the manifest names.
    ChainHash,
    /// The file's rows are not as many as the log gives.
    RowCount,
    /// The first or last row's position differs from the log's.
    RowPositions,
    /// The log holds records of the range past the export's end.
    IncompleteRange,
    /// The manifest's signed tree head does not cover the log it names.
    SignedHead,
    /// The file is not the one the manifest hashed.
    #[serde(rename = "file_sha256")]
    FileSha256,
}

/// Why a check failed: a sentence, or (for `chain`) the chain check's own summary.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ProblemDetail {
    /// Said in words.
    Text(String),
    /// `idledger verify`'s summary of the chain (`first_bad_position`, `reason` …).
    #[schema(value_type = Object)]
    Chain(serde_json::Value),
}

impl From<String> for ProblemDetail {
    fn from(text: String) -> Self {
        ProblemDetail::Text(text)
    }
}

impl From<&str> for ProblemDetail {
    fn from(text: &str) -> Self {
        ProblemDetail::Text(text.to_owned())
    }
}

/// What became of the manifest's signed tree head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignedHeadCheck {
    /// The log to `log_position` is in the manifest's signed tree head.
    Verified,
    /// The manifest carries none.
    Absent,
    /// No public key was given to check it with (`--public-key`).
    Unchecked,
    /// See `problems`.
    Failed,
}

/// Whose key the signed head was checked with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeadKeyOwner {
    /// One the auditor brought, so the export sits in the history they hold.
    Auditor,
    /// The one the log itself keeps (the data dir's or the server's), which whoever
    /// rewrote the log could have replaced too.
    Log,
    /// None: the head was not checked.
    None,
}

/// `verify-export`'s report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportCheck {
    /// No problem found.
    pub ok: bool,
    /// Rows the log gives for the manifest's query.
    pub rows: u64,
    /// Where the log was read to (the manifest's).
    pub log_position: u64,
    /// What became of the manifest's signed tree head.
    pub signed_head: SignedHeadCheck,
    /// Whose key `signed_head` was checked with.
    pub head_key: HeadKeyOwner,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

/// The key an export's signed head is checked with.
#[derive(Clone, Copy)]
pub enum HeadKey<'a> {
    /// None: the head is not checked, and the report says so.
    None,
    /// The key the log read keeps, the data dir's or the server's (a manifest without a
    /// head passes: it may predate the first head covering it).
    OfLog(&'a LogPublicKey),
    /// The auditor's own key (`--public-key`): the manifest must carry a head it signed.
    /// Without this, whoever rewrote the log could drop the head and pass.
    Auditors(&'a LogPublicKey),
}

impl<'a> HeadKey<'a> {
    fn key(self) -> Option<&'a LogPublicKey> {
        match self {
            HeadKey::None => None,
            HeadKey::OfLog(k) | HeadKey::Auditors(k) => Some(k),
        }
    }

    fn owner(self) -> HeadKeyOwner {
        match self {
            HeadKey::None => HeadKeyOwner::None,
            HeadKey::OfLog(_) => HeadKeyOwner::Log,
            HeadKey::Auditors(_) => HeadKeyOwner::Auditor,
        }
    }
}

/// Checks that the tree of the records up to `m.log_position` (whose root is `root`) is in
/// the signed head `m` carries.
fn check_signed_head(
    m: &Manifest,
    root: &idledger_domain::Hash,
    key: HeadKey<'_>,
) -> Result<(), String> {
    if m.log_position == 0 {
        // An export that read no record is a prefix of every tree: nothing to prove but
        // the signature of a head it carries.
        if let (Some(signed), Some(key)) = (&m.signed_head, key.key()) {
            key.open(&signed.checkpoint).map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    let Some(signed) = &m.signed_head else {
        return match key {
            HeadKey::Auditors(_) => Err(
                "the manifest carries no signed tree head to check with the given public key"
                    .into(),
            ),
            _ => Ok(()),
        };
    };
    // Without a key there is nothing to hold the head to (the server's own key, sent
    // along, would prove nothing); the report says so instead of failing.
    let Some(key) = key.key() else {
        return Ok(());
    };
    let head = key
        .open(&signed.checkpoint)
        .map_err(|e| e.to_string())?
        .head;
    let proof = signed
        .consistency
        .iter()
        .map(|h| crate::audit::proofs::hash_of(h))
        .collect::<Result<Vec<_>, _>>()?;
    if head.tree_size == m.log_position {
        if proof.is_empty() && head.root_hash == *root {
            return Ok(());
        }
        return Err(format!(
            "the records to position {} do not give the root signed for that size",
            m.log_position
        ));
    }
    check_consistency(
        &proof,
        m.log_position,
        root,
        head.tree_size,
        &head.root_hash,
    )
    .map_err(|e| {
        format!(
            "the records to position {} are not a prefix of the tree signed at size {}: {e}",
            m.log_position, head.tree_size
        )
    })
}

/// Recomputes the rows of `file`'s manifest from `records` up to its position, checks the
/// chain to there, and compares the file row by row.
pub fn verify_export_file(
    file: &Path,
    records: Records,
    key: HeadKey<'_>,
    on_position: impl FnMut(u64),
) -> Result<ExportCheck, Error> {
    let m: Manifest = serde_json::from_slice(&std::fs::read(Manifest::path_of(file))?)
        .map_err(|e| Error::Other(format!("the manifest: {e}")))?;
    let query = m.query();
    let mut rows = RowComparer::new(FileSource::open(file)?, m.format);
    // The manifest's word sizes the event-id set only up to a few million: a forged
    // position must not cost gigabytes before a single record is read (it grows as needed).
    let mut chain = Verifier::expecting(m.log_position.min(1 << 22));
    let ExportRun {
        summary,
        next_recorded_at,
    } = run_export(
        records,
        &query,
        m.format,
        Some(m.log_position),
        &mut rows,
        Some(&mut chain),
        on_position,
    )?;
    let (mismatches, source) = rows.finish()?;
    let file_sha = hex::encode(source.finish()?);
    let chain = chain.finish();
    let mut problems = Vec::new();
    let signed_head = match check_signed_head(&m, &chain.tree_root, key) {
        Ok(()) if m.signed_head.is_some() && key.key().is_none() => SignedHeadCheck::Unchecked,
        Ok(()) if m.signed_head.is_some() => SignedHeadCheck::Verified,
        Ok(()) => SignedHeadCheck::Absent,
        Err(detail) => {
            problems.push(Problem::Other {
                problem: ProblemKind::SignedHead,
                detail: detail.into(),
            });
            SignedHeadCheck::Failed
        }
    };
    if !chain.ok {
        problems.push(Problem::Other {
            problem: ProblemKind::Chain,
            detail: ProblemDetail::Chain(chain.summary_json()),
        });
    }
    if summary.log_position != m.log_position || summary.chain_hash != m.chain_hash {
        problems.push(Problem::Other {
            problem: ProblemKind::ChainHash,
            detail: format!(
                "the log's record at position {} does not have the manifest's chain hash",
                m.log_position
            )
            .into(),
        });
    }
    // The exporter reads on until a record past `to`: a later record still inside the
    // range means rows were cut off the end (the manifest moved back to match), or the
    // export was made before its range had closed. Either way the file does not cover it.
    // Without `to`, an export that read nothing of a log with records covers nothing it
    // claims (the auditor's key cannot tell it from an empty log).
    if let Some(next) = next_recorded_at {
        if m.range.to.map_or(m.log_position == 0, |to| next <= to) {
            problems.push(Problem::Other {
                problem: ProblemKind::IncompleteRange,
                detail: format!(
                    "the log holds records of the range after position {}: rows were cut off, or the export was made before its range had closed (export it again)",
                    m.log_position
                )
                .into(),
            });
        }
    }
    if m.first_position != summary.first_position || m.last_position != summary.last_position {
        problems.push(Problem::Other {
            problem: ProblemKind::RowPositions,
            detail: format!(
                "the manifest says rows from position {:?} to {:?}, the log gives {:?} to {:?}",
                m.first_position, m.last_position, summary.first_position, summary.last_position
            )
            .into(),
        });
    }
    problems.extend(mismatches.into_iter().map(Problem::Row));
    if m.rows != summary.rows {
        problems.push(Problem::Other {
            problem: ProblemKind::RowCount,
            detail: format!(
                "the manifest says {} rows, the log gives {}",
                m.rows, summary.rows
            )
            .into(),
        });
    }
    if m.file_sha256 != file_sha {
        problems.push(Problem::Other {
            problem: ProblemKind::FileSha256,
            detail: "the file is not the one the manifest describes".into(),
        });
    }
    Ok(ExportCheck {
        ok: problems.is_empty(),
        rows: summary.rows,
        log_position: m.log_position,
        signed_head,
        head_key: key.owner(),
        problems,
    })
}

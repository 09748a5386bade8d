//! The manifest of an export: what was exported, from where in the log, and the file's
//! hash, written beside the file as `FILE.manifest.json` and read back by
//! `verify-export`.

use chrono::{DateTime, Utc};
use idledger_domain::{DomainId, Hash, UserId};
use idledger_replay::{ExportFormat, ExportKind, ExportQuery, ExportSummary};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// An export's filters, as its manifest records them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ManifestFilters)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Only this domain.
    pub domain: Option<DomainId>,
    /// Only this user.
    pub user: Option<UserId>,
}

/// An export's time range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ManifestRange)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Events recorded at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Events recorded at or before this time (for `users`, the state then).
    pub to: Option<DateTime<Utc>>,
}

/// The manifest of an export file (`FILE.manifest.json`,
/// `/v1/audit/exports/{kind}/manifest`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// What was exported.
    pub kind: ExportKind,
    /// How.
    pub format: ExportFormat,
    pub filters: Filters,
    /// Its time range.
    pub range: Range,
    /// Rows in the file.
    pub rows: u64,
    /// Position of the first row's event, if any.
    pub first_position: Option<u64>,
    /// Position of the last row's event, if any.
    pub last_position: Option<u64>,
    /// The last log position read: `verify-export` reads the log to here.
    pub log_position: u64,
    /// The chain hash at `log_position`.
    pub chain_hash: Hash,
    /// SHA-256 of the file, hex.
    pub file_sha256: String,
    /// The tool that made it.
    pub tool: String,
    /// When it was made.
    pub made_at: DateTime<Utc>,
    /// A signed tree head of the log that covers `log_position`, so the export proves
    /// where it sits in the one history (absent in manifests made before tree heads, and
    /// when no head covered the position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_head: Option<ManifestHead>,
}

/// A signed tree head covering an export, with the proof that ties the export's position
/// to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestHead {
    /// The head as a C2SP checkpoint (signed note).
    pub checkpoint: String,
    /// The consistency proof (base64 hashes) from the tree of `log_position` records to
    /// the head's tree; empty when the head is of exactly that size.
    pub consistency: Vec<String>,
}

impl Manifest {
    /// The manifest of an export of `query` in `format` that gave `summary` and a file
    /// hashing to `file_sha256`, made at `now`.
    pub fn new(
        query: &ExportQuery,
        format: ExportFormat,
        summary: &ExportSummary,
        file_sha256: &[u8],
        now: DateTime<Utc>,
    ) -> Self {
        Manifest {
            kind: query.kind,
            format,
            filters: Filters {
                domain: query.domain,
                user: query.user,
            },
            range: Range {
                from: query.from,
                to: query.to,
            },
            rows: summary.rows,
            first_position: summary.first_position,
            last_position: summary.last_position,
            log_position: summary.log_position,
            chain_hash: summary.chain_hash,
            file_sha256: hex::encode(file_sha256),
            tool: format!("idledger {}", env!("CARGO_PKG_VERSION")),
            made_at: now,
            signed_head: None,
        }
    }

    /// The query the manifest describes.
    pub fn query(&self) -> ExportQuery {
        ExportQuery {
            kind: self.kind,
            from: self.range.from,
            to: self.range.to,
            domain: self.filters.domain,
            user: self.filters.user,
        }
    }

    /// Where the manifest of `file` lives: `FILE.manifest.json`.
    pub fn path_of(file: &Path) -> PathBuf {
        let mut name = file.as_os_str().to_owned();
        name.push(".manifest.json");
        PathBuf::from(name)
    }
}

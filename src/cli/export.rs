//! `idledger export` and `idledger verify-export`: the arguments and the printing; the
//! work is [`crate::audit::export`]'s.

use super::progress;
use super::DataDir;
use crate::audit::source::{last_position, records_of, Source};
use crate::audit::HeadKey;
use crate::error::Error;
use chrono::{DateTime, Utc};
use clap::Args;
use idledger_replay::{ExportFormat, ExportKind};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `idledger export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// `password-changes`, `events`, `users` or `sign-ins`.
    #[arg(long, value_parser = crate::audit::parse_kind)]
    pub kind: ExportKind,
    #[command(flatten)]
    pub dir: DataDir,
    /// Events recorded at or after this time (RFC 3339).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Events recorded at or before this time; for `users`, the state at this time.
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// Only this domain.
    #[arg(long)]
    pub domain: Option<uuid::Uuid>,
    /// Only this user.
    #[arg(long)]
    pub user: Option<uuid::Uuid>,
    /// `csv` or `jsonl`.
    #[arg(long, value_parser = crate::audit::parse_format)]
    pub format: ExportFormat,
    /// The file to write; its manifest goes to FILE.manifest.json.
    #[arg(long)]
    pub out: PathBuf,
}

/// Options of `idledger verify-export`.
#[derive(Args, Debug)]
pub struct VerifyExportArgs {
    /// The export file (its manifest is FILE.manifest.json).
    pub file: PathBuf,
    #[command(flatten)]
    pub dir: DataDir,
    /// The log's public key (its text, or a file holding it) to check the manifest's
    /// signed tree head with; by default the data dir's own (with --server: give it).
    #[arg(long)]
    pub public_key: Option<String>,
}

/// A progress bar for reading up to `last`, and the callback that moves it.
fn bar(last: Option<u64>, what: &'static str) -> (indicatif::ProgressBar, impl FnMut(u64)) {
    let pb = progress::bar(last, what);
    let moved = pb.clone();
    (pb, move |pos: u64| {
        if pos.is_multiple_of(4096) {
            moved.set_position(pos);
        }
    })
}

/// `idledger export`: prints where the file and manifest went.
pub fn export(args: &ExportArgs) -> Result<ExitCode, Error> {
    let query = crate::audit::query_of(
        args.kind,
        args.from,
        args.to,
        args.domain,
        args.user,
        chrono::Utc::now(),
    )
    .map_err(Error::Other)?;
    let format = args.format;
    let source = args.dir.source()?;
    let (pb, tick) = bar(last_position(&source), "export");
    let cover = |log_position| match &source {
        Source::DataDir(dir) => crate::audit::proofs::cover_in_data_dir(dir, log_position),
        Source::Server { url, token } => crate::audit::proofs::Server::new(url, token)?
            .cover(log_position, std::time::Duration::from_secs(5)),
    };
    let written =
        crate::audit::export_file(records_of(&source)?, &query, format, &args.out, cover, tick)?;
    pb.finish_and_clear();
    if written.signed_tree_size.is_none() && written.log_position > 0 {
        // A stopped server's data dir whose last records no kept head covers (killed
        // before it signed them), or one never served: the manifest proves nothing.
        tracing::warn!(
            log_position = written.log_position,
            "no signed tree head covers the export's position: its manifest carries none, and verify-export --public-key will refuse it"
        );
    }
    outln!(
        "{}",
        serde_json::to_string(&written).map_err(|e| Error::Other(e.to_string()))?
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `idledger verify-export`: prints the report; exits 1 unless it is ok.
pub fn verify_export(args: &VerifyExportArgs) -> Result<ExitCode, Error> {
    let source = args.dir.source()?;
    let auditors = args
        .public_key
        .as_ref()
        .map(|k| super::proofs::public_key(k))
        .transpose()?;
    let data_dirs = match (&auditors, &args.dir.data_dir) {
        (None, Some(dir)) => crate::notary::key::public_key(dir).ok(),
        _ => None,
    };
    let key = match (&auditors, &data_dirs) {
        (Some(k), _) => HeadKey::Auditors(k),
        (None, Some(k)) => HeadKey::OfLog(k),
        (None, None) => HeadKey::None,
    };
    let (pb, tick) = bar(last_position(&source), "verify-export");
    let report = crate::audit::verify_export_file(&args.file, records_of(&source)?, key, tick)?;
    pb.finish_and_clear();
    outln!(
        "{}",
        serde_json::to_string(&report).map_err(|e| Error::Other(e.to_string()))?
    )?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

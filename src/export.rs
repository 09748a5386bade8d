//! `idledger export` and `idledger verify-export`: compliance exports of a data dir or a
//! server's event feed, each with a manifest, and their independent check.

use crate::cli::{CliError, DataDir};
use crate::inspect::{decode_at, each_record, last_position};
use crate::progress;
use chrono::{DateTime, Utc};
use clap::Args;
use idledger_domain::{DomainId, Hash, UserId};
use idledger_replay::export::{compare_rows, data_rows};
use idledger_replay::{ExportFormat, ExportKind, ExportQuery, ExportSummary, Exporter, Verifier};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `idledger export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// `password-changes`, `events` or `users`.
    #[arg(long)]
    pub kind: String,
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
    #[arg(long)]
    pub format: String,
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
}

/// The query and format of an export, from the CLI's or the API's words.
pub fn query_of(
    kind: &str,
    format: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    domain: Option<uuid::Uuid>,
    user: Option<uuid::Uuid>,
) -> Result<(ExportQuery, ExportFormat), String> {
    let kind = ExportKind::parse(kind)
        .ok_or_else(|| format!("kind {kind:?}: use password-changes, events or users"))?;
    let format = ExportFormat::parse(format)
        .ok_or_else(|| format!("format {format:?}: use csv or jsonl"))?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err("from is after to".into());
        }
    }
    Ok((
        ExportQuery {
            kind,
            from,
            to,
            domain: domain.map(DomainId),
            user: user.map(UserId),
        },
        format,
    ))
}

/// The manifest of an export file.
pub fn manifest(
    query: &ExportQuery,
    format: ExportFormat,
    summary: &ExportSummary,
    file_sha256: &[u8],
) -> Value {
    json!({
        "kind": query.kind,
        "format": format,
        "filters": {"domain": query.domain, "user": query.user},
        "range": {"from": query.from, "to": query.to},
        "rows": summary.rows,
        "first_position": summary.first_position,
        "last_position": summary.last_position,
        "log_position": summary.log_position,
        "chain_hash": summary.chain_hash.to_hex(),
        "file_sha256": hex::encode(file_sha256),
        "tool": format!("idledger {}", env!("CARGO_PKG_VERSION")),
        "made_at": Utc::now(),
    })
}

/// Calls its argument with each stored record `(position, bytes)` in log order until it
/// breaks: a data dir, a server's feed, or the server's own log.
pub type Records<'a> =
    Box<dyn FnOnce(&mut dyn FnMut(u64, &[u8]) -> ControlFlow<()>) -> Result<(), CliError> + 'a>;

/// The records of a data dir or of a server's event feed.
pub fn records_of(source: &DataDir) -> Records<'_> {
    Box::new(move |f| each_record(source, 1, f))
}

/// The records of an open log (the server's own, or one a benchmark just filled).
pub fn records_of_log(log: std::sync::Arc<crate::store::SledEventLog>) -> Records<'static> {
    Box::new(move |f| {
        for r in log.raw_records(1) {
            let (pos, bytes) = r?;
            if f(pos, &bytes).is_break() {
                break;
            }
        }
        Ok(())
    })
}

/// Runs an export over `records` (in log order), writing the rows to `sink`; stops after
/// `until_position` when given. Returns the summary and the SHA-256 of what was written.
pub fn run_export(
    records: Records<'_>,
    query: &ExportQuery,
    format: ExportFormat,
    until_position: Option<u64>,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    mut on_record: impl FnMut(u64, &[u8]),
) -> Result<(ExportSummary, Vec<u8>), CliError> {
    let mut exporter = Exporter::new(query.clone(), format);
    let mut hasher = Sha256::new();
    let mut buf = exporter.header();
    let mut failed: Option<CliError> = None;
    let mut write = |buf: &mut Vec<u8>, hasher: &mut Sha256| -> std::io::Result<()> {
        hasher.update(&buf[..]);
        sink(buf)?;
        buf.clear();
        Ok(())
    };
    records(&mut |pos, bytes| {
        if until_position.is_some_and(|u| pos > u) {
            return ControlFlow::Break(());
        }
        on_record(pos, bytes);
        let env = match decode_at(pos, bytes) {
            Ok(e) => e,
            Err(e) => {
                failed = Some(e.into());
                return ControlFlow::Break(());
            }
        };
        let flow = exporter.push(&env, &mut buf);
        if buf.len() >= 1 << 16 {
            if let Err(e) = write(&mut buf, &mut hasher) {
                failed = Some(e.into());
                return ControlFlow::Break(());
            }
        }
        flow
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let summary = exporter.finish(&mut buf);
    write(&mut buf, &mut hasher)?;
    Ok((summary, hasher.finalize().to_vec()))
}

fn manifest_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// `idledger export`: prints where the file and manifest went.
pub fn export(args: &ExportArgs) -> Result<ExitCode, CliError> {
    println!("{}", export_file(args)?);
    Ok(ExitCode::SUCCESS)
}

/// Writes the export and its manifest; answers where they went.
pub fn export_file(args: &ExportArgs) -> Result<Value, CliError> {
    export_from(args, records_of(&args.dir), last_position(&args.dir))
}

/// [`export_file`] over any records (`args.dir` is not read).
pub fn export_from(
    args: &ExportArgs,
    records: Records<'_>,
    last: Option<u64>,
) -> Result<Value, CliError> {
    let (query, format) = query_of(
        &args.kind,
        &args.format,
        args.from,
        args.to,
        args.domain,
        args.user,
    )
    .map_err(CliError::Other)?;
    let pb = progress::bar(last, "export");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    let (summary, sha) = run_export(
        records,
        &query,
        format,
        None,
        |b| file.write_all(b),
        |pos, _| {
            if pos % 4096 == 0 {
                pb.set_position(pos);
            }
        },
    )?;
    file.flush()?;
    file.get_ref().sync_all()?;
    pb.finish_and_clear();
    let m = manifest(&query, format, &summary, &sha);
    let text = serde_json::to_string_pretty(&m).map_err(|e| CliError::Other(e.to_string()))?;
    std::fs::write(manifest_path(&args.out), format!("{text}\n"))?;
    Ok(
        json!({"file": args.out, "manifest": manifest_path(&args.out), "rows": summary.rows, "log_position": summary.log_position}),
    )
}

/// `idledger verify-export`: prints the report; exits 1 unless it is ok.
pub fn verify_export(args: &VerifyExportArgs) -> Result<ExitCode, CliError> {
    let report = verify_report(args)?;
    println!("{report}");
    Ok(if report["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Recomputes the rows from the log up to the manifest's position, checks the chain to
/// there, and compares the file row by row.
pub fn verify_report(args: &VerifyExportArgs) -> Result<Value, CliError> {
    verify_from(&args.file, records_of(&args.dir))
}

/// [`verify_report`] of `file` over any records.
pub fn verify_from(file_path: &Path, records: Records<'_>) -> Result<Value, CliError> {
    let m: Value = serde_json::from_slice(&std::fs::read(manifest_path(file_path))?)
        .map_err(|e| CliError::Other(format!("the manifest: {e}")))?;
    let file = std::fs::read(file_path)?;
    let text = |k: &str| m[k].as_str().map(str::to_owned);
    let time = |v: &Value| v.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok());
    let uuid = |v: &Value| v.as_str().and_then(|s| s.parse::<uuid::Uuid>().ok());
    let (query, format) = query_of(
        &text("kind").unwrap_or_default(),
        &text("format").unwrap_or_default(),
        time(&m["range"]["from"]),
        time(&m["range"]["to"]),
        uuid(&m["filters"]["domain"]),
        uuid(&m["filters"]["user"]),
    )
    .map_err(|e| CliError::Other(format!("the manifest: {e}")))?;
    let log_position = m["log_position"].as_u64().unwrap_or(0);
    let pb = progress::bar(Some(log_position), "verify-export");
    let mut expected = Vec::new();
    let mut chain = Verifier::new();
    let (summary, sha) = run_export(
        records,
        &query,
        format,
        Some(log_position),
        |b| {
            expected.extend_from_slice(b);
            Ok(())
        },
        |pos, bytes| {
            chain.push(pos, bytes);
            if pos % 4096 == 0 {
                pb.set_position(pos);
            }
        },
    )?;
    pb.finish_and_clear();
    let chain = chain.finish();
    let file_sha = hex::encode(Sha256::digest(&file));
    let chain_hash = Hash::from_hex(&text("chain_hash").unwrap_or_default());
    let mut problems: Vec<Value> = Vec::new();
    if !chain.ok {
        problems.push(json!({"problem": "chain", "detail": chain.summary_json()}));
    }
    if summary.log_position != log_position || Some(summary.chain_hash) != chain_hash {
        problems.push(json!({"problem": "chain_hash", "detail": format!(
            "the log's record at position {log_position} does not have the manifest's chain hash"
        )}));
    }
    let file_rows = data_rows(format, &file).map_err(CliError::Other)?;
    let log_rows = data_rows(format, &expected).map_err(CliError::Other)?;
    if let Some(r) = compare_rows(&file_rows, &log_rows) {
        problems.push(serde_json::to_value(r).unwrap_or(Value::Null));
    }
    if m["rows"].as_u64() != Some(summary.rows) {
        problems.push(json!({"problem": "row_count", "detail": format!(
            "the manifest says {} rows, the log gives {}", m["rows"], summary.rows
        )}));
    }
    if text("file_sha256").as_deref() != Some(file_sha.as_str()) {
        problems.push(json!({"problem": "file_sha256", "detail": "the file is not the one the manifest describes"}));
    }
    if problems.is_empty() && hex::encode(&sha) != file_sha {
        problems.push(json!({"problem": "bytes", "detail": "the rows match but the bytes do not"}));
    }
    let ok = problems.is_empty();
    Ok(json!({"ok": ok, "rows": summary.rows, "log_position": log_position, "problems": problems}))
}

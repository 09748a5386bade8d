//! `idledger export` and `idledger verify-export`: compliance exports of a data dir or a
//! server's event feed, each with a manifest, and their independent check.

use crate::cli::{CliError, DataDir};
use crate::inspect::{each_record, last_position};
use crate::progress;
use crate::store::parallel_decode::{decoder_threads, parallel_map, Reader};
use crate::store::sled_log::{open_raw, RawStore};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use clap::Args;
use idledger_domain::{DomainId, Hash, UserId};
use idledger_replay::export::RowComparer;
use idledger_replay::verify::CheckedRecord;
use idledger_replay::{ExportFormat, ExportKind, ExportQuery, ExportSummary, Exporter, Verifier};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read, Write};
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

/// Reads stored records `(position, bytes)` in log order: a data dir, a server's feed, or
/// an open log. It runs on its own thread while others decode.
pub type Records = Reader<CliError>;

/// The records of a data dir or of a server's event feed.
pub fn records_of(source: &DataDir) -> Result<Records, CliError> {
    match &source.data_dir {
        Some(dir) => {
            let store = open_raw(dir)?;
            let read = records_of_store(&store)?;
            // The store stays open for as long as its records are read.
            Ok(Box::new(move |f| {
                let _open = &store;
                read(f)
            }))
        }
        None => {
            let source = source.clone();
            Ok(Box::new(move |f| each_record(&source, 1, f)))
        }
    }
}

/// The records of a store opened for reading.
pub fn records_of_store(store: &RawStore) -> Result<Records, CliError> {
    let read = store.reader()?;
    Ok(Box::new(move |f| read(f).map_err(CliError::from)))
}

/// The records of an open log as committed now (the server's own, or one a benchmark just
/// filled).
pub fn records_of_log(log: &crate::store::SledEventLog) -> Records {
    let read = log.reader(1);
    Box::new(move |f| read(f).map_err(CliError::from))
}

/// Where an export's bytes go: a file, a response body, or a comparison with a file.
pub trait RowSink {
    /// The file's first bytes (the CSV header), once, before any row. Most sinks take
    /// them like a row.
    fn header(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.row(bytes)
    }
    /// One row, with its line end.
    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

/// Bytes written somewhere, and their SHA-256 for the manifest.
pub struct HashedWriter<W> {
    /// Where the bytes go.
    pub inner: W,
    sha: Sha256,
}

impl<W: Write> HashedWriter<W> {
    /// Writes to `inner`.
    pub fn new(inner: W) -> Self {
        HashedWriter {
            inner,
            sha: Sha256::new(),
        }
    }

    /// The SHA-256 of everything written, and the writer.
    pub fn finish(self) -> (Vec<u8>, W) {
        (self.sha.finalize().to_vec(), self.inner)
    }
}

impl<W: Write> RowSink for HashedWriter<W> {
    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sha.update(bytes);
        self.inner.write_all(bytes)
    }
}

impl<R: BufRead> RowSink for RowComparer<R> {
    fn header(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        RowComparer::header(self, bytes)
    }

    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        RowComparer::row(self, bytes)
    }
}

/// An export file written on its own thread: rows gather in large buffers that a writer
/// thread hashes, writes and syncs as they come, so the disk works while rows are made
/// and little is left to sync at the end.
pub struct FileSink {
    buf: Vec<u8>,
    full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<Vec<u8>>>>,
}

/// Bytes per buffer handed to the writer.
const FILE_BUFFER: usize = 1 << 20;
/// Bytes written between syncs.
const SYNC_EVERY: u64 = 16 << 20;

impl FileSink {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::create(path)?;
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(6);
        // Syncs run beside the writes (a sync waits for the disk, and writes must not wait
        // for it): the syncer makes durable what was written before each nudge.
        let syncing = file.try_clone()?;
        let (nudge_tx, nudge_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let syncer = std::thread::Builder::new()
            .name("export-sync".into())
            .spawn(move || {
                for () in nudge_rx {
                    syncing.sync_data()?;
                }
                Ok::<_, std::io::Error>(())
            })?;
        let writer = std::thread::Builder::new()
            .name("export-writer".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                let mut unsynced = 0u64;
                for mut buf in full_rx {
                    sha.update(&buf);
                    file.write_all(&buf)?;
                    unsynced += buf.len() as u64;
                    if unsynced >= SYNC_EVERY {
                        // Busy syncing: the next nudge will cover these bytes too.
                        let _ = nudge_tx.try_send(());
                        unsynced = 0;
                    }
                    buf.clear();
                    let _ = empty_tx.try_send(buf);
                }
                drop(nudge_tx);
                syncer
                    .join()
                    .map_err(|_| std::io::Error::other("the export syncer failed"))??;
                file.sync_all()?;
                Ok(sha.finalize().to_vec())
            })?;
        Ok(FileSink {
            buf: Vec::with_capacity(FILE_BUFFER),
            full: Some(full_tx),
            empty: empty_rx,
            writer: Some(writer),
        })
    }

    fn hand_over(&mut self) -> std::io::Result<()> {
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FILE_BUFFER));
        let buf = std::mem::replace(&mut self.buf, next);
        let sent = self.full.as_ref().is_some_and(|f| f.send(buf).is_ok());
        if sent {
            Ok(())
        } else {
            // The writer stopped: its error says why.
            self.finish().map(|_| ())
        }
    }

    /// Writes what is left, syncs the file and answers the SHA-256 of all it holds.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        if !self.buf.is_empty() {
            if let Some(f) = &self.full {
                let _ = f.send(std::mem::take(&mut self.buf));
            }
        }
        self.full = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(done)) => done,
            Some(Err(_)) => Err(std::io::Error::other("the export writer failed")),
            None => Err(std::io::Error::other("the export writer has stopped")),
        }
    }
}

impl RowSink for FileSink {
    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= FILE_BUFFER {
            self.hand_over()?;
        }
        Ok(())
    }
}

/// A file read and hashed on its own thread, in large chunks, while rows are compared.
struct FileSource {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl FileSource {
    fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
        let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(6);
        let reader = std::thread::Builder::new()
            .name("export-reader".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                loop {
                    let mut buf = spent_rx.try_recv().unwrap_or_default();
                    buf.clear();
                    let read = (&mut file).take(FILE_BUFFER as u64).read_to_end(&mut buf);
                    let end = !matches!(read, Ok(n) if n > 0);
                    sha.update(&buf);
                    if chunk_tx.send(read.map(|_| buf)).is_err() || end {
                        return sha.finalize().to_vec();
                    }
                }
            })?;
        Ok(FileSource {
            chunks: chunk_rx,
            spent: spent_tx,
            chunk: Vec::new(),
            at: 0,
            reader: Some(reader),
        })
    }

    /// Reads to the end; the SHA-256 of the whole file.
    fn finish(mut self) -> std::io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        self.read_to_end(&mut rest)?;
        drop(self.chunks);
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .ok_or_else(|| std::io::Error::other("the export reader failed"))
    }
}

impl Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for FileSource {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at == self.chunk.len() {
            // A closed channel is the end (the reader stops after the last chunk).
            if let Ok(next) = self.chunks.recv() {
                let spent = std::mem::replace(&mut self.chunk, next?);
                let _ = self.spent.try_send(spent);
                self.at = 0;
            }
        }
        Ok(&self.chunk[self.at..])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.chunk.len());
    }
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
) -> Result<ExportSummary, CliError> {
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
        |what| CliError::Other(what.to_owned()),
    );
    let mut exporter = Exporter::new(query.clone(), format);
    sink.header(&exporter.header())?;
    let mut row = Vec::with_capacity(1024);
    for record in checked {
        let record = record?;
        if until_position.is_some_and(|u| record.position > u) {
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
    Ok(summary)
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
    export_from(args, records_of(&args.dir)?, last_position(&args.dir))
}

/// [`export_file`] over any records (`args.dir` is not read).
pub fn export_from(
    args: &ExportArgs,
    records: Records,
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
    let mut sink = FileSink::create(&args.out)?;
    let summary = run_export(records, &query, format, None, &mut sink, None, |pos| {
        if pos % 4096 == 0 {
            pb.set_position(pos);
        }
    })?;
    let sha = sink.finish()?;
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
    verify_from(&args.file, records_of(&args.dir)?)
}

/// [`verify_report`] of `file` over any records.
pub fn verify_from(file_path: &Path, records: Records) -> Result<Value, CliError> {
    let m: Value = serde_json::from_slice(&std::fs::read(manifest_path(file_path))?)
        .map_err(|e| CliError::Other(format!("the manifest: {e}")))?;
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
    let mut rows = RowComparer::new(FileSource::open(file_path)?, format);
    let mut chain = Verifier::expecting(log_position);
    let summary = run_export(
        records,
        &query,
        format,
        Some(log_position),
        &mut rows,
        Some(&mut chain),
        |pos| {
            if pos % 4096 == 0 {
                pb.set_position(pos);
            }
        },
    )?;
    pb.finish_and_clear();
    let (mismatches, file) = rows.finish()?;
    let file_sha = hex::encode(file.finish()?);
    let chain = chain.finish();
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
    for m in mismatches {
        problems.push(serde_json::to_value(m).unwrap_or(Value::Null));
    }
    if m["rows"].as_u64() != Some(summary.rows) {
        problems.push(json!({"problem": "row_count", "detail": format!(
            "the manifest says {} rows, the log gives {}", m["rows"], summary.rows
        )}));
    }
    if text("file_sha256").as_deref() != Some(file_sha.as_str()) {
        problems.push(json!({"problem": "file_sha256", "detail": "the file is not the one the manifest describes"}));
    }
    let ok = problems.is_empty();
    Ok(json!({"ok": ok, "rows": summary.rows, "log_position": log_position, "problems": problems}))
}

//! Backups of a data dir, and restores from them: the log is the backup.
//!
//! A backup is one file: a header line, then sections (`tag ‖ u64 LE length ‖ bytes`):
//! chunks of stored records exactly as stored (`C`: `u32 LE length ‖ record`, 10,000 per
//! chunk), the sealed key store (`K`) and the sealed log-signing key (`L`) — both useless
//! without the master key, **which is never part of a backup** — and last the manifest
//! (`M`, JSON): format, position, head hash, record count, each chunk's positions and
//! SHA-256, and the SHA-256 of everything before the manifest. A restore checks all of it,
//! and the chain of every record, before it writes anything.

use crate::store::sled_log::{import_records, open_raw};
use crate::store::StoreError;
use idledger_replay::verify::{CheckedRecord, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// The first line of every backup file.
pub const MAGIC: &[u8] = b"idledger backup 1\n";
/// Records per chunk, at most.
const CHUNK: usize = 10_000;
/// A chunk ends once it holds this many bytes (records are at most 1 MiB, so no chunk
/// passes 65 MiB).
const CHUNK_BYTES: usize = 64 << 20;
/// No section is larger: a hostile length is refused before anything is read into memory.
const MAX_SECTION: u64 = 256 << 20;

/// Why a backup could not be made or a file cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The log could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file is not what a backup is; `part` names where.
    #[error("{part}: {detail}")]
    Refused {
        /// The part of the file that is wrong (`header`, `chunk 3 (positions …)`, `manifest` …).
        part: String,
        /// What is wrong.
        detail: String,
    },
    /// A record breaks the chain.
    #[error("position {position}: {reason}")]
    Chain {
        /// The first bad position.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The target of a restore holds something already.
    #[error("{0} is not empty: a restore writes only into a new or empty data dir")]
    NotEmpty(String),
}

fn refused(part: impl Into<String>, detail: impl Into<String>) -> BackupError {
    BackupError::Refused {
        part: part.into(),
        detail: detail.into(),
    }
}

/// One chunk as the manifest lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChunkEntry {
    /// Its first position.
    pub first: u64,
    /// Its last position.
    pub last: u64,
    /// SHA-256 of the section's bytes (hex).
    pub sha256: String,
}

/// What a backup holds, written last.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `idledger-backup`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// The position the backup runs to (taken when it started).
    pub position: u64,
    /// The record at `position`'s hash (hex).
    pub head_hash: String,
    /// Records held (`position` of them: positions start at 1).
    pub record_count: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkEntry>,
    /// SHA-256 of the sealed key store section, if the data dir had one.
    pub keystore_sha256: Option<String>,
    /// SHA-256 of the sealed log-signing key section, if the data dir had one.
    pub log_key_sha256: Option<String>,
    /// SHA-256 of every byte before the manifest's section.
    pub contents_sha256: String,
    /// The latest signed tree head the data dir kept (a C2SP checkpoint), if any.
    pub signed_tree_head: Option<String>,
}

/// Writes sections, hashing every byte.
struct Sections<W: Write> {
    out: W,
    hash: Sha256,
}

impl<W: Write> Sections<W> {
    fn section(&mut self, tag: u8, bytes: &[u8]) -> std::io::Result<()> {
        let head = [&[tag][..], &(bytes.len() as u64).to_le_bytes()].concat();
        self.hash.update(&head);
        self.hash.update(bytes);
        self.out.write_all(&head)?;
        self.out.write_all(bytes)
    }
}

/// A backup being written: records are pushed in order, then [`BackupWriter::finish`]
/// adds the sealed files and the manifest.
pub struct BackupWriter<W: Write> {
    s: Sections<BufWriter<W>>,
    verifier: Verifier,
    chunks: Vec<ChunkEntry>,
    buf: Vec<u8>,
    first: u64,
    next: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Starts a backup on `out`.
    pub fn new(out: W) -> Result<Self, BackupError> {
        let mut s = Sections {
            out: BufWriter::with_capacity(1 << 16, out),
            hash: Sha256::new(),
        };
        s.hash.update(MAGIC);
        s.out.write_all(MAGIC)?;
        Ok(BackupWriter {
            s,
            verifier: Verifier::new(),
            chunks: Vec::new(),
            buf: Vec::new(),
            first: 1,
            next: 1,
        })
    }

    fn flush_chunk(&mut self) -> Result<(), BackupError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.chunks.push(ChunkEntry {
            first: self.first,
            last: self.next - 1,
            sha256: hex::encode(Sha256::digest(&self.buf)),
        });
        self.s.section(b'C', &self.buf)?;
        self.buf.clear();
        self.first = self.next;
        Ok(())
    }

    /// The record at `position` (the next one: positions are pushed 1, 2, 3 …).
    pub fn push(&mut self, position: u64, bytes: &[u8]) -> Result<(), BackupError> {
        if position != self.next {
            return Err(BackupError::Chain {
                position: self.next,
                reason: "missing from the store".into(),
            });
        }
        self.verifier.accept(&CheckedRecord::check(position, bytes));
        self.buf
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(bytes);
        self.next += 1;
        if self.next - self.first == CHUNK as u64 || self.buf.len() >= CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// The records pushed so far.
    pub fn records(&self) -> u64 {
        self.next - 1
    }

    /// Ends the backup with the sealed files and the manifest; answers the manifest.
    pub fn finish(
        mut self,
        keystore: Option<&[u8]>,
        log_key: Option<&[u8]>,
        signed_tree_head: Option<String>,
    ) -> Result<Manifest, BackupError> {
        self.flush_chunk()?;
        let report = std::mem::take(&mut self.verifier).finish();
        if let Some(p) = report.first_bad() {
            return Err(BackupError::Chain {
                position: p.position,
                reason: p.reason.clone(),
            });
        }
        let hash_of = |b: &[u8]| hex::encode(Sha256::digest(b));
        if let Some(k) = keystore {
            self.s.section(b'K', k)?;
        }
        if let Some(k) = log_key {
            self.s.section(b'L', k)?;
        }
        let manifest = Manifest {
            format: "idledger-backup".into(),
            version: 1,
            position: report.head_position,
            head_hash: report.head_hash.to_hex(),
            record_count: report.events,
            chunks: std::mem::take(&mut self.chunks),
            keystore_sha256: keystore.map(hash_of),
            log_key_sha256: log_key.map(hash_of),
            contents_sha256: hex::encode(self.s.hash.clone().finalize()),
            signed_tree_head,
        };
        let json = serde_json::to_vec(&manifest).map_err(|e| refused("manifest", e.to_string()))?;
        self.s.section(b'M', &json)?;
        self.s.out.flush()?;
        Ok(manifest)
    }
}

/// A file, or nothing, at `path`.
fn read_if_there(path: std::path::PathBuf) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The sealed files of a data dir a backup carries.
pub struct SealedFiles {
    /// The key store (data keys wrapped under the master key).
    pub keystore: Option<Vec<u8>>,
    /// The log-signing key, sealed.
    pub log_key: Option<Vec<u8>>,
}

/// Reads a data dir's sealed files. Read after the records: a key is on the device
/// before any record sealed under it.
pub fn sealed_files(data_dir: &Path) -> std::io::Result<SealedFiles> {
    Ok(SealedFiles {
        keystore: read_if_there(crate::secrets::keystore::path_in(data_dir))?,
        log_key: read_if_there(crate::notary::key::key_path(data_dir))?,
    })
}

/// Backs up a stopped server's data dir into the new file `out`.
pub fn backup_data_dir(
    data_dir: &Path,
    out: &Path,
    mut progress: impl FnMut(u64),
    total: impl FnOnce(u64),
) -> Result<Manifest, BackupError> {
    let store = open_raw(data_dir)?;
    let through = store.last_position()?;
    total(through);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)?;
    let written = write_store(&store, through, data_dir, &file, &mut progress)
        .and_then(|m| file.sync_all().map(|()| m).map_err(BackupError::from));
    if written.is_err() {
        // A cut file would only be refused later; better none at all.
        let _ = std::fs::remove_file(out);
    }
    written
}

/// [`backup_data_dir`]'s work, into `file`.
fn write_store(
    store: &crate::store::sled_log::RawStore,
    through: u64,
    data_dir: &Path,
    file: &std::fs::File,
    progress: &mut impl FnMut(u64),
) -> Result<Manifest, BackupError> {
    let mut w = BackupWriter::new(file)?;
    for r in store.records() {
        let (position, bytes) = r?;
        w.push(position, &bytes)?;
        progress(position);
    }
    if w.records() != through {
        return Err(BackupError::Chain {
            position: w.records() + 1,
            reason: format!("the store ends before position {through}"),
        });
    }
    let sealed = sealed_files(data_dir)?;
    let sth = crate::notary::latest_kept_note(data_dir);
    w.finish(sealed.keystore.as_deref(), sealed.log_key.as_deref(), sth)
}

/// What [`read`] found in a file.
pub struct Contents {
    /// The manifest.
    pub manifest: Manifest,
    /// The sealed key store.
    pub keystore: Option<Vec<u8>>,
    /// The sealed log-signing key.
    pub log_key: Option<Vec<u8>>,
}

/// Reads a backup file from its start, checking every part; `record` hears each record
/// (in order) once its chunk's bytes are read. The manifest is checked against what was
/// read once it is reached, so a caller must not keep what `record` heard unless this
/// answers `Ok`.
pub fn read(
    input: impl Read,
    mut record: impl FnMut(u64, &[u8]) -> Result<(), BackupError>,
) -> Result<Contents, BackupError> {
    let mut input = BufReader::new(input);
    let mut hash = Sha256::new();
    let mut magic = vec![0u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| refused("header", "too short to be a backup"))?;
    if magic != MAGIC {
        return Err(refused("header", "not an idledger backup (version 1)"));
    }
    hash.update(MAGIC);
    let mut verifier = Verifier::new();
    let mut chunks: Vec<ChunkEntry> = Vec::new();
    let (mut keystore, mut log_key) = (None, None);
    let mut next = 1u64;
    let manifest = loop {
        let mut head = [0u8; 9];
        match input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(refused(
                    "manifest",
                    format!("missing: the file ends after position {}", next - 1),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let len = u64::from_le_bytes(head[1..].try_into().unwrap_or_default());
        let part = match head[0] {
            b'C' => format!("chunk {} (from position {next})", chunks.len() + 1),
            b'K' => "key store".into(),
            b'L' => "log key".into(),
            b'M' => "manifest".into(),
            other => return Err(refused("section", format!("unknown tag {other:#04x}"))),
        };
        if len > MAX_SECTION {
            return Err(refused(part, format!("length {len} is not believable")));
        }
        let mut bytes = Vec::new();
        (&mut input).take(len).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != len {
            return Err(refused(
                part,
                format!("truncated: {} of {len} bytes", bytes.len()),
            ));
        }
        if head[0] == b'M' {
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| refused("manifest", format!("unreadable: {e}")))?;
            let mut rest = [0u8; 1];
            if input.read(&mut rest)? != 0 {
                return Err(refused("manifest", "bytes follow it"));
            }
            break manifest;
        }
        hash.update(head);
        hash.update(&bytes);
        match head[0] {
            b'C' => {
                let first = next;
                let mut at = 0usize;
                while at < bytes.len() {
                    let len = bytes
                        .get(at..at + 4)
                        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
                        .ok_or_else(|| refused(&part, "a record's length is cut"))?;
                    let rec = bytes
                        .get(at + 4..at + 4 + len)
                        .ok_or_else(|| refused(&part, format!("position {next} is cut")))?;
                    verifier.accept(&CheckedRecord::check(next, rec));
                    record(next, rec)?;
                    at += 4 + len;
                    next += 1;
                }
                chunks.push(ChunkEntry {
                    first,
                    last: next - 1,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                });
            }
            b'K' => keystore = Some(bytes),
            _ => log_key = Some(bytes),
        }
    };
    if manifest.format != "idledger-backup" || manifest.version != 1 {
        return Err(refused(
            "manifest",
            format!("format {} {}", manifest.format, manifest.version),
        ));
    }
    for (i, want) in manifest.chunks.iter().enumerate() {
        let what = format!("chunk {} (positions {}–{})", i + 1, want.first, want.last);
        match chunks.get(i) {
            None => return Err(refused(what, "missing")),
            Some(got) if got != want => {
                return Err(refused(
                    what,
                    if got.first != want.first || got.last != want.last {
                        format!("holds positions {}–{} instead", got.first, got.last)
                    } else {
                        "its bytes differ from the manifest's SHA-256".into()
                    },
                ))
            }
            Some(_) => {}
        }
    }
    if chunks.len() > manifest.chunks.len() {
        return Err(refused(
            format!("chunk {}", manifest.chunks.len() + 1),
            "not in the manifest",
        ));
    }
    let hash_of = |b: &Option<Vec<u8>>| b.as_deref().map(|b| hex::encode(Sha256::digest(b)));
    if hash_of(&keystore) != manifest.keystore_sha256 {
        return Err(refused("key store", "differs from the manifest's SHA-256"));
    }
    if hash_of(&log_key) != manifest.log_key_sha256 {
        return Err(refused("log key", "differs from the manifest's SHA-256"));
    }
    if hex::encode(hash.finalize()) != manifest.contents_sha256 {
        return Err(refused("contents", "differ from the manifest's SHA-256"));
    }
    let report = verifier.finish();
    if let Some(p) = report.first_bad() {
        return Err(BackupError::Chain {
            position: p.position,
            reason: p.reason.clone(),
        });
    }
    if report.events != manifest.record_count
        || report.head_position != manifest.position
        || report.head_hash.to_hex() != manifest.head_hash
    {
        return Err(refused(
            "manifest",
            format!(
                "names {} records to position {} (head {}); the file holds {} to position {} (head {})",
                manifest.record_count,
                manifest.position,
                manifest.head_hash,
                report.events,
                report.head_position,
                report.head_hash.to_hex()
            ),
        ));
    }
    Ok(Contents {
        manifest,
        keystore,
        log_key,
    })
}

/// Whether `dir` holds anything.
fn occupied(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Restores the backup `from` into the new or empty data dir `data_dir`: the whole file is
/// checked first (nothing is written for a file that is wrong anywhere), then the records
/// are written as they were stored and the sealed files put back, in a staging directory
/// inside `data_dir` that is moved into place only when everything is there. The file is
/// opened once: both passes read the same bytes. Answers the manifest.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Manifest, BackupError> {
    use std::io::Seek;
    if occupied(data_dir)? {
        return Err(BackupError::NotEmpty(data_dir.display().to_string()));
    }
    let mut file = std::fs::File::open(from)?;
    let checked = read(&file, |_, _| Ok(()))?;
    file.rewind()?;
    let created = !data_dir.exists();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)?;
    }
    let staging = data_dir.join(".restoring");
    let outcome =
        restore_into(&file, &staging, &checked.manifest, &mut progress).and_then(|manifest| {
            for entry in std::fs::read_dir(&staging)? {
                let entry = entry?;
                std::fs::rename(entry.path(), data_dir.join(entry.file_name()))?;
            }
            std::fs::remove_dir(&staging)?;
            Ok(manifest)
        });
    if outcome.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        if created {
            let _ = std::fs::remove_dir(data_dir);
        }
    }
    outcome
}

/// The second pass of [`restore`]: everything into `staging`.
fn restore_into(
    file: &std::fs::File,
    staging: &Path,
    checked: &Manifest,
    progress: &mut impl FnMut(u64),
) -> Result<Manifest, BackupError> {
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(CHUNK);
    let importer = import_records(staging)?;
    let contents = read(file, |position, bytes| {
        batch.push((position, bytes.to_vec()));
        if batch.len() == CHUNK {
            importer.put(&batch)?;
            batch.clear();
            progress(position);
        }
        Ok(())
    })?;
    if contents.manifest != *checked {
        return Err(refused("file", "changed while it was being restored"));
    }
    importer.put(&batch)?;
    importer.finish()?;
    progress(contents.manifest.position);
    let write = |path: std::path::PathBuf, bytes: &Option<Vec<u8>>| -> Result<(), BackupError> {
        if let Some(b) = bytes {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            crate::secrets::write_private(&path, b)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    };
    write(
        crate::secrets::keystore::path_in(staging),
        &contents.keystore,
    )?;
    write(crate::notary::key::key_path(staging), &contents.log_key)?;
    Ok(contents.manifest)
}

//! Backups of a data dir, and restores from them: the log is the backup.
//!
//! A backup is one file: a header line, then sections (`tag ‖ u64 LE length ‖ bytes`):
//! chunks of stored records exactly as stored (`C`: `u32 LE length ‖ record`, 10,000 per
//! chunk), the sealed key store (`K`) and the sealed log-signing key (`L`) — both useless
//! without the master key, **which is never part of a backup** — and last the manifest
//! (`M`, JSON): format, the positions it holds, head hash, record count, each chunk's
//! positions and SHA-256, and the SHA-256 of everything before the manifest. A restore
//! checks all of it, and the chain of every record, before it writes anything.
//!
//! A file may also hold an increment: the records after a position (`from` in its
//! manifest), which only a reader that has checked the records before can check. The
//! copy `backup --follow` keeps ([`follow`]) is made of them.

mod data_dir;
pub mod follow;

pub use data_dir::{backup_data_dir, restore, BackupSource, KeysNeeded, Restored, UnsignedTail};

use crate::durable::{parent_of, sync_dir};
use crate::store::StoreError;
use idledger_domain::Hash;
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
/// No chunk section is larger: a chunk ends with the record that takes it past
/// [`CHUNK_BYTES`], and each record comes with its 4-byte length. Restores hold several
/// chunks at once, so a chunk may not claim the room of a key store.
const MAX_CHUNK_SECTION: u64 = (CHUNK_BYTES + crate::store::sled_log::MAX_RECORD_BYTES + 4) as u64;

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
    /// Another `backup --follow` keeps this copy.
    #[error("{0} is kept by another `backup --follow`")]
    Busy(String),
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

fn position_one() -> u64 {
    1
}

/// What a backup holds, written last.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `idledger-backup`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// The first position held: 1 for a whole backup, later for an increment.
    #[serde(default = "position_one")]
    pub from: u64,
    /// The position the backup runs to (taken when it started).
    pub position: u64,
    /// The record at `position`'s hash (hex).
    pub head_hash: String,
    /// Records held (`position - from + 1`).
    pub record_count: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkEntry>,
    /// SHA-256 of the sealed key store, if the data dir had one.
    pub keystore_sha256: Option<String>,
    /// The key store is left out because the reader named it as the one it has
    /// (`keystore_sha256` says which).
    #[serde(default)]
    pub keystore_unchanged: bool,
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

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A backup being written: records are pushed in order, then [`BackupWriter::finish`]
/// adds the sealed files and the manifest.
pub struct BackupWriter<W: Write> {
    s: Sections<BufWriter<W>>,
    /// A whole backup checks every record as it goes; an increment only follows the
    /// links (its reader checks every record, and a server sending increments every
    /// quarter second should not hash its log twice).
    verifier: Option<Verifier>,
    /// The last record's position and hash.
    head: (u64, Hash),
    broken_link: Option<u64>,
    chunks: Vec<ChunkEntry>,
    buf: Vec<u8>,
    from: u64,
    first: u64,
    next: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Starts a whole backup (from position 1) on `out`.
    pub fn new(out: W) -> Result<Self, BackupError> {
        Self::starting(out, Some(Verifier::new()), (0, Hash::default()))
    }

    /// Starts an increment on `out`: the records after `position`, whose hash is `hash`.
    pub fn after(out: W, position: u64, hash: Hash) -> Result<Self, BackupError> {
        Self::starting(out, None, (position, hash))
    }

    fn starting(
        out: W,
        verifier: Option<Verifier>,
        head: (u64, Hash),
    ) -> Result<Self, BackupError> {
        let mut s = Sections {
            out: BufWriter::with_capacity(1 << 16, out),
            hash: Sha256::new(),
        };
        s.hash.update(MAGIC);
        s.out.write_all(MAGIC)?;
        let from = head.0 + 1;
        Ok(BackupWriter {
            s,
            verifier,
            head,
            broken_link: None,
            chunks: Vec::new(),
            buf: Vec::new(),
            from,
            first: from,
            next: from,
        })
    }

    fn flush_chunk(&mut self) -> Result<(), BackupError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.chunks.push(ChunkEntry {
            first: self.first,
            last: self.next - 1,
            sha256: sha256_hex(&self.buf),
        });
        self.s.section(b'C', &self.buf)?;
        self.buf.clear();
        self.first = self.next;
        Ok(())
    }

    /// The record at `position` (the next one: positions are pushed in order).
    pub fn push(&mut self, position: u64, bytes: &[u8]) -> Result<(), BackupError> {
        if position != self.next {
            return Err(BackupError::Chain {
                position: self.next,
                reason: "missing from the store".into(),
            });
        }
        match &mut self.verifier {
            Some(v) => v.accept(&CheckedRecord::check(position, bytes)),
            None => match idledger_domain::envelope::RawRecord::parse(bytes) {
                Ok(raw) if raw.prev_hash == self.head.1 => self.head.1 = raw.hash,
                _ => {
                    self.broken_link.get_or_insert(position);
                }
            },
        }
        self.head.0 = position;
        self.buf
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(bytes);
        self.next += 1;
        if self.next - self.first == CHUNK as u64 || self.buf.len() >= CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Holds a whole backup's records to `head`: one that does not give its root is a
    /// problem [`BackupWriter::finish`] refuses. (An increment checks no heads.)
    pub fn expect_head(&mut self, head: idledger_replay::tree::TreeHead) {
        if let Some(v) = &mut self.verifier {
            v.expect_heads(vec![head]);
        }
    }

    /// The last position pushed (or the one the increment starts after).
    pub fn position(&self) -> u64 {
        self.next - 1
    }

    /// Ends the backup with the sealed files and the manifest; answers the manifest. The
    /// key store is left out when its SHA-256 is `known_keystore` (the reader has it).
    pub fn finish(
        mut self,
        sealed: &SealedFiles,
        known_keystore: Option<&str>,
        signed_tree_head: Option<String>,
    ) -> Result<Manifest, BackupError> {
        self.flush_chunk()?;
        if let Some(p) = self.verifier.as_ref().and_then(Verifier::first_problem) {
            return Err(BackupError::Chain {
                position: p.position,
                reason: p.reason.clone(),
            });
        }
        if let Some(position) = self.broken_link {
            return Err(BackupError::Chain {
                position,
                reason: "broken chain: prev_hash does not match the previous record".into(),
            });
        }
        let head_hash = match &self.verifier {
            Some(v) => v.last_hash(),
            None => self.head.1,
        };
        let keystore_sha256 = sealed.keystore.as_deref().map(sha256_hex);
        let keystore_unchanged =
            known_keystore.is_some() && keystore_sha256.as_deref() == known_keystore;
        if let Some(k) = sealed.keystore.as_deref().filter(|_| !keystore_unchanged) {
            self.s.section(b'K', k)?;
        }
        if let Some(k) = &sealed.log_key {
            self.s.section(b'L', k)?;
        }
        let manifest = Manifest {
            format: "idledger-backup".into(),
            version: 1,
            from: self.from,
            position: self.head.0,
            head_hash: head_hash.to_hex(),
            record_count: self.next - self.from,
            chunks: std::mem::take(&mut self.chunks),
            keystore_sha256,
            keystore_unchanged,
            log_key_sha256: sealed.log_key.as_deref().map(sha256_hex),
            contents_sha256: hex::encode(self.s.hash.clone().finalize()),
            signed_tree_head,
        };
        let json = serde_json::to_vec(&manifest).map_err(|e| refused("manifest", e.to_string()))?;
        self.s.section(b'M', &json)?;
        self.s.out.flush()?;
        Ok(manifest)
    }
}

/// A new backup file, readable by its owner only (it holds the sealed key store and every
/// record). It is written under `<name>.partial` and takes its name only once it is whole
/// and on the device: a backup cut off (killed, a lost connection, a full disk) never lies
/// where a script waits for a finished one. The partial file is locked while written, so
/// one a killed backup left behind is taken over, and one another backup is writing is
/// refused.
pub struct NewBackupFile {
    file: std::fs::File,
    partial: std::path::PathBuf,
    path: std::path::PathBuf,
    finished: bool,
}

impl NewBackupFile {
    /// Starts the backup file `path`, which must not exist.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        use std::io::{Error, ErrorKind};
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let taken = |p: &Path| {
            Error::new(
                ErrorKind::AlreadyExists,
                format!("{} exists: a backup is never written over", p.display()),
            )
        };
        if path.symlink_metadata().is_ok() {
            return Err(taken(path));
        }
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        let partial = std::path::PathBuf::from(name);
        // Never through a link: one planted at the name would have the backup truncate,
        // chmod and fill whatever file it points to (and never waiting on a FIFO).
        let open = |new: bool| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(!new)
                .create_new(new)
                .truncate(false)
                .mode(0o600)
                .custom_flags(
                    crate::durable::NO_FOLLOW | rustix::fs::OFlags::NONBLOCK.bits() as i32,
                )
                .open(&partial)
                .map_err(|e| not_followed(e, &partial))
        };
        let busy = || {
            Error::new(
                ErrorKind::WouldBlock,
                format!("{} is being written by another backup", partial.display()),
            )
        };
        let mut file = open(false)?;
        file.try_lock().map_err(|_| busy())?;
        // Left by a killed backup. Only a file of no other name is written over: a second
        // name (a backup finished under it, then moved) must not lose its bytes to this.
        let meta = file.metadata()?;
        if !meta.file_type().is_file() || std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
            std::fs::remove_file(&partial)?;
            file = open(true).map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => busy(),
                _ => e,
            })?;
            file.try_lock().map_err(|_| busy())?;
        }
        // Its bytes and its permissions are not this one's.
        file.set_len(0)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(NewBackupFile {
            file,
            partial,
            path: path.to_owned(),
            finished: false,
        })
    }

    /// The file being written.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Where it is being written, to read it back before it is finished.
    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Puts the file on the device and gives it its name, which goes on the device too
    /// (without that, a backup reported written can vanish with a lost machine).
    pub fn finish(mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let appeared = || {
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} appeared meanwhile: a backup is never written over",
                    self.path.display()
                ),
            )
        };
        if self.path.symlink_metadata().is_ok() {
            return Err(appeared());
        }
        // A rename that refuses to replace, where the file system can (most local ones);
        // else a link, which fails if the name is taken (NFS); else, on file systems with
        // neither (vfat), a rename after the check above.
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;
        match renameat_with(CWD, &self.partial, CWD, &self.path, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Err(appeared()),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                match std::fs::hard_link(&self.partial, &self.path) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&self.partial);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(appeared())
                    }
                    Err(_) => std::fs::rename(&self.partial, &self.path)?,
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.finished = true;
        sync_dir(parent_of(&self.path))
    }
}

/// ELOOP said for what it means here.
fn not_followed(e: std::io::Error, path: &Path) -> std::io::Error {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        std::io::Error::other(format!(
            "{} is a symbolic link: a backup is written only to a file of its own",
            path.display()
        ))
    } else {
        e
    }
}

impl Drop for NewBackupFile {
    fn drop(&mut self) {
        if !self.finished {
            // A cut file would only be refused later; better none at all.
            let _ = std::fs::remove_file(&self.partial);
        }
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
#[derive(Clone, Debug, Default)]
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

/// One section as [`SectionReader`] finds it.
enum Section {
    /// A whole section.
    Whole { tag: u8, bytes: Vec<u8> },
    /// The input ends where a section would start.
    End,
    /// The input ends inside a section (a torn write, or a cut file).
    Torn { part: String, detail: String },
}

/// Reads a file's sections, hashing every byte before the manifest's.
struct SectionReader<R: Read> {
    input: BufReader<R>,
    hash: Sha256,
    /// Bytes read through the last whole section.
    offset: u64,
}

impl<R: Read> SectionReader<R> {
    fn open(input: R) -> Result<Self, BackupError> {
        let mut input = BufReader::with_capacity(1 << 20, input);
        let mut magic = vec![0u8; MAGIC.len()];
        input.read_exact(&mut magic).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => refused("header", "too short to be a backup"),
            _ => BackupError::Io(e),
        })?;
        if magic != MAGIC {
            return Err(refused("header", "not an idledger backup (version 1)"));
        }
        let mut hash = Sha256::new();
        hash.update(MAGIC);
        Ok(SectionReader {
            input,
            hash,
            offset: MAGIC.len() as u64,
        })
    }

    /// The next section; `part` names a chunk for messages.
    fn next(&mut self, chunk_part: impl FnOnce() -> String) -> Result<Section, BackupError> {
        let mut head = [0u8; 9];
        let mut got = 0;
        while got < head.len() {
            match self.input.read(&mut head[got..])? {
                0 if got == 0 => return Ok(Section::End),
                0 => {
                    return Ok(Section::Torn {
                        part: "section".into(),
                        detail: format!("truncated: {got} of 9 header bytes"),
                    })
                }
                n => got += n,
            }
        }
        let len = u64::from_le_bytes(head[1..].try_into().unwrap_or_default());
        let part = match head[0] {
            b'C' => chunk_part(),
            b'K' => "key store".into(),
            b'L' => "log key".into(),
            b'M' => "manifest".into(),
            other => return Err(refused("section", format!("unknown tag {other:#04x}"))),
        };
        let most = if head[0] == b'C' {
            MAX_CHUNK_SECTION
        } else {
            MAX_SECTION
        };
        if len > most {
            return Err(refused(part, format!("length {len} is not believable")));
        }
        let mut bytes = Vec::new();
        (&mut self.input).take(len).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != len {
            return Ok(Section::Torn {
                part,
                detail: format!("truncated: {} of {len} bytes", bytes.len()),
            });
        }
        if head[0] != b'M' {
            self.hash.update(head);
            self.hash.update(&bytes);
        }
        self.offset += 9 + len;
        Ok(Section::Whole {
            tag: head[0],
            bytes,
        })
    }

    /// Whether anything follows.
    fn at_end(&mut self) -> Result<bool, BackupError> {
        let mut rest = [0u8; 1];
        Ok(self.input.read(&mut rest)? == 0)
    }
}

/// Calls `record` with each record of a chunk section, numbered from `next` on; answers
/// the position after the last.
fn chunk_records(
    bytes: &[u8],
    mut next: u64,
    part: &str,
    mut record: impl FnMut(u64, &[u8]) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    // A chunk as a writer makes it: 1 to CHUNK records, each at least a record's fixed
    // prefix. A file is anyone's: a chunk of millions of empty records would cost far
    // more memory checked than read.
    if bytes.is_empty() {
        return Err(refused(part, "an empty chunk"));
    }
    let mut at = 0usize;
    let mut count = 0usize;
    while at < bytes.len() {
        count += 1;
        if count > CHUNK {
            return Err(refused(
                part,
                format!("more than {CHUNK} records in one chunk"),
            ));
        }
        let len = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
            .ok_or_else(|| refused(part, "a record's length is cut"))?;
        if len > crate::store::sled_log::MAX_RECORD_BYTES {
            return Err(refused(
                part,
                format!("position {next} is larger than a record can be"),
            ));
        }
        if len < idledger_domain::envelope::RECORD_PREFIX_LEN {
            return Err(refused(
                part,
                format!("position {next} is smaller than a record can be"),
            ));
        }
        let rec = bytes
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| refused(part, format!("position {next} is cut")))?;
        record(next, rec)?;
        at += 4 + len;
        next += 1;
    }
    Ok(next)
}

/// A chunk section as read, its records framed: where each starts and ends in `bytes`.
struct FramedChunk {
    first: u64,
    bytes: Vec<u8>,
    ranges: Vec<(usize, usize)>,
}

/// A chunk hashed and its records checked ([`CheckedRecord::check`]), in order.
struct CheckedChunk {
    bytes: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    records: Vec<CheckedRecord>,
    sha256: String,
}

type Done = std::sync::mpsc::SyncSender<CheckedChunk>;

impl FramedChunk {
    fn check(self) -> CheckedChunk {
        let records = self
            .ranges
            .iter()
            .zip(self.first..)
            .map(|(&(start, end), position)| {
                CheckedRecord::check(position, &self.bytes[start..end])
            })
            .collect();
        CheckedChunk {
            sha256: sha256_hex(&self.bytes),
            bytes: self.bytes,
            ranges: self.ranges,
            records,
        }
    }
}

/// A chunk handed on in file order, with where its checked form will come from.
struct Framed {
    first: u64,
    part: String,
    done: std::sync::mpsc::Receiver<CheckedChunk>,
}

/// What the reading thread found besides the chunks.
struct FileParts {
    manifest: Manifest,
    sealed: SealedFiles,
    contents_sha256: String,
    /// The position after the last record.
    next: u64,
}

/// Reads sections up to the manifest, handing each chunk (framed) to the next of `workers`
/// and, in order, to `out`.
fn read_sections(
    input: impl Read,
    from: u64,
    out: std::sync::mpsc::SyncSender<Framed>,
    workers: Vec<std::sync::mpsc::SyncSender<(FramedChunk, Done)>>,
) -> Result<FileParts, BackupError> {
    let mut sections = SectionReader::open(input)?;
    let mut sealed = SealedFiles::default();
    let mut next = from;
    let mut count = 0usize;
    let stopped = || refused("file", "reading stopped");
    loop {
        let part = || format!("chunk {} (from position {next})", count + 1);
        let (tag, bytes) = match sections.next(part)? {
            Section::Whole { tag, bytes } => (tag, bytes),
            Section::End => {
                return Err(refused(
                    "manifest",
                    format!("missing: the file ends after position {}", next - 1),
                ))
            }
            Section::Torn { part, detail } => return Err(refused(part, detail)),
        };
        match tag {
            b'M' => {
                let manifest: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| refused("manifest", format!("unreadable: {e}")))?;
                if !sections.at_end()? {
                    return Err(refused("manifest", "bytes follow it"));
                }
                return Ok(FileParts {
                    manifest,
                    sealed,
                    contents_sha256: hex::encode(sections.hash.finalize()),
                    next,
                });
            }
            b'C' => {
                let part = part();
                let (mut ranges, mut end) = (vec![], 0);
                let after = chunk_records(&bytes, next, &part, |_, rec| {
                    // Records follow one another, each after its 4-byte length.
                    ranges.push((end + 4, end + 4 + rec.len()));
                    end += 4 + rec.len();
                    Ok(())
                })?;
                let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
                let framed = FramedChunk {
                    first: next,
                    bytes,
                    ranges,
                };
                workers[count % workers.len()]
                    .send((framed, done_tx))
                    .map_err(|_| stopped())?;
                out.send(Framed {
                    first: next,
                    part,
                    done: done_rx,
                })
                .map_err(|_| stopped())?;
                next = after;
                count += 1;
            }
            b'K' => sealed.keystore = Some(bytes),
            _ => sealed.log_key = Some(bytes),
        }
    }
}

/// What [`read`] found in a file.
pub struct Contents {
    /// The manifest.
    pub manifest: Manifest,
    /// The sealed files.
    pub sealed: SealedFiles,
}

/// Reads a whole backup file from its start, checking every part; `record` hears each
/// record (in order, as checked: position, envelope, leaf hash) once its chunk's bytes are
/// read. The manifest is checked against what
/// was read once it is reached, so a caller must not keep what `record` heard unless this
/// answers `Ok`.
pub fn read(
    input: impl Read + Send,
    record: impl FnMut(&CheckedRecord, &[u8]) -> Result<(), BackupError>,
) -> Result<Contents, BackupError> {
    let contents = read_with(input, &mut Verifier::new(), record)?;
    let m = &contents.manifest;
    if let Some(size) = m.signed_tree_head.as_deref().and_then(follow::note_size) {
        if size > m.position {
            return Err(refused(
                "signed tree head",
                format!("it covers {size} records, the backup holds {}", m.position),
            ));
        }
    }
    if contents.manifest.keystore_unchanged {
        // Made for a follower that had the key store: restored alone, it would lack it.
        return Err(refused(
            "key store",
            "left out (the file was made for a `--follow` copy)",
        ));
    }
    Ok(contents)
}

/// [`read`] for a file that continues the records `verifier` has checked (a whole backup
/// when it has checked none): the file must start right after them, and `verifier` goes
/// on through the file's records. After an error `verifier` holds records the file did
/// not prove; start again with a new one.
pub fn read_with(
    input: impl Read + Send,
    verifier: &mut Verifier,
    mut record: impl FnMut(&CheckedRecord, &[u8]) -> Result<(), BackupError>,
) -> Result<Contents, BackupError> {
    let from = verifier.last_position() + 1;
    let checkers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    // Three stages: one thread reads and frames sections, `checkers` threads hash and
    // decode whole chunks (everything that needs nothing but the chunk), and this thread
    // takes the chunks back in file order for the checks that need what came before, and
    // for `record`.
    let (chunks, read) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Framed>(2 * checkers);
        let (workers, checking): (Vec<_>, Vec<_>) = (0..checkers)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<(FramedChunk, Done)>(1);
                let thread = scope.spawn(move || {
                    for (chunk, done) in rx {
                        let _ = done.send(chunk.check());
                    }
                });
                (tx, thread)
            })
            .unzip();
        let reader = scope.spawn(move || read_sections(input, from, tx, workers));
        let mut chunks: Vec<ChunkEntry> = Vec::new();
        let mut failed = None;
        for framed in rx {
            let Ok(checked) = framed.done.recv() else {
                failed = Some(refused(framed.part, "the thread checking it stopped"));
                break;
            };
            let records = checked.records.iter().zip(&checked.ranges);
            if let Err(e) = records.into_iter().try_for_each(|(c, &(start, end))| {
                verifier.accept(c);
                record(c, &checked.bytes[start..end])
            }) {
                failed = Some(e);
                break;
            }
            chunks.push(ChunkEntry {
                first: framed.first,
                last: framed.first + checked.records.len() as u64 - 1,
                sha256: checked.sha256,
            });
        }
        // Dropping the channel (with `rx`, above) stops a reader still going.
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(refused("file", "the thread reading it stopped")));
        // Joined here, a checker that panicked is the refusal above, not a panic of the
        // whole scope.
        for thread in checking {
            let _ = thread.join();
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((chunks, read)),
        }
    })?;
    let FileParts {
        manifest,
        sealed,
        contents_sha256,
        next,
    } = read?;
    if manifest.format != "idledger-backup" || manifest.version != 1 {
        return Err(refused(
            "manifest",
            format!("format {} {}", manifest.format, manifest.version),
        ));
    }
    if manifest.from != from {
        return Err(refused(
            "manifest",
            format!(
                "the file starts at position {}, the records before end at {}",
                manifest.from,
                from - 1
            ),
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
    let keystore_sha256 = sealed.keystore.as_deref().map(sha256_hex);
    let keystore_fits = if manifest.keystore_unchanged {
        sealed.keystore.is_none() && manifest.keystore_sha256.is_some()
    } else {
        keystore_sha256 == manifest.keystore_sha256
    };
    if !keystore_fits {
        return Err(refused("key store", "differs from the manifest's SHA-256"));
    }
    if sealed.log_key.as_deref().map(sha256_hex) != manifest.log_key_sha256 {
        return Err(refused("log key", "differs from the manifest's SHA-256"));
    }
    if contents_sha256 != manifest.contents_sha256 {
        return Err(refused("contents", "differ from the manifest's SHA-256"));
    }
    if let Some(p) = verifier.first_problem() {
        return Err(BackupError::Chain {
            position: p.position,
            reason: p.reason.clone(),
        });
    }
    let (position, head_hash) = (verifier.last_position(), verifier.last_hash().to_hex());
    if next - from != manifest.record_count
        || position != manifest.position
        || head_hash != manifest.head_hash
    {
        return Err(refused(
            "manifest",
            format!(
                "names {} records to position {} (head {}); the file holds {} to position {position} (head {head_hash})",
                manifest.record_count,
                manifest.position,
                manifest.head_hash,
                next - from,
            ),
        ));
    }
    Ok(Contents { manifest, sealed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(records: &[usize]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &len in records {
            bytes.extend_from_slice(&(len as u32).to_le_bytes());
            bytes.extend(std::iter::repeat_n(7u8, len));
        }
        bytes
    }

    fn framing(records: &[usize]) -> Result<u64, BackupError> {
        chunk_records(&framed(records), 1, "chunk 1", |_, _| Ok(()))
    }

    /// A link planted where the backup is written, or appearing under its name meanwhile,
    /// is never written through or over.
    #[test]
    fn a_backup_file_is_never_written_through_or_over_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = dir.path().join("x.backup");
        std::os::unix::fs::symlink(&victim, dir.path().join("x.backup.partial")).unwrap();
        let e = NewBackupFile::create(&out)
            .err()
            .expect("written through a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

        // A second name of a finished backup, left by a backup killed after the link.
        std::fs::remove_file(dir.path().join("x.backup.partial")).unwrap();
        std::fs::hard_link(&victim, dir.path().join("x.backup.partial")).unwrap();
        let file = NewBackupFile::create(&out).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        drop(file);
        let file = NewBackupFile::create(&out).unwrap();
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        assert!(file.finish().is_err(), "written over a link");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!dir.path().join("x.backup.partial").exists());
    }

    /// What a crafted chunk may hold is bounded before any record of it is checked.
    #[test]
    fn a_chunk_holds_one_to_ten_thousand_records_of_a_records_size() {
        let smallest = idledger_domain::envelope::RECORD_PREFIX_LEN;
        assert_eq!(framing(&[smallest; CHUNK]).unwrap(), CHUNK as u64 + 1);
        for bad in [
            vec![],
            vec![smallest; CHUNK + 1],
            vec![0; 3],
            vec![smallest, smallest - 1],
        ] {
            assert!(
                matches!(framing(&bad), Err(BackupError::Refused { .. })),
                "{} records",
                bad.len()
            );
        }
    }
}

//! The copy `idledger backup --follow` keeps: a directory that grows with the log, made
//! of increments the server sends (`GET /v1/backup?from=N`), every record checked against
//! the chain of all before it as it arrives.
//!
//! ```text
//! DIR/FOLLOW                           the lock a follower holds (one per copy)
//! DIR/segments/<first>-<last>.backup   sealed segments: backup files of 100,000 records each
//! DIR/segments/open-<first>.backup     the segment being filled: header, then one chunk
//!                                      section per increment, each on the device before
//!                                      the next is asked for
//! DIR/keys/keystore-<unix secs>.sealed the sealed key store, a snapshot when it changed
//!                                      (within an hour of the newest, written over it)
//! DIR/keys/log.key.sealed              the sealed log-signing key
//! DIR/signed-tree-head                 the latest signed tree head (a C2SP checkpoint)
//!                                      over records the copy holds
//! ```
//!
//! **Crash safety** comes from order and from cutting, never from trusting what is on
//! disk: keys are written (temporary file, fsync, rename, directory fsync) before the
//! records sealed under them; a chunk is appended and `fdatasync`ed before the next
//! increment is asked for; on open the whole copy is checked again and a torn last chunk
//! is cut off, so a killed follower resumes at the last record that is whole, without a
//! gap or a duplicate. Sealing writes a new file and renames it; the open segment is
//! removed only after, and one already covered by a sealed segment is dropped on open.
//!
//! **Retention**: a user's deletion destroys their data key in the server's key store, but
//! a key store snapshot taken before still holds it. Snapshots older than the retention
//! are removed (the newest always stays), so a deleted user's records in the copy become
//! unreadable once it passes.

use super::{
    chunk_records, parent_of, read_with, refused, sha256_hex, sync_dir, BackupError, BackupWriter,
    ChunkEntry, Contents, Manifest, SealedFiles, Section, SectionReader, CHUNK, CHUNK_BYTES, MAGIC,
};
use crate::durable::replace_whole;
use idledger_domain::Hash;
use idledger_replay::tree::Frontier;
use idledger_replay::verify::{CheckedRecord, Verifier};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Records in a sealed segment, unless the follower says otherwise.
pub const SEGMENT_RECORDS: u64 = 100_000;
const LOCK: &str = "FOLLOW";
const OPEN_PREFIX: &str = "open-";
const SUFFIX: &str = ".backup";
const KEYSTORE_PREFIX: &str = "keystore-";
/// A key store that changes within this many seconds of the newest snapshot is written
/// over it: a bulk import changes the key store with every increment (four a second), and
/// a snapshot each time would fill the disk for the whole retention.
const SNAPSHOT_EVERY_SECS: u64 = 3600;
const LOG_KEY: &str = "log.key.sealed";
/// The latest signed tree head an increment carried for records the copy holds.
const SIGNED_TREE_HEAD: &str = "signed-tree-head";

fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

fn keys_dir(dir: &Path) -> PathBuf {
    dir.join("keys")
}

fn in_file(path: &Path, e: BackupError) -> BackupError {
    match e {
        BackupError::Refused { part, detail } => BackupError::Refused {
            part: format!("{}: {part}", path.display()),
            detail,
        },
        other => other,
    }
}

/// The sealed segments, by first position: `(first, last, path)`.
fn sealed_segments(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, BackupError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(segments_dir(dir))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(range) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        if range.starts_with(OPEN_PREFIX) {
            continue;
        }
        let parsed = range
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        match parsed {
            Some((first, last)) => found.push((first, last, path)),
            None => return Err(refused(name, "not a segment's name")),
        }
    }
    found.sort();
    Ok(found)
}

/// The open segment, if there is one: `(first, path)`.
fn open_segment(dir: &Path) -> Result<Option<(u64, PathBuf)>, BackupError> {
    let mut found = None;
    for entry in std::fs::read_dir(segments_dir(dir))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(first) = name
            .strip_prefix(OPEN_PREFIX)
            .and_then(|n| n.strip_suffix(SUFFIX))
        {
            let first = first
                .parse::<u64>()
                .map_err(|_| refused(name, "not a segment's name"))?;
            if found.replace((first, path)).is_some() {
                return Err(refused("segments", "two open segments"));
            }
        }
    }
    Ok(found)
}

/// The key store snapshots, oldest first: `(unix secs, path)`.
fn keystore_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, BackupError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(keys_dir(dir))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(secs) = name
            .strip_prefix(KEYSTORE_PREFIX)
            .and_then(|n| n.strip_suffix(".sealed"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((secs, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The first line of a key file in a copy: the SHA-256 of what follows, so that a key file
/// damaged on the copy's disk is refused rather than restored (a key store's reader would
/// take a cut one for a torn last line and drop it without a word).
const KEY_FILE_SUM: &[u8] = b"sha256 ";

/// A sealed key file as a copy keeps it: its SHA-256 line, then its bytes.
fn with_sum(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_FILE_SUM.len() + 65 + bytes.len());
    out.extend_from_slice(KEY_FILE_SUM);
    out.extend_from_slice(sha256_hex(bytes).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(bytes);
    out
}

/// The copy's kept signed tree head, if it has one. One that is not text is damage, not
/// absence: it guards against a copy that reads shorter than it held.
fn read_head_file(dir: &Path) -> Result<Option<String>, BackupError> {
    super::read_if_there(dir.join(SIGNED_TREE_HEAD))?
        .map(|b| {
            String::from_utf8(b).map_err(|_| refused(SIGNED_TREE_HEAD, "damaged: it is not text"))
        })
        .transpose()
}

/// The bytes of a key file of the copy at `path`, checked against its SHA-256 line (files
/// an earlier build wrote have none).
fn read_key_file(path: &Path) -> Result<Option<Vec<u8>>, BackupError> {
    let Some(bytes) = super::read_if_there(path.to_path_buf())? else {
        return Ok(None);
    };
    let Some(rest) = bytes.strip_prefix(KEY_FILE_SUM) else {
        return Ok(Some(bytes));
    };
    let damaged = || {
        refused(
            path.display().to_string(),
            "damaged: its SHA-256 does not match",
        )
    };
    let (sum, body) = (
        rest.get(..64).ok_or_else(damaged)?,
        rest.get(65..).ok_or_else(damaged)?,
    );
    if rest[64] != b'\n' || sum != sha256_hex(body).as_bytes() {
        return Err(damaged());
    }
    Ok(Some(body.to_vec()))
}

/// Which key store a copy stores from an increment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Keys {
    /// The one sent, with every entry of the one held that it lacks.
    WithHeld,
    /// The one sent, exactly.
    Exactly,
}

/// The copy's newest sealed files.
fn newest_sealed(dir: &Path) -> Result<SealedFiles, BackupError> {
    let keystore = match keystore_snapshots(dir)?.pop() {
        Some((_, path)) => read_key_file(&path)?,
        None => None,
    };
    Ok(SealedFiles {
        keystore,
        log_key: read_key_file(&keys_dir(dir).join(LOG_KEY))?,
    })
}

/// The tree size of a kept checkpoint note (its second line).
pub(super) fn note_size(note: &str) -> Option<u64> {
    note.lines().nth(1).and_then(|l| l.parse().ok())
}

/// Refuses a copy that reads shorter than its kept signed tree head: the head was kept
/// only after the records it covers were on the device, so what is missing below it is
/// damage (a header or a chunk length overwritten), not a write a crash cut off.
fn holds_its_head(part: &str, note: Option<&str>, held: u64) -> Result<(), BackupError> {
    match note.and_then(note_size) {
        Some(size) if size > held => Err(refused(
            part,
            format!(
                "reads as {held} records, but the copy's signed tree head covers {size}: \
                 damaged, not cut by a crash"
            ),
        )),
        _ => Ok(()),
    }
}

/// Reads an open segment's chunk sections through `len` bytes, while `chunk` takes them
/// (answers `true`); answers where the last chunk taken ends. Whatever does not read as a
/// whole chunk ends the segment when it is the segment's tail: a section torn by a crash,
/// or bytes a lost machine left behind the last write it put on the device. Damage with a
/// whole section after it is refused: each chunk was on the device before the next was
/// written, so no crash makes it, and cutting there would drop good records.
fn open_chunks(
    file: &File,
    len: u64,
    mut chunk: impl FnMut(&[u8]) -> Result<bool, BackupError>,
) -> Result<u64, BackupError> {
    use std::io::Read;
    (&*file).seek(SeekFrom::Start(0))?;
    let mut reader = file.take(len);
    // A device that fails to read is an error, never a reason to cut what is there.
    let mut sections = match SectionReader::open(&mut reader) {
        Ok(s) => s,
        Err(BackupError::Io(e)) => return Err(BackupError::Io(e)),
        // Cut while its header was written, or its blocks never reached the device:
        // nothing in it yet. Any other header is damage no crash makes, and reading the
        // segment as empty would drop every record in it.
        Err(_) if header_cut(file, len)? || zeros_from(file, 0, len)? => return Ok(0),
        Err(_) => {
            return Err(refused(
                "open segment",
                "its header is damaged: not a write a crash cut off",
            ))
        }
    };
    let mut end = sections.offset;
    loop {
        match sections.next(String::new) {
            Ok(Section::End) => return Ok(end),
            Ok(Section::Whole { tag: b'C', bytes }) if chunk(&bytes)? => {
                end = sections.offset;
            }
            Err(BackupError::Io(e)) => return Err(BackupError::Io(e)),
            _ => break,
        }
    }
    if !tail_of(file, end, len)? {
        return Err(refused(
            "open segment",
            format!("damaged at byte {end}, with whole data after it: not a write a crash cut off"),
        ));
    }
    Ok(end)
}

/// Whether `file` (of `len` bytes) is a beginning of the header and nothing more.
fn header_cut(file: &File, len: u64) -> Result<bool, BackupError> {
    use std::io::Read;
    if len > MAGIC.len() as u64 {
        return Ok(false);
    }
    let mut head = Vec::new();
    (&*file).seek(SeekFrom::Start(0))?;
    file.take(len).read_to_end(&mut head)?;
    Ok(MAGIC.starts_with(&head))
}

/// Whether the bytes of `file` from `from` to `len` are all zero.
fn zeros_from(file: &File, from: u64, len: u64) -> Result<bool, BackupError> {
    use std::io::Read;
    (&*file).seek(SeekFrom::Start(from))?;
    let mut rest = file.take(len.saturating_sub(from));
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match rest.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// Whether the bytes of `file` from `at` to `len` can be what a crash leaves: a section
/// that runs to the end (cut, or whole but with blocks never written) or zeros after it.
fn tail_of(file: &File, at: u64, len: u64) -> Result<bool, BackupError> {
    use std::io::Read;
    (&*file).seek(SeekFrom::Start(at))?;
    let mut head = [0u8; 9];
    if len.saturating_sub(at) < head.len() as u64 {
        return Ok(true);
    }
    (&*file).read_exact(&mut head)?;
    let declared = u64::from_le_bytes(head[1..].try_into().unwrap_or_default());
    let after = at.saturating_add(9).saturating_add(declared);
    Ok(after >= len || zeros_from(file, after, len)?)
}

/// The segment being filled.
struct OpenSegment {
    file: File,
    path: PathBuf,
    first: u64,
    /// The position and hash the segment continues.
    after: (u64, Hash),
}

/// The copy, open for a follower to add to.
pub struct FollowCopy {
    dir: PathBuf,
    _lock: File,
    verifier: Verifier,
    open: Option<OpenSegment>,
    keystore_sha256: Option<String>,
    log_key_sha256: Option<String>,
    /// The tree before the last increment taken, and that increment's leaves.
    recent: Option<(Frontier, Vec<Option<Hash>>)>,
    segment_records: u64,
    /// When the first record of the last increment taken was appended (µs since the
    /// epoch): how far behind the copy ran.
    oldest_taken_us: Option<i64>,
    /// A write or check failed half-way: what is in memory is not what is on disk.
    broken: bool,
}

impl FollowCopy {
    /// Opens (or starts) the copy in `dir`, checking all of it and cutting a torn last
    /// chunk; another follower of the same copy is refused. The open segment is sealed
    /// once it holds `segment_records` records.
    pub fn open(dir: &Path, segment_records: u64) -> Result<Self, BackupError> {
        {
            use std::os::unix::fs::DirBuilderExt;
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true).mode(0o700);
            b.create(segments_dir(dir))?;
            b.create(keys_dir(dir))?;
        }
        // The directories themselves on the device, up to the copy's parent: a --once that
        // said the copy is made leaves one a lost machine keeps.
        for d in [&segments_dir(dir), &keys_dir(dir), dir, parent_of(dir)] {
            sync_dir(d)?;
        }
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| BackupError::Busy(dir.display().to_string()))?;
        for sub in [segments_dir(dir), keys_dir(dir)] {
            for entry in std::fs::read_dir(&sub)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    std::fs::remove_file(path)?;
                }
            }
        }
        let mut verifier = Verifier::new();
        for (first, last, path) in sealed_segments(dir)? {
            let contents = read_with(File::open(&path)?, &mut verifier, |_, _| Ok(()))
                .map_err(|e| in_file(&path, e))?;
            if (contents.manifest.from, contents.manifest.position) != (first, last) {
                return Err(refused(
                    path.display().to_string(),
                    "holds other positions than its name says",
                ));
            }
        }
        // The copy must hold every record its signed head covers, whatever is missing
        // (a segment deleted, sealed or open): taking those positions again from the
        // server would overwrite the evidence of what it signed before.
        let head = read_head_file(dir)?;
        let open = match open_segment(dir)? {
            Some((first, path)) if first <= verifier.last_position() => {
                holds_its_head("segments", head.as_deref(), verifier.last_position())?;
                // Sealed already; the crash came before it was removed.
                std::fs::remove_file(&path)?;
                None
            }
            Some((first, path)) if first == verifier.last_position() + 1 => {
                Some(Self::recover(path, first, &mut verifier, head.as_deref())?)
            }
            Some((first, path)) => {
                return Err(refused(
                    path.display().to_string(),
                    format!(
                        "starts at position {first}, the sealed segments end at {}",
                        verifier.last_position()
                    ),
                ))
            }
            None => {
                holds_its_head("segments", head.as_deref(), verifier.last_position())?;
                None
            }
        };
        if let Some(p) = verifier.first_problem() {
            return Err(BackupError::Chain {
                position: p.position,
                reason: format!("{} (the copy is damaged)", p.reason),
            });
        }
        let sealed = newest_sealed(dir)?;
        Ok(FollowCopy {
            dir: dir.to_owned(),
            _lock: lock,
            verifier,
            open,
            keystore_sha256: sealed.keystore.as_deref().map(sha256_hex),
            log_key_sha256: sealed.log_key.as_deref().map(sha256_hex),
            recent: None,
            segment_records: segment_records.max(1),
            oldest_taken_us: None,
            broken: false,
        })
    }

    /// Checks the open segment's whole chunks on top of `verifier` and cuts what follows
    /// them (a chunk torn by a crash, or one that does not check: only the last can be,
    /// since each is on the device before the next is written).
    fn recover(
        path: PathBuf,
        first: u64,
        verifier: &mut Verifier,
        signed_tree_head: Option<&str>,
    ) -> Result<OpenSegment, BackupError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        let after = (verifier.last_position(), verifier.last_hash());
        let mut taken = 0usize;
        let good = open_chunks(&file, len, |bytes| {
            // Checked on a scratch verifier first: a chunk that fails ends what is kept.
            let next = verifier.last_position() + 1;
            let mut scratch = Verifier::after(next - 1, verifier.last_hash());
            let read = chunk_records(bytes, next, "open segment", |p, r| {
                scratch.push(p, r);
                Ok(())
            });
            if read.is_err() || scratch.problem_count() > 0 {
                return Ok(false);
            }
            chunk_records(bytes, next, "open segment", |p, r| {
                verifier.accept(&CheckedRecord::check(p, r));
                Ok(())
            })?;
            taken += 1;
            Ok(true)
        })?;
        // Before anything is cut.
        holds_its_head("open segment", signed_tree_head, verifier.last_position())
            .map_err(|e| in_file(&path, e))?;
        if good < MAGIC.len() as u64 {
            // Cut while its header was written: nothing in it yet.
            file.set_len(0)?;
            (&file).seek(SeekFrom::Start(0))?;
            (&file).write_all(MAGIC)?;
            file.sync_data()?;
        } else if good != len {
            // What follows was never acknowledged to anyone: the server sends it again.
            file.set_len(good)?;
            file.sync_all()?;
            tracing::warn!(
                segment = %path.display(),
                cut = len - good,
                chunks_kept = taken,
                "cut the end of the open segment that was not whole"
            );
        }
        (&file).seek(SeekFrom::Start(good.max(MAGIC.len() as u64)))?;
        Ok(OpenSegment {
            file,
            path,
            first,
            after,
        })
    }

    /// How many records the copy's signed tree head covers (0 without one).
    pub fn signed_size(&self) -> Result<u64, BackupError> {
        Ok(read_head_file(&self.dir)?
            .as_deref()
            .and_then(note_size)
            .unwrap_or(0))
    }

    /// The last position the copy holds.
    pub fn position(&self) -> u64 {
        self.verifier.last_position()
    }

    /// The hash of the record at [`FollowCopy::position`].
    pub fn head_hash(&self) -> Hash {
        self.verifier.last_hash()
    }

    /// When the oldest record of the last increment taken was appended (µs since the
    /// epoch; none if it brought no records): the copy's lag is the time since.
    pub fn oldest_taken_us(&self) -> Option<i64> {
        self.oldest_taken_us
    }

    /// SHA-256 of the newest key store the copy holds: the server leaves the key store
    /// out of an increment when it is still this one.
    pub fn keystore_sha256(&self) -> Option<&str> {
        self.keystore_sha256.as_deref()
    }

    /// Takes one increment (a backup file from [`FollowCopy::position`]` + 1`), sent when
    /// the server's log was at `log_head`: checks every part of it, stores keys that
    /// changed and then the records, on the device, before answering the records added.
    /// `now_secs` names a new key store snapshot. After an error the copy must be opened
    /// again.
    ///
    /// The key store is the server's at `log_head`, which may be past the increment's
    /// records: a user deleted in between has no key in it, though the records the copy
    /// holds still need it. So the copy holds the union of the key stores it was sent
    /// until its records reach the head they came with, and only then exactly the
    /// server's (every shred of those keys is then in its records). The union is on the
    /// device before the records, so that no crash leaves records without their keys.
    pub fn take(
        &mut self,
        increment: impl std::io::Read + Send,
        log_head: u64,
        now_secs: u64,
    ) -> Result<u64, BackupError> {
        if self.broken {
            return Err(refused("copy", "a write failed: open it again"));
        }
        self.broken = true;
        let after = (self.verifier.last_position(), self.verifier.last_hash());
        let tree_before = self.verifier.tree().clone();
        // The tree from before the last increment on: a head signed a moment before that
        // increment was read, sent with this one, is still checked.
        let (base, window) = self
            .recent
            .take()
            .unwrap_or_else(|| (tree_before.clone(), Vec::new()));
        let mut leaves = Vec::new();
        let mut chunks = vec![(0usize, Vec::new())];
        let mut oldest = None;
        let contents = read_with(increment, &mut self.verifier, |checked, rec| {
            leaves.push(checked.leaf);
            if oldest.is_none() {
                oldest = idledger_domain::envelope::RawRecord::parse(rec)
                    .and_then(|r| r.decode_header())
                    .ok()
                    .map(|h| h.recorded_at_us);
            }
            let full = chunks
                .last()
                .is_some_and(|(n, c)| *n == CHUNK || c.len() >= CHUNK_BYTES);
            if full {
                chunks.push((0, Vec::new()));
            }
            if let Some((n, chunk)) = chunks.last_mut() {
                chunk.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                chunk.extend_from_slice(rec);
                *n += 1;
            }
            Ok(())
        })?;
        self.check_log_key(contents.sealed.log_key.as_deref())?;
        let head = self.check_signed_head(
            contents.manifest.signed_tree_head.as_deref(),
            contents.sealed.log_key.as_deref(),
        )?;
        // Held to the records it covers, as the verifier holds a restore to it: a head
        // over another history is the split view an auditor's copy is there to catch.
        let head_checked = match head {
            Some(h)
                if h.tree_size >= base.size() && h.tree_size <= self.verifier.last_position() =>
            {
                let mut tree = base;
                let through = usize::try_from(h.tree_size - tree.size()).unwrap_or(usize::MAX);
                for leaf in window.iter().chain(&leaves).take(through) {
                    let Some(leaf) = leaf else { break };
                    tree.push(*leaf);
                }
                if tree.size() != h.tree_size || tree.root() != h.root_hash {
                    return Err(refused(
                        "signed tree head",
                        format!(
                            "its root for size {} is not the root of the records this copy \
                             holds: the server shows another history",
                            h.tree_size
                        ),
                    ));
                }
                true
            }
            _ => false,
        };
        self.store_keys(&contents, now_secs, Keys::WithHeld)?;
        let added = contents.manifest.record_count;
        if added > 0 {
            self.append(&chunks, after)?;
        }
        if contents.manifest.position >= log_head {
            self.store_keys(&contents, now_secs, Keys::Exactly)?;
        }
        if head_checked {
            self.store_signed_head(contents.manifest.signed_tree_head.as_deref())?;
        }
        self.oldest_taken_us = oldest;
        self.recent = Some((tree_before, leaves));
        self.broken = false;
        if self
            .open
            .as_ref()
            .is_some_and(|o| self.verifier.last_position() + 1 - o.first >= self.segment_records)
        {
            self.broken = true;
            self.seal()?;
            self.broken = false;
        }
        Ok(added)
    }

    /// Refuses a signed tree head that does not verify with the log's key the copy holds
    /// (the one sent, for a copy that holds none yet), before anything of the increment is
    /// kept, keys included: an auditor's copy must not keep a head it would only find wrong
    /// when restored, nor take a new key to fit one.
    /// Answers the head it checked (none without a note or a key to check it with).
    fn check_signed_head(
        &self,
        note: Option<&str>,
        sent: Option<&[u8]>,
    ) -> Result<Option<idledger_replay::tree::TreeHead>, BackupError> {
        let Some(note) = note else { return Ok(None) };
        let kept = read_key_file(&keys_dir(&self.dir).join(LOG_KEY))?;
        let Some(key) = kept.as_deref().or(sent) else {
            return Ok(None);
        };
        let public = crate::notary::key::public_key_in(key)
            .map_err(|e| refused("log key", e.to_string()))?;
        let signed = public.open(note).map_err(|e| {
            refused(
                "signed tree head",
                format!("it does not verify with the log's key: {e}"),
            )
        })?;
        Ok(Some(signed.head))
    }

    /// Refuses a log key whose public key is not the one the copy holds: a log's key is
    /// never replaced, so another is another log (or a server whose key was swapped to
    /// sign another history). The same key sealed anew is taken.
    fn check_log_key(&self, sent: Option<&[u8]>) -> Result<(), BackupError> {
        let (Some(sent), Some(kept)) = (sent, read_key_file(&keys_dir(&self.dir).join(LOG_KEY))?)
        else {
            return Ok(());
        };
        let public = |bytes: &[u8]| {
            crate::notary::key::public_key_in(bytes).map_err(|e| refused("log key", e.to_string()))
        };
        if public(sent)? != public(&kept)? {
            return Err(refused(
                "log key",
                "the server signs with another key than the one this copy holds: another log",
            ));
        }
        Ok(())
    }

    /// Keeps `note` when it is signed over records the copy holds (its size, the
    /// checkpoint's second line, is at most the copy's position).
    fn store_signed_head(&self, note: Option<&str>) -> Result<(), BackupError> {
        let Some(note) = note else { return Ok(()) };
        let size = note_size(note);
        if size.is_none_or(|s| s > self.verifier.last_position()) {
            return Ok(());
        }
        // Never a smaller head over a larger one: the copy keeps the widest signature it
        // was shown (what a later open checks it still holds).
        let kept = read_head_file(&self.dir)?;
        if (kept.as_deref().and_then(note_size))
            .zip(size)
            .is_some_and(|(kept, new)| new < kept)
        {
            return Ok(());
        }
        if kept.as_deref() != Some(note) {
            replace_whole(&self.dir.join(SIGNED_TREE_HEAD), note.as_bytes())?;
        }
        Ok(())
    }

    fn store_keys(
        &mut self,
        contents: &Contents,
        now_secs: u64,
        keys: Keys,
    ) -> Result<(), BackupError> {
        if keys == Keys::WithHeld
            && contents.manifest.keystore_unchanged
            && contents.manifest.keystore_sha256 != self.keystore_sha256
        {
            return Err(refused(
                "key store",
                "left out as unchanged, but it is not the one this copy holds",
            ));
        }
        if let Some(sent) = &contents.sealed.keystore {
            let newest = keystore_snapshots(&self.dir)?.pop();
            let held = match (keys, &newest) {
                (Keys::WithHeld, Some((_, path))) => read_key_file(path)?,
                _ => None,
            };
            let union = match held {
                // A key store this build cannot read (a newer format) is kept as sent.
                Some(held) => crate::secrets::keystore::union(sent, &held).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "backup --follow: the key stores were not merged");
                    None
                }),
                None => None,
            };
            let k = union.unwrap_or_else(|| sent.clone());
            // The SHA-256 of what the copy holds: while it holds a union, the server's
            // differs, so the server sends its key store again until the copy is exact.
            let sha = sha256_hex(&k);
            if self.keystore_sha256.as_deref() != Some(sha.as_str()) {
                let path = match newest {
                    // Written over as a whole (temporary file, rename): a reader holding
                    // the old one keeps it, and a shredded key leaves sooner, not later.
                    Some((secs, path))
                        if (secs..secs.saturating_add(SNAPSHOT_EVERY_SECS)).contains(&now_secs) =>
                    {
                        path
                    }
                    newest => {
                        // Named in order even when the clock steps back: the newest is
                        // the last.
                        let after = newest.map_or(0, |(s, _)| s + 1);
                        let name = format!("{KEYSTORE_PREFIX}{:020}.sealed", now_secs.max(after));
                        keys_dir(&self.dir).join(name)
                    }
                };
                replace_whole(&path, &with_sum(&k))?;
                self.keystore_sha256 = Some(sha);
            }
        }
        if let (Some(k), Keys::WithHeld) = (&contents.sealed.log_key, keys) {
            let sha = sha256_hex(k);
            if self.log_key_sha256.as_deref() != Some(sha.as_str()) {
                replace_whole(&keys_dir(&self.dir).join(LOG_KEY), &with_sum(k))?;
                self.log_key_sha256 = Some(sha);
            }
        }
        Ok(())
    }

    /// Appends chunk sections to the open segment (started if there is none) and puts
    /// them on the device.
    fn append(
        &mut self,
        chunks: &[(usize, Vec<u8>)],
        after: (u64, Hash),
    ) -> Result<(), BackupError> {
        if self.open.is_none() {
            let first = after.0 + 1;
            let path = segments_dir(&self.dir).join(format!("{OPEN_PREFIX}{first:020}{SUFFIX}"));
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(MAGIC)?;
            file.sync_data()?;
            sync_dir(&segments_dir(&self.dir))?;
            self.open = Some(OpenSegment {
                file,
                path,
                first,
                after,
            });
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        // One chunk on the device before the next is written: a power loss may leave a
        // later block written and an earlier one not, and the copy reopens by cutting a
        // torn tail, not a hole in the middle.
        let mut bytes = Vec::new();
        for (_, chunk) in chunks {
            bytes.clear();
            bytes.push(b'C');
            bytes.extend_from_slice(&(chunk.len() as u64).to_le_bytes());
            bytes.extend_from_slice(chunk);
            open.file.write_all(&bytes)?;
            open.file.sync_data()?;
        }
        Ok(())
    }

    /// Rewrites the open segment as a sealed one (chunks of 10,000, a manifest), then
    /// removes it.
    fn seal(&mut self) -> Result<(), BackupError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let last = self.verifier.last_position();
        let name = format!("{:020}-{last:020}{SUFFIX}", open.first);
        let path = segments_dir(&self.dir).join(&name);
        let tmp = path.with_extension("tmp");
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut w = BackupWriter::after(&out, open.after.0, open.after.1)?;
        let len = open.file.metadata()?.len();
        let mut next = open.first;
        open_chunks(&open.file, len, |bytes| {
            next = chunk_records(bytes, next, "open segment", |p, r| w.push(p, r))?;
            Ok(true)
        })?;
        let manifest = w.finish(&SealedFiles::default(), None, None)?;
        if manifest.position != last || manifest.head_hash != self.verifier.last_hash().to_hex() {
            return Err(refused(
                open.path.display().to_string(),
                "holds other records than were added to it",
            ));
        }
        out.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(&segments_dir(&self.dir))?;
        std::fs::remove_file(&open.path)?;
        sync_dir(&segments_dir(&self.dir))?;
        Ok(())
    }

    /// Removes the key store snapshots that were replaced more than `retain_secs` ago (the
    /// newest always stays): a key the server destroyed stays in the copy for the
    /// retention, then goes. Answers how many went.
    pub fn prune(&self, retain_secs: u64, now_secs: u64) -> Result<usize, BackupError> {
        let snapshots = keystore_snapshots(&self.dir)?;
        let mut removed = 0;
        for pair in snapshots.windows(2) {
            let (replaced_at, path) = (pair[1].0, &pair[0].1);
            if replaced_at.saturating_add(retain_secs) < now_secs {
                std::fs::remove_file(path)?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&keys_dir(&self.dir))?;
        }
        Ok(removed)
    }
}

/// A copy as it was when opened, for reading while a follower may go on adding to it:
/// every file it needs is held open, so a segment sealed or a snapshot pruned meanwhile
/// changes nothing read.
pub struct CopySnapshot {
    sealed_segments: Vec<(PathBuf, File)>,
    /// The open segment, its first position and its length when opened.
    open_segment: Option<(File, u64, u64)>,
    keys: SealedFiles,
    signed_tree_head: Option<String>,
}

impl CopySnapshot {
    /// Opens the copy in `dir` for reading.
    pub fn open(dir: &Path) -> Result<Self, BackupError> {
        if !dir.join(LOCK).exists() {
            return Err(refused(
                dir.display().to_string(),
                "not a copy `backup --follow` keeps",
            ));
        }
        // A segment sealed between listing the sealed ones and opening the open one is in
        // neither: list again (sealing is rare, so once more is nearly always enough).
        for _ in 0..10 {
            if let Some(snapshot) = Self::try_open(dir)? {
                return Ok(snapshot);
            }
        }
        Err(refused(
            dir.display().to_string(),
            "its segments kept changing while they were listed",
        ))
    }

    fn try_open(dir: &Path) -> Result<Option<Self>, BackupError> {
        // The head first: a follower writes it after the records it covers, so read before
        // the segments' lengths are taken it never names more than the snapshot holds.
        let signed_tree_head = read_head_file(dir)?;
        // The key store before the segments and again after: a follower taking an
        // increment meanwhile may add records whose keys only the later one has, or reach
        // its head and drop keys of users deleted after the records listed here. Their
        // union has every key the records read here need.
        let keys_before = newest_sealed(dir)?;
        let mut segments = Vec::new();
        for (_, _, path) in sealed_segments(dir)? {
            let file = File::open(&path)?;
            segments.push((path, file));
        }
        let open_segment = match open_segment(dir)? {
            Some((first, path)) => match File::open(&path) {
                Ok(f) => {
                    let len = f.metadata()?.len();
                    Some((f, first, len))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        // A segment sealed meanwhile: list again.
        if sealed_segments(dir)?.len() != segments.len() {
            return Ok(None);
        }
        let mut keys = newest_sealed(dir)?;
        if let (Some(after), Some(before)) = (&keys.keystore, &keys_before.keystore) {
            if let Ok(Some(union)) = crate::secrets::keystore::union(after, before) {
                keys.keystore = Some(union);
            }
        }
        Ok(Some(CopySnapshot {
            signed_tree_head,
            sealed_segments: segments,
            open_segment,
            keys,
        }))
    }

    /// Reads and checks every record, from position 1 on; the manifest answered is made
    /// for what was read (its `contents_sha256` covers the segments' contents hashes and
    /// the open segment's whole chunks).
    pub fn read(
        &mut self,
        mut record: impl FnMut(&CheckedRecord, &[u8]) -> Result<(), BackupError>,
    ) -> Result<Contents, BackupError> {
        let mut verifier = Verifier::new();
        let mut chunks: Vec<ChunkEntry> = Vec::new();
        let mut contents = Sha256::new();
        let mut signed_tree_head = None;
        for (path, file) in &mut self.sealed_segments {
            file.rewind()?;
            let c = read_with(&*file, &mut verifier, &mut record).map_err(|e| in_file(path, e))?;
            contents.update(c.manifest.contents_sha256.as_bytes());
            chunks.extend(c.manifest.chunks);
            signed_tree_head = c.manifest.signed_tree_head.or(signed_tree_head);
        }
        // An open segment sealed already (the crash or the listing came between the
        // rename and its removal) adds nothing.
        let open = self
            .open_segment
            .as_ref()
            .filter(|(_, first, _)| *first > verifier.last_position());
        if let Some((file, first, len)) = open {
            let mut next = verifier.last_position() + 1;
            if *first != next {
                return Err(refused(
                    "open segment",
                    format!(
                        "starts at position {first}, the sealed segments end at {}",
                        next - 1
                    ),
                ));
            }
            // As a follower resuming would: the first chunk that is not whole, or does
            // not check, ends the segment (nothing after it was ever acknowledged). Said,
            // though: a byte flipped in the last chunk reads the same as a torn write.
            let whole = open_chunks(file, *len, |bytes| {
                let first = next;
                let mut scratch = Verifier::after(first - 1, verifier.last_hash());
                let read = chunk_records(bytes, first, "open segment", |p, r| {
                    scratch.push(p, r);
                    Ok(())
                });
                if read.is_err() || scratch.problem_count() > 0 {
                    return Ok(false);
                }
                next = chunk_records(bytes, first, "open segment", |p, r| {
                    let checked = CheckedRecord::check(p, r);
                    verifier.accept(&checked);
                    record(&checked, r)
                })?;
                contents.update(bytes);
                chunks.push(ChunkEntry {
                    first,
                    last: next - 1,
                    sha256: sha256_hex(bytes),
                });
                Ok(true)
            })?;
            if whole < *len {
                tracing::warn!(
                    dropped_bytes = *len - whole,
                    "the copy's open segment ends in a chunk that is not whole or does not check (a write a crash cut off, or damage): restored without it"
                );
            }
        }
        holds_its_head(
            "open segment",
            self.signed_tree_head.as_deref(),
            verifier.last_position(),
        )?;
        if let Some(p) = verifier.first_problem() {
            return Err(BackupError::Chain {
                position: p.position,
                reason: p.reason.clone(),
            });
        }
        let manifest = Manifest {
            format: "idledger-backup".into(),
            version: 1,
            from: 1,
            position: verifier.last_position(),
            head_hash: verifier.last_hash().to_hex(),
            record_count: verifier.last_position(),
            chunks,
            keystore_sha256: self.keys.keystore.as_deref().map(sha256_hex),
            keystore_unchanged: false,
            log_key_sha256: self.keys.log_key.as_deref().map(sha256_hex),
            contents_sha256: hex::encode(contents.finalize()),
            signed_tree_head: self.signed_tree_head.clone().or(signed_tree_head),
        };
        Ok(Contents {
            manifest,
            sealed: self.keys.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::events::RotationGroupJoined;
    use idledger_domain::{encode_record, Actor, ProposedEvent, RecordFields, StreamId, UserId};
    use proptest::prelude::*;

    const RECORDS: u64 = 600;
    const SEGMENT: u64 = 70;

    /// A sound log of `n` records over three streams; another `history` gives other
    /// records from position 1 on.
    fn chain(n: u64, history: u128) -> Vec<Vec<u8>> {
        let mut prev = Hash::default();
        let mut versions = [0u64; 3];
        (1..=n)
            .map(|position| {
                let s = (position % 3) as usize;
                versions[s] += 1;
                let stream = StreamId::user(UserId(uuid::Uuid::from_u128(s as u128 + 1)));
                let proposed = ProposedEvent::new(
                    uuid::Uuid::from_u128(u128::from(position) << 8 | history),
                    Actor::System,
                    RotationGroupJoined {},
                );
                let (bytes, hash) = encode_record(
                    RecordFields {
                        position,
                        stream: &stream,
                        version: versions[s],
                        recorded_at: chrono::DateTime::from_timestamp(1_700_000_000, 0)
                            .expect("a valid time"),
                        proposed: &proposed,
                    },
                    &prev,
                )
                .expect("encodes");
                prev = hash;
                bytes
            })
            .collect()
    }

    fn hash_of(record: &[u8]) -> Hash {
        idledger_domain::envelope::RawRecord::parse(record)
            .expect("parses")
            .hash
    }

    /// What the server would send from `from` on: at most `n` records, and a key store.
    fn increment(log: &[Vec<u8>], from: u64, n: u64, keystore: &[u8]) -> Vec<u8> {
        let sealed = SealedFiles {
            keystore: Some(keystore.to_vec()),
            log_key: None,
        };
        increment_with(log, from, n, &sealed, None)
    }

    /// Records `from` on (`n` of them at most) of `log`, with `sealed` and `note`.
    fn increment_with(
        log: &[Vec<u8>],
        from: u64,
        n: u64,
        sealed: &SealedFiles,
        note: Option<String>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = match from {
            1 => BackupWriter::new(&mut out),
            _ => BackupWriter::after(&mut out, from - 1, hash_of(&log[from as usize - 2])),
        }
        .expect("starts");
        let through = (from + n - 1).min(log.len() as u64);
        for p in from..=through {
            w.push(p, &log[p as usize - 1]).expect("pushes");
        }
        w.finish(sealed, None, note).expect("finishes");
        out
    }

    /// A server's log-signing key, made in `server`, and its key file.
    fn log_key_in(server: &Path) -> (idledger_replay::tree::LogSigningKey, Vec<u8>) {
        std::fs::create_dir_all(server).expect("made");
        let (master, _) = crate::secrets::MasterKey::load(server, None, true).expect("a key");
        let keyring = crate::secrets::Keyring::open(
            master,
            std::sync::Arc::new(crate::secrets::keystore::KeyFile::open(server).expect("opens")),
        )
        .expect("opens");
        let key = crate::notary::key::load_or_create(server, &keyring).expect("a log key");
        let file = std::fs::read(crate::notary::key::key_path(server)).expect("reads");
        (key, file)
    }

    /// A checkpoint `by` signs over the first `size` records of `of`.
    fn signed_head(
        by: &idledger_replay::tree::LogSigningKey,
        of: &[Vec<u8>],
        size: usize,
    ) -> String {
        use idledger_replay::tree::{leaf_hash, Frontier, TreeHead};
        let mut tree = Frontier::new();
        for r in &of[..size] {
            tree.push(leaf_hash(r));
        }
        by.sign(TreeHead {
            tree_size: size as u64,
            root_hash: tree.root(),
            timestamp_ms: 1,
        })
        .expect("signs")
        .to_note()
    }

    /// A key file naming `other`'s public key, with the sealed part of `key_file`.
    fn key_file_naming(other: &idledger_replay::tree::LogSigningKey, key_file: &[u8]) -> Vec<u8> {
        let sealed = std::str::from_utf8(key_file)
            .expect("text")
            .lines()
            .nth(2)
            .expect("sealed")
            .to_owned();
        format!("idledger log key v1\n{}\n{sealed}\n", other.public()).into_bytes()
    }

    /// A key store file of `entries` (key, value).
    fn keystore_of(entries: &[(&str, &str)]) -> Vec<u8> {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let mut text = String::from("idledger keystore 1\n");
        for (k, v) in entries {
            text.push_str(&format!("{} {}\n", STANDARD.encode(k), STANDARD.encode(v)));
        }
        text.into_bytes()
    }

    /// A copy missing records its signed head covers (a segment deleted, sealed or open)
    /// is refused on open: taking them again from the server would overwrite the head it
    /// kept, the evidence of what the server signed before.
    #[test]
    fn a_copy_missing_what_its_head_covers_is_refused() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let (key, key_file) = log_key_in(&tmp.path().join("server"));
        let log = chain(200, 0);
        let sealed = SealedFiles {
            keystore: Some(keystore_of(&[("check", "c")])),
            log_key: Some(key_file),
        };
        let take = |copy: &mut FollowCopy, from: u64, n: u64| {
            let to = (from + n - 1) as usize;
            let note = signed_head(&key, &log, to);
            copy.take(
                increment_with(&log, from, n, &sealed, Some(note)).as_slice(),
                200,
                100,
            )
            .expect("taken");
        };
        // Two sealed segments, then an open one, each increment with a head over it all.
        let dir = tmp.path().join("copy");
        let mut copy = FollowCopy::open(&dir, SEGMENT).expect("opens");
        take(&mut copy, 1, SEGMENT);
        take(&mut copy, SEGMENT + 1, SEGMENT);
        take(&mut copy, 2 * SEGMENT + 1, 10);
        drop(copy);
        let (_, open) = open_segment(&dir).expect("lists").expect("an open segment");
        let saved = std::fs::read(&open).expect("reads");
        std::fs::remove_file(&open).expect("removed");
        let err = FollowCopy::open(&dir, SEGMENT)
            .err()
            .expect("opened without its records");
        assert!(err.to_string().contains("signed tree head covers"), "{err}");
        std::fs::write(&open, &saved).expect("put back");
        let copy = FollowCopy::open(&dir, SEGMENT).expect("whole again");
        assert_eq!(copy.position(), 2 * SEGMENT + 10);
        drop(copy);
        // The newest sealed segment gone, with the open one.
        std::fs::remove_file(&open).expect("removed");
        let (_, _, last) = sealed_segments(&dir).expect("lists").pop().expect("sealed");
        std::fs::remove_file(last).expect("removed");
        let err = FollowCopy::open(&dir, SEGMENT)
            .err()
            .expect("opened without its records");
        assert!(err.to_string().contains("signed tree head covers"), "{err}");
    }

    /// A head over fewer records than the one the copy keeps does not replace it: the
    /// copy keeps the widest signature it was shown.
    #[test]
    fn a_smaller_head_does_not_replace_a_larger_one() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let (key, key_file) = log_key_in(&tmp.path().join("server"));
        let log = chain(40, 0);
        let sealed = SealedFiles {
            keystore: Some(keystore_of(&[("check", "c")])),
            log_key: Some(key_file),
        };
        let dir = tmp.path().join("copy");
        let mut copy = FollowCopy::open(&dir, SEGMENT).expect("opens");
        let wide = signed_head(&key, &log, 20);
        copy.take(
            increment_with(&log, 1, 20, &sealed, Some(wide.clone())).as_slice(),
            40,
            100,
        )
        .expect("taken");
        let narrow = signed_head(&key, &log, 10);
        copy.take(
            increment_with(&log, 21, 10, &sealed, Some(narrow)).as_slice(),
            40,
            101,
        )
        .expect("taken");
        assert_eq!(copy.position(), 30);
        let kept = std::fs::read_to_string(dir.join(SIGNED_TREE_HEAD)).expect("kept");
        assert_eq!(kept, wide);
    }

    /// A head that does not verify with the log's key is refused when it comes, before any
    /// of its increment is kept; one that does is kept.
    #[test]
    fn a_signed_head_that_does_not_verify_with_the_logs_key_is_refused_on_arrival() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let (key, key_file) = log_key_in(&tmp.path().join("server"));
        let log = chain(10, 0);
        let head = |by| signed_head(by, &log, 5);
        let other = idledger_replay::tree::LogSigningKey::from_seed(key.public().name(), &[7; 32])
            .expect("a key");
        let increment = |from: u64, note: String, log_key: Option<Vec<u8>>| {
            let sealed = SealedFiles {
                keystore: Some(keystore_of(&[("check", "c")])),
                log_key: Some(log_key.unwrap_or_else(|| key_file.clone())),
            };
            increment_with(&log, from, 5, &sealed, Some(note))
        };
        let copy_dir = tmp.path().join("copy");
        let mut copy = FollowCopy::open(&copy_dir, SEGMENT).expect("opens");
        copy.take(increment(1, head(&key), None).as_slice(), 10, 100)
            .expect("taken");
        let kept = std::fs::read_to_string(copy_dir.join(SIGNED_TREE_HEAD)).expect("kept");
        assert_eq!(kept, head(&key));
        let keys_before = std::fs::read(keys_dir(&copy_dir).join(LOG_KEY)).expect("kept");
        let err = copy
            .take(increment(6, head(&other), None).as_slice(), 10, 101)
            .expect_err("a head of another key taken");
        assert!(err.to_string().contains("does not verify"), "{err}");
        drop(copy);
        // Nor with another key sent along to fit it.
        let mut copy = FollowCopy::open(&copy_dir, SEGMENT).expect("opens");
        let other_file = key_file_naming(&other, &key_file);
        let err = copy
            .take(
                increment(6, head(&other), Some(other_file)).as_slice(),
                10,
                101,
            )
            .expect_err("a head of another key, sent with it, taken");
        assert!(err.to_string().contains("another key"), "{err}");
        assert_eq!(
            std::fs::read(keys_dir(&copy_dir).join(LOG_KEY)).expect("kept"),
            keys_before,
            "the log key was replaced"
        );
        drop(copy);
        let copy = FollowCopy::open(&copy_dir, SEGMENT).expect("opens");
        assert_eq!(copy.verifier.last_position(), 5, "nothing of it kept");
        assert_eq!(
            std::fs::read_to_string(copy_dir.join(SIGNED_TREE_HEAD)).expect("kept"),
            kept
        );
    }

    /// A head that verifies but whose root is not the root of the records the copy holds
    /// at its size is another history shown to this copy: refused, nothing kept. So is a
    /// log key other than the one held. A head a moment older than the increment it
    /// comes with is still checked (and kept), and a damaged kept head is refused on open.
    #[test]
    fn a_head_over_another_history_or_another_log_key_is_refused() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let (key, key_file) = log_key_in(&tmp.path().join("server"));
        let log = chain(15, 0);
        let forked = chain(15, 1);
        let head = |of: &[Vec<u8>], size| signed_head(&key, of, size);
        let increment = |from: u64, note: Option<String>, log_key: Vec<u8>| {
            let sealed = SealedFiles {
                keystore: Some(keystore_of(&[("check", "c")])),
                log_key: Some(log_key),
            };
            increment_with(&log, from, 5, &sealed, note)
        };
        let copy_dir = tmp.path().join("copy");
        let mut copy = FollowCopy::open(&copy_dir, SEGMENT).expect("opens");
        copy.take(
            increment(1, Some(head(&log, 5)), key_file.clone()).as_slice(),
            15,
            100,
        )
        .expect("taken");
        let kept = || std::fs::read_to_string(copy_dir.join(SIGNED_TREE_HEAD)).expect("kept");
        assert_eq!(kept(), head(&log, 5));

        let err = copy
            .take(
                increment(6, Some(head(&forked, 8)), key_file.clone()).as_slice(),
                15,
                101,
            )
            .expect_err("a head over another history taken");
        assert!(err.to_string().contains("another history"), "{err}");
        drop(copy);
        let mut copy = FollowCopy::open(&copy_dir, SEGMENT).expect("opens");
        assert_eq!(copy.position(), 5, "nothing of it kept");
        assert_eq!(kept(), head(&log, 5));

        let other = idledger_replay::tree::LogSigningKey::from_seed(key.public().name(), &[7; 32])
            .expect("a key");
        let err = copy
            .take(
                increment(6, None, key_file_naming(&other, &key_file)).as_slice(),
                15,
                101,
            )
            .expect_err("another log key taken");
        assert!(err.to_string().contains("another key"), "{err}");
        drop(copy);
        let mut copy = FollowCopy::open(&copy_dir, SEGMENT).expect("opens");
        assert_eq!(copy.position(), 5, "nothing of it kept");

        copy.take(
            increment(6, Some(head(&log, 8)), key_file.clone()).as_slice(),
            15,
            102,
        )
        .expect("taken");
        assert_eq!(kept(), head(&log, 8));
        // Signed at 9, before the copy read 6-10, sent with 11-15: checked, kept.
        copy.take(
            increment(11, Some(head(&log, 9)), key_file.clone()).as_slice(),
            15,
            103,
        )
        .expect("taken");
        assert_eq!(kept(), head(&log, 9));
        drop(copy);

        let mut damaged = kept().into_bytes();
        damaged[0] |= 0x80;
        std::fs::write(copy_dir.join(SIGNED_TREE_HEAD), damaged).expect("written");
        let err = FollowCopy::open(&copy_dir, SEGMENT)
            .err()
            .expect("a damaged head taken for none");
        assert!(err.to_string().contains("signed-tree-head"), "{err}");
        let err = CopySnapshot::open(&copy_dir)
            .err()
            .expect("a damaged head taken for none");
        assert!(err.to_string().contains("signed-tree-head"), "{err}");
    }

    /// The server's key store is read at its log's head, which may be past the records of
    /// an increment: a key shredded in between is still needed by the records the copy
    /// holds. The copy keeps it until its records reach the head they came with, and only
    /// then holds exactly the server's key store.
    #[test]
    fn a_copy_behind_the_head_keeps_the_keys_its_records_need() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let log = chain(20, 0);
        let mut copy = FollowCopy::open(tmp.path(), SEGMENT).expect("opens");
        let newest = |dir: &Path| {
            let (_, path) = keystore_snapshots(dir).expect("lists").pop().expect("one");
            read_key_file(&path).expect("reads").expect("there")
        };
        let first = keystore_of(&[("subject:u", "ku"), ("check", "c")]);
        let inc = increment(&log, 1, 5, &first);
        copy.take(inc.as_slice(), 20, 100).expect("taken");
        assert_eq!(newest(tmp.path()), first);
        // `u` deleted after record 8, its key shredded; `v` arrives. Records 6-8 still need
        // `u`'s key: the copy holds both.
        let later = keystore_of(&[("check", "c"), ("subject:v", "kv")]);
        let inc = increment(&log, 6, 3, &later);
        copy.take(inc.as_slice(), 20, 101).expect("taken");
        let held = String::from_utf8(newest(tmp.path())).expect("text");
        for k in ["subject:u", "subject:v", "check"] {
            use base64::{engine::general_purpose::STANDARD, Engine};
            assert!(held.contains(&STANDARD.encode(k)), "{k} in {held}");
        }
        // A restore of the copy now has the keys its records need.
        let snapshot = CopySnapshot::open(tmp.path()).expect("opens");
        assert_eq!(snapshot.keys.keystore.as_deref(), Some(held.as_bytes()));
        // Caught up with the head: exactly the server's, the shredded key gone.
        let inc = increment(&log, 9, 12, &later);
        copy.take(inc.as_slice(), 20, 102).expect("taken");
        assert_eq!(newest(tmp.path()), later);
        assert_eq!(copy.keystore_sha256(), Some(sha256_hex(&later).as_str()));
    }

    /// What can happen to a follower.
    #[derive(Clone, Debug)]
    enum Step {
        /// An increment of up to this many records arrives and is taken.
        Take(u64),
        /// Killed while appending: a prefix of this many bytes of the next chunk section
        /// reached the file (more than the section holds: the whole section, not synced
        /// before the kill, which a resumed follower may keep).
        KilledMidAppend(usize),
        /// The machine lost power: zeros follow the last write.
        PowerLoss(usize),
        /// An increment with one flipped byte arrives.
        Flipped(usize),
        /// An increment from another history arrives.
        Forked,
        /// Restarted, nothing else.
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1u64..120).prop_map(Step::Take),
            2 => (0usize..4000).prop_map(Step::KilledMidAppend),
            1 => (1usize..600).prop_map(Step::PowerLoss),
            1 => any::<usize>().prop_map(Step::Flipped),
            1 => Just(Step::Forked),
            1 => Just(Step::Restart),
        ]
    }

    fn open_path(dir: &Path) -> Option<PathBuf> {
        open_segment(dir).expect("lists").map(|(_, p)| p)
    }

    fn append_to_open(dir: &Path, copy_position: u64, bytes: &[u8]) {
        let path = open_path(dir).unwrap_or_else(|| {
            let p =
                segments_dir(dir).join(format!("{OPEN_PREFIX}{:020}{SUFFIX}", copy_position + 1));
            std::fs::write(&p, MAGIC).expect("writes");
            p
        });
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("opens");
        f.write_all(bytes).expect("writes");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever kills, torn writes, lost power and bad increments come, the copy holds
        /// records 1 to its position exactly as the log does, each once, and a follower
        /// that goes on reaches the head.
        #[test]
        fn a_copy_holds_each_record_once_whatever_befalls_its_follower(
            steps in proptest::collection::vec(step(), 1..30)
        ) {
            let log = chain(RECORDS, 0);
            let other = chain(RECORDS, 1);
            let tmp = tempfile::tempdir().expect("a temp dir");
            let dir = tmp.path();
            let mut copy = FollowCopy::open(dir, SEGMENT).expect("opens");
            let mut now = 1_000u64;
            for step in steps {
                let at = copy.position();
                match step {
                    Step::Take(n) => {
                        now += 1;
                        let keystore = format!("keys at {now}");
                        let inc = increment(&log, at + 1, n, keystore.as_bytes());
                        copy.take(inc.as_slice(), 0, now).expect("a good increment is taken");
                        prop_assert!(copy.position() == (at + n).min(RECORDS));
                    }
                    Step::KilledMidAppend(prefix) => {
                        drop(copy);
                        let mut section = Vec::new();
                        for r in log.iter().skip(at as usize).take(5) {
                            section.extend_from_slice(&(r.len() as u32).to_le_bytes());
                            section.extend_from_slice(r);
                        }
                        let mut bytes = vec![b'C'];
                        bytes.extend_from_slice(&(section.len() as u64).to_le_bytes());
                        bytes.extend_from_slice(&section);
                        if at < RECORDS {
                            bytes.truncate(prefix);
                            append_to_open(dir, at, &bytes);
                        }
                        copy = FollowCopy::open(dir, SEGMENT).expect("reopens");
                        let whole = at < RECORDS && prefix >= bytes.len() && !bytes.is_empty();
                        let kept = copy.position();
                        prop_assert!(kept == at || (whole && kept == (at + 5).min(RECORDS)));
                    }
                    Step::PowerLoss(zeros) => {
                        drop(copy);
                        append_to_open(dir, at, &vec![0u8; zeros]);
                        copy = FollowCopy::open(dir, SEGMENT).expect("reopens");
                        prop_assert_eq!(copy.position(), at);
                    }
                    Step::Flipped(which) => {
                        let mut inc = increment(&log, at + 1, 20, b"k");
                        let i = MAGIC.len() + which % (inc.len() - MAGIC.len());
                        inc[i] ^= 0x01;
                        prop_assert!(copy.take(inc.as_slice(), 0, now).is_err());
                        drop(copy);
                        copy = FollowCopy::open(dir, SEGMENT).expect("reopens");
                        prop_assert_eq!(copy.position(), at);
                    }
                    Step::Forked => {
                        if at >= 1 {
                            let inc = increment(&other, at + 1, 10, b"k");
                            prop_assert!(copy.take(inc.as_slice(), 0, now).is_err());
                            drop(copy);
                            copy = FollowCopy::open(dir, SEGMENT).expect("reopens");
                            prop_assert_eq!(copy.position(), at);
                        }
                    }
                    Step::Restart => {
                        drop(copy);
                        copy = FollowCopy::open(dir, SEGMENT).expect("reopens");
                        prop_assert_eq!(copy.position(), at);
                    }
                }
            }
            loop {
                let inc = increment(&log, copy.position() + 1, 97, b"last keys");
                copy.take(inc.as_slice(), 0, now + 1).expect("taken");
                if copy.position() == RECORDS {
                    break;
                }
            }
            drop(copy);
            let mut read = Vec::new();
            let contents = CopySnapshot::open(dir)
                .expect("opens")
                .read(|c, r| {
                    read.push((c.position, r.to_vec()));
                    Ok(())
                })
                .expect("the copy reads whole");
            prop_assert_eq!(contents.manifest.position, RECORDS);
            prop_assert_eq!(contents.sealed.keystore.as_deref(), Some(&b"last keys"[..]));
            prop_assert!(read.len() as u64 == RECORDS);
            for (i, (p, r)) in read.iter().enumerate() {
                prop_assert_eq!(*p, i as u64 + 1);
                prop_assert!(r == &log[i]);
            }
            let sealed = sealed_segments(dir).expect("lists");
            // A segment is sealed once an increment fills it: each holds at least SEGMENT
            // records (more when chunks a resumed follower kept came first).
            prop_assert!(sealed.len() >= 3);
            for (first, last, _) in sealed {
                prop_assert!(last + 1 - first >= SEGMENT);
            }
        }
    }

    #[test]
    fn old_key_store_snapshots_age_out_and_the_newest_stays() {
        let log = chain(50, 0);
        let tmp = tempfile::tempdir().expect("a temp dir");
        let mut copy = FollowCopy::open(tmp.path(), SEGMENT).expect("opens");
        for (i, now) in [10_000u64, 20_000, 30_000].into_iter().enumerate() {
            let inc = increment(&log, copy.position() + 1, 5, format!("k{i}").as_bytes());
            copy.take(inc.as_slice(), 0, now).expect("taken");
        }
        assert_eq!(keystore_snapshots(tmp.path()).expect("lists").len(), 3);
        // Retained for 15,000 s, at 36,000: the snapshot replaced at 20,000 goes, the one
        // replaced at 30,000 stays.
        assert_eq!(copy.prune(15_000, 36_000).expect("prunes"), 1);
        let left: Vec<u64> = keystore_snapshots(tmp.path())
            .expect("lists")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, [20_000, 30_000]);
        assert_eq!(copy.prune(0, 1_000_000).expect("prunes"), 1);
        assert_eq!(keystore_snapshots(tmp.path()).expect("lists").len(), 1);
        // The clock steps back: the new key store is still the newest snapshot.
        let inc = increment(&log, copy.position() + 1, 5, b"after the step");
        copy.take(inc.as_slice(), 0, 50).expect("taken");
        let snapshots = keystore_snapshots(tmp.path()).expect("lists");
        let newest = snapshots.last().expect("one");
        assert_eq!(newest.0, 30_001);
        assert_eq!(
            read_key_file(&newest.1).expect("reads"),
            Some(b"after the step".to_vec())
        );
        // Changes within the hour after the newest snapshot write over it: ten changes,
        // one file, holding the last.
        for i in 0..10u64 {
            let inc = increment(&log, copy.position() + 1, 1, format!("busy {i}").as_bytes());
            copy.take(inc.as_slice(), 0, 30_001 + i * 60)
                .expect("taken");
        }
        let snapshots = keystore_snapshots(tmp.path()).expect("lists");
        assert_eq!(snapshots.len(), 2, "{snapshots:?}");
        assert_eq!(snapshots[1].0, 30_001);
        assert_eq!(
            read_key_file(&snapshots[1].1).expect("reads"),
            Some(b"busy 9".to_vec())
        );
        // An hour on, a new one.
        let inc = increment(&log, copy.position() + 1, 1, b"an hour on");
        copy.take(inc.as_slice(), 0, 30_001 + 3_600).expect("taken");
        assert_eq!(keystore_snapshots(tmp.path()).expect("lists").len(), 3);
        // An increment that leaves the key store out as unchanged, naming another one,
        // is refused.
        let mut out = Vec::new();
        let at = copy.position();
        let mut w =
            BackupWriter::after(&mut out, at, hash_of(&log[at as usize - 1])).expect("starts");
        w.push(at + 1, &log[at as usize]).ok();
        let other = SealedFiles {
            keystore: Some(b"another".to_vec()),
            log_key: None,
        };
        w.finish(&other, Some(&sha256_hex(b"another")), None)
            .expect("finishes");
        assert!(copy.take(out.as_slice(), 0, 60).is_err());
        drop(copy);
        let _held = FollowCopy::open(tmp.path(), SEGMENT).expect("reopens");
        // A second follower of the same copy is refused.
        assert!(matches!(
            FollowCopy::open(tmp.path(), SEGMENT),
            Err(BackupError::Busy(_))
        ));
    }

    #[test]
    fn a_damaged_key_file_of_a_copy_is_refused() {
        let log = chain(10, 0);
        let tmp = tempfile::tempdir().expect("a temp dir");
        let mut copy = FollowCopy::open(tmp.path(), SEGMENT).expect("opens");
        let inc = increment(&log, 1, 5, b"idledger keystore 1\nkey value\n");
        copy.take(inc.as_slice(), 0, 100).expect("taken");
        drop(copy);
        let (_, path) = keystore_snapshots(tmp.path())
            .expect("lists")
            .pop()
            .expect("one");
        let good = std::fs::read(&path).expect("reads");
        assert!(CopySnapshot::open(tmp.path()).is_ok());
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 2] ^= 1;
        // Cut where a key store's reader would see a torn last line and drop it.
        let cut = good[..good.len() - 3].to_vec();
        for damaged in [flipped, cut] {
            std::fs::write(&path, &damaged).expect("writes");
            let err = CopySnapshot::open(tmp.path()).err().expect("refused");
            assert!(err.to_string().contains("damaged"), "{err}");
            assert!(FollowCopy::open(tmp.path(), SEGMENT).is_err());
        }
    }
}

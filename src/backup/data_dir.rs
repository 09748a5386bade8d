//! A stopped server's data dir into one backup file, and a backup (a file or a
//! `--follow` copy) back into a new data dir.

use super::follow::CopySnapshot;
use super::{read, refused, BackupError, BackupWriter, Contents, Manifest, CHUNK};
use crate::store::page::{Layout, PageWriter};
use crate::store::sled_log::{import_records, open_raw, RawStore};
use crate::store::StoreError;
use idledger_domain::Hash;
use idledger_projections::{Projections, UserStatus};
use idledger_replay::tree::{Frontier, LogPublicKey, TreeHead};
use idledger_replay::verify::CheckedRecord;
use std::path::Path;

/// Backs up a stopped server's data dir into the new file `out`.
pub fn backup_data_dir(
    data_dir: &Path,
    out: &Path,
    mut progress: impl FnMut(u64),
    total: impl FnOnce(u64),
) -> Result<Manifest, BackupError> {
    // Refuses a data dir whose restore was cut off: its key store may not be in place.
    let store = open_raw(data_dir)?;
    if store.holds_legacy_keys()? {
        // Only the key store file is backed up: this dir's keys would be left out, and
        // every secret restored unreadable.
        return Err(BackupError::Io(std::io::Error::other(
            "this data dir's data keys are still in its store, where an earlier build kept              them: run `serve` on it once (it moves them to the key store file), then back              it up",
        )));
    }
    let through = store.last_position()?;
    total(through);
    let file = crate::backup::NewBackupFile::create(out)?;
    let manifest = write_store(&store, through, data_dir, file.file(), &mut progress)?;
    file.finish()?;
    Ok(manifest)
}

/// Records read from sled per hand-over to the writing thread.
const READ_BATCH: usize = 4096;

/// [`backup_data_dir`]'s work, into `file`.
fn write_store(
    store: &RawStore,
    through: u64,
    data_dir: &Path,
    file: &std::fs::File,
    progress: &mut impl FnMut(u64),
) -> Result<Manifest, BackupError> {
    let mut w = BackupWriter::new(file)?;
    // The head the manifest will carry, held to the records as they are written: a store
    // that lost records it signed, or holds others, gives no backup that restore refuses
    // only later.
    let head = crate::notary::latest_kept(data_dir);
    if let Some(h) = &head {
        if h.head.tree_size > through {
            return Err(BackupError::Chain {
                position: through + 1,
                reason: format!(
                    "the data dir's last signed tree head covers {} records and its store ends at {through}: records it signed are gone",
                    h.head.tree_size
                ),
            });
        }
        w.expect_head(h.head);
    }
    // sled is read on a thread of its own while this one checks and writes.
    std::thread::scope(|scope| -> Result<(), BackupError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<_>, StoreError>>(8);
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(READ_BATCH);
            for r in store.records() {
                match r {
                    Ok(record) => batch.push(record),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
                if batch.len() == READ_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH));
                    if tx.send(Ok(full)).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(batch));
        });
        for batch in rx {
            for (position, bytes) in batch? {
                w.push(position, &bytes)?;
            }
            progress(w.position());
        }
        Ok(())
    })?;
    if w.position() != through {
        return Err(BackupError::Chain {
            position: w.position() + 1,
            reason: format!("the store ends before position {through}"),
        });
    }
    let sealed = super::sealed_files(data_dir)?;
    w.finish(&sealed, None, head.map(|h| h.to_note()))
}

/// A backup to read: one file, or the copy `backup --follow` keeps. Opened once: every
/// read of it reads the same records, even while a follower goes on adding to the copy.
pub enum BackupSource {
    /// A backup file.
    File(std::fs::File),
    /// A `--follow` copy, as it was when opened.
    Copy(CopySnapshot),
}

impl BackupSource {
    /// Opens the backup at `path`: a directory is a `--follow` copy.
    pub fn open(path: &Path) -> Result<Self, BackupError> {
        if path.is_dir() {
            Ok(BackupSource::Copy(CopySnapshot::open(path)?))
        } else {
            Ok(BackupSource::File(std::fs::File::open(path)?))
        }
    }

    /// Reads and checks all of it; `record` hears each record in order (keep nothing it
    /// heard unless this answers `Ok`).
    pub fn read(
        &mut self,
        record: impl FnMut(&CheckedRecord, &[u8]) -> Result<(), BackupError>,
    ) -> Result<Contents, BackupError> {
        match self {
            BackupSource::File(file) => {
                use std::io::Seek;
                file.rewind()?;
                read(&*file, record)
            }
            BackupSource::Copy(copy) => copy.read(record),
        }
    }
}

/// Whether `dir` holds anything.
fn occupied(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What [`restore`] put in place.
pub struct Restored {
    /// The backup's manifest (for a `--follow` copy, one made for the records read).
    pub manifest: Manifest,
    /// The restored records folded, as a server opening the data dir will fold them.
    pub projections: Projections,
    /// The backup's signed tree head, checked with the log's public key and against the
    /// restored records' root (when a key was given).
    pub signed_head: Option<TreeHead>,
    /// Records after the head the key checked (`--public-key`'s, else the backup's own):
    /// restored only with [`UnsignedTail::Accepted`].
    pub unsigned_records: u64,
    /// Live users of the restored records whose secrets (a password, a passkey, an
    /// authenticator app's seed) no key of the key store opens: most often
    /// their key was shredded (they were deleted) after the records the backup holds but
    /// before its key store was read (a whole backup bounded by `limit`); else lost before
    /// the backup (a data dir once restored `--without-keys`).
    pub keys_destroyed: Vec<idledger_domain::UserId>,
}

/// Restores the backup `from` into the new or empty data dir `data_dir`, in one pass over
/// it: this thread reads every record, checks it and folds it into the projections, while
/// another writes it into the store in a staging directory inside `data_dir`, with the
/// Merkle tree's leaves. Only when all of the backup has checked are the staged files moved
/// into place; a backup that is wrong anywhere leaves nothing behind.
///
/// A backup's hashes show it is whole, not that it is the log's: whoever can write the
/// file can rehash all of it. With `log_key` (the log's public key, obtained apart from
/// the backup) its signed tree head must verify and name the root of the records
/// restored, so a changed record, or a history that is not the log's, is refused.
pub fn restore(
    from: &mut BackupSource,
    data_dir: &Path,
    log_key: Option<&LogPublicKey>,
    tail: UnsignedTail,
    keys: KeysNeeded,
    progress: impl FnMut(u64),
) -> Result<Restored, BackupError> {
    if occupied(data_dir)? {
        return Err(BackupError::NotEmpty(data_dir.display().to_string()));
    }
    // Every directory the restore makes, the data dir first: each one's name must be on
    // the device too, or a restore reported done can vanish with a lost machine.
    let made: Vec<std::path::PathBuf> = data_dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)?;
    }
    let staging = crate::store::sled_log::restore_staging_dir(data_dir);
    // Claimed, not merely found empty: of two restores into one empty dir, the second
    // stops here instead of failing later and clearing out the first one's files.
    {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&staging) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BackupError::NotEmpty(data_dir.display().to_string()))
            }
            other => other?,
        }
    }
    let outcome =
        restore_into(from, &staging, log_key, tail, keys, progress).and_then(|restored| {
            // The names of the files inside the staged directories (sled's, the tree's) are on
            // the device before the directories move.
            for entry in std::fs::read_dir(&staging)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    super::sync_dir(&entry.path())?;
                }
            }
            for entry in std::fs::read_dir(&staging)? {
                let entry = entry?;
                std::fs::rename(entry.path(), data_dir.join(entry.file_name()))?;
            }
            // Every file is in place on the device before the staging directory, which marks
            // the data dir incomplete (the log refuses to open it), goes.
            super::sync_dir(data_dir)?;
            std::fs::remove_dir(&staging)?;
            super::sync_dir(data_dir)?;
            for dir in &made {
                super::sync_dir(super::parent_of(dir))?;
            }
            Ok(restored)
        });
    if outcome.is_err() {
        // What was staged, and whatever of it had been moved already.
        let _ = std::fs::remove_dir_all(&staging);
        if let Ok(entries) = std::fs::read_dir(data_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path())
                    .or_else(|_| std::fs::remove_file(entry.path()));
            }
        }
        for dir in &made {
            let _ = std::fs::remove_dir(dir);
        }
    }
    outcome
}

/// Threads writing into the store.
const WRITERS: usize = 2;

/// Records handed from the reading thread to a writing one: their pages, and their leaf
/// hashes.
struct Batch {
    pages: PageWriter,
    records: usize,
    /// The records' bytes: a batch also ends at [`BATCH_BYTES`], so a few in flight hold
    /// little however large the records.
    bytes: usize,
    leaves: Vec<u8>,
}

/// The most record bytes one batch of a restore holds.
const BATCH_BYTES: usize = 64 << 20;

impl Batch {
    fn new() -> Self {
        Batch {
            pages: PageWriter::new(Layout::Paged),
            records: 0,
            bytes: 0,
            leaves: Vec::with_capacity(CHUNK * 32),
        }
    }
}

/// [`restore`]'s work, into `staging`.
fn restore_into(
    from: &mut BackupSource,
    staging: &Path,
    log_key: Option<&LogPublicKey>,
    tail: UnsignedTail,
    keys: KeysNeeded,
    mut progress: impl FnMut(u64),
) -> Result<Restored, BackupError> {
    let importer = import_records(staging)?;
    // Two writers, taking batches in turn, so that sled's inserts run side by side in
    // distinct ranges of positions. Pages are made here: one copy of each record, not a
    // copy and then a page.
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(2);
            let importer = importer.clone();
            let thread = std::thread::spawn(move || -> Result<Vec<Vec<u8>>, BackupError> {
                let mut leaves = Vec::new();
                for batch in rx {
                    importer.put(batch.pages.finish())?;
                    leaves.push(batch.leaves);
                }
                Ok(leaves)
            });
            (tx, thread)
        })
        .collect();
    let mut turn = 0usize;
    let mut sealed = 0usize;
    // Each data key a secret is sealed under: the first record sealed under it, and for
    // which stream.
    let mut sealed_under = rustc_hash::FxHashMap::default();
    let mut projections = Projections::new();
    let mut batch = Batch::new();
    let gone = || refused("store", "the writer stopped");
    let read = from.read(|checked, bytes| {
        let (Ok(env), Some(leaf)) = (&checked.envelope, checked.leaf) else {
            // The reader refuses this record once its checks are done.
            return Ok(());
        };
        projections.apply(env);
        if let Some(secret) = env.event.sealed() {
            sealed += 1;
            sealed_under
                .entry(secret.key_id)
                .or_insert_with(|| (checked.position, env.stream.clone()));
        }
        batch.pages.push(checked.position, bytes);
        batch.records += 1;
        batch.bytes += bytes.len();
        batch.leaves.extend_from_slice(&leaf.0);
        if batch.records == CHUNK || batch.bytes >= BATCH_BYTES {
            let full = std::mem::replace(&mut batch, Batch::new());
            writers[turn % WRITERS].0.send(full).map_err(|_| gone())?;
            turn += 1;
            progress(checked.position);
        }
        Ok(())
    });
    let sent = match &read {
        Ok(_) => writers[turn % WRITERS].0.send(batch).map_err(|_| gone()),
        Err(_) => Ok(()),
    };
    let mut written = Vec::new();
    for (tx, thread) in writers {
        drop(tx);
        written.push(
            thread
                .join()
                .map_err(|_| refused("store", "a writer failed"))?,
        );
    }
    // The reader's refusal names what is wrong with the backup: it comes first, unless
    // it only says that a writer stopped, whose own error then says why.
    let contents = match read {
        Ok(c) => c,
        Err(e)
            if sent.is_ok()
                && !matches!(&e, BackupError::Refused { part, .. } if part == "store") =>
        {
            return Err(e)
        }
        Err(e) => {
            for w in written {
                w?;
            }
            return Err(e);
        }
    };
    sent?;
    // The batches' leaves back in log order: batch k went to writer k % WRITERS.
    let mut by_writer = Vec::new();
    for w in written {
        by_writer.push(w?.into_iter());
    }
    let mut leaves = Vec::with_capacity(contents.manifest.record_count as usize * 32);
    for k in 0.. {
        match by_writer[k % WRITERS].next() {
            Some(hashes) => leaves.extend_from_slice(&hashes),
            None => break,
        }
    }
    // Read back: the store ends with the head the backup named. (Every record was checked
    // on its way in; `serve` rebuilds the indexes and checks the tree when it opens.)
    let (position, hash) = importer.finish()?.unwrap_or_default();
    let manifest = &contents.manifest;
    if position != manifest.position || hash.to_hex() != manifest.head_hash {
        return Err(refused(
            "store",
            format!(
                "the restored log ends at {position} ({}), the backup at {} ({})",
                hash.to_hex(),
                manifest.position,
                manifest.head_hash
            ),
        ));
    }
    let signed_head = log_key
        .map(|key| check_signed_head(manifest, &leaves, key))
        .transpose()?;
    // Without `--public-key`, the backup's own log key: a forger cannot make one that
    // `serve` opens (its seed is sealed under the master key), and `serve` signs whatever
    // the restored log holds, so records after the head would become signed history.
    let own_key = contents
        .sealed
        .log_key
        .as_deref()
        .map(crate::notary::key::public_key_in)
        .transpose()
        .map_err(|e| refused("log key", e.to_string()))?;
    let proven = match (&signed_head, own_key.as_ref()) {
        (Some(head), _) => head.tree_size,
        (None, Some(own)) if manifest.signed_tree_head.is_some() => {
            check_signed_head(manifest, &leaves, own)?.tree_size
        }
        // A log key and no head over anything: its records are a tail too.
        (None, Some(_)) => 0,
        // No log key and no head: a log never served, or a served log's backup with its
        // proof taken out (with the key store too, so nothing shows it was served). Either
        // way nothing proves a record, and `serve` would make a new key and sign them all.
        (None, None) => 0,
    };
    let unsigned_records = manifest.position.saturating_sub(proven);
    if unsigned_records > 0 && tail == UnsignedTail::Refused {
        let why = match proven {
            0 => format!(
                "its {} records are not proven by the key: no head signed by the log's key \
                 comes with them",
                manifest.position
            ),
            _ => format!(
                "it covers {proven} records, the backup holds {}: the last {unsigned_records} \
                 are not proven by the key",
                manifest.position
            ),
        };
        return Err(refused(
            "signed tree head",
            format!(
                "{why} (anyone who could write the file could have written them); \
                 --accept-unsigned-tail restores them unproven"
            ),
        ));
    }
    if sealed > 0 && contents.sealed.keystore.is_none() && keys == KeysNeeded::Required {
        // A sealed segment of a `--follow` copy, say: restored, every secret in it would
        // read as shredded and the log would sign under a new key, with no word of it.
        return Err(refused(
            "key store",
            format!(
                "the backup holds {sealed} sealed secrets and no key store to open them \
                 (a copy's sealed segment carries none: restore the copy's directory); \
                 --without-keys restores it anyway, every secret unreadable"
            ),
        ));
    }
    progress(contents.manifest.position);
    crate::store::tree::install_leaves(staging, &leaves)?;
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
        &contents.sealed.keystore,
    )?;
    let mut keys_destroyed = Vec::new();
    if contents.sealed.keystore.is_some() {
        // A keystore read before a deletion's shred landed (or a crash between the two)
        // still holds the deleted user's key: the restored data dir does not.
        let key_store = crate::secrets::keystore::KeyFile::open(staging)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let deleted = projections
            .users
            .deleted()
            .map(idledger_domain::StreamId::user);
        crate::secrets::shred_all(&key_store, deleted)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Each secret's key, first sealed in log order: a deleted user's is gone by
        // right; a live user's is named; anything else's is never shredded.
        let mut firsts: Vec<_> = sealed_under.into_iter().collect();
        firsts.sort_by_key(|(_, (position, _))| *position);
        let mut unshredded = Vec::new();
        for (id, (position, stream)) in firsts {
            if crate::secrets::holds_data_key(&key_store, id)
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                continue;
            }
            match stream.user_id().and_then(|id| projections.users.get(id)) {
                Some(u) if u.status == UserStatus::Deleted => {}
                // Shredded for a deletion after the records (a backup bounded by `limit`).
                Some(u) => keys_destroyed.push(u.id),
                None => unshredded.push((position, stream)),
            }
        }
        keys_destroyed.sort();
        keys_destroyed.dedup();
        // The key store was not read with the records (a backup taken wrong), or the keys
        // were lost before it (a data dir restored once `--without-keys`); either way the
        // secrets would read as shredded.
        if let (Some((position, stream)), KeysNeeded::Required) = (unshredded.first(), keys) {
            return Err(refused(
                "key store",
                format!(
                    "it lacks {} data keys that sealed secrets need and nothing shreds \
                     (the first: {stream}'s, sealed under at position {position}); \
                     --without-keys restores it anyway, those secrets unreadable",
                    unshredded.len()
                ),
            ));
        }
    }
    write(
        crate::notary::key::key_path(staging),
        &contents.sealed.log_key,
    )?;
    if let (Some(note), Some(_)) = (
        &contents.manifest.signed_tree_head,
        &contents.sealed.log_key,
    ) {
        // The head the backup carries is the restored log's first: `/v1/log/sth/{size}`
        // answers as the original did, and the log is never served shorter than it. It
        // must verify with the backup's own key and name the root of these records: done
        // above already, with `--public-key` when it is that key, else with this one.
        let public = crate::notary::key::public_key(staging)
            .map_err(|e| refused("log key", e.to_string()))?;
        if log_key.is_some_and(|given| given != &public) {
            check_signed_head(&contents.manifest, &leaves, &public)?;
        }
        let head = public
            .open(note)
            .map_err(|e| refused("signed tree head", e.to_string()))?;
        crate::notary::keep_first_head(staging, &public, head)
            .map_err(|e| refused("signed tree head", e.to_string()))?;
    }
    Ok(Restored {
        manifest: contents.manifest,
        projections,
        signed_head,
        unsigned_records,
        keys_destroyed,
    })
}

/// Whether a restore needs the backup's key store when the records hold sealed secrets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeysNeeded {
    /// Refuse a backup whose secrets could not be opened.
    Required,
    /// Restore the records alone (to read or verify them), secrets unreadable.
    NotNeeded,
}

/// Whether records after the backup's signed tree head may be restored (the head checked
/// with `--public-key`, else with the backup's own log key): nothing proves them, and
/// whoever could write the file could have appended them (their hashes are unkeyed).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnsignedTail {
    /// Refuse a backup holding records its head does not cover.
    Refused,
    /// Restore them, unproven (a `--follow` copy or an offline backup taken after the
    /// log's last head; the restore's output counts them).
    Accepted,
}

/// The manifest's signed tree head, when it verifies with `key` and its root is the root
/// of the first `tree_size` of `leaves` (the restored records' leaf hashes, from
/// position 1, 32 bytes each).
fn check_signed_head(
    manifest: &Manifest,
    leaves: &[u8],
    key: &LogPublicKey,
) -> Result<TreeHead, BackupError> {
    const PART: &str = "signed tree head";
    let note = manifest.signed_tree_head.as_deref().ok_or_else(|| {
        refused(
            PART,
            "the backup holds none (taken before the log signed a head), so it cannot be checked against the key",
        )
    })?;
    let head = key
        .open(note)
        .map_err(|e| refused(PART, e.to_string()))?
        .head;
    let held = (leaves.len() / 32) as u64;
    if head.tree_size > held {
        return Err(refused(
            PART,
            format!(
                "it covers {} records, the backup holds {held}",
                head.tree_size
            ),
        ));
    }
    let mut tree = Frontier::new();
    for leaf in leaves.chunks_exact(32).take(head.tree_size as usize) {
        let mut h = [0u8; 32];
        h.copy_from_slice(leaf);
        tree.push(Hash(h));
    }
    let root = tree.root();
    if root != head.root_hash {
        return Err(refused(
            PART,
            format!(
                "the backup's first {} records have the root {}, the log signed {}: they are not the log's records",
                head.tree_size,
                root.to_hex(),
                head.root_hash.to_hex()
            ),
        ));
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_replay::tree::{leaf_hash, LogSigningKey};

    fn manifest(sth: Option<String>) -> Manifest {
        Manifest {
            format: "idledger-backup".into(),
            version: 1,
            from: 1,
            position: 5,
            head_hash: String::new(),
            record_count: 5,
            chunks: Vec::new(),
            keystore_sha256: None,
            keystore_unchanged: false,
            log_key_sha256: None,
            contents_sha256: String::new(),
            signed_tree_head: sth,
        }
    }

    fn leaves(records: &[&[u8]]) -> Vec<u8> {
        records.iter().flat_map(|r| leaf_hash(r).0).collect()
    }

    fn signed(key: &LogSigningKey, records: &[&[u8]]) -> String {
        let mut tree = Frontier::new();
        for r in records {
            tree.push(leaf_hash(r));
        }
        key.sign(TreeHead {
            tree_size: records.len() as u64,
            root_hash: tree.root(),
            timestamp_ms: 1,
        })
        .unwrap()
        .to_note()
    }

    #[test]
    fn a_signed_head_must_verify_and_name_the_records_root() {
        let key = LogSigningKey::from_seed("idledger.test/log", &[7; 32]).unwrap();
        let other = LogSigningKey::from_seed("idledger.test/log", &[8; 32]).unwrap();
        let records: [&[u8]; 5] = [b"a", b"b", b"c", b"d", b"e"];
        let held = leaves(&records);
        // A head over the first three of five records: the last two are chained only.
        let good = manifest(Some(signed(&key, &records[..3])));
        let head = check_signed_head(&good, &held, key.public()).unwrap();
        assert_eq!(head.tree_size, 3);

        let refusal = |m: &Manifest, leaves: &[u8]| {
            check_signed_head(m, leaves, key.public())
                .unwrap_err()
                .to_string()
        };
        // Another key's head; no head at all.
        let theirs = manifest(Some(signed(&other, &records[..3])));
        assert!(refusal(&theirs, &held).contains("does not verify"));
        assert!(refusal(&manifest(None), &held).contains("holds none"));
        // One record changed (and the whole file rehashed by whoever changed it).
        let changed = leaves(&[b"a", b"B", b"c", b"d", b"e"]);
        assert!(refusal(&good, &changed).contains("not the log's records"));
        // A head over more records than the backup holds.
        let long = manifest(Some(signed(&key, &[b"a", b"b", b"c", b"d", b"e", b"f"])));
        assert!(refusal(&long, &held).contains("covers 6 records"));
    }
}

//! A stopped server's data dir into one backup file, and a backup (a file or a
//! `--follow` copy) back into a new data dir.

use super::follow::CopySnapshot;
use super::{read, refused, BackupError, BackupWriter, Contents, Manifest, CHUNK};
use crate::store::sled_log::{import_records, open_raw, RawStore};
use std::path::Path;

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
    store: &RawStore,
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
    if w.position() != through {
        return Err(BackupError::Chain {
            position: w.position() + 1,
            reason: format!("the store ends before position {through}"),
        });
    }
    let sealed = super::sealed_files(data_dir)?;
    let sth = crate::notary::latest_kept_note(data_dir);
    w.finish(&sealed, None, sth)
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
        record: impl FnMut(u64, &[u8]) -> Result<(), BackupError>,
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

/// Restores the backup `from` into the new or empty data dir `data_dir`: all of it is
/// checked first (nothing is written for a backup that is wrong anywhere), then the
/// records are written as they were stored and the sealed files put back, in a staging
/// directory inside `data_dir` that is moved into place only when everything is there.
/// Answers the manifest (for a `--follow` copy, one made for the records read).
pub fn restore(
    from: &mut BackupSource,
    data_dir: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Manifest, BackupError> {
    if occupied(data_dir)? {
        return Err(BackupError::NotEmpty(data_dir.display().to_string()));
    }
    let t0 = std::time::Instant::now();
    let checked = from.read(|_, _| Ok(()))?;
    eprintln!("TIMING pass1 {:?}", t0.elapsed());
    let created = !data_dir.exists();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)?;
    }
    let staging = data_dir.join(".restoring");
    let outcome = restore_into(from, &staging, &checked, &mut progress).and_then(|()| {
        for entry in std::fs::read_dir(&staging)? {
            let entry = entry?;
            std::fs::rename(entry.path(), data_dir.join(entry.file_name()))?;
        }
        std::fs::remove_dir(&staging)?;
        Ok(checked.manifest)
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
    from: &mut BackupSource,
    staging: &Path,
    checked: &Contents,
    progress: &mut impl FnMut(u64),
) -> Result<(), BackupError> {
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(CHUNK);
    let importer = import_records(staging)?;
    let contents = from.read(|position, bytes| {
        batch.push((position, bytes.to_vec()));
        if batch.len() == CHUNK {
            importer.put(&batch)?;
            batch.clear();
            progress(position);
        }
        Ok(())
    })?;
    if contents.manifest != checked.manifest {
        return Err(refused("backup", "changed while it was being restored"));
    }
    importer.put(&batch)?;
    let t0 = std::time::Instant::now();
    importer.finish()?;
    eprintln!("TIMING importer finish {:?}", t0.elapsed());
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
    // The sealed files of the pass that checked everything (a follower may have put a
    // newer key store into its copy since).
    write(
        crate::secrets::keystore::path_in(staging),
        &checked.sealed.keystore,
    )?;
    write(
        crate::notary::key::key_path(staging),
        &checked.sealed.log_key,
    )?;
    Ok(())
}

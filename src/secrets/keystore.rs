//! The key store: wrapped data keys in one file of the data dir (`keystore`), never in
//! the log and never in sled.
//!
//! sled keeps superseded pages in its file until it rewrites a segment, so a key removed
//! from a sled tree could still be read from `store/db`. Here a removal rewrites the whole
//! file (a new file written, `fdatasync`ed, renamed over the old one, the directory
//! `fsync`ed): afterwards no file of the data dir holds the key. What remains is what the
//! file system and the device still hold in freed blocks; see ARCHITECTURE.md.
//!
//! Additions are appended and made durable before they are used (a sealed secret is only
//! ever written to the log under a key that is on the device). Concurrent additions share
//! one `fdatasync`; concurrent removals share one rewrite.
//!
//! Format: a header line, then one `base64(key) base64(value)` line per entry; a later
//! line for the same key wins. A torn last line (a crash mid-append) belongs to an entry
//! never used, and is dropped on open.

use crate::secrets::{KeyStorage, SecretsError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const HEADER: &str = "idledger keystore 1\n";

/// Entries by key: what the file holds.
type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

fn storage(e: impl std::fmt::Display) -> SecretsError {
    SecretsError::Storage(e.to_string())
}

/// What the lock guards: the entries, the append handle, and how far changes are durable.
struct State {
    /// Entries on the device: the only ones `get` answers.
    entries: Entries,
    /// Entries appended but not yet known durable. A rewrite carries them too (their
    /// appends would otherwise vanish with the old file), but nobody reads them.
    pending: Entries,
    /// An append or its sync failed: the file may end in a partial line or hold bytes
    /// the device never took. The next change rewrites it whole first.
    damaged: bool,
    file: std::fs::File,
    /// Appends made, counted, and how many of them are known durable.
    appended: u64,
    synced: u64,
    /// Removals made, counted, and how many of them a rewrite has carried out.
    removed: u64,
    rewritten: u64,
}

/// The key store file.
pub struct KeyFile {
    path: PathBuf,
    state: Mutex<State>,
    /// Held while syncing or rewriting, so that one of them serves every change before it.
    persist: Mutex<()>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFile({})", self.path.display())
    }
}

/// Where the key store of a data dir lives.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("keystore")
}

/// The entries of a key store file's text, and whether its last line was torn.
fn parse(text: &str) -> Result<(Entries, bool), SecretsError> {
    let body = text
        .strip_prefix(HEADER)
        .ok_or_else(|| storage("the key store file has an unknown format"))?;
    let mut entries = BTreeMap::new();
    let torn = !body.is_empty() && !body.ends_with('\n');
    let whole = match body.rfind('\n') {
        Some(i) if torn => &body[..=i],
        None if torn => "",
        _ => body,
    };
    for (n, line) in whole.lines().enumerate() {
        let (k, v) = line
            .split_once(' ')
            .ok_or_else(|| storage(format!("key store line {}: not `key value`", n + 2)))?;
        let k = B64.decode(k).map_err(storage)?;
        let v = B64.decode(v).map_err(storage)?;
        entries.insert(k, v);
    }
    Ok((entries, torn))
}

/// A key store file holding every entry of `newer`, and the entries of `older` that
/// `newer` lacks (keys shredded since): what a backup copy holds while its records are
/// behind the key store it was sent, so that the records it has keep their keys. `None`
/// when `newer` lacks none.
pub fn union(newer: &[u8], older: &[u8]) -> Result<Option<Vec<u8>>, SecretsError> {
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map_err(storage)
            .and_then(|t| parse(t).map(|(entries, _)| entries))
    };
    let (mut entries, newer) = (text(older)?, text(newer)?);
    if entries.keys().all(|k| newer.contains_key(k)) {
        return Ok(None);
    }
    entries.extend(newer);
    let mut out = String::from(HEADER);
    for (k, v) in &entries {
        out.push_str(&line(k, v));
    }
    Ok(Some(out.into_bytes()))
}

fn line(k: &[u8], v: &[u8]) -> String {
    format!("{} {}\n", B64.encode(k), B64.encode(v))
}

fn sync_dir(dir: &Path) -> Result<(), SecretsError> {
    crate::durable::sync_dir(dir).map_err(storage)
}

/// Writes `entries` as the whole new file at `path`: temporary file, `fdatasync`, rename,
/// directory `fsync`. A later entry for the same key wins, as on reading.
fn rewrite<'e>(
    path: &Path,
    entries: impl Iterator<Item = (&'e Vec<u8>, &'e Vec<u8>)>,
) -> Result<(), SecretsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut text = String::from(HEADER);
    for (k, v) in entries {
        text.push_str(&line(k, v));
    }
    crate::secrets::write_private(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, path).map_err(storage)?;
    sync_dir(dir)
}

fn append_handle(path: &Path) -> Result<std::fs::File, SecretsError> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| storage(format!("{}: {e}", path.display())))
}

impl KeyFile {
    /// Opens the data dir's key store, creating it empty if there is none.
    pub fn open(data_dir: &Path) -> Result<KeyFile, SecretsError> {
        let path = path_in(data_dir);
        let entries = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let (entries, torn) = parse(&text)?;
                if torn {
                    rewrite(&path, entries.iter())?;
                }
                entries
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let entries = BTreeMap::new();
                rewrite(&path, entries.iter())?;
                entries
            }
            Err(e) => return Err(storage(format!("{}: {e}", path.display()))),
        };
        Ok(KeyFile {
            state: Mutex::new(State {
                entries,
                pending: BTreeMap::new(),
                damaged: false,
                file: append_handle(&path)?,
                appended: 0,
                synced: 0,
                removed: 0,
                rewritten: 0,
            }),
            path,
            persist: Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes append number `upto` durable: an `fdatasync` of the file, unless another
    /// caller's sync or a rewrite already covered it.
    fn sync_through(&self, upto: u64) -> Result<(), SecretsError> {
        let _one = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        let (file, target) = {
            let s = self.state();
            if s.synced >= upto {
                return Ok(());
            }
            (s.file.try_clone().map_err(storage)?, s.appended)
        };
        if let Err(e) = file.sync_data() {
            // What the device holds of the file is unknown now (Linux may even forget
            // the failure): rewrite it whole before trusting it again.
            self.state().damaged = true;
            return Err(storage(e));
        }
        let mut s = self.state();
        s.synced = s.synced.max(target);
        Ok(())
    }

    /// Replaces a damaged file with one written whole from what is known.
    fn mend(&self, s: &mut State) -> Result<(), SecretsError> {
        if s.damaged {
            self.rewrite_locked(s)?;
        }
        Ok(())
    }

    /// The whole file anew from the entries and the pending ones; every change before it
    /// is then durable. Called with the state lock held, so appends wait meanwhile.
    fn rewrite_locked(&self, s: &mut State) -> Result<(), SecretsError> {
        rewrite(&self.path, s.entries.iter().chain(s.pending.iter()))?;
        s.file = append_handle(&self.path)?;
        s.rewritten = s.removed;
        s.synced = s.appended;
        s.damaged = false;
        Ok(())
    }

    /// Rewrites the file from the entries as they are, unless a rewrite that began after
    /// removal number `upto` already did. A rewrite makes every append before it durable.
    fn rewrite_through(&self, upto: u64) -> Result<(), SecretsError> {
        let _one = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = self.state();
        if s.rewritten >= upto {
            return Ok(());
        }
        self.rewrite_locked(&mut s)
    }
}

impl KeyStorage for KeyFile {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SecretsError> {
        Ok(self.state().entries.get(key).cloned())
    }

    /// An entry is readable only once it is on the device: a key handed out before would
    /// let a record be sealed under it and then lost with the file's tail.
    fn put_all(&self, entries: &[(&[u8], &[u8])]) -> Result<(), SecretsError> {
        let (appended, replaced) = {
            let mut s = self.state();
            self.mend(&mut s)?;
            let mut text = String::new();
            let mut replaced = false;
            for (k, v) in entries {
                replaced |= s.entries.get(*k).is_some_and(|old| old != v);
                text.push_str(&line(k, v));
            }
            if let Err(e) = s.file.write_all(text.as_bytes()) {
                s.damaged = true;
                return Err(storage(e));
            }
            for (k, v) in entries {
                s.pending.insert(k.to_vec(), v.to_vec());
            }
            s.appended += 1;
            if replaced {
                // The old value must not stay readable in the file.
                s.removed += 1;
                (0, Some(s.removed))
            } else {
                (s.appended, None)
            }
        };
        let done = match replaced {
            Some(removal) => self.rewrite_through(removal),
            None => self.sync_through(appended),
        };
        let mut s = self.state();
        for (k, v) in entries {
            // Unless a removal took it meanwhile (it is then gone from the file too).
            if s.pending.get(*k).is_some_and(|p| p == v) {
                s.pending.remove(*k);
                if done.is_ok() {
                    s.entries.insert(k.to_vec(), v.to_vec());
                }
            }
        }
        if done.is_err() {
            s.damaged = true;
        }
        done
    }

    fn remove_all(&self, keys: &[&[u8]]) -> Result<(), SecretsError> {
        let upto = {
            let mut s = self.state();
            let mut removed = false;
            for k in keys {
                removed |= s.entries.remove(*k).is_some();
                removed |= s.pending.remove(*k).is_some();
            }
            if removed {
                s.removed += 1;
            }
            // Nothing new removed still waits for an earlier removal whose rewrite failed:
            // a retried shred must not answer Ok while the key is in the file.
            s.removed
        };
        self.rewrite_through(upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening_and_removed_ones_leave_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyFile::open(dir.path()).unwrap();
        ks.put_all(&[(b"a", b"one"), (b"b", b"two")]).unwrap();
        ks.put_all(&[(b"c", b"three-secret")]).unwrap();
        ks.remove_all(&[b"c"]).unwrap();
        drop(ks);
        let bytes = std::fs::read(path_in(dir.path())).unwrap();
        let needle = B64.encode(b"three-secret");
        assert!(!String::from_utf8_lossy(&bytes).contains(&needle));
        let ks = KeyFile::open(dir.path()).unwrap();
        assert_eq!(ks.get(b"a").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(ks.get(b"c").unwrap(), None);
    }

    /// A removal whose rewrite failed is not forgotten: retried, it rewrites the file.
    #[test]
    fn a_removal_retried_after_a_failed_rewrite_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyFile::open(dir.path()).unwrap();
        ks.put_all(&[(b"c", b"three-secret")]).unwrap();
        // The rewrite's temporary file cannot be made where a directory stands.
        let tmp = path_in(dir.path()).with_extension("tmp");
        std::fs::create_dir(&tmp).unwrap();
        assert!(ks.remove_all(&[b"c"]).is_err());
        std::fs::remove_dir(&tmp).unwrap();
        ks.remove_all(&[b"c"]).unwrap();
        let text = std::fs::read_to_string(path_in(dir.path())).unwrap();
        assert!(!text.contains(&B64.encode(b"three-secret")), "{text}");
    }

    /// A key whose append failed is never handed out, and the file it may have torn is
    /// rewritten whole before the next append.
    #[test]
    fn a_failed_append_hands_out_nothing_and_the_next_one_mends_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyFile::open(dir.path()).unwrap();
        ks.put_all(&[(b"a", b"one")]).unwrap();
        // A handle that cannot write stands for a full or failing device.
        ks.state().file = std::fs::File::open(path_in(dir.path())).unwrap();
        assert!(ks.put_all(&[(b"k", b"lost")]).is_err());
        assert_eq!(ks.get(b"k").unwrap(), None, "a key not on the device");
        // A torn half line, as a short write would leave.
        std::fs::OpenOptions::new()
            .append(true)
            .open(path_in(dir.path()))
            .unwrap()
            .write_all(b"aGFsZg")
            .unwrap();
        ks.put_all(&[(b"b", b"two")]).unwrap();
        assert_eq!(ks.get(b"b").unwrap().as_deref(), Some(&b"two"[..]));
        drop(ks);
        let text = std::fs::read_to_string(path_in(dir.path())).unwrap();
        let (entries, torn) = parse(&text).unwrap();
        assert!(!torn, "{text}");
        let keys: Vec<&[u8]> = entries.keys().map(Vec::as_slice).collect();
        assert_eq!(keys, [&b"a"[..], b"b"]);
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyFile::open(dir.path()).unwrap();
        ks.put_all(&[(b"a", b"one")]).unwrap();
        drop(ks);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path_in(dir.path()))
            .unwrap();
        f.write_all(b"YmFk aGFsZi13cml").unwrap();
        drop(f);
        let ks = KeyFile::open(dir.path()).unwrap();
        assert_eq!(ks.get(b"a").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(ks.get(b"bad").unwrap(), None);
        let text = std::fs::read_to_string(path_in(dir.path())).unwrap();
        assert!(text.ends_with('\n'));
    }
}

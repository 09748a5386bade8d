//! The Merkle tree over the log, kept on the append path: every record's leaf hash in
//! `<data-dir>/tree/leaves` (32 bytes each, in log order), and the hashes of every
//! complete subtree of 64 leaves or more in memory (about one byte per record). Any node
//! below that is made again from at most 64 leaves read from the file, so a root or a
//! proof of any size costs a few reads and at most a few hundred hashes.
//!
//! The log is the truth and the tree is derived from it: the file is written after the
//! group it holds is durable, and synced only before a head is signed ([`LogTree::sync`]),
//! which records how many leaves are durable in `<data-dir>/tree/synced`. At open the file
//! is trusted up to there (a power loss may have torn what came after) and everything
//! after is hashed again from the log's records: at most one signing interval of them.

use super::StoreError;
use idledger_domain::Hash;
use idledger_replay::tree::{leaf_hash, node_hash, ProofError, EMPTY_ROOT};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Subtrees of 2^LOW leaves and more are held in memory; smaller ones are read.
const LOW: u8 = 6;
const CHUNK: u64 = 1 << LOW;

/// Where the tree's files live.
pub fn tree_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tree")
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what}: {e}"))
}

/// The tree. Appended to by the log's writer only; read by anyone.
pub struct LogTree {
    leaves: File,
    /// `tree/synced`: how many leaves are durable in the file.
    synced: Mutex<File>,
    /// Writer-side: the file to append to and the leaves of the chunk not yet complete.
    writer: Mutex<WriterSide>,
    /// `upper[k]`: the complete subtrees of 2^(LOW + k) leaves, left to right.
    upper: RwLock<Vec<Vec<Hash>>>,
    size: AtomicU64,
    /// The leaves file could not be written: the tree stops growing (and is made again
    /// from the log at the next open); the log itself goes on.
    failed: std::sync::atomic::AtomicBool,
    /// Makes the log's own records durable, for a log that does not sync each group
    /// (`durability = "process"`): a head must never name records a power loss can take.
    log_sync: Option<LogSync>,
}

/// What makes the log's written records durable.
pub type LogSync = Box<dyn Fn() -> std::io::Result<()> + Send + Sync>;

struct WriterSide {
    file: File,
    chunk: Vec<Hash>,
}

impl std::fmt::Debug for LogTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogTree({} leaves)", self.size())
    }
}

/// Adds the root of a complete 64-leaf chunk to the upper levels, completing bigger
/// subtrees as it goes.
fn push_upper(upper: &mut Vec<Vec<Hash>>, hash: Hash) {
    let mut hash = hash;
    let mut level = 0;
    loop {
        if upper.len() == level {
            upper.push(Vec::new());
        }
        upper[level].push(hash);
        let n = upper[level].len();
        if n % 2 == 1 {
            return;
        }
        hash = node_hash(&upper[level][n - 2], &upper[level][n - 1]);
        level += 1;
    }
}

/// The root of a complete run of leaves (a power of two of them).
fn subtree_root(leaves: &[Hash]) -> Hash {
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level.first().copied().unwrap_or(EMPTY_ROOT)
}

/// Puts the leaf hashes of a log's records into a new data dir whose log is being
/// restored (`leaves`: 32 bytes each, in order), durably: opening the log then checks the
/// last one against its record instead of hashing every record again.
pub fn install_leaves(data_dir: &Path, leaves: &[u8]) -> Result<(), StoreError> {
    let dir = tree_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| io("the tree's directory", e))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), StoreError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(name))
            .map_err(|e| io("the tree's leaves", e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("the tree's leaves", e))
    };
    write("leaves", leaves)?;
    // The mark last: it counts only leaves already on the device.
    write("synced", &(leaves.len() as u64 / 32).to_be_bytes())
}

impl LogTree {
    /// Opens the tree of a log whose head is `head`, bringing it level with the log:
    /// `record(p)` reads the stored record at position p (to hash what the file lacks).
    pub fn open(
        data_dir: &Path,
        head: u64,
        record: impl FnMut(u64) -> Result<Vec<u8>, StoreError>,
    ) -> Result<LogTree, StoreError> {
        Self::open_trusting(data_dir, head, record, true)
    }

    /// [`LogTree::open`], trusting none of the leaves on file: every one hashed again
    /// from the records.
    pub fn open_afresh(
        data_dir: &Path,
        head: u64,
        record: impl FnMut(u64) -> Result<Vec<u8>, StoreError>,
    ) -> Result<LogTree, StoreError> {
        Self::open_trusting(data_dir, head, record, false)
    }

    fn open_trusting(
        data_dir: &Path,
        head: u64,
        mut record: impl FnMut(u64) -> Result<Vec<u8>, StoreError>,
        trust_file: bool,
    ) -> Result<LogTree, StoreError> {
        let dir = tree_dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| io("the tree's directory", e))?;
        let path = dir.join("leaves");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("the tree's leaves", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("the tree's leaves", e))?
            .len();
        let synced = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .truncate(false)
            .open(dir.join("synced"))
            .map_err(|e| io("the tree's sync mark", e))?;
        // The files' names on the device, before anything is counted as synced in them.
        crate::durable::sync_dir(&dir).map_err(|e| io("the tree's directory", e))?;
        let mut mark = [0u8; 8];
        let durable = match synced.read_exact_at(&mut mark, 0) {
            Ok(()) => u64::from_be_bytes(mark),
            Err(_) => 0,
        };
        let mut have = if trust_file {
            (len / 32).min(head).min(durable)
        } else {
            0
        };
        // The last leaf the file claims must be the hash of the log's record there; if not
        // (a file from another log, or damaged), the tree is made again from the log.
        if have > 0 {
            let mut last = [0u8; 32];
            file.read_exact_at(&mut last, (have - 1) * 32)
                .map_err(|e| io("the tree's leaves", e))?;
            if leaf_hash(&record(have)?) != Hash(last) {
                tracing::warn!(
                    leaves = have,
                    "the tree's leaves do not match the log; hashing it again"
                );
                have = 0;
            }
        }
        file.set_len(have * 32)
            .map_err(|e| io("the tree's leaves", e))?;
        if have < durable {
            // Cut below the mark: leaves written past here before the next sync must not
            // be trusted on the old mark's word after a power loss.
            synced
                .write_all_at(&have.to_be_bytes(), 0)
                .and_then(|()| synced.sync_data())
                .map_err(|e| io("the tree's sync mark", e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| io("the tree's leaves", e))?;
        // What the file lacks (a crash between the log's sync and the file's write, or a
        // log older than the tree): hashed from the records.
        let mut missing = Vec::new();
        for p in have + 1..=head {
            missing.extend_from_slice(&leaf_hash(&record(p)?).0);
            if missing.len() >= 1 << 20 {
                file.write_all(&missing)
                    .map_err(|e| io("the tree's leaves", e))?;
                missing.clear();
            }
        }
        file.write_all(&missing)
            .map_err(|e| io("the tree's leaves", e))?;
        // The upper levels, from the leaves in 64-leaf chunks.
        let mut upper = Vec::new();
        let mut chunk = Vec::with_capacity(CHUNK as usize);
        let mut reader = std::io::BufReader::with_capacity(
            1 << 20,
            File::open(&path).map_err(|e| io("the tree's leaves", e))?,
        );
        let mut buf = [0u8; 32];
        for _ in 0..head {
            reader
                .read_exact(&mut buf)
                .map_err(|e| io("the tree's leaves", e))?;
            chunk.push(Hash(buf));
            if chunk.len() as u64 == CHUNK {
                push_upper(&mut upper, subtree_root(&chunk));
                chunk.clear();
            }
        }
        let leaves = File::open(&path).map_err(|e| io("the tree's leaves", e))?;
        Ok(LogTree {
            leaves,
            synced: Mutex::new(synced),
            writer: Mutex::new(WriterSide { file, chunk }),
            upper: RwLock::new(upper),
            size: AtomicU64::new(head),
            failed: Default::default(),
            log_sync: None,
        })
    }

    /// The tree of a log that acknowledges groups before they are on the device: `sync`
    /// makes the log durable first, so a signed head never names records a power loss
    /// could take (and a log grown again differently would contradict it).
    pub fn syncing_log_first(mut self, log_sync: LogSync) -> LogTree {
        self.log_sync = Some(log_sync);
        self
    }

    /// Makes every leaf written so far durable, and records how many: a head may then be
    /// signed for any size up to the answer, whatever power loss comes next.
    pub fn sync(&self) -> Result<u64, StoreError> {
        let mark = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        // Every leaf counted in `size` was written before it was counted; syncing through
        // the reader's handle keeps the writer (and so the log's acknowledgements) free.
        let size = self.size();
        if let Some(log_sync) = &self.log_sync {
            log_sync().map_err(|e| io("the log", e))?;
        }
        self.leaves
            .sync_data()
            .map_err(|e| io("the tree's leaves", e))?;
        mark.write_all_at(&size.to_be_bytes(), 0)
            .and_then(|()| mark.sync_data())
            .map_err(|e| io("the tree's sync mark", e))?;
        Ok(size)
    }

    /// Leaves in the tree: the log's committed head once the writer has added them.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Adds the leaves of a durable group (the log's writer only, in log order).
    pub fn append(&self, leaves: &[Hash]) {
        if leaves.is_empty() || self.failed.load(Ordering::Acquire) {
            return;
        }
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = leaves.iter().flat_map(|h| h.0).collect();
        if let Err(e) = w.file.write_all(&bytes) {
            tracing::error!(error = %e, "the tree's leaves could not be written; the tree stops here until the next start");
            self.failed.store(true, Ordering::Release);
            return;
        }
        let mut completed = Vec::new();
        for leaf in leaves {
            w.chunk.push(*leaf);
            if w.chunk.len() as u64 == CHUNK {
                completed.push(subtree_root(&w.chunk));
                w.chunk.clear();
            }
        }
        if !completed.is_empty() {
            let mut upper = self.upper.write().unwrap_or_else(|e| e.into_inner());
            for h in completed {
                push_upper(&mut upper, h);
            }
        }
        // Readers see the new size only once every hash below it can be read.
        self.size.fetch_add(leaves.len() as u64, Ordering::AcqRel);
    }

    /// The root of the tree of its first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        let reader = Reader::new(self);
        tlog_tiles::tree_hash(size, &reader)
            .map(|h| Hash(h.0))
            .map_err(|e| reader.error(e))
    }

    /// The audit path of leaf `index` in the tree of `size` leaves, leaf to root.
    pub fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::OutOfRange(format!(
                "position {} is not in a tree of {size}",
                index + 1
            )));
        }
        let reader = Reader::new(self);
        tlog_tiles::prove_record(size, index, &reader)
            .map(|p| p.into_iter().map(|h| Hash(h.0)).collect())
            .map_err(|e| reader.error(e))
    }

    /// The proof that the tree of `from` leaves is a prefix of the tree of `to`.
    pub fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(to)?;
        if from == 0 || from > to {
            return Err(ProofError::OutOfRange(format!(
                "from must be 1 to {to}, not {from}"
            )));
        }
        let reader = Reader::new(self);
        tlog_tiles::prove_tree(to, from, &reader)
            .map(|p| p.into_iter().map(|h| Hash(h.0)).collect())
            .map_err(|e| reader.error(e))
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        let have = self.size();
        if size > have {
            return Err(ProofError::OutOfRange(format!(
                "the tree holds {have} records; {size} is beyond it"
            )));
        }
        Ok(())
    }

    /// Leaves `[from, from + count)` from the file.
    fn read_leaves(&self, from: u64, count: u64) -> std::io::Result<Vec<Hash>> {
        let mut buf = vec![0u8; (count * 32) as usize];
        self.leaves.read_exact_at(&mut buf, from * 32)?;
        Ok(buf
            .chunks_exact(32)
            .map(|c| Hash(c.try_into().unwrap_or([0; 32])))
            .collect())
    }
}

/// Reads stored hashes for `tlog_tiles`: complete subtrees of 64 leaves or more from
/// memory, smaller ones made from the leaves (each 64-leaf chunk read once per request).
struct Reader<'a> {
    tree: &'a LogTree,
    failed: Mutex<Option<std::io::Error>>,
}

impl<'a> Reader<'a> {
    fn new(tree: &'a LogTree) -> Self {
        Reader {
            tree,
            failed: Mutex::new(None),
        }
    }

    /// The error to answer: an IO failure while reading, or what `tlog_tiles` said.
    fn error(&self, e: tlog_tiles::Error) -> ProofError {
        match self.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(io) => ProofError::Unreadable(io.to_string()),
            // Sizes and indexes were checked before asking, so what is left is ours.
            None => ProofError::Unreadable(e.to_string()),
        }
    }
}

impl tlog_tiles::HashReader for Reader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        let upper = self.tree.upper.read().unwrap_or_else(|e| e.into_inner());
        let mut chunks: std::collections::HashMap<u64, Vec<Hash>> = Default::default();
        let mut out = Vec::with_capacity(indexes.len());
        for &index in indexes {
            let (level, n) = tlog_tiles::split_stored_hash_index(index);
            let hash = if level >= LOW {
                upper
                    .get(usize::from(level - LOW))
                    .and_then(|l| l.get(n as usize))
                    .copied()
                    .ok_or(tlog_tiles::Error::BadMath)?
            } else {
                // Within one chunk: read it once, then hash up to the node.
                let first = n << level;
                let chunk_no = first / CHUNK;
                let leaves = match chunks.entry(chunk_no) {
                    std::collections::hash_map::Entry::Occupied(read) => read.into_mut(),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        let start = chunk_no * CHUNK;
                        let count = CHUNK.min(self.tree.size().saturating_sub(start));
                        let read = self.tree.read_leaves(start, count).map_err(|e| {
                            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            tlog_tiles::Error::BadMath
                        })?;
                        slot.insert(read)
                    }
                };
                let at = (first - chunk_no * CHUNK) as usize;
                let span = 1usize << level;
                let part = leaves
                    .get(at..at + span)
                    .ok_or(tlog_tiles::Error::BadMath)?;
                subtree_root(part)
            };
            out.push(tlog_tiles::Hash(hash.0));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_replay::tree::{check_consistency, check_inclusion, Frontier};

    fn record(p: u64) -> Vec<u8> {
        format!("record {p}").into_bytes()
    }

    #[test]
    fn roots_and_proofs_of_every_size_agree_with_a_tree_built_leaf_by_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let tree = LogTree::open(dir.path(), 0, |p| Ok(record(p))).unwrap();
        let mut roots = vec![EMPTY_ROOT];
        let mut f = Frontier::new();
        for p in 1..=300u64 {
            let leaf = leaf_hash(&record(p));
            tree.append(&[leaf]);
            f.push(leaf);
            roots.push(f.root());
        }
        for size in [1u64, 2, 3, 63, 64, 65, 127, 128, 129, 200, 256, 300] {
            assert_eq!(
                tree.root(size).unwrap(),
                roots[size as usize],
                "size {size}"
            );
            for index in [0, size / 3, size - 1] {
                let proof = tree.inclusion(index, size).unwrap();
                let leaf = leaf_hash(&record(index + 1));
                check_inclusion(&proof, size, &roots[size as usize], index, &leaf).unwrap();
            }
            for from in [1, size / 2 + 1, size] {
                let proof = tree.consistency(from, size).unwrap();
                check_consistency(
                    &proof,
                    from,
                    &roots[from as usize],
                    size,
                    &roots[size as usize],
                )
                .unwrap();
            }
        }
        assert!(tree.root(301).is_err());
        assert!(tree.inclusion(300, 300).is_err());
        assert!(tree.consistency(0, 10).is_err());
    }

    #[test]
    fn reopening_cuts_back_to_the_log_and_hashes_what_the_file_lost() {
        let dir = tempfile::tempdir().unwrap();
        let tree = LogTree::open(dir.path(), 0, |p| Ok(record(p))).unwrap();
        let leaves: Vec<Hash> = (1..=130).map(|p| leaf_hash(&record(p))).collect();
        tree.append(&leaves);
        let root_100 = tree.root(100).unwrap();
        let root_130 = tree.root(130).unwrap();
        drop(tree);
        // The log has only 100 records (the file is ahead of it): cut back.
        let tree = LogTree::open(dir.path(), 100, |p| Ok(record(p))).unwrap();
        assert_eq!((tree.size(), tree.root(100).unwrap()), (100, root_100));
        drop(tree);
        // The file lost its tail (a torn last leaf, then nothing): made again.
        let path = tree_dir(dir.path()).join("leaves");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(40 * 32 + 5).unwrap();
        let tree = LogTree::open(dir.path(), 130, |p| Ok(record(p))).unwrap();
        assert_eq!(tree.root(130).unwrap(), root_130);
        drop(tree);
        // A file that is not this log's: made again from the log.
        let tree =
            LogTree::open(dir.path(), 130, |p| Ok(format!("other {p}").into_bytes())).unwrap();
        assert_ne!(tree.root(130).unwrap(), root_130);
    }

    #[test]
    fn leaves_after_the_sync_mark_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let tree = LogTree::open(dir.path(), 0, |p| Ok(record(p))).unwrap();
        let leaves: Vec<Hash> = (1..=200).map(|p| leaf_hash(&record(p))).collect();
        tree.append(&leaves[..150]);
        assert_eq!(tree.sync().unwrap(), 150);
        tree.append(&leaves[150..]);
        let root = tree.root(200).unwrap();
        drop(tree);
        // A power loss tore a page past the mark, yet kept the last leaf: only the sync
        // mark tells, and everything after it is hashed again from the log.
        let path = tree_dir(dir.path()).join("leaves");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 32 * 20], 160 * 32).unwrap();
        let tree = LogTree::open(dir.path(), 200, |p| Ok(record(p))).unwrap();
        assert_eq!(tree.root(200).unwrap(), root);
        let proof = tree.inclusion(170, 200).unwrap();
        check_inclusion(&proof, 200, &root, 170, &leaves[170]).unwrap();
    }

    #[test]
    fn a_cut_below_the_sync_mark_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = LogTree::open(dir.path(), 0, |p| Ok(record(p))).unwrap();
        let leaves: Vec<Hash> = (1..=150).map(|p| leaf_hash(&record(p))).collect();
        tree.append(&leaves);
        assert_eq!(tree.sync().unwrap(), 150);
        drop(tree);
        // The log holds only 100 records now; it grows again differently, unsynced.
        let other = |p: u64| {
            if p <= 100 {
                record(p)
            } else {
                format!("other {p}").into_bytes()
            }
        };
        let tree = LogTree::open(dir.path(), 100, |p| Ok(other(p))).unwrap();
        let regrown: Vec<Hash> = (101..=200).map(|p| leaf_hash(&other(p))).collect();
        tree.append(&regrown);
        drop(tree);
        // A power loss tore a leaf below the old mark but above the cut.
        let path = tree_dir(dir.path()).join("leaves");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 32], 120 * 32).unwrap();
        let tree = LogTree::open(dir.path(), 200, |p| Ok(other(p))).unwrap();
        let mut f = Frontier::new();
        for p in 1..=200 {
            f.push(leaf_hash(&other(p)));
        }
        assert_eq!(tree.root(200).unwrap(), f.root());
    }

    #[test]
    fn a_sync_makes_the_log_durable_first() {
        let dir = tempfile::tempdir().unwrap();
        let calls = std::sync::Arc::new(AtomicU64::new(0));
        let seen = calls.clone();
        let tree = LogTree::open(dir.path(), 0, |p| Ok(record(p)))
            .unwrap()
            .syncing_log_first(Box::new(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                Err(std::io::Error::other("the device is gone"))
            }));
        tree.append(&[leaf_hash(&record(1))]);
        assert!(
            tree.sync().is_err(),
            "no mark without the log on the device"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

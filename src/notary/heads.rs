//! The signed tree heads, kept: `<data-dir>/tree/heads`, one fixed-size record per head
//! (tree size, timestamp, root, signature: 112 bytes), in increasing tree size, each
//! appended and `fdatasync`ed before it is served. Found by size with a binary search;
//! only the latest is held in memory.

use super::NotaryError;
use idledger_domain::Hash;
use idledger_replay::tree::{LogPublicKey, SignedTreeHead, TreeHead};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const RECORD: u64 = 8 + 8 + 32 + 64;

/// The heads file.
pub struct Heads {
    file: File,
    count: u64,
    origin: String,
    key_id: u32,
    latest: Option<SignedTreeHead>,
}

fn io(e: std::io::Error) -> NotaryError {
    NotaryError::Io(format!("the signed tree heads: {e}"))
}

impl Heads {
    /// Opens (or creates) the file of the log whose heads `public` checks.
    pub fn open(data_dir: &Path, public: &LogPublicKey) -> Result<Heads, NotaryError> {
        let (origin, key_id) = (public.name(), public.key_id());
        let path = crate::store::tree::tree_dir(data_dir).join("heads");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        // The file's name on the device too: heads served must outlive a power loss.
        crate::durable::sync_dir(crate::durable::parent_of(&path)).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // A torn last record (a crash mid-write) was never served: drop it.
        if len % RECORD != 0 {
            file.set_len(len - len % RECORD).map_err(io)?;
        }
        let mut heads = Self::of(file, len / RECORD, origin, key_id)?;
        // A lost last write, kept, would be served as a head that does not verify. Heads
        // of another key are audit evidence: the server stops without dropping a head,
        // rather than drop them one by one.
        match heads.last_head(public)? {
            LastHead::Sound => return Ok(heads),
            LastHead::LostWrite => {}
            LastHead::OtherKey => {
                return Err(NotaryError::Head(format!(
                    "the signed tree heads in {} do not verify under the log key {origin}: \
                     was tree/log-key replaced? Restore the key the heads were signed with",
                    path.display()
                )))
            }
        }
        tracing::warn!(
            index = heads.count - 1,
            "dropping a signed tree head that does not verify: a write lost to a crash"
        );
        heads.pass_over_last()?;
        heads.file.set_len(heads.count * RECORD).map_err(io)?;
        heads.file.sync_data().map_err(io)?;
        Ok(heads)
    }

    /// What the last head is. A whole last record can be unwritten: a file system that
    /// kept the file's new size but not its data (zeros, or part of them) through a power
    /// loss. Its push never returned, so it was never served. Only the last can be: each
    /// push is on the device before the next begins. Any other that fails is not a lost
    /// write but a key that is not the heads' own (a replaced `tree/log-key`).
    fn last_head(&self, public: &LogPublicKey) -> Result<LastHead, NotaryError> {
        let Some(last) = &self.latest else {
            return Ok(LastHead::Sound);
        };
        let before = match self.count {
            0 | 1 => None,
            n => Some(self.read(n - 2)?),
        };
        let grew = before
            .as_ref()
            .is_none_or(|b| b.head.tree_size < last.head.tree_size);
        if grew && public.open(&last.to_note()).is_ok() {
            return Ok(LastHead::Sound);
        }
        // Unwritten reads as zeros; anything else that fails, with no good head before it
        // to vouch for the key, is a head of another key.
        let unwritten = last.head.tree_size == 0 && last.head.timestamp_ms == 0;
        let key_vouched = before
            .as_ref()
            .is_some_and(|b| public.open(&b.to_note()).is_ok());
        Ok(if unwritten || key_vouched {
            LastHead::LostWrite
        } else {
            LastHead::OtherKey
        })
    }

    /// Forgets the last head (a lost write), in memory.
    fn pass_over_last(&mut self) -> Result<(), NotaryError> {
        self.count -= 1;
        self.latest = match self.count {
            0 => None,
            n => Some(self.read(n - 1)?),
        };
        Ok(())
    }

    /// Opens the file of a stopped server to read (nothing is changed).
    /// Heads of another key are left for the reader's checks to refuse.
    pub fn read_only(data_dir: &Path, public: &LogPublicKey) -> Result<Heads, NotaryError> {
        let path = crate::store::tree::tree_dir(data_dir).join("heads");
        let file = File::open(&path).map_err(io)?;
        let count = file.metadata().map_err(io)?.len() / RECORD;
        let mut heads = Self::of(file, count, public.name(), public.key_id())?;
        // A last head a power loss left unwritten (see `open`, which drops it at the next
        // start, by the same rule) was never served: passed over here, the file untouched.
        if let LastHead::LostWrite = heads.last_head(public)? {
            heads.pass_over_last()?;
        }
        Ok(heads)
    }

    /// The first `count` heads of `file`, the last of them read.
    fn of(file: File, count: u64, origin: &str, key_id: u32) -> Result<Heads, NotaryError> {
        let mut heads = Heads {
            file,
            count,
            origin: origin.to_owned(),
            key_id,
            latest: None,
        };
        heads.latest = match count {
            0 => None,
            n => Some(heads.read(n - 1)?),
        };
        Ok(heads)
    }

    /// The first head of a tree of `size` records or more.
    pub fn covering(&self, size: u64) -> Result<Option<SignedTreeHead>, NotaryError> {
        let i = self.first_after(size.saturating_sub(1))?;
        (i < self.count).then(|| self.read(i)).transpose()
    }

    fn read(&self, i: u64) -> Result<SignedTreeHead, NotaryError> {
        let mut buf = [0u8; RECORD as usize];
        self.file.read_exact_at(&mut buf, i * RECORD).map_err(io)?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut root = [0u8; 32];
        root.copy_from_slice(&buf[16..48]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&buf[48..112]);
        Ok(SignedTreeHead {
            origin: self.origin.clone(),
            head: TreeHead {
                tree_size: u64_at(0),
                timestamp_ms: u64_at(8),
                root_hash: Hash(root),
            },
            key_id: self.key_id,
            signature,
        })
    }

    /// Keeps `head` (durably) after the others; its tree must be larger than the last's,
    /// its time no earlier.
    pub fn push(&mut self, head: SignedTreeHead) -> Result<(), NotaryError> {
        if let Some(l) = &self.latest {
            if l.head.tree_size >= head.head.tree_size {
                return Err(NotaryError::Head(
                    "heads are kept in increasing size".into(),
                ));
            }
            if l.head.timestamp_ms > head.head.timestamp_ms {
                return Err(NotaryError::Head(
                    "heads are kept in time order: this one is older than the last".into(),
                ));
            }
        }
        let mut buf = Vec::with_capacity(RECORD as usize);
        buf.extend_from_slice(&head.head.tree_size.to_be_bytes());
        buf.extend_from_slice(&head.head.timestamp_ms.to_be_bytes());
        buf.extend_from_slice(&head.head.root_hash.0);
        buf.extend_from_slice(&head.signature);
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Not kept: a part written (a full disk) would put every later head out of
            // step with its index, and one written but not synced may be lost yet.
            let _ = self.file.set_len(self.count * RECORD);
            return Err(io(e));
        }
        self.count += 1;
        self.latest = Some(head);
        Ok(())
    }

    /// The last head kept.
    pub fn latest(&self) -> Option<&SignedTreeHead> {
        self.latest.as_ref()
    }

    /// The index of the first head whose tree is larger than `size`.
    fn first_after(&self, size: u64) -> Result<u64, NotaryError> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.read(mid)?.head.tree_size <= size {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The head kept for exactly `size`, if any.
    pub fn at(&self, size: u64) -> Result<Option<SignedTreeHead>, NotaryError> {
        let i = self.first_after(size.saturating_sub(1))?;
        if i < self.count {
            let head = self.read(i)?;
            if head.head.tree_size == size {
                return Ok(Some(head));
            }
        }
        Ok(None)
    }

    /// Every head, in increasing size, each read as it is reached (the file can hold
    /// years of them).
    pub fn into_all(self) -> impl Iterator<Item = Result<SignedTreeHead, NotaryError>> + Send {
        (0..self.count).map(move |i| self.read(i))
    }

    /// Up to `limit` heads with trees larger than `after`, in increasing size.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<SignedTreeHead>, NotaryError> {
        let first = self.first_after(after)?;
        (first..self.count.min(first.saturating_add(limit as u64)))
            .map(|i| self.read(i))
            .collect()
    }
}

/// See [`Heads::last_head`].
enum LastHead {
    Sound,
    LostWrite,
    OtherKey,
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_replay::tree::LogSigningKey;

    /// A data dir with no heads yet, the key of its log, and its heads open.
    fn fresh() -> (tempfile::TempDir, LogSigningKey, Heads) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(crate::store::tree::tree_dir(dir.path())).unwrap();
        let key = LogSigningKey::from_seed("test.log", &[7; 32]).unwrap();
        let heads = Heads::open(dir.path(), key.public()).unwrap();
        (dir, key, heads)
    }

    fn head(key: &LogSigningKey, size: u64) -> SignedTreeHead {
        key.sign(TreeHead {
            tree_size: size,
            timestamp_ms: 1_700_000_000_000 + size,
            root_hash: Hash([size as u8; 32]),
        })
        .unwrap()
    }

    /// A power loss can leave the last record's length without its bytes (zeros), or a
    /// record that repeats a smaller tree: both are dropped on open, the rest is kept, and
    /// the next head follows the last good one.
    #[test]
    fn a_last_head_that_does_not_verify_is_dropped_on_open() {
        let (dir, key, mut heads) = fresh();
        heads.push(head(&key, 3)).unwrap();
        heads.push(head(&key, 9)).unwrap();
        drop(heads);
        let path = crate::store::tree::tree_dir(dir.path()).join("heads");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&[0u8; RECORD as usize]).unwrap();
        drop(file);

        // Read by a tool while the server is stopped: the unwritten head is passed over,
        // not reported as a head that does not verify, and the file is not changed.
        let public = key.public();
        let read = Heads::read_only(dir.path(), public).unwrap();
        let listed: Vec<u64> = read
            .after(0, usize::MAX)
            .unwrap()
            .iter()
            .map(|h| h.head.tree_size)
            .collect();
        assert_eq!(listed, [3, 9]);
        assert_eq!(read.latest().unwrap().head.tree_size, 9);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * RECORD);
        drop(read);

        let mut heads = Heads::open(dir.path(), key.public()).unwrap();
        assert_eq!(heads.latest().unwrap().head.tree_size, 9);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * RECORD);
        heads.push(head(&key, 12)).unwrap();
        let listed: Vec<u64> = heads
            .after(0, 10)
            .unwrap()
            .iter()
            .map(|h| h.head.tree_size)
            .collect();
        assert_eq!(listed, [3, 9, 12]);
        for h in heads.after(0, 10).unwrap() {
            key.public().open(&h.to_note()).unwrap();
        }
    }

    /// A power loss can zero part of the last record only (it may straddle a block): the
    /// server on start and a tool reading the stopped server's heads pass it over alike.
    #[test]
    fn a_partly_lost_last_head_is_passed_over_by_readers_as_by_the_server() {
        let (dir, key, mut heads) = fresh();
        for size in [3, 9, 12] {
            heads.push(head(&key, size)).unwrap();
        }
        drop(heads);
        let path = crate::store::tree::tree_dir(dir.path()).join("heads");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = 2 * RECORD as usize;
        bytes[last + 48..last + RECORD as usize].fill(0);
        std::fs::write(&path, &bytes).unwrap();

        let read = Heads::read_only(dir.path(), key.public()).unwrap();
        assert_eq!(read.latest().unwrap().head.tree_size, 9);
        assert_eq!(read.after(0, 10).unwrap().len(), 2);
        drop(read);
        let heads = Heads::open(dir.path(), key.public()).unwrap();
        assert_eq!(heads.latest().unwrap().head.tree_size, 9);
    }

    /// Heads are kept in time order as in size: a clock stepped back is no excuse.
    #[test]
    fn a_head_older_than_the_last_is_refused() {
        let (_dir, key, mut heads) = fresh();
        heads.push(head(&key, 3)).unwrap();
        let earlier = key
            .sign(TreeHead {
                tree_size: 9,
                timestamp_ms: 1_000,
                root_hash: Hash([9; 32]),
            })
            .unwrap();
        assert!(heads.push(earlier).is_err());
        assert_eq!(heads.latest().unwrap().head.tree_size, 3);
        heads.push(head(&key, 9)).unwrap();
        assert_eq!(heads.after(0, 10).unwrap().len(), 2);
    }

    /// Heads that do not verify under the key at hand, beyond a lost last write, mean the
    /// key is not theirs: open refuses, and the file keeps every head.
    #[test]
    fn heads_signed_by_another_key_are_refused_not_dropped() {
        let (dir, key, mut heads) = fresh();
        for size in [3, 9, 12] {
            heads.push(head(&key, size)).unwrap();
        }
        drop(heads);
        let path = crate::store::tree::tree_dir(dir.path()).join("heads");
        let other = LogSigningKey::from_seed("test.log", &[8; 32]).unwrap();
        let err = Heads::open(dir.path(), other.public()).err().unwrap();
        assert!(err.to_string().contains("log-key"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * RECORD);
        let heads = Heads::open(dir.path(), key.public()).unwrap();
        assert_eq!(heads.latest().unwrap().head.tree_size, 12);

        // One head only: nothing before it vouches for a key, and it is no unwritten tail.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(crate::store::tree::tree_dir(dir.path())).unwrap();
        let mut heads = Heads::open(dir.path(), key.public()).unwrap();
        heads.push(head(&key, 3)).unwrap();
        drop(heads);
        assert!(Heads::open(dir.path(), other.public()).is_err());
        let path = crate::store::tree::tree_dir(dir.path()).join("heads");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD);
    }
}

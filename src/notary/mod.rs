//! The notary: signs tree heads of the log's Merkle tree with the log's Ed25519 key and
//! keeps them. A head is signed when the tree has grown, at most every `interval` (a
//! background tick, and on demand when one is asked for), and kept durably before it is
//! served. **Only sizes the log holds durably are signed**: the tree grows only after a
//! group's `fdatasync` (or, with `durability = "process"`, the log is synced before a head
//! is signed), and a log found shorter than a head it signed is not served.

mod heads;
pub mod key;

use crate::secrets::{Keyring, SecretsError};
use crate::store::tree::LogTree;
use heads::Heads;
use idledger_replay::tree::{LogPublicKey, LogSigningKey, ProofError, SignedTreeHead, TreeHead};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the notary could not answer.
#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    /// Its files.
    #[error("{0}")]
    Io(String),
    /// Unsealing its key.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// A key or head that does not hold together.
    #[error("{0}")]
    Head(String),
    /// A size the tree does not have.
    #[error(transparent)]
    Tree(#[from] ProofError),
}

/// Keeps `head` (signed by `public`'s key) as the first head of a data dir that has none
/// yet: a restore hands the restored log the head its backup carried.
pub fn keep_first_head(
    data_dir: &Path,
    public: &LogPublicKey,
    head: SignedTreeHead,
) -> Result<(), NotaryError> {
    Heads::open(data_dir, public)?.push(head)
}

/// Signs and keeps tree heads; cheap to clone.
#[derive(Clone)]
pub struct Notary {
    inner: Arc<Inner>,
}

struct Inner {
    tree: Arc<LogTree>,
    key: LogSigningKey,
    heads: Mutex<Heads>,
    interval: Duration,
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

impl Notary {
    /// Loads (or makes) the data dir's log key and its kept heads, signs the tree as it is
    /// if it grew since the last head, and signs again every `interval` while it grows.
    pub fn start(
        data_dir: &Path,
        tree: Arc<LogTree>,
        keyring: &Keyring,
        interval: Duration,
    ) -> Result<Notary, NotaryError> {
        let key = key::load_or_create(data_dir, keyring)?;
        let heads = Heads::open(data_dir, key.public())?;
        if let Some(last) = heads.latest() {
            if last.head.tree_size > tree.size() {
                // Grown again, the log would be signed with another history under the same
                // key: an equivocation no auditor could tell from a forgery. Stop here.
                return Err(NotaryError::Head(format!(
                    "a head was signed for {} records and the log holds {}: it lost records it had signed; restore it from a backup (or a standby) that holds them",
                    last.head.tree_size,
                    tree.size()
                )));
            }
            // As long or longer, but another history (a log copied in from elsewhere, an
            // older copy grown back): signing on would contradict a head given out.
            let root = tree.root(last.head.tree_size)?;
            if root != last.head.root_hash {
                return Err(NotaryError::Head(format!(
                    "the log holds another history than the one its head of {} records was signed for: restore the data dir's own log (from a backup or a standby) rather than sign over it",
                    last.head.tree_size
                )));
            }
        }
        let notary = Notary {
            inner: Arc::new(Inner {
                tree,
                key,
                heads: Mutex::new(heads),
                interval,
            }),
        };
        notary.sign_if_grown(true)?;
        let weak = Arc::downgrade(&notary.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let notary = Notary { inner };
                // Not `now`: a head signed on request a moment ago makes this tick wait for
                // the next, so heads come at most every `interval`.
                if let Err(e) = tokio::task::spawn_blocking(move || notary.sign_if_grown(false))
                    .await
                    .unwrap_or_else(|e| Err(NotaryError::Io(e.to_string())))
                {
                    tracing::error!(error = %e, "signing a tree head failed");
                }
            }
        });
        Ok(notary)
    }

    /// The public key the heads verify with.
    pub fn public_key(&self) -> &LogPublicKey {
        self.inner.key.public()
    }

    /// The tree the heads are of.
    pub fn tree(&self) -> &Arc<LogTree> {
        &self.inner.tree
    }

    /// Signs and keeps a head of the tree as it is now, if it grew since the last head and
    /// (unless `now`) the last is at least `interval` old. Answers the latest head.
    fn sign_if_grown(&self, now: bool) -> Result<Option<SignedTreeHead>, NotaryError> {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|e| e.into_inner());
        let size = self.inner.tree.size();
        let due = match heads.latest() {
            None => size > 0,
            Some(last) => {
                // A tenth of slack: the tick fires `interval` after the one that signed
                // the last head, a hair sooner by the wall clock at times, and must not
                // skip a turn for it.
                let interval = self.inner.interval.as_millis() as u64;
                let old =
                    now_ms().saturating_sub(last.head.timestamp_ms) + interval / 10 >= interval;
                size > last.head.tree_size && (now || old)
            }
        };
        if due {
            // Never earlier than the last head, though the clock stepped back: heads are
            // in time order as in size.
            let after = heads.latest().map_or(0, |l| l.head.timestamp_ms);
            let head = self.sign_at(size, now_ms().max(after))?;
            heads.push(head)?;
        }
        Ok(heads.latest().cloned())
    }

    /// The latest head: the one kept, or a new one if the tree grew and the last is at
    /// least `interval` old.
    pub fn latest(&self) -> Result<Option<SignedTreeHead>, NotaryError> {
        self.sign_if_grown(false)
    }

    /// Signs and keeps a head now if the tree grew since the last (at shutdown).
    pub fn sign_now(&self) -> Result<Option<SignedTreeHead>, NotaryError> {
        self.sign_if_grown(true)
    }

    /// The head kept for exactly `size`.
    pub fn at(&self, size: u64) -> Result<Option<SignedTreeHead>, NotaryError> {
        self.inner
            .heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .at(size)
    }

    /// Up to `limit` kept heads with trees larger than `after`.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<SignedTreeHead>, NotaryError> {
        self.inner
            .heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .after(after, limit)
    }

    /// The head a backup holding the log's first `held` records carries (`exact`: a
    /// whole backup, or an increment that asks for a head over exactly what it holds).
    ///
    /// **Every head given out over more records than the latest kept one is kept**: a
    /// log that loses records past it (a lost machine) is then refused at start rather
    /// than signed again with another history, and auditors find it among the heads. So:
    /// the head kept for exactly `held`; else, past the latest kept head, one signed and
    /// kept now, for a whole backup always, for an increment only once the latest is
    /// `interval` old (however often followers ask, heads and their syncs come at that
    /// pace), else the latest, covering fewer records than the increment holds (the
    /// follower proves the rest with a later one). Below the latest kept head (a backup
    /// cut short), one over exactly `held` signed now and not kept: the latest covers it,
    /// and the check at start guards every record under that.
    ///
    /// A head that cannot be signed or kept (a disk that takes no writes) does not stop
    /// the backup: it carries the latest kept head, its tail left unproven, and the
    /// failure is logged.
    pub fn for_backup(&self, held: u64, exact: bool) -> Option<SignedTreeHead> {
        match self.head_for_backup(held, exact) {
            Ok(head) => head,
            Err(e) => {
                tracing::error!(error = %e, "no new tree head for a backup: it carries the latest kept one");
                self.inner
                    .heads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .latest()
                    .filter(|h| h.head.tree_size <= held)
                    .cloned()
            }
        }
    }

    fn head_for_backup(
        &self,
        held: u64,
        exact: bool,
    ) -> Result<Option<SignedTreeHead>, NotaryError> {
        if held == 0 {
            return Ok(None);
        }
        let mut heads = self.inner.heads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(head) = heads.at(held)? {
            return Ok(Some(head));
        }
        let latest = heads.latest().cloned();
        let (latest_size, signed_at) = latest
            .as_ref()
            .map_or((0, 0), |l| (l.head.tree_size, l.head.timestamp_ms));
        let now = now_ms().max(signed_at);
        if held < latest_size {
            return self.sign_at(held, now).map(Some);
        }
        // The tree takes a record in just after the log acknowledges it.
        let size = held.min(self.inner.tree.size());
        let old = latest.is_none()
            || now.saturating_sub(signed_at) >= self.inner.interval.as_millis() as u64;
        if size > latest_size && (exact || old) {
            let head = self.sign_at(size, now)?;
            heads.push(head.clone())?;
            return Ok(Some(head));
        }
        Ok(latest)
    }

    /// For an export's manifest: the first kept head that covers `size` records (signing
    /// and keeping one now when none does yet), and the consistency proof from the tree
    /// of `size` to it (empty when it is of that size). An auditor finds the head among
    /// the server's heads, in time order with them. None when `size` is 0 or the tree has
    /// not reached it within two seconds (it stopped growing, or trails far behind).
    pub fn covering(
        &self,
        size: u64,
    ) -> Result<Option<(SignedTreeHead, Vec<idledger_domain::Hash>)>, NotaryError> {
        if size == 0 {
            return Ok(None);
        }
        let kept = {
            let heads = self.inner.heads.lock().unwrap_or_else(|e| e.into_inner());
            heads.covering(size)?
        };
        // The tree takes a record in just after the log acknowledges it: an export read
        // to the log's head may be a commit ahead of it for a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while kept.is_none()
            && self.inner.tree.size() < size
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let head = match kept {
            Some(h) => h,
            None => match self.sign_now()? {
                Some(h) if h.head.tree_size >= size => h,
                _ => return Ok(None),
            },
        };
        let proof = if head.head.tree_size == size {
            Vec::new()
        } else {
            self.inner.tree.consistency(size, head.head.tree_size)?
        };
        Ok(Some((head, proof)))
    }

    fn sign_at(&self, size: u64, timestamp_ms: u64) -> Result<SignedTreeHead, NotaryError> {
        // The leaves under a signed root must survive a power loss: a tree made again
        // differently would contradict the head.
        self.inner
            .tree
            .sync()
            .map_err(|e| NotaryError::Io(e.to_string()))?;
        let head = TreeHead {
            tree_size: size,
            root_hash: self.inner.tree.root(size)?,
            timestamp_ms,
        };
        self.inner
            .key
            .sign(head)
            .map_err(|e| NotaryError::Head(e.to_string()))
    }
}

/// For a stopped server's data dir: the first kept head covering `size` records, and the
/// consistency proof from the tree of `size` to it (empty when it is of that size). None
/// when no head covers it yet (or the log has no key). `record(p)` reads stored records.
pub fn covering_head(
    data_dir: &Path,
    size: u64,
    log_head: u64,
    record: impl FnMut(u64) -> Result<Vec<u8>, crate::store::StoreError>,
) -> Result<Option<(SignedTreeHead, Vec<idledger_domain::Hash>)>, NotaryError> {
    let Ok(public) = key::public_key(data_dir) else {
        return Ok(None);
    };
    let heads = match Heads::read_only(data_dir, &public) {
        Ok(h) => h,
        Err(_) => return Ok(None),
    };
    let Some(head) = heads.covering(size)? else {
        return Ok(None);
    };
    if size == 0 || head.head.tree_size > log_head {
        return Ok(None);
    }
    let tree =
        LogTree::open(data_dir, log_head, record).map_err(|e| NotaryError::Io(e.to_string()))?;
    let proof = if head.head.tree_size == size {
        Vec::new()
    } else {
        tree.consistency(size, head.head.tree_size)?
    };
    Ok(Some((head, proof)))
}

/// The size and root of the latest head a stopped server's data dir kept, its signature
/// checked (none when the log was never served): what its tree must give when opened.
pub fn latest_kept_root(data_dir: &Path) -> Option<(u64, idledger_domain::Hash)> {
    latest_kept(data_dir).map(|h| (h.head.tree_size, h.head.root_hash))
}

/// The latest head a stopped server's data dir kept (for a backup's manifest), when its
/// signature checks with the data dir's public key.
pub fn latest_kept(data_dir: &Path) -> Option<SignedTreeHead> {
    let public = key::public_key(data_dir).ok()?;
    let heads = Heads::read_only(data_dir, &public).ok()?;
    // Heads are kept in increasing size: the last is the latest.
    let note = heads.latest()?.to_note();
    public.open(&note).ok()
}

/// Every head a stopped server's data dir kept, in increasing size, each read and its
/// signature checked with the data dir's public key as it is reached (none when the log
/// was never served, so has no key yet). A head that fails is handed on as why.
pub fn kept_heads(
    data_dir: &Path,
) -> Result<Box<dyn Iterator<Item = idledger_replay::verify::HeadRead> + Send>, NotaryError> {
    let Ok(public) = key::public_key(data_dir) else {
        return Ok(Box::new(std::iter::empty()));
    };
    let heads = match Heads::read_only(data_dir, &public) {
        Ok(h) => h,
        Err(_)
            if !crate::store::tree::tree_dir(data_dir)
                .join("heads")
                .exists() =>
        {
            return Ok(Box::new(std::iter::empty()))
        }
        Err(e) => return Err(e),
    };
    Ok(Box::new(heads.into_all().map(move |h| {
        let h = h.map_err(|e| format!("the kept heads could not be read: {e}"))?;
        public
            .open(&h.to_note())
            .map(|h| h.head)
            .map_err(|e| format!("the head of size {}: {e}", h.head.tree_size))
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::keystore::KeyFile;
    use crate::secrets::MasterKey;
    use idledger_replay::tree::leaf_hash;

    fn keyring(dir: &Path) -> Keyring {
        let (master, _) = MasterKey::load(dir, None, true).unwrap();
        Keyring::open(master, Arc::new(KeyFile::open(dir).unwrap())).unwrap()
    }

    fn leaves(from: u64, to: u64, tag: &str) -> Vec<idledger_domain::Hash> {
        (from..=to)
            .map(|p| leaf_hash(format!("{tag} {p}").as_bytes()))
            .collect()
    }

    /// A data dir whose log of 100 records (`record {p}`) has a signed head, and its keys.
    fn signed_at_100() -> (tempfile::TempDir, Keyring) {
        let dir = tempfile::tempdir().unwrap();
        let record = |p: u64| Ok(format!("record {p}").into_bytes());
        let tree = Arc::new(LogTree::open(dir.path(), 0, record).unwrap());
        tree.append(&leaves(1, 100, "record"));
        let keys = keyring(dir.path());
        let notary = Notary::start(dir.path(), tree, &keys, Duration::from_secs(60)).unwrap();
        assert_eq!(notary.sign_now().unwrap().unwrap().head.tree_size, 100);
        (dir, keys)
    }

    /// Heads given to backups: past the latest kept one, kept (so a log that later loses
    /// those records is refused, not signed again), and for increments at most once an
    /// interval, however often followers ask; a backup cut short below the latest gets
    /// one over exactly what it holds.
    #[tokio::test]
    async fn heads_given_to_backups_are_kept_and_paced() {
        let (dir, keys) = signed_at_100();
        let record = |p: u64| Ok(format!("record {p}").into_bytes());
        let tree = Arc::new(LogTree::open(dir.path(), 100, record).unwrap());
        let notary =
            Notary::start(dir.path(), tree.clone(), &keys, Duration::from_secs(60)).unwrap();
        tree.append(&leaves(101, 110, "record"));
        for _ in 0..3 {
            let increment = notary.for_backup(110, false).unwrap();
            assert_eq!(
                increment.head.tree_size, 100,
                "a new head within the interval"
            );
        }
        // No tick signed meanwhile either: the last head is younger than the interval.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(notary.after(100, 10).unwrap().is_empty());
        let whole = notary.for_backup(110, true).unwrap();
        assert_eq!(whole.head.tree_size, 110);
        let kept = notary.at(110).unwrap().expect("kept");
        assert_eq!(kept.to_note(), whole.to_note());
        assert_eq!(
            notary.for_backup(110, false).unwrap().to_note(),
            whole.to_note()
        );
        let short = notary.for_backup(105, true).unwrap();
        assert_eq!(short.head.tree_size, 105);
        assert!(notary.at(105).unwrap().is_none());
        drop(notary);
        // The log back at 105 records: the head a backup carried is not contradicted.
        let shorter = Arc::new(LogTree::open(dir.path(), 105, record).unwrap());
        let refused = Notary::start(dir.path(), shorter, &keys, Duration::from_secs(60));
        assert!(
            matches!(&refused, Err(NotaryError::Head(m)) if m.contains("lost records")),
            "{:?}",
            refused.err()
        );
    }

    /// A log that comes back shorter than a head it signed would, grown again, be signed
    /// with another history under the same key: the notary refuses to start instead.
    #[tokio::test]
    async fn a_log_shorter_than_a_signed_head_is_not_signed_again() {
        let (dir, keys) = signed_at_100();
        let record = |p: u64| Ok(format!("record {p}").into_bytes());
        let shorter = Arc::new(LogTree::open(dir.path(), 50, record).unwrap());
        let refused = Notary::start(dir.path(), shorter, &keys, Duration::from_secs(60));
        assert!(
            matches!(&refused, Err(NotaryError::Head(m)) if m.contains("lost records")),
            "{:?}",
            refused.err()
        );
    }

    /// A log replaced by another history as long as the signed one, or longer (a copy
    /// from elsewhere, an older copy grown back): signing on would contradict a head
    /// already given out under the same key, so the notary refuses to start.
    #[tokio::test]
    async fn a_log_with_another_history_than_its_heads_is_not_signed() {
        let (dir, keys) = signed_at_100();
        let record = |p: u64| Ok(format!("record {p}").into_bytes());
        for size in [100, 120] {
            let other = |p: u64| Ok(format!("other {p}").into_bytes());
            let tree = Arc::new(LogTree::open(dir.path(), size, other).unwrap());
            let refused = Notary::start(dir.path(), tree, &keys, Duration::from_secs(60));
            assert!(
                matches!(&refused, Err(NotaryError::Head(m)) if m.contains("another history")),
                "{size}: {:?}",
                refused.err()
            );
        }
        // The history the heads were signed for, grown, is signed on.
        let tree = Arc::new(LogTree::open(dir.path(), 120, record).unwrap());
        let notary = Notary::start(dir.path(), tree, &keys, Duration::from_secs(60)).unwrap();
        assert_eq!(notary.sign_now().unwrap().unwrap().head.tree_size, 120);
    }
}

//! The event log on sled 0.34: one writer task, group commit, hash chain.
//!
//! On disk there is one sled tree of record: `log`, position (u64 BE) → a page of the
//! records from that position on ([`super::page`]; format 1 stores: → one record), plus
//! `meta` (`format`). The derived state — each stream's positions (hence its version) and
//! the event-id map used for idempotency — lives in memory and is rebuilt from the log on
//! open with a header-only scan that also checks it (versions contiguous per stream,
//! positions contiguous, ids unique). See docs/DESIGN.md (Decisions) for why: on this hardware every
//! extra sled tree written per group commit cost about 9 µs per entry, which took appends
//! from 0.74× to 0.23× of raw sled.
//!
//! The writer takes every request waiting, checks versions and ids, writes the records'
//! pages in one `apply_batch` (atomic), calls `flush_async` once for all of them, and only then
//! updates the readable indexes, answers callers and publishes the envelopes.

use super::page::{Layout, Page, PageWriter};
use super::tree::LogTree;
use super::{
    AppendError, AppendRequest, Appended, Durability, EventLog, ExpectedVersion, LogFuture,
    LogHead, StoreError, WriterStats,
};
use chrono::{DateTime, Utc};
use idledger_domain::envelope::{decode_record, encode_record, RawRecord, RecordFields};
use idledger_domain::{Envelope, Hash, StreamId};
use idledger_replay::tree::{leaf_hash, Frontier};
use rustc_hash::{FxHashMap, FxHashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

/// The storage format of a new store, written in `meta`: pages ([`super::page`]). Stores
/// of format 1 keep their layout.
const STORE_FORMAT: u64 = 2;
/// Most events one request may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;
/// Largest encoded record.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// The writer stops gathering requests for a batch past this many events.
const MAX_BATCH_EVENTS: usize = 4096;
/// Most cooperative yields while gathering one batch.
const GATHER_YIELDS: u32 = 4;
/// Live batches buffered per subscriber before it lags (and re-reads history).
const LIVE_CAPACITY: usize = 1024;

fn io(e: sled::Error) -> StoreError {
    match e {
        // Files that could be read but are not a store sled can use: damage, not a
        // failure to reach them (a lock held, a missing permission).
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => {
            StoreError::Damaged(e.to_string())
        }
        e => StoreError::Io(e.to_string()),
    }
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn read_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The directory of the log's sled database inside a data dir.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// Where a restore stages a data dir's files inside it. It is removed only once every
/// file is in place, so while it exists the data dir is incomplete.
pub fn restore_staging_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(".restoring")
}

struct Shared {
    db: sled::Db,
    /// With [`Durability::Device`]: what makes a flushed group durable on the device.
    device: Option<Arc<DeviceSync>>,
    /// What puts the log on the device when asked, in either durability.
    settle: Arc<DeviceSync>,
    log: sled::Tree,
    layout: Layout,
    committed: AtomicU64,
    head_hash: Mutex<Hash>,
    /// Positions of each stream's events; the version of position `v[i]` is `i + 1`.
    streams: RwLock<FxHashMap<StreamId, Vec<u64>>>,
    live: broadcast::Sender<Arc<[Envelope]>>,
    closed: AtomicBool,
    stats: WriterStats,
    /// The Merkle tree over the records (none only when a benchmark turns it off).
    tree: Option<Arc<LogTree>>,
    /// Commit times never go back in the log: the writer stamps each group no earlier
    /// than the one before, so only a log written by an earlier build can break it.
    times_ordered: bool,
}

/// A caller's answer channel with the answer it will get once the group is durable.
type Reply = (
    oneshot::Sender<Result<Appended, AppendError>>,
    Result<Appended, AppendError>,
);

struct Job {
    req: AppendRequest,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// A wrapped data key as an earlier build kept it in sled: its key and value.
pub type LegacyKey = (Vec<u8>, Vec<u8>);

/// The sled event log. Share it behind an `Arc`.
pub struct SledEventLog {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Job>,
    snapshots: super::Snapshots,
    turns: super::StreamTurns,
}

/// Derived state rebuilt from the log on open.
struct Rebuilt {
    head: LogHead,
    last_time_us: i64,
    /// No record is stamped earlier than the one before it.
    times_ordered: bool,
    streams: FxHashMap<StreamId, Vec<u64>>,
    ids: FxHashMap<Uuid, (u64, u64)>,
}

fn corrupt(position: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        position,
        reason: reason.into(),
    }
}

/// Scans every record's header; checks positions, versions and ids as it goes. The last
/// record is checked in full (hash and payload) since the chain continues from it.
fn rebuild(log: &sled::Tree, layout: Layout) -> Result<Rebuilt, StoreError> {
    let mut r = Rebuilt {
        head: LogHead::default(),
        last_time_us: 0,
        times_ordered: true,
        streams: FxHashMap::default(),
        ids: FxHashMap::default(),
    };
    let mut last_bytes = None;
    for kv in raw_iter(log, layout, 1, u64::MAX) {
        let (key, v) = kv?;
        let want = r.head.position + 1;
        if key != want {
            return Err(corrupt(
                want,
                format!("gap in the log: found position {key}"),
            ));
        }
        let raw = RawRecord::parse(&v).map_err(|e| corrupt(key, e.to_string()))?;
        let h = raw
            .decode_header()
            .map_err(|e| corrupt(key, e.to_string()))?;
        if h.position != key {
            return Err(corrupt(key, format!("record says position {}", h.position)));
        }
        let tag = stream_tag(&h.stream);
        let positions = r.streams.entry(h.stream).or_default();
        if h.version != positions.len() as u64 + 1 {
            return Err(corrupt(key, "stream versions are not contiguous"));
        }
        positions.push(key);
        if r.ids.insert(h.event_id, (key, tag)).is_some() {
            return Err(corrupt(key, format!("duplicate event id {}", h.event_id)));
        }
        r.head = LogHead {
            position: key,
            hash: raw.hash,
        };
        r.times_ordered &= h.recorded_at_us >= r.last_time_us;
        r.last_time_us = h.recorded_at_us;
        last_bytes = Some(v);
    }
    if let Some(bytes) = last_bytes {
        let raw = RawRecord::parse(&bytes).map_err(|e| corrupt(r.head.position, e.to_string()))?;
        raw.decode()
            .map_err(|e| corrupt(r.head.position, e.to_string()))?;
        if raw.computed_hash() != raw.hash {
            return Err(corrupt(
                r.head.position,
                "the last record fails its hash check; run `idledger verify`",
            ));
        }
    }
    Ok(r)
}

/// Makes what sled flushed durable on the device. sled 0.34 ends a flush with
/// `sync_file_range`, which neither flushes the device's write cache nor persists the
/// size of a growing file, and writes blob files (values or nodes too large to inline)
/// with no sync at all. All segments live in one file (`db`), so one `fdatasync` of it per
/// group covers every page of the group (Linux syncs per inode); a blob file is synced
/// once, when first seen, and then its directory.
pub struct DeviceSync {
    db: std::fs::File,
    blobs: PathBuf,
    synced_blobs: Mutex<FxHashSet<std::ffi::OsString>>,
}

impl DeviceSync {
    /// Opens the files of the sled database at `store`; syncs the directories whose
    /// entries sled just made (the store, its parent, `blobs`) and the `conf` file.
    pub fn open(store: &Path) -> std::io::Result<DeviceSync> {
        let db = std::fs::File::open(store.join("db"))?;
        if let Ok(conf) = std::fs::File::open(store.join("conf")) {
            conf.sync_all()?;
        }
        let blobs = store.join("blobs");
        for dir in [Some(store), store.parent(), Some(blobs.as_path())]
            .into_iter()
            .flatten()
        {
            if dir.as_os_str().is_empty() {
                continue;
            }
            if let Ok(d) = std::fs::File::open(dir) {
                d.sync_all()?;
            }
        }
        // Whatever an earlier process left unsynced (fsync here; groups use fdatasync).
        db.sync_all()?;
        let mut synced_blobs = FxHashSet::default();
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            for entry in entries {
                let entry = entry?;
                std::fs::File::open(entry.path())?.sync_all()?;
                synced_blobs.insert(entry.file_name());
            }
        }
        Ok(DeviceSync {
            db,
            blobs,
            synced_blobs: Mutex::new(synced_blobs),
        })
    }

    /// `fdatasync` of the log's file, of blob files not synced yet, and of the blob
    /// directory when it gained entries.
    pub fn sync(&self) -> std::io::Result<()> {
        self.db.sync_data()?;
        let Ok(entries) = std::fs::read_dir(&self.blobs) else {
            return Ok(());
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = FxHashSet::default();
        let mut new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                std::fs::File::open(entry.path())?.sync_data()?;
                new = true;
            }
            present.insert(name);
        }
        if new {
            std::fs::File::open(&self.blobs)?.sync_all()?;
        }
        // Blobs sled collected are gone; forget them.
        *synced = present;
        Ok(())
    }
}

impl SledEventLog {
    /// Opens (or creates) the log in `data_dir` with [`Durability::Device`].
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, StoreError> {
        Self::open_with(data_dir, Durability::Device)
    }

    /// Opens (or creates) the log in `data_dir` with its Merkle tree; appends are
    /// acknowledged at the given durability.
    pub fn open_with(data_dir: &Path, durability: Durability) -> Result<Arc<Self>, StoreError> {
        Self::open_with_tree(data_dir, durability, true)
    }

    /// Opens (or creates) the log in `data_dir`, rebuilds and checks the derived state, and
    /// starts the writer task on the current tokio runtime. Appends are acknowledged at
    /// the given durability. Without `tree` no Merkle tree is kept (for `bench append`,
    /// to measure what it costs).
    pub fn open_with_tree(
        data_dir: &Path,
        durability: Durability,
        tree: bool,
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_inner(data_dir, durability, tree, None)
    }

    /// [`SledEventLog::open_with`], its tree checked against `kept`, the size and root of
    /// the last head signed over it: tree files that give another root (damaged: they are
    /// derived, the log is the truth) are made again from the records.
    pub fn open_expecting_root(
        data_dir: &Path,
        durability: Durability,
        kept: Option<(u64, Hash)>,
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_inner(data_dir, durability, true, kept)
    }

    fn open_inner(
        data_dir: &Path,
        durability: Durability,
        tree: bool,
        kept: Option<(u64, Hash)>,
    ) -> Result<Arc<Self>, StoreError> {
        refuse_interrupted_restore(data_dir)?;
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Io(e.to_string()))?;
        let db = sled::Config::new()
            .path(store_dir(data_dir))
            .cache_capacity(128 << 20)
            .open()
            .map_err(io)?;
        let settle = Arc::new(
            DeviceSync::open(&store_dir(data_dir))
                .map_err(|e| StoreError::Io(format!("syncing the store: {e}")))?,
        );
        let device = match durability {
            Durability::Process => None,
            Durability::Device => Some(settle.clone()),
        };
        let log = db.open_tree("log").map_err(io)?;
        let layout = layout(&db, &log, true)?;
        let started = std::time::Instant::now();
        let rebuilt = rebuild(&log, layout)?;
        let indexed = started.elapsed();
        let tree = if tree {
            let record = |p: u64| match record_at(&log, layout, p)? {
                Some(v) => Ok(v.to_vec()),
                None => Err(corrupt(p, "missing while the tree was made")),
            };
            let head = rebuilt.head.position;
            let mut tree = LogTree::open(data_dir, head, record)?;
            if let Some((size, root)) = kept.filter(|(size, _)| *size <= head) {
                if tree.root(size).ok() != Some(root) {
                    tracing::warn!(
                        size,
                        "the tree's files do not give the root of the last signed head; making them again from the log"
                    );
                    drop(tree);
                    tree = LogTree::open_afresh(data_dir, head, record)?;
                }
            }
            Some(Arc::new(match durability {
                Durability::Device => tree,
                Durability::Process => {
                    // Appends are acknowledged after sled's flush only, but a signed head
                    // must survive power loss with the records it names: sled's flush
                    // ends in `sync_file_range`, so the file is synced here, per head.
                    let db = db.clone();
                    let device = settle.clone();
                    tree.syncing_log_first(Box::new(move || {
                        db.flush().map_err(std::io::Error::other)?;
                        device.sync()
                    }))
                }
            }))
        } else {
            None
        };
        // Where a slow start goes, for the operator who waits on one.
        tracing::info!(
            records = rebuilt.head.position,
            index_secs = indexed.as_secs_f64(),
            tree_secs = (started.elapsed() - indexed).as_secs_f64(),
            "log opened"
        );
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let heads = rebuilt
            .streams
            .iter()
            .map(|(s, p)| (s.clone(), p.len() as u64))
            .collect();
        let shared = Arc::new(Shared {
            db,
            device,
            settle,
            log,
            layout,
            committed: AtomicU64::new(rebuilt.head.position),
            head_hash: Mutex::new(rebuilt.head.hash),
            streams: RwLock::new(rebuilt.streams),
            live,
            closed: AtomicBool::new(false),
            stats: WriterStats::default(),
            tree,
            times_ordered: rebuilt.times_ordered,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            shared: shared.clone(),
            next_position: rebuilt.head.position + 1,
            last_hash: rebuilt.head.hash,
            last_time_us: rebuilt.last_time_us,
            heads,
            ids: rebuilt.ids,
        };
        tokio::spawn(writer.run(rx));
        Ok(Arc::new(SledEventLog {
            shared,
            tx,
            snapshots: super::Snapshots::default(),
            turns: super::StreamTurns::default(),
        }))
    }

    /// Wrapped data keys an earlier build kept in sled's `keys` tree, to move to the key
    /// store file ([`crate::secrets::keystore`]); none on a store that never had them.
    pub fn legacy_keys(&self) -> Result<Vec<LegacyKey>, StoreError> {
        if !self
            .shared
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"keys")
        {
            return Ok(vec![]);
        }
        let tree = self.shared.db.open_tree("keys").map_err(io)?;
        tree.iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }

    /// Writes entries into a `keys` tree, as an earlier build did.
    #[cfg(test)]
    pub(crate) fn plant_legacy_keys(&self, entries: &[(&[u8], &[u8])]) {
        let tree = self.shared.db.open_tree("keys").expect("opens");
        for (k, v) in entries {
            tree.insert(k, *v).expect("inserts");
        }
    }

    /// Drops the `keys` tree once its entries were moved.
    pub fn drop_legacy_keys(&self) -> Result<(), StoreError> {
        self.shared.db.drop_tree("keys").map_err(io)?;
        self.shared.db.flush().map_err(io)?;
        Ok(())
    }
}

/// Reads the records of `log` from `from` through `through`, on whatever thread runs it.
fn tree_reader(
    log: sled::Tree,
    layout: Layout,
    from: u64,
    through: u64,
) -> super::parallel_decode::Reader<StoreError> {
    Box::new(move |f| {
        for r in raw_iter(&log, layout, from, through) {
            let (pos, bytes) = r?;
            if f(pos, &bytes).is_break() {
                break;
            }
        }
        Ok(())
    })
}

/// Decodes one `(position, bytes)` pair from a raw iterator.
pub fn decode_raw(r: Result<(u64, sled::IVec), StoreError>) -> Result<Envelope, StoreError> {
    let (pos, bytes) = r?;
    idledger_domain::decode_record(&bytes).map_err(|e| corrupt(pos, e.to_string()))
}

/// The store's layout from `meta.format`; a store without one is written as format
/// [`STORE_FORMAT`] when empty and `create` allows, and is format 1 otherwise (written
/// before formats were recorded).
fn layout(db: &sled::Db, log: &sled::Tree, create: bool) -> Result<Layout, StoreError> {
    let meta = db.open_tree("meta").map_err(io)?;
    let format = match meta.get("format").map_err(io)? {
        Some(v) => read_be(&v).unwrap_or(0),
        None => {
            let format = if log.first().map_err(io)?.is_none() {
                STORE_FORMAT
            } else {
                1
            };
            if create {
                meta.insert("format", &be(format)).map_err(io)?;
            }
            format
        }
    };
    Layout::of_format(format).ok_or_else(|| {
        StoreError::Io(format!(
            "store format {format} is not supported by this build"
        ))
    })
}

/// The entry holding `position`, if any.
fn page_at(log: &sled::Tree, layout: Layout, position: u64) -> Result<Option<Page>, StoreError> {
    let entry = match layout {
        Layout::Single => log.get(be(position)).map_err(io)?.map(|v| (position, v)),
        // Most reads by position (a stream's events under light load) find a page that
        // starts there: a point lookup, cheaper than sled's reverse range.
        Layout::Paged => match log.get(be(position)).map_err(io)? {
            Some(v) => Some((position, v)),
            None => match log.range(..=be(position)).next_back() {
                Some(kv) => {
                    let (k, v) = kv.map_err(io)?;
                    Some((read_key(&k, position)?, v))
                }
                None => None,
            },
        },
    };
    entry
        .map(|(first, value)| Page::parse(layout, first, value))
        .transpose()
}

/// The stored record at `position`, if any.
fn record_at(
    log: &sled::Tree,
    layout: Layout,
    position: u64,
) -> Result<Option<sled::IVec>, StoreError> {
    Ok(page_at(log, layout, position)?.and_then(|page| page.get(position)))
}

/// The last entry's last record: its position and bytes.
fn last_record(log: &sled::Tree, layout: Layout) -> Result<Option<(u64, sled::IVec)>, StoreError> {
    let Some((k, v)) = log.last().map_err(io)? else {
        return Ok(None);
    };
    let page = Page::parse(layout, read_key(&k, 0)?, v)?;
    Ok(page.get(page.last()).map(|bytes| (page.last(), bytes)))
}

/// The last record's position and the hash it carries (none when empty).
fn head_of(log: &sled::Tree, layout: Layout) -> Result<Option<(u64, Hash)>, StoreError> {
    let Some((position, bytes)) = last_record(log, layout)? else {
        return Ok(None);
    };
    let raw = RawRecord::parse(&bytes).map_err(|e| corrupt(position, e.to_string()))?;
    Ok(Some((position, raw.hash)))
}

fn read_key(key: &[u8], near: u64) -> Result<u64, StoreError> {
    read_be(key).ok_or_else(|| corrupt(near, "log key is not 8 bytes"))
}

/// The leaf hashes of positions `from..=to`, every one of them there.
fn range_of_tree(
    log: &sled::Tree,
    layout: Layout,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, StoreError> {
    let mut leaves = Vec::with_capacity((to - from + 1) as usize);
    let mut expected = from;
    for item in raw_iter(log, layout, from, to) {
        let (pos, bytes) = item?;
        if pos != expected {
            return Err(corrupt(expected, format!("missing (next is {pos})")));
        }
        leaves.push(leaf_hash(&bytes));
        expected += 1;
    }
    if expected != to + 1 {
        return Err(corrupt(expected, "missing"));
    }
    Ok(leaves)
}

/// The records from `from` through `through` in position order. A damaged entry ends the
/// iteration with its error.
fn raw_iter(log: &sled::Tree, layout: Layout, from: u64, through: u64) -> RawIter {
    let from = from.max(1);
    // The first entry is the one holding `from`, which starts before it in a page.
    let start = match layout {
        Layout::Single => Ok(from),
        Layout::Paged => page_at(log, layout, from).map(|p| p.map_or(from, |p| p.first())),
    };
    let (entries, failed) = match start {
        Ok(start) => (Some(log.range(be(start)..=be(through))), None),
        Err(e) => (None, Some(e)),
    };
    RawIter {
        entries,
        layout,
        page: None,
        at: from,
        through,
        failed,
    }
}

struct RawIter {
    entries: Option<sled::Iter>,
    layout: Layout,
    page: Option<Page>,
    /// The next position to yield, at least.
    at: u64,
    through: u64,
    /// An error to yield before ending.
    failed: Option<StoreError>,
}

impl Iterator for RawIter {
    type Item = Result<(u64, sled::IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.failed.take() {
                self.entries = None;
                self.page = None;
                return Some(Err(e));
            }
            if let Some(page) = &self.page {
                let position = self.at.max(page.first());
                if position > self.through {
                    self.entries = None;
                    self.page = None;
                    return None;
                }
                if let Some(bytes) = page.get(position) {
                    self.at = position + 1;
                    return Some(Ok((position, bytes)));
                }
                self.page = None;
            }
            let (k, v) = match self.entries.as_mut()?.next()? {
                Ok(kv) => kv,
                Err(e) => {
                    self.failed = Some(io(e));
                    continue;
                }
            };
            match read_key(&k, self.at).and_then(|first| Page::parse(self.layout, first, v)) {
                Ok(page) => self.page = Some(page),
                Err(e) => self.failed = Some(e),
            }
        }
    }
}

/// Writes stored records as they are into a new data dir's store (a restore). The store is
/// opened normally afterwards, which rebuilds and checks every index and the tree.
pub fn import_records(data_dir: &Path) -> Result<Importer, StoreError> {
    let dir = store_dir(data_dir);
    let db = sled::Config::new().path(&dir).open().map_err(io)?;
    let log = db.open_tree("log").map_err(io)?;
    if log.first().map_err(io)?.is_some() {
        return Err(StoreError::Io(format!(
            "{} holds records already",
            dir.display()
        )));
    }
    let meta = db.open_tree("meta").map_err(io)?;
    meta.insert("format", &be(STORE_FORMAT)).map_err(io)?;
    Ok(Importer { db, log, dir })
}

/// A store being filled by [`import_records`]; clones fill the same store (from as many
/// threads).
#[derive(Clone)]
pub struct Importer {
    db: sled::Db,
    log: sled::Tree,
    dir: PathBuf,
}

impl Importer {
    /// Writes pages made by a [`PageWriter`] of [`Layout::Paged`]. Page by page, not as one
    /// sled batch: a batch takes the tree's write lock, so two threads could not fill it at
    /// once. A restore that stops half-way throws the whole store away.
    pub fn put(&self, pages: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        for (first, page) in pages {
            self.log.insert(be(first), page).map_err(io)?;
        }
        Ok(())
    }

    /// Makes everything written durable, and answers the last record's position and the
    /// hash it carries, read back from the store (none when empty).
    pub fn finish(self) -> Result<Option<(u64, Hash)>, StoreError> {
        self.db.flush().map_err(io)?;
        // sled's flush leaves the pages to the kernel (`sync_file_range`): the restore is
        // reported done only once the files, the blobs and their names are on the device.
        DeviceSync::open(&self.dir)
            .map_err(|e| StoreError::Io(format!("syncing the restored store: {e}")))?;
        head_of(&self.log, Layout::Paged)
    }
}

/// A data dir whose restore was cut off: its log may be whole while its keys or tree are
/// not. Served, every sealed secret would read as shredded and the log would sign with a
/// new key; verified or exported, a half-moved dir would be reported as fine.
fn refuse_interrupted_restore(data_dir: &Path) -> Result<(), StoreError> {
    if restore_staging_dir(data_dir).exists() {
        return Err(StoreError::Io(format!(
            "{} holds an interrupted restore: remove the directory and restore again",
            data_dir.display()
        )));
    }
    Ok(())
}

/// Opens a data dir's log for reading what is there: no checks of its records, no writer.
/// `verify` uses it, since it must report a damaged store rather than refuse to open it.
pub fn open_raw(data_dir: &Path) -> Result<RawStore, StoreError> {
    refuse_interrupted_restore(data_dir)?;
    let dir = store_dir(data_dir);
    if !dir.exists() {
        return Err(StoreError::Io(format!("no store at {}", dir.display())));
    }
    // sled's default page cache (1 GiB): a one-pass export gains nothing from it, but a
    // second pass over the same store (bench replay's rounds) runs from memory.
    let db = sled::Config::new().path(&dir).open().map_err(io)?;
    let log = db.open_tree("log").map_err(io)?;
    let layout = layout(&db, &log, false)?;
    Ok(RawStore { db, log, layout })
}

/// A store opened by [`open_raw`].
pub struct RawStore {
    db: sled::Db,
    log: sled::Tree,
    layout: Layout,
}

impl RawStore {
    /// Whether an earlier build's wrapped data keys are still in sled's `keys` tree (the
    /// first `serve` of this build moves them to the key store file).
    pub fn holds_legacy_keys(&self) -> Result<bool, StoreError> {
        if !self.db.tree_names().iter().any(|n| n.as_ref() == b"keys") {
            return Ok(false);
        }
        Ok(!self.db.open_tree("keys").map_err(io)?.is_empty())
    }

    /// Every record decoded, in key order, decoding on every core.
    pub fn envelopes_parallel(
        &self,
    ) -> Result<impl Iterator<Item = Result<Envelope, StoreError>> + Send + 'static, StoreError>
    {
        use super::parallel_decode::{decoder_threads, parallel_map};
        Ok(parallel_map(
            self.reader()?,
            |pos, bytes| decode_record(bytes).map_err(|e| corrupt(pos, e.to_string())),
            decoder_threads(),
            |what| StoreError::Io(what.to_owned()),
        )
        .map(|r| r.and_then(|decoded| decoded)))
    }

    /// A reader of every record, for [`super::parallel_decode::parallel_map`].
    pub fn reader(&self) -> Result<super::parallel_decode::Reader<StoreError>, StoreError> {
        Ok(tree_reader(
            self.log.clone(),
            self.layout,
            1,
            self.last_position()?,
        ))
    }

    /// Every record of the log tree, in key order.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, sled::IVec), StoreError>> + '_ {
        raw_iter(&self.log, self.layout, 1, u64::MAX)
    }

    /// The last record: its position and the hash it carries (none when empty).
    pub fn head(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        head_of(&self.log, self.layout)
    }

    /// How many sled entries hold the records (fewer than the records when paged).
    pub fn entries(&self) -> Result<usize, StoreError> {
        Ok(self.log.len())
    }

    /// The last position stored (0 when empty).
    pub fn last_position(&self) -> Result<u64, StoreError> {
        Ok(last_record(&self.log, self.layout)?.map_or(0, |(p, _)| p))
    }

    /// The Merkle tree of positions `1..=through`, recomputed from the records on
    /// `threads` threads. Each reads its own ranges of the store (one reader cannot keep
    /// up with sled: reading is most of the work) and hashes a whole range up to its root:
    /// ranges are aligned powers of two, complete subtrees of the log's tree, so the thread
    /// that joins them hashes one node a range instead of one a record.
    /// A missing position is an error: a tree over a log with a gap proves nothing.
    pub fn tree(&self, through: u64, threads: usize) -> Result<Frontier, StoreError> {
        self.tree_by_ranges(through, threads, 1 << 14)
    }

    /// [`RawStore::tree`] in ranges of `range` records (a power of two).
    fn tree_by_ranges(
        &self,
        through: u64,
        threads: usize,
        range: u64,
    ) -> Result<Frontier, StoreError> {
        /// What a reader hands over for a range: the root of a whole one, the leaves of
        /// the last (shorter) one.
        enum Part {
            Whole(Hash),
            Leaves(Vec<Hash>),
        }
        let ranges = through.div_ceil(range);
        let next = AtomicU64::new(0);
        let threads = threads.clamp(1, 16);
        std::thread::scope(|scope| {
            // Ranges are handed out in order, so the reordering below holds about one per
            // thread, unless one thread stalls while the others go on.
            let (tx, rx) =
                std::sync::mpsc::sync_channel::<(u64, Result<Part, StoreError>)>(threads * 4);
            for _ in 0..threads {
                let (tx, next, log, layout) = (tx.clone(), &next, &self.log, self.layout);
                scope.spawn(move || loop {
                    let r = next.fetch_add(1, Ordering::Relaxed);
                    if r >= ranges {
                        return;
                    }
                    let (from, to) = (r * range + 1, ((r + 1) * range).min(through));
                    let part = range_of_tree(log, layout, from, to).map(|leaves| {
                        if leaves.len() as u64 == range {
                            let mut sub = Frontier::new();
                            leaves.into_iter().for_each(|leaf| sub.push(leaf));
                            Part::Whole(sub.root())
                        } else {
                            Part::Leaves(leaves)
                        }
                    });
                    if tx.send((r, part)).is_err() {
                        return;
                    }
                });
            }
            drop(tx);
            // Ranges come back in any order; they join the tree in log order.
            let mut tree = Frontier::new();
            let mut waiting = std::collections::BTreeMap::new();
            let mut due = 0u64;
            for (r, part) in rx {
                waiting.insert(r, part);
                while let Some(part) = waiting.remove(&due) {
                    match part? {
                        Part::Whole(root) => tree
                            .push_subtree(root, range)
                            .map_err(|e| StoreError::Io(e.to_string()))?,
                        Part::Leaves(leaves) => leaves.into_iter().for_each(|l| tree.push(l)),
                    }
                    due += 1;
                }
            }
            if due == ranges {
                Ok(tree)
            } else {
                Err(StoreError::Io(
                    "a thread reading the tree's leaves stopped".into(),
                ))
            }
        })
    }

    /// The stored record at `pos`.
    pub fn record(&self, pos: u64) -> Result<Vec<u8>, StoreError> {
        match record_at(&self.log, self.layout, pos)? {
            Some(v) => Ok(v.to_vec()),
            None => Err(corrupt(pos, "missing")),
        }
    }

    /// Replaces the record at `pos` with `record`, or removes it (`None`), leaving every
    /// other record where it was; then flushes. Only tests use it, to damage a store on
    /// purpose: nothing else ever changes a stored record.
    pub fn damage(&self, pos: u64, record: Option<&[u8]>) -> Result<(), StoreError> {
        let page = page_at(&self.log, self.layout, pos)?
            .filter(|p| p.get(pos).is_some())
            .ok_or_else(|| corrupt(pos, "missing"))?;
        let mut pages = PageWriter::new(self.layout);
        for p in page.first()..=page.last() {
            match (p == pos, record) {
                (true, None) => {}
                (true, Some(r)) => pages.push(p, r),
                (false, _) => pages.push(p, &page.get(p).unwrap_or_default()),
            }
        }
        let mut batch = sled::Batch::default();
        batch.remove(&be(page.first()));
        for (first, value) in pages.finish() {
            batch.insert(&be(first), value);
        }
        self.log.apply_batch(batch).map_err(io)?;
        self.db.flush().map(|_| ()).map_err(io)
    }
}

impl SledEventLog {
    async fn append_now(&self, req: AppendRequest) -> Result<Appended, AppendError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed.into());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { req, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl EventLog for SledEventLog {
    fn append(&self, req: AppendRequest) -> LogFuture<'_, Result<Appended, AppendError>> {
        Box::pin(self.append_now(req))
    }

    fn records(&self, from: u64) -> super::parallel_decode::Reader<StoreError> {
        tree_reader(
            self.shared.log.clone(),
            self.shared.layout,
            from,
            self.head().position,
        )
    }

    fn durability(&self) -> Durability {
        match self.shared.device {
            Some(_) => Durability::Device,
            None => Durability::Process,
        }
    }

    fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    fn accepting(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
    }

    fn tree(&self) -> Option<Arc<LogTree>> {
        self.shared.tree.clone()
    }

    fn times_ordered(&self) -> bool {
        self.shared.times_ordered
    }

    fn snapshots(&self) -> &super::Snapshots {
        &self.snapshots
    }

    fn turns(&self) -> &super::StreamTurns {
        &self.turns
    }

    fn close(&self) -> LogFuture<'_, ()> {
        Box::pin(async move {
            self.shared.closed.store(true, Ordering::Release);
            self.barrier().await;
        })
    }

    fn barrier(&self) -> LogFuture<'_, ()> {
        Box::pin(async move {
            // A request behind every one taken: the writer answers it (refused, as empty
            // or as late) only after the group in hand is committed.
            let marker = AppendRequest::new(StreamId::tokens(), ExpectedVersion::Any, Vec::new());
            let (reply, rx) = oneshot::channel();
            if self.tx.send(Job { req: marker, reply }).is_ok() {
                let _ = rx.await;
            }
        })
    }

    fn flush(&self) -> LogFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let flushed: Result<(), StoreError> = async {
                self.shared.db.flush_async().await.map_err(io)?;
                if let Some(device) = self.shared.device.clone() {
                    tokio::task::spawn_blocking(move || device.sync())
                        .await
                        .map_err(|e| StoreError::Io(e.to_string()))?
                        .map_err(|e| StoreError::Io(format!("fdatasync of the log: {e}")))?;
                }
                Ok(())
            }
            .await;
            // A failed sync here is the writer's too (the kernel reports a lost write-back
            // once per file, and may have dropped the pages): the log stops as it would.
            if let Err(e) = &flushed {
                fail(&self.shared, Vec::new(), e.clone());
            }
            flushed
        })
    }

    fn settle(&self) -> LogFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.shared.device.is_some() {
                // Every acknowledged append is on the device already.
                return Ok(());
            }
            let settle = self.shared.settle.clone();
            let synced = match self.shared.db.flush_async().await {
                Err(e) => Err(io(e)),
                Ok(_) => tokio::task::spawn_blocking(move || settle.sync())
                    .await
                    .map_err(|e| StoreError::Io(e.to_string()))
                    .and_then(|r| {
                        r.map_err(|e| StoreError::Io(format!("fdatasync of the log: {e}")))
                    }),
            };
            // As in `flush`: a lost write-back is the writer's failure too.
            if let Err(e) = &synced {
                fail(&self.shared, Vec::new(), e.clone());
            }
            synced
        })
    }

    fn head(&self) -> LogHead {
        // Position and hash change under the same lock, so they agree.
        let hash = self
            .shared
            .head_hash
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        LogHead {
            position: self.shared.committed.load(Ordering::Acquire),
            hash: *hash,
        }
    }

    fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        raw_iter(
            &self.shared.log,
            self.shared.layout,
            from,
            self.head().position,
        )
        .take(limit)
        .map(decode_raw)
        .collect()
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        let positions: Vec<u64> = {
            let streams = self
                .shared
                .streams
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let Some(all) = streams.get(stream) else {
                return Ok(Vec::new());
            };
            let start = (from_version.max(1) - 1) as usize;
            all.iter().skip(start).take(limit).copied().collect()
        };
        positions
            .into_iter()
            .map(|pos| {
                let bytes = record_at(&self.shared.log, self.shared.layout, pos)?
                    .ok_or_else(|| corrupt(pos, "indexed record is missing"))?;
                decode_raw(Ok((pos, bytes)))
            })
            .collect()
    }

    fn stream_version(&self, stream: &StreamId) -> u64 {
        let streams = self
            .shared
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner());
        streams.get(stream).map_or(0, |p| p.len() as u64)
    }

    fn live(&self) -> broadcast::Receiver<Arc<[Envelope]>> {
        self.shared.live.subscribe()
    }
}

/// The single writer. Owns position assignment, the chain head, and the authoritative
/// stream versions and event ids.
struct Writer {
    shared: Arc<Shared>,
    next_position: u64,
    last_hash: Hash,
    last_time_us: i64,
    heads: FxHashMap<StreamId, u64>,
    /// Event id → (position, stream tag) of every event written, committed or in flight.
    ids: FxHashMap<Uuid, (u64, u64)>,
}

/// A 64-bit tag of a stream name, so the id map need not hold a copy of every name.
fn stream_tag(stream: &StreamId) -> u64 {
    use std::hash::{Hash as _, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    stream.hash(&mut h);
    h.finish()
}

/// One group commit being built.
struct Batch {
    records: PageWriter,
    envelopes: Vec<Envelope>,
    /// The records' leaf hashes, for the tree.
    leaves: Vec<Hash>,
    /// Ids of this batch → (position, stream tag), for retries within the same batch.
    ids: FxHashMap<Uuid, (u64, u64)>,
}

/// A group commit being gathered: its requests checked and encoded as they arrive.
struct Group {
    started: std::time::Instant,
    now_us: i64,
    recorded_at: DateTime<Utc>,
    batch: Batch,
    replies: Vec<Reply>,
    events: usize,
}

/// A written, not yet flushed, group commit.
struct Pending {
    envelopes: Vec<Envelope>,
    leaves: Vec<Hash>,
    replies: Vec<Reply>,
    started: std::time::Instant,
}

impl Writer {
    /// Gathers requests, checking and encoding each as it arrives, writes the group's
    /// records, flushes, and only then answers. One group at a time: with callers that
    /// each wait for their answer, writing the next group during this one's flush only
    /// split them into two half-size groups (measured: 44k vs 49k events/s with 64
    /// writers; see docs/DESIGN.md, Decisions).
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut group = self.open_group();
            self.take(first, &mut group);
            self.gather(&mut rx, &mut group).await;
            if let Some(p) = self.write(group) {
                commit(&self.shared, p).await;
            }
            if self.shared.closed.load(Ordering::Acquire) {
                break;
            }
        }
        // The log is closed: refuse whatever is still queued.
        rx.close();
        while let Some(j) = rx.recv().await {
            let _ = j.reply.send(Err(StoreError::Closed.into()));
        }
    }

    /// A new group, stamped now (never earlier than the group before).
    fn open_group(&self) -> Group {
        let now_us = Utc::now().timestamp_micros().max(self.last_time_us);
        Group {
            started: std::time::Instant::now(),
            now_us,
            recorded_at: DateTime::<Utc>::from_timestamp_micros(now_us).unwrap_or_default(),
            batch: Batch {
                records: PageWriter::new(self.shared.layout),
                envelopes: Vec::new(),
                leaves: Vec::new(),
                ids: FxHashMap::default(),
            },
            replies: Vec::new(),
            events: 0,
        }
    }

    /// Checks and encodes one request into the group as it arrives: the writer encodes
    /// while the callers answered by the last commit are still making their next
    /// requests, instead of after all of them.
    fn take(&mut self, job: Job, group: &mut Group) {
        group.events += job.req.events.len();
        let result = self.prepare(job.req, group.recorded_at, &mut group.batch);
        group.replies.push((job.reply, result));
    }

    /// Takes requests waiting behind the first; see [`GATHER_YIELDS`].
    async fn gather(&mut self, rx: &mut mpsc::UnboundedReceiver<Job>, group: &mut Group) {
        // Callers answered by the last commit are runnable now; yielding lets them submit
        // their next request into this group instead of the one after.
        let mut yields = 0;
        while group.events < MAX_BATCH_EVENTS {
            match rx.try_recv() {
                Ok(j) => self.take(j, group),
                Err(_) if yields < GATHER_YIELDS => {
                    yields += 1;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
    }

    /// Writes one group's records (not yet flushed). `None` only when the write failed
    /// (answers sent).
    fn write(&mut self, group: Group) -> Option<Pending> {
        let Group {
            started,
            now_us,
            batch,
            replies,
            ..
        } = group;
        if batch.envelopes.is_empty() {
            return Some(Pending {
                envelopes: Vec::new(),
                leaves: Vec::new(),
                replies,
                started,
            });
        }
        let mut pages = sled::Batch::default();
        for (first, page) in batch.records.finish() {
            pages.insert(&be(first), page);
        }
        if let Err(e) = self.shared.log.apply_batch(pages) {
            fail(&self.shared, replies, io(e));
            return None;
        }
        self.last_time_us = now_us;
        self.last_hash = batch.envelopes.last().map_or(self.last_hash, |e| e.hash);
        self.ids.extend(batch.ids);
        Some(Pending {
            envelopes: batch.envelopes,
            leaves: batch.leaves,
            replies,
            started,
        })
    }

    /// Checks one request and adds its records to the batch.
    fn prepare(
        &mut self,
        req: AppendRequest,
        recorded_at: DateTime<Utc>,
        batch: &mut Batch,
    ) -> Result<Appended, AppendError> {
        if let Some(duplicate) = self.check(&req, &batch.ids)? {
            return Ok(duplicate);
        }
        let current = self.heads.get(&req.stream).copied().unwrap_or(0);
        let tag = stream_tag(&req.stream);
        let first = self.next_position;
        let count = req.events.len() as u64;
        let mut chain = batch.envelopes.last().map_or(self.last_hash, |e| e.hash);
        // Encode everything first so one oversized event rejects the request whole.
        let mut encoded = Vec::with_capacity(req.events.len());
        for (i, p) in req.events.iter().enumerate() {
            let fields = RecordFields {
                position: first + i as u64,
                stream: &req.stream,
                version: current + 1 + i as u64,
                recorded_at,
                proposed: p,
            };
            let (bytes, next) =
                encode_record(fields, &chain).map_err(|e| AppendError::Invalid(e.to_string()))?;
            if bytes.len() > MAX_RECORD_BYTES {
                return Err(AppendError::Invalid(format!(
                    "event {} is larger than {MAX_RECORD_BYTES} bytes",
                    p.event_id
                )));
            }
            encoded.push((bytes, chain, next));
            chain = next;
        }
        for (i, (p, (bytes, prev_hash, hash))) in req.events.into_iter().zip(encoded).enumerate() {
            let position = first + i as u64;
            if self.shared.tree.is_some() {
                batch.leaves.push(leaf_hash(&bytes));
            }
            batch.records.push(position, &bytes);
            batch.ids.insert(p.event_id, (position, tag));
            batch.envelopes.push(Envelope {
                position,
                stream: req.stream.clone(),
                version: current + 1 + i as u64,
                event_id: p.event_id,
                recorded_at,
                actor: p.actor,
                correlation_id: p.correlation_id,
                causation_id: p.causation_id,
                event: p.event,
                prev_hash,
                hash,
            });
        }
        self.next_position = first + count;
        let version = current + count;
        self.heads.insert(req.stream, version);
        Ok(Appended {
            first_position: first,
            last_position: first + count - 1,
            stream_version: version,
            duplicate: false,
        })
    }

    /// Validates a request. `Ok(Some(_))`: every id is already in the log on this stream,
    /// in order (an idempotent retry); `Ok(None)`: append it.
    fn check(
        &self,
        req: &AppendRequest,
        batch_ids: &FxHashMap<Uuid, (u64, u64)>,
    ) -> Result<Option<Appended>, AppendError> {
        if req.events.is_empty() {
            return Err(AppendError::Invalid("no events".into()));
        }
        if req.events.len() > MAX_EVENTS_PER_APPEND {
            return Err(AppendError::Invalid(format!(
                "{} events in one append; at most {MAX_EVENTS_PER_APPEND}",
                req.events.len()
            )));
        }
        let kind = req.stream.kind();
        if let Some(e) = req.events.iter().find(|e| e.event.stream_kind() != kind) {
            return Err(AppendError::WrongStream {
                kind: e.event.kind(),
                stream: req.stream.clone(),
            });
        }
        let tag = stream_tag(&req.stream);
        // Each id's position, and whether it is on this stream.
        let found: Vec<Option<(u64, bool)>> = req
            .events
            .iter()
            .map(|e| {
                let hit = batch_ids
                    .get(&e.event_id)
                    .or_else(|| self.ids.get(&e.event_id));
                hit.map(|(pos, t)| (*pos, *t == tag))
            })
            .collect();
        if found.iter().all(|f| f.is_some_and(|(_, same)| same)) {
            let positions: Vec<u64> = found.iter().flatten().map(|(p, _)| *p).collect();
            if positions.windows(2).all(|w| w[1] == w[0] + 1) {
                return Ok(Some(Appended {
                    first_position: positions[0],
                    last_position: positions[positions.len() - 1],
                    stream_version: self.heads.get(&req.stream).copied().unwrap_or(0),
                    duplicate: true,
                }));
            }
        }
        if let Some(i) = found.iter().position(Option::is_some) {
            return Err(AppendError::EventIdConflict {
                event_id: req.events[i].event_id,
            });
        }
        let mut seen = FxHashSet::default();
        if let Some(e) = req.events.iter().find(|e| !seen.insert(e.event_id)) {
            return Err(AppendError::Invalid(format!(
                "event id {} appears twice",
                e.event_id
            )));
        }
        let actual = self.heads.get(&req.stream).copied().unwrap_or(0);
        let ok = match req.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        };
        if !ok {
            return Err(AppendError::WrongExpectedVersion {
                stream: req.stream.clone(),
                expected: req.expected,
                actual,
            });
        }
        Ok(None)
    }
}

/// Answers every caller of a failed group and closes the log.
fn fail(shared: &Shared, replies: Vec<Reply>, err: StoreError) {
    tracing::error!(error = %err, "event log write failed; refusing further appends");
    shared.closed.store(true, Ordering::Release);
    for (reply, _) in replies {
        let _ = reply.send(Err(err.clone().into()));
    }
}

/// Flushes a written group; only then makes it readable, answers and publishes it.
async fn commit(shared: &Shared, p: Pending) {
    let (first, last) = match (p.envelopes.first(), p.envelopes.last()) {
        (Some(f), Some(l)) => (f.position, l.clone()),
        _ => {
            // Nothing new (refusals and retries only): every earlier group is flushed.
            for (reply, result) in p.replies {
                let _ = reply.send(result);
            }
            return;
        }
    };
    let flushed = match &shared.device {
        None => shared.db.flush_async().await.map(|_| ()).map_err(io),
        // sled's flush and the device sync on one blocking thread: one hand-off, not two.
        Some(device) => {
            let (db, device) = (shared.db.clone(), device.clone());
            let synced = tokio::task::spawn_blocking(move || {
                db.flush().map_err(io)?;
                // After a failed fdatasync the kernel may have dropped the dirty pages:
                // nothing written since can be promised, so the log stops here.
                device
                    .sync()
                    .map_err(|e| StoreError::Io(format!("fdatasync of the log: {e}")))
            })
            .await;
            synced.unwrap_or_else(|e| Err(StoreError::Io(e.to_string())))
        }
    };
    if let Err(e) = flushed {
        fail(shared, p.replies, e);
        return;
    }
    // The group is durable: its leaves join the tree before anyone learns of it, so a
    // proof can be asked for any position as soon as it is answered.
    if let Some(tree) = &shared.tree {
        tree.append(&p.leaves);
    }
    {
        let mut streams = shared.streams.write().unwrap_or_else(|e| e.into_inner());
        for e in &p.envelopes {
            streams
                .entry(e.stream.clone())
                .or_default()
                .push(e.position);
        }
    }
    {
        let mut h = shared.head_hash.lock().unwrap_or_else(|e| e.into_inner());
        *h = last.hash;
        shared.committed.store(last.position, Ordering::Release);
    }
    let stats = &shared.stats;
    stats.flushes.fetch_add(1, Ordering::Relaxed);
    stats
        .events
        .fetch_add(last.position + 1 - first, Ordering::Relaxed);
    stats
        .commit_micros
        .fetch_add(p.started.elapsed().as_micros() as u64, Ordering::Relaxed);
    crate::metrics::group_committed(p.started.elapsed(), p.envelopes.iter().map(|e| &e.event));
    for (reply, result) in p.replies {
        let _ = reply.send(result);
    }
    // No subscriber is fine: the projector may not have started yet.
    let _ = shared.live.send(Arc::from(p.envelopes));
}

/// The baseline of `bench append`: raw sled, one tree, `records` written in `flushes`
/// equal batches, each flushed (and, at [`Durability::Device`], synced as the log syncs),
/// in a scratch store under `data_dir`. Seconds taken.
pub async fn raw_append(
    data_dir: &Path,
    records: &[Vec<u8>],
    flushes: u64,
    durability: Durability,
) -> Result<f64, StoreError> {
    let records: Vec<sled::IVec> = records
        .iter()
        .map(|r| sled::IVec::from(r.as_slice()))
        .collect();
    let dir = data_dir.join("bench-baseline.tmp");
    let _ = std::fs::remove_dir_all(&dir);
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(256 << 20)
        .open()
        .map_err(io)?;
    let tree = db.open_tree("log").map_err(io)?;
    let device = match durability {
        Durability::Device => Some(Arc::new(
            DeviceSync::open(&dir).map_err(|e| StoreError::Io(e.to_string()))?,
        )),
        Durability::Process => None,
    };
    let per_flush = records.len().div_ceil(flushes.max(1) as usize).max(1);
    let started = Instant::now();
    for (chunk_no, chunk) in records.chunks(per_flush).enumerate() {
        let mut batch = sled::Batch::default();
        for (i, r) in chunk.iter().enumerate() {
            let key = ((chunk_no * per_flush + i) as u64 + 1).to_be_bytes();
            batch.insert(&key, r.clone());
        }
        tree.apply_batch(batch).map_err(io)?;
        db.flush_async().await.map_err(io)?;
        if let Some(d) = device.clone() {
            tokio::task::spawn_blocking(move || d.sync())
                .await
                .map_err(|e| StoreError::Io(e.to_string()))?
                .map_err(|e| StoreError::Io(e.to_string()))?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::samples::{sample_event, SampleSeed};
    use idledger_domain::{Actor, ProposedEvent};

    /// A store whose records are stamped at `seconds`, one stream, in order.
    fn stamped(seconds: &[i64]) -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().expect("opens");
        let log = db.open_tree("log").expect("opens");
        let stream = "bench-times".parse::<StreamId>().expect("a stream name");
        let mut pages = PageWriter::new(Layout::Paged);
        let mut prev = Hash::ZERO;
        for (i, second) in seconds.iter().enumerate() {
            let position = i as u64 + 1;
            let proposed = ProposedEvent::new(
                Uuid::from_u128(u128::from(position)),
                Actor::System,
                sample_event(0, &SampleSeed::golden()).expect("a sample"),
            );
            let fields = RecordFields {
                position,
                stream: &stream,
                version: position,
                recorded_at: DateTime::from_timestamp(1_800_000_000 + second, 0).expect("a time"),
                proposed: &proposed,
            };
            let (bytes, hash) = encode_record(fields, &prev).expect("encodes");
            pages.push(position, &bytes);
            prev = hash;
        }
        for (first, page) in pages.finish() {
            log.insert(be(first), page).expect("inserts");
        }
        log
    }

    #[test]
    fn a_log_whose_times_went_back_is_told_apart() {
        for (seconds, ordered) in [
            (&[][..], true),
            (&[1, 1, 2, 5][..], true),
            (&[1, 5, 4, 6][..], false),
            (&[3, 2][..], false),
        ] {
            let rebuilt = rebuild(&stamped(seconds), Layout::Paged).expect("rebuilds");
            assert_eq!(rebuilt.times_ordered, ordered, "{seconds:?}");
            assert_eq!(rebuilt.head.position, seconds.len() as u64);
        }
    }
}

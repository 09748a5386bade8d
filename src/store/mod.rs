//! The event log: the single source of truth.
//!
//! [`EventLog`] is the boundary the services use; sled types appear only in this room
//! ([`sled_log`] and [`page`]). Tools that read a stopped store (audit, backup, benches)
//! open it as a [`sled_log::RawStore`]. A later backend (NATS JetStream with
//! expected-last-subject-sequence, PostgreSQL) implements the same trait.

pub mod page;
pub mod parallel_decode;
pub mod sled_log;
pub mod snapshots;
mod subscription;
pub mod tree;
pub mod turns;

use idledger_domain::decide::Rejection;
use idledger_domain::{Actor, Envelope, Event, Hash, ProposedEvent, StreamId};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::broadcast;

pub use parallel_decode::Reader;
pub use sled_log::SledEventLog;
pub use snapshots::{Fold, Snapshots};
pub use subscription::Subscription;
pub use turns::StreamTurns;

/// How far an acknowledged append has gone.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// On the device: the log's files are `fdatasync`ed (new files and their directory
    /// `fsync`ed) after each group's write and before any answer. Survives power loss.
    #[default]
    Device,
    /// sled's own flush only (`sync_file_range`, which neither flushes the device's write
    /// cache nor persists a growing file's size): survives a killed process, not
    /// necessarily a lost machine. For those who accept that risk for speed.
    Process,
}

impl Durability {
    /// The setting's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Durability::Device => "device",
            Durability::Process => "process",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "device" => Ok(Durability::Device),
            "process" => Ok(Durability::Process),
            other => Err(format!("durability {other:?}: use device or process")),
        }
    }
}

/// The optimistic-concurrency condition of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's version must be exactly this (its last event's version).
    Exact(u64),
}

/// Events to append to one stream, atomically.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub stream: StreamId,
    /// The condition.
    pub expected: ExpectedVersion,
    /// One or more events; all are appended or none.
    pub events: Vec<ProposedEvent>,
}

impl AppendRequest {
    /// A request for `events` on `stream` under `expected`.
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<ProposedEvent>) -> Self {
        AppendRequest {
            stream,
            expected,
            events,
        }
    }
}

/// The result of a successful append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Position of the first event.
    pub first_position: u64,
    /// Position of the last event (what a client passes as `min_position`).
    pub last_position: u64,
    /// The stream's version after the append.
    pub stream_version: u64,
    /// True when every event id was already in the log: nothing new was written.
    pub duplicate: bool,
}

/// The log's head: the last committed (flushed) record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogHead {
    /// Its position (0 for an empty log).
    pub position: u64,
    pub hash: Hash,
}

/// An append was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream's version is not what the caller expected.
    #[error("wrong expected version for {stream}: expected {expected:?}, stream is at {actual}")]
    WrongExpectedVersion {
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version (0: no stream).
        actual: u64,
    },
    /// Some event ids of the request are in the log and some are not, or they are on
    /// another stream: not a retry of the same append.
    #[error("event id {event_id} was already appended with other content")]
    EventIdConflict {
        /// The first conflicting id.
        event_id: uuid::Uuid,
    },
    /// An event does not belong on this kind of stream.
    #[error("event {kind} does not belong on stream {stream}")]
    WrongStream {
        /// The event kind.
        kind: &'static str,
        stream: StreamId,
    },
    /// The request breaks a limit (no events, too many, too large).
    #[error("invalid append: {0}")]
    Invalid(String),
    /// Storage failed; the log stops accepting appends.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Storage failed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum StoreError {
    /// The storage engine reported an error.
    #[error("storage error: {0}")]
    Io(String),
    /// A stored record is damaged.
    #[error("damaged record at position {position}: {reason}")]
    Corrupt {
        /// Where.
        position: u64,
        /// What.
        reason: String,
    },
    /// The storage engine found its files damaged or not its own (it could read them).
    #[error("damaged store: {0}")]
    Damaged(String),
    /// The writer has stopped (shutdown or an earlier storage failure).
    #[error("the event log is closed")]
    Closed,
}

/// A future an [`EventLog`] answers with (boxed, so the trait can be used as `dyn`).
pub type LogFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Counters of a log's writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Group commits done.
    pub flushes: std::sync::atomic::AtomicU64,
    /// Events committed.
    pub events: std::sync::atomic::AtomicU64,
    /// Total microseconds spent in commits (encode, write, flush, sync).
    pub commit_micros: std::sync::atomic::AtomicU64,
}

/// The event log, as the rest of the binary sees it: every service and handler holds an
/// `Arc<dyn EventLog>`, never the sled type.
pub trait EventLog: Send + Sync + 'static {
    /// Appends atomically; resolves only after the events are durable (see [`Durability`]).
    fn append(&self, req: AppendRequest) -> LogFuture<'_, Result<Appended, AppendError>>;

    /// The last committed record.
    fn head(&self) -> LogHead;

    /// Up to `limit` committed envelopes from `from` (inclusive), in position order.
    fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, StoreError>;

    /// Up to `limit` envelopes of one stream from version `from_version` (inclusive).
    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError>;

    /// The stream's current version (0 when it does not exist).
    fn stream_version(&self, stream: &StreamId) -> u64;

    /// Committed batches as they are published, for catch-up subscriptions.
    fn live(&self) -> broadcast::Receiver<Arc<[Envelope]>>;

    /// The stored records from `from` through the head as it is now, exactly as stored,
    /// for readers that check or decode them themselves (the event feed, exports,
    /// replays), on whatever thread runs the reader.
    fn records(&self, from: u64) -> Reader<StoreError>;

    /// How far an acknowledged append has gone.
    fn durability(&self) -> Durability;

    /// The writer's counters.
    fn stats(&self) -> &WriterStats;

    /// Whether the log still takes appends (a failed write or device sync closes it).
    fn accepting(&self) -> bool;

    /// Puts every append acknowledged so far on the device, whatever the durability: for
    /// the few that must outlive a power loss even with `durability = "process"` (a new
    /// password, before Graph is asked to set it). Free with `durability = "device"`.
    fn settle(&self) -> LogFuture<'_, Result<(), StoreError>>;

    /// Flushes everything (appends are durable when answered; this is for shutdown).
    fn flush(&self) -> LogFuture<'_, Result<(), StoreError>>;

    /// Takes no more appends, and returns once every append taken before is written or
    /// refused: a head signed after this covers the whole log, with no service's last
    /// append (a sync run's, a rotation's) landing behind it.
    fn close(&self) -> LogFuture<'_, ()>;

    /// Returns once every append taken before is written or refused, and goes on taking
    /// appends: a caller that dropped append futures (a cancelled sync run) learns when
    /// none of them can land any more.
    fn barrier(&self) -> LogFuture<'_, ()>;

    /// The Merkle tree over the records, when the log keeps one.
    fn tree(&self) -> Option<Arc<tree::LogTree>>;

    /// True when no record is stamped earlier than the one before it: then the records
    /// committed by a time are a prefix of every stream, and one stream's own records
    /// tell where a point in time falls in it.
    fn times_ordered(&self) -> bool;

    /// Its streams' states as the command path last folded them.
    fn snapshots(&self) -> &Snapshots;

    /// The command path's turns, one stream at a time.
    fn turns(&self) -> &StreamTurns;
}

/// History from `from`, then live events, with no gap and no duplicate.
pub fn subscribe(log: Arc<dyn EventLog>, from: u64) -> Subscription {
    Subscription::new(log, from)
}

/// The committed envelopes from `from` through the head now, decoded on every core.
pub fn envelopes(
    log: &dyn EventLog,
    from: u64,
) -> impl Iterator<Item = Result<Envelope, StoreError>> + Send + 'static {
    use parallel_decode::{decoder_threads, parallel_map};
    parallel_map(
        log.records(from),
        |position, bytes| {
            idledger_domain::decode_record(bytes).map_err(|e| StoreError::Corrupt {
                position,
                reason: e.to_string(),
            })
        },
        decoder_threads(),
        |what| StoreError::Io(what.to_owned()),
    )
    .map(|r| r.and_then(|decoded| decoded))
}

/// A stream's envelopes from version `from` on, in version order, read a page at a time
/// as they are taken: a long stream is folded in bounded memory, and a reader that stops
/// early reads little more than it used.
pub fn stream_envelopes<'a>(
    log: &'a dyn EventLog,
    stream: &'a StreamId,
    from: u64,
) -> impl Iterator<Item = Result<Envelope, StoreError>> + 'a {
    let mut page = std::collections::VecDeque::new();
    let (mut from, mut read_all) = (from, false);
    std::iter::from_fn(move || {
        if page.is_empty() && !read_all {
            match log.read_stream(stream, from, FOLD_PAGE) {
                Ok(read) => {
                    read_all = read.len() < FOLD_PAGE;
                    from += read.len() as u64;
                    page.extend(read);
                }
                Err(e) => {
                    read_all = true;
                    return Some(Err(e));
                }
            }
        }
        page.pop_front().map(Ok)
    })
}

/// Why a command did not land.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The domain rules refused it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The append failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Reading the stream failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream changed between every read and append.
    #[error("the resource changed meanwhile; retry")]
    Contended,
}

/// Events of a stream read at once by the command path's fold.
const FOLD_PAGE: usize = 4096;

/// The command path: fold `stream` with `evolve`, `decide`, append at exactly the version
/// folded (with `correlation_id` on every event). Commands on one stream take turns in this
/// process ([`turns`]); a change by another writer is retried once on fresh state. Returns
/// the position of the last event appended (the log's head when nothing changed).
///
/// The fold starts from the log's snapshot of the stream, if it keeps one, and takes in
/// only the events after it; the state after an acknowledged append is kept for the next
/// command.
pub async fn decide_and_append<S: Default + Clone + Send + Sync + 'static>(
    log: &dyn EventLog,
    stream: &StreamId,
    actor: &Actor,
    correlation_id: Option<uuid::Uuid>,
    evolve: fn(S, &Event) -> S,
    decide: impl Fn(&S) -> Result<Vec<Event>, Rejection>,
) -> Result<u64, CommandError> {
    command_path(
        log,
        stream,
        actor,
        correlation_id,
        Fold::Events(evolve),
        decide,
    )
    .await
}

/// [`decide_and_append`] for decisions that need to know when each event was committed
/// (the rotation protocol's windows). The state after an append is not kept: the new
/// events' commit times are known only once read back, which the next command does.
pub async fn decide_and_append_timed<S: Default + Clone + Send + Sync + 'static>(
    log: &dyn EventLog,
    stream: &StreamId,
    actor: &Actor,
    correlation_id: Option<uuid::Uuid>,
    evolve: fn(S, &Envelope) -> S,
    decide: impl Fn(&S) -> Result<Vec<Event>, Rejection>,
) -> Result<u64, CommandError> {
    command_path(
        log,
        stream,
        actor,
        correlation_id,
        Fold::Envelopes(evolve),
        decide,
    )
    .await
}

async fn command_path<S: Default + Clone + Send + Sync + 'static>(
    log: &dyn EventLog,
    stream: &StreamId,
    actor: &Actor,
    correlation_id: Option<uuid::Uuid>,
    fold: Fold<S>,
    decide: impl Fn(&S) -> Result<Vec<Event>, Rejection>,
) -> Result<u64, CommandError> {
    let _turn = log.turns().take(stream).await;
    let snapshots = log.snapshots();
    for attempt in 0..2 {
        let (mut version, mut state) = snapshots
            .get(stream, fold)
            .unwrap_or_else(|| (0, S::default()));
        let folded_from = version;
        for e in stream_envelopes(log, stream, version + 1) {
            let e = e?;
            version = e.version;
            state = fold.apply(state, &e);
        }
        let events = match decide(&state) {
            Ok(events) if !events.is_empty() => events,
            decided => {
                // Nothing to append, or refused: the fold is kept all the same, so that a
                // run of refusals (made-up tokens naming a real user, say) folds nothing.
                if version != folded_from {
                    snapshots.put(stream, fold, version, state);
                }
                decided?;
                return Ok(log.head().position);
            }
        };
        let proposed = propose(events.clone(), actor, correlation_id);
        let expected = if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        };
        match log
            .append(AppendRequest::new(stream.clone(), expected, proposed))
            .await
        {
            Ok(done) => {
                // The events took the versions right after the fold's (the append
                // expected exactly that version); anything else is not kept.
                if let Fold::Events(evolve) = fold {
                    if !done.duplicate && done.stream_version == version + events.len() as u64 {
                        let state = events.iter().fold(state, evolve);
                        snapshots.put(stream, fold, done.stream_version, state);
                    }
                } else if version != folded_from {
                    snapshots.put(stream, fold, version, state);
                }
                return Ok(done.last_position);
            }
            Err(AppendError::WrongExpectedVersion { .. }) if attempt == 0 => {
                snapshots.put(stream, fold, version, state);
                continue;
            }
            // Changed again meanwhile: the caller is told so, as a conflict to retry.
            Err(AppendError::WrongExpectedVersion { .. }) => return Err(CommandError::Contended),
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Contended)
}

/// New events as `actor` proposes them, each with a fresh id and `correlation_id`.
fn propose(
    events: Vec<Event>,
    actor: &Actor,
    correlation_id: Option<uuid::Uuid>,
) -> Vec<ProposedEvent> {
    events
        .into_iter()
        .map(|e| ProposedEvent {
            correlation_id,
            ..ProposedEvent::new(uuid::Uuid::now_v7(), actor.clone(), e)
        })
        .collect()
}

/// Appends `events` to `stream` as `actor`, each carrying `correlation_id` (a sync run's
/// or a rotation's id, so its events can be found together); returns the position of the
/// last one.
pub async fn append_correlated(
    log: &dyn EventLog,
    stream: StreamId,
    expected: ExpectedVersion,
    actor: &Actor,
    correlation_id: Option<uuid::Uuid>,
    events: Vec<Event>,
) -> Result<u64, AppendError> {
    let proposed = propose(events, actor, correlation_id);
    let done = log
        .append(AppendRequest::new(stream, expected, proposed))
        .await?;
    Ok(done.last_position)
}

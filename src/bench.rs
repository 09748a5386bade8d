//! `idledger bench`: the event log measured against raw sled in the same run.

use crate::cli::CliError;
use crate::progress;
use crate::store::sled_log::{open_raw, RawStore};
use crate::store::{AppendRequest, EventLog, ExpectedVersion, SledEventLog};
use chrono::Utc;
use clap::Args;
use idledger_domain::envelope::{encode_record, RecordFields};
use idledger_domain::events::{UserAttributesChanged, UserDiscovered};
use idledger_domain::{
    decode_record, Actor, DomainId, Event, Hash, ProposedEvent, StreamId, UserAttributes, UserId,
};
use idledger_replay::{fold, Until};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

/// Options of `idledger bench append`.
#[derive(Args, Debug)]
pub struct AppendArgs {
    /// Data directory; created if needed, never wiped.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Events to append.
    #[arg(long)]
    pub events: u64,
    /// Concurrent writer tasks, each waiting for its acknowledgement.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Approximate size of one stored record.
    #[arg(long, default_value_t = 256)]
    pub event_bytes: usize,
    /// Append `position event_id` per acknowledged event to this file, as soon as acknowledged.
    #[arg(long)]
    pub ack_file: Option<PathBuf>,
    /// `device` (fdatasync before every acknowledgement) or `process` (sled's flush only);
    /// the raw sled baseline syncs the same way.
    #[arg(long, default_value = "device")]
    pub durability: crate::store::Durability,
}

/// Options of `idledger bench replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Data directory; filled first when it holds fewer than `--events` events.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Events to fold.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
}

/// Users per writer: each writer cycles over its own streams, so versions are its own.
const STREAMS_PER_WRITER: usize = 16;

/// Builds realistic user events of about `record_bytes` stored bytes.
struct EventMaker {
    domain: DomainId,
    padding: usize,
}

impl EventMaker {
    fn new(record_bytes: usize) -> Self {
        let mut maker = EventMaker {
            domain: DomainId(Uuid::new_v4()),
            padding: 0,
        };
        let probe = maker.event(UserId(Uuid::new_v4()), 1);
        let stream = StreamId::user(UserId(Uuid::new_v4()));
        let fields = RecordFields {
            position: 1_000_000,
            stream: &stream,
            version: 2,
            recorded_at: Utc::now(),
            proposed: &probe,
        };
        let size = encode_record(fields, &Hash::ZERO)
            .map(|r| r.0.len())
            .unwrap_or(0);
        maker.padding = record_bytes.saturating_sub(size);
        maker
    }

    /// The event at `version` (1-based) of a user's stream.
    fn event(&self, user: UserId, version: u64) -> ProposedEvent {
        let attributes = UserAttributes {
            user_principal_name: format!("{}@bench.onmicrosoft.com", user.0.simple()),
            display_name: format!("User {version} {}", "x".repeat(self.padding)),
            mail: None,
            given_name: Some("Bench".into()),
            surname: Some(format!("{version}")),
            account_enabled: true,
        };
        let event: Event = if version == 1 {
            UserDiscovered {
                user_id: user,
                domain_id: self.domain,
                external_id: user.0.to_string(),
                attributes,
            }
            .into()
        } else {
            UserAttributesChanged { attributes }.into()
        };
        ProposedEvent::new(Uuid::now_v7(), Actor::Sync(self.domain), event)
    }
}

fn ack_writer(path: &Option<PathBuf>) -> Result<Option<Arc<Mutex<std::fs::File>>>, CliError> {
    Ok(match path {
        None => None,
        Some(p) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ))),
    })
}

/// Runs `bench append`.
pub async fn append(args: AppendArgs) -> Result<ExitCode, CliError> {
    if args.writers == 0 || args.events == 0 {
        return Err(CliError::Other(
            "--events and --writers must be positive".into(),
        ));
    }
    let log = SledEventLog::open_with(&args.data_dir, args.durability)?;
    let maker = Arc::new(EventMaker::new(args.event_bytes));
    let ack = ack_writer(&args.ack_file)?;
    let issued = Arc::new(AtomicU64::new(0));
    let pb = progress::bar(Some(args.events), "append");
    let flushes_before = log.stats().flushes.load(Ordering::Relaxed);
    let first_position = log.head().position + 1;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let (log, maker, ack, issued, pb) = (
            log.clone(),
            maker.clone(),
            ack.clone(),
            issued.clone(),
            pb.clone(),
        );
        let total = args.events;
        tasks.push(tokio::spawn(async move {
            let users: Vec<UserId> = (0..STREAMS_PER_WRITER)
                .map(|_| UserId(Uuid::new_v4()))
                .collect();
            let mut versions = [0u64; STREAMS_PER_WRITER];
            let mut i = 0usize;
            while issued.fetch_add(1, Ordering::Relaxed) < total {
                let slot = i % STREAMS_PER_WRITER;
                i += 1;
                let event = maker.event(users[slot], versions[slot] + 1);
                let event_id = event.event_id;
                let expected = match versions[slot] {
                    0 => ExpectedVersion::NoStream,
                    v => ExpectedVersion::Exact(v),
                };
                let req = AppendRequest::new(StreamId::user(users[slot]), expected, vec![event]);
                let done = log.append(req).await?;
                versions[slot] = done.stream_version;
                if let Some(f) = &ack {
                    let line = format!("{} {}\n", done.last_position, event_id.hyphenated());
                    let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                    f.write_all(line.as_bytes())?;
                }
                pb.inc(1);
            }
            Ok::<_, CliError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::Other(e.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let flushes = log.stats().flushes.load(Ordering::Relaxed) - flushes_before;
    let last_position = log.head().position;
    // The baseline writes the very bytes just committed.
    let records: Vec<sled::IVec> = log
        .raw_records(first_position)
        .take_while(|r| r.as_ref().map_or(true, |(p, _)| *p <= last_position))
        .map(|r| r.map(|(_, v)| v))
        .collect::<Result<_, _>>()?;
    let baseline = raw_sled_append(&args.data_dir, &records, flushes, args.durability).await?;
    let events_per_s = args.events as f64 / seconds;
    let baseline_events_per_s = records.len() as f64 / baseline;
    println!(
        "{}",
        serde_json::json!({
            "bench": "append",
            "durability": args.durability.as_str(),
            "events": args.events,
            "writers": args.writers,
            "seconds": round3(seconds),
            "events_per_s": events_per_s.round(),
            "baseline_events_per_s": baseline_events_per_s.round(),
            "ratio": round3(events_per_s / baseline_events_per_s),
            "flushes": flushes,
            "record_bytes": records.first().map_or(0, |r| r.len()),
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Raw sled: one tree, the same records, the same number of flushes, each followed by the
/// same device sync as the log's at `durability`. Seconds taken.
async fn raw_sled_append(
    data_dir: &Path,
    records: &[sled::IVec],
    flushes: u64,
    durability: crate::store::Durability,
) -> Result<f64, CliError> {
    let dir = data_dir.join("bench-baseline.tmp");
    let _ = std::fs::remove_dir_all(&dir);
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(256 << 20)
        .open()
        .map_err(|e| CliError::Other(e.to_string()))?;
    let tree = db
        .open_tree("log")
        .map_err(|e| CliError::Other(e.to_string()))?;
    let device = match durability {
        crate::store::Durability::Device => {
            Some(Arc::new(crate::store::sled_log::DeviceSync::open(&dir)?))
        }
        crate::store::Durability::Process => None,
    };
    let per_flush = records.len().div_ceil(flushes.max(1) as usize).max(1);
    let started = Instant::now();
    for (chunk_no, chunk) in records.chunks(per_flush).enumerate() {
        let mut batch = sled::Batch::default();
        for (i, r) in chunk.iter().enumerate() {
            let key = ((chunk_no * per_flush + i) as u64 + 1).to_be_bytes();
            batch.insert(&key, r.clone());
        }
        tree.apply_batch(batch)
            .map_err(|e| CliError::Other(e.to_string()))?;
        db.flush_async()
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
        if let Some(d) = device.clone() {
            tokio::task::spawn_blocking(move || d.sync())
                .await
                .map_err(|e| CliError::Other(e.to_string()))??;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(seconds)
}

/// Fills the log with `count` more events, 100 per append, from several tasks.
async fn fill(log: &Arc<SledEventLog>, count: u64) -> Result<(), CliError> {
    const PER_APPEND: u64 = 100;
    let maker = Arc::new(EventMaker::new(256));
    let remaining = Arc::new(AtomicU64::new(count));
    let pb = progress::bar(Some(count), "fill");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (log, maker, remaining, pb) =
            (log.clone(), maker.clone(), remaining.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let took = remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                        r.checked_sub(PER_APPEND.min(r)).filter(|_| r > 0)
                    })
                    .unwrap_or(0);
                let n = took.min(PER_APPEND);
                if n == 0 {
                    return Ok::<_, CliError>(());
                }
                let user = UserId(Uuid::new_v4());
                let events = (1..=n).map(|v| maker.event(user, v)).collect();
                log.append(AppendRequest::new(
                    StreamId::user(user),
                    ExpectedVersion::NoStream,
                    events,
                ))
                .await?;
                pb.inc(n);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::Other(e.to_string()))??;
    }
    pb.finish_and_clear();
    log.flush().await?;
    Ok(())
}

/// Opens a data dir for reading once the log that had it open (dropped just before) has
/// let go: its writer task needs a moment to drop its handle on the store.
pub(crate) async fn reopen(data_dir: &std::path::Path) -> Result<RawStore, CliError> {
    for _ in 0..100 {
        match open_raw(data_dir) {
            Ok(s) => return Ok(s),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    Err(CliError::Other("could not reopen the store".into()))
}

/// Runs `bench replay`.
pub async fn replay(args: ReplayArgs) -> Result<ExitCode, CliError> {
    {
        let log = SledEventLog::open(&args.data_dir)?;
        let have = log.head().position;
        if have < args.events {
            fill(&log, args.events - have).await?;
        }
    }
    let store = reopen(&args.data_dir).await?;
    let n = args.events;
    let pb = progress::bar(Some(4 * n), "replay");
    let mut best_ours = f64::MAX;
    let mut best_base = f64::MAX;
    let mut best_scan = f64::MAX;
    let mut folded = 0;
    for _round in 0..2 {
        // The floor: sled's scan alone, touching each record's bytes.
        let started = Instant::now();
        let mut count = 0u64;
        for r in store.records().take(n as usize) {
            let (_, bytes) = r?;
            std::hint::black_box(bytes.len());
            count += 1;
        }
        best_scan = best_scan.min(started.elapsed().as_secs_f64() / count.max(1) as f64);
        // Baseline: scan and decode every record, nothing else.
        let started = Instant::now();
        let mut count = 0u64;
        for r in store.records().take(n as usize) {
            let (pos, bytes) = r?;
            let env = decode_record(&bytes)
                .map_err(|e| CliError::Other(format!("position {pos}: {e}")))?;
            std::hint::black_box(&env);
            count += 1;
        }
        best_base = best_base.min(started.elapsed().as_secs_f64() / count.max(1) as f64);
        pb.inc(count);
        // Ours: the same scan, decoded on every core, folded into every projection.
        let started = Instant::now();
        let projections = fold(store.envelopes_parallel()?, Until::Position(n), |_| {})?;
        folded = projections.position;
        std::hint::black_box(&projections);
        best_ours = best_ours.min(started.elapsed().as_secs_f64() / folded.max(1) as f64);
        pb.inc(folded);
    }
    pb.finish_and_clear();
    let events_per_s = 1.0 / best_ours;
    let baseline_events_per_s = 1.0 / best_base;
    println!(
        "{}",
        serde_json::json!({
            "bench": "replay",
            "events": folded,
            "events_per_s": events_per_s.round(),
            "baseline_events_per_s": baseline_events_per_s.round(),
            "ratio": round3(events_per_s / baseline_events_per_s),
            "scan_only_events_per_s": (1.0 / best_scan).round(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

//! `idledger bench append`: durable appends from concurrent writers, against raw sled
//! writing the same bytes with as many flushes (and the same device syncs).

use super::{progress, round3, EventMaker, STREAMS_PER_WRITER};
use crate::error::Error;
use crate::notary::Notary;
use crate::secrets::keystore::KeyFile;
use crate::secrets::{Keyring, MasterKey};
use crate::store::{AppendRequest, Durability, EventLog, ExpectedVersion, SledEventLog};
use clap::Args;
use idledger_domain::{StreamId, UserId};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    /// the raw sled baseline syncs the same way. `both`: the two compared in one run, on
    /// fresh `durability-on` (device) and `durability-off` (process) dirs inside
    /// `--data-dir`, alternating for `--rounds` rounds.
    #[arg(long, default_value = "device", value_parser = ["device", "process", "both"])]
    pub durability: String,
    /// `on`: the Merkle tree kept and heads signed (as `serve` does); `off`: neither;
    /// `both`: the two compared in one run, on fresh `tree-on` and `tree-off` dirs
    /// inside `--data-dir`, alternating for `--rounds` rounds.
    #[arg(long, default_value = "on", value_parser = ["on", "off", "both"])]
    pub tree: String,
    /// `on`: metrics recorded (as `serve` does); `off`: not; `both`: the two compared in one
    /// run, on fresh `metrics-on` and `metrics-off` dirs, alternating for `--rounds` rounds.
    #[arg(long, default_value = "on", value_parser = ["on", "off", "both"])]
    pub metrics: String,
    /// Rounds of `--tree both` and `--metrics both`.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// How often heads are signed while the tree grows (as `serve`'s `sth_interval_ms`).
    #[arg(long, default_value_t = 1000)]
    pub sth_interval_ms: u64,
}

impl AppendArgs {
    /// The durability of a single run (`both` compares runs of each).
    fn durability(&self) -> Durability {
        match self.durability.as_str() {
            "process" => Durability::Process,
            _ => Durability::Device,
        }
    }
}

/// A log opened for the bench, with the notary that signs its heads when the tree is on.
async fn open_log(
    dir: &Path,
    args: &AppendArgs,
    durability: Durability,
    tree: bool,
) -> Result<(Arc<SledEventLog>, Option<Notary>), Error> {
    let log = SledEventLog::open_with_tree(dir, durability, tree)?;
    let notary = match log.tree() {
        None => None,
        Some(tree) => {
            // The bench's data dir is throwaway: its master key may sit in it.
            let (master, _) =
                MasterKey::load(dir, None, true).map_err(|e| Error::Other(e.to_string()))?;
            let keys = Arc::new(KeyFile::open(dir).map_err(|e| Error::Other(e.to_string()))?);
            let keyring = Keyring::open(master, keys).map_err(|e| Error::Other(e.to_string()))?;
            Some(
                Notary::start(
                    dir,
                    tree,
                    &keyring,
                    Duration::from_millis(args.sth_interval_ms.max(10)),
                )
                .map_err(|e| Error::Other(e.to_string()))?,
            )
        }
    };
    Ok((log, notary))
}

fn ack_writer(path: &Option<PathBuf>) -> Result<Option<Arc<Mutex<std::fs::File>>>, Error> {
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
pub async fn append(args: AppendArgs) -> Result<ExitCode, Error> {
    if args.writers == 0 || args.events == 0 || args.rounds == 0 {
        return Err(Error::Other(
            "--events, --writers and --rounds must be positive".into(),
        ));
    }
    let compared = [&args.tree, &args.metrics, &args.durability];
    if compared.iter().filter(|c| c.as_str() == "both").count() > 1 {
        return Err(Error::Other(
            "compare one thing at a time: --tree, --metrics or --durability both".into(),
        ));
    }
    if args.durability == "both" {
        return both(&args, "durability").await;
    }
    if args.tree == "both" {
        return both(&args, "tree").await;
    }
    if args.metrics == "both" {
        return both(&args, "metrics").await;
    }
    crate::metrics::set_enabled(args.metrics == "on");
    let (log, notary) =
        open_log(&args.data_dir, &args, args.durability(), args.tree == "on").await?;
    let ack = ack_writer(&args.ack_file)?;
    let flushes_before = log.stats().flushes.load(Ordering::Relaxed);
    let first_position = log.head().position + 1;
    let seconds = fill(&log, &args, ack).await?;
    let flushes = log.stats().flushes.load(Ordering::Relaxed) - flushes_before;
    let last_position = log.head().position;
    let signed = match &notary {
        Some(n) => n
            .sign_now()
            .map_err(|e| Error::Other(e.to_string()))?
            .map(|h| h.head.tree_size),
        None => None,
    };
    // The baseline writes the very bytes just committed.
    let mut records: Vec<Vec<u8>> = Vec::new();
    log.records(first_position)(&mut |p, bytes| {
        if p <= last_position {
            records.push(bytes.to_vec());
        }
        std::ops::ControlFlow::Continue(())
    })?;
    let baseline =
        crate::store::sled_log::raw_append(&args.data_dir, &records, flushes, args.durability())
            .await?;
    let events_per_s = args.events as f64 / seconds;
    let baseline_events_per_s = records.len() as f64 / baseline;
    outln!(
        "{}",
        serde_json::json!({
            "bench": "append",
            "durability": args.durability,
            "events": args.events,
            "writers": args.writers,
            "seconds": round3(seconds),
            "events_per_s": events_per_s.round(),
            "baseline_events_per_s": baseline_events_per_s.round(),
            "ratio": round3(events_per_s / baseline_events_per_s),
            "flushes": flushes,
            "record_bytes": records.first().map_or(0, |r| r.len()),
            "tree": args.tree,
            "metrics": args.metrics,
            "signed_tree_size": signed,
        })
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Appends `args.events` events from `args.writers` writers; answers the seconds taken.
async fn fill(
    log: &Arc<SledEventLog>,
    args: &AppendArgs,
    ack: Option<Arc<Mutex<std::fs::File>>>,
) -> Result<f64, Error> {
    let maker = Arc::new(EventMaker::new(args.event_bytes));
    let issued = Arc::new(AtomicU64::new(0));
    let pb = progress::bar(Some(args.events), "append");
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
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Error::Other(e.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok(seconds)
}

/// `--tree both` (or `--metrics`, `--durability`): the same workload with the switch on
/// and off (durability: device and process), alternating, each on its own fresh dir; the
/// ratio of their throughputs.
async fn both(args: &AppendArgs, what: &str) -> Result<ExitCode, Error> {
    let mut seconds = [0f64; 2];
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let mut pair = [0f64; 2];
        // Which goes first alternates, so neither always meets a warmer device.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            let dir = args
                .data_dir
                .join(format!("{what}-{}", if on { "on" } else { "off" }))
                .join(format!("round-{round}"));
            if dir.exists() {
                return Err(Error::Other(format!(
                    "{} exists: --{what} both wants fresh dirs",
                    dir.display()
                )));
            }
            // The compared switch; the others stay as `serve` runs (tree kept, metrics on)
            // or as asked (durability).
            let tree = what != "tree" || on;
            crate::metrics::set_enabled(what != "metrics" || on);
            let durability = match (what, on) {
                ("durability", true) => Durability::Device,
                ("durability", false) => Durability::Process,
                _ => args.durability(),
            };
            let (log, notary) = open_log(&dir, args, durability, tree).await?;
            let s = fill(&log, args, None).await?;
            if let Some(n) = notary {
                n.sign_now().map_err(|e| Error::Other(e.to_string()))?;
            }
            log.flush().await?;
            pair[usize::from(on)] = s;
            seconds[usize::from(on)] += s;
        }
        let mut r = serde_json::Map::new();
        r.insert(
            format!("{what}_off_events_per_s"),
            (args.events as f64 / pair[0]).round().into(),
        );
        r.insert(
            format!("{what}_on_events_per_s"),
            (args.events as f64 / pair[1]).round().into(),
        );
        rounds.push(serde_json::Value::Object(r));
    }
    crate::metrics::set_enabled(true);
    let total = args.events as f64 * f64::from(args.rounds);
    let (off, on) = (total / seconds[0], total / seconds[1]);
    let mut report = serde_json::json!({
        "bench": "append",
        "durability": args.durability,
        "events": args.events,
        "writers": args.writers,
        "rounds": rounds,
    });
    report[what] = "both".into();
    report[format!("{what}_off_events_per_s")] = off.round().into();
    report[format!("{what}_on_events_per_s")] = on.round().into();
    report[format!("{what}_ratio")] = round3(on / off).into();
    outln!("{report}")?;
    Ok(ExitCode::SUCCESS)
}
